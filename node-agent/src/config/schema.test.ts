import test from 'ava';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { allocate } from '../core/allocation.ts';
import { DEFAULT_TIMING } from '../core/types.ts';
import { ConfigError, formatIssues, knownKeysAt } from './errors.ts';
import { parseGroupManifest } from './load.ts';
import {
  AgentConfig,
  DerechoGroupSpec,
  GroupSpec,
  WIRE_LIMITS_DEFAULTS,
  WireLimits,
  parseQuantity,
  peerAddresses,
  splitHostPort,
  toGroupPolicy,
  toReplicaConfig,
} from './schema.ts';
import type { DerechoGroupSpecInput, GroupSpecInput } from './schema.ts';

const EXAMPLE = fileURLToPath(new URL('../../../examples/kv-group.yaml', import.meta.url));

function manifest(spec: Partial<GroupSpecInput> & Record<string, unknown>): DerechoGroupSpecInput {
  return {
    apiVersion: 'derecho.dev/v1alpha1',
    kind: 'DerechoGroup',
    metadata: { name: 'demo' },
    spec: {
      members: 3,
      subgroups: [{ name: 'kv', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 3 }],
      ...spec,
    } as GroupSpecInput,
  };
}

/** The problems of an invalid input, formatted as the loaders format them. */
function problems(input: unknown, source = 'test.yaml'): string[] {
  const result = DerechoGroupSpec.safeParse(input);
  if (result.success) return [];
  return formatIssues(source, result.error.issues, { input }, (path) => knownKeysAt(DerechoGroupSpec, path));
}

// ---------------------------------------------------------------------------------------------------
// The example manifest

test('examples/kv-group.yaml validates and maps to an adequate policy for its 3 members, with no single point of failure', (t) => {
  const group = parseGroupManifest(readFileSync(EXAMPLE, 'utf8'), 'examples/kv-group.yaml');
  t.is(group.metadata.name, 'kv-demo');
  t.is(group.spec.members, 3);
  const policy = toGroupPolicy(group);
  t.deepEqual(policy, {
    subgroups: [
      { name: 'kv', shards: 1, minNodesPerShard: 2, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true, reservedNodeIds: [[1, 2, 3]] },
      { name: 'events', shards: 1, minNodesPerShard: 2, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true, reservedNodeIds: [[1, 2, 3]] },
    ],
  });
  const allocation = allocate(policy, null, [1, 2, 3]);
  if (!allocation.adequate) return t.fail(allocation.reason);
  t.deepEqual(allocation.layout.shards.map((shard) => [shard.subgroup, shard.shardIndex, shard.members]), [
    ['kv', 0, [1, 2, 3]],
    ['events', 0, [1, 2, 3]],
  ]);
  // No single point of failure: the loss of any one member leaves every shard two members.
  for (const lost of [1, 2, 3]) t.true(allocate(policy, null, [1, 2, 3].filter((id) => id !== lost)).adequate, `without node ${lost}`);
  // The example states its values explicitly; they equal the defaults except where its comments say so.
  const defaults = DerechoGroupSpec.parse(manifest({ members: 3, subgroups: group.spec.subgroups }));
  t.deepEqual({ ...group.spec, resources: {}, tls: { mode: 'mutual' } }, defaults.spec);
});

test('examples/kv-overlap.yaml: kv in 2 shards with node 3 alone in shard 1 (the single point of failure its comments name)', (t) => {
  const group = parseGroupManifest(readFileSync(fileURLToPath(new URL('../../../examples/kv-overlap.yaml', import.meta.url)), 'utf8'), 'examples/kv-overlap.yaml');
  const policy = toGroupPolicy(group);
  const allocation = allocate(policy, null, [1, 2, 3]);
  if (!allocation.adequate) return t.fail(allocation.reason);
  t.deepEqual(allocation.layout.shards.map((shard) => [shard.subgroup, shard.shardIndex, shard.members]), [
    ['kv', 0, [1, 2]],
    ['kv', 1, [3]],
    ['events', 0, [1, 2, 3]],
  ]);
  t.true(allocate(policy, null, [2, 3]).adequate);
  t.true(allocate(policy, null, [1, 3]).adequate);
  t.false(allocate(policy, null, [1, 2]).adequate, 'without node 3, kv shard 1 has no member');
});

// ---------------------------------------------------------------------------------------------------
// Defaults

test('defaults are filled in', (t) => {
  const group = DerechoGroupSpec.parse(manifest({ members: 2, subgroups: [{ name: 'kv', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 2 }] }));
  t.deepEqual(group.spec, {
    members: 2,
    subgroups: [{ name: 'kv', type: 'kv', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 2, deliveryMode: 'ordered', persistent: true }],
    transport: 'tcp',
    podTemplate: {},
    resources: {},
    storage: { size: '1Gi', retention: 'retain' },
    tls: { mode: 'mutual' },
    clientApi: { tls: true, authentication: 'token' },
    restart: { graceSeconds: 1.5, quorumTimeoutSeconds: 300 },
    timing: { tickMs: 50, heartbeatMs: 100, suspectMs: 1000 },
    fsync: 'fsync',
    wireLimits: { payloadBytesMax: 1 << 20, frameBytesMax: (1 << 20) + 65536, membersMax: 64, shardsMax: 256 },
    sendWindow: 256,
  });
  // Partly given nested objects get their remaining defaults.
  const partial = DerechoGroupSpec.parse(manifest({ storage: { size: '5Gi' }, timing: { tickMs: 10 }, restart: { graceSeconds: 0 } }));
  t.deepEqual(partial.spec.storage, { size: '5Gi', retention: 'retain' });
  t.deepEqual(partial.spec.timing, { tickMs: 10, heartbeatMs: 100, suspectMs: 1000 });
  t.deepEqual(partial.spec.restart, { graceSeconds: 0, quorumTimeoutSeconds: 300 });
  // Other top-level fields (status) are dropped; other metadata fields pass through.
  const withExtras = DerechoGroupSpec.parse({ ...manifest({}), status: { phase: 'Running' }, metadata: { name: 'demo', labels: { app: 'x' } } });
  t.false('status' in withExtras);
  t.deepEqual(withExtras.metadata, { name: 'demo', labels: { app: 'x' } });
  t.deepEqual(WireLimits.parse({}), { ...WIRE_LIMITS_DEFAULTS });
});

// ---------------------------------------------------------------------------------------------------
// Cross-field rules and field errors name the path and the value

test('min > max names the subgroup field and both values', (t) => {
  t.deepEqual(
    problems(manifest({ subgroups: [{ name: 'a', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 3 }, { name: 'b', type: 'log', minNodesPerShard: 3, maxNodesPerShard: 2 }] })),
    ['test.yaml: spec.subgroups[1].minNodesPerShard: 3 is greater than maxNodesPerShard 2'],
  );
});

test('too few members: the allocator\'s reason and the member count needed', (t) => {
  const lines = problems(manifest({ members: 3, subgroups: [{ name: 'kv', type: 'kv', shards: 2, minNodesPerShard: 1, maxNodesPerShard: 2 }, { name: 'events', type: 'log', minNodesPerShard: 2, maxNodesPerShard: 3 }] }));
  t.deepEqual(lines, [
    'test.yaml: spec.members: 3 is too few members for the subgroups: subgroup "events" shard 0 needs 2 nodes but only 1 can be assigned (3 members, 2 already serving other shards); these subgroups need at least 4 members (or overlap subgroups with reservedNodeIds)',
  ]);
  const impossible = problems(manifest({ members: 64, subgroups: [{ name: 'kv', type: 'kv', shards: 33, minNodesPerShard: 2, maxNodesPerShard: 2 }] }));
  t.is(impossible.length, 1);
  t.regex(impossible[0]!, /^test\.yaml: spec\.members: 64 is too few members .*no member count up to 64 is enough/);
});

test('duplicate subgroup names, raw + persistent, reserved and sender ids', (t) => {
  t.deepEqual(problems(manifest({ subgroups: [{ name: 'kv', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 1 }, { name: 'kv', type: 'log', minNodesPerShard: 1, maxNodesPerShard: 1 }] })), [
    'test.yaml: spec.subgroups[1].name: "kv" is already the name of subgroups[0]; subgroup names must be unique',
  ]);
  t.deepEqual(problems(manifest({ subgroups: [{ name: 'feed', type: 'log', minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'raw' }] })), [
    'test.yaml: spec.subgroups[0].persistent: true is not allowed with deliveryMode "raw" (raw messages are never persisted); set persistent: false (it defaults to true)',
  ]);
  t.deepEqual(problems(manifest({ subgroups: [{ name: 'feed', type: 'log', minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'raw', persistent: false }] })), []);
  t.deepEqual(
    problems(manifest({ subgroups: [{ name: 'kv', type: 'kv', shards: 2, minNodesPerShard: 1, maxNodesPerShard: 2, reservedNodeIds: [[1, 1], [1], [2]], senderNodeIds: [2, 2, 9] }] })),
    [
      'test.yaml: spec.subgroups[0].reservedNodeIds: [[1,1],[1],[2]] has 3 entries but shards is 2 (one list per shard)',
      'test.yaml: spec.subgroups[0].reservedNodeIds[0][1]: 1 is listed twice in reservedNodeIds[0]',
      'test.yaml: spec.subgroups[0].reservedNodeIds[1][0]: 1 is already reserved in shard 0 (reservedNodeIds[0]); a node can be reserved in only one shard of a subgroup',
      'test.yaml: spec.subgroups[0].senderNodeIds[1]: 2 is listed twice in senderNodeIds',
      'test.yaml: spec.subgroups[0].senderNodeIds[2]: 9 is not a member\'s node id (members are 1..3)',
    ],
  );
  t.deepEqual(problems(manifest({ subgroups: [{ name: 'kv', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 2, reservedNodeIds: [[1, 2, 3]] }] })), [
    'test.yaml: spec.subgroups[0].reservedNodeIds[0]: [1,2,3] reserves 3 nodes but maxNodesPerShard is 2',
  ]);
  t.deepEqual(
    problems(manifest({ subgroups: [{ name: 'a', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 1 }, { name: 'b', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 1, senderNodeIds: [1] }] })),
    ['test.yaml: spec.subgroups[1].senderNodeIds: [1] names no member of shard 0 (members [2] with all 3 members up), so that shard could never deliver an update'],
  );
});

test('field errors: quantities, enums, types, unknown fields, timing and wire limits', (t) => {
  const cases: [Record<string, unknown>, string[]][] = [
    [{ storage: { size: '1GB' } }, ['test.yaml: spec.storage.size: "1GB" is not a storage size of at least 1Mi (a quantity such as 512Mi, 1Gi or 10G)']],
    [{ storage: { size: '1k' } }, ['test.yaml: spec.storage.size: "1k" is not a storage size of at least 1Mi (a quantity such as 512Mi, 1Gi or 10G)']],
    [{ transport: 'udp' }, ['test.yaml: spec.transport: "udp" is not one of "tcp", "rdma", "auto"']],
    [{ members: 0 }, ['test.yaml: spec.members: 0 is not a member count from 1 to 64']],
    [{ members: 2.5 }, ['test.yaml: spec.members: 2.5 is not a member count from 1 to 64']],
    [{ members: undefined }, ['test.yaml: spec.members: is required (a member count from 1 to 64)']],
    [{ subgroups: [] }, ['test.yaml: spec.subgroups: [] is not a non-empty list of subgroups']],
    [{ subgroups: [{ name: 'Bad_Name', type: 'set', minNodesPerShard: 1, maxNodesPerShard: 1 }] }, [
      'test.yaml: spec.subgroups[0].name: "Bad_Name" is not a subgroup name (lowercase letters, digits and "-", starting with a letter, at most 63 characters)',
      'test.yaml: spec.subgroups[0].type: "set" is not a subgroup type: "kv", "log" or "custom:<name>"',
    ]],
    [{ subgroups: [{ name: 'kv', type: 'custom:counter', minNodePerShard: 1, maxNodesPerShard: 1 }] }, [
      'test.yaml: spec.subgroups[0].minNodesPerShard: is required (a node count from 1 to 64)',
      'test.yaml: spec.subgroups[0].minNodePerShard: is not a known field; did you mean minNodesPerShard?',
    ]],
    [{ resources: { requests: { cpu: 1 } } }, ['test.yaml: spec.resources.requests.cpu: 1 is not a CPU quantity (a string such as "500m", "0.5" or "2"; quote numbers in YAML)']],
    [{ resources: { requests: { memory: '2Gi' }, limits: { memory: '1Gi' } } }, ['test.yaml: spec.resources.requests.memory: "2Gi" is greater than limits.memory "1Gi"']],
    [{ tls: { mode: 'none' } }, ['test.yaml: spec.tls.mode: "none" is not one of "mutual", "hmac"']],
    [{ timing: { heartbeatMs: 600 } }, ['test.yaml: spec.timing.suspectMs: 1000 is less than 2 × heartbeatMs (1200); a member would be suspected after a single late heartbeat']],
    [{ timing: { tickMs: 200 } }, ['test.yaml: spec.timing.heartbeatMs: 100 is less than tickMs 200']],
    [{ wireLimits: { payloadBytesMax: 2 << 20 } }, ['test.yaml: spec.wireLimits.frameBytesMax: 1114112 leaves no room for the frame header: it must be at least payloadBytesMax + 1024 (2098176)']],
    [{ members: 5, wireLimits: { membersMax: 4 } }, ['test.yaml: spec.members: 5 is greater than wireLimits.membersMax 4']],
    [{ fsync: true }, ['test.yaml: spec.fsync: true is not one of "fsync", "os"']],
  ];
  for (const [spec, expected] of cases) t.deepEqual(problems(manifest(spec)), expected, JSON.stringify(spec));
  t.deepEqual(problems({ apiVersion: 'v1', metadata: { name: 'Demo' }, spec: 3 }), [
    'test.yaml: apiVersion: "v1" is not "derecho.dev/v1alpha1"',
    'test.yaml: kind: is required ("DerechoGroup")',
    'test.yaml: metadata.name: "Demo" is not a group name (lowercase letters, digits and "-", starting with a letter, at most 52 characters)',
    'test.yaml: spec: 3 is not an object with members and subgroups',
  ]);
});

test('parseQuantity understands the Kubernetes suffixes it accepts', (t) => {
  t.is(parseQuantity('1Gi'), 1024 ** 3);
  t.is(parseQuantity('512Mi'), 512 * 1024 ** 2);
  t.is(parseQuantity('10G'), 10e9);
  t.is(parseQuantity('500m'), 0.5);
  t.is(parseQuantity('1.5Ki'), 1536);
  t.true(Number.isNaN(parseQuantity('1GB')));
  t.true(Number.isNaN(parseQuantity('')));
});

// ---------------------------------------------------------------------------------------------------
// Conversion to the core

test('toGroupPolicy keeps subgroup order and optional fields', (t) => {
  const group = DerechoGroupSpec.parse(manifest({
    subgroups: [
      { name: 'b', type: 'log', minNodesPerShard: 1, maxNodesPerShard: 1, senderNodeIds: [2], reservedNodeIds: [[2]] },
      { name: 'a', type: 'custom:cache', minNodesPerShard: 1, maxNodesPerShard: 2, deliveryMode: 'raw', persistent: false },
    ],
  }));
  t.deepEqual(toGroupPolicy(group), toGroupPolicy(group.spec));
  t.deepEqual(toGroupPolicy(group).subgroups, [
    { name: 'b', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 1, deliveryMode: 'ordered', persistent: true, reservedNodeIds: [[2]], senderNodeIds: [2] },
    { name: 'a', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 2, deliveryMode: 'raw', persistent: false },
  ]);
});

test('toReplicaConfig: the default timing is DEFAULT_TIMING with the spec\'s send window', (t) => {
  const group = DerechoGroupSpec.parse(manifest({}));
  const config = toReplicaConfig({ nodeId: 2 }, group);
  t.deepEqual(config, { ...DEFAULT_TIMING, nodeId: 2, policy: toGroupPolicy(group), windowSize: 256, pendingSendsMax: 1024 });
  t.like(toReplicaConfig({ nodeId: 2 }, DerechoGroupSpec.parse(manifest({ sendWindow: 4096 }))), { windowSize: 4096, pendingSendsMax: 4096 });
});

test('toReplicaConfig converts milliseconds to ticks', (t) => {
  const convert = (timing: Record<string, number>, graceSeconds = 1.5) =>
    toReplicaConfig({ nodeId: 1 }, DerechoGroupSpec.parse(manifest({ timing, restart: { graceSeconds } })).spec);
  // A shorter tick: same wall-clock durations, more ticks (the timers the spec does not expose too).
  const fine = convert({ tickMs: 10, heartbeatMs: 100, suspectMs: 1000 }, 2);
  t.like(fine, { heartbeatTicks: 10, suspectTicks: 100, restartGraceTicks: 200, retransmitTicks: 40, retryTicks: 50, wedgedExitTicks: 2000 });
  // Not a multiple of the tick: heartbeats round down (never rarer), timeouts round up (never sooner).
  t.like(convert({ tickMs: 50, heartbeatMs: 125, suspectMs: 1010 }, 0.07), { heartbeatTicks: 2, suspectTicks: 21, restartGraceTicks: 2 });
  // Floating point seconds do not add a tick: 0.7 s is 700 ms, 14 ticks of 50 ms.
  t.like(convert({}, 0.7), { restartGraceTicks: 14 });
  // Never below one tick.
  t.like(convert({ tickMs: 1000, heartbeatMs: 1000, suspectMs: 2000 }, 0), { heartbeatTicks: 1, suspectTicks: 2, restartGraceTicks: 1, retransmitTicks: 1, retryTicks: 1, wedgedExitTicks: 20 });
  // Payload bound from the wire limits; the window from sendWindow.
  const big = toReplicaConfig({ nodeId: 1 }, DerechoGroupSpec.parse(manifest({ wireLimits: { payloadBytesMax: 4 << 20, frameBytesMax: (4 << 20) + 4096 } })));
  t.is(big.payloadBytesMax, 4 << 20);
  t.is(big.windowSize, 256);
});

// ---------------------------------------------------------------------------------------------------
// The JSON Schema (the future CRD's OpenAPI schema)

type JsonSchema = { [key: string]: unknown; properties?: Record<string, JsonSchema>; items?: JsonSchema };

/** Every property without a description, and every construct a structural schema cannot hold. */
function schemaFindings(schema: JsonSchema, at = '$'): string[] {
  const findings: string[] = [];
  for (const keyword of ['anyOf', 'oneOf', 'allOf', 'not', '$ref']) {
    if (keyword in schema) findings.push(`${at}: uses ${keyword}`);
  }
  for (const [name, property] of Object.entries(schema.properties ?? {})) {
    if (typeof property.description !== 'string' || property.description.length < 10) findings.push(`${at}.${name}: no description`);
    findings.push(...schemaFindings(property, `${at}.${name}`));
  }
  if (schema.items) findings.push(...schemaFindings(schema.items, `${at}[]`));
  if (typeof schema.additionalProperties === 'object' && schema.additionalProperties !== null) {
    findings.push(...schemaFindings(schema.additionalProperties as JsonSchema, `${at}{}`));
  }
  return findings;
}

test('z.toJSONSchema of the resource succeeds, with a description on every property and no unions', (t) => {
  for (const schema of [DerechoGroupSpec, GroupSpec]) {
    const json = z.toJSONSchema(schema, { target: 'openapi-3.0', io: 'input', unrepresentable: 'throw' }) as JsonSchema;
    t.is(json.type, 'object');
    t.deepEqual(schemaFindings(json), []);
  }
  const json = z.toJSONSchema(DerechoGroupSpec, { target: 'openapi-3.0', io: 'input' }) as JsonSchema;
  const spec = json.properties!.spec!;
  t.deepEqual(spec.required, ['members', 'subgroups']);
  t.is(spec.properties!.transport!.default, 'tcp');
  t.deepEqual(spec.properties!.transport!.enum, ['tcp', 'rdma', 'auto']);
  t.deepEqual(spec.properties!.storage!.default, { size: '1Gi', retention: 'retain' });
  t.is(spec.properties!.members!.maximum, 64);
  t.is(typeof spec.properties!.storage!.properties!.size!.pattern, 'string');
  // The agent's config has descriptions everywhere too (it documents the config file).
  t.deepEqual(schemaFindings(z.toJSONSchema(AgentConfig, { target: 'openapi-3.0', io: 'input' }) as JsonSchema).filter((finding) => !finding.includes('uses')), []);
});

// ---------------------------------------------------------------------------------------------------
// Agent config helpers

test('peer addresses and host:port parsing', (t) => {
  t.deepEqual(splitHostPort('127.0.0.1:7001'), { host: '127.0.0.1', port: 7001 });
  t.deepEqual(splitHostPort('[::1]:7001'), { host: '::1', port: 7001 });
  t.deepEqual(splitHostPort('node-1.kv-demo.default.svc:7000'), { host: 'node-1.kv-demo.default.svc', port: 7000 });
  t.is(splitHostPort('host:0'), null);
  t.is(splitHostPort('host:70000'), null);
  t.is(splitHostPort('host'), null);
  t.deepEqual([...peerAddresses({ peers: { '1': 'a:1', '2': 'b:2' } })], [[1, { host: 'a', port: 1 }], [2, { host: 'b', port: 2 }]]);
});

test('ConfigError carries one problem per line', (t) => {
  const error = new ConfigError(['a: one', 'b: two']);
  t.is(error.message, 'a: one\nb: two');
  t.deepEqual(error.problems, ['a: one', 'b: two']);
  t.is(error.name, 'ConfigError');
  t.true(error instanceof Error);
});
