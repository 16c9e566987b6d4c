/**
 * Precompiled bytecode of the guest shim. Guests run with PYTHONDONTWRITEBYTECODE (a plugin must
 * never write bytecode another job loads), so without this every fresh guest and every warm
 * parent compiled the shim's modules again at start (about 25-35 ms of CPU each).
 *
 * The worker compiles the shim once per interpreter into a directory it owns (0755, files 0644:
 * a slot user can read, never write), as checked-hash pycs: the guest verifies each against its
 * source's hash on every load, so a changed shim is never run from stale bytecode, whatever the
 * mtimes say. The guest (__main__.py) looks there for its own modules only: PYTHONPYCACHEPREFIX
 * would also send the standard library and the venv's packages away from their own __pycache__.
 * Compiling is an optimisation: when it fails, guests compile the shim themselves as before.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "../kernel/logger.js";
import { packageRoot } from "../kernel/paths.js";

/** The guest reads the directory from this variable (set by guestEnv when a worker configured one). */
export const SHIM_PYCACHE_ENV = "CASPARIAN_SHIM_PYCACHE";

const COMPILE = `import os, py_compile, sys
os.umask(0o022)
for source in sys.argv[1:]:
    py_compile.compile(source, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
`;

/** Absolute path of the guest shim shipped in the package: a directory that `python <dir>` runs through its __main__.py. */
export function shimPath(): string {
  return join(packageRoot(), "core", "bridge", "guest");
}

let cacheDir: string | undefined;
let log: Logger | undefined;
let failureLogged = false;
const compiled = new Map<string, Promise<void>>();

/** Called once by the composition root: guests look for the shim's bytecode in dir (under the worker's home). */
export function configureShimBytecode(dir: string, logger: Logger): void {
  cacheDir = dir;
  log = logger;
}

/** The directory guests look in, when a worker configured one. */
export function shimBytecodeDir(): string | undefined {
  return cacheDir;
}

/** What a sandboxed guest must see read-only for it (nothing when none is configured or it is not there yet). */
export function shimBytecodeMounts(): string[] {
  return cacheDir !== undefined && existsSync(cacheDir) ? [cacheDir] : [];
}

async function shimSources(): Promise<string[]> {
  const root = shimPath();
  const packageDir = join(root, "casparian_guest");
  const names = (await readdir(packageDir)).filter((name) => name.endsWith(".py"));
  return [join(root, "__main__.py"), ...names.map((name) => join(packageDir, name))];
}

/** Compile the shim for this interpreter, once per worker; never rejects. */
export function ensureShimBytecode(interpreterPath: string): Promise<void> {
  const dir = cacheDir;
  if (dir === undefined) return Promise.resolve();
  let pending = compiled.get(interpreterPath);
  if (pending === undefined) {
    pending = shimSources()
      .then(
        (sources) =>
          new Promise<void>((resolve, reject) => {
            // -I: none of the worker's PYTHON* variables, no user site; -B: nothing but the shim written; -X pycache_prefix: write under dir.
            execFile(interpreterPath, ["-I", "-B", "-X", `pycache_prefix=${dir}`, "-c", COMPILE, ...sources], { timeout: 30_000 }, (err, _stdout, stderr) =>
              err ? reject(new Error(`${err.message.split("\n")[0]} ${stderr.trim().split("\n").pop() ?? ""}`)) : resolve(),
            );
          }),
      )
      .catch((err: Error) => {
        if (!failureLogged) {
          failureLogged = true;
          log?.warn({ interpreter: interpreterPath, dir, err: err.message }, "guest shim bytecode not compiled: guests compile it at start");
        }
      });
    compiled.set(interpreterPath, pending);
  }
  return pending;
}
