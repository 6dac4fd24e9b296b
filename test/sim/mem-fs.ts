// An in-memory file system for the simulator: the `StorageFs` seam of the real LogStore, with the
// durability rules of a POSIX file system on a machine that can lose power, and fault injection.
//
// Durability model (what survives `machineCrash()`):
//  - file contents up to the length they had at their last `fsyncSync` (bytes written after it are lost;
//    a file truncated since its last fsync keeps the shorter length: the cut bytes were garbage anyway);
//  - directory entries (create, rename, remove) as of the last fsync of the directory.
// A process crash (`SimNode.stop`) loses nothing here: the OS keeps what was written.
//
// Faults: `tearNextWrite(fraction)` makes the next write put only a prefix of its bytes on the file
// (rounded down) and then throws `SimCrash`: the process died inside the write. `corruptEarlyRecord()` flips a
// byte inside the journal's first record, which an intact record follows: the store must refuse to open.
//
// The LogStore only appends to a file, truncates at recovery and writes new files for rewrites; an
// overwrite of bytes that were already fsynced is not modelled and throws (so a change to the store that
// starts overwriting is noticed here rather than silently mis-simulated).
import type { StorageFs } from '../../node-agent/src/storage/log-store.ts';

/** Thrown by a torn write: the process died in the middle of it. */
export class SimCrash extends Error {
  override name = 'SimCrash';
}

class MemFile {
  data: Buffer = Buffer.alloc(256);
  length = 0;
  /** Length as of the last fsync (what a machine crash keeps). */
  durableLength = 0;

  ensure(capacity: number): void {
    if (capacity <= this.data.length) return;
    const next = Buffer.alloc(Math.max(capacity, this.data.length * 2));
    this.data.copy(next, 0, 0, this.length);
    this.data = next;
  }
}

type Fd = { kind: 'file'; file: MemFile } | { kind: 'dir'; path: string };

function fsError(code: string, message: string): Error {
  const e = new Error(`${code}: ${message}`) as Error & { code: string };
  e.code = code;
  return e;
}

export class MemFs {
  private names = new Map<string, MemFile>();
  private durableNames = new Map<string, MemFile>();
  private readonly dirs = new Set<string>();
  private readonly fds = new Map<number, Fd>();
  private nextFd = 3;
  private tear: number | null = null;
  /** Torn writes that happened (the store wraps the SimCrash in its own error). */
  tornWrites = 0;
  /**
   * Set by a torn write: the process is dead, so nothing it still tries (the store's cleanup after the
   * failed write) reaches the files. Cleared by processCrash / machineCrash.
   */
  private dead = false;
  /** Counters for the trace and tests. */
  fsyncs = 0;
  writes = 0;

  /** The next write keeps only `fraction` (0 <= fraction < 1) of its bytes, then throws SimCrash. */
  tearNextWrite(fraction: number): void {
    this.tear = fraction;
  }

  /** Disarms a torn write that did not happen (the batch wrote nothing). */
  cancelTear(): void {
    this.tear = null;
  }

  /** Power loss: everything not fsynced is gone (open descriptors die with the machine). */
  machineCrash(): { lostBytes: number } {
    let lostBytes = 0;
    this.names = new Map(this.durableNames);
    for (const f of new Set(this.names.values())) {
      lostBytes += Math.max(0, f.length - f.durableLength);
      f.length = Math.min(f.length, f.durableLength);
    }
    this.fds.clear();
    this.tear = null;
    this.dead = false;
    return { lostBytes };
  }

  /** A process crash: descriptors close, the data stays. */
  processCrash(): void {
    this.fds.clear();
    this.tear = null;
    this.dead = false;
  }

  private alive(what: string): void {
    if (this.dead) throw new SimCrash(`${what} after the process died`);
  }

  /**
   * Flips one byte in the body of the first record of `file` (after the 16-byte header and the 8-byte frame
   * header), if a second record follows it; returns whether it did.
   */
  corruptEarlyRecord(file: string, flip: number): boolean {
    const f = this.names.get(file);
    if (!f || f.length < 16 + 8 + 1) return false;
    const firstLen = f.data.readUInt32LE(16);
    const secondAt = 16 + 8 + firstLen;
    if (secondAt + 8 + 1 > f.length) return false;
    const at = 16 + 8 + (flip % firstLen);
    f.data[at] = f.data[at]! ^ 0x5a;
    return true;
  }

  /** Bytes of a file (a copy), or null. */
  read(file: string): Buffer | null {
    const f = this.names.get(file);
    return f ? Buffer.from(f.data.subarray(0, f.length)) : null;
  }

  private file(fd: number): MemFile {
    const d = this.fds.get(fd);
    if (!d) throw fsError('EBADF', `bad file descriptor ${fd}`);
    if (d.kind !== 'file') throw fsError('EISDIR', 'is a directory');
    return d.file;
  }

  /** The StorageFs the LogStore takes. */
  readonly fs: StorageFs = {
    mkdirSync: ((p: string) => {
      this.dirs.add(p);
      return undefined;
    }) as unknown as StorageFs['mkdirSync'],
    existsSync: ((p: string) => this.names.has(p) || this.dirs.has(p)) as StorageFs['existsSync'],
    rmSync: ((p: string) => {
      this.alive('rm');
      this.names.delete(p);
    }) as StorageFs['rmSync'],
    renameSync: ((from: string, to: string) => {
      this.alive('rename');
      const f = this.names.get(from);
      if (!f) throw fsError('ENOENT', `rename ${from}`);
      this.names.delete(from);
      this.names.set(to, f);
    }) as StorageFs['renameSync'],
    openSync: ((p: string, flags: string) => {
      this.alive('open');
      const fd = this.nextFd++;
      if (this.dirs.has(p)) {
        this.fds.set(fd, { kind: 'dir', path: p });
        return fd;
      }
      let f = this.names.get(p);
      if (flags === 'w') {
        f = new MemFile();
        this.names.set(p, f);
      } else if (!f) throw fsError('ENOENT', `open ${p}`);
      this.fds.set(fd, { kind: 'file', file: f });
      return fd;
    }) as StorageFs['openSync'],
    closeSync: ((fd: number) => {
      if (!this.fds.delete(fd)) throw fsError('EBADF', `close ${fd}`);
    }) as StorageFs['closeSync'],
    fstatSync: ((fd: number) => ({ size: this.file(fd).length })) as unknown as StorageFs['fstatSync'],
    ftruncateSync: ((fd: number, len?: number) => {
      this.alive('ftruncate');
      const f = this.file(fd);
      const n = len ?? 0;
      if (n < f.length) f.length = n;
      else {
        f.ensure(n);
        f.data.fill(0, f.length, n);
        f.length = n;
      }
      f.durableLength = Math.min(f.durableLength, f.length);
    }) as StorageFs['ftruncateSync'],
    fsyncSync: ((fd: number) => {
      const d = this.fds.get(fd);
      if (!d) throw fsError('EBADF', `fsync ${fd}`);
      this.alive('fsync');
      this.fsyncs++;
      if (d.kind === 'dir') this.durableNames = new Map(this.names);
      else d.file.durableLength = d.file.length;
    }) as StorageFs['fsyncSync'],
    readSync: ((fd: number, buf: Uint8Array, offset: number, length: number, position: number) => {
      const f = this.file(fd);
      if (position >= f.length) return 0;
      const n = Math.min(length, f.length - position);
      buf.set(f.data.subarray(position, position + n), offset);
      return n;
    }) as unknown as StorageFs['readSync'],
    writeSync: ((fd: number, buf: Uint8Array, offset: number, length: number, position: number) => {
      this.alive('write');
      const f = this.file(fd);
      if (position < f.durableLength) throw new Error(`MemFs: an overwrite of fsynced bytes (at ${position}, durable up to ${f.durableLength}) is not modelled`);
      this.writes++;
      let n = length;
      const tear = this.tear;
      if (tear !== null) n = Math.floor(length * tear);
      f.ensure(position + n);
      if (position > f.length) f.data.fill(0, f.length, position);
      f.data.set(buf.subarray(offset, offset + n), position);
      f.length = Math.max(f.length, position + n);
      if (tear !== null) {
        this.tear = null;
        this.tornWrites++;
        this.dead = true;
        throw new SimCrash(`the process died inside a write of ${length} bytes (${n} written)`);
      }
      return n;
    }) as unknown as StorageFs['writeSync'],
  };
}
