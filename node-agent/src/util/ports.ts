// Loopback port helpers shared by the local runner, the benchmark and the tests.

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { alive } from './process.ts';

/** Whether `port` can be bound on `host` right now (bound and released at once). */
export function portFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/**
 * Ports `freePort` draws from: below Linux's default ephemeral range (32768-60999), so that no outgoing
 * connection of any process can take the port between `freePort` and the listen that follows it (a port
 * from bind(0) is an ephemeral one, and tests running side by side collided on them: EADDRINUSE).
 */
export const FREE_PORT_MIN = 20_000;
export const FREE_PORT_MAX = 32_000;

/**
 * A port free on `host` now: a random one of [FREE_PORT_MIN, FREE_PORT_MAX] that binds and that no other
 * living process on this machine was handed, else one the kernel picks (bind port 0).
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = FREE_PORT_MIN + Math.floor(Math.random() * (FREE_PORT_MAX - FREE_PORT_MIN + 1));
    if (!handedOut.has(port) && (await portFree(port, host)) && reserve(port)) {
      handedOut.add(port);
      return port;
    }
  }
  return kernelPort(host);
}

/**
 * Reservations shared by the processes of this machine: a file per port handed out, naming the process.
 * Between freePort and the listen that follows it a port is free to anyone; processes drawing ports at once
 * (tests side by side, agents slow to start on a busy machine) picked the same one (EADDRINUSE). A
 * reservation holds while its process lives; a dead process's is taken over.
 */
const RESERVATIONS_DIR = path.join(os.tmpdir(), 'derecho-ports');

function reserve(port: number): boolean {
  const file = path.join(RESERVATIONS_DIR, String(port));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.mkdirSync(RESERVATIONS_DIR, { recursive: true });
      fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') return true; // no shared directory: the bind check alone
      let text: string;
      try {
        text = fs.readFileSync(file, 'utf8');
      } catch {
        continue; // released meanwhile
      }
      const owner = Number(text);
      // (Empty: its owner is writing it right now.)
      if (text === '' || !Number.isInteger(owner) || owner <= 0 || owner === process.pid || alive(owner)) return false;
      fs.rmSync(file, { force: true }); // its process is gone
    }
  }
  return false;
}


/** Ports this process handed out already (two calls never return the same port). */
const handedOut = new Set<number>();

function kernelPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}
