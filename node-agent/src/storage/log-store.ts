// The node agent's durable storage: what `Ready.persist` must make durable before the Ready's messages go
// out. It applies PersistRecords with exactly the semantics of the simulator's in-memory disk
// (test/sim/storage.ts), only durably, and reads everything back on start.
//
// API: synchronous (node:fs *Sync calls). The driver runs one event loop and must not send before the
// records are durable anyway, so a synchronous `apply` is the simplest correct shape.
//
// ON-DISK FORMAT (format version 2, all integers little-endian)
//
//   <dir>/journal.dlog        the journal: a file header, then records, append-only
//   <dir>/journal.dlog.tmp    a rewrite (creation, compaction, import) in progress; deleted on open
//
//   file header (16 bytes):  "DRCHJRNL" (8 bytes ASCII) | u32 format version (2) | u32 crc32 of bytes 0..11
//   (version 1, without record kind 11, is read as well and migrated: `open` rewrites it as version 2, so
//   that a build that only reads version 1 refuses the file by its header rather than by an unknown record)
//   record (frame):          u32 body length L (1 <= L <= maxRecordBytes) | u32 crc32 of the body | body
//   body:                    u8 record kind | encoding of that kind
//     1 log              binary: u32 shardId | u32 viewId | u64 seq (< 2^53) | u32 sender | payload bytes
//                        (21 bytes before the payload)
//     2 view             UTF-8 JSON of the View                       (last installed view; raises highestViewIdSeen;
//                                                                     joins the recent views)
//     3 trim             UTF-8 JSON of the SavedTrim                  (upsert by viewId)
//     4 viewIdSeen       UTF-8 JSON {viewId}
//     5 truncate         UTF-8 JSON {shardId, after}                  (drop the shard's records with version > after)
//     6 shardState       UTF-8 JSON {shardId, complete}
//     7 restartPromise   UTF-8 JSON {ballot}
//     8 restartAccept    UTF-8 JSON {ballot, plan}
//    10 viewAccepted     UTF-8 JSON {value, ballot}                  (a view change this node accepted)
//    12 disk             UTF-8 JSON {diskId}                          (this store's identity: a random positive
//                                                                     integer, written when the store is created
//                                                                     or migrated; see ReplicaConfig.diskId)
//    11 viewsDecided     UTF-8 JSON {views}                           (views decided before the next view record, never
//                                                                     installed here; join the recent views, the
//                                                                     RECENT_VIEWS_KEPT highest ids are kept)
//     9 shardReset       UTF-8 JSON {shardId}                         (the shard has a log, empty from here on;
//                                                                     written by rewrites, for empty logs only)
//   crc32 is the IEEE CRC-32 of zlib (node:zlib `crc32` when present, else the table-driven copy below).
//
// Replaying the journal from the start, record by record, rebuilds the state. One `apply` call is one batch:
// its records are encoded into one buffer, written with positional writes at the journal's end, and then
// (policy 'fsync') fsynced once. Policy 'os' leaves flushing of log records to the OS: a process crash
// loses nothing, a machine crash may lose the newest log batches; a batch with any control record (view,
// trim, view-change acceptance, restart promise or plan, ...) is fsynced under either policy. A batch that would break a rule (an out-of-order append, a
// record over the size bound) is refused as a whole, before anything is written. (The simulator's Disk
// applies record by record and stops at the bad one; the driver treats either as fatal.)
//
// Rewrites: compaction (automatic when the journal holds more than `compactDeadRecords` dead records and
// the dead bytes are at least `compactDeadRatio` times the live log bytes; or `compact()`) and state
// transfers (`importShard`) write the live state into journal.dlog.tmp, fsync it, rename it over the journal
// and fsync the directory. Rename is the commit point: a crash leaves either the old or the new journal.
// Rewrites always fsync, whatever the policy: a torn rewrite would lose everything, not just a tail.
// Log frames are copied verbatim into the new journal after their checksum is verified.
//
// Recovery on open: records are read and checked one by one. At the first bad frame (incomplete header,
// length out of bounds, incomplete body, checksum mismatch) the store decides between a torn tail and
// corruption: if an intact frame starts anywhere after the bad one (searched up to one maximal record
// further, which covers a damaged length field), acknowledged data follows and `open` throws a
// CorruptionError naming the file and the byte offset. Otherwise the bad bytes are the remains of the last,
// unacknowledged write: the file is truncated to the last good record (and fsynced), and `onRecovery` is
// told how many bytes were dropped and why. A frame whose checksum is right but whose body does not decode
// is always corruption. Known limits, both failing safe (open refuses rather than drops): a machine crash
// that leaves a hole inside the last unacknowledged batch with intact frames of that batch after it, or a
// torn record whose payload itself contains a well-formed frame, is reported as corruption.
//
// Reading: the store keeps an index of the log records (version, sender, file offset), not their payloads;
// `log`, `exportShard` and rewrites read payloads back from the journal and verify their checksums.
//
// Bounds: a record body is at most `maxRecordBytes` (default 8 MiB, at most 1 GiB), so a log payload is at
// most maxRecordBytes - 21 bytes (reading accepts records up to 1 GiB, so lowering the option is safe);
// shard ids, view ids of log records and senders are u32; seq < 2^53. A record over a bound is refused
// with a StorageLimitError and nothing is written. The directory belongs to
// one process: two LogStores on the same directory corrupt each other (nothing here prevents it).
//
// Failures: a failed write or fsync leaves the store unusable (every later call throws): after a failed
// fsync the kernel's view of the file cannot be trusted, so the driver must exit and reopen.

import { randomInt } from 'node:crypto';
import * as nodeFs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { compareVersions, rememberViews, savedStateFrom, VERSION_NONE } from '../core/types.ts';
import type { AcceptedChange, Ballot, LogRecord, PersistRecord, RestartDecision, SavedState, SavedTrim, Version, View } from '../core/types.ts';

// ---------------------------------------------------------------------------------------------------------
// Errors

/** A request the store refuses (out-of-order append, bad argument), or a store that can no longer be used. */
export class StorageError extends Error {
  override name = 'StorageError';
}

/** A record over an explicit bound (record bytes, integer ranges). Nothing was written. */
export class StorageLimitError extends StorageError {
  override name = 'StorageLimitError';
}

/** The journal is damaged in a way that is not a torn tail: acknowledged data would be lost. */
export class CorruptionError extends StorageError {
  override name = 'CorruptionError';
  constructor(
    readonly file: string,
    readonly offset: number,
    detail: string,
  ) {
    super(`${file}: corrupt journal at byte offset ${offset}: ${detail}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// CRC-32 (IEEE, as zlib)

let crcTable: Uint32Array | null = null;

/** Table-driven CRC-32 (IEEE 802.3, reflected, as zlib's crc32); used when node:zlib has no crc32. */
export function crc32Portable(data: Uint8Array, value = 0): number {
  if (crcTable === null) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  const table = crcTable;
  let c = (value ^ 0xffffffff) >>> 0;
  for (let i = 0; i < data.length; i++) c = table[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const zlibCrc32 = (zlib as unknown as { crc32?: (data: Uint8Array, value?: number) => number }).crc32;

/** CRC-32 of `data`: node:zlib's (Node >= 20.15 / 22.2) when available, else the portable one. */
export const crc32: (data: Uint8Array) => number =
  typeof zlibCrc32 === 'function' ? (data) => zlibCrc32(data) : (data) => crc32Portable(data);

// ---------------------------------------------------------------------------------------------------------
// Format constants

export const JOURNAL_FILE = 'journal.dlog';
const TEMP_SUFFIX = '.tmp';
const MAGIC = Buffer.from('DRCHJRNL', 'latin1');
const FORMAT_VERSION = 2;
/** Older format versions `open` reads and migrates. */
const MIGRATED_FORMAT_VERSIONS: readonly number[] = [1];
const FILE_HEADER_BYTES = 16;
const FRAME_HEADER_BYTES = 8;
/** kind u8 + shardId u32 + viewId u32 + seq u64 + sender u32. */
export const LOG_BODY_HEADER_BYTES = 21;
const LOG_FRAME_OVERHEAD = FRAME_HEADER_BYTES + LOG_BODY_HEADER_BYTES;

export const DEFAULT_MAX_RECORD_BYTES = 8 << 20;
export const MAX_RECORD_BYTES_LIMIT = 1 << 30;
const MIN_RECORD_BYTES = 1024;
export const DEFAULT_COMPACT_DEAD_RECORDS = 10_000;
export const DEFAULT_COMPACT_DEAD_RATIO = 1;
/** Read-ahead when scanning the journal, and the largest span read at once when serving payloads. */
const READ_CHUNK_BYTES = 1 << 20;
/** Buffered output of a rewrite. */
const WRITE_CHUNK_BYTES = 1 << 20;

const U32_MAX = 0xffffffff;
const TWO_32 = 0x1_0000_0000;

const KIND = {
  log: 1,
  view: 2,
  trim: 3,
  viewIdSeen: 4,
  truncate: 5,
  shardState: 6,
  restartPromise: 7,
  restartAccept: 8,
  shardReset: 9,
  viewAccepted: 10,
  viewsDecided: 11,
  disk: 12,
} as const;
type KindName = keyof typeof KIND;
const KIND_NAMES: (KindName | undefined)[] = [];
for (const [name, code] of Object.entries(KIND)) KIND_NAMES[code] = name as KindName;

// ---------------------------------------------------------------------------------------------------------
// Options

/** The node:fs calls the store makes (inject a wrapper to count or fail them in tests). */
export type StorageFs = Pick<
  typeof nodeFs,
  | 'openSync'
  | 'closeSync'
  | 'readSync'
  | 'writeSync'
  | 'fsyncSync'
  | 'ftruncateSync'
  | 'fstatSync'
  | 'renameSync'
  | 'rmSync'
  | 'mkdirSync'
  | 'existsSync'
>;

export interface RecoveryInfo {
  droppedBytes: number;
  reason: string;
}

export interface LogStoreOptions {
  /** 'fsync': fsync once per `apply` batch. 'os': leave flushing to the OS (survives process crashes only). */
  fsync: 'fsync' | 'os';
  /** Largest record body in bytes (default 8 MiB, 1 KiB ..1 GiB). A log payload gets 21 bytes less. */
  maxRecordBytes?: number;
  /** Compact when the journal holds more than this many dead records (default 10 000) ... */
  compactDeadRecords?: number;
  /** ... and its dead bytes are at least this many times its live log bytes (default 1). */
  compactDeadRatio?: number;
  /** Told when open cut a torn tail off the journal. */
  onRecovery?: (info: RecoveryInfo) => void;
  /** File system calls (default node:fs). */
  fs?: StorageFs;
  /** Draws the disk id of a new store (default: a random integer in [1, 2^48)). */
  newDiskId?: () => number;
}

export interface LogStoreStats {
  /** Size of the journal file. */
  journalBytes: number;
  /** Records in the journal. */
  journalRecords: number;
  /** Records a compaction would write (live log records plus the control records of the state). */
  liveRecords: number;
  deadRecords: number;
  liveLogRecords: number;
  /** Bytes of the live log frames. */
  liveLogBytes: number;
  compactions: number;
  /** Error of the last automatic compaction that failed (the store stayed usable), if any. */
  lastCompactionError: string | null;
}

// ---------------------------------------------------------------------------------------------------------
// In-memory state (rebuilt by replaying the journal)

/** Index entry of a log record: where its frame sits in the journal. */
interface Entry {
  viewId: number;
  seq: number;
  sender: number;
  /** Offset of the frame in the journal. */
  offset: number;
  /** Payload bytes. */
  length: number;
}

/** A decoded journal record. */
type Op =
  | Exclude<PersistRecord, { kind: 'log' }>
  | { kind: 'log'; shardId: number; viewId: number; seq: number; sender: number; offset: number; length: number }
  | { kind: 'shardReset'; shardId: number }
  | { kind: 'disk'; diskId: number };

type ControlOp = Exclude<Op, { kind: 'log' }>;

function cmpEntry(e: Entry, v: Version): number {
  if (e.viewId !== v.viewId) return e.viewId < v.viewId ? -1 : 1;
  if (e.seq !== v.seq) return e.seq < v.seq ? -1 : 1;
  return 0;
}

function entryVersion(e: Entry): Version {
  return { viewId: e.viewId, seq: e.seq };
}

function logFrameBytes(e: Entry): number {
  return LOG_FRAME_OVERHEAD + e.length;
}

/** Number of entries in `entries[0, len)` with version <= v. */
function countThrough(entries: readonly Entry[], len: number, v: Version): number {
  let lo = 0;
  let hi = len;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cmpEntry(entries[mid]!, v) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

class State {
  readonly logs = new Map<number, Entry[]>();
  lastView: View | null = null;
  trims: SavedTrim[] = [];
  highestViewIdSeen = -1;
  restartPromised: Ballot | null = null;
  restartAccepted: { ballot: Ballot; plan: RestartDecision } | null = null;
  acceptedChange: AcceptedChange | null = null;
  /** Views installed or known decided, the RECENT_VIEWS_KEPT highest ids (see RestartReport.recentViews). */
  recentViews: View[] = [];
  /** This store's identity (0 until its disk record is read or written). */
  diskId = 0;
  readonly incompleteShards = new Set<number>();
  /** Records in the journal. */
  records = 0;
  liveLogRecords = 0;
  liveLogBytes = 0;

  /** Applies one journal record; returns an error message when the record breaks the log order. */
  apply(op: Op): string | null {
    this.records++;
    switch (op.kind) {
      case 'log': {
        let log = this.logs.get(op.shardId);
        if (!log) {
          log = [];
          this.logs.set(op.shardId, log);
        }
        const tail = log[log.length - 1];
        if (tail !== undefined && cmpEntry(tail, op) >= 0) {
          return `log record of shard ${op.shardId} with version ${op.viewId}:${op.seq} after tail ${tail.viewId}:${tail.seq}`;
        }
        const entry: Entry = { viewId: op.viewId, seq: op.seq, sender: op.sender, offset: op.offset, length: op.length };
        log.push(entry);
        this.liveLogRecords++;
        this.liveLogBytes += logFrameBytes(entry);
        return null;
      }
      case 'view':
        this.lastView = op.view;
        this.highestViewIdSeen = Math.max(this.highestViewIdSeen, op.view.viewId);
        this.recentViews = rememberViews(this.recentViews, [op.view]);
        return null;
      case 'viewsDecided':
        this.recentViews = rememberViews(this.recentViews, op.views);
        return null;
      case 'disk':
        this.diskId = op.diskId;
        return null;
      case 'trim': {
        const i = this.trims.findIndex((t) => t.viewId === op.trim.viewId);
        if (i >= 0) this.trims[i] = op.trim;
        else {
          this.trims.push(op.trim);
          this.trims.sort((a, b) => a.viewId - b.viewId);
        }
        return null;
      }
      case 'viewIdSeen':
        this.highestViewIdSeen = Math.max(this.highestViewIdSeen, op.viewId);
        return null;
      case 'truncate': {
        const log = this.logs.get(op.shardId);
        if (!log) return null;
        const keep = countThrough(log, log.length, op.after);
        this.dropEntries(log, keep);
        return null;
      }
      case 'shardState':
        if (op.complete) this.incompleteShards.delete(op.shardId);
        else this.incompleteShards.add(op.shardId);
        return null;
      case 'restartPromise':
        this.restartPromised = op.ballot;
        return null;
      case 'restartAccept':
        this.restartAccepted = { ballot: op.ballot, plan: op.plan };
        return null;
      case 'viewAccepted':
        this.acceptedChange = op.accepted;
        return null;
      case 'shardReset': {
        const log = this.logs.get(op.shardId);
        if (log) this.dropEntries(log, 0);
        else this.logs.set(op.shardId, []);
        return null;
      }
      default: {
        const never: never = op;
        throw new Error(`unknown op ${JSON.stringify(never)}`);
      }
    }
  }

  private dropEntries(log: Entry[], keep: number): void {
    for (let i = keep; i < log.length; i++) {
      this.liveLogRecords--;
      this.liveLogBytes -= logFrameBytes(log[i]!);
    }
    log.length = keep;
  }

  /** Control records a rewrite writes for this state, in order (log records follow, per shard). */
  controlOps(): ControlOp[] {
    const ops: ControlOp[] = [];
    if (this.diskId > 0) ops.push({ kind: 'disk', diskId: this.diskId });
    if (this.lastView !== null) ops.push({ kind: 'view', view: this.lastView });
    // after the view record, so that the kept list comes back exactly (a kept view wins over the last
    // view with the same id, and the highest ids are kept, as they were)
    if (this.recentViewsNeedRecord()) ops.push({ kind: 'viewsDecided', views: this.recentViews });
    if (this.highestViewIdSeen > (this.lastView?.viewId ?? -1)) ops.push({ kind: 'viewIdSeen', viewId: this.highestViewIdSeen });
    for (const trim of this.trims) ops.push({ kind: 'trim', trim });
    for (const shardId of [...this.incompleteShards].sort((a, b) => a - b)) ops.push({ kind: 'shardState', shardId, complete: false });
    if (this.restartPromised !== null) ops.push({ kind: 'restartPromise', ballot: this.restartPromised });
    if (this.restartAccepted !== null) ops.push({ kind: 'restartAccept', ...this.restartAccepted });
    if (this.liveAcceptedChange()) ops.push({ kind: 'viewAccepted', accepted: this.acceptedChange! });
    return ops;
  }

  /** Whether a rewrite needs a viewsDecided record for the recent views (more than the last view record gives). */
  private recentViewsNeedRecord(): boolean {
    return this.recentViews.length > 1 || (this.recentViews.length === 1 && this.recentViews[0] !== this.lastView);
  }

  /** An accepted view change not superseded by an installed view (only those matter to a restart). */
  liveAcceptedChange(): boolean {
    return this.acceptedChange !== null && this.acceptedChange.value.next.viewId > (this.lastView?.viewId ?? -1);
  }

  /** Records a rewrite of this state writes. */
  liveRecords(): number {
    let n = this.liveLogRecords + this.trims.length + this.incompleteShards.size;
    for (const log of this.logs.values()) if (log.length === 0) n++; // a shardReset keeps an empty log
    if (this.lastView !== null) n++;
    if (this.recentViewsNeedRecord()) n++;
    if (this.diskId > 0) n++;
    if (this.highestViewIdSeen > (this.lastView?.viewId ?? -1)) n++;
    if (this.restartPromised !== null) n++;
    if (this.restartAccepted !== null) n++;
    if (this.liveAcceptedChange()) n++;
    return n;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Encoding

function isU32(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= U32_MAX;
}

function isSafeInt(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n);
}

/** The shape a view record must have to be read back (the core wrote it; this guards against junk). */
function isViewShape(v: unknown): boolean {
  return isObject(v) && isSafeInt(v.viewId) && Array.isArray(v.members) && isObject(v.layout);
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function isVersion(x: unknown): x is Version {
  return isObject(x) && isSafeInt(x.viewId) && isSafeInt(x.seq);
}

function isBallot(x: unknown): x is Ballot {
  return isObject(x) && isSafeInt(x.round) && isSafeInt(x.nodeId);
}

function fmtVersion(v: Version): string {
  return `${v.viewId}:${v.seq}`;
}

function checkLogRecord(record: LogRecord, maxRecordBytes: number, what: string): void {
  const { shardId, version, sender, payload } = record;
  if (!isU32(shardId)) throw new StorageLimitError(`${what}: shard id ${String(shardId)} is not a u32`);
  if (!isObject(version) || !isU32(version.viewId)) {
    throw new StorageLimitError(`${what} in shard ${shardId}: view id ${String(version?.viewId)} is not a u32`);
  }
  if (!isSafeInt(version.seq) || version.seq < 0) {
    throw new StorageLimitError(`${what} in shard ${shardId}: seq ${String(version.seq)} is not an integer in [0, 2^53)`);
  }
  if (!isU32(sender)) throw new StorageLimitError(`${what} in shard ${shardId}: sender ${String(sender)} is not a u32`);
  if (!(payload instanceof Uint8Array)) throw new StorageError(`${what} in shard ${shardId}: payload is not a Uint8Array`);
  const bodyBytes = LOG_BODY_HEADER_BYTES + payload.length;
  if (bodyBytes > maxRecordBytes) {
    throw new StorageLimitError(
      `${what} in shard ${shardId} version ${fmtVersion(version)}: payload of ${payload.length} bytes makes a record of ${bodyBytes} bytes, over maxRecordBytes ${maxRecordBytes}`,
    );
  }
}

/** Writes a log record's body at buf[at ..]; returns the body length. */
function encodeLogBody(buf: Buffer, at: number, shardId: number, r: { version: Version; sender: number; payload: Uint8Array }): number {
  buf[at] = KIND.log;
  buf.writeUInt32LE(shardId, at + 1);
  buf.writeUInt32LE(r.version.viewId, at + 5);
  buf.writeUInt32LE(r.version.seq % TWO_32, at + 9);
  buf.writeUInt32LE(Math.floor(r.version.seq / TWO_32), at + 13);
  buf.writeUInt32LE(r.sender, at + 17);
  buf.set(r.payload, at + LOG_BODY_HEADER_BYTES);
  return LOG_BODY_HEADER_BYTES + r.payload.length;
}

/** A whole log frame for `r` in shard `shardId`. */
function logFrame(shardId: number, r: { version: Version; sender: number; payload: Uint8Array }): Buffer {
  const frame = Buffer.allocUnsafe(LOG_FRAME_OVERHEAD + r.payload.length);
  const len = encodeLogBody(frame, FRAME_HEADER_BYTES, shardId, r);
  sealFrame(frame, 0, len);
  return frame;
}

/** Fills in the frame header of the frame at buf[at ..] whose body (length `len`) is already written. */
function sealFrame(buf: Buffer, at: number, len: number): void {
  buf.writeUInt32LE(len, at);
  buf.writeUInt32LE(crc32(buf.subarray(at + FRAME_HEADER_BYTES, at + FRAME_HEADER_BYTES + len)), at + 4);
}

function controlBody(op: ControlOp): Buffer {
  let value: unknown;
  switch (op.kind) {
    case 'view':
      value = op.view;
      break;
    case 'trim':
      value = op.trim;
      break;
    case 'viewIdSeen':
      value = { viewId: op.viewId };
      break;
    case 'truncate':
      value = { shardId: op.shardId, after: op.after };
      break;
    case 'shardState':
      value = { shardId: op.shardId, complete: op.complete };
      break;
    case 'restartPromise':
      value = { ballot: op.ballot };
      break;
    case 'restartAccept':
      value = { ballot: op.ballot, plan: op.plan };
      break;
    case 'viewAccepted':
      value = op.accepted;
      break;
    case 'viewsDecided':
      value = { views: op.views };
      break;
    case 'disk':
      value = { diskId: op.diskId };
      break;
    case 'shardReset':
      value = { shardId: op.shardId };
      break;
    default: {
      const never: never = op;
      throw new StorageError(`unknown control record ${JSON.stringify(never)}`);
    }
  }
  const json = JSON.stringify(value);
  if (typeof json !== 'string') throw new StorageError(`${op.kind} record is not JSON-serialisable`);
  const body = Buffer.allocUnsafe(1 + Buffer.byteLength(json, 'utf8'));
  body[0] = KIND[op.kind];
  body.write(json, 1, 'utf8');
  return body;
}

function controlFrame(body: Buffer): Buffer {
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + body.length);
  body.copy(frame, FRAME_HEADER_BYTES);
  sealFrame(frame, 0, body.length);
  return frame;
}

/** Decodes a body whose checksum is right; returns an error message if it does not make sense. */
function decodeBody(body: Buffer, frameOffset: number): Op | string {
  const kind = KIND_NAMES[body[0]!];
  if (kind === undefined) return `unknown record kind ${body[0]}`;
  if (kind === 'log') {
    if (body.length < LOG_BODY_HEADER_BYTES) return `log record body of ${body.length} bytes is shorter than its header`;
    const hi = body.readUInt32LE(13);
    if (hi > 0x1fffff) return 'log record seq is not below 2^53';
    return {
      kind,
      shardId: body.readUInt32LE(1),
      viewId: body.readUInt32LE(5),
      seq: hi * TWO_32 + body.readUInt32LE(9),
      sender: body.readUInt32LE(17),
      offset: frameOffset,
      length: body.length - LOG_BODY_HEADER_BYTES,
    };
  }
  let v: unknown;
  try {
    v = JSON.parse(body.toString('utf8', 1));
  } catch (e) {
    return `${kind} record is not valid JSON (${(e as Error).message})`;
  }
  if (!isObject(v)) return `${kind} record is not a JSON object`;
  const bad = `${kind} record has an unexpected shape`;
  switch (kind) {
    case 'view':
      return isViewShape(v) ? { kind, view: v as unknown as View } : bad;
    case 'viewsDecided':
      return Array.isArray(v.views) && v.views.every(isViewShape) ? { kind, views: v.views as unknown as View[] } : bad;
    case 'disk':
      return isSafeInt(v.diskId) && v.diskId > 0 ? { kind, diskId: v.diskId } : bad;
    case 'trim':
      return isSafeInt(v.viewId) && Array.isArray(v.trims) && Array.isArray(v.lastVersions) ? { kind, trim: v as unknown as SavedTrim } : bad;
    case 'viewIdSeen':
      return isSafeInt(v.viewId) ? { kind, viewId: v.viewId } : bad;
    case 'truncate':
      return isU32(v.shardId) && isVersion(v.after) ? { kind, shardId: v.shardId, after: v.after } : bad;
    case 'shardState':
      return isU32(v.shardId) && typeof v.complete === 'boolean' ? { kind, shardId: v.shardId, complete: v.complete } : bad;
    case 'restartPromise':
      return isBallot(v.ballot) ? { kind, ballot: v.ballot } : bad;
    case 'restartAccept':
      return isBallot(v.ballot) && isObject(v.plan) ? { kind, ballot: v.ballot, plan: v.plan as unknown as RestartDecision } : bad;
    case 'shardReset':
      return isU32(v.shardId) ? { kind, shardId: v.shardId } : bad;
    case 'viewAccepted':
      return isSafeInt(v.ballot) && isObject(v.value) && isObject(v.value.next) && isSafeInt(v.value.next.viewId) && isSafeInt(v.value.fromViewId)
        ? { kind, accepted: v as unknown as AcceptedChange } : bad;
    default: {
      const never: never = kind;
      return `unknown record kind ${String(never)}`;
    }
  }
}

function fileHeader(): Buffer {
  const h = Buffer.alloc(FILE_HEADER_BYTES);
  MAGIC.copy(h, 0);
  h.writeUInt32LE(FORMAT_VERSION, 8);
  h.writeUInt32LE(crc32(h.subarray(0, 12)), 12);
  return h;
}

// ---------------------------------------------------------------------------------------------------------
// File helpers

function readFully(fs: StorageFs, fd: number, buf: Uint8Array, bufOffset: number, length: number, position: number): void {
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, buf, bufOffset + done, length - done, position + done);
    if (n === 0) throw new StorageError(`unexpected end of file reading ${length} bytes at offset ${position}`);
    done += n;
  }
}

function writeFully(fs: StorageFs, fd: number, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.writeSync(fd, buf, done, buf.length - done, position + done);
    if (n <= 0) throw new StorageError(`write of ${buf.length} bytes at offset ${position} made no progress`);
    done += n;
  }
}

function fsyncDir(fs: StorageFs, dir: string): void {
  if (process.platform === 'win32') return; // directories cannot be fsynced there; renames are durable
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Sequential reads through a read-ahead window. */
class FileReader {
  private buf: Buffer = Buffer.alloc(0);
  private start = 0;
  constructor(
    private readonly fs: StorageFs,
    private readonly fd: number,
    readonly size: number,
  ) {}

  /** Bytes [pos, pos + n), which must lie inside the file. The view is valid until the next call. */
  get(pos: number, n: number): Buffer {
    if (pos >= this.start && pos + n <= this.start + this.buf.length) return this.buf.subarray(pos - this.start, pos - this.start + n);
    const want = Math.min(this.size - pos, Math.max(n, READ_CHUNK_BYTES));
    this.buf = Buffer.allocUnsafe(want);
    readFully(this.fs, this.fd, this.buf, 0, want, pos);
    this.start = pos;
    return this.buf.subarray(0, n);
  }
}

type FrameCheck = { ok: true; len: number; body: Buffer } | { ok: false; reason: string };

function checkFrame(r: FileReader, pos: number, maxRecordBytes: number): FrameCheck {
  if (pos + FRAME_HEADER_BYTES > r.size) return { ok: false, reason: `incomplete frame header (${r.size - pos} of ${FRAME_HEADER_BYTES} bytes)` };
  const header = r.get(pos, FRAME_HEADER_BYTES);
  const len = header.readUInt32LE(0);
  const crc = header.readUInt32LE(4);
  if (len < 1 || len > maxRecordBytes) return { ok: false, reason: `record length ${len} outside [1, ${maxRecordBytes}]` };
  const end = pos + FRAME_HEADER_BYTES + len;
  if (end > r.size) return { ok: false, reason: `incomplete record (${len} body bytes announced, ${r.size - pos - FRAME_HEADER_BYTES} present)` };
  const body = r.get(pos + FRAME_HEADER_BYTES, len);
  if (crc32(body) !== crc) return { ok: false, reason: 'checksum mismatch' };
  return { ok: true, len, body };
}

/**
 * Where an intact frame of a known kind starts after the bad frame at `from`: first where the bad frame's
 * own length says the next one starts, then at every offset in (from, from + 8 + maxRecordBytes], which
 * covers a damaged length field. Null when there is none (a torn tail).
 */
function intactFrameAfter(fs: StorageFs, fd: number, size: number, from: number, maxRecordBytes: number): number | null {
  const heads = new FileReader(fs, fd, size);
  const bodies = new FileReader(fs, fd, size);
  const candidate = (p: number): boolean => {
    if (p + FRAME_HEADER_BYTES + 1 > size) return false;
    const head = heads.get(p, FRAME_HEADER_BYTES + 1);
    const len = head.readUInt32LE(0);
    if (len < 1 || len > maxRecordBytes || p + FRAME_HEADER_BYTES + len > size) return false;
    if (KIND_NAMES[head[FRAME_HEADER_BYTES]!] === undefined) return false;
    return checkFrame(bodies, p, maxRecordBytes).ok;
  };
  if (from + FRAME_HEADER_BYTES <= size) {
    const len = heads.get(from, 4).readUInt32LE(0);
    const natural = from + FRAME_HEADER_BYTES + len;
    if (len >= 1 && len <= maxRecordBytes && candidate(natural)) return natural;
  }
  const last = Math.min(size - FRAME_HEADER_BYTES - 1, from + FRAME_HEADER_BYTES + maxRecordBytes);
  for (let p = from + 1; p <= last; p++) if (candidate(p)) return p;
  return null;
}

/** Buffered sequential output of a rewrite. */
class RewriteWriter {
  private readonly chunk = Buffer.allocUnsafe(WRITE_CHUNK_BYTES);
  private used = 0;
  /** File offset of the next byte appended. */
  pos = 0;
  private flushed = 0;
  constructor(
    private readonly fs: StorageFs,
    private readonly fd: number,
  ) {}

  append(bytes: Uint8Array): void {
    if (this.used + bytes.length > this.chunk.length) this.flush();
    if (bytes.length > this.chunk.length) {
      writeFully(this.fs, this.fd, bytes, this.flushed);
      this.flushed += bytes.length;
    } else {
      this.chunk.set(bytes, this.used);
      this.used += bytes.length;
    }
    this.pos += bytes.length;
  }

  flush(): void {
    if (this.used === 0) return;
    writeFully(this.fs, this.fd, this.chunk.subarray(0, this.used), this.flushed);
    this.flushed += this.used;
    this.used = 0;
  }
}

// ---------------------------------------------------------------------------------------------------------
// The store

/** A record of a batch, encoded or about to be. */
type Staged = { kind: 'log'; record: LogRecord } | { kind: 'control'; body: Buffer };

/** Per shard touched by a batch: the shard's log as the batch sees it (a prefix of the index + new records). */
interface Overlay {
  shardId: number;
  exists: boolean;
  base: readonly Entry[];
  baseLen: number;
  added: LogRecord[];
}

export class LogStore {
  readonly dir: string;
  /** Path of the journal file. */
  readonly file: string;
  private readonly fs: StorageFs;
  private readonly policy: 'fsync' | 'os';
  private readonly maxRecordBytes: number;
  private readonly compactDeadRecords: number;
  private readonly compactDeadRatio: number;
  private fd: number;
  private size: number;
  private state: State;
  private closed = false;
  /** Set when a write or fsync failed: the store must not be used any more. */
  private broken: Error | null = null;
  private compactions = 0;
  private lastCompactionError: string | null = null;
  /** After a failed automatic compaction, wait until this many dead records before trying again. */
  private compactRetryAt = 0;

  private constructor(dir: string, options: LogStoreOptions, fs: StorageFs, fd: number, size: number, state: State) {
    this.dir = dir;
    this.file = path.join(dir, JOURNAL_FILE);
    this.fs = fs;
    this.policy = options.fsync;
    this.maxRecordBytes = options.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
    this.compactDeadRecords = options.compactDeadRecords ?? DEFAULT_COMPACT_DEAD_RECORDS;
    this.compactDeadRatio = options.compactDeadRatio ?? DEFAULT_COMPACT_DEAD_RATIO;
    this.fd = fd;
    this.size = size;
    this.state = state;
  }

  /** Opens (creating it if needed) the store in `dir` and reads the journal back, cutting a torn tail. */
  static open(dir: string, options: LogStoreOptions): LogStore {
    const fs = options.fs ?? nodeFs;
    if (options.fsync !== 'fsync' && options.fsync !== 'os') throw new StorageError(`fsync policy must be 'fsync' or 'os', not ${String(options.fsync)}`);
    const maxRecordBytes = options.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
    if (!Number.isInteger(maxRecordBytes) || maxRecordBytes < MIN_RECORD_BYTES || maxRecordBytes > MAX_RECORD_BYTES_LIMIT) {
      throw new StorageLimitError(`maxRecordBytes must be an integer in [${MIN_RECORD_BYTES}, ${MAX_RECORD_BYTES_LIMIT}], not ${maxRecordBytes}`);
    }
    const deadRecords = options.compactDeadRecords ?? DEFAULT_COMPACT_DEAD_RECORDS;
    const deadRatio = options.compactDeadRatio ?? DEFAULT_COMPACT_DEAD_RATIO;
    if (!Number.isInteger(deadRecords) || deadRecords < 0) throw new StorageError(`compactDeadRecords must be a non-negative integer, not ${deadRecords}`);
    if (!(deadRatio >= 0) || !Number.isFinite(deadRatio)) throw new StorageError(`compactDeadRatio must be a non-negative number, not ${deadRatio}`);

    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, JOURNAL_FILE);
    // A leftover temp file is a rewrite that never reached its rename: the journal (old or absent) is current.
    fs.rmSync(file + TEMP_SUFFIX, { force: true });
    if (!fs.existsSync(file)) {
      const tmp = file + TEMP_SUFFIX;
      const fd = fs.openSync(tmp, 'w');
      try {
        writeFully(fs, fd, fileHeader(), 0);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, file);
      fsyncDir(fs, dir);
    }

    const fd = fs.openSync(file, 'r+');
    let store: LogStore;
    let version: number;
    try {
      const replayed = LogStore.replay(fs, fd, file, maxRecordBytes, options.onRecovery);
      version = replayed.version;
      store = new LogStore(dir, options, fs, fd, replayed.size, replayed.state);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    // A new store gets its disk id, and an older format version is migrated at once (the rewrite writes
    // the current header, and a disk id: a store from before disk ids gets one now).
    if (version !== FORMAT_VERSION || store.state.diskId === 0) {
      try {
        if (store.state.diskId === 0) {
          const id = (options.newDiskId ?? (() => randomInt(1, 2 ** 48)))();
          if (!Number.isSafeInteger(id) || id <= 0) throw new StorageError(`newDiskId returned ${id}, not a positive safe integer`);
          store.state.diskId = id;
        }
        store.rewrite(null);
      } catch (e) {
        try {
          store.close();
        } catch {
          // already failing
        }
        throw e;
      }
    }
    return store;
  }

  private static replay(
    fs: StorageFs,
    fd: number,
    file: string,
    maxRecordBytes: number,
    onRecovery: ((info: RecoveryInfo) => void) | undefined,
  ): { state: State; size: number; version: number } {
    const size = fs.fstatSync(fd).size;
    const reader = new FileReader(fs, fd, size);
    if (size < FILE_HEADER_BYTES) throw new CorruptionError(file, 0, `file of ${size} bytes is shorter than the ${FILE_HEADER_BYTES}-byte header`);
    const header = reader.get(0, FILE_HEADER_BYTES);
    if (!header.subarray(0, 8).equals(MAGIC)) throw new CorruptionError(file, 0, 'not a journal (bad magic)');
    if (header.readUInt32LE(12) !== crc32(header.subarray(0, 12))) throw new CorruptionError(file, 0, 'header checksum mismatch');
    const version = header.readUInt32LE(8);
    if (version !== FORMAT_VERSION && !MIGRATED_FORMAT_VERSIONS.includes(version)) {
      throw new CorruptionError(file, 8, `unsupported format version ${version} (this build reads ${[...MIGRATED_FORMAT_VERSIONS, FORMAT_VERSION].join(' and ')})`);
    }

    const state = new State();
    let pos = FILE_HEADER_BYTES;
    while (pos < size) {
      // Reads accept any length up to the hard limit: lowering maxRecordBytes must not turn a stored
      // record into a "torn tail". The corruption search below uses the configured bound.
      const frame = checkFrame(reader, pos, MAX_RECORD_BYTES_LIMIT);
      if (!frame.ok) {
        const next = intactFrameAfter(fs, fd, size, pos, maxRecordBytes);
        if (next !== null) {
          throw new CorruptionError(file, pos, `${frame.reason}, and an intact record follows at offset ${next}: not a torn tail, refusing to drop acknowledged data`);
        }
        const droppedBytes = size - pos;
        fs.ftruncateSync(fd, pos);
        fs.fsyncSync(fd);
        onRecovery?.({ droppedBytes, reason: `torn tail at byte offset ${pos} of ${file}: ${frame.reason}; cut ${droppedBytes} bytes` });
        return { state, size: pos, version };
      }
      const op = decodeBody(frame.body, pos);
      if (typeof op === 'string') throw new CorruptionError(file, pos, op);
      const err = state.apply(op);
      if (err !== null) throw new CorruptionError(file, pos, err);
      pos += FRAME_HEADER_BYTES + frame.len;
    }
    return { state, size, version };
  }

  // -------------------------------------------------------------------------------------------------------
  // Writing

  /**
   * Makes one Ready's records durable, as one batch: validated as a whole (nothing is written if one is
   * refused), written at the journal's end, then fsynced once (policy 'fsync'). Records that change
   * nothing (an identical re-write, a truncate that cuts nothing) are not written; a batch of only such
   * records writes and syncs nothing.
   */
  apply(records: readonly PersistRecord[]): void {
    this.usable();
    const staged: Staged[] = [];
    const overlays = new Map<number, Overlay>();
    const overlay = (shardId: number): Overlay => {
      let ov = overlays.get(shardId);
      if (!ov) {
        const base = this.state.logs.get(shardId);
        ov = { shardId, exists: base !== undefined, base: base ?? [], baseLen: base?.length ?? 0, added: [] };
        overlays.set(shardId, ov);
      }
      return ov;
    };
    const control = (op: ControlOp): void => {
      const body = controlBody(op);
      if (body.length > this.maxRecordBytes) {
        throw new StorageLimitError(`${op.kind} record of ${body.length} bytes is over maxRecordBytes ${this.maxRecordBytes}`);
      }
      staged.push({ kind: 'control', body });
    };

    for (const rec of records) {
      switch (rec.kind) {
        case 'log': {
          const r = rec.record;
          checkLogRecord(r, this.maxRecordBytes, 'log record');
          const ov = overlay(r.shardId);
          const tail = ov.added.length > 0 ? ov.added[ov.added.length - 1]!.version : ov.baseLen > 0 ? entryVersion(ov.base[ov.baseLen - 1]!) : null;
          if (tail !== null && compareVersions(r.version, tail) <= 0) {
            const same = this.findInOverlay(ov, r.version);
            if (same && same.sender === r.sender && Buffer.from(same.payload.buffer, same.payload.byteOffset, same.payload.length).equals(r.payload)) {
              continue; // identical re-write: a no-op
            }
            throw new StorageError(
              `log append out of order in shard ${r.shardId}: version ${fmtVersion(r.version)} after tail ${fmtVersion(tail)}` +
                (same ? ' (a different record already has that version)' : ''),
            );
          }
          ov.exists = true;
          ov.added.push(r);
          staged.push({ kind: 'log', record: r });
          break;
        }
        case 'truncate': {
          if (!isU32(rec.shardId) || !isVersion(rec.after)) throw new StorageError(`truncate record has a bad shard id or version: ${JSON.stringify(rec)}`);
          const ov = overlay(rec.shardId);
          if (!ov.exists) break; // nothing held for that shard: nothing to cut
          const addedBefore = ov.added.length;
          const baseBefore = ov.baseLen;
          while (ov.added.length > 0 && compareVersions(ov.added[ov.added.length - 1]!.version, rec.after) > 0) ov.added.pop();
          if (ov.added.length === 0) ov.baseLen = countThrough(ov.base, ov.baseLen, rec.after);
          if (ov.added.length === addedBefore && ov.baseLen === baseBefore) break; // cuts nothing
          control({ kind: 'truncate', shardId: rec.shardId, after: { viewId: rec.after.viewId, seq: rec.after.seq } });
          break;
        }
        case 'view':
          if (!isObject(rec.view) || !isSafeInt(rec.view.viewId)) throw new StorageError('view record without an integer viewId');
          control({ kind: 'view', view: rec.view });
          break;
        case 'trim':
          if (!isObject(rec.trim) || !isSafeInt(rec.trim.viewId)) throw new StorageError('trim record without an integer viewId');
          control({ kind: 'trim', trim: rec.trim });
          break;
        case 'viewIdSeen':
          if (!isSafeInt(rec.viewId)) throw new StorageError(`viewIdSeen record with a non-integer view id ${String(rec.viewId)}`);
          control({ kind: 'viewIdSeen', viewId: rec.viewId });
          break;
        case 'shardState':
          if (!isU32(rec.shardId)) throw new StorageLimitError(`shardState record: shard id ${String(rec.shardId)} is not a u32`);
          control({ kind: 'shardState', shardId: rec.shardId, complete: Boolean(rec.complete) });
          break;
        case 'restartPromise':
          if (!isBallot(rec.ballot)) throw new StorageError('restartPromise record without an integer ballot');
          control({ kind: 'restartPromise', ballot: rec.ballot });
          break;
        case 'restartAccept':
          if (!isBallot(rec.ballot) || !isObject(rec.plan)) throw new StorageError('restartAccept record without an integer ballot and a plan');
          control({ kind: 'restartAccept', ballot: rec.ballot, plan: rec.plan });
          break;
        case 'viewAccepted':
          if (!isObject(rec.accepted) || !isSafeInt(rec.accepted.ballot) || !isObject(rec.accepted.value)) throw new StorageError('viewAccepted record without a value and an integer ballot');
          control({ kind: 'viewAccepted', accepted: rec.accepted });
          break;
        case 'viewsDecided':
          if (!Array.isArray(rec.views) || !rec.views.every(isViewShape)) throw new StorageError('viewsDecided record without a list of views with integer viewIds');
          if (rec.views.length > 0) control({ kind: 'viewsDecided', views: rec.views });
          break;
        default: {
          const never: never = rec;
          throw new StorageError(`unknown persist record ${JSON.stringify(never)}`);
        }
      }
    }
    if (staged.length === 0) return;

    // Encode the batch into one buffer.
    let total = 0;
    for (const s of staged) total += FRAME_HEADER_BYTES + (s.kind === 'log' ? LOG_BODY_HEADER_BYTES + s.record.payload.length : s.body.length);
    const buf = Buffer.allocUnsafe(total);
    const offsets: number[] = [];
    let at = 0;
    for (const s of staged) {
      offsets.push(this.size + at);
      let len: number;
      if (s.kind === 'log') len = encodeLogBody(buf, at + FRAME_HEADER_BYTES, s.record.shardId, s.record);
      else {
        s.body.copy(buf, at + FRAME_HEADER_BYTES);
        len = s.body.length;
      }
      sealFrame(buf, at, len);
      at += FRAME_HEADER_BYTES + len;
    }

    // Write, sync, then take the records into the in-memory state exactly as a replay would.
    try {
      writeFully(this.fs, this.fd, buf, this.size);
      // Under 'os' a machine crash may lose recent log records (documented), never membership or
      // restart-consensus state: a lost acceptance or promise could let the group decide twice. Batches
      // that carry any are synced whatever the policy (they are rare: view changes and restarts).
      if (this.policy === 'fsync' || staged.some((x) => x.kind !== 'log')) this.fs.fsyncSync(this.fd);
    } catch (e) {
      try {
        this.fs.ftruncateSync(this.fd, this.size);
      } catch {
        // the store is marked unusable below either way
      }
      throw this.fail(`journal write of ${total} bytes at offset ${this.size} failed`, e);
    }
    this.size += total;
    at = 0;
    for (let i = 0; i < staged.length; i++) {
      const s = staged[i]!;
      const op: Op | string =
        s.kind === 'log'
          ? {
              kind: 'log',
              shardId: s.record.shardId,
              viewId: s.record.version.viewId,
              seq: s.record.version.seq,
              sender: s.record.sender,
              offset: offsets[i]!,
              length: s.record.payload.length,
            }
          : decodeBody(s.body, offsets[i]!);
      const err = typeof op === 'string' ? op : this.state.apply(op);
      if (err !== null) throw this.fail('internal error applying a written batch', new Error(err));
    }
    this.maybeCompact();
  }

  /**
   * State transfer, receiving side: the shard's log becomes exactly `records` (sorted by version),
   * atomically: the journal is rewritten with the new log (temp file, fsync, rename, fsync of the directory).
   */
  importShard(shardId: number, records: readonly LogRecord[]): void {
    this.usable();
    if (!isU32(shardId)) throw new StorageLimitError(`importShard: shard id ${String(shardId)} is not a u32`);
    const sorted = [...records];
    for (const r of sorted) {
      checkLogRecord(r, this.maxRecordBytes, 'imported record');
      if (r.shardId !== shardId) throw new StorageError(`state transfer of shard ${shardId} contains a record of shard ${r.shardId}`);
    }
    sorted.sort((a, b) => compareVersions(a.version, b.version));
    for (let i = 1; i < sorted.length; i++) {
      if (compareVersions(sorted[i - 1]!.version, sorted[i]!.version) === 0) {
        throw new StorageError(`state transfer of shard ${shardId} has two records with version ${fmtVersion(sorted[i]!.version)}`);
      }
    }
    this.rewrite({ shardId, records: sorted });
  }

  /** Rewrites the journal with only the live state (also done automatically, see the options). */
  compact(): void {
    this.usable();
    this.rewrite(null);
  }

  private maybeCompact(): void {
    const dead = this.state.records - this.state.liveRecords();
    if (dead <= this.compactDeadRecords || dead < this.compactRetryAt) return;
    const deadBytes = this.size - FILE_HEADER_BYTES - this.state.liveLogBytes;
    if (deadBytes < this.compactDeadRatio * this.state.liveLogBytes) return;
    try {
      this.rewrite(null);
      this.compactRetryAt = 0;
    } catch (e) {
      // The batch is durable; a failed rewrite before its rename leaves the old journal in place. If it
      // failed after the rename, the store is marked broken and the next call throws.
      this.lastCompactionError = (e as Error).message;
      this.compactRetryAt = dead * 2;
    }
  }

  private rewrite(replace: { shardId: number; records: readonly LogRecord[] } | null): void {
    const fs = this.fs;
    const tmp = this.file + TEMP_SUFFIX;
    const next = new State();
    let tfd: number | null = fs.openSync(tmp, 'w');
    try {
      const w = new RewriteWriter(fs, tfd);
      w.append(fileHeader());
      for (const op of this.state.controlOps()) {
        const frame = controlFrame(controlBody(op));
        const decoded = decodeBody(frame.subarray(FRAME_HEADER_BYTES), w.pos);
        if (typeof decoded === 'string') throw new StorageError(`internal error in rewrite: ${decoded}`);
        next.apply(decoded);
        w.append(frame);
      }
      const shardIds = new Set(this.state.logs.keys());
      if (replace) shardIds.add(replace.shardId);
      for (const shardId of [...shardIds].sort((a, b) => a - b)) {
        const count = replace && replace.shardId === shardId ? replace.records.length : this.state.logs.get(shardId)!.length;
        if (count === 0) {
          // an empty log is still held (tail VERSION_NONE); a non-empty one is created by its first record
          next.apply({ kind: 'shardReset', shardId });
          w.append(controlFrame(controlBody({ kind: 'shardReset', shardId })));
        }
        if (replace && replace.shardId === shardId) {
          for (const r of replace.records) {
            const frame = logFrame(shardId, r);
            next.apply({ kind: 'log', shardId, viewId: r.version.viewId, seq: r.version.seq, sender: r.sender, offset: w.pos, length: r.payload.length });
            w.append(frame);
          }
        } else {
          const entries = this.state.logs.get(shardId)!;
          this.readFrames(shardId, entries, 0, entries.length, (e, frame) => {
            next.apply({ kind: 'log', shardId, viewId: e.viewId, seq: e.seq, sender: e.sender, offset: w.pos, length: e.length });
            w.append(frame);
          });
        }
      }
      w.flush();
      fs.fsyncSync(tfd);
      fs.closeSync(tfd);
      tfd = null;
      fs.renameSync(tmp, this.file);
    } catch (e) {
      if (tfd !== null) {
        try {
          fs.closeSync(tfd);
        } catch {
          // already failing
        }
      }
      try {
        fs.rmSync(tmp, { force: true });
      } catch {
        // a leftover temp file is removed by the next open
      }
      throw e;
    }
    // Committed: the journal now is the rewritten file.
    try {
      fsyncDir(fs, this.dir);
      fs.closeSync(this.fd);
      this.fd = fs.openSync(this.file, 'r+');
      this.size = fs.fstatSync(this.fd).size;
    } catch (e) {
      throw this.fail('journal rewrite renamed but not made durable', e);
    }
    this.state = next;
    this.compactions++;
  }

  // -------------------------------------------------------------------------------------------------------
  // Reading

  /** This store's identity (ReplicaConfig.diskId): drawn when the store was created, never changes. */
  get diskId(): number {
    return this.state.diskId;
  }

  /** What a restarted node passes as `{kind: 'restart', saved}`; null when it never saved a view. */
  savedState(): SavedState | null {
    this.usable();
    const s = this.state;
    return savedStateFrom(structuredClone({
      lastView: s.lastView, trims: s.trims, highestViewIdSeen: s.highestViewIdSeen, logTails: this.logTails(),
      restartPromised: s.restartPromised, restartAccepted: s.restartAccepted,
      incompleteShards: [...s.incompleteShards], acceptedChange: s.acceptedChange, recentViews: s.recentViews,
    }));
  }

  /** Per shard this store holds a log for (possibly empty): the newest version in it. */
  logTails(): { shardId: number; version: Version }[] {
    this.usable();
    return this.shardIds().map((shardId) => {
      const log = this.state.logs.get(shardId)!;
      const tail = log[log.length - 1];
      return { shardId, version: tail ? entryVersion(tail) : { ...VERSION_NONE } };
    });
  }

  /** Shards this store holds a log for (possibly empty), ascending. */
  shardIds(): number[] {
    this.usable();
    return [...this.state.logs.keys()].sort((a, b) => a - b);
  }

  hasLog(shardId: number): boolean {
    this.usable();
    return this.state.logs.has(shardId);
  }

  /** The shard's records (read back from the journal, checksums verified); empty when none. */
  log(shardId: number): LogRecord[] {
    this.usable();
    const entries = this.state.logs.get(shardId) ?? [];
    return this.readRecords(shardId, entries, entries.length);
  }

  /** State transfer, serving side: the shard's records up to and including `through`. */
  exportShard(shardId: number, through: Version): LogRecord[] {
    this.usable();
    const entries = this.state.logs.get(shardId) ?? [];
    return this.readRecords(shardId, entries, countThrough(entries, entries.length, through));
  }

  stats(): LogStoreStats {
    const s = this.state;
    const live = s.liveRecords();
    return {
      journalBytes: this.size,
      journalRecords: s.records,
      liveRecords: live,
      // never negative: a rewrite can take more records than the journal holds (views written out of id
      // order take a viewsDecided and a viewIdSeen record beside the last view where the journal had two)
      deadRecords: Math.max(0, s.records - live),
      liveLogRecords: s.liveLogRecords,
      liveLogBytes: s.liveLogBytes,
      compactions: this.compactions,
      lastCompactionError: this.lastCompactionError,
    };
  }

  /** Closes the journal; the store cannot be used afterwards. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.fs.closeSync(this.fd);
  }

  private readRecords(shardId: number, entries: readonly Entry[], count: number): LogRecord[] {
    const out: LogRecord[] = [];
    this.readFrames(shardId, entries, 0, count, (e, frame) => {
      out.push({
        shardId,
        version: entryVersion(e),
        sender: e.sender,
        payload: new Uint8Array(frame.subarray(LOG_FRAME_OVERHEAD)),
      });
    });
    return out;
  }

  /**
   * Reads the frames of entries[from, to), coalescing nearby frames into one read, verifies each frame
   * (checksum, and that it is the indexed record), and hands it over (the view is valid during the call).
   */
  private readFrames(shardId: number, entries: readonly Entry[], from: number, to: number, each: (e: Entry, frame: Buffer) => void): void {
    let i = from;
    while (i < to) {
      const first = entries[i]!;
      let j = i + 1;
      let end = first.offset + logFrameBytes(first);
      while (j < to) {
        const e = entries[j]!;
        const eEnd = e.offset + logFrameBytes(e);
        if (e.offset < end || e.offset - end > 64 * 1024 || eEnd - first.offset > READ_CHUNK_BYTES) break;
        end = eEnd;
        j++;
      }
      const span = Buffer.allocUnsafe(end - first.offset);
      readFully(this.fs, this.fd, span, 0, span.length, first.offset);
      for (let k = i; k < j; k++) {
        const e = entries[k]!;
        const frame = span.subarray(e.offset - first.offset, e.offset - first.offset + logFrameBytes(e));
        this.verifyFrame(shardId, e, frame);
        each(e, frame);
      }
      i = j;
    }
  }

  private verifyFrame(shardId: number, e: Entry, frame: Buffer): void {
    const len = frame.readUInt32LE(0);
    const body = frame.subarray(FRAME_HEADER_BYTES);
    if (len !== body.length || frame.readUInt32LE(4) !== crc32(body)) {
      throw new CorruptionError(this.file, e.offset, `log record of shard ${shardId} version ${e.viewId}:${e.seq} fails its checksum on read`);
    }
    const op = decodeBody(body, e.offset);
    if (typeof op === 'string' || op.kind !== 'log' || op.shardId !== shardId || op.viewId !== e.viewId || op.seq !== e.seq || op.sender !== e.sender) {
      throw new CorruptionError(this.file, e.offset, `record read back is not the indexed log record of shard ${shardId} version ${e.viewId}:${e.seq}`);
    }
  }

  /** The record with version `v` in the shard's log as the batch sees it. */
  private findInOverlay(ov: Overlay, v: Version): { sender: number; payload: Uint8Array } | null {
    for (const r of ov.added) if (compareVersions(r.version, v) === 0) return r;
    const k = countThrough(ov.base, ov.baseLen, v);
    const e = k > 0 ? ov.base[k - 1]! : undefined;
    if (e === undefined || cmpEntry(e, v) !== 0) return null;
    const frame = Buffer.allocUnsafe(logFrameBytes(e));
    readFully(this.fs, this.fd, frame, 0, frame.length, e.offset);
    this.verifyFrame(ov.shardId, e, frame);
    return { sender: e.sender, payload: frame.subarray(LOG_FRAME_OVERHEAD) };
  }

  private usable(): void {
    if (this.closed) throw new StorageError(`log store ${this.dir} is closed`);
    if (this.broken) throw new StorageError(`log store ${this.dir} is unusable after an I/O failure (${this.broken.message}); reopen it`);
  }

  private fail(what: string, cause: unknown): StorageError {
    const err = new StorageError(`${this.file}: ${what}: ${(cause as Error)?.message ?? String(cause)}; the store is now unusable, reopen it`, { cause });
    this.broken = err;
    return err;
  }
}
