// A small validator and defaulter for the structural OpenAPI subset crd.ts emits, behaving like the API
// server does before CEL runs: defaults first (recursively, into defaulted values too), then pruning of
// unknown fields (reported here, as strict field validation reports them), then the schema keywords.
// CEL rules are not evaluated here (see CEL_RULES' TypeScript twins).

import type { OpenApiSchema } from './crd.ts';

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** `value` with the schema's defaults applied (a copy; the input is not modified). */
export function applyDefaults(schema: OpenApiSchema, value: unknown): unknown {
  if (schema.type === 'object' && isObject(value)) {
    const out: Record<string, unknown> = { ...value };
    for (const [name, property] of Object.entries(schema.properties ?? {})) {
      if (out[name] === undefined && property.default !== undefined) out[name] = structuredClone(property.default);
      if (out[name] !== undefined) out[name] = applyDefaults(property, out[name]);
    }
    if (schema.additionalProperties !== undefined) {
      for (const [name, child] of Object.entries(out)) out[name] = applyDefaults(schema.additionalProperties, child);
    }
    return out;
  }
  if (schema.type === 'array' && Array.isArray(value) && schema.items !== undefined) {
    const items = schema.items;
    return value.map((item) => applyDefaults(items, item));
  }
  return value;
}

function typeOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'number';
  return typeof value;
}

/**
 * Problems of `value` against `schema`, one line each ("spec.members: must be at most 64"). Unknown
 * fields are problems too (the API server prunes them; kubectl's strict validation rejects them).
 */
export function validateOpenApi(schema: OpenApiSchema, value: unknown, at = ''): string[] {
  const problems: string[] = [];
  const here = at === '' ? '<root>' : at;
  if (value === null) {
    if (schema.nullable !== true) problems.push(`${here}: must not be null`);
    return problems;
  }
  const actual = typeOf(value);
  const typeOk = schema.type === undefined || actual === schema.type || (schema.type === 'number' && actual === 'integer');
  if (!typeOk) {
    problems.push(`${here}: must be of type ${schema.type}, got ${actual}`);
    return problems;
  }
  if (schema.enum !== undefined && !schema.enum.some((allowed) => JSON.stringify(allowed) === JSON.stringify(value))) {
    problems.push(`${here}: must be one of ${schema.enum.map((allowed) => JSON.stringify(allowed)).join(', ')}`);
  }
  if (typeof value === 'string') {
    // API server string lengths count characters (runes), as [...value] does.
    const length = [...value].length;
    if (schema.minLength !== undefined && length < schema.minLength) problems.push(`${here}: must be at least ${schema.minLength} characters`);
    if (schema.maxLength !== undefined && length > schema.maxLength) problems.push(`${here}: must be at most ${schema.maxLength} characters`);
    if (schema.pattern !== undefined && !new RegExp(schema.pattern, 'u').test(value)) problems.push(`${here}: must match ${schema.pattern}`);
    if (schema.format === 'date-time' && Number.isNaN(Date.parse(value))) problems.push(`${here}: must be a date-time`);
  }
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && (schema.exclusiveMinimum ? value <= schema.minimum : value < schema.minimum)) problems.push(`${here}: must be ${schema.exclusiveMinimum ? 'greater than' : 'at least'} ${schema.minimum}`);
    if (schema.maximum !== undefined && (schema.exclusiveMaximum ? value >= schema.maximum : value > schema.maximum)) problems.push(`${here}: must be ${schema.exclusiveMaximum ? 'less than' : 'at most'} ${schema.maximum}`);
    if (schema.format === 'int32' && (value < -(2 ** 31) || value > 2 ** 31 - 1)) problems.push(`${here}: must fit in int32`);
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) problems.push(`${here}: must have at least ${schema.minItems} items`);
    if (schema.maxItems !== undefined && value.length > schema.maxItems) problems.push(`${here}: must have at most ${schema.maxItems} items`);
    const listType = schema['x-kubernetes-list-type'];
    if (listType === 'set' || listType === 'map') {
      const keys = schema['x-kubernetes-list-map-keys'] ?? [];
      const seen = new Set<string>();
      value.forEach((item, index) => {
        const key = listType === 'set' ? JSON.stringify(item) : JSON.stringify(keys.map((name) => (isObject(item) ? item[name] : undefined)));
        if (seen.has(key)) problems.push(`${at}[${index}]: duplicate value ${key}`);
        seen.add(key);
      });
    }
    if (schema.items !== undefined) value.forEach((item, index) => problems.push(...validateOpenApi(schema.items!, item, `${at}[${index}]`)));
  }
  if (isObject(value)) {
    for (const name of schema.required ?? []) {
      if (value[name] === undefined) problems.push(`${at === '' ? name : `${at}.${name}`}: is required`);
    }
    for (const [name, child] of Object.entries(value)) {
      const path = at === '' ? name : `${at}.${name}`;
      const property = schema.properties?.[name] ?? schema.additionalProperties;
      if (property === undefined) {
        if (schema.properties !== undefined) problems.push(`${path}: unknown field`);
        continue;
      }
      if (child === undefined) continue;
      problems.push(...validateOpenApi(property, child, path));
    }
  }
  return problems;
}

/** Every node of a schema with its path (root first), for structural checks. */
export function* schemaNodes(schema: OpenApiSchema, at = ''): Generator<[string, OpenApiSchema]> {
  yield [at, schema];
  for (const [name, property] of Object.entries(schema.properties ?? {})) yield* schemaNodes(property, at === '' ? name : `${at}.${name}`);
  if (schema.items !== undefined) yield* schemaNodes(schema.items, `${at}[]`);
  if (schema.additionalProperties !== undefined) yield* schemaNodes(schema.additionalProperties, `${at}{}`);
}
