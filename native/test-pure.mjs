#!/usr/bin/env node
// Builds the addon's pure C++ parts (region table, completion records) with AddressSanitizer and
// UndefinedBehaviorSanitizer and runs their unit tests (native/test/pure_test.cc). Needs only g++ (or
// $CXX) and its sanitizer runtimes (libasan, libubsan), not rdma-core.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const cxx = process.env.CXX || 'g++';
const dir = mkdtempSync(path.join(tmpdir(), 'derecho-native-test-'));
const exe = path.join(dir, 'pure_test');
try {
  const flags = ['-std=c++17', '-Wall', '-Wextra', '-Werror', '-g', '-O1', '-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer'];
  const sources = ['src/region_table.cc', 'src/completion_record.cc', 'test/pure_test.cc'].map((f) => path.join(here, f));
  const build = spawnSync(cxx, [...flags, ...sources, '-o', exe], { stdio: 'inherit' });
  if (build.status !== 0) {
    console.error(`native: building the sanitized C++ unit tests with ${cxx} failed (exit ${build.status ?? build.error?.message})`);
    process.exit(1);
  }
  const run = spawnSync(exe, [], { stdio: 'inherit', env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' } });
  process.exit(run.status ?? 1);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
