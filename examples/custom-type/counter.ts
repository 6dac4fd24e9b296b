// A custom replicated type: a set of named counters with versioned values.
//
// Run it as the agent of a group whose manifest has a subgroup `type: custom:counter`:
//   node --import tsx examples/custom-type/agent.ts --config agent.yaml
// and call it through any member's HTTP API:
//   curl -XPOST localhost:8081/v1/subgroups/counters/shards/0/ordered/add -d '["visits", 1]'
//   curl -XPOST localhost:8081/v1/subgroups/counters/shards/0/query/get -d '["visits"]'

import { MethodError, Persistent, ReplicatedObject } from '../../node-agent/src/index.ts';
import type { Json, Version } from '../../node-agent/src/index.ts';

export class Counter extends ReplicatedObject {
  /** Ordered methods: every member applies them in the same order, at the same version. */
  static override readonly ordered = ['add', 'reset'];
  /** Read-only methods, answered by one member. */
  static override readonly queries = ['get', 'getAt', 'persistedThrough'];

  /** Versioned state: one map of totals; every change is recorded at its version. */
  private readonly totals = new Persistent<Record<string, number>>(this, {});
  private persisted: Version = { viewId: -1, seq: -1 };

  add(name: unknown, amount: unknown = 1): Json {
    if (typeof name !== 'string' || name === '') throw new MethodError('name must be a non-empty string');
    if (typeof amount !== 'number' || !Number.isFinite(amount)) throw new MethodError('amount must be a number');
    const next = { ...this.totals.get(), [name]: (this.totals.get()[name] ?? 0) + amount };
    this.totals.set(next);
    // Each member returns its own view of the result; the caller gets every member's reply.
    return { name, total: next[name]!, version: this.update.version as unknown as Json };
  }

  reset(name: unknown): Json {
    if (typeof name !== 'string') throw new MethodError('name must be a string');
    const next = { ...this.totals.get() };
    delete next[name];
    this.totals.set(next);
    return null;
  }

  get(name: unknown): Json {
    return this.totals.get()[String(name)] ?? 0;
  }

  getAt(name: unknown, viewId: unknown, seq: unknown): Json {
    return this.totals.getAt({ viewId: Number(viewId), seq: Number(seq) })[String(name)] ?? 0;
  }

  /** The persistence frontier callback: every update up to this version is on every member's disk. */
  override onPersisted(version: Version): void {
    this.persisted = version;
  }

  persistedThrough(): Json {
    return this.persisted as unknown as Json;
  }
}
