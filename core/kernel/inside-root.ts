/**
 * Keeping output inside its root while the tree under the root can change: a plugin runs
 * with the worker's uid (unless isolated) and may swap a directory for a symlink to
 * anywhere while its job runs.
 *
 * Node has no openat/mkdirat/renameat, so the checks work on real paths, made right
 * before each use:
 *  - directories are made one level at a time, starting from the root's real path; each
 *    existing level is lstat'ed, and a symlink is followed only when its target is inside
 *    the root, so nothing is created outside the root before a refusal;
 *  - right before a staged file is renamed (or linked) to its final name, the real path of
 *    its directory is checked again (`assertInsideRoot`).
 * The residual window is the few system calls between a check and the mkdir or rename it
 * guards: a swap landing exactly there still redirects that one call. Closing it needs
 * renameat on a directory descriptor, which Node does not offer. The root itself may be a
 * symlink: it is the operator's choice, not the plugin's.
 */
import { lstatSync, mkdirSync, realpathSync } from "node:fs";
import { lstat, mkdir, realpath } from "node:fs/promises";
import { isAbsolute, join, relative, resolve, sep } from "node:path";
import { Errors } from "./errors.js";

/** What a refusal names: the sink URI (or file) and, when known, the job. */
export interface EscapeContext {
  uri: string;
  jobId?: bigint;
}

function inside(realRoot: string, path: string): boolean {
  const rel = relative(realRoot, path);
  return rel === "" || (rel !== ".." && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}

function levelsBelow(root: string, dir: string, where: EscapeContext): string[] {
  const rel = relative(resolve(root), resolve(dir));
  if (rel === "") return [];
  if (rel === ".." || rel.startsWith(`..${sep}`) || isAbsolute(rel)) throw refusal(where, resolve(root), resolve(dir));
  return rel.split(sep).filter((part) => part !== "" && part !== ".");
}

function refusal(where: EscapeContext, realRoot: string, found: string): Error {
  return Errors.SINK_PATH_ESCAPE([where.uri, realRoot], {
    context: { jobId: where.jobId, sinkUri: where.uri, file: found },
    hint: `${found} is outside the output root (a symlink under the root leads there, or it was swapped for one); remove the symlink`,
  });
}

function errnoCode(err: unknown): string | undefined {
  return typeof err === "object" && err !== null && "code" in err && typeof err.code === "string" ? err.code : undefined;
}

/**
 * Makes `dir` (inside `root`) and its missing parents, one level at a time; refuses with
 * SINK_PATH_ESCAPE, before creating anything, when an existing level leads outside the
 * root. Returns the directory's real path.
 */
export async function makeDirectoryInsideRoot(root: string, dir: string, where: EscapeContext): Promise<string> {
  const realRoot = await realpath(root);
  let current = realRoot;
  for (const part of levelsBelow(root, dir, where)) {
    const next = join(current, part);
    let info = await lstat(next).catch((err: unknown) => (errnoCode(err) === "ENOENT" ? null : Promise.reject(err)));
    if (info === null) {
      await mkdir(next).catch((err: unknown) => (errnoCode(err) === "EEXIST" ? undefined : Promise.reject(err)));
      info = await lstat(next);
    }
    if (info.isSymbolicLink()) {
      const target = await realpath(next);
      if (!inside(realRoot, target)) throw refusal(where, realRoot, target);
      current = target;
    } else {
      current = next;
    }
  }
  return current;
}

/** makeDirectoryInsideRoot for synchronous callers (the run state's redo log). */
export function makeDirectoryInsideRootSync(root: string, dir: string, where: EscapeContext): string {
  const realRoot = realpathSync(root);
  let current = realRoot;
  for (const part of levelsBelow(root, dir, where)) {
    const next = join(current, part);
    let info = lstatSync(next, { throwIfNoEntry: false });
    if (info === undefined) {
      try {
        mkdirSync(next);
      } catch (err) {
        if (errnoCode(err) !== "EEXIST") throw err;
      }
      info = lstatSync(next);
    }
    if (info.isSymbolicLink()) {
      const target = realpathSync(next);
      if (!inside(realRoot, target)) throw refusal(where, realRoot, target);
      current = target;
    } else {
      current = next;
    }
  }
  return current;
}

/** Refuses with SINK_PATH_ESCAPE when the real path of `dir` (which must exist) is not inside the root's. */
export async function assertInsideRoot(root: string, dir: string, where: EscapeContext): Promise<void> {
  const [realRoot, realDir] = await Promise.all([realpath(root), realpath(dir)]);
  if (!inside(realRoot, realDir)) throw refusal(where, realRoot, realDir);
}

export function assertInsideRootSync(root: string, dir: string, where: EscapeContext): void {
  // realpath(3) itself: one call each, where Node's own realpathSync lstats every level from JS.
  const realRoot = realpathSync.native(root);
  const realDir = realpathSync.native(dir);
  if (!inside(realRoot, realDir)) throw refusal(where, realRoot, realDir);
}

/** True when the real path of `dir` is inside the root's; false when it is not or is gone. */
export async function isInsideRoot(root: string, dir: string): Promise<boolean> {
  try {
    const [realRoot, realDir] = await Promise.all([realpath(root), realpath(dir)]);
    return inside(realRoot, realDir);
  } catch {
    return false;
  }
}
