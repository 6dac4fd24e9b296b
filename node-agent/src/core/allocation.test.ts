import test from 'ava';
import fc from 'fast-check';
import { allocate, shardsOf, validatePolicy } from './allocation.ts';
import type { GroupPolicy, Layout, NodeId, SubgroupPolicy } from './types.ts';

// ---------------------------------------------------------------------------------------------------
// Helpers

function subgroupOf(name: string, fields: Partial<SubgroupPolicy> = {}): SubgroupPolicy {
  return {
    name,
    shards: 1,
    minNodesPerShard: 1,
    maxNodesPerShard: 3,
    deliveryMode: 'ordered',
    persistent: true,
    ...fields,
  };
}

/** A layout of `policy` with the given members per flat shard id (senders: all members). */
function layoutOf(policy: GroupPolicy, membersByShard: NodeId[][]): Layout {
  const shards: Layout['shards'] = [];
  for (const subgroup of policy.subgroups) {
    for (let shardIndex = 0; shardIndex < subgroup.shards; shardIndex++) {
      const shardMembers = membersByShard[shards.length] ?? [];
      shards.push({
        shardId: shards.length,
        subgroup: subgroup.name,
        shardIndex,
        members: shardMembers,
        senders: shardMembers,
        deliveryMode: subgroup.deliveryMode,
        persistent: subgroup.persistent,
      });
    }
  }
  return { shards };
}

function membersByShardOf(policy: GroupPolicy, previous: Layout | null, members: NodeId[]): NodeId[][] | string {
  const result = allocate(policy, previous, members);
  return result.adequate ? result.layout.shards.map((shard) => shard.members) : result.reason;
}

// ---------------------------------------------------------------------------------------------------
// Named cases

const kvTwoShards: GroupPolicy = { subgroups: [subgroupOf('kv', { shards: 2, minNodesPerShard: 2, maxNodesPerShard: 3 })] };

interface AllocationCase {
  name: string;
  policy: GroupPolicy;
  /** The policy the previous layout was made with, when it differs from `policy`. */
  previousPolicy?: GroupPolicy;
  /** Members per flat shard id in the previous view; absent for a first view. */
  previous?: NodeId[][];
  members: NodeId[];
  /** Expected members per flat shard id, or the expected inadequacy reason. */
  expected: NodeId[][] | string;
}

const cases: AllocationCase[] = [
  {
    name: 'first view: minimums in rank order, then the smallest shard (lowest id on ties)',
    policy: kvTwoShards,
    members: [1, 2, 3, 4, 5],
    expected: [[1, 2, 5], [3, 4]],
  },
  {
    name: 'first view: shards list members in view rank order, not id order',
    policy: kvTwoShards,
    members: [9, 4, 7, 1],
    expected: [[9, 4], [7, 1]],
  },
  {
    name: 'a failure keeps everybody else in place',
    policy: kvTwoShards,
    previous: [[1, 2, 5], [3, 4]],
    members: [2, 3, 4, 5],
    expected: [[2, 5], [3, 4]],
  },
  {
    name: 'a failure below the minimum moves the highest-ranked node of a shard above its minimum',
    policy: kvTwoShards,
    previous: [[1, 2, 5], [3, 4]],
    members: [1, 2, 3, 5],
    expected: [[1, 2], [3, 5]],
  },
  {
    name: 'a join fills a short shard before anybody moves',
    policy: kvTwoShards,
    previous: [[1, 2, 5], [3, 4]],
    members: [1, 2, 3, 5, 6],
    expected: [[1, 2, 5], [3, 6]],
  },
  {
    name: 'joins go to the smallest shard and stop at the maximum',
    policy: kvTwoShards,
    previous: [[1, 2], [3, 4]],
    members: [1, 2, 3, 4, 5, 6, 7, 8],
    expected: [[1, 2, 5], [3, 4, 6]],
  },
  {
    name: 'reserved nodes overlap two subgroups; the pool fills the smallest shards',
    policy: {
      subgroups: [
        subgroupOf('kv', { minNodesPerShard: 2, maxNodesPerShard: 3, reservedNodeIds: [[1, 2]] }),
        subgroupOf('cache', { shards: 2, minNodesPerShard: 1, maxNodesPerShard: 2, reservedNodeIds: [[1], [2]] }),
      ],
    },
    members: [1, 2, 3, 4, 5],
    expected: [[1, 2, 5], [1, 3], [2, 4]],
  },
  {
    name: 'reserved nodes absent from the view are skipped',
    policy: {
      subgroups: [
        subgroupOf('kv', { minNodesPerShard: 1, maxNodesPerShard: 2, reservedNodeIds: [[9]] }),
        subgroupOf('log', { minNodesPerShard: 1, maxNodesPerShard: 3 }),
      ],
    },
    members: [1, 2, 3],
    expected: [[1, 3], [2]],
  },
  {
    name: 'a present reserved node counts toward its shard and stays out of the pool',
    policy: {
      subgroups: [
        subgroupOf('kv', { minNodesPerShard: 1, maxNodesPerShard: 2, reservedNodeIds: [[9]] }),
        subgroupOf('log', { minNodesPerShard: 1, maxNodesPerShard: 3 }),
      ],
    },
    members: [1, 2, 3, 9],
    expected: [[2, 9], [1, 3]],
  },
  {
    name: 'an arriving reserved node pushes the highest-ranked sticky node out of a full shard',
    policy: { subgroups: [subgroupOf('kv', { shards: 2, minNodesPerShard: 1, maxNodesPerShard: 2, reservedNodeIds: [[9], []] })] },
    previous: [[1, 2], [3]],
    members: [1, 2, 3, 9],
    expected: [[1, 9], [2, 3]],
  },
  {
    name: 'a previous layout is matched by subgroup name and shard index, not position',
    policy: {
      subgroups: [
        subgroupOf('new', { minNodesPerShard: 1, maxNodesPerShard: 1 }),
        subgroupOf('kv', { shards: 2, minNodesPerShard: 1, maxNodesPerShard: 2 }),
      ],
    },
    previousPolicy: { subgroups: [subgroupOf('kv', { shards: 2, minNodesPerShard: 1, maxNodesPerShard: 2 })] },
    previous: [[1, 2], [3, 4]],
    members: [1, 2, 3, 4, 5],
    expected: [[5], [1, 2], [3, 4]],
  },
  {
    name: 'inadequate: a minimum the pool cannot cover',
    policy: {
      subgroups: [
        subgroupOf('meta', { minNodesPerShard: 1, maxNodesPerShard: 1, reservedNodeIds: [[1]] }),
        subgroupOf('kv', { shards: 2, minNodesPerShard: 2, maxNodesPerShard: 3 }),
      ],
    },
    members: [1, 2, 3, 4],
    expected: 'subgroup "kv" shard 1 needs 2 nodes but only 1 can be assigned (4 members, 3 already serving other shards)',
  },
  {
    name: 'inadequate: an empty view',
    policy: { subgroups: [subgroupOf('kv')] },
    members: [],
    expected: 'subgroup "kv" shard 0 needs 1 node but only 0 can be assigned (0 members, 0 already serving other shards)',
  },
  {
    name: 'inadequate: more reserved nodes present than the maximum',
    policy: { subgroups: [subgroupOf('kv', { maxNodesPerShard: 2, reservedNodeIds: [[1, 2, 3]] })] },
    members: [1, 2, 3],
    expected: 'subgroup "kv" shard 0 has 3 reserved nodes present but maxNodesPerShard is 2',
  },
  {
    name: 'policy error: min above max',
    policy: { subgroups: [subgroupOf('kv', { minNodesPerShard: 3, maxNodesPerShard: 2 })] },
    members: [1, 2, 3],
    expected: 'subgroup "kv": minNodesPerShard (3) exceeds maxNodesPerShard (2)',
  },
  {
    name: 'policy error: no shards',
    policy: { subgroups: [subgroupOf('kv', { shards: 0 })] },
    members: [1],
    expected: 'subgroup "kv": shards must be an integer >= 1, got 0',
  },
  {
    name: 'policy error: minimum below 1',
    policy: { subgroups: [subgroupOf('kv', { minNodesPerShard: 0 })] },
    members: [1],
    expected: 'subgroup "kv": minNodesPerShard must be an integer >= 1, got 0',
  },
  {
    name: 'policy error: a node reserved in two shards of one subgroup',
    policy: { subgroups: [subgroupOf('kv', { shards: 2, reservedNodeIds: [[1, 2], [3, 2]] })] },
    members: [1, 2, 3],
    expected: 'subgroup "kv": node 2 is reserved in shards 0 and 1 (reservedNodeIds); a node can be reserved in only one shard per subgroup',
  },
  {
    name: 'policy error: more reserved lists than shards',
    policy: { subgroups: [subgroupOf('kv', { reservedNodeIds: [[1], [2]] })] },
    members: [1, 2],
    expected: 'subgroup "kv": reservedNodeIds has 2 entries but shards is 1',
  },
  {
    name: 'policy error: two subgroups with one name',
    policy: { subgroups: [subgroupOf('kv'), subgroupOf('kv')] },
    members: [1, 2],
    expected: 'subgroup name "kv" is used twice (subgroups[0] and subgroups[1])',
  },
  {
    name: 'member error: a duplicate id',
    policy: { subgroups: [subgroupOf('kv')] },
    members: [1, 2, 1],
    expected: 'members lists node 1 twice (ranks 0 and 2)',
  },
];

for (const allocationCase of cases) {
  test(`case: ${allocationCase.name}`, (t) => {
    const { policy, members } = allocationCase;
    const previous = allocationCase.previous === undefined
      ? null
      : layoutOf(allocationCase.previousPolicy ?? policy, allocationCase.previous);
    t.deepEqual(membersByShardOf(policy, previous, members), allocationCase.expected);
    const result = allocate(policy, previous, members);
    if (result.adequate) t.deepEqual(layoutViolationsOf(policy, members, result.layout), []);
  });
}

test('senders: the members that are listed senders, in rank order; everybody when no list is given', (t) => {
  const policy: GroupPolicy = {
    subgroups: [
      subgroupOf('kv', { minNodesPerShard: 3, maxNodesPerShard: 3, senderNodeIds: [1, 3, 7] }),
      subgroupOf('log', { minNodesPerShard: 1, maxNodesPerShard: 3 }),
    ],
  };
  const result = allocate(policy, null, [3, 2, 1, 4]);
  if (!result.adequate) return t.fail(result.reason);
  t.deepEqual(result.layout.shards.map((shard) => [shard.members, shard.senders]), [
    [[3, 2, 1], [3, 1]],
    [[4], [4]],
  ]);
});

test('shard fields: ids, names, delivery mode, and raw shards are never persistent', (t) => {
  const policy: GroupPolicy = {
    subgroups: [
      subgroupOf('kv', { shards: 2, deliveryMode: 'ordered', persistent: true }),
      subgroupOf('stream', { deliveryMode: 'raw', persistent: true }),
      subgroupOf('cache', { deliveryMode: 'ordered', persistent: false }),
    ],
  };
  const result = allocate(policy, null, [1, 2, 3, 4]);
  if (!result.adequate) return t.fail(result.reason);
  t.deepEqual(
    result.layout.shards.map(({ shardId, subgroup, shardIndex, deliveryMode, persistent }) =>
      ({ shardId, subgroup, shardIndex, deliveryMode, persistent })),
    [
      { shardId: 0, subgroup: 'kv', shardIndex: 0, deliveryMode: 'ordered', persistent: true },
      { shardId: 1, subgroup: 'kv', shardIndex: 1, deliveryMode: 'ordered', persistent: true },
      { shardId: 2, subgroup: 'stream', shardIndex: 0, deliveryMode: 'raw', persistent: false },
      { shardId: 3, subgroup: 'cache', shardIndex: 0, deliveryMode: 'ordered', persistent: false },
    ],
  );
});

test('shardsOf lists the shards a node serves, overlapping subgroups included', (t) => {
  const policy = cases.find((allocationCase) => allocationCase.name.startsWith('reserved nodes overlap'))!.policy;
  const result = allocate(policy, null, [1, 2, 3, 4, 5]);
  if (!result.adequate) return t.fail(result.reason);
  t.deepEqual(shardsOf(result.layout, 1).map((shard) => shard.shardId), [0, 1]);
  t.deepEqual(shardsOf(result.layout, 4).map((shard) => shard.shardId), [2]);
  t.deepEqual(shardsOf(result.layout, 99), []);
});

test('validatePolicy accepts a well-formed policy', (t) => {
  t.is(validatePolicy(kvTwoShards), null);
  t.is(validatePolicy({ subgroups: [] }), null);
});

// ---------------------------------------------------------------------------------------------------
// Naive reference and layout checker

/** Policy and member checks, written independently of allocation.ts. */
function referenceIsWellFormed(policy: GroupPolicy, members: NodeId[]): boolean {
  if (new Set(members).size !== members.length) return false;
  const names = policy.subgroups.map((subgroup) => subgroup.name);
  if (new Set(names).size !== names.length || names.some((name) => name === '')) return false;
  for (const subgroup of policy.subgroups) {
    const { shards, minNodesPerShard, maxNodesPerShard } = subgroup;
    if (!Number.isInteger(shards) || shards < 1) return false;
    if (!Number.isInteger(minNodesPerShard) || minNodesPerShard < 1) return false;
    if (!Number.isInteger(maxNodesPerShard) || maxNodesPerShard < minNodesPerShard) return false;
    const reserved = subgroup.reservedNodeIds ?? [];
    if (reserved.length > shards) return false;
    const allReserved = reserved.flat();
    if (new Set(allReserved).size !== allReserved.length) return false;
  }
  return true;
}

/** Adequacy by counting: reserved fit under every max, and the pool covers every shortfall. */
function referenceIsAdequate(policy: GroupPolicy, members: NodeId[]): boolean {
  if (!referenceIsWellFormed(policy, members)) return false;
  const reservedAnywhere = new Set(policy.subgroups.flatMap((subgroup) => (subgroup.reservedNodeIds ?? []).flat()));
  const poolSize = members.filter((nodeId) => !reservedAnywhere.has(nodeId)).length;
  let shortfall = 0;
  for (const subgroup of policy.subgroups) {
    for (let shardIndex = 0; shardIndex < subgroup.shards; shardIndex++) {
      const reservedPresent = (subgroup.reservedNodeIds?.[shardIndex] ?? []).filter((nodeId) => members.includes(nodeId)).length;
      if (reservedPresent > subgroup.maxNodesPerShard) return false;
      shortfall += Math.max(0, subgroup.minNodesPerShard - reservedPresent);
    }
  }
  return shortfall <= poolSize;
}

/** Flat list of (subgroup, shard index) in policy order. */
function shardPoliciesOf(policy: GroupPolicy): { subgroup: SubgroupPolicy; shardIndex: number; reserved: NodeId[] }[] {
  return policy.subgroups.flatMap((subgroup) => Array.from({ length: subgroup.shards }, (_, shardIndex) => (
    { subgroup, shardIndex, reserved: subgroup.reservedNodeIds?.[shardIndex] ?? [] })));
}

/** Everything an adequate layout must satisfy, as human-readable violations (empty when fine). */
function layoutViolationsOf(policy: GroupPolicy, members: NodeId[], layout: Layout): string[] {
  const violations: string[] = [];
  const shardPolicies = shardPoliciesOf(policy);
  const reservedAnywhere = new Set(shardPolicies.flatMap((shardPolicy) => shardPolicy.reserved));
  const rankOf = (nodeId: NodeId): number => members.indexOf(nodeId);
  if (layout.shards.length !== shardPolicies.length) violations.push(`${layout.shards.length} shards, expected ${shardPolicies.length}`);
  const poolNodeShards = new Map<NodeId, number>();
  layout.shards.forEach((shard, shardId) => {
    const shardPolicy = shardPolicies[shardId];
    if (shardPolicy === undefined) return;
    const { subgroup, shardIndex, reserved } = shardPolicy;
    const where = `shard ${shardId}`;
    if (shard.shardId !== shardId || shard.subgroup !== subgroup.name || shard.shardIndex !== shardIndex) {
      violations.push(`${where}: wrong identity ${shard.shardId}/${shard.subgroup}/${shard.shardIndex}`);
    }
    if (shard.members.length < subgroup.minNodesPerShard) violations.push(`${where}: below min`);
    if (shard.members.length > subgroup.maxNodesPerShard) violations.push(`${where}: above max`);
    if (shard.members.some((nodeId) => rankOf(nodeId) < 0)) violations.push(`${where}: a non-member`);
    if (shard.members.some((nodeId, index) => index > 0 && rankOf(shard.members[index - 1]!) >= rankOf(nodeId))) {
      violations.push(`${where}: members not in strict rank order`);
    }
    for (const nodeId of reserved) {
      if (members.includes(nodeId) && !shard.members.includes(nodeId)) violations.push(`${where}: reserved node ${nodeId} missing`);
    }
    for (const nodeId of shard.members) {
      if (reservedAnywhere.has(nodeId)) {
        if (!reserved.includes(nodeId)) violations.push(`${where}: node ${nodeId} is reserved elsewhere only`);
      } else {
        const otherShardId = poolNodeShards.get(nodeId);
        if (otherShardId !== undefined) violations.push(`pool node ${nodeId} in shards ${otherShardId} and ${shardId}`);
        poolNodeShards.set(nodeId, shardId);
      }
    }
    const senderNodeIds = subgroup.senderNodeIds;
    const expectedSenders = senderNodeIds === undefined ? shard.members : shard.members.filter((nodeId) => senderNodeIds.includes(nodeId));
    if (JSON.stringify(shard.senders) !== JSON.stringify(expectedSenders)) violations.push(`${where}: senders ${shard.senders}`);
    if (shard.deliveryMode !== subgroup.deliveryMode) violations.push(`${where}: delivery mode`);
    if (shard.persistent !== (subgroup.deliveryMode === 'ordered' && subgroup.persistent)) violations.push(`${where}: persistent`);
  });
  // Idle pool nodes only when every shard is full.
  const idlePoolNodes = members.filter((nodeId) => !reservedAnywhere.has(nodeId) && !poolNodeShards.has(nodeId));
  if (idlePoolNodes.length > 0) {
    layout.shards.forEach((shard, shardId) => {
      const max = shardPolicies[shardId]?.subgroup.maxNodesPerShard ?? 0;
      if (shard.members.length < max) violations.push(`shard ${shardId} below max while ${idlePoolNodes} idle`);
    });
  }
  return violations;
}

// ---------------------------------------------------------------------------------------------------
// Generators (small: <= 3 subgroups of <= 3 shards, node ids 0..14, <= 12 members)

const reservableNodeIdArb = fc.integer({ min: 0, max: 14 });

function subgroupArb(allowPolicyErrors: boolean): fc.Arbitrary<Omit<SubgroupPolicy, 'name'>> {
  const rarely = <T>(usual: fc.Arbitrary<T>, odd: fc.Arbitrary<T>): fc.Arbitrary<T> =>
    allowPolicyErrors ? fc.oneof({ arbitrary: usual, weight: 12 }, { arbitrary: odd, weight: 1 }) : usual;
  return fc.record({
    shards: rarely(fc.integer({ min: 1, max: 3 }), fc.constant(0)),
    minNodesPerShard: rarely(fc.integer({ min: 1, max: 3 }), fc.constant(0)),
    maxDelta: rarely(fc.integer({ min: 0, max: 2 }), fc.constant(-1)),
    deliveryMode: fc.constantFrom<SubgroupPolicy['deliveryMode']>('ordered', 'raw'),
    persistent: fc.boolean(),
    reservedNodeIds: fc.option(fc.array(fc.uniqueArray(reservableNodeIdArb, { maxLength: 2 }), { maxLength: 3 }), { freq: 2 }),
    senderNodeIds: fc.option(fc.uniqueArray(fc.integer({ min: 0, max: 24 }), { maxLength: 8 }), { freq: 2 }),
  }).map(({ maxDelta, reservedNodeIds, senderNodeIds, ...rest }) => {
    const subgroup: Omit<SubgroupPolicy, 'name'> = { ...rest, maxNodesPerShard: Math.max(0, rest.minNodesPerShard + maxDelta) };
    // Without policy errors, keep only reserved lists that fit: one per shard at most, no node twice.
    if (reservedNodeIds !== null) {
      subgroup.reservedNodeIds = allowPolicyErrors ? reservedNodeIds : withoutRepeats(reservedNodeIds.slice(0, rest.shards));
    }
    if (senderNodeIds !== null) subgroup.senderNodeIds = senderNodeIds;
    return subgroup;
  });
}

function withoutRepeats(lists: NodeId[][]): NodeId[][] {
  const seen = new Set<NodeId>();
  return lists.map((list) => list.filter((nodeId) => !seen.has(nodeId) && seen.add(nodeId)));
}

function policyArb(allowPolicyErrors: boolean): fc.Arbitrary<GroupPolicy> {
  return fc.array(subgroupArb(allowPolicyErrors), { minLength: 1, maxLength: 3 })
    .map((subgroups) => ({ subgroups: subgroups.map((subgroup, index) => ({ name: `sg${index}`, ...subgroup })) }));
}

/** Member lists in rank order; with `allowDuplicates`, sometimes one id twice. */
function membersArb(allowDuplicates: boolean, minLength = 0): fc.Arbitrary<NodeId[]> {
  const unique = fc.uniqueArray(fc.integer({ min: 0, max: 19 }), { minLength, maxLength: 12 });
  if (!allowDuplicates) return unique;
  return fc.tuple(unique, fc.integer({ min: 0, max: 20 })).map(([members, duplicateChoice]) =>
    duplicateChoice === 0 && members.length > 0 && members.length < 12 ? [...members, members[0]!] : members);
}

/** A previous layout of the policy over some of the ids (possibly nonsense: it must not matter). */
function previousArb(policy: GroupPolicy): fc.Arbitrary<Layout | null> {
  const shardCount = shardPoliciesOf(policy).length;
  return fc.option(
    fc.array(fc.uniqueArray(fc.integer({ min: 0, max: 24 }), { maxLength: 4 }), { minLength: shardCount, maxLength: shardCount })
      .map((membersByShard) => layoutOf(policy, membersByShard)),
    { freq: 3 },
  );
}

const propertyRunCount = 400;

// ---------------------------------------------------------------------------------------------------
// Properties

test('property (a): allocate is adequate exactly when the counting reference says so', (t) => {
  let adequateCount = 0;
  fc.assert(
    fc.property(
      policyArb(true).chain((policy) => fc.tuple(fc.constant(policy), previousArb(policy), membersArb(true))),
      ([policy, previous, members]) => {
        const result = allocate(policy, previous, members);
        if (result.adequate) adequateCount++;
        else if (result.reason.length === 0) return false;
        return result.adequate === referenceIsAdequate(policy, members);
      },
    ),
    { numRuns: propertyRunCount },
  );
  // The generators must exercise both outcomes.
  t.true(adequateCount > propertyRunCount / 10, `${adequateCount} adequate runs`);
  t.true(adequateCount < propertyRunCount * 0.9, `${adequateCount} adequate runs`);
});

test('property (b): adequate layouts respect min/max, reserved placement, pool uniqueness and senders', (t) => {
  fc.assert(
    fc.property(
      policyArb(false).chain((policy) => fc.tuple(fc.constant(policy), previousArb(policy), membersArb(false, 3))),
      ([policy, previous, members]) => {
        const result = allocate(policy, previous, members);
        if (!result.adequate) return true;
        t.deepEqual(layoutViolationsOf(policy, members, result.layout), []);
        return true;
      },
    ),
    { numRuns: propertyRunCount },
  );
});

test('property (c): surviving pool nodes keep their shard unless minimums force moves, and then few move', (t) => {
  let stayCheckCount = 0;
  let moveCheckCount = 0;
  fc.assert(
    fc.property(
      policyArb(false).chain((policy) => fc.tuple(
        fc.constant(policy),
        membersArb(false, 4),
        fc.array(fc.boolean(), { minLength: 12, maxLength: 12 }),
        fc.uniqueArray(fc.integer({ min: 0, max: 24 }), { maxLength: 5 }),
      )),
      ([policy, firstMembers, survives, joinerCandidates]) => {
        const first = allocate(policy, null, firstMembers);
        fc.pre(first.adequate);
        if (!first.adequate) return;
        const survivors = firstMembers.filter((_, rank) => survives[rank]);
        const secondMembers = [...survivors, ...joinerCandidates.filter((nodeId) => !firstMembers.includes(nodeId))];
        const second = allocate(policy, first.layout, secondMembers);

        const shardPolicies = shardPoliciesOf(policy);
        const reservedAnywhere = new Set(shardPolicies.flatMap((shardPolicy) => shardPolicy.reserved));
        const poolSurvivorsByShard = first.layout.shards.map((shard) =>
          shard.members.filter((nodeId) => !reservedAnywhere.has(nodeId) && secondMembers.includes(nodeId)));
        const poolSize = secondMembers.filter((nodeId) => !reservedAnywhere.has(nodeId)).length;
        const stayingCount = poolSurvivorsByShard.flat().length;
        let survivorsFit = true;
        let shortfall = 0;
        shardPolicies.forEach(({ subgroup, reserved }, shardId) => {
          const reservedPresent = reserved.filter((nodeId) => secondMembers.includes(nodeId)).length;
          const keptCount = reservedPresent + poolSurvivorsByShard[shardId]!.length;
          if (keptCount > subgroup.maxNodesPerShard) survivorsFit = false;
          shortfall += Math.max(0, subgroup.minNodesPerShard - keptCount);
        });
        const freeCount = poolSize - stayingCount;
        if (!survivorsFit) return;

        t.is(second.adequate, referenceIsAdequate(policy, secondMembers));
        if (!second.adequate) return;
        const movedCount = poolSurvivorsByShard.flatMap((nodeIds, shardId) =>
          nodeIds.filter((nodeId) => !second.layout.shards[shardId]!.members.includes(nodeId))).length;
        if (shortfall <= freeCount) stayCheckCount++;
        else moveCheckCount++;
        t.is(movedCount, Math.max(0, shortfall - freeCount), 'moves: none when free nodes suffice, else only the shortfall');
      },
    ),
    { numRuns: propertyRunCount },
  );
  // The generators must exercise both branches.
  t.true(stayCheckCount > propertyRunCount / 10, `${stayCheckCount} runs where nobody had to move`);
  t.true(moveCheckCount > 0, `${moveCheckCount} runs where somebody had to move`);
});

test('property (d): deterministic, and the inputs are left untouched', (t) => {
  fc.assert(
    fc.property(
      policyArb(true).chain((policy) => fc.tuple(fc.constant(policy), previousArb(policy), membersArb(true))),
      ([policy, previous, members]) => {
        const inputsBefore = JSON.stringify([policy, previous, members]);
        const result = allocate(policy, previous, members);
        t.deepEqual(allocate(policy, previous, members), result);
        t.deepEqual(allocate(structuredClone(policy), structuredClone(previous), [...members]), result);
        t.is(JSON.stringify([policy, previous, members]), inputsBefore);
      },
    ),
    { numRuns: propertyRunCount / 2 },
  );
});
