// The `derecho` command: run a DerechoGroup manifest on this machine (one agent process per member on
// 127.0.0.1 ports), look at it, use its key-value store, stop it.
//
//   derecho up [-f FILE] [--foreground]    start the group (background; --foreground: live table, Ctrl-C stops)
//   derecho status [--watch] [--json]      the status table
//   derecho kv put|get|del|ls ...          the key-value API
//   derecho down [--purge]                 stop everything
//   derecho supervise ...                  (internal) the background supervisor `up` starts
//
// bin/derecho.js registers tsx and calls main(). Exit codes: 0 done, 1 failed, 2 usage or configuration
// error (the message says which option, field or value).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { tokenLines } from '../agent/api-credentials.ts';
import { DerechoClient, DerechoError } from '../client/client.ts';
import type { Version } from '../client/client.ts';
import { ConfigError } from '../config/errors.ts';
import { loadGroupManifest } from '../config/load.ts';
import { DEFAULT_BASE_PORT, HTTP_PORT_OFFSET, RunnerError, Supervisor, checkNotRunning, checkRunnable, makeStateDir } from './runner.ts';
import type { SupervisorEvent } from './runner.ts';
import {
  CLI_BIN, DEFAULT_MANIFEST, MARKER_FILE, PACKAGE_ROOT, STATE_ROOT, findStateDirs, logTail, ours, readState, removeState,
  shown, signal, sleep, waitGone,
} from './state.ts';
import type { RunState } from './state.ts';
import { alive } from '../util/process.ts';
import { httpUrl, isReady, renderTable, renderTitle, sampleGroup } from './table.ts';
import type { GroupSample } from './table.ts';

// ---------------------------------------------------------------------------------------------------
// Commands and their options.

interface OptionSpec {
  long: string;
  short?: string;
  /** Placeholder of the value; absent: a flag. */
  value?: string;
  help: string;
}

interface CommandSpec {
  name: string;
  summary: string;
  usage: string[];
  description: string[];
  options: OptionSpec[];
  examples?: string[];
  hidden?: boolean;
}

const HELP: OptionSpec = { long: 'help', short: 'h', help: 'show this help' };
const STATE_DIR: OptionSpec = { long: 'state-dir', value: 'DIR', help: `the group's state directory (default: ./${STATE_ROOT}/<group name>, or $DERECHO_STATE_DIR)` };
const GROUP: OptionSpec = { long: 'group', value: 'NAME', help: `the group in ./${STATE_ROOT}/NAME (needed only when several run)` };
const FILE_PICK: OptionSpec = { long: 'file', short: 'f', value: 'FILE', help: 'the group of this manifest (its metadata.name)' };

const COMMANDS: CommandSpec[] = [
  {
    name: 'up',
    summary: 'start the group of a manifest (in the background; --foreground: with a live table)',
    usage: ['derecho up [-f FILE] [--foreground] [--state-dir DIR] [--base-port N] [--timeout SECONDS]'],
    description: [
      'Starts one agent process per member of the DerechoGroup manifest FILE on 127.0.0.1, under a supervisor',
      'that restarts members that exit (exit code 3: the replica must rejoin; 1: failure) and stops the group',
      'when one reports a bad configuration (exit code 2). Without --foreground the supervisor runs in the',
      'background and `up` returns once every member is ready (or says why not). With --foreground it shows',
      'a live status table until Ctrl-C, which stops every agent.',
      `State (generated HMAC key or throwaway certificates, agent configs, data, logs): ./${STATE_ROOT}/<group name>/.`,
    ],
    options: [
      { long: 'file', short: 'f', value: 'FILE', help: 'the DerechoGroup manifest (default: examples/kv-group.yaml of this package)' },
      { long: 'foreground', help: 'supervise in this process and show a live table until Ctrl-C' },
      STATE_DIR,
      { long: 'base-port', value: 'N', help: `first peer port to try (default ${DEFAULT_BASE_PORT}); HTTP ports from N+${HTTP_PORT_OFFSET}; busy ports are skipped` },
      { long: 'timeout', value: 'SECONDS', help: 'how long `up` waits for the group to be ready (default 60)' },
      HELP,
    ],
    examples: ['derecho up -f examples/kv-group.yaml', 'derecho up --foreground          # what `npm start` runs'],
  },
  {
    name: 'status',
    summary: 'show each member: mode, view, shards, delivered/persisted frontiers, messages/s',
    usage: ['derecho status [--watch] [--json] [--state-dir DIR | --group NAME | -f FILE]'],
    description: [
      'Asks every member for its GET /status and prints one table: node, pid, HTTP port, mode, view, members,',
      'the shards it serves with their delivered and persisted frontiers (viewId.seq), and messages/s',
      '(delivered ordered updates, measured over a second); below it, why a member is not ready.',
    ],
    options: [
      { long: 'watch', short: 'w', help: 'refresh the table every second until Ctrl-C' },
      { long: 'json', help: 'print the state file and every /status as JSON' },
      STATE_DIR, GROUP, FILE_PICK, HELP,
    ],
  },
  {
    name: 'kv',
    summary: 'put, get, delete and list keys of a kv subgroup',
    usage: [
      'derecho kv put KEY VALUE        (VALUE "-": read it from stdin)',
      'derecho kv get KEY [--version V.S] [--consistency linearizable|local]',
      'derecho kv del KEY',
      'derecho kv ls [PREFIX] [--consistency linearizable|local]',
    ],
    description: [
      'Talks to the running group over its HTTP API (any member; the agent routes a key to its shard).',
      'Writes return once every member of the key\'s shard has applied and persisted them, with their',
      'version viewId.seq; `get --version V.S` reads a key as of that version.',
      'Reads are linearizable (they see every write acknowledged before they began); `--consistency local`',
      'answers from the member\'s own replica, faster but possibly behind.',
    ],
    options: [
      { long: 'subgroup', short: 's', value: 'NAME', help: 'the kv subgroup (default: the first subgroup of type kv in the manifest)' },
      { long: 'version', value: 'V.S', help: 'get: the value as of version V.S (e.g. 0.3)' },
      { long: 'consistency', value: 'MODE', help: 'get, ls: linearizable (default) or local' },
      { long: 'json', help: 'print the agent\'s JSON answer' },
      { long: 'endpoint', value: 'URL', help: 'a group not started here: its members\' API, http(s)://host:port[,...] (or $DERECHO_ENDPOINT)' },
      { long: 'token', value: 'TOKEN', help: 'with --endpoint: the bearer token (the `token` key of the group\'s client Secret; or $DERECHO_TOKEN)' },
      { long: 'token-file', value: 'FILE', help: 'with --endpoint: a file holding the token' },
      { long: 'ca-file', value: 'FILE', help: 'with --endpoint: the CA to verify the members with (the `ca.crt` key of the client Secret)' },
      { long: 'server-name', value: 'NAME', help: 'with --endpoint: the name to verify the member\'s certificate by (default: the endpoint\'s host)' },
      STATE_DIR, GROUP, FILE_PICK, HELP,
    ],
    examples: [
      'derecho kv put greeting hello', 'derecho kv get greeting', 'derecho kv ls', 'derecho kv del greeting',
      'kubectl port-forward pod/kv-demo-1 8080 &   # then, with the group\'s client Secret:',
      'derecho kv get greeting --endpoint https://localhost:8080 --token-file token --ca-file ca.crt',
    ],
  },
  {
    name: 'down',
    summary: 'stop the group: the supervisor and every agent process',
    usage: ['derecho down [--purge] [--state-dir DIR | --group NAME | -f FILE]'],
    description: [
      'Stops the supervisor, which stops its agents (SIGTERM, then SIGKILL after 5 s); also stops any',
      'recorded agent still alive, and returns once every process is gone. Without a selection it stops',
      `every group under ./${STATE_ROOT}/. Data directories are kept (a later \`up\` restarts the group from`,
      'its logs) unless --purge, which deletes the whole state directory.',
    ],
    options: [
      { long: 'purge', help: 'also delete the state directory (data, logs, keys)' },
      STATE_DIR, GROUP, FILE_PICK, HELP,
    ],
  },
  {
    name: 'help',
    summary: 'show help for a command',
    usage: ['derecho help [COMMAND]'],
    description: ['Shows the help of COMMAND, or the list of commands.'],
    options: [HELP],
  },
  {
    name: 'supervise',
    summary: '(internal) the background supervisor started by `derecho up`',
    usage: ['derecho supervise --state-dir DIR -f FILE [--base-port N]'],
    description: ['Runs the supervisor in this process without a table; `derecho up` starts it detached.'],
    options: [{ long: 'file', short: 'f', value: 'FILE', help: 'the manifest' }, STATE_DIR, { long: 'base-port', value: 'N', help: 'first peer port' }, HELP],
    hidden: true,
  },
];

class UsageError extends Error {
  constructor(message: string, readonly command: CommandSpec | null) {
    super(message);
  }
}

function topUsage(): string {
  const visible = COMMANDS.filter((command) => !command.hidden);
  const width = Math.max(...visible.map((command) => command.name.length));
  return [
    'Usage: derecho <command> [options]',
    '',
    'Runs a Derecho group on this machine, one agent process per member on 127.0.0.1 ports, from the same',
    'DerechoGroup manifest the Kubernetes operator reconciles.',
    '',
    'Commands:',
    ...visible.map((command) => `  ${command.name.padEnd(width)}  ${command.summary}`),
    '',
    'Run `derecho <command> --help` for its options.',
    '',
    'Examples:',
    '  derecho up -f examples/kv-group.yaml     start the example group in the background',
    '  derecho kv put greeting hello            write a key',
    '  derecho kv get greeting                  read it',
    '  derecho status                           the members, views, shards and frontiers',
    '  derecho down                             stop every agent',
  ].join('\n');
}

function commandHelp(command: CommandSpec): string {
  const optionText = (option: OptionSpec): string =>
    `${option.short ? `-${option.short}, ` : '    '}--${option.long}${option.value ? ` ${option.value}` : ''}`;
  const width = Math.max(...command.options.map((option) => optionText(option).length));
  return [
    `Usage: ${command.usage[0]}`,
    ...command.usage.slice(1).map((line) => `       ${line}`),
    '',
    ...command.description,
    '',
    'Options:',
    ...command.options.map((option) => `  ${optionText(option).padEnd(width)}  ${option.help}`),
    ...(command.examples ? ['', 'Examples:', ...command.examples.map((example) => `  ${example}`)] : []),
  ].join('\n');
}

type Parsed = { options: Map<string, string | true>; args: string[] };

/** Parses `argv` (after the command name) against the command's options. */
function parseArgs(command: CommandSpec, argv: string[]): Parsed {
  const options = new Map<string, string | true>();
  const args: string[] = [];
  const find = (name: string, short: boolean): OptionSpec | undefined =>
    command.options.find((option) => (short ? option.short === name : option.long === name));
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      args.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      args.push(arg);
      continue;
    }
    const long = arg.startsWith('--');
    const equals = arg.indexOf('=');
    const name = arg.slice(long ? 2 : 1, equals >= 0 ? equals : undefined);
    const option = find(name, !long);
    if (option === undefined) {
      throw new UsageError(`unknown option ${JSON.stringify(equals >= 0 ? arg.slice(0, equals) : arg)} for \`derecho ${command.name}\``, command);
    }
    if (option.value === undefined) {
      if (equals >= 0) throw new UsageError(`option --${option.long} takes no value (got ${JSON.stringify(arg)})`, command);
      options.set(option.long, true);
      continue;
    }
    let value: string | undefined;
    if (equals >= 0) value = arg.slice(equals + 1);
    else value = argv[++i];
    if (value === undefined || (equals < 0 && value.startsWith('-') && value !== '-')) {
      throw new UsageError(`option ${arg} needs a value (${option.value})`, command);
    }
    options.set(option.long, value);
  }
  return { options, args };
}

function stringOption(parsed: Parsed, name: string): string | undefined {
  const value = parsed.options.get(name);
  return typeof value === 'string' ? value : undefined;
}

function intOption(parsed: Parsed, name: string, min: number, max: number, command: CommandSpec): number | undefined {
  const text = stringOption(parsed, name);
  if (text === undefined) return undefined;
  if (!/^[0-9]+$/.test(text) || Number(text) < min || Number(text) > max) {
    throw new UsageError(`--${name} ${JSON.stringify(text)} is not a whole number from ${min} to ${max}`, command);
  }
  return Number(text);
}

/** The usage lines of a command and where to find more (what a usage error shows). */
function commandUsage(command: CommandSpec): string {
  return [
    `Usage: ${command.usage[0]}`,
    ...command.usage.slice(1).map((line) => `       ${line}`),
    `Run \`derecho ${command.name} --help\` for the options.`,
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------
// Output.

const out = (text: string): void => {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
};
const err = (text: string): void => {
  process.stderr.write(text.endsWith('\n') ? text : `${text}\n`);
};

/** How the user runs this command (npx inside the repository, plain `derecho` when installed). */
const CMD = 'npx derecho';

function startHint(): string {
  return [
    'Start one:',
    '  npm start                                  in the foreground, with a live table (Ctrl-C stops it)',
    `  ${CMD} up -f examples/kv-group.yaml   in the background`,
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------
// Finding the running group.

function explicitDir(parsed: Parsed): string | null {
  const dir = stringOption(parsed, 'state-dir') ?? (process.env.DERECHO_STATE_DIR?.trim() || undefined);
  if (dir !== undefined) return path.resolve(dir);
  const group = stringOption(parsed, 'group');
  if (group !== undefined) return path.resolve(STATE_ROOT, group);
  const file = stringOption(parsed, 'file');
  if (file !== undefined) return path.resolve(STATE_ROOT, loadGroupManifest(path.resolve(file), file).metadata.name);
  return null;
}

/** The state directories a command acts on: the one selected, or every one under ./.derecho with a state file. */
function targetDirs(parsed: Parsed): { dirs: string[]; explicit: boolean } {
  const dir = explicitDir(parsed);
  return dir !== null ? { dirs: [dir], explicit: true } : { dirs: findStateDirs(), explicit: false };
}

function nothingRuns(explicit: boolean, dirs: string[]): string {
  const where = explicit ? `from ${shown(dirs[0]!)} (no ${path.join(shown(dirs[0]!), 'state.json')})` : `here (no state in ./${STATE_ROOT}/)`;
  return `No Derecho group is running ${where}.\n${startHint()}`;
}

/** The one running group a command (kv) needs; a RunnerError when there is none or several. */
function oneGroup(parsed: Parsed, command: CommandSpec): RunState {
  const { dirs, explicit } = targetDirs(parsed);
  const states = dirs.map((dir) => readState(dir)).filter((state): state is RunState => state !== null);
  if (states.length === 0) throw new RunnerError(nothingRuns(explicit, dirs));
  if (states.length > 1) {
    throw new UsageError(`several groups run here (${states.map((state) => state.group).join(', ')}); pick one with --group NAME`, command);
  }
  const state = states[0]!;
  if (!ours(state.supervisorPid, 'derecho')) {
    const why = state.phase === 'failed' && state.error ? `it failed:\n${state.error}` : `its supervisor (pid ${state.supervisorPid}) is gone.`;
    throw new RunnerError(`group ${state.group} in ${shown(state.stateDir)} is not running: ${why}\nClean up with \`${CMD} down\`, then start it again.`);
  }
  return state;
}

// ---------------------------------------------------------------------------------------------------
// Live table (up --foreground, status --watch).

interface LiveOptions {
  state: () => RunState | null;
  footer: () => string[];
  until: Promise<unknown>;
}

async function liveTable(options: LiveOptions): Promise<void> {
  const tty = process.stdout.isTTY === true;
  let previous: GroupSample | null = null;
  let lastPrinted = '';
  let stopped = false;
  void options.until.finally(() => (stopped = true));
  if (tty) process.stdout.write('\x1b[2J\x1b[H');
  while (!stopped) {
    const started = Date.now();
    const state = options.state();
    let body: string;
    let sample: GroupSample | null = null;
    if (state !== null) {
      sample = await sampleGroup(state, 800);
      body = `${renderTitle(sample)}\n\n${renderTable(sample, previous)}`;
    } else {
      body = 'starting...';
    }
    if (stopped) break;
    const footer = options.footer();
    const frame = [body, '', ...footer].join('\n');
    if (tty) {
      const clock = new Date().toTimeString().slice(0, 8);
      const lines = [`${clock}  ${frame.split('\n')[0]}`, ...frame.split('\n').slice(1)];
      process.stdout.write(`\x1b[H${lines.map((line) => `${line}\x1b[K`).join('\n')}\n\x1b[J`);
    } else {
      // Not a terminal (a log file, a pipe): print a frame when something other than the rates changed.
      const key = sample ? `${renderTitle(sample)}\n${renderTable(sample, null)}\n${footer.join('\n')}` : body;
      if (key !== lastPrinted) {
        out(`--- ${new Date().toISOString()}\n${frame}\n`);
        lastPrinted = key;
      }
    }
    if (sample) previous = sample;
    const wait = Math.max(100, 1000 - (Date.now() - started));
    await Promise.race([sleep(wait), options.until]);
  }
}

function eventLine(event: SupervisorEvent): string {
  const time = event.at.toTimeString().slice(0, 8);
  return `${time}  ${event.level === 'info' ? '' : `${event.level}: `}${event.message}`;
}

// ---------------------------------------------------------------------------------------------------
// up

function stateDirFor(parsed: Parsed, group: string): string {
  const dir = stringOption(parsed, 'state-dir') ?? (process.env.DERECHO_STATE_DIR?.trim() || undefined);
  return path.resolve(dir ?? path.join(STATE_ROOT, group));
}

async function cmdUp(parsed: Parsed, command: CommandSpec): Promise<number> {
  if (parsed.args.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(parsed.args[0])} (give the manifest with -f FILE)`, command);
  const basePort = intOption(parsed, 'base-port', 1, 65_535 - HTTP_PORT_OFFSET, command) ?? DEFAULT_BASE_PORT;
  const timeoutText = stringOption(parsed, 'timeout');
  if (timeoutText !== undefined && !(Number(timeoutText) > 0)) throw new UsageError(`--timeout ${JSON.stringify(timeoutText)} is not a positive number of seconds`, command);
  const timeoutMs = timeoutText !== undefined ? Number(timeoutText) * 1000 : 60_000;

  const given = stringOption(parsed, 'file');
  const manifestFile = path.resolve(given ?? DEFAULT_MANIFEST);
  const manifest = loadGroupManifest(manifestFile, given ?? shown(manifestFile));
  checkRunnable(manifest, given ?? shown(manifestFile));
  const stateDir = stateDirFor(parsed, manifest.metadata.name);
  checkNotRunning(stateDir);

  if (parsed.options.has('foreground')) return runForeground(manifestFile, stateDir, basePort);

  makeStateDir(stateDir);
  const logFile = path.join(stateDir, 'supervisor.log');
  const fd = fs.openSync(logFile, 'a');
  let child;
  try {
    fs.writeSync(fd, `--- derecho: supervisor starting at ${new Date().toISOString()} ---\n`);
    child = spawn(process.execPath, [CLI_BIN, 'supervise', '--state-dir', stateDir, '-f', manifestFile, '--base-port', String(basePort)], {
      detached: true,
      stdio: ['ignore', fd, fd],
      cwd: process.cwd(),
      env: { ...process.env, DERECHO_STATE_DIR: '' },
    });
  } finally {
    fs.closeSync(fd);
  }
  let exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  child.once('exit', (code, sig) => (exit = { code, signal: sig }));
  child.once('error', (error) => {
    err(`derecho up: cannot start the supervisor: ${error.message}`);
    exit ??= { code: 1, signal: null };
  });
  child.unref();
  const supervisorPid = child.pid;
  const members = manifest.spec.members;
  out(`Starting ${manifest.metadata.name} (${members} member${members === 1 ? '' : 's'}) in the background; state in ${shown(stateDir)}/ ...`);

  // Ctrl-C while waiting leaves the group starting in the background: say so.
  const onInterrupt = (): void => {
    err(`\nStopped waiting; ${manifest.metadata.name} keeps starting in the background (supervisor pid ${supervisorPid}).\nWatch it with \`${CMD} status --watch\`; stop it with \`${CMD} down\`.`);
    process.exit(130);
  };
  process.once('SIGINT', onInterrupt);
  const started = Date.now();
  let sample: GroupSample | null = null;
  for (;;) {
    const state = readState(stateDir);
    const current = state !== null && state.supervisorPid === supervisorPid ? state : null;
    if (exit !== null || (current !== null && current.phase === 'failed')) {
      // It failed: wait for the supervisor to stop what it started, then report its reason.
      const deadline = Date.now() + 15_000;
      while (exit === null && alive(supervisorPid) && Date.now() < deadline) await sleep(100);
      const read = readState(stateDir);
      const final = read !== null && read.supervisorPid === supervisorPid ? read : null;
      const reason = final?.error ?? (logTail(logFile, 12).join('\n') || `the supervisor exited (${JSON.stringify(exit)})`);
      if (final !== null && !alive(supervisorPid)) removeState(stateDir);
      err(`derecho up: ${manifest.metadata.name} did not start:\n${reason}`);
      const code = (exit as { code: number | null } | null)?.code;
      return code === 2 || final?.error?.includes('(bad configuration)') ? 2 : 1;
    }
    const givenUp = current?.members.filter((member) => member.state === 'failed') ?? [];
    if (current !== null && givenUp.length > 0) {
      // A member kept exiting: waiting longer will not make the group ready.
      sample = await sampleGroup(current, 800);
      err(`derecho up: ${manifest.metadata.name} is not ready: ${givenUp.map((member) => `node ${member.nodeId}`).join(', ')} kept exiting and stays down.`);
      err(`${renderTitle(sample)}\n\n${renderTable(sample)}\n`);
      err(`The other members keep running; stop them with \`${CMD} down\`. Logs: ${givenUp.map((member) => shown(member.logFile)).join(', ')}`);
      return 1;
    }
    if (current !== null) {
      sample = await sampleGroup(current, 800);
      if (isReady(sample)) {
        out(`${manifest.metadata.name} is ready (${((Date.now() - started) / 1000).toFixed(1)} s).\n`);
        out(`${renderTitle(sample)}\n\n${renderTable(sample)}\n`);
        out([
          `The supervisor (pid ${supervisorPid}) keeps the members running in the background; data and logs are in ${shown(stateDir)}/.`,
          'Next:',
          `  ${CMD} kv put greeting hello`,
          `  ${CMD} kv get greeting`,
          `  ${CMD} status            (--watch for a live table)`,
          `  ${CMD} down              (stops every agent)`,
        ].join('\n'));
        return 0;
      }
    }
    if (Date.now() - started > timeoutMs) {
      err(`derecho up: ${manifest.metadata.name} is not ready after ${timeoutMs / 1000} s.`);
      if (sample !== null) err(`${renderTitle(sample)}\n\n${renderTable(sample)}\n`);
      err(`It keeps trying in the background: watch it with \`${CMD} status --watch\`, stop it with \`${CMD} down\`.\nLogs: ${shown(stateDir)}/node-<id>/agent.log and ${shown(logFile)}`);
      return 1;
    }
    await sleep(250);
  }
}

async function runForeground(manifestFile: string, stateDir: string, basePort: number): Promise<number> {
  const events: SupervisorEvent[] = [];
  const tty = process.stdout.isTTY === true;
  const supervisor = new Supervisor({
    manifestFile, stateDir, basePort, foreground: true,
    onEvent: (event) => {
      events.push(event);
      if (events.length > 200) events.shift();
    },
  });
  let signals = 0;
  let stopRequested!: () => void;
  const stopping = new Promise<void>((resolve) => (stopRequested = resolve));
  const onSignal = (name: string): void => {
    signals++;
    if (signals === 1) {
      stopRequested();
      if (tty) process.stdout.write('\n');
      err(`${name}: stopping every agent...`);
      void supervisor.stop();
    } else {
      err(`${name} again: killing every agent now`);
      supervisor.killAll();
      process.exit(130);
    }
  };
  const handlers: [NodeJS.Signals, () => void][] = (['SIGINT', 'SIGTERM', 'SIGHUP'] as const).map((name) => [name, () => onSignal(name)]);
  for (const [name, handler] of handlers) process.on(name, handler);
  const onExit = (): void => supervisor.killAll();
  process.on('exit', onExit);
  try {
    await supervisor.start();
  } catch (e) {
    await supervisor.stop();
    throw e;
  }
  const footer = (): string[] => {
    const recent = events.slice(-6).map(eventLine);
    return [
      ...(recent.length > 0 ? ['Events:', ...recent.map((line) => `  ${line}`), ''] : []),
      `State, data and logs: ${shown(stateDir)}/   Supervisor pid ${process.pid}.`,
      `In another terminal: ${CMD} kv put greeting hello · ${CMD} kv get greeting · ${CMD} status`,
      'Ctrl-C stops every agent.',
    ];
  };
  await liveTable({ state: () => supervisor.run, footer, until: Promise.race([supervisor.done, stopping]) });
  const code = await supervisor.done;
  for (const [name, handler] of handlers) process.off(name, handler);
  process.off('exit', onExit);
  const run = supervisor.run;
  if (run?.phase === 'failed' && run.error) err(`derecho: ${run.group} stopped: ${run.error}`);
  else out(`Every agent of ${run?.group ?? 'the group'} stopped. Data and logs are kept in ${shown(stateDir)}/ (\`${CMD} down --purge\` deletes them).`);
  if (run?.phase === 'failed') removeState(stateDir);
  return code;
}

// ---------------------------------------------------------------------------------------------------
// supervise (internal)

async function cmdSupervise(parsed: Parsed, command: CommandSpec): Promise<number> {
  const dir = stringOption(parsed, 'state-dir');
  const file = stringOption(parsed, 'file');
  if (dir === undefined || file === undefined) throw new UsageError('supervise needs --state-dir DIR and -f FILE', command);
  const basePort = intOption(parsed, 'base-port', 1, 65_535 - HTTP_PORT_OFFSET, command) ?? DEFAULT_BASE_PORT;
  const log = (line: string): void => out(`${new Date().toISOString()} ${line}`);
  const supervisor = new Supervisor({
    manifestFile: path.resolve(file), stateDir: path.resolve(dir), basePort, foreground: false,
    onEvent: (event) => log(`${event.level} ${event.message}`),
  });
  process.on('SIGTERM', () => void supervisor.stop());
  process.on('SIGINT', () => void supervisor.stop());
  process.on('SIGHUP', () => {});
  process.on('exit', () => supervisor.killAll());
  process.on('uncaughtException', (error) => {
    log(`error: supervisor failure: ${error.stack ?? error.message}`);
    supervisor.killAll();
    process.exit(1);
  });
  log(`supervisor pid ${process.pid} for ${file}`);
  try {
    await supervisor.start();
  } catch (e) {
    await supervisor.stop();
    throw e;
  }
  return supervisor.done;
}

// ---------------------------------------------------------------------------------------------------
// status

async function cmdStatus(parsed: Parsed, command: CommandSpec): Promise<number> {
  if (parsed.args.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(parsed.args[0])}`, command);
  const { dirs, explicit } = targetDirs(parsed);
  const states = dirs.map((dir) => readState(dir)).filter((state): state is RunState => state !== null);
  if (states.length === 0) {
    err(nothingRuns(explicit, dirs));
    return 1;
  }
  if (parsed.options.has('watch')) {
    if (states.length > 1) throw new UsageError(`several groups run here (${states.map((state) => state.group).join(', ')}); pick one with --group NAME`, command);
    const dir = states[0]!.stateDir;
    let stop!: () => void;
    const until = new Promise<void>((resolve) => (stop = resolve));
    process.once('SIGINT', () => stop());
    process.once('SIGTERM', () => stop());
    let gone = false;
    await liveTable({
      state: () => {
        const state = readState(dir);
        if (state === null && !gone) {
          gone = true;
          setTimeout(stop, 1500);
        }
        return state;
      },
      footer: () => [gone ? 'The group stopped.' : `State, data and logs: ${shown(dir)}/   Ctrl-C stops watching (the group keeps running).`],
      until,
    });
    return 0;
  }
  let code = 0;
  const first = await Promise.all(states.map((state) => sampleGroup(state)));
  const answering = first.some((sample) => sample.members.some((member) => member.status !== null));
  if (answering && !parsed.options.has('json')) await sleep(1000);
  const second = answering ? await Promise.all(states.map((state) => readState(state.stateDir) ?? state).map((state) => sampleGroup(state))) : first;
  if (parsed.options.has('json')) {
    out(JSON.stringify(second.map((sample) => ({ ...sample.state, members: sample.members.map((member) => ({ ...member.record, status: member.status, error: member.error })) })), null, 2));
    return 0;
  }
  second.forEach((sample, index) => {
    const state = sample.state;
    if (index > 0) out('');
    out(`${renderTitle(sample)}\n\n${renderTable(sample, first[index] ?? null)}\n`);
    const supervisorAlive = ours(state.supervisorPid, 'derecho');
    if (!supervisorAlive) {
      code = 1;
      const why = state.phase === 'failed' && state.error ? `It failed:\n${state.error}\n` : `Its supervisor (pid ${state.supervisorPid}) is gone: members that exit are not restarted.\n`;
      err(`${why}Clean up with \`${CMD} down\`, then start it again.`);
    } else {
      const uptime = Math.round((Date.now() - Date.parse(state.startedAt)) / 1000);
      out(`Supervisor pid ${state.supervisorPid} (${state.foreground ? 'foreground' : 'background'}), up ${uptime} s; state, data and logs in ${shown(state.stateDir)}/ (node-<id>/agent.log).`);
    }
  });
  return code;
}

// ---------------------------------------------------------------------------------------------------
// kv

function parseVersion(text: string, command: CommandSpec): Version {
  const match = /^(\d+)\.(\d+)$/.exec(text);
  if (!match) throw new UsageError(`--version ${JSON.stringify(text)} is not "<viewId>.<seq>" (e.g. 0.3, as printed by put)`, command);
  return { viewId: Number(match[1]), seq: Number(match[2]) };
}

function versionText(version: Version): string {
  return `${version.viewId}.${version.seq}`;
}

/**
 * --endpoint (a group not started by `derecho up`: in a cluster, through `kubectl port-forward` or a
 * Service) with its credentials: --token / --token-file / $DERECHO_TOKEN, --ca-file, --server-name.
 * null without --endpoint (the local group's state directory says where its members are).
 */
function remoteOptions(parsed: Parsed, command: CommandSpec): { endpoints: string[]; token?: string; ca?: Buffer; servername?: string } | null {
  const endpoint = stringOption(parsed, 'endpoint') ?? process.env.DERECHO_ENDPOINT;
  const tokenOption = stringOption(parsed, 'token');
  const tokenFile = stringOption(parsed, 'token-file');
  const caFile = stringOption(parsed, 'ca-file');
  const servername = stringOption(parsed, 'server-name');
  if (endpoint === undefined) {
    for (const name of ['token', 'token-file', 'ca-file', 'server-name']) {
      if (parsed.options.has(name)) throw new UsageError(`--${name} goes with --endpoint (a group reached over the network)`, command);
    }
    return null;
  }
  const endpoints = endpoint.split(',').map((e) => e.trim().replace(/\/+$/, '')).filter((e) => e !== '');
  for (const e of endpoints) {
    if (!/^https?:\/\/[^/\s]+$/.test(e)) throw new UsageError(`--endpoint ${JSON.stringify(e)} is not http(s)://host:port`, command);
  }
  if (endpoints.length === 0) throw new UsageError('--endpoint needs at least one http(s)://host:port', command);
  if (tokenOption !== undefined && tokenFile !== undefined) throw new UsageError('give --token or --token-file, not both', command);
  const read = (file: string, option: string): Buffer => {
    try {
      return fs.readFileSync(file);
    } catch (e) {
      throw new UsageError(`--${option} ${JSON.stringify(file)} cannot be read: ${e instanceof Error ? e.message : String(e)}`, command);
    }
  };
  // A token file may hold two tokens (a rotation): the first is used.
  const token = tokenOption ?? (tokenFile !== undefined ? tokenLines(read(tokenFile, 'token-file').toString('utf8'))[0] : undefined) ?? process.env.DERECHO_TOKEN;
  return {
    endpoints,
    ...(token !== undefined && token !== '' ? { token } : {}),
    ...(caFile !== undefined ? { ca: read(caFile, 'ca-file') } : {}),
    ...(servername !== undefined ? { servername } : {}),
  };
}

function readStdin(): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    process.stdin.on('data', (chunk: Buffer) => chunks.push(chunk));
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    process.stdin.on('error', reject);
  });
}

function shortValue(value: string): string {
  const text = [...value].some((char) => char < ' ' || char === '"') ? JSON.stringify(value) : value;
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

async function cmdKv(parsed: Parsed, command: CommandSpec): Promise<number> {
  const [action, ...args] = parsed.args;
  const arity: Record<string, [number, number, string]> = {
    put: [2, 2, 'KEY VALUE'], get: [1, 1, 'KEY'], del: [1, 1, 'KEY'], ls: [0, 1, '[PREFIX]'],
  };
  if (action === undefined) throw new UsageError('kv needs an action: put, get, del or ls', command);
  const shape = arity[action];
  if (shape === undefined) throw new UsageError(`unknown kv action ${JSON.stringify(action)} (put, get, del or ls)`, command);
  if (args.length < shape[0] || args.length > shape[1]) {
    throw new UsageError(`kv ${action} takes ${shape[2]}; got ${args.length === 0 ? 'nothing' : args.map((arg) => JSON.stringify(arg)).join(' ')}`, command);
  }
  const versionOption = stringOption(parsed, 'version');
  if (versionOption !== undefined && action !== 'get') throw new UsageError('--version goes with kv get', command);
  const version = versionOption !== undefined ? parseVersion(versionOption, command) : undefined;
  const consistencyOption = stringOption(parsed, 'consistency');
  if (consistencyOption !== undefined && action !== 'get' && action !== 'ls') throw new UsageError('--consistency goes with kv get and kv ls', command);
  if (consistencyOption !== undefined && consistencyOption !== 'linearizable' && consistencyOption !== 'local') {
    throw new UsageError(`--consistency ${JSON.stringify(consistencyOption)}: use linearizable or local`, command);
  }
  const readOptions = consistencyOption === undefined ? undefined : { consistency: consistencyOption as 'linearizable' | 'local' };

  const remote = remoteOptions(parsed, command);
  let client: DerechoClient;
  let group: string;
  let subgroups: { name: string; type: string }[];
  if (remote !== null) {
    // A group elsewhere (in a cluster, through a port-forward or a Service): its subgroups from its API.
    client = new DerechoClient({ ...remote, timeoutMs: 15_000, rounds: 3, retryPauseMs: 300 });
    group = remote.endpoints.join(', ');
    subgroups = ((await client.request('GET', '/v1/subgroups')).body as { subgroups: { name: string; type: string }[] }).subgroups;
  } else {
    const state = oneGroup(parsed, command);
    client = new DerechoClient({ endpoints: state.members.map((member) => httpUrl(member)), timeoutMs: 15_000, rounds: 3, retryPauseMs: 300 });
    group = state.group;
    subgroups = state.subgroups;
  }
  const kvSubgroups = subgroups.filter((subgroup) => subgroup.type === 'kv');
  const asked = stringOption(parsed, 'subgroup');
  const subgroup = asked ?? kvSubgroups[0]?.name;
  if (subgroup === undefined) throw new RunnerError(`group ${group} has no subgroup of type kv (subgroups: ${subgroups.map((s) => `${s.name} (${s.type})`).join(', ')})`, 2);
  if (!kvSubgroups.some((s) => s.name === subgroup)) {
    const known = subgroups.find((s) => s.name === subgroup);
    throw new RunnerError(
      `--subgroup ${JSON.stringify(subgroup)}: ${known ? `is of type ${known.type}, not kv` : `no such subgroup in ${group}`} (kv subgroups: ${kvSubgroups.map((s) => s.name).join(', ') || 'none'})`,
      2,
    );
  }
  const kv = client.kv(subgroup);
  const json = parsed.options.has('json');
  const key = args[0]!;
  try {
    switch (action) {
      case 'put': {
        const value = args[1] === '-' ? await readStdin() : args[1]!;
        const result = await kv.put(key, value);
        out(json ? JSON.stringify(result) : `put ${key}: version ${versionText(result.version)} (${subgroup} shard ${result.shard}, ${result.persisted ? 'persisted' : 'delivered'})`);
        return 0;
      }
      case 'get': {
        const item = await kv.get(key, version, readOptions);
        if (item === null) {
          err(`derecho kv get: key ${JSON.stringify(key)} not found in ${subgroup}${version ? ` as of version ${versionText(version)}` : ''}`);
          return 1;
        }
        out(json ? JSON.stringify(item) : item.value);
        return 0;
      }
      case 'del': {
        const result = await client.request('DELETE', `/v1/kv/${encodeURIComponent(subgroup)}/${encodeURIComponent(key)}?wait=persisted`, undefined, [200, 404]);
        const body = result.body as { deleted?: boolean; shard?: number; version?: Version };
        if (json) out(JSON.stringify(body));
        if (body.deleted !== true) {
          err(`derecho kv del: key ${JSON.stringify(key)} not found in ${subgroup}`);
          return 1;
        }
        if (!json) out(`deleted ${key}: version ${body.version ? versionText(body.version) : '?'} (${subgroup} shard ${body.shard ?? '?'})`);
        return 0;
      }
      default: {
        const prefix = args[0] ?? '';
        const items = await kv.list(prefix, 1000, readOptions);
        if (json) {
          out(JSON.stringify(items));
          return 0;
        }
        if (items.length === 0) {
          out(`no keys in ${subgroup}${prefix ? ` starting with ${JSON.stringify(prefix)}` : ''}`);
          return 0;
        }
        const keyWidth = Math.max(3, ...items.map((item) => item.key.length));
        const versionWidth = Math.max(7, ...items.map((item) => versionText(item.version).length));
        out(`${'KEY'.padEnd(keyWidth)}  ${'VERSION'.padEnd(versionWidth)}  VALUE`);
        for (const item of items) out(`${item.key.padEnd(keyWidth)}  ${versionText(item.version).padEnd(versionWidth)}  ${shortValue(item.value)}`);
        return 0;
      }
    }
  } catch (e) {
    if (e instanceof DerechoError) {
      const hint = e.status === 503 || e.status === 504 ? `\nThe group may be starting, restarting or changing views; see \`${CMD} status\`.` : '';
      err(`derecho kv ${action}: ${e.message}${e.status !== 503 ? ` (HTTP ${e.status})` : ''}${hint}`);
      return 1;
    }
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------------
// down

/** Runner-made directories under ./.derecho (with the marker), for `down --purge` without a selection. */
function markedDirs(): string[] {
  const root = path.resolve(STATE_ROOT);
  try {
    return fs.readdirSync(root, { withFileTypes: true })
      .filter((entry) => entry.isDirectory() && fs.existsSync(path.join(root, entry.name, MARKER_FILE)))
      .map((entry) => path.join(root, entry.name));
  } catch {
    return [];
  }
}

/** Stops the group of one state directory; returns the pids still alive (none on success). */
async function stopGroup(dir: string): Promise<{ stopped: boolean; left: number[] }> {
  const before = readState(dir);
  if (before === null) return { stopped: false, left: [] };
  const agents = new Map<number, string>();
  const remember = (state: RunState | null): void => {
    for (const member of state?.members ?? []) if (member.pid !== null) agents.set(member.pid, member.configFile);
  };
  remember(before);
  const supervisorPid = before.supervisorPid;
  const supervisorAlive = ours(supervisorPid, 'derecho');
  if (supervisorAlive) {
    signal(supervisorPid, 'SIGTERM');
    // It stops its agents: SIGTERM, SIGKILL after 5 s.
    let left = await waitGone([supervisorPid], 15_000);
    if (left.length > 0) {
      signal(supervisorPid, 'SIGKILL');
      left = await waitGone(left, 3_000);
    }
    remember(readState(dir));
  }
  // Fallback: any recorded agent still alive.
  const leftovers = [...agents].filter(([pid, configFile]) => ours(pid, configFile)).map(([pid]) => pid);
  for (const pid of leftovers) signal(pid, 'SIGTERM');
  let left = await waitGone(leftovers, 5_000);
  for (const pid of left) signal(pid, 'SIGKILL');
  left = await waitGone(left, 3_000);
  const all = [supervisorPid, ...agents.keys()].filter((pid) => alive(pid) && (pid === supervisorPid ? ours(pid, 'derecho') : ours(pid, agents.get(pid)!)));
  if (all.length === 0) removeState(dir);
  return { stopped: true, left: all };
}

async function cmdDown(parsed: Parsed, command: CommandSpec): Promise<number> {
  if (parsed.args.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(parsed.args[0])}`, command);
  const purge = parsed.options.has('purge');
  const { dirs, explicit } = targetDirs(parsed);
  const targets = explicit ? dirs : purge ? [...new Set([...dirs, ...markedDirs()])].sort() : dirs;
  if (targets.length === 0) {
    out(`Nothing to stop: no Derecho group runs here (no state in ./${STATE_ROOT}/).`);
    return 0;
  }
  let code = 0;
  for (const dir of targets) {
    const state = readState(dir);
    const name = state?.group ?? path.basename(dir);
    const result = await stopGroup(dir);
    if (result.left.length > 0) {
      err(`derecho down: ${name}: processes ${result.left.join(', ')} are still alive after SIGKILL`);
      code = 1;
      continue;
    }
    if (result.stopped) {
      const pids = [state!.supervisorPid, ...state!.members.map((member) => member.pid).filter((pid): pid is number => pid !== null)];
      out(`Stopped ${name}: no process left (pids ${pids.join(', ')}).`);
    } else if (explicit) {
      out(`Nothing to stop: no Derecho group runs from ${shown(dir)}.`);
    }
    if (purge) {
      if (!fs.existsSync(dir)) continue;
      if (!fs.existsSync(path.join(dir, MARKER_FILE))) {
        err(`derecho down --purge: ${shown(dir)} was not made by derecho (no ${MARKER_FILE} in it); not deleting it`);
        code = 1;
        continue;
      }
      fs.rmSync(dir, { recursive: true, force: true });
      out(`Deleted ${shown(dir)}/ (data, logs, keys).`);
    } else if (result.stopped) {
      out(`Data and logs are kept in ${shown(dir)}/: \`${CMD} up\` restarts the group from them; \`${CMD} down --purge\` deletes them.`);
    }
  }
  return code;
}

// ---------------------------------------------------------------------------------------------------
// Entry point.

function packageVersion(): string {
  try {
    return (JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version?: string }).version ?? '?';
  } catch {
    return '?';
  }
}

/** Runs the command line `argv` (without node and the script); resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(0);
  });
  const [name, ...rest] = argv;
  if (name === undefined) {
    err(`${topUsage()}`);
    return 2;
  }
  if (name === '--help' || name === '-h') {
    out(topUsage());
    return 0;
  }
  if (name === '--version' || name === '-V') {
    out(`derecho ${packageVersion()}`);
    return 0;
  }
  const command = COMMANDS.find((candidate) => candidate.name === name);
  if (command === undefined) {
    const what = name.startsWith('-') ? `unknown option ${JSON.stringify(name)}` : `unknown command ${JSON.stringify(name)}`;
    err(`derecho: ${what}\n\n${topUsage()}`);
    return 2;
  }
  try {
    const parsed = parseArgs(command, rest);
    if (parsed.options.has('help')) {
      out(commandHelp(command));
      return 0;
    }
    switch (command.name) {
      case 'help': {
        const topic = parsed.args[0];
        if (topic === undefined) {
          out(topUsage());
          return 0;
        }
        const target = COMMANDS.find((candidate) => candidate.name === topic);
        if (target === undefined) throw new UsageError(`no command ${JSON.stringify(topic)}`, command);
        out(commandHelp(target));
        return 0;
      }
      case 'up': return await cmdUp(parsed, command);
      case 'supervise': return await cmdSupervise(parsed, command);
      case 'status': return await cmdStatus(parsed, command);
      case 'kv': return await cmdKv(parsed, command);
      case 'down': return await cmdDown(parsed, command);
      default: throw new Error(`unhandled command ${command.name}`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      err(`derecho ${command.name}: ${e.message}\n\n${commandUsage(e.command ?? command)}`);
      return 2;
    }
    if (e instanceof ConfigError) {
      err(`derecho ${command.name}: invalid manifest:\n${e.message}`);
      return 2;
    }
    if (e instanceof RunnerError) {
      err(`derecho ${command.name}: ${e.message}`);
      return e.exitCode;
    }
    err(`derecho ${command.name}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    return 1;
  }
}
