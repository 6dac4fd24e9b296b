import test from 'ava';
import fc from 'fast-check';
import { Prng } from '../../node-agent/src/core/prng.ts';
import { Network } from './network.ts';
import type { InFlight } from './network.ts';

function drain<M>(net: Network<M>, until: number): InFlight<M>[] {
  const out: InFlight<M>[] = [];
  for (let t = net.now; t <= until; t++) {
    net.setTime(t);
    for (let m = net.deliverNext(); m; m = net.deliverNext()) out.push(m);
  }
  return out;
}

test('a message arrives after 1..maxDelayTicks ticks', (t) => {
  const net = new Network<string>(new Prng(1), { maxDelayTicks: 3, longDelayChance: 0 });
  for (let i = 0; i < 200; i++) {
    net.setTime(i * 10);
    net.send(1, 2, `m${i}`);
    const got = drain(net, i * 10 + 9);
    t.is(got.length, 1);
    const delay = got[0]!.deliverAt - got[0]!.sentAt;
    t.true(delay >= 1 && delay <= 3, `delay ${delay}`);
  }
});

test('nothing is delivered in the tick it was sent', (t) => {
  const net = new Network<string>(new Prng(2), { maxDelayTicks: 1, longDelayChance: 0 });
  net.setTime(5);
  net.send(1, 2, 'x');
  t.is(net.deliverNext(), null);
  net.setTime(6);
  t.is(net.deliverNext()?.message, 'x');
});

test('links are FIFO even with random and occasionally long delays', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 31 }), fc.array(fc.tuple(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 })), { maxLength: 300 }), (seed, sends) => {
      const net = new Network<{ from: number; to: number; n: number }>(new Prng(seed), { maxDelayTicks: 5, longDelayChance: 0.2, longDelayMaxTicks: 30 });
      let now = 0;
      sends.forEach(([from, to], n) => {
        if (n % 7 === 0) net.setTime(++now);
        net.send(from, to, { from, to, n });
      });
      const got = drain(net, now + 100);
      if (got.length !== sends.length) return false;
      const last = new Map<string, number>();
      for (const m of got) {
        const k = `${m.from}>${m.to}`;
        if ((last.get(k) ?? -1) > m.message.n) return false;
        last.set(k, m.message.n);
      }
      return true;
    }),
  );
  t.pass();
});

test('delivery is deterministic for a seed', (t) => {
  const run = (seed: number): string[] => {
    const net = new Network<string>(new Prng(seed), { maxDelayTicks: 4, longDelayChance: 0.1, longDelayMaxTicks: 20 });
    for (let i = 0; i < 100; i++) {
      net.setTime(i);
      net.send(i % 3, (i + 1) % 3, `m${i}`);
    }
    return drain(net, 200).map((m) => `${m.deliverAt}:${m.message}`);
  };
  t.deepEqual(run(7), run(7));
  t.notDeepEqual(run(7), run(8));
});

test('a partition drops messages across it, including those already queued', (t) => {
  const net = new Network<string>(new Prng(3), { maxDelayTicks: 5, longDelayChance: 0 });
  net.send(1, 3, 'queued-across');
  net.send(1, 2, 'queued-same-side');
  const dropped = net.partition([[1, 2], [3]]);
  t.is(dropped, 1);
  t.false(net.send(3, 1, 'across'));
  t.true(net.send(2, 1, 'same-side'));
  t.false(net.canReach(1, 3));
  const got = drain(net, 20).map((m) => m.message);
  t.deepEqual(got.sort(), ['queued-same-side', 'same-side']);
  t.is(net.stats.dropped.partition, 2);
  net.heal();
  t.true(net.send(3, 1, 'after-heal'));
  t.deepEqual(drain(net, 40).map((m) => m.message), ['after-heal']);
});

test('nodes named in no partition group are together in one more group', (t) => {
  const net = new Network<string>(new Prng(4));
  net.partition([[1], [2]]);
  t.true(net.canReach(3, 4));
  t.false(net.canReach(3, 1));
  t.false(net.canReach(1, 2));
});

test('a crashed node neither sends nor receives, and its queued messages are lost', (t) => {
  const net = new Network<string>(new Prng(5), { maxDelayTicks: 5, longDelayChance: 0 });
  net.send(1, 2, 'to-crashing');
  net.send(2, 1, 'from-crashing');
  net.send(1, 3, 'unrelated');
  t.deepEqual(net.crash(2), { dropped: 2, late: 0 });
  t.false(net.send(1, 2, 'to-down'));
  t.deepEqual(drain(net, 20).map((m) => m.message), ['unrelated']);
  net.revive(2);
  t.true(net.send(1, 2, 'after-revive'));
  t.deepEqual(drain(net, 40).map((m) => m.message), ['after-revive']);
});

test('an exiting node loses what was sent to it but its own last messages still arrive', (t) => {
  const net = new Network<string>(new Prng(6), { maxDelayTicks: 5, longDelayChance: 0 });
  net.send(2, 1, 'goodbye');
  net.send(1, 2, 'to-exited');
  net.exit(2);
  t.deepEqual(drain(net, 20).map((m) => m.message), ['goodbye']);
});

test('a full link drops and counts the overflow, and logs it', (t) => {
  const lines: string[] = [];
  const net = new Network<number>(new Prng(7), { maxDelayTicks: 2, queueLimit: 3 }, (l) => lines.push(l));
  const sent = [0, 1, 2, 3, 4].map((i) => net.send(1, 2, i));
  t.deepEqual(sent, [true, true, true, false, false]);
  t.is(net.stats.dropped.overflow, 2);
  t.is(lines.length, 2);
  t.regex(lines[0]!, /overflow/);
  t.deepEqual(drain(net, 10).map((m) => m.message), [0, 1, 2]);
  t.true(net.send(1, 2, 5), 'room again once delivered');
});

test('a delay spike slows the links of its nodes until it ends', (t) => {
  const net = new Network<string>(new Prng(8), { maxDelayTicks: 1, longDelayChance: 0 });
  net.addSpike({ extraDelay: 10, lasts: 5, nodes: [2] });
  net.send(1, 2, 'slow');
  net.send(1, 3, 'fast');
  const got = drain(net, 3);
  t.deepEqual(got.map((m) => m.message), ['fast']);
  const slow = drain(net, 20);
  t.is(slow[0]!.deliverAt, 11);
  net.setTime(30);
  t.is(net.activeSpikes().length, 0);
  net.send(1, 2, 'normal');
  t.is(drain(net, 31)[0]?.message, 'normal');
});

test('the FIFO rule holds a fast message behind a slow one on the same link', (t) => {
  const net = new Network<string>(new Prng(9), { maxDelayTicks: 1, longDelayChance: 0 });
  net.addSpike({ extraDelay: 20, lasts: 1, nodes: null });
  net.send(1, 2, 'slow');
  net.setTime(2); // the spike is over
  net.send(1, 2, 'fast');
  const got = drain(net, 40);
  t.deepEqual(got.map((m) => m.message), ['slow', 'fast']);
  t.is(got[1]!.deliverAt, got[0]!.deliverAt);
});

test('a one-way cut drops the link and what is queued on it, the other direction still works', (t) => {
  const net = new Network<string>(new Prng(10), { maxDelayTicks: 3, longDelayChance: 0 });
  net.send(1, 2, 'queued-cut');
  net.send(2, 1, 'queued-back');
  t.is(net.cutLink(1, 2), 1);
  t.false(net.canReach(1, 2));
  t.true(net.canReach(2, 1));
  t.false(net.send(1, 2, 'cut'));
  t.true(net.send(2, 1, 'back'));
  t.true(net.send(1, 3, 'elsewhere'));
  t.deepEqual(drain(net, 20).map((m) => m.message).sort(), ['back', 'elsewhere', 'queued-back']);
  t.is(net.stats.dropped.cut, 2);
  t.is(net.stats.dropped.partition, 0);
  t.deepEqual(net.cutLinkList(), [[1, 2]]);
  net.restoreLink(1, 2);
  t.true(net.send(1, 2, 'restored'));
  t.deepEqual(drain(net, 40).map((m) => m.message), ['restored']);
});

test('a pair cut is not transitive: both ends still reach a third node', (t) => {
  const net = new Network<string>(new Prng(11), { maxDelayTicks: 2, longDelayChance: 0 });
  net.cutLink(1, 2);
  net.cutLink(2, 1);
  t.false(net.canReach(1, 2));
  t.false(net.canReach(2, 1));
  for (const [a, b] of [[1, 3], [3, 1], [2, 3], [3, 2]] as const) t.true(net.canReach(a, b), `${a}->${b}`);
  net.restoreAll();
  t.true(net.canReach(1, 2) && net.canReach(2, 1));
});

test('a deaf node receives nothing, queued messages included, but still sends', (t) => {
  const net = new Network<string>(new Prng(12), { maxDelayTicks: 3, longDelayChance: 0 });
  net.send(1, 2, 'queued-to-deaf');
  net.send(2, 1, 'queued-from-deaf');
  t.is(net.deafen(2), 1);
  t.true(net.isDeaf(2));
  t.false(net.send(3, 2, 'to-deaf'));
  t.true(net.send(2, 3, 'from-deaf'));
  t.true(net.send(2, 2, 'loopback'));
  t.deepEqual(drain(net, 20).map((m) => m.message).sort(), ['from-deaf', 'loopback', 'queued-from-deaf']);
  t.is(net.stats.dropped.cut, 2);
  net.undeafen(2);
  t.true(net.send(3, 2, 'hears-again'));
  t.deepEqual(drain(net, 40).map((m) => m.message), ['hears-again']);
});

test('a paused receiver gets nothing; on release what waited comes first, in link order, within the queue bound', (t) => {
  const lines: string[] = [];
  const net = new Network<string>(new Prng(13), { maxDelayTicks: 2, longDelayChance: 0, queueLimit: 3 }, (l) => lines.push(l));
  net.hold(2);
  t.true(net.isHeld(2));
  net.send(1, 2, 'a');
  net.send(3, 2, 'x');
  net.send(1, 3, 'other');
  t.deepEqual(drain(net, 30).map((m) => m.message), ['other'], 'nothing reaches the paused node');
  net.send(1, 2, 'b');
  net.send(1, 2, 'c');
  t.false(net.send(1, 2, 'd'), 'the link is full: what waits counts in its queue');
  t.is(net.stats.dropped.overflow, 1);
  net.release(2);
  t.true(net.send(3, 2, 'y'));
  const got = drain(net, 60);
  t.deepEqual(got.filter((m) => m.from === 1).map((m) => m.message), ['a', 'b', 'c']);
  t.deepEqual(got.filter((m) => m.from === 3).map((m) => m.message), ['x', 'y']);
  t.is(got[0]!.deliverAt, 30, 'the waiting messages are due at once');
  t.false(net.isHeld(2));
});

test('a paused node that crashes loses what waited for it', (t) => {
  const net = new Network<string>(new Prng(14), { maxDelayTicks: 1, longDelayChance: 0 });
  net.hold(2);
  net.send(1, 2, 'waits');
  drain(net, 5);
  net.crash(2);
  net.revive(2);
  net.release(2);
  t.deepEqual(drain(net, 20), []);
  t.false(net.isHeld(2));
});

test('a crash with late messages: a prefix of what the node sent still arrives, late but in order and bounded; what was sent to it is lost', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 31 }), fc.integer({ min: 1, max: 30 }), (seed, lateTicks) => {
      const net = new Network<number>(new Prng(seed), { maxDelayTicks: 5, longDelayChance: 0 });
      const planned = new Map<number, number>();
      for (let i = 0; i < 20; i++) {
        net.send(1, 2 + (i % 2), i);
        planned.set(i, net.queued(1, 2 + (i % 2)).at(-1)!.deliverAt);
        net.send(2, 1, 100 + i);
      }
      const r = net.crash(1, { lateTicks });
      if (r.late + r.dropped !== 40 || net.stats.late !== r.late) return false;
      const got = drain(net, 100);
      if (got.some((m) => m.to === 1)) return false;
      if (got.length !== r.late) return false;
      for (const to of [2, 3]) {
        const seq = got.filter((m) => m.to === to).map((m) => m.message);
        const sent = [...planned.keys()].filter((i) => 2 + (i % 2) === to);
        // A prefix of what was sent on the link, in order.
        if (seq.join(',') !== sent.slice(0, seq.length).join(',')) return false;
      }
      return got.every((m) => m.deliverAt >= planned.get(m.message)! && m.deliverAt <= planned.get(m.message)! + lateTicks);
    }),
    { numRuns: 200 },
  );
  t.pass();
});

test('a crash with late messages keeps some of them for some seed, and they arrive after the crash', (t) => {
  let kept = 0;
  for (let seed = 0; seed < 20; seed++) {
    const net = new Network<string>(new Prng(seed), { maxDelayTicks: 3, longDelayChance: 0 });
    for (let i = 0; i < 5; i++) net.send(1, 2, `m${i}`);
    const r = net.crash(1, { lateTicks: 10 });
    kept += r.late;
    t.is(drain(net, 40).length, r.late);
  }
  t.true(kept > 0);
});
