// The one schema source: the `DerechoGroup` custom resource, the agent's configuration and the wire-level
// limits. The CRD's OpenAPI schema is generated from these (z.toJSONSchema, io "input"), so:
//  - every field has a description and its default is explicit (`.default(...)`);
//  - only features with an OpenAPI v3 structural equivalent carry meaning for the API server (types,
//    enums, patterns, min/max, required, defaults). Cross-field rules are `.superRefine`s: they run in
//    the agent and the operator, and are invisible to the generated schema;
//  - no unions, transforms or preprocessing in the resource schema.
// Every error message names the offending value (see errors.ts for the conventions).

import { z } from 'zod';
import { allocate, validatePolicy } from '../core/allocation.ts';
import { DEFAULT_TIMING } from '../core/types.ts';
import type { GroupPolicy, NodeId, ReplicaConfig, SubgroupPolicy } from '../core/types.ts';
import { expecting, renderValue } from './errors.ts';

export const API_VERSION = 'derecho.dev/v1alpha1';
export const KIND = 'DerechoGroup';
/**
 * The agent image an operator of this version runs when a group does not pin one (spec.image omitted): the
 * same version as the operator (package.json's version; a unit test keeps them equal), so that upgrading
 * the operator upgrades the agents. The operator's --agent-image flag (the chart's agentImage) overrides it.
 */
export const DEFAULT_IMAGE = 'ghcr.io/derecho-ts/node-agent:0.1.0';
/** Hard ceiling on a group's members (node ids are 1..members). */
export const MEMBERS_MAX = 64;
/**
 * The tick length DEFAULT_TIMING's tick counts were chosen for. toReplicaConfig keeps the wall-clock
 * length of the timers the spec does not expose (retransmit, retry, wedged exit) when tickMs differs.
 */
export const REFERENCE_TICK_MS = 50;

const KiB = 1024;
export const MiB = 1024 * KiB;

// ---------------------------------------------------------------------------------------------------
// Field builders: one error function per field, so every message reads "<value> is not <noun>".

function integer(min: number, max: number, noun: string) {
  const error = expecting(noun);
  return z.int({ error }).min(min, { error }).max(max, { error });
}

function decimal(min: number, max: number, noun: string) {
  const error = expecting(noun);
  return z.number({ error }).min(min, { error }).max(max, { error });
}

function text(pattern: RegExp, noun: string, maxLength = 253) {
  const error = expecting(noun);
  // x-noun: the CRD generator words the API server's refusal with it ("must be <noun>"), not the regex.
  return z.string({ error }).max(maxLength, { error }).regex(pattern, { error }).meta({ 'x-noun': noun });
}

function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  return z.enum(values, { error: expecting(`one of ${values.map((value) => JSON.stringify(value)).join(', ')}`) });
}

function flag(noun = 'true or false') {
  return z.boolean({ error: expecting(noun) });
}

function list<T extends z.ZodType>(element: T, noun: string, minItems = 0, maxItems = 1024) {
  const error = expecting(noun);
  return z.array(element, { error }).min(minItems, { error }).max(maxItems, { error });
}

function object<T extends z.core.$ZodLooseShape>(shape: T, noun: string) {
  return z.strictObject(shape, { error: expecting(noun) });
}

// ---------------------------------------------------------------------------------------------------
// Quantities (Kubernetes resource.Quantity, the subset people write).

const QUANTITY_SUFFIXES: Record<string, number> = {
  '': 1, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18,
  Ki: KiB, Mi: MiB, Gi: 1024 ** 3, Ti: 1024 ** 4, Pi: 1024 ** 5, Ei: 1024 ** 6,
};
const BYTES_PATTERN = /^(0|[1-9][0-9]*)(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$/;
const CPU_PATTERN = /^((0|[1-9][0-9]*)(\.[0-9]+)?|[1-9][0-9]*m)$/;

/**
 * The value of a Kubernetes quantity string in base units (bytes, or cores for "500m"), or NaN if it is
 * not one of the forms this schema accepts: `<decimal>[Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E]` or `<integer>m`.
 */
export function parseQuantity(quantity: string): number {
  const match = /^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$/.exec(quantity);
  if (!match) return Number.NaN;
  return Number(match[1]) * QUANTITY_SUFFIXES[match[2] ?? '']!;
}

const STORAGE_MIN_BYTES = MiB;

const storageSize = () => {
  const noun = 'a storage size of at least 1Mi (a quantity such as 512Mi, 1Gi or 10G)';
  // NaN (not a quantity at all) is reported by the pattern already.
  return text(BYTES_PATTERN, noun, 64).refine((quantity) => !(parseQuantity(quantity) < STORAGE_MIN_BYTES), { error: expecting(noun) });
};

const memoryQuantity = () => {
  const noun = 'a memory quantity (a string such as "256Mi" or "1Gi"; quote it in YAML)';
  return text(BYTES_PATTERN, noun, 64).refine((quantity) => !(parseQuantity(quantity) <= 0), { error: expecting(noun) });
};

const cpuQuantity = () => {
  const noun = 'a CPU quantity (a string such as "500m", "0.5" or "2"; quote numbers in YAML)';
  return text(CPU_PATTERN, noun, 64).refine((quantity) => !(parseQuantity(quantity) <= 0), { error: expecting(noun) });
};

// ---------------------------------------------------------------------------------------------------
// Wire limits.

export const WIRE_LIMITS_DEFAULTS = Object.freeze({
  payloadBytesMax: MiB,
  frameBytesMax: MiB + 64 * KiB,
  membersMax: MEMBERS_MAX,
  shardsMax: 256,
});

/** Room a frame needs beyond its payload (message header). */
export const FRAME_HEADER_BYTES_MIN = KiB;

/**
 * Bounds the TCP codec enforces on every frame it reads or writes. They are group-wide (every member must
 * use the same values), so they live in the group spec (`spec.wireLimits`).
 */
export const WireLimits = object(
  {
    payloadBytesMax: integer(1, 64 * MiB, 'a byte count from 1 to 67108864 (64 MiB)')
      .default(WIRE_LIMITS_DEFAULTS.payloadBytesMax)
      .describe('Largest application payload of one multicast message, in bytes. Larger sends are refused (tooLarge).'),
    frameBytesMax: integer(FRAME_HEADER_BYTES_MIN + 1, 65 * MiB, 'a byte count from 1025 to 68157440 (65 MiB)')
      .default(WIRE_LIMITS_DEFAULTS.frameBytesMax)
      .describe(`Largest frame on the wire, in bytes (header included); a peer sending a larger frame is disconnected. At least payloadBytesMax + ${FRAME_HEADER_BYTES_MIN}.`),
    membersMax: integer(1, 1024, 'a member count from 1 to 1024')
      .default(WIRE_LIMITS_DEFAULTS.membersMax)
      .describe('Largest member list a decoded message may carry (views, state-table rows).'),
    shardsMax: integer(1, 4096, 'a shard count from 1 to 4096')
      .default(WIRE_LIMITS_DEFAULTS.shardsMax)
      .describe('Largest shard count a decoded message may carry (layouts, state-table rows); also bounds the total shards of the group.'),
  },
  'an object with payloadBytesMax, frameBytesMax, membersMax and shardsMax',
).superRefine((limits, ctx) => {
  if (limits.frameBytesMax < limits.payloadBytesMax + FRAME_HEADER_BYTES_MIN) {
    ctx.addIssue({
      code: 'custom',
      path: ['frameBytesMax'],
      message: `${limits.frameBytesMax} leaves no room for the frame header: it must be at least payloadBytesMax + ${FRAME_HEADER_BYTES_MIN} (${limits.payloadBytesMax + FRAME_HEADER_BYTES_MIN})`,
    });
  }
});
export type WireLimits = z.output<typeof WireLimits>;

// ---------------------------------------------------------------------------------------------------
// The DerechoGroup resource.

const DNS_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const SUBGROUP_TYPE = /^(kv|log|custom:[a-z][-a-z0-9_.]*)$/;

const memberNodeId = () => integer(1, MEMBERS_MAX, `a node id from 1 to ${MEMBERS_MAX}`);

export const SubgroupSpec = object(
  {
    name: text(DNS_LABEL, 'a subgroup name (lowercase letters, digits and "-", starting with a letter, at most 63 characters)', 63)
      .describe('Unique name of the subgroup, e.g. "kv". Clients address the subgroup by it.'),
    type: text(SUBGROUP_TYPE, 'a subgroup type: "kv", "log" or "custom:<name>"', 128)
      .describe('Replicated object type: "kv" (key-value store), "log" (append-only log) or "custom:<name>" (a type the agent registers under that name).'),
    shards: integer(1, MEMBERS_MAX, `a shard count from 1 to ${MEMBERS_MAX}`)
      .default(1)
      .describe('Number of shards; every shard holds a disjoint part of the subgroup\'s state and orders its own updates.'),
    minNodesPerShard: integer(1, MEMBERS_MAX, `a node count from 1 to ${MEMBERS_MAX}`)
      .describe('Fewest members a shard needs; a view in which some shard has fewer is inadequate and the group waits for members.'),
    maxNodesPerShard: integer(1, MEMBERS_MAX, `a node count from 1 to ${MEMBERS_MAX}`)
      .describe('Most members a shard gets; members beyond every shard\'s maximum stay idle for this subgroup. At least minNodesPerShard.'),
    deliveryMode: oneOf(['ordered', 'raw'])
      .default('ordered')
      .describe('"ordered": totally ordered, virtually synchronous delivery; "raw": unordered best-effort delivery, never persisted.'),
    persistent: flag()
      .default(true)
      .describe('Write ordered updates to a versioned log on the member\'s volume so they survive a total failure. Must be false when deliveryMode is "raw".'),
    reservedNodeIds: list(list(memberNodeId(), `a list of node ids from 1 to ${MEMBERS_MAX}`, 0, MEMBERS_MAX), 'a list of node-id lists, one per shard', 0, MEMBERS_MAX)
      .optional()
      .describe('Optional, per shard: node ids always placed in that shard when they are members, even if they serve other subgroups (this is how subgroups overlap). Reserved nodes never serve unreserved shards. Entry i is shard i; a node may be reserved in only one shard of a subgroup.'),
    senderNodeIds: list(memberNodeId(), `a non-empty list of node ids from 1 to ${MEMBERS_MAX}`, 1, MEMBERS_MAX)
      .optional()
      .describe('Optional: only these nodes send in this subgroup\'s shards. Omitted: every member of a shard sends.'),
  },
  'a subgroup (an object with name, type, shards, minNodesPerShard, maxNodesPerShard, ...)',
)
  .superRefine((subgroup, ctx) => {
    if (subgroup.minNodesPerShard > subgroup.maxNodesPerShard) {
      ctx.addIssue({ code: 'custom', path: ['minNodesPerShard'], message: `${subgroup.minNodesPerShard} is greater than maxNodesPerShard ${subgroup.maxNodesPerShard}` });
    }
    if (subgroup.deliveryMode === 'raw' && subgroup.persistent) {
      ctx.addIssue({ code: 'custom', path: ['persistent'], message: 'true is not allowed with deliveryMode "raw" (raw messages are never persisted); set persistent: false (it defaults to true)' });
    }
    const reserved = subgroup.reservedNodeIds;
    if (reserved !== undefined) {
      if (reserved.length > subgroup.shards) {
        ctx.addIssue({ code: 'custom', path: ['reservedNodeIds'], message: `${renderValue(reserved)} has ${reserved.length} entries but shards is ${subgroup.shards} (one list per shard)` });
      }
      const shardOfNode = new Map<NodeId, number>();
      for (const [shardIndex, nodeIds] of reserved.entries()) {
        if (nodeIds.length > subgroup.maxNodesPerShard) {
          ctx.addIssue({ code: 'custom', path: ['reservedNodeIds', shardIndex], message: `${renderValue(nodeIds)} reserves ${nodeIds.length} nodes but maxNodesPerShard is ${subgroup.maxNodesPerShard}` });
        }
        for (const [position, nodeId] of nodeIds.entries()) {
          const earlier = shardOfNode.get(nodeId);
          if (earlier === shardIndex) {
            ctx.addIssue({ code: 'custom', path: ['reservedNodeIds', shardIndex, position], message: `${nodeId} is listed twice in reservedNodeIds[${shardIndex}]` });
          } else if (earlier !== undefined) {
            ctx.addIssue({ code: 'custom', path: ['reservedNodeIds', shardIndex, position], message: `${nodeId} is already reserved in shard ${earlier} (reservedNodeIds[${earlier}]); a node can be reserved in only one shard of a subgroup` });
          } else {
            shardOfNode.set(nodeId, shardIndex);
          }
        }
      }
    }
    const senders = subgroup.senderNodeIds ?? [];
    for (const [position, nodeId] of senders.entries()) {
      if (senders.indexOf(nodeId) !== position) {
        ctx.addIssue({ code: 'custom', path: ['senderNodeIds', position], message: `${nodeId} is listed twice in senderNodeIds` });
      }
    }
  })
  .describe('One subgroup: a replicated object type, split into shards of members.');
export type SubgroupSpec = z.output<typeof SubgroupSpec>;

const ResourceList = object(
  {
    cpu: cpuQuantity().optional().describe('CPU, e.g. "500m" (half a core) or "2". Omitted: no value.'),
    memory: memoryQuantity().optional().describe('Memory, e.g. "256Mi" or "1Gi". Omitted: no value.'),
  },
  'an object with cpu and/or memory',
);

export const ResourcesSpec = object(
  {
    requests: ResourceList.optional().describe('Resources the scheduler reserves for each member pod. Omitted: the cluster\'s defaults.'),
    limits: ResourceList.optional().describe('Most resources a member pod may use. Omitted: the cluster\'s defaults.'),
  },
  'an object with requests and/or limits',
).superRefine((resources, ctx) => {
  for (const resource of ['cpu', 'memory'] as const) {
    const request = resources.requests?.[resource];
    const limit = resources.limits?.[resource];
    if (request === undefined || limit === undefined) continue;
    if (parseQuantity(request) > parseQuantity(limit)) {
      ctx.addIssue({ code: 'custom', path: ['requests', resource], message: `${renderValue(request)} is greater than limits.${resource} ${renderValue(limit)}` });
    }
  }
});

export const StorageSpec = object(
  {
    size: storageSize().default('1Gi').describe('Size of each member\'s volume for logs and views, as a Kubernetes quantity such as "1Gi".'),
    storageClassName: text(DNS_SUBDOMAIN, 'a storage class name (lowercase letters, digits, "-" and ".")')
      .optional()
      .describe('StorageClass of the members\' volumes. Omitted: the cluster\'s default class.'),
    retention: oneOf(['retain', 'delete'])
      .default('retain')
      .describe('What happens to the volumes when the DerechoGroup is deleted: "retain" keeps them (the data survives), "delete" removes them.'),
  },
  'an object with size, storageClassName and retention',
);

export const CertManagerSpec = object(
  {
    issuerRef: object(
      {
        name: text(DNS_SUBDOMAIN, 'an Issuer name (lowercase letters, digits, "-" and ".")').describe('The cert-manager Issuer or ClusterIssuer that signs the members\' certificates (all of them: the members trust its CA).'),
        kind: oneOf(['Issuer', 'ClusterIssuer']).default('Issuer').describe('"Issuer" (in the group\'s namespace) or "ClusterIssuer".'),
        group: text(DNS_SUBDOMAIN, 'an API group').default('cert-manager.io').describe('The issuer\'s API group (an external issuer may have its own).'),
      },
      'an object with name, kind and group',
    ).describe('Which issuer signs the members\' certificates.'),
  },
  'an object with issuerRef',
);

export const TlsSpec = object(
  {
    mode: oneOf(['mutual', 'hmac'])
      .default('mutual')
      .describe('How members authenticate each other: "mutual" (TLS with client certificates) or "hmac" (frames signed with a shared secret key, not encrypted).'),
    secretName: text(DNS_SUBDOMAIN, 'a Secret name (lowercase letters, digits, "-" and ".")')
      .optional()
      .describe('Your own Secret: for "mutual", ca.crt and per member node-<id>.crt and node-<id>.key (certificate CN "node-<id>"); for "hmac", the key hmac.key. Omitted: the operator makes them: for "mutual" a certificate authority (Secret <group>-ca) and a certificate per member (Secret <group>-node-<id>-tls), renewed before they expire (or cert-manager does, see certManager); for "hmac" a random key (Secret <group>-auth).'),
    certManager: CertManagerSpec.optional()
      .describe('For "mutual" without secretName: cert-manager issues the members\' certificates instead of the operator. The operator creates a cert-manager Certificate per member (<group>-node-<id>, CN "node-<id>", into Secret <group>-node-<id>-tls); cert-manager renews them.'),
  },
  'an object with mode, secretName and certManager',
).superRefine((tls, ctx) => {
  if (tls.certManager !== undefined && (tls.mode !== 'mutual' || tls.secretName !== undefined)) {
    ctx.addIssue({ code: 'custom', path: ['certManager'], message: 'needs mode "mutual" and no secretName (cert-manager fills the members\' Secrets)' });
  }
});

/** Default of spec.restart.quorumTimeoutSeconds. */
export const RESTART_QUORUM_TIMEOUT_SECONDS_DEFAULT = 300;

export const RestartSpec = object(
  {
    graceSeconds: decimal(0, 3600, 'a number of seconds from 0 to 3600')
      .default(1.5)
      .describe('After a total failure, once the restart quorum is back, how long to wait for the remaining members of the last view before restarting without them.'),
    quorumTimeoutSeconds: integer(0, 86_400, 'a whole number of seconds from 0 to 86400')
      .default(RESTART_QUORUM_TIMEOUT_SECONDS_DEFAULT)
      .describe('How long restarting members wait for the restart quorum (a majority of the last view and a member of every shard) before the group is reported as stuck; 0 means no deadline. Members never give up their state.'),
  },
  'an object with graceSeconds and quorumTimeoutSeconds',
);

export const TimingSpec = object(
  {
    tickMs: integer(1, 1000, 'a tick length in milliseconds from 1 to 1000')
      .default(REFERENCE_TICK_MS)
      .describe('Length of the protocol\'s logical tick in milliseconds; every timer is a whole number of ticks.'),
    heartbeatMs: integer(1, 60_000, 'a number of milliseconds from 1 to 60000')
      .default(100)
      .describe('Members push their state-table row at least this often, in milliseconds. At least tickMs.'),
    suspectMs: integer(1, 600_000, 'a number of milliseconds from 1 to 600000')
      .default(1000)
      .describe('A member not heard from for this long is suspected and removed by a view change, in milliseconds. At least 2 × heartbeatMs.'),
  },
  'an object with tickMs, heartbeatMs and suspectMs',
).superRefine((timing, ctx) => {
  if (timing.heartbeatMs < timing.tickMs) {
    ctx.addIssue({ code: 'custom', path: ['heartbeatMs'], message: `${timing.heartbeatMs} is less than tickMs ${timing.tickMs}` });
  }
  if (timing.suspectMs < 2 * timing.heartbeatMs) {
    ctx.addIssue({ code: 'custom', path: ['suspectMs'], message: `${timing.suspectMs} is less than 2 × heartbeatMs (${2 * timing.heartbeatMs}); a member would be suspected after a single late heartbeat` });
  }
});

// ---------------------------------------------------------------------------------------------------
// Pod scheduling and metadata (the operator's podTemplate; the local runner ignores it). The Kubernetes
// types are written out, not passed through, so that a mistake is named here, field and value.

const LABEL_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const LABEL_KEY_NOUN = 'a label key ("name" or "prefix/name": a DNS subdomain prefix, a name of at most 63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit)';

/** Why `key` is not a valid Kubernetes label or annotation key, or null. */
export function labelKeyProblem(key: string): string | null {
  const slash = key.lastIndexOf('/');
  const prefix = slash >= 0 ? key.slice(0, slash) : null;
  const name = slash >= 0 ? key.slice(slash + 1) : key;
  if (prefix !== null && (prefix.length === 0 || prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix))) return `${JSON.stringify(key)} is not ${LABEL_KEY_NOUN}`;
  if (name.length === 0 || name.length > 63 || !LABEL_NAME.test(name)) return `${JSON.stringify(key)} is not ${LABEL_KEY_NOUN}`;
  return null;
}

/** Label and annotation key prefixes the operator owns: a podTemplate may not set them. */
export const RESERVED_LABEL_PREFIXES = ['app.kubernetes.io/', 'derecho.dev/'] as const;

function stringMap(noun: string, valueMaxLength: number, valuePattern: RegExp | null, valueNoun: string) {
  return z.record(z.string(), z.string({ error: expecting(valueNoun) }), { error: expecting(noun) }).superRefine((map, ctx) => {
    for (const [key, value] of Object.entries(map)) {
      const problem = labelKeyProblem(key);
      if (problem !== null) ctx.addIssue({ code: 'custom', path: [key], message: problem });
      else if (value.length > valueMaxLength || (valuePattern !== null && value !== '' && !valuePattern.test(value))) {
        ctx.addIssue({ code: 'custom', path: [key], message: `${renderValue(value)} is not ${valueNoun}` });
      }
    }
  });
}

const LABEL_VALUE_NOUN = 'a label value (at most 63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit, or empty)';
const labelMap = (noun: string) => stringMap(noun, 63, LABEL_NAME, LABEL_VALUE_NOUN);
const labelKey = () => z.string({ error: expecting(LABEL_KEY_NOUN) }).min(1, { error: expecting(LABEL_KEY_NOUN) }).max(317, { error: expecting(LABEL_KEY_NOUN) })
  .superRefine((key, ctx) => {
    const problem = labelKeyProblem(key);
    if (problem !== null) ctx.addIssue({ code: 'custom', message: problem });
  });
const shortText = (noun: string, maxLength = 253) => z.string({ error: expecting(noun) }).max(maxLength, { error: expecting(noun) });

const LabelSelectorRequirement = object(
  {
    key: labelKey().describe('The label key the requirement applies to.'),
    operator: oneOf(['In', 'NotIn', 'Exists', 'DoesNotExist']).describe('How the key relates to the values.'),
    values: list(shortText('a label value', 63), 'a list of label values', 0, 64).optional().describe('Values for In and NotIn (empty for Exists and DoesNotExist).'),
  },
  'an object with key, operator and values',
);

const LabelSelector = object(
  {
    matchLabels: labelMap('a map of label keys to values').optional().describe('Labels a pod must have, exactly.'),
    matchExpressions: list(LabelSelectorRequirement, 'a list of label selector requirements', 0, 16).optional().describe('Requirements a pod\'s labels must meet.'),
  },
  'an object with matchLabels and/or matchExpressions',
);

const NodeSelectorRequirement = object(
  {
    key: shortText('a node label key or field name', 317).describe('The node label key (or field, in matchFields).'),
    operator: oneOf(['In', 'NotIn', 'Exists', 'DoesNotExist', 'Gt', 'Lt']).describe('How the key relates to the values.'),
    values: list(shortText('a value', 63), 'a list of values', 0, 64).optional().describe('Values (one integer for Gt and Lt; none for Exists and DoesNotExist).'),
  },
  'an object with key, operator and values',
);

const NodeSelectorTerm = object(
  {
    matchExpressions: list(NodeSelectorRequirement, 'a list of node selector requirements', 0, 16).optional().describe('Requirements on node labels.'),
    matchFields: list(NodeSelectorRequirement, 'a list of node field requirements', 0, 16).optional().describe('Requirements on node fields (metadata.name).'),
  },
  'an object with matchExpressions and/or matchFields',
);

const weight = () => integer(1, 100, 'a weight from 1 to 100');

const NodeAffinity = object(
  {
    requiredDuringSchedulingIgnoredDuringExecution: object(
      { nodeSelectorTerms: list(NodeSelectorTerm, 'a non-empty list of node selector terms', 1, 16).describe('Terms, any of which a node must meet.') },
      'an object with nodeSelectorTerms',
    ).optional().describe('Nodes a member may run on (the terms are ORed).'),
    preferredDuringSchedulingIgnoredDuringExecution: list(
      object({ weight: weight().describe('How much the scheduler favours nodes meeting the preference.'), preference: NodeSelectorTerm.describe('The preferred nodes.') }, 'an object with weight and preference'),
      'a list of weighted node preferences', 0, 16,
    ).optional().describe('Nodes the scheduler favours.'),
  },
  'an object with requiredDuringSchedulingIgnoredDuringExecution and/or preferredDuringSchedulingIgnoredDuringExecution',
);

const podAffinityTerm = () => object(
  {
    labelSelector: LabelSelector.optional().describe('The pods this term is about.'),
    namespaceSelector: LabelSelector.optional().describe('Namespaces of those pods, by label. Omitted (with namespaces): the group\'s namespace.'),
    namespaces: list(text(DNS_SUBDOMAIN, 'a namespace name', 63), 'a list of namespace names', 0, 64).optional().describe('Namespaces of those pods, by name.'),
    topologyKey: labelKey().describe('The node label that defines a domain (e.g. kubernetes.io/hostname, topology.kubernetes.io/zone).'),
  },
  'an object with labelSelector and topologyKey',
);

const PodAffinityRules = (what: string) => object(
  {
    requiredDuringSchedulingIgnoredDuringExecution: list(podAffinityTerm(), 'a list of pod affinity terms', 0, 16).optional().describe(`Terms a member's node must meet (${what}).`),
    preferredDuringSchedulingIgnoredDuringExecution: list(
      object({ weight: weight().describe('How much the scheduler favours this term.'), podAffinityTerm: podAffinityTerm().describe('The pods this term is about and the domain it applies to.') }, 'an object with weight and podAffinityTerm'),
      'a list of weighted pod affinity terms', 0, 16,
    ).optional().describe(`Terms the scheduler favours (${what}).`),
  },
  'an object with requiredDuringSchedulingIgnoredDuringExecution and/or preferredDuringSchedulingIgnoredDuringExecution',
);

const Affinity = object(
  {
    nodeAffinity: NodeAffinity.optional().describe('Which nodes members run on.'),
    podAffinity: PodAffinityRules('near the pods selected').optional().describe('Run members near other pods.'),
    podAntiAffinity: PodAffinityRules('away from the pods selected').optional().describe('Keep members away from other pods.'),
  },
  'an object with nodeAffinity, podAffinity and/or podAntiAffinity',
);

const Toleration = object(
  {
    key: shortText('a taint key', 317).optional().describe('The taint key tolerated. Omitted with operator Exists: every taint.'),
    operator: oneOf(['Exists', 'Equal']).optional().describe('"Equal" (default): the taint\'s value must equal value; "Exists": any value.'),
    value: shortText('a taint value', 63).optional().describe('The taint value, for operator Equal.'),
    effect: oneOf(['NoSchedule', 'PreferNoSchedule', 'NoExecute']).optional().describe('The taint effect tolerated. Omitted: every effect.'),
    tolerationSeconds: integer(0, 2_147_483_647, 'a number of seconds').optional().describe('For NoExecute: how long the member stays on a node once tainted.'),
  },
  'an object with key, operator, value, effect and tolerationSeconds',
);

const TopologySpreadConstraint = object(
  {
    maxSkew: integer(1, 1000, 'a skew from 1 to 1000').describe('Most members one domain may have beyond the least loaded eligible domain.'),
    topologyKey: labelKey().describe('The node label that defines a domain (kubernetes.io/hostname, topology.kubernetes.io/zone, ...).'),
    whenUnsatisfiable: oneOf(['DoNotSchedule', 'ScheduleAnyway']).describe('"DoNotSchedule": a member that would break the skew stays Pending; "ScheduleAnyway": the skew is a preference.'),
    labelSelector: LabelSelector.optional().describe('The pods counted. Omitted: the group\'s members (the operator fills it in).'),
    minDomains: integer(1, 1000, 'a domain count from 1 to 1000').optional().describe('With DoNotSchedule: the domains counted even when fewer are eligible.'),
    nodeAffinityPolicy: oneOf(['Honor', 'Ignore']).optional().describe('Whether nodes the member\'s node affinity excludes count as domains (default Honor).'),
    nodeTaintsPolicy: oneOf(['Honor', 'Ignore']).optional().describe('Whether nodes with taints the member does not tolerate count as domains (Kubernetes\' default: Ignore).'),
  },
  'an object with maxSkew, topologyKey and whenUnsatisfiable',
);

export const PodTemplateSpec = object(
  {
    metadata: object(
      {
        labels: labelMap('a map of label keys to values').optional().describe('Labels added to every member pod.'),
        annotations: stringMap('a map of annotation keys to values', 65_536, null, 'an annotation value').optional().describe('Annotations added to every member pod.'),
      },
      'an object with labels and/or annotations',
    ).superRefine((metadata, ctx) => {
      for (const field of ['labels', 'annotations'] as const) {
        for (const key of Object.keys(metadata[field] ?? {})) {
          const reserved = RESERVED_LABEL_PREFIXES.find((prefix) => key.startsWith(prefix));
          if (reserved !== undefined) ctx.addIssue({ code: 'custom', path: [field, key], message: `${JSON.stringify(key)} uses the prefix ${JSON.stringify(reserved)}, which the operator sets itself` });
        }
      }
    }).optional().describe('Labels and annotations of the member pods (keys under app.kubernetes.io/ and derecho.dev/ are the operator\'s).'),
    nodeSelector: labelMap('a map of node label keys to values').optional().describe('Node labels a member\'s node must have.'),
    affinity: Affinity.optional().describe('Node and pod affinity of the members. Omitted: none besides the spread below.'),
    tolerations: list(Toleration, 'a list of tolerations', 0, 64).optional().describe('Taints the members tolerate.'),
    topologySpreadConstraints: list(TopologySpreadConstraint, 'a list of topology spread constraints', 0, 8)
      .optional()
      .describe('How members spread over nodes and zones. Omitted: one member per node where the nodes allow it (kubernetes.io/hostname, maxSkew 1, DoNotSchedule, tainted and excluded nodes not counted) and a preferred even spread over zones (topology.kubernetes.io/zone, ScheduleAnyway). An empty list: no spread.'),
    priorityClassName: text(DNS_SUBDOMAIN, 'a PriorityClass name (lowercase letters, digits, "-" and ".")').optional().describe('PriorityClass of the member pods (e.g. so that they preempt less important pods).'),
    imagePullSecrets: list(
      object({ name: text(DNS_SUBDOMAIN, 'a Secret name (lowercase letters, digits, "-" and ".")').describe('A Secret of type kubernetes.io/dockerconfigjson in the group\'s namespace.') }, 'an object with name'),
      'a list of Secret references', 0, 16,
    ).optional().describe('Secrets to pull the agent image with (a private registry).'),
  },
  'an object with metadata, nodeSelector, affinity, tolerations, topologySpreadConstraints, priorityClassName and imagePullSecrets',
);
export type PodTemplateSpec = z.output<typeof PodTemplateSpec>;

const CIDR = /^([0-9]{1,3}(\.[0-9]{1,3}){3}\/[0-9]{1,2}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\/[0-9]{1,3})$/;
const CIDR_NOUN = 'a CIDR block ("10.0.0.0/8", "fd00::/8")';

const IpBlock = object(
  {
    cidr: text(CIDR, CIDR_NOUN, 64).describe('The addresses admitted.'),
    except: list(text(CIDR, CIDR_NOUN, 64), 'a list of CIDR blocks', 0, 16).optional().describe('Blocks inside cidr that are not admitted.'),
  },
  'an object with cidr and except',
);

/** A NetworkPolicyPeer: who may open connections to the members' client API. */
const NetworkPolicyPeer = object(
  {
    podSelector: LabelSelector.optional().describe('Pods admitted, by label (in the group\'s namespace, or in the namespaces namespaceSelector picks).'),
    namespaceSelector: LabelSelector.optional().describe('Namespaces whose pods are admitted, by label ({} = every namespace). With podSelector: those pods of those namespaces.'),
    ipBlock: IpBlock.optional().describe('Addresses admitted (clients outside the cluster, a load balancer); not with the selectors.'),
  },
  'an object with podSelector, namespaceSelector or ipBlock',
).superRefine((peer, ctx) => {
  if (peer.ipBlock !== undefined && (peer.podSelector !== undefined || peer.namespaceSelector !== undefined)) {
    ctx.addIssue({ code: 'custom', path: ['ipBlock'], message: 'goes alone: an entry admits either pods (podSelector, namespaceSelector) or addresses (ipBlock)' });
  } else if (peer.ipBlock === undefined && peer.podSelector === undefined && peer.namespaceSelector === undefined) {
    ctx.addIssue({ code: 'custom', path: [], message: 'admits nothing: give podSelector, namespaceSelector or ipBlock' });
  }
});

/** The label the default NetworkPolicy admits client pods by: `derecho.dev/client: <group>`. */
export const CLIENT_LABEL = 'derecho.dev/client';

export const ClientApiSpec = object(
  {
    tls: flag()
      .default(true)
      .describe('Serve the HTTP API over TLS with the members\' certificates (those of tls; for tls.mode "hmac" the operator issues certificates for this alone). Clients verify them with ca.crt of the Secret <group>-client. false: plain HTTP.'),
    authentication: oneOf(['token', 'none'])
      .default('token')
      .describe('"token": requests under /v1/ (reads, writes, method calls) need "Authorization: Bearer <token>"; the token is the key "token" of the Secret <group>-client, which the operator makes (or of tokenSecretName). "none": no token asked. /healthz, /readyz, /metrics and /status never ask.'),
    tokenSecretName: text(DNS_SUBDOMAIN, 'a Secret name (lowercase letters, digits, "-" and ".")')
      .optional()
      .describe('Your own Secret with the key "token": the tokens accepted, one per line (two while you rotate). Omitted: the operator makes a random token in <group>-client. Members re-read it within a minute of a change; no restart.'),
    allowedClients: list(NetworkPolicyPeer, 'a list of network policy peers (podSelector, namespaceSelector, ipBlock)', 0, 32)
      .optional()
      .describe(`Who the group's NetworkPolicy lets reach the client API port (besides the operator). Omitted: pods in the group's namespace labelled ${CLIENT_LABEL}: <group name>. [{namespaceSelector: {}}]: every pod of the cluster. An empty list: no client pod.`),
  },
  'an object with tls, authentication, tokenSecretName and allowedClients',
);
export type ClientApiSpec = z.output<typeof ClientApiSpec>;

const defaultsOf = <T extends z.ZodType>(schema: T): z.output<T> => schema.parse({});

export const GroupSpec = object(
  {
    members: integer(1, MEMBERS_MAX, `a member count from 1 to ${MEMBERS_MAX}`)
      .describe(`Number of members (agent pods). Members have node ids 1..members. At most ${MEMBERS_MAX}.`),
    image: text(/^\S+$/, 'a container image reference (no spaces)', 512)
      .optional()
      .describe('Container image of the node agent, to pin one. Omitted: the operator\'s own agent image, of the operator\'s version (its --agent-image flag, the chart\'s agentImage), so that upgrading the operator upgrades the agents.'),
    subgroups: list(SubgroupSpec, 'a non-empty list of subgroups', 1, WIRE_LIMITS_DEFAULTS.shardsMax)
      .superRefine((subgroups, ctx) => {
        const firstIndexByName = new Map<string, number>();
        for (const [index, subgroup] of subgroups.entries()) {
          const earlier = firstIndexByName.get(subgroup.name);
          if (earlier !== undefined) {
            ctx.addIssue({ code: 'custom', path: [index, 'name'], message: `${renderValue(subgroup.name)} is already the name of subgroups[${earlier}]; subgroup names must be unique` });
          } else {
            firstIndexByName.set(subgroup.name, index);
          }
        }
      })
      .describe('The subgroups, in order: flat shard ids follow this order, so append new subgroups at the end.'),
    transport: oneOf(['tcp', 'rdma', 'auto'])
      .default('tcp')
      .describe('Data path between members: "tcp", "rdma" (RDMA verbs; nodes need RDMA devices) or "auto" (RDMA where every member has it, else TCP).'),
    resources: ResourcesSpec.default({}).describe('CPU and memory of each member pod (Kubernetes requests and limits).'),
    podTemplate: PodTemplateSpec.default({}).describe('Scheduling and metadata of the member pods: labels, annotations, nodeSelector, affinity, tolerations, topology spread, priority class, image pull secrets.'),
    storage: StorageSpec.default(defaultsOf(StorageSpec)).describe('Each member\'s persistent volume.'),
    tls: TlsSpec.default(defaultsOf(TlsSpec)).describe('Authentication between members.'),
    clientApi: ClientApiSpec.default(defaultsOf(ClientApiSpec)).describe('How the members\' HTTP API (kv reads and writes, method calls) is protected: TLS, a bearer token, which pods may connect.'),
    restart: RestartSpec.default(defaultsOf(RestartSpec)).describe('Restart after a total failure (every member down at once).'),
    timing: TimingSpec.default(defaultsOf(TimingSpec)).describe('Failure detection timers.'),
    fsync: oneOf(['fsync', 'os'])
      .default('fsync')
      .describe('When a persisted update counts as durable: "fsync" after fsync(2) on the log, "os" once written to the operating system (faster; a machine crash may lose recent updates). Membership and restart state is fsynced under both.'),
    wireLimits: WireLimits.default(defaultsOf(WireLimits)).describe('Frame and message bounds the transport enforces; the same on every member.'),
    sendWindow: integer(1, 65_536, 'a message count from 1 to 65536')
      .default(256)
      .describe('Messages each sender may have in flight (multicast, not yet delivered) per shard. Larger windows raise throughput on high-latency links and use up to sendWindow × payloadBytesMax of memory per sender.'),
  },
  'an object with members and subgroups',
)
  .superRefine((spec, ctx) => {
    const members = spec.members;
    if (members > spec.wireLimits.membersMax) {
      ctx.addIssue({ code: 'custom', path: ['members'], message: `${members} is greater than wireLimits.membersMax ${spec.wireLimits.membersMax}` });
    }
    const totalShards = spec.subgroups.reduce((sum, subgroup) => sum + subgroup.shards, 0);
    if (totalShards > spec.wireLimits.shardsMax) {
      ctx.addIssue({ code: 'custom', path: ['subgroups'], message: `${totalShards} shards in all is more than wireLimits.shardsMax ${spec.wireLimits.shardsMax}` });
    }
    // Node ids named in subgroups must be members (ids 1..members), if members itself is valid.
    const membersValid = Number.isInteger(members) && members >= 1 && members <= MEMBERS_MAX;
    const notMember = (nodeId: number, path: (string | number)[]): void => {
      if (!membersValid || (nodeId >= 1 && nodeId <= members)) return;
      ctx.addIssue({ code: 'custom', path, message: `${nodeId} is not a member's node id (members are 1..${members})` });
    };
    for (const [index, subgroup] of spec.subgroups.entries()) {
      for (const [shardIndex, nodeIds] of (subgroup.reservedNodeIds ?? []).entries()) {
        for (const [position, nodeId] of nodeIds.entries()) notMember(nodeId, ['subgroups', index, 'reservedNodeIds', shardIndex, position]);
      }
      for (const [position, nodeId] of (subgroup.senderNodeIds ?? []).entries()) notMember(nodeId, ['subgroups', index, 'senderNodeIds', position]);
    }

    // Adequacy: only meaningful when everything else holds (the allocator assumes a well-formed policy).
    if (ctx.issues.length > 0) return;
    const policy = toGroupPolicy(spec);
    const policyError = validatePolicy(policy);
    if (policyError !== null) {
      ctx.addIssue({ code: 'custom', path: ['subgroups'], message: `is not a valid policy: ${policyError}` });
      return;
    }
    const allMembers = memberIds(members);
    const allocation = allocate(policy, null, allMembers);
    if (!allocation.adequate) {
      const needed = smallestAdequateMembers(policy, members + 1);
      const advice = needed === null
        ? `no member count up to ${MEMBERS_MAX} is enough; lower minNodesPerShard or shards, or overlap subgroups with reservedNodeIds`
        : `these subgroups need at least ${needed} members (or overlap subgroups with reservedNodeIds)`;
      ctx.addIssue({ code: 'custom', path: ['members'], message: `${members} is too few members for the subgroups: ${allocation.reason}; ${advice}` });
      return;
    }
    // With every member present, each shard must have a sender, or it could never deliver anything.
    let shardId = 0;
    for (const [index, subgroup] of spec.subgroups.entries()) {
      for (let shardIndex = 0; shardIndex < subgroup.shards; shardIndex++, shardId++) {
        const shard = allocation.layout.shards[shardId]!;
        if (subgroup.senderNodeIds !== undefined && shard.senders.length === 0) {
          ctx.addIssue({
            code: 'custom',
            path: ['subgroups', index, 'senderNodeIds'],
            message: `${renderValue(subgroup.senderNodeIds)} names no member of shard ${shardIndex} (members ${renderValue(shard.members)} with all ${members} members up), so that shard could never deliver an update`,
          });
        }
      }
    }
  })
  .describe('Desired state of a Derecho group: its members, subgroups and shards, and how members run.');
export type GroupSpec = z.output<typeof GroupSpec>;
export type GroupSpecInput = z.input<typeof GroupSpec>;

export const GroupMetadata = z
  .looseObject(
    {
      name: text(DNS_LABEL, 'a group name (lowercase letters, digits and "-", starting with a letter, at most 52 characters)', 52)
        .describe('Name of the group; pods and volumes are named after it. At most 52 characters (a StatefulSet name).'),
      namespace: text(DNS_LABEL, 'a namespace name (lowercase letters, digits and "-")', 63).optional().describe('Kubernetes namespace of the group.'),
    },
    { error: expecting('an object with name') },
  )
  .describe('Standard Kubernetes object metadata; only name (and namespace) are used here, other fields pass through.');

/** A whole `DerechoGroup` manifest: apiVersion, kind, metadata and spec. Other top-level fields (status) are dropped. */
export const DerechoGroupSpec = z
  .object(
    {
      apiVersion: z.literal(API_VERSION, { error: expecting(JSON.stringify(API_VERSION)) }).describe(`API version of the resource: ${API_VERSION}.`),
      kind: z.literal(KIND, { error: expecting(JSON.stringify(KIND)) }).describe(`Kind of the resource: ${KIND}.`),
      metadata: GroupMetadata,
      spec: GroupSpec,
    },
    { error: expecting('a DerechoGroup manifest (an object with apiVersion, kind, metadata and spec)') },
  )
  .describe('A replicated Derecho group: subgroups of shards with totally ordered, persistent multicast, run by the node agent.');
export type DerechoGroupSpec = z.output<typeof DerechoGroupSpec>;
export type DerechoGroupSpecInput = z.input<typeof DerechoGroupSpec>;

function memberIds(count: number): NodeId[] {
  return Array.from({ length: count }, (_, index) => index + 1);
}

function smallestAdequateMembers(policy: GroupPolicy, from: number): number | null {
  for (let count = from; count <= MEMBERS_MAX; count++) {
    if (allocate(policy, null, memberIds(count)).adequate) return count;
  }
  return null;
}

function specOf(spec: DerechoGroupSpec | GroupSpec): GroupSpec {
  return 'spec' in spec ? spec.spec : spec;
}

/** The core's allocation policy of a group: its subgroups in spec order. Accepts a manifest or its spec. */
export function toGroupPolicy(spec: DerechoGroupSpec | GroupSpec): GroupPolicy {
  return {
    subgroups: specOf(spec).subgroups.map((subgroup): SubgroupPolicy => {
      const policy: SubgroupPolicy = {
        name: subgroup.name,
        shards: subgroup.shards,
        minNodesPerShard: subgroup.minNodesPerShard,
        maxNodesPerShard: subgroup.maxNodesPerShard,
        deliveryMode: subgroup.deliveryMode,
        persistent: subgroup.deliveryMode === 'raw' ? false : subgroup.persistent,
      };
      if (subgroup.reservedNodeIds !== undefined) policy.reservedNodeIds = subgroup.reservedNodeIds.map((nodeIds) => [...nodeIds]);
      if (subgroup.senderNodeIds !== undefined) policy.senderNodeIds = [...subgroup.senderNodeIds];
      return policy;
    }),
  };
}

// ---------------------------------------------------------------------------------------------------
// The agent's configuration.

const HOST = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?)$/;
const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):([0-9]{1,5})$/;
export const NODE_ID_MAX = 2 ** 31 - 1;
const PEER_ADDRESS_NOUN = 'a peer address "host:port" (port 1..65535; IPv6 in brackets)';

/** Splits "host:port" / "[v6]:port"; null if malformed or the port is outside 1..65535. */
export function splitHostPort(address: string): { host: string; port: number } | null {
  const match = HOST_PORT.exec(address);
  if (!match) return null;
  const port = Number(match[3]);
  if (port < 1 || port > 65_535) return null;
  const host = match[1]!;
  return { host: host.startsWith('[') ? host.slice(1, -1) : host, port };
}

const port = (noun: string) => integer(1, 65_535, noun);

export const AgentAuth = object(
  {
    hmacSecretFile: text(/^\S/, 'a file path', 4096).optional().describe('File holding the group\'s shared HMAC key (tls.mode "hmac").'),
    tlsCertFile: text(/^\S/, 'a file path', 4096).optional().describe('PEM certificate of this member (tls.mode "mutual").'),
    tlsKeyFile: text(/^\S/, 'a file path', 4096).optional().describe('PEM private key of this member (tls.mode "mutual").'),
    tlsCaFile: text(/^\S/, 'a file path', 4096).optional().describe('PEM CA certificate that signs every member\'s certificate (tls.mode "mutual").'),
  },
  'an object with hmacSecretFile or tlsCertFile, tlsKeyFile and tlsCaFile',
).superRefine((auth, ctx) => {
  const tlsFiles = [auth.tlsCertFile, auth.tlsKeyFile, auth.tlsCaFile];
  if (tlsFiles.some((file) => file !== undefined)) {
    for (const key of ['tlsCertFile', 'tlsKeyFile', 'tlsCaFile'] as const) {
      if (auth[key] === undefined) ctx.addIssue({ code: 'custom', path: [key], message: 'is required when any TLS file is given (tlsCertFile, tlsKeyFile and tlsCaFile go together)' });
    }
  }
});
export type AgentAuth = z.output<typeof AgentAuth>;

/** The client API's protection (the HTTP port): TLS with this member's certificate, bearer tokens. */
export const AgentApi = object(
  {
    tlsCertFile: text(/^\S/, 'a file path', 4096).optional().describe('PEM certificate the HTTP API serves TLS with (with tlsKeyFile). Omitted: plain HTTP.'),
    tlsKeyFile: text(/^\S/, 'a file path', 4096).optional().describe('PEM private key of tlsCertFile.'),
    tokenFile: text(/^\S/, 'a file path', 4096)
      .optional()
      .describe('File of the bearer tokens the client API accepts, one per line (two during a rotation; blank lines and lines starting with # are skipped). Requests under /v1/ without one get 401; /healthz, /readyz, /metrics and /status stay open. Omitted: no token asked.'),
  },
  'an object with tlsCertFile, tlsKeyFile and tokenFile',
).superRefine((api, ctx) => {
  if ((api.tlsCertFile === undefined) !== (api.tlsKeyFile === undefined)) {
    ctx.addIssue({ code: 'custom', path: [api.tlsCertFile === undefined ? 'tlsCertFile' : 'tlsKeyFile'], message: 'is required with the other (tlsCertFile and tlsKeyFile go together)' });
  }
});
export type AgentApi = z.output<typeof AgentApi>;

export const ListenSpec = object(
  {
    host: text(HOST, 'a host name or IP address (IPv6 in brackets)').default('0.0.0.0').describe('Address the agent listens on.'),
    peerPort: port('a port number (1..65535)').default(7000).describe('Port for the other members (the protocol).'),
    httpPort: port('a port number (1..65535)').default(8080).describe('Port of the HTTP API (/status, health, client requests).'),
  },
  'an object with host, peerPort and httpPort',
).superRefine((listen, ctx) => {
  if (listen.peerPort === listen.httpPort) {
    ctx.addIssue({ code: 'custom', path: ['httpPort'], message: `${listen.httpPort} is also the peerPort; the two ports must differ` });
  }
});

export const AgentConfig = object(
  {
    nodeId: integer(1, NODE_ID_MAX, 'a positive integer node id').describe('This member\'s node id (1..members for founding members).'),
    groupName: text(DNS_LABEL, 'a group name (lowercase letters, digits and "-")', 52)
      .optional()
      .describe('Name of the group this agent belongs to. Omitted: the group manifest\'s metadata.name; given: it must match it.'),
    groupFile: text(/^\S/, 'a file path', 4096)
      .optional()
      .describe('Path of the DerechoGroup manifest (YAML); relative paths are resolved from the agent config file\'s directory. Exactly one of groupFile and group.'),
    group: DerechoGroupSpec.optional().describe('The DerechoGroup manifest inline. Exactly one of groupFile and group.'),
    listen: ListenSpec.default(defaultsOf(ListenSpec)).describe('Where the agent listens.'),
    dataDir: text(/^\S/, 'a directory path', 4096).default('/var/lib/derecho').describe('Directory for logs, views and restart state (the member\'s volume).'),
    peers: z
      .record(
        text(/^[1-9][0-9]{0,9}$/, 'a positive integer node id', 10),
        // The pattern reports malformed addresses; the refinement only the port range.
        text(HOST_PORT, PEER_ADDRESS_NOUN, 260).refine((address) => !HOST_PORT.test(address) || splitHostPort(address) !== null, { error: expecting(PEER_ADDRESS_NOUN) }),
        { error: expecting('a map from node id to "host:port"') },
      )
      .default({})
      .describe('Addresses of the members, by node id: { "1": "10.0.0.1:7000", ... }. Empty: discovered by the operator.'),
    auth: AgentAuth.default({}).describe('Files with the credentials this member authenticates with; they must match the group\'s spec.tls.mode.'),
    api: AgentApi.default({}).describe('How the HTTP API is protected: TLS and bearer tokens (files re-read every 10 s, so renewed certificates and rotated tokens apply without a restart).'),
    logLevel: oneOf(['debug', 'info', 'warn', 'error']).default('info').describe('Least severe log level written.'),
    benchApi: flag()
      .default(false)
      .describe('Serve the load-generator endpoints /v1/bench/* (used by npm run bench; they let a client flood the group, so keep them off in production).'),
  },
  'an agent configuration object',
)
  .superRefine(
    (config, ctx) => {
      // Runs even when other fields are invalid (so a missing groupFile is reported with a missing
      // nodeId); `config` may then hold unvalidated values, hence the guards.
      if (config === null || typeof config !== 'object' || Array.isArray(config)) return;
      if (config.group !== undefined && config.groupFile !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['group'], message: `is given together with groupFile ${renderValue(config.groupFile)}; give only one` });
      } else if (config.group === undefined && config.groupFile === undefined) {
        ctx.addIssue({ code: 'custom', path: ['groupFile'], message: 'is required (the path of the DerechoGroup manifest, unless the manifest is inline under group)' });
      }
      const inlineName: unknown = (config.group as { metadata?: { name?: unknown } } | null | undefined)?.metadata?.name;
      if (typeof inlineName === 'string' && typeof config.groupName === 'string' && inlineName !== config.groupName) {
        ctx.addIssue({ code: 'custom', path: ['groupName'], message: `${renderValue(config.groupName)} does not match the group's metadata.name ${renderValue(inlineName)}` });
      }
    },
    { when: () => true },
  )
  .describe('Configuration of one node agent.');
export type AgentConfig = z.output<typeof AgentConfig>;
export type AgentConfigInput = z.input<typeof AgentConfig>;

/** The agent's peers as a map from node id to address. */
export function peerAddresses(config: Pick<AgentConfig, 'peers'>): Map<NodeId, { host: string; port: number }> {
  const peers = new Map<NodeId, { host: string; port: number }>();
  for (const [nodeId, address] of Object.entries(config.peers)) {
    const parsed = splitHostPort(address);
    if (parsed !== null) peers.set(Number(nodeId), parsed);
  }
  return peers;
}

// ---------------------------------------------------------------------------------------------------
// Conversion to the core's configuration.

/** Ticks for a duration that must not be shorter than asked (timeouts, waits): rounded up, at least 1. */
function ticksAtLeast(ms: number, tickMs: number): number {
  return Math.max(1, Math.ceil(Math.round(ms) / tickMs));
}

/** Ticks for a period that must not be longer than asked (heartbeats): rounded down, at least 1. */
function ticksAtMost(ms: number, tickMs: number): number {
  return Math.max(1, Math.floor(Math.round(ms) / tickMs));
}

/**
 * The core's ReplicaConfig for this agent: DEFAULT_TIMING, with the spec's timers converted from
 * milliseconds to ticks (ticks = ms / tickMs, at least 1; heartbeats rounded down so they are never
 * rarer than asked, timeouts rounded up so they are never shorter than asked), and the timers the spec
 * does not expose (retransmit, retry, wedged exit) kept at their wall-clock length at REFERENCE_TICK_MS.
 */
export function toReplicaConfig(agentConfig: Pick<AgentConfig, 'nodeId'>, spec: DerechoGroupSpec | GroupSpec): ReplicaConfig {
  const groupSpec = specOf(spec);
  const { tickMs, heartbeatMs, suspectMs } = groupSpec.timing;
  const rescaled = (referenceTicks: number): number => ticksAtLeast(referenceTicks * REFERENCE_TICK_MS, tickMs);
  return {
    ...DEFAULT_TIMING,
    nodeId: agentConfig.nodeId,
    policy: toGroupPolicy(groupSpec),
    heartbeatTicks: ticksAtMost(heartbeatMs, tickMs),
    suspectTicks: ticksAtLeast(suspectMs, tickMs),
    restartGraceTicks: ticksAtLeast(groupSpec.restart.graceSeconds * 1000, tickMs),
    retransmitTicks: rescaled(DEFAULT_TIMING.retransmitTicks),
    retryTicks: rescaled(DEFAULT_TIMING.retryTicks),
    wedgedExitTicks: rescaled(DEFAULT_TIMING.wedgedExitTicks),
    payloadBytesMax: groupSpec.wireLimits.payloadBytesMax,
    windowSize: groupSpec.sendWindow,
    pendingSendsMax: Math.max(DEFAULT_TIMING.pendingSendsMax, groupSpec.sendWindow),
  };
}
