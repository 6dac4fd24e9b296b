// The few Kubernetes object shapes the operator's pure core reads and writes, as plain JSON types (no
// client library): what reconcile() needs from observed objects, and the names, labels and annotations
// it gives the objects it owns.

export const CRD_GROUP = 'derecho.dev';
export const CRD_VERSION = 'v1alpha1';
export const CRD_KIND = 'DerechoGroup';
export const CRD_PLURAL = 'derechogroups';
export const CRD_SINGULAR = 'derechogroup';
export const CRD_SHORT_NAMES = ['dg'];
export const CRD_API_VERSION = `${CRD_GROUP}/${CRD_VERSION}`;
export const CRD_NAME = `${CRD_PLURAL}.${CRD_GROUP}`;

/** On the operator's own pods (the chart sets it): the groups' NetworkPolicies let them poll the members' /status. */
export const OPERATOR_POD_LABELS = Object.freeze({ 'derecho.dev/operator': 'true' });

export const LABEL = Object.freeze({
  name: 'app.kubernetes.io/name',
  instance: 'app.kubernetes.io/instance',
  component: 'app.kubernetes.io/component',
  managedBy: 'app.kubernetes.io/managed-by',
  nodeId: 'derecho.dev/node-id',
});

export const ANNOTATION = Object.freeze({
  /** On member pods: hash of everything in the pod that a restart must pick up (spec, manifest). */
  configHash: 'derecho.dev/config-hash',
  /** On the ConfigMap: the member count the group was founded with (the manifest's `members`). */
  foundingMembers: 'derecho.dev/founding-members',
  /** On the ConfigMap: the member count rolled out so far (ids 1..n have pods). */
  members: 'derecho.dev/members',
  /** On PVCs: the retention the group asked for ("retain" volumes carry no owner reference). */
  retention: 'derecho.dev/retention',
  /** On the ConfigMap: where the TLS material comes from (mutual TLS). */
  tlsSecret: 'derecho.dev/tls-secret',
});

/** The group's finalizer: pods (and, with retention "delete", volumes) are removed before the group goes. */
export const FINALIZER = 'derecho.dev/cleanup';
export const APP_NAME = 'derecho';

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: OwnerReference[];
  finalizers?: string[];
}

/** Any Kubernetes object as plain JSON. */
export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  [field: string]: unknown;
}

/** What to delete: the object's identity, and its uid as a precondition when known. */
export interface ObjectRef {
  apiVersion: string;
  kind: string;
  namespace: string;
  name: string;
  uid?: string;
  /** Why, for logs. */
  reason: string;
}

export interface EnvVar {
  name: string;
  value?: string;
}

/** A Pod as observed (only what reconcile reads). */
export interface ObservedPod extends KubeObject {
  spec?: { containers?: { name: string; env?: EnvVar[] }[] };
  status?: {
    phase?: string;
    podIP?: string;
    conditions?: { type: string; status: string }[];
    containerStatuses?: {
      name: string;
      restartCount?: number;
      state?: { waiting?: { reason?: string; message?: string }; running?: { startedAt?: string }; terminated?: ContainerTermination };
      lastState?: { terminated?: ContainerTermination };
    }[];
  };
}

/** A container's (last) termination as the kubelet reports it. */
export interface ContainerTermination {
  exitCode?: number;
  signal?: number;
  reason?: string;
  /** The termination message (the file at terminationMessagePath, or the end of the log). */
  message?: string;
}

export interface ObservedPvc extends KubeObject {
  spec?: { storageClassName?: string; resources?: { requests?: { storage?: string } } };
  status?: { phase?: string; capacity?: { storage?: string } };
}

export interface ObservedConfigMap extends KubeObject {
  data?: Record<string, string>;
}

/** A Secret as observed. reconcile reads the HMAC key it generated, and checks the keys of TLS Secrets. */
export interface ObservedSecret extends KubeObject {
  data?: Record<string, string>;
}

export function refOf(object: KubeObject, reason: string): ObjectRef {
  const ref: ObjectRef = { apiVersion: object.apiVersion, kind: object.kind, namespace: object.metadata.namespace ?? 'default', name: object.metadata.name, reason };
  if (object.metadata.uid !== undefined) ref.uid = object.metadata.uid;
  return ref;
}

// ---------------------------------------------------------------------------------------------------
// Names of the objects a group owns.

export const names = {
  pod: (group: string, nodeId: number): string => `${group}-${nodeId}`,
  pvc: (group: string, nodeId: number): string => `${group}-${nodeId}-data`,
  peersService: (group: string): string => `${group}-peers`,
  clientService: (group: string): string => group,
  configMap: (group: string): string => `${group}-config`,
  hmacSecret: (group: string): string => `${group}-auth`,
  tlsSecret: (group: string): string => `${group}-tls`,
  /** What clients need: the client API's token (key "token", unless the spec names its own Secret) and the CA that signs the members' certificates (ca.crt). */
  clientSecret: (group: string): string => `${group}-client`,
  /** The certificate authority the operator issues members' certificates with (never mounted by a pod). */
  authoritySecret: (group: string): string => `${group}-ca`,
  /** A member's certificate, key and trusted authorities (kubernetes.io/tls, as cert-manager writes it). */
  memberTlsSecret: (group: string, nodeId: number): string => `${group}-node-${nodeId}-tls`,
  /** The cert-manager Certificate of a member (tls.certManager): it fills memberTlsSecret. */
  memberCertificate: (group: string, nodeId: number): string => `${group}-node-${nodeId}`,
  podDisruptionBudget: (group: string): string => group,
  /** The budget that keeps a member that alone holds a persistent shard from being evicted. */
  solePodDisruptionBudget: (group: string, nodeId: number): string => `${group}-${nodeId}-sole`,
  networkPolicy: (group: string): string => `${group}-peers`,
};

/** DNS name of a member through the headless service (resolves before the pod is ready). */
export function peerHost(group: string, namespace: string, nodeId: number): string {
  return `${names.pod(group, nodeId)}.${names.peersService(group)}.${namespace}.svc`;
}

/** Node id of one of the group's member pods (by label, checked against the name), or null. */
export function memberNodeId(object: KubeObject, group: string, nameOf: (group: string, nodeId: number) => string): number | null {
  const label = object.metadata.labels?.[LABEL.nodeId];
  if (label === undefined || !/^[1-9][0-9]{0,4}$/.test(label)) return null;
  const nodeId = Number(label);
  return nameOf(group, nodeId) === object.metadata.name ? nodeId : null;
}
