/**
 * Command line: `casparian worker ...` (≡ `casparian-worker ...`) and `casparian run ...`.
 * Turns flags, config file and defaults (in that order of precedence) into
 * WorkerSettings, then hands over to the composition root (app.ts).
 *
 * main() never throws: user errors print their message and hint, bugs print their
 * stack, and the exit code says which.
 */
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import type { LevelWithSilent } from "pino";
import { loadConfig } from "../config/loader.js";
import { CasparianError, Errors } from "../kernel/errors.js";
import { makeUndumpable } from "../kernel/dumpable.js";
import { createLogger, type Logger } from "../kernel/logger.js";
import { packageRoot } from "../kernel/paths.js";
import { casparianHome, resolveWorkerId } from "../worker/worker-id.js";

/** Exit codes, documented in --help. */
export const ExitCode = {
  OK: 0,
  /** The worker failed at run time (or a bug). */
  FAILURE: 1,
  /** Bad flags or an invalid / unloadable config file. */
  USAGE: 2,
} as const;

export const DEFAULTS = {
  connect: "tcp://127.0.0.1:5555",
  output: "./output",
  heartbeatIntervalSeconds: 5,
  silenceWarningSeconds: 60,
  graceSeconds: 30,
  logLevel: "info" as LevelWithSilent,
} as const;

const LOG_LEVELS: readonly LevelWithSilent[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];
const ENDPOINT = /^(tcp|ipc|inproc|ws|wss|pgm|epgm):\/\/.+/;

/**
 * `casparian run`'s plugin inspection starts a Python (plugin.ts): started here, it runs while
 * the run's modules load. Flags that do not parse are left to the run, which reports them.
 */
async function inspectPluginAhead(argv: readonly string[]): Promise<void> {
  const [{ parseRunFlags }, { inspectAhead }] = await Promise.all([import("../run/flags.js"), import("../run/plugin.js")]);
  try {
    const flags = parseRunFlags(argv);
    if (flags !== "help") inspectAhead(resolve(process.cwd(), flags.plugin));
  } catch {
    // reported by the run itself
  }
}

export function version(): string {
  const pkg = JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version: string };
  return pkg.version;
}

const EXIT_CODES_HELP = `Exit codes:
  0  success (including a clean stop on SIGTERM / SIGINT)
  1  runtime failure
  2  usage or configuration error`;

function mainHelp(program: string): string {
  return `Usage: ${program} <command> [options]

Commands:
  worker   connect to a Sentinel and run the jobs it dispatches (same as casparian-worker)
  run      run a plugin over local files with local workers (see: ${program} run --help)
  validate check a plugin, its config and sinks without running anything (see: ${program} validate --help)

Options:
  -h, --help     show this help
  -v, --version  print the version

${EXIT_CODES_HELP}
`;
}

function workerHelp(program: string): string {
  return `Usage: ${program} [options]
   or: ... prepare <uv.lock | project dir> [--python X] | --list | --prune HASH   (provision envs; prepare --help)

Connects a DEALER socket to a Sentinel (protocol v4) and runs the jobs it dispatches.

Options:
  --connect ENDPOINT          Sentinel ROUTER endpoint (default ${DEFAULTS.connect})
  --output DIR                output root for file sinks (default ${DEFAULTS.output})
  --worker-id ID              worker id (default: generated once, kept in $CASPARIAN_HOME/worker_id)
  --config FILE               load exactly this config file (default: search casparian.config.{ts,mts,mjs,js,cjs},
                              .casparianrc{,.json,.yaml,.yml}, package.json#casparian from the current directory up)
  --capabilities LIST         comma-separated plugin names sent in IDENTIFY (default "*"; upstream's Python
                              Sentinel needs the names: it never matches "*")
  --silence-warning S         warn when the Sentinel is unreachable or silent this long after IDENTIFY
                              (default ${DEFAULTS.silenceWarningSeconds}; 0 = never)
  --heartbeat-interval S      seconds between heartbeats (default ${DEFAULTS.heartbeatIntervalSeconds})
  --grace S                   seconds a running job gets to finish on SIGTERM/SIGINT (default ${DEFAULTS.graceSeconds})
  --log-level LEVEL           ${LOG_LEVELS.join(", ")} (default ${DEFAULTS.logLevel})
  --metrics-port PORT         serve Prometheus metrics on http://0.0.0.0:PORT/metrics
  --progress-interval S       log a "job progress" line (rows, bytes so far) at most every S seconds per job
  --warm-start-env HASH, --warm-start-plugin FILE, --warm-start-name NAME
                              start the warm guest of the plugin the first jobs will run (FILE, named NAME as
                              DISPATCH names it, in the env HASH) before the first DISPATCH (casparian run does)
  --warm-prefault-default MB  bridge.warm.prefaultMb when the config sets none (casparian run passes 0 when its
                              workers take every core: a spare's pre-fault then only takes CPU from the jobs)
  -h, --help                  show this help
  -v, --version               print the version

Flags override the config file, which overrides the defaults.
Environment: CASPARIAN_HOME (default ~/.casparian_flow) holds environments and the worker id.

${EXIT_CODES_HELP}
`;
}

/** Entry point of both bins. Resolves with the exit code once the command is done. */
export async function main(argv: readonly string[], program = "casparian"): Promise<number> {
  try {
    const [first, ...rest] = argv;
    switch (first) {
      case "worker": {
        const workerProgram = program === "casparian-worker" ? program : `${program} worker`;
        if (rest[0] === "prepare") {
          const { prepareCommand } = await import("./prepare.js");
          return await prepareCommand(rest.slice(1), workerProgram);
        }
        return await workerCommand(rest, workerProgram);
      }
      case "run": {
        await inspectPluginAhead(rest);
        const { runCommand } = (await import("../run/command.js")) as { runCommand(argv: string[]): Promise<number> };
        return await runCommand(rest);
      }
      case "validate": {
        const { validateCommand } = await import("../run/validate.js");
        return await validateCommand(rest);
      }
      case "-h":
      case "--help":
      case "help":
        process.stdout.write(mainHelp(program));
        return ExitCode.OK;
      case "-v":
      case "--version":
        process.stdout.write(`${version()}\n`);
        return ExitCode.OK;
      case undefined:
        process.stderr.write(mainHelp(program));
        return ExitCode.USAGE;
      default:
        throw Errors.CLI_USAGE([`unknown command "${first}"; expected "worker", "run" or "validate"`]);
    }
  } catch (err) {
    return reportError(err, program);
  }
}

/** User errors (CasparianError) print code, message and hint; anything else is a bug and prints its stack. */
export function reportError(err: unknown, program: string): number {
  if (err instanceof CasparianError) {
    process.stderr.write(`${program}: ${err.describe()}\n`);
    const usage = err.code.startsWith("CSP_CONFIG_") || err.code === Errors.CLI_USAGE.code || err.code === Errors.WORKER_BAD_ENDPOINT.code;
    return usage ? ExitCode.USAGE : ExitCode.FAILURE;
  }
  process.stderr.write(`${program}: unexpected error (this is a bug, please report it)\n${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return ExitCode.FAILURE;
}

export interface WorkerFlags {
  connect?: string;
  output?: string;
  workerId?: string;
  config?: string;
  heartbeatInterval?: number;
  grace?: number;
  logLevel?: LevelWithSilent;
  metricsPort?: number;
  capabilities?: string[];
  silenceWarning?: number;
  progressInterval?: number;
  warmStart?: { envHash: string; pluginFile: string; pluginName: string };
  warmPrefaultDefaultMb?: number;
  help: boolean;
  version: boolean;
}

/** Parse and check the worker's flags; throws CLI_USAGE naming the bad flag. */
export function parseWorkerFlags(argv: string[]): WorkerFlags {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        connect: { type: "string" },
        output: { type: "string" },
        "worker-id": { type: "string" },
        config: { type: "string" },
        "heartbeat-interval": { type: "string" },
        grace: { type: "string" },
        "log-level": { type: "string" },
        "metrics-port": { type: "string" },
        capabilities: { type: "string" },
        "silence-warning": { type: "string" },
        "progress-interval": { type: "string" },
        "warm-start-env": { type: "string" },
        "warm-start-plugin": { type: "string" },
        "warm-start-name": { type: "string" },
        "warm-prefault-default": { type: "string" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "v" },
      },
    }));
  } catch (err) {
    throw Errors.CLI_USAGE([err instanceof Error ? err.message : String(err)]);
  }
  const str = (name: string): string | undefined => {
    const v = values[name];
    if (v === undefined) return undefined;
    if (typeof v !== "string" || v.trim() === "") throw Errors.CLI_USAGE([`--${name} needs a value`]);
    return v;
  };
  const connect = str("connect");
  if (connect !== undefined && !ENDPOINT.test(connect)) {
    throw Errors.CLI_USAGE([`--connect expects a ZeroMQ endpoint such as tcp://127.0.0.1:5555, got "${connect}"`]);
  }
  const logLevel = str("log-level");
  if (logLevel !== undefined && !LOG_LEVELS.includes(logLevel as LevelWithSilent)) {
    throw Errors.CLI_USAGE([`--log-level expects one of ${LOG_LEVELS.join(", ")}, got "${logLevel}"`]);
  }
  return {
    connect,
    output: str("output"),
    workerId: str("worker-id"),
    config: str("config"),
    heartbeatInterval: seconds(str("heartbeat-interval"), "--heartbeat-interval", false),
    grace: seconds(str("grace"), "--grace", true),
    logLevel: logLevel as LevelWithSilent | undefined,
    metricsPort: port(str("metrics-port")),
    capabilities: list(str("capabilities"), "--capabilities"),
    silenceWarning: seconds(str("silence-warning"), "--silence-warning", true),
    progressInterval: seconds(str("progress-interval"), "--progress-interval", false),
    warmStart: warmStartHint(str("warm-start-env"), str("warm-start-plugin"), str("warm-start-name")),
    warmPrefaultDefaultMb: megabytes(str("warm-prefault-default"), "--warm-prefault-default"),
    help: values.help === true,
    version: values.version === true,
  };
}

function warmStartHint(envHash: string | undefined, pluginFile: string | undefined, pluginName: string | undefined): WorkerFlags["warmStart"] {
  if (envHash === undefined && pluginFile === undefined && pluginName === undefined) return undefined;
  if (envHash === undefined || pluginFile === undefined || pluginName === undefined)
    throw Errors.CLI_USAGE(["--warm-start-env, --warm-start-plugin and --warm-start-name go together"]);
  return { envHash, pluginFile: resolve(pluginFile), pluginName };
}

function megabytes(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) throw Errors.CLI_USAGE([`${flag} expects a whole number of MiB >= 0, got "${text}"`]);
  return n;
}

function seconds(text: string | undefined, flag: string, zeroAllowed: boolean): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isFinite(n) || n < 0 || (!zeroAllowed && n === 0)) {
    throw Errors.CLI_USAGE([`${flag} expects ${zeroAllowed ? "a number of seconds >= 0" : "a positive number of seconds"}, got "${text}"`]);
  }
  return n;
}

function list(text: string | undefined, flag: string): string[] | undefined {
  if (text === undefined) return undefined;
  const items = text.split(",").map((s) => s.trim());
  if (items.some((s) => s === "")) throw Errors.CLI_USAGE([`${flag} expects comma-separated names without empty entries, got "${text}"`]);
  return items;
}

function port(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw Errors.CLI_USAGE([`--metrics-port expects a port number 0..65535, got "${text}"`]);
  return n;
}

async function workerCommand(argv: string[], program: string): Promise<number> {
  const flags = parseWorkerFlags(argv);
  if (flags.help) {
    process.stdout.write(workerHelp(program));
    return ExitCode.OK;
  }
  if (flags.version) {
    process.stdout.write(`${version()}\n`);
    return ExitCode.OK;
  }

  const cwd = process.cwd();
  const configSource = { explicitPath: flags.config, cwd };
  const loaded = await loadConfig({ ...configSource, command: "worker" });
  const { config } = loaded;
  // Paths from the command line are relative to cwd; paths from a config file, to that file.
  const outputRoot = flags.output !== undefined ? resolve(cwd, flags.output) : resolve(loaded.dir, config.output ?? DEFAULTS.output);
  const home = config.home !== undefined ? resolve(loaded.dir, config.home) : casparianHome();
  const logger = createLogger({ level: flags.logLevel ?? config.logLevel ?? DEFAULTS.logLevel, fd: 1 });
  // Before any plugin runs: a same-uid plugin must not read this process's environment or ptrace it.
  const undumpable = makeUndumpable();
  if (!undumpable.ok) logger.warn({ reason: undumpable.reason }, "the worker stays dumpable: processes of its uid can read its environment");
  // A stray rejection in a plugin or sink tap is a bug to log, not a reason to drop the jobs of a whole worker.
  process.on("unhandledRejection", (reason) => logger.error({ err: reason }, "unhandled promise rejection (bug)"));
  const workerId = await resolveWorkerId({ explicit: flags.workerId ?? config.workerId, home });

  const { startWorkerProcess } = await import("../worker/app.js");
  logger.info({ config: loaded.filepath, output: outputRoot, home, worker_id: workerId }, "starting worker");
  const worker = await startWorkerProcess({
    connect: flags.connect ?? config.connect ?? DEFAULTS.connect,
    outputRoot,
    workerId,
    home,
    heartbeatIntervalMs: (flags.heartbeatInterval ?? config.heartbeatInterval ?? DEFAULTS.heartbeatIntervalSeconds) * 1000,
    graceMs: (flags.grace ?? config.grace ?? DEFAULTS.graceSeconds) * 1000,
    metricsPort: flags.metricsPort ?? config.metricsPort,
    capabilities: flags.capabilities ?? config.capabilities,
    silenceWarningMs: (flags.silenceWarning ?? config.silenceWarning ?? DEFAULTS.silenceWarningSeconds) * 1000,
    progressIntervalMs: flags.progressInterval === undefined ? undefined : flags.progressInterval * 1000,
    warmStart: flags.warmStart,
    warmPrefaultDefaultMb: flags.warmPrefaultDefaultMb,
    logger,
    loaded,
    configSource,
  });
  return await untilSignalled(worker, logger);
}

/** Resolve once SIGTERM/SIGINT has stopped the worker gracefully; a second signal exits at once. */
function untilSignalled(worker: { stop(reason?: string): Promise<void> }, logger: Logger): Promise<number> {
  return new Promise((resolvePromise) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        logger.warn({ signal }, "second signal; exiting now");
        logger.flush();
        process.exit(ExitCode.FAILURE);
      }
      stopping = true;
      logger.info({ signal }, "signal received; stopping gracefully");
      worker.stop(signal).then(
        () => resolvePromise(ExitCode.OK),
        (err: unknown) => {
          logger.error({ err }, "graceful stop failed");
          resolvePromise(ExitCode.FAILURE);
        },
      );
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  }).then((code) => {
    logger.flush();
    return code as number;
  });
}
