// The binaries of the test control plane (test/cluster/control-plane.ts): kube-apiserver, etcd and helm,
// built from Go modules into a cache outside the repository ($DERECHO_CACHE_DIR, default
// ~/.cache/derecho-ts; this file's builds go under its cluster/ folder).
//
//   - kube-apiserver: `go build k8s.io/kubernetes/cmd/kube-apiserver` inside the wrapper module
//     test/cluster/go/kube-apiserver (it requires k8s.io/kubernetes and replaces every staging module with
//     its published v0.Y.Z; see its go.mod). The first build takes a long while on 2 cores.
//   - helm: `go build helm.sh/helm/v3/cmd/helm` inside test/cluster/go/helm.
//   - etcd: the one the benchmark already builds (bench/etcd.ts, `ensureEtcdTools`), not a second copy.
//
// Each build is keyed by a stamp file holding a hash of its wrapper's go.mod, go.sum and build flags, so
// editing a go.mod rebuilds and anything else is a no-op. Builds take a lock in the cache, so test files
// running in parallel (and the CLI) wait for one build instead of racing. Errors say what failed and
// where the full build log is; a missing Go or an unreachable module proxy is a ClusterToolsUnavailable
// error, so a test can tell "cannot be had here" from "broken".
//
// CLI (prefetch, e.g. before a test run): node --import tsx test/cluster/tools.ts

import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { CACHE_DIR, ensureEtcdTools } from '../../bench/etcd.ts';
import { alive } from '../../node-agent/src/util/process.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const CLUSTER_CACHE_DIR = path.join(CACHE_DIR, 'cluster');

export interface ClusterTools {
  kubeApiserver: string;
  etcd: string;
  helm: string;
  /** Versions as the wrapper modules pin them (e.g. kubernetes v1.37.2). */
  versions: { kubernetes: string; helm: string; etcd: string };
}

/** The tools cannot be built on this machine: no Go toolchain (or too old a one), or no module proxy. */
export class ClusterToolsUnavailable extends Error {
  override name = 'ClusterToolsUnavailable';
}

type Log = (line: string) => void;

// ---------------------------------------------------------------------------------------------------
// Go.

const NETWORK_FAILURE = /dial tcp|no such host|connection refused|connection reset|i\/o timeout|TLS handshake timeout|network is unreachable|proxyconnect|Service Unavailable|Bad Gateway|GOPROXY=off|server misbehaving|temporary failure in name resolution/i;
const TOO_OLD_GO = /requires go >= ?\S+|go: downloading go1\.|toolchain not available|GOTOOLCHAIN/i;

/** The go binary: $GO, `go` on PATH, or the usual install location. Null when there is none. */
function findGo(): string | null {
  const candidates = [process.env.GO, ...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean).map((d) => path.join(d, 'go')), '/usr/local/go/bin/go', path.join(os.homedir(), 'go', 'bin', 'go'), '/usr/lib/go/bin/go'];
  for (const c of candidates) {
    if (!c) continue;
    try {
      fs.accessSync(c, fs.constants.X_OK);
      if (fs.statSync(c).isFile()) return c;
    } catch {
      // not here
    }
  }
  return null;
}

function goEnv(): NodeJS.ProcessEnv {
  // -mod=readonly: the wrappers' go.sum files are complete, and a build must never rewrite them.
  return { ...process.env, GOFLAGS: '-mod=readonly -buildvcs=false', CGO_ENABLED: '0' };
}

/** Runs a command, streaming its output lines to `onLine` and to `logFile`; rejects with the output's tail. */
function runStreaming(cmd: string, args: string[], cwd: string, logFile: string, onLine: (line: string) => void = () => {}): Promise<void> {
  return new Promise((resolve, reject) => {
    const out = fs.openSync(logFile, 'a');
    fs.writeSync(out, `$ ${cmd} ${args.join(' ')}\n`);
    const child = spawn(cmd, args, { cwd, env: goEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    const tail: string[] = [];
    let partial = '';
    const onData = (chunk: Buffer) => {
      fs.writeSync(out, chunk);
      const lines = (partial + chunk.toString()).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        tail.push(line);
        if (tail.length > 40) tail.shift();
        onLine(line);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('error', (e) => {
      fs.closeSync(out);
      reject(e);
    });
    child.once('close', (code, signal) => {
      fs.closeSync(out);
      if (partial) tail.push(partial);
      if (code === 0) resolve();
      else reject(Object.assign(new Error(`${path.basename(cmd)} ${args[0]} exited with ${code ?? signal}`), { outputTail: tail.join('\n') }));
    });
  });
}

interface GoToolSpec {
  /** Cache sub-directory and binary name. */
  name: string;
  /** The wrapper module's directory in the repository. */
  moduleDir: string;
  /** The main package to build. */
  pkg: string;
  /** The module whose version is reported (the `require` line of the wrapper's go.mod). */
  versionModule: string;
  /** Linker flags, from the wrapper's go.mod text (versions the upstream release builds stamp in). */
  ldflags: (goMod: string) => string[];
}

function requiredVersion(goMod: string, module: string): string {
  const m = new RegExp(`^\\s*(?:require\\s+)?${module.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}\\s+(v\\S+)`, 'm').exec(goMod);
  if (!m) throw new Error(`the wrapper go.mod does not require ${module}`);
  return m[1]!;
}

const KUBE_APISERVER: GoToolSpec = {
  name: 'kube-apiserver',
  moduleDir: path.join(HERE, 'go', 'kube-apiserver'),
  pkg: 'k8s.io/kubernetes/cmd/kube-apiserver',
  versionModule: 'k8s.io/kubernetes',
  ldflags: (goMod) => {
    // Without these the server reports v0.0.0-master at /version, which clients that check the server
    // version (helm's chart kubeVersion constraints, for one) refuse.
    const v = requiredVersion(goMod, 'k8s.io/kubernetes');
    const [, major, minor] = /^v(\d+)\.(\d+)\./.exec(v) ?? [];
    const pkg = 'k8s.io/component-base/version';
    return ['-s', '-w', `-X ${pkg}.gitVersion=${v}`, `-X ${pkg}.gitMajor=${major}`, `-X ${pkg}.gitMinor=${minor}`, `-X ${pkg}.gitTreeState=clean`];
  },
};

const HELM: GoToolSpec = {
  name: 'helm',
  moduleDir: path.join(HERE, 'go', 'helm'),
  pkg: 'helm.sh/helm/v3/cmd/helm',
  versionModule: 'helm.sh/helm/v3',
  ldflags: (goMod) => {
    // What helm's Makefile stamps in: its version, and the Kubernetes version of its client-go (the
    // default .Capabilities.KubeVersion of `helm template`).
    const v = requiredVersion(goMod, 'helm.sh/helm/v3');
    const kubeMinor = /^v0\.(\d+)\./.exec(requiredVersion(goMod, 'k8s.io/client-go'))?.[1] ?? '20';
    const flags = ['-s', '-w', `-X helm.sh/helm/v3/internal/version.version=${v}`, '-X helm.sh/helm/v3/internal/version.gitTreeState=clean'];
    for (const p of ['helm.sh/helm/v3/pkg/chartutil', 'helm.sh/helm/v3/pkg/lint/rules']) flags.push(`-X ${p}.k8sVersionMajor=1`, `-X ${p}.k8sVersionMinor=${kubeMinor}`);
    return flags;
  },
};

function formatDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  return s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

function classifyGoFailure(what: string, e: unknown, logFile: string): Error {
  const err = e as { code?: string; message?: string; outputTail?: string };
  const tail = err.outputTail ?? '';
  if (err.code === 'ENOENT') return new ClusterToolsUnavailable(`${what}: the go command cannot be run (${err.message})`);
  if (NETWORK_FAILURE.test(tail)) return new ClusterToolsUnavailable(`${what}: the Go module proxy is unreachable (full log: ${logFile}):\n${tail}`);
  if (TOO_OLD_GO.test(tail)) return new ClusterToolsUnavailable(`${what}: this Go is too old for the module (try GOTOOLCHAIN=go1.27.3, or install a newer Go; full log: ${logFile}):\n${tail}`);
  return new Error(`${what} failed (full log: ${logFile}):\n${tail || err.message}`);
}

/** Builds one wrapper module's command into the cache unless the stamp says it is there already. */
async function ensureGoTool(go: string, spec: GoToolSpec, log: Log): Promise<{ binary: string; version: string }> {
  const goMod = fs.readFileSync(path.join(spec.moduleDir, 'go.mod'), 'utf8');
  const goSum = fs.readFileSync(path.join(spec.moduleDir, 'go.sum'), 'utf8');
  const version = requiredVersion(goMod, spec.versionModule);
  const ldflags = spec.ldflags(goMod).join(' ');
  const key = createHash('sha256').update(goMod).update('\0').update(goSum).update('\0').update(spec.pkg).update('\0').update(ldflags).digest('hex');
  const dir = path.join(CLUSTER_CACHE_DIR, spec.name);
  const binary = path.join(dir, spec.name);
  const stamp = path.join(dir, 'build.stamp');
  if (fs.existsSync(binary) && fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8').split('\n')[0] === key) return { binary, version };

  fs.mkdirSync(dir, { recursive: true });
  const logFile = path.join(dir, 'build.log');
  fs.writeFileSync(logFile, '');
  const t0 = Date.now();
  // 1. Resolve the packages (downloads the modules it needs): network failures surface here.
  log(`${spec.name}: building ${spec.pkg}@${version} with Go (first time only; log: ${logFile})`);
  let total = 0;
  try {
    await runStreaming(go, ['list', '-deps', spec.pkg], spec.moduleDir, logFile, (line) => {
      if (line && !line.startsWith('go: ')) total++;
    });
  } catch (e) {
    throw classifyGoFailure(`resolving ${spec.pkg}`, e, logFile);
  }
  log(`${spec.name}: modules ready after ${formatDuration(Date.now() - t0)}; compiling up to ${total} packages`);
  // 2. Compile, reporting progress from `go build -v` (one line per package compiled, cached ones excepted).
  const tmp = `${binary}.tmp-${process.pid}`;
  let compiled = 0;
  let lastReport = Date.now();
  const ticker = setInterval(() => {
    if (Date.now() - lastReport >= 30_000) {
      lastReport = Date.now();
      log(`${spec.name}: ${compiled}/${total} packages compiled (${formatDuration(Date.now() - t0)})`);
    }
  }, 5_000);
  try {
    await runStreaming(go, ['build', '-v', '-trimpath', '-ldflags', ldflags, '-o', tmp, spec.pkg], spec.moduleDir, logFile, (line) => {
      if (/^[\w.-]+(\/[\w.~+-]+)*$/.test(line)) compiled++;
    });
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw classifyGoFailure(`building ${spec.pkg}`, e, logFile);
  } finally {
    clearInterval(ticker);
  }
  fs.renameSync(tmp, binary);
  fs.writeFileSync(stamp, `${key}\n${spec.pkg}@${version}\nldflags: ${ldflags}\nbuilt ${new Date().toISOString()} in ${formatDuration(Date.now() - t0)} with ${execFileSync(go, ['env', 'GOVERSION']).toString().trim()}\n`);
  log(`${spec.name}: built in ${formatDuration(Date.now() - t0)} (${compiled} packages compiled)`);
  return { binary, version };
}

// ---------------------------------------------------------------------------------------------------
// A lock in the cache, so parallel test files build once.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


async function withLock<T>(log: Log, fn: () => Promise<T>): Promise<T> {
  fs.mkdirSync(CLUSTER_CACHE_DIR, { recursive: true });
  const lock = path.join(CLUSTER_CACHE_DIR, '.build-lock');
  let told = false;
  for (;;) {
    try {
      fs.mkdirSync(lock);
      fs.writeFileSync(path.join(lock, 'pid'), String(process.pid));
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      let owner = NaN;
      try {
        owner = Number(fs.readFileSync(path.join(lock, 'pid'), 'utf8'));
      } catch {
        // being created or removed right now
      }
      let age = 0;
      try {
        age = Date.now() - fs.statSync(lock).mtimeMs;
      } catch {
        continue; // just released
      }
      // Left behind by a process that died (or that died between taking the lock and writing its pid).
      const known = Number.isInteger(owner) && owner > 0;
      if ((known && !alive(owner)) || (!known && age > 10_000)) {
        fs.rmSync(lock, { recursive: true, force: true });
        continue;
      }
      if (!told) {
        log(`waiting for another process (pid ${known ? owner : '?'}) that is building the cluster tools`);
        told = true;
      }
      await sleep(1000);
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------------

/**
 * Returns the paths of kube-apiserver, etcd and helm, building whatever is missing or stale into the cache.
 * Throws ClusterToolsUnavailable when Go or the module proxy is missing, and a plain Error when a build
 * fails for another reason.
 */
export async function ensureClusterTools(log: Log = (line) => console.log(`[cluster-tools] ${line}`)): Promise<ClusterTools> {
  const go = findGo();
  if (!go) throw new ClusterToolsUnavailable('no Go toolchain found (looked at $GO, PATH, /usr/local/go/bin): the test control plane is built from Go modules');
  // bench/etcd.ts runs `go` from PATH.
  const goDir = path.dirname(go);
  if (!(process.env.PATH ?? '').split(path.delimiter).includes(goDir)) process.env.PATH = `${goDir}${path.delimiter}${process.env.PATH ?? ''}`;

  return withLock(log, async () => {
    // Give a caller's pending I/O (e.g. ava's timeout message to its main process) a moment: the etcd
    // build below is synchronous.
    await sleep(50);
    let etcd: string;
    let etcdVersion = 'unknown';
    try {
      const tools = ensureEtcdTools(log);
      if (!tools.goEtcd) throw new Error('bench/etcd.ts returned no Go-built etcd');
      etcd = tools.goEtcd;
      etcdVersion = /Go-built etcd (\S+)/.exec(tools.notes.join('\n'))?.[1] ?? etcdVersion;
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      if (NETWORK_FAILURE.test(message) || TOO_OLD_GO.test(message)) throw new ClusterToolsUnavailable(`building etcd (bench/etcd.ts): ${message}`);
      throw e;
    }
    const helm = await ensureGoTool(go, HELM, log);
    const apiserver = await ensureGoTool(go, KUBE_APISERVER, log);
    return { kubeApiserver: apiserver.binary, etcd, helm: helm.binary, versions: { kubernetes: apiserver.version, helm: helm.version, etcd: etcdVersion } };
  });
}

// CLI: ensure the tools and print where they are.
if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  const t0 = Date.now();
  ensureClusterTools().then(
    (tools) => {
      console.log(`[cluster-tools] ready in ${formatDuration(Date.now() - t0)}:`);
      console.log(`  kube-apiserver ${tools.versions.kubernetes}: ${tools.kubeApiserver}`);
      console.log(`  etcd ${tools.versions.etcd}: ${tools.etcd}`);
      console.log(`  helm ${tools.versions.helm}: ${tools.helm}`);
    },
    (e: unknown) => {
      console.error(`[cluster-tools] ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
      process.exitCode = e instanceof ClusterToolsUnavailable ? 2 : 1;
    },
  );
}
