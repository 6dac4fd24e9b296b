// etcd, the replicated store a Kubernetes user would otherwise pick: a 3-member cluster on loopback,
// driven by etcd's own Go benchmark tool (a Node client would be the bottleneck and flatter the ratio).
//
// Tools are installed idempotently into a cache outside the repository ($DERECHO_CACHE_DIR, default
// ~/.cache/derecho-ts):
//   - Debian's etcd-server package (apt-get download + dpkg -x; no root needed);
//   - etcd's benchmark tool and an etcd server of the same release, built with Go from etcd's modules through
//     bench/etcd-tools/go.mod (Debian's etcd 3.4 has no --unsafe-no-fsync, which the in-memory comparison needs).

import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../node-agent/src/util/ports.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const CACHE_DIR = process.env.DERECHO_CACHE_DIR ?? path.join(os.homedir(), '.cache', 'derecho-ts');

export interface EtcdTools {
  debianEtcd: string | null;
  goEtcd: string | null;
  benchmark: string;
  notes: string[];
}

function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): string {
  return execFileSync(cmd, args, { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 }).toString();
}

function version(binary: string): string {
  try {
    return /etcd Version: (\S+)/.exec(run(binary, ['--version']))?.[1] ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Installs what is missing; returns the binaries. Throws with a clear message when a tool cannot be had. */
export function ensureEtcdTools(log: (line: string) => void): EtcdTools {
  const notes: string[] = [];
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  // Debian's etcd-server.
  const debDir = path.join(CACHE_DIR, 'etcd-debian');
  let debianEtcd: string | null = path.join(debDir, 'usr', 'bin', 'etcd');
  if (!fs.existsSync(debianEtcd)) {
    log('installing Debian etcd-server into the cache (apt-get download + dpkg -x)');
    const tmp = fs.mkdtempSync(path.join(CACHE_DIR, 'deb-'));
    try {
      run('apt-get', ['download', 'etcd-server'], { cwd: tmp });
      const deb = fs.readdirSync(tmp).find((f) => f.startsWith('etcd-server') && f.endsWith('.deb'));
      if (!deb) throw new Error('apt-get download produced no etcd-server .deb');
      fs.mkdirSync(debDir, { recursive: true });
      run('dpkg', ['-x', path.join(tmp, deb), debDir]);
    } catch (e) {
      notes.push(`Debian etcd-server unavailable: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}`);
      debianEtcd = null;
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }
  // Go-built benchmark tool and etcd server (same release as the tool).
  const goDir = path.join(CACHE_DIR, 'etcd-go');
  const srcDir = path.join(goDir, 'src');
  const benchmark = path.join(goDir, 'bin', 'benchmark');
  const goEtcd = path.join(goDir, 'bin', 'etcd');
  const stamp = path.join(goDir, 'go.mod.built');
  const goMod = fs.readFileSync(path.join(ROOT, 'bench', 'etcd-tools', 'go.mod'), 'utf8');
  if (!fs.existsSync(benchmark) || !fs.existsSync(goEtcd) || !fs.existsSync(stamp) || fs.readFileSync(stamp, 'utf8') !== goMod) {
    log('building etcd\'s benchmark tool and etcd server with Go (first run only; a few minutes)');
    fs.mkdirSync(srcDir, { recursive: true });
    for (const f of ['go.mod', 'go.sum', 'tools.go']) fs.copyFileSync(path.join(ROOT, 'bench', 'etcd-tools', f), path.join(srcDir, f));
    const env = { GOFLAGS: '-mod=mod', CGO_ENABLED: '0' };
    try {
      run('go', ['build', '-o', benchmark, 'go.etcd.io/etcd/v3/tools/benchmark'], { cwd: srcDir, env });
      run('go', ['build', '-o', goEtcd, 'go.etcd.io/etcd/server/v3'], { cwd: srcDir, env });
    } catch (e) {
      const err = e as { stderr?: Buffer; message: string };
      throw new Error(`building etcd's tools with Go failed (is Go installed and the module proxy reachable?): ${err.stderr?.toString().slice(-2000) ?? err.message}`);
    }
    fs.writeFileSync(stamp, goMod);
  }
  if (debianEtcd) notes.push(`Debian etcd-server ${version(debianEtcd)}`);
  notes.push(`Go-built etcd ${version(goEtcd)} (for --unsafe-no-fsync)`);
  return { debianEtcd, goEtcd, benchmark, notes };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class EtcdCluster {
  private procs: ChildProcess[] = [];
  endpoints: string[] = [];

  private constructor(private readonly dir: string) {}

  static async start(binary: string, workDir: string, options: { noFsync: boolean; maxRequestBytes: number }): Promise<EtcdCluster> {
    const c = new EtcdCluster(fs.mkdtempSync(path.join(workDir, 'etcd-')));
    try {
      await c.launch(binary, options);
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  private async launch(binary: string, options: { noFsync: boolean; maxRequestBytes: number }): Promise<void> {
    const ports = await Promise.all(Array.from({ length: 6 }, () => freePort()));
    const names = ['e1', 'e2', 'e3'];
    const cluster = names.map((n, i) => `${n}=http://127.0.0.1:${ports[2 * i + 1]}`).join(',');
    for (const [i, name] of names.entries()) {
      const client = `http://127.0.0.1:${ports[2 * i]}`;
      const peer = `http://127.0.0.1:${ports[2 * i + 1]}`;
      const args = [
        '--name', name, '--data-dir', path.join(this.dir, name),
        '--listen-client-urls', client, '--advertise-client-urls', client,
        '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer,
        '--initial-cluster', cluster, '--initial-cluster-token', 'bench', '--initial-cluster-state', 'new',
        '--quota-backend-bytes', String(8 * 1024 ** 3), '--max-request-bytes', String(options.maxRequestBytes),
        '--logger', 'zap', '--log-level', 'error',
        ...(options.noFsync ? ['--unsafe-no-fsync'] : []),
      ];
      const log = fs.openSync(path.join(this.dir, `${name}.log`), 'w');
      this.procs.push(spawn(binary, args, { stdio: ['ignore', log, log] }));
      fs.closeSync(log);
      this.endpoints.push(client);
    }
    const t0 = Date.now();
    for (const e of this.endpoints) {
      for (;;) {
        try {
          const r = await fetch(`${e}/health`);
          if (r.status === 200 && ((await r.json()) as { health?: string }).health === 'true') break;
        } catch {
          // not up yet
        }
        if (this.procs.some((p) => p.exitCode !== null)) throw new Error(`an etcd member exited at start-up; logs in ${this.dir}`);
        if (Date.now() - t0 > 30_000) throw new Error(`etcd cluster not healthy after 30 s; logs in ${this.dir}`);
        await sleep(100);
      }
    }
  }

  async stop(): Promise<void> {
    for (const p of this.procs) if (p.exitCode === null) p.kill('SIGTERM');
    const t0 = Date.now();
    while (this.procs.some((p) => p.exitCode === null && p.signalCode === null) && Date.now() - t0 < 5000) await sleep(50);
    for (const p of this.procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface EtcdPutResult {
  requestsPerSec: number;
  bytesPerSec: number;
  latencyMs: { p50: number; p99: number } | null;
  total: number;
  clients: number;
}

/** `benchmark put` with values of `valueBytes`; parses its summary. */
export function etcdPut(tools: EtcdTools, endpoints: string[], valueBytes: number, total: number, clients: number): EtcdPutResult {
  const conns = Math.min(clients, 32);
  const out = run(tools.benchmark, [
    `--endpoints=${endpoints.join(',')}`, `--conns=${conns}`, `--clients=${clients}`,
    'put', '--key-size=16', '--sequential-keys', `--key-space-size=${Math.max(total, 1)}`, `--total=${total}`, `--val-size=${valueBytes}`,
  ]);
  const summary = benchmarkSummary(out);
  return { ...summary, bytesPerSec: summary.requestsPerSec * valueBytes, total, clients };
}

/** Requests/s and the latency percentiles (ms) of the summary etcd's benchmark tool prints. */
function benchmarkSummary(out: string): { requestsPerSec: number; latencyMs: { p50: number; p99: number } | null } {
  const rps = /Requests\/sec:\s*([\d.]+)/.exec(out);
  if (!rps) throw new Error(`cannot read etcd benchmark output:\n${out.slice(-1500)}`);
  const pct = (p: string): number | null => {
    const m = new RegExp(`${p}% in ([\\d.]+) secs`).exec(out);
    return m ? Number(m[1]) * 1000 : null;
  };
  const p50 = pct('50');
  const p99 = pct('99');
  return { requestsPerSec: Number(rps[1]), latencyMs: p50 !== null && p99 !== null ? { p50, p99 } : null };
}

/**
 * `benchmark range KEY --consistency=l|s`: linearizable (ReadIndex through the leader) or serializable
 * (the member's local state) reads of one key; parses its summary.
 */
export function etcdRange(tools: EtcdTools, endpoints: string[], key: string, consistency: 'l' | 's', total: number, clients: number): EtcdPutResult {
  const conns = Math.min(clients, 32);
  const out = run(tools.benchmark, [
    `--endpoints=${endpoints.join(',')}`, `--conns=${conns}`, `--clients=${clients}`,
    'range', key, `--consistency=${consistency}`, `--total=${total}`,
  ]);
  return { ...benchmarkSummary(out), bytesPerSec: 0, total, clients };
}
