import test from 'ava';
import type { ExecutionContext } from 'ava';
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as nodeFs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as zlib from 'node:zlib';
import { Disk } from '../../../test/sim/storage.ts';
import { VERSION_NONE } from '../core/types.ts';
import type { Ballot, LogRecord, PersistRecord, RestartDecision, SavedTrim, Version, View } from '../core/types.ts';
import { CorruptionError, crc32Portable, JOURNAL_FILE, LogStore, StorageError, StorageLimitError } from './log-store.ts';
import type { LogStoreOptions, RecoveryInfo, StorageFs } from './log-store.ts';
import { crashRecord, crashView } from './log-store.crash-child.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '../../..');

// ---------------------------------------------------------------------------------------------------------
// Helpers

function tempDir(t: ExecutionContext): string {
  const dir = nodeFs.mkdtempSync(path.join(os.tmpdir(), 'log-store-test-'));
  t.teardown(() => nodeFs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A fresh subdirectory of `root` (for the many opens of one test). */
let sub = 0;
function subDir(root: string): string {
  const dir = path.join(root, `d${sub++}`);
  nodeFs.mkdirSync(dir);
  return dir;
}

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
const rec = (shardId: number, viewId: number, seq: number, payload: string, sender = 1): LogRecord => ({
  shardId,
  version: { viewId, seq },
  sender,
  payload: bytes(payload),
});
const logRec = (shardId: number, viewId: number, seq: number, payload: string, sender = 1): PersistRecord => ({
  kind: 'log',
  record: rec(shardId, viewId, seq, payload, sender),
});
const view = (viewId: number, members: number[]): View => ({
  viewId,
  members,
  layout: { shards: [{ shardId: 0, subgroup: 'log', shardIndex: 0, members, senders: members, deliveryMode: 'ordered', persistent: true }] },
});
const plan = (viewId: number): RestartDecision => ({
  lastViewId: viewId - 1,
  view: view(viewId, [1, 2, 3]),
  shards: [{ shardId: 0, source: 2, truncateTo: { viewId: 1, seq: 4 } }, { shardId: 1, source: null, truncateTo: VERSION_NONE }],
  trims: [{ viewId: viewId - 1, trims: [[2, 3]], lastVersions: [{ viewId: viewId - 1, seq: 5 }] }],
});

/** Everything a store holds, compared with what the simulator's Disk holds after the same records. */
function assertSame(store: LogStore, disk: Disk, where = ''): void {
  assert.deepStrictEqual(store.savedState(), disk.savedState(), `savedState ${where}`);
  assert.deepStrictEqual(store.logTails(), disk.logTails(), `logTails ${where}`);
  assert.deepStrictEqual(store.shardIds(), disk.shardIds(), `shardIds ${where}`);
  for (const shardId of disk.shardIds()) {
    assert.deepStrictEqual(store.log(shardId), disk.log(shardId).map(plainRecord), `log of shard ${shardId} ${where}`);
  }
}

function plainRecord(r: LogRecord): LogRecord {
  return { shardId: r.shardId, version: { viewId: r.version.viewId, seq: r.version.seq }, sender: r.sender, payload: new Uint8Array(r.payload) };
}

function feed(disk: Disk, records: readonly PersistRecord[]): void {
  for (const r of records) disk.apply(r);
}

/** A batch of every record kind. */
function everyKind(): PersistRecord[][] {
  return [
    [{ kind: 'view', view: view(0, [1, 2, 3]) }, { kind: 'shardState', shardId: 0, complete: false }, { kind: 'shardState', shardId: 2, complete: false }],
    [logRec(0, 0, 0, 'a'), logRec(0, 0, 1, 'b', 2), logRec(1, 0, 0, 'x'), logRec(0, 0, 1, 'b', 2)],
    [{ kind: 'trim', trim: { viewId: 0, trims: [[1, 1]], lastVersions: [{ viewId: 0, seq: 1 }] } }, { kind: 'view', view: view(1, [1, 2]) }],
    [{ kind: 'viewIdSeen', viewId: 4 }, { kind: 'viewIdSeen', viewId: 2 }, { kind: 'shardState', shardId: 0, complete: true }],
    [logRec(0, 1, 0, 'c'), logRec(0, 1, 2, 'd'), { kind: 'truncate', shardId: 0, after: { viewId: 1, seq: 0 } }, logRec(0, 1, 1, 'e')],
    [{ kind: 'trim', trim: { viewId: 0, trims: [[2, 1]], lastVersions: [{ viewId: 0, seq: 2 }] } }, { kind: 'truncate', shardId: 9, after: VERSION_NONE }],
    [{ kind: 'restartPromise', ballot: { round: 3, nodeId: 2 } }, { kind: 'restartAccept', ballot: { round: 3, nodeId: 2 }, plan: plan(5) }],
    [{ kind: 'restartPromise', ballot: { round: 4, nodeId: 1 } }, logRec(2, 1, 3, ''), { kind: 'truncate', shardId: 2, after: VERSION_NONE }],
  ];
}

function countingFs(): { fs: StorageFs; fsyncs: () => number; reset: () => void } {
  let n = 0;
  const fs: StorageFs = {
    ...nodeFs,
    fsyncSync: (fd: number) => {
      n++;
      nodeFs.fsyncSync(fd);
    },
  };
  return { fs, fsyncs: () => n, reset: () => (n = 0) };
}

const noSyncFs: StorageFs = { ...nodeFs, fsyncSync: () => {} };

// ---------------------------------------------------------------------------------------------------------
// CRC

test('the portable CRC-32 matches zlib', (t) => {
  t.is(crc32Portable(bytes('123456789')), 0xcbf43926);
  const z = (zlib as unknown as { crc32?: (d: Uint8Array, v?: number) => number }).crc32;
  if (typeof z !== 'function') {
    t.pass('no zlib.crc32 in this Node: only the check value is tested');
    return;
  }
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(), (data, seed) => {
      assert.equal(crc32Portable(data), z(data));
      assert.equal(crc32Portable(data, seed >>> 0), z(data, seed >>> 0));
    }),
  );
  t.pass();
});

// ---------------------------------------------------------------------------------------------------------
// Round trips

test('a store that never saved a view has no saved state, and is empty when new', (t) => {
  const dir = tempDir(t);
  const store = LogStore.open(dir, { fsync: 'fsync' });
  t.is(store.savedState(), null);
  t.deepEqual(store.logTails(), []);
  store.apply([logRec(0, 0, 0, 'a')]);
  t.is(store.savedState(), null);
  store.close();
  const again = LogStore.open(dir, { fsync: 'fsync' });
  t.deepEqual(again.log(0), [rec(0, 0, 0, 'a')]);
  again.close();
  t.throws(() => again.log(0), { instanceOf: StorageError, message: /closed/ });
});

test('every record kind round-trips through apply and reopen, as the simulator disk has it', (t) => {
  const dir = tempDir(t);
  const disk = new Disk();
  let store = LogStore.open(dir, { fsync: 'fsync' });
  for (const batch of everyKind()) {
    store.apply(batch);
    feed(disk, batch);
    assertSame(store, disk, 'after apply');
    store.close();
    store = LogStore.open(dir, { fsync: 'fsync' });
    assertSame(store, disk, 'after reopen');
  }
  const saved = store.savedState()!;
  t.is(saved.lastView.viewId, 1);
  t.is(saved.highestViewIdSeen, 4);
  t.deepEqual(saved.incompleteShards, [2]);
  t.deepEqual(saved.restartPromised, { round: 4, nodeId: 1 });
  t.deepEqual(saved.restartAccepted?.plan, plan(5));
  t.deepEqual(saved.logTails, [
    { shardId: 0, version: { viewId: 1, seq: 1 } },
    { shardId: 1, version: { viewId: 0, seq: 0 } },
    { shardId: 2, version: VERSION_NONE },
  ]);
  t.deepEqual(store.exportShard(0, { viewId: 0, seq: 1 }), [rec(0, 0, 0, 'a'), rec(0, 0, 1, 'b', 2)]);
  store.close();
});

test('an out-of-order append refuses the whole batch and names shard and versions', (t) => {
  const dir = tempDir(t);
  const store = LogStore.open(dir, { fsync: 'os' });
  store.apply([logRec(3, 1, 3, 'a')]);
  const before = store.stats().journalBytes;
  store.apply([logRec(3, 1, 3, 'a')]);
  t.is(store.stats().journalBytes, before, 'an identical re-write writes nothing');
  t.throws(() => store.apply([{ kind: 'view', view: view(2, [1]) }, logRec(3, 1, 2, 'older')]), {
    instanceOf: StorageError,
    message: 'log append out of order in shard 3: version 1:2 after tail 1:3',
  });
  t.throws(() => store.apply([logRec(3, 1, 3, 'different')]), { instanceOf: StorageError, message: /shard 3: version 1:3 after tail 1:3 \(a different record/ });
  t.throws(() => store.apply([logRec(3, 1, 4, 'n'), logRec(3, 1, 4, 'm')]), { message: /different record already has that version/ });
  t.is(store.stats().journalBytes, before, 'a refused batch writes nothing');
  t.is(store.savedState(), null);
  t.deepEqual(store.log(3), [rec(3, 1, 3, 'a')]);
  store.close();
});

test('a store that never saved a view but promised in a restart consensus remembers it (blank saved state)', (t) => {
  const dir = tempDir(t);
  const store = LogStore.open(dir, { fsync: 'fsync' });
  store.apply([{ kind: 'restartPromise', ballot: { round: 2, nodeId: 1 } }, { kind: 'viewIdSeen', viewId: 9 }]);
  store.close();
  const again = LogStore.open(dir, { fsync: 'fsync' });
  const saved = again.savedState()!;
  t.true(saved.blank);
  t.deepEqual(saved.lastView.members, []);
  t.deepEqual(saved.restartPromised, { round: 2, nodeId: 1 });
  t.is(saved.highestViewIdSeen, 9);
  again.close();
});

test('an accepted view change survives reopen and compaction until a later view is installed', (t) => {
  const dir = tempDir(t);
  const store = LogStore.open(dir, { fsync: 'fsync' });
  const next = view(3, [1, 2]);
  const accepted = { value: { fromViewId: 2, next, trims: [[1]], joined: [], removed: [3], transfers: [], lostShards: [] }, ballot: 1 };
  store.apply([{ kind: 'view', view: view(2, [1, 2, 3]) }, { kind: 'viewAccepted', accepted }]);
  store.close();
  const again = LogStore.open(dir, { fsync: 'fsync' });
  t.deepEqual(again.savedState()!.acceptedChange, accepted);
  again.compact();
  again.close();
  const third = LogStore.open(dir, { fsync: 'fsync' });
  t.deepEqual(third.savedState()!.acceptedChange, accepted);
  third.apply([{ kind: 'view', view: next }]);
  t.is(third.savedState()!.acceptedChange, undefined, 'superseded by the installed view');
  third.close();
});

test('views decided before a restart view are kept with the recent views across reopen and compaction', (t) => {
  const dir = tempDir(t);
  const store = LogStore.open(dir, { fsync: 'fsync' });
  store.apply([{ kind: 'view', view: view(2, [1, 2, 3]) }]);
  // a restart plan adopted view 3 (accepted, never installed here); the restart view 4 follows it
  store.apply([{ kind: 'viewsDecided', views: [view(3, [1, 2])] }, { kind: 'view', view: { ...view(4, [1, 2, 3]), previousViewId: 3 } }]);
  const ids = (s: LogStore): number[] => (s.savedState()!.recentViews ?? []).map((v) => v.viewId);
  t.deepEqual(ids(store), [2, 3, 4]);
  store.close();
  const again = LogStore.open(dir, { fsync: 'fsync' });
  t.deepEqual(ids(again), [2, 3, 4]);
  again.compact();
  for (let id = 5; id <= 14; id++) again.apply([{ kind: 'view', view: view(id, [1, 2, 3]) }]);
  t.deepEqual(ids(again), [7, 8, 9, 10, 11, 12, 13, 14], 'the 8 newest are kept');
  again.compact();
  again.close();
  const third = LogStore.open(dir, { fsync: 'fsync' });
  t.deepEqual(ids(third), [7, 8, 9, 10, 11, 12, 13, 14]);
  third.close();
});

test('a store draws its disk id when it is created and keeps it across reopen and compaction', (t) => {
  const root = tempDir(t);
  const a = LogStore.open(subDir(root), { fsync: 'fsync' });
  const b = LogStore.open(subDir(root), { fsync: 'fsync' });
  t.true(Number.isSafeInteger(a.diskId) && a.diskId > 0);
  t.not(a.diskId, b.diskId, 'a replaced (empty) disk has a new identity');
  b.close();
  const dir = subDir(root);
  const c = LogStore.open(dir, { fsync: 'fsync', newDiskId: () => 4242 });
  t.is(c.diskId, 4242);
  t.is(c.savedState(), null, 'the disk id alone is not saved state: the node joins as new');
  c.apply([{ kind: 'view', view: view(1, [1]) }]);
  c.compact();
  c.close();
  const again = LogStore.open(dir, { fsync: 'fsync', newDiskId: () => t.fail('an existing store keeps its id') as never });
  t.is(again.diskId, 4242);
  again.close();
  a.close();
  t.throws(() => LogStore.open(subDir(root), { fsync: 'fsync', newDiskId: () => 0 }), { instanceOf: StorageError, message: /newDiskId returned 0/ });
});

test('a format version 1 journal is read and migrated to version 2; an unknown version is refused by name', (t) => {
  const dir = tempDir(t);
  const store = LogStore.open(dir, { fsync: 'fsync' });
  store.apply([{ kind: 'view', view: view(2, [1, 2]) }, logRec(0, 2, 0, 'kept')]);
  store.close();
  const file = path.join(dir, JOURNAL_FILE);
  const setVersion = (version: number): void => {
    const bytes = nodeFs.readFileSync(file);
    bytes.writeUInt32LE(version, 8);
    bytes.writeUInt32LE(crc32Portable(bytes.subarray(0, 12)), 12);
    nodeFs.writeFileSync(file, bytes);
  };
  setVersion(1);
  const migrated = LogStore.open(dir, { fsync: 'fsync' });
  t.is(migrated.savedState()!.lastView.viewId, 2);
  t.deepEqual(migrated.log(0).map((r) => new TextDecoder().decode(r.payload)), ['kept']);
  migrated.close();
  t.is(nodeFs.readFileSync(file).readUInt32LE(8), 2, 'rewritten with the current header');
  const reopened = LogStore.open(dir, { fsync: 'fsync' });
  t.true(reopened.diskId > 0, 'and given a disk id');
  reopened.close();
  setVersion(3);
  t.throws(() => LogStore.open(dir, { fsync: 'fsync' }), { instanceOf: CorruptionError, message: /unsupported format version 3 \(this build reads 1 and 2\)/ });
});

test('records over the bounds are refused with a clear error, and nothing is written', (t) => {
  const dir = tempDir(t);
  const store = LogStore.open(dir, { fsync: 'os', maxRecordBytes: 4096 });
  const before = store.stats().journalBytes;
  const big: PersistRecord = { kind: 'log', record: { shardId: 0, version: { viewId: 0, seq: 0 }, sender: 1, payload: new Uint8Array(4096 - 21 + 1) } };
  t.throws(() => store.apply([logRec(0, 0, 0, 'ok'), big]), { instanceOf: StorageLimitError, message: /4076 bytes makes a record of 4097 bytes, over maxRecordBytes 4096/ });
  const wide = view(1, Array.from({ length: 2000 }, (_, i) => i));
  t.throws(() => store.apply([{ kind: 'view', view: wide }]), { instanceOf: StorageLimitError, message: /view record of \d+ bytes is over maxRecordBytes 4096/ });
  t.throws(() => store.apply([logRec(-1, 0, 0, 'x')]), { instanceOf: StorageLimitError, message: /shard id -1 is not a u32/ });
  t.throws(() => store.apply([logRec(0, 0, 2 ** 53, 'x')]), { instanceOf: StorageLimitError, message: /seq/ });
  t.is(store.stats().journalBytes, before);
  const fits: PersistRecord = { kind: 'log', record: { shardId: 0, version: { viewId: 0, seq: 2 ** 53 - 1 }, sender: 2 ** 32 - 1, payload: new Uint8Array(4096 - 21).fill(7) } };
  store.apply([fits]);
  store.close();
  const again = LogStore.open(dir, { fsync: 'os', maxRecordBytes: 4096 });
  t.deepEqual(again.log(0), [fits.record]);
  again.close();
  t.throws(() => LogStore.open(dir, { fsync: 'os', maxRecordBytes: 2 ** 31 }), { instanceOf: StorageLimitError });
  // a record written under a larger bound stays readable under a smaller one (also as the last record)
  const lowered = LogStore.open(dir, { fsync: 'os', maxRecordBytes: 1024, onRecovery: () => t.fail('must not recover') });
  t.deepEqual(lowered.log(0), [fits.record]);
  t.throws(() => lowered.apply([{ kind: 'log', record: { ...fits.record, version: { viewId: 1, seq: 0 } } }]), { instanceOf: StorageLimitError });
  lowered.close();
});

test('property: any valid record sequence gives the same state as the simulator disk, across reopens, imports and compactions', (t) => {
  const root = tempDir(t);
  const version = fc.record({ viewId: fc.integer({ min: 0, max: 8 }), seq: fc.integer({ min: 0, max: 30 }) });
  const members = fc.uniqueArray(fc.integer({ min: 1, max: 9 }), { minLength: 1, maxLength: 4 });
  const viewArb: fc.Arbitrary<View> = fc
    .record({ viewId: fc.integer({ min: 0, max: 30 }), members, subgroup: fc.string({ unit: 'binary', maxLength: 5 }), raw: fc.boolean() })
    .map(({ viewId, members, subgroup, raw }) => ({
      viewId,
      members,
      layout: { shards: [{ shardId: 0, subgroup, shardIndex: 0, members, senders: members.slice(0, 1), deliveryMode: raw ? 'raw' : 'ordered', persistent: !raw }] },
    }));
  const trimArb: fc.Arbitrary<SavedTrim> = fc.record({
    viewId: fc.integer({ min: 0, max: 6 }),
    trims: fc.array(fc.array(fc.nat(9), { maxLength: 3 }), { maxLength: 3 }),
    lastVersions: fc.array(fc.oneof(version, fc.constant(VERSION_NONE)), { maxLength: 3 }),
  });
  const ballot: fc.Arbitrary<Ballot> = fc.record({ round: fc.nat(20), nodeId: fc.integer({ min: 1, max: 9 }) });
  const planArb: fc.Arbitrary<RestartDecision> = fc.record({
    lastViewId: fc.nat(20),
    view: viewArb,
    shards: fc.array(fc.record({ shardId: fc.nat(4), source: fc.option(fc.nat(9), { nil: null }), truncateTo: version }), { maxLength: 3 }),
    trims: fc.array(trimArb, { maxLength: 2 }),
  });
  const shard = fc.nat(3);
  const item = fc.oneof(
    { weight: 6, arbitrary: fc.record({ k: fc.constant('append' as const), shard, bump: fc.boolean(), gap: fc.nat(2), sender: fc.nat(5), payload: fc.uint8Array({ maxLength: 40 }) }) },
    fc.record({ k: fc.constant('rewrite' as const), shard, pick: fc.nat() }),
    fc.record({ k: fc.constant('view' as const), view: viewArb }),
    fc.record({ k: fc.constant('viewsDecided' as const), views: fc.array(viewArb, { minLength: 1, maxLength: 4 }) }),
    fc.record({ k: fc.constant('trim' as const), trim: trimArb }),
    fc.record({ k: fc.constant('viewIdSeen' as const), viewId: fc.integer({ min: -1, max: 40 }) }),
    { weight: 2, arbitrary: fc.record({ k: fc.constant('truncate' as const), shard: fc.nat(4), pick: fc.nat(), how: fc.constantFrom('existing', 'arbitrary', 'none'), at: version }) },
    fc.record({ k: fc.constant('shardState' as const), shard: fc.nat(4), complete: fc.boolean() }),
    fc.record({ k: fc.constant('promise' as const), ballot }),
    fc.record({ k: fc.constant('accept' as const), ballot, plan: planArb }),
  );
  const step = fc.oneof(
    { weight: 8, arbitrary: fc.record({ t: fc.constant('batch' as const), items: fc.array(item, { maxLength: 6 }) }) },
    { weight: 2, arbitrary: fc.record({ t: fc.constant('reopen' as const) }) },
    fc.record({
      t: fc.constant('import' as const),
      shard: fc.nat(4),
      startView: fc.nat(6),
      records: fc.array(fc.record({ sender: fc.nat(5), payload: fc.uint8Array({ maxLength: 30 }) }), { maxLength: 5 }),
    }),
    fc.record({ t: fc.constant('compact' as const) }),
  );
  const optionsArb = fc.record({ compactDeadRecords: fc.constantFrom(0, 3, 10_000), compactDeadRatio: fc.constantFrom(0, 1) });

  fc.assert(
    fc.property(optionsArb, fc.array(step, { maxLength: 25 }), (knobs, steps) => {
      const dir = subDir(root);
      // fsync is a no-op here (durability is tested below; rewrites always fsync and would dominate)
      const options: LogStoreOptions = { fsync: 'os', ...knobs, fs: noSyncFs };
      const disk = new Disk();
      let store = LogStore.open(dir, options);
      try {
        for (const s of steps) {
          if (s.t === 'reopen') {
            store.close();
            store = LogStore.open(dir, { ...options, onRecovery: (i) => assert.fail(`unexpected recovery ${i.reason}`) });
          } else if (s.t === 'compact') {
            store.compact();
            const st = store.stats();
            // a message on every assert here: without one, a failing assert.ok makes Node parse this file
            // to describe the expression, which takes minutes for a file this size
            assert.equal(st.journalRecords, st.liveRecords, 'a compaction leaves only live records');
            assert.equal(st.deadRecords, 0, 'no dead records after a compaction');
          } else if (s.t === 'import') {
            const records = s.records.map((r, i) => ({ shardId: s.shard, version: { viewId: s.startView, seq: 2 * i }, sender: r.sender, payload: r.payload }));
            disk.importShard(s.shard, records);
            store.importShard(s.shard, [...records].reverse());
          } else {
            const batch: PersistRecord[] = [];
            for (const it of s.items) {
              let r: PersistRecord | null = null;
              const log = 'shard' in it ? disk.log(it.shard) : [];
              switch (it.k) {
                case 'append': {
                  const tail = log[log.length - 1]?.version;
                  const v: Version = !tail
                    ? { viewId: it.bump ? 1 : 0, seq: it.gap }
                    : it.bump
                      ? { viewId: tail.viewId + 1, seq: it.gap }
                      : { viewId: tail.viewId, seq: tail.seq + 1 + it.gap };
                  r = { kind: 'log', record: { shardId: it.shard, version: v, sender: it.sender, payload: it.payload } };
                  break;
                }
                case 'rewrite':
                  if (log.length > 0) r = { kind: 'log', record: plainRecord(log[it.pick % log.length]!) };
                  break;
                case 'view':
                  r = { kind: 'view', view: it.view };
                  break;
                case 'viewsDecided':
                  r = { kind: 'viewsDecided', views: it.views };
                  break;
                case 'trim':
                  r = { kind: 'trim', trim: it.trim };
                  break;
                case 'viewIdSeen':
                  r = { kind: 'viewIdSeen', viewId: it.viewId };
                  break;
                case 'truncate': {
                  const after = it.how === 'none' ? VERSION_NONE : it.how === 'existing' && log.length > 0 ? log[it.pick % log.length]!.version : it.at;
                  r = { kind: 'truncate', shardId: it.shard, after: { ...after } };
                  break;
                }
                case 'shardState':
                  r = { kind: 'shardState', shardId: it.shard, complete: it.complete };
                  break;
                case 'promise':
                  r = { kind: 'restartPromise', ballot: it.ballot };
                  break;
                case 'accept':
                  r = { kind: 'restartAccept', ballot: it.ballot, plan: it.plan };
                  break;
              }
              if (r) {
                disk.apply(r); // the model moves along, so later items of the batch see earlier ones
                batch.push(r);
              }
            }
            store.apply(batch);
          }
          assertSame(store, disk);
          const tails = disk.logTails();
          for (const { shardId, version: v } of tails) {
            const through = { viewId: v.viewId, seq: v.seq - 1 };
            assert.deepStrictEqual(store.exportShard(shardId, through), disk.exportShard(shardId, through).map(plainRecord));
          }
        }
        store.close();
        store = LogStore.open(dir, options);
        assertSame(store, disk, 'at the end');
        const st = store.stats();
        assert.ok(st.deadRecords >= 0 && st.deadRecords <= st.journalRecords, `dead records ${st.deadRecords} of ${st.journalRecords}`);
      } finally {
        store.close();
      }
    }),
    { numRuns: 150, endOnFailure: true },
  );
  t.pass();
});

// ---------------------------------------------------------------------------------------------------------
// Truncation, import, compaction

test('truncate and import survive reopen; an import replaces the log atomically', (t) => {
  const dir = tempDir(t);
  const disk = new Disk();
  let store = LogStore.open(dir, { fsync: 'fsync' });
  const batch: PersistRecord[] = [
    { kind: 'view', view: view(3, [1, 2]) },
    logRec(0, 1, 0, 'a'),
    logRec(0, 1, 1, 'b'),
    logRec(0, 2, 0, 'c'),
    logRec(1, 1, 0, 'other'),
    { kind: 'truncate', shardId: 0, after: { viewId: 1, seq: 1 } },
  ];
  store.apply(batch);
  feed(disk, batch);
  const imported = [rec(1, 2, 5, 'i2'), rec(1, 2, 1, 'i1'), rec(1, 3, 0, 'i3')];
  store.importShard(1, imported);
  disk.importShard(1, imported);
  store.importShard(4, []);
  disk.importShard(4, []);
  t.false(nodeFs.existsSync(path.join(dir, JOURNAL_FILE + '.tmp')));
  assertSame(store, disk);
  store.close();
  store = LogStore.open(dir, { fsync: 'fsync' });
  assertSame(store, disk);
  t.deepEqual(store.log(1).map((r) => r.version), [{ viewId: 2, seq: 1 }, { viewId: 2, seq: 5 }, { viewId: 3, seq: 0 }]);
  t.deepEqual(store.logTails().find((x) => x.shardId === 4), { shardId: 4, version: VERSION_NONE });
  // appends continue after the imported tail
  store.apply([logRec(1, 3, 1, 'next')]);
  t.throws(() => store.apply([logRec(1, 3, 0, 'back')]), { message: /out of order in shard 1/ });
  t.throws(() => store.importShard(2, [rec(2, 1, 1, 'x'), rec(2, 1, 1, 'y')]), { message: 'state transfer of shard 2 has two records with version 1:1' });
  t.throws(() => store.importShard(2, [rec(3, 1, 1, 'x')]), { message: /contains a record of shard 3/ });
  store.close();
});

test('a leftover temp file of an interrupted rewrite is ignored and removed on open', (t) => {
  const dir = tempDir(t);
  let store = LogStore.open(dir, { fsync: 'fsync' });
  store.apply([{ kind: 'view', view: view(1, [1]) }, logRec(0, 1, 0, 'kept')]);
  store.close();
  nodeFs.writeFileSync(path.join(dir, JOURNAL_FILE + '.tmp'), 'half a rewrite');
  store = LogStore.open(dir, { fsync: 'fsync' });
  t.false(nodeFs.existsSync(path.join(dir, JOURNAL_FILE + '.tmp')));
  t.deepEqual(store.log(0), [rec(0, 1, 0, 'kept')]);
  store.close();
});

test('views written out of id order: the rewrite takes more records than the journal, and the dead count is never negative (fast-check seed 12)', (t) => {
  const dir = tempDir(t);
  const disk = new Disk();
  const options: LogStoreOptions = { fsync: 'os', compactDeadRecords: 3, compactDeadRatio: 0 };
  let store = LogStore.open(dir, options);
  const batches: PersistRecord[][] = [[logRec(0, 0, 1, 'a')], [{ kind: 'view', view: view(7, [3, 9, 8, 6]) }, logRec(2, 1, 0, 'b'), { kind: 'view', view: view(3, [6, 8, 5]) }]];
  for (const b of batches) {
    store.apply(b);
    feed(disk, b);
  }
  // the journal: disk, log, view 7, log, view 3; a rewrite: disk, view 3, viewsDecided [3, 7], viewIdSeen 7, two logs
  const st = store.stats();
  t.is(st.journalRecords, 5);
  t.is(st.liveRecords, 6);
  t.is(st.deadRecords, 0);
  store.close();
  store = LogStore.open(dir, options);
  assertSame(store, disk, 'after reopen');
  store.compact();
  t.is(store.stats().journalRecords, 6);
  store.close();
  store = LogStore.open(dir, options);
  assertSame(store, disk, 'after compact and reopen');
  t.deepEqual(store.stats().deadRecords, 0);
  store.close();
});

test('compaction keeps the content and bounds the journal', (t) => {
  const dir = tempDir(t);
  const disk = new Disk();
  const options: LogStoreOptions = { fsync: 'os', compactDeadRecords: 50, compactDeadRatio: 0.5 };
  let store = LogStore.open(dir, options);
  let maxBytes = 0;
  for (let v = 0; v < 400; v++) {
    const batch: PersistRecord[] = [
      { kind: 'view', view: view(v, [1, 2, 3]) },
      { kind: 'shardState', shardId: v % 3, complete: v % 2 === 0 },
      logRec(0, v, 0, `a${v}`),
      logRec(0, v, 1, `b${v}`),
      logRec(1, v, 0, `c${v}`),
    ];
    if (v % 4 === 3) batch.push({ kind: 'truncate', shardId: 0, after: { viewId: v - 1, seq: 1 } });
    if (v % 10 === 0) batch.push({ kind: 'trim', trim: { viewId: v, trims: [[1]], lastVersions: [{ viewId: v, seq: 0 }] } });
    store.apply(batch);
    feed(disk, batch);
    maxBytes = Math.max(maxBytes, store.stats().journalBytes);
  }
  const st = store.stats();
  t.true(st.compactions > 0, 'compacted automatically');
  t.true(st.deadRecords <= 50 || st.journalBytes - 16 - st.liveLogBytes < 0.5 * st.liveLogBytes, JSON.stringify(st));
  assertSame(store, disk, 'after automatic compactions');
  const before = store.stats();
  store.compact();
  const after = store.stats();
  t.is(after.deadRecords, 0);
  t.is(after.journalRecords, after.liveRecords);
  t.true(after.journalBytes <= before.journalBytes);
  assertSame(store, disk, 'after compact()');
  store.close();
  store = LogStore.open(dir, options);
  assertSame(store, disk, 'after reopen');
  t.is(store.stats().journalBytes, after.journalBytes);
  store.close();
  t.log(`journal peaked at ${maxBytes} bytes, compacted to ${after.journalBytes}; ${st.compactions} automatic compactions`);
});

// ---------------------------------------------------------------------------------------------------------
// fsync policy

test("policy 'fsync' fsyncs once per apply batch; policy 'os' never in apply", (t) => {
  const dir = tempDir(t);
  const spy = countingFs();
  const store = LogStore.open(path.join(dir, 'a'), { fsync: 'fsync', fs: spy.fs });
  spy.reset();
  store.apply([logRec(0, 0, 0, 'a')]);
  t.is(spy.fsyncs(), 1);
  store.apply([{ kind: 'view', view: view(0, [1]) }, ...Array.from({ length: 100 }, (_, i) => logRec(0, 0, i + 1, 'x'.repeat(i)))]);
  t.is(spy.fsyncs(), 2);
  store.apply([{ kind: 'viewIdSeen', viewId: 9 }, { kind: 'trim', trim: { viewId: 0, trims: [], lastVersions: [] } }, { kind: 'truncate', shardId: 0, after: { viewId: 0, seq: 50 } }]);
  t.is(spy.fsyncs(), 3);
  store.apply([]);
  store.apply([logRec(0, 0, 50, 'x'.repeat(49))]); // identical re-write: nothing to write
  t.is(spy.fsyncs(), 3, 'a batch that writes nothing syncs nothing');
  store.close();

  const os = countingFs();
  const lazy = LogStore.open(path.join(dir, 'b'), { fsync: 'os', fs: os.fs });
  os.reset();
  for (let i = 0; i < 10; i++) lazy.apply([logRec(0, 0, i, 'a')]);
  t.is(os.fsyncs(), 0);
  lazy.close();
});

test('a failed fsync makes the store unusable until reopened', (t) => {
  const dir = tempDir(t);
  let failNext = false;
  const fs: StorageFs = {
    ...nodeFs,
    fsyncSync: (fd: number) => {
      if (failNext) {
        failNext = false;
        throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
      }
      nodeFs.fsyncSync(fd);
    },
  };
  const store = LogStore.open(dir, { fsync: 'fsync', fs });
  store.apply([logRec(0, 0, 0, 'a')]);
  failNext = true;
  t.throws(() => store.apply([logRec(0, 0, 1, 'b')]), { instanceOf: StorageError, message: /EIO.*unusable/ });
  t.throws(() => store.apply([logRec(0, 0, 2, 'c')]), { message: /unusable after an I\/O failure/ });
  t.throws(() => store.log(0), { message: /unusable/ });
  store.close();
  const again = LogStore.open(dir, { fsync: 'fsync' });
  t.deepEqual(again.log(0), [rec(0, 0, 0, 'a')], 'the failed batch was cut off the file');
  again.close();
});

// ---------------------------------------------------------------------------------------------------------
// Torn tails and corruption

interface Written {
  dir: string;
  bytes: Buffer;
  /** Journal offset where each batch starts, and the end. */
  starts: number[];
  batches: PersistRecord[][];
}

function writeBatches(root: string, batches: PersistRecord[][]): Written {
  const dir = subDir(root);
  const store = LogStore.open(dir, { fsync: 'os' });
  const starts: number[] = [];
  for (const b of batches) {
    starts.push(store.stats().journalBytes);
    store.apply(b);
  }
  starts.push(store.stats().journalBytes);
  store.close();
  return { dir, bytes: nodeFs.readFileSync(path.join(dir, JOURNAL_FILE)), starts, batches };
}

function openBytes(root: string, content: Buffer): { store: LogStore; recoveries: RecoveryInfo[]; dir: string } {
  const dir = subDir(root);
  nodeFs.writeFileSync(path.join(dir, JOURNAL_FILE), content);
  const recoveries: RecoveryInfo[] = [];
  const store = LogStore.open(dir, { fsync: 'os', onRecovery: (i) => recoveries.push(i) });
  return { store, recoveries, dir };
}

const tornScenarios: [string, PersistRecord][] = [
  ['a log record', logRec(1, 2, 7, 'the last record, torn')],
  ['a view record', { kind: 'view', view: view(9, [4, 5, 6]) }],
];

for (const [name, last] of tornScenarios) {
  test(`a torn tail (cut at every byte of the last record, ${name}) recovers to the previous record`, (t) => {
    const root = tempDir(t);
    const batches = [...everyKind(), [last]];
    const w = writeBatches(root, batches);
    const prev = new Disk();
    for (const b of batches.slice(0, -1)) feed(prev, b);
    const full = new Disk();
    for (const b of batches) feed(full, b);
    const lastStart = w.starts.at(-2)!;
    const end = w.starts.at(-1)!;
    for (let cut = lastStart; cut <= end; cut++) {
      const { store, recoveries, dir } = openBytes(root, w.bytes.subarray(0, cut));
      if (cut === end) {
        t.deepEqual(recoveries, []);
        assertSame(store, full);
      } else {
        assertSame(store, prev, `cut at ${cut}`);
        if (cut === lastStart) t.deepEqual(recoveries, []);
        else {
          t.is(recoveries.length, 1);
          t.is(recoveries[0]!.droppedBytes, cut - lastStart);
          t.regex(recoveries[0]!.reason, new RegExp(`torn tail at byte offset ${lastStart} `));
        }
        // the file was cut to the last good record: appending and reopening work normally
        store.apply([last]);
        store.close();
        const again = LogStore.open(dir, { fsync: 'os', onRecovery: () => t.fail('recovered twice') });
        assertSame(again, full, `re-applied after cut at ${cut}`);
        again.close();
        continue;
      }
      store.close();
    }
  });
}

test('a flipped byte anywhere in the last record drops that record', (t) => {
  const root = tempDir(t);
  const batches = [...everyKind(), [logRec(5, 1, 1, 'flip me, I am last')]];
  const w = writeBatches(root, batches);
  const prev = new Disk();
  for (const b of batches.slice(0, -1)) feed(prev, b);
  const lastStart = w.starts.at(-2)!;
  for (let at = lastStart; at < w.bytes.length; at++) {
    for (const mask of [0x01, 0x80, 0xff]) {
      const bad = Buffer.from(w.bytes);
      bad[at]! ^= mask;
      const { store, recoveries } = openBytes(root, bad);
      assertSame(store, prev, `flip ${mask} at ${at}`);
      t.is(recoveries.length, 1);
      t.is(recoveries[0]!.droppedBytes, w.bytes.length - lastStart);
      store.close();
    }
  }
});

test('a flipped byte in an earlier record makes open fail, naming the file and the offset', (t) => {
  const root = tempDir(t);
  const batches = everyKind();
  const w = writeBatches(root, batches);
  // Every byte of batch 1 (log records) and of batch 2 (control records).
  for (const b of [1, 2]) {
    const from = w.starts[b]!;
    const to = w.starts[b + 1]!;
    // record boundaries inside the batch: walk the frames
    const frameStarts: number[] = [];
    for (let p = from; p < to; p += 8 + w.bytes.readUInt32LE(p)) frameStarts.push(p);
    for (let at = from; at < to; at++) {
      const recordStart = frameStarts.filter((s) => s <= at).at(-1)!;
      const bad = Buffer.from(w.bytes);
      bad[at]! ^= 0x10;
      const dir = subDir(root);
      const file = path.join(dir, JOURNAL_FILE);
      nodeFs.writeFileSync(file, bad);
      const err = t.throws(() => LogStore.open(dir, { fsync: 'os', onRecovery: () => t.fail('must not recover') }), { instanceOf: CorruptionError });
      t.is(err?.offset, recordStart, `flip at ${at}`);
      t.true(err!.message.includes(file) && err!.message.includes(`byte offset ${recordStart}`), err!.message);
      t.deepEqual(nodeFs.readFileSync(file), bad, 'the file is left as it was');
    }
  }
  // a damaged file header
  const bad = Buffer.from(w.bytes);
  bad[3]! ^= 1;
  const dir = subDir(root);
  nodeFs.writeFileSync(path.join(dir, JOURNAL_FILE), bad);
  t.throws(() => LogStore.open(dir, { fsync: 'os' }), { instanceOf: CorruptionError, message: /byte offset 0: not a journal/ });
});

test('a zero-filled tail (an extended but unwritten file) is cut like a torn one', (t) => {
  const root = tempDir(t);
  const batches = everyKind();
  const w = writeBatches(root, batches);
  const { store, recoveries } = openBytes(root, Buffer.concat([w.bytes, Buffer.alloc(3000)]));
  const disk = new Disk();
  for (const b of batches) feed(disk, b);
  assertSame(store, disk);
  t.is(recoveries[0]?.droppedBytes, 3000);
  store.close();
});

// ---------------------------------------------------------------------------------------------------------
// Durability under SIGKILL

test('durability: a child killed with SIGKILL mid-apply keeps every acknowledged batch, and only a prefix', async (t) => {
  const root = tempDir(t);
  const perBatch = 4;
  const child = path.join(here, 'log-store.crash-child.ts');
  for (const killAfter of [2, 40]) {
    const dir = subDir(root);
    const proc = spawn(process.execPath, ['--import', 'tsx', child, dir, String(perBatch)], {
      cwd: repoRoot,
      env: { ...process.env, LOG_STORE_CRASH_CHILD: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    let killed = false;
    const safety = setTimeout(() => proc.kill('SIGKILL'), 60_000);
    proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (!killed && out.split('\n').length - 1 >= killAfter) {
        killed = true;
        proc.kill('SIGKILL');
      }
    });
    const signal = await new Promise<NodeJS.Signals | null>((resolve) => proc.on('close', (_code, sig) => resolve(sig)));
    clearTimeout(safety);
    t.is(signal, 'SIGKILL', err);
    const acks = out
      .split('\n')
      .slice(0, -1)
      .map((l) => Number(/^ack (\d+)$/.exec(l)?.[1] ?? NaN));
    acks.forEach((a, i) => t.is(a, i));
    const acked = acks.length;
    t.true(acked >= killAfter);

    const recoveries: RecoveryInfo[] = [];
    const store = LogStore.open(dir, { fsync: 'fsync', onRecovery: (i) => recoveries.push(i) });
    const log = store.log(0);
    t.true(log.length >= acked * perBatch, `${log.length} records, ${acked} batches acknowledged`);
    for (let i = 0; i < log.length; i++) assert.deepStrictEqual(log[i], crashRecord(i));
    const batchesFound = Math.ceil(log.length / perBatch);
    // the last view record is that of the newest batch found, or of the next one when only its view record made it
    const lastViewId = store.savedState()!.lastView.viewId;
    const viaLogs = Math.floor((batchesFound - 1) / 10) * 10;
    t.true(lastViewId === viaLogs || (batchesFound % 10 === 0 && log.length === batchesFound * perBatch && lastViewId === batchesFound), `view ${lastViewId}`);
    t.deepEqual(store.savedState()!.lastView, crashView(lastViewId));
    t.log(`killed after ${acked} acknowledged batches: ${log.length} records on disk${recoveries.length ? `, ${recoveries[0]!.reason}` : ''}`);
    store.close();
  }
});

test('policy os still fsyncs every batch that carries membership or restart-consensus state (a machine crash must not undo a promise)', (t) => {
  // Under 'os' a machine crash may lose recent log records (documented), but a lost view-change
  // acceptance, restart promise or view would let the group decide twice (split brain): those batches
  // are synced whatever the policy. Plain log batches are not.
  const dir = tempDir(t);
  const counting = countingFs();
  const store = LogStore.open(dir, { fsync: 'os', fs: counting.fs });
  counting.reset();
  store.apply([logRec(0, 0, 0, 'a'), logRec(0, 0, 1, 'b')]);
  t.is(counting.fsyncs(), 0, 'log records alone: left to the OS');
  const controls: PersistRecord[] = [
    { kind: 'view', view: view(1, [1, 2]) },
    { kind: 'viewAccepted', accepted: { value: { fromViewId: 1, next: view(2, [1]), trims: [[1]], joined: [], removed: [2], transfers: [], lostShards: [] }, ballot: 0 } },
    { kind: 'restartPromise', ballot: { round: 1, nodeId: 1 } },
    { kind: 'restartAccept', ballot: { round: 1, nodeId: 1 }, plan: plan(5) },
    { kind: 'trim', trim: { viewId: 1, trims: [[1]], lastVersions: [{ viewId: 1, seq: 0 }] } },
    { kind: 'viewIdSeen', viewId: 9 },
  ];
  for (const c of controls) {
    counting.reset();
    store.apply([logRec(0, 0, 2 + controls.indexOf(c), 'x'), c]);
    t.is(counting.fsyncs(), 1, `a batch with a ${c.kind} record is synced`);
  }
  store.close();
});
