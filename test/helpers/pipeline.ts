/**
 * Jobs for sink and hook tests, run by the real Pipeline (core/pipeline/pipeline.ts):
 * the hooks fire in production order, through the production interceptor. Only the
 * guest is scripted: instead of a Python process it hands the given batches to
 * onBatch, awaiting each exactly as the bridge does, then ends (or fails).
 */
import { performance } from "node:perf_hooks";
import { pino, type Logger } from "pino";
import type { GuestResult } from "../../core/bridge/types.js";
import type { Batch, JobCommand, JobContext, JobOutcome, SinkSpec } from "../../core/kernel/job.js";
import { Pipeline, type GuestRunner } from "../../core/pipeline/pipeline.js";
import { SinkManager, type LoadedSink } from "../../core/pipeline/sink-manager.js";

/** A job as the worker hands it to the pipeline: its id and its command (the job view, not the wire). */
export interface TestJob {
  readonly jobId: bigint;
  readonly command: JobCommand;
  /** The job's logger (default: silent). */
  readonly logger?: Logger;
}

export function makeJob(opts: { sinks: SinkSpec[]; jobId?: bigint; fileVersionId?: bigint; filePath?: string; logger?: Logger }): TestJob {
  return Object.freeze({
    logger: opts.logger,
    jobId: opts.jobId ?? 18_446_744_073_709_551_615n, // 2^64 - 1: job ids are uint64 on the wire
    command: Object.freeze({
      pluginName: "sales_parser",
      filePath: opts.filePath ?? "/data/in.csv",
      sinks: opts.sinks,
      fileVersionId: opts.fileVersionId ?? 9_007_199_254_740_993n,
      envHash: "e".repeat(64),
      sourceCode: "",
      artifactHash: null,
    }),
  });
}

export function sinkSpec(topic: string, uri: string, mode: SinkSpec["mode"] = "append", schemaDef: string | null = null): SinkSpec {
  return { topic, uri, mode, schemaDef };
}

/** What the scripted guest does: publish these batches, or run this function with the bridge's onBatch. */
export type GuestScript = readonly Batch[] | ((publish: (batch: Batch) => Promise<void>, job: JobContext) => Promise<void>);

interface Scripted {
  readonly scripts: WeakMap<AbortSignal, { script: GuestScript; fails?: Error }>;
  readonly outcomes: WeakMap<AbortSignal, JobOutcome>;
}
const scripted = new WeakMap<Pipeline, Scripted>();

/** The environment every scripted job gets: there is no interpreter to run. */
const NO_ENV = { acquire: async (envHash: string) => ({ envHash, interpreterPath: "(scripted guest: no interpreter)", release() {} }) };

/** The last possible stage: the outcome as every onConclude tap left it. */
const LAST_STAGE = Number.MAX_SAFE_INTEGER;

/**
 * A real Pipeline whose guest is scripted (see runJob), with the given sinks behind a
 * SinkManager when `sinks` is given. Tap more with `pipeline.hooks` or `pipeline.use()`.
 */
export function scriptedPipeline(opts: { outputRoot: string; sinks?: LoadedSink[]; logger?: Logger; workerId?: string }): Pipeline {
  const logger = opts.logger ?? pino({ level: "silent" });
  const state: Scripted = { scripts: new WeakMap(), outcomes: new WeakMap() };
  const runGuest: GuestRunner = async ({ job, onBatch }) => {
    const entry = state.scripts.get(job.signal);
    if (entry === undefined) throw new Error("scriptedPipeline: run jobs with runJob()");
    const started = performance.now();
    const result: GuestResult = { rows: 0, batches: 0, ipcBytes: 0, startupMs: 0, durationMs: 0, rowsByTopic: new Map(), guestMetrics: {} };
    const publish = async (batch: Batch) => {
      if (job.signal.aborted) throw job.signal.reason;
      result.rows += batch.numRows;
      result.batches++;
      result.ipcBytes += batch.ipc.byteLength;
      result.rowsByTopic.set(batch.topic, (result.rowsByTopic.get(batch.topic) ?? 0) + batch.numRows);
      await onBatch(batch);
    };
    if (typeof entry.script === "function") await entry.script(publish, job);
    else for (const batch of entry.script) await publish(batch);
    if (entry.fails) throw entry.fails;
    result.durationMs = performance.now() - started;
    return result;
  };
  const pipeline = new Pipeline({ logger, outputRoot: opts.outputRoot, workerId: opts.workerId ?? "worker-test", envs: NO_ENV, runGuest });
  if (opts.sinks) pipeline.use(new SinkManager({ plugins: opts.sinks, logger, outputRoot: opts.outputRoot }));
  pipeline.hooks.onConclude.tapPromise({ name: "TestOutcome", stage: LAST_STAGE }, async (outcome, job) => {
    state.outcomes.set(job.signal, outcome);
  });
  scripted.set(pipeline, state);
  return pipeline;
}

/**
 * Run one job through `pipeline.runJob` with a scripted guest. `guestFails` makes the
 * guest fail after publishing (as a crash would). Returns the job's final outcome.
 */
export async function runJob(
  pipeline: Pipeline,
  job: TestJob,
  guest: GuestScript,
  opts: { guestFails?: Error; signal?: AbortSignal; logger?: Logger } = {},
): Promise<JobOutcome> {
  const state = scripted.get(pipeline);
  if (state === undefined) throw new Error("runJob needs a pipeline made by scriptedPipeline()");
  const signal = opts.signal ?? new AbortController().signal;
  state.scripts.set(signal, { script: guest, fails: opts.guestFails });
  const receipt = await pipeline.runJob({ jobId: job.jobId, command: job.command, signal, logger: opts.logger ?? job.logger ?? pino({ level: "silent" }) });
  const outcome = state.outcomes.get(signal);
  if (outcome === undefined) throw new Error(`the pipeline concluded job ${job.jobId} without onConclude (receipt: ${JSON.stringify(receipt.errorMessage)})`);
  return outcome;
}
