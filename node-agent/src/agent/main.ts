// Entry point of the node agent process.
//
//   node --import tsx node-agent/src/agent/main.ts [--config FILE]
//
// Configuration: FILE (YAML/JSON, see AgentConfig) and/or DERECHO_* environment variables.
// Exit codes: 0 stopped by a signal; 2 bad configuration (the message names the field and the value);
// 3 the replica exited (removed from the group, minority too long, not admitted): restart me;
// 1 any other failure.

import { loadAgentConfig } from '../config/load.ts';
import { ConfigError } from '../config/errors.ts';
import { Agent } from './agent.ts';
import type { AgentOptions } from './agent.ts';

export const EXIT_CONFIG = 2;
export const EXIT_REPLICA = 3;

function usage(): string {
  return [
    'Usage: derecho-agent [--config FILE]',
    '',
    'Runs one member of a Derecho group. Settings come from FILE (YAML or JSON) and DERECHO_* variables',
    '(DERECHO_NODE_ID, DERECHO_GROUP_FILE, DERECHO_PEERS, DERECHO_DATA_DIR, DERECHO_PEER_PORT, DERECHO_HTTP_PORT,',
    'DERECHO_HMAC_SECRET_FILE, DERECHO_TLS_CERT_FILE/KEY_FILE/CA_FILE, DERECHO_LOG_LEVEL, ...).',
  ].join('\n');
}

/** Runs an agent until a signal or a replica exit; resolves with the process exit code. */
export async function runAgent(argv: string[], env: Record<string, string | undefined>, options: AgentOptions = {}): Promise<number> {
  let file: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') {
      process.stdout.write(`${usage()}\n`);
      return 0;
    }
    if (a === '--config' || a === '-c') file = argv[++i];
    else if (a.startsWith('--config=')) file = a.slice('--config='.length);
    else {
      process.stderr.write(`derecho-agent: unknown argument ${JSON.stringify(a)}\n${usage()}\n`);
      return EXIT_CONFIG;
    }
  }
  let agent: Agent;
  let exitWith: (code: number) => void = () => {};
  const done = new Promise<number>((resolve) => (exitWith = resolve));
  try {
    const config = loadAgentConfig({ ...(file !== undefined ? { file } : {}), env });
    agent = await Agent.create(config, { ...options, onExit: (reason) => {
      options.onExit?.(reason);
      exitWith(EXIT_REPLICA);
    } });
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`derecho-agent: invalid configuration:\n${e.message}\n`);
      return EXIT_CONFIG;
    }
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EADDRINUSE' || err.code === 'EACCES') {
      process.stderr.write(`derecho-agent: cannot listen: ${err.message}\n`);
      return EXIT_CONFIG;
    }
    process.stderr.write(`derecho-agent: failed to start: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return 1;
  }
  const onSignal = (signal: string): void => {
    agent.log.info('stopping', { signal });
    void agent.close().then(() => exitWith(0));
  };
  process.once('SIGTERM', () => onSignal('SIGTERM'));
  process.once('SIGINT', () => onSignal('SIGINT'));
  return done;
}

const isMain = import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('/agent/main.ts');
if (isMain) {
  runAgent(process.argv.slice(2), process.env).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`derecho-agent: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exit(1);
    },
  );
}
