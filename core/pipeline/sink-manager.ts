/**
 * Maps the Sink lifecycle onto the worker hooks; the only code that calls sink methods.
 *
 *   start          → commits a crash interrupted are rolled back or forward (sink-commit.ts),
 *                    then plugin.recover()      (staging left by a crashed run)
 *   jobStart       → create + open one sink per SinkSpec (identical repeats are one sink;
 *                    an unknown scheme or a conflicting repeat fails the job before any opens)
 *   onBatch        → unify the batch with its topic's schema (sinks/schema.ts), check the
 *                    schemaDef contract, then write to every sink of the batch's topic;
 *                    the batch is released when every write resolved and every sink let go
 *                    of what it retained (a sink plugin without usesRetain keeps it for good)
 *   prepareCommit  → every sink prepares (phase one); the first failure fails the job
 *   onConclude     → at Stage.COMMIT (after default-stage taps, which may still veto):
 *                    SUCCESS: every sink commits (phase two), all or nothing (sink-commit.ts),
 *                    artifacts and metrics;
 *                    FAILED: every sink aborts
 *   shutdown       → plugin.close()
 *
 * Routing defaults (README "Sinks"):
 *  - a batch for a topic with no sink goes to the catch-all sink (topic "*", its URI's
 *    "{topic}" replaced by the topic), opened at the topic's first batch, when the job
 *    has one; else it is dropped, with a warning once per topic and job and the
 *    `unrouted_batches` / `unrouted_rows` metrics;
 *  - a sink whose topic never produced a batch is warned about and counted in
 *    `sinks_without_batches`; it still goes through prepare/commit, and the bundled
 *    sinks publish nothing for it;
 *  - so a job whose plugin publishes to no configured topic at all succeeds with no
 *    artifacts, and its metrics say why.
 *
 * Per-job state lives in a WeakMap keyed by the JobContext: nothing global, nothing leaks.
 */
import { tableToIPC, type Schema } from "apache-arrow";
import { CasparianError, Errors, errorMessage, systemErrorHint } from "../kernel/errors.js";
import type { Batch, JobContext, JobOutcome, SinkSpec } from "../kernel/job.js";
import type { Logger } from "../kernel/logger.js";
import { ANY_TOPIC, TOPIC_PLACEHOLDER } from "../protocol/messages.js";
import { Stage, type TapOnlyHooks, type WorkerPlugin } from "../../hooks/index.js";
import type { Sink, SinkHandle, SinkOptions, SinkPlugin, SinkTarget } from "../../sinks/api.js";
import { contractDifferences, parseSchemaDef } from "../../sinks/contract.js";
import { TopicSchema, castTable, conformsTo } from "../../sinks/schema.js";
import { checkSinkOptions, targetOptions } from "../../sinks/options.js";
import { parseSinkUri } from "../../sinks/uri.js";
import { commitAll, resolveInterruptedCommits, type Participant } from "./sink-commit.js";
import { dedupeSinkSpecs } from "./sink-dedupe.js";

export interface LoadedSink {
  plugin: SinkPlugin;
  /** The options of its config entry, as given; each use gets them checked by the plugin's schema (sinks/options.ts). */
  options: SinkOptions;
}

const PLUGIN_NAME = "SinkManager";

interface ActiveSink {
  readonly target: SinkTarget;
  readonly loaded: LoadedSink;
  /** The target's options (sinks/options.ts targetOptions), as create got them. */
  readonly options: SinkOptions;
  readonly logger: Logger;
  sink: Sink | null;
  /** What prepare returned (sinks/api.ts SinkHandle), null for nothing. */
  handle: SinkHandle | null;
  batches: number;
  rows: number;
  done: boolean;
}

interface JobSinks {
  readonly sinks: ActiveSink[];
  readonly byTopic: Map<string, ActiveSink[]>;
  /** Each routed topic's schema so far: every batch's, unified (sinks/schema.ts). */
  readonly schemas: Map<string, TopicSchema>;
  readonly unroutedTopics: Set<string>;
  unroutedBatches: number;
  unroutedRows: number;
  /** The sink config for topics without one of their own (topic "*"), or null. */
  readonly catchAll: SinkSpec | null;
}

export class SinkManager implements WorkerPlugin {
  readonly name = PLUGIN_NAME;
  readonly #plugins: LoadedSink[];
  readonly #byScheme = new Map<string, LoadedSink>();
  readonly #logger: Logger;
  readonly #outputRoot: string;
  readonly #jobs = new WeakMap<JobContext, JobSinks>();

  constructor(opts: { plugins: LoadedSink[]; logger: Logger; outputRoot: string }) {
    this.#plugins = opts.plugins;
    this.#logger = opts.logger.child({ component: PLUGIN_NAME });
    this.#outputRoot = opts.outputRoot;
    for (const loaded of opts.plugins) {
      for (const scheme of loaded.plugin.schemes) {
        const key = scheme.toLowerCase();
        const other = this.#byScheme.get(key);
        if (other !== undefined) {
          throw Errors.SINK_INVALID([loaded.plugin.name, `scheme "${key}" is already handled by sink plugin "${other.plugin.name}"`], {
            context: { plugin: loaded.plugin.name },
          });
        }
        this.#byScheme.set(key, loaded);
      }
    }
  }

  apply(hooks: TapOnlyHooks): void {
    const tap = { name: PLUGIN_NAME, stage: Stage.SINK };
    hooks.start.tapPromise(tap, () => this.#recover());
    hooks.jobStart.tapPromise(tap, (job) => this.#open(job));
    // Sinks whose plugin does not use Batch.retain() get batches that are never released (see #write).
    hooks.onBatch.tapPromise({ ...tap, usesRetain: true }, (batch, job) => this.#write(batch, job));
    hooks.prepareCommit.tapPromise(tap, (job) => this.#prepare(job));
    // Commit at its own stage, after the default one: a quality gate tapped without a stage can still veto.
    hooks.onConclude.tapPromise({ name: PLUGIN_NAME, stage: Stage.COMMIT }, (outcome, job) => this.#conclude(outcome, job));
    hooks.shutdown.tapPromise(tap, () => this.#close());
  }

  async #recover(): Promise<void> {
    try {
      const configured = this.#plugins.map(({ plugin, options }) => ({ plugin, options: checkSinkOptions(plugin, options, `"${plugin.name}"`) }));
      await resolveInterruptedCommits(configured, this.#outputRoot, this.#logger);
    } catch (err) {
      this.#logger.error({ err }, "could not resolve interrupted commits: %s", errorMessage(err));
    }
    for (const { plugin, options } of this.#plugins) {
      if (plugin.recover === undefined) continue;
      const logger = this.#logger.child({ sink_plugin: plugin.name });
      try {
        await plugin.recover({ outputRoot: this.#outputRoot, logger, options: checkSinkOptions(plugin, options, `"${plugin.name}"`) });
      } catch (err) {
        // Leftover staging is untidy, not dangerous: never refuse to start over it.
        logger.error({ err }, "sink recovery failed: %s", errorMessage(err));
      }
    }
  }

  async #open(job: JobContext): Promise<void> {
    // Validate every target before creating any sink: a bad URI fails the job with nothing to undo.
    const { sinks: configs, repeats } = dedupeSinkSpecs(job.command.sinks);
    if (repeats > 0) job.logger.info({ repeats, sinks: configs.length }, "the DISPATCH repeats identical sinks; each is written once");
    const named = configs.filter((config) => config.topic !== ANY_TOPIC);
    const catchAll = configs.find((config) => config.topic === ANY_TOPIC) ?? null;
    const targets = named.map((config) => this.#target(config, job));
    // The catch-all's URI is checked now too, for a sample topic: a bad one fails before the guest starts.
    if (catchAll !== null) this.#target(forTopic(catchAll, "output"), job);
    const state: JobSinks = { sinks: [], byTopic: new Map(), schemas: new Map(), unroutedTopics: new Set(), unroutedBatches: 0, unroutedRows: 0, catchAll };
    this.#jobs.set(job, state);
    for (const { target, loaded, options } of targets) await this.#start(target, loaded, options, job, state);
  }

  async #start(target: SinkTarget, loaded: LoadedSink, options: SinkOptions, job: JobContext, state: JobSinks): Promise<ActiveSink> {
    const logger = job.logger.child({ topic: target.topic, sink: target.uri });
    const active: ActiveSink = { target, loaded, options, logger, sink: null, handle: null, batches: 0, rows: 0, done: false };
    state.sinks.push(active);
    const list = state.byTopic.get(target.topic) ?? [];
    list.push(active);
    state.byTopic.set(target.topic, list);
    await this.#call(active, job, "create", async () => {
      active.sink = await loaded.plugin.create(target, { job, logger, options });
      if (active.sink === null || typeof active.sink !== "object" || typeof active.sink.write !== "function") {
        throw Errors.SINK_INVALID([loaded.plugin.name, "create() must return an object with write, prepare, commit and abort"]);
      }
    });
    await this.#call(active, job, "open", () => active.sink!.open?.());
    return active;
  }

  /** The target of a spec, its plugin and its options; throws before anything opens when the URI is bad. */
  #target(config: SinkSpec, job: JobContext): { target: SinkTarget; loaded: LoadedSink; options: SinkOptions } {
    const context = { jobId: job.jobId, sinkUri: config.uri };
    let parsed;
    try {
      parsed = parseSinkUri(config.uri);
    } catch (err) {
      if (err instanceof CasparianError) Object.assign(err.context, context);
      throw err;
    }
    const loaded = this.#byScheme.get(parsed.scheme);
    if (loaded === undefined) {
      throw Errors.SINK_UNKNOWN_SCHEME([config.uri, [...this.#byScheme.keys()].map((s) => `${s}://`).join(", ")], {
        context: { ...context, topic: config.topic },
      });
    }
    const contract = parseSchemaDef(config.topic, config.schemaDef, context);
    const options = targetOptions(loaded.plugin, loaded.options, { uri: config.uri, parsed }, job.jobId);
    return { target: Object.freeze({ topic: config.topic, uri: config.uri, parsed, mode: config.mode ?? "append", contract, config }), loaded, options };
  }

  async #write(batch: Batch, job: JobContext): Promise<void> {
    const state = this.#jobs.get(job);
    if (state === undefined) return;
    let sinks = state.byTopic.get(batch.topic);
    if (sinks === undefined && state.catchAll !== null) {
      const { target, loaded, options } = this.#target(forTopic(state.catchAll, batch.topic), job);
      sinks = [await this.#start(target, loaded, options, job, state)];
    }
    if (sinks === undefined) {
      state.unroutedBatches++;
      state.unroutedRows += batch.numRows;
      if (!state.unroutedTopics.has(batch.topic)) {
        state.unroutedTopics.add(batch.topic);
        job.logger.warn({ topic: batch.topic, configured: [...state.byTopic.keys()] }, "topic %s has no sink: its batches are dropped", batch.topic);
      }
      return;
    }
    const unified = this.#unify(batch, job, state);
    this.#checkContracts(unified, job, sinks);
    for (const active of sinks) {
      // A sink that may keep batches without saying so (no usesRetain) holds this one for good:
      // its memory is then the collector's to free, never reused under the sink.
      if (active.loaded.plugin.usesRetain !== true) batch.retain();
      await this.#call(active, job, "write", () => active.sink!.write(unified));
      active.batches++;
      active.rows += batch.numRows;
    }
  }

  /**
   * The batch with its topic's schema so far: a null column takes the topic's type, a
   * narrower one is widened, a missing one is null, columns come in the topic's order.
   * A batch that widens the topic's schema passes as it is; sinks see the new schema on it.
   */
  #unify(batch: Batch, job: JobContext, state: JobSinks): Batch {
    let topic = state.schemas.get(batch.topic);
    if (topic === undefined) {
      topic = new TopicSchema(batch.topic);
      state.schemas.set(batch.topic, topic);
    }
    let schema: Schema;
    try {
      ({ schema } = topic.accept(batch.table.schema, `batch ${batch.index} of job ${job.jobId}`));
    } catch (err) {
      if (err instanceof CasparianError) err.context.jobId = job.jobId;
      throw err;
    }
    if (conformsTo(batch.table.schema, schema) && batch.table.schema.fields.every((f, i) => f.nullable === schema.fields[i]!.nullable)) return batch;
    const table = castTable(batch.table, schema);
    return { ...batch, table, ipc: tableToIPC(table, "stream"), numRows: table.numRows };
  }

  #checkContracts(batch: Batch, job: JobContext, sinks: ActiveSink[]): void {
    for (const active of sinks) {
      const contract = active.target.contract;
      if (contract === null) continue;
      const differences = contractDifferences(contract, batch.table);
      if (differences.length > 0) {
        throw Errors.SINK_SCHEMA_MISMATCH([batch.topic, `schema_def of ${active.target.uri}: ${differences.join("; ")}`], {
          context: { jobId: job.jobId, topic: batch.topic, sinkUri: active.target.uri },
          hint: "make the plugin's output match the topic's schema_def, or update the schema_def",
        });
      }
    }
  }

  async #prepare(job: JobContext): Promise<void> {
    const state = this.#jobs.get(job);
    if (state === undefined) return;
    const prepare = (active: ActiveSink) => {
      if (active.batches === 0) active.logger.warn("topic %s produced no batch for sink %s", active.target.topic, active.target.uri);
      return this.#call(active, job, "prepare", async () => {
        active.handle = (await active.sink!.prepare()) ?? null;
      });
    };
    // Sinks that stage independently (concurrentPrepare) overlap; every other one prepares alone,
    // in order. The first failure in configured order fails the job, once all have settled, so
    // no prepare is still running when the job's sinks are aborted.
    const concurrent = state.sinks.filter((active) => active.loaded.plugin.concurrentPrepare === true);
    const overlapping = new Map(concurrent.map((active) => [active, prepare(active)] as const));
    const failures = new Map<ActiveSink, unknown>();
    for (const [active, prepared] of overlapping) await prepared.catch((err: unknown) => failures.set(active, err));
    for (const active of state.sinks) {
      if (failures.has(active)) throw failures.get(active);
      if (!overlapping.has(active)) await prepare(active);
    }
  }

  async #conclude(outcome: JobOutcome, job: JobContext): Promise<void> {
    const state = this.#jobs.get(job);
    if (state === undefined) return;
    this.#jobs.delete(job);
    outcome.metrics.unrouted_batches = state.unroutedBatches;
    outcome.metrics.unrouted_rows = state.unroutedRows;
    outcome.metrics.sinks_without_batches = state.sinks.filter((s) => s.batches === 0).length;
    for (const active of state.sinks) {
      const key = `sink_rows.${active.target.topic}`;
      outcome.metrics[key] = Number(outcome.metrics[key] ?? 0) + active.rows;
    }

    if (outcome.status === "SUCCESS") {
      const participants = new Map<Participant, ActiveSink>();
      for (const active of state.sinks) {
        if (active.sink === null) continue;
        participants.set(
          {
            plugin: active.loaded.plugin,
            options: active.options,
            sink: active.sink,
            topic: active.target.topic,
            uri: active.target.uri,
            handle: active.handle,
            logger: active.logger,
          },
          active,
        );
      }
      const result = await commitAll([...participants.keys()], job, (participant, step, fn) => this.#call(participants.get(participant)!, job, step, fn));
      for (const participant of result.committed) participants.get(participant)!.done = true;
      if (result.rolledBack > 0) outcome.metrics.sinks_rolled_back = result.rolledBack;
      if (result.error === null) outcome.artifacts.push(...result.artifacts);
      else {
        outcome.status = "FAILED";
        outcome.error = result.error;
      }
    }
    if (outcome.status === "FAILED") {
      const reason = outcome.error ?? new Error("job failed");
      for (const active of state.sinks) {
        if (active.done || active.sink === null) continue;
        try {
          await active.sink.abort(reason);
        } catch (err) {
          active.logger.error({ err }, "sink abort failed: %s", errorMessage(err));
        }
        active.done = true;
      }
    }
  }

  async #close(): Promise<void> {
    await Promise.all(
      this.#plugins.map(async ({ plugin }) => {
        try {
          await plugin.close?.();
        } catch (err) {
          this.#logger.warn({ err, sink_plugin: plugin.name }, "sink plugin close failed");
        }
      }),
    );
  }

  /** Runs one sink call; errors leave with the job id, sink URI and plugin attached. */
  async #call(active: ActiveSink, job: JobContext, step: string, fn: () => unknown): Promise<void> {
    try {
      await fn();
    } catch (err) {
      const context = { jobId: job.jobId, sinkUri: active.target.uri, plugin: active.loaded.plugin.name, topic: active.target.topic };
      if (err instanceof CasparianError) {
        for (const [key, value] of Object.entries(context)) if (err.context[key] === undefined) err.context[key] = value;
        throw err;
      }
      throw Errors.SINK_WRITE_FAILED([`"${active.loaded.plugin.name}" (${active.target.uri}) in ${step}`, errorMessage(err)], {
        context,
        cause: err,
        hint: systemErrorHint(err),
      });
    }
  }
}

/** The catch-all config made concrete for one topic. */
function forTopic(config: SinkSpec, topic: string): SinkSpec {
  // Sink URIs are percent-decoded: keep the topic's own characters literal.
  const escaped = topic.replace(/%/g, "%25").replace(/\?/g, "%3F").replace(/#/g, "%23");
  return { ...config, topic, uri: config.uri.split(TOPIC_PLACEHOLDER).join(escaped) };
}
