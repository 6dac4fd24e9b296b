// Data types shared by the protocol core, its adapters and the simulator.
// Everything here is plain data: serialisable, comparable, free of I/O.

/** A member's stable identity (the operator assigns these; `kubectl` shows them). */
export type NodeId = number;

/**
 * Position of a delivered update in a shard's history: the view it was delivered in, and its global
 * round-robin sequence number inside that view (seq = index * senderCount + senderRank).
 * Versions order lexicographically: first by viewId, then by seq. seq -1 means "nothing in that view".
 */
export interface Version {
  viewId: number;
  seq: number;
}

export const VERSION_NONE: Version = Object.freeze({ viewId: -1, seq: -1 });

export function compareVersions(a: Version, b: Version): number {
  if (a.viewId !== b.viewId) return a.viewId < b.viewId ? -1 : 1;
  if (a.seq !== b.seq) return a.seq < b.seq ? -1 : 1;
  return 0;
}

export function maxVersion(a: Version, b: Version): Version {
  return compareVersions(a, b) >= 0 ? a : b;
}

export type DeliveryMode = 'ordered' | 'raw';

/** Allocation policy of one subgroup type (Derecho's default allocator semantics). */
export interface SubgroupPolicy {
  /** Unique name, e.g. "kv". */
  name: string;
  /** Number of shards of this subgroup. */
  shards: number;
  /** A shard with fewer members makes the view inadequate. */
  minNodesPerShard: number;
  /** Extra nodes beyond this stay unassigned for this subgroup. */
  maxNodesPerShard: number;
  deliveryMode: DeliveryMode;
  /** Ordered updates are written to a versioned log (ignored for raw mode, which is never persisted). */
  persistent: boolean;
  /**
   * Optional: per shard, node ids reserved for it. A reserved node, when present in the view, is placed
   * in that shard even if it already serves another subgroup (this is how subgroups overlap).
   */
  reservedNodeIds?: NodeId[][];
  /** Optional: only these nodes may send in this subgroup's shards (default: every member sends). */
  senderNodeIds?: NodeId[];
}

/** The whole group's policy: its subgroups in a fixed order (flat shard ids follow this order). */
export interface GroupPolicy {
  subgroups: SubgroupPolicy[];
}

/** One shard in a layout. `shardId` is the flat index over all subgroups' shards in policy order. */
export interface ShardLayout {
  shardId: number;
  subgroup: string;
  /** Index of the shard inside its subgroup. */
  shardIndex: number;
  /** Members in rank order (the shard's leader is its lowest-ranked non-failed member). */
  members: NodeId[];
  /** Members that send; a subset of `members`, in `members` order. Round-robin runs over these. */
  senders: NodeId[];
  deliveryMode: DeliveryMode;
  persistent: boolean;
}

export interface Layout {
  shards: ShardLayout[];
}

export type AllocationResult =
  | { adequate: true; layout: Layout }
  | { adequate: false; reason: string };

/** An installed view. Members are in rank order; rank = index in `members`. */
export interface View {
  viewId: number;
  members: NodeId[];
  layout: Layout;
  /** The view this one followed: viewId - 1 after a view change, the restarted view after a restart. */
  previousViewId?: number;
  /**
   * memberDisks[rank]: the disk id (ReplicaConfig.diskId) the member at that rank joined or restarted with,
   * 0 if unknown. A member back from a total failure with nothing saved on that same disk never installed
   * this view, so never accepted anything in it: it counts toward this view's restart majority (see
   * restart.ts). Absent when no member's disk is known.
   */
  memberDisks?: number[];
}

/**
 * The single value agreed for the transition view v -> v+1 (decided by Paxos inside the state table):
 * the next view and, per shard of v, the ragged trim (how many messages from each sender every
 * surviving member delivers in v before installing v+1).
 */
export interface ViewChangeValue {
  fromViewId: number;
  next: View;
  /** trims[shardId][senderRank] = number of messages from that sender delivered in the ending view. */
  trims: number[][];
  /** Nodes that joined in this change (they need state transfer). */
  joined: NodeId[];
  /** Nodes removed (failed, left, or suspected). */
  removed: NodeId[];
  /**
   * State transfers the install triggers: per shard of the next view, the member that serves the shard's
   * state as of the end of the ending view, and the members that need it (joiners, moved nodes, members
   * still waiting for an earlier transfer).
   */
  transfers: StateTransferPlan[];
  /** Volatile shards no reachable member held the state of: every member starts them empty. */
  lostShards: number[];
}

export interface StateTransferPlan {
  shardId: number;
  from: NodeId;
  to: NodeId[];
  /** The transferred state covers every version up to this one (the end of the ending view). */
  through: Version;
  /**
   * Restart only: the targets already hold every acknowledged update of the shard; the transfer adds
   * an unacknowledged suffix, so they do not count as incomplete while it is pending.
   */
  suffixOnly?: boolean;
}

/** A persisted update as it sits in a shard's log. */
export interface LogRecord {
  shardId: number;
  version: Version;
  sender: NodeId;
  payload: Uint8Array;
}

/** A message between cores. The transport carries it; `from` is set by the sender's core. */
export type Message =
  | RowMessage
  | DataMessage
  | JoinRequestMessage
  | JoinRedirectMessage
  | WelcomeMessage
  | ViewDecidedMessage
  | RestartReportMessage
  | RestartActiveMessage
  | RestartPrepareMessage
  | RestartPromiseMessage
  | RestartAcceptMessage
  | RestartAcceptedMessage
  | RestartCommitMessage
  | StateRequestMessage
  | FoundingHelloMessage;

/** A push of the sender's own row of the shared state table for `viewId`. */
export interface RowMessage {
  kind: 'row';
  from: NodeId;
  viewId: number;
  row: Row;
}

/** A multicast message in a shard: ordered or raw. `payload === null` marks a null message. */
export interface DataMessage {
  kind: 'data';
  from: NodeId;
  viewId: number;
  shardId: number;
  /** The sender's index in the shard's sender list. */
  senderRank: number;
  /** Per-sender index, 0, 1, 2, ... (null messages included). */
  index: number;
  payload: Uint8Array | null;
}

export interface JoinRequestMessage {
  kind: 'joinRequest';
  from: NodeId;
  /** Distinguishes process lifetimes of the same node id. */
  incarnation: number;
  /** The joiner's disk id (ReplicaConfig.diskId); absent or 0 if unknown. */
  diskId?: number;
  /**
   * A joiner that restarted with saved state: the last view it installed and the tails of the logs it holds
   * in full there. The leader may make it the source of a persistent shard none of whose members is left
   * (it was the shard's only holder), instead of waiting for a total restart (see Replica.proposeValue).
   */
  holds?: HeldLogs;
}

/** What a restarted joiner holds (JoinRequestMessage.holds). */
export interface HeldLogs {
  lastViewId: number;
  shards: { shardId: number; version: Version }[];
}

export interface JoinRedirectMessage {
  kind: 'joinRedirect';
  from: NodeId;
  leader: NodeId;
}

/**
 * A founding member, before it installs view 0: "I am founding a group of `members`". View 0 is installed
 * only once every other founder said so (or sent view-0 traffic); an answer from a member that is already
 * active (a joinRedirect) or restarting (a restartReport) shows the group exists, and the node joins it
 * instead of founding a view 0 of its own (ADR 0012).
 */
export interface FoundingHelloMessage {
  kind: 'foundingHello';
  from: NodeId;
  members: NodeId[];
}

/** Sent to a joining node: the view it is now a member of. */
export interface WelcomeMessage {
  kind: 'welcome';
  from: NodeId;
  /** The admitted joiner. */
  to: NodeId;
  view: View;
  /** Incarnation of the join request that was admitted. */
  incarnation: number;
  /** Shards whose state the joiner must wait for, and who sends it. */
  transfers: StateTransferPlan[];
}

/** Tells a lagging node the decided transition out of a view it is still in. */
export interface ViewDecidedMessage {
  kind: 'viewDecided';
  from: NodeId;
  value: ViewChangeValue;
}

/** What a restarting node brings (see restart.ts). */
export interface RestartReport {
  nodeId: NodeId;
  /** Last view this node installed and saved. */
  lastView: View;
  /** Highest view id this node knows was proposed or accepted (never reuse it). */
  highestViewIdSeen: number;
  /** Ragged trims it saved, by the view they ended. */
  trims: SavedTrim[];
  /** Per shard it holds a log for: the newest version in its log. */
  logTails: { shardId: number; version: Version }[];
  /** Highest restart ballot this node promised (a new restart leader must go above it). */
  promised: Ballot | null;
  /** Shards whose state this node did not hold in full (a state transfer was pending) when it stopped. */
  incompleteShards?: number[];
  /** The newest view change this node accepted (it may have been committed without this node installing it). */
  acceptedChange?: AcceptedChange | null;
  /**
   * Views this node installed or knows were decided just before its last view (the views a restart plan
   * it installed adopted), at most RECENT_VIEWS_KEPT, ascending id: the planner follows the chain of views
   * back from the last one through them (see restart.ts, `holds`).
   */
  recentViews?: View[];
  /** The reporter's disk id (ReplicaConfig.diskId); absent or 0 if unknown. */
  diskId?: number;
  /** The reporting process's incarnation (see JoinRequestMessage.incarnation). */
  incarnation?: number;
  /**
   * True for a node that never installed a view (nothing saved but, possibly, its restart-consensus
   * promises): its `lastView` is the empty `BLANK_VIEW`. It counts as a returned member of the last view
   * (it is one, if the view names it) but holds no state and says nothing about which view was last.
   */
  blank?: boolean;
}

/** A view-change value a member accepted in the state-table Paxos, with its ballot (the leader's rank). */
export interface AcceptedChange {
  value: ViewChangeValue;
  ballot: number;
}

/** The `lastView` of a blank restart report / saved state: no members, no shards. */
export const BLANK_VIEW: View = { viewId: 0, members: [], layout: { shards: [] } };

/** Saved state of a node that never installed a view, with its restart-consensus promises (if any). */
export function blankSavedState(acceptor?: Pick<SavedState, 'restartPromised' | 'restartAccepted' | 'highestViewIdSeen'>): SavedState {
  return {
    lastView: { ...BLANK_VIEW, members: [], layout: { shards: [] } },
    trims: [],
    highestViewIdSeen: acceptor?.highestViewIdSeen ?? 0,
    logTails: [],
    restartPromised: acceptor?.restartPromised ?? null,
    restartAccepted: acceptor?.restartAccepted ?? null,
    incompleteShards: [],
    blank: true,
  };
}

/** Everything a store of PersistRecords holds for a restart (its own copy; `savedStateFrom` keeps it). */
export interface StoredState {
  lastView: View | null;
  trims: SavedTrim[];
  highestViewIdSeen: number;
  logTails: { shardId: number; version: Version }[];
  restartPromised: Ballot | null;
  restartAccepted: { ballot: Ballot; plan: RestartDecision } | null;
  incompleteShards: number[];
  acceptedChange: AcceptedChange | null;
  /** See `RestartReport.recentViews` (kept by `rememberViews`). */
  recentViews: View[];
}

/** How many recent views a store keeps for restart planning (see `RestartReport.recentViews`). */
export const RECENT_VIEWS_KEPT = 8;

/**
 * `recent` with `add` merged in (a view replaces a kept one with the same id), ascending by id, only the
 * RECENT_VIEWS_KEPT highest ids. Pure: both stores (LogStore, the simulator's disk) keep their list with it.
 */
export function rememberViews(recent: readonly View[], add: readonly View[]): View[] {
  const byId = new Map<number, View>();
  for (const v of recent) byId.set(v.viewId, v);
  for (const v of add) byId.set(v.viewId, v);
  return [...byId.values()].sort((a, b) => a.viewId - b.viewId).slice(-RECENT_VIEWS_KEPT);
}

/**
 * What a restarted node passes as `{kind: 'restart', saved}`, the same rule for every store: null when it
 * never installed a view and never promised in a restart consensus; a blank saved state when it promised
 * but never installed a view; an accepted view change only while no later view is installed.
 */
export function savedStateFrom(s: StoredState): SavedState | null {
  if (s.lastView === null) {
    if (s.restartPromised === null && s.restartAccepted === null) return null;
    return blankSavedState(s);
  }
  return {
    lastView: s.lastView,
    trims: s.trims,
    highestViewIdSeen: s.highestViewIdSeen,
    logTails: s.logTails,
    restartPromised: s.restartPromised,
    restartAccepted: s.restartAccepted,
    incompleteShards: [...s.incompleteShards].sort((a, b) => a - b),
    ...(s.acceptedChange && s.acceptedChange.value.next.viewId > s.lastView.viewId ? { acceptedChange: s.acceptedChange } : {}),
    ...(s.recentViews.length > 0 ? { recentViews: s.recentViews.filter((v) => v.viewId <= s.lastView!.viewId) } : {}),
  };
}

export interface SavedTrim {
  viewId: number;
  trims: number[][];
  /** Per shard, the last version delivered in that view under the trim (VERSION_NONE if none). */
  lastVersions: Version[];
}

export interface RestartReportMessage {
  kind: 'restartReport';
  from: NodeId;
  report: RestartReport;
}

/** Reply of an active member to a restarting node: a group is running, join it. */
export interface RestartActiveMessage {
  kind: 'restartActive';
  from: NodeId;
  viewId: number;
  leader: NodeId;
}

/** Ballot of the restart consensus: compared by round, then by node id. */
export interface Ballot {
  round: number;
  nodeId: NodeId;
}

export interface RestartPrepareMessage {
  kind: 'restartPrepare';
  from: NodeId;
  ballot: Ballot;
}

export interface RestartPromiseMessage {
  kind: 'restartPromise';
  from: NodeId;
  ballot: Ballot;
  accepted: { ballot: Ballot; plan: RestartDecision } | null;
  report: RestartReport;
}

export interface RestartAcceptMessage {
  kind: 'restartAccept';
  from: NodeId;
  ballot: Ballot;
  plan: RestartDecision;
}

export interface RestartAcceptedMessage {
  kind: 'restartAccepted';
  from: NodeId;
  ballot: Ballot;
}

export interface RestartCommitMessage {
  kind: 'restartCommit';
  from: NodeId;
  plan: RestartDecision;
}

/** A member asks `to` for a shard's state (object state and log suffix) after `have`. */
export interface StateRequestMessage {
  kind: 'stateRequest';
  from: NodeId;
  shardId: number;
  viewId: number;
}

/** The decided restart: the view to install and, per shard, where logs end and who serves them. */
export interface RestartDecision {
  /** The last view the group restarts from (the restart view follows it). */
  lastViewId: number;
  /**
   * Views no returning node installed that the planner adopted after the newest installed one (accepted,
   * possibly committed, view changes), oldest first; the last is view `lastViewId`. Absent in plans
   * written before this field existed: read as none.
   */
  adopted?: View[];
  view: View;
  /** Per shard: the node with the longest valid log, and the version every log is cut to. */
  shards: { shardId: number; source: NodeId | null; truncateTo: Version }[];
  /** Ragged trims known to the planner, so every node can record them. */
  trims: SavedTrim[];
}

/** One member's row of the shared state table (SST) for one view. See state-table.ts. */
export interface Row {
  /** Counts pushes of this row; a receiver keeps the row with the highest count. Only goes up. */
  pushCount: number;
  /** Incremented every heartbeat period. Only goes up. */
  heartbeat: number;
  /** suspected[rank]: this member suspects that member has failed. false -> true only. */
  suspected: boolean[];
  /** This member asked to leave the group. false -> true only. */
  leaving: boolean;
  /** This member stopped sending and receiving multicasts in this view. false -> true only. */
  wedged: boolean;
  /** received[shardId][senderRank] = contiguous messages received from that sender. Only go up. */
  received: number[][];
  /** delivered[shardId] = number of global sequence numbers delivered in this view. Only goes up. */
  delivered: number[];
  /** persisted[shardId] = number of global sequence numbers durably logged in this view. Only goes up. */
  persisted: number[];
  /** stateReady[shardId]: this member holds the shard's state (false while a state transfer is due). */
  stateReady: boolean[];
  /** Highest ballot (leader rank) this member promised to follow in the view change. Only goes up. */
  promisedBallot: number;
  /** Ballot under which `accepted` was accepted; -1 if none. Only goes up. */
  acceptedBallot: number;
  /** The view-change value this member accepted (the leader's proposal, echoed). */
  accepted: ViewChangeValue | null;
  /** This member knows `accepted` is decided (chosen by a majority). false -> true only. */
  committed: boolean;
  /** Join requests this member (as leader) has queued, so every member can welcome them. Bounded. */
  pendingJoins: { nodeId: NodeId; incarnation: number }[];
  /**
   * The disk this member runs with (ReplicaConfig.diskId; 0: unknown). Constant. The leader names it in
   * the next view (View.memberDisks) when the current view does not, and checks a returning holder by it.
   */
  diskId: number;
}

/** Configuration of the core; all durations are in ticks. */
export interface ReplicaConfig {
  nodeId: NodeId;
  /**
   * Identity of this node's disk: a random positive number saved when its store was created, so a store
   * replaced by an empty one (a wiped disk) is told apart from one that never saved a view. 0 or absent:
   * unknown (such a node, back with nothing saved, never counts toward a restart majority).
   */
  diskId?: number;
  policy: GroupPolicy;
  /** Push the own row at least every this many ticks. */
  heartbeatTicks: number;
  /** Suspect a member not heard from in this many ticks. */
  suspectTicks: number;
  /** Resend unacknowledged multicasts to a lagging receiver at most every this many ticks. */
  retransmitTicks: number;
  /** Per sender and shard: messages in flight (sent but not received by every member). */
  windowSize: number;
  /** Bound of the queue of application sends waiting for a window slot, per shard. */
  pendingSendsMax: number;
  /** Bound of the leader's queue of join requests. */
  pendingJoinsMax: number;
  /** Joins admitted in one view change. */
  joinsPerViewMax: number;
  /** Give up (exit, so the supervisor restarts us) after this many ticks wedged without a new view. */
  wedgedExitTicks: number;
  /** Restart: after the quorum holds, wait this many ticks for the remaining members. */
  restartGraceTicks: number;
  /** Joiner / restarting node: re-send its request every this many ticks. */
  retryTicks: number;
  /** Bound on ordered deliveries held for a shard while its state transfer is pending. */
  heldDeliveriesMax: number;
  /** Payload bound (bytes) of one multicast message. */
  payloadBytesMax: number;
  /**
   * For tests only: deliberately break a protocol rule, to prove the simulator's checkers catch it.
   * Never set outside tests.
   */
  brokenRule?: BrokenRule;
}

/**
 * Deliberately broken protocol rules (mutants), for tests only: the simulator's checkers must catch each.
 *  - deliverOrderedOnReceipt: ordered messages are delivered on receipt, before they are stable;
 *  - installWithoutMajority: a view is installed without a majority of the previous one;
 *  - skipRaggedTrim: the ragged-edge cleanup delivers nothing;
 *  - deliverPastTrim: the cleanup also delivers what this member received beyond the decided trims;
 *  - noResendBeyondTrim: a sender does not queue its messages beyond its trim again in the next view;
 *  - restartQuorumFloorHalf: the restart quorum takes floor(n/2) members of a view instead of a majority;
 *  - restartQuorumOfAdoptedViewOnly: a restart that adopts an accepted view change X out of W checks a
 *    majority of X only, not of W (the split-brain restart of issue #11);
 *  - wipedNodeCounts: a node that returns with nothing saved counts toward the restart majority;
 *  - restartIgnoresAcceptedPlans: the restart leader makes a fresh plan instead of re-proposing the
 *    plan accepted (maybe committed) with the highest ballot in an earlier attempt of the same restart;
 *  - spreadEverySuspicion: suspicions spread from every row, also from a member that cannot hear a
 *    majority (one deaf node then takes the whole group down);
 *  - leaderIgnoresAcceptedValues: a new view-change leader proposes afresh instead of adopting the
 *    highest-ballot value its followers accepted (which may have been committed);
 *  - skipPersistAcceptedChange: a member does not persist the view change it accepts;
 *  - returningHolderUnchecked: the leader makes any returning former member of a shard with no member
 *    left its source, without checking that it came back with the disk the view names for it, its last
 *    view and a complete log (a wiped or stale disk then becomes the shard's state).
 */
export const BROKEN_RULES = [
  'deliverOrderedOnReceipt',
  'installWithoutMajority',
  'skipRaggedTrim',
  'deliverPastTrim',
  'noResendBeyondTrim',
  'restartQuorumFloorHalf',
  'restartQuorumOfAdoptedViewOnly',
  'wipedNodeCounts',
  'restartIgnoresAcceptedPlans',
  'spreadEverySuspicion',
  'leaderIgnoresAcceptedValues',
  'skipPersistAcceptedChange',
  'returningHolderUnchecked',
  /**
   * Not a core rule: the simulator's store acknowledges log records before they are fsynced (LogStore
   * policy 'os'), so a machine crash can lose acknowledged writes. Proves the machine-crash faults and the
   * persistence checker see a store that syncs too late.
   */
  'acknowledgeUnsynced',
] as const;

export type BrokenRule = (typeof BROKEN_RULES)[number];

/** Broken rules of the restart planner (a subset of BrokenRule). */
export type RestartBrokenRule = Extract<BrokenRule, 'restartQuorumFloorHalf' | 'restartQuorumOfAdoptedViewOnly' | 'wipedNodeCounts' | 'restartIgnoresAcceptedPlans'>;

export const DEFAULT_TIMING = Object.freeze({
  heartbeatTicks: 2,
  suspectTicks: 20,
  retransmitTicks: 8,
  windowSize: 16,
  pendingSendsMax: 1024,
  pendingJoinsMax: 64,
  joinsPerViewMax: 8,
  wedgedExitTicks: 400,
  restartGraceTicks: 30,
  retryTicks: 10,
  heldDeliveriesMax: 100_000,
  payloadBytesMax: 1 << 20,
});

/** Where a Replica begins its life. */
export type StartState =
  | { kind: 'bootstrap'; members: NodeId[] } // first view of a brand-new group (same list on every founder)
  | { kind: 'join'; contacts: NodeId[] } // join a running group through any member
  | { kind: 'restart'; saved: SavedState; contacts: NodeId[] }; // come back with stored state

/** What a node finds in its storage when it starts again (written through Ready.persist). */
export interface SavedState {
  lastView: View;
  trims: SavedTrim[];
  /** Highest view id seen in proposals / accepted values / restart plans. */
  highestViewIdSeen: number;
  logTails: { shardId: number; version: Version }[];
  /** Restart consensus state (Paxos acceptor), if any. */
  restartPromised: Ballot | null;
  restartAccepted: { ballot: Ballot; plan: RestartDecision } | null;
  /** Shards whose last `shardState` record said incomplete (a state transfer was pending). */
  incompleteShards?: number[];
  /** Never installed a view: `lastView` is `BLANK_VIEW` (see `RestartReport.blank`). */
  blank?: boolean;
  /** The newest view change this node accepted, if it did not install its view (see RestartReport). */
  acceptedChange?: AcceptedChange | null;
  /** Recent views (see `RestartReport.recentViews`). */
  recentViews?: View[];
}

/** Something the driver must make durable before sending the Ready's messages. */
export type PersistRecord =
  | { kind: 'log'; record: LogRecord }
  | { kind: 'view'; view: View }
  /**
   * Views decided just before the view this node is about to install, which it never installed (the views
   * a restart plan adopted): kept with its recent views, so a later restart can follow the chain of views.
   */
  | { kind: 'viewsDecided'; views: View[] }
  | { kind: 'trim'; trim: SavedTrim }
  | { kind: 'viewIdSeen'; viewId: number }
  /** This node accepted a view change (persisted before its row says so: a restart must consider it). */
  | { kind: 'viewAccepted'; accepted: AcceptedChange }
  | { kind: 'truncate'; shardId: number; after: Version }
  /** Whether this node holds the shard's whole state (false from an install that awaits a transfer). */
  | { kind: 'shardState'; shardId: number; complete: boolean }
  | { kind: 'restartPromise'; ballot: Ballot }
  | { kind: 'restartAccept'; ballot: Ballot; plan: RestartDecision };

export interface Envelope {
  to: NodeId;
  message: Message;
  /**
   * A retransmission (data the member showed no progress on for retransmitTicks). A driver may skip it
   * while its link to `to` still holds frames it has not written: the originals are still on their way
   * and the resend would only queue behind them.
   */
  resend?: true;
}

export interface Delivery {
  shardId: number;
  version: Version;
  sender: NodeId;
  payload: Uint8Array;
  mode: DeliveryMode;
}

/** A state transfer the driver must serve: send `to` the shard's state up to and including `through`. */
export interface TransferOrder {
  to: NodeId;
  shardId: number;
  through: Version;
}

/** Human-readable reason the node is waiting (minority partition, inadequate view, restart quorum...). */
export interface Waiting {
  kind: 'minority' | 'inadequate' | 'restartQuorum' | 'joining' | 'stateTransfer' | 'none';
  message: string;
}

/**
 * Output of the core, to be processed by the driver in this order:
 *  1. `persist`: make every record durable (logs, views, trims, consensus state).
 *     `resetShards`: clear the application state of these shards.
 *  2. `deliver`: hand deliveries to the application, in order (ordered ones are stable).
 *  3. `send`: put messages on the wire (only now: persisted state may be acknowledged).
 *  4. `transfers`: serve state transfers, from the state as of the deliveries just applied (after the
 *     sends, so a joiner's welcome precedes its state on the same connection).
 *  5. call `advance()`.
 * A Ready never mixes deliveries from before and after `installView`.
 */
export interface Ready {
  persist: PersistRecord[];
  deliver: Delivery[];
  transfers: TransferOrder[];
  send: Envelope[];
  /** A view this node installed during the steps this Ready covers (after the deliveries above). */
  installView: View | null;
  /** Per shard, the newest version persisted by every member (moved forward since the last Ready). */
  persistenceFrontiers: { shardId: number; version: Version }[];
  /** The node must stop: removed from the group, or wedged too long. The driver exits / restarts it. */
  exit: { reason: string } | null;
  /**
   * Shards whose application state the driver must clear before applying this Ready's deliveries:
   * the node starts them empty (a volatile shard whose state was lost, or that it joins with no source).
   */
  resetShards: number[];
  /**
   * Accepted sends this node can no longer carry out although it stays up (it no longer sends in the
   * shard in the view just installed): the driver fails them with a definite error. Every other accepted
   * send is delivered unless this node fails.
   */
  sendsFailed: { shardId: number; payload: Uint8Array; reason: string }[];
}

/** A snapshot of what the node is doing, for /status, the simulator's trace and tests. */
export interface ReplicaStatus {
  nodeId: NodeId;
  mode: 'joining' | 'restarting' | 'active' | 'exited';
  viewId: number;
  members: NodeId[];
  leader: NodeId | null;
  wedged: boolean;
  waiting: Waiting;
  /** Shards this node is a member of, with its frontiers. */
  shards: {
    shardId: number;
    subgroup: string;
    shardIndex: number;
    members: NodeId[];
    delivered: Version;
    persistenceFrontier: Version;
    stateReady: boolean;
  }[];
}

/** Result of Replica.send. */
export type SendResult =
  | { ok: true }
  | { ok: false; reason: 'notMember' | 'notSender' | 'backpressure' | 'wedged' | 'tooLarge' | 'inactive' };
