// The agent's driver: the only event loop. It wires the deterministic core (Replica) to the adapters —
// a Transport for messages, the LogStore for persistence, the system clock for ticks — and hosts the
// replicated objects of the shards this node serves.
//
// Every Ready is processed in the order documented in core/types.ts:
//   persist (+ resetShards) -> deliver -> send -> transfers -> installView -> persistenceFrontiers -> exit
// Incoming messages are stepped into the replica as they arrive; the Ready they produce is drained on
// the next turn of the event loop (setImmediate), so a burst of frames becomes one persist batch (one
// fsync) and one row push — the way Derecho batches its SST pushes.

import { Replica } from '../core/replica.ts';
import { Prng } from '../core/prng.ts';
import { compareVersions, VERSION_NONE } from '../core/types.ts';
import type {
  LogRecord, Message, NodeId, Ready, ReplicaConfig, ReplicaStatus, ShardLayout, StartState, Version, View,
} from '../core/types.ts';
import type { LogStore } from '../storage/log-store.ts';
import type { AppFrame, StateTransferFrame, WireMessage } from '../transport/codec.ts';
import { decodeInvocation, encodeInvocation, ObjectHost } from '../objects/replicated.ts';
import type { Json, MethodOutcome, ReplicatedType } from '../objects/replicated.ts';
import type { Logger } from './logger.ts';
import { BENCH_MARK } from './bench.ts';
import type { BenchProbe, BenchSendSpec } from './bench.ts';

/** What the driver needs from a transport (TCP today, RDMA behind the same surface). */
export interface Transport {
  send(to: NodeId, message: WireMessage): boolean;
  /** Same message to several peers (large ones may travel along the binomial pipeline). */
  multicast?(to: NodeId[], message: WireMessage): boolean;
  onMessage(handler: (from: NodeId, message: WireMessage) => void): () => void;
  /** Writes what the sends queued now (called at the end of each drain); without it, the transport flushes on its own schedule. */
  flush?(): void;
  /** Frames queued for `to` and not yet written (a resend is skipped while there are any). */
  unwrittenFrames?(to: NodeId): number;
}

export interface DriverOptions {
  config: ReplicaConfig;
  start: StartState;
  store: LogStore;
  transport: Transport;
  /** Replicated type of each subgroup, by subgroup name. */
  types: ReadonlyMap<string, ReplicatedType>;
  tickMs: number;
  log: Logger;
  /** Seed of the core's PRNG (jitter). */
  seed: number;
  /** Bound of one state-transfer frame's records bytes (keep under the wire's frameBytesMax). */
  transferFrameBytesMax: number;
  /** Bound of invocations waiting for the replica to accept them (backpressure, view change). */
  sendQueueMax?: number;
  /** An invocation not completed within this time fails. */
  requestTimeoutMs?: number;
  /** Called once when the replica exits (the process should exit so its supervisor restarts it). */
  onExit(reason: string): void;
  /** Observers (metrics). */
  observe?: DriverObserver;
  /** Load generator and delivery probe of `npm run bench` (only with the agent's benchApi). */
  bench?: BenchProbe;
}

export interface DriverObserver {
  delivered?(shardId: number, payloadBytes: number, mode: 'ordered' | 'raw'): void;
  viewInstalled?(view: View): void;
  persisted?(records: number, ms: number): void;
  requestDone?(kind: 'ordered' | 'query', ms: number, ok: boolean): void;
}

export type WaitFor = 'delivered' | 'persisted';

/**
 * How a query is answered (ADR 0010). 'linearizable' (the default): after a read barrier — a majority of
 * the view confirms, after the read arrived, that the view is still current, and the serving member has
 * delivered every message it had received — so the answer reflects every update acknowledged before the
 * read began. 'local': from the serving member's replica at once (faster, may be stale), but refused
 * when that member is not an active member holding the shard's state, or is wedged or in a minority.
 */
export type Consistency = 'linearizable' | 'local';

export interface InvokeResult {
  version: Version;
  /** Each member's reply (the members of the shard when the update completed). */
  replies: { node: NodeId; outcome: MethodOutcome }[];
  /** True when the update is on the disk of every member of the shard (persistent subgroups). */
  persisted: boolean;
}

/** A request failure with an HTTP-like status (503 unavailable, 413 too large, 404 unknown, 504 timeout). */
export class RequestError extends Error {
  override name = 'RequestError';
  constructor(message: string, readonly status: number) {
    super(message);
  }
}

// App-frame bodies (JSON) between agents.
type AppBody =
  | { t: 'reply'; r: number; v: [number, number]; out: MethodOutcome }
  | { t: 'inv'; id: number; sg: string; sh: number; m: string; a: Json[]; w: WaitFor }
  | { t: 'invDone'; id: number; res?: { v: [number, number]; replies: [NodeId, MethodOutcome][]; p: boolean }; err?: [string, number] }
  | { t: 'q'; id: number; sg: string; sh: number; m: string; a: Json[]; c?: Consistency; mv?: [number, number] }
  | { t: 'qDone'; id: number; out?: MethodOutcome; err?: [string, number]; rv?: [number, number] }
  /** Read barrier round `id`: is view `v` still current for you? */
  | { t: 'rb'; id: number; v: number }
  /** Answer to a read barrier round: the sender's view, and whether it is active and not wedged in it. */
  | { t: 'rbOk'; id: number; v: number; ok: boolean };

/** A linearizable read waiting for its barrier (ADR 0010). */
interface PendingRead {
  shardId: number;
  method: string;
  args: Json[];
  /** The answer must reflect at least this version of the shard (read-your-writes), or be refused. */
  minVersion: Version;
  /** The view and the delivered count that answer it (see Replica.readTarget). */
  target: { viewId: number; seq: number };
  /** Confirmed by a barrier round that started after the read arrived (in target.viewId). */
  confirmed: boolean;
  startedMs: number;
  resolve(r: ReadResult): void;
  reject(e: RequestError): void;
}

/** A query's answer and the version of the shard it reflects (the answering member's last delivery). */
export interface ReadResult {
  outcome: MethodOutcome;
  reflects: Version;
}

/** One round of the read barrier: the majority of the view that confirmed it is still current. */
interface BarrierRound {
  id: number;
  viewId: number;
  members: NodeId[];
  acks: Set<NodeId>;
  readers: PendingRead[];
  sentMs: number;
}

/** A barrier round that gets no majority within this time is asked again (lost frames). */
const BARRIER_RESEND_MS = 500;
/** Bound of the reads waiting for a barrier on one node. */
const PENDING_READS_MAX = 10_000;

interface PendingInvoke {
  id: number;
  shardId: number;
  waitFor: WaitFor;
  payload: Uint8Array;
  sent: boolean;
  version: Version | null;
  replies: Map<NodeId, MethodOutcome>;
  /**
   * The shard's members in the view this node delivered the request in: they reply. A member that joined
   * the shard later received the update inside its state transfer, never delivers it, never replies.
   */
  repliers: NodeId[] | null;
  startedMs: number;
  resolve(r: InvokeResult): void;
  reject(e: RequestError): void;
}

interface PendingRemote {
  kind: 'ordered' | 'query';
  /** The member the request was forwarded to. */
  to: NodeId;
  startedMs: number;
  resolve(v: unknown): void;
  reject(e: RequestError): void;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class Driver {
  readonly replica: Replica;
  private readonly hosts = new Map<number, ObjectHost>();
  private view: View | null = null;
  private tickTimer: NodeJS.Timeout | null = null;
  private timeoutTimer: NodeJS.Timeout | null = null;
  private drainScheduled = false;
  private stopped = false;
  private exitReason: string | null = null;
  private nextRequestId = 1;
  private readonly pending = new Map<number, PendingInvoke>();
  private readonly sendQueue: PendingInvoke[] = [];
  private readonly remote = new Map<number, PendingRemote>();
  /** Linearizable reads confirmed by a round, waiting for their delivery target (or for a round). */
  private reads: PendingRead[] = [];
  /** Reads that arrived since the current round started: the next round confirms them. */
  private readsAwaitingRound: PendingRead[] = [];
  private round: BarrierRound | null = null;
  private nextRoundId = 1;
  /** Complete state transfers waiting for the next drain (see drain). Bounded (64). */
  private receivedTransfers: { from: NodeId; shardId: number; through: Version; records: LogRecord[] }[] = [];
  private readonly incomingTransfers = new Map<string, { records: LogRecord[]; bytes: number }>();
  private readonly frontiers = new Map<number, Version>();
  private unsubscribe: (() => void) | null = null;
  private benchTimer: NodeJS.Timeout | null = null;
  readonly counters = { deliveredOrdered: 0, deliveredRaw: 0, deliveredBytes: 0, viewChanges: 0, transfersServed: 0, transfersInstalled: 0, malformedApp: 0, resends: 0, resendsSkipped: 0 };
  private readonly sendQueueMax: number;
  private readonly requestTimeoutMs: number;

  constructor(private readonly opt: DriverOptions) {
    this.sendQueueMax = opt.sendQueueMax ?? 10_000;
    this.requestTimeoutMs = opt.requestTimeoutMs ?? 30_000;
    // Persistent shards' objects come back from the log.
    for (const shardId of opt.store.shardIds()) this.rebuildFromLog(shardId, null);
    this.replica = new Replica(opt.config, opt.start, new Prng(opt.seed));
  }

  get me(): NodeId {
    return this.opt.config.nodeId;
  }

  start(): void {
    this.unsubscribe = this.opt.transport.onMessage((from, message) => this.onWire(from, message));
    this.tickTimer = setInterval(() => this.onTick(), this.opt.tickMs);
    this.timeoutTimer = setInterval(() => this.expireRequests(), 250);
    this.drain();
  }

  /** Stops the loop (the transport and the store are closed by their owner). Pending requests fail. */
  stop(reason = 'agent stopping'): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.tickTimer) clearInterval(this.tickTimer);
    if (this.benchTimer) clearTimeout(this.benchTimer);
    if (this.timeoutTimer) clearInterval(this.timeoutTimer);
    this.unsubscribe?.();
    const err = new RequestError(reason, 503);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.sendQueue.length = 0;
    for (const r of this.remote.values()) r.reject(err);
    this.remote.clear();
    for (const r of [...this.reads, ...this.readsAwaitingRound, ...(this.round?.readers ?? [])]) r.reject(err);
    this.reads = [];
    this.readsAwaitingRound = [];
    this.round = null;
  }

  /** Graceful leave: the replica leaves the group; the exit follows once the view without it is installed. */
  leave(): void {
    if (this.stopped) return;
    this.replica.leave();
    this.drain();
  }

  status(): ReplicaStatus {
    return this.replica.status();
  }

  currentView(): View | null {
    return this.view;
  }

  exited(): string | null {
    return this.exitReason;
  }

  /** Layout of a subgroup's shard in the current view, or null. */
  shardLayout(subgroup: string, shardIndex: number): ShardLayout | null {
    return this.view?.layout.shards.find((s) => s.subgroup === subgroup && s.shardIndex === shardIndex) ?? null;
  }

  /** Whether this node serves the shard with its whole state. */
  serves(shardId: number): boolean {
    return this.replica.status().shards.some((s) => s.shardId === shardId && s.stateReady);
  }

  /** The newest version persisted by every member of the shard (as far as this node knows). */
  persistenceFrontier(shardId: number): Version {
    return this.frontiers.get(shardId) ?? VERSION_NONE;
  }

  hostOf(shardId: number): ObjectHost | null {
    return this.hosts.get(shardId) ?? null;
  }

  // ----------------------------------------------------------------------------------------------
  // Requests

  /** Calls an ordered method on a shard: multicast here if this node may send in it, else through a member. */
  invoke(subgroup: string, shardIndex: number, method: string, args: Json[], waitFor: WaitFor = 'persisted'): Promise<InvokeResult> {
    if (this.stopped) return Promise.reject(new RequestError('agent stopping', 503));
    const layout = this.shardLayout(subgroup, shardIndex);
    if (!layout) return Promise.reject(this.noShard(subgroup, shardIndex));
    const type = this.opt.types.get(subgroup);
    if (!type || !type.ordered.includes(method)) return Promise.reject(new RequestError(`${method} is not an ordered method of subgroup ${subgroup}`, 400));
    if (layout.senders.includes(this.me) && this.serves(layout.shardId)) return this.invokeLocal(layout, method, args, waitFor);
    return this.forward<InvokeResult>(layout, 'ordered', { t: 'inv', id: 0, sg: subgroup, sh: shardIndex, m: method, a: args, w: waitFor });
  }

  /**
   * Read-only query answered by one member of the shard (this node if it serves the shard), linearizable
   * by default (see Consistency).
   */
  query(subgroup: string, shardIndex: number, method: string, args: Json[], consistency: Consistency = 'linearizable'): Promise<MethodOutcome> {
    return this.read(subgroup, shardIndex, method, args, consistency).then((r) => r.outcome);
  }

  /**
   * A query with the version of the shard its answer reflects. `minVersion`: the answer must reflect at
   * least that version (a version the client already saw: read-your-writes and monotonic reads across
   * members, for local reads; a linearizable read always does), else it is refused with a 503.
   */
  read(subgroup: string, shardIndex: number, method: string, args: Json[], consistency: Consistency = 'linearizable', minVersion: Version = VERSION_NONE): Promise<ReadResult> {
    if (this.stopped) return Promise.reject(new RequestError('agent stopping', 503));
    const layout = this.shardLayout(subgroup, shardIndex);
    if (!layout) return Promise.reject(this.noShard(subgroup, shardIndex));
    const type = this.opt.types.get(subgroup);
    if (!type || !type.queries.includes(method)) return Promise.reject(new RequestError(`${method} is not a query of subgroup ${subgroup}`, 400));
    if (layout.members.includes(this.me) && this.serves(layout.shardId)) return this.queryHere(layout.shardId, method, args, consistency, minVersion);
    return this.forward<ReadResult>(layout, 'query', {
      t: 'q', id: 0, sg: subgroup, sh: shardIndex, m: method, a: args, c: consistency,
      ...(compareVersions(minVersion, VERSION_NONE) > 0 ? { mv: [minVersion.viewId, minVersion.seq] as [number, number] } : {}),
    });
  }

  /** A query this member answers itself (never forwarded again: no loops). */
  private queryHere(shardId: number, method: string, args: Json[], consistency: Consistency, minVersion: Version): Promise<ReadResult> {
    const host = this.hosts.get(shardId);
    const target = this.replica.readTarget(shardId);
    if ('refused' in target || !host) return Promise.reject(new RequestError(`cannot answer a read: ${'refused' in target ? target.refused : `node ${this.me} holds no object of shard ${shardId}`}`, 503));
    if (consistency === 'local') {
      if (this.replica.status().wedged) return Promise.reject(new RequestError(`cannot answer a local read: node ${this.me} is wedged (a view change is under way)`, 503));
      return this.answer(shardId, host, method, args, minVersion);
    }
    if (this.reads.length + this.readsAwaitingRound.length >= PENDING_READS_MAX) {
      return Promise.reject(new RequestError(`too many reads waiting for their barrier (${PENDING_READS_MAX})`, 503));
    }
    return new Promise<ReadResult>((resolve, reject) => {
      this.readsAwaitingRound.push({ shardId, method, args, minVersion, target, confirmed: false, startedMs: Date.now(), resolve, reject });
      this.startBarrierRound();
    });
  }

  /** Answers from the object, with the version it reflects; refused if that is below `minVersion`. */
  private answer(shardId: number, host: ObjectHost, method: string, args: Json[], minVersion: Version): Promise<ReadResult> {
    const reflects = this.replica.status().shards.find((s) => s.shardId === shardId)?.delivered ?? VERSION_NONE;
    if (compareVersions(reflects, minVersion) < 0) {
      return Promise.reject(new RequestError(`node ${this.me} has delivered shard ${shardId} up to ${reflects.viewId}.${reflects.seq}, below minVersion ${minVersion.viewId}.${minVersion.seq}: ask again, or read linearizably`, 503));
    }
    return Promise.resolve({ outcome: host.query(method, args), reflects });
  }

  /**
   * Starts a barrier round for the reads that arrived since the last one started, if none is running: ask
   * every other member of the view whether the view is still current for it.
   */
  private startBarrierRound(): void {
    if (this.round !== null || this.readsAwaitingRound.length === 0 || this.stopped) return;
    const view = this.replica.currentView();
    if (!view) return;
    const round: BarrierRound = {
      id: this.nextRoundId++, viewId: view.viewId, members: [...view.members], acks: new Set([this.me]),
      readers: this.readsAwaitingRound, sentMs: Date.now(),
    };
    this.readsAwaitingRound = [];
    this.round = round;
    for (const m of round.members) if (m !== this.me) this.sendApp(m, { t: 'rb', id: round.id, v: round.viewId });
    this.checkRound();
  }

  private checkRound(): void {
    const waiting = this.replica.status().waiting;
    if (waiting.kind === 'minority' && this.reads.length + this.readsAwaitingRound.length + (this.round?.readers.length ?? 0) > 0) {
      // No barrier can complete here: every waiting read fails now rather than at its timeout.
      const err = new RequestError(`cannot answer a read: node ${this.me} is in a minority: ${waiting.message}`, 503);
      for (const r of [...this.reads, ...this.readsAwaitingRound, ...(this.round?.readers ?? [])]) r.reject(err);
      this.reads = [];
      this.readsAwaitingRound = [];
      this.round = null;
      return;
    }
    const round = this.round;
    if (round === null) return;
    const view = this.replica.currentView();
    if (!view || view.viewId !== round.viewId) {
      // The view changed under the round: its reads start over in the new view.
      this.round = null;
      this.rebarrier(round.readers);
      return;
    }
    if (round.acks.size * 2 <= round.members.length) {
      if (Date.now() - round.sentMs >= BARRIER_RESEND_MS) {
        round.sentMs = Date.now();
        for (const m of round.members) if (!round.acks.has(m)) this.sendApp(m, { t: 'rb', id: round.id, v: round.viewId });
      }
      return;
    }
    this.round = null;
    for (const r of round.readers) {
      if (r.target.viewId === round.viewId) {
        r.confirmed = true;
        this.reads.push(r);
      } else this.rebarrier([r]);
    }
    this.answerReads();
    this.startBarrierRound();
  }

  /** Reads whose view changed before they were answered: a new target in the new view, a new round. */
  private rebarrier(readers: PendingRead[]): void {
    for (const r of readers) {
      const target = this.replica.readTarget(r.shardId);
      if ('refused' in target) {
        // Not a member holding the state any more (or in a minority): the client asks again.
        r.reject(new RequestError(`cannot answer a read: ${target.refused}`, 503));
        continue;
      }
      r.target = target;
      r.confirmed = false;
      this.readsAwaitingRound.push(r);
    }
    this.startBarrierRound();
  }

  /** Answers every confirmed read whose shard delivered its target. */
  private answerReads(): void {
    if (this.reads.length === 0) return;
    const still: PendingRead[] = [];
    const moved: PendingRead[] = [];
    for (const r of this.reads) {
      const d = this.replica.deliveredInView(r.shardId);
      const host = this.hosts.get(r.shardId);
      if (d === null || d.viewId !== r.target.viewId || !host) moved.push(r);
      else if (d.seq >= r.target.seq) {
        this.opt.observe?.requestDone?.('query', Date.now() - r.startedMs, true);
        this.answer(r.shardId, host, r.method, r.args, r.minVersion).then(r.resolve, r.reject);
      } else still.push(r);
    }
    this.reads = still;
    if (moved.length > 0) this.rebarrier(moved);
  }

  private onBarrierAck(from: NodeId, id: number, viewId: number, ok: boolean): void {
    const round = this.round;
    if (round === null || round.id !== id || viewId !== round.viewId || !ok || !round.members.includes(from)) return;
    round.acks.add(from);
    this.checkRound();
  }

  private noShard(subgroup: string, shardIndex: number): RequestError {
    if (!this.view) return new RequestError(`no view installed yet (${this.replica.status().waiting.message || this.replica.status().mode})`, 503);
    if (!this.opt.types.has(subgroup)) return new RequestError(`no subgroup ${JSON.stringify(subgroup)}`, 404);
    return new RequestError(`subgroup ${subgroup} has no shard ${shardIndex}`, 404);
  }

  private invokeLocal(layout: ShardLayout, method: string, args: Json[], waitFor: WaitFor): Promise<InvokeResult> {
    if (this.sendQueue.length >= this.sendQueueMax) return Promise.reject(new RequestError(`too many requests waiting (${this.sendQueueMax})`, 503));
    const id = this.nextRequestId++;
    const payload = encodeInvocation({ m: method, a: args, o: this.me, r: id });
    if (payload.byteLength > this.opt.config.payloadBytesMax) {
      return Promise.reject(new RequestError(`request of ${payload.byteLength} bytes is over payloadBytesMax ${this.opt.config.payloadBytesMax}`, 413));
    }
    return new Promise<InvokeResult>((resolve, reject) => {
      const p: PendingInvoke = {
        id, shardId: layout.shardId, waitFor, payload, sent: false, version: null, replies: new Map(), repliers: null, startedMs: Date.now(), resolve, reject,
      };
      this.pending.set(id, p);
      this.sendQueue.push(p);
      this.flushSendQueue();
      this.scheduleDrain();
    });
  }

  private flushSendQueue(): void {
    while (this.sendQueue.length > 0) {
      const p = this.sendQueue[0]!;
      if (!this.pending.has(p.id)) {
        this.sendQueue.shift();
        continue;
      }
      const r = this.replica.send(p.shardId, p.payload);
      if (r.ok) {
        p.sent = true;
        this.sendQueue.shift();
        continue;
      }
      if (r.reason === 'backpressure' || r.reason === 'wedged' || r.reason === 'inactive') return; // retried after the next Ready
      this.sendQueue.shift();
      this.pending.delete(p.id);
      p.reject(new RequestError(r.reason === 'tooLarge' ? 'request is over payloadBytesMax' : `this node can no longer send in shard ${p.shardId} (${r.reason})`, r.reason === 'tooLarge' ? 413 : 503));
    }
  }

  private forward<T>(layout: ShardLayout, kind: 'ordered' | 'query', body: Extract<AppBody, { t: 'inv' | 'q' }>): Promise<T> {
    const candidates = kind === 'ordered' ? layout.senders : layout.members;
    const ready = this.readyMembers(layout.shardId);
    const live = candidates.filter((n) => n !== this.me && (ready === null || ready.has(n)));
    const pool = live.length > 0 ? live : candidates.filter((n) => n !== this.me);
    if (pool.length === 0) return Promise.reject(new RequestError(`no member can serve shard ${layout.subgroup}/${layout.shardIndex}`, 503));
    const id = this.nextRequestId++;
    const to = pool[id % pool.length]!;
    return new Promise<T>((resolve, reject) => {
      this.remote.set(id, { kind, to, startedMs: Date.now(), resolve: resolve as (v: unknown) => void, reject });
      if (!this.sendApp(to, { ...body, id })) {
        this.remote.delete(id);
        reject(new RequestError(`node ${to} (serving shard ${layout.subgroup}/${layout.shardIndex}) is unreachable`, 503));
      }
    });
  }

  private readyMembers(shardId: number): Set<NodeId> | null {
    const s = this.replica.status().shards.find((x) => x.shardId === shardId);
    return s ? new Set(s.members) : null;
  }

  private expireRequests(): void {
    const now = Date.now();
    for (const [id, p] of this.pending) {
      if (now - p.startedMs < this.requestTimeoutMs) continue;
      this.pending.delete(id);
      p.reject(new RequestError(`request timed out after ${this.requestTimeoutMs} ms (${p.sent ? 'sent, waiting for delivery and replies' : 'not accepted by the group yet'}: ${this.replica.status().waiting.message || 'no view change in progress'})`, 504));
      this.opt.observe?.requestDone?.('ordered', now - p.startedMs, false);
    }
    for (const [id, r] of this.remote) {
      if (now - r.startedMs < this.requestTimeoutMs) continue;
      this.remote.delete(id);
      r.reject(new RequestError(`forwarded request timed out after ${this.requestTimeoutMs} ms`, 504));
    }
    const expired = (r: PendingRead): boolean => {
      if (now - r.startedMs < this.requestTimeoutMs) return false;
      r.reject(new RequestError(`read timed out after ${this.requestTimeoutMs} ms waiting for its barrier (${this.replica.status().waiting.message || 'no view change in progress'})`, 504));
      return true;
    };
    this.reads = this.reads.filter((r) => !expired(r));
    this.readsAwaitingRound = this.readsAwaitingRound.filter((r) => !expired(r));
    if (this.round) this.round.readers = this.round.readers.filter((r) => !expired(r));
    this.checkRound();
  }

  /** Starts the benchmark load generator (benchApi only). */
  benchStart(spec: BenchSendSpec): void {
    if (!this.opt.bench) throw new RequestError('the bench API is off (agent config benchApi)', 404);
    this.opt.bench.start(spec);
    this.scheduleDrain();
  }

  private pumpBench(): void {
    const bench = this.opt.bench;
    if (!bench || !bench.sending()) return;
    const delay = bench.pump((shardId, payload) => this.replica.send(shardId, payload).ok);
    if (delay > 0 && this.benchTimer === null) {
      this.benchTimer = setTimeout(() => {
        this.benchTimer = null;
        this.drain();
      }, delay);
    }
  }

  // ----------------------------------------------------------------------------------------------
  // Event loop

  private onTick(): void {
    if (this.stopped) return;
    try {
      this.replica.tick();
    } catch (e) {
      this.fatal(e);
      return;
    }
    this.drain();
  }

  private onWire(from: NodeId, message: WireMessage): void {
    if (this.stopped) return;
    try {
      switch (message.kind) {
        case 'stateTransfer':
          this.onStateTransfer(message);
          break;
        case 'app':
          this.onApp(message);
          break;
        case 'block':
          break; // reassembled by the transport
        default:
          if (message.from !== from) return; // a peer speaks only for itself
          this.replica.step(message as Message);
      }
    } catch (e) {
      this.fatal(e);
      return;
    }
    this.scheduleDrain();
  }

  private scheduleDrain(): void {
    if (this.drainScheduled || this.stopped) return;
    this.drainScheduled = true;
    setImmediate(() => {
      this.drainScheduled = false;
      this.drain();
    });
  }

  private drain(): void {
    if (this.stopped) return;
    try {
      this.flushSendQueue();
      this.pumpBench();
      this.replica.pushRowIfDirty();
      let rounds = 0;
      for (;;) {
        while (this.replica.hasReady()) {
          if (++rounds > 10_000) throw new Error('the replica still has a Ready after 10000 rounds (livelock)');
          const ready = this.replica.ready();
          this.process(ready);
          this.replica.advance();
          if (ready.exit) {
            this.exitReason = ready.exit.reason;
            this.stop(`replica exited: ${ready.exit.reason}`);
            this.opt.onExit(ready.exit.reason);
            return;
          }
          this.flushSendQueue();
          this.pumpBench();
          this.replica.pushRowIfDirty();
        }
        // State transfers received since: installed only now, after every Ready the core produced before
        // they arrived (a restart's truncate, a view's shardState records) is on disk. Imported earlier, a
        // transfer was cut by a truncate applied after it (acknowledged writes lost at that member).
        if (this.receivedTransfers.length === 0) break;
        const batch = this.receivedTransfers;
        this.receivedTransfers = [];
        for (const t of batch) this.installTransfer(t.from, t.shardId, t.through, t.records);
      }
      this.checkRound();
      this.answerReads();
      this.opt.transport.flush?.();
    } catch (e) {
      this.fatal(e);
    }
  }

  private fatal(e: unknown): void {
    const reason = `internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`;
    this.opt.log.error('driver failure; exiting so the supervisor restarts the agent', { error: reason });
    this.exitReason = reason;
    this.stop(reason);
    this.opt.onExit(reason);
  }

  private process(ready: Ready): void {
    // 1. persist (and shards that start empty)
    if (ready.persist.length > 0) {
      const t0 = performance.now();
      this.opt.store.apply(ready.persist);
      this.opt.observe?.persisted?.(ready.persist.length, performance.now() - t0);
      const truncated = new Set<number>();
      for (const r of ready.persist) if (r.kind === 'truncate') truncated.add(r.shardId);
      for (const shardId of truncated) this.rebuildFromLog(shardId, this.view);
    }
    for (const shardId of ready.resetShards) this.resetHost(shardId, this.view);
    // 2. deliver
    for (const d of ready.deliver) {
      const host = this.hostFor(d.shardId);
      this.counters.deliveredBytes += d.payload.byteLength;
      if (d.mode === 'ordered') this.counters.deliveredOrdered++;
      else this.counters.deliveredRaw++;
      this.opt.observe?.delivered?.(d.shardId, d.payload.byteLength, d.mode);
      if (d.payload[0] === BENCH_MARK && this.opt.bench) {
        this.opt.bench.delivered(d);
        if (d.mode === 'ordered' && host) host.applied = d.version;
        continue;
      }
      const inv = decodeInvocation(d.payload);
      if (!inv || !host) {
        if (d.mode === 'ordered' && host) host.applied = d.version;
        continue;
      }
      const out = host.apply(inv, d.version, d.sender, d.mode);
      if (inv.o === this.me) this.onReply(inv.r, this.me, d.version, out);
      else if (inv.o !== 0 && d.mode === 'ordered') this.sendApp(inv.o, { t: 'reply', r: inv.r, v: [d.version.viewId, d.version.seq], out });
    }
    // 2b. accepted sends the core can no longer carry out (this node stopped sending in their shard)
    for (const f of ready.sendsFailed) {
      const inv = f.payload[0] === BENCH_MARK ? null : decodeInvocation(f.payload);
      const p = inv && inv.o === this.me ? this.pending.get(inv.r) : undefined;
      if (!p) continue;
      this.pending.delete(p.id);
      p.reject(new RequestError(`the request was not carried out: ${f.reason}; retry it`, 503));
    }
    // 3. send: a data message to several members is one multicast
    this.sendEnvelopes(ready);
    // 4. transfers
    for (const order of ready.transfers) this.serveTransfer(order.to, order.shardId, order.through);
    // 5. installView
    if (ready.installView) this.onInstall(ready.installView);
    // 6. persistence frontiers
    for (const f of ready.persistenceFrontiers) {
      this.frontiers.set(f.shardId, f.version);
      this.opt.bench?.persisted(f.shardId, f.version);
      try {
        this.hosts.get(f.shardId)?.object.onPersisted?.(f.version);
      } catch {
        // application callback failures do not stop the loop
      }
      for (const p of this.pending.values()) if (p.shardId === f.shardId) this.maybeComplete(p);
    }
  }

  private sendEnvelopes(ready: Ready): void {
    const { transport } = this.opt;
    const groups = new Map<Message, NodeId[]>();
    for (const env of ready.send) {
      if (env.resend && (transport.unwrittenFrames?.(env.to) ?? 0) > 0) {
        this.counters.resendsSkipped++;
        continue;
      }
      if (env.resend) this.counters.resends++;
      if (env.message.kind === 'data' && transport.multicast) {
        const list = groups.get(env.message);
        if (list) list.push(env.to);
        else groups.set(env.message, [env.to]);
        continue;
      }
      transport.send(env.to, env.message);
    }
    for (const [message, to] of groups) {
      if (to.length === 1) transport.send(to[0]!, message);
      else transport.multicast!(to, message);
    }
  }

  // ----------------------------------------------------------------------------------------------
  // Objects

  private typeOfShard(shardId: number, view: View | null): { type: ReplicatedType; layout: ShardLayout } | null {
    const layout = (view ?? this.view)?.layout.shards[shardId] ?? null;
    if (layout) {
      const type = this.opt.types.get(layout.subgroup);
      return type ? { type, layout } : null;
    }
    // Before the first view: the policy knows the subgroup of each flat shard id.
    let id = 0;
    for (const sg of this.opt.config.policy.subgroups) {
      for (let i = 0; i < sg.shards; i++, id++) {
        if (id !== shardId) continue;
        const type = this.opt.types.get(sg.name);
        if (!type) return null;
        return {
          type,
          layout: { shardId, subgroup: sg.name, shardIndex: i, members: [], senders: [], deliveryMode: sg.deliveryMode, persistent: sg.persistent },
        };
      }
    }
    return null;
  }

  private hostFor(shardId: number): ObjectHost | null {
    const existing = this.hosts.get(shardId);
    if (existing) return existing;
    const t = this.typeOfShard(shardId, this.view);
    if (!t) return null;
    const host = new ObjectHost(t.type, t.layout.shardIndex);
    this.hosts.set(shardId, host);
    return host;
  }

  private resetHost(shardId: number, view: View | null): ObjectHost | null {
    this.hosts.delete(shardId);
    const t = this.typeOfShard(shardId, view);
    if (!t) return null;
    const host = new ObjectHost(t.type, t.layout.shardIndex);
    this.hosts.set(shardId, host);
    return host;
  }

  /** The shard's object, rebuilt by replaying its log (persistent shards: the log is the state). */
  private rebuildFromLog(shardId: number, view: View | null): void {
    const t = this.typeOfShard(shardId, view);
    if (!t || !t.layout.persistent || t.layout.deliveryMode !== 'ordered') return;
    const host = this.resetHost(shardId, view)!;
    for (const r of this.opt.store.log(shardId)) {
      const inv = decodeInvocation(r.payload);
      if (inv) host.apply(inv, r.version, r.sender, 'ordered');
      else host.applied = r.version;
    }
  }

  private onInstall(view: View): void {
    this.view = view;
    this.counters.viewChanges++;
    this.opt.observe?.viewInstalled?.(view);
    this.opt.log.info('installed view', {
      viewId: view.viewId, members: view.members,
      shards: view.layout.shards.map((s) => `${s.subgroup}/${s.shardIndex}=[${s.members.join(',')}]`),
    });
    for (const shardId of [...this.hosts.keys()]) {
      const layout = view.layout.shards[shardId];
      if (!layout || !layout.members.includes(this.me)) this.hosts.delete(shardId);
    }
    for (const layout of view.layout.shards) {
      if (!layout.members.includes(this.me)) continue;
      const host = this.hostFor(layout.shardId);
      try {
        host?.object.onViewChange?.({ viewId: view.viewId, members: [...view.members], shardMembers: [...layout.members] });
      } catch {
        // application callback failures do not stop the loop
      }
    }
    // A request forwarded to a member that left gets no answer: fail it now rather than at its timeout.
    for (const [id, r] of [...this.remote]) {
      if (view.members.includes(r.to)) continue;
      this.remote.delete(id);
      r.reject(new RequestError(`node ${r.to}, which the request was forwarded to, left the group (view ${view.viewId}); retry`, 503));
    }
    for (const p of [...this.pending.values()]) {
      if (!view.layout.shards[p.shardId]?.members.includes(this.me)) {
        this.pending.delete(p.id);
        p.reject(new RequestError(`this node no longer serves shard ${p.shardId}; retry`, 503));
        continue;
      }
      this.maybeComplete(p);
    }
  }

  // ----------------------------------------------------------------------------------------------
  // Replies

  private onReply(requestId: number, node: NodeId, version: Version, out: MethodOutcome): void {
    const p = this.pending.get(requestId);
    if (!p) return;
    if (node === this.me) {
      p.version = version;
      // Deliveries come before the Ready's view install: this.view is the view of the delivery.
      p.repliers = [...(this.view?.layout.shards[p.shardId]?.members ?? [])];
    }
    p.replies.set(node, out);
    this.maybeComplete(p);
  }

  private maybeComplete(p: PendingInvoke): void {
    if (p.version === null) return;
    const layout = this.view?.layout.shards[p.shardId];
    if (!layout) return;
    if (layout.deliveryMode === 'raw') {
      // Raw sends are best effort and unordered: the others apply them on receipt and do not reply.
      this.pending.delete(p.id);
      this.opt.observe?.requestDone?.('ordered', Date.now() - p.startedMs, true);
      p.resolve({ version: p.version, replies: [{ node: this.me, outcome: p.replies.get(this.me)! }], persisted: false });
      return;
    }
    // Every member that delivered it in the delivery's view and still serves the shard replies (a member
    // removed since cannot; one that joined since never delivers it).
    const repliers = layout.members.filter((m) => p.repliers === null || p.repliers.includes(m));
    for (const m of repliers) if (!p.replies.has(m)) return;
    const durable = layout.persistent && layout.deliveryMode === 'ordered';
    const persisted = durable && compareVersions(this.persistenceFrontier(p.shardId), p.version) >= 0;
    if (p.waitFor === 'persisted' && durable && !persisted) return;
    this.pending.delete(p.id);
    const replies = repliers.map((node) => ({ node, outcome: p.replies.get(node)! }));
    this.opt.observe?.requestDone?.('ordered', Date.now() - p.startedMs, true);
    p.resolve({ version: p.version, replies, persisted });
  }

  // ----------------------------------------------------------------------------------------------
  // App frames

  private sendApp(to: NodeId, body: AppBody): boolean {
    if (to === this.me) return false;
    const frame: AppFrame = { kind: 'app', from: this.me, body: encoder.encode(JSON.stringify(body)) };
    return this.opt.transport.send(to, frame);
  }

  private onApp(frame: AppFrame): void {
    let body: AppBody;
    try {
      body = JSON.parse(decoder.decode(frame.body)) as AppBody;
      if (typeof body !== 'object' || body === null || typeof (body as { t?: unknown }).t !== 'string') throw new Error('no type');
    } catch {
      this.counters.malformedApp++;
      this.opt.log.warn('malformed app frame ignored', { from: frame.from });
      return;
    }
    const from = frame.from;
    switch (body.t) {
      case 'reply':
        this.onReply(body.r, from, { viewId: body.v[0], seq: body.v[1] }, body.out);
        break;
      case 'inv': {
        const id = body.id;
        this.invoke(body.sg, body.sh, body.m, body.a, body.w).then(
          (res) => this.sendApp(from, { t: 'invDone', id, res: { v: [res.version.viewId, res.version.seq], replies: res.replies.map((r) => [r.node, r.outcome]), p: res.persisted } }),
          (e: unknown) => this.sendApp(from, { t: 'invDone', id, err: errPair(e) }),
        );
        break;
      }
      case 'invDone': {
        const r = this.remote.get(body.id);
        if (!r) return;
        this.remote.delete(body.id);
        if (body.res) {
          this.opt.observe?.requestDone?.('ordered', Date.now() - r.startedMs, true);
          r.resolve({ version: { viewId: body.res.v[0], seq: body.res.v[1] }, replies: body.res.replies.map(([node, outcome]) => ({ node, outcome })), persisted: body.res.p } satisfies InvokeResult);
        } else r.reject(new RequestError(body.err?.[0] ?? 'remote failure', body.err?.[1] ?? 502));
        break;
      }
      case 'q': {
        const id = body.id;
        const layout = this.shardLayout(body.sg, body.sh);
        const host = layout ? this.hosts.get(layout.shardId) : undefined;
        // Answer only with our own state (never forward again: no loops).
        if (!layout || !host || !this.serves(layout.shardId)) {
          this.sendApp(from, { t: 'qDone', id, err: [`node ${this.me} does not serve ${body.sg}/${body.sh} right now`, 503] });
          return;
        }
        const type = this.opt.types.get(body.sg);
        if (!type?.queries.includes(body.m)) {
          this.sendApp(from, { t: 'qDone', id, err: [`${body.m} is not a query of subgroup ${body.sg}`, 400] });
          return;
        }
        // (A peer from before consistency levels sends none: it gets the default, a linearizable answer.)
        const minVersion = Array.isArray(body.mv) && body.mv.length === 2 ? { viewId: Number(body.mv[0]), seq: Number(body.mv[1]) } : VERSION_NONE;
        this.queryHere(layout.shardId, body.m, Array.isArray(body.a) ? body.a : [], body.c === 'local' ? 'local' : 'linearizable', minVersion).then(
          (r) => this.sendApp(from, { t: 'qDone', id, out: r.outcome, rv: [r.reflects.viewId, r.reflects.seq] }),
          (e: unknown) => this.sendApp(from, { t: 'qDone', id, err: errPair(e) }),
        );
        break;
      }
      case 'rb': {
        const s = this.replica.status();
        this.sendApp(from, { t: 'rbOk', id: body.id, v: s.viewId, ok: s.mode === 'active' && !s.wedged && s.viewId === body.v });
        break;
      }
      case 'rbOk':
        this.onBarrierAck(from, body.id, body.v, body.ok === true);
        break;
      case 'qDone': {
        const r = this.remote.get(body.id);
        if (!r) return;
        this.remote.delete(body.id);
        if (body.out) {
          this.opt.observe?.requestDone?.('query', Date.now() - r.startedMs, true);
          // (A peer from before read versions sends none: the answer says it reflects nothing known.)
          const reflects = Array.isArray(body.rv) && body.rv.length === 2 ? { viewId: Number(body.rv[0]), seq: Number(body.rv[1]) } : VERSION_NONE;
          r.resolve({ outcome: body.out, reflects } satisfies ReadResult);
        } else r.reject(new RequestError(body.err?.[0] ?? 'remote failure', body.err?.[1] ?? 502));
        break;
      }
      default:
        this.counters.malformedApp++;
    }
  }

  // ----------------------------------------------------------------------------------------------
  // State transfer

  private serveTransfer(to: NodeId, shardId: number, through: Version): void {
    const t = this.typeOfShard(shardId, this.view);
    const persistent = t !== null && t.layout.persistent && t.layout.deliveryMode === 'ordered';
    let records: LogRecord[];
    if (persistent || (t === null && this.opt.store.hasLog(shardId))) {
      records = this.opt.store.exportShard(shardId, through);
    } else {
      // Volatile shard: the object's snapshot travels as one record at `through`.
      const host = this.hosts.get(shardId);
      const snapshot = host ? host.object.snapshot() : null;
      records = [{ shardId, version: through, sender: this.me, payload: encoder.encode(JSON.stringify(snapshot)) }];
    }
    this.counters.transfersServed++;
    this.opt.log.info('serving state transfer', { to, shardId, through, records: records.length });
    // Cut into frames under the bound; the last one has `more` unset.
    let chunk: LogRecord[] = [];
    let bytes = 0;
    const flush = (more: boolean): void => {
      const frame: StateTransferFrame = { kind: 'stateTransfer', from: this.me, shardId, through, records: chunk, ...(more ? { more: true } : {}) };
      this.opt.transport.send(to, frame);
      chunk = [];
      bytes = 0;
    };
    for (const r of records) {
      const size = r.payload.byteLength + 32;
      if (chunk.length > 0 && bytes + size > this.opt.transferFrameBytesMax) flush(true);
      chunk.push(r);
      bytes += size;
    }
    flush(false);
  }

  private onStateTransfer(m: StateTransferFrame): void {
    const key = `${m.from}/${m.shardId}/${m.through.viewId}/${m.through.seq}`;
    let acc = this.incomingTransfers.get(key);
    if (!acc) {
      if (this.incomingTransfers.size >= 64) this.incomingTransfers.clear();
      acc = { records: [], bytes: 0 };
      this.incomingTransfers.set(key, acc);
    }
    for (const r of m.records) {
      if (compareVersions(r.version, m.through) > 0) {
        this.opt.log.warn('state transfer refused: a record lies beyond its "through" version', { from: m.from, shardId: m.shardId });
        this.incomingTransfers.delete(key);
        return;
      }
      // Decoded payloads are views into the frame: copy what we keep.
      acc.records.push({ shardId: r.shardId, version: r.version, sender: r.sender, payload: r.payload.slice() });
    }
    if (m.more) return;
    this.incomingTransfers.delete(key);
    // Installed by the next drain, after the Readys pending now (see drain); bounded like the reassembly.
    if (this.receivedTransfers.length >= 64) this.receivedTransfers.shift();
    this.receivedTransfers.push({ from: m.from, shardId: m.shardId, through: m.through, records: acc.records });
  }

  private installTransfer(from: NodeId, shardId: number, through: Version, records: LogRecord[]): void {
    const m = { from, shardId, through };
    const acc = { records };
    if (!this.replica.transferWanted(m.shardId, m.through)) {
      this.opt.log.debug('ignoring a state transfer not waited for', { from: m.from, shardId: m.shardId });
      return;
    }
    const t = this.typeOfShard(m.shardId, this.view);
    const persistent = t !== null && t.layout.persistent && t.layout.deliveryMode === 'ordered';
    if (persistent) {
      this.opt.store.importShard(m.shardId, acc.records);
      this.rebuildFromLog(m.shardId, this.view);
    } else {
      const host = this.resetHost(m.shardId, this.view);
      const rec = acc.records[0];
      if (host && rec) {
        try {
          host.object.restore(JSON.parse(decoder.decode(rec.payload)) as Json);
          host.applied = m.through;
        } catch (e) {
          this.opt.log.warn('state transfer snapshot could not be restored; starting empty', { shardId: m.shardId, error: String(e) });
          this.resetHost(m.shardId, this.view);
        }
      }
    }
    this.counters.transfersInstalled++;
    this.opt.log.info('installed state transfer', { from: m.from, shardId: m.shardId, through: m.through, records: acc.records.length });
    this.replica.stateTransferred(m.shardId, m.through);
  }
}

function errPair(e: unknown): [string, number] {
  if (e instanceof RequestError) return [e.message, e.status];
  return [e instanceof Error ? e.message : String(e), 500];
}
