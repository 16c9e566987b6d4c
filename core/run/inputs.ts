/**
 * Turns the command line's inputs (files, directories, globs) into the list of
 * files to process: one job per file. Each file gets a stable file_version_id and
 * the name its outputs will carry under --output.
 */
import { createHash } from "node:crypto";
import { stat } from "node:fs/promises";
import { dirname, extname, isAbsolute, relative, resolve, sep } from "node:path";
import { glob, isDynamicPattern } from "tinyglobby";
import { Errors } from "../kernel/errors.js";

export interface InputFile {
  /** Absolute path, as sent in DISPATCH. */
  readonly path: string;
  readonly size: number;
  /** Lineage id: the same file, unchanged, always gets the same id. */
  readonly fileVersionId: bigint;
  /**
   * Output name without extension, relative to the topic directory: the input's
   * path below the inputs' common directory ("2024/jan" for data/2024/jan.csv), so
   * inputs with the same file name in different directories never collide.
   */
  readonly outputStem: string;
}

const U63_MASK = (1n << 63n) - 1n;

/**
 * sha256(absolute path, size, mtime) truncated to 63 bits: stable across runs for
 * an unchanged file, different once it is rewritten, and positive in every
 * signed 64-bit column that stores it.
 */
export function fileVersionId(absolutePath: string, size: bigint | number, mtimeNs: bigint): bigint {
  const digest = createHash("sha256").update(`${absolutePath}\0${size}\0${mtimeNs}`).digest();
  return digest.readBigUInt64BE(0) & U63_MASK;
}

/** Expands every argument; throws CSP_CLI_USAGE naming the first one that matches nothing. */
export async function expandInputs(args: readonly string[], cwd: string): Promise<InputFile[]> {
  const paths = new Set<string>();
  for (const arg of args) {
    const matched = await expandOne(arg, cwd);
    if (matched.length === 0) throw Errors.CLI_USAGE([`input ${JSON.stringify(arg)} matches no file`]);
    for (const path of matched) paths.add(path);
  }
  const sorted = [...paths].sort();
  const base = commonDirectory(sorted);
  return Promise.all(
    sorted.map(async (path) => {
      const info = await stat(path, { bigint: true });
      const rel = relative(base, path);
      return {
        path,
        size: Number(info.size),
        fileVersionId: fileVersionId(path, info.size, info.mtimeNs),
        outputStem: rel.slice(0, rel.length - extname(rel).length).split(sep).join("/"),
      };
    }),
  );
}

async function expandOne(arg: string, cwd: string): Promise<string[]> {
  const absolute = resolve(cwd, arg);
  const info = await stat(absolute).catch(() => null);
  if (info?.isFile()) return [absolute];
  if (info?.isDirectory()) {
    // Hidden files (.DS_Store, editor swap files) are never data.
    return glob("**/*", { cwd: absolute, absolute: true, onlyFiles: true, dot: false, followSymbolicLinks: true });
  }
  if (info === null && isDynamicPattern(arg)) {
    return glob(arg, { cwd, absolute: true, onlyFiles: true, dot: false, expandDirectories: false });
  }
  return [];
}

function commonDirectory(paths: readonly string[]): string {
  if (paths.length === 0) return "/";
  let common = dirname(paths[0]!);
  for (const path of paths) {
    while (!isWithin(path, common)) common = dirname(common);
  }
  return common;
}

function isWithin(path: string, dir: string): boolean {
  const rel = relative(dir, path);
  return rel !== "" && !rel.startsWith("..") && !isAbsolute(rel);
}
