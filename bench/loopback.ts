// The limit: one Node.js process streaming to another over one loopback TCP socket (MB/s), and a
// request/response round trip (µs), measured in the same run as everything else.
//
//   node --import tsx bench/loopback.ts --serve     (the child: echo/sink server; prints its port)

import { spawn } from 'node:child_process';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

export interface LoopbackResult {
  streamBytesPerSec: number;
  roundTripUs: { p50: number; p99: number };
}

function serve(): void {
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    let mode: 'unknown' | 'sink' | 'echo' = 'unknown';
    let received = 0;
    socket.on('data', (chunk) => {
      if (mode === 'unknown') {
        mode = chunk[0] === 0x53 /* S */ ? 'sink' : 'echo';
        chunk = chunk.subarray(1);
      }
      if (mode === 'sink') {
        received += chunk.byteLength;
        return;
      }
      socket.write(chunk);
    });
    socket.on('end', () => {
      if (mode === 'sink') socket.end(`${received}\n`);
      else socket.end();
    });
    socket.on('error', () => {});
  });
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`${(server.address() as net.AddressInfo).port}\n`);
  });
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}

async function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.setNoDelay(true);
    s.once('error', reject);
  });
}

async function stream(port: number, seconds: number): Promise<number> {
  const s = await connect(port);
  const chunk = Buffer.alloc(1 << 20, 7);
  s.write('S');
  const t0 = performance.now();
  await new Promise<void>((resolve) => {
    const pump = (): void => {
      while (performance.now() - t0 < seconds * 1000) {
        if (!s.write(chunk)) {
          s.once('drain', pump);
          return;
        }
      }
      resolve();
    };
    pump();
  });
  const received = await new Promise<number>((resolve) => {
    let text = '';
    s.on('data', (d) => (text += d.toString()));
    s.on('end', () => resolve(Number(text.trim())));
    s.end();
  });
  const elapsed = (performance.now() - t0) / 1000;
  return received / elapsed;
}

async function roundTrips(port: number, count: number): Promise<{ p50: number; p99: number }> {
  const s = await connect(port);
  s.write('E');
  const samples: number[] = [];
  const message = Buffer.alloc(64, 1);
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    await new Promise<void>((resolve) => {
      let got = 0;
      const onData = (d: Buffer): void => {
        got += d.byteLength;
        if (got >= message.byteLength) {
          s.off('data', onData);
          resolve();
        }
      };
      s.on('data', onData);
      s.write(message);
    });
    samples.push((performance.now() - t0) * 1000);
  }
  s.end();
  samples.sort((a, b) => a - b);
  return { p50: samples[Math.floor(samples.length / 2)]!, p99: samples[Math.floor(samples.length * 0.99)]! };
}

export async function measureLoopback(seconds: number, roundTripCount: number): Promise<LoopbackResult> {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--serve'], { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
      child.once('exit', () => reject(new Error('loopback server exited')));
    });
    const streamBytesPerSec = await stream(port, seconds);
    const roundTripUs = await roundTrips(port, roundTripCount);
    return { streamBytesPerSec, roundTripUs };
  } finally {
    child.stdin.end();
    child.kill();
  }
}

if (process.argv.includes('--serve')) serve();
