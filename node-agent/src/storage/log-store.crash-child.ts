// Child process of the durability test in log-store.test.ts: applies batches with policy 'fsync' forever and
// prints "ack <batch>" on stdout after each apply returned, until the parent kills it with SIGKILL.
// Run: LOG_STORE_CRASH_CHILD=1 node --import tsx node-agent/src/storage/log-store.crash-child.ts <dir> <recordsPerBatch>

import { writeSync } from 'node:fs';
import { LogStore } from './log-store.ts';
import type { LogRecord, PersistRecord, View } from '../core/types.ts';

export const CRASH_PAYLOAD_BYTES = 1024;

/** The n-th log record the child writes (shard 0). */
export function crashRecord(n: number): LogRecord {
  const payload = new Uint8Array(CRASH_PAYLOAD_BYTES);
  for (let i = 0; i < payload.length; i++) payload[i] = (n * 31 + i * 7) & 0xff;
  return { shardId: 0, version: { viewId: Math.floor(n / 100), seq: n % 100 }, sender: n % 3, payload };
}

export function crashView(batch: number): View {
  return {
    viewId: batch,
    members: [1, 2, 3],
    layout: { shards: [{ shardId: 0, subgroup: 'log', shardIndex: 0, members: [1, 2, 3], senders: [1, 2, 3], deliveryMode: 'ordered', persistent: true }] },
  };
}

if (process.env.LOG_STORE_CRASH_CHILD === '1') {
  const dir = process.argv[2];
  const perBatch = Number(process.argv[3] ?? '4');
  if (!dir || !(perBatch >= 1)) throw new Error('usage: log-store.crash-child.ts <dir> <recordsPerBatch>');
  const store = LogStore.open(dir, { fsync: 'fsync' });
  for (let batch = 0; batch < 1_000_000; batch++) {
    const records: PersistRecord[] = [];
    if (batch % 10 === 0) records.push({ kind: 'view', view: crashView(batch) });
    for (let j = 0; j < perBatch; j++) records.push({ kind: 'log', record: crashRecord(batch * perBatch + j) });
    store.apply(records);
    writeSync(1, `ack ${batch}\n`);
  }
}
