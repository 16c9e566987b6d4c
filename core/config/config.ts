/**
 * The shape of casparian.config.ts, and `defineConfig`, the identity function that
 * gives it types (Vite's defineConfig). Loading and validation: config-loader.ts.
 *
 * Precedence everywhere: command-line flags > config file > defaults.
 */
import type { LevelWithSilent } from "pino";
import type { SinkPlugin } from "../../sinks/api.js";
import type { ParquetConfig } from "../../sinks/parquet.js";
import type { WorkerHooks, WorkerPlugin } from "../../hooks/index.js";

/** A sink plugin named by module: a path (relative to the config file) or a package name. */
export type SinkReference = string | { use: string; options?: Record<string, unknown> };

/** A tap given directly in config: `hooks: { onBatch: async (batch, job) => {...} }`. */
export type ConfigTaps = {
  [K in keyof WorkerHooks]?: WorkerHooks[K] extends { promise: (...args: infer A) => Promise<infer R> } ? (...args: A) => Promise<R> | R : never;
};

export interface BridgeConfig {
  /** Seconds the guest has to connect to the socket. Default 30. */
  connectTimeout?: number;
  /** Seconds without a frame before the job fails. Default 300. */
  idleTimeout?: number;
  /** Seconds for the whole job. Default 3600. */
  jobTimeout?: number;
  /** Extra environment variable names passed to the guest (PATH, LANG, TZ, TMPDIR, HOME always are). */
  env?: string[];
  /** Largest accepted data frame in bytes. Default 256 MiB. */
  maxFrameBytes?: number;
  /** Warm guests: jobs forked from a Python that already imported the plugin's modules. On by default. */
  warm?: WarmGuestsConfig;
  /** Resource limits of each guest; a job that runs into one fails with CSP_GUEST_LIMIT. */
  limits?: GuestLimitsConfig;
  /** false: never put a job in a cgroup of its own, track its processes by session. Default true (where the system allows). */
  cgroup?: boolean;
  /**
   * The unprivileged user this worker's guests run as (a uid, no account needed, or an account
   * name), so that plugins of different workers cannot reach each other's sockets, sources and
   * staging. Needs the worker to run as root. A root worker without user/users claims one from
   * 61000-61183 by itself (and runs a job as itself, with a warning, when the slot user cannot
   * read its environment); false: guests run as the worker.
   */
  user?: number | string | false;
  /** A pool of slot users for the workers of a host: each claims the first one no other worker holds. */
  users?: { from: number; count: number } | Array<number | string>;
  /** Run each guest in a bubblewrap sandbox: no network, read-only filesystem except its job directory and a private /tmp. */
  sandbox?: SandboxConfig;
}

/** Each in its unit; false: not limited. Defaults: 32768 MiB, 14400 s, 4096 files, 65536 MiB. */
export interface GuestLimitsConfig {
  /** Virtual memory of the guest process (RLIMIT_AS), MiB. Default 32768. */
  addressSpaceMb?: number | false;
  /** CPU time of the guest process (RLIMIT_CPU), seconds. Default 14400. */
  cpuSeconds?: number | false;
  /** Open file descriptors of the guest (RLIMIT_NOFILE). Default 4096. */
  openFiles?: number | false;
  /** Largest file the guest may write (RLIMIT_FSIZE), MiB. Default 65536. */
  fileSizeMb?: number | false;
}

export interface SandboxConfig {
  /** The sandbox tool; "bwrap" (bubblewrap, from the OS packages). */
  tool: "bwrap";
  /** Let the plugin use the network. Default false. */
  network?: boolean;
  /** Mount the host filesystem read-only (the job directory and a private /tmp stay writable). Default true. */
  readOnlyRoot?: boolean;
  /** Path to bwrap; default: found on PATH. */
  path?: string;
}

export interface WarmGuestsConfig {
  /** false: every job starts a fresh interpreter (as a plugin with MANIFEST["fork"] = False always does). Default true. */
  enabled?: boolean;
  /** Warm parents kept at once, one per (environment, plugin source). Default 4. */
  maxParents?: number;
  /** Seconds a warm parent without jobs is kept. Default 300. */
  idleTimeout?: number;
  /** Bytes of resident memory above which a warm parent is not kept (its plugin then runs cold). Default 2 GiB. */
  maxParentMemory?: number;
}

export interface EnvironmentsConfig {
  /**
   * Interpreter for DISPATCHes with env_hash "system" (upstream's Rust Sentinel sends it for a
   * plugin published without a lockfile): a path or a command on PATH. Default "python3";
   * false refuses such jobs.
   */
  systemPython?: string | false;
  /** Evict least recently used environments above this many bytes in total. */
  maxEnvBytes?: number;
  /** Evict least recently used environments above this count. */
  maxEnvs?: number;
  /** Path to the uv binary (else $UV, PATH, usual install places). */
  uv?: string;
  /** Variables uv may see besides PATH, HOME, TMPDIR, LANG and UV_* (e.g. HTTPS_PROXY, SSL_CERT_FILE); uv never gets the rest. */
  env?: string[];
}

/** Bounds on what the Sentinel can make the worker hold. */
export interface LimitsConfig {
  /** Largest payload accepted from the Sentinel, in bytes; a larger one is answered with ERR unparsed. Default 8 MiB. */
  maxMessageBytes?: number;
  /** DISPATCHes held behind the running job; more are answered CONCLUDE FAILED "worker busy". Default 16. */
  maxQueuedJobs?: number;
}

export interface RunConfig {
  /** Worker processes for `casparian run`; default: number of cores. */
  workers?: number;
  /** topic → sink URI, used when neither --sink nor the plugin MANIFEST says. */
  sinks?: Record<string, string>;
}

export interface CasparianConfig {
  /** Sentinel endpoint, e.g. "tcp://127.0.0.1:5555". */
  connect?: string;
  /** Output root for file sinks; sink paths may not leave it. Default "./output". */
  output?: string;
  workerId?: string;
  /** Where venvs and the worker id live. Default $CASPARIAN_HOME or ~/.casparian_flow. */
  home?: string;
  /** Sent in IDENTIFY. Default ["*"]. Upstream's Python Sentinel needs the plugin names: it never matches "*". */
  capabilities?: string[];
  /** Seconds before warning that the Sentinel is unreachable or silent since IDENTIFY; 0 turns it off. Default 60. */
  silenceWarning?: number;
  /** Seconds between heartbeats. Default 5. */
  heartbeatInterval?: number;
  /** Seconds a running job gets to finish on SIGTERM before it is aborted. Default 30. */
  grace?: number;
  logLevel?: LevelWithSilent;
  /** Serve Prometheus metrics on this port. */
  metricsPort?: number;
  /** Address the metrics endpoint binds to. Default "127.0.0.1" (loopback only); "0.0.0.0" for all interfaces. */
  metricsHost?: string;
  limits?: LimitsConfig;
  /** Sink plugins, in addition to the bundled Parquet sink. */
  sinks?: Array<SinkPlugin | SinkReference>;
  /** Worker plugins (webpack-style objects with apply(hooks)). */
  plugins?: WorkerPlugin[];
  /** Taps given inline, by hook name. */
  hooks?: ConfigTaps;
  environments?: EnvironmentsConfig;
  bridge?: BridgeConfig;
  parquet?: ParquetConfig;
  run?: RunConfig;
}

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
