// Test helpers for reconcile(): the example group, agent reports, and a tiny in-memory cluster that
// applies reconcile's output the way the controller will (apply, delete) and plays kubelet and agents.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { GroupSpec, toGroupPolicy } from '../../node-agent/src/config/schema.ts';
import { allocate } from '../../node-agent/src/core/allocation.ts';
import type { NodeId } from '../../node-agent/src/core/types.ts';
import { x509Issuer } from './certs.ts';
import { applyDefaults } from './openapi.ts';
import { derechoGroupSchema } from './crd.ts';
import { LABEL } from './kube.ts';
import type { KubeObject, ObservedPod } from './kube.ts';
import { reconcile } from './reconcile.ts';
import type { AgentReports, DerechoGroupResource, ObservedObjects, ReconcileInput, ReconcileOutput } from './reconcile.ts';
import type { AgentReport } from './status.ts';

const exampleText = readFileSync(fileURLToPath(new URL('../../examples/kv-overlap.yaml', import.meta.url)), 'utf8');
const specSchema = derechoGroupSchema().properties!.spec!;

/** A 32-byte key, base64 (what the controller would draw from crypto.randomBytes). */
export const HMAC_KEY = Buffer.alloc(32, 7).toString('base64');
/** The client API token the tests' reconciles mint. */
export const CLIENT_TOKEN = 'test-client-token-0123456789abcdefghijklmnop';
export const NOW = '2026-01-01T00:00:00.000Z';

/**
 * examples/kv-overlap.yaml named kv-demo (kv shards [1, 2] and [3], events on all: node 3 alone holds kv/1),
 * as the API server stores it (defaults applied), with `spec` patched.
 */
export function kvDemo(specPatch: Record<string, unknown> = {}, generation = 1): DerechoGroupResource {
  const manifest = YAML.parse(exampleText) as { apiVersion: string; kind: string; metadata: { name: string }; spec: Record<string, unknown> };
  return {
    apiVersion: manifest.apiVersion,
    kind: manifest.kind,
    metadata: { name: 'kv-demo', namespace: 'default', uid: 'uid-kv-demo', generation, creationTimestamp: NOW, finalizers: ['derecho.dev/cleanup'] },
    spec: applyDefaults(specSchema, { ...manifest.spec, ...specPatch }),
  };
}

/** An agent's /status report. */
export function report(nodeId: NodeId, fields: Partial<AgentReport> = {}): AgentReport {
  return {
    nodeId,
    mode: 'active',
    viewId: 0,
    members: [1, 2, 3],
    leader: 1,
    wedged: false,
    ready: true,
    waiting: null,
    restart: null,
    exited: null,
    layout: [],
    shards: [],
    ...fields,
  };
}

/** A restarting agent's report with the restart planner's message. */
export function restartingReport(nodeId: NodeId, message: string): AgentReport {
  return report(nodeId, { mode: 'restarting', viewId: -1, members: [], leader: null, ready: false, waiting: { kind: 'restartQuorum', message }, restart: { waitingFor: message } });
}

type AgentBehaviour = 'active' | 'down' | ((nodeId: NodeId, cluster: Cluster) => AgentReport | null);

/**
 * An in-memory namespace: objects by kind/name, a kubelet that runs every pod (Running, Ready), and agents
 * that form one view of every running pod (the view id grows when the set changes), unless told otherwise.
 */
export class Cluster {
  readonly objects = new Map<string, KubeObject>();
  group: DerechoGroupResource;
  view = { id: -1, members: [] as NodeId[] };
  agents: AgentBehaviour = 'active';
  /** Pods the kubelet leaves Pending. */
  readonly pending = new Set<string>();
  private uids = 0;
  private clock = Date.parse(NOW);
  readonly outputs: ReconcileOutput[] = [];

  constructor(group: DerechoGroupResource) {
    this.group = group;
  }

  now(): string {
    return new Date(this.clock).toISOString();
  }

  observed(): ObservedObjects {
    const of = <T extends KubeObject>(kind: string): T[] => [...this.objects.values()].filter((object) => object.kind === kind) as T[];
    return {
      pods: of('Pod'), pvcs: of('PersistentVolumeClaim'), services: of('Service'), configMaps: of('ConfigMap'), secrets: of('Secret'),
      podDisruptionBudgets: of('PodDisruptionBudget'), networkPolicies: of('NetworkPolicy'),
    };
  }

  pods(): ObservedPod[] {
    return this.observed().pods!;
  }

  podIds(): NodeId[] {
    return this.pods().map((pod) => Number(pod.metadata.labels![LABEL.nodeId])).sort((a, b) => a - b);
  }

  /** Reports of the agents: one view of exactly the running pods (or what `agents` says). */
  reports(): AgentReports {
    const running = this.pods().filter((pod) => pod.status?.phase === 'Running' && pod.metadata.deletionTimestamp === undefined).map((pod) => Number(pod.metadata.labels![LABEL.nodeId])).sort((a, b) => a - b);
    const out: Record<number, AgentReport | null> = {};
    if (this.agents !== 'active' || running.length === 0) {
      for (const id of this.podIds()) out[id] = typeof this.agents === 'function' ? this.agents(id, this) : null;
      return out;
    }
    if (running.join(',') !== this.view.members.join(',')) this.view = { id: this.view.id + 1, members: running };
    const spec = GroupSpec.safeParse(this.group.spec);
    const allocation = spec.success ? allocate(toGroupPolicy(spec.data), null, running) : null;
    const layout = allocation?.adequate ? allocation.layout.shards.map((shard) => ({ shardId: shard.shardId, subgroup: shard.subgroup, shardIndex: shard.shardIndex, members: shard.members })) : [];
    for (const id of this.podIds()) {
      if (!running.includes(id)) {
        out[id] = null;
        continue;
      }
      const shards = layout.filter((shard) => shard.members.includes(id)).map((shard) => ({
        ...shard, delivered: { viewId: this.view.id, seq: 7 }, persistenceFrontier: { viewId: this.view.id, seq: 6 }, stateReady: true,
      }));
      out[id] = report(id, { viewId: this.view.id, members: running, leader: running[0]!, layout, shards });
    }
    return out;
  }

  input(extra: Partial<ReconcileInput> = {}): ReconcileInput {
    return { group: this.group, observed: this.observed(), reports: this.reports(), now: this.now(), random: { hmacKey: HMAC_KEY, clientToken: CLIENT_TOKEN }, issuer: x509Issuer, ...extra };
  }

  /** One reconcile, applied: objects created or updated, deletions done, status written, pods run. */
  step(extra: Partial<ReconcileInput> = {}): ReconcileOutput {
    const output = reconcile(this.input(extra));
    this.outputs.push(output);
    this.apply(output);
    this.clock += 1000;
    return output;
  }

  /** Moves the clock on. */
  advance(seconds: number): void {
    this.clock += seconds * 1000;
  }

  apply(output: ReconcileOutput): void {
    for (const object of output.objects) {
      const key = `${object.kind}/${object.metadata.name}`;
      const existing = this.objects.get(key);
      const copy = structuredClone(object);
      copy.metadata.uid = existing?.metadata.uid ?? `uid-${++this.uids}`;
      if (existing?.status !== undefined) copy.status = existing.status;
      this.objects.set(key, copy);
    }
    for (const ref of output.deletes) {
      const key = `${ref.kind}/${ref.name}`;
      if (ref.uid === undefined || this.objects.get(key)?.metadata.uid === ref.uid) this.objects.delete(key);
    }
    this.group = { ...this.group, status: output.status };
    this.kubelet();
  }

  /** Runs every pod that is not held Pending. */
  kubelet(): void {
    for (const pod of this.pods()) {
      if (this.pending.has(pod.metadata.name)) continue;
      pod.status = { phase: 'Running', podIP: '10.0.0.1', conditions: [{ type: 'Ready', status: 'True' }] };
    }
  }

  deletePods(ids: NodeId[]): void {
    for (const id of ids) this.objects.delete(`Pod/${this.group.metadata.name}-${id}`);
  }

  setSpec(patch: Record<string, unknown>): void {
    const spec = applyDefaults(specSchema, { ...(this.group.spec as Record<string, unknown>), ...patch });
    this.group = { ...this.group, spec, metadata: { ...this.group.metadata, generation: (this.group.metadata.generation ?? 0) + 1 } };
  }
}
