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
  /** CPU seconds (both processes, user + system) per GB streamed: the cost of the copies alone. */
  streamCpuSecondsPerGB: number;
  /** Back to back: the next request leaves as soon as the reply is in (both processes stay awake). */
  roundTripUs: { p50: number; p99: number };
  /**
   * Paced like the latency run (one request per 1/ratePerSec, the processes idle in between): what a
   * single hop costs when the receiver has to be woken up, the fair yardstick of light-load latency.
   */
  roundTripPacedUs: { p50: number; p99: number; ratePerSec: number };
}

function serve(): void {
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    let mode: 'unknown' | 'sink' | 'echo' = 'unknown';
    let received = 0;
    const cpuAtStart = process.cpuUsage();
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
      if (mode === 'sink') {
        const cpu = process.cpuUsage(cpuAtStart);
        socket.end(`${received} ${cpu.user + cpu.system}\n`);
      }
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

async function stream(port: number, seconds: number): Promise<{ bytesPerSec: number; cpuSecondsPerGB: number }> {
  const s = await connect(port);
  const cpuAtStart = process.cpuUsage();
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
  const [received, sinkCpuMicros] = await new Promise<number[]>((resolve) => {
    let text = '';
    s.on('data', (d) => (text += d.toString()));
    s.on('end', () => resolve(text.trim().split(' ').map(Number)));
    s.end();
  });
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpuAtStart);
  return { bytesPerSec: received! / elapsed, cpuSecondsPerGB: ((cpu.user + cpu.system + sinkCpuMicros!) / 1e6) / (received! / 1e9) };
}

async function roundTrips(port: number, count: number, ratePerSec = 0): Promise<{ p50: number; p99: number }> {
  const s = await connect(port);
  s.write('E');
  const samples: number[] = [];
  const message = Buffer.alloc(64, 1);
  const start = performance.now();
  for (let i = 0; i < count; i++) {
    if (ratePerSec > 0) {
      const due = start + (i * 1000) / ratePerSec;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
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
    const streamed = await stream(port, seconds);
    const roundTripUs = await roundTrips(port, roundTripCount);
    const pacedRate = 1000;
    const roundTripPacedUs = { ...await roundTrips(port, Math.min(roundTripCount, 2 * pacedRate), pacedRate), ratePerSec: pacedRate };
    return { streamBytesPerSec: streamed.bytesPerSec, streamCpuSecondsPerGB: streamed.cpuSecondsPerGB, roundTripUs, roundTripPacedUs };
  } finally {
    child.stdin.end();
    child.kill();
  }
}

if (process.argv.includes('--serve')) serve();
