// Runs a group of agents (one process each) on loopback for one benchmark configuration and measures
// it through the agents' /v1/bench/* endpoints.

import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BenchStats } from '../node-agent/src/agent/bench.ts';
import { freePort } from '../node-agent/src/util/ports.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export interface GroupConfig {
  members: number;
  mode: 'ordered' | 'raw';
  /** null: volatile (in memory). */
  persistence: null | 'fsync' | 'os';
  payloadBytesMax: number;
  sendWindow: number;
  /** Agents write V8 CPU profiles here (null: no profiling). */
  cpuProfDir?: string | null;
  /** spec.transport of the group (default tcp). */
  transport?: 'tcp' | 'rdma';
  /** Address the agents listen on and reach each other at (default 127.0.0.1; RDMA needs the NIC's address). */
  host?: string;
  /** Also a `kv` subgroup (one shard on every member, persistent as the bench subgroup) for read runs. */
  kv?: boolean;
  /** How long the agents may take to become ready (default 30 s; a software-emulated guest needs more). */
  readyTimeoutMs?: number;
}

export interface ReadRunResult {
  consistency: 'linearizable' | 'local';
  /** Reads answered per second, all members together. */
  readsPerSec: number;
  errors: number;
  latencyMs: { p50: number; p99: number } | null;
  concurrencyPerMember: number;
  seconds: number;
}

export interface RunSpec {
  payloadBytes: number;
  /** Node ids that send. */
  senders: number[];
  countPerSender: number;
  /** 0 = as fast as possible. */
  ratePerSec: number;
  /** Senders stop after this long (0 = after countPerSender). */
  durationMs: number;
  timeoutMs: number;
}

export interface RunResult {
  /** Messages each member delivered (the slowest member). */
  delivered: number;
  seconds: number;
  messagesPerSec: number;
  bytesPerSec: number;
  /** CPU seconds of all agents per GB delivered (payload bytes delivered at one member). */
  cpuSecondsPerGB: number;
  /** CPU microseconds of all agents per message (as delivered at one member): the per-message cost. */
  cpuMicrosPerMessage: number;
  latencyMs: { p50: number; p99: number } | null;
  persisted: boolean;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class BenchGroup {
  private procs: ChildProcess[] = [];
  private http: string[] = [];

  private constructor(readonly dir: string, readonly config: GroupConfig) {}

  static async start(workDir: string, config: GroupConfig): Promise<BenchGroup> {
    const dir = fs.mkdtempSync(path.join(workDir, 'group-'));
    const g = new BenchGroup(dir, config);
    try {
      await g.launch();
    } catch (e) {
      await g.stop();
      throw e;
    }
    return g;
  }

  private async launch(): Promise<void> {
    const { members, mode, persistence, payloadBytesMax, sendWindow } = this.config;
    const host = this.config.host ?? '127.0.0.1';
    const ids = Array.from({ length: members }, (_, i) => i + 1);
    const manifest = {
      apiVersion: 'derecho.dev/v1alpha1',
      kind: 'DerechoGroup',
      metadata: { name: 'bench' },
      spec: {
        members,
        transport: this.config.transport ?? 'tcp',
        subgroups: [{
          name: 'bench', type: 'log', minNodesPerShard: members, maxNodesPerShard: members, reservedNodeIds: [ids],
          deliveryMode: mode, persistent: persistence !== null && mode === 'ordered',
        }, ...(this.config.kv ? [{
          name: 'kv', type: 'kv', minNodesPerShard: members, maxNodesPerShard: members, reservedNodeIds: [ids],
          deliveryMode: 'ordered', persistent: persistence !== null,
        }] : [])],
        tls: { mode: 'hmac' },
        fsync: persistence ?? 'os',
        sendWindow,
        timing: { tickMs: 50, heartbeatMs: 100, suspectMs: 5000 },
        wireLimits: { payloadBytesMax, frameBytesMax: payloadBytesMax + 64 * 1024 },
      },
    };
    fs.writeFileSync(path.join(this.dir, 'group.json'), JSON.stringify(manifest));
    fs.writeFileSync(path.join(this.dir, 'secret'), 'bench-secret-0123456789abcdef0123');
    const ports = await Promise.all(ids.flatMap(() => [freePort(), freePort()]));
    const peers = Object.fromEntries(ids.map((n) => [String(n), `${host}:${ports[2 * (n - 1)]}`]));
    for (const n of ids) {
      const cfg = {
        nodeId: n, groupFile: path.join(this.dir, 'group.json'), dataDir: path.join(this.dir, `data-${n}`),
        listen: { host, peerPort: ports[2 * (n - 1)], httpPort: ports[2 * (n - 1) + 1] },
        peers, auth: { hmacSecretFile: path.join(this.dir, 'secret') }, benchApi: true, logLevel: 'error',
      };
      const file = path.join(this.dir, `agent-${n}.json`);
      fs.writeFileSync(file, JSON.stringify(cfg));
      const log = fs.openSync(path.join(this.dir, `agent-${n}.log`), 'w');
      const prof = this.config.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', this.config.cpuProfDir] : [];
      const p = spawn(process.execPath, [...prof, '--import', 'tsx', path.join(ROOT, 'node-agent/src/agent/main.ts'), '--config', file], {
        cwd: ROOT, stdio: ['ignore', log, log],
      });
      fs.closeSync(log);
      this.procs.push(p);
      this.http.push(`http://${host}:${ports[2 * (n - 1) + 1]}`);
    }
    const t0 = Date.now();
    for (const url of this.http) {
      for (;;) {
        try {
          const r = await fetch(`${url}/readyz`);
          if (r.status === 200) break;
        } catch {
          // not listening yet
        }
        if (this.procs.some((p) => p.exitCode !== null)) throw new Error(`an agent exited during start-up; logs in ${this.dir}`);
        const readyTimeoutMs = this.config.readyTimeoutMs ?? 30_000;
        if (Date.now() - t0 > readyTimeoutMs) throw new Error(`the group did not become ready in ${readyTimeoutMs / 1000} s (--ready-timeout); logs in ${this.dir}`);
        await sleep(100);
      }
    }
  }

  /** Each agent's /status (tests read the transport counters from it). */
  async statuses(): Promise<Record<string, unknown>[]> {
    return Promise.all(this.http.map(async (u) => (await (await fetch(`${u}/status`)).json()) as Record<string, unknown>));
  }

  private async post(url: string, body: unknown): Promise<void> {
    const r = await fetch(url, { method: 'POST', body: JSON.stringify(body) });
    if (r.status !== 200) throw new Error(`${url}: HTTP ${r.status} ${await r.text()}`);
  }

  private async stats(withLatency = true): Promise<BenchStats[]> {
    return Promise.all(this.http.map(async (u) => (await (await fetch(`${u}/v1/bench/stats${withLatency ? '' : '?latency=0'}`)).json()) as BenchStats));
  }

  /** One measurement: every member counts deliveries from the moment of the reset. */
  async run(spec: RunSpec): Promise<RunResult> {
    try {
      return await this.measure(spec);
    } catch (e) {
      // "fetch failed" alone says nothing: name the agents that stopped, how, and their last words.
      const message = e instanceof Error ? e.message : String(e);
      throw new Error(`${message}${this.stoppedAgents()}`);
    }
  }

  /** The agents that are no longer running, with how they stopped and the end of their log ('' if none). */
  private stoppedAgents(): string {
    const lines = this.procs.flatMap((p, i) => {
      if (p.exitCode === null && p.signalCode === null) return [];
      let tail = '';
      try {
        tail = fs.readFileSync(path.join(this.dir, `agent-${i + 1}.log`), 'utf8').trim().split('\n').slice(-3).join(' | ');
      } catch {
        // no log
      }
      return [`agent ${i + 1} stopped (${p.signalCode ?? `exit code ${p.exitCode}`})${tail ? `: ${tail.slice(-400)}` : ''}`];
    });
    return lines.length > 0 ? `; ${lines.join('; ')}` : '';
  }

  private async measure(spec: RunSpec): Promise<RunResult> {
    for (const u of this.http) await this.post(`${u}/v1/bench/reset`, { subgroup: 'bench', shard: 0 });
    const t0 = Date.now();
    for (const n of spec.senders) {
      await this.post(`${this.http[n - 1]}/v1/bench/send`, { subgroup: 'bench', shard: 0, payloadBytes: spec.payloadBytes, count: spec.countPerSender, ratePerSec: spec.ratePerSec, durationMs: spec.durationMs });
    }
    let expected = spec.senders.length * spec.countPerSender;
    const durable = this.config.persistence !== null && this.config.mode === 'ordered';
    let stats: BenchStats[] = [];
    for (;;) {
      // A paced (latency) run is polled rarely: answering HTTP takes the agents' event loop away from
      // the messages whose latency is measured.
      await sleep(spec.ratePerSec > 0 ? 500 : 50);
      stats = await this.stats(false);
      const sendersDone = spec.senders.every((n) => stats[n - 1]!.sendDoneMs !== null);
      if (sendersDone) expected = spec.senders.reduce((sum, n) => sum + stats[n - 1]!.sent, 0);
      const allDelivered = sendersDone && stats.every((s) => s.delivered >= expected);
      if (this.config.mode === 'raw') {
        // Raw delivery is best effort: stop when deliveries stop growing after the senders finished.
        if (allDelivered || (sendersDone && Date.now() - Math.max(...stats.map((s) => s.lastDeliveryMs ?? 0)) > 1000)) break;
      } else if (allDelivered && (!durable || stats.every((s) => s.persistedMs !== null))) break;
      if (Date.now() - t0 > spec.timeoutMs) {
        throw new Error(`run timed out after ${spec.timeoutMs} ms: delivered ${stats.map((s) => s.delivered).join('/')} of ${expected}; logs in ${this.dir}`);
      }
    }
    stats = await this.stats(true); // once more, with the latency percentiles
    const start = Math.min(...spec.senders.map((n) => stats[n - 1]!.sendStartMs!));
    const ends = stats.map((s) => (durable ? Math.max(s.persistedMs!, s.lastDeliveryMs!) : s.lastDeliveryMs!));
    const seconds = (Math.max(...ends) - start) / 1000;
    const delivered = Math.min(...stats.map((s) => s.delivered));
    const deliveredBytes = Math.min(...stats.map((s) => s.deliveredBytes));
    const cpu = stats.reduce((sum, s) => sum + s.cpuSeconds, 0);
    const lat = stats.map((s) => s.latencyMs).filter((x) => x !== null);
    return {
      delivered,
      seconds,
      messagesPerSec: delivered / seconds,
      bytesPerSec: deliveredBytes / seconds,
      cpuSecondsPerGB: cpu / (deliveredBytes / 1e9),
      cpuMicrosPerMessage: (cpu * 1e6) / delivered,
      latencyMs: lat.length === 0 ? null : { p50: median(lat.map((l) => l.p50)), p99: Math.max(...lat.map((l) => l.p99)) },
      persisted: durable,
    };
  }

  /** Writes one key of the kv subgroup (GroupConfig.kv) through the first member. */
  async put(key: string, value: string): Promise<void> {
    const r = await fetch(`${this.http[0]}/v1/kv/kv/${encodeURIComponent(key)}`, { method: 'PUT', body: value });
    if (r.status !== 200) throw new Error(`PUT ${key}: HTTP ${r.status} ${await r.text()}`);
  }

  /**
   * Read load on every member at once (each runs `concurrency` closed loops of Driver.read of `key` in the
   * kv subgroup, in process: the protocol's cost without an HTTP client in the way); summed throughput.
   */
  async reads(key: string, consistency: 'linearizable' | 'local', concurrency: number, durationMs: number): Promise<ReadRunResult> {
    const body = { subgroup: 'kv', shard: 0, method: 'get', args: [key], consistency, concurrency, durationMs };
    const all = await Promise.all(this.http.map(async (u) => {
      const r = await fetch(`${u}/v1/bench/reads`, { method: 'POST', body: JSON.stringify(body) });
      if (r.status !== 200) throw new Error(`${u}/v1/bench/reads: HTTP ${r.status} ${await r.text()}`);
      return (await r.json()) as { reads: number; errors: number; firstError: string | null; seconds: number; readsPerSec: number; latencyMs: { p50: number; p99: number } | null };
    }));
    const lat = all.map((x) => x.latencyMs).filter((x) => x !== null);
    const errors = all.reduce((n, x) => n + x.errors, 0);
    if (all.every((x) => x.reads === 0)) throw new Error(`no read answered: ${all.find((x) => x.firstError)?.firstError ?? 'no error either'}`);
    return {
      consistency, concurrencyPerMember: concurrency, errors,
      readsPerSec: all.reduce((n, x) => n + x.readsPerSec, 0),
      seconds: Math.max(...all.map((x) => x.seconds)),
      latencyMs: lat.length === 0 ? null : { p50: median(lat.map((l) => l.p50)), p99: Math.max(...lat.map((l) => l.p99)) },
    };
  }

  async stop(): Promise<void> {
    for (const p of this.procs) if (p.exitCode === null) p.kill('SIGTERM');
    const t0 = Date.now();
    while (this.procs.some((p) => p.exitCode === null && p.signalCode === null) && Date.now() - t0 < 5000) await sleep(50);
    for (const p of this.procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}
