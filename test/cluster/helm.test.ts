// The derecho-operator Helm chart (charts/derecho-operator), with the helm binary the cluster tools build
// (test/cluster/tools.ts) and a real kube-apiserver (ControlPlane):
//  - the chart's copy of the CRD is the generated crds/ file, and the templated CRD equals it (no drift);
//  - `helm lint --strict` passes; `helm template` renders the defaults (Deployment, RBAC, Service, PDB),
//    the RDMA shared device plugin (DaemonSet + device-selection ConfigMap advertising the resource the
//    operator requests), a watchNamespaces install (a Role per listed namespace instead of a ClusterRole;
//    the deprecated watchNamespace merged into the list), and refuses bad values with a schema error
//    naming the field;
//  - the operator's RBAC covers exactly what reconcile() emits (kinds applied, kinds deleted) and the
//    controller's requests (informers: list and watch; named Secrets: get), and not one verb more;
//  - `helm install` into the API server: every rendered object passes strict server-side validation, the
//    CRD, Deployment and RBAC exist, and the operator's ServiceAccount can do what the operator does (it
//    applies reconcile's real output for examples/kv-group.yaml, patches status and finalizers, records
//    Events, holds a Lease) and cannot do what it does not need; `helm upgrade` updates the CRD and scopes
//    RBAC to watchNamespace; `helm uninstall` keeps the CRD. Pods stay Pending (there is no kubelet);
//  - the real operator process, with the Deployment's arguments, as its ServiceAccount under the chart's
//    RBAC (and the OwnerReferencesPermissionEnforcement admission plugin): cluster-wide, and with
//    watchNamespaces [team-a, team-b], where it reconciles the groups of both, leaves a group in team-c
//    alone, and may read no Secret nor create a pod in team-c or cluster-wide.
//
// Skipped (with a log line) only when Go or the module proxy is missing and CI is not set, as the
// control-plane test is.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import {
  ApiextensionsV1Api, AppsV1Api, AuthorizationV1Api, CoordinationV1Api, CoreV1Api, CustomObjectsApi, KubernetesObjectApi,
  PatchStrategy, RbacAuthorizationV1Api, V1MicroTime, setHeaderOptions,
} from '@kubernetes/client-node';
import type { KubeConfig, KubernetesObject } from '@kubernetes/client-node';
import YAML from 'yaml';
import { x509Issuer } from '../../operator/src/certs.ts';
import { UNWATCHED_TYPES } from '../../operator/src/controller.ts';
import { CRD_GROUP, CRD_NAME, CRD_PLURAL, CRD_VERSION } from '../../operator/src/kube.ts';
import type { KubeObject, ObservedConfigMap, ObservedPod, ObservedPvc, ObservedSecret } from '../../operator/src/kube.ts';
import { DEFAULT_OPTIONS, reconcile } from '../../operator/src/reconcile.ts';
import type { DerechoGroupResource, ReconcileOutput } from '../../operator/src/reconcile.ts';
import { CLIENT_TOKEN, HMAC_KEY, NOW, kvDemo } from '../../operator/src/test-support.ts';
import { parseFlags } from '../../operator/src/main.ts';
import { ControlPlane, describeError, runHelm, statusCode } from './control-plane.ts';
import { ClusterToolsUnavailable, ensureClusterTools } from './tools.ts';
import type { ClusterTools } from './tools.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CHART = path.join(ROOT, 'charts', 'derecho-operator');
const CRD_SOURCE = path.join(ROOT, 'crds', `${CRD_NAME}.yaml`);
const CRD_COPY = path.join(CHART, 'files', 'crds', `${CRD_NAME}.yaml`);
const EXAMPLE = path.join(ROOT, 'examples', 'kv-group.yaml');

// The release as the tests install it: named like the chart, so objects are called "derecho-operator".
const RELEASE = 'derecho-operator';
const NAMESPACE = 'derecho-system';
const FULLNAME = 'derecho-operator';
const SA_USER = `system:serviceaccount:${NAMESPACE}:${FULLNAME}`;
const SA_GROUPS = ['system:serviceaccounts', `system:serviceaccounts:${NAMESPACE}`, 'system:authenticated'];

interface Obj extends KubernetesObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: unknown;
}

interface Rule { apiGroups?: string[]; resources?: string[]; verbs: string[]; resourceNames?: string[] }

// ---------------------------------------------------------------------------------------------------
// Tools, helm and rendering.

let toolsPromise: Promise<ClusterTools> | null = null;
const helmHome = fs.mkdtempSync(path.join(os.tmpdir(), 'derecho-helm-test-'));
test.after.always(() => fs.rmSync(helmHome, { recursive: true, force: true }));

/** The cluster tools, or null (the test then passes with a log line) where they cannot be built. */
async function clusterTools(t: ExecutionContext): Promise<ClusterTools | null> {
  toolsPromise ??= ensureClusterTools((line) => console.log(`[cluster-tools] ${line}`));
  try {
    return await toolsPromise;
  } catch (e) {
    if (e instanceof ClusterToolsUnavailable && !process.env.CI) {
      t.log(`SKIPPED: helm cannot be built here: ${e.message}`);
      t.pass();
      return null;
    }
    throw e;
  }
}

function helm(tools: ClusterTools, args: string[]): Promise<string> {
  return runHelm(tools.helm, args, { home: helmHome });
}

/** Parses a multi-document YAML stream strictly (duplicate keys and syntax errors throw). */
function parseDocuments(text: string): Obj[] {
  const out: Obj[] = [];
  for (const doc of YAML.parseAllDocuments(text, { uniqueKeys: true })) {
    if (doc.errors.length > 0) throw new Error(`invalid YAML from helm: ${doc.errors.map((e) => e.message).join('; ')}`);
    const value = doc.toJS() as Obj | null;
    if (value !== null) out.push(value);
  }
  return out;
}

async function render(tools: ClusterTools, args: string[] = [], chart = CHART): Promise<Obj[]> {
  return parseDocuments(await helm(tools, ['template', RELEASE, chart, '--namespace', NAMESPACE, ...args]));
}

function one(objects: Obj[], kind: string, name?: string): Obj {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  if (found.length !== 1) throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length}: ${objects.map((o) => `${o.kind}/${o.metadata.name}`).join(', ')}`);
  return found[0]!;
}

const kinds = (objects: Obj[]): string[] => objects.map((o) => `${o.kind}/${o.metadata.name}`).sort();

interface Container {
  name: string;
  image: string;
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[];
  ports?: { name: string; containerPort: number }[];
  securityContext?: Record<string, unknown>;
  livenessProbe?: { httpGet?: { path: string; port: string | number } };
  readinessProbe?: { httpGet?: { path: string; port: string | number } };
  startupProbe?: { httpGet?: { path: string; port: string | number } };
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
}

interface PodTemplate {
  metadata: { labels: Record<string, string>; annotations?: Record<string, string> };
  spec: {
    serviceAccountName?: string;
    securityContext?: Record<string, unknown>;
    containers: Container[];
    volumes?: { name: string; emptyDir?: unknown; hostPath?: { path: string }; configMap?: { name: string } }[];
    hostNetwork?: boolean;
  };
}

const podTemplate = (o: Obj): PodTemplate => (o.spec as { template: PodTemplate }).template;

// ---------------------------------------------------------------------------------------------------
// What the operator needs, from reconcile() itself.

const RESOURCE_OF: Record<string, { group: string; resource: string }> = {
  Pod: { group: '', resource: 'pods' },
  PersistentVolumeClaim: { group: '', resource: 'persistentvolumeclaims' },
  Service: { group: '', resource: 'services' },
  ConfigMap: { group: '', resource: 'configmaps' },
  Secret: { group: '', resource: 'secrets' },
  PodDisruptionBudget: { group: 'policy', resource: 'poddisruptionbudgets' },
  NetworkPolicy: { group: 'networking.k8s.io', resource: 'networkpolicies' },
  // Applied and deleted, never watched (controller.ts UNWATCHED_TYPES): only with tls.certManager.
  Certificate: { group: 'cert-manager.io', resource: 'certificates' },
};

function resourceOf(kind: string): { group: string; resource: string } {
  const r = RESOURCE_OF[kind];
  if (!r) throw new Error(`reconcile() emits ${kind}: add it to the chart's RBAC (templates/rbac.yaml) and to RESOURCE_OF in this test`);
  return r;
}

/** The first reconcile of examples/kv-group.yaml (fresh group), and the one that deletes it (volumes too). */
function reconcileSamples(): { create: ReconcileOutput; remove: ReconcileOutput } {
  const group = kvDemo({ storage: { size: '1Gi', retention: 'delete' } });
  const create = reconcile({ group, observed: {}, reports: {}, now: NOW, random: { hmacKey: HMAC_KEY, clientToken: CLIENT_TOKEN }, issuer: x509Issuer });
  let uid = 0;
  const withUid = <T extends KubeObject>(o: KubeObject): T => ({ ...structuredClone(o), metadata: { ...o.metadata, uid: `uid-${++uid}` } }) as T;
  const of = <T extends KubeObject>(kind: string): T[] => create.objects.filter((o) => o.kind === kind).map((o) => withUid<T>(o));
  const remove = reconcile({
    group: { ...group, metadata: { ...group.metadata, deletionTimestamp: NOW } },
    observed: { pods: of<ObservedPod>('Pod'), pvcs: of<ObservedPvc>('PersistentVolumeClaim'), configMaps: of<ObservedConfigMap>('ConfigMap'), secrets: of<ObservedSecret>('Secret') },
    reports: {},
    now: NOW,
    random: { clientToken: CLIENT_TOKEN },
    issuer: x509Issuer,
  });
  // A budget for a member that no longer holds a shard alone (here node 9, not a member) is deleted.
  const budget = of<KubeObject>('PodDisruptionBudget').find((o) => o.metadata.name.endsWith('-sole'))!;
  const stale = reconcile({
    group, reports: {}, now: NOW, random: { hmacKey: HMAC_KEY, clientToken: CLIENT_TOKEN }, issuer: x509Issuer,
    observed: { podDisruptionBudgets: [{ ...budget, metadata: { ...budget.metadata, name: 'kv-demo-9-sole', labels: { ...budget.metadata.labels, 'derecho.dev/node-id': '9' } } }] },
  });
  // A member certificate the operator issued for a node that is no longer a member (node 9) is deleted.
  const secure = kvDemo({ tls: { mode: 'mutual' } });
  const issued = reconcile({ group: secure, observed: {}, reports: {}, now: NOW, random: { clientToken: CLIENT_TOKEN }, issuer: x509Issuer });
  const certificate = issued.objects.find((o) => o.kind === 'Secret' && o.metadata.name === 'kv-demo-node-1-tls')!;
  const shrunk = reconcile({
    group: secure, reports: {}, now: NOW, random: { clientToken: CLIENT_TOKEN }, issuer: x509Issuer,
    observed: { secrets: [withUid<ObservedSecret>({ ...certificate, metadata: { ...certificate.metadata, name: 'kv-demo-node-9-tls', labels: { ...certificate.metadata.labels, 'derecho.dev/node-id': '9' } } })] },
  });
  if (!shrunk.deletes.some((d) => d.kind === 'Secret')) throw new Error('the scale-down sample deletes no certificate');
  // With cert-manager: a Certificate per member, and node 9's deleted.
  const managed = kvDemo({ tls: { mode: 'mutual', certManager: { issuerRef: { name: 'group-ca' } } } });
  const requested = reconcile({ group: managed, observed: {}, reports: {}, now: NOW, random: { clientToken: CLIENT_TOKEN }, issuer: x509Issuer });
  const managedShrunk = reconcile({
    group: managed, reports: {}, now: NOW, random: { clientToken: CLIENT_TOKEN }, issuer: x509Issuer,
    observed: { secrets: [withUid<ObservedSecret>({ ...certificate, metadata: { ...certificate.metadata, name: 'kv-demo-node-9-tls', labels: { ...certificate.metadata.labels, 'derecho.dev/node-id': '9' } } })] },
  });
  if (!managedShrunk.deletes.some((d) => d.kind === 'Certificate')) throw new Error('the cert-manager scale-down sample deletes no Certificate');
  return {
    create: { ...create, objects: [...create.objects, ...requested.objects.filter((o) => o.kind === 'Certificate')] },
    remove: { ...remove, deletes: [...remove.deletes, ...stale.deletes, ...shrunk.deletes, ...managedShrunk.deletes] },
  };
}

/** "group/resource" -> verbs the operator uses. */
function operatorNeeds(): Map<string, Set<string>> {
  const needs = new Map<string, Set<string>>();
  const add = (group: string, resource: string, ...verbs: string[]) => {
    const key = `${group}/${resource}`;
    const set = needs.get(key) ?? new Set<string>();
    for (const v of verbs) set.add(v);
    needs.set(key, set);
  };
  // The controller (operator/src/controller.ts): informers on groups (list, watch), the finalizer by merge
  // patch, status by server-side apply of /status, owner references to groups with blockOwnerDeletion
  // (update of /finalizers, for OwnerReferencesPermissionEnforcement), core/v1 Events (repeats are
  // patched), and the Secrets a group names read one by one (get; the only object read by name).
  add(CRD_GROUP, CRD_PLURAL, 'list', 'watch', 'patch');
  add(CRD_GROUP, `${CRD_PLURAL}/status`, 'patch');
  add(CRD_GROUP, `${CRD_PLURAL}/finalizers`, 'update');
  add('', 'events', 'create', 'patch');
  add('', 'secrets', 'get');
  const { create, remove } = reconcileSamples();
  for (const o of create.objects) {
    const { group, resource } = resourceOf(o.kind);
    if (UNWATCHED_TYPES[o.kind] !== undefined) add(group, resource, 'create', 'patch'); // server-side apply only
    else add(group, resource, 'list', 'watch', 'create', 'patch'); // server-side apply, informers
  }
  for (const ref of [...create.deletes, ...remove.deletes]) {
    const { group, resource } = resourceOf(ref.kind);
    add(group, resource, 'delete');
  }
  return needs;
}


function grants(rules: Rule[]): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const rule of rules) {
    for (const group of rule.apiGroups ?? []) {
      for (const resource of rule.resources ?? []) {
        const key = `${group}/${resource}`;
        const set = out.get(key) ?? new Set<string>();
        for (const verb of rule.verbs) set.add(verb);
        out.set(key, set);
      }
    }
  }
  return out;
}

function checkOperatorRules(t: ExecutionContext, rules: Rule[], where: string): void {
  t.false(rules.some((r) => [...(r.apiGroups ?? []), ...(r.resources ?? []), ...r.verbs].includes('*')), `${where}: no wildcards`);
  t.false(rules.some((r) => r.resourceNames !== undefined), `${where}: no resourceNames (names are per group)`);
  const granted = grants(rules);
  const needs = operatorNeeds();
  for (const [key, verbs] of needs) {
    for (const verb of verbs) t.true(granted.get(key)?.has(verb) === true, `${where}: the operator may ${verb} ${key}`);
  }
  for (const [key, verbs] of granted) {
    const allowed = needs.get(key) ?? new Set<string>();
    const extra = [...verbs].filter((v) => !allowed.has(v));
    t.deepEqual(extra, [], `${where}: ${key} grants only what the operator uses`);
  }
}

// ---------------------------------------------------------------------------------------------------
// Without helm.

test('the chart\'s copy of the CRD is the generated crds/ file', (t) => {
  const copy = fs.existsSync(CRD_COPY) ? fs.readFileSync(CRD_COPY, 'utf8') : '(missing)';
  t.true(copy === fs.readFileSync(CRD_SOURCE, 'utf8'),
    `charts/derecho-operator/files/crds/${CRD_NAME}.yaml is stale: after \`npm run gen:crd\`, run node charts/sync-crds.mjs`);
});

test('reconcile() emits only kinds the chart\'s RBAC knows, and deletes only pods, volumes, stale sole-member budgets and removed members\' certificates (Secrets, cert-manager Certificates)', (t) => {
  const { create, remove } = reconcileSamples();
  const applied = [...new Set(create.objects.map((o) => o.kind))].sort();
  t.deepEqual(applied, Object.keys(RESOURCE_OF).sort(), 'a fresh group gets every kind the RBAC covers');
  const deleted = [...new Set([...create.deletes, ...remove.deletes].map((r) => r.kind))].sort();
  t.deepEqual(deleted, ['Certificate', 'PersistentVolumeClaim', 'Pod', 'PodDisruptionBudget', 'Secret']);
  t.true([...create.deletes, ...remove.deletes].filter((r) => r.kind === 'PodDisruptionBudget').every((r) => r.name.endsWith('-sole')), 'only budgets of sole shard members');
  t.true([...create.deletes, ...remove.deletes].filter((r) => r.kind === 'Secret').every((r) => /-node-\d+-tls$/.test(r.name)), 'only certificates of members that are gone');
  t.true([...create.deletes, ...remove.deletes].filter((r) => r.kind === 'Certificate').every((r) => /-node-\d+$/.test(r.name)), 'only Certificates of members that are gone');
});

// ---------------------------------------------------------------------------------------------------
// helm lint and helm template.

test('helm lint --strict passes with the defaults and with every optional part on', async (t) => {
  const tools = await clusterTools(t);
  if (!tools) return;
  const variants = [
    [],
    ['--set', 'rdmaDevicePlugin.enabled=true', '--set', 'serviceMonitor.enabled=true'],
    ['--set', 'watchNamespace=apps'],
    ['--set-json', 'watchNamespaces=["apps","team-b"]'],
    ['--set', 'replicas=1', '--set', 'leaderElection.enabled=false', '--set', 'crds.install=false', '--set', 'rbac.create=false', '--set', 'serviceAccount.create=false', '--set', 'serviceAccount.name=existing'],
  ];
  for (const args of variants) {
    const out = await helm(tools, ['lint', CHART, '--strict', ...args]);
    t.regex(out, /1 chart\(s\) linted, 0 chart\(s\) failed/, `helm lint ${args.join(' ')}`);
  }
});

test('helm template with the defaults: CRD, Deployment, ServiceAccount, ClusterRole, Service, PDB', async (t) => {
  const tools = await clusterTools(t);
  if (!tools) return;
  const objects = await render(tools);
  t.deepEqual(kinds(objects), [
    `ClusterRole/${FULLNAME}`, `ClusterRole/${FULLNAME}-edit`, `ClusterRole/${FULLNAME}-view`, `ClusterRoleBinding/${FULLNAME}`,
    `CustomResourceDefinition/${CRD_NAME}`, `Deployment/${FULLNAME}`, `PodDisruptionBudget/${FULLNAME}`,
    `Role/${FULLNAME}-leader-election`, `RoleBinding/${FULLNAME}-leader-election`, `Service/${FULLNAME}-metrics`, `ServiceAccount/${FULLNAME}`,
  ]);
  for (const o of objects.filter((o) => !['CustomResourceDefinition', 'ClusterRole', 'ClusterRoleBinding'].includes(o.kind))) {
    t.is(o.metadata.namespace, NAMESPACE, `${o.kind}/${o.metadata.name} in the release namespace`);
  }

  // The CRD: the generated file, plus the keep annotation, and nothing else changed.
  const crd = one(objects, 'CustomResourceDefinition');
  t.is(crd.metadata.annotations?.['helm.sh/resource-policy'], 'keep');
  const source = YAML.parse(fs.readFileSync(CRD_SOURCE, 'utf8')) as Obj;
  const { annotations, ...metadata } = crd.metadata;
  t.deepEqual(annotations, { 'helm.sh/resource-policy': 'keep' });
  t.deepEqual({ ...crd, metadata }, source, 'the templated CRD is crds/derechogroups.derecho.dev.yaml');

  // The Deployment.
  const deployment = one(objects, 'Deployment');
  t.is((deployment.spec as { replicas: number }).replicas, 2);
  const pod = podTemplate(deployment);
  t.is(pod.spec.serviceAccountName, FULLNAME);
  t.like(pod.spec.securityContext, { runAsNonRoot: true, runAsUser: DEFAULT_OPTIONS.runAsUser, seccompProfile: { type: 'RuntimeDefault' } });
  t.is(pod.spec.containers.length, 1);
  const c = pod.spec.containers[0]!;
  t.is(c.image, 'ghcr.io/derecho-ts/operator:0.1.0', 'the chart\'s appVersion');
  t.like(c.securityContext, { runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] }, seccompProfile: { type: 'RuntimeDefault' } });
  t.deepEqual(c.args, [
    '--leader-elect=true', '--lease-name', FULLNAME, '--metrics-port', '8081', '--health-port', '8082',
    '--rdma-resource-name', DEFAULT_OPTIONS.rdmaResourceName, '--agent-image', 'ghcr.io/derecho-ts/node-agent:0.1.0', '--log-level', 'info',
  ]);
  t.is(DEFAULT_OPTIONS.agentImage, 'ghcr.io/derecho-ts/node-agent:0.1.0', 'the chart\'s default agent image is the operator\'s own');
  t.deepEqual(c.env?.map((e) => [e.name, e.valueFrom?.fieldRef?.fieldPath]), [['POD_NAMESPACE', 'metadata.namespace'], ['POD_NAME', 'metadata.name']]);
  t.deepEqual(c.ports?.map((p) => [p.name, p.containerPort]), [['metrics', 8081], ['health', 8082]]);
  t.deepEqual(c.livenessProbe?.httpGet, { path: '/healthz', port: 'health' });
  t.deepEqual(c.readinessProbe?.httpGet, { path: '/readyz', port: 'health' });
  t.deepEqual(c.startupProbe?.httpGet, { path: '/healthz', port: 'health' });
  t.truthy(c.resources?.requests?.cpu && c.resources.requests.memory && c.resources.limits?.memory, 'requests and a memory limit');
  t.deepEqual(c.volumeMounts, [{ name: 'tmp', mountPath: '/tmp' }], 'the only writable path');
  t.truthy(pod.spec.volumes?.find((v) => v.name === 'tmp')?.emptyDir);
  const selector = (deployment.spec as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels;
  t.like(pod.metadata.labels, selector);

  // RBAC: a ClusterRole with exactly what reconcile() needs, bound to the ServiceAccount; a Lease Role.
  checkOperatorRules(t, one(objects, 'ClusterRole', FULLNAME).rules as Rule[], 'ClusterRole');
  const binding = one(objects, 'ClusterRoleBinding');
  t.deepEqual(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: FULLNAME });
  t.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: FULLNAME, namespace: NAMESPACE }]);
  t.deepEqual(one(objects, 'Role').rules, [
    { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['create'] },
    { apiGroups: ['coordination.k8s.io'], resources: ['leases'], resourceNames: [FULLNAME], verbs: ['get', 'update'] },
  ], 'the operator reads, creates and renews (update) its own Lease');
  t.is(one(objects, 'RoleBinding').metadata.namespace, NAMESPACE);
  t.is(one(objects, 'ClusterRole', `${FULLNAME}-edit`).metadata.labels?.['rbac.authorization.k8s.io/aggregate-to-edit'], 'true');

  // Metrics Service and the PDB select the operator's pods.
  const service = one(objects, 'Service');
  t.deepEqual((service.spec as { selector: Record<string, string> }).selector, selector);
  t.deepEqual((service.spec as { ports: unknown[] }).ports, [{ name: 'metrics', port: 8081, targetPort: 'metrics', protocol: 'TCP' }]);
  const pdb = one(objects, 'PodDisruptionBudget');
  t.deepEqual(pdb.spec, { maxUnavailable: 1, selector: { matchLabels: selector } });
});

test('helm template: optional parts and overrides', async (t) => {
  const tools = await clusterTools(t);
  if (!tools) return;
  const [single, monitored, noCrd, pinned, extra] = await Promise.all([
    render(tools, ['--set', 'replicas=1', '--set', 'leaderElection.enabled=false']),
    render(tools, ['--set', 'serviceMonitor.enabled=true', '--set', 'serviceMonitor.labels.release=prometheus']),
    render(tools, ['--set', 'crds.install=false']),
    render(tools, ['--set', `image.digest=sha256:${'a'.repeat(64)}`, '--set', 'image.tag=ignored']),
    render(tools, ['--set-json', 'extraArgs=["--log-level","debug"]', '--set-json', 'extraEnv=[{"name":"X","value":"1"}]', '--set', 'crds.keep=false']),
  ]);
  t.false(single.some((o) => o.kind === 'PodDisruptionBudget'), 'no PDB over a single replica');
  t.false(single.some((o) => o.kind === 'Role' || o.kind === 'RoleBinding'), 'no Lease Role without leader election');
  t.deepEqual(podTemplate(one(single, 'Deployment')).spec.containers[0]!.args?.slice(0, 1), ['--leader-elect=false']);
  const monitor = one(monitored, 'ServiceMonitor');
  t.is(monitor.apiVersion, 'monitoring.coreos.com/v1');
  t.is(monitor.metadata.labels?.release, 'prometheus');
  t.like(monitor.spec, { endpoints: [{ port: 'metrics', path: '/metrics' }] });
  t.false(noCrd.some((o) => o.kind === 'CustomResourceDefinition'));
  t.is(podTemplate(one(pinned, 'Deployment')).spec.containers[0]!.image, `ghcr.io/derecho-ts/operator@sha256:${'a'.repeat(64)}`);
  const c = podTemplate(one(extra, 'Deployment')).spec.containers[0]!;
  t.deepEqual(c.args?.slice(-2), ['--log-level', 'debug']);
  t.deepEqual(c.env?.at(-1), { name: 'X', value: '1' });
  t.is(one(extra, 'CustomResourceDefinition').metadata.annotations, undefined, 'crds.keep=false: no annotation');
});

test('helm template with rdmaDevicePlugin.enabled: the DaemonSet and its device-selection ConfigMap', async (t) => {
  const tools = await clusterTools(t);
  if (!tools) return;
  const objects = await render(tools, ['--set', 'rdmaDevicePlugin.enabled=true']);
  const name = `${FULLNAME}-rdma-shared-dp`;
  const configMap = one(objects, 'ConfigMap', name);
  const config = JSON.parse((configMap as unknown as { data: Record<string, string> }).data['config.json']!) as {
    periodicUpdateInterval: number;
    configList: { resourceName: string; resourcePrefix: string; rdmaHcaMax: number; selectors: Record<string, string[]> }[];
  };
  t.is(config.configList.length, 1);
  const entry = config.configList[0]!;
  t.is(entry.resourceName, 'hca_shared_devices_a');
  t.is(entry.resourcePrefix, 'rdma');
  t.is(`${entry.resourcePrefix}/${entry.resourceName}`, DEFAULT_OPTIONS.rdmaResourceName, 'the resource the operator\'s RDMA member pods request');
  t.deepEqual(entry.selectors, { vendors: ['15b3'] });
  t.is(entry.rdmaHcaMax, 1000);
  t.is(config.periodicUpdateInterval, 300);

  const ds = one(objects, 'DaemonSet', name);
  t.is(ds.metadata.namespace, NAMESPACE);
  const pod = podTemplate(ds);
  t.true(pod.spec.hostNetwork);
  const c = pod.spec.containers[0]!;
  t.is(c.image, 'ghcr.io/mellanox/k8s-rdma-shared-dev-plugin:v1.5.3');
  t.like(c.securityContext, { privileged: true });
  t.is(c.args, undefined);
  const mounts = Object.fromEntries((c.volumeMounts ?? []).map((m) => [m.name, m.mountPath]));
  t.like(mounts, { 'device-plugin': '/var/lib/kubelet/device-plugins', 'plugins-registry': '/var/lib/kubelet/plugins_registry', config: '/k8s-rdma-shared-dev-plugin', devs: '/dev/' });
  const volumes = Object.fromEntries((pod.spec.volumes ?? []).map((v) => [v.name, v]));
  t.is(volumes.config?.configMap?.name, name, 'the DaemonSet reads the ConfigMap');
  t.is(volumes['device-plugin']?.hostPath?.path, '/var/lib/kubelet/device-plugins');
  t.regex(pod.metadata.annotations?.['checksum/config'] ?? '', /^[0-9a-f]{64}$/, 'a config change rolls the plugin');
  t.deepEqual(kinds(objects).filter((k) => k.startsWith('DaemonSet/') || k.startsWith('ConfigMap/')), [`ConfigMap/${name}`, `DaemonSet/${name}`]);

  // Selectors by driver and interface name, another namespace, another image, CDI.
  const custom = await render(tools, [
    '--set', 'rdmaDevicePlugin.enabled=true', '--set', 'rdmaDevicePlugin.namespace=kube-system', '--set', 'rdmaDevicePlugin.image.tag=v1.5.2',
    '--set', 'rdmaDevicePlugin.useCdi=true', '--set', 'rdmaDevicePlugin.resourceName=hca_shared_devices_b', '--set', 'rdmaDevicePlugin.kubeletRootDir=/data/kubelet/',
    '--set-json', 'rdmaDevicePlugin.selectors={"vendors":[],"drivers":["mlx5_core"],"ifNames":["ib0","ib1"],"linkTypes":["infiniband"]}',
  ]);
  const customConfig = JSON.parse((one(custom, 'ConfigMap', name) as unknown as { data: Record<string, string> }).data['config.json']!) as typeof config;
  t.deepEqual(customConfig.configList[0]!.selectors, { drivers: ['mlx5_core'], ifNames: ['ib0', 'ib1'], linkTypes: ['infiniband'] }, 'empty selectors are left out');
  t.is(customConfig.configList[0]!.resourceName, 'hca_shared_devices_b');
  const customDs = one(custom, 'DaemonSet', name);
  t.is(customDs.metadata.namespace, 'kube-system');
  const customPod = podTemplate(customDs);
  t.is(customPod.spec.containers[0]!.image, 'ghcr.io/mellanox/k8s-rdma-shared-dev-plugin:v1.5.2');
  t.deepEqual(customPod.spec.containers[0]!.args, ['--use-cdi']);
  t.true(customPod.spec.volumes?.some((v) => v.name === 'dynamic-cdi' && v.hostPath?.path === '/var/run/cdi'));
  t.is(customPod.spec.volumes?.find((v) => v.name === 'device-plugin')?.hostPath?.path, '/data/kubelet/device-plugins');
  t.not(customPod.metadata.annotations?.['checksum/config'], pod.metadata.annotations?.['checksum/config']);
});

test('helm template with watchNamespaces: a Role and RoleBinding in each listed namespace, no operator ClusterRole', async (t) => {
  const tools = await clusterTools(t);
  if (!tools) return;
  const [scoped, cluster, single, merged] = await Promise.all([
    render(tools, ['--set-json', 'watchNamespaces=["apps","team-b"]']),
    render(tools),
    render(tools, ['--set', 'watchNamespace=apps']),
    render(tools, ['--set-json', 'watchNamespaces=["apps","team-b"]', '--set', 'watchNamespace=team-c']),
  ]);
  const clusterRules = one(cluster, 'ClusterRole', FULLNAME).rules;
  const roles = scoped.filter((o) => o.kind === 'Role' && o.metadata.name === FULLNAME);
  const bindings = scoped.filter((o) => o.kind === 'RoleBinding' && o.metadata.name === FULLNAME);
  t.deepEqual(roles.map((r) => r.metadata.namespace).sort(), ['apps', 'team-b'], 'a Role in each listed namespace');
  t.deepEqual(bindings.map((r) => r.metadata.namespace).sort(), ['apps', 'team-b']);
  for (const role of roles) {
    t.deepEqual(role.rules, clusterRules, `${role.metadata.namespace}: the same rules as the all-namespaces ClusterRole`);
    checkOperatorRules(t, role.rules as Rule[], `Role in ${role.metadata.namespace}`);
  }
  for (const binding of bindings) {
    t.deepEqual(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: FULLNAME });
    t.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: FULLNAME, namespace: NAMESPACE }]);
  }
  for (const objects of [scoped, single, merged]) {
    t.false(objects.some((o) => o.kind === 'ClusterRoleBinding'), 'nothing cluster-wide is bound to the operator');
    t.deepEqual(objects.filter((o) => o.kind === 'ClusterRole').map((o) => o.metadata.name).sort(), [`${FULLNAME}-edit`, `${FULLNAME}-view`], 'only the aggregated user roles');
    t.is(one(objects, 'Role', `${FULLNAME}-leader-election`).metadata.namespace, NAMESPACE, 'the Lease stays in the operator\'s namespace');
  }
  const argsOf = (objects: Obj[]) => podTemplate(one(objects, 'Deployment')).spec.containers[0]!.args?.slice(0, 2);
  t.deepEqual(argsOf(scoped), ['--namespace', 'apps,team-b']);
  // The deprecated single namespace still works, and is merged into the list (once).
  t.deepEqual(argsOf(single), ['--namespace', 'apps']);
  t.deepEqual(single.filter((o) => o.kind === 'Role' && o.metadata.name === FULLNAME).map((r) => r.metadata.namespace), ['apps']);
  t.deepEqual(argsOf(merged), ['--namespace', 'apps,team-b,team-c']);
  t.deepEqual(merged.filter((o) => o.kind === 'RoleBinding' && o.metadata.name === FULLNAME).map((r) => r.metadata.namespace).sort(), ['apps', 'team-b', 'team-c']);
  const again = await render(tools, ['--set-json', 'watchNamespaces=["apps","team-b"]', '--set', 'watchNamespace=apps']);
  t.deepEqual(argsOf(again), ['--namespace', 'apps,team-b'], 'a namespace in both is watched once');
  t.is(again.filter((o) => o.kind === 'Role' && o.metadata.name === FULLNAME).length, 2);
  // An empty list is all namespaces: the ClusterRole, no --namespace.
  const empty = await render(tools, ['--set-json', 'watchNamespaces=[]']);
  t.truthy(one(empty, 'ClusterRoleBinding', FULLNAME));
  t.false(argsOf(empty)?.includes('--namespace'));
});

test('the operator accepts the Deployment\'s arguments (operator/src/main.ts parseFlags)', async (t) => {
  const tools = await clusterTools(t);
  if (!tools) return;
  const argsOf = async (args: string[]) => podTemplate(one(await render(tools, args), 'Deployment')).spec.containers[0]!.args ?? [];
  const defaults = parseFlags(await argsOf([]));
  t.like(defaults, { namespaces: [], leaderElect: true, leaseName: FULLNAME, metricsPort: 8081, healthPort: 8082, rdmaResourceName: DEFAULT_OPTIONS.rdmaResourceName, logLevel: 'info' });
  const custom = parseFlags(await argsOf([
    '--set', 'watchNamespace=apps', '--set', 'replicas=1', '--set', 'leaderElection.enabled=false', '--set', 'metrics.port=9090', '--set', 'health.port=9091',
    '--set', 'logLevel=debug', '--set', 'rdmaDevicePlugin.resourcePrefix=example.com', '--set', 'rdmaDevicePlugin.resourceName=hca_b', '--set-json', 'extraArgs=["--workers","8"]',
  ]));
  t.like(custom, { namespaces: ['apps'], leaderElect: false, metricsPort: 9090, healthPort: 9091, rdmaResourceName: 'example.com/hca_b', logLevel: 'debug', workers: 8 });
  t.is(parseFlags(await argsOf(['--set', 'rdmaResourceName=mellanox.com/sriov_rdma'])).rdmaResourceName, 'mellanox.com/sriov_rdma');
  t.deepEqual(parseFlags(await argsOf(['--set-json', 'watchNamespaces=["apps","team-b"]', '--set', 'watchNamespace=team-c'])).namespaces, ['apps', 'team-b', 'team-c']);
  // The probes and the Service use the ports the operator listens on.
  const deployment = one(await render(tools, ['--set', 'metrics.port=9090', '--set', 'health.port=9091']), 'Deployment');
  t.deepEqual(podTemplate(deployment).spec.containers[0]!.ports?.map((p) => p.containerPort), [9090, 9091]);
});

test('helm template refuses bad values with an error naming the field', async (t) => {
  const tools = await clusterTools(t);
  if (!tools) return;
  const cases: [string[], RegExp][] = [
    [['--set', 'replicas=-1'], /values don't meet the specifications of the schema[\s\S]*\/replicas[\s\S]*minimum/],
    [['--set', 'replicas=two'], /\/replicas/],
    [['--set', 'replicaCount=2'], /additional properties 'replicaCount' not allowed/],
    [['--set', 'image.pullPolicy=Sometimes'], /\/image\/pullPolicy/],
    [['--set', 'image.digest=latest'], /\/image\/digest/],
    [['--set', 'watchNamespace=Not_A_Namespace'], /\/watchNamespace/],
    [['--set-json', 'watchNamespaces=["apps","Not_A_Namespace"]'], /\/watchNamespaces\/1/],
    [['--set-json', 'watchNamespaces=[""]'], /\/watchNamespaces\/0/],
    [['--set-json', 'watchNamespaces=["apps","apps"]'], /\/watchNamespaces[\s\S]*(unique|are equal)/],
    [['--set', 'watchNamespaces=apps'], /\/watchNamespaces/],
    [['--set', 'securityContext.readOnlyRootFilesystem=false'], /\/securityContext\/readOnlyRootFilesystem/],
    [['--set', 'metrics.port=70000'], /\/metrics\/port/],
    [['--set', 'rdmaDevicePlugin.resourceName=hca-shared'], /\/rdmaDevicePlugin\/resourceName/],
    [['--set', 'rdmaDevicePlugin.selectors.vendors[0]=mellanox'], /\/rdmaDevicePlugin\/selectors\/vendors/],
    [['--set', 'rdmaDevicePlugin.selectors.pciAddresses[0]=x'], /additional properties 'pciAddresses' not allowed/],
    // Rules across values (the templates' own checks).
    [['--set', 'replicas=3', '--set', 'leaderElection.enabled=false'], /replicas is 3 but leaderElection\.enabled is false/],
    [['--set', 'rdmaDevicePlugin.enabled=true', '--set-json', 'rdmaDevicePlugin.selectors={"vendors":[]}'], /rdmaDevicePlugin\.selectors: at least one of/],
    [['--set', 'health.port=8081'], /metrics\.port and health\.port are both 8081/],
    [['--set', 'serviceAccount.create=false'], /serviceAccount\.name is required/],
  ];
  await Promise.all(cases.map(async ([args, expected]) => {
    const error = await render(tools, args).then(() => null, (e: unknown) => e as Error);
    t.truthy(error, `helm template ${args.join(' ')} fails`);
    if (error) t.regex(error.message, expected, `helm template ${args.join(' ')}`);
  }));
});

// ---------------------------------------------------------------------------------------------------
// helm install, upgrade and uninstall against kube-apiserver.

interface AccessCheck { verb: string; resource: string; group?: string; subresource?: string; namespace?: string }

async function allowed(kc: KubeConfig, check: AccessCheck): Promise<boolean> {
  const review = await kc.makeApiClient(AuthorizationV1Api).createSubjectAccessReview({
    body: {
      apiVersion: 'authorization.k8s.io/v1',
      kind: 'SubjectAccessReview',
      spec: { user: SA_USER, groups: SA_GROUPS, resourceAttributes: { verb: check.verb, group: check.group ?? '', resource: check.resource, subresource: check.subresource ?? '', namespace: check.namespace ?? '' } },
    },
  });
  return review.status?.allowed === true;
}

const describeCheck = (c: AccessCheck) => `${c.verb} ${c.group ? `${c.group}/` : ''}${c.resource}${c.subresource ? `/${c.subresource}` : ''} ${c.namespace ? `in ${c.namespace}` : 'cluster-wide'}`;

/** The operator's needs as access checks in `namespace`. */
function neededChecks(namespace: string): AccessCheck[] {
  const out: AccessCheck[] = [];
  for (const [key, verbs] of operatorNeeds()) {
    const [group, resource, subresource] = [key.slice(0, key.indexOf('/')), ...key.slice(key.indexOf('/') + 1).split('/')] as [string, string, string | undefined];
    for (const verb of verbs) out.push({ verb, group, resource, namespace, ...(subresource ? { subresource } : {}) });
  }
  return out;
}

/** Things the operator never needs: each must be refused wherever it is asked. */
function forbiddenChecks(namespace: string): AccessCheck[] {
  return [
    { verb: 'update', resource: 'secrets', namespace },
    { verb: 'delete', resource: 'services', namespace },
    { verb: 'delete', resource: 'configmaps', namespace },
    { verb: 'update', resource: 'pods', namespace },
    { verb: 'create', resource: 'pods', subresource: 'exec', namespace },
    { verb: 'create', resource: 'serviceaccounts', subresource: 'token', namespace },
    { verb: 'create', group: CRD_GROUP, resource: CRD_PLURAL, namespace },
    { verb: 'delete', group: CRD_GROUP, resource: CRD_PLURAL, namespace },
    // Granted before issue 15, never used: nothing but Secrets is read by name, nothing is updated.
    { verb: 'get', group: CRD_GROUP, resource: CRD_PLURAL, namespace },
    { verb: 'update', group: CRD_GROUP, resource: CRD_PLURAL, namespace },
    { verb: 'get', group: CRD_GROUP, resource: CRD_PLURAL, subresource: 'status', namespace },
    { verb: 'update', group: CRD_GROUP, resource: CRD_PLURAL, subresource: 'status', namespace },
    { verb: 'get', resource: 'pods', namespace },
    { verb: 'get', resource: 'persistentvolumeclaims', namespace },
    { verb: 'get', resource: 'configmaps', namespace },
    { verb: 'get', resource: 'services', namespace },
    { verb: 'get', group: 'policy', resource: 'poddisruptionbudgets', namespace },
    { verb: 'get', group: 'networking.k8s.io', resource: 'networkpolicies', namespace },
    { verb: 'create', group: 'events.k8s.io', resource: 'events', namespace },
    // Leases: created in the operator's own namespace only, and only its own read or renewed.
    ...(namespace === NAMESPACE ? [] : [{ verb: 'create', group: 'coordination.k8s.io', resource: 'leases', namespace }]),
    { verb: 'list', group: 'coordination.k8s.io', resource: 'leases', namespace },
    { verb: 'get', group: 'coordination.k8s.io', resource: 'leases', namespace },
    { verb: 'delete', group: 'coordination.k8s.io', resource: 'leases', namespace },
    { verb: 'create', group: 'rbac.authorization.k8s.io', resource: 'rolebindings', namespace },
    { verb: 'create', group: 'apps', resource: 'statefulsets', namespace },
    { verb: 'list', resource: 'nodes' },
    { verb: 'create', resource: 'namespaces' },
    { verb: 'create', group: 'rbac.authorization.k8s.io', resource: 'clusterroles' },
    { verb: 'update', group: 'apiextensions.k8s.io', resource: 'customresourcedefinitions' },
  ];
}

async function checkAccess(t: ExecutionContext, kc: KubeConfig, checks: AccessCheck[], expected: boolean, why: string): Promise<void> {
  const results = await Promise.all(checks.map(async (c) => [c, await allowed(kc, c)] as const));
  const wrong = results.filter(([, ok]) => ok !== expected).map(([c]) => describeCheck(c));
  t.deepEqual(wrong, [], `${why}: these are ${expected ? 'refused' : 'allowed'}`);
}

/**
 * Server-side apply of each object as a dry run with fieldValidation=Strict: the API server's own schema
 * check, unknown and duplicate fields included. A raw request, because the client's typed serializer
 * silently drops fields its models do not know (KubernetesObjectApi would hide a misspelled field).
 */
async function validateOnServer(t: ExecutionContext, kc: KubeConfig, objects: Obj[]): Promise<void> {
  const server = new URL(kc.getCurrentCluster()!.server);
  for (const o of objects) {
    const prefix = o.apiVersion.includes('/') ? `/apis/${o.apiVersion}` : `/api/${o.apiVersion}`;
    const where = o.metadata.namespace ? `namespaces/${o.metadata.namespace}/` : '';
    const options: https.RequestOptions = {
      method: 'PATCH',
      hostname: server.hostname,
      port: server.port,
      path: `${prefix}/${where}${o.kind.toLowerCase()}s/${o.metadata.name}?dryRun=All&fieldManager=helm-test&force=true&fieldValidation=Strict`,
      headers: { 'Content-Type': 'application/apply-patch+yaml', Accept: 'application/json' },
    };
    await kc.applyToHTTPSOptions(options);
    const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = https.request(options, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      });
      req.on('error', reject);
      req.end(JSON.stringify(o));
    });
    const message = status === 200 || status === 201 ? '' : ((): string => {
      try {
        return (JSON.parse(body) as { message?: string }).message ?? body;
      } catch {
        return body;
      }
    })();
    t.is(message, '', `${o.kind}/${o.metadata.name}: the API server refuses it (HTTP ${status})`);
  }
}

test('helm install, upgrade and uninstall against kube-apiserver; the ServiceAccount can do what the operator does', async (t) => {
  t.timeout(10 * 60_000, 'tools, control plane and helm took over 10 minutes');
  const tools = await clusterTools(t);
  if (!tools) return;
  t.timeout(4 * 60_000, 'the helm install test took over 4 minutes with its tools ready');
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'derecho-helm-cp-'));
  const t0 = Date.now();
  const cp = await ControlPlane.start({ workDir, tools, log: (line) => t.log(line) });
  t.log(`control plane ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const step = (what: string) => t.log(`${((Date.now() - t0) / 1000).toFixed(1)} s: ${what}`);
  let ok = false;
  try {
    const admin = cp.kubeConfig;
    const core = admin.makeApiClient(CoreV1Api);
    const apps = admin.makeApiClient(AppsV1Api);
    const rbac = admin.makeApiClient(RbacAuthorizationV1Api);
    const ext = admin.makeApiClient(ApiextensionsV1Api);
    for (const name of [NAMESPACE, 'apps', 'other']) await core.createNamespace({ body: { metadata: { name } } });

    // Every object the chart renders (RDMA plugin included) passes the API server's strict validation.
    const rendered = await render(tools, ['--set', 'rdmaDevicePlugin.enabled=true']);
    await validateOnServer(t, admin, rendered.filter((o) => o.kind !== 'CustomResourceDefinition'));
    await validateOnServer(t, admin, (await render(tools, ['--set', 'watchNamespace=apps'])).filter((o) => o.kind === 'Role' || o.kind === 'RoleBinding'));
    step('rendered objects validated by the API server (dry run)');

    // helm install (no --wait: without a kubelet the operator's pods stay Pending).
    const installed = await cp.helm(['install', RELEASE, CHART, '--namespace', NAMESPACE]);
    t.regex(installed, /STATUS: deployed/);
    t.regex(installed, /kubectl apply -f examples\/kv-group\.yaml/, 'NOTES: how to create a group');
    t.regex(installed, /kubectl get derechogroups/, 'NOTES: how to watch it');
    step('helm install');
    await cp.waitForCrd(CRD_NAME, { timeoutMs: 30_000 });
    const crd = await ext.readCustomResourceDefinition({ name: CRD_NAME });
    t.is(crd.metadata?.annotations?.['helm.sh/resource-policy'], 'keep');
    t.is(crd.metadata?.annotations?.['meta.helm.sh/release-name'], RELEASE, 'the CRD belongs to the release (so upgrades update it)');
    const deployment = await apps.readNamespacedDeployment({ namespace: NAMESPACE, name: FULLNAME });
    t.is(deployment.spec?.replicas, 2);
    t.is(deployment.spec?.template.spec?.containers[0]?.securityContext?.readOnlyRootFilesystem, true);
    await core.readNamespacedServiceAccount({ namespace: NAMESPACE, name: FULLNAME });
    await core.readNamespacedService({ namespace: NAMESPACE, name: `${FULLNAME}-metrics` });
    await rbac.readClusterRole({ name: FULLNAME });
    await rbac.readClusterRoleBinding({ name: FULLNAME });
    await rbac.readNamespacedRole({ namespace: NAMESPACE, name: `${FULLNAME}-leader-election` });

    // RBAC as the API server decides it (SubjectAccessReview), in two namespaces: all namespaces are watched.
    await checkAccess(t, admin, [...neededChecks('apps'), ...neededChecks('other')], true, 'the operator\'s needs');
    await checkAccess(t, admin, [...forbiddenChecks('apps'), ...forbiddenChecks(NAMESPACE)], false, 'beyond the operator\'s needs');
    await checkAccess(t, admin, [{ verb: 'create', group: 'coordination.k8s.io', resource: 'leases', namespace: NAMESPACE }], true, 'the Lease');
    step('access reviews');

    // The operator's real work, as its ServiceAccount: reconcile examples/kv-group.yaml and apply the result.
    const operator = (await cp.kubeConfigFor({ user: SA_USER, groups: SA_GROUPS.filter((g) => g !== 'system:authenticated') })).kubeConfig;
    const manifest = YAML.parse(fs.readFileSync(EXAMPLE, 'utf8')) as Obj;
    await admin.makeApiClient(CustomObjectsApi).createNamespacedCustomObject({ group: CRD_GROUP, version: CRD_VERSION, namespace: 'apps', plural: CRD_PLURAL, body: manifest });
    const custom = operator.makeApiClient(CustomObjectsApi);
    const listed = (await custom.listClusterCustomObject({ group: CRD_GROUP, version: CRD_VERSION, plural: CRD_PLURAL })) as { items: DerechoGroupResource[] };
    t.is(listed.items.length, 1, 'the operator lists groups in every namespace');
    const group = listed.items[0]!;
    const output = reconcile({ group, observed: {}, reports: {}, now: new Date().toISOString(), random: { hmacKey: HMAC_KEY, clientToken: CLIENT_TOKEN }, issuer: x509Issuer });
    const applier = KubernetesObjectApi.makeApiClient(operator);
    for (const object of output.objects) {
      await applier.patch(object as KubernetesObject, undefined, undefined, 'derecho-operator', true, PatchStrategy.ServerSideApply)
        .catch((e: unknown) => t.fail(`apply ${object.kind}/${object.metadata.name} as the operator: ${describeError(e)}`));
    }
    t.is(output.objects.filter((o) => o.kind === 'Pod').length > 0, true);
    const ref = { group: CRD_GROUP, version: CRD_VERSION, namespace: 'apps', plural: CRD_PLURAL, name: group.metadata.name };
    // As operator/src/controller.ts writes: the finalizer by merge patch, the status by server-side apply.
    await custom.patchNamespacedCustomObject({ ...ref, body: { metadata: { finalizers: [output.finalizer.name] } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
    const withStatus = (await custom.patchNamespacedCustomObjectStatus({
      ...ref, fieldManager: 'derecho-operator', force: true,
      body: { apiVersion: group.apiVersion, kind: group.kind, metadata: { name: group.metadata.name, namespace: 'apps', uid: group.metadata.uid }, status: output.status },
    }, setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply))) as DerechoGroupResource;
    t.is(withStatus.status?.phase, output.status.phase, 'status applied through the subresource');
    t.deepEqual(withStatus.metadata.finalizers, [output.finalizer.name]);
    const operatorCore = operator.makeApiClient(CoreV1Api);
    t.true(output.events.length > 0);
    for (const [index, event] of output.events.entries()) {
      const name = `${group.metadata.name}.${index}`;
      await operatorCore.createNamespacedEvent({
        namespace: 'apps',
        body: {
          metadata: { name, namespace: 'apps' },
          involvedObject: { apiVersion: group.apiVersion, kind: group.kind, name: group.metadata.name, namespace: 'apps', uid: group.metadata.uid },
          reason: event.reason, message: event.message, type: event.type, action: event.action, count: 1,
          firstTimestamp: new Date(), lastTimestamp: new Date(), source: { component: 'derecho-operator' },
        },
      });
      await operatorCore.patchNamespacedEvent({ namespace: 'apps', name, body: { count: 2, lastTimestamp: new Date().toISOString() } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
    }
    const pods = await operatorCore.listNamespacedPod({ namespace: 'apps', labelSelector: `app.kubernetes.io/instance=${group.metadata.name}` });
    t.true(pods.items.length > 0);
    t.true(pods.items.every((p) => p.status?.phase === 'Pending'), 'no kubelet: pods stay Pending');
    await operatorCore.deleteNamespacedPod({ namespace: 'apps', name: pods.items[0]!.metadata!.name!, body: { preconditions: { uid: pods.items[0]!.metadata!.uid! } } });
    await operatorCore.readNamespacedSecret({ namespace: 'apps', name: `${group.metadata.name}-auth` });
    // Leader election (operator/src/leader.ts): read, create, renew by replace, the Lease named --lease-name.
    const leases = operator.makeApiClient(CoordinationV1Api);
    await leases.createNamespacedLease({
      namespace: NAMESPACE,
      body: { metadata: { name: FULLNAME }, spec: { holderIdentity: `${FULLNAME}-0`, leaseDurationSeconds: 15, acquireTime: new V1MicroTime(), renewTime: new V1MicroTime() } },
    });
    const lease = await leases.readNamespacedLease({ namespace: NAMESPACE, name: FULLNAME });
    await leases.replaceNamespacedLease({ namespace: NAMESPACE, name: FULLNAME, body: { ...lease, spec: { ...lease.spec, renewTime: new V1MicroTime() } } });
    // And refusals, as real calls.
    for (const [what, call] of [
      ['list nodes', () => operatorCore.listNode()],
      ['delete a Service', () => operatorCore.deleteNamespacedService({ namespace: 'apps', name: group.metadata.name })],
      ['delete the group', () => custom.deleteNamespacedCustomObject(ref)],
      ['create a Lease outside its namespace', () => leases.createNamespacedLease({ namespace: 'apps', body: { metadata: { name: FULLNAME }, spec: {} } })],
      ['read another release\'s Lease', () => leases.readNamespacedLease({ namespace: NAMESPACE, name: 'kube-controller-manager' })],
    ] as const) {
      const error = await (call as () => Promise<unknown>)().then(() => null, (e: unknown) => e);
      t.is(statusCode(error), 403, `the operator cannot ${what} (${describeError(error)})`);
    }
    step('the operator\'s work as its ServiceAccount');

    // helm upgrade: the CRD changes with the chart (a copy whose CRD text differs), values reach the CRD,
    // RBAC is scoped to watchNamespace, and the RDMA device plugin appears.
    const chartCopy = path.join(workDir, 'chart');
    fs.cpSync(CHART, chartCopy, { recursive: true });
    const copyFile = path.join(chartCopy, 'files', 'crds', `${CRD_NAME}.yaml`);
    const marker = 'description: "A replicated Derecho group:';
    t.true(fs.readFileSync(copyFile, 'utf8').includes(marker));
    fs.writeFileSync(copyFile, fs.readFileSync(copyFile, 'utf8').replace(marker, 'description: "(upgraded) A replicated Derecho group:'));
    const upgraded = await cp.helm(['upgrade', RELEASE, chartCopy, '--namespace', NAMESPACE,
      '--set', 'crds.annotations.derecho\\.dev/chart-test=upgraded', '--set', 'watchNamespace=apps', '--set', 'rdmaDevicePlugin.enabled=true']);
    t.regex(upgraded, /STATUS: deployed/);
    t.regex(upgraded, /REVISION: 2/);
    step('helm upgrade');
    const crd2 = await ext.readCustomResourceDefinition({ name: CRD_NAME });
    t.regex(crd2.spec.versions[0]!.schema?.openAPIV3Schema?.description ?? '', /^\(upgraded\) A replicated Derecho group/, 'the CRD schema is upgraded');
    t.is(crd2.metadata?.annotations?.['derecho.dev/chart-test'], 'upgraded');
    t.is(crd2.metadata?.annotations?.['helm.sh/resource-policy'], 'keep', 'still kept');
    t.truthy(await admin.makeApiClient(CustomObjectsApi).getNamespacedCustomObject(ref), 'the group survives the upgrade');
    await t.throwsAsync(rbac.readClusterRoleBinding({ name: FULLNAME }), undefined, 'no cluster-wide binding any more');
    await rbac.readNamespacedRole({ namespace: 'apps', name: FULLNAME });
    const scopedArgs = (await apps.readNamespacedDeployment({ namespace: NAMESPACE, name: FULLNAME })).spec?.template.spec?.containers[0]?.args;
    t.deepEqual(scopedArgs?.slice(0, 2), ['--namespace', 'apps']);
    await checkAccess(t, admin, neededChecks('apps'), true, 'watchNamespace=apps: the operator\'s needs there');
    await checkAccess(t, admin, [
      ...neededChecks('other'), ...forbiddenChecks('apps'),
      { verb: 'get', resource: 'secrets', namespace: 'other' }, { verb: 'list', resource: 'secrets' }, { verb: 'list', resource: 'pods' },
      { verb: 'list', group: CRD_GROUP, resource: CRD_PLURAL },
    ], false, 'watchNamespace=apps: nothing outside apps');
    const otherSecret = await operatorCore.listNamespacedSecret({ namespace: 'other' }).then(() => null, (e: unknown) => e);
    t.is(statusCode(otherSecret), 403, 'cannot read secrets outside the watched namespace');
    const dsName = `${FULLNAME}-rdma-shared-dp`;
    await apps.readNamespacedDaemonSet({ namespace: NAMESPACE, name: dsName });
    const dpConfig = await core.readNamespacedConfigMap({ namespace: NAMESPACE, name: dsName });
    t.regex(dpConfig.data?.['config.json'] ?? '', /"resourceName": "hca_shared_devices_a"/);

    // helm uninstall: the CRD (and so the group) stays.
    await cp.helm(['uninstall', RELEASE, '--namespace', NAMESPACE]);
    step('helm uninstall');
    const gone = await apps.readNamespacedDeployment({ namespace: NAMESPACE, name: FULLNAME }).then(() => null, (e: unknown) => e);
    t.is(statusCode(gone), 404, 'the Deployment is gone');
    t.truthy(await ext.readCustomResourceDefinition({ name: CRD_NAME }), 'the CRD is kept');
    t.truthy(await admin.makeApiClient(CustomObjectsApi).getNamespacedCustomObject(ref), 'and the group with it');
    ok = true;
  } finally {
    if (!ok) t.log(cp.logs());
    await cp.stop();
    fs.rmSync(workDir, { recursive: true, force: true });
    t.log(`whole test ${((Date.now() - t0) / 1000).toFixed(1)} s after the tools were ready`);
  }
});

/**
 * The real operator (operator/src/main.ts as a process) with the Deployment's arguments for `values`, as
 * the chart's ServiceAccount under the chart's RBAC, against a kube-apiserver that also enforces owner
 * references (OwnerReferencesPermissionEnforcement: blockOwnerDeletion needs update of the group's
 * /finalizers). examples/kv-group.yaml is created in each of `managed` and `unmanaged`: the operator must
 * reconcile the first (Lease, finalizer, pods, status, Secret, Events) and leave the others untouched,
 * with no request refused; then it stops cleanly on SIGTERM. `checks` runs access reviews meanwhile.
 */
async function operatorUnderChart(t: ExecutionContext, opts: { values: string[]; scope: string; managed: string[]; unmanaged: string[]; checks?: (cp: ControlPlane) => Promise<void> }): Promise<void> {
  t.timeout(10 * 60_000, 'tools, control plane and operator took over 10 minutes');
  const tools = await clusterTools(t);
  if (!tools) return;
  t.timeout(3 * 60_000, 'the operator test took over 3 minutes with its tools ready');
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'derecho-helm-op-'));
  const cp = await ControlPlane.start({ workDir, tools, log: (line) => t.log(line), apiserverArgs: ['--enable-admission-plugins=OwnerReferencesPermissionEnforcement'] });
  const t0 = Date.now();
  let output = '';
  let child: ReturnType<typeof spawn> | null = null;
  const kill = () => child?.kill('SIGKILL');
  process.once('exit', kill);
  let ok = false;
  try {
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    const custom = cp.kubeConfig.makeApiClient(CustomObjectsApi);
    for (const name of [NAMESPACE, ...opts.managed, ...opts.unmanaged]) await core.createNamespace({ body: { metadata: { name } } });
    await cp.helm(['install', RELEASE, CHART, '--namespace', NAMESPACE, ...opts.values]);
    await cp.waitForCrd(CRD_NAME, { timeoutMs: 30_000 });
    for (const namespace of [...opts.managed, ...opts.unmanaged]) {
      await custom.createNamespacedCustomObject({ group: CRD_GROUP, version: CRD_VERSION, namespace, plural: CRD_PLURAL, body: YAML.parse(fs.readFileSync(EXAMPLE, 'utf8')) as object });
    }
    await opts.checks?.(cp);

    // The Deployment's container, run here: its arguments (ports 0: free ones), its identity (the
    // ServiceAccount, through a client certificate instead of a token), POD_NAMESPACE and POD_NAME.
    const container = podTemplate(one(await render(tools, opts.values), 'Deployment')).spec.containers[0]!;
    const args = [...(container.args ?? [])];
    for (const flag of ['--metrics-port', '--health-port']) args[args.indexOf(flag) + 1] = '0';
    const identity = await cp.kubeConfigFor({ user: SA_USER, groups: SA_GROUPS.filter((g) => g !== 'system:authenticated') });
    const podName = `${FULLNAME}-7d9f-x2x4q`;
    child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'operator', 'src', 'main.ts'), ...args], {
      cwd: ROOT,
      env: { ...process.env, KUBECONFIG: identity.kubeconfigPath, POD_NAMESPACE: NAMESPACE, POD_NAME: podName, KUBERNETES_SERVICE_HOST: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    const exited = new Promise<number | null>((resolve) => child!.once('exit', (code) => resolve(code)));

    const leases = cp.kubeConfig.makeApiClient(CoordinationV1Api);
    const holder = await cp.waitFor('the operator to hold its Lease', async () => (await leases.readNamespacedLease({ namespace: NAMESPACE, name: FULLNAME })).spec?.holderIdentity, { timeoutMs: 60_000 });
    t.is(holder, podName);
    for (const namespace of opts.managed) {
      const pods = await cp.waitFor(`the operator to create the member pods in ${namespace}`, async () => {
        const list = await core.listNamespacedPod({ namespace, labelSelector: 'app.kubernetes.io/instance=kv-demo' });
        return list.items.length === 3 ? list.items : null;
      }, { timeoutMs: 60_000 });
      t.deepEqual(pods.map((p) => p.metadata!.name).sort(), ['kv-demo-1', 'kv-demo-2', 'kv-demo-3'], namespace);
      t.true(pods.every((p) => p.metadata?.ownerReferences?.[0]?.blockOwnerDeletion === true), `${namespace}: owned by the group, blocking its deletion (admitted)`);
      const group = await cp.waitFor(`the group's status in ${namespace}`, async () => {
        const g = (await custom.getNamespacedCustomObject({ group: CRD_GROUP, version: CRD_VERSION, namespace, plural: CRD_PLURAL, name: 'kv-demo' })) as DerechoGroupResource;
        return g.status?.phase ? g : null;
      }, { timeoutMs: 30_000 });
      t.deepEqual(group.metadata.finalizers, ['derecho.dev/cleanup'], namespace);
      t.truthy(await core.readNamespacedSecret({ namespace, name: 'kv-demo-auth' }));
      const events = await cp.waitFor(`an Event in ${namespace}`, async () => {
        const list = await core.listNamespacedEvent({ namespace });
        return list.items.length > 0 ? list.items : null;
      }, { timeoutMs: 30_000 });
      t.true(events.some((e) => e.involvedObject.name === 'kv-demo'), namespace);
      t.log(`operator: pods, status (${group.status?.phase}) and events in ${namespace} after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
    // The others: by now their groups would have been reconciled as well; nothing there was touched.
    for (const namespace of opts.unmanaged) {
      const group = (await custom.getNamespacedCustomObject({ group: CRD_GROUP, version: CRD_VERSION, namespace, plural: CRD_PLURAL, name: 'kv-demo' })) as DerechoGroupResource;
      t.is(group.status, undefined, `${namespace}: no status`);
      t.is(group.metadata.finalizers, undefined, `${namespace}: no finalizer`);
      t.deepEqual((await core.listNamespacedPod({ namespace })).items.map((p) => p.metadata?.name), [], `${namespace}: no pods`);
      t.deepEqual((await core.listNamespacedSecret({ namespace })).items.map((p) => p.metadata?.name), [], `${namespace}: no Secrets`);
      t.deepEqual((await core.listNamespacedEvent({ namespace })).items.map((p) => p.reason), [], `${namespace}: no Events`);
    }

    // Nothing it tried was refused, and it stops cleanly on SIGTERM.
    t.notRegex(output, /forbidden|\b403\b/i, 'no request of the operator was refused');
    const started = output.split('\n').find((l) => l.includes('"msg":"operator started"')) ?? '';
    t.true(started.includes(`"namespaces":"${opts.scope}"`), `the log names the namespaces watched: ${started}`);
    child.kill('SIGTERM');
    t.is(await exited, 0, 'exit 0 after SIGTERM');
    ok = true;
  } finally {
    if (!ok) t.log(`operator output:\n${output.split('\n').slice(-40).join('\n')}`);
    kill();
    process.removeListener('exit', kill);
    await cp.stop();
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

test('the real operator runs with exactly the chart\'s RBAC and arguments: Lease, finalizer, pods, status, events', async (t) => {
  await operatorUnderChart(t, { values: [], scope: '(all)', managed: ['apps'], unmanaged: [] });
});

test('watchNamespaces [team-a, team-b]: the real operator reconciles groups in both, leaves team-c alone, and can read no Secret nor create a pod outside them', async (t) => {
  const managed = ['team-a', 'team-b'];
  await operatorUnderChart(t, {
    values: ['--set-json', `watchNamespaces=${JSON.stringify(managed)}`],
    scope: managed.join(','),
    managed,
    unmanaged: ['team-c'],
    checks: async (cp) => {
      const admin = cp.kubeConfig;
      const rbac = admin.makeApiClient(RbacAuthorizationV1Api);
      await t.throwsAsync(rbac.readClusterRoleBinding({ name: FULLNAME }), undefined, 'no cluster-wide binding');
      await t.throwsAsync(rbac.readClusterRole({ name: FULLNAME }), undefined, 'no operator ClusterRole');
      for (const namespace of managed) await rbac.readNamespacedRoleBinding({ namespace, name: FULLNAME });
      await checkAccess(t, admin, managed.flatMap((namespace) => neededChecks(namespace)), true, 'the operator\'s needs in team-a and team-b');
      const outside: AccessCheck[] = [];
      for (const namespace of ['team-c', undefined]) {
        for (const verb of ['get', 'list', 'watch', 'create', 'patch', 'delete']) outside.push({ verb, resource: 'secrets', ...(namespace ? { namespace } : {}) });
        for (const verb of ['list', 'watch', 'create', 'patch', 'delete']) outside.push({ verb, resource: 'pods', ...(namespace ? { namespace } : {}) });
        outside.push({ verb: 'list', group: CRD_GROUP, resource: CRD_PLURAL, ...(namespace ? { namespace } : {}) });
        outside.push({ verb: 'patch', group: CRD_GROUP, resource: CRD_PLURAL, ...(namespace ? { namespace } : {}) });
        outside.push({ verb: 'create', resource: 'events', ...(namespace ? { namespace } : {}) });
      }
      await checkAccess(t, admin, [...outside, ...neededChecks('team-c'), ...forbiddenChecks('team-a'), ...forbiddenChecks('team-b')], false, 'nothing in team-c, nothing cluster-wide, nothing beyond its needs');
      // And as real calls with its identity: reading Secrets or creating a pod in team-c, or anywhere.
      const operator = (await cp.kubeConfigFor({ user: SA_USER, groups: SA_GROUPS.filter((g) => g !== 'system:authenticated') })).kubeConfig;
      const core = operator.makeApiClient(CoreV1Api);
      const pod = { metadata: { name: 'intruder' }, spec: { containers: [{ name: 'c', image: 'busybox' }] } };
      for (const [what, call] of [
        ['list Secrets in team-c', () => core.listNamespacedSecret({ namespace: 'team-c' })],
        ['read a Secret in team-c', () => core.readNamespacedSecret({ namespace: 'team-c', name: 'any' })],
        ['list Secrets in every namespace', () => core.listSecretForAllNamespaces()],
        ['create a pod in team-c', () => core.createNamespacedPod({ namespace: 'team-c', body: pod })],
        ['list pods in every namespace', () => core.listPodForAllNamespaces()],
      ] as const) {
        const error = await (call as () => Promise<unknown>)().then(() => null, (e: unknown) => e);
        t.is(statusCode(error), 403, `the operator cannot ${what} (${describeError(error)})`);
      }
      const allowedCall = await core.listNamespacedSecret({ namespace: 'team-a' }).then(() => null, (e: unknown) => e);
      t.is(allowedCall, null, 'but lists Secrets in team-a');
    },
  });
});
