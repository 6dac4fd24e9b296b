// An in-memory RDMA fabric implementing `Verbs`, so that the RDMA transport's TypeScript side (rings,
// credits, fragments, row slots, pipeline blocks over writes with immediate, connection setup) runs for
// real in CI without RDMA hardware. It simulates what the transport relies on:
//   - registered regions with an address and an rkey; one-sided writes copy bytes from a local region
//     into the remote region named by (addr, rkey), bounds-checked like a real HCA (remote access error);
//   - a write with immediate consumes one posted receive at the other end and completes there with the
//     immediate value, after its bytes are in place; none posted is an RNR error (stricter than hardware
//     with infinite RNR retry, so that a receive-accounting bug shows up as a failure);
//   - reliable-connected ordering: operations complete in the order they were posted, fabric-wide;
//   - send queue depth: posting past it throws (ENOMEM, as ibv_post_send);
//   - rdmacm: listen on a port, connect with private data, connectRequest / accept / reject,
//     established, disconnected (also when the other side disconnects or closes);
//   - errors: a failed write puts both queue pairs in error; later posts complete as flushed.
//   - the device's limits (max_cqe, max_qp_wr, max_mr_size): a queue or region over them is refused as
//     the addon refuses it (RXE_LIMITS are Soft-RoCE's); an address the fabric calls unroutable fails route
//     resolution with ENODEV, as RDMA CM does for an address no RDMA device serves.
// Local bounds checks throw RangeError as the addon does.

import type { CmEvent, CmEventType, Completion, RegisteredRegion, Verbs, VerbsDevice, VerbsDeviceInfo, VerbsDeviceLimits, VerbsEvent } from './verbs.ts';
import { completionQueueEntriesDefault, WcOpcode } from './verbs.ts';

/** Limits like a ConnectX adapter's (the fake's default). */
export const HCA_LIMITS: Readonly<VerbsDeviceLimits> = Object.freeze({
  maxQueuePairs: 131072,
  maxQueuePairWorkRequests: 32768,
  maxCompletionQueues: 16777216,
  maxCompletionQueueEntries: 4194303,
  maxMemoryRegions: 16777216,
  maxMemoryRegionBytes: (1n << 64n) - 1n,
  maxScatterGatherEntries: 30,
});

/** Soft-RoCE's (rdma_rxe) limits, as devices() reports them for the Linux 6.1 rxe0 of scripts/rdma-vm.sh. */
export const RXE_LIMITS: Readonly<VerbsDeviceLimits> = Object.freeze({
  maxQueuePairs: 1048560,
  maxQueuePairWorkRequests: 1048576,
  maxCompletionQueues: 1048576,
  maxCompletionQueueEntries: 32767,
  maxMemoryRegions: 524287,
  maxMemoryRegionBytes: (1n << 64n) - 1n,
  maxScatterGatherEntries: 32,
});

export interface FakeFabricOptions {
  /** Every device's limits (default HCA_LIMITS). */
  limits?: Partial<VerbsDeviceLimits>;
  /** Hosts whose route resolution fails with ENODEV (a routeError event, status 19). Default: none. */
  unroutable?: (host: string) => boolean;
}

/** The addon's checks of a queue pair's depths against max_qp_wr (native/src/queue_limits.cc). */
function queuePairProblem(sendDepth: number, recvDepth: number, limits: VerbsDeviceLimits, device: string): string | null {
  const deeper = Math.max(sendDepth, recvDepth);
  if (deeper > limits.maxQueuePairWorkRequests) {
    return `a queue pair of send depth ${sendDepth} and receive depth ${recvDepth} is over what RDMA device ${device} allows (max_qp_wr ${limits.maxQueuePairWorkRequests}; lower ringSlots)`;
  }
  return null;
}

const statusFlushed = 5;
const statusRemoteAccess = 10;
const statusRetryExceeded = 12;
const statusRnr = 13;

interface FakeRegion {
  handle: number;
  buffer: ArrayBuffer;
  addr: bigint;
  rkey: number;
  device: FakeDevice;
  registered: boolean;
}

interface FakeConn {
  id: number;
  device: FakeDevice;
  listener: boolean;
  listenPort: number;
  peer: FakeConn | null;
  state: 'connecting' | 'requested' | 'open' | 'error' | 'closed';
  sendDepth: number;
  recvDepth: number;
  sendsOutstanding: number;
  recvsPosted: number[];
  pendingPrivateData: Uint8Array;
}

interface WriteOp {
  from: FakeConn;
  wrId: number;
  bytes: Uint8Array;
  remoteAddr: bigint;
  rkey: number;
  imm: number | null;
}

/** The fabric: every FakeVerbs made from it can reach the others' listeners. */
export class FakeFabric {
  /** Counters, for tests. */
  readonly stats = { writes: 0, writesWithImm: 0, bytesWritten: 0, errors: 0 };
  private readonly listeners = new Map<number, FakeConn>();
  private readonly regionsByRkey = new Map<number, FakeRegion>();
  private nextAddr = 0x10000000n;
  private nextRkey = 0x1000;
  private nextPort = 20000;
  private readonly ops: WriteOp[] = [];
  private opsScheduled = false;
  readonly limits: Readonly<VerbsDeviceLimits>;
  readonly unroutable: (host: string) => boolean;

  constructor(options: FakeFabricOptions = {}) {
    this.limits = Object.freeze({ ...HCA_LIMITS, ...options.limits });
    this.unroutable = options.unroutable ?? (() => false);
  }

  /** A node's verbs with the given devices (none: a node without RDMA hardware). */
  verbs(deviceNames: string[] = ['fake0']): Verbs {
    return {
      devices: (): VerbsDeviceInfo[] => deviceNames.map((name, i) => ({
        name, guid: (0xfa4e0000 + i).toString(16).padStart(16, '0'),
        ports: [{ port: 1, state: 'active', linkLayer: 'Ethernet', activeMtuBytes: 4096 }],
        limits: { ...this.limits },
      })),
      open: (name: string, onEvent: (e: VerbsEvent) => void, completionQueueEntries?: number): VerbsDevice => {
        if (deviceNames.length === 0) throw new Error(`RDMA device ${name}: no RDMA devices on this node`);
        const chosen = name === '' ? deviceNames[0]! : name;
        if (!deviceNames.includes(chosen)) throw new Error(`no RDMA device named ${name} (devices: ${deviceNames.join(', ')})`);
        const maxCqe = this.limits.maxCompletionQueueEntries;
        let entries: number;
        if (completionQueueEntries === undefined) entries = Math.min(completionQueueEntriesDefault, maxCqe);
        else {
          if (!Number.isInteger(completionQueueEntries) || completionQueueEntries < 16) throw new RangeError(`completionQueueEntries ${completionQueueEntries} is below the minimum of 16`);
          if (completionQueueEntries > maxCqe) throw new RangeError(`completionQueueEntries ${completionQueueEntries} is over what RDMA device ${chosen} allows (max_cqe ${maxCqe})`);
          entries = completionQueueEntries;
        }
        return new FakeDevice(this, chosen, onEvent, entries);
      },
    };
  }

  /** Operations posted and not yet executed. */
  pendingOps(): number {
    return this.ops.length;
  }

  // ---- used by FakeDevice ----

  allocate(device: FakeDevice, handle: number, bytes: number): FakeRegion {
    const region: FakeRegion = { handle, buffer: new ArrayBuffer(bytes), addr: this.nextAddr, rkey: this.nextRkey++, device, registered: true };
    this.nextAddr += BigInt(bytes + 4096 - (bytes % 4096));
    this.regionsByRkey.set(region.rkey, region);
    return region;
  }

  release(region: FakeRegion): void {
    region.registered = false;
    this.regionsByRkey.delete(region.rkey);
  }

  bind(conn: FakeConn, port: number): number {
    const p = port === 0 ? this.nextPort++ : port;
    if (this.listeners.has(p)) throw Object.assign(new Error(`RDMA listen: rdma_bind_addr port ${p}: Address already in use (errno 98)`), { errno: 98 });
    this.listeners.set(p, conn);
    conn.listenPort = p;
    return p;
  }

  unbind(conn: FakeConn): void {
    if (this.listeners.get(conn.listenPort) === conn) this.listeners.delete(conn.listenPort);
  }

  listenerAt(port: number): FakeConn | undefined {
    return this.listeners.get(port);
  }

  enqueue(op: WriteOp): void {
    this.ops.push(op);
    if (this.opsScheduled) return;
    this.opsScheduled = true;
    setImmediate(() => this.run());
  }

  private run(): void {
    this.opsScheduled = false;
    const batch = this.ops.splice(0, this.ops.length);
    for (const op of batch) this.execute(op);
  }

  private execute(op: WriteOp): void {
    const from = op.from;
    if (from.state === 'closed') return; // destroyed: no completion
    const fail = (status: number): void => {
      this.stats.errors++;
      from.sendsOutstanding--;
      from.device.complete({ wrId: op.wrId, connId: from.id, status, opcode: WcOpcode.rdmaWrite, byteLen: 0, imm: null });
      if (from.state === 'open') {
        from.state = 'error';
        const peer = from.peer;
        if (peer && peer.state === 'open') {
          peer.state = 'error';
          peer.device.cm('disconnected', peer.id);
        }
      }
    };
    if (from.state !== 'open') return fail(statusFlushed);
    const to = from.peer;
    if (!to || to.state !== 'open') return fail(statusRetryExceeded);
    const region = this.regionsByRkey.get(op.rkey);
    const end = op.remoteAddr + BigInt(op.bytes.byteLength);
    if (!region || region.device !== to.device || op.remoteAddr < region.addr || end > region.addr + BigInt(region.buffer.byteLength)) {
      return fail(statusRemoteAccess);
    }
    if (op.imm !== null && to.recvsPosted.length === 0) return fail(statusRnr);
    new Uint8Array(region.buffer, Number(op.remoteAddr - region.addr), op.bytes.byteLength).set(op.bytes);
    this.stats.writes++;
    this.stats.bytesWritten += op.bytes.byteLength;
    from.sendsOutstanding--;
    from.device.complete({ wrId: op.wrId, connId: from.id, status: 0, opcode: WcOpcode.rdmaWrite, byteLen: op.bytes.byteLength, imm: null });
    if (op.imm !== null) {
      this.stats.writesWithImm++;
      const recvWrId = to.recvsPosted.shift()!;
      to.device.complete({ wrId: recvWrId, connId: to.id, status: 0, opcode: WcOpcode.recvRdmaWithImm, byteLen: op.bytes.byteLength, imm: op.imm >>> 0 });
    }
  }
}

class FakeDevice implements VerbsDevice {
  private readonly regions = new Map<number, FakeRegion>();
  private readonly conns = new Map<number, FakeConn>();
  private nextHandle = 1;
  private nextConnId = 1;
  private closed = false;
  private completions: Completion[] = [];
  private flushScheduled = false;

  readonly limits: VerbsDeviceLimits;

  constructor(
    private readonly fabric: FakeFabric,
    readonly name: string,
    private readonly onEvent: (e: VerbsEvent) => void,
    readonly completionQueueEntries: number,
  ) {
    this.limits = { ...fabric.limits };
  }

  register(bytes: number): RegisteredRegion {
    this.checkOpen('register');
    if (!Number.isSafeInteger(bytes) || bytes < 1) throw new RangeError('register: bytes must be at least 1');
    if (BigInt(bytes) > this.limits.maxMemoryRegionBytes) {
      throw new RangeError(`register: a memory region of ${bytes} bytes is over what RDMA device ${this.name} allows (max_mr_size ${this.limits.maxMemoryRegionBytes})`);
    }
    const region = this.fabric.allocate(this, this.nextHandle++, bytes);
    this.regions.set(region.handle, region);
    return { handle: region.handle, buffer: region.buffer, addr: region.addr, rkey: region.rkey };
  }

  deregister(handle: number): boolean {
    const r = this.regions.get(handle);
    if (!r) return false;
    this.regions.delete(handle);
    this.fabric.release(r);
    return true;
  }

  listen(_host: string, port: number): { connId: number; port: number } {
    this.checkOpen('listen');
    const conn = this.newConn(true);
    conn.listenPort = this.fabric.bind(conn, port);
    return { connId: conn.id, port: conn.listenPort };
  }

  connect(host: string, port: number, privateData: Uint8Array, sendDepth: number, recvDepth: number): number {
    this.checkOpen('connect');
    if (privateData.byteLength > 56) throw new RangeError('privateData is over 56 bytes (the rdmacm limit for RC connections)');
    const depth = queuePairProblem(sendDepth, recvDepth, this.limits, this.name);
    if (depth) throw new RangeError(`RDMA connect: ${depth}`);
    const conn = this.newConn(false);
    conn.sendDepth = sendDepth;
    conn.recvDepth = recvDepth;
    setImmediate(() => {
      if (conn.state !== 'connecting') return;
      if (this.fabric.unroutable(host)) {
        // rdma_resolve_route: No such device
        conn.state = 'error';
        this.cm('routeError', conn.id, 0, new Uint8Array(0), 19);
        return;
      }
      const listener = this.fabric.listenerAt(port);
      if (!listener || listener.state === 'closed') {
        conn.state = 'error';
        this.cm('rejected', conn.id, 0, new Uint8Array(0), 28);
        return;
      }
      const incoming = listener.device.newConn(false);
      incoming.state = 'requested';
      incoming.peer = conn;
      conn.peer = incoming;
      listener.device.cm('connectRequest', incoming.id, listener.id, privateData.slice());
    });
    return conn.id;
  }

  accept(connId: number, privateData: Uint8Array, sendDepth: number, recvDepth: number): void {
    this.checkOpen('accept');
    const conn = this.conn(connId);
    if (conn.state !== 'requested') throw new Error(`RDMA accept: connection ${connId} has no pending request`);
    const depth = queuePairProblem(sendDepth, recvDepth, this.limits, this.name);
    if (depth) throw new RangeError(`RDMA accept: ${depth}`);
    conn.sendDepth = sendDepth;
    conn.recvDepth = recvDepth;
    conn.state = 'open';
    const dialer = conn.peer!;
    setImmediate(() => {
      if (conn.state !== 'open') return;
      if (dialer.state !== 'connecting') {
        conn.state = 'error';
        this.cm('disconnected', conn.id);
        return;
      }
      dialer.state = 'open';
      dialer.device.cm('established', dialer.id, 0, privateData.slice());
      this.cm('established', conn.id);
    });
  }

  reject(connId: number): void {
    const conn = this.conn(connId);
    const dialer = conn.peer;
    this.destroy(conn);
    if (dialer && dialer.state === 'connecting') {
      dialer.state = 'error';
      setImmediate(() => dialer.device.cm('rejected', dialer.id));
    }
  }

  disconnect(connId: number): void {
    this.destroy(this.conn(connId));
  }

  postWrite(connId: number, wrId: number, handle: number, offset: number, length: number, remoteAddr: bigint, rkey: number, imm: number | null): void {
    this.checkOpen('postWrite');
    const conn = this.conn(connId);
    if (conn.listener || conn.state === 'connecting' || conn.state === 'requested') throw new Error(`postWrite: RDMA connection ${connId} has no queue pair yet`);
    const region = this.regions.get(handle);
    if (!region) throw new RangeError(`postWrite: no registered region with handle ${handle}`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > region.buffer.byteLength) {
      throw new RangeError(`postWrite: bytes [${offset}, +${length}) are outside region ${handle} of ${region.buffer.byteLength} bytes`);
    }
    if (imm !== null && (!Number.isInteger(imm) || imm < 0 || imm > 0xffffffff)) throw new RangeError('imm must be a u32');
    if (conn.sendsOutstanding >= conn.sendDepth) {
      throw Object.assign(new Error(`postWrite: ibv_post_send on RDMA connection ${connId}: Cannot allocate memory (errno 12)`), { errno: 12 });
    }
    conn.sendsOutstanding++;
    // The HCA reads the local bytes when it executes the write; the copy here stands for that read.
    this.fabric.enqueue({ from: conn, wrId, bytes: new Uint8Array(region.buffer, offset, length).slice(), remoteAddr, rkey, imm });
  }

  postRecv(connId: number, wrId: number, count: number): void {
    this.checkOpen('postRecv');
    const conn = this.conn(connId);
    if (conn.listener || conn.state === 'connecting' || conn.state === 'requested') throw new Error(`postRecv: RDMA connection ${connId} has no queue pair yet`);
    if (conn.recvsPosted.length + count > conn.recvDepth) {
      throw Object.assign(new Error(`postRecv: ibv_post_recv on RDMA connection ${connId}: Cannot allocate memory (errno 12)`), { errno: 12 });
    }
    for (let i = 0; i < count; i++) conn.recvsPosted.push(wrId);
  }

  close(): void {
    if (this.closed) return;
    for (const conn of [...this.conns.values()]) this.destroy(conn);
    for (const r of this.regions.values()) this.fabric.release(r);
    this.regions.clear();
    this.closed = true;
  }

  // ---- fabric side ----

  newConn(listener: boolean): FakeConn {
    const conn: FakeConn = {
      id: this.nextConnId++, device: this, listener, listenPort: 0, peer: null, state: listener ? 'open' : 'connecting',
      sendDepth: 0, recvDepth: 0, sendsOutstanding: 0, recvsPosted: [], pendingPrivateData: new Uint8Array(0),
    };
    this.conns.set(conn.id, conn);
    return conn;
  }

  complete(c: Completion): void {
    if (this.closed) return;
    this.completions.push(c);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      const batch = this.completions;
      this.completions = [];
      if (!this.closed && batch.length > 0) this.onEvent({ kind: 'completions', completions: batch });
    });
  }

  cm(type: CmEventType, connId: number, listenerId = 0, privateData: Uint8Array = new Uint8Array(0), status = 0): void {
    if (this.closed || !this.conns.has(connId)) return;
    const event: CmEvent = { type, connId, listenerId, status, privateData };
    this.onEvent({ kind: 'cm', event });
  }

  private destroy(conn: FakeConn): void {
    if (conn.state === 'closed') return;
    const wasLive = conn.state === 'open' || conn.state === 'requested' || conn.state === 'connecting';
    conn.state = 'closed';
    this.conns.delete(conn.id);
    if (conn.listener) this.fabric.unbind(conn);
    const peer = conn.peer;
    if (wasLive && peer && peer.state !== 'closed' && peer.state !== 'error') {
      const peerWasOpen = peer.state === 'open';
      peer.state = 'error';
      setImmediate(() => peer.device.cm(peerWasOpen ? 'disconnected' : 'rejected', peer.id));
    }
  }

  private conn(connId: number): FakeConn {
    const c = this.conns.get(connId);
    if (!c) throw new Error(`no RDMA connection ${connId} on device ${this.name}`);
    return c;
  }

  private checkOpen(what: string): void {
    if (this.closed) throw new Error(`${what}: RDMA device ${this.name} is closed`);
  }
}
