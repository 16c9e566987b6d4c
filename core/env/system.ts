/**
 * env_hash "system": upstream's Rust Sentinel sends it for a plugin published without a
 * lockfile, and upstream's Rust worker ran such a plugin with `python3` from PATH. We do
 * the same unless the config says `environments.systemPython: false`.
 *
 * The interpreter is asked for its own sys.executable once, so the job log names the real
 * binary (not a pyenv or Debian alternatives shim), and a missing Python fails the job with
 * a coded error instead of a spawn ENOENT deep in the bridge.
 */
import { Errors } from "../kernel/errors.js";
import type { Logger } from "../kernel/logger.js";
import { describeFailure, runCommand } from "../kernel/process.js";
import type { EnvReadyPayload, PrepareEnvCommand } from "../protocol/messages.js";
import type { EnvironmentProvider, EnvLease } from "./types.js";

export const SYSTEM_ENV_HASH = "system";
const DEFAULT_SYSTEM_PYTHON = "python3";

export class SystemPythonEnvs implements EnvironmentProvider {
  readonly #inner: EnvironmentProvider;
  readonly #python: string | false;
  readonly #logger: Logger;
  #resolved: Promise<string> | undefined;

  constructor(inner: EnvironmentProvider, options: { systemPython?: string | false; logger: Logger }) {
    this.#inner = inner;
    this.#python = options.systemPython ?? DEFAULT_SYSTEM_PYTHON;
    this.#logger = options.logger.child({ component: "env" });
  }

  prepare(command: PrepareEnvCommand): Promise<EnvReadyPayload> {
    return this.#inner.prepare(command);
  }

  async acquire(envHash: string): Promise<EnvLease | null> {
    if (envHash !== SYSTEM_ENV_HASH) return this.#inner.acquire(envHash);
    if (this.#python === false) throw Errors.ENV_SYSTEM_DISABLED([]);
    const interpreterPath = await this.#interpreter(this.#python);
    return { envHash: SYSTEM_ENV_HASH, interpreterPath, release: () => undefined };
  }

  #interpreter(python: string): Promise<string> {
    this.#resolved ??= (async () => {
      const probe = await runCommand(python, ["-c", "import sys; print(sys.executable)"], { timeoutMs: 15_000 });
      const executable = probe.stdout.trim();
      if (!probe.ok || executable === "") {
        const why =
          probe.error?.code === "ENOENT"
            ? "not found on PATH"
            : (probe.stderr || (probe.ok ? "no output" : describeFailure(probe, 15_000))).trim().split("\n").slice(-2).join(" ");
        throw Errors.ENV_SYSTEM_PYTHON_MISSING([python, why]);
      }
      this.#logger.info({ python, executable }, 'env_hash "system" runs with this interpreter');
      return executable;
    })();
    // A Python installed later is picked up by the next job.
    this.#resolved.catch(() => (this.#resolved = undefined));
    return this.#resolved;
  }
}
