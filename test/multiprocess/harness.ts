// Multi-process test harness: real agent processes (node-agent/src/agent/main.ts) on loopback.
//
// A Cluster owns a temporary directory with the group manifest, the HMAC secret, one agent config per
// node, each node's data directory and its log file (stdout + stderr). Agents are spawned the way an
// operator's pod would run them; with `supervise` (the default) an agent that exits with code 3 (the
// replica exited) is started again, like a real supervisor would. Every process is SIGKILLed in the
// test's teardown, and a preloaded guard makes an agent kill itself if the test process dies first, so
// no agent outlives a failing (or aborted) test. On failure the teardown prints the agents' logs.

import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import YAML from 'yaml';
import { freePort } from '../../node-agent/src/util/ports.ts';
import { shardForKey } from '../../node-agent/src/objects/kv.ts';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const AGENT_MAIN = 'node-agent/src/agent/main.ts';
export const HOST = '127.0.0.1';

/**
 * Preloaded into every agent: exits at once when the test process that spawned it is gone (the agent
 * would be reparented), e.g. when ava kills a worker on its global timeout.
 */
const ORPHAN_GUARD = `data:text/javascript,${encodeURIComponent(
  'const parent = process.ppid;'
  + 'setInterval(() => { if (process.ppid !== parent) process.kill(process.pid, "SIGKILL"); }, 250).unref();',
)}`;

// ---------------------------------------------------------------------------------------------------
// Small utilities.

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it returns something other than undefined/false, or throws with `what` and the last state. */
export async function waitUntil<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 15_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown = null;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
      lastError = null;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${lastError instanceof Error ? lastError.message : String(lastError)})` : ''}`);
    }
    await sleep(everyMs);
  }
}

/** Whether `port` can be bound on the loopback address right now. */
/**
 * `count` distinct free ports (util/ports.ts freePort: below the kernel's ephemeral range, so that an
 * outgoing connection's automatic local port cannot grab one while its agent is down, which matters as the
 * agents keep their ports across restarts; checked by binding; reserved machine-wide).
 */
export async function freePorts(count: number): Promise<number[]> {
  const ports: number[] = [];
  for (let i = 0; i < count; i++) ports.push(await freePort(HOST));
  return ports;
}

/** A key of `subgroup` (with `shards` shards) that falls in shard `shard`: `${prefix}-<n>`. */
export function keyInShard(prefix: string, shard: number, shards = 2, from = 0): string {
  for (let n = from; ; n++) {
    const key = `${prefix}-${n}`;
    if (shardForKey(key, shards) === shard) return key;
  }
}

/** `count` distinct keys in shard `shard`. */
export function keysInShard(prefix: string, shard: number, count: number, shards = 2): string[] {
  const keys: string[] = [];
  for (let n = 0; keys.length < count; n++) {
    const key = `${prefix}-${n}`;
    if (shardForKey(key, shards) === shard) keys.push(key);
  }
  return keys;
}

// ---------------------------------------------------------------------------------------------------
// What /status returns (the fields the tests read).

export interface Version {
  viewId: number;
  seq: number;
}

export interface AgentStatus {
  nodeId: number;
  pid: number;
  start: 'bootstrap' | 'join' | 'restart';
  mode: 'active' | 'joining' | 'restarting' | 'exited';
  viewId: number;
  members: number[];
  wedged: boolean;
  ready: boolean;
  waiting: { kind: string; message: string } | null;
  restart: { waitingFor: string } | null;
  layout: { shardId: number; subgroup: string; shardIndex: number; members: number[] }[];
  shards: { shardId: number; subgroup: string; shardIndex: number; members: number[]; delivered: Version; persistenceFrontier: Version; stateReady: boolean }[];
  counters: Record<string, number> & { transfersInstalled: number; viewChanges: number };
  transport: { peerPort: number; connectedPeers: number[]; protocolErrors: number; handshakeFailures: number };
}

export interface HttpResult<T = unknown> {
  status: number;
  body: T;
  text: string;
  contentType: string;
}

/** One HTTP request; the body is parsed as JSON when it is JSON. */
export async function httpRequest<T = unknown>(url: string, method = 'GET', body?: string, timeoutMs = 30_000): Promise<HttpResult<T>> {
  const res = await fetch(url, { method, ...(body !== undefined ? { body } : {}), signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body: parsed as T, text, contentType: res.headers.get('content-type') ?? '' };
}

// ---------------------------------------------------------------------------------------------------
// The group manifest.

export interface ManifestOptions {
  name?: string;
  members?: number;
  timing?: { tickMs: number; heartbeatMs: number; suspectMs: number };
  graceSeconds?: number;
  fsync?: 'fsync' | 'os';
  /** spec.transport (default tcp). */
  transport?: 'tcp' | 'rdma' | 'auto';
  /** spec.wireLimits (default: the schema's). */
  wireLimits?: { payloadBytesMax?: number; frameBytesMax?: number };
}

/**
 * Timing for tests that do not kill members: faster ticks than the default, and a failure detector with
 * room for a loaded CI machine (the whole ava suite runs beside these processes on 2 cores, and a member
 * starved for suspectMs is removed from the group).
 */
export const TEST_TIMING = { tickMs: 20, heartbeatMs: 40, suspectMs: 2000 };
/** Timing for tests that kill members: a crash is detected within about a second. */
export const FAST_DETECTION_TIMING = { tickMs: 20, heartbeatMs: 40, suspectMs: 1000 };

/** The example's layout (kv: 2 shards reserved [[1,2],[3]]; events: a log on [1,2,3]) with test timing. */
export function manifest(options: ManifestOptions = {}): Record<string, unknown> {
  return {
    apiVersion: 'derecho.dev/v1alpha1',
    kind: 'DerechoGroup',
    metadata: { name: options.name ?? 'mp-test' },
    spec: {
      members: options.members ?? 3,
      subgroups: [
        { name: 'kv', type: 'kv', shards: 2, minNodesPerShard: 1, maxNodesPerShard: 2, reservedNodeIds: [[1, 2], [3]] },
        { name: 'events', type: 'log', shards: 1, minNodesPerShard: 2, maxNodesPerShard: 3, reservedNodeIds: [[1, 2, 3]] },
      ],
      tls: { mode: 'hmac' },
      restart: { graceSeconds: options.graceSeconds ?? 0.5, quorumTimeoutSeconds: 300 },
      timing: options.timing ?? TEST_TIMING,
      fsync: options.fsync ?? 'fsync',
      ...(options.transport ? { transport: options.transport } : {}),
      ...(options.wireLimits ? { wireLimits: options.wireLimits } : {}),
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Processes.

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  at: number;
}

/** Spawns `node --import tsx main.ts --config FILE` with stdout and stderr appended to `logFile`. */
export function spawnAgent(configFile: string, logFile: string): ChildProcess {
  const fd = fs.openSync(logFile, 'a');
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('DERECHO_')) env[k] = v;
  try {
    return spawn(process.execPath, ['--import', ORPHAN_GUARD, '--import', 'tsx', AGENT_MAIN, '--config', configFile], {
      cwd: REPO_ROOT, env, stdio: ['ignore', fd, fd],
    });
  } finally {
    fs.closeSync(fd);
  }
}

/** Runs an agent to its exit (for configurations that must be refused). */
export async function runAgentToExit(configFile: string, logFile: string, timeoutMs = 20_000): Promise<{ code: number | null; signal: NodeJS.Signals | null; output: string }> {
  const child = spawnAgent(configFile, logFile);
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  try {
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('exit', (c, s) => resolve([c, s])));
    return { code, signal, output: fs.readFileSync(logFile, 'utf8') };
  } finally {
    clearTimeout(timer);
  }
}

export interface NodeInfo {
  id: number;
  peerPort: number;
  httpPort: number;
  dataDir: string;
  configFile: string;
  logFile: string;
  url: string;
  child: ChildProcess | null;
  /** Every exit of this node's processes, in order. */
  exits: Exit[];
  /** Processes started (first start included). */
  starts: number;
  /** Restarts made by the supervisor after exit code 3. */
  supervisorRestarts: number;
}

export interface ClusterOptions extends ManifestOptions {
  /** Restart an agent that exits with code 3 (default true). */
  supervise?: boolean;
  /** Start these nodes at once (default: none; call start()). */
  start?: number[];
  /** The address the agents listen on (peers and HTTP; default 127.0.0.1; RDMA needs the device's). */
  host?: string;
}

export class Cluster {
  readonly dir: string;
  readonly manifestFile: string;
  readonly secretFile: string;
  readonly nodes = new Map<number, NodeInfo>();
  private supervise: boolean;
  private closed = false;
  private readonly t0 = Date.now();
  private readonly events: string[] = [];

  private constructor(readonly t: ExecutionContext, dir: string, readonly members: number, options: ClusterOptions) {
    this.dir = dir;
    this.supervise = options.supervise ?? true;
    this.manifestFile = path.join(dir, 'group.yaml');
    this.secretFile = path.join(dir, 'hmac.key');
  }

  /** A cluster in a fresh temporary directory; torn down (every process killed) with the test. */
  static async create(t: ExecutionContext, options: ClusterOptions = {}): Promise<Cluster> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'derecho-mp-'));
    const members = options.members ?? 3;
    const cluster = new Cluster(t, dir, members, options);
    const host = options.host ?? HOST;
    t.teardown(() => cluster.teardown());
    fs.writeFileSync(cluster.manifestFile, YAML.stringify(manifest(options)));
    fs.writeFileSync(cluster.secretFile, randomBytes(32), { mode: 0o600 });
    const ports = await freePorts(2 * members);
    for (let id = 1; id <= members; id++) {
      const peerPort = ports[2 * (id - 1)]!;
      const httpPort = ports[2 * (id - 1) + 1]!;
      cluster.nodes.set(id, {
        id, peerPort, httpPort,
        dataDir: path.join(dir, `node-${id}`),
        configFile: path.join(dir, `agent-${id}.yaml`),
        logFile: path.join(dir, `node-${id}.log`),
        url: `http://${host.includes(':') ? `[${host}]` : host}:${httpPort}`,
        child: null, exits: [], starts: 0, supervisorRestarts: 0,
      });
    }
    const peers = Object.fromEntries([...cluster.nodes.values()].map((n) => [String(n.id), `${host.includes(':') ? `[${host}]` : host}:${n.peerPort}`]));
    for (const n of cluster.nodes.values()) {
      fs.writeFileSync(n.configFile, YAML.stringify({
        nodeId: n.id,
        groupFile: cluster.manifestFile,
        listen: { host, peerPort: n.peerPort, httpPort: n.httpPort },
        dataDir: n.dataDir,
        peers,
        auth: { hmacSecretFile: cluster.secretFile },
      }));
    }
    if (options.start) cluster.start(...options.start);
    return cluster;
  }

  node(id: number): NodeInfo {
    const n = this.nodes.get(id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  get ids(): number[] {
    return [...this.nodes.keys()];
  }

  url(id: number, p = ''): string {
    return this.node(id).url + p;
  }

  private note(line: string): void {
    this.events.push(`+${((Date.now() - this.t0) / 1000).toFixed(2)}s ${line}`);
  }

  /** Starts the agents of `ids` (no-op for one already running). */
  start(...ids: number[]): void {
    for (const id of ids) this.spawnNode(this.node(id));
  }

  /** Whether the node's process is running. */
  running(id: number): boolean {
    const c = this.node(id).child;
    return c !== null && c.exitCode === null && c.signalCode === null;
  }

  private spawnNode(n: NodeInfo): void {
    if (this.closed || this.running(n.id)) return;
    fs.appendFileSync(n.logFile, `----- harness: starting node ${n.id} (start #${n.starts + 1}) at +${((Date.now() - this.t0) / 1000).toFixed(2)}s -----\n`);
    const child = spawnAgent(n.configFile, n.logFile);
    n.child = child;
    n.starts++;
    this.note(`node ${n.id} started (pid ${child.pid})`);
    child.once('exit', (code, signal) => {
      n.exits.push({ code, signal, at: Date.now() });
      this.note(`node ${n.id} exited (code ${code}, signal ${signal})`);
      if (n.child === child) n.child = null;
      if (code === 3 && this.supervise && !this.closed) {
        // What a supervisor (kubelet, systemd) does with "the replica exited: restart me".
        setTimeout(() => {
          if (this.closed || this.running(n.id)) return;
          n.supervisorRestarts++;
          this.note(`node ${n.id} restarted by the supervisor`);
          this.spawnNode(n);
        }, 200);
      }
    });
  }

  /** SIGKILL (kill -9) and wait for the process to be gone. The supervisor does not restart it. */
  async kill(...ids: number[]): Promise<void> {
    await Promise.all(ids.map(async (id) => {
      const child = this.node(id).child;
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      this.note(`killing node ${id} (SIGKILL)`);
      child.kill('SIGKILL');
      await gone;
    }));
  }

  async killAll(): Promise<void> {
    await this.kill(...this.ids);
  }

  /** Exits other than our own SIGKILLs: code 3 (restarted by the supervisor), 1, 2... */
  unexpectedExits(): { id: number; exit: Exit }[] {
    const out: { id: number; exit: Exit }[] = [];
    for (const n of this.nodes.values()) for (const exit of n.exits) if (exit.signal !== 'SIGKILL') out.push({ id: n.id, exit });
    return out;
  }

  // -------------------------------------------------------------------------------------------------
  // HTTP.

  request<T = unknown>(id: number, method: string, p: string, body?: string, timeoutMs = 30_000): Promise<HttpResult<T>> {
    return httpRequest<T>(this.url(id, p), method, body, timeoutMs);
  }

  /** /status, or null if the agent does not answer (not started yet, down). */
  async status(id: number): Promise<AgentStatus | null> {
    try {
      const r = await this.request<AgentStatus>(id, 'GET', '/status', undefined, 2_000);
      return r.status === 200 ? r.body : null;
    } catch {
      return null;
    }
  }

  async statuses(ids: number[] = this.ids): Promise<(AgentStatus | null)[]> {
    return Promise.all(ids.map((id) => this.status(id)));
  }

  /** Waits until `pred` holds for the status of every node of `ids`; returns those statuses. */
  async waitForStatus(ids: number[], what: string, pred: (s: AgentStatus) => boolean, timeoutMs = 20_000): Promise<AgentStatus[]> {
    let last: (AgentStatus | null)[] = [];
    try {
      return await waitUntil(what, async () => {
        last = await this.statuses(ids);
        return last.every((s) => s !== null && pred(s)) ? (last as AgentStatus[]) : undefined;
      }, timeoutMs, 100);
    } catch (e) {
      throw new Error(`${(e as Error).message}; last statuses:\n${last.map((s, i) => `  node ${ids[i]}: ${s ? summary(s) : 'no answer'}`).join('\n')}`);
    }
  }

  /**
   * Waits until every node of `ids` is active and ready in one and the same view whose members are
   * exactly `members` (default: `ids`), with the same layout everywhere, each connected to every other
   * member of the view (view 0 of founding members is installed without any message, so "active" alone
   * says nothing about the members having met).
   */
  async waitForView(ids: number[], members: number[] = ids, timeoutMs = 20_000): Promise<AgentStatus[]> {
    const want = [...members].sort((a, b) => a - b);
    let last: (AgentStatus | null)[] = [];
    try {
      return await waitUntil(`nodes ${ids.join(', ')} active and ready in one view of members [${want.join(', ')}]`, async () => {
        last = await this.statuses(ids);
        if (!last.every((s) => s !== null && s.mode === 'active' && s.ready && !s.wedged)) return undefined;
        const all = last as AgentStatus[];
        const viewId = all[0]!.viewId;
        if (!all.every((s) => s.viewId === viewId && sameNumbers(s.members, want))) return undefined;
        if (!all.every((s) => want.every((m) => m === s.nodeId || s.transport.connectedPeers.includes(m)))) return undefined;
        const layout = JSON.stringify(all[0]!.layout);
        if (!all.every((s) => JSON.stringify(s.layout) === layout)) return undefined;
        return all;
      }, timeoutMs, 100);
    } catch (e) {
      throw new Error(`${(e as Error).message}; last statuses:\n${last.map((s, i) => `  node ${ids[i]}: ${s ? summary(s) : 'no answer'}`).join('\n')}`);
    }
  }

  // -------------------------------------------------------------------------------------------------
  // Client helpers (kv and the events log), straight HTTP so that each request goes to one chosen node.

  async put(id: number, key: string, value: string, subgroup = 'kv'): Promise<HttpResult<PutReply>> {
    return this.request<PutReply>(id, 'PUT', `/v1/kv/${subgroup}/${encodeURIComponent(key)}`, value);
  }

  /** PUT that must succeed (200, persisted); retries 503s (a view change in progress) for a while. */
  async putOk(id: number, key: string, value: string, timeoutMs = 15_000): Promise<PutReply> {
    let last: HttpResult<PutReply> | null = null;
    return waitUntil(`PUT ${key} through node ${id} to succeed`, async () => {
      last = await this.put(id, key, value);
      if (last.status === 200 && last.body.persisted === true) return last.body;
      if (last.status === 503) return undefined;
      throw new Error(`PUT ${key} through node ${id}: HTTP ${last.status} ${last.text}`);
    }, timeoutMs, 100).catch((e: unknown) => {
      throw new Error(`${(e as Error).message}${last ? `; last answer: HTTP ${last.status} ${last.text}` : ''}`);
    });
  }

  async get(id: number, key: string, subgroup = 'kv'): Promise<HttpResult<KvGetReply>> {
    return this.request<KvGetReply>(id, 'GET', `/v1/kv/${subgroup}/${encodeURIComponent(key)}`);
  }

  async append(id: number, entry: unknown): Promise<HttpResult<InvokeReply>> {
    return this.request<InvokeReply>(id, 'POST', '/v1/subgroups/events/shards/0/ordered/append', JSON.stringify([entry]));
  }

  async readLog(id: number): Promise<LogEntry[]> {
    const r = await this.request<{ value: LogEntry[] }>(id, 'POST', '/v1/subgroups/events/shards/0/query/read', JSON.stringify([0, 10_000]));
    if (r.status !== 200) throw new Error(`read of events through node ${id}: HTTP ${r.status} ${r.text}`);
    return r.body.value;
  }

  // -------------------------------------------------------------------------------------------------
  // Teardown.

  /** The logs of every node (and the harness's own notes), for a failure report. */
  dump(tailLines = 80): string {
    const parts = [`cluster dir ${this.dir}`, 'harness events:', ...this.events.map((e) => `  ${e}`)];
    for (const n of this.nodes.values()) {
      let text = '';
      try {
        text = fs.readFileSync(n.logFile, 'utf8');
      } catch {
        text = '(no log)';
      }
      const lines = text.split('\n');
      parts.push(`===== node ${n.id} (${n.logFile}), last ${Math.min(tailLines, lines.length)} of ${lines.length} lines =====`);
      parts.push(...lines.slice(-tailLines));
    }
    return parts.join('\n');
  }

  async teardown(): Promise<void> {
    this.closed = true;
    await this.killAll();
    if (!this.t.passed || process.env['MP_DEBUG']) {
      console.log(`\n[${this.t.title}] agent logs:\n${this.dump()}\n`);
    }
    if (this.t.passed && !process.env['MP_KEEP']) fs.rmSync(this.dir, { recursive: true, force: true });
    else console.log(`[${this.t.title}] kept ${this.dir}`);
  }
}

export interface PutReply {
  key: string;
  shard: number;
  version: Version;
  persisted: boolean;
  replies: { node: number; value?: unknown; error?: string }[];
}

export interface KvGetReply {
  key: string;
  value: string;
  version: Version;
  shard: number;
}

export interface InvokeReply {
  version: Version;
  persisted: boolean;
  replies: { node: number; value?: unknown; error?: string }[];
}

export interface LogEntry {
  index: number;
  entry: unknown;
  version: Version;
}

export function sameNumbers(a: readonly number[], b: readonly number[]): boolean {
  const x = [...a].sort((p, q) => p - q);
  const y = [...b].sort((p, q) => p - q);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

/** One line about a status, for failure messages. */
export function summary(s: AgentStatus): string {
  const shards = s.layout.map((l) => `${l.subgroup}/${l.shardIndex}=[${l.members.join(',')}]`).join(' ');
  return `pid ${s.pid} start=${s.start} mode=${s.mode} view=${s.viewId} members=[${s.members.join(',')}] wedged=${s.wedged} ready=${s.ready}`
    + ` connected=[${s.transport.connectedPeers.join(',')}]`
    + ` ${shards}${s.waiting ? ` waiting=${JSON.stringify(s.waiting.message)}` : ''}`;
}
