// TCP transport of the node agent: frames (codec.ts) over one authenticated connection per peer pair.
//
// Runs on the agent's single event loop. Summary:
//  - listen(host, port) accepts peers; setPeers({ nodeId -> "host:port" }) says whom to dial (the map
//    follows the views). Peers not in the map (joiners) may still connect in and be answered.
//  - send(to, message) encodes and queues into the peer's bounded queue; every frame queued during one
//    event-loop turn goes out in ONE socket write (flushed from setImmediate), like Derecho's batched
//    SST pushes. A full queue drops the frame (send returns false): the core retransmits.
//  - Backpressure: writable(to) is false when the queue is full or the socket holds more than
//    socketBufferBytesMax unsent bytes; onDrain(cb) reports when a blocked peer can take frames again.
//  - Handshake: both sides prove knowledge of the group secret and their node id with HMAC-SHA256 over
//    fresh nonces (and/or mutual TLS, the node id taken from the certificate's CN). A connection that
//    fails or times out the handshake is closed and reported. updateTlsCredentials() replaces the TLS
//    credentials (a renewed certificate, a CA bundle) for the handshakes that follow.
//  - One connection per pair: the lower node id dials first (the higher one waits higherIdDialDelayMs);
//    when both connections exist anyway, both ends keep the one dialed by the lower id, unless the peer
//    restarted (a new process instance), whose newer connection wins. The loser is no longer written
//    to but still read for retireGraceMs, then ended. Frames sent around such a switch may be lost or
//    arrive out of order across the two connections: the core tolerates both (it retransmits data by
//    index and keeps the row with the highest pushCount).
//  - Reconnect with capped exponential backoff and jitter while the peer stays in the map.
//  - A malformed frame, a failed decode, or a message whose `from` is not the authenticated peer closes
//    that connection only (reported through onError and the log).
//  - multicast(to, message) sends one message to several peers. A frame of at least
//    pipelineThresholdBytes to two or more peers goes over the binomial pipeline (block-relay.ts, as
//    Derecho's RDMC): encoded once, cut into blocks of at most pipelineBlockBytes, and the receivers
//    relay blocks to each other, so this node sends each block about once. A receiver hands the
//    reassembled message to onMessage as if it came from the origin. Smaller messages go directly.
//  - Every queue and buffer is bounded; `metrics` holds plain counters.

import { X509Certificate, createHmac, createPrivateKey, randomBytes, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import { clearImmediate, setImmediate } from 'node:timers';
import tls from 'node:tls';
import type { NodeId } from '../core/types.ts';
import { BlockRelay } from './block-relay.ts';
import { Codec, CodecError, FrameType, frameHeaderBytes, rawFrame, u32Max } from './codec.ts';
import type { BlockFrame, CodecLimits, WireMessage } from './codec.ts';
import { FrameReader } from './frame-reader.ts';
import { PipelineEndpoint } from './pipeline-endpoint.ts';
import type { RawFrame } from './frame-reader.ts';

export interface TlsOptions {
  /** CA certificate(s) that sign every node's certificate (PEM). */
  ca: string | Buffer | (string | Buffer)[];
  /** This node's certificate (PEM); its subject CN is the node id ("7" or "node-7"). */
  cert: string | Buffer;
  key: string | Buffer;
}

export interface TcpTransportOptions {
  nodeId: NodeId;
  /** Shared group secret for the HMAC handshake (at least 16 bytes; 32 random bytes recommended). */
  secret?: string | Uint8Array;
  /** Mutual TLS. With `secret` too, both checks apply. At least one of the two is required. */
  tls?: TlsOptions;
  /** Codec limits (frameBytesMax, payloadBytesMax, membersMax, shardsMax, ...). */
  limits?: Partial<CodecLimits>;
  /** Bound of the per-peer outgoing queue, frames. */
  outgoingFramesMax?: number;
  /** Bound of the per-peer outgoing queue, bytes. */
  outgoingBytesMax?: number;
  /** Above this many unsent bytes in a socket, frames wait in the queue and writable() is false. */
  socketBufferBytesMax?: number;
  /** A connection not authenticated within this time (from its creation) is closed. */
  handshakeTimeoutMs?: number;
  /** Frame bound before authentication (handshake frames are small). */
  handshakeFrameBytesMax?: number;
  reconnectDelayMinMs?: number;
  reconnectDelayMaxMs?: number;
  /** The higher node id of a pair waits this long before dialing, so the lower one usually dials. */
  higherIdDialDelayMs?: number;
  /** Bound of simultaneous connections (inbound and outbound, any state). */
  connectionsMax?: number;
  /** Bound of inbound connections still in their handshake. */
  handshakesMax?: number;
  /** close(): time given to connections to finish their writes before they are destroyed. */
  closeTimeoutMs?: number;
  /**
   * A duplicate connection that loses the tie-break is no longer written to, but is still read for this
   * long (frames the peer wrote into it before it saw the duplicate get delivered), then ended.
   */
  retireGraceMs?: number;
  keepAliveMs?: number;
  /**
   * Copy received payloads (data messages, state-transfer records) out of the receive buffers. Off by
   * default (zero-copy): a payload is then a view that keeps its whole socket chunk alive, which matters
   * only if the application retains many small payloads for long.
   */
  copyPayloads?: boolean;
  /**
   * multicast(): block size of the binomial pipeline, bytes. 0 disables the pipeline for this node's
   * multicasts (it still relays and reassembles blocks other nodes send). Default 1 MiB, or less when a
   * block frame of that size would not fit in frameBytesMax (see pipelineBlockBytesMax).
   */
  pipelineBlockBytes?: number;
  /** multicast(): frames of at least this many bytes to 2 or more peers use the pipeline. Default 2 * pipelineBlockBytes. */
  pipelineThresholdBytes?: number;
  /** Bound of the pipelined messages partly received at once (each holds its whole frame). Default 16. */
  pipelineAssembliesMax?: number;
  /** Bound of the bytes of the pipelined messages partly received at once. Default 4 * (frameBytesMax + 4). */
  pipelineAssemblyBytesMax?: number;
  /** A partly received pipelined message that gets no block for between this and twice this long is dropped. */
  pipelineStallMs?: number;
  log?: (line: string) => void;
  /** Randomness for backoff jitter (default Math.random). */
  random?: () => number;
}

const DEFAULTS = {
  outgoingFramesMax: 8192,
  outgoingBytesMax: 32 << 20,
  socketBufferBytesMax: 4 << 20,
  handshakeTimeoutMs: 5000,
  handshakeFrameBytesMax: 256,
  reconnectDelayMinMs: 50,
  reconnectDelayMaxMs: 5000,
  higherIdDialDelayMs: 100,
  connectionsMax: 1024,
  handshakesMax: 64,
  closeTimeoutMs: 1000,
  retireGraceMs: 1000,
  keepAliveMs: 10_000,
  pipelineAssembliesMax: 16,
  pipelineStallMs: 10_000,
};

/** Default block size of the binomial pipeline (multicast()), bytes. */
export const DEFAULT_PIPELINE_BLOCK_BYTES = 1 << 20;

/**
 * The largest block whose block frame fits in frameBytesMax whoever relays it: the frame header, the
 * varints (from, origin, messageId, blockIndex, blockCount, totalBytes, member count) at their widest
 * and membersMax member ids of 5 bytes.
 */
export function pipelineBlockBytesMax(limits: Pick<CodecLimits, 'frameBytesMax' | 'membersMax'>): number {
  const blockHeaderBytesMax = frameHeaderBytes + 5 + 5 + 8 + 5 + 5 + 5 + 5 + 5 * limits.membersMax;
  return limits.frameBytesMax + 4 - blockHeaderBytesMax;
}

export type TransportErrorKind =
  | 'handshake' // authentication failed or timed out
  | 'protocol' // malformed frame, failed decode, forged `from`
  | 'connect' // dial failed
  | 'socket' // socket error on an open connection
  | 'limit' // a connection refused by connectionsMax / handshakesMax
  | 'encode' // send() of a message the codec refuses
  | 'handler' // an onMessage / onDrain callback threw
  | 'server'; // listening socket error

export interface TransportError {
  kind: TransportErrorKind;
  /** The (claimed or authenticated) peer, when known. */
  peer: NodeId | null;
  remote: string;
  message: string;
}

/** Plain counters, for the agent to export. */
export interface TransportMetrics {
  framesSent: number;
  bytesSent: number;
  /** socket.write calls carrying message frames (one per peer per flushed turn). */
  socketWrites: number;
  framesReceived: number;
  bytesReceived: number;
  /** send() refused: the peer's queue was full. */
  dropsQueueFull: number;
  /** Queued rows replaced by a newer row of the same node before they were written. */
  rowsSuperseded: number;
  /** send() refused: no address and no connection for the peer (or the peer is this node). */
  dropsUnreachable: number;
  /** send() refused: the codec refused the message. */
  dropsEncode: number;
  /** Queued frames discarded (peer removed from the map, inbound-only peer gone, transport closed). */
  dropsDiscarded: number;
  dials: number;
  /** Connections authenticated again to a peer after its previous connection was lost. */
  reconnects: number;
  accepted: number;
  handshakeFailures: number;
  protocolErrors: number;
  duplicateConnections: number;
  /** Gauge: authenticated connections open now. */
  connectionsOpen: number;
  /** multicast() calls sent over the binomial pipeline (this node the origin). */
  pipelineMessagesSent: number;
  /** Blocks this node queued as the origin of pipelined messages. */
  pipelineBlocksSent: number;
  /** Blocks this node queued as a relay (a receiver forwarding blocks of other nodes' messages). */
  pipelineBlocksRelayed: number;
  /** Pipeline blocks refused by the peer's queue or unreachable peers (origin's or relays). */
  pipelineBlockDrops: number;
  /** Pipeline blocks received and accepted. */
  pipelineBlocksReceived: number;
  /** Pipelined messages reassembled, decoded and handed to onMessage. */
  pipelineMessagesCompleted: number;
  /** Pipeline blocks refused (invalid, or over the assembly bounds) and reassembled frames that failed to decode. */
  pipelineErrors: number;
  /** Partly received pipelined messages dropped (their origin's connection lost, or stalled). */
  pipelineAssembliesDropped: number;
  /** Gauge: pipelined messages partly received now. */
  pipelineAssembliesOpen: number;
  /** Gauge: bytes held for pipelined messages partly received now. */
  pipelineBytesInFlight: number;
}

export type MessageHandler = (from: NodeId, message: WireMessage) => void;

export interface ConnectionInfo {
  peer: NodeId | null;
  outbound: boolean;
  state: ConnState;
  active: boolean;
  remote: string;
}

type ConnState = 'connecting' | 'awaitHello' | 'awaitChallenge' | 'awaitProof' | 'awaitOk' | 'open' | 'closed';

interface Conn {
  serial: number;
  socket: net.Socket;
  outbound: boolean;
  state: ConnState;
  reader: FrameReader;
  remote: string;
  /** Outbound: the node we dialed. */
  expectedPeer: NodeId | null;
  peerId: NodeId | null;
  peerInstance: Buffer | null;
  myNonce: Buffer;
  peerNonce: Buffer | null;
  timer: ReturnType<typeof setTimeout> | null;
  openSeq: number;
  /** Superseded by another connection to the same peer: ending, no longer written to. */
  retired: boolean;
  /** failConn reported an error for this connection already. */
  failed: boolean;
  /** Closed on purpose (removed, retired, transport closing): its loss is not an error. */
  quiet: boolean;
  lastError: string | null;
  closed: Promise<void>;
}

interface Peer {
  id: NodeId;
  address: { host: string; port: number } | null;
  conn: Conn | null;
  dialing: Conn | null;
  timer: ReturnType<typeof setTimeout> | null;
  attempts: number;
  everConnected: boolean;
  /** Frames waiting for the socket, oldest first from `queueHead` (each frame: its parts, in order). */
  queue: QueuedFrame[];
  queueHead: number;
  queuedFrames: number;
  queuedBytes: number;
  /** writable() said no or a send was refused: report the next drain. */
  blocked: boolean;
  /** The latest state-table row for this peer, not yet written: it goes out ahead of `queue`. */
  queuedRow: Uint8Array | null;
}

const handshakeVersion = 1;
const modeHmac = 1;
const modeTls = 2;
const nonceBytes = 32;
const instanceBytes = 16;
const macBytes = 32;
const helloBytes = 2 + 4 + 4 + instanceBytes + nonceBytes;
const challengeBytes = 2 + 4 + instanceBytes + nonceBytes; // + macBytes with HMAC
const labelAcceptor = Buffer.from('derecho-ts/1 acceptor');
const labelDialer = Buffer.from('derecho-ts/1 dialer');

/** Parses "host:port" or "[v6]:port". */
export function parseAddress(address: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(address) ?? /^([^:[\]]+):(\d{1,5})$/.exec(address);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 1 && port <= 65535)) throw new TypeError(`peer address ${JSON.stringify(address)} is not host:port`);
  return { host: m[1]!, port };
}

/** The node id in a certificate's subject CN ("7" or "node-7"), or null. */
export function certificateNodeId(cert: tls.PeerCertificate | undefined | null): NodeId | null {
  const cn: unknown = cert?.subject?.CN;
  const s = Array.isArray(cn) ? cn[0] : cn;
  const m = typeof s === 'string' ? /^(?:node-)?(\d{1,10})$/.exec(s) : null;
  if (!m) return null;
  const id = Number(m[1]);
  return id <= u32Max ? id : null;
}

/** Every PEM certificate block of `ca` (a bundle may hold several, and text between them). */
function pemCertificates(ca: TlsOptions['ca']): string[] {
  const parts = Array.isArray(ca) ? ca : [ca];
  return parts.flatMap((p) => p.toString().match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? []);
}

/**
 * Why `credentials` cannot serve node `nodeId` (null: they can). TLS itself accepts a CA file without a
 * single certificate and an empty certificate (each would then refuse every handshake), so every part is
 * parsed here first.
 */
export function tlsCredentialsProblem(credentials: TlsOptions, nodeId: NodeId): string | null {
  const cas = pemCertificates(credentials.ca);
  if (cas.length === 0) return 'the CA holds no PEM certificate (-----BEGIN CERTIFICATE-----)';
  for (const [i, pem] of cas.entries()) {
    try {
      new X509Certificate(pem);
    } catch (e) {
      return `CA certificate ${i + 1} of ${cas.length} cannot be parsed: ${errorText(e)}`;
    }
  }
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(credentials.cert);
  } catch (e) {
    return `the certificate cannot be parsed (not a PEM certificate?): ${errorText(e)}`;
  }
  let key: ReturnType<typeof createPrivateKey>;
  try {
    key = createPrivateKey(credentials.key);
  } catch (e) {
    return `the private key cannot be parsed (not an unencrypted PEM key?): ${errorText(e)}`;
  }
  if (!cert.checkPrivateKey(key)) return `the private key does not match the certificate (${cert.subject}, serial ${cert.serialNumber})`;
  const id = certificateNodeId(cert.toLegacyObject());
  if (id !== nodeId) return `the certificate is for ${id === null ? `no node id (${cert.subject})` : `node ${id}`}, this is node ${nodeId}`;
  try {
    tls.createSecureContext(secureContextOptions(credentials));
  } catch (e) {
    return `TLS refuses them: ${errorText(e)}`;
  }
  return null;
}

/** The secure-context options of both ends of a connection (listen's server, dial's client). */
function secureContextOptions(t: TlsOptions): tls.SecureContextOptions {
  return { ca: t.ca, cert: t.cert, key: t.key, minVersion: 'TLSv1.2' };
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

export class TcpTransport {
  /** The data path (AgentTransport). */
  readonly kind = 'tcp' as const;
  readonly nodeId: NodeId;
  readonly codec: Codec;
  readonly metrics: TransportMetrics = {
    framesSent: 0, bytesSent: 0, socketWrites: 0, framesReceived: 0, bytesReceived: 0,
    dropsQueueFull: 0, rowsSuperseded: 0, dropsUnreachable: 0, dropsEncode: 0, dropsDiscarded: 0,
    dials: 0, reconnects: 0, accepted: 0, handshakeFailures: 0, protocolErrors: 0, duplicateConnections: 0,
    connectionsOpen: 0,
    pipelineMessagesSent: 0, pipelineBlocksSent: 0, pipelineBlocksRelayed: 0, pipelineBlockDrops: 0,
    pipelineBlocksReceived: 0, pipelineMessagesCompleted: 0, pipelineErrors: 0, pipelineAssembliesDropped: 0,
    pipelineAssembliesOpen: 0, pipelineBytesInFlight: 0,
  };
  /** Block size of this node's pipelined multicasts, bytes (0: the pipeline is off for them). */
  readonly pipelineBlockBytes: number;
  /** Frames of at least this many bytes to 2 or more peers use the pipeline. */
  readonly pipelineThresholdBytes: number;

  private readonly opt: typeof DEFAULTS;
  private readonly secret: Buffer | null;
  /** Replaced by updateTlsCredentials; each handshake uses the credentials in force when it starts. */
  private tlsOptions: TlsOptions | null;
  private readonly mode: number;
  private readonly instance = randomBytes(instanceBytes);
  private readonly log: (line: string) => void;
  private readonly random: () => number;
  private readonly copyPayloads: boolean;
  private server: net.Server | null = null;
  private readonly peers = new Map<NodeId, Peer>();
  private readonly conns = new Set<Conn>();
  private readonly dirty = new Set<Peer>();
  private flushScheduled: ReturnType<typeof setImmediate> | null = null;
  private readonly messageHandlers: MessageHandler[] = [];
  private readonly errorHandlers: ((e: TransportError) => void)[] = [];
  private readonly drainHandlers: ((peer: NodeId) => void)[] = [];
  private connSerial = 0;
  private openCounter = 0;
  private closing: Promise<void> | null = null;
  private readonly pipeline: PipelineEndpoint;
  /** Message ids of this node's pipelined multicasts: from a random 48-bit start, so a restart does not reuse them. */

  constructor(options: TcpTransportOptions) {
    if (!Number.isInteger(options.nodeId) || options.nodeId < 0 || options.nodeId > u32Max) {
      throw new RangeError(`nodeId ${options.nodeId} is not a u32`);
    }
    this.nodeId = options.nodeId;
    this.codec = new Codec(options.limits);
    const opt = { ...DEFAULTS };
    for (const key of Object.keys(DEFAULTS) as (keyof typeof DEFAULTS)[]) {
      const v = options[key];
      if (v === undefined) continue;
      if (!Number.isFinite(v) || v < 0) throw new RangeError(`option ${key} must be a non-negative number, got ${v}`);
      opt[key] = v;
    }
    if (opt.reconnectDelayMaxMs < opt.reconnectDelayMinMs) throw new RangeError('reconnectDelayMaxMs is below reconnectDelayMinMs');
    this.opt = opt;
    const secret = options.secret;
    this.secret = secret === undefined ? null : typeof secret === 'string' ? Buffer.from(secret, 'utf8') : Buffer.from(secret);
    if (this.secret !== null && this.secret.byteLength < 16) throw new RangeError('the group secret must have at least 16 bytes');
    this.tlsOptions = options.tls ?? null;
    if (this.secret === null && this.tlsOptions === null) throw new RangeError('TcpTransport needs a group secret, TLS options, or both');
    this.mode = (this.secret ? modeHmac : 0) | (this.tlsOptions ? modeTls : 0);
    const prefix = `[transport n${this.nodeId}] `;
    const log = options.log ?? ((line: string) => console.warn(line));
    this.log = (line) => log(prefix + line);
    this.random = options.random ?? Math.random;
    this.copyPayloads = options.copyPayloads ?? false;

    const count = (name: string, value: number | undefined, fallback: number, min: number): number => {
      if (value === undefined) return fallback;
      if (!Number.isSafeInteger(value) || value < min) throw new RangeError(`option ${name} must be an integer >= ${min}, got ${value}`);
      return value;
    };
    const blockBytesMax = pipelineBlockBytesMax(this.codec.limits);
    this.pipelineBlockBytes = count('pipelineBlockBytes', options.pipelineBlockBytes, Math.max(0, Math.min(DEFAULT_PIPELINE_BLOCK_BYTES, blockBytesMax)), 0);
    if (this.pipelineBlockBytes > blockBytesMax) {
      throw new RangeError(`option pipelineBlockBytes ${this.pipelineBlockBytes} is over ${blockBytesMax}: a block frame must fit in frameBytesMax ${this.codec.limits.frameBytesMax} with a header for membersMax ${this.codec.limits.membersMax} members`);
    }
    this.pipelineThresholdBytes = count('pipelineThresholdBytes', options.pipelineThresholdBytes, 2 * this.pipelineBlockBytes, 0);
    if (!Number.isSafeInteger(opt.pipelineAssembliesMax) || opt.pipelineAssembliesMax < 1) {
      throw new RangeError(`option pipelineAssembliesMax must be an integer >= 1, got ${opt.pipelineAssembliesMax}`);
    }
    const relay = new BlockRelay({
      me: this.nodeId,
      // Only this node's own multicasts use blockBytes; receiving works with the pipeline off too.
      blockBytes: Math.max(1, this.pipelineBlockBytes || blockBytesMax),
      assembliesMax: opt.pipelineAssembliesMax,
      assemblyBytesMax: count('pipelineAssemblyBytesMax', options.pipelineAssemblyBytesMax, 4 * (this.codec.limits.frameBytesMax + 4), 1),
    });
    this.pipeline = new PipelineEndpoint({
      relay, codec: this.codec, metrics: this.metrics, stallMs: opt.pipelineStallMs,
      log: (line) => this.log(line), report: (e) => this.report(e),
      sendBlock: (to, block) => this.sendBlock(to, block),
      deliver: (origin, message, remote) => this.deliver(origin, message, remote),
      closing: () => this.closing !== null,
    });
  }

  // ==========================================================================================
  // Public API
  // ==========================================================================================

  /** Starts accepting peers. Port 0 picks an ephemeral port; the bound address is returned. */
  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    if (this.server) return Promise.reject(new Error('already listening'));
    if (this.closing) return Promise.reject(new Error('transport is closed'));
    const t = this.tlsOptions;
    const server = t
      ? tls.createServer({ ...secureContextOptions(t), requestCert: true, rejectUnauthorized: true, handshakeTimeout: this.opt.handshakeTimeoutMs })
      : net.createServer();
    this.server = server;
    server.maxConnections = this.opt.connectionsMax;
    server.on(t ? 'secureConnection' : 'connection', (socket: net.Socket) => this.onInbound(socket));
    if (t) {
      server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
        this.metrics.handshakeFailures++;
        this.report({ kind: 'handshake', peer: null, remote: `${socket.remoteAddress}:${socket.remotePort}`, message: `TLS handshake failed: ${err.message}` });
      });
    }
    return new Promise((resolve, reject) => {
      const onListenError = (err: Error) => reject(err);
      server.once('error', onListenError);
      server.listen(port, host, () => {
        server.off('error', onListenError);
        server.on('error', (err) => this.report({ kind: 'server', peer: null, remote: '', message: err.message }));
        const a = server.address() as net.AddressInfo;
        this.log(`listening on ${a.address}:${a.port}${t ? ' (TLS)' : ''}`);
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  /**
   * Replaces the TLS credentials without a restart (a renewed certificate; during a CA rotation, a CA
   * bundle holding the old and the new CA): the handshakes that start from now on, inbound and outbound,
   * use them; connections already open stay up (their handshake is done). They are checked first (see
   * tlsCredentialsProblem; the certificate's CN must still name this node): a problem throws an Error
   * naming it, and the credentials in force stay.
   */
  updateTlsCredentials(credentials: TlsOptions): void {
    if (this.tlsOptions === null) throw new Error(`updateTlsCredentials: the transport of n${this.nodeId} was created without TLS (HMAC only): there are no TLS credentials to replace`);
    const problem = tlsCredentialsProblem(credentials, this.nodeId);
    if (problem !== null) throw new Error(`TLS credentials refused, keeping the current ones: ${problem}`);
    const next: TlsOptions = { ca: credentials.ca, cert: credentials.cert, key: credentials.key };
    // The server keeps requestCert / rejectUnauthorized (server options); only its secure context changes.
    if (this.server instanceof tls.Server) this.server.setSecureContext(secureContextOptions(next));
    this.tlsOptions = next;
  }

  /** The listening address, or null. */
  address(): { host: string; port: number } | null {
    const a = this.server?.address();
    return a && typeof a === 'object' ? { host: a.address, port: a.port } : null;
  }

  /**
   * Sets the peers to keep connected: { nodeId -> "host:port" } (a Map or a plain object). New peers
   * are dialed; peers no longer listed are disconnected and their queued frames discarded.
   */
  setPeers(peers: ReadonlyMap<NodeId, string> | Readonly<Record<number, string>>): void {
    const entries: [NodeId, string][] = peers instanceof Map ? [...peers.entries()] : Object.entries(peers).map(([k, v]) => [Number(k), v as string]);
    const next = new Map<NodeId, { host: string; port: number }>();
    for (const [id, addr] of entries) {
      if (!Number.isInteger(id) || id < 0 || id > u32Max) throw new RangeError(`peer id ${id} is not a u32`);
      if (id !== this.nodeId) next.set(id, parseAddress(addr));
    }
    if (this.closing) return;
    for (const peer of [...this.peers.values()]) {
      if (peer.address && !next.has(peer.id)) this.removePeer(peer, 'removed from the peer map');
    }
    for (const [id, address] of next) {
      const peer = this.peer(id);
      peer.address = address;
      this.scheduleDial(peer);
    }
  }

  /** Same as setPeers. */
  connect(peers: ReadonlyMap<NodeId, string> | Readonly<Record<number, string>>): void {
    this.setPeers(peers);
  }

  /** The peer map currently in force. */
  peerAddresses(): Map<NodeId, string> {
    const out = new Map<NodeId, string>();
    for (const p of this.peers.values()) {
      if (p.address) out.set(p.id, p.address.host.includes(':') ? `[${p.address.host}]:${p.address.port}` : `${p.address.host}:${p.address.port}`);
    }
    return out;
  }

  /**
   * Queues `message` for `to`; it is written with everything else queued this turn. Returns false when
   * the frame is dropped: queue full, peer unknown (no address and not connected), or the codec refuses
   * the message (reported through onError). The payload is referenced until written: do not mutate it.
   */
  send(to: NodeId, message: WireMessage): boolean {
    if (this.closing) return false;
    const peer = this.reachablePeer(to);
    if (!peer) return false;
    if (message.kind === 'row') return this.sendRow(peer, message);
    if (!this.hasRoom(peer)) return false;
    const encoded = this.encode(message, to);
    return encoded !== null && this.enqueue(peer, encoded);
  }

  /**
   * State-table rows have a slot of their own per peer, like Derecho's SST, whose one-sided write of a
   * row overwrites the previous one: a newer row replaces the row queued and not yet written (its
   * counters only go up, so it says all the older one did), and the row is written ahead of the queued
   * data. So rows never wait behind a backlog of large messages (a member's view of the others'
   * progress stays fresh: stability, flow control and retransmission depend on it), and a slow socket
   * gets one row per flush, not a backlog of rows.
   */
  private sendRow(peer: Peer, message: WireMessage): boolean {
    const encoded = this.encode(message, peer.id);
    if (encoded === null) return false;
    const frame = encoded.parts.length === 1 ? encoded.parts[0]! : concat(encoded.parts, encoded.bytes);
    if (peer.queuedRow !== null) {
      peer.queuedBytes -= peer.queuedRow.byteLength;
      peer.queuedFrames--;
      this.metrics.rowsSuperseded++;
    }
    peer.queuedRow = frame;
    peer.queuedFrames++;
    peer.queuedBytes += frame.byteLength;
    if (peer.conn) this.scheduleFlush(peer);
    return true;
  }

  /**
   * Sends `message` to every peer in `to` (listed twice: once). A frame of at least
   * pipelineThresholdBytes to 2 or more peers (all of them known) is encoded once and multicast over
   * the binomial pipeline: this node sends each block about once and the receivers relay blocks to each
   * other; each receiver's onMessage gets the message from this node. Otherwise it is encoded once and
   * queued for each peer, as send() would. Returns false when a frame was refused for some peer (as
   * send(); with the pipeline, a block refused here; blocks lost further down are not seen here: the
   * receivers drop the incomplete message after pipelineStallMs). `to` holding this node counts as a
   * refused send, like send() to itself. The payload is referenced until written: do not mutate it.
   */
  multicast(to: NodeId[], message: WireMessage): boolean {
    if (this.closing) return false;
    let ok = true;
    const receivers: NodeId[] = [];
    const seen = new Set<NodeId>();
    for (const id of to) {
      if (seen.has(id)) continue;
      seen.add(id);
      if (id === this.nodeId) {
        this.metrics.dropsUnreachable++;
        ok = false;
      } else receivers.push(id);
    }
    if (receivers.length === 0) return ok;
    const encoded = this.encode(message, receivers.length === 1 ? receivers[0]! : null);
    if (encoded === null) return false;
    const pipelined = this.pipelineBlockBytes > 0 && receivers.length >= 2 && encoded.bytes >= this.pipelineThresholdBytes &&
      receivers.every((id) => this.reachablePeer(id, false) !== null);
    const sends = pipelined ? this.pipeline.start(receivers, encoded) : null;
    if (sends !== null) {
      this.metrics.pipelineMessagesSent++;
      for (const { to: peer, block } of sends) {
        if (this.sendBlock(peer, block)) this.metrics.pipelineBlocksSent++;
        else ok = false;
      }
      return ok;
    }
    for (const id of receivers) {
      const peer = this.reachablePeer(id);
      if (!peer || !this.enqueue(peer, encoded)) ok = false;
    }
    return ok;
  }

  /**
   * True when `to` can take frames now: reachable, room in its queue, and its socket not holding more
   * than socketBufferBytesMax. When false, onDrain reports the moment it becomes true.
   */
  writable(to: NodeId): boolean {
    const peer = this.peers.get(to);
    if (!peer || (!peer.address && !peer.conn) || this.closing) return false;
    const ok = this.peerWritable(peer);
    if (!ok) peer.blocked = true;
    return ok;
  }

  /** True when an authenticated connection to `to` is open. */
  connected(to: NodeId): boolean {
    return this.peers.get(to)?.conn != null;
  }

  /** Peers with an authenticated connection. */
  connectedPeers(): NodeId[] {
    return [...this.peers.values()].filter((p) => p.conn !== null).map((p) => p.id);
  }

  /** Every connection, for /status and tests. */
  connections(): ConnectionInfo[] {
    return [...this.conns].map((c) => ({
      peer: c.peerId ?? c.expectedPeer, outbound: c.outbound, state: c.state,
      active: c.peerId !== null && this.peers.get(c.peerId)?.conn === c, remote: c.remote,
    }));
  }

  /** Receives every decoded message with the authenticated peer id. Returns an unsubscribe function. */
  onMessage(handler: MessageHandler): () => void {
    return this.subscribe(this.messageHandlers, handler);
  }

  /** Connection-level problems (each also goes to the log). Returns an unsubscribe function. */
  onError(handler: (e: TransportError) => void): () => void {
    return this.subscribe(this.errorHandlers, handler);
  }

  /** A peer that was not writable (or refused a send) can take frames again. */
  onDrain(handler: (peer: NodeId) => void): () => void {
    return this.subscribe(this.drainHandlers, handler);
  }

  /**
   * Stops listening and dialing, writes what is queued, ends every connection (destroying those not
   * closed within closeTimeoutMs) and resolves once every socket and the server are closed.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.pipeline.close();
    if (this.flushScheduled) {
      clearImmediate(this.flushScheduled);
      this.flushScheduled = null;
    }
    for (const peer of this.dirty) this.flushPeer(peer);
    this.dirty.clear();
    let resolveServer: () => void = () => {};
    const serverClosed = new Promise<void>((r) => { resolveServer = r; });
    this.closing = (async () => {
      await Promise.all([serverClosed, ...[...this.conns].map((c) => c.closed)]);
    })();
    for (const peer of this.peers.values()) {
      if (peer.timer) clearTimeout(peer.timer);
      peer.timer = null;
      this.discardQueue(peer);
    }
    for (const conn of [...this.conns]) {
      if (conn.state === 'open') this.endConn(conn);
      else this.destroyConn(conn);
    }
    if (this.server) this.server.close(() => resolveServer());
    else resolveServer();
    return this.closing;
  }

  // ==========================================================================================
  // Peers, dialing
  // ==========================================================================================

  private subscribe<T>(list: T[], handler: T): () => void {
    list.push(handler);
    return () => {
      const i = list.indexOf(handler);
      if (i >= 0) list.splice(i, 1);
    };
  }

  private peer(id: NodeId): Peer {
    let p = this.peers.get(id);
    if (!p) {
      p = {
        id, address: null, conn: null, dialing: null, timer: null, attempts: 0, everConnected: false,
        queue: [], queueHead: 0, queuedFrames: 0, queuedBytes: 0, blocked: false, queuedRow: null,
      };
      this.peers.set(id, p);
    }
    return p;
  }

  private removePeer(peer: Peer, why: string): void {
    if (peer.timer) clearTimeout(peer.timer);
    peer.timer = null;
    peer.address = null;
    this.pipeline.forget(peer.id, why);
    this.discardQueue(peer);
    this.dirty.delete(peer);
    this.peers.delete(peer.id);
    for (const c of this.conns) {
      if (c.peerId === peer.id || c.expectedPeer === peer.id) {
        this.log(`closing connection #${c.serial} to n${peer.id}: ${why}`);
        if (c.state === 'open') this.endConn(c);
        else this.destroyConn(c);
      }
    }
  }

  private discardQueue(peer: Peer): void {
    this.metrics.dropsDiscarded += peer.queuedFrames;
    peer.queue = [];
    peer.queueHead = 0;
    peer.queuedRow = null;
    peer.queuedFrames = 0;
    peer.queuedBytes = 0;
  }

  private scheduleDial(peer: Peer): void {
    if (this.closing || peer.conn || peer.dialing || !peer.address || peer.timer) return;
    let delay = 0;
    if (peer.attempts > 0) {
      const base = Math.min(this.opt.reconnectDelayMaxMs, this.opt.reconnectDelayMinMs * 2 ** Math.min(peer.attempts - 1, 30));
      delay = base / 2 + (this.random() * base) / 2; // "equal jitter": [base/2, base)
    }
    if (this.nodeId > peer.id) delay = Math.max(delay, this.opt.higherIdDialDelayMs * (1 + this.random() / 2));
    peer.timer = setTimeout(() => {
      peer.timer = null;
      this.dial(peer);
    }, delay);
  }

  private dial(peer: Peer): void {
    if (this.closing || peer.conn || peer.dialing || !peer.address || this.peers.get(peer.id) !== peer) return;
    if (this.conns.size >= this.opt.connectionsMax) {
      this.report({ kind: 'limit', peer: peer.id, remote: '', message: `not dialing: connectionsMax ${this.opt.connectionsMax} reached` });
      peer.attempts++;
      this.scheduleDial(peer);
      return;
    }
    this.metrics.dials++;
    const { host, port } = peer.address;
    const t = this.tlsOptions;
    const socket = t
      ? tls.connect({
        host, port, ...secureContextOptions(t),
        checkServerIdentity: (_host, cert) => {
          const id = certificateNodeId(cert);
          return id === peer.id ? undefined : new Error(`server certificate is for node ${id ?? `CN ${JSON.stringify(cert.subject?.CN)}`}, dialed node ${peer.id}`);
        },
      })
      : net.connect({ host, port });
    const conn = this.newConn(socket, true, `${host}:${port}`);
    conn.expectedPeer = peer.id;
    peer.dialing = conn;
    socket.once(t ? 'secureConnect' : 'connect', () => {
      if (conn.state !== 'connecting') return;
      this.tuneSocket(socket);
      conn.state = 'awaitChallenge';
      const hello = Buffer.concat([
        Buffer.from([handshakeVersion, this.mode]), u32(this.nodeId), u32(peer.id), this.instance, conn.myNonce,
      ]);
      this.writeRaw(conn, rawFrame(FrameType.authHello, hello));
    });
  }

  private onInbound(socket: net.Socket): void {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    if (this.closing) {
      socket.destroy();
      return;
    }
    let handshaking = 0;
    for (const c of this.conns) if (!c.outbound && c.state !== 'open') handshaking++;
    if (this.conns.size >= this.opt.connectionsMax || handshaking >= this.opt.handshakesMax) {
      socket.destroy();
      this.report({ kind: 'limit', peer: null, remote, message: `refused: ${handshaking >= this.opt.handshakesMax ? `handshakesMax ${this.opt.handshakesMax}` : `connectionsMax ${this.opt.connectionsMax}`} reached` });
      return;
    }
    this.tuneSocket(socket);
    const conn = this.newConn(socket, false, remote);
    conn.state = 'awaitHello';
  }

  private tuneSocket(socket: net.Socket): void {
    socket.setNoDelay(true);
    socket.setKeepAlive(true, this.opt.keepAliveMs);
  }

  private newConn(socket: net.Socket, outbound: boolean, remote: string): Conn {
    let resolveClosed: () => void = () => {};
    const conn: Conn = {
      serial: ++this.connSerial, socket, outbound, state: 'connecting', remote,
      reader: new FrameReader(this.opt.handshakeFrameBytesMax),
      expectedPeer: null, peerId: null, peerInstance: null, myNonce: randomBytes(nonceBytes), peerNonce: null,
      timer: null, openSeq: 0, retired: false, failed: false, quiet: false, lastError: null,
      closed: new Promise<void>((r) => { resolveClosed = r; }),
    };
    this.conns.add(conn);
    conn.timer = setTimeout(() => {
      conn.timer = null;
      if (conn.state !== 'open' && conn.state !== 'closed') {
        this.failConn(conn, 'handshake', `handshake timed out after ${this.opt.handshakeTimeoutMs} ms (${conn.state})`);
      }
    }, this.opt.handshakeTimeoutMs);
    socket.on('data', (chunk: Buffer) => this.onData(conn, chunk));
    socket.on('error', (err: Error) => { conn.lastError = err.message; });
    socket.on('drain', () => this.onSocketDrain(conn));
    socket.on('close', () => {
      this.onClose(conn);
      resolveClosed();
    });
    return conn;
  }

  // ==========================================================================================
  // Receiving
  // ==========================================================================================

  private onData(conn: Conn, chunk: Buffer): void {
    this.metrics.bytesReceived += chunk.byteLength;
    if (conn.state === 'closed' || conn.socket.destroyed) return;
    const err = conn.reader.push(chunk, (f) => this.onFrame(conn, f));
    if (err !== null && !conn.socket.destroyed) {
      this.failConn(conn, conn.state === 'open' ? 'protocol' : 'handshake', `malformed stream: ${err}`);
    }
  }

  private onFrame(conn: Conn, f: RawFrame): boolean {
    if (conn.socket.destroyed) return false;
    if (conn.state !== 'open') return this.onHandshakeFrame(conn, f);
    if (f.type >= FrameType.authHello && f.type <= FrameType.authOk) {
      return this.failConn(conn, 'protocol', `handshake frame 0x${f.type.toString(16)} after authentication`);
    }
    const r = this.codec.decodeBody(f.type, f.body);
    if (!r.ok) return this.failConn(conn, 'protocol', `bad frame: ${r.error}`);
    const peerId = conn.peerId!;
    if (r.message.from !== peerId) {
      return this.failConn(conn, 'protocol', `${r.message.kind} message claims to be from n${r.message.from} on the authenticated connection of n${peerId}`);
    }
    this.metrics.framesReceived++;
    if (r.message.kind === 'block') {
      this.pipeline.receive(r.message, conn.peerId, conn.remote);
      return !conn.socket.destroyed;
    }
    if (this.copyPayloads) {
      if (r.message.kind === 'data' && r.message.payload) r.message.payload = r.message.payload.slice();
      else if (r.message.kind === 'stateTransfer') for (const rec of r.message.records) rec.payload = rec.payload.slice();
    }
    this.deliver(peerId, r.message, conn.remote);
    return !conn.socket.destroyed;
  }

  private deliver(from: NodeId, message: WireMessage, remote: string): void {
    for (const h of this.messageHandlers) {
      try {
        h(from, message);
      } catch (e) {
        this.report({ kind: 'handler', peer: from, remote, message: `onMessage handler threw: ${e instanceof Error ? e.stack ?? e.message : String(e)}` });
      }
    }
  }

  /** Queues one pipeline block (origin's or relayed); false when refused (counted in pipelineBlockDrops). */
  private sendBlock(to: NodeId, block: BlockFrame): boolean {
    if (this.closing) return false;
    const peer = this.reachablePeer(to);
    const encoded = peer && this.hasRoom(peer) ? this.encode(block, to) : null;
    if (peer && encoded && this.enqueue(peer, encoded)) return true;
    this.metrics.pipelineBlockDrops++;
    return false;
  }

  private mac(label: Buffer, dialerId: NodeId, acceptorId: NodeId, dialerInstance: Buffer, acceptorInstance: Buffer, dialerNonce: Buffer, acceptorNonce: Buffer): Buffer {
    return createHmac('sha256', this.secret!)
      .update(label).update(u32(dialerId)).update(u32(acceptorId))
      .update(dialerInstance).update(acceptorInstance).update(dialerNonce).update(acceptorNonce)
      .digest();
  }

  private certPeer(conn: Conn): NodeId | null {
    return certificateNodeId((conn.socket as tls.TLSSocket).getPeerCertificate?.());
  }

  private onHandshakeFrame(conn: Conn, f: RawFrame): boolean {
    const body = Buffer.from(f.body.buffer, f.body.byteOffset, f.body.byteLength);
    const fail = (msg: string) => this.failConn(conn, 'handshake', msg);
    const expectType = (type: number, name: string, size: number | null): boolean => {
      if (f.type !== type) return fail(`expected ${name}, got frame type 0x${f.type.toString(16)} (${conn.state})`);
      if (size !== null && body.byteLength !== size) return fail(`${name} of ${body.byteLength} bytes, expected ${size}`);
      return true;
    };
    const checkMode = (version: number, mode: number): boolean => {
      if (version !== handshakeVersion) return fail(`unsupported handshake version ${version}`);
      if (mode !== this.mode) return fail(`authentication mode mismatch: peer uses ${modeName(mode)}, this node ${modeName(this.mode)}`);
      return true;
    };
    switch (conn.state) {
      case 'awaitHello': {
        if (!expectType(FrameType.authHello, 'hello', helloBytes)) return false;
        if (!checkMode(body[0]!, body[1]!)) return false;
        const dialerId = body.readUInt32BE(2);
        const acceptorId = body.readUInt32BE(6);
        conn.peerId = dialerId;
        if (acceptorId !== this.nodeId) return fail(`peer n${dialerId} dialed node n${acceptorId}, this is n${this.nodeId}`);
        if (dialerId === this.nodeId) return fail(`peer claims this node's own id n${dialerId}`);
        if (this.tlsOptions) {
          const certId = this.certPeer(conn);
          if (certId !== dialerId) return fail(`peer claims n${dialerId} but its certificate is for ${certId === null ? 'no node id' : `n${certId}`}`);
        }
        conn.peerInstance = Buffer.from(body.subarray(10, 10 + instanceBytes));
        conn.peerNonce = Buffer.from(body.subarray(10 + instanceBytes));
        const parts = [Buffer.from([handshakeVersion, this.mode]), u32(this.nodeId), this.instance, conn.myNonce];
        if (this.secret) parts.push(this.mac(labelAcceptor, dialerId, this.nodeId, conn.peerInstance, this.instance, conn.peerNonce, conn.myNonce));
        conn.state = 'awaitProof';
        this.writeRaw(conn, rawFrame(FrameType.authChallenge, Buffer.concat(parts)));
        return true;
      }
      case 'awaitChallenge': {
        if (!expectType(FrameType.authChallenge, 'challenge', challengeBytes + (this.secret ? macBytes : 0))) return false;
        if (!checkMode(body[0]!, body[1]!)) return false;
        const acceptorId = body.readUInt32BE(2);
        conn.peerId = acceptorId;
        if (acceptorId !== conn.expectedPeer) return fail(`dialed n${conn.expectedPeer} at ${conn.remote} but n${acceptorId} answered`);
        if (this.tlsOptions && this.certPeer(conn) !== acceptorId) return fail(`n${acceptorId}'s certificate is not for n${acceptorId}`);
        conn.peerInstance = Buffer.from(body.subarray(6, 6 + instanceBytes));
        conn.peerNonce = Buffer.from(body.subarray(6 + instanceBytes, 6 + instanceBytes + nonceBytes));
        let proof: Buffer = Buffer.alloc(0);
        if (this.secret) {
          const got = body.subarray(challengeBytes);
          const want = this.mac(labelAcceptor, this.nodeId, acceptorId, this.instance, conn.peerInstance, conn.myNonce, conn.peerNonce);
          if (!timingSafeEqual(got, want)) return fail(`n${acceptorId} failed to prove knowledge of the group secret (wrong secret?)`);
          proof = this.mac(labelDialer, this.nodeId, acceptorId, this.instance, conn.peerInstance, conn.myNonce, conn.peerNonce);
        }
        conn.state = 'awaitOk';
        this.writeRaw(conn, rawFrame(FrameType.authProof, proof));
        return true;
      }
      case 'awaitProof': {
        if (!expectType(FrameType.authProof, 'proof', this.secret ? macBytes : 0)) return false;
        if (this.secret) {
          const want = this.mac(labelDialer, conn.peerId!, this.nodeId, conn.peerInstance!, this.instance, conn.peerNonce!, conn.myNonce);
          if (!timingSafeEqual(body, want)) return fail(`n${conn.peerId} failed to prove knowledge of the group secret (wrong secret?)`);
        }
        this.writeRaw(conn, rawFrame(FrameType.authOk));
        this.openConn(conn);
        return true;
      }
      case 'awaitOk': {
        if (!expectType(FrameType.authOk, 'ok', 0)) return false;
        this.openConn(conn);
        return true;
      }
      default:
        return fail(`unexpected frame in state ${conn.state}`);
    }
  }

  // ==========================================================================================
  // Connection lifecycle
  // ==========================================================================================

  private openConn(conn: Conn): void {
    conn.state = 'open';
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = null;
    conn.reader.frameBytesMax = this.codec.limits.frameBytesMax;
    conn.openSeq = ++this.openCounter;
    this.metrics.connectionsOpen++;
    if (!conn.outbound) this.metrics.accepted++;
    const peer = this.peer(conn.peerId!);
    if (peer.dialing === conn) peer.dialing = null;
    const current = peer.conn;
    if (current === null) {
      this.adopt(peer, conn);
      return;
    }
    if (!current.peerInstance!.equals(conn.peerInstance!)) this.pipeline.forget(peer.id, 'the peer restarted');
    const keep = this.preferred(current, conn);
    const drop = keep === current ? conn : current;
    this.metrics.duplicateConnections++;
    this.log(`duplicate connections to n${peer.id}: keeping #${keep.serial} (${keep.outbound ? 'outbound' : 'inbound'}), ending #${drop.serial}`);
    if (keep !== current) this.adopt(peer, keep);
    this.retireConn(drop);
  }

  /** Which of two open connections to the same peer both ends keep. */
  private preferred(a: Conn, b: Conn): Conn {
    if (!a.peerInstance!.equals(b.peerInstance!)) return a.openSeq > b.openSeq ? a : b; // the peer restarted
    const low = Math.min(this.nodeId, a.peerId!);
    const dialedByLow = (c: Conn) => (c.outbound ? this.nodeId : c.peerId) === low;
    if (dialedByLow(a) !== dialedByLow(b)) return dialedByLow(a) ? a : b;
    return a.openSeq > b.openSeq ? a : b;
  }

  private adopt(peer: Peer, conn: Conn): void {
    const reconnect = peer.conn === null && peer.everConnected;
    peer.conn = conn;
    if (reconnect) this.metrics.reconnects++;
    peer.everConnected = true;
    peer.attempts = 0;
    if (peer.timer) clearTimeout(peer.timer);
    peer.timer = null;
    this.log(`${reconnect ? 're' : ''}connected to n${peer.id} (#${conn.serial} ${conn.outbound ? 'outbound' : 'inbound'}, ${conn.remote})`);
    if (peer.queuedFrames > 0) this.scheduleFlush(peer);
    else this.maybeDrained(peer);
  }

  private onClose(conn: Conn): void {
    if (conn.state === 'closed') return;
    const was = conn.state;
    conn.state = 'closed';
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = null;
    conn.reader.stop();
    this.conns.delete(conn);
    if (was !== 'open') {
      if (!conn.failed && !conn.quiet && !this.closing) {
        const why = conn.lastError ?? 'closed by the peer';
        if (conn.outbound && was === 'connecting') this.report({ kind: 'connect', peer: conn.expectedPeer, remote: conn.remote, message: `dial failed: ${why}` });
        else {
          this.metrics.handshakeFailures++;
          this.report({ kind: 'handshake', peer: conn.peerId ?? conn.expectedPeer, remote: conn.remote, message: `connection lost during the handshake (${was}): ${why}` });
        }
      }
      if (conn.outbound && conn.expectedPeer !== null) {
        const peer = this.peers.get(conn.expectedPeer);
        if (peer && peer.dialing === conn) {
          peer.dialing = null;
          peer.attempts++;
          this.scheduleDial(peer);
        }
      }
      return;
    }
    this.metrics.connectionsOpen--;
    const peer = this.peers.get(conn.peerId!);
    if (!peer || peer.conn !== conn) return;
    peer.conn = null;
    this.pipeline.forget(peer.id, `connection #${conn.serial} closed`);
    if (conn.lastError && !conn.failed && !conn.quiet && !this.closing) {
      this.report({ kind: 'socket', peer: peer.id, remote: conn.remote, message: `connection #${conn.serial} lost: ${conn.lastError}` });
    } else if (!this.closing) this.log(`connection #${conn.serial} to n${peer.id} closed`);
    let other: Conn | null = null;
    for (const c of this.conns) {
      if (c.state === 'open' && !c.retired && c.peerId === peer.id && (!other || c.openSeq > other.openSeq)) other = c;
    }
    if (other) this.adopt(peer, other);
    else if (peer.address) {
      peer.attempts = Math.max(peer.attempts, 1);
      this.scheduleDial(peer);
    } else {
      this.discardQueue(peer);
      this.dirty.delete(peer);
      this.peers.delete(peer.id);
    }
  }

  /** Reports and destroys; returns false (convenient as a frame-sink result). */
  private failConn(conn: Conn, kind: TransportErrorKind, message: string): false {
    if (conn.state === 'closed' || conn.socket.destroyed) return false;
    if (!conn.failed) {
      conn.failed = true;
      if (kind === 'handshake') this.metrics.handshakeFailures++;
      if (kind === 'protocol') this.metrics.protocolErrors++;
      this.report({ kind, peer: conn.peerId ?? conn.expectedPeer, remote: conn.remote, message: `closing connection #${conn.serial}: ${message}` });
    }
    conn.reader.stop();
    conn.socket.destroy();
    return false;
  }

  private destroyConn(conn: Conn): void {
    conn.quiet = true;
    conn.socket.destroy();
  }

  /**
   * Stops writing to a connection that lost the duplicate tie-break but keeps reading it for
   * retireGraceMs (the peer may have written into it before it saw the other connection; with TLS,
   * ending at once would lose those frames), then ends it.
   */
  private retireConn(conn: Conn): void {
    conn.retired = true;
    conn.quiet = true;
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = setTimeout(() => {
      conn.timer = null;
      this.endConn(conn);
    }, this.opt.retireGraceMs);
  }

  /** Graceful end (pending writes go out), destroyed if not closed within closeTimeoutMs. */
  private endConn(conn: Conn): void {
    conn.quiet = true;
    conn.socket.end();
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = setTimeout(() => {
      conn.timer = null;
      conn.socket.destroy();
    }, this.opt.closeTimeoutMs);
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

  // ==========================================================================================
  // Sending
  // ==========================================================================================

  /** The peer `to` if it is known (has an address or a connection), else null (counted as dropsUnreachable). */
  private reachablePeer(to: NodeId, count = true): Peer | null {
    const peer = this.peers.get(to);
    if (peer && (peer.address || peer.conn)) return peer;
    if (count) this.metrics.dropsUnreachable++;
    return null;
  }

  /** False (counted, the peer marked blocked) when the peer's queue is full. */
  private hasRoom(peer: Peer): boolean {
    if (peer.queuedFrames < this.opt.outgoingFramesMax && peer.queuedBytes < this.opt.outgoingBytesMax) return true;
    this.metrics.dropsQueueFull++;
    peer.blocked = true;
    return false;
  }

  /** The encoded frame, or null when the codec refuses the message (counted and reported). */
  private encode(message: WireMessage, to: NodeId | null): { parts: Uint8Array[]; bytes: number } | null {
    try {
      return this.codec.encodeParts(message);
    } catch (e) {
      this.metrics.dropsEncode++;
      const msg = e instanceof CodecError ? e.message : `unexpected encode failure: ${e instanceof Error ? e.message : String(e)}`;
      this.report({ kind: 'encode', peer: to, remote: '', message: msg });
      return null;
    }
  }

  /** Queues an encoded frame (its parts may be shared with other peers' queues); false when the queue is full. */
  private enqueue(peer: Peer, encoded: { parts: Uint8Array[]; bytes: number }): boolean {
    if (!this.hasRoom(peer)) return false;
    if (peer.queuedFrames > 0 && peer.queuedBytes + encoded.bytes > this.opt.outgoingBytesMax) {
      this.metrics.dropsQueueFull++;
      peer.blocked = true;
      return false;
    }
    peer.queue.push(encoded);
    peer.queuedFrames++;
    peer.queuedBytes += encoded.bytes;
    if (peer.conn) this.scheduleFlush(peer);
    return true;
  }

  private writeRaw(conn: Conn, frame: Uint8Array): void {
    this.metrics.bytesSent += frame.byteLength;
    conn.socket.write(frame);
  }

  private scheduleFlush(peer: Peer): void {
    this.dirty.add(peer);
    if (this.flushScheduled === null) this.flushScheduled = setImmediate(this.flushAll);
  }

  /**
   * Frames for `to` not handed to the kernel yet: queued here (the row slot aside) or held in the
   * socket's own buffer (counted as one). The driver skips a retransmission while there are any.
   */
  unwrittenFrames(to: NodeId): number {
    const peer = this.peers.get(to);
    if (!peer) return 0;
    const socketHolds = peer.conn && !peer.conn.socket.destroyed && peer.conn.socket.writableLength > 0 ? 1 : 0;
    return peer.queuedFrames - (peer.queuedRow !== null ? 1 : 0) + socketHolds;
  }

  /**
   * Writes every queued frame now instead of at the scheduled flush (the driver calls it at the end of
   * each drain of the replica, so a hop costs no extra turn of the event loop).
   */
  flush(): void {
    if (this.flushScheduled === null) return;
    clearImmediate(this.flushScheduled);
    this.flushAll();
  }

  private readonly flushAll = (): void => {
    this.flushScheduled = null;
    const peers = [...this.dirty];
    this.dirty.clear();
    for (const peer of peers) this.flushPeer(peer);
  };

  /**
   * Writes the queue of `peer` (its row first) in one corked write, up to what keeps the socket's own
   * buffer within socketBufferBytesMax (at least one frame); the rest stays queued and goes out on
   * 'drain'. So what was queued later (a row above all) never waits behind more than about
   * socketBufferBytesMax of data in the socket.
   */
  private flushPeer(peer: Peer): void {
    const conn = peer.conn;
    if (!conn || conn.retired || conn.socket.destroyed || peer.queuedFrames === 0) return;
    const socket = conn.socket;
    if (socket.writableLength > this.opt.socketBufferBytesMax) return; // resumes on 'drain'
    let budget = this.opt.socketBufferBytesMax - socket.writableLength;
    let bytes = 0;
    let frames = 0;
    // Small parts (headers, rows, small payloads) are coalesced into one buffer; large payloads go to
    // the socket as they are (one writev with the rest, no copy).
    let run: Uint8Array[] = [];
    let runBytes = 0;
    const writeRun = (): void => {
      if (run.length === 1) socket.write(run[0]!);
      else if (run.length > 1) socket.write(concat(run, runBytes));
      run = [];
      runBytes = 0;
    };
    const put = (p: Uint8Array): void => {
      if (p.byteLength >= directWriteBytesMin) {
        writeRun();
        socket.write(p);
      } else {
        run.push(p);
        runBytes += p.byteLength;
      }
    };
    socket.cork();
    if (peer.queuedRow !== null) {
      put(peer.queuedRow);
      bytes += peer.queuedRow.byteLength;
      frames++;
      budget -= peer.queuedRow.byteLength;
      peer.queuedRow = null;
    }
    const queue = peer.queue;
    let head = peer.queueHead;
    while (head < queue.length && (budget > 0 || frames === 0)) {
      const f = queue[head]!;
      queue[head++] = undefined!;
      for (const p of f.parts) put(p);
      bytes += f.bytes;
      frames++;
      budget -= f.bytes;
    }
    writeRun();
    socket.uncork();
    if (head >= queue.length) {
      peer.queue = [];
      peer.queueHead = 0;
    } else if (head > 1024 && head * 2 > queue.length) {
      peer.queue = queue.slice(head);
      peer.queueHead = 0;
    } else peer.queueHead = head;
    peer.queuedBytes -= bytes;
    peer.queuedFrames -= frames;
    // Frames left for later go out on 'drain', which comes only after a write the socket refused.
    if (peer.queuedFrames > 0 && !socket.writableNeedDrain) this.scheduleFlush(peer);
    this.metrics.socketWrites++;
    this.metrics.framesSent += frames;
    this.metrics.bytesSent += bytes;
    this.maybeDrained(peer);
  }

  private onSocketDrain(conn: Conn): void {
    if (conn.peerId === null) return;
    const peer = this.peers.get(conn.peerId);
    if (!peer || peer.conn !== conn) return;
    this.flushPeer(peer);
    this.maybeDrained(peer);
  }

  private peerWritable(peer: Peer): boolean {
    return peer.queuedFrames < this.opt.outgoingFramesMax && peer.queuedBytes < this.opt.outgoingBytesMax &&
      (peer.conn === null || peer.conn.socket.writableLength <= this.opt.socketBufferBytesMax);
  }

  private maybeDrained(peer: Peer): void {
    if (!peer.blocked || !this.peerWritable(peer)) return;
    peer.blocked = false;
    for (const h of this.drainHandlers) {
      try {
        h(peer.id);
      } catch (e) {
        this.report({ kind: 'handler', peer: peer.id, remote: '', message: `onDrain handler threw: ${e instanceof Error ? e.message : String(e)}` });
      }
    }
  }
}

/** Parts of at least this size are handed to the socket without being copied into a coalesced buffer. */
const directWriteBytesMin = 32 * 1024;

interface QueuedFrame {
  parts: Uint8Array[];
  bytes: number;
}

function concat(parts: readonly Uint8Array[], bytes: number): Uint8Array {
  const buf = Buffer.allocUnsafe(bytes);
  let pos = 0;
  for (const p of parts) {
    buf.set(p, pos);
    pos += p.byteLength;
  }
  return buf;
}

function modeName(mode: number): string {
  return [mode & modeHmac ? 'HMAC' : '', mode & modeTls ? 'TLS' : ''].filter(Boolean).join('+') || 'none';
}
