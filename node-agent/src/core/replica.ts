// PLACEHOLDER: being written; see the interface below.
import type { Message, ReplicaConfig, StartState, Ready, ReplicaStatus, SendResult, Version } from './types.ts';
import type { Prng } from './prng.ts';

export class Replica {
  constructor(_config: ReplicaConfig, _start: StartState, _prng: Prng) {}
  /** Feed one message received from the transport. Malformed/stale messages are ignored. */
  step(_message: Message): void {}
  /** Advance logical time by one tick. */
  tick(): void {}
  /** Queue an application multicast in a shard this node sends in. */
  send(_shardId: number, _payload: Uint8Array): SendResult { return { ok: false, reason: 'inactive' }; }
  /** Ask to leave the group gracefully. */
  leave(): void {}
  /** The driver installed a transferred state for the shard, up to and including `through`. */
  stateTransferred(_shardId: number, _through: Version): void {}
  hasReady(): boolean { return false; }
  ready(): Ready { throw new Error('todo'); }
  advance(): void {}
  status(): ReplicaStatus { throw new Error('todo'); }
  assertInvariants(): void {}
}
