// The linearizability checker: hand-made good and bad histories, a brute-force oracle on small random
// histories, generated linearizable executions (and mutations of them that are not), and a large history.

import test from 'ava';
import fc from 'fast-check';
import { checkLinearizable, formatOp } from './linearizability.ts';
import type { KvOp } from './linearizability.ts';

// ---------------------------------------------------------------------------------------------
// Builders: operations on key k1 by default, ids in creation order.

let nextId = 1;
type Outcome = KvOp['outcome'];

function put(process: number, value: string, invokeMs: number, completeMs: number | null, outcome: Outcome = 'ok', key = 'k1'): KvOp {
  return { id: nextId++, process, kind: 'put', key, value, invokeMs, completeMs, outcome };
}
function del(process: number, invokeMs: number, completeMs: number | null, outcome: Outcome = 'ok', key = 'k1'): KvOp {
  return { id: nextId++, process, kind: 'delete', key, value: null, invokeMs, completeMs, outcome };
}
function get(process: number, value: string | null, invokeMs: number, completeMs: number | null, outcome: Outcome = 'ok', key = 'k1'): KvOp {
  return { id: nextId++, process, kind: 'get', key, value, invokeMs, completeMs, outcome };
}

// ---------------------------------------------------------------------------------------------
// Known-good and known-bad histories

test('sequential puts and gets are linearizable', (t) => {
  const h = [
    get(1, null, 0, 1),
    put(1, 'a', 2, 3),
    get(2, 'a', 4, 5),
    put(2, 'b', 6, 7),
    get(1, 'b', 8, 9),
    put(3, 'c', 10, 11, 'ok', 'k2'),
    get(1, 'c', 12, 13, 'ok', 'k2'),
    get(2, 'b', 14, 15),
  ];
  const v = checkLinearizable(h);
  t.is(v.linearizable, true);
  t.deepEqual(v.keys.map((k) => [k.key, k.linearizable, k.operations]), [['k1', true, 6], ['k2', true, 2]]);
  t.is(v.keys[0]!.explanation, undefined);
});

test('a stale read after an acknowledged put is not linearizable, and the explanation names the read', (t) => {
  const w1 = put(1, 'v1', 0, 10);
  const w2 = put(1, 'v2', 20, 30);
  const stale = get(2, 'v1', 40, 50);
  const v = checkLinearizable([w1, w2, stale, get(3, 'v2', 60, 70)]);
  t.is(v.linearizable, false);
  const e = v.keys[0]!.explanation!;
  t.log(e);
  t.true(e.includes('the first 3 ok operations'), e);
  t.true(e.includes(formatOp(stale)), e);
  t.true(e.includes('p2 get(k1) -> "v1" [40.0 ms .. 50.0 ms] ok'), e);
  t.true(e.includes(formatOp(w2)), 'the write it missed is listed');
});

test('a read of a value never written is not linearizable', (t) => {
  const bad = get(2, 'ghost', 5, 6);
  const v = checkLinearizable([put(1, 'a', 0, 1), put(1, 'b', 2, 3), bad]);
  t.is(v.linearizable, false);
  t.true(v.keys[0]!.explanation!.includes(formatOp(bad)));
  t.true(v.keys[0]!.explanation!.includes('the first 3 ok operations'));
  // The ghost alone already fails when it is the first operation to complete.
  const alone = checkLinearizable([get(2, 'ghost', 0, 1), put(1, 'a', 2, 3)]);
  t.is(alone.linearizable, false);
  t.true(alone.keys[0]!.explanation!.includes('the first 1 ok operation by completion time'));
});

test('a get concurrent with a put may see either value', (t) => {
  for (const seen of [null, 'a'] as const) {
    const h = [put(1, 'a', 0, 10), get(2, seen, 5, 6)];
    t.is(checkLinearizable(h).linearizable, true, `get saw ${seen}`);
  }
  // Also when the get starts first and ends last.
  for (const seen of ['x', 'a'] as const) {
    const h = [put(3, 'x', 0, 1), get(2, seen, 2, 20), put(1, 'a', 5, 10)];
    t.is(checkLinearizable(h).linearizable, true, `get saw ${seen}`);
  }
});

test('two concurrent puts then sequential reads that flip-flop are not linearizable', (t) => {
  const h = [put(1, 'a', 0, 10), put(2, 'b', 0, 10), get(3, 'a', 11, 12), get(4, 'b', 13, 14)];
  const v = checkLinearizable(h);
  t.is(v.linearizable, false);
  const e = v.keys[0]!.explanation!;
  t.true(e.includes('the first 4 ok operations'), e);
  t.true(e.includes(formatOp(h[3]!)), e);
  // Either value, read consistently, is fine; so is a flip during the puts.
  t.is(checkLinearizable([...h.slice(0, 3), get(4, 'a', 13, 14)]).linearizable, true);
  t.is(checkLinearizable([...h.slice(0, 2), get(3, 'b', 11, 12), get(4, 'b', 13, 14)]).linearizable, true);
  t.is(checkLinearizable([...h.slice(0, 2), get(3, 'a', 1, 2), get(3, 'b', 3, 4), get(4, 'b', 13, 14)]).linearizable, true);
});

test('two concurrent puts then reads in both orders are not linearizable', (t) => {
  const h = [put(1, 'a', 0, 10), put(2, 'b', 0, 10), get(3, 'b', 11, 12), get(4, 'a', 13, 14)];
  t.is(checkLinearizable(h).linearizable, false);
});

test('a read going back in version is not linearizable', (t) => {
  const h = [put(1, 'v1', 0, 1), put(1, 'v2', 2, 3), get(2, 'v2', 4, 5), get(3, 'v1', 6, 7)];
  const v = checkLinearizable(h);
  t.is(v.linearizable, false);
  t.true(v.keys[0]!.explanation!.includes(formatOp(h[3]!)));
});

test('a get after a delete returns null', (t) => {
  t.is(checkLinearizable([put(1, 'a', 0, 1), del(1, 2, 3), get(2, null, 4, 5)]).linearizable, true);
  t.is(checkLinearizable([put(1, 'a', 0, 1), del(1, 2, 3), get(2, 'a', 4, 5)]).linearizable, false);
  // A delete concurrent with the get: either result.
  t.is(checkLinearizable([put(1, 'a', 0, 1), del(1, 2, 10), get(2, 'a', 4, 5)]).linearizable, true);
  t.is(checkLinearizable([put(1, 'a', 0, 1), del(1, 2, 10), get(2, null, 4, 5)]).linearizable, true);
});

test('an indeterminate put whose value is read later is linearizable', (t) => {
  // Timed out at 5 ms, took effect after a later put completed.
  const h = [put(1, 'a', 0, 5, 'info'), put(2, 'b', 10, 11), get(3, 'b', 12, 13), get(3, 'a', 20, 21), get(2, 'a', 30, 31)];
  t.is(checkLinearizable(h).linearizable, true);
  // A completion time of null is the same.
  t.is(checkLinearizable([put(1, 'a', 0, null, 'info'), get(3, 'a', 20, 21)]).linearizable, true);
});

test('an indeterminate put that is never read is linearizable', (t) => {
  const h = [put(1, 'a', 0, 1), put(2, 'b', 2, null, 'info'), get(3, 'a', 5, 6), get(3, 'a', 7, 8)];
  t.is(checkLinearizable(h).linearizable, true);
});

test('an indeterminate put cannot take effect before its invocation', (t) => {
  const h = [get(3, 'a', 0, 1), put(1, 'a', 2, null, 'info')];
  t.is(checkLinearizable(h).linearizable, false);
});

test('an indeterminate put takes effect once: its value cannot come back after being overwritten', (t) => {
  const h = [put(1, 'a', 0, null, 'info'), get(2, 'a', 5, 6), put(2, 'b', 7, 8), get(2, 'b', 9, 10), get(3, 'a', 11, 12)];
  t.is(checkLinearizable(h).linearizable, false);
});

test('a failed put whose value is read is not linearizable', (t) => {
  const h = [put(1, 'a', 0, 1), put(2, 'b', 2, 3, 'fail'), get(3, 'b', 4, 5)];
  const v = checkLinearizable(h);
  t.is(v.linearizable, false);
  t.is(v.keys[0]!.operations, 2, 'the failed put is excluded');
  // And a failed put that nobody read changes nothing.
  t.is(checkLinearizable([put(1, 'a', 0, 1), put(2, 'b', 2, 3, 'fail'), get(3, 'a', 4, 5)]).linearizable, true);
});

test('an indeterminate get constrains nothing', (t) => {
  const h = [put(1, 'a', 0, 1), get(2, 'nonsense', 2, null, 'info'), get(2, null, 3, 4, 'info'), get(3, 'a', 5, 6)];
  const v = checkLinearizable(h);
  t.is(v.linearizable, true);
  t.is(v.keys[0]!.operations, 2);
});

test('the initial map sets the starting values', (t) => {
  const h = [get(1, 'seed', 0, 1), get(1, null, 0, 1, 'ok', 'k2')];
  t.is(checkLinearizable(h).linearizable, false);
  t.is(checkLinearizable(h, { initial: { k1: 'seed' } }).linearizable, true);
  t.is(checkLinearizable(h, { initial: { k1: 'seed', k2: 'other' } }).linearizable, false);
});

test('keys are independent: one bad key makes the history bad and is the only one explained', (t) => {
  const h = [put(1, 'a', 0, 1, 'ok', 'x'), get(2, 'a', 2, 3, 'ok', 'x'), put(1, 'b', 0, 1, 'ok', 'y'), get(2, null, 2, 3, 'ok', 'y')];
  const v = checkLinearizable(h);
  t.is(v.linearizable, false);
  t.deepEqual(v.keys.map((k) => [k.key, k.linearizable]), [['x', true], ['y', false]]);
  t.is(v.keys[0]!.explanation, undefined);
  t.true(v.keys[1]!.explanation!.startsWith('key y:'));
});

test('events at the same instant are taken as concurrent', (t) => {
  // The put completes at 5 ms and the get is invoked at 5 ms: the get may be ordered first.
  t.is(checkLinearizable([put(1, 'a', 0, 5), get(2, null, 5, 6)]).linearizable, true);
  t.is(checkLinearizable([put(1, 'a', 0, 5), get(2, null, 5.1, 6)]).linearizable, false);
});

test('an empty history and a history of failures are linearizable', (t) => {
  t.deepEqual(checkLinearizable([]), { linearizable: true, keys: [] });
  const v = checkLinearizable([put(1, 'a', 0, 1, 'fail'), get(1, 'zz', 0, 1, 'fail')]);
  t.is(v.linearizable, true);
  t.is(v.keys[0]!.operations, 0);
});

test('a search beyond maxStates reports unknown', (t) => {
  // Twenty concurrent puts, then reads of two of their values in turn: a flip-flop, found only after
  // every order of the other eighteen is ruled out (millions of configurations).
  const h: KvOp[] = [];
  for (let i = 0; i < 20; i++) h.push(put(i, `v${i}`, 0, 10));
  h.push(get(98, 'v0', 11, 12), get(99, 'v1', 13, 14));
  h.push(put(1, 'x', 0, 1, 'ok', 'other'));
  const v = checkLinearizable(h, { maxStates: 1000 });
  t.is(v.linearizable, 'unknown');
  t.is(v.keys.find((k) => k.key === 'k1')!.linearizable, 'unknown');
  t.is(v.keys.find((k) => k.key === 'other')!.linearizable, true);
  // A definite violation on another key still makes the whole history not linearizable.
  h.push(get(2, 'nope', 5, 6, 'ok', 'other'));
  t.is(checkLinearizable(h, { maxStates: 1000 }).linearizable, false);
});

test('malformed histories are rejected naming the operation and the field', (t) => {
  t.throws(() => checkLinearizable([{ ...put(1, 'a', 5, 3), id: 41 }]), { message: /op 41: field completeMs/ });
  t.throws(() => checkLinearizable([{ ...put(1, 'a', 5, null), id: 42 }]), { message: /op 42: field completeMs is null/ });
  t.throws(() => checkLinearizable([{ ...get(1, null, 5, null, 'fail'), id: 43 }]), { message: /op 43: field completeMs is null/ });
  t.throws(() => checkLinearizable([{ ...put(1, 'a', 0, 1), id: 44 }, { ...get(1, 'a', 2, 3), id: 44 }]), { message: /op 44: field id is a duplicate/ });
  t.notThrows(() => checkLinearizable([put(1, 'a', 5, null, 'info')]));
});

test('formatOp', (t) => {
  t.is(formatOp({ id: 1, process: 3, kind: 'get', key: 'k1', value: 'v7', invokeMs: 1203, completeMs: 1210.5, outcome: 'ok' }), 'p3 get(k1) -> "v7" [1203.0 ms .. 1210.5 ms] ok');
  t.is(formatOp({ id: 2, process: 1, kind: 'put', key: 'k2', value: 'x', invokeMs: 1, completeMs: null, outcome: 'info' }), 'p1 put(k2, "x") [1.0 ms .. ?] info');
  t.is(formatOp({ id: 3, process: 0, kind: 'delete', key: 'k', value: null, invokeMs: 0, completeMs: 2, outcome: 'fail' }), 'p0 delete(k) [0.0 ms .. 2.0 ms] fail');
  t.is(formatOp({ id: 4, process: 0, kind: 'get', key: 'k', value: null, invokeMs: 0, completeMs: 2, outcome: 'ok' }), 'p0 get(k) -> null [0.0 ms .. 2.0 ms] ok');
  t.is(formatOp({ id: 5, process: 0, kind: 'get', key: 'k', value: null, invokeMs: 0, completeMs: null, outcome: 'info' }), 'p0 get(k) -> ? [0.0 ms .. ?] info');
});

test('a long sequential history does not overflow the stack', (t) => {
  const h: KvOp[] = [];
  for (let i = 0; i < 10_000; i++) {
    h.push(i % 2 === 0 ? put(1, `v${i}`, 2 * i, 2 * i + 1) : get(2, `v${i - 1}`, 2 * i, 2 * i + 1));
  }
  const v = checkLinearizable(h);
  t.is(v.linearizable, true);
  // Breaking the very last read is found, with a short explanation.
  h[h.length - 1] = { ...h[h.length - 1]!, value: 'v0' };
  const bad = checkLinearizable(h);
  t.is(bad.linearizable, false);
  t.true(bad.keys[0]!.explanation!.includes('the first 10000 ok operations'));
  t.true(bad.keys[0]!.explanation!.split('\n').length < 12);
});

test('the explanation lists the writes before the operation, those concurrent with it and earlier indeterminate ones', (t) => {
  const lost = put(5, 'maybe', 0, 2, 'info');
  const w1 = put(1, 'v1', 10, 11);
  const w2 = put(1, 'v2', 20, 21);
  const concurrentPut = put(2, 'v3', 29, 40);
  const concurrentGet = get(3, 'v3', 25, 31);
  const stale = get(4, 'v1', 30, 32);
  const v = checkLinearizable([lost, w1, w2, concurrentPut, concurrentGet, stale, get(4, 'v3', 50, 51)]);
  t.is(v.linearizable, false);
  const lines = v.keys[0]!.explanation!.split('\n');
  t.log(lines.join('\n'));
  t.deepEqual(lines, [
    'key k1: the first 4 ok operations by completion time cannot be linearized; the last of them is',
    `  ${formatOp(stale)}`,
    'the latest writes on k1 completed before it was invoked:',
    `  ${formatOp(w1)}`,
    `  ${formatOp(w2)}`,
    'operations concurrent with it:',
    `  ${formatOp(concurrentGet)}`,
    `  ${formatOp(concurrentPut)}`,
    'indeterminate writes invoked earlier, which may take effect at any time (1):',
    `  ${formatOp(lost)}`,
  ]);
});

test('hundreds of indeterminate writes that nobody reads do not slow the search', (t) => {
  const h: KvOp[] = [];
  for (let i = 0; i < 300; i++) h.push(i % 3 === 0 ? del(10 + i, i / 10, null, 'info') : put(10 + i, `lost${i}`, i / 10, i / 10 + 1, 'info'));
  h.push(put(1, 'a', 0, 40), put(2, 'b', 0, 40), get(3, 'a', 10, 12), get(3, 'b', 43, 44), get(3, 'b', 45, 46));
  const good = checkLinearizable(h);
  t.is(good.linearizable, true);
  h.push(get(4, 'a', 47, 48)); // a flip-flop: a, then b, then a again
  const bad = checkLinearizable(h);
  t.is(bad.linearizable, false);
  t.log(`states: ${good.keys[0]!.statesExplored} and ${bad.keys[0]!.statesExplored}`);
  t.true(bad.keys[0]!.statesExplored < 100);
});

test('indeterminate deletes are interchangeable: which ones took effect is not searched', (t) => {
  // Fifty of a hundred concurrent indeterminate deletes must have taken effect, one before each null read.
  const h: KvOp[] = [];
  for (let i = 0; i < 100; i++) h.push(del(10 + i, 0, null, 'info'));
  for (let r = 1; r <= 50; r++) h.push(put(1, `v${r}`, 10 * r, 10 * r + 1), get(2, `v${r}`, 10 * r + 2, 10 * r + 3), get(2, null, 10 * r + 4, 10 * r + 5));
  const good = checkLinearizable(h);
  t.is(good.linearizable, true);
  // Then concurrent puts and a flip-flop: every way of placing the deletes before it would be ruled out.
  h.push(put(1, 'x', 600, 610), put(3, 'y', 600, 610), get(2, 'x', 603, 604), get(2, 'y', 613, 614), get(2, 'x', 615, 616));
  const bad = checkLinearizable(h);
  t.is(bad.linearizable, false);
  t.log(`states: ${good.keys[0]!.statesExplored} and ${bad.keys[0]!.statesExplored}`);
  t.true(bad.keys[0]!.statesExplored < 10_000);
  t.true(bad.keys[0]!.explanation!.includes(formatOp(h[h.length - 1]!)));
});

// ---------------------------------------------------------------------------------------------
// Brute force oracle: every real-time-respecting order of every subset of the optional writes.

/** The smallest k such that the first k ok operations by completion time cannot be linearized, by brute force. */
function minimalFailingPrefix(history: KvOp[], initial: Record<string, string | null>): number {
  const oks = history.filter((op) => op.outcome === 'ok').sort((a, b) => a.completeMs! - b.completeMs! || a.invokeMs - b.invokeMs || a.id - b.id);
  for (let k = 1; k <= oks.length; k++) {
    const cut = oks[k - 1]!.completeMs!;
    const prefix = new Set(oks.slice(0, k));
    // The other writes invoked by then may or may not have taken effect; later gets do not count.
    const sub = history.filter((op) => prefix.has(op) || (op.kind !== 'get' && op.outcome !== 'fail' && op.invokeMs <= cut));
    if (!bruteForce(sub.map((op) => (prefix.has(op) ? op : { ...op, outcome: 'info' as const })), initial)) return k;
  }
  return -1;
}

function bruteForce(history: KvOp[], initial: Record<string, string | null>): boolean {
  const ops = history.filter((op) => op.outcome === 'ok' || (op.outcome === 'info' && op.kind !== 'get'));
  const done = ops.map(() => false);
  const state = new Map<string, string | null>(Object.entries(initial));
  const dfs = (): boolean => {
    if (ops.every((op, i) => done[i] || op.outcome !== 'ok')) return true;
    for (let i = 0; i < ops.length; i++) {
      if (done[i]) continue;
      const op = ops[i]!;
      // Every ok operation that completed before this one was invoked must already be in the order.
      if (ops.some((m, j) => !done[j] && m.outcome === 'ok' && m.completeMs! < op.invokeMs)) continue;
      const before = state.get(op.key) ?? null;
      if (op.kind === 'get' && before !== op.value) continue;
      if (op.kind === 'put') state.set(op.key, op.value);
      if (op.kind === 'delete') state.set(op.key, null);
      done[i] = true;
      if (dfs()) return true;
      done[i] = false;
      state.set(op.key, before);
    }
    return false;
  };
  return dfs();
}

const smallOp = fc.record({
  process: fc.integer({ min: 0, max: 3 }),
  kind: fc.constantFrom('put' as const, 'put' as const, 'delete' as const, 'get' as const, 'get' as const),
  key: fc.constantFrom('x', 'x', 'y'),
  value: fc.constantFrom(null, 'a', 'b', 'c'),
  invokeMs: fc.integer({ min: 0, max: 10 }),
  duration: fc.integer({ min: 0, max: 6 }),
  outcome: fc.constantFrom('ok' as const, 'ok' as const, 'ok' as const, 'ok' as const, 'info' as const, 'fail' as const),
  noCompletion: fc.boolean(),
});

test('agrees with a brute-force search on small random histories', (t) => {
  let bad = 0;
  let total = 0;
  fc.assert(
    fc.property(fc.array(smallOp, { maxLength: 8 }), fc.constantFrom<Record<string, string | null>>({}, { x: 'a' }, { y: 'b' }), (raw, initial) => {
      const history: KvOp[] = raw.map((r, id) => ({
        id,
        process: r.process,
        kind: r.kind,
        key: r.key,
        value: r.kind === 'put' ? (r.value ?? 'a') : r.kind === 'get' ? r.value : null,
        invokeMs: r.invokeMs,
        completeMs: r.outcome === 'info' && r.noCompletion ? null : r.invokeMs + r.duration,
        outcome: r.outcome,
      }));
      const verdict = checkLinearizable(history, { initial });
      const expected = bruteForce(history, initial);
      total++;
      if (!expected) bad++;
      if (verdict.linearizable !== expected) return false;
      // A key is explained exactly when it fails, by its smallest failing prefix.
      return verdict.keys.every((k) => {
        if (k.linearizable !== false) return k.explanation === undefined;
        const claimed = Number(/the first (\d+) ok operation/.exec(k.explanation ?? '')?.[1]);
        return claimed === minimalFailingPrefix(history.filter((op) => op.key === k.key), initial);
      });
    }),
    { numRuns: 3000 },
  );
  t.log(`${bad} of ${total} random histories not linearizable`);
  t.true(bad > total / 10 && bad < total, 'both verdicts are exercised');
});

// ---------------------------------------------------------------------------------------------
// Generated executions: a linearization first, then intervals around its points

/** mulberry32: a small seeded PRNG, so a failing fast-check seed reproduces the history. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

interface GenOptions {
  processes: number;
  operations: number;
  keys: number;
  /** Chance that an operation is indeterminate (a write's effect is then applied or not, at random). */
  infoRate: number;
  failRate: number;
  /** Mean gap between consecutive linearization points, relative to a latency of about 10: small = heavy concurrency. */
  step: number;
}

/**
 * A history that is linearizable by construction: operations are generated in their linearization
 * order at increasing points; each one's interval [invoke, complete] contains its point (except info
 * ones, whose completion may come before the effect), and each process's operations are sequential.
 */
function generate(seed: number, o: GenOptions): KvOp[] {
  const rnd = prng(seed);
  const pick = (n: number): number => Math.floor(rnd() * n);
  const freeAt = new Array<number>(o.processes).fill(0);
  const state = new Map<string, string | null>();
  const history: KvOp[] = [];
  let clock = 0;
  for (let id = 0; id < o.operations; id++) {
    const process = pick(o.processes);
    const key = `k${pick(o.keys)}`;
    const invokeMs = freeAt[process]! + rnd() * 2;
    const point = Math.max(invokeMs, clock) + rnd() * o.step;
    clock = point;
    const r = rnd();
    const kind = r < 0.45 ? 'get' : r < 0.85 ? 'put' : 'delete';
    const q = rnd();
    const outcome: Outcome = q < o.infoRate ? 'info' : q < o.infoRate + o.failRate ? 'fail' : 'ok';
    const latency = rnd() < 0.1 ? rnd() * 100 : rnd() * 10;
    let completeMs: number | null = point + latency;
    let value: string | null = null;
    if (kind === 'put') value = `v${id}`;
    const applies = outcome === 'ok' || (outcome === 'info' && rnd() < 0.5);
    if (kind === 'get') value = outcome === 'ok' ? (state.get(key) ?? null) : rnd() < 0.5 ? null : 'garbage';
    else if (applies) state.set(key, value);
    if (outcome === 'info') completeMs = rnd() < 0.5 ? null : invokeMs + rnd() * 20; // the client gave up, maybe before the effect
    if (outcome === 'fail') completeMs = invokeMs + rnd() * 20;
    freeAt[process] = completeMs ?? invokeMs + 20;
    history.push({ id, process, kind, key, value, invokeMs, completeMs, outcome });
  }
  // The checker must not depend on the order of the records.
  for (let i = history.length - 1; i > 0; i--) {
    const j = pick(i + 1);
    [history[i], history[j]] = [history[j]!, history[i]!];
  }
  return history;
}

const genOptions = fc.record({
  processes: fc.integer({ min: 1, max: 6 }),
  operations: fc.integer({ min: 1, max: 80 }),
  keys: fc.integer({ min: 1, max: 3 }),
  infoRate: fc.constantFrom(0, 0.05, 0.2),
  failRate: fc.constantFrom(0, 0.05),
  step: fc.constantFrom(0.2, 1, 5),
});

test('generated linearizable executions are linearizable; a read of a value never written is not', (t) => {
  let mutated = 0;
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 32 - 1 }), genOptions, (seed, o) => {
      const history = generate(seed, o);
      if (checkLinearizable(history).linearizable !== true) return false;
      const gets = history.filter((op) => op.kind === 'get' && op.outcome === 'ok');
      if (gets.length === 0) return true;
      const victim = gets[seed % gets.length]!;
      const broken = history.map((op) => (op === victim ? { ...op, value: 'never-written' } : op));
      const v = checkLinearizable(broken);
      mutated++;
      if (v.linearizable !== false) return false;
      const explanation = v.keys.find((k) => k.key === victim.key)!.explanation ?? '';
      return explanation.includes(formatOp({ ...victim, value: 'never-written' }));
    }),
    { numRuns: 300 },
  );
  t.true(mutated > 100);
});

test('generated executions with one read from the future are not linearizable', (t) => {
  let mutated = 0;
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 32 - 1 }), genOptions, (seed, o) => {
      const history = generate(seed, o);
      // A completed get returns the value of a put invoked only after the get completed (values are unique).
      const pairs: [KvOp, KvOp][] = [];
      for (const g of history) {
        if (g.kind !== 'get' || g.outcome !== 'ok') continue;
        for (const p of history) {
          if (p.kind === 'put' && p.outcome !== 'fail' && p.key === g.key && p.invokeMs > g.completeMs!) pairs.push([g, p]);
        }
      }
      if (pairs.length === 0) return true;
      const [g, p] = pairs[seed % pairs.length]!;
      mutated++;
      const broken = history.map((op) => (op === g ? { ...op, value: p.value } : op));
      return checkLinearizable(broken).linearizable === false;
    }),
    { numRuns: 300 },
  );
  t.true(mutated > 50);
});

/**
 * A flip-flop planted in a generated history: gets g1, g2, g3 of one key, each completed before the
 * next is invoked, g1 reading a and g2 reading b (values of puts, so each has a single writer); g3 is
 * made to read a. Not linearizable: a's write precedes g1, b's write comes after g1 (the value changes
 * from a to b between g1 and g2) and before g2, hence between a's write and g3.
 */
function plantFlipFlop(history: KvOp[], seed: number): KvOp[] | undefined {
  const gets = history.filter((op) => op.kind === 'get' && op.outcome === 'ok' && op.value !== null).sort((a, b) => a.invokeMs - b.invokeMs);
  const n = gets.length;
  for (let s = 0; s < n; s++) {
    const g1 = gets[(s + seed) % n]!;
    const g2 = gets.find((g) => g.key === g1.key && g.invokeMs > g1.completeMs! && g.value !== g1.value);
    const g3 = g2 && gets.find((g) => g.key === g1.key && g.invokeMs > g2.completeMs! && g.value !== g1.value);
    if (g3) return history.map((op) => (op === g3 ? { ...op, value: g1.value } : op));
  }
  return undefined;
}

test('generated executions with a planted flip-flop are not linearizable', (t) => {
  let planted = 0;
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 32 - 1 }), genOptions, (seed, o) => {
      const broken = plantFlipFlop(generate(seed, o), seed);
      if (!broken) return true;
      planted++;
      return checkLinearizable(broken).linearizable === false;
    }),
    { numRuns: 300 },
  );
  t.true(planted > 50);
});

// ---------------------------------------------------------------------------------------------
// Performance

test('a 3000-operation history of 8 processes over 3 keys with heavy concurrency is checked', (t) => {
  const history = generate(20240601, { processes: 8, operations: 3000, keys: 3, infoRate: 0.05, failRate: 0.02, step: 0.3 });
  let started = performance.now();
  const v = checkLinearizable(history);
  const ms = performance.now() - started;
  t.is(v.linearizable, true);
  t.log(`linearizable: ${ms.toFixed(0)} ms for ${history.length} operations, mean concurrency ${meanConcurrency(history).toFixed(1)}; ` +
    v.keys.map((k) => `${k.key}: ${k.operations} ops, ${k.statesExplored} states`).join(', '));
  // A planted flip-flop is usually caught before the search (the value read is stale by then); take
  // the first that is not: every configuration before it has to be ruled out, then it is explained.
  let searched = false;
  for (let at = 0; at < 3000 && !searched; at += 37) {
    const broken = plantFlipFlop(history, at)!;
    started = performance.now();
    const bad = checkLinearizable(broken);
    t.is(bad.linearizable, false);
    const failed = bad.keys.find((k) => k.linearizable === false)!;
    searched = failed.statesExplored > 0;
    if (searched) t.log(`with a flip-flop: ${(performance.now() - started).toFixed(0)} ms, ${failed.statesExplored} states; ${failed.explanation!.split('\n')[0]}`);
  }
  t.true(searched);
});

/** Mean number of ok operations in flight at the invocation of an ok operation. */
function meanConcurrency(history: KvOp[]): number {
  const oks = history.filter((op) => op.outcome === 'ok');
  let sum = 0;
  for (const a of oks) sum += oks.filter((b) => b.invokeMs <= a.invokeMs && b.completeMs! >= a.invokeMs).length;
  return sum / oks.length;
}
