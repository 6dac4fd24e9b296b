// The local runner's state directory and state file, and the process utilities the commands share.
//
// A state directory (default ./.derecho/<group name>/) holds:
//   .derecho-state          marker: this directory was made by the runner (`down --purge` removes only such)
//   group.yaml              the manifest as it was when the group started (agents read this copy)
//   secret/hmac.key         the generated HMAC key (mode 0600), or tls/ with throwaway certificates
//   node-<id>/agent.yaml    each member's agent configuration
//   node-<id>/data/         each member's data directory (kept by `down` unless --purge)
//   node-<id>/agent.log     each member's stdout and stderr (JSON log lines)
//   supervisor.log          the background supervisor's events
//   state.json              written by the running supervisor (RunState): how other invocations find it

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createRequire } from 'node:module';
import { alive } from '../util/process.ts';

export const STATE_FILE = 'state.json';
export const MARKER_FILE = '.derecho-state';
export const STATE_ROOT = '.derecho';

/** The package root (where package.json, bin/ and node-agent/ are), independent of the working directory. */
export const PACKAGE_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const AGENT_MAIN = path.join(PACKAGE_ROOT, 'node-agent', 'src', 'agent', 'main.ts');
export const CLI_BIN = path.join(PACKAGE_ROOT, 'bin', 'derecho.js');
export const DEFAULT_MANIFEST = path.join(PACKAGE_ROOT, 'examples', 'kv-group.yaml');

/** The `--import` argument that makes a child Node process run TypeScript (tsx's loader, by absolute URL). */
export function tsxImport(): string {
  try {
    return pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
  } catch {
    return 'tsx';
  }
}

export type MemberState = 'starting' | 'running' | 'backoff' | 'failed' | 'stopping' | 'stopped';

export interface MemberRecord {
  nodeId: number;
  /** The current agent process, null while none runs (backoff, failed, stopped). */
  pid: number | null;
  peerPort: number;
  httpPort: number;
  configFile: string;
  dataDir: string;
  logFile: string;
  state: MemberState;
  restarts: number;
  lastExit: { code: number | null; signal: string | null; at: string; message: string | null } | null;
  /** When state is 'backoff': when the next start is due. */
  restartAt: string | null;
}

export interface RunState {
  version: 1;
  group: string;
  /** The manifest the user gave (absolute path). */
  manifest: string;
  stateDir: string;
  supervisorPid: number;
  foreground: boolean;
  startedAt: string;
  phase: 'starting' | 'running' | 'stopping' | 'failed';
  error: string | null;
  tlsMode: 'hmac' | 'mutual';
  subgroups: { name: string; type: string; shards: number }[];
  members: MemberRecord[];
}

export function stateFile(dir: string): string {
  return path.join(dir, STATE_FILE);
}

/** The state file of `dir`, or null if there is none (or it cannot be read as one). */
export function readState(dir: string): RunState | null {
  let text: string;
  try {
    text = fs.readFileSync(stateFile(dir), 'utf8');
  } catch {
    return null;
  }
  try {
    const value = JSON.parse(text) as RunState;
    return value && value.version === 1 && Array.isArray(value.members) ? value : null;
  } catch {
    return null;
  }
}

/** Writes the state file atomically (a reader never sees half of it). */
export function writeState(state: RunState): void {
  const file = stateFile(state.stateDir);
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(state, null, 2)}\n`);
  fs.renameSync(tmp, file);
}

export function removeState(dir: string): void {
  fs.rmSync(stateFile(dir), { force: true });
}

/**
 * Whether pid is alive and still the process we started: on Linux its command line must contain
 * `needle` (a config file or state dir path), so a recycled pid is never signalled. Elsewhere: alive.
 */
export function ours(pid: number | null | undefined, needle: string): boolean {
  if (!alive(pid)) return false;
  let cmdline: string;
  try {
    cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return true; // no /proc: trust the pid
  }
  return cmdline.includes(needle);
}

export function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // already gone
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until none of pids is alive, up to timeoutMs; returns the ones still alive. */
export async function waitGone(pids: number[], timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  let left = pids.filter((pid) => alive(pid));
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(50);
    left = left.filter((pid) => alive(pid));
  }
  return left;
}

/** The state directories under ./.derecho (or `root`) that hold a state file. */
export function findStateDirs(root: string = path.resolve(STATE_ROOT)): string[] {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(root, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries
    .filter((entry) => entry.isDirectory() && fs.existsSync(stateFile(path.join(root, entry.name))))
    .map((entry) => path.join(root, entry.name))
    .sort();
}

/** A path as messages show it: relative to the working directory when below it. */
export function shown(file: string): string {
  const relative = path.relative(process.cwd(), file);
  return relative !== '' && !relative.startsWith('..') && !path.isAbsolute(relative) ? relative : file;
}

/** The last lines of a log file that are not JSON log records (what an agent prints before it exits), else the last lines. */
export function logTail(file: string, lines = 8): string[] {
  let text: string;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const length = Math.min(size, 16 * 1024);
      const buffer = Buffer.alloc(length);
      fs.readSync(fd, buffer, 0, length, size - length);
      text = buffer.toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return [];
  }
  const all = text.split('\n').filter((line) => line.trim() !== '');
  // The output of the last run only: after the supervisor's last "start" banner.
  let banner = -1;
  all.forEach((line, index) => {
    if (line.startsWith('--- derecho: ')) banner = index;
  });
  const run = banner >= 0 ? all.slice(banner + 1) : all;
  const plain = run.filter((line) => !line.startsWith('{'));
  if (plain.length > 0) return plain.slice(-lines);
  return run.slice(-lines).map((line) => {
    try {
      // A log record: its reason or error says most ("replica exited" → why).
      const record = JSON.parse(line) as { msg?: string; reason?: string; error?: string };
      return record.reason ?? record.error ?? record.msg ?? line;
    } catch {
      return line;
    }
  });
}
