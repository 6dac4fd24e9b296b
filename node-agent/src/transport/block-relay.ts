// Large-message multicast over the binomial pipeline, as Derecho's RDMC does it: the origin cuts an
// encoded frame into blocks and every receiver relays the blocks it receives to other receivers, so the
// origin sends each block about once instead of once per receiver.
//
// Deterministic and I/O-free (no timers, no sockets): the transport feeds it blocks and sends what it
// returns.
//
//  - Origin: `start(receivers, frame, messageId)` cuts `frame` into blocksFor(frame bytes, blockBytes)
//    blocks of equal size (the last one shorter): blockBytes of a message is derived from its totalBytes
//    and blockCount, ceil(totalBytes / blockCount) <= the origin's blockBytes, so every receiver can
//    check every block's size. Rank 0 is the origin, ranks 1.. are the receivers in the given order; the
//    `members` of each block carry that order. It returns the origin's sends in schedule step order.
//  - Receiver: `receive(block)` validates the block, copies it into the assembly of (origin, messageId)
//    and returns the sends the schedule gives its rank for THIS block (in step order). Forwarding on
//    receipt is enough: in the schedule a rank only forwards blocks it received before, and receives
//    each block exactly once, so it never has to hold a send back. Blocks of one link may arrive in any
//    order relative to other links; the transport keeps each link FIFO but nothing here depends on it.
//  - A receiver whose rank the schedule has receive a block from rank r accepts that block only from
//    members[r]: a wrong `from` is refused.
//  - Bounds: at most assembliesMax partial messages and assemblyBytesMax bytes of them (a new message
//    beyond them is refused with an error, but its blocks are still relayed); a schedule of at most
//    blockTransfersMax transfers ((members - 1) * blocks); at most schedulesCachedMax compiled schedules
//    (per member count and block count, least recently used out).
//  - `forget(origin)` (the origin failed) and `dropStalled()` (called periodically by the transport:
//    a block was lost, e.g. a relay failed or a queue was full) drop partial assemblies. Blocks of a
//    dropped message that arrive later are still relayed (downstream ranks may yet complete it) but not
//    assembled; that memory of dropped messages is bounded too (closedKeysMax).

import { binomialPipelineSchedule, blocksFor, scheduleFor } from '../core/pipeline.ts';
import type { NodeId } from '../core/types.ts';
import type { BlockFrame } from './codec.ts';
import { u32Max } from './codec.ts';

export interface BlockRelayOptions {
  /** This node. */
  me: NodeId;
  /** Largest block this node cuts when it originates a message, bytes (blocks of a message are equal). */
  blockBytes: number;
  /** Bound of the partial (incomplete) messages held at once. */
  assembliesMax: number;
  /** Bound of the bytes of all partial messages held at once (each holds its whole totalBytes). */
  assemblyBytesMax: number;
  /** Bound of a message's schedule: (members - 1) * blockCount transfers. Default 2^20. */
  blockTransfersMax?: number;
  /** Bound of the compiled schedules kept (least recently used out). Default 16. */
  schedulesCachedMax?: number;
}

/** One block to send to one node. */
export interface BlockSend {
  to: NodeId;
  block: BlockFrame;
}

export interface BlockReceipt {
  /** Sends this node's rank makes of this block, in schedule step order. */
  relays: BlockSend[];
  /** The whole frame once its last block is in (then the assembly is gone), else null. */
  complete: Uint8Array | null;
  /** Why the block was refused, else null. */
  error: string | null;
  /**
   * With an error: 'invalid' when the block breaks the protocol (inconsistent, duplicate, not for this
   * node, from the wrong node): nothing changed, nothing to relay. 'limit' when it is valid but over
   * this node's bounds: a schedule over blockTransfersMax is refused like an invalid block; a NEW message
   * over assembliesMax / assemblyBytesMax is not assembled here, but `relays` still holds this block's
   * relays, and its later blocks are relayed only, without an error (the ranks downstream may have room).
   */
  errorKind: 'invalid' | 'limit' | null;
}

export interface BlockRelayStats {
  /** Blocks the origin sends (returned by start). */
  blocksSent: number;
  /** Blocks relayed (returned by receive). */
  blocksRelayed: number;
  /** Blocks accepted by receive (assembled, or relayed only for a dropped message). */
  blocksReceived: number;
  /** Blocks refused by receive (invalid, or over the bounds: then maybe still relayed). */
  blocksRejected: number;
  assembliesCompleted: number;
  /** Partial assemblies dropped by forget or dropStalled. */
  assembliesDropped: number;
  /** Gauge: partial assemblies held now. */
  assembliesOpen: number;
  /** Gauge: bytes of the partial assemblies held now. */
  bytesInFlight: number;
}

/** A schedule compiled for lookups by (rank, block). Ranks are relative: 0 is the origin. */
interface CompiledSchedule {
  memberCount: number;
  blockCount: number;
  /** The origin's sends in step order. */
  originSends: { to: number; block: number }[];
  /** senderRank[rank * blockCount + block]: the rank that sends `block` to `rank` (-1 for rank 0). */
  senderRank: Int32Array;
  /** The ranks `rank` sends `block` to, in step order: sendTargets[sendStart[slot] .. sendStart[slot + 1]). */
  sendStart: Uint32Array;
  sendTargets: Uint32Array;
}

interface Assembly {
  origin: NodeId;
  messageId: number;
  members: NodeId[];
  myRank: number;
  blockCount: number;
  totalBytes: number;
  /** Derived: ceil(totalBytes / blockCount). */
  blockBytes: number;
  buffer: Uint8Array;
  received: Uint8Array;
  missing: number;
  schedule: CompiledSchedule;
  /** A block arrived since the last dropStalled. */
  touched: boolean;
}

const DEFAULT_BLOCK_TRANSFERS_MAX = 1 << 20;
const DEFAULT_SCHEDULES_CACHED_MAX = 16;

function isInt(v: unknown, min: number, max: number): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;
}

/** The size of each block of a message: ceil(totalBytes / blockCount) (0 for an empty message). */
export function blockBytesOf(totalBytes: number, blockCount: number): number {
  return Math.ceil(totalBytes / blockCount);
}

/**
 * Why totalBytes and blockCount cannot describe a message cut into equal blocks (each one non-empty,
 * the last one possibly shorter), or null when they can.
 */
function layoutError(totalBytes: number, blockCount: number): string | null {
  if (!isInt(blockCount, 1, u32Max)) return `blockCount ${String(blockCount)} is not an integer in [1, 2^32)`;
  if (!isInt(totalBytes, 0, Number.MAX_SAFE_INTEGER)) return `totalBytes ${String(totalBytes)} is not a non-negative integer`;
  if (totalBytes === 0) return blockCount === 1 ? null : `an empty message has 1 block, not ${blockCount}`;
  const blockBytes = blockBytesOf(totalBytes, blockCount);
  if ((blockCount - 1) * blockBytes >= totalBytes) {
    return `${totalBytes} bytes cannot be cut into ${blockCount} non-empty blocks of ${blockBytes} bytes`;
  }
  return null;
}

function compileSchedule(memberCount: number, blockCount: number): CompiledSchedule {
  const steps = binomialPipelineSchedule(memberCount, blockCount);
  const slots = memberCount * blockCount;
  const senderRank = new Int32Array(slots).fill(-1);
  const sendStart = new Uint32Array(slots + 1);
  for (const { transfers } of steps) {
    for (const { from, to, block } of transfers) {
      sendStart[from * blockCount + block + 1]!++;
      senderRank[to * blockCount + block] = from;
    }
  }
  for (let slot = 0; slot < slots; slot++) sendStart[slot + 1]! += sendStart[slot]!;
  const sendTargets = new Uint32Array(sendStart[slots]!);
  const cursor = sendStart.slice(0, slots);
  for (const { transfers } of steps) {
    for (const { from, to, block } of transfers) sendTargets[cursor[from * blockCount + block]!++] = to;
  }
  const originSends: { to: number; block: number }[] = [];
  for (const rankStep of scheduleFor(0, steps)) if (rankStep.sendTo) originSends.push(rankStep.sendTo);
  return { memberCount, blockCount, originSends, senderRank, sendStart, sendTargets };
}

export class BlockRelay {
  readonly me: NodeId;
  readonly blockBytes: number;
  readonly assembliesMax: number;
  readonly assemblyBytesMax: number;
  readonly blockTransfersMax: number;
  readonly schedulesCachedMax: number;
  /** Bound of the remembered completed / dropped messages. */
  readonly closedKeysMax: number;

  private readonly counters = {
    blocksSent: 0, blocksRelayed: 0, blocksReceived: 0, blocksRejected: 0,
    assembliesCompleted: 0, assembliesDropped: 0,
  };
  /** origin -> messageId -> partial assembly. */
  private readonly assemblies = new Map<NodeId, Map<number, Assembly>>();
  private assembliesOpen = 0;
  private bytesInFlight = 0;
  /** "origin/messageId" of recently completed or dropped messages (insertion order, oldest out). */
  private readonly closed = new Map<string, 'completed' | 'dropped'>();
  /** "memberCount/blockCount" -> schedule (least recently used first). */
  private readonly schedules = new Map<string, CompiledSchedule>();

  constructor(options: BlockRelayOptions) {
    const { me, blockBytes, assembliesMax, assemblyBytesMax } = options;
    const blockTransfersMax = options.blockTransfersMax ?? DEFAULT_BLOCK_TRANSFERS_MAX;
    const schedulesCachedMax = options.schedulesCachedMax ?? DEFAULT_SCHEDULES_CACHED_MAX;
    if (!isInt(me, 0, u32Max)) throw new RangeError(`BlockRelay: me ${String(me)} is not a u32 node id`);
    const positive: [string, unknown][] = [
      ['blockBytes', blockBytes], ['assembliesMax', assembliesMax], ['assemblyBytesMax', assemblyBytesMax],
      ['blockTransfersMax', blockTransfersMax], ['schedulesCachedMax', schedulesCachedMax],
    ];
    for (const [name, value] of positive) {
      if (!isInt(value, 1, Number.MAX_SAFE_INTEGER)) throw new RangeError(`BlockRelay: ${name} must be a positive integer, got ${String(value)}`);
    }
    this.me = me;
    this.blockBytes = blockBytes;
    this.assembliesMax = assembliesMax;
    this.assemblyBytesMax = assemblyBytesMax;
    this.blockTransfersMax = blockTransfersMax;
    this.schedulesCachedMax = schedulesCachedMax;
    this.closedKeysMax = Math.max(64, 4 * assembliesMax);
  }

  /**
   * On the origin: the sends that multicast `frame` to `receivers` (ranks 1.. in this order), in
   * schedule step order. Blocks are views of `frame`: do not mutate it until they are written.
   * Throws RangeError for bad arguments (a receiver twice or this node among them, a bad message id, a
   * schedule over blockTransfersMax).
   */
  start(receivers: NodeId[], frame: Uint8Array, messageId: number): BlockSend[] {
    if (!isInt(messageId, 0, Number.MAX_SAFE_INTEGER)) throw new RangeError(`BlockRelay.start: messageId ${String(messageId)} is not a safe non-negative integer`);
    const members = [this.me];
    const seen = new Set<NodeId>(members);
    for (const id of receivers) {
      if (!isInt(id, 0, u32Max)) throw new RangeError(`BlockRelay.start: receiver ${String(id)} is not a u32 node id`);
      if (seen.has(id)) throw new RangeError(`BlockRelay.start: receiver n${id} is ${id === this.me ? 'this node' : 'listed twice'}`);
      seen.add(id);
      members.push(id);
    }
    if (members.length === 1) return [];
    const totalBytes = frame.byteLength;
    const blockCount = blocksFor(totalBytes, this.blockBytes);
    const transfers = (members.length - 1) * blockCount;
    if (transfers > this.blockTransfersMax) {
      throw new RangeError(`BlockRelay.start: ${members.length} members * ${blockCount} blocks need ${transfers} transfers, over blockTransfersMax ${this.blockTransfersMax}`);
    }
    const schedule = this.schedule(members.length, blockCount);
    const blockBytes = blockBytesOf(totalBytes, blockCount);
    const blocks: BlockFrame[] = [];
    for (let index = 0; index < blockCount; index++) {
      const begin = index * blockBytes;
      blocks.push({
        kind: 'block', from: this.me, origin: this.me, messageId, blockIndex: index, blockCount, totalBytes, members,
        bytes: frame.subarray(begin, Math.min(totalBytes, begin + blockBytes)),
      });
    }
    const sends = schedule.originSends.map(({ to, block }) => ({ to: members[to]!, block: blocks[block]! }));
    this.counters.blocksSent += sends.length;
    return sends;
  }

  /** On a receiver: accepts one block (see BlockReceipt). */
  receive(block: BlockFrame): BlockReceipt {
    const { origin, messageId, blockIndex, blockCount, totalBytes, members, from } = block;
    const what = `block ${String(blockIndex)}/${String(blockCount)} of n${String(origin)} message ${String(messageId)} from n${String(from)}`;
    const refuse = (errorKind: 'invalid' | 'limit', why: string): BlockReceipt => {
      this.counters.blocksRejected++;
      return { relays: [], complete: null, error: `${what}: ${why}`, errorKind };
    };
    if (!isInt(messageId, 0, Number.MAX_SAFE_INTEGER)) return refuse('invalid', 'messageId is not a safe non-negative integer');
    if (!(block.bytes instanceof Uint8Array)) return refuse('invalid', 'bytes is not a Uint8Array');
    const layout = layoutError(totalBytes, blockCount);
    if (layout !== null) return refuse('invalid', layout);
    if (!isInt(blockIndex, 0, blockCount - 1)) return refuse('invalid', `blockIndex is not in [0, ${blockCount})`);
    const blockBytes = blockBytesOf(totalBytes, blockCount);
    const begin = blockIndex * blockBytes;
    const expectedBytes = Math.min(totalBytes, begin + blockBytes) - begin;
    if (block.bytes.byteLength !== expectedBytes) {
      return refuse('invalid', `${block.bytes.byteLength} bytes, expected ${expectedBytes} (${totalBytes} bytes in ${blockCount} blocks of ${blockBytes})`);
    }
    if (!Array.isArray(members) || members.length < 2) return refuse('invalid', 'members must list the origin and at least one receiver');
    if (members[0] !== origin) return refuse('invalid', `members[0] is n${String(members[0])}, not the origin`);

    const key = `${origin}/${messageId}`;
    const status = this.closed.get(key);
    if (status === 'completed') return refuse('invalid', 'the message is already complete (duplicate block)');
    let assembly = this.assemblies.get(origin)?.get(messageId);
    let myRank: number;
    let schedule: CompiledSchedule;
    if (assembly) {
      if (assembly.totalBytes !== totalBytes || assembly.blockCount !== blockCount || !sameMembers(assembly.members, members)) {
        return refuse('invalid', 'totalBytes, blockCount or members differ from the earlier blocks of the message');
      }
      myRank = assembly.myRank;
      schedule = assembly.schedule;
    } else {
      myRank = -1;
      const seen = new Set<NodeId>();
      for (let rank = 0; rank < members.length; rank++) {
        const id = members[rank];
        if (!isInt(id, 0, u32Max)) return refuse('invalid', `members[${rank}] is not a u32 node id`);
        if (seen.has(id)) return refuse('invalid', `n${id} is twice in members`);
        seen.add(id);
        if (id === this.me) myRank = rank;
      }
      if (myRank < 0) return refuse('invalid', `this node n${this.me} is not a member`);
      if (myRank === 0) return refuse('invalid', `this node n${this.me} is the origin`);
      const transfers = (members.length - 1) * blockCount;
      if (transfers > this.blockTransfersMax) {
        return refuse('limit', `${members.length} members * ${blockCount} blocks need ${transfers} transfers, over blockTransfersMax ${this.blockTransfersMax}`);
      }
      schedule = this.schedule(members.length, blockCount);
    }
    const sender = schedule.senderRank[myRank * blockCount + blockIndex]!;
    if (members[sender] !== from) {
      return refuse('invalid', `the schedule has n${String(members[sender])} (rank ${sender}) send this block to rank ${myRank}`);
    }
    if (assembly && assembly.received[blockIndex] === 1) return refuse('invalid', 'duplicate block');

    let dropped = status === 'dropped';
    let overBounds: string | null = null;
    if (!assembly && !dropped && blockCount > 1) {
      if (this.assembliesOpen >= this.assembliesMax) {
        overBounds = `${this.assembliesOpen} partial messages held, assembliesMax ${this.assembliesMax}`;
      } else if (this.bytesInFlight + totalBytes > this.assemblyBytesMax) {
        overBounds = `${this.bytesInFlight} bytes of partial messages held, ${totalBytes} more would exceed assemblyBytesMax ${this.assemblyBytesMax}`;
      }
      if (overBounds !== null) {
        // Not assembled here, but still relayed: the ranks downstream may have room for it.
        dropped = true;
        this.counters.blocksRejected++;
        this.close(key, 'dropped');
      }
    }

    if (overBounds === null) this.counters.blocksReceived++;
    let complete: Uint8Array | null = null;
    let bytes = block.bytes;
    if (!dropped) {
      if (!assembly) {
        assembly = {
          origin, messageId, members: members.slice(), myRank, blockCount, totalBytes, blockBytes,
          buffer: new Uint8Array(totalBytes), received: new Uint8Array(blockCount), missing: blockCount, schedule, touched: true,
        };
        if (blockCount > 1) this.hold(assembly);
      }
      assembly.buffer.set(block.bytes, begin);
      assembly.received[blockIndex] = 1;
      assembly.missing--;
      assembly.touched = true;
      bytes = assembly.buffer.subarray(begin, begin + expectedBytes);
      if (assembly.missing === 0) {
        complete = assembly.buffer;
        if (blockCount > 1) this.release(assembly);
        this.counters.assembliesCompleted++;
        this.close(key, 'completed');
      }
    }

    const relays: BlockSend[] = [];
    const slot = myRank * blockCount + blockIndex;
    const relayMembers = assembly?.members ?? members;
    for (let i = schedule.sendStart[slot]!; i < schedule.sendStart[slot + 1]!; i++) {
      relays.push({
        to: relayMembers[schedule.sendTargets[i]!]!,
        block: { kind: 'block', from: this.me, origin, messageId, blockIndex, blockCount, totalBytes, members: relayMembers, bytes },
      });
    }
    this.counters.blocksRelayed += relays.length;
    if (overBounds !== null) return { relays, complete: null, error: `${what}: not assembled: ${overBounds}`, errorKind: 'limit' };
    return { relays, complete, error: null, errorKind: null };
  }

  /** Drops the partial assemblies of messages from `origin` (it failed). Returns how many. */
  forget(origin: NodeId): number {
    const byId = this.assemblies.get(origin);
    if (!byId) return 0;
    let count = 0;
    for (const assembly of [...byId.values()]) {
      this.drop(assembly);
      count++;
    }
    return count;
  }

  /**
   * Drops every partial assembly that accepted no block since the previous call (a block was lost),
   * and returns them as { origin, messageId }. Called periodically, an assembly is dropped after
   * between one and two periods without progress.
   */
  dropStalled(): { origin: NodeId; messageId: number }[] {
    const stalled: { origin: NodeId; messageId: number }[] = [];
    for (const byId of [...this.assemblies.values()]) {
      for (const assembly of [...byId.values()]) {
        if (assembly.touched) assembly.touched = false;
        else {
          stalled.push({ origin: assembly.origin, messageId: assembly.messageId });
          this.drop(assembly);
        }
      }
    }
    return stalled;
  }

  /** Counters and gauges. */
  stats(): BlockRelayStats {
    return { ...this.counters, assembliesOpen: this.assembliesOpen, bytesInFlight: this.bytesInFlight };
  }

  private schedule(memberCount: number, blockCount: number): CompiledSchedule {
    const key = `${memberCount}/${blockCount}`;
    let schedule = this.schedules.get(key);
    if (schedule) this.schedules.delete(key);
    else {
      schedule = compileSchedule(memberCount, blockCount);
      if (this.schedules.size >= this.schedulesCachedMax) this.schedules.delete(this.schedules.keys().next().value!);
    }
    this.schedules.set(key, schedule);
    return schedule;
  }

  private hold(assembly: Assembly): void {
    let byId = this.assemblies.get(assembly.origin);
    if (!byId) {
      byId = new Map();
      this.assemblies.set(assembly.origin, byId);
    }
    byId.set(assembly.messageId, assembly);
    this.assembliesOpen++;
    this.bytesInFlight += assembly.totalBytes;
  }

  private release(assembly: Assembly): void {
    const byId = this.assemblies.get(assembly.origin);
    if (!byId?.delete(assembly.messageId)) return;
    if (byId.size === 0) this.assemblies.delete(assembly.origin);
    this.assembliesOpen--;
    this.bytesInFlight -= assembly.totalBytes;
  }

  private drop(assembly: Assembly): void {
    this.release(assembly);
    this.counters.assembliesDropped++;
    this.close(`${assembly.origin}/${assembly.messageId}`, 'dropped');
  }

  private close(key: string, status: 'completed' | 'dropped'): void {
    this.closed.delete(key);
    if (this.closed.size >= this.closedKeysMax) this.closed.delete(this.closed.keys().next().value!);
    this.closed.set(key, status);
  }
}

function sameMembers(a: readonly NodeId[], b: readonly NodeId[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
