// One transport's end of the binomial pipeline (block-relay.ts), the same over TCP and RDMA: starts this
// node's pipelined multicasts, relays and reassembles the blocks it receives, delivers completed
// messages, drops stalled or orphaned assemblies, and keeps the pipeline counters. The transport only
// says how a block frame goes to a peer and how a message is handed to its handlers.

import { randomBytes } from 'node:crypto';
import type { NodeId } from '../core/types.ts';
import type { BlockRelay, BlockSend } from './block-relay.ts';
import type { BlockFrame, Codec, WireMessage } from './codec.ts';
import type { TransportError, TransportMetrics } from './tcp-transport.ts';

export type PipelineMetrics = Pick<TransportMetrics,
  'pipelineBlocksRelayed' | 'pipelineBlocksReceived' | 'pipelineMessagesCompleted' | 'pipelineErrors' |
  'pipelineAssembliesDropped' | 'pipelineAssembliesOpen' | 'pipelineBytesInFlight'>;

export interface PipelineEndpointOptions {
  relay: BlockRelay;
  codec: Codec;
  metrics: PipelineMetrics;
  /** A partly received message that gets no block for this long is dropped (after one to two periods). */
  stallMs: number;
  log(line: string): void;
  report(e: TransportError): void;
  /** Queues one block frame for `to`; false when refused (the transport counts the drop). */
  sendBlock(to: NodeId, block: BlockFrame): boolean;
  /** Hands a reassembled message to the transport's handlers, as a message from its origin. */
  deliver(origin: NodeId, message: WireMessage, remote: string): void;
  /** The transport is closing: no new stall checks. */
  closing(): boolean;
}

export class PipelineEndpoint {
  /** Message ids count up from a random 48-bit start, so a restarted origin does not reuse them. */
  private nextMessageId = randomBytes(6).readUIntBE(0, 6);
  private stallTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly o: PipelineEndpointOptions) {}

  /** The origin's block sends of a pipelined multicast, or null when its schedule is over the relay's bounds. */
  start(receivers: NodeId[], encoded: { parts: Uint8Array[]; bytes: number }): BlockSend[] | null {
    const frame = new Uint8Array(encoded.bytes);
    let pos = 0;
    for (const p of encoded.parts) {
      frame.set(p, pos);
      pos += p.byteLength;
    }
    try {
      return this.o.relay.start(receivers, frame, this.nextMessageId++);
    } catch (e) {
      this.o.log(`pipeline: sending directly: ${e instanceof Error ? e.message : String(e)}`);
      return null;
    }
  }

  /**
   * A block of a pipelined message from `peer`: relayed as the schedule says; once complete, the
   * reassembled frame is decoded and delivered as a message from its origin. A bad block or frame is
   * reported, and the connection stays open: the framing is intact, and the fault may lie with another
   * node (the origin).
   */
  receive(block: BlockFrame, peer: NodeId | null, remote: string): void {
    const { metrics } = this.o;
    const r = this.o.relay.receive(block);
    if (r.error !== null) {
      metrics.pipelineErrors++;
      this.o.report({ kind: r.errorKind === 'limit' ? 'limit' : 'protocol', peer, remote, message: `pipeline: ${r.error}` });
    } else metrics.pipelineBlocksReceived++;
    for (const { to, block: relayed } of r.relays) {
      if (this.o.sendBlock(to, relayed)) metrics.pipelineBlocksRelayed++;
    }
    this.syncGauges();
    this.armStallTimer();
    if (r.complete === null) return;
    const origin = block.origin;
    const d = this.o.codec.decode(r.complete);
    let error: string | null = null;
    if (!d.ok) error = d.error;
    else if (d.message.kind === 'block') error = 'a pipelined message cannot be a block';
    else if (d.message.from !== origin) error = `${d.message.kind} message claims to be from n${d.message.from}`;
    if (error !== null || !d.ok) {
      metrics.pipelineErrors++;
      this.o.report({ kind: 'protocol', peer: origin, remote, message: `pipeline: message ${block.messageId} of n${origin}, reassembled from ${block.blockCount} blocks, is refused: ${error}` });
      return;
    }
    metrics.pipelineMessagesCompleted++;
    this.o.deliver(origin, d.message, remote);
  }

  /** Drops the partly received pipelined messages of `origin` (its connection is gone, or it restarted). */
  forget(origin: NodeId, why: string): void {
    const dropped = this.o.relay.forget(origin);
    if (dropped === 0) return;
    this.o.metrics.pipelineAssembliesDropped += dropped;
    this.syncGauges();
    this.o.log(`pipeline: dropped ${dropped} partly received message(s) of n${origin}: ${why}`);
  }

  /** Stops the stall checks (the transport is closing). */
  close(): void {
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = null;
  }

  private syncGauges(): void {
    const s = this.o.relay.stats();
    this.o.metrics.pipelineAssembliesOpen = s.assembliesOpen;
    this.o.metrics.pipelineBytesInFlight = s.bytesInFlight;
  }

  /** While partly received pipelined messages are held, checks every stallMs for stalled ones. */
  private armStallTimer(): void {
    if (this.stallTimer !== null || this.o.closing() || this.o.metrics.pipelineAssembliesOpen === 0) return;
    this.stallTimer = setTimeout(() => {
      this.stallTimer = null;
      const stalled = this.o.relay.dropStalled();
      if (stalled.length > 0) {
        this.o.metrics.pipelineAssembliesDropped += stalled.length;
        this.syncGauges();
        this.o.log(`pipeline: dropped ${stalled.length} stalled message(s) (no block for ${this.o.stallMs} ms): ${stalled.map((m) => `n${m.origin}#${m.messageId}`).join(', ')}`);
      }
      this.armStallTimer();
    }, this.o.stallMs);
  }
}
