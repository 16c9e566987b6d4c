/**
 * Whether a process is still there. Crash recovery (staging files and tables, env
 * build directories, run staging) needs it to tell a dead writer from a live one.
 */

/** True when `pid` exists, including when it belongs to another user (EPERM). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
