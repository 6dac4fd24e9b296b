// RdmaTransport: the agent's transport over RDMA verbs, used by the driver exactly like TcpTransport.
//
// Control plane: a TcpTransport (the same authenticated connection per peer pair, HMAC and/or mutual TLS)
// carries the RDMA setup (offer / answer / ready / reset, below) and, with `tcpFallback` (transport: auto),
// the frames of peers that have no RDMA path.
// Data plane, per peer pair: one reliable-connected queue pair set up through rdmacm; each side registers a
// receive area for the other (lanes.ts) and a staging area mirroring the other's receive area:
//   - state-table rows: the latest row is written one-sidedly into a row slot of the peer's area (write with
//     immediate naming the slot); rows waiting for a free slot are coalesced (only the newest is kept, as
//     Derecho's SST pushes do: a row carries the whole state, older ones are superseded);
//   - every other frame (data, control, state transfer, app, pipeline blocks) is written into the peer's
//     message ring in fragments, each a write with immediate; the receiver copies it out, releases the slots
//     and returns credits with zero-length writes with immediate;
//   - large multicasts travel over the binomial pipeline (BlockRelay, as over TCP): each block frame is one
//     or more writes with immediate into the next hop's ring.
// Every queue is bounded (outgoing frames and bytes per peer, slots by credits, send and receive queue
// depths by construction, reassembly by frameBytesMax); bad input from a peer tears down that peer's RDMA
// path (and is reported), never the process.
//
// Setup (lower node id dials; messages are app frames whose body starts with the 4 bytes 00 'R' 'D' 'M'
// followed by JSON, which the driver never sends: its app bodies are JSON objects):
//   dialer   -> offer  { session, receive area addr/rkey/geometry }             (over authenticated TCP)
//   acceptor -> answer { session, receive area addr/rkey/geometry, rdmaPort }
//   dialer: rdma_connect(acceptor host, rdmaPort, private data = "DRDM" v1 dialerId session)
//   acceptor: accepts only the dialer's id with the session it answered, posts its receives
//   both, once established and their receives are posted -> ready { session }; a side that saw the
//   other's ready and is established opens the path
//   either -> reset { session, reason } when its side of that session failed; the dialer offers again
// The session (16 random bytes) names one attempt; stale messages of an older session are ignored.

import { randomBytes } from 'node:crypto';
import type { NodeId } from '../../core/types.ts';
import { BlockRelay } from '../block-relay.ts';
import { Codec, CodecError } from '../codec.ts';
import { PipelineEndpoint } from '../pipeline-endpoint.ts';
import type { BlockFrame, WireMessage } from '../codec.ts';
import { TcpTransport, parseAddress, pipelineBlockBytesMax, DEFAULT_PIPELINE_BLOCK_BYTES } from '../tcp-transport.ts';
import type { MessageHandler, TcpTransportOptions, TlsOptions, TransportError, TransportMetrics } from '../tcp-transport.ts';
import {
  DEFAULT_GEOMETRY, ImmKind, areaBytes, creditCountMax, creditLaneRow, fragmentBytesMax, fragmentSlots, geometryProblem, imm,
  immKind, immValue, immValueMask, recvDepthFor, ringSlotOffset, rowSlotOffset, slotHeaderBytes,
} from './lanes.ts';
import type { LaneGeometry } from './lanes.ts';
import { UnroutableAddressError, unroutableReason, unroutableStatuses, WcOpcode, wcStatusName } from './verbs.ts';
import type { CmEvent, Completion, RegisteredRegion, Verbs, VerbsDevice, VerbsEvent } from './verbs.ts';

export interface RdmaTransportOptions extends TcpTransportOptions {
  verbs: Verbs;
  /** RDMA device to use ('' or absent: the first one). */
  deviceName?: string;
  /** rdmacm listening port (0: any; announced to peers in the answer). */
  rdmaPort?: number;
  /** Geometry of the receive area this node registers for each peer. */
  geometry?: Partial<LaneGeometry>;
  /**
   * Peers without an open RDMA path get their frames over the authenticated TCP connection (transport:
   * auto). Without it (transport: rdma) frames wait, bounded, for the RDMA path.
   */
  tcpFallback?: boolean;
  /** Period of the setup check (offers to connected peers, teardown of lost ones). Default 50 ms. */
  setupCheckMs?: number;
  /** First delay before offering again after a failed attempt (doubles up to 30 s). Default 200 ms. */
  setupRetryDelayMs?: number;
  /** A setup attempt not open within this time fails (and is tried again later). Default 10 s. */
  setupTimeoutMs?: number;
  /**
   * Entries of the device's one completion queue, shared by every RDMA path: a path needs its send plus
   * receive queue depth (about 2 x (ringSlots + rowSlots) of both sides), and a path that would not fit is
   * refused. Default 65536 capped at the device's max_cqe (Soft-RoCE allows 32,767); a larger explicit
   * value is refused, naming the device's limit.
   */
  completionQueueEntries?: number;
}

/** The data path's counters (TransportMetrics: the RDMA path's frames; the control connection's in `control`). */
export interface RdmaMetrics extends TransportMetrics {
  rdmaWritesPosted: number;
  rdmaRowsWritten: number;
  /** Rows superseded by a newer row before a row slot was free. */
  rdmaRowsCoalesced: number;
  rdmaFragmentsWritten: number;
  rdmaCreditWrites: number;
  /** Frames sent over TCP because the peer had no RDMA path (tcpFallback). */
  rdmaFallbackFrames: number;
  rdmaSetupFailures: number;
  /** Frames dropped because the RDMA path failed while they were partly written. */
  rdmaFramesLost: number;
}

const controlMagic = Uint8Array.from([0x00, 0x52, 0x44, 0x4d]);
const privateMagic = Uint8Array.from([0x44, 0x52, 0x44, 0x4d]); // "DRDM"
const privateVersion = 1;
const sessionBytes = 16;
const privateDataBytes = 4 + 1 + 3 + 4 + sessionBytes;
const controlBytesMax = 1024;
const setupRetryDelayMaxMs = 30_000;
/** Bound of the whole frames one fragment carries (small frames written together in one write). */
const batchFramesMax = 1024;

type ControlMessage =
  | { t: 'offer'; session: string; addr: string; rkey: number; geometry: LaneGeometry }
  | { t: 'answer'; session: string; addr: string; rkey: number; geometry: LaneGeometry; rdmaPort: number }
  | { t: 'ready'; session: string }
  | { t: 'reset'; session: string; reason: string; unroutable?: true };

type PeerState = 'idle' | 'offered' | 'answered' | 'connecting' | 'established' | 'open';

interface Outgoing {
  parts: Uint8Array[];
  bytes: number;
}

interface RdmaPeer {
  id: NodeId;
  state: PeerState;
  session: string | null;
  connId: number | null;
  recvArea: RegisteredRegion | null;
  staging: RegisteredRegion | null;
  remote: { addr: bigint; rkey: number; geometry: LaneGeometry } | null;
  peerReady: boolean;
  recvsPosted: boolean;
  sendDepth: number;
  /** When the current setup attempt started (offer sent or received). */
  setupStartedAt: number;
  /** Completion queue entries reserved for this peer's queue pair (0: none). */
  cqEntries: number;
  retryAt: number;
  attempts: number;
  everOpen: boolean;
  /**
   * RDMA CM cannot reach the peer at `host` (a loopback address, or no RDMA device on the route): no more
   * dials to that address, and without tcpFallback its frames are dropped as unreachable instead of
   * waiting for a path that cannot open. Cleared when the peer's address changes or it offers again.
   */
  unroutable: { host: string; why: string } | null;
  // sending
  queue: Outgoing[];
  queuedFrames: number;
  queuedBytes: number;
  current: { frame: Outgoing; offset: number } | null;
  pendingRow: Outgoing | null;
  rowNext: number;
  rowCredits: number;
  ringNext: number;
  ringCredits: number;
  sendsOutstanding: number;
  blocked: boolean;
  // receiving
  ringRead: number;
  assembly: Uint8Array[];
  assemblyBytes: number;
  releasedRing: number;
  releasedRow: number;
  recvsToRepost: number;
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

function isControl(body: Uint8Array): boolean {
  return body.byteLength > controlMagic.length && controlMagic.every((v, i) => body[i] === v);
}

/** Copies `length` bytes starting at `offset` of the concatenation of `parts` into `dst` at `dstOffset`. */
function copyParts(parts: Uint8Array[], offset: number, length: number, dst: Uint8Array, dstOffset: number): void {
  let skip = offset;
  let left = length;
  let at = dstOffset;
  for (const p of parts) {
    if (left === 0) break;
    if (skip >= p.byteLength) {
      skip -= p.byteLength;
      continue;
    }
    const n = Math.min(p.byteLength - skip, left);
    dst.set(p.subarray(skip, skip + n), at);
    at += n;
    left -= n;
    skip = 0;
  }
}

/** Parses an offer/answer/ready/reset body (after the magic); a string says what is wrong. */
export function parseControl(json: string): ControlMessage | string {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch {
    return 'not JSON';
  }
  if (typeof v !== 'object' || v === null) return 'not an object';
  const o = v as Record<string, unknown>;
  const session = o['session'];
  if (typeof session !== 'string' || !/^[0-9a-f]{32}$/.test(session)) return 'session is not 32 hex digits';
  const geometryOf = (): LaneGeometry | string => {
    const g = o['geometry'] as Record<string, unknown> | undefined;
    if (typeof g !== 'object' || g === null) return 'no geometry';
    const out = { rowSlots: g['rowSlots'], rowSlotBytes: g['rowSlotBytes'], ringSlots: g['ringSlots'], ringSlotBytes: g['ringSlotBytes'] } as LaneGeometry;
    return geometryProblem(out) ?? out;
  };
  const area = (): { addr: string; rkey: number } | string => {
    const addr = o['addr'];
    const rkey = o['rkey'];
    if (typeof addr !== 'string' || !/^[0-9]{1,20}$/.test(addr) || BigInt(addr) >= 1n << 64n) return 'addr is not a u64';
    if (typeof rkey !== 'number' || !Number.isInteger(rkey) || rkey < 0 || rkey > 0xffffffff) return 'rkey is not a u32';
    return { addr, rkey };
  };
  switch (o['t']) {
    case 'ready':
      return { t: 'ready', session };
    case 'reset':
      return { t: 'reset', session, reason: typeof o['reason'] === 'string' ? o['reason'].slice(0, 200) : '', ...(o['unroutable'] === true ? { unroutable: true as const } : {}) };
    case 'offer':
    case 'answer': {
      const g = geometryOf();
      if (typeof g === 'string') return `geometry: ${g}`;
      const a = area();
      if (typeof a === 'string') return a;
      if (o['t'] === 'offer') return { t: 'offer', session, ...a, geometry: g };
      const port = o['rdmaPort'];
      if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) return 'rdmaPort is not a port';
      return { t: 'answer', session, ...a, geometry: g, rdmaPort: port };
    }
    default:
      return `unknown control message ${JSON.stringify(o['t'])}`;
  }
}

export class RdmaTransport {
  readonly kind = 'rdma' as const;
  readonly nodeId: NodeId;
  readonly codec: Codec;
  readonly device: VerbsDevice;
  readonly geometry: LaneGeometry;
  readonly tcpFallback: boolean;
  readonly pipelineBlockBytes: number;
  readonly pipelineThresholdBytes: number;
  readonly metrics: RdmaMetrics;

  private readonly control: TcpTransport;
  private readonly peers = new Map<NodeId, RdmaPeer>();
  private readonly byConn = new Map<number, RdmaPeer>();
  private readonly peerHosts = new Map<NodeId, string>();
  private readonly messageHandlers: MessageHandler[] = [];
  private readonly errorHandlers: ((e: TransportError) => void)[] = [];
  private readonly drainHandlers: ((peer: NodeId) => void)[] = [];
  private readonly log: (line: string) => void;
  private readonly copyPayloads: boolean;
  private readonly outgoingFramesMax: number;
  private readonly outgoingBytesMax: number;
  private readonly setupCheckMs: number;
  private readonly setupRetryDelayMs: number;
  private readonly setupTimeoutMs: number;
  private readonly rdmaPortWanted: number;
  private readonly pipeline: PipelineEndpoint;
  private listenerId: number | null = null;
  private rdmaPort = 0;
  private setupTimer: ReturnType<typeof setInterval> | null = null;
  private flushScheduled: ReturnType<typeof setImmediate> | null = null;
  private readonly dirty = new Set<RdmaPeer>();
  private closing: Promise<void> | null = null;
  /** After close()'s drain: nothing more is written or processed. */
  private closed = false;
  private readonly closeTimeoutMs: number;
  private wrId = 1;
  /** Why this node cannot use RDMA at all (its listen address is unroutable; transport auto): TCP only. */
  private rdmaUnusable: string | null = null;
  private readonly completionQueueEntries: number;
  /** Completion queue entries the open or opening paths may use (their send + receive depths). */
  private cqEntriesInUse = 0;

  /** Opens the RDMA device (throws a clear error when there is none) and the control transport. */
  constructor(options: RdmaTransportOptions) {
    const { verbs, deviceName, rdmaPort, geometry, tcpFallback, setupCheckMs, setupRetryDelayMs, setupTimeoutMs, completionQueueEntries, ...tcpOptions } = options;
    this.setupTimeoutMs = setupTimeoutMs ?? 10_000;
    this.nodeId = options.nodeId;
    this.geometry = { ...DEFAULT_GEOMETRY, ...geometry };
    const problem = geometryProblem(this.geometry);
    if (problem) throw new RangeError(`RDMA geometry: ${problem}`);
    this.tcpFallback = tcpFallback ?? false;
    this.setupCheckMs = setupCheckMs ?? 50;
    this.setupRetryDelayMs = setupRetryDelayMs ?? 200;
    this.rdmaPortWanted = rdmaPort ?? 0;
    this.copyPayloads = options.copyPayloads ?? false;
    this.outgoingFramesMax = options.outgoingFramesMax ?? 8192;
    this.outgoingBytesMax = options.outgoingBytesMax ?? 32 << 20;
    this.closeTimeoutMs = options.closeTimeoutMs ?? 1000;
    const prefix = `[rdma n${this.nodeId}] `;
    const log = options.log ?? ((line: string) => console.warn(line));
    this.log = (line) => log(prefix + line);
    this.control = new TcpTransport(tcpOptions);
    this.codec = this.control.codec;
    const blockBytesMax = pipelineBlockBytesMax(this.codec.limits);
    this.pipelineBlockBytes = this.control.pipelineBlockBytes;
    this.pipelineThresholdBytes = this.control.pipelineThresholdBytes;
    const relay = new BlockRelay({
      me: this.nodeId,
      blockBytes: Math.max(1, this.pipelineBlockBytes || Math.min(DEFAULT_PIPELINE_BLOCK_BYTES, blockBytesMax)),
      assembliesMax: options.pipelineAssembliesMax ?? 16,
      assemblyBytesMax: options.pipelineAssemblyBytesMax ?? 4 * (this.codec.limits.frameBytesMax + 4),
    });
    const tcp = this.control.metrics;
    const own = {
      framesSent: 0, bytesSent: 0, framesReceived: 0, bytesReceived: 0,
      dropsQueueFull: 0, dropsUnreachable: 0, dropsEncode: 0, dropsDiscarded: 0, reconnects: 0, protocolErrors: 0, connectionsOpen: 0,
      pipelineMessagesSent: 0, pipelineBlocksSent: 0, pipelineBlocksRelayed: 0, pipelineBlockDrops: 0, pipelineBlocksReceived: 0,
      pipelineMessagesCompleted: 0, pipelineErrors: 0, pipelineAssembliesDropped: 0, pipelineAssembliesOpen: 0, pipelineBytesInFlight: 0,
      rdmaWritesPosted: 0, rdmaRowsWritten: 0, rdmaRowsCoalesced: 0, rdmaFragmentsWritten: 0, rdmaCreditWrites: 0,
      rdmaFallbackFrames: 0, rdmaSetupFailures: 0, rdmaFramesLost: 0,
    };
    // The control connection's own counters (socket writes, dials, handshakes) read through.
    this.metrics = Object.defineProperties(own, {
      socketWrites: { get: () => tcp.socketWrites, enumerable: true },
      dials: { get: () => tcp.dials, enumerable: true },
      accepted: { get: () => tcp.accepted, enumerable: true },
      handshakeFailures: { get: () => tcp.handshakeFailures, enumerable: true },
      duplicateConnections: { get: () => tcp.duplicateConnections, enumerable: true },
    }) as RdmaMetrics;
    this.pipeline = new PipelineEndpoint({
      relay, codec: this.codec, metrics: this.metrics, stallMs: options.pipelineStallMs ?? 10_000,
      log: (line) => this.log(line), report: (e) => this.report(e),
      sendBlock: (to, block) => this.sendBlock(to, block),
      deliver: (origin, message) => this.deliver(origin, message),
      closing: () => this.closing !== null,
    });
    this.device = verbs.open(deviceName ?? '', (e) => this.onVerbsEvent(e), completionQueueEntries);
    this.completionQueueEntries = this.device.completionQueueEntries;
    // A path between two nodes of this geometry needs these queue depths: refuse a geometry the device
    // cannot serve now, not at every setup attempt.
    const deepest = Math.max(this.sendDepthFor(this.geometry), recvDepthFor(this.geometry, this.geometry));
    if (deepest > this.device.limits.maxQueuePairWorkRequests) {
      this.device.close();
      throw new RangeError(`RDMA geometry: ringSlots ${this.geometry.ringSlots} and rowSlots ${this.geometry.rowSlots} need queue pairs ${deepest} deep, over what RDMA device ${this.device.name} allows (max_qp_wr ${this.device.limits.maxQueuePairWorkRequests})`);
    }
    this.control.onMessage((from, m) => this.onControlTransport(from, m));
    this.control.onError((e) => this.report(e));
    this.control.onDrain((peer) => {
      if (this.tcpFallback) this.emitDrain(peer);
    });
  }

  // ==========================================================================================
  // Public API (the same surface as TcpTransport's, as the agent and the driver use it)
  // ==========================================================================================

  /**
   * Listens on the TCP control port and on an rdmacm port (announced to peers). An address RDMA CM cannot
   * use fails (transport rdma), or, with tcpFallback (transport auto), leaves this node on TCP only.
   */
  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    if (this.closing) throw new Error('transport is closed');
    const bound = await this.control.listen(host, port);
    try {
      const l = this.device.listen(host, this.rdmaPortWanted);
      this.listenerId = l.connId;
      this.rdmaPort = l.port;
    } catch (e) {
      if (e instanceof UnroutableAddressError && this.tcpFallback) {
        this.rdmaUnusable = e.message;
        this.log(`no RDMA paths, every frame goes over TCP: ${e.message}`);
        return bound;
      }
      throw new Error(`RDMA device ${this.device.name}: cannot listen for RDMA connections on ${host}:${this.rdmaPortWanted}: ${e instanceof Error ? e.message : String(e)}`);
    }
    this.log(`rdmacm listening on ${host}:${this.rdmaPort} (device ${this.device.name})`);
    this.setupTimer = setInterval(() => this.checkSetup(), this.setupCheckMs);
    return bound;
  }

  address(): { host: string; port: number } | null {
    return this.control.address();
  }

  /**
   * Replaces the TLS credentials of the control connections (TcpTransport.updateTlsCredentials): the
   * authentication of a peer, and so of the RDMA path set up over its control connection, happens there.
   */
  updateTlsCredentials(credentials: TlsOptions): void {
    this.control.updateTlsCredentials(credentials);
  }

  /** Sets the peers (node id -> "host:port" of their TCP port; the same host serves rdmacm). */
  setPeers(peers: ReadonlyMap<NodeId, string> | Readonly<Record<number, string>>): void {
    this.control.setPeers(peers);
    this.peerHosts.clear();
    for (const [id, addr] of this.control.peerAddresses()) this.peerHosts.set(id, parseAddress(addr).host);
    for (const peer of [...this.peers.values()]) {
      if (!this.peerHosts.has(peer.id) && !this.control.connected(peer.id)) this.removePeer(peer, 'removed from the peer map');
      else if (peer.unroutable && this.peerHosts.has(peer.id) && this.peerHosts.get(peer.id) !== peer.unroutable.host) peer.unroutable = null;
    }
  }

  connect(peers: ReadonlyMap<NodeId, string> | Readonly<Record<number, string>>): void {
    this.setPeers(peers);
  }

  peerAddresses(): Map<NodeId, string> {
    return this.control.peerAddresses();
  }

  /** True when the RDMA path to `to` is open (with tcpFallback: or its TCP connection is). */
  connected(to: NodeId): boolean {
    if (this.peers.get(to)?.state === 'open') return true;
    return this.tcpFallback && this.control.connected(to);
  }

  connectedPeers(): NodeId[] {
    const out = new Set<NodeId>();
    for (const p of this.peers.values()) if (p.state === 'open') out.add(p.id);
    if (this.tcpFallback) for (const id of this.control.connectedPeers()) out.add(id);
    return [...out].sort((a, b) => a - b);
  }

  /** Peers with an open RDMA path. */
  rdmaPeers(): NodeId[] {
    return [...this.peers.values()].filter((p) => p.state === 'open').map((p) => p.id).sort((a, b) => a - b);
  }

  /** The control (TCP) connection's counters. */
  controlMetrics(): TransportMetrics {
    return this.control.metrics;
  }

  send(to: NodeId, message: WireMessage): boolean {
    if (this.closing) return false;
    const peer = this.reachable(to);
    if (!peer) {
      this.metrics.dropsUnreachable++;
      return false;
    }
    if (peer.state !== 'open' && this.tcpFallback) return this.sendOverTcp(to, message);
    const encoded = this.encode(message, to);
    if (encoded === null) return false;
    if (message.kind === 'row') return this.queueRow(peer, encoded);
    return this.enqueue(peer, encoded);
  }

  multicast(to: NodeId[], message: WireMessage): boolean {
    if (this.closing) return false;
    let ok = true;
    const receivers: NodeId[] = [];
    for (const id of new Set(to)) {
      if (id === this.nodeId) {
        this.metrics.dropsUnreachable++;
        ok = false;
      } else receivers.push(id);
    }
    if (receivers.length === 0) return ok;
    const encoded = this.encode(message, receivers.length === 1 ? receivers[0]! : null);
    if (encoded === null) return false;
    const pipelined = this.pipelineBlockBytes > 0 && receivers.length >= 2 && encoded.bytes >= this.pipelineThresholdBytes &&
      receivers.every((id) => this.peers.get(id)?.state === 'open');
    const sends = pipelined ? this.pipeline.start(receivers, encoded) : null;
    if (sends !== null) {
      this.metrics.pipelineMessagesSent++;
      for (const { to: id, block } of sends) {
        if (this.sendBlock(id, block)) this.metrics.pipelineBlocksSent++;
        else ok = false;
      }
      return ok;
    }
    for (const id of receivers) {
      const peer = this.reachable(id);
      if (!peer) {
        this.metrics.dropsUnreachable++;
        ok = false;
      } else if (peer.state !== 'open' && this.tcpFallback) {
        if (!this.sendOverTcp(id, message)) ok = false;
      } else if (!(message.kind === 'row' ? this.queueRow(peer, encoded) : this.enqueue(peer, encoded))) ok = false;
    }
    return ok;
  }

  /** True when `to` can take frames now (room in its queue). */
  writable(to: NodeId): boolean {
    const peer = this.reachable(to);
    if (!peer || this.closing) return false;
    if (peer.state !== 'open' && this.tcpFallback) return this.control.writable(to);
    const ok = this.hasRoom(peer, 0);
    if (!ok) peer.blocked = true;
    return ok;
  }

  onMessage(handler: MessageHandler): () => void {
    return this.subscribe(this.messageHandlers, handler);
  }

  onError(handler: (e: TransportError) => void): () => void {
    return this.subscribe(this.errorHandlers, handler);
  }

  onDrain(handler: (peer: NodeId) => void): () => void {
    return this.subscribe(this.drainHandlers, handler);
  }

  /**
   * Refuses new frames, writes what is queued on open RDMA paths (as credits allow, for at most
   * closeTimeoutMs), then tears down every path, closes the device and the control transport.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    if (this.setupTimer) clearInterval(this.setupTimer);
    this.pipeline.close();
    this.setupTimer = null;
    this.closing = (async () => {
      const busy = (): boolean => [...this.peers.values()].some((p) => p.state === 'open' &&
        (p.queuedFrames > 0 || p.pendingRow !== null || p.sendsOutstanding > 0));
      for (const peer of this.peers.values()) this.flushPeer(peer);
      const deadline = Date.now() + this.closeTimeoutMs;
      while (busy() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
      this.closed = true;
      if (this.flushScheduled) clearImmediate(this.flushScheduled);
      this.flushScheduled = null;
      for (const peer of [...this.peers.values()]) this.removePeer(peer, 'transport closed', true);
      if (this.listenerId !== null) this.tryVerbs(() => this.device.disconnect(this.listenerId!));
      this.tryVerbs(() => this.device.close());
      await this.control.close();
    })();
    return this.closing;
  }

  // ==========================================================================================
  // Peers and setup
  // ==========================================================================================

  private subscribe<T>(list: T[], handler: T): () => void {
    list.push(handler);
    return () => {
      const i = list.indexOf(handler);
      if (i >= 0) list.splice(i, 1);
    };
  }

  private reachable(to: NodeId): RdmaPeer | null {
    if (to === this.nodeId) return null;
    const known = this.peerHosts.has(to) || this.control.connected(to);
    const peer = known ? this.peer(to) : (this.peers.get(to) ?? null);
    if (peer?.unroutable && !this.tcpFallback) return null;
    return peer;
  }

  private peer(id: NodeId): RdmaPeer {
    let p = this.peers.get(id);
    if (!p) {
      p = {
        id, state: 'idle', session: null, connId: null, recvArea: null, staging: null, remote: null, peerReady: false, recvsPosted: false,
        sendDepth: 0, setupStartedAt: 0, cqEntries: 0, retryAt: 0, attempts: 0, everOpen: false, unroutable: null,
        queue: [], queuedFrames: 0, queuedBytes: 0, current: null, pendingRow: null,
        rowNext: 0, rowCredits: 0, ringNext: 0, ringCredits: 0, sendsOutstanding: 0, blocked: false,
        ringRead: 0, assembly: [], assemblyBytes: 0, releasedRing: 0, releasedRow: 0, recvsToRepost: 0,
      };
      this.peers.set(id, p);
    }
    return p;
  }

  private removePeer(peer: RdmaPeer, why: string, quiet = false): void {
    this.teardown(peer, why, false, quiet);
    this.metrics.dropsDiscarded += peer.queuedFrames + (peer.pendingRow ? 1 : 0);
    peer.queue = [];
    peer.queuedFrames = 0;
    peer.queuedBytes = 0;
    peer.pendingRow = null;
    for (const r of [peer.recvArea, peer.staging]) if (r) this.tryVerbs(() => this.device.deregister(r.handle));
    peer.recvArea = null;
    peer.staging = null;
    this.peers.delete(peer.id);
  }

  /** Every setupCheckMs: the dialer offers to connected peers without a path; lost control connections end paths. */
  private checkSetup(): void {
    if (this.closing) return;
    const now = Date.now();
    for (const id of this.control.connectedPeers()) {
      if (id === this.nodeId) continue;
      const peer = this.peer(id);
      if (peer.unroutable && peer.unroutable.host === this.hostOf(id)) continue;
      if (peer.state === 'idle' && this.nodeId < id && now >= peer.retryAt) this.offer(peer);
    }
    for (const peer of [...this.peers.values()]) {
      if (peer.state !== 'idle' && !this.control.connected(peer.id)) this.teardown(peer, 'the control connection was lost', false);
      else if (peer.state !== 'idle' && peer.state !== 'open' && now - peer.setupStartedAt > this.setupTimeoutMs) {
        const hint = peer.state === 'offered' ? ' (no answer to the offer: is the peer running with transport tcp?)' : '';
        this.setupFailed(peer, `RDMA setup with n${peer.id} did not complete within ${this.setupTimeoutMs} ms, state ${peer.state}${hint}`, peer.state !== 'offered');
      }
    }
  }

  private sendControl(to: NodeId, m: ControlMessage): void {
    const json = Buffer.from(JSON.stringify(m), 'utf8');
    const body = new Uint8Array(controlMagic.length + json.byteLength);
    body.set(controlMagic);
    body.set(json, controlMagic.length);
    this.control.send(to, { kind: 'app', from: this.nodeId, body });
  }

  /** My receive area for `peer` (registered once per peer, zeroed for each session). */
  private receiveArea(peer: RdmaPeer): RegisteredRegion {
    if (!peer.recvArea) peer.recvArea = this.device.register(areaBytes(this.geometry));
    else new Uint8Array(peer.recvArea.buffer).fill(0);
    return peer.recvArea;
  }

  private stagingArea(peer: RdmaPeer, g: LaneGeometry): RegisteredRegion {
    const bytes = areaBytes(g);
    if (peer.staging && peer.staging.buffer.byteLength !== bytes) {
      const old = peer.staging;
      this.tryVerbs(() => this.device.deregister(old.handle));
      peer.staging = null;
    }
    if (!peer.staging) peer.staging = this.device.register(bytes);
    return peer.staging;
  }

  private offer(peer: RdmaPeer): void {
    try {
      const area = this.receiveArea(peer);
      peer.session = randomBytes(sessionBytes).toString('hex');
      peer.state = 'offered';
      peer.setupStartedAt = Date.now();
      peer.peerReady = false;
      this.sendControl(peer.id, { t: 'offer', session: peer.session, addr: area.addr.toString(), rkey: area.rkey, geometry: this.geometry });
    } catch (e) {
      this.setupFailed(peer, `cannot offer an RDMA path: ${e instanceof Error ? e.message : String(e)}`, false);
    }
  }

  private onControl(from: NodeId, body: Uint8Array): void {
    const parsed = body.byteLength > controlBytesMax ? 'over 1024 bytes' : parseControl(Buffer.from(body.subarray(controlMagic.length)).toString('utf8'));
    if (typeof parsed === 'string') {
      this.metrics.protocolErrors++;
      this.report({ kind: 'protocol', peer: from, remote: '', message: `bad RDMA setup message: ${parsed}` });
      return;
    }
    const peer = this.reachable(from) ?? this.peer(from);
    switch (parsed.t) {
      case 'offer': {
        if (this.nodeId < from) {
          this.metrics.protocolErrors++;
          this.report({ kind: 'protocol', peer: from, remote: '', message: `RDMA offer from n${from}, but the lower id (this node) dials` });
          return;
        }
        if (this.rdmaUnusable !== null) {
          this.sendControl(from, { t: 'reset', session: parsed.session, reason: this.rdmaUnusable.slice(0, 200), unroutable: true });
          return;
        }
        this.teardown(peer, 'the peer offered a new RDMA session', false, true);
        peer.unroutable = null;
        try {
          const area = this.receiveArea(peer);
          this.stagingArea(peer, parsed.geometry);
          peer.remote = { addr: BigInt(parsed.addr), rkey: parsed.rkey, geometry: parsed.geometry };
          peer.session = parsed.session;
          peer.state = 'answered';
          peer.setupStartedAt = Date.now();
          peer.peerReady = false;
          this.sendControl(from, { t: 'answer', session: parsed.session, addr: area.addr.toString(), rkey: area.rkey, geometry: this.geometry, rdmaPort: this.rdmaPort });
        } catch (e) {
          this.setupFailed(peer, `cannot answer the RDMA offer: ${e instanceof Error ? e.message : String(e)}`, true);
        }
        return;
      }
      case 'answer': {
        if (peer.state !== 'offered' || peer.session !== parsed.session) return; // stale
        try {
          this.stagingArea(peer, parsed.geometry);
          peer.remote = { addr: BigInt(parsed.addr), rkey: parsed.rkey, geometry: parsed.geometry };
          const host = this.hostOf(peer.id);
          if (host === null) throw new Error(`no address for n${peer.id}`);
          const pd = new Uint8Array(privateDataBytes);
          pd.set(privateMagic);
          pd[4] = privateVersion;
          new DataView(pd.buffer).setUint32(8, this.nodeId, true);
          pd.set(Buffer.from(parsed.session, 'hex'), 12);
          peer.sendDepth = this.sendDepthFor(parsed.geometry);
          this.reserveCq(peer, peer.sendDepth + recvDepthFor(this.geometry, parsed.geometry));
          const connId = this.device.connect(host, parsed.rdmaPort, pd, peer.sendDepth, recvDepthFor(this.geometry, parsed.geometry));
          peer.connId = connId;
          this.byConn.set(connId, peer);
          peer.state = 'connecting';
        } catch (e) {
          if (e instanceof UnroutableAddressError) this.markUnroutable(peer, e.host, e.message);
          else this.setupFailed(peer, `cannot dial the RDMA path: ${e instanceof Error ? e.message : String(e)}`, true);
        }
        return;
      }
      case 'ready':
        if (peer.session !== parsed.session) return;
        peer.peerReady = true;
        if (peer.state === 'established') this.openPath(peer);
        return;
      case 'reset':
        if (peer.session !== parsed.session || peer.state === 'idle') return;
        this.teardown(peer, `the peer reset the RDMA path: ${parsed.reason}`, false);
        if (parsed.unroutable) this.markUnroutable(peer, this.hostOf(peer.id) ?? '', `n${peer.id} cannot reach this node over RDMA: ${parsed.reason}`, false);
        return;
    }
  }

  /** Reserves completion queue entries for a queue pair, or throws when the queue cannot hold them. */
  private reserveCq(peer: RdmaPeer, entries: number): void {
    if (this.cqEntriesInUse + entries > this.completionQueueEntries) {
      throw new Error(`the completion queue of ${this.completionQueueEntries} entries has ${this.completionQueueEntries - this.cqEntriesInUse} free, this path needs ${entries} (raise completionQueueEntries or lower ringSlots)`);
    }
    this.cqEntriesInUse += entries;
    peer.cqEntries = entries;
  }

  private sendDepthFor(peerGeometry: LaneGeometry): number {
    return peerGeometry.ringSlots + peerGeometry.rowSlots + 8;
  }

  private hostOf(id: NodeId): string | null {
    const known = this.peerHosts.get(id);
    if (known !== undefined) return known;
    const conn = this.control.connections().find((c) => c.active && c.peer === id);
    if (!conn) return null;
    try {
      return parseAddress(conn.remote.replace(/^::ffff:/, '')).host;
    } catch {
      return null;
    }
  }

  private onCm(e: CmEvent): void {
    if (e.type === 'connectRequest') return this.onConnectRequest(e);
    const peer = this.byConn.get(e.connId);
    if (!peer) return;
    switch (e.type) {
      case 'established':
        try {
          this.postInitialRecvs(peer);
        } catch (err) {
          this.setupFailed(peer, `cannot post receives: ${err instanceof Error ? err.message : String(err)}`, true);
          return;
        }
        peer.state = 'established';
        this.sendControl(peer.id, { t: 'ready', session: peer.session! });
        if (peer.peerReady) this.openPath(peer);
        return;
      case 'connectResponse':
      case 'timewaitExit':
      case 'other':
        return;
      default: {
        const host = this.hostOf(peer.id);
        if ((e.type === 'addrError' || e.type === 'routeError') && unroutableStatuses.has(e.status) && host !== null) {
          this.markUnroutable(peer, host, `no RDMA route to n${peer.id} at ${host} (${e.type}, ${e.status === 19 ? 'ENODEV' : 'EADDRNOTAVAIL'}): ${unroutableReason(host)}`);
        } else if (peer.state === 'open') this.teardown(peer, `RDMA connection ${e.type}${e.status ? ` (status ${e.status})` : ''}`, true);
        else this.setupFailed(peer, `RDMA connection ${e.type}${e.status ? ` (status ${e.status})` : ''}`, true);
      }
    }
  }

  /**
   * RDMA CM can never reach `peer` at `host`: says so once (an error naming the cause), ends the attempt,
   * tells the peer (so it stops waiting too) and stops dialing that address; without tcpFallback the
   * frames queued for the peer are dropped as unreachable, as are later ones, instead of waiting forever.
   */
  private markUnroutable(peer: RdmaPeer, host: string, why: string, notifyPeer = true): void {
    this.metrics.rdmaSetupFailures++;
    this.report({ kind: 'connect', peer: peer.id, remote: host, message: why });
    if (notifyPeer && peer.session && this.control.connected(peer.id)) this.sendControl(peer.id, { t: 'reset', session: peer.session, reason: why.slice(0, 200), unroutable: true });
    this.teardown(peer, why, false, true);
    peer.unroutable = { host, why };
    if (!this.tcpFallback && peer.queuedFrames + (peer.pendingRow ? 1 : 0) > 0) {
      this.metrics.dropsUnreachable += peer.queuedFrames + (peer.pendingRow ? 1 : 0);
      peer.queue = [];
      peer.queuedFrames = 0;
      peer.queuedBytes = 0;
      peer.pendingRow = null;
    }
    this.log(`RDMA path to n${peer.id} given up: ${why}`);
  }

  private onConnectRequest(e: CmEvent): void {
    const pd = e.privateData;
    const reject = (why: string): void => {
      this.tryVerbs(() => this.device.reject(e.connId));
      this.metrics.rdmaSetupFailures++;
      this.report({ kind: 'handshake', peer: null, remote: '', message: `RDMA connect request refused: ${why}` });
    };
    if (pd.byteLength < privateDataBytes || !privateMagic.every((v, i) => pd[i] === v) || pd[4] !== privateVersion) return reject('not a derecho-ts RDMA connect request');
    const from = new DataView(pd.buffer, pd.byteOffset, pd.byteLength).getUint32(8, true);
    const session = hex(pd.subarray(12, 12 + sessionBytes));
    const peer = this.peers.get(from);
    if (!peer || peer.state !== 'answered' || peer.session !== session) return reject(`n${from} has no RDMA session ${session.slice(0, 8)}… answered over its authenticated connection`);
    try {
      peer.sendDepth = this.sendDepthFor(peer.remote!.geometry);
      this.reserveCq(peer, peer.sendDepth + recvDepthFor(this.geometry, peer.remote!.geometry));
      peer.connId = e.connId;
      this.byConn.set(e.connId, peer);
      this.device.accept(e.connId, new Uint8Array(0), peer.sendDepth, recvDepthFor(this.geometry, peer.remote!.geometry));
      this.postInitialRecvs(peer);
      peer.state = 'connecting';
    } catch (err) {
      if (peer.connId !== e.connId) this.tryVerbs(() => this.device.reject(e.connId));
      this.setupFailed(peer, `cannot accept the RDMA connection: ${err instanceof Error ? err.message : String(err)}`, true);
    }
  }

  private postInitialRecvs(peer: RdmaPeer): void {
    if (peer.recvsPosted) return;
    this.device.postRecv(peer.connId!, 0, recvDepthFor(this.geometry, peer.remote!.geometry));
    peer.recvsPosted = true;
  }

  private openPath(peer: RdmaPeer): void {
    const g = peer.remote!.geometry;
    peer.state = 'open';
    peer.attempts = 0;
    peer.rowNext = 0;
    peer.rowCredits = g.rowSlots;
    peer.ringNext = 0;
    peer.ringCredits = g.ringSlots;
    peer.sendsOutstanding = 0;
    peer.ringRead = 0;
    peer.assembly = [];
    peer.assemblyBytes = 0;
    peer.releasedRing = 0;
    peer.releasedRow = 0;
    this.metrics.connectionsOpen++;
    if (peer.everOpen) this.metrics.reconnects++;
    peer.everOpen = true;
    this.log(`RDMA path to n${peer.id} open (device ${this.device.name})`);
    this.flushPeer(peer);
    if (peer.blocked || this.tcpFallback) this.emitDrain(peer.id);
  }

  /** A failed setup attempt: teardown, and the dialer tries again later (backing off). */
  private setupFailed(peer: RdmaPeer, why: string, notifyPeer: boolean): void {
    this.metrics.rdmaSetupFailures++;
    this.report({ kind: 'connect', peer: peer.id, remote: '', message: why });
    this.teardown(peer, why, notifyPeer, true);
  }

  /** Ends the peer's RDMA path or setup attempt; queued frames stay (bounded) for the next path. */
  private teardown(peer: RdmaPeer, why: string, notifyPeer: boolean, quiet = false): void {
    if (peer.state === 'idle' && peer.connId === null) return;
    const wasOpen = peer.state === 'open';
    if (notifyPeer && peer.session && this.control.connected(peer.id)) this.sendControl(peer.id, { t: 'reset', session: peer.session, reason: why.slice(0, 200) });
    if (peer.connId !== null) {
      const connId = peer.connId;
      this.byConn.delete(connId);
      this.tryVerbs(() => this.device.disconnect(connId));
    }
    if (peer.current) {
      this.metrics.rdmaFramesLost++;
      peer.queuedFrames--;
      peer.queuedBytes -= peer.current.frame.bytes;
      peer.current = null;
    }
    this.cqEntriesInUse -= peer.cqEntries;
    peer.cqEntries = 0;
    peer.connId = null;
    peer.state = 'idle';
    peer.session = null;
    peer.peerReady = false;
    peer.recvsPosted = false;
    peer.remote = null;
    peer.assembly = [];
    peer.assemblyBytes = 0;
    peer.recvsToRepost = 0;
    peer.attempts++;
    peer.retryAt = Date.now() + Math.min(setupRetryDelayMaxMs, this.setupRetryDelayMs * 2 ** Math.min(peer.attempts - 1, 10));
    this.pipeline.forget(peer.id, why);
    if (wasOpen) {
      this.metrics.connectionsOpen--;
      if (!quiet) this.log(`RDMA path to n${peer.id} closed: ${why}`);
    }
  }

  // ==========================================================================================
  // Sending
  // ==========================================================================================

  private sendOverTcp(to: NodeId, message: WireMessage): boolean {
    const ok = this.control.send(to, message);
    if (ok) this.metrics.rdmaFallbackFrames++;
    return ok;
  }

  private encode(message: WireMessage, to: NodeId | null): Outgoing | null {
    try {
      return this.codec.encodeParts(message);
    } catch (e) {
      this.metrics.dropsEncode++;
      const msg = e instanceof CodecError ? e.message : `unexpected encode failure: ${e instanceof Error ? e.message : String(e)}`;
      this.report({ kind: 'encode', peer: to, remote: '', message: msg });
      return null;
    }
  }

  private hasRoom(peer: RdmaPeer, bytes: number): boolean {
    return peer.queuedFrames < this.outgoingFramesMax && (peer.queuedFrames === 0 || peer.queuedBytes + bytes <= this.outgoingBytesMax);
  }

  private enqueue(peer: RdmaPeer, frame: Outgoing): boolean {
    if (!this.hasRoom(peer, frame.bytes)) {
      this.metrics.dropsQueueFull++;
      peer.blocked = true;
      return false;
    }
    peer.queue.push(frame);
    peer.queuedFrames++;
    peer.queuedBytes += frame.bytes;
    this.scheduleFlush(peer);
    return true;
  }

  /** Rows: only the newest waiting row is kept; a row too big for a row slot goes through the ring. */
  private queueRow(peer: RdmaPeer, frame: Outgoing): boolean {
    const slotBytes = peer.remote?.geometry.rowSlotBytes ?? this.geometry.rowSlotBytes;
    if (slotHeaderBytes + frame.bytes > slotBytes) return this.enqueue(peer, frame);
    if (peer.pendingRow) this.metrics.rdmaRowsCoalesced++;
    peer.pendingRow = frame;
    this.scheduleFlush(peer);
    return true;
  }

  private scheduleFlush(peer: RdmaPeer): void {
    if (peer.state !== 'open') return;
    this.dirty.add(peer);
    if (this.flushScheduled) return;
    this.flushScheduled = setImmediate(() => {
      this.flushScheduled = null;
      const peers = [...this.dirty];
      this.dirty.clear();
      for (const p of peers) this.flushPeer(p);
    });
  }

  private post(peer: RdmaPeer, offset: number, length: number, immValueOrNull: number | null): void {
    const remote = peer.remote!;
    this.device.postWrite(peer.connId!, this.wrId++, peer.staging!.handle, offset, length, remote.addr + BigInt(offset), remote.rkey, immValueOrNull);
    if (this.wrId > Number.MAX_SAFE_INTEGER - 1) this.wrId = 1;
    peer.sendsOutstanding++;
    this.metrics.rdmaWritesPosted++;
  }

  /** Writes what credits allow: credits owed to the peer, the newest row, then ring fragments. */
  private flushPeer(peer: RdmaPeer): void {
    if (peer.state !== 'open' || this.closed) return;
    try {
      this.writeCredits(peer);
      this.writeRow(peer);
      this.writeFragments(peer);
    } catch (e) {
      this.metrics.protocolErrors++;
      this.teardown(peer, `posting an RDMA write failed: ${e instanceof Error ? e.message : String(e)}`, true);
      return;
    }
    if (peer.blocked && this.hasRoom(peer, 0)) this.emitDrain(peer.id);
  }

  private writeCredits(peer: RdmaPeer): void {
    for (const lane of ['ring', 'row'] as const) {
      const released = lane === 'ring' ? peer.releasedRing : peer.releasedRow;
      if (released === 0 || peer.sendsOutstanding >= peer.sendDepth) continue;
      const count = Math.min(released, creditCountMax);
      this.post(peer, 0, 0, imm(ImmKind.credit, (lane === 'row' ? creditLaneRow : 0) | count));
      if (lane === 'ring') peer.releasedRing -= count;
      else peer.releasedRow -= count;
      this.metrics.rdmaCreditWrites++;
    }
  }

  private writeRow(peer: RdmaPeer): void {
    const row = peer.pendingRow;
    if (!row || peer.rowCredits === 0 || peer.sendsOutstanding >= peer.sendDepth) return;
    const g = peer.remote!.geometry;
    if (slotHeaderBytes + row.bytes > g.rowSlotBytes) {
      peer.pendingRow = null;
      this.enqueue(peer, row);
      return;
    }
    const slot = peer.rowNext % g.rowSlots;
    const at = rowSlotOffset(g, slot);
    const staging = new Uint8Array(peer.staging!.buffer);
    new DataView(peer.staging!.buffer).setUint32(at, row.bytes, true);
    copyParts(row.parts, 0, row.bytes, staging, at + slotHeaderBytes);
    this.post(peer, at, slotHeaderBytes + row.bytes, imm(ImmKind.row, slot));
    peer.pendingRow = null;
    peer.rowNext++;
    peer.rowCredits--;
    this.metrics.rdmaRowsWritten++;
    this.metrics.framesSent++;
    this.metrics.bytesSent += row.bytes;
  }

  private writeFragments(peer: RdmaPeer): void {
    const g = peer.remote!.geometry;
    const staging = new Uint8Array(peer.staging!.buffer);
    const view = new DataView(peer.staging!.buffer);
    while ((peer.current || peer.queue.length > 0) && peer.ringCredits > 0 && peer.sendsOutstanding < peer.sendDepth) {
      if (!peer.current) peer.current = { frame: peer.queue.shift()!, offset: 0 };
      const { frame } = peer.current;
      const slot = peer.ringNext % g.ringSlots;
      const room = fragmentBytesMax(g, slot, peer.ringCredits);
      const left = frame.bytes - peer.current.offset;
      // A fragment smaller than the frame's rest only when it must be; never an empty one.
      if (room <= 0) break;
      const at = ringSlotOffset(g, slot);
      let bytes = Math.min(left, room);
      copyParts(frame.parts, peer.current.offset, bytes, staging, at + slotHeaderBytes);
      const last = bytes === left;
      let frames = 0;
      if (last) {
        this.frameWritten(peer, frame);
        frames++;
        // A frame written whole: the whole frames queued behind it that fit join it (one write, one
        // completion at each end, however many small frames).
        if (peer.current.offset === 0) {
          while (frames < batchFramesMax && peer.queue.length > 0 && bytes + peer.queue[0]!.bytes <= room) {
            const next = peer.queue.shift()!;
            copyParts(next.parts, 0, next.bytes, staging, at + slotHeaderBytes + bytes);
            bytes += next.bytes;
            this.frameWritten(peer, next);
            frames++;
          }
        }
        peer.current = null;
      } else peer.current.offset += bytes;
      view.setUint32(at, bytes, true);
      this.post(peer, at, slotHeaderBytes + bytes, imm(last ? ImmKind.last : ImmKind.fragment, peer.ringNext & immValueMask));
      const slots = fragmentSlots(g, bytes);
      peer.ringNext += slots;
      peer.ringCredits -= slots;
      this.metrics.rdmaFragmentsWritten++;
    }
  }

  private frameWritten(peer: RdmaPeer, frame: Outgoing): void {
    peer.queuedFrames--;
    peer.queuedBytes -= frame.bytes;
    this.metrics.framesSent++;
    this.metrics.bytesSent += frame.bytes;
  }

  private emitDrain(id: NodeId): void {
    const peer = this.peers.get(id);
    if (peer) peer.blocked = false;
    for (const h of this.drainHandlers) {
      try {
        h(id);
      } catch (e) {
        this.report({ kind: 'handler', peer: id, remote: '', message: `onDrain handler threw: ${e instanceof Error ? e.message : String(e)}` });
      }
    }
  }

  // ==========================================================================================
  // Receiving
  // ==========================================================================================

  private onVerbsEvent(e: VerbsEvent): void {
    if (this.closed) return;
    if (e.kind === 'fatal') {
      this.report({ kind: 'socket', peer: null, remote: '', message: e.message });
      for (const peer of this.peers.values()) this.teardown(peer, e.message, true);
      return;
    }
    if (e.kind === 'cm') return this.onCm(e.event);
    const touched = new Set<RdmaPeer>();
    for (const c of e.completions) {
      const peer = this.byConn.get(c.connId);
      if (!peer || (peer.state !== 'open' && peer.state !== 'established' && peer.state !== 'connecting')) continue;
      touched.add(peer);
      this.onCompletion(peer, c);
    }
    for (const peer of touched) {
      if (peer.state !== 'open' || peer.connId === null) continue;
      if (peer.recvsToRepost > 0) {
        const n = peer.recvsToRepost;
        peer.recvsToRepost = 0;
        try {
          this.device.postRecv(peer.connId, 0, n);
        } catch (err) {
          this.teardown(peer, `cannot post receives: ${err instanceof Error ? err.message : String(err)}`, true);
          continue;
        }
      }
      this.flushPeer(peer);
    }
  }

  private onCompletion(peer: RdmaPeer, c: Completion): void {
    if (c.status !== 0) {
      this.teardown(peer, `RDMA ${c.opcode === WcOpcode.rdmaWrite ? 'write' : 'receive'} failed: ${wcStatusName(c.status)}`, true);
      return;
    }
    if (c.opcode === WcOpcode.rdmaWrite) {
      peer.sendsOutstanding--;
      return;
    }
    if (c.opcode !== WcOpcode.recvRdmaWithImm || c.imm === null) return this.peerFault(peer, `unexpected completion opcode ${c.opcode}`);
    peer.recvsToRepost++;
    if (peer.state !== 'open') {
      // The peer opened first and wrote before our ready: its frames are legitimate; hold the path open.
      if (peer.state === 'established') this.openPath(peer);
      else return this.peerFault(peer, 'a write with immediate before the path was established');
    }
    const kind = immKind(c.imm);
    const value = immValue(c.imm);
    switch (kind) {
      case ImmKind.row: return this.onRow(peer, value);
      case ImmKind.fragment:
      case ImmKind.last: return this.onFragment(peer, value, kind === ImmKind.last);
      case ImmKind.credit: return this.onCredit(peer, value);
      default: return this.peerFault(peer, `unknown immediate kind ${kind}`);
    }
  }

  /** Bad input from a peer: its RDMA path goes (reported), the process stays. */
  private peerFault(peer: RdmaPeer, why: string): void {
    this.metrics.protocolErrors++;
    this.report({ kind: 'protocol', peer: peer.id, remote: '', message: `RDMA path: ${why}` });
    this.teardown(peer, why, true);
  }

  private onRow(peer: RdmaPeer, slot: number): void {
    const g = this.geometry;
    if (slot >= g.rowSlots) return this.peerFault(peer, `row slot ${slot} is not below rowSlots ${g.rowSlots}`);
    const at = rowSlotOffset(g, slot);
    const area = peer.recvArea!;
    const bytes = new DataView(area.buffer).getUint32(at, true);
    if (bytes < 5 || slotHeaderBytes + bytes > g.rowSlotBytes) return this.peerFault(peer, `row of ${bytes} bytes does not fit a row slot of ${g.rowSlotBytes} bytes`);
    const frame = new Uint8Array(area.buffer, at + slotHeaderBytes, bytes).slice();
    peer.releasedRow++;
    this.onFrame(peer, frame);
  }

  private onFragment(peer: RdmaPeer, seq: number, last: boolean): void {
    const g = this.geometry;
    if (seq !== (peer.ringRead & immValueMask)) return this.peerFault(peer, `fragment at ring slot ${seq}, expected ${peer.ringRead & immValueMask}`);
    const slot = peer.ringRead % g.ringSlots;
    const at = ringSlotOffset(g, slot);
    const area = peer.recvArea!;
    const bytes = new DataView(area.buffer).getUint32(at, true);
    if (bytes < 1 || bytes > fragmentBytesMax(g, slot, g.ringSlots)) return this.peerFault(peer, `fragment of ${bytes} bytes at ring slot ${slot} does not fit before the end of the ring`);
    const frameBytesMax = this.codec.limits.frameBytesMax;
    if (peer.assemblyBytes === 0 && bytes >= 4) {
      // The frame's own length field, in its first fragment: refuse an oversized frame before buffering it.
      const announced = new DataView(area.buffer).getUint32(at + slotHeaderBytes, false);
      if (announced > frameBytesMax) return this.peerFault(peer, `frame of ${announced} bytes announced, over frameBytesMax ${frameBytesMax}`);
    }
    if (peer.assemblyBytes > 0 && peer.assemblyBytes + bytes > frameBytesMax + 4) return this.peerFault(peer, `a frame of more than ${frameBytesMax + 4} bytes (over frameBytesMax ${frameBytesMax})`);
    peer.assembly.push(new Uint8Array(area.buffer, at + slotHeaderBytes, bytes).slice());
    peer.assemblyBytes += bytes;
    const slots = fragmentSlots(g, bytes);
    peer.ringRead += slots;
    peer.releasedRing += slots;
    if (!last) return;
    const parts = peer.assembly;
    const total = peer.assemblyBytes;
    peer.assembly = [];
    peer.assemblyBytes = 0;
    let batch: Uint8Array;
    if (parts.length === 1) batch = parts[0]!;
    else {
      batch = new Uint8Array(total);
      let pos = 0;
      for (const p of parts) {
        batch.set(p, pos);
        pos += p.byteLength;
      }
    }
    // One frame, or (written whole in one fragment) several frames back to back.
    const v = new DataView(batch.buffer, batch.byteOffset, batch.byteLength);
    for (let pos = 0; pos < batch.byteLength;) {
      if (batch.byteLength - pos < 5) return this.peerFault(peer, `${batch.byteLength - pos} bytes after the last whole frame of a fragment`);
      const length = v.getUint32(pos, false);
      if (length > frameBytesMax) return this.peerFault(peer, `frame of ${length} bytes announced, over frameBytesMax ${frameBytesMax}`);
      if (pos + 4 + length > batch.byteLength) return this.peerFault(peer, `frame of ${length} bytes announced with ${batch.byteLength - pos - 4} bytes left in its fragment`);
      const frame = batch.subarray(pos, pos + 4 + length);
      pos += 4 + length;
      this.onFrame(peer, frame);
      if (peer.state !== 'open') return; // the frame's fault closed the path
    }
  }

  private onCredit(peer: RdmaPeer, value: number): void {
    const g = peer.remote!.geometry;
    const count = value & creditCountMax;
    if (value & creditLaneRow) {
      peer.rowCredits += count;
      if (peer.rowCredits > g.rowSlots) return this.peerFault(peer, `row credits ${peer.rowCredits} over rowSlots ${g.rowSlots}`);
    } else {
      peer.ringCredits += count;
      if (peer.ringCredits > g.ringSlots) return this.peerFault(peer, `ring credits ${peer.ringCredits} over ringSlots ${g.ringSlots}`);
    }
  }

  private onFrame(peer: RdmaPeer, frame: Uint8Array): void {
    const r = this.codec.decode(frame);
    if (!r.ok) return this.peerFault(peer, `bad frame: ${r.error}`);
    if (r.message.from !== peer.id) return this.peerFault(peer, `${r.message.kind} message claims to be from n${r.message.from} on the RDMA path of n${peer.id}`);
    this.metrics.framesReceived++;
    this.metrics.bytesReceived += frame.byteLength;
    if (r.message.kind === 'block') return this.pipeline.receive(r.message, peer.id, '');
    if (this.copyPayloads) {
      if (r.message.kind === 'data' && r.message.payload) r.message.payload = r.message.payload.slice();
      else if (r.message.kind === 'stateTransfer') for (const rec of r.message.records) rec.payload = rec.payload.slice();
    }
    this.deliver(peer.id, r.message);
  }

  /** Frames over the control connection: RDMA setup, or (a peer without an RDMA path) ordinary frames. */
  private onControlTransport(from: NodeId, m: WireMessage): void {
    if (this.closing) return;
    if (m.kind === 'app' && isControl(m.body)) return this.onControl(from, m.body);
    if (m.kind === 'block') return; // blocks travel over RDMA only; a TCP-only peer's multicasts arrive whole
    this.deliver(from, m);
  }

  private deliver(from: NodeId, message: WireMessage): void {
    for (const h of this.messageHandlers) {
      try {
        h(from, message);
      } catch (e) {
        this.report({ kind: 'handler', peer: from, remote: '', message: `onMessage handler threw: ${e instanceof Error ? e.stack ?? e.message : String(e)}` });
      }
    }
  }

  private report(e: TransportError): void {
    this.log(`${e.kind}${e.peer !== null ? ` n${e.peer}` : ''}${e.remote ? ` (${e.remote})` : ''}: ${e.message}`);
    for (const h of this.errorHandlers) {
      try {
        h(e);
      } catch (err) {
        this.log(`onError handler threw: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  }

  private tryVerbs(f: () => unknown): void {
    try {
      f();
    } catch (e) {
      this.log(`verbs: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  // ==========================================================================================
  // Binomial pipeline (blocks are frames on the ring: writes with immediate)
  // ==========================================================================================

  private sendBlock(to: NodeId, block: BlockFrame): boolean {
    const peer = this.closing ? null : this.reachable(to);
    const encoded = peer ? this.encode(block, to) : null;
    if (peer && encoded && this.enqueue(peer, encoded)) return true;
    this.metrics.pipelineBlockDrops++;
    return false;
  }
}
