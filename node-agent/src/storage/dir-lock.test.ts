import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DirLock, DirLockError } from './dir-lock.ts';

test('a data directory is locked by one process; a stale lock is taken over; release frees it', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dirlock-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // Held by another live node process.
  const holder = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)']);
  t.teardown(() => holder.kill('SIGKILL'));
  await new Promise((r) => holder.once('spawn', r));
  fs.writeFileSync(path.join(dir, 'LOCK'), `${holder.pid}\n`);
  const err = t.throws(() => DirLock.acquire(dir), { instanceOf: DirLockError });
  t.regex(err!.message, new RegExp(`in use by process ${holder.pid}`));
  // Its process dies: the lock is stale.
  holder.kill('SIGKILL');
  await new Promise((r) => holder.once('exit', r));
  const lock = DirLock.acquire(dir);
  t.is(fs.readFileSync(path.join(dir, 'LOCK'), 'utf8').trim(), String(process.pid));
  lock.release();
  t.false(fs.existsSync(path.join(dir, 'LOCK')));
  DirLock.acquire(dir).release();
});
