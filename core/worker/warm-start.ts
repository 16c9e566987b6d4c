/**
 * A warm parent started before the first DISPATCH. `casparian run` knows the plugin and its
 * environment when it starts its workers and says so (--warm-start-*): the plugin's imports
 * (pandas: most of a second) then overlap the worker's own start, its connect and PREPARE_ENV
 * instead of following the first DISPATCH.
 *
 * Only a hint, never trusted for a job: the parent is keyed on the same facts as a job's
 * (bridge/warm-key.ts), so a job whose facts differ (another source or env, a command a
 * beforeDispatch tap rewrote, an input its slot user cannot read) does not use it, and it
 * stops once idle. Under a remote Sentinel there is no hint and nothing changes.
 */
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { Stage, type TapOnlyHooks, type WorkerPlugin } from "../../hooks/index.js";
import { unreachableFor, type SlotUser } from "../bridge/slot-user.js";
import { envPathsForSlotUser, warmKey } from "../bridge/warm-key.js";
import type { WarmPool } from "../bridge/warm-pool.js";
import type { BridgeConfig } from "../config/config.js";
import type { Logger } from "../kernel/logger.js";
import type { EnvironmentSource } from "../pipeline/pipeline.js";

/** What the first jobs will run: the plugin's env, its source file and its name as DISPATCH carries it. */
export interface WarmStartHint {
  envHash: string;
  pluginFile: string;
  pluginName: string;
}

export interface WarmStartParts {
  envs: EnvironmentSource;
  warm: WarmPool;
  bridge: BridgeConfig;
  slotUser: SlotUser | undefined;
  logger: Logger;
}

export class WarmStart implements WorkerPlugin {
  readonly name = "WarmStart";
  readonly #hint: WarmStartHint;
  readonly #parts: WarmStartParts;
  #started = false;

  constructor(hint: WarmStartHint, parts: WarmStartParts) {
    this.#hint = hint;
    this.#parts = parts;
  }

  /** An env built by this worker's PREPARE_ENV was not there at start: its parent starts once it is. */
  apply(hooks: TapOnlyHooks): void {
    hooks.envReady.tapPromise({ name: this.name, stage: Stage.OBSERVE }, async (env) => {
      if (env.envHash.toLowerCase() === this.#hint.envHash.toLowerCase()) await this.start();
    });
  }

  /**
   * Starts the parent when the env is there (built and sealed); true when it did (or had).
   * Never throws: a hint that cannot be followed leaves the jobs as they were.
   */
  async start(): Promise<boolean> {
    if (this.#started) return true;
    const { envs, warm, bridge, slotUser, logger } = this.#parts;
    if (bridge.warm?.enabled === false || bridge.sandbox !== undefined) return false;
    try {
      const source = await readFile(this.#hint.pluginFile, "utf8");
      const lease = await envs.acquire(this.#hint.envHash);
      if (lease === null) return false;
      try {
        // As a job decides it (host.ts): the slot user when it reaches the env; a job whose input it cannot read differs.
        const user = slotUser && (await unreachableFor(slotUser, envPathsForSlotUser(lease.interpreterPath, tmpdir()))) === null ? slotUser : undefined;
        if (this.#started) return true;
        this.#started = true;
        const began = Date.now();
        const ready = warm.prestart(
          warmKey({
            interpreterPath: lease.interpreterPath,
            envIdentity: lease.identity,
            cgroup: bridge.cgroup,
            source,
            pluginName: this.#hint.pluginName,
            allowEnv: bridge.env,
            user,
          }),
        );
        const facts = { plugin: this.#hint.pluginName, env_hash: this.#hint.envHash };
        logger.info(facts, "warm guest started ahead of the first job");
        void ready.then((forks) => {
          if (forks) logger.info({ ...facts, ms: Date.now() - began }, "warm guest started ahead is ready");
        });
        return true;
      } finally {
        lease.release();
      }
    } catch (err) {
      logger.debug({ err, plugin_file: this.#hint.pluginFile }, "no warm guest started ahead: the first job starts it");
      return false;
    }
  }
}
