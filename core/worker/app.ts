/**
 * Composition root of a worker process: the only place that knows every concrete
 * part (the pipeline from the config, the environment manager, metrics) and wires them
 * to the Worker. Everything else depends on interfaces.
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { loadConfig, type LoadedConfig } from "../config/loader.js";
import { EnvManager } from "../env/manager.js";
import { SystemPythonEnvs } from "../env/system.js";
import { claimSlotUser } from "../bridge/slot-user.js";
import { configureShimBytecode } from "../bridge/shim-bytecode.js";
import { WarmPool } from "../bridge/warm-pool.js";
import type { Logger } from "../kernel/logger.js";
import type { WorkerMetrics } from "./metrics.js";
import { ProgressLog } from "./progress-log.js";
import type { Worker } from "./worker.js";
import { WarmStart, type WarmStartHint } from "./warm-start.js";

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
  /** Log `job progress` lines this often while a job streams (casparian run); off when undefined. */
  progressIntervalMs?: number;
  logger: Logger;
  loaded: LoadedConfig;
  /** How the config was found, so RELOAD reads the same file (or searches the same place) again. */
  configSource: { explicitPath?: string; cwd: string };
  /** The plugin the first jobs will run (casparian run): its warm guest starts now (warm-start.ts). */
  warmStart?: WarmStartHint;
  /** bridge.warm.prefaultMb when the config sets none (casparian run: 0 when its workers take every core). */
  warmPrefaultDefaultMb?: number;
}

/** Build everything, start the worker (it connects and identifies), serve metrics if asked. */
export async function startWorkerProcess(settings: WorkerSettings): Promise<Worker> {
  const { logger, outputRoot, workerId } = settings;
  // Guests load the shim's bytecode from here; the worker compiles it (shim-bytecode.ts).
  configureShimBytecode(join(settings.home, "shim-bytecode"), logger);
  // Metrics exist only to be served: without a port, prom-client is never loaded (about 7 MB of RSS).
  const metricsModule = settings.metricsPort === undefined ? undefined : await import("./metrics.js");
  const metrics: WorkerMetrics | undefined = metricsModule === undefined ? undefined : new metricsModule.WorkerMetrics({ processMetrics: true });
  const environments = settings.loaded.config.environments ?? {};
  const envs = new SystemPythonEnvs(
    new EnvManager({
      home: settings.home,
      logger,
      maxEnvBytes: environments.maxEnvBytes,
      maxEnvs: environments.maxEnvs,
      uvPath: environments.uv,
      uvEnv: environments.env,
    }),
    { systemPython: environments.systemPython, logger },
  );

  // Sinks resolve their targets inside the root (realpath), so it must exist before the first job.
  await mkdir(outputRoot, { recursive: true });
  // This worker is one job slot: its guests run as a user of their own (a uid no other worker on the host holds).
  const bridgeConfig = settings.loaded.config.bridge ?? {};
  const slotUser = (await claimSlotUser({ user: bridgeConfig.user, users: bridgeConfig.users, logger })) ?? undefined;
  // Warm guests outlive pipelines too: a RELOAD keeps the parents already warm.
  const warmConfig = bridgeConfig.warm ?? {};
  const warm = new WarmPool({
    logger,
    maxParents: warmConfig.maxParents,
    idleMs: warmConfig.idleTimeout === undefined ? undefined : warmConfig.idleTimeout * 1000,
    maxParentBytes: warmConfig.maxParentMemory,
    prefaultMb: warmConfig.prefaultMb ?? settings.warmPrefaultDefaultMb,
  });
  metrics?.observeWarmGuests(() => warm.stats());
  // Before the job modules load (Arrow, the sinks, ZeroMQ: a third of a second): the plugin's imports load meanwhile.
  const warmStart = settings.warmStart === undefined ? undefined : new WarmStart(settings.warmStart, { envs, warm, bridge: bridgeConfig, slotUser, logger });
  await warmStart?.start();
  const [{ Worker }, { pipelineFromConfig }] = await Promise.all([import("./worker.js"), import("../pipeline/from-config.js")]);
  // The metrics counters outlive pipelines: a RELOAD's pipeline taps the same ones.
  const observers = [
    ...(metrics === undefined ? [] : [new metricsModule!.MetricsPlugin(metrics)]),
    ...(settings.progressIntervalMs === undefined ? [] : [new ProgressLog(settings.progressIntervalMs)]),
    ...(warmStart === undefined ? [] : [warmStart]),
  ];
  const build = (loaded: LoadedConfig) => pipelineFromConfig(loaded, { logger, outputRoot, workerId, envs, warm, slotUser, plugins: observers });
  let pipeline = await build(settings.loaded);

  const reload = async (): Promise<void> => {
    const loaded = await loadConfig({ ...settings.configSource, command: "worker" });
    const next = await build(loaded);
    await next.start();
    const previous = pipeline;
    pipeline = next;
    logger.info({ config: loaded.filepath }, "pipeline rebuilt from the reloaded config");
    // The old sinks may hold pools or connections: release them once the job still using them is done.
    void worker
      .jobSettled()
      .then(() => previous.shutdown())
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
    metrics,
    capabilities: settings.capabilities,
    silenceWarningMs: settings.silenceWarningMs,
    maxMessageBytes: settings.loaded.config.limits?.maxMessageBytes,
    maxQueuedJobs: settings.loaded.config.limits?.maxQueuedJobs,
    onStopped: async () => {
      // The warm pool's close waits for the teardowns of ended jobs too (job-teardown.ts): a stopped worker leaves nothing behind.
      await warm.close();
      await slotUser?.release();
      await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    },
  });

  if (settings.metricsPort !== undefined && metricsModule !== undefined && metrics !== undefined) {
    server = await metricsModule.serveMetrics(settings.metricsPort, metrics.registry, settings.loaded.config.metricsHost);
    logger.info({ port: (server.address() as AddressInfo).port }, "serving Prometheus metrics on /metrics");
  }
  await worker.start();
  return worker;
}
