// Changes to running DerechoGroups, end to end against a real kube-apiserver (control-plane.ts) with the
// mock kubelet (kubelet.ts) running each member pod as a real agent process; one control plane for the
// file, each test in a namespace of its own (they run concurrently):
//
//  - crd-cases.ts against the API server: every CREATE_CASES manifest is created (dry run) and every
//    UPDATE_CASES pair applied before/after; refusals are HTTP 422 naming the field and carrying the CEL
//    rule's message, the rest is accepted;
//  - mutual TLS: a group whose Secret is missing says so in its status (Degraded=AuthSecretMissing, pods
//    wait for their volume), one whose Secret lacks a member's key names the key, and once the CA and the
//    per-member certificates (openssl, CN "node-<id>") are there the group forms over TLS and serves writes;
//    scaled up before the new member has a certificate, it says so, and the member joins once it has one;
//  - scaling 3 -> 5 -> 3 -> 4, a rolling update, and the operator (a process of its own) killed with
//    SIGKILL in the middle of the scale-up, of the rolling update and of the scale-down: a writer puts
//    keys through the agents' kv API the whole time; members are added one at a time (each joins with
//    state transfer and shows up in the view in the status), the update restarts every pod exactly once,
//    one at a time, the leader last, the scale-down removes the highest ids first and keeps their volumes,
//    and a member added back starts on its retained volume (an old view's state) and catches up; no
//    acknowledged write is lost;
//  - a rolling update of examples/kv-overlap.yaml: kv shard 1 has one member, so restarting it stops the
//    group (a Warning says so); the update still completes and no acknowledged write is lost; and of
//    examples/kv-group.yaml as is: no member holds a shard alone, no restart warns.

import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import type { KubernetesObject } from '@kubernetes/client-node';
import YAML from 'yaml';
import { createLogger } from '../../node-agent/src/agent/logger.ts';
import { httpRequest } from '../../node-agent/src/util/http-request.ts';
import { CREATE_CASES, MESSAGE_CASES, POD_TEMPLATE_EXAMPLE, UPDATE_CASES, exampleManifest, overlapManifest, withSpec } from '../../operator/src/crd-cases.ts';
import type { Manifest } from '../../operator/src/crd-cases.ts';
import { certificateFacts, issuedBy, x509Issuer } from '../../operator/src/certs.ts';
import { KubeApiError, KubeRest, resourcePath } from '../../operator/src/controller.ts';
import { CEL_RULES, CRD_FILE } from '../../operator/src/crd.ts';
import { ANNOTATION, CRD_API_VERSION, CRD_KIND, CRD_NAME, CRD_PLURAL, names } from '../../operator/src/kube.ts';
import { runOperator } from '../../operator/src/main.ts';
import type { OperatorHandle } from '../../operator/src/main.ts';
import type { Condition, DerechoGroupStatus } from '../../operator/src/status.ts';
import { REPO_ROOT } from '../multiprocess/harness.ts';
import { ControlPlane, waitFor } from './control-plane.ts';
import { MockKubelet, agentCall } from './kubelet.ts';
import { ClusterToolsUnavailable, ensureClusterTools } from './tools.ts';

const execFileP = promisify(execFile);
const GROUP_TYPE = { apiVersion: CRD_API_VERSION, kind: CRD_KIND, plural: CRD_PLURAL };
const CHILD = path.join(REPO_ROOT, 'test', 'cluster', 'operator-child.ts');

interface Group {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string; uid: string; generation: number; resourceVersion?: string };
  spec: Record<string, unknown>;
  status?: DerechoGroupStatus;
}

let cp: ControlPlane | null = null;
let rest: KubeRest | null = null;
let skipReason: string | null = null;
const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'derecho-operator-changes-'));

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
  cp = await ControlPlane.start({ workDir, tools });
  rest = new KubeRest(cp.kubeConfig);
  const crd = YAML.parse(fs.readFileSync(path.join(REPO_ROOT, CRD_FILE), 'utf8')) as KubernetesObject;
  await rest.apply(crd as never, { apiVersion: 'apiextensions.k8s.io/v1', kind: 'CustomResourceDefinition', plural: 'customresourcedefinitions', namespaced: false }, { fieldManager: 'derecho-test', force: true });
  await cp.waitForCrd(CRD_NAME, { timeoutMs: 30_000 });
});

test.after.always(async () => {
  await cp?.stop();
  // DERECHO_TEST_KEEP=1 keeps the agents' and operators' logs and the volumes for a look afterwards.
  if (process.env.DERECHO_TEST_KEEP) process.stderr.write(`kept ${workDir}\n`);
  else fs.rmSync(workDir, { recursive: true, force: true });
});

const conditionOf = (group: Group | undefined, type: string): Condition | undefined => group?.status?.conditions?.find((c) => c.type === type);
const sameSet = (a: readonly number[] | undefined, b: readonly number[]): boolean => a !== undefined && a.length === b.length && [...a].sort((x, y) => x - y).join() === [...b].sort((x, y) => x - y).join();
const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

function skipped(t: ExecutionContext): boolean {
  if (cp !== null) return false;
  t.log(`SKIPPED: the test control plane cannot be built here: ${skipReason ?? '?'}`);
  t.pass();
  return true;
}

async function createNamespace(name: string): Promise<void> {
  await rest!.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name } }, { apiVersion: 'v1', kind: 'Namespace', plural: 'namespaces', namespaced: false }, { fieldManager: 'derecho-test', force: true });
}

/** Server-side apply of a DerechoGroup as "kubectl" would (its own field manager). */
function applyGroup(manifest: Manifest, namespace: string, opts: { dryRun?: boolean } = {}): Promise<Group> {
  const query = new URLSearchParams({ fieldManager: 'kubectl', force: 'true', ...(opts.dryRun ? { dryRun: 'All' } : {}) });
  return rest!.request<Group>('PATCH', `${resourcePath(GROUP_TYPE, namespace, manifest.metadata.name)}?${query.toString()}`, {
    body: { ...manifest, metadata: { ...manifest.metadata, namespace } }, contentType: 'application/apply-patch+yaml',
  });
}

function getGroup(namespace: string, name: string): Promise<Group> {
  return rest!.get<Group>(resourcePath(GROUP_TYPE, namespace, name));
}

interface PodLite {
  metadata: { name: string; uid: string; deletionTimestamp?: string; annotations?: Record<string, string>; creationTimestamp?: string };
  status?: { phase?: string };
}

/** The group's member pods as the API server stores them (`T`: the fields a test reads). */
async function listPods<T = PodLite>(namespace: string, group: string): Promise<T[]> {
  const list = await rest!.get<{ items: T[] }>(`/api/v1/namespaces/${namespace}/pods?labelSelector=${encodeURIComponent(`app.kubernetes.io/instance=${group},app.kubernetes.io/component=member`)}`);
  return list.items;
}

/** A request to a member's agent as an in-cluster client makes it (https, the group's CA, its token: agentCall). */
async function agentJson<T>(url: string, init: { method?: string; body?: string; token?: string | null } = {}, timeoutMs = 10_000): Promise<{ status: number; body: T }> {
  const res = await agentCall(url, init, timeoutMs);
  return { status: res.status, body: (res.body ?? res.text) as T };
}

/** The group's status is Ready in one view of exactly `members`, every member ready in it, spec generation `generation` applied. */
function readyWith(group: Group, members: number[], generation?: number): boolean {
  const s = group.status;
  return conditionOf(group, 'Ready')?.status === 'True' && s?.phase === 'Running' && sameSet(s.view?.members, members)
    && s.members?.length === members.length && s.members.every((m) => m.ready && m.viewId === s.view!.id)
    && (generation === undefined || (s.observedGeneration === generation && conditionOf(group, 'Progressing')?.observedGeneration === generation));
}

function statusLine(group: Group | undefined): string {
  const s = group?.status;
  if (s === undefined) return 'no status';
  return `phase ${s.phase}, view ${s.view?.id ?? '-'} ${JSON.stringify(s.view?.members ?? [])}, ready ${s.readyMembers}, current ${s.currentMembers}, ${(s.conditions ?? []).map((c) => `${c.type}=${c.status}(${c.reason}: ${c.message.slice(0, 160)})`).join('; ')}`;
}

// ---------------------------------------------------------------------------------------------------
// crd-cases.ts against the API server. (The tests below these two run agents: they run one at a time,
// test.serial; a dozen groups of agents at once, each with its operator and kubelet, starved each other
// on a 2-core machine.)

/** Where the API server reports a CEL rule's violation: the rule's place (list items by index) and its fieldPath. */
function fieldPathPattern(message: string): RegExp {
  const rules = CEL_RULES.filter((rule) => rule.message.includes(message));
  if (rules.length !== 1) throw new Error(`crd-cases: ${rules.length} CEL rules have a message containing ${JSON.stringify(message)}`);
  const rule = rules[0]!;
  const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const at = rule.at.split('[]').map(escape).join('\\[[0-9]+\\]');
  // The rule's reason picks the error type the API server reports (field.ErrorType's text).
  const type = { FieldValueInvalid: 'Invalid value', FieldValueForbidden: 'Forbidden', FieldValueRequired: 'Required value', FieldValueDuplicate: 'Duplicate value' }[rule.reason ?? 'FieldValueInvalid'];
  return new RegExp(`${at}${escape(rule.fieldPath ?? '')}: ${type}`);
}

async function refusalOf(attempt: Promise<unknown>): Promise<{ code: number; message: string } | null> {
  try {
    await attempt;
    return null;
  } catch (e) {
    if (!(e instanceof KubeApiError)) throw e;
    let message = e.body;
    try {
      message = (JSON.parse(e.body) as { message?: string }).message ?? e.body;
    } catch {
      // not JSON
    }
    return { code: e.code, message };
  }
}

test('the API server refuses crd-cases.ts manifests with the field path and the CEL message, and accepts the rest', async (t) => {
  if (skipped(t)) return;
  const ns = 'derecho-crd-cases';
  await createNamespace(ns);
  const createResults = await Promise.all(CREATE_CASES.map(async (c, index) => ({ c, refusal: await refusalOf(applyGroup(withSpec(c.patch, `create-${index}`), ns, { dryRun: true })) })));
  for (const { c, refusal } of createResults) {
    if (c.refusal === null) {
      t.is(refusal, null, `create "${c.what}" is accepted: ${refusal?.message ?? ''}`);
      continue;
    }
    t.is(refusal?.code, 422, `create "${c.what}" is refused as invalid: ${JSON.stringify(refusal)}`);
    t.true(refusal?.message.includes(c.refusal) ?? false, `create "${c.what}": the message carries "${c.refusal}": ${refusal?.message ?? ''}`);
    t.regex(refusal?.message ?? '', fieldPathPattern(c.refusal), `create "${c.what}": the message names the field`);
  }
  const updateResults = await Promise.all(UPDATE_CASES.map(async (c, index) => {
    const name = `update-${index}`;
    const before = await refusalOf(applyGroup(withSpec(c.before, name), ns));
    const refusal = await refusalOf(applyGroup(withSpec(c.after, name), ns));
    const stored = await getGroup(ns, name);
    return { c, before, refusal, stored };
  }));
  for (const { c, before, refusal, stored } of updateResults) {
    t.is(before, null, `update "${c.what}": the "before" manifest is created`);
    if (c.refusal === null) {
      t.is(refusal, null, `update "${c.what}" is accepted: ${refusal?.message ?? ''}`);
      t.is(stored.metadata.generation, JSON.stringify(withSpec(c.before).spec) === JSON.stringify(withSpec(c.after).spec) ? 1 : 2, `update "${c.what}": generation`);
      continue;
    }
    t.is(refusal?.code, 422, `update "${c.what}" is refused as invalid: ${JSON.stringify(refusal)}`);
    t.true(refusal?.message.includes(c.refusal) ?? false, `update "${c.what}": the message carries "${c.refusal}": ${refusal?.message ?? ''}`);
    t.regex(refusal?.message ?? '', fieldPathPattern(c.refusal), `update "${c.what}": the message names the field`);
    t.is(stored.metadata.generation, 1, `update "${c.what}": the stored group is unchanged`);
  }
  t.log(`${createResults.length} create cases (${createResults.filter((r) => r.refusal !== null).length} refused), ${updateResults.length} update cases (${updateResults.filter((r) => r.refusal !== null).length} refused)`);
  t.log(`e.g. ${createResults.find((r) => r.refusal !== null)?.refusal?.message ?? ''}`);
});

test('the API server\'s refusals carry one error each (no CEL follow-ons after members: 0) and say what to do: enum values, what a field is instead of its regex, no "not checked" line (issue 15 finding 7)', async (t) => {
  if (skipped(t)) return;
  const ns = 'derecho-crd-messages';
  await createNamespace(ns);
  for (const [index, c] of MESSAGE_CASES.entries()) {
    const name = `message-${index}`;
    if (c.before !== undefined) t.is(await refusalOf(applyGroup(withSpec(c.before, name), ns)), null, `${c.what}: the "before" manifest is created`);
    const refusal = await refusalOf(applyGroup(withSpec(c.after, name), ns, c.before === undefined ? { dryRun: true } : {}));
    t.is(refusal?.code, 422, `${c.what}: ${JSON.stringify(refusal)}`);
    const message = refusal?.message ?? '';
    // One cause: `... is invalid: <field>: <type>: <message>`; several come as a bracketed list.
    const causes = message.replace(/^.*? is invalid: /, '');
    t.is(causes.startsWith('[') ? causes.split(/, (?=spec\.|metadata\.|<nil>)/).length : 1, c.causes, `${c.what}: ${message}`);
    t.false(/some validation rules were not checked/.test(message), `${c.what}: no "not checked" noise: ${message}`);
    t.true(causes.startsWith(c.field), `${c.what}: introduced by "${c.field}": ${message}`);
    t.regex(causes.slice(c.field.length), c.says, c.what);
  }
});

// ---------------------------------------------------------------------------------------------------
// Mutual TLS.

/** A CA (made once per directory) and, for each node id, a certificate with CN "node-<id>" signed by it: the Secret's data (base64). */
async function tlsMaterial(dir: string, nodeIds: number[]): Promise<Record<string, string>> {
  fs.mkdirSync(dir, { recursive: true });
  const openssl = (args: string[]) => execFileP('openssl', args, { cwd: dir });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  if (!fs.existsSync(path.join(dir, 'ca.crt'))) await openssl(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=derecho-test-ca']);
  await Promise.all(nodeIds.map(async (id) => {
    await openssl(['req', ...ec, '-keyout', `node-${id}.key`, '-out', `node-${id}.csr`, '-subj', `/CN=node-${id}`]);
    await openssl(['x509', '-req', '-in', `node-${id}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-set_serial', String(1000 + id), '-days', '2', '-out', `node-${id}.crt`]);
  }));
  const data: Record<string, string> = { 'ca.crt': fs.readFileSync(path.join(dir, 'ca.crt')).toString('base64') };
  for (const id of nodeIds) {
    data[`node-${id}.crt`] = fs.readFileSync(path.join(dir, `node-${id}.crt`)).toString('base64');
    data[`node-${id}.key`] = fs.readFileSync(path.join(dir, `node-${id}.key`)).toString('base64');
  }
  return data;
}

/** examples/kv-overlap.yaml (node 3 alone holds kv shard 1) with faster timing. */
function fastGroup(name: string, members: number, extra: Record<string, unknown> = {}): Manifest {
  const example = overlapManifest();
  return {
    apiVersion: example.apiVersion,
    kind: example.kind,
    metadata: { name },
    spec: { ...example.spec, members, timing: { tickMs: 20, heartbeatMs: 40, suspectMs: 1500 }, fsync: 'os', ...extra },
  };
}

/**
 * An operator watching `ns`, and a mock kubelet running its pods (unless `kubelet: false`). Until
 * `passed()` is called, the teardown prints their logs and the group's status.
 */
async function operatorFor(t: ExecutionContext, ns: string, group: string, tag: string, opts: { kubelet?: boolean; args?: string[] } = {}) {
  const logs: string[] = [];
  const kubelet = opts.kubelet === false ? null
    : await MockKubelet.start({ kubeConfig: cp!.kubeConfig, namespace: ns, workDir: path.join(workDir, `kubelet-${tag}`), log: (line) => logs.push(line) });
  const start = (args: string[]): Promise<OperatorHandle> => runOperator(['--namespace', ns, '--leader-elect=false', '--metrics-port', '0', '--health-port', '0', '--bind-address', '127.0.0.1', ...args], { KUBECONFIG: cp!.kubeconfigPath },
    { statusUrl: kubelet?.statusUrl ?? (() => null), log: createLogger('info', { op: `operator-${tag}` }, (line) => logs.push(line.trimEnd())) });
  let operator = await start(opts.args ?? []);
  let ok = false;
  t.teardown(async () => {
    if (!ok) {
      t.log(`--- operator${kubelet ? ' and kubelet' : ''} log (last 60 lines)\n${logs.slice(-60).join('\n')}`);
      t.log(`--- status: ${statusLine(await getGroup(ns, group).catch(() => undefined))}`);
      if (kubelet) t.log(kubelet.logs(30));
    }
    await operator.stop().catch(() => {});
    await kubelet?.stop();
  });
  const waitForGroup = (what: string, probe: (g: Group) => boolean, timeoutMs = 90_000): Promise<Group> =>
    waitFor(what, async () => {
      const g = await getGroup(ns, group);
      return probe(g) ? g : false;
    }, { timeoutMs, intervalMs: 200 });
  /** Stops the operator and starts another with these extra flags (an upgrade), the kubelet kept. */
  const replaceOperator = async (args: string[]): Promise<void> => {
    await operator.stop();
    operator = await start(args);
  };
  return { kubelet, waitForGroup, replaceOperator, passed: (): void => { ok = true; } };
}

test('pods the API server refuses (an RDMA pod under the restricted Pod Security standard) are reported: Progressing=False WriteRefused with its words, a Warning, no PodsCreated', async (t) => {
  if (skipped(t)) return;
  t.timeout(2 * 60_000);
  const ns = 'derecho-psa';
  const group = 'rdma-psa';
  await rest!.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns, labels: { 'pod-security.kubernetes.io/enforce': 'restricted' } } },
    { apiVersion: 'v1', kind: 'Namespace', plural: 'namespaces', namespaced: false }, { fieldManager: 'derecho-test', force: true });
  const { waitForGroup, passed } = await operatorFor(t, ns, group, 'psa', { kubelet: false });
  // transport rdma: the pod adds the IPC_LOCK capability (to pin RDMA memory), which "restricted" forbids.
  await applyGroup(fastGroup(group, 3, { transport: 'rdma' }), ns);
  const refused = await waitForGroup('Progressing=False WriteRefused', (g) => conditionOf(g, 'Progressing')?.reason === 'WriteRefused', 60_000);
  const progressing = conditionOf(refused, 'Progressing')!;
  t.log(`Progressing: ${progressing.message.slice(0, 400)}`);
  t.is(progressing.status, 'False');
  t.regex(progressing.message, /creating or updating Pod rdma-psa-1 was refused \(HTTP 403\): pods "rdma-psa-1" is forbidden: violates PodSecurity "restricted:[^"]+": .*IPC_LOCK/);
  t.is((await listPods(ns, group)).length, 0, 'no pod exists');
  // One Warning per refused pod (recorded after the status: wait for all three).
  const events = await waitFor('a WriteRefused event per pod', async () => {
    const list = await rest!.request<{ items: { type: string; reason: string; message: string }[] }>('GET',
      `/api/v1/namespaces/${ns}/events?fieldSelector=${encodeURIComponent(`involvedObject.name=${group},involvedObject.kind=DerechoGroup`)}`);
    return list.items.filter((e) => e.reason === 'WriteRefused').length >= 3 ? list : false;
  }, { timeoutMs: 20_000, intervalMs: 200 });
  const refusedEvents = events.items.filter((e) => e.reason === 'WriteRefused');
  t.true(refusedEvents.length >= 3 && refusedEvents.every((e) => e.type === 'Warning' && /violates PodSecurity/.test(e.message)), JSON.stringify(refusedEvents.map((e) => e.message)));
  t.deepEqual(events.items.filter((e) => e.reason === 'PodsCreated'), [], 'no event says the refused pods were created');
  passed();
});

test.serial('upgrading the operator upgrades the agents of groups that pin no image: the new operator\'s --agent-image reaches every member pod, one pod at a time (issue 15 finding 9)', async (t) => {
  if (skipped(t)) return;
  t.timeout(4 * 60_000);
  const ns = 'derecho-upgrade';
  const group = 'upgraded';
  await createNamespace(ns);
  const image = (version: string): string[] => ['--agent-image', `registry.example.com/node-agent:${version}`];
  const { waitForGroup, replaceOperator, passed } = await operatorFor(t, ns, group, 'upgrade', { args: image('1.0.0') });
  type ImagePod = PodLite & { spec: { containers: { image: string }[] }; status?: { phase?: string; conditions?: { type: string; status: string }[] } };
  const images = async (): Promise<string[]> => (await listPods<ImagePod>(ns, group)).map((p) => p.spec.containers[0]!.image).sort();
  await applyGroup(fastGroup(group, 3), ns);
  await waitForGroup('the group Ready on the 1.0.0 agents', (g) => readyWith(g, [1, 2, 3]));
  t.deepEqual(await images(), Array(3).fill('registry.example.com/node-agent:1.0.0'), 'no spec.image: the operator\'s agent image');
  const before = new Set((await listPods(ns, group)).map((p) => p.metadata.uid));

  // The upgrade: the old operator goes, the new one (another --agent-image) comes.
  await replaceOperator(image('1.1.0'));
  // (Pods being replaced at once: deleted and not yet re-created. Pod readiness lags the agents by a probe
  // period, so the operator's gate — every member active in one view, from their /status — is not it.)
  let mostReplaced = 0;
  const upgraded = await waitFor('every member on the 1.1.0 agent image, the group Ready', async () => {
    const pods = await listPods<ImagePod>(ns, group);
    mostReplaced = Math.max(mostReplaced, 3 - pods.filter((p) => p.metadata.deletionTimestamp === undefined).length);
    const g = await getGroup(ns, group);
    return pods.length === 3 && pods.every((p) => p.spec.containers[0]!.image === 'registry.example.com/node-agent:1.1.0') && readyWith(g, [1, 2, 3]) && conditionOf(g, 'Progressing')?.status === 'False' ? g : false;
  }, { timeoutMs: 180_000, intervalMs: 100 });
  t.log(`upgraded: ${statusLine(upgraded)}`);
  t.true((await listPods(ns, group)).every((p) => !before.has(p.metadata.uid)), 'every member pod was replaced');
  t.true(mostReplaced <= 1, `one member at a time (${mostReplaced} replaced at once)`);
  passed();
});

test.serial('spec.podTemplate reaches the member pods the API server stores: labels, annotations, nodeSelector, affinity, tolerations, topology spread, priority class (resolved by admission), pull secrets (issue 15 finding 3)', async (t) => {
  if (skipped(t)) return;
  t.timeout(2 * 60_000);
  const ns = 'derecho-scheduling';
  const group = 'placed';
  await createNamespace(ns);
  await rest!.apply({ apiVersion: 'scheduling.k8s.io/v1', kind: 'PriorityClass', metadata: { name: POD_TEMPLATE_EXAMPLE.priorityClassName }, value: 1_000_000, description: 'derecho members' },
    { apiVersion: 'scheduling.k8s.io/v1', kind: 'PriorityClass', plural: 'priorityclasses', namespaced: false }, { fieldManager: 'derecho-test', force: true });
  const { passed } = await operatorFor(t, ns, group, 'scheduling', { kubelet: false });
  await applyGroup(fastGroup(group, 3, { podTemplate: POD_TEMPLATE_EXAMPLE }), ns);
  type StoredPod = { metadata: { name: string; labels: Record<string, string>; annotations: Record<string, string> }; spec: Record<string, unknown> & { priority?: number } };
  const pods = await waitFor('three member pods', async () => {
    const items = await listPods<StoredPod>(ns, group);
    return items.length === 3 ? items : false;
  }, { timeoutMs: 60_000, intervalMs: 200 });
  const memberSelector = { matchLabels: { 'app.kubernetes.io/name': 'derecho', 'app.kubernetes.io/instance': group, 'app.kubernetes.io/component': 'member' } };
  for (const pod of pods) {
    t.like(pod.metadata.labels, { ...POD_TEMPLATE_EXAMPLE.metadata.labels, 'app.kubernetes.io/instance': group }, pod.metadata.name);
    t.like(pod.metadata.annotations, POD_TEMPLATE_EXAMPLE.metadata.annotations, pod.metadata.name);
    t.deepEqual(pod.spec.nodeSelector, POD_TEMPLATE_EXAMPLE.nodeSelector);
    t.deepEqual(pod.spec.affinity, POD_TEMPLATE_EXAMPLE.affinity);
    // The API server adds its default tolerations (not-ready, unreachable) after the spec's own.
    t.deepEqual((pod.spec.tolerations as unknown[]).slice(0, 1), POD_TEMPLATE_EXAMPLE.tolerations);
    t.like((pod.spec.topologySpreadConstraints as Record<string, unknown>[])[0], { ...POD_TEMPLATE_EXAMPLE.topologySpreadConstraints[0], labelSelector: memberSelector });
    t.is(pod.spec.priorityClassName, POD_TEMPLATE_EXAMPLE.priorityClassName);
    t.is(pod.spec.priority, 1_000_000, 'the Priority admission plugin resolved the class');
    t.deepEqual(pod.spec.imagePullSecrets, POD_TEMPLATE_EXAMPLE.imagePullSecrets);
  }
  // Relabelling changes the pods in place (no new pod, same uid).
  const uids = new Map(pods.map((p) => [p.metadata.name, (p.metadata as { uid?: string }).uid]));
  await applyGroup(fastGroup(group, 3, { podTemplate: { ...POD_TEMPLATE_EXAMPLE, metadata: { labels: { team: 'platform' } } } }), ns);
  const relabelled = await waitFor('the pods relabelled', async () => {
    const list = await rest!.get<{ items: StoredPod[] }>(`/api/v1/namespaces/${ns}/pods?labelSelector=${encodeURIComponent('team=platform')}`);
    return list.items.length === 3 ? list.items : false;
  }, { timeoutMs: 60_000, intervalMs: 200 });
  t.true(relabelled.every((p) => uids.get(p.metadata.name) === (p.metadata as { uid?: string }).uid), 'the same pods');
  passed();
});

test.serial('a crash-looping member says why in the status: its agent\'s termination message (transport rdma on a node without RDMA)', async (t) => {
  if (skipped(t)) return;
  t.timeout(2 * 60_000);
  const ns = 'derecho-crashloop';
  const group = 'no-rdma';
  await createNamespace(ns);
  const { waitForGroup, passed } = await operatorFor(t, ns, group, 'crashloop');
  await applyGroup(fastGroup(group, 3, { transport: 'rdma' }), ns);
  // (The mock kubelet's back-off is short and an agent takes seconds to load on a busy machine: look for a
  // member while it is in CrashLoopBackOff, not for all three at once.)
  const looping = await waitForGroup('a member crash-looping with the reason', (g) => (g.status?.members ?? []).some((m) => m.mode === 'crashLooping'));
  const member = looping.status!.members!.find((m) => m.mode === 'crashLooping')!;
  t.log(`node ${member.nodeId}: ${member.waiting}`);
  t.regex(member.waiting ?? '', /^the agent keeps failing \(CrashLoopBackOff\): it restarted \d+ times?; last exit: code 2: invalid configuration: spec\.transport: "rdma" needs RDMA on this node/);
  t.regex(conditionOf(looping, 'Ready')?.message ?? '', new RegExp(`node ${member.nodeId}: the agent keeps failing`));
  passed();
});

test.serial('a member restarted with another HMAC key is reported as failing authentication, not as a restart after a total failure', async (t) => {
  if (skipped(t)) return;
  t.timeout(3 * 60_000);
  const ns = 'derecho-wrongkey';
  const group = 'wrongkey';
  await createNamespace(ns);
  const { kubelet, waitForGroup, passed } = await operatorFor(t, ns, group, 'wrongkey');
  // The group's key in a Secret of the user's (spec.tls.secretName).
  const secretType = { apiVersion: 'v1', kind: 'Secret', plural: 'secrets' };
  const secretName = 'wrongkey-hmac';
  await rest!.apply({ apiVersion: 'v1', kind: 'Secret', metadata: { name: secretName, namespace: ns }, type: 'Opaque', data: { 'hmac.key': Buffer.alloc(32, 7).toString('base64') } },
    secretType, { fieldManager: 'derecho-test', force: true });
  // 4 members: no shard has node 3 alone, so the others keep serving (with 3, kv/1 = [3] would stop the group).
  await applyGroup(fastGroup(group, 4, { tls: { mode: 'hmac', secretName } }), ns);
  await waitForGroup('Ready', (g) => conditionOf(g, 'Ready')?.status === 'True');
  // The user replaces the key in that Secret; node 3 restarts with it, the others keep the old one.
  const secret = await rest!.get<{ data: Record<string, string> }>(resourcePath(secretType, ns, secretName), 10_000);
  const other = Buffer.from(Buffer.from(secret.data['hmac.key']!, 'base64').map((b) => b ^ 0x5a)).toString('base64');
  await rest!.request('PUT', resourcePath(secretType, ns, secretName), { body: { ...secret, data: { ...secret.data, 'hmac.key': other } } });
  await kubelet!.kill(3);
  const failing = await waitForGroup('Degraded AuthenticationFailed naming node 3 and the wrong secret', (g) => conditionOf(g, 'Degraded')?.reason === 'AuthenticationFailed'
    && /group secret/.test(conditionOf(g, 'Degraded')!.message));
  const degraded = conditionOf(failing, 'Degraded')!;
  t.log(`Degraded: ${degraded.message.slice(0, 300)}`);
  t.regex(degraded.message, /^node 3: cannot authenticate with the other members \(wrong key or certificate\?\): .*failed to prove knowledge of the group secret \(wrong secret\?\)/);
  t.not(failing.status!.phase, 'Restarting');
  t.is(failing.status!.restart, undefined);
  t.like(conditionOf(failing, 'RestartQuorumPending'), { status: 'False' });
  t.true(failing.status!.members!.filter((m) => m.nodeId !== 3).every((m) => m.ready), 'the other members serve');
  passed();
});

test.serial('a group re-created over volumes left by an earlier one (node 4 from a scale-down among them) founds with its spec\'s 3 members; node 4 added later joins and never answers "key not found" for a key that exists (issue 15 finding 6)', async (t) => {
  if (skipped(t)) return;
  t.timeout(5 * 60_000);
  const ns = 'derecho-recreate';
  const group = 'again';
  await createNamespace(ns);
  const { kubelet, waitForGroup, passed } = await operatorFor(t, ns, group, 'recreate');
  const readyWith = (members: number) => (g: Group): boolean => conditionOf(g, 'Ready')?.status === 'True' && g.status?.currentMembers === members
    && (g.status.members ?? []).filter((m) => m.nodeId <= members).every((m) => m.ready);
  const url = (id: number) => kubelet!.url(`${group}-${id}`);
  // An earlier group: 3 members, grown to 4, shrunk back to 3 (node 4's volume is kept), then deleted.
  await applyGroup(fastGroup(group, 3), ns);
  await waitForGroup('the first group Ready with 3', readyWith(3));
  await applyGroup(fastGroup(group, 4), ns);
  await waitForGroup('the first group Ready with 4', readyWith(4));
  await applyGroup(fastGroup(group, 3), ns);
  await waitForGroup('the first group back to 3', (g) => readyWith(3)(g) && (g.status?.members ?? []).length === 3);
  const keys = ['k-a', 'k-b', 'k-c'];
  for (const key of keys) t.is((await agentJson(`${url(1)}/v1/kv/kv/${key}`, { method: 'PUT', body: `value of ${key}` })).status, 200);
  await rest!.request('DELETE', resourcePath(GROUP_TYPE, ns, group));
  await waitFor('the first group and its pods gone', async () => {
    const gone = await getGroup(ns, group).then(() => false, (e: unknown) => (e as { code?: number }).code === 404);
    return gone && (await listPods(ns, group)).length === 0;
  }, { timeoutMs: 90_000, intervalMs: 250 });
  // What the garbage collector does in a cluster (this control plane runs none): the objects the group
  // owned go with it — the ConfigMap with the recorded member counts among them. The volumes stay.
  for (const path of [`/api/v1/namespaces/${ns}/configmaps/${group}-config`, `/api/v1/namespaces/${ns}/secrets/${group}-auth`,
    `/api/v1/namespaces/${ns}/services/${group}`, `/api/v1/namespaces/${ns}/services/${group}-peers`,
    `/apis/policy/v1/namespaces/${ns}/poddisruptionbudgets/${group}`, `/apis/policy/v1/namespaces/${ns}/poddisruptionbudgets/${group}-3-sole`,
    `/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies/${group}-peers`]) {
    await rest!.request('DELETE', path).catch((e: unknown) => {
      if ((e as { code?: number }).code !== 404) throw e;
    });
  }
  const claims = await rest!.request<{ items: { metadata: { name: string } }[] }>('GET', `/api/v1/namespaces/${ns}/persistentvolumeclaims`);
  t.deepEqual(claims.items.map((c) => c.metadata.name).sort(), [`${group}-1-data`, `${group}-2-data`, `${group}-3-data`, `${group}-4-data`], 'retained volumes, node 4\'s among them');

  // Re-created with 3 members: 3 founders (was 4: node 4's volume made it one), the data restarts from the volumes.
  await applyGroup(fastGroup(group, 3), ns);
  const again = await waitForGroup('the re-created group Ready with 3', readyWith(3));
  t.is(again.status!.foundingMembers, 3);
  t.deepEqual((await listPods(ns, group)).map((p) => p.metadata.name).sort(), [`${group}-1`, `${group}-2`, `${group}-3`]);
  for (const key of keys) t.is((await agentJson<{ value: string }>(`${url(2)}/v1/kv/kv/${key}`)).body.value, `value of ${key}`);

  // Scaled to 4: node 4 joins the running group. Polled all along: it never answers 404 for a key that exists.
  await applyGroup(fastGroup(group, 4), ns);
  const wrong: string[] = [];
  let polling = true;
  const poller = (async () => {
    while (polling) {
      for (const key of keys) {
        const r = await agentJson<unknown>(`${url(4)}/v1/kv/kv/${key}`, {}, 2000).catch(() => null);
        if (r !== null && r.status === 404) wrong.push(`${key}: 404 ${JSON.stringify(r.body).slice(0, 200)}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const four = await waitForGroup('Ready with 4', readyWith(4));
  polling = false;
  await poller;
  t.deepEqual(wrong, [], 'node 4 never answered "key not found" for a key that exists');
  t.true(four.status!.view!.members.includes(4));
  t.true((four.status!.view!.id) > 0, 'node 4 is in a view of the group, not a view 0 of its own');
  for (const key of keys) t.is((await agentJson<{ value: string }>(`${url(4)}/v1/kv/kv/${key}`)).body.value, `value of ${key}`);
  passed();
});

test.serial('mutual TLS with the user\'s own Secret (spec.tls.secretName): a missing Secret and a missing key are reported in the status; with the certificates the group forms and serves writes', async (t) => {
  if (skipped(t)) return;
  t.timeout(3 * 60_000);
  const ns = 'derecho-tls';
  const group = 'secure';
  await createNamespace(ns);
  const logs: string[] = [];
  const kubelet = await MockKubelet.start({ kubeConfig: cp!.kubeConfig, namespace: ns, workDir: path.join(workDir, 'kubelet-tls'), log: (line) => logs.push(line) });
  let operator: OperatorHandle | null = null;
  let ok = false;
  t.teardown(async () => {
    if (!ok) {
      t.log(`--- operator and kubelet log (last 100 lines)\n${logs.slice(-100).join('\n')}`);
      t.log(`--- status: ${statusLine(await getGroup(ns, group).catch(() => undefined))}`);
      t.log(kubelet.logs(20));
    }
    await operator?.stop().catch(() => {});
    await kubelet.stop();
  });
  operator = await runOperator(['--namespace', ns, '--leader-elect=false', '--metrics-port', '0', '--health-port', '0', '--bind-address', '127.0.0.1'], { KUBECONFIG: cp!.kubeconfigPath },
    { statusUrl: kubelet.statusUrl, log: createLogger('info', { op: 'operator-tls' }, (line) => logs.push(line.trimEnd())) });
  const waitForGroup = (what: string, probe: (g: Group) => boolean, timeoutMs = 60_000): Promise<Group> =>
    waitFor(what, async () => {
      const g = await getGroup(ns, group);
      return probe(g) ? g : false;
    }, { timeoutMs, intervalMs: 200 });

  // ---- No Secret: the status says which one is missing; the pods wait for their volume.
  const secretName = names.tlsSecret(group);
  const tlsSpec = { tls: { mode: 'mutual', secretName } };
  await applyGroup(fastGroup(group, 3, tlsSpec), ns);
  const missing = await waitForGroup('Degraded=AuthSecretMissing', (g) => conditionOf(g, 'Degraded')?.reason === 'AuthSecretMissing');
  t.like(conditionOf(missing, 'Degraded'), { status: 'True' });
  t.regex(conditionOf(missing, 'Degraded')!.message, new RegExp(`^Secret ${secretName} \\(spec.tls.secretName\\) with the members' TLS material does not exist`));
  t.like(conditionOf(missing, 'Ready'), { status: 'False' });
  const pending = await listPods(ns, group);
  t.is(pending.length, 3, 'the pods are created');
  t.true(pending.every((p) => p.status?.phase === undefined || p.status.phase === 'Pending'), 'no pod runs without its certificate');

  // ---- A Secret without node 3's key pair: named in the status.
  const material = await tlsMaterial(path.join(workDir, 'tls'), [1, 2, 3]);
  const secretType = { apiVersion: 'v1', kind: 'Secret', plural: 'secrets' };
  const partial = Object.fromEntries(Object.entries(material).filter(([key]) => !key.startsWith('node-3.')));
  await rest!.apply({ apiVersion: 'v1', kind: 'Secret', metadata: { name: secretName, namespace: ns }, type: 'Opaque', data: partial }, secretType, { fieldManager: 'derecho-test', force: true });
  const lacking = await waitForGroup('Degraded naming node-3.crt and node-3.key', (g) => /lacks node-3\.crt, node-3\.key/.test(conditionOf(g, 'Degraded')?.message ?? ''));
  t.like(conditionOf(lacking, 'Degraded'), { status: 'True', reason: 'AuthSecretMissing' });

  // ---- The whole material: the group forms over mutual TLS.
  const tSecret = Date.now();
  await rest!.request('PUT', resourcePath(secretType, ns, secretName), { body: { apiVersion: 'v1', kind: 'Secret', metadata: { name: secretName, namespace: ns }, type: 'Opaque', data: material } });
  const ready = await waitForGroup('the TLS group to be Ready', (g) => readyWith(g, [1, 2, 3]), 90_000);
  t.log(`TLS group Ready ${seconds(Date.now() - tSecret)} after its Secret was complete: ${statusLine(ready)}`);
  t.like(conditionOf(ready, 'Degraded'), { status: 'False' });
  // Each member runs with its own certificate, and says so in its log.
  for (const id of [1, 2, 3]) {
    const log = fs.readFileSync(path.join(kubelet.logDir, `${ns}_${group}-${id}.log`), 'utf8');
    t.regex(log, /listening on .*\(TLS\)/, `node ${id} listens with TLS`);
  }
  const key = 'tls-key';
  const put = await agentJson<{ persisted?: boolean }>(`${kubelet.url(`${group}-1`)}/v1/kv/kv/${key}`, { method: 'PUT', body: 'over tls' });
  t.is(put.status, 200, JSON.stringify(put.body));
  for (const id of [1, 2, 3]) {
    const got = await agentJson<{ value: string }>(`${kubelet.url(`${group}-${id}`)}/v1/kv/kv/${key}`);
    t.is(got.body.value, 'over tls', `read through node ${id}`);
  }

  // ---- Scaling to 4 before node 4 has a certificate: the status names the missing keys; once they are
  // in the Secret, node 4 joins over TLS.
  const scaled = await applyGroup(fastGroup(group, 4, tlsSpec), ns);
  const lackingFour = await waitForGroup('Degraded naming node-4.crt and node-4.key', (g) => /lacks node-4\.crt, node-4\.key/.test(conditionOf(g, 'Degraded')?.message ?? ''));
  t.is(lackingFour.status!.currentMembers, 4, 'node 4 is added (its pod waits for its certificate)');
  const tFour = Date.now();
  const withFour = { ...material, ...(await tlsMaterial(path.join(workDir, 'tls'), [4])) };
  await rest!.request('PUT', resourcePath(secretType, ns, secretName), { body: { apiVersion: 'v1', kind: 'Secret', metadata: { name: secretName, namespace: ns }, type: 'Opaque', data: withFour } });
  const four = await waitForGroup('the TLS group Ready with 4 members', (g) => readyWith(g, [1, 2, 3, 4], scaled.metadata.generation), 90_000);
  t.log(`node 4 in the TLS group's view ${four.status!.view!.id} ${seconds(Date.now() - tFour)} after its certificate was added`);
  const viaFour = await agentJson<{ value: string }>(`${kubelet.url(`${group}-4`)}/v1/kv/kv/${key}`);
  t.is(viaFour.body.value, 'over tls', 'read through node 4');
  ok = true;
});

test.serial('mutual TLS by default, the operator issuing the certificates: a group with no Secret made by hand forms, node 4 joins at once, 60-second certificates are renewed and reach the agents without a restart, a scale-down deletes node 4\'s (issue 15 finding 1)', async (t) => {
  if (skipped(t)) return;
  t.timeout(4 * 60_000);
  const ns = 'derecho-certs';
  const group = 'issued';
  await createNamespace(ns);
  const { kubelet, waitForGroup, passed } = await operatorFor(t, ns, group, 'certs', { args: ['--certificate-validity', '60s'] });
  const secretType = { apiVersion: 'v1', kind: 'Secret', plural: 'secrets' };
  const readSecret = (name: string) => rest!.request<{ type: string; data: Record<string, string>; metadata: { ownerReferences?: { kind: string }[] } }>('GET', resourcePath(secretType, ns, name));
  const pem = (data: Record<string, string>, key: string): string => Buffer.from(data[key]!, 'base64').toString('utf8');
  const serialOf = (certPem: string): string => certificateFacts(certPem).serialNumber;
  const agentTls = async (id: number) => (await agentJson<{ transport: { tls?: { serialNumber: string; reloads: number } } }>(`${kubelet!.url(`${group}-${id}`)}/status`)).body.transport.tls;

  // ---- Only `tls: { mode: mutual }`: the operator makes the authority and each member's certificate.
  const t0 = Date.now();
  await applyGroup(fastGroup(group, 3, { tls: { mode: 'mutual' } }), ns);
  const ready = await waitForGroup('the group Ready over operator-issued certificates', (g) => readyWith(g, [1, 2, 3]), 120_000);
  t.log(`Ready ${seconds(Date.now() - t0)} after creation, no Secret made by hand: ${statusLine(ready)}`);
  const authority = await readSecret(names.authoritySecret(group));
  const caPem = pem(authority.data, 'ca.crt');
  t.true(certificateFacts(caPem).isCa);
  const firstSerials = new Map<number, string>();
  for (const id of [1, 2, 3]) {
    const secret = await readSecret(names.memberTlsSecret(group, id));
    t.is(secret.type, 'kubernetes.io/tls');
    t.is(secret.metadata.ownerReferences?.[0]?.kind, 'DerechoGroup');
    const leaf = pem(secret.data, 'tls.crt');
    t.is(certificateFacts(leaf).commonName, `node-${id}`);
    t.true(issuedBy(leaf, caPem, new Date()));
    firstSerials.set(id, serialOf(leaf));
    t.is((await agentTls(id))?.serialNumber, serialOf(leaf), `node ${id} runs with its issued certificate`);
    const log = fs.readFileSync(path.join(kubelet!.logDir, `${ns}_${group}-${id}.log`), 'utf8');
    t.regex(log, /listening on .*\(TLS\)/, `node ${id} listens with TLS`);
  }
  const pods = await listPods(ns, group);
  t.false(JSON.stringify(pods).includes(names.authoritySecret(group)), 'no pod mounts the authority');
  const put = await agentJson<{ persisted?: boolean }>(`${kubelet!.url(`${group}-1`)}/v1/kv/kv/certs`, { method: 'PUT', body: 'v1' });
  t.is(put.status, 200, JSON.stringify(put.body));

  // ---- Scale to 4: node 4's certificate comes with its pod; no waiting on anyone.
  const tScale = Date.now();
  const scaled = await applyGroup(fastGroup(group, 4, { tls: { mode: 'mutual' } }), ns);
  const four = await waitForGroup('node 4 in the view', (g) => readyWith(g, [1, 2, 3, 4], scaled.metadata.generation), 120_000);
  t.log(`node 4 in view ${four.status!.view!.id} ${seconds(Date.now() - tScale)} after the scale-up`);
  t.is(conditionOf(four, 'Degraded')?.status, 'False');

  // ---- Renewal: 60 s certificates are renewed with a third left; each agent picks its new one up with
  // no restart (the kubelet updates the Secret volume in place), and the group keeps serving.
  const startsBefore = kubelet!.starts.length;
  const tRenew = Date.now();
  const renewed = await waitFor('every member to run with a renewed certificate', async () => {
    const serials = await Promise.all([1, 2, 3].map(async (id) => (await agentTls(id))?.serialNumber));
    return serials.every((serial, i) => serial !== undefined && serial !== firstSerials.get(i + 1)) ? serials : false;
  }, { timeoutMs: 90_000, intervalMs: 500 });
  t.log(`renewed certificates in use ${seconds(Date.now() - tRenew)} later: ${renewed.join(', ')}`);
  for (const id of [1, 2, 3]) {
    const leaf = pem((await readSecret(names.memberTlsSecret(group, id))).data, 'tls.crt');
    t.true(issuedBy(leaf, caPem, new Date()), `node ${id}'s renewal comes from the same authority`);
    t.true(((await agentTls(id))?.reloads ?? 0) >= 1);
  }
  t.is(kubelet!.starts.length, startsBefore, 'no agent restarted');
  // New connections use the renewed certificates: a member restarted now is admitted back.
  await kubelet!.kill(`${group}-2`);
  await waitForGroup('node 2 back after a kill -9', (g) => readyWith(g, [1, 2, 3, 4]) && (g.status?.view?.id ?? 0) > four.status!.view!.id, 90_000);
  const put2 = await agentJson<{ persisted?: boolean }>(`${kubelet!.url(`${group}-2`)}/v1/kv/kv/certs`, { method: 'PUT', body: 'v2' });
  t.is(put2.status, 200, JSON.stringify(put2.body));
  const events = await rest!.request<{ items: { reason: string; message: string }[] }>('GET',
    `/api/v1/namespaces/${ns}/events?fieldSelector=${encodeURIComponent(`involvedObject.name=${group},involvedObject.kind=DerechoGroup`)}`);
  t.true(events.items.some((e) => e.reason === 'CertificateIssued' && /issued node 4's certificate/.test(e.message)), 'an Event says node 4\'s certificate was issued');

  // ---- Scale back to 3: node 4's certificate is deleted with its pod.
  await applyGroup(fastGroup(group, 3, { tls: { mode: 'mutual' } }), ns);
  await waitFor('node 4\'s certificate deleted', async () => {
    try {
      await readSecret(names.memberTlsSecret(group, 4));
      return false;
    } catch (e) {
      if (e instanceof KubeApiError && e.code === 404) return true;
      throw e;
    }
  }, { timeoutMs: 90_000, intervalMs: 500 });
  passed();
});

test.serial('the client API is TLS with the group\'s CA and asks for the token of the client Secret; the NetworkPolicy admits labelled clients only; a token is rotated by editing the Secret, without a restart (issue 15 finding 2)', async (t) => {
  if (skipped(t)) return;
  t.timeout(4 * 60_000);
  const ns = 'derecho-client-api';
  const group = 'guarded';
  await createNamespace(ns);
  const { kubelet, waitForGroup, passed } = await operatorFor(t, ns, group, 'client-api');
  const secretType = { apiVersion: 'v1', kind: 'Secret', plural: 'secrets' };
  const readSecret = (name: string) => rest!.request<{ data: Record<string, string>; metadata: { ownerReferences?: { kind: string }[] } }>('GET', resourcePath(secretType, ns, name));
  const text = (data: Record<string, string>, key: string): string => Buffer.from(data[key]!, 'base64').toString('utf8');

  // The defaults (the example's tls.mode hmac): nothing about the client API in the manifest.
  await applyGroup(fastGroup(group, 3), ns);
  await waitForGroup('the group Ready (the operator polls /status over https with the group\'s CA)', (g) => readyWith(g, [1, 2, 3]), 120_000);
  const client = await readSecret(names.clientSecret(group));
  t.is(client.metadata.ownerReferences?.[0]?.kind, 'DerechoGroup');
  const token = text(client.data, 'token');
  const ca = text(client.data, 'ca.crt');
  t.true(token.length >= 32, 'a random token');
  const base = kubelet!.url(`${group}-1`);
  t.regex(base, /^https:/, 'the probes and the API are HTTPS');
  const servername = `${group}-1.${group}-peers.${ns}.svc`;
  const call = (method: string, p: string, opts: { token?: string; body?: string; ca?: string; servername?: string } = {}) => httpRequest({
    url: base + p, method, ca: opts.ca ?? ca, servername: opts.servername ?? servername, timeoutMs: 15_000,
    headers: opts.token !== undefined ? { authorization: `Bearer ${opts.token}` } : {}, ...(opts.body !== undefined ? { body: opts.body } : {}),
  });
  const put = await call('PUT', '/v1/kv/kv/guarded', { token, body: 'v1' });
  t.is(put.status, 200, put.body.toString());
  const refused = await call('PUT', '/v1/kv/kv/guarded', { body: 'no token' });
  t.is(refused.status, 401);
  t.regex(refused.body.toString(), /needs a bearer token/);
  t.is((await call('GET', '/v1/kv/kv/guarded', { token: 'a-token-this-group-never-issued-0123' })).status, 401);
  t.is((await call('GET', '/readyz')).status, 200, 'probes need no token');
  // Verified by the member's name, also through "localhost" (a port-forward), and only with the group's CA.
  t.is((await call('GET', '/v1/kv/kv/guarded', { token, servername: 'localhost' })).status, 200);
  const otherCa = x509Issuer.authority('not-the-group', new Date(Date.now() - 60_000), new Date(Date.now() + 3_600_000)).certPem;
  const untrusted = await call('GET', '/readyz', { ca: otherCa }).then(() => 'accepted', (e: unknown) => String((e as { code?: string }).code));
  t.regex(untrusted, /UNABLE_TO_VERIFY|SELF_SIGNED|CERT/);
  const plain = await httpRequest({ url: base.replace(/^https:/, 'http:') + '/v1/kv/kv/guarded', timeoutMs: 5000 }).then((r) => `HTTP ${r.status}`, (e: unknown) => `error ${String((e as { code?: string }).code)}`);
  t.false(plain === 'HTTP 200', `plain HTTP gets nothing: ${plain}`);

  // The NetworkPolicy the API server stores: the client port is no longer open to every pod.
  const policy = await rest!.request<{ spec: { ingress: { from?: Record<string, unknown>[]; ports: { port: number }[] }[] } }>('GET', `/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies/${names.networkPolicy(group)}`);
  const httpRule = policy.spec.ingress.find((rule) => rule.ports.some((p) => p.port === 8080))!;
  t.deepEqual(httpRule.from, [
    { podSelector: { matchLabels: { 'derecho.dev/client': group } } },
    { namespaceSelector: {}, podSelector: { matchLabels: { 'derecho.dev/operator': 'true' } } },
  ]);
  // allowedClients replaces the default selector (a change of the policy only: no pod restarts).
  const uids = (await listPods(ns, group)).map((p) => p.metadata.uid).sort();
  await applyGroup(fastGroup(group, 3, { clientApi: { allowedClients: [{ namespaceSelector: { matchLabels: { team: 'web' } } }] } }), ns);
  await waitFor('the policy to admit the team\'s namespaces', async () => {
    const p = await rest!.request<typeof policy>('GET', `/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies/${names.networkPolicy(group)}`);
    return JSON.stringify(p.spec.ingress[1]?.from?.[0]) === JSON.stringify({ namespaceSelector: { matchLabels: { team: 'web' } } });
  }, { timeoutMs: 30_000, intervalMs: 250 });

  // Rotation: the Secret's token gets a second line (old and new both work), then the old one goes.
  const fresh = 'a-new-token-for-the-clients-0123456789abcdef';
  const patchToken = (value: string) => rest!.request('PATCH', resourcePath(secretType, ns, names.clientSecret(group)), {
    body: { data: { token: Buffer.from(value).toString('base64') } }, contentType: 'application/merge-patch+json',
  });
  await patchToken(`${token}\n${fresh}\n`);
  const t0 = Date.now();
  await waitFor('every member to accept the new token', async () => {
    for (const id of [1, 2, 3]) {
      const r = await agentCall(`${kubelet!.url(`${group}-${id}`)}/v1/kv/kv/guarded`, { token: fresh });
      if (r.status !== 200) return false;
    }
    return true;
  }, { timeoutMs: 60_000, intervalMs: 500 });
  t.log(`the new token works on every member ${seconds(Date.now() - t0)} after the Secret changed`);
  t.is((await call('GET', '/v1/kv/kv/guarded', { token })).status, 200, 'the old one too, while both are listed');
  await patchToken(`${fresh}\n`);
  await waitFor('the old token to be refused', async () => (await call('GET', '/v1/kv/kv/guarded', { token })).status === 401, { timeoutMs: 60_000, intervalMs: 500 });
  t.is((await call('GET', '/v1/kv/kv/guarded', { token: fresh })).status, 200);
  t.is(text((await readSecret(names.clientSecret(group))).data, 'token'), `${fresh}\n`, 'the operator keeps the token it finds');
  t.deepEqual((await listPods(ns, group)).map((p) => p.metadata.uid).sort(), uids, 'no member restarted');
  passed();
});

test.serial('mutual TLS with cert-manager: the operator requests a Certificate per member, the group forms once they are issued, node 4 gets one on scale-up and loses it on scale-down (issue 15 finding 1)', async (t) => {
  if (skipped(t)) return;
  t.timeout(3 * 60_000);
  const ns = 'derecho-cert-manager';
  const group = 'managed';
  // cert-manager's Certificate kind (the schema left open: what cert-manager itself does with it is its
  // business; the test below does what its CA issuer would).
  const crdType = { apiVersion: 'apiextensions.k8s.io/v1', kind: 'CustomResourceDefinition', plural: 'customresourcedefinitions', namespaced: false };
  await rest!.apply({
    apiVersion: 'apiextensions.k8s.io/v1', kind: 'CustomResourceDefinition', metadata: { name: 'certificates.cert-manager.io' },
    spec: {
      group: 'cert-manager.io', scope: 'Namespaced', names: { plural: 'certificates', singular: 'certificate', kind: 'Certificate', listKind: 'CertificateList' },
      versions: [{ name: 'v1', served: true, storage: true, schema: { openAPIV3Schema: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } } }],
    },
  }, crdType, { fieldManager: 'derecho-test', force: true });
  await waitFor('the Certificate kind to be served', async () => {
    try {
      await rest!.get(`/apis/cert-manager.io/v1/namespaces/default/certificates`);
      return true;
    } catch {
      return false;
    }
  }, { timeoutMs: 30_000, intervalMs: 200 });
  await createNamespace(ns);
  const { kubelet, waitForGroup, passed } = await operatorFor(t, ns, group, 'cert-manager');
  // The issuer: one CA; each Certificate gets a key pair and a certificate as cert-manager's CA issuer writes them.
  const now = Date.now();
  const ca = x509Issuer.authority('test-issuer-ca', new Date(now - 60_000), new Date(now + 86_400_000));
  type CertificateObject = { metadata: { name: string }; spec: { secretName: string; commonName: string; dnsNames: string[]; secretTemplate?: { labels?: Record<string, string> }; issuerRef: { name: string } } };
  const issued = new Set<string>();
  const issueAll = async (): Promise<string[]> => {
    const list = await rest!.get<{ items: CertificateObject[] }>(`/apis/cert-manager.io/v1/namespaces/${ns}/certificates`);
    const fresh = list.items.filter((c) => !issued.has(c.metadata.name));
    for (const c of fresh) {
      t.is(c.spec.issuerRef.name, 'test-issuer');
      const leaf = x509Issuer.leaf(ca, { commonName: c.spec.commonName, dnsNames: c.spec.dnsNames }, new Date(now - 60_000), new Date(now + 3_600_000));
      const b64 = (text: string): string => Buffer.from(text).toString('base64');
      await rest!.apply({
        apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/tls', metadata: { name: c.spec.secretName, namespace: ns, labels: c.spec.secretTemplate?.labels ?? {} },
        data: { 'tls.crt': b64(leaf.certPem), 'tls.key': b64(leaf.keyPem), 'ca.crt': b64(ca.certPem) },
      }, { apiVersion: 'v1', kind: 'Secret', plural: 'secrets' }, { fieldManager: 'cert-manager-test', force: true });
      issued.add(c.metadata.name);
    }
    return fresh.map((c) => c.metadata.name);
  };
  const tls = { tls: { mode: 'mutual', certManager: { issuerRef: { name: 'test-issuer' } } } };
  await applyGroup(fastGroup(group, 3, tls), ns);
  const pending = await waitForGroup('Degraded=CertificatePending', (g) => conditionOf(g, 'Degraded')?.reason === 'CertificatePending');
  t.regex(conditionOf(pending, 'Degraded')!.message, /^waiting for cert-manager to issue the certificate of nodes 1, 2, 3 \(Certificate managed-node-1/);
  t.deepEqual((await issueAll()).sort(), ['managed-node-1', 'managed-node-2', 'managed-node-3']);
  const ready = await waitForGroup('the group Ready over cert-manager certificates', (g) => readyWith(g, [1, 2, 3]), 120_000);
  t.is(conditionOf(ready, 'Degraded')?.status, 'False');
  const put = await agentJson<{ persisted?: boolean }>(`${kubelet!.url(`${group}-3`)}/v1/kv/kv/cm`, { method: 'PUT', body: 'issued' });
  t.is(put.status, 200, JSON.stringify(put.body));
  const scaled = await applyGroup(fastGroup(group, 4, tls), ns);
  await waitFor('node 4\'s Certificate', async () => (await issueAll()).includes('managed-node-4'), { timeoutMs: 60_000, intervalMs: 300 });
  await waitForGroup('node 4 in the view', (g) => readyWith(g, [1, 2, 3, 4], scaled.metadata.generation), 120_000);
  await applyGroup(fastGroup(group, 3, tls), ns);
  await waitFor('node 4\'s Certificate and Secret deleted', async () => {
    const certificates = await rest!.get<{ items: CertificateObject[] }>(`/apis/cert-manager.io/v1/namespaces/${ns}/certificates`);
    const secrets = await rest!.get<{ items: { metadata: { name: string } }[] }>(`/api/v1/namespaces/${ns}/secrets`);
    return !certificates.items.some((c) => c.metadata.name === 'managed-node-4') && !secrets.items.some((x) => x.metadata.name === 'managed-node-4-tls');
  }, { timeoutMs: 90_000, intervalMs: 500 });
  passed();
});

// ---------------------------------------------------------------------------------------------------
// Scaling, rolling update, the operator killed mid-change.

/** An operator process (operator-child.ts) that the test can SIGKILL. */
class OperatorProcess {
  private readonly child: ChildProcess;
  readonly exited: Promise<void>;

  constructor(readonly name: string, namespace: string, leaseNamespace: string, portsFile: string, readonly logFile: string) {
    const fd = fs.openSync(logFile, 'a');
    this.child = spawn(process.execPath, ['--import', 'tsx', CHILD, '--namespace', namespace, '--metrics-port', '0', '--health-port', '0', '--bind-address', '127.0.0.1', '--poll-interval', '1'], {
      cwd: REPO_ROOT,
      env: { ...process.env, KUBECONFIG: cp!.kubeconfigPath, POD_NAMESPACE: leaseNamespace, POD_NAME: name, DERECHO_TEST_PORTS_FILE: portsFile },
      stdio: ['ignore', fd, fd],
    });
    fs.closeSync(fd);
    this.exited = new Promise((resolve) => this.child.once('exit', () => resolve()));
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.running) this.child.kill(signal);
    await this.exited;
  }

  tail(lines: number): string {
    return fs.existsSync(this.logFile) ? fs.readFileSync(this.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n') : '';
  }
}

/**
 * Every w-<n> key and its value, listed through one member (retried: a member the group just restarted
 * may be between processes for a moment).
 */
async function storedKeys(baseUrl: string, who: string): Promise<Map<string, string>> {
  const listed = await waitFor(`${who} to list the keys written`, async () => {
    const r = await agentJson<{ items: { key: string; value: string }[] }>(`${baseUrl}/v1/kv/kv?prefix=w-&limit=10000`);
    return r.status === 200 ? r.body : false;
  }, { timeoutMs: 60_000, intervalMs: 500 });
  return new Map(listed.items.map((item) => [item.key, item.value]));
}

/** Puts keys w-<n> through the members' kv API, one at a time, and remembers those acknowledged (HTTP 200). */
class Writer {
  readonly acknowledged = new Map<string, string>();
  failures = 0;
  private n = 0;
  private stopped = false;
  private readonly done: Promise<void>;
  phase = 'initial';
  readonly acksByPhase = new Map<string, number>();
  /** When each acknowledged write was acknowledged (Date.now()). */
  readonly ackTimes: number[] = [];
  lastError = '';

  constructor(private readonly urlOf: (nodeId: number) => string | null, private readonly members: () => number[]) {
    this.done = this.run();
  }

  private async run(): Promise<void> {
    let turn = 0;
    while (!this.stopped) {
      const ids = this.members();
      const key = `w-${String(this.n).padStart(5, '0')}`;
      const value = `value ${this.n}`;
      let acked = false;
      for (let attempt = 0; attempt < ids.length && !acked && !this.stopped; attempt++) {
        const id = ids[(turn + attempt) % ids.length]!;
        const base = this.urlOf(id);
        if (base === null) continue;
        try {
          const res = await agentJson<unknown>(`${base}/v1/kv/kv/${key}`, { method: 'PUT', body: value }, 3000);
          if (res.status === 200) acked = true;
          else {
            this.failures++;
            this.lastError = `node ${id}: HTTP ${res.status} ${JSON.stringify(res.body).slice(0, 200)}`;
          }
        } catch (e) {
          this.failures++;
          this.lastError = `node ${id}: ${e instanceof Error ? e.message : String(e)}`;
        }
      }
      turn++;
      if (acked) {
        this.acknowledged.set(key, value);
        this.ackTimes.push(Date.now());
        this.acksByPhase.set(this.phase, (this.acksByPhase.get(this.phase) ?? 0) + 1);
        this.n++;
      }
      await new Promise((r) => setTimeout(r, acked ? 40 : 200));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }
}

test.serial('scaling 3 -> 5 -> 3 -> 4 and a rolling update, with the operator killed (SIGKILL) in the middle of the scale-up, the update and the scale-down; no acknowledged write lost', async (t) => {
  if (skipped(t)) return;
  // Generous: restarted members are sometimes removed again right after they rejoin (the agent core; see
  // ADR 0007), several times in a row on a loaded machine, which stretches the rolling update.
  t.timeout(7 * 60_000, 'the scaling and rolling-update test took over 7 minutes');
  const ns = 'derecho-changes';
  const leaseNs = 'derecho-changes-system';
  const group = 'grow';
  await Promise.all([createNamespace(ns), createNamespace(leaseNs)]);
  const logs: string[] = [];
  const portsFile = path.join(workDir, 'changes-ports.json');
  const kubelet = await MockKubelet.start({ kubeConfig: cp!.kubeConfig, namespace: ns, workDir: path.join(workDir, 'kubelet-changes'), log: (line) => logs.push(line), portsFile });
  const operators: OperatorProcess[] = [];
  const startOperator = (name: string): OperatorProcess => {
    const op = new OperatorProcess(name, ns, leaseNs, portsFile, path.join(workDir, `${name}.log`));
    operators.push(op);
    return op;
  };
  let writer: Writer | null = null;
  let ok = false;
  t.teardown(async () => {
    await writer?.stop();
    if (!ok) {
      for (const op of operators) t.log(`--- ${op.name} (last 40 lines)\n${op.tail(40)}`);
      t.log(`--- kubelet\n${logs.slice(-40).join('\n')}`);
      t.log(`--- status: ${statusLine(await getGroup(ns, group).catch(() => undefined))}`);
      t.log(`--- writer: ${writer?.acknowledged.size ?? 0} acknowledged, ${writer?.failures ?? 0} failures, last error: ${writer?.lastError ?? ''}`);
      t.log(kubelet.logs(15));
    }
    await Promise.all(operators.map((op) => op.kill()));
    await kubelet.stop();
  });
  const waitForGroup = (what: string, probe: (g: Group) => boolean, timeoutMs = 90_000): Promise<Group> =>
    waitFor(what, async () => {
      const g = await getGroup(ns, group);
      return probe(g) ? g : false;
    }, { timeoutMs, intervalMs: 100 });
  // kv shards take up to 2 members at first, 3 from the scale-up on (so nodes 4 and 5 join kv shards, by
  // state transfer); events stays on 1..3.
  const manifest = (members: number, cpu = '100m', kvMax = 3): Manifest => fastGroup(group, members, {
    subgroups: [
      { name: 'kv', type: 'kv', shards: 2, minNodesPerShard: 1, maxNodesPerShard: kvMax, reservedNodeIds: [[1, 2], [3]] },
      { name: 'events', type: 'log', minNodesPerShard: 2, maxNodesPerShard: 3, reservedNodeIds: [[1, 2, 3]] },
    ],
    resources: { requests: { cpu, memory: '128Mi' }, limits: { memory: '512Mi' } },
  });
  const podName = (id: number): string => `${group}-${id}`;
  let writeMembers = [1, 2, 3];
  const urlOf = (id: number): string | null => {
    try {
      return kubelet.url(podName(id));
    } catch {
      return null;
    }
  };

  // ---- Operator A; a 3-member group; a writer.
  startOperator('operator-a');
  const tCreate = Date.now();
  await applyGroup(manifest(3, '100m', 2), ns);
  const formed = await waitForGroup('the group to be Ready with 3 members', (g) => readyWith(g, [1, 2, 3]));
  t.log(`3 members Ready ${seconds(Date.now() - tCreate)} after apply (including the operator's start): ${statusLine(formed)}`);
  writer = new Writer(urlOf, () => writeMembers);

  // ---- Scale up to 5 and raise kv's maxNodesPerShard in one apply: nodes 4 and 5 are added one at a
  // time, then nodes 1..3 restart on the new manifest. Operator A is killed as soon as it has created
  // node 4's pod.
  writer.phase = 'scale-up';
  const uidsBeforeScaleUp = new Map((await listPods(ns, group)).map((p) => [p.metadata.name, p.metadata.uid]));
  const tScaleUp = Date.now();
  const scaleUp = await applyGroup(manifest(5), ns);
  await waitFor('the pod of node 4', async () => (await listPods(ns, group)).some((p) => p.metadata.name === podName(4)), { timeoutMs: 60_000, intervalMs: 50 });
  await operators[0]!.kill();
  const tKillA = Date.now();
  t.log(`operator-a killed ${seconds(tKillA - tScaleUp)} after the scale-up was applied (node 4's pod exists)`);
  t.false((await listPods(ns, group)).some((p) => p.metadata.name === podName(5)), 'node 5 is not added before node 4 joined');
  startOperator('operator-b');
  const withFour = await waitForGroup('node 4 in the view', (g) => (g.status?.view?.members ?? []).includes(4));
  const fourInView = Date.now() - tScaleUp;
  t.false((withFour.status?.view?.members ?? []).includes(5), 'node 4 joins before node 5');
  const withFive = await waitForGroup('node 5 in the view', (g) => (g.status?.view?.members ?? []).includes(5));
  const fiveInView = Date.now() - tScaleUp;
  // Ready alone can be seen between node 5's join and the founders' restarts on the new manifest (the
  // layout then still has kv's old maxNodesPerShard): wait for the rollout to be over too.
  const five = await waitForGroup('Ready with 5 members, the rollout done', (g) => readyWith(g, [1, 2, 3, 4, 5], scaleUp.metadata.generation) && conditionOf(g, 'Progressing')?.status === 'False');
  const fiveReady = Date.now() - tScaleUp;
  t.log(`scale-up 3 -> 5 with kv maxNodesPerShard 2 -> 3: node 4 in the view ${seconds(fourInView)} after apply (view ${withFour.status!.view!.id}; operator-a killed at ${seconds(tKillA - tScaleUp)}, operator-b took over), node 5 in the view at ${seconds(fiveInView)} (view ${withFive.status!.view!.id}), Ready with nodes 1..3 restarted on the new manifest at ${seconds(fiveReady)}: ${JSON.stringify(five.status!.shards)}`);
  t.is(five.status!.currentMembers, 5);
  t.is(five.status!.desiredMembers, 5);
  t.is(five.status!.readyMembers, '5/5');
  const shardMembers = (five.status!.shards ?? []).filter((s) => s.subgroup === 'kv').flatMap((s) => s.members);
  t.true(shardMembers.includes(4) && shardMembers.includes(5), `nodes 4 and 5 serve kv shards: ${JSON.stringify(five.status!.shards)}`);
  for (const id of [4, 5]) {
    const starts = kubelet.starts.filter((s) => s.pod === podName(id));
    t.is(new Set(starts.map((s) => s.uid)).size, 1, `node ${id}'s pod was created once: ${JSON.stringify(starts)}`);
  }
  // The founders restarted once each on the new manifest, after both new members were added.
  const fiveAddedAt = kubelet.starts.find((s) => s.pod === podName(5))!.at;
  for (const id of [1, 2, 3]) {
    const newUids = new Set(kubelet.starts.filter((s) => s.pod === podName(id) && s.at > tScaleUp).map((s) => s.uid));
    t.is(newUids.size, 1, `node ${id} restarted once for the new manifest`);
    t.not([...newUids][0], uidsBeforeScaleUp.get(podName(id)));
    t.true(kubelet.starts.find((s) => s.pod === podName(id) && s.at > tScaleUp)!.at > fiveAddedAt, `node ${id} restarted after node 5 was added`);
  }
  const pvcs = async (): Promise<string[]> => (await rest!.get<{ items: { metadata: { name: string } }[] }>(`/api/v1/namespaces/${ns}/persistentvolumeclaims`)).items.map((c) => c.metadata.name).sort();
  t.deepEqual(await pvcs(), range(1, 5).map((id) => names.pvc(group, id)).sort());
  // State transfer: each new member received its kv shard's records from a member that had them.
  for (const id of [4, 5]) {
    const shard = (five.status!.shards ?? []).find((s) => s.subgroup === 'kv' && s.members.includes(id))!;
    const log = fs.readFileSync(path.join(kubelet.logDir, `${ns}_${podName(id)}.log`), 'utf8');
    const transfers = [...log.matchAll(/"msg":"installed state transfer".*"shardId":([0-9]+).*"records":([0-9]+)/g)].map((m) => ({ shardId: Number(m[1]), records: Number(m[2]) }));
    t.true(transfers.some((x) => x.shardId === shard.shard && x.records > 0), `node ${id} (kv/${shard.shard}) installed a state transfer with records: ${JSON.stringify(transfers)}`);
  }
  writeMembers = [1, 2, 3, 4, 5];

  // ---- Rolling update (a resources change restarts every pod); operator B killed after the first restart.
  writer.phase = 'rolling-update';
  const leader = five.status!.view!.members[0]!;
  const uidsBefore = new Map((await listPods(ns, group)).map((p) => [p.metadata.name, p.metadata.uid]));
  const hashesBefore = new Map((await listPods(ns, group)).map((p) => [p.metadata.name, p.metadata.annotations?.[ANNOTATION.configHash]]));
  const tUpdate = Date.now();
  const updated = await applyGroup(manifest(5, '150m'), ns);
  t.is(updated.metadata.generation, scaleUp.metadata.generation + 1);
  await waitFor('the first member pod to be restarted', async () => kubelet.starts.some((s) => s.at > tUpdate), { timeoutMs: 60_000, intervalMs: 50 });
  const first = kubelet.starts.find((s) => s.at > tUpdate)!;
  await operators[1]!.kill();
  const tKillB = Date.now();
  t.log(`operator-b killed ${seconds(tKillB - tUpdate)} after the update was applied (${first.pod} restarted)`);
  startOperator('operator-c');
  const rolled = await waitForGroup('Ready with every pod on the new spec', (g) => readyWith(g, [1, 2, 3, 4, 5], updated.metadata.generation), 240_000);
  const updateMs = Date.now() - tUpdate;
  const podsAfter = await listPods(ns, group);
  t.is(podsAfter.length, 5);
  for (const pod of podsAfter) {
    // (The hash covers the member's own pod spec: one per member.)
    t.not(pod.metadata.annotations?.[ANNOTATION.configHash], hashesBefore.get(pod.metadata.name), `${pod.metadata.name} runs the new spec`);
    t.not(pod.metadata.uid, uidsBefore.get(pod.metadata.name), `${pod.metadata.name} was restarted`);
  }
  // Exactly one restart per member: one new pod each, the first start of each new pod in order.
  const newStarts = kubelet.starts.filter((s) => s.at > tUpdate);
  const order: string[] = [];
  for (const s of newStarts) if (!order.includes(s.pod)) order.push(s.pod);
  for (const id of range(1, 5)) {
    t.deepEqual([...new Set(newStarts.filter((s) => s.pod === podName(id)).map((s) => s.uid))], [podsAfter.find((p) => p.metadata.name === podName(id))!.metadata.uid], `node ${id} was restarted exactly once`);
  }
  t.is(order.at(-1), podName(leader), `the leader (node ${leader}) is restarted last: ${order.join(', ')}`);
  // One at a time: a pod's downtime (SIGTERM to its replacement's start) never overlaps another's.
  const downtimes = range(1, 5).map((id) => {
    const stop = kubelet.terminations.find((s) => s.pod === podName(id) && s.uid === uidsBefore.get(podName(id)))!;
    const start = newStarts.find((s) => s.pod === podName(id))!;
    return { id, from: stop.at, to: start.at };
  }).sort((a, b) => a.from - b.from);
  for (let i = 1; i < downtimes.length; i++) {
    t.true(downtimes[i]!.from >= downtimes[i - 1]!.to, `node ${downtimes[i]!.id} went down after node ${downtimes[i - 1]!.id} was back: ${JSON.stringify(downtimes)}`);
  }
  // Each agent stops on SIGTERM, within the grace period (the kubelet's SIGKILL is a hang).
  const stops = kubelet.terminations.filter((s) => s.at > tUpdate);
  t.deepEqual(stops.filter((s) => s.forced).map((s) => s.pod), [], `every agent exited on SIGTERM: ${JSON.stringify(stops)}`);
  t.log(`rolling update: SIGTERM to exit ${stops.map((s) => `${s.pod} ${s.stoppedMs ?? '?'} ms`).join(', ')}`);
  t.log(`rolling update: Ready on generation ${updated.metadata.generation} ${seconds(updateMs)} after apply (operator-b killed at ${seconds(tKillB - tUpdate)}); restart order ${order.join(', ')}; view ${rolled.status!.view!.id}`);

  // ---- Scale down to 3: node 5 then node 4 removed; their volumes kept. Operator C is killed as soon as
  // node 5's pod is going; operator D finishes the change.
  writer.phase = 'scale-down';
  writeMembers = [1, 2, 3];
  const tScaleDown = Date.now();
  const scaleDown = await applyGroup(manifest(3, '150m'), ns);
  await waitFor('node 5 to be stopped', () => kubelet.terminations.some((s) => s.at > tScaleDown), { timeoutMs: 60_000, intervalMs: 50 });
  await operators[2]!.kill();
  const tKillC = Date.now();
  startOperator('operator-d');
  const three = await waitForGroup('Ready with 3 members', (g) => readyWith(g, [1, 2, 3], scaleDown.metadata.generation) && g.status?.currentMembers === 3);
  const downMs = Date.now() - tScaleDown;
  await waitFor('only the pods of nodes 1..3', async () => sameSet((await listPods(ns, group)).map((p) => Number(p.metadata.name.slice(group.length + 1))), [1, 2, 3]), { timeoutMs: 30_000 });
  const removed = kubelet.terminations.filter((s) => s.at > tScaleDown).map((s) => s.pod);
  t.deepEqual(removed, [podName(5), podName(4)], 'the highest id goes first, one at a time');
  t.deepEqual(await pvcs(), range(1, 5).map((id) => names.pvc(group, id)).sort(), 'volumes are kept (storage.retention "retain")');
  t.log(`scale-down 5 -> 3: Ready in view ${three.status!.view!.id} ${seconds(downMs)} after apply (operator-c killed at ${seconds(tKillC - tScaleDown)}, operator-d took over)`);

  // ---- Back to 4: node 4 comes back on its retained volume (saved state of an old view) and catches up.
  writer.phase = 'scale-up-again';
  const tAgain = Date.now();
  const again = await applyGroup(manifest(4, '150m'), ns);
  const four = await waitForGroup('Ready with 4 members again', (g) => readyWith(g, [1, 2, 3, 4], again.metadata.generation) && g.status?.currentMembers === 4);
  t.log(`scale-up 3 -> 4 on node 4's retained volume: Ready in view ${four.status!.view!.id} ${seconds(Date.now() - tAgain)} after apply`);
  const fourLog = fs.readFileSync(path.join(kubelet.logDir, `${ns}_${podName(4)}.log`), 'utf8');
  t.regex(fourLog.slice(fourLog.lastIndexOf('--- mock kubelet: starting pod')), /"msg":"agent started".*"start":"restart"/, 'node 4 started from its saved state');
  writeMembers = [1, 2, 3, 4];

  // ---- Every acknowledged write is there, through every member.
  writer.phase = 'after';
  await waitFor('writes after the last change', () => (writer!.acksByPhase.get('after') ?? 0) > 3, { timeoutMs: 30_000 });
  await writer.stop();
  // Available throughout: writes kept being acknowledged (the longest wait is a view change or two).
  const gaps = writer.ackTimes.slice(1).map((at, i) => at - writer!.ackTimes[i]!);
  const longestGapMs = Math.max(0, ...gaps);
  for (const phase of ['scale-up', 'rolling-update']) t.true((writer.acksByPhase.get(phase) ?? 0) > 0, `writes were acknowledged during ${phase}`);
  t.true(longestGapMs < 20_000, `the longest time without an acknowledged write was ${longestGapMs} ms`);
  t.log(`writer: ${writer.acknowledged.size} writes acknowledged (${[...writer.acksByPhase].map(([p, n]) => `${p} ${n}`).join(', ')}), longest time without one ${seconds(longestGapMs)}, ${writer.failures} failed attempts (last: ${writer.lastError || '-'})`);
  for (const id of [1, 2, 3, 4]) {
    const stored = await storedKeys(urlOf(id)!, `node ${id}`);
    const lost = [...writer.acknowledged].filter(([key, value]) => stored.get(key) !== value).map(([key]) => key);
    t.deepEqual(lost, [], `node ${id}: every acknowledged write is there`);
  }
  ok = true;
});

/**
 * A rolling update (a resources change) of `spec` under a writer: the update completes, every pod restarts,
 * no acknowledged write is lost. Returns the RollingRestart events and the longest time without an
 * acknowledged write.
 */
async function rollingUpdate(t: ExecutionContext, ns: string, group: string, spec: (extra?: Record<string, unknown>) => Manifest, tag: string): Promise<{ rollEvents: { type: string; message: string }[]; longestGapMs: number; formed: Group }> {
  await createNamespace(ns);
  const { kubelet: started, waitForGroup, passed } = await operatorFor(t, ns, group, tag);
  const kubelet = started!;
  let writer: Writer | null = null;
  t.teardown(async () => {
    await writer?.stop();
  });
  await applyGroup(spec(), ns);
  const formed = await waitForGroup('the group to be Ready', (g) => readyWith(g, [1, 2, 3]));
  writer = new Writer((id) => {
    try {
      return kubelet.url(`${group}-${id}`);
    } catch {
      return null;
    }
  }, () => [1, 2, 3]);
  await waitFor('a first write', () => writer!.acknowledged.size > 0, { timeoutMs: 20_000 });
  const tUpdate = Date.now();
  const startsBefore = kubelet.starts.length;
  const updated = await applyGroup(spec({ resources: { requests: { cpu: '150m', memory: '128Mi' } } }), ns);
  const rolled = await waitForGroup('Ready on the new spec', (g) => readyWith(g, [1, 2, 3], updated.metadata.generation), 150_000);
  const updateMs = Date.now() - tUpdate;
  t.deepEqual([...new Set(kubelet.starts.slice(startsBefore).map((s) => s.pod))].sort(), [1, 2, 3].map((id) => `${group}-${id}`), 'every pod restarted');
  const acksBefore = writer.acknowledged.size;
  await waitFor('writes after the update', () => writer!.acknowledged.size > acksBefore + 3, { timeoutMs: 30_000 });
  await writer.stop();
  const gaps = writer.ackTimes.slice(1).map((at, i) => at - writer!.ackTimes[i]!);
  const longestGapMs = Math.max(0, ...gaps);
  t.log(`rolling update: Ready on generation ${updated.metadata.generation} in view ${rolled.status!.view!.id} ${seconds(updateMs)} after apply; longest time without an acknowledged write ${seconds(longestGapMs)}; ${writer.acknowledged.size} writes acknowledged`);
  for (const id of [1, 2, 3]) {
    const stored = await storedKeys(kubelet.url(`${group}-${id}`), `node ${id}`);
    t.deepEqual([...writer.acknowledged].filter(([key, value]) => stored.get(key) !== value).map(([key]) => key), [], `node ${id}: every acknowledged write is there`);
  }
  const events = await rest!.get<{ items: { type: string; reason: string; message: string }[] }>(`/api/v1/namespaces/${ns}/events?fieldSelector=${encodeURIComponent(`involvedObject.name=${group}`)}`);
  passed();
  return { rollEvents: events.items.filter((e) => e.reason === 'RollingRestart'), longestGapMs, formed };
}

test.serial('a rolling update of examples/kv-overlap.yaml, whose kv shard 1 has one member: a Warning says the group stops while it restarts; the update completes and no acknowledged write is lost', async (t) => {
  if (skipped(t)) return;
  t.timeout(3 * 60_000);
  const { rollEvents, formed } = await rollingUpdate(t, 'derecho-sole', 'example', (extra) => fastGroup('example', 3, extra), 'sole');
  t.deepEqual(formed.status!.shards!.find((s) => s.subgroup === 'kv' && s.shard === 1)?.members, [3], 'kv/1 lives on node 3 alone');
  const warning = rollEvents.find((e) => e.type === 'Warning');
  t.regex(warning?.message ?? '', /^restarting node 3 .*node 3 is the only member of shard kv\/1: the group cannot change views without it/);
});

test.serial('examples/kv-group.yaml as is has no single point of failure: no member holds a shard alone (no sole-member budget), and a rolling update restarts every pod with no Warning and no lost write (issue 15 finding 8)', async (t) => {
  if (skipped(t)) return;
  t.timeout(3 * 60_000);
  const ns = 'derecho-flagship';
  const group = 'kv-demo';
  // The example file unchanged but for a faster failure detector (this machine runs the control plane too).
  const flagship = (extra: Record<string, unknown> = {}): Manifest => {
    const example = exampleManifest();
    return { ...example, spec: { ...example.spec, timing: { tickMs: 20, heartbeatMs: 40, suspectMs: 1500 }, ...extra } };
  };
  const { rollEvents, longestGapMs, formed } = await rollingUpdate(t, ns, group, flagship, 'flagship');
  t.deepEqual(formed.status!.shards!.map((s) => [`${s.subgroup}/${s.shard}`, s.members]), [['kv/0', [1, 2, 3]], ['events/0', [1, 2, 3]]]);
  const budgets = await rest!.get<{ items: { metadata: { name: string } }[] }>(`/apis/policy/v1/namespaces/${ns}/poddisruptionbudgets`);
  t.deepEqual(budgets.items.map((b) => b.metadata.name), [group], 'only the majority budget: no member holds a shard alone');
  t.is(rollEvents.length, 3, 'a RollingRestart event per member');
  t.deepEqual(rollEvents.filter((e) => e.type !== 'Normal').map((e) => e.message), [], 'no restart stops the group');
  t.log(`flagship example: the longest time without an acknowledged write during the roll was ${seconds(longestGapMs)}`);
});
