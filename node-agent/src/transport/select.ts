// Chooses the agent's transport from spec.transport: "tcp", "rdma" (RDMA verbs, or start-up stops with a
// clear error), "auto" (RDMA when this node has a usable device, else TCP, saying why).

import { ConfigError } from '../config/errors.ts';
import type { AgentTransport } from './agent-transport.ts';
import type { LoadResult } from './rdma/native-verbs.ts';
import type { RdmaTransportOptions } from './rdma/rdma-transport.ts';
import type { Verbs, VerbsDeviceInfo } from './rdma/verbs.ts';
import { TcpTransport } from './tcp-transport.ts';
import type { TcpTransportOptions } from './tcp-transport.ts';

export type TransportMode = 'tcp' | 'rdma' | 'auto';

export interface TransportChoice {
  transport: AgentTransport;
  /** spec.transport. */
  requested: TransportMode;
  /** The data path in use. */
  kind: 'tcp' | 'rdma';
  /** The RDMA device in use, else null. */
  device: string | null;
  /** Why this data path, in words (logged, and shown in /status). */
  reason: string;
}

export interface SelectOptions {
  /** Verbs to use (tests inject the in-memory fabric); default the native addon. */
  verbs?: Verbs;
  /** Device to use; default $DERECHO_RDMA_DEVICE, else the first device with an active port. */
  deviceName?: string;
  /** More RDMA transport options (geometry, ports). */
  rdma?: Partial<Omit<RdmaTransportOptions, keyof TcpTransportOptions>>;
  /** The addon loader (tests). */
  load?: () => LoadResult;
}

function describe(d: VerbsDeviceInfo): string {
  return `${d.name} (${d.ports.map((p) => `port ${p.port} ${p.state}`).join(', ') || 'no ports'}${d.error ? `, ${d.error}` : ''})`;
}

/** The device to open, or why there is none. */
export function pickDevice(devices: VerbsDeviceInfo[], wanted: string | undefined): { name: string } | { problem: string } {
  if (devices.length === 0) return { problem: 'this node has no RDMA device (ibv_get_device_list lists none)' };
  if (wanted) {
    const d = devices.find((x) => x.name === wanted);
    if (!d) return { problem: `no RDMA device named ${wanted} (devices: ${devices.map((x) => x.name).join(', ')})` };
    return { name: d.name };
  }
  const active = devices.find((d) => !d.error && d.ports.some((p) => p.state === 'active'));
  if (!active) return { problem: `no RDMA device has an active port: ${devices.map(describe).join('; ')}` };
  return { name: active.name };
}

/**
 * The transport for `mode`. "rdma" without an RDMA path throws a ConfigError (exit code 2) naming the
 * reason; "auto" then falls back to TCP and says why in `reason`. The RDMA modules (and the addon) are
 * loaded only for "rdma" and "auto".
 */
export async function createAgentTransport(mode: TransportMode, tcpOptions: TcpTransportOptions, o: SelectOptions = {}): Promise<TransportChoice> {
  if (mode === 'tcp') return { transport: new TcpTransport(tcpOptions), requested: mode, kind: 'tcp', device: null, reason: 'spec.transport is tcp' };
  const { loadNativeVerbs } = await import('./rdma/native-verbs.ts');
  const { RdmaTransport } = await import('./rdma/rdma-transport.ts');
  let verbs = o.verbs ?? null;
  let problem: string | null = null;
  if (!verbs) {
    const loaded = (o.load ?? loadNativeVerbs)();
    if (loaded.ok) verbs = loaded.verbs;
    else problem = loaded.reason;
  }
  let device: string | null = null;
  if (verbs) {
    try {
      const picked = pickDevice(verbs.devices(), o.deviceName ?? process.env['DERECHO_RDMA_DEVICE']);
      if ('name' in picked) device = picked.name;
      else problem = picked.problem;
    } catch (e) {
      problem = `listing RDMA devices failed: ${e instanceof Error ? e.message : String(e)}`;
    }
  }
  if (verbs && device !== null) {
    try {
      const transport = new RdmaTransport({ ...tcpOptions, ...o.rdma, verbs, deviceName: device, tcpFallback: mode === 'auto' });
      return {
        transport, requested: mode, kind: 'rdma', device,
        reason: mode === 'auto' ? `spec.transport is auto and RDMA device ${device} is usable (peers without RDMA are served over TCP)` : `spec.transport is rdma (device ${device})`,
      };
    } catch (e) {
      problem = `opening RDMA device ${device} failed: ${e instanceof Error ? e.message : String(e)}`;
    }
  }
  if (mode === 'rdma') {
    throw new ConfigError([`spec.transport: "rdma" needs RDMA on this node, but ${problem}. Run the member on a node with an RDMA NIC (docs/rdma.md: device plugin, IPC_LOCK, memlock limit) or use transport "auto" (TCP where RDMA is missing) or "tcp".`]);
  }
  return { transport: new TcpTransport(tcpOptions), requested: mode, kind: 'tcp', device: null, reason: `spec.transport is auto and RDMA is unavailable (${problem}): using TCP` };
}
