// The local runner's Supervisor: from a DerechoGroup manifest, prepare a state directory (credentials,
// one agent config per member, data dirs, logs), pick free loopback ports, start one agent process per
// member and keep them running until stop():
//  - a member that exits on its own is restarted after a short backoff (exit 3 — the replica exited and
//    must rejoin — or 1, or killed by a signal), at most RESTARTS_PER_MINUTE times a minute;
//  - a member that exits with 2 (bad configuration) is never restarted: the supervisor reports the
//    agent's message and stops the group;
//  - stop() sends SIGTERM to every agent, then SIGKILL after a timeout, and waits until they are gone.
// While it runs, the supervisor keeps the state file (state.ts) current so other invocations find it.

import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { portFree } from '../util/ports.ts';
import path from 'node:path';
import YAML from 'yaml';
import { loadGroupManifest } from '../config/load.ts';
import type { DerechoGroupSpec } from '../config/schema.ts';
import { BUILTIN_TYPES } from '../objects/kv.ts';
import {
  AGENT_MAIN, MARKER_FILE, logTail, ours, readState, removeState, shown, signal, tsxImport, waitGone, writeState,
} from './state.ts';
import type { MemberRecord, RunState } from './state.ts';
import { alive } from '../util/process.ts';

export const HOST = '127.0.0.1';
export const DEFAULT_BASE_PORT = 7100;
/** HTTP ports start this far above the peer ports (7100 → 8100). */
export const HTTP_PORT_OFFSET = 1000;
export const RESTARTS_PER_MINUTE = 5;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 8_000;
export const STOP_TIMEOUT_MS = 5_000;

/** A problem that stops the runner before or while it starts (shown as is, no stack trace). */
export class RunnerError extends Error {
  override readonly name = 'RunnerError';
  /** The exit code the CLI uses: 2 for configuration problems, 1 otherwise. */
  constructor(message: string, readonly exitCode: number = 1) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------------------
// Checks before starting.

/** Problems that make a valid manifest impossible to run locally (thrown as a RunnerError, exit 2). */
export function checkRunnable(manifest: DerechoGroupSpec, source: string): void {
  const problems: string[] = [];
  manifest.spec.subgroups.forEach((subgroup, index) => {
    if (BUILTIN_TYPES[subgroup.type] === undefined) {
      problems.push(`${source}: spec.subgroups[${index}].type: ${JSON.stringify(subgroup.type)} has no implementation in the stock agent the local runner starts (built in: ${Object.keys(BUILTIN_TYPES).join(', ')})`);
    }
  });
  if (manifest.spec.tls.mode === 'mutual' && !hasOpenssl()) {
    problems.push(
      `${source}: spec.tls.mode: "mutual" needs certificates; the local runner makes throwaway ones with the openssl command, ` +
      'which was not found on PATH. Install openssl, or set spec.tls.mode: hmac for local runs (frames signed with a generated shared key).',
    );
  }
  if (problems.length > 0) throw new RunnerError(problems.join('\n'), 2);
}

let opensslFound: boolean | null = null;
function hasOpenssl(): boolean {
  opensslFound ??= spawnSync('openssl', ['version'], { stdio: 'ignore' }).status === 0;
  return opensslFound;
}

/**
 * Makes sure no supervisor runs in `dir`. A state file left by a supervisor that is gone is removed,
 * unless agents it started still run (then `derecho down` must clean up first).
 */
export function checkNotRunning(dir: string): void {
  const state = readState(dir);
  if (state === null) return;
  if (ours(state.supervisorPid, state.stateDir)) {
    throw new RunnerError(
      `group ${state.group} already runs from ${shown(dir)} (supervisor pid ${state.supervisorPid}${state.foreground ? ', in the foreground of another terminal' : ''}).\n` +
      'See it with `derecho status`; stop it with `derecho down`.',
    );
  }
  const left = state.members.filter((member) => ours(member.pid, member.configFile));
  if (left.length > 0) {
    throw new RunnerError(
      `a previous run of group ${state.group} in ${shown(dir)} lost its supervisor but left agents running (pids ${left.map((member) => member.pid).join(', ')}).\n` +
      'Stop them with `derecho down`, then start again.',
    );
  }
  removeState(dir);
}

/** Creates the state directory (with its marker) if needed. */
export function makeStateDir(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  const marker = path.join(dir, MARKER_FILE);
  if (!fs.existsSync(marker)) fs.writeFileSync(marker, 'Made by the derecho local runner (`derecho up`); `derecho down --purge` deletes this directory.\n');
}

// ---------------------------------------------------------------------------------------------------
// Ports.

/** `count` free ports from `from` upwards, skipping busy ones and those in `taken`. */
export async function freePorts(count: number, from: number, taken: Set<number> = new Set(), host = HOST): Promise<number[]> {
  const ports: number[] = [];
  for (let port = from; ports.length < count; port++) {
    if (port > 65_535) throw new RunnerError(`no ${count} free ports on ${host} from ${from} upwards; pick another --base-port`);
    if (taken.has(port)) continue;
    if (await portFree(port, host)) {
      ports.push(port);
      taken.add(port);
    }
  }
  return ports;
}

// ---------------------------------------------------------------------------------------------------
// Credentials.

interface AuthFiles {
  hmacSecretFile?: string;
  tlsCaFile?: string;
  certs?: Map<number, { cert: string; key: string }>;
}

function hmacSecret(dir: string): string {
  const secretDir = path.join(dir, 'secret');
  fs.mkdirSync(secretDir, { recursive: true, mode: 0o700 });
  const file = path.join(secretDir, 'hmac.key');
  if (!fs.existsSync(file) || fs.statSync(file).size < 16) fs.writeFileSync(file, randomBytes(32), { mode: 0o600 });
  fs.chmodSync(file, 0o600);
  return file;
}

function throwawayPki(dir: string, nodeIds: number[]): AuthFiles {
  const tlsDir = path.join(dir, 'tls');
  fs.mkdirSync(tlsDir, { recursive: true, mode: 0o700 });
  const run = (...args: string[]): void => {
    const result = spawnSync('openssl', args, { cwd: tlsDir, encoding: 'utf8' });
    if (result.status !== 0) throw new RunnerError(`openssl ${args.join(' ')} failed: ${(result.stderr || result.error?.message || '').trim()}`);
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  if (!fs.existsSync(path.join(tlsDir, 'ca.pem')) || !fs.existsSync(path.join(tlsDir, 'ca.key'))) {
    run('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '30', '-subj', '/CN=derecho-local-ca');
  }
  const certs = new Map<number, { cert: string; key: string }>();
  for (const nodeId of nodeIds) {
    const name = `node-${nodeId}`;
    if (!fs.existsSync(path.join(tlsDir, `${name}.pem`)) || !fs.existsSync(path.join(tlsDir, `${name}.key`))) {
      // The transport takes the node id from the certificate's CN ("node-7").
      run('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
      run('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '30');
      fs.rmSync(path.join(tlsDir, `${name}.csr`), { force: true });
    }
    certs.set(nodeId, { cert: path.join(tlsDir, `${name}.pem`), key: path.join(tlsDir, `${name}.key`) });
  }
  for (const file of fs.readdirSync(tlsDir)) if (file.endsWith('.key')) fs.chmodSync(path.join(tlsDir, file), 0o600);
  return { tlsCaFile: path.join(tlsDir, 'ca.pem'), certs };
}

// ---------------------------------------------------------------------------------------------------
// The supervisor.

export interface SupervisorEvent {
  at: Date;
  level: 'info' | 'warn' | 'error';
  nodeId?: number;
  message: string;
}

export interface SupervisorOptions {
  /** The manifest (absolute path). */
  manifestFile: string;
  /** The state directory (absolute path). */
  stateDir: string;
  /** First peer port to try; HTTP ports start at basePort + HTTP_PORT_OFFSET. */
  basePort?: number;
  foreground: boolean;
  onEvent?: (event: SupervisorEvent) => void;
  stopTimeoutMs?: number;
  restartsPerMinute?: number;
}

/** The environment of an agent: ours without DERECHO_* (an agent's config comes from its file only). */
function agentEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) if (!name.startsWith('DERECHO_')) env[name] = value;
  return env;
}

function describeExit(code: number | null, sig: NodeJS.Signals | null): string {
  if (sig !== null) return `was killed by ${sig}`;
  switch (code) {
    case 0: return 'stopped (exit code 0)';
    case 1: return 'failed (exit code 1)';
    case 2: return 'exited with code 2 (bad configuration)';
    case 3: return 'exited with code 3 (its replica left the group; it must restart and rejoin)';
    default: return `exited with code ${code}`;
  }
}

export class Supervisor {
  private state!: RunState;
  private readonly children = new Map<number, ChildProcess>();
  private readonly timers = new Map<number, NodeJS.Timeout>();
  private readonly restartTimes = new Map<number, number[]>();
  private stopping: Promise<void> | null = null;
  private exitCode = 0;
  private finished!: (code: number) => void;
  /** Resolves with the supervisor's exit code once it stopped (0 after stop(), 2 after a configuration failure). */
  readonly done: Promise<number> = new Promise((resolve) => (this.finished = resolve));
  private readonly stopTimeoutMs: number;
  private readonly restartsPerMinute: number;

  constructor(private readonly options: SupervisorOptions) {
    this.stopTimeoutMs = options.stopTimeoutMs ?? STOP_TIMEOUT_MS;
    this.restartsPerMinute = options.restartsPerMinute ?? RESTARTS_PER_MINUTE;
  }

  /** The current state (what the state file holds). */
  get run(): RunState {
    return this.state;
  }

  private event(level: SupervisorEvent['level'], message: string, nodeId?: number): void {
    this.options.onEvent?.({ at: new Date(), level, message, ...(nodeId !== undefined ? { nodeId } : {}) });
  }

  private save(): void {
    if (this.state) writeState(this.state);
  }

  /**
   * Prepares the state directory and starts every member. Throws a ConfigError (bad manifest) or a
   * RunnerError (cannot run it here, already running); nothing is left running then.
   */
  async start(): Promise<void> {
    const { manifestFile, stateDir } = this.options;
    const manifest = loadGroupManifest(manifestFile, shown(manifestFile));
    checkRunnable(manifest, shown(manifestFile));
    checkNotRunning(stateDir);
    makeStateDir(stateDir);

    // The agents read a copy: editing the manifest while the group runs does not change restarted members.
    const groupFile = path.join(stateDir, 'group.yaml');
    fs.copyFileSync(manifestFile, groupFile);

    const nodeIds = Array.from({ length: manifest.spec.members }, (_, index) => index + 1);
    const auth: AuthFiles = manifest.spec.tls.mode === 'hmac' ? { hmacSecretFile: hmacSecret(stateDir) } : throwawayPki(stateDir, nodeIds);

    const base = this.options.basePort ?? DEFAULT_BASE_PORT;
    const taken = new Set<number>();
    const peerPorts = await freePorts(nodeIds.length, base, taken);
    const httpPorts = await freePorts(nodeIds.length, base + HTTP_PORT_OFFSET, taken);
    if (this.stopping !== null) return;
    const peers = Object.fromEntries(nodeIds.map((nodeId, index) => [String(nodeId), `${HOST}:${peerPorts[index]}`]));

    const members: MemberRecord[] = nodeIds.map((nodeId, index) => {
      const nodeDir = path.join(stateDir, `node-${nodeId}`);
      const dataDir = path.join(nodeDir, 'data');
      fs.mkdirSync(dataDir, { recursive: true });
      const configFile = path.join(nodeDir, 'agent.yaml');
      const config = {
        nodeId,
        groupFile,
        listen: { host: HOST, peerPort: peerPorts[index]!, httpPort: httpPorts[index]! },
        dataDir,
        peers,
        auth: auth.hmacSecretFile !== undefined
          ? { hmacSecretFile: auth.hmacSecretFile }
          : { tlsCertFile: auth.certs!.get(nodeId)!.cert, tlsKeyFile: auth.certs!.get(nodeId)!.key, tlsCaFile: auth.tlsCaFile! },
        logLevel: 'info',
      };
      fs.writeFileSync(configFile, `# Written by the derecho local runner for group ${manifest.metadata.name}; regenerated at every start.\n${YAML.stringify(config)}`);
      return {
        nodeId, pid: null, peerPort: peerPorts[index]!, httpPort: httpPorts[index]!, configFile, dataDir,
        logFile: path.join(nodeDir, 'agent.log'), state: 'starting', restarts: 0, lastExit: null, restartAt: null,
      };
    });

    this.state = {
      version: 1,
      group: manifest.metadata.name,
      manifest: manifestFile,
      stateDir,
      supervisorPid: process.pid,
      foreground: this.options.foreground,
      startedAt: new Date().toISOString(),
      phase: 'starting',
      error: null,
      tlsMode: manifest.spec.tls.mode,
      subgroups: manifest.spec.subgroups.map((subgroup) => ({ name: subgroup.name, type: subgroup.type, shards: subgroup.shards })),
      members,
    };
    this.save();
    this.event('info', `starting group ${manifest.metadata.name}: ${members.length} members, peer ports ${peerPorts.join(', ')}, HTTP ports ${httpPorts.join(', ')}, state in ${shown(stateDir)}`);
    for (const member of members) if (this.stopping === null) this.spawnMember(member);
    if (this.stopping === null) {
      this.state.phase = 'running';
      this.save();
    }
  }

  private spawnMember(member: MemberRecord): void {
    const fd = fs.openSync(member.logFile, 'a');
    let child: ChildProcess;
    try {
      fs.writeSync(fd, `--- derecho: starting node ${member.nodeId} at ${new Date().toISOString()} ---\n`);
      child = spawn(process.execPath, ['--import', tsxImport(), AGENT_MAIN, '--config', member.configFile], {
        cwd: this.options.stateDir,
        env: agentEnv(),
        stdio: ['ignore', fd, fd],
        // Its own process group: a Ctrl-C in the terminal reaches the supervisor only, which stops the
        // agents in order (instead of racing their exits against restarts).
        detached: true,
      });
    } finally {
      fs.closeSync(fd);
    }
    member.pid = child.pid ?? null;
    member.state = 'running';
    member.restartAt = null;
    this.children.set(member.nodeId, child);
    child.once('error', (error) => {
      // Spawning failed (no pid): treat as an exit with code 1.
      if (child.pid === undefined) this.onExit(member, child, 1, null, error.message);
    });
    child.once('exit', (code, sig) => this.onExit(member, child, code, sig));
    this.save();
    this.event('info', `node ${member.nodeId} started (pid ${member.pid ?? '?'}, peer port ${member.peerPort}, HTTP port ${member.httpPort})`, member.nodeId);
  }

  private onExit(member: MemberRecord, child: ChildProcess, code: number | null, sig: NodeJS.Signals | null, spawnError?: string): void {
    if (this.children.get(member.nodeId) !== child) return;
    this.children.delete(member.nodeId);
    member.pid = null;
    // Killed by a signal: its log says nothing about why.
    const tail = spawnError !== undefined ? [spawnError] : sig !== null ? [] : logTail(member.logFile);
    member.lastExit = { code, signal: sig, at: new Date().toISOString(), message: tail.at(-1) ?? null };
    if (this.stopping !== null) {
      member.state = 'stopped';
      this.save();
      return;
    }
    const what = `node ${member.nodeId} ${describeExit(code, sig)}`;
    if (code === 2) {
      member.state = 'failed';
      this.exitCode = 2;
      this.fail(`${what}; not restarting it. Its last words (${shown(member.logFile)}):\n${tail.map((line) => `  ${line}`).join('\n')}`);
      return;
    }
    const now = Date.now();
    const recent = (this.restartTimes.get(member.nodeId) ?? []).filter((at) => now - at < 60_000);
    if (recent.length >= this.restartsPerMinute) {
      member.state = 'failed';
      this.save();
      this.event('error', `${what}; it exited ${recent.length + 1} times within a minute, so it stays down. See ${shown(member.logFile)}${tail.length > 0 ? `; last line: ${tail.at(-1)}` : ''}`, member.nodeId);
      return;
    }
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** recent.length);
    recent.push(now + delay);
    this.restartTimes.set(member.nodeId, recent);
    member.state = 'backoff';
    member.restartAt = new Date(now + delay).toISOString();
    this.save();
    this.event('warn', `${what}${tail.length > 0 ? `: ${tail.at(-1)}` : ''}; restarting it in ${(delay / 1000).toFixed(1)} s`, member.nodeId);
    this.timers.set(member.nodeId, setTimeout(() => {
      this.timers.delete(member.nodeId);
      if (this.stopping !== null) return;
      member.restarts++;
      this.spawnMember(member);
    }, delay));
  }

  private fail(message: string): void {
    this.state.phase = 'failed';
    this.state.error = message;
    this.save();
    this.event('error', message);
    void this.stop();
  }

  /** Stops every agent (SIGTERM, then SIGKILL after the timeout) and resolves once all are gone. */
  stop(): Promise<void> {
    this.stopping ??= this.stopAll();
    return this.stopping;
  }

  private async stopAll(): Promise<void> {
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    if (this.state) {
      if (this.state.phase !== 'failed') this.state.phase = 'stopping';
      for (const member of this.state.members) {
        if (member.pid === null && member.state !== 'failed') member.state = 'stopped';
        else if (member.pid !== null) member.state = 'stopping';
      }
      this.save();
    }
    const running = [...this.children.values()];
    const pids = running.map((child) => child.pid).filter((pid): pid is number => pid !== undefined);
    if (pids.length > 0) this.event('info', `stopping ${pids.length} agent${pids.length === 1 ? '' : 's'} (pids ${pids.join(', ')})`);
    for (const pid of pids) signal(pid, 'SIGTERM');
    let left = await waitGone(pids, this.stopTimeoutMs);
    if (left.length > 0) {
      this.event('warn', `agents ${left.join(', ')} did not stop within ${this.stopTimeoutMs / 1000} s; killing them`);
      for (const pid of left) signal(pid, 'SIGKILL');
      left = await waitGone(left, 5_000);
    }
    // Let the exit events run, so the records say "stopped".
    await new Promise((resolve) => setImmediate(resolve));
    if (this.state) {
      if (this.state.phase === 'failed') this.save(); // kept: `derecho up` reads the error from it
      else removeState(this.options.stateDir);
    }
    if (pids.length > 0) this.event(left.length === 0 ? 'info' : 'error', left.length === 0 ? 'every agent stopped' : `agents ${left.join(', ')} are still alive`);
    this.finished(this.exitCode !== 0 ? this.exitCode : left.length === 0 ? 0 : 1);
  }

  /** Last resort when the supervisor process exits abruptly: SIGKILL every agent still running (synchronous). */
  killAll(): void {
    for (const child of this.children.values()) if (child.pid !== undefined && alive(child.pid)) signal(child.pid, 'SIGKILL');
  }
}
