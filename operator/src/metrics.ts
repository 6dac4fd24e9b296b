// Prometheus metrics of the operator (prom-client, a registry of its own per operator instance, so two
// instances in one process — the tests — keep separate counts), and the small HTTP servers main.ts runs:
// /metrics on --metrics-port, /healthz and /readyz on --health-port.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import client from 'prom-client';

export interface OperatorMetrics {
  registry: client.Registry;
  /** Reconciles by result: "success", "error" (retried with backoff), "skipped" (waiting for the cache). */
  reconcileTotal: client.Counter<'result'>;
  reconcileDuration: client.Histogram;
  reconcileErrors: client.Counter<'stage'>;
  /** Writes to the API server by verb (apply, delete, status, finalizer, event) and kind. */
  apiWrites: client.Counter<'verb' | 'kind'>;
  /** Agent /status polls by result (ok, unreachable, invalid). */
  agentPolls: client.Counter<'result'>;
  queueDepth: client.Gauge;
  queueRetries: client.Counter;
  /** 1 while this instance holds the leader Lease. */
  leader: client.Gauge;
  /** Watch (re)starts by resource and reason. */
  watchRestarts: client.Counter<'resource' | 'reason'>;
  groups: client.Gauge<'phase'>;
  /** Groups whose restart after a total failure waits longer than spec.restart.quorumTimeoutSeconds (condition Stuck). */
  stuckGroups: client.Gauge;
}

export function createOperatorMetrics(opts: { defaultMetrics?: boolean; labels?: Record<string, string> } = {}): OperatorMetrics {
  const registry = new client.Registry();
  if (opts.labels) registry.setDefaultLabels(opts.labels);
  if (opts.defaultMetrics ?? true) client.collectDefaultMetrics({ register: registry, prefix: 'derecho_operator_process_' });
  const registers = [registry];
  return {
    registry,
    reconcileTotal: new client.Counter({ name: 'derecho_operator_reconcile_total', help: 'Reconciles of DerechoGroups, by result', labelNames: ['result'], registers }),
    reconcileDuration: new client.Histogram({
      name: 'derecho_operator_reconcile_duration_seconds', help: 'Duration of one reconcile (reads, agent polls, writes)',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers,
    }),
    reconcileErrors: new client.Counter({ name: 'derecho_operator_reconcile_errors_total', help: 'Failed reconciles, by the stage that failed', labelNames: ['stage'], registers }),
    apiWrites: new client.Counter({ name: 'derecho_operator_api_writes_total', help: 'Writes to the API server, by verb and kind', labelNames: ['verb', 'kind'], registers }),
    agentPolls: new client.Counter({ name: 'derecho_operator_agent_polls_total', help: 'Polls of the member agents\' /status, by result', labelNames: ['result'], registers }),
    queueDepth: new client.Gauge({ name: 'derecho_operator_workqueue_depth', help: 'Groups waiting in the work queue', registers }),
    queueRetries: new client.Counter({ name: 'derecho_operator_workqueue_retries_total', help: 'Reconciles retried after an error', registers }),
    leader: new client.Gauge({ name: 'derecho_operator_leader', help: '1 while this instance holds the leader Lease (only the leader reconciles)', registers }),
    watchRestarts: new client.Counter({ name: 'derecho_operator_watch_restarts_total', help: 'Watches restarted, by resource and reason', labelNames: ['resource', 'reason'], registers }),
    groups: new client.Gauge({ name: 'derecho_operator_groups', help: 'DerechoGroups by the phase in their last status', labelNames: ['phase'], registers }),
    stuckGroups: new client.Gauge({ name: 'derecho_operator_groups_stuck', help: 'DerechoGroups whose restart after a total failure has waited longer than spec.restart.quorumTimeoutSeconds (condition Stuck=True)', registers }),
  };
}

/** The value of a counter or gauge (summed over label values, or for the given labels): for tests and logs. */
export async function metricValue(metric: client.Counter<string> | client.Gauge<string>, labels: Record<string, string> = {}): Promise<number> {
  const { values } = await metric.get();
  return values
    .filter((v) => Object.entries(labels).every(([k, want]) => String((v.labels as Record<string, unknown>)[k]) === want))
    .reduce((sum, v) => sum + v.value, 0);
}

// ---------------------------------------------------------------------------------------------------
// HTTP servers.

export type Routes = Record<string, (req: http.IncomingMessage, res: http.ServerResponse) => void | Promise<void>>;

/** A tiny HTTP server for fixed GET routes; resolves once listening (port 0 picks a free one). */
export async function serveRoutes(host: string, port: number, routes: Routes): Promise<{ server: http.Server; port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url ?? '/', 'http://operator').pathname;
    const route = routes[pathname];
    if (req.method !== 'GET' || route === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end(`no route ${req.method ?? '?'} ${pathname}\n`);
      return;
    }
    Promise.resolve(route(req, res)).catch((e: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`${e instanceof Error ? e.message : String(e)}\n`);
    });
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    server,
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

/** GET /metrics in the Prometheus text format. */
export function metricsRoutes(metrics: OperatorMetrics): Routes {
  return {
    '/metrics': async (_req, res) => {
      const text = await metrics.registry.metrics();
      res.writeHead(200, { 'content-type': metrics.registry.contentType });
      res.end(text);
    },
  };
}

/** GET /healthz and /readyz: 200 with "ok", else 503 with the reason. */
export function healthRoutes(checks: { healthy(): string | null; ready(): string | null }): Routes {
  const answer = (why: string | null, res: http.ServerResponse): void => {
    res.writeHead(why === null ? 200 : 503, { 'content-type': 'text/plain' });
    res.end(why === null ? 'ok\n' : `${why}\n`);
  };
  return {
    '/healthz': (_req, res) => answer(checks.healthy(), res),
    '/livez': (_req, res) => answer(checks.healthy(), res),
    '/readyz': (_req, res) => answer(checks.ready(), res),
  };
}
