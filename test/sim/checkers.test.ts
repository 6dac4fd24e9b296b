// Each checker fires on a hand-made violating history and stays quiet on a correct one.

import test from 'ava';
import {
  checkAcceptedSends,
  checkAll,
  checkLiveness,
  checkNoPhantoms,
  checkPersistence,
  checkTotalOrder,
  checkViewAgreement,
  checkVirtualSynchrony,
} from './checkers.ts';
import { emptyHistory } from './history.ts';
import type { AppEntry, FinalNode, History } from './history.ts';
import type { GroupPolicy, NodeId, ReplicaStatus, View } from '../../node-agent/src/core/types.ts';

// Shard 0: ordered persistent; shard 1: raw.
const policy: GroupPolicy = {
  subgroups: [
    { name: 'log', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true },
    { name: 'feed', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'raw', persistent: false },
  ],
};

function view(viewId: number, members: NodeId[]): View {
  return {
    viewId,
    members,
    layout: {
      shards: [
        { shardId: 0, subgroup: 'log', shardIndex: 0, members, senders: members, deliveryMode: 'ordered', persistent: true },
        { shardId: 1, subgroup: 'feed', shardIndex: 0, members, senders: members, deliveryMode: 'raw', persistent: false },
      ],
    },
  };
}

const V0 = view(0, [1, 2, 3]);
const V1 = view(1, [1, 2]);

function status(node: NodeId, viewId: number, members: NodeId[], over: Partial<ReplicaStatus> = {}): ReplicaStatus {
  return {
    nodeId: node,
    mode: 'active',
    viewId,
    members,
    leader: members[0]!,
    wedged: false,
    waiting: { kind: 'none', message: '' },
    shards: [0, 1].map((shardId) => ({
      shardId,
      subgroup: shardId === 0 ? 'log' : 'feed',
      shardIndex: 0,
      members,
      delivered: { viewId, seq: 0 },
      persistenceFrontier: { viewId, seq: 0 },
      stateReady: true,
    })),
    ...over,
  };
}

const entry = (viewId: number, seq: number, sender: NodeId, payload: string): AppEntry => ({ version: { viewId, seq }, sender, payload });

/**
 * A correct run: view 0 = [1,2,3]; shard 0 delivers m1, m2, m3 (seq 0..2) everywhere; raw shard 1 delivers
 * r1 everywhere; n3 crashes; view 1 = [1,2]; m4 delivered in view 1; the group settles and n1's probe
 * reaches both members.
 */
function goodHistory(): History {
  const h = emptyHistory(policy);
  for (const n of [1, 2, 3]) h.installs.push({ tick: 0, order: 0, node: n, incarnation: 1, view: V0, pendingState: [] });
  const sends: [NodeId, number, string][] = [[1, 0, 'm1'], [2, 0, 'm2'], [3, 0, 'm3'], [1, 1, 'r1'], [2, 0, 'm4'], [1, 0, 'probe-1']];
  for (const [node, shardId, payload] of sends) h.sends.push({ tick: 1, node, incarnation: 1, shardId, payload, result: { ok: true } });
  for (const n of [1, 2, 3]) {
    [['m1', 1], ['m2', 2], ['m3', 3]].forEach(([p, sender], seq) =>
      h.deliveries.push({ tick: 5 + seq, node: n, incarnation: 1, viewId: 0, shardId: 0, version: { viewId: 0, seq }, sender: sender as number, payload: p as string, mode: 'ordered' }),
    );
    h.deliveries.push({ tick: 6, node: n, incarnation: 1, viewId: 0, shardId: 1, version: { viewId: 0, seq: 0 }, sender: 1, payload: 'r1', mode: 'raw' });
  }
  (['m1', 'm2', 'm3'] as const).forEach((payload, rank) => h.wire.push({ viewId: 0, shardId: 0, senderRank: rank, index: 0, sender: rank + 1, payload }));
  h.wire.push({ viewId: 0, shardId: 1, senderRank: 0, index: 0, sender: 1, payload: 'r1' });
  h.acks.push({ tick: 9, node: 1, incarnation: 1, shardId: 0, version: { viewId: 0, seq: 2 } });
  [['m1', 1], ['m2', 2], ['m3', 3]].forEach(([payload, sender], seq) =>
    h.durable.push({ tick: 9, node: 1, incarnation: 1, shardId: 0, frontier: { viewId: 0, seq: 2 }, version: { viewId: 0, seq }, sender: sender as number, payload: payload as string }),
  );
  for (const n of [1, 2]) {
    h.trims.push({ tick: 20, node: n, incarnation: 1, viewId: 0, trims: [[1, 1, 1], [1, 0, 0]] });
    h.installs.push({ tick: 20, order: 20, node: n, incarnation: 1, view: V1, pendingState: [] });
  }
  for (const n of [1, 2]) {
    h.deliveries.push({ tick: 25, node: n, incarnation: 1, viewId: 1, shardId: 0, version: { viewId: 1, seq: 1 }, sender: 2, payload: 'm4', mode: 'ordered' });
    h.deliveries.push({ tick: 30, node: n, incarnation: 1, viewId: 1, shardId: 0, version: { viewId: 1, seq: 2 }, sender: 1, payload: 'probe-1', mode: 'ordered' });
  }
  h.settled = { tick: 28, viewId: 1 };
  h.probes.push({ shardId: 0, sender: 1, payload: 'probe-1', accepted: true, lastRefusal: null });
  h.judgeLiveness = true;
  const log = [entry(0, 0, 1, 'm1'), entry(0, 1, 2, 'm2'), entry(0, 2, 3, 'm3'), entry(1, 1, 2, 'm4'), entry(1, 2, 1, 'probe-1')];
  const up = (n: NodeId): FinalNode => ({
    node: n,
    incarnation: 1,
    state: 'up',
    leaving: false,
    downReason: null,
    status: status(n, 1, [1, 2]),
    disk: [{ shardId: 0, records: log.map((e) => ({ ...e })) }],
    app: [{ shardId: 0, entries: log.map((e) => ({ ...e })) }, { shardId: 1, entries: [entry(0, 0, 1, 'r1')] }],
  });
  h.final = [
    up(1),
    up(2),
    { node: 3, incarnation: 1, state: 'left', leaving: true, downReason: 'exit: left', status: null, disk: [{ shardId: 0, records: log.slice(0, 3) }], app: [] },
  ];
  return h;
}

function delivery(h: History, node: NodeId, viewId: number, seq: number, sender: NodeId, payload: string, extra: Partial<History['deliveries'][number]> = {}): void {
  h.deliveries.push({ tick: 50, node, incarnation: 1, viewId, shardId: 0, version: { viewId, seq }, sender, payload, mode: 'ordered', ...extra });
}

test('a correct history has no violations', (t) => {
  t.deepEqual(checkAll(goodHistory()), []);
});

// ---- total order

test('total order: two nodes delivering different messages at one version', (t) => {
  const h = goodHistory();
  const d = h.deliveries.find((x) => x.node === 2 && x.payload === 'm2')!;
  d.payload = 'm3';
  d.sender = 3;
  const v = checkTotalOrder(h);
  t.true(v.some((x) => /version 0:1: n1#1 delivered 'm2' from n2 but n2#1 delivered 'm3' from n3/.test(x)), v.join('\n'));
  t.true(v.some((x) => /'m3' from n3 delivered at version 0:2 by n1#1 but at 0:1 by n2#1/.test(x)), v.join('\n'));
});

test('total order: a node delivering out of version order', (t) => {
  const h = emptyHistory(policy);
  h.sends.push({ tick: 0, node: 1, incarnation: 1, shardId: 0, payload: 'a', result: { ok: true } }, { tick: 0, node: 1, incarnation: 1, shardId: 0, payload: 'b', result: { ok: true } });
  delivery(h, 1, 0, 1, 1, 'b');
  delivery(h, 1, 0, 0, 1, 'a');
  const v = checkTotalOrder(h);
  t.is(v.length, 1);
  t.regex(v[0]!, /n1#1 delivered shard 0 version 0:0 \('a' from n1\) after version 0:1/);
});

test('total order: a hole (a node skipping a message others delivered before later ones)', (t) => {
  const h = goodHistory();
  h.deliveries = h.deliveries.filter((d) => !(d.node === 2 && d.payload === 'm2'));
  const v = checkTotalOrder(h);
  t.true(v.some((x) => /hole in shard 0 view 0: n2#1 delivered up to seq 2 but skipped seq 1, which n1#1 delivered/.test(x)), v.join('\n'));
});

test('total order: a version received through a state transfer is no hole', (t) => {
  const h = goodHistory();
  h.deliveries = h.deliveries.filter((d) => !(d.node === 2 && d.version.viewId === 0 && d.version.seq <= 1 && d.shardId === 0));
  h.transfers.push({ tick: 4, order: 4, what: 'installed', node: 2, incarnation: 1, peer: 1, shardId: 0, through: { viewId: 0, seq: 1 }, records: 2, entries: [entry(0, 0, 1, 'm1'), entry(0, 1, 2, 'm2')] });
  t.deepEqual(checkTotalOrder(h), []);
  t.deepEqual(checkVirtualSynchrony(h), []);
});

test('total order: a state transfer carrying a different message than was delivered', (t) => {
  const h = goodHistory();
  h.transfers.push({ tick: 4, order: 4, what: 'installed', node: 2, incarnation: 1, peer: 1, shardId: 0, through: { viewId: 0, seq: 0 }, records: 1, entries: [entry(0, 0, 1, 'forged')] });
  t.regex(checkTotalOrder(h).join('\n'), /state transfer from n1 to n2#1 holds 'forged'/);
});

// ---- virtual synchrony

test('virtual synchrony: two survivors delivering different sets in the ending view', (t) => {
  const h = goodHistory();
  h.deliveries = h.deliveries.filter((d) => !(d.node === 2 && d.payload === 'm3'));
  const v = checkVirtualSynchrony(h).join('\n');
  t.regex(v, /view 0 shard 0: n1#1 and n2#1 both moved on to view 1 but delivered different messages in view 0 \(3 vs 2\); only n1: 'm3'/);
  t.regex(v, /n2#1 moved on to view 1 without delivering 'm3' \(seq 2\), inside the ragged trim \[1,1,1\]/);
  t.deepEqual(checkTotalOrder(h), [], 'a shorter prefix is no total-order violation');
});

test('virtual synchrony: a sole survivor that skips messages inside the ragged trim', (t) => {
  const h = goodHistory();
  // n2 never moved on (crashed in view 0): n1 is the only survivor to compare, yet it must deliver the trim.
  h.installs = h.installs.filter((i) => !(i.node === 2 && i.view.viewId === 1));
  h.deliveries = h.deliveries.filter((d) => !(d.node === 1 && d.payload === 'm3'));
  const v = checkVirtualSynchrony(h);
  t.is(v.length, 1, v.join('\n'));
  t.regex(v[0]!, /view 0 shard 0: n1#1 moved on to view 1 without delivering 'm3' \(seq 2\), inside the ragged trim \[1,1,1\]/);
});

test('virtual synchrony: a survivor delivering beyond the ragged trim', (t) => {
  const h = goodHistory();
  h.sends.push({ tick: 1, node: 1, incarnation: 1, shardId: 0, payload: 'm5', result: { ok: true } });
  for (const n of [1, 2]) delivery(h, n, 0, 3, 1, 'm5', { tick: 10 });
  t.regex(checkVirtualSynchrony(h).join('\n'), /n1#1 delivered seq 3, beyond the ragged trim \[1,1,1\]/);
});

test('virtual synchrony: every message inside its sender\'s trim is due, also past another sender\'s missing slot', (t) => {
  // Trim [2, 0, 1]: sender n2 has no message in the view, so the gap-free prefix is seq 0 only, but n1's
  // second message (seq 3) lies inside n1's trim: every survivor must deliver it.
  const h = goodHistory();
  for (const tr of h.trims) tr.trims = [[2, 0, 1], [1, 0, 0]];
  h.sends.push({ tick: 1, node: 1, incarnation: 1, shardId: 0, payload: 'm5', result: { ok: true } });
  h.wire.push({ viewId: 0, shardId: 0, senderRank: 0, index: 1, sender: 1, payload: 'm5' });
  h.deliveries = h.deliveries.filter((d) => d.payload !== 'm2');
  delivery(h, 1, 0, 3, 1, 'm5', { tick: 10 });
  const v = checkVirtualSynchrony(h).join('\n');
  t.regex(v, /n2#1 moved on to view 1 without delivering 'm5' \(seq 3\), inside the ragged trim \[2,0,1\]/);
  t.notRegex(v, /n1#1 moved on to view 1 without delivering/);
  t.notRegex(v, /beyond the ragged trim/);
});

test('virtual synchrony: a member that never received its shard state is not compared', (t) => {
  const h = goodHistory();
  h.deliveries = h.deliveries.filter((d) => !(d.node === 2 && d.shardId === 0 && d.viewId === 0));
  h.installs.find((i) => i.node === 2 && i.view.viewId === 0)!.pendingState = [0];
  t.deepEqual(checkVirtualSynchrony(h), []);
  // A transfer installed before the view (for an earlier plan) does not give it the state in this view.
  h.transfers.push({ tick: 0, order: -1, what: 'installed', node: 2, incarnation: 1, peer: 1, shardId: 0, through: { viewId: -1, seq: -1 }, records: 0, entries: [] });
  t.deepEqual(checkVirtualSynchrony(h), []);
  // One installed during the view does: then the member is judged.
  h.transfers.push({ tick: 10, order: 10, what: 'installed', node: 2, incarnation: 1, peer: 1, shardId: 0, through: { viewId: -1, seq: -1 }, records: 0, entries: [] });
  t.regex(checkVirtualSynchrony(h).join('\n'), /n2#1 moved on to view 1 without delivering 'm1'/);
});

test('virtual synchrony: an ordered delivery outside the view its version names', (t) => {
  const h = goodHistory();
  h.deliveries.push({ tick: 40, node: 1, incarnation: 1, viewId: 1, shardId: 0, version: { viewId: 0, seq: 5 }, sender: 1, payload: 'late', mode: 'ordered' });
  t.regex(checkVirtualSynchrony(h).join('\n'), /n1#1 delivered shard 0 version 0:5 \('late' from n1\) while in view 1/);
  h.deliveries[h.deliveries.length - 1]!.released = true;
  t.notRegex(checkVirtualSynchrony(h).join('\n'), /while in view/, 'released after a state transfer: allowed');
});

test('virtual synchrony (raw): a survivor missing a raw message inside the ragged trim', (t) => {
  const h = goodHistory();
  h.deliveries = h.deliveries.filter((d) => !(d.node === 2 && d.payload === 'r1'));
  const v = checkVirtualSynchrony(h);
  t.is(v.length, 1, v.join('\n'));
  t.regex(v[0]!, /view 0 raw shard 1: n2#1 moved on to view 1 without delivering messages 0 of sender n1, inside the ragged trim \(1\)/);
});

test('virtual synchrony (raw): beyond the trim sets may differ, unless judged exactly', (t) => {
  const h = goodHistory();
  h.sends.push({ tick: 1, node: 1, incarnation: 1, shardId: 1, payload: 'r2', result: { ok: true } });
  h.deliveries.push({ tick: 7, node: 1, incarnation: 1, viewId: 0, shardId: 1, version: { viewId: 0, seq: 3 }, sender: 1, payload: 'r2', mode: 'raw' });
  t.deepEqual(checkVirtualSynchrony(h, 'trim'), []);
  t.regex(checkVirtualSynchrony(h, 'exact').join('\n'), /view 0 shard 1: n1#1 and n2#1 both moved on .* only n1: 'r2'/);
});

// ---- view agreement

test('view agreement: two different views with one id (split brain)', (t) => {
  const h = goodHistory();
  h.installs.push({ tick: 21, order: 21, node: 3, incarnation: 1, view: view(1, [3]), pendingState: [] });
  const v = checkViewAgreement(h);
  t.is(v.length, 1, v.join('\n'));
  t.regex(v[0]!, /split brain: view 1 installed by n1#1 with members \[1,2\] .* and by n3#1 \(t=21\) with members \[3\]/);
});

test('view agreement: installs going backwards, excluding the installer, or trims that differ', (t) => {
  const h = goodHistory();
  h.installs.push({ tick: 22, order: 22, node: 1, incarnation: 1, view: V0, pendingState: [] });
  h.installs.push({ tick: 23, order: 23, node: 3, incarnation: 2, view: V1, pendingState: [] });
  h.trims.push({ tick: 20, node: 3, incarnation: 1, viewId: 0, trims: [[1, 1, 0], [1, 0, 0]] });
  const v = checkViewAgreement(h).join('\n');
  t.regex(v, /n1#1 installed view 0 after view 1/);
  t.regex(v, /n3#2 installed view 1 \[1,2\] that does not include it/);
  t.regex(v, /ragged trims of view 0 differ/);
});

// ---- integrity

test('integrity: a delivery no one sent, from the wrong sender, of a refused send, or twice', (t) => {
  const h = goodHistory();
  h.sends.push({ tick: 1, node: 2, incarnation: 1, shardId: 0, payload: 'refused', result: { ok: false, reason: 'backpressure' } });
  delivery(h, 1, 1, 10, 1, 'ghost');
  delivery(h, 1, 1, 11, 3, 'm1');
  delivery(h, 1, 1, 12, 2, 'refused');
  h.deliveries.push({ tick: 8, node: 2, incarnation: 1, viewId: 0, shardId: 1, version: { viewId: 0, seq: 0 }, sender: 1, payload: 'r1', mode: 'raw' });
  const v = checkNoPhantoms(h).join('\n');
  t.regex(v, /n1#1 delivered 'ghost' in shard 0 that no one sent/);
  t.regex(v, /n1#1 delivered 'm1' as sent by n3, but n1 sent it/);
  t.regex(v, /n1#1 delivered 'refused' in shard 0, but its send was refused \(backpressure\)/);
  t.regex(v, /n2#1 delivered 'r1' twice in shard 1/);
  t.deepEqual(checkNoPhantoms(goodHistory()), []);
});

test('integrity: a sender putting two different messages at one position of its stream', (t) => {
  const h = goodHistory();
  h.wire.push({ viewId: 0, shardId: 0, senderRank: 0, index: 0, sender: 1, payload: 'm1-again' });
  t.regex(checkNoPhantoms(h).join('\n'), /two different messages went out as message 0 of sender rank 0 in view 0 shard 0: 'm1' and 'm1-again'/);
});

test('integrity: a disk holding a message no one sent', (t) => {
  const h = goodHistory();
  h.final![0]!.disk[0]!.records.push(entry(1, 9, 1, 'invented'));
  t.regex(checkNoPhantoms(h).join('\n'), /n1's disk holds 'invented' in shard 0 that no one sent/);
});

// ---- persistence

test('persistence: an acknowledged write missing from an active member\'s log', (t) => {
  const h = goodHistory();
  h.final![1]!.disk[0]!.records = h.final![1]!.disk[0]!.records.filter((r) => r.payload !== 'm2');
  const v = checkPersistence(h);
  t.is(v.length, 1, v.join('\n'));
  t.regex(v[0]!, /persisted write lost: shard 0 version 0:1 \('m2' from n2\) was acknowledged durable \(n1#1 reported frontier 0:2 at t=9\), but n2's log at the end does not hold it/);
});

test('persistence under fsync policy os: a missing write is excused only by a power loss of a member of its shard after it was written', (t) => {
  const lost = (storage: 'fsync' | 'os', crashes: { tick: number; node: NodeId }[]): string[] => {
    const h = goodHistory();
    h.storage = storage;
    h.machineCrashes = crashes;
    h.final![1]!.disk[0]!.records = h.final![1]!.disk[0]!.records.filter((r) => r.payload !== 'm2');
    return checkPersistence(h);
  };
  // m2 was written at t=6 by the members of shard 0 in view 0 (n1, n2, n3).
  t.deepEqual(lost('os', [{ tick: 10, node: 3 }]), [], 'n3 lost power after writing m2: its word is void');
  t.deepEqual(lost('os', [{ tick: 6, node: 2 }]), []);
  t.is(lost('os', []).length, 1, 'no machine crash: nothing excuses it');
  t.is(lost('os', [{ tick: 5, node: 3 }]).length, 1, 'a power loss before m2 was written does not');
  t.is(lost('os', [{ tick: 10, node: 4 }]).length, 1, 'nor a power loss of a node that was not a member of the shard');
  t.is(lost('fsync', [{ tick: 10, node: 3 }]).length, 1, 'under fsync a power loss loses nothing acknowledged');
  // Excused from being missing, never from being changed.
  const h = goodHistory();
  h.storage = 'os';
  h.machineCrashes = [{ tick: 10, node: 3 }];
  h.final![1]!.disk[0]!.records[1] = entry(0, 1, 3, 'm3');
  t.regex(checkPersistence(h).join('\n'), /persisted write changed: shard 0 version 0:1 was acknowledged as 'm2' from n2, n2's log holds 'm3' from n3/);
});

test('persistence: two acknowledged updates at one version', (t) => {
  const h = goodHistory();
  h.durable.push({ tick: 12, node: 2, incarnation: 1, shardId: 0, frontier: { viewId: 0, seq: 2 }, version: { viewId: 0, seq: 1 }, sender: 3, payload: 'm3' });
  t.regex(checkPersistence(h).join('\n'), /two acknowledged updates at shard 0 version 0:1: 'm2' from n2 \(n1#1, frontier 0:2\) and 'm3' from n3 \(n2#1, frontier 0:2\)/);
});

test('persistence: writes above every acknowledged frontier may be lost', (t) => {
  const h = goodHistory();
  h.final![1]!.disk[0]!.records = h.final![1]!.disk[0]!.records.filter((r) => r.payload !== 'm4' && r.payload !== 'probe-1');
  t.deepEqual(checkPersistence(h), []);
});

test('persistence: a log holding another message at a delivered version', (t) => {
  const h = goodHistory();
  h.final![2]!.disk[0]!.records[1] = entry(0, 1, 3, 'm3');
  t.regex(checkPersistence(h).join('\n'), /n3's log of shard 0 holds 'm3' from n3 at version 0:1, where n1#1 delivered 'm2' from n2/);
});

test('persistence: members without the shard state yet are not judged', (t) => {
  const h = goodHistory();
  h.final![1]!.disk = [];
  h.final![1]!.status!.shards[0]!.stateReady = false;
  t.deepEqual(checkPersistence(h), []);
});

// ---- liveness

test('liveness: a node down, stuck restarting, wedged or in another view at the end', (t) => {
  const h = goodHistory();
  h.final!.push(
    { node: 4, incarnation: 2, state: 'down', leaving: false, downReason: 'crash', status: null, disk: [], app: [] },
    { node: 5, incarnation: 1, state: 'up', leaving: false, downReason: null, status: status(5, -1, [], { mode: 'restarting', waiting: { kind: 'restartQuorum', message: 'restart quorum not met' }, shards: [] }), disk: [], app: [] },
  );
  h.final![1]!.status = status(2, 0, [1, 2, 3], { wedged: true, waiting: { kind: 'minority', message: 'only 1 of 3 reachable' } });
  const v = checkLiveness(h).join('\n');
  t.regex(v, /n4 is down at the end \(crash\)/);
  t.regex(v, /n5 is still restarting at the end \(waiting, restartQuorum: restart quorum not met\)/);
  t.regex(v, /n2 is wedged in view 0 at the end \(waiting, minority: only 1 of 3 reachable\)/);
  t.regex(v, /nodes end in different views: n1 in 1, n2 in 0/);
});

test('liveness: a probe not applied, not accepted, or a group that never settled', (t) => {
  const h = goodHistory();
  h.deliveries = h.deliveries.filter((d) => !(d.node === 2 && d.payload === 'probe-1'));
  h.final![1]!.app[0]!.entries = h.final![1]!.app[0]!.entries.filter((e) => e.payload !== 'probe-1');
  h.probes.push({ shardId: 1, sender: 2, payload: 'probe-2', accepted: false, lastRefusal: 'backpressure' });
  const v = checkLiveness(h).join('\n');
  t.regex(v, /probe 'probe-1' from n1 in shard 0 was never applied by member n2/);
  t.regex(v, /probe 'probe-2' from n2 in shard 1 was never accepted by send \(last refusal: backpressure\)/);
  const unsettled = goodHistory();
  unsettled.settled = null;
  unsettled.probes = [];
  t.deepEqual(checkLiveness(unsettled), ['liveness: the group never settled in one view, so no probe was sent']);
});

test('liveness: replicas of an ordered shard that end with different states', (t) => {
  const h = goodHistory();
  h.final![1]!.app[0]!.entries.splice(1, 1);
  t.regex(checkLiveness(h).join('\n'), /replicas of shard 0 diverge at the end: n1 and n2 differ at entry 1: 0:1 'm2' vs 0:2 'm3'/);
});

test('liveness: a node that asked to leave and still runs', (t) => {
  const h = goodHistory();
  h.final![0]!.leaving = true;
  t.regex(checkLiveness(h).join('\n'), /n1 asked to leave but is still running at the end/);
});

test('checkAll judges liveness only when asked or when the run reached its quiet phase', (t) => {
  const h = goodHistory();
  h.final![0]!.state = 'down';
  h.judgeLiveness = false;
  t.deepEqual(checkAll(h), []);
  t.true(checkAll(h, { liveness: true }).length > 0);
});

// ---- issue #11: lost sends, one successor per view, restart plans that disagree with installed views

test('lost send: an accepted send of a sender still up that nobody delivered, unless it was reported failed', (t) => {
  const h = goodHistory();
  h.sends.push({ tick: 26, node: 1, incarnation: 1, shardId: 0, payload: 'vanished', result: { ok: true } });
  t.deepEqual(checkAcceptedSends(h), ["lost send: n1#1 accepted 'vanished' for shard 0 at t=26, is still running, and no one delivered it (no error was reported either)"]);
  t.true(checkAll(h).some((v) => v.startsWith('lost send')), 'checkAll runs it with liveness');
  const failed = goodHistory();
  failed.sends.push({ tick: 26, node: 1, incarnation: 1, shardId: 0, payload: 'vanished', result: { ok: true } });
  failed.sendFailures.push({ tick: 27, node: 1, incarnation: 1, shardId: 0, payload: 'vanished', reason: 'moved' });
  t.deepEqual(checkAcceptedSends(failed), []);
  const senderDied = goodHistory();
  senderDied.sends.push({ tick: 26, node: 3, incarnation: 1, shardId: 0, payload: 'died-with-sender', result: { ok: true } });
  t.deepEqual(checkAcceptedSends(senderDied), [], 'n3 left: its accepted sends may be lost');
});

test('view agreement: two installed views that follow the same view', (t) => {
  const h = goodHistory();
  h.installs.push({ tick: 30, order: 30, node: 1, incarnation: 2, view: { ...view(2, [1, 2]), previousViewId: 0 }, pendingState: [] });
  h.installs.push({ tick: 31, order: 31, node: 3, incarnation: 2, view: { ...view(3, [3]), previousViewId: 0 }, pendingState: [] });
  t.regex(checkViewAgreement(h).join('\n'), /two views follow view 0: n1#2 installed view 2 \[1,2\] and n3#2 installed view 3 \[3\]/);
});

test('view agreement: a carried-out restart plan that adopted a view id installed with other members', (t) => {
  const h = goodHistory();
  const restartView = { ...view(3, [1, 3]), previousViewId: 1 };
  h.installs.push({ tick: 40, order: 40, node: 3, incarnation: 2, view: restartView, pendingState: [] });
  h.restartPlans.push({ tick: 39, node: 3, incarnation: 2, lastViewId: 1, adopted: [view(1, [1, 3])], view: restartView });
  t.regex(checkViewAgreement(h).join('\n'), /split brain: restart view 3 followed view 1 \[1,3\] \(adopted by n3's plan\), but view 1 was installed with other members or layout/);
  // A plan that was never carried out is not judged.
  const unused = goodHistory();
  unused.restartPlans.push({ tick: 39, node: 3, incarnation: 2, lastViewId: 1, adopted: [view(1, [1, 3])], view: restartView });
  t.deepEqual(checkViewAgreement(unused), []);
});
