// A small seeded PRNG (mulberry32 state advance, splitmix-style output). The core never uses
// Math.random: jitter and any choice that must look random takes a Prng the caller injected, so the
// simulator replays exactly from a seed.

export class Prng {
  /** Internal 32-bit state; advances on every draw. */
  private state: number;

  constructor(seed: number) {
    this.state = (seed ^ 0x9e3779b9) >>> 0;
    if (this.state === 0) this.state = 0x6d2b79f5;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Uniform integer in [lo, hi] (inclusive). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('Prng.pick from an empty list');
    return items[this.int(0, items.length - 1)]!;
  }

  /** A derived generator, so independent streams do not shift each other. */
  fork(): Prng {
    return new Prng(Math.floor(this.next() * 4294967296));
  }
}
