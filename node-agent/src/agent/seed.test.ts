// The agent seeds each replica so that every start of a node draws a new incarnation, even when the
// process always has the same pid (PID 1 in the agent image).
import test from 'ava';
import { Prng } from '../core/prng.ts';
import { Replica } from '../core/replica.ts';
import { DEFAULT_TIMING, type GroupPolicy, type ReplicaConfig } from '../core/types.ts';
import { replicaSeed } from './seed.ts';

const policy: GroupPolicy = {
  subgroups: [{ name: 'kv', shards: 1, minNodesPerShard: 1, maxNodesPerShard: 3, deliveryMode: 'ordered', persistent: true }],
};
const config: ReplicaConfig = { ...DEFAULT_TIMING, nodeId: 3, policy };

/** The incarnation a joining replica announces in its first join request. */
function joinIncarnation(seed: number): number {
  const r = new Replica(config, { kind: 'join', contacts: [2] }, new Prng(seed));
  for (let i = 0; i < 10_000; i++) {
    r.tick();
    while (r.hasReady()) {
      const rd = r.ready();
      r.advance();
      for (const e of rd.send) if (e.message.kind === 'joinRequest') return e.message.incarnation;
    }
  }
  throw new Error('the joining replica sent no join request');
}

test('two starts of the same node in the same process draw different seeds and incarnations', (t) => {
  const seeds = Array.from({ length: 8 }, () => replicaSeed());
  for (const s of seeds) t.true(Number.isInteger(s) && s >= 0 && s < 2 ** 32, `seed ${s} is not a 32-bit unsigned integer`);
  t.is(new Set(seeds).size, seeds.length, `seeds repeat: ${seeds.join(', ')}`);
  const incarnations = seeds.map(joinIncarnation);
  t.is(new Set(incarnations).size, incarnations.length, `incarnations repeat: ${incarnations.join(', ')}`);
});
