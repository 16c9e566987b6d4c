/**
 * Crash-safe file publishing for file sinks: write under a staging name beside the
 * target, fsync, then rename (or link, for mode "error") to the final name. A reader
 * never sees a partial file under a final name.
 *
 * Staging names are `.<final name>.stg-<job id>-<host tag>-<pid>`: hidden from globs,
 * and they say who wrote them, so `removeStaleStaging` can tell the leftovers of a
 * crashed process from the staging of a live worker sharing the same output root.
 */
import { createHash } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { link, open, readdir, rename, rm, stat, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { basename, dirname, extname, join } from "node:path";
import { Errors } from "../core/kernel/errors.js";
import type { Logger } from "../core/kernel/logger.js";
import type { SinkMode } from "../core/kernel/job.js";
import { isProcessAlive } from "../core/kernel/process.js";

const HOST_TAG = createHash("sha256").update(hostname()).digest("hex").slice(0, 8);
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
 */
export async function publishStaged(stagingPath: string, finalPath: string, mode: SinkMode, uri: string, jobId: bigint): Promise<void> {
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
    await rename(stagingPath, finalPath);
  }
  await fsyncDirectory(dirname(finalPath));
}

export async function fsyncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, fsConstants.O_RDONLY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
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
    if (hostTag !== HOST_TAG) continue;
    const pid = Number(pidText);
    if (pid !== process.pid && isProcessAlive(pid)) continue;
    const path = join(root, entry);
    try {
      const info = await stat(path);
      if (!info.isFile()) continue;
      // Our own pid: stale only if written before this process started (a restarted
      // container reuses pids); recovery may run again on RELOAD while a job is staging.
      if (pid === process.pid && info.mtimeMs >= PROCESS_STARTED_MS) continue;
      await unlink(path);
      removed.push(path);
      logger.warn({ file: path }, "removed staging file left by a crashed run");
    } catch (err) {
      if (errnoCode(err) !== "ENOENT") throw err;
    }
  }
  return removed;
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
