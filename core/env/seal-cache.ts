/**
 * Seal checks once per change, not once per job. checkSeal (seal.ts) reads the seal and
 * every file the digest covers (pyvenv.cfg, the RECORD of every installed distribution):
 * about 3 ms for a bare env and far more for pandas' dozens of distributions, on every job.
 * Here a trusted check is remembered with the stat identity (device, inode, mode, size,
 * ctime, mtime) of every file and directory that check read, and the next acquire of the
 * env only stats them again (one system call each, no read): the same identities mean the
 * same content, so the digest would match again; any difference means a full check.
 *
 * Why identities suffice: every change the digest notices changes one of them. A package
 * or .pth file planted in (or removed from, or renamed in) site-packages changes that
 * directory's ctime; a RECORD or pyvenv.cfg edited in place changes its own ctime and
 * mtime, one replaced by a rename has another inode; a re-pointed bin/python is a new
 * symlink inode and a new ctime of bin. A ctime cannot be set by a file's owner (utimes
 * sets mtime and atime only; ctime moves on every change, to the kernel's clock), so
 * whoever may write the env cannot make a change look like no change.
 *
 * Timestamps have a granularity (a kernel tick on some file systems): a change within the
 * same tick as the state a check read could keep every identity. As git does for its
 * index ("racy git"), a check is remembered only when every timestamp it depends on is at
 * least RACY_MS older than the moment its identities were taken, and only when they are
 * the same again after the digest was read (nothing changed while it was read).
 * A file system that reports no ctime (0) is never cached.
 */
import { lstatSync, readdirSync, statSync, type BigIntStats } from "node:fs";
import { join } from "node:path";
import { checkSeal, SEAL_FILE, type EnvSeal, type SealCheck } from "./seal.js";

/** How much older than the check every timestamp must be for a trusted check to be remembered. */
export const RACY_MS = 2_000;

interface Remembered {
  envHash: string;
  seal: EnvSeal;
  /** What was stat'ed, and how: lstat for what checkSeal lstats or readlinks, stat for what it reads through. */
  paths: ReadonlyArray<readonly [path: string, how: "lstat" | "stat"]>;
  identity: string;
}

export class SealCache {
  readonly #remembered = new Map<string, Remembered>();
  readonly #racyMs: number;

  constructor(options: { racyMs?: number } = {}) {
    this.#racyMs = options.racyMs ?? RACY_MS;
  }

  /** Whether the next check of `venvDir` can be answered from a remembered one (if nothing changed). */
  remembers(venvDir: string): boolean {
    return this.#remembered.has(venvDir);
  }

  /** checkSeal's answer, from the remembered check when nothing it read has changed since. */
  async check(venvDir: string, envHash: string): Promise<SealCheck> {
    const known = this.#remembered.get(venvDir);
    if (known !== undefined && known.envHash === envHash && identityOf(known.paths).identity === known.identity) return { trusted: true, seal: known.seal };
    this.#remembered.delete(venvDir);
    const takenAt = Date.now();
    const paths = pathsRead(venvDir);
    const before = identityOf(paths);
    const check = await checkSeal(venvDir, envHash);
    if (!check.trusted) return check;
    const after = identityOf(paths);
    if (before.identity === after.identity && before.cacheable && before.newestMs <= takenAt - this.#racyMs) {
      this.#remembered.set(venvDir, { envHash, seal: check.seal, paths, identity: before.identity });
    }
    return check;
  }
}

/** Every file and directory checkSeal and envDigest (seal.ts) read, in their order. */
function pathsRead(venvDir: string): Array<readonly [string, "lstat" | "stat"]> {
  const paths: Array<readonly [string, "lstat" | "stat"]> = [
    [venvDir, "lstat"],
    [join(venvDir, SEAL_FILE), "lstat"],
    [join(venvDir, "pyvenv.cfg"), "stat"],
    [join(venvDir, "bin"), "stat"],
    [join(venvDir, "bin", "python"), "lstat"],
  ];
  const lib = join(venvDir, "lib");
  paths.push([lib, "stat"]);
  for (const version of listing(lib)) {
    paths.push([join(lib, version), "stat"]);
    const sitePackages = join(lib, version, "site-packages");
    paths.push([sitePackages, "stat"]);
    for (const name of listing(sitePackages)) if (name.endsWith(".dist-info")) paths.push([join(sitePackages, name, "RECORD"), "stat"]);
  }
  return paths;
}

function listing(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** The identities of `paths` as one string; whether they can be trusted to move on a change; the newest timestamp (ms). */
function identityOf(paths: ReadonlyArray<readonly [string, "lstat" | "stat"]>): { identity: string; cacheable: boolean; newestMs: number } {
  const parts: string[] = [];
  let cacheable = true;
  let newest = 0n;
  for (const [path, how] of paths) {
    const info = statOrNothing(path, how);
    if (info === undefined) {
      parts.push("-");
      continue;
    }
    if (info.ctimeNs === 0n) cacheable = false;
    if (info.ctimeNs > newest) newest = info.ctimeNs;
    if (info.mtimeNs > newest) newest = info.mtimeNs;
    parts.push(`${info.dev}:${info.ino}:${info.mode}:${info.size}:${info.ctimeNs}:${info.mtimeNs}`);
  }
  return { identity: parts.join("|"), cacheable, newestMs: Number(newest / 1_000_000n) };
}

function statOrNothing(path: string, how: "lstat" | "stat"): BigIntStats | undefined {
  try {
    return (how === "lstat" ? lstatSync : statSync)(path, { bigint: true, throwIfNoEntry: false });
  } catch {
    // ELOOP, ENOTDIR, EACCES: the digest fails there too; a full check says so.
    return undefined;
  }
}
