// Entry point of the operator process (what the Helm chart's Deployment runs):
//
//   node --import tsx operator/src/main.ts [--namespace NS[,NS...]] [--leader-elect=true|false]
//        [--metrics-port 8081] [--health-port 8082] [...]
//
// Kubernetes credentials: $KUBECONFIG when set, else the in-cluster service account, else ~/.kube/config.
// Leader election: a Lease named --lease-name (default derecho-operator) in $POD_NAMESPACE (else
// --lease-namespace, else the service account's namespace, else "default"), held as $POD_NAME (else host
// name plus a random suffix). Only the leader reconciles; every replica keeps its caches warm.
// HTTP: /metrics on --metrics-port; /healthz, /livez and /readyz (caches synced) on --health-port.
// SIGTERM/SIGINT: stop reconciling (the reconciles under way finish), release the Lease, stop the
// informers, exit 0. Exit code 2: bad flags or no usable kubeconfig; 1: any other failure.

import fs from 'node:fs';
import path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { createLogger } from '../../node-agent/src/agent/logger.ts';
import type { Logger, LogLevel } from '../../node-agent/src/agent/logger.ts';
import { Controller } from './controller.ts';
import type { StatusUrl } from './controller.ts';
import type { CertificateTimes } from './certificates.ts';
import { LEASE_DEFAULTS, LeaderElector, defaultIdentity } from './leader.ts';
import { createOperatorMetrics, healthRoutes, metricsRoutes, serveRoutes } from './metrics.ts';
import type { OperatorMetrics } from './metrics.ts';
import { DEFAULT_OPTIONS } from './reconcile.ts';

export const EXIT_USAGE = 2;
const SERVICE_ACCOUNT_NAMESPACE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';

export interface OperatorFlags {
  /** The namespaces watched and reconciled; empty: all namespaces. */
  namespaces: string[];
  leaderElect: boolean;
  leaseName: string;
  leaseNamespace: string | undefined;
  metricsPort: number;
  healthPort: number;
  bindAddress: string;
  pollIntervalSeconds: number;
  statusTimeoutMs: number;
  workers: number;
  logLevel: LogLevel;
  rdmaResourceName: string;
  agentImage: string;
  certificates: CertificateTimes;
}

export class UsageError extends Error {
  override name = 'UsageError';
}

export function usage(): string {
  return [
    'Usage: derecho-operator [flags]',
    '',
    '  --namespace NS[,NS...]      watch and reconcile DerechoGroups in these namespaces only, nothing is read or',
    '                              written elsewhere (repeatable; default: all namespaces; -n for short)',
    '  --all-namespaces            all namespaces (the default; not with --namespace)',
    '  --leader-elect[=BOOL]       elect a leader through a Lease; only the leader reconciles (default true)',
    '  --lease-name NAME           the Lease (default derecho-operator)',
    '  --lease-namespace NS        the Lease\'s namespace (default $POD_NAMESPACE, else the service account\'s)',
    '  --metrics-port PORT         Prometheus /metrics (default 8081; 0 picks a free port)',
    '  --health-port PORT          /healthz, /livez and /readyz (default 8082; 0 picks a free port)',
    '  --bind-address ADDR         address of both HTTP servers (default 0.0.0.0)',
    '  --poll-interval SECONDS     poll the members\' /status of groups with pods this often (default 2)',
    '  --status-timeout-ms MS      timeout of one /status poll (default 2000)',
    '  --workers N                 groups reconciled in parallel (default 4)',
    '  --rdma-resource-name NAME   device resource requested by transport: rdma (default rdma/hca_shared_devices_a)',
    `  --agent-image IMAGE         agent image of groups without spec.image (default ${DEFAULT_OPTIONS.agentImage}, this operator's version)`,
    '  --certificate-validity D    lifetime of the members\' certificates the operator issues, renewed with a third',
    '                              left (default 90d; D is a number with s, m, h or d)',
    '  --authority-validity D      lifetime of a group\'s certificate authority (default 3650d)',
    '  --authority-propagation D   how long a new authority is only trusted before it signs (default 10m)',
    '  --log-level LEVEL           debug, info, warn or error (default info)',
    '',
    'Environment: KUBECONFIG (else in-cluster credentials), POD_NAMESPACE and POD_NAME (the Lease and its holder).',
  ].join('\n');
}

function parseBool(flag: string, value: string): boolean {
  if (/^(true|1|yes)$/i.test(value)) return true;
  if (/^(false|0|no)$/i.test(value)) return false;
  throw new UsageError(`${flag}: ${JSON.stringify(value)} is not a boolean (true or false)`);
}

/** "90d", "12h", "10m", "30s" -> seconds. */
function parseDurationSeconds(flag: string, value: string, minSeconds: number): number {
  const m = /^([0-9]+)(s|m|h|d)$/.exec(value);
  const seconds = m ? Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86_400 }[m[2] as 's' | 'm' | 'h' | 'd'] : NaN;
  if (!(seconds >= minSeconds)) throw new UsageError(`${flag}: ${JSON.stringify(value)} is not a duration of at least ${minSeconds} s (a number with s, m, h or d, e.g. 90d)`);
  return seconds;
}

/** A namespace name: an RFC 1123 label. */
const NAMESPACE_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** "a,b" -> ["a", "b"]: each a valid namespace name ("" alone: all namespaces, i.e. none listed). */
function parseNamespaces(flag: string, value: string): string[] {
  if (value.trim() === '') return [];
  return value.split(',').map((entry) => {
    const ns = entry.trim();
    if (!NAMESPACE_NAME.test(ns)) throw new UsageError(`${flag}: ${JSON.stringify(ns)} (in ${JSON.stringify(value)}) is not a namespace name (lower-case letters, digits and '-', at most 63)`);
    return ns;
  });
}

function parseInt10(flag: string, value: string, min: number, max: number): number {
  if (!/^[0-9]+$/.test(value) || Number(value) < min || Number(value) > max) throw new UsageError(`${flag}: ${JSON.stringify(value)} is not an integer in ${min}..${max}`);
  return Number(value);
}

export function parseFlags(argv: readonly string[]): OperatorFlags {
  const flags: OperatorFlags = {
    namespaces: [], leaderElect: true, leaseName: 'derecho-operator', leaseNamespace: undefined,
    metricsPort: 8081, healthPort: 8082, bindAddress: '0.0.0.0', pollIntervalSeconds: 2, statusTimeoutMs: 2000,
    workers: 4, logLevel: 'info', rdmaResourceName: DEFAULT_OPTIONS.rdmaResourceName, agentImage: DEFAULT_OPTIONS.agentImage,
    certificates: { ...DEFAULT_OPTIONS.certificates },
  };
  let allNamespaces = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf('=');
    const flag = arg.startsWith('--') && eq > 0 ? arg.slice(0, eq) : arg;
    const inline = arg.startsWith('--') && eq > 0 ? arg.slice(eq + 1) : undefined;
    const value = (): string => {
      if (inline !== undefined) return inline;
      const next = argv[++i];
      if (next === undefined) throw new UsageError(`${flag} needs a value`);
      return next;
    };
    switch (flag) {
      case '--namespace': case '-n':
        for (const ns of parseNamespaces(flag, value())) if (!flags.namespaces.includes(ns)) flags.namespaces.push(ns);
        break;
      case '--all-namespaces': allNamespaces = true; break;
      case '--leader-elect': flags.leaderElect = inline === undefined ? true : parseBool(flag, inline); break;
      case '--no-leader-elect': flags.leaderElect = false; break;
      case '--lease-name': flags.leaseName = value(); break;
      case '--lease-namespace': flags.leaseNamespace = value(); break;
      case '--metrics-port': flags.metricsPort = parseInt10(flag, value(), 0, 65535); break;
      case '--health-port': flags.healthPort = parseInt10(flag, value(), 0, 65535); break;
      case '--bind-address': flags.bindAddress = value(); break;
      case '--poll-interval': {
        const v = Number(value());
        if (!Number.isFinite(v) || v < 0.2 || v > 300) throw new UsageError(`${flag}: seconds in 0.2..300`);
        flags.pollIntervalSeconds = v;
        break;
      }
      case '--status-timeout-ms': flags.statusTimeoutMs = parseInt10(flag, value(), 100, 60_000); break;
      case '--workers': flags.workers = parseInt10(flag, value(), 1, 64); break;
      case '--rdma-resource-name': flags.rdmaResourceName = value(); break;
      case '--agent-image': {
        const image = value();
        if (!/^\S+$/.test(image) || image.length > 512) throw new UsageError(`${flag}: ${JSON.stringify(image)} is not a container image reference`);
        flags.agentImage = image;
        break;
      }
      case '--certificate-validity': flags.certificates.certificateValiditySeconds = parseDurationSeconds(flag, value(), 60); break;
      case '--authority-validity': flags.certificates.authorityValiditySeconds = parseDurationSeconds(flag, value(), 60); break;
      case '--authority-propagation': flags.certificates.authorityPropagationSeconds = parseDurationSeconds(flag, value(), 0); break;
      case '--log-level': {
        const level = value();
        if (!['debug', 'info', 'warn', 'error'].includes(level)) throw new UsageError(`${flag}: ${JSON.stringify(level)} is not debug, info, warn or error`);
        flags.logLevel = level as LogLevel;
        break;
      }
      default:
        throw new UsageError(`unknown argument ${JSON.stringify(arg)}`);
    }
  }
  // Both would leave the operator's scope to the order of the flags (the chart's come before extraArgs).
  if (allNamespaces && flags.namespaces.length > 0) throw new UsageError(`--all-namespaces contradicts --namespace ${flags.namespaces.join(',')}`);
  if (flags.certificates.certificateValiditySeconds > flags.certificates.authorityValiditySeconds) {
    throw new UsageError(`--certificate-validity (${flags.certificates.certificateValiditySeconds} s) is longer than --authority-validity (${flags.certificates.authorityValiditySeconds} s)`);
  }
  if (flags.metricsPort !== 0 && flags.metricsPort === flags.healthPort) throw new UsageError(`--metrics-port and --health-port are both ${flags.metricsPort}`);
  return flags;
}

/** Credentials: $KUBECONFIG (the first file that exists), else in-cluster, else ~/.kube/config. */
export function loadKubeConfig(env: Record<string, string | undefined>): KubeConfig {
  const kc = new KubeConfig();
  const files = (env.KUBECONFIG ?? '').split(path.delimiter).filter((f) => f !== '');
  if (files.length > 0) {
    const file = files.find((f) => fs.existsSync(f));
    if (file === undefined) throw new UsageError(`KUBECONFIG names no existing file (${files.join(', ')})`);
    kc.loadFromFile(file);
  } else if (env.KUBERNETES_SERVICE_HOST) {
    kc.loadFromCluster();
  } else {
    kc.loadFromDefault();
  }
  if (kc.getCurrentCluster() === null) throw new UsageError('no Kubernetes cluster configured (set KUBECONFIG, or run in a pod)');
  return kc;
}

function leaseNamespace(flags: OperatorFlags, env: Record<string, string | undefined>): string {
  if (env.POD_NAMESPACE && env.POD_NAMESPACE.trim() !== '') return env.POD_NAMESPACE.trim();
  if (flags.leaseNamespace !== undefined) return flags.leaseNamespace;
  try {
    return fs.readFileSync(SERVICE_ACCOUNT_NAMESPACE, 'utf8').trim() || 'default';
  } catch {
    return 'default';
  }
}

export interface RunOverrides {
  kubeConfig?: KubeConfig;
  /** Where members' /status is (tests map pods to local ports). */
  statusUrl?: StatusUrl;
  log?: Logger;
  metrics?: OperatorMetrics;
  lease?: { leaseDurationSeconds?: number; renewDeadlineSeconds?: number; retryPeriodSeconds?: number };
}

export interface OperatorHandle {
  flags: OperatorFlags;
  identity: string;
  controller: Controller;
  elector: LeaderElector | null;
  metrics: OperatorMetrics;
  metricsPort: number;
  healthPort: number;
  /** Stops reconciling, releases the Lease, stops the informers and the HTTP servers. Idempotent. */
  stop(): Promise<void>;
}

/** Starts an operator: HTTP servers, informers, leader election (or reconciling at once). */
export async function runOperator(argv: readonly string[], env: Record<string, string | undefined>, overrides: RunOverrides = {}): Promise<OperatorHandle> {
  const flags = parseFlags(argv);
  const identity = defaultIdentity(env);
  const log = overrides.log ?? createLogger(flags.logLevel, { component: 'derecho-operator', identity });
  const kubeConfig = overrides.kubeConfig ?? loadKubeConfig(env);
  const metrics = overrides.metrics ?? createOperatorMetrics();
  const controller = new Controller({
    kubeConfig,
    ...(flags.namespaces.length > 0 ? { namespaces: flags.namespaces } : {}),
    ...(overrides.statusUrl ? { statusUrl: overrides.statusUrl } : {}),
    statusTimeoutMs: flags.statusTimeoutMs,
    pollIntervalSeconds: flags.pollIntervalSeconds,
    workers: flags.workers,
    identity,
    operatorOptions: {
      rdmaResourceName: flags.rdmaResourceName, agentImage: flags.agentImage, certificates: flags.certificates,
      // The groups' NetworkPolicies admit the operator's pods from its own namespace (any, when unknown).
      operatorNamespace: env.POD_NAMESPACE !== undefined && env.POD_NAMESPACE.trim() !== '' ? env.POD_NAMESPACE.trim() : null,
    },
    metrics,
    log,
  });
  let stopping = false;
  let elector: LeaderElector | null = null;
  const servers = await Promise.all([
    serveRoutes(flags.bindAddress, flags.metricsPort, metricsRoutes(metrics)),
    serveRoutes(flags.bindAddress, flags.healthPort, healthRoutes({
      healthy: () => (stopping ? 'stopping' : null),
      ready: () => (stopping ? 'stopping' : controller.notReadyReason()),
    })),
  ]);
  await controller.start();
  if (flags.leaderElect) {
    elector = new LeaderElector({
      kubeConfig,
      namespace: leaseNamespace(flags, env),
      name: flags.leaseName,
      identity,
      ...LEASE_DEFAULTS,
      ...overrides.lease,
      log,
      onStartedLeading: () => {
        metrics.leader.set(1);
        void controller.activate();
      },
      onStoppedLeading: () => {
        metrics.leader.set(0);
        void controller.deactivate();
      },
      onNewLeader: (holder) => log.info('leader', { holder, self: holder === identity }),
    });
    elector.start();
  } else {
    metrics.leader.set(1);
    void controller.activate();
  }
  log.info('operator started', {
    namespaces: flags.namespaces.length > 0 ? flags.namespaces.join(',') : '(all)', leaderElect: flags.leaderElect, metricsPort: servers[0].port, healthPort: servers[1].port,
    ...(elector ? { lease: `${leaseNamespace(flags, env)}/${flags.leaseName}` } : {}),
  });
  let stopped: Promise<void> | null = null;
  return {
    flags,
    identity,
    controller,
    elector,
    metrics,
    metricsPort: servers[0].port,
    healthPort: servers[1].port,
    stop: () => {
      stopped ??= (async () => {
        stopping = true;
        await controller.deactivate();
        await elector?.stop({ release: true });
        metrics.leader.set(0);
        await controller.stop();
        await Promise.all(servers.map((s) => s.close()));
        log.info('operator stopped');
      })();
      return stopped;
    },
  };
}

const isMain = import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('/operator/src/main.ts');
if (isMain) {
  const fail = (e: unknown): never => {
    if (e instanceof UsageError) {
      process.stderr.write(`derecho-operator: ${e.message}\n\n${usage()}\n`);
      process.exit(EXIT_USAGE);
    }
    process.stderr.write(`derecho-operator: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  };
  if (process.argv.includes('--help') || process.argv.includes('-h')) {
    process.stdout.write(`${usage()}\n`);
    process.exit(0);
  }
  runOperator(process.argv.slice(2), process.env).then((handle) => {
    const onSignal = (signal: string): void => {
      handle.controller.log.info('stopping', { signal });
      // A hard deadline: Kubernetes sends SIGKILL after terminationGracePeriodSeconds anyway.
      setTimeout(() => process.exit(1), 20_000).unref();
      handle.stop().then(() => process.exit(0), fail);
    };
    process.once('SIGTERM', () => onSignal('SIGTERM'));
    process.once('SIGINT', () => onSignal('SIGINT'));
  }, fail);
}
