#!/usr/bin/env node
// The `derecho` command (package.json "bin"): runs a DerechoGroup manifest on this machine.
// The CLI is TypeScript (node-agent/src/cli/main.ts); tsx, a runtime dependency, compiles it on the fly.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../node-agent/src/cli/main.ts');
const code = await main(process.argv.slice(2));
process.exit(code);
