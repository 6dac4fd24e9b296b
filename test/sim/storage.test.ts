import test from 'ava';
import { Disk, StorageError } from './storage.ts';
import { VERSION_NONE } from '../../node-agent/src/core/types.ts';
import type { LogRecord, RestartDecision, View } from '../../node-agent/src/core/types.ts';

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
const text = (b: Uint8Array): string => new TextDecoder().decode(b);
const rec = (shardId: number, viewId: number, seq: number, payload: string, sender = 1): LogRecord => ({
  shardId,
  version: { viewId, seq },
  sender,
  payload: bytes(payload),
});
const view = (viewId: number, members: number[]): View => ({
  viewId,
  members,
  layout: { shards: [{ shardId: 0, subgroup: 'log', shardIndex: 0, members, senders: members, deliveryMode: 'ordered', persistent: true }] },
});

test('a disk that never saw a view has no saved state', (t) => {
  const d = new Disk();
  d.apply({ kind: 'log', record: rec(0, 0, 0, 'a') });
  t.is(d.savedState(), null);
});

test('a disk that never saw a view but promised in a restart consensus has a blank saved state', (t) => {
  const d = new Disk();
  d.apply({ kind: 'restartPromise', ballot: { round: 3, nodeId: 2 } });
  const s = d.savedState()!;
  t.true(s.blank);
  t.deepEqual(s.restartPromised, { round: 3, nodeId: 2 });
  t.deepEqual(s.lastView.members, []);
});

test('logs append in version order and report their tails', (t) => {
  const d = new Disk();
  d.apply({ kind: 'view', view: view(0, [1, 2]) });
  d.apply({ kind: 'log', record: rec(0, 0, 0, 'a') });
  d.apply({ kind: 'log', record: rec(0, 0, 2, 'b') });
  d.apply({ kind: 'log', record: rec(1, 0, 1, 'x') });
  d.apply({ kind: 'log', record: rec(0, 1, 0, 'c') });
  t.deepEqual(d.log(0).map((r) => text(r.payload)), ['a', 'b', 'c']);
  t.deepEqual(d.savedState()!.logTails, [
    { shardId: 0, version: { viewId: 1, seq: 0 } },
    { shardId: 1, version: { viewId: 0, seq: 1 } },
  ]);
});

test('an out-of-order append is refused; rewriting the same record is harmless', (t) => {
  const d = new Disk();
  d.apply({ kind: 'log', record: rec(0, 1, 3, 'a') });
  d.apply({ kind: 'log', record: rec(0, 1, 3, 'a') });
  t.is(d.log(0).length, 1);
  t.throws(() => d.apply({ kind: 'log', record: rec(0, 1, 2, 'older') }), { instanceOf: StorageError, message: /out of order/ });
  t.throws(() => d.apply({ kind: 'log', record: rec(0, 1, 3, 'different') }), { instanceOf: StorageError, message: /different record/ });
});

test('truncate removes the records after the given version, and only in that shard', (t) => {
  const d = new Disk();
  for (const [v, s, p] of [[0, 0, 'a'], [0, 1, 'b'], [1, 0, 'c'], [1, 4, 'd']] as const) d.apply({ kind: 'log', record: rec(0, v, s, p) });
  d.apply({ kind: 'log', record: rec(1, 1, 5, 'other') });
  d.apply({ kind: 'truncate', shardId: 0, after: { viewId: 0, seq: 1 } });
  t.deepEqual(d.log(0).map((r) => text(r.payload)), ['a', 'b']);
  t.is(d.log(1).length, 1);
  d.apply({ kind: 'truncate', shardId: 0, after: VERSION_NONE });
  t.deepEqual(d.log(0), []);
  t.true(d.hasLog(0), 'an emptied log is still held (tail VERSION_NONE)');
  d.apply({ kind: 'truncate', shardId: 7, after: VERSION_NONE });
  t.false(d.hasLog(7), 'truncating a shard never held does not create a log');
});

test('saved state carries the last view, trims, the highest view id seen and the restart acceptor state', (t) => {
  const d = new Disk();
  d.apply({ kind: 'view', view: view(3, [1, 2, 3]) });
  d.apply({ kind: 'trim', trim: { viewId: 2, trims: [[4, 5]], lastVersions: [{ viewId: 2, seq: 9 }] } });
  d.apply({ kind: 'trim', trim: { viewId: 1, trims: [[1]], lastVersions: [{ viewId: 1, seq: 0 }] } });
  d.apply({ kind: 'trim', trim: { viewId: 2, trims: [[4, 6]], lastVersions: [{ viewId: 2, seq: 11 }] } });
  d.apply({ kind: 'viewIdSeen', viewId: 7 });
  d.apply({ kind: 'viewIdSeen', viewId: 5 });
  const plan: RestartDecision = { lastViewId: 7, view: view(8, [1, 2]), shards: [{ shardId: 0, source: 1, truncateTo: { viewId: 2, seq: 11 } }], trims: [] };
  d.apply({ kind: 'restartPromise', ballot: { round: 2, nodeId: 1 } });
  d.apply({ kind: 'restartAccept', ballot: { round: 2, nodeId: 1 }, plan });
  const s = d.savedState()!;
  t.is(s.lastView.viewId, 3);
  t.deepEqual(s.trims.map((x) => [x.viewId, x.trims]), [[1, [[1]]], [2, [[4, 6]]]]);
  t.is(s.highestViewIdSeen, 7);
  t.deepEqual(s.restartPromised, { round: 2, nodeId: 1 });
  t.deepEqual(s.restartAccepted?.plan.view.viewId, 8);
  t.deepEqual(s.logTails, []);
});

test('installing a view raises the highest view id seen', (t) => {
  const d = new Disk();
  d.apply({ kind: 'viewIdSeen', viewId: 2 });
  d.apply({ kind: 'view', view: view(4, [1]) });
  t.is(d.savedState()!.highestViewIdSeen, 4);
});

test('the disk keeps its own copies: later changes to the records handed in do not reach it', (t) => {
  const d = new Disk();
  const r = rec(0, 0, 0, 'abc');
  const v = view(0, [1, 2]);
  d.apply({ kind: 'log', record: r });
  d.apply({ kind: 'view', view: v });
  r.payload[0] = 0x7a;
  v.members.push(99);
  t.is(text(d.log(0)[0]!.payload), 'abc');
  t.deepEqual(d.savedState()!.lastView.members, [1, 2]);
});

test('state transfer exports the records up to a version and import replaces the log', (t) => {
  const source = new Disk();
  for (const [v, s, p] of [[0, 0, 'a'], [0, 3, 'b'], [1, 0, 'c'], [2, 1, 'd']] as const) source.apply({ kind: 'log', record: rec(0, v, s, p) });
  const part = source.exportShard(0, { viewId: 1, seq: 0 });
  t.deepEqual(part.map((r) => text(r.payload)), ['a', 'b', 'c']);
  const target = new Disk();
  target.apply({ kind: 'log', record: rec(0, 0, 0, 'stale') });
  target.apply({ kind: 'log', record: rec(0, 5, 0, 'beyond') });
  target.importShard(0, part);
  t.deepEqual(target.log(0).map((r) => text(r.payload)), ['a', 'b', 'c']);
  part[0]!.payload[0] = 0x7a;
  t.is(text(target.log(0)[0]!.payload), 'a', 'imported records are copies');
  t.deepEqual(source.exportShard(3, { viewId: 9, seq: 9 }), []);
});

test('an import with two records at one version is refused', (t) => {
  const d = new Disk();
  t.throws(() => d.importShard(0, [rec(0, 1, 1, 'a'), rec(0, 1, 1, 'b')]), { instanceOf: StorageError });
});
