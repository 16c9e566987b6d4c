/**
 * Finds, loads and validates casparian.config.* (cosmiconfig 9).
 *
 * JS and TS config files go through jiti, so a TypeScript config may import other
 * TypeScript files (a user's sink) and a RELOAD sees edits (no module cache).
 * Every key is checked; a mistake fails at start naming the file, the key path
 * (`bridge.idleTimeout`) and what was expected.
 */
import { dirname, resolve } from "node:path";
import { cosmiconfig, type Loader } from "cosmiconfig";
import { createJiti } from "jiti";
import type { CasparianConfig, ConfigEnv } from "./config.js";
import { CasparianError, Errors } from "../kernel/errors.js";
import { createHooks } from "../../hooks/index.js";

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
  const jiti = createJiti(import.meta.url, { interopDefault: true, moduleCache: false, fsCache: false });
  const mod = await jiti.import<unknown>(filepath);
  if (mod !== null && typeof mod === "object" && "default" in mod) return (mod as { default: unknown }).default;
  return mod;
};

function explorer() {
  return cosmiconfig(MODULE_NAME, {
    searchPlaces: SEARCH_PLACES,
    searchStrategy: "project",
    cache: false,
    loaders: { ".ts": jsLoader, ".mts": jsLoader, ".cts": jsLoader, ".js": jsLoader, ".mjs": jsLoader, ".cjs": jsLoader },
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
    const reason = (err as NodeJS.ErrnoException).code === "ENOENT" ? "file not found" : err instanceof Error ? err.message : String(err);
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

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

interface Problem {
  path: string;
  expected: string;
  got: unknown;
  hint?: string;
}

type Rule = (value: unknown, path: string, problems: Problem[]) => void;

function show(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "function") return "a function";
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "object") return "an object";
  return `${typeof value} ${String(value)}`;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

const rule =
  (expected: string, ok: (v: unknown) => boolean): Rule =>
  (v, path, problems) => {
    if (!ok(v)) problems.push({ path, expected, got: v });
  };

const nonEmptyString = rule("a non-empty string", (v) => typeof v === "string" && v.trim() !== "");
const positiveNumber = (unit: string) => rule(`a positive number of ${unit}`, (v) => typeof v === "number" && Number.isFinite(v) && v > 0);
const nonNegativeNumber = (unit: string) => rule(`a number of ${unit} >= 0`, (v) => typeof v === "number" && Number.isFinite(v) && v >= 0);
const positiveInteger = rule("a positive integer", (v) => typeof v === "number" && Number.isSafeInteger(v) && v > 0);
const positiveIntegerOrFalse = rule(
  "a positive integer, or false for no limit",
  (v) => v === false || (typeof v === "number" && Number.isSafeInteger(v) && v > 0),
);
const nonNegativeInteger = rule("an integer >= 0", (v) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0);
const stringArray = rule("an array of strings", (v) => Array.isArray(v) && v.every((x) => typeof x === "string"));
const oneOf = (values: readonly string[]) =>
  rule(`one of ${values.map((x) => JSON.stringify(x)).join(", ")}`, (v) => typeof v === "string" && values.includes(v));

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
const PARQUET_COMPRESSIONS = ["snappy", "zstd", "gzip", "lz4", "brotli", "uncompressed"] as const;
const ENDPOINT = /^(tcp|ipc|inproc|ws|wss|pgm|epgm):\/\/.+/;

/** An object whose keys are all known; unknown keys are reported with a did-you-mean. */
function shape(fields: Record<string, Rule>): Rule {
  return (v, path, problems) => {
    if (!isObject(v)) {
      problems.push({ path: path || "(root)", expected: "an object", got: v });
      return;
    }
    for (const [key, value] of Object.entries(v)) {
      const keyPath = path ? `${path}.${key}` : key;
      const check = fields[key];
      if (!check) {
        problems.push({ path: keyPath, expected: "no such key", got: value, hint: unknownKeyHint(key, Object.keys(fields)) });
        continue;
      }
      if (value !== undefined) check(value, keyPath, problems);
    }
  };
}

/** A slot user: a uid above 0 (no account needed) or an account name. */
function isUserSpec(v: unknown): boolean {
  return (typeof v === "number" && Number.isInteger(v) && v > 0 && v < 2 ** 32 - 1) || (typeof v === "string" && /^[a-z_][a-z0-9_.-]*\$?$/i.test(v));
}

const sinkEntry: Rule = (v, path, problems) => {
  if (typeof v === "string") return nonEmptyString(v, path, problems);
  if (!isObject(v)) {
    problems.push({ path, expected: "a sink plugin object, a module path or { use, options }", got: v });
    return;
  }
  if ("use" in v) {
    shape({ use: nonEmptyString, options: rule("an object", isObject) })(v, path, problems);
    return;
  }
  // A sink plugin object (defineSink); its deeper checks happen when sinks are loaded.
  nonEmptyString(v.name, `${path}.name`, problems);
  stringArray(v.schemes, `${path}.schemes`, problems);
  rule("a function", (x) => typeof x === "function")(v.create, `${path}.create`, problems);
};

const pluginEntry: Rule = (v, path, problems) => {
  if (!isObject(v)) {
    problems.push({ path, expected: "a worker plugin { name, apply(hooks) }", got: v });
    return;
  }
  nonEmptyString(v.name, `${path}.name`, problems);
  rule("a function", (x) => typeof x === "function")(v.apply, `${path}.apply`, problems);
};

const arrayOf =
  (item: Rule): Rule =>
  (v, path, problems) => {
    if (!Array.isArray(v)) {
      problems.push({ path, expected: "an array", got: v });
      return;
    }
    for (const [i, x] of v.entries()) item(x, `${path}[${i}]`, problems);
  };

const hookNames = Object.keys(createHooks());
const tapsRule = shape(Object.fromEntries(hookNames.map((name) => [name, rule("a function (the tap)", (v) => typeof v === "function")])));

const stringRecord: Rule = (v, path, problems) => {
  if (!isObject(v)) {
    problems.push({ path, expected: "an object of topic → sink URI", got: v });
    return;
  }
  for (const [key, value] of Object.entries(v)) nonEmptyString(value, `${path}.${key}`, problems);
};

const configRule = shape({
  connect: rule('a ZeroMQ endpoint such as "tcp://127.0.0.1:5555"', (v) => typeof v === "string" && ENDPOINT.test(v)),
  output: nonEmptyString,
  workerId: nonEmptyString,
  home: nonEmptyString,
  capabilities: arrayOf(nonEmptyString),
  silenceWarning: nonNegativeNumber("seconds"),
  heartbeatInterval: positiveNumber("seconds"),
  grace: nonNegativeNumber("seconds"),
  logLevel: oneOf(LOG_LEVELS),
  metricsPort: rule("a port number 0..65535", (v) => typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 65535),
  metricsHost: nonEmptyString,
  limits: shape({ maxMessageBytes: positiveInteger, maxQueuedJobs: nonNegativeInteger }),
  sinks: arrayOf(sinkEntry),
  plugins: arrayOf(pluginEntry),
  hooks: tapsRule,
  environments: shape({
    maxEnvBytes: positiveInteger,
    maxEnvs: positiveInteger,
    uv: nonEmptyString,
    env: stringArray,
    systemPython: rule("a python path or command, or false", (v) => v === false || (typeof v === "string" && v.trim() !== "")),
  }),
  bridge: shape({
    connectTimeout: positiveNumber("seconds"),
    idleTimeout: positiveNumber("seconds"),
    jobTimeout: positiveNumber("seconds"),
    env: stringArray,
    maxFrameBytes: positiveInteger,
    limits: shape(Object.fromEntries(["addressSpaceMb", "cpuSeconds", "openFiles", "fileSizeMb"].map((key) => [key, positiveIntegerOrFalse]))),
    cgroup: rule("true or false", (v) => typeof v === "boolean"),
    warm: shape({
      enabled: rule("true or false", (v) => typeof v === "boolean"),
      maxParents: positiveInteger,
      idleTimeout: positiveNumber("seconds"),
      maxParentMemory: positiveInteger,
    }),
    user: rule("a uid above 0, an account name, or false", (v) => v === false || isUserSpec(v)),
    users: rule("{ from: uid, count } or a list of uids / account names", (v) =>
      Array.isArray(v)
        ? v.length > 0 && v.every(isUserSpec)
        : isObject(v) && isUserSpec(v.from) && typeof v.count === "number" && Number.isInteger(v.count) && v.count > 0 && Object.keys(v).length === 2,
    ),
    sandbox: shape({
      tool: oneOf(["bwrap"]),
      network: rule("true or false", (v) => typeof v === "boolean"),
      readOnlyRoot: rule("true or false", (v) => typeof v === "boolean"),
      path: nonEmptyString,
    }),
  }),
  parquet: shape({ compression: oneOf(PARQUET_COMPRESSIONS), rowGroupSize: positiveInteger, encoderThreads: nonNegativeInteger }),
  run: shape({ workers: positiveInteger, sinks: stringRecord }),
});

/** Check every key; throws CONFIG_INVALID naming the file, each bad key and what it should be. */
export function validateConfig(value: unknown, filepath: string): CasparianConfig {
  const problems: Problem[] = [];
  configRule(value, "", problems);
  if (problems.length === 0) return value as CasparianConfig;
  const text = problems
    .map((p) => (p.expected === "no such key" ? `${p.path}: unknown key` : `${p.path}: expected ${p.expected}, got ${show(p.got)}`))
    .join("; ");
  const hints = problems.map((p) => p.hint).filter((h): h is string => Boolean(h));
  throw Errors.CONFIG_INVALID([filepath, text], {
    context: { file: filepath, keys: problems.map((p) => p.path) },
    hint: hints.length > 0 ? hints.join("; ") : "see CasparianConfig in core/config.ts (defineConfig gives editor completion)",
  });
}

function unknownKeyHint(key: string, known: string[]): string {
  const best = known
    .map((candidate) => ({ candidate, distance: editDistance(key.toLowerCase(), candidate.toLowerCase()) }))
    .sort((a, b) => a.distance - b.distance)[0];
  if (best && best.distance <= Math.max(2, Math.floor(key.length / 3))) return `did you mean "${best.candidate}" instead of "${key}"?`;
  return `"${key}" is not a config key; known keys: ${known.join(", ")}`;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}
