/**
 * Finds, loads and validates casparian.config.* (cosmiconfig 9).
 *
 * JS and TS config files go through jiti, so a TypeScript config may import other
 * TypeScript files (a user's sink) and a RELOAD sees edits (no module cache).
 * Every key is checked against the config schema (config.ts); a mistake fails at start
 * naming the file, the key path (`bridge.idleTimeout`), the value and what was expected.
 */
import { dirname, resolve } from "node:path";
import { stripVTControlCharacters } from "node:util";
import { cosmiconfig, defaultLoaders, type Loader } from "cosmiconfig";
import { type CasparianConfig, type ConfigEnv, configSchema } from "./config.js";
import { CasparianError, Errors } from "../kernel/errors.js";
import { check, problemText } from "../kernel/schema.js";

export interface LoadedConfig {
  config: CasparianConfig;
  /** The file the config came from; null when none was found (defaults only). */
  filepath: string | null;
  /** Relative paths in the config resolve against this directory (the file's, else cwd). */
  dir: string;
}

export const MODULE_NAME = "casparian";

export const SEARCH_PLACES = [
  "casparian.config.ts",
  "casparian.config.mts",
  "casparian.config.mjs",
  "casparian.config.js",
  "casparian.config.cjs",
  ".casparianrc",
  ".casparianrc.json",
  ".casparianrc.yaml",
  ".casparianrc.yml",
  "package.json",
];

/** jiti for every JS/TS flavour: TS imports of TS files work, and nothing is cached between loads. */
const jsLoader: Loader = async (filepath) => {
  // Loaded only for a JS/TS config: it costs ~200 ms of every start (the run and each worker).
  const { createJiti } = await import("jiti");
  const jiti = createJiti(import.meta.url, { interopDefault: true, moduleCache: false, fsCache: false });
  const mod = await jiti.import<unknown>(filepath);
  if (mod !== null && typeof mod === "object" && "default" in mod) return (mod as { default: unknown }).default;
  return mod;
};

/**
 * JSON (a .json config, package.json) through JSON.parse: cosmiconfig's own loader loads
 * parse-json and @babel/code-frame first, for the message of a syntax error, on every start
 * of the run and of each worker. A file that does not parse goes to it for that message.
 * (cosmiconfig's search for its own meta config still reads a package.json in the cwd with it.)
 */
const jsonLoader: Loader = (filepath, content) => {
  try {
    return JSON.parse(content) as unknown;
  } catch {
    return defaultLoaders[".json"](filepath, content);
  }
};

function explorer() {
  return cosmiconfig(MODULE_NAME, {
    searchPlaces: SEARCH_PLACES,
    searchStrategy: "project",
    cache: false,
    loaders: { ".json": jsonLoader, ".ts": jsLoader, ".mts": jsLoader, ".cts": jsLoader, ".js": jsLoader, ".mjs": jsLoader, ".cjs": jsLoader },
  });
}

/**
 * `explicitPath` loads exactly that file; otherwise search from `cwd` up to the
 * project root (the first directory with a package.json).
 */
export async function loadConfig(opts: { explicitPath?: string; cwd: string; command: string }): Promise<LoadedConfig> {
  const explicit = opts.explicitPath ? resolve(opts.cwd, opts.explicitPath) : undefined;
  let result: { config: unknown; filepath: string; isEmpty?: boolean } | null;
  try {
    result = explicit ? await explorer().load(explicit) : await explorer().search(opts.cwd);
  } catch (err) {
    const file = explicit ?? (err as { filepath?: string }).filepath ?? opts.cwd;
    if (err instanceof CasparianError) throw err;
    // A parser's message may carry terminal colours (parse-json's code frame is coloured
    // whenever CI or FORCE_COLOR is set); the message goes to logs and answers, not a terminal.
    const message = stripVTControlCharacters(err instanceof Error ? err.message : String(err));
    const reason = (err as NodeJS.ErrnoException).code === "ENOENT" ? "file not found" : message;
    throw Errors.CONFIG_LOAD_FAILED([file, reason], { cause: err, context: { file } });
  }
  if (result === null) return { config: {}, filepath: null, dir: opts.cwd };

  const { filepath } = result;
  let exported: unknown = result.isEmpty ? {} : result.config;
  if (typeof exported === "function") {
    const env: ConfigEnv = { command: opts.command };
    try {
      exported = await (exported as (env: ConfigEnv) => unknown)(env);
    } catch (err) {
      throw Errors.CONFIG_LOAD_FAILED([filepath, `the exported config function threw: ${err instanceof Error ? err.message : String(err)}`], {
        cause: err,
        context: { file: filepath },
      });
    }
  }
  if (exported === undefined || exported === null) exported = {};
  return { config: validateConfig(exported, filepath), filepath, dir: dirname(filepath) };
}

/** Check every key against the config schema (config.ts); throws CONFIG_INVALID naming the file, each bad key, its value and what it should be. */
export function validateConfig(value: unknown, filepath: string): CasparianConfig {
  const checked = check(configSchema, value, "(root)");
  // The file's own objects are kept (sink plugins, taps): the schema checks, it does not rebuild.
  if (checked.ok) return value as CasparianConfig;
  const hints = [...new Set(checked.problems.flatMap((problem) => (problem.hint === undefined ? [] : [problem.hint])))];
  throw Errors.CONFIG_INVALID([filepath, checked.problems.map(problemText).join("; ")], {
    context: { file: filepath, keys: checked.problems.map((problem) => problem.path) },
    hint: hints.length > 0 ? hints.join("; ") : "see CasparianConfig in core/config/config.ts (defineConfig gives editor completion)",
  });
}
