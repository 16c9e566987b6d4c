/**
 * Every hook the worker has, declared once (webpack lib/Compiler.js style). The one
 * place that fires them is core/pipeline/pipeline.ts; plugins get `TapOnlyHooks` and tap by name:
 *
 *   apply(hooks) { hooks.onBatch.tapPromise({ name: PLUGIN_NAME, stage: Stage.SINK }, async (batch, job) => { ... }); }
 *
 * Order of one job:      beforeDispatch → (environment lease) → jobStart → onBatch* → prepareCommit → onConclude → afterConclude
 * Around the lifecycle:  start (once, before the first job), envReady (per PREPARE_ENV), shutdown (once).
 *
 * What one failing tap does is part of the contract (README "Hooks"); the pipeline's
 * interceptor (core/pipeline/interceptor.ts) applies it and logs every failure with the tap's name:
 *  - stop:   AsyncSeries hooks (start, beforeDispatch, jobStart, onBatch, prepareCommit) stop at the
 *            first failing tap; for a job hook that error fails the job, and onConclude still runs.
 *  - record: onConclude runs every tap, always. A tap that throws marks the outcome FAILED (the
 *            first error is kept) and the taps after it still run, so sinks always commit or abort.
 *  - settle: envReady, afterConclude and shutdown are parallel observers: every tap runs to its end,
 *            each failure is logged by tap name, none is fatal, and the hook resolves after the last tap.
 *
 * Stages order the taps of one hook (lower first; same stage: registration order):
 *   Stage.GUARD (-100)  validation, access control, quality gates: before anything writes.
 *   0 (the default)     user taps. On onConclude this is still before the commit: a default-stage
 *                       tap can veto it (set outcome.status = "FAILED", or throw) and the sinks abort.
 *   Stage.SINK (0)      the sinks' jobStart, onBatch and prepareCommit (open, write, prepare).
 *   Stage.COMMIT (50)   onConclude only: sinks commit (SUCCESS) or abort (FAILED). A veto must sit below it.
 *   Stage.OBSERVE (100) observers that want to see what the sinks did (artifacts, final status).
 */
import { AsyncParallelHook, AsyncSeriesHook, AsyncSeriesWaterfallHook } from "tapable";
import type { Batch, EnvReady, JobCommand, JobContext, JobOutcome, Receipt } from "../core/kernel/job.js";
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
  command: JobCommand;
}

/** Tap options of onBatch besides name and stage. */
export interface BatchTapOptions {
  /** True: this tap keeps no batch after its promise resolves unless it called `batch.retain()` (and later its release). */
  usesRetain?: boolean;
}

/** What one failing tap does to the rest of its hook (see the header). */
export type FailurePolicy = "stop" | "record" | "settle";

export function createHooks() {
  return Object.freeze({
    /** Worker started (and after a RELOAD, the new pipeline), before the first job. Sinks clean staging left by a crashed run. Series, stop. */
    start: new AsyncSeriesHook<[WorkerInfo]>(["worker"], "start"),
    /** An environment is ready (built or cached). Parallel observers, settle. */
    envReady: new AsyncParallelHook<[EnvReady]>(["env"], "envReady"),
    /**
     * First thing of every job, before its environment is looked up: may rewrite the command
     * (return it; a new envHash is honoured) or reject the job (throw; Errors.HOOK_REJECTED). Waterfall, stop.
     */
    beforeDispatch: new AsyncSeriesWaterfallHook<[DispatchRequest]>(["request"], "beforeDispatch"),
    /** The job has its environment and is about to start its guest: sinks open. A throw fails the job before the guest starts. Series, stop. */
    jobStart: new AsyncSeriesHook<[JobContext]>(["job"], "jobStart"),
    /**
     * One batch for one topic. Awaited: a slow tap slows the guest instead of growing memory. Series, stop (fails the job).
     * Tap with `usesRetain: true` when the tap keeps no batch after it resolves without `batch.retain()`
     * (core/kernel/job.ts Batch): when every tap says so, the worker reuses frame memory instead of waiting for the collector.
     */
    onBatch: new AsyncSeriesHook<[Batch, JobContext], BatchTapOptions>(["batch", "job"], "onBatch"),
    /** The guest ended cleanly: phase one of the commit (sinks flush to staging). A throw fails the job. Series, stop. */
    prepareCommit: new AsyncSeriesHook<[JobContext]>(["job"], "prepareCommit"),
    /**
     * Every job, success or failure. Below Stage.COMMIT a tap may veto (status = "FAILED");
     * at Stage.COMMIT sinks commit or abort; above it taps see artifacts. Series, record.
     */
    onConclude: new AsyncSeriesHook<[JobOutcome, JobContext]>(["outcome", "job"], "onConclude"),
    /** The receipt as sent to the Sentinel. Observers only (metrics, audit). Parallel, settle. */
    afterConclude: new AsyncParallelHook<[Receipt, JobContext]>(["receipt", "job"], "afterConclude"),
    /** The worker (or a pipeline replaced by RELOAD) is stopping. Parallel, settle: the socket closes after the last tap. */
    shutdown: new AsyncParallelHook<[WorkerInfo]>(["worker"], "shutdown"),
  });
}

export type WorkerHooks = ReturnType<typeof createHooks>;
export type HookName = keyof WorkerHooks;

/** Each hook's failure policy, as documented above; the pipeline's interceptor applies it. */
export const FAILURE_POLICY: { readonly [K in HookName]: FailurePolicy } = Object.freeze({
  start: "stop",
  envReady: "settle",
  beforeDispatch: "stop",
  jobStart: "stop",
  onBatch: "stop",
  prepareCommit: "stop",
  onConclude: "record",
  afterConclude: "settle",
  shutdown: "settle",
});

/** What a plugin may do with a hook: tap it, never call it. */
export type TapOnly<H> = H extends { tap: infer T; tapPromise: infer P } ? { tap: T; tapPromise: P } : never;
export type TapOnlyHooks = { readonly [K in HookName]: TapOnly<WorkerHooks[K]> };

/** Named stages for ordering taps, like webpack's PROCESS_ASSETS_STAGE_*. Lower runs first. */
export const Stage = {
  /** Validation, access control, quality gates: runs before anything writes. */
  GUARD: -100,
  /** Bundled and user sinks open, write and prepare here (the default stage, 0). */
  SINK: 0,
  /** onConclude: sinks commit or abort here. A tap that vetoes a commit must run below it (the default stage does). */
  COMMIT: 50,
  /** Observers that want to see what sinks did. */
  OBSERVE: 100,
} as const;

/** A plugin in the webpack sense: one constant name, one apply(). */
export interface WorkerPlugin {
  readonly name: string;
  apply(hooks: TapOnlyHooks): void;
}
