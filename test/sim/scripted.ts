// A small scripted API over the simulator's machinery, for scenario tests that set up one situation
// precisely: crash this node now, split the network like that, wait until a condition holds, check.

import type { BrokenRule, GroupPolicy, NodeId, ReplicaStatus, SendResult, View } from '../../node-agent/src/core/types.ts';
import { Cluster } from './cluster.ts';
import type { CrashOptions, QuiesceResult, Timing } from './cluster.ts';
import type { NetworkOptions } from './network.ts';
import type { ReplicaFactory } from './node.ts';
import { checkAll } from './checkers.ts';
import type { CheckOptions } from './checkers.ts';
import type { AppEntry, DeliveryEvent, History } from './history.ts';

export interface ScriptedOptions {
  /** A count (ids 1..n) or the founders' ids. */
  founders: number | NodeId[];
  policy: GroupPolicy;
  seed?: number;
  /** Default: delays of 1..2 ticks, no long delays. */
  network?: Partial<NetworkOptions>;
  timing?: Partial<Timing>;
  brokenRule?: BrokenRule;
  trace?: (line: string) => void;
  /** Ticks before a node that exited on its own is restarted (null: it stays down). Default 10. */
  exitRestartDelay?: number | null;
  createReplica?: ReplicaFactory;
}

export class ScriptedSim {
  readonly cluster: Cluster;

  constructor(options: ScriptedOptions) {
    const founders = typeof options.founders === 'number' ? Array.from({ length: options.founders }, (_, i) => i + 1) : options.founders;
    const exitDelay = options.exitRestartDelay === undefined ? 10 : options.exitRestartDelay;
    this.cluster = new Cluster({
      seed: options.seed ?? 1,
      policy: options.policy,
      founders,
      network: { maxDelayTicks: 2, longDelayChance: 0, ...(options.network ?? {}) },
      ...(options.timing ? { timing: options.timing } : {}),
      ...(options.brokenRule ? { brokenRule: options.brokenRule } : {}),
      ...(options.trace ? { trace: options.trace } : {}),
      ...(options.createReplica ? { createReplica: options.createReplica } : {}),
      exitRestartDelay: () => exitDelay,
    });
    this.cluster.start();
  }

  get now(): number {
    return this.cluster.now;
  }

  get history(): History {
    return this.cluster.history;
  }

  /** Violations found while running (exceptions, broken invariants, storage misuse). */
  get runtimeViolations(): readonly string[] {
    return this.cluster.violations;
  }

  tick(n = 1): void {
    this.cluster.run(n);
  }

  /** Ticks until `pred` holds (checked before every tick); false if it did not within `maxTicks`. */
  runUntil(pred: (sim: ScriptedSim) => boolean, maxTicks: number): boolean {
    for (let i = 0; i < maxTicks; i++) {
      if (pred(this)) return true;
      if (this.cluster.halted) return false;
      this.cluster.tick();
    }
    return pred(this);
  }

  /** `options.lateTicks`: some of its in-flight messages still arrive; `options.wipeDisk`: it comes back with an empty disk. */
  crash(node: NodeId, restartAfter: number | null = null, options: CrashOptions = {}): void {
    this.cluster.crash(node, restartAfter, 'crash', options);
  }

  /** Crashes every running node at once (a total failure); they stay down until restarted. */
  crashAll(): NodeId[] {
    return this.cluster.totalFailure();
  }

  /** Every machine loses power at once: a total failure that also loses what the stores did not fsync. */
  powerOutage(): NodeId[] {
    return this.cluster.totalFailure(() => null, null, true);
  }

  /** `nodes` (say a majority of the view) crash at once, the others keep running; down until restarted. */
  crashMany(nodes: NodeId[]): void {
    this.cluster.majorityFailure(nodes);
  }

  /** Replaces the disk of a node that is down by an empty one. */
  /** The node crashes inside its next Ready that persists (see Cluster.armMidReadyCrash). */
  crashInsideNextReady(node: NodeId, restartAfter: number | null = null, tornFraction?: number): void {
    this.cluster.armMidReadyCrash(node, restartAfter, tornFraction === undefined ? {} : { tornFraction });
  }

  wipeDisk(node: NodeId): void {
    this.cluster.wipeDisk(node);
  }

  /** Stops the process for `ticks` ticks (null: until resume()): no ticks, messages to it wait. */
  pause(node: NodeId, ticks: number | null = null): void {
    this.cluster.pause(node, ticks);
  }

  resume(node: NodeId): void {
    this.cluster.resume(node);
  }

  /** One-way failure: `from` -> `to` drops everything until restoreLink. */
  cutLink(from: NodeId, to: NodeId): void {
    this.cluster.cutLink(from, to);
  }

  restoreLink(from: NodeId, to: NodeId): void {
    this.cluster.restoreLink(from, to);
  }

  /** Non-transitive cut: `a` and `b` cannot reach each other, both reach everyone else. */
  cutPair(a: NodeId, b: NodeId): void {
    this.cluster.cutPair(a, b);
  }

  restorePair(a: NodeId, b: NodeId): void {
    this.cluster.restorePair(a, b);
  }

  /** The node receives nothing (still sends) until undeafen. */
  deafen(node: NodeId): void {
    this.cluster.deafen(node);
  }

  undeafen(node: NodeId): void {
    this.cluster.undeafen(node);
  }

  restart(node: NodeId): void {
    this.cluster.restart(node);
  }

  partition(groups: NodeId[][]): void {
    this.cluster.partition(groups);
  }

  /** Heals the partition (cut links, deaf nodes and pauses stay: see healAll). */
  heal(): void {
    this.cluster.heal();
  }

  /** Ends every network fault (partition, cut links, deaf nodes, spikes) and resumes paused processes. */
  healAll(): void {
    this.cluster.healAll();
  }

  spike(extraDelay: number, lasts: number, nodes: NodeId[] | null = null): void {
    this.cluster.spike(extraDelay, lasts, nodes);
  }

  join(id?: NodeId): NodeId {
    return this.cluster.join(id);
  }

  leave(node: NodeId): void {
    this.cluster.leave(node);
  }

  send(node: NodeId, shardId: number, text: string): SendResult {
    return this.cluster.send(node, shardId, text);
  }

  status(node: NodeId): ReplicaStatus | null {
    return this.cluster.status(node);
  }

  isUp(node: NodeId): boolean {
    return this.cluster.nodes.get(node)?.up ?? false;
  }

  /** The newest view a running node installed. */
  view(): View | null {
    return this.cluster.currentView();
  }

  /** Every node that is not gone for good runs, active and unwedged, in one view of exactly those nodes. */
  isSettled(): boolean {
    return this.cluster.settledness().settled;
  }

  /** Why the group is not settled ('' when it is). */
  unsettledReason(): string {
    return this.cluster.settledness().reason;
  }

  settle(maxTicks = 1000): boolean {
    return this.runUntil(() => this.isSettled(), maxTicks);
  }

  /** The application state of a shard at a node (this incarnation), oldest first. */
  state(node: NodeId, shardId: number): AppEntry[] {
    return this.cluster.nodes.get(node)?.appEntries(shardId) ?? [];
  }

  /** Whether the node (this incarnation) applied the payload in the shard. */
  applied(node: NodeId, shardId: number, payload: string): boolean {
    return this.cluster.applied(node, shardId, payload);
  }

  deliveries(filter: { node?: NodeId; shardId?: number } = {}): DeliveryEvent[] {
    return this.history.deliveries.filter(
      (d) => (filter.node === undefined || d.node === filter.node) && (filter.shardId === undefined || d.shardId === filter.shardId),
    );
  }

  /** The quiet phase of the seeded runs: heal, restart the down nodes, settle, probe every sender. */
  quiesce(budget = 1500): QuiesceResult {
    return this.cluster.quiesce(budget);
  }

  /** Snapshot and run every checker (liveness only after quiesce(), unless asked). Includes runtime violations. */
  check(options: CheckOptions = {}): string[] {
    const history = this.cluster.finish();
    return [...this.cluster.violations, ...checkAll(history, { liveness: history.judgeLiveness, ...options })];
  }
}

/** One subgroup, one shard, every member in it. */
export function singleShardPolicy(kind: 'persistent' | 'volatile' | 'raw' = 'persistent', maxNodes = 9): GroupPolicy {
  return {
    subgroups: [
      {
        name: kind === 'persistent' ? 'log' : kind === 'volatile' ? 'cache' : 'feed',
        shards: 1,
        minNodesPerShard: 1,
        maxNodesPerShard: maxNodes,
        deliveryMode: kind === 'raw' ? 'raw' : 'ordered',
        persistent: kind === 'persistent',
      },
    ],
  };
}
