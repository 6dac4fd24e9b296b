// The in-agent read load generator of `npm run bench` (benchReads).

import test from 'ava';
import { benchReads } from './bench.ts';

test('benchReads: closed loops for the duration, throughput and latency of the answered reads', async (t) => {
  let inFlight = 0;
  let maxInFlight = 0;
  const read = async (): Promise<void> => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    await new Promise((r) => setTimeout(r, 2));
    inFlight--;
  };
  const r = await benchReads(read, { concurrency: 4, durationMs: 200 });
  t.is(maxInFlight, 4, 'exactly `concurrency` reads in flight');
  t.true(r.reads > 20, `${r.reads} reads`);
  t.is(r.errors, 0);
  t.true(r.seconds >= 0.19 && r.seconds < 2);
  t.true(Math.abs(r.readsPerSec - r.reads / r.seconds) < 1e-6);
  t.true(r.latencyMs !== null && r.latencyMs.p50 >= 1.5 && r.latencyMs.p99 >= r.latencyMs.p50);
});

test('benchReads: refused reads are counted with the first reason, not retried in a hot loop', async (t) => {
  let calls = 0;
  const r = await benchReads(async () => {
    calls++;
    throw new Error('node 2 is in a minority');
  }, { concurrency: 2, durationMs: 100 });
  t.is(r.reads, 0);
  t.is(r.errors, calls);
  t.true(calls < 100, `${calls} attempts in 100 ms (a pause after each refusal)`);
  t.is(r.firstError, 'node 2 is in a minority');
  t.is(r.latencyMs, null);
});
