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
}

export class DerechoClient {
  private readonly endpoints: string[];
  private next = 0;
  private readonly timeoutMs: number;
  private readonly rounds: number;
  private readonly retryPauseMs: number;

  constructor(options: ClientOptions) {
    if (options.endpoints.length === 0) throw new Error('DerechoClient needs at least one endpoint');
    this.endpoints = options.endpoints.map((e) => e.replace(/\/+$/, ''));
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
          last = e instanceof DerechoError ? e : new DerechoError(`${endpoint} unreachable: ${e instanceof Error ? e.message : String(e)}`, 503, endpoint);
        }
        this.next++;
      }
      await new Promise((r) => setTimeout(r, this.retryPauseMs * (round + 1)));
    }
    throw last ?? new DerechoError('no endpoint answered', 503, '');
  }

  private async once(endpoint: string, method: string, path: string, body?: string): Promise<{ status: number; body: unknown }> {
    const res = await fetch(endpoint + path, {
      method,
      ...(body !== undefined ? { body } : {}),
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    const text = await res.text();
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
