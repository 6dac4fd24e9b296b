// The `derecho` command end to end, as a user runs it: bin/derecho.js in child processes, real agent
// processes on loopback ports. Every test uses its own temporary state directory (and the group test a
// random port range), so the file runs alongside the others.

import test from 'ava';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { alive } from '../../node-agent/src/util/process.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = path.join(ROOT, 'bin', 'derecho.js');
const MANIFEST = path.join(ROOT, 'examples', 'kv-group.yaml');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `derecho ARGS` in `cwd`; never rejects (the exit code is in the result). */
function derecho(args: string[], options: { cwd?: string; timeoutMs?: number } = {}): Promise<Run> {
  const env = { ...process.env };
  delete env.DERECHO_STATE_DIR;
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { cwd: options.cwd ?? ROOT, env, timeout: options.timeoutMs ?? 30_000, encoding: 'utf8' }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

function tempDir(name: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `derecho-cli-${name}-`));
}


test('--help exits 0 and lists the commands', async (t) => {
  const run = await derecho(['--help']);
  t.is(run.code, 0, run.stderr);
  for (const command of ['up', 'status', 'kv', 'down']) t.regex(run.stdout, new RegExp(`^\\s+${command}\\s`, 'm'));
  const kv = await derecho(['kv', '--help']);
  t.is(kv.code, 0);
  t.regex(kv.stdout, /derecho kv put KEY VALUE/);
  t.regex(kv.stdout, /--subgroup NAME/);
});

test('an unknown command or option says which and shows the usage', async (t) => {
  const command = await derecho(['frobnicate']);
  t.not(command.code, 0);
  t.regex(command.stderr, /unknown command "frobnicate"/);
  t.regex(command.stderr, /Usage: derecho <command>/);
  const option = await derecho(['up', '--bogus']);
  t.is(option.code, 2);
  t.regex(option.stderr, /unknown option "--bogus" for `derecho up`/);
  t.regex(option.stderr, /Usage: derecho up/);
});

test('status with nothing running says so and how to start a group', async (t) => {
  const dir = tempDir('empty');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const explicit = await derecho(['status', '--state-dir', path.join(dir, 'state')]);
  t.is(explicit.code, 1);
  t.regex(explicit.stderr, /No Derecho group is running/);
  t.regex(explicit.stderr, /derecho up -f examples\/kv-group\.yaml/);
  // Without a selection: looks in ./.derecho of the working directory.
  const here = await derecho(['status'], { cwd: dir });
  t.is(here.code, 1);
  t.regex(here.stderr, /No Derecho group is running here/);
});

test('up with a bad manifest fails naming the field, and starts nothing', async (t) => {
  const dir = tempDir('bad');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const bad = path.join(dir, 'bad.yaml');
  fs.writeFileSync(bad, fs.readFileSync(MANIFEST, 'utf8').replace(/^ {2}members: 3$/m, '  members: 0'));
  const run = await derecho(['up', '-f', bad, '--state-dir', path.join(dir, 'state')]);
  t.is(run.code, 2);
  t.regex(run.stderr, /spec\.members: 0 is not/);
  t.false(fs.existsSync(path.join(dir, 'state', 'state.json')));
});

test.serial('up, kv put/get/ls/del, status, down: the group works and down leaves no process', async (t) => {
  t.timeout(120_000);
  const dir = tempDir('group');
  const stateDir = path.join(dir, 'state');
  // Below Linux's ephemeral range (32768+), so no outgoing connection takes a port between probe and bind.
  const basePort = 10_000 + Math.floor(Math.random() * 20_000);
  const pids = new Set<number>();
  t.teardown(async () => {
    await derecho(['down', '--state-dir', stateDir]);
    for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const at = ['--state-dir', stateDir];

  const up = await derecho(['up', '-f', MANIFEST, ...at, '--base-port', String(basePort), '--timeout', '60'], { timeoutMs: 90_000 });
  t.is(up.code, 0, `${up.stdout}\n${up.stderr}`);
  t.regex(up.stdout, /kv-demo is ready/);
  const state = JSON.parse(fs.readFileSync(path.join(stateDir, 'state.json'), 'utf8')) as { supervisorPid: number; members: { nodeId: number; pid: number; httpPort: number }[] };
  pids.add(state.supervisorPid);
  for (const member of state.members) pids.add(member.pid);
  t.is(state.members.length, 3);
  t.true([...pids].every(alive));
  t.true(state.members.every((member) => member.httpPort >= basePort + 1000));
  t.is((fs.statSync(path.join(stateDir, 'secret', 'hmac.key')).mode & 0o777), 0o600);

  const again = await derecho(['up', '-f', MANIFEST, ...at]);
  t.is(again.code, 1);
  t.regex(again.stderr, /already runs/);

  const put = await derecho(['kv', 'put', 'greeting', 'hello', ...at]);
  t.is(put.code, 0, put.stderr);
  const version = /version (\d+\.\d+)/.exec(put.stdout)?.[1];
  t.truthy(version, put.stdout);
  t.is((await derecho(['kv', 'put', 'greeting', 'bonjour', ...at])).code, 0);
  const get = await derecho(['kv', 'get', 'greeting', ...at]);
  t.is(get.code, 0, get.stderr);
  t.is(get.stdout, 'bonjour\n');
  const old = await derecho(['kv', 'get', 'greeting', '--version', version!, ...at]);
  t.is(old.stdout, 'hello\n', old.stderr);
  t.is((await derecho(['kv', 'put', 'user/1', 'ada', '--subgroup', 'kv', ...at])).code, 0);
  const ls = await derecho(['kv', 'ls', ...at]);
  t.is(ls.code, 0, ls.stderr);
  t.regex(ls.stdout, /^greeting\s+\d+\.\d+\s+bonjour$/m);
  t.regex(ls.stdout, /^user\/1\s+\d+\.\d+\s+ada$/m);
  const lsPrefix = await derecho(['kv', 'ls', 'user/', ...at]);
  t.notRegex(lsPrefix.stdout, /greeting/);
  t.is((await derecho(['kv', 'del', 'greeting', ...at])).code, 0);
  const missing = await derecho(['kv', 'get', 'greeting', ...at]);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /not found/);
  const wrongSubgroup = await derecho(['kv', 'get', 'x', '--subgroup', 'events', ...at]);
  t.is(wrongSubgroup.code, 2);
  t.regex(wrongSubgroup.stderr, /type log, not kv/);

  const status = await derecho(['status', ...at]);
  t.is(status.code, 0, status.stderr);
  t.regex(status.stdout, /kv-demo {2}view \d+: members [1-3,]+, leader \d {2}ready/);
  t.regex(status.stdout, /NODE\s+PID\s+HTTP\s+MODE\s+VIEW\s+MEMBERS\s+SHARD\s+DELIVERED\s+PERSISTED\s+MSG\/S/);
  for (const nodeId of [1, 2, 3]) t.regex(status.stdout, new RegExp(`^${nodeId}\\s+\\d+\\s+\\d+\\s+active\\s`, 'm'));
  // Every member holds kv/0 and events/0 (examples/kv-group.yaml).
  t.is(status.stdout.match(/ kv\/0 /g)?.length, 3, status.stdout);
  t.is(status.stdout.match(/ events\/0 /g)?.length, 3, status.stdout);

  // Pids of members the supervisor may have restarted meanwhile.
  const latest = JSON.parse(fs.readFileSync(path.join(stateDir, 'state.json'), 'utf8')) as { members: { pid: number | null }[] };
  for (const member of latest.members) if (member.pid !== null) pids.add(member.pid);

  const down = await derecho(['down', ...at]);
  t.is(down.code, 0, down.stderr);
  t.regex(down.stdout, /Stopped kv-demo: no process left/);
  for (const pid of pids) t.false(alive(pid), `pid ${pid} is still alive after down`);
  t.false(fs.existsSync(path.join(stateDir, 'state.json')));
  t.true(fs.existsSync(path.join(stateDir, 'node-1', 'data')), 'down keeps the data');

  const after = await derecho(['status', ...at]);
  t.is(after.code, 1);
  t.regex(after.stderr, /No Derecho group is running/);
  const purge = await derecho(['down', '--purge', ...at]);
  t.is(purge.code, 0, purge.stderr);
  t.false(fs.existsSync(stateDir));
});
