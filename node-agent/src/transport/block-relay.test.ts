import test from 'ava';
import fc from 'fast-check';
import { blocksFor } from '../core/pipeline.ts';
import type { NodeId } from '../core/types.ts';
import { BlockRelay, blockBytesOf } from './block-relay.ts';
import type { BlockRelayOptions, BlockSend } from './block-relay.ts';
import { Codec } from './codec.ts';
import type { BlockFrame } from './codec.ts';

const codec = new Codec();

/** Small deterministic PRNG (mulberry32) for the delivery order. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function bytesOf(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = (seed * 31 + i * 7 + (i >> 8)) & 0xff;
  return out;
}

function relayOf(me: NodeId, options: Partial<BlockRelayOptions> = {}): BlockRelay {
  return new BlockRelay({ me, blockBytes: 16, assembliesMax: 8, assemblyBytesMax: 1 << 20, ...options });
}

/** Through the wire format and back, as the transport would carry it. */
function overTheWire(block: BlockFrame): BlockFrame {
  const r = codec.decode(codec.encode(block));
  if (!r.ok || r.message.kind !== 'block') throw new Error(`block did not survive the codec: ${r.ok ? r.message.kind : r.error}`);
  return r.message;
}

interface Multicast {
  origin: NodeId;
  receivers: NodeId[];
  frame: Uint8Array;
  messageId: number;
}

interface Outcome {
  /** Per multicast: node -> completed frames. */
  completions: Map<NodeId, Uint8Array[]>[];
  /** Per multicast: "node/block" -> receipts. */
  receipts: Map<string, number>[];
  /** Per multicast: sends (origin's and relays). */
  sends: number[];
  errors: string[];
  relays: Map<NodeId, BlockRelay>;
}

/**
 * Runs multicasts over simulated links: every link is FIFO, the next link to deliver from is picked at
 * random (seeded), so deliveries interleave arbitrarily across links and multicasts.
 */
function simulate(nodes: NodeId[], multicasts: Multicast[], seed: number, blockBytes: number): Outcome {
  const random = prng(seed);
  const relays = new Map(nodes.map((id) => [id, relayOf(id, { blockBytes })]));
  const links = new Map<string, { to: NodeId; queue: BlockFrame[] }>();
  const outcome: Outcome = {
    completions: multicasts.map(() => new Map()), receipts: multicasts.map(() => new Map()),
    sends: multicasts.map(() => 0), errors: [], relays,
  };
  const which = (block: BlockFrame): number => multicasts.findIndex((m) => m.origin === block.origin && m.messageId === block.messageId);
  const enqueue = (from: NodeId, sends: BlockSend[]): void => {
    for (const { to, block } of sends) {
      if (block.from !== from) outcome.errors.push(`n${from} sends a block claiming to be from n${block.from}`);
      outcome.sends[which(block)]!++;
      const key = `${from}>${to}`;
      let link = links.get(key);
      if (!link) {
        link = { to, queue: [] };
        links.set(key, link);
      }
      link.queue.push(overTheWire(block));
    }
  };
  for (const m of multicasts) enqueue(m.origin, relays.get(m.origin)!.start(m.receivers, m.frame, m.messageId));
  for (;;) {
    const busy = [...links.values()].filter((l) => l.queue.length > 0);
    if (busy.length === 0) break;
    const link = busy[Math.floor(random() * busy.length)]!;
    const block = link.queue.shift()!;
    const index = which(block);
    const receiptKey = `${link.to}/${block.blockIndex}`;
    outcome.receipts[index]!.set(receiptKey, (outcome.receipts[index]!.get(receiptKey) ?? 0) + 1);
    const r = relays.get(link.to)!.receive(block);
    if (r.error !== null) outcome.errors.push(r.error);
    enqueue(link.to, r.relays);
    if (r.complete) {
      const done = outcome.completions[index]!;
      done.set(link.to, [...(done.get(link.to) ?? []), r.complete.slice()]);
    }
  }
  return outcome;
}

/** Every rule of a finished simulation, as a list of violations (empty when all is well). */
function violationsOf(multicasts: Multicast[], outcome: Outcome, blockBytes: number): string[] {
  const violations = [...outcome.errors];
  multicasts.forEach((m, index) => {
    const blockCount = blocksFor(m.frame.byteLength, blockBytes);
    const name = `message ${m.messageId} of n${m.origin}`;
    for (const id of m.receivers) {
      const got = outcome.completions[index]!.get(id) ?? [];
      if (got.length !== 1) violations.push(`${name}: n${id} completed it ${got.length} times`);
      else if (Buffer.compare(got[0]!, m.frame) !== 0) violations.push(`${name}: n${id} got different bytes`);
      for (let block = 0; block < blockCount; block++) {
        const receipts = outcome.receipts[index]!.get(`${id}/${block}`) ?? 0;
        if (receipts !== 1) violations.push(`${name}: n${id} received block ${block} ${receipts} times`);
      }
    }
    if ((outcome.completions[index]!.get(m.origin) ?? []).length > 0) violations.push(`${name}: the origin completed its own message`);
    for (let block = 0; block < blockCount; block++) {
      if (outcome.receipts[index]!.has(`${m.origin}/${block}`)) violations.push(`${name}: the origin received block ${block}`);
    }
    const expectedSends = m.receivers.length * blockCount;
    if (outcome.sends[index] !== expectedSends) violations.push(`${name}: ${outcome.sends[index]} sends, expected ${expectedSends}`);
  });
  for (const [id, relay] of outcome.relays) {
    const s = relay.stats();
    if (s.assembliesOpen !== 0 || s.bytesInFlight !== 0) violations.push(`n${id} still holds ${s.assembliesOpen} assemblies`);
    if (s.blocksRejected !== 0) violations.push(`n${id} rejected ${s.blocksRejected} blocks`);
  }
  return violations;
}

test('every receiver gets the exact frame once, for 2..9 members and sizes around the block size', (t) => {
  const blockBytes = 16;
  const sizes = [0, 1, 5, 15, 16, 17, 31, 32, 33, 100, 160, 161, 257];
  for (let n = 2; n <= 9; n++) {
    const nodes = Array.from({ length: n }, (_, i) => 10 + 3 * i);
    for (const size of sizes) {
      for (const seed of [1, 2, 3]) {
        const m: Multicast = { origin: nodes[0]!, receivers: nodes.slice(1), frame: bytesOf(size, seed), messageId: seed };
        const outcome = simulate(nodes, [m], seed * 1000 + n, blockBytes);
        const violations = violationsOf([m], outcome, blockBytes);
        if (violations.length > 0) t.fail(`n=${n} size=${size} seed=${seed}: ${violations.slice(0, 3).join('; ')}`);
      }
    }
  }
  t.pass();
});

test('property: random interleavings across links (FIFO per link), sizes and member orders', (t) => {
  fc.assert(
    fc.property(
      fc.integer({ min: 2, max: 9 }),
      fc.integer({ min: 1, max: 40 }),
      fc.integer({ min: 0, max: 600 }),
      fc.integer(),
      fc.integer({ min: 0, max: 2 ** 32 - 1 }),
      (n, blockBytes, size, seed, idBase) => {
        const nodes = Array.from({ length: n }, (_, i) => (idBase + i * 977) % 2 ** 32);
        const order = [...nodes].sort((a, b) => ((a * 2654435761 + seed) >>> 0) - ((b * 2654435761 + seed) >>> 0));
        const m: Multicast = { origin: order[0]!, receivers: order.slice(1), frame: bytesOf(size, seed), messageId: seed >>> 0 };
        const outcome = simulate(nodes, [m], seed, blockBytes);
        const violations = violationsOf([m], outcome, blockBytes);
        if (violations.length > 0) throw new Error(violations.slice(0, 3).join('; '));
      },
    ),
    { numRuns: 300 },
  );
  t.pass();
});

test('property: concurrent multicasts from several origins interleave without interfering', (t) => {
  fc.assert(
    fc.property(
      fc.integer({ min: 2, max: 9 }),
      fc.array(fc.record({ originIndex: fc.nat(), size: fc.integer({ min: 0, max: 300 }), rotate: fc.nat() }), { minLength: 1, maxLength: 4 }),
      fc.integer(),
      (n, specs, seed) => {
        const blockBytes = 24;
        const nodes = Array.from({ length: n }, (_, i) => i + 1);
        const multicasts: Multicast[] = specs.map((spec, i) => {
          const origin = nodes[spec.originIndex % n]!;
          const others = nodes.filter((id) => id !== origin);
          const shift = spec.rotate % others.length;
          const receivers = [...others.slice(shift), ...others.slice(0, shift)];
          return { origin, receivers, frame: bytesOf(spec.size, i + seed), messageId: i };
        });
        const outcome = simulate(nodes, multicasts, seed, blockBytes);
        const violations = violationsOf(multicasts, outcome, blockBytes);
        if (violations.length > 0) throw new Error(violations.slice(0, 3).join('; '));
      },
    ),
    { numRuns: 200 },
  );
  t.pass();
});

test('start: blocks are equal views of the frame, in schedule step order, members origin first', (t) => {
  const relay = relayOf(1, { blockBytes: 10 });
  const frame = bytesOf(25, 3); // 3 blocks of ceil(25 / 3) = 9 bytes: 9, 9, 7
  const sends = relay.start([2, 3, 4], frame, 7);
  t.deepEqual(sends.map((s) => [s.to, s.block.blockIndex]), [[2, 0], [3, 1], [2, 2], [3, 2]]);
  for (const { block } of sends) {
    t.deepEqual(block.members, [1, 2, 3, 4]);
    t.is(block.from, 1);
    t.is(block.origin, 1);
    t.is(block.messageId, 7);
    t.is(block.blockCount, 3);
    t.is(block.totalBytes, 25);
    t.is(block.bytes.buffer, frame.buffer, 'a view, not a copy');
  }
  t.deepEqual(sends.filter((s) => s.to === 2).map((s) => s.block.bytes.byteLength), [9, 7]);
  t.is(blockBytesOf(25, 3), 9);
  t.is(relay.stats().blocksSent, 4);
  t.deepEqual(relay.start([], frame, 8), []);
  t.throws(() => relay.start([2, 2], frame, 9), { instanceOf: RangeError, message: /listed twice/ });
  t.throws(() => relay.start([2, 1], frame, 9), { instanceOf: RangeError, message: /this node/ });
  t.throws(() => relay.start([2], frame, -1), { instanceOf: RangeError, message: /messageId/ });
  t.throws(() => relay.start([2.5], frame, 1), { instanceOf: RangeError, message: /u32/ });
  const small = relayOf(1, { blockBytes: 1, blockTransfersMax: 10 });
  t.throws(() => small.start([2, 3], bytesOf(6, 1), 1), { instanceOf: RangeError, message: /blockTransfersMax 10/ });
});

test('constructor: every bound is required and validated', (t) => {
  const base = { me: 1, blockBytes: 16, assembliesMax: 4, assemblyBytesMax: 1024 };
  t.notThrows(() => new BlockRelay(base));
  for (const [field, value] of [
    ['me', -1], ['me', 2 ** 32], ['blockBytes', 0], ['blockBytes', 1.5], ['assembliesMax', 0],
    ['assemblyBytesMax', Number.NaN], ['blockTransfersMax', 0], ['schedulesCachedMax', -3],
  ] as const) {
    t.throws(() => new BlockRelay({ ...base, [field]: value }), { instanceOf: RangeError, message: new RegExp(field) }, `${field} = ${value}`);
  }
  const missing: Partial<BlockRelayOptions> = { me: 1, blockBytes: 16, assemblyBytesMax: 1024 };
  t.throws(() => new BlockRelay(missing as BlockRelayOptions), { instanceOf: RangeError, message: /assembliesMax/ });
});

/** The blocks origin 1 sends to receivers [2, 3, 4] for a `size`-byte frame, by destination. */
function originBlocks(size: number, blockBytes = 10, messageId = 5): { frame: Uint8Array; sends: BlockSend[] } {
  const frame = bytesOf(size, messageId);
  return { frame, sends: relayOf(1, { blockBytes }).start([2, 3, 4], frame, messageId) };
}

test('receive refuses invalid blocks and changes nothing', (t) => {
  const { sends } = originBlocks(25); // 3 blocks of 9, 9, 7 bytes
  const first = sends.find((s) => s.to === 2 && s.block.blockIndex === 0)!.block;
  const cases: [string, Partial<BlockFrame>, RegExp][] = [
    ['short block', { bytes: first.bytes.subarray(1) }, /8 bytes, expected 9/],
    ['long block', { bytes: new Uint8Array(10) }, /10 bytes, expected 9/],
    ['blockCount that cannot cut totalBytes', { blockCount: 20 }, /cannot be cut into 20 non-empty blocks/],
    ['blockCount 0', { blockCount: 0 }, /blockCount 0/],
    ['blockIndex past the end', { blockIndex: 3 }, /blockIndex is not in \[0, 3\)/],
    ['empty message in 2 blocks', { totalBytes: 0, blockCount: 2 }, /empty message has 1 block/],
    ['not a member', { members: [1, 3, 4] }, /n2 is not a member/],
    ['origin not first', { members: [2, 1, 3, 4] }, /members\[0\] is n2, not the origin/],
    ['this node as origin', { origin: 2, members: [2, 1, 3, 4] }, /this node n2 is the origin/],
    ['member twice', { members: [1, 2, 3, 3] }, /n3 is twice in members/],
    ['no receivers', { members: [1] }, /at least one receiver/],
    ['wrong sender', { from: 3 }, /the schedule has n1 \(rank 0\) send this block to rank 1/],
    ['bad message id', { messageId: -1 }, /messageId/],
  ];
  const relay = relayOf(2);
  for (const [name, change, message] of cases) {
    const r = relay.receive({ ...first, ...change });
    t.regex(r.error ?? '', message, name);
    t.is(r.errorKind, 'invalid', name);
    t.deepEqual(r.relays, [], name);
    t.is(r.complete, null, name);
  }
  t.deepEqual(relay.stats(), {
    blocksSent: 0, blocksRelayed: 0, blocksReceived: 0, blocksRejected: cases.length,
    assembliesCompleted: 0, assembliesDropped: 0, assembliesOpen: 0, bytesInFlight: 0,
  });
  // The genuine block is still accepted after all that.
  t.is(relay.receive(first).error, null);
});

test('receive: duplicates, and blocks inconsistent with the earlier ones of the message', (t) => {
  const { frame, sends } = originBlocks(25);
  const to2 = sends.filter((s) => s.to === 2).map((s) => s.block);
  const relay = relayOf(2);
  const r0 = relay.receive(to2[0]!);
  t.is(r0.error, null);
  t.deepEqual(r0.relays.map((s) => [s.to, s.block.blockIndex, s.block.from]), [[4, 0, 2]]);
  t.not(r0.relays[0]!.block.bytes.buffer, to2[0]!.bytes.buffer, 'relays send the assembled copy');
  t.deepEqual(relay.stats().assembliesOpen, 1);
  t.is(relay.stats().bytesInFlight, 25);
  t.regex(relay.receive(to2[0]!).error ?? '', /duplicate block/);
  const otherTotal = { ...to2[0]!, from: 4, blockIndex: 1, totalBytes: 27, bytes: new Uint8Array(9) };
  t.regex(relay.receive(otherTotal).error ?? '', /differ from the earlier blocks/);
  t.regex(relay.receive({ ...to2[1]!, members: [1, 2, 4, 3] }).error ?? '', /differ from the earlier blocks/);
  // Rank 1 gets blocks 0 and 2 from the origin and block 1 from rank 3 (n4).
  const block1 = { ...to2[0]!, from: 4, blockIndex: 1, bytes: frame.subarray(9, 18) };
  t.is(relay.receive(block1).error, null);
  const last = relay.receive(to2[1]!);
  t.is(last.error, null);
  t.deepEqual(last.complete, frame);
  t.deepEqual(relay.stats().assembliesOpen, 0);
  t.deepEqual(relay.stats().assembliesCompleted, 1);
  t.regex(relay.receive(to2[0]!).error ?? '', /already complete/);
});

test('bounds: assembliesMax and assemblyBytesMax refuse new messages (still relayed), not blocks of held ones', (t) => {
  const relay = relayOf(2, { assembliesMax: 2, assemblyBytesMax: 60 });
  const message = (id: number, size: number) => relayOf(1, { blockBytes: 10 }).start([2], bytesOf(size, id), id).map((s) => s.block);
  const a = message(1, 25);
  const b = message(2, 25);
  const c = message(3, 25);
  const d = message(4, 25);
  const big = message(5, 40);
  t.is(relay.receive(a[0]!).error, null);
  const overBytes = relay.receive(big[0]!);
  t.regex(overBytes.error ?? '', /not assembled: 25 bytes of partial messages held, 40 more would exceed assemblyBytesMax 60/);
  t.is(overBytes.errorKind, 'limit');
  t.is(relay.receive(b[0]!).error, null);
  const overCount = relay.receive(c[0]!);
  t.regex(overCount.error ?? '', /not assembled: 2 partial messages held, assembliesMax 2/);
  t.is(overCount.errorKind, 'limit');
  t.like(relay.stats(), { assembliesOpen: 2, bytesInFlight: 50, blocksRejected: 2 });
  // Later blocks of a refused message are relayed only, without an error and without assembling.
  const rest = relay.receive(c[1]!);
  t.is(rest.error, null);
  t.is(rest.complete, null);
  // A single-block message needs no assembly slot.
  const tiny = message(6, 3);
  t.is(tiny.length, 1);
  t.deepEqual(relay.receive(tiny[0]!).complete, bytesOf(3, 6));
  // Blocks of held messages still go in; completing one frees its slot.
  for (const block of a.slice(1)) t.is(relay.receive(block).error, null);
  t.is(relay.stats().assembliesOpen, 1);
  t.is(relay.receive(d[0]!).error, null);
  // A refused message is still relayed to the ranks after this one.
  const three = relayOf(1, { blockBytes: 10 }).start([2, 3], bytesOf(25, 7), 7).filter((s) => s.to === 2).map((s) => s.block);
  const full = relayOf(2, { assembliesMax: 1, assemblyBytesMax: 10 });
  const refused = full.receive(three[0]!);
  t.is(refused.errorKind, 'limit');
  t.deepEqual(refused.relays.map((s) => [s.to, s.block.blockIndex]), [[3, 0]]);
  const transfers = relayOf(2, { blockTransfersMax: 2 }).receive(message(6, 25)[0]!); // 1 receiver * 3 blocks
  t.regex(transfers.error ?? '', /need 3 transfers, over blockTransfersMax 2/);
  t.is(transfers.errorKind, 'limit');
});

test('forget drops an origin\'s partial messages; later blocks are relayed but not assembled', (t) => {
  const { sends } = originBlocks(25);
  const to2 = sends.filter((s) => s.to === 2).map((s) => s.block);
  const relay = relayOf(2);
  t.is(relay.receive(to2[0]!).error, null);
  t.is(relay.forget(7), 0);
  t.is(relay.forget(1), 1);
  t.like(relay.stats(), { assembliesOpen: 0, bytesInFlight: 0, assembliesDropped: 1 });
  const late = relay.receive(to2[1]!); // block 2: rank 1 relays it to rank 3 (n4)
  t.is(late.error, null);
  t.is(late.complete, null);
  t.deepEqual(late.relays.map((s) => [s.to, s.block.blockIndex]), [[4, 2]]);
  t.is(relay.stats().assembliesOpen, 0);
});

test('dropStalled drops assemblies without progress since the previous call', (t) => {
  const relay = relayOf(2);
  const message = (id: number) => relayOf(1, { blockBytes: 10 }).start([2], bytesOf(30, id), id).map((s) => s.block);
  const a = message(1);
  const b = message(2);
  t.is(relay.receive(a[0]!).error, null);
  t.is(relay.receive(b[0]!).error, null);
  t.deepEqual(relay.dropStalled(), []);
  t.is(relay.receive(b[1]!).error, null);
  t.deepEqual(relay.dropStalled(), [{ origin: 1, messageId: 1 }]);
  t.like(relay.stats(), { assembliesOpen: 1, assembliesDropped: 1 });
  t.deepEqual(relay.receive(b[2]!).complete, bytesOf(30, 2));
  t.deepEqual(relay.dropStalled(), []);
});

test('schedules are cached per member count and block count, bounded', (t) => {
  const relay = relayOf(1, { blockBytes: 4, schedulesCachedMax: 2 });
  for (let round = 0; round < 3; round++) {
    for (const [receivers, size] of [[[2, 3], 8], [[2, 3, 4], 8], [[2, 3], 12], [[5, 6], 8]] as const) {
      const sends = relay.start([...receivers], bytesOf(size, 1), round);
      t.is(sends.filter((s) => s.block.blockIndex === 0).length >= 1, true);
    }
  }
});
