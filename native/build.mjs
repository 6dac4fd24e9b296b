#!/usr/bin/env node
// Builds the RDMA addon (native/build/Release/derecho_rdma.node) with node-gyp, offline, against the
// headers of the running Node (its install prefix has include/node), never downloading anything.
//
//   node native/build.mjs             build; exit 1 with the reason when it cannot be built
//   node native/build.mjs --optional  the install step: when rdma-core's headers are missing (or the
//                                     build fails), print one line saying so and exit 0
//   node native/build.mjs --required-in-ci   the test step: --optional, except with CI=true
//
// The addon is optional: without it the agent runs over TCP (`transport: tcp` or `auto`).

import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const optional = process.argv.includes('--optional') || (process.argv.includes('--required-in-ci') && process.env.CI !== 'true');
// Where rdma-core's headers are looked for before building (DERECHO_RDMA_HEADERS_DIR: another prefix).
const includeDir = process.env.DERECHO_RDMA_HEADERS_DIR || '/usr/include';
const headers = [path.join(includeDir, 'infiniband', 'verbs.h'), path.join(includeDir, 'rdma', 'rdma_cma.h')];

function finish(ok, line) {
  if (ok) {
    console.log(`native: ${line}`);
    process.exit(0);
  }
  if (optional) {
    console.log(`native: RDMA addon not built (optional; the agent runs over TCP): ${line}`);
    process.exit(0);
  }
  console.error(`native: RDMA addon not built: ${line}`);
  process.exit(1);
}

if (process.env.DERECHO_SKIP_NATIVE === '1') finish(false, 'DERECHO_SKIP_NATIVE=1');
const missing = headers.filter((h) => !existsSync(h));
if (missing.length > 0) {
  finish(false, `rdma-core development headers are missing (${missing.join(', ')}); install libibverbs-dev and librdmacm-dev (scripts/install-rdma-deps.sh)`);
}

/** node-gyp: the one npm ships with, else a node-gyp on PATH. */
function nodeGyp() {
  const npmRoot = path.resolve(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm');
  const bundled = path.join(npmRoot, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  if (existsSync(bundled)) return [process.execPath, bundled];
  try {
    return [process.execPath, createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js')];
  } catch {
    return ['node-gyp'];
  }
}

try {
  createRequire(path.join(here, '..', 'package.json')).resolve('node-addon-api');
} catch {
  finish(false, 'the node-addon-api package is not installed (npm ci)');
}
const nodeDir = path.resolve(path.dirname(process.execPath), '..');
if (!existsSync(path.join(nodeDir, 'include', 'node', 'node_api.h'))) {
  finish(false, `Node's headers are not at ${path.join(nodeDir, 'include', 'node')} (node-gyp would download them; this build is offline)`);
}
const [cmd, ...args] = nodeGyp();
const r = spawnSync(cmd, [...args, 'rebuild', `--nodedir=${nodeDir}`, '--jobs=2'], {
  cwd: here, encoding: 'utf8', env: { ...process.env, npm_config_nodedir: nodeDir },
});
if (r.status !== 0) {
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.split('\n').filter((l) => /error|Error/.test(l)).slice(0, 8).join('\n');
  finish(false, `node-gyp rebuild failed (exit ${r.status ?? r.signal ?? r.error?.message}):\n${out}`);
}
finish(true, `built ${path.join('native', 'build', 'Release', 'derecho_rdma.node')}`);
