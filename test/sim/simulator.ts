// The seeded simulator (in the style of TigerBeetle's VOPR): one seed -> a scenario -> a run of a whole
// group with faults -> a quiet phase -> checkers. Deterministic: the same seed replays the same run.

import { Prng } from '../../node-agent/src/core/prng.ts';
import type { BrokenRule, NodeId } from '../../node-agent/src/core/types.ts';
import { Cluster } from './cluster.ts';
import type { ClusterStats } from './cluster.ts';
import type { ReplicaFactory } from './node.ts';
import { checkAll } from './checkers.ts';
import { adequate, describeScenario, generateScenario } from './scenario.ts';
import type { FaultEvent, Scenario } from './scenario.ts';
import type { History } from './history.ts';

export interface RunOptions {
  brokenRule?: BrokenRule;
  /** Receives the readable trace (one line per notable event). Tracing costs time: only when asked. */
  traceTo?: (line: string) => void;
  /** Length of the fault phase (default: drawn from the seed). */
  ticks?: number;
  /** Budget of the quiet phase. */
  livenessTicks?: number;
  /** A stand-in for the Replica (tests of the simulator itself). */
  createReplica?: ReplicaFactory;
}

/** Everything the cluster counts (crashes, restarts, joins, ...) plus the run's own figures. */
export interface RunStats extends ClusterStats {
  /** Ticks simulated in all. */
  ticks: number;
  faultTicks: number;
  /** Tick at which the group settled in the quiet phase, and at which every probe was applied. */
  settledAt: number | null;
  doneAt: number | null;
  founders: number;
  nodeIds: number;
  subgroups: number;
  shards: number;
  highestViewId: number;
  installs: number;
  deliveries: number;
  persistenceAcks: number;
  transfers: number;
  faultsSkipped: number;
  messagesSent: number;
  messagesDelivered: number;
  messagesDropped: number;
}

export interface RunResult {
  seed: number;
  violations: string[];
  stats: RunStats;
}

export interface RunDetails extends RunResult {
  scenario: Scenario;
  cluster: Cluster;
  history: History;
}

export function runSeed(seed: number, options: RunOptions = {}): RunResult {
  const { seed: s, violations, stats } = runSeedDetailed(seed, options);
  return { seed: s, violations, stats };
}

/** Like runSeed, also returning the scenario, the cluster and the history (for the demo and tests). */
export function runSeedDetailed(seed: number, options: RunOptions = {}): RunDetails {
  const scenario = generateScenario(seed, {
    ...(options.ticks !== undefined ? { faultTicks: options.ticks } : {}),
    ...(options.livenessTicks !== undefined ? { livenessTicks: options.livenessTicks } : {}),
  });
  const root = new Prng(seed ^ 0x2545f491);
  const runPrng = root.fork();
  const exitPrng = root.fork();
  const cluster = new Cluster({
    seed: Math.floor(root.next() * 2 ** 31),
    policy: scenario.policy,
    founders: scenario.founders,
    network: scenario.network,
    ...(options.brokenRule ? { brokenRule: options.brokenRule } : {}),
    ...(options.traceTo ? { trace: options.traceTo } : {}),
    ...(options.createReplica ? { createReplica: options.createReplica } : {}),
    exitRestartDelay: () => exitPrng.int(5, 60),
  });
  if (options.traceTo) {
    for (const line of describeScenario(scenario)) options.traceTo(line);
    if (options.brokenRule) options.traceTo(`  broken rule: ${options.brokenRule}`);
  }
  const runner = new FaultRunner(cluster, scenario, runPrng);
  cluster.start();
  while (cluster.now < scenario.faultTicks && !cluster.halted) {
    runner.beforeTick(cluster.now + 1);
    cluster.tick();
  }
  let settledAt: number | null = null;
  let doneAt: number | null = null;
  if (!cluster.halted) {
    const q = cluster.quiesce(scenario.livenessTicks);
    settledAt = q.settledAt;
    doneAt = q.doneAt;
  }
  const history = cluster.finish();
  const violations = [...cluster.violations, ...checkAll(history, { liveness: !cluster.halted && history.judgeLiveness })];
  if (options.traceTo) {
    for (const v of violations) options.traceTo(`VIOLATION ${v}`);
    options.traceTo(`end at t=${cluster.now}: ${violations.length} violation(s)`);
  }
  const net = cluster.network.stats;
  const stats: RunStats = {
    ticks: cluster.now,
    faultTicks: scenario.faultTicks,
    settledAt,
    doneAt,
    founders: scenario.founders.length,
    nodeIds: cluster.nodes.size,
    subgroups: scenario.policy.subgroups.length,
    shards: history.shards.length,
    highestViewId: Math.max(-1, ...cluster.views.keys()),
    installs: history.installs.length,
    deliveries: history.deliveries.length,
    sends: cluster.stats.sends,
    sendsRefused: cluster.stats.sendsRefused,
    persistenceAcks: history.acks.length,
    transfers: history.transfers.filter((t) => t.what === 'installed').length,
    crashes: cluster.stats.crashes,
    restarts: cluster.stats.restarts,
    exits: cluster.stats.exits,
    joins: cluster.stats.joins,
    leaves: cluster.stats.leaves,
    partitions: cluster.stats.partitions,
    spikes: cluster.stats.spikes,
    totalFailures: cluster.stats.totalFailures,
    faultsSkipped: runner.skipped,
    messagesSent: net.sent,
    messagesDelivered: net.delivered,
    messagesDropped: net.dropped.partition + net.dropped.down + net.dropped.overflow,
  };
  return { seed, violations, stats, scenario, cluster, history };
}

/** Fires the scenario's faults and application sends, choosing targets from the group's state. */
export class FaultRunner {
  skipped = 0;
  private next = 0;
  private partitionUntil: number | null = null;
  private leaves = 0;
  private counter = 0;

  constructor(
    private readonly cluster: Cluster,
    private readonly scenario: Scenario,
    private readonly prng: Prng,
  ) {}

  /** Called before the cluster runs tick `now`. */
  beforeTick(now: number): void {
    if (this.partitionUntil !== null && now >= this.partitionUntil) {
      this.cluster.heal();
      this.partitionUntil = null;
    }
    const events = this.scenario.events;
    while (this.next < events.length && events[this.next]!.at <= now) this.fire(events[this.next++]!, now);
    if (this.prng.chance(this.scenario.sendChance)) this.appSend();
  }

  private fire(e: FaultEvent, now: number): void {
    const c = this.cluster;
    switch (e.kind) {
      case 'crash': {
        const candidates = this.shuffle(c.upIds().filter((id) => !c.node(id).leaving));
        const reasons: string[] = [];
        for (const id of candidates) {
          const why = this.whyNotRemove(id);
          if (why === null) {
            c.crash(id, e.downFor);
            return;
          }
          reasons.push(`n${id}: ${why}`);
        }
        this.skip(`crash skipped (${reasons.join('; ') || 'no running node'})`);
        return;
      }
      case 'totalFailure': {
        const up = c.upIds();
        if (up.length === 0) return this.skip('total failure skipped: nothing runs');
        c.trace(null, `TOTAL FAILURE: every running node crashes [${up.join(',')}]`);
        c.stats.totalFailures++;
        for (const id of up) c.crash(id, this.prng.int(1, e.staggerMax), 'total failure');
        return;
      }
      case 'partition': {
        if (this.partitionUntil !== null) return this.skip('partition skipped: one is already in place');
        const ids = this.shuffle(c.remainingIds());
        const k = Math.min(e.groups, ids.length);
        if (k < 2) return this.skip('partition skipped: too few nodes');
        const cuts = new Set<number>();
        while (cuts.size < k - 1) cuts.add(this.prng.int(1, ids.length - 1));
        const sorted = [...cuts].sort((a, b) => a - b);
        const groups: NodeId[][] = [];
        let from = 0;
        for (const cut of [...sorted, ids.length]) {
          groups.push(ids.slice(from, cut).sort((a, b) => a - b));
          from = cut;
        }
        c.partition(groups);
        this.partitionUntil = now + e.lasts;
        return;
      }
      case 'spike': {
        const up = c.upIds();
        c.spike(e.extraDelay, e.lasts, e.wholeNetwork || up.length === 0 ? null : [this.prng.pick(up)]);
        return;
      }
      case 'join': {
        if (c.knownIds().length >= this.scenario.maxNodes) return this.skip(`join skipped: ${this.scenario.maxNodes} node ids exist`);
        c.join();
        return;
      }
      case 'leave': {
        if (this.leaves >= 2) return this.skip('leave skipped: two leaves already');
        const view = c.currentView();
        if (!view) return this.skip('leave skipped: no view');
        const candidates = this.shuffle(view.members.filter((id) => c.nodes.get(id)?.up && !c.node(id).leaving && c.node(id).viewId === view.viewId));
        const reasons: string[] = [];
        for (const id of candidates) {
          const up = new Set(c.upIds());
          // Nodes already leaving count as gone: two leaves in a row must still leave an adequate group.
          const rest = view.members.filter((m) => m !== id && up.has(m) && !c.node(m).leaving);
          let why = this.whyNotRemove(id);
          if (why === null && rest.length < 2) why = 'fewer than 2 members would remain';
          if (why === null && !adequate(this.scenario.policy, rest)) why = 'the rest could not host the policy';
          if (why === null) {
            this.leaves++;
            c.leave(id);
            return;
          }
          reasons.push(`n${id}: ${why}`);
        }
        this.skip(`leave skipped (${reasons.join('; ') || 'no candidate'})`);
        return;
      }
      case 'burst': {
        for (let i = 0; i < e.count; i++) this.appSend();
        return;
      }
    }
  }

  /**
   * Why `id` may not go down now (null: it may): more than a minority of the current view would be down,
   * or it is the last running member of one of its shards holding that shard's state.
   */
  private whyNotRemove(id: NodeId): string | null {
    const c = this.cluster;
    const view = c.currentView();
    if (!view) return 'no view is installed';
    // A node that is leaving counts as gone already.
    const up = new Set(c.upIds().filter((m) => !c.node(m).leaving));
    if (view.members.includes(id)) {
      const down = view.members.filter((m) => !up.has(m)).length;
      if ((down + 1) * 2 >= view.members.length) return `${down + 1} of ${view.members.length} members of view ${view.viewId} would be down`;
    }
    for (const shard of view.layout.shards) {
      if (!shard.members.includes(id)) continue;
      const holders = shard.members.filter((m) => {
        if (m === id || !up.has(m)) return false;
        if (shard.deliveryMode === 'raw') return true;
        const s = c.status(m);
        return !!s && s.mode === 'active' && s.shards.some((sh) => sh.shardId === shard.shardId && sh.stateReady);
      });
      if (holders.length === 0) return `last running holder of shard ${shard.shardId}`;
    }
    return null;
  }

  private appSend(): void {
    const c = this.cluster;
    const up = c.upIds().filter((id) => !c.node(id).leaving);
    if (up.length === 0) return;
    const id = this.prng.pick(up);
    const node = c.node(id);
    let shardId: number;
    const mine = node.view?.layout.shards.filter((s) => s.senders.includes(id)).map((s) => s.shardId) ?? [];
    if (mine.length > 0 && !this.prng.chance(0.05)) shardId = this.prng.pick(mine);
    else shardId = this.prng.int(0, Math.max(0, c.history.shards.length - 1));
    c.send(id, shardId, `n${id}-i${node.incarnation}-m${++this.counter}`);
  }

  private skip(text: string): void {
    this.skipped++;
    this.cluster.trace(null, text);
  }

  private shuffle<T>(items: T[]): T[] {
    const a = [...items];
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.prng.int(0, i);
      [a[i], a[j]] = [a[j]!, a[i]!];
    }
    return a;
  }
}
