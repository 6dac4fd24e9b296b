// Error reporting for configuration: one problem per line, each naming where it came from (a file or an
// environment variable), the field path and the offending value. Bad input never produces a stack trace:
// callers print `error.message` of a ConfigError and exit.

import type { z } from 'zod';

/** Invalid configuration. `message` is every problem, one per line; `problems` holds the same lines. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(problems.join('\n'));
    this.problems = [...problems];
  }
}

/** A value as a message shows it: strings quoted, numbers plain, small structures as compact JSON. */
export function renderValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** A field path as a message shows it: `spec.subgroups[1].minNodesPerShard`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else {
      const key = String(segment);
      if (/^[A-Za-z0-9_$-]+$/.test(key)) out += out === '' ? key : `.${key}`;
      else out += `[${JSON.stringify(key)}]`;
    }
  }
  return out === '' ? '(top level)' : out;
}

/**
 * The error function every schema field uses. `noun` says what the field must be, e.g.
 * "an integer from 1 to 64". Missing value: `is required (an integer from 1 to 64)`;
 * wrong value: `0 is not an integer from 1 to 64`.
 */
export function expecting(noun: string): (issue: { input?: unknown }) => string {
  return (issue) => (issue.input === undefined ? `is required (${noun})` : `${renderValue(issue.input)} is not ${noun}`);
}

/** Where a problem is in its source, when known (1-based). */
export interface SourcePosition {
  line: number;
  col: number;
}

export interface IssueFormatOptions {
  /** The raw input that was validated (used to show values zod did not name). */
  input: unknown;
  /** Position of the value at `path` in the source text, if the source is a text with positions. */
  locate?: (path: readonly PropertyKey[]) => SourcePosition | undefined;
  /** A hint appended to "is required" problems, by path (e.g. the environment variable that sets it). */
  requiredHint?: (path: readonly PropertyKey[]) => string | undefined;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let value = input;
  for (const segment of path) {
    if (value === null || typeof value !== 'object') return undefined;
    value = (value as Record<PropertyKey, unknown>)[segment as string];
  }
  return value;
}

/** The message of one zod issue, without source and path. */
function issueText(issue: z.core.$ZodIssue, input: unknown): string {
  switch (issue.code) {
    case 'unrecognized_keys':
      return ''; // expanded per key by the caller
    case 'invalid_key': {
      const inner = issue.issues[0];
      return inner ? `key ${inner.message}` : `key ${renderValue(issue.path.at(-1))} is not allowed`;
    }
    default: {
      const message = issue.message;
      // Our own messages already start with the value or with "is required"; anything else (a zod
      // default message) gets the value in front of it.
      if (message.startsWith('is required') || message.startsWith('is ')) return message;
      const value = valueAt(input, issue.path);
      if (message.startsWith(renderValue(value))) return message;
      return value === undefined ? message : `${renderValue(value)}: ${message}`;
    }
  }
}

/**
 * Formats every issue of a failed parse as `<source>: <path>: <value> <problem>[ (line N)]`, one line
 * each. Unknown fields are reported one per key, with a suggestion when a known field is close.
 */
export function formatIssues(
  source: string,
  issues: readonly z.core.$ZodIssue[],
  options: IssueFormatOptions,
  knownKeysAt: (path: readonly PropertyKey[]) => readonly string[] = () => [],
): string[] {
  const lines: string[] = [];
  const where = (path: readonly PropertyKey[]): string => {
    const position = options.locate?.(path);
    return position ? ` (line ${position.line})` : '';
  };
  for (const issue of issues) {
    const path = issue.path;
    if (issue.code === 'unrecognized_keys') {
      const known = knownKeysAt(path);
      for (const key of issue.keys) {
        const keyPath = [...path, key];
        const suggestion = closest(key, known);
        const hint = suggestion !== undefined ? `; did you mean ${suggestion}?` : known.length > 0 ? ` (known fields: ${known.join(', ')})` : '';
        lines.push(`${source}: ${formatPath(keyPath)}: is not a known field${hint}${where(keyPath)}`);
      }
      continue;
    }
    let text = issueText(issue, options.input);
    if (text.startsWith('is required')) {
      const hint = options.requiredHint?.(path);
      if (hint !== undefined) text += `; ${hint}`;
    }
    lines.push(`${source}: ${formatPath(path)}: ${text}${where(path)}`);
  }
  return lines;
}

/** The known key nearest to `key` (edit distance at most 2, or a case-insensitive match). */
function closest(key: string, known: readonly string[]): string | undefined {
  let best: { name: string; distance: number } | undefined;
  for (const name of known) {
    const distance = name.toLowerCase() === key.toLowerCase() ? 0 : editDistance(key, name);
    if (distance <= 2 && (best === undefined || distance < best.distance)) best = { name, distance };
  }
  return best?.name;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}

interface SchemaDef {
  type: string;
  shape?: Record<string, unknown>;
  element?: unknown;
  innerType?: unknown;
  in?: unknown;
  valueType?: unknown;
}

function defOf(schema: unknown): SchemaDef | undefined {
  return (schema as { _zod?: { def?: SchemaDef } } | undefined)?._zod?.def;
}

/** The field names of the object schema found at `path` inside `schema` (empty if none). */
export function knownKeysAt(schema: z.ZodType, path: readonly PropertyKey[]): string[] {
  let current: unknown = schema;
  const unwrap = (): void => {
    for (let def = defOf(current); def !== undefined; def = defOf(current)) {
      if (def.innerType !== undefined) current = def.innerType;
      else if (def.type === 'pipe') current = def.in;
      else return;
    }
  };
  for (const segment of path) {
    unwrap();
    const def = defOf(current);
    if (def?.type === 'object' && def.shape) current = def.shape[String(segment)];
    else if (def?.type === 'array') current = def.element;
    else if (def?.type === 'record') current = def.valueType;
    else return [];
  }
  unwrap();
  const def = defOf(current);
  return def?.type === 'object' && def.shape ? Object.keys(def.shape) : [];
}
