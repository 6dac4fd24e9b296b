// Restart after total failure: the planner that turns the reports of returning nodes into the
// restart decision (Derecho's restart quorum, as this project implements it). Pure and I/O-free.
//
// Rules:
//  1. The last view is the reported `lastView` with the highest id (blank reports, from nodes that never
//     installed a view, do not count here) — unless a returning member accepted a view change to a later
//     view it never installed: that view may have been committed, so the accepted value with the highest
//     ballot is adopted as the last view (as a Paxos proposer adopts an accepted value), its ragged trim
//     bounding the logs of the view it ended. Two reports naming the same view id
//     with different members or layout contradict each other (so do two different ragged trims for one
//     view id): the plan is not ready and says which nodes disagree. One report per node id counts (the
//     first; later duplicates are ignored).
//  2. Quorum: (a) a majority of the last view's members returned with their saved state (a node back
//     with nothing saved counts only for a view that names its disk, see View.memberDisks); (b) every (non-empty) shard of the last
//     view has at least one returning former member holding its state (for a persistent shard, one
//     that holds every acknowledged update: see `holds` and `covered` below); (c) the restart view is adequate. Its members are
//     every returning node: the last view's members in rank order, then the others by ascending id; its
//     layout is `allocate(policy, lastView.layout, members)`.
//  3. The restart view id is one above every view id ever seen (last view, highestViewIdSeen, trims).
//  4. A log tail is valid up to the ragged trim of the view it lies in (if that trim is known). Per
//     persistent shard of the new layout, the source is the returning node with the greatest valid tail
//     (ties: a former member of the shard in the last view, then the lowest rank in the restart view),
//     and every log is cut to that tail. Volatile and raw shards restart empty.
import { allocate } from './allocation.ts';
import { lastSeqInside } from './stability.ts';
import { compareVersions, VERSION_NONE } from './types.ts';
import type { BrokenRule, GroupPolicy, NodeId, RestartDecision, RestartReport, SavedTrim, ShardLayout, Version, View, ViewChangeValue } from './types.ts';

export type RestartPlan =
  | { ready: true; decision: RestartDecision; lastView: View; returned: NodeId[] }
  | { ready: false; lastView: View | null; missing: RestartMissing; message: string };

export interface RestartMissing {
  /**
   * A view of which a majority has not returned with its saved state (the newest installed view, or one
   * adopted after it), how many did and are needed, and who could supply them.
   */
  majority: { have: number; need: number; absent: NodeId[]; viewId: number } | null;
  /** Shards of the last view none of whose former members returned. */
  shards: { shardId: number; subgroup: string; shardIndex: number; formerMembers: NodeId[] }[];
  /** The restart view would be inadequate (allocator's reason), or null. */
  inadequate: string | null;
  /** Reports that contradict each other (two different views with the same id), or null. */
  conflict: string | null;
}

/**
 * Plans the restart from the reports received so far. `ready: false` explains what is missing;
 * `returned` (ready plans) lists the reporting node ids in ascending order.
 * The plan does not depend on the order of the reports (except which of two reports of one node counts).
 */
export function planRestart(policy: GroupPolicy, reports: RestartReport[], brokenRule?: BrokenRule): RestartPlan {
  const unique = uniqueReports(reports);
  if (unique.length === 0) {
    return {
      ready: false,
      lastView: null,
      missing: { majority: null, shards: [], inadequate: null, conflict: null },
      message: 'restart quorum not met: no restart reports received yet',
    };
  }

  // Rule 1: the last view, and contradictions between reports. Blank reports (nodes that never installed
  // a view) say nothing about it.
  const saving = unique.filter((r) => r.blank !== true);
  if (saving.length === 0) {
    return {
      ready: false,
      lastView: null,
      missing: { majority: null, shards: [], inadequate: null, conflict: null },
      message: `restart quorum not met: no returning node has saved a view yet (nodes ${unique.map((r) => r.nodeId).join(', ')} have nothing saved)`,
    };
  }
  const conflicts: string[] = [];
  const views = groupVariants(
    saving.map((r) => ({ key: r.lastView.viewId, value: r.lastView, nodeId: r.nodeId })),
    sameView,
  );
  const trimVariants = groupVariants(
    saving.flatMap((r) => r.trims.map((t) => ({ key: t.viewId, value: t, nodeId: r.nodeId }))),
    sameTrim,
  );
  // Installed views, and the recent views a report carries (installed, or decided before a restart view).
  const allViews = groupVariants(
    saving.flatMap((r) => [r.lastView, ...(r.recentViews ?? [])].map((v) => ({ key: v.viewId, value: v, nodeId: r.nodeId }))),
    sameView,
  );
  for (const [viewId, variants] of allViews) {
    if (variants.length > 1) conflicts.push(`view ${viewId} differs between reports: ${variantNodes(variants)}`);
  }
  for (const [viewId, variants] of trimVariants) {
    if (variants.length > 1) conflicts.push(`ragged trim of view ${viewId} differs between reports: ${variantNodes(variants)}`);
  }
  // The last view: the newest one a returning node installed (L), then, view after view, a view change
  // some returning member accepted out of it and nobody returning installed. Such a value may have been
  // committed (and writes acknowledged in its view by members that are not back yet), so the restart
  // adopts it as a Paxos proposer adopts the accepted value with the highest ballot. The ragged trim an
  // adopted view change names also bounds the logs of the view it ended. (Restart plans accepted in an
  // earlier attempt of the same restart are not views to follow: the restart leader re-proposes the one
  // with the highest ballot unchanged, see Replica.progressRestart.)
  const installedMax = Math.max(...views.keys());
  const installedLast = views.get(installedMax)![0]!.value;
  let lastView = installedLast;
  const adopted: View[] = [];
  const acceptedValues = new Map<number, ViewChangeValue>();
  for (let guard = 0; guard <= unique.length; guard++) {
    const tip = lastView.viewId;
    let best: { value: ViewChangeValue; ballot: number; nodes: NodeId[] } | null = null;
    for (const r of saving) {
      const a = r.acceptedChange;
      if (!a || a.value.fromViewId !== tip || a.value.next.viewId <= tip) continue;
      if (!best || a.ballot > best.ballot) best = { value: a.value, ballot: a.ballot, nodes: [r.nodeId] };
      else if (a.ballot === best.ballot) {
        if (deepEqual(a.value, best.value)) best.nodes.push(r.nodeId);
        else conflicts.push(`the view change out of view ${tip} accepted under ballot ${a.ballot} differs between reports: ${nodesPhrase(best.nodes)} vs node ${r.nodeId}`);
      }
    }
    if (best === null) break;
    adopted.push(best.value.next);
    acceptedValues.set(best.value.next.viewId, best.value);
    lastView = best.value.next;
  }

  if (conflicts.length > 0) {
    const conflict = `conflicting restart reports: ${conflicts.join('; ')}`;
    return {
      ready: false,
      lastView,
      missing: { majority: null, shards: [], inadequate: null, conflict },
      message: `restart blocked for view ${lastView.viewId}: ${conflict}`,
    };
  }

  // Rule 2: the quorum. Deciding what follows a view takes a majority of that view: of the newest view a
  // returning node installed, and of every view adopted after it (its successor too may have been
  // decided). Only nodes that saved something count: a node back with an empty disk (it never installed
  // a view, or its disk was wiped) knows nothing of the decisions it may have taken part in — unless the
  // view names the disk it came back with (View.memberDisks): then that disk is the one it joined or
  // restarted with, it never saved a view, so it never installed this one and accepted nothing in it (a
  // joiner that failed before installing the view that admitted it). A wiped disk has a new id.
  const returned = new Set(unique.map((r) => r.nodeId));
  const saved = new Set(saving.map((r) => r.nodeId));
  // A blank report counts for a view only if the view names the very disk it came back with: that disk
  // never saved a view, so the node never installed this one and accepted nothing in it. A wiped disk has
  // a new id (or none), and may have lost whatever the node accepted.
  const countsFor = (qv: View, r: RestartReport): boolean => {
    if (brokenRule === 'wipedNodeCounts' || saved.has(r.nodeId)) return true;
    const disk = r.diskId ?? 0;
    return disk > 0 && qv.memberDisks?.[qv.members.indexOf(r.nodeId)] === disk;
  };
  const quorumViews = brokenRule === 'restartQuorumOfAdoptedViewOnly' ? [lastView] : [installedLast, ...adopted];
  const lastMembers = dedupe(lastView.members);
  let majority: RestartMissing['majority'] = null;
  let majorityView = lastView;
  for (const qv of quorumViews) {
    const members = dedupe(qv.members);
    const counted = new Set(unique.filter((r) => countsFor(qv, r)).map((r) => r.nodeId));
    const have = members.filter((m) => counted.has(m)).length;
    const need = brokenRule === 'restartQuorumFloorHalf' ? Math.floor(members.length / 2) : Math.floor(members.length / 2) + 1;
    if (have < need) {
      majority = { have, need, absent: members.filter((m) => !counted.has(m)), viewId: qv.viewId };
      majorityView = qv;
      break;
    }
  }

  // (The rule below is applied along the chain of views: see `holds`.)
  // A returning member counts for a persistent shard only if its log holds every acknowledged (persisted
  // by all) update of the shard, and it was not still waiting for a state transfer when the group failed.
  // That is the case if it installed the last view W itself; or if it saved W-1 and served the shard in
  // both W-1 and W: nothing could be acknowledged in W without it, and what was acknowledged in W-1 it
  // persisted itself. (It may lack unacknowledged ragged-edge deliveries; a longer log wins as source.)
  // A log older than that may miss acknowledged updates made while it was away.
  const mergedTrims = new Map<number, SavedTrim>();
  for (const [viewId, variants] of trimVariants) mergedTrims.set(viewId, variants[0]!.value);
  // The trim of an accepted value whose view is the last view (installed or adopted) was decided with it.
  for (const r of saving) {
    const a = r.acceptedChange;
    if (a && sameView(a.value.next, lastView) && !acceptedValues.has(lastView.viewId)) acceptedValues.set(lastView.viewId, a.value);
  }
  for (const v of acceptedValues.values()) {
    if (mergedTrims.has(v.fromViewId)) continue;
    mergedTrims.set(v.fromViewId, {
      viewId: v.fromViewId,
      trims: v.trims,
      lastVersions: v.trims.map((t) => ({ viewId: v.fromViewId, seq: lastSeqInside(t) })),
    });
  }
  const byNode = new Map(unique.map((r) => [r.nodeId, r] as const));
  // Views the planner knows, to follow the chain of views back from the last one: installed views the
  // reports carry (last and recent ones, and the views decided before a restart view that its installers
  // kept), and accepted (possibly committed) view changes, the highest ballot per view id.
  const knownViews = new Map<number, View>();
  for (const [viewId, variants] of allViews) knownViews.set(viewId, variants[0]!.value);
  for (const v of adopted) knownViews.set(v.viewId, v);
  for (const r of saving) {
    const a = r.acceptedChange;
    if (a && !knownViews.has(a.value.next.viewId)) knownViews.set(a.value.next.viewId, a.value.next);
  }
  // Whether `node` holds every acknowledged update of `shard` up to the end of `anchor` (a view on the
  // chain back from the last view).
  const holds = (node: NodeId, shard: ShardLayout, anchor: View): boolean => {
    const r = byNode.get(node);
    if (!r) return false;
    // A volatile shard restarts empty: any returning former member will do, even one with nothing saved.
    if (!shard.persistent || shard.deliveryMode !== 'ordered') return true;
    if (r.blank === true) return false;
    // An "incomplete" mark stays until the node holds the shard's whole state again (a state transfer
    // completed, or a restart made its own log the shard's state), even if it left the shard meanwhile.
    if ((r.incompleteShards ?? []).includes(shard.shardId)) return false;
    const saved = r.lastView.viewId;
    if (saved > anchor.viewId) {
      // It installed a view after `anchor`: it holds the shard through the end of `anchor` if it served
      // it there and was a member of every view of the chain from there to the view it saved (it took
      // part in each view's end, persisting the ragged-edge deliveries, and was never removed and
      // re-admitted with a log that had missed some).
      if (anchor.layout.shards[shard.shardId]?.members.includes(node) !== true) return false;
      let v = lastView;
      let reached = false;
      for (let steps = 0; steps <= knownViews.size && v.viewId > anchor.viewId; steps++) {
        if (v.viewId === saved) reached = sameView(v, r.lastView);
        if (v.viewId <= saved && !v.members.includes(node)) return false;
        const prevId = v.previousViewId ?? v.viewId - 1;
        const prev = knownViews.get(prevId);
        if (prev === undefined || prev.viewId >= v.viewId) return false;
        v = prev;
      }
      return reached && v.viewId === anchor.viewId;
    }
    // Follow the chain of views back from the anchor (each view names the one it followed; restart
    // views skip ids) to the view this node saved. In every view of the chain after it, the node served
    // the shard without installing that view: nothing could be acknowledged there without it. What was
    // acknowledged in its own last view, it persisted itself.
    let v = anchor;
    for (let steps = 0; steps <= knownViews.size; steps++) {
      if (v.viewId === saved) return steps === 0 || r.lastView.layout.shards[shard.shardId]?.members.includes(node) === true;
      if (v.viewId < saved || v.layout.shards[shard.shardId]?.members.includes(node) !== true) return false;
      const prevId = v.previousViewId ?? v.viewId - 1;
      const prev = prevId === saved ? r.lastView : knownViews.get(prevId);
      if (prev === undefined || prev.viewId >= v.viewId) return false;
      v = prev;
    }
    return false;
  };
  // Whether a returning node holds the shard's acknowledged state. If no member of the shard in a view
  // holds it, but one of them returned showing that it persisted nothing of the shard in that view (it
  // saved that very view while still waiting for the shard's state, or it never installed the view),
  // nothing of the shard was acknowledged there (an update is acknowledged once every member of the
  // shard persisted it): the shard's acknowledged state is the one it had at the end of the view
  // before, and the holders of that count. (Seed 646: the group failed while a new member was still
  // receiving the state of a shard it alone served; the former holder had moved to another shard.)
  const covered = (shard: ShardLayout): boolean => {
    let anchor = lastView;
    for (let steps = 0; steps <= knownViews.size; steps++) {
      const members = anchor.layout.shards[shard.shardId]?.members ?? [];
      if (members.some((m) => holds(m, shard, anchor))) return true;
      if (!shard.persistent || shard.deliveryMode !== 'ordered') return false;
      const at = anchor;
      const idle = members.some((m) => {
        const r = byNode.get(m);
        if (r === undefined || r.blank === true) return false;
        if (r.lastView.viewId < at.viewId) return true; // it never installed the view
        return sameView(r.lastView, at) && (r.incompleteShards ?? []).includes(shard.shardId);
      });
      if (!idle) return false;
      const prev = knownViews.get(anchor.previousViewId ?? anchor.viewId - 1);
      if (prev === undefined || prev.viewId >= anchor.viewId) return false;
      anchor = prev;
    }
    return false;
  };
  const shards = sortedShards(lastView.layout.shards)
    .filter((s) => s.members.length > 0 && !covered(s))
    .map((s) => ({ shardId: s.shardId, subgroup: s.subgroup, shardIndex: s.shardIndex, formerMembers: [...s.members] }));

  const members = [
    ...lastMembers.filter((m) => returned.has(m)),
    ...[...returned].filter((n) => !lastMembers.includes(n)).sort((a, b) => a - b),
  ];
  const allocation = allocate(policy, lastView.layout, members);
  const inadequate = allocation.adequate ? null : allocation.reason;

  if (!allocation.adequate || majority !== null || shards.length > 0) {
    const parts: string[] = [];
    if (majority !== null) {
      const which = majorityView === lastView ? '' : ` of view ${majorityView.viewId} (the restart adopts view ${lastView.viewId}, which followed it)`;
      parts.push(
        `${majority.have} of ${dedupe(majorityView.members).length} members${which} returned with their saved state (need ${majority.need}; waiting for ${nodesPhrase(majority.absent)})`,
      );
    }
    for (const s of shards) {
      const layout = lastView.layout.shards.find((x) => x.shardId === s.shardId)!;
      const what = layout.persistent && layout.deliveryMode === 'ordered' ? 'no returning member holding its state' : 'no returning member';
      parts.push(`shard ${s.subgroup}/${s.shardIndex} has ${what} (former members ${s.formerMembers.join(', ')})`);
    }
    if (inadequate !== null) parts.push(`the restart view would be inadequate: ${inadequate}`);
    return {
      ready: false,
      lastView,
      missing: { majority, shards, inadequate, conflict: null },
      message: `restart quorum not met for view ${lastView.viewId}: ${parts.join('; ')}`,
    };
  }

  // Rule 3: a view id never used before.
  let highest = lastView.viewId;
  for (const r of unique) {
    highest = Math.max(highest, r.highestViewIdSeen);
    for (const t of r.trims) highest = Math.max(highest, t.viewId);
  }
  // The disk each member restarts with (0 if it did not say).
  const memberDisks = members.map((m) => byNode.get(m)?.diskId ?? 0);
  const view: View = {
    viewId: highest + 1, members, layout: allocation.layout, previousViewId: lastView.viewId,
    ...(memberDisks.some((d) => d > 0) ? { memberDisks } : {}),
  };

  // Rule 4: sources and truncation points.
  const trims = mergedTrims;
  const lastShards = new Map(lastView.layout.shards.map((s) => [s.shardId, s] as const));
  const rank = new Map(members.map((m, i) => [m, i] as const));
  const decisionShards = sortedShards(allocation.layout.shards).map((s) => {
    if (!s.persistent || s.deliveryMode !== 'ordered') {
      return { shardId: s.shardId, source: null, truncateTo: VERSION_NONE };
    }
    const former = lastShards.get(s.shardId)?.members ?? [];
    let best: { nodeId: NodeId; tail: Version; former: boolean; rank: number } | null = null;
    for (const r of unique) {
      const entry = r.logTails.find((t) => t.shardId === s.shardId);
      if (entry === undefined || (r.incompleteShards ?? []).includes(s.shardId)) continue;
      const candidate = {
        nodeId: r.nodeId,
        tail: validTail(entry.version, s.shardId, trims),
        former: former.includes(r.nodeId),
        rank: rank.get(r.nodeId)!,
      };
      if (best === null || betterSource(candidate, best)) best = candidate;
    }
    return best === null
      ? { shardId: s.shardId, source: null, truncateTo: VERSION_NONE }
      : { shardId: s.shardId, source: best.nodeId, truncateTo: best.tail };
  });

  const decision: RestartDecision = {
    lastViewId: lastView.viewId,
    ...(adopted.length > 0 ? { adopted } : {}),
    view,
    shards: decisionShards,
    trims: [...trims.values()].sort((a, b) => a.viewId - b.viewId),
  };
  return { ready: true, decision, lastView, returned: [...returned].sort((a, b) => a - b) };
}

/**
 * Where a node cuts its own log of `shardId` under `decision`, given its log's newest version: the minimum
 * of its tail, the ragged trim of its tail's view (if the decision knows it) and the shard's truncateTo.
 * `needsSuffixFrom` is the source to fetch the rest from when the kept tail is older than truncateTo.
 * A shard absent from the decision (or volatile) keeps nothing and fetches nothing.
 */
export function truncationFor(
  decision: RestartDecision,
  nodeTail: Version,
  shardId: number,
): { keepThrough: Version; needsSuffixFrom: NodeId | null } {
  const trims = new Map<number, SavedTrim>();
  for (const t of decision.trims) if (!trims.has(t.viewId)) trims.set(t.viewId, t);
  const entry = decision.shards.find((s) => s.shardId === shardId);
  const truncateTo = entry?.truncateTo ?? VERSION_NONE;
  const valid = validTail(nodeTail, shardId, trims);
  const keepThrough = compareVersions(valid, truncateTo) <= 0 ? valid : truncateTo;
  const source = entry?.source ?? null;
  const needsSuffixFrom = source !== null && compareVersions(keepThrough, truncateTo) < 0 ? source : null;
  return { keepThrough, needsSuffixFrom };
}

/**
 * The part of a log ending at `tail` that is valid: a log tail lying in view v is valid up to the ragged
 * trim of v, when known. Repeated while the cut lands in another view with a known trim (only malformed
 * trims, whose last version lies outside their own view, do that); each step strictly decreases.
 */
function validTail(tail: Version, shardId: number, trims: ReadonlyMap<number, SavedTrim>): Version {
  let v = tail;
  for (;;) {
    const cap = trims.get(v.viewId)?.lastVersions[shardId];
    if (cap === undefined || compareVersions(cap, v) >= 0) return v;
    v = cap;
  }
}

function betterSource(
  a: { nodeId: NodeId; tail: Version; former: boolean; rank: number },
  b: { nodeId: NodeId; tail: Version; former: boolean; rank: number },
): boolean {
  const c = compareVersions(a.tail, b.tail);
  if (c !== 0) return c > 0;
  if (a.former !== b.former) return a.former;
  return a.rank < b.rank;
}

/** First report of each node id, ordered by node id. */
function uniqueReports(reports: RestartReport[]): RestartReport[] {
  const seen = new Map<NodeId, RestartReport>();
  for (const r of reports) if (!seen.has(r.nodeId)) seen.set(r.nodeId, r);
  return [...seen.values()].sort((a, b) => a.nodeId - b.nodeId);
}

interface Variant<T> {
  value: T;
  nodes: NodeId[];
}

/** Groups values by key, then into distinct variants (each with the nodes that hold it, ascending). */
function groupVariants<T>(
  items: { key: number; value: T; nodeId: NodeId }[],
  same: (a: T, b: T) => boolean,
): Map<number, Variant<T>[]> {
  const byKey = new Map<number, Variant<T>[]>();
  for (const item of items) {
    const variants = byKey.get(item.key) ?? [];
    byKey.set(item.key, variants);
    const match = variants.find((v) => same(v.value, item.value));
    if (match === undefined) variants.push({ value: item.value, nodes: [item.nodeId] });
    else if (!match.nodes.includes(item.nodeId)) match.nodes.push(item.nodeId);
  }
  return new Map([...byKey.entries()].sort((a, b) => a[0] - b[0]));
}

function variantNodes<T>(variants: Variant<T>[]): string {
  return variants.map((v) => nodesPhrase(v.nodes)).join(' vs ');
}

function nodesPhrase(nodes: NodeId[]): string {
  return nodes.length === 1 ? `node ${nodes[0]}` : `nodes ${nodes.join(', ')}`;
}

function sortedShards(shards: ShardLayout[]): ShardLayout[] {
  return [...shards].sort((a, b) => a.shardId - b.shardId);
}

function dedupe(ids: NodeId[]): NodeId[] {
  return ids.filter((id, i) => ids.indexOf(id) === i);
}

function sameView(a: View, b: View): boolean {
  return a.viewId === b.viewId && deepEqual(a.members, b.members) && deepEqual(a.layout, b.layout);
}

function sameTrim(a: SavedTrim, b: SavedTrim): boolean {
  return deepEqual(a, b);
}

/** Structural equality of plain data (arrays, objects, primitives); undefined-valued keys are ignored. */
function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  }
  const ra = a as Record<string, unknown>;
  const rb = b as Record<string, unknown>;
  const ka = Object.keys(ra).filter((k) => ra[k] !== undefined).sort();
  const kb = Object.keys(rb).filter((k) => rb[k] !== undefined).sort();
  return deepEqual(ka, kb) && ka.every((k) => deepEqual(ra[k], rb[k]));
}

/**
 * The restart a plan belongs to, named by the newest view a returning node had installed when it was
 * made (the view its chain of adopted views starts from). Two plans of one restart decide the same
 * thing; the restart leader re-proposes an accepted one instead of making another.
 */
export function planStart(plan: RestartDecision): number {
  const first = plan.adopted?.[0];
  return first ? (first.previousViewId ?? first.viewId - 1) : plan.lastViewId;
}
