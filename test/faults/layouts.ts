// The group layouts of the fault-injection matrix: DerechoGroup manifests the agents read.

import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { REPO_ROOT } from '../multiprocess/harness.ts';

export const LAYOUTS = ['overlap', 'kv3', 'five'] as const;
export type LayoutName = (typeof LAYOUTS)[number];

export interface Layout {
  name: LayoutName;
  description: string;
  members: number;
  /** The kv subgroup the clients use, and its shard count. */
  kv: { subgroup: string; shards: number };
  /** A log subgroup (one shard) the clients append to, if the layout has one. */
  log: { subgroup: string } | null;
  /** The manifest (a DerechoGroup object) for a group named `name`. */
  manifest(name: string): Record<string, unknown>;
}

/**
 * Timing of every layout: the example's failure detector (suspectMs 1000, the default) with shorter ticks.
 * A pause (1.5-4 s) is longer than suspectMs, so a paused member is removed.
 */
export const FAULT_TIMING = { tickMs: 20, heartbeatMs: 100, suspectMs: 1000 };

function baseSpec(members: number, subgroups: unknown[]): Record<string, unknown> {
  return {
    members,
    subgroups,
    tls: { mode: 'hmac' },
    restart: { graceSeconds: 0.5, quorumTimeoutSeconds: 300 },
    timing: FAULT_TIMING,
    fsync: 'fsync',
  };
}

function manifestOf(name: string, spec: Record<string, unknown>): Record<string, unknown> {
  return { apiVersion: 'derecho.dev/v1alpha1', kind: 'DerechoGroup', metadata: { name }, spec };
}

export function layout(name: LayoutName): Layout {
  switch (name) {
    case 'overlap':
      return {
        name,
        description: 'examples/kv-overlap.yaml: 3 members; kv 2 shards [1,2] and [3] (node 3 alone in kv/1); events log on [1,2,3]',
        members: 3,
        kv: { subgroup: 'kv', shards: 2 },
        log: { subgroup: 'events' },
        manifest(groupName) {
          // The example's own manifest, with the test's timing and restart grace.
          const doc = YAML.parse(fs.readFileSync(path.join(REPO_ROOT, 'examples', 'kv-overlap.yaml'), 'utf8')) as { metadata: Record<string, unknown>; spec: Record<string, unknown> };
          doc.metadata = { ...doc.metadata, name: groupName };
          doc.spec = { ...doc.spec, timing: FAULT_TIMING, restart: { graceSeconds: 0.5, quorumTimeoutSeconds: 300 } };
          return doc as unknown as Record<string, unknown>;
        },
      };
    case 'kv3':
      return {
        name,
        description: '3 members; kv 1 shard on [1,2,3]; events log on [1,2,3] (examples/kv-group.yaml with minNodesPerShard 1 for kv)',
        members: 3,
        kv: { subgroup: 'kv', shards: 1 },
        log: { subgroup: 'events' },
        manifest(groupName) {
          return manifestOf(groupName, baseSpec(3, [
            { name: 'kv', type: 'kv', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 3, reservedNodeIds: [[1, 2, 3]] },
            { name: 'events', type: 'log', shards: 1, minNodesPerShard: 2, maxNodesPerShard: 3, reservedNodeIds: [[1, 2, 3]] },
          ]));
        },
      };
    case 'five':
      return {
        name,
        description: '5 members; kv 2 shards [1,2,3] and [4,5]; events log on [1..5]',
        members: 5,
        kv: { subgroup: 'kv', shards: 2 },
        log: { subgroup: 'events' },
        manifest(groupName) {
          return manifestOf(groupName, baseSpec(5, [
            { name: 'kv', type: 'kv', shards: 2, minNodesPerShard: 1, maxNodesPerShard: 3, reservedNodeIds: [[1, 2, 3], [4, 5]] },
            { name: 'events', type: 'log', shards: 1, minNodesPerShard: 2, maxNodesPerShard: 5, reservedNodeIds: [[1, 2, 3, 4, 5]] },
          ]));
        },
      };
  }
}
