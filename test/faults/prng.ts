// The one source of randomness of a fault-injection run: the core's seeded PRNG (core/prng.ts), with
// named streams. Every random choice of a run (the nemesis schedule, each client's operations and
// endpoints) comes from streams forked from the run's seed by a label, so a stream does not shift when
// another one draws more or less (the clients draw as fast as the agents answer; the schedule must not
// depend on that).
import { Prng } from '../../node-agent/src/core/prng.ts';

/** FNV-1a (32 bit) of a string: turns a seed and a label into a seed. */
function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

export class Rng {
  private readonly prng: Prng;

  constructor(readonly seed: number) {
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new Error(`seed ${seed} is not an integer from 0 to 4294967295`);
    this.prng = new Prng(seed);
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.prng.next();
  }

  /** Uniform integer in [lo, hi] (inclusive). */
  int(lo: number, hi: number): number {
    if (hi < lo) throw new Error(`Rng.int(${lo}, ${hi}): empty range`);
    return this.prng.int(lo, hi);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.prng.chance(p);
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('Rng.pick from an empty list');
    return this.prng.pick(items);
  }

  /** A shuffled copy (Fisher-Yates). */
  shuffle<T>(items: readonly T[]): T[] {
    const out = [...items];
    for (let i = out.length - 1; i > 0; i--) {
      const j = this.int(0, i);
      [out[i], out[j]] = [out[j]!, out[i]!];
    }
    return out;
  }

  /** An independent stream named `label`: depends on this generator's seed and the label only, not on what was drawn. */
  fork(label: string): Rng {
    return new Rng(hash32(`${this.seed}/${label}`));
  }
}
