/**
 * The embedded Sentinel's brain: starts N local workers, provisions the plugin's
 * environment on each (PREPARE_ENV before the first DISPATCH), hands out one job
 * per input file, and sees every input through to exactly one outcome.
 *
 *  - One job at a time per worker, as the Python Sentinel does.
 *  - A worker process that dies (exit noticed on the child process, or silence
 *    past the liveness timeout) loses its job to the queue, up to MAX_ATTEMPTS
 *    runs per input; a replacement worker starts, within a respawn budget.
 *  - Each job attempt gets a fresh job id; only the attempt whose CONCLUDE arrives
 *    has its files promoted into --output, so retries never duplicate rows.
 *  - When the plugin fails the same way on the first inputs and never succeeds,
 *    the rest are not run: that error is the plugin's, not the inputs'.
 *  - interrupt() (Ctrl-C): ABORT to every busy worker, a short wait for their
 *    answers, then everything stops and nothing more is promoted.
 */
import { rmSync } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { performance } from "node:perf_hooks";
import type { WriteStream } from "node:fs";
import { join } from "node:path";
import { type CasparianError, Errors, errorMessage } from "../kernel/errors.js";
import type { Logger } from "../kernel/logger.js";
import { Opcode, type JobReceipt, type Message, type PayloadByOpcode, type SinkConfig } from "../protocol/messages.js";
import type { NamedInput } from "./inputs.js";
import type { PublishedArtifact } from "./promote.js";
import { sha256Hex, type PluginEnvironment } from "./plugin-env.js";
import type { PluginInfo } from "./plugin.js";
import { EmbeddedSentinel, type Peer } from "./sentinel.js";
import { describeExit, WorkerProcess, type WorkerExit } from "./worker-process.js";

/** Runs per input: the first plus two retries after a worker died under it. */
export const MAX_ATTEMPTS = 3;
/** Identical failures on this many first inputs (and no success) stop the run. */
const SYSTEMIC_FAILURES = 3;

/** skipped: a beforeDispatch tap of the worker declined the input (not a failure). */
export type JobState = "queued" | "running" | "succeeded" | "failed" | "skipped" | "not-run";

export interface JobRecord {
  readonly input: NamedInput;
  state: JobState;
  attempts: number;
  /** Id of the current (or last) attempt. */
  jobId: bigint | null;
  sinks: SinkConfig[];
  error: string | null;
  receipt: JobReceipt | null;
  artifacts: PublishedArtifact[];
  /** Milliseconds from DISPATCH sent to its answer received, for the last attempt (Sentinel's view). */
  roundTripMs: number | null;
  /** performance.now() at the last DISPATCH. */
  dispatchedAt: number | null;
  /** The worker that ran the last attempt. */
  workerId: string | null;
}

export interface SchedulerOptions {
  inputs: readonly NamedInput[];
  plugin: PluginInfo;
  env: PluginEnvironment;
  sinksFor(input: NamedInput): SinkConfig[];
  /**
   * Publishes a successful job's outputs (moves its files out of `workerRoot`, or takes
   * them where they are when it is null) and records them; its rejection fails the input.
   */
  publish(job: JobRecord, receipt: JobReceipt, workerRoot: string | null): Promise<PublishedArtifact[]>;
  /** Run every input even when the first ones all fail the same way. */
  keepGoing?: boolean;
  /** The plugin's config, a JSON object as text (--plugin-config). */
  pluginConfig?: string;
  workers: number;
  outputRoot: string;
  /** Private roots of the workers live below this directory. */
  stagingRoot: string;
  /**
   * Workers write straight into outputRoot instead of private roots: for sinks whose
   * output is not one file per job (a database), which cannot be promoted file by
   * file; their own staging and commit must then keep partial data invisible.
   */
  sharedOutput?: boolean;
  configFile?: string;
  logLevel: string;
  logger: Logger;
  workerLog?: WriteStream;
  echoWorkerLogs?: boolean;
  /** Seconds between worker heartbeats. */
  heartbeatSeconds?: number;
  /** A worker silent for this long is considered hung and is killed. */
  livenessTimeoutMs?: number;
  /** A worker must IDENTIFY within this long after it starts. */
  startTimeoutMs?: number;
  /** How long interrupt() waits for the answers to ABORT. */
  abortWaitMs?: number;
  events?: SchedulerEvents;
}

export interface SchedulerEvents {
  /** A job reached a final state (succeeded, failed, skipped or not-run). */
  jobFinished?(job: JobRecord): void;
  /** The worker running `job` died; the job goes back to the queue. */
  jobRetried?(job: JobRecord, reason: string): void;
  /** A worker process ended unexpectedly; `job` is what it was running (then jobRetried or jobFinished follows). */
  workerLost?(workerId: string, reason: string, job: JobRecord | null): void;
  envReady?(cached: boolean, interpreterPath: string): void;
  /** A running job's rows and Arrow bytes so far (about once a second while it streams). */
  jobProgress?(job: JobRecord, rows: number, bytes: number): void;
}

export interface RunResult {
  jobs: JobRecord[];
  interrupted: boolean;
  /** Why the run stopped before processing every input (environment, plugin, workers). */
  fatal: CasparianError | null;
}

type WorkerState = "starting" | "waiting-env" | "preparing" | "ready" | "busy" | "stopping" | "dead";

interface WorkerSlot {
  readonly process: WorkerProcess;
  state: WorkerState;
  peer: Peer | null;
  job: JobRecord | null;
  startedAt: number;
  lastSeen: number;
}

export class Scheduler {
  readonly #options: Required<Pick<SchedulerOptions, "heartbeatSeconds" | "livenessTimeoutMs" | "startTimeoutMs" | "abortWaitMs">> & SchedulerOptions;
  readonly #logger: Logger;
  readonly #jobs: JobRecord[];
  readonly #queue: JobRecord[];
  readonly #slots = new Map<string, WorkerSlot>();
  readonly #byPeer = new Map<string, WorkerSlot>();
  readonly #runId = `${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}`;
  #sentinel: EmbeddedSentinel | null = null;
  #envState: "none" | "preparing" | "ready" = "none";
  #nextWorker = 0;
  #respawnBudget: number;
  #nextJobId: bigint;
  #stopping = false;
  #interrupted = false;
  #fatal: CasparianError | null = null;
  #succeededAny = false;
  #firstFailures: string[] = [];
  #pendingPromotions = new Set<Promise<void>>();
  #done!: () => void;
  readonly #finished = new Promise<void>((resolve) => (this.#done = resolve));
  #timer: NodeJS.Timeout | null = null;
  #abortTimer: NodeJS.Timeout | null = null;
  /** bridge.warm.prefaultMb for the workers when the config sets none (see run()). */
  #warmPrefaultDefaultMb: number | undefined;

  constructor(options: SchedulerOptions) {
    this.#options = { heartbeatSeconds: 1, livenessTimeoutMs: 20_000, startTimeoutMs: 60_000, abortWaitMs: 3_000, ...options };
    this.#logger = options.logger;
    this.#jobs = options.inputs.map((input) => ({
      input,
      state: "queued",
      attempts: 0,
      jobId: null,
      sinks: options.sinksFor(input),
      error: null,
      receipt: null,
      artifacts: [],
      roundTripMs: null,
      dispatchedAt: null,
      workerId: null,
    }));
    this.#queue = [...this.#jobs];
    this.#respawnBudget = Math.max(2, options.workers * 2);
    // Ids unique per run and, in practice, across runs (time in the high bits), so
    // lineage columns from two runs never mix; always below 2^63.
    this.#nextJobId = (BigInt(Date.now()) << 20n) + 1n;
  }

  get jobs(): readonly JobRecord[] {
    return this.#jobs;
  }

  async run(): Promise<RunResult> {
    if (this.#jobs.length > 0) {
      this.#sentinel = await EmbeddedSentinel.start(this.#logger);
      this.#sentinel.listen((peer, message) => this.#onMessage(peer, message));
      await mkdir(this.#options.stagingRoot, { recursive: true });
      const count = Math.max(1, Math.min(this.#options.workers, this.#jobs.length));
      // A spare pre-faults its job's pages on a free core (README "Warm guests"). With a worker on
      // every core none is free for long, and the pre-fault takes more CPU from the jobs than it
      // saves them: off then, unless the config sets bridge.warm.prefaultMb.
      const cores = availableParallelism();
      if (count >= cores) {
        this.#warmPrefaultDefaultMb = 0;
        this.#logger.debug({ workers: count, cores }, "a worker on every core: spares do not pre-fault unless bridge.warm.prefaultMb says");
      }
      for (let i = 0; i < count; i++) this.#spawn();
      this.#timeline("workers spawned");
      this.#timer = setInterval(() => this.#checkLiveness(), 500);
      this.#maybeFinish();
      await this.#finished;
    }
    await this.#shutdown();
    return { jobs: this.#jobs, interrupted: this.#interrupted, fatal: this.#fatal };
  }

  /** Ctrl-C: stop dispatching, ABORT running jobs, wait briefly for their answers. */
  interrupt(): void {
    if (this.#interrupted) return;
    this.#interrupted = true;
    this.#stopRun(null);
    const busy = [...this.#slots.values()].filter((s) => s.state === "busy" && s.job !== null);
    for (const slot of busy) void this.#send(slot, Opcode.ABORT, slot.job!.jobId!, null);
    this.#abortTimer = setTimeout(() => this.#done(), this.#options.abortWaitMs);
    void this.#allIdle().then(() => this.#done());
  }

  /** Second Ctrl-C: no more waiting. Kills every worker and removes staging, synchronously. */
  forceStop(): void {
    this.#stopping = true;
    for (const slot of this.#slots.values()) {
      slot.state = "stopping";
      slot.process.kill("SIGKILL");
    }
    rmSync(this.#options.stagingRoot, { recursive: true, force: true });
  }

  // -------------------------------------------------------------------------
  // Workers
  // -------------------------------------------------------------------------

  #spawn(): void {
    const workerId = `run-${this.#runId}-${++this.#nextWorker}`;
    const process = new WorkerProcess({
      workerId,
      endpoint: this.#sentinel!.endpoint,
      outputRoot: this.#options.sharedOutput === true ? this.#options.outputRoot : join(this.#options.stagingRoot, workerId),
      configFile: this.#options.configFile,
      logLevel: this.#options.logLevel,
      heartbeatSeconds: this.#options.heartbeatSeconds,
      warmStart: { envHash: this.#options.env.envHash, pluginFile: this.#options.plugin.path, pluginName: this.#options.plugin.name },
      warmPrefaultDefaultMb: this.#warmPrefaultDefaultMb,
      log: this.#options.workerLog,
      echo: this.#options.echoWorkerLogs,
      onProgress: (jobId, rows, bytes) => {
        const job = this.#slots.get(workerId)?.job;
        if (job !== null && job !== undefined && job.jobId === jobId && job.state === "running") this.#options.events?.jobProgress?.(job, rows, bytes);
      },
    });
    const now = Date.now();
    const slot: WorkerSlot = { process, state: "starting", peer: null, job: null, startedAt: now, lastSeen: now };
    this.#slots.set(workerId, slot);
    this.#logger.debug({ worker_id: workerId, worker_pid: process.pid }, "worker started");
    void process.exited.then((exit) => this.#onExit(slot, exit));
  }

  #onExit(slot: WorkerSlot, exit: WorkerExit): void {
    const wasStopping = slot.state === "stopping" || this.#stopping;
    const job = slot.job;
    const envLeader = slot.state === "preparing";
    slot.state = "dead";
    slot.job = null;
    if (slot.peer !== null) this.#byPeer.delete(slot.peer.key);
    if (this.#options.sharedOutput !== true) void rm(slot.process.outputRoot, { recursive: true, force: true });
    if (wasStopping) {
      if (job !== null && job.state === "running") this.#finishJob(job, "not-run", "interrupted");
      return;
    }

    const reason = `worker ${slot.process.id} ${describeExit(exit)}`;
    const detail = slot.process.lastError();
    this.#logger.debug({ worker_id: slot.process.id, last_error: detail, tail: slot.process.tail() }, "%s", reason);
    this.#options.events?.workerLost?.(slot.process.id, reason, job);
    if (envLeader) {
      // Someone else builds it: a worker already waiting, else the replacement below.
      this.#envState = "none";
      const waiting = [...this.#slots.values()].find((s) => s.state === "waiting-env");
      if (waiting !== undefined) this.#provision(waiting);
    }

    if (job !== null && job.state === "running") {
      if (job.attempts < MAX_ATTEMPTS) {
        job.state = "queued";
        this.#queue.unshift(job);
        this.#options.events?.jobRetried?.(job, reason);
      } else {
        this.#finishJob(job, "failed", `${reason} while running this input, ${job.attempts} times; giving up`);
      }
    }

    if (this.#respawnBudget > 0) {
      this.#respawnBudget--;
      this.#spawn();
    } else if (![...this.#slots.values()].some((s) => s.state !== "dead")) {
      const last = detail ?? slot.process.tail().at(-1);
      this.#stopRun(Errors.RUN_WORKERS_FAILED([`${reason}${last === undefined ? "" : `; its last output: ${last}`}`]));
    }
    this.#pump();
  }

  #checkLiveness(): void {
    const now = Date.now();
    for (const slot of this.#slots.values()) {
      if (slot.state === "dead" || slot.state === "stopping") continue;
      const silentFor = now - slot.lastSeen;
      const limit = slot.state === "starting" ? this.#options.startTimeoutMs : this.#options.livenessTimeoutMs;
      if (silentFor > limit) {
        this.#logger.warn({ worker_id: slot.process.id, silent_ms: silentFor }, "worker stopped answering; killing it");
        slot.process.kill("SIGKILL");
      }
    }
  }

  // -------------------------------------------------------------------------
  // Protocol
  // -------------------------------------------------------------------------

  #onMessage(peer: Peer, message: Message): void {
    if (message.opcode === Opcode.IDENTIFY) {
      const slot = message.payload.worker_id === null ? undefined : this.#slots.get(message.payload.worker_id);
      if (slot === undefined || slot.state === "dead") {
        this.#logger.warn({ worker_id: message.payload.worker_id }, "IDENTIFY from a worker this run did not start; ignored");
        return;
      }
      if (slot.peer !== null) this.#byPeer.delete(slot.peer.key);
      slot.peer = peer;
      slot.lastSeen = Date.now();
      this.#byPeer.set(peer.key, slot);
      // A worker that re-IDENTIFYs (reconnect) has lost nothing but must be provisioned as new.
      if (slot.state === "starting" || slot.state === "ready") {
        slot.state = "waiting-env";
        this.#provision(slot);
      }
      return;
    }

    const slot = this.#byPeer.get(peer.key);
    if (slot === undefined) return;
    slot.lastSeen = Date.now();

    switch (message.opcode) {
      case Opcode.HEARTBEAT:
        return;
      case Opcode.ENV_READY:
        this.#onEnvReady(slot, message.payload.cached, message.payload.interpreter_path);
        return;
      case Opcode.ERR:
        if (message.jobId === 0n) this.#onWorkerError(slot, message.payload.message);
        else this.#onJobAnswer(slot, message.jobId, null, message.payload.message);
        return;
      case Opcode.CONCLUDE:
        this.#onJobAnswer(slot, message.jobId, message.payload, null);
        return;
      default:
        this.#logger.debug({ worker_id: slot.process.id, opcode: message.opcode }, "unexpected message from a worker; ignored");
    }
  }

  /** The first worker builds the environment; the others ask once it is ready (a cache hit). */
  #provision(slot: WorkerSlot): void {
    if (this.#stopping || slot.state !== "waiting-env") return;
    if (this.#envState === "preparing") return;
    if (this.#envState === "none") this.#envState = "preparing";
    slot.state = "preparing";
    const { env } = this.#options;
    void this.#send(slot, Opcode.PREPARE_ENV, 0n, { env_hash: env.envHash, lockfile_content: env.lockfileContent, python_version: env.pythonVersion });
  }

  #onEnvReady(slot: WorkerSlot, cached: boolean, interpreterPath: string): void {
    if (slot.state !== "preparing") return;
    const first = this.#envState !== "ready";
    this.#envState = "ready";
    slot.state = "ready";
    if (first) {
      this.#timeline("environment ready on the first worker");
      this.#options.events?.envReady?.(cached, interpreterPath);
    }
    for (const other of this.#slots.values()) if (other.state === "waiting-env") this.#provision(other);
    this.#pump();
  }

  #onWorkerError(slot: WorkerSlot, message: string): void {
    if (slot.state === "preparing") {
      // Every job needs this environment: nothing can run, say why once.
      this.#stopRun(Errors.RUN_ENV_FAILED([this.#options.plugin.name, message], { context: { plugin: this.#options.plugin.path } }));
      return;
    }
    this.#logger.warn({ worker_id: slot.process.id, error: message }, "worker reported an error");
  }

  #onJobAnswer(slot: WorkerSlot, jobId: bigint, receipt: JobReceipt | null, errMessage: string | null): void {
    const job = slot.job;
    if (job === null || job.jobId !== jobId) {
      this.#logger.debug({ worker_id: slot.process.id, job_id: jobId }, "answer for a job this worker is not running; ignored");
      return;
    }
    slot.job = null;
    if (slot.state === "busy") slot.state = "ready";
    if (this.#answers++ === 0) this.#timeline("first job answered");
    job.receipt = receipt;
    if (job.dispatchedAt !== null) job.roundTripMs = performance.now() - job.dispatchedAt;

    if (this.#fatal !== null) {
      // Aborted because the run is already doomed: not this input's fault.
      this.#finishJob(job, "not-run", "not run: the run stopped early");
    } else if (receipt !== null && receipt.status !== "SUCCESS" && Number(receipt.metrics.rejected_before_dispatch ?? 0) > 0) {
      this.#finishJob(job, "skipped", receipt.error_message ?? "declined by a beforeDispatch tap");
    } else if (receipt === null || receipt.status !== "SUCCESS") {
      this.#finishJob(job, "failed", errMessage ?? receipt?.error_message ?? "job failed without an error message");
    } else if (this.#interrupted) {
      // Ctrl-C means stop: files of jobs that raced the ABORT are not promoted.
      this.#finishJob(job, "not-run", "interrupted");
    } else {
      const promotion = this.#options.publish(job, receipt, this.#options.sharedOutput === true ? null : slot.process.outputRoot).then(
        (artifacts) => {
          job.artifacts = artifacts;
          this.#finishJob(job, "succeeded", null);
        },
        (err: unknown) => this.#finishJob(job, "failed", errorMessage(err)),
      );
      const tracked = promotion.finally(() => {
        this.#pendingPromotions.delete(tracked);
        this.#maybeFinish();
      });
      this.#pendingPromotions.add(tracked);
    }
    this.#pump();
  }

  #pump(): void {
    if (this.#stopping) {
      this.#maybeFinish();
      return;
    }
    for (const slot of this.#slots.values()) {
      if (this.#queue.length === 0) break;
      if (slot.state !== "ready") continue;
      this.#dispatch(slot, this.#queue.shift()!);
    }
    this.#maybeFinish();
  }

  #dispatch(slot: WorkerSlot, job: JobRecord): void {
    const jobId = this.#nextJobId++;
    job.jobId = jobId;
    job.attempts++;
    job.state = "running";
    job.dispatchedAt = performance.now();
    job.workerId = slot.process.id;
    slot.job = job;
    slot.state = "busy";
    const { plugin, env } = this.#options;
    void this.#send(slot, Opcode.DISPATCH, jobId, {
      plugin_name: plugin.name,
      file_path: job.input.path,
      sinks: job.sinks,
      file_version_id: job.input.fileVersionId,
      env_hash: env.envHash,
      source_code: plugin.source,
      artifact_hash: this.#artifactHash,
      ...(this.#options.pluginConfig === undefined ? {} : { plugin_config: this.#options.pluginConfig }),
    });
  }

  get #artifactHash(): string {
    return (this.#cachedArtifactHash ??= sha256Hex(this.#options.plugin.source + this.#options.env.lockfileContent));
  }
  #cachedArtifactHash: string | undefined;

  #send<O extends Opcode>(slot: WorkerSlot, opcode: O, jobId: bigint, payload: PayloadByOpcode[O]): Promise<void> {
    if (slot.peer === null || this.#sentinel === null) return Promise.resolve();
    return this.#sentinel.send(slot.peer, opcode, jobId, payload);
  }

  // -------------------------------------------------------------------------
  // Outcomes
  // -------------------------------------------------------------------------

  #finishJob(job: JobRecord, state: "succeeded" | "failed" | "skipped" | "not-run", error: string | null): void {
    job.state = state;
    job.error = error;
    if (state === "succeeded") this.#succeededAny = true;
    this.#options.events?.jobFinished?.(job);
    if (state === "failed") this.#watchForSystemicFailure(job);
    this.#maybeFinish();
  }

  /**
   * The same error on each of the first few inputs, and not one success: it is the
   * plugin (an import that fails, a wrong method name), so stop instead of
   * printing it once per file. Input paths are masked before comparing.
   */
  #watchForSystemicFailure(job: JobRecord): void {
    if (this.#options.keepGoing === true || this.#succeededAny || this.#jobs.length <= SYSTEMIC_FAILURES || this.#firstFailures.length >= SYSTEMIC_FAILURES)
      return;
    this.#firstFailures.push(normaliseError(job.error ?? "", job.input.path));
    if (this.#firstFailures.length < SYSTEMIC_FAILURES) return;
    if (this.#firstFailures.every((e) => e === this.#firstFailures[0])) {
      const error = Errors.RUN_PLUGIN_FAILS_EVERYWHERE([SYSTEMIC_FAILURES], { context: { plugin: this.#options.plugin.path } });
      error.message += `:\n${job.error ?? ""}`;
      this.#stopRun(error);
    }
  }

  /** Stops dispatching; queued jobs become not-run. `fatal` says why (null for Ctrl-C). */
  #stopRun(fatal: CasparianError | null): void {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#fatal = fatal;
    const reason = fatal === null ? "interrupted" : "not run: the run stopped early";
    for (const job of this.#queue.splice(0)) this.#finishJob(job, "not-run", reason);
    if (fatal !== null) {
      // Running jobs of a doomed run are not worth waiting for: ABORT, and stop waiting soon.
      for (const slot of this.#slots.values()) if (slot.state === "busy" && slot.job !== null) void this.#send(slot, Opcode.ABORT, slot.job.jobId!, null);
      this.#abortTimer = setTimeout(() => this.#done(), this.#options.abortWaitMs);
    }
    this.#maybeFinish();
  }

  #maybeFinish(): void {
    if (this.#pendingPromotions.size > 0) return;
    const running = this.#jobs.some((j) => j.state === "running");
    const queued = this.#queue.length > 0;
    if (!running && !queued) this.#done();
    else if (this.#stopping && this.#fatal !== null && !running) this.#done();
  }

  async #allIdle(): Promise<void> {
    while ([...this.#slots.values()].some((s) => s.state === "busy") || this.#pendingPromotions.size > 0) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** `--log-level debug`: the run's phases, in ms since the process started. */
  #timeline(phase: string): void {
    this.#logger.debug({ phase, ms: Math.round(performance.now()) }, "run timeline");
  }
  #answers = 0;

  async #shutdown(): Promise<void> {
    this.#timeline("every job answered and published");
    this.#stopping = true;
    if (this.#timer !== null) clearInterval(this.#timer);
    if (this.#abortTimer !== null) clearTimeout(this.#abortTimer);
    await Promise.allSettled([...this.#pendingPromotions]);
    const live = [...this.#slots.values()].filter((s) => s.state !== "dead");
    for (const slot of live) slot.state = "stopping";
    await Promise.all(live.map((slot) => slot.process.stop(3_000)));
    // Jobs still marked running never answered (Ctrl-C past the wait): they did not run to completion.
    for (const job of this.#jobs) if (job.state === "running") this.#finishJob(job, "not-run", "interrupted");
    await this.#sentinel?.close();
    await rm(this.#options.stagingRoot, { recursive: true, force: true });
  }
}

function normaliseError(message: string, inputPath: string): string {
  const name = inputPath.slice(inputPath.lastIndexOf("/") + 1);
  return message
    .split(inputPath)
    .join("<input>")
    .split(name)
    .join("<input>")
    .replace(/job \d+/g, "job <id>")
    .replace(/\d{6,}/g, "<n>");
}
