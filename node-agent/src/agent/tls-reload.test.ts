// TLS credentials reloaded at run time: agents in one process over loopback TCP with tls.mode "mutual",
// their files in Secret-like volumes updated as the kubelet does (an atomic swap of the ..data symlink).

import { execFile, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { DerechoClient } from '../client/client.ts';
import { loadAgentConfig } from '../config/load.ts';
import { ConfigError } from '../config/errors.ts';
import { Agent, TLS_RELOAD_MS_DEFAULT, tlsReloadMs } from './agent.ts';
import type { AgentOptions } from './agent.ts';
import { createLogger, silentLogger } from './logger.ts';
import { groupConfigs, until } from './test-group.ts';

const manifest = `
apiVersion: derecho.dev/v1alpha1
kind: DerechoGroup
metadata: { name: tls-reload }
spec:
  members: 3
  subgroups:
    - { name: kv, type: kv, minNodesPerShard: 2, maxNodesPerShard: 3 }
  tls: { mode: mutual }
  timing: { tickMs: 20, heartbeatMs: 40, suspectMs: 400 }
  restart: { graceSeconds: 0.5 }
`;

const reloadMs = 200;

const hasOpenssl = spawnSync('openssl', ['version'], { encoding: 'utf8' }).status === 0;
// One after the other: each runs a group whose failure detector (suspectMs 400) a busy machine would trip.
const opensslTest = hasOpenssl ? test.serial : test.skip;
const skipped = hasOpenssl ? '' : ' (SKIPPED: no openssl CLI on this machine to generate test certificates)';

/**
 * Makes CAs and certificates with the openssl CLI in `dir` (asynchronously: the agents' timers keep
 * running meanwhile); returns their PEM text.
 */
function pki(dir: string) {
  fs.mkdirSync(dir, { recursive: true });
  const run = (...args: string[]) => promisify(execFile)('openssl', args, { cwd: dir });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const read = (file: string) => fs.readFileSync(path.join(dir, file), 'utf8');
  let serial = 1000;
  return {
    async ca(name: string): Promise<string> {
      await run('req', '-x509', ...ec, '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${name}`);
      return read(`${name}.crt`);
    },
    /** A certificate with CN `cn` signed by CA `ca` (its files named `file`). */
    async leaf(cn: string, ca: string, file: string): Promise<{ cert: string; key: string; serialNumber: string }> {
      await run('req', ...ec, '-keyout', `${file}.key`, '-out', `${file}.csr`, '-subj', `/CN=${cn}`);
      await run('x509', '-req', '-in', `${file}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-set_serial', String(++serial), '-days', '2', '-out', `${file}.crt`);
      const cert = read(`${file}.crt`);
      return { cert, key: read(`${file}.key`), serialNumber: new X509Certificate(cert).serialNumber };
    },
  };
}

/**
 * A directory laid out as the kubelet mounts a Secret: each file a symlink into `..data`, itself a symlink
 * to a directory of the current contents; publish() swaps `..data` atomically (rename of a new symlink).
 */
function secretVolume(dir: string) {
  fs.mkdirSync(dir, { recursive: true });
  let generation = 0;
  return {
    file: (name: string) => path.join(dir, name),
    publish(files: Record<string, string>): void {
      const data = `..${++generation}`;
      fs.mkdirSync(path.join(dir, data));
      for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, data, name), text);
      fs.symlinkSync(data, path.join(dir, '..data_tmp'));
      const previous = fs.existsSync(path.join(dir, '..data')) ? fs.readlinkSync(path.join(dir, '..data')) : null;
      fs.renameSync(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
      if (previous) fs.rmSync(path.join(dir, previous), { recursive: true, force: true });
      for (const name of Object.keys(files)) {
        if (!fs.existsSync(path.join(dir, name))) fs.symlinkSync(path.join('..data', name), path.join(dir, name));
      }
    },
  };
}

function get(port: number, p: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: p }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

interface TlsStatus { subject: string; issuer: string; notAfter: string; serialNumber: string; reloads: number; lastReloadError: string | null }

async function tlsStatus(port: number): Promise<TlsStatus> {
  const status = JSON.parse(await get(port, '/status')) as { transport: { tls: TlsStatus } };
  return status.transport.tls;
}

/** One sample of a metric of the agent at `port` (its labels matching `labels`), or null. */
async function metric(port: number, name: string, labels = ''): Promise<number | null> {
  const text = await get(port, '/metrics');
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line === undefined ? null : Number(line.slice(line.lastIndexOf(' ') + 1));
}

/**
 * A TLS handshake with an agent's peer port, as a new peer makes one (trusting `ca`, presenting `client`):
 * the serial number of the certificate the agent presented. Fails when `ca` does not verify it.
 */
function handshakeSerial(port: number, ca: string, client: { cert: string; key: string }): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, cert: client.cert, key: client.key, checkServerIdentity: () => undefined }, () => {
      const serial = socket.getPeerCertificate().serialNumber;
      socket.destroy();
      resolve(serial);
    });
    socket.on('error', reject);
  });
}

/**
 * Three agents of a mutual-TLS group: CA "old-ca" signs node-<id> certificates, each node's files in its own
 * Secret-like volume. `start(i)` (re)starts node i+1 on its config and data directory.
 */
async function tlsGroup(t: ExecutionContext, logs: Partial<Record<number, AgentOptions['log']>> = {}) {
  const { dir, files, httpPorts } = await groupConfigs(t, manifest, 3, 'derecho-tls-reload-');
  const certs = pki(path.join(dir, 'pki'));
  const oldCa = await certs.ca('old-ca');
  const volumes = await Promise.all([1, 2, 3].map(async (id) => {
    const volume = secretVolume(path.join(dir, `tls-${id}`));
    const leaf = await certs.leaf(`node-${id}`, 'old-ca', `node-${id}`);
    volume.publish({ 'ca.crt': oldCa, [`node-${id}.crt`]: leaf.cert, [`node-${id}.key`]: leaf.key });
    return { volume, leaf };
  }));
  files.forEach((file, i) => {
    const config = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    const { volume } = volumes[i]!;
    config['auth'] = { tlsCaFile: volume.file('ca.crt'), tlsCertFile: volume.file(`node-${i + 1}.crt`), tlsKeyFile: volume.file(`node-${i + 1}.key`) };
    fs.writeFileSync(file, JSON.stringify(config));
  });
  const agents: Agent[] = [];
  t.teardown(async () => {
    for (const a of agents) await a.close();
  });
  const start = async (i: number): Promise<Agent> => {
    const agent = await Agent.create(loadAgentConfig({ file: files[i]!, env: {} }), { log: logs[i + 1] ?? silentLogger, tlsReloadMs: reloadMs });
    agents[i] = agent;
    return agent;
  };
  for (let i = 0; i < 3; i++) await start(i);
  await until('every agent ready', () => agents.every((a) => a.notReadyReason() === null), 30_000);
  return { certs, oldCa, volumes, agents, start, httpPorts, kv: (i: number) => new DerechoClient({ endpoints: [`http://127.0.0.1:${httpPorts[i]}`] }).kv('kv') };
}

opensslTest(`a renewed certificate from a new CA and a CA bundle are reloaded without a restart and used by new handshakes${skipped}`, async (t) => {
  t.timeout(90_000);
  const lines: string[] = [];
  const g = await tlsGroup(t, { 2: createLogger('info', {}, (l) => lines.push(l)) });
  const [, port2, port3] = g.httpPorts as [number, number, number];
  t.true((await g.kv(0).put('before', 'v1')).persisted);
  const before = await tlsStatus(port2);
  t.like(before, { subject: 'CN=node-2', issuer: 'CN=old-ca', serialNumber: g.volumes[1]!.leaf.serialNumber, reloads: 0, lastReloadError: null });

  // CA rotation: every ca.crt becomes the bundle old + new CA; nodes 1 and 2 get certificates of the new CA.
  const newCa = await g.certs.ca('new-ca');
  const bundle = g.oldCa + newCa;
  const renewed = await Promise.all([1, 2].map((id) => g.certs.leaf(`node-${id}`, 'new-ca', `node-${id}-renewed`)));
  g.volumes.forEach(({ volume, leaf }, i) => {
    const id = i + 1;
    const cert = renewed[i] ?? leaf;
    volume.publish({ 'ca.crt': bundle, [`node-${id}.crt`]: cert.cert, [`node-${id}.key`]: cert.key });
  });
  const node2 = renewed[1]!;
  await until('node 2 reloaded', async () => (await tlsStatus(port2)).serialNumber === node2.serialNumber, 10_000);
  const after = await tlsStatus(port2);
  const notAfter = new X509Certificate(node2.cert).validTo;
  t.deepEqual(after, { subject: 'CN=node-2', issuer: 'CN=new-ca', notAfter: new Date(notAfter).toISOString(), serialNumber: node2.serialNumber, reloads: 1, lastReloadError: null });
  await until('nodes 1 and 3 reloaded', async () => (await tlsStatus(g.httpPorts[0]!)).reloads === 1 && (await tlsStatus(port3)).reloads === 1, 10_000);
  const logged = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['msg'] === 'TLS credentials reloaded');
  t.is(logged.length, 1);
  t.like(logged[0], { level: 'info', serialNumber: node2.serialNumber, notAfter: after.notAfter });
  t.is(await metric(port2, 'derecho_tls_reloads_total', 'result="ok"'), 1);
  t.is(await metric(port2, 'derecho_tls_reloads_total', 'result="failed"'), 0);
  t.is(await metric(port2, 'derecho_tls_certificate_not_after_seconds'), Date.parse(after.notAfter) / 1000);
  // The connections made before stay up and serve.
  t.true((await g.kv(1).put('during', 'v2')).persisted);

  // A new peer trusting only the new CA gets node 2's new certificate (inbound handshakes).
  t.is(await handshakeSerial(g.agents[1]!.peerAddress.port, newCa, g.volumes[2]!.leaf), node2.serialNumber);
  // Node 3 restarts trusting only the new CA (its own certificate, of the old CA, is in the others'
  // bundle): it connects to nodes 1 and 2 only if they present their renewed certificates (they dial it).
  await g.agents[2]!.close();
  const node3 = g.volumes[2]!;
  node3.volume.publish({ 'ca.crt': newCa, 'node-3.crt': node3.leaf.cert, 'node-3.key': node3.leaf.key });
  const restarted = await g.start(2);
  t.is(restarted.startKind, 'restart');
  await until('node 3 back in a view of 3 members', () => g.agents.every((a) => a.notReadyReason() === null && a.driver.status().members.length === 3), 60_000);
  const write = await g.kv(1).put('after', 'v3');
  t.true(write.persisted);
  await until('node 3 has the write made through node 2', async () => {
    const out = await restarted.driver.query('kv', 0, 'get', ['after']);
    return out.ok && (out.value as { value: string } | null)?.value === 'v3';
  });
  t.is((await g.kv(2).get('before'))?.value, 'v1');
  t.like(await tlsStatus(port3), { issuer: 'CN=old-ca', reloads: 0, lastReloadError: null });
  // Nodes 1 and 2 dialed it (the lower id dials) with their renewed certificates: none was refused.
  const status3 = JSON.parse(await get(port3, '/status')) as { transport: { handshakeFailures: number; lastHandshakeFailure: unknown } };
  t.is(status3.transport.handshakeFailures, 0, JSON.stringify(status3.transport.lastHandshakeFailure));
});

opensslTest(`refused TLS files (garbage, a key of another certificate) keep the credentials in force, say why in /status and are retried${skipped}`, async (t) => {
  t.timeout(60_000);
  const lines: string[] = [];
  const g = await tlsGroup(t, { 2: createLogger('info', {}, (l) => lines.push(l)) });
  const port2 = g.httpPorts[1]!;
  const node2 = g.volumes[1]!;
  const files = (cert: string, key: string) => ({ 'ca.crt': g.oldCa, 'node-2.crt': cert, 'node-2.key': key });

  node2.volume.publish(files('-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n', node2.leaf.key));
  const garbage = await until('the refusal in /status', async () => {
    const s = await tlsStatus(port2);
    return s.lastReloadError !== null && s;
  }, 10_000);
  t.regex(garbage.lastReloadError!, new RegExp(`^${node2.volume.file('node-2.crt').replace(/[.]/g, '\\.')} changed: .*the certificate cannot be parsed`));
  t.like(garbage, { serialNumber: node2.leaf.serialNumber, issuer: 'CN=old-ca', reloads: 0 });
  t.true(lines.some((l) => /"level":"error","msg":"TLS credentials reload failed; the current ones stay in use".*the certificate cannot be parsed/.test(l)));
  // Still serving, and new handshakes still use the credentials in force.
  t.true((await g.kv(1).put('k', 'v')).persisted);
  t.is(await handshakeSerial(g.agents[1]!.peerAddress.port, g.oldCa, g.volumes[2]!.leaf), node2.leaf.serialNumber);

  // Caught mid-update: the renewed certificate with the old key, then the key too.
  const renewed = await g.certs.leaf('node-2', 'old-ca', 'node-2-renewed');
  node2.volume.publish(files(renewed.cert, node2.leaf.key));
  await until('the key refusal in /status', async () => /the private key does not match the certificate/.test((await tlsStatus(port2)).lastReloadError ?? ''), 10_000);
  node2.volume.publish(files(renewed.cert, renewed.key));
  await until('reloaded', async () => (await tlsStatus(port2)).serialNumber === renewed.serialNumber, 10_000);
  t.like(await tlsStatus(port2), { reloads: 1, lastReloadError: null });
  t.is(await metric(port2, 'derecho_tls_reloads_total', 'result="failed"'), 2);
  t.is(await metric(port2, 'derecho_tls_reloads_total', 'result="ok"'), 1);
  t.is(g.agents[1]!.exitReason(), null);
  t.true((await g.kv(1).put('k', 'v2')).persisted);
  t.is(await handshakeSerial(g.agents[1]!.peerAddress.port, g.oldCa, g.volumes[2]!.leaf), renewed.serialNumber);
});

test('the TLS reload period: the option, else DERECHO_TLS_RELOAD_MS, else 10 s; at least 100 ms; a bad variable is a configuration error', (t) => {
  t.is(TLS_RELOAD_MS_DEFAULT, 10_000);
  t.is(tlsReloadMs(undefined, {}), 10_000);
  t.is(tlsReloadMs(undefined, { DERECHO_TLS_RELOAD_MS: '2500' }), 2500);
  t.is(tlsReloadMs(undefined, { DERECHO_TLS_RELOAD_MS: '5' }), 100);
  t.is(tlsReloadMs(300, { DERECHO_TLS_RELOAD_MS: '2500' }), 300);
  t.is(tlsReloadMs(0, {}), 100);
  t.throws(() => tlsReloadMs(undefined, { DERECHO_TLS_RELOAD_MS: '10s' }), { instanceOf: ConfigError, message: 'environment DERECHO_TLS_RELOAD_MS: "10s" is not a number of milliseconds' });
});
