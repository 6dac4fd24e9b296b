// The Derecho protocol core for one member: deterministic and I/O-free, in the style of etcd's raft.
//
//   step(message) / tick() / send() / leave() / stateTransferred()  -> mutate state
//   hasReady() / ready()                                             -> what to persist, deliver, transfer, send
//   advance()                                                        -> the driver processed the last Ready
//
// State is a shared state table (state-table.ts): one row per member, counters that only go up, each
// member writing only its own row and pushing it to the others. Every decision is a predicate over the
// table: stability (min of a received column), the persistence frontier (min of the persisted column),
// the view change (Paxos run inside the table: promise = promisedBallot, accept = acceptedBallot +
// accepted value, decision = committed), the ragged trim (part of the decided value).
// docs/protocol.md explains the protocol as implemented, with its invariants.

import { allocate } from './allocation.ts';
import { Prng } from './prng.ts';
import { planRestart, planStart, truncationFor } from './restart.ts';
import type { RestartPlan } from './restart.ts';
import { contiguousSeqCount, globalSeq, lastSeqInside, persistenceFrontier, seqOwner, stableSeqCount, trimsThrough } from './stability.ts';
import { cloneRow, emptyRow, RowMonitor } from './state-table.ts';
import type {
  Ballot,
  DataMessage,
  Delivery,
  LogRecord,
  Message,
  NodeId,
  PersistRecord,
  Ready,
  ReplicaConfig,
  ReplicaStatus,
  RestartDecision,
  RestartReport,
  Row,
  HeldLogs,
  SavedState,
  SavedTrim,
  SendResult,
  ShardLayout,
  StartState,
  StateTransferPlan,
  TransferOrder,
  Version,
  View,
  ViewChangeValue,
  Waiting,
  WelcomeMessage,
} from './types.ts';
import { VERSION_NONE, blankSavedState, compareVersions } from './types.ts';

/** Per-shard state of a shard this node is a member of, for the current view. */
interface ShardState {
  layout: ShardLayout;
  /** My index in layout.senders, or -1. */
  mySenderRank: number;
  /** View ranks of the shard's members. */
  memberRanks: number[];
  /** Next index I send (null messages included). Only goes up within a view. */
  sent: number;
  /** My sent messages not yet received by every member: index outboxBase + i. */
  outbox: (Uint8Array | null)[];
  outboxBase: number;
  /** Application sends waiting for a window slot. Bounded by pendingSendsMax. */
  pending: Uint8Array[];
  /** Per sender: received, not yet delivered payloads; inbox[r][i] has index inboxBase[r] + i. */
  inbox: (Uint8Array | null)[][];
  inboxBase: number[];
  /** Global sequence numbers delivered in this view (ordered mode). Only goes up. */
  deliveredSeq: number;
  /** Sequence numbers whose log records were handed out in a Ready (persistent shards). */
  loggedSeq: number;
  /** Sequence numbers known durable (advance() after the Ready that logged them). Only goes up. */
  persistedSeq: number;
  /** loggedSeq as of the last ready(); becomes persistedSeq on advance(). */
  loggedSeqAtReady: number;
  /** Highest persistence frontier reported so far (count in this view). */
  frontierReported: number;
  /** The last persistence frontier reported (any view; VERSION_NONE: none yet). Only goes up. */
  frontier: Version;
  /**
   * Delivered in an earlier view (the ragged-edge cleanup included) and not yet covered by a reported
   * frontier, else null. Reported once every member of the shard shows, in a row of this view, that it
   * holds the shard's state: a member installs a view only after persisting what it delivered in the
   * one before (Ready order), and a joiner is state-ready only once its transfer is persisted.
   */
  carriedFrontier: Version | null;
  /** Last version delivered (any view), for status. */
  lastDelivered: Version;
  /** This node holds the shard's state; false while waiting for a state transfer. */
  stateReady: boolean;
  /** Who serves our state transfer (when !stateReady). */
  transferFrom: NodeId | null;
  transferRequestedTick: number;
  /** Deliveries (and their log records) withheld while !stateReady. Bounded by heldDeliveriesMax. */
  held: Delivery[];
  /** A transferred state covers every version up to this one: later deliveries at or below it are skipped. */
  coveredThrough: Version;
  /** While !stateReady: a transfer must cover at least this version to be usable (older ones are stale). */
  minThrough: Version;
}

interface RestartState {
  saved: SavedState;
  /** Latest report from each restarting node (mine included), with the tick it arrived and its JSON. */
  reports: Map<NodeId, { report: RestartReport; tick: number; json: string }>;
  /** Counts changes of the reports' contents (not of their ticks). Only goes up. */
  reportsVersion: number;
  /** The plan of the reports as of `version` (planning is the costly part of a restart: once per change). */
  planned: { version: number; plan: RestartPlan } | null;
  quorumSinceTick: number | null;
  /** Paxos acceptor state (persisted through Ready). */
  promised: Ballot | null;
  accepted: { ballot: Ballot; plan: RestartDecision } | null;
  /** Proposer state when this node leads the restart. */
  proposing: {
    ballot: Ballot;
    startedTick: number;
    promises: Map<NodeId, { accepted: { ballot: Ballot; plan: RestartDecision } | null }>;
    plan: RestartDecision | null;
    acceptedBy: Set<NodeId>;
  } | null;
  highestRoundSeen: number;
  waiting: Waiting;
}

const HISTORY_MAX = 8;

export function compareBallots(a: Ballot | null, b: Ballot | null): number {
  if (a === null) return b === null ? 0 : -1;
  if (b === null) return 1;
  if (a.round !== b.round) return a.round < b.round ? -1 : 1;
  if (a.nodeId !== b.nodeId) return a.nodeId < b.nodeId ? -1 : 1;
  return 0;
}

export class Replica {
  private readonly config: ReplicaConfig;
  private readonly me: NodeId;
  private readonly prng: Prng;
  private mode: ReplicaStatus['mode'];
  /** Logical time. Only goes up. */
  private tickCount = 0;

  // ---- current view ----
  private view: View | null = null;
  private myRank = -1;
  private rows: Row[] = [];
  private lastHeardTick: number[] = [];
  private shards = new Map<number, ShardState>();
  private rowDirty = false;
  private lastPushTick = 0;
  private wedgedSinceTick = 0;
  /** Per `shardId:rank`: what that member had received of my messages when it last made progress, and since when. */
  private retransmitWatch = new Map<string, { received: number; sinceTick: number }>();
  private readonly rowMonitor = new RowMonitor();
  /** The Ready containing the last install has not been advanced yet: hold new-view deliveries. */
  private installPendingAdvance = false;
  /** Decided transitions out of recent views, to bring laggards up to date. */
  private decided: ViewChangeValue[] = [];
  private lastDecidedReply = new Map<NodeId, number>();
  private leaving = false;
  private waiting: Waiting = { kind: 'none', message: '' };
  /** Leader's queue of join requests (bounded by pendingJoinsMax). */
  private pendingJoins: { nodeId: NodeId; incarnation: number; diskId: number; holds: HeldLogs | null }[] = [];
  /** Welcomes this node sent for the current view, to resend on a repeated request. */
  private welcomes = new Map<NodeId, WelcomeMessage>();
  /**
   * The incarnation each member was admitted with, for members admitted while this node was in the group
   * (kept across views while they stay members). A join request carrying that incarnation is a late retry
   * of the admitted process, not a restart.
   */
  private admittedIncarnations = new Map<NodeId, number>();
  /**
   * Ranks of the current view whose process is known to be gone: they came back as a new process (a join
   * request or a restart report from a member of the view). Only grows within a view; a rank in it is
   * also suspected. Such a member can never again acknowledge a change of this view.
   */
  private restartedRanks = new Set<number>();
  /** If the current view came from a restart, the decision (to resend to members that missed it). */
  private restartCommitOfView: RestartDecision | null = null;

  // ---- joining ----
  private readonly incarnation: number;
  /** This node's disk id (ReplicaConfig.diskId; 0: unknown). */
  private readonly diskId: number;
  private contacts: NodeId[] = [];
  private contactCursor = 0;
  private preferredContact: NodeId | null = null;
  private lastRetryTick = -1_000_000;
  private joiningSinceTick = 0;
  /** Started with nothing saved: if the group turns out to be restarting, take part as a blank member. */
  private startedBlank = false;
  /**
   * Founding (start kind bootstrap, mode 'joining'): view 0 waits until every other founder confirmed it
   * founds the same group (a foundingHello with the same members, or view-0 traffic). Evidence that the
   * group already exists ends it: the node joins instead. Null once view 0 is installed or abandoned.
   * Invariant: non-null only in mode 'joining', and `confirmed` only grows, within `view.members`.
   */
  private founding: { view: View; confirmed: Set<NodeId> } | null = null;
  /** The restart-consensus acceptor state of this process, kept while it joins instead (see becomeJoiner). */
  /** What this process restarted with and joins with instead (JoinRequestMessage.holds); null: nothing. */
  private joinHolds: HeldLogs | null = null;
  private restartAcceptor: Pick<SavedState, 'restartPromised' | 'restartAccepted' | 'highestViewIdSeen'> | null = null;
  /** The saved state a restarted node came back with, while it asks to join a running group (null otherwise). */
  private savedWhileJoining: SavedState | null = null;

  // ---- restarting ----
  private restart: RestartState | null = null;

  // ---- output (the next Ready) ----
  private out: Ready = emptyReady();

  constructor(config: ReplicaConfig, start: StartState, prng: Prng) {
    this.config = config;
    this.me = config.nodeId;
    this.prng = prng;
    this.incarnation = prng.int(1, 2 ** 30);
    this.diskId = config.diskId ?? 0;
    switch (start.kind) {
      case 'bootstrap': {
        const members = [...start.members];
        if (!members.includes(this.me)) throw new Error(`bootstrap: node ${this.me} is not in the founding members [${members.join(', ')}]`);
        if (new Set(members).size !== members.length) throw new Error(`bootstrap: duplicate member ids in [${members.join(', ')}]`);
        const alloc = allocate(config.policy, null, members);
        if (!alloc.adequate) throw new Error(`bootstrap: the founding members cannot host the policy: ${alloc.reason}`);
        const view: View = { viewId: 0, members, layout: alloc.layout };
        this.mode = 'joining';
        this.startedBlank = true;
        this.contacts = members.filter((m) => m !== this.me);
        this.founding = { view, confirmed: new Set([this.me]) };
        this.waiting = { kind: 'joining', message: `founding: waiting for founding member(s) ${this.contacts.join(', ')} to confirm view 0` };
        if (this.contacts.length === 0) this.installFounding();
        else this.sendFoundingHellos();
        break;
      }
      case 'join':
        this.mode = 'joining';
        this.startedBlank = true;
        this.contacts = start.contacts.filter((c) => c !== this.me);
        this.waiting = { kind: 'joining', message: 'joining: waiting for the leader to admit this node' };
        break;
      case 'restart':
        this.mode = 'restarting';
        this.contacts = uniq([...start.contacts, ...start.saved.lastView.members]).filter((c) => c !== this.me);
        this.enterRestart(start.saved);
        break;
    }
  }

  // ======================================================================================
  // Public API
  // ======================================================================================

  step(message: Message): void {
    if (this.mode === 'exited') return;
    switch (message.kind) {
      case 'row':
      case 'data':
        if (this.mode === 'active') this.onViewMessage(message);
        else if (this.mode === 'restarting' && this.restart) this.onRestartViewTraffic(message.from, message.viewId);
        else if (this.founding) {
          // A founder's view-0 traffic: it installed view 0, so it heard from every founder, us included.
          if (message.viewId === 0 && this.founding.view.members.includes(message.from)) this.confirmFounder(message.from);
          else if (message.viewId > 0) this.abandonFounding(`node ${message.from} is already in view ${message.viewId}`, null);
        }
        break;
      case 'foundingHello':
        this.onFoundingHello(message.from, message.members);
        break;
      case 'joinRequest':
        this.onJoinRequest(message.from, message.incarnation, message.diskId ?? 0, message.holds ?? null);
        break;
      case 'joinRedirect':
        if (this.founding) this.abandonFounding(`node ${message.from} answered that the group runs, led by node ${message.leader}`, message.leader);
        if (this.mode === 'joining') {
          this.preferredContact = message.leader;
          this.sendJoinRequest(message.leader);
        }
        break;
      case 'welcome':
        this.onWelcome(message);
        break;
      case 'viewDecided':
        this.onViewDecided(message.value);
        break;
      case 'restartReport':
        if (this.founding) this.abandonFounding(`node ${message.from} is restarting the group`, null);
        if (this.mode === 'joining' && this.startedBlank) this.becomeBlankRestarter();
        // Only from the member we were joining through (the leader a restartActive named): the group we
        // meant to join is gone. A report from any other node only says that node restarts; reacting to it
        // would flip between joining and restarting while the group runs.
        else if (this.mode === 'joining' && this.savedWhileJoining !== null && message.from === this.preferredContact) this.resumeRestart();
        this.onRestartReport(message.from, message.report);
        break;
      case 'restartActive':
        if (this.mode === 'restarting') this.becomeJoiner(message.leader);
        break;
      case 'restartPrepare':
        this.onRestartPrepare(message.from, message.ballot);
        break;
      case 'restartPromise':
        this.onRestartPromise(message.from, message.ballot, message.accepted, message.report);
        break;
      case 'restartAccept':
        this.onRestartAccept(message.from, message.ballot, message.plan);
        break;
      case 'restartAccepted':
        this.onRestartAccepted(message.from, message.ballot);
        break;
      case 'restartCommit':
        this.onRestartCommit(message.plan);
        break;
      case 'stateRequest':
        this.onStateRequest(message.from, message.shardId, message.viewId);
        break;
      default:
        break;
    }
    this.progress();
  }

  tick(): void {
    if (this.mode === 'exited') return;
    this.tickCount++;
    if (this.mode === 'active') this.tickActive();
    else if (this.mode === 'joining') this.tickJoining();
    else if (this.mode === 'restarting') this.tickRestarting();
    this.progress();
    this.pushRowIfDue();
  }

  send(shardId: number, payload: Uint8Array): SendResult {
    if (this.mode !== 'active' || !this.view) return { ok: false, reason: 'inactive' };
    const shard = this.shards.get(shardId);
    if (!shard) return { ok: false, reason: 'notMember' };
    if (shard.mySenderRank < 0) return { ok: false, reason: 'notSender' };
    if (payload.byteLength > this.config.payloadBytesMax) return { ok: false, reason: 'tooLarge' };
    if (shard.pending.length >= this.config.pendingSendsMax) return { ok: false, reason: 'backpressure' };
    if (this.myRow().wedged) return { ok: false, reason: 'wedged' };
    shard.pending.push(payload);
    this.trySend(shard);
    this.progress();
    return { ok: true };
  }

  leave(): void {
    if (this.mode !== 'active') {
      this.exit('left the group before joining it');
      return;
    }
    this.leaving = true;
    this.myRow().leaving = true;
    this.rowDirty = true;
    this.progress();
  }

  /**
   * Whether a state transfer for the shard, covering versions up to `through`, is one this node waits for.
   * The driver asks before installing a transfer: a late or stale one must not replace newer state.
   */
  transferWanted(shardId: number, through: Version): boolean {
    const shard = this.shards.get(shardId);
    return shard !== undefined && !shard.stateReady && compareVersions(through, shard.minThrough) >= 0;
  }

  stateTransferred(shardId: number, through: Version): void {
    const shard = this.shards.get(shardId);
    if (!shard || !this.transferWanted(shardId, through)) return;
    shard.stateReady = true;
    shard.transferFrom = null;
    shard.coveredThrough = through;
    if (shard.layout.persistent && shard.layout.deliveryMode === 'ordered') this.out.persist.push({ kind: 'shardState', shardId, complete: true });
    if (compareVersions(through, shard.lastDelivered) > 0) shard.lastDelivered = through;
    for (const d of shard.held) {
      if (compareVersions(d.version, through) <= 0) continue;
      this.emitDelivery(shard, d);
    }
    shard.held = [];
    if (shard.layout.persistent && shard.layout.deliveryMode === 'ordered') shard.loggedSeq = shard.deliveredSeq;
    if (this.myRank >= 0) {
      this.myRow().stateReady[shardId] = true;
      this.rowDirty = true;
    }
    this.progress();
  }

  /** Push the own row now if it changed (a driver may call this after a batch of steps). */
  pushRowIfDirty(): void {
    if (this.mode === 'active' && this.rowDirty) this.pushRow();
  }

  hasReady(): boolean {
    const o = this.out;
    return o.persist.length > 0 || o.deliver.length > 0 || o.transfers.length > 0 || o.send.length > 0 ||
      o.resetShards.length > 0 || o.sendsFailed.length > 0 || o.installView !== null || o.persistenceFrontiers.length > 0 || o.exit !== null;
  }

  ready(): Ready {
    const r = this.out;
    this.out = emptyReady();
    for (const shard of this.shards.values()) shard.loggedSeqAtReady = shard.loggedSeq;
    return r;
  }

  advance(): void {
    this.installPendingAdvance = false;
    if (this.mode !== 'active' || this.myRank < 0) return;
    const row = this.myRow();
    for (const [shardId, shard] of this.shards) {
      if (shard.loggedSeqAtReady > shard.persistedSeq) {
        shard.persistedSeq = shard.loggedSeqAtReady;
        row.persisted[shardId] = shard.persistedSeq;
        this.rowDirty = true;
      }
    }
  }

  status(): ReplicaStatus {
    const view = this.view;
    const shards = [...this.shards.values()].map((s) => ({
      shardId: s.layout.shardId,
      subgroup: s.layout.subgroup,
      shardIndex: s.layout.shardIndex,
      members: [...s.layout.members],
      delivered: s.lastDelivered,
      persistenceFrontier: s.frontier,
      stateReady: s.stateReady,
    }));
    const waiting = this.mode === 'restarting' && this.restart ? this.restart.waiting : this.waiting;
    return {
      nodeId: this.me,
      mode: this.mode,
      viewId: view?.viewId ?? -1,
      members: view ? [...view.members] : [],
      leader: this.mode === 'active' ? this.leaderNode() : null,
      wedged: this.mode === 'active' ? this.myRow().wedged : false,
      waiting: { ...waiting },
      shards,
    };
  }

  /**
   * The barrier of a linearizable read of an ordered shard arriving now (ADR 0010): the view, and how many
   * of the shard's global sequence numbers this node must have delivered in it before it answers — every
   * message it has received from every sender (a write acknowledged before the read began was received
   * by every member of its shard). `refused`, with the reason, when this node cannot serve such a read: not
   * an active member holding the shard's state, or in a minority (it would wait for nothing).
   */
  readTarget(shardId: number): { viewId: number; seq: number } | { refused: string } {
    if (this.mode !== 'active' || !this.view) return { refused: `node ${this.me} is ${this.mode}, not in a view` };
    const shard = this.shards.get(shardId);
    if (!shard) return { refused: `node ${this.me} is not a member of shard ${shardId} in view ${this.view.viewId}` };
    if (!shard.stateReady) return { refused: `node ${this.me} is waiting for the state of shard ${shardId}` };
    if (this.waiting.kind === 'minority') return { refused: `node ${this.me} is in a minority: ${this.waiting.message}` };
    if (shard.layout.deliveryMode !== 'ordered') return { viewId: this.view.viewId, seq: 0 };
    return { viewId: this.view.viewId, seq: contiguousSeqCount(this.myRow().received[shardId]!) };
  }

  /** Global sequence numbers of the shard delivered in the current view, or null if not a member. */
  deliveredInView(shardId: number): { viewId: number; seq: number } | null {
    const shard = this.shards.get(shardId);
    if (this.mode !== 'active' || !this.view || !shard) return null;
    return { viewId: this.view.viewId, seq: shard.deliveredSeq };
  }

  /** The current view (null while joining or restarting). */
  currentView(): View | null {
    return this.view;
  }

  assertInvariants(): void {
    if (this.founding) {
      if (this.mode !== 'joining') throw new Error('invariant: a founding replica is joining until view 0 is installed');
      if (![...this.founding.confirmed].every((m) => this.founding!.view.members.includes(m))) throw new Error('invariant: only founders confirm view 0');
    }
    if (this.mode === 'active') {
      if (!this.view || this.myRank < 0 || this.view.members[this.myRank] !== this.me) throw new Error('invariant: an active replica has a view that contains it');
      const row = this.myRow();
      this.rowMonitor.check(this.view.viewId, row);
      if (row.committed && !row.accepted) throw new Error('invariant: committed implies an accepted value');
      if (row.acceptedBallot > row.promisedBallot && row.acceptedBallot !== this.myRank) throw new Error('invariant: a member accepts only under a ballot it promised');
      for (const [shardId, s] of this.shards) {
        if (!(s.persistedSeq <= s.loggedSeq && s.loggedSeq <= s.deliveredSeq)) {
          throw new Error(`invariant: shard ${shardId}: persisted ${s.persistedSeq} <= logged ${s.loggedSeq} <= delivered ${s.deliveredSeq}`);
        }
        if (s.layout.deliveryMode === 'ordered' && this.config.brokenRule !== 'deliverOrderedOnReceipt') {
          const mine = contiguousSeqCount(row.received[shardId]!);
          if (s.deliveredSeq > mine) throw new Error(`invariant: shard ${shardId}: delivered ${s.deliveredSeq} beyond what this member received (${mine})`);
        }
        if (s.outboxBase + s.outbox.length !== s.sent) throw new Error(`invariant: shard ${shardId}: outbox covers [${s.outboxBase}, ${s.sent})`);
        if (s.pending.length > this.config.pendingSendsMax + this.config.windowSize) throw new Error(`invariant: shard ${shardId}: pending sends over their bound`);
        if (s.held.length > this.config.heldDeliveriesMax) throw new Error(`invariant: shard ${shardId}: held deliveries over their bound`);
        if (s.mySenderRank >= 0 && s.sent - this.minReceivedOf(s, s.mySenderRank) > this.config.windowSize) {
          throw new Error(`invariant: shard ${shardId}: more than windowSize=${this.config.windowSize} messages in flight`);
        }
        if (row.stateReady[shardId] !== s.stateReady) throw new Error(`invariant: shard ${shardId}: row.stateReady mirrors the shard state`);
      }
    }
    if (this.pendingJoins.length > this.config.pendingJoinsMax) throw new Error('invariant: pending joins over their bound');
  }

  // ======================================================================================
  // Active member: the state table
  // ======================================================================================

  private myRow(): Row {
    return this.rows[this.myRank]!;
  }

  private tickActive(): void {
    const view = this.view!;
    const row = this.myRow();
    if (this.tickCount % this.config.heartbeatTicks === 0) {
      row.heartbeat++;
      this.rowDirty = true;
    }
    for (let r = 0; r < view.members.length; r++) {
      if (r === this.myRank || row.suspected[r]) continue;
      if (this.tickCount - this.lastHeardTick[r]! > this.config.suspectTicks) this.suspect(r);
    }
    if (row.wedged && this.tickCount - this.wedgedSinceTick > this.config.wedgedExitTicks) {
      this.exit(`wedged for ${this.config.wedgedExitTicks} ticks in view ${view.viewId} without a new view (${this.waiting.message || 'no progress'})`);
      return;
    }
    if (!row.wedged) {
      for (const shard of this.shards.values()) {
        this.retransmit(shard);
        this.sendNullsIfBehind(shard);
      }
    }
    for (const shard of this.shards.values()) {
      if (!shard.stateReady && shard.transferFrom !== null && this.tickCount - shard.transferRequestedTick > this.config.retryTicks * 2) {
        shard.transferRequestedTick = this.tickCount;
        this.emit(shard.transferFrom, { kind: 'stateRequest', from: this.me, shardId: shard.layout.shardId, viewId: view.viewId });
      }
    }
  }

  private pushRowIfDue(): void {
    if (this.mode !== 'active') return;
    if (this.rowDirty || this.tickCount - this.lastPushTick >= this.config.heartbeatTicks) this.pushRow();
  }

  private pushRow(): void {
    const view = this.view!;
    const row = this.myRow();
    row.pushCount++;
    this.rowDirty = false;
    this.lastPushTick = this.tickCount;
    for (let r = 0; r < view.members.length; r++) {
      if (r === this.myRank) continue;
      this.emit(view.members[r]!, { kind: 'row', from: this.me, viewId: view.viewId, row: cloneRow(row) });
    }
  }

  private onViewMessage(message: Message & { kind: 'row' | 'data' }): void {
    const view = this.view!;
    if (message.viewId !== view.viewId) {
      this.onOtherViewTraffic(message.from, message.viewId);
      return;
    }
    const rank = view.members.indexOf(message.from);
    if (rank < 0 || rank === this.myRank) return;
    this.lastHeardTick[rank] = this.tickCount;
    if (message.kind === 'row') {
      if (!validRowShape(message.row, view)) return;
      if (message.row.pushCount > this.rows[rank]!.pushCount) this.rows[rank] = message.row;
      return;
    }
    this.onData(message);
  }

  private onData(m: DataMessage): void {
    const shard = this.shards.get(m.shardId);
    if (!shard) return;
    const row = this.myRow();
    if (row.wedged) return; // the received column is frozen once wedged
    if (shard.layout.senders[m.senderRank] !== m.from) return;
    if (m.payload !== null && m.payload.byteLength > this.config.payloadBytesMax) return;
    const received = row.received[m.shardId]!;
    const expected = received[m.senderRank]!;
    if (m.index !== expected) return; // duplicate, or a gap the sender's retransmission will fill
    this.acceptData(shard, m.senderRank, m.payload);
  }

  /** Count a message as received (own messages included) and deliver whatever became deliverable. */
  private acceptData(shard: ShardState, senderRank: number, payload: Uint8Array | null): void {
    const shardId = shard.layout.shardId;
    const row = this.myRow();
    const received = row.received[shardId]!;
    const index = received[senderRank]!;
    received[senderRank] = index + 1;
    this.rowDirty = true;
    const raw = shard.layout.deliveryMode === 'raw' || this.config.brokenRule === 'deliverOrderedOnReceipt';
    if (raw) {
      if (payload !== null) {
        const seq = globalSeq(index, senderRank, shard.layout.senders.length);
        this.deliverOne(shard, { viewId: this.view!.viewId, seq }, shard.layout.senders[senderRank]!, payload, shard.layout.deliveryMode === 'raw');
      }
      if (shard.layout.deliveryMode === 'raw') return;
    }
    shard.inbox[senderRank]!.push(payload);
  }

  private deliverStable(shard: ShardState): void {
    if (this.installPendingAdvance) return;
    if (shard.layout.deliveryMode !== 'ordered') return;
    const shardId = shard.layout.shardId;
    const stable = stableSeqCount(shard.memberRanks.map((r) => this.rows[r]!.received[shardId]!));
    this.deliverOrderedUpTo(shard, stable);
  }

  /** Deliver ordered messages in round-robin order until `seqCount` (or the first one not received). */
  private deliverOrderedUpTo(shard: ShardState, seqCount: number): void {
    const n = shard.layout.senders.length;
    const viewId = this.view!.viewId;
    while (shard.deliveredSeq < seqCount) {
      const seq = shard.deliveredSeq;
      const { index, senderRank } = seqOwner(seq, n);
      const slot = index - shard.inboxBase[senderRank]!;
      const inbox = shard.inbox[senderRank]!;
      if (slot !== 0 || inbox.length === 0) break; // not received (only possible for a removed member)
      const payload = inbox.shift()!;
      shard.inboxBase[senderRank]!++;
      shard.deliveredSeq++;
      this.myRow().delivered[shard.layout.shardId] = shard.deliveredSeq;
      this.rowDirty = true;
      if (this.config.brokenRule === 'deliverOrderedOnReceipt') {
        if (shard.layout.persistent) shard.loggedSeq = shard.deliveredSeq;
        continue; // already handed out on receipt
      }
      if (payload !== null) this.deliverOne(shard, { viewId, seq }, shard.layout.senders[senderRank]!, payload, false);
      else if (shard.stateReady && shard.layout.persistent && shard.held.length === 0) shard.loggedSeq = shard.deliveredSeq;
    }
  }

  /**
   * Ragged-edge cleanup: deliver every message inside each sender's trim (every surviving member received
   * them), in round-robin order, skipping only the slots beyond a sender's trim. Delivering just the
   * gap-free prefix would leave messages of a sender that stays in the group undelivered forever: its
   * resend covers only what lies beyond its own trim.
   */
  private deliverInsideTrims(shard: ShardState, trims: readonly number[]): void {
    const n = shard.layout.senders.length;
    const end = lastSeqInside(trims) + 1;
    while (shard.deliveredSeq < end) {
      const { index, senderRank } = seqOwner(shard.deliveredSeq, n);
      if (index >= trims[senderRank]!) {
        shard.deliveredSeq++; // a slot beyond its sender's trim: no one delivers it in this view
        continue;
      }
      if (index !== shard.inboxBase[senderRank] || shard.inbox[senderRank]!.length === 0) break;
      this.deliverOrderedUpTo(shard, shard.deliveredSeq + 1);
    }
    // The mutant also delivers what this member alone received after the trim.
    if (this.config.brokenRule === 'deliverPastTrim') this.deliverOrderedUpTo(shard, Number.POSITIVE_INFINITY);
    this.myRow().delivered[shard.layout.shardId] = shard.deliveredSeq;
  }

  private deliverOne(shard: ShardState, version: Version, sender: NodeId, payload: Uint8Array, raw: boolean): void {
    if (!raw && compareVersions(version, shard.coveredThrough) <= 0) {
      // Already part of the state transferred to us (the source had delivered further than we had).
      if (shard.layout.persistent && this.view && version.viewId === this.view.viewId) shard.loggedSeq = Math.max(shard.loggedSeq, version.seq + 1);
      return;
    }
    const d: Delivery = { shardId: shard.layout.shardId, version, sender, payload, mode: raw ? 'raw' : 'ordered' };
    if (!shard.stateReady && !raw) {
      if (shard.held.length >= this.config.heldDeliveriesMax) {
        this.exit(`state transfer for shard ${shard.layout.shardId} did not arrive before ${this.config.heldDeliveriesMax} deliveries were held`);
        return;
      }
      shard.held.push(d);
      return;
    }
    this.emitDelivery(shard, d);
  }

  private emitDelivery(shard: ShardState, d: Delivery): void {
    this.out.deliver.push(d);
    if (compareVersions(d.version, shard.lastDelivered) > 0) shard.lastDelivered = d.version;
    if (d.mode === 'ordered' && shard.layout.persistent) {
      if (this.config.brokenRule === 'deliverOrderedOnReceipt') return;
      const record: LogRecord = { shardId: d.shardId, version: d.version, sender: d.sender, payload: d.payload };
      this.out.persist.push({ kind: 'log', record });
      if (this.view && d.version.viewId === this.view.viewId) shard.loggedSeq = Math.max(shard.loggedSeq, d.version.seq + 1);
    }
  }

  private minReceivedOf(shard: ShardState, senderRank: number): number {
    let m = Number.POSITIVE_INFINITY;
    for (const r of shard.memberRanks) m = Math.min(m, this.rows[r]!.received[shard.layout.shardId]![senderRank]!);
    return m;
  }

  private trySend(shard: ShardState): void {
    if (this.myRow().wedged || shard.mySenderRank < 0) return;
    while (shard.pending.length > 0 && this.windowOpen(shard)) this.sendData(shard, shard.pending.shift()!);
  }

  private windowOpen(shard: ShardState): boolean {
    return shard.sent - this.minReceivedOf(shard, shard.mySenderRank) < this.config.windowSize;
  }

  private sendData(shard: ShardState, payload: Uint8Array | null): void {
    const view = this.view!;
    const index = shard.sent++;
    shard.outbox.push(payload);
    const message: DataMessage = {
      kind: 'data', from: this.me, viewId: view.viewId, shardId: shard.layout.shardId,
      senderRank: shard.mySenderRank, index, payload,
    };
    for (const r of shard.memberRanks) if (r !== this.myRank) this.emit(view.members[r]!, message);
    this.acceptData(shard, shard.mySenderRank, payload);
  }

  /**
   * Ordered mode: an idle sender sends null messages so the round-robin never waits for it. It fills its
   * slot of every round up to the highest round any sender has reached (not only the rounds before the
   * highest message seen): the next message of the active sender then finds this slot already stable,
   * and its delivery costs two hops (data, then the rows that acknowledge it) instead of four.
   */
  private sendNullsIfBehind(shard: ShardState): void {
    if (shard.layout.deliveryMode !== 'ordered' || shard.mySenderRank < 0 || shard.pending.length > 0) return;
    const n = shard.layout.senders.length;
    const received = this.myRow().received[shard.layout.shardId]!;
    let highestRound = -1;
    for (let r = 0; r < n; r++) highestRound = Math.max(highestRound, received[r]! - 1);
    while (shard.sent <= highestRound && this.windowOpen(shard)) this.sendData(shard, null);
  }

  /** Resend my messages a lagging member has not received (lost on a broken link). */
  private retransmit(shard: ShardState): void {
    if (shard.mySenderRank < 0) return;
    const view = this.view!;
    const shardId = shard.layout.shardId;
    const minAll = this.minReceivedOf(shard, shard.mySenderRank);
    if (minAll > shard.outboxBase) {
      shard.outbox.splice(0, minAll - shard.outboxBase);
      shard.outboxBase = minAll;
    }
    for (const r of shard.memberRanks) {
      if (r === this.myRank || this.myRow().suspected[r]) continue;
      const theirs = this.rows[r]!.received[shardId]![shard.mySenderRank]!;
      if (theirs >= shard.sent) {
        this.retransmitWatch.delete(`${shardId}:${r}`);
        continue;
      }
      // Only a member that has made no progress on my messages for retransmitTicks gets them again: one
      // that keeps receiving merely lags by what is in flight (resending the window then would double
      // the traffic of a busy sender every retransmitTicks).
      const key = `${shardId}:${r}`;
      const seen = this.retransmitWatch.get(key);
      if (seen === undefined || seen.received !== theirs) {
        this.retransmitWatch.set(key, { received: theirs, sinceTick: this.tickCount });
        continue;
      }
      if (this.tickCount - seen.sinceTick < this.config.retransmitTicks) continue;
      seen.sinceTick = this.tickCount;
      const to = view.members[r]!;
      for (let index = Math.max(theirs, shard.outboxBase); index < shard.sent; index++) {
        this.emit(to, {
          kind: 'data', from: this.me, viewId: view.viewId, shardId, senderRank: shard.mySenderRank,
          index, payload: shard.outbox[index - shard.outboxBase]!,
        }, true);
      }
    }
  }

  // ======================================================================================
  // Membership: suspicion, wedge, Paxos in the state table, ragged trim, install
  // ======================================================================================

  private suspect(rank: number): void {
    const row = this.myRow();
    if (rank === this.myRank || row.suspected[rank]) return;
    row.suspected[rank] = true;
    this.rowDirty = true;
  }

  private leaderRankAmongLive(): number {
    const row = this.myRow();
    for (let r = 0; r < row.suspected.length; r++) if (!row.suspected[r]) return r;
    return this.myRank;
  }

  private leaderNode(): NodeId {
    return this.view!.members[this.leaderRankAmongLive()]!;
  }

  private liveRanks(): number[] {
    const row = this.myRow();
    const out: number[] = [];
    for (let r = 0; r < row.suspected.length; r++) if (!row.suspected[r]) out.push(r);
    return out;
  }

  private hasMajority(liveCount: number): boolean {
    if (this.config.brokenRule === 'installWithoutMajority') return true;
    return liveCount * 2 > this.view!.members.length;
  }

  private wedge(): void {
    const row = this.myRow();
    if (row.wedged) return;
    row.wedged = true;
    this.rowDirty = true;
    this.wedgedSinceTick = this.tickCount;
  }

  private progress(): void {
    if (this.mode === 'restarting') {
      this.progressRestart();
      return;
    }
    if (this.mode !== 'active') return;
    const view = this.view!;
    const row = this.myRow();
    // Suspicions spread: what a live member suspects, everyone suspects (sticky within the view). Not
    // from a member this node suspects (a cut link between two members then removes one of them, not
    // both), and not from a member whose own row puts it in a minority: a node that cannot hear a
    // majority (a deaf node suspects everyone) cannot take part in any view change, so it is the one
    // suspected; copying its suspicions would put every member in a minority and stop the whole group.
    // (A member that is itself in a minority does not suspect the others of its side for it: all of
    // them wait together, as the partition rule below says.)
    const spreadAll = this.config.brokenRule === 'spreadEverySuspicion';
    const inMinority: number[] = [];
    for (let r = 0; r < this.rows.length; r++) {
      if (r === this.myRank || row.suspected[r]) continue;
      const other = this.rows[r]!;
      if (!spreadAll) {
        let theirLive = 0;
        for (const s of other.suspected) if (!s) theirLive++;
        if (!this.hasMajority(theirLive)) {
          inMinority.push(r);
          continue;
        }
      }
      for (let j = 0; j < other.suspected.length; j++) if (other.suspected[j] && j !== this.myRank) this.suspect(j);
    }
    if (inMinority.length > 0 && this.hasMajority(this.liveRanks().length - inMinority.length)) for (const r of inMinority) this.suspect(r);
    // A majority of the view suspects us (suspicions never go back within a view): no next view can
    // include this process. Exit now so the supervisor restarts us and we join again, instead of waiting
    // wedged for a view change that cannot come (e.g. after a pause or a healed partition, while the
    // others wait for us as the only holder of a shard: we come back as its returning holder).
    let suspectedBy = 0;
    for (let r = 0; r < this.rows.length; r++) {
      if (r !== this.myRank && this.rows[r]!.suspected[this.myRank] && this.tickCount - this.lastHeardTick[r]! <= this.config.suspectTicks) suspectedBy++;
    }
    if (suspectedBy * 2 > view.members.length) {
      this.exit(`suspected by ${suspectedBy} of the ${view.members.length} members of view ${view.viewId}: the next view cannot include this process; restarting to rejoin`);
      return;
    }
    const changeWanted = row.suspected.some((s) => s) || this.pendingJoins.length > 0 ||
      this.rows.some((o, r) => (o.leaving && this.canLeave(r)) || o.wedged || o.promisedBallot >= 0 || o.committed);
    if (changeWanted) this.wedge();
    for (const shard of this.shards.values()) this.deliverStable(shard);
    this.reportFrontiers();
    if (this.mode !== 'active') return;
    if (!row.wedged) {
      for (const shard of this.shards.values()) {
        this.trySend(shard);
        // An idle sender answers others' messages with nulls at once, not at its next tick: ordered
        // delivery waits for every sender's slot in the round-robin.
        this.sendNullsIfBehind(shard);
      }
      this.waiting = this.shardWaiting();
      if (this.leaving && this.waiting.kind === 'none') {
        this.waiting = { kind: 'none', message: 'leaving: waiting until another member holds the state of every persistent shard this node holds' };
      }
      return;
    }
    // A decided value anywhere in the table is final: install it.
    for (const o of this.rows) {
      if (o.committed && o.accepted && o.accepted.fromViewId === view.viewId) {
        this.install(o.accepted);
        return;
      }
    }
    const live = this.liveRanks();
    if (!this.hasMajority(live.length)) {
      // A member we still consider live suspects us, and we cannot reach a majority: the rest of the
      // group is removing us. Exit now, so the supervisor restarts us and we join again.
      const removedBy = this.rows.findIndex((o, r) => r !== this.myRank && o.suspected[this.myRank] &&
        this.tickCount - this.lastHeardTick[r]! <= this.config.suspectTicks);
      if (removedBy >= 0) {
        this.exit(`in a minority of view ${view.viewId} and suspected by node ${view.members[removedBy]}: restarting to rejoin`);
        return;
      }
      // Members that came back as new processes can never acknowledge a change of this view. If the
      // members that might still do so are no majority, no successor of this view can ever be decided,
      // by us or by anyone: the group has failed as a whole. Exit now so the supervisor restarts us and we
      // take part in the restart from the logs, instead of making the returning members wait for our
      // wedged exit (issue #12: a restarting member never waits on a member wedged in an old view).
      if (this.restartedRanks.size > 0 && !this.hasMajority(view.members.length - this.restartedRanks.size)) {
        const gone = [...this.restartedRanks].map((r) => view.members[r]!).sort((a, b) => a - b);
        this.exit(`view ${view.viewId} can never change: node(s) ${gone.join(', ')} came back as new processes, leaving no majority of its ${view.members.length} members; restarting to recover the group from the logs`);
        return;
      }
      this.waiting = {
        kind: 'minority',
        message: `wedged in view ${view.viewId}: only ${live.length} of ${view.members.length} members reachable (a majority is needed); suspected: ${this.suspectedNodes().join(', ')}`,
      };
      return;
    }
    const leaderRank = live[0]!;
    if (row.promisedBallot < leaderRank) {
      row.promisedBallot = leaderRank;
      this.rowDirty = true;
    }
    if (leaderRank === this.myRank) this.leadViewChange(live);
    else this.followViewChange(leaderRank);
  }

  /** Whether the member at `rank` may leave now: every persistent shard it holds has another live holder. */
  private canLeave(rank: number): boolean {
    const view = this.view!;
    const node = view.members[rank]!;
    const mine = this.myRow();
    for (const shard of view.layout.shards) {
      if (!shard.persistent || shard.deliveryMode !== 'ordered' || !shard.members.includes(node)) continue;
      if (!this.rows[rank]!.stateReady[shard.shardId]) continue; // it holds nothing of this shard yet
      const otherHolder = shard.members.some((m) => {
        const r = view.members.indexOf(m);
        return r !== rank && !mine.suspected[r] && !this.rows[r]!.leaving && this.rows[r]!.stateReady[shard.shardId] === true;
      });
      if (!otherHolder) return false;
    }
    return true;
  }

  private suspectedNodes(): NodeId[] {
    const row = this.myRow();
    return this.view!.members.filter((_, r) => row.suspected[r]);
  }

  private shardWaiting(): Waiting {
    for (const s of this.shards.values()) {
      if (!s.stateReady) return { kind: 'stateTransfer', message: `waiting for the state of shard ${s.layout.subgroup}/${s.layout.shardIndex} from node ${s.transferFrom}` };
    }
    return { kind: 'none', message: '' };
  }

  private followViewChange(leaderRank: number): void {
    const row = this.myRow();
    const leaderRow = this.rows[leaderRank]!;
    this.waiting = { kind: 'none', message: `view change in progress (leader ${this.view!.members[leaderRank]})` };
    if (leaderRow.acceptedBallot === leaderRank && leaderRow.accepted && row.acceptedBallot < leaderRank &&
      leaderRow.accepted.fromViewId === this.view!.viewId) {
      row.accepted = leaderRow.accepted;
      row.acceptedBallot = leaderRank;
      this.rowDirty = true;
      this.out.persist.push({ kind: 'viewIdSeen', viewId: leaderRow.accepted.next.viewId });
      if (this.config.brokenRule !== 'skipPersistAcceptedChange') this.out.persist.push({ kind: 'viewAccepted', accepted: { value: leaderRow.accepted, ballot: leaderRank } });
    }
  }

  private leadViewChange(live: number[]): void {
    const row = this.myRow();
    const ready = live.every((r) => this.rows[r]!.wedged && this.rows[r]!.promisedBallot === this.myRank);
    if (!ready) {
      this.waiting = { kind: 'none', message: 'view change: waiting for every live member to wedge and follow this leader' };
      return;
    }
    if (row.acceptedBallot !== this.myRank) {
      let adopt: ViewChangeValue | null = null;
      let adoptBallot = -1;
      for (const r of this.config.brokenRule === 'leaderIgnoresAcceptedValues' ? [] : live) {
        const o = this.rows[r]!;
        if (o.accepted && o.acceptedBallot > adoptBallot && o.accepted.fromViewId === this.view!.viewId) {
          adopt = o.accepted;
          adoptBallot = o.acceptedBallot;
        }
      }
      let value = adopt;
      if (!value) {
        const fresh = this.proposeValue(live);
        if (typeof fresh === 'string') {
          this.waiting = { kind: 'inadequate', message: fresh };
          return;
        }
        value = fresh;
      }
      row.accepted = value;
      row.acceptedBallot = this.myRank;
      this.rowDirty = true;
      this.out.persist.push({ kind: 'viewIdSeen', viewId: value.next.viewId });
      if (this.config.brokenRule !== 'skipPersistAcceptedChange') this.out.persist.push({ kind: 'viewAccepted', accepted: { value, ballot: this.myRank } });
    }
    const acceptedAll = live.every((r) => this.rows[r]!.acceptedBallot === this.myRank);
    if (acceptedAll && this.hasMajority(live.length)) {
      row.committed = true;
      this.rowDirty = true;
      this.install(row.accepted!);
    } else {
      this.waiting = { kind: 'none', message: 'view change: waiting for every live member to accept the proposal' };
    }
  }

  /** The leader's fresh proposal, or the reason it cannot make one. */
  private proposeValue(live: number[]): ViewChangeValue | string {
    const view = this.view!;
    const liveSet = new Set(live);
    // A leaving member that is the last holder of a persistent shard stays until the state has a new home.
    const survivors = live.filter((r) => !this.rows[r]!.leaving || !this.canLeave(r)).map((r) => view.members[r]!);
    const joined: NodeId[] = [];
    const joinedDisks: number[] = [];
    for (const j of this.pendingJoins) {
      if (joined.length >= this.config.joinsPerViewMax) break;
      if (!survivors.includes(j.nodeId) && !joined.includes(j.nodeId)) {
        joined.push(j.nodeId);
        joinedDisks.push(j.diskId);
      }
    }
    const members = [...survivors, ...joined];
    // The disk each member joined or restarted with: survivors keep theirs, joiners bring theirs.
    const memberDisks = [...survivors.map((m) => this.diskOf(view.members.indexOf(m))), ...joinedDisks];
    if (members.length === 0) return `view ${view.viewId}: every member is leaving or failed`;
    const alloc = allocate(this.config.policy, view.layout, members);
    if (!alloc.adequate) return `next view would be inadequate: ${alloc.reason}; waiting for more nodes to join`;
    const trims: number[][] = [];
    /** Persistent shards none of whose members is left, and the returning holder whose log becomes their state. */
    const returned = new Map<number, NodeId>();
    for (const shard of view.layout.shards) {
      const liveMembers = shard.members.map((m) => view.members.indexOf(m)).filter((r) => liveSet.has(r));
      if (liveMembers.length === 0) {
        if (shard.persistent && shard.deliveryMode === 'ordered') {
          const back = this.returningSource(shard, joined);
          if (back === null || !alloc.layout.shards[shard.shardId]!.members.includes(back.nodeId)) {
            return `shard ${shard.subgroup}/${shard.shardIndex} has no reachable member (its persisted state is with ${shard.members.join(', ')}); waiting for them or for a total restart`;
          }
          returned.set(shard.shardId, back.nodeId);
          // Its log is the shard's history: everything delivered in this view is in it (a member persists
          // what it delivers before anything else sees the delivery), and nothing more was delivered.
          trims.push(back.version.viewId === view.viewId ? trimsThrough(back.version.seq, shard.senders.length) : shard.senders.map(() => 0));
          continue;
        }
        trims.push(shard.senders.map(() => 0));
        continue;
      }
      trims.push(shard.senders.map((_, sr) => Math.min(...liveMembers.map((r) => this.rows[r]!.received[shard.shardId]![sr]!))));
    }
    const transfers: StateTransferPlan[] = [];
    const lostShards: number[] = [];
    for (const next of alloc.layout.shards) {
      if (next.deliveryMode === 'raw') continue;
      const old = view.layout.shards[next.shardId]!;
      const holders = next.members.filter((m) => {
        const r = view.members.indexOf(m);
        return r >= 0 && liveSet.has(r) && old.members.includes(m) && this.rows[r]!.stateReady[next.shardId] === true;
      });
      const source = returned.get(next.shardId);
      if (source !== undefined) holders.push(source);
      const to = next.members.filter((m) => !holders.includes(m));
      if (to.length === 0) continue;
      if (holders.length === 0) {
        if (next.persistent) return `no reachable member holds the state of shard ${next.subgroup}/${next.shardIndex}; waiting`;
        lostShards.push(next.shardId); // a volatile shard whose state is lost: its members start empty
        continue;
      }
      const through = { viewId: view.viewId, seq: lastSeqInside(trims[next.shardId]!) };
      transfers.push({ shardId: next.shardId, from: holders[0]!, to, through });
    }
    const removed = view.members.filter((m) => !survivors.includes(m));
    return {
      fromViewId: view.viewId,
      next: {
        viewId: view.viewId + 1, members, layout: alloc.layout, previousViewId: view.viewId,
        ...(memberDisks.some((d) => d > 0) ? { memberDisks } : {}),
      },
      trims, joined, removed, transfers, lostShards,
    };
  }

  /**
   * The returning holder of a persistent shard none of whose members is left: a joiner admitted in this
   * change that restarted with the very disk this view names for it (View.memberDisks), whose last
   * installed view is this one and whose log of the shard is complete. Every member of the shard must be
   * back so (its log holds every update any member delivered here; with several, the longest is the
   * source, the others get it by state transfer). Null when the shard must wait (or a total restart).
   */
  private returningSource(shard: ShardLayout, joined: readonly NodeId[]): { nodeId: NodeId; version: Version } | null {
    const view = this.view!;
    const unchecked = this.config.brokenRule === 'returningHolderUnchecked';
    let best: { nodeId: NodeId; version: Version } | null = null;
    for (const m of shard.members) {
      const rank = view.members.indexOf(m);
      const disk = this.diskOf(rank);
      const j = joined.includes(m) ? this.pendingJoins.find((p) => p.nodeId === m) : undefined;
      if (!j) return null;
      if (!unchecked && (disk === 0 || j.diskId !== disk || j.holds === null || j.holds.lastViewId !== view.viewId)) return null;
      const held = j.holds?.shards.find((x) => x.shardId === shard.shardId) ?? (unchecked ? { shardId: shard.shardId, version: VERSION_NONE } : undefined);
      if (!held) return null;
      if (best === null || compareVersions(held.version, best.version) > 0) best = { nodeId: m, version: held.version };
    }
    return best;
  }

  /** The disk the member at `rank` runs with in this view: as the view names it, else as its row says. */
  private diskOf(rank: number): number {
    return this.view!.memberDisks?.[rank] || this.rows[rank]!.diskId;
  }

  /** Install the decided transition out of the current view. */
  private install(value: ViewChangeValue): void {
    const view = this.view!;
    if (value.fromViewId !== view.viewId) return;
    const row = this.myRow();
    if (!row.committed || row.accepted !== value) {
      row.accepted = value;
      row.committed = true;
      this.rowDirty = true;
    }
    // Ragged-edge cleanup: deliver exactly the decided prefix of the ending view.
    this.installPendingAdvance = false;
    const lastVersions: Version[] = [];
    for (const shardLayout of view.layout.shards) {
      const trims = value.trims[shardLayout.shardId]!;
      // seq -1 (not VERSION_NONE) when nothing was delivered in this view: older records stay valid.
      lastVersions.push({ viewId: view.viewId, seq: lastSeqInside(trims) });
      const shard = this.shards.get(shardLayout.shardId);
      if (!shard || shardLayout.deliveryMode !== 'ordered') continue;
      if (this.config.brokenRule !== 'skipRaggedTrim') this.deliverInsideTrims(shard, trims);
    }
    const trim: SavedTrim = { viewId: view.viewId, trims: value.trims, lastVersions };
    this.out.persist.push({ kind: 'trim', trim });
    if (value.next.members.includes(this.me)) this.out.persist.push({ kind: 'view', view: value.next });
    this.decided.push(value);
    if (this.decided.length > HISTORY_MAX) this.decided.shift();
    // A last push of the committed row so every member of the old view learns the decision quickly.
    this.pushRow();
    if (!value.next.members.includes(this.me)) {
      this.exit(this.leaving ? `left the group (view ${value.next.viewId} installed without this node)` : `removed from the group in view ${value.next.viewId}`);
      return;
    }
    if (value.removed.includes(this.me)) {
      // Taken for failed (and re-admitted as a joiner, from a join request of ours) in the same change:
      // the change's trims were computed without us, so carrying our state of the old view over would
      // break virtual synchrony. Start over as a new process, as a failed member does.
      this.exit(`removed from the group in view ${value.next.viewId} and re-admitted as a new member: restarting to rejoin`);
      return;
    }
    // My own messages beyond the trim were not delivered in the ending view: send them again in the next
    // one (ahead of newer sends), so an accepted send is only lost if its sender fails.
    for (const [shardId, shard] of this.shards) {
      if (shard.mySenderRank < 0 || shard.layout.deliveryMode !== 'ordered' || this.config.brokenRule === 'noResendBeyondTrim') continue;
      const trimmed = value.trims[shardId]![shard.mySenderRank]!;
      const undelivered = shard.outbox.slice(Math.max(0, trimmed - shard.outboxBase)).filter((p): p is Uint8Array => p !== null);
      shard.pending.unshift(...undelivered);
    }
    const oldLayout = view.layout;
    const oldShards = this.shards;
    const wasInOldView = view.members.includes(this.me);
    const welcomes = value.joined.map((j) => this.welcomeFor(j, value));
    this.installFresh(value.next, value.transfers, false, oldShards, oldLayout, value.lostShards);
    // Serve the state transfers this node is the source of: state as of the end of the old view.
    for (const plan of value.transfers) {
      if (plan.from !== this.me) continue;
      for (const to of plan.to) this.out.transfers.push({ to, shardId: plan.shardId, through: plan.through });
    }
    // The lowest-ranked member that was already in the old view welcomes the joiners.
    const welcomer = value.next.members.find((m) => view.members.includes(m));
    if (wasInOldView && welcomer === this.me) {
      for (const w of welcomes) this.emit(w.to, w);
    }
    // Every continuing member can resend a welcome a joiner did not receive.
    if (wasInOldView) for (const w of welcomes) this.welcomes.set(w.to, w);
    for (const id of [...this.admittedIncarnations.keys()]) if (!value.next.members.includes(id)) this.admittedIncarnations.delete(id);
    for (const w of welcomes) this.admittedIncarnations.set(w.to, w.incarnation);
    this.pendingJoins = this.pendingJoins.filter((p) => !value.next.members.includes(p.nodeId));
    if (this.view!.members[this.leaderRankAmongLive()] !== this.me) this.pendingJoins = [];
    this.publishPendingJoins();
  }

  /** The leader's queue of joiners goes into its row (without their disk ids), so every member can welcome them. */
  private publishPendingJoins(): void {
    this.myRow().pendingJoins = this.pendingJoins.map((p) => ({ nodeId: p.nodeId, incarnation: p.incarnation }));
  }

  private welcomeFor(joiner: NodeId, value: ViewChangeValue): WelcomeMessage {
    let incarnation = 0;
    for (const row of this.rows) for (const j of row.pendingJoins) if (j.nodeId === joiner) incarnation = j.incarnation;
    // The plans it receives by, and those it is the source of (a returning holder, see proposeValue).
    const transfers = value.transfers.filter((t) => t.to.includes(joiner) || t.from === joiner);
    return { kind: 'welcome', from: this.me, to: joiner, view: value.next, incarnation, transfers };
  }

  /** Set up the table and shard state for a newly installed view. */
  private installFresh(
    view: View, transfers: StateTransferPlan[], founding: boolean,
    oldShards?: Map<number, ShardState>, oldLayout?: View['layout'], lostShards: number[] = [],
  ): void {
    this.view = view;
    this.myRank = view.members.indexOf(this.me);
    this.restartCommitOfView = null;
    this.welcomes = new Map();
    this.restartedRanks = new Set();
    const n = view.members.length;
    this.rows = view.members.map(() => emptyRow(n, view.layout));
    this.myRow().diskId = this.diskId;
    this.lastHeardTick = view.members.map(() => this.tickCount);
    this.retransmitWatch = new Map();
    this.lastDecidedReply = new Map();
    this.shards = new Map();
    for (const layout of view.layout.shards) {
      if (!layout.members.includes(this.me)) continue;
      const plan = transfers.find((t) => t.shardId === layout.shardId && t.to.includes(this.me));
      const old = oldShards?.get(layout.shardId);
      const wasMember = oldLayout?.shards[layout.shardId]?.members.includes(this.me) ?? false;
      let stateReady: boolean;
      let continues = old !== undefined && wasMember; // carries its state (or its wait) over
      if (layout.deliveryMode === 'raw' || founding) stateReady = true;
      else if (plan) stateReady = false;
      else if (continues && !lostShards.includes(layout.shardId)) stateReady = old!.stateReady;
      else if (layout.persistent && !lostShards.includes(layout.shardId)) {
        stateReady = true; // restart: the node's own (truncated) log is the shard's state
      } else {
        // A volatile shard whose state is lost (or that we join with no source): start it empty.
        stateReady = true;
        continues = false;
        this.out.resetShards.push(layout.shardId);
        // Our own updates ordered in the last view but held for the state we were waiting for were never
        // applied, and the state they applied to is gone (every member starts empty, also those that
        // never saw them): they fail with a definite error rather than vanish.
        if (old !== undefined && wasMember && !old.stateReady) {
          for (const d of old.held) {
            if (d.sender === this.me) {
              this.out.sendsFailed.push({
                shardId: layout.shardId, payload: d.payload,
                reason: `the state of shard ${layout.subgroup}/${layout.shardIndex} was lost (its holders failed) before this update could be applied (view ${view.viewId})`,
              });
            }
          }
        }
      }
      const shard: ShardState = {
        layout,
        mySenderRank: layout.senders.indexOf(this.me),
        memberRanks: layout.members.map((m) => view.members.indexOf(m)),
        sent: 0, outbox: [], outboxBase: 0, pending: old && wasMember && layout.senders.includes(this.me) ? old.pending : [],
        inbox: layout.senders.map(() => []), inboxBase: layout.senders.map(() => 0),
        deliveredSeq: 0, loggedSeq: 0, persistedSeq: 0, loggedSeqAtReady: 0, frontierReported: 0,
        lastDelivered: old ? old.lastDelivered : VERSION_NONE,
        frontier: continues ? old!.frontier : VERSION_NONE,
        carriedFrontier: continues && layout.persistent && layout.deliveryMode === 'ordered' && compareVersions(old!.lastDelivered, old!.frontier) > 0 ? old!.lastDelivered : null,
        stateReady,
        transferFrom: plan ? plan.from : (continues && !stateReady ? old!.transferFrom : null),
        transferRequestedTick: this.tickCount,
        held: continues && !stateReady ? old!.held : [],
        coveredThrough: continues ? old!.coveredThrough : VERSION_NONE,
        minThrough: plan ? plan.through : (continues ? old!.minThrough : VERSION_NONE),
      };
      this.shards.set(layout.shardId, shard);
      this.myRow().stateReady[layout.shardId] = stateReady;
      if (!stateReady && layout.persistent && layout.deliveryMode === 'ordered' && !plan?.suffixOnly) {
        this.out.persist.push({ kind: 'shardState', shardId: layout.shardId, complete: false });
      }
    }
    // Sends waiting in a shard this node no longer sends in (it moved to another shard): they cannot be
    // carried out, so they fail with a definite error instead of vanishing.
    for (const [shardId, old] of oldShards ?? []) {
      if (old.pending.length === 0 || (this.shards.get(shardId)?.mySenderRank ?? -1) >= 0) continue;
      for (const payload of old.pending) this.out.sendsFailed.push({ shardId, payload, reason: `node ${this.me} no longer sends in shard ${shardId} (view ${view.viewId})` });
    }
    // A leave not yet carried out by the change that just ended carries over to the new view.
    this.myRow().leaving = this.leaving;
    this.rowMonitor.reset();
    this.rowDirty = true;
    this.waiting = this.shardWaiting();
    this.installPendingAdvance = true;
    this.out.installView = view;
  }

  private reportFrontiers(): void {
    if (!this.view) return;
    for (const [shardId, shard] of this.shards) {
      if (!shard.layout.persistent || shard.layout.deliveryMode !== 'ordered') continue;
      const f = persistenceFrontier(shard.memberRanks.map((r) => this.rows[r]!.persisted[shardId]!));
      if (f > shard.frontierReported) {
        shard.frontierReported = f;
        shard.frontier = { viewId: this.view.viewId, seq: f - 1 };
        shard.carriedFrontier = null; // covered: every member persisted a message of this view
        this.out.persistenceFrontiers.push({ shardId, version: shard.frontier });
      } else if (shard.carriedFrontier !== null && shard.memberRanks.every((r) => this.rows[r]!.stateReady[shardId])) {
        shard.frontier = shard.carriedFrontier;
        shard.carriedFrontier = null;
        this.out.persistenceFrontiers.push({ shardId, version: shard.frontier });
      }
    }
  }

  private onOtherViewTraffic(from: NodeId, viewId: number): void {
    const view = this.view!;
    if (viewId >= view.viewId) return; // we are behind: the decision reaches us through viewDecided
    const value = this.decided.find((d) => d.fromViewId === viewId);
    if (!value) return;
    const last = this.lastDecidedReply.get(from);
    if (last !== undefined && this.tickCount - last < this.config.retransmitTicks) return;
    this.lastDecidedReply.set(from, this.tickCount);
    this.emit(from, { kind: 'viewDecided', from: this.me, value });
  }

  private onViewDecided(value: ViewChangeValue): void {
    if (this.mode !== 'active') return;
    const view = this.view!;
    if (value.fromViewId === view.viewId) {
      this.wedge();
      this.install(value);
    } else if (value.fromViewId > view.viewId) {
      this.exit(`fell behind: view ${value.next.viewId} was installed while this node is in view ${view.viewId}`);
    }
  }

  // ======================================================================================
  // Joins
  // ======================================================================================

  private onJoinRequest(from: NodeId, incarnation: number, diskId: number, holds: HeldLogs | null): void {
    if (this.mode === 'restarting') {
      // The group is restarting after a total failure: a joiner with nothing saved may be the only
      // former member of a volatile shard. Tell it, so that it reports (blank) instead of waiting.
      this.emit(from, { kind: 'restartReport', from: this.me, report: this.myRestartReport() });
      return;
    }
    if (this.mode !== 'active') return;
    const view = this.view!;
    const rank = view.members.indexOf(from);
    if (rank >= 0) {
      const welcome = this.welcomes.get(from);
      if (welcome && welcome.incarnation === incarnation) {
        this.emit(from, welcome);
        return;
      }
      // A late retry of the request this member was admitted with (it was still joining when it sent
      // it): nothing to do. Suspecting it would remove the member it just became.
      if (this.admittedIncarnations.get(from) === incarnation) return;
      // A member asking to join again has restarted: its old incarnation has failed.
      this.suspect(rank);
      this.restartedRanks.add(rank);
    }
    const leaderRank = this.leaderRankAmongLive();
    if (leaderRank !== this.myRank) {
      this.emit(from, { kind: 'joinRedirect', from: this.me, leader: view.members[leaderRank]! });
      return;
    }
    const existing = this.pendingJoins.find((p) => p.nodeId === from);
    if (existing) {
      existing.incarnation = incarnation;
      existing.diskId = diskId;
      existing.holds = holds;
    } else if (this.pendingJoins.length < this.config.pendingJoinsMax) this.pendingJoins.push({ nodeId: from, incarnation, diskId, holds });
    this.publishPendingJoins();
    this.rowDirty = true;
  }

  private tickJoining(): void {
    if (this.founding) {
      if (this.tickCount - this.joiningSinceTick > this.config.wedgedExitTicks) {
        this.exit(`view 0 not confirmed within ${this.config.wedgedExitTicks} ticks (${this.waiting.message})`);
        return;
      }
      if (this.tickCount - this.lastRetryTick >= this.config.retryTicks) this.sendFoundingHellos();
      return;
    }
    if (this.tickCount - this.joiningSinceTick > this.config.wedgedExitTicks) {
      // Nobody admitted us: perhaps every member is itself restarting. Start over (restart if we have
      // saved state, so we can count toward a restart quorum).
      this.exit(`not admitted to the group within ${this.config.wedgedExitTicks} ticks (${this.waiting.message})`);
      return;
    }
    if (this.tickCount - this.lastRetryTick < this.config.retryTicks) return;
    this.lastRetryTick = this.tickCount;
    let to = this.preferredContact;
    if (to === null || this.prng.chance(0.3)) {
      if (this.contacts.length === 0) return;
      to = this.contacts[this.contactCursor++ % this.contacts.length]!;
    }
    this.sendJoinRequest(to);
  }

  // ---- founding (ADR 0012) ----

  private sendFoundingHellos(): void {
    const f = this.founding!;
    this.lastRetryTick = this.tickCount;
    for (const m of f.view.members) if (!f.confirmed.has(m)) this.emit(m, { kind: 'foundingHello', from: this.me, members: [...f.view.members] });
  }

  private onFoundingHello(from: NodeId, members: NodeId[]): void {
    if (this.founding) {
      const f = this.founding;
      if (!f.view.members.includes(from)) return;
      if (members.length !== f.view.members.length || members.some((m, i) => m !== f.view.members[i])) {
        this.waiting = { kind: 'joining', message: `founding: node ${from} founds a group of [${members.join(', ')}], this node one of [${f.view.members.join(', ')}]: the members' manifests differ` };
        return;
      }
      // Answer, so that it confirms us even if our earlier hello was lost.
      this.emit(from, { kind: 'foundingHello', from: this.me, members: [...f.view.members] });
      this.confirmFounder(from);
      return;
    }
    if (this.mode === 'active') {
      const view = this.view!;
      // Still in the view 0 it founds: it just has not heard from us (our hello was lost). Otherwise the group
      // runs: it must join, not found a view 0 of its own.
      if (view.viewId === 0 && view.members.includes(from) && members.length === view.members.length && members.every((m, i) => m === view.members[i])) {
        this.emit(from, { kind: 'foundingHello', from: this.me, members: [...view.members] });
      } else {
        const leader = view.members.find((_, rank) => !this.myRow().suspected[rank]) ?? this.me;
        this.emit(from, { kind: 'joinRedirect', from: this.me, leader });
      }
    } else if (this.mode === 'restarting') {
      this.emit(from, { kind: 'restartReport', from: this.me, report: this.myRestartReport() });
    }
  }

  private confirmFounder(from: NodeId): void {
    const f = this.founding!;
    f.confirmed.add(from);
    const missing = f.view.members.filter((m) => !f.confirmed.has(m));
    if (missing.length === 0) this.installFounding();
    else this.waiting = { kind: 'joining', message: `founding: waiting for founding member(s) ${missing.join(', ')} to confirm view 0` };
  }

  private installFounding(): void {
    const view = this.founding!.view;
    this.founding = null;
    this.startedBlank = false;
    this.mode = 'active';
    this.out.persist.push({ kind: 'view', view });
    this.installFresh(view, [], true);
  }

  /** The group exists already (active or restarting): join it as a new member (`leader`: where to ask). */
  private abandonFounding(why: string, leader: NodeId | null): void {
    this.founding = null;
    this.preferredContact = leader;
    this.joiningSinceTick = this.tickCount;
    this.lastRetryTick = -1_000_000;
    this.waiting = { kind: 'joining', message: `joining instead of founding: ${why}` };
  }

  private sendJoinRequest(to: NodeId): void {
    this.emit(to, {
      kind: 'joinRequest', from: this.me, incarnation: this.incarnation,
      ...(this.diskId > 0 ? { diskId: this.diskId } : {}),
      ...(this.joinHolds !== null ? { holds: this.joinHolds } : {}),
    });
  }

  private onWelcome(w: WelcomeMessage): void {
    if (this.mode !== 'joining' || w.incarnation !== this.incarnation || !w.view.members.includes(this.me)) return;
    this.mode = 'active';
    this.out.persist.push({ kind: 'view', view: w.view });
    this.installFresh(w.view, w.transfers, false);
    // Admitted as the source of shards whose holders were all gone (see proposeValue, `returningSource`):
    // our log is their state; the shard's other new members get it from us.
    for (const held of this.joinHolds?.shards ?? []) {
      const shard = this.shards.get(held.shardId);
      if (shard && shard.stateReady && compareVersions(held.version, shard.lastDelivered) > 0) shard.lastDelivered = held.version;
    }
    for (const plan of w.transfers) if (plan.from === this.me) for (const to of plan.to) this.out.transfers.push({ to, shardId: plan.shardId, through: plan.through });
    this.joinHolds = null;
    this.savedWhileJoining = null;
  }

  /** Restarting mode from saved state: collect restart reports (ours first). */
  private enterRestart(saved: SavedState): void {
    this.mode = 'restarting';
    this.restart = {
      saved,
      reports: new Map(),
      reportsVersion: 0,
      planned: null,
      quorumSinceTick: null,
      promised: saved.restartPromised,
      accepted: saved.restartAccepted,
      proposing: null,
      highestRoundSeen: saved.restartPromised?.round ?? 0,
      waiting: { kind: 'restartQuorum', message: 'restarting: collecting restart reports' },
    };
    this.setReport(this.me, this.myRestartReport());
  }

  /**
   * A node that restarted from saved state, found a running group and asked to join it, learned that the
   * group is restarting after all (the member it was joining through answers with a restart report: it
   * has since exited, e.g. because its view could never change). Nothing was persisted while joining, so
   * its saved state is still what its disk holds: it goes back to restarting with it and counts toward the
   * restart quorum, instead of waiting to be admitted until its own wedged exit. Its restart-consensus
   * promise and acceptance stay binding.
   */
  private resumeRestart(): void {
    const saved = this.savedWhileJoining!;
    const acceptor = this.restartAcceptor;
    this.savedWhileJoining = null;
    this.joinHolds = null;
    this.enterRestart({
      ...saved,
      ...(acceptor ? { restartPromised: acceptor.restartPromised, restartAccepted: acceptor.restartAccepted, highestViewIdSeen: acceptor.highestViewIdSeen } : {}),
    });
    this.lastRetryTick = -1_000_000;
    this.tickRestarting();
  }

  /** A joiner with nothing saved learned that the group is restarting: report as a blank member. */
  private becomeBlankRestarter(): void {
    this.mode = 'restarting';
    const acceptor = this.restartAcceptor;
    this.restart = {
      saved: blankSavedState(acceptor ?? undefined),
      reports: new Map(),
      reportsVersion: 0,
      planned: null,
      quorumSinceTick: null,
      promised: acceptor?.restartPromised ?? null,
      accepted: acceptor?.restartAccepted ?? null,
      proposing: null,
      highestRoundSeen: acceptor?.restartPromised?.round ?? 0,
      waiting: { kind: 'restartQuorum', message: 'restarting (nothing saved): collecting restart reports' },
    };
    this.lastRetryTick = -1_000_000;
    this.tickRestarting();
  }

  private becomeJoiner(leader: NodeId): void {
    this.mode = 'joining';
    this.joiningSinceTick = this.tickCount;
    if (this.restart !== null) {
      // Our restart-consensus promises and acceptance stay binding (they are on disk too).
      this.restartAcceptor = { restartPromised: this.restart.promised, restartAccepted: this.restart.accepted, highestViewIdSeen: this.restart.saved.highestViewIdSeen };
      this.joinHolds = heldLogsOf(this.restart.saved, this.me);
      this.savedWhileJoining = this.restart.saved;
    }
    this.restart = null;
    this.preferredContact = leader;
    this.waiting = { kind: 'joining', message: `joining the running group through node ${leader}` };
    this.lastRetryTick = -1_000_000;
    this.tickJoining();
  }

  // ======================================================================================
  // State transfer (served by the driver; the core only decides who and up to where)
  // ======================================================================================

  private onStateRequest(from: NodeId, shardId: number, viewId: number): void {
    if (this.mode !== 'active') return;
    const restartSource = this.restartCommitOfView?.shards.find((x) => x.shardId === shardId && x.source === this.me);
    if (restartSource && viewId === this.view!.viewId && !this.shards.has(shardId)) {
      // We were chosen as the restart source of a shard we do not serve in this view: our log still has it.
      this.out.transfers.push({ to: from, shardId, through: restartSource.truncateTo });
      return;
    }
    const shard = this.shards.get(shardId);
    if (!shard || !shard.stateReady || viewId !== this.view!.viewId || !shard.layout.members.includes(from)) return;
    // Our state covers every sequence number delivered so far in this view (and all earlier views).
    this.out.transfers.push({ to: from, shardId, through: { viewId: this.view!.viewId, seq: shard.deliveredSeq - 1 } });
  }

  // ======================================================================================
  // Restart after total failure: reports, the pure planner, and single-decree Paxos over the plan
  // ======================================================================================

  /** This node's restart report (the same object while nothing in it changed: only `promised` can). */
  private myRestartReport(): RestartReport {
    const rs = this.restart!;
    const mine = rs.reports.get(this.me)?.report;
    if (mine !== undefined && compareBallots(mine.promised, rs.promised) === 0) return mine;
    const s = rs.saved;
    return {
      nodeId: this.me, lastView: s.lastView, highestViewIdSeen: s.highestViewIdSeen, trims: s.trims,
      logTails: s.logTails, promised: this.restart!.promised, incompleteShards: s.incompleteShards ?? [],
      ...(s.blank === true ? { blank: true } : {}),
      ...(s.acceptedChange && s.acceptedChange.value.next.viewId > s.lastView.viewId ? { acceptedChange: s.acceptedChange } : {}),
      ...(s.recentViews !== undefined && s.recentViews.length > 0 ? { recentViews: s.recentViews } : {}),
      ...(this.diskId > 0 ? { diskId: this.diskId } : {}),
      incarnation: this.incarnation,
    };
  }

  private tickRestarting(): void {
    const rs = this.restart!;
    this.setReport(this.me, this.myRestartReport());
    if (this.tickCount - this.lastRetryTick >= this.config.retryTicks) {
      this.lastRetryTick = this.tickCount;
      const report = this.myRestartReport();
      for (const c of this.contacts) this.emit(c, { kind: 'restartReport', from: this.me, report });
    }
    // Forget nodes not heard from recently (they may have crashed again).
    for (const [id, r] of rs.reports) {
      if (id !== this.me && this.tickCount - r.tick > this.config.suspectTicks * 2) {
        rs.reports.delete(id);
        rs.reportsVersion++;
      }
    }
  }

  private onRestartReport(from: NodeId, report: RestartReport): void {
    if (report.nodeId !== from) return;
    if (this.mode === 'active') {
      const view = this.view!;
      const rank = view.members.indexOf(from);
      // A member of the restart that missed its commit (or whose report was sent before it) gets the
      // commit again. A blank report that knows nothing of the plan may come from a node whose disk was
      // wiped since it installed this view: it must not install the view from the commit (it holds none
      // of what the view delivered). It is told the group runs: it joins, and its join request removes
      // its old incarnation (a late report of a member that did accept and install the view changes
      // nothing: restartActive is ignored once active).
      if (rank >= 0 && this.restartCommitOfView && report.lastView.viewId < this.restartCommitOfView.view.viewId) {
        if (report.blank !== true || report.highestViewIdSeen >= this.restartCommitOfView.view.viewId) {
          this.emit(from, { kind: 'restartCommit', from: this.me, plan: this.restartCommitOfView });
        } else {
          this.emit(from, { kind: 'restartActive', from: this.me, viewId: view.viewId, leader: this.leaderNode() });
        }
        return;
      }
      if (rank >= 0) {
        this.suspect(rank); // it lost its in-memory state: remove, it will join again
        this.restartedRanks.add(rank);
      }
      this.emit(from, { kind: 'restartActive', from: this.me, viewId: view.viewId, leader: this.leaderNode() });
      return;
    }
    if (this.mode !== 'restarting') return;
    const rs = this.restart!;
    this.setReport(from, report);
    if (report.promised) rs.highestRoundSeen = Math.max(rs.highestRoundSeen, report.promised.round);
    if (!this.contacts.includes(from)) this.contacts.push(from);
  }

  /** Active traffic reached a restarting node: a group is running (or a restart view was installed). */
  private onRestartViewTraffic(from: NodeId, viewId: number): void {
    const rs = this.restart!;
    if (viewId > rs.saved.lastView.viewId) {
      // Ask it: its reply (restartActive or the restart commit) tells us how to come back.
      this.emit(from, { kind: 'restartReport', from: this.me, report: this.myRestartReport() });
    }
  }

  /** Records a node's latest restart report; the plan is made again only when a report's content changed. */
  private setReport(from: NodeId, report: RestartReport): void {
    const rs = this.restart!;
    const old = rs.reports.get(from);
    if (old !== undefined && old.report === report) {
      old.tick = this.tickCount;
      return;
    }
    const json = JSON.stringify(report);
    if (old === undefined || old.json !== json) rs.reportsVersion++;
    rs.reports.set(from, { report, tick: this.tickCount, json });
  }

  private isRestartLeader(): boolean {
    const rs = this.restart!;
    for (const [id, r] of rs.reports) if (id < this.me && this.tickCount - r.tick <= this.config.suspectTicks * 2) return false;
    return true;
  }

  private progressRestart(): void {
    const rs = this.restart;
    if (!rs) return;
    if (rs.planned === null || rs.planned.version !== rs.reportsVersion) {
      const reports = [...rs.reports.values()].map((r) => r.report);
      rs.planned = { version: rs.reportsVersion, plan: planRestart(this.config.policy, reports, this.config.brokenRule) };
    }
    const plan = rs.planned.plan;
    if (!plan.ready) {
      rs.quorumSinceTick = null;
      rs.waiting = { kind: 'restartQuorum', message: plan.message };
      rs.proposing = null;
      return;
    }
    if (!this.isRestartLeader()) {
      rs.waiting = { kind: 'restartQuorum', message: `restart quorum holds for view ${plan.lastView.viewId}; waiting for the restart leader` };
      return;
    }
    if (rs.quorumSinceTick === null) rs.quorumSinceTick = this.tickCount;
    const everyoneBack = plan.lastView.members.every((m) => rs.reports.has(m));
    const graceOver = this.tickCount - rs.quorumSinceTick >= this.config.restartGraceTicks;
    if (!everyoneBack && !graceOver) {
      const absent = plan.lastView.members.filter((m) => !rs.reports.has(m));
      rs.waiting = { kind: 'restartQuorum', message: `restart quorum holds for view ${plan.lastView.viewId}; grace period for nodes ${absent.join(', ')}` };
      return;
    }
    const p = rs.proposing;
    const stale = p && this.tickCount - p.startedTick > this.config.retryTicks * 4;
    if (!p || stale) {
      const round = Math.max(rs.highestRoundSeen, rs.promised?.round ?? 0) + 1;
      rs.highestRoundSeen = round;
      const ballot: Ballot = { round, nodeId: this.me };
      rs.proposing = { ballot, startedTick: this.tickCount, promises: new Map(), plan: null, acceptedBy: new Set() };
      rs.waiting = { kind: 'restartQuorum', message: `restarting view ${plan.lastView.viewId}: preparing ballot ${round}.${this.me}` };
      for (const m of plan.decision.view.members) {
        if (m === this.me) this.onRestartPrepare(this.me, ballot);
        else this.emit(m, { kind: 'restartPrepare', from: this.me, ballot });
      }
      return;
    }
    if (p.plan === null) {
      const members = plan.decision.view.members;
      if (!members.every((m) => p.promises.has(m))) return;
      // Paxos: a plan accepted in an earlier attempt of this same restart (made from the same newest
      // installed view) may have been chosen, and its view installed by members that are not back: the
      // one with the highest ballot is proposed again, unchanged. Plans of earlier restarts (a returning
      // node installed a later view since) are settled and ignored.
      let chosen: RestartDecision = plan.decision;
      if (this.config.brokenRule !== 'restartIgnoresAcceptedPlans') {
        const start = planStart(plan.decision);
        let best: Ballot | null = null;
        for (const pr of p.promises.values()) {
          const acc = pr.accepted;
          if (acc && planStart(acc.plan) === start && compareBallots(acc.ballot, best) > 0) {
            best = acc.ballot;
            chosen = acc.plan;
          }
        }
      }
      p.plan = chosen;
      for (const m of chosen.view.members) {
        if (m === this.me) this.onRestartAccept(this.me, p.ballot, chosen);
        else this.emit(m, { kind: 'restartAccept', from: this.me, ballot: p.ballot, plan: chosen });
      }
      return;
    }
    if (p.plan.view.members.every((m) => p.acceptedBy.has(m))) {
      const decision = p.plan;
      for (const m of decision.view.members) if (m !== this.me) this.emit(m, { kind: 'restartCommit', from: this.me, plan: decision });
      this.onRestartCommit(decision);
    }
  }

  private onRestartPrepare(from: NodeId, ballot: Ballot): void {
    const rs = this.restart;
    if (this.mode !== 'restarting' || !rs) return;
    rs.highestRoundSeen = Math.max(rs.highestRoundSeen, ballot.round);
    if (compareBallots(ballot, rs.promised) < 0) return;
    rs.promised = ballot;
    this.out.persist.push({ kind: 'restartPromise', ballot });
    const promise = { kind: 'restartPromise' as const, from: this.me, ballot, accepted: rs.accepted, report: this.myRestartReport() };
    if (from === this.me) this.onRestartPromise(this.me, ballot, rs.accepted, promise.report);
    else this.emit(from, promise);
  }

  private onRestartPromise(from: NodeId, ballot: Ballot, accepted: { ballot: Ballot; plan: RestartDecision } | null, report: RestartReport): void {
    const rs = this.restart;
    if (this.mode !== 'restarting' || !rs || !rs.proposing || compareBallots(ballot, rs.proposing.ballot) !== 0) return;
    rs.proposing.promises.set(from, { accepted });
    this.setReport(from, report);
  }

  private onRestartAccept(from: NodeId, ballot: Ballot, plan: RestartDecision): void {
    const rs = this.restart;
    if (this.mode !== 'restarting' || !rs) return;
    if (compareBallots(ballot, rs.promised) < 0) return;
    rs.promised = ballot;
    rs.accepted = { ballot, plan };
    this.out.persist.push({ kind: 'restartAccept', ballot, plan });
    this.out.persist.push({ kind: 'viewIdSeen', viewId: plan.view.viewId });
    if (from === this.me) this.onRestartAccepted(this.me, ballot);
    else this.emit(from, { kind: 'restartAccepted', from: this.me, ballot });
  }

  private onRestartAccepted(from: NodeId, ballot: Ballot): void {
    const rs = this.restart;
    if (this.mode !== 'restarting' || !rs || !rs.proposing || compareBallots(ballot, rs.proposing.ballot) !== 0) return;
    rs.proposing.acceptedBy.add(from);
  }

  private onRestartCommit(plan: RestartDecision): void {
    if (this.mode === 'active') return;
    if (!plan.view.members.includes(this.me)) {
      if (this.mode === 'restarting') this.becomeJoiner(plan.view.members[0]!);
      return;
    }
    if (this.mode !== 'restarting' || !this.restart) return;
    const saved = this.restart.saved;
    if (plan.view.viewId <= saved.lastView.viewId) return;
    for (const t of plan.trims) this.out.persist.push({ kind: 'trim', trim: t });
    const transfers: StateTransferPlan[] = [];
    const serve: TransferOrder[] = [];
    for (const s of plan.shards) {
      const layout = plan.view.layout.shards[s.shardId]!;
      if (!layout.persistent || layout.deliveryMode !== 'ordered') continue;
      if (s.source === this.me) {
        // The source serves the shard's members that lack part of it, even if it no longer is one.
        for (const m of layout.members) {
          if (m === this.me) continue;
          const mTail = this.restartTailOf(m, s.shardId);
          if (mTail === null || truncationFor(plan, mTail, s.shardId).needsSuffixFrom !== null) serve.push({ to: m, shardId: s.shardId, through: s.truncateTo });
        }
      }
      if (!layout.members.includes(this.me)) continue;
      const tail = saved.logTails.find((t) => t.shardId === s.shardId)?.version ?? VERSION_NONE;
      const cut = truncationFor(plan, tail, s.shardId);
      this.out.persist.push({ kind: 'truncate', shardId: s.shardId, after: cut.keepThrough });
      if (s.source !== this.me && cut.needsSuffixFrom !== null) {
        // If we served this shard in the view the group restarts from, with its whole state, our log has
        // every acknowledged update: the suffix we fetch was never acknowledged.
        const suffixOnly = saved.lastView.viewId === plan.lastViewId &&
          saved.lastView.layout.shards[s.shardId]?.members.includes(this.me) === true &&
          !(saved.incompleteShards ?? []).includes(s.shardId);
        transfers.push({ shardId: s.shardId, from: cut.needsSuffixFrom, to: [this.me], through: s.truncateTo, suffixOnly });
        continue;
      }
      // Our own (cut) log is the shard's whole state: clear a stale "incomplete" mark.
      this.out.persist.push({ kind: 'shardState', shardId: s.shardId, complete: true });
    }
    // The views the plan adopted were decided, and this node never installed them: keep them, so that a
    // later restart can follow the chain of views from this restart view back to older saved views.
    if (plan.adopted !== undefined && plan.adopted.length > 0) this.out.persist.push({ kind: 'viewsDecided', views: plan.adopted });
    this.out.persist.push({ kind: 'view', view: plan.view });
    // The members restart with the incarnations they reported: a join request such a member sent while it
    // briefly took the group for running is a late retry, not a restart of that member.
    const reported = this.restart.reports;
    this.mode = 'active';
    this.restart = null;
    this.installFresh(plan.view, transfers, false);
    // Shards this node restarts from its own (truncated) log: mark their last version.
    for (const s of plan.shards) {
      const shard = this.shards.get(s.shardId);
      if (shard && shard.stateReady) shard.lastDelivered = s.truncateTo;
    }
    this.restartCommitOfView = plan;
    this.admittedIncarnations.clear();
    for (const m of plan.view.members) {
      const incarnation = reported.get(m)?.report.incarnation;
      if (incarnation !== undefined && m !== this.me) this.admittedIncarnations.set(m, incarnation);
    }
    this.out.transfers.push(...serve);
  }

  /** A returning node's log tail for a shard as reported, or null if unknown / no log. */
  private restartTailOf(node: NodeId, shardId: number): Version | null {
    const r = this.restart?.reports.get(node)?.report;
    if (!r) return null;
    return r.logTails.find((t) => t.shardId === shardId)?.version ?? null;
  }

  // ======================================================================================
  // Plumbing
  // ======================================================================================

  private emit(to: NodeId, message: Message, resend = false): void {
    if (to === this.me) return;
    this.out.send.push(resend ? { to, message, resend } : { to, message });
  }

  private exit(reason: string): void {
    if (this.mode === 'exited') return;
    this.mode = 'exited';
    this.out.exit = { reason };
    this.waiting = { kind: 'none', message: reason };
  }
}

function emptyReady(): Ready {
  return { persist: [] as PersistRecord[], deliver: [], transfers: [], send: [], installView: null, persistenceFrontiers: [], exit: null, resetShards: [], sendsFailed: [] };
}

function uniq<T>(items: T[]): T[] {
  return [...new Set(items)];
}

function validRowShape(row: Row, view: View): boolean {
  if (!row || typeof row.pushCount !== 'number' || !Array.isArray(row.suspected) || row.suspected.length !== view.members.length) return false;
  if (!Array.isArray(row.received) || row.received.length !== view.layout.shards.length) return false;
  for (const shard of view.layout.shards) {
    const rec = row.received[shard.shardId];
    if (!Array.isArray(rec) || rec.length !== shard.senders.length) return false;
  }
  return Array.isArray(row.persisted) && row.persisted.length === view.layout.shards.length &&
    Array.isArray(row.stateReady) && row.stateReady.length === view.layout.shards.length;
}

/**
 * What a restarted node holds for a join (JoinRequestMessage.holds): its last view and the tails of the
 * logs of the persistent shards it served there in full. Null for a node that never installed a view.
 */
export function heldLogsOf(saved: SavedState, me: NodeId): HeldLogs | null {
  if (saved.blank) return null;
  const incomplete = new Set(saved.incompleteShards ?? []);
  const shards = saved.lastView.layout.shards
    .filter((x) => x.persistent && x.deliveryMode === 'ordered' && x.members.includes(me) && !incomplete.has(x.shardId))
    .map((x) => ({ shardId: x.shardId, version: saved.logTails.find((t) => t.shardId === x.shardId)?.version ?? VERSION_NONE }));
  return { lastViewId: saved.lastView.viewId, shards };
}
