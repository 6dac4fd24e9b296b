// A real Kubernetes control plane on loopback for the operator's tests, the way envtest runs one: etcd and
// kube-apiserver only (no controller-manager, no scheduler, no kubelet), built by ./tools.ts.
//
//   const cp = await ControlPlane.start({ workDir });
//   await cp.apply([{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo' } }]);
//   const core = cp.kubeConfig.makeApiClient(CoreV1Api);
//   ...
//   await cp.stop();
//
// What it does not do (there is no controller-manager): no garbage collection of owned objects, namespaces
// stay Terminating forever once deleted, no "default" ServiceAccount appears in new namespaces (the
// ServiceAccount admission plugin is off, so pods can still be created), pods stay Pending (no scheduler,
// no kubelet), Services get cluster IPs but Endpoints/EndpointSlices are never filled in.
//
// Security: a fresh CA per control plane (openssl), a serving certificate for 127.0.0.1/localhost, an
// admin client certificate in group system:masters, a service-account key pair; authorization is RBAC,
// so `kubeConfigFor({ user, groups })` gives a client with a chosen identity to test RBAC rules.
//
// Processes: etcd and kube-apiserver are killed by stop(), by an exit hook of this process, and by a small
// watchdog (a shell loop) if this process dies without running its exit hooks (SIGKILL, e.g. ava's timeout).

import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  CustomObjectsApi, KubeConfig, KubernetesObjectApi, PatchStrategy, setHeaderOptions,
} from '@kubernetes/client-node';
import type { KubernetesObject } from '@kubernetes/client-node';
import YAML from 'yaml';
import { ensureClusterTools } from './tools.ts';
import type { ClusterTools } from './tools.ts';
import { freePort } from '../../node-agent/src/util/ports.ts';
import { errorText } from '../../operator/src/controller.ts';

const execFileP = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface ControlPlaneOptions {
  /** A directory for this control plane's files (a fresh sub-directory is made in it). */
  workDir: string;
  /** Already ensured tools; default: ensureClusterTools(log). */
  tools?: ClusterTools;
  log?: (line: string) => void;
  /** How long to wait for /readyz (default 90 s). */
  readyTimeoutMs?: number;
  /** Extra kube-apiserver flags, e.g. ['--feature-gates=Foo=true']. */
  apiserverArgs?: string[];
  /** Keep the files (certificates, etcd data, logs) after stop(). Default: removed. */
  keepFiles?: boolean;
}

export interface WaitOptions {
  timeoutMs?: number;
  intervalMs?: number;
}

/** Polls `probe` until it returns something other than undefined/null/false; throws with `what` and the last error on timeout. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | null | false> | T | undefined | null | false, opts: WaitOptions = {}): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown = null;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== null && v !== false) return v;
      lastError = null;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${describeError(lastError)})` : ''}`);
    }
    await sleep(opts.intervalMs ?? 100);
  }
}

/** A readable one-liner for errors thrown by @kubernetes/client-node (the operator's own formatter). */
export const describeError = errorText;

/** The HTTP status of an error thrown by @kubernetes/client-node, if it has one (e.g. 404, 409). */
export function statusCode(e: unknown): number | undefined {
  return e && typeof e === 'object' && 'code' in e && typeof (e as { code: unknown }).code === 'number' ? (e as { code: number }).code : undefined;
}

// ---------------------------------------------------------------------------------------------------
// Certificates (openssl).

async function openssl(dir: string, args: string[]): Promise<void> {
  try {
    await execFileP('openssl', args, { cwd: dir });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`openssl ${args[0]} failed: ${err.stderr?.trim() || err.message}`);
  }
}

interface Pki {
  caCert: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  adminCert: string;
  adminKey: string;
  saKey: string;
  saPub: string;
}

/** A client (or server) certificate signed by the CA in `dir`; returns [cert, key] paths. */
async function issueCertificate(dir: string, name: string, subject: string, extensions: string[]): Promise<[string, string]> {
  const key = path.join(dir, `${name}.key`);
  const csr = path.join(dir, `${name}.csr`);
  const crt = path.join(dir, `${name}.crt`);
  const ext = path.join(dir, `${name}.ext`);
  fs.writeFileSync(ext, `${extensions.join('\n')}\n`);
  await openssl(dir, ['req', '-new', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-keyout', key, '-out', csr, '-subj', subject]);
  await openssl(dir, ['x509', '-req', '-in', csr, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-set_serial', `0x${randomBytes(12).toString('hex')}`, '-days', '365', '-extfile', ext, '-out', crt]);
  fs.rmSync(csr);
  fs.rmSync(ext);
  return [crt, key];
}

async function clientCertificate(dir: string, name: string, user: string, groups: string[]): Promise<[string, string]> {
  const subject = `/CN=${user}${groups.map((g) => `/O=${g}`).join('')}`;
  return issueCertificate(dir, name, subject, ['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature,keyEncipherment', 'extendedKeyUsage=clientAuth']);
}

async function makePki(dir: string): Promise<Pki> {
  await openssl(dir, [
    'req', '-x509', '-new', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-keyout', 'ca.key', '-out', 'ca.crt',
    '-days', '365', '-subj', '/CN=derecho-test-ca', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature',
  ]);
  const [server, admin] = await Promise.all([
    issueCertificate(dir, 'apiserver', '/CN=kube-apiserver', [
      'basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature,keyEncipherment', 'extendedKeyUsage=serverAuth',
      'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc',
    ]),
    clientCertificate(dir, 'admin', 'derecho-test-admin', ['system:masters']),
    openssl(dir, ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', 'sa.key']),
  ]);
  await openssl(dir, ['pkey', '-in', 'sa.key', '-pubout', '-out', 'sa.pub']);
  return {
    caCert: path.join(dir, 'ca.crt'), caKey: path.join(dir, 'ca.key'),
    serverCert: server[0], serverKey: server[1], adminCert: admin[0], adminKey: admin[1],
    saKey: path.join(dir, 'sa.key'), saPub: path.join(dir, 'sa.pub'),
  };
}

function kubeconfigYaml(server: string, caCert: string, cert: string, key: string, user: string): string {
  const b64 = (f: string) => fs.readFileSync(f).toString('base64');
  return YAML.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'derecho-test', cluster: { server, 'certificate-authority-data': b64(caCert) } }],
    users: [{ name: user, user: { 'client-certificate-data': b64(cert), 'client-key-data': b64(key) } }],
    contexts: [{ name: 'derecho-test', context: { cluster: 'derecho-test', user } }],
    'current-context': 'derecho-test',
  });
}

// ---------------------------------------------------------------------------------------------------
// Processes.

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function track(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
}

function running(c: ChildProcess | null): c is ChildProcess {
  return c !== null && c.exitCode === null && c.signalCode === null;
}

async function terminate(c: ChildProcess | null, graceMs: number): Promise<void> {
  if (!running(c)) return;
  const exited = new Promise<void>((r) => c.once('exit', () => r()));
  c.kill('SIGTERM');
  const timer = setTimeout(() => c.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/**
 * Kills (SIGKILL) every pid listed in `pidFile` once process `parent` is gone; exits when `pidFile` is
 * removed (stop() removes it). A shell loop, so it works for any child and needs nothing installed.
 */
function startWatchdog(pidFile: string): ChildProcess {
  const script = 'parent=$1; pids=$2; while kill -0 "$parent" 2>/dev/null; do [ -f "$pids" ] || exit 0; sleep 1; done; '
    + '[ -f "$pids" ] && for p in $(cat "$pids"); do kill -KILL "$p" 2>/dev/null; done; rm -f "$pids"; exit 0';
  const w = spawn('sh', ['-c', script, 'derecho-control-plane-watchdog', String(process.pid), pidFile], { stdio: 'ignore', detached: true });
  w.unref();
  return w;
}

function tail(file: string, lines = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

function getJson(url: string, pki: Pki): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca: fs.readFileSync(pki.caCert), cert: fs.readFileSync(pki.adminCert), key: fs.readFileSync(pki.adminKey), timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

// ---------------------------------------------------------------------------------------------------

export class ControlPlane {
  /** Where everything of this control plane lives (certificates, etcd data, logs, kubeconfig). */
  readonly dir: string;
  readonly kubeconfigPath: string;
  /** https://127.0.0.1:PORT */
  server = '';
  /** Admin (system:masters) client configuration, loaded from kubeconfigPath. */
  kubeConfig = new KubeConfig();
  tools!: ClusterTools;
  readonly etcdLog: string;
  readonly apiserverLog: string;
  etcdEndpoint = '';

  private etcd: ChildProcess | null = null;
  private apiserver: ChildProcess | null = null;
  private watchdog: ChildProcess | null = null;
  private pki!: Pki;
  private readonly pidFile: string;
  private stopped = false;

  private constructor(dir: string, private readonly options: ControlPlaneOptions) {
    this.dir = dir;
    this.kubeconfigPath = path.join(dir, 'kubeconfig');
    this.etcdLog = path.join(dir, 'etcd.log');
    this.apiserverLog = path.join(dir, 'kube-apiserver.log');
    this.pidFile = path.join(dir, 'pids');
  }

  /** Starts etcd and kube-apiserver on free loopback ports and waits for /readyz. */
  static async start(options: ControlPlaneOptions): Promise<ControlPlane> {
    const log = options.log ?? (() => {});
    const tools = options.tools ?? (await ensureClusterTools(log));
    fs.mkdirSync(options.workDir, { recursive: true });
    const cp = new ControlPlane(fs.mkdtempSync(path.join(options.workDir, 'control-plane-')), options);
    cp.tools = tools;
    try {
      cp.pki = await makePki(cp.dir);
      // A port picked free can be taken before the server binds it: try again with new ports then.
      for (let attempt = 1; ; attempt++) {
        try {
          await cp.launch();
          break;
        } catch (e) {
          const inUse = /address already in use/.test(tail(cp.etcdLog, 200) + tail(cp.apiserverLog, 200));
          if (!inUse || attempt >= 3) throw e;
          log(`control plane: a port was taken, retrying (${attempt})`);
          await cp.killProcesses();
        }
      }
    } catch (e) {
      await cp.stop({ keepFiles: true });
      throw e;
    }
    return cp;
  }

  private async launch(): Promise<void> {
    const { tools, pki, dir } = this;
    const [etcdPort, peerPort, apiPort] = await Promise.all([freePort(), freePort(), freePort()]);
    fs.writeFileSync(this.pidFile, '');
    this.watchdog ??= startWatchdog(this.pidFile);

    this.etcdEndpoint = `http://127.0.0.1:${etcdPort}`;
    const peer = `http://127.0.0.1:${peerPort}`;
    fs.rmSync(path.join(dir, 'etcd'), { recursive: true, force: true });
    this.etcd = this.spawnLogged(tools.etcd, [
      '--name', 'control-plane', '--data-dir', path.join(dir, 'etcd'),
      '--listen-client-urls', this.etcdEndpoint, '--advertise-client-urls', this.etcdEndpoint,
      '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer,
      '--initial-cluster', `control-plane=${peer}`, '--initial-cluster-state', 'new',
      // A test's data is thrown away: no fsync (etcd >= 3.5; this is why the Go-built etcd is used).
      '--unsafe-no-fsync',
      '--logger', 'zap', '--log-level', 'warn',
    ], this.etcdLog);

    this.server = `https://127.0.0.1:${apiPort}`;
    this.apiserver = this.spawnLogged(tools.kubeApiserver, [
      `--etcd-servers=${this.etcdEndpoint}`,
      '--bind-address=127.0.0.1', `--secure-port=${apiPort}`, '--advertise-address=127.0.0.1',
      `--cert-dir=${path.join(dir, 'apiserver-certs')}`, `--tls-cert-file=${pki.serverCert}`, `--tls-private-key-file=${pki.serverKey}`,
      `--client-ca-file=${pki.caCert}`,
      '--authorization-mode=RBAC',
      // As envtest: no ServiceAccount admission (nothing creates the "default" service accounts).
      '--disable-admission-plugins=ServiceAccount',
      // An allocation range only: no traffic goes there (no kube-proxy, no nodes).
      '--service-cluster-ip-range=10.0.0.0/24',
      '--allow-privileged=true',
      `--service-account-issuer=${this.server}`, `--service-account-key-file=${pki.saPub}`, `--service-account-signing-key-file=${pki.saKey}`,
      // The "kubernetes" Service's endpoints would be 127.0.0.1, which Endpoints validation rejects
      // (loopback), so the reconciler would only log errors: there are no pods to reach it anyway.
      '--endpoint-reconciler-type=none',
      // Feature gates: none are turned off. The watch-cache consistent reads (ConsistentListFromCache,
      // WatchList) need etcd >= 3.4.31 / 3.5.13 for progress notifications; this etcd is 3.6.x (built by
      // bench/etcd.ts from go.etcd.io/etcd/server/v3), so the defaults are right. With Debian's etcd 3.4.23
      // they would have to be off: --feature-gates=ConsistentListFromCache=false,WatchList=false.
      ...(this.options.apiserverArgs ?? []),
    ], this.apiserverLog);

    const timeoutMs = this.options.readyTimeoutMs ?? 90_000;
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      for (const [name, p, file] of [['etcd', this.etcd, this.etcdLog], ['kube-apiserver', this.apiserver, this.apiserverLog]] as const) {
        if (p === null || p.exitCode !== null || p.signalCode !== null) throw new Error(`${name} exited (${p?.exitCode ?? p?.signalCode}) during start-up; last lines of ${file}:\n${tail(file)}`);
      }
      try {
        const r = await getJson(`${this.server}/readyz`, pki);
        if (r.status === 200) break;
        last = `HTTP ${r.status}: ${r.body.slice(0, 500)}`;
      } catch (e) {
        last = e instanceof Error ? e.message : String(e);
      }
      if (Date.now() > deadline) {
        throw new Error(`kube-apiserver not ready after ${timeoutMs} ms (last /readyz: ${last}); last lines of ${this.apiserverLog}:\n${tail(this.apiserverLog)}`);
      }
      await sleep(200);
    }
    fs.writeFileSync(this.kubeconfigPath, kubeconfigYaml(this.server, pki.caCert, pki.adminCert, pki.adminKey, 'derecho-test-admin'), { mode: 0o600 });
    this.kubeConfig = new KubeConfig();
    this.kubeConfig.loadFromFile(this.kubeconfigPath);
  }

  private spawnLogged(binary: string, args: string[], logFile: string): ChildProcess {
    const fd = fs.openSync(logFile, 'a');
    fs.writeSync(fd, `$ ${binary} ${args.join(' ')}\n`);
    const child = spawn(binary, args, { stdio: ['ignore', fd, fd] });
    fs.closeSync(fd);
    track(child);
    if (child.pid !== undefined) fs.appendFileSync(this.pidFile, `${child.pid}\n`);
    return child;
  }

  private async killProcesses(): Promise<void> {
    // kube-apiserver first (it would otherwise log etcd errors), then etcd. Short grace periods: the data
    // is thrown away, so a clean shutdown buys nothing.
    await terminate(this.apiserver, 2000);
    await terminate(this.etcd, 2000);
  }

  /** Stops everything and (unless keepFiles) removes this control plane's directory. Idempotent. */
  async stop(opts: { keepFiles?: boolean } = {}): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.killProcesses();
    fs.rmSync(this.pidFile, { force: true }); // the watchdog exits when its pid file is gone
    if (running(this.watchdog)) this.watchdog.kill('SIGKILL');
    if (!(opts.keepFiles ?? this.options.keepFiles)) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** The last lines of both logs, for a failing test's output. */
  logs(lines = 40): string {
    return `--- ${this.etcdLog}\n${tail(this.etcdLog, lines)}\n--- ${this.apiserverLog}\n${tail(this.apiserverLog, lines)}`;
  }

  /**
   * Server-side apply of each object, in order (so a CRD can precede its objects, a Namespace what lives
   * in it). Returns the objects as the server has them. `force` (default true) takes over fields other
   * managers own, as `kubectl apply --server-side --force-conflicts` does.
   */
  async apply<T extends KubernetesObject>(objects: T | T[], opts: { fieldManager?: string; force?: boolean } = {}): Promise<T[]> {
    // A client per call: KubernetesObjectApi caches API discovery, which goes stale when CRDs are added.
    const api = KubernetesObjectApi.makeApiClient(this.kubeConfig);
    const out: T[] = [];
    for (const o of Array.isArray(objects) ? objects : [objects]) {
      out.push(await api.patch(o, undefined, undefined, opts.fieldManager ?? 'derecho-test', opts.force ?? true, PatchStrategy.ServerSideApply));
    }
    return out;
  }

  /**
   * JSON merge patch of a custom object's /status subresource (what an operator does to report status).
   * The generated client's default content type for patches is JSON Patch; the header is set explicitly.
   */
  async patchCustomObjectStatus(ref: { group: string; version: string; plural: string; name: string; namespace?: string }, status: unknown): Promise<unknown> {
    const api = this.kubeConfig.makeApiClient(CustomObjectsApi);
    const options = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
    const body = { status };
    if (ref.namespace === undefined) {
      return api.patchClusterCustomObjectStatus({ group: ref.group, version: ref.version, plural: ref.plural, name: ref.name, body }, options);
    }
    return api.patchNamespacedCustomObjectStatus({ group: ref.group, version: ref.version, plural: ref.plural, namespace: ref.namespace, name: ref.name, body }, options);
  }

  /** Polls until a CustomResourceDefinition reports Established (its API is then served). */
  async waitForCrd(name: string, opts: WaitOptions = {}): Promise<void> {
    const api = KubernetesObjectApi.makeApiClient(this.kubeConfig);
    await waitFor(`CRD ${name} to be Established`, async () => {
      const crd = (await api.read({ apiVersion: 'apiextensions.k8s.io/v1', kind: 'CustomResourceDefinition', metadata: { name } })) as KubernetesObject & { status?: { conditions?: { type: string; status: string }[] } };
      return crd.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True') ?? false;
    }, opts);
  }

  waitFor<T>(what: string, probe: () => Promise<T | undefined | null | false> | T | undefined | null | false, opts: WaitOptions = {}): Promise<T> {
    return waitFor(what, probe, opts);
  }

  /**
   * A kubeconfig (path and loaded KubeConfig) for another identity, authenticated by a client certificate
   * from this control plane's CA: use it to check that RBAC rules (e.g. the chart's operator Role) suffice.
   */
  async kubeConfigFor(identity: { user: string; groups?: string[] }): Promise<{ kubeconfigPath: string; kubeConfig: KubeConfig }> {
    const name = `user-${identity.user.replace(/[^\w.-]/g, '_')}-${randomBytes(3).toString('hex')}`;
    const [cert, key] = await clientCertificate(this.dir, name, identity.user, identity.groups ?? []);
    const kubeconfigPath = path.join(this.dir, `${name}.kubeconfig`);
    fs.writeFileSync(kubeconfigPath, kubeconfigYaml(this.server, this.pki.caCert, cert, key, identity.user), { mode: 0o600 });
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromFile(kubeconfigPath);
    return { kubeconfigPath, kubeConfig };
  }

  /** Runs helm against this control plane (--kubeconfig added); returns stdout, throws with stderr. */
  async helm(args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<string> {
    return runHelm(this.tools.helm, ['--kubeconfig', this.kubeconfigPath, ...args], { ...opts, home: path.join(this.dir, 'helm-home') });
  }
}

/**
 * Runs a helm binary with its config, cache and data directories under `home` (never the user's ~/.config
 * or ~/.cache), returning stdout; throws with stderr.
 */
export async function runHelm(helm: string, args: string[], opts: { cwd?: string; timeoutMs?: number; home: string }): Promise<string> {
  const env = {
    ...process.env,
    HELM_CONFIG_HOME: path.join(opts.home, 'config'), HELM_CACHE_HOME: path.join(opts.home, 'cache'), HELM_DATA_HOME: path.join(opts.home, 'data'),
  };
  try {
    const { stdout } = await execFileP(helm, args, { cwd: opts.cwd, env, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 << 20 });
    return stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`helm ${args.filter((a) => !a.startsWith('--kubeconfig') && !a.endsWith('kubeconfig')).join(' ')} failed: ${err.stderr?.trim() || err.message}`);
  }
}
