// TCP proxies between the members, which the fault-injection test cuts and heals to make partitions.
//
// Node i's agent config names, as the address of peer j, the listen port of the proxy P(i→j), which
// forwards to j's real peer port. The transport keeps one connection per pair (either end may dial), so
// the link i–j is cut by cutting both P(i→j) and P(j→i); clients still reach every member over HTTP,
// which does not go through the proxies.
//
// Cut modes:
//  - 'reset': every connection through the proxy is reset (RST), and new ones are accepted and reset at
//    once (the peer sees "connection reset" and reconnects with its backoff);
//  - 'blackhole' (what a real partition looks like: packets dropped): connections stay open but every
//    byte in either direction is discarded, and new connections are accepted and their bytes discarded
//    (the handshake never completes). On heal the blackholed connections are destroyed so that the peers
//    reconnect cleanly: a connection that lost bytes never forwards again (a frame cut in the middle
//    would corrupt the framed stream).

import net from 'node:net';
import { freePort } from '../../node-agent/src/util/ports.ts';

export type CutMode = 'reset' | 'blackhole';

interface Pair {
  client: net.Socket;
  upstream: net.Socket | null;
  /** Lost bytes (or never connected upstream): destroyed on heal, never forwards. */
  tainted: boolean;
}

export interface ProxyStats {
  accepted: number;
  forwardedBytes: number;
  discardedBytes: number;
  /** Connections reset or destroyed by a cut or a heal. */
  severed: number;
}

export class LinkProxy {
  private state: 'open' | CutMode = 'open';
  private readonly pairs = new Set<Pair>();
  private closed = false;
  readonly stats: ProxyStats = { accepted: 0, forwardedBytes: 0, discardedBytes: 0, severed: 0 };

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
    readonly target: { host: string; port: number },
    readonly host: string,
  ) {}

  /** A proxy listening on a free loopback port (or `listenPort`), forwarding to `target`. */
  static async start(target: { host: string; port: number }, options: { host?: string; listenPort?: number } = {}): Promise<LinkProxy> {
    const host = options.host ?? '127.0.0.1';
    for (let attempt = 0; ; attempt++) {
      const port = options.listenPort ?? (await freePort(host));
      const server = net.createServer({ noDelay: true });
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen({ port, host, exclusive: true }, () => {
            server.off('error', reject);
            resolve();
          });
        });
      } catch (e) {
        server.close();
        if (options.listenPort !== undefined || attempt >= 5) throw e;
        continue; // taken between freePort and the listen: another port
      }
      const proxy = new LinkProxy(server, port, target, host);
      server.on('connection', (socket) => proxy.onConnection(socket));
      server.on('error', () => {});
      return proxy;
    }
  }

  get mode(): 'open' | CutMode {
    return this.state;
  }

  /** Connections currently held (forwarding or blackholed). */
  get connections(): number {
    return this.pairs.size;
  }

  cut(mode: CutMode): void {
    if (this.closed) return;
    this.state = mode;
    for (const pair of [...this.pairs]) {
      if (mode === 'reset') {
        this.sever(pair, true);
      } else {
        pair.tainted = true;
        // A side paused for backpressure must flow again so that its bytes are read and discarded.
        pair.client.resume();
        pair.upstream?.resume();
      }
    }
  }

  /** Forwards again: blackholed connections are destroyed (the peers reconnect); new ones are forwarded. */
  heal(): void {
    if (this.closed) return;
    this.state = 'open';
    for (const pair of [...this.pairs]) if (pair.tainted) this.sever(pair, false);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const pair of [...this.pairs]) this.sever(pair, false);
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private onConnection(client: net.Socket): void {
    this.stats.accepted++;
    client.on('error', () => {});
    if (this.closed || this.state === 'reset') {
      this.stats.severed++;
      client.resetAndDestroy();
      return;
    }
    client.setNoDelay(true);
    const pair: Pair = { client, upstream: null, tainted: this.state === 'blackhole' };
    this.pairs.add(pair);
    client.on('close', () => this.drop(pair));
    if (pair.tainted) {
      // Accepted, never connected upstream: its bytes go nowhere until a heal destroys it.
      client.on('data', (d: Buffer) => (this.stats.discardedBytes += d.byteLength));
      return;
    }
    const upstream = net.connect({ host: this.target.host, port: this.target.port, noDelay: true });
    pair.upstream = upstream;
    upstream.on('error', () => {});
    upstream.on('close', () => this.drop(pair));
    client.on('data', (d: Buffer) => this.forward(pair, d, client, upstream));
    upstream.on('data', (d: Buffer) => this.forward(pair, d, upstream, client));
  }

  private forward(pair: Pair, data: Buffer, from: net.Socket, to: net.Socket): void {
    if (pair.tainted) {
      this.stats.discardedBytes += data.byteLength;
      return;
    }
    this.stats.forwardedBytes += data.byteLength;
    if (!to.write(data)) {
      from.pause();
      to.once('drain', () => from.resume());
    }
  }

  /** One end closed: close the other (an orderly end of the peer's connection). */
  private drop(pair: Pair): void {
    if (!this.pairs.delete(pair)) return;
    pair.client.destroy();
    pair.upstream?.destroy();
  }

  private sever(pair: Pair, reset: boolean): void {
    if (!this.pairs.delete(pair)) return;
    this.stats.severed++;
    if (reset) {
      pair.client.resetAndDestroy();
      if (pair.upstream && !pair.upstream.destroyed) {
        // resetAndDestroy needs a connected socket; one still connecting is just destroyed.
        if (pair.upstream.connecting) pair.upstream.destroy();
        else pair.upstream.resetAndDestroy();
      }
    } else {
      pair.client.destroy();
      pair.upstream?.destroy();
    }
  }
}

/**
 * The proxies of a group: P(i→j) for every ordered pair of members, and the links i–j they make.
 * `peersOf(i)` is node i's `peers` map (its own entry is its real address, the others are proxies).
 */
export class ProxyMesh {
  private readonly proxies = new Map<string, LinkProxy>();
  /** Per link "a-b" (a < b), how many faults currently cut it, and how. */
  private readonly cuts = new Map<string, { count: number; mode: CutMode }>();

  private constructor(readonly ids: number[], private readonly peerPorts: Map<number, number>, readonly host: string) {}

  static async create(peerPorts: Map<number, number>, host = '127.0.0.1'): Promise<ProxyMesh> {
    const ids = [...peerPorts.keys()].sort((a, b) => a - b);
    const mesh = new ProxyMesh(ids, peerPorts, host);
    for (const i of ids) {
      for (const j of ids) {
        if (i === j) continue;
        mesh.proxies.set(`${i}>${j}`, await LinkProxy.start({ host, port: peerPorts.get(j)! }, { host }));
      }
    }
    return mesh;
  }

  proxy(from: number, to: number): LinkProxy {
    const p = this.proxies.get(`${from}>${to}`);
    if (!p) throw new Error(`no proxy ${from}→${to}`);
    return p;
  }

  peersOf(id: number): Record<string, string> {
    const peers: Record<string, string> = {};
    for (const j of this.ids) peers[String(j)] = j === id ? `${this.host}:${this.peerPorts.get(j)!}` : `${this.host}:${this.proxy(id, j).port}`;
    return peers;
  }

  private static link(a: number, b: number): string {
    return a < b ? `${a}-${b}` : `${b}-${a}`;
  }

  /** Cuts the link a–b (both proxies). Cuts are counted: the link heals when every cut of it healed. */
  cut(a: number, b: number, mode: CutMode): void {
    const key = ProxyMesh.link(a, b);
    const c = this.cuts.get(key);
    if (c) {
      c.count++;
      if (c.mode === 'blackhole' && mode === 'reset') {
        c.mode = 'reset';
        this.proxy(a, b).cut('reset');
        this.proxy(b, a).cut('reset');
      }
      return;
    }
    this.cuts.set(key, { count: 1, mode });
    this.proxy(a, b).cut(mode);
    this.proxy(b, a).cut(mode);
  }

  heal(a: number, b: number): void {
    const key = ProxyMesh.link(a, b);
    const c = this.cuts.get(key);
    if (!c) return;
    if (--c.count > 0) return;
    this.cuts.delete(key);
    this.proxy(a, b).heal();
    this.proxy(b, a).heal();
  }

  /** Heals every link whatever cut it. */
  healAll(): void {
    this.cuts.clear();
    for (const p of this.proxies.values()) p.heal();
  }

  /** The links cut now, e.g. ["1-3 (blackhole)"]. */
  cutLinks(): string[] {
    return [...this.cuts].map(([k, c]) => `${k} (${c.mode})`);
  }

  async close(): Promise<void> {
    await Promise.all([...this.proxies.values()].map((p) => p.close()));
  }
}
