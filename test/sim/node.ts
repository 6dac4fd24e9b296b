// The driver of one simulated node, like the agent's event loop: it owns a Replica, the node's disk and
// its application state, feeds the Replica messages and ticks, and processes every Ready in the
// documented order (persist, deliver, transfers, send, installView, persistenceFrontiers, exit; advance).

import { Replica } from '../../node-agent/src/core/replica.ts';
import { compareVersions } from '../../node-agent/src/core/types.ts';
import type {
  LogRecord,
  Message,
  PersistRecord,
  NodeId,
  Ready,
  ReplicaConfig,
  ReplicaStatus,
  SendResult,
  StartState,
  Version,
  View,
} from '../../node-agent/src/core/types.ts';
import type { Prng } from '../../node-agent/src/core/prng.ts';
import { StorageError as LogStoreError } from '../../node-agent/src/storage/log-store.ts';
import { StorageError } from './storage.ts';
import { SimCrash, SimStore } from './sim-store.ts';
import { decodeText, fmtV, fmtView } from './history.ts';
import type { AppEntry, DeliveryEvent, History, ShardInfo } from './history.ts';

/** Driver-level message: a shard's state, sent by the node that served a TransferOrder. */
export interface StateTransferMessage {
  kind: 'stateTransfer';
  from: NodeId;
  shardId: number;
  through: Version;
  records: LogRecord[];
}

export type SimMessage = Message | StateTransferMessage;

/** The public surface of the Replica the driver uses (lets tests drive a stand-in). */
export interface ReplicaLike {
  step(message: Message): void;
  tick(): void;
  send(shardId: number, payload: Uint8Array): SendResult;
  leave(): void;
  transferWanted(shardId: number, through: Version): boolean;
  stateTransferred(shardId: number, through: Version): void;
  hasReady(): boolean;
  ready(): Ready;
  advance(): void;
  status(): ReplicaStatus;
  assertInvariants(): void;
}

export type ReplicaFactory = (config: ReplicaConfig, start: StartState, prng: Prng) => ReplicaLike;

export const realReplica: ReplicaFactory = (config, start, prng) => new Replica(config, start, prng);

/** What a node needs from the world around it (the cluster). */
export interface NodeContext {
  now(): number;
  shards: readonly ShardInfo[];
  history: History;
  createReplica: ReplicaFactory;
  config(nodeId: NodeId): ReplicaConfig;
  /** The stores' fsync policy (see ClusterOptions.storage). */
  storage: 'fsync' | 'os';
  /** Puts a message on the wire. */
  wire(from: NodeId, to: NodeId, message: SimMessage): void;
  trace(node: NodeId, text: string): void;
  /** A fault of the replica or of the driver contract (exception, broken invariant, bad persist). */
  violation(text: string): void;
  /** The replica asked to exit; the node is already down when this is called. */
  exited(node: SimNode, reason: string): void;
  /** The node crashed inside a Ready (see SimNode.armMidReadyCrash): the cluster takes it down. */
  crashedMidReady?(node: SimNode, restartAfter: number, why: string): void;
  delivered?(event: DeliveryEvent): void;
  installed?(node: SimNode, view: View): void;
  /** Trace changes of status().waiting / wedged after every tick (costs a status() call per tick). */
  traceWaiting: boolean;
}

interface Entry {
  version: Version;
  sender: NodeId;
  payload: Uint8Array;
  text: string;
}

/** Upper bound on Ready rounds in one drain (a Replica that always has a Ready is livelocked). */
const MAX_READY_ROUNDS = 10_000;

export class SimNode {
  /**
   * The node's storage: the agent's LogStore over an in-memory file system. Survives crashes (a machine
   * crash loses what was not fsynced); replaced only by wipeDisk() (each disk of a node has its own id).
   */
  disk: SimStore;
  private disksUsed = 1;
  /** 0 before the first start; each start is a new process lifetime. */
  incarnation = 0;
  replica: ReplicaLike | null = null;
  /** Last view installed by this incarnation (driver-tracked from Ready.installView). */
  view: View | null = null;
  leaving = false;
  left = false;
  downReason: string | null = 'never started';
  /** Set when the node hit a violation; the cluster stops driving the run. */
  broken = false;
  private app = new Map<number, Entry[]>();
  /** Per shard: how many application entries are already recorded as durable (reset when the state is replaced). */
  private ackCursor = new Map<number, number>();
  private lastWaiting = '';
  /** True while draining the Ready that follows stateTransferred (deliveries released from hold). */
  private releasing = false;
  /**
   * Armed crash inside the next Ready that persists something: the process dies after writing `keep` of
   * its persist records (all of them, or a prefix: a torn write), before delivering or sending anything.
   */
  private midReadyCrash: { keep: (count: number) => number; restartAfter: number; until: number } | null = null;

  constructor(
    readonly id: NodeId,
    private readonly ctx: NodeContext,
  ) {
    this.disk = new SimStore(this.id * 1000 + this.disksUsed, this.storePolicy());
  }

  /**
   * The cluster's policy; the broken rule runs 'os' while the history says 'fsync' (the stores claim
   * to sync before they acknowledge, and do not).
   */
  private storePolicy(): 'fsync' | 'os' {
    return this.ctx.config(this.id).brokenRule === 'acknowledgeUnsynced' ? 'os' : this.ctx.storage;
  }

  get up(): boolean {
    return this.replica !== null;
  }

  get viewId(): number {
    return this.view?.viewId ?? -1;
  }

  /** Starts a new process lifetime. Persistent shards' application state comes back from the disk. */
  start(start: StartState, prng: Prng): void {
    if (this.replica) throw new Error(`node ${this.id} is already running`);
    this.incarnation++;
    this.view = null;
    this.downReason = null;
    this.lastWaiting = '';
    this.app = new Map();
    this.ackCursor = new Map();
    for (const info of this.ctx.shards) {
      if (info.persistent && this.disk.hasLog(info.shardId)) {
        this.app.set(info.shardId, this.disk.log(info.shardId).map((r) => toEntry(r)));
      }
    }
    let replica: ReplicaLike;
    try {
      replica = this.ctx.createReplica({ ...this.ctx.config(this.id), diskId: this.disk.diskId }, start, prng);
    } catch (e) {
      this.fail(`exception in new Replica(${start.kind}): ${errText(e)}`);
      return;
    }
    this.replica = replica;
    if (this.guard('start', () => this.drain())) this.checkInvariants(`start (${start.kind})`);
  }

  /** The node's volume is replaced while it is down: it comes back with an empty disk. */
  wipeDisk(): void {
    if (this.replica) throw new Error(`node ${this.id} is running: wipe its disk only while it is down`);
    this.disksUsed++;
    this.disk = new SimStore(this.id * 1000 + this.disksUsed, this.storePolicy());
  }

  /** The process dies: the replica and the volatile application state are gone, the disk stays. */
  stop(reason: string, options: { machine?: boolean } = {}): void {
    this.midReadyCrash = null;
    if (options.machine) this.disk.machineCrash();
    else this.disk.processCrash();
    this.replica = null;
    this.view = null;
    this.app = new Map();
    this.downReason = reason;
  }

  step(message: SimMessage): void {
    const replica = this.replica;
    if (!replica) return;
    if (message.kind === 'stateTransfer') {
      if (this.guard('stateTransfer', () => this.receiveTransfer(replica, message))) this.checkInvariants('stateTransferred');
      return;
    }
    const what = `step(${message.kind} from n${message.from})`;
    if (this.guard(what, () => {
      replica.step(message);
      this.drain();
    })) this.checkInvariants(what);
  }

  tick(): void {
    const replica = this.replica;
    if (!replica) return;
    if (this.guard('tick', () => {
      replica.tick();
      this.drain();
    })) this.checkInvariants('tick');
    if (this.ctx.traceWaiting && this.replica) this.traceWaitingChange();
  }

  /** Application multicast; recorded in the history with its result. */
  send(shardId: number, payload: Uint8Array): SendResult {
    const replica = this.replica;
    if (!replica) return { ok: false, reason: 'inactive' };
    let result: SendResult = { ok: false, reason: 'inactive' };
    this.guard(`send(shard ${shardId})`, () => {
      result = replica.send(shardId, payload);
      this.ctx.history.sends.push({
        tick: this.ctx.now(),
        node: this.id,
        incarnation: this.incarnation,
        shardId,
        payload: decodeText(payload),
        result,
      });
      this.drain();
    });
    return result;
  }

  leave(): void {
    const replica = this.replica;
    if (!replica) return;
    this.leaving = true;
    this.guard('leave', () => {
      replica.leave();
      this.drain();
    });
  }

  status(): ReplicaStatus | null {
    const replica = this.replica;
    if (!replica) return null;
    try {
      return replica.status();
    } catch (e) {
      this.fail(`exception in status(): ${errText(e)}`);
      return null;
    }
  }

  /** Application state of a shard in this incarnation, oldest first. */
  appEntries(shardId: number): AppEntry[] {
    return (this.app.get(shardId) ?? []).map((e) => ({ version: { ...e.version }, sender: e.sender, payload: e.text }));
  }

  /** Whether this incarnation's application state of the shard holds the payload. */
  appHas(shardId: number, payload: string): boolean {
    return (this.app.get(shardId) ?? []).some((e) => e.text === payload);
  }

  shardIdsWithState(): number[] {
    return [...this.app.keys()].sort((a, b) => a - b);
  }

  private receiveTransfer(replica: ReplicaLike, m: StateTransferMessage): void {
    const info = this.ctx.shards[m.shardId];
    if (!info) throw new Error(`state transfer for unknown shard ${m.shardId}`);
    for (const r of m.records) {
      if (compareVersions(r.version, m.through) > 0) {
        throw new Error(`state transfer of shard ${m.shardId} from ${m.from} has version ${fmtV(r.version)} beyond 'through' ${fmtV(m.through)}`);
      }
    }
    // Only a transfer the replica waits for is installed (stateTransferred ignores the others): a late
    // or duplicate one must not overwrite state the node already holds.
    if (!replica.transferWanted(m.shardId, m.through)) {
      this.ctx.trace(this.id, `ignores a state transfer of shard ${m.shardId} from n${m.from} through ${fmtV(m.through)} (not waiting for one, or stale)`);
      return;
    }
    if (info.persistent) this.disk.importShard(m.shardId, m.records);
    const entries = m.records.map((r) => toEntry(r));
    this.app.set(m.shardId, entries);
    this.ackCursor.delete(m.shardId);
    this.ctx.history.transfers.push({
      tick: this.ctx.now(),
      order: this.ctx.history.nextOrder++,
      what: 'installed',
      node: this.id,
      incarnation: this.incarnation,
      peer: m.from,
      shardId: m.shardId,
      through: { ...m.through },
      records: m.records.length,
      entries: entries.map((e) => ({ version: e.version, sender: e.sender, payload: e.text })),
    });
    this.ctx.trace(this.id, `installed state of shard ${m.shardId} from n${m.from} through ${fmtV(m.through)} (${m.records.length} records)`);
    replica.stateTransferred(m.shardId, m.through);
    this.releasing = true;
    try {
      this.drain();
    } finally {
      this.releasing = false;
    }
  }

  /** Processes every pending Ready, in the documented order. */
  /**
   * The process will die inside its next Ready that persists something (until tick `until`): after the
   * first `keep(n)` of its n persist records are durable, before any delivery or send. `keep(n) = n` is a
   * crash between persisting and sending; less is a torn write of the Ready (the store cuts the torn
   * tail, so a prefix of the records survives).
   */
  armMidReadyCrash(keep: (count: number) => number, restartAfter: number, until: number): void {
    if (this.replica) this.midReadyCrash = { keep, restartAfter, until };
  }

  disarmMidReadyCrash(): void {
    this.midReadyCrash = null;
  }

  get midReadyCrashArmed(): boolean {
    return this.midReadyCrash !== null && this.midReadyCrash.until >= this.ctx.now();
  }

  private drain(): void {
    let rounds = 0;
    while (this.replica !== null && this.replica.hasReady()) {
      if (++rounds > MAX_READY_ROUNDS) throw new Error(`hasReady() still true after ${MAX_READY_ROUNDS} Ready rounds (livelock)`);
      const replica = this.replica;
      const ready = replica.ready();
      const armed = this.midReadyCrash;
      if (armed !== null && armed.until < this.ctx.now()) this.midReadyCrash = null;
      else if (armed !== null && ready.persist.length > 0 && this.ctx.crashedMidReady) {
        const keep = Math.max(0, Math.min(ready.persist.length, armed.keep(ready.persist.length)));
        if (keep === ready.persist.length) {
          this.persist(ready.persist);
          this.ctx.crashedMidReady(this, armed.restartAfter, `crash inside a Ready: all ${keep} persist records written, nothing sent`);
          return;
        }
        // A torn write: the batch's bytes reach the journal up to about the same fraction; the store's
        // recovery at the next start cuts the torn record. (Nothing was visible to anyone: no history.)
        this.disk.tearNextWrite(keep / ready.persist.length);
        const tornBefore = this.disk.tornWrites;
        try {
          this.disk.applyBatch(ready.persist);
        } catch (e) {
          // the store reports the torn write as a failed write (wrapping the SimCrash)
          if (!(e instanceof SimCrash) && this.disk.tornWrites === tornBefore) throw e;
        }
        this.disk.cancelTear(); // the batch may have written nothing (records that change nothing)
        this.ctx.crashedMidReady(this, armed.restartAfter, `crash inside a Ready: a torn write of its ${ready.persist.length} persist records (about ${keep} written), nothing sent`);
        return;
      }
      this.process(ready);
      replica.advance();
      if (ready.exit) {
        this.stop(`exit: ${ready.exit.reason}`);
        this.ctx.exited(this, ready.exit.reason);
        return;
      }
    }
  }

  /** Makes persist records durable (and records what the checkers need of them). */
  private persist(records: readonly PersistRecord[]): void {
    const now = this.ctx.now();
    this.disk.applyBatch(records);
    for (const record of records) {
      if (record.kind === 'trim') {
        this.ctx.history.trims.push({
          tick: now,
          node: this.id,
          incarnation: this.incarnation,
          viewId: record.trim.viewId,
          trims: record.trim.trims.map((t) => [...t]),
        });
      }
      if (record.kind === 'restartAccept') {
        const plan = structuredClone(record.plan);
        this.ctx.history.restartPlans.push({ tick: now, node: this.id, incarnation: this.incarnation, lastViewId: plan.lastViewId, adopted: plan.adopted ?? [], view: plan.view });
      }
      if (record.kind === 'truncate') {
        const entries = this.app.get(record.shardId);
        if (entries && this.ctx.shards[record.shardId]?.persistent) {
          this.app.set(record.shardId, entries.filter((e) => compareVersions(e.version, record.after) <= 0));
          this.ackCursor.delete(record.shardId);
        }
      }
    }
  }

  private process(ready: Ready): void {
    const now = this.ctx.now();
    // 1b. (with persist) shards the node starts empty: clear their application state.
    for (const shardId of ready.resetShards) this.app.set(shardId, []);
    // 1. persist
    this.persist(ready.persist);
    // 2. deliver
    for (const d of ready.deliver) {
      const info = this.ctx.shards[d.shardId];
      if (!info) throw new Error(`delivery in unknown shard ${d.shardId}`);
      if (info.deliveryMode !== d.mode) throw new Error(`delivery in shard ${d.shardId} has mode ${d.mode}, the policy says ${info.deliveryMode}`);
      const text = decodeText(d.payload);
      const event: DeliveryEvent = {
        tick: now,
        node: this.id,
        incarnation: this.incarnation,
        viewId: this.viewId,
        shardId: d.shardId,
        version: { viewId: d.version.viewId, seq: d.version.seq },
        sender: d.sender,
        payload: text,
        mode: d.mode,
        ...(this.releasing ? { released: true } : {}),
      };
      this.ctx.history.deliveries.push(event);
      let entries = this.app.get(d.shardId);
      if (!entries) {
        entries = [];
        this.app.set(d.shardId, entries);
      }
      entries.push({ version: event.version, sender: d.sender, payload: d.payload.slice(), text });
      this.ctx.delivered?.(event);
    }
    // 2b. accepted sends the core can no longer carry out: a definite error to their client.
    for (const f of ready.sendsFailed) {
      this.ctx.history.sendFailures.push({ tick: now, node: this.id, incarnation: this.incarnation, shardId: f.shardId, payload: decodeText(f.payload), reason: f.reason });
      this.ctx.trace(this.id, `send of '${decodeText(f.payload)}' in shard ${f.shardId} failed: ${f.reason}`);
    }
    // 3. send (before transfers: a joiner's welcome then precedes its state on a FIFO link)
    for (const env of ready.send) this.ctx.wire(this.id, env.to, env.message);
    // 4. transfers
    for (const order of ready.transfers) {
      const info = this.ctx.shards[order.shardId];
      if (!info) throw new Error(`transfer order for unknown shard ${order.shardId}`);
      let records: LogRecord[];
      if (info.persistent) {
        records = this.disk.exportShard(order.shardId, order.through);
        const onDisk = new Set(records.map((r) => fmtV(r.version)));
        const missing = (this.app.get(order.shardId) ?? []).filter(
          (e) => compareVersions(e.version, order.through) <= 0 && !onDisk.has(fmtV(e.version)),
        );
        if (missing.length > 0) {
          throw new Error(
            `transfer of shard ${order.shardId} to n${order.to} through ${fmtV(order.through)} is served from disk, ` +
              `but delivered versions ${missing.slice(0, 5).map((e) => fmtV(e.version)).join(', ')} are not persisted yet`,
          );
        }
      } else {
        records = (this.app.get(order.shardId) ?? [])
          .filter((e) => compareVersions(e.version, order.through) <= 0)
          .map((e) => ({ shardId: order.shardId, version: { ...e.version }, sender: e.sender, payload: e.payload.slice() }));
      }
      this.ctx.history.transfers.push({
        tick: now,
        order: this.ctx.history.nextOrder++,
        what: 'served',
        node: this.id,
        incarnation: this.incarnation,
        peer: order.to,
        shardId: order.shardId,
        through: { ...order.through },
        records: records.length,
      });
      this.ctx.trace(this.id, `serves state of shard ${order.shardId} to n${order.to} through ${fmtV(order.through)} (${records.length} records)`);
      this.ctx.wire(this.id, order.to, { kind: 'stateTransfer', from: this.id, shardId: order.shardId, through: { ...order.through }, records });
    }
    // 5. installView
    if (ready.installView) {
      const view = structuredClone(ready.installView);
      this.view = view;
      const pendingState = (this.replica?.status().shards ?? []).filter((s) => !s.stateReady).map((s) => s.shardId);
      this.ctx.history.installs.push({ tick: now, order: this.ctx.history.nextOrder++, node: this.id, incarnation: this.incarnation, view, pendingState });
      this.ctx.trace(this.id, `installed ${fmtView(view)}`);
      this.ctx.installed?.(this, view);
    }
    // 6. persistenceFrontiers
    for (const f of ready.persistenceFrontiers) {
      this.ctx.history.acks.push({ tick: now, node: this.id, incarnation: this.incarnation, shardId: f.shardId, version: { ...f.version } });
      this.recordDurable(f.shardId, f.version, now);
    }
    // 7. exit: handled by drain() after advance().
  }

  /**
   * A persistence frontier F was reported: every update of this node's state of the shard up to F is now
   * durable on every member (the state is the agreed history prefix, each member logged it before its
   * rows said so). Recorded once per version, for the persistence checker.
   */
  private recordDurable(shardId: number, frontier: Version, tick: number): void {
    const entries = this.app.get(shardId) ?? [];
    let i = this.ackCursor.get(shardId) ?? 0;
    const seen = durableSeen(this.ctx.history);
    for (; i < entries.length && compareVersions(entries[i]!.version, frontier) <= 0; i++) {
      const e = entries[i]!;
      const key = `${shardId}|${fmtV(e.version)}|${e.sender}|${e.text}`;
      if (seen.has(key)) continue;
      seen.add(key);
      this.ctx.history.durable.push({ tick, node: this.id, incarnation: this.incarnation, shardId, frontier: { ...frontier }, version: { ...e.version }, sender: e.sender, payload: e.text });
    }
    this.ackCursor.set(shardId, i);
  }

  private traceWaitingChange(): void {
    const s = this.status();
    if (!s) return;
    const text = `${s.mode}${s.wedged ? ', wedged' : ''}${s.waiting.kind !== 'none' ? `, waiting (${s.waiting.kind}): ${s.waiting.message}` : ''}`;
    if (text !== this.lastWaiting) {
      this.lastWaiting = text;
      this.ctx.trace(this.id, `now ${text}`);
    }
  }

  /** Runs fn; an exception is a violation. Returns whether fn completed. */
  private guard(what: string, fn: () => void): boolean {
    try {
      fn();
      return true;
    } catch (e) {
      const kind = e instanceof StorageError || e instanceof LogStoreError ? 'storage' : 'exception';
      this.fail(`${kind} in ${what}: ${errText(e)}`);
      return false;
    }
  }

  /** assertInvariants() after an input; a throw is an 'invariant' violation. */
  private checkInvariants(after: string): void {
    const replica = this.replica;
    if (!replica) return;
    try {
      replica.assertInvariants();
    } catch (e) {
      this.fail(`invariant broken after ${after}: ${errText(e)}`);
    }
  }

  private fail(text: string): void {
    this.broken = true;
    const line = `n${this.id} (incarnation ${this.incarnation}) ${text}`;
    this.ctx.trace(this.id, `VIOLATION ${text}`);
    this.ctx.violation(line);
  }
}

const durableKeys = new WeakMap<History, Set<string>>();

function durableSeen(h: History): Set<string> {
  let set = durableKeys.get(h);
  if (!set) durableKeys.set(h, (set = new Set()));
  return set;
}

function toEntry(r: LogRecord): Entry {
  return { version: { ...r.version }, sender: r.sender, payload: r.payload.slice(), text: decodeText(r.payload) };
}

function errText(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}
