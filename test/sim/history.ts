// What a simulated run records for the checkers: plain data, payloads as text.

import type {
  DeliveryMode,
  GroupPolicy,
  NodeId,
  ReplicaStatus,
  SendResult,
  Version,
  View,
} from '../../node-agent/src/core/types.ts';

/** Static facts about a flat shard id, from the policy. */
export interface ShardInfo {
  shardId: number;
  subgroup: string;
  shardIndex: number;
  deliveryMode: DeliveryMode;
  /** Ordered and persistent (raw shards are never persistent). */
  persistent: boolean;
}

export interface DeliveryEvent {
  tick: number;
  node: NodeId;
  incarnation: number;
  /** The view the node had installed when the delivery reached the application. */
  viewId: number;
  shardId: number;
  version: Version;
  sender: NodeId;
  payload: string;
  mode: DeliveryMode;
  /** Held while the shard's state transfer was pending, released when it was installed. */
  released?: boolean;
}

export interface InstallEvent {
  tick: number;
  /** Position among all recorded installs and transfers (orders events within one tick). */
  order: number;
  node: NodeId;
  incarnation: number;
  view: View;
  /** Shards of the view whose state the node still waited for right after installing it. */
  pendingState: number[];
}

/** A persistence frontier reported to the node's application: acknowledged as durable on every member. */
export interface AckEvent {
  tick: number;
  node: NodeId;
  incarnation: number;
  shardId: number;
  version: Version;
}

/** An update acknowledged as durable: at or below a persistence frontier in the acknowledging node's state. */
export interface DurableEvent {
  tick: number;
  /** The node whose frontier covered it. */
  node: NodeId;
  incarnation: number;
  shardId: number;
  frontier: Version;
  version: Version;
  sender: NodeId;
  payload: string;
}

export interface SendEvent {
  tick: number;
  node: NodeId;
  incarnation: number;
  shardId: number;
  payload: string;
  result: SendResult;
}

/** An accepted send the core later reported as failed (Ready.sendsFailed): a definite error to its client. */
export interface SendFailureEvent {
  tick: number;
  node: NodeId;
  incarnation: number;
  shardId: number;
  payload: string;
  reason: string;
}

export interface TransferEvent {
  tick: number;
  /** Position among all recorded installs and transfers (orders events within one tick). */
  order: number;
  /** 'served': the node sent its state; 'installed': the node imported it and told its replica. */
  what: 'served' | 'installed';
  node: NodeId;
  incarnation: number;
  peer: NodeId;
  shardId: number;
  through: Version;
  records: number;
  /** What was installed ('installed' events only). */
  entries?: AppEntry[];
}

/** A ragged trim the node persisted (Ready.persist 'trim'): what it delivered in the view that ended. */
export interface TrimEvent {
  tick: number;
  node: NodeId;
  incarnation: number;
  viewId: number;
  /** trims[shardId][senderRank] = messages of that sender delivered in the view. */
  trims: number[][];
}

/** A restart plan a node accepted (Ready.persist 'restartAccept'): the views it adopted and the view it makes. */
export interface RestartPlanEvent {
  tick: number;
  node: NodeId;
  incarnation: number;
  lastViewId: number;
  adopted: View[];
  view: View;
}

/** A non-null multicast seen on the wire (first copy of each distinct message). */
export interface WireData {
  viewId: number;
  shardId: number;
  senderRank: number;
  index: number;
  sender: NodeId;
  payload: string;
}

export interface ProbeEvent {
  shardId: number;
  sender: NodeId;
  payload: string;
  /** Whether Replica.send accepted it (it is retried until it is). */
  accepted: boolean;
  lastRefusal: string | null;
}

export interface AppEntry {
  version: Version;
  sender: NodeId;
  payload: string;
}

export interface FinalNode {
  node: NodeId;
  incarnation: number;
  /** up: running; down: crashed or exited (may restart); left: gone for good after a graceful leave. */
  state: 'up' | 'down' | 'left';
  /** It asked to leave (still running if state is 'up'). */
  leaving: boolean;
  /** Why it last went down, if it did. */
  downReason: string | null;
  status: ReplicaStatus | null;
  /** Disk logs (survive crashes). */
  disk: { shardId: number; records: AppEntry[] }[];
  /** Application state per shard of the current incarnation (persistent shards: the disk log). */
  app: { shardId: number; entries: AppEntry[] }[];
}

export interface History {
  policy: GroupPolicy;
  shards: ShardInfo[];
  deliveries: DeliveryEvent[];
  installs: InstallEvent[];
  acks: AckEvent[];
  /** Updates acknowledged durable (one entry per distinct update). */
  durable: DurableEvent[];
  sends: SendEvent[];
  sendFailures: SendFailureEvent[];
  transfers: TransferEvent[];
  trims: TrimEvent[];
  restartPlans: RestartPlanEvent[];
  /** Application multicasts seen on the wire, with their position in the sender's stream. */
  wire: WireData[];
  probes: ProbeEvent[];
  /** When the quiet phase found the group settled (then probes were sent), or null. */
  settled: { tick: number; viewId: number } | null;
  /** Snapshot at the end of the run (null until taken). */
  final: FinalNode[] | null;
  /** True when the run reached its quiet phase and liveness is to be judged. */
  judgeLiveness: boolean;
  /** Next `order` for installs and transfers. */
  nextOrder: number;
  /**
   * The stores' declared fsync policy. Under 'os' log records reach the disk when the OS flushes them,
   * so a machine crash of a member holding a write may lose it (documented); the persistence checker
   * then excuses a missing write only when a member of its shard in its view had a machine crash after
   * it was written (`machineCrashes`).
   */
  storage: 'fsync' | 'os';
  /** Machine crashes (power losses: unsynced bytes lost), alone or in a total failure. */
  machineCrashes: { tick: number; node: NodeId }[];
}

export function emptyHistory(policy: GroupPolicy, storage: 'fsync' | 'os' = 'fsync'): History {
  return {
    policy,
    shards: shardInfos(policy),
    deliveries: [],
    installs: [],
    acks: [],
    durable: [],
    sends: [],
    sendFailures: [],
    transfers: [],
    trims: [],
    restartPlans: [],
    wire: [],
    probes: [],
    settled: null,
    final: null,
    judgeLiveness: false,
    nextOrder: 0,
    storage,
    machineCrashes: [],
  };
}

/** Flat shard ids follow the policy's subgroup order. */
export function shardInfos(policy: GroupPolicy): ShardInfo[] {
  const out: ShardInfo[] = [];
  for (const sg of policy.subgroups) {
    for (let i = 0; i < sg.shards; i++) {
      out.push({
        shardId: out.length,
        subgroup: sg.name,
        shardIndex: i,
        deliveryMode: sg.deliveryMode,
        persistent: sg.deliveryMode === 'ordered' && sg.persistent,
      });
    }
  }
  return out;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeText(text: string): Uint8Array {
  return encoder.encode(text);
}

export function decodeText(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}

export function fmtV(v: Version): string {
  return `${v.viewId}:${v.seq}`;
}

export function fmtView(view: View): string {
  const shards = view.layout.shards
    .map((s) => `s${s.shardId}=[${s.members.join(',')}]` + (s.senders.length !== s.members.length ? `/senders[${s.senders.join(',')}]` : ''))
    .join(' ');
  return `view ${view.viewId} members [${view.members.join(',')}]${shards ? ' ' + shards : ''}`;
}
