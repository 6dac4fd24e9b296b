// The operator as a process of its own for the tests that kill it (SIGKILL) in the middle of a change:
// operator/src/main.ts's runOperator with two test-only overrides that the command line cannot give:
//
//  - each member's /status is found through the mock kubelet's ports file (DERECHO_TEST_PORTS_FILE, see
//    kubelet.ts `portsFile`), since the mock kubelet runs every pod on 127.0.0.1 with ports of its own;
//  - a short Lease (3 s) so that a replacement takes over soon after the killed leader stops renewing.
//
//   node --import tsx test/cluster/operator-child.ts <operator flags>
//
// Exits when its parent (the test process) is gone, like the agents the mock kubelet runs.

import fs from 'node:fs';
import { createLogger } from '../../node-agent/src/agent/logger.ts';
import { runOperator } from '../../operator/src/main.ts';

const portsFile = process.env.DERECHO_TEST_PORTS_FILE;
if (portsFile === undefined || portsFile === '') {
  process.stderr.write('operator-child: DERECHO_TEST_PORTS_FILE is not set\n');
  process.exit(2);
}
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) process.kill(process.pid, 'SIGKILL');
}, 250).unref();

const statusUrl = (pod: { metadata: { name: string; namespace?: string } }): string | null => {
  let ports: Record<string, { http: number } | undefined>;
  try {
    ports = JSON.parse(fs.readFileSync(portsFile, 'utf8')) as Record<string, { http: number } | undefined>;
  } catch {
    return null;
  }
  const entry = ports[`${pod.metadata.namespace ?? ''}/${pod.metadata.name}`];
  return entry === undefined ? null : `http://127.0.0.1:${entry.http}/status`;
};

const handle = await runOperator(process.argv.slice(2), process.env, {
  statusUrl,
  lease: { leaseDurationSeconds: 3, renewDeadlineSeconds: 2, retryPeriodSeconds: 0.5 },
  log: createLogger(process.env.DERECHO_TEST_OPERATOR_LOG === 'debug' ? 'debug' : 'info', { op: process.env.POD_NAME ?? 'operator' }),
});
const stop = (): void => {
  handle.stop().then(() => process.exit(0), () => process.exit(1));
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
