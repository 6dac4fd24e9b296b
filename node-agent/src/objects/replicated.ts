// The replicated-object API: what an application developer writes.
//
// A replicated type is a class extending `ReplicatedObject`. Its static `ordered` list names the methods
// that are state-machine updates: the agent multicasts each call in the shard, every member applies it
// in the same order (at the same version), and each member's return value goes back to the caller.
// Its static `queries` list names read-only methods, answered by one member (p2p). The same update
// methods can be sent `raw` (unordered, best effort) when the subgroup's delivery mode is raw.
//
// State that must be versioned lives in `Persistent` fields: `set` records the value at the version of
// the update being applied; `get()` reads the latest value and `getAt(version)` the value as of a version.
// For persistent subgroups the durable part is the shard's log of updates (the agent replays it on
// restart and ships it to joiners); the versioned fields are rebuilt from it. Volatile subgroups move
// their state to joiners as a snapshot (`snapshot()` / `restore()`, JSON of the Persistent fields by
// default).
//
// Methods take and return JSON values. They must be deterministic: the same updates in the same order
// give the same state on every member (no clocks, no randomness, no I/O).

import type { NodeId, Version } from '../core/types.ts';
import { compareVersions, VERSION_NONE } from '../core/types.ts';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** What an ordered (or raw) method sees about the update it applies. */
export interface UpdateContext {
  /** The update's version: (view id, sequence number in the shard). */
  version: Version;
  /** Node id of the member that multicast the update. */
  sender: NodeId;
  /** Node id of the member that (or whose client) asked for it. */
  origin: NodeId;
  mode: 'ordered' | 'raw';
  shardIndex: number;
}

/** A method failure that goes back to the caller as an error reply (not a crash of the agent). */
export class MethodError extends Error {
  override name = 'MethodError';
  constructor(
    message: string,
    /** HTTP-like status a client API may use (400 bad argument, 404 not found). */
    readonly status = 400,
  ) {
    super(message);
  }
}

const CURRENT = Symbol('current update');
const FIELDS = Symbol('persistent fields');

export abstract class ReplicatedObject {
  /** Methods that are ordered updates. */
  static readonly ordered: readonly string[] = [];
  /** Read-only methods answered by one member. */
  static readonly queries: readonly string[] = [];

  /** @internal The update being applied (set by the host around each call). */
  [CURRENT]: UpdateContext | null = null;
  /** @internal Persistent fields, in creation order. */
  [FIELDS]: Persistent<Json>[] = [];

  /** The update being applied (inside an ordered or raw method only). */
  protected get update(): UpdateContext {
    const ctx = this[CURRENT];
    if (ctx === null) throw new Error('this.update is only available inside an ordered or raw method');
    return ctx;
  }

  /** Called after each delivered update was applied. */
  onDelivery?(ctx: UpdateContext): void;
  /** Called when a new view is installed (members of the group and of this shard). */
  onViewChange?(view: { viewId: number; members: NodeId[]; shardMembers: NodeId[] }): void;
  /** Called when the shard's persistence frontier moves: every update up to `version` is on every member's disk. */
  onPersisted?(version: Version): void;

  /** JSON state for a state transfer of a volatile shard (default: every Persistent field's history). */
  snapshot(): Json {
    return this[FIELDS].map((f) => f.history());
  }

  /** Inverse of snapshot(). */
  restore(snapshot: Json): void {
    if (!Array.isArray(snapshot) || snapshot.length !== this[FIELDS].length) {
      throw new Error(`snapshot does not match this type (${this[FIELDS].length} persistent fields)`);
    }
    this[FIELDS].forEach((f, i) => f.restoreHistory(snapshot[i] as Json));
  }
}

/** Constructor of a replicated type (what the agent instantiates, once per shard it serves). */
export interface ReplicatedType<T extends ReplicatedObject = ReplicatedObject> {
  new (): T;
  readonly ordered: readonly string[];
  readonly queries: readonly string[];
}

interface Entry<T> {
  version: Version;
  value: T;
}

/**
 * A versioned field. Create it in a field initializer: `count = new Persistent(this, 0)`.
 * Histories are kept in memory (bounded by `historyMax` versions; older ones are folded into the base).
 */
export class Persistent<T extends Json> {
  private entries: Entry<T>[] = [];
  private base: T;

  constructor(
    private readonly owner: ReplicatedObject,
    private readonly initial: T,
    private readonly historyMax = 100_000,
  ) {
    this.base = initial;
    owner[FIELDS].push(this as unknown as Persistent<Json>);
  }

  /** The latest value. */
  get(): T {
    return this.entries.length > 0 ? this.entries[this.entries.length - 1]!.value : this.base;
  }

  /** The value as of `version` (the newest set at or before it); the initial value before any. */
  getAt(version: Version): T {
    let lo = 0;
    let hi = this.entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (compareVersions(this.entries[mid]!.version, version) <= 0) lo = mid + 1;
      else hi = mid;
    }
    return lo === 0 ? this.base : this.entries[lo - 1]!.value;
  }

  /** Version of the latest set (VERSION_NONE if never set). */
  latestVersion(): Version {
    return this.entries.length > 0 ? this.entries[this.entries.length - 1]!.version : VERSION_NONE;
  }

  /** Sets the value at the version of the update being applied. Only inside an ordered or raw method. */
  set(value: T): void {
    const ctx = this.owner[CURRENT];
    if (ctx === null) throw new Error('Persistent.set outside an update (only ordered or raw methods may change state)');
    const last = this.entries[this.entries.length - 1];
    if (last && compareVersions(last.version, ctx.version) === 0) last.value = value;
    else this.entries.push({ version: ctx.version, value });
    if (this.entries.length > this.historyMax) this.base = this.entries.shift()!.value;
  }

  /** @internal */
  history(): Json {
    return { base: this.base, entries: this.entries.map((e) => ({ v: [e.version.viewId, e.version.seq], x: e.value })) } as Json;
  }

  /** @internal */
  restoreHistory(h: Json): void {
    const o = h as { base: T; entries: { v: [number, number]; x: T }[] };
    this.base = o.base ?? this.initial;
    this.entries = (o.entries ?? []).map((e) => ({ version: { viewId: e.v[0], seq: e.v[1] }, value: e.x }));
  }
}

// ------------------------------------------------------------------------------------------------
// The host: one object per shard, fed updates in delivery order.

/** An invocation as it travels in a multicast payload. */
export interface Invocation {
  /** Method name. */
  m: string;
  /** Arguments (JSON). */
  a: Json[];
  /** Origin node id (who waits for the replies; 0 for fire-and-forget). */
  o: NodeId;
  /** Request id at the origin. */
  r: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeInvocation(inv: Invocation): Uint8Array {
  return encoder.encode(JSON.stringify(inv));
}

/** Decodes a payload; null if it is not an invocation (it is then delivered to nobody's method). */
export function decodeInvocation(payload: Uint8Array): Invocation | null {
  // Invocations are JSON objects; anything else (e.g. opaque benchmark payloads) is skipped cheaply.
  if (payload.byteLength < 2 || payload[0] !== 0x7b) return null;
  try {
    const v = JSON.parse(decoder.decode(payload)) as Partial<Invocation>;
    if (typeof v !== 'object' || v === null || typeof v.m !== 'string' || !Array.isArray(v.a) || typeof v.o !== 'number' || typeof v.r !== 'number') return null;
    return v as Invocation;
  } catch {
    return null;
  }
}

export type MethodOutcome = { ok: true; value: Json } | { ok: false; error: string; status: number };

/** Runs a type's methods on one shard's object. */
export class ObjectHost {
  readonly object: ReplicatedObject;
  /** Newest version applied. */
  applied: Version = VERSION_NONE;
  private readonly ordered: Set<string>;
  private readonly queries: Set<string>;

  constructor(
    readonly type: ReplicatedType,
    readonly shardIndex: number,
  ) {
    this.object = new type();
    this.ordered = new Set(type.ordered);
    this.queries = new Set(type.queries);
    for (const m of [...this.ordered, ...this.queries]) {
      if (typeof (this.object as unknown as Record<string, unknown>)[m] !== 'function') {
        throw new Error(`replicated type ${type.name}: ${m} is listed but is not a method`);
      }
    }
  }

  isOrdered(method: string): boolean {
    return this.ordered.has(method);
  }

  isQuery(method: string): boolean {
    return this.queries.has(method);
  }

  /** Applies a delivered update. Errors thrown by the method become error replies (same on every member). */
  apply(inv: Invocation, version: Version, sender: NodeId, mode: 'ordered' | 'raw'): MethodOutcome {
    if (mode === 'ordered') this.applied = version;
    if (!this.ordered.has(inv.m)) return { ok: false, error: `${inv.m} is not an ordered method of ${this.type.name}`, status: 400 };
    const ctx: UpdateContext = { version, sender, origin: inv.o, mode, shardIndex: this.shardIndex };
    this.object[CURRENT] = ctx;
    try {
      const fn = (this.object as unknown as Record<string, (...args: unknown[]) => Json>)[inv.m]!;
      const value = fn.apply(this.object, inv.a);
      return { ok: true, value: value === undefined ? null : value };
    } catch (e) {
      return outcomeOf(e);
    } finally {
      this.object[CURRENT] = null;
      try {
        this.object.onDelivery?.(ctx);
      } catch {
        // A callback failure must not change replicated state handling.
      }
    }
  }

  query(method: string, args: Json[]): MethodOutcome {
    if (!this.queries.has(method)) return { ok: false, error: `${method} is not a query of ${this.type.name}`, status: 400 };
    try {
      const fn = (this.object as unknown as Record<string, (...a: unknown[]) => Json>)[method]!;
      const value = fn.apply(this.object, args);
      return { ok: true, value: value === undefined ? null : value };
    } catch (e) {
      return outcomeOf(e);
    }
  }
}

function outcomeOf(e: unknown): MethodOutcome {
  if (e instanceof MethodError) return { ok: false, error: e.message, status: e.status };
  return { ok: false, error: e instanceof Error ? e.message : String(e), status: 500 };
}
