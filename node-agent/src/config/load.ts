// Loading configuration: DerechoGroup manifests (YAML) and the agent's configuration (a YAML/JSON file
// overridden by DERECHO_* environment variables). Every problem becomes one line of a ConfigError naming
// the source (file or environment variable), the field path and the offending value.

import { readFileSync } from 'node:fs';
import path from 'node:path';
import YAML, { LineCounter, isMap, isPair, isScalar, isSeq } from 'yaml';
import type { z } from 'zod';
import { ConfigError, formatIssues, knownKeysAt, renderValue } from './errors.ts';
import type { SourcePosition } from './errors.ts';
import { API_VERSION, AgentApi, AgentAuth, AgentConfig, DerechoGroupSpec, KIND, ListenSpec } from './schema.ts';
import type { DerechoGroupSpec as DerechoGroupSpecType, AgentConfig as AgentConfigType } from './schema.ts';

// ---------------------------------------------------------------------------------------------------
// YAML with positions.

interface ParsedText {
  value: unknown;
  /** Line/column of the node at `path`, if it is in the text. */
  locate: (path: readonly PropertyKey[]) => SourcePosition | undefined;
}

function firstLine(message: string): string {
  const line = message.split('\n')[0] ?? message;
  const at = line.lastIndexOf(' at line ');
  return (at >= 0 ? line.slice(0, at) : line).replace(/:$/, '');
}

/** Parses one YAML (or JSON) document; syntax errors become a ConfigError naming line and column. */
function parseYaml(text: string, source: string, what: string): ParsedText {
  const lineCounter = new LineCounter();
  const documents = YAML.parseAllDocuments(text, { lineCounter, uniqueKeys: true });
  const list = Array.isArray(documents) ? documents : [];
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const document of list) {
    for (const error of document.errors) {
      const position = error.linePos?.[0];
      const where = position ? `line ${position.line}, column ${position.col}: ` : '';
      // One error per position: the parser often adds consequences of the first one at the same place.
      if (seen.has(where)) continue;
      seen.add(where);
      problems.push(`${source}: ${where}YAML syntax error: ${firstLine(error.message)}`);
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  const nonEmpty = list.filter((document) => document.contents !== null);
  if (nonEmpty.length === 0) throw new ConfigError([`${source}: is empty; expected ${what}`]);
  if (nonEmpty.length > 1) {
    const second = nonEmpty[1]!.contents?.range?.[0];
    const line = second === undefined ? '' : ` (the second starts at line ${lineCounter.linePos(second).line})`;
    throw new ConfigError([`${source}: holds ${nonEmpty.length} YAML documents${line}; expected one, ${what}`]);
  }
  const document = nonEmpty[0]!;
  let value: unknown;
  try {
    value = document.toJS();
  } catch (error) {
    throw new ConfigError([`${source}: cannot be read as data: ${error instanceof Error ? error.message : String(error)}`]);
  }
  const locate = (fieldPath: readonly PropertyKey[]): SourcePosition | undefined => {
    let node: unknown = document.contents;
    let key: unknown;
    for (const segment of fieldPath) {
      if (isMap(node)) {
        const pair = node.items.find((item) => isPair(item) && String(isScalar(item.key) ? item.key.value : item.key) === String(segment));
        if (pair === undefined) return undefined;
        key = pair.key;
        node = pair.value;
      } else if (isSeq(node) && typeof segment === 'number') {
        key = undefined;
        node = node.items[segment];
      } else {
        return undefined;
      }
    }
    // A scalar is shown where its value is; a mapping, a list or a missing value where its key is.
    const shown = (isMap(node) || isSeq(node) || node === null || node === undefined) && key !== undefined ? key : node;
    const offset = (shown as { range?: [number, number, number] } | null | undefined)?.range?.[0];
    return offset === undefined ? undefined : lineCounter.linePos(offset);
  };
  return { value, locate };
}

function readText(file: string, what: string, source: string = file): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : error instanceof Error ? error.message : String(error);
    throw new ConfigError([`${source}: cannot read ${what}: ${reason}`]);
  }
}

// ---------------------------------------------------------------------------------------------------
// DerechoGroup manifests.

const MANIFEST = `a DerechoGroup manifest (apiVersion: ${API_VERSION}, kind: ${KIND})`;

/** Parses and validates a DerechoGroup manifest. `source` names it in errors (usually the file path). */
export function parseGroupManifest(text: string, source: string): DerechoGroupSpecType {
  const parsed = parseYaml(text, source, MANIFEST);
  const result = DerechoGroupSpec.safeParse(parsed.value);
  if (result.success) return result.data;
  throw new ConfigError(formatIssues(source, result.error.issues, { input: parsed.value, locate: parsed.locate }, (at) => knownKeysAt(DerechoGroupSpec, at)));
}

/** Reads, parses and validates a DerechoGroup manifest file. `source` names it in errors (default: `file`). */
export function loadGroupManifest(file: string, source: string = file): DerechoGroupSpecType {
  return parseGroupManifest(readText(file, 'the group manifest', source), source);
}

// ---------------------------------------------------------------------------------------------------
// The agent's configuration.

type EnvKind = 'int' | 'string' | 'peers' | 'bool';

interface EnvSetting {
  name: string;
  path: readonly string[];
  kind: EnvKind;
  schema: z.ZodType;
}

/** The environment variables loadAgentConfig reads, and the field each one sets. */
export const AGENT_ENV: readonly EnvSetting[] = [
  { name: 'DERECHO_NODE_ID', path: ['nodeId'], kind: 'int', schema: AgentConfig.shape.nodeId },
  { name: 'DERECHO_GROUP_NAME', path: ['groupName'], kind: 'string', schema: AgentConfig.shape.groupName },
  { name: 'DERECHO_GROUP_FILE', path: ['groupFile'], kind: 'string', schema: AgentConfig.shape.groupFile },
  { name: 'DERECHO_LISTEN_HOST', path: ['listen', 'host'], kind: 'string', schema: ListenSpec.shape.host },
  { name: 'DERECHO_PEER_PORT', path: ['listen', 'peerPort'], kind: 'int', schema: ListenSpec.shape.peerPort },
  { name: 'DERECHO_HTTP_PORT', path: ['listen', 'httpPort'], kind: 'int', schema: ListenSpec.shape.httpPort },
  { name: 'DERECHO_DATA_DIR', path: ['dataDir'], kind: 'string', schema: AgentConfig.shape.dataDir },
  { name: 'DERECHO_PEERS', path: ['peers'], kind: 'peers', schema: AgentConfig.shape.peers },
  { name: 'DERECHO_HMAC_SECRET_FILE', path: ['auth', 'hmacSecretFile'], kind: 'string', schema: AgentAuth.shape.hmacSecretFile },
  { name: 'DERECHO_TLS_CERT_FILE', path: ['auth', 'tlsCertFile'], kind: 'string', schema: AgentAuth.shape.tlsCertFile },
  { name: 'DERECHO_TLS_KEY_FILE', path: ['auth', 'tlsKeyFile'], kind: 'string', schema: AgentAuth.shape.tlsKeyFile },
  { name: 'DERECHO_TLS_CA_FILE', path: ['auth', 'tlsCaFile'], kind: 'string', schema: AgentAuth.shape.tlsCaFile },
  { name: 'DERECHO_API_TLS_CERT_FILE', path: ['api', 'tlsCertFile'], kind: 'string', schema: AgentApi.shape.tlsCertFile },
  { name: 'DERECHO_API_TLS_KEY_FILE', path: ['api', 'tlsKeyFile'], kind: 'string', schema: AgentApi.shape.tlsKeyFile },
  { name: 'DERECHO_API_TOKEN_FILE', path: ['api', 'tokenFile'], kind: 'string', schema: AgentApi.shape.tokenFile },
  { name: 'DERECHO_LOG_LEVEL', path: ['logLevel'], kind: 'string', schema: AgentConfig.shape.logLevel },
  { name: 'DERECHO_BENCH_API', path: ['benchApi'], kind: 'bool', schema: AgentConfig.shape.benchApi },
];

const PEERS_EXAMPLE = '1=127.0.0.1:7001,2=127.0.0.1:7002';

/** The agent configuration with its group manifest loaded and checked against it. */
export type ResolvedAgentConfig = Omit<AgentConfigType, 'group' | 'groupName'> & {
  groupName: string;
  group: DerechoGroupSpecType;
};

export interface LoadAgentConfigOptions {
  /** A YAML or JSON file with the agent configuration; optional when the environment gives everything. */
  file?: string;
  /** Usually process.env. Empty values count as unset. */
  env: Record<string, string | undefined>;
  /** Base of relative paths that do not come from the file (default: process.cwd()). */
  cwd?: string;
}

function startsWith(fieldPath: readonly PropertyKey[], prefix: readonly PropertyKey[]): boolean {
  return prefix.every((segment, index) => String(fieldPath[index]) === segment);
}

function setAt(target: Record<string, unknown>, fieldPath: readonly string[], value: unknown): void {
  let node = target;
  for (const segment of fieldPath.slice(0, -1)) {
    const next = node[segment];
    if (next === null || typeof next !== 'object' || Array.isArray(next)) node[segment] = {};
    node = node[segment] as Record<string, unknown>;
  }
  node[fieldPath.at(-1)!] = value;
}

/** Parses DERECHO_PEERS ("1=host:port,2=host:port"); problems are pushed, valid entries returned. */
function parsePeersEnv(raw: string, problems: string[]): Record<string, string> {
  const peers: Record<string, string> = {};
  const source = 'environment DERECHO_PEERS';
  const peerSchema = AgentConfig.shape.peers.unwrap();
  for (const entry of raw.split(',').map((part) => part.trim()).filter((part) => part !== '')) {
    const equals = entry.indexOf('=');
    if (equals < 0) {
      problems.push(`${source}: ${renderValue(entry)} is not an entry "<node id>=<host>:<port>" (e.g. ${PEERS_EXAMPLE})`);
      continue;
    }
    const nodeId = entry.slice(0, equals).trim();
    const address = entry.slice(equals + 1).trim();
    const result = peerSchema.safeParse({ [nodeId]: address });
    if (!result.success) {
      for (const issue of result.error.issues) {
        const message = issue.code === 'invalid_key' ? (issue.issues[0]?.message ?? issue.message) : issue.message;
        problems.push(`${source}: entry ${renderValue(entry)}: ${message}`);
      }
      continue;
    }
    if (nodeId in peers) {
      problems.push(`${source}: entry ${renderValue(entry)}: node ${nodeId} is listed twice`);
      continue;
    }
    peers[nodeId] = address;
  }
  return peers;
}

function displayPath(file: string, cwd: string): string {
  const relative = path.relative(cwd, file);
  return relative !== '' && !relative.startsWith('..') && !path.isAbsolute(relative) ? relative : file;
}

/**
 * Loads the agent's configuration: `file` (YAML or JSON) if given, then every DERECHO_* variable of
 * `env` (see AGENT_ENV) on top; validates it, loads the group manifest (groupFile, resolved from the
 * file's directory, or from cwd when it comes from DERECHO_GROUP_FILE) and checks the two agree.
 * Throws a ConfigError listing every problem.
 */
export function loadAgentConfig(options: LoadAgentConfigOptions): ResolvedAgentConfig {
  const cwd = options.cwd ?? process.cwd();
  const source = options.file ?? 'agent config';
  const problems: string[] = [];

  let fileValue: Record<string, unknown> = {};
  let locate: ParsedText['locate'] | undefined;
  if (options.file !== undefined) {
    const text = readText(path.resolve(cwd, options.file), 'the agent config', options.file);
    if (text.trim() !== '') {
      const parsed = parseYaml(text, options.file, 'an agent configuration');
      locate = parsed.locate;
      if (parsed.value === null || typeof parsed.value !== 'object' || Array.isArray(parsed.value)) {
        throw new ConfigError([`${options.file}: ${renderValue(parsed.value)} is not an agent configuration (a mapping with nodeId, groupFile, listen, ...)`]);
      }
      fileValue = parsed.value as Record<string, unknown>;
    }
  }

  // Environment overrides, each validated on its own so its errors name the variable.
  const merged = structuredClone(fileValue);
  const fromEnv: EnvSetting[] = [];
  for (const setting of AGENT_ENV) {
    const raw = options.env[setting.name];
    if (raw === undefined || raw.trim() === '') continue;
    fromEnv.push(setting);
    const trimmed = raw.trim();
    const before = problems.length;
    let value: unknown;
    if (setting.kind === 'peers') value = parsePeersEnv(trimmed, problems);
    else if (setting.kind === 'int') value = /^[+-]?[0-9]+$/.test(trimmed) ? Number(trimmed) : trimmed;
    else if (setting.kind === 'bool') value = trimmed === 'true' || trimmed === '1' ? true : trimmed === 'false' || trimmed === '0' ? false : trimmed;
    else value = trimmed;
    if (setting.kind !== 'peers') {
      const result = setting.schema.safeParse(value);
      if (!result.success) {
        for (const issue of result.error.issues) problems.push(`environment ${setting.name}: ${issue.message}`);
      }
    }
    if (problems.length === before) setAt(merged, setting.path, value);
  }
  const groupFileFromEnv = fromEnv.some((setting) => setting.name === 'DERECHO_GROUP_FILE');
  if (groupFileFromEnv) delete merged.group;

  const result = AgentConfig.safeParse(merged);
  if (!result.success) {
    const issues = result.error.issues.filter((issue) => !fromEnv.some((setting) => startsWith(issue.path, setting.path)));
    const requiredHint = (fieldPath: readonly PropertyKey[]): string | undefined => {
      const setting = AGENT_ENV.find((candidate) => candidate.path.length === fieldPath.length && startsWith(fieldPath, candidate.path));
      return setting === undefined ? undefined : `or set ${setting.name}`;
    };
    problems.push(...formatIssues(source, issues, { input: merged, ...(locate ? { locate } : {}), requiredHint }, (at) => knownKeysAt(AgentConfig, at)));
  }
  if (problems.length > 0 || !result.success) throw new ConfigError(problems);
  const config = result.data;

  // The group manifest.
  let group: DerechoGroupSpecType;
  let groupFile = config.groupFile;
  if (config.group !== undefined) {
    group = config.group;
  } else {
    const base = options.file !== undefined && !groupFileFromEnv ? path.dirname(path.resolve(cwd, options.file)) : cwd;
    groupFile = path.resolve(base, config.groupFile!);
    group = loadGroupManifest(groupFile, displayPath(groupFile, cwd));
  }

  // The configuration and the group must agree.
  const groupSource = groupFile !== undefined ? displayPath(groupFile, cwd) : `${source} (inline group)`;
  const sourceOf = (fieldPath: readonly string[]): string => {
    const setting = fromEnv.find((candidate) => startsWith(fieldPath, candidate.path));
    return setting !== undefined ? `environment ${setting.name}` : `${source}: ${fieldPath.join('.')}`;
  };
  const envHint = (fieldPath: readonly string[]): string => {
    const setting = AGENT_ENV.find((candidate) => candidate.path.join('.') === fieldPath.join('.'));
    return setting !== undefined ? `; or set ${setting.name}` : '';
  };
  if (config.groupName !== undefined && config.groupName !== group.metadata.name) {
    problems.push(`${sourceOf(['groupName'])}: ${renderValue(config.groupName)} does not match metadata.name ${renderValue(group.metadata.name)} of ${groupSource}`);
  }
  const mode = group.spec.tls.mode;
  const required: (keyof AgentConfigType['auth'])[] = mode === 'hmac' ? ['hmacSecretFile'] : ['tlsCertFile', 'tlsKeyFile', 'tlsCaFile'];
  for (const key of required) {
    if (config.auth[key] === undefined) {
      problems.push(`${source}: auth.${key}: is required because spec.tls.mode is ${renderValue(mode)} in ${groupSource}${envHint(['auth', key])}`);
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);

  const { group: _inline, groupName: _name, ...rest } = config;
  return { ...rest, ...(groupFile !== undefined ? { groupFile } : {}), groupName: group.metadata.name, group };
}
