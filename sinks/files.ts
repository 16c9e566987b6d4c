/**
 * Crash-safe file publishing for file sinks: write under a staging name beside the
 * target, fsync, then rename (or link, for mode "error") to the final name. A reader
 * never sees a partial file under a final name.
 *
 * Staging names are `.<final name>.stg-<job id>-<host tag>-<pid>`: hidden from globs,
 * and they say who wrote them, so `removeStaleStaging` can tell the leftovers of a
 * crashed process from the staging of a live worker sharing the same output root.
 *
 * For the all-or-nothing commit of a job's sinks (sinks/api.ts `resolve`), a publish can
 * keep the file it replaces as a backup, `.<final name>.bak-<job id>-<host tag>-<pid>`,
 * and `resolvePublished` puts it back (rollback) or deletes it (finish). Backups are not
 * staging: only the commit journal that names them removes them.
 */
import { createHash } from "node:crypto";
import { closeSync, constants as fsConstants, fsync, linkSync, openSync, renameSync, rmSync, statSync } from "node:fs";
import { copyFile, link, open, readdir, rename, rm, stat, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { basename, dirname, extname, join } from "node:path";
import { Errors } from "../core/kernel/errors.js";
import type { Logger } from "../core/kernel/logger.js";
import type { SinkMode } from "../core/kernel/job.js";
import { isProcessAlive } from "../core/kernel/process.js";
import { assertInsideRootSync } from "../core/kernel/inside-root.js";

/** This host's tag in staging names: tells this host's files from those of other hosts sharing a root. */
export const HOST_TAG = createHash("sha256").update(hostname()).digest("hex").slice(0, 8);
const STAGING_PATTERN = /^\.(.+)\.stg-(\d+)-([0-9a-f]{8})-(\d+)$/;
const PROCESS_STARTED_MS = Date.now() - process.uptime() * 1000;

/**
 * The file a sink location names. A location ending in `extension` is that file; any other
 * location is a directory holding `<dirFile>` — as upstream's Parquet sink did, where
 * `parquet://./output/<topic>` (the default sink its publish step gives every plugin)
 * became `output/<topic>/data_<job id>.parquet` in append mode.
 */
export function fileLocationFor(location: string, extension: string, dirFile: string): string {
  if (location.toLowerCase().endsWith(extension.toLowerCase()) && !location.endsWith(`/${extension}`)) return location;
  const dir = location.replace(/\/+$/, "");
  if (dir === "") return location;
  return dir === "." ? dirFile : `${dir}/${dirFile}`;
}

/** Where a job's output for `target` goes under `mode`: append writes `<stem>_<job id><ext>`. */
export function finalPathFor(target: string, mode: SinkMode, jobId: bigint): string {
  if (mode !== "append") return target;
  const ext = extname(target);
  return join(dirname(target), `${basename(target, ext)}_${jobId}${ext}`);
}

/** The staging file for `finalPath`, in the same directory so that rename is atomic. */
export function stagingPathFor(finalPath: string, jobId: bigint): string {
  return join(dirname(finalPath), `.${basename(finalPath)}.stg-${jobId}-${HOST_TAG}-${process.pid}`);
}

/** Where a publish with undo keeps the file it replaces (same directory: renamed back on rollback). */
export function backupPathFor(finalPath: string, jobId: bigint): string {
  return join(dirname(finalPath), `.${basename(finalPath)}.bak-${jobId}-${HOST_TAG}-${process.pid}`);
}

/**
 * A staged file's publish, as `resolvePublished` reads it back: JSON, journaled before the
 * publish. The staged file's identity (device, inode) tells, after a crash, whether the
 * final name already holds it.
 */
export interface PublishHandle {
  readonly staging: string;
  readonly final: string;
  readonly backup: string;
  readonly dev: string;
  readonly ino: string;
  // An index signature makes it a SinkHandle (sinks/api.ts) as it is.
  readonly [key: string]: string;
}

/** The handle of a staged, fsynced file that `publishStaged(..., { backup })` will publish. */
export async function publishHandle(stagingPath: string, finalPath: string, jobId: bigint): Promise<PublishHandle> {
  // One stat of a file just written: cheaper on the main thread than a round trip through the thread pool.
  const info = statSync(stagingPath, { bigint: true });
  return { staging: stagingPath, final: finalPath, backup: backupPathFor(finalPath, jobId), dev: info.dev.toString(), ino: info.ino.toString() };
}

/** True when `value` has the shape of a PublishHandle (a journal is read back from disk). */
export function isPublishHandle(value: unknown): value is PublishHandle {
  if (typeof value !== "object" || value === null) return false;
  const fields = value as Record<string, unknown>;
  return ["staging", "final", "backup", "dev", "ino"].every((key) => typeof fields[key] === "string");
}

/**
 * Undoes or finishes a publish made with a backup (idempotent, also for a publish that
 * never started). rollback: when the final name holds the staged file, the backup is
 * renamed back over it (or, with none, the file is removed); staging and backup go.
 * finish: the backup goes.
 */
export async function resolvePublished(handle: PublishHandle, decision: "rollback" | "finish"): Promise<void> {
  if (decision === "rollback") {
    const current = await stat(handle.final, { bigint: true }).catch((err: unknown) => {
      if (errnoCode(err) === "ENOENT") return null;
      throw err;
    });
    if (current !== null && current.dev.toString() === handle.dev && current.ino.toString() === handle.ino) {
      try {
        await rename(handle.backup, handle.final);
      } catch (err) {
        if (errnoCode(err) !== "ENOENT") throw err;
        await unlink(handle.final);
      }
      await fsyncDirectory(dirname(handle.final));
    }
    await rm(handle.staging, { force: true });
  }
  // On the job's answer path ("finish" after every commit of a journaled job): an unlink, not a pool round trip.
  rmSync(handle.backup, { force: true });
}

/** Fails with SINK_TARGET_EXISTS when mode is "error" and the target is there. */
export async function assertTargetFree(finalPath: string, mode: SinkMode, uri: string, jobId: bigint): Promise<void> {
  if (mode !== "error") return;
  if (await exists(finalPath)) throw Errors.SINK_TARGET_EXISTS([finalPath], { context: { jobId, sinkUri: uri, file: finalPath } });
}

/**
 * Makes a staged file visible under its final name. The file is fsynced by the
 * writer; here the rename itself is made durable by fsyncing the directory.
 * Mode "error" links instead of renaming: link fails atomically if the target
 * appeared since open, where rename would silently replace it.
 * With `options.outputRoot`, the directory's real path is checked against the root's right before
 * the rename (SINK_PATH_ESCAPE): a directory swapped for a symlink during the job must not
 * carry the output out of the root (core/kernel/inside-root.ts says what window remains).
 * That check is synchronous: two realpath(3) calls cost less than two round trips through
 * the thread pool, and nothing runs between the check and the rename's start. So is the
 * rename (a metadata update, which the directory's fsync makes durable): about 60 us of
 * CPU less per file than a round trip through the thread pool (two thread wake-ups).
 */
export async function publishStaged(
  stagingPath: string,
  finalPath: string,
  mode: SinkMode,
  uri: string,
  jobId: bigint,
  options: { backup?: string; outputRoot?: string } = {},
): Promise<void> {
  if (options.outputRoot !== undefined) assertInsideRootSync(options.outputRoot, dirname(finalPath), { uri, jobId });
  // Mode "error" never replaces a file, so only the others need a backup to undo.
  if (options.backup !== undefined && mode !== "error") await keepBackup(finalPath, options.backup);
  if (mode === "error") {
    try {
      await link(stagingPath, finalPath);
    } catch (err) {
      if (errnoCode(err) === "EEXIST") throw Errors.SINK_TARGET_EXISTS([finalPath], { context: { jobId, sinkUri: uri, file: finalPath } });
      if (!["EPERM", "ENOTSUP", "EOPNOTSUPP", "EXDEV"].includes(errnoCode(err) ?? "")) throw err;
      // Filesystems without hard links: check, then rename (a narrow race, documented).
      await assertTargetFree(finalPath, mode, uri, jobId);
      await rename(stagingPath, finalPath);
      await fsyncDirectory(dirname(finalPath));
      return;
    }
    await unlink(stagingPath);
  } else {
    renameSync(stagingPath, finalPath);
  }
  await fsyncDirectory(dirname(finalPath));
}

/** A second name for the file a publish is about to replace (a copy where hard links fail), made durable first. */
async function keepBackup(finalPath: string, backupPath: string): Promise<void> {
  // Two metadata calls on the main thread (publishStaged says why); only a copy goes to the pool.
  rmSync(backupPath, { force: true });
  try {
    linkSync(finalPath, backupPath);
  } catch (err) {
    const code = errnoCode(err);
    if (code === "ENOENT") return;
    if (!["EPERM", "ENOTSUP", "EOPNOTSUPP", "EXDEV"].includes(code ?? "")) throw err;
    try {
      await copyFile(finalPath, backupPath);
    } catch (copyErr) {
      if (errnoCode(copyErr) === "ENOENT") return;
      throw copyErr;
    }
    const handle = await open(backupPath, fsConstants.O_RDONLY);
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }
  await fsyncDirectory(dirname(finalPath));
}

/** fsync(2) of an open descriptor in libuv's thread pool: the one step of a durable write that waits on the disk. */
export function fsyncDescriptor(fd: number): Promise<void> {
  return new Promise<void>((resolve, reject) => fsync(fd, (err) => (err ? reject(err) : resolve())));
}

/**
 * Makes a directory's entries durable. Opening and closing a directory are quick system
 * calls and run here; only the fsync, which waits on the disk, goes to the thread pool.
 */
export async function fsyncDirectory(dir: string): Promise<void> {
  const fd = openSync(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  try {
    await fsyncDescriptor(fd);
  } finally {
    closeSync(fd);
  }
}

/** Removes a file if present; for abort paths, which must be idempotent. */
export async function removeIfPresent(path: string): Promise<void> {
  await rm(path, { force: true });
}

/**
 * Deletes staging files under `root` whose writer is gone: written on this host by a
 * process that no longer runs, or by an earlier process that had our pid (a restarted
 * container) before this one started. Staging of live processes, including this one's
 * running job, and staging from other hosts (it may belong to a live worker) stay.
 */
export async function removeStaleStaging(root: string, logger: Logger): Promise<string[]> {
  let entries: string[];
  try {
    entries = await readdir(root, { recursive: true });
  } catch (err) {
    if (errnoCode(err) === "ENOENT") return [];
    throw err;
  }
  const removed: string[] = [];
  for (const entry of entries) {
    const match = STAGING_PATTERN.exec(basename(entry));
    if (match === null) continue;
    const [, , , hostTag, pidText] = match;
    const pid = Number(pidText);
    if (hostTag !== HOST_TAG || (pid !== process.pid && isProcessAlive(pid))) continue;
    const path = join(root, entry);
    try {
      const info = await stat(path);
      if (!info.isFile() || !writerIsGone(hostTag!, pid, info.mtimeMs)) continue;
      await unlink(path);
      removed.push(path);
      logger.warn({ file: path }, "removed staging file left by a crashed run");
    } catch (err) {
      if (errnoCode(err) !== "ENOENT") throw err;
    }
  }
  return removed;
}

/**
 * True when a file tagged with (host tag, pid) and last modified at `mtimeMs` was left
 * by a process that is gone: one of this host that no longer runs, or an earlier process
 * that had our pid (a restarted container) and wrote before this one started. Our own
 * files (recovery runs again on RELOAD while a job may be staging) and other hosts' stay.
 */
export function writerIsGone(hostTag: string, pid: number, mtimeMs: number): boolean {
  if (hostTag !== HOST_TAG) return false;
  if (pid === process.pid) return mtimeMs < PROCESS_STARTED_MS;
  return !isProcessAlive(pid);
}

/** True when `name` (a file name, not a path) is a staging name made by stagingPathFor. */
export function isStagingName(name: string): boolean {
  return STAGING_PATTERN.test(name);
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if (errnoCode(err) === "ENOENT") return false;
    throw err;
  }
}

export function errnoCode(err: unknown): string | undefined {
  return typeof err === "object" && err !== null && "code" in err && typeof err.code === "string" ? err.code : undefined;
}
