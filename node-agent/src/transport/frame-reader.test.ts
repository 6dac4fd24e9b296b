import test from 'ava';
import fc from 'fast-check';
import { Codec, FrameType, rawFrame } from './codec.ts';
import { FrameReader } from './frame-reader.ts';
import type { RawFrame } from './frame-reader.ts';
import { arbitraries } from './test-support.ts';

const codec = new Codec({ frameBytesMax: 1 << 16, payloadBytesMax: 4096 });
const arb = arbitraries(codec.limits);

function split(stream: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => c % (stream.byteLength + 1)))].sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let prev = 0;
  for (const p of [...points, stream.byteLength]) {
    if (p < prev) continue;
    chunks.push(stream.subarray(prev, p)); // empty chunks included on purpose
    prev = p;
  }
  return chunks;
}

function join(frames: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(frames.reduce((n, f) => n + f.byteLength, 0));
  let pos = 0;
  for (const f of frames) {
    out.set(f, pos);
    pos += f.byteLength;
  }
  return out;
}

test('reassembles frames from a stream split at random points', (t) => {
  fc.assert(fc.property(fc.array(arb.message, { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 40 }), (messages, cuts) => {
    const frames = messages.map((m) => codec.encode(m));
    const reader = new FrameReader(codec.limits.frameBytesMax);
    const got: RawFrame[] = [];
    for (const chunk of split(join(frames), cuts)) {
      // Copy each chunk: the reader must not depend on chunks staying intact after push returns,
      // except through the views it hands out (which here live in their own copies).
      const err = reader.push(chunk.slice(), (f) => { got.push({ ...f, body: f.body.slice() }); });
      if (err) throw new Error(err);
    }
    t.is(got.length, frames.length);
    got.forEach((f, i) => {
      t.is(f.bytes, frames[i]!.byteLength);
      t.is(f.type, frames[i]![4]!);
      t.deepEqual(f.body, frames[i]!.subarray(5));
      const r = codec.decodeBody(f.type, f.body);
      if (!r.ok) throw new Error(r.error);
      t.is(r.message.kind, messages[i]!.kind);
    });
    t.is(reader.bufferedBytes, 0);
  }), { numRuns: 500 });
});

test('byte-at-a-time delivery', (t) => {
  const frames = [rawFrame(FrameType.data, new Uint8Array(30).fill(7)), rawFrame(FrameType.authOk), rawFrame(0x42, new Uint8Array([1]))];
  const stream = join(frames);
  const reader = new FrameReader(100);
  const types: number[] = [];
  for (let i = 0; i < stream.byteLength; i++) t.is(reader.push(stream.subarray(i, i + 1), (f) => { types.push(f.type); }), null);
  t.deepEqual(types, [FrameType.data, FrameType.authOk, 0x42]);
});

test('a frame whole inside a chunk is handed out without a copy', (t) => {
  const chunk = join([rawFrame(1, new Uint8Array([1, 2, 3])), rawFrame(2, new Uint8Array([4]))]);
  const reader = new FrameReader(100);
  const bodies: Uint8Array[] = [];
  reader.push(chunk, (f) => { bodies.push(f.body); });
  t.is(bodies.length, 2);
  t.is(bodies[0]!.buffer, chunk.buffer);
  t.is(bodies[1]!.byteOffset, chunk.byteOffset + 8 + 5);
});

test('an oversized frame is refused as soon as its length is in, before buffering', (t) => {
  const reader = new FrameReader(1 << 20);
  const announce2GB = new Uint8Array([0x80, 0x00, 0x00, 0x00]);
  let frames = 0;
  t.is(reader.push(announce2GB.subarray(0, 3), () => { frames++; }), null);
  const err = reader.push(announce2GB.subarray(3), () => { frames++; });
  t.is(err, 'frame of 2147483648 bytes announced, over frameBytesMax 1048576');
  t.is(reader.bufferedBytes, 0);
  t.is(frames, 0);
  // The reader stays failed.
  t.is(reader.push(rawFrame(1), () => { frames++; }), err);
  t.is(frames, 0);
});

test('frames before a bad one are delivered; a zero length is refused', (t) => {
  const reader = new FrameReader(64);
  const types: number[] = [];
  const err = reader.push(join([rawFrame(3), new Uint8Array([0, 0, 0, 0, 9])]), (f) => { types.push(f.type); });
  t.deepEqual(types, [3]);
  t.regex(err!, /length 0/);
});

test('the bound can be raised from inside the sink (after a handshake)', (t) => {
  const reader = new FrameReader(8);
  const got: number[] = [];
  const stream = join([rawFrame(FrameType.authOk), rawFrame(1, new Uint8Array(50))]);
  t.is(reader.push(stream, (f) => {
    got.push(f.type);
    reader.frameBytesMax = 100;
  }), null);
  t.deepEqual(got, [FrameType.authOk, 1]);
  const strict = new FrameReader(8);
  t.regex(strict.push(stream, () => {})!, /51 bytes announced, over frameBytesMax 8/);
});

test('a sink returning false stops the reader', (t) => {
  const reader = new FrameReader(64);
  let n = 0;
  reader.push(join([rawFrame(1), rawFrame(2), rawFrame(3)]), () => { n++; return false; });
  t.is(n, 1);
  reader.push(rawFrame(4), () => { n++; });
  t.is(n, 1);
});

test('random chunks never crash the reader', (t) => {
  fc.assert(fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 20 }), (chunks) => {
    const reader = new FrameReader(256);
    for (const c of chunks) {
      const err = reader.push(c, (f) => { if (f.bytes > 260) throw new Error('over bound'); });
      if (err) break;
    }
    if (reader.bufferedBytes > 256) throw new Error('buffered over the bound');
  }), { numRuns: 2000 });
  t.pass();
});
