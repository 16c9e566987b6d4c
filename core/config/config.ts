/**
 * The shape of casparian.config.ts: one valibot schema, from which the types are derived,
 * and `defineConfig`, the identity function that gives a config file those types (Vite's
 * defineConfig). Loading: loader.ts, which checks every file against this schema.
 *
 * The schema checks; it does not fill in defaults (each is applied where it is used, and
 * documented on its key). Precedence everywhere: command-line flags > config file > defaults.
 */
import type { LevelWithSilent } from "pino";
import * as v from "valibot";
import { claiming, expected, isNonArrayObject, nonNegativeInteger, positiveInteger, strictObject } from "../kernel/schema.js";
import type { SinkPlugin } from "../../sinks/api.js";
import { parquetOptions, type ParquetConfig } from "../../sinks/parquet-settings.js";
import { sinkPluginShape } from "../../sinks/plugin-shape.js";
import { createHooks, type WorkerHooks, type WorkerPlugin } from "../../hooks/index.js";

/** A tap given directly in config: `hooks: { onBatch: async (batch, job) => {...} }`. */
export type ConfigTaps = {
  [K in keyof WorkerHooks]?: WorkerHooks[K] extends { promise: (...args: infer A) => Promise<infer R> } ? (...args: A) => Promise<R> | R : never;
};

const nonEmptyString = v.pipe(
  v.string(expected("a non-empty string")),
  v.check((text) => text.trim() !== "", expected("a non-empty string")),
);
const stringArray = v.array(v.string(expected("a string")), expected("an array of strings"));

function seconds(what: "positive" | "non-negative") {
  const message = expected(what === "positive" ? "a positive number of seconds" : "a number of seconds >= 0");
  return v.pipe(v.number(message), v.finite(message), what === "positive" ? v.gtValue(0, message) : v.minValue(0, message));
}

const limit = v.union([v.literal(false), positiveInteger("a positive integer, or false for no limit")], expected("a positive integer, or false for no limit"));

/** A slot user: a uid above 0 (no account needed) or an account name. */
function userSpecs(what: string) {
  const message = expected(what);
  const uid = v.pipe(v.number(message), v.integer(message), v.gtValue(0, message), v.ltValue(2 ** 32 - 1, message));
  return { uid, userSpec: v.union([uid, v.pipe(v.string(message), v.regex(/^[a-z_][a-z0-9_.-]*\$?$/i, message))], message) };
}
const USER_TEXT = "a uid above 0, an account name, or false";
const USERS_TEXT = "{ from: uid, count } or a list of uids / account names";

const ENDPOINT = /^(tcp|ipc|inproc|ws|wss|pgm|epgm):\/\/.+/;
const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const satisfies readonly LevelWithSilent[];

/** A sink plugin named by module: a path (relative to the config file) or a package name, as text or with options. */
const sinkReference = strictObject({
  /** The module: "./sinks/s3.ts" or "casparian-sink-s3". Its default export is a sink plugin or a factory returning one. */
  use: nonEmptyString,
  /** Checked against the options schema the sink declares, when it is registered. */
  options: v.optional(v.custom<Record<string, unknown>>(isNonArrayObject, expected("an object"))),
});
export type SinkReference = string | v.InferInput<typeof sinkReference>;

const sinkEntry = v.lazy((entry: unknown): v.GenericSchema<SinkPlugin | SinkReference> => {
  if (typeof entry === "string") return nonEmptyString;
  if (!isNonArrayObject(entry)) return v.custom<SinkPlugin>(() => false, expected("a sink plugin object, a module path or { use, options }"));
  return "use" in entry && !("create" in entry) ? sinkReference : sinkPluginShape;
});

const workerPlugin = claiming<WorkerPlugin>(
  v.pipe(
    v.custom(isNonArrayObject, expected("a worker plugin { name, apply(hooks) }")),
    v.looseObject({ name: nonEmptyString, apply: v.function(expected("a function")) }),
  ),
);

const taps = claiming<ConfigTaps>(
  strictObject(Object.fromEntries(Object.keys(createHooks()).map((name) => [name, v.optional(v.function(expected("a function (the tap)")))]))),
);

const bridgeSchema = strictObject({
  /** Seconds the guest has to connect to the socket. Default 30. */
  connectTimeout: v.optional(seconds("positive")),
  /** Seconds without a frame before the job fails. Default 300. */
  idleTimeout: v.optional(seconds("positive")),
  /** Seconds for the whole job. Default 3600. */
  jobTimeout: v.optional(seconds("positive")),
  /** Extra environment variable names passed to the guest (PATH, LANG, TZ, TMPDIR, HOME always are). */
  env: v.optional(stringArray),
  /** Largest accepted data frame in bytes. Default 256 MiB. */
  maxFrameBytes: v.optional(positiveInteger()),
  /** Warm guests: jobs forked from a Python that already imported the plugin's modules. On by default. */
  warm: v.optional(
    strictObject({
      /** false: every job starts a fresh interpreter (as a plugin with MANIFEST["fork"] = False always does). Default true. */
      enabled: v.optional(v.boolean(expected("true or false"))),
      /** Warm parents kept at once, one per (environment, plugin source). Default 4. */
      maxParents: v.optional(positiveInteger()),
      /** Seconds a warm parent without jobs is kept. Default 300. */
      idleTimeout: v.optional(seconds("positive")),
      /** Bytes of resident memory above which a warm parent is not kept (its plugin then runs cold). Default 2 GiB. */
      maxParentMemory: v.optional(positiveInteger()),
      /** MiB of learned hot pages each spare child of a warm parent pre-faults while it waits for its job; 0: off. Default 64. */
      prefaultMb: v.optional(nonNegativeInteger()),
    }),
  ),
  /** Resource limits of each guest; a job that runs into one fails with CSP_GUEST_LIMIT. Each in its unit; false: not limited. */
  limits: v.optional(
    strictObject({
      /** Virtual memory of the guest process (RLIMIT_AS), MiB. Default 32768. */
      addressSpaceMb: v.optional(limit),
      /** CPU time of the guest process (RLIMIT_CPU), seconds. Default 14400. */
      cpuSeconds: v.optional(limit),
      /** Open file descriptors of the guest (RLIMIT_NOFILE). Default 4096. */
      openFiles: v.optional(limit),
      /** Largest file the guest may write (RLIMIT_FSIZE), MiB. Default 65536. */
      fileSizeMb: v.optional(limit),
    }),
  ),
  /** false: never put a job in a cgroup of its own, track its processes by session. Default true (where the system allows). */
  cgroup: v.optional(v.boolean(expected("true or false"))),
  /**
   * The unprivileged user this worker's guests run as (a uid, no account needed, or an account
   * name), so that plugins of different workers cannot reach each other's sockets, sources and
   * staging. Needs the worker to run as root. A root worker without user/users claims one from
   * 61000-61183 by itself (and runs a job as itself, with a warning, when the slot user cannot
   * read its environment); false: guests run as the worker.
   */
  user: v.optional(v.union([v.literal(false), userSpecs(USER_TEXT).userSpec], expected(USER_TEXT))),
  /** A pool of slot users for the workers of a host: each claims the first one no other worker holds. */
  users: v.optional(
    v.union(
      [
        v.pipe(v.array(userSpecs(USERS_TEXT).userSpec, expected(USERS_TEXT)), v.nonEmpty(expected(USERS_TEXT))),
        v.strictObject({ from: userSpecs(USERS_TEXT).uid, count: positiveInteger(USERS_TEXT) }, expected(USERS_TEXT)),
      ],
      expected(USERS_TEXT),
    ),
  ),
  /** Run each guest in a bubblewrap sandbox: no network, read-only filesystem except its job directory and a private /tmp. */
  sandbox: v.optional(
    strictObject({
      /** The sandbox tool; "bwrap" (bubblewrap, from the OS packages). */
      tool: v.picklist(["bwrap"], expected('one of "bwrap"')),
      /** Let the plugin use the network. Default false. */
      network: v.optional(v.boolean(expected("true or false"))),
      /** Mount the host filesystem read-only (the job directory and a private /tmp stay writable). Default true. */
      readOnlyRoot: v.optional(v.boolean(expected("true or false"))),
      /** Path to bwrap; default: found on PATH. */
      path: v.optional(nonEmptyString),
    }),
  ),
});

const environmentsSchema = strictObject({
  /**
   * Interpreter for DISPATCHes with env_hash "system" (upstream's Rust Sentinel sends it for a
   * plugin published without a lockfile): a path or a command on PATH. Default "python3";
   * false refuses such jobs.
   */
  systemPython: v.optional(v.union([v.literal(false), nonEmptyString], expected("a python path or command, or false"))),
  /** Evict least recently used environments above this many bytes in total. */
  maxEnvBytes: v.optional(positiveInteger()),
  /** Evict least recently used environments above this count. */
  maxEnvs: v.optional(positiveInteger()),
  /** Path to the uv binary (else $UV, PATH, usual install places). */
  uv: v.optional(nonEmptyString),
  /** Variables uv may see besides PATH, HOME, TMPDIR, LANG, SSL_CERT_FILE, SSL_CERT_DIR and UV_* (e.g. HTTPS_PROXY); uv never gets the rest. */
  env: v.optional(stringArray),
});

/** Bounds on what the Sentinel can make the worker hold. */
const limitsSchema = strictObject({
  /** Largest payload accepted from the Sentinel, in bytes; a larger one is answered with ERR unparsed. Default 8 MiB. */
  maxMessageBytes: v.optional(positiveInteger()),
  /** DISPATCHes held behind the running job; more are answered CONCLUDE FAILED "worker busy". Default 16. */
  maxQueuedJobs: v.optional(nonNegativeInteger()),
});

const runSchema = strictObject({
  /** Worker processes for `casparian run`; default: number of cores. */
  workers: v.optional(positiveInteger()),
  /** topic → sink URI, used when neither --sink nor the plugin MANIFEST says. */
  sinks: v.optional(v.record(v.string(), nonEmptyString, expected("an object of topic → sink URI"))),
});

export const configSchema = strictObject(
  {
    /** Sentinel endpoint, e.g. "tcp://127.0.0.1:5555". */
    connect: v.optional(v.pipe(v.string(endpointText()), v.regex(ENDPOINT, endpointText()))),
    /** Output root for file sinks; sink paths may not leave it. Default "./output". */
    output: v.optional(nonEmptyString),
    workerId: v.optional(nonEmptyString),
    /** Where venvs and the worker id live. Default $CASPARIAN_HOME or ~/.casparian_flow. */
    home: v.optional(nonEmptyString),
    /** Sent in IDENTIFY. Default ["*"]. Upstream's Python Sentinel needs the plugin names: it never matches "*". */
    capabilities: v.optional(v.array(nonEmptyString, expected("an array"))),
    /** Seconds before warning that the Sentinel is unreachable or silent since IDENTIFY; 0 turns it off. Default 60. */
    silenceWarning: v.optional(seconds("non-negative")),
    /** Seconds between heartbeats. Default 5. */
    heartbeatInterval: v.optional(seconds("positive")),
    /** Seconds a running job gets to finish on SIGTERM before it is aborted. Default 30. */
    grace: v.optional(seconds("non-negative")),
    logLevel: v.optional(v.picklist(LOG_LEVELS, expected(`one of ${LOG_LEVELS.map((level) => JSON.stringify(level)).join(", ")}`))),
    /** Serve Prometheus metrics on this port. */
    metricsPort: v.optional(
      v.pipe(
        v.number(expected("a port number 0..65535")),
        v.integer(expected("a port number 0..65535")),
        v.minValue(0, expected("a port number 0..65535")),
        v.maxValue(65535, expected("a port number 0..65535")),
      ),
    ),
    /** Address the metrics endpoint binds to. Default "127.0.0.1" (loopback only); "0.0.0.0" for all interfaces. */
    metricsHost: v.optional(nonEmptyString),
    limits: v.optional(limitsSchema),
    /** Sink plugins, in addition to the bundled Parquet sink: plugin objects, module paths, package names, `{ use, options }`. */
    sinks: v.optional(v.array(sinkEntry, expected("an array"))),
    /** Worker plugins (webpack-style objects with apply(hooks)). */
    plugins: v.optional(v.array(workerPlugin, expected("an array"))),
    /** Taps given inline, by hook name. */
    hooks: v.optional(taps),
    environments: v.optional(environmentsSchema),
    bridge: v.optional(bridgeSchema),
    /** The bundled Parquet sink's options: the same schema its URIs' query is checked against. */
    parquet: v.optional(parquetOptions),
    run: v.optional(runSchema),
  },
  "an object",
);

function endpointText() {
  return expected('a ZeroMQ endpoint such as "tcp://127.0.0.1:5555"');
}

export type CasparianConfig = v.InferInput<typeof configSchema>;
export type BridgeConfig = NonNullable<CasparianConfig["bridge"]>;
export type WarmGuestsConfig = NonNullable<BridgeConfig["warm"]>;
export type EnvironmentsConfig = NonNullable<CasparianConfig["environments"]>;
export type LimitsConfig = NonNullable<CasparianConfig["limits"]>;
export type RunConfig = NonNullable<CasparianConfig["run"]>;
export type GuestLimitsConfig = NonNullable<BridgeConfig["limits"]>;
export type SandboxConfig = NonNullable<BridgeConfig["sandbox"]>;

export interface ConfigEnv {
  /** "worker" or "run": which command is loading the config. */
  command: string;
}

export type UserConfigExport = CasparianConfig | ((env: ConfigEnv) => CasparianConfig | Promise<CasparianConfig>);

/**
 * Identity function that types a config file. Overloads rather than a generic, so that an
 * object literal is checked against CasparianConfig itself: a misspelt key is a type error.
 */
export function defineConfig(config: CasparianConfig): CasparianConfig;
export function defineConfig(
  config: (env: ConfigEnv) => CasparianConfig | Promise<CasparianConfig>,
): (env: ConfigEnv) => CasparianConfig | Promise<CasparianConfig>;
export function defineConfig(config: UserConfigExport): UserConfigExport {
  return config;
}

export type { ParquetConfig };
