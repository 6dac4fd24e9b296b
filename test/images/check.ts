// npm run test:images: builds both images as scripts/images/build.ts does (OCI archives, no Docker) and
// runs them under runc, the OCI runtime a kubelet's containerd uses, as the operator's pods run them: the
// image's user (65532), a read-only root file system, /tmp a tmpfs, the data directory a volume, no
// capabilities. The agent image runs a one-member group and serves a kv write and read; the operator image
// answers --help. A Dockerfile instruction the local build cannot carry out fails the build (drift).
//
// Needs root and runc (apt-get installs it, and mmdebstrap for the build, when missing). Elsewhere it says
// why it skips; under CI=true a missing prerequisite fails.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../../node-agent/src/util/ports.ts';
import { httpRequest } from '../../node-agent/src/util/http-request.ts';
import { ROOT } from '../../scripts/images/dockerfile.ts';
import { buildImage, ensureBuildTools } from '../../scripts/images/build.ts';
import type { BuiltImage } from '../../scripts/images/build.ts';

const log = (line: string): void => {
  process.stdout.write(`images: ${line}\n`);
};

function skip(reason: string): never {
  if (process.env.CI) {
    log(`FAIL: ${reason} (required under CI)`);
    process.exit(1);
  }
  log(`SKIPPED: ${reason}`);
  process.exit(0);
}

function sh(command: string, args: string[]): { status: number | null; out: string } {
  const r = spawnSync(command, args, { encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

function ensureRunc(): void {
  if (sh('runc', ['--version']).status === 0) return;
  if (process.getuid?.() !== 0) skip('runc is not installed and this is not root');
  log('installing runc (apt-get)');
  const r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'runc'], { encoding: 'utf8', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  if (r.status !== 0) skip(`apt-get install runc failed: ${(r.stderr ?? '').trim().split('\n').slice(-3).join(' ')}`);
}

function unpack(image: BuiltImage, dir: string): string {
  const rootfs = path.join(dir, 'rootfs');
  fs.mkdirSync(rootfs, { recursive: true });
  for (const layer of image.layers) {
    const r = sh('tar', ['--numeric-owner', '--xattrs', '-xf', layer, '-C', rootfs]);
    if (r.status !== 0) throw new Error(`unpacking ${layer}: ${r.out}`);
  }
  return rootfs;
}

interface Mount { destination: string; type: string; source: string; options: string[] }

/** An OCI bundle for `image` as a kubelet would run it (see the header). */
function bundle(image: BuiltImage, dir: string, args: string[], env: string[], mounts: Mount[]): string {
  const rootfs = unpack(image, dir);
  const r = sh('runc', ['spec', '--bundle', dir]);
  if (r.status !== 0) throw new Error(`runc spec: ${r.out}`);
  const spec = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  const [uid, gid] = image.config.User.split(':').map(Number) as [number, number];
  spec.root = { path: rootfs, readonly: true };
  spec.process.terminal = false;
  spec.process.user = { uid, gid };
  spec.process.args = args;
  spec.process.env = [...image.config.Env, ...env];
  spec.process.cwd = image.config.WorkingDir;
  spec.process.noNewPrivileges = true;
  spec.process.capabilities = { bounding: [], effective: [], permitted: [], inheritable: [], ambient: [] };
  delete spec.process.rlimits;
  // The host's network (the test reaches the agent on 127.0.0.1); the other namespaces of a pod.
  spec.linux.namespaces = (spec.linux.namespaces as { type: string }[]).filter((ns) => ns.type !== 'network');
  spec.hostname = undefined;
  spec.mounts = [...(spec.mounts as Mount[]).filter((m) => m.destination !== '/tmp'), { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777', 'size=64m'] }, ...mounts];
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(spec, null, 1));
  return dir;
}

async function until<T>(what: string, f: () => Promise<T | null | false>, timeoutMs: number): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await f().catch(() => null);
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function checkAgent(image: BuiltImage, work: string): Promise<string> {
  const dir = path.join(work, 'agent');
  const config = path.join(dir, 'config');
  const data = path.join(dir, 'data');
  fs.mkdirSync(config, { recursive: true });
  fs.mkdirSync(data, { recursive: true });
  fs.chownSync(data, 65532, 65532);
  fs.writeFileSync(path.join(config, 'group.yaml'), [
    'apiVersion: derecho.dev/v1alpha1', 'kind: DerechoGroup', 'metadata: { name: image-check }', 'spec:', '  members: 1',
    '  subgroups: [{ name: kv, type: kv, minNodesPerShard: 1, maxNodesPerShard: 1 }]', '  tls: { mode: hmac }', '',
  ].join('\n'));
  fs.writeFileSync(path.join(config, 'hmac.key'), 'a-32-byte-key-for-the-image-test');
  fs.chmodSync(config, 0o755);
  for (const f of fs.readdirSync(config)) fs.chmodSync(path.join(config, f), 0o644);
  const [peerPort, httpPort] = [await freePort(), await freePort()];
  const id = `derecho-image-agent-${process.pid}`;
  bundle(image, dir, [...image.config.Entrypoint, ...(image.config.Cmd ?? [])], [
    'DERECHO_NODE_ID=1', 'DERECHO_GROUP_FILE=/etc/derecho/group/group.yaml', 'DERECHO_HMAC_SECRET_FILE=/etc/derecho/group/hmac.key',
    'DERECHO_LISTEN_HOST=127.0.0.1', `DERECHO_PEER_PORT=${peerPort}`, `DERECHO_HTTP_PORT=${httpPort}`,
  ], [
    { destination: '/var/lib/derecho', type: 'bind', source: data, options: ['rbind', 'rw'] },
    { destination: '/etc/derecho/group', type: 'bind', source: config, options: ['rbind', 'ro'] },
  ]);
  const output: string[] = [];
  const child = spawn('runc', ['run', '--bundle', dir, id], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (c: Buffer) => output.push(c.toString()));
  child.stderr.on('data', (c: Buffer) => output.push(c.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const t0 = Date.now();
  try {
    const base = `http://127.0.0.1:${httpPort}`;
    await until('the agent in the container to be ready', async () => (await httpRequest({ url: `${base}/readyz`, timeoutMs: 2000 })).status === 200, 120_000);
    const readyMs = Date.now() - t0;
    const put = await httpRequest({ url: `${base}/v1/kv/kv/greeting`, method: 'PUT', body: 'from the image', timeoutMs: 10_000 });
    if (put.status !== 200) throw new Error(`PUT: HTTP ${put.status} ${put.body.toString()}`);
    const got = JSON.parse((await httpRequest({ url: `${base}/v1/kv/kv/greeting`, timeoutMs: 10_000 })).body.toString()) as { value: string };
    if (got.value !== 'from the image') throw new Error(`GET returned ${JSON.stringify(got)}`);
    const state = JSON.parse(sh('runc', ['state', id]).out) as { pid: number };
    const uidLine = fs.readFileSync(`/proc/${state.pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('Uid:')) ?? '';
    if (!/^Uid:\s+65532\s+65532/.test(uidLine)) throw new Error(`the agent runs as ${uidLine}, not 65532`);
    const write = sh('runc', ['exec', id, '/usr/bin/touch', '/app/written']);
    if (write.status === 0 || !/Read-only file system/.test(write.out)) throw new Error(`the root file system is writable: ${write.out}`);
    if (sh('runc', ['exec', id, '/usr/bin/touch', '/var/lib/derecho/written']).status !== 0) throw new Error('the data volume is not writable by the agent');
    if (!fs.readdirSync(data).some((f) => f !== 'written')) throw new Error('the agent wrote nothing to its data directory');
    sh('runc', ['kill', id, 'TERM']);
    const code = await Promise.race([exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 20_000))]);
    if (code !== 0) throw new Error(`the agent did not exit 0 on SIGTERM (${String(code)})`);
    return `agent ready ${(readyMs / 1000).toFixed(1)} s after runc run, kv put/get, uid 65532, read-only root, data written, exit 0 on SIGTERM`;
  } catch (e) {
    throw new Error(`${e instanceof Error ? e.message : String(e)}\n--- container output\n${output.join('').split('\n').slice(-30).join('\n')}`);
  } finally {
    sh('runc', ['delete', '--force', id]);
    child.kill('SIGKILL');
  }
}

async function checkOperator(image: BuiltImage, work: string): Promise<string> {
  const dir = path.join(work, 'operator');
  fs.mkdirSync(dir, { recursive: true });
  const id = `derecho-image-operator-${process.pid}`;
  bundle(image, dir, [...image.config.Entrypoint, '--help'], [], []);
  const r = spawnSync('runc', ['run', '--bundle', dir, id], { encoding: 'utf8', timeout: 120_000 });
  sh('runc', ['delete', '--force', id]);
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (r.status !== 0 || !/--namespace/.test(out)) throw new Error(`operator --help in the container: exit ${String(r.status)}\n${out.split('\n').slice(-20).join('\n')}`);
  return 'operator --help exits 0';
}

async function main(): Promise<void> {
  if (process.platform !== 'linux') skip('runc runs on Linux only');
  if (process.getuid?.() !== 0) skip('building root file systems and running runc need root');
  try {
    ensureBuildTools(log);
  } catch (e) {
    skip(e instanceof Error ? e.message : String(e));
  }
  ensureRunc();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'derecho-images-'));
  const results: string[] = [];
  try {
    const t0 = Date.now();
    const agent = buildImage('agent', { outDir: path.join(work, 'out'), log });
    const operator = buildImage('operator', { outDir: path.join(work, 'out'), log });
    log(`built both in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    results.push(await checkAgent(agent, work));
    results.push(await checkOperator(operator, work));
    log(`PASS: ${results.join('; ')}`);
  } catch (e) {
    log(`FAIL: ${e instanceof Error ? e.message : String(e)}`);
    process.exitCode = 1;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

process.chdir(ROOT);
await main();
