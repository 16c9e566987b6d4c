/**
 * `casparian validate <plugin.py> [--config F] [--sink TOPIC=URI ...] [--mode M] [--output DIR]`:
 * everything `casparian run` checks before it starts a worker, without running anything
 * (no environment is built, no directory is created, no input is read): the plugin
 * compiles and has an entry class, the config loads, every sink module loads, every sink
 * URI parses, names a known scheme, has only parameters its sink knows and a mode its
 * sink can honour, and --output can be a directory. Exit codes as `casparian run`.
 */
import { parseArgs } from "node:util";
import { Errors } from "../kernel/errors.js";
import { checkRun, reportError, RunExit } from "./command.js";
import { ANY_TOPIC, parseMode } from "./outputs.js";

export const VALIDATE_HELP = `Usage: casparian validate <plugin.py> [--config FILE] [--sink TOPIC=URI ...] [--mode MODE] [--output DIR]

Checks, without running anything, what casparian run checks before it starts: the
plugin (compiled and inspected, never executed), the config and its sink modules,
every sink URI (scheme, parameters, mode) and the output directory.

Exit codes: 0 all good, 1 the plugin cannot run, 2 anything else is wrong (the
message says what and where).
`;

export async function validateCommand(argv: string[]): Promise<number> {
  try {
    let parsed;
    try {
      parsed = parseArgs({
        args: argv,
        allowPositionals: true,
        strict: true,
        options: {
          output: { type: "string", short: "o" },
          sink: { type: "string", multiple: true },
          mode: { type: "string" },
          "plugin-config": { type: "string" },
          config: { type: "string", short: "c" },
          help: { type: "boolean", short: "h" },
        },
      });
    } catch (err) {
      throw Errors.CLI_USAGE([(err as Error).message], { hint: "run `casparian validate --help` to see the usage" });
    }
    const { values, positionals } = parsed;
    if (values.help === true) {
      process.stdout.write(VALIDATE_HELP);
      return RunExit.OK;
    }
    const [plugin, ...extra] = positionals;
    if (plugin === undefined) throw Errors.CLI_USAGE(["missing <plugin.py>"], { hint: "casparian validate <plugin.py>" });
    if (extra.length > 0) throw Errors.CLI_USAGE([`validate takes one plugin, got also ${extra.join(" ")}`]);
    const mode = values.mode === undefined ? undefined : parseMode(values.mode, "--mode");
    const checked = await checkRun({
      plugin,
      output: values.output,
      sinks: values.sink ?? [],
      mode,
      pluginConfig: values["plugin-config"],
      config: values.config,
      cwd: process.cwd(),
      createOutput: false,
    });
    const lines = [`ok: plugin ${checked.plugin.name} (${checked.plugin.path})`];
    if (checked.config.filepath !== null) lines.push(`  config  ${checked.config.filepath}`);
    lines.push(`  output  ${checked.outputRoot}`);
    for (const sink of checked.sinks.sinks) {
      lines.push(`  sink    ${sink.topic === ANY_TOPIC ? "every other topic" : sink.topic} → ${sink.uri} (${sink.mode}, from ${sink.source})`);
    }
    process.stdout.write(`${lines.join("\n")}\n`);
    return RunExit.OK;
  } catch (err) {
    return reportError("casparian validate", err);
  }
}
