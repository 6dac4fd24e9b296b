// The node driver processes each Ready in the documented order, serves and installs state transfers,
// and reports replica faults; tested against a scripted stand-in for the Replica.

import test from 'ava';
import { Prng } from '../../node-agent/src/core/prng.ts';
import type { Message, NodeId, Ready, ReplicaConfig, ReplicaStatus, SendResult, StartState, Version, View } from '../../node-agent/src/core/types.ts';
import { SimNode } from './node.ts';
import type { NodeContext, ReplicaLike, SimMessage, StateTransferMessage } from './node.ts';
import { emptyHistory } from './history.ts';
import type { GroupPolicy } from '../../node-agent/src/core/types.ts';

const policy: GroupPolicy = {
  subgroups: [
    { name: 'log', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true },
    { name: 'cache', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: false },
  ],
};
const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
const view: View = {
  viewId: 0,
  members: [1, 2],
  layout: {
    shards: [
      { shardId: 0, subgroup: 'log', shardIndex: 0, members: [1, 2], senders: [1, 2], deliveryMode: 'ordered', persistent: true },
      { shardId: 1, subgroup: 'cache', shardIndex: 0, members: [1, 2], senders: [1, 2], deliveryMode: 'ordered', persistent: false },
    ],
  },
};

function emptyReady(over: Partial<Ready> = {}): Ready {
  return { persist: [], deliver: [], transfers: [], send: [], installView: null, persistenceFrontiers: [], exit: null, resetShards: [], sendsFailed: [], ...over };
}

/** A stand-in Replica: hands out queued Readies, records what the driver did. */
class Scripted implements ReplicaLike {
  readies: Ready[] = [];
  calls: string[] = [];
  pendingShards = new Set<number>();
  invariantError: string | null = null;
  constructor(readonly start: StartState) {}
  step(m: Message): void {
    this.calls.push(`step:${m.kind}`);
  }
  tick(): void {
    this.calls.push('tick');
  }
  send(shardId: number): SendResult {
    this.calls.push(`send:${shardId}`);
    return { ok: true };
  }
  leave(): void {
    this.calls.push('leave');
  }
  transferWanted(shardId: number, _through: Version): boolean {
    return this.pendingShards.has(shardId);
  }
  stateTransferred(shardId: number, through: Version): void {
    this.calls.push(`stateTransferred:${shardId}@${through.viewId}:${through.seq}`);
    this.pendingShards.delete(shardId);
  }
  hasReady(): boolean {
    return this.readies.length > 0;
  }
  ready(): Ready {
    this.calls.push('ready');
    return this.readies.shift()!;
  }
  advance(): void {
    this.calls.push('advance');
  }
  status(): ReplicaStatus {
    return {
      nodeId: 1, mode: 'active', viewId: 0, members: [1, 2], leader: 1, wedged: false, waiting: { kind: 'none', message: '' },
      shards: [0, 1].map((shardId) => ({
        shardId, subgroup: 'x', shardIndex: 0, members: [1, 2], delivered: { viewId: 0, seq: 0 }, persistenceFrontier: { viewId: 0, seq: 0 },
        stateReady: !this.pendingShards.has(shardId),
      })),
    };
  }
  assertInvariants(): void {
    if (this.invariantError) throw new Error(this.invariantError);
  }
}

function setup() {
  const history = emptyHistory(policy);
  const wire: { from: NodeId; to: NodeId; message: SimMessage; diskRecords: number; deliveries: number; installs: number }[] = [];
  const violations: string[] = [];
  const exits: string[] = [];
  let replica: Scripted | null = null;
  const holder: { node: SimNode | null } = { node: null };
  const ctx: NodeContext = {
    now: () => 7,
    shards: history.shards,
    history,
    createReplica: (_config: ReplicaConfig, start: StartState) => (replica = new Scripted(start)),
    config: (nodeId) => ({ nodeId, policy } as ReplicaConfig),
    storage: 'fsync',
    wire: (from, to, message) =>
      wire.push({ from, to, message, diskRecords: holder.node!.disk.log(0).length, deliveries: history.deliveries.length, installs: history.installs.length }),
    trace: () => {},
    violation: (text) => violations.push(text),
    exited: (_n, reason) => exits.push(reason),
    traceWaiting: false,
  };
  const node = new SimNode(1, ctx);
  holder.node = node;
  node.start({ kind: 'bootstrap', members: [1, 2] }, new Prng(1));
  return { node, history, wire, violations, exits, replica: () => replica! };
}

test('a Ready is processed in order: persist, deliver, transfers, send, installView, frontiers, then advance', (t) => {
  const s = setup();
  const r = s.replica();
  r.readies.push(
    emptyReady({
      persist: [{ kind: 'view', view }, { kind: 'log', record: { shardId: 0, version: { viewId: 0, seq: 0 }, sender: 2, payload: bytes('hello') } }],
      deliver: [
        { shardId: 0, version: { viewId: 0, seq: 0 }, sender: 2, payload: bytes('hello'), mode: 'ordered' },
        { shardId: 1, version: { viewId: 0, seq: 1 }, sender: 1, payload: bytes('cached'), mode: 'ordered' },
      ],
      transfers: [{ to: 2, shardId: 0, through: { viewId: 0, seq: 0 } }, { to: 2, shardId: 1, through: { viewId: 0, seq: 1 } }],
      send: [{ to: 2, message: { kind: 'joinRedirect', from: 1, leader: 1 } }],
      installView: view,
      persistenceFrontiers: [{ shardId: 0, version: { viewId: 0, seq: 0 } }],
    }),
  );
  s.node.tick();
  t.deepEqual(r.calls, ['tick', 'ready', 'advance']);
  t.is(s.wire.length, 3);
  const [message, persistentTransfer, volatileTransfer] = s.wire as [typeof s.wire[0], typeof s.wire[0], typeof s.wire[0]];
  // Sends come after persist and deliver, then transfers; the install is recorded after both.
  t.is(persistentTransfer.diskRecords, 1);
  t.is(persistentTransfer.deliveries, 2);
  t.is(persistentTransfer.installs, 0);
  t.is(message.installs, 0);
  t.is(message.message.kind, 'joinRedirect');
  const pt = persistentTransfer.message as StateTransferMessage;
  t.is(pt.kind, 'stateTransfer');
  t.deepEqual(pt.records.map((x) => new TextDecoder().decode(x.payload)), ['hello'], 'persistent state comes from the disk');
  const vt = volatileTransfer.message as StateTransferMessage;
  t.deepEqual(vt.records.map((x) => new TextDecoder().decode(x.payload)), ['cached'], 'volatile state comes from the application');
  t.is(s.history.installs.length, 1);
  t.is(s.history.installs[0]!.view.viewId, 0);
  t.deepEqual(s.history.acks.map((a) => a.version), [{ viewId: 0, seq: 0 }]);
  t.deepEqual(s.history.deliveries.map((d) => [d.payload, d.viewId, d.incarnation]), [['hello', -1, 1], ['cached', -1, 1]]);
  t.is(s.node.viewId, 0);
  t.deepEqual(s.violations, []);
});

test('serving a persistent shard from a disk that lacks delivered versions is a violation', (t) => {
  const s = setup();
  s.replica().readies.push(
    emptyReady({
      deliver: [{ shardId: 0, version: { viewId: 0, seq: 0 }, sender: 2, payload: bytes('unlogged'), mode: 'ordered' }],
      transfers: [{ to: 2, shardId: 0, through: { viewId: 0, seq: 0 } }],
    }),
  );
  s.node.tick();
  t.is(s.violations.length, 1);
  t.regex(s.violations[0]!, /served from disk, but delivered versions 0:0 are not persisted yet/);
});

test('a state transfer the replica waits for is installed, then stateTransferred is called', (t) => {
  const s = setup();
  const r = s.replica();
  r.pendingShards.add(0);
  const records = [{ shardId: 0, version: { viewId: 0, seq: 3 }, sender: 2, payload: bytes('old') }];
  s.node.step({ kind: 'stateTransfer', from: 2, shardId: 0, through: { viewId: 0, seq: 3 }, records });
  t.deepEqual(r.calls, ['stateTransferred:0@0:3']);
  t.deepEqual(s.node.disk.log(0).map((x) => x.version.seq), [3]);
  t.deepEqual(s.node.appEntries(0).map((e) => e.payload), ['old']);
  t.is(s.history.transfers.filter((x) => x.what === 'installed').length, 1);
  // A second (late or duplicate) transfer is ignored: the node already holds the state.
  s.node.step({ kind: 'stateTransfer', from: 2, shardId: 0, through: { viewId: 0, seq: 1 }, records: [] });
  t.deepEqual(r.calls, ['stateTransferred:0@0:3']);
  t.is(s.node.disk.log(0).length, 1);
});

test('deliveries released by a state transfer are marked', (t) => {
  const s = setup();
  const r = s.replica();
  r.pendingShards.add(1);
  r.stateTransferred = (shardId) => {
    r.pendingShards.delete(shardId);
    r.readies.push(emptyReady({ deliver: [{ shardId: 1, version: { viewId: 0, seq: 4 }, sender: 2, payload: bytes('held'), mode: 'ordered' }] }));
  };
  s.node.step({ kind: 'stateTransfer', from: 2, shardId: 1, through: { viewId: 0, seq: 2 }, records: [] });
  t.deepEqual(s.history.deliveries.map((d) => [d.payload, d.released]), [['held', true]]);
});

test('exit stops the node after advance; its disk stays, its volatile state goes', (t) => {
  const s = setup();
  const r = s.replica();
  r.readies.push(
    emptyReady({
      persist: [{ kind: 'view', view }, { kind: 'log', record: { shardId: 0, version: { viewId: 0, seq: 0 }, sender: 1, payload: bytes('kept') } }],
      deliver: [
        { shardId: 0, version: { viewId: 0, seq: 0 }, sender: 1, payload: bytes('kept'), mode: 'ordered' },
        { shardId: 1, version: { viewId: 0, seq: 1 }, sender: 1, payload: bytes('lost'), mode: 'ordered' },
      ],
      exit: { reason: 'removed from the group' },
    }),
  );
  s.node.tick();
  t.deepEqual(r.calls, ['tick', 'ready', 'advance']);
  t.false(s.node.up);
  t.deepEqual(s.exits, ['removed from the group']);
  t.is(s.node.downReason, 'exit: removed from the group');
  t.is(s.node.disk.log(0).length, 1);
  // The next life restarts from the disk: the persistent shard's state comes back, the volatile one does not.
  s.node.start({ kind: 'restart', saved: s.node.disk.savedState()!, contacts: [2] }, new Prng(2));
  t.is(s.node.incarnation, 2);
  t.deepEqual(s.node.appEntries(0).map((e) => e.payload), ['kept']);
  t.deepEqual(s.node.appEntries(1), []);
  t.is(s.replica().start.kind, 'restart');
});

test('a broken invariant and an exception are reported as violations', (t) => {
  const s = setup();
  s.replica().invariantError = 'invariant: counters went down';
  s.node.tick();
  t.is(s.violations.length, 1);
  t.regex(s.violations[0]!, /^n1 \(incarnation 1\) invariant broken after tick: invariant: counters went down/);
  const s2 = setup();
  s2.replica().step = () => {
    throw new Error('boom');
  };
  s2.node.step({ kind: 'joinRedirect', from: 2, leader: 2 });
  t.regex(s2.violations[0]!, /exception in step\(joinRedirect from n2\): boom/);
});

test('a persistence frontier records the node\'s state up to it as durable, once per update', (t) => {
  const s = setup();
  const log = (seq: number, p: string) => ({ kind: 'log' as const, record: { shardId: 0, version: { viewId: 0, seq }, sender: 1, payload: bytes(p) } });
  const del = (seq: number, p: string) => ({ shardId: 0, version: { viewId: 0, seq }, sender: 1, payload: bytes(p), mode: 'ordered' as const });
  s.replica().readies.push(
    emptyReady({ persist: [log(0, 'a'), log(2, 'b'), log(3, 'c')], deliver: [del(0, 'a'), del(2, 'b'), del(3, 'c')], persistenceFrontiers: [{ shardId: 0, version: { viewId: 0, seq: 2 } }] }),
    emptyReady({ persistenceFrontiers: [{ shardId: 0, version: { viewId: 0, seq: 3 } }] }),
  );
  s.node.tick();
  t.deepEqual(s.history.durable.map((d) => [d.payload, d.frontier.seq]), [['a', 2], ['b', 2], ['c', 3]]);
});

test('a persist record the disk refuses is a storage violation', (t) => {
  const s = setup();
  s.replica().readies.push(
    emptyReady({
      persist: [
        { kind: 'log', record: { shardId: 0, version: { viewId: 0, seq: 5 }, sender: 1, payload: bytes('a') } },
        { kind: 'log', record: { shardId: 0, version: { viewId: 0, seq: 4 }, sender: 1, payload: bytes('b') } },
      ],
    }),
  );
  s.node.tick();
  t.regex(s.violations[0]!, /storage in tick: log append out of order/);
});

test('a delivery whose mode contradicts the policy is a violation', (t) => {
  const s = setup();
  s.replica().readies.push(emptyReady({ deliver: [{ shardId: 1, version: { viewId: 0, seq: 0 }, sender: 1, payload: bytes('x'), mode: 'raw' }] }));
  s.node.tick();
  t.regex(s.violations[0]!, /has mode raw, the policy says ordered/);
});
