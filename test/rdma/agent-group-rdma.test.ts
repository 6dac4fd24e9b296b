// Three agent processes whose data path is RDMA (spec.transport: rdma) on this node's RDMA device: kv
// writes and reads through every member, one 16 MiB value, a kill -9 of a member and its rejoin (a new RDMA
// path to each peer). Runs where an RDMA device is present - in CI inside the Soft-RoCE guest of
// scripts/rdma-vm.sh (`npm run test:rdma-vm`); elsewhere it is skipped with the reason.
//
// DERECHO_RDMA_GROUP_TRANSPORT=tcp runs the same scenario over TCP on 127.0.0.1 (a check of the test itself).

import { createHash, randomBytes } from 'node:crypto';
import test from 'ava';
import { loadNativeVerbs, rdmaDeviceAddresses } from '../../node-agent/src/transport/rdma/native-verbs.ts';
import { Cluster, httpRequest, keyInShard, keysInShard, summary } from '../multiprocess/harness.ts';
import type { AgentStatus, KvGetReply } from '../multiprocess/harness.ts';

const MiB = 1 << 20;
// Under qemu's software emulation (no KVM) everything is 10-30x slower: an agent takes tens of seconds to
// start, and a tight failure detector would remove members that are only slow. Generous timing and waits;
// a kill is still detected within suspectMs.
const TIMING = { tickMs: 50, heartbeatMs: 500, suspectMs: 30_000 };
const SLOW_MS = 300_000;
const overTcp = process.env['DERECHO_RDMA_GROUP_TRANSPORT'] === 'tcp';
const native = loadNativeVerbs();
const devices = native.ok ? native.verbs.devices() : [];
const device = process.env['DERECHO_RDMA_DEVICE'] ?? devices[0]?.name;
const host = overTcp ? '127.0.0.1' : (process.env['DERECHO_RDMA_ADDRESS'] ?? (device ? rdmaDeviceAddresses(device)[0] : undefined));
const skipReason = overTcp
  ? null
  : !native.ok
    ? native.reason
    : devices.length === 0
      ? 'no RDMA device on this node (ibv_get_device_list lists none); npm run test:rdma-vm runs it on Soft-RoCE'
      : host === undefined
        ? `RDMA device ${device} serves no network interface with an IP address (set DERECHO_RDMA_ADDRESS)`
        : null;

const title = `3 agents over ${overTcp ? 'TCP (DERECHO_RDMA_GROUP_TRANSPORT=tcp)' : `RDMA (${device ?? 'no device'})`}: kv writes and reads, a 16 MiB value, kill -9 and rejoin`;
const register = skipReason === null ? test.serial : test.serial.skip;

register(skipReason === null ? title : `${title} (skipped: ${skipReason})`, async (t) => {
  t.timeout(30 * 60_000); // software RDMA under qemu's emulation is slow
  const transport = overTcp ? 'tcp' : 'rdma';
  const cluster = await Cluster.create(t, {
    start: [1, 2, 3], host: host!, transport, timing: TIMING,
    wireLimits: { payloadBytesMax: 17 * MiB, frameBytesMax: 17 * MiB + 64 * 1024 },
  });
  const rdmaPathsTo = (s: AgentStatus, peers: number[]): boolean => {
    const tr = s.transport as AgentStatus['transport'] & { kind?: string; rdmaPeers?: number[] };
    if (overTcp) return peers.every((p) => tr.connectedPeers.includes(p));
    return tr.kind === 'rdma' && peers.every((p) => (tr.rdmaPeers ?? []).includes(p));
  };
  const formed = await cluster.waitForView([1, 2, 3], [1, 2, 3], SLOW_MS);
  t.log(`formed: ${summary(formed[0]!)}`);
  await cluster.waitForStatus([1, 2, 3], 'an RDMA path to each peer', (s) => rdmaPathsTo(s, [1, 2, 3].filter((p) => p !== s.nodeId)), SLOW_MS);

  // ---- kv writes through every member, reads from every member.
  const written = new Map<string, string>();
  for (let i = 0; i < 12; i++) {
    const key = keyInShard(`k${i}-`, i % 2);
    const value = `value ${i} over ${transport}`;
    await cluster.putOk(1 + (i % 3), key, value, SLOW_MS);
    written.set(key, value);
  }
  for (const id of [1, 2, 3]) {
    for (const [key, value] of written) {
      const r = await cluster.get(id, key);
      t.is(r.status, 200, `GET ${key} from node ${id}: ${r.text.slice(0, 200)}`);
      t.is(r.body.value, value);
    }
  }

  // ---- One 16 MiB value, written through node 1 into shard 1 (node 3's), read back through node 2.
  const big = randomBytes(12 * MiB).toString('base64'); // 16 MiB of text
  const bigKey = keyInShard('big', 1);
  const put = await httpRequest(cluster.url(1, `/v1/kv/kv/${encodeURIComponent(bigKey)}`), 'PUT', big, SLOW_MS);
  t.is(put.status, 200, `PUT of 16 MiB: ${put.text.slice(0, 300)}`);
  const got = await httpRequest<KvGetReply>(cluster.url(2, `/v1/kv/kv/${encodeURIComponent(bigKey)}`), 'GET', undefined, SLOW_MS);
  t.is(got.status, 200, got.text.slice(0, 300));
  const digest = (x: string): string => createHash('sha256').update(x).digest('hex');
  t.is(got.body.value.length, big.length);
  t.is(digest(got.body.value), digest(big), 'the 16 MiB value read back through another member is the one written');

  // ---- kill -9 of node 2 (kv shard 0 with node 1, the log with everyone); writes go on; it rejoins.
  await cluster.kill(2);
  await cluster.waitForView([1, 3], [1, 3], SLOW_MS);
  const whileDown = keysInShard('down', 0, 4);
  for (const [i, key] of whileDown.entries()) {
    await cluster.putOk(i % 2 === 0 ? 1 : 3, key, `written while node 2 was down (${i})`, SLOW_MS);
  }
  cluster.start(2);
  const back = await cluster.waitForView([1, 2, 3], [1, 2, 3], SLOW_MS);
  t.log(`rejoined: ${summary(back.find((s) => s.nodeId === 2)!)}`);
  await cluster.waitForStatus([1, 2, 3], 'new RDMA paths to the restarted node', (s) => rdmaPathsTo(s, [1, 2, 3].filter((p) => p !== s.nodeId)), SLOW_MS);
  for (const [i, key] of whileDown.entries()) {
    const r = await cluster.get(2, key);
    t.is(r.status, 200, `GET ${key} from the rejoined node 2: ${r.text.slice(0, 200)}`);
    t.is(r.body.value, `written while node 2 was down (${i})`);
  }
  await cluster.putOk(2, keyInShard('after', 0), 'written through the rejoined node', SLOW_MS);
  t.deepEqual(cluster.unexpectedExits(), []);
});
