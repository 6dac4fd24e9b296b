// The agent's HTTP API: /status, /metrics, /healthz, /readyz, and the client API (kv, generic methods).
//
//   GET    /status                                   JSON: view, shards, frontiers, restart state
//   GET    /metrics                                  Prometheus text
//   GET    /healthz                                  200 while the process and its loop run
//   GET    /readyz                                   200 when in a view, not wedged, every shard's state held
//   GET    /v1/subgroups                             subgroups, types, shards and their members
//   GET    /v1/kv/{subgroup}?prefix=P&limit=N        list keys by prefix (every shard)
//   GET    /v1/kv/{subgroup}/{key}[?version=V.S]     read (latest, or as of version V.S)
//          reads and queries take ?consistency=linearizable (default) | local (see Consistency in driver.ts)
//          and ?minVersion=V.S (the answer must reflect at least that version, else 503); their answers
//          carry `reflects`, the version of the shard they reflect (per shard index for a list)
//   PUT    /v1/kv/{subgroup}/{key}[?wait=delivered]  write the body (text) as the value
//   DELETE /v1/kv/{subgroup}/{key}
//   POST   /v1/subgroups/{sg}/shards/{i}/ordered/{method}   body: JSON array of arguments
//   POST   /v1/subgroups/{sg}/shards/{i}/query/{method}     body: JSON array of arguments
//   POST   /v1/bench/reset, POST /v1/bench/send, GET /v1/bench/stats[?latency=0]   load generator (config benchApi only)
// Errors are JSON {error, status}; 503 means "not now" (no view, restarting, wedged) and is worth a retry.
// With agent config `api` (ApiCredentials): served over TLS, and every route but GET /status, /metrics,
// /healthz and /readyz needs `Authorization: Bearer <token>` (401 without).

import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { shardForKey } from '../objects/kv.ts';
import type { Json, MethodOutcome } from '../objects/replicated.ts';
import type { Version } from '../core/types.ts';
import { RequestError } from './driver.ts';
import type { Consistency, InvokeResult, WaitFor } from './driver.ts';
import type { Agent } from './agent.ts';
import { benchReads } from './bench.ts';
import type { ApiCredentials } from './api-credentials.ts';

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body, null, status === 200 ? 0 : 0);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req: http.IncomingMessage, bytesMax: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.byteLength;
      if (n > bytesMax) {
        reject(new HttpError(413, `request body over ${bytesMax} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function parseVersion(text: string): Version {
  const m = /^(\d+)\.(\d+)$/.exec(text);
  if (!m) throw new HttpError(400, `version ${JSON.stringify(text)} is not "<viewId>.<seq>" (e.g. 3.17)`);
  return { viewId: Number(m[1]), seq: Number(m[2]) };
}

function parseWait(v: string | null): WaitFor {
  if (v === null || v === 'persisted') return 'persisted';
  if (v === 'delivered') return 'delivered';
  throw new HttpError(400, `wait=${JSON.stringify(v)}: use "persisted" (default) or "delivered"`);
}

function outcomeValue(out: MethodOutcome): Json {
  if (!out.ok) throw new HttpError(out.status, out.error);
  return out.value;
}

function invokeJson(r: InvokeResult): Json {
  return {
    version: { viewId: r.version.viewId, seq: r.version.seq },
    persisted: r.persisted,
    replies: r.replies.map((x) => ({ node: x.node, ...(x.outcome.ok ? { value: x.outcome.value } : { error: x.outcome.error }) })),
  };
}

export function createHttpServer(agent: Agent, credentials: ApiCredentials | null = null): http.Server {
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const refusal = credentials?.refusal(req.method ?? 'GET', new URL(req.url ?? '/', 'http://agent').pathname, req.headers.authorization) ?? null;
    if (refusal !== null) {
      res.setHeader('www-authenticate', 'Bearer realm="derecho"');
      send(res, 401, { error: refusal, status: 401 });
      return;
    }
    handle(agent, req, res).catch((e: unknown) => {
      const status = e instanceof HttpError || e instanceof RequestError ? e.status : 500;
      if (status === 500) agent.log.error('HTTP handler failure', { error: e instanceof Error ? e.stack : String(e) });
      if (!res.headersSent) send(res, status, { error: e instanceof Error ? e.message : String(e), status });
      else res.end();
    });
  };
  const tlsOptions = credentials?.tlsOptions() ?? null;
  // An https.Server is an http.Server to everything here (listen, close, address, timeouts).
  const server = tlsOptions === null ? http.createServer(handler) : (https.createServer({ ...tlsOptions }, handler) as unknown as http.Server);
  credentials?.attach(server);
  // Every accepted socket, for closeHttpServer: an HTTPS server knows a connection only once its TLS
  // handshake is done, so one stuck before it (a client that connects and says nothing) would hold close().
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  SOCKETS.set(server, sockets);
  server.keepAliveTimeout = 30_000;
  server.headersTimeout = 10_000;
  server.requestTimeout = 60_000;
  server.maxConnections = 1024;
  return server;
}

const SOCKETS = new WeakMap<http.Server, Set<Socket>>();

/**
 * Stops the server and drops every connection at once, requests under way included (a write waiting for
 * delivery never completes once the driver is stopped; close() alone waits for every connection).
 */
export function closeHttpServer(server: http.Server): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeAllConnections();
  for (const socket of SOCKETS.get(server) ?? []) socket.destroy();
  return closed;
}

export function listenHttp(server: http.Server, host: string, port: number): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}

async function handle(agent: Agent, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://agent');
  const parts = url.pathname.split('/').filter((p) => p !== '').map((p) => decodeURIComponent(p));
  const method = req.method ?? 'GET';
  const route = `${method} /${parts.join('/')}`;

  if (method === 'GET' && parts.length === 1) {
    switch (parts[0]) {
      case 'status':
        return send(res, 200, agent.statusJson());
      case 'healthz':
        return agent.healthy() ? send(res, 200, { ok: true }) : send(res, 503, { ok: false, error: agent.exitReason() ?? 'loop stopped', status: 503 });
      case 'readyz': {
        const why = agent.notReadyReason();
        return why === null ? send(res, 200, { ready: true }) : send(res, 503, { ready: false, error: why, status: 503 });
      }
      case 'metrics': {
        const text = await agent.metricsText();
        res.writeHead(200, { 'content-type': agent.metrics.registry.contentType });
        res.end(text);
        return;
      }
    }
  }
  if (parts[0] !== 'v1') throw new HttpError(404, `no route ${route}`);

  if (parts[1] === 'subgroups' && parts.length === 2 && method === 'GET') return send(res, 200, agent.subgroupsJson());

  if (parts[1] === 'bench' && parts.length === 3) {
    const bench = agent.bench;
    if (!bench) throw new HttpError(404, 'the bench API is off (set benchApi: true in the agent config)');
    // ?latency=0: counters only (the percentiles sort every sample; pollers leave them for the end).
    if (method === 'GET' && parts[2] === 'stats') return send(res, 200, bench.snapshot(url.searchParams.get('latency') !== '0'));
    if (method === 'POST' && parts[2] === 'reads') {
      // Read load (npm run bench): {subgroup, shard, method, args, consistency, concurrency, durationMs}.
      const body = JSON.parse((await readBody(req, 64 * 1024)).toString('utf8') || '{}') as Record<string, unknown>;
      const subgroup = String(body.subgroup ?? '');
      const shard = Number(body.shard ?? 0);
      if (!agent.driver.shardLayout(subgroup, shard)) throw new HttpError(503, `no shard ${subgroup}/${shard} in the current view`);
      const count = (v: unknown, name: string, min: number, max: number): number => {
        if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new HttpError(400, `${name} ${JSON.stringify(v)} is not an integer in [${min}, ${max}]`);
        return v;
      };
      const readMethod = String(body.method ?? 'get');
      const args = (Array.isArray(body.args) ? body.args : []) as Json[];
      const consistency = parseConsistency(typeof body.consistency === 'string' ? body.consistency : null);
      const readOnce = (): Promise<void> => agent.driver.read(subgroup, shard, readMethod, args, consistency).then((r) => {
        if (!r.outcome.ok) throw new Error(r.outcome.error);
      });
      const result = await benchReads(readOnce, {
        concurrency: count(body.concurrency ?? 16, 'concurrency', 1, 4096), durationMs: count(body.durationMs ?? 2000, 'durationMs', 1, 600_000),
      });
      return send(res, 200, result as unknown as Json);
    }
    if (method === 'POST' && (parts[2] === 'reset' || parts[2] === 'send')) {
      const body = JSON.parse((await readBody(req, 64 * 1024)).toString('utf8') || '{}') as Record<string, unknown>;
      const subgroup = String(body.subgroup ?? '');
      const layout = agent.driver.shardLayout(subgroup, Number(body.shard ?? 0));
      if (!layout) throw new HttpError(503, `no shard ${subgroup}/${String(body.shard ?? 0)} in the current view`);
      if (parts[2] === 'reset') {
        bench.reset(layout.shardId);
        return send(res, 200, { ok: true });
      }
      const int = (v: unknown, name: string, min: number): number => {
        if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new HttpError(400, `${name} ${JSON.stringify(v)} is not an integer >= ${min}`);
        return v;
      };
      agent.driver.benchStart({
        shardId: layout.shardId, payloadBytes: int(body.payloadBytes, 'payloadBytes', 13), count: int(body.count, 'count', 1), ratePerSec: int(body.ratePerSec ?? 0, 'ratePerSec', 0),
        durationMs: int(body.durationMs ?? 0, 'durationMs', 0),
      });
      return send(res, 200, { ok: true });
    }
  }

  if (parts[1] === 'kv' && parts.length >= 3) {
    const subgroup = parts[2]!;
    const shards = agent.shardCount(subgroup, 'kv');
    if (parts.length === 3) {
      if (method !== 'GET') throw new HttpError(405, `${method} is not allowed on /v1/kv/${subgroup} (GET lists keys)`);
      const prefix = url.searchParams.get('prefix') ?? '';
      const limit = Number(url.searchParams.get('limit') ?? '1000');
      const consistency = parseConsistency(url.searchParams.get('consistency'));
      const lists = await Promise.all(Array.from({ length: shards }, (_, i) => agent.driver.read(subgroup, i, 'list', [prefix, limit], consistency)));
      const items = lists.flatMap((r) => outcomeValue(r.outcome) as Json[]) as { key: string }[];
      items.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      return send(res, 200, { items: items.slice(0, Number.isInteger(limit) && limit > 0 ? limit : 1000), reflects: lists.map((r) => r.reflects) });
    }
    if (parts.length !== 4) throw new HttpError(404, `no route ${route} (keys with "/" must be URL-encoded)`);
    const key = parts[3]!;
    const shard = shardForKey(key, shards);
    switch (method) {
      case 'GET': {
        const version = url.searchParams.get('version');
        const consistency = parseConsistency(url.searchParams.get('consistency'));
        const minVersion = parseMinVersion(url.searchParams.get('minVersion'));
        const r = version === null
          ? await agent.driver.read(subgroup, shard, 'get', [key], consistency, minVersion)
          : await agent.driver.read(subgroup, shard, 'getAt', [key, parseVersion(version) as unknown as Json], consistency, minVersion);
        const value = outcomeValue(r.outcome);
        if (value === null) throw new HttpError(404, `key ${JSON.stringify(key)} not found${version ? ` at version ${version}` : ''} (read reflects version ${r.reflects.viewId}.${r.reflects.seq})`);
        return send(res, 200, { ...(value as Record<string, Json>), shard, reflects: r.reflects });
      }
      case 'PUT': {
        const body = await readBody(req, agent.payloadBytesMax());
        const value = body.toString('utf8');
        const r = await agent.driver.invoke(subgroup, shard, 'put', [key, value], parseWait(url.searchParams.get('wait')));
        const first = r.replies[0]?.outcome;
        if (first && !first.ok) throw new HttpError(first.status, first.error);
        return send(res, 200, { key, shard, ...(invokeJson(r) as Record<string, Json>) });
      }
      case 'DELETE': {
        const r = await agent.driver.invoke(subgroup, shard, 'del', [key], parseWait(url.searchParams.get('wait')));
        const first = r.replies[0]?.outcome;
        if (first && !first.ok) throw new HttpError(first.status, first.error);
        const deleted = first?.ok ? (first.value as { deleted?: boolean }).deleted === true : false;
        return send(res, deleted ? 200 : 404, { key, shard, deleted, ...(invokeJson(r) as Record<string, Json>) });
      }
      default:
        throw new HttpError(405, `${method} is not allowed on a key (GET, PUT, DELETE)`);
    }
  }

  // Generic: /v1/subgroups/{sg}/shards/{i}/(ordered|query)/{method}
  if (parts[1] === 'subgroups' && parts.length === 7 && parts[3] === 'shards' && method === 'POST') {
    const subgroup = parts[2]!;
    const shard = Number(parts[4]);
    if (!Number.isInteger(shard) || shard < 0) throw new HttpError(400, `shard ${JSON.stringify(parts[4])} is not a shard index`);
    const body = await readBody(req, agent.payloadBytesMax());
    let args: Json;
    try {
      args = body.byteLength === 0 ? [] : (JSON.parse(body.toString('utf8')) as Json);
    } catch (e) {
      throw new HttpError(400, `body is not JSON: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (!Array.isArray(args)) throw new HttpError(400, 'body must be a JSON array of arguments');
    if (parts[5] === 'ordered') {
      const r = await agent.driver.invoke(subgroup, shard, parts[6]!, args, parseWait(url.searchParams.get('wait')));
      return send(res, 200, invokeJson(r));
    }
    if (parts[5] === 'query') {
      const r = await agent.driver.read(subgroup, shard, parts[6]!, args, parseConsistency(url.searchParams.get('consistency')), parseMinVersion(url.searchParams.get('minVersion')));
      return send(res, 200, { value: outcomeValue(r.outcome), reflects: r.reflects });
    }
  }
  throw new HttpError(404, `no route ${route}`);
}

/** The `consistency` query parameter: linearizable (the default) or local. */
function parseConsistency(v: string | null): Consistency {
  if (v === null || v === 'linearizable') return 'linearizable';
  if (v === 'local') return 'local';
  throw new HttpError(400, `consistency ${JSON.stringify(v)} is not one of linearizable, local`);
}

/** The `minVersion` query parameter ("V.S"), or none. */
function parseMinVersion(v: string | null): Version {
  return v === null ? { viewId: -1, seq: -1 } : parseVersion(v);
}
