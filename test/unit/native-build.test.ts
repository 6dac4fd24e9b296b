// The RDMA addon's build script: optional at install time (one clear line, exit 0, when rdma-core's
// headers are missing), strict for `npm run build:native` and in CI's test step.

import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function build(args: string[], env: Record<string, string>) {
  const base = { ...process.env };
  delete base['CI'];
  return spawnSync(process.execPath, ['native/build.mjs', ...args], { cwd: ROOT, encoding: 'utf8', env: { ...base, ...env } });
}

const noHeaders = { DERECHO_RDMA_HEADERS_DIR: '/nonexistent-rdma-core' };
const reason = /rdma-core development headers are missing \(\/nonexistent-rdma-core\/infiniband\/verbs\.h, \/nonexistent-rdma-core\/rdma\/rdma_cma\.h\); install libibverbs-dev and librdmacm-dev \(scripts\/install-rdma-deps\.sh\)/;

test('install (--optional) without rdma-core headers: exit 0 and one line saying the addon is not built and why', (t) => {
  const r = build(['--optional'], noHeaders);
  t.is(r.status, 0);
  const lines = r.stdout.trim().split('\n');
  t.is(lines.length, 1);
  t.regex(lines[0]!, /^native: RDMA addon not built \(optional; the agent runs over TCP\): /);
  t.regex(lines[0]!, reason);
});

test('build:native without rdma-core headers fails with the reason', (t) => {
  const r = build([], noHeaders);
  t.is(r.status, 1);
  t.regex(r.stderr, /^native: RDMA addon not built: /);
  t.regex(r.stderr, reason);
});

test('the test step (--required-in-ci) is optional on a developer machine and strict in CI', (t) => {
  t.is(build(['--required-in-ci'], noHeaders).status, 0);
  const ci = build(['--required-in-ci'], { ...noHeaders, CI: 'true' });
  t.is(ci.status, 1);
  t.regex(ci.stderr, reason);
});
