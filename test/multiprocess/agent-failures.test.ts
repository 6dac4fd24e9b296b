// Failures of real agent processes (SIGKILL, i.e. kill -9): one member crashes and rejoins with a state
// transfer; every member crashes and the group restarts from the members' logs; too few members come
// back and the group waits, saying for whom; SIGTERM with a client request under way; a request forwarded
// to a member that is removed.

import net from 'node:net';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { shardForKey } from '../../node-agent/src/objects/kv.ts';
import { Cluster, FAST_DETECTION_TIMING, keyInShard, keysInShard, sleep, summary, waitUntil } from './harness.ts';
import type { AgentStatus, PutReply } from './harness.ts';

test.serial('kill -9 of one member: the others continue in a new view, and it rejoins with the writes it missed', async (t) => {
  t.timeout(60_000);
  const cluster = await Cluster.create(t, { start: [1, 2, 3], timing: FAST_DETECTION_TIMING });
  const formed = await cluster.waitForView([1, 2, 3]);
  const firstView = formed[0]!.viewId;

  const before = keyInShard('before', 0);
  const putBefore = await cluster.putOk(2, before, 'written before the crash');
  t.deepEqual(putBefore.replies.map((r) => r.node).sort(), [1, 2]);
  t.is((await cluster.append(2, 'event before the crash')).status, 200);

  // ---- kill -9 node 2 (a member of kv/0 and events/0).
  const pid2 = formed.find((s) => s.nodeId === 2)!.pid;
  await cluster.kill(2);
  const killedAt = Date.now();
  const survivors = await cluster.waitForView([1, 3], [1, 3], 15_000);
  const detectMs = Date.now() - killedAt;
  t.log(`view without node 2 installed ${detectMs} ms after the kill: ${summary(survivors[0]!)}`);
  t.true(detectMs < 6_000, `new view after ${detectMs} ms (suspectMs ${FAST_DETECTION_TIMING.suspectMs})`);
  const downView = survivors[0]!.viewId;
  t.true(downView > firstView);
  t.deepEqual(survivors[0]!.layout.map((l) => [l.subgroup, l.shardIndex, [...l.members].sort()]), [['kv', 0, [1]], ['kv', 1, [3]], ['events', 0, [1, 3]]]);

  // ---- Writes continue without it: kv shard 0 through node 1, the log through node 3.
  const whileDown = keysInShard('while-down', 0, 5);
  const putsWhileDown = new Map<string, PutReply>();
  for (const [i, key] of whileDown.entries()) {
    const r = await cluster.put(1, key, `value ${i} written while node 2 was down`);
    t.is(r.status, 200, `PUT ${key} through node 1: ${r.text}`);
    t.true(r.body.persisted);
    t.deepEqual(r.body.replies.map((x) => x.node), [1], 'shard 0 is node 1 alone now');
    putsWhileDown.set(key, r.body);
  }
  // A key of shard 0 written through node 3 (a non-member) is still routed to node 1.
  const routed = keyInShard('while-down-routed', 0);
  const routedPut = await cluster.put(3, routed, 'routed while node 2 was down');
  t.is(routedPut.status, 200, routedPut.text);
  putsWhileDown.set(routed, routedPut.body);
  for (let i = 0; i < 5; i++) t.is((await cluster.append(3, `event ${i} while node 2 was down`)).status, 200);

  // ---- Node 2 comes back (same data directory): it restarts from its log, rejoins the running group
  // and receives what it missed by state transfer.
  cluster.start(2);
  const rejoined = await cluster.waitForView([1, 2, 3], [1, 2, 3], 30_000);
  const s2 = rejoined.find((s) => s.nodeId === 2)!;
  t.log(`rejoined: ${summary(s2)} counters ${JSON.stringify(s2.counters)}`);
  t.not(s2.pid, pid2, 'a new process');
  t.is(s2.start, 'restart', 'it found its saved state');
  t.true(s2.viewId > downView, 'in a later view');
  t.true(s2.counters.transfersInstalled > 0, `transfersInstalled ${s2.counters.transfersInstalled}`);
  t.true(s2.shards.every((x) => x.stateReady));
  // It serves kv/0 itself and answers with the writes it missed.
  t.deepEqual(s2.shards.map((x) => `${x.subgroup}/${x.shardIndex}`).sort(), ['events/0', 'kv/0']);
  for (const [key, put] of [[before, putBefore] as const, ...putsWhileDown]) {
    const g = await cluster.get(2, key);
    t.is(g.status, 200, `GET ${key} on node 2: ${g.text}`);
    t.deepEqual(g.body.version, put.version, `version of ${key} on node 2`);
  }
  t.is((await cluster.get(2, whileDown[0]!)).body.value, 'value 0 written while node 2 was down');
  t.is((await cluster.get(2, routed)).body.value, 'routed while node 2 was down');
  // Its copy of the log is the others'.
  const [log1, log2, log3] = await Promise.all([cluster.readLog(1), cluster.readLog(2), cluster.readLog(3)]);
  t.deepEqual(log1.map((e) => e.entry), ['event before the crash', ...Array.from({ length: 5 }, (_, i) => `event ${i} while node 2 was down`)]);
  t.deepEqual(log2, log1);
  t.deepEqual(log3, log1);
  // And it takes part in new writes again.
  const after = await cluster.putOk(2, keyInShard('after-rejoin', 0), 'after the rejoin');
  t.deepEqual(after.replies.map((r) => r.node).sort(), [1, 2]);
  t.deepEqual(cluster.unexpectedExits(), [], 'no agent exited on its own');
});

test.serial('kill -9 of the only member of kv shard 1, restarted at once: it rejoins with its own log as the shard\'s source, both shards take writes again within seconds, no other member restarts', async (t) => {
  t.timeout(90_000);
  const cluster = await Cluster.create(t, { start: [1, 2, 3], timing: FAST_DETECTION_TIMING });
  const formed = await cluster.waitForView([1, 2, 3]);
  const pids = new Map(formed.map((s) => [s.nodeId, s.pid]));
  const keys = [keyInShard('only-holder', 0), keyInShard('only-holder', 1)];
  for (let i = 0; i < 5; i++) for (const key of keys) await cluster.putOk(1, `${key}-${i}`, `before ${i}`);
  // Let node 3's row (with its disk id) reach the others, as it always has in a running group.
  await sleep(300);
  await cluster.kill(3);
  const killedAt = Date.now();
  cluster.start(3); // what a supervisor does
  // Writes to both shards, through node 1, until each succeeds again.
  const firstOk = await Promise.all(keys.map(async (key) => {
    for (let i = 0; ; i++) {
      const r = await cluster.put(1, `${key}-after-${i}`, 'after the kill', 'kv').catch(() => null);
      if (r?.status === 200) return Date.now() - killedAt;
      if (Date.now() - killedAt > 30_000) throw new Error(`no write to ${key} acknowledged within 30 s: ${r?.text ?? 'no answer'}`);
      await sleep(50);
    }
  }));
  t.log(`writes to kv shard 0 and 1 acknowledged again ${firstOk[0]} ms and ${firstOk[1]} ms after the kill -9 of node 3 (suspectMs ${FAST_DETECTION_TIMING.suspectMs})`);
  const back = await cluster.waitForView([1, 2, 3], [1, 2, 3], 15_000);
  t.deepEqual(back.map((s) => s.layout.map((l) => [l.subgroup, l.shardIndex, [...l.members].sort()]))[0], [['kv', 0, [1, 2]], ['kv', 1, [3]], ['events', 0, [1, 2, 3]]]);
  for (const s of back) if (s.nodeId !== 3) t.is(s.pid, pids.get(s.nodeId)!, `node ${s.nodeId} kept running (no total restart)`);
  t.deepEqual(cluster.unexpectedExits(), [], 'no member exited on its own');
  for (const key of keys) {
    for (let i = 0; i < 5; i++) {
      const r = await cluster.get(1, `${key}-${i}`);
      t.is(r.status, 200, r.text);
      t.is(r.body.value, `before ${i}`, 'every write made before the kill is there');
    }
  }
  // The target on the example layout is 3 s on a quiet machine (the closing note gives the figure
  // measured by npm run jepsen); a loaded CI machine (a restarted agent compiles its TypeScript again) gets
  // room, still below the 20 s wedged exit that the old total restart needed before it even began. That
  // no other member restarted (the pids above) is what shows the shard came back without a total restart.
  t.true(Math.max(...firstOk) < 20_000, `write gap ${Math.max(...firstOk)} ms`);
});

test.serial('total failure: every member killed; with all back the group recovers every acknowledged write; with too few back it waits and says for whom', async (t) => {
  t.timeout(90_000);
  const cluster = await Cluster.create(t, { start: [1, 2, 3], timing: FAST_DETECTION_TIMING });
  await cluster.waitForView([1, 2, 3]);

  // Acknowledged writes: key -> value and version of the acknowledgement (HTTP 200, persisted: true).
  const acked = new Map<string, { value: string; version: { viewId: number; seq: number } }>();
  const ackedEvents: string[] = [];
  const record = (key: string, value: string, r: { status: number; body: PutReply }): void => {
    if (r.status === 200 && r.body.persisted === true) acked.set(key, { value, version: r.body.version });
  };
  // Sequential writes through every node, to both shards.
  for (let i = 0; i < 12; i++) {
    const key = `seq-${i}`;
    const value = `sequential ${i}`;
    const r = await cluster.put(1 + (i % 3), key, value);
    t.is(r.status, 200, r.text);
    record(key, value, r);
  }
  for (let i = 0; i < 6; i++) {
    const entry = `event ${i}`;
    const r = await cluster.append(1 + (i % 3), entry);
    t.is(r.status, 200, r.text);
    ackedEvents.push(entry);
  }
  t.deepEqual([...new Set([...acked.keys()].map((k) => shardForKey(k, 2)))].sort(), [0, 1], 'writes to both shards');

  // Writers running while the whole group is killed: what was acknowledged before the kill must survive.
  let stop = false;
  let attempted = 0;
  const writer = async (through: number, prefix: string): Promise<void> => {
    for (let i = 0; !stop; i++) {
      const key = `${prefix}-${i}`;
      const value = `in flight ${i} through ${through}`;
      attempted++;
      try {
        record(key, value, await cluster.put(through, key, value));
      } catch {
        // the agent died under the request: not acknowledged
      }
    }
  };
  const writers = [writer(1, 'inflight-a'), writer(3, 'inflight-b'), writer(2, 'inflight-c')];
  await sleep(400);
  const ackedBeforeKill = acked.size;
  await cluster.killAll();
  stop = true;
  await Promise.all(writers);
  t.log(`killed all during writes: ${acked.size} acknowledged writes (${ackedBeforeKill} when the kill started), ${attempted} in-flight attempts`);
  t.true(acked.size > 12, 'the writers got some writes acknowledged');

  // ---- Every member back at once: the restart quorum forms and the group recovers.
  cluster.start(1, 2, 3);
  const recovered = await cluster.waitForView([1, 2, 3], [1, 2, 3], 30_000);
  t.log(`recovered: ${recovered.map(summary).join('\n')}`);
  t.true(recovered.every((s) => s.start === 'restart'));
  await checkAll(t, cluster, acked, ackedEvents);

  // ---- Too few back: write a little more, kill everyone again, bring back node 1 only.
  for (let i = 0; i < 4; i++) {
    const key = `second-round-${i}`;
    const r = await cluster.put(1 + (i % 3), key, `second round ${i}`);
    t.is(r.status, 200, r.text);
    record(key, `second round ${i}`, r);
  }
  const lastView = (await cluster.status(1))!.viewId;
  await cluster.killAll();
  cluster.start(1);
  const [alone] = await cluster.waitForStatus([1], 'node 1 restarting and saying what it waits for', (s) => s.mode === 'restarting' && (s.restart?.waitingFor ?? '') !== '');
  t.log(`node 1 alone: ${alone!.restart!.waitingFor}`);
  // Three times graceSeconds (0.5): it must not restart the group alone.
  await sleep(1_500);
  const stillAlone = (await cluster.status(1))!;
  t.is(stillAlone.mode, 'restarting', summary(stillAlone));
  t.false(stillAlone.ready);
  const waitingFor = stillAlone.restart!.waitingFor;
  t.regex(waitingFor, new RegExp(`view ${lastView}`), `names the view it restarts: ${waitingFor}`);
  t.regex(waitingFor, /waiting for nodes? [^;)]*\b2\b/, `names node 2: ${waitingFor}`);
  t.regex(waitingFor, /waiting for nodes? [^;)]*\b3\b/, `names node 3: ${waitingFor}`);
  t.regex(waitingFor, /kv\/1[^;]*\b3\b/, `names the shard nobody returned for, and its holder: ${waitingFor}`);
  const readyz = await cluster.request<{ ready: boolean; error: string }>(1, 'GET', '/readyz');
  t.is(readyz.status, 503);
  t.false(readyz.body.ready);
  t.regex(readyz.body.error, /restarting/);
  const healthz = await cluster.request(1, 'GET', '/healthz');
  t.is(healthz.status, 200, 'alive while waiting');
  const getWhileWaiting = await cluster.get(1, 'seq-0');
  t.is(getWhileWaiting.status, 503, getWhileWaiting.text);
  const putWhileWaiting = await cluster.put(1, 'refused', 'x');
  t.is(putWhileWaiting.status, 503, putWhileWaiting.text);
  const metrics = await cluster.request(1, 'GET', '/metrics');
  t.regex(metrics.text, /^derecho_restarting\{[^}]*\} 1$/m);

  // Node 2 back too: a majority of the last view, but kv/1's only holder (node 3) is still missing.
  cluster.start(2);
  const pair = await cluster.waitForStatus([1, 2], 'nodes 1 and 2 restarting, node 2 reporting', (s) => s.mode === 'restarting' && !/waiting for nodes? [^;]*\b2\b/.test(s.restart?.waitingFor ?? ''));
  t.log(`nodes 1 and 2: ${pair.map((s) => s.restart?.waitingFor).join(' | ')}`);
  await sleep(1_000);
  const pairLater = (await cluster.statuses([1, 2])) as AgentStatus[];
  for (const s of pairLater) {
    t.is(s.mode, 'restarting', summary(s));
    t.regex(s.restart!.waitingFor, /kv\/1[^;]*\b3\b/, `node ${s.nodeId} waits for a holder of kv/1: ${s.restart!.waitingFor}`);
    t.false(s.ready);
  }

  // The last one back: the group restarts with everything acknowledged.
  cluster.start(3);
  await cluster.waitForView([1, 2, 3], [1, 2, 3], 30_000);
  await checkAll(t, cluster, acked, ackedEvents);
  // Not counting our SIGKILLs, no agent exited.
  t.deepEqual(cluster.unexpectedExits(), []);
});

/** Every acknowledged write is readable through every node with its value and version; logs agree. */
async function checkAll(
  t: ExecutionContext,
  cluster: Cluster,
  acked: Map<string, { value: string; version: { viewId: number; seq: number } }>,
  ackedEvents: string[],
): Promise<void> {
  let bad = 0;
  await Promise.all(cluster.ids.map(async (id) => {
    for (const [key, want] of acked) {
      const g = await cluster.get(id, key);
      if (g.status !== 200 || g.body.value !== want.value || g.body.version.viewId !== want.version.viewId || g.body.version.seq !== want.version.seq) {
        bad++;
        t.fail(`node ${id}: ${key} should be ${JSON.stringify(want)}, got HTTP ${g.status} ${g.text}`);
      }
    }
  }));
  t.is(bad, 0, `${acked.size} acknowledged writes readable through every node`);
  const logs = await Promise.all(cluster.ids.map((id) => cluster.readLog(id)));
  for (const log of logs) t.deepEqual(log, logs[0]);
  t.deepEqual(logs[0]!.map((e) => e.entry), ackedEvents);
}

test.serial('SIGTERM stops an agent at once even with a client request under way (it used to wait for the client)', async (t) => {
  t.timeout(60_000);
  const cluster = await Cluster.create(t, { start: [1, 2, 3], timing: FAST_DETECTION_TIMING });
  await cluster.waitForView([1, 2, 3]);
  // A PUT whose body never finishes arriving: the request stays under way on node 1.
  const socket = net.connect(cluster.node(1).httpPort, '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  t.teardown(() => socket.destroy());
  socket.on('error', () => {});
  socket.write(`PUT /v1/kv/kv/${keyInShard('half', 0)} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nonly part of it`);
  await sleep(200);
  const child = cluster.node(1).child!;
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('exit', (code, signal) => resolve([code, signal])));
  const t0 = Date.now();
  child.kill('SIGTERM');
  const [code, signal] = await Promise.race([exited, sleep(10_000).then((): [null, null] => [null, null])]);
  const tookMs = Date.now() - t0;
  t.log(`node 1 exited ${tookMs} ms after SIGTERM (code ${code}, signal ${signal})`);
  t.is(code, 0, `exit code 0 within 10 s of SIGTERM (took ${tookMs} ms)`);
  t.true(tookMs < 5_000, `exited ${tookMs} ms after SIGTERM`);
});

test.serial('a request forwarded to a member that is removed fails at the view change, not at its 30 s timeout', async (t) => {
  t.timeout(60_000);
  const cluster = await Cluster.create(t, { start: [1, 2, 3], timing: FAST_DETECTION_TIMING });
  await cluster.waitForView([1, 2, 3]);
  // Node 3 serves kv/1 only: its writes to kv/0 are forwarded to node 1 or node 2, alternately. Node 2
  // freezes (SIGSTOP: it takes frames but never answers) and is removed after suspectMs.
  const pid2 = cluster.node(2).child!.pid!;
  process.kill(pid2, 'SIGSTOP');
  t.teardown(() => {
    try {
      process.kill(pid2, 'SIGCONT');
    } catch {
      // gone
    }
  });
  const t0 = Date.now();
  const keys = keysInShard('forwarded', 0, 2);
  const results: { key: string; status: number; text: string; ms: number }[] = [];
  const puts = keys.map(async (key) => {
    const r = await cluster.put(3, key, 'through node 3').catch((e: unknown) => ({ status: 0, text: String(e) }));
    results.push({ key, status: r.status, text: r.text, ms: Date.now() - t0 });
  });
  await cluster.waitForView([1, 3], [1, 3], 15_000);
  // One went to node 2: it fails (503, retry) once the view without node 2 is installed.
  const failed = await waitUntil('the request forwarded to node 2 to fail', () => results.find((r) => r.status === 503), 15_000);
  t.log(`${failed.key}: ${failed.status} after ${failed.ms} ms: ${failed.text.slice(0, 160)}`);
  t.regex(failed.text, /node 2, which the request was forwarded to, left the group \(view [0-9]+\); retry/);
  // The other went to node 1 and was delivered in the old view's trim; it completes once kv/0's
  // persistence frontier moves, which (a limit of the core, for now) takes the shard's next write.
  t.is((await cluster.put(1, keyInShard('next', 0), 'the next write')).status, 200);
  await Promise.all(puts);
  t.deepEqual(results.map((r) => r.status).sort(), [200, 503], results.map((r) => `${r.key}: ${r.status} ${r.text.slice(0, 120)}`).join('\n'));
});
