import test from 'ava';
import { cloneRow, emptyRow, RowMonitor } from './state-table.ts';
import type { Layout } from './types.ts';

const layout: Layout = {
  shards: [{ shardId: 0, subgroup: 'kv', shardIndex: 0, members: [1, 2], senders: [1, 2], deliveryMode: 'ordered', persistent: true }],
};

test('an empty row has one received counter per sender of every shard', (t) => {
  const row = emptyRow(2, layout);
  t.deepEqual(row.received, [[0, 0]]);
  t.deepEqual(row.suspected, [false, false]);
  t.is(row.promisedBallot, -1);
});

test('a cloned row does not share its counters with the original', (t) => {
  const row = emptyRow(2, layout);
  const copy = cloneRow(row);
  row.received[0]![0] = 5;
  row.suspected[1] = true;
  t.is(copy.received[0]![0], 0);
  t.false(copy.suspected[1]);
});

const regressions: [string, (r: ReturnType<typeof emptyRow>) => void][] = [
  ['a received counter going down', (r) => { r.received[0]![1] = 0; }],
  ['a suspicion withdrawn', (r) => { r.suspected[1] = false; }],
  ['an un-wedge', (r) => { r.wedged = false; }],
  ['the promised ballot going down', (r) => { r.promisedBallot = 0; }],
  ['the delivered counter going down', (r) => { r.delivered[0] = 0; }],
  ['a commit withdrawn', (r) => { r.committed = false; }],
];

for (const [name, regress] of regressions) {
  test(`the row monitor rejects ${name}`, (t) => {
    const monitor = new RowMonitor();
    const row = emptyRow(2, layout);
    row.received[0]![1] = 3;
    row.suspected[1] = true;
    row.wedged = true;
    row.promisedBallot = 1;
    row.delivered[0] = 2;
    row.committed = true;
    monitor.check(4, row);
    regress(row);
    t.throws(() => monitor.check(4, row), { message: /invariant/ });
  });
}

test('the row monitor rejects a received counter that moves after the wedge', (t) => {
  const monitor = new RowMonitor();
  const row = emptyRow(2, layout);
  row.wedged = true;
  monitor.check(1, row);
  row.received[0]![0] = 1;
  t.throws(() => monitor.check(1, row), { message: /after wedge/ });
});

test('the row monitor starts over in a new view', (t) => {
  const monitor = new RowMonitor();
  const row = emptyRow(2, layout);
  row.heartbeat = 10;
  monitor.check(1, row);
  t.notThrows(() => monitor.check(2, emptyRow(2, layout)));
});
