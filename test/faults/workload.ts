// The clients of a fault-injection run and the history they record.
//
// Each client (a "process" in the history) runs one operation at a time against a member picked at
// random (from its own seeded stream) for each operation: a kv get, put or delete on one of a few keys,
// or an append to the log subgroup. One HTTP attempt per operation (a retry inside an operation could
// apply a write twice and hide it), with a timeout. Every operation is recorded with its invocation and
// completion times (ms since the run's start) and an outcome:
//   ok    the answer says it happened (200; a delete of an absent key answers 404 with deleted: false)
//   fail  it definitely did not happen (see classifyWriteFailure: only answers that the agent gives
//         before the update entered the total order, or a connection that was never established)
//   info  it may have happened (timeouts, connections cut under the request, every other error)
// Reads that fail are 'fail' (a read has no effect); the checker drops failed and info reads anyway.
// Written values are unique (`p<process>-<n>`, appends `a<process>-<n>`), so a read names its write.

import type { KvOp } from './linearizability.ts';
import type { Rng } from './prng.ts';

export type OpKind = 'put' | 'delete' | 'get' | 'append';
export type Outcome = KvOp['outcome'];

export interface Version {
  viewId: number;
  seq: number;
}

/** One operation of the history (a superset of the checker's KvOp; appends are not given to it). */
export interface HistoryOp {
  id: number;
  process: number;
  kind: OpKind;
  /** kv key (the log subgroup's name for an append). */
  key: string;
  /** put: the value written; get: the value read (null: absent); append: the entry; delete: null. */
  value: string | null;
  invokeMs: number;
  completeMs: number | null;
  outcome: Outcome;
  /** The member the request went to. */
  node: number;
  /** kv shard index of the key (0 for an append). */
  shard: number;
  /** HTTP status, when there was an answer. */
  status?: number;
  /** Error text (the agent's message, or the network error). */
  error?: string;
  /** Writes: the version the update got; reads: the version of the value read. */
  version?: Version;
  /** Appends: the index the entry got. */
  index?: number;
  /** Final reads after healing (not from a client). */
  final?: boolean;
}

export function toKvOp(op: HistoryOp): KvOp {
  if (op.kind === 'append') throw new Error(`op ${op.id} is an append, not a kv operation`);
  return { id: op.id, process: op.process, kind: op.kind, key: op.key, value: op.value, invokeMs: op.invokeMs, completeMs: op.completeMs, outcome: op.outcome };
}

// ---------------------------------------------------------------------------------------------
// What a failed write means.

/**
 * 503 answers to an update that the agent gives before the update entered the shard's total order, so
 * it definitely did not happen (node-agent/src/agent/driver.ts):
 *  - `noShard`: no view installed yet;
 *  - `invokeLocal`: the send queue is full;
 *  - `flushSendQueue`: the replica refused the send ("this node can no longer send in shard ...");
 *  - `Ready.sendsFailed`: "the request was not carried out: ...": per core/types.ts, accepted sends the
 *    core can no longer carry out, failed "with a definite error";
 *  - `forward`: the frame to the member that would order it could not be queued ("... is unreachable"),
 *    or no member can serve the shard.
 * Every other 503 ("agent stopping", "this node no longer serves shard", "node N, which the request was
 * forwarded to, left the group", "replica exited"...) may come after the update was ordered: info.
 */
const DEFINITE_503 = [
  /^no view installed yet\b/,
  /^too many requests waiting\b/,
  /^this node can no longer send in shard\b/,
  /^the request was not carried out: /,
  /^node \d+ \(serving shard [^)]*\) is unreachable$/,
  /^no member can serve shard\b/,
];

/** Statuses that refuse a request before anything is invoked (bad request, no such route or subgroup, too large). */
const DEFINITE_STATUS = new Set([400, 404, 405, 413]);

/** Whether an error answer to an update (put, delete, append) means it definitely did not happen. */
export function classifyWriteFailure(status: number, message: string): Outcome {
  if (DEFINITE_STATUS.has(status)) return 'fail';
  if (status === 503 && DEFINITE_503.some((re) => re.test(message))) return 'fail';
  return 'info';
}

// ---------------------------------------------------------------------------------------------
// HTTP

export type Reply = { ok: true; status: number; body: Record<string, unknown> | null; text: string } | { ok: false; error: string; refused: boolean };

/** One HTTP request, one attempt. `refused`: the connection was never established (nothing was sent). */
export async function request(url: string, method: string, body: string | undefined, timeoutMs: number): Promise<Reply> {
  try {
    const res = await fetch(url, { method, ...(body !== undefined ? { body } : {}), signal: AbortSignal.timeout(timeoutMs) });
    const text = await res.text();
    let parsed: Record<string, unknown> | null = null;
    try {
      const v: unknown = JSON.parse(text);
      if (typeof v === 'object' && v !== null) parsed = v as Record<string, unknown>;
    } catch {
      // not JSON
    }
    return { ok: true, status: res.status, body: parsed, text };
  } catch (e) {
    const err = e as Error & { cause?: { code?: string; message?: string } };
    const code = err.cause?.code;
    const what = err.name === 'TimeoutError' ? `timeout after ${timeoutMs} ms` : `${err.message}${err.cause ? `: ${code ?? ''} ${err.cause.message ?? ''}`.trimEnd() : ''}`;
    return { ok: false, error: what, refused: code === 'ECONNREFUSED' };
  }
}

function errorText(r: Reply): string {
  if (!r.ok) return r.error;
  const msg = r.body && typeof r.body['error'] === 'string' ? r.body['error'] : r.text;
  return msg.slice(0, 300);
}

function versionOf(v: unknown): Version | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const { viewId, seq } = v as Version;
  return Number.isInteger(viewId) && Number.isInteger(seq) ? { viewId, seq } : undefined;
}

// ---------------------------------------------------------------------------------------------
// Operations

export interface Target {
  node: number;
  url: string;
}

export interface OpContext {
  now: () => number;
  nextId: () => number;
  timeoutMs: number;
  kvSubgroup: string;
  /** Reads with ?consistency=local (a deliberately broken rule: local reads may be stale). */
  localReads?: boolean;
}

export async function kvGet(ctx: OpContext, process: number, target: Target, key: string, shard: number, consistency?: 'local'): Promise<HistoryOp> {
  const op: HistoryOp = { id: ctx.nextId(), process, kind: 'get', key, value: null, invokeMs: ctx.now(), completeMs: null, outcome: 'info', node: target.node, shard };
  const local = consistency === 'local' || ctx.localReads === true;
  const r = await request(`${target.url}/v1/kv/${ctx.kvSubgroup}/${encodeURIComponent(key)}${local ? '?consistency=local' : ''}`, 'GET', undefined, ctx.timeoutMs);
  op.completeMs = ctx.now();
  if (r.ok) op.status = r.status;
  if (r.ok && r.status === 200 && typeof r.body?.['value'] === 'string') {
    op.outcome = 'ok';
    op.value = r.body['value'];
    const v = versionOf(r.body['version']);
    if (v) op.version = v;
  } else if (r.ok && r.status === 404 && /^key .* not found/.test(errorText(r))) {
    op.outcome = 'ok';
    op.value = null;
  } else {
    // A read that failed changed nothing.
    op.outcome = 'fail';
    op.error = errorText(r);
  }
  return op;
}

export async function kvWrite(ctx: OpContext, process: number, target: Target, key: string, shard: number, value: string | null): Promise<HistoryOp> {
  const kind = value === null ? 'delete' : 'put';
  const op: HistoryOp = { id: ctx.nextId(), process, kind, key, value, invokeMs: ctx.now(), completeMs: null, outcome: 'info', node: target.node, shard };
  const url = `${target.url}/v1/kv/${ctx.kvSubgroup}/${encodeURIComponent(key)}?wait=persisted`;
  const r = await request(url, kind === 'put' ? 'PUT' : 'DELETE', value ?? undefined, ctx.timeoutMs);
  op.completeMs = ctx.now();
  settleWrite(op, r, (rr) => rr.status === 200 || (kind === 'delete' && rr.status === 404 && rr.body?.['deleted'] === false));
  return op;
}

export async function logAppend(ctx: OpContext, process: number, target: Target, subgroup: string, entry: string): Promise<HistoryOp> {
  const op: HistoryOp = { id: ctx.nextId(), process, kind: 'append', key: subgroup, value: entry, invokeMs: ctx.now(), completeMs: null, outcome: 'info', node: target.node, shard: 0 };
  const r = await request(`${target.url}/v1/subgroups/${subgroup}/shards/0/ordered/append?wait=persisted`, 'POST', JSON.stringify([entry]), ctx.timeoutMs);
  op.completeMs = ctx.now();
  settleWrite(op, r, (rr) => rr.status === 200);
  if (op.outcome === 'ok' && r.ok) {
    const replies = r.body?.['replies'];
    const first = Array.isArray(replies) ? (replies[0] as { value?: { index?: unknown } } | undefined) : undefined;
    if (typeof first?.value?.index === 'number') op.index = first.value.index;
  }
  return op;
}

function settleWrite(op: HistoryOp, r: Reply, isOk: (r: Extract<Reply, { ok: true }>) => boolean): void {
  if (r.ok) op.status = r.status;
  if (r.ok && isOk(r)) {
    op.outcome = 'ok';
    const v = versionOf(r.body?.['version']);
    if (v) op.version = v;
    return;
  }
  op.error = errorText(r);
  if (!r.ok) op.outcome = r.refused ? 'fail' : 'info';
  else op.outcome = classifyWriteFailure(r.status, op.error);
}

// ---------------------------------------------------------------------------------------------
// Clients

export interface WorkloadOptions {
  clients: number;
  /** The kv keys, with their shard index. */
  keys: { key: string; shard: number }[];
  /** Members to send requests to. */
  targets: Target[];
  ctx: OpContext;
  /** The log subgroup to append to (null: none). */
  logSubgroup: string | null;
  /** Fraction of operations that are log appends (when there is a log). */
  appendShare?: number;
  rng: Rng;
  /** Pause between two operations of a client (ms, uniform in [0, thinkMs]). */
  thinkMs?: number;
  /** Where reads go instead of a random member (a broken rule's hook); null: a random member. */
  readTarget?: () => Target | null;
}

export class Workload {
  readonly history: HistoryOp[] = [];
  private stopped = false;
  private loops: Promise<void>[] = [];

  constructor(private readonly options: WorkloadOptions) {}

  start(): void {
    for (let p = 1; p <= this.options.clients; p++) this.loops.push(this.client(p, this.options.rng.fork(`client-${p}`)));
  }

  /** Stops issuing operations and waits for those under way (each ends within its timeout). */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.loops);
  }

  private async client(process: number, rng: Rng): Promise<void> {
    const { keys, targets, ctx, logSubgroup } = this.options;
    const appendShare = logSubgroup ? (this.options.appendShare ?? 0.15) : 0;
    const think = this.options.thinkMs ?? 10;
    let n = 0;
    while (!this.stopped) {
      const target = rng.pick(targets);
      const { key, shard } = rng.pick(keys);
      const r = rng.next();
      let op: HistoryOp;
      if (r < appendShare) op = await logAppend(ctx, process, target, logSubgroup!, `a${process}-${n++}`);
      else {
        const x = rng.next();
        if (x < 0.5) op = await kvGet(ctx, process, this.options.readTarget?.() ?? target, key, shard);
        else if (x < 0.9) op = await kvWrite(ctx, process, target, key, shard, `p${process}-${n++}`);
        else op = await kvWrite(ctx, process, target, key, shard, null);
      }
      this.history.push(op);
      // A client backs off a little after an error (a member down answers "connection refused" at once).
      const pause = op.outcome === 'ok' ? rng.int(0, think) : rng.int(50, 200);
      if (pause > 0) await new Promise((resolve) => setTimeout(resolve, pause));
    }
  }
}
