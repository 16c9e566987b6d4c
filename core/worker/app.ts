/**
 * Composition root of a worker process: the only place that knows every concrete
 * part (sinks, plugins, job runner, environment manager, metrics) and wires them
 * to the Worker. Everything else depends on interfaces.
 */
import { mkdir } from "node:fs/promises";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { CasparianConfig } from "../config/config.js";
import { loadConfig, type LoadedConfig } from "../config/loader.js";
import { EnvManager } from "../env/manager.js";
import { SystemPythonEnvs } from "../env/system.js";
import { JobRunner } from "../pipeline/job-runner.js";
import type { Logger } from "../kernel/logger.js";
import { MetricsPlugin, WorkerMetrics, serveMetrics } from "./metrics.js";
import { Worker, type WorkerPipeline } from "./worker.js";
import { createHooks, type WorkerHooks } from "../../hooks/index.js";
import { loadSinkPlugins } from "../pipeline/sink-loader.js";
import { SinkManager } from "../pipeline/sink-manager.js";

/** Everything a worker process needs, already resolved (flags > config > defaults) by the CLI. */
export interface WorkerSettings {
  connect: string;
  /** Absolute output root. */
  outputRoot: string;
  workerId: string;
  /** Absolute $CASPARIAN_HOME: venvs live here. */
  home: string;
  heartbeatIntervalMs: number;
  graceMs: number;
  metricsPort?: number;
  /** Sent in IDENTIFY; default ["*"]. */
  capabilities?: string[];
  silenceWarningMs?: number;
  logger: Logger;
  loaded: LoadedConfig;
  /** How the config was found, so RELOAD reads the same file (or searches the same place) again. */
  configSource: { explicitPath?: string; cwd: string };
}

export interface PipelineContext {
  logger: Logger;
  outputRoot: string;
  workerId: string;
  /** Counters that outlive pipelines: a RELOAD re-taps the same ones. */
  metrics?: WorkerMetrics;
}

/** Fresh hooks with sinks, plugins and inline config taps applied, and the job runner on top of them. */
export async function buildPipeline(loaded: LoadedConfig, context: PipelineContext): Promise<WorkerPipeline> {
  const { config, dir } = loaded;
  const { logger, outputRoot, workerId } = context;
  const hooks = createHooks();
  const plugins = await loadSinkPlugins(config.sinks, dir, config.parquet);
  new SinkManager({ plugins, logger, outputRoot }).apply(hooks);
  if (context.metrics) new MetricsPlugin(context.metrics).apply(hooks);
  for (const plugin of config.plugins ?? []) plugin.apply(hooks);
  tapConfigHooks(hooks, config);
  const executor = new JobRunner({ hooks, logger, outputRoot, workerId, bridge: config.bridge });
  return { hooks, executor };
}

const CONFIG_TAP = "config";

/** Inline `hooks: { onBatch: async (...) => {} }` from the config file. */
function tapConfigHooks(hooks: WorkerHooks, config: CasparianConfig): void {
  const taps = config.hooks ?? {};
  for (const [name, fn] of Object.entries(taps) as Array<[keyof WorkerHooks, ((...args: unknown[]) => unknown) | undefined]>) {
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

/** Build everything, start the worker (it connects and identifies), serve metrics if asked. */
export async function startWorkerProcess(settings: WorkerSettings): Promise<Worker> {
  const { logger, outputRoot, workerId } = settings;
  const metrics = new WorkerMetrics({ processMetrics: settings.metricsPort !== undefined });
  const context: PipelineContext = { logger, outputRoot, workerId, metrics };
  const environments = settings.loaded.config.environments ?? {};
  const envs = new SystemPythonEnvs(
    new EnvManager({
      home: settings.home,
      logger,
      maxEnvBytes: environments.maxEnvBytes,
      maxEnvs: environments.maxEnvs,
      uvPath: environments.uv,
    }),
    { systemPython: environments.systemPython, logger },
  );

  // Sinks resolve their targets inside the root (realpath), so it must exist before the first job.
  await mkdir(outputRoot, { recursive: true });
  let pipeline = await buildPipeline(settings.loaded, context);

  const reload = async (): Promise<void> => {
    const loaded = await loadConfig({ ...settings.configSource, command: "worker" });
    const next = await buildPipeline(loaded, context);
    const info = { workerId, outputRoot, logger };
    await next.hooks.start.promise(info);
    const previous = pipeline;
    pipeline = next;
    logger.info({ config: loaded.filepath }, "pipeline rebuilt from the reloaded config");
    // The old sinks may hold pools or connections: release them once the job still using them is done.
    void worker
      .jobSettled()
      .then(() => previous.hooks.shutdown.promise(info))
      .catch((err: unknown) => logger.warn({ err }, "closing the previous pipeline failed"));
  };

  let server: Server | undefined;
  const worker = new Worker({
    connect: settings.connect,
    workerId,
    heartbeatIntervalMs: settings.heartbeatIntervalMs,
    graceMs: settings.graceMs,
    logger,
    envs,
    pipeline: () => pipeline,
    reload,
    outputRoot,
    metrics,
    capabilities: settings.capabilities,
    silenceWarningMs: settings.silenceWarningMs,
    onStopped: () => new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve())),
  });

  if (settings.metricsPort !== undefined) {
    server = await serveMetrics(settings.metricsPort, metrics.registry);
    logger.info({ port: (server.address() as AddressInfo).port }, "serving Prometheus metrics on /metrics");
  }
  await worker.start();
  return worker;
}
