// The DerechoGroup status (the CRD's status schema is generated from these zod schemas, like the spec's)
// and the agent's /status report as the operator reads it.

import { z } from 'zod';
import { MEMBERS_MAX } from '../../node-agent/src/config/schema.ts';

const INT32_MAX = 2 ** 31 - 1;
/** Kubernetes int64 fields are safe JS integers in practice (generations, view ids). */
const INT64_MAX = Number.MAX_SAFE_INTEGER;

const count = (max: number, description: string) => z.int().min(0).max(max).describe(description);
const nodeIds = (description: string) => z.array(z.int().min(1).max(INT32_MAX)).max(1024).describe(description);

// ---------------------------------------------------------------------------------------------------
// Conditions (metav1.Condition).

export const CONDITION_TYPES = ['Ready', 'Progressing', 'Degraded', 'RestartQuorumPending', 'Stuck', 'SpecAccepted'] as const;
export type ConditionType = (typeof CONDITION_TYPES)[number];

export const Condition = z
  .strictObject({
    type: z.string().max(316).regex(/^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/)
      .describe(`Type of the condition: ${CONDITION_TYPES.join(', ')}.`),
    status: z.enum(['True', 'False', 'Unknown']).describe('Status of the condition: "True", "False" or "Unknown".'),
    reason: z.string().min(1).max(1024).regex(/^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$/)
      .describe('Machine-readable CamelCase reason for the last transition, e.g. "AllMembersReady".'),
    message: z.string().max(32_768).describe('Human-readable details: which members, shards or fields, and why.'),
    observedGeneration: count(INT64_MAX, 'The metadata.generation of the DerechoGroup this condition was computed from.'),
    lastTransitionTime: z.string().meta({ format: 'date-time', description: 'When the status of the condition last changed (RFC 3339).' }),
  })
  .describe('A condition in the metav1.Condition form.');
export type Condition = z.output<typeof Condition>;

// ---------------------------------------------------------------------------------------------------
// The rest of the status.

export const PHASES = ['Creating', 'Running', 'Scaling', 'Updating', 'Degraded', 'Restarting', 'Unavailable', 'Invalid', 'Deleting'] as const;
export type Phase = (typeof PHASES)[number];

export const MEMBER_MODES = ['active', 'joining', 'restarting', 'exited', 'unreachable', 'crashLooping', 'starting', 'absent'] as const;

const frontiers = (what: string) =>
  z.record(z.string().max(128), z.string().max(64))
    .describe(`${what} per shard this member serves: "<subgroup>/<shard>" -> "<viewId>.<seq>" ("-" when nothing yet).`);

export const MemberStatus = z
  .strictObject({
    nodeId: z.int().min(1).max(INT32_MAX).describe('Node id of the member (1..members).'),
    pod: z.string().max(253).describe('Name of the member\'s pod.'),
    ready: z.boolean().describe('The agent reports ready: in a view, not wedged, holding the state of every shard it serves.'),
    mode: z.string().max(32).describe(`What the member is doing: ${MEMBER_MODES.join(', ')} ("unreachable": its pod exists but /status does not answer; "crashLooping": its agent keeps failing, "waiting" says why; "absent": no pod).`),
    viewId: z.int().min(-1).max(INT64_MAX).describe('View the member is in (-1: none).'),
    delivered: frontiers('Delivered frontier'),
    persisted: frontiers('Persisted frontier (durable on every member of the shard)'),
    waiting: z.string().max(4096).optional().describe('Why the member is not ready, when it is not.'),
    outdated: z.boolean().optional().describe('The pod runs an older spec and waits for its turn to be restarted.'),
  })
  .describe('One member as its agent reports it.');
export type MemberStatus = z.output<typeof MemberStatus>;

export const ShardStatus = z
  .strictObject({
    subgroup: z.string().max(63).describe('Subgroup name.'),
    shard: z.int().min(0).max(4096).describe('Shard index inside the subgroup.'),
    members: nodeIds('Node ids serving the shard, in rank order.'),
  })
  .describe('One shard of the current view\'s layout.');
export type ShardStatus = z.output<typeof ShardStatus>;

export const MissingShard = z
  .strictObject({
    subgroup: z.string().max(63).describe('Subgroup name.'),
    shard: z.int().min(0).max(4096).describe('Shard index inside the subgroup.'),
    formerMembers: nodeIds('Members of the shard in the last view; one of them must come back.'),
  })
  .describe('A shard of the last view that no returning member can restart.');
export type MissingShard = z.output<typeof MissingShard>;

export const RestartStatus = z
  .strictObject({
    waitingFor: z.string().max(4096).describe('What the restarting members wait for, as they report it.'),
    missingMembers: nodeIds('Members of the last view the restart quorum still waits for.'),
    missingShards: z.array(MissingShard).max(4096).describe('Shards of the last view with no returning member that holds their state.'),
    reporting: nodeIds('Members reporting that they are restarting.'),
  })
  .describe('Restart after a total failure: what the restart quorum still needs.');
export type RestartStatus = z.output<typeof RestartStatus>;

export const DerechoGroupStatus = z
  .strictObject({
    observedGeneration: count(INT64_MAX, 'The metadata.generation this status was computed from.').optional(),
    phase: z.enum(PHASES).optional().describe(`Summary of the group's state: ${PHASES.join(', ')}.`),
    conditions: z.array(Condition).max(16).meta({
      description: 'Ready, Progressing, Degraded, RestartQuorumPending, Stuck and SpecAccepted, each in metav1.Condition form.',
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['type'],
    }).optional(),
    readyMembers: z.string().max(16).optional().describe('Ready members out of the members the group is to have (spec.members, or the current count while a change of it is refused), e.g. "2/3".'),
    desiredMembers: count(MEMBERS_MAX, 'spec.members as last observed.').optional(),
    currentMembers: count(MEMBERS_MAX, 'Members rolled out so far: node ids 1..currentMembers have pods (scaling moves it one member at a time).').optional(),
    foundingMembers: count(MEMBERS_MAX, 'Member count the group was founded with; the rendered manifest keeps it so members added later join instead of founding.').optional(),
    selector: z.string().max(1024).optional().describe('Label selector of the member pods (for the scale subresource).'),
    view: z
      .strictObject({
        id: z.int().min(-1).max(INT64_MAX).describe('The view\'s id (views are numbered from 0).'),
        members: nodeIds('Members of the view in rank order (the first is the leader).'),
      })
      .optional()
      .describe('The newest view an active member reports (kept from the last status while no member is active).'),
    shards: z.array(ShardStatus).max(4096).optional().describe('Shard assignment of that view.'),
    members: z.array(MemberStatus).max(1024).optional().describe('Every member, with its agent\'s report.'),
    restart: RestartStatus.optional(),
  })
  .describe('Observed state of the group, from the member pods and their agents\' /status reports.');
export type DerechoGroupStatus = z.output<typeof DerechoGroupStatus>;

// ---------------------------------------------------------------------------------------------------
// The agent's /status JSON (node-agent/src/agent/agent.ts statusJson), the fields the operator uses.

const VersionJson = z.object({ viewId: z.number(), seq: z.number() });

export const AgentReport = z.looseObject({
  nodeId: z.number(),
  group: z.string().optional(),
  mode: z.string(),
  viewId: z.number(),
  members: z.array(z.number()),
  leader: z.number().nullable().optional(),
  wedged: z.boolean(),
  ready: z.boolean(),
  waiting: z.object({ kind: z.string(), message: z.string() }).nullable().optional(),
  restart: z.object({ waitingFor: z.string() }).nullable().optional(),
  exited: z.string().nullable().optional(),
  layout: z.array(z.looseObject({ shardId: z.number(), subgroup: z.string(), shardIndex: z.number(), members: z.array(z.number()) })).default([]),
  shards: z.array(z.looseObject({
    shardId: z.number(),
    subgroup: z.string(),
    shardIndex: z.number(),
    members: z.array(z.number()),
    delivered: VersionJson,
    persistenceFrontier: VersionJson,
    stateReady: z.boolean().optional(),
  })).default([]),
  transport: z.looseObject({
    /** The newest connection refused at authentication (wrong HMAC key, a certificate of another CA...). */
    lastHandshakeFailure: z.object({ peer: z.number().nullable(), remote: z.string(), message: z.string(), secondsAgo: z.number() }).nullable().optional(),
  }).optional(),
});
export type AgentReport = z.output<typeof AgentReport>;
export type AgentReportInput = z.input<typeof AgentReport>;

/** An agent's /status body as a report, or null when it is not one (treat the member as unreachable). */
export function parseAgentReport(json: unknown): AgentReport | null {
  const result = AgentReport.safeParse(json);
  return result.success ? result.data : null;
}
