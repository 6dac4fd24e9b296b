// The simulator itself: one seed replays exactly, scenarios are well formed, and a replica that does
// nothing is reported (the liveness checker is wired in).

import test from 'ava';
import fc from 'fast-check';
import { Prng } from '../../node-agent/src/core/prng.ts';
import { runSeed } from './simulator.ts';
import { adequate, generatePolicy, generateScenario } from './scenario.ts';
import type { ReplicaLike } from './node.ts';

test('a seed replays exactly: same trace, same result', (t) => {
  for (const seed of [11, 12]) {
    const a: string[] = [];
    const b: string[] = [];
    const ra = runSeed(seed, { traceTo: (l) => a.push(l), ticks: 400 });
    const rb = runSeed(seed, { traceTo: (l) => b.push(l), ticks: 400 });
    t.deepEqual(a, b);
    t.deepEqual(ra, rb);
    t.true(a.length > 20);
  }
});

test('tracing does not change the run', (t) => {
  const quiet = runSeed(13, { ticks: 400 });
  const traced = runSeed(13, { ticks: 400, traceTo: () => {} });
  t.deepEqual(quiet, traced);
});

test('scenarios are well formed: 3..7 founders, an adequate policy of 1..3 subgroups, faults inside the fault phase', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 32 - 1 }), (seed) => {
      const s = generateScenario(seed);
      if (s.founders.length < 3 || s.founders.length > 7) return false;
      if (s.policy.subgroups.length < 1 || s.policy.subgroups.length > 3) return false;
      if (!adequate(s.policy, s.founders)) return false;
      for (const sg of s.policy.subgroups) {
        if (sg.shards < 1 || sg.shards > 2 || sg.minNodesPerShard > sg.maxNodesPerShard || sg.maxNodesPerShard > 4) return false;
        if (sg.deliveryMode === 'raw' && sg.persistent) return false;
      }
      for (const e of s.events) {
        const end = e.at + ('lasts' in e ? e.lasts : 'downFor' in e ? e.downFor : 0);
        if (e.at < 0 || end > s.faultTicks) return false;
      }
      return s.events.filter((e) => e.kind === 'totalFailure').length <= 1;
    }),
    { numRuns: 300 },
  );
  t.pass();
});

test('generated policies mix the three kinds of subgroup', (t) => {
  const kinds = new Set<string>();
  for (let seed = 0; seed < 50; seed++) {
    for (const sg of generatePolicy(new Prng(seed), [1, 2, 3, 4, 5]).subgroups) kinds.add(sg.deliveryMode === 'raw' ? 'raw' : sg.persistent ? 'persistent' : 'volatile');
  }
  t.deepEqual([...kinds].sort(), ['persistent', 'raw', 'volatile']);
});

test('a replica that never does anything is reported by the liveness checker', (t) => {
  const inert: ReplicaLike = {
    step() {},
    tick() {},
    send: () => ({ ok: false, reason: 'inactive' }),
    leave() {},
    transferWanted: () => false,
    stateTransferred() {},
    hasReady: () => false,
    ready: () => {
      throw new Error('no Ready');
    },
    advance() {},
    status: () => ({ nodeId: 0, mode: 'joining', viewId: -1, members: [], leader: null, wedged: false, waiting: { kind: 'joining', message: 'inert' }, shards: [] }),
    assertInvariants() {},
  };
  const r = runSeed(5, { ticks: 100, livenessTicks: 50, createReplica: () => inert });
  t.true(r.violations.length > 0);
  t.true(r.violations.every((v) => v.startsWith('liveness:')), r.violations.join('\n'));
  t.regex(r.violations.join('\n'), /is still joining at the end \(waiting, joining: inert\)/);
});
