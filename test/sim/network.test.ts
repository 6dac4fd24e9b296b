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
  t.is(net.crash(2), 2);
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
