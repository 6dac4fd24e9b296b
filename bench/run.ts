// npm run bench [-- options]: this project side by side with etcd and the loopback limit, in one run.
//
//   --quick                 fewer sizes and shorter runs (a couple of minutes)
//   --sizes 100,1KiB,1MiB   message sizes (default 100,1KiB,10KiB,1MiB,16MiB)
//   --members 3,5,7         group sizes for the ordered all-senders runs (default 3; the rest uses 3)
//   --duration 3            seconds each throughput run sends for (default 3; quick 1.5)
//   --transport tcp|rdma    data path of the agents (rdma needs an RDMA device: stops at once without one)
//   --host ADDR             address the agents listen on and reach each other at (default 127.0.0.1; with
//                           --transport rdma the first non-loopback IPv4 address: rdmacm needs the RDMA NIC's)
//   --only derecho,etcd,loopback    run only these parts
//   --series TEXT           only the derecho series whose name contains TEXT (e.g. "one sender", latency,
//                           reads: linearizable and local reads of a 1 KiB value, beside etcd's range reads)
//   --ready-timeout S       seconds the agents may take to become ready (default 30; raise it in a slow guest)
//   --run-timeout S         seconds one run may take to deliver everything it sent, after its duration
//                           (default 120; raise it for 1-16 MiB messages in a slow guest)
//   --cpu-prof DIR          agents write V8 CPU profiles into DIR (open them in Chrome DevTools)
//   --out DIR               where results/*.json and the chart go (default bench/results)
//
// Prints a table and the ratios the project targets, writes DIR/<timestamp>.json (+ latest.json) and
// DIR/throughput.svg (throughput by message size).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BenchGroup } from './derecho-group.ts';
import type { GroupConfig, ReadRunResult, RunResult } from './derecho-group.ts';
import { EtcdCluster, ensureEtcdTools, etcdPut, etcdRange } from './etcd.ts';
import type { EtcdPutResult, EtcdTools } from './etcd.ts';
import { measureLoopback } from './loopback.ts';
import type { LoopbackResult } from './loopback.ts';
import { throughputChart } from './chart.ts';
import { loadNativeVerbs, rdmaDeviceAddresses } from '../node-agent/src/transport/rdma/native-verbs.ts';
import { pickDevice } from '../node-agent/src/transport/select.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const KiB = 1024;
const MiB = 1024 * KiB;

interface Options {
  quick: boolean;
  sizes: number[];
  members: number[];
  durationS: number;
  transport: 'tcp' | 'rdma';
  host: string | null;
  only: Set<string>;
  out: string;
  series: string | null;
  cpuProfDir: string | null;
  readyTimeoutMs: number;
  runTimeoutMs: number;
}

function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(B|KiB|K|KB|MiB|M|MB)?$/i.exec(text.trim());
  if (!m) throw new Error(`--sizes: ${JSON.stringify(text)} is not a size (e.g. 100, 1KiB, 16MiB)`);
  const unit = (m[2] ?? 'B').toLowerCase();
  const mult = unit.startsWith('k') ? KiB : unit.startsWith('m') ? MiB : 1;
  return Math.round(Number(m[1]) * mult);
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    quick: false, sizes: [100, KiB, 10 * KiB, MiB, 16 * MiB], members: [3], durationS: 3, transport: 'tcp', host: null,
    only: new Set(['derecho', 'etcd', 'loopback']), out: path.join(ROOT, 'bench', 'results'), series: null, cpuProfDir: null,
    readyTimeoutMs: 30_000, runTimeoutMs: 120_000,
  };
  let sizesGiven = false;
  let durationGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--quick': o.quick = true; break;
      case '--sizes': o.sizes = value().split(',').map(parseSize); sizesGiven = true; break;
      case '--members': o.members = value().split(',').map((x) => {
        const n = Number(x);
        if (!Number.isInteger(n) || n < 2 || n > 16) throw new Error(`--members: ${x} is not a member count from 2 to 16`);
        return n;
      }); break;
      case '--duration': o.durationS = Number(value()); durationGiven = true; if (!(o.durationS > 0)) throw new Error('--duration must be a positive number of seconds'); break;
      case '--transport': {
        const t = value();
        if (t !== 'tcp' && t !== 'rdma') throw new Error(`--transport: ${t} is not tcp or rdma`);
        o.transport = t;
        break;
      }
      case '--host': o.host = value(); break;
      case '--only': o.only = new Set(value().split(',')); for (const x of o.only) if (!['derecho', 'etcd', 'loopback'].includes(x)) throw new Error(`--only: unknown part ${x}`); break;
      case '--out': o.out = path.resolve(value()); break;
      case '--series': o.series = value(); break;
      case '--cpu-prof': o.cpuProfDir = path.resolve(value()); break;
      case '--ready-timeout': o.readyTimeoutMs = Number(value()) * 1000; if (!(o.readyTimeoutMs > 0)) throw new Error('--ready-timeout must be a positive number of seconds'); break;
      case '--run-timeout': o.runTimeoutMs = Number(value()) * 1000; if (!(o.runTimeoutMs > 0)) throw new Error('--run-timeout must be a positive number of seconds'); break;
      case '--help': case '-h':
        process.stdout.write(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n') + '\n');
        process.exit(0);
        break;
      default: throw new Error(`unknown option ${a} (see --help)`);
    }
  }
  if (o.quick) {
    if (!sizesGiven) o.sizes = [100, KiB, MiB, 16 * MiB];
    if (!durationGiven) o.durationS = 1.5;
  }
  return o;
}

const fmtSize = (n: number): string => (n >= MiB ? `${n / MiB} MiB` : n >= KiB ? `${n / KiB} KiB` : `${n} B`);
const fmtRate = (n: number): string => (n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : n.toFixed(0));
const fmtMBs = (n: number): string => (n / 1e6).toFixed(1);
const log = (line: string): void => void process.stderr.write(`[bench] ${line}\n`);

interface DerechoRow {
  label: string;
  series: string;
  members: number;
  mode: 'ordered' | 'raw';
  persistence: null | 'fsync' | 'os';
  senders: 'all' | 'one';
  sizeBytes: number;
  result: RunResult | null;
  error?: string;
}

interface EtcdRow {
  variant: string;
  sizeBytes: number;
  result: EtcdPutResult | null;
  error?: string;
}

function windowFor(size: number): number {
  // In-flight bytes per sender around 64 MiB, between 8 and 1024 messages.
  return Math.max(8, Math.min(1024, Math.floor((64 * MiB) / size)));
}

function payloadMaxFor(size: number): number {
  return Math.max(MiB, size);
}

async function derechoRun(work: string, o: Options, row: DerechoRow, rate = 0, durationS = o.durationS): Promise<RunResult> {
  const config: GroupConfig = {
    members: row.members, mode: row.mode, persistence: row.persistence, payloadBytesMax: payloadMaxFor(row.sizeBytes), sendWindow: windowFor(row.sizeBytes),
    transport: o.transport, host: o.host ?? '127.0.0.1', cpuProfDir: o.cpuProfDir, readyTimeoutMs: o.readyTimeoutMs,
  };
  const group = await BenchGroup.start(work, config);
  try {
    const senders = row.senders === 'all' ? Array.from({ length: row.members }, (_, i) => i + 1) : [1];
    const count = rate > 0 ? Math.ceil(rate * durationS) : 10_000_000;
    // Large messages: bound the volume too (16 MiB x 3 senders x seconds adds up quickly).
    const countCap = Math.max(8, Math.floor((o.quick ? 512 : 2048) * MiB / row.sizeBytes / senders.length));
    return await group.run({
      payloadBytes: row.sizeBytes, senders, countPerSender: Math.min(count, countCap), ratePerSec: rate,
      durationMs: durationS * 1000, timeoutMs: durationS * 1000 + o.runTimeoutMs,
    });
  } finally {
    await group.stop();
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (o.transport === 'rdma') {
    // Stop before launching anything when this node cannot run the RDMA data path.
    const native = loadNativeVerbs();
    if (!native.ok) throw new Error(`--transport rdma: ${native.reason}`);
    const devices = native.verbs.devices();
    const picked = pickDevice(devices, process.env['DERECHO_RDMA_DEVICE']);
    if ('problem' in picked) throw new Error(`--transport rdma: ${picked.problem}; run the bench on a node with an RDMA NIC (docs/rdma.md)`);
    // The address of the interface the device serves (RDMA CM routes only there), else any non-loopback IPv4.
    o.host ??= rdmaDeviceAddresses(picked.name)[0] ?? Object.values(os.networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal)?.address ?? null;
    if (o.host === null) throw new Error('--transport rdma: no non-loopback IPv4 address found for rdmacm; give the RDMA NIC\'s address with --host');
    log(`transport rdma: device ${picked.name}, agents on ${o.host}`);
  }
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'derecho-bench-'));
  const started = new Date();
  const results: {
    startedAt: string; host: { cpus: number; cpuModel: string; memGiB: number; node: string }; options: Omit<Options, 'only'> & { only: string[] };
    loopback: LoopbackResult | null; derecho: DerechoRow[]; latency: { derecho: RunResult | null; etcd: EtcdPutResult | null }; etcd: EtcdRow[]; etcdNotes: string[];
    reads: { derecho: ReadRunResult[]; etcd: { consistency: 'linearizable' | 'serializable'; result: EtcdPutResult }[]; errors: string[] };
    ratios: { name: string; value: number | null; target: string; met: boolean | null }[];
  } = {
    startedAt: started.toISOString(),
    host: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? 'unknown', memGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version },
    options: { ...o, only: [...o.only] },
    loopback: null, derecho: [], latency: { derecho: null, etcd: null }, etcd: [], etcdNotes: [], ratios: [],
    reads: { derecho: [], etcd: [], errors: [] },
  };
  try {
    // 1. The limit.
    if (o.only.has('loopback')) {
      log('loopback: one socket stream and round trips');
      results.loopback = await measureLoopback(o.quick ? 1.5 : 3, o.quick ? 2000 : 5000);
    }
    // 2. This project.
    if (o.only.has('derecho')) {
      const rows: DerechoRow[] = [];
      const add = (series: string, label: string, members: number, mode: 'ordered' | 'raw', persistence: null | 'fsync' | 'os', senders: 'all' | 'one', sizes: number[]): void => {
        for (const sizeBytes of sizes) rows.push({ series, label, members, mode, persistence, senders, sizeBytes, result: null });
      };
      for (const m of o.members) add(`ordered, all senders, ${m} members`, 'ordered, in memory', m, 'ordered', null, 'all', o.sizes);
      add('ordered, one sender', 'ordered, in memory', 3, 'ordered', null, 'one', o.sizes);
      add('raw, all senders', 'raw', 3, 'raw', null, 'all', o.sizes.filter((s) => s <= MiB));
      add('persisted (fsync), all senders', 'persistent, fsync', 3, 'ordered', 'fsync', 'all', o.quick ? o.sizes.filter((s) => s <= MiB) : o.sizes);
      add('persisted (os), all senders', 'persistent, os', 3, 'ordered', 'os', 'all', o.quick ? o.sizes.filter((s) => s <= MiB) : o.sizes);
      for (const row of rows.filter((r) => o.series === null || r.series.includes(o.series))) {
        log(`derecho: ${row.series}, ${fmtSize(row.sizeBytes)}`);
        try {
          row.result = await derechoRun(work, o, row);
        } catch (e) {
          row.error = e instanceof Error ? e.message : String(e);
          log(`  failed: ${row.error}`);
        }
        results.derecho.push(row);
      }
      if (o.series === null || 'latency'.includes(o.series)) try {
        log('derecho: 1 KiB delivery latency at a moderate load (one sender, 1000 msg/s)');
        results.latency.derecho = await derechoRun(work, o, { series: 'latency', label: 'latency', members: 3, mode: 'ordered', persistence: null, senders: 'one', sizeBytes: KiB, result: null }, 1000, o.quick ? 2 : 4);
      } catch (e) {
        log(`  failed: ${e instanceof Error ? e.message : String(e)}`);
      }
      if (o.series === null || 'reads'.includes(o.series)) {
        // Reads of one 1 KiB key on a persistent (fsync) 3-member group, every member serving readers.
        log('derecho: reads of a 1 KiB value, linearizable and local, 64 readers per member');
        const group = await BenchGroup.start(work, { members: 3, mode: 'ordered', persistence: 'fsync', payloadBytesMax: MiB, sendWindow: windowFor(KiB), transport: o.transport, host: o.host ?? '127.0.0.1', kv: true, readyTimeoutMs: o.readyTimeoutMs });
        try {
          await group.put('bench-read', 'v'.repeat(KiB));
          for (const consistency of ['linearizable', 'local'] as const) {
            try {
              results.reads.derecho.push(await group.reads('bench-read', consistency, 64, (o.quick ? 1.5 : o.durationS) * 1000));
            } catch (e) {
              results.reads.errors.push(`derecho ${consistency} reads: ${e instanceof Error ? e.message : String(e)}`);
            }
          }
        } finally {
          await group.stop();
        }
      }
    }
    // 3. etcd.
    if (o.only.has('etcd')) {
      let tools: EtcdTools | null = null;
      try {
        tools = ensureEtcdTools(log);
        results.etcdNotes = tools.notes;
      } catch (e) {
        results.etcdNotes = [`etcd not measured: ${e instanceof Error ? e.message : String(e)}`];
        log(results.etcdNotes[0]!);
      }
      if (tools) {
        const variants: { name: string; binary: string | null; noFsync: boolean }[] = [
          { name: 'etcd (Debian), fsync', binary: tools.debianEtcd, noFsync: false },
          { name: 'etcd (Go-built), fsync', binary: tools.goEtcd, noFsync: false },
          { name: 'etcd (Go-built), --unsafe-no-fsync', binary: tools.goEtcd, noFsync: true },
        ];
        const etcdSizes = o.sizes.filter((s) => s <= MiB);
        for (const v of variants) {
          if (!v.binary) continue;
          for (const size of etcdSizes) {
            log(`${v.name}: put ${fmtSize(size)}`);
            const row: EtcdRow = { variant: v.name, sizeBytes: size, result: null };
            const cluster = await EtcdCluster.start(v.binary, work, { noFsync: v.noFsync, maxRequestBytes: 4 * MiB });
            try {
              const clients = size >= MiB ? 16 : 256;
              const total = Math.max(200, Math.min(o.quick ? 30_000 : 100_000, Math.floor((o.quick ? 256 : 1024) * MiB / size)));
              row.result = etcdPut(tools, cluster.endpoints, size, total, clients);
              if (size === KiB && v.noFsync === false && results.latency.etcd === null) {
                results.latency.etcd = etcdPut(tools, cluster.endpoints, KiB, o.quick ? 500 : 2000, 1);
              }
            } catch (e) {
              row.error = e instanceof Error ? e.message : String(e);
              log(`  failed: ${row.error.slice(0, 300)}`);
            } finally {
              await cluster.stop();
            }
            results.etcd.push(row);
          }
        }
        if (tools.goEtcd && (o.series === null || 'reads'.includes(o.series))) {
          log('etcd (Go-built), fsync: range reads, linearizable and serializable, 192 clients');
          const cluster = await EtcdCluster.start(tools.goEtcd, work, { noFsync: false, maxRequestBytes: 4 * MiB });
          try {
            for (const [consistency, flag] of [['linearizable', 'l'], ['serializable', 's']] as const) {
              try {
                results.reads.etcd.push({ consistency, result: etcdRange(tools, cluster.endpoints, 'bench-read', flag, o.quick ? 30_000 : 100_000, 192) });
              } catch (e) {
                results.reads.errors.push(`etcd ${consistency} range: ${e instanceof Error ? e.message.slice(0, 300) : String(e)}`);
              }
            }
          } finally {
            await cluster.stop();
          }
        }
      }
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }

  // Ratios.
  const d = (series: string, size: number): RunResult | null => results.derecho.find((r) => r.series === series && r.sizeBytes === size)?.result ?? null;
  const e = (variant: string, size: number): EtcdPutResult | null => results.etcd.find((r) => r.variant === variant && r.sizeBytes === size)?.result ?? null;
  const ordered3 = `ordered, all senders, ${o.members.includes(3) ? 3 : o.members[0]} members`;
  const ratio = (name: string, a: number | null | undefined, b: number | null | undefined, target: string, ok: (x: number) => boolean): void => {
    const value = a != null && b != null && b > 0 ? a / b : null;
    results.ratios.push({ name, value, target, met: value === null ? null : ok(value) });
  };
  const etcdFsync1k = Math.max(e('etcd (Debian), fsync', KiB)?.requestsPerSec ?? 0, e('etcd (Go-built), fsync', KiB)?.requestsPerSec ?? 0) || null;
  ratio('ordered 1 KiB in memory ÷ etcd --unsafe-no-fsync put (msg/s)', d(ordered3, KiB)?.messagesPerSec, e('etcd (Go-built), --unsafe-no-fsync', KiB)?.requestsPerSec, '>= 20', (x) => x >= 20);
  ratio('persisted 1 KiB fsync ÷ etcd fsync put (best of the two etcds)', d('persisted (fsync), all senders', KiB)?.messagesPerSec, etcdFsync1k, '>= 5', (x) => x >= 5);
  ratio('ordered 1 MiB bytes/s ÷ loopback stream', d(ordered3, MiB)?.bytesPerSec, results.loopback?.streamBytesPerSec, '>= 0.5', (x) => x >= 0.5);
  ratio('ordered 16 MiB bytes/s ÷ loopback stream', d(ordered3, 16 * MiB)?.bytesPerSec, results.loopback?.streamBytesPerSec, '>= 0.5', (x) => x >= 0.5);
  const latencyUs = results.latency.derecho?.latencyMs ? results.latency.derecho.latencyMs.p50 * 1000 : null;
  ratio('1 KiB latency p50 ÷ loopback round trip p50 paced at 1000/s (same load)', latencyUs, results.loopback?.roundTripPacedUs.p50, '<= 3', (x) => x <= 3);
  ratio('1 KiB latency p50 ÷ loopback round trip p50 back to back', latencyUs, results.loopback?.roundTripUs.p50, '<= 3', (x) => x <= 3);
  const dr = (c: 'linearizable' | 'local'): number | undefined => results.reads.derecho.find((r) => r.consistency === c)?.readsPerSec;
  const er = (c: 'linearizable' | 'serializable'): number | undefined => results.reads.etcd.find((r) => r.consistency === c)?.result.requestsPerSec;
  ratio('linearizable reads/s ÷ etcd linearizable range/s', dr('linearizable'), er('linearizable'), '>= 1', (x) => x >= 1);
  ratio('local reads/s ÷ etcd serializable range/s', dr('local'), er('serializable'), '>= 1', (x) => x >= 1);

  // Report.
  const lines: string[] = [];
  lines.push(`derecho-ts benchmark, ${results.startedAt}, ${results.host.cpus} cores (${results.host.cpuModel}), Node ${results.host.node}`);
  if (results.loopback) {
    lines.push('', `Loopback limit: one socket ${fmtMBs(results.loopback.streamBytesPerSec)} MB/s (${results.loopback.streamCpuSecondsPerGB.toFixed(2)} CPU s/GB); round trip back to back p50 ${results.loopback.roundTripUs.p50.toFixed(0)} µs, p99 ${results.loopback.roundTripUs.p99.toFixed(0)} µs; paced at ${results.loopback.roundTripPacedUs.ratePerSec}/s p50 ${results.loopback.roundTripPacedUs.p50.toFixed(0)} µs, p99 ${results.loopback.roundTripPacedUs.p99.toFixed(0)} µs`);
  }
  if (results.derecho.length > 0) {
    lines.push('', `| derecho-ts (${results.options.transport === 'rdma' ? 'RDMA' : 'TCP'}, ${results.options.host ?? '127.0.0.1'}) | size | msg/s | MB/s | CPU s/GB | CPU µs/msg |`, '|---|---:|---:|---:|---:|---:|');
    for (const r of results.derecho) {
      lines.push(r.result
        ? `| ${r.series} | ${fmtSize(r.sizeBytes)} | ${fmtRate(r.result.messagesPerSec)} | ${fmtMBs(r.result.bytesPerSec)} | ${r.result.cpuSecondsPerGB.toFixed(1)} | ${r.result.cpuMicrosPerMessage.toFixed(1)} |`
        : `| ${r.series} | ${fmtSize(r.sizeBytes)} | failed: ${(r.error ?? '').slice(0, 80)} | | | |`);
    }
  }
  const l = results.latency.derecho?.latencyMs;
  if (l) lines.push('', `Delivery latency, ordered 1 KiB, one sender at 1000 msg/s, 3 members: p50 ${(l.p50 * 1000).toFixed(0)} µs, p99 ${(l.p99 * 1000).toFixed(0)} µs`);
  if (results.etcd.length > 0 || results.etcdNotes.length > 0) {
    lines.push('', '| etcd (3 members, benchmark put) | size | put/s | MB/s | p50 ms | p99 ms |', '|---|---:|---:|---:|---:|---:|');
    for (const r of results.etcd) {
      lines.push(r.result
        ? `| ${r.variant} | ${fmtSize(r.sizeBytes)} | ${fmtRate(r.result.requestsPerSec)} | ${fmtMBs(r.result.bytesPerSec)} | ${r.result.latencyMs?.p50.toFixed(1) ?? ''} | ${r.result.latencyMs?.p99.toFixed(1) ?? ''} |`
        : `| ${r.variant} | ${fmtSize(r.sizeBytes)} | failed: ${(r.error ?? '').slice(0, 80)} | | | |`);
    }
    if (results.latency.etcd?.latencyMs) lines.push('', `etcd put latency, 1 KiB, one client: p50 ${results.latency.etcd.latencyMs.p50.toFixed(2)} ms, p99 ${results.latency.etcd.latencyMs.p99.toFixed(2)} ms`);
    for (const n of results.etcdNotes) lines.push(`note: ${n}`);
  }
  if (results.reads.derecho.length > 0 || results.reads.etcd.length > 0 || results.reads.errors.length > 0) {
    lines.push('', '| reads of one key, 3 members | reads/s | p50 ms | p99 ms |', '|---|---:|---:|---:|');
    for (const r of results.reads.derecho) lines.push(`| derecho-ts ${r.consistency} (in-process, ${r.concurrencyPerMember} readers per member) | ${fmtRate(r.readsPerSec)} | ${r.latencyMs?.p50.toFixed(2) ?? ''} | ${r.latencyMs?.p99.toFixed(2) ?? ''} |`);
    for (const r of results.reads.etcd) lines.push(`| etcd ${r.consistency} range (benchmark tool, ${r.result.clients} clients) | ${fmtRate(r.result.requestsPerSec)} | ${r.result.latencyMs?.p50.toFixed(2) ?? ''} | ${r.result.latencyMs?.p99.toFixed(2) ?? ''} |`);
    for (const e of results.reads.errors) lines.push(`note: ${e}`);
  }
  lines.push('', '| ratio | value | target | met |', '|---|---:|---:|---|');
  for (const r of results.ratios) lines.push(`| ${r.name} | ${r.value === null ? 'n/a' : r.value.toFixed(2)} | ${r.target} | ${r.met === null ? 'n/a' : r.met ? 'yes' : 'no'} |`);
  process.stdout.write(`${lines.join('\n')}\n`);

  fs.mkdirSync(o.out, { recursive: true });
  const stamp = results.startedAt.replace(/[:.]/g, '-');
  const json = JSON.stringify({ ...results, report: lines }, null, 2);
  fs.writeFileSync(path.join(o.out, `${stamp}.json`), json);
  fs.writeFileSync(path.join(o.out, 'latest.json'), json);
  const svg = throughputChart(results.derecho.filter((r) => r.result).map((r) => ({ series: r.series, sizeBytes: r.sizeBytes, bytesPerSec: r.result!.bytesPerSec })),
    results.etcd.filter((r) => r.result).map((r) => ({ series: r.variant, sizeBytes: r.sizeBytes, bytesPerSec: r.result!.bytesPerSec })),
    results.loopback?.streamBytesPerSec ?? null);
  fs.writeFileSync(path.join(o.out, 'throughput.svg'), svg);
  log(`results: ${path.relative(process.cwd(), path.join(o.out, `${stamp}.json`))}, chart: ${path.relative(process.cwd(), path.join(o.out, 'throughput.svg'))}`);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
