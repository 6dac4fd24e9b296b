// The fault-injection matrix: layouts × nemeses × runs, one report per run and a summary table.
//
//   npm run jepsen -- [--layouts overlap,kv3,five] [--nemeses kill,killall,pause,partition,combined]
//                     [--runs 3] [--seed N] [--duration 30s] [--clients 8] [--keys 5] [--report-dir DIR]
//                     [--partition-mode blackhole|reset|mixed] [--heal-timeout 60s] [--keep-data]
//
// Run r of every layout × nemesis uses seed N + r, so `--layouts L --nemeses X --seed N+r --runs 1`
// reruns it (each report prints that command). Exits 1 when a run had a safety violation, 2 on bad
// arguments. See test/faults/README.md.

import fs from 'node:fs';
import path from 'node:path';
import { LAYOUTS } from './layouts.ts';
import type { LayoutName } from './layouts.ts';
import { NEMESES } from './nemesis.ts';
import type { NemesisName, PartitionMode } from './nemesis.ts';
import { matrixTable, runLine, writeRunReport } from './report.ts';
import { runOnce } from './run.ts';
import type { BreakRule, RunReport } from './run.ts';

interface Args {
  layouts: LayoutName[];
  nemeses: NemesisName[];
  runs: number;
  seed: number;
  durationMs: number;
  clients: number;
  keys: number;
  reportDir: string;
  partitionMode: PartitionMode;
  healTimeoutMs: number;
  keepData: boolean;
  break?: BreakRule;
}

const USAGE = `Usage: npm run jepsen -- [options]
  --layouts L1,L2      layouts (${LAYOUTS.join(', ')}; default all); also --layout
  --nemeses N1,N2      nemeses (${NEMESES.join(', ')}; default all); also --nemesis
  --runs N             runs of each layout × nemesis (default 3); run r uses seed + r
  --seed N             base seed (default: from the clock, printed)
  --duration D         time with faults per run, e.g. 30s, 20000ms, 1m (default 30s)
  --clients N          concurrent clients (default 8)
  --keys N             kv keys (default 5)
  --report-dir DIR     where reports go (default /tmp/derecho-jepsen/<timestamp>)
  --partition-mode M   blackhole (default), reset or mixed
  --heal-timeout D     bound on the recovery after the faults stop (default 60s)
  --keep-data          keep the agents' data directories
  --break RULE         a deliberately broken rule (staleLocalReads, refusedAsOk): the checks must fail`;

function fail(message: string): never {
  process.stderr.write(`jepsen: ${message}\n\n${USAGE}\n`);
  process.exit(2);
}

function duration(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text);
  if (!m) fail(`${flag} ${JSON.stringify(text)} is not a duration (30s, 20000ms, 1m)`);
  const n = Number(m[1]);
  return Math.round(m[2] === 'ms' ? n : m[2] === 'm' ? n * 60_000 : n * 1000);
}

function integer(text: string, flag: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^\d+$/.test(text)) fail(`${flag} ${JSON.stringify(text)} is not an integer`);
  const n = Number(text);
  if (n < min || n > max) fail(`${flag} ${n} is not between ${min} and ${max}`);
  return n;
}

function list<T extends string>(text: string, allowed: readonly T[], flag: string): T[] {
  const items = text.split(',').map((x) => x.trim()).filter((x) => x !== '');
  for (const x of items) if (!(allowed as readonly string[]).includes(x)) fail(`${flag}: ${JSON.stringify(x)} is not one of ${allowed.join(', ')}`);
  if (items.length === 0) fail(`${flag}: empty list`);
  return items as T[];
}

function parseArgs(argv: string[]): Args {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const args: Args = {
    layouts: [...LAYOUTS], nemeses: [...NEMESES], runs: 3, seed: Date.now() % 1_000_000, durationMs: 30_000, clients: 8, keys: 5,
    reportDir: path.join('/tmp/derecho-jepsen', stamp), partitionMode: 'blackhole', healTimeoutMs: 60_000, keepData: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const eq = a.indexOf('=');
    const flag = eq > 0 ? a.slice(0, eq) : a;
    const value = (): string => {
      if (eq > 0) return a.slice(eq + 1);
      const v = argv[++i];
      if (v === undefined) fail(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--layouts':
      case '--layout': args.layouts = list(value(), LAYOUTS, flag); break;
      case '--nemeses':
      case '--nemesis': args.nemeses = list(value(), NEMESES, flag); break;
      case '--runs': args.runs = integer(value(), flag, 1); break;
      case '--seed': args.seed = integer(value(), flag, 0, 0xffffffff - 1000); break;
      case '--duration': args.durationMs = duration(value(), flag); break;
      case '--clients': args.clients = integer(value(), flag, 1, 64); break;
      case '--keys': args.keys = integer(value(), flag, 1, 1000); break;
      case '--report-dir': args.reportDir = path.resolve(value()); break;
      case '--partition-mode': args.partitionMode = list(value(), ['blackhole', 'reset', 'mixed'] as const, flag)[0]!; break;
      case '--heal-timeout': args.healTimeoutMs = duration(value(), flag); break;
      case '--keep-data': args.keepData = true; break;
      case '--break': args.break = list(value(), ['staleLocalReads', 'refusedAsOk'] as const, flag)[0]!; break;
      case '--help':
      case '-h':
        process.stdout.write(`${USAGE}\n`);
        process.exit(0);
        break;
      default: fail(`unknown argument ${JSON.stringify(a)}`);
    }
  }
  if (args.durationMs < 5_000) fail('--duration must be at least 5s');
  return args;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  fs.mkdirSync(args.reportDir, { recursive: true });
  const total = args.layouts.length * args.nemeses.length * args.runs;
  process.stdout.write(`jepsen: ${args.layouts.join(',')} × ${args.nemeses.join(',')} × ${args.runs} runs (${total}), seed ${args.seed}, ${args.durationMs / 1000} s each; reports in ${args.reportDir}\n`);
  const reports: RunReport[] = [];
  let stopping = false;
  process.once('SIGINT', () => {
    stopping = true;
    process.stdout.write('\njepsen: interrupted; finishing the current run (Ctrl-C again to abort)\n');
    process.once('SIGINT', () => process.exit(130));
  });
  let n = 0;
  for (const layout of args.layouts) {
    for (const nemesis of args.nemeses) {
      for (let r = 0; r < args.runs && !stopping; r++) {
        n++;
        const seed = args.seed + r;
        const reportDir = path.join(args.reportDir, `${layout}-${nemesis}-s${seed}`);
        process.stdout.write(`[${n}/${total}] ${layout} × ${nemesis} seed ${seed} ...\n`);
        const report = await runOnce({
          layout, nemesis, seed, durationMs: args.durationMs, clients: args.clients, keys: args.keys, reportDir, runIndex: r,
          partitionMode: args.partitionMode, healTimeoutMs: args.healTimeoutMs, keepData: args.keepData,
          ...(args.break ? { break: args.break } : {}),
          log: (line) => process.stdout.write(`${line}\n`),
        });
        writeRunReport(report);
        reports.push(report);
        process.stdout.write(`  ${runLine(report)}\n`);
      }
    }
  }
  const table = matrixTable(reports);
  const failed = reports.filter((r) => r.verdict !== 'pass');
  const summary = [
    `Matrix (seed ${args.seed}, ${args.durationMs / 1000} s per run, ${args.clients} clients, ${args.keys} keys, partitions ${args.partitionMode}):`,
    table,
    '',
    failed.length === 0 ? `All ${reports.length} runs passed.` : `${failed.length} of ${reports.length} runs FAILED:`,
    ...failed.map((r) => `  ${r.layout} × ${r.nemesis} seed ${r.seed}: ${r.violations.join('; ')}\n    ${r.reportDir}/report.txt\n    rerun: ${r.command}`),
  ].join('\n');
  fs.writeFileSync(path.join(args.reportDir, 'summary.txt'), summary + '\n');
  fs.writeFileSync(path.join(args.reportDir, 'summary.json'), JSON.stringify(reports.map((r) => ({
    layout: r.layout, nemesis: r.nemesis, seed: r.seed, verdict: r.verdict, violations: r.violations, operations: r.operations,
    faultsInjected: r.faultsInjected, linearizable: r.linearizable, lostWrites: r.lostWrites.length, disagreements: r.disagreements.length,
    writeGaps: r.writeGaps, recovery: { healthyAfterMs: r.recovery.healthyAfterMs, writesAfterMs: r.recovery.writesAfterMs }, reportDir: r.reportDir, command: r.command,
  })), null, 2) + '\n');
  process.stdout.write(`\n${summary}\n\nsummary: ${path.join(args.reportDir, 'summary.txt')}\n`);
  process.exit(failed.length > 0 ? 1 : 0);
}

main().catch((e: unknown) => {
  process.stderr.write(`jepsen: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
