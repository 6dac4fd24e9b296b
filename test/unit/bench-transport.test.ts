// `npm run bench -- --transport rdma` passes the transport to the agents, and stops at once, saying why,
// on a node that cannot run the RDMA data path.

import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { loadNativeVerbs } from '../../node-agent/src/transport/rdma/native-verbs.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function bench(args: string[]) {
  return spawnSync(process.execPath, ['--import', 'tsx', 'bench/run.ts', ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000, env: { ...process.env, DERECHO_RDMA_DEVICE: '' } });
}

test('--transport rdma without an RDMA device stops before launching anything, with the reason', (t) => {
  const native = loadNativeVerbs();
  if (native.ok && native.verbs.devices().length > 0) {
    t.pass(`this node has RDMA devices: the bench would run over them`);
    return;
  }
  const r = bench(['--transport', 'rdma', '--only', 'derecho', '--out', path.join(ROOT, '.derecho', 'bench-test')]);
  t.is(r.status, 1);
  t.regex(r.stderr, native.ok
    ? /^bench: --transport rdma: this node has no RDMA device \(ibv_get_device_list lists none\); run the bench on a node with an RDMA NIC/m
    : /^bench: --transport rdma: RDMA addon (not built|failed to load)/m);
  t.notRegex(r.stderr, /derecho: ordered/, 'no run started');
});

test('--transport accepts only tcp or rdma', (t) => {
  const r = bench(['--transport', 'verbs']);
  t.is(r.status, 1);
  t.regex(r.stderr, /--transport: verbs is not tcp or rdma/);
});
