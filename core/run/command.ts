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
import { mkdir, readdir, rm, stat, writeFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join, relative, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import type { LevelWithSilent } from "pino";
import { loadConfig } from "../config/loader.js";
import { CasparianError, Errors, errorMessage } from "../kernel/errors.js";
import { createLogger, type Logger } from "../kernel/logger.js";
import { casparianHome } from "../worker/worker-id.js";
import { expandInputs } from "./inputs.js";
import { parseSinkFlag, planSinks, removeStaleStaging, stagingRootFor } from "./outputs.js";
import { provideBareEnvWithoutUv, resolvePluginEnvironment } from "./plugin-env.js";
import { inspectPlugin } from "./plugin.js";
import { Progress } from "./progress.js";
import { Scheduler, type RunResult } from "./scheduler.js";
import { firstLine, renderSummary, summarize } from "./summary.js";
import { unifyRunOutputs } from "./unify-files.js";

export const RunExit = { OK: 0, FAILED: 1, USAGE: 2, INTERRUPTED: 130 } as const;

const LOG_LEVELS: readonly LevelWithSilent[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];
/** Run logs kept in $CASPARIAN_HOME/logs. */
const KEEP_RUN_LOGS = 20;

export const RUN_HELP = `Usage: casparian run <plugin.py> <inputs...> [options]

Runs a parser plugin over local files: one job per input file, on N local worker
processes, each plugin run in its own Python environment; writes Parquet.

Inputs are files, directories (searched recursively, hidden files skipped) and
glob patterns (quote them: "data/**/*.csv").

Options:
  --output DIR        where results go (default ./output, or "output" in the config)
  --workers N         worker processes (default: number of CPU cores, or run.workers)
  --sink TOPIC=URI    send a topic to a sink, e.g. --sink output=parquet://sales.parquet
                      (repeatable; replaces the plugin's MANIFEST["sinks"] and run.sinks)
  --config FILE       config file (default: casparian.config.* searched from here up)
  --report FILE       also write the run as JSON: every input with its state, job id, error,
                      receipt metrics and output files (for scripts and benchmarks)
  --log-level LEVEL   ${LOG_LEVELS.join(", ")} (default warn; debug also shows worker logs)
  -h, --help          show this help

Output (when no sink is given): one Parquet file per topic per input,
  <output>/<topic>/<input name>.parquet      e.g. output/output/sales-2024-01.parquet
Each topic directory is one table; running again replaces the files of the inputs
it processed. Files appear only once their input succeeded; nothing partial is
ever left under <output>.

Plugin environment: a uv.lock beside the plugin, else PEP 723 "# /// script"
dependencies (locked with uv), else a bare Python environment.

Exit codes:
  0    every input succeeded
  1    at least one input failed, or the plugin / its environment is broken
  2    usage error (bad flags, no such plugin, an input matching no file)
  130  interrupted (Ctrl-C)
`;

interface RunFlags {
  plugin: string;
  inputs: string[];
  output?: string;
  workers?: number;
  sinks: string[];
  config?: string;
  report?: string;
  logLevel?: LevelWithSilent;
}

export function parseRunFlags(argv: readonly string[]): RunFlags | "help" {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        output: { type: "string", short: "o" },
        workers: { type: "string", short: "w" },
        sink: { type: "string", multiple: true },
        config: { type: "string", short: "c" },
        "log-level": { type: "string" },
        report: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    throw Errors.CLI_USAGE([(err as Error).message], { hint: "run `casparian run --help` to see the usage" });
  }
  const { values, positionals } = parsed;
  if (values.help === true) return "help";
  const [plugin, ...inputs] = positionals;
  if (plugin === undefined) throw Errors.CLI_USAGE(["missing <plugin.py>"], { hint: "casparian run <plugin.py> <inputs...>" });
  if (inputs.length === 0) throw Errors.CLI_USAGE(["no inputs given"], { hint: "casparian run <plugin.py> <files, directories or globs...>" });
  let workers: number | undefined;
  if (values.workers !== undefined) {
    workers = Number(values.workers);
    if (!Number.isInteger(workers) || workers < 1) throw Errors.CLI_USAGE([`--workers expects a whole number ≥ 1, got "${values.workers}"`]);
  }
  const logLevel = values["log-level"] as LevelWithSilent | undefined;
  if (logLevel !== undefined && !LOG_LEVELS.includes(logLevel)) throw Errors.CLI_USAGE([`--log-level expects one of ${LOG_LEVELS.join(", ")}, got "${logLevel}"`]);
  return { plugin, inputs, output: values.output, workers, sinks: values.sink ?? [], config: values.config, report: values.report, logLevel };
}

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
    return await run(flags, logger);
  } catch (err) {
    return report(err);
  } finally {
    logger?.flush();
  }
}

function report(err: unknown): number {
  if (err instanceof CasparianError) {
    const hint = err.hint === undefined ? "" : `\nhint: ${err.hint}`;
    process.stderr.write(`casparian run: ${err.code}: ${err.message}${hint}\n`);
    const usage = err.code === Errors.CLI_USAGE.code || err.code.startsWith("CSP_CONFIG_");
    return usage ? RunExit.USAGE : RunExit.FAILED;
  }
  process.stderr.write(`casparian run: unexpected error (this is a bug, please report it)\n${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return RunExit.FAILED;
}

async function run(flags: RunFlags, logger: Logger): Promise<number> {
  const cwd = process.cwd();
  const pluginPath = resolve(cwd, flags.plugin);
  const pluginStat = await stat(pluginPath).catch(() => null);
  if (pluginStat === null || !pluginStat.isFile()) throw Errors.CLI_USAGE([`plugin ${flags.plugin} is not a file`]);

  const loaded = await loadConfig({ explicitPath: flags.config, cwd, command: "run" });
  const config = loaded.config;
  const outputRoot = flags.output !== undefined ? resolve(cwd, flags.output) : resolve(loaded.dir, config.output ?? "./output");
  const workers = flags.workers ?? config.run?.workers ?? availableParallelism();
  const home = resolve(config.home ?? casparianHome());

  // Everything that can be wrong with the plugin or the inputs is found before a worker starts.
  const plugin = await inspectPlugin(pluginPath);
  for (const warning of plugin.warnings) process.stderr.write(`casparian run: warning: ${warning}\n`);
  const inputs = await expandInputs(flags.inputs, cwd);
  const sinks = planSinks({ cliSinks: flags.sinks.map(parseSinkFlag), manifest: plugin.manifest, configSinks: config.run?.sinks });
  const env = await resolvePluginEnvironment(plugin, { home, logger, uv: config.environments?.uv });
  await provideBareEnvWithoutUv(env, { home, logger, uv: config.environments?.uv });
  logger.info({ plugin: plugin.name, env: env.source, env_hash: env.envHash, lock: env.lockPath, sinks: sinks.source, inputs: inputs.length, workers }, "run planned");

  await mkdir(outputRoot, { recursive: true });
  await removeStaleStaging(outputRoot);
  const stagingRoot = stagingRootFor(outputRoot);
  const workerLog = await openRunLog(home);

  const progress = new Progress(inputs.length);
  const scheduler = new Scheduler({
    inputs,
    plugin,
    env,
    sinksFor: sinks.forInput,
    workers,
    outputRoot,
    stagingRoot,
    sharedOutput: !sinks.promotable,
    configFile: loaded.filepath ?? undefined,
    logLevel: flags.logLevel === "debug" || flags.logLevel === "trace" ? flags.logLevel : "info",
    logger,
    workerLog: workerLog.stream,
    echoWorkerLogs: flags.logLevel === "debug" || flags.logLevel === "trace",
    events: {
      jobFinished: (job) => {
        if (job.state === "not-run") return;
        const rows = Number(job.receipt?.metrics.rows ?? 0);
        progress.jobFinished(job.state === "failed", job.state === "succeeded" ? rows : 0);
      },
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
  if (env.source !== "bare" && (await stat(join(home, "venvs", env.envHash)).catch(() => null)) === null) {
    progress.note(`building the environment for ${plugin.name} from ${env.lockPath ?? "its lock"} (first run only)`);
  }
  progress.start();
  let result;
  try {
    result = await scheduler.run();
  } finally {
    process.off("SIGINT", onSigint);
    process.off("SIGTERM", onSigint);
    progress.stop();
    await workerLog.close();
  }

  // Files of one topic from different inputs get one schema (a null column in one file, int64 in another).
  const widening = result.interrupted ? null : await unifyRunOutputs(
    result.jobs.flatMap((job) => job.artifacts),
    outputRoot,
  ).then(
    (dirs) => {
      for (const { dir, rewritten } of dirs) if (rewritten.length > 0) process.stderr.write(`casparian run: ${relative(cwd, dir) || "."}: ${rewritten.length} file(s) rewritten so that the directory has one schema\n`);
      return null;
    },
    (err: unknown) => err,
  );
  const seconds = (performance.now() - started) / 1000;
  const summary = summarize(result.jobs, cwd);
  const sharedError = result.fatal !== null && Errors.RUN_PLUGIN_FAILS_EVERYWHERE.is(result.fatal);
  process.stdout.write(renderSummary(summary, { seconds, interrupted: result.interrupted, cwd, sharedError }));
  if (widening !== null) process.stderr.write(`casparian run: the topic directories could not be given one schema: ${errorMessage(widening)}\n`);
  if (result.fatal !== null) {
    const hint = result.fatal.hint === undefined ? "" : `\nhint: ${result.fatal.hint}`;
    process.stderr.write(`casparian run: ${result.fatal.code}: ${result.fatal.message}${hint}\n`);
  }
  if (flags.report !== undefined) await writeReport(resolve(cwd, flags.report), { seconds, workers, result, plugin: plugin.name, env: env.source });
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

/** The --report file: bigint ids as decimal strings, so any JSON reader keeps them exact. */
async function writeReport(path: string, run: { seconds: number; workers: number; result: RunResult; plugin: string; env: string }): Promise<void> {
  const report = {
    plugin: run.plugin,
    environment: run.env,
    workers: run.workers,
    seconds: run.seconds,
    interrupted: run.result.interrupted,
    error: run.result.fatal === null ? null : { code: run.result.fatal.code, message: run.result.fatal.message },
    inputs: run.result.jobs.map((job) => ({
      path: job.input.path,
      file_version_id: job.input.fileVersionId.toString(),
      state: job.state,
      job_id: job.jobId?.toString() ?? null,
      attempts: job.attempts,
      error: job.error,
      round_trip_ms: job.roundTripMs,
      metrics: Object.fromEntries(Object.entries(job.receipt?.metrics ?? {}).map(([k, v]) => [k, Number(v)])),
      artifacts: job.artifacts.map((a) => ({ topic: a.topic, uri: a.uri, bytes: a.bytes })),
    })),
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
