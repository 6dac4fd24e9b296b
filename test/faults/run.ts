// One fault-injection run: a group of real agents (cluster.ts), clients recording a history
// (workload.ts), a nemesis carrying out a seeded schedule (nemesis.ts), then, with every fault healed:
// recovery, the final reads and the checks, and a report (report.ts).
//
// Timeline (ms since the run's start, when the clients start):
//   0 .. duration     clients run; faults are injected and healed per the schedule
//   duration          the nemesis stops: every fault ends (SIGCONT, links healed, killed members
//                     started); the clients stop (operations under way end within their timeout)
//   recovery          every member active and ready in one view of all members, within healTimeoutMs;
//                     then one write per kv shard (and one append) must succeed: the group works again
//   final checks      once the shards' members delivered the same updates: every acknowledged write is
//                     read at its version on every member of its shard (?version=V.S, a local read); every
//                     key is read locally on every member of its shard: the members must agree (value and
//                     version), and those reads go into the history as ok gets after everything; the logs
//                     of the members must be equal, with every acknowledged append exactly once; then the
//                     history is checked for linearizability, per key.
// A run fails on a safety violation only: not linearizable, an acknowledged write lost, members that
// disagree, a log that lost or duplicated an entry, an agent exiting with an unexpected code, or a group
// that does not recover within healTimeoutMs once the faults stop. Slowness alone (long write gaps) is
// measured and reported, never a failure.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { shardForKey } from '../../node-agent/src/objects/kv.ts';
import { LIST_ENTRIES_MAX } from '../../node-agent/src/objects/kv.ts';
import { keyInShard, sleep } from '../multiprocess/harness.ts';
import type { AgentStatus } from '../multiprocess/harness.ts';
import { FaultCluster } from './cluster.ts';
import type { ExitRecord } from './cluster.ts';
import { layout as layoutOf } from './layouts.ts';
import type { LayoutName } from './layouts.ts';
import { checkLinearizable, formatOp } from './linearizability.ts';
import { describeFault, planFaults } from './nemesis.ts';
import type { FaultKind, NemesisName, PartitionMode, PlannedFault } from './nemesis.ts';
import { Rng } from './prng.ts';
import { kvGet, kvWrite, logAppend, request, toKvOp, Workload } from './workload.ts';
import type { HistoryOp, OpContext, Target, Version } from './workload.ts';

/**
 * Deliberately broken rules, to prove that the checks catch what they must:
 *  - 'staleLocalReads': the clients read with ?consistency=local (documented as possibly stale), from the
 *    member the nemesis paused or cut off last: a paused member answers the reads that waited for it from
 *    its old state when it continues, before it notices that the others removed it;
 *  - 'refusedAsOk': writes the agent refused or did not confirm are recorded as acknowledged (a client
 *    that takes every answer for a success).
 */
export type BreakRule = 'staleLocalReads' | 'refusedAsOk';

export interface RunOptions {
  layout: LayoutName;
  nemesis: NemesisName;
  seed: number;
  durationMs: number;
  clients?: number;
  keys?: number;
  /** The run's report directory (created). */
  reportDir: string;
  runIndex?: number;
  partitionMode?: PartitionMode;
  /** Timeout of one client operation (default 5 s). */
  opTimeoutMs?: number;
  /** Bound on the recovery once the nemesis stopped (default 60 s). */
  healTimeoutMs?: number;
  /** Bound on the group's first formation (default 60 s). */
  startTimeoutMs?: number;
  break?: BreakRule;
  /** Keep the agents' data directories (default: only their logs are kept, in the report directory). */
  keepData?: boolean;
  /** Progress lines. */
  log?: (line: string) => void;
}

export interface FaultRecord extends PlannedFault {
  description: string;
  startedMs: number | null;
  endedMs: number | null;
  /** Why the fault did nothing (e.g. the member was not running). */
  skipped?: string;
  /** Ended early by the end of the run. */
  truncated?: boolean;
  /** Pids killed or paused. */
  pids?: number[];
}

export interface Gap {
  /** Longest time without an acknowledged write (ms), and where. */
  longestMs: number;
  fromMs: number;
  toMs: number;
  /** Acknowledged writes counted. */
  acks: number;
}

export interface LostWrite {
  op: string;
  node: number;
  expected: string;
  got: string;
}

export interface RunReport {
  layout: LayoutName;
  layoutDescription: string;
  nemesis: NemesisName;
  seed: number;
  runIndex: number;
  durationMs: number;
  clients: number;
  keys: string[];
  partitionMode: PartitionMode;
  break: BreakRule | null;
  command: string;
  reportDir: string;
  startedAt: string;
  wallMs: number;
  verdict: 'pass' | 'fail';
  violations: string[];
  operations: { total: number; ok: number; fail: number; info: number; byKind: Record<string, { ok: number; fail: number; info: number }> };
  faults: FaultRecord[];
  /** Faults that took effect, by kind. */
  faultsInjected: Record<FaultKind, number>;
  exits: ExitRecord[];
  linearizable: boolean | 'unknown' | null;
  /** With a broken rule that rewrites the history (refusedAsOk): the verdict on the history as recorded honestly. */
  honestLinearizable?: boolean | 'unknown';
  nonLinearizable: { key: string; linearizable: boolean | 'unknown'; explanation: string }[];
  lostWrites: LostWrite[];
  disagreements: string[];
  log: {
    checked: boolean;
    entries: number;
    acked: number;
    membersAgree: boolean;
    missing: string[];
    duplicates: string[];
    refusedButPresent: string[];
    unknown: string[];
    misplaced: string[];
  } | null;
  writeGaps: { overall: Gap; perShard: Record<string, Gap> };
  recovery: {
    nemesisStoppedMs: number;
    healthyAfterMs: number | null;
    /** Per shard, ms from the end of the nemesis to the first acknowledged write after it. */
    writesAfterMs: Record<string, number | null>;
    lastStatuses: string[];
    /** Whether every shard's members reached the same delivered and persisted versions before the final reads. */
    quiescent: boolean | null;
    /** Per member and shard, before the final reads: delivered, persisted by all, applied to the object. */
    shards: string[];
  };
  finalValues: Record<string, { value: string | null; version: Version | null; members: number[] }>;
  /** Harness notes (starts, exits, restarts). */
  events: { atMs: number; text: string }[];
  error?: string;
}

const FINAL_PROCESS_BASE = 1000;
const PROBE_PROCESS = 900;

export function rerunCommand(o: { layout: string; nemesis: string; seed: number; durationMs: number; clients: number; keys: number; partitionMode?: string; break?: string | undefined }): string {
  return `npm run jepsen -- --layouts ${o.layout} --nemeses ${o.nemesis} --seed ${o.seed} --duration ${o.durationMs / 1000}s --runs 1 --clients ${o.clients} --keys ${o.keys}`
    + `${o.partitionMode && o.partitionMode !== 'blackhole' ? ` --partition-mode ${o.partitionMode}` : ''}${o.break ? ` --break ${o.break}` : ''}`;
}

/** `count` keys spread evenly over the kv shards: `k<shard>-<n>`. */
export function chooseKeys(count: number, shards: number): { key: string; shard: number }[] {
  const keys: { key: string; shard: number }[] = [];
  const next = new Array<number>(shards).fill(0);
  for (let i = 0; i < count; i++) {
    const shard = i % shards;
    for (;;) {
      const key = `k${shard}-${next[shard]!++}`;
      if (shardForKey(key, shards) === shard) {
        keys.push({ key, shard });
        break;
      }
    }
  }
  return keys;
}

// ---------------------------------------------------------------------------------------------
// The nemesis at work

class NemesisExecutor {
  readonly records: FaultRecord[];
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly active = new Map<number, () => Promise<void>>();
  private readonly work = new Set<Promise<void>>();
  private stopped = false;
  /** The member the last pause or partition started on (the minority's first member). */
  lastFaulted: number | null = null;

  constructor(private readonly cluster: FaultCluster, plan: PlannedFault[], private readonly now: () => number, private readonly log: (line: string) => void) {
    this.records = plan.map((f) => ({ ...f, description: describeFault(f), startedMs: null, endedMs: null }));
  }

  start(): void {
    for (const rec of this.records) this.after(rec.atMs - this.now(), () => this.begin(rec));
  }

  private after(ms: number, f: () => Promise<void>): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (this.stopped) return;
      this.track(f());
    }, Math.max(0, ms));
    this.timers.add(timer);
  }

  private track(p: Promise<void>): void {
    const q = p.catch((e: unknown) => this.log(`nemesis error: ${e instanceof Error ? e.message : String(e)}`)).finally(() => this.work.delete(q));
    this.work.add(q);
  }

  private async begin(rec: FaultRecord): Promise<void> {
    rec.startedMs = this.now();
    if (rec.kind === 'pause' || rec.kind === 'partition') this.lastFaulted = rec.targets[0]!;
    const c = this.cluster;
    let end: () => Promise<void>;
    switch (rec.kind) {
      case 'kill': {
        const id = rec.targets[0]!;
        const pid = await c.kill(id);
        if (pid === null) rec.skipped = `node ${id} was not running (held down for the fault's duration anyway)`;
        else rec.pids = [pid];
        end = async () => c.release(id);
        break;
      }
      case 'killall': {
        const pids = await Promise.all(rec.targets.map((id) => c.kill(id)));
        rec.pids = pids.filter((p): p is number => p !== null);
        end = async () => {
          for (const id of rec.targets) c.release(id);
        };
        break;
      }
      case 'pause': {
        const id = rec.targets[0]!;
        const pid = c.pause(id);
        if (pid === null) {
          rec.skipped = `node ${id} was not running`;
          end = async () => {};
        } else {
          rec.pids = [pid];
          end = async () => {
            c.resume(id, pid);
          };
        }
        break;
      }
      case 'partition': {
        const [minority, majority] = rec.partition!.sides;
        for (const a of minority) for (const b of majority) c.mesh.cut(a, b, rec.partition!.mode);
        end = async () => {
          for (const a of minority) for (const b of majority) c.mesh.heal(a, b);
        };
        break;
      }
    }
    this.log(`  +${(rec.startedMs / 1000).toFixed(1)}s fault ${rec.description}${rec.skipped ? ` (skipped: ${rec.skipped})` : ''}`);
    let done = false;
    const finish = async (truncated: boolean): Promise<void> => {
      if (done) return;
      done = true;
      this.active.delete(rec.id);
      await end();
      rec.endedMs = this.now();
      if (truncated) rec.truncated = true;
    };
    this.active.set(rec.id, () => finish(true));
    this.after(rec.atMs + rec.durationMs - this.now(), () => finish(false));
  }

  /** Cancels what has not started and ends every active fault. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    await Promise.all([...this.work]);
    await Promise.all([...this.active.values()].map((f) => f()));
  }
}

// ---------------------------------------------------------------------------------------------
// Checks

function gaps(history: HistoryOp[], fromMs: number, toMs: number, group: (op: HistoryOp) => string | null): { overall: Gap; perShard: Record<string, Gap> } {
  const acks = new Map<string, number[]>();
  const all: number[] = [];
  for (const op of history) {
    if (op.outcome !== 'ok' || op.kind === 'get' || op.final || op.completeMs === null) continue;
    if (op.completeMs < fromMs || op.completeMs > toMs) continue;
    all.push(op.completeMs);
    const g = group(op);
    if (g === null) continue;
    let list = acks.get(g);
    if (!list) acks.set(g, (list = []));
    list.push(op.completeMs);
  }
  const longest = (times: number[]): Gap => {
    const sorted = [fromMs, ...times.sort((a, b) => a - b), toMs];
    let best: Gap = { longestMs: 0, fromMs, toMs: fromMs, acks: times.length };
    for (let i = 1; i < sorted.length; i++) {
      const d = sorted[i]! - sorted[i - 1]!;
      if (d > best.longestMs) best = { longestMs: d, fromMs: sorted[i - 1]!, toMs: sorted[i]!, acks: times.length };
    }
    return best;
  };
  const perShard: Record<string, Gap> = {};
  for (const [g, times] of [...acks].sort(([a], [b]) => (a < b ? -1 : 1))) perShard[g] = longest(times);
  return { overall: longest(all), perShard };
}

const sameVersion = (a: Version | null | undefined, b: Version | null | undefined): boolean =>
  (a ?? null) === (b ?? null) || (a != null && b != null && a.viewId === b.viewId && a.seq === b.seq);
const showVersion = (v: Version | null | undefined): string => (v ? `${v.viewId}.${v.seq}` : 'none');

/** Runs `tasks` with at most `width` at once. */
async function pool<T>(items: T[], width: number, f: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, async () => {
    while (next < items.length) await f(items[next++]!);
  }));
}

// ---------------------------------------------------------------------------------------------
// A run

export async function runOnce(options: RunOptions): Promise<RunReport> {
  const log = options.log ?? (() => {});
  const L = layoutOf(options.layout);
  const clients = options.clients ?? 8;
  const keyCount = options.keys ?? 5;
  const opTimeoutMs = options.opTimeoutMs ?? 5_000;
  const healTimeoutMs = options.healTimeoutMs ?? 60_000;
  const partitionMode = options.partitionMode ?? 'blackhole';
  const rng = new Rng(options.seed);
  const plan = planFaults({ nemesis: options.nemesis, members: Array.from({ length: L.members }, (_, i) => i + 1), durationMs: options.durationMs, rng: rng.fork('nemesis'), partitionMode });
  const keys = chooseKeys(keyCount, L.kv.shards);
  fs.mkdirSync(options.reportDir, { recursive: true });
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `derecho-faults-${options.layout}-`));
  const startedAt = new Date();
  const wall0 = Date.now();
  let t0 = performance.now();
  const now = (): number => Math.round((performance.now() - t0) * 10) / 10;
  let nextId = 1;
  const ctx: OpContext = {
    now, nextId: () => nextId++, timeoutMs: opTimeoutMs, kvSubgroup: L.kv.subgroup,
    ...(options.break === 'staleLocalReads' ? { localReads: true } : {}),
  };

  const report: RunReport = {
    layout: L.name, layoutDescription: L.description, nemesis: options.nemesis, seed: options.seed, runIndex: options.runIndex ?? 0,
    durationMs: options.durationMs, clients, keys: keys.map((k) => k.key), partitionMode, break: options.break ?? null,
    command: rerunCommand({ layout: L.name, nemesis: options.nemesis, seed: options.seed, durationMs: options.durationMs, clients, keys: keyCount, partitionMode, break: options.break }),
    reportDir: options.reportDir, startedAt: startedAt.toISOString(), wallMs: 0, verdict: 'pass', violations: [],
    operations: { total: 0, ok: 0, fail: 0, info: 0, byKind: {} }, faults: [], faultsInjected: { kill: 0, killall: 0, pause: 0, partition: 0 }, exits: [],
    linearizable: null, nonLinearizable: [], lostWrites: [], disagreements: [], log: null,
    writeGaps: { overall: { longestMs: 0, fromMs: 0, toMs: 0, acks: 0 }, perShard: {} },
    recovery: { nemesisStoppedMs: 0, healthyAfterMs: null, writesAfterMs: {}, lastStatuses: [], quiescent: null, shards: [] },
    finalValues: {}, events: [],
  };

  const cluster = await FaultCluster.create({ dir: dataDir, layout: L, now });
  let workload: Workload | null = null;
  let nemesis: NemesisExecutor | null = null;
  const history: HistoryOp[] = [];
  try {
    // ---- The group forms.
    log(`${L.name} × ${options.nemesis} seed ${options.seed}: starting ${L.members} agents`);
    cluster.startAll();
    const formed = await cluster.waitHealthy(options.startTimeoutMs ?? 60_000);
    if (!formed.statuses) throw new Error(`the group did not form:\n  ${formed.last.join('\n  ')}`);
    const targets: Target[] = cluster.ids.map((id) => ({ node: id, url: cluster.member(id).url }));

    // ---- The workload and the nemesis.
    // Times count from here; what happened before (the group forming) gets negative times.
    const shift = performance.now() - t0;
    t0 += shift;
    for (const e of cluster.events) e.atMs = Math.round((e.atMs - shift) * 10) / 10;
    cluster.events.push({ atMs: 0, text: 'workload started' });
    nemesis = new NemesisExecutor(cluster, plan, now, log);
    const executor = nemesis;
    workload = new Workload({
      clients, keys, targets, ctx, logSubgroup: L.log?.subgroup ?? null, rng: rng.fork('clients'),
      ...(options.break === 'staleLocalReads' ? { readTarget: () => targets.find((x) => x.node === executor.lastFaulted) ?? null } : {}),
    });
    workload.start();
    nemesis.start();
    await sleep(options.durationMs);

    // ---- Stop: every fault ends, the clients stop.
    report.recovery.nemesisStoppedMs = now();
    await nemesis.stop();
    cluster.healEverything();
    cluster.events.push({ atMs: now(), text: 'nemesis stopped, every fault healed' });
    await workload.stop();
    history.push(...workload.history);
    const workloadEnd = report.recovery.nemesisStoppedMs;
    log(`  +${(now() / 1000).toFixed(1)}s nemesis stopped; ${history.length} operations; waiting for the group to recover`);

    // ---- Recovery: one view of every member, then a write on every shard.
    const healDeadline = Date.now() + healTimeoutMs;
    const healthy = await cluster.waitHealthy(healTimeoutMs);
    report.recovery.lastStatuses = healthy.last;
    let statuses: AgentStatus[] | null = healthy.statuses;
    if (!statuses) {
      report.violations.push(`the group did not recover within ${healTimeoutMs / 1000} s after the nemesis stopped`);
    } else {
      report.recovery.healthyAfterMs = Math.round(now() - workloadEnd);
      const probeShards: { name: string; write: (target: Target, n: number) => Promise<HistoryOp> }[] = [];
      for (let s = 0; s < L.kv.shards; s++) {
        const probeKey = keyInShard(`probe${s}`, s, L.kv.shards);
        probeShards.push({ name: `${L.kv.subgroup}/${s}`, write: (target, n) => kvWrite(ctx, PROBE_PROCESS, target, probeKey, s, `probe-${n}`) });
      }
      if (L.log) probeShards.push({ name: `${L.log.subgroup}/0`, write: (target, n) => logAppend(ctx, PROBE_PROCESS, target, L.log!.subgroup, `probe-${n}`) });
      let n = 0;
      await Promise.all(probeShards.map(async (p) => {
        const probeRng = rng.fork(`probe-${p.name}`);
        report.recovery.writesAfterMs[p.name] = null;
        while (Date.now() < healDeadline) {
          const op = await p.write(probeRng.pick(targets), n++);
          history.push(op);
          if (op.outcome === 'ok') {
            report.recovery.writesAfterMs[p.name] = Math.round(op.completeMs! - workloadEnd);
            return;
          }
          await sleep(100);
        }
        report.violations.push(`no write to ${p.name} succeeded within ${healTimeoutMs / 1000} s after the nemesis stopped`);
      }));
      // Probes may have changed the view (they should not): take the statuses again.
      const again = await cluster.waitHealthy(Math.max(5_000, healDeadline - Date.now()));
      statuses = again.statuses;
      if (!statuses) report.violations.push(`the group was not healthy after the recovery writes:\n  ${again.last.join('\n  ')}`);
    }
    log(`  +${(now() / 1000).toFixed(1)}s recovery: healthy after ${report.recovery.healthyAfterMs ?? '-'} ms, writes after ${JSON.stringify(report.recovery.writesAfterMs)}`);

    if (statuses) {
      const layoutNow = statuses[0]!.layout;
      const shardMembers = (subgroup: string, index: number): number[] => layoutNow.find((l) => l.subgroup === subgroup && l.shardIndex === index)?.members ?? [];
      report.recovery.quiescent = await waitQuiescent(cluster, 20_000);
      if (!report.recovery.quiescent) log('  the shards\' members did not reach the same delivered and persisted versions within 20 s');
      const v = (x: { viewId: number; seq: number } | null | undefined): string => (x ? `${x.viewId}.${x.seq}` : '-');
      for (const st of await cluster.statuses()) {
        if (!st) continue;
        for (const x of st.shards as (AgentStatus['shards'][number] & { applied?: Version | null })[]) {
          report.recovery.shards.push(`node ${st.nodeId} ${x.subgroup}/${x.shardIndex}: delivered ${v(x.delivered)}, persisted by all ${v(x.persistenceFrontier)}, applied ${v(x.applied)}, stateReady ${x.stateReady}`);
        }
      }

      // ---- Every acknowledged write, at its version, on every member of its shard.
      const acked = history.filter((op) => op.outcome === 'ok' && (op.kind === 'put' || op.kind === 'delete') && op.version);
      const checks: { op: HistoryOp; node: number }[] = [];
      for (const op of acked) for (const node of shardMembers(L.kv.subgroup, op.shard)) checks.push({ op, node });
      await pool(checks, 16, async ({ op, node }) => {
        const v = op.version!;
        const r = await request(`${cluster.member(node).url}/v1/kv/${L.kv.subgroup}/${encodeURIComponent(op.key)}?version=${v.viewId}.${v.seq}&consistency=local`, 'GET', undefined, 10_000);
        const expected = op.kind === 'put' ? `${JSON.stringify(op.value)} at ${showVersion(v)}` : `absent at ${showVersion(v)}`;
        let got: string;
        if (!r.ok) got = `no answer: ${r.error}`;
        else if (r.status === 200) got = `${JSON.stringify(r.body?.['value'])} at ${showVersion(r.body?.['version'] as Version)}`;
        else if (r.status === 404 && /not found/.test(String(r.body?.['error'] ?? ''))) got = `absent at ${showVersion(v)}`;
        else got = `HTTP ${r.status} ${r.text.slice(0, 200)}`;
        if (got !== expected) report.lostWrites.push({ op: formatOp(toKvOp(op)), node, expected, got });
      });
      if (report.lostWrites.length > 0) report.violations.push(`${report.lostWrites.length} acknowledged writes not found at their version on a member of their shard`);

      // ---- Final reads: every key on every member of its shard, one after the other (and the first member
      // again), as ok gets after everything: a member that diverged makes the history flip-flop, which
      // the checker rejects, besides the members' disagreement reported here.
      const finalKeys = [...new Set([...keys.map((k) => k.key), ...history.filter((op) => op.kind === 'put' || op.kind === 'delete').map((op) => op.key)])].sort();
      let last = now();
      for (const key of finalKeys) {
        const shard = shardForKey(key, L.kv.shards);
        const members = shardMembers(L.kv.subgroup, shard);
        const reads: HistoryOp[] = [];
        for (const node of members.length > 1 ? [...members, members[0]!] : members) {
          const op = await kvGet(ctx, FINAL_PROCESS_BASE + node, { node, url: cluster.member(node).url }, key, shard, 'local');
          // Sequential reads after everything: each at an instant of its own (the checker takes equal times as concurrent).
          last = Math.max(now(), Math.round((last + 0.1) * 10) / 10);
          op.final = true;
          op.invokeMs = last;
          op.completeMs = last;
          reads.push(op);
          if (op.outcome === 'ok') history.push(op);
          else report.disagreements.push(`final read of ${key} on node ${op.node} failed: ${op.error ?? op.status}`);
        }
        const oks = reads.filter((op) => op.outcome === 'ok');
        if (oks.length > 0) {
          report.finalValues[key] = { value: oks[0]!.value, version: oks[0]!.version ?? null, members: reads.map((op) => op.node) };
          if (!oks.every((op) => op.value === oks[0]!.value && sameVersion(op.version, oks[0]!.version))) {
            report.disagreements.push(`members disagree on ${key}: ${oks.map((op) => `node ${op.node}: ${JSON.stringify(op.value)} at ${showVersion(op.version)}`).join('; ')}`);
          }
        }
      }
      if (report.disagreements.length > 0) report.violations.push(`members disagree after healing (${report.disagreements.length})`);

      // ---- The log.
      if (L.log) report.log = await checkLog(cluster, L.log.subgroup, shardMembers(L.log.subgroup, 0), history, report.violations);
    }

    // ---- Linearizability, per key, over the history with the final reads.
    const honest = history.filter((op) => op.kind !== 'append').map(toKvOp);
    let kvHistory = honest;
    if (options.break === 'refusedAsOk') {
      // The broken client: every write that got an answer at all counts as acknowledged.
      kvHistory = honest.map((k) => (k.kind !== 'get' && k.outcome !== 'ok' && k.completeMs !== null ? { ...k, outcome: 'ok' as const } : k));
      report.honestLinearizable = checkLinearizable(honest).linearizable;
    }
    const verdict = checkLinearizable(kvHistory);
    report.linearizable = verdict.linearizable;
    report.nonLinearizable = verdict.keys.filter((k) => k.linearizable !== true).map((k) => ({ key: k.key, linearizable: k.linearizable, explanation: k.explanation ?? 'the search gave up (state bound reached)' }));
    if (verdict.linearizable === false) report.violations.push(`not linearizable: keys ${report.nonLinearizable.filter((k) => k.linearizable === false).map((k) => k.key).join(', ')}`);

    // ---- Measures.
    report.writeGaps = gaps(history, 0, workloadEnd, (op) => (op.kind === 'append' ? `${L.log?.subgroup ?? 'log'}/0` : `${L.kv.subgroup}/${op.shard}`));
  } catch (e) {
    report.error = e instanceof Error ? (e.stack ?? e.message) : String(e);
    report.violations.push(`harness error: ${e instanceof Error ? e.message : String(e)}`);
  } finally {
    if (nemesis) await nemesis.stop().catch(() => {});
    if (workload && history.length === 0) {
      await workload.stop().catch(() => {});
      history.push(...workload.history);
    }
    await cluster.close();
    for (const id of cluster.ids) {
      const m = cluster.member(id);
      try {
        fs.copyFileSync(m.logFile, path.join(options.reportDir, `node-${id}.log`));
      } catch {
        // never started
      }
    }
    if (!options.keepData) fs.rmSync(dataDir, { recursive: true, force: true });
  }

  // ---- The report.
  report.faults = nemesis ? nemesis.records : plan.map((f) => ({ ...f, description: describeFault(f), startedMs: null, endedMs: null }));
  for (const f of report.faults) if (f.startedMs !== null && !f.skipped) report.faultsInjected[f.kind]++;
  report.exits = cluster.exits;
  report.events = cluster.events;
  const unexpected = cluster.exits.filter((x) => !x.expected);
  if (unexpected.length > 0) report.violations.push(`${unexpected.length} unexpected agent exits: ${unexpected.map((x) => `node ${x.node} at ${(x.atMs / 1000).toFixed(1)} s: ${x.reason}`).join('; ')}`);
  const ops = report.operations;
  for (const op of history) {
    if (op.final) continue;
    ops.total++;
    ops[op.outcome]++;
    const k = (ops.byKind[op.kind] ??= { ok: 0, fail: 0, info: 0 });
    k[op.outcome]++;
  }
  report.verdict = report.violations.length === 0 ? 'pass' : 'fail';
  report.wallMs = Date.now() - wall0;
  fs.writeFileSync(path.join(options.reportDir, 'history.jsonl'), history.map((op) => JSON.stringify(op)).join('\n') + '\n');
  return report;
}

/** Waits until, for every shard, its members have delivered and persisted the same versions (twice in a row). */
async function waitQuiescent(cluster: FaultCluster, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  let previous = '';
  while (Date.now() < deadline) {
    const statuses = await cluster.statuses();
    if (statuses.every((s) => s !== null)) {
      const byShard = new Map<number, string[]>();
      for (const s of statuses as AgentStatus[]) {
        for (const x of s.shards) {
          const list = byShard.get(x.shardId) ?? [];
          list.push(`${x.delivered.viewId}.${x.delivered.seq}/${x.persistenceFrontier.viewId}.${x.persistenceFrontier.seq}`);
          byShard.set(x.shardId, list);
        }
      }
      const agree = [...byShard.values()].every((l) => l.every((v) => v === l[0]));
      const snapshot = JSON.stringify([...byShard]);
      if (agree && snapshot === previous) return true;
      previous = agree ? snapshot : '';
    }
    await sleep(300);
  }
  return false;
}

async function readWholeLog(url: string, subgroup: string): Promise<{ index: number; entry: unknown; version: Version }[] | string> {
  const out: { index: number; entry: unknown; version: Version }[] = [];
  for (;;) {
    const r = await request(`${url}/v1/subgroups/${subgroup}/shards/0/query/read?consistency=local`, 'POST', JSON.stringify([out.length, LIST_ENTRIES_MAX]), 10_000);
    if (!r.ok) return `no answer: ${r.error}`;
    if (r.status !== 200 || !Array.isArray(r.body?.['value'])) return `HTTP ${r.status} ${r.text.slice(0, 200)}`;
    const chunk = r.body['value'] as { index: number; entry: unknown; version: Version }[];
    out.push(...chunk);
    if (chunk.length < LIST_ENTRIES_MAX) return out;
  }
}

async function checkLog(cluster: FaultCluster, subgroup: string, members: number[], history: HistoryOp[], violations: string[]): Promise<NonNullable<RunReport['log']>> {
  const result: NonNullable<RunReport['log']> = { checked: false, entries: 0, acked: 0, membersAgree: true, missing: [], duplicates: [], refusedButPresent: [], unknown: [], misplaced: [] };
  const logs = await Promise.all(members.map((id) => readWholeLog(cluster.member(id).url, subgroup)));
  const failed = logs.map((l, i) => (typeof l === 'string' ? `node ${members[i]}: ${l}` : null)).filter((x) => x !== null);
  if (failed.length > 0 || logs.length === 0) {
    violations.push(`the ${subgroup} log could not be read on every member: ${failed.join('; ') || 'no members'}`);
    return result;
  }
  const lists = logs as { index: number; entry: unknown; version: Version }[][];
  result.checked = true;
  const reference = lists[0]!;
  result.entries = reference.length;
  const canon = (l: { entry: unknown; version: Version }[]): string => JSON.stringify(l.map((e) => [e.entry, e.version.viewId, e.version.seq]));
  const appends = history.filter((op) => op.kind === 'append');
  const byEntry = new Map(appends.map((op) => [op.value, op]));
  const show = (e: { index: number; entry: unknown; version: Version }): string => {
    const op = typeof e.entry === 'string' ? byEntry.get(e.entry) : undefined;
    return `${JSON.stringify(e.entry)} at index ${e.index} version ${showVersion(e.version)}${op ? ` (its append: ${op.outcome})` : ''}`;
  };
  for (let i = 1; i < lists.length; i++) {
    if (canon(lists[i]!) !== canon(reference)) {
      result.membersAgree = false;
      const a = lists[i]!;
      let at = 0;
      while (at < a.length && at < reference.length && JSON.stringify([a[at]!.entry, a[at]!.version]) === JSON.stringify([reference[at]!.entry, reference[at]!.version])) at++;
      const entries = (l: typeof a): Set<string> => new Set(l.map((e) => JSON.stringify(e.entry)));
      const inA = entries(a);
      const inRef = entries(reference);
      const onlyRef = reference.filter((e) => !inA.has(JSON.stringify(e.entry))).map(show);
      const onlyA = a.filter((e) => !inRef.has(JSON.stringify(e.entry))).map(show);
      const first = `node ${members[0]} has ${reference[at] ? show(reference[at]!) : 'nothing'}, node ${members[i]} has ${a[at] ? show(a[at]!) : 'nothing'}`;
      violations.push(`the ${subgroup} log differs between node ${members[0]} (${reference.length} entries) and node ${members[i]} (${a.length} entries) from index ${at}: ${first}`
        + `${onlyRef.length > 0 ? `; only on node ${members[0]}: ${onlyRef.slice(0, 5).join(', ')}` : ''}${onlyA.length > 0 ? `; only on node ${members[i]}: ${onlyA.slice(0, 5).join(', ')}` : ''}`);
    }
  }
  result.acked = appends.filter((op) => op.outcome === 'ok').length;
  // Every member's copy on its own: the copies may differ, and each must hold every acknowledged append.
  for (const [i, list] of lists.entries()) {
    const node = members[i]!;
    const count = new Map<string, number>();
    for (const e of list) {
      const entry = typeof e.entry === 'string' ? e.entry : JSON.stringify(e.entry);
      count.set(entry, (count.get(entry) ?? 0) + 1);
      const op = byEntry.get(entry);
      if (!op) result.unknown.push(`node ${node}: ${entry} at index ${e.index}`);
      else if (op.outcome === 'fail') result.refusedButPresent.push(`node ${node}: ${formatAppend(op)}, yet at index ${e.index}`);
    }
    for (const [entry, n] of count) if (n > 1) result.duplicates.push(`node ${node}: ${entry} ×${n}`);
    for (const op of appends) {
      if (op.outcome !== 'ok') continue;
      if (!count.has(op.value!)) result.missing.push(`node ${node}: ${formatAppend(op)}`);
      else if (op.index !== undefined && list[op.index]?.entry !== op.value) result.misplaced.push(`node ${node}: ${formatAppend(op)}: acknowledged at index ${op.index}, found at ${list.findIndex((e) => e.entry === op.value)}`);
    }
  }
  if (result.missing.length > 0) violations.push(`${result.missing.length} acknowledged appends missing from a member's copy of the ${subgroup} log`);
  if (result.duplicates.length > 0) violations.push(`${result.duplicates.length} entries appear more than once in the ${subgroup} log`);
  if (result.refusedButPresent.length > 0) violations.push(`${result.refusedButPresent.length} appends refused with a definite error are in the ${subgroup} log`);
  if (result.unknown.length > 0) violations.push(`${result.unknown.length} entries of the ${subgroup} log were never appended`);
  if (result.misplaced.length > 0) violations.push(`${result.misplaced.length} acknowledged appends are not at the index they were acknowledged with`);
  return result;
}

function formatAppend(op: HistoryOp): string {
  const end = op.completeMs === null ? '?' : `${op.completeMs.toFixed(1)} ms`;
  return `p${op.process} append(${JSON.stringify(op.value)}) via node ${op.node} [${op.invokeMs.toFixed(1)} ms .. ${end}] ${op.outcome}${op.index !== undefined ? ` index ${op.index}` : ''}`;
}
