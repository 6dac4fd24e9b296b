// Typed TypeScript client of the agents' HTTP API. Give it the HTTP endpoints of some members; each
// request goes to one of them (the agent routes a key to its shard) and moves to the next endpoint when
// one is unreachable or answers 503 (no view yet, restarting, wedged).
//
//   const client = new DerechoClient({ endpoints: ['http://127.0.0.1:8081', 'http://127.0.0.1:8082'] });
//   const kv = client.kv('kv');
//   const { version } = await kv.put('user/1', 'ada');
//   const item = await kv.get('user/1');            // { key, value, version } or null
//   const old = await kv.get('user/1', version);     // as of a version
//   await kv.del('user/1');
//   const items = await kv.list('user/');
//
// A group run by the operator serves the API over TLS and asks for a bearer token (docs/operations.md,
// "Client API"): both are in the group's client Secret (<group>-client: token, ca.crt).
//
//   new DerechoClient({ endpoints: ['https://kv-demo-client.apps.svc:8080'], token, ca });
//   // through `kubectl port-forward pod/kv-demo-1 8080`: the member's name to verify its certificate by
//   new DerechoClient({ endpoints: ['https://localhost:8080'], token, ca });

import http from 'node:http';
import https from 'node:https';
import { httpRequest } from '../util/http-request.ts';

export interface Version {
  viewId: number;
  seq: number;
}

export interface KvItem {
  key: string;
  value: string;
  version: Version;
  /** The version of the key's shard this answer reflects (absent in a list). */
  reflects?: Version;
}

/**
 * How a read is answered (see the README's consistency section): `linearizable` (default) reflects every
 * update acknowledged before the read began; `local` answers from the serving member's replica. With
 * `minVersion` (a version already seen, e.g. a write's or a read's `reflects`) the answer reflects at least it.
 */
export interface ReadOptions {
  consistency?: 'linearizable' | 'local';
  minVersion?: Version;
}

function readQuery(o: ReadOptions | undefined, first: string): string {
  const parts: string[] = [];
  if (o?.consistency) parts.push(`consistency=${o.consistency}`);
  if (o?.minVersion) parts.push(`minVersion=${o.minVersion.viewId}.${o.minVersion.seq}`);
  return parts.length === 0 ? '' : first + parts.join('&');
}

export interface WriteResult {
  key: string;
  shard: number;
  version: Version;
  persisted: boolean;
  replies: { node: number; value?: unknown; error?: string }[];
}

export interface InvokeResult {
  version: Version;
  persisted: boolean;
  replies: { node: number; value?: unknown; error?: string }[];
}

export class DerechoError extends Error {
  override name = 'DerechoError';
  constructor(message: string, readonly status: number, readonly endpoint: string) {
    super(message);
  }
}

export interface ClientOptions {
  endpoints: string[];
  /** Per-attempt timeout (ms). */
  timeoutMs?: number;
  /** Rounds over all endpoints before giving up on 503/unreachable (with a short pause between rounds). */
  rounds?: number;
  retryPauseMs?: number;
  /** Bearer token of the client API (the `token` key of the group's client Secret). */
  token?: string;
  /** PEM of the CA the members' certificates are verified with (`ca.crt` of the client Secret); for https endpoints. */
  ca?: string | Buffer;
  /** The name the members' certificates are verified by (default: the endpoint's host). */
  servername?: string;
}

export class DerechoClient {
  private readonly endpoints: string[];
  private next = 0;
  private readonly timeoutMs: number;
  private readonly rounds: number;
  private readonly retryPauseMs: number;
  private readonly token: string | undefined;
  private readonly ca: string | Buffer | undefined;
  private readonly servername: string | undefined;
  private readonly agents = { http: new http.Agent({ keepAlive: true }), https: new https.Agent({ keepAlive: true }) };

  constructor(options: ClientOptions) {
    if (options.endpoints.length === 0) throw new Error('DerechoClient needs at least one endpoint');
    this.endpoints = options.endpoints.map((e) => e.replace(/\/+$/, ''));
    for (const endpoint of this.endpoints) {
      if (!/^https?:\/\/[^/]+$/.test(endpoint)) throw new Error(`DerechoClient: endpoint ${JSON.stringify(endpoint)} is not http(s)://host:port`);
    }
    if (options.token !== undefined && /\s/.test(options.token.trim())) throw new Error('DerechoClient: the token holds white space (one token, not the whole file)');
    this.token = options.token?.trim();
    this.ca = options.ca;
    this.servername = options.servername;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.rounds = options.rounds ?? 3;
    this.retryPauseMs = options.retryPauseMs ?? 200;
  }

  kv(subgroup: string): KvClient {
    return new KvClient(this, subgroup);
  }

  /** An agent's /status. */
  status(endpoint = this.endpoints[0]!): Promise<Record<string, unknown>> {
    return this.once(endpoint, 'GET', '/status').then((r) => r.body as Record<string, unknown>);
  }

  /** Calls an ordered method of any replicated type. */
  invoke(subgroup: string, shard: number, method: string, args: unknown[], wait: 'persisted' | 'delivered' = 'persisted'): Promise<InvokeResult> {
    const path = `/v1/subgroups/${encodeURIComponent(subgroup)}/shards/${shard}/ordered/${encodeURIComponent(method)}?wait=${wait}`;
    return this.request('POST', path, JSON.stringify(args)).then((r) => r.body as InvokeResult);
  }

  /** Calls a read-only query of any replicated type. */
  query(subgroup: string, shard: number, method: string, args: unknown[], options?: ReadOptions): Promise<unknown> {
    const path = `/v1/subgroups/${encodeURIComponent(subgroup)}/shards/${shard}/query/${encodeURIComponent(method)}${readQuery(options, '?')}`;
    return this.request('POST', path, JSON.stringify(args)).then((r) => (r.body as { value: unknown }).value);
  }

  /** @internal One request, failing over between endpoints on network errors and 503. */
  async request(method: string, path: string, body?: string, okStatuses: number[] = [200]): Promise<{ status: number; body: unknown }> {
    let last: DerechoError | null = null;
    for (let round = 0; round < this.rounds; round++) {
      for (let i = 0; i < this.endpoints.length; i++) {
        const endpoint = this.endpoints[this.next % this.endpoints.length]!;
        try {
          const r = await this.once(endpoint, method, path, body);
          if (okStatuses.includes(r.status) || r.status === 200) return r;
          const err = new DerechoError(String((r.body as { error?: unknown })?.error ?? `HTTP ${r.status}`), r.status, endpoint);
          if (r.status !== 503) throw err;
          last = err;
        } catch (e) {
          if (e instanceof DerechoError && e.status !== 503) throw e;
          const code = (e as { code?: unknown }).code;
          if (typeof code === 'string' && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ALTNAME/.test(code)) {
            // Another member would present a certificate of the same authority: no point in trying it.
            throw new DerechoError(`${endpoint}: the server's certificate is not trusted (${code}: ${e instanceof Error ? e.message : String(e)}); pass the group's CA (ca.crt of its client Secret) and, through a port-forward, servername`, 0, endpoint);
          }
          last = e instanceof DerechoError ? e : new DerechoError(`${endpoint} unreachable: ${e instanceof Error ? e.message : String(e)}`, 503, endpoint);
        }
        this.next++;
      }
      await new Promise((r) => setTimeout(r, this.retryPauseMs * (round + 1)));
    }
    throw last ?? new DerechoError('no endpoint answered', 503, '');
  }

  /** Closes the kept-alive connections (the process can then exit at once). */
  close(): void {
    this.agents.http.destroy();
    this.agents.https.destroy();
  }

  private async once(endpoint: string, method: string, path: string, body?: string): Promise<{ status: number; body: unknown }> {
    const res = await httpRequest({
      url: endpoint + path,
      method,
      headers: this.token !== undefined ? { authorization: `Bearer ${this.token}` } : {},
      ...(body !== undefined ? { body } : {}),
      ...(this.ca !== undefined ? { ca: this.ca } : {}),
      ...(this.servername !== undefined ? { servername: this.servername } : {}),
      timeoutMs: this.timeoutMs,
      agent: endpoint.startsWith('https:') ? this.agents.https : this.agents.http,
    });
    const text = res.body.toString('utf8');
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON (e.g. /metrics)
    }
    return { status: res.status, body: parsed };
  }
}

export class KvClient {
  constructor(private readonly client: DerechoClient, readonly subgroup: string) {}

  private path(key: string): string {
    return `/v1/kv/${encodeURIComponent(this.subgroup)}/${encodeURIComponent(key)}`;
  }

  /** Writes; resolves once every member of the key's shard applied it and (default) it is on their disks. */
  async put(key: string, value: string, wait: 'persisted' | 'delivered' = 'persisted'): Promise<WriteResult> {
    const r = await this.client.request('PUT', `${this.path(key)}?wait=${wait}`, value);
    return r.body as WriteResult;
  }

  /** The latest value (or the value as of `version`); null if absent. */
  async get(key: string, version?: Version, options?: ReadOptions): Promise<KvItem | null> {
    const q = version ? `?version=${version.viewId}.${version.seq}${readQuery(options, '&')}` : readQuery(options, '?');
    const r = await this.client.request('GET', this.path(key) + q, undefined, [200, 404]);
    return r.status === 404 ? null : (r.body as KvItem);
  }

  /** Deletes; resolves to whether the key existed. */
  async del(key: string, wait: 'persisted' | 'delivered' = 'persisted'): Promise<boolean> {
    const r = await this.client.request('DELETE', `${this.path(key)}?wait=${wait}`, undefined, [200, 404]);
    return (r.body as { deleted?: boolean }).deleted === true;
  }

  /** Keys starting with `prefix`, across every shard, sorted. */
  async list(prefix = '', limit = 1000, options?: Pick<ReadOptions, 'consistency'>): Promise<KvItem[]> {
    const r = await this.client.request('GET', `/v1/kv/${encodeURIComponent(this.subgroup)}?prefix=${encodeURIComponent(prefix)}&limit=${limit}${readQuery(options, '&')}`);
    return (r.body as { items: KvItem[] }).items;
  }
}
