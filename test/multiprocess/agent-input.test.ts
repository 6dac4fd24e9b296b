// Hostile or broken input to real agent processes: bad configurations are refused with exit code 2 and
// a message naming the field and the value; garbage on a member's peer port and peers without the group
// secret cost that one connection only, and the group keeps working.

import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import test from 'ava';
import YAML from 'yaml';
import { FrameType, rawFrame } from '../../node-agent/src/transport/codec.ts';
import { TcpTransport } from '../../node-agent/src/transport/tcp-transport.ts';
import type { TransportError } from '../../node-agent/src/transport/tcp-transport.ts';
import { Cluster, HOST, keyInShard, manifest, runAgentToExit, sleep, summary, waitUntil } from './harness.ts';
import type { AgentStatus } from './harness.ts';

test('bad configurations make the agent exit with code 2, naming the field and the value', async (t) => {
  t.timeout(60_000);
  // A cluster directory (manifest, secret, agent configs) whose agents are never started as a group.
  const cluster = await Cluster.create(t);
  const n1 = cluster.node(1);
  const base = YAML.parse(fs.readFileSync(n1.configFile, 'utf8')) as Record<string, unknown> & { listen: Record<string, unknown> };
  const write = (name: string, value: unknown): string => {
    const file = path.join(cluster.dir, name);
    fs.writeFileSync(file, typeof value === 'string' ? value : YAML.stringify(value));
    return file;
  };

  const badManifest = manifest() as { spec: Record<string, unknown> };
  badManifest.spec['members'] = 0;
  const badGroupFile = write('members-0.yaml', badManifest);
  const missingSecret = path.join(cluster.dir, 'no-such-secret.key');
  const shortSecret = write('short.key', 'too short');
  // Something else holds node 1's peer port.
  const squatter = net.createServer();
  await new Promise<void>((resolve, reject) => {
    squatter.once('error', reject);
    squatter.listen(n1.peerPort, HOST, () => resolve());
  });
  t.teardown(() => new Promise<void>((resolve) => squatter.close(() => resolve())));

  const cases: { name: string; config: unknown; expect: RegExp[] }[] = [
    {
      name: 'manifest with members: 0',
      config: { ...base, groupFile: badGroupFile },
      expect: [/members-0\.yaml/, /spec\.members: 0 is not a member count from 1 to 64/],
    },
    {
      name: 'listen.peerPort 99999',
      config: { ...base, listen: { ...base.listen, peerPort: 99999 } },
      expect: [/listen\.peerPort: 99999 is not a port number/],
    },
    {
      name: 'missing HMAC secret file',
      config: { ...base, auth: { hmacSecretFile: missingSecret } },
      expect: [/auth\.hmacSecretFile/, new RegExp(escape(missingSecret)), /cannot be read/],
    },
    {
      name: 'HMAC secret under 16 bytes',
      config: { ...base, auth: { hmacSecretFile: shortSecret } },
      expect: [/auth\.hmacSecretFile/, new RegExp(escape(shortSecret)), /holds 9 bytes/],
    },
    {
      name: 'peer port already in use',
      config: base,
      expect: [/cannot listen/, new RegExp(`${escape(HOST)}:${n1.peerPort}`)],
    },
  ];
  // Each case has its own data directory (the runs are concurrent).
  const results = await Promise.all(cases.map((c, i) => runAgentToExit(
    write(`bad-${i}.yaml`, { ...(c.config as object), dataDir: path.join(cluster.dir, `bad-${i}-data`) }),
    path.join(cluster.dir, `bad-${i}.log`),
  )));
  for (const [i, c] of cases.entries()) {
    const r = results[i]!;
    t.is(r.code, 2, `${c.name}: exit code (output: ${r.output})`);
    for (const re of c.expect) t.regex(r.output, re, `${c.name}: the message`);
    t.notRegex(r.output, /\n\s+at /, `${c.name}: a message, not a stack trace`);
    t.notRegex(r.output, /agent started/, `${c.name}: it did not start`);
  }
});

test('garbage on the peer port and peers without the group secret cost one connection each; the group keeps working', async (t) => {
  t.timeout(60_000);
  const cluster = await Cluster.create(t, { start: [1, 2, 3] });
  const formed = await cluster.waitForView([1, 2, 3]);
  const before = (await cluster.status(1))!;
  const n1 = cluster.node(1);
  const sockets: net.Socket[] = [];
  const rogues: TcpTransport[] = [];
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await Promise.all(rogues.map((r) => r.close()));
  });

  /** Connects to node 1's peer port, writes `bytes`, and resolves when node 1 closes the connection. */
  const sendRaw = async (what: string, chunks: Buffer[], afterFirstReply?: Buffer): Promise<number> => {
    const socket = net.connect({ host: HOST, port: n1.peerPort });
    sockets.push(socket);
    socket.on('error', () => {});
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('error', reject);
    });
    const t0 = Date.now();
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    if (afterFirstReply) socket.once('data', () => socket.write(afterFirstReply));
    for (const c of chunks) socket.write(c);
    const timeout = sleep(4_000).then(() => 'timeout' as const);
    const r = await Promise.race([closed.then(() => 'closed' as const), timeout]);
    if (r === 'timeout') throw new Error(`${what}: node 1 did not close the connection within 4 s`);
    return Date.now() - t0;
  };

  // ---- Unauthenticated garbage: 4 KiB of random bytes; a frame announcing a huge length; a valid hello
  // claiming to be node 2 followed by a made-up proof.
  const closedIn: Record<string, number> = {};
  closedIn['4 KiB of random bytes'] = await sendRaw('random bytes', [randomBytes(4096)]);
  const huge = Buffer.alloc(64);
  huge.writeUInt32BE(0xffff_fff0, 0);
  huge[4] = FrameType.data;
  closedIn['a 4 GiB frame header'] = await sendRaw('huge frame', [huge]);
  const hello = Buffer.alloc(58);
  hello[0] = 1; // handshake version
  hello[1] = 1; // HMAC
  hello.writeUInt32BE(2, 2); // "I am node 2"
  hello.writeUInt32BE(1, 6); // dialing node 1
  randomBytes(48).copy(hello, 10); // instance and nonce
  closedIn['a hello as node 2 with a forged proof'] = await sendRaw('forged proof', [Buffer.from(rawFrame(FrameType.authHello, hello))], Buffer.from(rawFrame(FrameType.authProof, randomBytes(32))));
  t.log(`node 1 closed the connections in ${JSON.stringify(closedIn)} ms`);

  // ---- Peers with the wrong secret, through the real transport: one claiming to be node 2, one with an
  // id the group does not know. They never get an authenticated connection.
  const rogueErrors = new Map<number, TransportError[]>();
  const rogueMessages: number[] = [];
  for (const id of [2, 77]) {
    const rogue = new TcpTransport({ nodeId: id, secret: randomBytes(32), reconnectDelayMinMs: 20, reconnectDelayMaxMs: 200, higherIdDialDelayMs: 0, log: () => {} });
    rogues.push(rogue);
    rogueErrors.set(id, []);
    rogue.onError((e) => rogueErrors.get(id)!.push(e));
    rogue.onMessage((from) => rogueMessages.push(from));
    rogue.setPeers({ 1: `${HOST}:${n1.peerPort}` });
    rogue.send(1, { kind: 'app', from: id, body: new TextEncoder().encode('{"t":"q","id":1,"sg":"kv","sh":0,"m":"get","a":["x"]}') });
  }
  await waitUntil('both impostors refused at least twice', () => [...rogueErrors.values()].every((errors) => errors.filter((e) => e.kind === 'handshake').length >= 2), 10_000);
  for (const [id, errors] of rogueErrors) {
    t.regex(errors.find((e) => e.kind === 'handshake')!.message, /n1 failed to prove knowledge of the group secret/, `impostor n${id}`);
  }
  for (const rogue of rogues) {
    t.deepEqual(rogue.connectedPeers(), []);
    t.false(rogue.connected(1));
    t.is(rogue.metrics.connectionsOpen, 0);
    t.is(rogue.metrics.framesReceived, 0);
  }
  t.deepEqual(rogueMessages, []);
  await Promise.all(rogues.map((r) => r.close()));

  // ---- An authenticated peer (it has the secret, under an id the group does not know) that forges
  // node 2 as the sender, then announces a frame over frameBytesMax: protocol errors, its connection only.
  const secret = fs.readFileSync(cluster.secretFile);
  const insider = new TcpTransport({
    nodeId: 99, secret, higherIdDialDelayMs: 0, reconnectDelayMinMs: 20, reconnectDelayMaxMs: 200, log: () => {},
    limits: { frameBytesMax: 8 << 20, payloadBytesMax: 4 << 20 },
  });
  rogues.push(insider);
  insider.setPeers({ 1: `${HOST}:${n1.peerPort}` });
  await waitUntil('the insider connected', () => insider.connected(1), 10_000);
  const reconnectsBefore = insider.metrics.reconnects;
  insider.send(1, { kind: 'app', from: 2, body: new TextEncoder().encode('{"t":"inv","id":1,"sg":"kv","sh":0,"m":"put","a":["forged","x"],"w":"persisted"}') });
  await waitUntil('node 1 dropped the forging connection', () => insider.metrics.reconnects > reconnectsBefore && insider.connected(1), 10_000);
  const reconnectsMid = insider.metrics.reconnects;
  insider.send(1, { kind: 'data', from: 99, viewId: 0, shardId: 0, senderRank: 0, index: 0, payload: randomBytes(2 << 20) });
  await waitUntil('node 1 dropped the oversized frame\'s connection', () => insider.metrics.reconnects > reconnectsMid, 10_000);
  await insider.close();

  // ---- Node 1 is the same process, counted what happened, and the group is unaffected.
  const after = await cluster.waitForStatus([1], 'node 1 counting the refusals', (s) => s.transport.protocolErrors >= before.transport.protocolErrors + 2);
  const s1 = after[0]!;
  t.log(`node 1 transport before ${JSON.stringify(before.transport)} after ${JSON.stringify(s1.transport)}`);
  t.is(s1.pid, before.pid, 'node 1 is still the same process');
  t.true(s1.transport.handshakeFailures >= before.transport.handshakeFailures + 3 + 2 * 2, `handshakeFailures ${before.transport.handshakeFailures} -> ${s1.transport.handshakeFailures}`);
  t.true(s1.transport.protocolErrors >= before.transport.protocolErrors + 2, `protocolErrors ${before.transport.protocolErrors} -> ${s1.transport.protocolErrors}`);
  const now = (await cluster.statuses()) as AgentStatus[];
  for (const s of now) {
    t.is(s.mode, 'active', summary(s));
    t.true(s.ready, summary(s));
    t.is(s.viewId, formed[0]!.viewId, `no view change: ${summary(s)}`);
    t.is(s.counters.viewChanges, formed.find((f) => f.nodeId === s.nodeId)!.counters.viewChanges);
    t.deepEqual([...s.transport.connectedPeers].sort(), [1, 2, 3].filter((id) => id !== s.nodeId), `node ${s.nodeId} still connected to the members`);
  }
  t.deepEqual((await cluster.get(1, 'forged')).status, 404, 'the forged write was not applied');
  const key0 = keyInShard('after-garbage', 0);
  const put0 = await cluster.put(1, key0, 'still working');
  t.is(put0.status, 200, put0.text);
  t.deepEqual(put0.body.replies.map((r) => r.node).sort(), [1, 2], 'node 2 (the impersonated one) still takes part');
  const put1 = await cluster.put(2, keyInShard('after-garbage', 1), 'still routed');
  t.is(put1.status, 200, put1.text);
  t.is((await cluster.append(3, 'after the garbage')).status, 200);
  const logs = await Promise.all([1, 2, 3].map((id) => cluster.readLog(id)));
  t.deepEqual(logs[1], logs[0]);
  t.deepEqual(logs[2], logs[0]);
  t.deepEqual(cluster.unexpectedExits(), []);
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
