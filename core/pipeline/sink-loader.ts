/**
 * Turns the `sinks` entries of casparian.config.ts into validated sink plugins.
 *
 * An entry is a SinkPlugin object, or a module reference: a path (relative to the
 * config file's directory) or a package name, as a string or `{ use, options }`.
 * The module's default export is a SinkPlugin or a factory `() => SinkPlugin`.
 * TypeScript modules load through jiti. Plugins and their options are checked here, at
 * registration, not at first use (sinks/plugin-shape.ts, sinks/options.ts); the bundled
 * Parquet sink always comes first, with the config's `parquet` options.
 */
import { isAbsolute, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { CasparianConfig, ParquetConfig, SinkReference } from "../config/config.js";
import { Errors, errorMessage } from "../kernel/errors.js";
import { check, problemText } from "../kernel/schema.js";
import type { SinkOptions, SinkPlugin } from "../../sinks/api.js";
import { checkSinkOptions } from "../../sinks/options.js";
import { parquetSink } from "../../sinks/parquet.js";
import { sinkPluginShape } from "../../sinks/plugin-shape.js";
import type { LoadedSink } from "./sink-manager.js";

export type { LoadedSink };

export async function loadSinkPlugins(entries: CasparianConfig["sinks"] | undefined, baseDir: string, parquet: ParquetConfig = {}): Promise<LoadedSink[]> {
  const loaded: LoadedSink[] = [registered(parquetSink(), parquet, "the config's parquet options")];
  if (entries !== undefined && !Array.isArray(entries)) {
    throw Errors.CONFIG_INVALID(["sinks", `expected an array, got ${describe(entries)}`]);
  }
  for (const [index, entry] of (entries ?? []).entries()) {
    const label = `sinks[${index}]`;
    if (isReference(entry)) {
      const { use, options } = typeof entry === "string" ? { use: entry, options: {} } : { use: entry.use, options: entry.options ?? {} };
      const plugin = validateSinkPlugin(await fromModule(use, baseDir, label), `${label} (${use})`);
      loaded.push(registered(plugin, options, `${label} ${use}`));
    } else {
      loaded.push(registered(validateSinkPlugin(entry, label), {}, label));
    }
  }
  assertUniqueSchemes(loaded);
  return loaded;
}

/** A plugin with its config options, which its schema has accepted (else CSP_SINK_BAD_OPTIONS). */
function registered(plugin: SinkPlugin, options: SinkOptions, where: string): LoadedSink {
  checkSinkOptions(plugin, options, `"${plugin.name}" (${where})`);
  return { plugin, options };
}

function isReference(entry: unknown): entry is SinkReference {
  if (typeof entry === "string") return true;
  return typeof entry === "object" && entry !== null && "use" in entry && !("create" in entry);
}

async function fromModule(use: string, baseDir: string, label: string): Promise<unknown> {
  if (typeof use !== "string" || use === "") throw Errors.SINK_INVALID([label, '"use" must name a module (a path or a package)']);
  const isPath = use.startsWith(".") || isAbsolute(use);
  const id = isPath ? resolve(baseDir, use) : use;
  let mod: unknown;
  try {
    // jiti resolves package names from baseDir and transpiles TypeScript modules. Loaded
    // here, not at start: it costs ~200 ms of every worker's start, and most configs name no module.
    const { createJiti } = await import("jiti");
    const jiti = createJiti(pathToFileURL(join(baseDir, "casparian.config.ts")).href, { interopDefault: false, moduleCache: false, fsCache: false });
    mod = await jiti.import<unknown>(id);
  } catch (err) {
    throw Errors.SINK_INVALID([`${label} (${use})`, `cannot load module ${isPath ? id : `"${use}" from ${baseDir}`}: ${errorMessage(err)}`], {
      cause: err,
      hint: isPath ? "paths are relative to the config file's directory" : "install the package next to the config file",
    });
  }
  const exported = typeof mod === "object" && mod !== null && "default" in mod ? (mod as { default: unknown }).default : mod;
  if (typeof exported === "function") {
    try {
      return await (exported as () => unknown)();
    } catch (err) {
      throw Errors.SINK_INVALID([`${label} (${use})`, `its factory threw: ${errorMessage(err)}`], { cause: err });
    }
  }
  return exported;
}

/** Checks the shape of a sink plugin (sinks/plugin-shape.ts) and says exactly what is wrong; returns the object itself. */
export function validateSinkPlugin(value: unknown, label: string): SinkPlugin {
  const checked = check(sinkPluginShape, value, "");
  if (checked.ok) return value as SinkPlugin;
  const name = (value as { name?: unknown } | null)?.name;
  const named = typeof name === "string" && name.trim() !== "" ? `${label} "${name}"` : label;
  throw Errors.SINK_INVALID([named, checked.problems.map(problemText).join("; ")], {
    hint: "export defineSink({ name, schemes, create }) or a factory returning it (see SinkPlugin in sinks/api.ts)",
  });
}

function assertUniqueSchemes(loaded: LoadedSink[]): void {
  const owners = new Map<string, string>();
  for (const { plugin } of loaded) {
    for (const scheme of plugin.schemes) {
      const owner = owners.get(scheme);
      if (owner !== undefined) {
        throw Errors.SINK_INVALID([`"${plugin.name}"`, `scheme "${scheme}" is already handled by sink plugin "${owner}"`], {
          hint: "each URI scheme may have one sink plugin",
        });
      }
      owners.set(scheme, plugin.name);
    }
  }
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : `${typeof value} ${JSON.stringify(value) ?? String(value)}`.trim();
}
