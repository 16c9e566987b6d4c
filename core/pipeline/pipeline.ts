/**
 * The pipeline: it declares the worker hooks (hooks/index.ts) and is the only code
 * that fires them, as webpack's Compiler declares and calls its own. Every fire site
 * of every hook is in this file:
 *
 *   start()      → start                      (worker start; a RELOAD's new pipeline)
 *   envReady()   → envReady                   (after each PREPARE_ENV)
 *   runJob()     → beforeDispatch → (environment lease) → jobStart → onBatch* → prepareCommit
 *                  → onConclude → afterConclude
 *   shutdown()   → shutdown                   (worker stop; a pipeline replaced by RELOAD)
 *
 * Sinks live entirely behind those hooks (sink-manager.ts maps their lifecycle onto
 * them); the guest process lives behind a GuestRunner (the bridge's runGuest unless
 * one is injected, which is how tests drive this real code with scripted batches).
 * What a failing tap does, and the timing of every tap, is the interceptor's
 * (interceptor.ts). runJob never throws: every job ends in exactly one receipt.
 */
import { runGuest } from "../bridge/host.js";
import type { SlotUser } from "../bridge/slot-user.js";
import type { WarmPool } from "../bridge/warm-pool.js";
import type { GuestResult, GuestRunOptions, GuestTimeouts } from "../bridge/types.js";
import type { BridgeConfig } from "../config/config.js";
import { CasparianError, Errors, errorMessage } from "../kernel/errors.js";
import type { Batch, EnvReady, JobCommand, JobContext, JobOutcome, Receipt } from "../kernel/job.js";
import type { Logger } from "../kernel/logger.js";
import { createHooks, type BatchTapOptions, type TapOnlyHooks, type WorkerHooks, type WorkerInfo, type WorkerPlugin } from "../../hooks/index.js";
import { HookInterceptor, failingTap } from "./interceptor.js";

export const DEFAULT_TIMEOUTS_SECONDS = { connect: 30, idle: 300, job: 3600 } as const;

/** A job's environment, pinned until released (core/env's EnvManager is one). */
export interface EnvLease {
  readonly interpreterPath: string;
  /** Which build of the env this is (core/env: its seal); warm guests of another build are not used. */
  readonly identity?: string;
  release(): void;
}

/** Where jobs get their environments: null when the envHash was never provisioned here. */
export interface EnvironmentSource {
  acquire(envHash: string): Promise<EnvLease | null>;
}

/** Runs one guest to its end, handing each batch to `onBatch` (awaited). */
export type GuestRunner = (options: GuestRunOptions) => Promise<GuestResult>;

export interface PipelineOptions {
  logger: Logger;
  outputRoot: string;
  workerId: string;
  /** Where a job's environment comes from (looked up after beforeDispatch). */
  envs: EnvironmentSource;
  bridge?: BridgeConfig;
  /** Runs the plugin; default: the bridge's runGuest (a real Python guest process). */
  runGuest?: GuestRunner;
  /** Warm guests (one pool per worker process: it outlives pipelines); unused when bridge.warm.enabled is false. */
  warm?: WarmPool;
  /** The user this worker's guests run as (claimed once per worker process: slot-user.ts). */
  slotUser?: SlotUser;
}

/** One job as the worker hands it over. */
export interface JobRequest {
  jobId: bigint;
  command: JobCommand;
  /** Aborted on ABORT, timeout or shutdown. */
  signal: AbortSignal;
  /** The job's logger (job_id bound). */
  logger: Logger;
}

export class Pipeline {
  readonly #hooks: WorkerHooks = createHooks();
  readonly #interceptor: HookInterceptor;
  readonly #options: PipelineOptions;
  readonly #timeouts: GuestTimeouts;
  readonly #runGuest: GuestRunner;
  readonly #info: WorkerInfo;

  constructor(options: PipelineOptions) {
    this.#options = options;
    this.#runGuest = options.runGuest ?? runGuest;
    this.#info = Object.freeze({ workerId: options.workerId, outputRoot: options.outputRoot, logger: options.logger });
    this.#interceptor = new HookInterceptor(options.logger);
    this.#interceptor.install(this.#hooks);
    const bridge = options.bridge ?? {};
    this.#timeouts = {
      connectMs: (bridge.connectTimeout ?? DEFAULT_TIMEOUTS_SECONDS.connect) * 1000,
      idleMs: (bridge.idleTimeout ?? DEFAULT_TIMEOUTS_SECONDS.idle) * 1000,
      jobMs: (bridge.jobTimeout ?? DEFAULT_TIMEOUTS_SECONDS.job) * 1000,
    };
  }

  /** What plugins get: every hook, to tap, never to call. */
  get hooks(): TapOnlyHooks {
    return this.#hooks;
  }

  /** Apply plugins in order (webpack's `plugin.apply(compiler)`). */
  use(...plugins: WorkerPlugin[]): this {
    for (const plugin of plugins) plugin.apply(this.#hooks);
    return this;
  }

  /** Fire `start`. A failing tap fails the start (the worker does not come up half-ready). */
  async start(): Promise<void> {
    await this.#hooks.start.promise(this.#info);
  }

  /** Fire `envReady`; never rejects (every tap runs, failures are logged). */
  async envReady(env: EnvReady): Promise<void> {
    await this.#hooks.envReady.promise(env);
  }

  /** Fire `shutdown`; resolves once every tap has finished, never rejects. */
  async shutdown(): Promise<void> {
    await this.#hooks.shutdown.promise(this.#info);
  }

  /** One job, from its DISPATCH to its receipt, in the documented hook order. Never throws. */
  async runJob(request: JobRequest): Promise<Receipt> {
    const { jobId, logger, signal } = request;
    const outcome: JobOutcome = { status: "SUCCESS", error: null, artifacts: [], metrics: {} };
    let job = this.#context(request, request.command);
    let lease: EnvLease | null = null;
    // The batch a sink may still be writing when the guest side fails (ABORT, timeout): sinks abort only after it settles.
    let writing: Promise<void> | null = null;

    try {
      let dispatched;
      try {
        dispatched = await this.#hooks.beforeDispatch.promise({ jobId, workerId: this.#options.workerId, command: request.command });
      } catch (err) {
        // Declined, not broken: a Sentinel (casparian run) reports the input as skipped.
        outcome.metrics.rejected_before_dispatch = 1;
        throw err;
      }
      job = this.#context(request, dispatched.command);
      // After beforeDispatch, so that a rewritten envHash is the one used and a guard can reject first.
      lease = await this.#options.envs.acquire(job.command.envHash);
      if (lease === null) throw Errors.ENV_NOT_PROVISIONED([job.command.envHash.slice(0, 12)], { context: { jobId, plugin: job.command.pluginName } });
      if (signal.aborted) throw signal.reason;
      // Debug: at info a job is one line, its "job concluded" (each line is a write, and wakes whoever reads the log).
      logger.debug({ file: job.command.filePath, sinks: job.command.sinks.length }, "job started");

      await this.#hooks.jobStart.promise(job);
      const guest = await this.#runGuest({
        interpreterPath: lease.interpreterPath,
        envIdentity: lease.identity,
        job,
        timeouts: this.#timeouts,
        allowEnv: this.#options.bridge?.env,
        maxFrameBytes: this.#options.bridge?.maxFrameBytes,
        limits: this.#options.bridge?.limits,
        cgroup: this.#options.bridge?.cgroup,
        warm: this.#options.bridge?.warm?.enabled === false ? undefined : this.#options.warm,
        slotUser: this.#options.slotUser,
        sandbox: this.#options.bridge?.sandbox,
        recycleFrames: (this.#hooks.onBatch.taps as BatchTapOptions[]).every((tap) => tap.usesRetain === true),
        onBatch: (batch: Batch) => (writing = this.#hooks.onBatch.promise(batch, job)),
      });
      Object.assign(outcome.metrics, guestMetrics(guest));
      await this.#hooks.prepareCommit.promise(job);
    } catch (err) {
      fail(outcome, err);
      await waitForWrite(writing, logger);
    } finally {
      lease?.release();
    }

    await this.#hooks.onConclude.promise(outcome, job);
    Object.assign(outcome.metrics, this.#interceptor.finish(jobId));

    const receipt = toReceipt(outcome);
    // The worker logs every conclusion with the receipt; here only what the receipt loses: the stack and the tap.
    if (outcome.status === "FAILED") logger.error({ err: outcome.error, ...failingTap(outcome.error) }, "job failed: %s", receipt.errorMessage);
    await this.#hooks.afterConclude.promise(receipt, job);
    return receipt;
  }

  #context(request: JobRequest, command: JobCommand): JobContext {
    return Object.freeze({
      jobId: request.jobId,
      workerId: this.#options.workerId,
      command: Object.freeze({ ...command, sinks: Object.freeze([...command.sinks]) }),
      logger: request.logger,
      outputRoot: this.#options.outputRoot,
      signal: request.signal,
    });
  }
}

/** After this long waiting for a sink's write to finish before aborting it, say so (the sink should honour job.signal). */
const SLOW_WRITE_WARNING_MS = 5_000;

async function waitForWrite(writing: Promise<void> | null, logger: Logger): Promise<void> {
  if (writing === null) return;
  let timer: NodeJS.Timeout | undefined;
  const settled = writing.then(
    () => undefined,
    () => undefined,
  );
  const slow = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      logger.warn(
        { waited_ms: SLOW_WRITE_WARNING_MS },
        "a sink is still writing a batch of the failed job; its abort waits for the write (sinks should stop on job.signal)",
      );
      resolve();
    }, SLOW_WRITE_WARNING_MS);
  });
  await Promise.race([settled, slow]);
  await settled;
  clearTimeout(timer);
}

function fail(outcome: JobOutcome, err: unknown): void {
  outcome.status = "FAILED";
  // Keep the first cause: later errors (e.g. aborting sinks) are consequences of it.
  outcome.error ??= err instanceof Error ? err : new Error(String(err));
}

function guestMetrics(guest: GuestResult): Record<string, number> {
  const metrics: Record<string, number> = {
    rows: guest.rows,
    batches: guest.batches,
    ipc_bytes: guest.ipcBytes,
    guest_ms: Math.round(guest.durationMs),
    guest_start_ms: guest.startupMs,
    guest_warm: guest.warm ? 1 : 0,
    plugin_ms: Math.max(0, Math.round(guest.durationMs - guest.startupMs)),
  };
  if (guest.parentRssKb) metrics.guest_parent_rss_kb = guest.parentRssKb;
  if (guest.frameBuffers !== undefined) metrics.frame_buffers = guest.frameBuffers;
  for (const [topic, rows] of guest.rowsByTopic) metrics[`rows.${topic}`] = rows;
  for (const [name, value] of Object.entries(guest.guestMetrics)) metrics[`guest.${name}`] = value;
  return metrics;
}

function toReceipt(outcome: JobOutcome): Receipt {
  const metrics: Record<string, number | bigint> = {};
  for (const [name, value] of Object.entries(outcome.metrics)) {
    // The Python Sentinel validates metrics as int: never send a fraction.
    metrics[name] = typeof value === "bigint" ? value : Math.round(value);
  }
  return {
    status: outcome.status,
    metrics,
    artifacts: outcome.status === "SUCCESS" ? outcome.artifacts : [],
    errorMessage: outcome.status === "SUCCESS" ? null : receiptError(outcome.error),
  };
}

function receiptError(error: Error | null): string {
  if (error === null) return "job failed without an error (bug: please report)";
  return error instanceof CasparianError ? error.describe() : errorMessage(error);
}
