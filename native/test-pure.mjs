#!/usr/bin/env node
// Builds the addon's pure C++ parts (region table, completion records) with AddressSanitizer and
// UndefinedBehaviorSanitizer and runs their unit tests (native/test/pure_test.cc). Needs only g++ (or
// $CXX) and its sanitizer runtimes (libasan, libubsan), not rdma-core.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const cxx = process.env.CXX || 'g++';
const dir = mkdtempSync(path.join(tmpdir(), 'derecho-native-test-'));
const exe = path.join(dir, 'pure_test');

function main() {
  const flags = ['-std=c++17', '-Wall', '-Wextra', '-Werror', '-g', '-O1', '-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer'];
  const sources = ['src/region_table.cc', 'src/completion_record.cc', 'src/queue_limits.cc', 'test/pure_test.cc'].map((f) => path.join(here, f));
  const build = spawnSync(cxx, [...flags, ...sources, '-o', exe], { stdio: 'inherit' });
  if (build.status !== 0) {
    console.error(`native: building the sanitized C++ unit tests with ${cxx} failed (exit ${build.status ?? build.error?.message})`);
    return 1;
  }
  const sanitizerEnv = { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' };
  // The sanitizers must really be on: canaries with a heap overflow and a signed overflow have to fail.
  const canaries = [
    ['heap-buffer-overflow', 'AddressSanitizer', 'int main(int argc, char**) { int* p = new int[2]; int v = p[argc + 1]; delete[] p; return v; }'],
    ['signed overflow', 'runtime error', '#include <climits>\nint main(int argc, char**) { int x = INT_MAX - 1; x += argc + 1; return x == 0; }'],
  ];
  for (const [what, expected, source] of canaries) {
    const src = path.join(dir, 'canary.cc');
    writeFileSync(src, source);
    const c = spawnSync(cxx, [...flags.filter((f) => f !== '-Werror'), '-O0', src, '-o', path.join(dir, 'canary')], { encoding: 'utf8' });
    if (c.status !== 0) {
      console.error(`native: building the ${what} canary failed:\n${c.stderr}`);
      return 1;
    }
    const r = spawnSync(path.join(dir, 'canary'), [], { encoding: 'utf8', env: sanitizerEnv });
    if (r.status === 0 || !r.stderr.includes(expected)) {
      console.error(`native: the sanitizers are not active: the ${what} canary exited ${r.status} without "${expected}"`);
      return 1;
    }
  }
  console.log('native: sanitizers active (AddressSanitizer and UndefinedBehaviorSanitizer caught their canaries)');
  const run = spawnSync(exe, [], { stdio: 'inherit', env: sanitizerEnv });
  return run.status ?? 1;
}

let code = 1;
try {
  code = main();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.exit(code);
