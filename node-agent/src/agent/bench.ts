// In-agent load generator and delivery probe for `npm run bench` (enabled by the agent config's
// `benchApi: true`; off by default). Benchmark payloads are opaque bytes that start with 0x00 (never an
// invocation), followed by the send time (float64, ms on the machine's monotonic-epoch clock) and the
// sender's node id, so every receiver measures the delivery latency of every message.

import { performance } from 'node:perf_hooks';
import type { Delivery, NodeId, Version } from '../core/types.ts';
import { compareVersions } from '../core/types.ts';

export const BENCH_MARK = 0x00;
const HEADER_BYTES = 1 + 8 + 4;

/** Wall-clock-aligned milliseconds with sub-ms resolution, comparable across processes of one machine. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

export interface BenchSendSpec {
  shardId: number;
  payloadBytes: number;
  count: number;
  /** Messages per second (0 = as fast as the group accepts them). */
  ratePerSec: number;
  /** Stop sending after this long even if `count` is not reached (0 = no limit). */
  durationMs: number;
}

export interface BenchStats {
  shardId: number | null;
  delivered: number;
  deliveredBytes: number;
  firstDeliveryMs: number | null;
  lastDeliveryMs: number | null;
  lastVersion: Version | null;
  /** When the shard's persistence frontier first covered lastVersion (persistent shards). */
  persistedMs: number | null;
  sent: number;
  sendStartMs: number | null;
  sendDoneMs: number | null;
  /** Latency samples (ms) of delivered messages: percentiles. */
  latencyMs: { p50: number; p90: number; p99: number; max: number; samples: number } | null;
  /** CPU time of this process (user + system), seconds, since the last reset. */
  cpuSeconds: number;
}

const LATENCY_SAMPLES_MAX = 200_000;

export class BenchProbe {
  private stats!: BenchStats;
  private latencies: number[] = [];
  private cpuAtReset = process.cpuUsage();
  private source: (BenchSendSpec & { next: number; payload: Uint8Array }) | null = null;

  constructor(private readonly me: NodeId) {
    this.reset(null);
  }

  reset(shardId: number | null): void {
    this.stats = {
      shardId, delivered: 0, deliveredBytes: 0, firstDeliveryMs: null, lastDeliveryMs: null, lastVersion: null, persistedMs: null,
      sent: 0, sendStartMs: null, sendDoneMs: null, latencyMs: null, cpuSeconds: 0,
    };
    this.latencies = [];
    this.source = null;
    this.cpuAtReset = process.cpuUsage();
  }

  /** Starts sending (replaces a running source). */
  start(spec: BenchSendSpec): void {
    if (spec.payloadBytes < HEADER_BYTES) throw new RangeError(`payloadBytes must be at least ${HEADER_BYTES}`);
    const payload = new Uint8Array(spec.payloadBytes);
    for (let i = HEADER_BYTES; i < payload.length; i++) payload[i] = i & 0xff;
    this.source = { ...spec, next: 0, payload };
    this.stats.sendStartMs = nowMs();
  }

  /**
   * Offers messages to `send` until it refuses one or the source is done (or ahead of its rate).
   * Returns the delay (ms) after which to offer again when rate-limited, else 0.
   */
  pump(send: (shardId: number, payload: Uint8Array) => boolean): number {
    const s = this.source;
    if (!s) return 0;
    const now = nowMs();
    if (s.durationMs > 0 && now - this.stats.sendStartMs! >= s.durationMs) {
      this.stats.sendDoneMs = now;
      this.source = null;
      return 0;
    }
    const allowed = s.ratePerSec > 0 ? Math.min(s.count, Math.floor(((now - this.stats.sendStartMs!) / 1000) * s.ratePerSec) + 1) : s.count;
    while (s.next < allowed) {
      // Each message is a fresh buffer: the transport may still reference the previous one.
      const p = s.payload.slice();
      const view = new DataView(p.buffer, p.byteOffset, p.byteLength);
      p[0] = BENCH_MARK;
      view.setFloat64(1, nowMs());
      view.setUint32(9, this.me);
      if (!send(s.shardId, p)) return 0;
      s.next++;
      this.stats.sent++;
    }
    if (s.next >= s.count) {
      this.stats.sendDoneMs = nowMs();
      this.source = null;
      return 0;
    }
    return Math.max(1, 1000 / s.ratePerSec);
  }

  sending(): boolean {
    return this.source !== null;
  }

  /** A delivery of a benchmark payload. */
  delivered(d: Delivery): void {
    if (this.stats.shardId !== null && d.shardId !== this.stats.shardId) return;
    const now = nowMs();
    const st = this.stats;
    st.delivered++;
    st.deliveredBytes += d.payload.byteLength;
    st.firstDeliveryMs ??= now;
    st.lastDeliveryMs = now;
    st.lastVersion = d.version;
    st.persistedMs = null;
    if (d.payload.byteLength >= HEADER_BYTES) {
      const sentAt = new DataView(d.payload.buffer, d.payload.byteOffset, d.payload.byteLength).getFloat64(1);
      if (this.latencies.length < LATENCY_SAMPLES_MAX) this.latencies.push(now - sentAt);
    }
  }

  persisted(shardId: number, frontier: Version): void {
    const st = this.stats;
    if (st.lastVersion === null || st.persistedMs !== null || (st.shardId !== null && shardId !== st.shardId)) return;
    if (compareVersions(frontier, st.lastVersion) >= 0) st.persistedMs = nowMs();
  }

  /** The counters, and with `withLatency` the latency percentiles (a sort of every sample). */
  snapshot(withLatency = true): BenchStats {
    const sorted = withLatency ? Float64Array.from(this.latencies).sort() : new Float64Array(0);
    const pct = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
    const cpu = process.cpuUsage(this.cpuAtReset);
    return {
      ...this.stats,
      latencyMs: sorted.length === 0 ? null : { p50: pct(0.5), p90: pct(0.9), p99: pct(0.99), max: sorted[sorted.length - 1]!, samples: sorted.length },
      cpuSeconds: (cpu.user + cpu.system) / 1e6,
    };
  }
}

export interface BenchReadSpec {
  /** Concurrent readers (each issues its next read when the previous one is answered). */
  concurrency: number;
  durationMs: number;
}

export interface BenchReadResult {
  reads: number;
  errors: number;
  firstError: string | null;
  seconds: number;
  readsPerSec: number;
  latencyMs: { p50: number; p99: number } | null;
  cpuSeconds: number;
}

/**
 * Read load for `npm run bench`: `concurrency` closed loops calling `read` (a Driver.read of one shard,
 * the same path an HTTP GET takes after parsing) for `durationMs`; read throughput and latency.
 */
export async function benchReads(read: () => Promise<unknown>, spec: BenchReadSpec): Promise<BenchReadResult> {
  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  const end = t0 + spec.durationMs;
  const latencies: number[] = [];
  let reads = 0;
  let errors = 0;
  let firstError: string | null = null;
  const loop = async (): Promise<void> => {
    while (nowMs() < end) {
      const s = nowMs();
      try {
        await read();
        reads++;
        if (latencies.length < LATENCY_SAMPLES_MAX) latencies.push(nowMs() - s);
      } catch (e) {
        errors++;
        firstError ??= e instanceof Error ? e.message : String(e);
        await new Promise((r) => setTimeout(r, 5)); // a refused read (view change) is not retried in a hot loop
      }
    }
  };
  await Promise.all(Array.from({ length: spec.concurrency }, loop));
  const seconds = (nowMs() - t0) / 1000;
  const sorted = Float64Array.from(latencies).sort();
  const pct = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  const cpu = process.cpuUsage(cpu0);
  return {
    reads, errors, firstError, seconds, readsPerSec: reads / seconds,
    latencyMs: sorted.length === 0 ? null : { p50: pct(0.5), p99: pct(0.99) },
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
  };
}
