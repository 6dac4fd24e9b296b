import test from 'ava';
import fc from 'fast-check';
import { columnMin, contiguousSeqCount, globalSeq, lastSeqInside, persistenceFrontier, seqOwner, stableSeqCount, trimsThrough } from './stability.ts';

// Naive references: enumerate global sequence numbers one by one.
function naiveContiguous(counts: number[]): number {
  const n = counts.length;
  if (n === 0) return 0;
  let g = 0;
  for (;;) {
    const sender = g % n;
    const index = Math.floor(g / n);
    if (index >= counts[sender]!) return g;
    g++;
  }
}

function naiveStable(rows: number[][]): number {
  if (rows.length === 0) return 0;
  const n = rows[0]!.length;
  let g = 0;
  for (;;) {
    const sender = g % n;
    const index = Math.floor(g / n);
    if (!rows.every((row) => index < row[sender]!)) return g;
    g++;
  }
}

test('round robin: sender r\'s k-th message has sequence k*n + r, and seqOwner inverts it', (t) => {
  t.is(globalSeq(0, 0, 3), 0);
  t.is(globalSeq(0, 2, 3), 2);
  t.is(globalSeq(4, 1, 3), 13);
  t.deepEqual(seqOwner(13, 3), { index: 4, senderRank: 1 });
  fc.assert(fc.property(fc.integer({ min: 0, max: 1000 }), fc.integer({ min: 1, max: 9 }), (seq, n) => {
    const { index, senderRank } = seqOwner(seq, n);
    return globalSeq(index, senderRank, n) === seq && senderRank < n;
  }));
});

test('contiguous prefix: a table of cases', (t) => {
  const cases: [number[], number][] = [
    [[0, 0, 0], 0], [[1, 0, 0], 1], [[1, 1, 0], 2], [[1, 1, 1], 3], [[2, 1, 1], 4], [[5, 0, 9], 1], [[3], 3], [[], 0],
  ];
  for (const [counts, expected] of cases) t.is(contiguousSeqCount(counts), expected, JSON.stringify(counts));
});

test('contiguous prefix equals the naive enumeration', (t) => {
  fc.assert(fc.property(fc.array(fc.integer({ min: 0, max: 30 }), { minLength: 1, maxLength: 7 }), (counts) => contiguousSeqCount(counts) === naiveContiguous(counts)));
  t.pass();
});

test('last sequence inside the trims: a table of cases, and the naive enumeration', (t) => {
  const cases: [number[], number][] = [[[0, 0, 0], -1], [[1, 0, 0], 0], [[5, 0, 9], 26], [[2, 1], 2], [[3], 2], [[], -1]];
  for (const [trims, expected] of cases) t.is(lastSeqInside(trims), expected, JSON.stringify(trims));
  // Naive: the highest g whose owner's index lies inside its sender's trim.
  fc.assert(fc.property(fc.array(fc.integer({ min: 0, max: 30 }), { minLength: 1, maxLength: 7 }), (trims) => {
    const n = trims.length;
    let last = -1;
    for (let g = 0; g < 31 * n; g++) if (Math.floor(g / n) < trims[g % n]!) last = g;
    return lastSeqInside(trims) === last && lastSeqInside(trims) >= contiguousSeqCount(trims) - 1;
  }));
});

test('stability: a message is stable once every member received it (min of a column)', (t) => {
  t.is(stableSeqCount([[2, 2], [2, 1]]), 3);
  t.is(stableSeqCount([[2, 2], [0, 5]]), 0);
  fc.assert(fc.property(
    fc.integer({ min: 1, max: 6 }).chain((n) => fc.array(fc.array(fc.integer({ min: 0, max: 20 }), { minLength: n, maxLength: n }), { minLength: 1, maxLength: 6 })),
    (rows) => stableSeqCount(rows) === naiveStable(rows),
  ));
});

test('stability never exceeds any single member\'s contiguous prefix', (t) => {
  fc.assert(fc.property(
    fc.integer({ min: 1, max: 6 }).chain((n) => fc.array(fc.array(fc.integer({ min: 0, max: 20 }), { minLength: n, maxLength: n }), { minLength: 1, maxLength: 6 })),
    (rows) => rows.every((row) => stableSeqCount(rows) <= contiguousSeqCount(row)),
  ));
  t.deepEqual(columnMin([[3, 1], [2, 4]]), [2, 1]);
});

test('persistence frontier is the minimum persisted count', (t) => {
  t.is(persistenceFrontier([5, 3, 9]), 3);
  t.is(persistenceFrontier([]), 0);
  fc.assert(fc.property(fc.array(fc.nat(100), { minLength: 1 }), (xs) => persistenceFrontier(xs) === Math.min(...xs)));
});

test('trimsThrough: the trims of exactly the sequence numbers 0..seq, the inverse of lastSeqInside', (t) => {
  t.deepEqual(trimsThrough(-1, 3), [0, 0, 0]);
  t.deepEqual(trimsThrough(0, 3), [1, 0, 0]);
  t.deepEqual(trimsThrough(4, 3), [2, 2, 1]);
  t.deepEqual(trimsThrough(5, 1), [6]);
  fc.assert(
    fc.property(fc.integer({ min: -1, max: 500 }), fc.integer({ min: 1, max: 9 }), (seq, n) => {
      // naive: count each sender's slots among 0..seq one by one
      const naive = new Array<number>(n).fill(0);
      for (let g = 0; g <= seq; g++) naive[seqOwner(g, n).senderRank]!++;
      const trims = trimsThrough(seq, n);
      return JSON.stringify(trims) === JSON.stringify(naive) && lastSeqInside(trims) === seq && contiguousSeqCount(trims) === seq + 1;
    }),
  );
  t.pass();
});
