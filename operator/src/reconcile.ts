// The operator's reconcile step: a pure function from (the DerechoGroup, the objects it owns as observed,
// the agents' /status reports, the previous status, the time, the randomness it may need) to (the objects
// to apply, the objects to delete, the new status, the events to record, the finalizer). No I/O, no clock,
// no randomness: the controller around it reads the cluster and the agents, calls reconcile, and applies
// the result (server-side apply for `objects`, deletes with uid preconditions, a /status patch, Events).
// See docs/adr/0007-operator-reconcile.md for the rules; the short version:
//  - One Pod per member (<group>-<nodeId>), never a StatefulSet; one PVC per member of a persistent group;
//    a headless peer Service (publishNotReadyAddresses), a client Service, a ConfigMap with the manifest the
//    agents read, an HMAC Secret (hmac mode), a PodDisruptionBudget keeping a majority, a NetworkPolicy.
//  - Members are always node ids 1..n. The ConfigMap records n (the members rolled out so far) and the
//    founding count; the rendered manifest keeps `members: <founding count>` because the agent founds view 0
//    when it has no saved state and nodeId <= spec.members: later members must join.
//  - Scaling moves one member at a time, and only when every current member is active in one view that
//    holds exactly the current members; a change that would leave a shard below its minimum is refused.
//  - A changed spec rolls member pods one at a time (same health gate), followers first, the leader last.
//  - Missing pods are recreated on their volumes (after a total failure too); the restart quorum the agents
//    report is surfaced in the status.

import { createHash } from 'node:crypto';
import { formatIssues } from '../../node-agent/src/config/errors.ts';
import { CLIENT_LABEL, DEFAULT_IMAGE, DerechoGroupSpec, parseQuantity, RESTART_QUORUM_TIMEOUT_SECONDS_DEFAULT, RestartSpec, toGroupPolicy } from '../../node-agent/src/config/schema.ts';
import type { GroupSpec } from '../../node-agent/src/config/schema.ts';
import { allocate } from '../../node-agent/src/core/allocation.ts';
import type { Layout, NodeId } from '../../node-agent/src/core/types.ts';
import { DEFAULT_CERTIFICATE_TIMES, planCertificates } from './certificates.ts';
import type { CertificateTimes } from './certificates.ts';
import type { CertificateIssuer } from './certs.ts';
import { toYaml } from './crd.ts';
import { ANNOTATION, APP_NAME, CRD_API_VERSION, CRD_KIND, FINALIZER, LABEL, OPERATOR_POD_LABELS, memberNodeId, names, peerHost, refOf } from './kube.ts';
import type { KubeObject, ObjectRef, ObservedConfigMap, ObservedPod, ObservedPvc, ObservedSecret, OwnerReference } from './kube.ts';
import type { AgentReport, Condition, ConditionType, DerechoGroupStatus, MemberStatus, MissingShard, Phase, RestartStatus, ShardStatus } from './status.ts';

// ---------------------------------------------------------------------------------------------------
// Input and output.

export interface OperatorOptions {
  /** Extended resource requested by each member pod when spec.transport is "rdma". */
  rdmaResourceName: string;
  peerPort: number;
  httpPort: number;
  /** uid and gid the agent runs as (non-root), also the pods' fsGroup so the volume is writable. */
  runAsUser: number;
  /** Where the member's volume is mounted (DERECHO_DATA_DIR). */
  dataDir: string;
  /** app.kubernetes.io/managed-by of every object. */
  managedBy: string;
  /** The agent image of groups that do not pin one (spec.image omitted). */
  agentImage: string;
  /** requeueAfterSeconds while the group is settled, and while something is under way. */
  resyncSeconds: number;
  busyResyncSeconds: number;
  /** Lifetimes of the certificates the operator issues (mutual TLS without spec.tls.secretName). */
  certificates: CertificateTimes;
  /** The operator's namespace ($POD_NAMESPACE): NetworkPolicies admit its pods (OPERATOR_POD_LABELS) from there; null: from any namespace. */
  operatorNamespace: string | null;
}

export const DEFAULT_OPTIONS: Readonly<OperatorOptions> = Object.freeze({
  rdmaResourceName: 'rdma/hca_shared_devices_a',
  peerPort: 7000,
  httpPort: 8080,
  runAsUser: 65532,
  dataDir: '/var/lib/derecho',
  managedBy: 'derecho-operator',
  agentImage: DEFAULT_IMAGE,
  resyncSeconds: 30,
  busyResyncSeconds: 2,
  certificates: DEFAULT_CERTIFICATE_TIMES,
  operatorNamespace: null,
});

/** The DerechoGroup as read from the API server (spec as stored: defaults applied, not yet checked by zod). */
export interface DerechoGroupResource {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    uid: string;
    generation?: number;
    creationTimestamp?: string;
    deletionTimestamp?: string;
    finalizers?: string[];
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  spec: unknown;
  status?: DerechoGroupStatus | null;
}

/** The objects the group owns (label app.kubernetes.io/instance=<group>), plus the Secrets it names. */
export interface ObservedObjects {
  pods?: ObservedPod[];
  pvcs?: ObservedPvc[];
  services?: KubeObject[];
  configMaps?: ObservedConfigMap[];
  /** The HMAC Secret the operator made, and the Secret named by spec.tls.secretName (or <group>-tls). */
  secrets?: ObservedSecret[];
  podDisruptionBudgets?: KubeObject[];
  networkPolicies?: KubeObject[];
}

/**
 * Each member's parsed /status (parseAgentReport), by node id: null when the pod exists but its agent
 * does not answer (or answers something else); absent when it was not asked (no pod).
 */
export type AgentReports = Readonly<Record<number, AgentReport | null | undefined>>;

export interface ReconcileInput {
  group: DerechoGroupResource;
  observed: ObservedObjects;
  reports: AgentReports;
  /** The status written by the last reconcile (default: group.status). */
  previousStatus?: DerechoGroupStatus | null;
  /** The current time, ISO 8601 (lastTransitionTime of conditions that change now). */
  now: string;
  /**
   * Randomness, made by the caller so that reconcile stays pure. hmacKey: base64 of at least 16 (use 32)
   * random bytes; used only when the group's HMAC Secret does not exist yet (its key is kept afterwards).
   * clientToken: the client API's bearer token (at least 32 characters, no white space), likewise used
   * only when the group's client Secret has none yet.
   */
  random?: { hmacKey?: string; clientToken?: string };
  /** Makes keys and certificates (certs.ts x509Issuer); needed only when a certificate is due. */
  issuer?: CertificateIssuer;
  options?: Partial<OperatorOptions>;
}

export interface GroupEvent {
  type: 'Normal' | 'Warning';
  /** CamelCase, e.g. MemberAdded, ScalingRefused. */
  reason: string;
  /** What the operator did or decided (events.k8s.io/v1 `action`). */
  action: string;
  message: string;
  /** The object concerned when it is not the group itself (a pod). */
  related?: { apiVersion: string; kind: string; name: string; namespace: string };
  /**
   * The writes ("Kind/name") the event reports as done: if the API server refuses one, the event is not
   * recorded (see withWriteFailures), so that "creating pods" is never said of a pod that was refused.
   */
  requires?: string[];
}

/** A write of this round the API server refused (apply or delete). */
export interface WriteFailure {
  verb: 'apply' | 'delete';
  kind: string;
  name: string;
  /** HTTP status, when the API server answered. */
  code: number | null;
  /** The API server's message (or the transport error). */
  message: string;
}

export interface ReconcileOutput {
  /** Apply each (server-side apply, one field manager, force), in this order. Plain JSON. */
  objects: KubeObject[];
  /** Delete each (with its uid as a precondition when given). Never PVCs unless the group is being deleted with retention "delete". */
  deletes: ObjectRef[];
  /** The whole status (patch the /status subresource). */
  status: DerechoGroupStatus;
  /** Events about the group (or `related`). Emitted on actions and on condition changes only. */
  events: GroupEvent[];
  /** Whether the group must carry the finalizer: add it if absent and `present`, remove it if present and not. */
  finalizer: { name: string; present: boolean };
  /** When to reconcile again at the latest, even if nothing is watched to change. */
  requeueAfterSeconds: number;
}

// ---------------------------------------------------------------------------------------------------
// Small helpers.

const range = (from: number, to: number): number[] => (to < from ? [] : Array.from({ length: to - from + 1 }, (_, index) => from + index));
const majority = (count: number): number => Math.floor(count / 2) + 1;
const listIds = (ids: readonly number[]): string => (ids.length === 1 ? `node ${ids[0]}` : `nodes ${ids.join(', ')}`);
const sameSet = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && [...a].sort((x, y) => x - y).every((value, index) => value === [...b].sort((x, y) => x - y)[index]);

function positiveInt(value: unknown): number | null {
  const number = typeof value === 'string' && /^[0-9]+$/.test(value) ? Number(value) : value;
  return typeof number === 'number' && Number.isInteger(number) && number >= 1 ? number : null;
}

function hashOf(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value)).digest('hex').slice(0, 16);
}

function podIsTerminating(pod: ObservedPod): boolean {
  return pod.metadata.deletionTimestamp !== undefined;
}

function podIsFinished(pod: ObservedPod): boolean {
  return pod.status?.phase === 'Failed' || pod.status?.phase === 'Succeeded';
}

/** How recent an authentication failure must be to explain a member that is not ready. */
const AUTH_FAILURE_RECENT_SECONDS = 60;

/**
 * Why member `nodeId` cannot talk to the others, from the authentication failures the agents report
 * (its own, or its peers' about it), or null: a wrong HMAC key or certificate reads as that, not as a
 * restart or an unreachable member.
 */
function authTrouble(nodeId: NodeId, reports: AgentReports): string | null {
  const recent = (report: AgentReport | null | undefined) => {
    const f = report?.transport?.lastHandshakeFailure;
    return f !== undefined && f !== null && f.secondsAgo <= AUTH_FAILURE_RECENT_SECONDS ? f : null;
  };
  const found: string[] = [];
  for (const [id, report] of Object.entries(reports)) {
    const f = recent(report);
    if (f !== null && Number(id) !== nodeId && f.peer === nodeId) found.push(`node ${id} refuses its connections: ${f.message}`);
  }
  const own = recent(reports[nodeId]);
  if (own !== null) found.push(`its connections${own.peer !== null ? ` with node ${own.peer}` : ''} fail authentication: ${own.message}`);
  // The telling one first (a wrong secret, a certificate for another node) over "the peer hung up".
  return found.find((text) => !/connection lost during the handshake|handshake timed out/.test(text)) ?? found[0] ?? null;
}

/** The agent container's status, as the kubelet reports it. */
function agentContainer(pod: ObservedPod): NonNullable<NonNullable<ObservedPod['status']>['containerStatuses']>[number] | undefined {
  const statuses = pod.status?.containerStatuses ?? [];
  return statuses.find((c) => c.name === 'agent') ?? statuses[0];
}

/** "it restarted 4 times; last exit: code 2: <its termination message>", or null if it never stopped. */
function lastExit(pod: ObservedPod): string | null {
  const container = agentContainer(pod);
  const terminated = container?.lastState?.terminated;
  if (container === undefined || terminated === undefined) return null;
  const restarts = container.restartCount ?? 0;
  const message = (terminated.message ?? '').trim().replace(/\s*\n\s*/g, ' | ');
  const how = terminated.signal !== undefined ? `signal ${terminated.signal}` : `code ${terminated.exitCode ?? '?'}`;
  return `it restarted ${restarts} time${restarts === 1 ? '' : 's'}; last exit: ${how}${message ? `: ${message.length > 1500 ? `${message.slice(0, 1500)}...` : message}` : ''}`;
}

/** What a member whose agent keeps failing says (CrashLoopBackOff), or null. */
function crashLoop(pod: ObservedPod): string | null {
  const waiting = agentContainer(pod)?.state?.waiting;
  if (waiting?.reason !== 'CrashLoopBackOff') return null;
  return `the agent keeps failing (CrashLoopBackOff): ${lastExit(pod) ?? 'no exit recorded'}`;
}

function podIsReady(pod: ObservedPod | undefined): boolean {
  return pod?.status?.conditions?.some((condition) => condition.type === 'Ready' && condition.status === 'True') === true;
}

function envOf(pod: ObservedPod, name: string): string | undefined {
  return pod.spec?.containers?.find((container) => container.name === 'agent')?.env?.find((variable) => variable.name === name)?.value;
}

function frontier(version: { viewId: number; seq: number }): string {
  return version.viewId < 0 ? '-' : `${version.viewId}.${version.seq}`;
}

/** An active member: in a view, not wedged, ready. */
function isActive(report: AgentReport | null | undefined): report is AgentReport {
  return report !== null && report !== undefined && report.mode === 'active' && !report.wedged && report.ready;
}

// ---------------------------------------------------------------------------------------------------
// The restart quorum, from the agents' messages (node-agent/src/core/restart.ts and replica.ts).

/** Members and shards a restart waits for, read from a restarting agent's waiting message. */
export function parseRestartMessage(message: string): { members: NodeId[] | null; shards: MissingShard[] } {
  const ids = (text: string): NodeId[] => text.split(',').map((part) => Number(part.trim())).filter((id) => Number.isInteger(id) && id > 0);
  const waiting = /waiting for nodes? ([0-9][0-9, ]*)\)/.exec(message) ?? /grace period for nodes? ([0-9][0-9, ]*)/.exec(message);
  const shards: MissingShard[] = [];
  for (const match of message.matchAll(/shard ([a-z][-a-z0-9]*)\/([0-9]+) has no returning member(?: holding its state)? \(former members ([0-9][0-9, ]*)\)/g)) {
    shards.push({ subgroup: match[1]!, shard: Number(match[2]), formerMembers: ids(match[3]!) });
  }
  return { members: waiting ? ids(waiting[1]!) : null, shards };
}

// ---------------------------------------------------------------------------------------------------
// Reconcile.

interface Context {
  name: string;
  namespace: string;
  generation: number;
  now: string;
  options: OperatorOptions;
  owner: OwnerReference;
  previous: DerechoGroupStatus | null;
}

type SpecDecision =
  | { kind: 'accepted'; spec: GroupSpec }
  /** Valid with members = the current count: the member change is refused, the rest applies. */
  | { kind: 'scalingRefused'; spec: GroupSpec; problems: string[] }
  | { kind: 'invalid'; reason: 'InvalidSpec' | 'ManifestRejected'; problems: string[] };

function checkManifest(group: DerechoGroupResource, namespace: string, spec: unknown): { ok: true; spec: GroupSpec } | { ok: false; problems: string[] } {
  const manifest = { apiVersion: CRD_API_VERSION, kind: CRD_KIND, metadata: { name: group.metadata.name, namespace }, spec };
  const result = DerechoGroupSpec.safeParse(manifest);
  if (result.success) return { ok: true, spec: result.data.spec };
  const source = 'DerechoGroup';
  return { ok: false, problems: formatIssues(source, result.error.issues, { input: manifest }).map((line) => line.slice(source.length + 2)) };
}

function decideSpec(group: DerechoGroupResource, namespace: string, current: number | null): SpecDecision {
  const checked = checkManifest(group, namespace, group.spec);
  if (checked.ok) return { kind: 'accepted', spec: checked.spec };
  const raw = group.spec;
  if (current !== null && typeof raw === 'object' && raw !== null && (raw as { members?: unknown }).members !== current) {
    const atCurrent = checkManifest(group, namespace, { ...(raw as Record<string, unknown>), members: current });
    if (atCurrent.ok) return { kind: 'scalingRefused', spec: atCurrent.spec, problems: checked.problems };
  }
  return { kind: 'invalid', reason: 'InvalidSpec', problems: checked.problems };
}

interface Observed {
  pods: Map<NodeId, ObservedPod>;
  pvcs: Map<NodeId, ObservedPvc>;
  /** The budgets protecting sole shard members (see solePodDisruptionBudget), by node id. */
  solePdbs: Map<NodeId, KubeObject>;
  /** The members' certificates the operator issued, by node id. */
  memberTlsSecrets: Map<NodeId, ObservedSecret>;
  configMap: ObservedConfigMap | undefined;
  secrets: Map<string, ObservedSecret>;
}

function indexObserved(observed: ObservedObjects, name: string): Observed {
  const mine = <T extends KubeObject>(objects: T[] | undefined): T[] => (objects ?? []).filter((object) => object.metadata.labels?.[LABEL.instance] === name);
  const byNode = <T extends KubeObject>(objects: T[], nameOf: (group: string, nodeId: number) => string): Map<NodeId, T> => {
    const map = new Map<NodeId, T>();
    for (const object of objects) {
      const nodeId = memberNodeId(object, name, nameOf);
      if (nodeId !== null) map.set(nodeId, object);
    }
    return map;
  };
  return {
    pods: byNode(mine(observed.pods), names.pod),
    pvcs: byNode(mine(observed.pvcs), names.pvc),
    solePdbs: byNode(mine(observed.podDisruptionBudgets), names.solePodDisruptionBudget),
    memberTlsSecrets: byNode(mine(observed.secrets), names.memberTlsSecret),
    configMap: (observed.configMaps ?? []).find((configMap) => configMap.metadata.name === names.configMap(name)),
    secrets: new Map((observed.secrets ?? []).map((secret) => [secret.metadata.name, secret] as const)),
  };
}

/**
 * The recorded founding and current member counts (ConfigMap annotations, else the previous status).
 * Never inferred from volumes: retained volumes outlive their group, and a group re-created over them is a
 * new group whose founding count is its spec (a volume of a node that joined the earlier group later made
 * that node a "founder" - issue 15). Running pods of the group, if any, say how many members it has.
 */
function recordedCounts(observed: Observed, previous: DerechoGroupStatus | null): { founding: number | null; current: number | null } {
  const annotations = observed.configMap?.metadata.annotations ?? {};
  const highestPod = observed.pods.size > 0 ? Math.max(...observed.pods.keys()) : null;
  return {
    founding: positiveInt(annotations[ANNOTATION.foundingMembers]) ?? positiveInt(previous?.foundingMembers) ?? null,
    current: positiveInt(annotations[ANNOTATION.members]) ?? positiveInt(previous?.currentMembers) ?? highestPod,
  };
}

/** Reconciles one DerechoGroup. Pure: the same input always gives the same output. */
export function reconcile(input: ReconcileInput): ReconcileOutput {
  const options: OperatorOptions = { ...DEFAULT_OPTIONS, ...input.options };
  const group = input.group;
  const name = group.metadata.name;
  const namespace = group.metadata.namespace ?? 'default';
  const ctx: Context = {
    name,
    namespace,
    generation: group.metadata.generation ?? 0,
    now: input.now,
    options,
    owner: { apiVersion: CRD_API_VERSION, kind: CRD_KIND, name, uid: group.metadata.uid, controller: true, blockOwnerDeletion: true },
    previous: input.previousStatus === undefined ? (group.status ?? null) : input.previousStatus,
  };
  const observed = indexObserved(input.observed, name);
  if (group.metadata.deletionTimestamp !== undefined) return finalize(ctx, group, observed, input.reports);

  const recorded = recordedCounts(observed, ctx.previous);
  const decision = decideSpec(group, namespace, recorded.current);
  if (decision.kind === 'invalid') return refuseAll(ctx, group, observed, input.reports, recorded, decision.reason, decision.problems);
  const spec = decision.spec;
  const founding = recorded.founding ?? spec.members;
  const current = recorded.current ?? spec.members;
  const desired = decision.kind === 'scalingRefused' ? current : spec.members;

  // The manifest the agents read keeps the founding member count (see the top of the file).
  const manifestCheck = checkManifest(group, namespace, { ...spec, members: founding });
  if (!manifestCheck.ok) {
    const problems = [
      `the agents' manifest keeps members: ${founding} (the founding count; members added later must join rather than found a new group), and with members: ${founding} the spec is invalid:`,
      ...manifestCheck.problems,
    ];
    return refuseAll(ctx, group, observed, input.reports, recorded, 'ManifestRejected', problems);
  }
  const specMembers = positiveInt((group.spec as { members?: unknown }).members) ?? desired;
  return plan(ctx, observed, input, spec, { founding, current, desired, specMembers, refusal: decision.kind === 'scalingRefused' ? decision.problems : null });
}

// ---------------------------------------------------------------------------------------------------
// The plan for a valid spec.

interface Counts {
  founding: number;
  current: number;
  /** spec.members, or the current count when the change was refused. */
  desired: number;
  /** spec.members as written. */
  specMembers: number;
  refusal: string[] | null;
}

function plan(ctx: Context, observed: Observed, input: ReconcileInput, spec: GroupSpec, counts: Counts): ReconcileOutput {
  const { name, options } = ctx;
  const reports = input.reports;
  const events: GroupEvent[] = [];
  const deletes: ObjectRef[] = [];
  const policy = toGroupPolicy(spec);
  const persistentGroup = policy.subgroups.some((subgroup) => subgroup.persistent && subgroup.deliveryMode === 'ordered');
  const view = currentView(reports, ctx.previous);
  const { current } = counts;
  let refusal = counts.refusal;
  let desired = counts.desired;

  // Health gate for changes: every current member active in one view of exactly the current members.
  const currentIds = range(1, current);
  const terminating = [...observed.pods.values()].filter(podIsTerminating).map((pod) => pod.metadata.name);
  const stableAmong = (ids: NodeId[]): boolean => terminating.length === 0 && ids.length > 0 &&
    ids.every((id) => isActive(reports[id]) && reports[id].viewId === reports[ids[0]!]?.viewId && sameSet(reports[id].members, ids));
  const stable = stableAmong(currentIds);
  /** Members of the view the active members report (empty when none is active). */
  const liveMembers = view !== null && view.layout !== null ? view.members : [];
  const notActive = currentIds.filter((id) => !isActive(reports[id]));
  const unstableWhy = notActive.length > 0
    ? `${listIds(notActive)} ${notActive.length === 1 ? 'is' : 'are'} not active and ready`
    : terminating.length > 0 ? `pod ${terminating.join(', ')} is terminating` : 'the members are not yet in one view of exactly the current members';

  // Scaling, one member at a time.
  let next = current;
  let scalingNote: string | null = null;
  if (counts.desired > current) {
    if (stable) {
      next = current + 1;
      events.push({ type: 'Normal', reason: 'MemberAdded', action: 'ScaleUp', message: `adding node ${next} (members ${current} -> ${next} of ${counts.desired}); it joins view ${view?.id ?? '?'} and receives its shards' state by transfer` });
    } else {
      scalingNote = `waiting to add node ${current + 1}: ${unstableWhy}`;
    }
  } else if (counts.desired < current) {
    const remaining = range(1, current - 1);
    const allocation = allocate(policy, layoutOf(view), remaining);
    if (!allocation.adequate) {
      refusal = [`removing node ${current} would leave a shard below its minimum: ${allocation.reason}`];
      desired = current;
    } else if (liveMembers.includes(current) && current - 1 < majority(current)) {
      refusal = [`removing node ${current} leaves ${current - 1} of ${current} members, not a majority of the view, so the rest could not install the next view (a member leaving gracefully could, but agents only stop on SIGTERM)`];
      desired = current;
    } else if (stable || (!liveMembers.includes(current) && stableAmong(range(1, current - 1)))) {
      // (A member that never made it into the view, e.g. stuck joining, can go as soon as the others are stable.)
      next = current - 1;
      events.push({ type: 'Normal', reason: 'MemberRemoved', action: 'ScaleDown', message: `removing node ${current} (members ${current} -> ${next} of ${counts.desired}); its volume ${names.pvc(name, current)} is kept` });
    } else {
      scalingNote = `waiting to remove node ${current}: ${unstableWhy}`;
    }
  }
  const memberIds = range(1, next);

  // Objects.
  const manifestHeader = { apiVersion: CRD_API_VERSION, kind: CRD_KIND, metadata: { name, namespace: ctx.namespace } };
  const manifestText = toYaml({ ...manifestHeader, spec: { ...spec, members: counts.founding } });
  // What the pods' config hash covers: changes outside it (storage, the stuck timeout) roll no pod.
  const agentManifest = { ...manifestHeader, spec: agentRelevantSpec({ ...spec, members: counts.founding }) };
  const auth = authOf(ctx, spec, observed, memberIds, input);
  for (const message of auth.issued) events.push({ type: 'Normal', reason: 'CertificateIssued', action: 'IssueCertificate', message });
  for (const [id, secret] of observed.memberTlsSecrets) {
    if (id > next && auth.ownsMemberSecrets) {
      deletes.push(refOf(secret, `node ${id} is not a member (members 1..${next})`));
      if (spec.tls.certManager !== undefined) {
        // (The Certificate is not watched: deleted by name, before its Secret is.)
        deletes.unshift({ apiVersion: 'cert-manager.io/v1', kind: 'Certificate', namespace: ctx.namespace, name: names.memberCertificate(name, id), reason: `node ${id} is not a member (members 1..${next})` });
      }
    }
  }
  const objects: KubeObject[] = [
    configMap(ctx, counts.founding, next, manifestText, policy, view, auth),
    ...auth.secrets,
    peersService(ctx),
    clientService(ctx),
    podDisruptionBudget(ctx, next),
    networkPolicy(ctx, spec),
  ];
  // A member that alone holds a persistent shard may not be evicted (a node drain would stop the group
  // until it is back): a budget of its own with maxUnavailable 0. (The operator's own rolling restarts
  // delete pods, which budgets do not block; they warn instead.)
  // From the layout the members have (or will have: at creation, before any view), as the ConfigMap shows it.
  const planned = allocate(policy, layoutOf(view), memberIds);
  const layoutView = planned.adequate
    ? { id: view?.id ?? -1, members: memberIds, layout: planned.layout.shards.map((shard) => ({ shardId: shard.shardId, subgroup: shard.subgroup, shardIndex: shard.shardIndex, members: shard.members })) }
    : view;
  const soleShardsOf = new Map(memberIds.map((id) => [id, soleHolderOf(layoutView, policy, id)] as const).filter(([, shards]) => shards.length > 0));
  const soleIds = [...soleShardsOf.keys()];
  for (const [id, shards] of soleShardsOf) objects.push(solePodDisruptionBudget(ctx, id, shards));
  for (const [id, budget] of observed.solePdbs) {
    if (!soleIds.includes(id)) deletes.push(refOf(budget, `node ${id} no longer holds a shard alone`));
  }
  if (persistentGroup) {
    for (const id of memberIds) objects.push(pvc(ctx, spec, id, observed.pvcs.get(id)));
  }

  // Pods: create the missing ones, keep the up-to-date ones, roll the outdated ones one at a time.
  const outdated: NodeId[] = [];
  const created: NodeId[] = [];
  const podObjects: KubeObject[] = [];
  for (const id of memberIds) {
    const existing = observed.pods.get(id);
    const peers = existing ? envOf(existing, 'DERECHO_PEERS') : undefined;
    const desiredPod = pod(ctx, spec, id, next, agentManifest, persistentGroup, auth, peers);
    if (existing === undefined) {
      podObjects.push(desiredPod);
      created.push(id);
      continue;
    }
    if (podIsTerminating(existing)) continue;
    if (podIsFinished(existing)) {
      deletes.push(refOf(existing, `pod ${existing.metadata.name} is ${existing.status?.phase}; it is recreated`));
      events.push({ type: 'Warning', reason: 'PodReplaced', action: 'Delete', message: `pod ${existing.metadata.name} of node ${id} is ${existing.status?.phase}; deleting it so it is recreated on its volume`, related: podRef(ctx, id) });
      continue;
    }
    if (existing.metadata.annotations?.[ANNOTATION.configHash] === desiredPod.metadata.annotations?.[ANNOTATION.configHash]) podObjects.push(desiredPod);
    else outdated.push(id);
  }
  for (const [id, existing] of observed.pods) {
    if (id > next && !podIsTerminating(existing)) deletes.push(refOf(existing, `node ${id} is not a member (members 1..${next})`));
  }
  // Outdated members outside the view (crash-looping, unreachable, restarting, stuck joining) are restarted
  // first and without the health gate: they serve nothing, and the new spec may be what fixes them.
  // Members in the view wait for the gate, followers first (highest id first), the leader last.
  let rolled: NodeId | null = null;
  let soleShards: string[] = [];
  const idle = outdated.filter((id) => !liveMembers.includes(id) && !isActive(reports[id]));
  if (outdated.length > 0 && next === current && terminating.length === 0 && (idle.length > 0 || (desired === current && stable))) {
    const leader = view?.members[0];
    rolled = idle.length > 0 ? Math.max(...idle) : [...outdated].sort((a, b) => (a === leader ? 1 : b === leader ? -1 : b - a))[0]!;
    const existing = observed.pods.get(rolled)!;
    deletes.push(refOf(existing, `node ${rolled} runs an older spec`));
    soleShards = liveMembers.includes(rolled) ? soleHolderOf(view, policy, rolled) : [];
    const stops = soleShards.length > 0 ? `; ${stopNote(rolled, soleShards)}` : '';
    events.push({ type: soleShards.length > 0 ? 'Warning' : 'Normal', reason: 'RollingRestart', action: 'Restart', message: `restarting node ${rolled} (pod ${existing.metadata.name}) to apply the new spec; ${outdated.length - 1} more to go after it${stops}`, related: podRef(ctx, rolled) });
  }
  const hadView = view !== null;
  if (created.length > 0) {
    const onVolumes = created.filter((id) => observed.pvcs.has(id));
    const message = !hadView && observed.pods.size === 0
      ? `creating ${created.length} founding member pod(s) (${listIds(created)}) together: they form view 0 once all are connected`
      : `creating pod(s) for ${listIds(created)}${onVolumes.length > 0 ? ` (on existing volume(s) of ${listIds(onVolumes)})` : ''}`;
    events.push({ type: 'Normal', reason: 'PodsCreated', action: 'Create', message, requires: created.map((id) => `Pod/${names.pod(name, id)}`) });
  }
  objects.push(...podObjects);

  const status = buildStatus(ctx, observed, reports, view, { ...counts, desired, next, refusal, scalingNote, outdated, rolled, soleShards, created, auth, quorumTimeoutSeconds: spec.restart.quorumTimeoutSeconds });
  events.push(...conditionEvents(ctx.previous, status));
  const settled = status.phase === 'Running';
  return {
    objects,
    deletes,
    status,
    events,
    finalizer: { name: FINALIZER, present: true },
    requeueAfterSeconds: settled ? options.resyncSeconds : options.busyResyncSeconds,
  };
}

/** The newest view an active member reports, else the last status's. */
function currentView(reports: AgentReports, previous: DerechoGroupStatus | null): { id: number; members: NodeId[]; layout: AgentReport['layout'] | null } | null {
  let best: AgentReport | null = null;
  for (const report of Object.values(reports)) {
    if (report?.mode !== 'active') continue;
    if (best === null || report.viewId > best.viewId) best = report;
  }
  if (best !== null) return { id: best.viewId, members: [...best.members], layout: best.layout };
  if (previous?.view !== undefined) return { id: previous.view.id, members: [...previous.view.members], layout: null };
  return null;
}

/**
 * The persistent ordered shards (subgroup/index) whose only member in the view is `nodeId`. While it
 * restarts the group cannot install a view (it would be inadequate, and the shard's state is only there),
 * so the whole group waits for it: a restart of such a member is an outage, not a rolling step.
 */
function soleHolderOf(view: ReturnType<typeof currentView>, policy: ReturnType<typeof toGroupPolicy>, nodeId: NodeId): string[] {
  const durable = new Set(policy.subgroups.filter((subgroup) => subgroup.persistent && subgroup.deliveryMode === 'ordered').map((subgroup) => subgroup.name));
  return (view?.layout ?? [])
    .filter((shard) => durable.has(shard.subgroup) && shard.members.length === 1 && shard.members[0] === nodeId)
    .map((shard) => `${shard.subgroup}/${shard.shardIndex}`);
}

function stopNote(nodeId: NodeId, shards: string[]): string {
  return `node ${nodeId} is the only member of shard${shards.length === 1 ? '' : 's'} ${shards.join(', ')}: the group cannot change views without it and stops until it is back (give ${shards.length === 1 ? 'that shard' : 'those shards'} a second member to keep the group available during restarts)`;
}

function layoutOf(view: ReturnType<typeof currentView>): Layout | null {
  if (view?.layout === null || view?.layout === undefined) return null;
  return {
    shards: view.layout.map((shard) => ({ shardId: shard.shardId, subgroup: shard.subgroup, shardIndex: shard.shardIndex, members: [...shard.members], senders: [], deliveryMode: 'ordered', persistent: true })),
  };
}

function podRef(ctx: Context, nodeId: NodeId): NonNullable<GroupEvent['related']> {
  return { apiVersion: 'v1', kind: 'Pod', name: names.pod(ctx.name, nodeId), namespace: ctx.namespace };
}

// ---------------------------------------------------------------------------------------------------
// Desired objects.

function labels(ctx: Context, component: string, nodeId?: NodeId): Record<string, string> {
  return {
    [LABEL.name]: APP_NAME,
    [LABEL.instance]: ctx.name,
    [LABEL.component]: component,
    [LABEL.managedBy]: ctx.options.managedBy,
    ...(nodeId !== undefined ? { [LABEL.nodeId]: String(nodeId) } : {}),
  };
}

/** Selects the group's member pods. */
function memberSelector(ctx: Context): Record<string, string> {
  return { [LABEL.name]: APP_NAME, [LABEL.instance]: ctx.name, [LABEL.component]: 'member' };
}

export function selectorString(group: string): string {
  return `${LABEL.name}=${APP_NAME},${LABEL.instance}=${group},${LABEL.component}=member`;
}

function meta(ctx: Context, name: string, component: string, extra: { nodeId?: NodeId; annotations?: Record<string, string>; owned?: boolean; extraLabels?: Record<string, string> | undefined } = {}): KubeObject['metadata'] {
  return {
    name,
    namespace: ctx.namespace,
    // The operator's own labels last: the spec cannot override them (its schema refuses those keys too).
    labels: { ...extra.extraLabels, ...labels(ctx, component, extra.nodeId) },
    ...(extra.annotations !== undefined ? { annotations: extra.annotations } : {}),
    ...(extra.owned === false ? {} : { ownerReferences: [{ ...ctx.owner }] }),
  };
}

interface Auth {
  mode: 'hmac' | 'mutual';
  /** The Secret a member's pod mounts, and which of its keys go to the files the agent reads. */
  volume(nodeId: NodeId): { secretName: string; items: { key: string; path: string }[] };
  /** To apply: the HMAC key Secret, the authority and members' certificate Secrets the operator issues, or cert-manager Certificates. */
  secrets: KubeObject[];
  /** What is missing from a user-provided Secret, or null. */
  problem: string | null;
  /** The reason of the Degraded condition the problem makes. */
  problemReason?: 'AuthSecretMissing' | 'CertificatePending';
  /** The user's Secret, when the user provides the material (the ConfigMap names it). */
  userSecretName: string | null;
  /** What the operator issued this round (Events). */
  issued: string[];
  /** The members' Secrets <group>-node-<id>-tls are the operator's or cert-manager's: a member's goes with it. */
  ownsMemberSecrets: boolean;
  /** Every authority that signs members' certificates (PEM bundle, base64), when known: the client Secret's ca.crt. */
  trusted: string | null;
  /** The client API (spec.clientApi): its certificate files in the pod and where they come from, and the Secret of its tokens. */
  api: {
    tls: { certFile: string; keyFile: string; volume: ((nodeId: NodeId) => { secretName: string; items: { key: string; path: string }[] }) | null } | null;
    tokenSecretName: string | null;
  };
}

const TLS_ITEMS = [{ key: 'ca.crt', path: 'ca.crt' }, { key: 'tls.crt', path: 'tls.crt' }, { key: 'tls.key', path: 'tls.key' }];

function peerAuthOf(ctx: Context, spec: GroupSpec, observed: Observed, memberIds: NodeId[], input: ReconcileInput): Omit<Auth, 'api'> {
  const none = { secrets: [], problem: null, userSecretName: null, issued: [], ownsMemberSecrets: false, trusted: null };
  if (spec.tls.mode === 'hmac') {
    const items = [{ key: 'hmac.key', path: 'hmac.key' }];
    if (spec.tls.secretName !== undefined) {
      const secretName = spec.tls.secretName;
      const secret = observed.secrets.get(secretName);
      const problem = secret === undefined ? `Secret ${secretName} (spec.tls.secretName) does not exist`
        : secret.data?.['hmac.key'] === undefined ? `Secret ${secretName} has no key "hmac.key"` : null;
      return { ...none, mode: 'hmac', volume: () => ({ secretName, items }), problem, userSecretName: secretName };
    }
    const secretName = names.hmacSecret(ctx.name);
    const key = observed.secrets.get(secretName)?.data?.['hmac.key'] ?? input.random?.hmacKey;
    if (key === undefined || Buffer.from(key, 'base64').byteLength < 16) {
      throw new TypeError(`reconcile: the group ${ctx.namespace}/${ctx.name} needs an HMAC key: pass random.hmacKey (base64 of 32 random bytes)`);
    }
    return {
      ...none,
      mode: 'hmac',
      volume: () => ({ secretName, items }),
      secrets: [{ apiVersion: 'v1', kind: 'Secret', metadata: meta(ctx, secretName, 'auth'), type: 'Opaque', data: { 'hmac.key': key } }],
    };
  }
  if (spec.tls.secretName !== undefined) {
    // The user's own Secret, one for every member (node-<id>.crt and node-<id>.key).
    const secretName = spec.tls.secretName;
    const secret = observed.secrets.get(secretName);
    const missing = ['ca.crt', ...memberIds.flatMap((id) => [`node-${id}.crt`, `node-${id}.key`])].filter((key) => secret?.data?.[key] === undefined);
    const problem = secret === undefined
      ? `Secret ${secretName} (spec.tls.secretName) with the members' TLS material does not exist (keys ca.crt, node-<id>.crt and node-<id>.key, certificate CN "node-<id>")`
      : missing.length > 0 ? `Secret ${secretName} lacks ${missing.join(', ')}` : null;
    const volume = (nodeId: NodeId) => ({ secretName, items: [{ key: 'ca.crt', path: 'ca.crt' }, { key: `node-${nodeId}.crt`, path: 'tls.crt' }, { key: `node-${nodeId}.key`, path: 'tls.key' }] });
    return { ...none, mode: 'mutual', volume, problem, userSecretName: secretName, trusted: secret?.data?.['ca.crt'] ?? null };
  }
  const certManager = spec.tls.certManager;
  if (certManager !== undefined) {
    // cert-manager issues them: a Certificate per member, into the Secret the pod mounts (ADR 0014).
    const pending = memberIds.filter((id) => {
      const data = observed.memberTlsSecrets.get(id)?.data;
      return data?.['tls.crt'] === undefined || data['tls.key'] === undefined || data['ca.crt'] === undefined;
    });
    const certificateName = (id: NodeId): string => names.memberCertificate(ctx.name, id);
    return {
      ...none,
      mode: 'mutual',
      ownsMemberSecrets: true,
      // (cert-manager writes the issuer's CA into each Secret's ca.crt.)
      trusted: memberIds.map((id) => observed.memberTlsSecrets.get(id)?.data?.['ca.crt']).find((ca) => ca !== undefined) ?? null,
      volume: (nodeId) => ({ secretName: names.memberTlsSecret(ctx.name, nodeId), items: TLS_ITEMS }),
      secrets: memberIds.map((nodeId) => ({
        apiVersion: 'cert-manager.io/v1',
        kind: 'Certificate',
        metadata: meta(ctx, certificateName(nodeId), 'certificate', { nodeId }),
        spec: {
          secretName: names.memberTlsSecret(ctx.name, nodeId),
          // The Secret carries the group's labels, so that the operator sees it (and its pod's volume fills).
          secretTemplate: { labels: labels(ctx, 'certificate', nodeId) },
          commonName: `node-${nodeId}`,
          dnsNames: memberDnsNames(ctx, nodeId),
          duration: `${Math.round(ctx.options.certificates.certificateValiditySeconds / 3600)}h`,
          renewBefore: `${Math.round(ctx.options.certificates.certificateValiditySeconds / 3 / 3600)}h`,
          usages: ['digital signature', 'key encipherment', 'server auth', 'client auth'],
          privateKey: { algorithm: 'ECDSA', size: 256, rotationPolicy: 'Always' },
          issuerRef: { ...certManager.issuerRef },
        },
      })),
      problemReason: 'CertificatePending',
      problem: pending.length === 0 ? null
        : `waiting for cert-manager to issue the certificate of ${listIds(pending)} (${pending.map((id) => `Certificate ${certificateName(id)}`).join(', ')}; \`kubectl describe certificate\` says why if it does not come)`,
    };
  }
  // The operator issues them (certificates.ts, ADR 0014).
  return { ...none, mode: 'mutual', volume: (nodeId) => ({ secretName: names.memberTlsSecret(ctx.name, nodeId), items: TLS_ITEMS }), ...issuedCertificates(ctx, observed, memberIds, input) };
}

/** The group's certificate authority and its members' certificates, as the operator issues them (certificates.ts, ADR 0014). */
function issuedCertificates(ctx: Context, observed: Observed, memberIds: NodeId[], input: ReconcileInput): Pick<Auth, 'secrets' | 'issued' | 'trusted' | 'ownsMemberSecrets'> {
  const planned = planCertificates({
    group: `${ctx.namespace}/${ctx.name}`,
    now: new Date(input.now),
    times: ctx.options.certificates,
    authoritySecret: observed.secrets.get(names.authoritySecret(ctx.name)),
    memberSecrets: observed.memberTlsSecrets,
    members: memberIds.map((nodeId) => ({ nodeId, dnsNames: memberDnsNames(ctx, nodeId) })),
    issuer: input.issuer,
  });
  return {
    ownsMemberSecrets: true,
    trusted: planned.trusted,
    secrets: [
      { apiVersion: 'v1', kind: 'Secret', metadata: meta(ctx, names.authoritySecret(ctx.name), 'authority'), type: 'Opaque', data: planned.authorityData },
      ...[...planned.memberData].map(([nodeId, data]) => ({
        apiVersion: 'v1', kind: 'Secret', metadata: meta(ctx, names.memberTlsSecret(ctx.name, nodeId), 'certificate', { nodeId }), type: 'kubernetes.io/tls', data,
      })),
    ],
    issued: planned.issued,
  };
}

/**
 * The names a member's certificate is for: its pod through the peers Service, the group's client Service,
 * and localhost (a client through `kubectl port-forward` connects to https://localhost:<port>).
 */
function memberDnsNames(ctx: Context, nodeId: NodeId): string[] {
  const pod = names.pod(ctx.name, nodeId);
  const peers = names.peersService(ctx.name);
  const client = names.clientService(ctx.name);
  const ns = ctx.namespace;
  return [`${pod}.${peers}.${ns}.svc`, `${pod}.${peers}.${ns}.svc.cluster.local`, `${pod}.${peers}`, `${client}.${ns}.svc`, `${client}.${ns}.svc.cluster.local`, client, 'localhost'];
}

const API_TLS_DIR = '/etc/derecho/api-tls';
const API_TOKEN_DIR = '/etc/derecho/api-token';

/**
 * The members' authentication (peerAuthOf) and the client API's protection (spec.clientApi, ADR 0015):
 * TLS with the members' certificates (issued for this alone under tls.mode "hmac"), a bearer token from
 * the Secret <group>-client (made once with random.clientToken, kept) or the user's tokenSecretName, and
 * the client Secret with what clients need: the token and the CA bundle (ca.crt) that signs the members.
 */
function authOf(ctx: Context, spec: GroupSpec, observed: Observed, memberIds: NodeId[], input: ReconcileInput): Auth {
  let auth: Omit<Auth, 'api'> = peerAuthOf(ctx, spec, observed, memberIds, input);
  const api = spec.clientApi;
  let tls: Auth['api']['tls'] = null;
  if (api.tls && auth.mode === 'mutual') {
    tls = { certFile: `${AUTH_DIR}/tls.crt`, keyFile: `${AUTH_DIR}/tls.key`, volume: null };
  } else if (api.tls) {
    const issued = issuedCertificates(ctx, observed, memberIds, input);
    auth = { ...auth, secrets: [...auth.secrets, ...issued.secrets], issued: [...auth.issued, ...issued.issued], trusted: issued.trusted, ownsMemberSecrets: true };
    const items = [{ key: 'tls.crt', path: 'tls.crt' }, { key: 'tls.key', path: 'tls.key' }];
    tls = { certFile: `${API_TLS_DIR}/tls.crt`, keyFile: `${API_TLS_DIR}/tls.key`, volume: (nodeId) => ({ secretName: names.memberTlsSecret(ctx.name, nodeId), items }) };
  }
  const clientSecretName = names.clientSecret(ctx.name);
  const data: Record<string, string> = {};
  let tokenSecretName: string | null = null;
  let problem: string | null = null;
  if (api.authentication === 'token' && api.tokenSecretName !== undefined) {
    tokenSecretName = api.tokenSecretName;
    const secret = observed.secrets.get(tokenSecretName);
    problem = secret === undefined ? `Secret ${tokenSecretName} (spec.clientApi.tokenSecretName) with the client API's tokens does not exist (key "token": one token per line)`
      : secret.data?.token === undefined ? `Secret ${tokenSecretName} (spec.clientApi.tokenSecretName) has no key "token"` : null;
  } else if (api.authentication === 'token') {
    tokenSecretName = clientSecretName;
    const kept = observed.secrets.get(clientSecretName)?.data?.token;
    const token = kept ?? (input.random?.clientToken !== undefined ? Buffer.from(input.random.clientToken, 'utf8').toString('base64') : undefined);
    if (token === undefined || Buffer.from(token, 'base64').toString('utf8').trim().length < 32) {
      throw new TypeError(`reconcile: the group ${ctx.namespace}/${ctx.name} needs a client API token: pass random.clientToken (at least 32 random characters)`);
    }
    data.token = token;
  }
  if (tls !== null && auth.trusted !== null) data['ca.crt'] = auth.trusted;
  const secrets = Object.keys(data).length === 0 ? auth.secrets
    : [...auth.secrets, { apiVersion: 'v1', kind: 'Secret', metadata: meta(ctx, clientSecretName, 'client'), type: 'Opaque', data }];
  return {
    ...auth,
    secrets,
    ...(auth.problem === null && problem !== null ? { problem, problemReason: 'AuthSecretMissing' as const } : {}),
    api: { tls, tokenSecretName },
  };
}

function configMap(ctx: Context, founding: number, members: number, manifestText: string, policy: ReturnType<typeof toGroupPolicy>, view: ReturnType<typeof currentView>, auth: Auth): KubeObject {
  const planned = allocate(policy, layoutOf(view), range(1, members));
  const layout = {
    note: 'The layout the allocator plans for the members the operator runs; the live layout is in the DerechoGroup status (shards).',
    members: range(1, members),
    shards: planned.adequate ? planned.layout.shards.map((shard) => ({ subgroup: shard.subgroup, shard: shard.shardIndex, members: shard.members })) : [],
    ...(planned.adequate ? {} : { inadequate: planned.reason }),
  };
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: meta(ctx, names.configMap(ctx.name), 'config', {
      annotations: {
        [ANNOTATION.foundingMembers]: String(founding),
        [ANNOTATION.members]: String(members),
        ...(auth.mode === 'mutual' && auth.userSecretName !== null ? { [ANNOTATION.tlsSecret]: auth.userSecretName } : {}),
      },
    }),
    data: { 'group.yaml': manifestText, 'layout.yaml': toYaml(layout) },
  };
}

function peersService(ctx: Context): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: meta(ctx, names.peersService(ctx.name), 'peers'),
    spec: {
      clusterIP: 'None',
      // Founders must reach each other before any of them is ready (they form view 0 together).
      publishNotReadyAddresses: true,
      selector: memberSelector(ctx),
      ports: [{ name: 'peer', port: ctx.options.peerPort, targetPort: 'peer', protocol: 'TCP' }],
    },
  };
}

function clientService(ctx: Context): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: meta(ctx, names.clientService(ctx.name), 'client'),
    spec: {
      type: 'ClusterIP',
      selector: memberSelector(ctx),
      ports: [{ name: 'http', port: ctx.options.httpPort, targetPort: 'http', protocol: 'TCP' }],
    },
  };
}

function podDisruptionBudget(ctx: Context, members: number): KubeObject {
  return {
    apiVersion: 'policy/v1',
    kind: 'PodDisruptionBudget',
    metadata: meta(ctx, names.podDisruptionBudget(ctx.name), 'members'),
    spec: { minAvailable: majority(members), selector: { matchLabels: memberSelector(ctx) } },
  };
}

function solePodDisruptionBudget(ctx: Context, nodeId: NodeId, shards: string[]): KubeObject {
  return {
    apiVersion: 'policy/v1',
    kind: 'PodDisruptionBudget',
    metadata: meta(ctx, names.solePodDisruptionBudget(ctx.name, nodeId), 'members', {
      nodeId,
      annotations: { 'derecho.dev/why': `node ${nodeId} is the only member of shard${shards.length === 1 ? '' : 's'} ${shards.join(', ')}: evicting it would stop the group until it is back` },
    }),
    spec: { maxUnavailable: 0, selector: { matchLabels: { ...memberSelector(ctx), [LABEL.nodeId]: String(nodeId) } } },
  };
}

function networkPolicy(ctx: Context, spec: GroupSpec): KubeObject {
  return {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: meta(ctx, names.networkPolicy(ctx.name), 'members'),
    spec: {
      podSelector: { matchLabels: memberSelector(ctx) },
      policyTypes: ['Ingress'],
      ingress: [
        // The protocol port: only the group's own members.
        { from: [{ podSelector: { matchLabels: memberSelector(ctx) } }], ports: [{ protocol: 'TCP', port: ctx.options.peerPort }] },
        // The HTTP API: the clients spec.clientApi.allowedClients names (by default pods labelled
        // derecho.dev/client: <group> in the group's namespace) and the operator (its /status polls).
        // (The kubelet's probes come from the node, which NetworkPolicies do not restrict.)
        {
          from: [
            ...(spec.clientApi.allowedClients ?? [{ podSelector: { matchLabels: { [CLIENT_LABEL]: ctx.name } } }]),
            {
              namespaceSelector: ctx.options.operatorNamespace === null ? {} : { matchLabels: { 'kubernetes.io/metadata.name': ctx.options.operatorNamespace } },
              podSelector: { matchLabels: { ...OPERATOR_POD_LABELS } },
            },
          ],
          ports: [{ protocol: 'TCP', port: ctx.options.httpPort }],
        },
      ],
    },
  };
}

function pvc(ctx: Context, spec: GroupSpec, nodeId: NodeId, existing: ObservedPvc | undefined): KubeObject {
  // Volumes only grow: an existing larger request is kept (the API server refuses shrinking a claim).
  const observedSize = existing?.spec?.resources?.requests?.storage;
  const size = observedSize !== undefined && parseQuantity(observedSize) > parseQuantity(spec.storage.size) ? observedSize : spec.storage.size;
  const retain = spec.storage.retention === 'retain';
  return {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    // "retain" volumes have no owner reference, so deleting the group (or the garbage collector) never takes them.
    metadata: meta(ctx, names.pvc(ctx.name, nodeId), 'data', { nodeId, owned: !retain, annotations: { [ANNOTATION.retention]: spec.storage.retention } }),
    spec: {
      accessModes: ['ReadWriteOnce'],
      ...(spec.storage.storageClassName !== undefined ? { storageClassName: spec.storage.storageClassName } : {}),
      resources: { requests: { storage: size } },
    },
  };
}

const GROUP_FILE_DIR = '/etc/derecho/group';
const AUTH_DIR = '/etc/derecho/auth';

/** DERECHO_PEERS for a new pod: every member up to the larger of the member count and its own id. */
function peersEnv(ctx: Context, nodeId: NodeId, members: number): string {
  return range(1, Math.max(members, nodeId)).filter((id) => id !== nodeId).map((id) => `${id}=${peerHost(ctx.name, ctx.namespace, id)}:${ctx.options.peerPort}`).join(',');
}

/**
 * The part of the agents' manifest that a running agent acts on: what a pod must be restarted to pick up.
 * Left out: fields only the operator reads (storage: the volumes; restart.quorumTimeoutSeconds: the Stuck
 * condition) and fields that reach the pod through its spec (image, resources, podTemplate, clientApi), so that
 * changing only those never rolls the group for the manifest (a pod spec change still rolls it).
 */
export function agentRelevantSpec(spec: GroupSpec): Record<string, unknown> {
  // (clientApi reaches the agents through the pod spec: env and volumes; allowedClients only the NetworkPolicy.)
  const { storage: _storage, image: _image, resources: _resources, podTemplate: _podTemplate, clientApi: _clientApi, restart, ...rest } = spec;
  const { quorumTimeoutSeconds: _timeout, ...restartRest } = restart;
  return { ...rest, restart: restartRest };
}

/**
 * Where members may run (spec.podTemplate): the user's nodeSelector, affinity, tolerations, priority class
 * and pull secrets as given, and the topology spread. Without the user's own constraints: one member per
 * node where the nodes allow it (hostname, maxSkew 1, DoNotSchedule, counting only nodes the member may
 * use: with fewer nodes than members some nodes take two, never all on one while others are free), and an
 * even spread over zones as a preference (nodes without a zone label do not block anything). A constraint
 * without a labelSelector counts the group's members.
 */
function scheduling(ctx: Context, template: GroupSpec['podTemplate']): Record<string, unknown> {
  const members = { matchLabels: memberSelector(ctx) };
  const spread = template.topologySpreadConstraints === undefined
    ? [
      { maxSkew: 1, topologyKey: 'kubernetes.io/hostname', whenUnsatisfiable: 'DoNotSchedule', labelSelector: members, nodeAffinityPolicy: 'Honor', nodeTaintsPolicy: 'Honor' },
      { maxSkew: 1, topologyKey: 'topology.kubernetes.io/zone', whenUnsatisfiable: 'ScheduleAnyway', labelSelector: members, nodeAffinityPolicy: 'Honor', nodeTaintsPolicy: 'Honor' },
    ]
    : template.topologySpreadConstraints.map((c) => ({ ...c, labelSelector: c.labelSelector ?? members }));
  return {
    ...(template.nodeSelector !== undefined ? { nodeSelector: template.nodeSelector } : {}),
    ...(template.affinity !== undefined ? { affinity: template.affinity } : {}),
    ...(template.tolerations !== undefined ? { tolerations: template.tolerations } : {}),
    ...(spread.length > 0 ? { topologySpreadConstraints: spread } : {}),
    ...(template.priorityClassName !== undefined ? { priorityClassName: template.priorityClassName } : {}),
    ...(template.imagePullSecrets !== undefined ? { imagePullSecrets: template.imagePullSecrets } : {}),
  };
}

function pod(ctx: Context, spec: GroupSpec, nodeId: NodeId, members: number, agentManifest: unknown, persistent: boolean, auth: Auth, existingPeers: string | undefined): KubeObject {
  const { options } = ctx;
  const rdma = spec.transport === 'rdma';
  const resources: Record<string, Record<string, string>> = {};
  for (const kind of ['requests', 'limits'] as const) {
    const list: Record<string, string> = { ...(spec.resources[kind] ?? {}) } as Record<string, string>;
    if (rdma) list[options.rdmaResourceName] = '1';
    if (Object.keys(list).length > 0) resources[kind] = list;
  }
  const authEnv = auth.mode === 'hmac'
    ? [{ name: 'DERECHO_HMAC_SECRET_FILE', value: `${AUTH_DIR}/hmac.key` }]
    : [
      { name: 'DERECHO_TLS_CERT_FILE', value: `${AUTH_DIR}/tls.crt` },
      { name: 'DERECHO_TLS_KEY_FILE', value: `${AUTH_DIR}/tls.key` },
      { name: 'DERECHO_TLS_CA_FILE', value: `${AUTH_DIR}/ca.crt` },
    ];
  const PEERS_PLACEHOLDER = '';
  const env = [
    { name: 'DERECHO_NODE_ID', value: String(nodeId) },
    { name: 'DERECHO_GROUP_NAME', value: ctx.name },
    { name: 'DERECHO_GROUP_FILE', value: `${GROUP_FILE_DIR}/group.yaml` },
    { name: 'DERECHO_PEERS', value: PEERS_PLACEHOLDER },
    { name: 'DERECHO_DATA_DIR', value: options.dataDir },
    { name: 'DERECHO_PEER_PORT', value: String(options.peerPort) },
    { name: 'DERECHO_HTTP_PORT', value: String(options.httpPort) },
    ...authEnv,
    ...(auth.api.tls !== null ? [{ name: 'DERECHO_API_TLS_CERT_FILE', value: auth.api.tls.certFile }, { name: 'DERECHO_API_TLS_KEY_FILE', value: auth.api.tls.keyFile }] : []),
    ...(auth.api.tokenSecretName !== null ? [{ name: 'DERECHO_API_TOKEN_FILE', value: `${API_TOKEN_DIR}/token` }] : []),
  ];
  // (The kubelet does not verify the certificate of an HTTPS probe.)
  const scheme = auth.api.tls !== null ? { scheme: 'HTTPS' } : {};
  const apiTlsVolume = auth.api.tls?.volume?.(nodeId);
  const podSpec = {
    hostname: names.pod(ctx.name, nodeId),
    subdomain: names.peersService(ctx.name),
    restartPolicy: 'Always',
    terminationGracePeriodSeconds: 30,
    enableServiceLinks: false,
    automountServiceAccountToken: false,
    securityContext: {
      runAsNonRoot: true,
      runAsUser: options.runAsUser,
      runAsGroup: options.runAsUser,
      fsGroup: options.runAsUser,
      fsGroupChangePolicy: 'OnRootMismatch',
      seccompProfile: { type: 'RuntimeDefault' },
    },
    ...scheduling(ctx, spec.podTemplate),
    containers: [
      {
        name: 'agent',
        image: spec.image ?? options.agentImage,
        imagePullPolicy: 'IfNotPresent',
        env,
        ports: [
          { name: 'peer', containerPort: options.peerPort, protocol: 'TCP' },
          { name: 'http', containerPort: options.httpPort, protocol: 'TCP' },
        ],
        // Why the agent stopped (it writes /dev/termination-log; else the end of its log) shows in the pod's
        // lastState and in the group's status (a crash-looping member says why).
        terminationMessagePolicy: 'FallbackToLogsOnError',
        readinessProbe: { httpGet: { path: '/readyz', port: 'http', ...scheme }, periodSeconds: 2, timeoutSeconds: 1, failureThreshold: 2 },
        livenessProbe: { httpGet: { path: '/healthz', port: 'http', ...scheme }, initialDelaySeconds: 10, periodSeconds: 10, timeoutSeconds: 2, failureThreshold: 3 },
        ...(Object.keys(resources).length > 0 ? { resources } : {}),
        securityContext: {
          runAsNonRoot: true,
          readOnlyRootFilesystem: true,
          allowPrivilegeEscalation: false,
          capabilities: { drop: ['ALL'], ...(rdma ? { add: ['IPC_LOCK'] } : {}) },
        },
        volumeMounts: [
          { name: 'data', mountPath: options.dataDir },
          { name: 'group', mountPath: GROUP_FILE_DIR, readOnly: true },
          { name: 'auth', mountPath: AUTH_DIR, readOnly: true },
          ...(apiTlsVolume !== undefined ? [{ name: 'api-tls', mountPath: API_TLS_DIR, readOnly: true }] : []),
          ...(auth.api.tokenSecretName !== null ? [{ name: 'api-token', mountPath: API_TOKEN_DIR, readOnly: true }] : []),
          { name: 'tmp', mountPath: '/tmp' },
        ],
      },
    ],
    volumes: [
      persistent ? { name: 'data', persistentVolumeClaim: { claimName: names.pvc(ctx.name, nodeId) } } : { name: 'data', emptyDir: {} },
      { name: 'group', configMap: { name: names.configMap(ctx.name), items: [{ key: 'group.yaml', path: 'group.yaml' }] } },
      { name: 'auth', secret: { ...auth.volume(nodeId), defaultMode: 0o440 } },
      ...(apiTlsVolume !== undefined ? [{ name: 'api-tls', secret: { ...apiTlsVolume, defaultMode: 0o440 } }] : []),
      ...(auth.api.tokenSecretName !== null ? [{ name: 'api-token', secret: { secretName: auth.api.tokenSecretName, items: [{ key: 'token', path: 'token' }], defaultMode: 0o440 } }] : []),
      { name: 'tmp', emptyDir: { sizeLimit: '64Mi' } },
    ],
  };
  // Everything a restart must pick up, except the peer list (fixed when the pod is made; see peersEnv).
  const configHash = hashOf({ podSpec, manifest: agentManifest });
  env[3]!.value = existingPeers ?? peersEnv(ctx, nodeId, members);
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: meta(ctx, names.pod(ctx.name, nodeId), 'member', {
      nodeId,
      extraLabels: spec.podTemplate.metadata?.labels,
      annotations: { ...spec.podTemplate.metadata?.annotations, [ANNOTATION.configHash]: configHash },
    }),
    spec: podSpec,
  };
}

// ---------------------------------------------------------------------------------------------------
// Status.

interface StatusPlan extends Counts {
  next: number;
  scalingNote: string | null;
  outdated: NodeId[];
  rolled: NodeId | null;
  /** The persistent shards whose only member is `rolled` (the group stops while it restarts). */
  soleShards: string[];
  created: NodeId[];
  auth: Auth;
  /** spec.restart.quorumTimeoutSeconds: a restart pending longer than this is reported stuck (0: never). */
  quorumTimeoutSeconds: number;
}

function condition(ctx: Context, type: ConditionType, status: Condition['status'], reason: string, message: string): Condition {
  const previous = ctx.previous?.conditions?.find((c) => c.type === type);
  return {
    type,
    status,
    reason,
    message,
    observedGeneration: ctx.generation,
    lastTransitionTime: previous !== undefined && previous.status === status ? previous.lastTransitionTime : ctx.now,
  };
}

function memberRows(ctx: Context, observed: Observed, reports: AgentReports, ids: NodeId[], outdated: NodeId[]): MemberStatus[] {
  return ids.map((nodeId): MemberStatus => {
    const report = reports[nodeId];
    const pod = observed.pods.get(nodeId);
    const delivered: Record<string, string> = {};
    const persisted: Record<string, string> = {};
    for (const shard of report?.shards ?? []) {
      delivered[`${shard.subgroup}/${shard.shardIndex}`] = frontier(shard.delivered);
      persisted[`${shard.subgroup}/${shard.shardIndex}`] = frontier(shard.persistenceFrontier);
    }
    const looping = pod !== undefined ? crashLoop(pod) : null;
    let mode: string;
    let waiting: string | undefined;
    if (report) {
      mode = report.mode;
      if (!report.ready) {
        waiting = report.exited ?? report.waiting?.message ?? (report.wedged ? `wedged in view ${report.viewId}` : report.mode);
        const auth = authTrouble(nodeId, reports);
        if (auth !== null) waiting = `cannot authenticate with the other members (wrong key or certificate?): ${auth}; it reports: ${waiting}`;
      }
    } else if (pod === undefined || podIsTerminating(pod)) {
      mode = 'absent';
      waiting = pod === undefined ? 'no pod' : 'pod terminating';
    } else if (pod.status?.phase !== 'Running') {
      mode = 'starting';
      waiting = `pod ${pod.status?.phase ?? 'Pending'}`;
    } else if (looping !== null) {
      mode = 'crashLooping';
      waiting = looping;
    } else {
      mode = 'unreachable';
      const last = lastExit(pod);
      waiting = `the agent does not answer /status${last !== null ? ` (${last})` : ''}`;
    }
    const ready = report ? report.ready : report === undefined && podIsReady(pod);
    return {
      nodeId,
      pod: names.pod(ctx.name, nodeId),
      ready,
      mode,
      viewId: report?.viewId ?? -1,
      delivered,
      persisted,
      ...(waiting !== undefined && !ready ? { waiting } : {}),
      ...(outdated.includes(nodeId) ? { outdated: true } : {}),
    };
  });
}

function restartOf(reports: AgentReports, view: ReturnType<typeof currentView>): RestartStatus | null {
  const restarting = Object.entries(reports)
    .filter(([, report]) => report?.mode === 'restarting')
    .map(([id, report]) => ({ id: Number(id), message: report!.waiting?.message ?? report!.restart?.waitingFor ?? 'restarting' }))
    .sort((a, b) => a.id - b.id);
  if (restarting.length === 0) return null;
  // Members active in a view: the group did not fail as a whole, a restarting member is one that tries to
  // come back (its row says what it waits for; e.g. it cannot authenticate with the others).
  if (Object.values(reports).some((report) => report?.mode === 'active')) return null;
  const chosen = restarting.find((entry) => /not met/.test(entry.message)) ?? restarting[0]!;
  const parsed = parseRestartMessage(chosen.message);
  const reporting = restarting.map((entry) => entry.id);
  const missingMembers = parsed.members ?? (view ? view.members.filter((id) => !reporting.includes(id)) : []);
  return { waitingFor: chosen.message, missingMembers, missingShards: parsed.shards, reporting };
}

function buildStatus(ctx: Context, observed: Observed, agentReports: AgentReports, view: ReturnType<typeof currentView>, plan: StatusPlan): DerechoGroupStatus {
  // A member whose pod is being deleted is going away: its agent may still answer for the grace period,
  // but the status must not show it as running (every pod deleted read "Running 3/3" for seconds).
  const reports: AgentReports = Object.fromEntries(Object.entries(agentReports).map(([id, report]) => {
    const pod = observed.pods.get(Number(id));
    return [id, pod !== undefined && podIsTerminating(pod) ? null : report];
  }));
  const memberIds = range(1, plan.next);
  const extraIds = [...observed.pods.keys()].filter((id) => id > plan.next);
  const rows = memberRows(ctx, observed, reports, [...memberIds, ...extraIds].sort((a, b) => a - b), plan.outdated);
  const row = (id: NodeId): MemberStatus => rows.find((r) => r.nodeId === id)!;
  const readyIds = memberIds.filter((id) => row(id).ready);
  const liveView = view !== null && view.layout !== null ? view : null;
  const restart = restartOf(reports, view);
  const anyReport = memberIds.some((id) => reports[id] !== null && reports[id] !== undefined);
  const everFormed = view !== null;
  // Why a member is not ready, for the conditions: a restarting member's own message (the restart planner's
  // terms) stays in its row; the conditions say it in plain words once (RestartQuorumPending).
  const why = (id: NodeId): string => (restart !== null && row(id).mode === 'restarting' ? 'restarting after a total failure' : row(id).waiting ?? row(id).mode);
  const notReadyText = memberIds.filter((id) => !row(id).ready).map((id) => `node ${id}: ${why(id)}`).join('; ');
  const allInView = liveView !== null && sameSet(liveView.members, memberIds) && memberIds.every((id) => reports[id]?.viewId === liveView.id);
  const conditions: Condition[] = [];

  // Ready
  if (readyIds.length === memberIds.length && memberIds.length > 0 && allInView) {
    conditions.push(condition(ctx, 'Ready', 'True', 'AllMembersReady', `all ${memberIds.length} members are ready in view ${liveView!.id}`));
  } else if (restart !== null) {
    conditions.push(condition(ctx, 'Ready', 'False', 'RestartQuorumPending', `restarting after a total failure: ${restartText(restart)}`));
  } else if (!everFormed) {
    conditions.push(condition(ctx, 'Ready', 'False', 'Creating', `waiting for the founding members to form view 0 (${readyIds.length} of ${memberIds.length} ready)${notReadyText ? `: ${notReadyText}` : ''}`));
  } else {
    // Every member ready but not all in one view (a view change under way, or the view not yet holding a
    // new member): say where each one is rather than "3 of 3 members ready".
    const whereText = readyIds.length === memberIds.length && memberIds.length > 0 ? notInOneViewText(memberIds, reports, liveView) : '';
    conditions.push(condition(ctx, 'Ready', 'False', 'MembersNotReady', whereText !== ''
      ? `every member is ready but they are not yet in one view: ${whereText}`
      : `${readyIds.length} of ${memberIds.length} members ready${notReadyText ? `: ${notReadyText}` : ''}`));
  }

  // Progressing
  const scaling = plan.next !== plan.current || plan.desired !== plan.next;
  if (scaling) {
    const up = plan.desired > plan.current || plan.next > plan.current;
    const message = plan.scalingNote ?? `members ${plan.current} -> ${plan.next}, target ${plan.desired} (one member at a time)`;
    conditions.push(condition(ctx, 'Progressing', 'True', up ? 'ScalingUp' : 'ScalingDown', message));
  } else if (plan.outdated.length > 0) {
    const message = plan.rolled !== null
      ? `restarting node ${plan.rolled} with the new spec; outdated: ${listIds(plan.outdated)}${plan.soleShards.length > 0 ? `; ${stopNote(plan.rolled, plan.soleShards)}` : ''}`
      : `${listIds(plan.outdated)} run an older spec; waiting to restart them one at a time until every member is active in one view`;
    conditions.push(condition(ctx, 'Progressing', 'True', 'RollingUpdate', message));
  } else if (plan.created.length > 0 || !everFormed) {
    conditions.push(condition(ctx, 'Progressing', 'True', everFormed ? 'RecreatingPods' : 'Creating', plan.created.length > 0 ? `creating pods for ${listIds(plan.created)}` : 'waiting for the founding members to form view 0'));
  } else if (plan.refusal !== null) {
    conditions.push(condition(ctx, 'Progressing', 'False', 'ScalingRefused', `spec.members ${plan.specMembers} is not applied (see SpecAccepted); ${plan.next} members`));
  } else {
    conditions.push(condition(ctx, 'Progressing', 'False', 'Reconciled', `${plan.next} members, spec generation ${ctx.generation} applied`));
  }

  // Degraded: a member that has been in a view (joiners excluded) is not ready, or the auth material is missing.
  // Known to have been in a view, even once a crashed member's row says viewId -1 and the view no longer
  // holds it: the founders (view 0 holds them all), and every member below the one added last (the scaling
  // gate added it only once they were all active in one view).
  const wasInAView = (id: NodeId): boolean => (ctx.previous?.members ?? []).some((member) => member.nodeId === id && member.viewId >= 0);
  const settledIds = everFormed ? Math.max(plan.founding, plan.next > plan.current ? plan.current : plan.current - 1) : 0;
  const established = memberIds.filter((id) => id <= settledIds || (view?.members.includes(id) ?? false) || (reports[id]?.viewId ?? -1) >= 0 || wasInAView(id));
  const unavailable = established.filter((id) => !row(id).ready);
  if (plan.auth.problem !== null) {
    conditions.push(condition(ctx, 'Degraded', 'True', plan.auth.problemReason ?? 'AuthSecretMissing', plan.auth.problem));
  } else if (everFormed && established.length > 0 && unavailable.length === established.length) {
    conditions.push(condition(ctx, 'Degraded', 'True', 'NoActiveMember', `no member is active (${unavailable.map((id) => `node ${id}: ${why(id)}`).join('; ')})`));
  } else if (unavailable.length > 0) {
    const authFailing = unavailable.some((id) => (row(id).waiting ?? '').startsWith('cannot authenticate'));
    conditions.push(condition(ctx, 'Degraded', 'True', authFailing ? 'AuthenticationFailed' : 'MembersUnavailable', unavailable.map((id) => `node ${id}: ${why(id)}`).join('; ')));
  } else {
    conditions.push(condition(ctx, 'Degraded', 'False', 'AsExpected', 'every member that has been in a view is ready'));
  }

  // RestartQuorumPending
  if (restart !== null) {
    // In plain words; the agents' own wording stays in status.restart.waitingFor and each member's row.
    conditions.push(condition(ctx, 'RestartQuorumPending', 'True', /not met/.test(restart.waitingFor) ? 'QuorumNotMet' : 'Restarting', restartText(restart)));
  } else if (everFormed && !anyReport && !memberIds.some((id) => isActive(reports[id]))) {
    conditions.push(condition(ctx, 'RestartQuorumPending', 'Unknown', 'NoReports', `no member answers /status; pods missing are recreated on their volumes (${memberIds.filter((id) => !observed.pods.has(id)).length} of ${memberIds.length})`));
  } else {
    conditions.push(condition(ctx, 'RestartQuorumPending', 'False', 'NotRestarting', 'no member is restarting'));
  }

  // Stuck: a restart after a total failure waiting longer than spec.restart.quorumTimeoutSeconds (counted
  // from when RestartQuorumPending turned True; the agents keep waiting: only a user can bring back the
  // members, or volumes, the restart needs).
  conditions.push(stuckCondition(ctx, restart, conditions.find((c) => c.type === 'RestartQuorumPending')!, plan.quorumTimeoutSeconds));

  // SpecAccepted
  if (plan.refusal !== null) {
    conditions.push(condition(ctx, 'SpecAccepted', 'False', 'ScalingRefused', `spec.members ${plan.specMembers} is refused, the group stays at ${plan.next} members: ${plan.refusal.join('; ')}`));
  } else {
    conditions.push(condition(ctx, 'SpecAccepted', 'True', 'Accepted', `spec generation ${ctx.generation} accepted`));
  }

  const ready = conditions[0]!.status === 'True';
  const degraded = conditions.find((c) => c.type === 'Degraded')!.status === 'True';
  let phase: Phase;
  if (restart !== null) phase = 'Restarting';
  else if (!everFormed) phase = 'Creating';
  else if (scaling) phase = 'Scaling';
  else if (plan.outdated.length > 0) phase = 'Updating';
  else if (!memberIds.some((id) => isActive(reports[id]))) phase = 'Unavailable';
  else if (degraded) phase = 'Degraded';
  // Not ready only because members added by a scale-up are still joining (the last step of a scale-up,
  // once the operator's counts already hold the new member): that is scaling, not a degraded group.
  else if (!ready && memberIds.some((id) => !row(id).ready && !established.includes(id))) phase = 'Scaling';
  else if (!ready) phase = 'Degraded';
  else phase = 'Running';

  return {
    observedGeneration: ctx.generation,
    phase,
    conditions,
    readyMembers: `${readyIds.length}/${plan.desired}`,
    desiredMembers: plan.specMembers,
    currentMembers: plan.next,
    foundingMembers: plan.founding,
    selector: selectorString(ctx.name),
    ...statusView(view, ctx.previous),
    members: rows,
    ...(restart !== null ? { restart } : {}),
  };
}

function stuckCondition(ctx: Context, restart: RestartStatus | null, pending: Condition, timeoutSeconds: number): Condition {
  if (restart === null || pending.status !== 'True') {
    return condition(ctx, 'Stuck', 'False', 'NotRestarting', 'no restart is waiting');
  }
  const waitedSeconds = Math.max(0, (Date.parse(ctx.now) - Date.parse(pending.lastTransitionTime)) / 1000);
  if (timeoutSeconds === 0 || waitedSeconds < timeoutSeconds) {
    const deadline = timeoutSeconds === 0 ? 'no deadline (spec.restart.quorumTimeoutSeconds: 0)' : `reported stuck after ${durationText(timeoutSeconds)} (spec.restart.quorumTimeoutSeconds)`;
    return condition(ctx, 'Stuck', 'False', 'RestartWaiting', `the restart has waited ${durationText(waitedSeconds)}; ${deadline}`);
  }
  return condition(ctx, 'Stuck', 'True', 'RestartQuorumTimeout',
    `the restart after a total failure has waited ${durationText(waitedSeconds)}, more than spec.restart.quorumTimeoutSeconds (${timeoutSeconds} s): ${restartText(restart)}. ` +
    'Members keep their logs and keep waiting; bring back the pods (and volumes) named here (see docs/operations.md, "A stuck restart").');
}

/**
 * What a restart after a total failure waits for, in plain words (no "quorum", "inadequate" or "restart
 * view"): "nodes 1, 2 are back; shard kv/1 needs one of its former members back (node 3), with its
 * volume; waiting for node 3".
 */
export function restartText(restart: RestartStatus): string {
  const quorumMet = !/not met/.test(restart.waitingFor);
  const parts: string[] = [];
  if (restart.reporting.length > 0) parts.push(`${listIds(restart.reporting)} ${restart.reporting.length === 1 ? 'is' : 'are'} back`);
  for (const s of restart.missingShards) {
    parts.push(`shard ${s.subgroup}/${s.shard} needs one of its former members back (${s.formerMembers.map((id) => `node ${id}`).join(' or ')}), with its volume`);
  }
  if (restart.missingMembers.length > 0) {
    parts.push(quorumMet
      ? `enough members are back; waiting a short grace period for ${listIds(restart.missingMembers)} before restarting without ${restart.missingMembers.length === 1 ? 'it' : 'them'}`
      : `waiting for ${listIds(restart.missingMembers)}`);
  } else if (restart.missingShards.length === 0) {
    parts.push(quorumMet ? 'enough members are back; they are agreeing on the restart' : 'waiting for more members to come back');
  }
  return parts.join('; ');
}

/** spec.restart.quorumTimeoutSeconds of a spec that did not validate, if it is a valid value; else the default. */
function rawQuorumTimeoutSeconds(group: DerechoGroupResource): number {
  const value = (group.spec as { restart?: { quorumTimeoutSeconds?: unknown } } | null)?.restart?.quorumTimeoutSeconds;
  // The spec schema's own check (bounds, and its default when the field is absent).
  const parsed = RestartSpec.shape.quorumTimeoutSeconds.safeParse(value);
  return parsed.success ? parsed.data : RESTART_QUORUM_TIMEOUT_SECONDS_DEFAULT;
}

/** "42 s", "5 min 3 s", "2 h 10 min". */
function durationText(seconds: number): string {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 > 0 ? ` ${s % 60} s` : ''}`;
  const m = Math.floor((s % 3600) / 60);
  return `${Math.floor(s / 3600)} h${m > 0 ? ` ${m} min` : ''}`;
}

/** "node 3 in view 4, nodes 1, 2 in view 5 (members 1, 2)": where the members are, when not all in one view. */
function notInOneViewText(memberIds: NodeId[], reports: AgentReports, view: ReturnType<typeof currentView>): string {
  const byView = new Map<number, NodeId[]>();
  for (const id of memberIds) {
    const viewId = reports[id]?.viewId ?? -1;
    byView.set(viewId, [...(byView.get(viewId) ?? []), id]);
  }
  const parts = [...byView.entries()].sort((a, b) => a[0] - b[0]).map(([viewId, ids]) => `${listIds(ids)} in ${viewId >= 0 ? `view ${viewId}` : 'no view'}`);
  const outside = view !== null ? memberIds.filter((id) => !view.members.includes(id)) : [];
  if (outside.length > 0) parts.push(`view ${view!.id} does not hold ${listIds(outside)} yet`);
  return parts.join('; ');
}

/** The view and its shard table: from an active member's report, else kept from the last status. */
function statusView(view: ReturnType<typeof currentView>, previous: DerechoGroupStatus | null): Pick<DerechoGroupStatus, 'view' | 'shards'> {
  if (view === null) return {};
  const shards: ShardStatus[] | undefined = view.layout !== null
    ? [...view.layout].sort((a, b) => a.shardId - b.shardId).map((shard) => ({ subgroup: shard.subgroup, shard: shard.shardIndex, members: [...shard.members] }))
    : previous?.shards;
  return { view: { id: view.id, members: [...view.members] }, ...(shards !== undefined ? { shards } : {}) };
}

// ---------------------------------------------------------------------------------------------------
// Events on condition changes.

function conditionEvents(previous: DerechoGroupStatus | null, status: DerechoGroupStatus): GroupEvent[] {
  const events: GroupEvent[] = [];
  const before = (type: ConditionType): Condition | undefined => previous?.conditions?.find((c) => c.type === type);
  for (const now of status.conditions ?? []) {
    const was = before(now.type as ConditionType);
    if (was !== undefined && was.status === now.status && was.reason === now.reason) continue;
    const type = now.type as ConditionType;
    if (type === 'Ready' && now.status === 'True') events.push({ type: 'Normal', reason: 'Ready', action: 'Observe', message: now.message });
    else if (type === 'Ready' && was?.status === 'True') events.push({ type: 'Warning', reason: 'NotReady', action: 'Observe', message: now.message });
    else if (type === 'Degraded' && now.status === 'True') events.push({ type: 'Warning', reason: now.reason, action: 'Observe', message: now.message });
    else if (type === 'RestartQuorumPending' && now.status === 'True') events.push({ type: 'Warning', reason: 'RestartQuorumPending', action: 'Observe', message: now.message });
    else if (type === 'Stuck' && now.status === 'True') events.push({ type: 'Warning', reason: 'RestartStuck', action: 'Observe', message: now.message });
    else if (type === 'SpecAccepted' && now.status === 'False') events.push({ type: 'Warning', reason: now.reason, action: 'Refuse', message: now.message });
    else if (type === 'SpecAccepted' && was?.status === 'False') events.push({ type: 'Normal', reason: 'SpecAccepted', action: 'Accept', message: now.message });
  }
  return events;
}

// ---------------------------------------------------------------------------------------------------
// Writes the API server refused.

/**
 * The output amended with what the controller's writes of it met: each refused apply or delete makes
 * Progressing=False (reason WriteRefused) say which object and why, in the API server's words, with one
 * Warning Event (reason WriteRefused) per refused object; events reporting a refused write as done
 * (`requires`) are dropped. Pure: the controller calls it after writing, before the status.
 */
export function withWriteFailures(output: ReconcileOutput, failures: readonly WriteFailure[], previous: DerechoGroupStatus | null, now: string): ReconcileOutput {
  if (failures.length === 0) return output;
  const failed = new Set(failures.map((f) => `${f.kind}/${f.name}`));
  const what = (f: WriteFailure): string =>
    `${f.verb === 'apply' ? 'creating or updating' : 'deleting'} ${f.kind} ${f.name} was refused${f.code !== null ? ` (HTTP ${f.code})` : ''}: ${f.message}`;
  const message = `the API server refused ${failures.length === 1 ? 'a write' : `${failures.length} writes`}; retrying with backoff: ${failures.map(what).join('; ')}`;
  const before = previous?.conditions?.find((c) => c.type === 'Progressing');
  const generation = output.status.observedGeneration ?? 0;
  const progressing: Condition = {
    type: 'Progressing', status: 'False', reason: 'WriteRefused', message: message.slice(0, 32_768), observedGeneration: generation,
    lastTransitionTime: before !== undefined && before.status === 'False' && before.reason === 'WriteRefused' ? before.lastTransitionTime : now,
  };
  const conditions = (output.status.conditions ?? []).map((c) => (c.type === 'Progressing' ? progressing : c));
  const events = output.events.filter((e) => !(e.requires ?? []).some((key) => failed.has(key)));
  for (const f of failures) events.push({ type: 'Warning', reason: 'WriteRefused', action: f.verb === 'apply' ? 'Apply' : 'Delete', message: what(f).slice(0, 1024) });
  return { ...output, status: { ...output.status, conditions }, events };
}

// ---------------------------------------------------------------------------------------------------
// Invalid specs and deletion.

/** The spec cannot be applied at all: nothing is changed; the status says why. */
function refuseAll(ctx: Context, group: DerechoGroupResource, observed: Observed, reports: AgentReports, recorded: { founding: number | null; current: number | null }, reason: 'InvalidSpec' | 'ManifestRejected', problems: string[]): ReconcileOutput {
  const view = currentView(reports, ctx.previous);
  const current = recorded.current ?? 0;
  const ids = [...new Set([...range(1, current), ...observed.pods.keys()])].sort((a, b) => a - b);
  const rows = memberRows(ctx, observed, reports, ids, []);
  const readyCount = rows.filter((row) => row.ready && row.nodeId <= current).length;
  const message = problems.join('; ');
  const restart = restartOf(reports, view);
  const conditions = [
    current > 0 && readyCount === current && view !== null
      ? condition(ctx, 'Ready', 'True', 'AllMembersReady', `all ${current} members are ready in view ${view.id} (the new spec is not applied)`)
      : condition(ctx, 'Ready', 'False', reason, current > 0 ? `${readyCount} of ${current} members ready; the spec is not applied` : 'the group is not created: its spec is invalid'),
    condition(ctx, 'Progressing', 'False', reason, 'nothing is changed until the spec is fixed'),
    condition(ctx, 'Degraded', rows.some((row) => !row.ready && row.nodeId <= current) ? 'True' : 'False', rows.some((row) => !row.ready && row.nodeId <= current) ? 'MembersUnavailable' : 'AsExpected',
      rows.filter((row) => !row.ready && row.nodeId <= current).map((row) => `node ${row.nodeId}: ${row.waiting ?? row.mode}`).join('; ') || 'every member is ready'),
    restart !== null
      ? condition(ctx, 'RestartQuorumPending', 'True', /not met/.test(restart.waitingFor) ? 'QuorumNotMet' : 'Restarting', restartText(restart))
      : condition(ctx, 'RestartQuorumPending', 'False', 'NotRestarting', 'no member is restarting'),
  ];
  conditions.push(
    stuckCondition(ctx, restart, conditions[3]!, rawQuorumTimeoutSeconds(group)),
    condition(ctx, 'SpecAccepted', 'False', reason, message),
  );
  const rawMembersValue = (group.spec as { members?: unknown } | null)?.members;
  const status: DerechoGroupStatus = {
    observedGeneration: ctx.generation,
    phase: 'Invalid',
    conditions,
    readyMembers: `${readyCount}/${typeof rawMembersValue === 'number' ? rawMembersValue : current}`,
    ...(recorded.current !== null ? { currentMembers: recorded.current } : {}),
    ...(recorded.founding !== null ? { foundingMembers: recorded.founding } : {}),
    ...(ctx.previous?.desiredMembers !== undefined ? { desiredMembers: ctx.previous.desiredMembers } : {}),
    selector: selectorString(ctx.name),
    ...statusView(view, ctx.previous),
    members: rows,
    ...(restart !== null ? { restart } : {}),
  };
  return {
    objects: [],
    deletes: [],
    status,
    events: conditionEvents(ctx.previous, status),
    finalizer: { name: FINALIZER, present: true },
    requeueAfterSeconds: ctx.options.resyncSeconds,
  };
}

/** The group is being deleted: stop the members, delete the volumes if asked, then drop the finalizer. */
function finalize(ctx: Context, group: DerechoGroupResource, observed: Observed, reports: AgentReports): ReconcileOutput {
  const storage = (group.spec as { storage?: { retention?: unknown } } | null)?.storage;
  const deleteVolumes = storage?.retention === 'delete';
  const deletes: ObjectRef[] = [];
  for (const existing of observed.pods.values()) {
    if (!podIsTerminating(existing)) deletes.push(refOf(existing, 'the group is being deleted'));
  }
  if (deleteVolumes) {
    for (const claim of observed.pvcs.values()) {
      if (claim.metadata.deletionTimestamp === undefined) deletes.push(refOf(claim, 'the group is being deleted with storage.retention "delete"'));
    }
  }
  const waitingFor = [...(observed.pods.size > 0 ? [`${observed.pods.size} pod(s)`] : []), ...(deleteVolumes && observed.pvcs.size > 0 ? [`${observed.pvcs.size} volume(s)`] : [])];
  const present = waitingFor.length > 0 && (group.metadata.finalizers ?? []).includes(FINALIZER);
  const message = waitingFor.length > 0 ? `deleting: waiting for ${waitingFor.join(' and ')} to go` : `deleted; volumes ${deleteVolumes ? 'deleted' : 'kept (storage.retention "retain")'}`;
  const ids = [...observed.pods.keys()].sort((a, b) => a - b);
  const status: DerechoGroupStatus = {
    ...(ctx.previous ?? {}),
    observedGeneration: ctx.generation,
    phase: 'Deleting',
    conditions: [
      condition(ctx, 'Ready', 'False', 'Deleting', message),
      condition(ctx, 'Progressing', 'True', 'Deleting', message),
      ...(ctx.previous?.conditions ?? []).filter((c) => c.type !== 'Ready' && c.type !== 'Progressing'),
    ],
    members: memberRows(ctx, observed, reports, ids, []),
  };
  const events: GroupEvent[] = ctx.previous?.phase === 'Deleting' ? [] : [{ type: 'Normal', reason: 'Deleting', action: 'Delete', message: `stopping ${observed.pods.size} member pod(s); volumes ${deleteVolumes ? 'are deleted' : 'are kept'}` }];
  return { objects: [], deletes, status, events, finalizer: { name: FINALIZER, present }, requeueAfterSeconds: ctx.options.busyResyncSeconds };
}

/** The URL of a member agent's /status (through the headless service's per-pod DNS name). */
export function agentStatusUrl(group: string, namespace: string, nodeId: NodeId, options: Partial<OperatorOptions> = {}): string {
  return `http://${peerHost(group, namespace, nodeId)}:${options.httpPort ?? DEFAULT_OPTIONS.httpPort}/status`;
}
