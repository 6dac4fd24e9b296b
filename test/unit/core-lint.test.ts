// The protocol core must stay deterministic and I/O-free. This proves the lint rule that enforces it
// actually fires: a probe file with each banned construct is linted as if it lived in the core.
import test from 'ava';
import { ESLint } from 'eslint';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const probePath = path.join(root, 'node-agent/src/core/lint-probe.ts');

const banned: [string, string][] = [
  ['a Node built-in import', "import { readFileSync } from 'node:fs';\nexport const x = readFileSync;\n"],
  ['a timer', 'export function f(): void { setTimeout(() => undefined, 1); }\n'],
  ['the wall clock', 'export const now = Date.now();\n'],
  ['Math.random', 'export const r = Math.random();\n'],
  ['an async function', 'export async function f(): Promise<number> { return 1; }\n'],
  ['a Promise', 'export const p = Promise.resolve(1);\n'],
  ['process', 'export const env = process.env;\n'],
  ['an import from outside the core', "import { x } from '../agent/thing.ts';\nexport const y = x;\n"],
];

for (const [name, source] of banned) {
  test(`lint rejects ${name} inside node-agent/src/core`, async (t) => {
    const eslint = new ESLint({ cwd: root });
    const [result] = await eslint.lintText(source, { filePath: probePath });
    t.true((result?.errorCount ?? 0) > 0, `expected a lint error for ${name}`);
  });
}

test('lint accepts plain deterministic code inside node-agent/src/core', async (t) => {
  const eslint = new ESLint({ cwd: root });
  const [result] = await eslint.lintText("import type { Version } from './types.ts';\nexport const v: Version = { viewId: 0, seq: 0 };\n", { filePath: probePath });
  t.is(result?.errorCount, 0, JSON.stringify(result?.messages));
});

test('the same constructs are allowed outside the core (adapters, driver)', async (t) => {
  const eslint = new ESLint({ cwd: root });
  const [result] = await eslint.lintText('export const now = Date.now();\nexport function f(): void { setTimeout(() => undefined, 1); }\n', { filePath: path.join(root, 'node-agent/src/agent/probe.ts') });
  t.is(result?.errorCount, 0, JSON.stringify(result?.messages));
});
