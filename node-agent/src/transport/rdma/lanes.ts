// The layout of a receive area and the immediate values of the RDMA data path (pure, no I/O).
//
// Each node registers, for each peer, a receive area the peer writes into one-sidedly:
//
//   [ rowSlots x rowSlotBytes ][ ringSlots x ringSlotBytes ]
//     row lane: the peer's latest state-table rows        message lane: every other frame, in fragments
//
// A row slot and a fragment both start with a u32 (LE) byte count followed by that many bytes. Every write
// carrying a row or a fragment is a write with immediate (32 bits: kind in the top 4 bits, a value in the
// low 28), so the receiver learns of it from its completion queue once the bytes are in place:
//
//   kind 1 row       value = row slot index
//   kind 2 fragment  value = ring slot sequence number (mod 2^28) of its first slot; more fragments follow
//   kind 3 last      the same, for the last (or only) fragment of a frame; a fragment holding a frame
//                    whole also holds the whole frames queued behind it that fit (small frames travel
//                    together: one write, one completion at each end; frames carry their own length)
//   kind 4 credit    zero-length write: value bit 27 = lane (0 message ring, 1 row lane), bits 0-26 = slots
//                    released; the sender of the frames may reuse that many slots
//
// A fragment occupies ceil((4 + bytes) / ringSlotBytes) consecutive slots and never wraps around the end of
// the ring (the sender cuts it shorter instead), so the receiver reads it in place.

export const ImmKind = { row: 1, fragment: 2, last: 3, credit: 4 } as const;

export const immValueMask = 0x0fffffff;
export const creditLaneRow = 1 << 27;
export const creditCountMax = (1 << 27) - 1;
/** Bytes of the u32 count in front of a row or fragment. */
export const slotHeaderBytes = 4;

export interface LaneGeometry {
  rowSlots: number;
  rowSlotBytes: number;
  ringSlots: number;
  ringSlotBytes: number;
}

/** Bounds a peer's announced geometry must respect (a peer cannot make this node register unbounded memory). */
export const geometryBounds = {
  rowSlotsMax: 64,
  rowSlotBytesMin: 64,
  rowSlotBytesMax: 1 << 20,
  ringSlotsMax: 1 << 16,
  ringSlotBytesMin: 64,
  ringSlotBytesMax: 1 << 20,
  areaBytesMax: 256 << 20,
} as const;

export const DEFAULT_GEOMETRY: Readonly<LaneGeometry> = Object.freeze({
  rowSlots: 4,
  rowSlotBytes: 16 << 10,
  ringSlots: 256,
  ringSlotBytes: 16 << 10,
});

export function areaBytes(g: LaneGeometry): number {
  return g.rowSlots * g.rowSlotBytes + g.ringSlots * g.ringSlotBytes;
}

export function rowSlotOffset(g: LaneGeometry, slot: number): number {
  return slot * g.rowSlotBytes;
}

export function ringSlotOffset(g: LaneGeometry, slot: number): number {
  return g.rowSlots * g.rowSlotBytes + slot * g.ringSlotBytes;
}

/** Why `g` is not acceptable, or null. */
export function geometryProblem(g: LaneGeometry): string | null {
  const b = geometryBounds;
  const int = (v: number, lo: number, hi: number): boolean => Number.isSafeInteger(v) && v >= lo && v <= hi;
  if (!int(g.rowSlots, 1, b.rowSlotsMax)) return `rowSlots ${g.rowSlots} is not an integer in [1, ${b.rowSlotsMax}]`;
  if (!int(g.rowSlotBytes, b.rowSlotBytesMin, b.rowSlotBytesMax)) return `rowSlotBytes ${g.rowSlotBytes} is not an integer in [${b.rowSlotBytesMin}, ${b.rowSlotBytesMax}]`;
  if (!int(g.ringSlots, 2, b.ringSlotsMax)) return `ringSlots ${g.ringSlots} is not an integer in [2, ${b.ringSlotsMax}]`;
  if (!int(g.ringSlotBytes, b.ringSlotBytesMin, b.ringSlotBytesMax)) return `ringSlotBytes ${g.ringSlotBytes} is not an integer in [${b.ringSlotBytesMin}, ${b.ringSlotBytesMax}]`;
  if (areaBytes(g) > b.areaBytesMax) return `the receive area of ${areaBytes(g)} bytes is over ${b.areaBytesMax}`;
  return null;
}

export function imm(kind: number, value: number): number {
  return ((kind << 28) | (value & immValueMask)) >>> 0;
}

export function immKind(value: number): number {
  return value >>> 28;
}

export function immValue(value: number): number {
  return value & immValueMask;
}

/** Slots a fragment of `bytes` bytes occupies. */
export function fragmentSlots(g: LaneGeometry, bytes: number): number {
  return Math.ceil((slotHeaderBytes + bytes) / g.ringSlotBytes);
}

/**
 * The largest fragment the sender can write now: it starts at ring slot `slot` (an index), may use at most
 * `credits` slots, and does not wrap past the end of the ring.
 */
export function fragmentBytesMax(g: LaneGeometry, slot: number, credits: number): number {
  const slots = Math.min(credits, g.ringSlots - slot);
  return slots <= 0 ? 0 : slots * g.ringSlotBytes - slotHeaderBytes;
}

/**
 * Receive-queue depth that can never run dry: every fragment uses a ring slot, every row a row slot, and
 * every credit write returns at least one slot that the other side had to have used first.
 */
export function recvDepthFor(g: LaneGeometry, peer: LaneGeometry): number {
  return g.ringSlots + g.rowSlots + peer.ringSlots + peer.rowSlots + 8;
}
