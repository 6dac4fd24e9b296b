// The controller around the pure reconcile (reconcile.ts): informers keep caches of the DerechoGroups and
// the objects they own, a work queue keyed by group runs one reconcile at a time per group, and each
// reconcile reads the caches and the members' /status, calls reconcile(), and writes its output:
//
//   1. the finalizer, added first when reconcile wants it and it is missing;
//   2. `objects` by server-side apply (field manager "derecho-operator", force), in reconcile's order;
//   3. `deletes` with the uid as a precondition (an object replaced meanwhile is left alone);
//   4. the status, by server-side apply on the /status subresource (fields reconcile drops disappear);
//   5. the finalizer removed, when reconcile says the group may go;
//   6. Events (core/v1, involvedObject = the group, `related` = the pod), aggregated like client-go's
//      recorder (same reason and message within 10 minutes: the count goes up);
//   7. a requeue after reconcile's requeueAfterSeconds, at most pollIntervalSeconds while the group has
//      pods, so that view changes reach the status within seconds.
//
// Informers (ListWatch from @kubernetes/client-node with a watch of our own): list, then watch from the
// list's resourceVersion; a 410 Gone relists (ListWatch); any other error restarts the informer after a
// backoff (ListWatch stops on errors); the server closes each watch after a randomized timeoutSeconds and
// a watch with no event or bookmark for longer than that is dropped on our side (watches can go silent).
// Every group is also re-queued every resyncSeconds. With a list of namespaces (--namespace a,b) each
// resource type has one informer per namespace (ScopedInformer): no request names any other namespace,
// or none at all, so a Role in each listed namespace is all the access the operator needs, and every
// write goes into the namespace of the group it is for.
//
// Expectations: after writing, a group is not reconciled again until the caches show the writes (the
// resourceVersions returned, deleted uids gone or terminating), so reconcile never acts twice on a stale
// view of its own changes (e.g. rolling two pods at once). Bounded: after expectationTimeoutMs it goes on.
//
// Leadership: informers run in every replica (a standby has warm caches); the work queue and its workers
// run only while activate()d, i.e. while this replica holds the Lease (leader.ts).

import { randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import { ListWatch, Watch } from '@kubernetes/client-node';
import type { KubeConfig, KubernetesListObject, KubernetesObject } from '@kubernetes/client-node';
import { createLogger } from '../../node-agent/src/agent/logger.ts';
import type { Logger } from '../../node-agent/src/agent/logger.ts';
import { httpRequest } from '../../node-agent/src/util/http-request.ts';
import { CRD_API_VERSION, CRD_KIND, CRD_PLURAL, LABEL, memberNodeId, names, peerHost } from './kube.ts';
import type { KubeObject, ObjectRef, ObservedPod, ObservedSecret } from './kube.ts';
import { x509Issuer } from './certs.ts';
import { createOperatorMetrics } from './metrics.ts';
import type { OperatorMetrics } from './metrics.ts';
import { DEFAULT_OPTIONS, reconcile, withWriteFailures } from './reconcile.ts';
import type { AgentReports, DerechoGroupResource, GroupEvent, ObservedObjects, OperatorOptions, ReconcileOutput, WriteFailure } from './reconcile.ts';
import { parseAgentReport } from './status.ts';
import type { AgentReport, DerechoGroupStatus } from './status.ts';

export const FIELD_MANAGER = 'derecho-operator';
export const EVENT_COMPONENT = 'derecho-operator';

// ---------------------------------------------------------------------------------------------------
// Small helpers.

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The HTTP status of an error from @kubernetes/client-node or KubeRest, if any. */
export function statusCodeOf(e: unknown): number | undefined {
  if (e && typeof e === 'object') {
    const code = (e as { code?: unknown; statusCode?: unknown }).code ?? (e as { statusCode?: unknown }).statusCode;
    if (typeof code === 'number') return code;
  }
  return undefined;
}

/** A one-line description of an API error (the Status message when there is one). */
export function errorText(e: unknown): string {
  if (e && typeof e === 'object' && 'code' in e && 'body' in e) {
    const { code, body } = e as { code: unknown; body: unknown };
    let message = typeof body === 'string' ? body : JSON.stringify(body);
    try {
      message = (JSON.parse(typeof body === 'string' ? body : '') as { message?: string }).message ?? message;
    } catch {
      // not JSON
    }
    return `HTTP ${String(code)}: ${message}`;
  }
  return e instanceof Error ? e.message : String(e);
}

/** JSON with object keys sorted (the API server returns custom objects with sorted keys). */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (v !== null && typeof v === 'object' && !Array.isArray(v)
    ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
    : v));
}

/** Whether resourceVersion `a` is at least `b` (etcd revisions: decimal integers; otherwise only equality counts). */
function rvAtLeast(a: string | undefined, b: string): boolean {
  if (a === undefined) return false;
  if (a === b) return true;
  return /^[0-9]+$/.test(a) && /^[0-9]+$/.test(b) ? BigInt(a) >= BigInt(b) : false;
}

function groupKey(namespace: string, name: string): string {
  return `${namespace}/${name}`;
}

function splitKey(key: string): { namespace: string; name: string } {
  const slash = key.indexOf('/');
  return { namespace: key.slice(0, slash), name: key.slice(slash + 1) };
}

/** An error answer of the API server: `code` is the HTTP status, `body` the Status text (as ApiException has them). */
export class KubeApiError extends Error {
  override name = 'KubeApiError';
  constructor(readonly code: number, readonly body: string, what: string) {
    let message = body.slice(0, 500);
    try {
      message = (JSON.parse(body) as { message?: string }).message ?? message;
    } catch {
      // not JSON
    }
    super(`${what}: HTTP ${code}: ${message}`);
  }
}

/**
 * Plain JSON requests to the API server with the kubeconfig's credentials. The generated client is not
 * used for object bodies: its model serializer drops every field whose TypeScript name differs from the
 * JSON name (NetworkPolicy ingress `from`, JSON schema `default`, `x-kubernetes-*`), and it turns
 * timestamps into Date objects; reconcile reads and writes plain JSON.
 */
export class KubeRest {
  constructor(private readonly kubeConfig: KubeConfig) {}

  async request<T>(method: string, path: string, opts: { body?: unknown; contentType?: string; timeoutMs?: number } = {}): Promise<T> {
    const cluster = this.kubeConfig.getCurrentCluster();
    if (!cluster) throw new Error('the kubeconfig has no current cluster');
    const url = new URL(cluster.server.replace(/\/$/, '') + path);
    const payload = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
    const headers: Record<string, string | number> = { Accept: 'application/json' };
    if (payload !== undefined) {
      headers['Content-Type'] = opts.contentType ?? 'application/json';
      headers['Content-Length'] = payload.byteLength;
    }
    const options: https.RequestOptions = { method, headers };
    await this.kubeConfig.applyToHTTPSOptions(options);
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const what = `${method} ${url.pathname}`;
    return new Promise<T>((resolve, reject) => {
      const request = (url.protocol === 'http:' ? http : https).request(url, { ...options, timeout: timeoutMs }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => {
          const code = res.statusCode ?? 0;
          if (code < 200 || code > 299) {
            reject(new KubeApiError(code, text, what));
            return;
          }
          try {
            resolve((text === '' ? {} : JSON.parse(text)) as T);
          } catch (e) {
            reject(e instanceof Error ? e : new Error(String(e)));
          }
        });
        res.on('error', reject);
      });
      request.on('timeout', () => request.destroy(new Error(`${what}: no answer within ${timeoutMs} ms`)));
      request.on('error', reject);
      if (payload !== undefined) request.write(payload);
      request.end();
    });
  }

  get<T>(path: string, timeoutMs?: number): Promise<T> {
    return this.request<T>('GET', path, timeoutMs !== undefined ? { timeoutMs } : {});
  }

  /** Server-side apply of a whole object (the object's own path is derived from `type`). */
  apply<T extends KubeObject>(object: KubeObject, type: ResourceType & { namespaced?: boolean }, opts: { fieldManager: string; force: boolean; subresource?: string }): Promise<T> {
    const query = new URLSearchParams({ fieldManager: opts.fieldManager, force: String(opts.force) });
    const path = resourcePath(type, type.namespaced === false ? undefined : object.metadata.namespace, object.metadata.name, opts.subresource);
    return this.request<T>('PATCH', `${path}?${query.toString()}`, { body: object, contentType: 'application/apply-patch+yaml' });
  }

  mergePatch<T>(path: string, patch: unknown): Promise<T> {
    return this.request<T>('PATCH', path, { body: patch, contentType: 'application/merge-patch+json' });
  }

  delete(path: string, options: { preconditions?: { uid?: string }; propagationPolicy?: string; gracePeriodSeconds?: number } = {}): Promise<unknown> {
    return this.request('DELETE', path, { body: { apiVersion: 'v1', kind: 'DeleteOptions', ...options } });
  }
}

/** /api/v1/namespaces/ns/pods/name[/status], /apis/group/version/... */
export function resourcePath(type: Pick<ResourceType, 'apiVersion' | 'plural'>, namespace?: string, name?: string, subresource?: string): string {
  const base = type.apiVersion.includes('/') ? `/apis/${type.apiVersion}` : `/api/${type.apiVersion}`;
  return [base, ...(namespace !== undefined ? ['namespaces', encodeURIComponent(namespace)] : []), type.plural, ...(name !== undefined ? [encodeURIComponent(name)] : []), ...(subresource !== undefined ? [subresource] : [])].join('/');
}

// ---------------------------------------------------------------------------------------------------
// Watches and informers.

/**
 * The Watch ListWatch uses, with what the stock one lacks: the server closes the watch after a randomized
 * timeoutSeconds (as client-go asks), bookmarks are requested, and a watch that stays silent (no event, no
 * bookmark) for idleMs is ended on our side; ListWatch then watches again from its resourceVersion. An
 * abort by the caller (ListWatch stopping or restarting) ends it without calling `done`.
 */
export class TimedWatch extends Watch {
  constructor(config: KubeConfig, private readonly timing: { serverTimeoutSeconds: () => number; idleMs: (serverTimeoutSeconds: number) => number; onSilent?: () => void }) {
    super(config);
  }

  override async watch(path: string, queryParams: Record<string, string | number | boolean | undefined>, callback: (phase: string, apiObj: unknown, watchObj?: unknown) => void, done: (err: unknown) => void): Promise<AbortController> {
    const controller = new AbortController();
    const cluster = this.config.getCurrentCluster();
    if (!cluster) throw new Error('the kubeconfig has no current cluster');
    const url = new URL(cluster.server.replace(/\/$/, '') + path);
    url.searchParams.set('watch', 'true');
    for (const [key, value] of Object.entries(queryParams)) if (value !== undefined) url.searchParams.set(key, String(value));
    url.searchParams.set('allowWatchBookmarks', 'true');
    const serverTimeout = this.timing.serverTimeoutSeconds();
    url.searchParams.set('timeoutSeconds', String(serverTimeout));
    const options: https.RequestOptions = { method: 'GET', headers: { Accept: 'application/json' } };
    await this.config.applyToHTTPSOptions(options);
    let finished = false;
    let idleTimer: NodeJS.Timeout | undefined;
    const finish = (err: unknown): void => {
      if (finished) return;
      finished = true;
      clearTimeout(idleTimer);
      request.destroy();
      done(err);
    };
    const arm = (): void => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        this.timing.onSilent?.();
        finish(null);
      }, this.timing.idleMs(serverTimeout));
    };
    controller.signal.addEventListener('abort', () => {
      // The caller ends the watch: no `done` (ListWatch stops, or already moved on).
      finished = true;
      clearTimeout(idleTimer);
      request.destroy();
    });
    const request = (url.protocol === 'http:' ? http : https).request(url, options, (res) => {
      if (res.statusCode !== 200) {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => finish(Object.assign(new Error(`watch ${path}: HTTP ${res.statusCode ?? '?'}: ${body.slice(0, 300)}`), { statusCode: res.statusCode })));
        res.on('error', finish);
        return;
      }
      arm();
      let buffered = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        arm();
        buffered += chunk;
        let newline = buffered.indexOf('\n');
        while (newline >= 0) {
          const line = buffered.slice(0, newline).trim();
          buffered = buffered.slice(newline + 1);
          newline = buffered.indexOf('\n');
          if (line === '') continue;
          let event: { type?: string; object?: unknown };
          try {
            event = JSON.parse(line) as { type?: string; object?: unknown };
          } catch {
            continue;
          }
          if (typeof event.type === 'string') callback(event.type, event.object, event);
        }
      });
      res.on('end', () => finish(null));
      res.on('close', () => finish(null));
      res.on('error', (e) => finish(e));
    });
    request.on('error', (e) => finish(e));
    // Until the response starts, the idle timer also bounds connecting.
    arm();
    request.end();
    return controller;
  }
}

export interface ResourceType {
  apiVersion: string;
  kind: string;
  plural: string;
}

export type InformerEvent = 'add' | 'update' | 'delete';

/**
 * A cache of one resource type (in one namespace or all), kept by a ListWatch that is restarted after
 * errors with a backoff. Objects are plain JSON with apiVersion and kind filled in.
 */
export class ResourceInformer<T extends KubeObject = KubeObject> {
  private listWatch: ListWatch<KubernetesObject> | null = null;
  private stopped = true;
  private restartTimer: NodeJS.Timeout | null = null;
  private failures = 0;
  private listedOnce = false;
  lastError: string | null = null;

  private readonly rest: KubeRest;

  constructor(
    kubeConfig: KubeConfig,
    readonly type: ResourceType,
    private readonly opts: {
      namespace?: string;
      labelSelector?: string;
      onEvent: (event: InformerEvent, object: T) => void;
      log: Logger;
      metrics?: OperatorMetrics;
      /** Server-side watch timeout range in seconds (default 240..480). */
      watchTimeoutSeconds?: [number, number];
      /** A watch silent for its timeout plus this long is dropped on our side (default 30 s). */
      watchIdleSlackMs?: number;
    },
  ) {
    this.kubeConfig = kubeConfig;
    this.rest = new KubeRest(kubeConfig);
  }

  private readonly kubeConfig: KubeConfig;

  private path(): string {
    return resourcePath(this.type, this.opts.namespace);
  }

  /** Lists every page; items get apiVersion and kind (a list's items carry neither). */
  private async listAll(): Promise<KubernetesListObject<KubernetesObject>> {
    const items: KubernetesObject[] = [];
    let continueToken: string | undefined;
    let resourceVersion = '';
    do {
      const query = new URLSearchParams({ limit: '500' });
      if (this.opts.labelSelector !== undefined) query.set('labelSelector', this.opts.labelSelector);
      if (continueToken !== undefined) query.set('continue', continueToken);
      const page = await this.rest.get<{ metadata?: { resourceVersion?: string; continue?: string }; items?: KubernetesObject[] }>(`${this.path()}?${query.toString()}`);
      for (const item of page.items ?? []) items.push({ ...item, apiVersion: this.type.apiVersion, kind: this.type.kind });
      resourceVersion = page.metadata?.resourceVersion ?? '';
      continueToken = page.metadata?.continue || undefined;
    } while (continueToken !== undefined);
    this.listedOnce = true;
    this.failures = 0;
    this.lastError = null;
    return { apiVersion: 'v1', kind: 'List', metadata: { resourceVersion }, items };
  }

  get synced(): boolean {
    return this.listedOnce;
  }

  async start(): Promise<void> {
    if (!this.stopped) return;
    this.stopped = false;
    const [low, high] = this.opts.watchTimeoutSeconds ?? [240, 480];
    const watch = new TimedWatch(this.kubeConfig, {
      serverTimeoutSeconds: () => Math.round(low + Math.random() * (high - low)),
      idleMs: (serverTimeout) => serverTimeout * 1000 + (this.opts.watchIdleSlackMs ?? 30_000),
      onSilent: () => {
        this.opts.log.warn('watch silent past its timeout: reconnecting', { resource: this.type.plural });
        this.opts.metrics?.watchRestarts.inc({ resource: this.type.plural, reason: 'silent' });
      },
    });
    const lw = new ListWatch<KubernetesObject>(this.path(), watch, () => this.listAll(), false, this.opts.labelSelector);
    const emit = (event: InformerEvent) => (object: KubernetesObject): void => {
      if (this.listWatch !== lw || this.stopped) return;
      const plain = object as unknown as T;
      plain.apiVersion ??= this.type.apiVersion;
      plain.kind ??= this.type.kind;
      this.opts.onEvent(event, plain);
    };
    lw.on('add', emit('add'));
    lw.on('update', emit('update'));
    lw.on('delete', emit('delete'));
    lw.on('error', (err: unknown) => {
      if (this.listWatch !== lw || this.stopped) return;
      this.failures++;
      this.lastError = errorText(err);
      const delay = Math.min(30_000, 500 * 2 ** Math.min(this.failures - 1, 6)) * (1 + Math.random() * 0.2);
      this.opts.log.warn('watch failed: restarting it', { resource: this.type.plural, error: this.lastError, retryInMs: Math.round(delay) });
      this.opts.metrics?.watchRestarts.inc({ resource: this.type.plural, reason: statusCodeOf(err) !== undefined ? `http_${statusCodeOf(err)}` : 'error' });
      this.restartTimer = setTimeout(() => {
        this.restartTimer = null;
        if (this.listWatch === lw && !this.stopped) void lw.start();
      }, delay);
    });
    this.listWatch = lw;
    await lw.start();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.restartTimer !== null) clearTimeout(this.restartTimer);
    const lw = this.listWatch;
    await lw?.stop();
  }

  list(namespace?: string): T[] {
    return (this.listWatch?.list(namespace) ?? []) as unknown as T[];
  }

  get(name: string, namespace?: string): T | undefined {
    return this.listWatch?.get(name, namespace) as unknown as T | undefined;
  }

  /** The resourceVersion of the last list or watch event: the cache reflects every change up to it. */
  latestResourceVersion(): string | undefined {
    return this.listWatch?.latestResourceVersion() || undefined;
  }
}

export type ResourceInformerOptions<T extends KubeObject> = ConstructorParameters<typeof ResourceInformer<T>>[2];

/**
 * A cache of one resource type over a list of namespaces: one ResourceInformer (one ListWatch, its own
 * list and watch requests) per namespace, so that nothing outside them is ever listed or watched, and a
 * Role in each is all the access it needs. With no list: one ResourceInformer over all namespaces.
 */
export class ScopedInformer<T extends KubeObject = KubeObject> {
  /** By namespace; the key "" is the informer over all namespaces (when no list is given). */
  private readonly parts = new Map<string, ResourceInformer<T>>();

  constructor(kubeConfig: KubeConfig, readonly type: ResourceType, opts: Omit<ResourceInformerOptions<T>, 'namespace'> & { namespaces?: readonly string[] }) {
    const { namespaces, ...rest } = opts;
    const list = [...new Set(namespaces ?? [])];
    if (list.some((ns) => ns === '')) throw new Error('an empty namespace name');
    if (list.length === 0) this.parts.set('', new ResourceInformer<T>(kubeConfig, type, rest));
    for (const namespace of list) this.parts.set(namespace, new ResourceInformer<T>(kubeConfig, type, { ...rest, namespace }));
  }

  /** The namespaces watched, or null for all namespaces. */
  get namespaces(): string[] | null {
    return this.parts.has('') ? null : [...this.parts.keys()];
  }

  /** The informer whose cache holds objects of `namespace` (undefined: a namespace not watched). */
  private partFor(namespace: string | undefined): ResourceInformer<T> | undefined {
    return this.parts.get('') ?? (namespace === undefined ? undefined : this.parts.get(namespace));
  }

  get synced(): boolean {
    return [...this.parts.values()].every((part) => part.synced);
  }

  /** What has not listed yet: "pods", or "pods in a" per namespace, with the last error. */
  unsynced(): string[] {
    return [...this.parts].filter(([, part]) => !part.synced)
      .map(([namespace, part]) => `${this.type.plural}${namespace === '' ? '' : ` in ${namespace}`}${part.lastError ? ` (${part.lastError})` : ''}`);
  }

  /** Starts every namespace's informer; one that cannot start does not hold the others back. */
  async start(): Promise<void> {
    const results = await Promise.allSettled([...this.parts.values()].map((part) => part.start()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
  }

  async stop(): Promise<void> {
    await Promise.all([...this.parts.values()].map((part) => part.stop()));
  }

  list(namespace?: string): T[] {
    if (namespace !== undefined) return this.partFor(namespace)?.list(namespace) ?? [];
    return [...this.parts.values()].flatMap((part) => part.list());
  }

  get(name: string, namespace?: string): T | undefined {
    return this.partFor(namespace)?.get(name, namespace);
  }

  /** The resourceVersion of the last list or watch event of the informer that holds `namespace`. */
  latestResourceVersion(namespace?: string): string | undefined {
    return this.partFor(namespace)?.latestResourceVersion();
  }
}

// ---------------------------------------------------------------------------------------------------
// The work queue.

/**
 * Keys (namespace/name of a group) to reconcile. A key is queued at most once; a key added while it is
 * being processed is queued again when done() (so one key is never processed twice at once, and no change
 * is missed). addAfter() keeps the earliest deadline; addRateLimited() backs off exponentially per key
 * until forget(). The queue is bounded: beyond maxLength new keys are dropped (the periodic resync
 * brings them back).
 */
export class WorkQueue {
  private readonly queue: string[] = [];
  private readonly queued = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly dirty = new Set<string>();
  private readonly delayed = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  private readonly failures = new Map<string, number>();
  private readonly waiting: ((key: string | null) => void)[] = [];
  private shuttingDown = false;
  dropped = 0;

  constructor(private readonly opts: { maxLength?: number; baseDelayMs?: number; maxDelayMs?: number; onDepth?: (depth: number) => void } = {}) {}

  get length(): number {
    return this.queue.length;
  }

  add(key: string): void {
    if (this.shuttingDown) return;
    if (this.processing.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.queued.has(key)) return;
    if (this.queue.length >= (this.opts.maxLength ?? 10_000)) {
      this.dropped++;
      return;
    }
    const waiter = this.waiting.shift();
    if (waiter !== undefined) {
      this.processing.add(key);
      waiter(key);
      return;
    }
    this.queue.push(key);
    this.queued.add(key);
    this.opts.onDepth?.(this.queue.length);
  }

  addAfter(key: string, delayMs: number): void {
    if (this.shuttingDown) return;
    if (delayMs <= 0) {
      this.add(key);
      return;
    }
    const at = Date.now() + delayMs;
    const existing = this.delayed.get(key);
    if (existing !== undefined && existing.at <= at) return;
    if (existing !== undefined) clearTimeout(existing.timer);
    const timer = setTimeout(() => {
      this.delayed.delete(key);
      this.add(key);
    }, delayMs);
    this.delayed.set(key, { at, timer });
  }

  /** Re-adds after a per-key exponential backoff; returns the delay. */
  addRateLimited(key: string): number {
    const n = (this.failures.get(key) ?? 0) + 1;
    this.failures.set(key, n);
    const delay = Math.min(this.opts.maxDelayMs ?? 60_000, (this.opts.baseDelayMs ?? 250) * 2 ** Math.min(n - 1, 20));
    this.addAfter(key, delay);
    return delay;
  }

  forget(key: string): void {
    this.failures.delete(key);
  }

  retries(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  /** The next key (now processing), or null once shut down. */
  get(): Promise<string | null> {
    if (this.shuttingDown) return Promise.resolve(null);
    const key = this.queue.shift();
    if (key !== undefined) {
      this.queued.delete(key);
      this.processing.add(key);
      this.opts.onDepth?.(this.queue.length);
      return Promise.resolve(key);
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  done(key: string): void {
    this.processing.delete(key);
    if (this.dirty.delete(key)) this.add(key);
  }

  shutDown(): void {
    this.shuttingDown = true;
    for (const { timer } of this.delayed.values()) clearTimeout(timer);
    this.delayed.clear();
    for (const waiter of this.waiting.splice(0)) waiter(null);
    this.queue.length = 0;
    this.queued.clear();
    this.opts.onDepth?.(0);
  }
}

// ---------------------------------------------------------------------------------------------------
// The controller.

/**
 * How the operator reaches a group's members' HTTP API: null for plain HTTP (spec.clientApi.tls false),
 * else the CA bundle their certificates are verified with (ca.crt of the client Secret; null until it exists,
 * then Node's public roots refuse them and the member reads as unreachable).
 */
export interface ClientApiTrust {
  ca: string | null;
}

export function clientApiTrust(group: DerechoGroupResource, secrets: ObservedSecret[]): ClientApiTrust | null {
  const clientApi = (group.spec as { clientApi?: { tls?: unknown } } | null)?.clientApi;
  if (clientApi?.tls === false) return null;
  const ca = secrets.find((s) => s.metadata.name === names.clientSecret(group.metadata.name))?.data?.['ca.crt'];
  return { ca: ca === undefined ? null : Buffer.from(ca, 'base64').toString('utf8') };
}

/**
 * A member's certificate (its chain already verified with the group's CA) is the member's when it carries
 * its pod's DNS name, or CN node-<id> as the members' own authentication asks: certificates from a user's
 * Secret (spec.tls.secretName) may carry no DNS name at all.
 */
export function memberIdentity(dnsName: string, nodeId: number): (host: string, cert: tls.PeerCertificate) => Error | undefined {
  return (_host, cert) => {
    const byName = tls.checkServerIdentity(dnsName, cert);
    if (byName === undefined) return undefined;
    return cert.subject?.CN === `node-${nodeId}` ? undefined : new Error(`the certificate is not node ${nodeId}'s: ${byName.message}, and its CN is ${JSON.stringify(cert.subject?.CN ?? null)}`);
  };
}

/** Where a member's /status is: the default is the pod IP and its container port "http". */
export type StatusUrl = (pod: ObservedPod, nodeId: number) => string | null;

export function defaultStatusUrl(options: Pick<OperatorOptions, 'httpPort'> = DEFAULT_OPTIONS): StatusUrl {
  return (pod) => {
    const ip = pod.status?.podIP;
    if (ip === undefined || ip === '') return null;
    const containers = (pod.spec as { containers?: { name: string; ports?: { name?: string; containerPort?: number }[] }[] } | undefined)?.containers ?? [];
    const port = containers.find((c) => c.name === 'agent')?.ports?.find((p) => p.name === 'http')?.containerPort ?? options.httpPort;
    return `http://${ip.includes(':') ? `[${ip}]` : ip}:${port}/status`;
  };
}

export interface ControllerOptions {
  kubeConfig: KubeConfig;
  /**
   * Watch and reconcile only these namespaces (default, or empty: all namespaces): a list and a watch per
   * namespace and resource type, and no request about any other namespace.
   */
  namespaces?: readonly string[];
  /** Where each member's /status is (default: defaultStatusUrl). */
  statusUrl?: StatusUrl;
  /** Timeout of one /status poll (default 2000 ms). */
  statusTimeoutMs?: number;
  /** Reconcile groups that have pods at least this often (default 2 s): view changes reach the status within it. */
  pollIntervalSeconds?: number;
  /** Every group is queued again this often (default 300 s). */
  resyncSeconds?: number;
  /** Groups reconciled in parallel (default 4; one group is never reconciled twice at once). */
  workers?: number;
  /** Written into Events as reportingInstance (default: the field manager). */
  identity?: string;
  /** Options of reconcile (ports, RDMA resource name, ...). */
  operatorOptions?: Partial<OperatorOptions>;
  metrics?: OperatorMetrics;
  log?: Logger;
  /** How long to wait for the caches to show this controller's writes before reconciling anyway (default 10 s). */
  expectationTimeoutMs?: number;
  /** Server-side watch timeout range (default 240..480 s). */
  watchTimeoutSeconds?: [number, number];
}

type Expectation =
  | { kind: 'version'; informer: ScopedInformer; namespace: string; name: string; resourceVersion: string }
  | { kind: 'gone'; informer: ScopedInformer; namespace: string; name: string; uid: string };

interface RecentEvent {
  name: string;
  namespace: string;
  count: number;
  last: number;
}

export const OWNED_TYPES: Readonly<Record<string, ResourceType>> = {
  Pod: { apiVersion: 'v1', kind: 'Pod', plural: 'pods' },
  PersistentVolumeClaim: { apiVersion: 'v1', kind: 'PersistentVolumeClaim', plural: 'persistentvolumeclaims' },
  Service: { apiVersion: 'v1', kind: 'Service', plural: 'services' },
  ConfigMap: { apiVersion: 'v1', kind: 'ConfigMap', plural: 'configmaps' },
  Secret: { apiVersion: 'v1', kind: 'Secret', plural: 'secrets' },
  PodDisruptionBudget: { apiVersion: 'policy/v1', kind: 'PodDisruptionBudget', plural: 'poddisruptionbudgets' },
  NetworkPolicy: { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', plural: 'networkpolicies' },
};

/**
 * Kinds reconcile may write but the controller does not watch: cert-manager Certificates (tls.certManager),
 * whose CRD exists only where cert-manager is installed. Their Secrets, which carry the group's labels, are
 * what the controller watches.
 */
export const UNWATCHED_TYPES: Readonly<Record<string, ResourceType>> = {
  Certificate: { apiVersion: 'cert-manager.io/v1', kind: 'Certificate', plural: 'certificates' },
};
/** An unwatched object applied unchanged is applied again after this long (in case it was deleted). */
const UNWATCHED_REAPPLY_MS = 5 * 60_000;

const GROUP_TYPE: ResourceType = { apiVersion: CRD_API_VERSION, kind: CRD_KIND, plural: CRD_PLURAL };
const EVENT_TYPE: ResourceType = { apiVersion: 'v1', kind: 'Event', plural: 'events' };

/** The label selector of the owned-object informers: everything reconcile labels as part of a group. */
export const OWNED_SELECTOR = `${LABEL.name}=derecho,${LABEL.instance}`;

export class Controller {
  readonly metrics: OperatorMetrics;
  readonly log: Logger;
  private readonly groups: ScopedInformer<KubeObject>;
  private readonly owned = new Map<string, ScopedInformer<KubeObject>>();
  private readonly rest: KubeRest;
  private readonly statusUrl: StatusUrl;
  private readonly fieldManager = FIELD_MANAGER;
  private queue: WorkQueue | null = null;
  private workers: Promise<void>[] = [];
  private active = false;
  private activation: Promise<void> | null = null;
  private started = false;
  private resyncTimer: NodeJS.Timeout | null = null;
  private readonly expectations = new Map<string, { since: number; list: Expectation[] }>();
  /** Per object: the hash of what was applied and the resourceVersion the server returned. */
  private readonly applied = new Map<string, { hash: string; resourceVersion: string; atMs: number }>();
  private readonly recentEvents = new Map<string, RecentEvent>();
  /** What a group's last update event carried, to ignore status-only updates. */
  private readonly seenGroups = new Map<string, string>();
  private readonly phases = new Map<string, string>();
  /** Groups whose last status says Stuck=True (a restart waiting past spec.restart.quorumTimeoutSeconds). */
  private readonly stuck = new Set<string>();
  private eventCounter = 0;

  constructor(private readonly options: ControllerOptions) {
    this.metrics = options.metrics ?? createOperatorMetrics({ defaultMetrics: false });
    this.log = options.log ?? createLogger('info', { component: 'controller' });
    this.rest = new KubeRest(options.kubeConfig);
    this.statusUrl = options.statusUrl ?? defaultStatusUrl({ httpPort: options.operatorOptions?.httpPort ?? DEFAULT_OPTIONS.httpPort });
    const common = { log: this.log, metrics: this.metrics, ...(options.namespaces !== undefined ? { namespaces: options.namespaces } : {}), ...(options.watchTimeoutSeconds ? { watchTimeoutSeconds: options.watchTimeoutSeconds } : {}) };
    this.groups = new ScopedInformer(options.kubeConfig, GROUP_TYPE, { ...common, onEvent: (event, group) => this.onGroupEvent(event, group) });
    for (const type of Object.values(OWNED_TYPES)) {
      this.owned.set(type.kind, new ScopedInformer(options.kubeConfig, type, {
        ...common,
        labelSelector: OWNED_SELECTOR,
        onEvent: (_event, object) => {
          const instance = object.metadata.labels?.[LABEL.instance];
          if (instance !== undefined && object.metadata.namespace !== undefined) this.enqueue(groupKey(object.metadata.namespace, instance));
        },
      }));
    }
  }

  // ----- Lifecycle.

  /** Starts the informers (they keep retrying in the background); does not wait for them to sync. */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    await Promise.all([this.groups, ...this.owned.values()].map((informer) => informer.start().catch((e: unknown) => {
      this.log.warn('informer start failed; retrying', { resource: informer.type.plural, error: errorText(e) });
    })));
    const resync = (this.options.resyncSeconds ?? 300) * 1000;
    this.resyncTimer = setInterval(() => this.enqueueAll(), resync);
    this.resyncTimer.unref();
  }

  /** Every informer has listed at least once. */
  synced(): boolean {
    return [this.groups, ...this.owned.values()].every((informer) => informer.synced);
  }

  /** What is not synced yet (per resource, and per namespace when a list is watched), or null. */
  notReadyReason(): string | null {
    const pending = [this.groups, ...this.owned.values()].flatMap((informer) => informer.unsynced());
    if (pending.length === 0) return null;
    return `caches not synced: ${pending.join(', ')}`;
  }

  /** The namespaces watched and reconciled, or "(all)". */
  scope(): string {
    return this.groups.namespaces?.join(',') ?? '(all)';
  }

  async waitForSync(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.synced()) {
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${this.notReadyReason() ?? ''}`);
      await sleep(100);
    }
  }

  isActive(): boolean {
    return this.active;
  }

  /** Starts reconciling (this replica leads): once the caches are synced, the workers run and every group is queued. */
  activate(): Promise<void> {
    if (this.active) return this.activation ?? Promise.resolve();
    this.active = true;
    // Another replica may have written meanwhile: nothing remembered from an earlier term is trusted.
    this.applied.clear();
    this.expectations.clear();
    this.seenGroups.clear();
    const queue = new WorkQueue({ onDepth: (depth) => this.metrics.queueDepth.set(depth) });
    this.queue = queue;
    this.activation = (async () => {
      while (this.active && this.queue === queue && !this.synced()) await sleep(100);
      if (!this.active || this.queue !== queue) return;
      const count = this.options.workers ?? 4;
      this.workers = Array.from({ length: count }, () => this.worker(queue));
      this.enqueueAll();
      this.log.info('reconciling', { workers: count, namespaces: this.scope() });
    })();
    return this.activation;
  }

  /** Stops reconciling (leadership lost, or shutting down); resolves once the reconciles under way have finished. */
  async deactivate(): Promise<void> {
    if (!this.active) return;
    this.active = false;
    const queue = this.queue;
    this.queue = null;
    queue?.shutDown();
    await this.activation;
    const workers = this.workers;
    this.workers = [];
    await Promise.all(workers);
    this.metrics.queueDepth.set(0);
  }

  /** Stops reconciling and the informers. */
  async stop(): Promise<void> {
    await this.deactivate();
    if (this.resyncTimer !== null) clearInterval(this.resyncTimer);
    await Promise.all([this.groups, ...this.owned.values()].map((informer) => informer.stop()));
    this.started = false;
  }

  // ----- Queueing.

  private enqueue(key: string): void {
    this.queue?.add(key);
  }

  private enqueueAll(): void {
    for (const group of this.groups.list()) {
      if (group.metadata.namespace !== undefined) this.enqueue(groupKey(group.metadata.namespace, group.metadata.name));
    }
  }

  private onGroupEvent(event: InformerEvent, group: KubeObject): void {
    const namespace = group.metadata.namespace;
    if (namespace === undefined) return;
    const key = groupKey(namespace, group.metadata.name);
    if (event === 'delete') {
      this.seenGroups.delete(key);
      this.forgetGroup(key);
      this.enqueue(key);
      return;
    }
    // Our own status writes come back as updates: only spec (generation), deletion, finalizers, labels and
    // annotations make a group worth reconciling before its next poll.
    const m = group.metadata;
    const fingerprint = canonical([m.uid, m.generation, m.deletionTimestamp ?? null, m.finalizers ?? [], m.labels ?? {}, m.annotations ?? {}]);
    if (event === 'update' && this.seenGroups.get(key) === fingerprint) return;
    this.seenGroups.set(key, fingerprint);
    this.enqueue(key);
  }

  private forgetGroup(key: string): void {
    this.expectations.delete(key);
    this.phases.delete(key);
    this.stuck.delete(key);
    this.updatePhaseGauge();
    const { namespace } = splitKey(key);
    for (const k of [...this.applied.keys()]) if (k.startsWith(`${key}|`)) this.applied.delete(k);
    for (const [k, event] of [...this.recentEvents]) if (k.startsWith(`${key}|`) || (event.namespace === namespace && Date.now() - event.last > 600_000)) this.recentEvents.delete(k);
  }

  private async worker(queue: WorkQueue): Promise<void> {
    for (;;) {
      const key = await queue.get();
      if (key === null) return;
      const started = process.hrtime.bigint();
      try {
        const result = await this.sync(key);
        queue.forget(key);
        if (result.requeueAfterMs !== null) queue.addAfter(key, result.requeueAfterMs);
        this.metrics.reconcileTotal.inc({ result: result.skipped ? 'skipped' : 'success' });
      } catch (e) {
        const delay = queue.addRateLimited(key);
        this.metrics.reconcileTotal.inc({ result: 'error' });
        this.metrics.queueRetries.inc();
        this.log.warn('reconcile failed; retrying', { group: key, error: errorText(e), retryInMs: delay, attempt: queue.retries(key) });
      } finally {
        this.metrics.reconcileDuration.observe(Number(process.hrtime.bigint() - started) / 1e9);
        queue.done(key);
      }
    }
  }

  // ----- One reconcile.

  private expectationMet(e: Expectation): boolean {
    const cached = e.informer.get(e.name, e.namespace);
    // Seen: the object at that version or later, or any event at or past it (the object may be gone since).
    if (e.kind === 'version') return rvAtLeast(cached?.metadata.resourceVersion, e.resourceVersion) || rvAtLeast(e.informer.latestResourceVersion(e.namespace), e.resourceVersion);
    return cached === undefined || cached.metadata.uid !== e.uid || cached.metadata.deletionTimestamp !== undefined;
  }

  /** Reconciles one group; returns when to come back (null: only on changes). Throws to retry with backoff. */
  async sync(key: string): Promise<{ requeueAfterMs: number | null; skipped?: boolean }> {
    const { namespace, name } = splitKey(key);
    const pending = this.expectations.get(key);
    if (pending !== undefined) {
      const unmet = pending.list.filter((e) => !this.expectationMet(e));
      const timeoutMs = this.options.expectationTimeoutMs ?? 10_000;
      if (unmet.length > 0 && Date.now() - pending.since < timeoutMs) {
        this.log.debug('waiting for the caches to show this controller\'s writes', { group: key, unmet: unmet.map((e) => `${e.informer.type.kind}/${e.name}`) });
        return { requeueAfterMs: 100, skipped: true };
      }
      if (unmet.length > 0) this.log.warn('the caches do not show this controller\'s writes yet; reconciling anyway', { group: key, waitedMs: Date.now() - pending.since, unmet: unmet.map((e) => `${e.informer.type.kind}/${e.name}`) });
      this.expectations.delete(key);
    }
    const cached = this.groups.get(name, namespace);
    if (cached === undefined) {
      this.forgetGroup(key);
      return { requeueAfterMs: null };
    }
    const group = structuredClone(cached) as unknown as DerechoGroupResource;
    const observed = await this.observe(group, namespace, name);
    const reports = await this.pollAgents(observed.pods ?? [], name, namespace, clientApiTrust(group, observed.secrets ?? []));
    const output = reconcile({
      group,
      observed,
      reports,
      now: new Date().toISOString(),
      random: { hmacKey: randomBytes(32).toString('base64'), clientToken: randomBytes(32).toString('base64url') },
      issuer: x509Issuer,
      ...(this.options.operatorOptions ? { options: this.options.operatorOptions } : {}),
    });
    if (!this.active) return { requeueAfterMs: null };
    this.log.debug('reconciled', {
      group: key, phase: output.status.phase, pods: (observed.pods ?? []).map((p) => `${p.metadata.name}${p.metadata.deletionTimestamp ? '(terminating)' : ''}`),
      reports: Object.entries(reports).map(([id, r]) => `${id}:${r === null ? 'null' : r === undefined ? '-' : `${r.mode}/${r.viewId}`}`), apply: output.objects.length, deletes: output.deletes.map((d) => `${d.kind}/${d.name}`),
    });
    // The uids reconcile saw: an object it saw is only ever updated, never re-created by an apply.
    const seenUids = new Map<string, string>();
    for (const list of Object.values(observed) as KubeObject[][]) {
      for (const object of list ?? []) if (object.metadata.uid !== undefined) seenUids.set(`${object.kind}/${object.metadata.name}`, object.metadata.uid);
    }
    await this.write(key, group, output, seenUids);
    const hasPods = (observed.pods ?? []).length > 0;
    const poll = (this.options.pollIntervalSeconds ?? 2) * 1000;
    const after = output.requeueAfterSeconds * 1000;
    return { requeueAfterMs: hasPods || group.metadata.deletionTimestamp !== undefined ? Math.min(after, poll) : after };
  }

  private async observe(group: DerechoGroupResource, namespace: string, name: string): Promise<ObservedObjects> {
    const mine = (kind: string): KubeObject[] => structuredClone(this.owned.get(kind)!.list(namespace).filter((o) => o.metadata.labels?.[LABEL.instance] === name));
    const secrets = mine('Secret') as ObservedSecret[];
    // Secrets the group names (mutual TLS material, a user's HMAC key) are not ours to label: read them by
    // name. The HMAC Secret the operator makes is read live when the cache lacks it (never mint a second key).
    const groupSpec = group.spec as { tls?: { mode?: string; secretName?: string }; clientApi?: { tls?: boolean; tokenSecretName?: string } } | null;
    const tls = groupSpec?.tls;
    // The certificate authority the operator made, likewise: a second one would split the members' trust.
    // And the client API's: the user's token Secret, the client Secret (never mint a second token).
    const wanted = new Set<string>([names.clientSecret(name)]);
    if (tls?.secretName !== undefined) wanted.add(tls.secretName);
    else if (tls?.mode === 'mutual') wanted.add(names.authoritySecret(name));
    else wanted.add(names.hmacSecret(name));
    if (tls?.mode !== 'mutual' && groupSpec?.clientApi?.tls !== false) wanted.add(names.authoritySecret(name));
    if (groupSpec?.clientApi?.tokenSecretName !== undefined) wanted.add(groupSpec.clientApi.tokenSecretName);
    for (const secretName of wanted) {
      if (secrets.some((s) => s.metadata.name === secretName)) continue;
      try {
        const secret = await this.rest.get<ObservedSecret>(resourcePath(OWNED_TYPES.Secret!, namespace, secretName), 10_000);
        secrets.push({ ...secret, apiVersion: 'v1', kind: 'Secret' });
      } catch (e) {
        if (statusCodeOf(e) !== 404) throw e;
      }
    }
    return {
      pods: mine('Pod') as ObservedPod[],
      pvcs: mine('PersistentVolumeClaim'),
      services: mine('Service'),
      configMaps: mine('ConfigMap'),
      secrets,
      podDisruptionBudgets: mine('PodDisruptionBudget'),
      networkPolicies: mine('NetworkPolicy'),
    };
  }

  /**
   * Each member's parsed /status: null when its pod does not answer (or answers something else). Over
   * https when the group's client API is on TLS (`trust` not null): the member's certificate verified with
   * the group's CA bundle by its pod's DNS name (the URL may name an IP).
   */
  private async pollAgents(pods: ObservedPod[], group: string, namespace: string, trust: ClientApiTrust | null): Promise<AgentReports> {
    const reports: Record<number, AgentReport | null> = {};
    const timeoutMs = this.options.statusTimeoutMs ?? 2000;
    await Promise.all(pods.map(async (pod) => {
      const nodeId = memberNodeId(pod, group, names.pod);
      if (nodeId === null) return;
      const url = this.statusUrl(pod, nodeId);
      if (url === null) {
        reports[nodeId] = null;
        return;
      }
      try {
        const res = trust === null
          ? await httpRequest({ url, timeoutMs })
          : await httpRequest({
            url: url.replace(/^http:/, 'https:'), timeoutMs, ...(trust.ca !== null ? { ca: trust.ca } : {}), servername: peerHost(group, namespace, nodeId),
            checkServerIdentity: memberIdentity(peerHost(group, namespace, nodeId), nodeId),
          });
        const body: unknown = res.status === 200 ? JSON.parse(res.body.toString('utf8')) : null;
        reports[nodeId] = parseAgentReport(body);
        this.metrics.agentPolls.inc({ result: reports[nodeId] === null ? 'invalid' : 'ok' });
      } catch {
        reports[nodeId] = null;
        this.metrics.agentPolls.inc({ result: 'unreachable' });
      }
    }));
    return reports;
  }

  private informerFor(kind: string): ScopedInformer | undefined {
    return kind === CRD_KIND ? this.groups : this.owned.get(kind);
  }

  private expect(key: string, expectation: Expectation): void {
    const entry = this.expectations.get(key) ?? { since: Date.now(), list: [] };
    entry.list.push(expectation);
    this.expectations.set(key, entry);
  }

  private async write(key: string, group: DerechoGroupResource, output: ReconcileOutput, seenUids: ReadonlyMap<string, string>): Promise<void> {
    const { namespace, name } = splitKey(key);
    const errors: string[] = [];
    const finalizers = group.metadata.finalizers ?? [];
    const hasFinalizer = finalizers.includes(output.finalizer.name);

    // 1. The finalizer first: nothing is created that its deletion would not clean up.
    if (output.finalizer.present && !hasFinalizer && group.metadata.deletionTimestamp === undefined) {
      await this.patchFinalizers(key, group, [...finalizers, output.finalizer.name]);
    }

    // 2. Server-side apply, in reconcile's order.
    const failures: WriteFailure[] = [];
    const failure = (verb: WriteFailure['verb'], kind: string, objectName: string, e: unknown): WriteFailure => ({
      verb, kind, name: objectName, code: statusCodeOf(e) ?? null, message: errorText(e).replace(/^HTTP \d+: /, ''),
    });
    for (const object of output.objects) {
      if (!this.active) return;
      try {
        await this.apply(key, object, seenUids.get(`${object.kind}/${object.metadata.name}`));
      } catch (e) {
        errors.push(`apply ${object.kind}/${object.metadata.name}: ${errorText(e)}`);
        failures.push(failure('apply', object.kind, object.metadata.name, e));
        this.metrics.reconcileErrors.inc({ stage: 'apply' });
      }
    }

    // 3. Deletes with uid preconditions.
    for (const ref of output.deletes) {
      if (!this.active) return;
      try {
        await this.delete(key, ref);
      } catch (e) {
        errors.push(`delete ${ref.kind}/${ref.name}: ${errorText(e)}`);
        failures.push(failure('delete', ref.kind, ref.name, e));
        this.metrics.reconcileErrors.inc({ stage: 'delete' });
      }
    }
    // Refused writes go into the status and the Events (and no Event reports them as done).
    output = withWriteFailures(output, failures, group.status ?? null, new Date().toISOString());

    // 4. The status, when it changed; the gauges first, so that whoever sees the status sees them agree.
    this.phases.set(key, output.status.phase ?? 'Unknown');
    if (output.status.conditions?.some((c) => c.type === 'Stuck' && c.status === 'True')) this.stuck.add(key);
    else this.stuck.delete(key);
    this.updatePhaseGauge();
    if (this.active && canonical(output.status) !== canonical(group.status ?? null)) {
      try {
        await this.writeStatus(key, group, output.status);
      } catch (e) {
        if (statusCodeOf(e) !== 404) {
          errors.push(`status: ${errorText(e)}`);
          this.metrics.reconcileErrors.inc({ stage: 'status' });
        }
      }
    }

    // 5. The finalizer goes last, once reconcile lets the group go.
    if (this.active && !output.finalizer.present && hasFinalizer) {
      await this.patchFinalizers(key, group, finalizers.filter((f) => f !== output.finalizer.name));
    }

    // 6. Events (failures are logged, never retried: the next change makes new ones).
    for (const event of output.events) {
      if (!this.active) return;
      await this.recordEvent(key, group, event).catch((e: unknown) => {
        this.metrics.reconcileErrors.inc({ stage: 'event' });
        this.log.warn('cannot record an event', { group: `${namespace}/${name}`, reason: event.reason, error: errorText(e) });
      });
    }
    if (errors.length > 0) throw new Error(errors.join('; '));
  }

  private async apply(key: string, object: KubeObject, observedUid: string | undefined): Promise<void> {
    const namespace = object.metadata.namespace ?? splitKey(key).namespace;
    // Only ever into the group's own namespace (one the operator watches, and may write to).
    if (namespace !== splitKey(key).namespace) throw new Error(`reconcile of ${key} asked to apply ${object.kind}/${object.metadata.name} in namespace ${namespace}`);
    const cacheKey = `${key}|${object.kind}/${namespace}/${object.metadata.name}`;
    const hash = canonical(object);
    const informer = this.informerFor(object.kind);
    const seen = informer?.get(object.metadata.name, namespace);
    const last = this.applied.get(cacheKey);
    // Nothing changed on either side since our last apply of the same object: skip the request. (An
    // unwatched kind: nothing changed on our side, and it was applied recently.)
    if (last !== undefined && last.hash === hash && seen !== undefined && seen.metadata.resourceVersion === last.resourceVersion) return;
    if (informer === undefined && last !== undefined && last.hash === hash && Date.now() - last.atMs < UNWATCHED_REAPPLY_MS) return;
    const type = OWNED_TYPES[object.kind] ?? UNWATCHED_TYPES[object.kind];
    if (type === undefined || type.apiVersion !== object.apiVersion) throw new Error(`reconcile asked to apply a ${object.apiVersion} ${object.kind}, which this controller does not know`);
    // An object reconcile saw is applied with its uid: if it was deleted (or replaced) since, the API server
    // refuses (409 / 422) instead of creating it again behind reconcile's back; its watch event brings the
    // group back, and reconcile then sees it missing (and says so: PodsCreated).
    const body: KubeObject = observedUid !== undefined ? { ...object, metadata: { ...object.metadata, uid: observedUid } } : object;
    let result: KubeObject;
    try {
      result = await this.rest.apply<KubeObject>(body, type, { fieldManager: this.fieldManager, force: true });
    } catch (e) {
      if (body !== object && (statusCodeOf(e) === 409 || (statusCodeOf(e) === 422 && /metadata\.uid/.test(errorText(e))))) {
        this.log.info('not applied: the object changed since the cache saw it', { object: `${object.kind}/${namespace}/${object.metadata.name}`, error: errorText(e) });
        return;
      }
      throw e;
    }
    this.metrics.apiWrites.inc({ verb: 'apply', kind: object.kind });
    const resourceVersion = result.metadata?.resourceVersion;
    if (resourceVersion !== undefined) {
      this.applied.set(cacheKey, { hash, resourceVersion, atMs: Date.now() });
      if (informer !== undefined) this.expect(key, { kind: 'version', informer, namespace, name: object.metadata.name, resourceVersion });
    }
  }

  private async delete(key: string, ref: ObjectRef): Promise<void> {
    if (ref.namespace !== splitKey(key).namespace) throw new Error(`reconcile of ${key} asked to delete ${ref.kind}/${ref.name} in namespace ${ref.namespace}`);
    try {
      const type = OWNED_TYPES[ref.kind] ?? UNWATCHED_TYPES[ref.kind];
      if (type === undefined) throw new Error(`reconcile asked to delete a ${ref.kind}, which this controller does not know`);
      await this.rest.delete(resourcePath(type, ref.namespace, ref.name), { propagationPolicy: 'Background', ...(ref.uid !== undefined ? { preconditions: { uid: ref.uid } } : {}) });
      this.metrics.apiWrites.inc({ verb: 'delete', kind: ref.kind });
      this.applied.delete(`${key}|${ref.kind}/${ref.namespace}/${ref.name}`);
      this.log.info('deleted', { object: `${ref.kind}/${ref.namespace}/${ref.name}`, reason: ref.reason });
    } catch (e) {
      // Gone already, or replaced by a newer object (uid precondition): nothing to do.
      if (statusCodeOf(e) !== 404 && statusCodeOf(e) !== 409) throw e;
    }
    const informer = this.informerFor(ref.kind);
    if (informer !== undefined && ref.uid !== undefined) this.expect(key, { kind: 'gone', informer, namespace: ref.namespace, name: ref.name, uid: ref.uid });
  }

  private async writeStatus(key: string, group: DerechoGroupResource, status: DerechoGroupStatus): Promise<void> {
    const { namespace, name } = splitKey(key);
    // The uid makes the write conditional on the same group (not a new one of the same name).
    const result = await this.rest.apply<KubeObject>(
      { apiVersion: CRD_API_VERSION, kind: CRD_KIND, metadata: { name, namespace, uid: group.metadata.uid }, status },
      GROUP_TYPE, { fieldManager: this.fieldManager, force: true, subresource: 'status' },
    );
    this.metrics.apiWrites.inc({ verb: 'status', kind: CRD_KIND });
    const resourceVersion = result.metadata?.resourceVersion;
    if (resourceVersion !== undefined) this.expect(key, { kind: 'version', informer: this.groups, namespace, name, resourceVersion });
  }

  private async patchFinalizers(key: string, group: DerechoGroupResource, finalizers: string[]): Promise<void> {
    const { namespace, name } = splitKey(key);
    const resourceVersion = this.groups.get(name, namespace)?.metadata.resourceVersion;
    try {
      // The resourceVersion makes the patch conditional: a concurrent change of the list is a 409, retried.
      const result = await this.rest.mergePatch<KubeObject>(resourcePath(GROUP_TYPE, namespace, name), {
        metadata: { finalizers, ...(resourceVersion !== undefined ? { resourceVersion } : {}) },
      });
      this.metrics.apiWrites.inc({ verb: 'finalizer', kind: CRD_KIND });
      this.log.info(finalizers.length > (group.metadata.finalizers ?? []).length ? 'finalizer added' : 'finalizer removed', { group: key });
      const rv = result.metadata?.resourceVersion;
      if (rv !== undefined) this.expect(key, { kind: 'version', informer: this.groups, namespace, name, resourceVersion: rv });
    } catch (e) {
      if (statusCodeOf(e) === 404) return;
      this.metrics.reconcileErrors.inc({ stage: 'finalizer' });
      throw e;
    }
  }

  private async recordEvent(key: string, group: DerechoGroupResource, event: GroupEvent): Promise<void> {
    const { namespace, name } = splitKey(key);
    const message = event.message.length > 1024 ? `${event.message.slice(0, 1021)}...` : event.message;
    const related = event.related;
    const dedupKey = `${key}|${group.metadata.uid}|${event.type}|${event.reason}|${related?.name ?? ''}|${message}`;
    const now = new Date();
    const recent = this.recentEvents.get(dedupKey);
    if (recent !== undefined && now.getTime() - recent.last < 600_000) {
      try {
        await this.rest.mergePatch(resourcePath(EVENT_TYPE, namespace, recent.name), { count: recent.count + 1, lastTimestamp: now.toISOString() });
        this.metrics.apiWrites.inc({ verb: 'event', kind: 'Event' });
        recent.count++;
        recent.last = now.getTime();
        return;
      } catch (e) {
        if (statusCodeOf(e) !== 404) throw e;
      }
    }
    const eventName = `${name}.${(BigInt(now.getTime()) * 1_000_000n + BigInt(this.eventCounter++ % 1_000_000)).toString(16)}`;
    const body = {
      apiVersion: 'v1',
      kind: 'Event',
      metadata: { name: eventName, namespace },
      involvedObject: { apiVersion: CRD_API_VERSION, kind: CRD_KIND, name, namespace, uid: group.metadata.uid },
      reason: event.reason,
      message,
      type: event.type,
      action: event.action,
      count: 1,
      firstTimestamp: now.toISOString(),
      lastTimestamp: now.toISOString(),
      source: { component: EVENT_COMPONENT },
      reportingComponent: 'derecho.dev/operator',
      reportingInstance: (this.options.identity ?? EVENT_COMPONENT).slice(0, 128),
      ...(related !== undefined ? { related: { apiVersion: related.apiVersion, kind: related.kind, name: related.name, namespace: related.namespace } } : {}),
    };
    await this.rest.request('POST', resourcePath(EVENT_TYPE, namespace), { body });
    this.metrics.apiWrites.inc({ verb: 'event', kind: 'Event' });
    this.recentEvents.set(dedupKey, { name: eventName, namespace, count: 1, last: now.getTime() });
  }

  private updatePhaseGauge(): void {
    const counts = new Map<string, number>();
    for (const phase of this.phases.values()) counts.set(phase, (counts.get(phase) ?? 0) + 1);
    this.metrics.groups.reset();
    for (const [phase, count] of counts) this.metrics.groups.set({ phase }, count);
    this.metrics.stuckGroups.set(this.stuck.size);
  }
}
