// Writes the DerechoGroup CRD (crds/derechogroups.derecho.dev.yaml) from the zod schemas.
//
//   npm run gen:crd            # write the file
//   npm run gen:crd -- --check # exit 1 if the file is stale (what crd.test.ts checks too)

import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CRD_FILE, renderCrdYaml } from './crd.ts';

const file = fileURLToPath(new URL(`../../${CRD_FILE}`, import.meta.url));
const text = renderCrdYaml();
if (process.argv.includes('--check')) {
  let current = '';
  try {
    current = readFileSync(file, 'utf8');
  } catch {
    // missing: stale
  }
  if (current !== text) {
    process.stderr.write(`${CRD_FILE} is stale; run npm run gen:crd\n`);
    process.exit(1);
  }
  process.stdout.write(`${CRD_FILE} is up to date\n`);
} else {
  writeFileSync(file, text);
  process.stdout.write(`wrote ${CRD_FILE}\n`);
}
