// Loads the native addon (native/build/Release/derecho_rdma.node) as a `Verbs`, or says clearly why not.

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeCompletions } from './verbs.ts';
import type { CmEvent, RegisteredRegion, Verbs, VerbsDevice, VerbsDeviceInfo, VerbsEvent } from './verbs.ts';

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
}

interface Addon {
  devices(): VerbsDeviceInfo[];
  Device: new (name: string, onEvent: (kind: string, payload: unknown) => void, cqEntries: number) => AddonDevice;
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
    open(name: string, onEvent: (e: VerbsEvent) => void, completionQueueEntries: number): VerbsDevice {
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
      }, completionQueueEntries);
      return {
        name: name || 'first device',
        register: (bytes) => dev.register(bytes),
        deregister: (handle) => dev.deregister(handle),
        listen: (host, port) => dev.listen(host, port),
        connect: (host, port, privateData, sendDepth, recvDepth) => dev.connect(host, port, privateData, sendDepth, recvDepth),
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
