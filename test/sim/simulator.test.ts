// The simulator itself: one seed replays exactly, scenarios are well formed, and a replica that does
// nothing is reported (the liveness checker is wired in).

import test from 'ava';
import fc from 'fast-check';
import { Prng } from '../../node-agent/src/core/prng.ts';
import { FaultRunner, longestUnavailability, runSeed, runSeedDetailed } from './simulator.ts';
import {
  adequate,
  DEAF_TICKS_MAX,
  generatePolicy,
  generateScenario,
  GROUP_FAILURE_GAP,
  LATE_TICKS_MAX,
  LINK_FAULT_TICKS_MAX,
  MAX_MAJORITY_FAILURES,
  MAX_TOTAL_FAILURES,
  MAX_WIPES,
  PAUSE_TICKS_MAX,
} from './scenario.ts';
import type { FaultEvent, Scenario } from './scenario.ts';
import type { ReplicaLike } from './node.ts';
import { Cluster } from './cluster.ts';
import { singleShardPolicy } from './scripted.ts';
import { emptyHistory } from './history.ts';
import { checkAll } from './checkers.ts';
import type { GroupPolicy, NodeId } from '../../node-agent/src/core/types.ts';

test('a seed replays exactly: same trace, same result', (t) => {
  for (const seed of [11, 12]) {
    const a: string[] = [];
    const b: string[] = [];
    const ra = runSeed(seed, { traceTo: (l) => a.push(l), ticks: 400 });
    const rb = runSeed(seed, { traceTo: (l) => b.push(l), ticks: 400 });
    t.deepEqual(a, b);
    t.deepEqual(ra, rb);
    t.true(a.length > 20);
  }
});

test('tracing does not change the run', (t) => {
  const quiet = runSeed(13, { ticks: 400 });
  const traced = runSeed(13, { ticks: 400, traceTo: () => {} });
  t.deepEqual(quiet, traced);
});

test('scenarios are well formed: 3..7 founders, an adequate policy of 1..3 subgroups, faults inside the fault phase and their bounds', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 32 - 1 }), (seed) => {
      const s = generateScenario(seed);
      if (s.founders.length < 3 || s.founders.length > 7) return false;
      if (s.policy.subgroups.length < 1 || s.policy.subgroups.length > 3) return false;
      if (!adequate(s.policy, s.founders)) return false;
      for (const sg of s.policy.subgroups) {
        if (sg.shards < 1 || sg.shards > 2 || sg.minNodesPerShard > sg.maxNodesPerShard || sg.maxNodesPerShard > 4) return false;
        if (sg.deliveryMode === 'raw' && sg.persistent) return false;
      }
      for (const e of s.events) {
        const end = e.at + ('lasts' in e ? e.lasts : 'downFor' in e ? e.downFor : 0);
        if (e.at < 0 || end > s.faultTicks) return false;
        if ((e.kind === 'oneWay' || e.kind === 'pairCut' || e.kind === 'partition') && (e.lasts < 1 || e.lasts > LINK_FAULT_TICKS_MAX)) return false;
        if (e.kind === 'deaf' && e.lasts > DEAF_TICKS_MAX) return false;
        if (e.kind === 'pause' && e.lasts > PAUSE_TICKS_MAX) return false;
        if (e.kind === 'lateCrash' && (e.lateTicks < 1 || e.lateTicks > LATE_TICKS_MAX)) return false;
      }
      const count = (kind: string): number => s.events.filter((e) => e.kind === kind).length;
      const wipes = count('wipe') + s.events.filter((e) => e.kind === 'totalFailure' && e.wipeOne).length;
      if (count('totalFailure') > MAX_TOTAL_FAILURES || count('majorityFailure') > MAX_MAJORITY_FAILURES || wipes > MAX_WIPES) return false;
      // Group failures leave room for the restart in between.
      const group = s.events.filter((e) => e.kind === 'totalFailure' || e.kind === 'majorityFailure').map((e) => e.at);
      return group.every((at, i) => i === 0 || at - group[i - 1]! >= GROUP_FAILURE_GAP);
    }),
    { numRuns: 300 },
  );
  t.pass();
});

test('generated policies mix the three kinds of subgroup', (t) => {
  const kinds = new Set<string>();
  for (let seed = 0; seed < 50; seed++) {
    for (const sg of generatePolicy(new Prng(seed), [1, 2, 3, 4, 5]).subgroups) kinds.add(sg.deliveryMode === 'raw' ? 'raw' : sg.persistent ? 'persistent' : 'volatile');
  }
  t.deepEqual([...kinds].sort(), ['persistent', 'raw', 'volatile']);
});

test('a replica that never does anything is reported by the liveness checker', (t) => {
  const inert: ReplicaLike = {
    step() {},
    tick() {},
    send: () => ({ ok: false, reason: 'inactive' }),
    leave() {},
    transferWanted: () => false,
    stateTransferred() {},
    hasReady: () => false,
    ready: () => {
      throw new Error('no Ready');
    },
    advance() {},
    status: () => ({ nodeId: 0, mode: 'joining', viewId: -1, members: [], leader: null, wedged: false, waiting: { kind: 'joining', message: 'inert' }, shards: [] }),
    assertInvariants() {},
  };
  const r = runSeed(5, { ticks: 100, livenessTicks: 50, createReplica: () => inert });
  t.true(r.violations.length > 0);
  t.true(r.violations.every((v) => v.startsWith('liveness:')), r.violations.join('\n'));
  t.regex(r.violations.join('\n'), /is still joining at the end \(waiting, joining: inert\)/);
});

test('the new faults are scheduled often: each kind in many seeds, several group failures in some', (t) => {
  const seedsWith = new Map<string, number>();
  let severalTotal = 0;
  for (let seed = 1; seed <= 200; seed++) {
    const s = generateScenario(seed);
    for (const kind of new Set(s.events.map((e) => e.kind))) seedsWith.set(kind, (seedsWith.get(kind) ?? 0) + 1);
    if (s.events.filter((e) => e.kind === 'totalFailure').length >= 2) severalTotal++;
  }
  for (const kind of ['lateCrash', 'wipe', 'majorityFailure', 'oneWay', 'pairCut', 'deaf', 'pause', 'totalFailure']) {
    t.true((seedsWith.get(kind) ?? 0) >= 60, `${kind} in ${seedsWith.get(kind) ?? 0} of 200 seeds`);
  }
  t.true(severalTotal >= 20, `${severalTotal} seeds with several total failures`);
});

/**
 * A cluster, started and settled, with a fault runner; set `scenario.events` to the faults it should fire
 * (the scenario's other fields come from seed 1).
 */
function withRunner(policy: GroupPolicy, founders: number, seed = 1): { cluster: Cluster; runner: FaultRunner; scenario: Scenario; lines: string[] } {
  const ids = Array.from({ length: founders }, (_, i) => i + 1);
  const lines: string[] = [];
  const cluster = new Cluster({ seed, policy, founders: ids, network: { maxDelayTicks: 2, longDelayChance: 0 }, trace: (l) => lines.push(l), traceWaiting: false });
  const scenario: Scenario = { ...generateScenario(1), founders: ids, policy, events: [], sendChance: 0, maxNodes: founders };
  const runner = new FaultRunner(cluster, scenario, new Prng(seed));
  cluster.start();
  for (let i = 0; i < 200 && !cluster.settledness().settled; i++) cluster.tick();
  if (!cluster.settledness().settled) throw new Error(`no settled group: ${cluster.settledness().reason}`);
  return { cluster, runner, scenario, lines };
}

function runUntil(c: Cluster, runner: FaultRunner, tick: number): void {
  while (c.now < tick && !c.halted) {
    runner.beforeTick(c.now + 1);
    c.tick();
  }
}

test('a wipe never hits the only holder of a shard, and only one disk is wiped per seed', (t) => {
  // One persistent shard of a single member: wiping it would lose the shard, the others hold nothing.
  const policy: GroupPolicy = { subgroups: [{ name: 'log', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 1, deliveryMode: 'ordered', persistent: true }] };
  const wiped = new Set<NodeId>();
  for (let seed = 1; seed <= 12; seed++) {
    const { cluster, runner, scenario, lines } = withRunner(policy, 3, seed);
    const at = cluster.now + 1;
    const events: FaultEvent[] = [{ at, kind: 'wipe', downFor: 50 }, { at: at + 100, kind: 'wipe', downFor: 50 }];
    scenario.events = events;
    const holder = cluster.currentView()!.layout.shards[0]!.members[0]!;
    runUntil(cluster, runner, at + 150);
    t.is(cluster.stats.wipes, 1, `seed ${seed}: one wipe, the second is skipped`);
    t.is(runner.skipped, 1);
    const victim = Number(/n(\d+) +DISK WIPED/.exec(lines.join('\n'))![1]);
    t.not(victim, holder, `seed ${seed}: the only holder n${holder} keeps its disk`);
    t.truthy(cluster.node(holder).disk.savedState(), 'the holder still has its saved state');
    wiped.add(victim);
  }
  t.true(wiped.size >= 2, 'different victims over the seeds');
});

test('a total failure may wipe one disk, never the only holder\'s, and only once per seed', (t) => {
  const policy: GroupPolicy = { subgroups: [{ name: 'log', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 1, deliveryMode: 'ordered', persistent: true }] };
  for (let seed = 1; seed <= 8; seed++) {
    const { cluster, runner, scenario, lines } = withRunner(policy, 3, seed);
    const holder = cluster.currentView()!.layout.shards[0]!.members[0]!;
    const at = cluster.now + 1;
    scenario.events = [{ at, kind: 'totalFailure', staggerMax: 5, wipeOne: true }];
    runUntil(cluster, runner, at);
    t.is(cluster.stats.totalFailures, 1);
    t.is(cluster.stats.wipes, 1, `seed ${seed}`);
    const victim = Number(/n(\d+) +DISK WIPED/.exec(lines.join('\n'))![1]);
    t.not(victim, holder);
    t.is(cluster.node(victim).disk.savedState(), null);
    t.truthy(cluster.node(holder).disk.savedState());
    // A second one wipes nothing: one wipe per seed.
    runUntil(cluster, runner, at + 300);
    scenario.events.push({ at: cluster.now + 1, kind: 'totalFailure', staggerMax: 5, wipeOne: true });
    runUntil(cluster, runner, cluster.now + 1);
    t.is(cluster.stats.wipes, 1);
  }
});

test('no disk is wiped while a restart is under way, even with a view installed by the running minority', (t) => {
  const { cluster, runner, scenario, lines } = withRunner(singleShardPolicy('persistent'), 5);
  const at = cluster.now + 1;
  scenario.events = [
    { at, kind: 'majorityFailure', staggerMax: 1 },
    { at: at + 2, kind: 'wipe', downFor: 50 },
  ];
  // Just before the wipe is tried: the crashed majority is back, restarting, and the minority still runs
  // its view. (It exits a tick or two later: the members that came back as new processes leave its view
  // without a majority, so the view can never change.)
  runUntil(cluster, runner, at + 1);
  t.truthy(cluster.currentView(), 'the minority still has its view');
  t.true(cluster.upIds().some((id) => cluster.status(id)?.mode === 'restarting'));
  runUntil(cluster, runner, at + 2);
  t.is(cluster.stats.wipes, 0);
  t.regex(lines.join('\n'), /wipe skipped \(.*a restart is under way/);
});

test('fsync policy os: in about one seed of four; a machine crash loses the unsynced log tail, a process crash nothing, and the run checks clean', (t) => {
  const os = Array.from({ length: 400 }, (_, i) => generateScenario(i + 1).storage).filter((x) => x === 'os').length;
  t.true(os >= 70 && os <= 130, `${os} of 400 seeds run with fsync policy os`);
  t.is(generateScenario(7, { storage: 'os' }).storage, 'os');
  for (const storage of ['os', 'fsync'] as const) {
    for (const machine of [true, false]) {
      const what = `${storage}, ${machine ? 'machine' : 'process'} crash`;
      const cluster = new Cluster({ seed: 3, policy: singleShardPolicy('persistent'), founders: [1, 2, 3], storage, network: { maxDelayTicks: 2, longDelayChance: 0 }, traceWaiting: false });
      cluster.start();
      for (let i = 0; i < 100 && !cluster.settledness().settled; i++) cluster.tick(); // the founders confirm view 0
      for (let i = 0; i < 20; i++) {
        t.true(cluster.send(1 + (i % 3), 0, `w${i}`).ok, what);
        cluster.run(2);
      }
      cluster.run(30);
      const before = cluster.node(2).disk.log(0).length;
      t.true(before >= 20, `${what}: ${before} records before`);
      cluster.crash(2, 5, 'crash', { machine });
      const after = cluster.node(2).disk.log(0).length;
      if (storage === 'os' && machine) t.true(after < before, `${what}: ${after} of ${before} records left`);
      else t.is(after, before, what);
      t.true(cluster.quiesce(2000).settled, `${what}: ${cluster.settledness().reason}`);
      t.deepEqual(checkAll(cluster.finish(), { liveness: true }), [], what);
      t.is(cluster.node(2).disk.log(0).length, cluster.node(1).disk.log(0).length, `${what}: n2 caught up`);
    }
  }
});

test('a wiped node comes back with nothing saved and joins as a new node', (t) => {
  const { cluster } = withRunner(singleShardPolicy('persistent'), 3);
  t.truthy(cluster.node(2).disk.savedState());
  t.throws(() => cluster.wipeDisk(2), { message: /running/ });
  cluster.crash(2, 5, 'crash', { wipeDisk: true });
  t.is(cluster.node(2).disk.savedState(), null);
  t.is(cluster.stats.wipes, 1);
  cluster.run(6);
  t.true(cluster.node(2).up);
  t.is(cluster.status(2)?.mode, 'joining');
});

test('a majority failure crashes a majority of the view at once, leaves the rest running and restarts them within the stagger', (t) => {
  for (const founders of [3, 4, 5]) {
    const { cluster, runner, scenario } = withRunner(singleShardPolicy('persistent'), founders);
    const at = cluster.now + 1;
    scenario.events = [{ at, kind: 'majorityFailure', staggerMax: 30 }];
    runUntil(cluster, runner, at);
    const down = cluster.knownIds().filter((id) => !cluster.node(id).up);
    t.is(down.length, Math.floor(founders / 2) + 1, `${founders} founders`);
    t.true(cluster.upIds().length >= 1);
    t.is(cluster.stats.majorityFailures, 1);
    for (const id of down) {
      const r = cluster.restartTime(id)!;
      t.true(r > at && r <= at + 30, `n${id} restarts at ${r}`);
    }
  }
});

test('a majority failure is skipped when no member would keep running', (t) => {
  const { cluster, runner, scenario } = withRunner(singleShardPolicy('persistent'), 2);
  const at = cluster.now + 1;
  scenario.events = [{ at, kind: 'majorityFailure', staggerMax: 30 }];
  runUntil(cluster, runner, at);
  t.is(cluster.upIds().length, 2);
  t.is(runner.skipped, 1);
});

test('crashes may hit a restart under way (no running node has a view), not the running group beyond a minority', (t) => {
  const { cluster, runner, scenario, lines } = withRunner(singleShardPolicy('persistent'), 5);
  const at = cluster.now + 1;
  scenario.events = [
    { at, kind: 'totalFailure', staggerMax: 3, wipeOne: false },
    { at: at + 5, kind: 'crash', downFor: 40 },
    { at: at + 6, kind: 'crash', downFor: 40 },
  ];
  runUntil(cluster, runner, at + 6);
  t.is(cluster.currentView(), null, 'still restarting');
  t.is(cluster.stats.crashes, 5 + 2, lines.filter((l) => l.includes('skipped')).join('\n'));
  // A running group: a crash that would take down a majority is refused.
  const g = withRunner(singleShardPolicy('persistent'), 3);
  const at2 = g.cluster.now + 1;
  g.scenario.events = [
    { at: at2, kind: 'crash', downFor: 100 },
    { at: at2 + 1, kind: 'crash', downFor: 100 },
  ];
  runUntil(g.cluster, g.runner, at2 + 1);
  t.is(g.cluster.stats.crashes, 1);
  t.is(g.runner.skipped, 1);
});

test('a paused node neither ticks nor receives, sends nothing from its application, and resumes on time', (t) => {
  const { cluster, runner, scenario } = withRunner(singleShardPolicy('persistent'), 3);
  const at = cluster.now + 1;
  scenario.events = [{ at, kind: 'pause', lasts: 40 }, { at: at + 1, kind: 'pause', lasts: 40 }];
  runUntil(cluster, runner, at + 1);
  const [paused] = cluster.pausedIds();
  t.truthy(paused);
  t.is(runner.skipped, 1, 'one pause at a time');
  const before = JSON.stringify(cluster.status(paused!));
  t.deepEqual(cluster.send(paused!, 0, 'x'), { ok: false, reason: 'inactive' });
  runUntil(cluster, runner, at + 39);
  t.is(JSON.stringify(cluster.status(paused!)), before, 'its state is frozen');
  const waiting = cluster.knownIds().filter((id) => id !== paused).reduce((n, id) => n + cluster.network.queued(id, paused!).length, 0);
  t.true(waiting > 0, 'messages to it wait on their links');
  runUntil(cluster, runner, at + 40);
  t.false(cluster.isPaused(paused!));
  t.is(cluster.knownIds().filter((id) => id !== paused).reduce((n, id) => n + cluster.network.queued(id, paused!).length, 0), 0, 'what waited was handed to it');
});

test('link faults and deaf nodes are undone after their time; the quiet phase ends whatever is left', (t) => {
  const { cluster, runner, scenario } = withRunner(singleShardPolicy('persistent'), 4);
  const at = cluster.now + 1;
  scenario.events = [
    { at, kind: 'oneWay', lasts: 20 },
    { at, kind: 'pairCut', lasts: 500 },
    { at, kind: 'oneWay', lasts: 20 },
    { at, kind: 'deaf', lasts: 30 },
    { at, kind: 'deaf', lasts: 30 },
    { at, kind: 'pause', lasts: 1000 },
  ];
  runUntil(cluster, runner, at);
  t.is(cluster.network.cutLinkList().length, 3, 'one one-way and one pair; the third is skipped');
  t.is(runner.skipped, 2, 'the third link fault and the second deaf node');
  t.is(cluster.stats.deafNodes, 1);
  runUntil(cluster, runner, at + 30);
  t.is(cluster.network.cutLinkList().length, 2, 'the one-way cut is restored');
  t.false(cluster.knownIds().some((id) => cluster.network.isDeaf(id)), 'the deaf node hears again');
  cluster.healAll();
  t.is(cluster.network.cutLinkList().length, 0);
  t.deepEqual(cluster.pausedIds(), []);
});

test('unavailability: the longest stretch with ordered sends attempted and no ordered delivery anywhere', (t) => {
  const policy: GroupPolicy = {
    subgroups: [
      { name: 'log', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true },
      { name: 'feed', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'raw', persistent: false },
    ],
  };
  const h = emptyHistory(policy);
  const send = (tick: number, shardId: number, ok: boolean | 'notMember' | 'wedged'): void => {
    h.sends.push({ tick, node: 1, incarnation: 1, shardId, payload: `p${tick}`, result: ok === true ? { ok: true } : { ok: false, reason: ok === false ? 'inactive' : ok } });
  };
  const deliver = (tick: number, shardId: number): void => {
    h.deliveries.push({ tick, node: 1, incarnation: 1, viewId: 0, shardId, version: { viewId: 0, seq: tick }, sender: 1, payload: `p${tick}`, mode: shardId === 0 ? 'ordered' : 'raw' });
  };
  t.deepEqual(longestUnavailability(h, 1000), { ticks: 0, from: null }, 'no sends: never unavailable');
  send(10, 0, true);
  deliver(14, 0);
  send(100, 0, 'wedged');
  send(120, 1, true);
  deliver(150, 1); // raw: does not count
  send(160, 0, 'notMember'); // the caller's mistake: not an attempt
  deliver(300, 0);
  send(900, 0, true);
  t.deepEqual(longestUnavailability(h, 1000), { ticks: 200, from: 100 });
  t.deepEqual(longestUnavailability(h, 1200), { ticks: 300, from: 900 }, 'a stretch still open ends with the fault phase');
});

test('a run reports its unavailability and the new faults in its stats', (t) => {
  const r = runSeedDetailed(3);
  t.true(r.stats.longestUnavailable > 0);
  t.is(r.stats.longestUnavailable, longestUnavailability(r.history, r.scenario.faultTicks).ticks);
  const newFaults = r.stats.lateCrashes + r.stats.oneWayCuts + r.stats.pairCuts + r.stats.deafNodes + r.stats.pauses + r.stats.majorityFailures + r.stats.wipes;
  t.true(newFaults > 0);
  const without = runSeed(3, { without: ['deaf', 'pause', 'lateCrash', 'oneWay', 'pairCut', 'majorityFailure', 'wipe'] });
  t.is(without.stats.deafNodes + without.stats.pauses + without.stats.lateCrashes + without.stats.oneWayCuts + without.stats.pairCuts + without.stats.majorityFailures + without.stats.wipes, 0);
});
