// What the agent needs from a transport, TCP or RDMA: the driver's Transport plus listening, the peer map,
// connectivity, counters, errors and shutdown. TcpTransport and RdmaTransport both implement it.

import type { Transport } from '../agent/driver.ts';
import type { NodeId } from '../core/types.ts';
import type { TransportError, TransportMetrics } from './tcp-transport.ts';

export interface AgentTransport extends Transport {
  /** The data path actually in use. */
  readonly kind: 'tcp' | 'rdma';
  readonly metrics: TransportMetrics;
  /** Block size and threshold of this node's pipelined multicasts (0 block bytes: the pipeline is off). */
  readonly pipelineBlockBytes: number;
  readonly pipelineThresholdBytes: number;
  listen(host: string, port: number): Promise<{ host: string; port: number }>;
  setPeers(peers: ReadonlyMap<NodeId, string> | Readonly<Record<number, string>>): void;
  peerAddresses(): Map<NodeId, string>;
  connected(to: NodeId): boolean;
  connectedPeers(): NodeId[];
  writable(to: NodeId): boolean;
  onError(handler: (e: TransportError) => void): () => void;
  onDrain(handler: (peer: NodeId) => void): () => void;
  close(): Promise<void>;
}
