/**
 * Processes, through node:child_process only (one process API for the whole worker).
 * `runCommand` runs a short command to its end and collects its output (uv, a Python
 * probe); long-lived children (guests, worker processes) use `spawn` directly, since
 * their streams and exits are theirs to handle. And whether a process is still there:
 * crash recovery (staging files and tables, env build directories, run staging) needs
 * it to tell a dead writer from a live one.
 */
import { type ChildProcess, type ExecFileException, execFile } from "node:child_process";

/** True when `pid` exists, including when it belongs to another user (EPERM). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

export interface RunCommandOptions {
  cwd?: string;
  /** The command's whole environment: nothing else is inherited. Default: this process's. */
  env?: NodeJS.ProcessEnv;
  /** Killed (SIGTERM) after this long; `timedOut` says so. Default: no limit. */
  timeoutMs?: number;
  /** Kills the command when aborted. */
  signal?: AbortSignal;
  /** Bytes kept of stdout and of stderr; a command printing more is killed. Default 64 MiB. */
  maxBuffer?: number;
  /** Run as this user and group (the caller must be root); supplementary groups are dropped. */
  uid?: number;
  gid?: number;
}

export interface CommandResult {
  /** Exited with code 0. */
  readonly ok: boolean;
  /** The exit code; null when it was killed by a signal or never started. */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Killed because `timeoutMs` passed. */
  readonly timedOut: boolean;
  /** Why it failed when the exit code does not say: not started (ENOENT, EACCES), aborted, too much output. */
  readonly error: ExecFileException | null;
}

const DEFAULT_MAX_BUFFER = 64 * 1024 * 1024;

/**
 * Runs `file args` (no shell) with stdin at end-of-file, waits for it to end, and
 * resolves with what happened; it never rejects, so each caller decides what a failure means.
 */
export function runCommand(file: string, args: readonly string[], options: RunCommandOptions = {}): Promise<CommandResult> {
  return new Promise((resolve) => {
    const notStarted = (error: ExecFileException) => resolve({ ok: false, code: null, signal: null, stdout: "", stderr: "", timedOut: false, error });
    let child: ChildProcess;
    try {
      child = execFile(
        file,
        args,
        {
          cwd: options.cwd,
          uid: options.uid,
          gid: options.gid,
          env: options.env,
          timeout: options.timeoutMs ?? 0,
          signal: options.signal,
          maxBuffer: options.maxBuffer ?? DEFAULT_MAX_BUFFER,
          encoding: "utf8",
        },
        (error: ExecFileException | null, stdout: string, stderr: string) => {
          if (error === null) return resolve({ ok: true, code: 0, signal: null, stdout, stderr, timedOut: false, error: null });
          // execFile puts the exit code in `code` when the command ran, the errno name when it did not start.
          const code = typeof error.code === "number" ? error.code : null;
          const signal = (error.signal as NodeJS.Signals | undefined) ?? null;
          // Killed by us with no error code of its own (too much output, aborted): the timeout did it.
          const timedOut = error.killed === true && error.code == null && options.signal?.aborted !== true;
          resolve({ ok: false, code, signal, stdout, stderr, timedOut, error: code === null ? error : null });
        },
      );
    } catch (err) {
      // Thrown at once for what the kernel refuses before exec (EPERM switching user): not started either.
      return notStarted(err as ExecFileException);
    }
    // Nothing is ever written to a command's stdin: close it, so one that reads it sees EOF instead of waiting.
    child.stdin?.end();
  });
}

/** One line for an error message: how the command ended. */
export function describeFailure(result: CommandResult, timeoutMs?: number): string {
  if (result.timedOut) return `timed out after ${timeoutMs} ms`;
  if (result.code !== null) return `exit code ${result.code}`;
  if (result.signal !== null) return `killed by ${result.signal}`;
  return result.error?.message ?? "failed";
}
