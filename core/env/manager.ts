/**
 * Python environments for plugins (PROTOCOL.md §2), content-addressed by
 * env_hash = sha256(lockfile_content): one venv per hash at `<home>/venvs/<env_hash>`.
 *
 * Build: `uv venv --relocatable` then `uv sync --frozen --no-dev --compile-bytecode` (or
 * `uv sync --script` for locks made by `uv lock --script`) inside `<home>/venvs/.build-<hash>-<pid>-<rand>/`,
 * then it is sealed (seal.ts: interpreter, digest) and renamed into place in one step. A
 * directory named by a bare hash is used only while its seal matches; anything else
 * there is rebuilt and replaced, never trusted. A crash leaves only a `.build-*`
 * directory, which the next manager (any process) removes once its owner pid is gone.
 *
 * python_version is part of the cache check: an env built with 3.11 does not answer a
 * PREPARE_ENV for 3.12; it is rebuilt with 3.12 and replaces the 3.11 one (there is one
 * env per lockfile hash, because a DISPATCH names only the hash). A job already running
 * in the replaced env keeps the modules it imported; what it imports later comes from
 * the new env, so replace envs between jobs.
 *
 * Leases pin envs against LRU eviction. Leases are per process: two workers sharing a
 * home cannot see each other's, so give each worker fleet member its own home if
 * eviction budgets are tight.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdir, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CasparianError, Errors } from "../kernel/errors.js";
import type { Logger } from "../kernel/logger.js";
import type { EnvReadyPayload, PrepareEnvCommand } from "../protocol/messages.js";
import { planFromLock, synthesizePyproject, synthesizeScript } from "./lockfile.js";
import { directorySize, readMetadata, writeMetadata, type EnvMetadata, type MetadataFile } from "./metadata.js";
import type { EnvironmentProvider, EnvLease } from "./types.js";
import { checkSeal, probeInterpreter, replaceEnvDirectory, sealEnv, servesPythonRequest } from "./seal.js";
import { SealCache } from "./seal-cache.js";
import { findUv, runUv } from "./uv.js";
import { isProcessAlive } from "../kernel/process.js";

export { findUv } from "./uv.js";

export interface EnvManagerOptions {
  home: string;
  logger: Logger;
  /** Evict least recently used envs while their total size exceeds this. */
  maxEnvBytes?: number;
  /** Evict least recently used envs while there are more than this many. */
  maxEnvs?: number;
  uvPath?: string;
  /** Variables passed to uv besides PATH, HOME, TMPDIR, LANG, SSL_CERT_FILE, SSL_CERT_DIR and UV_* (e.g. HTTPS_PROXY). */
  uvEnv?: readonly string[];
}

/**
 * What python_version may be: a version request uv understands ("3.12", "3.11.4",
 * "cpython-3.12", "pypy@3.10", "3.13t"), never a path, which uv would run as the interpreter.
 */
const PYTHON_VERSION_RE = /^((cpython|pypy|graalpy)[-@]?)?\d+(\.\d+){0,2}t?$/i;

const HASH_RE = /^[0-9a-f]{64}$/;
/**
 * Guests run with PYTHONDONTWRITEBYTECODE (an env is shared and must not change under a
 * job), so without .pyc files from the build every guest start compiles pandas, pyarrow, ...
 * again: `import pandas, pyarrow` took 3.3 s instead of 1.4 s here.
 */
const COMPILE_BYTECODE = "--compile-bytecode";
/** How stale an env's last_used in the metadata file may get while it is in use (LRU across processes is that coarse). */
const TOUCH_INTERVAL_MS = 30_000;
const TEMP_RE = /^\.(build|evict)-[0-9a-f]+-(\d+)-[0-9a-f]+$/;

function sha256Hex(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

export class EnvManager implements EnvironmentProvider {
  readonly #venvsDir: string;
  readonly #logger: Logger;
  readonly #options: EnvManagerOptions;
  /** In-flight builds by hash: concurrent PREPARE_ENVs share one. */
  readonly #builds = new Map<string, Promise<EnvReadyPayload>>();
  readonly #leases = new Map<string, number>();
  /** When each env was last leased here, and when that was last written to the metadata file (ms). */
  readonly #lastUsed = new Map<string, number>();
  readonly #lastWritten = new Map<string, number>();
  /** Serialises metadata read-modify-write, eviction and lease checks within this process. */
  #serial: Promise<unknown> = Promise.resolve();
  /** Each job's seal check, redone in full only when a file it read has changed (seal-cache.ts). */
  readonly #seals = new SealCache();
  #uv: Promise<string> | undefined;
  #swept: Promise<void> | undefined;

  constructor(options: EnvManagerOptions) {
    this.#options = options;
    this.#venvsDir = join(options.home, "venvs");
    this.#logger = options.logger.child({ component: "env" });
  }

  /** Where the venv for a hash lives (whether or not it exists). */
  venvPath(envHash: string): string {
    return join(this.#venvsDir, envHash);
  }

  interpreterPath(envHash: string): string {
    return join(this.venvPath(envHash), "bin", "python");
  }

  prepare(command: PrepareEnvCommand): Promise<EnvReadyPayload> {
    if (typeof command?.lockfile_content !== "string" || typeof command.env_hash !== "string") {
      return Promise.reject(Errors.PROTOCOL_BAD_PAYLOAD(["PREPARE_ENV", "env_hash and lockfile_content must be strings"]));
    }
    if (command.python_version !== null && command.python_version !== undefined && !PYTHON_VERSION_RE.test(command.python_version)) {
      return Promise.reject(Errors.ENV_BAD_PYTHON_VERSION([JSON.stringify(command.python_version).slice(0, 80)], { context: { envHash: command.env_hash } }));
    }
    const actual = sha256Hex(command.lockfile_content);
    if (command.env_hash.toLowerCase() !== actual) {
      return Promise.reject(Errors.ENV_HASH_MISMATCH([command.env_hash, actual], { context: { envHash: command.env_hash } }));
    }
    const pending = this.#builds.get(actual);
    if (pending) return pending;
    const started = this.#prepareOnce(actual, command).finally(() => this.#builds.delete(actual));
    this.#builds.set(actual, started);
    return started;
  }

  async acquire(envHash: string): Promise<EnvLease | null> {
    const hash = String(envHash).toLowerCase();
    if (!HASH_RE.test(hash)) return null;
    const building = this.#builds.get(hash);
    if (building) await building.catch(() => undefined);
    return this.#exclusive(async () => {
      const interpreterPath = this.interpreterPath(hash);
      const check = await this.#seals.check(this.venvPath(hash), hash);
      if (!check.trusted) {
        if (check.reason !== "no such directory")
          this.#logger.warn({ env_hash: hash, reason: check.reason }, "env directory not trusted; it is rebuilt on the next PREPARE_ENV");
        return null;
      }
      this.#leases.set(hash, (this.#leases.get(hash) ?? 0) + 1);
      // The metadata file (read-modify-write, then rename: about 3 ms) learns of a use at most
      // every TOUCH_INTERVAL_MS per env; this process's own eviction sees every use (#evict).
      const now = Date.now();
      this.#lastUsed.set(hash, now);
      if (now - (this.#lastWritten.get(hash) ?? 0) >= TOUCH_INTERVAL_MS) {
        this.#lastWritten.set(hash, now);
        await this.#touch(hash).catch((err: unknown) => this.#logger.warn({ err, env_hash: hash }, "could not update env metadata"));
      }
      let released = false;
      return {
        envHash: hash,
        interpreterPath,
        identity: `${check.seal.built_at} ${check.seal.digest}`,
        release: () => {
          if (released) return;
          released = true;
          const left = (this.#leases.get(hash) ?? 1) - 1;
          if (left > 0) this.#leases.set(hash, left);
          else this.#leases.delete(hash);
        },
      };
    });
  }

  /** Number of live leases on an env (for tests and metrics). */
  leaseCount(envHash: string): number {
    return this.#leases.get(envHash) ?? 0;
  }

  async #prepareOnce(hash: string, command: PrepareEnvCommand): Promise<EnvReadyPayload> {
    const interpreterPath = this.interpreterPath(hash);
    const check = await checkSeal(this.venvPath(hash), hash);
    const requested = command.python_version ?? null;
    if (check.trusted && servesPythonRequest(check.seal.python, requested)) {
      await this.#exclusive(() => this.#touch(hash)).catch((err: unknown) => this.#logger.warn({ err, env_hash: hash }, "could not update env metadata"));
      this.#logger.debug({ env_hash: hash }, "env cache hit");
      return { env_hash: hash, interpreter_path: interpreterPath, cached: true };
    }
    if (check.trusted) {
      this.#logger.info({ env_hash: hash, built_with: check.seal.python.version, requested }, "env was built for another python_version; rebuilding it");
    } else if (check.reason !== "no such directory") {
      this.#logger.warn({ env_hash: hash, reason: check.reason }, "env directory not trusted; rebuilding it");
    }
    const began = Date.now();
    try {
      await this.#build(hash, command);
    } catch (err) {
      if (err instanceof CasparianError) throw err;
      throw Errors.ENV_BUILD_FAILED([hash.slice(0, 12), (err as Error).message ?? String(err)], { context: { envHash: hash }, cause: err });
    }
    this.#logger.info({ env_hash: hash, ms: Date.now() - began }, "env built");
    return { env_hash: hash, interpreter_path: interpreterPath, cached: false };
  }

  async #build(hash: string, command: PrepareEnvCommand): Promise<void> {
    await mkdir(this.#venvsDir, { recursive: true });
    await this.#sweepOnce();
    const plan = planFromLock(command.lockfile_content);
    const uv = await this.#uvPath();

    const buildRoot = join(this.#venvsDir, `.build-${hash.slice(0, 16)}-${process.pid}-${randomBytes(4).toString("hex")}`);
    const projectDir = join(buildRoot, "project");
    const venvDir = join(buildRoot, "venv");
    try {
      await mkdir(projectDir, { recursive: true, mode: 0o755 });
      const python = command.python_version ? [`--python=${command.python_version}`] : [];

      if (plan.kind === "project") {
        await writeFile(join(projectDir, "pyproject.toml"), synthesizePyproject(plan));
        await writeFile(join(projectDir, "uv.lock"), command.lockfile_content);
      } else if (plan.kind === "script") {
        await writeFile(join(projectDir, "script.py"), synthesizeScript(plan));
        await writeFile(join(projectDir, "script.py.lock"), command.lockfile_content);
      }

      // cwd = projectDir: uv venv then honours the project's requires-python when no version is asked for.
      await runUv(uv, ["venv", "--relocatable", "--quiet", ...python, venvDir], { cwd: projectDir, passEnv: this.#options.uvEnv });

      if (plan.kind === "project") {
        // --no-install-project: we only have the lock, never the project's own source.
        await runUv(uv, ["sync", "--frozen", "--no-dev", "--no-install-project", COMPILE_BYTECODE, ...python], {
          cwd: projectDir,
          env: { UV_PROJECT_ENVIRONMENT: venvDir },
          passEnv: this.#options.uvEnv,
        });
      } else if (plan.kind === "script") {
        await runUv(uv, ["sync", "--script", "script.py", "--frozen", "--active", COMPILE_BYTECODE, ...python], {
          cwd: projectDir,
          env: { VIRTUAL_ENV: venvDir },
          passEnv: this.#options.uvEnv,
        });
      }

      const interpreter = await probeInterpreter(venvDir);
      if (!servesPythonRequest(interpreter, command.python_version)) {
        throw new Error(
          `uv made a ${interpreter.implementation} ${interpreter.version}${interpreter.freeThreaded ? " (free-threaded)" : ""} env, but python_version ${command.python_version} was asked for`,
        );
      }
      await sealEnv(venvDir, hash, command.python_version ?? null, interpreter);

      const finalDir = this.venvPath(hash);
      const existing = await checkSeal(finalDir, hash);
      if (existing.trusted && servesPythonRequest(existing.seal.python, command.python_version)) {
        // Another process finished the same hash first: its env is as good as ours.
        this.#logger.info({ env_hash: hash }, "env was built concurrently by another process; using it");
      } else {
        await replaceEnvDirectory(venvDir, finalDir, join(this.#venvsDir, `.evict-${hash.slice(0, 16)}-${process.pid}-${randomBytes(4).toString("hex")}`));
      }
    } finally {
      await rm(buildRoot, { recursive: true, force: true });
    }

    const size = await directorySize(this.venvPath(hash));
    await this.#exclusive(async () => {
      const meta = await readMetadata(this.#venvsDir);
      const now = new Date().toISOString();
      meta.venvs[hash] = { env_hash: hash, created_at: meta.venvs[hash]?.created_at ?? now, last_used: now, size_bytes: size };
      await this.#evict(meta, hash);
      await writeMetadata(this.#venvsDir, meta);
    });
  }

  /** Mark an env used now; adopt envs found on disk that the metadata does not list. */
  async #touch(hash: string): Promise<void> {
    const meta = await readMetadata(this.#venvsDir);
    const now = new Date().toISOString();
    const entry = meta.venvs[hash];
    if (entry) entry.last_used = now;
    else meta.venvs[hash] = { env_hash: hash, created_at: now, last_used: now, size_bytes: await directorySize(this.venvPath(hash)) };
    await writeMetadata(this.#venvsDir, meta);
  }

  /**
   * LRU eviction down to maxEnvBytes / maxEnvs. Never evicts `keep` (the env just built,
   * about to be used) or an env with a live lease. Caller holds #exclusive.
   */
  async #evict(meta: MetadataFile, keep: string): Promise<void> {
    const { maxEnvBytes, maxEnvs } = this.#options;
    if (maxEnvBytes === undefined && maxEnvs === undefined) return;

    const onDisk = new Set((await readdir(this.#venvsDir)).filter((name) => HASH_RE.test(name)));
    for (const hash of Object.keys(meta.venvs)) if (!onDisk.has(hash)) delete meta.venvs[hash];
    for (const hash of onDisk) {
      if (meta.venvs[hash]) continue;
      const st = await stat(this.venvPath(hash));
      const when = st.mtime.toISOString();
      meta.venvs[hash] = { env_hash: hash, created_at: when, last_used: when, size_bytes: await directorySize(this.venvPath(hash)) };
    }

    for (const [hash, at] of this.#lastUsed) {
      const entry = meta.venvs[hash];
      if (entry && at > Date.parse(entry.last_used)) entry.last_used = new Date(at).toISOString();
    }
    const entries: EnvMetadata[] = Object.values(meta.venvs).sort((a, b) => Date.parse(a.last_used) - Date.parse(b.last_used));
    let total = entries.reduce((sum, e) => sum + (e.size_bytes ?? 0), 0);
    let count = entries.length;
    const over = () => (maxEnvBytes !== undefined && total > maxEnvBytes) || (maxEnvs !== undefined && count > maxEnvs);
    for (const entry of entries) {
      if (!over()) break;
      if (entry.env_hash === keep || (this.#leases.get(entry.env_hash) ?? 0) > 0) continue;
      // Rename first: a half-deleted env must never look ready.
      const trash = join(this.#venvsDir, `.evict-${entry.env_hash.slice(0, 16)}-${process.pid}-${randomBytes(4).toString("hex")}`);
      try {
        await rename(this.venvPath(entry.env_hash), trash);
      } catch (err) {
        this.#logger.warn({ err, env_hash: entry.env_hash }, "could not evict env");
        continue;
      }
      await rm(trash, { recursive: true, force: true });
      delete meta.venvs[entry.env_hash];
      total -= entry.size_bytes ?? 0;
      count -= 1;
      this.#logger.info({ env_hash: entry.env_hash, size_bytes: entry.size_bytes }, "evicted env (least recently used)");
    }
    if (over()) this.#logger.warn({ total_bytes: total, envs: count, maxEnvBytes, maxEnvs }, "env cache still over budget: the remaining envs are in use");
  }

  /** Remove build and eviction leftovers of processes that no longer exist. */
  #sweepOnce(): Promise<void> {
    this.#swept ??= (async () => {
      for (const name of await readdir(this.#venvsDir)) {
        const match = TEMP_RE.exec(name);
        if (!match) continue;
        const pid = Number(match[2]);
        if (pid !== process.pid && isProcessAlive(pid)) continue;
        if (pid === process.pid && match[1] === "build") continue; // one of ours, in progress
        this.#logger.info({ dir: name }, "removing stale env build directory");
        await rm(join(this.#venvsDir, name), { recursive: true, force: true });
      }
    })();
    return this.#swept;
  }

  #uvPath(): Promise<string> {
    this.#uv ??= findUv(this.#options.uvPath);
    this.#uv.catch(() => (this.#uv = undefined));
    return this.#uv;
  }

  #exclusive<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#serial.then(work, work);
    this.#serial = run.catch(() => undefined);
    return run;
  }
}
