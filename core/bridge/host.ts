/**
 * The bridge host: runs one plugin job as a guest process and streams its output back.
 *
 * Per job: a private directory (mkdtemp, 0700) holding a Unix socket; the guest is
 * `<venv>/bin/python <guest dir>` in its own process group, with the §3 variables
 * and an allowlisted environment only (PATH, LANG, TZ, TMPDIR, HOME + bridge.env), so no
 * secret of the worker reaches a plugin. Its cwd is the private directory. The plugin
 * source reaches it as a 0600 file there (BRIDGE_PLUGIN_FILE), not in a variable: Linux
 * caps one variable at 128 KiB.
 *
 * With a warm pool (warm-pool.ts) the guest is instead forked from a warm parent of the
 * same env and source; its stdout and stderr then arrive over two more sockets in the
 * same directory. Everything else (timeouts, abort, the kill at the end) is the same.
 *
 * A job owns its processes (job-scope.ts): the guest leads a session of its own and, where
 * the system allows, runs in a cgroup of the job's own. When the guest's main process is
 * done, whatever it left running is killed, so a daemon or a child holding its stderr
 * neither survives the job nor delays its answer. Resource limits (limits.ts) are set by the
 * guest on itself before plugin code runs; running into one fails the job with CSP_GUEST_LIMIT.
 *
 * Data plane (frames.ts): each data frame is one Arrow IPC stream. Topic routing: the
 * stream's schema metadata key `casparian.topic` names the topic; a frame without it (a
 * plain §3 guest) is topic "output". The key is stripped before sinks see the batch
 * (topic.ts). Each batch is awaited in `onBatch` before another byte is read, so a fast
 * guest blocks on its socket instead of growing the worker's memory.
 *
 * Failure: every way a guest can go wrong ends in a thrown CasparianError (GUEST_FAILED,
 * GUEST_TIMEOUT naming connect/idle/job, GUEST_PROTOCOL, JOB_ABORTED) whose message
 * carries the guest's own last error lines; the job's processes are killed (TERM, then KILL
 * after 2 s) and the directory removed on every path.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { chown, readdir, realpath, rm, writeFile } from "node:fs/promises";
import type { Socket } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import type { Readable } from "node:stream";
import { CasparianError, Errors } from "../kernel/errors.js";
import type { Batch } from "../kernel/job.js";
import type { Logger } from "../kernel/logger.js";
import { DEFAULT_MAX_FRAME_BYTES, FrameDecoder, type Frame } from "./frames.js";
import { FrameLease, FramePool } from "./frame-pool.js";
import { FrameTopics, type DecodedFrame } from "./topic.js";

/** One for the process: a plugin publishes the same schemas job after job, and each costs an encode to strip (topic.ts). */
const FRAME_TOPICS = new FrameTopics();
import { checkIpcStream, IpcCheckError } from "./ipc-check.js";
import { JOB_DIR_PREFIX, JobDir, type JobSocketName, type JobTicket, jobBegins } from "./job-dir.js";
import { openJobScope, type JobScope } from "./job-scope.js";
import { tearDownInBackground } from "./job-teardown.js";
import { effectiveLimits, GUEST_LIMITS_ENV, isLimitKey, limitExceeded, limitsEnv } from "./limits.js";
import { sandboxed, type GuestCommand } from "./sandbox.js";
import { unreachableFor, type SlotUser } from "./slot-user.js";
import type { GuestResult, GuestRunOptions } from "./types.js";
import type { ExitInfo, WarmChild, WarmLaunch } from "./warm-pool.js";
import { ensureShimBytecode, shimBytecodeMounts } from "./shim-bytecode.js";
import { envPathsForSlotUser, guestEnv, shimPath, warmKey } from "./warm-key.js";

export { TOPIC_METADATA_KEY, DEFAULT_TOPIC } from "./topic.js";
export { BASE_ALLOWED_ENV, shimPath } from "./warm-key.js";
const KILL_GRACE_MS = 2000;
const STDERR_TAIL_LINES = 30;
/**
 * Guest stderr lines logged per job; later ones are counted, not logged. The log is the only
 * place they go, and an unbounded flood (1 GB of prints) would grow the logger's buffers.
 */
export const STDERR_LOG_LINES = 10_000;
/** Guest metrics kept per job (sideband frame and stdout line together); keys at most this long. */
export const MAX_GUEST_METRICS = 256;
const MAX_METRIC_KEY_CHARS = 200;
const MAX_LINE_CHARS = 64 * 1024;
/** How long bytes may still arrive after end-of-stream once the guest has exited. */
const TRAILING_DRAIN_MS = 100;
/** Largest plugin source a job may carry (it is written to a file, read once by the guest). */
export const MAX_PLUGIN_SOURCE_BYTES = 64 * 1024 * 1024;
const SOURCE_FILE = "plugin-source.py";

export async function runGuest(options: GuestRunOptions): Promise<GuestResult> {
  const { job } = options;
  if (job.signal.aborted) throw abortError(job.signal);
  // From here until its processes are gone, no directory is opened ahead for another job (job-dir.ts).
  const ticket = jobBegins();
  const run = new GuestRun(options, ticket);
  try {
    sweptStale ??= sweepStaleSocketDirs();
    await sweptStale;
    return await run.execute();
  } finally {
    try {
      await run.cleanup();
    } finally {
      ticket.end();
    }
  }
}
let warnedUnreachable = false;
/** Per slot user + env build + job directories' parent: why the user cannot reach them (null: it can); see #envUnreachable. */
const envReachability = new Map<string, { problem: string | null; until: number }>();
const MAX_REACHABILITY_ENTRIES = 256;
const UNREACHABLE_RECHECK_MS = 60_000;
let sweptStale: Promise<void> | undefined;

/** Socket directories of worker processes that died mid-job (SIGKILL skips every finally). */
export async function sweepStaleSocketDirs(): Promise<void> {
  const names = await readdir(tmpdir()).catch(() => [] as string[]);
  for (const name of names) {
    const match = new RegExp(`^${JOB_DIR_PREFIX}(\\d+)-[A-Za-z0-9]{6}$`).exec(name);
    if (!match || Number(match[1]) === process.pid) continue;
    try {
      process.kill(Number(match[1]), 0);
      continue; // its owner is alive
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EPERM") continue;
    }
    await rm(join(tmpdir(), name), { recursive: true, force: true }).catch(() => undefined);
  }
}

function abortError(signal: AbortSignal): CasparianError {
  const reason: unknown = signal.reason;
  if (reason instanceof CasparianError) return reason;
  return Errors.JOB_ABORTED([typeof reason === "string" ? reason : "the worker"]);
}

/** First lines of a long text, for receipts; the full text goes to the log. */
function firstLines(text: string, lines = 12, maxChars = 2000): string {
  const kept = text.trim().split("\n").slice(0, lines).join("\n");
  return kept.length > maxChars ? `${kept.slice(0, maxChars)}…` : kept;
}

/** Split a byte stream into lines, capping line length so a newline-free flood stays bounded. */
function eachLine(stream: Readable | null | undefined, onLine: (line: string) => void): Promise<void> {
  if (!stream) return Promise.resolve();
  return new Promise((resolve) => {
    let partial = "";
    stream.setEncoding("utf8");
    stream.on("data", (text: string) => {
      partial += text;
      let newline: number;
      while ((newline = partial.indexOf("\n")) >= 0) {
        onLine(partial.slice(0, newline).replace(/\r$/, ""));
        partial = partial.slice(newline + 1);
      }
      if (partial.length > MAX_LINE_CHARS) {
        onLine(`${partial.slice(0, MAX_LINE_CHARS)}…`);
        partial = "";
      }
    });
    const finish = () => {
      if (partial) onLine(partial);
      partial = "";
      resolve();
    };
    stream.once("end", finish);
    stream.once("close", finish);
    stream.once("error", finish);
  });
}

/** A resettable timer that fails the run when it fires. */
class Watchdog {
  #timer: NodeJS.Timeout | undefined;
  constructor(
    private readonly ms: number,
    private readonly onFire: () => void,
  ) {}
  arm(): void {
    if (this.#timer) this.#timer.refresh();
    else this.#timer = setTimeout(this.onFire, this.ms);
  }
  disarm(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

class GuestRun {
  readonly #options: GuestRunOptions;
  readonly #ticket: JobTicket;
  /** The job's directory and its sockets; undefined until the job has one. */
  #dir: JobDir | undefined;
  readonly #log: Logger;
  readonly #context: { jobId: bigint; plugin: string };
  readonly #stderrTail: string[] = [];
  readonly #stdoutLines: string[] = [];
  readonly #guestMetrics: Record<string, number> = {};
  #stderrLogged = 0;
  #stderrDropped = 0;
  #metricsDropped = 0;
  #droppedReported = false;
  #socket: Socket | undefined;
  /** The slot user this guest runs as (undefined: the worker's own uid). */
  #user: SlotUser | undefined;
  #child: ChildProcess | undefined;
  /** The guest's pid, which is also its process group and session. */
  #pid: number | undefined;
  /** Every process of the job: the guest and what it starts. */
  #scope: JobScope | undefined;
  /** Settles once the processes the guest left behind at its exit are killed. */
  #leftoversKilled: Promise<void> = Promise.resolve();
  readonly #limits: ReturnType<typeof effectiveLimits>;
  /** The accepted stdout/stderr sockets of a warm child. */
  readonly #outputSockets: Socket[] = [];
  #warmChild: WarmChild | undefined;
  /** Set when cleanup begins: a warm child forked after that is killed at once. */
  #closing = false;
  #exit: Promise<ExitInfo> | undefined;
  #exited: ExitInfo | undefined;
  #outputDone: Promise<unknown> = Promise.resolve();
  #timers: Watchdog[] = [];
  #onAbort: (() => void) | undefined;
  /** The first fatal condition (abort, job timeout, connect/idle timeout), once there is one. */
  #failure: CasparianError | undefined;
  /** Rejecters of the waits currently in progress; see #race. */
  readonly #waiting = new Set<(err: CasparianError) => void>();

  constructor(options: GuestRunOptions, ticket: JobTicket) {
    this.#options = options;
    this.#ticket = ticket;
    this.#log = options.job.logger.child({ component: "guest" });
    this.#context = { jobId: options.job.jobId, plugin: options.job.command.pluginName };
    this.#limits = effectiveLimits(options.limits);
  }

  #fail(err: CasparianError): void {
    if (this.#failure) return;
    this.#failure = err;
    for (const reject of this.#waiting) reject(err);
    this.#waiting.clear();
  }

  /**
   * `work`, or the run's failure if that comes first. Not Promise.race against one
   * long-lived promise: every race would leave a reaction on it that keeps its result
   * (here: every socket chunk) alive until the job ends.
   */
  #race<T>(work: Promise<T>): Promise<T> {
    if (this.#failure) {
      work.catch(() => undefined);
      return Promise.reject(this.#failure);
    }
    return new Promise<T>((resolve, reject) => {
      this.#waiting.add(reject);
      work.then(
        (value) => {
          this.#waiting.delete(reject);
          resolve(value);
        },
        (err: unknown) => {
          this.#waiting.delete(reject);
          reject(err);
        },
      );
    });
  }

  #timeout(which: string, ms: number): Watchdog {
    const dog = new Watchdog(ms, () => this.#fail(Errors.GUEST_TIMEOUT([which, ms], { context: this.#context })));
    this.#timers.push(dog);
    return dog;
  }

  async execute(): Promise<GuestResult> {
    const { job, timeouts, onBatch } = this.#options;
    const started = performance.now();

    this.#onAbort = () => this.#fail(abortError(job.signal));
    // runGuest awaited (stale-socket sweep, mkdtemp) since it last looked: an ABORT that came
    // meanwhile has already fired, and a listener added now would never hear it.
    if (job.signal.aborted) this.#onAbort();
    else job.signal.addEventListener("abort", this.#onAbort, { once: true });
    this.#timeout("job", timeouts.jobMs).arm();

    const source = job.command.sourceCode ?? "";
    const sourceBytes = Buffer.byteLength(source, "utf8");
    if (sourceBytes > MAX_PLUGIN_SOURCE_BYTES) throw Errors.PLUGIN_SOURCE_TOO_LARGE([sourceBytes, MAX_PLUGIN_SOURCE_BYTES], { context: this.#context });
    this.#user = await this.#slotUser();
    if (this.#failure) throw this.#failure; // aborted already: no guest to start
    const pool = this.#options.sandbox ? undefined : this.#options.warm;
    // A warm child brings its job's scope and directory (its parent forked it ahead, and it was moved in meanwhile).
    if (!(pool && (await this.#race(this.#fork(source))))) {
      this.#dir = await this.#openDir(["bridge.sock"]);
      if (this.#failure) throw this.#failure;
      this.#scope = await openJobScope({ useCgroup: this.#options.cgroup, onFallback: reportNoCgroup(this.#log), log: this.#log });
      if (this.#failure) throw this.#failure;
      await this.#ticket.starting();
      await this.#spawn(source);
    }
    const connection = this.#dir!.connection("bridge.sock");

    const connectDog = this.#timeout("connect", timeouts.connectMs);
    connectDog.arm();
    // A quick guest can connect, send everything and exit before we see the connection:
    // its connection still waits in the listen backlog, so allow a moment for it.
    const exitedEarly = this.#exit!.then(async (exit) => {
      await delay(250);
      throw this.#guestFailed(`guest exited (${describeExit(exit)}) before connecting to the bridge socket`);
    });
    exitedEarly.catch(() => undefined);
    const socket = await this.#race(Promise.race([connection, exitedEarly]));
    const startupMs = Math.round(performance.now() - started);
    connectDog.disarm();
    this.#socket = socket;

    // One pool per run: what it keeps for reuse goes with the job.
    const frames = this.#options.recycleFrames === true ? new FramePool() : undefined;
    const decoder = new FrameDecoder(this.#options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES, frames && ((length) => frames.take(length)));
    const idle = this.#timeout("idle", timeouts.idleMs);
    const topics = FRAME_TOPICS;
    const indexByTopic = new Map<string, number>();
    const rowsByTopic = new Map<string, number>();
    let rows = 0;
    let batches = 0;
    let ipcBytes = 0;
    let guestError: string | undefined;

    const handle = async (frame: Frame): Promise<void> => {
      switch (frame.kind) {
        case "data": {
          const lease = frames && new FrameLease(frame.bytes.buffer as ArrayBuffer, (buffer) => frames.give(buffer));
          let decoded: DecodedFrame;
          try {
            decoded = this.#decodeData(topics, frame.bytes, batches);
          } catch (err) {
            lease?.release();
            throw err;
          }
          const index = indexByTopic.get(decoded.topic) ?? 0;
          indexByTopic.set(decoded.topic, index + 1);
          const batch: Batch = decoded.toBatch(index, lease);
          rows += batch.numRows;
          batches += 1;
          ipcBytes += frame.bytes.byteLength;
          rowsByTopic.set(batch.topic, (rowsByTopic.get(batch.topic) ?? 0) + batch.numRows);
          const consumed = onBatch(batch);
          // Let go when the taps are done with it, not when the run fails: a sink may still be writing it then.
          if (lease) consumed.then(lease.release.bind(lease), lease.release.bind(lease));
          await this.#race(consumed);
          return;
        }
        case "error":
          guestError = frame.message;
          this.#log.error({ guest_error: frame.message }, "plugin failed");
          return;
        case "log":
          this.#log.info({ level_code: frame.level }, frame.message);
          return;
        case "metrics":
          this.#mergeMetrics(frame.json);
          return;
        case "output-start":
        case "output-end":
        case "end":
          return;
      }
    };

    const chunks = socket[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    try {
      for (;;) {
        idle.arm();
        const next = await this.#race(chunks.next());
        idle.disarm();
        if (next.done) break;
        // One frame at a time: the next one's buffer is taken after this one's batch was handled.
        const pending = decoder.frames(next.value);
        for (;;) {
          let step: IteratorResult<Frame, void>;
          try {
            step = pending.next();
          } catch (err) {
            throw this.#withStderr(err);
          }
          if (step.done) break;
          await handle(step.value);
        }
        if (decoder.ended) break;
      }
      if (decoder.ended) await this.#refuseTrailingBytes(chunks, decoder);
    } catch (err) {
      if (this.#failure || err instanceof CasparianError || !(err instanceof Error) || (err as NodeJS.ErrnoException).syscall === undefined) throw err;
      // A socket error (ECONNRESET: the guest died mid-write) is a broken stream, not a worker bug.
      throw this.#guestFailed(`bridge socket error: ${err.message}`);
    } finally {
      idle.disarm();
    }

    const exit = await this.#race(this.#exit!);
    // The main process is done, and so is the job: what it left running was killed at its exit
    // and held its stdout/stderr at most until then. One that escaped the job (no cgroup, see
    // job-scope.ts) could keep them open forever: wait briefly, then move on.
    await this.#race(this.#leftoversKilled);
    await this.#race(Promise.race([this.#outputDone, delay(1000)]));
    const limit = this.#limitHit(exit, guestError);
    if (limit) throw limit;
    if (guestError !== undefined) throw this.#guestFailed(errorText(guestError), guestError);
    if (!decoder.ended) {
      const where = decoder.midFrame ? "in the middle of a frame" : "without end-of-stream";
      throw this.#guestFailed(`guest closed the stream ${where} (${describeExit(exit)})`);
    }
    if (exit.code !== 0) throw this.#guestFailed(`guest exited (${describeExit(exit)}) after end-of-stream`);
    this.#parseStdoutMetrics();
    this.#reportDropped();

    const warm = this.#warmChild?.warm ?? false;
    const parentRssKb = this.#warmChild?.parentRssKb ?? 0;
    return {
      rows,
      batches,
      ipcBytes,
      startupMs,
      warm,
      parentRssKb,
      durationMs: Math.round(performance.now() - started),
      rowsByTopic,
      frameBuffers: frames === undefined ? batches : frames.stats.allocated,
      guestMetrics: { ...this.#guestMetrics },
    };
  }

  /**
   * Check the frame's IPC structure before apache-arrow sees it (ipc-check.ts): a crafted
   * frame must fail its job, never loop or exhaust memory in the worker. The decoded row
   * count must be what the stream claims: garbage is never accepted as an empty table.
   */
  #decodeData(topics: FrameTopics, bytes: Uint8Array, index: number): DecodedFrame {
    const bad = (why: string, cause?: unknown) =>
      this.#withStderr(
        Errors.BRIDGE_BAD_FRAME([this.#context.jobId, index, bytes.byteLength, why], { context: { ...this.#context }, cause }),
      ) as CasparianError;
    let claimed: number;
    try {
      claimed = checkIpcStream(bytes).rows;
    } catch (err) {
      if (err instanceof IpcCheckError) throw bad(err.message);
      throw err;
    }
    let decoded: DecodedFrame;
    try {
      decoded = topics.decode(bytes);
    } catch (err) {
      throw bad(err instanceof Error ? err.message : String(err), err);
    }
    if (decoded.numRows !== claimed) throw bad(`it claims ${claimed} rows but decodes to ${decoded.numRows}`);
    return decoded;
  }

  /**
   * After end-of-stream the guest has nothing more to say: bytes that still arrive (before
   * it exits and the socket closes) mean a broken or hostile guest, and are refused rather
   * than silently dropped. Stops waiting shortly after the guest's exit, so a descendant
   * holding the socket open cannot hold the job.
   */
  async #refuseTrailingBytes(chunks: AsyncIterator<Buffer>, decoder: FrameDecoder): Promise<void> {
    const exitedAndDrained = this.#exit!.then(() => delay(TRAILING_DRAIN_MS)).then(() => ({ done: true, value: undefined }) as const);
    for (;;) {
      const next = await this.#race(Promise.race([chunks.next(), exitedAndDrained]));
      if (next.done) return;
      try {
        decoder.push(next.value);
      } catch (err) {
        throw this.#withStderr(err);
      }
    }
  }

  /** A directory of this job's own with `sockets` listening; closed with the job, also when the job ended meanwhile. */
  async #openDir(sockets: readonly JobSocketName[]): Promise<JobDir> {
    const dir = await JobDir.open({ user: this.#user, sockets, onServerError: (err) => this.#log.warn({ err }, "bridge server error") });
    if (this.#closing) {
      await dir.close();
      throw this.#failure ?? Errors.JOB_ABORTED(["the worker"]);
    }
    return dir;
  }

  /**
   * The slot user, when the job can run as it: the interpreter, the venv, the guest code and
   * the input must be reachable by that uid. When they are not, a job that asked for
   * isolation fails; root's default runs it as the worker, with a warning (once per cause).
   */
  async #slotUser(): Promise<SlotUser | undefined> {
    const user = this.#options.slotUser;
    if (!user) return undefined;
    const problem = (await this.#envUnreachable(user)) ?? (await unreachableFor(user, [{ path: this.#options.job.command.filePath, need: "r" }]));
    if (problem === null) return user;
    if (user.required) throw Errors.SLOT_USER_UNREACHABLE([user.uid, problem], { context: { ...this.#context } });
    // Once per worker process: a busy worker would say it for every job.
    const level = warnedUnreachable ? "debug" : "warn";
    warnedUnreachable = true;
    this.#log[level](
      { uid: user.uid, problem },
      "the guest runs as the worker's user, not its slot user: %s (set bridge.user or bridge.users to make this an error)",
      problem,
    );
    return undefined;
  }

  /**
   * Why the slot user cannot reach what every job of this env shares (interpreter, venv, shim,
   * the job directories' parent), or null. Looked at once per (user, env build, parent) and
   * remembered either way: the answer is the same for every job of the env, and looking again
   * is about 30 stats (thread-pool round trips) per job. A "no" is looked at again after
   * UNREACHABLE_RECHECK_MS, so a fixed permission takes effect without a restart.
   */
  async #envUnreachable(user: SlotUser): Promise<string | null> {
    const { interpreterPath, envIdentity } = this.#options;
    const jobsParent = tmpdir();
    const key = `${user.uid}:${user.gid}\0${interpreterPath}\0${envIdentity ?? ""}\0${jobsParent}`;
    const known = envReachability.get(key);
    if (known && (known.problem === null || known.until > Date.now())) return known.problem;
    const problem = await unreachableFor(user, envPathsForSlotUser(interpreterPath, jobsParent));
    if (envReachability.size >= MAX_REACHABILITY_ENTRIES) envReachability.clear();
    envReachability.set(key, { problem, until: Date.now() + UNREACHABLE_RECHECK_MS });
    return problem;
  }

  /** The variables of this job's guest: §3 (with the source as a file) plus the plugin's name, its scope and limits. */
  #jobEnv(dir: JobDir): Record<string, string> {
    const { job } = this.#options;
    return {
      ...this.#scope?.env,
      ...limitsEnv(this.#limits),
      // A slot user cannot use the worker's home or temp: both are its job directory, which goes with the job.
      ...(this.#user ? { HOME: dir.path, TMPDIR: dir.path } : {}),
      BRIDGE_SOCKET: dir.socketPath("bridge.sock"),
      BRIDGE_FILE_PATH: job.command.filePath,
      BRIDGE_JOB_ID: job.jobId.toString(),
      BRIDGE_FILE_VERSION_ID: BigInt(job.command.fileVersionId).toString(),
      BRIDGE_PLUGIN_NAME: job.command.pluginName,
      // The plugin's config (a JSON object), when the Sentinel sent one.
      ...(job.command.pluginConfig === undefined ? {} : { BRIDGE_PLUGIN_CONFIG: job.command.pluginConfig }),
    };
  }

  /**
   * Fork the job from a warm parent. False when the pool declines (the plugin opted out,
   * the parent could not start, ...): the job then runs in a fresh interpreter.
   */
  async #fork(source: string): Promise<boolean> {
    const pool = this.#options.warm!;
    const spec = warmKey({
      interpreterPath: this.#options.interpreterPath,
      envIdentity: this.#options.envIdentity,
      cgroup: this.#options.cgroup,
      source,
      pluginName: this.#options.job.command.pluginName,
      allowEnv: this.#options.allowEnv,
      user: this.#user,
    });
    const launching = pool
      .launch(
        spec,
        {
          limits: limitsEnv(this.#limits)[GUEST_LIMITS_ENV]!,
          env: (dir) => this.#jobEnv(dir),
          ticket: this.#ticket,
          onServerError: (err) => this.#log.warn({ err }, "bridge server error"),
        },
        () => this.#closing || this.#failure !== undefined,
      )
      .catch((err: unknown): WarmLaunch => ({ kind: "cold", reason: `warm pool failed: ${(err as Error).message}` }));
    // Abort or a timeout may end this run while the parent is still starting: a child
    // forked after that belongs to nobody, so it goes at once.
    void launching.then((launch: WarmLaunch) => {
      if (launch.kind === "forked" && this.#closing && this.#pid !== launch.child.pid) {
        killGroup(launch.child.pid, "SIGKILL");
        void launch.child.scope.close().catch(() => undefined);
        void launch.child.dir.close().catch(() => undefined);
      }
    });
    const launch = await launching;
    if (launch.kind === "cold") {
      this.#log.debug({ reason: launch.reason }, "running the plugin in a fresh process");
      return false;
    }
    const child = launch.child;
    this.#warmChild = child;
    this.#dir = child.dir;
    this.#scope = child.scope;
    this.#pid = child.pid;
    this.#exit = child.exit.then((exit) => (this.#exited = exit));
    await this.#adopt(child.pid, child.adopted);
    const [stdout, stderr] = (["stdout.sock", "stderr.sock"] as const).map((name) =>
      // A child that dies before connecting its output has none to read.
      Promise.race([
        child.dir.connection(name).then((socket) => {
          this.#outputSockets.push(socket);
          return socket;
        }),
        this.#exit!.then(() => delay(250)).then(() => null),
      ]),
    );
    this.#outputDone = Promise.all([stderr!.then((socket) => this.#readStderr(socket)), stdout!.then((socket) => this.#readStdout(socket))]);
    this.#log.debug({ guest_pid: child.pid, warm: child.warm, ahead: child.ahead }, "guest forked from a warm parent");
    return true;
  }

  #readStderr(stream: Readable | null | undefined): Promise<void> {
    return eachLine(stream, (line) => {
      this.#stderrTail.push(line);
      if (this.#stderrTail.length > STDERR_TAIL_LINES) this.#stderrTail.shift();
      if (this.#stderrLogged < STDERR_LOG_LINES) {
        this.#stderrLogged++;
        this.#log.info(line);
      } else this.#stderrDropped++;
    });
  }

  #readStdout(stream: Readable | null | undefined): Promise<void> {
    return eachLine(stream, (line) => {
      this.#stdoutLines.push(line);
      if (this.#stdoutLines.length > 5) this.#stdoutLines.shift();
    });
  }

  async #spawn(source: string): Promise<void> {
    const { interpreterPath } = this.#options;
    const dir = this.#dir!;
    const sourcePath = join(dir.path, SOURCE_FILE);
    await writeFile(sourcePath, source, { mode: 0o600 });
    if (this.#user) await chown(sourcePath, this.#user.uid, this.#user.gid);
    if (this.#failure) throw this.#failure;
    const env = { ...guestEnv(this.#options.allowEnv), ...this.#jobEnv(dir), BRIDGE_PLUGIN_FILE: sourcePath };
    await ensureShimBytecode(interpreterPath);
    let command: GuestCommand = { file: interpreterPath, args: [shimPath()] };
    if (this.#options.sandbox) {
      const prefix = dirname(dirname(await realpath(interpreterPath)));
      const readOnly = [dirname(dirname(interpreterPath)), prefix, shimPath(), this.#options.job.command.filePath, ...shimBytecodeMounts()];
      command = await sandboxed(this.#options.sandbox, command, { jobDir: dir.path, readOnly });
    }

    let child: ChildProcess;
    try {
      child = spawn(command.file, command.args, {
        env, // the whole environment: nothing of the worker's is inherited
        ...(this.#user ? { uid: this.#user.uid, gid: this.#user.gid } : {}),
        cwd: dir.path,
        detached: true, // own process group: ABORT kills the plugin's children too
        stdio: ["ignore", "pipe", "pipe"],
      });
    } catch (err) {
      // Node throws at once for what the kernel refuses before exec (EPERM switching to the slot user).
      throw this.#guestFailed(`the guest could not be started (${command.file}): ${(err as Error).message}`);
    }
    this.#child = child;
    this.#pid = child.pid;
    this.#exit = new Promise<ExitInfo>((resolve) => {
      // The process's own exit, not "close": that waits for stdout and stderr to close,
      // which a child of the plugin holding them would put off for as long as it lives.
      child.once("exit", (code, signal) => resolve({ code, signal }));
      // A guest that could not start (ENOENT, EACCES) never exits: the error says why.
      child.once("error", (err) => resolve({ code: null, signal: err.message }));
    }).then((exit) => (this.#exited = exit));
    if (child.pid !== undefined) await this.#adopt(child.pid);
    this.#outputDone = Promise.all([this.#readStderr(child.stderr), this.#readStdout(child.stdout)]);
    this.#log.debug({ guest_pid: child.pid, interpreter: interpreterPath }, "guest started");
  }

  /**
   * Put the guest (just started, not yet running plugin code: it waits for this) into the job's
   * scope, and have whatever it leaves running killed the moment it exits.
   */
  async #adopt(pid: number, moving?: Promise<void>): Promise<void> {
    const scope = this.#scope!;
    this.#leftoversKilled = this.#exit!.then(() => scope.killAll()).catch((err: unknown) =>
      this.#log.warn({ err }, "killing the job's leftover processes failed"),
    );
    try {
      await (moving ?? scope.adopt(pid));
    } catch (err) {
      // Gone before it could be moved: it exited before the shim ran (the shim runs no plugin
      // code before the move), and its exit says why.
      if ((err as NodeJS.ErrnoException).code === "ESRCH") return;
      killGroup(pid, "SIGKILL");
      throw this.#guestFailed(`could not move the guest into its cgroup: ${(err as Error).message}; set bridge.cgroup: false to track jobs by session instead`);
    }
  }

  /** CSP_GUEST_LIMIT when the guest ran into one of its resource limits (it says which, or its death does). */
  #limitHit(exit: ExitInfo, guestError: string | undefined): CasparianError | undefined {
    const reported = guestError === undefined ? undefined : parseGuestError(guestError);
    const key = reported?.limit;
    if (isLimitKey(key)) return limitExceeded(key, this.#limits, firstLines(reported?.error ?? "", 1), this.#context);
    if (exit.signal === "SIGXCPU" && this.#limits.cpuSeconds !== false)
      return limitExceeded("cpuSeconds", this.#limits, "the guest was stopped by SIGXCPU", this.#context);
    if (exit.signal === "SIGXFSZ" && this.#limits.fileSizeMb !== false)
      return limitExceeded("fileSizeMb", this.#limits, "the guest was stopped by SIGXFSZ", this.#context);
    return undefined;
  }

  /** GUEST_FAILED whose message ends with the guest's last stderr lines (when it said anything). */
  #guestFailed(summary: string, fullError?: string): CasparianError {
    const tail =
      fullError === undefined
        ? this.#stderrTail
            .filter((l) => l.trim())
            .slice(-8)
            .join("\n")
        : "";
    const message = tail ? `${summary}\nlast guest stderr:\n${tail}` : summary;
    return Errors.GUEST_FAILED([message], { context: { ...this.#context } });
  }

  #withStderr(err: unknown): unknown {
    if (!(err instanceof CasparianError)) return err;
    const tail = this.#stderrTail
      .filter((l) => l.trim())
      .slice(-5)
      .join("\n");
    if (tail) err.message += `\nlast guest stderr:\n${tail}`;
    Object.assign(err.context, this.#context);
    return err;
  }

  #mergeMetrics(json: string): void {
    try {
      const parsed = JSON.parse(json) as unknown;
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return;
      for (const [key, value] of Object.entries(parsed)) {
        if (!Number.isSafeInteger(value)) continue;
        if (key.length > MAX_METRIC_KEY_CHARS || (!(key in this.#guestMetrics) && Object.keys(this.#guestMetrics).length >= MAX_GUEST_METRICS)) {
          this.#metricsDropped++;
          continue;
        }
        this.#guestMetrics[key] = value as number;
      }
    } catch {
      this.#log.debug({ json: json.slice(0, 200) }, "guest metrics are not JSON");
    }
  }

  /** What the caps above left out, said once per job (and in the receipt's guest metrics). */
  #reportDropped(): void {
    if (this.#droppedReported) return;
    this.#droppedReported = true;
    if (this.#stderrDropped > 0) {
      this.#log.warn({ dropped_lines: this.#stderrDropped, logged_lines: this.#stderrLogged }, "guest stderr beyond the per-job limit was not logged");
      this.#guestMetrics.stderr_lines_dropped = this.#stderrDropped;
    }
    if (this.#metricsDropped > 0) {
      this.#log.warn({ dropped: this.#metricsDropped, kept: MAX_GUEST_METRICS }, "guest metrics beyond the per-job limit were dropped");
      this.#guestMetrics.metrics_dropped = this.#metricsDropped;
    }
  }

  /** The guest prints one JSON metrics line on stdout at exit; integers only survive. */
  #parseStdoutMetrics(): void {
    for (let i = this.#stdoutLines.length - 1; i >= 0; i--) {
      const line = this.#stdoutLines[i]!.trim();
      if (line.startsWith("{")) {
        this.#mergeMetrics(line);
        return;
      }
    }
  }

  /**
   * End the job: its processes are killed and gone when this resolves, and nothing can connect
   * to its sockets any more. Its cgroup and directory are removed after that, in the background
   * (job-teardown.ts), off the path to the job's answer.
   */
  async cleanup(): Promise<void> {
    this.#closing = true;
    this.#reportDropped();
    for (const dog of this.#timers) dog.disarm();
    if (this.#onAbort) this.#options.job.signal.removeEventListener("abort", this.#onAbort);
    this.#socket?.destroy();
    await this.#killGroup();
    const scope = this.#scope;
    const dir = this.#dir;
    dir?.stopListening();
    await tearDownInBackground(
      [
        ...(scope?.removes === undefined ? [] : [{ what: scope.removes, remove: () => scope.remove() }]),
        ...(dir === undefined ? [] : [{ what: `directory ${dir.path}`, remove: () => dir.close(), private: true }]),
      ],
      this.#log,
    );
  }

  /** TERM the job's processes, KILL them 2 s later if the guest is still there. */
  async #killGroup(): Promise<void> {
    const pid = this.#pid;
    const scope = this.#scope;
    if (pid === undefined || !this.#exit) {
      await scope?.killAll();
      return;
    }
    if (!this.#exited) {
      scope?.terminate();
      const timer = new Promise<void>((resolve) => setTimeout(resolve, KILL_GRACE_MS).unref());
      await Promise.race([this.#exit, timer]);
      if (!this.#exited) this.#log.warn({ pid }, "guest ignored SIGTERM; sending SIGKILL");
    }
    // The leader may be gone while its children linger: they go too.
    killGroup(pid, "SIGKILL");
    await scope?.killAll();
    await Promise.race([this.#exit, new Promise<void>((resolve) => setTimeout(resolve, KILL_GRACE_MS).unref())]);
    this.#child?.stdout?.destroy();
    this.#child?.stderr?.destroy();
    for (const socket of this.#outputSockets) socket.destroy();
  }
}

/** Says once per process (job-scope.ts) why jobs have no cgroup. */
function reportNoCgroup(log: Logger): (reason: string) => void {
  return (reason) => log.info({ reason }, "no cgroup for jobs: a job's processes are its guest's session, process group and marked environment");
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // ESRCH: the group is already gone.
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

function describeExit(exit: ExitInfo): string {
  if (exit.signal) return `signal ${exit.signal}`;
  return `exit code ${exit.code}`;
}

/**
 * The receipt text for the guest's error frame: "Type: message" then the first
 * traceback lines. Accepts the later upstream guest's JSON payload ({"error": ...}) too.
 */
function errorText(message: string): string {
  const parsed = parseGuestError(message);
  return firstLines(parsed?.error ?? message.trim());
}

/** A JSON error frame: {"error": text} (the later upstream guest), plus "limit" (ours, on a resource limit). */
function parseGuestError(message: string): { error?: string; limit?: unknown } | undefined {
  const trimmed = message.trim();
  if (!trimmed.startsWith("{")) return undefined;
  try {
    const parsed = JSON.parse(trimmed) as { error?: unknown; limit?: unknown };
    return typeof parsed.error === "string" ? { error: parsed.error, limit: parsed.limit } : undefined;
  } catch {
    return undefined; // not JSON after all: plain text
  }
}
