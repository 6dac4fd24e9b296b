// Loads the native addon (native/build/Release/derecho_rdma.node) as a `Verbs`, or says clearly why not.

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeCompletions, isLoopbackHost, UnroutableAddressError, unroutableReason } from './verbs.ts';
import type { CmEvent, RegisteredRegion, Verbs, VerbsDevice, VerbsDeviceInfo, VerbsDeviceLimits, VerbsEvent } from './verbs.ts';

interface AddonDevice {
  register(bytes: number): RegisteredRegion;
  deregister(handle: number): boolean;
  listen(host: string, port: number): { connId: number; port: number };
  connect(host: string, port: number, privateData: Uint8Array, sendDepth: number, recvDepth: number): number;
  accept(connId: number, privateData: Uint8Array, sendDepth: number, recvDepth: number): void;
  reject(connId: number): void;
  disconnect(connId: number): void;
  postWrite(connId: number, wrId: number, handle: number, offset: number, length: number, remoteAddr: bigint, rkey: number, imm?: number | null): void;
  postRecv(connId: number, wrId: number, count: number): void;
  close(): void;
  limits(): VerbsDeviceLimits;
  completionQueueEntries(): number;
}

interface Addon {
  devices(): VerbsDeviceInfo[];
  Device: new (name: string, onEvent: (kind: string, payload: unknown) => void, cqEntries?: number) => AddonDevice;
  completionRecordBytes: number;
}

/** Where node-gyp puts the addon. */
export const addonPath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../../native/build/Release/derecho_rdma.node');

export type LoadResult = { ok: true; verbs: Verbs } | { ok: false; reason: string };

let cached: LoadResult | null = null;

/** The addon as Verbs, or "RDMA addon not built: <reason>" / "RDMA addon failed to load: <reason>". */
export function loadNativeVerbs(file = addonPath): LoadResult {
  if (file === addonPath && cached) return cached;
  let result: LoadResult;
  if (!existsSync(file)) {
    result = { ok: false, reason: `RDMA addon not built: ${file} does not exist (install libibverbs-dev and librdmacm-dev, then npm run build:native)` };
  } else {
    try {
      const addon = createRequire(import.meta.url)(file) as Addon;
      result = { ok: true, verbs: wrap(addon) };
    } catch (e) {
      result = { ok: false, reason: `RDMA addon failed to load: ${e instanceof Error ? e.message : String(e)} (is rdma-core installed: libibverbs1, librdmacm1?)` };
    }
  }
  if (file === addonPath) cached = result;
  return result;
}

function wrap(addon: Addon): Verbs {
  return {
    devices: () => addon.devices(),
    open(name: string, onEvent: (e: VerbsEvent) => void, completionQueueEntries?: number): VerbsDevice {
      const dev = new addon.Device(name, (kind, payload) => {
        try {
          if (kind === 'completions') onEvent({ kind: 'completions', completions: decodeCompletions(payload as ArrayBuffer) });
          else if (kind === 'cm') {
            const e = payload as CmEvent;
            onEvent({ kind: 'cm', event: { ...e, privateData: new Uint8Array(e.privateData) } });
          } else onEvent({ kind: 'fatal', message: (payload as { message: string }).message });
        } catch (e) {
          // Never unwind through the addon's thread-safe function: surface it as any uncaught error.
          process.nextTick(() => {
            throw e;
          });
        }
      }, ...(completionQueueEntries === undefined ? [] : [completionQueueEntries]));
      // RDMA CM binds and routes only over an interface an RDMA device serves: a loopback address would
      // listen where no peer can reach it, or fail route resolution (ENODEV) on every dial.
      const refuseLoopback = (what: string, host: string): void => {
        if (isLoopbackHost(host)) throw new UnroutableAddressError(host, `RDMA ${what} ${host}: ${unroutableReason(host)}`);
      };
      return {
        name: name || 'first device',
        limits: dev.limits(),
        completionQueueEntries: dev.completionQueueEntries(),
        register: (bytes) => dev.register(bytes),
        deregister: (handle) => dev.deregister(handle),
        listen: (host, port) => {
          refuseLoopback('listen on', host);
          return dev.listen(host, port);
        },
        connect: (host, port, privateData, sendDepth, recvDepth) => {
          refuseLoopback('connect to', host);
          return dev.connect(host, port, privateData, sendDepth, recvDepth);
        },
        accept: (connId, privateData, sendDepth, recvDepth) => dev.accept(connId, privateData, sendDepth, recvDepth),
        reject: (connId) => dev.reject(connId),
        disconnect: (connId) => dev.disconnect(connId),
        postWrite: (connId, wrId, handle, offset, length, remoteAddr, rkey, imm) => dev.postWrite(connId, wrId, handle, offset, length, remoteAddr, rkey, imm),
        postRecv: (connId, wrId, count) => dev.postRecv(connId, wrId, count),
        close: () => dev.close(),
      };
    },
  };
}

/**
 * The IP addresses of the network interfaces an RDMA device's port serves (RoCE: the netdev behind its GID
 * table, from sysfs), IPv4 first: the addresses RDMA CM can listen on and be dialed at for this device.
 * Empty when sysfs does not say (InfiniBand without IPoIB, no such device).
 */
export function rdmaDeviceAddresses(device: string, port = 1, sysfs = '/sys/class/infiniband'): string[] {
  let netdevs: string[];
  try {
    netdevs = readdirSync(`${sysfs}/${device}/ports/${port}/gid_attrs/ndevs`, { withFileTypes: true })
      .filter((e) => e.isFile())
      .map((e) => e.name);
  } catch {
    return [];
  }
  const names = new Set<string>();
  for (const index of netdevs) {
    try {
      const name = readFileSync(`${sysfs}/${device}/ports/${port}/gid_attrs/ndevs/${index}`, 'utf8').trim();
      if (name) names.add(name);
    } catch {
      // an unused GID entry reads as an error (EINVAL)
    }
  }
  const all = networkInterfaces();
  const v4: string[] = [];
  const v6: string[] = [];
  for (const name of names) {
    for (const a of all[name] ?? []) {
      if (a.internal) continue;
      if (a.family === 'IPv4') v4.push(a.address);
      else if (!a.address.startsWith('fe80')) v6.push(a.address);
    }
  }
  return [...new Set([...v4, ...v6])];
}
