// An agent that hosts the built-in types plus the custom Counter type (`type: custom:counter`).
//   node --import tsx examples/custom-type/agent.ts --config agent.yaml
import { runAgent } from '../../node-agent/src/index.ts';
import { Counter } from './counter.ts';

const code = await runAgent(process.argv.slice(2), process.env, { types: { 'custom:counter': Counter } });
process.exit(code);
