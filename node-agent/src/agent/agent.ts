// One node agent: storage, transport, driver, HTTP API and metrics, assembled from a resolved config.

import { X509Certificate, createHash } from 'node:crypto';
import fs from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { toReplicaConfig } from '../config/schema.ts';
import type { ResolvedAgentConfig } from '../config/load.ts';
import { ConfigError } from '../config/errors.ts';
import type { NodeId, StartState } from '../core/types.ts';
import { BUILTIN_TYPES } from '../objects/kv.ts';
import type { ReplicatedType } from '../objects/replicated.ts';
import { DirLock, DirLockError } from '../storage/dir-lock.ts';
import { LOG_BODY_HEADER_BYTES, LogStore } from '../storage/log-store.ts';
import type { AgentTransport } from '../transport/agent-transport.ts';
import type { Verbs } from '../transport/rdma/verbs.ts';
import { createAgentTransport } from '../transport/select.ts';
import type { TransportChoice } from '../transport/select.ts';
import type { TcpTransportOptions, TlsOptions } from '../transport/tcp-transport.ts';
import { ApiCredentials } from './api-credentials.ts';
import { BenchProbe } from './bench.ts';
import { Driver, RequestError } from './driver.ts';
import { closeHttpServer, createHttpServer, listenHttp } from './http.ts';
import { createLogger } from './logger.ts';
import type { Logger } from './logger.ts';
import { createMetrics } from './metrics.ts';
import type { AgentMetrics } from './metrics.ts';
import { replicaSeed } from './seed.ts';

export interface AgentOptions {
  /** Replicated types for `custom:<name>` subgroups, by type name (`custom:counter`). */
  types?: Record<string, ReplicatedType>;
  log?: Logger;
  /** Called when the replica exits or the agent fails; the process should exit non-zero (its supervisor restarts it). */
  onExit?(reason: string): void;
  /** RDMA verbs for spec.transport rdma/auto (default: the native addon; tests inject the in-memory fabric). */
  verbs?: Verbs;
  /**
   * tls.mode "mutual": period of the re-reads of the CA, certificate and key files, ms (default
   * $DERECHO_TLS_RELOAD_MS, else TLS_RELOAD_MS_DEFAULT; at least TLS_RELOAD_MS_MIN).
   */
  tlsReloadMs?: number;
}

/** Default period of the TLS file re-reads: a renewed certificate is in use within this long. */
export const TLS_RELOAD_MS_DEFAULT = 10_000;
/** Floor of that period: each re-read reads and compares three files. */
export const TLS_RELOAD_MS_MIN = 100;

/** The period of the TLS file re-reads: the option, else $DERECHO_TLS_RELOAD_MS, else the default; clamped to the floor. */
export function tlsReloadMs(option: number | undefined, env: Record<string, string | undefined> = process.env): number {
  let ms = option;
  const text = env['DERECHO_TLS_RELOAD_MS']?.trim();
  if (ms === undefined && text) {
    ms = Number(text);
    if (!Number.isFinite(ms)) throw new ConfigError([`environment DERECHO_TLS_RELOAD_MS: ${JSON.stringify(text)} is not a number of milliseconds`]);
  }
  if (ms === undefined || !Number.isFinite(ms)) return TLS_RELOAD_MS_DEFAULT;
  return Math.max(TLS_RELOAD_MS_MIN, ms);
}

/** What /status shows of a certificate. */
interface CertificateSummary {
  subject: string;
  issuer: string;
  notAfter: string;
  serialNumber: string;
}

function certificateSummary(pem: Buffer): CertificateSummary | null {
  try {
    const x = new X509Certificate(pem);
    return { subject: x.subject, issuer: x.issuer, notAfter: new Date(x.validTo).toISOString(), serialNumber: x.serialNumber };
  } catch {
    return null;
  }
}

/** tls.mode "mutual": the credentials in force (the files' contents) and how their reloads went. */
interface TlsState {
  files: { ca: Buffer; cert: Buffer; key: Buffer };
  certificate: CertificateSummary | null;
  reloads: number;
  /** Why the newest reload attempt was refused; null once the files hold what is in force again. */
  lastReloadError: string | null;
  /** Fingerprint of the contents (or read error) last refused: the same refusal is not repeated every tick. */
  refused: string | null;
}

/** Replicated type of every subgroup of the spec; a clear error for a type nobody registered. */
export function resolveTypes(config: ResolvedAgentConfig, custom: Record<string, ReplicatedType> = {}): Map<string, ReplicatedType> {
  const types = new Map<string, ReplicatedType>();
  const problems: string[] = [];
  config.group.spec.subgroups.forEach((sg, i) => {
    const type = BUILTIN_TYPES[sg.type] ?? custom[sg.type];
    if (!type) {
      problems.push(`spec.subgroups[${i}].type: ${JSON.stringify(sg.type)} has no implementation in this agent (built in: ${Object.keys(BUILTIN_TYPES).join(', ')}${Object.keys(custom).length ? `; registered: ${Object.keys(custom).join(', ')}` : ''})`);
      return;
    }
    types.set(sg.name, type);
  });
  if (problems.length > 0) throw new ConfigError(problems);
  return types;
}

function readFile(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new ConfigError([`${what} ${JSON.stringify(file)} cannot be read: ${e instanceof Error ? e.message : String(e)}`]);
  }
}

export class Agent {
  readonly log: Logger;
  readonly metrics: AgentMetrics;
  driver!: Driver;
  /** The benchmark probe (agent config benchApi), else null. */
  bench: BenchProbe | null = null;
  private transport!: AgentTransport;
  /** The data path in use and why (spec.transport). */
  transportChoice: Omit<TransportChoice, 'transport'> | null = null;
  private store!: LogStore;
  private server: http.Server | null = null;
  private startedAt = Date.now();
  private lastTickAt = Date.now();
  private closed = false;
  private readonly dirLock: DirLock;
  /** tls.mode "mutual": the credentials in force and their reloads (else null). */
  private tls: TlsState | null = null;
  private tlsReloadTimer: ReturnType<typeof setInterval> | null = null;
  /** Agent config `api`: the HTTP API's TLS certificate and bearer tokens (null: plain HTTP, no token). */
  private apiCredentials: ApiCredentials | null = null;
  private exitReasonText: string | null = null;
  /** The newest connection refused at authentication (either side), for /status: why peers cannot talk. */
  private lastHandshakeFailure: { peer: NodeId | null; remote: string; message: string; atMs: number } | null = null;
  /** Bootstrap: founders not connected yet (the driver starts when none is left). */
  private foundersPending: NodeId[] = [];
  readonly startKind: StartState['kind'];
  private readonly start: StartState;
  readonly peerAddress: { host: string; port: number } = { host: '', port: 0 };
  httpAddress: { host: string; port: number } = { host: '', port: 0 };

  private constructor(readonly config: ResolvedAgentConfig, private readonly options: AgentOptions, private readonly types: Map<string, ReplicatedType>) {
    this.log = options.log ?? createLogger(config.logLevel, { node: config.nodeId, group: config.groupName });
    this.metrics = createMetrics({ group: config.groupName, node: String(config.nodeId) }, { tls: config.group.spec.tls.mode === 'mutual' });
    try {
      this.dirLock = DirLock.acquire(path.resolve(config.dataDir));
    } catch (e) {
      throw e instanceof DirLockError ? new ConfigError([`dataDir: ${e.message}`]) : e;
    }
    // A record must take the largest payload the group accepts (a persisted message of payloadBytesMax).
    const maxRecordBytes = Math.max(8 << 20, config.group.spec.wireLimits.payloadBytesMax + LOG_BODY_HEADER_BYTES);
    this.store = LogStore.open(path.resolve(config.dataDir), { fsync: config.group.spec.fsync, maxRecordBytes });
    const saved = this.store.savedState();
    const spec = config.group.spec;
    const contacts = Object.keys(config.peers).map(Number).filter((n) => n !== config.nodeId);
    if (saved) this.start = { kind: 'restart', saved, contacts };
    else if (config.nodeId <= spec.members) this.start = { kind: 'bootstrap', members: Array.from({ length: spec.members }, (_, i) => i + 1) };
    else this.start = { kind: 'join', contacts };
    this.startKind = this.start.kind;
  }

  /** Opens storage, listens on the peer and HTTP ports, and starts the loop. */
  static async create(config: ResolvedAgentConfig, options: AgentOptions = {}): Promise<Agent> {
    const types = resolveTypes(config, options.types);
    const agent = new Agent(config, options, types);
    try {
      await agent.open();
    } catch (e) {
      await agent.close();
      throw e;
    }
    return agent;
  }

  private async open(): Promise<void> {
    const { config } = this;
    const spec = config.group.spec;
    if (config.api.tlsCertFile !== undefined || config.api.tokenFile !== undefined) this.apiCredentials = new ApiCredentials(config.api);
    const tOpts: TcpTransportOptions = {
      nodeId: config.nodeId,
      limits: { payloadBytesMax: spec.wireLimits.payloadBytesMax, frameBytesMax: spec.wireLimits.frameBytesMax, membersMax: spec.wireLimits.membersMax, shardsMax: spec.wireLimits.shardsMax },
      log: (line) => this.log.warn(line),
      // A peer's queue holds views of messages the replica keeps anyway (its send window), so it is
      // sized to take a whole window of every shard this node can send in (one per subgroup) at once: a full window never drops a message here
      // (a drop costs a retransmission, retransmitTicks later).
      outgoingBytesMax: Math.max(32 << 20, spec.sendWindow * (spec.wireLimits.frameBytesMax + 4) * Math.max(1, spec.subgroups.length)),
      outgoingFramesMax: Math.max(8192, 4 * spec.sendWindow * Math.max(1, spec.subgroups.length)),
    };
    if (spec.tls.mode === 'hmac') {
      tOpts.secret = readFile(config.auth.hmacSecretFile!, 'auth.hmacSecretFile');
      if (tOpts.secret.byteLength < 16) throw new ConfigError([`auth.hmacSecretFile ${JSON.stringify(config.auth.hmacSecretFile)} holds ${tOpts.secret.byteLength} bytes; the group secret needs at least 16 (32 random bytes recommended)`]);
    } else {
      const files = this.readTlsFiles();
      tOpts.tls = { ...files };
      this.tls = { files, certificate: certificateSummary(files.cert), reloads: 0, lastReloadError: null, refused: null };
      this.showCertificate();
    }
    const choice = await createAgentTransport(spec.transport, tOpts, this.options.verbs ? { verbs: this.options.verbs } : {});
    this.transport = choice.transport;
    this.transportChoice = { requested: choice.requested, kind: choice.kind, device: choice.device, reason: choice.reason };
    if (spec.transport === 'auto' && choice.kind === 'tcp') this.log.warn('transport: falling back to TCP', { reason: choice.reason });
    else this.log.info('transport', { kind: choice.kind, reason: choice.reason });
    this.transport.onError((e) => {
      this.log.warn('peer connection dropped', { kind: e.kind, peer: e.peer, remote: e.remote, error: e.message });
      if (e.kind === 'handshake') {
        // Keep the telling failure ("failed to prove knowledge of the group secret", a certificate for
        // another node...) over the vague ones the same trouble causes on the other side (the peer hung up).
        const vague = (message: string) => /connection lost during the handshake|handshake timed out/.test(message);
        const last = this.lastHandshakeFailure;
        const now = Date.now();
        if (!(vague(e.message) && last !== null && !vague(last.message) && now - last.atMs < 30_000)) {
          this.lastHandshakeFailure = { peer: e.peer, remote: e.remote, message: e.message, atMs: now };
        }
      }
    });
    if (this.tls || this.apiCredentials) {
      // Kubernetes updates a Secret volume in place (an atomic swap of its ..data directory) when the
      // certificate is renewed, the CA rotated or a token rotated: re-reading the files puts the new
      // credentials in use without a restart, before the old certificate expires.
      this.tlsReloadTimer = setInterval(() => {
        this.reloadTls();
        if (!this.closed) this.apiCredentials?.reload((message, fields) => (fields.error !== undefined ? this.log.error(message, fields) : this.log.info(message, fields)));
      }, tlsReloadMs(this.options.tlsReloadMs));
      this.tlsReloadTimer.unref();
    }
    const bound = await this.transport.listen(config.listen.host, config.listen.peerPort);
    Object.assign(this.peerAddress, bound);
    const peers = new Map<NodeId, string>();
    for (const [id, addr] of Object.entries(config.peers)) if (Number(id) !== config.nodeId) peers.set(Number(id), addr);
    this.transport.setPeers(peers);

    const replicaConfig = { ...toReplicaConfig(config, config.group), diskId: this.store.diskId };
    if (config.benchApi) this.bench = new BenchProbe(config.nodeId);
    this.driver = new Driver({
      config: replicaConfig,
      start: this.start,
      store: this.store,
      transport: this.transport,
      types: this.types,
      tickMs: spec.timing.tickMs,
      log: this.log,
      seed: replicaSeed(),
      transferFrameBytesMax: Math.max(1024, spec.wireLimits.frameBytesMax - 64 * 1024),
      observe: this.metrics.observer,
      ...(this.bench ? { bench: this.bench } : {}),
      onExit: (reason) => this.onDriverExit(reason),
    });
    const tick = setInterval(() => (this.lastTickAt = Date.now()), spec.timing.tickMs);
    tick.unref();
    this.metrics.setCollector(() => this.collect());

    this.server = createHttpServer(this, this.apiCredentials);
    const httpBound = await listenHttp(this.server, config.listen.host, config.listen.httpPort);
    this.httpAddress = { host: httpBound.address, port: httpBound.port };
    this.startDriverWithFounders();
    this.log.info('agent started', {
      start: this.start.kind, peerPort: bound.port, httpPort: httpBound.port, dataDir: config.dataDir,
      ...(this.start.kind === 'restart' ? { savedView: this.start.saved.lastView.viewId } : {}),
    });
  }

  /**
   * Founding members bootstrap view 0 together. The failure detector runs from the driver's first tick,
   * so a founder ticking before the others are up suspects them and wedges the new group (until every
   * member exits on wedgedExitTicks): the driver starts once this node is connected to every other founder
   * it has an address for, as Derecho forms its first view only when every founding member is there.
   */
  private startDriverWithFounders(): void {
    const founders = this.start.kind === 'bootstrap' ? this.start.members.filter((n) => n !== this.config.nodeId && this.config.peers[String(n)] !== undefined) : [];
    const missing = (): NodeId[] => founders.filter((n) => !this.transport.connected(n));
    this.foundersPending = missing();
    if (this.foundersPending.length === 0) return this.driver.start();
    this.log.info('waiting for the other founding members to connect before bootstrapping view 0', { missing: this.foundersPending });
    const timer = setInterval(() => {
      this.foundersPending = this.closed ? [] : missing();
      if (this.foundersPending.length > 0) return;
      clearInterval(timer);
      if (!this.closed) this.driver.start();
    }, this.config.group.spec.timing.tickMs);
  }

  private readTlsFiles(): { ca: Buffer; cert: Buffer; key: Buffer } {
    const { auth } = this.config;
    return {
      ca: readFile(auth.tlsCaFile!, 'auth.tlsCaFile'),
      cert: readFile(auth.tlsCertFile!, 'auth.tlsCertFile'),
      key: readFile(auth.tlsKeyFile!, 'auth.tlsKeyFile'),
    };
  }

  /**
   * tls.mode "mutual", every tlsReloadMs: re-reads the CA, certificate and key files and, when they changed,
   * hands them to the transport (new handshakes use them; open connections stay). Files refused (one
   * unreadable, half-written, a key of another certificate, a certificate for another node...) leave the
   * credentials in force: never an exit, as the files may be caught mid-update; the next tick tries what
   * they then hold. The same refused contents are not tried again (the result would be the same).
   */
  private reloadTls(): void {
    const state = this.tls;
    if (state === null || this.closed) return;
    let files: TlsState['files'];
    try {
      files = this.readTlsFiles();
    } catch (e) {
      const reason = e instanceof Error ? e.message : String(e);
      return this.tlsReloadFailed(state, reason, `read: ${reason}`);
    }
    const old = state.files;
    const changed = (['ca', 'cert', 'key'] as const).filter((k) => !files[k].equals(old[k]));
    if (changed.length === 0) {
      // Back to what is in force (say, a bad update reverted): nothing is wrong any more.
      state.lastReloadError = null;
      state.refused = null;
      return;
    }
    const fingerprint = createHash('sha256').update(files.ca).update('\0').update(files.cert).update('\0').update(files.key).digest('hex');
    if (fingerprint === state.refused) return;
    const transport = this.transport as AgentTransport & { updateTlsCredentials?(credentials: TlsOptions): void };
    try {
      if (!transport.updateTlsCredentials) throw new Error(`the ${transport.kind} transport cannot replace its TLS credentials`);
      transport.updateTlsCredentials({ ...files });
    } catch (e) {
      const { auth } = this.config;
      const names = { ca: auth.tlsCaFile, cert: auth.tlsCertFile, key: auth.tlsKeyFile };
      return this.tlsReloadFailed(state, `${changed.map((k) => names[k]).join(', ')} changed: ${e instanceof Error ? e.message : String(e)}`, fingerprint);
    }
    state.files = files;
    state.certificate = certificateSummary(files.cert);
    state.reloads++;
    state.lastReloadError = null;
    state.refused = null;
    this.metrics.tls?.reloads.inc({ result: 'ok' });
    this.showCertificate();
    this.log.info('TLS credentials reloaded', { changed, notAfter: state.certificate?.notAfter, serialNumber: state.certificate?.serialNumber, subject: state.certificate?.subject, issuer: state.certificate?.issuer });
  }

  private tlsReloadFailed(state: TlsState, reason: string, fingerprint: string): void {
    if (fingerprint === state.refused) return;
    state.refused = fingerprint;
    state.lastReloadError = reason;
    this.metrics.tls?.reloads.inc({ result: 'failed' });
    this.log.error('TLS credentials reload failed; the current ones stay in use', { error: reason });
  }

  private showCertificate(): void {
    const notAfter = this.tls?.certificate?.notAfter;
    if (notAfter !== undefined) this.metrics.tls?.certificateNotAfterSeconds.set(Date.parse(notAfter) / 1000);
  }

  private onDriverExit(reason: string): void {
    this.exitReasonText = reason;
    this.log.warn('replica exited; the agent stops so that its supervisor restarts it', { reason });
    void this.close().finally(() => this.options.onExit?.(reason));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.tlsReloadTimer) clearInterval(this.tlsReloadTimer);
    this.tlsReloadTimer = null;
    this.driver?.stop();
    // Every connection dropped at once (closeHttpServer): SIGTERM used to hang until a client gave up or the
    // kubelet's SIGKILL came (a write waiting for delivery; a TLS client stuck before its handshake).
    if (this.server) await closeHttpServer(this.server);
    await this.transport?.close();
    try {
      this.store.close();
    } catch {
      // already closed
    }
    this.dirLock.release();
  }

  /** Graceful leave, then close. */
  async leave(timeoutMs = 5_000): Promise<void> {
    this.driver.leave();
    const t0 = Date.now();
    while (!this.driver.exited() && Date.now() - t0 < timeoutMs) await new Promise((r) => setTimeout(r, 50));
    await this.close();
  }

  exitReason(): string | null {
    return this.exitReasonText;
  }

  healthy(): boolean {
    return !this.closed && this.exitReasonText === null && Date.now() - this.lastTickAt < 5_000;
  }

  notReadyReason(): string | null {
    if (!this.healthy()) return this.exitReasonText ?? 'agent stopped';
    if (this.foundersPending.length > 0) return `bootstrapping: waiting for founding member(s) ${this.foundersPending.join(', ')} to connect`;
    const s = this.driver.status();
    if (s.mode !== 'active') return `${s.mode}: ${s.waiting.message}`;
    if (s.wedged) return `wedged in view ${s.viewId}: ${s.waiting.message || 'view change in progress'}`;
    // The replica installs a view inside a step; the driver takes it (layout, hosts) when it drains that
    // step's Ready on the next turn of the event loop. Until then requests would find no view.
    const applied = this.driver.currentView()?.viewId ?? -1;
    if (applied !== s.viewId) return `installing view ${s.viewId}`;
    const pending = s.shards.filter((x) => !x.stateReady);
    if (pending.length > 0) return `waiting for the state of shard(s) ${pending.map((x) => `${x.subgroup}/${x.shardIndex}`).join(', ')}`;
    return null;
  }

  payloadBytesMax(): number {
    return this.config.group.spec.wireLimits.payloadBytesMax;
  }

  shardCount(subgroup: string, type?: string): number {
    const sg = this.config.group.spec.subgroups.find((s) => s.name === subgroup);
    if (!sg) throw new RequestError(`no subgroup ${JSON.stringify(subgroup)} (subgroups: ${this.config.group.spec.subgroups.map((s) => s.name).join(', ')})`, 404);
    if (type !== undefined && sg.type !== type) throw new RequestError(`subgroup ${subgroup} has type ${sg.type}, not ${type}`, 400);
    return sg.shards;
  }

  subgroupsJson(): unknown {
    const view = this.driver.currentView();
    return {
      viewId: view?.viewId ?? -1,
      subgroups: this.config.group.spec.subgroups.map((sg) => ({
        name: sg.name, type: sg.type, deliveryMode: sg.deliveryMode, persistent: sg.persistent,
        shards: Array.from({ length: sg.shards }, (_, i) => view?.layout.shards.find((s) => s.subgroup === sg.name && s.shardIndex === i)?.members ?? []),
      })),
    };
  }

  statusJson(): unknown {
    const s = this.driver.status();
    const view = this.driver.currentView();
    const t = this.transport.metrics;
    const st = this.store.stats();
    return {
      nodeId: this.config.nodeId,
      group: this.config.groupName,
      pid: process.pid,
      startedAt: new Date(this.startedAt).toISOString(),
      start: this.startKind,
      mode: s.mode,
      viewId: s.viewId,
      members: s.members,
      leader: s.leader,
      wedged: s.wedged,
      ready: this.notReadyReason() === null,
      waiting: s.waiting.kind === 'none' ? null : s.waiting,
      restart: s.mode === 'restarting' ? { waitingFor: s.waiting.message } : null,
      exited: this.exitReasonText,
      layout: view?.layout.shards.map((x) => ({ shardId: x.shardId, subgroup: x.subgroup, shardIndex: x.shardIndex, members: x.members, deliveryMode: x.deliveryMode, persistent: x.persistent })) ?? [],
      shards: s.shards.map((x) => ({
        ...x,
        applied: this.driver.hostOf(x.shardId)?.applied ?? null,
      })),
      counters: { ...this.driver.counters },
      transport: {
        ...this.transportStatus(),
        peerPort: this.peerAddress.port, connectedPeers: this.transport.connectedPeers(),
        framesSent: t.framesSent, framesReceived: t.framesReceived, bytesSent: t.bytesSent, bytesReceived: t.bytesReceived,
        protocolErrors: t.protocolErrors, handshakeFailures: t.handshakeFailures,
        lastHandshakeFailure: this.lastHandshakeFailure === null ? null : {
          peer: this.lastHandshakeFailure.peer, remote: this.lastHandshakeFailure.remote, message: this.lastHandshakeFailure.message,
          secondsAgo: Math.round((Date.now() - this.lastHandshakeFailure.atMs) / 100) / 10,
        },
        dropsQueueFull: t.dropsQueueFull, dropsUnreachable: t.dropsUnreachable,
        ...(this.tls ? {
          tls: {
            subject: this.tls.certificate?.subject ?? null, issuer: this.tls.certificate?.issuer ?? null,
            notAfter: this.tls.certificate?.notAfter ?? null, serialNumber: this.tls.certificate?.serialNumber ?? null,
            reloads: this.tls.reloads, lastReloadError: this.tls.lastReloadError,
          },
        } : {}),
      },
      storage: { dataDir: this.config.dataDir, fsync: this.config.group.spec.fsync, journalBytes: st.journalBytes, liveLogRecords: st.liveLogRecords },
      api: this.apiCredentials?.status() ?? { tls: false, tokenRequired: false, tokens: 0, reloads: 0, lastReloadError: null, refused: 0 },
    };
  }

  /** spec.transport, the data path actually in use and why (auto: also when it fell back to TCP). */
  private transportStatus(): Record<string, unknown> {
    const c = this.transportChoice;
    if (!c) return {};
    const t = this.transport as AgentTransport & { rdmaPeers?(): NodeId[] };
    const rdma = t.rdmaPeers ? { rdmaPeers: t.rdmaPeers() } : {};
    return { requested: c.requested, kind: c.kind, device: c.device, reason: c.reason, ...rdma };
  }

  private collect(): void {
    const s = this.driver.status();
    const g = this.metrics.gauges;
    g.viewId.set(s.viewId);
    g.members.set(s.members.length);
    g.restarting.set(s.mode === 'restarting' ? 1 : 0);
    for (const x of s.shards) {
      g.deliveredSeq.set({ shard: String(x.shardId) }, x.delivered.seq);
      g.persistedSeq.set({ shard: String(x.shardId) }, x.persistenceFrontier.seq);
    }
    const t = this.transport.metrics;
    g.connections.set(t.connectionsOpen);
    g.transportBytes.set({ direction: 'sent' }, t.bytesSent);
    g.transportBytes.set({ direction: 'received' }, t.bytesReceived);
    g.transportFrames.set({ direction: 'sent' }, t.framesSent);
    g.transportFrames.set({ direction: 'received' }, t.framesReceived);
    g.journalBytes.set(this.store.stats().journalBytes);
  }

  metricsText(): Promise<string> {
    return this.metrics.registry.metrics();
  }
}
