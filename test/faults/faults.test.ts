// The fault-injection test (issue #12), short: the TCP proxies that make partitions, the seeded
// schedule, what a failed write means; one run of real agents under combined faults whose history must
// be linearizable with every acknowledged write on every member; and a run with a deliberately broken
// rule that the same pipeline must reject. The full matrix is `npm run jepsen` (see README.md here).

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { faultBudget, impaired, planFaults } from './nemesis.ts';
import type { FaultKind, NemesisName, PlannedFault } from './nemesis.ts';
import { Rng } from './prng.ts';
import { LinkProxy, ProxyMesh } from './proxy.ts';
import { reportText, runLine, writeRunReport } from './report.ts';
import { runOnce } from './run.ts';
import type { RunOptions, RunReport } from './run.ts';
import { classifyWriteFailure } from './workload.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// The proxies

/** An echo server on loopback; `sockets` are its open connections. */
async function echoServer(t: ExecutionContext): Promise<{ port: number; sockets: Set<net.Socket>; accepted: () => number }> {
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const server = net.createServer((s) => {
    accepted++;
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    s.on('data', (d) => s.write(d));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { port: (server.address() as net.AddressInfo).port, sockets, accepted: () => accepted };
}

/** A client connection that collects what it receives and whether it was closed (and how). */
async function connect(t: ExecutionContext, port: number): Promise<{ socket: net.Socket; received: () => string; closed: () => string | null }> {
  const socket = net.connect(port, '127.0.0.1');
  let data = '';
  let closed: string | null = null;
  socket.on('data', (d: Buffer) => (data += d.toString()));
  socket.on('error', (e: NodeJS.ErrnoException) => (closed ??= e.code ?? e.message));
  socket.on('close', () => (closed ??= 'closed'));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  t.teardown(() => socket.destroy());
  return { socket, received: () => data, closed: () => closed };
}

async function eventually(what: string, f: () => boolean, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!f()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

test('proxy, blackhole: forwards, then drops every byte both ways on old and new connections, and on heal drops the blackholed connections and forwards new ones', async (t) => {
  const echo = await echoServer(t);
  const proxy = await LinkProxy.start({ host: '127.0.0.1', port: echo.port });
  t.teardown(() => proxy.close());

  const a = await connect(t, proxy.port);
  a.socket.write('hello');
  await eventually('the echo', () => a.received() === 'hello');

  proxy.cut('blackhole');
  t.is(proxy.mode, 'blackhole');
  a.socket.write('lost');
  // A new connection is accepted (the dialer sees it connect) but never reaches the server.
  const before = echo.accepted();
  const b = await connect(t, proxy.port);
  b.socket.write('also lost');
  await sleep(300);
  t.is(a.received(), 'hello', 'nothing comes back through a blackholed connection');
  t.is(b.received(), '');
  t.is(a.closed(), null, 'a blackholed connection stays open (packets dropped, nobody told)');
  t.is(b.closed(), null);
  t.is(echo.accepted(), before, 'the new connection was not forwarded');
  t.true(proxy.stats.discardedBytes >= 'lost'.length + 'also lost'.length);

  proxy.heal();
  await eventually('the blackholed connections to be closed', () => a.closed() !== null && b.closed() !== null);
  await eventually('the server side of the old connection to be closed', () => echo.sockets.size === 0);
  const c = await connect(t, proxy.port);
  c.socket.write('back');
  await eventually('the echo after the heal', () => c.received() === 'back');
});

test('proxy, reset: resets the connections, resets new ones at once, and forwards again after the heal', async (t) => {
  const echo = await echoServer(t);
  const proxy = await LinkProxy.start({ host: '127.0.0.1', port: echo.port });
  t.teardown(() => proxy.close());

  const a = await connect(t, proxy.port);
  a.socket.write('one');
  await eventually('the echo', () => a.received() === 'one');
  proxy.cut('reset');
  await eventually('the connection to be reset', () => a.closed() !== null);
  t.log(`old connection: ${a.closed()}`);
  await eventually('the server side to be closed', () => echo.sockets.size === 0);

  // New connections are accepted and reset.
  const b = net.connect(proxy.port, '127.0.0.1');
  const outcome = await new Promise<string>((resolve) => {
    b.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    b.once('close', () => resolve('closed'));
  });
  t.log(`new connection during the cut: ${outcome}`);
  t.is(echo.sockets.size, 0);

  proxy.heal();
  const c = await connect(t, proxy.port);
  c.socket.write('two');
  await eventually('the echo after the heal', () => c.received() === 'two');
});

test('proxy mesh: each node\'s peers point at its proxies; a link cut cuts both directions and heals when its last cut heals', async (t) => {
  const e1 = await echoServer(t);
  const e2 = await echoServer(t);
  const e3 = await echoServer(t);
  const mesh = await ProxyMesh.create(new Map([[1, e1.port], [2, e2.port], [3, e3.port]]));
  t.teardown(() => mesh.close());
  const peers1 = mesh.peersOf(1);
  t.is(peers1['1'], `127.0.0.1:${e1.port}`, 'its own address is the real one');
  t.is(peers1['2'], `127.0.0.1:${mesh.proxy(1, 2).port}`);
  t.is(peers1['3'], `127.0.0.1:${mesh.proxy(1, 3).port}`);
  t.is(mesh.proxy(1, 2).target.port, e2.port);
  t.is(mesh.proxy(2, 1).target.port, e1.port);

  mesh.cut(1, 2, 'blackhole');
  mesh.cut(2, 1, 'blackhole'); // a second fault cutting the same link
  t.is(mesh.proxy(1, 2).mode, 'blackhole');
  t.is(mesh.proxy(2, 1).mode, 'blackhole');
  t.is(mesh.proxy(1, 3).mode, 'open');
  t.deepEqual(mesh.cutLinks(), ['1-2 (blackhole)']);
  mesh.heal(1, 2);
  t.is(mesh.proxy(1, 2).mode, 'blackhole', 'still cut by the other fault');
  mesh.heal(1, 2);
  t.is(mesh.proxy(1, 2).mode, 'open');
  t.is(mesh.proxy(2, 1).mode, 'open');
  const c = await connect(t, mesh.proxy(2, 1).port);
  c.socket.write('via 2→1');
  await eventually('the echo through 2→1', () => c.received() === 'via 2→1');
});

// ---------------------------------------------------------------------------------------------
// Randomness and the schedule

test('PRNG: a seed gives the same draws; a fork depends on the seed and its label only', (t) => {
  const draws = (r: Rng): number[] => Array.from({ length: 20 }, () => r.int(0, 1_000_000));
  t.deepEqual(draws(new Rng(42)), draws(new Rng(42)));
  t.notDeepEqual(draws(new Rng(42)), draws(new Rng(43)));
  const a = new Rng(7);
  const b = new Rng(7);
  draws(b); // b drew, a did not
  t.deepEqual(draws(a.fork('nemesis')), draws(b.fork('nemesis')));
  t.notDeepEqual(draws(a.fork('nemesis')), draws(a.fork('clients')));
  for (let i = 0; i < 1000; i++) {
    const x = a.next();
    t.true(x >= 0 && x < 1);
  }
  t.throws(() => new Rng(-1));
});

test('nemesis schedule: the same seed gives the same schedule; faults of the right kinds, durations in range, never more than the budget impaired at once', (t) => {
  const ranges: Record<FaultKind, [number, number]> = { kill: [500, 3000], killall: [500, 2000], pause: [1500, 4000], partition: [2000, 6000] };
  const kindsSeen = new Set<FaultKind>();
  const plan = (nemesis: NemesisName, members: number, seed: number): PlannedFault[] =>
    planFaults({ nemesis, members: Array.from({ length: members }, (_, i) => i + 1), durationMs: 30_000, rng: new Rng(seed).fork('nemesis'), partitionMode: 'mixed' });
  for (const members of [3, 5]) {
    const budget = faultBudget(members);
    for (const nemesis of ['kill', 'killall', 'pause', 'partition', 'combined'] as const) {
      for (let seed = 1; seed <= 60; seed++) {
        const p = plan(nemesis, members, seed);
        t.deepEqual(plan(nemesis, members, seed), p);
        t.true(p.length > 0, `${nemesis} seed ${seed}: some faults`);
        for (const f of p) {
          if (nemesis !== 'combined') t.is(f.kind, nemesis);
          kindsSeen.add(f.kind);
          const [lo, hi] = ranges[f.kind];
          t.true(f.durationMs >= lo && f.durationMs <= hi, `${f.kind} lasts ${f.durationMs} ms`);
          t.true(f.atMs >= 1000 && f.atMs < 30_000);
          if (f.kind === 'partition') {
            const [minority, majority] = f.partition!.sides;
            t.true(minority.length >= 1 && minority.length <= budget && majority.length > members / 2, `partition ${minority} | ${majority}`);
            t.deepEqual([...minority, ...majority].sort(), Array.from({ length: members }, (_, i) => i + 1));
          }
        }
        // At every start, the faults under way impair at most the budget; killall overlaps nothing.
        for (const f of p) {
          const during = p.filter((g) => g.atMs <= f.atMs && g.atMs + g.durationMs > f.atMs);
          if (during.some((g) => g.kind === 'killall')) {
            t.is(during.length, 1, `${nemesis} seed ${seed}: killall alone`);
            continue;
          }
          const hit = new Set(during.flatMap(impaired));
          t.true(hit.size <= budget, `${nemesis} seed ${seed} members ${members}: ${[...hit]} impaired at ${f.atMs} ms`);
        }
      }
    }
  }
  t.deepEqual([...kindsSeen].sort(), ['kill', 'killall', 'partition', 'pause']);
  t.notDeepEqual(plan('combined', 3, 1), plan('combined', 3, 2));
});

test('a failed write is "definitely not done" only for answers given before it was ordered', (t) => {
  t.is(classifyWriteFailure(400, 'bad'), 'fail');
  t.is(classifyWriteFailure(404, 'no subgroup "x"'), 'fail');
  t.is(classifyWriteFailure(503, 'no view installed yet (restarting)'), 'fail');
  t.is(classifyWriteFailure(503, 'this node can no longer send in shard 0 (exited)'), 'fail');
  t.is(classifyWriteFailure(503, 'the request was not carried out: node 1 no longer sends in shard 0 (view 3); retry it'), 'fail');
  t.is(classifyWriteFailure(503, 'node 2 (serving shard kv/0) is unreachable'), 'fail');
  // May have been ordered before the failure.
  t.is(classifyWriteFailure(503, 'agent stopping'), 'info');
  t.is(classifyWriteFailure(503, 'replica exited: removed from the group'), 'info');
  t.is(classifyWriteFailure(503, 'node 2, which the request was forwarded to, left the group (view 4); retry'), 'info');
  t.is(classifyWriteFailure(503, 'this node no longer serves shard 0; retry'), 'info');
  t.is(classifyWriteFailure(504, 'request timed out after 30000 ms'), 'info');
  t.is(classifyWriteFailure(500, 'internal'), 'info');
  t.is(classifyWriteFailure(502, 'remote failure'), 'info');
});

// ---------------------------------------------------------------------------------------------
// Real agents

function reportDir(t: ExecutionContext, name: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `derecho-faults-test-${name}-`));
  return dir;
}

async function run(t: ExecutionContext, options: Omit<RunOptions, 'reportDir' | 'log'>): Promise<RunReport> {
  const dir = reportDir(t, `${options.layout}-${options.nemesis}`);
  const report = await runOnce({ ...options, reportDir: dir, log: (line) => t.log(line) });
  writeRunReport(report);
  t.log(runLine(report));
  t.teardown(() => {
    if (t.passed && !process.env['FAULTS_KEEP']) fs.rmSync(dir, { recursive: true, force: true });
    else console.log(`[${t.title}] report kept in ${dir}\n${reportText(report)}`);
  });
  return report;
}

// Seed 171: two kill-alls, then every single-member fault hits node 3 (pause, kill, a partition, kill):
// all four kinds within 18 s, never more than one member of three impaired.
const SHORT_RUN = { layout: 'kv3', nemesis: 'combined', seed: 171, durationMs: 18_000 } as const;

test.serial('kv3 under combined faults (kill -9, kill-all, SIGSTOP, partition): linearizable, no acknowledged write lost, members agree', async (t) => {
  t.timeout(180_000);
  const report = await run(t, { ...SHORT_RUN, clients: 8, keys: 5 });
  t.is(report.error, undefined, report.error);
  // The workload ran.
  const kinds = report.operations.byKind;
  t.true((kinds['put']?.ok ?? 0) > 20, `ok puts: ${kinds['put']?.ok}`);
  t.true((kinds['get']?.ok ?? 0) > 20, `ok gets: ${kinds['get']?.ok}`);
  t.true((kinds['append']?.ok ?? 0) > 0, `ok appends: ${kinds['append']?.ok}`);
  // Every kind of fault the schedule names took effect at least once.
  const planned = [...new Set(report.faults.map((f) => f.kind))].sort();
  t.deepEqual(planned, ['kill', 'killall', 'partition', 'pause']);
  for (const kind of planned) t.true(report.faultsInjected[kind] >= 1, `${kind}: ${report.faultsInjected[kind]} injected`);
  // Safety.
  t.is(report.linearizable, true, report.nonLinearizable.map((k) => k.explanation).join('\n'));
  t.deepEqual(report.lostWrites, []);
  t.deepEqual(report.disagreements, []);
  t.true(report.log?.checked, 'the log was compared');
  t.deepEqual(report.log?.missing, []);
  t.deepEqual(report.log?.duplicates, []);
  t.true(report.log?.membersAgree);
  t.deepEqual(report.exits.filter((x) => !x.expected), []);
  t.deepEqual(report.violations, []);
  t.is(report.verdict, 'pass');
  t.true(report.recovery.healthyAfterMs !== null);
});

test.serial('the checks catch a broken rule: writes the agents refused, recorded as acknowledged, make the history non-linearizable', async (t) => {
  t.timeout(120_000);
  // Seed 6: two kill -9 of node 3 (1.6 s .. 4.5 s, 5.4 s .. 7.7 s). Requests to it get "connection
  // refused" while it is down: writes that definitely did not happen, which the broken client records as
  // acknowledged.
  const report = await run(t, { layout: 'kv3', nemesis: 'kill', seed: 6, durationMs: 8_000, clients: 8, keys: 3, break: 'refusedAsOk' });
  t.is(report.error, undefined, report.error);
  const refusedWrites = (['put', 'delete'] as const).reduce((n, k) => n + (report.operations.byKind[k]?.fail ?? 0), 0);
  t.true(refusedWrites > 0, 'some writes were refused');
  t.is(report.linearizable, false, 'the history with refused writes recorded as acknowledged is not linearizable');
  t.is(report.verdict, 'fail');
  t.true(report.nonLinearizable.length > 0);
  const explanation = report.nonLinearizable.map((k) => k.explanation).join('\n');
  t.log(explanation.split('\n').slice(0, 12).join('\n'));
  t.regex(explanation, /cannot be linearized/);
  // The honest history of the same run is linearizable: the checker rejected the broken rule, not the run.
  t.is(report.honestLinearizable, true, 'the same history recorded honestly');
});
