import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import test from 'ava';
import fc from 'fast-check';
import { loadAgentConfig, parseGroupManifest } from '../../node-agent/src/config/load.ts';
import { DEFAULT_IMAGE, GroupSpec, toGroupPolicy } from '../../node-agent/src/config/schema.ts';
import { allocate } from '../../node-agent/src/core/allocation.ts';
import { planRestart } from '../../node-agent/src/core/restart.ts';
import type { NodeId, RestartReport, View } from '../../node-agent/src/core/types.ts';
import { certificateFacts, issuedBy, x509Issuer } from './certs.ts';
import type { CertificateIssuer, KeyAndCertificate } from './certs.ts';
import { POD_TEMPLATE_EXAMPLE } from './crd-cases.ts';
import { derechoGroupSchema } from './crd.ts';
import { ANNOTATION, LABEL } from './kube.ts';
import type { KubeObject, ObservedSecret } from './kube.ts';
import { validateOpenApi } from './openapi.ts';
import { DEFAULT_OPTIONS, agentStatusUrl, parseRestartMessage, reconcile, withWriteFailures } from './reconcile.ts';
import type { ReconcileOutput, WriteFailure } from './reconcile.ts';
import type { Condition, DerechoGroupStatus } from './status.ts';
import { CLIENT_TOKEN, Cluster, HMAC_KEY, NOW, kvDemo, report, restartingReport } from './test-support.ts';

const statusSchema = derechoGroupSchema().properties!.status!;

// ---------------------------------------------------------------------------------------------------
// Helpers

type Pod = KubeObject & { spec: { containers: { env: { name: string; value: string }[]; [key: string]: unknown }[]; volumes: Record<string, unknown>[]; [key: string]: unknown } };

const kinds = (objects: KubeObject[]): Record<string, number> => {
  const counts: Record<string, number> = {};
  for (const object of objects) counts[object.kind] = (counts[object.kind] ?? 0) + 1;
  return counts;
};
const find = (objects: KubeObject[], kind: string, name: string): KubeObject | undefined => objects.find((object) => object.kind === kind && object.metadata.name === name);
const podOf = (objects: KubeObject[], nodeId: number): Pod => find(objects, 'Pod', `kv-demo-${nodeId}`) as Pod;
const env = (pod: Pod): Record<string, string> => Object.fromEntries(pod.spec.containers[0]!.env.map((variable) => [variable.name, variable.value]));
const conditionOf = (status: DerechoGroupStatus, type: string): Condition => status.conditions!.find((c) => c.type === type)!;
const conditionSummary = (status: DerechoGroupStatus): Record<string, string> =>
  Object.fromEntries(status.conditions!.map((c) => [c.type, `${c.status} ${c.reason}`]));

/** A cluster that has run the example group until it settled. */
function settled(specPatch: Record<string, unknown> = {}): Cluster {
  const cluster = new Cluster(kvDemo(specPatch));
  for (let i = 0; i < 4; i++) cluster.step();
  return cluster;
}

/** Steps until the pod set stops changing (at most `limit` steps); returns the pod ids after each step. */
function runUntilSettled(cluster: Cluster, limit = 20): NodeId[][] {
  const history: NodeId[][] = [];
  for (let i = 0; i < limit; i++) {
    const output = cluster.step();
    history.push(cluster.podIds());
    if (output.status.phase === 'Running' && output.deletes.length === 0) break;
  }
  return history;
}

// ---------------------------------------------------------------------------------------------------
// A new group

test('a new group creates three pods, three PVCs, two services, a ConfigMap, its Secrets, two PDBs and a NetworkPolicy', (t) => {
  const output = reconcile(new Cluster(kvDemo()).input());
  // Two budgets: a majority of the members, and node 3 alone (the only member of kv/1: see the sole-member test).
  t.deepEqual(kinds(output.objects), { ConfigMap: 1, Secret: 6, Service: 2, PodDisruptionBudget: 2, NetworkPolicy: 1, PersistentVolumeClaim: 3, Pod: 3 });
  // The HMAC key; for the client API's TLS a CA and a certificate per member; the client Secret (token, ca.crt).
  t.deepEqual(output.objects.filter((o) => o.kind === 'Secret').map((o) => o.metadata.name), ['kv-demo-auth', 'kv-demo-ca', 'kv-demo-node-1-tls', 'kv-demo-node-2-tls', 'kv-demo-node-3-tls', 'kv-demo-client']);
  t.deepEqual(output.deletes, []);
  t.deepEqual(output.objects.filter((o) => o.kind === 'Pod').map((o) => o.metadata.name), ['kv-demo-1', 'kv-demo-2', 'kv-demo-3']);
  t.deepEqual(output.objects.filter((o) => o.kind === 'PersistentVolumeClaim').map((o) => o.metadata.name), ['kv-demo-1-data', 'kv-demo-2-data', 'kv-demo-3-data']);
  t.deepEqual(output.objects.filter((o) => o.kind === 'Service').map((o) => o.metadata.name), ['kv-demo-peers', 'kv-demo']);
  // PVCs come before the pods that mount them; the ConfigMap and Secret before everything.
  t.deepEqual([...new Set(output.objects.map((o) => o.kind))], ['ConfigMap', 'Secret', 'Service', 'PodDisruptionBudget', 'NetworkPolicy', 'PersistentVolumeClaim', 'Pod']);
  t.is(output.status.phase, 'Creating');
  t.deepEqual(conditionSummary(output.status), {
    Ready: 'False Creating', Progressing: 'True Creating', Degraded: 'False AsExpected', RestartQuorumPending: 'False NotRestarting', Stuck: 'False NotRestarting', SpecAccepted: 'True Accepted',
  });
  t.deepEqual(output.events.map((e) => `${e.type} ${e.reason}: ${e.message}`), [
    'Normal CertificateIssued: issued the group\'s certificate authority (valid until 2035-12-30T00:00:00Z)',
    'Normal CertificateIssued: issued node 1\'s certificate (none yet; valid until 2026-04-01T00:00:00Z)',
    'Normal CertificateIssued: issued node 2\'s certificate (none yet; valid until 2026-04-01T00:00:00Z)',
    'Normal CertificateIssued: issued node 3\'s certificate (none yet; valid until 2026-04-01T00:00:00Z)',
    'Normal PodsCreated: creating 3 founding member pod(s) (nodes 1, 2, 3) together: they form view 0 once all are connected',
  ]);
  t.deepEqual(output.finalizer, { name: 'derecho.dev/cleanup', present: true });
  t.is(output.requeueAfterSeconds, 2);
  t.deepEqual(validateOpenApi(statusSchema, output.status, 'status'), []);
});

test('every object is plain JSON, labelled, and owned by the group (retained volumes excepted)', (t) => {
  const output = reconcile(new Cluster(kvDemo()).input());
  t.deepEqual(JSON.parse(JSON.stringify(output)), output);
  for (const object of output.objects) {
    t.like(object.metadata, { namespace: 'default', labels: { [LABEL.name]: 'derecho', [LABEL.instance]: 'kv-demo', [LABEL.managedBy]: 'derecho-operator' } }, object.metadata.name);
    const owners = object.metadata.ownerReferences ?? [];
    if (object.kind === 'PersistentVolumeClaim') t.deepEqual(owners, [], 'storage.retention "retain": no owner reference on volumes');
    else t.deepEqual(owners, [{ apiVersion: 'derecho.dev/v1alpha1', kind: 'DerechoGroup', name: 'kv-demo', uid: 'uid-kv-demo', controller: true, blockOwnerDeletion: true }], object.metadata.name);
    if (object.kind === 'Pod' || object.kind === 'PersistentVolumeClaim') t.regex(object.metadata.labels![LABEL.nodeId]!, /^[123]$/);
  }
  const volumes = reconcile(new Cluster(kvDemo({ storage: { size: '1Gi', retention: 'delete' } })).input()).objects.filter((o) => o.kind === 'PersistentVolumeClaim');
  t.true(volumes.every((v) => v.metadata.ownerReferences?.[0]?.uid === 'uid-kv-demo'), 'storage.retention "delete": volumes are owned');
});

test('member pods run the agent: DERECHO_* environment, probes, non-root read-only, restartPolicy Always', (t) => {
  const pod = podOf(reconcile(new Cluster(kvDemo()).input()).objects, 2);
  t.deepEqual(env(pod), {
    DERECHO_NODE_ID: '2',
    DERECHO_GROUP_NAME: 'kv-demo',
    DERECHO_GROUP_FILE: '/etc/derecho/group/group.yaml',
    DERECHO_PEERS: '1=kv-demo-1.kv-demo-peers.default.svc:7000,3=kv-demo-3.kv-demo-peers.default.svc:7000',
    DERECHO_DATA_DIR: '/var/lib/derecho',
    DERECHO_PEER_PORT: '7000',
    DERECHO_HTTP_PORT: '8080',
    DERECHO_HMAC_SECRET_FILE: '/etc/derecho/auth/hmac.key',
    DERECHO_API_TLS_CERT_FILE: '/etc/derecho/api-tls/tls.crt',
    DERECHO_API_TLS_KEY_FILE: '/etc/derecho/api-tls/tls.key',
    DERECHO_API_TOKEN_FILE: '/etc/derecho/api-token/token',
  });
  const container = pod.spec.containers[0]!;
  t.like(container, {
    name: 'agent',
    image: 'ghcr.io/derecho-ts/node-agent:0.1.0',
    readinessProbe: { httpGet: { path: '/readyz', port: 'http', scheme: 'HTTPS' } },
    livenessProbe: { httpGet: { path: '/healthz', port: 'http', scheme: 'HTTPS' } },
    resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } },
    securityContext: { runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
  });
  t.like(pod.spec, { restartPolicy: 'Always', hostname: 'kv-demo-2', subdomain: 'kv-demo-peers', securityContext: { runAsNonRoot: true, runAsUser: 65532, fsGroup: 65532 } });
  t.deepEqual(pod.spec.volumes.map((v) => v.name), ['data', 'group', 'auth', 'api-tls', 'api-token', 'tmp']);
  t.deepEqual(pod.spec.volumes[0], { name: 'data', persistentVolumeClaim: { claimName: 'kv-demo-2-data' } });
  t.like(pod.spec.volumes[2], { secret: { secretName: 'kv-demo-auth', items: [{ key: 'hmac.key', path: 'hmac.key' }] } });
  t.regex(pod.metadata.annotations![ANNOTATION.configHash]!, /^[0-9a-f]{16}$/);
});

test('transport rdma adds IPC_LOCK and one RDMA device (the resource name is an operator option)', (t) => {
  const rdma = reconcile(new Cluster(kvDemo({ transport: 'rdma' })).input());
  const container = podOf(rdma.objects, 1).spec.containers[0]!;
  t.like(container, {
    resources: { requests: { 'rdma/hca_shared_devices_a': '1', cpu: '100m' }, limits: { 'rdma/hca_shared_devices_a': '1', memory: '512Mi' } },
    securityContext: { capabilities: { drop: ['ALL'], add: ['IPC_LOCK'] } },
  });
  const custom = reconcile({ ...new Cluster(kvDemo({ transport: 'rdma' })).input(), options: { rdmaResourceName: 'mellanox.com/cx5' } });
  t.like(podOf(custom.objects, 1).spec.containers[0]!, { resources: { limits: { 'mellanox.com/cx5': '1' } } });
  const tcp = podOf(reconcile(new Cluster(kvDemo({ transport: 'auto' })).input()).objects, 1).spec.containers[0]!;
  t.false(JSON.stringify(tcp).includes('rdma/'), '"auto" requests no device (it falls back to TCP where there is none)');
});

test('the pod environment and the ConfigMap make a configuration the agent\'s own loader accepts', (t) => {
  const output = reconcile(new Cluster(kvDemo()).input());
  const configMap = find(output.objects, 'ConfigMap', 'kv-demo-config') as KubeObject & { data: Record<string, string> };
  const manifest = parseGroupManifest(configMap.data['group.yaml']!, 'group.yaml');
  t.deepEqual(manifest.spec, GroupSpec.parse(kvDemo().spec));
  const secret = find(output.objects, 'Secret', 'kv-demo-auth') as KubeObject & { data: Record<string, string> };
  const dir = mkdtempSync(path.join(tmpdir(), 'derecho-operator-'));
  try {
    writeFileSync(path.join(dir, 'group.yaml'), configMap.data['group.yaml']!);
    writeFileSync(path.join(dir, 'hmac.key'), Buffer.from(secret.data['hmac.key']!, 'base64'));
    const podEnv = env(podOf(output.objects, 3));
    const config = loadAgentConfig({ env: { ...podEnv, DERECHO_GROUP_FILE: path.join(dir, 'group.yaml'), DERECHO_HMAC_SECRET_FILE: path.join(dir, 'hmac.key'), DERECHO_DATA_DIR: path.join(dir, 'data') }, cwd: dir });
    t.is(config.nodeId, 3);
    t.is(config.groupName, 'kv-demo');
    t.deepEqual(config.peers, { 1: 'kv-demo-1.kv-demo-peers.default.svc:7000', 2: 'kv-demo-2.kv-demo-peers.default.svc:7000' });
    t.deepEqual(config.listen, { host: '0.0.0.0', peerPort: 7000, httpPort: 8080 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  t.like(configMap.metadata.annotations, { [ANNOTATION.foundingMembers]: '3', [ANNOTATION.members]: '3' });
  t.regex(configMap.data['layout.yaml']!, /subgroup: kv\n\s+shard: 1\n\s+members:\n\s+- 3/);
});

test('the HMAC key is made once from the caller\'s randomness and kept afterwards', (t) => {
  const cluster = new Cluster(kvDemo());
  cluster.step();
  const later = reconcile(cluster.input({ random: { hmacKey: Buffer.alloc(32, 9).toString('base64') } }));
  t.is((find(later.objects, 'Secret', 'kv-demo-auth') as KubeObject & { data: Record<string, string> }).data['hmac.key'], HMAC_KEY);
  t.throws(() => reconcile({ ...new Cluster(kvDemo()).input(), random: {} }), { message: /needs an HMAC key: pass random\.hmacKey/ });
});

// ---------------------------------------------------------------------------------------------------
// The client API (spec.clientApi, ADR 0015)

const secretText = (object: KubeObject | undefined, key: string): string | undefined => {
  const value = (object as ObservedSecret | undefined)?.data?.[key];
  return value === undefined ? undefined : Buffer.from(value, 'base64').toString('utf8');
};
type Policy = KubeObject & { spec: { ingress: { from?: Record<string, unknown>[]; ports: { port: number }[] }[] } };

test('client API by default: TLS with certificates the operator issues (hmac groups too), a token made once and kept, both in the client Secret; the NetworkPolicy admits labelled clients and the operator', (t) => {
  const cluster = new Cluster(kvDemo());
  const first = cluster.step();
  const client = find(first.objects, 'Secret', 'kv-demo-client');
  t.is(secretText(client, 'token'), CLIENT_TOKEN);
  t.is(secretText(client, 'ca.crt'), secretText(find(first.objects, 'Secret', 'kv-demo-node-1-tls'), 'ca.crt'), 'ca.crt: the authorities the members trust');
  const leaf = secretText(find(first.objects, 'Secret', 'kv-demo-node-2-tls'), 'tls.crt')!;
  t.true(issuedBy(leaf, secretText(client, 'ca.crt')!, new Date(NOW)));
  t.true(certificateFacts(leaf).dnsNames.includes('localhost'), 'a port-forward reaches https://localhost');
  t.true(certificateFacts(leaf).dnsNames.includes('kv-demo-2.kv-demo-peers.default.svc'));
  // The token is kept: a later reconcile with other randomness does not change it.
  const later = reconcile(cluster.input({ random: { hmacKey: HMAC_KEY, clientToken: 'another-token-that-must-not-be-used-0123' } }));
  t.is(secretText(find(later.objects, 'Secret', 'kv-demo-client'), 'token'), CLIENT_TOKEN);
  t.throws(() => reconcile({ ...new Cluster(kvDemo()).input(), random: { hmacKey: HMAC_KEY } }), { message: /needs a client API token: pass random\.clientToken/ });
  const pod = podOf(first.objects, 2);
  t.like(pod.spec.volumes.find((v) => v.name === 'api-token'), { secret: { secretName: 'kv-demo-client', items: [{ key: 'token', path: 'token' }] } });
  t.like(pod.spec.volumes.find((v) => v.name === 'api-tls'), { secret: { secretName: 'kv-demo-node-2-tls', items: [{ key: 'tls.crt', path: 'tls.crt' }, { key: 'tls.key', path: 'tls.key' }] } });
  const policy = find(first.objects, 'NetworkPolicy', 'kv-demo-peers') as Policy;
  t.deepEqual(policy.spec.ingress[1], {
    from: [
      { podSelector: { matchLabels: { 'derecho.dev/client': 'kv-demo' } } },
      { namespaceSelector: {}, podSelector: { matchLabels: { 'derecho.dev/operator': 'true' } } },
    ],
    ports: [{ protocol: 'TCP', port: 8080 }],
  }, 'no longer open to the whole cluster');
  const inNamespace = reconcile({ ...new Cluster(kvDemo()).input(), options: { operatorNamespace: 'derecho-system' } });
  t.deepEqual((find(inNamespace.objects, 'NetworkPolicy', 'kv-demo-peers') as Policy).spec.ingress[1]!.from![1], {
    namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'derecho-system' } }, podSelector: { matchLabels: { 'derecho.dev/operator': 'true' } },
  });
});

test('client API: mutual TLS serves it with the member\'s own certificate; allowedClients replaces the default selector; tls false and authentication none turn both off', (t) => {
  const mutual = reconcile(new Cluster(kvDemo({ tls: { mode: 'mutual' }, clientApi: { allowedClients: [{ namespaceSelector: { matchLabels: { team: 'web' } }, podSelector: {} }, { ipBlock: { cidr: '10.1.0.0/16' } }] } })).input());
  t.like(env(podOf(mutual.objects, 1)), { DERECHO_API_TLS_CERT_FILE: '/etc/derecho/auth/tls.crt', DERECHO_API_TLS_KEY_FILE: '/etc/derecho/auth/tls.key' });
  t.false(podOf(mutual.objects, 1).spec.volumes.some((v) => v.name === 'api-tls'));
  t.deepEqual((find(mutual.objects, 'NetworkPolicy', 'kv-demo-peers') as Policy).spec.ingress[1]!.from!.slice(0, 2), [
    { namespaceSelector: { matchLabels: { team: 'web' } }, podSelector: {} }, { ipBlock: { cidr: '10.1.0.0/16' } },
  ]);
  const open = reconcile(new Cluster(kvDemo({ clientApi: { tls: false, authentication: 'none' } })).input());
  t.deepEqual(open.objects.filter((o) => o.kind === 'Secret').map((o) => o.metadata.name), ['kv-demo-auth'], 'no certificate, no client Secret');
  const pod = podOf(open.objects, 1);
  t.false(Object.keys(env(pod)).some((name) => name.startsWith('DERECHO_API_')));
  t.deepEqual(pod.spec.containers[0]!.readinessProbe, { httpGet: { path: '/readyz', port: 'http' }, periodSeconds: 2, timeoutSeconds: 1, failureThreshold: 2 });
  t.deepEqual(pod.spec.volumes.map((v) => v.name), ['data', 'group', 'auth', 'tmp']);
});

test('client API with the user\'s token Secret: mounted as is, reported when missing; the client Secret keeps only ca.crt', (t) => {
  const cluster = new Cluster(kvDemo({ clientApi: { tokenSecretName: 'my-tokens' } }));
  const output = reconcile(cluster.input());
  t.like(conditionOf(output.status, 'Degraded'), { status: 'True', reason: 'AuthSecretMissing' });
  t.regex(conditionOf(output.status, 'Degraded').message, /Secret my-tokens \(spec\.clientApi\.tokenSecretName\) with the client API's tokens does not exist/);
  t.like(podOf(output.objects, 1).spec.volumes.find((v) => v.name === 'api-token'), { secret: { secretName: 'my-tokens' } });
  const client = find(output.objects, 'Secret', 'kv-demo-client') as ObservedSecret;
  t.deepEqual(Object.keys(client.data!), ['ca.crt']);
  const tokens = { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'my-tokens', namespace: 'default' }, data: { token: Buffer.from('a-user-token-of-enough-length\n').toString('base64') } };
  const fine = reconcile(cluster.input({ observed: { ...cluster.observed(), secrets: [...(cluster.observed().secrets ?? []), tokens] } }));
  t.like(conditionOf(fine.status, 'Degraded'), { status: 'False' });
  const noKey = reconcile(cluster.input({ observed: { ...cluster.observed(), secrets: [...(cluster.observed().secrets ?? []), { ...tokens, data: { other: 'eA==' } }] } }));
  t.is(conditionOf(noKey.status, 'Degraded').message, 'Secret my-tokens (spec.clientApi.tokenSecretName) has no key "token"');
});

test('mutual TLS: no certificate is made, each pod mounts its own certificate, and a missing Secret is reported', (t) => {
  const cluster = new Cluster(kvDemo({ tls: { mode: 'mutual', secretName: 'kv-certs' } }));
  const output = reconcile(cluster.input());
  t.deepEqual(output.objects.filter((o) => o.kind === 'Secret').map((o) => o.metadata.name), ['kv-demo-client'], 'only the client API\'s token');
  const pod = podOf(output.objects, 2);
  t.like(env(pod), { DERECHO_TLS_CERT_FILE: '/etc/derecho/auth/tls.crt', DERECHO_TLS_KEY_FILE: '/etc/derecho/auth/tls.key', DERECHO_TLS_CA_FILE: '/etc/derecho/auth/ca.crt' });
  t.like(pod.spec.volumes[2], { secret: { secretName: 'kv-certs', items: [{ key: 'ca.crt', path: 'ca.crt' }, { key: 'node-2.crt', path: 'tls.crt' }, { key: 'node-2.key', path: 'tls.key' }] } });
  t.like(conditionOf(output.status, 'Degraded'), { status: 'True', reason: 'AuthSecretMissing' });
  t.regex(conditionOf(output.status, 'Degraded').message, /Secret kv-certs \(spec.tls.secretName\) with the members' TLS material does not exist/);
  const partial = { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'kv-certs', namespace: 'default' }, data: { 'ca.crt': 'x', 'node-1.crt': 'x', 'node-1.key': 'x' } };
  const withSecret = reconcile(cluster.input({ observed: { ...cluster.observed(), secrets: [partial] } }));
  t.is(conditionOf(withSecret.status, 'Degraded').message, 'Secret kv-certs lacks node-2.crt, node-2.key, node-3.crt, node-3.key');
  t.is(find(output.objects, 'ConfigMap', 'kv-demo-config')!.metadata.annotations![ANNOTATION.tlsSecret], 'kv-certs');
});

test('mutual TLS without a Secret name: the operator issues an authority and a certificate per member, renews them without a roll, issues node 4\'s on scale-up and deletes it on scale-down', (t) => {
  const cluster = new Cluster(kvDemo({ tls: { mode: 'mutual' } }));
  const first = cluster.step();
  const secrets = first.objects.filter((o) => o.kind === 'Secret');
  t.deepEqual(secrets.map((s) => s.metadata.name), ['kv-demo-ca', 'kv-demo-node-1-tls', 'kv-demo-node-2-tls', 'kv-demo-node-3-tls', 'kv-demo-client']);
  t.like(secrets[1], { type: 'kubernetes.io/tls', metadata: { labels: { 'derecho.dev/node-id': '1', 'app.kubernetes.io/component': 'certificate' }, ownerReferences: [{ kind: 'DerechoGroup' }] } });
  const text = (object: KubeObject | undefined, key: string): string => Buffer.from((object as ObservedSecret).data![key]!, 'base64').toString('utf8');
  const ca = text(secrets[0], 'ca.crt');
  t.true(issuedBy(text(secrets[2], 'tls.crt'), ca, new Date(NOW)));
  t.is(certificateFacts(text(secrets[2], 'tls.crt')).commonName, 'node-2');
  const pod = podOf(first.objects, 2);
  t.like(pod.spec.volumes[2], { secret: { secretName: 'kv-demo-node-2-tls', items: [{ key: 'ca.crt', path: 'ca.crt' }, { key: 'tls.crt', path: 'tls.crt' }, { key: 'tls.key', path: 'tls.key' }] } });
  t.like(env(pod), { DERECHO_TLS_CERT_FILE: '/etc/derecho/auth/tls.crt', DERECHO_TLS_CA_FILE: '/etc/derecho/auth/ca.crt' });
  t.deepEqual(first.events.filter((e) => e.reason === 'CertificateIssued').map((e) => e.message.replace(/ \(.*/, '')), [
    "issued the group's certificate authority", "issued node 1's certificate", "issued node 2's certificate", "issued node 3's certificate",
  ]);
  t.like(conditionOf(first.status, 'Degraded'), { status: 'False' });
  t.is(find(first.objects, 'ConfigMap', 'kv-demo-config')!.metadata.annotations![ANNOTATION.tlsSecret], undefined);
  // Settled: the same certificates; 61 days on (90-day certificates): renewed in place, no pod rolled.
  cluster.step();
  t.deepEqual(cluster.step().events.filter((e) => e.reason === 'CertificateIssued'), []);
  const hashes = cluster.pods().map((p) => p.metadata.annotations![ANNOTATION.configHash]);
  cluster.advance(61 * 86_400);
  const renewed = cluster.step();
  t.is(renewed.events.filter((e) => e.reason === 'CertificateIssued').length, 3);
  t.deepEqual(renewed.deletes, []);
  t.deepEqual(cluster.pods().map((p) => p.metadata.annotations![ANNOTATION.configHash]), hashes, 'no pod rolled');
  t.is(text(find(renewed.objects, 'Secret', 'kv-demo-ca'), 'ca.crt'), ca, 'the same authority');
  // Scale to 4: node 4's certificate comes with its pod.
  cluster.setSpec({ members: 4 });
  const grown = cluster.step();
  t.truthy(find(grown.objects, 'Secret', 'kv-demo-node-4-tls'));
  t.truthy(find(grown.objects, 'Pod', 'kv-demo-4'));
  t.deepEqual(grown.events.filter((e) => e.reason === 'CertificateIssued').map((e) => e.message.replace(/ \(.*/, '')), ["issued node 4's certificate"]);
  for (let i = 0; i < 3; i++) cluster.step();
  // And back to 3: node 4's certificate goes with its pod.
  cluster.setSpec({ members: 3 });
  const shrunk = cluster.step();
  t.deepEqual(shrunk.deletes.filter((d) => d.kind === 'Secret').map((d) => d.name), ['kv-demo-node-4-tls']);
});

test('mutual TLS with cert-manager: a Certificate per member into the Secret the pod mounts; Degraded CertificatePending until cert-manager fills them; a scale-down deletes the Certificate, then the Secret', (t) => {
  const issuerRef = { name: 'group-ca', kind: 'ClusterIssuer', group: 'cert-manager.io' };
  const cluster = new Cluster(kvDemo({ tls: { mode: 'mutual', certManager: { issuerRef } } }));
  const first = cluster.step();
  t.deepEqual(first.objects.filter((o) => o.kind === 'Secret').map((o) => o.metadata.name), ['kv-demo-client'], 'the operator issues no certificate itself (the client Secret has the token, and ca.crt once cert-manager wrote one)');
  const certificates = first.objects.filter((o) => o.kind === 'Certificate') as (KubeObject & { spec: Record<string, unknown> })[];
  t.deepEqual(certificates.map((c) => c.metadata.name), ['kv-demo-node-1', 'kv-demo-node-2', 'kv-demo-node-3']);
  t.like(certificates[1], {
    apiVersion: 'cert-manager.io/v1',
    metadata: { labels: { 'derecho.dev/node-id': '2' }, ownerReferences: [{ kind: 'DerechoGroup' }] },
    spec: {
      secretName: 'kv-demo-node-2-tls', commonName: 'node-2', issuerRef, duration: '2160h', renewBefore: '720h',
      usages: ['digital signature', 'key encipherment', 'server auth', 'client auth'], privateKey: { algorithm: 'ECDSA', size: 256, rotationPolicy: 'Always' },
      secretTemplate: { labels: { 'app.kubernetes.io/instance': 'kv-demo', 'app.kubernetes.io/component': 'certificate', 'derecho.dev/node-id': '2' } },
    },
  });
  t.true((certificates[1]!.spec['dnsNames'] as string[]).includes('kv-demo-2.kv-demo-peers.default.svc'));
  t.like(podOf(first.objects, 2).spec.volumes[2], { secret: { secretName: 'kv-demo-node-2-tls', items: [{ key: 'ca.crt', path: 'ca.crt' }, { key: 'tls.crt', path: 'tls.crt' }, { key: 'tls.key', path: 'tls.key' }] } });
  t.like(conditionOf(first.status, 'Degraded'), { status: 'True', reason: 'CertificatePending' });
  t.regex(conditionOf(first.status, 'Degraded').message, /^waiting for cert-manager to issue the certificate of nodes 1, 2, 3 \(Certificate kv-demo-node-1, Certificate kv-demo-node-2, Certificate kv-demo-node-3; `kubectl describe certificate` says why/);
  // cert-manager fills the Secrets (with the labels of secretTemplate): nothing is pending any more.
  const filled = (id: number): ObservedSecret => ({
    apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/tls',
    metadata: { name: `kv-demo-node-${id}-tls`, namespace: 'default', uid: `secret-${id}`, labels: (certificates[id - 1]!.spec['secretTemplate'] as { labels: Record<string, string> }).labels },
    data: { 'tls.crt': 'Y2VydA==', 'tls.key': 'a2V5', 'ca.crt': 'Y2E=' },
  } as ObservedSecret);
  for (const id of [1, 2, 3]) cluster.objects.set(`Secret/kv-demo-node-${id}-tls`, filled(id));
  cluster.step();
  t.not(conditionOf(cluster.step().status, 'Degraded').reason, 'CertificatePending');
  // A fourth member's Secret is left as if scaled down: its Certificate goes first, then the Secret.
  cluster.objects.set('Secret/kv-demo-node-4-tls', { ...filled(1), metadata: { ...filled(1).metadata, name: 'kv-demo-node-4-tls', uid: 'secret-4', labels: { ...filled(1).metadata.labels, 'derecho.dev/node-id': '4' } } });
  const shrunk = cluster.step();
  t.deepEqual(shrunk.deletes.filter((d) => d.kind === 'Certificate' || d.kind === 'Secret').map((d) => `${d.kind}/${d.name}`), ['Certificate/kv-demo-node-4', 'Secret/kv-demo-node-4-tls']);
});

// ---------------------------------------------------------------------------------------------------
// Status from the agents' reports

test('a group whose members are all active in one view is Running, with the view, the shard table and the frontiers', (t) => {
  const cluster = new Cluster(kvDemo());
  const outputs = [cluster.step(), cluster.step(), cluster.step()];
  const status = outputs[2]!.status;
  t.is(status.phase, 'Running');
  t.is(status.readyMembers, '3/3');
  t.deepEqual(status.view, { id: 0, members: [1, 2, 3] });
  t.deepEqual(status.shards, [
    { subgroup: 'kv', shard: 0, members: [1, 2] },
    { subgroup: 'kv', shard: 1, members: [3] },
    { subgroup: 'events', shard: 0, members: [1, 2, 3] },
  ]);
  t.deepEqual(status.members![2], { nodeId: 3, pod: 'kv-demo-3', ready: true, mode: 'active', viewId: 0, delivered: { 'kv/1': '0.7', 'events/0': '0.7' }, persisted: { 'kv/1': '0.6', 'events/0': '0.6' } });
  t.deepEqual(conditionSummary(status), {
    Ready: 'True AllMembersReady', Progressing: 'False Reconciled', Degraded: 'False AsExpected', RestartQuorumPending: 'False NotRestarting', Stuck: 'False NotRestarting', SpecAccepted: 'True Accepted',
  });
  t.like(status, { observedGeneration: 1, desiredMembers: 3, currentMembers: 3, foundingMembers: 3, selector: 'app.kubernetes.io/name=derecho,app.kubernetes.io/instance=kv-demo,app.kubernetes.io/component=member' });
  t.deepEqual(outputs.flatMap((o) => o.events.map((e) => e.reason)), ['CertificateIssued', 'CertificateIssued', 'CertificateIssued', 'CertificateIssued', 'PodsCreated', 'Ready']);
  t.is(outputs[2]!.requeueAfterSeconds, 30);
  t.deepEqual(validateOpenApi(statusSchema, status, 'status'), []);
});

test('idempotence: reconciling the applied output again yields the same objects', (t) => {
  const cluster = new Cluster(kvDemo());
  const first = reconcile(cluster.input());
  cluster.apply(first);
  const second = reconcile(cluster.input());
  t.deepEqual(second.objects, first.objects);
  t.deepEqual(second.deletes, []);
  const stable = settled();
  const a = reconcile(stable.input());
  stable.apply(a);
  const b = reconcile(stable.input());
  t.deepEqual(b.objects, a.objects);
  t.deepEqual(b.status, a.status);
  t.deepEqual(b.events, []);
});

test('lastTransitionTime is kept when a condition does not change, and moves when it does', (t) => {
  const cluster = settled();
  const before = cluster.group.status!;
  const again = cluster.step().status;
  for (const type of ['Ready', 'Progressing', 'Degraded', 'RestartQuorumPending', 'SpecAccepted']) {
    t.is(conditionOf(again, type).lastTransitionTime, conditionOf(before, type).lastTransitionTime, type);
  }
  // Node 2 stops answering: Ready and Degraded change now; the others keep their times.
  const base = cluster.reports();
  const later = '2026-01-01T01:00:00.000Z';
  const degraded = reconcile(cluster.input({ reports: { ...base, 2: null }, now: later })).status;
  t.like(conditionOf(degraded, 'Ready'), { status: 'False', reason: 'MembersNotReady', lastTransitionTime: later });
  t.like(conditionOf(degraded, 'Degraded'), { status: 'True', reason: 'MembersUnavailable', lastTransitionTime: later, message: 'node 2: the agent does not answer /status' });
  t.is(conditionOf(degraded, 'SpecAccepted').lastTransitionTime, conditionOf(before, 'SpecAccepted').lastTransitionTime);
  t.is(degraded.phase, 'Degraded');
  t.is(degraded.readyMembers, '2/3');
  // observedGeneration follows the spec.
  cluster.setSpec({ fsync: 'os' });
  t.is(conditionOf(reconcile(cluster.input()).status, 'SpecAccepted').observedGeneration, 2);
});

test('a crashed member stays Degraded after the view without it is installed (its row no longer says it was in a view)', (t) => {
  const cluster = settled();
  const base = cluster.reports();
  // Node 2 crashes: first the others still report view 0 with it, then they install view 1 without it.
  cluster.group = { ...cluster.group, status: reconcile(cluster.input({ reports: { ...base, 2: null } })).status };
  t.like(conditionOf(cluster.group.status!, 'Degraded'), { status: 'True', reason: 'MembersUnavailable' });
  t.is(cluster.group.status!.members![1]!.viewId, -1);
  const without2 = (id: number) => report(id, { viewId: 1, members: [1, 3], layout: base[id]!.layout });
  const after = reconcile(cluster.input({ reports: { 1: without2(1), 2: null, 3: without2(3) } })).status;
  t.like(conditionOf(after, 'Degraded'), { status: 'True', reason: 'MembersUnavailable', message: 'node 2: the agent does not answer /status' });
  t.is(after.phase, 'Degraded');
});

test('a member that reports restarting with quorum pending sets RestartQuorumPending with the missing nodes and shards', (t) => {
  // The agent's message, as the real restart planner words it: node 1 is back, 2 and 3 are not.
  const spec = GroupSpec.parse(kvDemo().spec);
  const policy = toGroupPolicy(spec);
  const layout = allocate(policy, null, [1, 2, 3]);
  if (!layout.adequate) throw new Error('layout');
  const lastView: View = { viewId: 4, members: [1, 2, 3], layout: layout.layout };
  const restartReport: RestartReport = { nodeId: 1, lastView, highestViewIdSeen: 4, trims: [], logTails: [], promised: null };
  const plan = planRestart(policy, [restartReport]);
  if (plan.ready) throw new Error('the quorum should not hold');
  t.is(plan.message, 'restart quorum not met for view 4: 1 of 3 members returned with their saved state (need 2; waiting for nodes 2, 3); shard kv/1 has no returning member holding its state (former members 3); the restart view would be inadequate: subgroup "kv" shard 1 needs 1 node but only 0 can be assigned (1 members, 1 already serving other shards)');

  const cluster = settled();
  cluster.deletePods([2, 3]);
  const output = reconcile(cluster.input({ reports: { 1: restartingReport(1, plan.message) } }));
  t.is(output.status.phase, 'Restarting');
  t.deepEqual(output.status.restart, { waitingFor: plan.message, missingMembers: [2, 3], missingShards: [{ subgroup: 'kv', shard: 1, formerMembers: [3] }], reporting: [1] });
  t.like(conditionOf(output.status, 'RestartQuorumPending'), { status: 'True', reason: 'QuorumNotMet' });
  // In plain words (the agents' wording, with "inadequate" and "restart view", stays in status.restart.waitingFor).
  t.is(conditionOf(output.status, 'RestartQuorumPending').message, 'node 1 is back; shard kv/1 needs one of its former members back (node 3), with its volume; waiting for nodes 2, 3');
  t.like(conditionOf(output.status, 'Ready'), { status: 'False', reason: 'RestartQuorumPending', message: 'restarting after a total failure: node 1 is back; shard kv/1 needs one of its former members back (node 3), with its volume; waiting for nodes 2, 3' });
  for (const c of output.status.conditions!) t.notRegex(c.message, /inadequate|restart view|quorum not met/, c.type);
  t.true(output.events.some((e) => e.type === 'Warning' && e.reason === 'RestartQuorumPending'));
  // The missing pods are recreated on their volumes.
  t.deepEqual(output.objects.filter((o) => o.kind === 'Pod').map((o) => o.metadata.name), ['kv-demo-1', 'kv-demo-2', 'kv-demo-3']);
  t.deepEqual(output.deletes, []);
  t.deepEqual(validateOpenApi(statusSchema, output.status, 'status'), []);
});

test('a restart waiting longer than spec.restart.quorumTimeoutSeconds is reported Stuck, in plain words, with a Warning', (t) => {
  const message = 'restart quorum not met for view 4: 1 of 3 members returned with their saved state (need 2; waiting for nodes 2, 3); shard kv/1 has no returning member holding its state (former members 3)';
  const cluster = settled();
  cluster.setSpec({ restart: { graceSeconds: 1.5, quorumTimeoutSeconds: 120 } });
  cluster.deletePods([2, 3]);
  const at = (seconds: number) => new Date(Date.parse('2026-01-01T00:00:00.000Z') + seconds * 1000).toISOString();
  const step = (seconds: number) => {
    const output = reconcile(cluster.input({ reports: { 1: restartingReport(1, message) }, now: at(seconds) }));
    cluster.group = { ...cluster.group, status: output.status };
    return output;
  };
  const first = step(0);
  t.like(conditionOf(first.status, 'RestartQuorumPending'), { status: 'True', lastTransitionTime: at(0) });
  t.like(conditionOf(first.status, 'Stuck'), { status: 'False', reason: 'RestartWaiting', message: 'the restart has waited 0 s; reported stuck after 2 min (spec.restart.quorumTimeoutSeconds)' });
  t.like(conditionOf(step(119).status, 'Stuck'), { status: 'False', reason: 'RestartWaiting', message: 'the restart has waited 1 min 59 s; reported stuck after 2 min (spec.restart.quorumTimeoutSeconds)' });
  const stuck = step(125);
  t.like(conditionOf(stuck.status, 'Stuck'), { status: 'True', reason: 'RestartQuorumTimeout', lastTransitionTime: at(125) });
  t.is(conditionOf(stuck.status, 'Stuck').message,
    'the restart after a total failure has waited 2 min 5 s, more than spec.restart.quorumTimeoutSeconds (120 s): node 1 is back; shard kv/1 needs one of its former members back (node 3), with its volume; ' +
    'waiting for nodes 2, 3. Members keep their logs and keep waiting; bring back the pods (and volumes) named here (see docs/operations.md, "A stuck restart").');
  t.deepEqual(stuck.events.filter((e) => e.reason === 'RestartStuck').map((e) => e.type), ['Warning']);
  t.is(stuck.status.phase, 'Restarting');
  // The Warning is not repeated while it stays stuck; the condition keeps its transition time.
  const later = step(3 * 3600 + 60);
  t.deepEqual(later.events.filter((e) => e.reason === 'RestartStuck'), []);
  t.like(conditionOf(later.status, 'Stuck'), { status: 'True', lastTransitionTime: at(125) });
  t.regex(conditionOf(later.status, 'Stuck').message, /^the restart after a total failure has waited 3 h 1 min,/);
  // The restart completes: no longer stuck.
  cluster.agents = 'active';
  cluster.step({ now: at(4 * 3600) });
  const done = cluster.step({ now: at(4 * 3600 + 1) });
  t.like(conditionOf(done.status, 'Stuck'), { status: 'False', reason: 'NotRestarting' });
  // quorumTimeoutSeconds 0: never stuck.
  cluster.setSpec({ restart: { graceSeconds: 1.5, quorumTimeoutSeconds: 0 } });
  cluster.group = { ...cluster.group, status: first.status };
  const never = reconcile(cluster.input({ reports: { 1: restartingReport(1, message) }, now: at(86_400 * 30) }));
  t.like(conditionOf(never.status, 'Stuck'), { status: 'False', reason: 'RestartWaiting' });
  t.regex(conditionOf(never.status, 'Stuck').message, /no deadline \(spec.restart.quorumTimeoutSeconds: 0\)$/);
  t.deepEqual(validateOpenApi(statusSchema, stuck.status, 'status'), []);
});

test('parseRestartMessage reads the planner\'s and the replica\'s messages', (t) => {
  const cases: [string, ReturnType<typeof parseRestartMessage>][] = [
    ['restart quorum not met for view 2: 1 of 3 members returned (need 2; waiting for node 3)', { members: [3], shards: [] }],
    ['restart quorum not met for view 2: 1 of 3 members returned with their saved state (need 2; waiting for node 3)', { members: [3], shards: [] }],
    ['restart quorum not met for view 5: 2 of 5 members of view 4 (the restart adopts view 5, which followed it) returned with their saved state (need 3; waiting for nodes 3, 4, 5)', { members: [3, 4, 5], shards: [] }],
    ['restart quorum holds for view 7; grace period for nodes 4, 5', { members: [4, 5], shards: [] }],
    ['restart quorum holds for view 7; waiting for the restart leader', { members: null, shards: [] }],
    ['restart quorum not met for view 1: shard events/0 has no returning member (former members 2, 3); shard kv/2 has no returning member holding its state (former members 9)',
      { members: null, shards: [{ subgroup: 'events', shard: 0, formerMembers: [2, 3] }, { subgroup: 'kv', shard: 2, formerMembers: [9] }] }],
    ['restarting: collecting restart reports', { members: null, shards: [] }],
  ];
  for (const [message, expected] of cases) t.deepEqual(parseRestartMessage(message), expected, message);
});

test('after a total failure the pods are recreated on their volumes and the restart quorum is surfaced until it holds', (t) => {
  const cluster = settled();
  cluster.deletePods([1, 2, 3]);
  cluster.agents = 'down';
  const recreate = cluster.step();
  t.deepEqual(recreate.objects.filter((o) => o.kind === 'Pod').map((o) => o.metadata.name), ['kv-demo-1', 'kv-demo-2', 'kv-demo-3']);
  t.is(recreate.events.find((e) => e.reason === 'PodsCreated')!.message, 'creating pod(s) for nodes 1, 2, 3 (on existing volume(s) of nodes 1, 2, 3)');
  t.like(conditionOf(recreate.status, 'RestartQuorumPending'), { status: 'Unknown', reason: 'NoReports' });
  t.deepEqual(recreate.status.view, { id: 0, members: [1, 2, 3] }, 'the last view is kept while no member is active');
  t.is(recreate.status.phase, 'Unavailable');
  // The agents come back restarting; node 3 is slow.
  cluster.agents = (id) => (id === 3 ? null : restartingReport(id, 'restart quorum holds for view 0; grace period for nodes 3'));
  const pending = cluster.step();
  t.like(pending.status.restart, { missingMembers: [3], reporting: [1, 2] });
  t.like(conditionOf(pending.status, 'RestartQuorumPending'), { status: 'True', reason: 'Restarting' });
  // The restart completes: everyone active in a new view.
  cluster.agents = 'active';
  const done = cluster.step();
  t.is(done.status.phase, 'Running');
  t.like(conditionOf(done.status, 'RestartQuorumPending'), { status: 'False', reason: 'NotRestarting' });
  t.is(done.status.restart, undefined);
});

// ---------------------------------------------------------------------------------------------------
// Quorum-safe scaling

test('scaling 3 -> 5 adds one member at a time, each once every member is active in one view', (t) => {
  const cluster = settled();
  cluster.setSpec({ members: 5 });
  const history = runUntilSettled(cluster);
  t.deepEqual(history, [[1, 2, 3, 4], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]);
  t.deepEqual(cluster.outputs.flatMap((o) => o.events.filter((e) => e.reason === 'MemberAdded').map((e) => e.message)), [
    'adding node 4 (members 3 -> 4 of 5); it joins view 0 and receives its shards\' state by transfer',
    'adding node 5 (members 4 -> 5 of 5); it joins view 1 and receives its shards\' state by transfer',
  ]);
  t.is(cluster.group.status!.phase, 'Running');
  t.is(cluster.group.status!.currentMembers, 5);
  t.deepEqual(cluster.group.status!.view!.members, [1, 2, 3, 4, 5]);
  const configMap = cluster.objects.get('ConfigMap/kv-demo-config')!;
  t.like(configMap.metadata.annotations, { [ANNOTATION.foundingMembers]: '3', [ANNOTATION.members]: '5' });
  t.regex((configMap as KubeObject & { data: Record<string, string> }).data['group.yaml']!, /\n {2}members: 3\n/, 'the manifest keeps the founding count, so nodes 4 and 5 join');
  t.is(env(cluster.objects.get('Pod/kv-demo-5') as Pod).DERECHO_PEERS!.split(',').length, 4);
  t.is((cluster.objects.get('PodDisruptionBudget/kv-demo') as KubeObject & { spec: { minAvailable: number } }).spec.minAvailable, 3);
});

test('scaling up waits while a member is not active, and says why', (t) => {
  const cluster = settled();
  const inView0 = cluster.reports();
  cluster.setSpec({ members: 5 });
  cluster.step();
  t.deepEqual(cluster.podIds(), [1, 2, 3, 4]);
  // Nodes 1..3 are still in view 0; node 4 is joining.
  const reports = { ...inView0, 4: report(4, { mode: 'joining', viewId: -1, members: [], ready: false, waiting: { kind: 'joining', message: 'joining: waiting for a welcome' } }) };
  const waiting = reconcile(cluster.input({ reports }));
  t.false(waiting.objects.some((o) => o.metadata.name === 'kv-demo-5'));
  t.like(conditionOf(waiting.status, 'Progressing'), { status: 'True', reason: 'ScalingUp', message: 'waiting to add node 5: node 4 is not active and ready' });
  t.like(waiting.status.members![3], { nodeId: 4, mode: 'joining', ready: false, waiting: 'joining: waiting for a welcome' });
  t.is(waiting.status.phase, 'Scaling');
  t.is(waiting.status.readyMembers, '3/5');
  t.like(conditionOf(waiting.status, 'Degraded'), { status: 'False' }, 'a joiner that was never in a view does not make the group degraded');
});

test('scaling 5 -> 3 removes the highest id first, one at a time, and keeps the volumes', (t) => {
  const cluster = settled();
  cluster.setSpec({ members: 5 });
  runUntilSettled(cluster);
  cluster.setSpec({ members: 3 });
  const removal = cluster.step();
  // (The member's certificate, issued for the client API's TLS, goes with it.)
  t.deepEqual(removal.deletes.map((d) => `${d.kind}/${d.name}`), ['Secret/kv-demo-node-5-tls', 'Pod/kv-demo-5']);
  t.true(removal.events.some((e) => e.reason === 'MemberRemoved' && e.message === 'removing node 5 (members 5 -> 4 of 3); its volume kv-demo-5-data is kept'));
  const history = runUntilSettled(cluster);
  t.deepEqual(history, [[1, 2, 3], [1, 2, 3]]);
  t.true(cluster.objects.has('PersistentVolumeClaim/kv-demo-4-data'));
  t.true(cluster.objects.has('PersistentVolumeClaim/kv-demo-5-data'));
  t.is(cluster.group.status!.currentMembers, 3);
  t.is(cluster.group.status!.phase, 'Running');
});

test('scaling down below a shard\'s minimum is refused: a condition and an event, the objects unchanged', (t) => {
  const cluster = settled();
  const before = reconcile(cluster.input());
  cluster.setSpec({ members: 2 });
  const refused = reconcile(cluster.input());
  t.deepEqual(refused.objects, before.objects);
  t.deepEqual(refused.deletes, []);
  t.like(conditionOf(refused.status, 'SpecAccepted'), { status: 'False', reason: 'ScalingRefused', observedGeneration: 2 });
  t.regex(conditionOf(refused.status, 'SpecAccepted').message, /^spec\.members 2 is refused, the group stays at 3 members: spec\.subgroups\[0\]\.reservedNodeIds\[1\]\[0\]: 3 is not a member's node id/);
  t.like(conditionOf(refused.status, 'Progressing'), { status: 'False', reason: 'ScalingRefused' });
  t.deepEqual(refused.events.map((e) => `${e.type} ${e.reason}`), ['Warning ScalingRefused']);
  t.is(refused.status.phase, 'Running');
  t.is(refused.status.readyMembers, '3/3');
  // Without reserved ids the allocator's minimum decides: events needs 2 nodes, 1 member is too few.
  const plain = settled({ members: 2, subgroups: [{ name: 'events', type: 'log', minNodesPerShard: 2, maxNodesPerShard: 3 }] });
  plain.setSpec({ members: 1 });
  const tooFew = reconcile(plain.input());
  t.regex(conditionOf(tooFew.status, 'SpecAccepted').message, /spec\.members: 1 is too few members for the subgroups: subgroup "events" shard 0 needs 2 nodes/);
  t.deepEqual(tooFew.deletes, []);
});

test('scaling 2 -> 1 is refused: one of two members is not a majority of the view', (t) => {
  const cluster = settled({ members: 2, subgroups: [{ name: 'kv', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 2 }] });
  cluster.setSpec({ members: 1 });
  const output = reconcile(cluster.input());
  t.deepEqual(output.deletes, []);
  t.regex(conditionOf(output.status, 'SpecAccepted').message, /removing node 2 leaves 1 of 2 members, not a majority of the view/);
  t.like(conditionOf(output.status, 'Progressing'), { status: 'False', reason: 'ScalingRefused' });
  t.is(output.status.phase, 'Running');
  t.is(output.status.readyMembers, '2/2');
});

test('a spec the founding member count cannot carry is refused (the manifest keeps members: <founding>)', (t) => {
  const cluster = settled();
  const before = cluster.objects.get('ConfigMap/kv-demo-config');
  cluster.setSpec({ members: 4, subgroups: [...(cluster.group.spec as { subgroups: unknown[] }).subgroups.slice(0, 1), { name: 'events', type: 'log', minNodesPerShard: 2, maxNodesPerShard: 4, reservedNodeIds: [[1, 2, 3, 4]] }] });
  const output = reconcile(cluster.input());
  t.deepEqual(output.objects, []);
  t.like(conditionOf(output.status, 'SpecAccepted'), { status: 'False', reason: 'ManifestRejected' });
  t.regex(conditionOf(output.status, 'SpecAccepted').message, /keeps members: 3 .*spec\.subgroups\[1\]\.reservedNodeIds\[0\]\[3\]: 4 is not a member's node id/);
  t.is(output.status.phase, 'Invalid');
  t.is(cluster.objects.get('ConfigMap/kv-demo-config'), before);
});

test('an invalid spec changes nothing and names the field and the value', (t) => {
  const cluster = settled();
  cluster.setSpec({ subgroups: [{ name: 'kv', type: 'kv', minNodesPerShard: 3, maxNodesPerShard: 2 }] });
  const output = reconcile(cluster.input());
  t.deepEqual(output.objects, []);
  t.deepEqual(output.deletes, []);
  t.like(conditionOf(output.status, 'SpecAccepted'), { status: 'False', reason: 'InvalidSpec', message: 'spec.subgroups[0].minNodesPerShard: 3 is greater than maxNodesPerShard 2' });
  t.like(conditionOf(output.status, 'Ready'), { status: 'True' }, 'the running group is still ready');
  t.deepEqual(output.events.map((e) => `${e.type} ${e.reason}`), ['Warning InvalidSpec']);
  t.deepEqual(validateOpenApi(statusSchema, output.status, 'status'), []);
  // A new group with an invalid spec creates nothing.
  const fresh = reconcile(new Cluster(kvDemo({ members: 0 })).input());
  t.deepEqual(fresh.objects, []);
  t.like(conditionOf(fresh.status, 'Ready'), { status: 'False', reason: 'InvalidSpec', message: 'the group is not created: its spec is invalid' });
});

// ---------------------------------------------------------------------------------------------------
// Pods: rolling restarts, failures, strays

test('a spec change restarts the pods one at a time, followers first and the leader last', (t) => {
  const cluster = settled();
  cluster.setSpec({ image: 'ghcr.io/derecho-ts/node-agent:0.2.0' });
  const rolled: string[] = [];
  for (let i = 0; i < 12; i++) {
    const output = cluster.step();
    if (i > 0 && output.status.phase === 'Running') break;
    t.true(output.deletes.length <= 1);
    rolled.push(...output.deletes.map((d) => d.name));
    t.true(cluster.podIds().length >= 2, 'never more than one member down');
  }
  t.deepEqual(rolled, ['kv-demo-3', 'kv-demo-2', 'kv-demo-1']);
  for (const id of [1, 2, 3]) t.is((cluster.objects.get(`Pod/kv-demo-${id}`) as Pod).spec.containers[0]!.image, 'ghcr.io/derecho-ts/node-agent:0.2.0');
});

test('restarting the only member of a persistent shard is a Warning naming the shard (the group stops until it is back)', (t) => {
  // The example: kv shard 1 lives on node 3 alone; nodes 1 and 2 hold kv/0 and events/0 together.
  const cluster = settled();
  cluster.setSpec({ image: 'ghcr.io/derecho-ts/node-agent:0.2.0' });
  const first = cluster.step();
  t.deepEqual(first.deletes.map((d) => d.name), ['kv-demo-3']);
  const restart = first.events.find((e) => e.reason === 'RollingRestart')!;
  t.is(restart.type, 'Warning');
  t.regex(restart.message, /node 3 is the only member of shard kv\/1: the group cannot change views without it and stops until it is back/);
  t.regex(conditionOf(first.status, 'Progressing').message, /^restarting node 3 with the new spec; outdated: nodes 1, 2, 3; node 3 is the only member of shard kv\/1/);
  // Nodes 2 and 1 share every shard: their restarts are ordinary.
  const rest: string[] = [];
  for (let i = 0; i < 10 && cluster.podIds().length > 0; i++) {
    const output = cluster.step();
    for (const event of output.events.filter((e) => e.reason === 'RollingRestart')) rest.push(`${event.type} ${event.related?.name ?? ''}`);
    if (output.status.phase === 'Running') break;
  }
  t.deepEqual(rest, ['Normal kv-demo-2', 'Normal kv-demo-1']);
  // With a second member in kv/1 (4 members), no restart stops the group.
  const wide = settled({ members: 4, subgroups: [{ name: 'kv', type: 'kv', shards: 2, minNodesPerShard: 1, maxNodesPerShard: 2, reservedNodeIds: [[1, 2], [3, 4]] }, { name: 'events', type: 'log', minNodesPerShard: 2, maxNodesPerShard: 3, reservedNodeIds: [[1, 2, 3]] }] });
  wide.setSpec({ image: 'ghcr.io/derecho-ts/node-agent:0.2.0' });
  const types: string[] = [];
  for (let i = 0; i < 16; i++) {
    const output = wide.step();
    types.push(...output.events.filter((e) => e.reason === 'RollingRestart').map((e) => e.type));
    if (i > 0 && output.status.phase === 'Running') break;
  }
  t.deepEqual(types, ['Normal', 'Normal', 'Normal', 'Normal']);
});

test('changes no agent acts on roll no pod: volume growth, retention, the stuck timeout, the client API\'s allowed clients (issue 15 findings 5, 2)', (t) => {
  const hashes = (output: ReturnType<typeof reconcile>) =>
    output.objects.filter((o) => o.kind === 'Pod').map((o) => o.metadata.annotations![ANNOTATION.configHash]);
  const cluster = settled();
  const before = hashes(reconcile(cluster.input()));
  t.is(before.length, 3);
  for (const patch of [
    { storage: { size: '2Gi', retention: 'retain' } },
    { storage: { size: '2Gi', retention: 'delete' } },
    { restart: { graceSeconds: 1.5, quorumTimeoutSeconds: 60 } },
    // Who may reach the client API: the NetworkPolicy only.
    { clientApi: { allowedClients: [{ namespaceSelector: {} }] } },
  ]) {
    cluster.setSpec(patch);
    const output = cluster.step();
    t.deepEqual(hashes(output), before, JSON.stringify(patch));
    t.deepEqual(output.deletes, [], JSON.stringify(patch));
    t.is(output.status.phase, 'Running', JSON.stringify(patch));
    t.like(conditionOf(output.status, 'Progressing'), { status: 'False', reason: 'Reconciled' });
    t.false(output.status.members!.some((m) => m.outdated === true));
  }
  // The volumes grow (the API server expands them where the StorageClass allows it).
  const claims = cluster.step().objects.filter((o) => o.kind === 'PersistentVolumeClaim') as (KubeObject & { spec: { resources: { requests: { storage: string } } } })[];
  t.deepEqual(claims.map((c) => c.spec.resources.requests.storage), ['2Gi', '2Gi', '2Gi']);
  // A change the agents act on (the failure detector) still rolls them.
  cluster.setSpec({ timing: { tickMs: 50, heartbeatMs: 100, suspectMs: 2000 } });
  const rolled = cluster.step();
  t.like(conditionOf(rolled.status, 'Progressing'), { status: 'True', reason: 'RollingUpdate' });
  t.deepEqual(rolled.status.members!.map((m) => m.outdated ?? false), [true, true, true]);
});

test('withWriteFailures: refused writes become Progressing=False WriteRefused and Warnings; events claiming them are dropped', (t) => {
  const output = reconcile(new Cluster(kvDemo()).input());
  t.true(output.events.some((e) => e.reason === 'PodsCreated'));
  t.is(withWriteFailures(output, [], null, '2026-01-01T00:00:05.000Z'), output, 'no failure: unchanged');
  const failures: WriteFailure[] = [
    { verb: 'apply', kind: 'Pod', name: 'kv-demo-2', code: 403, message: 'pods "kv-demo-2" is forbidden: exceeded quota' },
    { verb: 'delete', kind: 'Pod', name: 'kv-demo-9', code: null, message: 'socket hang up' },
  ];
  const amended = withWriteFailures(output, failures, output.status, '2026-01-01T00:00:05.000Z');
  t.like(conditionOf(amended.status, 'Progressing'), {
    status: 'False', reason: 'WriteRefused', lastTransitionTime: '2026-01-01T00:00:05.000Z',
    message: 'the API server refused 2 writes; retrying with backoff: creating or updating Pod kv-demo-2 was refused (HTTP 403): pods "kv-demo-2" is forbidden: exceeded quota; deleting Pod kv-demo-9 was refused: socket hang up',
  });
  t.deepEqual(amended.status.conditions!.map((c) => c.type), output.status.conditions!.map((c) => c.type), 'the other conditions stay, in order');
  t.false(amended.events.some((e) => e.reason === 'PodsCreated'), 'PodsCreated named kv-demo-2, which was refused');
  t.deepEqual(amended.events.filter((e) => e.reason === 'WriteRefused').map((e) => `${e.type} ${e.action}: ${e.message}`), [
    'Warning Apply: creating or updating Pod kv-demo-2 was refused (HTTP 403): pods "kv-demo-2" is forbidden: exceeded quota',
    'Warning Delete: deleting Pod kv-demo-9 was refused: socket hang up',
  ]);
  // Still refused at the next round: the condition keeps its transition time.
  const again = withWriteFailures(output, failures, amended.status, '2026-01-01T00:00:09.000Z');
  t.is(conditionOf(again.status, 'Progressing').lastTransitionTime, '2026-01-01T00:00:05.000Z');
  // A refused ConfigMap does not hide the PodsCreated of pods that were created.
  const other = withWriteFailures(output, [{ verb: 'apply', kind: 'ConfigMap', name: 'kv-demo-config', code: 422, message: 'invalid' }], null, '2026-01-01T00:00:05.000Z');
  t.true(other.events.some((e) => e.reason === 'PodsCreated'));
  t.deepEqual(validateOpenApi(statusSchema, amended.status, 'status'), []);
});

test('a crash-looping member says why, from its container\'s last termination message (issue 15 finding 4)', (t) => {
  const cluster = settled();
  const message = 'invalid configuration: spec.transport: "rdma" needs RDMA on this node, but this node has no RDMA device (ibv_get_device_list lists none).';
  const pod3 = cluster.pods().find((p) => p.metadata.name === 'kv-demo-3')!;
  pod3.status = {
    ...pod3.status,
    containerStatuses: [{ name: 'agent', restartCount: 4, state: { waiting: { reason: 'CrashLoopBackOff', message: 'back-off 40s restarting failed container' } }, lastState: { terminated: { exitCode: 2, reason: 'Error', message } } }],
  };
  const output = reconcile(cluster.input({ reports: { ...cluster.reports(), 3: null } }));
  const row = output.status.members!.find((m) => m.nodeId === 3)!;
  t.is(row.mode, 'crashLooping');
  t.is(row.waiting, `the agent keeps failing (CrashLoopBackOff): it restarted 4 times; last exit: code 2: ${message}`);
  t.like(conditionOf(output.status, 'Degraded'), { status: 'True', reason: 'MembersUnavailable' });
  t.regex(conditionOf(output.status, 'Degraded').message, /^node 3: the agent keeps failing \(CrashLoopBackOff\): .*needs RDMA on this node/);
  // Running again after a failure, but not answering yet: the last exit is still said.
  pod3.status = { ...pod3.status, containerStatuses: [{ name: 'agent', restartCount: 1, state: { running: {} }, lastState: { terminated: { exitCode: 137, signal: 9, message: '' } } }] };
  const again = reconcile(cluster.input({ reports: { ...cluster.reports(), 3: null } })).status.members!.find((m) => m.nodeId === 3)!;
  t.like(again, { mode: 'unreachable', waiting: 'the agent does not answer /status (it restarted 1 time; last exit: signal 9)' });
  // The pod asks the kubelet for that message.
  const pod = output.objects.find((o) => o.kind === 'Pod') as KubeObject & { spec: { containers: { terminationMessagePolicy?: string }[] } } | undefined;
  const spec = pod ?? reconcile(new Cluster(kvDemo()).input()).objects.find((o) => o.kind === 'Pod') as KubeObject & { spec: { containers: { terminationMessagePolicy?: string }[] } };
  t.is(spec.spec.containers[0]!.terminationMessagePolicy, 'FallbackToLogsOnError');
  t.deepEqual(validateOpenApi(statusSchema, output.status, 'status'), []);
});

test('every member ready but not in one view: Ready says where each one is, not "3 of 3 members ready" (issue 15 finding 4)', (t) => {
  const cluster = settled();
  const reports = {
    1: report(1, { viewId: 5, members: [1, 2, 3] }),
    2: report(2, { viewId: 5, members: [1, 2, 3] }),
    3: report(3, { viewId: 4, members: [1, 2, 3] }),
  };
  const ready = conditionOf(reconcile(cluster.input({ reports })).status, 'Ready');
  t.like(ready, { status: 'False', reason: 'MembersNotReady', message: 'every member is ready but they are not yet in one view: node 3 in view 4; nodes 1, 2 in view 5' });
  const notHeld = { 1: report(1, { viewId: 6, members: [1, 2] }), 2: report(2, { viewId: 6, members: [1, 2] }), 3: report(3, { viewId: 6, members: [1, 2] }) };
  t.is(conditionOf(reconcile(cluster.input({ reports: notHeld })).status, 'Ready').message,
    'every member is ready but they are not yet in one view: nodes 1, 2, 3 in view 6; view 6 does not hold node 3 yet');
});

test('the last member of a scale-up still joining: phase Scaling, not Degraded (issue 15 finding 4)', (t) => {
  const cluster = settled();
  const inView0 = cluster.reports();
  cluster.setSpec({ members: 4 });
  cluster.step();
  const joining = report(4, { mode: 'joining', viewId: -1, members: [], ready: false, waiting: { kind: 'joining', message: 'joining the running group through node 1' } });
  const output = reconcile(cluster.input({ reports: { ...inView0, 4: joining } }));
  t.is(output.status.currentMembers, 4);
  t.is(output.status.phase, 'Scaling');
  t.like(conditionOf(output.status, 'Degraded'), { status: 'False' });
  t.like(conditionOf(output.status, 'Ready'), { status: 'False', reason: 'MembersNotReady' });
});

test('members whose pods are being deleted are not shown running, even while their agents still answer (issue 15 finding 4)', (t) => {
  const cluster = settled();
  const stillAnswering = cluster.reports();
  for (const pod of cluster.pods()) pod.metadata.deletionTimestamp = '2026-01-01T00:10:00.000Z';
  const status = reconcile(cluster.input({ reports: stillAnswering })).status;
  t.not(status.phase, 'Running');
  t.is(status.readyMembers, '0/3');
  t.deepEqual(status.members!.map((m) => `${m.mode}: ${m.waiting}`), ['absent: pod terminating', 'absent: pod terminating', 'absent: pod terminating']);
  t.like(conditionOf(status, 'Ready'), { status: 'False' });
});

test('a member with the wrong key: Degraded AuthenticationFailed naming it, not a restart after a total failure (issue 15 finding 4)', (t) => {
  const cluster = settled();
  const base = cluster.reports();
  const refused = { peer: 3, remote: '10.0.0.3:40112', message: 'closing connection #7: n3 failed to prove knowledge of the group secret (wrong secret?)', secondsAgo: 1.5 };
  const reports = {
    1: { ...report(1, { viewId: 1, members: [1, 2] }), transport: { lastHandshakeFailure: refused } },
    2: report(2, { viewId: 1, members: [1, 2] }),
    // Node 3 (wrong key) hears from no one: it takes itself for the survivor of a total failure.
    3: restartingReport(3, 'restart quorum not met for view 0: 1 of 3 members returned with their saved state (need 2; waiting for nodes 1, 2)'),
  };
  const status = reconcile(cluster.input({ reports: { ...base, ...reports } })).status;
  t.not(status.phase, 'Restarting');
  t.is(status.restart, undefined);
  t.like(conditionOf(status, 'RestartQuorumPending'), { status: 'False' });
  t.like(conditionOf(status, 'Degraded'), { status: 'True', reason: 'AuthenticationFailed' });
  t.regex(conditionOf(status, 'Degraded').message, /^node 3: cannot authenticate with the other members \(wrong key or certificate\?\): node 1 refuses its connections: closing connection #7: n3 failed to prove knowledge of the group secret \(wrong secret\?\); it reports: restart quorum not met/);
  // An old failure (a member that has since been fixed) does not count.
  const old = { ...reports, 1: { ...reports[1], transport: { lastHandshakeFailure: { ...refused, secondsAgo: 600 } } } };
  t.like(conditionOf(reconcile(cluster.input({ reports: { ...base, ...old } })).status, 'Degraded'), { reason: 'MembersUnavailable' });
});

test('a member that alone holds a persistent shard gets a budget of its own that forbids evicting it; it goes when the shard gets a second member (issue 15 finding 3)', (t) => {
  const cluster = settled();
  const budgets = (output: ReturnType<typeof reconcile>) => output.objects.filter((o) => o.kind === 'PodDisruptionBudget') as (KubeObject & { spec: Record<string, unknown> })[];
  const first = cluster.step();
  const sole = budgets(first).find((b) => b.metadata.name === 'kv-demo-3-sole')!;
  t.deepEqual(sole.spec, {
    maxUnavailable: 0,
    selector: { matchLabels: { 'app.kubernetes.io/name': 'derecho', 'app.kubernetes.io/instance': 'kv-demo', 'app.kubernetes.io/component': 'member', 'derecho.dev/node-id': '3' } },
  });
  t.is(sole.metadata.annotations!['derecho.dev/why'], 'node 3 is the only member of shard kv/1: evicting it would stop the group until it is back');
  t.deepEqual(budgets(first).map((b) => b.metadata.name), ['kv-demo', 'kv-demo-3-sole'], 'only node 3 holds a shard alone');
  // A fourth member gives kv/1 a second member: node 3's budget is deleted.
  cluster.setSpec({ members: 4 });
  let output = cluster.step();
  for (let i = 0; i < 10 && !output.deletes.some((d) => d.name === 'kv-demo-3-sole'); i++) output = cluster.step();
  t.deepEqual(output.deletes.filter((d) => d.kind === 'PodDisruptionBudget').map((d) => d.name), ['kv-demo-3-sole']);
  t.false(budgets(output).some((b) => b.metadata.name.endsWith('-sole')));
});

test('outdated pods wait while a member is not active', (t) => {
  const cluster = settled();
  cluster.setSpec({ resources: { limits: { memory: '1Gi' } } });
  const output = reconcile(cluster.input({ reports: { ...cluster.reports(), 1: null } }));
  t.deepEqual(output.deletes, []);
  t.like(conditionOf(output.status, 'Progressing'), { status: 'True', reason: 'RollingUpdate' });
  t.deepEqual(output.status.members!.map((m) => m.outdated ?? false), [true, true, true]);
  t.false(output.objects.some((o) => o.kind === 'Pod'), 'outdated pods are not re-applied (pod specs are immutable)');
  t.is(output.status.phase, 'Updating');
});

test('an outdated member outside the view (crash-looping, say) is restarted at once: the new spec may be its fix', (t) => {
  const cluster = settled();
  cluster.setSpec({ image: 'ghcr.io/derecho-ts/node-agent:0.1.1' });
  // Nodes 1 and 2 moved on to view 1 without node 3, whose agent keeps failing.
  const reports = {
    1: report(1, { viewId: 1, members: [1, 2] }),
    2: report(2, { viewId: 1, members: [1, 2] }),
    3: report(3, { mode: 'exited', viewId: 0, ready: false, exited: 'removed from the group' }),
  };
  const output = reconcile(cluster.input({ reports }));
  t.deepEqual(output.deletes.map((d) => d.name), ['kv-demo-3']);
  t.like(conditionOf(output.status, 'Progressing'), { status: 'True', reason: 'RollingUpdate', message: 'restarting node 3 with the new spec; outdated: nodes 1, 2, 3' });
  t.like(output.status.members![2], { mode: 'exited', waiting: 'removed from the group', outdated: true });
});

test('a member stuck joining is removed when the scale-up is reverted', (t) => {
  const cluster = settled();
  const inView0 = cluster.reports();
  cluster.setSpec({ members: 4 });
  cluster.step();
  cluster.setSpec({ members: 3 });
  const joining = report(4, { mode: 'joining', viewId: -1, members: [], ready: false, waiting: { kind: 'joining', message: 'joining: no answer from the leader' } });
  const output = reconcile(cluster.input({ reports: { ...inView0, 4: joining } }));
  t.deepEqual(output.deletes.map((d) => d.name), ['kv-demo-node-4-tls', 'kv-demo-4']);
  t.is(output.status.currentMembers, 3);
});

test('an evicted (Failed) pod is deleted and recreated; pods above the member count are deleted; volumes never are', (t) => {
  const cluster = settled();
  const pod2 = cluster.objects.get('Pod/kv-demo-2') as Pod;
  pod2.status = { phase: 'Failed' };
  cluster.objects.set('Pod/kv-demo-9', { ...structuredClone(pod2), metadata: { ...structuredClone(pod2.metadata), name: 'kv-demo-9', uid: 'uid-9', labels: { ...pod2.metadata.labels, [LABEL.nodeId]: '9' } } });
  const output = reconcile(cluster.input());
  t.deepEqual(output.deletes.map((d) => [d.name, d.uid]), [['kv-demo-2', pod2.metadata.uid], ['kv-demo-9', 'uid-9']]);
  t.false(output.objects.some((o) => o.metadata.name === 'kv-demo-2'));
  t.true(output.events.some((e) => e.reason === 'PodReplaced' && e.related?.name === 'kv-demo-2'));
  cluster.apply(output);
  t.true(cluster.step().objects.some((o) => o.metadata.name === 'kv-demo-2'));
});

test('volumes only grow', (t) => {
  const cluster = settled({ storage: { size: '5Gi', retention: 'retain' } });
  cluster.setSpec({ storage: { size: '2Gi', retention: 'retain' } });
  const output = reconcile(cluster.input());
  t.like(find(output.objects, 'PersistentVolumeClaim', 'kv-demo-1-data'), { spec: { resources: { requests: { storage: '5Gi' } } } });
  cluster.setSpec({ storage: { size: '10Gi', retention: 'retain' } });
  t.like(find(reconcile(cluster.input()).objects, 'PersistentVolumeClaim', 'kv-demo-1-data'), { spec: { resources: { requests: { storage: '10Gi' } } } });
});

test('a group with no persistent subgroup gets no volumes', (t) => {
  const output = reconcile(new Cluster(kvDemo({ subgroups: [{ name: 'feed', type: 'log', minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'raw', persistent: false }] })).input());
  t.is(kinds(output.objects).PersistentVolumeClaim, undefined);
  t.deepEqual(podOf(output.objects, 1).spec.volumes[0], { name: 'data', emptyDir: {} });
});

// ---------------------------------------------------------------------------------------------------
// Deletion

test('deleting the group stops the pods, keeps retained volumes, and drops the finalizer once the pods are gone', (t) => {
  const cluster = settled();
  cluster.group = { ...cluster.group, metadata: { ...cluster.group.metadata, deletionTimestamp: NOW } };
  const first = cluster.step();
  t.deepEqual(first.objects, []);
  t.deepEqual(first.deletes.map((d) => d.name), ['kv-demo-1', 'kv-demo-2', 'kv-demo-3']);
  t.deepEqual(first.finalizer, { name: 'derecho.dev/cleanup', present: true });
  t.is(first.status.phase, 'Deleting');
  const second = cluster.step();
  t.deepEqual(second.deletes, []);
  t.deepEqual(second.finalizer, { name: 'derecho.dev/cleanup', present: false });
  t.true(cluster.objects.has('PersistentVolumeClaim/kv-demo-1-data'));
});

test('a group re-created over volumes left by an earlier one keeps spec.members as its founding count (issue 15: a volume of node 4 made 4 founders)', (t) => {
  // The earlier group grew to 4 members, shrank to 3 and was deleted: its retained volumes 1..4 stay.
  const old = settled({ members: 4 });
  runUntilSettled(old);
  old.group = { ...old.group, metadata: { ...old.group.metadata, deletionTimestamp: NOW } };
  old.step();
  old.step();
  const volumes = [...old.objects.values()].filter((o) => o.kind === 'PersistentVolumeClaim');
  t.deepEqual(volumes.map((v) => v.metadata.name).sort(), ['kv-demo-1-data', 'kv-demo-2-data', 'kv-demo-3-data', 'kv-demo-4-data']);
  // A new group of the same name, 3 members: no ConfigMap, no status, four volumes.
  const cluster = new Cluster(kvDemo({ members: 3 }));
  for (const v of volumes) cluster.objects.set(`PersistentVolumeClaim/${v.metadata.name}`, v);
  const first = cluster.step();
  const configMap = first.objects.find((o) => o.kind === 'ConfigMap')!;
  t.like(configMap.metadata.annotations, { [ANNOTATION.foundingMembers]: '3', [ANNOTATION.members]: '3' });
  t.regex((configMap as KubeObject & { data: Record<string, string> }).data['group.yaml']!, /\n {2}members: 3\n/, 'node 4, added later, joins: it is not a founder');
  t.deepEqual(cluster.podIds(), [1, 2, 3]);
  t.is(first.status.foundingMembers, 3);
  // Scaling to 4 later adds node 4 as a joiner (on its old volume), the founding count unchanged.
  runUntilSettled(cluster);
  cluster.setSpec({ members: 4 });
  runUntilSettled(cluster);
  t.deepEqual(cluster.podIds(), [1, 2, 3, 4]);
  t.like(cluster.objects.get('ConfigMap/kv-demo-config')!.metadata.annotations, { [ANNOTATION.foundingMembers]: '3', [ANNOTATION.members]: '4' });
});

test('deleting a group with storage.retention "delete" deletes its volumes before the finalizer goes', (t) => {
  const cluster = settled({ storage: { size: '1Gi', retention: 'delete' } });
  cluster.group = { ...cluster.group, metadata: { ...cluster.group.metadata, deletionTimestamp: NOW } };
  const first = cluster.step();
  t.deepEqual(first.deletes.map((d) => d.name), ['kv-demo-1', 'kv-demo-2', 'kv-demo-3', 'kv-demo-1-data', 'kv-demo-2-data', 'kv-demo-3-data']);
  t.true(first.finalizer.present);
  t.false(cluster.step().finalizer.present);
});

test('agentStatusUrl names the member through the headless service', (t) => {
  t.is(agentStatusUrl('kv-demo', 'prod', 2), 'http://kv-demo-2.kv-demo-peers.prod.svc:8080/status');
});

// ---------------------------------------------------------------------------------------------------
// Properties

type Op = { kind: 'scale'; members: number } | { kind: 'fail'; nodeId: number } | { kind: 'heal' } | { kind: 'image'; tag: number } | { kind: 'killPod'; nodeId: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('scale' as const), members: fc.integer({ min: 1, max: 7 }) }),
  fc.record({ kind: fc.constant('fail' as const), nodeId: fc.integer({ min: 1, max: 7 }) }),
  fc.record({ kind: fc.constant('heal' as const) }),
  fc.record({ kind: fc.constant('image' as const), tag: fc.integer({ min: 1, max: 3 }) }),
  fc.record({ kind: fc.constant('killPod' as const), nodeId: fc.integer({ min: 1, max: 7 }) }),
);

test('property: under scaling, failures and spec changes, each reconcile changes the member set by at most one and the members that stay are a majority of those before', (t) => {
  const spec = { members: 3, subgroups: [{ name: 'kv', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 3 }] };
  fc.assert(
    fc.property(fc.array(fc.tuple(opArb, fc.integer({ min: 1, max: 3 })), { minLength: 1, maxLength: 12 }), (ops) => {
      const cluster = new Cluster(kvDemo(spec));
      for (let i = 0; i < 3; i++) cluster.step();
      const failed = new Set<number>();
      cluster.agents = 'active';
      for (const [op, steps] of ops) {
        if (op.kind === 'scale') cluster.setSpec({ members: op.members });
        if (op.kind === 'image') cluster.setSpec({ image: `example/agent:${op.tag}` });
        if (op.kind === 'fail') failed.add(op.nodeId);
        if (op.kind === 'heal') failed.clear();
        if (op.kind === 'killPod') cluster.deletePods([op.nodeId]);
        for (let s = 0; s < steps; s++) {
          const before = cluster.group.status?.currentMembers ?? 3;
          const base = cluster.reports();
          const reports = Object.fromEntries(Object.entries(base).map(([id, r]) => [id, failed.has(Number(id)) ? null : r]));
          const healthyBefore = range(before).every((id) => reports[id]?.mode === 'active');
          const active = Object.values(reports).filter((r) => r?.mode === 'active');
          const viewBefore = active.length === 0 ? [] : active.reduce((a, b) => (b!.viewId > a!.viewId ? b : a))!.members;
          const healthyWithout = (id: number): boolean => !viewBefore.includes(id) && range(id - 1).every((other) => reports[other]?.mode === 'active');
          const runningBefore = new Set(cluster.podIds());
          const output: ReconcileOutput = reconcile(cluster.input({ reports }));
          const after = output.status.currentMembers ?? before;
          // The member count moves by at most one, and only when every member was active (a member
          // outside the view may be removed when the others are).
          if (Math.abs(after - before) > 1) return false;
          if (after > before && !healthyBefore) return false;
          if (after < before && !healthyBefore && !healthyWithout(before)) return false;
          // At most one running member pod is deleted per reconcile, only from a healthy group, unless it failed or is above the member count.
          const idOf = (name: string): number => Number(name.split('-').at(-1));
          const deletedRunning = output.deletes.filter((d) => d.kind === 'Pod' && runningBefore.has(idOf(d.name)) && idOf(d.name) <= after);
          if (deletedRunning.length > 1) return false;
          // ... and a member of the view only from a healthy group.
          if (deletedRunning.some((d) => viewBefore.includes(idOf(d.name)) && reports[idOf(d.name)]?.mode === 'active') && !healthyBefore) return false;
          // The members that keep their pods are a majority of the previous members (groups of 3 or more).
          const kept = range(before).filter((id) => runningBefore.has(id) && !output.deletes.some((d) => d.name === `kv-demo-${id}`));
          if (before >= 3 && range(before).every((id) => runningBefore.has(id)) && kept.length < Math.floor(before / 2) + 1) return false;
          // The status always fits the CRD's status schema, and the output is plain JSON.
          if (validateOpenApi(statusSchema, output.status, 'status').length > 0) return false;
          if (JSON.stringify(JSON.parse(JSON.stringify(output))) !== JSON.stringify(output)) return false;
          cluster.apply(output);
        }
      }
      return true;
    }),
    { numRuns: 150 },
  );
  t.pass();
});

test('property: reconcile is deterministic', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 0, max: 4 }), (members, steps) => {
      const cluster = new Cluster(kvDemo({ members, subgroups: [{ name: 'kv', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 2, shards: 2 }] }));
      for (let i = 0; i < steps; i++) cluster.step();
      // Keys are random: the issuer gives the same answer to the same request (as one reconcile's input).
      const { issuer: _issuer, ...input } = cluster.input();
      const issuer = memoizedIssuer();
      return JSON.stringify(reconcile({ ...structuredClone(input), issuer })) === JSON.stringify(reconcile({ ...structuredClone(input), issuer }));
    }),
    { numRuns: 50 },
  );
  t.pass();
});

/** x509Issuer, answering a request it has seen before with the same key and certificate. */
function memoizedIssuer(): CertificateIssuer {
  const seen = new Map<string, KeyAndCertificate>();
  const once = (key: string, make: () => KeyAndCertificate): KeyAndCertificate => {
    if (!seen.has(key)) seen.set(key, make());
    return seen.get(key)!;
  };
  return {
    authority: (commonName, notBefore, notAfter) => once(JSON.stringify(['ca', commonName, notBefore, notAfter]), () => x509Issuer.authority(commonName, notBefore, notAfter)),
    leaf: (ca, subject, notBefore, notAfter) => once(JSON.stringify(['leaf', ca.certPem, subject, notBefore, notAfter]), () => x509Issuer.leaf(ca, subject, notBefore, notAfter)),
  };
}

function range(count: number): number[] {
  return Array.from({ length: count }, (_, index) => index + 1);
}

test('conditions carry observedGeneration and come in a fixed order', (t) => {
  const cluster = settled();
  const status = reconcile(cluster.input()).status;
  t.deepEqual(status.conditions!.map((c) => c.type), ['Ready', 'Progressing', 'Degraded', 'RestartQuorumPending', 'Stuck', 'SpecAccepted']);
  t.true(status.conditions!.every((c) => c.observedGeneration === 1));
  t.true(status.conditions!.every((c) => c.lastTransitionTime.endsWith('Z')));
});

// ---------------------------------------------------------------------------------------------------
// Scheduling (issue 15 finding 3)

test('members spread one per node where the nodes allow it and over zones by preference, by default (issue 15 finding 3)', (t) => {
  const pod = podOf(reconcile(new Cluster(kvDemo()).input()).objects, 1);
  const members = { matchLabels: { [LABEL.name]: 'derecho', [LABEL.instance]: 'kv-demo', [LABEL.component]: 'member' } };
  t.deepEqual(pod.spec.topologySpreadConstraints, [
    { maxSkew: 1, topologyKey: 'kubernetes.io/hostname', whenUnsatisfiable: 'DoNotSchedule', labelSelector: members, nodeAffinityPolicy: 'Honor', nodeTaintsPolicy: 'Honor' },
    { maxSkew: 1, topologyKey: 'topology.kubernetes.io/zone', whenUnsatisfiable: 'ScheduleAnyway', labelSelector: members, nodeAffinityPolicy: 'Honor', nodeTaintsPolicy: 'Honor' },
  ]);
  for (const field of ['affinity', 'nodeSelector', 'tolerations', 'priorityClassName', 'imagePullSecrets']) t.is(pod.spec[field], undefined, field);
  // An empty list: no spread at all.
  const none = podOf(reconcile(new Cluster(kvDemo({ podTemplate: { topologySpreadConstraints: [] } })).input()).objects, 1);
  t.is(none.spec.topologySpreadConstraints, undefined);
});

const podTemplate = POD_TEMPLATE_EXAMPLE;

test('spec.podTemplate reaches every member pod: labels, annotations, nodeSelector, affinity, tolerations, spread, priority, pull secrets', (t) => {
  const objects = reconcile(new Cluster(kvDemo({ podTemplate })).input()).objects;
  for (const id of [1, 2, 3]) {
    const pod = podOf(objects, id);
    t.like(pod.metadata.labels, { team: 'storage', 'example.com/tier': 'gold', [LABEL.instance]: 'kv-demo', [LABEL.nodeId]: String(id) });
    t.is(pod.metadata.annotations!['example.com/owner'], 'ops@example.com');
    t.truthy(pod.metadata.annotations![ANNOTATION.configHash]);
    t.deepEqual(pod.spec.nodeSelector, podTemplate.nodeSelector);
    t.deepEqual(pod.spec.affinity, podTemplate.affinity);
    t.deepEqual(pod.spec.tolerations, podTemplate.tolerations);
    t.deepEqual(pod.spec.priorityClassName, 'derecho-critical');
    t.deepEqual(pod.spec.imagePullSecrets, [{ name: 'registry-creds' }]);
    // The user's constraint replaces the defaults; without a selector it counts the group's members.
    t.deepEqual(pod.spec.topologySpreadConstraints, [{ ...podTemplate.topologySpreadConstraints[0], labelSelector: { matchLabels: { [LABEL.name]: 'derecho', [LABEL.instance]: 'kv-demo', [LABEL.component]: 'member' } } }]);
  }
  // Other objects keep only the operator's labels.
  t.is(find(objects, 'Service', 'kv-demo')?.metadata.labels?.team, undefined);
});

test('podTemplate: pod labels and annotations change in place, scheduling changes roll the pods one at a time', (t) => {
  const hashes = (output: ReturnType<typeof reconcile>) => output.objects.filter((o) => o.kind === 'Pod').map((o) => o.metadata.annotations![ANNOTATION.configHash]);
  const cluster = settled();
  const before = hashes(reconcile(cluster.input()));
  cluster.setSpec({ podTemplate: { metadata: { labels: { team: 'storage' }, annotations: { 'example.com/owner': 'ops' } } } });
  const relabelled = cluster.step();
  t.deepEqual(hashes(relabelled), before);
  t.deepEqual(relabelled.deletes, []);
  t.is(podOf(relabelled.objects, 2).metadata.labels!.team, 'storage');
  cluster.setSpec({ podTemplate: { tolerations: [{ key: 'example.com/dedicated', operator: 'Exists' }] } });
  const rolled = cluster.step();
  t.like(conditionOf(rolled.status, 'Progressing'), { status: 'True', reason: 'RollingUpdate' });
  t.is(rolled.deletes.length, 1);
});

test('podTemplate mistakes are refused naming the field and the value; the operator\'s own label keys are refused', (t) => {
  const problems = (podTemplatePatch: unknown): string[] => {
    const result = GroupSpec.safeParse({ members: 3, subgroups: [{ name: 'kv', type: 'kv', minNodesPerShard: 3, maxNodesPerShard: 3 }], podTemplate: podTemplatePatch });
    return result.success ? [] : result.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`);
  };
  t.deepEqual(problems(podTemplate), []);
  t.deepEqual(problems({ metadata: { labels: { 'app.kubernetes.io/instance': 'other' } } }), ['podTemplate.metadata.labels.app.kubernetes.io/instance: "app.kubernetes.io/instance" uses the prefix "app.kubernetes.io/", which the operator sets itself']);
  t.deepEqual(problems({ metadata: { annotations: { 'derecho.dev/config-hash': 'x' } } }), ['podTemplate.metadata.annotations.derecho.dev/config-hash: "derecho.dev/config-hash" uses the prefix "derecho.dev/", which the operator sets itself']);
  t.regex(problems({ nodeSelector: { 'bad key!': 'x' } }).join('\n'), /nodeSelector\.bad key!: "bad key!" is not a label key/);
  t.regex(problems({ nodeSelector: { disk: 'not ok!' } }).join('\n'), /nodeSelector\.disk: "not ok!" is not a label value/);
  t.regex(problems({ topologySpreadConstraints: [{ maxSkew: 0, topologyKey: 'kubernetes.io/hostname', whenUnsatisfiable: 'DoNotSchedule' }] }).join('\n'), /topologySpreadConstraints\.0\.maxSkew: .*skew from 1 to 1000/);
  t.regex(problems({ topologySpreadConstraints: [{ maxSkew: 1, topologyKey: 'kubernetes.io/hostname', whenUnsatisfiable: 'Sometimes' }] }).join('\n'), /whenUnsatisfiable: .*"DoNotSchedule", "ScheduleAnyway"/);
  t.regex(problems({ tolerations: [{ effect: 'NoEvict' }] }).join('\n'), /tolerations\.0\.effect/);
  t.regex(problems({ affinity: { podAntiAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 101, podAffinityTerm: { topologyKey: 'kubernetes.io/hostname' } }] } } }).join('\n'), /weight: .*1 to 100/);
  t.regex(problems({ priorityClassName: 'Upper' }).join('\n'), /priorityClassName: .*PriorityClass name/);
  t.regex(problems({ hostNetwork: true }).join('\n'), /podTemplate/);
});

// ---------------------------------------------------------------------------------------------------
// The agent image (issue 15 finding 9)

test('a group without spec.image runs the operator\'s own agent image: upgrading the operator upgrades the agents, one at a time; a pinned image stays', (t) => {
  const image = (output: ReconcileOutput, id: number): unknown => podOf(output.objects, id).spec.containers[0]!.image;
  const cluster = settled();
  t.is((cluster.group.spec as { image?: string }).image, undefined, 'the example pins no image');
  t.is(image(reconcile(cluster.input()), 1), DEFAULT_OPTIONS.agentImage);
  // The operator is upgraded: its --agent-image is the next version.
  const upgraded = { options: { agentImage: 'ghcr.io/derecho-ts/node-agent:0.2.0' } };
  const rolled: string[] = [];
  for (let i = 0; i < 12; i++) {
    const output = cluster.step(upgraded);
    if (i > 0 && output.status.phase === 'Running') break;
    t.true(output.deletes.length <= 1);
    rolled.push(...output.deletes.map((d) => d.name));
  }
  t.deepEqual(rolled, ['kv-demo-3', 'kv-demo-2', 'kv-demo-1']);
  for (const id of [1, 2, 3]) t.is((cluster.objects.get(`Pod/kv-demo-${id}`) as Pod).spec.containers[0]!.image, 'ghcr.io/derecho-ts/node-agent:0.2.0');
  // A group that pins its image keeps it whatever the operator's default.
  const pinned = new Cluster(kvDemo({ image: 'registry.example.com/derecho/node-agent:0.1.0' }));
  t.is(image(reconcile(pinned.input(upgraded)), 1), 'registry.example.com/derecho/node-agent:0.1.0');
});

test('DEFAULT_IMAGE is the operator\'s own version (package.json) and the chart\'s appVersion', (t) => {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  const chart = readFileSync(new URL('../../charts/derecho-operator/Chart.yaml', import.meta.url), 'utf8');
  t.is(DEFAULT_IMAGE, `ghcr.io/derecho-ts/node-agent:${pkg.version}`);
  t.regex(chart, new RegExp(`^appVersion: "${pkg.version.replace(/\./g, '\\.')}"$`, 'm'));
});
