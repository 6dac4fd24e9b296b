// The seed of the replica's Prng. The replica draws its incarnation from it when it starts, and peers
// tell a restarted node from a late message of its previous run by that incarnation: every start of a
// node must draw a new one. The seed comes from the OS's random source, not from the node id and the
// pid (in the agent image the agent is always PID 1, so that seed was the same on every restart).

import { randomBytes } from 'node:crypto';

/** A fresh 32-bit unsigned seed for a new Replica's Prng (any value is valid, 0 included). */
export function replicaSeed(): number {
  return randomBytes(4).readUInt32BE(0);
}
