// Derecho's default subgroup allocator, as a pure function of (policy, previous layout, members).
//
// Vocabulary:
//  - rank: a member's index in the view's member list (rank 0 is the group leader). "Highest-ranked"
//    means the largest index, i.e. the most recently joined member.
//  - flat shard id: subgroups in policy order, their shards in order (subgroup 0 shard 0 is 0, ...).
//  - reserved node: listed in `reservedNodeIds[shardIndex]` of a subgroup. When present in the view it
//    is placed in that shard, whatever else it serves (how subgroups overlap). Reserved nodes of any
//    subgroup never join the general pool.
//  - pool: the members reserved nowhere. A pool node serves at most one shard of the whole layout.
//
// Steps:
//  1. Reserved nodes present go to their shards. More of them than maxNodesPerShard: inadequate.
//  2. Stickiness: a pool node stays in the shard it served in `previous`, while that shard is below its
//     maximum (pool nodes are kept in rank order, so the highest-ranked ones are dropped first).
//  3. Minimums, shard by shard in flat order: a shard below minNodesPerShard takes unassigned pool nodes
//     in rank order; when none are left it takes, one at a time, the highest-ranked pool node of any
//     shard that is above its minimum. A node moves only to cover a minimum free nodes cannot cover,
//     so the number of moves is the smallest possible. A shard that still falls short: inadequate.
//  4. The pool nodes left over go one at a time, in rank order, to the shard with the fewest members
//     among those below their maximum (ties: the lowest shard id). Nodes beyond every maximum stay idle.
//
// Adequacy: the allocation succeeds exactly when the policy and member list are well formed, no shard
// has more reserved nodes present than its maximum, and the pool is large enough to bring every shard
// up to its minimum: sum over shards of max(0, min - reserved present) <= pool size. Stickiness never
// makes an adequate view inadequate: nodes in a shard above its minimum can always move.

import type { AllocationResult, GroupPolicy, Layout, NodeId, ShardLayout, SubgroupPolicy } from './types.ts';

/** What the allocator works on for one shard; node sets are sets of ranks. */
interface ShardPlan {
  shardId: number;
  subgroup: SubgroupPolicy;
  shardIndex: number;
  /** Ranks of the reserved nodes present in the view. */
  reservedRanks: number[];
  /** Ranks of the pool nodes assigned so far. */
  poolRanks: Set<number>;
}

function memberCountOf(shard: ShardPlan): number {
  return shard.reservedRanks.length + shard.poolRanks.size;
}

function describeShard(shard: ShardPlan): string {
  return `subgroup "${shard.subgroup.name}" shard ${shard.shardIndex}`;
}

function isCount(value: unknown, atLeast: number): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= atLeast;
}

/**
 * Checks a policy on its own (no members needed). Returns a reason naming the offending field and
 * value, or null when the policy is well formed.
 */
export function validatePolicy(policy: GroupPolicy): string | null {
  if (!Array.isArray(policy.subgroups)) return 'policy.subgroups must be a list';
  const subgroupIndexByName = new Map<string, number>();
  for (const [subgroupIndex, subgroup] of policy.subgroups.entries()) {
    if (typeof subgroup.name !== 'string' || subgroup.name.length === 0) {
      return `subgroups[${subgroupIndex}].name must be a non-empty string, got ${JSON.stringify(subgroup.name)}`;
    }
    const name = subgroup.name;
    const earlierIndex = subgroupIndexByName.get(name);
    if (earlierIndex !== undefined) {
      return `subgroup name "${name}" is used twice (subgroups[${earlierIndex}] and subgroups[${subgroupIndex}])`;
    }
    subgroupIndexByName.set(name, subgroupIndex);
    if (!isCount(subgroup.shards, 1)) {
      return `subgroup "${name}": shards must be an integer >= 1, got ${subgroup.shards}`;
    }
    if (!isCount(subgroup.minNodesPerShard, 1)) {
      return `subgroup "${name}": minNodesPerShard must be an integer >= 1, got ${subgroup.minNodesPerShard}`;
    }
    if (!isCount(subgroup.maxNodesPerShard, 1)) {
      return `subgroup "${name}": maxNodesPerShard must be an integer >= 1, got ${subgroup.maxNodesPerShard}`;
    }
    if (subgroup.minNodesPerShard > subgroup.maxNodesPerShard) {
      return `subgroup "${name}": minNodesPerShard (${subgroup.minNodesPerShard}) exceeds maxNodesPerShard (${subgroup.maxNodesPerShard})`;
    }
    if (subgroup.deliveryMode !== 'ordered' && subgroup.deliveryMode !== 'raw') {
      return `subgroup "${name}": deliveryMode must be "ordered" or "raw", got ${JSON.stringify(subgroup.deliveryMode)}`;
    }
    const reserved = subgroup.reservedNodeIds;
    if (reserved === undefined) continue;
    if (reserved.length > subgroup.shards) {
      return `subgroup "${name}": reservedNodeIds has ${reserved.length} entries but shards is ${subgroup.shards}`;
    }
    const reservedShardIndexByNode = new Map<NodeId, number>();
    for (const [shardIndex, nodeIds] of reserved.entries()) {
      for (const nodeId of nodeIds) {
        const otherShardIndex = reservedShardIndexByNode.get(nodeId);
        if (otherShardIndex === shardIndex) {
          return `subgroup "${name}": reservedNodeIds[${shardIndex}] lists node ${nodeId} twice`;
        }
        if (otherShardIndex !== undefined) {
          return `subgroup "${name}": node ${nodeId} is reserved in shards ${otherShardIndex} and ${shardIndex} (reservedNodeIds); a node can be reserved in only one shard per subgroup`;
        }
        reservedShardIndexByNode.set(nodeId, shardIndex);
      }
    }
  }
  return null;
}

/** The shards of `layout` that `node` is a member of, in shard id order. */
export function shardsOf(layout: Layout, node: NodeId): ShardLayout[] {
  return layout.shards.filter((shard) => shard.members.includes(node));
}

function inadequate(reason: string): AllocationResult {
  return { adequate: false, reason };
}

/**
 * Assigns the view's members (in rank order) to every shard of the policy; see the comment at the top
 * of the file for the rules. Deterministic: the same inputs always give the same layout.
 */
export function allocate(policy: GroupPolicy, previous: Layout | null, members: NodeId[]): AllocationResult {
  const policyError = validatePolicy(policy);
  if (policyError !== null) return inadequate(policyError);

  const rankOf = new Map<NodeId, number>();
  for (const [rank, nodeId] of members.entries()) {
    if (rankOf.has(nodeId)) return inadequate(`members lists node ${nodeId} twice (ranks ${rankOf.get(nodeId)} and ${rank})`);
    rankOf.set(nodeId, rank);
  }

  // Step 1: shards and their reserved nodes.
  const shards: ShardPlan[] = [];
  const shardIdByKey = new Map<string, number>();
  const reservedAnywhere = new Set<NodeId>();
  for (const subgroup of policy.subgroups) {
    for (let shardIndex = 0; shardIndex < subgroup.shards; shardIndex++) {
      const reservedNodeIds = subgroup.reservedNodeIds?.[shardIndex] ?? [];
      for (const nodeId of reservedNodeIds) reservedAnywhere.add(nodeId);
      const reservedRanks = reservedNodeIds
        .map((nodeId) => rankOf.get(nodeId))
        .filter((rank): rank is number => rank !== undefined)
        .sort((a, b) => a - b);
      const shard: ShardPlan = { shardId: shards.length, subgroup, shardIndex, reservedRanks, poolRanks: new Set() };
      if (reservedRanks.length > subgroup.maxNodesPerShard) {
        return inadequate(`${describeShard(shard)} has ${reservedRanks.length} reserved nodes present but maxNodesPerShard is ${subgroup.maxNodesPerShard}`);
      }
      shardIdByKey.set(JSON.stringify([subgroup.name, shardIndex]), shard.shardId);
      shards.push(shard);
    }
  }

  // The pool: ranks of the members reserved nowhere, ascending.
  const poolRanks = members.map((_, rank) => rank).filter((rank) => !reservedAnywhere.has(members[rank]!));
  const assign = (rank: number, shard: ShardPlan): void => {
    shard.poolRanks.add(rank);
  };

  // Step 2: stickiness. A node's previous shard is the first shard (by id) of `previous` listing it,
  // matched to the current policy by subgroup name and shard index.
  const previousShardIdByNode = new Map<NodeId, number>();
  for (const previousShard of previous?.shards ?? []) {
    const shardId = shardIdByKey.get(JSON.stringify([previousShard.subgroup, previousShard.shardIndex]));
    if (shardId === undefined) continue;
    for (const nodeId of previousShard.members) {
      if (!previousShardIdByNode.has(nodeId)) previousShardIdByNode.set(nodeId, shardId);
    }
  }
  const unassignedRanks: number[] = [];
  for (const rank of poolRanks) {
    const shardId = previousShardIdByNode.get(members[rank]!);
    const shard = shardId === undefined ? undefined : shards[shardId]!;
    if (shard !== undefined && memberCountOf(shard) < shard.subgroup.maxNodesPerShard) assign(rank, shard);
    else unassignedRanks.push(rank);
  }

  // Step 3: minimums, first from unassigned nodes, then by moving the highest-ranked surplus node.
  let nextUnassigned = 0;
  const highestRankedSurplusNode = (): { rank: number; donor: ShardPlan } | null => {
    let best: { rank: number; donor: ShardPlan } | null = null;
    for (const donor of shards) {
      if (memberCountOf(donor) <= donor.subgroup.minNodesPerShard) continue;
      for (const rank of donor.poolRanks) {
        if (best === null || rank > best.rank) best = { rank, donor };
      }
    }
    return best;
  };
  for (const shard of shards) {
    while (memberCountOf(shard) < shard.subgroup.minNodesPerShard) {
      if (nextUnassigned < unassignedRanks.length) {
        assign(unassignedRanks[nextUnassigned++]!, shard);
        continue;
      }
      const surplus = highestRankedSurplusNode();
      if (surplus === null) {
        const assignableCount = memberCountOf(shard);
        const minNodes = shard.subgroup.minNodesPerShard;
        return inadequate(`${describeShard(shard)} needs ${minNodes} ${minNodes === 1 ? 'node' : 'nodes'} but only ${assignableCount} can be assigned (${members.length} members, ${members.length - assignableCount} already serving other shards)`);
      }
      surplus.donor.poolRanks.delete(surplus.rank);
      assign(surplus.rank, shard);
    }
  }

  // Step 4: the rest, one at a time in rank order, to the smallest shard below its maximum.
  for (; nextUnassigned < unassignedRanks.length; nextUnassigned++) {
    let smallest: ShardPlan | null = null;
    for (const shard of shards) {
      if (memberCountOf(shard) >= shard.subgroup.maxNodesPerShard) continue;
      if (smallest === null || memberCountOf(shard) < memberCountOf(smallest)) smallest = shard;
    }
    if (smallest === null) break;
    assign(unassignedRanks[nextUnassigned]!, smallest);
  }

  return {
    adequate: true,
    layout: {
      shards: shards.map((shard): ShardLayout => {
        const shardMembers = [...shard.reservedRanks, ...shard.poolRanks].sort((a, b) => a - b).map((rank) => members[rank]!);
        const senderNodeIds = shard.subgroup.senderNodeIds;
        const senders = senderNodeIds === undefined ? [...shardMembers] : shardMembers.filter((nodeId) => senderNodeIds.includes(nodeId));
        return {
          shardId: shard.shardId,
          subgroup: shard.subgroup.name,
          shardIndex: shard.shardIndex,
          members: shardMembers,
          senders,
          deliveryMode: shard.subgroup.deliveryMode,
          persistent: shard.subgroup.deliveryMode === 'raw' ? false : shard.subgroup.persistent,
        };
      }),
    },
  };
}
