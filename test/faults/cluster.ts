// A group of real agent processes on loopback for the fault-injection runs, with the test as their
// supervisor and TCP proxies between them.
//
// - Each member's `peers` map points at the proxies P(i→j) of a ProxyMesh (proxy.ts), so the nemesis
//   cuts links without touching the agents; clients talk to every member's HTTP port directly.
// - The supervisor (what a kubelet or systemd would be) restarts any member that exits, ~0.7 s later,
//   except a member held down by a kill fault (restarted when the fault ends). Every exit is recorded
//   with its code, signal and the last line of the member's log; an exit is expected when it is code 0
//   or 3 ("the replica exited: restart me") or the SIGKILL the nemesis sent; anything else (code 1, 2,
//   another signal) is a failure of the run.

import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { freePort } from '../../node-agent/src/util/ports.ts';
import { HOST, sameNumbers, sleep, spawnAgent, summary } from '../multiprocess/harness.ts';
import type { AgentStatus } from '../multiprocess/harness.ts';
import type { Layout } from './layouts.ts';
import { ProxyMesh } from './proxy.ts';

export interface ExitRecord {
  node: number;
  pid: number;
  /** ms since the run's start */
  atMs: number;
  code: number | null;
  signal: string | null;
  expected: boolean;
  /** Why it counts as expected or not. */
  reason: string;
  lastLogLine: string;
}

export interface Member {
  id: number;
  peerPort: number;
  httpPort: number;
  url: string;
  dataDir: string;
  configFile: string;
  logFile: string;
  child: ChildProcess | null;
  starts: number;
  /** Kill faults holding it down: the supervisor does not restart it while > 0. */
  held: number;
  /** Pids the nemesis SIGKILLed (their SIGKILL exit is expected). */
  killed: Set<number>;
  restartTimer: NodeJS.Timeout | null;
}

export interface ClusterOptions {
  /** Directory for the manifest, configs, data directories and logs. */
  dir: string;
  layout: Layout;
  /** ms since the run's start. */
  now: () => number;
  /** Delay of a supervisor restart after an exit (ms). */
  restartDelayMs?: number;
  /** Agent log level (default info). */
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
}

export class FaultCluster {
  readonly members = new Map<number, Member>();
  readonly exits: ExitRecord[] = [];
  /** Harness notes (starts, exits, restarts), with times. */
  readonly events: { atMs: number; text: string }[] = [];
  private closed = false;
  private readonly restartDelayMs: number;
  /** Pids stopped by SIGSTOP and not continued yet. */
  private readonly paused = new Set<number>();

  private constructor(readonly options: ClusterOptions, readonly mesh: ProxyMesh) {
    this.restartDelayMs = options.restartDelayMs ?? 700;
  }

  static async create(options: ClusterOptions): Promise<FaultCluster> {
    const { dir, layout } = options;
    fs.mkdirSync(dir, { recursive: true });
    const manifestFile = path.join(dir, 'group.yaml');
    const secretFile = path.join(dir, 'hmac.key');
    fs.writeFileSync(manifestFile, YAML.stringify(layout.manifest(`faults-${layout.name}`)));
    fs.writeFileSync(secretFile, randomBytes(32), { mode: 0o600 });
    const ids = Array.from({ length: layout.members }, (_, i) => i + 1);
    const peerPorts = new Map<number, number>();
    const httpPorts = new Map<number, number>();
    for (const id of ids) {
      peerPorts.set(id, await freePort(HOST));
      httpPorts.set(id, await freePort(HOST));
    }
    const mesh = await ProxyMesh.create(peerPorts, HOST);
    const cluster = new FaultCluster(options, mesh);
    for (const id of ids) {
      const m: Member = {
        id, peerPort: peerPorts.get(id)!, httpPort: httpPorts.get(id)!,
        url: `http://${HOST}:${httpPorts.get(id)!}`,
        dataDir: path.join(dir, `node-${id}`),
        configFile: path.join(dir, `agent-${id}.yaml`),
        logFile: path.join(dir, `node-${id}.log`),
        child: null, starts: 0, held: 0, killed: new Set(), restartTimer: null,
      };
      fs.writeFileSync(m.configFile, YAML.stringify({
        nodeId: id,
        groupFile: manifestFile,
        listen: { host: HOST, peerPort: m.peerPort, httpPort: m.httpPort },
        dataDir: m.dataDir,
        peers: mesh.peersOf(id),
        auth: { hmacSecretFile: secretFile },
        logLevel: options.logLevel ?? 'info',
      }));
      cluster.members.set(id, m);
    }
    return cluster;
  }

  get ids(): number[] {
    return [...this.members.keys()];
  }

  member(id: number): Member {
    const m = this.members.get(id);
    if (!m) throw new Error(`no member ${id}`);
    return m;
  }

  private note(text: string): void {
    this.events.push({ atMs: this.options.now(), text });
  }

  running(id: number): boolean {
    const c = this.member(id).child;
    return c !== null && c.exitCode === null && c.signalCode === null;
  }

  pid(id: number): number | null {
    return this.running(id) ? (this.member(id).child!.pid ?? null) : null;
  }

  startAll(): void {
    for (const id of this.ids) this.start(id);
  }

  start(id: number): void {
    const m = this.member(id);
    if (this.closed || this.running(id)) return;
    if (m.restartTimer) {
      clearTimeout(m.restartTimer);
      m.restartTimer = null;
    }
    fs.appendFileSync(m.logFile, `----- harness: starting node ${id} (start #${m.starts + 1}) at +${(this.options.now() / 1000).toFixed(2)}s -----\n`);
    const child = spawnAgent(m.configFile, m.logFile);
    m.child = child;
    m.starts++;
    const pid = child.pid ?? -1;
    this.note(`node ${id} started (pid ${pid})`);
    child.once('exit', (code, signal) => this.onExit(m, child, pid, code, signal));
  }

  private onExit(m: Member, child: ChildProcess, pid: number, code: number | null, signal: NodeJS.Signals | null): void {
    this.paused.delete(pid);
    if (m.child === child) m.child = null;
    if (this.closed) return;
    let expected: boolean;
    let reason: string;
    if (signal === 'SIGKILL' && m.killed.has(pid)) [expected, reason] = [true, 'killed by the nemesis'];
    else if (code === 3) [expected, reason] = [true, 'the replica exited (code 3): restarted by the supervisor'];
    else if (code === 0) [expected, reason] = [true, 'stopped (code 0)'];
    else if (code === 2) [expected, reason] = [false, 'bad configuration (code 2)'];
    else if (signal !== null) [expected, reason] = [false, `killed by ${signal}, not sent by the test`];
    else [expected, reason] = [false, `crashed (code ${code})`];
    m.killed.delete(pid);
    const rec: ExitRecord = { node: m.id, pid, atMs: this.options.now(), code, signal, expected, reason, lastLogLine: lastLogLine(m.logFile) };
    this.exits.push(rec);
    this.note(`node ${m.id} exited (pid ${pid}, code ${code}, signal ${signal}): ${reason}`);
    if (m.held > 0) return;
    m.restartTimer = setTimeout(() => {
      m.restartTimer = null;
      if (this.closed || m.held > 0 || this.running(m.id)) return;
      this.note(`node ${m.id} restarted by the supervisor`);
      this.start(m.id);
    }, this.restartDelayMs);
  }

  /** kill -9, held down until `release` (the supervisor leaves it down). Resolves once the process is gone. */
  async kill(id: number): Promise<number | null> {
    const m = this.member(id);
    m.held++;
    if (m.restartTimer) {
      clearTimeout(m.restartTimer);
      m.restartTimer = null;
    }
    const child = m.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return null;
    const pid = child.pid ?? -1;
    m.killed.add(pid);
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    this.note(`node ${id} killed (SIGKILL, pid ${pid})`);
    child.kill('SIGKILL');
    await gone;
    return pid;
  }

  /** Ends a hold of `kill`: started again when no fault holds it any more. */
  release(id: number): void {
    const m = this.member(id);
    m.held = Math.max(0, m.held - 1);
    if (m.held === 0 && !this.running(id)) this.start(id);
  }

  /** SIGSTOP; returns the pid stopped (null if not running). */
  pause(id: number): number | null {
    const pid = this.pid(id);
    if (pid === null) return null;
    process.kill(pid, 'SIGSTOP');
    this.paused.add(pid);
    this.note(`node ${id} paused (SIGSTOP, pid ${pid})`);
    return pid;
  }

  /** SIGCONT to a pid `pause` stopped (a no-op if it died meanwhile). */
  resume(id: number, pid: number): boolean {
    if (!this.paused.delete(pid)) return false;
    try {
      process.kill(pid, 'SIGCONT');
      this.note(`node ${id} continued (SIGCONT, pid ${pid})`);
      return true;
    } catch {
      return false;
    }
  }

  /** Ends every fault: continues paused processes, heals every link, releases every hold and starts every member. */
  healEverything(): void {
    for (const pid of [...this.paused]) {
      this.paused.delete(pid);
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // gone
      }
    }
    this.mesh.healAll();
    for (const m of this.members.values()) {
      m.held = 0;
      if (!this.running(m.id)) this.start(m.id);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Status

  async status(id: number, timeoutMs = 2_000): Promise<AgentStatus | null> {
    try {
      const res = await fetch(`${this.member(id).url}/status`, { signal: AbortSignal.timeout(timeoutMs) });
      if (res.status !== 200) return null;
      return (await res.json()) as AgentStatus;
    } catch {
      return null;
    }
  }

  async statuses(): Promise<(AgentStatus | null)[]> {
    return Promise.all(this.ids.map((id) => this.status(id)));
  }

  /**
   * Waits until every member is running, active, ready and not wedged, in one view of all the members,
   * connected to every other, with the same layout; returns the statuses (null after the timeout) and
   * the last statuses seen, one line per member.
   */
  async waitHealthy(timeoutMs: number): Promise<{ statuses: AgentStatus[] | null; last: string[] }> {
    const deadline = Date.now() + timeoutMs;
    const ids = this.ids;
    let last: (AgentStatus | null)[] = [];
    while (Date.now() < deadline && !this.closed) {
      last = await this.statuses();
      if (healthy(ids, last)) return { statuses: last as AgentStatus[], last: describe(ids, last) };
      await sleep(200);
    }
    return { statuses: null, last: describe(ids, last) };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const m of this.members.values()) if (m.restartTimer) clearTimeout(m.restartTimer);
    for (const pid of [...this.paused]) {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // gone
      }
    }
    this.paused.clear();
    await Promise.all(this.ids.map(async (id) => {
      const child = this.member(id).child;
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGKILL');
      await gone;
    }));
    await this.mesh.close();
  }
}

function healthy(ids: number[], statuses: (AgentStatus | null)[]): boolean {
  if (!statuses.every((s) => s !== null && s.mode === 'active' && s.ready && !s.wedged)) return false;
  const all = statuses as AgentStatus[];
  const viewId = all[0]!.viewId;
  if (!all.every((s) => s.viewId === viewId && sameNumbers(s.members, ids))) return false;
  if (!all.every((s) => ids.every((m) => m === s.nodeId || s.transport.connectedPeers.includes(m)))) return false;
  if (!all.every((s) => s.shards.every((x) => x.stateReady))) return false;
  const layout = JSON.stringify(all[0]!.layout);
  return all.every((s) => JSON.stringify(s.layout) === layout);
}

function describe(ids: number[], statuses: (AgentStatus | null)[]): string[] {
  return ids.map((id, i) => {
    const s = statuses[i];
    return `node ${id}: ${s ? summary(s) : 'no answer'}`;
  });
}

/** The last line of a log file that is not the harness's own marker. */
export function lastLogLine(file: string): string {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const len = Math.min(size, 8192);
      const buf = Buffer.alloc(len);
      fs.readSync(fd, buf, 0, len, size - len);
      const lines = buf.toString('utf8').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('----- harness:'));
      return lines.at(-1) ?? '';
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return '';
  }
}
