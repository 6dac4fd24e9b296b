// The verbs surface the RDMA transport drives: what the native addon (native/src/addon.cc) offers, as
// TypeScript types, implemented by the addon (native-verbs.ts) and by an in-memory fabric for tests
// (fake-verbs.ts). Only mechanics here: devices, registered memory, rdmacm connections, posting RDMA
// writes (with or without immediate data) and zero-length receives, completions. No protocol.

/** One port of a device, as ibv_query_port reports it. */
export interface VerbsPortInfo {
  port: number;
  state: string;
  linkLayer: 'InfiniBand' | 'Ethernet';
  activeMtuBytes: number;
}

/**
 * What ibv_query_device reports (the subset the transport sizes by). Devices differ widely: a ConnectX
 * allows millions of completion queue entries, Soft-RoCE (rxe) 32,767; every queue is sized within these.
 */
export interface VerbsDeviceLimits {
  maxQueuePairs: number;
  /** max_qp_wr: the deepest send or receive queue of one queue pair. */
  maxQueuePairWorkRequests: number;
  maxCompletionQueues: number;
  /** max_cqe: the most entries of one completion queue. */
  maxCompletionQueueEntries: number;
  maxMemoryRegions: number;
  /** max_mr_size: a u64 (often 2^64 - 1), so a bigint, never a lossy number. */
  maxMemoryRegionBytes: bigint;
  maxScatterGatherEntries: number;
}

export interface VerbsDeviceInfo {
  name: string;
  /** Node GUID, 16 hex digits. */
  guid: string;
  ports: VerbsPortInfo[];
  /** Absent when the device could not be queried. */
  limits?: VerbsDeviceLimits;
  /** The device is listed but could not be opened. */
  error?: string;
}

/** Completion queue entries asked for when the transport names no size (capped at the device's max_cqe). */
export const completionQueueEntriesDefault = 65536;

/**
 * An address RDMA CM can never use: a loopback address (RDMA CM routes only over a network interface an
 * RDMA device serves), or one whose route resolution failed with ENODEV / EADDRNOTAVAIL (no RDMA device on
 * that route). Trying again does not help: the transport reports it once and stops dialing that address.
 */
export class UnroutableAddressError extends Error {
  constructor(readonly host: string, message: string) {
    super(message);
    this.name = 'UnroutableAddressError';
  }
}

/** 127.0.0.0/8, ::1, "localhost" (and IPv4-mapped loopback). */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^(::ffff:)?127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** Statuses of addrError / routeError events that mean "no RDMA device on this route": ENODEV, EADDRNOTAVAIL. */
export const unroutableStatuses: ReadonlySet<number> = new Set([19, 99]);

/** Why RDMA CM cannot use `host`, for an error message. */
export function unroutableReason(host: string): string {
  return isLoopbackHost(host)
    ? `${host} is a loopback address, which RDMA CM does not route: give the nodes the address of the network interface the RDMA device serves (rdma link show; e.g. rxe0 on eth0)`
    : `no RDMA device serves the route to ${host} (is the RDMA device bound to the interface with that address? rdma link show)`;
}

/** Memory registered with the device's protection domain, shared with JavaScript without copies. */
export interface RegisteredRegion {
  /** Names the region in postWrite (local bytes). */
  handle: number;
  /** The registered bytes themselves (an external ArrayBuffer over the registered memory). */
  buffer: ArrayBuffer;
  /** Address and remote key a peer writes to. */
  addr: bigint;
  rkey: number;
}

/** rdmacm events the addon reports (address and route resolution are handled inside the addon). */
export type CmEventType =
  | 'connectRequest' // a dialer's request on a listener: accept() or reject() connId
  | 'established'
  | 'rejected'
  | 'disconnected'
  | 'addrError'
  | 'routeError'
  | 'connectError'
  | 'unreachable'
  | 'deviceRemoval'
  | 'timewaitExit'
  | 'connectResponse'
  | 'qpError' // an ibv async event put the connection's queue pair in error (status = the event type)
  | 'other';

export interface CmEvent {
  type: CmEventType;
  connId: number;
  /** connectRequest: the listener it arrived on. */
  listenerId: number;
  status: number;
  /** connectRequest / established / rejected: the other side's private data (at most 56 bytes). */
  privateData: Uint8Array;
}

/** ibv_wc_opcode values the transport meets. */
export const WcOpcode = { rdmaWrite: 1, recvRdmaWithImm: 129 } as const;

/** One work completion. */
export interface Completion {
  wrId: number;
  connId: number;
  /** ibv_wc_status: 0 success. */
  status: number;
  opcode: number;
  byteLen: number;
  /** Immediate data, or null. */
  imm: number | null;
}

export type VerbsEvent =
  | { kind: 'completions'; completions: Completion[] }
  | { kind: 'cm'; event: CmEvent }
  | { kind: 'fatal'; message: string };

/** An open device: one protection domain, one completion queue, one polling thread. */
export interface VerbsDevice {
  readonly name: string;
  /** The device's limits (queried when it was opened). */
  readonly limits: VerbsDeviceLimits;
  /** Entries of the completion queue every connection shares (what open() asked for, or the default). */
  readonly completionQueueEntries: number;
  /** Registers `bytes` zeroed bytes (page aligned) for local and remote write. */
  register(bytes: number): RegisteredRegion;
  /** Removes the registration (the memory lives until its ArrayBuffer is collected). False if unknown. */
  deregister(handle: number): boolean;
  /** rdmacm listener; port 0 picks one. Throws UnroutableAddressError for an address RDMA CM cannot use. */
  listen(host: string, port: number): { connId: number; port: number };
  /**
   * Dials: address and route resolution, a queue pair, then rdma_connect with `privateData`. Throws
   * UnroutableAddressError for an address RDMA CM cannot use; a route found missing later comes as an
   * addrError / routeError event with a status of `unroutableStatuses`.
   */
  connect(host: string, port: number, privateData: Uint8Array, sendDepth: number, recvDepth: number): number;
  accept(connId: number, privateData: Uint8Array, sendDepth: number, recvDepth: number): void;
  reject(connId: number): void;
  /** Disconnects and destroys the connection; no event follows for it. */
  disconnect(connId: number): void;
  /**
   * One signaled RDMA write of `length` bytes at `offset` of local region `handle` to `remoteAddr`/`rkey`;
   * with `imm` (a u32) a write with immediate, which consumes one posted receive at the other end and
   * completes there with that immediate value.
   */
  postWrite(connId: number, wrId: number, handle: number, offset: number, length: number, remoteAddr: bigint, rkey: number, imm: number | null): void;
  /** `count` zero-length receives (each taken by one incoming write with immediate). */
  postRecv(connId: number, wrId: number, count: number): void;
  close(): void;
}

export interface Verbs {
  /** Devices of this node (none without RDMA hardware or without the kernel's RDMA subsystem). */
  devices(): VerbsDeviceInfo[];
  /**
   * Opens a device by name ('' = the first) with one completion queue shared by every connection, of
   * `completionQueueEntries` (refused, naming max_cqe, when over the device's limit) or, when absent,
   * completionQueueEntriesDefault capped at the device's max_cqe. Events arrive on the main thread.
   */
  open(name: string, onEvent: (e: VerbsEvent) => void, completionQueueEntries?: number): VerbsDevice;
}

/** Size of one completion record of the addon (native/src/completion_record.h). */
export const completionRecordBytes = 32;
const hasImm = 1;

/** Decodes the addon's completion records (little endian: wrId u64, connId, status, opcode, byteLen, imm, flags u32). */
export function decodeCompletions(bytes: ArrayBuffer): Completion[] {
  if (bytes.byteLength % completionRecordBytes !== 0) throw new RangeError(`completion batch of ${bytes.byteLength} bytes is not a multiple of ${completionRecordBytes}`);
  const v = new DataView(bytes);
  const out: Completion[] = [];
  for (let o = 0; o < bytes.byteLength; o += completionRecordBytes) {
    const flags = v.getUint32(o + 28, true);
    out.push({
      wrId: Number(v.getBigUint64(o, true)),
      connId: v.getUint32(o + 8, true),
      status: v.getUint32(o + 12, true),
      opcode: v.getUint32(o + 16, true),
      byteLen: v.getUint32(o + 20, true),
      imm: flags & hasImm ? v.getUint32(o + 24, true) : null,
    });
  }
  return out;
}

/** ibv_wc_status names, for error messages. */
export function wcStatusName(status: number): string {
  const names = ['success', 'local length error', 'local QP operation error', 'local EE operation error', 'local protection error',
    'work request flushed', 'memory window bind error', 'bad response', 'local access error', 'remote invalid request',
    'remote access error', 'remote operation error', 'retry exceeded', 'RNR retry exceeded', 'local RDD violation',
    'remote invalid RD request', 'remote aborted', 'invalid EE context number', 'invalid EE context state', 'fatal error',
    'response timeout', 'general error'];
  return `${names[status] ?? 'unknown status'} (${status})`;
}
