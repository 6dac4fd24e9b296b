import test from 'ava';
import { FREE_PORT_MAX, FREE_PORT_MIN, freePort, portFree } from './ports.ts';

test('freePort hands out distinct, bindable ports below the ephemeral range (no outgoing connection can take them)', async (t) => {
  const ports = await Promise.all(Array.from({ length: 40 }, () => freePort()));
  t.is(new Set(ports).size, ports.length, 'never the same port twice');
  t.true(ports.every((p) => p >= FREE_PORT_MIN && p <= FREE_PORT_MAX), ports.join(', '));
  t.true((await Promise.all(ports.slice(0, 10).map((p) => portFree(p)))).every((free) => free));
});

test('processes drawing ports at once never get the same one (a port handed out is reserved machine-wide while its process lives)', async (t) => {
  // Four processes draw 400 ports each at the same moment, without listening on them yet (as tests and
  // agents do while the machine is busy): on 12,001 ports, random draws alone would collide dozens of times.
  // Each keeps living (its reservations held) until every one has drawn: a process that exits lets the
  // others take its ports over, which is right, but would make this test depend on the machine's speed.
  const { spawn } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const ports = fileURLToPath(new URL('./ports.ts', import.meta.url));
  const script = `import { freePort } from ${JSON.stringify(ports)}; const out = []; for (let i = 0; i < 400; i++) out.push(await freePort()); console.log(JSON.stringify(out)); process.stdin.resume(); process.stdin.on('end', () => process.exit(0));`;
  const children = Array.from({ length: 4 }, () => spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'inherit'] }));
  t.teardown(() => children.forEach((child) => child.kill('SIGKILL')));
  const draws = await Promise.all(children.map((child) => new Promise<number[]>((resolve, reject) => {
    let text = '';
    child.stdout.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      if (text.includes('\n')) resolve(JSON.parse(text) as number[]);
    });
    child.on('exit', (code) => reject(new Error(`a drawing process exited (${String(code)}) before it answered`)));
  })));
  for (const child of children) child.stdin.end();
  const all = draws.flat();
  const seen = new Map<number, number>();
  for (const port of all) seen.set(port, (seen.get(port) ?? 0) + 1);
  t.deepEqual([...seen].filter(([, count]) => count > 1).map(([port]) => port), [], 'no port handed out twice');
});
