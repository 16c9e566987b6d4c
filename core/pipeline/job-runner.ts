/**
 * Runs one job from DISPATCH to receipt, firing the job hooks in their documented
 * order (hooks/index.ts):
 *
 *   beforeDispatch → jobStart → onBatch* → prepareCommit → onConclude → afterConclude
 *
 * Sinks live entirely behind those hooks; the guest process lives behind runGuest.
 * Every path ends in exactly one receipt: this function never throws.
 */
import { performance } from "node:perf_hooks";
import { runGuest } from "../bridge/host.js";
import type { GuestResult, GuestTimeouts } from "../bridge/types.js";
import type { BridgeConfig } from "../config/config.js";
import { errorMessage } from "../kernel/errors.js";
import type { JobContext, JobExecutor, JobOutcome } from "../kernel/job.js";
import type { Logger } from "../kernel/logger.js";
import type { DispatchCommand, JobReceipt } from "../protocol/messages.js";
import type { WorkerHooks } from "../../hooks/index.js";

export const DEFAULT_TIMEOUTS_SECONDS = { connect: 30, idle: 300, job: 3600 } as const;

export interface JobRunnerOptions {
  hooks: WorkerHooks;
  logger: Logger;
  outputRoot: string;
  workerId: string;
  bridge?: BridgeConfig;
}

type RunRequest = Parameters<JobExecutor["run"]>[0];

export class JobRunner implements JobExecutor {
  readonly #hooks: WorkerHooks;
  readonly #options: JobRunnerOptions;
  readonly #timeouts: GuestTimeouts;

  constructor(options: JobRunnerOptions) {
    this.#options = options;
    this.#hooks = options.hooks;
    const bridge = options.bridge ?? {};
    this.#timeouts = {
      connectMs: (bridge.connectTimeout ?? DEFAULT_TIMEOUTS_SECONDS.connect) * 1000,
      idleMs: (bridge.idleTimeout ?? DEFAULT_TIMEOUTS_SECONDS.idle) * 1000,
      jobMs: (bridge.jobTimeout ?? DEFAULT_TIMEOUTS_SECONDS.job) * 1000,
    };
  }

  async run(request: RunRequest): Promise<JobReceipt> {
    const { jobId, logger } = request;
    const clock = new Stopwatch();
    const outcome: JobOutcome = { status: "SUCCESS", error: null, artifacts: [], metrics: {} };
    let job = this.#context(request, request.command);

    try {
      const dispatched = await this.#hooks.beforeDispatch.promise({ jobId, workerId: this.#options.workerId, command: request.command });
      job = this.#context(request, dispatched.command);
      logger.info({ file: job.command.file_path, sinks: job.command.sinks.length }, "job started");

      await this.#hooks.jobStart.promise(job);
      outcome.metrics.dispatch_ms = clock.lap();

      const guest = await runGuest({
        interpreterPath: request.interpreterPath,
        job,
        timeouts: this.#timeouts,
        allowEnv: this.#options.bridge?.env,
        maxFrameBytes: this.#options.bridge?.maxFrameBytes,
        onBatch: (batch) => this.#hooks.onBatch.promise(batch, job),
      });
      outcome.metrics.guest_ms = clock.lap();
      Object.assign(outcome.metrics, guestMetrics(guest));

      await this.#hooks.prepareCommit.promise(job);
    } catch (err) {
      fail(outcome, err);
    }

    await this.#conclude(outcome, job);
    outcome.metrics.commit_ms = clock.lap();
    outcome.metrics.duration_ms = clock.total();

    const receipt = toReceipt(outcome);
    // The worker logs every conclusion with the receipt; here only what the receipt loses: the stack.
    if (outcome.status === "FAILED") logger.error({ err: outcome.error }, "job failed: %s", receipt.error_message);
    await this.#hooks.afterConclude.promise(receipt, job).catch((err: unknown) => logger.warn({ err }, "afterConclude tap failed"));
    return receipt;
  }

  /** onConclude taps record trouble on the outcome; a tap that throws still turns the job FAILED. */
  async #conclude(outcome: JobOutcome, job: JobContext): Promise<void> {
    try {
      await this.#hooks.onConclude.promise(outcome, job);
    } catch (err) {
      fail(outcome, err);
    }
  }

  #context(request: RunRequest, command: DispatchCommand): JobContext {
    return Object.freeze({
      jobId: request.jobId,
      workerId: this.#options.workerId,
      command: Object.freeze({ ...command }),
      logger: request.logger,
      outputRoot: this.#options.outputRoot,
      signal: request.signal,
    });
  }
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
    guest_start_ms: guest.startupMs,
    plugin_ms: Math.max(0, Math.round(guest.durationMs - guest.startupMs)),
  };
  for (const [topic, rows] of guest.rowsByTopic) metrics[`rows.${topic}`] = rows;
  for (const [name, value] of Object.entries(guest.guestMetrics)) metrics[`guest.${name}`] = value;
  return metrics;
}

function toReceipt(outcome: JobOutcome): JobReceipt {
  const metrics: Record<string, number | bigint> = {};
  for (const [name, value] of Object.entries(outcome.metrics)) {
    // The Python Sentinel validates metrics as int: never send a fraction.
    metrics[name] = typeof value === "bigint" ? value : Math.round(value);
  }
  return {
    status: outcome.status,
    metrics,
    artifacts: outcome.status === "SUCCESS" ? outcome.artifacts : [],
    error_message: outcome.status === "SUCCESS" ? null : receiptError(outcome.error),
  };
}

function receiptError(error: Error | null): string {
  if (error === null) return "job failed without an error (bug: please report)";
  return errorMessage(error);
}

/** Milliseconds since the last lap, and since the start. */
class Stopwatch {
  readonly #start = performance.now();
  #last = this.#start;
  lap(): number {
    const now = performance.now();
    const ms = Math.round(now - this.#last);
    this.#last = now;
    return ms;
  }
  total(): number {
    return Math.round(performance.now() - this.#start);
  }
}
