// The DerechoGroup CustomResourceDefinition, generated from the zod schemas: the spec from
// node-agent/src/config/schema.ts (GroupSpec), the status from ./status.ts. `npm run gen:crd` writes it to
// crds/derechogroups.derecho.dev.yaml; crd.test.ts fails when that file is stale.
//
// z.toJSONSchema gives an OpenAPI 3.0 flavoured JSON Schema; toStructural() turns it into a structural
// schema the API server accepts (type on every node, no $ref/$defs/$schema, no additionalProperties:
// false next to properties, no unions, RE2-compatible patterns, integer formats, defaults and descriptions
// kept) and adds the Kubernetes extensions: list types and the CEL rules below, for what the schema alone
// cannot say. Every CEL rule has a TypeScript twin (`holds`) that the tests evaluate on examples; the API
// server evaluates the CEL itself (the cluster tests).

import { z } from 'zod';
import YAML from 'yaml';
import { FRAME_HEADER_BYTES_MIN, GroupSpec, DerechoGroupSpec, MiB, parseQuantity } from '../../node-agent/src/config/schema.ts';
import type { GroupSpec as GroupSpecValue, SubgroupSpec } from '../../node-agent/src/config/schema.ts';
import { CRD_API_VERSION, CRD_GROUP, CRD_KIND, CRD_NAME, CRD_PLURAL, CRD_SHORT_NAMES, CRD_SINGULAR, CRD_VERSION } from './kube.ts';
import type { KubeObject } from './kube.ts';
import { DerechoGroupStatus } from './status.ts';

export const CRD_FILE = `crds/${CRD_NAME}.yaml`;

/** A node of a structural OpenAPI v3 schema (the subset this generator emits). */
export interface OpenApiSchema {
  type?: 'object' | 'array' | 'string' | 'integer' | 'number' | 'boolean';
  format?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  nullable?: boolean;
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: boolean;
  exclusiveMaximum?: boolean;
  minItems?: number;
  maxItems?: number;
  properties?: Record<string, OpenApiSchema>;
  required?: string[];
  additionalProperties?: OpenApiSchema;
  items?: OpenApiSchema;
  'x-kubernetes-list-type'?: 'atomic' | 'set' | 'map';
  'x-kubernetes-list-map-keys'?: string[];
  'x-kubernetes-validations'?: ValidationRule[];
}

/** One x-kubernetes-validations entry as it appears in the CRD. */
export interface ValidationRule {
  rule: string;
  message: string;
  fieldPath?: string;
  reason?: 'FieldValueInvalid' | 'FieldValueForbidden' | 'FieldValueRequired' | 'FieldValueDuplicate';
}

/** A CEL rule with its TypeScript twin. `at` is where it sits: '' (the resource), 'spec', 'spec.subgroups[]', ... */
export interface CelRule extends ValidationRule {
  at: string;
  /** The rule in TypeScript on the same (defaulted) values. Transition rules get the old value too. */
  holds(self: unknown, oldSelf?: unknown): boolean;
}

/** True for rules that compare with the stored object (evaluated on updates only). */
export function isTransitionRule(rule: ValidationRule): boolean {
  return /\boldSelf\b/.test(rule.rule);
}

function celRule<T>(at: string, rule: ValidationRule & { holds(self: T, oldSelf: T): boolean }): CelRule {
  return { ...rule, at, holds: rule.holds as (self: unknown, oldSelf?: unknown) => boolean };
}

type Subgroup = SubgroupSpec;
type Spec = GroupSpecValue;
type Storage = Spec['storage'];
type Tls = Spec['tls'];
type Timing = Spec['timing'];
type Limits = Spec['wireLimits'];

const sum = (values: number[]): number => values.reduce((total, value) => total + value, 0);
/** Shards of a subgroup with no reserved node at all: each needs minNodesPerShard members of its own. */
const unreservedShards = (s: Subgroup): number => s.shards - (s.reservedNodeIds ? s.reservedNodeIds.filter((r) => r.length > 0).length : 0);
const GROUP_NAME_PATTERN = '^[a-z]([-a-z0-9]*[a-z0-9])?$';

/**
 * The CEL rules. Costs stay small: every comprehension is bounded by the schema's maxItems (subgroups
 * <= 256, node-id lists <= 64) and nesting stays at most three deep at the spec level.
 */
export const CEL_RULES: readonly CelRule[] = [
  celRule<{ metadata: { name: string } }>('', {
    rule: `self.metadata.name.size() <= 52 && self.metadata.name.matches('${GROUP_NAME_PATTERN}')`,
    message: 'metadata.name must be at most 52 characters of lowercase letters, digits and "-", starting with a letter (pods, volumes and services are named after the group)',
    holds: (self) => self.metadata.name.length <= 52 && new RegExp(GROUP_NAME_PATTERN).test(self.metadata.name),
  }),

  // spec: members against the subgroups.
  celRule<Spec>('spec', {
    // (members < 1 is the schema's error already: these rules add no follow-on errors about it.)
    rule: 'self.members < 1 || self.subgroups.all(s, s.minNodesPerShard <= self.members)',
    message: 'members must be at least every subgroup\'s minNodesPerShard (a shard needs that many distinct members)',
    fieldPath: '.members',
    holds: (self) => self.members < 1 || self.subgroups.every((s) => s.minNodesPerShard <= self.members),
  }),
  celRule<Spec>('spec', {
    // (A subgroup whose minimum alone exceeds members is the rule above's error: no follow-on here.)
    rule: "self.members < 1 || self.subgroups.exists(s, s.minNodesPerShard > self.members) || self.subgroups.map(s, s.minNodesPerShard * (s.shards - (has(s.reservedNodeIds) ? s.reservedNodeIds.filter(r, r.size() > 0).size() : 0))).sum() <= self.members",
    message: 'members is too few for the subgroups: every shard without reservedNodeIds needs minNodesPerShard members of its own (a member that is reserved nowhere serves one shard of the whole group)',
    fieldPath: '.members',
    holds: (self) => self.members < 1 || self.subgroups.some((s) => s.minNodesPerShard > self.members) || sum(self.subgroups.map((s) => s.minNodesPerShard * unreservedShards(s))) <= self.members,
  }),
  celRule<Spec>('spec', {
    rule: 'self.members < 1 || self.subgroups.all(s, (!has(s.senderNodeIds) || s.senderNodeIds.all(n, n <= self.members)) && (!has(s.reservedNodeIds) || s.reservedNodeIds.all(r, r.all(n, n <= self.members))))',
    message: 'reservedNodeIds and senderNodeIds may only name members (node ids 1..members): raise members, or take the higher ids out of the lists first',
    fieldPath: '.subgroups',
    holds: (self) => self.members < 1 || self.subgroups.every((s) => (s.senderNodeIds ?? []).every((n) => n <= self.members) && (s.reservedNodeIds ?? []).every((r) => r.every((n) => n <= self.members))),
  }),
  celRule<Spec>('spec', {
    rule: '!has(self.wireLimits) || self.members <= self.wireLimits.membersMax',
    message: 'members must be at most wireLimits.membersMax',
    fieldPath: '.members',
    holds: (self) => self.members <= self.wireLimits.membersMax,
  }),
  celRule<Spec>('spec', {
    rule: '!has(self.wireLimits) || self.subgroups.map(s, s.shards).sum() <= self.wireLimits.shardsMax',
    message: 'the subgroups\' shards add up to more than wireLimits.shardsMax',
    fieldPath: '.subgroups',
    holds: (self) => sum(self.subgroups.map((s) => s.shards)) <= self.wireLimits.shardsMax,
  }),
  celRule<Spec>('spec', {
    rule: '!has(self.transport) || !has(oldSelf.transport) || self.transport == oldSelf.transport',
    message: 'transport is immutable: members restarted one at a time on another transport could not reach the others; re-create the group to change it',
    fieldPath: '.transport',
    reason: 'FieldValueForbidden',
    holds: (self, oldSelf) => self.transport === oldSelf.transport,
  }),
  celRule<Spec>('spec', {
    // new == old ++ (new names not in old): nothing removed, reordered or inserted; new subgroups at the end.
    // (Core CEL only: list indexing helpers such as indexOf or slice cost too much or are not everywhere.)
    rule: 'oldSelf.subgroups.map(o, o.name) + self.subgroups.map(s, s.name).filter(n, !(n in oldSelf.subgroups.map(o, o.name))) == self.subgroups.map(s, s.name)',
    message: 'subgroups can only be appended: existing subgroups cannot be removed, renamed or reordered (shard ids and the members\' logs depend on the order)',
    fieldPath: '.subgroups',
    reason: 'FieldValueForbidden',
    holds: (self, oldSelf) => {
      const before = oldSelf.subgroups.map((s) => s.name);
      const after = self.subgroups.map((s) => s.name);
      return JSON.stringify([...before, ...after.filter((name) => !before.includes(name))]) === JSON.stringify(after);
    },
  }),

  // One subgroup.
  celRule<Subgroup>('spec.subgroups[]', {
    // A transition rule on a list-map item: oldSelf is the stored subgroup with the same name.
    rule: 'self.type == oldSelf.type && self.shards == oldSelf.shards && self.deliveryMode == oldSelf.deliveryMode && self.persistent == oldSelf.persistent',
    message: 'a subgroup\'s type, shards, deliveryMode and persistent are immutable (its state and logs depend on them); add a new subgroup instead',
    reason: 'FieldValueForbidden',
    holds: (self, oldSelf) => self.type === oldSelf.type && self.shards === oldSelf.shards && self.deliveryMode === oldSelf.deliveryMode && self.persistent === oldSelf.persistent,
  }),
  celRule<Subgroup>('spec.subgroups[]', {
    rule: 'self.minNodesPerShard <= self.maxNodesPerShard',
    message: 'minNodesPerShard must be at most maxNodesPerShard',
    fieldPath: '.minNodesPerShard',
    holds: (self) => self.minNodesPerShard <= self.maxNodesPerShard,
  }),
  celRule<Subgroup>('spec.subgroups[]', {
    rule: "self.deliveryMode != 'raw' || !self.persistent",
    message: 'persistent must be false when deliveryMode is "raw" (raw messages are never persisted; persistent defaults to true)',
    fieldPath: '.persistent',
    holds: (self) => self.deliveryMode !== 'raw' || !self.persistent,
  }),
  celRule<Subgroup>('spec.subgroups[]', {
    rule: '!has(self.reservedNodeIds) || self.reservedNodeIds.size() <= self.shards',
    message: 'reservedNodeIds has more entries than shards (one list per shard)',
    fieldPath: '.reservedNodeIds',
    holds: (self) => self.reservedNodeIds === undefined || self.reservedNodeIds.length <= self.shards,
  }),
  celRule<Subgroup>('spec.subgroups[]', {
    rule: '!has(self.reservedNodeIds) || self.reservedNodeIds.all(r, r.size() <= self.maxNodesPerShard)',
    message: 'a reservedNodeIds entry lists more nodes than maxNodesPerShard',
    fieldPath: '.reservedNodeIds',
    holds: (self) => (self.reservedNodeIds ?? []).every((r) => r.length <= self.maxNodesPerShard),
  }),

  // Nested objects.
  celRule<Storage>('spec.storage', {
    rule: 'has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)',
    message: 'storage.storageClassName is immutable (existing volumes keep their class)',
    fieldPath: '.storageClassName',
    reason: 'FieldValueForbidden',
    holds: (self, oldSelf) => self.storageClassName === oldSelf.storageClassName,
  }),
  celRule<Storage>('spec.storage', {
    // The pattern already refuses what is not a quantity (isQuantity keeps CEL from adding an error of its own).
    rule: "!has(self.size) || !isQuantity(self.size) || !quantity(self.size).isLessThan(quantity('1Mi'))",
    message: 'storage.size must be at least 1Mi (each member keeps its logs and views there)',
    fieldPath: '.size',
    holds: (self) => self.size === undefined || !(parseQuantity(self.size) < MiB),
  }),
  celRule<Storage>('spec.storage', {
    rule: '!has(self.size) || !has(oldSelf.size) || !isQuantity(self.size) || !isQuantity(oldSelf.size) || !quantity(self.size).isLessThan(quantity(oldSelf.size))',
    message: 'storage.size cannot shrink: a volume can only grow (where its StorageClass allows expansion)',
    fieldPath: '.size',
    reason: 'FieldValueForbidden',
    holds: (self, oldSelf) => self.size === undefined || oldSelf.size === undefined || !(parseQuantity(self.size) < parseQuantity(oldSelf.size)),
  }),
  celRule<Tls>('spec.tls', {
    rule: 'has(self.secretName) == has(oldSelf.secretName) && (!has(self.secretName) || self.secretName == oldSelf.secretName)',
    message: 'tls.secretName is immutable: members restarted with another Secret could not authenticate the others (rotate keys or certificates inside the same Secret)',
    fieldPath: '.secretName',
    reason: 'FieldValueForbidden',
    holds: (self, oldSelf) => self.secretName === oldSelf.secretName,
  }),
  celRule<Tls>('spec.tls', {
    rule: "!has(self.certManager) || (self.mode == 'mutual' && !has(self.secretName))",
    message: 'tls.certManager needs mode "mutual" and no secretName (cert-manager fills the members\' Secrets)',
    fieldPath: '.certManager',
    holds: (self) => self.certManager === undefined || (self.mode === 'mutual' && self.secretName === undefined),
  }),
  celRule<Tls>('spec.tls', {
    rule: 'has(self.certManager) == has(oldSelf.certManager) && (!has(self.certManager) || self.certManager == oldSelf.certManager)',
    message: 'tls.certManager is immutable: members with certificates of another issuer could not authenticate the others',
    fieldPath: '.certManager',
    reason: 'FieldValueForbidden',
    holds: (self, oldSelf) => JSON.stringify(self.certManager ?? null) === JSON.stringify(oldSelf.certManager ?? null),
  }),
  celRule<Tls>('spec.tls', {
    rule: 'self.mode == oldSelf.mode',
    message: 'tls.mode is immutable: every member of a group must authenticate the same way',
    fieldPath: '.mode',
    reason: 'FieldValueForbidden',
    holds: (self, oldSelf) => self.mode === oldSelf.mode,
  }),
  celRule<Timing>('spec.timing', {
    rule: 'self.heartbeatMs >= self.tickMs',
    message: 'timing.heartbeatMs must be at least tickMs',
    fieldPath: '.heartbeatMs',
    holds: (self) => self.heartbeatMs >= self.tickMs,
  }),
  celRule<Timing>('spec.timing', {
    rule: 'self.suspectMs >= 2 * self.heartbeatMs',
    message: 'timing.suspectMs must be at least 2 x heartbeatMs (else a member is suspected after a single late heartbeat)',
    fieldPath: '.suspectMs',
    holds: (self) => self.suspectMs >= 2 * self.heartbeatMs,
  }),
  celRule<Limits>('spec.wireLimits', {
    rule: `self.frameBytesMax >= self.payloadBytesMax + ${FRAME_HEADER_BYTES_MIN}`,
    message: `wireLimits.frameBytesMax must be at least payloadBytesMax + ${FRAME_HEADER_BYTES_MIN} (room for the frame header)`,
    fieldPath: '.frameBytesMax',
    holds: (self) => self.frameBytesMax >= self.payloadBytesMax + FRAME_HEADER_BYTES_MIN,
  }),
  celRule<Limits>('spec.wireLimits', {
    rule: 'self == oldSelf',
    message: 'wireLimits is immutable: every member must enforce the same bounds, so they cannot change while members run',
    reason: 'FieldValueForbidden',
    holds: (self, oldSelf) => JSON.stringify(self) === JSON.stringify(oldSelf),
  }),
];

/** Kubernetes extensions that are not validations, by schema path. */
export const LIST_TYPES: Record<string, Pick<OpenApiSchema, 'x-kubernetes-list-type' | 'x-kubernetes-list-map-keys'>> = {
  // Keyed by name: the API server rejects two subgroups with one name, and server-side apply merges by name.
  'spec.subgroups': { 'x-kubernetes-list-type': 'map', 'x-kubernetes-list-map-keys': ['name'] },
  // A set: the API server rejects a node listed twice.
  'spec.subgroups[].senderNodeIds': { 'x-kubernetes-list-type': 'set' },
};

// ---------------------------------------------------------------------------------------------------
// JSON Schema -> structural OpenAPI v3.

type JsonSchema = Record<string, unknown>;

const DROPPED = new Set(['$schema', '$id', 'id', '$defs', 'definitions', 'propertyNames', 'title', '$comment']);
const UNSUPPORTED = ['anyOf', 'oneOf', 'allOf', 'not', 'if', 'then', 'else', 'patternProperties', 'dependentSchemas', 'uniqueItems', 'prefixItems', 'contains'];
const KNOWN_FORMATS = new Set(['int32', 'int64', 'float', 'double', 'byte', 'binary', 'date', 'date-time', 'duration', 'uuid', 'hostname', 'ipv4', 'ipv6', 'cidr', 'uri', 'email', 'password']);
const INT32 = { min: -(2 ** 31), max: 2 ** 31 - 1 };

export class SchemaConversionError extends Error {
  override readonly name = 'SchemaConversionError';
}

/** Throws unless `pattern` uses only syntax Go's RE2 (the API server's regexp engine) accepts. */
export function assertRe2Pattern(pattern: string, at: string): void {
  const problems: [RegExp, string][] = [
    [/\(\?[=!]/, 'lookahead'],
    [/\(\?<[=!]/, 'lookbehind'],
    [/\\[1-9]/, 'a backreference'],
    [/\(\?<[A-Za-z]/, 'a named group in JavaScript syntax (RE2 wants (?P<name>...))'],
    [/\\[cu]/, 'a JavaScript-only escape'],
  ];
  for (const [syntax, what] of problems) {
    if (syntax.test(pattern)) throw new SchemaConversionError(`${at}: pattern ${JSON.stringify(pattern)} uses ${what}, which RE2 does not support`);
  }
}

const KEY_ORDER = [
  'description', 'type', 'format', 'nullable', 'default', 'enum', 'pattern', 'minLength', 'maxLength', 'minimum', 'exclusiveMinimum',
  'maximum', 'exclusiveMaximum', 'minItems', 'maxItems', 'required', 'properties', 'additionalProperties', 'items',
  'x-kubernetes-list-type', 'x-kubernetes-list-map-keys', 'x-kubernetes-validations',
];

function ordered(schema: OpenApiSchema): OpenApiSchema {
  const out: Record<string, unknown> = {};
  for (const key of KEY_ORDER) if ((schema as Record<string, unknown>)[key] !== undefined) out[key] = (schema as Record<string, unknown>)[key];
  return out as OpenApiSchema;
}

export interface StructuralOptions {
  /** x-kubernetes-validations by path (the path of the root node is `root`). */
  rules?: readonly CelRule[];
  /**
   * Enums and patterns of strings become CEL rules, their rules pushed here (with TypeScript twins):
   * kube-apiserver then says "must be one of ..." / "must be <what the field is>" instead of a raw regex,
   * and an unknown enum value no longer blocks the CEL rules (which added "<nil>: some validation rules
   * were not checked" to every such refusal).
   */
  valueRules?: CelRule[];
  /** List types by path. */
  listTypes?: Record<string, Pick<OpenApiSchema, 'x-kubernetes-list-type' | 'x-kubernetes-list-map-keys'>>;
}

/**
 * Converts a JSON Schema from z.toJSONSchema (target openapi-3.0) into a structural schema rooted at
 * `root` (a path such as "spec"; children are "spec.storage", list items "spec.subgroups[]").
 * Throws SchemaConversionError for anything without a structural equivalent.
 */
export function toStructural(schema: JsonSchema, root: string, options: StructuralOptions = {}): OpenApiSchema {
  const defs = (schema.$defs ?? schema.definitions ?? {}) as Record<string, JsonSchema>;
  const resolving = new Set<string>();

  const convert = (node: JsonSchema, at: string): OpenApiSchema => {
    if (typeof node.$ref === 'string') {
      const name = /^#\/(?:\$defs|definitions)\/(.+)$/.exec(node.$ref)?.[1];
      const target = name === undefined ? undefined : defs[name];
      if (name === undefined || target === undefined) throw new SchemaConversionError(`${at}: unresolvable $ref ${node.$ref}`);
      if (resolving.has(name)) throw new SchemaConversionError(`${at}: recursive $ref ${node.$ref} (structural schemas cannot recurse)`);
      resolving.add(name);
      const { $ref: _ref, ...rest } = node;
      const resolved = convert({ ...target, ...rest }, at);
      resolving.delete(name);
      return resolved;
    }
    for (const keyword of UNSUPPORTED) {
      if (keyword in node) throw new SchemaConversionError(`${at}: ${keyword} has no structural equivalent`);
    }
    const out: OpenApiSchema = {};
    let noun: string | undefined;
    for (const [key, value] of Object.entries(node)) {
      if (DROPPED.has(key)) continue;
      if (key === 'x-noun') {
        noun = value as string;
        continue;
      }
      switch (key) {
        case 'type': {
          const types = Array.isArray(value) ? value.filter((t) => t !== 'null') : [value];
          if (Array.isArray(value) && value.includes('null')) out.nullable = true;
          if (types.length !== 1 || !['object', 'array', 'string', 'integer', 'number', 'boolean'].includes(types[0] as string)) {
            throw new SchemaConversionError(`${at}: type ${JSON.stringify(value)} is not one structural type`);
          }
          out.type = types[0] as OpenApiSchema['type'];
          break;
        }
        case 'const':
          out.enum = [value];
          break;
        case 'properties': {
          const properties: Record<string, OpenApiSchema> = {};
          for (const [name, child] of Object.entries(value as Record<string, JsonSchema>)) properties[name] = convert(child, `${at}.${name}`);
          out.properties = properties;
          break;
        }
        case 'items':
          if (Array.isArray(value)) throw new SchemaConversionError(`${at}: tuple items have no structural equivalent`);
          out.items = convert(value as JsonSchema, `${at}[]`);
          break;
        case 'additionalProperties':
          if (value === false) break; // unknown fields are pruned by the API server (and reported by strict field validation)
          if (value === true || typeof value !== 'object' || value === null) throw new SchemaConversionError(`${at}: additionalProperties ${JSON.stringify(value)} is not allowed`);
          out.additionalProperties = convert(value as JsonSchema, `${at}{}`);
          break;
        case 'pattern':
          assertRe2Pattern(value as string, at);
          out.pattern = value as string;
          break;
        case 'format':
          if (!KNOWN_FORMATS.has(value as string)) throw new SchemaConversionError(`${at}: format ${JSON.stringify(value)} is not one Kubernetes knows`);
          out.format = value as string;
          break;
        case 'description': case 'default': case 'enum': case 'nullable': case 'minLength': case 'maxLength': case 'minimum': case 'maximum':
        case 'exclusiveMinimum': case 'exclusiveMaximum': case 'minItems': case 'maxItems': case 'required':
        case 'x-kubernetes-list-type': case 'x-kubernetes-list-map-keys':
          (out as Record<string, unknown>)[key] = structuredClone(value);
          break;
        default:
          throw new SchemaConversionError(`${at}: keyword ${key} is not supported by this generator`);
      }
    }
    if (out.type === undefined) throw new SchemaConversionError(`${at}: has no type (structural schemas need one on every node)`);
    if (out.properties !== undefined && out.additionalProperties !== undefined) {
      throw new SchemaConversionError(`${at}: properties and additionalProperties cannot both be set`);
    }
    if (out.type === 'integer') {
      const fitsInt32 = out.minimum !== undefined && out.maximum !== undefined && out.minimum >= INT32.min && out.maximum <= INT32.max;
      out.format ??= fitsInt32 ? 'int32' : 'int64';
    }
    if (out.type === 'number') out.format ??= 'double';
    const valueRules: CelRule[] = [];
    if (options.valueRules !== undefined && out.type === 'string' && out.enum !== undefined) {
      const values = out.enum.map((value) => String(value));
      valueRules.push(celRule<unknown>(at, {
        rule: `self in [${values.map(celString).join(', ')}]`,
        message: `must be one of ${values.map((value) => JSON.stringify(value)).join(', ')}`,
        holds: (self) => typeof self !== 'string' || values.includes(self),
      }));
      delete out.enum;
      // Bounds the CEL cost estimator's idea of the string (a longer value is the schema's TooLong).
      out.maxLength = Math.max(64, ...values.map((value) => value.length));
    } else if (out.type === 'string' && out.enum !== undefined && out.maxLength === undefined) {
      // Bounds the CEL cost estimator's idea of the string's size (it assumes the largest request otherwise).
      out.maxLength = Math.max(...out.enum.map((value) => String(value).length));
    }
    if (options.valueRules !== undefined && out.type === 'string' && out.pattern !== undefined && noun !== undefined) {
      const pattern = out.pattern;
      const re = new RegExp(pattern);
      valueRules.push(celRule<unknown>(at, {
        rule: `self.matches(${celString(pattern)})`,
        message: `must be ${noun}`,
        holds: (self) => typeof self !== 'string' || re.test(self),
      }));
      delete out.pattern;
    }
    options.valueRules?.push(...valueRules);
    Object.assign(out, options.listTypes?.[at]);
    const rules = [...valueRules, ...(options.rules ?? []).filter((rule) => rule.at === at)].map(({ rule, message, fieldPath, reason }): ValidationRule => ({
      rule, message, ...(fieldPath !== undefined ? { fieldPath } : {}), ...(reason !== undefined ? { reason } : {}),
    }));
    if (rules.length > 0) out['x-kubernetes-validations'] = rules;
    return ordered(out);
  };
  return convert(schema, root);
}

// ---------------------------------------------------------------------------------------------------
// The CRD.

const jsonSchemaOf = (schema: z.ZodType): JsonSchema =>
  z.toJSONSchema(schema, { target: 'openapi-3.0', io: 'input', unrepresentable: 'throw' }) as JsonSchema;

/** A CEL string literal: raw (backslashes as written), in whichever quote the text does not hold. */
function celString(text: string): string {
  if (!text.includes("'")) return `r'${text}'`;
  if (!text.includes('"')) return `r"${text}"`;
  throw new SchemaConversionError(`${JSON.stringify(text)} holds both quotes; it cannot be a raw CEL string`);
}

let specValueRules: CelRule[] | null = null;

/** The CEL rules the spec's enums and patterns became (see StructuralOptions.valueRules), with their twins. */
export function valueCelRules(): readonly CelRule[] {
  if (specValueRules === null) derechoGroupSchema();
  return specValueRules!;
}

/** The openAPIV3Schema of the DerechoGroup resource (apiVersion, kind, metadata, spec, status). */
export function derechoGroupSchema(): OpenApiSchema {
  const structural = { rules: CEL_RULES, listTypes: LIST_TYPES };
  const valueRules: CelRule[] = [];
  const spec = toStructural(jsonSchemaOf(GroupSpec), 'spec', { ...structural, valueRules });
  specValueRules = valueRules;
  const status = toStructural(jsonSchemaOf(DerechoGroupStatus), 'status', structural);
  const rootRules = CEL_RULES.filter((rule) => rule.at === '').map(({ rule, message }) => ({ rule, message }));
  return ordered({
    description: DerechoGroupSpec.description ?? 'A Derecho group.',
    type: 'object',
    required: ['spec'],
    properties: {
      apiVersion: { description: 'APIVersion defines the versioned schema of this representation of an object.', type: 'string' },
      kind: { description: 'Kind is a string value representing the REST resource this object represents.', type: 'string' },
      metadata: { type: 'object' },
      spec: spec,
      status: status,
    },
    'x-kubernetes-validations': rootRules,
  });
}

export interface PrinterColumn {
  name: string;
  type: 'string' | 'integer' | 'number' | 'boolean' | 'date';
  jsonPath: string;
  description: string;
  priority?: number;
}

export const PRINTER_COLUMNS: readonly PrinterColumn[] = [
  { name: 'Ready', type: 'string', jsonPath: '.status.readyMembers', description: 'Ready members out of the members the group is to have.' },
  { name: 'Members', type: 'integer', jsonPath: '.spec.members', description: 'Desired members.', priority: 1 },
  { name: 'View', type: 'integer', jsonPath: '.status.view.id', description: 'Current view id.' },
  { name: 'Phase', type: 'string', jsonPath: '.status.phase', description: 'Summary of the group\'s state.' },
  { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp', description: 'Time since the group was created.' },
];

/** The CustomResourceDefinition object. */
export function derechoGroupCrd(): KubeObject {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: CRD_NAME, labels: { 'app.kubernetes.io/name': 'derecho', 'app.kubernetes.io/part-of': 'derecho-operator' } },
    spec: {
      group: CRD_GROUP,
      names: { kind: CRD_KIND, listKind: `${CRD_KIND}List`, plural: CRD_PLURAL, singular: CRD_SINGULAR, shortNames: [...CRD_SHORT_NAMES], categories: ['derecho'] },
      scope: 'Namespaced',
      versions: [
        {
          name: CRD_VERSION,
          served: true,
          storage: true,
          schema: { openAPIV3Schema: derechoGroupSchema() },
          subresources: {
            status: {},
            scale: { specReplicasPath: '.spec.members', statusReplicasPath: '.status.currentMembers', labelSelectorPath: '.status.selector' },
          },
          additionalPrinterColumns: PRINTER_COLUMNS.map((column) => ({ ...column })),
        },
      ],
    },
  };
}

const HEADER = [
  `# The ${CRD_KIND} CustomResourceDefinition (${CRD_API_VERSION}).`,
  '# Generated by `npm run gen:crd` (operator/src/gen-crd.ts) from node-agent/src/config/schema.ts (spec) and',
  '# operator/src/status.ts (status), with the CEL rules of operator/src/crd.ts. Do not edit by hand.',
  '',
].join('\n');

/**
 * YAML as Kubernetes tooling reads it: YAML 1.1 quoting (so "True", "on" or "yes" stay strings for
 * Go's YAML parsers) and no line folding.
 */
export function toYaml(value: unknown): string {
  return YAML.stringify(value, { lineWidth: 0, version: '1.1' });
}

/** The CRD file's content. */
export function renderCrdYaml(): string {
  return `${HEADER}${toYaml(derechoGroupCrd())}`;
}

// ---------------------------------------------------------------------------------------------------
// Evaluating the TypeScript twins of the CEL rules.

/** The values at a rule path ('' the resource, 'spec.subgroups[]' every subgroup, ...). */
function valuesAt(resource: unknown, at: string): unknown[] {
  let values: unknown[] = [resource];
  if (at === '') return values;
  for (const segment of at.split('.')) {
    const list = segment.endsWith('[]');
    const map = segment.endsWith('{}');
    const name = list || map ? segment.slice(0, -2) : segment;
    values = values.flatMap((value) => {
      const child = typeof value === 'object' && value !== null ? (value as Record<string, unknown>)[name] : undefined;
      if (child === undefined) return [];
      if (map) return typeof child === 'object' && child !== null ? Object.values(child) : [];
      return list ? (Array.isArray(child) ? child : []) : [child];
    });
  }
  return values;
}

/**
 * The CEL rules a resource breaks, evaluated with their TypeScript twins on defaulted values (what the
 * API server sees after defaulting). With `old`, transition rules run too (paths outside lists only).
 */
export function celViolations(resource: unknown, old?: unknown, rules: readonly CelRule[] = [...CEL_RULES, ...valueCelRules()]): { at: string; rule: string; message: string }[] {
  const violations: { at: string; rule: string; message: string }[] = [];
  for (const rule of rules) {
    const transition = isTransitionRule(rule);
    if (transition && old === undefined) continue;
    const values = valuesAt(resource, rule.at);
    const oldValues = transition ? valuesAt(old, rule.at) : [];
    // Items of a list-map are paired by their keys (as the API server correlates them); others by position.
    const keys = LIST_TYPES[rule.at.replace(/\[\]$/, '')]?.['x-kubernetes-list-map-keys'];
    const keyOf = (value: unknown): string => JSON.stringify(keys?.map((key) => (value as Record<string, unknown>)[key]));
    values.forEach((value, index) => {
      const oldValue = !transition ? undefined : keys !== undefined && rule.at.endsWith('[]') ? oldValues.find((candidate) => keyOf(candidate) === keyOf(value)) : oldValues[index];
      if (transition && oldValue === undefined) return;
      if (!rule.holds(value, oldValue)) violations.push({ at: rule.at, rule: rule.rule, message: rule.message });
    });
  }
  return violations;
}
