// The seeded simulator (in the style of TigerBeetle's VOPR): one seed -> a scenario -> a run of a whole
// group with faults -> a quiet phase -> checkers. Deterministic: the same seed replays the same run.

import { Prng } from '../../node-agent/src/core/prng.ts';
import type { BrokenRule, NodeId } from '../../node-agent/src/core/types.ts';
import { Cluster } from './cluster.ts';
import type { ClusterStats } from './cluster.ts';
import type { ReplicaFactory } from './node.ts';
import { checkAll } from './checkers.ts';
import { adequate, describeScenario, generateScenario, MAX_CUT_LINKS, MAX_WIPES } from './scenario.ts';
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
  /**
   * Leaves these kinds of fault out of the schedule. The run is then a different one (targets and
   * timings drawn later shift): it only hints at which kind of fault a failing seed needs.
   */
  without?: readonly FaultEvent['kind'][];
  /** The stores' fsync policy instead of the seed's. */
  storage?: 'fsync' | 'os';
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
  /**
   * Unavailability during the fault phase: the longest stretch of ticks in which no ordered message was
   * delivered anywhere although ordered sends were being attempted (from the first attempt after the last
   * delivery to the next delivery, or to the end of the fault phase), and the tick it began at.
   */
  longestUnavailable: number;
  longestUnavailableFrom: number | null;
  /** 1 when the seed's stores ran with fsync policy 'os'; machine crashes under that policy. */
  storageOs: number;
  machineCrashesOs: number;
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
    // The broken rule's stores claim to sync and do not: the run is judged as an 'fsync' one.
    ...(options.brokenRule === 'acknowledgeUnsynced' ? { storage: 'fsync' as const } : options.storage !== undefined ? { storage: options.storage } : {}),
  });
  if (options.without && options.without.length > 0) {
    const without = new Set(options.without);
    scenario.events = scenario.events.filter((e) => !without.has(e.kind));
  }
  const root = new Prng(seed ^ 0x2545f491);
  const runPrng = root.fork();
  const exitPrng = root.fork();
  const cluster = new Cluster({
    seed: Math.floor(root.next() * 2 ** 31),
    policy: scenario.policy,
    founders: scenario.founders,
    network: scenario.network,
    storage: scenario.storage,
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
  const unavailable = longestUnavailability(history, scenario.faultTicks);
  if (options.traceTo) {
    for (const v of violations) options.traceTo(`VIOLATION ${v}`);
    options.traceTo(
      `end at t=${cluster.now}: ${violations.length} violation(s); longest unavailability during the faults: ${unavailable.ticks} ticks` +
        (unavailable.from !== null ? ` (from t=${unavailable.from})` : ''),
    );
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
    majorityFailures: cluster.stats.majorityFailures,
    wipes: cluster.stats.wipes,
    machineCrashes: cluster.stats.machineCrashes,
    corruptions: cluster.stats.corruptions,
    lateCrashes: cluster.stats.lateCrashes,
    midReadyCrashes: cluster.stats.midReadyCrashes,
    lateMessages: cluster.stats.lateMessages,
    oneWayCuts: cluster.stats.oneWayCuts,
    pairCuts: cluster.stats.pairCuts,
    deafNodes: cluster.stats.deafNodes,
    pauses: cluster.stats.pauses,
    faultsSkipped: runner.skipped,
    messagesSent: net.sent,
    messagesDelivered: net.delivered,
    messagesDropped: net.dropped.partition + net.dropped.cut + net.dropped.down + net.dropped.overflow,
    longestUnavailable: unavailable.ticks,
    longestUnavailableFrom: unavailable.from,
    storageOs: scenario.storage === 'os' ? 1 : 0,
    machineCrashesOs: scenario.storage === 'os' ? history.machineCrashes.length : 0,
  };
  return { seed, violations, stats, scenario, cluster, history };
}

/** Send refusals that say the group cannot take the message now (not that the caller asked wrongly). */
const UNAVAILABLE_REFUSALS: ReadonlySet<string> = new Set(['wedged', 'backpressure', 'inactive']);

/**
 * The longest stretch of ticks in [0, faultTicks] in which no ordered message was delivered anywhere
 * although ordered sends were attempted: it starts at the first attempt (accepted, or refused because the
 * group could not take it) after the last ordered delivery and ends at the next ordered delivery, or at
 * the end of the fault phase.
 */
export function longestUnavailability(history: History, faultTicks: number): { ticks: number; from: number | null } {
  const ordered = new Set(history.shards.filter((s) => s.deliveryMode === 'ordered').map((s) => s.shardId));
  const attempts = history.sends
    .filter((x) => x.tick <= faultTicks && ordered.has(x.shardId) && (x.result.ok || UNAVAILABLE_REFUSALS.has(x.result.reason)))
    .map((x) => x.tick);
  const deliveries = history.deliveries.filter((d) => d.tick <= faultTicks && d.mode === 'ordered').map((d) => d.tick);
  attempts.sort((a, b) => a - b);
  deliveries.sort((a, b) => a - b);
  let best = { ticks: 0, from: null as number | null };
  let d = 0;
  let a = 0;
  while (a < attempts.length) {
    const start = attempts[a]!;
    // The next ordered delivery after the attempt (one in the same tick does not end the wait).
    while (d < deliveries.length && deliveries[d]! <= start) d++;
    const end = d < deliveries.length ? deliveries[d]! : faultTicks;
    if (end - start > best.ticks) best = { ticks: end - start, from: start };
    // The next stretch starts at the first attempt after this delivery.
    while (a < attempts.length && attempts[a]! < end) a++;
    if (d >= deliveries.length) break;
  }
  return best;
}

/** Fires the scenario's faults and application sends, choosing targets from the group's state. */
export class FaultRunner {
  skipped = 0;
  private next = 0;
  private partitionUntil: number | null = null;
  /** Cut links and deaf nodes in place, each with the tick it ends at and how to end it. */
  private linkFaults: { until: number; kind: 'oneWay' | 'pairCut' | 'deaf'; end: () => void }[] = [];
  private leaves = 0;
  private wipes = 0;
  private counter = 0;
  /**
   * Draws for the disk faults (machine crash or process crash, corruption or replaced volume), apart from
   * the schedule's PRNG so that adding them left every seed's schedule as it was.
   */
  private readonly diskPrng: Prng;

  constructor(
    private readonly cluster: Cluster,
    private readonly scenario: Scenario,
    private readonly prng: Prng,
  ) {
    this.diskPrng = new Prng((scenario.seed ^ 0x5eed_d15c) >>> 0);
  }

  /** Called before the cluster runs tick `now`. */
  beforeTick(now: number): void {
    if (this.partitionUntil !== null && now >= this.partitionUntil) {
      this.cluster.heal();
      this.partitionUntil = null;
    }
    if (this.linkFaults.length > 0) {
      const due = this.linkFaults.filter((f) => now >= f.until);
      if (due.length > 0) {
        this.linkFaults = this.linkFaults.filter((f) => now < f.until);
        for (const f of due) f.end();
      }
    }
    const events = this.scenario.events;
    while (this.next < events.length && events[this.next]!.at <= now) this.fire(events[this.next++]!, now);
    if (this.prng.chance(this.scenario.sendChance)) this.appSend();
  }

  private fire(e: FaultEvent, now: number): void {
    const c = this.cluster;
    switch (e.kind) {
      case 'crash':
      case 'lateCrash':
      case 'wipe': {
        if (e.kind === 'wipe' && this.wipes >= MAX_WIPES) return this.skip('wipe skipped: a disk was wiped already');
        const candidates = this.shuffle(c.upIds().filter((id) => !c.node(id).leaving));
        const reasons: string[] = [];
        for (const id of candidates) {
          const why = e.kind === 'wipe' ? this.whyNotWipe(id) : this.whyNotRemove(id);
          if (why === null) {
            if (e.kind === 'wipe') this.wipes++;
            // A lost disk is a replaced volume, or a corrupted journal that its store refuses at the
            // restart (then the volume is replaced); a crash is a process crash, or a machine crash.
            const corrupt = e.kind === 'wipe' && this.diskPrng.chance(0.5);
            const machine = e.kind === 'crash' && this.diskPrng.chance(0.4);
            c.crash(id, e.downFor, e.kind === 'wipe' ? (corrupt ? 'crash, its journal is corrupted' : 'crash, its disk is replaced') : machine ? 'machine crash' : 'crash', {
              ...(e.kind === 'lateCrash' ? { lateTicks: e.lateTicks } : {}),
              ...(e.kind === 'wipe' ? (corrupt ? { corruptByte: this.diskPrng.int(0, 1 << 20) } : { wipeDisk: true }) : {}),
              ...(machine ? { machine: true } : {}),
            });
            return;
          }
          reasons.push(`n${id}: ${why}`);
        }
        this.skip(`${e.kind} skipped (${reasons.join('; ') || 'no running node'})`);
        return;
      }
      case 'midReadyCrash': {
        const candidates = this.shuffle(c.upIds().filter((id) => !c.node(id).leaving && !c.node(id).midReadyCrashArmed));
        const reasons: string[] = [];
        for (const id of candidates) {
          const why = this.whyNotRemove(id);
          if (why === null) {
            c.armMidReadyCrash(id, e.downFor, e.tornFraction === null ? {} : { tornFraction: e.tornFraction });
            return;
          }
          reasons.push(`n${id}: ${why}`);
        }
        this.skip(`crash inside a Ready skipped (${reasons.join('; ') || 'no running node'})`);
        return;
      }
      case 'totalFailure': {
        if (c.upIds().length === 0) return this.skip('total failure skipped: nothing runs');
        let wipe: NodeId | null = null;
        if (e.wipeOne && this.wipes < MAX_WIPES) {
          const reasons: string[] = [];
          for (const id of this.shuffle(c.upIds())) {
            const why = this.whyNotWipe(id);
            if (why === null) {
              wipe = id;
              break;
            }
            reasons.push(`n${id}: ${why}`);
          }
          if (wipe === null) c.trace(null, `no disk wiped in the total failure (${reasons.join('; ')})`);
          else this.wipes++;
        }
        c.totalFailure(() => this.prng.int(1, e.staggerMax), wipe, this.diskPrng.chance(0.5));
        return;
      }
      case 'majorityFailure': {
        const view = c.currentView();
        if (!view) return this.skip('majority failure skipped: no view is installed');
        const up = new Set(c.upIds());
        const running = view.members.filter((m) => up.has(m));
        const majority = Math.floor(view.members.length / 2) + 1;
        const crash = majority - (view.members.length - running.length);
        if (running.length - Math.max(1, crash) < 1) {
          return this.skip(`majority failure skipped: ${running.length} of ${view.members.length} members of view ${view.viewId} run, none would keep running`);
        }
        const victims = this.shuffle(running).slice(0, Math.max(1, crash)).sort((a, b) => a - b);
        c.majorityFailure(victims, () => this.prng.int(1, e.staggerMax));
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
      case 'oneWay':
      case 'pairCut': {
        if (this.linkFaults.filter((f) => f.kind !== 'deaf').length >= MAX_CUT_LINKS) return this.skip(`${e.kind} skipped: ${MAX_CUT_LINKS} link faults in place`);
        const ids = this.shuffle(c.remainingIds());
        // Two distinct nodes with no cut between them yet (so restoring one fault never ends another).
        const cut = new Set(c.network.cutLinkList().map(([x, y]) => `${Math.min(x, y)}-${Math.max(x, y)}`));
        let pair: [NodeId, NodeId] | null = null;
        for (let i = 0; i < ids.length && !pair; i++) {
          for (let j = i + 1; j < ids.length && !pair; j++) {
            const [x, y] = [ids[i]!, ids[j]!];
            if (!cut.has(`${Math.min(x, y)}-${Math.max(x, y)}`)) pair = [x, y];
          }
        }
        if (!pair) return this.skip(`${e.kind} skipped: no pair of nodes left to cut`);
        const [a, b] = pair;
        if (e.kind === 'oneWay') {
          c.cutLink(a, b);
          this.linkFaults.push({ until: now + e.lasts, kind: e.kind, end: () => c.restoreLink(a, b) });
        } else {
          c.cutPair(a, b);
          this.linkFaults.push({ until: now + e.lasts, kind: e.kind, end: () => c.restorePair(a, b) });
        }
        return;
      }
      case 'deaf': {
        if (this.linkFaults.some((f) => f.kind === 'deaf')) return this.skip('deaf skipped: a node is deaf already');
        const up = c.upIds().filter((id) => !c.node(id).leaving);
        if (up.length === 0) return this.skip('deaf skipped: nothing runs');
        const id = this.prng.pick(up);
        c.deafen(id);
        this.linkFaults.push({ until: now + e.lasts, kind: 'deaf', end: () => c.undeafen(id) });
        return;
      }
      case 'pause': {
        if (c.pausedIds().length > 0) return this.skip('pause skipped: a process is paused already');
        const up = c.upIds().filter((id) => !c.node(id).leaving);
        if (up.length === 0) return this.skip('pause skipped: nothing runs');
        c.pause(this.prng.pick(up), e.lasts);
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
        const candidates = this.shuffle(
          view.members.filter((id) => c.nodes.get(id)?.up && !c.node(id).leaving && !c.isPaused(id) && c.node(id).viewId === view.viewId),
        );
        const reasons: string[] = [];
        for (const id of candidates) {
          const up = new Set(c.upIds());
          // Nodes already leaving count as gone: two leaves in a row must still leave an adequate group.
          const rest = view.members.filter((m) => m !== id && up.has(m) && !c.node(m).leaving);
          let why = this.whyNotRemove(id, { needView: true });
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
   * Why `id` may not go down now (null: it may): more than a minority of the current view would be down
   * (paused and deaf nodes count as down), or it is the last member of one of its shards that runs (not
   * paused, not deaf) and holds that shard's state.
   *
   * While no running node has installed a view (the group is restarting after a total failure, or every
   * member of the view is down and only joiners run), there is no running group to protect: any running
   * node may crash (it restarts from its disk, which a crash does not touch), unless `needView` (a leave:
   * who holds each shard's state must be known). `stableHolders`: the holders must not be wedged either.
   */
  private whyNotRemove(id: NodeId, options: { needView?: boolean; stableHolders?: boolean } = {}): string | null {
    const c = this.cluster;
    const view = c.currentView();
    if (!view) return options.needView ? 'no view is installed' : null;
    // A node that is leaving counts as gone already; a paused or deaf one is about to be.
    const up = new Set(c.upIds().filter((m) => !c.node(m).leaving && !c.isPaused(m) && !c.network.isDeaf(m) && !c.node(m).midReadyCrashArmed));
    if (view.members.includes(id)) {
      const down = view.members.filter((m) => m !== id && !up.has(m)).length;
      if ((down + 1) * 2 >= view.members.length) return `${down + 1} of ${view.members.length} members of view ${view.viewId} would be down`;
    }
    for (const shard of view.layout.shards) {
      if (!shard.members.includes(id)) continue;
      const holders = shard.members.filter((m) => {
        if (m === id || !up.has(m)) return false;
        if (shard.deliveryMode === 'raw') return true;
        const s = c.status(m);
        if (options.stableHolders && s?.wedged) return false;
        return !!s && s.mode === 'active' && s.shards.some((sh) => sh.shardId === shard.shardId && sh.stateReady);
      });
      if (holders.length === 0) return `last running${options.stableHolders ? ', unwedged' : ''} holder of shard ${shard.shardId}`;
    }
    return null;
  }

  /**
   * Why `id`'s disk may not be wiped now (null: it may): as whyNotRemove (so the others are a majority of
   * the view: a restart never needs the wiped node), and the group must be stable: a view installed, no
   * restart under way, no member wedged (a restart may plan from a view change that moved a shard onto the
   * wiped node alone) and, for each of its shards, another running member that holds the state. So a
   * wiped node is never the only holder of a state.
   */
  private whyNotWipe(id: NodeId): string | null {
    const c = this.cluster;
    const restarting = c.upIds().filter((m) => c.status(m)?.mode === 'restarting');
    if (restarting.length > 0) return `a restart is under way (n${restarting.join(', n')} restarting)`;
    const view = c.currentView();
    const wedged = view?.members.filter((m) => c.status(m)?.wedged) ?? [];
    if (wedged.length > 0) return `a view change is under way (n${wedged.join(', n')} wedged)`;
    return this.whyNotRemove(id, { needView: true, stableHolders: true });
  }

  private appSend(): void {
    const c = this.cluster;
    const up = c.upIds().filter((id) => !c.node(id).leaving && !c.isPaused(id));
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
