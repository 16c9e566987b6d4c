/**
 * Turns the command line's inputs (files, directories, globs) into the list of
 * files to process, one job per file, each with its identity: absolute path, size,
 * mtime and a file_version_id that is stable while the file is unchanged.
 *
 * Output names (the `{input}` of a sink URI) follow one rule, independent of which
 * inputs a run is given: the input's path relative to the input root, extension kept
 * (`data/2024/jan.csv`), where the input root is the directory that holds the output
 * directory; an input outside that root is named by its absolute path below `@abs/`
 * (`@abs/mnt/share/jan.csv`; not `_abs`: pyarrow.dataset skips names that start with
 * "_" or "."). The run state keeps the name an input got the first time, so it never
 * changes afterwards.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, stat } from "node:fs/promises";
import { isAbsolute, relative, resolve, sep } from "node:path";
import { glob, isDynamicPattern } from "tinyglobby";
import { Errors } from "../kernel/errors.js";

export interface InputFile {
  /** Absolute path, as sent in DISPATCH. */
  readonly path: string;
  readonly size: number;
  readonly mtimeNs: bigint;
  /** Lineage id: the same file, unchanged, always gets the same id. */
  readonly fileVersionId: bigint;
}

/** An input with the name its outputs carry (from the run state). */
export interface NamedInput extends InputFile {
  readonly name: string;
}

const U63_MASK = (1n << 63n) - 1n;
/** Top-level directory of the names of inputs outside the input root. */
export const OUTSIDE_ROOT = "@abs";

/**
 * sha256(absolute path, size, mtime) truncated to 63 bits: stable across runs for
 * an unchanged file, different once it is rewritten, and positive in every
 * signed 64-bit column that stores it.
 */
export function fileVersionId(absolutePath: string, size: bigint | number, mtimeNs: bigint): bigint {
  const digest = createHash("sha256").update(`${absolutePath}\0${size}\0${mtimeNs}`).digest();
  return digest.readBigUInt64BE(0) & U63_MASK;
}

/** The output name of `absolutePath` under `inputRoot` (see the module comment). */
export function outputName(absolutePath: string, inputRoot: string): string {
  const rel = relative(inputRoot, absolutePath);
  const inside = rel !== "" && rel !== ".." && !rel.startsWith(`..${sep}`) && !isAbsolute(rel);
  const name = inside ? rel : `${OUTSIDE_ROOT}${sep}${absolutePath.replace(/^[/\\]+/, "")}`;
  return name.split(sep).join("/");
}

/** SHA-256 of the file's content, hex. */
/** Inputs up to this size are read in one call: a stream costs more trips to the thread pool and a 1 MiB buffer. */
const READ_AT_ONCE_BYTES = 256 * 1024;

/** `size` (from the input's stat) picks the way to read; a file grown since is still read in bounded chunks. */
export async function contentSha256(path: string, size = Number.POSITIVE_INFINITY): Promise<string> {
  const hash = createHash("sha256");
  if (size <= READ_AT_ONCE_BYTES) {
    const handle = await open(path, "r");
    try {
      // One byte more than its size: a file that grew since is read again below, as a stream.
      const buffer = Buffer.allocUnsafe(size + 1);
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
      if (bytesRead <= size) return hash.update(buffer.subarray(0, bytesRead)).digest("hex");
    } finally {
      await handle.close();
    }
  }
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Expands every argument; throws CSP_CLI_USAGE naming the first one that matches nothing. */
export async function expandInputs(args: readonly string[], cwd: string): Promise<InputFile[]> {
  const paths = new Set<string>();
  for (const arg of args) {
    const matched = await expandOne(arg, cwd);
    if (matched.length === 0) throw Errors.CLI_USAGE([`input ${JSON.stringify(arg)} matches no file`]);
    for (const path of matched) paths.add(path);
  }
  return Promise.all(
    [...paths].sort().map(async (path) => {
      const info = await stat(path, { bigint: true });
      return { path, size: Number(info.size), mtimeNs: info.mtimeNs, fileVersionId: fileVersionId(path, info.size, info.mtimeNs) };
    }),
  );
}

async function expandOne(arg: string, cwd: string): Promise<string[]> {
  const absolute = resolve(cwd, arg);
  const info = await stat(absolute).catch(() => null);
  if (info?.isFile()) return [absolute];
  if (info?.isDirectory()) {
    // Hidden files and directories (.DS_Store, editor swap files, a run state) are never data.
    return glob("**/*", { cwd: absolute, absolute: true, onlyFiles: true, dot: false, followSymbolicLinks: true });
  }
  if (info === null && isDynamicPattern(arg)) {
    return glob(arg, { cwd, absolute: true, onlyFiles: true, dot: false, expandDirectories: false });
  }
  return [];
}
