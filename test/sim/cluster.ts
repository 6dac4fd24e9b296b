// A whole Derecho group in one process: the simulated nodes, the network between them, logical time,
// the fault primitives (crash, total and majority failure, restart, wiped disk, join, leave, partition,
// cut links, deaf node, process pause, delay spike) and the recorded history.
// Both the seeded simulator (simulator.ts) and the scripted scenario API (scripted.ts) drive this.

import { Prng } from '../../node-agent/src/core/prng.ts';
import { DEFAULT_TIMING } from '../../node-agent/src/core/types.ts';
import type {
  BrokenRule,
  DataMessage,
  GroupPolicy,
  NodeId,
  ReplicaConfig,
  ReplicaStatus,
  SendResult,
  StartState,
  View,
} from '../../node-agent/src/core/types.ts';
import { Network } from './network.ts';
import { bytesEqual } from './storage.ts';
import type { NetworkOptions } from './network.ts';
import { SimNode, realReplica } from './node.ts';
import type { NodeContext, ReplicaFactory, SimMessage } from './node.ts';
import { decodeText, emptyHistory, encodeText, fmtView } from './history.ts';
import type { FinalNode, History, ProbeEvent } from './history.ts';

export type Timing = Omit<ReplicaConfig, 'nodeId' | 'policy' | 'brokenRule'>;

export interface ClusterOptions {
  seed: number;
  policy: GroupPolicy;
  founders: readonly NodeId[];
  network?: Partial<NetworkOptions>;
  /** Overrides of DEFAULT_TIMING. */
  timing?: Partial<Timing>;
  brokenRule?: BrokenRule;
  /**
   * The stores' fsync policy (default 'fsync'). Under 'os' a machine crash loses the log records the OS
   * had not flushed; control records (views, acceptances, restart promises and plans) are synced anyway.
   */
  storage?: 'fsync' | 'os';
  createReplica?: ReplicaFactory;
  /** Receives one readable line per notable event. */
  trace?: (line: string) => void;
  /** Trace status().waiting / wedged changes of every node (default: when tracing). */
  traceWaiting?: boolean;
  /** Copy every message on the wire, as a real transport would (default true). */
  cloneMessages?: boolean;
  /** Ticks until a node that exited on its own restarts; null keeps it down. Default: 10 ticks. */
  exitRestartDelay?: (node: NodeId, reason: string) => number | null;
}

export interface ClusterStats {
  crashes: number;
  restarts: number;
  exits: number;
  joins: number;
  leaves: number;
  partitions: number;
  spikes: number;
  totalFailures: number;
  /** A majority of the view crashed at once while the rest kept running. */
  majorityFailures: number;
  /** Disks replaced by empty ones. */
  wipes: number;
  /** Crashes that lost what was not fsynced (power loss). */
  machineCrashes: number;
  /** Journals corrupted while their node was down. */
  corruptions: number;
  /** Crashes after which some of the dead incarnation's messages still arrived (lateMessages of them). */
  lateCrashes: number;
  lateMessages: number;
  /** Crashes inside a Ready: after persisting (all, or a torn prefix of) its records, before sending. */
  midReadyCrashes: number;
  /** Directed links cut one way only, pairs cut both ways (non-transitive), deaf nodes, process pauses. */
  oneWayCuts: number;
  pairCuts: number;
  deafNodes: number;
  pauses: number;
  sends: number;
  sendsRefused: number;
}

export interface CrashOptions {
  /** Some of what it already sent still arrives, up to this many ticks late (see Network.crash). */
  lateTicks?: number;
  /** Its disk is replaced by an empty one: it comes back with nothing saved. */
  wipeDisk?: boolean;
  /** The machine loses power: what its store did not fsync is lost (see mem-fs.ts). */
  machine?: boolean;
  /**
   * A byte of an early journal record flips while it is down (this value picks which): its store refuses
   * to open at the restart, and the volume is replaced (an empty disk, as `wipeDisk`).
   */
  corruptByte?: number;
}

export interface Settledness {
  settled: boolean;
  /** Why not, for traces. */
  reason: string;
  view: View | null;
}

export interface QuiesceResult {
  settled: boolean;
  settledAt: number | null;
  probesDone: boolean;
  doneAt: number | null;
}

export class Cluster {
  readonly history: History;
  readonly network: Network<SimMessage>;
  readonly nodes = new Map<NodeId, SimNode>();
  /** Every view id installed by anyone -> the first installed copy. */
  readonly views = new Map<number, View>();
  readonly violations: string[] = [];
  readonly stats: ClusterStats = {
    crashes: 0,
    restarts: 0,
    exits: 0,
    joins: 0,
    leaves: 0,
    partitions: 0,
    spikes: 0,
    totalFailures: 0,
    majorityFailures: 0,
    wipes: 0,
    machineCrashes: 0,
    corruptions: 0,
    lateCrashes: 0,
    midReadyCrashes: 0,
    lateMessages: 0,
    oneWayCuts: 0,
    pairCuts: 0,
    deafNodes: 0,
    pauses: 0,
    sends: 0,
    sendsRefused: 0,
  };
  /** Set by the first node-level violation: the run stops being driven. */
  halted = false;
  readonly policy: GroupPolicy;
  private nowTick = 0;
  private readonly nodePrng: Prng;
  private readonly restartAt = new Map<NodeId, number>();
  /** Paused processes -> the tick they resume at (null: until resume()). */
  private readonly pausedUntil = new Map<NodeId, number | null>();
  private readonly ctx: NodeContext;
  private readonly traceFn: ((line: string) => void) | null;
  private readonly clone: boolean;
  private readonly exitRestartDelay: (node: NodeId, reason: string) => number | null;
  private readonly founders: NodeId[];

  constructor(readonly options: ClusterOptions) {
    this.policy = options.policy;
    this.founders = [...options.founders];
    const root = new Prng(options.seed);
    const netPrng = root.fork();
    this.nodePrng = root.fork();
    this.traceFn = options.trace ?? null;
    this.clone = options.cloneMessages ?? true;
    this.exitRestartDelay = options.exitRestartDelay ?? (() => 10);
    this.history = emptyHistory(options.policy, options.storage ?? 'fsync');
    this.network = new Network<SimMessage>(netPrng, options.network ?? {}, (line) => this.trace(null, line));
    const timing: Timing = { ...DEFAULT_TIMING, ...(options.timing ?? {}) };
    const createReplica = options.createReplica ?? realReplica;
    this.ctx = {
      now: () => this.nowTick,
      shards: this.history.shards,
      history: this.history,
      createReplica,
      storage: options.storage ?? 'fsync',
      config: (nodeId) => ({
        ...timing,
        nodeId,
        policy: options.policy,
        ...(options.brokenRule ? { brokenRule: options.brokenRule } : {}),
      }),
      wire: (from, to, message) => {
        if (message.kind === 'data' && message.payload !== null) this.sniff(message);
        // A row is already a fresh copy per recipient (Replica.pushRow clones it for each): no second copy.
        this.network.send(from, to, this.clone && message.kind !== 'row' ? wireCopy(message) : message);
      },
      trace: (node, text) => this.trace(node, text),
      violation: (text) => {
        this.violations.push(`t=${this.nowTick} ${text}`);
        this.halted = true;
      },
      exited: (node, reason) => this.onExit(node, reason),
      crashedMidReady: (node, restartAfter, why) => {
        this.stats.midReadyCrashes++;
        this.crash(node.id, restartAfter, why);
      },
      installed: (_node, view) => {
        if (!this.views.has(view.viewId)) this.views.set(view.viewId, view);
      },
      traceWaiting: options.traceWaiting ?? this.traceFn !== null,
    };
    for (const id of this.founders) this.nodes.set(id, new SimNode(id, this.ctx));
  }

  get now(): number {
    return this.nowTick;
  }

  get tracing(): boolean {
    return this.traceFn !== null;
  }

  trace(node: NodeId | null, text: string): void {
    if (!this.traceFn) return;
    const t = String(this.nowTick).padStart(5, ' ');
    this.traceFn(`t=${t} ${node === null ? '   ' : `n${node}`.padEnd(3, ' ')} ${text}`);
  }

  /** Boots the founders with the same member list. */
  start(): void {
    this.trace(null, `group founded by [${this.founders.join(',')}]`);
    for (const id of this.founders) {
      const node = this.nodes.get(id)!;
      node.start({ kind: 'bootstrap', members: [...this.founders] }, this.nodePrng.fork());
    }
  }

  /** One unit of logical time: due resumes and restarts, due messages, then every running node ticks. */
  tick(): void {
    if (this.halted) return;
    this.nowTick++;
    this.network.setTime(this.nowTick);
    for (const [id, at] of [...this.pausedUntil]) {
      if (at !== null && at <= this.nowTick) this.resume(id);
    }
    for (const [id, at] of [...this.restartAt]) {
      if (at <= this.nowTick) this.restart(id);
    }
    for (;;) {
      if (this.halted) return;
      const m = this.network.deliverNext();
      if (!m) break;
      const node = this.nodes.get(m.to);
      if (!node?.up) continue;
      if (this.pausedUntil.has(m.to)) throw new Error(`the network handed a message to paused node ${m.to}`);
      node.step(m.message);
    }
    for (const node of this.nodesInOrder()) {
      if (this.halted) return;
      if (node.up && !this.pausedUntil.has(node.id)) node.tick();
    }
  }

  /** Runs `n` ticks (stops early when halted). */
  run(n: number): void {
    for (let i = 0; i < n && !this.halted; i++) this.tick();
  }

  nodesInOrder(): SimNode[] {
    return [...this.nodes.values()].sort((a, b) => a.id - b.id);
  }

  node(id: NodeId): SimNode {
    const n = this.nodes.get(id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  /** Node ids ever started (or founders), ascending. */
  knownIds(): NodeId[] {
    return [...this.nodes.keys()].sort((a, b) => a - b);
  }

  upIds(): NodeId[] {
    return this.nodesInOrder().filter((n) => n.up).map((n) => n.id);
  }

  /** Nodes expected to be part of the group eventually (not gone for good). */
  remainingIds(): NodeId[] {
    return this.nodesInOrder().filter((n) => !n.left).map((n) => n.id);
  }

  status(id: NodeId): ReplicaStatus | null {
    return this.nodes.get(id)?.status() ?? null;
  }

  /** The newest view installed by a running node (driver-tracked), or null. */
  currentView(): View | null {
    let best: View | null = null;
    for (const n of this.nodes.values()) {
      if (n.up && n.view && (best === null || n.view.viewId > best.viewId)) best = n.view;
    }
    return best;
  }

  /**
   * The process dies now (its disk survives unless `options.wipeDisk`). `restartAfter`: ticks until it
   * comes back (none: stays down). `options.lateTicks`: some of its in-flight messages still arrive.
   */
  crash(id: NodeId, restartAfter: number | null = null, why = 'crash', options: CrashOptions = {}): void {
    const node = this.node(id);
    if (!node.up) return;
    node.stop(why, { machine: options.machine === true });
    this.pausedUntil.delete(id);
    const lost = this.network.crash(id, options.lateTicks ? { lateTicks: options.lateTicks } : {});
    this.stats.crashes++;
    if (options.lateTicks) {
      this.stats.lateCrashes++;
      this.stats.lateMessages += lost.late;
    }
    // A leave not carried out yet dies with the process: it restarts like any other crash.
    node.leaving = false;
    this.restartAt.delete(id);
    if (restartAfter !== null && !node.left) this.restartAt.set(id, this.nowTick + restartAfter);
    this.trace(
      id,
      `CRASH (${why}; ${lost.dropped} queued messages lost${options.lateTicks ? `, ${lost.late} already sent still arrive up to ${options.lateTicks} ticks late` : ''})` +
        `${restartAfter !== null && !node.left ? `, restarts at t=${this.nowTick + restartAfter}` : ''}`,
    );
    if (options.machine) {
      this.stats.machineCrashes++;
      this.history.machineCrashes.push({ tick: this.nowTick, node: id });
    }
    if (options.wipeDisk) this.wipeDisk(id);
    else if (options.corruptByte !== undefined) {
      if (node.disk.corrupt(options.corruptByte)) {
        this.stats.corruptions++;
        this.trace(id, 'DISK CORRUPTED: a byte of an early journal record flipped');
      } else this.trace(id, 'disk corruption skipped: the journal has fewer than two records');
    }
  }

  /**
   * The node will crash inside its next Ready that persists something (within `withinTicks`): after
   * writing all its persist records (`torn` false: a crash between persisting and sending) or a prefix
   * of them (`tornFraction` of them, rounded down: a torn write), before delivering or sending.
   */
  armMidReadyCrash(id: NodeId, restartAfter: number | null, options: { tornFraction?: number; withinTicks?: number } = {}): void {
    const node = this.node(id);
    if (!node.up) return;
    const fraction = options.tornFraction;
    node.armMidReadyCrash((n) => (fraction === undefined ? n : Math.floor(fraction * n)), restartAfter ?? 1_000_000_000, this.nowTick + (options.withinTicks ?? 30));
    this.trace(id, `CRASH ARMED inside its next Ready that persists (${fraction === undefined ? 'after persisting, before sending' : `a torn write keeping ${Math.round(fraction * 100)}% of its records`})`);
  }

  /** Replaces the disk of a node that is down by an empty one (its volume was replaced). */
  wipeDisk(id: NodeId): void {
    const node = this.node(id);
    if (node.up) throw new Error(`wipeDisk(${id}): the node is running`);
    node.wipeDisk();
    this.stats.wipes++;
    this.trace(id, 'DISK WIPED: it comes back with an empty disk');
  }

  /**
   * Every running node crashes at once; each restarts after `restartAfter(id)` ticks (null: stays down).
   * `wipe`: that node's disk is replaced too.
   */
  totalFailure(restartAfter: (id: NodeId) => number | null = () => null, wipe: NodeId | null = null, powerOutage = false): NodeId[] {
    const up = this.upIds();
    this.trace(null, `TOTAL FAILURE${powerOutage ? ' (power outage: unsynced writes are lost)' : ''}: every running node crashes [${up.join(',')}]${wipe !== null ? `; n${wipe} comes back with an empty disk` : ''}`);
    this.stats.totalFailures++;
    for (const id of up) this.crash(id, restartAfter(id), powerOutage ? 'total failure, machine' : 'total failure', { ...(id === wipe ? { wipeDisk: true } : {}), ...(powerOutage ? { machine: true } : {}) });
    return up;
  }

  /**
   * `ids` (a majority of the view) crash at once while the other running nodes keep running; each
   * restarts after `restartAfter(id)` ticks (null: stays down).
   */
  majorityFailure(ids: readonly NodeId[], restartAfter: (id: NodeId) => number | null = () => null): void {
    const rest = this.upIds().filter((id) => !ids.includes(id));
    this.trace(null, `MAJORITY FAILURE: [${ids.join(',')}] crash at once; [${rest.join(',')}] keep running`);
    this.stats.majorityFailures++;
    for (const id of ids) this.crash(id, restartAfter(id), 'majority failure');
  }

  /**
   * The process is stopped (SIGSTOP): it neither ticks nor receives; messages to it wait on their links.
   * It resumes with its stale state after missing `ticks` ticks (null: at resume()).
   */
  pause(id: NodeId, ticks: number | null = null): void {
    const node = this.node(id);
    if (!node.up) throw new Error(`pause(${id}): the node is down`);
    if (this.pausedUntil.has(id)) return;
    // It misses exactly `ticks` ticks: it resumes at the start of tick now + ticks + 1.
    this.pausedUntil.set(id, ticks === null ? null : this.nowTick + ticks + 1);
    this.network.hold(id);
    this.stats.pauses++;
    this.trace(id, `PAUSE (process stopped${ticks === null ? '' : ` for ${ticks} ticks, resumes at t=${this.nowTick + ticks + 1}`})`);
  }

  resume(id: NodeId): void {
    if (!this.pausedUntil.has(id)) return;
    this.pausedUntil.delete(id);
    this.network.release(id);
    this.trace(id, 'RESUME: the process runs again, with its stale state');
  }

  isPaused(id: NodeId): boolean {
    return this.pausedUntil.has(id);
  }

  pausedIds(): NodeId[] {
    return [...this.pausedUntil.keys()].sort((a, b) => a - b);
  }

  /** Starts a node that is down: with its saved state if it ever installed a view, else as a joiner. */
  restart(id: NodeId): void {
    const node = this.node(id);
    this.restartAt.delete(id);
    if (node.up || node.left) return;
    this.network.revive(id);
    const refused = node.disk.open();
    if (refused !== null) {
      // The agent would refuse to start on this volume; its operator replaces it (an empty disk).
      this.trace(id, `STORE REFUSED TO OPEN: ${refused}; its volume is replaced`);
      this.wipeDisk(id);
    } else if (node.disk.lastRecovery !== null) this.trace(id, `store recovery: ${node.disk.lastRecovery}`);
    const saved = node.disk.savedState();
    const contacts = this.knownIds().filter((n) => n !== id);
    const start: StartState = saved ? { kind: 'restart', saved, contacts } : { kind: 'join', contacts };
    this.stats.restarts++;
    this.trace(
      id,
      `RESTART as incarnation ${node.incarnation + 1} (${saved ? `${saved.blank ? "restart with nothing saved but restart promises" : `restart from saved view ${saved.lastView.viewId}`}, log tails ${saved.logTails.map((t) => `s${t.shardId}@${t.version.viewId}:${t.version.seq}`).join(' ') || 'none'}` : 'join: nothing saved'})`,
    );
    node.start(start, this.nodePrng.fork());
  }

  /** When a node is due to restart (null if none is scheduled). */
  restartTime(id: NodeId): number | null {
    return this.restartAt.get(id) ?? null;
  }

  scheduleRestart(id: NodeId, at: number): void {
    if (!this.node(id).left) this.restartAt.set(id, at);
  }

  /** A brand-new node id joins through every known node. Returns its id. */
  join(id?: NodeId): NodeId {
    const newId = id ?? Math.max(0, ...this.nodes.keys()) + 1;
    if (this.nodes.has(newId)) throw new Error(`node ${newId} already exists`);
    const node = new SimNode(newId, this.ctx);
    this.nodes.set(newId, node);
    const contacts = this.knownIds().filter((n) => n !== newId);
    this.stats.joins++;
    this.trace(newId, `JOIN as a new node (contacts [${contacts.join(',')}])`);
    node.start({ kind: 'join', contacts }, this.nodePrng.fork());
    return newId;
  }

  /** Graceful leave: the node asks to leave and is gone for good once it exits. */
  leave(id: NodeId): void {
    const node = this.node(id);
    if (!node.up || node.leaving || this.isPaused(id)) return;
    this.trace(id, 'LEAVE requested');
    node.leave();
  }

  partition(groups: readonly (readonly NodeId[])[]): void {
    const dropped = this.network.partition(groups);
    this.stats.partitions++;
    this.trace(null, `PARTITION ${groups.map((g) => `[${g.join(',')}]`).join(' | ')} (${dropped} queued messages lost)`);
  }

  heal(): void {
    if (!this.network.isPartitioned()) return;
    this.network.heal();
    this.trace(null, 'HEAL: the network is whole again');
  }

  /** One-way link failure: `from` -> `to` drops everything (queued messages included); `to` -> `from` works. */
  cutLink(from: NodeId, to: NodeId): void {
    const dropped = this.network.cutLink(from, to);
    this.stats.oneWayCuts++;
    this.trace(null, `LINK CUT n${from} -> n${to} (one way; ${dropped} queued messages lost)`);
  }

  restoreLink(from: NodeId, to: NodeId): void {
    this.network.restoreLink(from, to);
    this.trace(null, `LINK RESTORED n${from} -> n${to}`);
  }

  /** Non-transitive cut: `a` and `b` cannot reach each other, both still reach everyone else. */
  cutPair(a: NodeId, b: NodeId): void {
    const dropped = this.network.cutLink(a, b) + this.network.cutLink(b, a);
    this.stats.pairCuts++;
    this.trace(null, `LINK CUT n${a} <-> n${b} (both ways, both still reach the others; ${dropped} queued messages lost)`);
  }

  restorePair(a: NodeId, b: NodeId): void {
    this.network.restoreLink(a, b);
    this.network.restoreLink(b, a);
    this.trace(null, `LINK RESTORED n${a} <-> n${b}`);
  }

  /** The node receives nothing (it still sends) until undeafen. */
  deafen(id: NodeId): void {
    const dropped = this.network.deafen(id);
    this.stats.deafNodes++;
    this.trace(id, `DEAF: receives nothing, still sends (${dropped} queued messages lost)`);
  }

  undeafen(id: NodeId): void {
    if (!this.network.isDeaf(id)) return;
    this.network.undeafen(id);
    this.trace(id, 'HEARS again');
  }

  /** Every fault ends: partition, cut links, deaf nodes, delay spikes, armed crashes; paused processes resume. */
  healAll(): void {
    for (const n of this.nodes.values()) n.disarmMidReadyCrash();
    this.heal();
    if (this.network.cutLinkList().length > 0) this.trace(null, 'every cut link is restored');
    for (const id of this.knownIds()) this.undeafen(id);
    this.network.restoreAll();
    this.network.clearSpikes();
    for (const id of this.pausedIds()) this.resume(id);
  }

  spike(extraDelay: number, lasts: number, nodes: readonly NodeId[] | null = null): void {
    this.network.addSpike({ extraDelay, lasts, nodes });
    this.stats.spikes++;
    this.trace(null, `DELAY SPIKE +${extraDelay} ticks for ${lasts} ticks on ${nodes ? `links of [${nodes.join(',')}]` : 'every link'}`);
  }

  /** Application multicast of a text payload; recorded in the history. */
  send(id: NodeId, shardId: number, text: string): SendResult {
    const node = this.nodes.get(id);
    // A paused process runs no application code either.
    if (!node?.up || this.isPaused(id)) return { ok: false, reason: 'inactive' };
    this.stats.sends++;
    const result = node.send(shardId, encodeText(text));
    if (!result.ok) this.stats.sendsRefused++;
    return result;
  }

  /** Whether the running incarnation of `id` has applied `payload` in the shard (delivered or transferred). */
  applied(id: NodeId, shardId: number, payload: string): boolean {
    const node = this.nodes.get(id);
    return !!node?.up && node.appHas(shardId, payload);
  }

  /**
   * Whether the group is settled: every node that is not gone for good runs, is active and not wedged in
   * one view whose members are exactly those nodes, and holds the state of each of its shards.
   */
  settledness(): Settledness {
    const remaining = this.nodesInOrder().filter((n) => !n.left);
    let viewId: number | null = null;
    for (const n of remaining) {
      if (!n.up) return { settled: false, reason: `n${n.id} is down`, view: null };
      if (n.leaving) return { settled: false, reason: `n${n.id} is leaving`, view: null };
      const s = n.status();
      if (!s) return { settled: false, reason: `n${n.id} has no status`, view: null };
      if (s.mode !== 'active') return { settled: false, reason: `n${n.id} is ${s.mode}: ${s.waiting.message}`, view: null };
      if (s.wedged) return { settled: false, reason: `n${n.id} is wedged: ${s.waiting.message}`, view: null };
      const notReady = s.shards.find((sh) => !sh.stateReady);
      if (notReady) return { settled: false, reason: `n${n.id} waits for the state of shard ${notReady.shardId}`, view: null };
      if (viewId === null) viewId = s.viewId;
      else if (s.viewId !== viewId) return { settled: false, reason: `views differ (n${n.id} is in ${s.viewId}, others in ${viewId})`, view: null };
    }
    if (viewId === null) return { settled: false, reason: 'no node is running', view: null };
    const view = this.views.get(viewId) ?? null;
    if (!view) return { settled: false, reason: `view ${viewId} was never installed through a Ready`, view: null };
    const members = [...view.members].sort((a, b) => a - b).join(',');
    const expected = remaining.map((n) => n.id).join(',');
    if (members !== expected) return { settled: false, reason: `view ${viewId} has members [${members}], running: [${expected}]`, view };
    return { settled: true, reason: '', view };
  }

  /**
   * The quiet phase: heals every fault (partition, cut links, deaf nodes, spikes; paused nodes resume),
   * restarts every node that is down, waits until the group is settled,
   * then every sender of every shard multicasts a probe and we wait until every shard member applied every
   * probe. Gives up after `budget` ticks (the liveness checker then says what is missing).
   */
  quiesce(budget: number, checkEvery = 5): QuiesceResult {
    this.history.judgeLiveness = true;
    this.healAll();
    for (const n of this.nodesInOrder()) if (!n.up && !n.left) this.scheduleRestart(n.id, this.nowTick + 1);
    this.trace(null, `QUIET PHASE: every fault healed; liveness budget ${budget} ticks`);
    const end = this.nowTick + budget;
    const result: QuiesceResult = { settled: false, settledAt: null, probesDone: false, doneAt: null };
    let round = 0;
    rounds: while (this.nowTick < end && !this.halted) {
      let s: Settledness = this.settledness();
      while (!s.settled && this.nowTick < end && !this.halted) {
        this.tick();
        if (this.nowTick % checkEvery === 0) s = this.settledness();
      }
      if (!s.settled || !s.view) {
        if (!this.halted) this.trace(null, `NOT SETTLED after ${budget} ticks: ${s.reason}`);
        return result;
      }
      result.settled = true;
      result.settledAt = this.nowTick;
      const view = s.view;
      round++;
      this.history.settled = { tick: this.nowTick, viewId: view.viewId };
      this.trace(null, `SETTLED in ${fmtView(view)}; sending probes${round > 1 ? ` (round ${round})` : ''}`);
      const probes: ProbeEvent[] = [];
      for (const shard of view.layout.shards) {
        for (const sender of shard.senders) {
          const payload = `probe-s${shard.shardId}-n${sender}-v${view.viewId}${round > 1 ? `-r${round}` : ''}`;
          probes.push({ shardId: shard.shardId, sender, payload, accepted: false, lastRefusal: null });
        }
      }
      // Only the last round is judged: an accepted send may be lost when its sender restarts.
      this.history.probes = probes;
      const incarnations = this.nodesInOrder().map((n) => n.incarnation).join(',');
      const trySend = (): void => {
        for (const p of probes) {
          if (p.accepted) continue;
          const r = this.send(p.sender, p.shardId, p.payload);
          if (r.ok) p.accepted = true;
          else p.lastRefusal = r.reason;
        }
      };
      trySend();
      while (this.nowTick < end && !this.halted) {
        this.tick();
        if (this.nodesInOrder().map((n) => n.incarnation).join(',') !== incarnations) {
          this.trace(null, 'a node restarted after the probes went out (accepted sends die with their sender): probing again once settled');
          continue rounds;
        }
        trySend();
        if (this.nowTick % checkEvery === 0 && this.probesDone(probes) && this.settledness().settled) {
          result.probesDone = true;
          result.doneAt = this.nowTick;
          this.trace(null, `LIVE: every probe applied by every member of its shard, and the group is settled`);
          return result;
        }
      }
    }
    if (!this.halted) this.trace(null, `PROBES NOT DONE after ${budget} ticks`);
    return result;
  }

  private probesDone(probes: readonly ProbeEvent[]): boolean {
    const view = this.currentView();
    if (!view) return false;
    for (const p of probes) {
      if (!p.accepted) return false;
      const shard = view.layout.shards.find((s) => s.shardId === p.shardId);
      if (!shard) continue;
      for (const m of shard.members) if (!this.applied(m, p.shardId, p.payload)) return false;
    }
    return true;
  }

  /** Records the final snapshot (statuses, disks, application states) into the history. */
  finish(): History {
    const final: FinalNode[] = [];
    for (const n of this.nodesInOrder()) {
      final.push({
        node: n.id,
        incarnation: n.incarnation,
        state: n.left ? 'left' : n.up ? 'up' : 'down',
        leaving: n.leaving,
        downReason: n.up ? null : n.downReason,
        status: n.up ? n.status() : null,
        disk: n.disk.snapshot().map((l) => ({
          shardId: l.shardId,
          records: l.records.map((r) => ({ version: r.version, sender: r.sender, payload: decodeText(r.payload) })),
        })),
        app: n.shardIdsWithState().map((shardId) => ({ shardId, entries: n.appEntries(shardId) })),
      });
    }
    this.history.final = final;
    return this.history;
  }

  private readonly sniffed = new Map<string, Uint8Array[]>();

  /** Records each distinct application multicast once, with its place in the sender's stream. */
  private sniff(m: DataMessage): void {
    const payload = m.payload!;
    const key = `${m.viewId}|${m.shardId}|${m.senderRank}|${m.index}|${m.from}`;
    let seen = this.sniffed.get(key);
    if (!seen) this.sniffed.set(key, (seen = []));
    if (seen.some((p) => p === payload || bytesEqual(p, payload))) return;
    seen.push(payload.slice());
    this.history.wire.push({ viewId: m.viewId, shardId: m.shardId, senderRank: m.senderRank, index: m.index, sender: m.from, payload: decodeText(payload) });
  }

  private onExit(node: SimNode, reason: string): void {
    this.network.exit(node.id);
    this.stats.exits++;
    if (node.leaving && !reason.startsWith('left the group')) {
      // It exited for another reason before its leave was carried out: the request died with the
      // process. The supervisor restarts it like any other exit (it may be asked to leave again).
      node.leaving = false;
      this.trace(node.id, `leave request lost: it exited first (${reason})`);
    }
    if (node.leaving) {
      node.left = true;
      this.stats.leaves++;
      this.trace(node.id, `EXIT after leaving (${reason}); gone for good`);
      return;
    }
    const delay = this.exitRestartDelay(node.id, reason);
    if (delay !== null) this.restartAt.set(node.id, this.nowTick + Math.max(1, delay));
    this.trace(node.id, `EXIT: ${reason}${delay !== null ? `; the supervisor restarts it at t=${this.nowTick + Math.max(1, delay)}` : ''}`);
  }
}

/**
 * What a transport does to a message: the receiver gets its own copy (plain objects, arrays and byte
 * arrays; messages hold nothing else). Much cheaper than structuredClone for these small shapes.
 */
export function wireCopy<T>(value: T): T {
  return copyValue(value) as T;
}

function copyValue(v: unknown): unknown {
  if (v === null || typeof v !== 'object') return v;
  if (v instanceof Uint8Array) return v.slice();
  if (Array.isArray(v)) {
    const out = new Array<unknown>(v.length);
    for (let i = 0; i < v.length; i++) out[i] = copyValue(v[i]);
    return out;
  }
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(v)) out[k] = copyValue((v as Record<string, unknown>)[k]);
  return out;
}
