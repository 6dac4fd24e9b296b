// Checkers: pure functions over a recorded History. Each returns violations as readable sentences
// (empty when the property holds). They know nothing about the Replica's internals.

import { compareVersions } from '../../node-agent/src/core/types.ts';
import type { NodeId, View } from '../../node-agent/src/core/types.ts';
import { fmtV } from './history.ts';
import type { AppEntry, DeliveryEvent, DurableEvent, FinalNode, History, ShardInfo, WireData } from './history.ts';

/** At most this many violations per checker (then one summary line). */
const MAX_PER_CHECKER = 8;

export interface CheckOptions {
  /** Judge liveness (default: history.judgeLiveness, set when the run reached its quiet phase). */
  liveness?: boolean;
  /** How raw shards are judged for virtual synchrony (default RAW_SYNCHRONY_DEFAULT). */
  raw?: RawSynchrony;
}

export function checkAll(h: History, options: CheckOptions = {}): string[] {
  const out = [
    ...checkViewAgreement(h),
    ...checkTotalOrder(h),
    ...checkVirtualSynchrony(h, options.raw),
    ...checkNoPhantoms(h),
    ...checkPersistence(h),
  ];
  if (options.liveness ?? h.judgeLiveness) out.push(...checkLiveness(h), ...checkAcceptedSends(h));
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Total order

/**
 * Within an ordered shard: every node that delivers a version delivers the same message there, a message
 * sits at one version only, each incarnation's deliveries go strictly up, and there are no holes (a
 * message delivered in view v, that some node delivered something after, is delivered by every node that
 * delivered anything after it in view v).
 */
export function checkTotalOrder(h: History): string[] {
  const out = new Capped('total order');
  const ordered = h.deliveries.filter((d) => d.mode === 'ordered');

  // Same version -> same message; same message -> same version.
  const atVersion = new Map<string, DeliveryEvent>();
  const versionOf = new Map<string, DeliveryEvent>();
  for (const d of ordered) {
    const k = `${d.shardId}|${fmtV(d.version)}`;
    const first = atVersion.get(k);
    if (!first) atVersion.set(k, d);
    else if (first.sender !== d.sender || first.payload !== d.payload) {
      out.add(
        `shard ${d.shardId} version ${fmtV(d.version)}: ${who(first)} delivered ${msg(first)} but ${who(d)} delivered ${msg(d)}`,
      );
    }
    const m = `${d.shardId}|${d.payload}`;
    const at = versionOf.get(m);
    if (!at) versionOf.set(m, d);
    else if (compareVersions(at.version, d.version) !== 0) {
      out.add(`shard ${d.shardId}: ${msg(d)} delivered at version ${fmtV(at.version)} by ${who(at)} but at ${fmtV(d.version)} by ${who(d)}`);
    }
  }

  // State transfers carry the delivered messages at their versions.
  for (const t of h.transfers) {
    if (t.what !== 'installed') continue;
    for (const e of t.entries ?? []) {
      const d = atVersion.get(`${t.shardId}|${fmtV(e.version)}`);
      if (d && (d.sender !== e.sender || d.payload !== e.payload)) {
        out.add(`state transfer from n${t.peer} to n${t.node}#${t.incarnation} holds '${e.payload}' from n${e.sender} at shard ${t.shardId} version ${fmtV(e.version)}, where ${who(d)} delivered ${msg(d)}`);
      }
    }
  }

  // Strictly increasing per incarnation and shard.
  const last = new Map<string, DeliveryEvent>();
  for (const d of ordered) {
    const k = `${d.node}|${d.incarnation}|${d.shardId}`;
    const prev = last.get(k);
    if (prev && compareVersions(d.version, prev.version) <= 0) {
      out.add(`${who(d)} delivered shard ${d.shardId} version ${fmtV(d.version)} (${msg(d)}) after version ${fmtV(prev.version)} (${msg(prev)}) at t=${d.tick}`);
    }
    last.set(k, d);
  }

  // No holes, per (shard, view).
  const byShardView = new Map<string, Map<string, number[]>>();
  for (const d of ordered) {
    const k = `${d.shardId}|${d.version.viewId}`;
    let perNode = byShardView.get(k);
    if (!perNode) byShardView.set(k, (perNode = new Map()));
    const nk = `n${d.node}#${d.incarnation}`;
    let seqs = perNode.get(nk);
    if (!seqs) perNode.set(nk, (seqs = []));
    seqs.push(d.version.seq);
  }
  // Versions a node received through a state transfer count as held by it.
  const transferred = new Map<string, Set<number>>();
  for (const t of h.transfers) {
    if (t.what !== 'installed') continue;
    for (const e of t.entries ?? []) {
      const k = `${t.shardId}|${e.version.viewId}|n${t.node}#${t.incarnation}`;
      let set = transferred.get(k);
      if (!set) transferred.set(k, (set = new Set()));
      set.add(e.version.seq);
    }
  }
  for (const [k, perNode] of byShardView) {
    const [shardId, viewId] = k.split('|');
    // Versions some node delivered and then delivered something after (in this view).
    const interior = new Set<number>();
    const sets = new Map<string, { set: Set<number>; max: number }>();
    for (const [nk, seqs] of perNode) {
      const max = Math.max(...seqs);
      for (const s of seqs) if (s < max) interior.add(s);
      sets.set(nk, { set: new Set(seqs), max });
    }
    for (const x of [...interior].sort((a, b) => a - b)) {
      for (const [nk, { set, max }] of sets) {
        if (max > x && !set.has(x) && !transferred.get(`${k}|${nk}`)?.has(x)) {
          const holder = [...perNode.keys()].find((o) => sets.get(o)!.set.has(x) && sets.get(o)!.max > x)!;
          out.add(`hole in shard ${shardId} view ${viewId}: ${nk} delivered up to seq ${max} but skipped seq ${x}, which ${holder} delivered`);
        }
      }
    }
  }
  return out.lines();
}

// ---------------------------------------------------------------------------------------------------
// Virtual synchrony

/**
 * How raw shards are judged. 'exact': survivors of a view deliver exactly the same raw messages in it
 * (what the brief asked). 'trim': survivors deliver at least every raw message inside the decided ragged
 * trim, and may differ beyond it; this is Derecho's raw (unordered) mode, which delivers on receipt: a
 * sender delivers its own message at once, and if the view wedges before the others receive it, it lies
 * beyond the trim. The Replica implements that mode, so 'trim' is the default; see the report.
 */
export type RawSynchrony = 'exact' | 'trim';
export const RAW_SYNCHRONY_DEFAULT: RawSynchrony = 'trim';

/**
 * Nodes that installed view v+1 while members of view v delivered exactly the same messages in view v
 * in every ordered shard of v they were members of (counting messages a state transfer gave them), and,
 * in raw shards, the same messages (exact) or at least every message inside the ragged trim (trim).
 * Also: an ordered delivery happens in the view its version names.
 */
export function checkVirtualSynchrony(h: History, raw: RawSynchrony = RAW_SYNCHRONY_DEFAULT): string[] {
  const out = new Capped('virtual synchrony');
  const info = new Map<number, ShardInfo>(h.shards.map((s) => [s.shardId, s]));
  for (const d of h.deliveries) {
    if (d.mode === 'ordered' && d.version.viewId !== d.viewId && !d.released) {
      out.add(`${who(d)} delivered shard ${d.shardId} version ${fmtV(d.version)} (${msg(d)}) while in view ${d.viewId}`);
    }
  }
  // Messages per (node, incarnation, view, shard). Ordered: by the view the version names, delivered
  // (possibly late, released after a state transfer) or received in a transfer. Raw: by the view at delivery.
  const delivered = new Map<string, Set<string>>();
  const add = (k: string, item: string): void => {
    let set = delivered.get(k);
    if (!set) delivered.set(k, (set = new Set()));
    set.add(item);
  };
  for (const d of h.deliveries) {
    const viewId = d.mode === 'ordered' ? d.version.viewId : d.viewId;
    add(`${d.node}|${d.incarnation}|${viewId}|${d.shardId}`, `${d.payload}\u0000${d.sender}`);
  }
  const transfersOf = new Map<string, number[]>();
  for (const t of h.transfers) {
    if (t.what !== 'installed') continue;
    const tk = `${t.node}|${t.incarnation}|${t.shardId}`;
    transfersOf.set(tk, [...(transfersOf.get(tk) ?? []), t.order]);
    for (const e of t.entries ?? []) add(`${t.node}|${t.incarnation}|${e.version.viewId}|${t.shardId}`, `${e.payload}\u0000${e.sender}`);
  }
  // Raw deliveries per (node, incarnation, view, shard): sender rank -> indexes.
  const rawIndexes = new Map<string, Map<number, Set<number>>>();
  // Survivors of each (view, shard): members who installed the next view in the same incarnation.
  const survivors = new Map<string, { node: NodeId; incarnation: number; view: View }[]>();
  for (const [, installs] of installsByIncarnation(h)) {
    for (let i = 0; i + 1 < installs.length; i++) {
      const a = installs[i]!;
      const b = installs[i + 1]!;
      if (b.view.viewId !== a.view.viewId + 1) continue;
      for (const shard of a.view.layout.shards) {
        if (!shard.members.includes(a.node)) continue;
        // A member that waited for the shard's state throughout the view held no state to deliver to.
        const gotState = (transfersOf.get(`${a.node}|${a.incarnation}|${shard.shardId}`) ?? []).some((order) => order > a.order && order < b.order);
        if (a.pendingState.includes(shard.shardId) && !gotState) continue;
        const k = `${a.view.viewId}|${shard.shardId}`;
        let list = survivors.get(k);
        if (!list) survivors.set(k, (list = []));
        list.push({ node: a.node, incarnation: a.incarnation, view: a.view });
      }
    }
  }
  const trimOf = new Map<number, number[][]>();
  for (const t of h.trims) if (!trimOf.has(t.viewId)) trimOf.set(t.viewId, t.trims);
  const viewById = new Map<number, View>();
  for (const i of h.installs) if (!viewById.has(i.view.viewId)) viewById.set(i.view.viewId, i.view);
  if (raw === 'trim') {
    for (const d of h.deliveries) {
      if (d.mode !== 'raw') continue;
      const k = `${d.node}|${d.incarnation}|${d.viewId}|${d.shardId}`;
      let m = rawIndexes.get(k);
      if (!m) rawIndexes.set(k, (m = new Map()));
      const senders = viewById.get(d.viewId)?.layout.shards[d.shardId]?.senders.length ?? 0;
      if (senders === 0) continue;
      const rank = d.version.seq % senders;
      let set = m.get(rank);
      if (!set) m.set(rank, (set = new Set()));
      set.add(Math.floor(d.version.seq / senders));
    }
  }
  // Ordered shards: every survivor delivers exactly the decided ragged trim of the ending view: every
  // message on the wire below the trim, and nothing at or beyond it.
  const wireOf = new Map<string, WireData[]>();
  for (const w of h.wire) {
    const k = `${w.viewId}|${w.shardId}`;
    let list = wireOf.get(k);
    if (!list) wireOf.set(k, (list = []));
    list.push(w);
  }
  for (const [k, list] of survivors) {
    const [viewId, shardId] = k.split('|').map(Number) as [number, number];
    if (info.get(shardId)?.deliveryMode !== 'ordered') continue;
    const trims = trimOf.get(viewId)?.[shardId];
    const senders = list[0]!.view.layout.shards[shardId]?.senders.length ?? 0;
    if (!trims || senders === 0 || trims.length !== senders) continue;
    // Inside the trim: sender r's first trims[r] messages (Derecho skips only slots beyond a sender's trim).
    const isInside = (seq: number): boolean => Math.floor(seq / senders) < trims[seq % senders]!;
    const trimText = `[${trims.join(',')}]`;
    const inside = (wireOf.get(k) ?? []).filter((w) => w.index < trims[w.senderRank]!);
    for (const s of list) {
      const got = delivered.get(`${s.node}|${s.incarnation}|${viewId}|${shardId}`) ?? new Set<string>();
      const missing = inside.filter((w) => !got.has(`${w.payload}\u0000${w.sender}`));
      if (missing.length > 0) {
        out.add(
          `view ${viewId} shard ${shardId}: n${s.node}#${s.incarnation} moved on to view ${viewId + 1} without delivering ` +
            `${missing.slice(0, 4).map((w) => `'${w.payload}' (seq ${w.index * senders + w.senderRank})`).join(', ')}${missing.length > 4 ? ` (+${missing.length - 4})` : ''}, inside the ragged trim ${trimText}`,
        );
      }
      const beyond = h.deliveries.filter(
        (d) => d.node === s.node && d.incarnation === s.incarnation && d.shardId === shardId && d.mode === 'ordered' && d.version.viewId === viewId && !isInside(d.version.seq),
      );
      if (beyond.length > 0) {
        out.add(`view ${viewId} shard ${shardId}: n${s.node}#${s.incarnation} delivered seq ${beyond.map((d) => d.version.seq).slice(0, 4).join(', ')}, beyond the ragged trim ${trimText}`);
      }
    }
  }
  for (const [k, list] of survivors) {
    const [viewId, shardId] = k.split('|');
    const isRaw = info.get(Number(shardId))?.deliveryMode === 'raw';
    if (isRaw && raw === 'trim') {
      const trims = trimOf.get(Number(viewId))?.[Number(shardId)];
      if (!trims) continue;
      const senders = list[0]!.view.layout.shards[Number(shardId)]!.senders;
      for (const s of list) {
        const got = rawIndexes.get(`${s.node}|${s.incarnation}|${viewId}|${shardId}`);
        trims.forEach((count, rank) => {
          const have = got?.get(rank) ?? new Set<number>();
          const missing: number[] = [];
          for (let i = 0; i < count; i++) if (!have.has(i)) missing.push(i);
          if (missing.length > 0) {
            out.add(
              `view ${viewId} raw shard ${shardId}: n${s.node}#${s.incarnation} moved on to view ${Number(viewId) + 1} without delivering messages ` +
                `${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ` (+${missing.length - 5})` : ''} of sender n${senders[rank]}, inside the ragged trim (${count})`,
            );
          }
        });
      }
      continue;
    }
    if (list.length < 2) continue;
    const sets = list.map((s) => ({ ...s, set: delivered.get(`${s.node}|${s.incarnation}|${viewId}|${shardId}`) ?? new Set<string>() }));
    const ref = sets[0]!;
    for (const other of sets.slice(1)) {
      const onlyRef = [...ref.set].filter((x) => !other.set.has(x));
      const onlyOther = [...other.set].filter((x) => !ref.set.has(x));
      if (onlyRef.length === 0 && onlyOther.length === 0) continue;
      out.add(
        `view ${viewId} shard ${shardId}: n${ref.node}#${ref.incarnation} and n${other.node}#${other.incarnation} both moved on to view ${Number(viewId) + 1} ` +
          `but delivered different messages in view ${viewId} (${ref.set.size} vs ${other.set.size})` +
          (onlyRef.length ? `; only n${ref.node}: ${listMsgs(onlyRef)}` : '') +
          (onlyOther.length ? `; only n${other.node}: ${listMsgs(onlyOther)}` : ''),
      );
    }
  }
  return out.lines();
}

// ---------------------------------------------------------------------------------------------------
// View agreement

/** Every install of a view id has the same members and layout; each incarnation installs increasing ids, each including itself. */
export function checkViewAgreement(h: History): string[] {
  const out = new Capped('view agreement');
  const first = new Map<number, { key: string; node: NodeId; incarnation: number; view: View }>();
  for (const inst of h.installs) {
    const key = viewKey(inst.view);
    const f = first.get(inst.view.viewId);
    if (!f) first.set(inst.view.viewId, { key, node: inst.node, incarnation: inst.incarnation, view: inst.view });
    else if (f.key !== key) {
      out.add(
        `split brain: view ${inst.view.viewId} installed by n${f.node}#${f.incarnation} with members [${f.view.members.join(',')}] ${layoutText(f.view)} ` +
          `and by n${inst.node}#${inst.incarnation} (t=${inst.tick}) with members [${inst.view.members.join(',')}] ${layoutText(inst.view)}`,
      );
    }
    if (!inst.view.members.includes(inst.node)) {
      out.add(`n${inst.node}#${inst.incarnation} installed view ${inst.view.viewId} [${inst.view.members.join(',')}] that does not include it (t=${inst.tick})`);
    }
  }
  const firstTrim = new Map<number, { key: string; node: NodeId; incarnation: number }>();
  for (const t of h.trims) {
    const key = JSON.stringify(t.trims);
    const f = firstTrim.get(t.viewId);
    if (!f) firstTrim.set(t.viewId, { key, node: t.node, incarnation: t.incarnation });
    else if (f.key !== key) {
      out.add(`ragged trims of view ${t.viewId} differ: n${f.node}#${f.incarnation} saved ${f.key}, n${t.node}#${t.incarnation} saved ${key} (t=${t.tick})`);
    }
  }
  // One successor per view: two installed views that both follow view p are two decisions about p.
  const successor = new Map<number, { key: string; node: NodeId; incarnation: number; view: View }>();
  for (const inst of h.installs) {
    const p = inst.view.previousViewId;
    if (p === undefined) continue;
    const key = viewKey(inst.view) + `|${inst.view.viewId}`;
    const f = successor.get(p);
    if (!f) successor.set(p, { key, node: inst.node, incarnation: inst.incarnation, view: inst.view });
    else if (f.key !== key) {
      out.add(
        `two views follow view ${p}: n${f.node}#${f.incarnation} installed view ${f.view.viewId} [${f.view.members.join(',')}] and ` +
          `n${inst.node}#${inst.incarnation} installed view ${inst.view.viewId} [${inst.view.members.join(',')}] (t=${inst.tick})`,
      );
    }
  }
  // A restart plan that was carried out agrees with every installed view on the views it adopted (views
  // it assumed may have been installed): otherwise one view id names two different views.
  const installedKey = new Map<number, string>();
  for (const inst of h.installs) if (!installedKey.has(inst.view.viewId)) installedKey.set(inst.view.viewId, viewKey(inst.view));
  const reported = new Set<string>();
  for (const p of h.restartPlans) {
    if (installedKey.get(p.view.viewId) !== viewKey(p.view)) continue; // not carried out (or another view won)
    for (const a of p.adopted) {
      const k = installedKey.get(a.viewId);
      const tag = `${p.view.viewId}|${a.viewId}`;
      if (k !== undefined && k !== viewKey(a) && !reported.has(tag)) {
        reported.add(tag);
        out.add(`split brain: restart view ${p.view.viewId} followed view ${a.viewId} [${a.members.join(',')}] (adopted by n${p.node}'s plan), but view ${a.viewId} was installed with other members or layout`);
      }
    }
  }
  for (const [, installs] of installsByIncarnation(h)) {
    for (let i = 1; i < installs.length; i++) {
      const a = installs[i - 1]!;
      const b = installs[i]!;
      if (b.view.viewId <= a.view.viewId) {
        out.add(`n${b.node}#${b.incarnation} installed view ${b.view.viewId} after view ${a.view.viewId} (t=${b.tick})`);
      }
    }
  }
  return out.lines();
}

// ---------------------------------------------------------------------------------------------------
// No phantoms, no duplicates

/** Every delivered (or stored) message was sent, by that sender, to that shard, and accepted; no incarnation delivers one twice. */
export function checkNoPhantoms(h: History): string[] {
  const out = new Capped('integrity');
  const sent = new Map<string, { node: NodeId; shardId: number; ok: boolean; reason: string }>();
  for (const s of h.sends) {
    const prev = sent.get(s.payload);
    if (!prev || (!prev.ok && s.result.ok)) {
      sent.set(s.payload, { node: s.node, shardId: s.shardId, ok: s.result.ok, reason: s.result.ok ? '' : s.result.reason });
    }
  }
  const judge = (where: string, shardId: number, sender: NodeId, payload: string): void => {
    const s = sent.get(payload);
    if (!s) out.add(`${where} '${payload}' in shard ${shardId} that no one sent`);
    else if (!s.ok) out.add(`${where} '${payload}' in shard ${shardId}, but its send was refused (${s.reason})`);
    else if (s.node !== sender) out.add(`${where} '${payload}' as sent by n${sender}, but n${s.node} sent it`);
    else if (s.shardId !== shardId) out.add(`${where} '${payload}' in shard ${shardId}, but it was sent to shard ${s.shardId}`);
  };
  const seen = new Map<string, DeliveryEvent>();
  for (const d of h.deliveries) {
    judge(`${who(d)} delivered`, d.shardId, d.sender, d.payload);
    const k = `${d.node}|${d.incarnation}|${d.shardId}|${d.payload}`;
    const prev = seen.get(k);
    if (prev) out.add(`${who(d)} delivered '${d.payload}' twice in shard ${d.shardId} (t=${prev.tick} and t=${d.tick})`);
    else seen.set(k, d);
  }
  for (const f of h.final ?? []) {
    for (const log of f.disk) for (const r of log.records) judge(`n${f.node}'s disk holds`, log.shardId, r.sender, r.payload);
  }
  const position = new Map<string, string>();
  for (const w of h.wire) {
    const k = `${w.viewId}|${w.shardId}|${w.senderRank}|${w.index}`;
    const prev = position.get(k);
    if (prev === undefined) position.set(k, w.payload);
    else if (prev !== w.payload) {
      out.add(`two different messages went out as message ${w.index} of sender rank ${w.senderRank} in view ${w.viewId} shard ${w.shardId}: '${prev}' and '${w.payload}'`);
    }
  }
  return out.lines();
}

// ---------------------------------------------------------------------------------------------------
// Persistence

/**
 * No persisted write lost: every update acknowledged as durable (it was in the state of a node when that
 * node reported a persistence frontier at or above it) is, at the end, in the log of every running active
 * member of that shard that holds its state, with the same content (under fsync policy 'os', one may be
 * missing once a member of its shard in the view that ordered it lost power after writing it). Two acknowledged updates never
 * disagree on a version. And no log anywhere holds a different message at a delivered version.
 */
export function checkPersistence(h: History): string[] {
  const out = new Capped('persistence');
  const info = new Map<number, ShardInfo>(h.shards.map((s) => [s.shardId, s]));
  // The message at each ordered version (first delivery).
  const atVersion = new Map<number, Map<string, DeliveryEvent>>();
  for (const d of h.deliveries) {
    if (d.mode !== 'ordered') continue;
    let m = atVersion.get(d.shardId);
    if (!m) atVersion.set(d.shardId, (m = new Map()));
    if (!m.has(fmtV(d.version))) m.set(fmtV(d.version), d);
  }
  const durable = new Map<string, DurableEvent>();
  for (const e of h.durable) {
    if (!info.get(e.shardId)?.persistent) continue;
    const k = `${e.shardId}|${fmtV(e.version)}`;
    const prev = durable.get(k);
    if (!prev) durable.set(k, e);
    else if (prev.payload !== e.payload || prev.sender !== e.sender) {
      out.add(
        `two acknowledged updates at shard ${e.shardId} version ${fmtV(e.version)}: ${msg(prev)} (n${prev.node}#${prev.incarnation}, frontier ${fmtV(prev.frontier)}) ` +
          `and ${msg(e)} (n${e.node}#${e.incarnation}, frontier ${fmtV(e.frontier)})`,
      );
    }
  }
  const final = h.final ?? [];
  // Under fsync policy 'os' a machine crash loses what the OS had not flushed, and nothing tells the node
  // what it lost: its word that it persisted a write is void, and a restart may take its shorter log as
  // its shard's state. A write may then be missing once some member of its shard in the view that
  // ordered it lost power after it was written (docs/protocol.md, "Durability under fsync policy os");
  // where a log holds it, it must still be the same.
  const shardMembers = new Map<string, NodeId[]>();
  for (const i of h.installs) {
    for (const s of i.view.layout.shards) {
      const k = `${i.view.viewId}|${s.shardId}`;
      if (!shardMembers.has(k)) shardMembers.set(k, s.members);
    }
  }
  const excused = (e: DurableEvent): boolean => {
    if (h.storage !== 'os') return false;
    const written = atVersion.get(e.shardId)?.get(fmtV(e.version))?.tick ?? e.tick;
    const members = shardMembers.get(`${e.version.viewId}|${e.shardId}`) ?? [];
    return members.some((m) => h.machineCrashes.some((c) => c.node === m && c.tick >= written));
  };
  const required = [...durable.values()].sort((a, b) => a.shardId - b.shardId || compareVersions(a.version, b.version));
  for (const n of final) {
    if (n.state !== 'up' || !n.status || n.status.mode !== 'active') continue;
    const logs = new Map(n.disk.map((l) => [l.shardId, new Map(l.records.map((r) => [fmtV(r.version), r]))]));
    const ready = new Set(n.status.shards.filter((s) => s.stateReady).map((s) => s.shardId));
    for (const e of required) {
      if (!ready.has(e.shardId)) continue;
      const r = logs.get(e.shardId)?.get(fmtV(e.version));
      if (!r) {
        if (excused(e)) continue;
        out.add(
          `persisted write lost: shard ${e.shardId} version ${fmtV(e.version)} (${msg(e)}) was acknowledged durable ` +
            `(n${e.node}#${e.incarnation} reported frontier ${fmtV(e.frontier)} at t=${e.tick}), but n${n.node}'s log at the end does not hold it`,
        );
      } else if (r.payload !== e.payload || r.sender !== e.sender) {
        out.add(`persisted write changed: shard ${e.shardId} version ${fmtV(e.version)} was acknowledged as ${msg(e)}, n${n.node}'s log holds '${r.payload}' from n${r.sender}`);
      }
    }
  }
  // Logs never contradict deliveries.
  for (const n of final) {
    for (const log of n.disk) {
      const delivered = atVersion.get(log.shardId);
      if (!delivered) continue;
      for (const r of log.records) {
        const d = delivered.get(fmtV(r.version));
        if (d && (d.payload !== r.payload || d.sender !== r.sender)) {
          out.add(`n${n.node}'s log of shard ${log.shardId} holds '${r.payload}' from n${r.sender} at version ${fmtV(r.version)}, where ${who(d)} delivered ${msg(d)}`);
        }
      }
    }
  }
  return out.lines();
}

// ---------------------------------------------------------------------------------------------------
// Accepted sends

/**
 * No silently lost send: every send accepted (send() returned ok) by an incarnation that is still running
 * at the end of a run that settled was delivered (by anyone, or carried by a state transfer), or the core
 * later reported it failed (a definite error: Ready.sendsFailed). An accepted send may be lost only if its
 * sender fails. Judged only with liveness (after the quiet phase), when everything sent must have arrived.
 */
export function checkAcceptedSends(h: History): string[] {
  const out = new Capped('lost send');
  const final = h.final;
  if (!final || !h.settled) return [];
  const alive = new Set(final.filter((n) => n.state === 'up').map((n) => `${n.node}|${n.incarnation}`));
  const arrived = new Set<string>();
  for (const d of h.deliveries) arrived.add(`${d.shardId}|${d.payload}`);
  for (const t of h.transfers) for (const e of t.entries ?? []) arrived.add(`${t.shardId}|${e.payload}`);
  const failed = new Set(h.sendFailures.map((f) => `${f.node}|${f.incarnation}|${f.shardId}|${f.payload}`));
  for (const s of h.sends) {
    if (!s.result.ok || !alive.has(`${s.node}|${s.incarnation}`)) continue;
    if (arrived.has(`${s.shardId}|${s.payload}`) || failed.has(`${s.node}|${s.incarnation}|${s.shardId}|${s.payload}`)) continue;
    out.add(`n${s.node}#${s.incarnation} accepted '${s.payload}' for shard ${s.shardId} at t=${s.tick}, is still running, and no one delivered it (no error was reported either)`);
  }
  return out.lines();
}

// ---------------------------------------------------------------------------------------------------
// Liveness

/**
 * After every fault healed: every node that is not gone for good runs, is active and not wedged, in one
 * view whose members are exactly those nodes, holding the state of its shards; every probe was accepted
 * and applied by every member of its shard; and the members of each ordered shard hold the same state.
 */
export function checkLiveness(h: History): string[] {
  const out = new Capped('liveness');
  const final = h.final;
  if (!final) return ['liveness: no final snapshot was recorded'];
  const remaining = final.filter((n) => n.state !== 'left');
  const views = new Map<number, number>();
  for (const n of remaining) {
    if (n.state === 'down') {
      out.add(`n${n.node} is down at the end (${n.downReason ?? 'unknown reason'})`);
      continue;
    }
    if (n.leaving) out.add(`n${n.node} asked to leave but is still running at the end`);
    const s = n.status;
    if (!s) {
      out.add(`n${n.node} has no status at the end`);
      continue;
    }
    const waiting = s.waiting.kind !== 'none' ? ` (waiting, ${s.waiting.kind}: ${s.waiting.message})` : '';
    if (s.mode !== 'active') out.add(`n${n.node} is still ${s.mode} at the end${waiting}`);
    else if (s.wedged) out.add(`n${n.node} is wedged in view ${s.viewId} at the end${waiting}`);
    for (const sh of s.shards) if (!sh.stateReady) out.add(`n${n.node} still lacks the state of shard ${sh.shardId} at the end${waiting}`);
    if (s.mode === 'active') views.set(n.node, s.viewId);
  }
  const ids = new Set(views.values());
  if (ids.size > 1) out.add(`nodes end in different views: ${[...views].map(([n, v]) => `n${n} in ${v}`).join(', ')}`);
  const viewId = ids.size === 1 ? [...ids][0]! : null;
  const view = viewId === null ? null : h.installs.find((i) => i.view.viewId === viewId)?.view ?? null;
  if (view) {
    const members = [...view.members].sort((a, b) => a - b).join(',');
    const running = remaining.filter((n) => n.state === 'up').map((n) => n.node).sort((a, b) => a - b).join(',');
    if (members !== running) out.add(`final view ${view.viewId} has members [${members}] but the running nodes are [${running}]`);
  }
  const problems = out.count();
  if (!h.settled) {
    if (problems === 0) out.add('the group never settled in one view, so no probe was sent');
    return out.lines();
  }
  const byNode = new Map<NodeId, FinalNode>(final.map((n) => [n.node, n]));
  for (const p of h.probes) {
    if (!p.accepted) {
      out.add(`probe '${p.payload}' from n${p.sender} in shard ${p.shardId} was never accepted by send (last refusal: ${p.lastRefusal ?? 'none'})`);
      continue;
    }
    const shard = view?.layout.shards.find((s) => s.shardId === p.shardId);
    for (const m of shard?.members ?? []) {
      const n = byNode.get(m);
      if (!n || n.state !== 'up') continue; // reported above
      const applied =
        (n.app.find((a) => a.shardId === p.shardId)?.entries ?? []).some((e) => e.payload === p.payload) ||
        h.deliveries.some((d) => d.node === m && d.incarnation === n.incarnation && d.payload === p.payload);
      if (!applied) out.add(`probe '${p.payload}' from n${p.sender} in shard ${p.shardId} was never applied by member n${m}`);
    }
  }
  // Replicas of an ordered shard hold the same state once everything is delivered.
  if (out.count() === 0 && view) {
    for (const shard of view.layout.shards) {
      if (shard.deliveryMode !== 'ordered' || shard.members.length < 2) continue;
      const states = shard.members.map((m) => ({ m, entries: byNode.get(m)?.app.find((a) => a.shardId === shard.shardId)?.entries ?? [] }));
      const ref = states[0]!;
      for (const o of states.slice(1)) {
        const diff = firstDifference(ref.entries, o.entries);
        if (diff) out.add(`replicas of shard ${shard.shardId} diverge at the end: n${ref.m} and n${o.m} differ ${diff}`);
      }
    }
  }
  return out.lines();
}

// ---------------------------------------------------------------------------------------------------
// Helpers

class Capped {
  private readonly list: string[] = [];
  private extra = 0;
  constructor(private readonly label: string) {}
  add(text: string): void {
    if (this.list.length < MAX_PER_CHECKER) this.list.push(`${this.label}: ${text}`);
    else this.extra++;
  }
  count(): number {
    return this.list.length + this.extra;
  }
  lines(): string[] {
    return this.extra > 0 ? [...this.list, `${this.label}: ... and ${this.extra} more`] : [...this.list];
  }
}

function installsByIncarnation(h: History): Map<string, History['installs']> {
  const m = new Map<string, History['installs']>();
  for (const i of h.installs) {
    const k = `${i.node}|${i.incarnation}`;
    let list = m.get(k);
    if (!list) m.set(k, (list = []));
    list.push(i);
  }
  return m;
}

function viewKey(v: View): string {
  return JSON.stringify({
    members: v.members,
    shards: v.layout.shards.map((s) => [s.shardId, s.subgroup, s.shardIndex, s.members, s.senders, s.deliveryMode, s.persistent]),
  });
}

function layoutText(v: View): string {
  return v.layout.shards.map((s) => `s${s.shardId}=[${s.members.join(',')}]`).join(' ');
}

function who(d: { node: NodeId; incarnation: number }): string {
  return `n${d.node}#${d.incarnation}`;
}

function msg(d: { payload: string; sender: NodeId }): string {
  return `'${d.payload}' from n${d.sender}`;
}

function listMsgs(keys: string[]): string {
  const shown = keys.slice(0, 4).map((k) => `'${k.split('\u0000')[0]}'`);
  return shown.join(', ') + (keys.length > 4 ? ` (+${keys.length - 4})` : '');
}

function firstDifference(a: readonly AppEntry[], b: readonly AppEntry[]): string | null {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (compareVersions(x.version, y.version) !== 0 || x.payload !== y.payload || x.sender !== y.sender) {
      return `at entry ${i}: ${fmtV(x.version)} '${x.payload}' vs ${fmtV(y.version)} '${y.payload}'`;
    }
  }
  if (a.length !== b.length) return `in length: ${a.length} vs ${b.length} entries`;
  return null;
}
