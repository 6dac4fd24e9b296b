// Manifests the DerechoGroup CRD must accept or refuse, as patches of examples/kv-overlap.yaml's spec, with
// the fragment of the CEL rule message the refusal carries. crd.test.ts checks them with the rules'
// TypeScript twins; the API-server tests can run the same table against kube-apiserver (create each
// CREATE_CASES manifest; apply `before` then `after` for UPDATE_CASES) and expect the same messages.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';

export interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  spec: Record<string, unknown>;
}

/** examples/kv-group.yaml (the flagship: kv and events on all 3 members), or another example file. */
export function exampleManifest(file: 'kv-group.yaml' | 'kv-overlap.yaml' = 'kv-group.yaml'): Manifest {
  return YAML.parse(readFileSync(fileURLToPath(new URL(`../../examples/${file}`, import.meta.url)), 'utf8')) as Manifest;
}

/**
 * examples/kv-overlap.yaml: kv in 2 shards ([1, 2] and [3]) and events on [1, 2, 3], so node 3 alone holds
 * kv shard 1. The tests of what a sole holder costs (and the case table below) use it.
 */
export function overlapManifest(): Manifest {
  return exampleManifest('kv-overlap.yaml');
}

/** The overlap example with `patch` merged into its spec (top-level fields replaced). */
export function withSpec(patch: Record<string, unknown>, name?: string): Manifest {
  const manifest = overlapManifest();
  return { ...manifest, metadata: { ...manifest.metadata, ...(name !== undefined ? { name } : {}) }, spec: { ...manifest.spec, ...patch } };
}

const example = overlapManifest();
const [kv, events] = example.spec.subgroups as [Record<string, unknown>, Record<string, unknown>];
const subgroup = (extra: Record<string, unknown>): Record<string, unknown> => ({ name: 'kv', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 2, ...extra });
const cache = { name: 'cache', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 3 };

/** A podTemplate using every field (reconcile.test.ts checks the pods carry it; the API server accepts it). */
export const POD_TEMPLATE_EXAMPLE = {
  metadata: { labels: { team: 'storage', 'example.com/tier': 'gold' }, annotations: { 'example.com/owner': 'ops@example.com' } },
  nodeSelector: { 'example.com/disk': 'ssd' },
  affinity: {
    nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'kubernetes.io/arch', operator: 'In', values: ['amd64'] }] }] } },
    podAntiAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 50, podAffinityTerm: { topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: { app: 'noisy' } } } }] },
  },
  tolerations: [{ key: 'example.com/dedicated', operator: 'Equal', value: 'derecho', effect: 'NoSchedule' }],
  topologySpreadConstraints: [{ maxSkew: 1, topologyKey: 'topology.kubernetes.io/zone', whenUnsatisfiable: 'DoNotSchedule' }],
  priorityClassName: 'derecho-critical',
  imagePullSecrets: [{ name: 'registry-creds' }],
};

export interface CreateCase {
  what: string;
  patch: Record<string, unknown>;
  /** null: accepted; else a fragment of the refusal's message. */
  refusal: string | null;
  /** Accepted by the API server but refused by the operator's full (zod) check: condition SpecAccepted=False. */
  operatorRefuses?: boolean;
}

export const CREATE_CASES: readonly CreateCase[] = [
  { what: 'the example', patch: {}, refusal: null },
  { what: 'min > max', patch: { subgroups: [subgroup({ minNodesPerShard: 3, maxNodesPerShard: 2 })] }, refusal: 'minNodesPerShard must be at most maxNodesPerShard' },
  { what: 'raw and persistent (persistent defaults to true)', patch: { subgroups: [subgroup({ deliveryMode: 'raw' })] }, refusal: 'persistent must be false when deliveryMode is "raw"' },
  { what: 'raw and not persistent', patch: { subgroups: [subgroup({ deliveryMode: 'raw', persistent: false })] }, refusal: null },
  { what: 'more reserved lists than shards', patch: { subgroups: [subgroup({ shards: 1, reservedNodeIds: [[1], [2]] })] }, refusal: 'reservedNodeIds has more entries than shards' },
  { what: 'a reserved list longer than max', patch: { subgroups: [subgroup({ reservedNodeIds: [[1, 2, 3]] })] }, refusal: 'lists more nodes than maxNodesPerShard' },
  { what: 'members below a minimum', patch: { members: 2, subgroups: [subgroup({ minNodesPerShard: 3, maxNodesPerShard: 3 })] }, refusal: 'members must be at least every subgroup\'s minNodesPerShard' },
  { what: 'unreserved shards need their own members', patch: { members: 3, subgroups: [subgroup({ shards: 2, minNodesPerShard: 2, maxNodesPerShard: 2 })] }, refusal: 'members is too few for the subgroups' },
  { what: 'reserved shards do not count', patch: { members: 6, subgroups: [subgroup({ shards: 3, minNodesPerShard: 2, maxNodesPerShard: 2, reservedNodeIds: [[1, 2], [3, 4]] })] }, refusal: null },
  { what: 'a node reserved in two shards of a subgroup', patch: { members: 3, subgroups: [subgroup({ shards: 2, reservedNodeIds: [[1, 2], [2, 3]] })] }, refusal: null, operatorRefuses: true },
  { what: 'a reserved id beyond members', patch: { members: 3, subgroups: [subgroup({ reservedNodeIds: [[4]] })] }, refusal: 'may only name members' },
  { what: 'a sender id beyond members', patch: { members: 3, subgroups: [subgroup({ senderNodeIds: [1, 5] })] }, refusal: 'may only name members' },
  { what: 'members above membersMax', patch: { members: 5, wireLimits: { membersMax: 4 } }, refusal: 'members must be at most wireLimits.membersMax' },
  { what: 'too many shards in all', patch: { members: 8, subgroups: [subgroup({ shards: 3 })], wireLimits: { shardsMax: 2 } }, refusal: 'shards add up to more than wireLimits.shardsMax' },
  { what: 'a frame too small for the payload', patch: { wireLimits: { payloadBytesMax: 2 << 20 } }, refusal: 'frameBytesMax must be at least payloadBytesMax + 1024' },
  { what: 'cert-manager issuing the members\' certificates', patch: { tls: { mode: 'mutual', certManager: { issuerRef: { name: 'group-ca', kind: 'ClusterIssuer' } } } }, refusal: null },
  { what: 'cert-manager with hmac', patch: { tls: { mode: 'hmac', certManager: { issuerRef: { name: 'group-ca' } } } }, refusal: 'tls.certManager needs mode "mutual" and no secretName' },
  { what: 'cert-manager beside a Secret of one\'s own', patch: { tls: { mode: 'mutual', secretName: 'mine', certManager: { issuerRef: { name: 'group-ca' } } } }, refusal: 'tls.certManager needs mode "mutual" and no secretName' },
  { what: 'a frame just big enough', patch: { wireLimits: { payloadBytesMax: 1000, frameBytesMax: 2024 } }, refusal: null },
  { what: 'suspect below two heartbeats', patch: { timing: { heartbeatMs: 600 } }, refusal: 'suspectMs must be at least 2 x heartbeatMs' },
  { what: 'a heartbeat below a tick', patch: { timing: { tickMs: 200 } }, refusal: 'heartbeatMs must be at least tickMs' },
  { what: 'a volume of size 0', patch: { storage: { size: '0' } }, refusal: 'storage.size must be at least 1Mi' },
  { what: 'a volume below 1Mi', patch: { storage: { size: '1000Ki' } }, refusal: 'storage.size must be at least 1Mi' },
  { what: 'a volume of exactly 1Mi', patch: { storage: { size: '1Mi' } }, refusal: null },
  { what: 'a podTemplate with every field', patch: { podTemplate: POD_TEMPLATE_EXAMPLE }, refusal: null },
  { what: 'a pod label under the operator\'s prefix', patch: { podTemplate: { metadata: { labels: { 'app.kubernetes.io/instance': 'other' } } } }, refusal: null, operatorRefuses: true },
];

export interface UpdateCase {
  what: string;
  before: Record<string, unknown>;
  after: Record<string, unknown>;
  refusal: string | null;
}

const APPEND_ONLY = 'subgroups can only be appended';
const SUBGROUP_FIXED = 'a subgroup\'s type, shards, deliveryMode and persistent are immutable';

export const UPDATE_CASES: readonly UpdateCase[] = [
  { what: 'no change', before: {}, after: {}, refusal: null },
  { what: 'appending a subgroup', before: {}, after: { subgroups: [kv, events, cache] }, refusal: null },
  { what: 'changing min/max of a subgroup', before: {}, after: { subgroups: [{ ...kv, minNodesPerShard: 2 }, events] }, refusal: null },
  { what: 'scaling', before: {}, after: { members: 4 }, refusal: null },
  { what: 'reordering subgroups', before: {}, after: { subgroups: [events, kv] }, refusal: APPEND_ONLY },
  { what: 'removing a subgroup', before: {}, after: { subgroups: [kv] }, refusal: APPEND_ONLY },
  { what: 'inserting a subgroup before another', before: {}, after: { subgroups: [kv, cache, events] }, refusal: APPEND_ONLY },
  { what: 'renaming a subgroup', before: { subgroups: [{ ...kv, name: 'k' }, events] }, after: { subgroups: [kv, events] }, refusal: APPEND_ONLY },
  { what: 'changing a subgroup\'s type', before: {}, after: { subgroups: [{ ...kv, type: 'log' }, events] }, refusal: SUBGROUP_FIXED },
  { what: 'resharding', before: {}, after: { subgroups: [{ ...kv, shards: 3 }, events] }, refusal: SUBGROUP_FIXED },
  { what: 'making a subgroup volatile', before: {}, after: { subgroups: [kv, { ...events, persistent: false }] }, refusal: SUBGROUP_FIXED },
  { what: 'setting a storage class', before: {}, after: { storage: { storageClassName: 'fast' } }, refusal: 'storageClassName is immutable' },
  { what: 'dropping a storage class', before: { storage: { storageClassName: 'fast' } }, after: {}, refusal: 'storageClassName is immutable' },
  { what: 'growing the volumes', before: {}, after: { storage: { size: '10Gi' } }, refusal: null },
  { what: 'shrinking the volumes', before: { storage: { size: '2Gi' } }, after: { storage: { size: '1Gi' } }, refusal: 'storage.size cannot shrink' },
  { what: 'the same size written another way', before: { storage: { size: '1Gi' } }, after: { storage: { size: '1024Mi' } }, refusal: null },
  { what: 'switching hmac to mutual TLS', before: {}, after: { tls: { mode: 'mutual' } }, refusal: 'tls.mode is immutable' },
  { what: 'naming a TLS secret', before: {}, after: { tls: { mode: 'hmac', secretName: 'other' } }, refusal: 'tls.secretName is immutable' },
  { what: 'changing the TLS secret', before: { tls: { mode: 'hmac', secretName: 'one' } }, after: { tls: { mode: 'hmac', secretName: 'other' } }, refusal: 'tls.secretName is immutable' },
  { what: 'keeping the TLS secret', before: { tls: { mode: 'hmac', secretName: 'one' } }, after: { tls: { mode: 'hmac', secretName: 'one' } }, refusal: null },
  { what: 'switching from the operator\'s certificates to cert-manager', before: { tls: { mode: 'mutual' } }, after: { tls: { mode: 'mutual', certManager: { issuerRef: { name: 'group-ca' } } } }, refusal: 'tls.certManager is immutable' },
  { what: 'changing the cert-manager issuer', before: { tls: { mode: 'mutual', certManager: { issuerRef: { name: 'one' } } } }, after: { tls: { mode: 'mutual', certManager: { issuerRef: { name: 'two' } } } }, refusal: 'tls.certManager is immutable' },
  { what: 'switching to RDMA', before: {}, after: { transport: 'rdma' }, refusal: 'transport is immutable' },
  { what: 'switching auto to tcp', before: { transport: 'auto' }, after: { transport: 'tcp' }, refusal: 'transport is immutable' },
  { what: 'changing wire limits', before: {}, after: { wireLimits: { payloadBytesMax: 1000, frameBytesMax: 4096 } }, refusal: 'wireLimits is immutable' },
];

/**
 * Refusals whose whole message matters: one error, no follow-on errors (`causes`: how many errors the API
 * server lists), words that say what to do. `field`: how the API server introduces
 * the error; `says`: the rest of it (a CEL rule's messageExpression). `before` set: an update from it.
 */
export interface MessageCase {
  what: string;
  before?: Record<string, unknown>;
  after: Record<string, unknown>;
  field: string;
  says: RegExp;
  causes: number;
  /** The error is the schema's (not a CEL rule's): its wording is the API server's own. */
  schema?: true;
}

export const MESSAGE_CASES: readonly MessageCase[] = [
  { what: 'members 0: only the schema\'s error, no CEL follow-ons', after: { members: 0 }, field: 'spec.members: Invalid value: 0: ', says: /^spec\.members in body should be greater than or equal to 1$/, causes: 1, schema: true },
  {
    what: 'a reserved id beyond members says what to do',
    after: { members: 3, subgroups: [subgroup({ reservedNodeIds: [[4]] })] },
    field: 'spec.subgroups: Invalid value: ',
    says: /^reservedNodeIds and senderNodeIds may only name members \(node ids 1\.\.members\): raise members, or take the higher ids out of the lists first$/,
    causes: 1,
  },
  {
    what: 'a scale-down below a reserved id: one error, saying what to do',
    before: {}, after: { members: 2 },
    field: 'spec.subgroups: Invalid value: ',
    says: /^reservedNodeIds and senderNodeIds may only name members \(node ids 1\.\.members\): raise members, or take the higher ids out of the lists first$/,
    causes: 1,
  },
  {
    what: 'members below a subgroup\'s minimum: that error only, no "too few members" follow-on',
    after: { members: 2, subgroups: [subgroup({ minNodesPerShard: 3, maxNodesPerShard: 3 })] },
    field: 'spec.members: Invalid value: ',
    says: /^members must be at least every subgroup's minNodesPerShard \(a shard needs that many distinct members\)$/,
    causes: 1,
  },
  {
    what: 'an unknown enum value: the values, and no "some validation rules were not checked" line',
    after: { transport: 'udp' },
    field: 'spec.transport: Invalid value: "udp": ',
    says: /^must be one of "tcp", "rdma", "auto"$/,
    causes: 1,
  },
  {
    what: 'a size that is not a quantity says what one is, not the regex',
    after: { storage: { size: '1 GB' } },
    field: 'spec.storage.size: Invalid value: "1 GB": ',
    says: /^must be a storage size of at least 1Mi \(a quantity such as 512Mi, 1Gi or 10G\)$/,
    causes: 1,
  },
  {
    what: 'a subgroup name says what a name is',
    after: { subgroups: [{ ...kv, name: 'Kv' }, events] },
    field: 'spec.subgroups[0].name: Invalid value: "Kv": ',
    says: /^must be a subgroup name \(lowercase letters, digits and "-", starting with a letter, at most 63 characters\)$/,
    causes: 1,
  },
  {
    what: 'resharding names the subgroup by its place',
    before: {}, after: { subgroups: [{ ...kv, shards: 3 }, events] },
    field: 'spec.subgroups[0]: Forbidden: ',
    says: /^a subgroup's type, shards, deliveryMode and persistent are immutable/,
    causes: 1,
  },
];
