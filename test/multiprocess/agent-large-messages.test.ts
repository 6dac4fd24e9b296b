// Large messages through real agent processes (the benchmark's group): every member streams 1 MiB
// messages as fast as its send window allows. The data path must carry each message to each peer once:
// no frame refused by a full peer queue and no window resent while the receivers keep up (ADR 0009).

import os from 'node:os';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { BenchGroup } from '../../bench/derecho-group.ts';

test('1 MiB messages from every member: delivered everywhere, no queue drops, each message sent to each peer once', async (t) => {
  t.timeout(120_000);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'derecho-large-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  const payloadBytes = 1 << 20;
  const group = await BenchGroup.start(work, { members: 3, mode: 'ordered', persistence: null, payloadBytesMax: payloadBytes, sendWindow: 64 });
  try {
    const perSender = 120;
    const r = await group.run({ payloadBytes, senders: [1, 2, 3], countPerSender: perSender, ratePerSec: 0, durationMs: 0, timeoutMs: 90_000 });
    t.is(r.delivered, 3 * perSender, 'every member delivered every message');
    t.log(`${(r.bytesPerSec / 1e6).toFixed(0)} MB/s, ${r.cpuSecondsPerGB.toFixed(1)} CPU s/GB (not asserted)`);
    const statuses = await group.statuses();
    const expectedBytes = perSender * 2 * payloadBytes; // each member's own messages, once to each of 2 peers
    for (const s of statuses) {
      const tr = s['transport'] as { dropsQueueFull: number; bytesSent: number };
      t.is(tr.dropsQueueFull, 0, `node ${String(s['nodeId'])}: no frame refused by a full peer queue`);
      t.true(tr.bytesSent >= expectedBytes && tr.bytesSent < expectedBytes * 1.05,
        `node ${String(s['nodeId'])} sent ${tr.bytesSent} bytes for ${expectedBytes} bytes of its messages (a resent window would add ~${64 * 2 * payloadBytes})`);
    }
  } finally {
    await group.stop();
  }
});
