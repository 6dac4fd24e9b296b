import test from 'ava';
import type { ExecutionContext } from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError } from './errors.ts';
import { loadAgentConfig, loadGroupManifest, parseGroupManifest } from './load.ts';
import { toReplicaConfig } from './schema.ts';

const EXAMPLE_TEXT = readFileSync(fileURLToPath(new URL('../../../examples/kv-group.yaml', import.meta.url)), 'utf8');

/** A manifest whose spec is `specLines` (YAML, indented by two spaces). Line 6 is the first spec line. */
function manifestText(specLines: string): string {
  return ['apiVersion: derecho.dev/v1alpha1', 'kind: DerechoGroup', 'metadata:', '  name: bad', 'spec:', specLines.replace(/^\n/, '').trimEnd()].join('\n') + '\n';
}

function configProblems(t: ExecutionContext, run: () => unknown): string[] {
  const error = t.throws(run, { instanceOf: ConfigError });
  // Never a stack trace or an internal error text: every line names its source.
  for (const line of error?.problems ?? []) t.notRegex(line, /^\s+at |\bZodError\b|\[object Object\]/);
  t.is(error?.message, error?.problems.join('\n'));
  return [...(error?.problems ?? [])];
}

/** 1-based line of the first line of `text` containing `needle`. */
function lineOf(text: string, needle: string): number {
  return text.split('\n').findIndex((line) => line.includes(needle)) + 1;
}

function tempDir(): string {
  return mkdtempSync(path.join(tmpdir(), 'derecho-config-'));
}

// ---------------------------------------------------------------------------------------------------
// DerechoGroup manifests

const SUBGROUPS_OK = `
  members: 3
  subgroups:
    - name: a
      type: kv
      minNodesPerShard: 1
      maxNodesPerShard: 3`;

const BAD_MANIFESTS: { name: string; spec: string; expected: string[] }[] = [
  {
    name: 'min > max',
    spec: `${SUBGROUPS_OK}
    - name: b
      type: log
      minNodesPerShard: 3
      maxNodesPerShard: 2`,
    expected: ['examples/bad.yaml: spec.subgroups[1].minNodesPerShard: 3 is greater than maxNodesPerShard 2 (line 14)'],
  },
  {
    name: 'too few members',
    spec: `
  members: 3
  subgroups:
    - name: kv
      type: kv
      shards: 2
      minNodesPerShard: 1
      maxNodesPerShard: 2
    - name: events
      type: log
      minNodesPerShard: 2
      maxNodesPerShard: 3`,
    expected: [
      'examples/bad.yaml: spec.members: 3 is too few members for the subgroups: subgroup "events" shard 0 needs 2 nodes but only 1 can be assigned (3 members, 2 already serving other shards); these subgroups need at least 4 members (or overlap subgroups with reservedNodeIds) (line 6)',
    ],
  },
  {
    name: 'duplicate names',
    spec: `${SUBGROUPS_OK}
    - name: a
      type: log
      minNodesPerShard: 1
      maxNodesPerShard: 1`,
    expected: ['examples/bad.yaml: spec.subgroups[1].name: "a" is already the name of subgroups[0]; subgroup names must be unique (line 12)'],
  },
  {
    name: 'raw and persistent (explicit)',
    spec: `${SUBGROUPS_OK}
      deliveryMode: raw
      persistent: true`,
    expected: ['examples/bad.yaml: spec.subgroups[0].persistent: true is not allowed with deliveryMode "raw" (raw messages are never persisted); set persistent: false (it defaults to true) (line 13)'],
  },
  {
    name: 'raw and persistent (by default)',
    spec: `${SUBGROUPS_OK}
      deliveryMode: raw`,
    expected: ['examples/bad.yaml: spec.subgroups[0].persistent: true is not allowed with deliveryMode "raw" (raw messages are never persisted); set persistent: false (it defaults to true)'],
  },
  {
    name: 'bad quantity',
    spec: `${SUBGROUPS_OK}
  storage:
    size: 10GB`,
    expected: ['examples/bad.yaml: spec.storage.size: "10GB" is not a storage size of at least 1Mi (a quantity such as 512Mi, 1Gi or 10G) (line 13)'],
  },
  {
    name: 'unknown transport',
    spec: `${SUBGROUPS_OK}
  transport: udp`,
    expected: ['examples/bad.yaml: spec.transport: "udp" is not one of "tcp", "rdma", "auto" (line 12)'],
  },
  {
    name: 'unknown field',
    spec: `${SUBGROUPS_OK}
  transprot: tcp`,
    expected: ['examples/bad.yaml: spec.transprot: is not a known field; did you mean transport? (line 12)'],
  },
  {
    name: 'several problems at once, in document order of the schema',
    spec: `
  members: 100
  subgroups:
    - name: kv
      type: kv
      minNodesPerShard: two
      maxNodesPerShard: 2
  tls:
    mode: plain`,
    expected: [
      'examples/bad.yaml: spec.members: 100 is not a member count from 1 to 64 (line 6)',
      'examples/bad.yaml: spec.subgroups[0].minNodesPerShard: "two" is not a node count from 1 to 64 (line 10)',
      'examples/bad.yaml: spec.tls.mode: "plain" is not one of "mutual", "hmac" (line 13)',
    ],
  },
];

for (const { name, spec, expected } of BAD_MANIFESTS) {
  test(`bad manifest: ${name}`, (t) => {
    t.deepEqual(configProblems(t, () => parseGroupManifest(manifestText(spec), 'examples/bad.yaml')), expected);
  });
}

test('YAML syntax errors name line and column', (t) => {
  t.deepEqual(configProblems(t, () => parseGroupManifest(manifestText(`${SUBGROUPS_OK}\n  resources: { requests: { cpu: "1" }\n  fsync: os`), 'examples/bad.yaml')), [
    'examples/bad.yaml: line 13, column 3: YAML syntax error: Flow map in block collection must be sufficiently indented and end with a }',
  ]);
  t.deepEqual(configProblems(t, () => parseGroupManifest(manifestText(`${SUBGROUPS_OK}\n  members: 4`), 'examples/bad.yaml')), [
    'examples/bad.yaml: line 12, column 3: YAML syntax error: Map keys must be unique',
  ]);
  t.deepEqual(configProblems(t, () => parseGroupManifest('kind: DerechoGroup\nspec:\n  members: "3\n', 'x.yaml')), [
    'x.yaml: line 4, column 1: YAML syntax error: Missing closing "quote',
  ]);
});

test('empty, multi-document and non-mapping manifests', (t) => {
  t.deepEqual(configProblems(t, () => parseGroupManifest('# nothing\n', 'x.yaml')), ['x.yaml: is empty; expected a DerechoGroup manifest (apiVersion: derecho.dev/v1alpha1, kind: DerechoGroup)']);
  t.deepEqual(configProblems(t, () => parseGroupManifest(`${EXAMPLE_TEXT}---\n${EXAMPLE_TEXT}`, 'x.yaml')), [
    `x.yaml: holds 2 YAML documents (the second starts at line ${EXAMPLE_TEXT.split('\n').length + lineOf(EXAMPLE_TEXT, 'apiVersion:')}); expected one, a DerechoGroup manifest (apiVersion: derecho.dev/v1alpha1, kind: DerechoGroup)`,
  ]);
  t.deepEqual(configProblems(t, () => parseGroupManifest('- a\n- b\n', 'x.yaml')), ['x.yaml: (top level): ["a","b"] is not a DerechoGroup manifest (an object with apiVersion, kind, metadata and spec) (line 1)']);
});

test('loadGroupManifest reads a file and names it in errors', (t) => {
  const dir = tempDir();
  writeFileSync(path.join(dir, 'ok.yaml'), EXAMPLE_TEXT);
  t.is(loadGroupManifest(path.join(dir, 'ok.yaml')).metadata.name, 'kv-demo');
  t.deepEqual(configProblems(t, () => loadGroupManifest(path.join(dir, 'missing.yaml'), 'missing.yaml')), ['missing.yaml: cannot read the group manifest: no such file']);
});

// ---------------------------------------------------------------------------------------------------
// The agent's configuration

function agentDir(agentYaml: string, groupYaml = EXAMPLE_TEXT): string {
  const dir = tempDir();
  writeFileSync(path.join(dir, 'group.yaml'), groupYaml);
  writeFileSync(path.join(dir, 'agent.yaml'), agentYaml);
  return dir;
}

const AGENT_YAML = `# agent 1 of the example
nodeId: 1
groupFile: group.yaml
listen:
  host: 127.0.0.1
  peerPort: 7001
  httpPort: 8001
dataDir: /tmp/derecho/1
peers:
  1: 127.0.0.1:7001
  2: 127.0.0.1:7002
  3: 127.0.0.1:7003
auth:
  hmacSecretFile: /tmp/derecho/hmac.key
`;

test('agent config from a file, with the group manifest resolved next to it', (t) => {
  const dir = agentDir(AGENT_YAML);
  const config = loadAgentConfig({ file: 'agent.yaml', env: {}, cwd: dir });
  t.is(config.nodeId, 1);
  t.is(config.groupName, 'kv-demo');
  t.is(config.groupFile, path.join(dir, 'group.yaml'));
  t.is(config.group.spec.members, 3);
  t.deepEqual(config.listen, { host: '127.0.0.1', peerPort: 7001, httpPort: 8001 });
  t.deepEqual(config.peers, { '1': '127.0.0.1:7001', '2': '127.0.0.1:7002', '3': '127.0.0.1:7003' });
  t.is(config.logLevel, 'info');
  t.is(toReplicaConfig(config, config.group).heartbeatTicks, 2);
});

test('DERECHO_* variables override the file; empty ones are ignored', (t) => {
  const dir = agentDir(AGENT_YAML);
  const config = loadAgentConfig({
    file: 'agent.yaml',
    cwd: dir,
    env: {
      DERECHO_NODE_ID: '2',
      DERECHO_PEER_PORT: '7002',
      DERECHO_HTTP_PORT: ' 8002 ',
      DERECHO_DATA_DIR: '/tmp/derecho/2',
      DERECHO_PEERS: '1=127.0.0.1:7001, 2=127.0.0.1:7002,3=[::1]:7003,',
      DERECHO_LOG_LEVEL: 'debug',
      DERECHO_LISTEN_HOST: '',
      UNRELATED: 'x',
    },
  });
  t.is(config.nodeId, 2);
  t.deepEqual(config.listen, { host: '127.0.0.1', peerPort: 7002, httpPort: 8002 });
  t.is(config.dataDir, '/tmp/derecho/2');
  t.deepEqual(config.peers, { '1': '127.0.0.1:7001', '2': '127.0.0.1:7002', '3': '[::1]:7003' });
  t.is(config.logLevel, 'debug');
});

test('environment only: DERECHO_GROUP_FILE is resolved from cwd, defaults fill the rest', (t) => {
  const dir = agentDir('');
  const config = loadAgentConfig({ cwd: dir, env: { DERECHO_NODE_ID: '3', DERECHO_GROUP_FILE: 'group.yaml', DERECHO_HMAC_SECRET_FILE: 'hmac.key' } });
  t.is(config.nodeId, 3);
  t.is(config.groupFile, path.join(dir, 'group.yaml'));
  t.deepEqual(config.listen, { host: '0.0.0.0', peerPort: 7000, httpPort: 8080 });
  t.is(config.dataDir, '/var/lib/derecho');
  t.deepEqual(config.peers, {});
  t.deepEqual(config.auth, { hmacSecretFile: 'hmac.key' });
});

test('environment errors name the variable and the value', (t) => {
  const dir = agentDir(AGENT_YAML);
  const lines = configProblems(t, () =>
    loadAgentConfig({
      file: 'agent.yaml',
      cwd: dir,
      env: {
        DERECHO_NODE_ID: '0',
        DERECHO_PEER_PORT: 'abc',
        DERECHO_HTTP_PORT: '70000',
        DERECHO_PEERS: '1=127.0.0.1:7001,x=host:1,3=host,4,1=other:1,5=host:0',
        DERECHO_LOG_LEVEL: 'verbose',
      },
    }),
  );
  t.deepEqual(lines, [
    'environment DERECHO_NODE_ID: 0 is not a positive integer node id',
    'environment DERECHO_PEER_PORT: "abc" is not a port number (1..65535)',
    'environment DERECHO_HTTP_PORT: 70000 is not a port number (1..65535)',
    'environment DERECHO_PEERS: entry "x=host:1": "x" is not a positive integer node id',
    'environment DERECHO_PEERS: entry "3=host": "host" is not a peer address "host:port" (port 1..65535; IPv6 in brackets)',
    'environment DERECHO_PEERS: "4" is not an entry "<node id>=<host>:<port>" (e.g. 1=127.0.0.1:7001,2=127.0.0.1:7002)',
    'environment DERECHO_PEERS: entry "1=other:1": node 1 is listed twice',
    'environment DERECHO_PEERS: entry "5=host:0": "host:0" is not a peer address "host:port" (port 1..65535; IPv6 in brackets)',
    'environment DERECHO_LOG_LEVEL: "verbose" is not one of "debug", "info", "warn", "error"',
  ]);
});

test('file errors name the file, the field, the value and the line', (t) => {
  const dir = agentDir(`nodeID: 1
groupFile: group.yaml
listen:
  peerPort: "abc"
  httpPort: 7000
peers:
  one: 127.0.0.1:7001
  2: localhost
`);
  t.deepEqual(configProblems(t, () => loadAgentConfig({ file: 'agent.yaml', cwd: dir, env: {} })), [
    'agent.yaml: nodeId: is required (a positive integer node id); or set DERECHO_NODE_ID',
    'agent.yaml: listen.peerPort: "abc" is not a port number (1..65535) (line 4)',
    'agent.yaml: peers.2: "localhost" is not a peer address "host:port" (port 1..65535; IPv6 in brackets) (line 8)',
    'agent.yaml: peers.one: key "one" is not a positive integer node id (line 7)',
    'agent.yaml: nodeID: is not a known field; did you mean nodeId? (line 1)',
  ]);
  // Without a file, the missing fields point at the environment.
  t.deepEqual(configProblems(t, () => loadAgentConfig({ cwd: dir, env: {} })), [
    'agent config: nodeId: is required (a positive integer node id); or set DERECHO_NODE_ID',
    'agent config: groupFile: is required (the path of the DerechoGroup manifest, unless the manifest is inline under group); or set DERECHO_GROUP_FILE',
  ]);
  t.deepEqual(configProblems(t, () => loadAgentConfig({ file: 'nope.yaml', cwd: dir, env: {} })), ['nope.yaml: cannot read the agent config: no such file']);
  const syntax = agentDir('nodeId: 1\n  groupFile: x\n');
  t.deepEqual(configProblems(t, () => loadAgentConfig({ file: 'agent.yaml', cwd: syntax, env: {} })), [
    'agent.yaml: line 1, column 9: YAML syntax error: Nested mappings are not allowed in compact mappings',
  ]);
});

test('the agent config and its group must agree', (t) => {
  const hmacGroup = EXAMPLE_TEXT;
  const noSecret = agentDir('nodeId: 1\ngroupFile: group.yaml\ngroupName: other\n', hmacGroup);
  t.deepEqual(configProblems(t, () => loadAgentConfig({ file: 'agent.yaml', cwd: noSecret, env: {} })), [
    'agent.yaml: groupName: "other" does not match metadata.name "kv-demo" of group.yaml',
    'agent.yaml: auth.hmacSecretFile: is required because spec.tls.mode is "hmac" in group.yaml; or set DERECHO_HMAC_SECRET_FILE',
  ]);
  const mutualGroup = EXAMPLE_TEXT.replace('mode: hmac', 'mode: mutual');
  const mutual = agentDir('nodeId: 1\ngroupFile: group.yaml\nauth:\n  tlsCertFile: a.crt\n', mutualGroup);
  t.deepEqual(configProblems(t, () => loadAgentConfig({ file: 'agent.yaml', cwd: mutual, env: {} })), [
    'agent.yaml: auth.tlsKeyFile: is required when any TLS file is given (tlsCertFile, tlsKeyFile and tlsCaFile go together); or set DERECHO_TLS_KEY_FILE',
    'agent.yaml: auth.tlsCaFile: is required when any TLS file is given (tlsCertFile, tlsKeyFile and tlsCaFile go together); or set DERECHO_TLS_CA_FILE',
  ]);
  const ok = loadAgentConfig({ file: 'agent.yaml', cwd: mutual, env: { DERECHO_TLS_KEY_FILE: 'a.key', DERECHO_TLS_CA_FILE: 'ca.crt' } });
  t.deepEqual(ok.auth, { tlsCertFile: 'a.crt', tlsKeyFile: 'a.key', tlsCaFile: 'ca.crt' });
  t.deepEqual(configProblems(t, () => loadAgentConfig({ file: 'agent.yaml', cwd: mutual, env: { DERECHO_GROUP_NAME: 'other', DERECHO_TLS_KEY_FILE: 'a.key', DERECHO_TLS_CA_FILE: 'ca.crt' } })), [
    'environment DERECHO_GROUP_NAME: "other" does not match metadata.name "kv-demo" of group.yaml',
  ]);
});

test('a bad or missing group manifest is reported under its own name', (t) => {
  const bad = agentDir(AGENT_YAML, EXAMPLE_TEXT.replace('members: 3', 'members: 2'));
  // Both subgroups reserve [1, 2, 3]: each problem points at its own line.
  const reserved = EXAMPLE_TEXT.split('\n').flatMap((line, i) => (line.trim() === '- [1, 2, 3]' ? [i + 1] : []));
  t.is(reserved.length, 2);
  t.deepEqual(configProblems(t, () => loadAgentConfig({ file: 'agent.yaml', cwd: bad, env: {} })), [
    `group.yaml: spec.subgroups[0].reservedNodeIds[0][2]: 3 is not a member's node id (members are 1..2) (line ${reserved[0]})`,
    `group.yaml: spec.subgroups[1].reservedNodeIds[0][2]: 3 is not a member's node id (members are 1..2) (line ${reserved[1]})`,
  ]);
  const missing = agentDir(AGENT_YAML.replace('groupFile: group.yaml', 'groupFile: sub/none.yaml'));
  t.deepEqual(configProblems(t, () => loadAgentConfig({ file: 'agent.yaml', cwd: missing, env: {} })), ['sub/none.yaml: cannot read the group manifest: no such file']);
});

test('inline group manifests', (t) => {
  const inline = `nodeId: 2\nauth:\n  hmacSecretFile: k\ngroup:\n${EXAMPLE_TEXT.split('\n').map((line) => (line === '' ? '' : `  ${line}`)).join('\n')}`;
  const dir = agentDir(inline);
  const config = loadAgentConfig({ file: 'agent.yaml', cwd: dir, env: {} });
  t.is(config.group.metadata.name, 'kv-demo');
  t.is(config.groupFile, undefined);
  // An inline group is checked like a file, with paths under "group".
  const badDir = agentDir(inline.replace('members: 3', 'members: 0'));
  t.deepEqual(configProblems(t, () => loadAgentConfig({ file: 'agent.yaml', cwd: badDir, env: {} })), [`agent.yaml: group.spec.members: 0 is not a member count from 1 to 64 (line ${lineOf(EXAMPLE_TEXT, 'members: 3') + 4})`]);
  // Both an inline group and groupFile: ambiguous. DERECHO_GROUP_FILE replaces the inline group.
  const both = agentDir(`groupFile: group.yaml\n${inline}`);
  t.deepEqual(configProblems(t, () => loadAgentConfig({ file: 'agent.yaml', cwd: both, env: {} })), ['agent.yaml: group: is given together with groupFile "group.yaml"; give only one (line 5)']);
  const fromEnv = loadAgentConfig({ file: 'agent.yaml', cwd: both, env: { DERECHO_GROUP_FILE: 'group.yaml' } });
  t.is(fromEnv.groupFile, path.join(both, 'group.yaml'));
});

test('JSON agent configs are read too', (t) => {
  const dir = agentDir(JSON.stringify({ nodeId: 1, groupFile: 'group.yaml', auth: { hmacSecretFile: 'k' }, listen: { peerPort: 7001, httpPort: 8001 } }, null, 2));
  writeFileSync(path.join(dir, 'agent.json'), readFileSync(path.join(dir, 'agent.yaml')));
  const config = loadAgentConfig({ file: 'agent.json', cwd: dir, env: {} });
  t.is(config.listen.peerPort, 7001);
});
