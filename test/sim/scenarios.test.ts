// Scenario tests: one precise situation each, on the real Replica, through the simulator's machinery
// (ScriptedSim). Every test ends with the global checkers.

import test from 'ava';
import type { ExecutionContext } from 'ava';
import { DEFAULT_TIMING } from '../../node-agent/src/core/types.ts';
import type { GroupPolicy, NodeId } from '../../node-agent/src/core/types.ts';
import { ScriptedSim, singleShardPolicy } from './scripted.ts';

/** Sends `count` messages from each of `senders` in `shardId`, prefix-numbered. Returns the payloads accepted. */
function sendMany(sim: ScriptedSim, senders: NodeId[], shardId: number, count: number, prefix: string): string[] {
  const sent: string[] = [];
  for (let i = 0; i < count; i++) {
    for (const n of senders) {
      const p = `${prefix}-n${n}-${i}`;
      if (sim.send(n, shardId, p).ok) sent.push(p);
    }
  }
  return sent;
}

function allApplied(sim: ScriptedSim, nodes: NodeId[], shardId: number, payloads: string[]): boolean {
  return nodes.every((n) => payloads.every((p) => sim.applied(n, shardId, p)));
}

/** Quiet phase, then every checker including liveness. */
function finish(t: ExecutionContext, sim: ScriptedSim): void {
  const q = sim.quiesce(1500);
  t.true(q.settled, `the group settles after the faults (${sim.unsettledReason()})`);
  t.deepEqual(sim.check({ liveness: true }), []);
}

const twoShards: GroupPolicy = {
  subgroups: [{ name: 'kv', shards: 2, minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true }],
};

test('a member crash installs a new view without it', (t) => {
  const sim = new ScriptedSim({ founders: 4, policy: singleShardPolicy('persistent') });
  t.true(sim.settle(100));
  const before = sendMany(sim, [1, 2, 3, 4], 0, 5, 'before');
  t.true(sim.runUntil(() => allApplied(sim, [1, 2, 3, 4], 0, before), 200));
  sim.crash(4);
  t.true(sim.runUntil(() => [1, 2, 3].every((n) => sim.status(n)?.viewId === 1 && !sim.status(n)?.wedged), 300));
  t.deepEqual(sim.view()!.members, [1, 2, 3]);
  const after = sendMany(sim, [1, 2, 3], 0, 5, 'after');
  t.true(sim.runUntil(() => allApplied(sim, [1, 2, 3], 0, after), 200));
  t.deepEqual(sim.check(), []);
  finish(t, sim);
});

test('the shard leader crashes during ragged-edge cleanup', (t) => {
  // Two shards of three. Traffic in flight in shard 1, then one of its members crashes; once the
  // survivors wedge (the ragged trim is being decided), shard 1's leader (its lowest-ranked member,
  // not the group leader) crashes too.
  const sim = new ScriptedSim({ founders: 6, policy: twoShards, seed: 3 });
  t.true(sim.settle(100));
  const shard1 = sim.view()!.layout.shards[1]!.members;
  t.is(shard1.length, 3);
  const [shardLeader, middle, last] = shard1 as [NodeId, NodeId, NodeId];
  t.not(shardLeader, sim.view()!.members[0], 'the shard leader is not the group leader');
  sendMany(sim, shard1, 1, 10, 'burst');
  sim.tick(2);
  sim.crash(last);
  t.true(sim.runUntil(() => sim.status(middle)?.wedged === true, 100), 'the survivors wedge');
  sim.crash(shardLeader);
  const survivors = [1, 2, 3, 4, 5, 6].filter((n) => n !== last && n !== shardLeader);
  t.true(sim.runUntil(() => survivors.every((n) => (sim.status(n)?.viewId ?? 0) >= 1 && !sim.status(n)?.wedged), 400), sim.unsettledReason());
  t.deepEqual([...sim.view()!.members].sort(), survivors);
  t.deepEqual(sim.check(), []);
  finish(t, sim);
});

test('the group leader crashes in the middle of a view change', (t) => {
  const sim = new ScriptedSim({ founders: 5, policy: singleShardPolicy('persistent'), seed: 4 });
  t.true(sim.settle(100));
  sendMany(sim, [1, 2, 3, 4, 5], 0, 4, 'load');
  sim.crash(5);
  // Wait until the view change is under way (every survivor wedged), then crash its leader.
  t.true(sim.runUntil(() => [1, 2, 3, 4].every((n) => sim.status(n)?.wedged), 100));
  t.is(sim.status(2)?.leader, 1);
  sim.crash(1);
  t.true(sim.runUntil(() => [2, 3, 4].every((n) => (sim.status(n)?.viewId ?? 0) >= 1 && !sim.status(n)?.wedged), 400), sim.unsettledReason());
  t.deepEqual([...sim.view()!.members].sort(), [2, 3, 4]);
  t.deepEqual(sim.check(), []);
  finish(t, sim);
});

test('a minority partition wedges and says so, then rejoins after healing', (t) => {
  const sim = new ScriptedSim({ founders: 5, policy: singleShardPolicy('persistent'), seed: 5, timing: { wedgedExitTicks: 150 } });
  t.true(sim.settle(100));
  sim.partition([[1, 2, 3], [4, 5]]);
  t.true(sim.runUntil(() => sim.status(4)?.waiting.kind === 'minority', 100), 'the minority says why it waits');
  t.regex(sim.status(4)!.waiting.message, /majority/);
  t.true(sim.status(4)!.wedged);
  t.true(sim.runUntil(() => [1, 2, 3].every((n) => sim.status(n)?.viewId === 1 && !sim.status(n)?.wedged), 300));
  t.deepEqual(sim.view()!.members, [1, 2, 3]);
  const during = sendMany(sim, [1, 2, 3], 0, 3, 'majority');
  t.true(sim.runUntil(() => allApplied(sim, [1, 2, 3], 0, during), 200), 'the majority keeps going');
  t.is(sim.status(4)?.viewId, 0, 'the minority installs nothing');
  sim.heal();
  t.true(sim.settle(1500), sim.unsettledReason());
  t.deepEqual([...sim.view()!.members].sort(), [1, 2, 3, 4, 5]);
  t.true(allApplied(sim, [4, 5], 0, during), 'the rejoined nodes hold what the majority did meanwhile');
  finish(t, sim);
});

test('a joiner receives the shard state before it delivers', (t) => {
  const sim = new ScriptedSim({ founders: 3, policy: singleShardPolicy('persistent'), seed: 6 });
  t.true(sim.settle(100));
  const early = sendMany(sim, [1, 2, 3], 0, 6, 'early');
  t.true(sim.runUntil(() => allApplied(sim, [1, 2, 3], 0, early), 200));
  const joiner = sim.join();
  t.true(sim.settle(500), sim.unsettledReason());
  const late = sendMany(sim, [1, joiner], 0, 4, 'late');
  t.true(sim.runUntil(() => allApplied(sim, [1, 2, 3, joiner], 0, late), 300));
  const installed = sim.history.transfers.filter((x) => x.what === 'installed' && x.node === joiner && x.shardId === 0);
  t.true(installed.length >= 1, 'the joiner installed a state transfer');
  const firstTransfer = sim.history.transfers.indexOf(installed[0]!);
  const firstDelivery = sim.deliveries({ node: joiner, shardId: 0 })[0]!;
  t.true(firstDelivery.tick >= sim.history.transfers[firstTransfer]!.tick, 'no delivery before the state arrived');
  t.true(early.every((p) => sim.applied(joiner, 0, p)), 'the early messages came with the state');
  t.false(sim.deliveries({ node: joiner }).some((d) => early.includes(d.payload)), 'and were not delivered again');
  t.deepEqual(sim.state(joiner, 0), sim.state(1, 0), 'the joiner holds the same state as an old member');
  finish(t, sim);
});

test('total failure and restart keeps every persisted write', (t) => {
  const sim = new ScriptedSim({ founders: 3, policy: singleShardPolicy('persistent'), seed: 7 });
  t.true(sim.settle(100));
  const writes = sendMany(sim, [1, 2, 3], 0, 8, 'w');
  t.true(sim.runUntil(() => allApplied(sim, [1, 2, 3], 0, writes), 300));
  // Wait until every write is acknowledged as persisted on every member.
  const lastSeq = Math.max(...sim.deliveries({ node: 1, shardId: 0 }).map((d) => d.version.seq));
  t.true(sim.runUntil(() => sim.history.acks.some((a) => a.shardId === 0 && a.version.viewId === 0 && a.version.seq >= lastSeq), 100));
  sim.crashAll();
  sim.tick(5);
  sim.restart(2);
  sim.tick(7);
  sim.restart(3);
  sim.tick(11);
  sim.restart(1);
  t.true(sim.settle(800), sim.unsettledReason());
  t.true(sim.view()!.viewId > 0);
  for (const n of [1, 2, 3]) {
    const log = sim.cluster.node(n).disk.log(0).map((r) => new TextDecoder().decode(r.payload));
    t.true(writes.every((w) => log.includes(w)), `n${n}'s log holds every acknowledged write`);
    t.true(writes.every((w) => sim.applied(n, 0, w)), `n${n}'s state holds every acknowledged write`);
  }
  const more = sendMany(sim, [1, 2, 3], 0, 2, 'after');
  t.true(sim.runUntil(() => allApplied(sim, [1, 2, 3], 0, more), 300), 'the restarted group takes new writes');
  finish(t, sim);
});

test('restart waits while too few members are back', (t) => {
  const sim = new ScriptedSim({ founders: 5, policy: singleShardPolicy('persistent'), seed: 8 });
  t.true(sim.settle(100));
  const writes = sendMany(sim, [1, 2, 3, 4, 5], 0, 2, 'w');
  t.true(sim.runUntil(() => allApplied(sim, [1, 2, 3, 4, 5], 0, writes), 300));
  sim.crashAll();
  sim.tick(3);
  sim.restart(1);
  sim.restart(2);
  sim.tick(200);
  for (const n of [1, 2]) {
    const s = sim.status(n)!;
    t.is(s.mode, 'restarting', `n${n} waits`);
    t.is(s.waiting.kind, 'restartQuorum');
    t.regex(s.waiting.message, /2 of 5 members returned/);
  }
  t.false(sim.history.installs.some((i) => i.tick > 3), 'no view is installed without a restart quorum');
  sim.restart(3);
  t.true(sim.runUntil(() => [1, 2, 3].every((n) => sim.status(n)?.mode === 'active'), 300), 'a majority is back: the group restarts');
  t.deepEqual([...sim.view()!.members].sort(), [1, 2, 3]);
  t.true(writes.every((w) => [1, 2, 3].every((n) => sim.applied(n, 0, w))));
  finish(t, sim);
});

// The fault primitives of the grown fault model, one precise situation each.

test('a paused member past the suspicion timeout is removed, then resumes with its stale state and comes back', (t) => {
  const sim = new ScriptedSim({ founders: 3, policy: singleShardPolicy('persistent'), seed: 21 });
  t.true(sim.settle(100));
  const frozen = sim.status(3);
  sim.pause(3, 80);
  t.true(sim.runUntil(() => [1, 2].every((n) => sim.status(n)?.viewId === 1 && !sim.status(n)?.wedged), 79), 'the others remove it');
  t.deepEqual(sim.status(3), frozen, 'the paused process has not moved');
  t.true(sim.cluster.isPaused(3));
  const during = sendMany(sim, [1, 2], 0, 3, 'during');
  t.true(sim.runUntil(() => !sim.cluster.isPaused(3), 100), 'it resumes on its own');
  t.true(sim.settle(1500), sim.unsettledReason());
  t.true(allApplied(sim, [1, 2, 3], 0, during), 'it holds what happened while it was stopped');
  finish(t, sim);
});

test('a short pause is not noticed: the member stays in the view', (t) => {
  const sim = new ScriptedSim({ founders: 3, policy: singleShardPolicy('persistent'), seed: 22 });
  t.true(sim.settle(100));
  sim.pause(2, 5);
  sim.tick(60);
  t.false(sim.cluster.isPaused(2));
  t.is(sim.view()!.viewId, 0);
  t.true(sim.isSettled());
  finish(t, sim);
});

test('a crashed member with a wiped disk comes back as a new node and gets the state from the others', (t) => {
  const sim = new ScriptedSim({ founders: 3, policy: singleShardPolicy('persistent'), seed: 23 });
  t.true(sim.settle(100));
  const writes = sendMany(sim, [1, 2, 3], 0, 4, 'w');
  t.true(sim.runUntil(() => allApplied(sim, [1, 2, 3], 0, writes), 300));
  sim.crash(3, null, { wipeDisk: true });
  t.is(sim.cluster.node(3).disk.savedState(), null);
  t.deepEqual(sim.cluster.node(3).disk.log(0), []);
  t.true(sim.runUntil(() => [1, 2].every((n) => sim.status(n)?.viewId === 1 && !sim.status(n)?.wedged), 300));
  sim.restart(3);
  t.is(sim.status(3)?.mode, 'joining', 'nothing saved: it joins');
  t.true(sim.settle(800), sim.unsettledReason());
  t.true(writes.every((w) => sim.applied(3, 0, w)), 'the wiped node holds every write again');
  finish(t, sim);
});

test('a majority of the view crashes at once: the minority keeps running, wedged, and the group comes back', (t) => {
  const sim = new ScriptedSim({ founders: 5, policy: singleShardPolicy('persistent'), seed: 24 });
  t.true(sim.settle(100));
  const writes = sendMany(sim, [1, 2, 3, 4, 5], 0, 2, 'w');
  t.true(sim.runUntil(() => allApplied(sim, [1, 2, 3, 4, 5], 0, writes), 300));
  sim.crashMany([1, 2, 3]);
  t.is(sim.cluster.stats.majorityFailures, 1);
  t.true(sim.runUntil(() => [4, 5].every((n) => sim.status(n)?.wedged), 100), 'the minority wedges');
  t.true(sim.isUp(4) && sim.isUp(5));
  sim.tick(20);
  sim.restart(1);
  sim.tick(7);
  sim.restart(2);
  sim.tick(13);
  sim.restart(3);
  t.true(sim.settle(1500), sim.unsettledReason());
  t.true(writes.every((w) => [1, 2, 3, 4, 5].every((n) => sim.applied(n, 0, w))));
  finish(t, sim);
});

test('a one-way link failure: the group settles without one end, and with it once restored', (t) => {
  const sim = new ScriptedSim({ founders: 4, policy: singleShardPolicy('persistent'), seed: 25 });
  t.true(sim.settle(100));
  sim.cutLink(4, 1);
  t.false(sim.cluster.network.canReach(4, 1));
  t.true(sim.cluster.network.canReach(1, 4));
  t.true(sim.runUntil(() => (sim.view()?.viewId ?? 0) >= 1, 300), 'a view change follows');
  sim.restoreLink(4, 1);
  t.true(sim.settle(1500), sim.unsettledReason());
  finish(t, sim);
});

test('a non-transitive cut between two members is resolved by a view change', (t) => {
  // Five members: even if both ends of the cut are removed, a majority remains.
  const sim = new ScriptedSim({ founders: 5, policy: singleShardPolicy('persistent'), seed: 26 });
  t.true(sim.settle(100));
  sim.cutPair(2, 3);
  t.true(sim.cluster.network.canReach(2, 1) && sim.cluster.network.canReach(3, 1));
  t.false(sim.cluster.network.canReach(2, 3) || sim.cluster.network.canReach(3, 2));
  t.true(sim.runUntil(() => (sim.view()?.viewId ?? 0) >= 1, 300), 'a view change follows');
  const more = sendMany(sim, sim.view()!.members.filter((n) => sim.status(n)?.viewId === sim.view()!.viewId), 0, 2, 'after-cut');
  sim.restorePair(2, 3);
  t.true(sim.settle(1500), sim.unsettledReason());
  t.true(sim.runUntil(() => allApplied(sim, [1, 2, 3, 4, 5], 0, more), 300));
  finish(t, sim);
});

test('a deaf member hears nothing but still sends; once it hears again the group settles', (t) => {
  const sim = new ScriptedSim({ founders: 4, policy: singleShardPolicy('persistent'), seed: 27 });
  t.true(sim.settle(100));
  sim.deafen(4);
  t.true(sim.cluster.network.canReach(4, 1));
  t.false(sim.cluster.network.canReach(1, 4));
  sim.tick(100);
  t.true(sim.runUntil(() => sim.history.installs.some((i) => i.view.viewId >= 1) || sim.cluster.stats.exits > 0, 400), 'the group reacts');
  sim.undeafen(4);
  t.true(sim.settle(1500), sim.unsettledReason());
  finish(t, sim);
});

test('late messages of a dead incarnation arrive after its crash, even after its restart, and break nothing', (t) => {
  const sim = new ScriptedSim({ founders: 3, policy: singleShardPolicy('persistent'), seed: 28, network: { maxDelayTicks: 4 } });
  t.true(sim.settle(100));
  sendMany(sim, [3], 0, 10, 'last-words');
  sim.tick(1);
  sim.crash(3, 2, { lateTicks: 20 });
  t.is(sim.cluster.stats.lateCrashes, 1);
  const late = sim.cluster.stats.lateMessages;
  t.true(late > 0, 'some of what it sent is still in flight');
  const delivered = sim.cluster.network.stats.delivered;
  sim.tick(25);
  t.true(sim.cluster.network.stats.delivered > delivered);
  t.true(sim.isUp(3), 'it restarted meanwhile');
  t.true(sim.settle(1500), sim.unsettledReason());
  finish(t, sim);
});

test('healAll ends every network fault and resumes paused processes', (t) => {
  const sim = new ScriptedSim({ founders: 4, policy: singleShardPolicy('volatile'), seed: 29 });
  t.true(sim.settle(100));
  sim.partition([[1, 2], [3, 4]]);
  sim.cutLink(1, 2);
  sim.cutPair(3, 4);
  sim.deafen(1);
  sim.pause(2);
  sim.healAll();
  const net = sim.cluster.network;
  t.false(net.isPartitioned());
  t.deepEqual(net.cutLinkList(), []);
  t.false(net.isDeaf(1));
  t.false(sim.cluster.isPaused(2));
  t.true(sim.settle(1500), sim.unsettledReason());
  finish(t, sim);
});

// The layout of examples/kv-overlap.yaml: node 3 is the only member of kv shard 1.
const exampleLayout: GroupPolicy = {
  subgroups: [
    { name: 'kv', shards: 2, minNodesPerShard: 1, maxNodesPerShard: 2, deliveryMode: 'ordered', persistent: true, reservedNodeIds: [[1, 2], [3]] },
    { name: 'events', shards: 1, minNodesPerShard: 2, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true, reservedNodeIds: [[1, 2, 3]] },
  ],
};

test('the only holder of a persistent shard crashes and restarts: it rejoins with its own log as the shard\'s source, without a total restart', (t) => {
  const sim = new ScriptedSim({ founders: 3, policy: exampleLayout, seed: 41 });
  t.true(sim.settle(200), sim.unsettledReason());
  t.deepEqual(sim.view()!.layout.shards.map((s) => s.members), [[1, 2], [3], [1, 2, 3]]);
  const before = sendMany(sim, [3], 1, 6, 'only-holder');
  const events = sendMany(sim, [1, 2, 3], 2, 2, 'ev');
  t.true(sim.runUntil(() => allApplied(sim, [3], 1, before) && allApplied(sim, [1, 2, 3], 2, events), 300));
  const lastSeq = Math.max(...sim.deliveries({ node: 3, shardId: 1 }).map((d) => d.version.seq));
  t.true(sim.runUntil(() => sim.history.acks.some((a) => a.shardId === 1 && a.version.seq >= lastSeq), 100), 'shard 1 writes acknowledged as persisted');
  const viewBefore = sim.view()!.viewId;
  const crashedAt = sim.now;
  sim.crash(3, 5);
  // Back in a view with node 3 serving shard 1 again, well before a wedged member would exit.
  t.true(sim.runUntil(() => (sim.status(3)?.mode === 'active' && sim.view()!.viewId > viewBefore && sim.view()!.members.includes(3) && sim.isSettled()), 150), sim.unsettledReason());
  t.log(`node 3 back in view ${sim.view()!.viewId} ${sim.now - crashedAt} ticks after its crash`);
  const incarnations = (n: NodeId): Set<number> => new Set(sim.history.installs.filter((i) => i.node === n).map((i) => i.incarnation));
  t.true([1, 2].every((n) => incarnations(n).size === 1), 'nodes 1 and 2 never restarted: no total restart');
  t.true([1, 2].every((n) => sim.status(n)?.mode === 'active'));
  t.deepEqual(sim.view()!.layout.shards.map((s) => s.members), [[1, 2], [3], [1, 2, 3]]);
  t.true(allApplied(sim, [3], 1, before), 'node 3\'s shard-1 state holds every write made before the crash');
  const after = sendMany(sim, [3], 1, 3, 'after');
  const eventsAfter = sendMany(sim, [1, 2, 3], 2, 1, 'ev-after');
  t.true(sim.runUntil(() => allApplied(sim, [3], 1, after) && allApplied(sim, [1, 2, 3], 2, eventsAfter), 300), 'both subgroups take writes again');
  finish(t, sim);
});

test('the only holder of a persistent shard comes back with a wiped disk: the shard waits (its state is gone), and the broken rule that takes it as the source loses acknowledged writes', (t) => {
  const run = (brokenRule?: 'returningHolderUnchecked'): { sim: ScriptedSim; before: string[]; crashedAt: number } => {
    const sim = new ScriptedSim({ founders: 3, policy: exampleLayout, seed: 42, ...(brokenRule ? { brokenRule } : {}), timing: { wedgedExitTicks: 2000 } });
    t.true(sim.settle(200), sim.unsettledReason());
    const before = sendMany(sim, [3], 1, 4, 'lost-with-the-disk');
    t.true(sim.runUntil(() => allApplied(sim, [3], 1, before), 300));
    const lastSeq = Math.max(...sim.deliveries({ node: 3, shardId: 1 }).map((d) => d.version.seq));
    t.true(sim.runUntil(() => sim.history.acks.some((a) => a.shardId === 1 && a.version.seq >= lastSeq), 100));
    const crashedAt = sim.now;
    sim.crash(3, 5, { wipeDisk: true });
    sim.tick(300);
    return { sim, before, crashedAt };
  };
  const good = run();
  t.false(good.sim.view()!.members.includes(3) && good.sim.history.installs.some((i) => i.tick > good.crashedAt), 'no view admits the wiped node as the holder');
  t.deepEqual(good.sim.check(), [], 'no safety violation while the shard waits');
  const broken = run('returningHolderUnchecked');
  t.true(broken.sim.history.installs.some((i) => i.tick > broken.crashedAt && i.view.members.includes(3)), 'the mutant admits the wiped node');
  const violations = broken.sim.check();
  t.log(violations.slice(0, 3).join('\n'));
  t.true(violations.some((v) => /persist/.test(v)), 'the persistence checker catches the lost acknowledged writes');
});

for (const fault of ['pause', 'partition'] as const) {
  test(`the only holder of a persistent shard ${fault === 'pause' ? 'paused past the suspicion timeout' : 'cut off in a minority'}: when it is back it exits at once (a majority suspects it) and rejoins as the shard's returning holder`, (t) => {
    const sim = new ScriptedSim({ founders: 3, policy: exampleLayout, seed: fault === 'pause' ? 43 : 44 });
    t.true(sim.settle(200), sim.unsettledReason());
    sim.tick(20); // rows exchanged: the leader knows node 3's disk (its row says it; the founding view does not)
    const before = sendMany(sim, [3], 1, 5, `${fault}-before`);
    t.true(sim.runUntil(() => allApplied(sim, [3], 1, before), 300));
    const viewBefore = sim.view()!.viewId;
    if (fault === 'pause') sim.pause(3, 60);
    else sim.partition([[1, 2], [3]]);
    sim.tick(60);
    t.true(sim.view()!.viewId === viewBefore, 'the others wait for shard 1\'s only holder (no view without it)');
    const backAt = sim.now;
    if (fault === 'partition') sim.heal();
    const limit = DEFAULT_TIMING.wedgedExitTicks / 4;
    t.true(sim.runUntil(() => sim.status(3)?.mode === 'active' && sim.view()!.viewId > viewBefore && sim.view()!.members.includes(3) && sim.isSettled(), limit), sim.unsettledReason());
    t.log(`node 3 back in view ${sim.view()!.viewId} ${sim.now - backAt} ticks after the ${fault} ended (a wedged member exits after ${DEFAULT_TIMING.wedgedExitTicks})`);
    const incarnations = (n: NodeId): Set<number> => new Set(sim.history.installs.filter((i) => i.node === n).map((i) => i.incarnation));
    t.true([1, 2].every((n) => incarnations(n).size === 1), 'nodes 1 and 2 never restarted');
    t.true(allApplied(sim, [3], 1, before));
    const after = sendMany(sim, [3], 1, 2, `${fault}-after`);
    t.true(sim.runUntil(() => allApplied(sim, [3], 1, after), 300));
    finish(t, sim);
  });
}

test('a second member crashes before the first is back, leaving the survivor without a majority: it exits as soon as a crashed member returns as a new process, and the group restarts from its logs without waiting for the wedged exit', (t) => {
  const lines: string[] = [];
  const sim = new ScriptedSim({ founders: 3, policy: singleShardPolicy('persistent'), seed: 61, trace: (line) => lines.push(line) });
  t.true(sim.settle(200), sim.unsettledReason());
  const before = sendMany(sim, [1, 2, 3], 0, 3, 'before');
  t.true(sim.runUntil(() => allApplied(sim, [1, 2, 3], 0, before), 300));
  sim.crash(3);
  t.true(sim.runUntil(() => sim.view()!.members.length === 2 && [1, 2].every((n) => sim.status(n)?.mode === 'active' && !sim.status(n)!.wedged), 200), 'view {1, 2} without node 3');
  const middle = sendMany(sim, [1, 2], 0, 2, 'middle');
  t.true(sim.runUntil(() => allApplied(sim, [1, 2], 0, middle), 300));
  sim.crash(2);
  t.true(sim.runUntil(() => sim.status(1)?.wedged === true, 100), 'node 1 wedges: 1 of 2 is no majority');
  sim.tick(10);
  const backAt = sim.now;
  sim.restart(2);
  sim.restart(3);
  const limit = DEFAULT_TIMING.wedgedExitTicks / 2;
  t.true(sim.runUntil(() => sim.isSettled() && sim.view()!.members.length === 3 && [1, 2, 3].every((n) => sim.status(n)?.mode === 'active'), limit), sim.unsettledReason());
  t.log(`the group of 3 is back ${sim.now - backAt} ticks after the crashed members restarted (a wedged member exits after ${DEFAULT_TIMING.wedgedExitTicks})`);
  t.true(lines.some((l) => l.includes('EXIT') && l.includes('can never change')), 'node 1 exited because view {1, 2} can never change');
  t.true([...before, ...middle].every((w) => [1, 2, 3].every((n) => sim.applied(n, 0, w))), 'every write before the crashes is on every member');
  finish(t, sim);
});
