// The nemesis: which faults a run injects, and when. The whole schedule is planned from the run's seed
// before the run starts (a pure function of seed, nemesis, members, duration and partition mode), so
// the same seed gives the same faults at the same times whatever the clients and the agents do; the
// executor (run.ts) then carries it out and records what actually happened, with times.
//
// A run alternates fault periods (3-8 s) and quiet periods (3-8 s). In a fault period faults follow one
// another (0.2-1 s apart) until the period is over:
//   kill       kill -9 of one member, restarted 0.5-3 s later (a supervisor, a kubelet)
//   killall    kill -9 of every member, all restarted 0.5-2 s later
//   pause      SIGSTOP of one member for 1.5-4 s (longer than suspectMs), then SIGCONT
//   partition  links cut by the proxies for 2-6 s: one member isolated, or a minority split off
//   combined   a random mix of the above; with probability 0.4 a second fault overlaps the first, on
//              members chosen so that at most the fault budget (a minority, floor((n-1)/2) members) is
//              impaired at once (killall never overlaps anything)

import type { CutMode } from './proxy.ts';
import type { Rng } from './prng.ts';

export const NEMESES = ['kill', 'killall', 'pause', 'partition', 'combined'] as const;
export type NemesisName = (typeof NEMESES)[number];
export type FaultKind = 'kill' | 'killall' | 'pause' | 'partition';
/** 'mixed': each partition picks blackhole or reset at random. */
export type PartitionMode = CutMode | 'mixed';

export interface PlannedFault {
  id: number;
  kind: FaultKind;
  /** Start, ms after the run's start. */
  atMs: number;
  /** kill/killall: time down before the restart; pause: time stopped; partition: time until the heal. */
  durationMs: number;
  /** kill/pause: the member; killall: every member; partition: the minority side (isolated members). */
  targets: number[];
  /** Partitions: the two sides (minority first) and how the links between them are cut. */
  partition?: { sides: [number[], number[]]; mode: CutMode };
  /** Set when this fault overlaps an earlier one of the same fault period (combined). */
  overlaps?: number;
}

export interface PlanOptions {
  nemesis: NemesisName;
  members: number[];
  durationMs: number;
  rng: Rng;
  partitionMode?: PartitionMode;
}

/** How many members may be impaired at once: a minority. */
export function faultBudget(members: number): number {
  return Math.max(1, Math.floor((members - 1) / 2));
}

/** The members a fault takes out of the majority. */
export function impaired(f: PlannedFault): number[] {
  return f.kind === 'partition' ? f.partition!.sides[0] : f.targets;
}

export function planFaults(options: PlanOptions): PlannedFault[] {
  const { nemesis, durationMs, rng } = options;
  const members = [...options.members].sort((a, b) => a - b);
  if (members.length === 0) throw new Error('planFaults: no members');
  const budget = faultBudget(members.length);
  const faults: PlannedFault[] = [];
  let nextId = 1;

  const partitionMode = (): CutMode => {
    const m = options.partitionMode ?? 'blackhole';
    return m === 'mixed' ? rng.pick(['blackhole', 'reset'] as const) : m;
  };
  const duration = (kind: FaultKind): number => {
    switch (kind) {
      case 'kill': return rng.int(500, 3000);
      case 'killall': return rng.int(500, 2000);
      case 'pause': return rng.int(1500, 4000);
      case 'partition': return rng.int(2000, 6000);
    }
  };
  const partitionOf = (minority: number[]): [number[], number[]] => [
    [...minority].sort((a, b) => a - b),
    members.filter((m) => !minority.includes(m)),
  ];
  /** A fault of `kind` at `atMs`; `allowed`: the members it may impair (all when undefined). */
  const make = (kind: FaultKind, atMs: number, allowed?: number[]): PlannedFault => {
    const pool = allowed ?? members;
    const f: PlannedFault = { id: nextId++, kind, atMs, durationMs: duration(kind), targets: [] };
    if (kind === 'killall') f.targets = [...members];
    else if (kind === 'kill' || kind === 'pause') f.targets = [rng.pick(pool)];
    else {
      // Isolate one member, or split off a minority of up to the budget (from the allowed pool).
      const most = Math.min(budget, pool.length);
      const size = most > 1 && rng.chance(0.5) ? rng.int(2, most) : 1;
      const minority = rng.shuffle(pool).slice(0, size);
      f.partition = { sides: partitionOf(minority), mode: partitionMode() };
      f.targets = f.partition.sides[0];
    }
    return f;
  };
  const combinedKind = (): FaultKind => rng.pick(['kill', 'kill', 'pause', 'pause', 'partition', 'partition', 'killall'] as const);

  /** A second fault overlapping `first`, impairing at most the budget together with it; null past the run's end. */
  const overlapping = (first: PlannedFault): PlannedFault | null => {
    const taken = impaired(first);
    const others = rng.shuffle(members.filter((m) => !taken.includes(m)));
    const allowed = [...taken, ...others.slice(0, Math.max(0, budget - taken.length))];
    // A member killed by the first fault cannot also be killed or paused, nor a paused one paused again
    // (a paused one may be killed): the second fault reaches someone else, or is a partition.
    const killed = first.kind === 'kill' ? first.targets : [];
    const paused = first.kind === 'pause' ? first.targets : [];
    const poolFor = (k: FaultKind): number[] => allowed.filter((m) => !killed.includes(m) && (k !== 'pause' || !paused.includes(m)));
    const kinds = (['kill', 'pause', 'partition'] as const).filter((k) => k === 'partition' || poolFor(k).length > 0);
    const kind = rng.pick(kinds);
    const pool = kind === 'partition' ? allowed : poolFor(kind);
    const at = first.atMs + rng.int(0, Math.floor(first.durationMs / 2));
    if (at >= durationMs - 500) return null;
    const g = make(kind, at, pool);
    g.overlaps = first.id;
    return g;
  };

  let t = rng.int(1000, 3000); // a quiet start: the workload gets going
  while (t < durationMs - 1000) {
    const periodEnd = t + rng.int(3000, 8000);
    let s = t;
    while (s < periodEnd && s < durationMs - 500) {
      const kind: FaultKind = nemesis === 'combined' ? combinedKind() : nemesis;
      const f = make(kind, s);
      faults.push(f);
      let end = f.atMs + f.durationMs;
      if (nemesis === 'combined' && kind !== 'killall' && rng.chance(0.4)) {
        const g = overlapping(f);
        if (g) {
          faults.push(g);
          end = Math.max(end, g.atMs + g.durationMs);
        }
      }
      s = end + rng.int(200, 1000);
    }
    t = s + rng.int(3000, 8000);
  }
  return faults;
}

/** One line for a planned fault, e.g. `#3 partition [2] | [1,3] (blackhole) at 5.20 s for 3.10 s`. */
export function describeFault(f: PlannedFault): string {
  const what = f.kind === 'partition'
    ? `partition [${f.partition!.sides[0].join(',')}] | [${f.partition!.sides[1].join(',')}] (${f.partition!.mode})`
    : f.kind === 'killall' ? 'killall' : `${f.kind} node ${f.targets.join(',')}`;
  return `#${f.id} ${what} at ${(f.atMs / 1000).toFixed(2)} s for ${(f.durationMs / 1000).toFixed(2)} s${f.overlaps !== undefined ? ` (overlapping #${f.overlaps})` : ''}`;
}
