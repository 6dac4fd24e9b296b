import test from 'ava';
import fc from 'fast-check';
import type { Version } from '../core/types.ts';
import { KvStore, LogObject, shardForKey } from './kv.ts';
import { decodeInvocation, encodeInvocation, MethodError, ObjectHost, Persistent, ReplicatedObject } from './replicated.ts';
import type { Json } from './replicated.ts';

const v = (viewId: number, seq: number): Version => ({ viewId, seq });

class Counter extends ReplicatedObject {
  static override readonly ordered = ['add', 'fail'];
  static override readonly queries = ['get', 'getAt'];
  readonly count = new Persistent<number>(this, 0);

  add(n: unknown): Json {
    if (typeof n !== 'number') throw new MethodError('n must be a number');
    this.count.set(this.count.get() + n);
    return this.count.get();
  }

  fail(): Json {
    throw new Error('boom');
  }

  get(): Json {
    return this.count.get();
  }

  getAt(viewId: number, seq: number): Json {
    return this.count.getAt({ viewId, seq });
  }
}

test('ordered methods apply in delivery order and versioned fields answer as of any version', (t) => {
  const host = new ObjectHost(Counter, 0);
  const inv = (n: number) => ({ m: 'add', a: [n], o: 1, r: n });
  t.deepEqual(host.apply(inv(5), v(0, 0), 1, 'ordered'), { ok: true, value: 5 });
  t.deepEqual(host.apply(inv(2), v(0, 1), 2, 'ordered'), { ok: true, value: 7 });
  t.deepEqual(host.apply(inv(10), v(1, 0), 1, 'ordered'), { ok: true, value: 17 });
  t.deepEqual(host.query('get', []), { ok: true, value: 17 });
  t.deepEqual(host.query('getAt', [0, 0]), { ok: true, value: 5 });
  t.deepEqual(host.query('getAt', [0, 5]), { ok: true, value: 7 });
  t.deepEqual(host.query('getAt', [-1, -1]), { ok: true, value: 0 });
  t.deepEqual(host.applied, v(1, 0));
});

test('a method error is an error reply with its status, and a query cannot change state', (t) => {
  const host = new ObjectHost(Counter, 0);
  t.deepEqual(host.apply({ m: 'add', a: ['x'], o: 1, r: 1 }, v(0, 0), 1, 'ordered'), { ok: false, error: 'n must be a number', status: 400 });
  t.deepEqual(host.apply({ m: 'fail', a: [], o: 1, r: 2 }, v(0, 1), 1, 'ordered'), { ok: false, error: 'boom', status: 500 });
  t.deepEqual(host.apply({ m: 'get', a: [], o: 1, r: 3 }, v(0, 2), 1, 'ordered'), { ok: false, error: 'get is not an ordered method of Counter', status: 400 });
  t.deepEqual(host.query('add', [1]), { ok: false, error: 'add is not a query of Counter', status: 400 });
  t.deepEqual(host.query('get', []), { ok: true, value: 0 });
  t.throws(() => new Counter().count.set(1), { message: /outside an update/ });
});

test('a type listing a method it does not have is refused', (t) => {
  class Broken extends ReplicatedObject {
    static override readonly ordered = ['missing'];
  }
  t.throws(() => new ObjectHost(Broken, 0), { message: 'replicated type Broken: missing is listed but is not a method' });
});

test('snapshots restore the whole versioned state', (t) => {
  const a = new ObjectHost(Counter, 0);
  a.apply({ m: 'add', a: [3], o: 0, r: 0 }, v(0, 0), 1, 'ordered');
  a.apply({ m: 'add', a: [4], o: 0, r: 0 }, v(0, 1), 1, 'ordered');
  const b = new ObjectHost(Counter, 0);
  b.object.restore(JSON.parse(JSON.stringify(a.object.snapshot())) as Json);
  t.deepEqual(b.query('get', []), { ok: true, value: 7 });
  t.deepEqual(b.query('getAt', [0, 0]), { ok: true, value: 3 });
});

test('invocations round-trip and garbage is not an invocation', (t) => {
  const inv = { m: 'put', a: ['k', 'v'], o: 3, r: 99 };
  t.deepEqual(decodeInvocation(encodeInvocation(inv)), inv);
  t.is(decodeInvocation(new Uint8Array([0xff, 0x00])), null);
  t.is(decodeInvocation(new TextEncoder().encode('{"m":1}')), null);
});

test('kv: put, get, get at a version, delete, list by prefix', (t) => {
  const host = new ObjectHost(KvStore, 0);
  const put = (k: string, val: string, at: Version) => host.apply({ m: 'put', a: [k, val], o: 0, r: 0 }, at, 1, 'ordered');
  t.deepEqual(put('user/1', 'ada', v(0, 0)), { ok: true, value: { version: { viewId: 0, seq: 0 }, previous: null } });
  put('user/2', 'bob', v(0, 1));
  t.deepEqual(put('user/1', 'alan', v(0, 2)), { ok: true, value: { version: { viewId: 0, seq: 2 }, previous: 'ada' } });
  put('other', 'x', v(0, 3));
  t.deepEqual(host.query('get', ['user/1']), { ok: true, value: { key: 'user/1', value: 'alan', version: { viewId: 0, seq: 2 } } });
  t.deepEqual(host.query('getAt', ['user/1', { viewId: 0, seq: 1 }]), { ok: true, value: { key: 'user/1', value: 'ada', version: { viewId: 0, seq: 0 } } });
  t.deepEqual(host.query('size', []), { ok: true, value: 3 });
  t.deepEqual(host.apply({ m: 'del', a: ['user/2'], o: 0, r: 0 }, v(1, 0), 1, 'ordered'), { ok: true, value: { version: { viewId: 1, seq: 0 }, deleted: true } });
  t.deepEqual(host.apply({ m: 'del', a: ['nope'], o: 0, r: 0 }, v(1, 1), 1, 'ordered'), { ok: true, value: { version: { viewId: 1, seq: 1 }, deleted: false } });
  t.deepEqual(host.query('get', ['user/2']), { ok: true, value: null });
  t.deepEqual(host.query('getAt', ['user/2', { viewId: 0, seq: 9 }]), { ok: true, value: { key: 'user/2', value: 'bob', version: { viewId: 0, seq: 1 } } });
  const list = host.query('list', ['user/']);
  t.deepEqual(list, { ok: true, value: [{ key: 'user/1', value: 'alan', version: { viewId: 0, seq: 2 } }] });
  t.deepEqual(host.query('size', []), { ok: true, value: 2 });
  t.false(host.apply({ m: 'put', a: ['', 'x'], o: 0, r: 0 }, v(1, 2), 1, 'ordered').ok);
  t.false(host.apply({ m: 'put', a: ['k', 5], o: 0, r: 0 }, v(1, 3), 1, 'ordered').ok);
  const copy = new ObjectHost(KvStore, 0);
  copy.object.restore(JSON.parse(JSON.stringify(host.object.snapshot())) as Json);
  t.deepEqual(copy.query('list', ['']), host.query('list', ['']));
  t.deepEqual(copy.query('size', []), host.query('size', []));
});

test('log: append and read ranges', (t) => {
  const host = new ObjectHost(LogObject, 0);
  for (let i = 0; i < 5; i++) host.apply({ m: 'append', a: [`e${i}`], o: 0, r: 0 }, v(0, i), 1, 'ordered');
  t.deepEqual(host.query('length', []), { ok: true, value: 5 });
  t.deepEqual(host.query('read', [3, 10]), {
    ok: true,
    value: [{ index: 3, entry: 'e3', version: { viewId: 0, seq: 3 } }, { index: 4, entry: 'e4', version: { viewId: 0, seq: 4 } }],
  });
});

test('property: shardForKey is a stable function into [0, shards)', (t) => {
  t.is(shardForKey('hello', 2), shardForKey('hello', 2));
  fc.assert(fc.property(fc.string(), fc.integer({ min: 1, max: 64 }), (key, n) => {
    const s = shardForKey(key, n);
    return Number.isInteger(s) && s >= 0 && s < n && s === shardForKey(key, n);
  }));
  // Keys spread over the shards.
  const counts = [0, 0, 0, 0];
  for (let i = 0; i < 4000; i++) counts[shardForKey(`key-${i}`, 4)]!++;
  for (const c of counts) t.true(c > 800 && c < 1200, `counts ${counts.join(',')}`);
});

test('property: Persistent.getAt agrees with a naive scan of the history', (t) => {
  fc.assert(fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 5 }), fc.integer())), fc.integer({ min: -1, max: 4 }), fc.integer({ min: -1, max: 6 }), (ops, qv, qs) => {
    const sorted = [...ops].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    const host = new ObjectHost(Counter, 0);
    for (const [vid, seq, n] of sorted) host.apply({ m: 'add', a: [n], o: 0, r: 0 }, v(vid, seq), 1, 'ordered');
    let expected = 0;
    let sum = 0;
    for (const [vid, seq, n] of sorted) {
      sum += n;
      if (vid < qv || (vid === qv && seq <= qs)) expected = sum;
    }
    const got = host.query('getAt', [qv, qs]);
    return got.ok && got.value === expected;
  }));
  t.pass();
});
