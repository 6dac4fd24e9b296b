// The demo's narration (a friendlier form of the trace) and its final tables.

import { compareVersions } from '../../node-agent/src/core/types.ts';
import type { Version } from '../../node-agent/src/core/types.ts';
import type { RunDetails } from './simulator.ts';
import { fmtV } from './history.ts';

const seenViews = new Set<string>();

/**
 * Rewrites one trace line for a human (null: leave it out). Stateful: each view's install is told once.
 */
export function narrate(line: string): string | null {
  const m = /^t=\s*(\d+) (n\d+|\s{2,3})\s+(.*)$/.exec(line);
  if (!m) {
    if (line.startsWith('VIOLATION ')) return `!! ${line}`;
    return line;
  }
  const tick = m[1]!.padStart(5, ' ');
  const who = m[2]!.trim();
  const text = m[3]!;
  const node = who ? `node ${who.slice(1)}` : '';
  const say = (s: string): string => `tick ${tick}  ${node ? node + ' ' : ''}${s}`;
  if (text.startsWith('installed view ')) {
    const id = /^installed view (\d+)/.exec(text)![1]!;
    if (seenViews.has(id)) return null;
    seenViews.add(id);
    return say(`installs ${text.slice('installed '.length)} (the others follow)`);
  }
  if (text === 'now active') return null;
  if (text === 'now active, wedged') return say('wedges: it stops sending, a view change is under way');
  if (text.startsWith('now ')) {
    const w = /waiting \((\w+)\): (.*)$/.exec(text);
    return w ? say(`waits (${w[1]}): ${w[2]}`) : say(`is ${text.slice(4)}`);
  }
  if (text.startsWith('ignores ') || / skipped/.test(text)) return null;
  if (text.startsWith('CRASH')) return say(`crashes${text.slice(5)}`);
  if (text.startsWith('RESTART')) return say(`restarts${text.slice(7)}`);
  if (text.startsWith('EXIT')) return say(`exits${text.slice(4)}`);
  if (text.startsWith('JOIN')) return say(`starts and asks to join${text.slice('JOIN as a new node'.length)}`);
  if (text.startsWith('LEAVE')) return say('asks to leave the group');
  if (text.startsWith('PARTITION')) return say(`the network splits: ${text.slice(10)}`);
  if (text.startsWith('HEAL')) return say('the network heals');
  if (text.startsWith('DELAY SPIKE')) return say(`links slow down: ${text.slice(12)}`);
  if (text.startsWith('TOTAL FAILURE')) return say(`every node crashes at once${text.slice('TOTAL FAILURE'.length)}`);
  if (text.startsWith('QUIET PHASE')) return say(`faults are over; now every node must settle in one view and deliver a probe from every sender`);
  if (text.startsWith('SETTLED')) return say(`the group settled: ${text.slice(11)}`);
  if (text.startsWith('LIVE')) return say('every probe reached every member of its shard');
  return say(text);
}

/** Final tables: members, views, shards. */
export function demoTables(r: RunDetails): string[] {
  const h = r.history;
  const out: string[] = [];
  const final = h.final ?? [];
  out.push('Members at the end');
  out.push(
    ...table(
      ['node', 'state', 'incarnation', 'mode', 'view', 'shards', 'delivered (this life)', 'log records on disk'],
      final.map((n) => [
        `n${n.node}`,
        n.state,
        String(n.incarnation),
        n.status?.mode ?? '-',
        n.status ? String(n.status.viewId) : '-',
        n.status ? n.status.shards.map((s) => `s${s.shardId}${s.stateReady ? '' : '(waiting)'}`).join(' ') || '-' : '-',
        String(h.deliveries.filter((d) => d.node === n.node && d.incarnation === n.incarnation).length),
        String(n.disk.reduce((sum, l) => sum + l.records.length, 0)),
      ]),
    ),
  );
  out.push('');
  out.push('Views');
  const views = [...r.cluster.views.values()].sort((a, b) => a.viewId - b.viewId);
  out.push(
    ...table(
      ['view', 'members', 'shards', 'installed by', 'first at tick'],
      views.map((v) => {
        const installs = h.installs.filter((i) => i.view.viewId === v.viewId);
        return [
          String(v.viewId),
          `[${v.members.join(',')}]`,
          v.layout.shards.map((s) => `s${s.shardId}=[${s.members.join(',')}]`).join(' '),
          `${new Set(installs.map((i) => i.node)).size} node(s)`,
          String(Math.min(...installs.map((i) => i.tick))),
        ];
      }),
    ),
  );
  out.push('');
  out.push('Shards');
  const last = views[views.length - 1];
  out.push(
    ...table(
      ['shard', 'subgroup', 'kind', 'members now', 'sent', 'delivered', 'persisted through'],
      h.shards.map((s) => {
        const frontier = h.acks.filter((a) => a.shardId === s.shardId).reduce<Version | null>((m, a) => (m === null || compareVersions(a.version, m) > 0 ? a.version : m), null);
        return [
          `s${s.shardId}`,
          `${s.subgroup}/${s.shardIndex}`,
          s.deliveryMode === 'raw' ? 'raw' : s.persistent ? 'ordered, persistent' : 'ordered, volatile',
          `[${last?.layout.shards[s.shardId]?.members.join(',') ?? ''}]`,
          String(h.sends.filter((x) => x.shardId === s.shardId && x.result.ok).length),
          String(new Set(h.deliveries.filter((d) => d.shardId === s.shardId).map((d) => d.payload)).size),
          s.persistent ? (frontier ? fmtV(frontier) : 'nothing yet') : '-',
        ];
      }),
    ),
  );
  const st = r.stats;
  out.push('');
  out.push(
    `${st.ticks} ticks; ${st.crashes} crashes, ${st.restarts} restarts, ${st.exits} exits, ${st.joins} joins, ${st.leaves} leaves, ` +
      `${st.partitions} partitions, ${st.spikes} delay spikes, ${st.totalFailures} total failures; ` +
      `${st.messagesSent} messages sent, ${st.messagesDropped} dropped.`,
  );
  return out;
}

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => '  ' + cells.map((c, i) => c.padEnd(widths[i]!, ' ')).join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)];
}
