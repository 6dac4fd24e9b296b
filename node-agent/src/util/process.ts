// Process helpers shared by the CLI, the storage lock, the port reservations and the tests.

/** Whether a process with this pid exists (signal 0; EPERM: it exists, owned by someone else). */
export function alive(pid: number | null | undefined): boolean {
  if (pid === null || pid === undefined || !Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
