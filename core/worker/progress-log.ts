/**
 * Progress inside a long job, as log lines: while batches stream in, at most one
 * `job progress` line per interval per job, at info, with the rows and Arrow IPC bytes
 * received so far. `casparian run` turns on (`--progress-interval`) and reads these
 * lines from its workers to show rows and bytes of the files still running.
 */
import { Stage, type TapOnlyHooks, type WorkerPlugin } from "../../hooks/index.js";
import type { JobContext } from "../kernel/job.js";

export const PROGRESS_MESSAGE = "job progress";

interface Counts {
  rows: number;
  bytes: number;
  lastLogged: number;
}

export class ProgressLog implements WorkerPlugin {
  readonly name = "ProgressLog";
  readonly #intervalMs: number;
  readonly #jobs = new WeakMap<JobContext, Counts>();

  constructor(intervalMs: number) {
    this.#intervalMs = intervalMs;
  }

  apply(hooks: TapOnlyHooks): void {
    const tap = { name: this.name, stage: Stage.OBSERVE };
    hooks.jobStart.tapPromise(tap, async (job) => {
      this.#jobs.set(job, { rows: 0, bytes: 0, lastLogged: Date.now() });
    });
    hooks.onBatch.tapPromise({ ...tap, usesRetain: true }, async (batch, job) => {
      const counts = this.#jobs.get(job);
      if (counts === undefined) return;
      counts.rows += batch.numRows;
      counts.bytes += batch.ipc.byteLength;
      const now = Date.now();
      if (now - counts.lastLogged < this.#intervalMs) return;
      counts.lastLogged = now;
      job.logger.info({ job_id: job.jobId.toString(), rows: counts.rows, ipc_bytes: counts.bytes }, PROGRESS_MESSAGE);
    });
  }
}
