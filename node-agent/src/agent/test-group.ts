// Helpers of the tests that run agents in one process over loopback TCP (agent, reads, transport tests).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../util/ports.ts';

/** Polls `f` every 20 ms until it returns something truthy (its value), or throws after `timeoutMs`. */
export async function until<T>(what: string, f: () => T | null | undefined | false | Promise<T | null | undefined | false>, timeoutMs = 15_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A fresh directory with `manifest` (group.yaml), an HMAC secret and the agent config files of nodes
 * 1..members on free loopback ports (removed at teardown). `httpPorts[i]` is node i+1's HTTP port.
 */
export async function groupConfigs(
  t: { teardown(f: () => void): void },
  manifest: string,
  members: number,
  prefix = 'derecho-test-',
): Promise<{ dir: string; files: string[]; httpPorts: number[] }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'group.yaml'), manifest);
  fs.writeFileSync(path.join(dir, 'secret'), 'a-test-secret-of-32-bytes-length');
  const ports = await Promise.all(Array.from({ length: 2 * members }, () => freePort()));
  const peers = Object.fromEntries(Array.from({ length: members }, (_, i) => [String(i + 1), `127.0.0.1:${ports[i]}`]));
  const files = Array.from({ length: members }, (_, i) => {
    const file = path.join(dir, `agent-${i + 1}.yaml`);
    fs.writeFileSync(file, JSON.stringify({
      nodeId: i + 1, groupFile: 'group.yaml', dataDir: path.join(dir, `data-${i + 1}`),
      listen: { host: '127.0.0.1', peerPort: ports[i], httpPort: ports[members + i] },
      peers, auth: { hmacSecretFile: path.join(dir, 'secret') }, logLevel: 'error',
    }));
    return file;
  });
  return { dir, files, httpPorts: ports.slice(members) };
}
