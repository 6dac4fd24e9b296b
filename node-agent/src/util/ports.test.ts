import test from 'ava';
import { FREE_PORT_MAX, FREE_PORT_MIN, freePort, portFree } from './ports.ts';

test('freePort hands out distinct, bindable ports below the ephemeral range (no outgoing connection can take them)', async (t) => {
  const ports = await Promise.all(Array.from({ length: 40 }, () => freePort()));
  t.is(new Set(ports).size, ports.length, 'never the same port twice');
  t.true(ports.every((p) => p >= FREE_PORT_MIN && p <= FREE_PORT_MAX), ports.join(', '));
  t.true((await Promise.all(ports.slice(0, 10).map((p) => portFree(p)))).every((free) => free));
});
