// Prometheus metrics of one agent (prom-client, its own registry).

import client from 'prom-client';
import type { DriverObserver } from './driver.ts';
import type { View } from '../core/types.ts';

export interface AgentMetrics {
  registry: client.Registry;
  observer: DriverObserver;
  /** Refreshes the gauges that are read from the driver, transport and store (called before a scrape). */
  setCollector(collect: () => void): void;
  gauges: {
    viewId: client.Gauge;
    members: client.Gauge;
    deliveredSeq: client.Gauge<'shard'>;
    persistedSeq: client.Gauge<'shard'>;
    connections: client.Gauge;
    transportBytes: client.Gauge<'direction'>;
    transportFrames: client.Gauge<'direction'>;
    journalBytes: client.Gauge;
    restarting: client.Gauge;
  };
  /** tls.mode "mutual" only (else null): the certificate in force and the reloads of the TLS files. */
  tls: {
    certificateNotAfterSeconds: client.Gauge;
    reloads: client.Counter<'result'>;
  } | null;
}

export function createMetrics(labels: { group: string; node: string }, options: { tls?: boolean } = {}): AgentMetrics {
  const registry = new client.Registry();
  registry.setDefaultLabels(labels);
  let collect: () => void = () => {};
  // A collect hook on one gauge refreshes all of them at scrape time. The registry reads its metrics in
  // registration order, so this gauge comes before the gauges it refreshes (else a scrape shows the
  // values of the previous one).
  new client.Gauge({
    name: 'derecho_scrape_refresh', help: 'Internal: refreshes the gauges read from the agent', registers: [registry],
    collect() {
      collect();
      this.set(1);
    },
  });
  client.collectDefaultMetrics({ register: registry, prefix: 'derecho_process_' });
  const delivered = new client.Counter({ name: 'derecho_messages_delivered_total', help: 'Messages delivered to replicated objects', labelNames: ['shard', 'mode'], registers: [registry] });
  const deliveredBytes = new client.Counter({ name: 'derecho_delivered_bytes_total', help: 'Payload bytes delivered', labelNames: ['shard'], registers: [registry] });
  const viewChanges = new client.Counter({ name: 'derecho_view_changes_total', help: 'Views installed by this agent', registers: [registry] });
  const persistSeconds = new client.Histogram({
    name: 'derecho_persist_seconds', help: 'Time to make one Ready batch durable (write + fsync policy)',
    buckets: [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1], registers: [registry],
  });
  const persistedRecords = new client.Counter({ name: 'derecho_persisted_records_total', help: 'Records made durable', registers: [registry] });
  const requestSeconds = new client.Histogram({
    name: 'derecho_request_seconds', help: 'Latency of client requests (ordered updates until replied and persisted; queries)',
    labelNames: ['kind', 'outcome'], buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [registry],
  });
  const gauges = {
    viewId: new client.Gauge({ name: 'derecho_view_id', help: 'Id of the installed view (-1 before the first)', registers: [registry] }),
    members: new client.Gauge({ name: 'derecho_view_members', help: 'Members of the installed view', registers: [registry] }),
    deliveredSeq: new client.Gauge({ name: 'derecho_delivered_frontier_seq', help: 'Sequence number of the last delivered version in the current view, per shard served', labelNames: ['shard'], registers: [registry] }),
    persistedSeq: new client.Gauge({ name: 'derecho_persisted_frontier_seq', help: 'Sequence number of the shard persistence frontier (persisted on every member)', labelNames: ['shard'], registers: [registry] }),
    connections: new client.Gauge({ name: 'derecho_peer_connections', help: 'Authenticated peer connections open', registers: [registry] }),
    transportBytes: new client.Gauge({ name: 'derecho_transport_bytes', help: 'Bytes sent/received on peer connections since start', labelNames: ['direction'], registers: [registry] }),
    transportFrames: new client.Gauge({ name: 'derecho_transport_frames', help: 'Frames sent/received on peer connections since start', labelNames: ['direction'], registers: [registry] }),
    journalBytes: new client.Gauge({ name: 'derecho_journal_bytes', help: 'Size of the log journal on disk', registers: [registry] }),
    restarting: new client.Gauge({ name: 'derecho_restarting', help: '1 while the agent waits for a restart quorum', registers: [registry] }),
  };
  const tls = options.tls ? {
    certificateNotAfterSeconds: new client.Gauge({ name: 'derecho_tls_certificate_not_after_seconds', help: 'Expiry (notAfter) of the TLS certificate this member authenticates with, unix seconds', registers: [registry] }),
    reloads: new client.Counter({ name: 'derecho_tls_reloads_total', help: 'Changed TLS credential files taken (ok) or refused, the previous credentials kept (failed)', labelNames: ['result'], registers: [registry] }),
  } : null;
  // Both results from the start, so that rate() and alerts on failed see a 0 before the first failure.
  for (const result of ['ok', 'failed']) tls?.reloads.inc({ result }, 0);
  const deliveredChildren = new Map<string, { messages: client.Counter.Internal; bytes: client.Counter.Internal }>();
  const observer: DriverObserver = {
    delivered(shardId, bytes, mode) {
      // Per message: the labelled children are looked up once (labels() hashes its arguments).
      const key = `${shardId}/${mode}`;
      let c = deliveredChildren.get(key);
      if (c === undefined) {
        c = { messages: delivered.labels(String(shardId), mode), bytes: deliveredBytes.labels(String(shardId)) };
        deliveredChildren.set(key, c);
      }
      c.messages.inc();
      c.bytes.inc(bytes);
    },
    viewInstalled(_view: View) {
      viewChanges.inc();
    },
    persisted(records, ms) {
      persistedRecords.inc(records);
      persistSeconds.observe(ms / 1000);
    },
    requestDone(kind, ms, ok) {
      requestSeconds.observe({ kind, outcome: ok ? 'ok' : 'error' }, ms / 1000);
    },
  };
  return { registry, observer, gauges, tls, setCollector: (c) => (collect = c) };
}
