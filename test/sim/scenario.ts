// A scenario from a seed: the founders, the policy, the network's character and a fault schedule.
// Targets are picked when a fault fires (they depend on the group's state then); everything else is
// fixed here, so a scenario can be printed before the run.

import { allocate } from '../../node-agent/src/core/allocation.ts';
import { Prng } from '../../node-agent/src/core/prng.ts';
import type { GroupPolicy, NodeId, SubgroupPolicy } from '../../node-agent/src/core/types.ts';
import type { NetworkOptions } from './network.ts';

export type FaultEvent =
  /**
   * Crash one node (picked then: never more than a minority of the view down, never a shard's last
   * holder; while no running node has a view, i.e. during a restart, any running node).
   */
  | { at: number; kind: 'crash'; downFor: number }
  /** Like crash, but some of what it already sent still arrives, up to `lateTicks` ticks late. */
  | { at: number; kind: 'lateCrash'; downFor: number; lateTicks: number }
  /**
   * Like crash (same bounds), inside the node's next Ready that persists: after its records are written
   * (or, `torn`, a prefix of them), before anything is delivered or sent.
   */
  | { at: number; kind: 'midReadyCrash'; downFor: number; tornFraction: number | null }
  /**
   * Like crash, and the node comes back with an empty disk. Same bounds, and the group must be stable
   * (a view installed, nobody restarting or wedged), so the wiped node is never a state's only holder.
   * At most one per seed (this or a total failure's `wipeOne`).
   */
  | { at: number; kind: 'wipe'; downFor: number }
  /**
   * Every node crashes; each restarts within `staggerMax` ticks. At most 3 per seed. `wipeOne`: one of
   * them comes back with an empty disk (picked with the bounds of 'wipe'; counts as the seed's wipe).
   */
  | { at: number; kind: 'totalFailure'; staggerMax: number; wipeOne: boolean }
  /**
   * A majority of the current view crashes at once, at least one member keeps running (and stays wedged
   * until it exits on its own); each crashed one restarts within `staggerMax` ticks. At most 2 per seed.
   */
  | { at: number; kind: 'majorityFailure'; staggerMax: number }
  /** Random split into `groups` sides, healed after `lasts` ticks. */
  | { at: number; kind: 'partition'; groups: number; lasts: number }
  /** One directed link A -> B drops everything (B -> A works), restored after `lasts` ticks. */
  | { at: number; kind: 'oneWay'; lasts: number }
  /** Non-transitive cut: A and B cannot reach each other, both still reach everyone else; `lasts` ticks. */
  | { at: number; kind: 'pairCut'; lasts: number }
  /** One running node receives nothing (it still sends) for `lasts` ticks. */
  | { at: number; kind: 'deaf'; lasts: number }
  /** One running node is stopped (SIGSTOP) for `lasts` ticks, then resumes with its stale state. */
  | { at: number; kind: 'pause'; lasts: number }
  /** Slower links (every link, or one node's) for `lasts` ticks. */
  | { at: number; kind: 'spike'; extraDelay: number; lasts: number; wholeNetwork: boolean }
  /** A brand-new node id joins. */
  | { at: number; kind: 'join' }
  /** A member leaves gracefully (if the group stays adequate without it). */
  | { at: number; kind: 'leave' }
  /** A burst of application sends in one tick (backpressure). */
  | { at: number; kind: 'burst'; count: number };

export interface Scenario {
  seed: number;
  founders: NodeId[];
  policy: GroupPolicy;
  network: Partial<NetworkOptions>;
  /** Faults happen in [0, faultTicks); then every fault is healed and the quiet phase starts. */
  faultTicks: number;
  /** Budget of the quiet phase (settle, then probes). */
  livenessTicks: number;
  /** Probability of one application send per tick during the fault phase. */
  sendChance: number;
  events: FaultEvent[];
  /** Joins stop when this many node ids exist. */
  maxNodes: number;
  /**
   * The stores' fsync policy: 'os' in about one seed of four (then a power outage may lose acknowledged
   * writes, and only writes acknowledged before one may be missing; everything else is checked as usual).
   */
  storage: 'fsync' | 'os';
}

export interface ScenarioOverrides {
  faultTicks?: number;
  livenessTicks?: number;
  storage?: 'fsync' | 'os';
}

/** Share of seeds whose stores run with fsync policy 'os'. */
export const OS_STORAGE_CHANCE = 0.25;

/** Default length of the fault phase (drawn per seed) and of the quiet phase's budget. */
export const FAULT_TICKS_MIN = 1400;
export const FAULT_TICKS_MAX = 2600;
export const LIVENESS_TICKS = 1500;

/** Bounds of the schedule (see "Faults and their bounds" in README.md). */
export const MAX_TOTAL_FAILURES = 3;
export const MAX_MAJORITY_FAILURES = 2;
export const MAX_WIPES = 1;
/** Ticks between two group failures (total or majority): room for the group to restart in between. */
export const GROUP_FAILURE_GAP = 500;
/** Partitions and cut links last 10..this many ticks; deaf nodes 10..DEAF_TICKS_MAX, pauses 5..PAUSE_TICKS_MAX. */
export const LINK_FAULT_TICKS_MAX = 200;
/** Cut links (one-way or pairs) in place at once; one deaf node and one paused process at a time. */
export const MAX_CUT_LINKS = 2;
export const DEAF_TICKS_MAX = 150;
export const PAUSE_TICKS_MAX = 120;
/** A crashed node's late messages arrive at most this many ticks later than planned. */
export const LATE_TICKS_MAX = 30;

export function generateScenario(seed: number, overrides: ScenarioOverrides = {}): Scenario {
  const prng = new Prng(seed);
  const policyPrng = prng.fork();
  const eventPrng = prng.fork();
  const founderCount = prng.int(3, 7);
  const founders = Array.from({ length: founderCount }, (_, i) => i + 1);
  const policy = generatePolicy(policyPrng, founders);
  const faultTicks = overrides.faultTicks ?? prng.int(FAULT_TICKS_MIN, FAULT_TICKS_MAX);
  const network: Partial<NetworkOptions> = {
    maxDelayTicks: prng.int(1, 4),
    longDelayChance: prng.pick([0, 0.002, 0.01, 0.03]),
    longDelayMaxTicks: prng.int(6, 16),
  };
  const sendChance = prng.pick([0.1, 0.25, 0.5, 0.8]);
  return {
    seed,
    founders,
    policy,
    network,
    faultTicks,
    livenessTicks: overrides.livenessTicks ?? LIVENESS_TICKS,
    sendChance,
    events: generateEvents(eventPrng, faultTicks),
    maxNodes: founderCount + prng.int(1, 3),
    // Drawn from its own stream, so that adding it left every other choice of a seed as it was.
    storage: overrides.storage ?? (new Prng(seed ^ 0x6f5c0a11).chance(OS_STORAGE_CHANCE) ? 'os' : 'fsync'),
  };
}

export const WEIGHTS: readonly (readonly [FaultEvent['kind'], number])[] = [
  ['crash', 18],
  ['lateCrash', 9],
  ['midReadyCrash', 8],
  ['wipe', 5],
  ['totalFailure', 6],
  ['majorityFailure', 5],
  ['partition', 12],
  ['oneWay', 7],
  ['pairCut', 6],
  ['deaf', 5],
  ['pause', 9],
  ['spike', 7],
  ['join', 10],
  ['leave', 5],
  ['burst', 8],
];

function pickKind(prng: Prng, allowed: (kind: FaultEvent['kind']) => boolean): FaultEvent['kind'] {
  const weights = WEIGHTS.filter(([k]) => allowed(k));
  const total = weights.reduce((s, [, w]) => s + w, 0);
  let x = prng.next() * total;
  for (const [k, w] of weights) {
    if (x < w) return k;
    x -= w;
  }
  return weights[0]![0];
}

function generateEvents(prng: Prng, faultTicks: number): FaultEvent[] {
  const events: FaultEvent[] = [];
  const last = faultTicks - 20;
  let t = prng.int(30, 120);
  let totalFailures = 0;
  let majorityFailures = 0;
  let wipes = 0;
  let lastGroupFailure = -GROUP_FAILURE_GAP;
  let forced: FaultEvent['kind'] | null = null;
  while (t < last) {
    const groupFailureRoom = t - lastGroupFailure >= GROUP_FAILURE_GAP;
    const kind = forced ?? pickKind(prng, (k) => {
      if (k === 'totalFailure') return groupFailureRoom && totalFailures < MAX_TOTAL_FAILURES;
      if (k === 'majorityFailure') return groupFailureRoom && majorityFailures < MAX_MAJORITY_FAILURES;
      if (k === 'wipe') return wipes < MAX_WIPES;
      return true;
    });
    forced = null;
    const room = Math.max(1, last - t);
    let next = prng.int(15, 150);
    switch (kind) {
      case 'crash':
      case 'wipe':
        if (kind === 'wipe') wipes++;
        events.push({ at: t, kind, downFor: Math.min(room, prng.int(10, 300)) });
        break;
      case 'lateCrash':
        events.push({ at: t, kind, downFor: Math.min(room, prng.int(10, 300)), lateTicks: prng.int(1, LATE_TICKS_MAX) });
        break;
      case 'midReadyCrash':
        events.push({ at: t, kind, downFor: Math.min(room, prng.int(10, 300)), tornFraction: prng.chance(0.5) ? prng.next() : null });
        break;
      case 'totalFailure':
      case 'majorityFailure':
        if (kind === 'totalFailure') totalFailures++;
        else majorityFailures++;
        if (prng.chance(0.4) && t + 40 < last) {
          // A member crashes first: the group failure then hits the view change that removes it (view
          // changes proposed and accepted by some members only, not yet installed).
          events.push({ at: t, kind: 'crash', downFor: Math.min(room, prng.int(10, 300)) });
          t += prng.int(18, 40);
        }
        lastGroupFailure = t;
        if (kind === 'totalFailure') {
          const wipeOne = wipes < MAX_WIPES && prng.chance(0.3);
          if (wipeOne) wipes++;
          events.push({ at: t, kind, staggerMax: prng.int(5, 40), wipeOne });
        } else {
          events.push({ at: t, kind, staggerMax: prng.int(5, 80) });
        }
        // Often the next fault hits the restart while it is under way; sometimes a partition splits the
        // returning nodes.
        if (prng.chance(0.3)) {
          forced = 'partition';
          next = prng.int(1, 30);
        } else {
          next = prng.int(5, 150);
        }
        break;
      case 'partition':
        events.push({ at: t, kind, groups: prng.chance(0.2) ? 3 : 2, lasts: Math.min(room, prng.int(10, LINK_FAULT_TICKS_MAX)) });
        break;
      case 'oneWay':
      case 'pairCut':
        events.push({ at: t, kind, lasts: Math.min(room, prng.int(10, LINK_FAULT_TICKS_MAX)) });
        break;
      case 'deaf':
        events.push({ at: t, kind, lasts: Math.min(room, prng.int(10, DEAF_TICKS_MAX)) });
        break;
      case 'pause':
        events.push({ at: t, kind, lasts: Math.min(room, prng.int(5, PAUSE_TICKS_MAX)) });
        break;
      case 'spike':
        events.push({ at: t, kind, extraDelay: prng.int(5, 40), lasts: Math.min(room, prng.int(10, 150)), wholeNetwork: prng.chance(0.4) });
        break;
      case 'join':
      case 'leave':
        events.push({ at: t, kind });
        break;
      case 'burst':
        events.push({ at: t, kind, count: prng.int(20, 120) });
        break;
    }
    t += next;
  }
  return events;
}

/** Whether `members` can host the policy. */
export function adequate(policy: GroupPolicy, members: readonly NodeId[]): boolean {
  return members.length > 0 && allocate(policy, null, [...members]).adequate;
}

/**
 * 1..3 subgroups mixing ordered persistent, ordered volatile and raw; 1..2 shards; min 1..2, max 2..4;
 * sometimes reserved ids or a sender set. Redrawn until the founders can host it.
 */
export function generatePolicy(prng: Prng, founders: readonly NodeId[]): GroupPolicy {
  for (let attempt = 0; attempt < 100; attempt++) {
    const count = prng.int(1, 3);
    const subgroups: SubgroupPolicy[] = [];
    for (let i = 0; i < count; i++) {
      const kind = prng.pick(['persistent', 'volatile', 'raw'] as const);
      const shards = prng.int(1, 2);
      const minNodesPerShard = prng.int(1, 2);
      const maxNodesPerShard = prng.int(Math.max(2, minNodesPerShard), 4);
      const sg: SubgroupPolicy = {
        name: `${kind === 'persistent' ? 'log' : kind === 'volatile' ? 'cache' : 'feed'}${i}`,
        shards,
        minNodesPerShard,
        maxNodesPerShard,
        deliveryMode: kind === 'raw' ? 'raw' : 'ordered',
        persistent: kind === 'persistent',
      };
      if (prng.chance(0.15)) {
        // Reserve one founder for one shard (an overlap with another subgroup).
        const reserved: NodeId[][] = Array.from({ length: shards }, () => []);
        reserved[prng.int(0, shards - 1)]!.push(prng.pick(founders));
        sg.reservedNodeIds = reserved;
      }
      if (prng.chance(0.2)) {
        const senders = founders.filter(() => prng.chance(0.5));
        sg.senderNodeIds = senders.length > 0 ? senders : [prng.pick(founders)];
      }
      subgroups.push(sg);
    }
    const policy = { subgroups };
    if (adequate(policy, founders)) return policy;
  }
  return {
    subgroups: [{ name: 'log0', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true }],
  };
}

export function describeScenario(s: Scenario): string[] {
  const lines: string[] = [];
  lines.push(`seed ${s.seed}: founders [${s.founders.join(',')}], at most ${s.maxNodes} node ids`);
  for (const sg of s.policy.subgroups) {
    const kind = sg.deliveryMode === 'raw' ? 'raw' : sg.persistent ? 'ordered persistent' : 'ordered volatile';
    lines.push(
      `  subgroup ${sg.name}: ${kind}, ${sg.shards} shard(s), ${sg.minNodesPerShard}..${sg.maxNodesPerShard} nodes per shard` +
        (sg.reservedNodeIds ? `, reserved ${JSON.stringify(sg.reservedNodeIds)}` : '') +
        (sg.senderNodeIds ? `, senders [${sg.senderNodeIds.join(',')}]` : ''),
    );
  }
  lines.push(
    `  network: delay 1..${s.network.maxDelayTicks}, long delays ${((s.network.longDelayChance ?? 0) * 100).toFixed(1)}% up to ${s.network.longDelayMaxTicks}; ` +
      `send chance ${s.sendChance}/tick; faults until t=${s.faultTicks}, then up to ${s.livenessTicks} quiet ticks`,
  );
  lines.push(`  storage: fsync policy '${s.storage}'${s.storage === 'os' ? ' (a machine crash may lose what the OS had not flushed)' : ''}`);
  const counts = new Map<string, number>();
  for (const e of s.events) counts.set(e.kind, (counts.get(e.kind) ?? 0) + 1);
  lines.push(`  schedule: ${[...counts].map(([k, n]) => `${n} ${k}`).join(', ') || 'no faults'}`);
  return lines;
}
