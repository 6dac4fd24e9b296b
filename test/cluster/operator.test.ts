// The operator end to end against a real kube-apiserver (control-plane.ts) with a mock kubelet
// (kubelet.ts) that runs every member pod as a real agent process on loopback:
//
//  - two operator instances with leader election on one Lease: the first leads, the second (running as a
//    user with only the RBAC rules below, i.e. what the Helm chart must grant) keeps its caches warm and
//    writes nothing until the first stops and releases the Lease;
//  - a 3-member DerechoGroup -> pods, volumes, services, ConfigMap, Secret, PDB, NetworkPolicy (owner
//    references) -> the agents form the group -> the status shows Ready, the view, the shard table and the
//    frontiers; a kv put through one agent is read through the others;
//  - SIGKILL of a member -> a view without it in the status within seconds, Ready again after its restart;
//  - a scale-down that would leave a shard below its minimum -> refused with a condition and an Event;
//  - every pod deleted (total failure) -> pods recreated on their volumes, RestartQuorumPending naming the
//    missing member and shard while one is held back, then Ready with the data intact;
//  - operator/src/main.ts as a process: flags, /healthz, /readyz, /metrics, the Lease, SIGTERM.
//
// The group is examples/kv-group.yaml with faster timing and one change to its layout so that a scale-down
// the API server accepts (CEL) is still one the operator must refuse: kv shard 1 has no reserved node, so
// it takes the only pool node (3); with 2 members no node is left for it.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { CoordinationV1Api, CoreV1Api, CustomObjectsApi, KubernetesObjectApi } from '@kubernetes/client-node';
import type { CoreV1Event, KubernetesObject, V1Pod } from '@kubernetes/client-node';
import YAML from 'yaml';
import { createLogger, silentLogger } from '../../node-agent/src/agent/logger.ts';
import { exampleManifest } from '../../operator/src/crd-cases.ts';
import { KubeRest } from '../../operator/src/controller.ts';
import { CRD_FILE } from '../../operator/src/crd.ts';
import { LeaderElector } from '../../operator/src/leader.ts';
import { CRD_GROUP, CRD_NAME, CRD_PLURAL, CRD_VERSION, FINALIZER } from '../../operator/src/kube.ts';
import { runOperator } from '../../operator/src/main.ts';
import type { OperatorHandle } from '../../operator/src/main.ts';
import { metricValue } from '../../operator/src/metrics.ts';
import type { Condition, DerechoGroupStatus } from '../../operator/src/status.ts';
import { REPO_ROOT, freePorts, keyInShard } from '../multiprocess/harness.ts';
import { ControlPlane, statusCode, waitFor } from './control-plane.ts';
import { MockKubelet, agentCall } from './kubelet.ts';
import { ClusterToolsUnavailable, ensureClusterTools } from './tools.ts';

const GROUP = 'kv-demo';
const OPERATOR_USER = 'derecho-operator';

/**
 * The permissions the operator needs (the Helm chart's ClusterRole and the Role for its Lease): operator B
 * runs with exactly these, and takes over the group in the test below.
 */
export const OPERATOR_CLUSTER_RULES = [
  { apiGroups: [CRD_GROUP], resources: [CRD_PLURAL], verbs: ['list', 'watch', 'patch'] },
  { apiGroups: [CRD_GROUP], resources: [`${CRD_PLURAL}/status`], verbs: ['patch'] },
  { apiGroups: [CRD_GROUP], resources: [`${CRD_PLURAL}/finalizers`], verbs: ['update'] },
  { apiGroups: [''], resources: ['pods', 'persistentvolumeclaims'], verbs: ['list', 'watch', 'create', 'patch', 'delete'] },
  { apiGroups: [''], resources: ['services', 'configmaps'], verbs: ['list', 'watch', 'create', 'patch'] },
  { apiGroups: [''], resources: ['secrets'], verbs: ['get', 'list', 'watch', 'create', 'patch', 'delete'] },
  { apiGroups: [''], resources: ['events'], verbs: ['create', 'patch'] },
  { apiGroups: ['policy'], resources: ['poddisruptionbudgets'], verbs: ['list', 'watch', 'create', 'patch', 'delete'] },
  { apiGroups: ['networking.k8s.io'], resources: ['networkpolicies'], verbs: ['list', 'watch', 'create', 'patch'] },
  { apiGroups: ['cert-manager.io'], resources: ['certificates'], verbs: ['create', 'patch', 'delete'] },
];
export const OPERATOR_LEASE_RULES = [{ apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] }];

interface Group extends KubernetesObject {
  metadata: KubernetesObject['metadata'] & { uid: string; generation: number };
  spec: Record<string, unknown>;
  status?: DerechoGroupStatus;
}

let cp: ControlPlane | null = null;
let skipReason: string | null = null;
const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'derecho-operator-test-'));

test.before(async (t) => {
  let tools;
  try {
    tools = await ensureClusterTools((line) => t.log(`[cluster-tools] ${line}`));
  } catch (e) {
    if (e instanceof ClusterToolsUnavailable && !process.env.CI) {
      skipReason = e.message;
      return;
    }
    throw e;
  }
  const t0 = Date.now();
  cp = await ControlPlane.start({ workDir, tools });
  const crd = YAML.parse(fs.readFileSync(path.join(REPO_ROOT, CRD_FILE), 'utf8')) as KubernetesObject;
  // Not cp.apply(): the client's model serializer would drop the schema's `default` and `x-kubernetes-*` fields.
  await new KubeRest(cp.kubeConfig).apply(crd as never, { apiVersion: 'apiextensions.k8s.io/v1', kind: 'CustomResourceDefinition', plural: 'customresourcedefinitions', namespaced: false }, { fieldManager: 'derecho-test', force: true });
  await cp.waitForCrd(CRD_NAME, { timeoutMs: 30_000 });
  t.log(`control plane with the DerechoGroup CRD ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
});

test.after.always(async () => {
  await cp?.stop();
  fs.rmSync(workDir, { recursive: true, force: true });
});

const sameSet = (a: readonly number[] | undefined, b: readonly number[]): boolean => a !== undefined && a.length === b.length && [...a].sort().join() === [...b].sort().join();
const conditionOf = (group: Group | undefined, type: string): Condition | undefined => group?.status?.conditions?.find((c) => c.type === type);
const secondsSince = (t0: number): string => `${((Date.now() - t0) / 1000).toFixed(1)} s`;

function groupManifest(namespace: string, members: number): KubernetesObject & { spec: Record<string, unknown> } {
  const example = exampleManifest();
  return {
    apiVersion: example.apiVersion,
    kind: example.kind,
    metadata: { name: GROUP, namespace },
    spec: {
      ...example.spec,
      members,
      subgroups: [
        { name: 'kv', type: 'kv', shards: 2, minNodesPerShard: 1, maxNodesPerShard: 2, reservedNodeIds: [[1, 2]] },
        { name: 'events', type: 'log', minNodesPerShard: 1, maxNodesPerShard: 3, reservedNodeIds: [[1, 2]] },
      ],
      // Crashes detected in about 1.5 s (still room for a loaded machine: starved for suspectMs, a member is removed).
      timing: { tickMs: 20, heartbeatMs: 40, suspectMs: 1500 },
      fsync: 'os',
      // A restart waiting longer than this is reported Stuck (the total failure below holds node 3 back).
      restart: { graceSeconds: 1.5, quorumTimeoutSeconds: 6 },
    },
  };
}

/** A request to a member's agent as an in-cluster client makes it (https, the group's CA, its token: agentCall). */
async function agentJson<T>(url: string, init: { method?: string; body?: string } = {}): Promise<{ status: number; body: T }> {
  const res = await agentCall(url, init, 15_000);
  return { status: res.status, body: (res.body ?? res.text) as T };
}

test('a DerechoGroup end to end: creation, Ready with view and shards, kill -9, refused scale-down, total failure, leader election', async (t) => {
  if (cp === null) {
    t.log(`SKIPPED: the test control plane cannot be built here: ${skipReason ?? '?'}`);
    t.pass();
    return;
  }
  t.timeout(5 * 60_000, 'the operator end-to-end test took over 5 minutes');
  const tStart = Date.now();
  const ns = 'derecho-e2e';
  const operatorNs = 'derecho-system';
  await cp.apply([
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: operatorNs } },
    { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', metadata: { name: 'derecho-operator' }, rules: OPERATOR_CLUSTER_RULES } as KubernetesObject,
    { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRoleBinding', metadata: { name: 'derecho-operator' }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'derecho-operator' }, subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: OPERATOR_USER }] } as KubernetesObject,
    { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'Role', metadata: { name: 'derecho-operator-leader', namespace: operatorNs }, rules: OPERATOR_LEASE_RULES } as KubernetesObject,
    { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'RoleBinding', metadata: { name: 'derecho-operator-leader', namespace: operatorNs }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'derecho-operator-leader' }, subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: OPERATOR_USER }] } as KubernetesObject,
  ]);
  const core = cp.kubeConfig.makeApiClient(CoreV1Api);
  const custom = cp.kubeConfig.makeApiClient(CustomObjectsApi);
  const coordination = cp.kubeConfig.makeApiClient(CoordinationV1Api);
  const logs: string[] = [];
  const kubelet = await MockKubelet.start({ kubeConfig: cp.kubeConfig, namespace: ns, workDir: path.join(workDir, 'kubelet'), log: (line) => logs.push(line) });
  const operators: OperatorHandle[] = [];
  let ok = false;
  t.teardown(async () => {
    if (!ok) {
      t.log(`--- operator and kubelet log (last 300 lines)\n${logs.slice(-300).join('\n')}`);
      t.log(`--- operator-b (non-debug, and debug after it leads)\n${logs.filter((l) => l.includes('"op":"operator-b"')).slice(-150).join('\n')}`);
      const left = await core.listNamespacedPod({ namespace: ns }).catch(() => null);
      t.log(`pods: ${JSON.stringify(left?.items.map((p) => [p.metadata?.name, p.metadata?.uid, p.metadata?.deletionTimestamp, p.status?.phase]))}`);
      t.log(kubelet.logs(25));
      t.log(cp?.logs(20) ?? '');
    }
    await Promise.all(operators.map((o) => o.stop().catch(() => {})));
    await kubelet.stop();
  });

  const startOperator = async (name: string, kubeconfigPath: string): Promise<OperatorHandle> => {
    const handle = await runOperator(
      ['--namespace', ns, '--metrics-port', '0', '--health-port', '0', '--bind-address', '127.0.0.1'],
      { KUBECONFIG: kubeconfigPath, POD_NAMESPACE: operatorNs, POD_NAME: name },
      { statusUrl: kubelet.statusUrl, log: createLogger(process.env.DERECHO_TEST_OPERATOR_LOG === 'debug' ? 'debug' : 'info', { op: name }, (line) => logs.push(line.trimEnd())) },
    );
    operators.push(handle);
    return handle;
  };
  const getGroup = async (): Promise<Group> => (await custom.getNamespacedCustomObject({ group: CRD_GROUP, version: CRD_VERSION, namespace: ns, plural: CRD_PLURAL, name: GROUP })) as Group;
  const waitForGroup = (what: string, probe: (group: Group) => boolean, timeoutMs = 60_000): Promise<Group> =>
    waitFor(what, async () => {
      const group = await getGroup();
      return probe(group) ? group : false;
    }, { timeoutMs, intervalMs: 200 });
  const pods = async (): Promise<V1Pod[]> => (await core.listNamespacedPod({ namespace: ns, labelSelector: `app.kubernetes.io/instance=${GROUP}` })).items;
  const groupEvents = async (): Promise<CoreV1Event[]> => (await core.listNamespacedEvent({ namespace: ns, fieldSelector: `involvedObject.name=${GROUP},involvedObject.kind=DerechoGroup` })).items;
  const lease = async () => (await coordination.readNamespacedLease({ name: 'derecho-operator', namespace: operatorNs })).spec;
  /** The group Ready in one view of 1, 2, 3 newer than `afterView`, every member reporting frontiers. */
  const readyAfter = (what: string, afterView: number, timeoutMs = 90_000): Promise<Group> => waitForGroup(what, (g) => {
    const s = g.status;
    return conditionOf(g, 'Ready')?.status === 'True' && s?.phase === 'Running' && sameSet(s.view?.members, [1, 2, 3]) && (s.view?.id ?? -1) > afterView
      && s.members?.length === 3 && s.members.every((m) => m.ready && m.viewId === s.view!.id);
  }, timeoutMs);

  // ---- Two operators, one Lease. A leads; B (least-privilege RBAC) waits with warm caches.
  const a = await startOperator('operator-a', cp.kubeconfigPath);
  await waitFor('operator-a to hold the Lease', () => a.elector!.isLeader(), { timeoutMs: 20_000 });
  const restricted = await cp.kubeConfigFor({ user: OPERATOR_USER });
  const b = await startOperator('operator-b', restricted.kubeconfigPath);
  await b.controller.waitForSync(30_000);
  t.is((await lease())?.holderIdentity, 'operator-a');
  t.false(b.elector!.isLeader());

  // ---- Create the group.
  const tCreate = Date.now();
  await cp.apply(groupManifest(ns, 3), { fieldManager: 'kubectl' });
  const ready = await readyAfter('the group to be Ready', -1);
  t.log(`group Ready ${secondsSince(tCreate)} after kubectl apply: view ${ready.status!.view!.id} ${JSON.stringify(ready.status!.view!.members)}`);
  const status = ready.status!;
  t.like(conditionOf(ready, 'Ready'), { status: 'True', reason: 'AllMembersReady', observedGeneration: 1 });
  t.like(conditionOf(ready, 'Degraded'), { status: 'False' });
  t.like(conditionOf(ready, 'RestartQuorumPending'), { status: 'False' });
  t.like(conditionOf(ready, 'SpecAccepted'), { status: 'True' });
  t.is(status.readyMembers, '3/3');
  t.is(status.currentMembers, 3);
  t.is(status.foundingMembers, 3);
  t.is(status.observedGeneration, 1);
  t.deepEqual(status.shards, [
    { subgroup: 'kv', shard: 0, members: [1, 2] },
    { subgroup: 'kv', shard: 1, members: [3] },
    { subgroup: 'events', shard: 0, members: [1, 2] },
  ]);
  t.deepEqual(status.members!.map((m) => [m.nodeId, m.mode, Object.keys(m.delivered).sort()]), [
    [1, 'active', ['events/0', 'kv/0']], [2, 'active', ['events/0', 'kv/0']], [3, 'active', ['kv/1']],
  ]);
  for (const m of status.members!) for (const f of [...Object.values(m.delivered), ...Object.values(m.persisted)]) t.regex(f, /^(-|[0-9]+\.[0-9]+)$/);
  t.true(ready.metadata.finalizers?.includes(FINALIZER), 'the finalizer is on the group');

  // The owned objects, with owner references (PVCs with retention "retain" have none, by design).
  const owner = { apiVersion: `${CRD_GROUP}/${CRD_VERSION}`, kind: 'DerechoGroup', name: GROUP, uid: ready.metadata.uid, controller: true, blockOwnerDeletion: true };
  const objectApi = KubernetesObjectApi.makeApiClient(cp.kubeConfig);
  const read = (apiVersion: string, kind: string, name: string) => objectApi.read({ apiVersion, kind, metadata: { name, namespace: ns } });
  for (const [apiVersion, kind, name] of [
    ['v1', 'Pod', `${GROUP}-1`], ['v1', 'Pod', `${GROUP}-2`], ['v1', 'Pod', `${GROUP}-3`],
    ['v1', 'Service', `${GROUP}-peers`], ['v1', 'Service', GROUP], ['v1', 'ConfigMap', `${GROUP}-config`], ['v1', 'Secret', `${GROUP}-auth`],
    ['policy/v1', 'PodDisruptionBudget', GROUP], ['networking.k8s.io/v1', 'NetworkPolicy', `${GROUP}-peers`],
    // Node 3 alone holds kv/1: a budget of its own forbids evicting it.
    ['policy/v1', 'PodDisruptionBudget', `${GROUP}-3-sole`],
  ] as const) {
    const object = await read(apiVersion, kind, name);
    t.like(object.metadata?.ownerReferences?.[0], owner, `${kind}/${name} is owned by the group`);
    t.true(object.metadata?.managedFields?.some((f) => f.manager === 'derecho-operator' && f.operation === 'Apply') ?? false, `${kind}/${name} is server-side applied by derecho-operator`);
  }
  const sole = await read('policy/v1', 'PodDisruptionBudget', `${GROUP}-3-sole`) as { spec?: { maxUnavailable?: number; selector?: { matchLabels?: Record<string, string> } } };
  t.is(sole.spec?.maxUnavailable, 0);
  t.is(sole.spec?.selector?.matchLabels?.['derecho.dev/node-id'], '3');
  for (const id of [1, 2, 3]) {
    const claim = await core.readNamespacedPersistentVolumeClaim({ name: `${GROUP}-${id}-data`, namespace: ns });
    t.is(claim.metadata?.ownerReferences, undefined, 'retained volumes carry no owner reference');
    t.is(claim.metadata?.annotations?.['derecho.dev/retention'], 'retain');
  }
  const pdb = (await read('policy/v1', 'PodDisruptionBudget', GROUP)) as KubernetesObject & { spec?: { minAvailable?: number } };
  t.is(pdb.spec?.minAvailable, 2);
  const created = await pods();
  t.deepEqual(created.map((p) => p.metadata?.name).sort(), [`${GROUP}-1`, `${GROUP}-2`, `${GROUP}-3`]);
  t.true(created.every((p) => p.status?.phase === 'Running' && p.spec?.nodeName === 'mock-kubelet'));

  // ---- A kv put through node 1, read through every node (kv/1 lives on node 3 only: routed).
  const keys = [keyInShard('operator-test', 0), keyInShard('operator-test', 1)];
  for (const key of keys) {
    const put = await agentJson<{ persisted: boolean; shard: number }>(`${kubelet.url(`${GROUP}-1`)}/v1/kv/kv/${key}`, { method: 'PUT', body: `value of ${key}` });
    t.is(put.status, 200, JSON.stringify(put.body));
    t.true(put.body.persisted);
  }
  for (const id of [1, 2, 3]) {
    for (const key of keys) {
      const got = await agentJson<{ value: string }>(`${kubelet.url(`${GROUP}-${id}`)}/v1/kv/kv/${key}`);
      t.is(got.body.value, `value of ${key}`, `GET ${key} through node ${id}`);
    }
  }

  // ---- kill -9 of node 2 (held down until the status shows the view without it).
  const viewBefore = (await getGroup()).status!.view!.id;
  kubelet.hold(`${GROUP}-2`);
  const tKill = Date.now();
  await kubelet.kill(2);
  const withoutTwo = await waitForGroup('a view without node 2 in the status', (g) => sameSet(g.status?.view?.members, [1, 3]) && (g.status?.view?.id ?? -1) > viewBefore, 30_000);
  const detectMs = Date.now() - tKill;
  t.log(`view ${withoutTwo.status!.view!.id} [1, 3] in the status ${detectMs} ms after kill -9 of node 2`);
  t.true(detectMs < 15_000, `the status showed the new view after ${detectMs} ms`);
  t.like(conditionOf(withoutTwo, 'Ready'), { status: 'False' });
  t.like(conditionOf(withoutTwo, 'Degraded'), { status: 'True', reason: 'MembersUnavailable' });
  t.false(withoutTwo.status!.members!.find((m) => m.nodeId === 2)!.ready);
  kubelet.release(`${GROUP}-2`);
  const tRestart = Date.now();
  const back = await readyAfter('Ready again with node 2 back', withoutTwo.status!.view!.id);
  t.log(`Ready again in view ${back.status!.view!.id} ${secondsSince(tRestart)} after node 2 was let restart`);
  const pod2 = await core.readNamespacedPod({ name: `${GROUP}-2`, namespace: ns });
  t.true((pod2.status?.containerStatuses?.[0]?.restartCount ?? 0) >= 1, 'the kubelet restarted the container in the same pod');
  t.is(pod2.metadata?.uid, created.find((p) => p.metadata?.name === `${GROUP}-2`)?.metadata?.uid, 'the same pod');
  const afterRejoin = await agentJson<{ value: string }>(`${kubelet.url(`${GROUP}-2`)}/v1/kv/kv/${keys[0]}`);
  t.is(afterRejoin.body.value, `value of ${keys[0]}`, 'node 2 holds kv/0 again');

  // ---- A scale-down that would leave kv shard 1 without a member: accepted by the API server, refused by the operator.
  await cp.apply(groupManifest(ns, 2), { fieldManager: 'kubectl' });
  const refused = await waitForGroup('SpecAccepted=False for members: 2', (g) => conditionOf(g, 'SpecAccepted')?.status === 'False' && conditionOf(g, 'SpecAccepted')?.observedGeneration === 2);
  t.like(conditionOf(refused, 'SpecAccepted'), { reason: 'ScalingRefused' });
  t.regex(conditionOf(refused, 'SpecAccepted')!.message, /^spec\.members 2 is refused, the group stays at 3 members: .*subgroup "kv" shard 1 needs 1 node/);
  t.like(conditionOf(refused, 'Progressing'), { status: 'False', reason: 'ScalingRefused' });
  t.is(refused.status!.currentMembers, 3);
  const warning = await waitFor('a ScalingRefused Warning event', async () => (await groupEvents()).find((e) => e.reason === 'ScalingRefused'), { timeoutMs: 10_000 });
  t.is(warning.type, 'Warning');
  t.is(warning.involvedObject.uid, ready.metadata.uid);
  t.regex(warning.message ?? '', /spec\.members 2 is refused/);
  t.is((await pods()).length, 3, 'no member was removed');
  await cp.apply(groupManifest(ns, 3), { fieldManager: 'kubectl' });
  await waitForGroup('SpecAccepted=True again', (g) => conditionOf(g, 'SpecAccepted')?.status === 'True' && conditionOf(g, 'SpecAccepted')?.observedGeneration === 3 && conditionOf(g, 'Ready')?.status === 'True');

  // ---- Only the leader wrote: B made no request that writes, and every event names A.
  t.is(await metricValue(b.metrics.apiWrites), 0, 'the standby wrote nothing');
  t.is(await metricValue(b.metrics.reconcileTotal), 0, 'the standby reconciled nothing');
  t.true(await metricValue(a.metrics.apiWrites) > 0);
  t.is((await lease())?.holderIdentity, 'operator-a');
  const eventsSoFar = await groupEvents();
  t.true(eventsSoFar.length > 0);
  t.deepEqual([...new Set(eventsSoFar.map((e) => e.reportingInstance))], ['operator-a']);
  t.true(eventsSoFar.some((e) => e.reason === 'PodsCreated') && eventsSoFar.some((e) => e.reason === 'Ready'));
  const metricsA = await (await fetch(`http://127.0.0.1:${a.metricsPort}/metrics`)).text();
  t.regex(metricsA, /^derecho_operator_leader 1$/m);
  t.regex(metricsA, /^derecho_operator_reconcile_total\{result="success"\} [1-9]/m);
  const metricsB = await (await fetch(`http://127.0.0.1:${b.metricsPort}/metrics`)).text();
  t.regex(metricsB, /^derecho_operator_leader 0$/m);
  t.is((await fetch(`http://127.0.0.1:${b.healthPort}/readyz`)).status, 200, 'the standby is ready (caches synced)');

  // ---- Failover: A stops and releases the Lease; B takes over at once (no 15 s expiry).
  const tFailover = Date.now();
  await a.stop();
  t.falsy((await lease())?.holderIdentity, 'released');
  await waitFor('operator-b to hold the Lease', () => b.elector!.isLeader(), { timeoutMs: 15_000 });
  t.log(`operator-b leads ${secondsSince(tFailover)} after operator-a stopped`);
  const leaseB = await lease();
  t.is(leaseB?.holderIdentity, 'operator-b');
  t.true((leaseB?.leaseTransitions ?? 0) >= 1);

  // ---- Total failure under B: every pod deleted; node 3 (the only member of kv/1) held back.
  const before = await pods();
  const lastView = (await getGroup()).status!.view!.id;
  kubelet.hold(`${GROUP}-3`);
  const tTotal = Date.now();
  await core.deleteCollectionNamespacedPod({ namespace: ns, labelSelector: `app.kubernetes.io/instance=${GROUP}` });
  const pending = await waitForGroup('RestartQuorumPending=True naming node 3 and kv/1, reported by nodes 1 and 2', (g) => conditionOf(g, 'RestartQuorumPending')?.status === 'True'
    && (g.status?.restart?.missingShards ?? []).some((s) => s.subgroup === 'kv' && s.shard === 1)
    // Both surviving members reported (the condition can show with the first report alone).
    && (g.status?.restart?.reporting ?? []).length >= 2, 90_000);
  t.log(`restart pending ${secondsSince(tTotal)} after deleting every pod: ${conditionOf(pending, 'RestartQuorumPending')!.message}`);
  t.is(pending.status!.phase, 'Restarting');
  t.like(conditionOf(pending, 'Ready'), { status: 'False', reason: 'RestartQuorumPending' });
  t.regex(conditionOf(pending, 'RestartQuorumPending')!.message, /shard kv\/1 needs one of its former members back \(node 3\), with its volume/);
  for (const c of pending.status!.conditions!) t.notRegex(c.message, /inadequate|restart view/, `${c.type}: ${c.message}`);
  t.deepEqual(pending.status!.restart!.missingShards.find((s) => s.subgroup === 'kv' && s.shard === 1), { subgroup: 'kv', shard: 1, formerMembers: [3] });
  t.true(pending.status!.restart!.missingMembers.includes(3), JSON.stringify(pending.status!.restart));
  t.deepEqual([...pending.status!.restart!.reporting].sort(), [1, 2]);
  const recreated = await pods();
  t.is(recreated.length, 3, 'all three pods recreated');
  for (const pod of recreated) t.not(pod.metadata?.uid, before.find((p) => p.metadata?.name === pod.metadata?.name)?.metadata?.uid, `${pod.metadata?.name} is a new pod`);
  // Held back past spec.restart.quorumTimeoutSeconds (6 s): Stuck=True in plain words, a Warning, the metric.
  const stuck = await waitForGroup('Stuck=True naming node 3 and kv/1', (g) => conditionOf(g, 'Stuck')?.status === 'True', 60_000);
  t.log(`Stuck ${secondsSince(tTotal)} after deleting every pod: ${conditionOf(stuck, 'Stuck')!.message}`);
  t.like(conditionOf(stuck, 'Stuck'), { reason: 'RestartQuorumTimeout' });
  t.regex(conditionOf(stuck, 'Stuck')!.message, /more than spec\.restart\.quorumTimeoutSeconds \(6 s\): .*shard kv\/1 needs one of its former members back \(node 3\), with its volume/);
  t.is(stuck.status!.phase, 'Restarting');
  await waitFor('a Warning RestartStuck Event', async () => (await groupEvents()).some((e) => e.type === 'Warning' && e.reason === 'RestartStuck'), { timeoutMs: 20_000 });
  t.is(await metricValue(b.metrics.stuckGroups), 1, 'derecho_operator_groups_stuck');
  kubelet.release(`${GROUP}-3`);
  const tRelease = Date.now();
  const restarted = await readyAfter('Ready after the total failure', lastView);
  t.log(`Ready in view ${restarted.status!.view!.id} ${secondsSince(tRelease)} after node 3 was let start (${secondsSince(tTotal)} after the total failure)`);
  t.like(conditionOf(restarted, 'RestartQuorumPending'), { status: 'False' });
  t.like(conditionOf(restarted, 'Stuck'), { status: 'False', reason: 'NotRestarting' });
  t.is(await metricValue(b.metrics.stuckGroups), 0, 'derecho_operator_groups_stuck after the restart');
  t.is(restarted.status!.restart, undefined, 'the restart section is gone from the status');
  for (const id of [1, 2, 3]) {
    for (const key of keys) {
      const got = await agentJson<{ value: string }>(`${kubelet.url(`${GROUP}-${id}`)}/v1/kv/kv/${key}`);
      t.is(got.status, 200, `GET ${key} through node ${id} after the restart: ${JSON.stringify(got.body)}`);
      t.is(got.body.value, `value of ${key}`, 'the data survived on the volumes');
    }
  }
  t.true(await metricValue(b.metrics.apiWrites) > 0, 'the new leader writes');
  const eventsB = (await groupEvents()).filter((e) => e.reportingInstance === 'operator-b').map((e) => e.reason);
  t.true(eventsB.includes('PodsCreated') && eventsB.includes('RestartQuorumPending'), JSON.stringify(eventsB));

  // ---- Deleting the group: the finalizer holds it until its pods are gone; retained volumes stay.
  const tDelete = Date.now();
  await custom.deleteNamespacedCustomObject({ group: CRD_GROUP, version: CRD_VERSION, namespace: ns, plural: CRD_PLURAL, name: GROUP });
  const deleting = await waitForGroup('phase Deleting', (g) => g.status?.phase === 'Deleting' || (g.metadata.deletionTimestamp !== undefined && (g.metadata.finalizers ?? []).includes(FINALIZER)), 30_000).catch(() => null);
  if (deleting !== null) t.truthy(deleting.metadata.deletionTimestamp);
  await waitFor('the group to be gone', async () => {
    try {
      await getGroup();
      return false;
    } catch (e) {
      return statusCode(e) === 404;
    }
  }, { timeoutMs: 60_000, intervalMs: 200 });
  t.log(`group deleted ${secondsSince(tDelete)} after kubectl delete`);
  t.deepEqual(await pods(), [], 'the pods went before the group');
  t.is((await core.listNamespacedPersistentVolumeClaim({ namespace: ns })).items.length, 3, 'retained volumes are kept');
  t.true((await groupEvents()).some((e) => e.reason === 'Deleting'));
  t.log(`whole test ${secondsSince(tStart)}`);
  ok = true;
});

test('leader election: a leader that dies without releasing the Lease is replaced once it expires, never with two leaders at once', async (t) => {
  if (cp === null) {
    t.log(`SKIPPED: ${skipReason ?? '?'}`);
    t.pass();
    return;
  }
  t.timeout(60_000);
  const leaseNs = 'derecho-lease-test';
  await cp.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: leaseNs } });
  const timing = { leaseDurationSeconds: 3, renewDeadlineSeconds: 2, retryPeriodSeconds: 0.5 };
  const transitions: string[] = [];
  const make = (identity: string): LeaderElector => new LeaderElector({
    kubeConfig: cp!.kubeConfig, namespace: leaseNs, name: 'test-lease', identity, ...timing, log: silentLogger,
    onStartedLeading: () => transitions.push(`${identity} leads`), onStoppedLeading: () => transitions.push(`${identity} stops`),
  });
  const x = make('x');
  const y = make('y');
  t.teardown(async () => {
    await x.stop({ release: false });
    await y.stop({ release: false });
  });
  x.start();
  // a first acquisition waits only for the API server (slow on a loaded 2-core CI machine)
  await waitFor('x to lead', () => x.isLeader(), { timeoutMs: 30_000 });
  y.start();
  let both = 0;
  const sampler = setInterval(() => {
    if (x.isLeader() && y.isLeader()) both++;
  }, 20);
  t.teardown(() => clearInterval(sampler));
  await new Promise((r) => setTimeout(r, 2000));
  t.false(y.isLeader(), 'y waits while x renews');
  t.is(y.leader(), 'x');
  // x "crashes": it stops renewing and does not release.
  const tCrash = Date.now();
  await x.stop({ release: false });
  await waitFor('y to lead', () => y.isLeader(), { timeoutMs: 15_000, intervalMs: 20 });
  const tookMs = Date.now() - tCrash;
  t.log(`y took over ${tookMs} ms after x stopped renewing (lease duration ${timing.leaseDurationSeconds} s)`);
  t.true(tookMs >= 2000, `not before the lease expired (${tookMs} ms)`);
  t.is(both, 0, 'never two leaders at once');
  const lease = await cp.kubeConfig.makeApiClient(CoordinationV1Api).readNamespacedLease({ name: 'test-lease', namespace: leaseNs });
  t.is(lease.spec?.holderIdentity, 'y');
  t.is(lease.spec?.leaseTransitions, 1);
  t.deepEqual(transitions, ['x leads', 'x stops', 'y leads']);
});

test('operator/src/main.ts as a process: flags, health and metrics ports, the Lease, SIGTERM releases it', async (t) => {
  if (cp === null) {
    t.log(`SKIPPED: ${skipReason ?? '?'}`);
    t.pass();
    return;
  }
  t.timeout(2 * 60_000);
  const ns = 'derecho-process';
  const leaseNs = 'derecho-process-system';
  await cp.apply([{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } }, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: leaseNs } }]);
  const main = path.join(REPO_ROOT, 'operator', 'src', 'main.ts');
  const env = { ...process.env, KUBECONFIG: cp.kubeconfigPath, POD_NAMESPACE: leaseNs, POD_NAME: 'operator-process' };

  const bad = spawnSync(process.execPath, ['--import', 'tsx', main, '--metrics-port', 'eighty'], { cwd: REPO_ROOT, env, encoding: 'utf8', timeout: 60_000 });
  t.is(bad.status, 2, bad.stderr);
  t.regex(bad.stderr, /--metrics-port: "eighty" is not an integer/);

  const [metricsPort, healthPort] = await freePorts(2);
  const logFile = path.join(workDir, 'operator-process.log');
  const fd = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, ['--import', 'tsx', main, '--namespace', ns, '--metrics-port', String(metricsPort), '--health-port', String(healthPort), '--bind-address', '127.0.0.1'], { cwd: REPO_ROOT, env, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('exit', (code, signal) => resolve([code, signal])));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const dump = (t2: ExecutionContext): void => t2.log(fs.readFileSync(logFile, 'utf8').split('\n').slice(-30).join('\n'));
  try {
    const get = async (port: number, route: string) => {
      const res = await fetch(`http://127.0.0.1:${port}${route}`, { signal: AbortSignal.timeout(5000) });
      return { status: res.status, text: await res.text() };
    };
    await waitFor('/healthz', async () => (await get(healthPort!, '/healthz')).status === 200, { timeoutMs: 60_000, intervalMs: 200 });
    await waitFor('/readyz', async () => (await get(healthPort!, '/readyz')).status === 200, { timeoutMs: 30_000, intervalMs: 200 });
    const coordination = cp.kubeConfig.makeApiClient(CoordinationV1Api);
    await waitFor('the Lease held by operator-process', async () => (await coordination.readNamespacedLease({ name: 'derecho-operator', namespace: leaseNs })).spec?.holderIdentity === 'operator-process', { timeoutMs: 20_000 });
    const metrics = await get(metricsPort!, '/metrics');
    t.is(metrics.status, 200);
    t.regex(metrics.text, /^derecho_operator_leader 1$/m);
    t.regex(metrics.text, /^# HELP derecho_operator_reconcile_duration_seconds /m);
    t.regex(metrics.text, /^derecho_operator_process_nodejs_version_info\{/m);
    t.is((await get(healthPort!, '/nope')).status, 404);

    child.kill('SIGTERM');
    const [code, signal] = await Promise.race([exited, new Promise<[null, null]>((r) => setTimeout(() => r([null, null]), 25_000))]);
    t.is(code, 0, `exit code (signal ${String(signal)})`);
    const released = await coordination.readNamespacedLease({ name: 'derecho-operator', namespace: leaseNs });
    t.falsy(released.spec?.holderIdentity, 'SIGTERM released the Lease');
  } catch (e) {
    dump(t);
    throw e;
  }
});
