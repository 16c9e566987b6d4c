/**
 * Output directories made and verified inside the output root once, not on every job.
 * Making a sink's directory (core/kernel/inside-root.ts makeDirectoryInsideRoot) walks
 * it level by level from the root's real path, with a system call per level, each waiting
 * on the thread pool; a worker writes job after job into the same few directories.
 *
 * Only a directory whose walk met no symlink below the root is remembered, with the
 * root's real path and its own. Later, the directory is accepted when both real paths are
 * still exactly those (two realpath(3) calls, no thread pool). That is the walk's own
 * verdict, not a weaker one: the real path of `<real root>/a/b` equals that lexical path
 * only when no level below the root is a symlink (a symlink at a level resolves to its
 * target, which cannot be the symlink's own path), and a walk over levels that are all
 * plain directories inside the root accepts. Anything else (a level swapped for a
 * symlink, the directory gone, the root re-pointed) is walked again, and the walk makes
 * or refuses as it always did. As before, this is a check made right before use: the
 * staging file's creation and the publish check the real path again (sinks/parquet.ts,
 * files.ts publishStaged), because the plugin runs between them.
 */
import { realpathSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { type EscapeContext, makeDirectoryInsideRoot } from "../core/kernel/inside-root.js";

/** At most this many directories are remembered (a plugin writing a directory per file must not grow memory). */
const MAX_REMEMBERED = 256;

export class VerifiedDirectories {
  /** `root \0 dir` → the real paths of both when the directory was made or verified. */
  readonly #known = new Map<string, { realRoot: string; realDir: string }>();

  /** makeDirectoryInsideRoot, answered without the walk while the directory is known and unchanged. */
  async make(root: string, dir: string, where: EscapeContext): Promise<void> {
    const key = `${root}\0${dir}`;
    const known = this.#known.get(key);
    if (known !== undefined) {
      if (realPathOrNull(root) === known.realRoot && realPathOrNull(dir) === known.realDir) return;
      this.#known.delete(key);
    }
    const realDir = await makeDirectoryInsideRoot(root, dir, where);
    const realRoot = realPathOrNull(root);
    if (realRoot === null || realDir !== join(realRoot, relative(resolve(root), resolve(dir)))) return;
    if (this.#known.size >= MAX_REMEMBERED) this.#known.delete(this.#known.keys().next().value!);
    this.#known.set(key, { realRoot, realDir });
  }
}

function realPathOrNull(path: string): string | null {
  try {
    return realpathSync.native(path);
  } catch {
    return null;
  }
}
