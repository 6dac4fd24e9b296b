import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import test from 'ava';
import fc from 'fast-check';
import YAML from 'yaml';
import { z } from 'zod';
import { GroupSpec } from '../../node-agent/src/config/schema.ts';
import {
  CEL_RULES, CRD_FILE, PRINTER_COLUMNS, SchemaConversionError, assertRe2Pattern, celViolations, derechoGroupCrd, derechoGroupSchema, valueCelRules,
  isTransitionRule, renderCrdYaml, toStructural,
} from './crd.ts';
import { CREATE_CASES, MESSAGE_CASES, UPDATE_CASES, withSpec } from './crd-cases.ts';
import { applyDefaults, schemaNodes, validateOpenApi } from './openapi.ts';

const repoFile = (path: string): string => fileURLToPath(new URL(`../../${path}`, import.meta.url));
const schema = derechoGroupSchema();
const specSchema = schema.properties!.spec!;
const statusSchema = schema.properties!.status!;
const example = YAML.parse(readFileSync(repoFile('examples/kv-group.yaml'), 'utf8')) as { apiVersion: string; kind: string; metadata: { name: string }; spec: Record<string, unknown> };

/** A resource as the API server stores it: defaults applied. */
const defaulted = (resource: unknown): Record<string, unknown> => applyDefaults(schema, resource) as Record<string, unknown>;
/** The schema's problems and those of the rules the spec's enums and patterns became (as kube-apiserver reports both). */
const specProblems = (spec: unknown): string[] => {
  const defaultedSpec = applyDefaults(specSchema, spec);
  const schemaProblems = validateOpenApi(specSchema, defaultedSpec, 'spec');
  const ruleProblems = celViolations({ spec: defaultedSpec }, undefined, valueCelRules()).map((v) => `${v.at}: ${v.message}`);
  return [...schemaProblems, ...ruleProblems];
};

// ---------------------------------------------------------------------------------------------------
// The generated file

test('crds/ is up to date with the zod schemas (run npm run gen:crd after changing them)', (t) => {
  const onDisk = readFileSync(repoFile(CRD_FILE), 'utf8');
  t.true(onDisk === renderCrdYaml(), `${CRD_FILE} is stale: run npm run gen:crd`);
});

test('the CRD YAML reads back (as YAML 1.1, like Go tooling) as the CRD object', (t) => {
  const parsed: unknown = YAML.parse(renderCrdYaml(), { version: '1.1' });
  t.deepEqual(parsed, derechoGroupCrd());
  // Condition statuses stay strings even for YAML 1.1 readers.
  t.regex(renderCrdYaml(), /- "True"\n\s+- "False"/);
});

test('the CRD names the resource: derecho.dev/v1alpha1 DerechoGroup, derechogroups, dg, namespaced', (t) => {
  const crd = derechoGroupCrd() as unknown as { metadata: { name: string }; spec: { group: string; scope: string; names: Record<string, unknown>; versions: Record<string, unknown>[] } };
  t.is(crd.metadata.name, 'derechogroups.derecho.dev');
  t.is(crd.spec.group, 'derecho.dev');
  t.is(crd.spec.scope, 'Namespaced');
  t.like(crd.spec.names, { kind: 'DerechoGroup', plural: 'derechogroups', singular: 'derechogroup', shortNames: ['dg'] });
  const version = crd.spec.versions[0]!;
  t.like(version, { name: 'v1alpha1', served: true, storage: true });
  t.deepEqual(version.subresources, { status: {}, scale: { specReplicasPath: '.spec.members', statusReplicasPath: '.status.currentMembers', labelSelectorPath: '.status.selector' } });
  t.deepEqual((version.additionalPrinterColumns as { name: string }[]).map((column) => column.name), ['Ready', 'Members', 'View', 'Phase', 'Age']);
});

// ---------------------------------------------------------------------------------------------------
// Structural schema rules the API server enforces

test('structural: a type on every node, no unions or refs, no additionalProperties next to properties', (t) => {
  const findings: string[] = [];
  const forbidden = ['$ref', '$schema', '$defs', 'definitions', 'anyOf', 'oneOf', 'allOf', 'not', 'uniqueItems', 'const', 'propertyNames'];
  for (const [at, node] of schemaNodes(schema)) {
    if (node.type === undefined) findings.push(`${at}: no type`);
    for (const keyword of forbidden) if (keyword in node) findings.push(`${at}: ${keyword}`);
    if (node.properties !== undefined && node.additionalProperties !== undefined) findings.push(`${at}: properties and additionalProperties`);
    if ((node as Record<string, unknown>).additionalProperties === false) findings.push(`${at}: additionalProperties: false`);
    if (node.type === 'integer' && node.format !== 'int32' && node.format !== 'int64') findings.push(`${at}: integer without int32/int64 format`);
    if (node.type === 'string' && node.enum !== undefined && node.maxLength === undefined) findings.push(`${at}: enum without maxLength (CEL cost)`);
    if (node.pattern !== undefined) {
      try {
        assertRe2Pattern(node.pattern, at);
        new RegExp(node.pattern, 'u');
      } catch (error) {
        findings.push(String(error));
      }
    }
  }
  t.deepEqual(findings, []);
});

test('structural: metadata is only {type: object}; spec is required; every spec and status field has a description', (t) => {
  t.deepEqual(schema.properties!.metadata, { type: 'object' });
  t.deepEqual(schema.required, ['spec']);
  const undocumented = [...schemaNodes(specSchema, 'spec'), ...schemaNodes(statusSchema, 'status')]
    .filter(([at]) => !at.endsWith('[]') && !at.endsWith('{}'))
    .filter(([, node]) => typeof node.description !== 'string' || node.description.length < 10)
    .map(([at]) => at);
  t.deepEqual(undocumented, []);
});

test('structural: defaults are valid, already pruned, and hold under the CEL rules', (t) => {
  const findings: string[] = [];
  for (const [at, node] of schemaNodes(schema)) {
    if (node.default === undefined) continue;
    findings.push(...validateOpenApi(node, applyDefaults(node, node.default), `${at}(default)`));
  }
  t.deepEqual(findings, []);
  t.deepEqual(specSchema.properties!.storage!.default, { size: '1Gi', retention: 'retain' });
  t.is(specSchema.properties!.transport!.default, 'tcp');
  t.is(specSchema.properties!.subgroups!.items!.properties!.shards!.default, 1);
});

test('structural: list-map keys are required; list types and rules sit at existing nodes', (t) => {
  const nodes = new Map(schemaNodes(schema));
  for (const [at, node] of nodes) {
    if (node['x-kubernetes-list-type'] === 'map') {
      for (const key of node['x-kubernetes-list-map-keys'] ?? []) {
        t.true(node.items!.required!.includes(key) || node.items!.properties![key]!.default !== undefined, `${at}: map key ${key} must be required or defaulted`);
      }
    }
  }
  t.is(nodes.get('spec.subgroups')!['x-kubernetes-list-type'], 'map');
  t.is(nodes.get('spec.subgroups[].senderNodeIds')!['x-kubernetes-list-type'], 'set');
  // Every CEL rule was placed (a rule at a path that does not exist would silently vanish).
  const placed = [...nodes.values()].flatMap((node) => node['x-kubernetes-validations'] ?? []);
  t.is(placed.length, CEL_RULES.length + valueCelRules().length);
  for (const rule of [...CEL_RULES, ...valueCelRules()]) {
    const node = nodes.get(rule.at);
    t.truthy(node, `rule at ${rule.at}`);
    if (rule.fieldPath !== undefined) t.truthy(node!.properties?.[rule.fieldPath.slice(1)], `${rule.at}: fieldPath ${rule.fieldPath}`);
    // Transition rules cannot sit inside atomic lists or sets (no way to correlate old and new items);
    // inside a list-map they can (items are paired by key).
    if (isTransitionRule(rule) && rule.at.includes('[]')) {
      t.is(nodes.get(rule.at.replace(/\[\]$/, ''))?.['x-kubernetes-list-type'], 'map', `${rule.at}: transition rule inside a list that is not a map`);
      t.false(rule.at.slice(0, -2).includes('[]'), `${rule.at}: transition rule nested in two lists`);
    }
  }
});

test('printer columns and the scale subresource point at schema fields', (t) => {
  const paths = new Set([...schemaNodes(schema)].map(([at]) => `.${at}`));
  for (const column of PRINTER_COLUMNS) {
    if (column.jsonPath === '.metadata.creationTimestamp') continue;
    t.true(paths.has(column.jsonPath), column.jsonPath);
  }
  for (const path of ['.spec.members', '.status.currentMembers', '.status.selector']) t.true(paths.has(path), path);
  t.is(schema.properties!.status!.properties!.readyMembers!.type, 'string');
});

test('toStructural refuses what has no structural equivalent', (t) => {
  const convert = (schemaJson: Record<string, unknown>) => () => toStructural(schemaJson, 'x');
  t.throws(convert({ anyOf: [{ type: 'string' }, { type: 'integer' }] }), { instanceOf: SchemaConversionError, message: /x: anyOf/ });
  t.throws(convert({ type: 'object', properties: { a: { description: 'no type' } } }), { message: /x\.a: has no type/ });
  t.throws(convert({ type: 'string', pattern: '^(?!x)' }), { message: /lookahead/ });
  t.throws(convert({ type: 'object', additionalProperties: true }), { message: /additionalProperties true/ });
  t.throws(convert({ $ref: '#/$defs/a', $defs: { a: { type: 'object', properties: { b: { $ref: '#/$defs/a' } } } } }), { message: /recursive/ });
  t.deepEqual(toStructural({ $defs: { n: { type: 'integer', minimum: 0, maximum: 10 } }, type: 'object', properties: { a: { $ref: '#/$defs/n' } } }, 'x'), {
    type: 'object', properties: { a: { type: 'integer', format: 'int32', minimum: 0, maximum: 10 } },
  });
  t.deepEqual(toStructural({ type: ['string', 'null'], const: 'a' }, 'x'), { type: 'string', nullable: true, enum: ['a'], maxLength: 1 });
  const json = z.toJSONSchema(z.strictObject({ n: z.int().describe('An int.') }), { target: 'openapi-3.0', io: 'input' }) as Record<string, unknown>;
  t.deepEqual(toStructural(json, 'x'), { type: 'object', required: ['n'], properties: { n: { description: 'An int.', type: 'integer', format: 'int64', minimum: -9007199254740991, maximum: 9007199254740991 } } });
});

// ---------------------------------------------------------------------------------------------------
// examples/kv-group.yaml against the generated schema

test('examples/kv-group.yaml and kv-overlap.yaml validate against the generated schema, and defaulting gives what zod gives', (t) => {
  for (const file of ['examples/kv-group.yaml', 'examples/kv-overlap.yaml']) {
    const manifest = YAML.parse(readFileSync(repoFile(file), 'utf8')) as typeof example;
    t.deepEqual(validateOpenApi(schema, defaulted(manifest)), [], file);
    t.deepEqual(applyDefaults(specSchema, manifest.spec), GroupSpec.parse(manifest.spec), file);
    t.deepEqual(celViolations(defaulted(manifest)), [], file);
  }
  // A minimal manifest gets every default the zod schema has.
  const minimal = { members: 1, subgroups: [{ name: 'kv', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 1 }] };
  t.deepEqual(applyDefaults(specSchema, minimal), GroupSpec.parse(minimal));
});

test('the schema rejects bad field values and names the field', (t) => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ members: 0 }, /^spec\.members: must be at least 1$/],
    [{ members: 65 }, /^spec\.members: must be at most 64$/],
    [{ transport: 'udp' }, /^spec\.transport: must be one of "tcp", "rdma", "auto"$/],
    [{ storage: { size: '1GB' } }, /^spec\.storage\.size: must be a storage size of at least 1Mi \(a quantity such as 512Mi, 1Gi or 10G\)$/],
    [{ tls: { mode: 'none' } }, /^spec\.tls\.mode: must be one of/],
    [{ replicas: 3 }, /^spec\.replicas: unknown field$/],
    [{ subgroups: [] }, /^spec\.subgroups: must have at least 1 items$/],
    [{ subgroups: [{ name: 'kv', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 1 }, { name: 'kv', type: 'log', minNodesPerShard: 1, maxNodesPerShard: 1 }] }, /^spec\.subgroups\[1\]: duplicate value \["kv"\]$/],
    [{ subgroups: [{ name: 'kv', type: 'kv', minNodesPerShard: 1, maxNodesPerShard: 1, senderNodeIds: [1, 1] }] }, /^spec\.subgroups\[0\]\.senderNodeIds\[1\]: duplicate value 1$/],
    [{ subgroups: [{ name: 'kv', type: 'set', minNodesPerShard: 1, maxNodesPerShard: 1 }] }, /^spec\.subgroups\[\]\.type: must be /],
    [{ timing: { tickMs: 1.5 } }, /^spec\.timing\.tickMs: must be of type integer, got number$/],
  ];
  for (const [patch, expected] of cases) {
    const problems = specProblems({ ...example.spec, ...patch });
    t.is(problems.length, 1, JSON.stringify({ patch, problems }));
    t.regex(problems[0] ?? '', expected);
    t.false(GroupSpec.safeParse({ ...example.spec, ...patch }).success, `zod rejects ${JSON.stringify(patch)} too`);
  }
});

// ---------------------------------------------------------------------------------------------------
// CEL rules, through their TypeScript twins

const violated = (resource: unknown, old?: unknown): string[] => celViolations(defaulted(resource), old === undefined ? undefined : defaulted(old)).map((violation) => `${violation.at}: ${violation.message}`);

test('CEL: cross-field rules on examples (each refusal is also refused by the zod schema)', (t) => {
  for (const { what, patch, refusal, operatorRefuses } of CREATE_CASES) {
    const resource = withSpec(patch);
    const problems = violated(resource);
    if (refusal === null) {
      t.deepEqual(problems, [], what);
      t.is(GroupSpec.safeParse(resource.spec).success, operatorRefuses !== true, `${what}: zod ${operatorRefuses === true ? 'refuses' : 'accepts'} it`);
    } else {
      t.true(problems.some((problem) => problem.includes(refusal)), `${what}: ${JSON.stringify(problems)}`);
      t.false(GroupSpec.safeParse(resource.spec).success, `${what}: zod refuses it too`);
    }
  }
  t.deepEqual(violated({ ...example, metadata: { name: 'a'.repeat(53) } }), [': metadata.name must be at most 52 characters of lowercase letters, digits and "-", starting with a letter (pods, volumes and services are named after the group)']);
  t.deepEqual(violated({ ...example, metadata: { name: 'Kv_Demo' } }).length, 1);
  t.deepEqual(violated(withSpec({ subgroups: [{ name: 'kv', type: 'kv', minNodesPerShard: 3, maxNodesPerShard: 2 }] })), ['spec.subgroups[]: minNodesPerShard must be at most maxNodesPerShard']);
});

test('CEL: transition rules (immutable fields; subgroups can only be appended)', (t) => {
  for (const { what, before, after, refusal } of UPDATE_CASES) {
    const problems = violated(withSpec(after), withSpec(before));
    if (refusal === null) t.deepEqual(problems, [], what);
    else t.true(problems.some((problem) => problem.includes(refusal)), `${what}: ${JSON.stringify(problems)}`);
  }
});

// ---------------------------------------------------------------------------------------------------
// Properties: the generated schema and the CEL rules are never stricter than the zod schema

/** Mostly `usual`, sometimes (1 in 8) `unusual`. */
const rarely = <T, U>(usual: fc.Arbitrary<T>, unusual: fc.Arbitrary<U>): fc.Arbitrary<T | U> =>
  fc.oneof({ arbitrary: usual, weight: 7 }, { arbitrary: unusual, weight: 1 });

// Specs near the valid/invalid boundary: mostly coherent, with ids, bounds and timings sometimes off by a bit.
const specArb = fc.integer({ min: 1, max: 9 }).chain((members) => {
  const nodeId = fc.integer({ min: 1, max: members + 1 });
  const subgroup = fc
    .record({
      name: fc.constantFrom('kv', 'log', 'events', 'cache-2'),
      type: fc.constantFrom('kv', 'log', 'custom:counter'),
      shards: fc.option(fc.integer({ min: 1, max: 2 }), { nil: undefined }),
      minNodesPerShard: fc.integer({ min: 1, max: 3 }),
      extra: rarely(fc.integer({ min: 0, max: 2 }), fc.constant(-1)),
      raw: rarely(fc.constant(false), fc.constant(true)),
      persistent: rarely(fc.constant(undefined), fc.boolean()),
      reservedNodeIds: fc.option(fc.array(fc.uniqueArray(nodeId, { maxLength: 2 }), { maxLength: 2 }), { nil: undefined, freq: 3 }),
      senderNodeIds: fc.option(fc.uniqueArray(nodeId, { minLength: 1, maxLength: 4 }), { nil: undefined, freq: 3 }),
    })
    .map(({ extra, raw, persistent, shards, reservedNodeIds, senderNodeIds, ...rest }) => ({
      ...rest,
      // Mostly one reserved list per shard at most.
      ...(reservedNodeIds !== undefined && reservedNodeIds.length > (shards ?? 1) && extra !== 0 ? { shards: reservedNodeIds.length } : {}),
      maxNodesPerShard: Math.max(1, rest.minNodesPerShard + extra),
      ...(shards !== undefined && !(reservedNodeIds !== undefined && reservedNodeIds.length > shards && extra !== 0) ? { shards } : {}),
      ...(raw ? { deliveryMode: 'raw' } : {}),
      ...(persistent !== undefined ? { persistent } : raw ? { persistent: false } : {}),
      ...(reservedNodeIds !== undefined ? { reservedNodeIds } : {}),
      ...(senderNodeIds !== undefined ? { senderNodeIds } : {}),
    }));
  const timing = fc.integer({ min: 1, max: 100 }).chain((tickMs) =>
    fc.record({ heartbeat: rarely(fc.integer({ min: tickMs, max: 3 * tickMs }), fc.constant(tickMs - 1)), factor: rarely(fc.double({ min: 2, max: 4, noNaN: true }), fc.double({ min: 1.5, max: 2, noNaN: true })) }).map(({ heartbeat, factor }) => ({
      tickMs, heartbeatMs: Math.max(1, heartbeat), suspectMs: Math.max(1, Math.round(Math.max(1, heartbeat) * factor)),
    })));
  const wireLimits = fc.record({ payloadBytesMax: fc.integer({ min: 1, max: 1 << 21 }), slack: fc.integer({ min: 1000, max: 70_000 }), membersMax: fc.integer({ min: members - 1, max: 16 }), shardsMax: fc.integer({ min: 1, max: 8 }) })
    .map(({ slack, membersMax, ...rest }) => ({ ...rest, frameBytesMax: rest.payloadBytesMax + slack, membersMax: Math.max(1, membersMax) }));
  return fc.record(
    {
      members: fc.constant(members),
      subgroups: fc.array(subgroup, { minLength: 1, maxLength: 3 }),
      transport: fc.constantFrom('tcp', 'rdma', 'auto'),
      storage: fc.record({ size: fc.constantFrom('1Gi', '512Mi', '10G'), storageClassName: fc.constantFrom('fast', 'standard') }, { requiredKeys: [] }),
      timing,
      wireLimits,
    },
    { requiredKeys: ['members', 'subgroups'] },
  );
});

test('property: a spec zod accepts passes the OpenAPI schema and every CEL rule, and defaults the same way', (t) => {
  let accepted = 0;
  fc.assert(
    fc.property(specArb, (spec) => {
      const parsed = GroupSpec.safeParse(spec);
      if (!parsed.success) return true;
      accepted++;
      const stored = applyDefaults(specSchema, spec);
      const resource = { apiVersion: 'derecho.dev/v1alpha1', kind: 'DerechoGroup', metadata: { name: 'g' }, spec: stored };
      return validateOpenApi(specSchema, stored, 'spec').length === 0 &&
        isDeepStrictEqual(stored, parsed.data) &&
        celViolations(resource).length === 0;
    }),
    { numRuns: 5000 },
  );
  t.true(accepted > 200, `only ${accepted} generated specs were valid`);
  t.log(`${accepted} of 5000 generated specs were valid`);
});

test('property: what the OpenAPI schema or a CEL rule refuses, zod refuses too', (t) => {
  fc.assert(
    fc.property(specArb, (spec) => {
      const stored = applyDefaults(specSchema, spec);
      const refused = validateOpenApi(specSchema, stored, 'spec').length > 0 || celViolations({ metadata: { name: 'g' }, spec: stored }).length > 0;
      return !refused || !GroupSpec.safeParse(spec).success;
    }),
    { numRuns: 3000 },
  );
  t.pass();
});

test('the status schema accepts a full status', (t) => {
  const status = {
    observedGeneration: 3, phase: 'Running', readyMembers: '3/3', desiredMembers: 3, currentMembers: 3, foundingMembers: 3,
    selector: 'app.kubernetes.io/instance=kv-demo',
    conditions: [{ type: 'Ready', status: 'True', reason: 'AllMembersReady', message: 'all 3 members are ready in view 0', observedGeneration: 3, lastTransitionTime: '2026-01-01T00:00:00Z' }],
    view: { id: 0, members: [1, 2, 3] },
    shards: [{ subgroup: 'kv', shard: 0, members: [1, 2] }],
    members: [{ nodeId: 1, pod: 'kv-demo-1', ready: true, mode: 'active', viewId: 0, delivered: { 'kv/0': '0.8' }, persisted: { 'kv/0': '0.8' } }],
    restart: { waitingFor: 'x', missingMembers: [2], missingShards: [{ subgroup: 'kv', shard: 1, formerMembers: [3] }], reporting: [1] },
  };
  t.deepEqual(validateOpenApi(statusSchema, status, 'status'), []);
  t.deepEqual(validateOpenApi(statusSchema, { ...status, conditions: [{ ...status.conditions[0]!, status: 'Maybe' }] }, 'status'), ['status.conditions[0].status: must be one of "True", "False", "Unknown"']);
});

test('CEL messages name the subgroup, the node ids or the change (the twins of messageExpression), with no follow-on errors', (t) => {
  for (const c of MESSAGE_CASES) {
    const after = withSpec(c.after);
    const violations = c.before === undefined ? violated(after) : violated(after, withSpec(c.before));
    // (The rules enums and patterns became are among the violations already.)
    const schemaProblems = validateOpenApi(specSchema, applyDefaults(specSchema, after.spec), 'spec');
    t.is(violations.length + schemaProblems.length, c.causes, `${c.what}: ${JSON.stringify({ violations, schemaProblems })}`);
    if (c.schema) continue; // worded by the API server (the kube-apiserver test checks it)
    t.regex(violations[0]!.replace(/^[^:]*: /, ''), c.says, c.what);
  }
});
