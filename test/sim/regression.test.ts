// Seeds that once failed, replayed on every test run. Add a failing seed once its cause is fixed:
// a number, or { "seed": N, "brokenRule"?: RULE, "note"?: "what it caught" }.

import test from 'ava';
import { readFileSync } from 'node:fs';
import type { BrokenRule } from '../../node-agent/src/core/types.ts';
import { runSeed } from './simulator.ts';

type Entry = number | { seed: number; brokenRule?: BrokenRule; note?: string };

const entries = JSON.parse(readFileSync(new URL('./regression-seeds.json', import.meta.url), 'utf8')) as Entry[];

test('the regression seed list is well formed', (t) => {
  t.true(Array.isArray(entries));
  for (const e of entries) t.true(typeof e === 'number' || (typeof e === 'object' && Number.isInteger(e.seed)), JSON.stringify(e));
});

for (const e of entries) {
  const seed = typeof e === 'number' ? e : e.seed;
  const brokenRule = typeof e === 'number' ? undefined : e.brokenRule;
  const note = typeof e === 'number' || !e.note ? '' : ` (${e.note})`;
  test(`regression seed ${seed}${brokenRule ? ` with ${brokenRule}` : ''}${note} has no violations`, (t) => {
    const r = runSeed(seed, brokenRule ? { brokenRule } : {});
    t.deepEqual(r.violations, [], `reproduce: npm run sim -- --seed ${seed}${brokenRule ? ` --break ${brokenRule}` : ''}`);
  });
}
