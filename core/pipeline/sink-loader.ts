/**
 * Turns the `sinks` entries of casparian.config.ts into validated sink plugins.
 *
 * An entry is a SinkPlugin object, or a module reference: a path (relative to the
 * config file's directory) or a package name, as a string or `{ use, options }`.
 * The module's default export is a SinkPlugin or a factory `(options) => SinkPlugin`.
 * TypeScript modules load through jiti. Plugins are validated here, at registration,
 * not at first use; the bundled Parquet sink always comes first.
 */
import { isAbsolute, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { createJiti } from "jiti";
import type { CasparianConfig, ParquetConfig, SinkReference } from "../config/config.js";
import { Errors, errorMessage } from "../kernel/errors.js";
import type { SinkPlugin } from "../../sinks/api.js";
import type { LoadedSink } from "./sink-manager.js";
import { parquetSink } from "../../sinks/parquet.js";

export type { LoadedSink };

const SCHEME_PATTERN = /^[a-z][a-z0-9+.-]*$/;

export async function loadSinkPlugins(entries: CasparianConfig["sinks"] | undefined, baseDir: string, parquet?: ParquetConfig): Promise<LoadedSink[]> {
  const loaded: LoadedSink[] = [{ plugin: parquetSink(parquet), options: { ...(parquet ?? {}) } }];
  if (entries !== undefined && !Array.isArray(entries)) {
    throw Errors.CONFIG_INVALID(["sinks", `expected an array, got ${describe(entries)}`]);
  }
  for (const [index, entry] of (entries ?? []).entries()) {
    const label = `sinks[${index}]`;
    if (isReference(entry)) {
      const { use, options } = typeof entry === "string" ? { use: entry, options: {} } : { use: entry.use, options: entry.options ?? {} };
      const plugin = await fromModule(use, options, baseDir, label);
      loaded.push({ plugin: validateSinkPlugin(plugin, `${label} (${use})`), options });
    } else {
      loaded.push({ plugin: validateSinkPlugin(entry, label), options: {} });
    }
  }
  assertUniqueSchemes(loaded);
  return loaded;
}

function isReference(entry: unknown): entry is SinkReference {
  if (typeof entry === "string") return true;
  return typeof entry === "object" && entry !== null && "use" in entry && !("create" in entry);
}

async function fromModule(use: string, options: Record<string, unknown>, baseDir: string, label: string): Promise<unknown> {
  if (typeof use !== "string" || use === "") throw Errors.SINK_INVALID([label, '"use" must name a module (a path or a package)']);
  if (typeof options !== "object" || options === null || Array.isArray(options))
    throw Errors.SINK_INVALID([`${label} (${use})`, '"options" must be an object']);
  const isPath = use.startsWith(".") || isAbsolute(use);
  const id = isPath ? resolve(baseDir, use) : use;
  let mod: unknown;
  try {
    // jiti resolves package names from baseDir and transpiles TypeScript modules.
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
      return await (exported as (options: Record<string, unknown>) => unknown)(options);
    } catch (err) {
      throw Errors.SINK_INVALID([`${label} (${use})`, `its factory threw: ${errorMessage(err)}`], { cause: err });
    }
  }
  return exported;
}

/** Checks the shape of a sink plugin and says exactly what is wrong. */
export function validateSinkPlugin(value: unknown, label: string): SinkPlugin {
  const fail = (what: string) => Errors.SINK_INVALID([label, what], { hint: "export defineSink({ name, schemes, create }) or a factory returning it" });
  if (typeof value !== "object" || value === null) throw fail(`expected a sink plugin object, got ${describe(value)}`);
  const p = value as Partial<Record<keyof SinkPlugin, unknown>>;
  if (typeof p.name !== "string" || p.name.trim() === "") throw fail(`"name" must be a non-empty string, got ${describe(p.name)}`);
  const named = `${label} "${p.name}"`;
  const failNamed = (what: string) => Errors.SINK_INVALID([named, what], { hint: "see sinks/api.ts for the SinkPlugin shape" });
  if (!Array.isArray(p.schemes) || p.schemes.length === 0) throw failNamed(`"schemes" must be a non-empty array of URI schemes, got ${describe(p.schemes)}`);
  for (const scheme of p.schemes) {
    if (typeof scheme !== "string" || !SCHEME_PATTERN.test(scheme)) {
      throw failNamed(`scheme ${JSON.stringify(scheme)} is not a lower-case URI scheme (give "jsonl", not "jsonl://")`);
    }
  }
  if (typeof p.create !== "function") throw failNamed(`"create" must be a function, got ${describe(p.create)}`);
  if (p.inputScopedModes !== undefined && typeof p.inputScopedModes !== "boolean")
    throw failNamed(`"inputScopedModes" must be true or false when given, got ${describe(p.inputScopedModes)}`);
  for (const optional of ["recover", "close", "checkTarget"] as const) {
    if (p[optional] !== undefined && typeof p[optional] !== "function")
      throw failNamed(`"${optional}" must be a function when given, got ${describe(p[optional])}`);
  }
  return value as SinkPlugin;
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
