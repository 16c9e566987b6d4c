/**
 * What a job looks like to everything that is not the wire: hooks, sinks and the
 * bridge share these types. A Batch is one chunk of plugin output for one topic.
 */
import type { Table } from "apache-arrow";
import type { Logger } from "./logger.js";
import type { Artifact, DispatchCommand, ReceiptStatus } from "../protocol/messages.js";

/** Everything known about a job before it runs. Immutable once the job starts. */
export interface JobInfo {
  readonly jobId: bigint;
  readonly workerId: string;
  readonly command: Readonly<DispatchCommand>;
}

/** Per-job context handed to hooks and sinks. */
export interface JobContext extends JobInfo {
  readonly logger: Logger;
  /** Root directory that file-based sinks must stay inside. */
  readonly outputRoot: string;
  /** Fires when the job is aborted (ABORT, timeout, shutdown). Sinks may stop early. */
  readonly signal: AbortSignal;
}

/** One published chunk: a complete Arrow IPC stream for one topic. */
export interface Batch {
  readonly topic: string;
  /** Sequence number of this batch within its topic, from 0. */
  readonly index: number;
  /** The IPC stream bytes exactly as the guest sent them (zero-copy for IPC-native encoders). */
  readonly ipc: Uint8Array;
  /** The same data decoded by apache-arrow (views over `ipc`, no copy). */
  readonly table: Table;
  readonly numRows: number;
}

/** How a job ended, as seen by onConclude taps. Taps append artifacts and metrics. */
export interface JobOutcome {
  status: ReceiptStatus;
  /** Why the job failed; null on success. */
  error: Error | null;
  readonly artifacts: Artifact[];
  /** Integer metrics for the receipt. */
  readonly metrics: Record<string, number | bigint>;
}
