// Leader election with a coordination.k8s.io/v1 Lease, the way client-go's leaderelection package does it:
// several operator replicas campaign for one Lease; the holder renews it every retry period and is the only
// one that reconciles.
//
//  - A candidate takes the Lease when it does not exist, when nobody holds it (holderIdentity empty: the
//    last holder released it), or when its record has not changed for leaseDurationSeconds as measured on
//    the candidate's own clock since it last saw the record change (so clock skew between replicas does
//    not matter). Every write is a replace with the resourceVersion read: two candidates never both win.
//  - The leader renews every retryPeriod; when it has not renewed for renewDeadline (< leaseDuration) it
//    stops leading before anyone else may take over. It also stops at once if it sees another holder.
//  - release() (on SIGTERM) empties holderIdentity, so a standby takes over within one retry period
//    instead of waiting for the lease to expire.

import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { CoordinationV1Api, V1MicroTime } from '@kubernetes/client-node';
import type { KubeConfig, V1Lease } from '@kubernetes/client-node';
import { createLogger } from '../../node-agent/src/agent/logger.ts';
import type { Logger } from '../../node-agent/src/agent/logger.ts';

export interface LeaderElectionOptions {
  kubeConfig: KubeConfig;
  /** Namespace of the Lease (the operator's own: POD_NAMESPACE). */
  namespace: string;
  /** Name of the Lease. */
  name: string;
  /** This candidate's identity (POD_NAME): written into holderIdentity. */
  identity: string;
  leaseDurationSeconds?: number;
  renewDeadlineSeconds?: number;
  retryPeriodSeconds?: number;
  onStartedLeading?: () => void;
  onStoppedLeading?: () => void;
  /** Called when the observed holder changes (another replica, or this one). */
  onNewLeader?: (identity: string) => void;
  log?: Logger;
}

export const LEASE_DEFAULTS = Object.freeze({ leaseDurationSeconds: 15, renewDeadlineSeconds: 10, retryPeriodSeconds: 2 });

/** POD_NAME, else the host name plus a random suffix (unique per process, as client-go does). */
export function defaultIdentity(env: Record<string, string | undefined> = process.env): string {
  return env.POD_NAME && env.POD_NAME.trim() !== '' ? env.POD_NAME.trim() : `${hostname()}_${randomBytes(4).toString('hex')}`;
}

function statusCode(e: unknown): number | undefined {
  return e && typeof e === 'object' && 'code' in e && typeof (e as { code: unknown }).code === 'number' ? (e as { code: number }).code : undefined;
}

function errorText(e: unknown): string {
  if (e && typeof e === 'object' && 'code' in e && 'body' in e) {
    const body = (e as { body: unknown }).body;
    try {
      return `HTTP ${String((e as { code: unknown }).code)}: ${(JSON.parse(String(body)) as { message?: string }).message ?? String(body)}`;
    } catch {
      return `HTTP ${String((e as { code: unknown }).code)}: ${String(body)}`;
    }
  }
  return e instanceof Error ? e.message : String(e);
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms);
    }),
  ]);
}

export class LeaderElector {
  private readonly api: CoordinationV1Api;
  private readonly leaseDurationMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;
  private readonly log: Logger;
  private leading = false;
  private running = false;
  private timer: NodeJS.Timeout | null = null;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  /** The last record seen (holder and renewTime) and when, on the local clock, it last changed. */
  private observed: { holder: string; renewTime: string; resourceVersion: string } | null = null;
  private observedAt = 0;
  private lastRenewAt = 0;
  private knownLeader = '';

  constructor(private readonly options: LeaderElectionOptions) {
    this.api = options.kubeConfig.makeApiClient(CoordinationV1Api);
    this.leaseDurationMs = (options.leaseDurationSeconds ?? LEASE_DEFAULTS.leaseDurationSeconds) * 1000;
    this.renewDeadlineMs = (options.renewDeadlineSeconds ?? LEASE_DEFAULTS.renewDeadlineSeconds) * 1000;
    this.retryPeriodMs = (options.retryPeriodSeconds ?? LEASE_DEFAULTS.retryPeriodSeconds) * 1000;
    if (!(this.renewDeadlineMs < this.leaseDurationMs)) throw new Error('leader election: renewDeadline must be shorter than leaseDuration');
    if (!(this.retryPeriodMs < this.renewDeadlineMs)) throw new Error('leader election: retryPeriod must be shorter than renewDeadline');
    this.log = options.log ?? createLogger('info', { component: 'leader-election' });
  }

  get identity(): string {
    return this.options.identity;
  }

  isLeader(): boolean {
    return this.leading && Date.now() - this.lastRenewAt < this.renewDeadlineMs;
  }

  /** The holder last observed ('' when none). */
  leader(): string {
    return this.knownLeader;
  }

  /** Starts campaigning (and renewing once leading) until stop(). */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    while (this.running) {
      let ok = false;
      try {
        ok = await withTimeout(this.tryAcquireOrRenew(), Math.max(1000, this.renewDeadlineMs / 2), 'a Lease update');
      } catch (e) {
        this.log.warn('leader election: cannot read or update the Lease', { lease: `${this.options.namespace}/${this.options.name}`, error: errorText(e) });
      }
      if (!this.running) break;
      const now = Date.now();
      if (ok) {
        this.lastRenewAt = now;
        if (!this.leading) {
          this.leading = true;
          this.log.info('leader election: became the leader', { identity: this.identity, lease: `${this.options.namespace}/${this.options.name}` });
          this.options.onStartedLeading?.();
        }
      } else if (this.leading && (now - this.lastRenewAt >= this.renewDeadlineMs || (this.knownLeader !== '' && this.knownLeader !== this.identity))) {
        this.stepDown(this.knownLeader !== this.identity && this.knownLeader !== '' ? `the Lease is held by ${this.knownLeader}` : `no renewal for ${this.renewDeadlineMs / 1000} s`);
      }
      // Jitter for candidates (client-go: up to 1.2 x retryPeriod); the leader renews on the period.
      const delay = this.leading ? this.retryPeriodMs : this.retryPeriodMs * (1 + Math.random() * 0.2);
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        this.timer = setTimeout(resolve, delay);
      });
      this.wake = null;
    }
  }

  private stepDown(why: string): void {
    if (!this.leading) return;
    this.leading = false;
    this.log.warn('leader election: stopped leading', { identity: this.identity, reason: why });
    this.options.onStoppedLeading?.();
  }

  private noteHolder(holder: string): void {
    if (holder === this.knownLeader) return;
    this.knownLeader = holder;
    if (holder !== '') this.options.onNewLeader?.(holder);
  }

  /** One round: true when this candidate holds the Lease afterwards. */
  private async tryAcquireOrRenew(): Promise<boolean> {
    const { namespace, name } = this.options;
    const now = new Date();
    let lease: V1Lease;
    try {
      lease = await this.api.readNamespacedLease({ name, namespace });
    } catch (e) {
      if (statusCode(e) !== 404) throw e;
      try {
        const created = await this.api.createNamespacedLease({
          namespace,
          body: {
            apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name, namespace },
            spec: { holderIdentity: this.identity, leaseDurationSeconds: this.leaseDurationMs / 1000, acquireTime: new V1MicroTime(now.getTime()), renewTime: new V1MicroTime(now.getTime()), leaseTransitions: 0 },
          },
        });
        this.observe(created, now.getTime());
        return true;
      } catch (createError) {
        if (statusCode(createError) === 409) return false; // another candidate created it first
        throw createError;
      }
    }
    this.observe(lease, now.getTime());
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? '';
    const durationMs = (spec.leaseDurationSeconds ?? this.leaseDurationMs / 1000) * 1000;
    if (holder !== '' && holder !== this.identity && now.getTime() < this.observedAt + durationMs) return false;
    const mine = holder === this.identity;
    const body: V1Lease = {
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: { name, namespace, resourceVersion: lease.metadata?.resourceVersion },
      spec: {
        holderIdentity: this.identity,
        leaseDurationSeconds: this.leaseDurationMs / 1000,
        acquireTime: mine && spec.acquireTime ? spec.acquireTime : new V1MicroTime(now.getTime()),
        renewTime: new V1MicroTime(now.getTime()),
        leaseTransitions: (spec.leaseTransitions ?? 0) + (mine ? 0 : 1),
      },
    };
    try {
      const updated = await this.api.replaceNamespacedLease({ name, namespace, body });
      this.observe(updated, now.getTime());
      if (!mine) this.log.info('leader election: acquired the Lease', { previousHolder: holder || '(released)', identity: this.identity });
      return true;
    } catch (e) {
      if (statusCode(e) === 409) return false; // changed since read: someone else renewed or took it
      throw e;
    }
  }

  private observe(lease: V1Lease, at: number): void {
    const record = {
      holder: lease.spec?.holderIdentity ?? '',
      renewTime: String(lease.spec?.renewTime instanceof Date ? lease.spec.renewTime.toISOString() : (lease.spec?.renewTime ?? '')),
      resourceVersion: lease.metadata?.resourceVersion ?? '',
    };
    if (this.observed === null || this.observed.holder !== record.holder || this.observed.renewTime !== record.renewTime) {
      this.observed = record;
      this.observedAt = at;
    }
    this.noteHolder(record.holder);
  }

  /**
   * Stops campaigning; with `release` (default true) a leader empties holderIdentity so that a standby
   * takes over at once. Resolves once the loop has ended (and the release is written, or failed).
   */
  async stop(opts: { release?: boolean } = {}): Promise<void> {
    if (!this.running) return;
    this.running = false;
    if (this.timer !== null) clearTimeout(this.timer);
    this.wake?.();
    await this.loop?.catch(() => {});
    const wasLeading = this.leading;
    if (wasLeading) this.stepDown('stopping');
    if ((opts.release ?? true) && wasLeading) await this.release();
  }

  private async release(): Promise<void> {
    const { namespace, name } = this.options;
    try {
      const lease = await withTimeout(this.api.readNamespacedLease({ name, namespace }), 5000, 'reading the Lease');
      if ((lease.spec?.holderIdentity ?? '') !== this.identity) return;
      const now = new V1MicroTime();
      await withTimeout(this.api.replaceNamespacedLease({
        name,
        namespace,
        body: {
          apiVersion: 'coordination.k8s.io/v1',
          kind: 'Lease',
          metadata: { name, namespace, resourceVersion: lease.metadata?.resourceVersion },
          // No holder: the next candidate takes it at once (client-go's ReleaseOnCancel does the same).
          spec: { leaseDurationSeconds: 1, acquireTime: now, renewTime: now, leaseTransitions: lease.spec?.leaseTransitions ?? 0 },
        },
      }), 5000, 'releasing the Lease');
      this.log.info('leader election: released the Lease', { identity: this.identity });
    } catch (e) {
      this.log.warn('leader election: could not release the Lease (it expires on its own)', { error: errorText(e) });
    }
  }
}
