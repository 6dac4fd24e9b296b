// Small pure functions over state-table columns: round-robin sequence numbers, stability (a message is
// deliverable once every member received it), the ragged-trim prefix and the persistence frontier.
// Each is tested against a naive enumeration in stability.test.ts.

/** Global sequence number of a sender's index-th message: senders take turns round-robin. */
export function globalSeq(index: number, senderRank: number, senderCount: number): number {
  return index * senderCount + senderRank;
}

/** Inverse of globalSeq. */
export function seqOwner(seq: number, senderCount: number): { index: number; senderRank: number } {
  return { index: Math.floor(seq / senderCount), senderRank: seq % senderCount };
}

/**
 * Length of the longest gap-free prefix of the round-robin order covered by per-sender counts:
 * the number of global sequence numbers g such that every g' < g has index(g') < counts[owner(g')].
 * Sender r's first missing message has sequence counts[r] * n + r; the prefix ends at the smallest.
 */
export function contiguousSeqCount(counts: readonly number[]): number {
  const n = counts.length;
  if (n === 0) return 0;
  let first = Number.POSITIVE_INFINITY;
  for (let r = 0; r < n; r++) first = Math.min(first, counts[r]! * n + r);
  return first;
}

/**
 * Highest global sequence number inside per-sender trims (every sender r's first trims[r] messages),
 * or -1 when the trims hold nothing: the last version the ragged-edge cleanup delivers. Unlike
 * contiguousSeqCount - 1, it counts messages of a sender beyond another sender's missing slots.
 */
export function lastSeqInside(trims: readonly number[]): number {
  const n = trims.length;
  let last = -1;
  for (let r = 0; r < n; r++) if (trims[r]! > 0) last = Math.max(last, (trims[r]! - 1) * n + r);
  return last;
}

/**
 * Per-sender trims holding exactly the global sequence numbers 0..seq (seq -1: nothing): the inverse of
 * lastSeqInside for a gap-free prefix. Sender r's messages at or below seq number floor((seq - r) / n) + 1.
 */
export function trimsThrough(seq: number, senderCount: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < senderCount; r++) out.push(seq >= r ? Math.floor((seq - r) / senderCount) + 1 : 0);
  return out;
}

/**
 * Stable prefix of a shard: the sequence numbers every member has received, given each member's
 * received-per-sender row. Equal to contiguousSeqCount of the column-wise minimum.
 */
export function stableSeqCount(receivedByMember: readonly (readonly number[])[]): number {
  if (receivedByMember.length === 0) return 0;
  return contiguousSeqCount(columnMin(receivedByMember));
}

/** Column-wise minimum (the "min of a column" of the state table). */
export function columnMin(rows: readonly (readonly number[])[]): number[] {
  const width = rows[0]?.length ?? 0;
  const out = new Array<number>(width).fill(Number.POSITIVE_INFINITY);
  for (const row of rows) for (let c = 0; c < width; c++) out[c] = Math.min(out[c]!, row[c] ?? 0);
  return rows.length === 0 ? [] : out;
}

/** Persistence frontier: the prefix every member has durably logged (min of the persisted column). */
export function persistenceFrontier(persistedByMember: readonly number[]): number {
  if (persistedByMember.length === 0) return 0;
  let m = Number.POSITIVE_INFINITY;
  for (const p of persistedByMember) m = Math.min(m, p);
  return m;
}

