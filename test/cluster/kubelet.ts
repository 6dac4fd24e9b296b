// A mock kubelet for the operator's tests against the test control plane (control-plane.ts has no kubelet,
// no scheduler): it watches the Pods of one namespace and runs each as a real agent process on loopback
// (node --import tsx node-agent/src/agent/main.ts), the way a kubelet runs the container.
//
//  - Scheduling: every pod is bound to the node "mock-kubelet" (pods/binding), so deletion is graceful as
//    in a real cluster: the API server sets deletionTimestamp, this kubelet stops the process (SIGTERM,
//    SIGKILL after the grace period, at most 10 s) and then removes the pod (grace period 0, uid
//    precondition).
//  - Volumes: a configMap or secret volume is written to a directory of the pod (secret keys decoded, the
//    volume's `items` honoured); a persistentVolumeClaim volume is a directory per claim name that outlives
//    pods (a recreated pod finds its data); an emptyDir is a directory of the pod. A pod whose ConfigMap,
//    Secret or claim does not exist yet stays Pending (ContainerCreating) and is retried. While a pod runs,
//    its configMap and secret volumes follow their objects (every second, a file at a time), as the
//    kubelet's periodic sync does.
//  - Environment: the container's env with paths under a volume mount rewritten to the volume's directory;
//    DERECHO_PEERS host names (<pod>.<service>.<namespace>.svc) become 127.0.0.1 and a peer port this
//    kubelet allocates per pod name (kept across pod re-creations); DERECHO_PEER_PORT and DERECHO_HTTP_PORT
//    are the pod's allocated ports; DERECHO_LISTEN_HOST is 127.0.0.1.
//  - Status (the pods/status subresource): phase, podIP 127.0.0.1, conditions (PodScheduled, Initialized,
//    ContainersReady, Ready from polling /readyz: ready at the first success, not ready after two failures),
//    containerStatuses with restartCount, state and lastState.
//  - restartPolicy Always: a process that exits while its pod is not being deleted is started again after a
//    back-off (250 ms doubling to 4 s, reset after 10 s of running), and restartCount grows.
//  - Test hooks: kill(nodeId or pod name) SIGKILLs a process (the pod stays; it is restarted);
//    hold(pod)/release(pod) keep a pod's process from (re)starting, as a slow volume attach would;
//    statusUrl(pod) is where the operator should poll the member's /status; url(pod) is its HTTP base.
//    starts and terminations record every process start (pod uid) and every graceful stop (how long the
//    agent took to exit on SIGTERM, whether it had to be killed); portsFile shares the port map with an
//    operator running in another process (operator-child.ts).

import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { CoreV1Api, PatchStrategy, makeInformer, setHeaderOptions } from '@kubernetes/client-node';
import type { KubeConfig, V1Pod, V1Volume } from '@kubernetes/client-node';
import { AGENT_MAIN, REPO_ROOT, freePorts } from '../multiprocess/harness.ts';
import { tokenLines } from '../../node-agent/src/agent/api-credentials.ts';
import { httpRequest } from '../../node-agent/src/util/http-request.ts';
import { memberIdentity } from '../../operator/src/controller.ts';

export const NODE_NAME = 'mock-kubelet';
const HOST = '127.0.0.1';

/** Preloaded into every agent: it exits at once when the test process is gone (as harness.ts does). */
const ORPHAN_GUARD = `data:text/javascript,${encodeURIComponent(
  'const parent = process.ppid;'
  + 'setInterval(() => { if (process.ppid !== parent) process.kill(process.pid, "SIGKILL"); }, 250).unref();',
)}`;

function statusCode(e: unknown): number | undefined {
  return e && typeof e === 'object' && 'code' in e && typeof (e as { code: unknown }).code === 'number' ? (e as { code: number }).code : undefined;
}

function describe(e: unknown): string {
  if (e && typeof e === 'object' && 'code' in e && 'body' in e) return `HTTP ${String((e as { code: unknown }).code)}: ${String((e as { body: unknown }).body).slice(0, 300)}`;
  return e instanceof Error ? e.message : String(e);
}

/** The scheme of the agent container's readiness probe (HTTP by default, as the kubelet reads it). */
function probeScheme(pod: V1Pod): string {
  const container = pod.spec?.containers?.find((c) => c.name === 'agent') ?? pod.spec?.containers?.[0];
  return container?.readinessProbe?.httpGet?.scheme ?? 'HTTP';
}

/** Every running kubelet of this process: agentCall finds the pod behind a port through them. */
const KUBELETS = new Set<MockKubelet>();

/**
 * A request to an agent run by a mock kubelet (url from kubelet.url), as an in-cluster client makes it:
 * over https verified with the group's CA by the pod's DNS name, with the client API token when the pod
 * asks for one. Plain fetch-like answer: status and parsed JSON body (null when not JSON).
 */
export async function agentCall(url: string, init: { method?: string; body?: string; headers?: Record<string, string>; token?: string | null } = {}, timeoutMs = 10_000): Promise<{ status: number; body: unknown; text: string }> {
  const port = Number(new URL(url).port);
  let credentials: Awaited<ReturnType<MockKubelet['credentials']>> = null;
  for (const kubelet of KUBELETS) {
    credentials = await kubelet.credentials(port);
    if (credentials !== null) break;
  }
  const token = init.token === null ? undefined : init.token ?? credentials?.token;
  const res = await httpRequest({
    url, method: init.method ?? 'GET', timeoutMs,
    headers: { ...init.headers, ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}) },
    ...(init.body !== undefined ? { body: init.body } : {}),
    ...(credentials?.ca !== undefined ? { ca: credentials.ca } : {}),
    // As the operator verifies members: the pod's DNS name, or CN node-<id> (a user's certificates may carry no name).
    ...(credentials !== null && url.startsWith('https:') ? { servername: credentials.servername, checkServerIdentity: memberIdentity(credentials.servername, credentials.nodeId) } : {}),
  });
  const text = res.body.toString('utf8');
  let body: unknown = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body, text };
}

/** A volume whose source object does not exist yet: the pod waits in ContainerCreating. */
class NotReady extends Error {}

interface Termination {
  exitCode: number;
  signal: string | null;
  reason: string;
  startedAt: string;
  finishedAt: string;
  /** The termination message: the file at DERECHO_TERMINATION_MESSAGE_PATH, else (FallbackToLogsOnError) the end of this run's log. */
  message: string;
}

interface PodState {
  uid: string;
  name: string;
  namespace: string;
  pod: V1Pod;
  phase: 'pending' | 'running' | 'backoff' | 'terminating' | 'gone';
  child: ChildProcess | null;
  childExited: Promise<void> | null;
  restarts: number;
  startedAt: string | null;
  firstStartedAt: string | null;
  ready: boolean;
  readyFailures: number;
  readySince: string;
  lastTermination: Termination | null;
  quickFailures: number;
  timer: NodeJS.Timeout | null;
  waitingReason: string;
  waitingMessage: string;
  statusChain: Promise<void>;
  /** The environment of the running process (paths on this machine), or null before it starts. */
  env?: Record<string, string> | null;
  /** Where this run's output starts in the pod's log file. */
  logStart: number;
}

export interface KubeletOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  /** Where volumes, pod directories and logs go. */
  workDir: string;
  log?: (line: string) => void;
  /** How often /readyz is polled (default 500 ms). */
  readinessPeriodMs?: number;
  /** How often running pods' configMap and secret volumes are brought up to date (default 1000 ms). */
  volumeRefreshMs?: number;
  /**
   * A JSON file kept up to date with the ports allocated so far ({ "<namespace>/<pod>": { peer, http } },
   * replaced atomically): an operator in another process reads it to find each member's /status.
   */
  portsFile?: string;
}

export class MockKubelet {
  private readonly core: CoreV1Api;
  private readonly states = new Map<string, PodState>();
  private readonly ports = new Map<string, Promise<{ peer: number; http: number }>>();
  private readonly allocated = new Map<string, { peer: number; http: number }>();
  private readonly held = new Set<string>();
  private informer: ReturnType<typeof makeInformer<V1Pod>> | null = null;
  private readinessTimer: NodeJS.Timeout | null = null;
  private volumeTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  private readonly log: (line: string) => void;
  readonly logDir: string;
  /** Every process start, for tests: pod name, pod uid and pid. */
  readonly starts: { pod: string; uid: string; pid: number; at: number }[] = [];
  /**
   * Every graceful pod deletion the kubelet acted on, for tests: when (SIGTERM sent), how long the process
   * took to exit (null while it runs, 0 when none ran), and whether the grace period ran out (SIGKILL).
   */
  readonly terminations: { pod: string; uid: string; at: number; stoppedMs: number | null; forced: boolean }[] = [];

  private constructor(private readonly options: KubeletOptions) {
    this.core = options.kubeConfig.makeApiClient(CoreV1Api);
    this.log = options.log ?? (() => {});
    this.logDir = path.join(options.workDir, 'logs');
    fs.mkdirSync(this.logDir, { recursive: true });
  }

  static async start(options: KubeletOptions): Promise<MockKubelet> {
    const kubelet = new MockKubelet(options);
    KUBELETS.add(kubelet);
    await kubelet.startInformer();
    kubelet.readinessTimer = setInterval(() => void kubelet.probeAll(), options.readinessPeriodMs ?? 500);
    kubelet.volumeTimer = setInterval(() => void kubelet.refreshVolumes(), options.volumeRefreshMs ?? 1000);
    return kubelet;
  }

  private async startInformer(): Promise<void> {
    const { namespace } = this.options;
    const informer = makeInformer<V1Pod>(this.options.kubeConfig, `/api/v1/namespaces/${namespace}/pods`, () => this.core.listNamespacedPod({ namespace }));
    informer.on('add', (pod) => this.onPod(pod));
    informer.on('update', (pod) => this.onPod(pod));
    informer.on('delete', (pod) => this.onPodGone(pod));
    informer.on('error', (err: unknown) => {
      if (this.stopped) return;
      this.log(`kubelet: pod watch failed (${describe(err)}); restarting it`);
      setTimeout(() => {
        if (!this.stopped) void informer.start();
      }, 500);
    });
    this.informer = informer;
    await informer.start();
  }

  // ----- Test hooks.

  /**
   * The HTTP base URL of a pod's agent (its allocated port), e.g. https://127.0.0.1:41234 (http:// when its
   * probes are plain HTTP: spec.clientApi.tls false). Call it through agentCall, which brings the credentials.
   */
  url(pod: string, namespace = this.options.namespace): string {
    const ports = this.allocated.get(`${namespace}/${pod}`);
    if (ports === undefined) throw new Error(`kubelet: no ports allocated for pod ${namespace}/${pod}`);
    const state = [...this.states.values()].find((s) => s.namespace === namespace && s.name === pod && s.phase !== 'gone');
    return `${state !== undefined && probeScheme(state.pod) === 'HTTPS' ? 'https' : 'http'}://${HOST}:${ports.http}`;
  }

  /**
   * What a client of the agent listening on `port` needs, as a client in the cluster has it: the token of
   * the file the agent reads (its first line), the group's CA (ca.crt of the client Secret) and the pod's DNS
   * name to verify its certificate by. null when no pod of this kubelet has that port.
   */
  async credentials(port: number): Promise<{ token?: string; ca?: string; servername: string; nodeId: number } | null> {
    const key = [...this.allocated].find(([, ports]) => ports.http === port)?.[0];
    if (key === undefined) return null;
    const [namespace, name] = key.split('/') as [string, string];
    const state = [...this.states.values()].find((s) => s.namespace === namespace && s.name === name && s.phase !== 'gone');
    if (state === undefined) return null;
    const tokenFile = state.env?.DERECHO_API_TOKEN_FILE;
    const token = tokenFile !== undefined && fs.existsSync(tokenFile) ? tokenLines(fs.readFileSync(tokenFile, 'utf8'))[0] : undefined;
    const group = state.pod.metadata?.labels?.['app.kubernetes.io/instance'];
    let ca: string | undefined;
    if (group !== undefined && probeScheme(state.pod) === 'HTTPS') {
      const secret = await this.core.readNamespacedSecret({ name: `${group}-client`, namespace }).catch(() => null);
      const value = secret?.data?.['ca.crt'];
      if (value !== undefined) ca = Buffer.from(value, 'base64').toString('utf8');
    }
    const nodeId = Number(state.pod.metadata?.labels?.['derecho.dev/node-id'] ?? Number.NaN);
    return { ...(token !== undefined ? { token } : {}), ...(ca !== undefined ? { ca } : {}), servername: `${state.pod.spec?.hostname ?? name}.${state.pod.spec?.subdomain ?? ''}.${namespace}.svc`, nodeId };
  }

  /** Where the operator polls a member's /status (null until the pod has ports). */
  readonly statusUrl = (pod: { metadata: { name: string; namespace?: string } }): string | null => {
    const ports = this.allocated.get(`${pod.metadata.namespace ?? this.options.namespace}/${pod.metadata.name}`);
    return ports === undefined ? null : `http://${HOST}:${ports.http}/status`;
  };

  /** Keeps the pod's process from starting (or restarting) until release(). */
  hold(pod: string): void {
    this.held.add(pod);
  }

  release(pod: string): void {
    this.held.delete(pod);
    for (const state of this.states.values()) {
      if (state.name === pod && (state.phase === 'pending' || state.phase === 'backoff') && state.child === null) this.schedule(state, 0);
    }
  }

  /** SIGKILLs the process of a pod (by node id label or name); resolves once it is gone. The pod stays and is restarted. */
  async kill(target: number | string): Promise<number> {
    const matches = [...this.states.values()].filter((s) => s.child !== null && s.phase === 'running'
      && (typeof target === 'number' ? s.pod.metadata?.labels?.['derecho.dev/node-id'] === String(target) : s.name === target));
    if (matches.length !== 1) throw new Error(`kubelet: ${matches.length} running pods match ${String(target)}`);
    const state = matches[0]!;
    const pid = state.child!.pid!;
    const exited = state.childExited;
    state.child!.kill('SIGKILL');
    await exited;
    return pid;
  }

  /** Restarts of the pod's container so far (the pod's current incarnation). */
  restartCount(pod: string): number {
    return [...this.states.values()].find((s) => s.name === pod && s.phase !== 'gone')?.restarts ?? 0;
  }

  /** The pid of a pod's running process, if any. */
  pid(pod: string): number | null {
    return [...this.states.values()].find((s) => s.name === pod && s.child !== null)?.child?.pid ?? null;
  }

  /** The last lines of every pod's log (for a failing test). */
  logs(lines = 30): string {
    const out: string[] = [];
    for (const file of fs.existsSync(this.logDir) ? fs.readdirSync(this.logDir).sort() : []) {
      const text = fs.readFileSync(path.join(this.logDir, file), 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
      out.push(`--- ${file}\n${text}`);
    }
    return out.join('\n');
  }

  /** Stops watching and kills every process (SIGKILL); writes nothing to the API server. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    KUBELETS.delete(this);
    if (this.readinessTimer !== null) clearInterval(this.readinessTimer);
    if (this.volumeTimer !== null) clearInterval(this.volumeTimer);
    await this.informer?.stop().catch(() => {});
    const exits: Promise<void>[] = [];
    for (const state of this.states.values()) {
      if (state.timer !== null) clearTimeout(state.timer);
      if (state.child !== null && state.childExited !== null) {
        exits.push(state.childExited);
        state.child.kill('SIGKILL');
      }
    }
    await Promise.race([Promise.all(exits), new Promise((r) => setTimeout(r, 5000))]);
  }

  // ----- Pods.

  private onPod(pod: V1Pod): void {
    if (this.stopped) return;
    const uid = pod.metadata?.uid;
    const name = pod.metadata?.name;
    if (uid === undefined || name === undefined) return;
    let state = this.states.get(uid);
    if (state === undefined) {
      state = {
        uid, name, namespace: pod.metadata?.namespace ?? this.options.namespace, pod, phase: 'pending', child: null, childExited: null,
        restarts: 0, startedAt: null, firstStartedAt: null, ready: false, readyFailures: 0, readySince: new Date().toISOString(),
        lastTermination: null, quickFailures: 0, timer: null, waitingReason: 'ContainerCreating', waitingMessage: '', statusChain: Promise.resolve(), logStart: 0,
      };
      this.states.set(uid, state);
      if (!pod.spec?.nodeName) void this.bind(state);
      if (pod.metadata?.deletionTimestamp === undefined || pod.metadata.deletionTimestamp === null) {
        this.writeStatus(state);
        this.schedule(state, 0);
      }
    }
    state.pod = pod;
    if (pod.metadata?.deletionTimestamp && state.phase !== 'terminating' && state.phase !== 'gone') void this.terminate(state);
  }

  private onPodGone(pod: V1Pod): void {
    const state = pod.metadata?.uid !== undefined ? this.states.get(pod.metadata.uid) : undefined;
    if (state === undefined) return;
    state.phase = 'gone';
    if (state.timer !== null) clearTimeout(state.timer);
    // Deleted without waiting for us (grace period 0 by someone else): the process goes at once.
    state.child?.kill('SIGKILL');
    this.states.delete(state.uid);
  }

  private async bind(state: PodState): Promise<void> {
    try {
      await this.core.createNamespacedPodBinding({
        name: state.name, namespace: state.namespace,
        body: { apiVersion: 'v1', kind: 'Binding', metadata: { name: state.name, namespace: state.namespace }, target: { apiVersion: 'v1', kind: 'Node', name: NODE_NAME } },
      });
    } catch (e) {
      if (statusCode(e) !== 409 && statusCode(e) !== 404) this.log(`kubelet: cannot bind pod ${state.name}: ${describe(e)}`);
    }
  }

  private schedule(state: PodState, delayMs: number): void {
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = setTimeout(() => {
      state.timer = null;
      void this.startContainer(state);
    }, delayMs);
  }

  private portsOf(namespace: string, pod: string): Promise<{ peer: number; http: number }> {
    const key = `${namespace}/${pod}`;
    let ports = this.ports.get(key);
    if (ports === undefined) {
      ports = freePorts(2).then(([peer, http]) => {
        const p = { peer: peer!, http: http! };
        this.allocated.set(key, p);
        this.writePortsFile();
        return p;
      });
      this.ports.set(key, ports);
    }
    return ports;
  }

  private writePortsFile(): void {
    const file = this.options.portsFile;
    if (file === undefined) return;
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(Object.fromEntries(this.allocated)));
    fs.renameSync(`${file}.tmp`, file);
  }

  private podDir(state: PodState): string {
    return path.join(this.options.workDir, 'pods', `${state.name}-${state.uid.slice(0, 8)}`);
  }

  /** A host directory holding what the volume holds. */
  private async materialize(state: PodState, volume: V1Volume, refresh = false): Promise<string> {
    const { namespace } = state;
    if (volume.persistentVolumeClaim) {
      const claim = volume.persistentVolumeClaim.claimName;
      try {
        await this.core.readNamespacedPersistentVolumeClaim({ name: claim, namespace });
      } catch (e) {
        if (statusCode(e) === 404) throw new NotReady(`persistentvolumeclaim "${claim}" not found`);
        throw e;
      }
      const dir = path.join(this.options.workDir, 'volumes', namespace, claim);
      fs.mkdirSync(dir, { recursive: true });
      return dir;
    }
    const dir = path.join(this.podDir(state), 'volumes', volume.name);
    if (volume.emptyDir) {
      fs.mkdirSync(dir, { recursive: true });
      return dir;
    }
    let data: Record<string, Buffer>;
    let items: { key: string; path: string; mode?: number }[] | undefined;
    if (volume.configMap) {
      const name = volume.configMap.name!;
      try {
        const cm = await this.core.readNamespacedConfigMap({ name, namespace });
        data = Object.fromEntries(Object.entries(cm.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'utf8')]));
      } catch (e) {
        if (statusCode(e) === 404) throw new NotReady(`configmap "${name}" not found`);
        throw e;
      }
      items = volume.configMap.items;
    } else if (volume.secret) {
      const name = volume.secret.secretName!;
      try {
        const secret = await this.core.readNamespacedSecret({ name, namespace });
        data = Object.fromEntries(Object.entries(secret.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64')]));
      } catch (e) {
        if (statusCode(e) === 404) throw new NotReady(`secret "${name}" not found`);
        throw e;
      }
      items = volume.secret.items;
    } else {
      throw new Error(`volume ${volume.name}: only configMap, secret, persistentVolumeClaim and emptyDir volumes are supported`);
    }
    const entries = items ?? Object.keys(data).map((key) => ({ key, path: key }));
    const missing = entries.find((item) => data[item.key] === undefined);
    if (missing !== undefined) throw new NotReady(`volume ${volume.name}: key "${missing.key}" not found`);
    if (!refresh) {
      fs.rmSync(dir, { recursive: true, force: true });
      fs.mkdirSync(dir, { recursive: true });
    }
    for (const item of entries) {
      const content = data[item.key]!;
      const file = path.join(dir, item.path);
      if (refresh && fs.existsSync(file) && fs.readFileSync(file).equals(content)) continue;
      // Each file replaced atomically (the kubelet swaps the whole volume; a reader may still see files of
      // two versions side by side for a moment here, which the agent must survive too).
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(`${file}.tmp`, content, { mode: volume.secret ? 0o600 : 0o644 });
      fs.renameSync(`${file}.tmp`, file);
    }
    return dir;
  }

  /**
   * As the kubelet does periodically: the configMap and secret volumes of running pods take their objects'
   * current content (a renewed certificate reaches the agent without a restart).
   */
  private async refreshVolumes(): Promise<void> {
    for (const state of this.states.values()) {
      if (state.phase !== 'running') continue;
      for (const volume of state.pod.spec?.volumes ?? []) {
        if (!volume.secret && !volume.configMap) continue;
        await this.materialize(state, volume, true).catch((e: unknown) => this.log(`refreshing volume ${volume.name} of ${state.name}: ${String(e)}`));
      }
    }
  }

  /** The agent's environment: the container's env mapped onto this machine. */
  private async environment(state: PodState): Promise<Record<string, string>> {
    const pod = state.pod;
    const containers = pod.spec?.containers ?? [];
    const container = containers.find((c) => c.name === 'agent') ?? containers[0];
    if (container === undefined) throw new Error('the pod has no container');
    const mounts: { mountPath: string; dir: string }[] = [];
    for (const mount of container.volumeMounts ?? []) {
      const volume = pod.spec?.volumes?.find((v) => v.name === mount.name);
      if (volume === undefined) throw new Error(`volumeMount ${mount.name}: no such volume`);
      const dir = await this.materialize(state, volume);
      mounts.push({ mountPath: mount.mountPath.replace(/\/$/, ''), dir: mount.subPath ? path.join(dir, mount.subPath) : dir });
    }
    mounts.sort((a, b) => b.mountPath.length - a.mountPath.length);
    const own = await this.portsOf(state.namespace, state.name);
    const env: Record<string, string> = {};
    for (const variable of container.env ?? []) {
      const value = variable.value ?? '';
      if (variable.name === 'DERECHO_PEERS') env[variable.name] = await this.mapPeers(state.namespace, value);
      else if (variable.name === 'DERECHO_PEER_PORT') env[variable.name] = String(own.peer);
      else if (variable.name === 'DERECHO_HTTP_PORT') env[variable.name] = String(own.http);
      else {
        const mount = mounts.find((m) => value === m.mountPath || value.startsWith(`${m.mountPath}/`));
        env[variable.name] = mount === undefined ? value : mount.dir + value.slice(mount.mountPath.length);
      }
    }
    env.DERECHO_LISTEN_HOST = HOST;
    return env;
  }

  /** "2=kv-demo-2.kv-demo-peers.ns.svc:7000,..." -> "2=127.0.0.1:<allocated peer port of kv-demo-2>,...". */
  private async mapPeers(namespace: string, value: string): Promise<string> {
    const out: string[] = [];
    for (const entry of value.split(',').map((e) => e.trim()).filter((e) => e !== '')) {
      const eq = entry.indexOf('=');
      const address = entry.slice(eq + 1);
      const host = address.slice(0, address.lastIndexOf(':'));
      const [hostname, , ns] = host.split('.');
      const ports = await this.portsOf(ns ?? namespace, hostname!);
      out.push(`${entry.slice(0, eq)}=${HOST}:${ports.peer}`);
    }
    return out.join(',');
  }

  private startable(state: PodState): boolean {
    return !this.stopped && state.phase !== 'terminating' && state.phase !== 'gone' && state.child === null;
  }

  private async startContainer(state: PodState): Promise<void> {
    if (!this.startable(state)) return;
    if (this.held.has(state.name)) {
      state.waitingReason = state.restarts > 0 ? 'CrashLoopBackOff' : 'ContainerCreating';
      state.waitingMessage = 'held by the test';
      this.writeStatus(state);
      return; // release() schedules it
    }
    let env: Record<string, string>;
    try {
      env = await this.environment(state);
      state.env = env;
    } catch (e) {
      state.waitingReason = 'ContainerCreating';
      state.waitingMessage = e instanceof Error ? e.message : String(e);
      if (!(e instanceof NotReady)) this.log(`kubelet: pod ${state.name}: ${describe(e)}`);
      this.writeStatus(state);
      this.schedule(state, 500);
      return;
    }
    if (!this.startable(state)) return;
    const childEnv: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('DERECHO_')) childEnv[k] = v;
    Object.assign(childEnv, env);
    const logFile = path.join(this.logDir, `${state.namespace}_${state.name}.log`);
    // The container's terminationMessagePath, as the kubelet provides it (an empty file per run).
    const terminationFile = path.join(this.logDir, `${state.namespace}_${state.name}.termination-log`);
    fs.writeFileSync(terminationFile, '');
    childEnv.DERECHO_TERMINATION_MESSAGE_PATH = terminationFile;
    state.logStart = fs.existsSync(logFile) ? fs.statSync(logFile).size : 0;
    const fd = fs.openSync(logFile, 'a');
    let child: ChildProcess;
    try {
      fs.writeSync(fd, `--- mock kubelet: starting pod ${state.name} (uid ${state.uid}, restart ${state.restarts}) at ${new Date().toISOString()}\n`);
      child = spawn(process.execPath, ['--import', ORPHAN_GUARD, '--import', 'tsx', AGENT_MAIN], { cwd: REPO_ROOT, env: childEnv, stdio: ['ignore', fd, fd] });
    } finally {
      fs.closeSync(fd);
    }
    state.child = child;
    state.phase = 'running';
    state.startedAt = new Date().toISOString();
    state.firstStartedAt ??= state.startedAt;
    state.ready = false;
    state.readyFailures = 0;
    this.starts.push({ pod: state.name, uid: state.uid, pid: child.pid ?? -1, at: Date.now() });
    state.childExited = new Promise<void>((resolve) => {
      child.once('exit', (code, signal) => {
        this.onExit(state, child, code, signal);
        resolve();
      });
    });
    this.writeStatus(state);
  }

  /**
   * As the kubelet does: the termination message file (at most 4096 bytes); if it is empty, the container
   * failed and its terminationMessagePolicy is FallbackToLogsOnError, the last 80 lines (2048 bytes) of its log.
   */
  private terminationMessage(state: PodState, exitCode: number): string {
    const dir = this.logDir;
    try {
      const written = fs.readFileSync(path.join(dir, `${state.namespace}_${state.name}.termination-log`), 'utf8').slice(0, 4096);
      if (written !== '') return written;
      const policy = state.pod.spec?.containers?.[0]?.terminationMessagePolicy;
      if (exitCode === 0 || policy !== 'FallbackToLogsOnError') return '';
      const log = fs.readFileSync(path.join(dir, `${state.namespace}_${state.name}.log`));
      const tail = log.subarray(state.logStart).toString('utf8').split('\n').slice(-81).join('\n');
      return tail.length > 2048 ? tail.slice(-2048) : tail;
    } catch {
      return '';
    }
  }

  private onExit(state: PodState, child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (state.child !== child) return;
    state.child = null;
    const finishedAt = new Date().toISOString();
    const ranMs = state.startedAt ? Date.now() - Date.parse(state.startedAt) : 0;
    const exitCode = code ?? (signal === 'SIGKILL' ? 137 : signal === 'SIGTERM' ? 143 : 1);
    state.lastTermination = {
      exitCode,
      signal,
      reason: code === 0 ? 'Completed' : 'Error',
      startedAt: state.startedAt ?? finishedAt,
      finishedAt,
      message: this.terminationMessage(state, exitCode),
    };
    if (state.ready) state.readySince = finishedAt;
    state.ready = false;
    if (state.phase === 'terminating') {
      void this.finalize(state);
      return;
    }
    if (this.stopped || state.phase === 'gone') return;
    // restartPolicy Always.
    state.restarts++;
    state.quickFailures = ranMs >= 10_000 ? 0 : state.quickFailures + 1;
    const delay = Math.min(4000, 250 * 2 ** Math.max(0, state.quickFailures - 1));
    state.phase = 'backoff';
    state.waitingReason = 'CrashLoopBackOff';
    state.waitingMessage = `back-off ${delay} ms restarting failed container agent (exit ${state.lastTermination.exitCode}${signal ? `, ${signal}` : ''})`;
    this.log(`kubelet: pod ${state.name}: agent exited (${code ?? signal}); restarting in ${delay} ms`);
    this.writeStatus(state);
    this.schedule(state, delay);
  }

  /** Graceful deletion: SIGTERM, SIGKILL after the grace period (at most 10 s here), then remove the pod. */
  private async terminate(state: PodState): Promise<void> {
    state.phase = 'terminating';
    const record = { pod: state.name, uid: state.uid, at: Date.now(), stoppedMs: null as number | null, forced: false };
    this.terminations.push(record);
    if (state.timer !== null) clearTimeout(state.timer);
    const child = state.child;
    if (child === null) {
      record.stoppedMs = 0;
      await this.finalize(state);
      return;
    }
    child.kill('SIGTERM');
    const graceMs = Math.min(10, state.pod.spec?.terminationGracePeriodSeconds ?? 30) * 1000;
    const timer = setTimeout(() => {
      record.forced = true;
      child.kill('SIGKILL');
    }, graceMs);
    await state.childExited;
    record.stoppedMs = Date.now() - record.at;
    clearTimeout(timer);
  }

  private async finalize(state: PodState): Promise<void> {
    if (this.stopped) return;
    try {
      // With a body, the API server takes the DeleteOptions from it alone: the grace period goes there.
      await this.core.deleteNamespacedPod({ name: state.name, namespace: state.namespace, body: { gracePeriodSeconds: 0, preconditions: { uid: state.uid } } });
      this.log(`kubelet: pod ${state.name} (uid ${state.uid}) stopped and removed`);
    } catch (e) {
      if (statusCode(e) !== 404) this.log(`kubelet: cannot remove pod ${state.name}: ${describe(e)}`);
    }
  }

  // ----- Readiness and status.

  private async probeAll(): Promise<void> {
    await Promise.all([...this.states.values()].map(async (state) => {
      if (state.child === null || state.phase !== 'running') return;
      const ports = this.allocated.get(`${state.namespace}/${state.name}`);
      if (ports === undefined) return;
      let ok = false;
      try {
        // As the kubelet probes: the probe's scheme, an HTTPS server's certificate not verified.
        const scheme = probeScheme(state.pod) === 'HTTPS' ? 'https' : 'http';
        const res = await httpRequest({ url: `${scheme}://${HOST}:${ports.http}/readyz`, timeoutMs: 1000, verify: false });
        ok = res.status >= 200 && res.status < 400;
      } catch {
        ok = false;
      }
      if (state.child === null || state.phase !== 'running') return;
      if (ok) state.readyFailures = 0;
      else state.readyFailures++;
      const ready = ok || (state.ready && state.readyFailures < 2);
      if (ready !== state.ready) {
        state.ready = ready;
        state.readySince = new Date().toISOString();
        this.writeStatus(state);
      }
    }));
  }

  private statusBody(state: PodState): Record<string, unknown> {
    const pod = state.pod;
    const container = (pod.spec?.containers ?? []).find((c) => c.name === 'agent') ?? pod.spec?.containers?.[0];
    const running = state.child !== null;
    const condition = (type: string, status: boolean, since: string, reason?: string) => ({ type, status: status ? 'True' : 'False', lastProbeTime: null, lastTransitionTime: since, ...(reason && !status ? { reason } : {}) });
    const created = pod.metadata?.creationTimestamp ? new Date(pod.metadata.creationTimestamp).toISOString() : new Date().toISOString();
    const last = state.lastTermination;
    return {
      phase: state.firstStartedAt === null ? 'Pending' : 'Running',
      hostIP: HOST,
      hostIPs: [{ ip: HOST }],
      ...(state.firstStartedAt !== null ? { podIP: HOST, podIPs: [{ ip: HOST }] } : {}),
      startTime: created,
      conditions: [
        condition('PodScheduled', true, created),
        condition('Initialized', true, created),
        condition('ContainersReady', state.ready, state.readySince, 'ContainersNotReady'),
        condition('Ready', state.ready, state.readySince, 'ContainersNotReady'),
      ],
      containerStatuses: [{
        name: container?.name ?? 'agent',
        image: container?.image ?? '',
        imageID: `mock-kubelet://${container?.image ?? ''}`,
        containerID: running ? `mock://${state.child!.pid ?? 0}` : undefined,
        ready: state.ready,
        started: running,
        restartCount: state.restarts,
        state: running
          ? { running: { startedAt: state.startedAt } }
          : { waiting: { reason: state.waitingReason, ...(state.waitingMessage ? { message: state.waitingMessage } : {}) } },
        ...(last !== null ? { lastState: { terminated: { exitCode: last.exitCode, reason: last.reason, startedAt: last.startedAt, finishedAt: last.finishedAt, ...(last.signal ? { signal: last.signal === 'SIGKILL' ? 9 : 15 } : {}), ...(last.message !== '' ? { message: last.message } : {}) } } } : {}),
      }],
    };
  }

  /** Writes the pod's status (merge patch of pods/status, uid-guarded), one write at a time per pod. */
  private writeStatus(state: PodState): void {
    state.statusChain = state.statusChain.then(async () => {
      if (this.stopped || state.phase === 'gone') return;
      try {
        await this.core.patchNamespacedPodStatus({
          name: state.name, namespace: state.namespace,
          body: { metadata: { uid: state.uid }, status: this.statusBody(state) },
        }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
      } catch (e) {
        if (statusCode(e) !== 404 && statusCode(e) !== 409) this.log(`kubelet: cannot write the status of pod ${state.name}: ${describe(e)}`);
      }
    });
  }
}
