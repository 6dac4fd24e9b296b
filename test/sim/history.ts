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
}

export interface InstallEvent {
  tick: number;
  node: NodeId;
  incarnation: number;
  view: View;
}

/** A persistence frontier reported to the node's application: acknowledged as durable on every member. */
export interface AckEvent {
  tick: number;
  node: NodeId;
  incarnation: number;
  shardId: number;
  version: Version;
}

export interface SendEvent {
  tick: number;
  node: NodeId;
  incarnation: number;
  shardId: number;
  payload: string;
  result: SendResult;
}

export interface TransferEvent {
  tick: number;
  /** 'served': the node sent its state; 'installed': the node imported it and told its replica. */
  what: 'served' | 'installed';
  node: NodeId;
  incarnation: number;
  peer: NodeId;
  shardId: number;
  through: Version;
  records: number;
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
  sends: SendEvent[];
  transfers: TransferEvent[];
  probes: ProbeEvent[];
  /** Snapshot at the end of the run (null until taken). */
  final: FinalNode[] | null;
  /** True when the run reached its quiet phase and liveness is to be judged. */
  judgeLiveness: boolean;
}

export function emptyHistory(policy: GroupPolicy): History {
  return {
    policy,
    shards: shardInfos(policy),
    deliveries: [],
    installs: [],
    acks: [],
    sends: [],
    transfers: [],
    probes: [],
    final: null,
    judgeLiveness: false,
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
