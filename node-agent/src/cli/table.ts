// The status table of a locally running group, built from every member's GET /status: node, pid, mode,
// view, members, the shards it serves with their delivered and persisted frontiers (viewId.seq), and
// messages/s (from counters.deliveredOrdered between two samples); below it, why a member is not ready.

import { HOST } from './runner.ts';
import type { MemberRecord, RunState } from './state.ts';

interface Version {
  viewId: number;
  seq: number;
}

/** The parts of an agent's GET /status the table shows. */
export interface AgentStatus {
  nodeId: number;
  pid: number;
  mode: 'active' | 'joining' | 'restarting' | 'exited';
  viewId: number;
  members: number[];
  leader: number | null;
  wedged: boolean;
  ready: boolean;
  waiting: { kind: string; message: string } | null;
  restart: { waitingFor: string } | null;
  exited?: string | null;
  shards: { shardId: number; subgroup: string; shardIndex: number; members: number[]; delivered: Version; persistenceFrontier: Version; stateReady: boolean }[];
  counters: { deliveredOrdered: number; deliveredBytes: number; viewChanges: number };
}

export interface MemberSample {
  record: MemberRecord;
  /** null when the agent did not answer (see error). */
  status: AgentStatus | null;
  error: string | null;
  /** When it was taken (ms since the epoch). */
  at: number;
}

export interface GroupSample {
  state: RunState;
  members: MemberSample[];
  at: number;
}

export function httpUrl(record: Pick<MemberRecord, 'httpPort'>): string {
  return `http://${HOST}:${record.httpPort}`;
}

async function fetchStatus(record: MemberRecord, timeoutMs: number): Promise<MemberSample> {
  const at = Date.now();
  if (record.pid === null) return { record, status: null, error: 'no process', at };
  try {
    const response = await fetch(`${httpUrl(record)}/status`, { signal: AbortSignal.timeout(timeoutMs) });
    const body = (await response.json()) as AgentStatus;
    if (!response.ok || typeof body !== 'object' || body === null || typeof body.mode !== 'string') {
      return { record, status: null, error: `HTTP ${response.status}`, at };
    }
    return { record, status: body, error: null, at: Date.now() };
  } catch (e) {
    const cause = (e as { cause?: { code?: string } }).cause;
    return { record, status: null, error: cause?.code ?? (e instanceof Error ? e.message : String(e)), at };
  }
}

/** Every member's /status (in parallel). */
export async function sampleGroup(state: RunState, timeoutMs = 1_000): Promise<GroupSample> {
  const members = await Promise.all(state.members.map((record) => fetchStatus(record, timeoutMs)));
  return { state, members, at: Date.now() };
}

export function isReady(sample: GroupSample): boolean {
  return sample.members.length > 0 && sample.members.every((member) => member.status?.ready === true);
}

function version(v: Version | undefined): string {
  // {viewId, -1}: nothing yet in that view.
  return v === undefined || v.viewId < 0 || v.seq < 0 ? '-' : `${v.viewId}.${v.seq}`;
}

function seconds(ms: number): string {
  return `${Math.max(0, ms / 1000).toFixed(1)} s`;
}

/** What a member row says when it has no /status. */
function supervisorMode(record: MemberRecord): string {
  switch (record.state) {
    case 'running': return 'starting';
    case 'backoff': return 'down';
    default: return record.state;
  }
}

/** Why a member is not ready, or null if it is. */
export function memberNote(member: MemberSample, now = Date.now()): string | null {
  const { record, status } = member;
  const lastExit = record.lastExit?.message ? ` Last words: ${record.lastExit.message}` : '';
  if (status === null) {
    switch (record.state) {
      case 'backoff':
        return `down; the supervisor restarts it in ${seconds(Date.parse(record.restartAt ?? '') - now)} (restarted ${record.restarts} time${record.restarts === 1 ? '' : 's'} so far).${lastExit}`;
      case 'failed':
        return `stays down (it kept exiting, or its configuration is bad); see ${record.logFile}.${lastExit}`;
      case 'stopping':
      case 'stopped':
        return record.state;
      default:
        return `starting: no answer on ${httpUrl(record)} yet (${member.error ?? 'no process'})`;
    }
  }
  if (status.mode === 'exited') return `exited: ${status.exited ?? status.waiting?.message ?? 'the replica left the group'}; the supervisor restarts it`;
  if (status.mode === 'restarting') return `restarting after a total failure: ${status.restart?.waitingFor ?? status.waiting?.message ?? ''}`;
  if (status.mode === 'joining') return `joining: ${status.waiting?.message ?? 'waiting to be admitted'}`;
  if (status.wedged) return `wedged in view ${status.viewId}: ${status.waiting?.message || 'view change in progress'}`;
  const pending = status.shards.filter((shard) => !shard.stateReady);
  if (pending.length > 0) return `waiting for the state of ${pending.map((shard) => `${shard.subgroup}/${shard.shardIndex}`).join(', ')}`;
  if (!status.ready) return status.waiting?.message ?? 'not ready';
  return null;
}

function messagesPerSecond(member: MemberSample, previous: GroupSample | null): string {
  const before = previous?.members.find((m) => m.record.nodeId === member.record.nodeId);
  if (!member.status || !before?.status || before.status.pid !== member.status.pid) return '-';
  const seconds = (member.at - before.at) / 1000;
  if (seconds <= 0.05) return '-';
  const delta = member.status.counters.deliveredOrdered - before.status.counters.deliveredOrdered;
  return delta < 0 ? '-' : (delta / seconds).toFixed(1);
}

function layoutColumns(rows: string[][], rightAligned: Set<number>): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, index) => (widths[index] = Math.max(widths[index] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, index) => {
    const width = widths[index]!;
    if (index === row.length - 1 && !rightAligned.has(index)) return cell;
    return rightAligned.has(index) ? cell.padStart(width) : cell.padEnd(width);
  }).join('  ').trimEnd());
}

/** The view most members agree on (the highest among active members), for the title line. */
function groupView(sample: GroupSample): AgentStatus | null {
  let best: AgentStatus | null = null;
  for (const member of sample.members) {
    const status = member.status;
    if (status && status.mode === 'active' && (best === null || status.viewId > best.viewId)) best = status;
  }
  return best;
}

/** The title line: the group, its view and readiness. */
export function renderTitle(sample: GroupSample): string {
  const view = groupView(sample);
  const ready = sample.members.filter((member) => member.status?.ready === true).length;
  const total = sample.members.length;
  const viewText = view ? `view ${view.viewId}: members ${view.members.join(',')}, leader ${view.leader ?? '-'}` : 'no view yet';
  const readyText = ready === total ? 'ready' : `${ready}/${total} members ready`;
  return `${sample.state.group}  ${viewText}  ${readyText}`;
}

/** The table (without a title), one row per served shard, then a note per member that is not ready. */
export function renderTable(sample: GroupSample, previous: GroupSample | null = null): string {
  const header = ['NODE', 'PID', 'HTTP', 'MODE', 'VIEW', 'MEMBERS', 'SHARD', 'DELIVERED', 'PERSISTED', 'MSG/S'];
  const rows: string[][] = [header];
  for (const member of sample.members) {
    const { record, status } = member;
    const pid = String(status?.pid ?? record.pid ?? '-');
    const rate = messagesPerSecond(member, previous);
    if (status === null) {
      rows.push([String(record.nodeId), pid, String(record.httpPort), supervisorMode(record), '-', '-', '-', '-', '-', '-']);
      continue;
    }
    const mode = status.mode === 'active' && status.wedged ? 'wedged' : status.mode;
    const shards = status.shards.length > 0 ? status.shards : [null];
    shards.forEach((shard, index) => {
      const shardCells = shard === null
        ? ['-', '-', '-']
        : [`${shard.subgroup}/${shard.shardIndex}${shard.stateReady ? '' : '*'}`, version(shard.delivered), version(shard.persistenceFrontier)];
      rows.push(index === 0
        ? [String(record.nodeId), pid, String(record.httpPort), mode, status.viewId < 0 ? '-' : String(status.viewId), status.members.join(',') || '-', ...shardCells, rate]
        : ['', '', '', '', '', '', ...shardCells, '']);
    });
  }
  const lines = layoutColumns(rows, new Set([header.length - 1]));
  const notes = sample.members
    .map((member) => [member.record.nodeId, memberNote(member, sample.at)] as const)
    .filter((entry): entry is readonly [number, string] => entry[1] !== null)
    .map(([nodeId, note]) => `  node ${nodeId}: ${note}`);
  if (sample.members.some((member) => member.status?.shards.some((shard) => !shard.stateReady))) notes.push('  * state transfer still in progress');
  return [...lines, ...(notes.length > 0 ? ['', ...notes] : [])].join('\n');
}
