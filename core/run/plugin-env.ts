/**
 * Which Python environment a plugin runs in, expressed as the lockfile that
 * PREPARE_ENV carries (env_hash = sha256(lockfile_content)). In order:
 *
 *  1. a `uv.lock` beside the plugin (the project's own lock, with its pyproject.toml);
 *  2. PEP 723 inline script metadata: a project lock generated once per distinct
 *     metadata block with `uv lock`, cached under $CASPARIAN_HOME/plugin-locks/<hash>;
 *  3. nothing: a bare lock, for which the worker builds an empty venv.
 *
 * A project lock (not `uv lock --script`) because the worker's environment manager
 * rebuilds a pyproject.toml from the lock's root package and runs `uv sync --frozen`.
 */
import { createHash, randomBytes } from "node:crypto";
import { access, mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Errors } from "../kernel/errors.js";
import { checkSeal, replaceEnvDirectory, sealEnv } from "../env/seal.js";
import { findUv, uvEnvironment } from "../env/uv.js";
import { describeFailure, runCommand } from "../kernel/process.js";
import type { Logger } from "../kernel/logger.js";
import type { PluginInfo } from "./plugin.js";

export type EnvSource = "uv.lock" | "script-metadata" | "bare";

export interface PluginEnvironment {
  source: EnvSource;
  lockfileContent: string;
  /** sha256(lockfileContent) in hex. */
  envHash: string;
  /** Passed as PREPARE_ENV python_version; null lets uv choose. */
  pythonVersion: string | null;
  /** Where the lock came from, for the log line. */
  lockPath: string | null;
}

/** The lock of a plugin without dependencies: the environment manager makes a bare venv of it. */
export const BARE_LOCKFILE = 'version = 1\nrequires-python = ">=3.11"\n';

export function sha256Hex(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

export interface ResolveOptions {
  home: string;
  logger: Logger;
  uv?: string;
  /** environments.env: the user's variables uv may see besides its base set (proxies, index credentials). */
  uvEnv?: readonly string[];
}

export async function resolvePluginEnvironment(plugin: PluginInfo, options: ResolveOptions): Promise<PluginEnvironment> {
  const besideLock = join(dirname(plugin.path), "uv.lock");
  const projectLock = await readFile(besideLock, "utf8").catch(() => null);
  if (projectLock !== null) return environment("uv.lock", projectLock, besideLock);

  const meta = plugin.scriptMetadata;
  if (meta !== null && meta.dependencies.length > 0) {
    const lockPath = await lockScriptMetadata(plugin, options);
    return environment("script-metadata", await readFile(lockPath, "utf8"), lockPath);
  }
  return environment("bare", BARE_LOCKFILE, null);
}

function environment(source: EnvSource, lockfileContent: string, lockPath: string | null): PluginEnvironment {
  return { source, lockfileContent, envHash: sha256Hex(lockfileContent), pythonVersion: null, lockPath };
}

/** The synthesized project for a script's inline metadata; uv locks it like any project. */
function scriptProject(dependencies: readonly string[], requiresPython: string | null): string {
  const deps = dependencies.map((d) => `    ${JSON.stringify(d)},`).join("\n");
  return [
    "[project]",
    'name = "casparian-plugin-env"',
    'version = "0.0.0"',
    `requires-python = ${JSON.stringify(requiresPython ?? ">=3.11")}`,
    `dependencies = [\n${deps}\n]`,
    "",
    "[tool.uv]",
    "package = false",
    "",
  ].join("\n");
}

/**
 * Locks once per distinct metadata block; later runs reuse the lock, so the
 * environment (keyed on the lock's hash) is reused too. Written to a temporary
 * directory and renamed, so a crash never leaves a half-written lock in the cache.
 */
async function lockScriptMetadata(plugin: PluginInfo, options: ResolveOptions): Promise<string> {
  const meta = plugin.scriptMetadata!;
  const pyproject = scriptProject(meta.dependencies, meta.requiresPython);
  const cacheRoot = join(options.home, "plugin-locks");
  const cacheDir = join(cacheRoot, sha256Hex(pyproject).slice(0, 32));
  const lockPath = join(cacheDir, "uv.lock");
  if (await exists(lockPath)) return lockPath;

  const uv = await findUv(options.uv); // throws ENV_UV_MISSING with the install hint
  await mkdir(cacheRoot, { recursive: true });
  const work = await mkdtemp(join(cacheRoot, ".lock-"));
  try {
    await writeFile(join(work, "pyproject.toml"), pyproject);
    options.logger.info({ plugin: plugin.name, dependencies: meta.dependencies }, "locking the plugin's inline script dependencies with uv");
    // The same scrubbed environment the env builds get (core/env/uv.ts): uv may run build
    // backends while locking, which must not see the user's secrets; what a site needs
    // (proxies, index credentials) is named in environments.env, as for the builds.
    const env = uvEnvironment(options.uvEnv ?? []);
    const locked = await runCommand(uv, ["lock", "--quiet", "--directory", work], { env });
    if (!locked.ok) throw Errors.RUN_LOCK_FAILED([plugin.path, locked.stderr.trim() || describeFailure(locked)], { context: { plugin: plugin.path } });
    await rename(work, cacheDir).catch(async (err: NodeJS.ErrnoException) => {
      // Another run locked the same metadata meanwhile: its lock is as good as ours.
      if (err.code !== "ENOTEMPTY" && err.code !== "EEXIST") throw err;
    });
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return lockPath;
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/**
 * A plugin without dependencies must run on a machine with Python 3 and no uv:
 * then the bare environment is made here with `python3 -m venv`, exactly where
 * the workers' environment manager looks for it (<home>/venvs/<env_hash>), so
 * their PREPARE_ENV is a cache hit that needs no uv. Built beside and renamed
 * into place, like the manager does, so a half-built venv never looks ready.
 * Returns true when it built one; throws ENV_UV_MISSING when uv is missing and
 * the plugin has dependencies.
 */
export async function provideBareEnvWithoutUv(
  env: PluginEnvironment,
  options: { home: string; logger: Logger; uv?: string; python?: string },
): Promise<boolean> {
  const venvs = join(options.home, "venvs");
  const final = join(venvs, env.envHash);
  if ((await checkSeal(final, env.envHash)).trusted) return false;
  const uvMissing = await findUv(options.uv).then(
    () => null,
    (err: unknown) => err,
  );
  if (uvMissing === null) return false;
  // Dependencies need uv: say so now, with the install hint, rather than from every worker.
  if (env.source !== "bare") throw uvMissing;
  const python = options.python ?? process.env.PYTHON ?? "python3";
  options.logger.warn({ python, venv: final }, "uv not found; the plugin declares no dependencies, so its bare environment is made with `python3 -m venv`");
  process.stderr.write(
    `casparian run: uv not found; making the plugin's bare environment with \`${python} -m venv\` (install uv for environments with dependencies)\n`,
  );
  await mkdir(venvs, { recursive: true });
  const build = join(venvs, `.build-${env.envHash.slice(0, 16)}-${process.pid}-${randomBytes(4).toString("hex")}`);
  try {
    const made = await runCommand(python, ["-m", "venv", "--without-pip", join(build, "venv")], { timeoutMs: 5 * 60_000 });
    if (!made.ok) throw new Error(made.stderr.trim() || describeFailure(made, 5 * 60_000));
    // Sealed like the manager's builds (core/env/seal.ts), or the workers would not trust it.
    await sealEnv(join(build, "venv"), env.envHash, null);
    if (!(await checkSeal(final, env.envHash)).trusted) {
      await replaceEnvDirectory(join(build, "venv"), final, join(venvs, `.evict-${env.envHash.slice(0, 16)}-${process.pid}-${randomBytes(4).toString("hex")}`));
    }
  } catch (err) {
    throw Errors.ENV_BUILD_FAILED([env.envHash.slice(0, 12), `${python} -m venv failed: ${(err as Error).message}`]);
  } finally {
    await rm(build, { recursive: true, force: true });
  }
  return true;
}
