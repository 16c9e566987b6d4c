/**
 * The error catalogue: every error the worker raises on purpose has a stable code,
 * a message naming the culprit, and (where there is one) a hint to the fix.
 * Modelled on Fastify's lib/errors.js: codes are API, messages are for people.
 */

export interface ErrorContext {
  jobId?: bigint;
  plugin?: string;
  sinkUri?: string;
  file?: string;
  [key: string]: unknown;
}

export class CasparianError extends Error {
  readonly code: string;
  readonly hint: string | undefined;
  readonly context: ErrorContext;

  constructor(code: string, message: string, options: { hint?: string; context?: ErrorContext; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "CasparianError";
    this.code = code;
    this.hint = options.hint;
    this.context = options.context ?? {};
  }

  /** One line for receipts and logs: "CODE: message (hint: ...)". */
  describe(): string {
    return this.hint ? `${this.code}: ${this.message} (hint: ${this.hint})` : `${this.code}: ${this.message}`;
  }
}

type MessageArgs = readonly unknown[];

/** A factory for one catalogue entry; `%s` placeholders are filled in order. */
export interface ErrorFactory<A extends MessageArgs> {
  readonly code: string;
  (args: A, options?: { context?: ErrorContext; cause?: unknown; hint?: string }): CasparianError;
  /** True when `err` was made by this factory. */
  is(err: unknown): err is CasparianError;
}

export function createError<A extends MessageArgs = []>(code: string, template: string, hint?: string): ErrorFactory<A> {
  const factory = ((args: A, options = {}) => {
    let i = 0;
    const message = template.replace(/%s/g, () => String(args[i++]));
    return new CasparianError(code, message, { hint: options.hint ?? hint, context: options.context, cause: options.cause });
  }) as ErrorFactory<A>;
  Object.defineProperty(factory, "code", { value: code });
  factory.is = (err: unknown): err is CasparianError => err instanceof CasparianError && err.code === code;
  return factory;
}

/** The fixes people need for the system errors a sink meets most. */
export function systemErrorHint(err: unknown): string | undefined {
  // Errors that crossed a thread boundary keep only their message, not their code.
  const code = (err as NodeJS.ErrnoException | null)?.code ?? /\b(ENOSPC|EDQUOT|EACCES|EPERM|EROFS)\b/.exec(errorMessage(err))?.[1];
  switch (code) {
    case "ENOSPC":
    case "EDQUOT":
      return "the disk under the output root is full: free space or point --output at a larger volume; nothing partial was published";
    case "EACCES":
    case "EPERM":
    case "EROFS":
      return "the worker cannot write under the output root: check its permissions and that it is not mounted read-only";
    default:
      return undefined;
  }
}

/** Message text for any thrown value, without losing a CasparianError's code and hint. */
export function errorMessage(err: unknown): string {
  if (err instanceof CasparianError) return err.describe();
  if (err instanceof Error) return err.message;
  return String(err);
}

// ---------------------------------------------------------------------------
// Catalogue. Group by area; never reuse or renumber a code once released.
// ---------------------------------------------------------------------------

export const Errors = {
  // Protocol (control plane)
  PROTOCOL_SHORT_HEADER: createError<[number]>("CSP_PROTOCOL_SHORT_HEADER", "header is %s bytes, expected 16"),
  PROTOCOL_BAD_VERSION: createError<[number]>(
    "CSP_PROTOCOL_BAD_VERSION",
    "protocol version %s, expected 4",
    "upgrade the Sentinel or the worker so both speak protocol v4",
  ),
  PROTOCOL_UNKNOWN_OPCODE: createError<[number]>("CSP_PROTOCOL_UNKNOWN_OPCODE", "unknown opcode %s"),
  PROTOCOL_FRAME_COUNT: createError<[number]>(
    "CSP_PROTOCOL_FRAME_COUNT",
    "message has %s frames, expected [header, payload] (or a header alone when payload_len is 0)",
  ),
  PROTOCOL_LENGTH_MISMATCH: createError<[number, number]>("CSP_PROTOCOL_LENGTH_MISMATCH", "payload_len says %s bytes but the payload frame has %s"),
  PROTOCOL_BAD_JSON: createError<[string, string]>("CSP_PROTOCOL_BAD_JSON", "%s payload is not valid JSON: %s"),
  PROTOCOL_BAD_PAYLOAD: createError<[string, string]>("CSP_PROTOCOL_BAD_PAYLOAD", "invalid %s payload: %s"),
  PROTOCOL_TOO_LARGE: createError<[string, number, number]>(
    "CSP_PROTOCOL_TOO_LARGE",
    "%s payload of %s bytes exceeds the limit of %s bytes",
    "raise limits.maxMessageBytes in the worker's config, or send less (a lockfile or plugin source this large is unusual)",
  ),
  PROTOCOL_UNEXPECTED_OPCODE: createError<[string]>(
    "CSP_PROTOCOL_UNEXPECTED_OPCODE",
    "a worker never receives %s",
    "only DISPATCH, ABORT, RELOAD, PREPARE_ENV and ERR go from the Sentinel to a worker",
  ),
  WORKER_BAD_ENDPOINT: createError<[string, string]>(
    "CSP_WORKER_BAD_ENDPOINT",
    "cannot connect to %s: %s",
    "give --connect an endpoint such as tcp://127.0.0.1:5555",
  ),

  // Configuration
  CONFIG_INVALID: createError<[string, string]>("CSP_CONFIG_INVALID", "invalid config in %s: %s"),
  CONFIG_LOAD_FAILED: createError<[string, string]>("CSP_CONFIG_LOAD_FAILED", "could not load config file %s: %s"),
  CLI_USAGE: createError<[string]>("CSP_CLI_USAGE", "%s", "run with --help to see the usage"),

  // Environments
  ENV_HASH_MISMATCH: createError<[string, string]>(
    "CSP_ENV_HASH_MISMATCH",
    "env_hash %s is not the sha256 of the lockfile content (%s)",
    "send env_hash = sha256(lockfile_content) in hex",
  ),
  ENV_NOT_PROVISIONED: createError<[string]>(
    "CSP_ENV_NOT_PROVISIONED",
    "Environment %s not provisioned. Send PREPARE_ENV first.",
    "Sentinels that never send PREPARE_ENV need it built beforehand: casparian-worker prepare <uv.lock | project dir>",
  ),
  ENV_SYSTEM_DISABLED: createError<[]>(
    "CSP_ENV_SYSTEM_DISABLED",
    'env_hash "system" (a plugin without a lockfile) is refused by this worker\'s config (environments.systemPython: false)',
    "publish the plugin with a uv.lock, or set environments.systemPython to a python3",
  ),
  ENV_SYSTEM_PYTHON_MISSING: createError<[string, string]>(
    "CSP_ENV_SYSTEM_PYTHON_MISSING",
    'env_hash "system" needs a system Python, but %s does not run: %s',
    "install python3, or point environments.systemPython at one",
  ),
  ENV_NOT_FOUND: createError<[string, string]>(
    "CSP_ENV_NOT_FOUND",
    "no provisioned environment matches %s under %s",
    "list them with: casparian-worker prepare --list",
  ),
  ENV_UV_MISSING: createError<[]>(
    "CSP_ENV_UV_MISSING",
    "uv was not found on PATH, in $UV or in the usual install places",
    "install it with `python3 -m pip install uv` (or set UV=/path/to/uv)",
  ),
  ENV_BAD_PYTHON_VERSION: createError<[string]>(
    "CSP_ENV_BAD_PYTHON_VERSION",
    "python_version %s is not a Python version",
    'send a version such as "3.12" (or null for the lockfile\'s requires-python); a path is never run as the interpreter',
  ),
  ENV_BUILD_FAILED: createError<[string, string]>("CSP_ENV_BUILD_FAILED", "building environment %s failed: %s"),

  // Bridge / guest
  GUEST_FAILED: createError<[string]>("CSP_GUEST_FAILED", "Guest process error: %s"),
  GUEST_TIMEOUT: createError<[string, number]>(
    "CSP_GUEST_TIMEOUT",
    "%s timeout after %s ms",
    "raise the timeout in the config (bridge.timeouts) if the plugin is legitimately slow",
  ),
  GUEST_PROTOCOL: createError<[string]>("CSP_GUEST_PROTOCOL", "bridge protocol error: %s"),
  GUEST_LIMIT: createError<[string, string, string, string]>(
    "CSP_GUEST_LIMIT",
    "the plugin ran into its %s limit (%s, bridge.limits.%s): %s",
    "raise the limit under bridge.limits in the config if the plugin legitimately needs more",
  ),
  BRIDGE_BAD_FRAME: createError<[bigint, number, number, string]>(
    "CSP_BRIDGE_BAD_FRAME",
    "job %s: data frame %s (%s bytes) is not a valid Arrow IPC stream: %s",
    "the plugin sent corrupt bytes on the bridge socket; publish through the SDK (ctx.publish) instead of writing to the socket",
  ),
  BATCH_RELEASED: createError<[string]>(
    "CSP_BATCH_RELEASED",
    "a batch was used after its memory went back to the worker: %s",
    "a sink or onBatch tap that keeps a batch after its call returns must call batch.retain() during that call, and the function it returns when done",
  ),
  // Guest isolation (core/bridge/slot-user.ts, sandbox.ts)
  SLOT_USER_NEEDS_ROOT: createError<[number | string]>(
    "CSP_SLOT_USER_NEEDS_ROOT",
    "bridge.user / bridge.users need the worker to run as root (it runs as uid %s): only root can start guests as another user",
    "run the worker as root, or remove bridge.user/users (guests then run as the worker's uid; bridge.sandbox still confines them)",
  ),
  SLOT_USER_UNSUPPORTED: createError<[string]>("CSP_SLOT_USER_UNSUPPORTED", "per-slot guest users need Linux (this is %s)", "remove bridge.user/users"),
  SLOT_USER_UNKNOWN: createError<[string]>(
    "CSP_SLOT_USER_UNKNOWN",
    "bridge.user %s is not a usable account or uid (root and unknown names are refused)",
    "give a uid above 0 (no account needed) or an existing account name",
  ),
  SLOT_USERS_EXHAUSTED: createError<[string]>(
    "CSP_SLOT_USERS_EXHAUSTED",
    "every slot user (%s) is held by another worker on this host",
    "give each worker its own user, or a larger bridge.users range ({ from, count })",
  ),
  SLOT_USER_UNREACHABLE: createError<[number, string]>(
    "CSP_SLOT_USER_UNREACHABLE",
    "the guest cannot run as slot user %s: %s",
    "keep the environments home, the Python it links to and the input files readable by other users (e.g. home under /var/lib, Python under /opt or /usr), or set bridge.user: false",
  ),
  SANDBOX_UNAVAILABLE: createError<[string, string]>(
    "CSP_SANDBOX_UNAVAILABLE",
    "bridge.sandbox: %s cannot run: %s",
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) or remove bridge.sandbox",
  ),
  JOB_ABORTED: createError<[string]>("CSP_JOB_ABORTED", "aborted by %s"),
  JOB_TEARDOWN_FAILED: createError<[string, string]>(
    "CSP_JOB_TEARDOWN_FAILED",
    "removing the %s of a finished job failed (its processes were gone; its answer was not affected): %s",
    "the next worker start on this host removes what dead workers left (casparian-<pid>-* cgroups, casparian-bridge-* directories); if it keeps failing, check the worker may still write there",
  ),
  PLUGIN_SOURCE_TOO_LARGE: createError<[number, number]>(
    "CSP_PLUGIN_SOURCE_TOO_LARGE",
    "the plugin source is %s bytes, above the limit of %s",
    "move data out of the plugin source into files it reads, or split the plugin into modules installed in its environment",
  ),

  // Sinks
  SINK_UNKNOWN_SCHEME: createError<[string, string]>(
    "CSP_SINK_UNKNOWN_SCHEME",
    "no sink handles the scheme of %s; known schemes: %s",
    "register a sink for this scheme in casparian.config.ts (sinks: [...])",
  ),
  SINK_BAD_URI: createError<[string, string]>("CSP_SINK_BAD_URI", "invalid sink URI %s: %s"),
  SINK_PATH_ESCAPE: createError<[string, string]>(
    "CSP_SINK_PATH_ESCAPE",
    "sink URI %s resolves outside the output root %s",
    "use a path relative to --output, without '..'",
  ),
  SINK_TARGET_EXISTS: createError<[string]>(
    "CSP_SINK_TARGET_EXISTS",
    "target %s exists and the sink mode is 'error'",
    "use mode 'append' or 'replace', or remove the target",
  ),
  SINK_SCHEMA_MISMATCH: createError<[string, string]>("CSP_SINK_SCHEMA_MISMATCH", "batch for topic '%s' does not match its schema: %s"),
  SCHEMA_CONFLICT: createError<[string, string, string, string, string]>(
    "CSP_SCHEMA_CONFLICT",
    "topic '%s': column '%s' is %s in one part of the data and %s in another (%s)",
  ),
  SINK_INVALID: createError<[string, string]>("CSP_SINK_INVALID", "invalid sink plugin %s: %s"),
  SINK_BAD_OPTIONS: createError<[string, string]>("CSP_SINK_BAD_OPTIONS", "invalid options for sink plugin %s: %s"),
  SINK_WRITE_FAILED: createError<[string, string]>("CSP_SINK_WRITE_FAILED", "sink %s failed: %s"),
  PARQUET_NATIVE_UNAVAILABLE: createError<[string]>(
    "CSP_PARQUET_NATIVE_UNAVAILABLE",
    "the native Parquet engine cannot be used (%s); writing with parquet-wasm, which is slower",
    'install a Rust toolchain (cargo, https://rustup.rs), then run `npm run build:native` in casparian-flow\'s directory; or set parquet.engine to "wasm" to choose the fallback knowingly',
  ),
  SINK_DUPLICATE_CONFLICT: createError<[string, string]>(
    "CSP_SINK_DUPLICATE_CONFLICT",
    "the DISPATCH lists sink %s more than once with different settings: %s",
    "a URI can be listed twice only as the identical SinkConfig (Sentinels repeat their sink table); give each topic its own URI",
  ),
  SINK_BAD_SCHEMA_DEF: createError<[string, string]>(
    "CSP_SINK_BAD_SCHEMA_DEF",
    "schema_def for topic '%s' is not a valid contract: %s",
    'send JSON like {"columns":[{"name":"id","type":"int64","nullable":false}]}',
  ),

  // Hooks and plugins
  HOOK_REJECTED: createError<[string, string]>("CSP_HOOK_REJECTED", "job rejected by %s: %s"),
  HOOK_CALLBACK_TAP: createError<[string, string]>(
    "CSP_HOOK_CALLBACK_TAP",
    "plugin %s taps %s with tapAsync (a callback)",
    "use tapPromise (an async function) or tap (a plain function)",
  ),

  // casparian run
  RUN_PLUGIN_INVALID: createError<[string, string]>("CSP_RUN_PLUGIN_INVALID", "plugin %s cannot run:\n%s", "fix the plugin; no input was processed"),
  RUN_PYTHON_MISSING: createError<[string]>(
    "CSP_RUN_PYTHON_MISSING",
    "%s was not found; casparian run needs Python 3 to check the plugin",
    "install Python 3.11+ (or set PYTHON=/path/to/python3)",
  ),
  RUN_LOCK_FAILED: createError<[string, string]>(
    "CSP_RUN_LOCK_FAILED",
    "uv could not lock the dependencies declared in %s:\n%s",
    "check the package names and versions in the '# /// script' block",
  ),
  RUN_ENV_FAILED: createError<[string, string]>("CSP_RUN_ENV_FAILED", "the environment for plugin %s could not be prepared: %s"),
  RUN_WORKERS_FAILED: createError<[string]>(
    "CSP_RUN_WORKERS_FAILED",
    "worker processes keep failing: %s",
    "run with --log-level debug to see the workers' logs",
  ),
  RUN_SINK_MODE: createError<[string, string, string]>("CSP_RUN_SINK_MODE", "sink %s cannot be used in mode %s: %s"),
  RUN_PLUGIN_FAILS_EVERYWHERE: createError<[number]>(
    "CSP_RUN_PLUGIN_FAILS_EVERYWHERE",
    "the plugin failed the same way on its first %s inputs, so the rest were not run",
    "fix the plugin (the error is below) and run again",
  ),
} as const;

/** Every catalogue code: `CSP_` + the entry's name (test/public-api.test.ts holds each factory to it). */
export type ErrorCode = `CSP_${keyof typeof Errors}`;
