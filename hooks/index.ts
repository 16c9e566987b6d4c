/**
 * Every hook the worker fires, declared once (webpack lib/Compiler.js style).
 *
 * Only the core calls these hooks; plugins get `TapOnly` views and tap by name:
 *
 *   worker.hooks.onBatch.tapPromise("MySink", async (batch, job) => { ... });
 *
 * Order of one job:      beforeDispatch → jobStart → onBatch* → prepareCommit → onConclude → afterConclude
 * Around the lifecycle:  start (once, before the first job), envReady (per PREPARE_ENV), shutdown (once).
 *
 * Failure semantics are part of the contract (see README "Hooks"):
 *  - AsyncSeries hooks stop at the first failing tap; the core turns that error into a FAILED job.
 *  - beforeDispatch is a waterfall: each tap gets the (possibly rewritten) command and returns it;
 *    a tap rejects a job by throwing (Errors.HOOK_REJECTED gives a proper code).
 *  - onConclude always runs, for successes and failures. A tap that cannot do its part records it
 *    on the outcome (status = "FAILED", error) so that the taps after it still run and see it; the
 *    SinkManager does this when a commit fails. A tap that throws also fails the job, but, this being
 *    an AsyncSeries hook, the taps after it do not run.
 *  - afterConclude and shutdown are AsyncParallel: every tap runs, errors are logged, never fatal.
 */
import { AsyncParallelHook, AsyncSeriesHook, AsyncSeriesWaterfallHook } from "tapable";
import type { Batch, JobContext, JobOutcome } from "../core/kernel/job.js";
import type { DispatchCommand, EnvReadyPayload, JobReceipt } from "../core/protocol/messages.js";
import type { Logger } from "../core/kernel/logger.js";

/** Known once the worker process is up. */
export interface WorkerInfo {
  readonly workerId: string;
  readonly outputRoot: string;
  readonly logger: Logger;
}

/** The dispatch command plus who is about to run it; a tap returns it, possibly rewritten. */
export interface DispatchRequest {
  readonly jobId: bigint;
  readonly workerId: string;
  command: DispatchCommand;
}

export function createHooks() {
  return Object.freeze({
    /** Worker started, before IDENTIFY. Sinks clean staging left by a crashed run. Series. */
    start: new AsyncSeriesHook<[WorkerInfo]>(["worker"]),
    /** An environment is ready (built or cached). Series; errors are logged only. */
    envReady: new AsyncSeriesHook<[EnvReadyPayload]>(["env"]),
    /** May rewrite the command (return it) or reject the job (throw). Waterfall. */
    beforeDispatch: new AsyncSeriesWaterfallHook<[DispatchRequest]>(["request"]),
    /** The job is about to run its guest: sinks open. A throw fails the job before the guest starts. */
    jobStart: new AsyncSeriesHook<[JobContext]>(["job"]),
    /** One batch for one topic. Awaited: a slow tap slows the guest instead of growing memory. */
    onBatch: new AsyncSeriesHook<[Batch, JobContext]>(["batch", "job"]),
    /** The guest ended cleanly: phase one of the commit (sinks flush to staging). A throw fails the job. */
    prepareCommit: new AsyncSeriesHook<[JobContext]>(["job"]),
    /** Phase two: on SUCCESS sinks promote and push artifacts (a failed commit sets FAILED); on FAILED they discard. */
    onConclude: new AsyncSeriesHook<[JobOutcome, JobContext]>(["outcome", "job"]),
    /** The receipt as sent to the Sentinel. Observers only (metrics, audit). Parallel. */
    afterConclude: new AsyncParallelHook<[JobReceipt, JobContext]>(["receipt", "job"]),
    /** The worker is stopping. Parallel; every tap runs. */
    shutdown: new AsyncParallelHook<[WorkerInfo]>(["worker"]),
  });
}

export type WorkerHooks = ReturnType<typeof createHooks>;

/** What a plugin may do with a hook: tap it, never call it. */
export type TapOnly<H> = H extends { tap: infer T; tapPromise: infer P } ? { tap: T; tapPromise: P } : never;
export type TapOnlyHooks = { readonly [K in keyof WorkerHooks]: TapOnly<WorkerHooks[K]> };

/** Named stages for ordering taps, like webpack's PROCESS_ASSETS_STAGE_*. Lower runs first. */
export const Stage = {
  /** Validation and access control: runs before anything writes. */
  GUARD: -100,
  /** Bundled and user sinks. */
  SINK: 0,
  /** Observers that want to see what sinks did. */
  OBSERVE: 100,
} as const;

/** A plugin in the webpack sense: one constant name, one apply(). */
export interface WorkerPlugin {
  readonly name: string;
  apply(hooks: TapOnlyHooks): void;
}
