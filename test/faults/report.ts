// Reports of fault-injection runs: report.json and report.txt per run, and the matrix summary.

import fs from 'node:fs';
import path from 'node:path';
import type { Gap, RunReport } from './run.ts';

const s = (ms: number | null | undefined): string => (ms === null || ms === undefined ? '-' : `${(ms / 1000).toFixed(1)}s`);

function gapText(g: Gap): string {
  return `${s(g.longestMs)} (${s(g.fromMs)} .. ${s(g.toMs)}, ${g.acks} acks)`;
}

/** The faults that overlap [from, to] (what the gap went through). */
function faultsDuring(r: RunReport, from: number, to: number): string[] {
  return r.faults.filter((f) => f.startedMs !== null && f.startedMs <= to && (f.endedMs ?? Infinity) >= from).map((f) => f.description);
}

export function reportText(r: RunReport): string {
  const out: string[] = [];
  const line = (t = ''): void => {
    out.push(t);
  };
  line(`Fault-injection run: layout ${r.layout}, nemesis ${r.nemesis}, seed ${r.seed} (run ${r.runIndex + 1})`);
  line(`  ${r.layoutDescription}`);
  line(`  ${r.clients} clients, keys ${r.keys.join(', ')}, ${s(r.durationMs)} of faults, partitions ${r.partitionMode}${r.break ? `, BROKEN RULE ${r.break}` : ''}`);
  line(`  started ${r.startedAt}, took ${s(r.wallMs)}; report ${r.reportDir}`);
  line(`  rerun: ${r.command}`);
  line();
  line(`VERDICT: ${r.verdict.toUpperCase()}`);
  for (const v of r.violations) line(`  - ${v}`);
  line();
  const o = r.operations;
  line(`Operations: ${o.total} (ok ${o.ok}, failed ${o.fail}, indeterminate ${o.info})`);
  for (const [kind, c] of Object.entries(o.byKind)) line(`  ${kind.padEnd(7)} ok ${String(c.ok).padStart(5)}  failed ${String(c.fail).padStart(5)}  indeterminate ${String(c.info).padStart(5)}`);
  line();
  line(`Linearizable: ${r.linearizable === null ? 'not checked' : r.linearizable}${r.honestLinearizable !== undefined ? ` (with the broken rule ${r.break}; the history as recorded honestly: ${r.honestLinearizable})` : ''}`);
  for (const k of r.nonLinearizable) {
    line(`  key ${k.key}: ${k.linearizable}`);
    for (const l of k.explanation.split('\n')) line(`    ${l}`);
  }
  line(`Lost acknowledged writes: ${r.lostWrites.length}`);
  for (const w of r.lostWrites.slice(0, 50)) line(`  ${w.op} on node ${w.node}: expected ${w.expected}, got ${w.got}`);
  if (r.lostWrites.length > 50) line(`  ... ${r.lostWrites.length - 50} more in report.json`);
  line(`Members disagreeing after healing: ${r.disagreements.length}`);
  for (const d of r.disagreements) line(`  ${d}`);
  if (r.log) {
    const g = r.log;
    line(`Log: ${g.checked ? `${g.entries} entries, ${g.acked} acknowledged appends, members ${g.membersAgree ? 'agree' : 'DISAGREE'}` : 'not checked'}`);
    for (const [what, list] of [['missing', g.missing], ['duplicated', g.duplicates], ['refused yet present', g.refusedButPresent], ['never appended', g.unknown], ['misplaced', g.misplaced]] as const) {
      if (list.length === 0) continue;
      line(`  ${what}: ${list.length}`);
      for (const x of list.slice(0, 20)) line(`    ${x}`);
    }
  }
  line();
  line('Longest time without an acknowledged write:');
  line(`  overall  ${gapText(r.writeGaps.overall)}`);
  for (const f of faultsDuring(r, r.writeGaps.overall.fromMs, r.writeGaps.overall.toMs)) line(`           during ${f}`);
  for (const [shard, g] of Object.entries(r.writeGaps.perShard)) {
    line(`  ${shard.padEnd(8)} ${gapText(g)}`);
    for (const f of faultsDuring(r, g.fromMs, g.toMs)) line(`           during ${f}`);
  }
  line();
  const rec = r.recovery;
  line(`Recovery after the nemesis stopped at ${s(rec.nemesisStoppedMs)}: one healthy view after ${s(rec.healthyAfterMs)}; first write per shard after ${Object.entries(rec.writesAfterMs).map(([k, v]) => `${k} ${s(v)}`).join(', ') || '-'}`);
  for (const l of rec.lastStatuses) line(`  ${l}`);
  if (rec.quiescent !== null) line(`Before the final reads: shards ${rec.quiescent ? 'quiescent' : 'NOT quiescent (members at different versions after 20 s)'}`);
  for (const l of rec.shards) line(`  ${l}`);
  line();
  line(`Faults (${r.faults.length} planned; injected: ${Object.entries(r.faultsInjected).map(([k, v]) => `${k} ${v}`).join(', ')}):`);
  for (const f of r.faults) {
    line(`  ${f.description}: ${f.startedMs === null ? 'not started' : `${s(f.startedMs)} .. ${s(f.endedMs)}`}${f.truncated ? ' (ended by the end of the run)' : ''}${f.pids ? ` pids ${f.pids.join(',')}` : ''}${f.skipped ? ` SKIPPED: ${f.skipped}` : ''}`);
  }
  line();
  line(`Agent exits (${r.exits.length}):`);
  for (const x of r.exits) line(`  ${s(x.atMs)} node ${x.node} pid ${x.pid} code ${x.code} signal ${x.signal}: ${x.expected ? '' : 'UNEXPECTED: '}${x.reason}; last log line: ${x.lastLogLine.slice(0, 300)}`);
  if (r.error) {
    line();
    line('Harness error:');
    line(r.error);
  }
  line();
  line('Harness events:');
  for (const e of r.events) line(`  ${s(e.atMs)} ${e.text}`);
  return out.join('\n') + '\n';
}

export function writeRunReport(r: RunReport): void {
  fs.mkdirSync(r.reportDir, { recursive: true });
  fs.writeFileSync(path.join(r.reportDir, 'report.json'), JSON.stringify(r, null, 2) + '\n');
  fs.writeFileSync(path.join(r.reportDir, 'report.txt'), reportText(r));
}

/** One line per run, for the console. */
export function runLine(r: RunReport): string {
  const o = r.operations;
  const shards = Object.entries(r.writeGaps.perShard).map(([k, g]) => `${k} ${s(g.longestMs)}`).join(' ');
  return `${r.verdict === 'pass' ? 'PASS' : 'FAIL'} ${r.layout} × ${r.nemesis} seed ${r.seed}: ops ${o.ok}/${o.fail}/${o.info} (ok/failed/indeterminate), `
    + `faults ${Object.entries(r.faultsInjected).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(' ') || 'none'}, `
    + `linearizable ${r.linearizable}, lost ${r.lostWrites.length}, max write gap ${s(r.writeGaps.overall.longestMs)} [${shards}]`
    + `${r.violations.length > 0 ? `\n     ${r.violations.join('\n     ')}` : ''}\n     ${r.reportDir}`;
}

/** The matrix summary: one row per layout × nemesis (runs aggregated). */
export function matrixTable(reports: RunReport[]): string {
  const rows: string[][] = [['layout', 'nemesis', 'runs', 'pass', 'ops ok/fail/info', 'faults', 'linearizable', 'lost', 'disagree', 'exits!', 'max gap', 'max gap per shard', 'recovered']];
  const groups = new Map<string, RunReport[]>();
  for (const r of reports) {
    const k = `${r.layout}\u0000${r.nemesis}`;
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  for (const list of groups.values()) {
    const first = list[0]!;
    const sum = (f: (r: RunReport) => number): number => list.reduce((a, r) => a + f(r), 0);
    const max = (f: (r: RunReport) => number | null): number | null => list.reduce<number | null>((a, r) => {
      const v = f(r);
      return v === null ? a : a === null ? v : Math.max(a, v);
    }, null);
    const shardNames = [...new Set(list.flatMap((r) => Object.keys(r.writeGaps.perShard)))].sort();
    const lin = list.map((r) => r.linearizable);
    rows.push([
      first.layout,
      first.nemesis,
      String(list.length),
      String(list.filter((r) => r.verdict === 'pass').length),
      `${sum((r) => r.operations.ok)}/${sum((r) => r.operations.fail)}/${sum((r) => r.operations.info)}`,
      String(sum((r) => Object.values(r.faultsInjected).reduce((a, b) => a + b, 0))),
      lin.every((v) => v === true) ? 'yes' : `${lin.filter((v) => v === false).length} no, ${lin.filter((v) => v !== true && v !== false).length} unknown`,
      String(sum((r) => r.lostWrites.length + (r.log?.missing.length ?? 0))),
      String(sum((r) => r.disagreements.length + (r.log && !r.log.membersAgree ? 1 : 0))),
      String(sum((r) => r.exits.filter((x) => !x.expected).length)),
      s(max((r) => r.writeGaps.overall.longestMs)),
      shardNames.map((n) => `${n} ${s(max((r) => r.writeGaps.perShard[n]?.longestMs ?? null))}`).join(' '),
      s(max((r) => (r.recovery.healthyAfterMs === null ? null : Math.max(r.recovery.healthyAfterMs, ...Object.values(r.recovery.writesAfterMs).map((v) => v ?? 0))))),
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const fmt = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [fmt(rows[0]!), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.slice(1).map(fmt)].join('\n');
}
