// The simulated disk of one node: what Ready.persist made durable. It survives crashes (the node object
// is dropped, the disk is kept) and is what a restarted node reads back as its SavedState.

import { compareVersions, rememberViews, savedStateFrom, VERSION_NONE } from '../../node-agent/src/core/types.ts';
import type {
  AcceptedChange,
  Ballot,
  LogRecord,
  PersistRecord,
  RestartDecision,
  SavedState,
  SavedTrim,
  Version,
  View,
} from '../../node-agent/src/core/types.ts';

/** A persist record the disk refuses (the driver reports it as a violation). */
export class StorageError extends Error {}

export interface DiskLogSnapshot {
  shardId: number;
  records: { version: Version; sender: number; payload: Uint8Array }[];
}

export class Disk {
  /**
   * @param diskId this disk's identity (ReplicaConfig.diskId; the simulator numbers the disks of a node,
   * so a wiped disk comes back with a new id); 0: unknown
   */
  constructor(readonly diskId = 0) {}

  private readonly logs = new Map<number, LogRecord[]>();
  private lastView: View | null = null;
  private trims: SavedTrim[] = [];
  private highestViewIdSeen = -1;
  private restartPromised: Ballot | null = null;
  private acceptedChange: AcceptedChange | null = null;
  private restartAccepted: { ballot: Ballot; plan: RestartDecision } | null = null;
  /** Views installed or known decided just before the last one (see RestartReport.recentViews). */
  private recentViews: View[] = [];
  /** Shards whose state this node does not hold in full (a transfer was pending). */
  private readonly incompleteShards = new Set<number>();
  /** Number of records applied (for stats). */
  writes = 0;

  apply(record: PersistRecord): void {
    this.writes++;
    switch (record.kind) {
      case 'log':
        this.append(record.record);
        return;
      case 'view':
        this.lastView = clone(record.view);
        this.highestViewIdSeen = Math.max(this.highestViewIdSeen, record.view.viewId);
        this.recentViews = rememberViews(this.recentViews, [this.lastView]);
        return;
      case 'viewsDecided':
        this.recentViews = rememberViews(this.recentViews, clone(record.views));
        return;
      case 'trim': {
        const trim = clone(record.trim);
        const i = this.trims.findIndex((t) => t.viewId === trim.viewId);
        if (i >= 0) this.trims[i] = trim;
        else {
          this.trims.push(trim);
          this.trims.sort((a, b) => a.viewId - b.viewId);
        }
        return;
      }
      case 'viewIdSeen':
        this.highestViewIdSeen = Math.max(this.highestViewIdSeen, record.viewId);
        return;
      case 'truncate': {
        const log = this.logs.get(record.shardId);
        if (!log) return; // nothing held for that shard: nothing to cut
        let keep = log.length;
        while (keep > 0 && compareVersions(log[keep - 1]!.version, record.after) > 0) keep--;
        log.length = keep;
        return;
      }
      case 'shardState':
        if (record.complete) this.incompleteShards.delete(record.shardId);
        else this.incompleteShards.add(record.shardId);
        return;
      case 'restartPromise':
        this.restartPromised = { ...record.ballot };
        return;
      case 'viewAccepted':
        this.acceptedChange = clone(record.accepted);
        return;
      case 'restartAccept':
        this.restartAccepted = { ballot: { ...record.ballot }, plan: clone(record.plan) };
        return;
      default: {
        const never: never = record;
        throw new StorageError(`unknown persist record ${JSON.stringify(never)}`);
      }
    }
  }

  /** Appends to a shard's log. Versions must go strictly up; re-writing an identical record is a no-op. */
  private append(record: LogRecord): void {
    let log = this.logs.get(record.shardId);
    if (!log) {
      log = [];
      this.logs.set(record.shardId, log);
    }
    const tail = log[log.length - 1];
    if (tail !== undefined && compareVersions(record.version, tail.version) <= 0) {
      const same = log.find((r) => compareVersions(r.version, record.version) === 0);
      if (same && same.sender === record.sender && bytesEqual(same.payload, record.payload)) return;
      throw new StorageError(
        `log append out of order in shard ${record.shardId}: version ${fmtVersion(record.version)} after tail ${fmtVersion(tail.version)}` +
          (same ? ' (a different record already has that version)' : ''),
      );
    }
    log.push(copyRecord(record));
  }

  /** What a restarted node passes as `{kind: 'restart', saved}`; null when it never installed a view. */
  savedState(): SavedState | null {
    return savedStateFrom(clone({
      lastView: this.lastView, trims: this.trims, highestViewIdSeen: this.highestViewIdSeen, logTails: this.logTails(),
      restartPromised: this.restartPromised, restartAccepted: this.restartAccepted,
      incompleteShards: [...this.incompleteShards], acceptedChange: this.acceptedChange, recentViews: this.recentViews,
    }));
  }

  /** Per shard this disk holds a log for (possibly empty): the newest version in it. */
  logTails(): { shardId: number; version: Version }[] {
    return [...this.logs.keys()]
      .sort((a, b) => a - b)
      .map((shardId) => {
        const log = this.logs.get(shardId)!;
        const tail = log[log.length - 1];
        return { shardId, version: tail ? { ...tail.version } : { ...VERSION_NONE } };
      });
  }

  /** State transfer, serving side: copies of the shard's records up to and including `through`. */
  exportShard(shardId: number, through: Version): LogRecord[] {
    const log = this.logs.get(shardId) ?? [];
    return log.filter((r) => compareVersions(r.version, through) <= 0).map(copyRecord);
  }

  /** State transfer, receiving side: the shard's log becomes exactly `records` (sorted by version). */
  importShard(shardId: number, records: readonly LogRecord[]): void {
    const copy = records.map(copyRecord).sort((a, b) => compareVersions(a.version, b.version));
    for (let i = 1; i < copy.length; i++) {
      if (compareVersions(copy[i - 1]!.version, copy[i]!.version) === 0) {
        throw new StorageError(`state transfer of shard ${shardId} has two records with version ${fmtVersion(copy[i]!.version)}`);
      }
    }
    this.logs.set(shardId, copy);
  }

  /** The shard's log (read-only view; empty when none). */
  log(shardId: number): readonly LogRecord[] {
    return this.logs.get(shardId) ?? [];
  }

  hasLog(shardId: number): boolean {
    return this.logs.has(shardId);
  }

  shardIds(): number[] {
    return [...this.logs.keys()].sort((a, b) => a - b);
  }

  view(): View | null {
    return this.lastView;
  }

  viewIdSeen(): number {
    return this.highestViewIdSeen;
  }

  savedTrims(): readonly SavedTrim[] {
    return this.trims;
  }

  promised(): Ballot | null {
    return this.restartPromised;
  }

  accepted(): { ballot: Ballot; plan: RestartDecision } | null {
    return this.restartAccepted;
  }

  snapshot(): DiskLogSnapshot[] {
    return this.shardIds().map((shardId) => ({
      shardId,
      records: this.log(shardId).map((r) => ({ version: { ...r.version }, sender: r.sender, payload: r.payload.slice() })),
    }));
  }
}

export function copyRecord(r: LogRecord): LogRecord {
  return { shardId: r.shardId, version: { viewId: r.version.viewId, seq: r.version.seq }, sender: r.sender, payload: r.payload.slice() };
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function fmtVersion(v: Version): string {
  return `${v.viewId}:${v.seq}`;
}

function clone<T>(value: T): T {
  return structuredClone(value);
}
