import test from 'ava';
import { LogStore } from '../../node-agent/src/storage/log-store.ts';
import { MemFs } from './mem-fs.ts';

const view = (viewId: number) => ({
  viewId, members: [1], layout: { shards: [{ shardId: 0, subgroup: 'log', shardIndex: 0, members: [1], senders: [1], deliveryMode: 'ordered' as const, persistent: true }] },
});
const rec = (seq: number) => ({ kind: 'log' as const, record: { shardId: 0, version: { viewId: 1, seq }, sender: 1, payload: new TextEncoder().encode(`r${seq}`) } });

test('a machine crash keeps exactly what was fsynced: file bytes and directory entries', (t) => {
  const m = new MemFs();
  m.fs.mkdirSync('/d', { recursive: true });
  const fd = m.fs.openSync('/d/a', 'w');
  m.fs.writeSync(fd, Buffer.from('hello'), 0, 5, 0);
  m.fs.fsyncSync(fd);
  m.fs.writeSync(fd, Buffer.from(' world'), 0, 6, 5);
  const dir = m.fs.openSync('/d', 'r');
  m.fs.fsyncSync(dir); // the entry of /d/a is durable now
  const fd2 = m.fs.openSync('/d/b', 'w'); // never made durable
  m.fs.writeSync(fd2, Buffer.from('x'), 0, 1, 0);
  m.fs.fsyncSync(fd2);
  t.is(m.read('/d/a')!.toString(), 'hello world');
  t.deepEqual(m.machineCrash(), { lostBytes: 6 });
  t.is(m.read('/d/a')!.toString(), 'hello');
  t.is(m.read('/d/b'), null, 'a file whose directory entry was never synced is gone');
  t.throws(() => m.fs.writeSync(m.fs.openSync('/d/a', 'r+'), Buffer.from('J'), 0, 1, 0), { message: /overwrite of fsynced bytes/ });
});

test('a torn write leaves a prefix, the dead process changes nothing more, and the LogStore cuts the torn record at its next open', (t) => {
  const m = new MemFs();
  const store = LogStore.open('/data', { fsync: 'fsync', fs: m.fs, newDiskId: () => 7 });
  store.apply([{ kind: 'view', view: view(1) }, rec(0), rec(1)]);
  m.tearNextWrite(0.5);
  t.throws(() => store.apply([rec(2), rec(3), rec(4)]), { message: /the process died inside a write/ });
  t.is(m.tornWrites, 1);
  m.processCrash();
  let recovered = '';
  const again = LogStore.open('/data', { fsync: 'fsync', fs: m.fs, onRecovery: (i) => { recovered = i.reason; } });
  t.regex(recovered, /torn tail/);
  // the acknowledged batches, and the whole records before the torn one (a prefix of the unacknowledged batch)
  t.deepEqual(again.log(0).map((r) => r.version.seq), [0, 1, 2]);
  t.is(again.diskId, 7);
});

test('a flipped byte in an early record makes the LogStore refuse to open', (t) => {
  const m = new MemFs();
  const store = LogStore.open('/data', { fsync: 'fsync', fs: m.fs });
  store.apply([{ kind: 'view', view: view(1) }, rec(0), rec(1)]);
  m.processCrash();
  t.true(m.corruptEarlyRecord('/data/journal.dlog', 3));
  t.throws(() => LogStore.open('/data', { fsync: 'fsync', fs: m.fs }), { message: /checksum|refusing/ });
});
