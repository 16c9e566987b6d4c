/**
 * The sink API: small enough to remember (Kafka Connect's SinkTask), with commit
 * separated from write.
 *
 *   open → write(batch)* → prepare → commit      (the job succeeded everywhere)
 *                                  ↘ abort       (anything failed, before or after prepare)
 *
 * A job with several sinks commits them all or none (README "Writing a sink"): a sink
 * that can undo its commit returns a handle from prepare and its plugin implements
 * `resolve`; the core journals the handles before the first commit, and on a failure
 * part-way (now, or a crash found at the next start) rolls back what was committed.
 *
 * A sink plugin is a plain object (Vite style) made by a factory; it names the URI
 * schemes it handles and creates one Sink per (job, SinkSpec). It never sees
 * sockets or the guest: the core maps this lifecycle onto the worker hooks.
 */
import type { Schema } from "apache-arrow";
import type * as v from "valibot";
import type { Artifact, Batch, JobContext, SinkMode, SinkSpec } from "../core/kernel/job.js";
import type { Logger } from "../core/kernel/logger.js";

/** One output of one job, as the Sentinel configured it. */
export interface SinkTarget {
  readonly topic: string;
  /** The URI exactly as configured (e.g. "parquet://sales.parquet?compression=zstd"). */
  readonly uri: string;
  /** The same URI parsed; `scheme` has no trailing colon. */
  readonly parsed: ParsedSinkUri;
  readonly mode: SinkMode;
  /** Column contract from the spec's schemaDef, or null when none was given. */
  readonly contract: SchemaContract | null;
  /** The job's spec for this output, as given. */
  readonly config: SinkSpec;
}

export interface ParsedSinkUri {
  readonly scheme: string;
  /** Everything between "scheme://" and "?", percent-decoded. */
  readonly location: string;
  readonly params: URLSearchParams;
}

export interface SchemaContract {
  readonly columns: ReadonlyArray<{ name: string; type: string; nullable?: boolean }>;
}

/** A sink's options when it declares none of its own. */
export type SinkOptions = Readonly<Record<string, unknown>>;

/**
 * The options a sink takes, a valibot object schema (`v.object({ lineage: v.optional(v.boolean(), false) })`).
 * The schema's output type is what `create`, `checkTarget` and `recover` get as `options`.
 */
export type SinkOptionsSchema =
  | v.ObjectSchema<v.ObjectEntries, v.ErrorMessage<v.ObjectIssue> | undefined>
  | v.StrictObjectSchema<v.ObjectEntries, v.ErrorMessage<v.StrictObjectIssue> | undefined>
  | v.LooseObjectSchema<v.ObjectEntries, v.ErrorMessage<v.LooseObjectIssue> | undefined>;

/** What a sink instance gets besides its target. */
export interface SinkContext<O = SinkOptions> {
  readonly job: JobContext;
  /** Child logger with job_id, topic and sink URI bound. */
  readonly logger: Logger;
  /** This target's options: the config entry's, with the URI's `uriOptions` over them, checked by the plugin's schema. */
  readonly options: Readonly<O>;
}

/** One sink instance: one target of one job. */
export interface Sink {
  /** Called once before the first batch (also when the topic never produces one). */
  open?(): Promise<void> | void;
  /**
   * One batch, in order. Awaited: backpressure reaches the guest. The batch is valid until
   * write resolves; a sink of a plugin with `usesRetain` that keeps it longer (coalescing
   * small batches) calls `batch.retain()` here and the function it returns once done.
   */
  write(batch: Batch): Promise<void> | void;
  /**
   * Phase one: flush everything to staging so that commit cannot fail for lack of data or space.
   * Return a handle (JSON) to take part in the all-or-nothing commit of a job's sinks: what
   * the plugin's `resolve` needs, in this process or a later one, to undo or finish the commit.
   */
  // biome-ignore lint/suspicious/noConfusingVoidType: sinks written before handles declare `async prepare(): Promise<void>`, which must stay valid
  prepare(): Promise<SinkHandle | void> | SinkHandle | void;
  /**
   * Phase two: make the output visible under its final name; return what was published.
   * With `undo: true`, keep what `resolve(handle, "rollback")` needs to bring the previous
   * output back, until `resolve(handle, "finish")`.
   */
  commit(options?: CommitOptions): Promise<Artifact[]> | Artifact[];
  /** Discard staging. Called on any failure, before or after prepare; must be idempotent. */
  abort(reason: Error): Promise<void> | void;
}

/** A sink's prepared commit, as `resolve` reads it back: JSON only (strings for bigints), it is journaled. */
export type SinkHandle = string | number | boolean | null | readonly SinkHandle[] | { readonly [key: string]: SinkHandle };

export interface CommitOptions {
  /** True when other sinks of the job commit too: keep what a rollback needs until "finish". */
  readonly undo: boolean;
}

/**
 * What `resolve` does with a sink's commit: "rollback" undoes it if it happened (the
 * previous output comes back) and discards its staging; "finish" keeps it and drops
 * what a rollback would have needed. Both must be idempotent: either may run twice,
 * and "rollback" may run for a commit that never started.
 */
export type ResolveDecision = "rollback" | "finish";

/** Passed to a sink plugin's `checkTarget`. */
export interface CheckContext<O = SinkOptions> {
  readonly outputRoot: string;
  /** The target's options, as `create` would get them. */
  readonly options: Readonly<O>;
}

/** Passed to a sink plugin's `recover` at worker start. */
export interface RecoverContext<O = SinkOptions> {
  readonly outputRoot: string;
  readonly logger: Logger;
  /** The config entry's options, checked by the plugin's schema. */
  readonly options: Readonly<O>;
}

/** A sink plugin: what `defineSink` returns and what config lists under `sinks`. */
export interface SinkPlugin<O = SinkOptions> {
  /** Unique, for logs and errors: "parquet", "jsonl", "my-company-s3". */
  readonly name: string;
  /** URI schemes this plugin handles, without "://". */
  readonly schemes: readonly string[];
  /**
   * The options this sink takes. They are checked when the sink is registered (a bad or
   * unknown one fails `casparian validate`, `casparian run` and the worker's start with
   * CSP_SINK_BAD_OPTIONS), and again per target when its URI sets some (`uriOptions`).
   * A sink without a schema takes no options.
   */
  readonly options?: SinkOptionsSchema;
  /**
   * Options a sink URI's query may set for one target, over the config's:
   * `rowGroupSize` is written `?row_group_size=N` (snake_case), its text converted to the
   * schema's number or boolean. Any other query parameter is refused (CSP_SINK_BAD_URI).
   * Without `uriOptions` the query is the sink's own to read.
   */
  readonly uriOptions?: readonly (keyof O & string)[];
  /** Create the sink for one target of one job. Throw to fail the job before the guest starts. */
  create(target: SinkTarget, context: SinkContext<O>): Sink | Promise<Sink>;
  /**
   * Check a target without writing anything (URI parameters, names): throw a catalogue
   * error (`Errors.SINK_BAD_URI`) for one that `create` would refuse. `casparian run`
   * and `casparian validate` call it for every sink before any job runs.
   */
  checkTarget?(target: SinkTarget, context: CheckContext<O>): Promise<void> | void;
  /**
   * True when modes replace and error act on the rows of the job's input inside a
   * target that every input shares (one table): replace deletes that input's earlier
   * rows and inserts the new ones in one transaction, error fails when the input
   * already has rows there. `casparian run` refuses replace and error on a URI without
   * `{input}` for sinks that do not say so.
   */
  readonly inputScopedModes?: boolean;
  /**
   * True when this plugin's sinks keep no batch after write() resolves unless they called
   * `batch.retain()` (and later the function it returned): the worker may then reuse a
   * batch's memory as soon as every sink let go of it. Without it, every batch written to
   * one of its sinks is left to the garbage collector (safe, but memory then depends on
   * when V8 collects).
   */
  readonly usesRetain?: boolean;
  /**
   * True when this plugin's sinks of one job may prepare at the same time: each stages its
   * own output (its own file, no connection, lock or transaction shared with another of
   * them). Their prepares then overlap (the Parquet sink's footers and fsyncs), while the
   * sinks of plugins that do not say so prepare one after another, in configured order.
   */
  readonly concurrentPrepare?: boolean;
  /** Remove staging left by a worker that crashed mid-job. Runs once at worker start, after interrupted commits are resolved. */
  recover?(context: RecoverContext<O>): Promise<void> | void;
  /**
   * Undo ("rollback") or finish a commit made with `undo: true`, from the handle its
   * sink's prepare returned: after another sink of the job failed to commit, after every
   * sink committed, and at worker start for a commit a crash interrupted. A plugin
   * without it is committed after those that have it (see README "Writing a sink").
   */
  resolve?(handle: SinkHandle, decision: ResolveDecision, context: RecoverContext<O>): Promise<void> | void;
  /** Release what the plugin holds across jobs (thread pools, connections). Runs once at worker shutdown. */
  close?(): Promise<void> | void;
}

/** The options type of a sink that declares `schema` (none declared: SinkOptions, always empty at run time). */
export type OptionsOf<S extends SinkOptionsSchema | undefined> = S extends SinkOptionsSchema ? v.InferOutput<S> : SinkOptions;

/**
 * Identity function that gives a sink plugin its types (like Vite's defineConfig): the
 * `options` schema types what `create`, `checkTarget` and `recover` get.
 */
export function defineSink<S extends SinkOptionsSchema | undefined = undefined>(
  plugin: SinkPlugin<OptionsOf<S>> & { readonly options?: S },
): SinkPlugin<OptionsOf<S>> {
  return plugin;
}

/** Re-exported so sinks need only this module. */
export type { Artifact, Batch, JobContext, Schema, SinkMode, SinkSpec };
