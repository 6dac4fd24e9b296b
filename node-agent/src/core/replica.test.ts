// Unit tests of the Replica's API edges. Whole-group behaviour is tested by the simulator (test/sim/).
import test from 'ava';
import { Prng } from './prng.ts';
import { Replica } from './replica.ts';
import { DEFAULT_TIMING, type GroupPolicy, type Message, type Ready, type ReplicaConfig } from './types.ts';

const policy: GroupPolicy = {
  subgroups: [
    { name: 'kv', shards: 1, minNodesPerShard: 2, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true, senderNodeIds: [1, 2] },
  ],
};

function config(nodeId: number, over: Partial<ReplicaConfig> = {}): ReplicaConfig {
  return { ...DEFAULT_TIMING, nodeId, policy, ...over };
}

/** Founders 1, 2, 3 that exchanged their foundingHellos and installed view 0 (their Readys consumed). */
function founders(over: Partial<ReplicaConfig> = {}): Replica[] {
  const replicas = [1, 2, 3].map((id) => new Replica(config(id, over), { kind: 'bootstrap', members: [1, 2, 3] }, new Prng(id)));
  const net = new Net(replicas);
  net.drainAll();
  for (let i = 0; i < 5 && net.inflight.length > 0; i++) net.hop();
  if (!replicas.every((r) => r.status().mode === 'active')) throw new Error('the founders did not install view 0');
  net.inflight = [];
  return replicas;
}

/**
 * A perfect network for replicas in one test: `tick()` ticks every replica and then delivers every
 * message sent (one hop); `hop()` only delivers (no time passes). Every Ready is drained at once and
 * shown to `observe`; messages to or from a crashed node are lost; invariants are checked after every step.
 */
class Net {
  readonly byId = new Map<number, Replica>();
  inflight: { to: number; message: Message }[] = [];
  readonly crashed = new Set<number>();

  constructor(replicas: Replica[], private readonly observe: (node: number, ready: Ready) => void = () => {}) {
    for (const r of replicas) this.add(r);
  }

  add(r: Replica): void {
    this.byId.set(r.status().nodeId, r);
  }

  get(id: number): Replica {
    return this.byId.get(id)!;
  }

  drain(r: Replica): void {
    r.pushRowIfDirty();
    while (r.hasReady()) {
      const rd = r.ready();
      this.observe(r.status().nodeId, rd);
      this.inflight.push(...rd.send);
      r.advance();
    }
  }

  drainAll(): void {
    for (const r of this.byId.values()) this.drain(r);
  }

  hop(): void {
    const now = this.inflight;
    this.inflight = [];
    for (const { to, message } of now) {
      const r = this.byId.get(to);
      if (!r || this.crashed.has(to) || this.crashed.has(message.from)) continue;
      r.step(message);
      r.assertInvariants();
      this.drain(r);
    }
  }

  tick(): void {
    for (const [id, r] of this.byId) {
      if (this.crashed.has(id)) continue;
      r.tick();
      r.assertInvariants();
      this.drain(r);
    }
    this.hop();
  }

  /** Ticks until `done` holds (at most `ticksMax`); whether it holds. */
  tickUntil(done: () => boolean, ticksMax: number): boolean {
    for (let i = 0; i < ticksMax && !done(); i++) this.tick();
    return done();
  }
}

const text = (payload: Uint8Array): string => new TextDecoder().decode(payload);

/** Runs the replicas on a perfect network (every message delivered at the next tick). */
function run(replicas: Replica[], ticks: number, onDeliver?: (node: number, text: string) => void): void {
  const net = new Net(replicas, (node, rd) => { for (const d of rd.deliver) onDeliver?.(node, text(d.payload)); });
  for (let t = 0; t < ticks; t++) net.tick();
}

test('founders install view 0 with the allocated layout', (t) => {
  const [a] = founders();
  const status = a!.status();
  t.is(status.mode, 'active');
  t.is(status.viewId, 0);
  t.deepEqual(status.members, [1, 2, 3]);
  t.deepEqual(status.shards.map((s) => s.members), [[1, 2, 3]]);
});

test('founding: view 0 is installed only once every founder confirmed it; a lost hello is sent again', (t) => {
  const rs = [1, 2, 3].map((id) => new Replica(config(id), { kind: 'bootstrap', members: [1, 2, 3] }, new Prng(id)));
  const net = new Net(rs);
  net.crashed.add(3); // node 3 is not up yet: what it is sent is lost
  net.drainAll();
  for (let i = 0; i < 3; i++) net.hop();
  for (const r of rs) t.is(r.status().mode, 'joining', 'nobody installs view 0 while a founder is silent');
  t.regex(net.get(1).status().waiting.message, /^founding: waiting for founding member\(s\) 3 to confirm view 0$/);
  net.crashed.delete(3);
  t.true(net.tickUntil(() => rs.every((r) => r.status().mode === 'active' && r.status().viewId === 0), 50), rs.map((r) => r.status().waiting.message).join('; '));
  t.deepEqual(net.get(3).status().members, [1, 2, 3]);
});

test('founding: a founder whose peers already run the group joins it instead of founding a view 0 of its own', (t) => {
  // Nodes 1 and 2 founded a group of [1, 2] and run in it; node 3 starts with a manifest that makes it a
  // founder of [1, 2, 3] (issue 15: a wrong founding count). It must never install a view 0 of its own.
  const policy2: GroupPolicy = { subgroups: [{ name: 'kv', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true }] };
  const running = [1, 2].map((id) => new Replica(config(id, { policy: policy2 }), { kind: 'bootstrap', members: [1, 2] }, new Prng(id)));
  const installsOf3: number[] = [];
  const net = new Net(running, (node, ready) => {
    if (node === 3 && ready.installView) installsOf3.push(ready.installView.viewId);
  });
  net.drainAll();
  t.true(net.tickUntil(() => running.every((r) => r.status().mode === 'active'), 20));
  const late = new Replica(config(3, { policy: policy2 }), { kind: 'bootstrap', members: [1, 2, 3] }, new Prng(3));
  net.add(late);
  net.drain(late);
  t.is(late.status().mode, 'joining', 'no view 0 of its own at the start');
  t.true(net.tickUntil(() => late.status().mode === 'active', 200), late.status().waiting.message);
  // It was admitted by the running group (a view after 0 that contains it), never in a view 0 of its own.
  t.deepEqual(installsOf3, [1]);
  t.true(late.status().viewId > 0, `view ${late.status().viewId}`);
  t.deepEqual(net.get(1).status().members, late.status().members);
  t.true(late.status().members.includes(3));
});

test('founding: a founder that meets a restarting group reports as a blank member; one with another founder list waits and says why', (t) => {
  const a = new Replica(config(1), { kind: 'bootstrap', members: [1, 2, 3] }, new Prng(1));
  a.step({ kind: 'foundingHello', from: 2, members: [1, 2, 3, 4] });
  a.assertInvariants();
  t.is(a.status().mode, 'joining');
  t.regex(a.status().waiting.message, /node 2 founds a group of \[1, 2, 3, 4\], this node one of \[1, 2, 3\]: the members' manifests differ/);
  const b = new Replica(config(1), { kind: 'bootstrap', members: [1, 2, 3] }, new Prng(1));
  b.step({ kind: 'restartReport', from: 2, report: { nodeId: 2, lastView: { viewId: 4, members: [2, 3], layout: { shards: [] } }, highestViewIdSeen: 4, trims: [], logTails: [], promised: null } as never });
  b.assertInvariants();
  t.is(b.status().mode, 'restarting', 'a blank member of the restarting group, never a founder of a new one');
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
  // Senders are nodes 1 and 2; node 2 stays idle. Hops only (no ticks), so nothing moves but what the
  // messages cause.
  const delivered = new Map<number, string[]>([[1, []], [2, []], [3, []]]);
  const net = new Net(founders(), (node, rd) => { for (const d of rd.deliver) delivered.get(node)!.push(text(d.payload)); });
  const hopsUntilEveryoneDelivered = (message: string): number => {
    t.true(net.get(1).send(0, new TextEncoder().encode(message)).ok);
    net.drainAll();
    for (let hops = 1; hops <= 10; hops++) {
      net.hop();
      if ([...delivered.values()].every((d) => d.includes(message))) return hops;
    }
    return Infinity;
  };
  t.is(hopsUntilEveryoneDelivered('first'), 2);
  while (net.inflight.length > 0) net.hop(); // quiesce
  t.is(hopsUntilEveryoneDelivered('second'), 2, 'node 2 answered "first" with its null of round 0 at once');
  t.is(hopsUntilEveryoneDelivered('third'), 2);
  for (const d of delivered.values()) t.deepEqual(d, ['first', 'second', 'third']);
});

test('a member that keeps receiving is not sent the window again: no retransmission while a stream flows', (t) => {
  // A steady stream from node 1: its peers always lag by what is in flight, but they make progress, so
  // nothing is resent (resending the window every retransmitTicks would double a busy sender's traffic).
  let dataFrames = 0;
  const net = new Net(founders({ retransmitTicks: 3 }), (_node, rd) => {
    for (const e of rd.send) if (e.message.kind === 'data' && e.message.from === 1 && e.message.payload !== null) dataFrames++;
  });
  let sent = 0;
  for (let tick = 0; tick < 60; tick++) {
    for (let i = 0; i < 3 && tick < 50; i++) if (net.get(1).send(0, new TextEncoder().encode(`m${sent}`)).ok) sent++;
    net.tick();
  }
  t.true(sent >= 100);
  t.is(dataFrames, 2 * sent, 'each message went to each of the 2 peers once');
});

test('a write delivered by the ragged-edge cleanup of a view change is reported persisted in the new view, without waiting for the next write', (t) => {
  const frontiers = new Map<number, { viewId: number; seq: number }[]>([[1, []], [2, []], [3, []]]);
  const delivered = new Map<number, { text: string; version: { viewId: number; seq: number } }[]>([[1, []], [2, []], [3, []]]);
  const net = new Net(founders(), (node, rd) => {
    for (const d of rd.deliver) delivered.get(node)!.push({ text: text(d.payload), version: d.version });
    for (const f of rd.persistenceFrontiers) frontiers.get(node)!.push(f.version);
  });
  for (let i = 0; i < 5; i++) net.tick();
  // Node 3 crashes as node 1 sends: nodes 1 and 2 receive "x", node 3 never acknowledges it, so it is
  // delivered only by the cleanup of the view change that removes node 3.
  net.crashed.add(3);
  t.true(net.get(1).send(0, new TextEncoder().encode('x')).ok);
  t.true(net.tickUntil(() => net.get(1).status().members.length === 2, 400), 'node 3 was removed');
  t.deepEqual(net.get(1).status().members, [1, 2]);
  for (let i = 0; i < 10; i++) net.tick();
  for (const id of [1, 2]) {
    const x = delivered.get(id)!.find((d) => d.text === 'x');
    t.truthy(x, `node ${id} delivered x`);
    t.is(x!.version.viewId, 0, 'x belongs to the view that ended');
    const last = frontiers.get(id)!.at(-1);
    t.truthy(last, `node ${id} reported a persistence frontier`);
    t.deepEqual(last, x!.version, `node ${id}'s frontier covers x with no later write`);
    t.deepEqual(net.get(id).status().shards[0]!.persistenceFrontier, x!.version, `node ${id}'s status shows it`);
  }
});

test('a late retry of the join request a member was admitted with does not get it suspected, even views later; a new incarnation does', (t) => {
  const joinRequests: Message[] = [];
  const net = new Net(founders(), (_node, rd) => { for (const e of rd.send) if (e.message.kind === 'joinRequest') joinRequests.push(e.message); });
  const joiner = new Replica(config(4), { kind: 'join', contacts: [1] }, new Prng(4));
  net.add(joiner);
  const leader = net.get(1);
  t.true(net.tickUntil(() => leader.status().members.includes(4) && joiner.status().mode === 'active', 200), 'node 4 was admitted');
  const admittedWith = joinRequests.filter((m) => m.from === 4).at(-1)!;
  // Another change (node 5 joins): the welcome of node 4 is no longer at hand.
  const later = new Replica(config(5), { kind: 'join', contacts: [2] }, new Prng(5));
  net.add(later);
  t.true(net.tickUntil(() => leader.status().members.includes(5) && later.status().mode === 'active', 200), 'node 5 was admitted');
  t.deepEqual(leader.status().members, [1, 2, 3, 4, 5]);
  const viewAfterJoin = leader.status().viewId;
  for (let i = 0; i < 50; i++) net.tick();
  // A retry that was still in flight arrives late at every member: nothing happens.
  for (const id of [1, 2, 3]) {
    net.get(id).step(admittedWith);
    net.drain(net.get(id));
  }
  for (let i = 0; i < 100; i++) net.tick();
  t.is(leader.status().viewId, viewAfterJoin, 'no view change');
  t.deepEqual(leader.status().members, [1, 2, 3, 4, 5]);
  // A request from a new incarnation means node 4 restarted: its old incarnation is suspected.
  if (admittedWith.kind !== 'joinRequest') throw new Error('not a join request');
  leader.step({ ...admittedWith, incarnation: admittedWith.incarnation + 1 });
  net.drain(leader);
  t.true(net.tickUntil(() => leader.status().viewId > viewAfterJoin, 200), 'a view change replaced node 4\'s old incarnation');
});

test('a member taken for failed and re-admitted in the same view change starts over instead of carrying its old-view state', (t) => {
  // The leader gets a join request for node 3 with another incarnation (a process of node 3 that took the
  // group for restarting, then running): it suspects node 3 and re-admits it in one change. The running
  // node 3 sees itself in `removed`: the trims were computed without it, so it must not continue as a
  // survivor (that broke virtual synchrony in a raw shard, seed 770038704); it exits to rejoin.
  const exits = new Map<number, string>();
  const installs: { node: number; viewId: number }[] = [];
  const net = new Net(founders(), (node, rd) => {
    if (rd.exit) exits.set(node, rd.exit.reason);
    if (rd.installView) installs.push({ node, viewId: rd.installView.viewId });
  });
  for (let i = 0; i < 20; i++) net.tick();
  const leader = net.get(1);
  leader.step({ kind: 'joinRequest', from: 3, incarnation: 987_654 });
  net.drain(leader);
  t.true(net.tickUntil(() => exits.has(3), 300), 'node 3 exited');
  // (It exits as soon as it sees a majority suspect it, or at the latest when it sees itself removed.)
  t.regex(exits.get(3)!, /removed from the group in view 1 and re-admitted as a new member: restarting to rejoin|suspected by 2 of the 3 members of view 0: the next view cannot include this process/);
  t.true(net.tickUntil(() => installs.some((i) => i.node === 1 && i.viewId === 1), 300), 'the others install view 1');
  t.false(installs.some((i) => i.node === 3 && i.viewId >= 1), 'node 3 never installed view 1 as a survivor');
});

test('a blank restarter that joins for a while and restarts again keeps its restart-consensus promise', (t) => {
  // A node with nothing saved promises ballot 5.1 in a restart, is told the group runs (it joins), then
  // hears a restart report again and reports as a blank member: its promise still binds it (Paxos).
  const sent: Message[] = [];
  const node = new Replica(config(4), { kind: 'join', contacts: [1] }, new Prng(4));
  const drain = (): void => {
    node.pushRowIfDirty();
    while (node.hasReady()) {
      sent.push(...node.ready().send.map((e) => e.message));
      node.advance();
    }
  };
  const view = { viewId: 3, members: [1, 2, 4], layout: { shards: [] } };
  const report = { nodeId: 1, lastView: view, highestViewIdSeen: 3, trims: [], logTails: [], promised: null };
  node.step({ kind: 'restartReport', from: 1, report });
  drain();
  t.is(node.status().mode, 'restarting');
  node.step({ kind: 'restartPrepare', from: 1, ballot: { round: 5, nodeId: 1 } });
  drain();
  node.step({ kind: 'restartActive', from: 2, viewId: 4, leader: 1 });
  drain();
  t.is(node.status().mode, 'joining');
  node.step({ kind: 'restartReport', from: 1, report });
  drain();
  t.is(node.status().mode, 'restarting');
  sent.length = 0;
  for (let i = 0; i < 40; i++) {
    node.tick();
    drain();
  }
  const mine = sent.filter((m) => m.kind === 'restartReport' && m.from === 4).at(-1);
  if (mine?.kind !== 'restartReport') throw new Error('no restart report sent');
  t.deepEqual(mine.report.promised, { round: 5, nodeId: 1 });
  // and a prepare under a lower ballot is refused (no promise back)
  sent.length = 0;
  node.step({ kind: 'restartPrepare', from: 2, ballot: { round: 4, nodeId: 2 } });
  drain();
  t.false(sent.some((m) => m.kind === 'restartPromise'));
});
