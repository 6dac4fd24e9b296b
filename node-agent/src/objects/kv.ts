// The built-in persistent versioned key-value type (`type: kv`), and the built-in append-only log
// (`type: log`). Keys are spread over the subgroup's shards by a hash of the key (`shardForKey`).

import type { Version } from '../core/types.ts';
import { compareVersions } from '../core/types.ts';
import { MethodError, ReplicatedObject } from './replicated.ts';
import type { Json, ReplicatedType } from './replicated.ts';

export const KEY_BYTES_MAX = 1024;
export const LIST_ENTRIES_MAX = 10_000;

/** FNV-1a (32 bit) of the key's UTF-8 bytes, modulo the shard count: stable across processes and versions. */
export function shardForKey(key: string, shardCount: number): number {
  let h = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(key)) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % shardCount;
}

interface KvEntry {
  version: Version;
  /** null: deleted at this version. */
  value: string | null;
}

export interface KvValue {
  key: string;
  value: string;
  /** Version of the update that wrote this value. */
  version: Version;
}

function checkKey(key: unknown): string {
  if (typeof key !== 'string' || key.length === 0) throw new MethodError(`key ${JSON.stringify(key)} is not a non-empty string`);
  if (new TextEncoder().encode(key).byteLength > KEY_BYTES_MAX) throw new MethodError(`key is longer than ${KEY_BYTES_MAX} bytes`);
  return key;
}

function parseVersion(v: unknown): Version {
  if (typeof v === 'object' && v !== null && Number.isInteger((v as Version).viewId) && Number.isInteger((v as Version).seq)) return v as Version;
  throw new MethodError(`version ${JSON.stringify(v)} is not {viewId, seq}`);
}

/**
 * Versioned key-value map: every put and delete is recorded at its version, so reads can ask for the
 * state as of any version still in the history.
 */
export class KvStore extends ReplicatedObject {
  static override readonly ordered = ['put', 'del'] as const;
  static override readonly queries = ['get', 'getAt', 'list', 'size'] as const;

  private readonly keys = new Map<string, KvEntry[]>();
  private live = 0;

  put(key: unknown, value: unknown): Json {
    const k = checkKey(key);
    if (typeof value !== 'string') throw new MethodError(`value of ${JSON.stringify(k)} is not a string`);
    const history = this.history(k);
    const previous = history[history.length - 1];
    if (!previous || previous.value === null) this.live++;
    history.push({ version: this.update.version, value });
    return { version: versionJson(this.update.version), previous: previous?.value ?? null };
  }

  del(key: unknown): Json {
    const k = checkKey(key);
    const history = this.keys.get(k);
    const previous = history?.[history.length - 1];
    if (!history || !previous || previous.value === null) return { version: versionJson(this.update.version), deleted: false };
    history.push({ version: this.update.version, value: null });
    this.live--;
    return { version: versionJson(this.update.version), deleted: true };
  }

  get(key: unknown): Json {
    const k = checkKey(key);
    const last = this.keys.get(k)?.at(-1);
    if (!last || last.value === null) return null;
    return { key: k, value: last.value, version: versionJson(last.version) };
  }

  getAt(key: unknown, version: unknown): Json {
    const k = checkKey(key);
    const at = parseVersion(version);
    const history = this.keys.get(k) ?? [];
    let found: KvEntry | null = null;
    for (const e of history) {
      if (compareVersions(e.version, at) <= 0) found = e;
      else break;
    }
    if (!found || found.value === null) return null;
    return { key: k, value: found.value, version: versionJson(found.version) };
  }

  list(prefix: unknown, limit: unknown = LIST_ENTRIES_MAX): Json {
    if (typeof prefix !== 'string') throw new MethodError(`prefix ${JSON.stringify(prefix)} is not a string`);
    const max = typeof limit === 'number' && Number.isInteger(limit) && limit > 0 ? Math.min(limit, LIST_ENTRIES_MAX) : LIST_ENTRIES_MAX;
    const out: Json[] = [];
    for (const key of [...this.keys.keys()].filter((k) => k.startsWith(prefix)).sort()) {
      const last = this.keys.get(key)!.at(-1)!;
      if (last.value === null) continue;
      out.push({ key, value: last.value, version: versionJson(last.version) });
      if (out.length >= max) break;
    }
    return out;
  }

  size(): Json {
    return this.live;
  }

  override snapshot(): Json {
    return [...this.keys].map(([k, h]) => [k, h.map((e) => [e.version.viewId, e.version.seq, e.value])]) as Json;
  }

  override restore(snapshot: Json): void {
    this.keys.clear();
    this.live = 0;
    for (const [k, h] of snapshot as [string, [number, number, string | null][]][]) {
      const entries = h.map(([viewId, seq, value]) => ({ version: { viewId, seq }, value }));
      this.keys.set(k, entries);
      if (entries.at(-1)?.value != null) this.live++;
    }
  }

  private history(key: string): KvEntry[] {
    let h = this.keys.get(key);
    if (!h) {
      h = [];
      this.keys.set(key, h);
    }
    return h;
  }
}

/** Append-only replicated log: `append` returns the entry's index. */
export class LogObject extends ReplicatedObject {
  static override readonly ordered = ['append'] as const;
  static override readonly queries = ['read', 'length'] as const;

  private readonly entries: { version: Version; entry: Json }[] = [];

  append(entry: unknown): Json {
    this.entries.push({ version: this.update.version, entry: (entry ?? null) as Json });
    return { index: this.entries.length - 1, version: versionJson(this.update.version) };
  }

  read(from: unknown = 0, count: unknown = 100): Json {
    const start = typeof from === 'number' && Number.isInteger(from) && from >= 0 ? from : 0;
    const n = typeof count === 'number' && Number.isInteger(count) && count > 0 ? Math.min(count, LIST_ENTRIES_MAX) : 100;
    return this.entries.slice(start, start + n).map((e, i) => ({ index: start + i, entry: e.entry, version: versionJson(e.version) }));
  }

  length(): Json {
    return this.entries.length;
  }

  override snapshot(): Json {
    return this.entries.map((e) => [e.version.viewId, e.version.seq, e.entry]) as Json;
  }

  override restore(snapshot: Json): void {
    this.entries.length = 0;
    for (const [viewId, seq, entry] of snapshot as [number, number, Json][]) this.entries.push({ version: { viewId, seq }, entry });
  }
}

export function versionJson(v: Version): Json {
  return { viewId: v.viewId, seq: v.seq };
}

/** Types every agent knows, by the subgroup `type` of the manifest. `custom:<name>` types are registered by the application. */
export const BUILTIN_TYPES: Readonly<Record<string, ReplicatedType>> = Object.freeze({ kv: KvStore, log: LogObject });

