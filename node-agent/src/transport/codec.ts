// Wire format of the core's messages (and the driver's state transfers) on a byte stream.
//
// Frame:  [u32 length, big-endian][u8 type][body]     length = 1 + body bytes (the type byte and the body)
//
//   type  kind            body
//   0x01  data            binary, fixed 25-byte header then the raw payload (the hot path)
//   0x02  row             binary, LEB128 varints and bitmaps; the accepted ViewChangeValue as JSON
//   0x03  stateTransfer   binary, varints; each record's payload raw
//   0x04  app             varint from, then an opaque body (the agent's replies, queries, forwards)
//   0x05  block           varints (from, origin, messageId, blockIndex, blockCount, totalBytes, members), then the
//                         block's bytes: one block of a large frame relayed along the binomial pipeline
//   0x10+ control kinds   UTF-8 JSON of the whole message, validated on decode by the zod schemas below
//   0x70+ auth*           reserved for the transport's connection handshake (not messages)
//
// Every bound is a named limit (CodecLimits), configurable per Codec. `decode*` never throws: bad input
// gives { ok: false, error } naming what was wrong. `encode*` throws CodecError for a message that
// cannot be represented or breaks a bound (a caller bug: the peer would refuse it anyway).
//
// Decoded payloads (data, state-transfer records) are Uint8Array VIEWS into the frame, not copies: they
// keep the frame's buffer alive. Copy them if they are retained for long and memory matters.
// Encoded parts (`encodeParts`) reference the caller's payload: do not mutate it until it is written.

import { z } from 'zod';
import { RECENT_VIEWS_KEPT } from '../core/types.ts';
import type {
  DataMessage, LogRecord, Message, NodeId, Row, RowMessage, Version,
} from '../core/types.ts';

/** Driver-level frame: a shard's state (its log records up to `through`), sent to serve a TransferOrder. */
export interface StateTransferFrame {
  kind: 'stateTransfer';
  from: NodeId;
  shardId: number;
  through: Version;
  records: LogRecord[];
  /** More frames of this transfer follow (a large state is cut into frames under frameBytesMax). */
  more?: boolean;
}

/** Driver-level frame: opaque application traffic between agents (replies, p2p queries, forwards). */
export interface AppFrame {
  kind: 'app';
  from: NodeId;
  body: Uint8Array;
}

/**
 * Driver-level frame: block `blockIndex` of `blockCount` of a large frame (`totalBytes` long) that node
 * `origin` multicasts as message `messageId`; receivers relay blocks along the binomial pipeline.
 */
export interface BlockFrame {
  kind: 'block';
  from: NodeId;
  origin: NodeId;
  messageId: number;
  blockIndex: number;
  blockCount: number;
  totalBytes: number;
  /** The pipeline's nodes in schedule order (origin first): every receiver derives its relays from it. */
  members: NodeId[];
  bytes: Uint8Array;
}

/** Everything that travels in frames between agents. */
export type WireMessage = Message | StateTransferFrame | AppFrame | BlockFrame;

export type ControlKind = Exclude<WireMessage['kind'], 'data' | 'row' | 'stateTransfer' | 'app' | 'block'>;

export const FrameType = Object.freeze({
  data: 0x01,
  row: 0x02,
  stateTransfer: 0x03,
  app: 0x04,
  block: 0x05,
  joinRequest: 0x10,
  joinRedirect: 0x11,
  welcome: 0x12,
  viewDecided: 0x13,
  restartReport: 0x14,
  restartActive: 0x15,
  restartPrepare: 0x16,
  restartPromise: 0x17,
  restartAccept: 0x18,
  restartAccepted: 0x19,
  restartCommit: 0x1a,
  stateRequest: 0x1b,
  foundingHello: 0x1c,
  // Connection handshake (tcp-transport.ts); never decoded as messages.
  authHello: 0x70,
  authChallenge: 0x71,
  authProof: 0x72,
  authOk: 0x73,
});

const controlTypes: Record<ControlKind, number> = {
  joinRequest: FrameType.joinRequest,
  joinRedirect: FrameType.joinRedirect,
  welcome: FrameType.welcome,
  viewDecided: FrameType.viewDecided,
  restartReport: FrameType.restartReport,
  restartActive: FrameType.restartActive,
  restartPrepare: FrameType.restartPrepare,
  restartPromise: FrameType.restartPromise,
  restartAccept: FrameType.restartAccept,
  restartAccepted: FrameType.restartAccepted,
  restartCommit: FrameType.restartCommit,
  stateRequest: FrameType.stateRequest,
  foundingHello: FrameType.foundingHello,
};
const controlKindOfType = new Map<number, ControlKind>(
  (Object.entries(controlTypes) as [ControlKind, number][]).map(([k, t]) => [t, k]),
);

/** Bytes before the body: u32 length + u8 type. */
export const frameHeaderBytes = 5;
/** Data frame header: frame header + from, viewId, shardId, senderRank (u32 each), index (u64), flags (u8). */
export const dataHeaderBytes = frameHeaderBytes + 25;
/** Node ids, view ids and shard ids are u32 on the wire. */
export const u32Max = 0xffff_ffff;
/** Version components and ballots are integers in [-1, versionPartMax]. */
export const versionPartMax = Number.MAX_SAFE_INTEGER - 1;

export interface CodecLimits {
  /** Bound of a frame's length field (type byte + body), bytes. Announcing more closes the stream. */
  frameBytesMax: number;
  /** Bound of one data payload / log record payload, bytes. */
  payloadBytesMax: number;
  /** Bound of every list of members, senders, suspicions, per-sender counters and node-id lists. */
  membersMax: number;
  /** Bound of every per-shard list, and of shard ids (shardId < shardsMax). */
  shardsMax: number;
  /** Bound of a row's pendingJoins list. */
  pendingJoinsMax: number;
  /** Bound of the records of one state-transfer frame. */
  recordsMax: number;
  /** Bound of the saved-trim lists of restart reports and decisions. */
  savedTrimsMax: number;
  /** Bound of a subgroup name, characters. */
  nameCharsMax: number;
}

export const DEFAULT_CODEC_LIMITS: Readonly<CodecLimits> = Object.freeze({
  frameBytesMax: 16 << 20,
  payloadBytesMax: 1 << 20,
  membersMax: 1024,
  shardsMax: 1024,
  pendingJoinsMax: 1024,
  recordsMax: 1 << 20,
  savedTrimsMax: 1024,
  nameCharsMax: 256,
});

/** Thrown by the encoders (only) for a message that cannot be put on the wire. */
export class CodecError extends Error {
  override name = 'CodecError';
}

export type DecodeResult = { ok: true; message: WireMessage } | { ok: false; error: string };

// ============================================================================================
// Schemas: the wire-level contract of the JSON bodies (and of the ViewChangeValue inside rows)
// ============================================================================================

/** zod schemas of every JSON-encoded structure under the given limits. Unknown keys are stripped. */
export function controlSchemas(l: CodecLimits) {
  const nodeId = z.int().min(0).max(u32Max);
  const viewId = z.int().min(0).max(u32Max);
  const count = z.int().min(0);
  const shardId = z.int().min(0).max(l.shardsMax - 1);
  const versionPart = z.int().min(-1).max(versionPartMax);
  const version = z.object({ viewId: versionPart, seq: versionPart });
  const nodeList = z.array(nodeId).max(l.membersMax);
  const shardLayout = z.object({
    shardId,
    subgroup: z.string().max(l.nameCharsMax),
    shardIndex: shardId,
    members: nodeList,
    senders: nodeList,
    deliveryMode: z.enum(['ordered', 'raw']),
    persistent: z.boolean(),
  });
  const layout = z.object({ shards: z.array(shardLayout).max(l.shardsMax) });
  const diskId = z.int().min(0).max(Number.MAX_SAFE_INTEGER);
  const view = z.object({ viewId, members: nodeList, layout, previousViewId: viewId.optional(), memberDisks: z.array(diskId).max(l.membersMax).optional() });
  const trims = z.array(z.array(count).max(l.membersMax)).max(l.shardsMax);
  const stateTransferPlan = z.object({ shardId, from: nodeId, to: nodeList, through: version, suffixOnly: z.boolean().optional() });
  const viewChangeValue = z.object({
    fromViewId: viewId,
    next: view,
    trims,
    joined: nodeList,
    removed: nodeList,
    transfers: z.array(stateTransferPlan).max(l.shardsMax),
    lostShards: z.array(shardId).max(l.shardsMax),
  });
  const ballot = z.object({ round: count, nodeId });
  const savedTrim = z.object({ viewId, trims, lastVersions: z.array(version).max(l.shardsMax) });
  const restartDecision = z.object({
    lastViewId: viewId,
    adopted: z.array(view).max(l.savedTrimsMax).optional(),
    view,
    shards: z.array(z.object({ shardId, source: nodeId.nullable(), truncateTo: version })).max(l.shardsMax),
    trims: z.array(savedTrim).max(l.savedTrimsMax),
  });
  const restartReport = z.object({
    nodeId,
    lastView: view,
    highestViewIdSeen: versionPart,
    trims: z.array(savedTrim).max(l.savedTrimsMax),
    logTails: z.array(z.object({ shardId, version })).max(l.shardsMax),
    promised: ballot.nullable(),
    incompleteShards: z.array(shardId).max(l.shardsMax).optional(),
    blank: z.boolean().optional(),
    acceptedChange: z.object({ value: viewChangeValue, ballot: count }).nullable().optional(),
    recentViews: z.array(view).max(RECENT_VIEWS_KEPT).optional(),
    diskId: diskId.optional(),
    incarnation: count.optional(),
  });
  const messages = {
    joinRequest: z.object({
      kind: z.literal('joinRequest'), from: nodeId, incarnation: count, diskId: diskId.optional(),
      holds: z.object({ lastViewId: viewId, shards: z.array(z.object({ shardId, version })).max(l.shardsMax) }).optional(),
    }),
    joinRedirect: z.object({ kind: z.literal('joinRedirect'), from: nodeId, leader: nodeId }),
    welcome: z.object({
      kind: z.literal('welcome'), from: nodeId, to: nodeId, view, incarnation: count,
      transfers: z.array(stateTransferPlan).max(l.shardsMax),
    }),
    viewDecided: z.object({ kind: z.literal('viewDecided'), from: nodeId, value: viewChangeValue }),
    restartReport: z.object({ kind: z.literal('restartReport'), from: nodeId, report: restartReport }),
    restartActive: z.object({ kind: z.literal('restartActive'), from: nodeId, viewId, leader: nodeId }),
    restartPrepare: z.object({ kind: z.literal('restartPrepare'), from: nodeId, ballot }),
    restartPromise: z.object({
      kind: z.literal('restartPromise'), from: nodeId, ballot,
      accepted: z.object({ ballot, plan: restartDecision }).nullable(),
      report: restartReport,
    }),
    restartAccept: z.object({ kind: z.literal('restartAccept'), from: nodeId, ballot, plan: restartDecision }),
    restartAccepted: z.object({ kind: z.literal('restartAccepted'), from: nodeId, ballot }),
    restartCommit: z.object({ kind: z.literal('restartCommit'), from: nodeId, plan: restartDecision }),
    stateRequest: z.object({ kind: z.literal('stateRequest'), from: nodeId, shardId, viewId }),
    foundingHello: z.object({ kind: z.literal('foundingHello'), from: nodeId, members: z.array(nodeId).min(1).max(l.membersMax) }),
  } satisfies Record<ControlKind, z.ZodType>;
  return {
    version, view, viewChangeValue, stateTransferPlan, ballot, savedTrim, restartReport, restartDecision, messages,
  };
}

export type ControlSchemas = ReturnType<typeof controlSchemas>;

// Compile-time proof that what the schemas accept is what the core's types describe.
type Assignable<A, B extends A> = B;
type _ControlOut = { [K in ControlKind]: z.output<ControlSchemas['messages'][K]> };
export type _SchemaMatchesTypes = Assignable<
  { [K in ControlKind]: Extract<Message, { kind: K }> },
  _ControlOut
>;

/** The schemas under the default limits. */
export const defaultSchemas: ControlSchemas = controlSchemas(DEFAULT_CODEC_LIMITS);

// ============================================================================================
// Byte helpers
// ============================================================================================

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

function putU32(buf: Uint8Array, pos: number, v: number): void {
  buf[pos] = v >>> 24;
  buf[pos + 1] = (v >>> 16) & 0xff;
  buf[pos + 2] = (v >>> 8) & 0xff;
  buf[pos + 3] = v & 0xff;
}

function getU32(buf: Uint8Array, pos: number): number {
  return ((buf[pos]! << 24) >>> 0) + ((buf[pos + 1]! << 16) | (buf[pos + 2]! << 8) | buf[pos + 3]!);
}

/** Reads the u32 length prefix of a frame (the caller checks 4 bytes are there). */
export function readFrameLength(buf: Uint8Array, pos = 0): number {
  return getU32(buf, pos);
}

/** A complete frame of `type` around `body` (copies the body). */
export function rawFrame(type: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(frameHeaderBytes + body.byteLength);
  putU32(out, 0, 1 + body.byteLength);
  out[4] = type;
  out.set(body, frameHeaderBytes);
  return out;
}

function isInt(v: unknown, min: number, max: number): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;
}

/** Growable byte buffer for the varint encodings; `cut` closes a segment so raw payloads can follow. */
class Writer {
  buf: Uint8Array;
  pos = 0;
  private start = 0;
  readonly parts: Uint8Array[] = [];
  total = 0;

  constructor(capacity: number) {
    this.buf = new Uint8Array(capacity);
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.byteLength) return;
    let cap = this.buf.byteLength * 2;
    while (cap < this.pos + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
  }

  u8(v: number): void {
    this.ensure(1);
    this.buf[this.pos++] = v;
  }

  /** Unsigned LEB128 of a safe non-negative integer (at most 8 bytes). */
  varint(v: number, field: string, max = Number.MAX_SAFE_INTEGER): void {
    if (!isInt(v, 0, max)) throw new CodecError(`${field}: ${String(v)} is not an integer in [0, ${max}]`);
    this.ensure(8);
    const b = this.buf;
    let p = this.pos;
    while (v > 0x7f) {
      b[p++] = (v % 128) | 0x80;
      v = Math.floor(v / 128);
    }
    b[p++] = v;
    this.pos = p;
  }

  /** An integer in [-1, max] as the varint of v + 1. */
  plus1(v: number, field: string, max = versionPartMax): void {
    if (!isInt(v, -1, max)) throw new CodecError(`${field}: ${String(v)} is not an integer in [-1, ${max}]`);
    this.varint(v + 1, field);
  }

  bits(values: readonly boolean[], field: string): void {
    const n = values.length;
    this.ensure((n + 7) >> 3);
    for (let i = 0; i < n; i += 8) {
      let byte = 0;
      for (let j = 0; j < 8 && i + j < n; j++) {
        const v = values[i + j];
        if (typeof v !== 'boolean') throw new CodecError(`${field}[${i + j}]: ${String(v)} is not a boolean`);
        if (v) byte |= 1 << j;
      }
      this.buf[this.pos++] = byte;
    }
  }

  bytes(b: Uint8Array): void {
    this.ensure(b.byteLength);
    this.buf.set(b, this.pos);
    this.pos += b.byteLength;
  }

  /** Ends the current segment and appends `raw` by reference. */
  raw(raw: Uint8Array): void {
    this.cut();
    if (raw.byteLength > 0) {
      this.parts.push(raw);
      this.total += raw.byteLength;
    }
  }

  cut(): void {
    if (this.pos > this.start) {
      this.parts.push(this.buf.subarray(this.start, this.pos));
      this.total += this.pos - this.start;
    }
    this.start = this.pos;
  }
}

/** Internal: a decode failure, caught at the module boundary. */
class Bad {
  constructor(readonly error: string) {}
}

class Reader {
  pos = 0;
  constructor(readonly buf: Uint8Array, readonly what: string) {}

  fail(msg: string): never {
    throw new Bad(`${this.what}: ${msg}`);
  }

  need(n: number, field: string): void {
    if (this.buf.byteLength - this.pos < n) {
      this.fail(`truncated body: ${field} needs ${n} bytes at offset ${this.pos}, ${this.buf.byteLength - this.pos} left`);
    }
  }

  u8(field: string): number {
    this.need(1, field);
    return this.buf[this.pos++]!;
  }

  varint(field: string, max = Number.MAX_SAFE_INTEGER): number {
    const b = this.buf;
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      if (this.pos >= b.byteLength) this.fail(`truncated body: varint ${field} at offset ${this.pos}`);
      const byte = b[this.pos++]!;
      result += (byte & 0x7f) * mul;
      if (byte < 0x80) {
        if (result > max) this.fail(`${field} = ${result} is over its bound ${max}`);
        return result;
      }
      mul *= 128;
    }
    return this.fail(`varint ${field} longer than 8 bytes`);
  }

  plus1(field: string, max = versionPartMax): number {
    return this.varint(field, max + 1) - 1;
  }

  /** A length prefix bounded by `max` (names the limit in the error). */
  len(field: string, max: number, limitName: string): number {
    const n = this.varint(field);
    if (n > max) this.fail(`${field} = ${n} is over ${limitName} ${max}`);
    return n;
  }

  bits(n: number, field: string): boolean[] {
    const bytes = (n + 7) >> 3;
    this.need(bytes, field);
    const out = new Array<boolean>(n);
    const b = this.buf;
    for (let i = 0; i < n; i++) out[i] = (b[this.pos + (i >> 3)]! & (1 << (i & 7))) !== 0;
    const rest = n & 7;
    if (rest !== 0 && (b[this.pos + bytes - 1]! >> rest) !== 0) this.fail(`${field}: padding bits set`);
    this.pos += bytes;
    return out;
  }

  /** A view (no copy) of the next n bytes, as a plain Uint8Array. */
  view(n: number, field: string): Uint8Array {
    this.need(n, field);
    const v = new Uint8Array(this.buf.buffer, this.buf.byteOffset + this.pos, n);
    this.pos += n;
    return v;
  }

  end(): void {
    if (this.pos !== this.buf.byteLength) this.fail(`${this.buf.byteLength - this.pos} trailing bytes after the body`);
  }
}

function formatIssue(what: string, input: unknown, issue: z.core.$ZodIssue): string {
  let value: unknown = input;
  for (const key of issue.path) {
    value = value !== null && typeof value === 'object' ? (value as Record<PropertyKey, unknown>)[key as PropertyKey] : undefined;
  }
  const path = issue.path.reduce<string>((acc, k) => (typeof k === 'number' ? `${acc}[${k}]` : acc ? `${acc}.${String(k)}` : String(k)), '');
  let shown: string;
  try {
    shown = value === undefined ? 'missing' : JSON.stringify(value) ?? String(value);
  } catch {
    shown = String(value);
  }
  if (shown.length > 80) shown = `${shown.slice(0, 77)}...`;
  return `${what}: field ${path || '(root)'}: ${issue.message} (value: ${shown})`;
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  if (parts.length === 1 && parts[0]!.byteLength === total) return parts[0]!;
  const out = new Uint8Array(total);
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.byteLength;
  }
  return out;
}

// ============================================================================================
// Codec
// ============================================================================================

function checkLimits(l: CodecLimits): void {
  for (const [k, v] of Object.entries(l)) {
    if (!isInt(v, 1, 0x7fff_ffff)) throw new RangeError(`codec limit ${k} must be an integer in [1, 2^31-1], got ${String(v)}`);
  }
  if (l.frameBytesMax < dataHeaderBytes - 4 + l.payloadBytesMax) {
    throw new RangeError(`frameBytesMax ${l.frameBytesMax} cannot hold a data frame of payloadBytesMax ${l.payloadBytesMax}`);
  }
}

export class Codec {
  readonly limits: Readonly<CodecLimits>;
  /** The JSON wire contract under these limits. */
  readonly schemas: ControlSchemas;

  constructor(options: Partial<CodecLimits> = {}) {
    const limits = { ...DEFAULT_CODEC_LIMITS, ...options };
    checkLimits(limits);
    this.limits = Object.freeze(limits);
    const defaults = Object.entries(DEFAULT_CODEC_LIMITS).every(([k, v]) => limits[k as keyof CodecLimits] === v);
    this.schemas = defaults ? defaultSchemas : controlSchemas(limits);
  }

  /** The whole frame as one contiguous buffer (copies payloads). */
  encode(m: WireMessage): Uint8Array {
    const { parts, bytes } = this.encodeParts(m);
    return concat(parts, bytes);
  }

  /**
   * The frame as segments whose concatenation is the frame; payloads are referenced, not copied.
   * `bytes` is the frame's total size.
   */
  encodeParts(m: WireMessage): { parts: Uint8Array[]; bytes: number } {
    let out: { parts: Uint8Array[]; bytes: number };
    switch (m.kind) {
      case 'data': out = this.encodeData(m); break;
      case 'row': out = this.encodeRow(m); break;
      case 'stateTransfer': out = this.encodeStateTransfer(m); break;
      case 'app': out = this.encodeApp(m); break;
      case 'block': out = this.encodeBlock(m); break;
      default: out = this.encodeControl(m); break;
    }
    if (out.bytes - 4 > this.limits.frameBytesMax) {
      throw new CodecError(`${m.kind}: frame of ${out.bytes - 4} bytes is over frameBytesMax ${this.limits.frameBytesMax}`);
    }
    const head = out.parts[0]!;
    putU32(head, 0, out.bytes - 4);
    return out;
  }

  /** Decodes one whole frame (length prefix included). */
  decode(frame: Uint8Array): DecodeResult {
    if (frame.byteLength < frameHeaderBytes) return { ok: false, error: `truncated frame: ${frame.byteLength} bytes, a frame has at least ${frameHeaderBytes}` };
    const length = getU32(frame, 0);
    if (length > this.limits.frameBytesMax) return { ok: false, error: `frame length ${length} is over frameBytesMax ${this.limits.frameBytesMax}` };
    if (length !== frame.byteLength - 4) return { ok: false, error: `frame length field says ${length} bytes but ${frame.byteLength - 4} follow it${length > frame.byteLength - 4 ? ' (truncated frame)' : ''}` };
    return this.decodeBody(frame[4]!, frame.subarray(frameHeaderBytes));
  }

  /** Decodes the body of a frame of the given type (what FrameReader yields). Never throws. */
  decodeBody(type: number, body: Uint8Array): DecodeResult {
    try {
      if (body.byteLength + 1 > this.limits.frameBytesMax) {
        return { ok: false, error: `frame length ${body.byteLength + 1} is over frameBytesMax ${this.limits.frameBytesMax}` };
      }
      switch (type) {
        case FrameType.data: return { ok: true, message: this.decodeData(body) };
        case FrameType.row: return { ok: true, message: this.decodeRow(body) };
        case FrameType.stateTransfer: return { ok: true, message: this.decodeStateTransfer(body) };
        case FrameType.app: return { ok: true, message: this.decodeApp(body) };
        case FrameType.block: return { ok: true, message: this.decodeBlock(body) };
        default: {
          const kind = controlKindOfType.get(type);
          if (kind === undefined) {
            const hex = `0x${type.toString(16).padStart(2, '0')}`;
            return { ok: false, error: type >= FrameType.authHello && type <= FrameType.authOk ? `handshake frame type ${hex} is not a message` : `unknown frame type ${hex}` };
          }
          return this.decodeControl(kind, body);
        }
      }
    } catch (e) {
      if (e instanceof Bad) return { ok: false, error: e.error };
      return { ok: false, error: `internal decode error: ${e instanceof Error ? e.message : String(e)}` };
    }
  }

  // ---- data --------------------------------------------------------------------------------

  private encodeData(m: DataMessage): { parts: Uint8Array[]; bytes: number } {
    const l = this.limits;
    if (!isInt(m.from, 0, u32Max)) throw new CodecError(`data: from ${String(m.from)} is not a u32 node id`);
    if (!isInt(m.viewId, 0, u32Max)) throw new CodecError(`data: viewId ${String(m.viewId)} is not a u32`);
    if (!isInt(m.shardId, 0, l.shardsMax - 1)) throw new CodecError(`data: shardId ${String(m.shardId)} is not in [0, shardsMax ${l.shardsMax})`);
    if (!isInt(m.senderRank, 0, l.membersMax - 1)) throw new CodecError(`data: senderRank ${String(m.senderRank)} is not in [0, membersMax ${l.membersMax})`);
    if (!isInt(m.index, 0, Number.MAX_SAFE_INTEGER)) throw new CodecError(`data: index ${String(m.index)} is not a safe non-negative integer`);
    const payload = m.payload;
    if (payload !== null && !(payload instanceof Uint8Array)) throw new CodecError('data: payload is neither a Uint8Array nor null');
    const n = payload === null ? 0 : payload.byteLength;
    if (n > l.payloadBytesMax) throw new CodecError(`data: payload of ${n} bytes is over payloadBytesMax ${l.payloadBytesMax}`);
    const h = new Uint8Array(dataHeaderBytes);
    h[4] = FrameType.data;
    putU32(h, 5, m.from);
    putU32(h, 9, m.viewId);
    putU32(h, 13, m.shardId);
    putU32(h, 17, m.senderRank);
    putU32(h, 21, Math.floor(m.index / 0x1_0000_0000));
    putU32(h, 25, m.index >>> 0);
    h[29] = payload === null ? 0 : 1;
    return { parts: n > 0 ? [h, payload!] : [h], bytes: dataHeaderBytes + n };
  }

  private decodeData(body: Uint8Array): DataMessage {
    const l = this.limits;
    const hb = dataHeaderBytes - frameHeaderBytes;
    if (body.byteLength < hb) throw new Bad(`data: truncated body: ${body.byteLength} bytes, the header has ${hb}`);
    const from = getU32(body, 0);
    const viewId = getU32(body, 4);
    const shardId = getU32(body, 8);
    const senderRank = getU32(body, 12);
    const hi = getU32(body, 16);
    const lo = getU32(body, 20);
    const flags = body[24]!;
    if (shardId >= l.shardsMax) throw new Bad(`data: shardId ${shardId} is over shardsMax ${l.shardsMax}`);
    if (senderRank >= l.membersMax) throw new Bad(`data: senderRank ${senderRank} is over membersMax ${l.membersMax}`);
    if (hi > 0x1f_ffff) throw new Bad(`data: index ${hi} * 2^32 + ${lo} is over 2^53 - 1`);
    if (flags > 1) throw new Bad(`data: unknown flags 0x${flags.toString(16)}`);
    const n = body.byteLength - hb;
    if (flags === 0 && n !== 0) throw new Bad(`data: null message with ${n} payload bytes`);
    if (n > l.payloadBytesMax) throw new Bad(`data: payload of ${n} bytes is over payloadBytesMax ${l.payloadBytesMax}`);
    return {
      kind: 'data', from, viewId, shardId, senderRank, index: hi * 0x1_0000_0000 + lo,
      payload: flags === 0 ? null : new Uint8Array(body.buffer, body.byteOffset + hb, n),
    };
  }

  // ---- row ---------------------------------------------------------------------------------

  private encodeRow(m: RowMessage): { parts: Uint8Array[]; bytes: number } {
    const l = this.limits;
    const r: Row = m.row;
    if (r === null || typeof r !== 'object') throw new CodecError('row: row is not an object');
    const list = <T>(v: T[], field: string, max: number, limitName: string): T[] => {
      if (!Array.isArray(v)) throw new CodecError(`row: ${field} is not an array`);
      if (v.length > max) throw new CodecError(`row: ${field} has ${v.length} entries, over ${limitName} ${max}`);
      return v;
    };
    const bool = (v: unknown, field: string): boolean => {
      if (typeof v !== 'boolean') throw new CodecError(`row: ${field} is not a boolean`);
      return v;
    };
    let acceptedJson: Uint8Array | null = null;
    if (r.accepted !== null) {
      const parsed = this.schemas.viewChangeValue.safeParse(r.accepted);
      if (!parsed.success) throw new CodecError(formatIssue('row: accepted', r.accepted, parsed.error.issues[0]!));
      acceptedJson = textEncoder.encode(JSON.stringify(parsed.data));
    }
    let counters = 0;
    for (const c of list(r.received, 'received', l.shardsMax, 'shardsMax')) counters += Array.isArray(c) ? c.length : 0;
    const w = new Writer(64 + 9 * (counters + 2 * (r.delivered?.length ?? 0)) + (acceptedJson?.byteLength ?? 0));
    w.pos = frameHeaderBytes;
    w.buf[4] = FrameType.row;
    w.varint(m.from, 'row: from', u32Max);
    w.varint(m.viewId, 'row: viewId', u32Max);
    w.varint(r.pushCount, 'row: pushCount');
    w.varint(r.heartbeat, 'row: heartbeat');
    w.u8((bool(r.leaving, 'leaving') ? 1 : 0) | (bool(r.wedged, 'wedged') ? 2 : 0) | (bool(r.committed, 'committed') ? 4 : 0) | (acceptedJson ? 8 : 0));
    w.plus1(r.promisedBallot, 'row: promisedBallot');
    w.plus1(r.acceptedBallot, 'row: acceptedBallot');
    w.varint(list(r.suspected, 'suspected', l.membersMax, 'membersMax').length, 'row: suspected');
    w.bits(r.suspected, 'row: suspected');
    w.varint(r.received.length, 'row: received');
    r.received.forEach((cols, s) => {
      list(cols, `received[${s}]`, l.membersMax, 'membersMax');
      w.varint(cols.length, `row: received[${s}]`);
      for (let k = 0; k < cols.length; k++) w.varint(cols[k]!, `row: received[${s}][${k}]`);
    });
    for (const field of ['delivered', 'persisted'] as const) {
      const v = list(r[field], field, l.shardsMax, 'shardsMax');
      w.varint(v.length, `row: ${field}`);
      for (let s = 0; s < v.length; s++) w.varint(v[s]!, `row: ${field}[${s}]`);
    }
    w.varint(list(r.stateReady, 'stateReady', l.shardsMax, 'shardsMax').length, 'row: stateReady');
    w.bits(r.stateReady, 'row: stateReady');
    w.varint(list(r.pendingJoins, 'pendingJoins', l.pendingJoinsMax, 'pendingJoinsMax').length, 'row: pendingJoins');
    r.pendingJoins.forEach((j, i) => {
      w.varint(j.nodeId, `row: pendingJoins[${i}].nodeId`, u32Max);
      w.varint(j.incarnation, `row: pendingJoins[${i}].incarnation`);
    });
    w.varint(r.diskId ?? 0, 'row: diskId');
    if (acceptedJson) {
      w.varint(acceptedJson.byteLength, 'row: accepted');
      w.bytes(acceptedJson);
    }
    w.cut();
    return { parts: w.parts, bytes: w.total };
  }

  private decodeRow(body: Uint8Array): RowMessage {
    const l = this.limits;
    const rd = new Reader(body, 'row');
    const from = rd.varint('from', u32Max);
    const viewId = rd.varint('viewId', u32Max);
    const pushCount = rd.varint('pushCount');
    const heartbeat = rd.varint('heartbeat');
    const flags = rd.u8('flags');
    if (flags > 15) rd.fail(`unknown flags 0x${flags.toString(16)}`);
    const promisedBallot = rd.plus1('promisedBallot');
    const acceptedBallot = rd.plus1('acceptedBallot');
    const suspected = rd.bits(rd.len('suspected length', l.membersMax, 'membersMax'), 'suspected');
    const shardCount = rd.len('received length', l.shardsMax, 'shardsMax');
    const received: number[][] = new Array<number[]>(shardCount);
    for (let s = 0; s < shardCount; s++) {
      const n = rd.len(`received[${s}] length`, l.membersMax, 'membersMax');
      const cols = new Array<number>(n);
      for (let k = 0; k < n; k++) cols[k] = rd.varint(`received[${s}][${k}]`);
      received[s] = cols;
    }
    const counters = (field: string): number[] => {
      const n = rd.len(`${field} length`, l.shardsMax, 'shardsMax');
      const v = new Array<number>(n);
      for (let s = 0; s < n; s++) v[s] = rd.varint(`${field}[${s}]`);
      return v;
    };
    const delivered = counters('delivered');
    const persisted = counters('persisted');
    const stateReady = rd.bits(rd.len('stateReady length', l.shardsMax, 'shardsMax'), 'stateReady');
    const joins = rd.len('pendingJoins length', l.pendingJoinsMax, 'pendingJoinsMax');
    const pendingJoins: { nodeId: NodeId; incarnation: number }[] = new Array(joins);
    for (let i = 0; i < joins; i++) {
      pendingJoins[i] = { nodeId: rd.varint(`pendingJoins[${i}].nodeId`, u32Max), incarnation: rd.varint(`pendingJoins[${i}].incarnation`) };
    }
    const diskId = rd.varint('diskId');
    let accepted: Row['accepted'] = null;
    if (flags & 8) {
      const n = rd.len('accepted length', body.byteLength, 'the body size');
      const json = this.parseJson(rd.view(n, 'accepted'), 'row: accepted');
      const parsed = this.schemas.viewChangeValue.safeParse(json);
      if (!parsed.success) throw new Bad(formatIssue('row: accepted', json, parsed.error.issues[0]!));
      accepted = parsed.data;
    }
    rd.end();
    return {
      kind: 'row', from, viewId,
      row: {
        pushCount, heartbeat, suspected, leaving: (flags & 1) !== 0, wedged: (flags & 2) !== 0, received,
        delivered, persisted, stateReady, promisedBallot, acceptedBallot, accepted, committed: (flags & 4) !== 0,
        pendingJoins, diskId,
      },
    };
  }

  // ---- state transfer ----------------------------------------------------------------------

  private encodeStateTransfer(m: StateTransferFrame): { parts: Uint8Array[]; bytes: number } {
    const l = this.limits;
    if (!Array.isArray(m.records)) throw new CodecError('stateTransfer: records is not an array');
    if (m.records.length > l.recordsMax) throw new CodecError(`stateTransfer: ${m.records.length} records, over recordsMax ${l.recordsMax}`);
    const w = new Writer(64 + 24 * Math.min(m.records.length, 4096));
    w.pos = frameHeaderBytes;
    w.buf[4] = FrameType.stateTransfer;
    w.varint(m.from, 'stateTransfer: from', u32Max);
    w.varint(m.shardId, 'stateTransfer: shardId', l.shardsMax - 1);
    w.plus1(m.through?.viewId, 'stateTransfer: through.viewId');
    w.plus1(m.through?.seq, 'stateTransfer: through.seq');
    w.u8(m.more === true ? 1 : 0);
    w.varint(m.records.length, 'stateTransfer: records');
    m.records.forEach((r, i) => {
      const f = `stateTransfer: records[${i}]`;
      w.varint(r.shardId, `${f}.shardId`, l.shardsMax - 1);
      w.plus1(r.version?.viewId, `${f}.version.viewId`);
      w.plus1(r.version?.seq, `${f}.version.seq`);
      w.varint(r.sender, `${f}.sender`, u32Max);
      if (!(r.payload instanceof Uint8Array)) throw new CodecError(`${f}.payload is not a Uint8Array`);
      w.varint(r.payload.byteLength, `${f}.payload length (payloadBytesMax)`, l.payloadBytesMax);
      w.raw(r.payload);
    });
    w.cut();
    return { parts: w.parts, bytes: w.total };
  }

  private decodeStateTransfer(body: Uint8Array): StateTransferFrame {
    const l = this.limits;
    const rd = new Reader(body, 'stateTransfer');
    const from = rd.varint('from', u32Max);
    const shardId = rd.varint('shardId', l.shardsMax - 1);
    const through = { viewId: rd.plus1('through.viewId'), seq: rd.plus1('through.seq') };
    const flags = rd.u8('flags');
    if (flags > 1) rd.fail(`flags = ${flags}: only bit 0 (more) is defined`);
    const n = rd.len('records length', l.recordsMax, 'recordsMax');
    // Each record takes at least 5 bytes: refuse impossible counts before allocating.
    if (n * 5 > body.byteLength - rd.pos) rd.fail(`truncated body: ${n} records cannot fit in ${body.byteLength - rd.pos} bytes`);
    const records: LogRecord[] = new Array<LogRecord>(n);
    for (let i = 0; i < n; i++) {
      const f = `records[${i}]`;
      const rShard = rd.varint(`${f}.shardId`, l.shardsMax - 1);
      const version = { viewId: rd.plus1(`${f}.version.viewId`), seq: rd.plus1(`${f}.version.seq`) };
      const sender = rd.varint(`${f}.sender`, u32Max);
      const len = rd.len(`${f}.payload length`, l.payloadBytesMax, 'payloadBytesMax');
      records[i] = { shardId: rShard, version, sender, payload: rd.view(len, `${f}.payload`) };
    }
    rd.end();
    return { kind: 'stateTransfer', from, shardId, through, records, ...(flags === 1 ? { more: true } : {}) };
  }

  // ---- app ---------------------------------------------------------------------------------

  private encodeApp(m: AppFrame): { parts: Uint8Array[]; bytes: number } {
    if (!(m.body instanceof Uint8Array)) throw new CodecError('app: body is not a Uint8Array');
    const w = new Writer(16);
    w.pos = frameHeaderBytes;
    w.buf[4] = FrameType.app;
    w.varint(m.from, 'app: from', u32Max);
    w.raw(m.body);
    w.cut();
    return { parts: w.parts, bytes: w.total };
  }

  private decodeApp(body: Uint8Array): AppFrame {
    const rd = new Reader(body, 'app');
    const from = rd.varint('from', u32Max);
    return { kind: 'app', from, body: rd.view(body.byteLength - rd.pos, 'body') };
  }

  // ---- block -------------------------------------------------------------------------------

  private encodeBlock(m: BlockFrame): { parts: Uint8Array[]; bytes: number } {
    const l = this.limits;
    if (!(m.bytes instanceof Uint8Array)) throw new CodecError('block: bytes is not a Uint8Array');
    if (!isInt(m.blockCount, 1, u32Max)) throw new CodecError(`block: blockCount ${String(m.blockCount)} is not in [1, 2^32)`);
    if (!isInt(m.blockIndex, 0, m.blockCount - 1)) throw new CodecError(`block: blockIndex ${String(m.blockIndex)} is not in [0, blockCount ${m.blockCount})`);
    const w = new Writer(48);
    w.pos = frameHeaderBytes;
    w.buf[4] = FrameType.block;
    w.varint(m.from, 'block: from', u32Max);
    w.varint(m.origin, 'block: origin', u32Max);
    w.varint(m.messageId, 'block: messageId');
    w.varint(m.blockIndex, 'block: blockIndex', u32Max);
    w.varint(m.blockCount, 'block: blockCount', u32Max);
    w.varint(m.totalBytes, 'block: totalBytes (frameBytesMax)', l.frameBytesMax + 4);
    if (!Array.isArray(m.members) || m.members.length > l.membersMax) throw new CodecError(`block: members is not a list of at most membersMax ${l.membersMax}`);
    w.varint(m.members.length, 'block: members length');
    m.members.forEach((id, i) => w.varint(id, `block: members[${i}]`, u32Max));
    w.raw(m.bytes);
    w.cut();
    return { parts: w.parts, bytes: w.total };
  }

  private decodeBlock(body: Uint8Array): BlockFrame {
    const l = this.limits;
    const rd = new Reader(body, 'block');
    const from = rd.varint('from', u32Max);
    const origin = rd.varint('origin', u32Max);
    const messageId = rd.varint('messageId');
    const blockIndex = rd.varint('blockIndex', u32Max);
    const blockCount = rd.varint('blockCount', u32Max);
    const totalBytes = rd.varint('totalBytes', l.frameBytesMax + 4);
    const n = rd.len('members length', l.membersMax, 'membersMax');
    const members: NodeId[] = [];
    for (let i = 0; i < n; i++) members.push(rd.varint(`members[${i}]`, u32Max));
    if (blockCount < 1) rd.fail('blockCount = 0 (a message has at least one block)');
    if (blockIndex >= blockCount) rd.fail(`blockIndex ${blockIndex} is not below blockCount ${blockCount}`);
    const bytes = rd.view(body.byteLength - rd.pos, 'bytes');
    if (bytes.byteLength > totalBytes) rd.fail(`block of ${bytes.byteLength} bytes is larger than totalBytes ${totalBytes}`);
    return { kind: 'block', from, origin, messageId, blockIndex, blockCount, totalBytes, members, bytes };
  }

  // ---- control (JSON) ----------------------------------------------------------------------

  private encodeControl(m: Extract<WireMessage, { kind: ControlKind }>): { parts: Uint8Array[]; bytes: number } {
    const kind = m.kind;
    const schema = this.schemas.messages[kind] as z.ZodType | undefined;
    if (schema === undefined) throw new CodecError(`unknown message kind ${JSON.stringify(kind)}`);
    const parsed = schema.safeParse(m);
    if (!parsed.success) throw new CodecError(formatIssue(kind, m, parsed.error.issues[0]!));
    const json = textEncoder.encode(JSON.stringify(parsed.data));
    const out = new Uint8Array(frameHeaderBytes + json.byteLength);
    out[4] = controlTypes[kind];
    out.set(json, frameHeaderBytes);
    return { parts: [out], bytes: out.byteLength };
  }

  private parseJson(bytes: Uint8Array, what: string): unknown {
    let text: string;
    try {
      text = textDecoder.decode(bytes);
    } catch {
      throw new Bad(`${what}: body is not valid UTF-8`);
    }
    try {
      return JSON.parse(text) as unknown;
    } catch (e) {
      throw new Bad(`${what}: body is not valid JSON (${e instanceof Error ? e.message : String(e)})`);
    }
  }

  private decodeControl(kind: ControlKind, body: Uint8Array): DecodeResult {
    const json = this.parseJson(body, kind);
    const parsed = this.schemas.messages[kind].safeParse(json);
    if (!parsed.success) return { ok: false, error: formatIssue(kind, json, parsed.error.issues[0]!) };
    return { ok: true, message: parsed.data as WireMessage };
  }
}

/** A codec with the default limits. */
export const defaultCodec = new Codec();
