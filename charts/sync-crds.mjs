#!/usr/bin/env node
// Copies the generated CRDs (crds/*.yaml, written by `npm run gen:crd`) into the chart
// (charts/derecho-operator/files/crds/), where templates/crds.yaml reads them: Helm cannot read files
// outside a chart, and a packaged chart must carry its CRD.
//
//   node charts/sync-crds.mjs          # copy
//   node charts/sync-crds.mjs --check  # exit 1 when the chart's copy is missing or stale
//
// test/cluster/helm.test.ts fails when the copy is stale, so the chart cannot drift from the schema.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const source = path.join(root, 'crds');
const target = path.join(root, 'charts', 'derecho-operator', 'files', 'crds');
const check = process.argv.includes('--check');

const files = fs.readdirSync(source).filter((f) => f.endsWith('.yaml')).sort();
const stale = [];
for (const file of files) {
  const text = fs.readFileSync(path.join(source, file), 'utf8');
  const copy = path.join(target, file);
  const current = fs.existsSync(copy) ? fs.readFileSync(copy, 'utf8') : null;
  if (current === text) continue;
  stale.push(file);
  if (!check) {
    fs.mkdirSync(target, { recursive: true });
    fs.writeFileSync(copy, text);
  }
}
const extra = fs.existsSync(target) ? fs.readdirSync(target).filter((f) => f.endsWith('.yaml') && !files.includes(f)) : [];
if (check) {
  if (stale.length > 0 || extra.length > 0) {
    process.stderr.write(`charts/derecho-operator/files/crds is stale (${[...stale, ...extra.map((f) => `${f} (not in crds/)`)].join(', ')}): run node charts/sync-crds.mjs\n`);
    process.exit(1);
  }
  process.stdout.write('charts/derecho-operator/files/crds is up to date\n');
} else {
  for (const file of extra) fs.rmSync(path.join(target, file));
  process.stdout.write(stale.length + extra.length > 0 ? `updated ${[...stale, ...extra].join(', ')}\n` : 'charts/derecho-operator/files/crds is up to date\n');
}
