// Linearizable and local reads (ADR 0010) through three agents in one process, over TCP.

import test from 'ava';
import { loadAgentConfig } from '../config/load.ts';
import { Agent } from './agent.ts';
import { RequestError } from './driver.ts';
import { silentLogger } from './logger.ts';
import { groupConfigs, until } from './test-group.ts';
import { DerechoClient, DerechoError } from '../client/client.ts';
import { compareVersions } from '../core/types.ts';

const manifest = `
apiVersion: derecho.dev/v1alpha1
kind: DerechoGroup
metadata: { name: reads-test }
spec:
  members: 3
  subgroups:
    - { name: kv, type: kv, shards: 1, minNodesPerShard: 3, maxNodesPerShard: 3, reservedNodeIds: [[1, 2, 3]] }
  tls: { mode: hmac }
  timing: { tickMs: 20, heartbeatMs: 40, suspectMs: 400 }
  restart: { graceSeconds: 0.5 }
`;

test('reads are linearizable by default: answered after a majority confirms the view; a member cut off from the majority refuses them, and local reads once it knows', async (t) => {
  const { files, httpPorts } = await groupConfigs(t, manifest, 3, 'derecho-reads-');
  const agents: Agent[] = [];
  t.teardown(async () => {
    for (const a of agents) await a.close();
  });
  for (const file of files) agents.push(await Agent.create(loadAgentConfig({ file, env: {} }), { log: silentLogger }));
  await until('every agent ready', () => agents.every((a) => a.notReadyReason() === null));
  const [a1, a2, a3] = agents as [Agent, Agent, Agent];

  // A write acknowledged through node 1 is seen by a read that starts after it, at every member.
  for (let i = 0; i < 20; i++) {
    await a1.driver.invoke('kv', 0, 'put', ['k', `v${i}`], 'delivered');
    for (const a of [a2, a3]) {
      const out = await a.driver.query('kv', 0, 'get', ['k']);
      t.true(out.ok && (out.value as { value: string }).value === `v${i}`, `read of write ${i} at node ${a === a2 ? 2 : 3}: ${JSON.stringify(out)}`);
    }
  }
  // Many reads at once share barrier rounds and all see the last write.
  const many = await Promise.all(Array.from({ length: 200 }, (_, i) => agents[i % 3]!.driver.query('kv', 0, 'get', ['k'])));
  t.true(many.every((o) => o.ok && (o.value as { value: string }).value === 'v19'));
  const local = await a3.driver.query('kv', 0, 'get', ['k'], 'local');
  t.true(local.ok && (local.value as { value: string }).value === 'v19', 'a local read answers from the replica');

  // Every answer says which version of the shard it reflects, at least the last write's; minVersion asks
  // for at least a version already seen (a local read behind it is refused).
  const last = await a1.driver.invoke('kv', 0, 'put', ['k', 'last'], 'delivered');
  const seen = await a2.driver.read('kv', 0, 'get', ['k']);
  t.true(compareVersions(seen.reflects, last.version) >= 0, `reflects ${JSON.stringify(seen.reflects)} >= the write's ${JSON.stringify(last.version)}`);
  const ahead = { viewId: last.version.viewId + 5, seq: 0 };
  const behind = await a3.driver.read('kv', 0, 'get', ['k'], 'local', ahead).then(() => null, (e: unknown) => e as RequestError);
  t.is(behind?.status, 503);
  t.regex(behind?.message ?? '', /below minVersion/);
  // Over HTTP with the typed client: the consistency and minVersion parameters, and `reflects`.
  const kv = new DerechoClient({ endpoints: [`http://127.0.0.1:${httpPorts[1]}`] }).kv('kv');
  const item = await kv.get('k', undefined, { consistency: 'local', minVersion: last.version });
  t.is(item?.value, 'last');
  t.true(item?.reflects !== undefined && compareVersions(item.reflects, last.version) >= 0);
  t.is((await kv.get('k'))?.value, 'last');
  const refused = await kv.get('k', undefined, { consistency: 'local', minVersion: ahead }).then(() => null, (e: unknown) => e);
  t.true(refused instanceof DerechoError, String(refused));

  // Nodes 2 and 3 fail: node 1 cannot confirm its view with a majority. A linearizable read waits, and
  // fails as soon as node 1 knows it is in a minority; a local read is refused from then on too.
  await a2.close();
  await a3.close();
  const pending = a1.driver.query('kv', 0, 'get', ['k']).then(() => 'answered', (e: unknown) => e);
  const outcome = await pending;
  t.true(outcome instanceof RequestError, `the read failed (${String(outcome)})`);
  t.is((outcome as RequestError).status, 503);
  t.regex((outcome as RequestError).message, /minority/);
  const localErr = await a1.driver.query('kv', 0, 'get', ['k'], 'local').then(() => null, (e: unknown) => e as RequestError);
  t.is(localErr?.status, 503);
  t.regex(localErr?.message ?? '', /minority/);
});
