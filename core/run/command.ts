/**
 * `casparian run <plugin.py> <inputs...>`: the whole pipeline on one machine.
 * An embedded Sentinel and N local worker processes speak protocol v4 exactly as
 * a real deployment does; this module only turns the command line into a plan,
 * runs it (scheduler.ts) and reports (progress.ts, summary.ts).
 *
 * Exit codes: 0 every input succeeded, 1 any failed (or the run could not start
 * for a reason that is not a usage error), 2 usage error, 130 Ctrl-C.
 */
import { createWriteStream, type WriteStream } from "node:fs";
import { mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { performance } from "node:perf_hooks";
import { loadConfig, type LoadedConfig } from "../config/loader.js";
import { CasparianError, Errors, errorMessage } from "../kernel/errors.js";
import { makeUndumpable } from "../kernel/dumpable.js";
import { createLogger, type Logger } from "../kernel/logger.js";
import type { SinkMode } from "../protocol/messages.js";
import { checkSinkPlan } from "../worker/sink-preflight.js";
import { casparianHome } from "../worker/worker-id.js";
import { expandInputs, type NamedInput } from "./inputs.js";
import { LOG_LEVELS, parseRunFlags, type RunFlags } from "./flags.js";
import { describeSink, parseSinkFlag, planSinks, removeStaleStaging, stagingRootFor, type SinkPlan } from "./outputs.js";
import { planInputs, recipeOf, type InputPlan } from "./plan.js";
import { provideBareEnvWithoutUv, resolvePluginEnvironment, type PluginEnvironment } from "./plugin-env.js";
import { inspectPlugin, type PluginInfo } from "./plugin.js";
import { checkOutputRoot } from "./output-root.js";
import { Progress } from "./progress.js";
import { promote, type PublishedArtifact } from "./promote.js";
import { Scheduler, type RunResult } from "./scheduler.js";
import { RunState } from "./state.js";
import { firstLine, renderSummary, summarize } from "./summary.js";
import type { SchemaCache, UnifiedDirectory } from "./unify-files.js";

export const RunExit = { OK: 0, FAILED: 1, USAGE: 2, INTERRUPTED: 130 } as const;

/** Run logs kept in $CASPARIAN_HOME/logs. */
const KEEP_RUN_LOGS = 20;

/**
 * Inputs an extra worker must have to pay for its own start: Node, the job modules and the
 * plugin's imports (about a second of CPU with pandas; a job of tiny files is about a tenth of
 * that). Measured on 2 cores, pandas plugin: 10 files ran faster on 1 worker than on 2 (and
 * with a third less CPU), 100 files much faster on 2.
 */
const INPUTS_PER_WORKER = 10;

/** The worker count when neither --workers nor run.workers says: one per INPUTS_PER_WORKER inputs to run, at most one per core. */
export function defaultWorkers(toRun: number, cores = availableParallelism()): number {
  return Math.max(1, Math.min(cores, Math.ceil(toRun / INPUTS_PER_WORKER)));
}

export const RUN_HELP = `Usage: casparian run <plugin.py> <inputs...> [options]

Runs a parser plugin over local files: one job per input file, on N local worker
processes, each plugin run in its own Python environment; writes Parquet.

Inputs are files, directories (searched recursively, hidden files skipped) and
glob patterns (quote them: "data/**/*.csv").

Options:
  --output DIR          where results go (default ./output, or "output" in the config)
  --workers N           worker processes (default: one per 10 inputs to run, at most the
                        number of CPU cores; or run.workers)
  --sink TOPIC=URI      send a topic to a sink, e.g. --sink output=sqlite://sales.db/sales
                        or --sink output=parquet://sales/{input}.parquet ({input}: the
                        input's name, see below); repeatable; replaces MANIFEST["sinks"]
                        and run.sinks. Topics without a sink still land in <output>/<topic>/
  --mode MODE           write mode of the --sink sinks: replace (default), append, error
  --all                 process every input, also those unchanged since their last run
  --keep-going          run every input even when the first ones all fail the same way
  --plugin-config X     a JSON object, or a JSON file, given to the plugin's
                        configure(ctx, config) / Plugin(config)
  --config FILE         config file (default: casparian.config.* searched from here up)
  --report FILE         also write the run as JSON: every input with its state, job id, error,
                        receipt metrics and outputs (for scripts and benchmarks)
  --log-level LEVEL     ${LOG_LEVELS.join(", ")} (default warn; debug also shows worker logs)
  -h, --help            show this help

Output (by default): one Parquet file per topic per input,
  <output>/<topic>/<input name>.parquet     e.g. output/output/data/sales-2024-01.csv.parquet
where <input name> is the input's path relative to the directory holding <output>,
extension kept (outside it: @abs/<absolute path>). Each topic directory is one table.
Reruns are incremental: inputs unchanged since their last successful run (same size
and mtime or content, same plugin, lockfile, sinks and plugin config) are skipped; a
processed input's outputs replace its earlier ones in every topic. The run state is
kept in <output>/.casparian/. Files appear only once their input succeeded; nothing
partial is ever left under <output>.

Modes, per input: replace (the sink holds the input's latest rows), append (rows of
its earlier versions are kept too, each version once), error (fail if the input
already has output there). On one fixed URI, replace and error need a sink that can
replace one input's rows (the example SQL sinks); others must put {input} in the URI.

Plugin environment: a uv.lock beside the plugin, else PEP 723 "# /// script"
dependencies (locked with uv), else a bare Python environment.

Exit codes:
  0    every input succeeded (or was unchanged)
  1    at least one input failed, or the plugin / its environment is broken
  2    usage error (bad flags, no such plugin, an input matching no file, a sink
       that cannot load or cannot take the URI or mode it was given)
  130  interrupted (Ctrl-C)
`;

/** Entry point, called by the CLI with the arguments after `run`. Never throws. */
export async function runCommand(argv: string[]): Promise<number> {
  let logger: Logger | null = null;
  try {
    const flags = parseRunFlags(argv);
    if (flags === "help") {
      process.stdout.write(RUN_HELP);
      return RunExit.OK;
    }
    logger = createLogger({ level: flags.logLevel ?? "warn", fd: 2 });
    // It holds the same environment as its workers: plugins must not read it here either.
    const undumpable = makeUndumpable();
    if (!undumpable.ok) logger.warn({ reason: undumpable.reason }, "casparian run stays dumpable: processes of its uid can read its environment");
    return await run(flags, logger);
  } catch (err) {
    return reportError("casparian run", err);
  } finally {
    logger?.flush();
  }
}

/** Errors that mean "what you asked for cannot work": found before anything ran, exit 2. */
const USAGE_CODES = new Set([
  Errors.CLI_USAGE.code,
  Errors.SINK_INVALID.code,
  Errors.SINK_UNKNOWN_SCHEME.code,
  Errors.SINK_BAD_URI.code,
  Errors.SINK_PATH_ESCAPE.code,
  Errors.SINK_BAD_SCHEMA_DEF.code,
  Errors.RUN_SINK_MODE.code,
]);

export function reportError(command: string, err: unknown): number {
  if (err instanceof CasparianError) {
    const hint = err.hint === undefined ? "" : `\nhint: ${err.hint}`;
    process.stderr.write(`${command}: ${err.code}: ${err.message}${hint}\n`);
    const usage = USAGE_CODES.has(err.code) || err.code.startsWith("CSP_CONFIG_");
    return usage ? RunExit.USAGE : RunExit.FAILED;
  }
  process.stderr.write(`${command}: unexpected error (this is a bug, please report it)\n${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return RunExit.FAILED;
}

/** Everything a run needs that can be checked without running: shared with `casparian validate`. */
export interface CheckedRun {
  plugin: PluginInfo;
  sinks: SinkPlan;
  outputRoot: string;
  pluginConfig: unknown;
  config: LoadedConfig;
}

export async function checkRun(options: {
  plugin: string;
  output?: string;
  sinks: string[];
  mode?: SinkMode;
  pluginConfig?: string;
  config?: string;
  cwd: string;
  createOutput: boolean;
}): Promise<CheckedRun> {
  const { cwd } = options;
  const pluginPath = resolve(cwd, options.plugin);
  const pluginStat = await stat(pluginPath).catch(() => null);
  if (pluginStat === null || !pluginStat.isFile()) throw Errors.CLI_USAGE([`plugin ${options.plugin} is not a file`]);
  // Side by side: the plugin's inspection starts a Python, which takes longer than the rest.
  // Reported in this order when several are wrong, as when they ran one after the other.
  const [loaded, pluginConfig, plugin] = await inOrder([
    loadConfig({ explicitPath: options.config, cwd, command: "run" }),
    readPluginConfig(options.pluginConfig, cwd),
    inspectPlugin(pluginPath),
  ] as const);
  const outputRoot = options.output !== undefined ? resolve(cwd, options.output) : resolve(loaded.dir, loaded.config.output ?? "./output");
  const sinks = planSinks({
    cliSinks: options.sinks.map((flag) => parseSinkFlag(flag, options.mode)),
    manifest: plugin.manifest,
    configSinks: loaded.config.run?.sinks,
  });
  await checkOutputRoot(outputRoot, false);
  await checkSinkPlan(
    sinks.sinks.map((s) => ({ ...s, label: describeSink(s) })),
    { config: loaded.config, configDir: loaded.dir, outputRoot },
  );
  // Created only once everything else is known to be right.
  if (options.createOutput) await checkOutputRoot(outputRoot, true);
  return { plugin, sinks, outputRoot, pluginConfig, config: loaded };
}

/** Awaits every promise; throws the first failure in list order (not in time order). */
async function inOrder<T extends readonly unknown[]>(promises: { readonly [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const settled = await Promise.allSettled(promises);
  for (const outcome of settled) if (outcome.status === "rejected") throw outcome.reason;
  return settled.map((outcome) => (outcome as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

async function readPluginConfig(value: string | undefined, cwd: string): Promise<unknown> {
  if (value === undefined) return null;
  const text = value.trimStart().startsWith("{")
    ? value
    : await readFile(resolve(cwd, value), "utf8").catch((err: NodeJS.ErrnoException) => {
        throw Errors.CLI_USAGE([`--plugin-config ${value}: not a JSON object and not a readable file (${err.code ?? err.message})`]);
      });
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw Errors.CLI_USAGE([`--plugin-config ${value.length > 60 ? `${value.slice(0, 60)}…` : value}: invalid JSON: ${(err as Error).message}`]);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
    throw Errors.CLI_USAGE([`--plugin-config must be a JSON object, got ${Array.isArray(parsed) ? "an array" : typeof parsed}`]);
  return parsed;
}

/** `--log-level debug`: where the run's fixed costs go, in ms since the process started. */
function timeline(logger: Logger, phase: string): void {
  const cpu = process.resourceUsage();
  logger.debug({ phase, ms: Math.round(performance.now()), cpu_ms: Math.round((cpu.userCPUTime + cpu.systemCPUTime) / 1000) }, "run timeline");
}

async function run(flags: RunFlags, logger: Logger): Promise<number> {
  const cwd = process.cwd();
  timeline(logger, "modules loaded");
  // Everything that can be wrong with the plugin, the sinks or the inputs is found before a worker starts.
  // The inputs are listed (and stat'ed) meanwhile; the checks' errors come first.
  const [checked, expanded] = await inOrder([checkRun({ ...flags, cwd, createOutput: true }), expandInputs(flags.inputs, cwd)] as const);
  timeline(logger, "checked, inputs listed");
  const { plugin, sinks, outputRoot, pluginConfig } = checked;
  const config = checked.config.config;
  const home = resolve(config.home ?? casparianHome());
  for (const warning of plugin.warnings) process.stderr.write(`casparian run: warning: ${warning}\n`);
  // A directory argument that holds the output (`casparian run p.py .`) must not read the run's own files.
  const inputs = expanded.filter((input) => !isInside(input.path, outputRoot));
  if (inputs.length === 0) throw Errors.CLI_USAGE([`every input is inside the output directory ${outputRoot}`]);
  const env = await resolvePluginEnvironment(plugin, { home, logger, uv: config.environments?.uv, uvEnv: config.environments?.env });
  await provideBareEnvWithoutUv(env, { home, logger, uv: config.environments?.uv });
  timeline(logger, "environment known");

  const state = RunState.open(outputRoot);
  try {
    if (state.recovered > 0)
      process.stderr.write(`casparian run: finished publishing ${state.recovered} input(s) that an interrupted run had left half published\n`);
    await removeStaleStaging(outputRoot);
    const recipeFor = (input: NamedInput) => recipeOf({ pluginSource: plugin.source, envHash: env.envHash, sinks: sinks.forInput(input.name), pluginConfig });
    timeline(logger, "state opened");
    const plan = await planInputs(inputs, state, { inputRoot: dirname(outputRoot), all: flags.all, recipeFor });
    timeline(logger, "planned");
    const workers = flags.workers ?? config.run?.workers ?? defaultWorkers(plan.toRun.length);
    logger.info(
      {
        plugin: plugin.name,
        env: env.source,
        env_hash: env.envHash,
        lock: env.lockPath,
        sinks: sinks.source,
        inputs: inputs.length,
        to_run: plan.toRun.length,
        workers,
      },
      "run planned",
    );
    return await execute({
      flags,
      logger,
      cwd,
      home,
      workers,
      outputRoot,
      plugin,
      env,
      sinks,
      pluginConfig,
      state,
      plan,
      configFile: checked.config.filepath ?? undefined,
    });
  } finally {
    state.close();
  }
}

interface Execution {
  flags: RunFlags;
  logger: Logger;
  cwd: string;
  home: string;
  workers: number;
  outputRoot: string;
  plugin: PluginInfo;
  env: PluginEnvironment;
  sinks: SinkPlan;
  pluginConfig: unknown;
  state: RunState;
  plan: InputPlan;
  configFile?: string;
}

async function execute(x: Execution): Promise<number> {
  const { flags, logger, cwd, home, plugin, env, sinks, state, plan, outputRoot } = x;
  const planned = new Map(plan.toRun.map((p) => [p.input.path, p]));
  const stagingRoot = stagingRootFor(outputRoot);
  const workerLog = await openRunLog(home);
  const progress = new Progress(plan.toRun.length);
  const schemas = new SchemasAhead();
  const scheduler = new Scheduler({
    inputs: plan.toRun.map((p) => p.input),
    plugin,
    env,
    sinksFor: (input) => sinks.forInput(input.name),
    pluginConfig: x.pluginConfig === null ? undefined : JSON.stringify(x.pluginConfig),
    publish: async (job, receipt, workerRoot) => {
      const entry = planned.get(job.input.path)!;
      const published = await promote(state, {
        input: job.input,
        contentSha256: entry.contentSha256,
        recipe: entry.recipe,
        jobId: job.jobId!,
        receipt,
        sinks: job.sinks,
        workerRoot,
      });
      if (plan.toRun.length > 1) schemas.prime(published);
      return published;
    },
    keepGoing: flags.keepGoing,
    workers: x.workers,
    outputRoot,
    stagingRoot,
    sharedOutput: !sinks.promotable,
    configFile: x.configFile,
    logLevel: flags.logLevel === "debug" || flags.logLevel === "trace" ? flags.logLevel : "info",
    logger,
    workerLog: workerLog.stream,
    echoWorkerLogs: flags.logLevel === "debug" || flags.logLevel === "trace",
    events: {
      jobFinished: (job) => {
        if (job.state === "failed") state.recordFailure(job.input.path, job.jobId, job.error ?? "failed");
        if (job.state === "not-run") return;
        const rows = job.artifacts.reduce((n, a) => n + a.rows, 0);
        progress.jobFinished(job.state === "failed", job.state === "succeeded" ? rows : 0, job.input.path);
      },
      jobProgress: (job, rows, bytes) => progress.streaming(job.input.path, rows, bytes),
      workerLost: (_id, reason, job) => {
        if (job === null) progress.note(`${reason}; starting a replacement`);
      },
      jobRetried: (job, reason) => progress.note(`${reason}; ${job.input.path} goes to another worker (attempt ${job.attempts + 1})`),
      envReady: (cached) => {
        if (!cached && env.source !== "bare") progress.note(`environment for ${plugin.name} built`);
      },
    },
  });

  const started = performance.now();
  let firstInterrupt = 0;
  const onSigint = (): void => {
    const now = Date.now();
    if (firstInterrupt === 0) {
      firstInterrupt = now;
      progress.note("interrupted: aborting running jobs (Ctrl-C again to stop at once)");
      scheduler.interrupt();
    } else if (now - firstInterrupt > 1_000) {
      // (A signal sent to the whole process group arrives twice within a moment: not a second Ctrl-C.)
      process.stderr.write("casparian run: stopping at once\n");
      scheduler.forceStop();
      process.exit(RunExit.INTERRUPTED);
    }
  };
  process.on("SIGINT", onSigint);
  process.on("SIGTERM", onSigint);
  if (plan.toRun.length > 0 && env.source !== "bare" && (await stat(join(home, "venvs", env.envHash)).catch(() => null)) === null) {
    progress.note(`building the environment for ${plugin.name} from ${env.lockPath ?? "its lock"} (first run only)`);
  }
  if (plan.toRun.length > 0) progress.start();
  let result;
  try {
    result = await scheduler.run();
    timeline(logger, "jobs done, workers stopped");
  } finally {
    process.off("SIGINT", onSigint);
    process.off("SIGTERM", onSigint);
    if (plan.toRun.length > 0) progress.stop();
    await workerLog.close();
  }

  // Files of one topic from different inputs get one schema (a null column in one file, int64 in another).
  const widening = result.interrupted
    ? null
    : await schemas
        .unify(
          result.jobs.flatMap((job) => job.artifacts),
          outputRoot,
        )
        .then(
          async (dirs) => {
            for (const { dir, rewritten } of dirs) {
              if (rewritten.length === 0) continue;
              // The state counts what the output holds: a rewritten file has a new size.
              for (const file of rewritten) state.recordRewrittenFile(relative(outputRoot, file).split(sep).join("/"), (await stat(file)).size);
              process.stderr.write(`casparian run: ${relative(cwd, dir) || "."}: ${rewritten.length} file(s) rewritten so that the directory has one schema\n`);
            }
            return null;
          },
          (err: unknown) => err,
        );
  timeline(logger, "topic schemas unified");
  const seconds = (performance.now() - started) / 1000;
  const summary = summarize(result.jobs, { unchanged: plan.unchanged.length, totals: state.totals(), outputRoot });
  const sharedError = result.fatal !== null && Errors.RUN_PLUGIN_FAILS_EVERYWHERE.is(result.fatal);
  process.stdout.write(renderSummary(summary, { seconds, interrupted: result.interrupted, cwd, sharedError }));
  if (widening !== null) process.stderr.write(`casparian run: the topic directories could not be given one schema: ${errorMessage(widening)}\n`);
  if (result.fatal !== null) {
    const hint = result.fatal.hint === undefined ? "" : `\nhint: ${result.fatal.hint}`;
    process.stderr.write(`casparian run: ${result.fatal.code}: ${result.fatal.message}${hint}\n`);
  }
  if (flags.report !== undefined) {
    await writeReport(resolve(cwd, flags.report), {
      seconds,
      startedAt: started,
      workers: x.workers,
      result,
      plugin: plugin.name,
      env: env.source,
      unchanged: plan.unchanged,
      state,
      outputRoot,
    });
  }
  if (summary.failed.length > 0 || result.fatal !== null) process.stderr.write(`casparian run: worker logs: ${workerLog.path}\n`);
  if (result.interrupted) {
    // The staging root is gone (scheduler); say so for anyone checking --output.
    logger.info({ output: outputRoot }, "interrupted; only inputs that had completed were written");
    return RunExit.INTERRUPTED;
  }
  const failed = summary.failed.length > 0 || result.fatal !== null || summary.notRun.length > 0 || widening !== null;
  if (failed && summary.failed.length === 0 && result.fatal === null) {
    process.stderr.write(`casparian run: ${summary.notRun.length} inputs were not run: ${firstLine(summary.notRun[0]!.error)}\n`);
  }
  return failed ? RunExit.FAILED : RunExit.OK;
}

/**
 * The pass that gives each topic directory one schema (unify-files.ts), with the schemas of
 * the files this run publishes read while the next jobs run. Its module is loaded on first
 * use, not at start: parquet-wasm takes ~200 ms to load, and a run of one file needs none of it.
 */
class SchemasAhead {
  #cache: Promise<SchemaCache> | undefined;

  #load(): Promise<SchemaCache> {
    return (this.#cache ??= import("./unify-files.js").then((m) => new m.SchemaCache()));
  }

  prime(artifacts: readonly PublishedArtifact[]): void {
    const paths = artifacts.flatMap((a) => (a.path !== null && a.uri.startsWith("parquet://") ? [a.path] : []));
    // A module that fails to load fails unify() below, with its error.
    if (paths.length > 0)
      this.#load().then(
        (cache) => cache.prime(paths),
        () => undefined,
      );
  }

  async unify(artifacts: readonly PublishedArtifact[], outputRoot: string): Promise<UnifiedDirectory[]> {
    if (!artifacts.some((a) => a.path !== null && a.uri.startsWith("parquet://"))) return [];
    const [{ unifyRunOutputs }, cache] = await Promise.all([import("./unify-files.js"), this.#load()]);
    return unifyRunOutputs(artifacts, outputRoot, cache);
  }
}

function isInside(path: string, dir: string): boolean {
  const rel = relative(dir, path);
  return rel !== "" && !rel.startsWith("..") && !isAbsolute(rel);
}

/**
 * The --report file: bigint ids as decimal strings, so any JSON reader keeps them exact.
 * `outputs` per topic are what the output holds after the run (the run state), as the summary.
 */
async function writeReport(
  path: string,
  run: {
    seconds: number;
    /** performance.now() when the run started. */
    startedAt: number;
    workers: number;
    result: RunResult;
    plugin: string;
    env: string;
    unchanged: readonly NamedInput[];
    state: RunState;
    outputRoot: string;
  },
): Promise<void> {
  const outputsOf = (inputPath: string) =>
    run.state
      .outputsOf(inputPath)
      .map((o) => ({ topic: o.topic, uri: o.uri, file: o.file === null ? null : join(run.outputRoot, o.file), rows: o.rows, bytes: o.bytes }));
  const report = {
    plugin: run.plugin,
    environment: run.env,
    workers: run.workers,
    seconds: run.seconds,
    interrupted: run.result.interrupted,
    error: run.result.fatal === null ? null : { code: run.result.fatal.code, message: run.result.fatal.message },
    output: run.outputRoot,
    topics: run.state.totals(),
    inputs: [
      ...run.result.jobs.map((job) => ({
        path: job.input.path,
        name: job.input.name,
        file_version_id: job.input.fileVersionId.toString(),
        state: job.state,
        job_id: job.jobId?.toString() ?? null,
        attempts: job.attempts,
        error: job.error,
        round_trip_ms: job.roundTripMs,
        // When the last attempt was dispatched (ms since the run started) and to which worker: the gaps between jobs.
        dispatched_at_ms: job.dispatchedAt === null ? null : job.dispatchedAt - run.startedAt,
        worker: job.workerId,
        metrics: Object.fromEntries(Object.entries(job.receipt?.metrics ?? {}).map(([k, v]) => [k, Number(v)])),
        artifacts: job.artifacts.map((a) => ({ topic: a.topic, uri: a.uri, bytes: a.bytes, rows: a.rows })),
        outputs: job.state === "succeeded" ? outputsOf(job.input.path) : [],
      })),
      ...run.unchanged.map((input) => ({
        path: input.path,
        name: input.name,
        file_version_id: input.fileVersionId.toString(),
        state: "unchanged",
        job_id: run.state.lookup(input.path)?.jobId?.toString() ?? null,
        attempts: 0,
        error: null,
        round_trip_ms: null,
        dispatched_at_ms: null,
        worker: null,
        metrics: {},
        artifacts: [],
        outputs: outputsOf(input.path),
      })),
    ],
  };
  await writeFile(path, `${JSON.stringify(report, null, 2)}\n`);
}

/** All worker output of this run, in $CASPARIAN_HOME/logs; the oldest logs beyond KEEP_RUN_LOGS are removed. */
async function openRunLog(home: string): Promise<{ path: string; stream: WriteStream; close(): Promise<void> }> {
  const dir = join(home, "logs");
  await mkdir(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const path = join(dir, `run-${stamp}-${process.pid}.log`);
  const stream = createWriteStream(path, { flags: "a" });
  const old = (await readdir(dir)).filter((n) => n.startsWith("run-") && n.endsWith(".log")).sort();
  for (const name of old.slice(0, Math.max(0, old.length - KEEP_RUN_LOGS))) await rm(join(dir, name), { force: true });
  return { path, stream, close: () => new Promise<void>((done) => stream.end(done)) };
}
