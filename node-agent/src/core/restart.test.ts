import test from 'ava';
import fc from 'fast-check';
import { isDeepStrictEqual } from 'node:util';
import { allocate } from './allocation.ts';
import { planRestart, planStart, truncationFor } from './restart.ts';
import type { RestartPlan } from './restart.ts';
import { blankSavedState, compareVersions, VERSION_NONE } from './types.ts';
import type { GroupPolicy, Layout, NodeId, RestartReport, SavedTrim, Version, View } from './types.ts';

// ---------------------------------------------------------------------------------------------------
// Fixtures

const kvPolicy: GroupPolicy = {
  subgroups: [
    { name: 'kv', shards: 2, minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true },
  ],
};

const mixedPolicy: GroupPolicy = {
  subgroups: [
    { name: 'kv', shards: 2, minNodesPerShard: 1, maxNodesPerShard: 2, deliveryMode: 'ordered', persistent: true },
    { name: 'cache', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 2, deliveryMode: 'ordered', persistent: false },
    { name: 'events', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 2, deliveryMode: 'raw', persistent: true },
  ],
};

/** A layout for `policy` with the given members per flat shard id. */
function layoutFor(policy: GroupPolicy, assignment: NodeId[][]): Layout {
  const shards: Layout['shards'] = [];
  for (const sg of policy.subgroups) {
    for (let i = 0; i < sg.shards; i++) {
      const members = assignment[shards.length] ?? [];
      shards.push({
        shardId: shards.length,
        subgroup: sg.name,
        shardIndex: i,
        members: [...members],
        senders: [...members],
        deliveryMode: sg.deliveryMode,
        persistent: sg.persistent,
      });
    }
  }
  return { shards };
}

function v(viewId: number, seq: number): Version {
  return { viewId, seq };
}

function report(
  nodeId: NodeId,
  lastView: View,
  logTails: { shardId: number; version: Version }[] = [],
  extra: Partial<Pick<RestartReport, 'highestViewIdSeen' | 'trims'>> = {},
): RestartReport {
  return {
    nodeId,
    lastView,
    highestViewIdSeen: extra.highestViewIdSeen ?? lastView.viewId,
    trims: extra.trims ?? [],
    logTails,
    promised: null,
  };
}

function trim(viewId: number, lastVersions: Version[]): SavedTrim {
  return { viewId, trims: lastVersions.map(() => [0]), lastVersions };
}

function ready(plan: RestartPlan): Extract<RestartPlan, { ready: true }> {
  if (!plan.ready) throw new Error(`expected a ready plan, got: ${plan.message}`);
  return plan;
}

function notReady(plan: RestartPlan): Extract<RestartPlan, { ready: false }> {
  if (plan.ready) throw new Error('expected a plan that is not ready');
  return plan;
}

function shardOf(plan: RestartPlan, shardId: number) {
  const s = ready(plan).decision.shards.find((x) => x.shardId === shardId);
  if (s === undefined) throw new Error(`no shard ${shardId} in the decision`);
  return s;
}

// View 7 of four nodes: kv/0 = [1, 2], kv/1 = [3, 4].
const view7: View = { viewId: 7, members: [1, 2, 3, 4], layout: layoutFor(kvPolicy, [[1, 2], [3, 4]]) };

// ---------------------------------------------------------------------------------------------------
// Examples

test('a majority of the last view with every shard covered restarts', (t) => {
  const plan = ready(
    planRestart(kvPolicy, [
      report(3, view7, [{ shardId: 1, version: v(7, 4) }]),
      report(1, view7, [{ shardId: 0, version: v(7, 9) }]),
      report(2, view7, [{ shardId: 0, version: v(7, 9) }]),
    ]),
  );
  t.deepEqual(plan.lastView, view7);
  t.deepEqual(plan.returned, [1, 2, 3]);
  t.is(plan.decision.view.viewId, 8);
  t.deepEqual(plan.decision.view.members, [1, 2, 3]);
  const expected = allocate(kvPolicy, view7.layout, [1, 2, 3]);
  t.true(expected.adequate);
  if (expected.adequate) t.deepEqual(plan.decision.view.layout, expected.layout);
  t.deepEqual(plan.decision.shards.map((s) => s.shardId), plan.decision.view.layout.shards.map((s) => s.shardId).sort((a, b) => a - b));
  t.deepEqual(shardOf(plan, 0), { shardId: 0, source: 1, truncateTo: v(7, 9) });
  t.deepEqual(shardOf(plan, 1), { shardId: 1, source: 3, truncateTo: v(7, 4) });
  t.deepEqual(plan.decision.trims, []);
});

test('one member of three is not enough and the message names who is missing', (t) => {
  const view: View = { viewId: 7, members: [1, 2, 3], layout: layoutFor(kvPolicy, [[1, 2], [3]]) };
  const plan = notReady(planRestart(kvPolicy, [report(1, view, [{ shardId: 0, version: v(7, 2) }])]));
  t.deepEqual(plan.lastView, view);
  t.deepEqual(plan.missing.majority, { have: 1, need: 2, absent: [2, 3], viewId: 7 });
  t.deepEqual(plan.missing.shards, [{ shardId: 1, subgroup: 'kv', shardIndex: 1, formerMembers: [3] }]);
  t.is(plan.missing.conflict, null);
  const allocation = allocate(kvPolicy, view.layout, [1]);
  t.is(plan.missing.inadequate, allocation.adequate ? null : allocation.reason);
  const expected =
    'restart quorum not met for view 7: 1 of 3 members returned with their saved state (need 2; waiting for nodes 2, 3); ' +
    'shard kv/1 has no returning member holding its state (former members 3)' +
    (allocation.adequate ? '' : `; the restart view would be inadequate: ${allocation.reason}`);
  t.is(plan.message, expected);
});

test('a shard with no returning member blocks the restart', (t) => {
  // Five members; kv/1 lived only on node 3, which did not come back.
  const view: View = { viewId: 7, members: [1, 2, 3, 4, 5], layout: layoutFor(kvPolicy, [[1, 2, 4], [3]]) };
  const plan = notReady(
    planRestart(kvPolicy, [report(1, view), report(2, view), report(4, view), report(5, view)]),
  );
  t.is(plan.missing.majority, null);
  t.deepEqual(plan.missing.shards, [{ shardId: 1, subgroup: 'kv', shardIndex: 1, formerMembers: [3] }]);
  t.is(plan.missing.inadequate, null);
  t.is(plan.missing.conflict, null);
  t.is(plan.message, 'restart quorum not met for view 7: shard kv/1 has no returning member holding its state (former members 3)');

  // Node 3 comes back: now the restart goes ahead.
  t.true(planRestart(kvPolicy, [report(1, view), report(2, view), report(3, view), report(4, view)]).ready);
});

test('a member still waiting for a state transfer does not count as holding its shard', (t) => {
  // kv/1 = [3, 4]; node 4 had just joined the shard and was waiting for its state when the group failed.
  const view: View = { viewId: 7, members: [1, 2, 3, 4], layout: layoutFor(kvPolicy, [[1, 2], [3, 4]]) };
  const waiting = { ...report(4, view, [{ shardId: 1, version: v(3, 1) }]), incompleteShards: [1] };
  const plan = notReady(planRestart(kvPolicy, [report(1, view, [{ shardId: 0, version: v(7, 5) }]), report(2, view), waiting]));
  t.deepEqual(plan.missing.shards, [{ shardId: 1, subgroup: 'kv', shardIndex: 1, formerMembers: [3, 4] }]);
  t.regex(plan.message, /shard kv\/1 has no returning member holding its state/);

  // Node 3, which held the state, comes back: it is the source even though node 4's stale log exists.
  const ok = ready(planRestart(kvPolicy, [report(1, view), report(2, view), waiting, report(3, view, [{ shardId: 1, version: v(7, 2) }])]));
  t.is(shardOf(ok, 1).source, 3);
  t.deepEqual(shardOf(ok, 1).truncateTo, v(7, 2));
});

test('a member that never installed the last view does not count as holding its shard', (t) => {
  // View 7 added node 4 to kv/1 = [3, 4], but node 4 crashed before installing it: it saved view 6.
  const view6: View = { viewId: 6, members: [1, 2, 3], layout: layoutFor(kvPolicy, [[1, 2], [3]]) };
  const view7: View = { viewId: 7, members: [1, 2, 3, 4], layout: layoutFor(kvPolicy, [[1, 2], [3, 4]]) };
  const stale = report(4, view6, [{ shardId: 1, version: v(6, 0) }]);
  const plan = notReady(planRestart(kvPolicy, [report(1, view7), report(2, view7), stale]));
  t.deepEqual(plan.missing.shards.map((s) => s.shardId), [1]);
  t.true(planRestart(kvPolicy, [report(1, view7), report(2, view7), stale, report(3, view7, [{ shardId: 1, version: v(7, 3) }])]).ready);
});

test('a member that saved the previous view and served the shard in both views counts', (t) => {
  // View 8 kept kv/1 = [3]; node 3 crashed before installing view 8. Nothing could be acknowledged in
  // view 8 without it, and it persisted everything acknowledged in view 7: its log is enough.
  const view6: View = { viewId: 6, members: [1, 2, 3, 4], layout: layoutFor(kvPolicy, [[1, 2], [4]]) };
  const view7: View = { viewId: 7, members: [1, 2, 3, 4], layout: layoutFor(kvPolicy, [[1, 2], [3, 4]]) };
  const view8: View = { viewId: 8, members: [1, 2, 3], layout: layoutFor(kvPolicy, [[1, 2], [3]]) };
  const behind = report(3, view7, [{ shardId: 1, version: v(7, 2) }]);
  const plan = ready(planRestart(kvPolicy, [report(1, view8), report(2, view8), behind]));
  t.is(shardOf(plan, 1).source, 3);
  // Two views behind (it was not in the shard in view 6 and may have missed updates): it does not count.
  const older = report(3, view6, [{ shardId: 1, version: v(6, 0) }]);
  t.deepEqual(notReady(planRestart(kvPolicy, [report(1, view8), report(2, view8), older])).missing.shards.map((s) => s.shardId), [1]);
});

test('an inadequate restart view blocks the restart and gives the allocator\'s reason', (t) => {
  const strict: GroupPolicy = {
    subgroups: [{ ...kvPolicy.subgroups[0]!, minNodesPerShard: 2 }],
  };
  const view: View = { viewId: 3, members: [1, 2, 3, 4], layout: layoutFor(strict, [[1, 2], [3, 4]]) };
  const members = [1, 2, 3];
  const allocation = allocate(strict, view.layout, members);
  t.false(allocation.adequate, 'two shards of at least two nodes each cannot be built from three nodes');
  const plan = notReady(planRestart(strict, members.map((m) => report(m, view))));
  t.is(plan.missing.majority, null);
  t.deepEqual(plan.missing.shards, []);
  t.is(plan.missing.inadequate, allocation.adequate ? null : allocation.reason);
  t.is(plan.message, `restart quorum not met for view 3: the restart view would be inadequate: ${plan.missing.inadequate}`);
});

test('the longest valid log is the restart source', (t) => {
  const plan = planRestart(kvPolicy, [
    report(1, view7, [{ shardId: 0, version: v(7, 3) }]),
    report(2, view7, [{ shardId: 0, version: v(7, 11) }]),
    report(3, view7, [{ shardId: 1, version: v(6, 40) }]),
    report(4, view7, [{ shardId: 1, version: v(7, 0) }, { shardId: 0, version: v(6, 99) }]),
  ]);
  t.deepEqual(shardOf(plan, 0), { shardId: 0, source: 2, truncateTo: v(7, 11) });
  t.deepEqual(shardOf(plan, 1), { shardId: 1, source: 4, truncateTo: v(7, 0) });

  const decision = ready(plan).decision;
  t.deepEqual(truncationFor(decision, v(7, 3), 0), { keepThrough: v(7, 3), needsSuffixFrom: 2 });
  t.deepEqual(truncationFor(decision, v(7, 11), 0), { keepThrough: v(7, 11), needsSuffixFrom: null });
  t.deepEqual(truncationFor(decision, VERSION_NONE, 1), { keepThrough: VERSION_NONE, needsSuffixFrom: 4 });
});

test('equal logs prefer a former member of the shard, then the lowest rank', (t) => {
  // Node 5 joined later (not in view 7) but holds an equally long log of shard 1 from an older membership.
  const plan = ready(
    planRestart(kvPolicy, [
      report(5, { viewId: 5, members: [5], layout: layoutFor(kvPolicy, [[5], [5]]) }, [{ shardId: 1, version: v(7, 2) }]),
      report(4, view7, [{ shardId: 1, version: v(7, 2) }, { shardId: 0, version: v(7, 6) }]),
      report(3, view7, [{ shardId: 1, version: v(7, 2) }]),
      report(2, view7, [{ shardId: 0, version: v(7, 6) }]),
      report(1, view7, [{ shardId: 0, version: v(7, 6) }]),
    ]),
  );
  t.deepEqual(plan.decision.view.members, [1, 2, 3, 4, 5]);
  t.is(shardOf(plan, 0).source, 1, 'all three are equal: node 1 was in kv/0 and has the lowest rank');
  t.is(shardOf(plan, 1).source, 3, 'nodes 3 and 4 were in kv/1; node 3 ranks lower');
});

test('a log beyond its view\'s ragged trim is truncated to it', (t) => {
  // View 6 ended with a ragged trim: shard 0 delivered through (6, 7). Node 1 logged past it, to (6, 10),
  // before crashing; node 2 stopped at (6, 5); node 3 never logged in view 6.
  const view6: View = { viewId: 6, members: [1, 2, 3, 4], layout: view7.layout };
  const trim6 = trim(6, [v(6, 7), v(6, -1)]);
  const plan = ready(
    planRestart(kvPolicy, [
      report(1, view6, [{ shardId: 0, version: v(6, 10) }, { shardId: 1, version: v(6, 3) }]),
      report(2, view7, [{ shardId: 0, version: v(6, 5) }], { trims: [trim6] }),
      report(3, view7, [{ shardId: 0, version: v(5, 20) }, { shardId: 1, version: v(5, 1) }], { trims: [trim6] }),
    ]),
  );
  t.deepEqual(plan.lastView, view7);
  t.deepEqual(plan.decision.trims, [trim6]);
  t.deepEqual(shardOf(plan, 0), { shardId: 0, source: 1, truncateTo: v(6, 7) });
  // Shard 1: nothing of view 6 survived the trim, so node 1's (6, 3) is cut to (6, -1), which still beats (5, 1).
  t.deepEqual(shardOf(plan, 1), { shardId: 1, source: 1, truncateTo: v(6, -1) });

  const decision = plan.decision;
  t.deepEqual(truncationFor(decision, v(6, 10), 0), { keepThrough: v(6, 7), needsSuffixFrom: null });
  t.deepEqual(truncationFor(decision, v(6, 5), 0), { keepThrough: v(6, 5), needsSuffixFrom: 1 });
  t.deepEqual(truncationFor(decision, v(5, 20), 0), { keepThrough: v(5, 20), needsSuffixFrom: 1 });
  t.deepEqual(truncationFor(decision, v(6, 3), 1), { keepThrough: v(6, -1), needsSuffixFrom: null });
  // A shard the decision does not know keeps nothing.
  t.deepEqual(truncationFor(decision, v(6, 3), 42), { keepThrough: VERSION_NONE, needsSuffixFrom: null });
});

test('the restart view id is higher than any id ever seen', (t) => {
  const view3: View = { viewId: 3, members: [1, 2, 3], layout: layoutFor(kvPolicy, [[1, 2], [3]]) };
  t.is(ready(planRestart(kvPolicy, [report(1, view3), report(3, view3)])).decision.view.viewId, 4);
  // A view 9 was proposed (never installed) and the restart before this one got as far as a trim of view 10.
  const plan = ready(
    planRestart(kvPolicy, [
      report(1, view3, [], { highestViewIdSeen: 9 }),
      report(2, view3, [], { trims: [trim(10, [v(10, 0), v(10, 0)])] }),
      report(3, view3),
    ]),
  );
  t.is(plan.decision.view.viewId, 11);
});

test('conflicting views with the same id are reported', (t) => {
  const other: View = { viewId: 7, members: [1, 2, 4, 3], layout: view7.layout };
  const plan = notReady(planRestart(kvPolicy, [report(1, view7), report(4, other), report(2, view7), report(3, view7)]));
  t.is(plan.missing.conflict, 'conflicting restart reports: view 7 differs between reports: nodes 1, 2, 3 vs node 4');
  t.is(plan.message, 'restart blocked for view 7: conflicting restart reports: view 7 differs between reports: nodes 1, 2, 3 vs node 4');
  t.deepEqual(plan.lastView, view7);

  // Different layouts count too, and so do two different ragged trims of one view.
  const relaid: View = { ...view7, layout: layoutFor(kvPolicy, [[1, 3], [2, 4]]) };
  const plan2 = notReady(
    planRestart(kvPolicy, [
      report(1, view7, [], { trims: [trim(6, [v(6, 1), v(6, 1)])] }),
      report(2, relaid),
      report(3, view7, [], { trims: [trim(6, [v(6, 2), v(6, 1)])] }),
    ]),
  );
  t.is(
    plan2.missing.conflict,
    'conflicting restart reports: view 7 differs between reports: nodes 1, 3 vs node 2; ' +
      'ragged trim of view 6 differs between reports: node 1 vs node 3',
  );
});

test('volatile shards restart empty', (t) => {
  const view: View = {
    viewId: 4,
    members: [1, 2, 3, 4, 5, 6],
    layout: layoutFor(mixedPolicy, [[1, 2], [3, 4], [5, 6], [1, 5]]),
  };
  const tails = [
    { shardId: 0, version: v(4, 3) },
    { shardId: 2, version: v(4, 8) },
    { shardId: 3, version: v(4, 8) },
  ];
  const plan = ready(planRestart(mixedPolicy, [1, 2, 3, 5, 6].map((n) => report(n, view, tails))));
  const persistentIds = new Set(plan.decision.view.layout.shards.filter((s) => s.persistent && s.deliveryMode === 'ordered').map((s) => s.shardId));
  t.true(persistentIds.has(0));
  t.false(persistentIds.has(2));
  t.false(persistentIds.has(3));
  t.deepEqual(shardOf(plan, 2), { shardId: 2, source: null, truncateTo: VERSION_NONE });
  t.deepEqual(shardOf(plan, 3), { shardId: 3, source: null, truncateTo: VERSION_NONE });
  t.deepEqual(shardOf(plan, 0), { shardId: 0, source: 1, truncateTo: v(4, 3) });
  t.deepEqual(truncationFor(plan.decision, v(4, 8), 2), { keepThrough: VERSION_NONE, needsSuffixFrom: null });
});

/** The report of a node that never installed a view (it crashed before its first view reached it). */
function blankReport(nodeId: NodeId): RestartReport {
  const s = blankSavedState();
  return { nodeId, lastView: s.lastView, highestViewIdSeen: 0, trims: [], logTails: [], promised: null, blank: true };
}

test('a former member with nothing saved covers its volatile shard and counts toward the majority', (t) => {
  // View 5: kv/0 = [1], kv/1 = [2], cache = [3] (volatile), events = [4]. Node 3 never received view 5.
  const view: View = { viewId: 5, members: [1, 2, 3, 4], layout: layoutFor(mixedPolicy, [[1], [2], [3], [4]]) };
  const plan = ready(planRestart(mixedPolicy, [report(1, view), report(2, view), blankReport(3), report(4, view)]));
  t.deepEqual(plan.decision.view.members, [1, 2, 3, 4]);
  t.is(plan.decision.view.viewId, 6);
  t.is(plan.lastView.viewId, 5);
  t.deepEqual(shardOf(plan, 2), { shardId: 2, source: null, truncateTo: VERSION_NONE });
  // Without node 3 the volatile shard has no returning member.
  const blocked = notReady(planRestart(mixedPolicy, [report(1, view), report(2, view), report(4, view)]));
  t.deepEqual(blocked.missing.shards.map((s) => s.shardId), [2]);
});

test('a former member with nothing saved does not hold its persistent shard', (t) => {
  const blocked = notReady(planRestart(kvPolicy, [report(1, view7), report(2, view7), blankReport(3), blankReport(4)]));
  t.deepEqual(blocked.missing.shards.map((s) => s.shardId), [1]);
  t.regex(blocked.message, /shard kv\/1 has no returning member holding its state/);
});

test('blank reports alone never make a plan', (t) => {
  const plan = notReady(planRestart(kvPolicy, [blankReport(1), blankReport(2), blankReport(3)]));
  t.is(plan.lastView, null);
  t.regex(plan.message, /no returning node has saved a view yet \(nodes 1, 2, 3 have nothing saved\)/);
});

test('a view change accepted but not installed by the returning members is adopted as the last view', (t) => {
  // View 7 ended with a change to view 8 = [1, 2, 3] (kv/0 = [1, 2], kv/1 = [3]) that nodes 1 and 2
  // accepted; only node 3 installed it (and may have acknowledged writes in kv/1 alone).
  const view8: View = { viewId: 8, members: [1, 2, 3], layout: layoutFor(kvPolicy, [[1, 2], [3]]), previousViewId: 7 };
  const value = { fromViewId: 7, next: view8, trims: [[4, 2], [5, 5]], joined: [], removed: [4], transfers: [], lostShards: [] };
  const withAccepted = (n: NodeId): RestartReport => ({ ...report(n, view7, [{ shardId: 0, version: v(7, 9) }], { highestViewIdSeen: 8 }), acceptedChange: { value, ballot: 0 } });
  const waiting = notReady(planRestart(kvPolicy, [withAccepted(1), withAccepted(2), report(4, view7, [{ shardId: 1, version: v(7, 20) }])]));
  t.is(waiting.lastView?.viewId, 8);
  t.deepEqual(waiting.missing.shards.map((s) => s.shardId), [1], 'kv/1 of view 8 is only with node 3');
  const view8At3: View = { ...view8 };
  const plan = ready(planRestart(kvPolicy, [withAccepted(1), withAccepted(2), report(3, view8At3, [{ shardId: 1, version: v(8, 0) }])]));
  t.is(plan.lastView.viewId, 8);
  t.is(plan.decision.view.viewId, 9);
  t.deepEqual(shardOf(plan, 1), { shardId: 1, source: 3, truncateTo: v(8, 0) });
  // The accepted trim of view 7 bounds the view-7 logs: kv/0's two senders got 4 and 2 messages in;
  // every message inside each sender's trim was delivered in view 7 (seq 0, 2, 4, 6 and 1, 3): up to 6.
  t.deepEqual(shardOf(plan, 0), { shardId: 0, source: 1, truncateTo: v(7, 6) });
  // An accepted value for a view someone installed is not needed; a lower one is ignored.
  const older = ready(planRestart(kvPolicy, [report(1, view7), report(2, view7), report(3, view7), { ...report(4, view7), acceptedChange: { value: { ...value, next: { ...view8, viewId: 5 } }, ballot: 1 } }]));
  t.is(older.lastView.viewId, 7);
});

test('holders follow the chain of views back through an accepted view and a restart view', (t) => {
  // View 8 (saved by 2, 3, 4) was followed by an accepted-only view 9 (adopted by a restart), and the
  // restart view 10 (previousViewId 9) was installed by node 1 alone before everything failed again.
  const view8: View = { viewId: 8, members: [1, 2, 3, 4], layout: layoutFor(kvPolicy, [[1, 2], [3, 4]]) };
  const view9: View = { viewId: 9, members: [1, 2, 3, 4], layout: layoutFor(kvPolicy, [[1, 2], [3, 4]]), previousViewId: 8 };
  const view10: View = { viewId: 10, members: [1, 2, 3, 4], layout: layoutFor(kvPolicy, [[1, 2], [3, 4]]), previousViewId: 9 };
  const value = { fromViewId: 8, next: view9, trims: [[3], [3]], joined: [], removed: [], transfers: [], lostShards: [] };
  const at8 = (n: NodeId): RestartReport => ({ ...report(n, view8, [{ shardId: n <= 2 ? 0 : 1, version: v(8, 2) }], { highestViewIdSeen: 10 }), acceptedChange: { value, ballot: 0 } });
  const plan = ready(planRestart(kvPolicy, [report(1, view10, [{ shardId: 0, version: v(8, 2) }]), at8(2), at8(3), at8(4)]));
  t.is(plan.lastView.viewId, 10);
  t.is(plan.decision.view.viewId, 11);
  t.deepEqual(shardOf(plan, 1).source, 3);
  // Without the accepted value the chain breaks at view 9: kv/1's members do not count.
  const broken = notReady(planRestart(kvPolicy, [report(1, view10), report(2, view8), report(3, view8), report(4, view8)]));
  t.deepEqual(broken.missing.shards.map((s) => s.shardId), [1]);
});

test('holders follow the chain through the views a restart view\'s installer kept (seed 279)', (t) => {
  // View 8 (saved by 2, 3, 4) was followed by an accepted-only view 9 that a restart adopted; restart view
  // 10 (previousViewId 9) was installed by node 1 alone, and the whole group failed at once. No one returning
  // still reports the accepted value of view 9 (node 1's was superseded by its install), but node 1 kept
  // view 9 among its recent views (a `viewsDecided` record): kv/1's members hold it through 8, 9 and 10.
  const view8: View = { viewId: 8, members: [1, 2, 3, 4], layout: layoutFor(kvPolicy, [[1, 2], [3, 4]]) };
  const view9: View = { viewId: 9, members: [1, 2, 3, 4], layout: layoutFor(kvPolicy, [[1, 2], [3, 4]]), previousViewId: 8 };
  const view10: View = { viewId: 10, members: [1, 2, 3, 4], layout: layoutFor(kvPolicy, [[1, 2], [3, 4]]), previousViewId: 9 };
  const at8 = (n: NodeId): RestartReport => report(n, view8, [{ shardId: n <= 2 ? 0 : 1, version: v(8, 2) }], { highestViewIdSeen: 10 });
  const installer: RestartReport = { ...report(1, view10, [{ shardId: 0, version: v(8, 2) }]), recentViews: [view8, view9, view10] };
  const plan = ready(planRestart(kvPolicy, [installer, at8(2), at8(3), at8(4)]));
  t.is(plan.lastView.viewId, 10);
  t.is(plan.decision.view.viewId, 11);
  t.is(shardOf(plan, 1).source, 3);
  // Without the kept views the chain breaks at view 9, as it did in seed 279 (the restart never ended).
  const broken = notReady(planRestart(kvPolicy, [report(1, view10, [{ shardId: 0, version: v(8, 2) }]), at8(2), at8(3), at8(4)]));
  t.deepEqual(broken.missing.shards.map((s) => s.shardId), [1]);
  // A kept view is evidence like an installed one: if node 3 had served kv/1 in view 9 without node 3...
  const view9Without3: View = { ...view9, members: [1, 2, 4], layout: layoutFor(kvPolicy, [[1, 2], [4]]) };
  const otherChain: RestartReport = { ...installer, recentViews: [view8, view9Without3, view10] };
  const plan3 = ready(planRestart(kvPolicy, [otherChain, at8(2), at8(3), at8(4)]));
  t.is(shardOf(plan3, 1).source, 3, 'node 4 served kv/1 in 9 and 10: it holds it, and 3 (a longer log, as long) is picked by rank');
  const only3 = notReady(planRestart(kvPolicy, [otherChain, at8(2), at8(3)]));
  t.deepEqual(only3.missing.shards.map((s) => s.shardId), [1], 'node 3 left kv/1 in view 9: its log may miss acknowledged updates');
  // ...and two reports that keep different views with one id contradict each other.
  const conflicting = notReady(planRestart(kvPolicy, [installer, { ...at8(2), recentViews: [view8, view9Without3] }, at8(3), at8(4)]));
  t.regex(conflicting.message, /view 9 differs between reports: node 1 vs node 2/);
});

test('a shard whose only member was still receiving its state when the group failed restarts from the former holder (seed 646)', (t) => {
  // View 2: kv/0 = [5]. View 3 admitted node 1 to kv/0 = [1, 5]; view 4 moved node 5 to kv/1, leaving
  // node 1 alone in kv/0, still waiting for the state from node 5 when everything failed. Nothing of kv/0
  // was acknowledged in view 4 (node 1 persisted none of it): node 5, which served kv/0 through view 3
  // and installed view 4, holds every acknowledged update.
  const view2: View = { viewId: 2, members: [2, 3, 5], layout: layoutFor(kvPolicy, [[5], [2, 3]]) };
  const view3: View = { viewId: 3, members: [2, 3, 1, 5], layout: layoutFor(kvPolicy, [[1, 5], [2, 3]]), previousViewId: 2 };
  const view4: View = { viewId: 4, members: [2, 3, 1, 5], layout: layoutFor(kvPolicy, [[1], [2, 3, 5]]), previousViewId: 3 };
  const waiting: RestartReport = { ...report(1, view4, [{ shardId: 0, version: v(0, 4) }]), incompleteShards: [0], recentViews: [view3] };
  const former: RestartReport = { ...report(5, view4, [{ shardId: 0, version: v(2, 1) }, { shardId: 1, version: v(2, 5) }]), recentViews: [view2, view3] };
  const others = [report(2, view4, [{ shardId: 1, version: v(2, 5) }]), report(3, view4, [{ shardId: 1, version: v(2, 5) }])];
  const plan = ready(planRestart(kvPolicy, [waiting, former, ...others]));
  t.is(shardOf(plan, 0).source, 5);
  t.deepEqual(shardOf(plan, 0).truncateTo, v(2, 1));
  t.deepEqual(truncationFor(plan.decision, v(0, 4), 0).needsSuffixFrom, 5, 'node 1 fetches the state it was waiting for');

  // Without node 1 nothing shows that view 4 added nothing to kv/0: node 5 left kv/0 there, so its log may
  // miss what was acknowledged in view 4.
  t.deepEqual(notReady(planRestart(kvPolicy, [former, ...others])).missing.shards.map((s) => s.shardId), [0]);
  // Node 1 waiting, but saved view 3 only: it never installed view 4, which shows the same.
  const at3: RestartReport = { ...report(1, view3, [{ shardId: 0, version: v(0, 4) }]), incompleteShards: [0] };
  t.is(shardOf(ready(planRestart(kvPolicy, [at3, former, ...others])), 0).source, 5);
  // Node 1 not waiting (it had the state and saved view 4): it is the holder, node 5 is not needed.
  t.is(shardOf(ready(planRestart(kvPolicy, [report(1, view4, [{ shardId: 0, version: v(4, 2) }]), ...others])), 0).source, 1);
  // Node 5 had not served kv/0 in view 3 (node 1 alone did): its view-2 log may miss updates of view 3.
  const view3b: View = { ...view3, layout: layoutFor(kvPolicy, [[1], [2, 3, 5]]) };
  const view4b: View = { ...view4, layout: layoutFor(kvPolicy, [[1], [2, 3, 5]]) };
  const waitingB: RestartReport = { ...report(1, view4b, [{ shardId: 0, version: v(0, 4) }]), incompleteShards: [0], recentViews: [view3b] };
  const formerB = report(5, view4b, [{ shardId: 0, version: v(2, 1) }, { shardId: 1, version: v(2, 5) }]);
  const othersB = [report(2, view4b, [{ shardId: 1, version: v(2, 5) }]), report(3, view4b, [{ shardId: 1, version: v(2, 5) }])];
  t.deepEqual(notReady(planRestart(kvPolicy, [waitingB, formerB, ...othersB])).missing.shards.map((s) => s.shardId), [0]);
  // Node 5 was removed in between (view 4 without it, then re-admitted in view 5): it may have missed view
  // 3's last updates, so it does not count.
  const view4c: View = { viewId: 4, members: [2, 3, 1], layout: layoutFor(kvPolicy, [[1], [2, 3]]), previousViewId: 3 };
  const view5c: View = { viewId: 5, members: [2, 3, 1, 5], layout: layoutFor(kvPolicy, [[1], [2, 3, 5]]), previousViewId: 4 };
  const waitingC: RestartReport = { ...report(1, view5c, [{ shardId: 0, version: v(0, 4) }]), incompleteShards: [0], recentViews: [view3, view4c] };
  const formerC = report(5, view5c, [{ shardId: 0, version: v(2, 1) }, { shardId: 1, version: v(2, 5) }]);
  const othersC = [report(2, view5c, [{ shardId: 1, version: v(2, 5) }]), report(3, view5c, [{ shardId: 1, version: v(2, 5) }])];
  t.deepEqual(notReady(planRestart(kvPolicy, [waitingC, formerC, ...othersC])).missing.shards.map((s) => s.shardId), [0]);
});

test('a persistent shard nobody holds a log for restarts empty', (t) => {
  const plan = ready(planRestart(kvPolicy, [report(1, view7), report(2, view7), report(3, view7)]));
  t.deepEqual(plan.decision.shards.map((s) => ({ ...s })), [
    { shardId: 0, source: null, truncateTo: VERSION_NONE },
    { shardId: 1, source: null, truncateTo: VERSION_NONE },
  ]);
});

test('nodes outside the last view join the restart view after its members, by ascending id', (t) => {
  const plan = ready(
    planRestart(kvPolicy, [
      report(9, { viewId: 2, members: [9, 8], layout: layoutFor(kvPolicy, [[9], [8]]) }),
      report(4, view7),
      report(8, { viewId: 2, members: [9, 8], layout: layoutFor(kvPolicy, [[9], [8]]) }),
      report(2, view7),
      report(3, view7),
    ]),
  );
  t.deepEqual(plan.decision.view.members, [2, 3, 4, 8, 9]);
  t.deepEqual(plan.returned, [2, 3, 4, 8, 9]);
});

test('a node\'s later duplicate reports are ignored, and no report means no plan', (t) => {
  const plan = notReady(planRestart(kvPolicy, [report(1, view7), report(1, view7), report(1, view7)]));
  t.deepEqual(plan.missing.majority, { have: 1, need: 3, absent: [2, 3, 4], viewId: 7 });
  // The duplicate's different view does not count as a conflict: only the first report of node 2 counts.
  const plan2 = planRestart(kvPolicy, [report(1, view7), report(2, view7), report(2, { ...view7, members: [2] }), report(3, view7)]);
  t.true(plan2.ready);

  const empty = notReady(planRestart(kvPolicy, []));
  t.is(empty.lastView, null);
  t.deepEqual(empty.missing, { majority: null, shards: [], inadequate: null, conflict: null });
  t.is(empty.message, 'restart quorum not met: no restart reports received yet');
});

// ---------------------------------------------------------------------------------------------------
// Properties against a naive reference

const propPolicy: GroupPolicy = {
  subgroups: [
    { name: 'kv', shards: 2, minNodesPerShard: 1, maxNodesPerShard: 2, deliveryMode: 'ordered', persistent: true },
    { name: 'log', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true },
    { name: 'cache', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 2, deliveryMode: 'ordered', persistent: false },
  ],
};
const PROP_SHARDS = 4;
const NODE_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9];

interface Scenario {
  reports: RestartReport[];
  /** Every trim any report could carry, by view id (consistent across reports). */
  trims: Map<number, SavedTrim>;
}

/** Views, one per id, consistent across reports: members and a layout (hand-made, one member per shard at least). */
const viewArb = (viewId: number): fc.Arbitrary<View> =>
  fc
    .shuffledSubarray(NODE_IDS.slice(0, 7), { minLength: 1, maxLength: 7 })
    .chain((members) =>
      fc
        .array(fc.array(fc.constantFrom(...members), { minLength: 0, maxLength: 2 }), {
          minLength: PROP_SHARDS,
          maxLength: PROP_SHARDS,
        })
        .map((assignment) => ({
          viewId,
          members,
          layout: layoutFor(propPolicy, assignment.map((ms) => [...new Set(ms)])),
        })),
    );

const versionArb = (maxView: number): fc.Arbitrary<Version> =>
  fc.record({ viewId: fc.integer({ min: 0, max: maxView }), seq: fc.integer({ min: -1, max: 12 }) });

const trimArb = (viewId: number): fc.Arbitrary<SavedTrim> =>
  fc
    .array(fc.integer({ min: -1, max: 12 }), { minLength: PROP_SHARDS, maxLength: PROP_SHARDS })
    .map((seqs) => trim(viewId, seqs.map((seq) => v(viewId, seq))));

const scenarioArb: fc.Arbitrary<Scenario> = fc
  .record({
    top: fc.integer({ min: 1, max: 6 }),
    older: fc.integer({ min: 0, max: 5 }),
  })
  .chain(({ top, older }) => {
    const olderId = Math.min(older, top - 1);
    return fc.record({
      topView: viewArb(top),
      olderView: viewArb(olderId),
      trimList: fc.array(fc.integer({ min: 0, max: top + 1 }).chain(trimArb), { maxLength: 4 }),
      reporters: fc.shuffledSubarray(NODE_IDS, { minLength: 1, maxLength: NODE_IDS.length }),
      top: fc.constant(top),
    });
  })
  .chain(({ topView, olderView, trimList, reporters, top }) => {
    const trims = new Map<number, SavedTrim>();
    for (const t of trimList) if (!trims.has(t.viewId)) trims.set(t.viewId, t);
    const trimValues = [...trims.values()];
    const one = (nodeId: NodeId): fc.Arbitrary<RestartReport> =>
      fc.record({
        nodeId: fc.constant(nodeId),
        lastView: fc.constantFrom(topView, olderView),
        highestViewIdSeen: fc.integer({ min: 0, max: top + 3 }),
        trims: trimValues.length === 0 ? fc.constant([]) : fc.subarray(trimValues),
        logTails: fc.uniqueArray(
          fc.record({ shardId: fc.integer({ min: 0, max: PROP_SHARDS - 1 }), version: versionArb(top + 1) }),
          { selector: (x) => x.shardId, maxLength: PROP_SHARDS },
        ),
        promised: fc.option(fc.record({ round: fc.nat({ max: 3 }), nodeId: fc.constantFrom(...NODE_IDS) })),
        incompleteShards: fc.subarray([0, 1, 2, 3], { maxLength: 2 }),
      });
    return fc.tuple(...reporters.map(one)).map((reports) => ({ reports, trims }));
  });

/** The reference: conditions (a)-(c) evaluated by brute force from the raw reports. */
function referenceQuorum(policy: GroupPolicy, reports: RestartReport[]) {
  let lastView = reports[0]!.lastView;
  for (const r of reports) if (r.lastView.viewId > lastView.viewId) lastView = r.lastView;
  const ids = reports.map((r) => r.nodeId);
  const returnedMembers = lastView.members.filter((m) => ids.includes(m));
  const a = 2 * returnedMembers.length > lastView.members.length;
  // A persistent shard is covered only by a returning member that installed the last view itself.
  // (or that saved the view before and served the shard in both views).
  const holder = (m: NodeId, shardId: number, persistent: boolean): boolean =>
    reports.some((r) => {
      if (r.nodeId !== m) return false;
      if (!persistent) return true;
      if ((r.incompleteShards ?? []).includes(shardId)) return false;
      if (r.lastView.viewId === lastView.viewId) return true;
      return r.lastView.viewId === (lastView.previousViewId ?? lastView.viewId - 1) && r.lastView.layout.shards[shardId]!.members.includes(m);
    });
  // If no member of a persistent shard holds it, but one returned having persisted nothing of it in the
  // last view (it saved that view while waiting for the shard's state, or saved an older one), the
  // shard's members of the view before count: one that saved that view, or that served the shard there
  // and installed the last view as a member.
  const prevId = lastView.previousViewId ?? lastView.viewId - 1;
  const prevView = reports.find((r) => r.lastView.viewId === prevId)?.lastView;
  const idle = (shardId: number): boolean =>
    lastView.layout.shards[shardId]!.members.some((m) => reports.some((r) => r.nodeId === m &&
      (r.lastView.viewId < lastView.viewId || (r.lastView.viewId === lastView.viewId && (r.incompleteShards ?? []).includes(shardId)))));
  const earlierHolder = (shardId: number): boolean =>
    prevView !== undefined && prevView.layout.shards[shardId]!.members.some((m) => reports.some((r) => r.nodeId === m &&
      !(r.incompleteShards ?? []).includes(shardId) &&
      (r.lastView.viewId === prevId || (r.lastView.viewId === lastView.viewId && lastView.members.includes(m)))));
  const uncovered = lastView.layout.shards.filter((s) => {
    if (s.members.length === 0) return false;
    const persistent = s.persistent && s.deliveryMode === 'ordered';
    if (s.members.some((m) => holder(m, s.shardId, persistent))) return false;
    return !(persistent && idle(s.shardId) && earlierHolder(s.shardId));
  });
  const b = uncovered.length === 0;
  const members = [...returnedMembers, ...ids.filter((n) => !lastView.members.includes(n)).sort((x, y) => x - y)];
  const allocation = allocate(policy, lastView.layout, members);
  return { a, b, c: allocation.adequate, lastView, members, uncovered: uncovered.map((s) => s.shardId), allocation };
}

/** Naive valid tail: the tail capped by the (well-formed) trim of its own view, if any. */
function referenceValid(tail: Version, shardId: number, trims: SavedTrim[]): Version {
  const t = trims.find((x) => x.viewId === tail.viewId);
  const cap = t?.lastVersions[shardId];
  return cap !== undefined && compareVersions(cap, tail) < 0 ? cap : tail;
}

const RUNS = { numRuns: 300 };

test('property: the quorum verdict is conditions (a)-(c) evaluated from the raw reports', (t) => {
  fc.assert(
    fc.property(scenarioArb, ({ reports }) => {
      const ref = referenceQuorum(propPolicy, reports);
      const plan = planRestart(propPolicy, reports);
      if (plan.ready !== (ref.a && ref.b && ref.c)) return false;
      if (!isDeepStrictEqual(plan.lastView, ref.lastView)) return false;
      if (plan.ready) {
        return isDeepStrictEqual(plan.decision.view.members, ref.members) && ref.allocation.adequate &&
          isDeepStrictEqual(plan.decision.view.layout, ref.allocation.layout);
      }
      return (
        (plan.missing.majority === null) === ref.a &&
        isDeepStrictEqual(plan.missing.shards.map((s) => s.shardId), ref.uncovered) &&
        (plan.missing.inadequate === null) === ref.c &&
        plan.missing.conflict === null &&
        plan.message.startsWith(`restart quorum not met for view ${ref.lastView.viewId}: `)
      );
    }),
    RUNS,
  );
  t.pass();
});

test('property: the source holds the greatest valid tail and truncateTo respects every known trim', (t) => {
  fc.assert(
    fc.property(scenarioArb, ({ reports }) => {
      const plan = planRestart(propPolicy, reports);
      if (!plan.ready) return true;
      const { decision } = plan;
      const seen = Math.max(...reports.flatMap((r) => [r.lastView.viewId, r.highestViewIdSeen, ...r.trims.map((x) => x.viewId)]));
      if (decision.view.viewId !== seen + 1) return false;
      const allTrims = reports.flatMap((r) => r.trims);
      for (const shard of decision.view.layout.shards) {
        const entry = decision.shards.find((s) => s.shardId === shard.shardId);
        if (entry === undefined) return false;
        // A node still waiting for the shard's state is never its source.
        const holders = reports.filter((r) => !(r.incompleteShards ?? []).includes(shard.shardId)).flatMap((r) =>
          r.logTails.filter((x) => x.shardId === shard.shardId).map((x) => ({ nodeId: r.nodeId, valid: referenceValid(x.version, shard.shardId, allTrims) })),
        );
        if (!shard.persistent || shard.deliveryMode !== 'ordered' || holders.length === 0) {
          if (entry.source !== null || !isDeepStrictEqual(entry.truncateTo, VERSION_NONE)) return false;
          continue;
        }
        const source = holders.find((h) => h.nodeId === entry.source);
        if (source === undefined || !isDeepStrictEqual(source.valid, entry.truncateTo)) return false;
        if (holders.some((h) => compareVersions(h.valid, source.valid) > 0)) return false;
        const trimOfView = allTrims.find((x) => x.viewId === entry.truncateTo.viewId);
        const cap = trimOfView?.lastVersions[shard.shardId];
        if (cap !== undefined && compareVersions(entry.truncateTo, cap) > 0) return false;
        // Every holder's cut: never beyond its tail or truncateTo; fetch exactly when behind.
        for (const r of reports) {
          const tail = r.logTails.find((x) => x.shardId === shard.shardId);
          if (tail === undefined) continue;
          const cut = truncationFor(decision, tail.version, shard.shardId);
          if (compareVersions(cut.keepThrough, tail.version) > 0) return false;
          if (compareVersions(cut.keepThrough, entry.truncateTo) > 0) return false;
          const behind = compareVersions(cut.keepThrough, entry.truncateTo) < 0;
          if (cut.needsSuffixFrom !== (behind ? entry.source : null)) return false;
          if (r.nodeId === entry.source && behind) return false;
        }
      }
      const ids = decision.trims.map((x) => x.viewId);
      return ids.every((id, i) => i === 0 || ids[i - 1]! < id);
    }),
    RUNS,
  );
  t.pass();
});

test('property: the order of the reports does not change the plan', (t) => {
  // Sometimes one report's view is altered, so that conflicts (and their messages) are covered too.
  const withConflicts = fc
    .tuple(scenarioArb, fc.option(fc.tuple(fc.nat(), fc.shuffledSubarray(NODE_IDS.slice(0, 7), { minLength: 1 }))))
    .map(([s, alter]) => {
      if (alter === null) return s.reports;
      const victim = s.reports[alter[0] % s.reports.length]!;
      return s.reports.map((r) => (r === victim ? { ...r, lastView: { ...r.lastView, members: alter[1] } } : r));
    });
  fc.assert(
    fc.property(
      withConflicts.chain((reports) => fc.tuple(fc.constant(reports), fc.shuffledSubarray(reports, { minLength: reports.length, maxLength: reports.length }))),
      ([reports, shuffled]) => isDeepStrictEqual(planRestart(propPolicy, reports), planRestart(propPolicy, shuffled)),
    ),
    RUNS,
  );
  t.pass();
});

test('property: any two reports of one view id that differ block the restart as a conflict', (t) => {
  fc.assert(
    fc.property(
      scenarioArb,
      fc.nat(),
      fc.shuffledSubarray(NODE_IDS.slice(0, 7), { minLength: 1, maxLength: 7 }),
      ({ reports }, pick, members) => {
        const victim = reports[pick % reports.length]!;
        const altered: RestartReport = { ...victim, lastView: { ...victim.lastView, members } };
        const mutated = reports.map((r) => (r === victim ? altered : r));
        const differs = mutated.some((x) => mutated.some((y) => x.lastView.viewId === y.lastView.viewId && !isDeepStrictEqual(x.lastView, y.lastView)));
        const plan = planRestart(propPolicy, mutated);
        if (!differs) return plan.ready ? true : plan.missing.conflict === null;
        return !plan.ready && plan.missing.conflict !== null && plan.message.includes(`view ${victim.lastView.viewId} differs`);
      },
    ),
    RUNS,
  );
  t.pass();
});

// ---------------------------------------------------------------------------------------------------
// Issue #11: the restart quorum takes a majority of every view whose successor it decides, and counts
// only nodes that saved something.

const logPolicy: GroupPolicy = {
  subgroups: [{ name: 'log', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 9, deliveryMode: 'ordered', persistent: true }],
};
const W: View = { viewId: 1, members: [1, 2, 3, 4, 5], layout: layoutFor(logPolicy, [[1, 2, 3, 4, 5]]), previousViewId: 0 };
const X: View = { viewId: 2, members: [1, 2, 3], layout: layoutFor(logPolicy, [[1, 2, 3]]), previousViewId: 1 };
const changeWtoX = { fromViewId: 1, next: X, trims: [[3, 3, 3, 2, 2]], joined: [], removed: [4, 5], transfers: [], lostShards: [] };
const acceptedX = (n: NodeId): RestartReport => ({ ...report(n, W, [{ shardId: 0, version: v(1, 9) }], { highestViewIdSeen: 2 }), acceptedChange: { value: changeWtoX, ballot: 0 } });

test('a restart that adopts an accepted view change X out of W needs a majority of W too (no split-brain restart)', (t) => {
  // 4 and 5 crashed; X = [1, 2, 3] was accepted by 1 and 2 only; then everything failed. A partition
  // {1, 2} | {3, 4, 5} must not let both sides restart: {1, 2} is a majority of X but not of W.
  const minority = notReady(planRestart(logPolicy, [acceptedX(1), acceptedX(2)]));
  t.is(minority.lastView?.viewId, 2);
  t.deepEqual(minority.missing.majority, { have: 2, need: 3, absent: [3, 4, 5], viewId: 1 });
  t.regex(minority.message, /2 of 5 members of view 1 \(the restart adopts view 2, which followed it\) returned with their saved state \(need 3/);
  const majority = ready(planRestart(logPolicy, [report(3, W), report(4, W), report(5, W)]));
  t.is(majority.lastView.viewId, 1);
  // With the mutant that checks X only, both sides restart.
  t.true(planRestart(logPolicy, [acceptedX(1), acceptedX(2)], 'restartQuorumOfAdoptedViewOnly').ready);
  // A majority of W holding X's acceptors adopts X, and needs a majority of X as well.
  const both = ready(planRestart(logPolicy, [acceptedX(1), acceptedX(2), report(4, W), report(5, W)]));
  t.is(both.lastView.viewId, 2);
  t.deepEqual(both.decision.adopted, [X]);
  t.is(both.decision.view.previousViewId, 2);
  t.is(ready(planRestart(logPolicy, [acceptedX(1), report(3, W), report(4, W)])).lastView.viewId, 2);
  const noX = notReady(planRestart(logPolicy, [acceptedX(1), report(4, W), report(5, W)]));
  t.deepEqual(noX.missing.majority, { have: 1, need: 2, absent: [2, 3], viewId: 2 });
});

test('a node back with nothing saved does not count toward the restart majority (a wiped disk)', (t) => {
  // View 0 = [1, 2, 3]; view 1 = [1, 2]. Node 1's disk is replaced; nodes 1 and 3 come back: node 3's
  // view 0 is stale and node 1 knows nothing, so no restart (view 1 is with node 2).
  const view0: View = { viewId: 0, members: [1, 2, 3], layout: layoutFor(logPolicy, [[1, 2, 3]]) };
  const plan = notReady(planRestart(logPolicy, [blankReport(1), report(3, view0)]));
  t.deepEqual(plan.missing.majority, { have: 1, need: 2, absent: [1, 2], viewId: 0 });
  t.true(planRestart(logPolicy, [blankReport(1), report(3, view0)], 'wipedNodeCounts').ready, 'the mutant counts it');
  t.true(planRestart(logPolicy, [report(3, view0)], 'restartQuorumFloorHalf').ready, 'the floor(n/2) mutant takes one of three');
});

test('a joiner back with nothing saved on the disk it joined with counts for the view that admitted it; a wiped one does not', (t) => {
  // View 3 = [2, 4]; the change to view 4 admits joiners 1 and 5 (their disks 1001, 5001) and is accepted
  // by 2 and 4, then everything fails before anyone installs view 4. The joiners come back with nothing
  // saved. View 4 may have been committed, so its majority is needed: 2 of 4 saved members are not
  // enough, but a joiner with the very disk view 4 names never installed view 4 and accepted nothing in it.
  const view3: View = { viewId: 3, members: [2, 4], layout: layoutFor(logPolicy, [[2, 4]]), previousViewId: 2, memberDisks: [2001, 4001] };
  const view4: View = { viewId: 4, members: [2, 4, 1, 5], layout: layoutFor(logPolicy, [[2, 4, 1, 5]]), previousViewId: 3, memberDisks: [2001, 4001, 1001, 5001] };
  const change = { fromViewId: 3, next: view4, trims: [[0, 0]], joined: [1, 5], removed: [], transfers: [], lostShards: [] };
  const saved = (n: NodeId): RestartReport => ({
    ...report(n, view3, [{ shardId: 0, version: v(3, 4) }], { highestViewIdSeen: 4 }), diskId: n * 1000 + 1, acceptedChange: { value: change, ballot: 0 },
  });
  const joiner = (n: NodeId, diskId: number): RestartReport => ({ ...blankReport(n), diskId });
  const stuck = notReady(planRestart(logPolicy, [saved(2), saved(4)]));
  t.deepEqual(stuck.missing.majority, { have: 2, need: 3, absent: [1, 5], viewId: 4 });
  const plan = ready(planRestart(logPolicy, [saved(2), saved(4), joiner(1, 1001)]));
  t.is(plan.lastView.viewId, 4);
  t.deepEqual(plan.decision.view.members, [2, 4, 1]);
  t.deepEqual(plan.decision.view.memberDisks, [2001, 4001, 1001], 'the restart view names the disks its members came back with');
  t.is(shardOf(plan, 0).source, 2);
  // Joiner 1's disk was replaced (a new id) and joiner 5 never had one: neither counts.
  const wiped = notReady(planRestart(logPolicy, [saved(2), saved(4), joiner(1, 1002), { ...blankReport(5) }]));
  t.deepEqual(wiped.missing.majority, { have: 2, need: 3, absent: [1, 5], viewId: 4 });
  t.true(planRestart(logPolicy, [saved(2), saved(4), joiner(1, 1002)], 'wipedNodeCounts').ready, 'the mutant counts the wiped disk');
  // A blank node never counts for a view that does not name its disk (here view 3, which it was never in).
  const view3Only = notReady(planRestart(logPolicy, [report(2, view3), joiner(1, 1001), joiner(5, 5001)]));
  t.deepEqual(view3Only.missing.majority, { have: 1, need: 2, absent: [4], viewId: 3 });
});

test('planStart names the restart a plan belongs to: the newest installed view its chain starts from', (t) => {
  // Plans of one restart decide the same thing (the leader re-proposes an accepted one, see
  // Replica.progressRestart); a plan whose chain adopted X out of W belongs to the restart from W.
  const fromW = ready(planRestart(logPolicy, [report(3, W), report(4, W), report(5, W)]));
  t.is(planStart(fromW.decision), 1);
  const viaX = ready(planRestart(logPolicy, [acceptedX(1), acceptedX(2), report(4, W), report(5, W)]));
  t.is(viaX.decision.lastViewId, 2);
  t.is(planStart(viaX.decision), 1);
  t.is(planStart({ lastViewId: 7, view: { ...X, viewId: 8 }, shards: [], trims: [] }), 7, 'a plan written before `adopted` existed');
});
