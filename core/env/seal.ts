/**
 * The seal of an environment: `<home>/venvs/<env_hash>/.casparian-env.json`, written by us
 * into a finished build before it is renamed into place, so an env directory and its seal
 * appear together or not at all. An env is used only when its seal parses, names the env
 * hash of its directory, and its digest matches the directory now; anything else found
 * at `venvs/<hash>` (planted, left by another tool, half deleted, changed since the
 * build) is rebuilt, never trusted.
 *
 * The digest is sha256 over pyvenv.cfg, where bin/python points, the names in
 * site-packages, and the sha256 of every installed distribution's RECORD (which lists each
 * installed file with its own hash); a job's check redoes it only when one of the files it
 * read has changed (seal-cache.ts). It notices a planted or
 * removed package, a .pth file, an edited RECORD or pyvenv.cfg and a re-pointed
 * interpreter; it does not re-hash every installed file (a plugin that edits a module in
 * place without touching RECORD is not seen: run guests as another uid, bridge.user, so
 * the env is not theirs to write). It is no signature: whoever can write the venvs
 * directory can also write a matching seal, so that directory must be the worker's alone.
 *
 * The seal also records the interpreter (implementation, version, free-threaded or not),
 * so a PREPARE_ENV asking for another python_version than the env was built with is a
 * rebuild, not a cache hit. Our own file name: upstream's workers only look at bin/python
 * and `.metadata.json` (metadata.ts), so a home shared with them keeps working.
 */
import { createHash, randomBytes } from "node:crypto";
import { lstat, readdir, readFile, readlink, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describeFailure, runCommand } from "../kernel/process.js";

export const SEAL_FILE = ".casparian-env.json";
const SEAL_FORMAT = 1;

export interface InterpreterInfo {
  /** sys.implementation.name: "cpython", "pypy", ... */
  implementation: string;
  /** "3.11.7" */
  version: string;
  freeThreaded: boolean;
  /** The base interpreter the venv runs (sys._base_executable). */
  executable: string;
}

export interface EnvSeal {
  format: typeof SEAL_FORMAT;
  env_hash: string;
  python: InterpreterInfo;
  /** The python_version the PREPARE_ENV asked for (null: uv's choice, from requires-python). */
  requested_python: string | null;
  built_at: string;
  digest: string;
}

export type SealCheck = { trusted: true; seal: EnvSeal } | { trusted: false; reason: string };

const PROBE = [
  "import json, sys, sysconfig",
  "print(json.dumps({'implementation': sys.implementation.name, 'version': '%d.%d.%d' % sys.version_info[:3],",
  " 'freeThreaded': bool(sysconfig.get_config_var('Py_GIL_DISABLED')), 'executable': getattr(sys, '_base_executable', sys.executable)}))",
].join("\n");

/** Starts the env's interpreter and asks what it is; throws when it does not start. */
export async function probeInterpreter(venvDir: string): Promise<InterpreterInfo> {
  const probe = await runCommand(join(venvDir, "bin", "python"), ["-c", PROBE], { timeoutMs: 30_000, env: { PATH: process.env.PATH ?? "" } });
  if (!probe.ok)
    throw new Error(`the new interpreter does not start: ${(probe.stderr.trim() || describeFailure(probe, 30_000)).split("\n").slice(-3).join(" ")}`);
  return JSON.parse(String(probe.stdout)) as InterpreterInfo;
}

/** The digest described in the module comment. */
export async function envDigest(venvDir: string): Promise<string> {
  const hash = createHash("sha256");
  const part = (name: string, value: string | Buffer) => hash.update(name).update("\0").update(value).update("\0");
  part("pyvenv.cfg", await readFile(join(venvDir, "pyvenv.cfg")));
  part("bin/python", await readlink(join(venvDir, "bin", "python")).catch(() => "(not a symlink)"));
  const lib = join(venvDir, "lib");
  for (const version of (await readdir(lib)).sort()) {
    const sitePackages = join(lib, version, "site-packages");
    const names = await readdir(sitePackages).catch(() => null);
    if (names === null) continue;
    for (const name of names.filter((n) => n !== "__pycache__").sort()) {
      part(`${version}/${name}`, name.endsWith(".dist-info") ? await recordHash(join(sitePackages, name)) : "");
    }
  }
  return hash.digest("hex");
}

async function recordHash(distInfo: string): Promise<string> {
  const record = await readFile(join(distInfo, "RECORD")).catch(() => null);
  return record === null ? "(no RECORD)" : createHash("sha256").update(record).digest("hex");
}

/** Seals a finished build (before it is renamed into place); returns the seal. */
export async function sealEnv(venvDir: string, envHash: string, requestedPython: string | null, python?: InterpreterInfo): Promise<EnvSeal> {
  const seal: EnvSeal = {
    format: SEAL_FORMAT,
    env_hash: envHash,
    python: python ?? (await probeInterpreter(venvDir)),
    requested_python: requestedPython,
    built_at: new Date().toISOString(),
    digest: await envDigest(venvDir),
  };
  const target = join(venvDir, SEAL_FILE);
  const temp = `${target}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  await writeFile(temp, `${JSON.stringify(seal, null, 2)}\n`, { mode: 0o444 });
  await rename(temp, target);
  return seal;
}

/** Whether the directory at `venvDir` is an env we built for `envHash`, unchanged since. */
export async function checkSeal(venvDir: string, envHash: string): Promise<SealCheck> {
  const dir = await lstat(venvDir).catch(() => null);
  if (dir === null) return { trusted: false, reason: "no such directory" };
  if (!dir.isDirectory()) return { trusted: false, reason: "not a directory (a symlink or a file)" };
  const file = await lstat(join(venvDir, SEAL_FILE)).catch(() => null);
  if (file === null || !file.isFile()) return { trusted: false, reason: `no ${SEAL_FILE} (not built by this worker, or by an older version)` };
  let seal: EnvSeal;
  try {
    seal = JSON.parse(await readFile(join(venvDir, SEAL_FILE), "utf8")) as EnvSeal;
  } catch {
    return { trusted: false, reason: `${SEAL_FILE} is not valid JSON` };
  }
  if (seal?.format !== SEAL_FORMAT || typeof seal.digest !== "string" || typeof seal.python?.version !== "string") {
    return { trusted: false, reason: `${SEAL_FILE} has an unknown format` };
  }
  if (seal.env_hash !== envHash) return { trusted: false, reason: `${SEAL_FILE} names another env (${String(seal.env_hash).slice(0, 12)})` };
  const digest = await envDigest(venvDir).catch((err: unknown) => `unreadable: ${(err as Error).message}`);
  if (digest !== seal.digest) return { trusted: false, reason: "the env changed since it was built (digest mismatch)" };
  return { trusted: true, seal };
}

const VERSION_REQUEST = /^(?:(cpython|pypy|graalpy)[-@]?)?(\d+(?:\.\d+){0,2})(t?)$/i;

/**
 * Whether an env built with `python` serves a request for `requested`: the same
 * implementation when one is named, every version component given, and free-threading
 * exactly when asked for ("3.13t"). No request: any interpreter does.
 */
export function servesPythonRequest(python: InterpreterInfo, requested: string | null | undefined): boolean {
  if (requested === null || requested === undefined) return true;
  const match = VERSION_REQUEST.exec(requested);
  if (match === null) return false;
  const [, implementation, version, threaded] = match;
  if (implementation !== undefined && implementation.toLowerCase() !== python.implementation.toLowerCase()) return false;
  const have = python.version.split(".");
  if (!version!.split(".").every((component, i) => Number(component) === Number(have[i]))) return false;
  return (threaded === "t") === python.freeThreaded;
}

/**
 * Puts a sealed build at `finalDir`, replacing what is there (an untrusted directory, or an
 * env of another interpreter): the old one is renamed aside first and then deleted, so a
 * half-deleted env never sits under the hash's name.
 */
export async function replaceEnvDirectory(builtDir: string, finalDir: string, asideDir: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await rename(builtDir, finalDir);
      break;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if ((code !== "ENOTEMPTY" && code !== "EEXIST" && code !== "ENOTDIR") || attempt >= 3) throw err;
      await rename(finalDir, asideDir).catch((moveErr: unknown) => {
        if ((moveErr as NodeJS.ErrnoException).code !== "ENOENT") throw moveErr;
      });
      await rm(asideDir, { recursive: true, force: true });
    }
  }
}
