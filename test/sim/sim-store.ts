// A simulated node's storage: the agent's real LogStore (journal format, checksums, torn-tail recovery,
// compaction, fsync placement) over the in-memory file system of mem-fs.ts, with its faults. The model
// disk of storage.ts is what LogStore is checked against (node-agent/src/storage/log-store.test.ts).
//
// Lifecycle: the store is open while the process runs. `processCrash()` drops it (nothing is lost);
// `machineCrash()` drops it and everything that was not fsynced; the next `open()` (at the node's start)
// replays the journal as the agent would, cutting a torn tail. A journal that does not open (corruption)
// leaves the node unable to start: `open()` returns the error, and the cluster replaces the volume.
import { CorruptionError, JOURNAL_FILE, LogStore } from '../../node-agent/src/storage/log-store.ts';
import type { LogRecord, PersistRecord, SavedState, Version } from '../../node-agent/src/core/types.ts';
import { MemFs, SimCrash } from './mem-fs.ts';
import type { DiskLogSnapshot } from './storage.ts';

const DATA_DIR = '/data';
const JOURNAL = `${DATA_DIR}/${JOURNAL_FILE}`;

export { SimCrash };

export class SimStore {
  readonly memFs = new MemFs();
  private store: LogStore | null = null;
  /** What the last open's recovery reported (a torn tail cut), for the trace. */
  lastRecovery: string | null = null;
  /** Batches applied (for stats). */
  writes = 0;

  /** @param policy the LogStore fsync policy: 'fsync' (the simulator's), 'os' only for a broken-rule run */
  constructor(
    readonly diskId: number,
    private readonly policy: 'fsync' | 'os' = 'fsync',
  ) {
    const error = this.open();
    if (error !== null) throw new Error(`a new store did not open: ${error}`);
  }

  /** Opens the journal if it is not open; the corruption error if it cannot be opened, else null. */
  open(): string | null {
    if (this.store !== null) return null;
    this.lastRecovery = null;
    try {
      this.store = LogStore.open(DATA_DIR, {
        fsync: this.policy,
        fs: this.memFs.fs,
        newDiskId: () => this.diskId,
        onRecovery: (info) => {
          this.lastRecovery = info.reason;
        },
      });
      return null;
    } catch (e) {
      if (e instanceof CorruptionError) return e.message;
      throw e;
    }
  }

  private get opened(): LogStore {
    if (this.store === null) {
      const error = this.open();
      if (error !== null) throw new Error(`the store does not open: ${error}`);
    }
    return this.store!;
  }

  get isOpen(): boolean {
    return this.store !== null;
  }

  /** The process died: the store object goes, the written data stays. */
  processCrash(): void {
    this.store = null;
    this.memFs.processCrash();
  }

  /** The machine lost power: unsynced bytes and directory entries are gone too. */
  machineCrash(): { lostBytes: number } {
    this.store = null;
    return this.memFs.machineCrash();
  }

  /** The next write tears after `fraction` of its bytes and the process dies (SimCrash). */
  tearNextWrite(fraction: number): void {
    this.memFs.tearNextWrite(fraction);
  }

  /** Torn writes so far (see MemFs.tearNextWrite). */
  get tornWrites(): number {
    return this.memFs.tornWrites;
  }

  cancelTear(): void {
    this.memFs.cancelTear();
  }

  /** While the node is down: flip a byte of the journal's first record (if another follows it). */
  corrupt(flip: number): boolean {
    if (this.store !== null) throw new Error('corrupt the store only while its process is down');
    return this.memFs.corruptEarlyRecord(JOURNAL, flip);
  }

  /** Makes a Ready's persist records durable, as the agent's driver does (one batch). */
  applyBatch(records: readonly PersistRecord[]): void {
    if (records.length === 0) return;
    this.writes++;
    this.opened.apply([...records]);
  }

  apply(record: PersistRecord): void {
    this.applyBatch([record]);
  }

  savedState(): SavedState | null {
    return this.opened.savedState();
  }

  log(shardId: number): LogRecord[] {
    return this.opened.hasLog(shardId) ? this.opened.log(shardId) : [];
  }

  hasLog(shardId: number): boolean {
    return this.opened.hasLog(shardId);
  }

  shardIds(): number[] {
    return this.opened.shardIds();
  }

  logTails(): { shardId: number; version: Version }[] {
    return this.opened.logTails();
  }

  exportShard(shardId: number, through: Version): LogRecord[] {
    return this.opened.exportShard(shardId, through);
  }

  importShard(shardId: number, records: readonly LogRecord[]): void {
    this.opened.importShard(shardId, [...records]);
  }

  /** The logs as they are (opening the journal if needed; empty if it does not open). */
  snapshot(): DiskLogSnapshot[] {
    if (this.store === null && this.open() !== null) return [];
    return this.shardIds().map((shardId) => ({
      shardId,
      records: this.log(shardId).map((r) => ({ version: { ...r.version }, sender: r.sender, payload: r.payload.slice() })),
    }));
  }
}
