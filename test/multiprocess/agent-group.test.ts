// A 3-member group of real agent processes on loopback: formation, total order of a log subgroup under
// concurrent appends from every member, routing of kv requests to the key's shard, and the
// operational endpoints (/metrics, /readyz, /healthz, /v1/subgroups).

import test from 'ava';
import { shardForKey } from '../../node-agent/src/objects/kv.ts';
import { Cluster, keyInShard, sameNumbers, summary, waitUntil } from './harness.ts';
import type { AgentStatus, InvokeReply, LogEntry } from './harness.ts';

test('a 3-member group forms, orders concurrent appends identically everywhere, routes kv requests and serves its endpoints', async (t) => {
  t.timeout(60_000);
  const cluster = await Cluster.create(t, { start: [1, 2, 3] });
  const ids = cluster.ids;

  // ---- Formation: every member active and ready in the same view, with the same layout.
  const formed = await cluster.waitForView(ids, ids, 30_000);
  t.log(`formed: ${formed.map((s) => `n${s.nodeId} ${summary(s)}`).join('\n')}`);
  for (const s of formed) {
    t.is(s.start, 'bootstrap', `node ${s.nodeId} is a founding member`);
    t.deepEqual([...s.members].sort(), [1, 2, 3]);
    t.deepEqual(s.transport.connectedPeers.slice().sort(), ids.filter((id) => id !== s.nodeId), `node ${s.nodeId} connected to the others`);
  }
  const layout = formed[0]!.layout.map((l) => ({ subgroup: l.subgroup, shardIndex: l.shardIndex, members: [...l.members].sort() }));
  t.deepEqual(layout, [
    { subgroup: 'kv', shardIndex: 0, members: [1, 2] },
    { subgroup: 'kv', shardIndex: 1, members: [3] },
    { subgroup: 'events', shardIndex: 0, members: [1, 2, 3] },
  ]);
  // Each member serves exactly the shards the layout gives it, with their state.
  for (const s of formed) {
    const served = s.shards.map((x) => `${x.subgroup}/${x.shardIndex}`).sort();
    const expected = formed[0]!.layout.filter((l) => l.members.includes(s.nodeId)).map((l) => `${l.subgroup}/${l.shardIndex}`).sort();
    t.deepEqual(served, expected, `shards served by node ${s.nodeId}`);
    t.true(s.shards.every((x) => x.stateReady));
  }
  const subgroups = await cluster.request<{ viewId: number; subgroups: { name: string; shards: number[][] }[] }>(1, 'GET', '/v1/subgroups');
  t.is(subgroups.status, 200);
  t.deepEqual(subgroups.body.subgroups.map((s) => [s.name, s.shards.map((m) => [...m].sort())]), [['kv', [[1, 2], [3]]], ['events', [[1, 2, 3]]]]);

  // ---- Concurrent appends to `events` from every member, each through its own endpoint.
  const perNode = 30;
  const appended = new Map<string, InvokeReply>();
  const t0 = Date.now();
  await Promise.all(ids.flatMap((id) => Array.from({ length: perNode }, async (_, i) => {
    const entry = `n${id}-${i}`;
    const r = await cluster.append(id, entry);
    if (r.status !== 200) throw new Error(`append ${entry} through node ${id}: HTTP ${r.status} ${r.text}`);
    appended.set(entry, r.body);
  })));
  t.log(`${ids.length * perNode} concurrent appends acknowledged in ${Date.now() - t0} ms`);
  t.is(appended.size, ids.length * perNode);
  for (const [entry, r] of appended) {
    t.true(r.persisted, `append ${entry} persisted`);
    t.deepEqual(r.replies.map((x) => x.node).sort(), [1, 2, 3], `append ${entry} applied by every member`);
  }

  // Every member's log: the same entries, in the same order, at the same versions.
  const logs = new Map<number, LogEntry[]>();
  for (const id of ids) logs.set(id, await cluster.readLog(id));
  const reference = logs.get(1)!;
  t.is(reference.length, ids.length * perNode);
  t.deepEqual(reference.map((e) => e.index), reference.map((_, i) => i));
  t.deepEqual(reference.map((e) => String(e.entry)).sort(), [...appended.keys()].sort(), 'each append appears exactly once');
  for (const id of ids) {
    t.deepEqual(logs.get(id)!.map((e) => [e.entry, e.version.viewId, e.version.seq]), reference.map((e) => [e.entry, e.version.viewId, e.version.seq]), `node ${id} delivered the same sequence as node 1`);
  }
  // The version each append was acknowledged with is where it sits in the log; versions increase.
  for (const e of reference) {
    t.deepEqual(appended.get(e.entry as string)!.version, e.version, `acknowledged version of ${String(e.entry)}`);
  }
  for (let i = 1; i < reference.length; i++) {
    const a = reference[i - 1]!.version;
    const b = reference[i]!.version;
    t.true(a.viewId < b.viewId || (a.viewId === b.viewId && a.seq < b.seq), `versions increase at index ${i}`);
  }
  // The events shard's delivered frontier comes to agree on every member.
  let frontiers: string[] = [];
  const agreed = await waitUntil('events delivered frontiers to agree', async () => {
    frontiers = (await cluster.statuses()).map((s) => JSON.stringify(s!.shards.find((x) => x.subgroup === 'events')!.delivered));
    return frontiers.every((f) => f === frontiers[0]);
  }, 5_000).then(() => true, () => false);
  t.true(agreed, `events delivered frontiers ${frontiers.join(' ')}`);

  // ---- kv: a key of shard 1 (served by node 3 only) written through node 1, which is not in that shard.
  const key1 = keyInShard('routed', 1);
  t.is(shardForKey(key1, 2), 1);
  const put1 = await cluster.put(1, key1, 'written through node 1');
  t.is(put1.status, 200, put1.text);
  t.is(put1.body.shard, 1);
  t.true(put1.body.persisted);
  t.deepEqual(put1.body.replies.map((r) => r.node), [3], 'applied by the members of shard 1');
  // And a key of shard 0 (nodes 1 and 2) written through node 3.
  const key0 = keyInShard('routed', 0);
  const put0 = await cluster.put(3, key0, 'written through node 3');
  t.is(put0.status, 200, put0.text);
  t.is(put0.body.shard, 0);
  t.true(put0.body.persisted);
  t.deepEqual(put0.body.replies.map((r) => r.node).sort(), [1, 2]);
  for (const id of ids) {
    const g1 = await cluster.get(id, key1);
    t.is(g1.status, 200, `GET ${key1} through node ${id}: ${g1.text}`);
    t.is(g1.body.value, 'written through node 1');
    t.deepEqual(g1.body.version, put1.body.version);
    const g0 = await cluster.get(id, key0);
    t.is(g0.status, 200, `GET ${key0} through node ${id}: ${g0.text}`);
    t.is(g0.body.value, 'written through node 3');
    t.deepEqual(g0.body.version, put0.body.version);
  }
  const missing = await cluster.get(2, 'never-written');
  t.is(missing.status, 404);
  const list = await cluster.request<{ items: { key: string }[] }>(2, 'GET', '/v1/kv/kv?prefix=routed');
  t.is(list.status, 200);
  t.deepEqual(list.body.items.map((i) => i.key), [key0, key1].sort(), 'listing spans both shards');

  // ---- Operational endpoints.
  for (const id of ids) {
    const metrics = await cluster.request(id, 'GET', '/metrics');
    t.is(metrics.status, 200);
    t.regex(metrics.contentType, /^text\/plain/);
    t.regex(metrics.text, /^# HELP derecho_messages_delivered_total /m);
    t.regex(metrics.text, /^# TYPE derecho_messages_delivered_total counter$/m);
    const delivered = [...metrics.text.matchAll(/^derecho_messages_delivered_total\{([^}]*)\} (\d+)$/gm)];
    t.true(delivered.length > 0, `node ${id} exports delivered counts`);
    const total = delivered.reduce((sum, m) => sum + Number(m[2]), 0);
    t.true(total >= ids.length * perNode, `node ${id} counted ${total} deliveries`);
    // Gauges read from the agent are fresh in this very scrape (the first one of this node).
    t.regex(metrics.text, new RegExp(`^derecho_view_id\\{[^}]*\\} ${formed[0]!.viewId}$`, 'm'));
    t.regex(metrics.text, /^derecho_view_members\{[^}]*\} 3$/m);
    // (a duplicate connection still in its retire grace counts too)
    t.true(Number(/^derecho_peer_connections\{[^}]*\} (\d+)$/m.exec(metrics.text)?.[1]) >= 2, `node ${id} peer connections gauge`);
    const ready = await cluster.request(id, 'GET', '/readyz');
    t.is(ready.status, 200, ready.text);
    const healthy = await cluster.request(id, 'GET', '/healthz');
    t.is(healthy.status, 200, healthy.text);
  }
  const unknown = await cluster.request(1, 'GET', '/nope');
  t.is(unknown.status, 404);
  // A subgroup that does not exist, or is not a kv: the client's mistake (4xx, naming it), not a server error.
  const noSubgroup = await cluster.put(1, 'k', 'v', 'nosuch');
  t.is(noSubgroup.status, 404, noSubgroup.text);
  t.regex(noSubgroup.text, /no subgroup \\"nosuch\\" \(subgroups: kv, events\)/);
  t.is((await cluster.get(2, 'k', 'nosuch')).status, 404);
  const notKv = await cluster.put(1, 'k', 'v', 'events');
  t.is(notKv.status, 400, notKv.text);
  t.regex(notKv.text, /subgroup events has type log, not kv/);

  // Nothing changed the view meanwhile, and no agent exited.
  const final = (await cluster.statuses()) as AgentStatus[];
  t.true(final.every((s) => s.viewId === formed[0]!.viewId && sameNumbers(s.members, ids)), final.map(summary).join('\n'));
  t.deepEqual(cluster.unexpectedExits(), []);
});
