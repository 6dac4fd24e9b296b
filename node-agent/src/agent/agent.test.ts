// Three agents in one process with a custom replicated type: the library API end to end over TCP.

import test from 'ava';
import { Counter } from '../../../examples/custom-type/counter.ts';
import { loadAgentConfig } from '../config/load.ts';
import { DerechoClient } from '../client/client.ts';
import { Agent } from './agent.ts';
import { silentLogger } from './logger.ts';
import { groupConfigs, until } from './test-group.ts';

const manifest = `
apiVersion: derecho.dev/v1alpha1
kind: DerechoGroup
metadata: { name: lib-test }
spec:
  members: 3
  subgroups:
    - { name: counters, type: "custom:counter", minNodesPerShard: 3, maxNodesPerShard: 3, reservedNodeIds: [[1, 2, 3]] }
    - { name: kv, type: kv, shards: 2, minNodesPerShard: 1, maxNodesPerShard: 2, reservedNodeIds: [[1, 2], [3]] }
    - { name: feed, type: log, deliveryMode: raw, persistent: false, minNodesPerShard: 3, maxNodesPerShard: 3, reservedNodeIds: [[1, 2, 3]] }
  tls: { mode: hmac }
  timing: { tickMs: 20, heartbeatMs: 40, suspectMs: 400 }
  restart: { graceSeconds: 0.5 }
`;

test('a custom type: ordered calls return every member\'s reply, queries and versions, persistence callbacks', async (t) => {
  const { files, httpPorts } = await groupConfigs(t, manifest, 3, 'derecho-lib-');
  const agents: Agent[] = [];
  t.teardown(async () => {
    for (const a of agents) await a.close();
  });
  for (const file of files) agents.push(await Agent.create(loadAgentConfig({ file, env: {} }), { types: { 'custom:counter': Counter }, log: silentLogger }));
  await until('every agent ready', () => agents.every((a) => a.notReadyReason() === null));

  // Ordered calls from every member, concurrently: one total order, each member replies.
  const calls = agents.flatMap((a, i) => Array.from({ length: 5 }, () => a.driver.invoke('counters', 0, 'add', ['hits', i + 1])));
  const results = await Promise.all(calls);
  for (const r of results) {
    t.deepEqual(r.replies.map((x) => x.node), [1, 2, 3]);
    t.true(r.persisted);
    const totals = r.replies.map((x) => (x.outcome.ok ? (x.outcome.value as { total: number }).total : -1));
    t.true(totals.every((x) => x === totals[0]), 'every member computed the same total at this version');
  }
  const finalTotal = 5 * (1 + 2 + 3);
  for (const a of agents) t.deepEqual(await a.driver.query('counters', 0, 'get', ['hits']), { ok: true, value: finalTotal });
  // The total as of each update's version is that update's reply.
  for (const r of results.slice(0, 4)) {
    const total = (r.replies[0]!.outcome as unknown as { value: { total: number } }).value.total;
    t.deepEqual(await agents[2]!.driver.query('counters', 0, 'getAt', ['hits', r.version.viewId, r.version.seq]), { ok: true, value: total });
  }
  // The persistence frontier callback saw the last update.
  const last = results.map((r) => r.version).sort((a, b) => a.viewId - b.viewId || a.seq - b.seq).at(-1)!;
  await until('persistence callback', async () => {
    const out = await agents[0]!.driver.query('counters', 0, 'persistedThrough', []);
    return out.ok && (out.value as { seq: number }).seq >= last.seq;
  });
  // A method error is each member's error reply, not a crash.
  const bad = await agents[1]!.driver.invoke('counters', 0, 'add', ['', 1]);
  t.deepEqual(bad.replies.map((x) => x.outcome), [1, 2, 3].map(() => ({ ok: false, error: 'name must be a non-empty string', status: 400 })));

  // The typed client over HTTP, through a node that does not serve the key's shard.
  const client = new DerechoClient({ endpoints: [`http://127.0.0.1:${httpPorts[0]}`] });
  const kv = client.kv('kv');
  const keys = Array.from({ length: 8 }, (_, i) => `k${i}`);
  const writes = await Promise.all(keys.map((k) => kv.put(k, `v-${k}`)));
  t.true(writes.every((w) => w.persisted));
  t.true(new Set(writes.map((w) => w.shard)).size === 2, 'keys spread over both shards');
  const via3 = new DerechoClient({ endpoints: [`http://127.0.0.1:${httpPorts[2]}`] }).kv('kv');
  for (const k of keys) t.is((await via3.get(k))?.value, `v-${k}`);
  const first = writes[0]!;
  await kv.put('k0', 'changed');
  t.is((await kv.get('k0'))?.value, 'changed');
  t.is((await kv.get('k0', first.version))?.value, 'v-k0');
  t.true(await kv.del('k1'));
  t.false(await kv.del('k1'));
  t.is(await kv.get('k1'), null);
  t.deepEqual((await kv.list('k')).map((x) => x.key), keys.filter((k) => k !== 'k1'));
  // Raw sends: unordered, best effort, applied on receipt by every member.
  const sent = await Promise.all(agents.map((a, i) => a.driver.invoke('feed', 0, 'append', [`raw-${i}`])));
  t.true(sent.every((r) => r.replies.length === 1 && !r.persisted));
  for (const a of agents) {
    await until('raw messages applied everywhere', async () => {
      const out = await a.driver.query('feed', 0, 'length', []);
      return out.ok && out.value === 3;
    });
  }
  const custom = await client.invoke('counters', 0, 'add', ['http', 2]);
  t.is(custom.replies.length, 3);
  t.is(await client.query('counters', 0, 'get', ['http']), 2);
});

test('an agent is not ready while the view its replica installed has not been processed by the driver yet (it would answer 503 "no view installed yet")', async (t) => {
  const { files } = await groupConfigs(t, manifest, 3, 'derecho-ready-');
  const agents: Agent[] = [];
  t.teardown(async () => {
    for (const a of agents) await a.close();
  });
  for (const file of files) agents.push(await Agent.create(loadAgentConfig({ file, env: {} }), { types: { 'custom:counter': Counter }, log: silentLogger }));
  // Right after each step and tick, before the driver drains the Ready it produced on the next turn of the
  // event loop: whenever the agent says ready, the driver has the replica's view.
  const mismatches: string[] = [];
  for (const a of agents) {
    const replica = a.driver.replica;
    for (const name of ['step', 'tick'] as const) {
      const original = replica[name].bind(replica) as (...args: unknown[]) => void;
      (replica as unknown as Record<string, unknown>)[name] = (...args: unknown[]) => {
        original(...args);
        const ready = a.notReadyReason() === null;
        const viewId = a.driver.currentView()?.viewId ?? -1;
        if (ready && viewId !== replica.status().viewId) mismatches.push(`ready with the driver in view ${viewId}, the replica in ${replica.status().viewId}`);
      };
    }
  }
  await until('every agent ready', () => agents.every((a) => a.notReadyReason() === null));
  t.deepEqual(mismatches, []);
  const r = await agents[2]!.driver.invoke('counters', 0, 'add', ['x', 1]);
  t.true(r.persisted);
});
