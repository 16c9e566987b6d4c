/**
 * Phase two for all of a job's sinks at once: every sink's output becomes visible, or
 * none does (README "Writing a sink", "All or nothing").
 *
 *  - Sinks that can undo their commit (prepare returned a handle, the plugin has
 *    `resolve`) commit first, in configuration order; the others after them. A single
 *    sink that cannot undo is thus the last to commit: if it fails, the others are undone.
 *  - With more than one sink, the handles are journaled (commit-journal.ts) before the
 *    first commit, and each undoable sink commits with `undo: true`.
 *  - A commit that fails undoes, newest first, the commits made so far and the failed
 *    one; the job fails. When every sink committed, the journal says so, then every sink
 *    drops its undo data and the journal goes.
 *  - At worker start, `resolveInterruptedCommits` finishes what a crash interrupted: a
 *    job journaled "committing" is rolled back, one journaled "committed" rolled forward.
 *
 * Test-only fault points: with CASPARIAN_TEST_KILL_AT set to `commit-sink:<n>` the worker
 * kills itself (SIGKILL) right after the n-th sink of a journaled job committed, with
 * `commit-committed` right after the journal says "committed". Unset in production: inert.
 */
import { errorMessage } from "../kernel/errors.js";
import type { Artifact, JobContext } from "../kernel/job.js";
import type { Logger } from "../kernel/logger.js";
import type { Sink, SinkHandle, SinkPlugin } from "../../sinks/api.js";
import { CommitJournal, pendingCommits, removeJournal, type JournalSink } from "./commit-journal.js";

const KILL_AT = process.env.CASPARIAN_TEST_KILL_AT;

function faultPoint(name: string): void {
  if (KILL_AT === name) process.kill(process.pid, "SIGKILL");
}

/** One sink of the job, prepared. */
export interface Participant {
  readonly plugin: SinkPlugin;
  readonly options: Readonly<Record<string, unknown>>;
  readonly sink: Sink;
  readonly topic: string;
  readonly uri: string;
  /** What its prepare returned; null when it returned nothing. */
  readonly handle: SinkHandle | null;
  readonly logger: Logger;
}

export interface CommitOutcome {
  readonly artifacts: Artifact[];
  /** The commit failure (or the journal's), or null when every sink committed. */
  readonly error: Error | null;
  /** Sinks whose commit ran to its end (rolled back or not): they must not be aborted. */
  readonly committed: ReadonlySet<Participant>;
  /** Sinks whose commit was undone. */
  readonly rolledBack: number;
}

/** Runs one sink call, turning its errors into the job's (the manager's error context). */
export type SinkCall = (participant: Participant, step: string, fn: () => unknown) => Promise<void>;

export async function commitAll(participants: readonly Participant[], job: JobContext, call: SinkCall): Promise<CommitOutcome> {
  const order = [...participants.filter(undoable), ...participants.filter((p) => !undoable(p))];
  const published = new Map<Participant, Artifact[]>();
  // Artifacts in configuration order, whatever the commit order.
  const artifacts = () => participants.flatMap((p) => published.get(p) ?? []);
  const committed = new Set<Participant>();
  const context = (p: Participant) => ({ outputRoot: job.outputRoot, logger: p.logger, options: p.options });

  let journal: CommitJournal | null = null;
  if (order.length > 1 && order.some(undoable)) {
    try {
      journal = await CommitJournal.begin(job.outputRoot, job.jobId, job.workerId, order.map(journalSink));
    } catch (err) {
      job.logger.error({ err }, "cannot record the commit intent; no sink commits: %s", errorMessage(err));
      return { artifacts: [], error: asError(err), committed, rolledBack: 0 };
    }
  }

  let failure: { error: Error; at: number } | null = null;
  for (const [index, participant] of order.entries()) {
    try {
      await call(participant, "commit", async () => {
        published.set(participant, await participant.sink.commit({ undo: journal !== null && undoable(participant) }));
      });
      committed.add(participant);
    } catch (err) {
      failure = { error: asError(err), at: index };
      break;
    }
    if (journal !== null) faultPoint(`commit-sink:${index + 1}`);
  }

  if (failure === null && journal !== null) {
    try {
      await journal.markCommitted();
    } catch (err) {
      // Recovery would roll back on the journal as it is: so must we.
      failure = { error: asError(err), at: order.length - 1 };
    }
  }

  if (failure === null) {
    if (journal === null) return { artifacts: artifacts(), error: null, committed, rolledBack: 0 };
    faultPoint("commit-committed");
    let finished = true;
    for (const participant of order.filter(undoable)) {
      try {
        await participant.plugin.resolve!(participant.handle!, "finish", context(participant));
      } catch (err) {
        finished = false;
        participant.logger.error({ err }, "could not drop the undo data of a committed sink (the next start retries): %s", errorMessage(err));
      }
    }
    if (finished) await journal.remove().catch((err: unknown) => job.logger.warn({ err, file: journal.path }, "could not remove the commit journal"));
    return { artifacts: artifacts(), error: null, committed, rolledBack: 0 };
  }

  // Undo, newest first, what committed and the commit that failed (it may have got part-way).
  const touched = order.slice(0, failure.at + 1).reverse();
  let rolledBack = 0;
  let clean = true;
  const visible: string[] = [];
  for (const participant of touched) {
    if (!undoable(participant) || journal === null) {
      if (committed.has(participant)) visible.push(participant.uri);
      continue;
    }
    try {
      await participant.plugin.resolve!(participant.handle!, "rollback", context(participant));
      if (committed.has(participant)) rolledBack++;
    } catch (err) {
      clean = false;
      participant.logger.error({ err }, "could not roll back this sink's commit (the next start retries): %s", errorMessage(err));
    }
  }
  if (visible.length > 0) job.logger.error({ published: visible }, "a commit failed after sinks that cannot undo theirs had published; those outputs stay");
  else if (rolledBack > 0 && clean)
    job.logger.warn({ rolled_back: rolledBack }, "a commit failed: the sinks that had committed were rolled back, no output of this job is visible");
  if (journal !== null && clean)
    await journal.remove().catch((err: unknown) => job.logger.warn({ err, file: journal.path }, "could not remove the commit journal"));
  return { artifacts: [], error: failure.error, committed, rolledBack };
}

/** A plugin and its options, as configured. */
export interface ConfiguredPlugin {
  readonly plugin: SinkPlugin;
  readonly options: Readonly<Record<string, unknown>>;
}

/**
 * At worker start: each job a gone writer left journaled is rolled back ("committing") or
 * forward ("committed"), sink by sink, newest commit first. A journal whose sinks are not
 * all resolved (a plugin no longer configured, a resolve that fails) stays for the next start.
 */
export async function resolveInterruptedCommits(plugins: readonly ConfiguredPlugin[], outputRoot: string, logger: Logger): Promise<void> {
  for (const { path, entry } of await pendingCommits(outputRoot, logger)) {
    const decision = entry.state === "committed" ? "finish" : "rollback";
    const jobLogger = logger.child({ job_id: entry.jobId, journal: path });
    let clean = true;
    for (const sink of [...entry.sinks].reverse()) {
      if (sink.handle === null) {
        if (decision === "rollback") jobLogger.error({ sink: sink.uri }, "sink plugin %s cannot undo a commit: its output may be visible", sink.plugin);
        continue;
      }
      const configured = plugins.find((p) => p.plugin.name === sink.plugin);
      if (configured?.plugin.resolve === undefined) {
        clean = false;
        jobLogger.error({ sink: sink.uri }, "sink plugin %s is not configured (or has no resolve): this commit stays unresolved", sink.plugin);
        continue;
      }
      try {
        await configured.plugin.resolve(sink.handle, decision, {
          outputRoot,
          logger: jobLogger.child({ sink_plugin: sink.plugin }),
          options: configured.options,
        });
      } catch (err) {
        clean = false;
        jobLogger.error(
          { err, sink: sink.uri },
          "could not %s a sink's interrupted commit: %s",
          decision === "rollback" ? "roll back" : "finish",
          errorMessage(err),
        );
      }
    }
    if (!clean) continue;
    await removeJournal(path);
    jobLogger.warn(
      { sinks: entry.sinks.map((s) => s.uri) },
      decision === "rollback" ? "rolled back a commit interrupted by a crash" : "finished a commit interrupted by a crash",
    );
  }
}

function undoable(participant: Participant): boolean {
  return participant.handle !== null && participant.plugin.resolve !== undefined;
}

function journalSink(participant: Participant): JournalSink {
  // No password in a file on disk: the journal names sinks only for its messages.
  const uri = participant.uri.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/[^/@:]*):[^/@]*@/, "$1:***@");
  return { plugin: participant.plugin.name, topic: participant.topic, uri, handle: undoable(participant) ? participant.handle : null };
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
