// The transport conformance suite: behaviour every AgentTransport must show, whatever carries the bytes.
// tcp-transport.test.ts runs it on TcpTransport; rdma-transport.test.ts on RdmaTransport over the
// in-memory verbs fabric, and over the node's real RDMA device when it has one. Tests of one transport's
// mechanics (raw sockets, TCP batching, rdmacm setup) stay in that transport's own test file.
//
// Contract: per peer, frames arrive in the order sent, except state-table rows, which may overtake other
// frames and be coalesced (only the newest row pending for a peer is kept): a row carries the whole state
// and the core keeps only the newest (pushCount). Over TCP a row has a slot of its own per peer: the newest
// replaces an unwritten one and is written ahead of the queued frames (ADR 0009).

import test from 'ava';
import type { ExecutionContext } from 'ava';
import { blocksFor } from '../core/pipeline.ts';
import { Codec } from './codec.ts';
import type { BlockFrame, WireMessage } from './codec.ts';
import type { AgentTransport } from './agent-transport.ts';
import { DEFAULT_PIPELINE_BLOCK_BYTES } from './tcp-transport.ts';
import type { TcpTransportOptions, TransportError } from './tcp-transport.ts';
import { sampleMessages } from './test-support.ts';

export const secret = 'test group secret, 32 bytes long';
export const host = '127.0.0.1';

export interface ConformanceNode {
  id: number;
  t: AgentTransport;
  port: number;
  addr: string;
  got: { from: number; m: WireMessage }[];
  errors: TransportError[];
  logs: string[];
}

/** Makes one transport of the kind under test (not listening yet). */
export type TransportFactory = (options: TcpTransportOptions) => AgentTransport;

export interface ConformanceOptions {
  /** Prefix of every test title, e.g. "tcp" or "rdma (fake verbs)". */
  name: string;
  make: TransportFactory;
  /** Why the suite cannot run here (then each test is registered as skipped, with the reason). */
  skipReason?: string | null;
  /** Extra options for every transport (e.g. fast RDMA setup retries in tests). */
  defaults?: Partial<TcpTransportOptions>;
  /** Run serially (a shared device). */
  serial?: boolean;
  /** The address every node listens on and is dialed at (default 127.0.0.1; RDMA CM needs the device's). */
  host?: string;
}

/**
 * Every wait and test timeout of the transport tests is multiplied by this: DERECHO_TEST_TIME_SCALE (default
 * 1). scripts/rdma-vm.sh sets it for its guest, where qemu's software emulation makes everything 10-30x slower.
 */
export const timeScale = Math.max(1, Number(process.env['DERECHO_TEST_TIME_SCALE'] ?? '1') || 1);

export async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms * timeScale;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const nextTurn = () => new Promise((r) => setImmediate(r));

/** Structural copy for comparing (decoded payloads are views into frames). */
export function plain(m: unknown): unknown {
  return JSON.parse(JSON.stringify(m, (_k, v: unknown) => (v instanceof Uint8Array ? { bytes: Array.from(v) } : v)));
}

/** One message of each kind the transport delivers (block frames are its own traffic: relayed and reassembled). */
export function messageSamples(from: number): WireMessage[] {
  return sampleMessages(from).filter((m) => m.kind !== 'block');
}

export function data(from: number, index: number, size = 16): WireMessage {
  const payload = new Uint8Array(size);
  for (let i = 0; i < size; i++) payload[i] = (index + i) & 0xff;
  return { kind: 'data', from, viewId: 1, shardId: 0, senderRank: 0, index, payload };
}

/**
 * What the contract fixes of a delivery: the non-row messages in order, and the last row (earlier rows may
 * be coalesced away). Compare with expectedInContract(sent).
 */
export function deliveredInContract(got: WireMessage[]): { others: unknown; lastRow: unknown } {
  const rows = got.filter((m) => m.kind === 'row');
  return { others: plain(got.filter((m) => m.kind !== 'row')), lastRow: plain(rows.at(-1) ?? null) };
}

export function expectedInContract(sent: WireMessage[]): { others: unknown; lastRow: unknown } {
  const rows = sent.filter((m) => m.kind === 'row');
  return { others: plain(sent.filter((m) => m.kind !== 'row')), lastRow: plain(rows.at(-1) ?? null) };
}

export function sameBytes(a: Uint8Array | null | undefined, b: Uint8Array | null | undefined): boolean {
  return a instanceof Uint8Array && b instanceof Uint8Array && Buffer.compare(a, b) === 0;
}

/** Transports started by a test; closed whatever happens. */
export function harness(t: ExecutionContext, make: TransportFactory, defaults: Partial<TcpTransportOptions> = {}, listenHost = host) {
  const nodes: AgentTransport[] = [];
  const all: ConformanceNode[] = [];
  t.teardown(async () => {
    if (process.env['TRANSPORT_DEBUG']) for (const n of all) console.log(t.title, n.id, n.logs, n.errors, n.got.length);
    await Promise.all(nodes.map((n) => n.close()));
  });
  const start = async (id: number, options: Partial<TcpTransportOptions> = {}, port = 0): Promise<ConformanceNode> => {
    const logs: string[] = [];
    const tr = make({
      nodeId: id, secret, reconnectDelayMinMs: 10, reconnectDelayMaxMs: 200, higherIdDialDelayMs: 30,
      log: (l) => logs.push(`${Date.now() % 100000} ${l}`), ...defaults, ...options,
    });
    nodes.push(tr);
    const node: ConformanceNode = { id, t: tr, port: 0, addr: '', got: [], errors: [], logs };
    all.push(node);
    tr.onMessage((from, m) => node.got.push({ from, m }));
    tr.onError((e) => node.errors.push(e));
    const a = await tr.listen(listenHost, port);
    node.port = a.port;
    node.addr = `${listenHost}:${a.port}`;
    return node;
  };
  const mesh = (...ns: ConformanceNode[]) => {
    const map = Object.fromEntries(ns.map((n) => [n.id, n.addr]));
    for (const n of ns) n.t.setPeers(map);
  };
  return { start, mesh, nodes };
}

const mib = 1 << 20;
/** Limits that let a 5 MiB payload through (in one frame). */
const bigLimits = { payloadBytesMax: 6 * mib, frameBytesMax: 8 * mib };

/** Registers the suite's tests (ava) for one transport. */
export function registerConformance(o: ConformanceOptions): void {
  type Body = (t: ExecutionContext, h: ReturnType<typeof harness>) => Promise<void>;
  const define = (title: string, timeoutMs: number, body: Body): void => {
    const full = `${o.name}: ${title}`;
    if (o.skipReason) {
      test.skip(`${full} (skipped: ${o.skipReason})`, () => {});
      return;
    }
    const run = async (t: ExecutionContext): Promise<void> => {
      t.timeout(timeoutMs * timeScale);
      await body(t, harness(t, o.make, o.defaults, o.host));
    };
    if (o.serial) test.serial(full, run);
    else test(full, run);
  };

  define('two transports exchange every message kind', 10_000, async (t, h) => {
    const a = await h.start(1);
    const b = await h.start(2);
    h.mesh(a, b);
    const fromA = messageSamples(1);
    const fromB = messageSamples(2);
    for (const m of fromA) t.true(a.t.send(2, m));
    for (const m of fromB) t.true(b.t.send(1, m));
    const complete = (got: ConformanceNode['got'], sent: WireMessage[]) => JSON.stringify(deliveredInContract(got.map((g) => g.m))) === JSON.stringify(expectedInContract(sent));
    await waitFor('all messages', () => complete(b.got, fromA) && complete(a.got, fromB));
    t.deepEqual(deliveredInContract(b.got.map((g) => g.m)), expectedInContract(fromA));
    t.deepEqual(deliveredInContract(a.got.map((g) => g.m)), expectedInContract(fromB));
    t.true(b.got.every((g) => g.from === 1) && a.got.every((g) => g.from === 2));
    t.deepEqual(a.errors, []);
    t.deepEqual(b.errors, []);
    t.is(a.t.metrics.framesSent, b.got.length);
    t.is(b.t.metrics.framesReceived, b.got.length);
  });

  define('three transports exchange every message kind, each pair connected once', 10_000, async (t, h) => {
    const ns = [await h.start(1), await h.start(2), await h.start(3)];
    h.mesh(...ns);
    for (const n of ns) for (const o of ns) if (o !== n) for (const m of messageSamples(n.id)) t.true(n.t.send(o.id, m));
    const fromPeer = (n: ConformanceNode, o: ConformanceNode) => n.got.filter((g) => g.from === o.id).map((g) => g.m);
    await waitFor('all messages', () => ns.every((n) => ns.every((o) => o === n ||
      JSON.stringify(deliveredInContract(fromPeer(n, o))) === JSON.stringify(expectedInContract(messageSamples(o.id))))));
    for (const n of ns) {
      for (const o of ns) {
        if (o === n) continue;
        t.deepEqual(deliveredInContract(fromPeer(n, o)), expectedInContract(messageSamples(o.id)));
      }
    }
    await waitFor('one connection per pair', () => ns.every((n) => n.t.metrics.connectionsOpen === 2));
    for (const n of ns) {
      t.deepEqual(n.t.connectedPeers().sort(), ns.filter((o) => o !== n).map((o) => o.id));
      t.deepEqual(n.errors, []);
    }
  });

  define('10,000 small data messages arrive in order on one link', 20_000, async (t, h) => {
    const a = await h.start(1);
    const b = await h.start(2);
    h.mesh(a, b);
    const total = 10_000;
    let drained: (() => void) | null = null;
    a.t.onDrain(() => drained?.());
    for (let i = 0; i < total; i++) {
      if (!a.t.writable(2)) await new Promise<void>((r) => { drained = r; });
      t.true(a.t.send(2, data(1, i, 24)));
      if (i % 500 === 499) await nextTurn(); // several batches
    }
    await waitFor('10,000 messages', () => b.got.length === total, 15_000);
    let ordered = true;
    b.got.forEach((g, i) => {
      const m = g.m;
      if (m.kind !== 'data' || m.index !== i || m.payload![0] !== (i & 0xff) || m.payload!.byteLength !== 24) ordered = false;
    });
    t.true(ordered);
    t.is(a.t.metrics.dropsQueueFull, 0);
  });

  define('a peer with the wrong secret is refused', 10_000, async (t, h) => {
    const a = await h.start(1);
    const c = await h.start(3, { secret: 'another secret, also long enough' });
    c.t.setPeers({ 1: a.addr });
    c.t.send(1, data(3, 0));
    await waitFor('refusals', () => a.errors.length >= 1 && c.errors.length >= 1);
    t.regex(c.errors[0]!.message, /n1 failed to prove knowledge of the group secret/);
    t.is(a.errors[0]!.kind, 'handshake');
    t.false(c.t.connected(1));
    t.false(a.t.connected(3));
    t.deepEqual(a.got, []);
  });

  define('a frame over the receiver\'s bound drops that connection; the peers reconnect', 10_000, async (t, h) => {
    const a = await h.start(1);
    const b = await h.start(2, { limits: { frameBytesMax: 8192, payloadBytesMax: 4096 } });
    h.mesh(a, b);
    t.true(a.t.send(2, data(1, 0, 100)));
    await waitFor('first message', () => b.got.length === 1);
    t.true(a.t.send(2, data(1, 1, 100_000)));
    await waitFor('refusal', () => b.errors.length === 1);
    t.is(b.errors[0]!.kind, 'protocol');
    t.regex(b.errors[0]!.message, /over frameBytesMax 8192/);
    await waitFor('reconnected', () => a.t.metrics.reconnects === 1 && a.t.connected(2) && b.t.connected(1));
    a.t.send(2, data(1, 3, 100));
    await waitFor('later message', () => b.got.some((g) => g.m.kind === 'data' && g.m.index === 3));
    t.true(b.got.every((g) => g.m.kind === 'data' && g.m.index !== 1));
    // The sender refuses what its own codec bounds exclude.
    t.false(b.t.send(1, data(2, 0, 5000)));
    t.is(b.t.metrics.dropsEncode, 1);
    t.regex(b.errors.at(-1)!.message, /payload of 5000 bytes is over payloadBytesMax 4096/);
  });

  define('a peer whose frames fail to decode, or that forges `from`, loses that connection only', 10_000, async (t, h) => {
    const a = await h.start(1);
    const b = await h.start(2, { limits: { membersMax: 2 } });
    const c = await h.start(3);
    h.mesh(a, b, c);
    a.t.send(2, data(1, 0));
    c.t.send(2, data(3, 0));
    await waitFor('connected', () => b.got.length === 2);
    // A forged sender id.
    a.t.send(2, { kind: 'joinRequest', from: 7, incarnation: 1 });
    await waitFor('forgery refused', () => b.errors.length === 1);
    t.regex(b.errors[0]!.message, /joinRequest message claims to be from n7 on the (authenticated connection|RDMA path) of n1/);
    // A message that A's codec accepts but B's stricter limits refuse (senderRank over membersMax 2).
    await waitFor('reconnected', () => a.t.metrics.reconnects === 1 && a.t.connected(2) && b.t.connected(1));
    a.t.send(2, { ...data(1, 1), senderRank: 5 } as WireMessage);
    await waitFor('decode failure', () => b.errors.length === 2);
    t.regex(b.errors[1]!.message, /bad frame: data: senderRank 5 is over membersMax 2/);
    t.is(b.t.metrics.protocolErrors, 2);
    // C's connection was never touched.
    c.t.send(2, data(3, 1));
    await waitFor('c still served', () => b.got.filter((g) => g.from === 3).length === 2);
    t.true(c.errors.length === 0);
  });

  define('reconnect after the remote side closes (and restarts on the same port)', 10_000, async (t, h) => {
    const a = await h.start(1);
    const b = await h.start(2);
    h.mesh(a, b);
    a.t.send(2, data(1, 0));
    await waitFor('first', () => b.got.length === 1);
    await b.t.close();
    await waitFor('disconnected', () => !a.t.connected(2));
    // Sent while the peer is down: queued (bounded) and sent once the connection is back.
    t.true(a.t.send(2, data(1, 1)));
    await new Promise((r) => setTimeout(r, 100)); // a few failed dials
    const b2 = await h.start(2, {}, b.port);
    b2.t.setPeers({ 1: a.addr });
    await waitFor('delivered after reconnect', () => b2.got.length === 1);
    t.is((b2.got[0]!.m as { index: number }).index, 1);
    t.is(a.t.metrics.reconnects, 1);
    t.true(a.errors.some((e) => e.kind === 'connect'), 'failed dials are reported');
    // And the other direction works too.
    b2.t.send(1, data(2, 0));
    await waitFor('reply', () => a.got.length === 1);
  });

  define('backpressure: a full queue refuses sends, then reports drain', 10_000, async (t, h) => {
    const a = await h.start(1, { outgoingFramesMax: 10 });
    const b = await h.start(2);
    h.mesh(a, b);
    a.t.send(2, data(1, 0));
    await waitFor('connected', () => b.got.length === 1);
    const drains: number[] = [];
    a.t.onDrain((p) => drains.push(p));
    const results = Array.from({ length: 15 }, (_, i) => a.t.send(2, data(1, i + 1)));
    t.deepEqual(results, [...new Array<boolean>(10).fill(true), ...new Array<boolean>(5).fill(false)]);
    t.false(a.t.writable(2));
    t.is(a.t.metrics.dropsQueueFull, 5);
    await waitFor('drain', () => drains.length === 1);
    t.deepEqual(drains, [2]);
    t.true(a.t.writable(2));
    await waitFor('delivered', () => b.got.length === 11);
    // Unknown peers are unreachable.
    t.false(a.t.send(99, data(1, 0)));
    t.false(a.t.writable(99));
    t.is(a.t.metrics.dropsUnreachable, 1);
  });

  define('removing a peer from the map closes its connection; a throwing handler does not', 10_000, async (t, h) => {
    const a = await h.start(1);
    const b = await h.start(2);
    h.mesh(a, b);
    a.t.onMessage(() => { throw new Error('handler bug'); });
    b.t.send(1, data(2, 0));
    b.t.send(1, data(2, 1));
    await waitFor('delivered', () => a.got.length === 2);
    t.is(a.errors.filter((e) => e.kind === 'handler').length, 2);
    t.true(a.t.connected(2));
    b.t.setPeers({});
    t.false(b.t.connected(1));
    t.false(b.t.send(1, data(2, 2)), 'no address and no connection: unreachable');
    t.true(b.logs.some((l) => /closing connection #\d+ to n1: removed from the peer map/.test(l)));
    // A keeps dialing B (still in its map): B accepts the inbound connection of a peer it does not dial.
    await waitFor('a reconnected', () => a.t.metrics.reconnects === 1 && a.t.connected(2) && b.t.connected(1));
    t.deepEqual([...b.t.peerAddresses().keys()], []);
  });

  define('payloads are views into received frames, or copies with copyPayloads', 10_000, async (t, h) => {
    const a = await h.start(1);
    const b = await h.start(2, { copyPayloads: true });
    h.mesh(a, b);
    for (let i = 0; i < 5; i++) a.t.send(2, data(1, i, 10));
    for (let i = 0; i < 5; i++) b.t.send(1, data(2, i, 10));
    await waitFor('delivered', () => a.got.length === 5 && b.got.length === 5);
    const bufferSize = (n: ConformanceNode) => (n.got[4]!.m as { payload: Uint8Array }).payload.buffer.byteLength;
    t.true(bufferSize(a) > 10, 'zero-copy: a view into the frame');
    t.is(bufferSize(b), 10, 'copied');
    t.deepEqual(plain(b.got.map((g) => g.m)), plain(Array.from({ length: 5 }, (_, i) => data(1, i, 10))));
  });

  define('a joiner (not in the map) can dial in and be answered over its connection', 10_000, async (t, h) => {
    const member = await h.start(1);
    const joiner = await h.start(9);
    joiner.t.setPeers({ 1: member.addr });
    joiner.t.send(1, { kind: 'joinRequest', from: 9, incarnation: 5 });
    await waitFor('join request', () => member.got.length === 1);
    t.true(member.t.send(9, { kind: 'joinRedirect', from: 1, leader: 1 }));
    await waitFor('reply', () => joiner.got.length === 1);
    t.is(joiner.got[0]!.m.kind, 'joinRedirect');
    t.deepEqual(member.errors, []);
  });

  define('multicast of a large message goes over the binomial pipeline: every receiver gets it once, receivers relay', 30_000, async (t, h) => {
    const ns = [await h.start(1, { limits: bigLimits }), await h.start(2, { limits: bigLimits }), await h.start(3, { limits: bigLimits }), await h.start(4, { limits: bigLimits })];
    h.mesh(...ns);
    const [a, , c] = ns as [ConformanceNode, ConformanceNode, ConformanceNode, ConformanceNode];
    // Connections first, so the bytes are not waiting for a dial.
    await waitFor('mesh', () => ns.every((n) => n.t.connectedPeers().length === 3));
    const big = data(1, 7, 5 * mib);
    const other = data(3, 8, 3 * mib + 12_345);
    t.is(a.t.pipelineBlockBytes, DEFAULT_PIPELINE_BLOCK_BYTES);
    t.is(a.t.pipelineThresholdBytes, 2 * DEFAULT_PIPELINE_BLOCK_BYTES);
    // Two origins at once, with different member orders.
    t.true(a.t.multicast!([2, 3, 4], big));
    t.true(c.t.multicast!([4, 1, 2, 4], other));
    await waitFor('every receiver has its messages', () => ns.every((n) => n.got.length === (n.id === 1 || n.id === 3 ? 1 : 2)), 20_000);
    await new Promise((r) => setTimeout(r, 100)); // nothing more arrives
    const codec = new Codec(bigLimits);
    for (const [origin, message, receivers] of [[1, big, [2, 3, 4]], [3, other, [1, 2, 4]]] as const) {
      const blockCount = blocksFor(codec.encode(message).byteLength, DEFAULT_PIPELINE_BLOCK_BYTES);
      for (const id of receivers) {
        const got = ns[id - 1]!.got.filter((g) => g.from === origin);
        t.is(got.length, 1, `n${id} gets n${origin}'s message once`);
        const m = got[0]?.m;
        t.true(m?.kind === 'data' && m.from === origin && m.index === (message.kind === 'data' ? message.index : -1), `n${id}: the message of n${origin}`);
        t.true(m?.kind === 'data' && message.kind === 'data' && sameBytes(m.payload, message.payload), `n${id}: identical bytes from n${origin}`);
      }
      const originNode = ns[origin - 1]!;
      t.is(originNode.t.metrics.pipelineMessagesSent, 1);
      t.true(originNode.t.metrics.pipelineBlocksSent < receivers.length * blockCount, 'the origin sends fewer blocks than sending directly');
    }
    const k1 = blocksFor(codec.encode(big).byteLength, DEFAULT_PIPELINE_BLOCK_BYTES);
    const k3 = blocksFor(codec.encode(other).byteLength, DEFAULT_PIPELINE_BLOCK_BYTES);
    const sum = (f: (n: ConformanceNode) => number) => ns.reduce((acc, n) => acc + f(n), 0);
    // Every receiver receives every block once: (n - 1) * blockCount transfers per message, sent or relayed.
    t.is(sum((n) => n.t.metrics.pipelineBlocksSent + n.t.metrics.pipelineBlocksRelayed), 3 * k1 + 3 * k3);
    t.is(sum((n) => n.t.metrics.pipelineBlocksReceived), 3 * k1 + 3 * k3);
    for (const n of ns) {
      t.true(n.t.metrics.pipelineBlocksRelayed > 0 || n.id === 1 || n.id === 3, `n${n.id} relayed blocks`);
      t.is(n.t.metrics.pipelineMessagesCompleted, n.id === 1 || n.id === 3 ? 1 : 2);
      t.like(n.t.metrics, { pipelineErrors: 0, pipelineBlockDrops: 0, pipelineAssembliesOpen: 0, pipelineBytesInFlight: 0 });
      t.deepEqual(n.errors, []);
    }
    t.true(ns.filter((n) => n.id !== 1).every((n) => n.t.metrics.pipelineBlocksRelayed > 0), 'receivers of n1 relayed its blocks');
  });

  define('small multicasts go directly, encoded once; duplicates and this node in `to` are handled like send()', 10_000, async (t, h) => {
    const ns = [await h.start(1), await h.start(2), await h.start(3), await h.start(4, { pipelineBlockBytes: 0 })];
    h.mesh(...ns);
    await waitFor('mesh', () => ns.every((n) => n.t.connectedPeers().length === 3));
    const [a, , , d] = ns as [ConformanceNode, ConformanceNode, ConformanceNode, ConformanceNode];
    const before = { ...a.t.metrics };
    t.true(a.t.multicast!([2, 3, 4, 3], data(1, 1, 1000)));
    t.false(a.t.multicast!([2, 1], data(1, 2, 10)), 'this node in `to` counts as a refused send');
    t.is(a.t.metrics.dropsUnreachable - before.dropsUnreachable, 1);
    t.false(a.t.multicast!([2, 99], data(1, 3, 10)), 'an unknown peer');
    t.true(a.t.multicast!([], data(1, 4, 10)));
    // The pipeline off: a large frame still goes directly.
    t.true(d.t.multicast!([1, 2, 3], data(4, 5, 3 * mib / 4)));
    await waitFor('delivered', () => ns[1]!.got.length === 4 && ns[2]!.got.length === 2 && ns[3]!.got.length === 1 && a.got.length === 1);
    t.deepEqual(ns[1]!.got.map((g) => [g.from, g.m.kind === 'data' ? g.m.index : -1]).sort(), [[1, 1], [1, 2], [1, 3], [4, 5]]);
    t.deepEqual(ns[2]!.got.map((g) => [g.from, g.m.kind === 'data' ? g.m.index : -1]).sort(), [[1, 1], [4, 5]]);
    t.true(sameBytes((ns[2]!.got.find((g) => g.from === 4)!.m as { payload: Uint8Array }).payload, (data(4, 5, 3 * mib / 4) as { payload: Uint8Array }).payload));
    t.is(a.t.metrics.framesSent - before.framesSent, 3 + 1 + 1);
    for (const n of ns) {
      t.is(n.t.metrics.pipelineMessagesSent, 0);
      t.is(n.t.metrics.pipelineBlocksReceived, 0);
    }
  });

  define('bad pipeline blocks and bad reassembled frames are reported; the connection stays open', 10_000, async (t, h) => {
    const a = await h.start(1);
    const b = await h.start(2);
    h.mesh(a, b);
    const codec = new Codec();
    const single = (frame: Uint8Array, extra: Partial<BlockFrame> = {}): BlockFrame => ({
      kind: 'block', from: 1, origin: 1, messageId: 1, blockIndex: 0, blockCount: 1, totalBytes: frame.byteLength,
      members: [1, 2], bytes: frame, ...extra,
    });
    t.true(a.t.send(2, single(new Uint8Array(10), { members: [1, 3] })));
    t.true(a.t.send(2, single(new Uint8Array([0, 0, 0, 1, 0x99]), { messageId: 2 })));
    t.true(a.t.send(2, single(codec.encode(data(7, 0)), { messageId: 3 })));
    t.true(a.t.send(2, single(codec.encode(data(1, 5)), { messageId: 4 })));
    t.true(a.t.send(2, data(1, 6)));
    await waitFor('delivered', () => b.got.length === 2);
    t.deepEqual(b.got.map((g) => [g.from, g.m.kind, g.m.kind === 'data' ? g.m.index : -1]), [[1, 'data', 5], [1, 'data', 6]]);
    const messages = b.errors.map((e) => `${e.kind}: ${e.message}`);
    t.is(messages.length, 3);
    t.regex(messages[0]!, /^protocol: pipeline: block 0\/1 of n1 message 1 from n1: this node n2 is not a member/);
    t.regex(messages[1]!, /^protocol: pipeline: message 2 of n1, reassembled from 1 blocks, is refused: unknown frame type 0x99/);
    t.regex(messages[2]!, /^protocol: pipeline: message 3 of n1, .* data message claims to be from n7/);
    t.is(b.t.metrics.pipelineErrors, 3);
    t.is(b.t.metrics.pipelineMessagesCompleted, 1);
    t.true(b.t.connected(1));
    t.is(b.t.metrics.protocolErrors, 0);
  });

  define('partly received pipelined messages are dropped when they stall, or when the origin\'s connection is lost', 10_000, async (t, h) => {
    const a = await h.start(1);
    const b = await h.start(2, { pipelineStallMs: 50 });
    const c = await h.start(3);
    h.mesh(a, b, c);
    const half = (from: number, messageId: number): BlockFrame => ({
      kind: 'block', from, origin: from, messageId, blockIndex: 0, blockCount: 2, totalBytes: 20,
      members: [from, 2], bytes: new Uint8Array(10),
    });
    t.true(a.t.send(2, half(1, 1)));
    await waitFor('held', () => b.t.metrics.pipelineAssembliesOpen === 1);
    t.is(b.t.metrics.pipelineBytesInFlight, 20);
    await waitFor('stalled and dropped', () => b.t.metrics.pipelineAssembliesDropped === 1 && b.t.metrics.pipelineAssembliesOpen === 0);
    t.true(b.logs.some((l) => /pipeline: dropped 1 stalled message\(s\) .*n1#1/.test(l)));
    // Its last block arrives late: relayed only (here to nobody), no error, nothing delivered.
    t.true(a.t.send(2, { ...half(1, 1), blockIndex: 1 }));
    t.true(c.t.send(2, half(3, 1)));
    await waitFor('held', () => b.t.metrics.pipelineAssembliesOpen === 1);
    t.is(b.t.metrics.pipelineBlocksReceived, 3);
    await c.t.close();
    await waitFor('dropped with the connection', () => b.t.metrics.pipelineAssembliesDropped === 2 && b.t.metrics.pipelineAssembliesOpen === 0);
    t.true(b.logs.some((l) => /pipeline: dropped 1 partly received message\(s\) of n3: /.test(l)));
    t.deepEqual(b.got, []);
    t.deepEqual(b.errors.filter((e) => e.kind !== 'connect'), []);
  });
}
