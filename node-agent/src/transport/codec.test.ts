import test from 'ava';
import fc from 'fast-check';
import { Codec, CodecError, DEFAULT_CODEC_LIMITS, FrameType, dataHeaderBytes, defaultCodec, rawFrame } from './codec.ts';
import type { CodecLimits, WireMessage } from './codec.ts';
import { arbitraries, boundsViolation, sampleMessages } from './test-support.ts';

const small: CodecLimits = {
  frameBytesMax: 4096, payloadBytesMax: 64, membersMax: 6, shardsMax: 4, pendingJoinsMax: 4, recordsMax: 5,
  savedTrimsMax: 3, nameCharsMax: 12,
};
const smallCodec = new Codec(small);

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.byteLength;
  }
  return out;
}

/** Decoded messages hold Uint8Array views; compare them with plain copies. */
function plain(m: unknown): unknown {
  return JSON.parse(JSON.stringify(m, (_k, v: unknown) => (v instanceof Uint8Array ? { bytes: Array.from(v) } : v)));
}

for (const [name, codec] of [['default limits', defaultCodec], ['small limits', smallCodec]] as const) {
  const arb = arbitraries(codec.limits);
  for (const [kind, a] of Object.entries(arb.byKind)) {
    test(`round-trip ${kind} (${name})`, (t) => {
      fc.assert(fc.property(a as fc.Arbitrary<WireMessage>, (m) => {
        const frame = codec.encode(m);
        const r = codec.decode(frame);
        if (!r.ok) throw new Error(r.error);
        t.deepEqual(plain(r.message), plain(m));
        t.is(boundsViolation(r.message, codec.limits), null);
        // Segments concatenate to the same frame.
        const { parts, bytes } = codec.encodeParts(m);
        t.is(bytes, frame.byteLength);
        t.deepEqual(concat(parts), frame);
      }), { numRuns: kind === 'data' || kind === 'row' ? 300 : 100 });
    });
  }
}

test('every sample message round-trips (the fixtures the transport tests use)', (t) => {
  const kinds = new Set<string>();
  for (const m of sampleMessages(2)) {
    const r = defaultCodec.decode(defaultCodec.encode(m));
    if (!r.ok) return t.fail(r.error);
    t.deepEqual(plain(r.message), plain(m));
    kinds.add(m.kind);
  }
  t.is(kinds.size, 18); // 15 core kinds + stateTransfer, app, block
});

test('data: fixed 30-byte header, payload decoded as a view into the frame (no copy)', (t) => {
  const payload = new Uint8Array([1, 2, 3, 4, 5]);
  const m: WireMessage = { kind: 'data', from: 7, viewId: 9, shardId: 2, senderRank: 1, index: 2 ** 40 + 5, payload };
  const frame = defaultCodec.encode(m);
  t.is(frame.byteLength, dataHeaderBytes + 5);
  t.deepEqual(Array.from(frame.subarray(0, 5)), [0, 0, 0, 31, FrameType.data]);
  const { parts } = defaultCodec.encodeParts(m);
  t.is(parts[1], payload, 'encodeParts references the payload');
  const r = defaultCodec.decode(frame);
  if (!r.ok || r.message.kind !== 'data') return t.fail();
  t.is(r.message.index, 2 ** 40 + 5);
  t.is(r.message.payload!.buffer, frame.buffer);
  t.is(r.message.payload!.byteOffset, frame.byteOffset + dataHeaderBytes);
  t.is(Object.getPrototypeOf(r.message.payload), Uint8Array.prototype);
});

test('row: counters are compact varints', (t) => {
  const row = sampleMessages(1).find((m) => m.kind === 'row' && m.row.accepted === null)!;
  const bytes = defaultCodec.encode(row).byteLength;
  t.true(bytes < 40, `a 3-member 2-shard row without accepted value takes ${bytes} bytes`);
});

// ---- errors ------------------------------------------------------------------------------------

function err(codec: Codec, frame: Uint8Array): string {
  const r = codec.decode(frame);
  return r.ok ? 'ok' : r.error;
}

test('decode names what is wrong', (t) => {
  t.regex(err(defaultCodec, rawFrame(0x55, new Uint8Array(3))), /unknown frame type 0x55/);
  t.regex(err(defaultCodec, rawFrame(FrameType.authHello)), /handshake frame type 0x70 is not a message/);
  t.regex(err(defaultCodec, new Uint8Array([0, 0, 0])), /truncated frame/);
  const big = new Uint8Array([0x7f, 0xff, 0xff, 0xff, FrameType.data]);
  t.regex(err(defaultCodec, big), /frame length 2147483647 is over frameBytesMax 16777216/);
  const data = defaultCodec.encode(sampleMessages(1)[0]!);
  t.regex(err(defaultCodec, data.subarray(0, data.byteLength - 1)), /truncated frame/);
  t.regex(err(defaultCodec, rawFrame(FrameType.data, new Uint8Array(10))), /data: truncated body: 10 bytes, the header has 25/);
  const row = defaultCodec.encode(sampleMessages(1)[2]!);
  const cut = defaultCodec.decodeBody(FrameType.row, row.subarray(5, 12));
  t.regex(cut.ok ? 'ok' : cut.error, /row: truncated body/);
  t.regex(err(defaultCodec, rawFrame(FrameType.joinRequest, new TextEncoder().encode('{"kind":"joinRequest","from":1,'))), /joinRequest: body is not valid JSON/);
  t.regex(err(defaultCodec, rawFrame(FrameType.joinRequest, new Uint8Array([0xff, 0xfe]))), /not valid UTF-8/);
  const badField = new TextEncoder().encode(JSON.stringify({ kind: 'joinRequest', from: -4, incarnation: 1 }));
  t.regex(err(defaultCodec, rawFrame(FrameType.joinRequest, badField)), /joinRequest: field from: .*>=0.*\(value: -4\)/);
  const badKind = new TextEncoder().encode(JSON.stringify({ kind: 'joinRedirect', from: 1, leader: 2 }));
  t.regex(err(defaultCodec, rawFrame(FrameType.joinRequest, badKind)), /joinRequest: field kind/);
  const deep = structuredClone(sampleMessages(1).find((m) => m.kind === 'restartCommit')!) as { plan: { view: { members: number[] } } };
  deep.plan.view.members = [1, 2, 3, 4, 5, 6, 7];
  const deepFrame = rawFrame(FrameType.restartCommit, new TextEncoder().encode(JSON.stringify(deep)));
  t.regex(err(smallCodec, deepFrame), /restartCommit: field plan\.view\.members: .*(<=6|6 items)/);
});

test('decode refuses out-of-bound binary fields', (t) => {
  const m = { kind: 'data', from: 1, viewId: 1, shardId: 3, senderRank: 5, index: 0, payload: new Uint8Array(64) } as const;
  const frame = defaultCodec.encode(m);
  t.is(err(smallCodec, frame), 'ok');
  t.regex(err(smallCodec, defaultCodec.encode({ ...m, shardId: 4 })), /data: shardId 4 is over shardsMax 4/);
  t.regex(err(smallCodec, defaultCodec.encode({ ...m, senderRank: 6 })), /senderRank 6 is over membersMax 6/);
  t.regex(err(smallCodec, defaultCodec.encode({ ...m, payload: new Uint8Array(65) })), /payload of 65 bytes is over payloadBytesMax 64/);
  const nul = defaultCodec.encode({ ...m, payload: null });
  const withBytes = new Uint8Array([...nul, 1]);
  withBytes[3] = withBytes[3]! + 1;
  t.regex(err(defaultCodec, withBytes), /null message with 1 payload bytes/);
  const row = sampleMessages(1)[2]! as Extract<WireMessage, { kind: 'row' }>;
  const wide = { ...row, row: { ...row.row, suspected: new Array<boolean>(7).fill(true), accepted: null } };
  t.regex(err(smallCodec, defaultCodec.encode(wide)), /row: suspected length = 7 is over membersMax 6/);
  const trailing = defaultCodec.encode(row);
  const extended = new Uint8Array([...trailing, 0]);
  extended[3] = extended[3]! + 1;
  t.regex(err(defaultCodec, extended), /row: 1 trailing bytes/);
  const st = { kind: 'stateTransfer', from: 1, shardId: 0, through: { viewId: 0, seq: 0 }, records: new Array(6).fill({ shardId: 0, version: { viewId: 0, seq: 0 }, sender: 1, payload: new Uint8Array(1) }) } as const;
  t.regex(err(smallCodec, defaultCodec.encode(st)), /stateTransfer: records length = 6 is over recordsMax 5/);
});

test('encode refuses what the peer would refuse', (t) => {
  const e = (m: unknown, codec = defaultCodec) => t.throws(() => codec.encode(m as WireMessage), { instanceOf: CodecError });
  e({ kind: 'data', from: -1, viewId: 0, shardId: 0, senderRank: 0, index: 0, payload: null });
  e({ kind: 'data', from: 1, viewId: 0, shardId: 0, senderRank: 0, index: 1.5, payload: null });
  e({ kind: 'data', from: 1, viewId: 0, shardId: 0, senderRank: 0, index: 0, payload: new Uint8Array(65) }, smallCodec);
  e({ kind: 'joinRequest', from: 1, incarnation: Number.NaN });
  e({ kind: 'nope', from: 1 });
  const row = sampleMessages(1)[2]! as Extract<WireMessage, { kind: 'row' }>;
  e({ ...row, row: { ...row.row, heartbeat: -2 } });
  e({ ...row, row: { ...row.row, accepted: { ...row.row.accepted!, joined: [-1] } } });
  e({ kind: 'stateTransfer', from: 1, shardId: 0, through: { viewId: 0, seq: 0 }, records: new Array(6).fill({ shardId: 0, version: { viewId: 0, seq: 0 }, sender: 1, payload: new Uint8Array(1) }) }, smallCodec);
  const tiny = new Codec({ ...small, frameBytesMax: 26 + 64 });
  const over = t.throws(() => tiny.encode({ kind: 'stateTransfer', from: 1, shardId: 0, through: { viewId: 0, seq: 0 }, records: new Array(2).fill({ shardId: 0, version: { viewId: 0, seq: 0 }, sender: 1, payload: new Uint8Array(64) }) }));
  t.regex(over!.message, /over frameBytesMax 90/);
});

test('limits are validated', (t) => {
  t.throws(() => new Codec({ frameBytesMax: 100, payloadBytesMax: 100 }), { message: /cannot hold a data frame/ });
  t.throws(() => new Codec({ membersMax: 0 }), { message: /membersMax/ });
  t.deepEqual({ ...new Codec().limits }, { ...DEFAULT_CODEC_LIMITS });
});

// ---- robustness --------------------------------------------------------------------------------

function safeDecode(codec: Codec, frame: Uint8Array): void {
  const r = codec.decode(frame); // must not throw
  if (r.ok) {
    const v = boundsViolation(r.message, codec.limits);
    if (v) throw new Error(`decoded an out-of-bounds message: ${v}`);
  } else if (typeof r.error !== 'string' || r.error.length === 0) {
    throw new Error('error without a reason');
  }
}

test('random bytes never crash and never decode out of bounds', (t) => {
  for (const codec of [defaultCodec, smallCodec]) {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => safeDecode(codec, bytes)), { numRuns: 2000 });
    // Random bodies behind every valid type byte (with a correct length prefix).
    const types = [...Object.values(FrameType), 0x00, 0x04, 0xff];
    fc.assert(fc.property(fc.constantFrom(...types), fc.uint8Array({ maxLength: 300 }), (type, body) => {
      safeDecode(codec, rawFrame(type, body));
    }), { numRuns: 4000 });
  }
  t.pass();
});

test('mutated frames never crash and never decode out of bounds', (t) => {
  for (const codec of [defaultCodec, smallCodec]) {
    const arb = arbitraries(codec.limits);
    const mutation = fc.oneof(
      fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bits: fc.integer({ min: 1, max: 255 }) }),
      fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
      fc.record({ op: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
      fc.record({ op: fc.constant('insert' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    );
    fc.assert(fc.property(arb.message, fc.array(mutation, { minLength: 1, maxLength: 4 }), fc.boolean(), (m, muts, fixLength) => {
      let f = Array.from(codec.encode(m));
      for (const mu of muts) {
        const at = 'at' in mu ? mu.at % Math.max(1, f.length) : 0;
        if (mu.op === 'flip') f[at] = f[at]! ^ mu.bits;
        else if (mu.op === 'set') f[at] = mu.value;
        else if (mu.op === 'truncate') f = f.slice(0, at);
        else if (mu.op === 'append') f.push(...mu.bytes);
        else f.splice(at, 0, mu.value);
      }
      const frame = new Uint8Array(f);
      // Half the time keep the length field consistent, so the body parsers see the damage.
      if (fixLength && frame.byteLength >= 5) new DataView(frame.buffer).setUint32(0, frame.byteLength - 4);
      safeDecode(codec, frame);
    }), { numRuns: 3000, ...(process.env.CODEC_SEED ? { seed: Number(process.env.CODEC_SEED) } : {}) });
  }
  t.pass();
});
