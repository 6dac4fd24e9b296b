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
  const { execFile } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const ports = fileURLToPath(new URL('./ports.ts', import.meta.url));
  const script = `import { freePort } from ${JSON.stringify(ports)}; const out = []; for (let i = 0; i < 400; i++) out.push(await freePort()); console.log(JSON.stringify(out)); setTimeout(() => {}, 1500);`;
  const draw = (): Promise<number[]> => new Promise((resolve, reject) => {
    execFile(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { timeout: 60_000 }, (error, stdout) => (error ? reject(error) : resolve(JSON.parse(stdout) as number[])));
  });
  const all = (await Promise.all([draw(), draw(), draw(), draw()])).flat();
  const seen = new Map<number, number>();
  for (const port of all) seen.set(port, (seen.get(port) ?? 0) + 1);
  t.deepEqual([...seen].filter(([, count]) => count > 1).map(([port]) => port), [], 'no port handed out twice');
});
