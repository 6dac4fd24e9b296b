// Entry point of the node agent process.
//
//   node --import tsx node-agent/src/agent/main.ts [--config FILE]
//
// Configuration: FILE (YAML/JSON, see AgentConfig) and/or DERECHO_* environment variables.
// Exit codes: 0 stopped by a signal; 2 bad configuration (the message names the field and the value);
// 3 the replica exited (removed from the group, minority too long, not admitted): restart me;
// 1 any other failure. Why it stopped (a bad configuration, a failed start, the replica's exit reason) also
// goes to the container's termination message file (Kubernetes' terminationMessagePath, when the kubelet
// provides it), so that `kubectl describe pod` and the DerechoGroup status can show it.

import { existsSync, writeFileSync } from 'node:fs';
import { loadAgentConfig } from '../config/load.ts';
import { ConfigError } from '../config/errors.ts';
import { Agent } from './agent.ts';
import type { AgentOptions } from './agent.ts';

export const EXIT_CONFIG = 2;
export const EXIT_REPLICA = 3;

/** Where the kubelet reads the termination message (the pod's terminationMessagePath; default as in Kubernetes). */
export const TERMINATION_MESSAGE_PATH_DEFAULT = '/dev/termination-log';
/** Kubernetes keeps at most 4096 bytes of it. */
const TERMINATION_MESSAGE_BYTES_MAX = 4096;

/**
 * Writes why the agent stops to the termination message file, if the file exists (the kubelet creates it
 * in a container; elsewhere nothing is written). Best effort: a failure here never hides the exit.
 */
export function writeTerminationMessage(message: string, env: Record<string, string | undefined>): void {
  const file = env.DERECHO_TERMINATION_MESSAGE_PATH ?? TERMINATION_MESSAGE_PATH_DEFAULT;
  try {
    if (!existsSync(file)) return;
    const bytes = Buffer.from(message, 'utf8');
    writeFileSync(file, bytes.length > TERMINATION_MESSAGE_BYTES_MAX ? bytes.subarray(0, TERMINATION_MESSAGE_BYTES_MAX) : bytes);
  } catch {
    // best effort
  }
}

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
      writeTerminationMessage(`the replica exited: ${reason}`, env);
      exitWith(EXIT_REPLICA);
    } });
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`derecho-agent: invalid configuration:\n${e.message}\n`);
      writeTerminationMessage(`invalid configuration: ${e.message}`, env);
      return EXIT_CONFIG;
    }
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EADDRINUSE' || err.code === 'EACCES') {
      process.stderr.write(`derecho-agent: cannot listen: ${err.message}\n`);
      writeTerminationMessage(`cannot listen: ${err.message}`, env);
      return EXIT_CONFIG;
    }
    process.stderr.write(`derecho-agent: failed to start: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    writeTerminationMessage(`failed to start: ${e instanceof Error ? e.message : String(e)}`, env);
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
