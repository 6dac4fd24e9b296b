// spec.transport in the agent: a group over the RDMA transport (in-memory verbs fabric), "rdma" without a
// device stops start-up (exit code 2), "auto" without a device runs over TCP and says so (log, /status).

import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { loadAgentConfig } from '../config/load.ts';
import { ConfigError } from '../config/errors.ts';
import { FakeFabric } from '../transport/rdma/fake-verbs.ts';
import { loadNativeVerbs } from '../transport/rdma/native-verbs.ts';
import { Agent } from './agent.ts';
import { createLogger, silentLogger } from './logger.ts';
import { EXIT_CONFIG, runAgent, writeTerminationMessage } from './main.ts';
import { groupConfigs, until } from './test-group.ts';

function manifest(transport: string, members: number): string {
  return `
apiVersion: derecho.dev/v1alpha1
kind: DerechoGroup
metadata: { name: transport-test }
spec:
  members: ${members}
  transport: ${transport}
  subgroups:
    - { name: kv, type: kv, minNodesPerShard: ${members}, maxNodesPerShard: ${members} }
  tls: { mode: hmac }
  timing: { tickMs: 20, heartbeatMs: 40, suspectMs: 400 }
  restart: { graceSeconds: 0.5 }
`;
}

function getJson(port: number, p: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: p }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve(JSON.parse(body) as Record<string, unknown>));
    }).on('error', reject);
  });
}

/** Config files of `members` agents in a fresh directory. */
async function configs(t: { teardown(f: () => void): void }, transport: string, members: number) {
  const { files, httpPorts } = await groupConfigs(t, manifest(transport, members), members, 'derecho-transport-');
  return { files, httpPorts };
}

test('a group runs over the RDMA transport: ordered updates and state-table rows over verbs (in-memory fabric)', async (t) => {
  t.timeout(60_000);
  const { files, httpPorts } = await configs(t, 'rdma', 3);
  const fabric = new FakeFabric();
  const agents: Agent[] = [];
  t.teardown(async () => {
    for (const a of agents) await a.close();
  });
  for (const file of files) agents.push(await Agent.create(loadAgentConfig({ file, env: {} }), { log: silentLogger, verbs: fabric.verbs() }));
  await until('every agent ready', () => agents.every((a) => a.notReadyReason() === null), 30_000);
  const results = await Promise.all(agents.flatMap((a, i) => Array.from({ length: 10 }, (_, k) => a.driver.invoke('kv', 0, 'put', [`k${i}-${k}`, `v${k}`]))));
  t.true(results.every((r) => r.replies.length === 3 && r.persisted));
  const expected = await agents[0]!.driver.query('kv', 0, 'get', ['k2-9']);
  t.like(expected, { ok: true, value: { key: 'k2-9', value: 'v9' } });
  for (const a of agents.slice(1)) t.deepEqual(await a.driver.query('kv', 0, 'get', ['k2-9']), expected);
  const status = await getJson(httpPorts[0]!, '/status');
  t.like(status['transport'], { requested: 'rdma', kind: 'rdma', device: 'fake0', rdmaPeers: [2, 3] });
  t.true(((status['transport'] as { framesSent: number }).framesSent) > 0);
  t.true(fabric.stats.writesWithImm > 20, `writes with immediate: ${fabric.stats.writesWithImm}`);
  t.is(fabric.stats.errors, 0);
});

test('transport: rdma on a node without an RDMA device stops start-up with exit code 2 and says why', async (t) => {
  t.timeout(20_000);
  const { files } = await configs(t, 'rdma', 1);
  const errors: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array) => {
    errors.push(String(chunk));
    return true;
  }) as typeof process.stderr.write;
  // The container's termination message file (created by the kubelet) gets the reason too.
  const terminationLog = path.join(mkdtempSync(path.join(tmpdir(), 'derecho-term-')), 'termination-log');
  writeFileSync(terminationLog, '');
  let code: number;
  try {
    code = await runAgent(['--config', files[0]!], { DERECHO_TERMINATION_MESSAGE_PATH: terminationLog }, { verbs: new FakeFabric().verbs([]), log: silentLogger });
  } finally {
    process.stderr.write = write;
  }
  t.is(code, EXIT_CONFIG);
  t.regex(errors.join(''), /spec\.transport: "rdma" needs RDMA on this node, but this node has no RDMA device \(ibv_get_device_list lists none\)/);
  t.regex(readFileSync(terminationLog, 'utf8'), /^invalid configuration: spec\.transport: "rdma" needs RDMA on this node, but this node has no RDMA device/);
  // The native addon on this node: no device (or not built) fails the same way, before anything listens.
  const native = loadNativeVerbs();
  if (native.ok && native.verbs.devices().length > 0) return;
  const err = await t.throwsAsync(Agent.create(loadAgentConfig({ file: files[0]!, env: {} }), { log: silentLogger }), { instanceOf: ConfigError });
  t.regex(err!.message, native.ok ? /this node has no RDMA device/ : /RDMA addon (not built|failed to load)/);
});

test('transport: auto without an RDMA device runs over TCP, logs the fallback and shows it in /status', async (t) => {
  t.timeout(20_000);
  const { files, httpPorts } = await configs(t, 'auto', 1);
  const lines: string[] = [];
  const log = createLogger('info', {}, (l) => lines.push(l));
  const agent = await Agent.create(loadAgentConfig({ file: files[0]!, env: {} }), { log, verbs: new FakeFabric().verbs([]) });
  t.teardown(() => agent.close());
  await until('ready', () => agent.notReadyReason() === null);
  const status = await getJson(httpPorts[0]!, '/status');
  t.like(status['transport'], { requested: 'auto', kind: 'tcp', device: null });
  t.regex((status['transport'] as { reason: string }).reason, /spec\.transport is auto and RDMA is unavailable \(this node has no RDMA device .*\): using TCP/);
  t.true(lines.some((l) => /transport: falling back to TCP/.test(l) && /RDMA is unavailable/.test(l)));
});

test('transport: auto with an RDMA device uses it, serving peers without RDMA over TCP', async (t) => {
  t.timeout(30_000);
  const { files, httpPorts } = await configs(t, 'auto', 2);
  const fabric = new FakeFabric();
  const agents = [
    await Agent.create(loadAgentConfig({ file: files[0]!, env: {} }), { log: silentLogger, verbs: fabric.verbs() }),
    await Agent.create(loadAgentConfig({ file: files[1]!, env: {} }), { log: silentLogger, verbs: fabric.verbs([]) }),
  ];
  t.teardown(async () => {
    for (const a of agents) await a.close();
  });
  await until('both ready', () => agents.every((a) => a.notReadyReason() === null), 20_000);
  const r = await agents[0]!.driver.invoke('kv', 0, 'put', ['x', 'y']);
  t.is(r.replies.length, 2);
  const s1 = await getJson(httpPorts[0]!, '/status');
  const s2 = await getJson(httpPorts[1]!, '/status');
  t.like(s1['transport'], { requested: 'auto', kind: 'rdma', device: 'fake0', rdmaPeers: [] });
  t.like(s2['transport'], { requested: 'auto', kind: 'tcp' });
});

test('the termination message is written only where the kubelet made the file, and at most 4096 bytes', (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'derecho-term-'));
  const missing = path.join(dir, 'none');
  writeTerminationMessage('why', { DERECHO_TERMINATION_MESSAGE_PATH: missing });
  t.false(existsSync(missing), 'no file is created (outside a container /dev/termination-log does not exist)');
  const file = path.join(dir, 'termination-log');
  writeFileSync(file, '');
  writeTerminationMessage('x'.repeat(5000), { DERECHO_TERMINATION_MESSAGE_PATH: file });
  t.is(readFileSync(file, 'utf8').length, 4096);
  writeTerminationMessage('the replica exited: removed', { DERECHO_TERMINATION_MESSAGE_PATH: file });
  t.is(readFileSync(file, 'utf8'), 'the replica exited: removed');
  writeTerminationMessage('unwritable', { DERECHO_TERMINATION_MESSAGE_PATH: dir });
  t.pass('a path that cannot be written is ignored');
});
