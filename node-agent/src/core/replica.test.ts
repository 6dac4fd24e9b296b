// Unit tests of the Replica's API edges. Whole-group behaviour is tested by the simulator (test/sim/).
import test from 'ava';
import { Prng } from './prng.ts';
import { Replica } from './replica.ts';
import { DEFAULT_TIMING, type GroupPolicy, type Message, type ReplicaConfig } from './types.ts';

const policy: GroupPolicy = {
  subgroups: [
    { name: 'kv', shards: 1, minNodesPerShard: 2, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true, senderNodeIds: [1, 2] },
  ],
};

function config(nodeId: number, over: Partial<ReplicaConfig> = {}): ReplicaConfig {
  return { ...DEFAULT_TIMING, nodeId, policy, ...over };
}

function founders(over: Partial<ReplicaConfig> = {}): Replica[] {
  return [1, 2, 3].map((id) => new Replica(config(id, over), { kind: 'bootstrap', members: [1, 2, 3] }, new Prng(id)));
}

/** Runs the replicas on a perfect network (every message delivered at the next tick). */
function run(replicas: Replica[], ticks: number, onDeliver?: (node: number, text: string) => void): void {
  const byId = new Map(replicas.map((r) => [r.status().nodeId, r]));
  let inflight: { to: number; message: Message }[] = [];
  const drain = (r: Replica): void => {
    if (!r.hasReady()) return;
    const rd = r.ready();
    for (const d of rd.deliver) onDeliver?.(r.status().nodeId, new TextDecoder().decode(d.payload));
    inflight.push(...rd.send);
    r.advance();
  };
  for (let t = 0; t < ticks; t++) {
    for (const r of replicas) {
      r.tick();
      r.assertInvariants();
      drain(r);
    }
    const now = inflight;
    inflight = [];
    for (const { to, message } of now) {
      const r = byId.get(to);
      if (!r) continue;
      r.step(message);
      r.assertInvariants();
      drain(r);
    }
  }
}

test('founders install view 0 with the allocated layout', (t) => {
  const [a] = founders();
  const status = a!.status();
  t.is(status.mode, 'active');
  t.is(status.viewId, 0);
  t.deepEqual(status.members, [1, 2, 3]);
  t.deepEqual(status.shards.map((s) => s.members), [[1, 2, 3]]);
});

test('a founder list that cannot host the policy is refused with the allocator\'s reason', (t) => {
  t.throws(() => new Replica(config(1), { kind: 'bootstrap', members: [1] }, new Prng(1)), { message: /cannot host the policy: .*needs 2 nodes/ });
  t.throws(() => new Replica(config(4), { kind: 'bootstrap', members: [1, 2] }, new Prng(1)), { message: /not in the founding members/ });
});

test('send refuses with a reason: not a sender, too large, unknown shard, backpressure', (t) => {
  const [a, , c] = founders({ pendingSendsMax: 2, windowSize: 1, payloadBytesMax: 8 });
  t.deepEqual(c!.send(0, new Uint8Array(1)), { ok: false, reason: 'notSender' });
  t.deepEqual(a!.send(5, new Uint8Array(1)), { ok: false, reason: 'notMember' });
  t.deepEqual(a!.send(0, new Uint8Array(9)), { ok: false, reason: 'tooLarge' });
  // Window 1: the first message is in flight, the next two wait, the fourth is refused.
  t.deepEqual(a!.send(0, new Uint8Array(1)), { ok: true });
  t.deepEqual(a!.send(0, new Uint8Array(1)), { ok: true });
  t.deepEqual(a!.send(0, new Uint8Array(1)), { ok: true });
  t.deepEqual(a!.send(0, new Uint8Array(1)), { ok: false, reason: 'backpressure' });
  a!.assertInvariants();
});

test('ordered messages from two senders are delivered in the same round-robin order everywhere', (t) => {
  const replicas = founders();
  const seen = new Map<number, string[]>();
  replicas[0]!.send(0, new TextEncoder().encode('a1'));
  replicas[0]!.send(0, new TextEncoder().encode('a2'));
  replicas[1]!.send(0, new TextEncoder().encode('b1'));
  run(replicas, 30, (node, text) => seen.set(node, [...(seen.get(node) ?? []), text]));
  t.deepEqual(seen.get(1), ['a1', 'b1', 'a2']);
  t.deepEqual(seen.get(2), seen.get(1));
  t.deepEqual(seen.get(3), seen.get(1));
});

test('a message is not delivered until every member has received it', (t) => {
  const replicas = founders();
  const [a, b] = replicas;
  a!.send(0, new TextEncoder().encode('x'));
  const out = a!.ready();
  a!.advance();
  t.deepEqual(out.deliver, [], 'the sender alone has it: not stable');
  // Only node 2 receives it: still not stable anywhere (node 3 has not).
  for (const e of out.send) if (e.to === 2 && e.message.kind === 'data') b!.step(e.message);
  t.deepEqual(b!.hasReady() ? b!.ready().deliver : [], []);
});

test('a malformed row from a peer is ignored, not fatal', (t) => {
  const [a] = founders();
  const bad = { kind: 'row', from: 2, viewId: 0, row: { pushCount: 99, suspected: 'nope' } } as unknown as Message;
  t.notThrows(() => a!.step(bad));
  a!.assertInvariants();
  t.is(a!.status().mode, 'active');
});

test('a silent member is suspected, the others wedge and install a view without it', (t) => {
  const replicas = founders();
  run(replicas.slice(0, 2), DEFAULT_TIMING.suspectTicks * 3);
  for (const r of replicas.slice(0, 2)) {
    t.is(r.status().viewId, 1);
    t.deepEqual(r.status().members, [1, 2]);
    t.false(r.status().wedged);
  }
});

test('a lone member of three is a minority: it wedges and says so', (t) => {
  const replicas = founders();
  run(replicas.slice(0, 1), DEFAULT_TIMING.suspectTicks * 3);
  const status = replicas[0]!.status();
  t.is(status.viewId, 0);
  t.true(status.wedged);
  t.is(status.waiting.kind, 'minority');
  t.regex(status.waiting.message, /only 1 of 3 members reachable/);
});

test('an idle sender fills its slot of a round as soon as another sender reaches it: a message is delivered two hops after it is sent', (t) => {
  // Senders are nodes 1 and 2; node 2 stays idle. Hops: every message in flight is stepped, then every
  // replica's Ready is drained (no ticks, so nothing moves but what the messages cause).
  const replicas = founders();
  const byId = new Map(replicas.map((r) => [r.status().nodeId, r]));
  let inflight: { to: number; message: Message }[] = [];
  const delivered = new Map<number, string[]>([[1, []], [2, []], [3, []]]);
  const drainAll = (): void => {
    for (const r of replicas) {
      r.pushRowIfDirty();
      while (r.hasReady()) {
        const rd = r.ready();
        for (const d of rd.deliver) delivered.get(r.status().nodeId)!.push(new TextDecoder().decode(d.payload));
        inflight.push(...rd.send);
        r.advance();
      }
    }
  };
  const hop = (): void => {
    const now = inflight;
    inflight = [];
    for (const { to, message } of now) {
      byId.get(to)!.step(message);
      byId.get(to)!.assertInvariants();
    }
    drainAll();
  };
  const hopsUntilEveryoneDelivered = (text: string): number => {
    t.true(byId.get(1)!.send(0, new TextEncoder().encode(text)).ok);
    drainAll();
    for (let hops = 1; hops <= 10; hops++) {
      hop();
      if ([...delivered.values()].every((d) => d.includes(text))) return hops;
    }
    return Infinity;
  };
  t.is(hopsUntilEveryoneDelivered('first'), 2);
  while (inflight.length > 0) hop(); // quiesce
  t.is(hopsUntilEveryoneDelivered('second'), 2, 'node 2 answered "first" with its null of round 0 at once');
  t.is(hopsUntilEveryoneDelivered('third'), 2);
  for (const d of delivered.values()) t.deepEqual(d, ['first', 'second', 'third']);
});

test('a member that keeps receiving is not sent the window again: no retransmission while a stream flows', (t) => {
  // A steady stream from node 1: its peers always lag by what is in flight, but they make progress, so
  // nothing is resent (resending the window every retransmitTicks would double a busy sender's traffic).
  const replicas = founders({ retransmitTicks: 3 });
  const [a] = replicas;
  let sent = 0;
  let dataFrames = 0;
  const byId = new Map(replicas.map((r) => [r.status().nodeId, r]));
  let inflight: { to: number; message: Message }[] = [];
  const drain = (r: Replica): void => {
    while (r.hasReady()) {
      const rd = r.ready();
      for (const e of rd.send) if (e.message.kind === 'data' && e.message.from === 1 && e.message.payload !== null) dataFrames++;
      inflight.push(...rd.send);
      r.advance();
    }
  };
  for (let tick = 0; tick < 60; tick++) {
    for (let i = 0; i < 3 && tick < 50; i++) if (a!.send(0, new TextEncoder().encode(`m${sent}`)).ok) sent++;
    for (const r of replicas) {
      r.tick();
      drain(r);
    }
    const now = inflight;
    inflight = [];
    for (const { to, message } of now) {
      byId.get(to)!.step(message);
      drain(byId.get(to)!);
    }
  }
  t.true(sent >= 100);
  t.is(dataFrames, 2 * sent, 'each message went to each of the 2 peers once');
  for (const r of replicas) t.is(r.status().shards[0]!.delivered.seq + 1 >= sent, true);
});

test('a write delivered by the ragged-edge cleanup of a view change is reported persisted in the new view, without waiting for the next write', (t) => {
  const replicas = founders();
  const byId = new Map(replicas.map((r) => [r.status().nodeId, r]));
  const frontiers = new Map<number, { viewId: number; seq: number }[]>([[1, []], [2, []], [3, []]]);
  const delivered = new Map<number, { text: string; version: { viewId: number; seq: number } }[]>([[1, []], [2, []], [3, []]]);
  let inflight: { to: number; message: Message }[] = [];
  let crashed: number | null = null;
  const drain = (r: Replica): void => {
    const id = r.status().nodeId;
    while (r.hasReady()) {
      const rd = r.ready();
      for (const d of rd.deliver) delivered.get(id)!.push({ text: new TextDecoder().decode(d.payload), version: d.version });
      for (const f of rd.persistenceFrontiers) frontiers.get(id)!.push(f.version);
      inflight.push(...rd.send);
      r.advance();
    }
  };
  const tick = (): void => {
    for (const r of replicas) {
      if (r.status().nodeId === crashed) continue;
      r.tick();
      drain(r);
    }
    const now = inflight;
    inflight = [];
    for (const { to, message } of now) {
      if (to === crashed || message.from === crashed) continue;
      const r = byId.get(to)!;
      r.step(message);
      r.assertInvariants();
      drain(r);
    }
  };
  for (let i = 0; i < 5; i++) tick();
  // Node 3 crashes as node 1 sends: nodes 1 and 2 receive "x", node 3 never acknowledges it, so it is
  // delivered only by the cleanup of the view change that removes node 3.
  crashed = 3;
  t.true(byId.get(1)!.send(0, new TextEncoder().encode('x')).ok);
  for (let i = 0; i < 400 && byId.get(1)!.status().members.length === 3; i++) tick();
  t.deepEqual(byId.get(1)!.status().members, [1, 2], 'node 3 was removed');
  for (let i = 0; i < 10; i++) tick();
  for (const id of [1, 2]) {
    const x = delivered.get(id)!.find((d) => d.text === 'x');
    t.truthy(x, `node ${id} delivered x`);
    t.is(x!.version.viewId, 0, 'x belongs to the view that ended');
    const last = frontiers.get(id)!.at(-1);
    t.truthy(last, `node ${id} reported a persistence frontier`);
    t.deepEqual(last, x!.version, `node ${id}'s frontier covers x with no later write`);
    t.deepEqual(byId.get(id)!.status().shards[0]!.persistenceFrontier, x!.version, `node ${id}'s status shows it`);
  }
});

test('a late retry of the join request a member was admitted with does not get it suspected, even views later; a new incarnation does', (t) => {
  const replicas = founders();
  const joiner = new Replica(config(4), { kind: 'join', contacts: [1] }, new Prng(4));
  const all = [...replicas, joiner];
  const later = new Replica(config(5), { kind: 'join', contacts: [2] }, new Prng(5));
  const byId = new Map(all.map((r) => [r.status().nodeId, r]));
  let inflight: { to: number; message: Message }[] = [];
  const joinRequests: Message[] = [];
  const drain = (r: Replica): void => {
    while (r.hasReady()) {
      const rd = r.ready();
      for (const e of rd.send) if (e.message.kind === 'joinRequest') joinRequests.push(e.message);
      inflight.push(...rd.send);
      r.advance();
    }
  };
  const tick = (): void => {
    for (const r of all) {
      r.tick();
      drain(r);
    }
    const now = inflight;
    inflight = [];
    for (const { to, message } of now) {
      const r = byId.get(to);
      if (!r) continue;
      r.step(message);
      r.assertInvariants();
      drain(r);
    }
  };
  for (let i = 0; i < 200 && !(byId.get(1)!.status().members.includes(4) && joiner.status().mode === 'active'); i++) tick();
  t.deepEqual(byId.get(1)!.status().members, [1, 2, 3, 4], 'node 4 was admitted');
  const admittedWith = joinRequests.filter((m) => m.from === 4).at(-1)!;
  // Another change (node 5 joins): the welcome of node 4 is no longer at hand.
  all.push(later);
  byId.set(5, later);
  for (let i = 0; i < 200 && !(byId.get(1)!.status().members.includes(5) && later.status().mode === 'active'); i++) tick();
  t.deepEqual(byId.get(1)!.status().members, [1, 2, 3, 4, 5], 'node 5 was admitted');
  const viewAfterJoin = byId.get(1)!.status().viewId;
  for (let i = 0; i < 50; i++) tick();
  // A retry that was still in flight arrives late at every member: nothing happens.
  for (const id of [1, 2, 3]) {
    byId.get(id)!.step(admittedWith);
    drain(byId.get(id)!);
  }
  for (let i = 0; i < 100; i++) tick();
  t.is(byId.get(1)!.status().viewId, viewAfterJoin, 'no view change');
  t.deepEqual(byId.get(1)!.status().members, [1, 2, 3, 4, 5]);
  // A request from a new incarnation means node 4 restarted: its old incarnation is suspected.
  if (admittedWith.kind !== 'joinRequest') throw new Error('not a join request');
  byId.get(1)!.step({ ...admittedWith, incarnation: admittedWith.incarnation + 1 });
  drain(byId.get(1)!);
  for (let i = 0; i < 200 && byId.get(1)!.status().viewId === viewAfterJoin; i++) tick();
  t.true(byId.get(1)!.status().viewId > viewAfterJoin, 'a view change replaced node 4\'s old incarnation');
});
