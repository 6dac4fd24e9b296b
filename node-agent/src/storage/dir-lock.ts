// An exclusive lock on a data directory: two agents must never write one journal. The lock is a file
// `LOCK` holding the owner's pid, created with O_EXCL; a lock whose process is gone (kill -9, crash) is
// stale and taken over.

import fs from 'node:fs';
import path from 'node:path';
import { alive } from '../util/process.ts';

export class DirLockError extends Error {
  override name = 'DirLockError';
}

/** Whether the lock's owner still runs: alive, and a node process (a reused pid of another program does not hold it). */
function ownerAlive(pid: number): boolean {
  if (!alive(pid)) return false;
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('node');
  } catch {
    return true; // no /proc: trust kill(0)
  }
}

export class DirLock {
  private released = false;

  private constructor(readonly file: string) {}

  /** Takes the lock of `dir` (created if needed) or throws DirLockError naming the holder. */
  static acquire(dir: string): DirLock {
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, 'LOCK');
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const fd = fs.openSync(file, 'wx', 0o644);
        fs.writeSync(fd, `${process.pid}\n`);
        fs.closeSync(fd);
        return new DirLock(file);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new DirLockError(`cannot lock data directory ${dir}: ${(e as Error).message}`);
      }
      let pid = NaN;
      try {
        pid = Number.parseInt(fs.readFileSync(file, 'utf8').trim(), 10);
      } catch {
        // vanished meanwhile: retry
      }
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && ownerAlive(pid)) {
        throw new DirLockError(`data directory ${dir} is in use by process ${pid} (another agent); give each agent its own dataDir`);
      }
      try {
        fs.unlinkSync(file); // stale: its process is gone
      } catch {
        // someone else removed it: retry
      }
    }
    throw new DirLockError(`cannot lock data directory ${dir}: the lock keeps changing hands`);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    try {
      if (fs.readFileSync(this.file, 'utf8').trim() === String(process.pid)) fs.unlinkSync(this.file);
    } catch {
      // already gone
    }
  }
}
