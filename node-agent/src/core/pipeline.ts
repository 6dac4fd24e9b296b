// The binomial pipeline: the schedule Derecho (RDMC) uses to multicast a large message cut into blocks.
//
// Model. Ranks 0..n-1 are relative to the sender: rank 0 is the sender and starts with every block.
// Time is cut into synchronous steps; in one step a rank sends at most one block and receives at most
// one block (one-port, full duplex). A rank only forwards a block it received in an earlier step.
// No schedule can finish in fewer than k - 1 + ceil(log2 n) steps for k blocks and n ranks (the sender
// sends the last block at step k - 1 at the earliest; after that, the set of its holders at most
// doubles per step). This schedule reaches that bound:
//
//     steps = blockCount + ceil(log2 memberCount) - 1   (memberCount >= 2; memberCount 1: no steps)
//
// Hypercube (n = 2^D). Ranks are the vertices of a D-dimensional hypercube. At step t every vertex v
// exchanges with its partner v XOR 2^j along dimension j = t mod D. Which block goes from v to its
// partner u (u != 0; nobody sends to the sender) depends only on u, j and t:
//   - if bit j of u is 0: block t - D;
//   - if bit j of u is 1: block t - D + i, where i in 1..D is the cyclic distance from j to the next
//     set bit of u (i = D when j is u's only set bit; then v = 0 and the block is t).
// Negative blocks mean "nothing yet". Blocks past the end are clamped to the last block (k - 1), and a
// transfer of a block its receiver already holds is dropped, so every rank gets every block once.
// Why it works: the sender injects block t towards vertex 2^(t mod D) at step t, and each block then
// spreads along a binomial tree. Over D consecutive steps a vertex u receives blocks t - D at steps
// whose dimension is not a bit of u, and at steps whose dimension p is a bit of u it receives a block
// ahead of that (by the distance to u's next set bit): every block exactly once. A vertex forwards only
// blocks it received at its "set-bit" steps, and at any step t it forwards the block it received at its
// most recent set-bit step before t, so it always holds what it sends. Every block b < k - 1 reaches
// every vertex by step b + D, and each vertex receives a (clamped) block >= k - 1 at its last set-bit
// step of the final round, so all is done after k + D - 1 steps.
//
// Other n (2^D < n < 2^(D+1)). The hypercube has 2^D vertices; the E = n - 2^D extra ranks are twins
// of vertices 1..E: rank 2^D - 1 + v shares vertex v with rank v. A twinned vertex plays one hypercube
// vertex with two ranks. At each step one of the two is its "inbound" rank (it receives what the
// hypercube sends to the vertex) and the other is its "outbound" rank (it sends what the vertex sends).
// The roles swap after every set-bit step of the vertex, so the outbound rank is always the one that
// received the block the vertex forwards next. The two spare ports are used inside the vertex: in each
// step the inbound rank passes its twin one block the twin lacks. A rank's backlog towards its twin
// never exceeds one block (while inbound it receives at most one block per step and passes one on), so
// one extra step after the hypercube schedule, in which the twins swap their last blocks both ways,
// completes everything: k + D steps = k + ceil(log2 n) - 1.
//
// The schedule omits steps in which nothing is transferred.

/** One block moving from one rank to another in a step. */
export interface BlockTransfer {
  from: number;
  to: number;
  block: number;
}

/** The transfers that happen at the same time; a rank appears at most once as `from` and once as `to`. */
export interface PipelineStep {
  transfers: BlockTransfer[];
}

/** What one rank does in one step of a schedule. */
export interface RankStep {
  /** Index of the step in the schedule. */
  step: number;
  sendTo?: { to: number; block: number };
  receiveFrom?: { from: number; block: number };
}

/** Number of blocks a message of `messageBytes` is cut into with `blockBytes` per block (at least 1). */
export function blocksFor(messageBytes: number, blockBytes: number): number {
  if (!Number.isFinite(messageBytes) || messageBytes < 0) {
    throw new RangeError(`messageBytes must be a finite number >= 0, got ${messageBytes}`);
  }
  if (!Number.isFinite(blockBytes) || blockBytes <= 0) {
    throw new RangeError(`blockBytes must be a finite number > 0, got ${blockBytes}`);
  }
  return Math.max(1, Math.ceil(messageBytes / blockBytes));
}

/** floor(log2 value) for an integer value >= 1. */
function floorLog2(value: number): number {
  let exponent = 0;
  while (2 ** (exponent + 1) <= value) exponent++;
  return exponent;
}

/**
 * The block vertex-level schedule sends to vertex `receiverVertex` at step `step` along `dimension`,
 * before clamping (may be negative: nothing to send yet). See the comment at the top of the file.
 */
function hypercubeBlock(receiverVertex: number, dimension: number, step: number, dimensionCount: number): number {
  if ((receiverVertex & (1 << dimension)) === 0) return step - dimensionCount;
  let distance = 1;
  while (distance < dimensionCount && (receiverVertex & (1 << ((dimension + distance) % dimensionCount))) === 0) {
    distance++;
  }
  return step - dimensionCount + distance;
}

/**
 * The binomial pipeline schedule for multicasting `blockCount` blocks from rank 0 to ranks
 * 1..memberCount-1. Takes exactly blockCount + ceil(log2 memberCount) - 1 steps when memberCount >= 2
 * (the optimum), none when memberCount is 1. Every rank other than 0 receives every block exactly once;
 * in a step a rank sends at most one block and receives at most one block, and only sends blocks it
 * received in an earlier step.
 */
export function binomialPipelineSchedule(memberCount: number, blockCount: number): PipelineStep[] {
  if (!Number.isInteger(memberCount) || memberCount < 1) {
    throw new RangeError(`memberCount must be an integer >= 1, got ${memberCount}`);
  }
  if (!Number.isInteger(blockCount) || blockCount < 1) {
    throw new RangeError(`blockCount must be an integer >= 1, got ${blockCount}`);
  }
  if (memberCount === 1) return [];

  const dimensionCount = floorLog2(memberCount);
  const vertexCount = 2 ** dimensionCount;
  const twinCount = memberCount - vertexCount; // vertices 1..twinCount have a twin rank
  const twinRankOf = (vertex: number): number => vertexCount - 1 + vertex;
  const isTwinned = (vertex: number): boolean => vertex >= 1 && vertex <= twinCount;

  /** holds[rank * blockCount + block] = 1 once the rank has the block. */
  const holds = new Uint8Array(memberCount * blockCount);
  holds.fill(1, 0, blockCount);
  const has = (rank: number, block: number): boolean => holds[rank * blockCount + block] === 1;
  /** Per rank of a twinned vertex: blocks it received from outside its vertex, not yet passed to its twin. */
  const backlogForTwin: number[][] = Array.from({ length: memberCount }, () => []);
  /** Per vertex: how many of its set-bit steps have passed (its twins swap roles after each one). */
  const setBitStepsPassed = new Array<number>(vertexCount).fill(0);

  const inboundRank = (vertex: number): number =>
    isTwinned(vertex) && setBitStepsPassed[vertex]! % 2 === 1 ? twinRankOf(vertex) : vertex;
  const outboundRank = (vertex: number): number =>
    isTwinned(vertex) && setBitStepsPassed[vertex]! % 2 === 0 ? twinRankOf(vertex) : vertex;
  const twinOf = (rank: number): number => (rank >= vertexCount ? rank - vertexCount + 1 : twinRankOf(rank));

  /** The oldest block `rank` holds from outside its vertex that its twin lacks, removed from the backlog. */
  const takeBacklog = (rank: number): number | null => {
    const backlog = backlogForTwin[rank]!;
    const twin = twinOf(rank);
    while (backlog.length > 0) {
      const block = backlog.shift()!;
      if (!has(twin, block)) return block;
    }
    return null;
  };

  const schedule: PipelineStep[] = [];
  const apply = (transfers: BlockTransfer[], fromOutsideVertex: boolean[]): void => {
    transfers.forEach((transfer, index) => {
      holds[transfer.to * blockCount + transfer.block] = 1;
      const to = transfer.to;
      const vertex = to >= vertexCount ? to - vertexCount + 1 : to;
      if (fromOutsideVertex[index] && isTwinned(vertex) && !has(twinOf(to), transfer.block)) {
        backlogForTwin[to]!.push(transfer.block);
      }
    });
    if (transfers.length > 0) schedule.push({ transfers });
  };

  const hypercubeStepCount = blockCount + dimensionCount - 1;
  for (let step = 0; step < hypercubeStepCount; step++) {
    const dimension = step % dimensionCount;
    const transfers: BlockTransfer[] = [];
    const fromOutsideVertex: boolean[] = [];
    for (let vertex = 0; vertex < vertexCount; vertex++) {
      const partner = vertex ^ (1 << dimension);
      if (partner === 0) continue;
      const unclampedBlock = hypercubeBlock(partner, dimension, step, dimensionCount);
      if (unclampedBlock < 0) continue;
      const block = Math.min(unclampedBlock, blockCount - 1);
      const to = inboundRank(partner);
      if (has(to, block)) continue;
      transfers.push({ from: outboundRank(vertex), to, block });
      fromOutsideVertex.push(true);
    }
    for (let vertex = 1; vertex <= twinCount; vertex++) {
      const from = inboundRank(vertex);
      const block = takeBacklog(from);
      if (block === null) continue;
      transfers.push({ from, to: outboundRank(vertex), block });
      fromOutsideVertex.push(false);
    }
    apply(transfers, fromOutsideVertex);
    for (let vertex = 1; vertex <= twinCount; vertex++) {
      if ((vertex & (1 << dimension)) !== 0) setBitStepsPassed[vertex]!++;
    }
  }

  // Twins swap what is left of their backlogs, both ways at once (at most one block each way).
  for (;;) {
    const transfers: BlockTransfer[] = [];
    for (let vertex = 1; vertex <= twinCount; vertex++) {
      for (const from of [vertex, twinRankOf(vertex)]) {
        const block = takeBacklog(from);
        if (block !== null) transfers.push({ from, to: twinOf(from), block });
      }
    }
    if (transfers.length === 0) break;
    apply(transfers, transfers.map(() => false));
  }
  return schedule;
}

/** The steps of `schedule` in which `rank` sends or receives, in order: what a transport follows. */
export function scheduleFor(rank: number, schedule: PipelineStep[]): RankStep[] {
  const rankSteps: RankStep[] = [];
  schedule.forEach((pipelineStep, step) => {
    const rankStep: RankStep = { step };
    for (const transfer of pipelineStep.transfers) {
      if (transfer.from === rank) rankStep.sendTo = { to: transfer.to, block: transfer.block };
      if (transfer.to === rank) rankStep.receiveFrom = { from: transfer.from, block: transfer.block };
    }
    if (rankStep.sendTo !== undefined || rankStep.receiveFrom !== undefined) rankSteps.push(rankStep);
  });
  return rankSteps;
}
