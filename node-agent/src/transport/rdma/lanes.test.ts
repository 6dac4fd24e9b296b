import test from 'ava';
import fc from 'fast-check';
import {
  DEFAULT_GEOMETRY, ImmKind, areaBytes, creditCountMax, creditLaneRow, fragmentBytesMax, fragmentSlots, geometryBounds, geometryProblem,
  imm, immKind, immValue, recvDepthFor, ringSlotOffset, rowSlotOffset, slotHeaderBytes,
} from './lanes.ts';
import type { LaneGeometry } from './lanes.ts';

const geometry = fc.record({
  rowSlots: fc.integer({ min: 1, max: 8 }),
  rowSlotBytes: fc.integer({ min: 64, max: 4096 }),
  ringSlots: fc.integer({ min: 2, max: 64 }),
  ringSlotBytes: fc.integer({ min: 64, max: 4096 }),
});

test('immediates round-trip: kind in the top 4 bits, 28-bit value; credits keep lane and count apart', (t) => {
  fc.assert(fc.property(fc.integer({ min: 0, max: 15 }), fc.integer({ min: 0, max: 2 ** 32 - 1 }), (kind, value) => {
    const v = imm(kind, value);
    return v >= 0 && v <= 0xffffffff && immKind(v) === kind && immValue(v) === (value & 0x0fffffff);
  }));
  const credit = imm(ImmKind.credit, creditLaneRow | creditCountMax);
  t.is(immKind(credit), ImmKind.credit);
  t.is(immValue(credit) & creditLaneRow, creditLaneRow);
  t.is(immValue(credit) & creditCountMax, creditCountMax);
  t.is(immValue(imm(ImmKind.credit, 5)) & creditLaneRow, 0);
});

test('fragments fit the credits and never wrap past the end of the ring; slots cover them exactly', (t) => {
  fc.assert(fc.property(geometry, fc.nat(), fc.nat(), (g, slotSeed, creditSeed) => {
    const slot = slotSeed % g.ringSlots;
    const credits = 1 + (creditSeed % g.ringSlots);
    const max = fragmentBytesMax(g, slot, credits);
    if (max <= 0) return false; // one slot always fits a header and a byte
    const slots = fragmentSlots(g, max);
    return slots <= credits && slot + slots <= g.ringSlots && ringSlotOffset(g, slot) + slotHeaderBytes + max <= areaBytes(g) &&
      fragmentSlots(g, 1) === 1 && fragmentSlots(g, g.ringSlotBytes - slotHeaderBytes) === 1 && fragmentSlots(g, g.ringSlotBytes - slotHeaderBytes + 1) === 2;
  }));
  t.is(fragmentBytesMax(DEFAULT_GEOMETRY, 0, 0), 0);
  t.is(fragmentBytesMax(DEFAULT_GEOMETRY, DEFAULT_GEOMETRY.ringSlots - 1, 100), DEFAULT_GEOMETRY.ringSlotBytes - slotHeaderBytes);
});

test('the row lane comes first, the ring after it, inside the area', (t) => {
  fc.assert(fc.property(geometry, (g) => rowSlotOffset(g, g.rowSlots - 1) + g.rowSlotBytes === ringSlotOffset(g, 0) &&
    ringSlotOffset(g, g.ringSlots - 1) + g.ringSlotBytes === areaBytes(g)));
  t.is(areaBytes(DEFAULT_GEOMETRY), 4 * 16384 + 256 * 16384);
});

test('geometry bounds refuse what a peer must not make this node register', (t) => {
  t.is(geometryProblem(DEFAULT_GEOMETRY), null);
  const bad: [Partial<LaneGeometry>, RegExp][] = [
    [{ rowSlots: 0 }, /rowSlots 0/],
    [{ rowSlots: 1.5 }, /rowSlots 1.5/],
    [{ rowSlotBytes: 8 }, /rowSlotBytes 8/],
    [{ ringSlots: 1 }, /ringSlots 1 /],
    [{ ringSlotBytes: geometryBounds.ringSlotBytesMax + 1 }, /ringSlotBytes/],
    [{ ringSlots: geometryBounds.ringSlotsMax, ringSlotBytes: 1 << 20 }, /the receive area of \d+ bytes is over 268435456/],
  ];
  for (const [change, message] of bad) t.regex(geometryProblem({ ...DEFAULT_GEOMETRY, ...change }) ?? '', message);
});

test('receive depth covers every write with immediate that can be outstanding', (t) => {
  const small: LaneGeometry = { rowSlots: 1, rowSlotBytes: 64, ringSlots: 2, ringSlotBytes: 64 };
  t.is(recvDepthFor(small, DEFAULT_GEOMETRY), 2 + 1 + 256 + 4 + 8);
  t.is(recvDepthFor(DEFAULT_GEOMETRY, small), recvDepthFor(small, DEFAULT_GEOMETRY));
});
