/**
 * A Pipeline built from a loaded config file: the bundled and configured sinks behind
 * the SinkManager, then extra plugins given by the caller (metrics), then the config's
 * `plugins`, then its inline `hooks`, in that order (the order of their taps at one stage).
 */
import type { CasparianConfig } from "../config/config.js";
import type { LoadedConfig } from "../config/loader.js";
import type { TapOnlyHooks, WorkerPlugin } from "../../hooks/index.js";
import { Pipeline, type PipelineOptions } from "./pipeline.js";
import { loadSinkPlugins } from "./sink-loader.js";
import { SinkManager } from "./sink-manager.js";

export interface PipelineFromConfigOptions extends Omit<PipelineOptions, "bridge"> {
  /** Applied after the sinks and before the config's own plugins (e.g. the Prometheus observer). */
  plugins?: WorkerPlugin[];
}

export async function pipelineFromConfig(loaded: LoadedConfig, options: PipelineFromConfigOptions): Promise<Pipeline> {
  const { config, dir } = loaded;
  const { logger, outputRoot } = options;
  const pipeline = new Pipeline({ ...options, bridge: config.bridge });
  const sinks = await loadSinkPlugins(config.sinks, dir, config.parquet);
  pipeline.use(new SinkManager({ plugins: sinks, logger, outputRoot }), ...(options.plugins ?? []), ...(config.plugins ?? []));
  tapConfigHooks(pipeline.hooks, config);
  return pipeline;
}

const CONFIG_TAP = "config";

/** Inline `hooks: { onBatch: async (...) => {} }` from the config file, at the default stage. */
function tapConfigHooks(hooks: TapOnlyHooks, config: CasparianConfig): void {
  const taps = config.hooks ?? {};
  for (const [name, fn] of Object.entries(taps) as Array<[keyof TapOnlyHooks, ((...args: unknown[]) => unknown) | undefined]>) {
    if (!fn) continue;
    if (name === "beforeDispatch") {
      // A waterfall tap must hand the request on; a tap that only looks returns nothing.
      hooks.beforeDispatch.tapPromise(CONFIG_TAP, async (request) => ((await fn(request)) as typeof request | undefined) ?? request);
      continue;
    }
    const hook = hooks[name] as unknown as { tapPromise(name: string, fn: (...args: unknown[]) => Promise<void>): void };
    hook.tapPromise(CONFIG_TAP, async (...args) => {
      await fn(...args);
    });
  }
}
