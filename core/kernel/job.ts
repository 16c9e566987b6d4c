/**
 * What a job looks like to everything that is not the wire: hooks, sinks and the
 * bridge share these types, in their own camelCase names. The wire's snake_case
 * shapes (core/protocol/messages.ts) are converted at the protocol edge
 * (core/protocol/job-view.ts), so renaming a wire field never breaks a plugin.
 * A Batch is one chunk of plugin output for one topic.
 */
import type { Table } from "apache-arrow";
import type { Logger } from "./logger.js";

/** What a sink does when its target already exists: add to it, swap it, or refuse. */
export type SinkMode = "append" | "replace" | "error";

/** One output of a job: where one topic's batches go. */
export interface SinkSpec {
  readonly topic: string;
  /** The sink URI as configured, e.g. "parquet://sales.parquet?compression=zstd". */
  readonly uri: string;
  readonly mode: SinkMode;
  /** The topic's column contract as JSON text (`{"columns":[...]}`), or null for none. */
  readonly schemaDef: string | null;
}

/** The job as the Sentinel described it: what to run, on what, and where its output goes. */
export interface JobCommand {
  /** The plugin's name (logs, lineage). */
  readonly pluginName: string;
  /** The input file the plugin parses. */
  readonly filePath: string;
  readonly sinks: readonly SinkSpec[];
  /** The Sentinel's id for this version of the input (u64): lineage columns carry it. */
  readonly fileVersionId: bigint;
  /** sha256 of the environment's lockfile: which venv runs the plugin. */
  readonly envHash: string;
  /** The plugin's Python source. */
  readonly sourceCode: string;
  readonly artifactHash: string | null;
  /** The plugin's configuration as JSON text, when the Sentinel sent one. */
  readonly pluginConfig?: string;
}

/** Everything known about a job before it runs. Immutable once the job starts. */
export interface JobInfo {
  readonly jobId: bigint;
  readonly workerId: string;
  readonly command: JobCommand;
}

/** Per-job context handed to hooks and sinks. */
export interface JobContext extends JobInfo {
  readonly logger: Logger;
  /** Root directory that file-based sinks must stay inside. */
  readonly outputRoot: string;
  /** Fires when the job is aborted (ABORT, timeout, shutdown). Sinks may stop early. */
  readonly signal: AbortSignal;
}

/**
 * One published chunk: a complete Arrow IPC stream for one topic.
 *
 * Lifetime: a batch (its `ipc`, its `table` and every view into them) is valid until the
 * call that received it (an onBatch tap, Sink.write) has resolved. To keep it longer, call
 * `retain()` during that call and the function it returns once done. Taps that say so
 * (`usesRetain: true` in their tap options, `usesRetain` on a sink plugin) let the worker
 * reuse a batch's memory for a later frame as soon as nothing holds it; a batch that also
 * reaches any other tap or sink is kept for the garbage collector, as if retained forever.
 */
export interface Batch {
  readonly topic: string;
  /** Sequence number of this batch within its topic, from 0. */
  readonly index: number;
  /** The IPC stream bytes exactly as the guest sent them (zero-copy for IPC-native encoders). */
  readonly ipc: Uint8Array;
  /** The same data decoded by apache-arrow (views over `ipc`, no copy). */
  readonly table: Table;
  readonly numRows: number;
  /**
   * Keep this batch valid after the call that received it returns; call the function it
   * returns, once, when done (later calls do nothing). Throws CSP_BATCH_RELEASED when the
   * batch's memory has already gone back.
   */
  retain(): () => void;
}

/** Something a job published: the topic and where it is now. */
export interface Artifact {
  readonly topic: string;
  readonly uri: string;
}

export type JobStatus = "SUCCESS" | "FAILED";

/** How a job ended, as seen by onConclude taps. Taps append artifacts and metrics. */
export interface JobOutcome {
  status: JobStatus;
  /** Why the job failed; null on success. */
  error: Error | null;
  readonly artifacts: Artifact[];
  /** Integer metrics for the receipt. */
  readonly metrics: Record<string, number | bigint>;
}

/** The job's result as it is reported to the Sentinel (afterConclude sees it). */
export interface Receipt {
  readonly status: JobStatus;
  /** Integers only (fractions are rounded): the Sentinel validates them as int. */
  readonly metrics: Readonly<Record<string, number | bigint>>;
  /** Empty unless the job succeeded. */
  readonly artifacts: readonly Artifact[];
  /** Why the job failed ("CODE: message (hint: ...)"); null on success. */
  readonly errorMessage: string | null;
}

/** An environment is ready to run jobs (envReady sees it). */
export interface EnvReady {
  readonly envHash: string;
  readonly interpreterPath: string;
  /** True when it already existed (nothing was built). */
  readonly cached: boolean;
}
