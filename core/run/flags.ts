/**
 * The command line of `casparian run`, parsed: its own module, light to load, so that the
 * CLI can read the plugin's path (and start inspecting it) before the run's modules load.
 */
import { parseArgs } from "node:util";
import type { LevelWithSilent } from "pino";
import { Errors } from "../kernel/errors.js";
import type { SinkMode } from "../protocol/messages.js";
import { parseMode } from "./outputs.js";

export const LOG_LEVELS: readonly LevelWithSilent[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

export interface RunFlags {
  plugin: string;
  inputs: string[];
  output?: string;
  workers?: number;
  sinks: string[];
  mode?: SinkMode;
  all: boolean;
  keepGoing: boolean;
  pluginConfig?: string;
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
        mode: { type: "string" },
        all: { type: "boolean" },
        "keep-going": { type: "boolean" },
        "plugin-config": { type: "string" },
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
  if (logLevel !== undefined && !LOG_LEVELS.includes(logLevel))
    throw Errors.CLI_USAGE([`--log-level expects one of ${LOG_LEVELS.join(", ")}, got "${logLevel}"`]);
  const mode = values.mode === undefined ? undefined : parseMode(values.mode, "--mode");
  if (mode !== undefined && (values.sink ?? []).length === 0)
    throw Errors.CLI_USAGE(["--mode applies to --sink sinks, and none was given"], {
      hint: "give the mode of a config or MANIFEST sink in its own entry: { uri, mode }",
    });
  return {
    plugin,
    inputs,
    output: values.output,
    workers,
    sinks: values.sink ?? [],
    mode,
    all: values.all === true,
    keepGoing: values["keep-going"] === true,
    pluginConfig: values["plugin-config"],
    config: values.config,
    report: values.report,
    logLevel,
  };
}
