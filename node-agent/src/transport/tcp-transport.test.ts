import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { FrameType, rawFrame } from './codec.ts';
import type { WireMessage } from './codec.ts';
import { TcpTransport, certificateNodeId, parseAddress, pipelineBlockBytesMax } from './tcp-transport.ts';
import type { TcpTransportOptions, TransportError } from './tcp-transport.ts';
import { sampleMessages } from './test-support.ts';
import { registerConformance } from './transport-conformance.ts';

// The transport-agnostic behaviour (transport-conformance.ts), on TCP; below, what is TCP's own.
registerConformance({ name: 'tcp', make: (options) => new TcpTransport(options) });

const secret = 'test group secret, 32 bytes long';
const host = '127.0.0.1';

interface Node {
  id: number;
  t: TcpTransport;
  port: number;
  addr: string;
  got: { from: number; m: WireMessage }[];
  errors: TransportError[];
  logs: string[];
}

/** Transports started by a test; closed by `cleanup` whatever happens. */
function harness(t: ExecutionContext) {
  const nodes: TcpTransport[] = [];
  const sockets: net.Socket[] = [];
  const all: Node[] = [];
  t.teardown(async () => {
    if (process.env['TRANSPORT_DEBUG']) for (const n of all) console.log(t.title, n.id, n.logs, n.errors, n.got.length);
    for (const s of sockets) s.destroy();
    await Promise.all(nodes.map((n) => n.close()));
  });
  const start = async (id: number, options: Partial<TcpTransportOptions> = {}, port = 0): Promise<Node> => {
    const logs: string[] = [];
    const tr = new TcpTransport({
      nodeId: id, secret, reconnectDelayMinMs: 10, reconnectDelayMaxMs: 200, higherIdDialDelayMs: 30,
      log: (l) => logs.push(`${Date.now() % 100000} ${l}`), ...options,
    });
    nodes.push(tr);
    const node: Node = { id, t: tr, port: 0, addr: '', got: [], errors: [], logs };
    all.push(node);
    logs.push(`${Date.now() % 100000}`);
    tr.onMessage((from, m) => node.got.push({ from, m }));
    tr.onError((e) => node.errors.push(e));
    const a = await tr.listen(host, port);
    node.port = a.port;
    node.addr = `${host}:${a.port}`;
    return node;
  };
  const mesh = (...ns: Node[]) => {
    const map = Object.fromEntries(ns.map((n) => [n.id, n.addr]));
    for (const n of ns) n.t.setPeers(map);
  };
  const raw = (port: number): Promise<net.Socket> => new Promise((resolve, reject) => {
    const s = net.connect({ host, port }, () => resolve(s));
    s.on('error', reject);
    sockets.push(s);
  });
  return { start, mesh, raw, nodes };
}

async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const closed = (s: net.Socket) => new Promise<void>((r) => (s.closed ? r() : s.once('close', () => r())));
const nextTurn = () => new Promise((r) => setImmediate(r));

/** Structural copy for comparing (decoded payloads are views into frames). */
function plain(m: unknown): unknown {
  return JSON.parse(JSON.stringify(m, (_k, v: unknown) => (v instanceof Uint8Array ? { bytes: Array.from(v) } : v)));
}

/** One message of each kind the transport delivers (block frames are its own traffic: relayed and reassembled). */
function messageSamples(from: number): WireMessage[] {
  return sampleMessages(from).filter((m) => m.kind !== 'block');
}

function rowWithHeartbeat(from: number, heartbeat: number): WireMessage {
  const sample = messageSamples(from).find((m) => m.kind === 'row')!;
  if (sample.kind !== 'row') throw new Error('no row sample');
  return { ...sample, row: { ...sample.row, heartbeat } };
}

/**
 * What a peer receives of `messages` sent in one turn: the state-table row has a slot of its own, written
 * ahead of the queued frames, and a newer row replaces an unwritten one (only the last row arrives).
 */
function inWireOrder(messages: WireMessage[]): WireMessage[] {
  const rows = messages.filter((m) => m.kind === 'row');
  return [...rows.slice(-1), ...messages.filter((m) => m.kind !== 'row')];
}

function data(from: number, index: number, size = 16): WireMessage {
  const payload = new Uint8Array(size);
  for (let i = 0; i < size; i++) payload[i] = (index + i) & 0xff;
  return { kind: 'data', from, viewId: 1, shardId: 0, senderRank: 0, index, payload };
}

test('three transports exchange every message kind over one connection per pair', async (t) => {
  t.timeout(10_000);
  const h = harness(t);
  const ns = [await h.start(1), await h.start(2), await h.start(3)];
  h.mesh(...ns);
  for (const n of ns) for (const o of ns) if (o !== n) for (const m of messageSamples(n.id)) t.true(n.t.send(o.id, m));
  const per = inWireOrder(messageSamples(1)).length;
  await waitFor('all messages', () => ns.every((n) => n.got.length === 2 * per));
  for (const n of ns) {
    for (const o of ns) {
      if (o === n) continue;
      t.deepEqual(plain(n.got.filter((g) => g.from === o.id).map((g) => g.m)), plain(inWireOrder(messageSamples(o.id))));
    }
  }
  await waitFor('duplicates settled', () => ns.every((n) => n.t.connections().length === 2));
  for (const n of ns) {
    t.deepEqual(n.t.connectedPeers().sort(), ns.filter((o) => o !== n).map((o) => o.id));
    t.deepEqual(n.errors, []);
  }
});

test.serial('batching: every frame queued in one turn goes out in one socket write', async (t) => {
  t.timeout(10_000);
  const h = harness(t);
  const a = await h.start(1);
  const b = await h.start(2);
  h.mesh(a, b);
  t.true(a.t.send(2, data(1, 0)));
  await waitFor('connection', () => b.got.length === 1);
  // Count real socket writes, process-wide, while the batch goes out (this test runs serially).
  const original = net.Socket.prototype.write;
  let socketWrites = 0;
  net.Socket.prototype.write = function (this: net.Socket, ...args: Parameters<typeof original>) {
    socketWrites++;
    return original.apply(this, args);
  } as typeof original;
  const before = { ...a.t.metrics };
  try {
    // Every 10th message is a state-table row (heartbeat i): the rows share one slot, written first.
    for (let i = 1; i <= 200; i++) t.true(a.t.send(2, i % 10 === 0 ? rowWithHeartbeat(1, i) : data(1, i)));
    t.is(socketWrites, 0, 'nothing is written during the turn');
    await nextTurn();
    await nextTurn();
  } finally {
    net.Socket.prototype.write = original;
  }
  t.is(socketWrites, 1);
  t.is(a.t.metrics.socketWrites - before.socketWrites, 1);
  t.is(a.t.metrics.framesSent - before.framesSent, 181, '180 data frames and the last of the 20 rows');
  t.is(a.t.metrics.rowsSuperseded - before.rowsSuperseded, 19);
  await waitFor('batch received', () => b.got.length === 182);
  t.deepEqual(b.got.slice(1).map((g) => (g.m.kind === 'data' ? g.m.index : g.m.kind === 'row' ? `row ${g.m.row.heartbeat}` : g.m.kind)),
    ['row 200', ...Array.from({ length: 200 }, (_, i) => i + 1).filter((i) => i % 10 !== 0)]);
});

test('garbage from a raw socket closes that socket only; the transport still serves a legitimate peer', async (t) => {
  t.timeout(10_000);
  const h = harness(t);
  const a = await h.start(1);
  // 1. An HTTP request: "GET " read as a length is ~1.2 GB, over the pre-authentication bound.
  const s1 = await h.raw(a.port);
  s1.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await closed(s1);
  // 2. A well-formed frame of the wrong type.
  const s2 = await h.raw(a.port);
  s2.write(rawFrame(FrameType.data, new Uint8Array(40)));
  await closed(s2);
  // 3. Random bytes.
  const s3 = await h.raw(a.port);
  s3.write(Buffer.from([0, 0, 0, 3, 0x70, 1, 2, 0xde, 0xad, 0xbe, 0xef]));
  await closed(s3);
  await waitFor('three reports', () => a.errors.length === 3);
  t.regex(a.errors[0]!.message, /frame of 1195725856 bytes announced, over frameBytesMax 256/);
  t.regex(a.errors[1]!.message, /expected hello, got frame type 0x1/);
  t.regex(a.errors[2]!.message, /hello of 2 bytes, expected 58/);
  t.true(a.errors.every((e) => e.kind === 'handshake'));
  const b = await h.start(2);
  h.mesh(a, b);
  b.t.send(1, data(2, 0));
  a.t.send(2, data(1, 0));
  await waitFor('exchange', () => a.got.length === 1 && b.got.length === 1);
  t.is(a.t.metrics.handshakeFailures, 3);
});

test('a raw hello replayed with a made-up proof is refused (the dialer is checked too)', async (t) => {
  t.timeout(10_000);
  const h = harness(t);
  const a = await h.start(1);
  const s = await h.raw(a.port);
  const hello = Buffer.alloc(58);
  hello[0] = 1;
  hello[1] = 1;
  hello.writeUInt32BE(9, 2);
  hello.writeUInt32BE(1, 6);
  s.write(rawFrame(FrameType.authHello, hello));
  s.once('data', () => s.write(rawFrame(FrameType.authProof, Buffer.alloc(32, 7))));
  await closed(s);
  await waitFor('proof refused', () => a.errors.some((e) => /n9 failed to prove knowledge/.test(e.message)));
  t.false(a.t.connected(9));
});

test('a raw peer announcing a frame over the pre-authentication bound is refused at once', async (t) => {
  t.timeout(10_000);
  const h = harness(t);
  const a = await h.start(1);
  const s = await h.raw(a.port);
  s.write(Buffer.from([0x80, 0, 0, 0]));
  await closed(s);
  await waitFor('report', () => a.errors.length === 1);
  t.regex(a.errors[0]!.message, /frame of 2147483648 bytes announced, over frameBytesMax 256/);
});

test('a frame over the receiver\'s bound is refused as announced, before it is buffered', async (t) => {
  t.timeout(10_000);
  const h = harness(t);
  const a = await h.start(1);
  const b = await h.start(2, { limits: { frameBytesMax: 8192, payloadBytesMax: 4096 } });
  h.mesh(a, b);
  t.true(a.t.send(2, data(1, 0, 100)));
  await waitFor('first message', () => b.got.length === 1);
  t.true(a.t.send(2, data(1, 1, 100_000)));
  await waitFor('refusal', () => b.errors.length === 1);
  t.regex(b.errors[0]!.message, /frame of 100026 bytes announced, over frameBytesMax 8192/);
});

test('simultaneous dials settle on one connection, the same one at both ends', async (t) => {
  t.timeout(15_000);
  const h = harness(t);
  let duplicates = 0;
  for (let round = 0; round < 4; round++) {
    const a = await h.start(10 + 2 * round, { higherIdDialDelayMs: 0, retireGraceMs: 100 });
    const b = await h.start(11 + 2 * round, { higherIdDialDelayMs: 0, retireGraceMs: 100 });
    h.mesh(a, b);
    a.t.send(b.id, data(a.id, 0));
    b.t.send(a.id, data(b.id, 0));
    await waitFor('settled', () => a.t.connections().length === 1 && b.t.connections().length === 1 &&
      a.t.connected(b.id) && b.t.connected(a.id));
    const ca = a.t.connections()[0]!;
    const cb = b.t.connections()[0]!;
    t.true(ca.outbound, 'the lower id dialed the surviving connection');
    t.false(cb.outbound);
    // Frames sent before the tie-break, whichever connection carried them, were delivered.
    await waitFor('first frames', () => a.got.length >= 1 && b.got.length >= 1);
    duplicates += a.t.metrics.duplicateConnections;
    a.t.send(b.id, data(a.id, 1));
    await waitFor('traffic on the kept connection', () => b.got.some((g) => (g.m as { index: number }).index === 1));
  }
  t.true(duplicates > 0, 'the rounds did produce duplicate connections');
});

test('a backlog goes to the socket socketBufferBytesMax at a time; a row queued later overtakes what is still queued', async (t) => {
  t.timeout(20_000);
  const h = harness(t);
  const socketBufferBytesMax = 256 * 1024;
  const a = await h.start(1, { socketBufferBytesMax, limits: { payloadBytesMax: 1 << 20, frameBytesMax: (1 << 20) + 1024, membersMax: 16, shardsMax: 16 } });
  const b = await h.start(2, { limits: { payloadBytesMax: 1 << 20, frameBytesMax: (1 << 20) + 1024, membersMax: 16, shardsMax: 16 } });
  h.mesh(a, b);
  a.t.send(2, data(1, 0));
  await waitFor('connected', () => b.got.length === 1);
  const frameBytes = 30 + 64 * 1024;
  for (let i = 1; i <= 64; i++) t.true(a.t.send(2, data(1, i, 64 * 1024)));
  const before = a.t.metrics.framesSent;
  a.t.flush();
  const written = a.t.metrics.framesSent - before;
  t.true(written >= socketBufferBytesMax / frameBytes && written <= socketBufferBytesMax / frameBytes + 1, `${written} frames written at once`);
  t.true(a.t.send(2, rowWithHeartbeat(1, 7)));
  await waitFor('everything', () => b.got.length === 66, 15_000);
  const order = b.got.slice(1).map((g) => (g.m.kind === 'row' ? 'row' : g.m.kind === 'data' ? g.m.index : g.m.kind));
  const rowAt = order.indexOf('row');
  t.true(rowAt > 0 && rowAt < 64 - 8, `the row arrived at position ${rowAt} of 65, ahead of most of the backlog`);
  t.deepEqual(order.filter((x) => x !== 'row'), Array.from({ length: 64 }, (_, i) => i + 1), 'data frames stay in order');
  t.is(a.t.metrics.dropsQueueFull, 0);
});

test('a connection that does not complete the handshake in time is closed', async (t) => {
  t.timeout(10_000);
  const h = harness(t);
  const a = await h.start(1, { handshakeTimeoutMs: 150 });
  const s = await h.raw(a.port);
  const started = Date.now();
  await closed(s);
  t.true(Date.now() - started >= 100);
  await waitFor('report', () => a.errors.length === 1);
  t.regex(a.errors[0]!.message, /handshake timed out after 150 ms \(awaitHello\)/);
});

test('a peer dialed under the wrong id, or claiming our id, is refused', async (t) => {
  t.timeout(10_000);
  const h = harness(t);
  const a = await h.start(1);
  const b = await h.start(2);
  b.t.setPeers({ 5: a.addr }); // a is not node 5
  await waitFor('refusal', () => a.errors.length >= 1);
  t.regex(a.errors[0]!.message, /peer n2 dialed node n5, this is n1/);
  await b.t.close();
  const twin = await h.start(1);
  twin.t.setPeers({ 1: a.addr }); // dialing itself is ignored
  t.deepEqual(twin.t.peerAddresses(), new Map());
  const s = await h.raw(a.port);
  const hello = Buffer.alloc(58);
  hello[0] = 1;
  hello[1] = 1;
  hello.writeUInt32BE(1, 2);
  hello.writeUInt32BE(1, 6);
  s.write(rawFrame(FrameType.authHello, hello));
  await closed(s);
  await waitFor('refusal', () => a.errors.some((e) => /claims this node's own id/.test(e.message)));
});

test('addresses and certificate names parse', (t) => {
  t.deepEqual(parseAddress('10.0.0.1:7000'), { host: '10.0.0.1', port: 7000 });
  t.deepEqual(parseAddress('[::1]:80'), { host: '::1', port: 80 });
  t.deepEqual(parseAddress('node-3.derecho.svc:7000'), { host: 'node-3.derecho.svc', port: 7000 });
  t.throws(() => parseAddress('10.0.0.1'));
  t.throws(() => parseAddress('a:70000'));
  t.is(certificateNodeId({ subject: { CN: 'node-12' } } as never), 12);
  t.is(certificateNodeId({ subject: { CN: '7' } } as never), 7);
  t.is(certificateNodeId({ subject: { CN: 'node-x' } } as never), null);
  t.throws(() => new TcpTransport({ nodeId: 1 }), { message: /needs a group secret, TLS options, or both/ });
  t.throws(() => new TcpTransport({ nodeId: 1, secret: 'short' }), { message: /at least 16 bytes/ });
});

// ---- mutual TLS ----------------------------------------------------------------------------------

const hasOpenssl = spawnSync('openssl', ['version'], { encoding: 'utf8' }).status === 0;

interface Pki { ca: string; other: string; certs: Record<string, { cert: string; key: string }> }

/**
 * The test certificates, made once for the TLS tests of this file: asynchronously, as the other tests
 * run concurrently in this process and their timing must not wait for openssl.
 */
let pkiMade: Promise<Pki> | null = null;
function makePki(): Promise<Pki> {
  pkiMade ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), 'derecho-tls-'));
    try {
      const run = (...args: string[]) => promisify(execFile)('openssl', args, { cwd: dir });
      const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
      const ca = (name: string) => run('req', '-x509', ...ec, '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', `/CN=${name}`);
      const leaf = async (cn: string, caName: string, file = cn) => {
        await run('req', ...ec, '-keyout', `${file}.key`, '-out', `${file}.csr`, '-subj', `/CN=${cn}`);
        // An explicit random serial: leaves signed at once by one CA would race on its -CAcreateserial file.
        await run('x509', '-req', '-in', `${file}.csr`, '-CA', `${caName}.pem`, '-CAkey', `${caName}.key`, '-set_serial', `0x${randomBytes(8).toString('hex')}`, '-out', `${file}.pem`, '-days', '2');
      };
      await Promise.all([ca('ca'), ca('rogue-ca')]);
      // Node 1 renewed by another CA: the CA rotation of updateTlsCredentials' test.
      await Promise.all([leaf('node-1', 'ca'), leaf('node-2', 'ca'), leaf('node-3', 'ca'), leaf('node-4', 'rogue-ca'), leaf('node-1', 'rogue-ca', 'node-1-renewed')]);
      const read = (f: string) => readFileSync(join(dir, f), 'utf8');
      const certs = Object.fromEntries(['node-1', 'node-2', 'node-3', 'node-4', 'node-1-renewed'].map((n) => [n, { cert: read(`${n}.pem`), key: read(`${n}.key`) }]));
      return { ca: read('ca.pem'), other: read('rogue-ca.pem'), certs };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  })();
  return pkiMade;
}

(hasOpenssl ? test : test.skip)('mutual TLS: node ids from certificates; a foreign CA or a mismatched CN is refused' +
  (hasOpenssl ? '' : ' (SKIPPED: no openssl CLI on this machine to generate test certificates)'), async (t) => {
  t.timeout(20_000);
  const pki = await makePki();
  const h = harness(t);
  const tlsFor = (n: string, ca = pki.ca) => ({ ca, cert: pki.certs[n]!.cert, key: pki.certs[n]!.key });
  // TLS only.
  // Both dial at once (higherIdDialDelayMs 0): frames sent around the duplicate tie-break still arrive.
  const a = await h.start(1, { secret: undefined, tls: tlsFor('node-1'), higherIdDialDelayMs: 0 });
  const b = await h.start(2, { secret: undefined, tls: tlsFor('node-2'), higherIdDialDelayMs: 0 });
  h.mesh(a, b);
  for (const m of messageSamples(1)) a.t.send(2, m);
  b.t.send(1, data(2, 0));
  await waitFor('TLS exchange', () => b.got.length === inWireOrder(messageSamples(1)).length && a.got.length === 1);
  t.deepEqual(plain(b.got.map((g) => g.m)), plain(inWireOrder(messageSamples(1))));
  t.deepEqual(a.errors, []);
  // A certificate signed by another CA: the TLS handshake fails.
  const rogue = await h.start(4, { secret: undefined, tls: { ...tlsFor('node-4'), ca: [pki.ca, pki.other] } });
  rogue.t.setPeers({ 1: a.addr });
  await waitFor('rogue refused', () => a.errors.length >= 1);
  t.is(a.errors[0]!.kind, 'handshake');
  t.false(a.t.connected(4));
  // A valid certificate for node 3 used by a process claiming to be node 5.
  const liar = await h.start(5, { secret: undefined, tls: tlsFor('node-3') });
  liar.t.setPeers({ 1: a.addr });
  await waitFor('liar refused', () => a.errors.some((e) => /claims n5 but its certificate is for n3/.test(e.message)));
  t.false(a.t.connected(5));
  // Dialing node 2's address expecting node 3: the server certificate does not match.
  const c = await h.start(3, { secret: undefined, tls: tlsFor('node-3') });
  c.t.setPeers({ 1: b.addr });
  await waitFor('server identity refused', () => c.errors.some((e) => /server certificate is for node 2, dialed node 1/.test(e.message)));
  // TLS and HMAC together.
  const x = await h.start(1, { tls: tlsFor('node-1') });
  const y = await h.start(2, { tls: tlsFor('node-2') });
  h.mesh(x, y);
  y.t.send(1, data(2, 0));
  await waitFor('TLS+HMAC exchange', () => x.got.length === 1);
  // A TLS-only peer and a TLS+HMAC peer do not mix.
  c.t.setPeers({ 1: x.addr });
  await waitFor('mode mismatch', () => x.errors.some((e) => /authentication mode mismatch: peer uses TLS, this node HMAC\+TLS/.test(e.message)));
});

(hasOpenssl ? test : test.skip)('updateTlsCredentials refuses a certificate of another node, a key of another certificate and garbage, keeping the credentials in force' +
  (hasOpenssl ? '' : ' (SKIPPED: no openssl CLI on this machine to generate test certificates)'), async (t) => {
  t.timeout(20_000);
  const pki = await makePki();
  const h = harness(t);
  const tlsFor = (n: string, ca: string | string[] = pki.ca) => ({ ca, cert: pki.certs[n]!.cert, key: pki.certs[n]!.key });
  const a = await h.start(1, { secret: undefined, tls: tlsFor('node-1') });
  t.throws(() => a.t.updateTlsCredentials(tlsFor('node-2')), { message: /^TLS credentials refused, keeping the current ones: the certificate is for node 2, this is node 1$/ });
  t.throws(() => a.t.updateTlsCredentials({ ...tlsFor('node-1'), key: pki.certs['node-2']!.key }), { message: /the private key does not match the certificate \(CN=node-1, serial [0-9A-F]+\)/ });
  t.throws(() => a.t.updateTlsCredentials({ ...tlsFor('node-1'), cert: 'not a certificate' }), { message: /the certificate cannot be parsed/ });
  t.throws(() => a.t.updateTlsCredentials({ ...tlsFor('node-1'), key: '' }), { message: /the private key cannot be parsed/ });
  // TLS itself takes a CA file without a certificate (and would then refuse every peer).
  t.throws(() => a.t.updateTlsCredentials(tlsFor('node-1', 'garbage')), { message: /the CA holds no PEM certificate/ });
  // The refusals left node 1's credentials in force: a peer of the original CA still gets in.
  const b = await h.start(2, { secret: undefined, tls: tlsFor('node-2') });
  h.mesh(a, b);
  await waitFor('connected with the credentials in force', () => a.t.connected(2) && b.t.connected(1));
  t.deepEqual(a.errors, []);
  const hmacOnly = await h.start(3);
  t.throws(() => hmacOnly.t.updateTlsCredentials(tlsFor('node-3')), { message: /created without TLS \(HMAC only\)/ });
});

(hasOpenssl ? test : test.skip)('updateTlsCredentials: new handshakes, inbound and outbound, use the new credentials; open connections stay' +
  (hasOpenssl ? '' : ' (SKIPPED: no openssl CLI on this machine to generate test certificates)'), async (t) => {
  t.timeout(20_000);
  const pki = await makePki();
  const h = harness(t);
  const tlsFor = (n: string, ca: string | string[] = pki.ca) => ({ ca, cert: pki.certs[n]!.cert, key: pki.certs[n]!.key });
  // A CA rotation: node 1 trusts both CAs; node 2 the old one only, nodes 3 and 4 the new one only.
  const a = await h.start(1, { secret: undefined, tls: tlsFor('node-1', [pki.ca, pki.other]) });
  const b = await h.start(2, { secret: undefined, tls: tlsFor('node-2') });
  h.mesh(a, b);
  await waitFor('1 and 2 connected', () => a.t.connected(2) && b.t.connected(1));
  // Node 3 dials node 1 (inbound there: node 1's server certificate), node 1 dials node 4 (its client certificate).
  const c = await h.start(3, { secret: undefined, tls: tlsFor('node-3', pki.other) });
  const d = await h.start(4, { secret: undefined, tls: tlsFor('node-4', pki.other) });
  c.t.setPeers({ 1: a.addr });
  a.t.setPeers({ 2: b.addr, 4: d.addr });
  await waitFor('node 1\'s old certificate refused by nodes 3 and 4', () => c.errors.length > 0 && d.errors.length > 0);
  t.false(a.t.connected(3));
  t.false(a.t.connected(4));

  a.t.updateTlsCredentials(tlsFor('node-1-renewed', [pki.ca, pki.other]));
  await waitFor('3 and 4 connected to node 1 with its new certificate', () => a.t.connected(3) && a.t.connected(4) && c.t.connected(1) && d.t.connected(1));
  // The connection to node 2 (which does not trust the new CA) is the one made before: still up.
  a.t.send(2, data(1, 7));
  b.t.send(1, data(2, 8));
  await waitFor('1 and 2 still talk', () => b.got.length === 1 && a.got.some((g) => g.from === 2));
  t.is(a.t.metrics.reconnects, 0);
  t.is(b.t.metrics.reconnects, 0);
  t.deepEqual(b.errors, []);
});

// ---- multicast over the binomial pipeline ------------------------------------------------------

const mib = 1 << 20;
test('pipeline options: the block fits in a frame; bad values are refused', (t) => {
  const small = { frameBytesMax: mib / 2, payloadBytesMax: mib / 4, membersMax: 16 };
  const capped = new TcpTransport({ nodeId: 1, secret, limits: small, log: () => {} });
  t.is(capped.pipelineBlockBytes, pipelineBlockBytesMax(small));
  t.true(capped.pipelineBlockBytes < mib / 2 && capped.pipelineBlockBytes > mib / 2 - 200);
  t.is(capped.pipelineThresholdBytes, 2 * capped.pipelineBlockBytes);
  const custom = new TcpTransport({ nodeId: 1, secret, pipelineBlockBytes: 4096, pipelineThresholdBytes: 100, log: () => {} });
  t.is(custom.pipelineBlockBytes, 4096);
  t.is(custom.pipelineThresholdBytes, 100);
  t.throws(() => new TcpTransport({ nodeId: 1, secret, limits: small, pipelineBlockBytes: mib / 2 }), { instanceOf: RangeError, message: /pipelineBlockBytes .* must fit in frameBytesMax/ });
  t.throws(() => new TcpTransport({ nodeId: 1, secret, pipelineBlockBytes: -1 }), { instanceOf: RangeError, message: /pipelineBlockBytes/ });
  t.throws(() => new TcpTransport({ nodeId: 1, secret, pipelineThresholdBytes: 1.5 }), { instanceOf: RangeError, message: /pipelineThresholdBytes/ });
  t.throws(() => new TcpTransport({ nodeId: 1, secret, pipelineAssembliesMax: 0 }), { instanceOf: RangeError, message: /pipelineAssembliesMax/ });
  t.throws(() => new TcpTransport({ nodeId: 1, secret, pipelineAssemblyBytesMax: 0 }), { instanceOf: RangeError, message: /pipelineAssemblyBytesMax/ });
});

// No leaked handles: once every test closed its transports, no socket, server or timer is left.
test.after.always('no sockets, servers or timers left behind', async () => {
  const ours = () => process.getActiveResourcesInfo().filter((r) => /TCP|TLS|Timeout|Immediate/.test(r));
  const deadline = Date.now() + 2000;
  while (ours().length > 0 && Date.now() < deadline) await new Promise((r) => setImmediate(r));
  if (ours().length > 0) throw new Error(`leaked handles: ${ours().join(', ')}`);
});
