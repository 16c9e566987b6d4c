/**
 * The worker's side of protocol v4: a DEALER socket to the Sentinel.
 *
 * It speaks the protocol and nothing else: jobs run in the Pipeline (which fires every
 * hook), environments are built by the EnvironmentProvider. What it guarantees:
 *  - every DISPATCH gets exactly one answer (CONCLUDE, or ERR when the payload is unreadable);
 *  - jobs run one at a time, in arrival order;
 *  - no inbound message can stop it: malformed ones are logged, counted and dropped;
 *  - after the Sentinel restarts on the same address it IDENTIFYs again, before anything
 *    else: answers of jobs that finished meanwhile follow, then a heartbeat built then;
 *  - all sends go through one queue, because a zeromq v6 socket rejects concurrent sends.
 *
 * Why the worker keeps its own outbox: a DEALER queues messages for a peer that went away
 * and flushes them into the new connection as soon as it is up, so a restarted Sentinel
 * got stale heartbeats and CONCLUDEs from a worker it had never seen IDENTIFY. With
 * ZMQ_IMMEDIATE ZeroMQ queues only to completed connections, and with a zero send
 * timeout a send while no connection is up fails with EAGAIN instead of waiting; the
 * message then stays in the outbox, and the next successful send on any connection is a
 * new IDENTIFY. Residual window: a message handed to ZeroMQ just before the connection
 * broke is lost with it (the protocol has no acknowledgements; it may equally have died
 * in the old Sentinel's buffers), and if the event loop is blocked for longer than the
 * reconnect interval exactly across a disconnect, the first message on the new
 * connection can precede its IDENTIFY (the disconnect is only known from the socket's
 * event monitor, which runs on the event loop).
 */
import { performance } from "node:perf_hooks";
import { Dealer } from "zeromq";
import type { EnvironmentProvider } from "../env/types.js";
import { CasparianError, Errors, errorMessage } from "../kernel/errors.js";
import type { Logger } from "../kernel/logger.js";
import {
  Opcode,
  type DispatchCommand,
  type Header,
  type JobReceipt,
  type Message,
  type PayloadByOpcode,
  type PrepareEnvCommand,
} from "../protocol/messages.js";
import type { WorkerMetrics } from "./metrics.js";
import { routingIdFor } from "./routing-id.js";
import { decodeHeader, decodeMessage, encodeMessage, opcodeName } from "../protocol/codec.js";
import { envReadyFromWire, jobCommandFromWire, receiptToWire } from "../protocol/job-view.js";
import type { Pipeline } from "../pipeline/pipeline.js";

export interface WorkerOptions {
  /** Sentinel endpoint, e.g. "tcp://127.0.0.1:5555". */
  connect: string;
  workerId: string;
  heartbeatIntervalMs: number;
  /** How long a running job may take to finish after stop() before it is aborted. */
  graceMs: number;
  logger: Logger;
  envs: EnvironmentProvider;
  /** The current pipeline; read at each job start, so RELOAD can swap it between jobs. */
  pipeline: () => Pipeline;
  /** Re-read the config (on RELOAD). Errors are logged; the old config stays. */
  reload?: () => Promise<void>;
  metrics?: WorkerMetrics;
  /** Called last in stop(), after the socket is closed (e.g. to close the metrics server). */
  onStopped?: () => Promise<void> | void;
  /** Sent in IDENTIFY. Default ["*"]; upstream's Python Sentinel needs the plugin names (it never matches "*"). */
  capabilities?: readonly string[];
  /** The DEALER's ZeroMQ routing id; default: ASCII, from the worker id, unique per process (routing-id.ts). */
  routingId?: string;
  /** Warn when the Sentinel is unreachable, or silent since IDENTIFY, for this long. 0 turns it off. Default 60 s. */
  silenceWarningMs?: number;
  /** Largest payload frame read from the Sentinel (bytes); larger ones are answered with ERR, unparsed. Default 8 MiB. */
  maxMessageBytes?: number;
  /** DISPATCHes waiting behind the running job; more are answered CONCLUDE FAILED "worker busy". Default 16. */
  maxQueuedJobs?: number;
}

export const DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024;
export const DEFAULT_MAX_QUEUED_JOBS = 16;
/**
 * ZeroMQ drops a connection whose message exceeds this (ZMQ_MAXMSGSIZE): nothing can be
 * answered then, so it sits well above maxMessageBytes, which answers with an ERR.
 */
const HARD_MESSAGE_FACTOR = 4;

/** After an abort, how long the job gets to unwind before we stop waiting for it. */
const ABORT_SETTLE_MS = 10_000;
/** How long stop() waits for queued answers to leave, and how long the socket lingers after close. */
const FLUSH_MS = 2_000;
const SILENCE_WARNING_MS = 60_000;

interface QueuedJob {
  jobId: bigint;
  command: DispatchCommand;
}

interface RunningJob extends QueuedJob {
  controller: AbortController;
  /** Its CONCLUDE is queued: heartbeats built after it say IDLE, never BUSY with a job the Sentinel saw end. */
  concluded: boolean;
}

type Frames = Buffer[];

interface Outbound {
  opcode: Opcode;
  build: () => { jobId: bigint; payload: unknown };
  /** Encoded at its first send attempt; a retry sends the same bytes. */
  frames: Frames | null;
  jobId: bigint;
  done: () => void;
}

/** How soon a send that found no connection is tried again (connect/handshake events try sooner). */
const RETRY_MS = 100;

export class Worker {
  readonly #o: WorkerOptions;
  readonly #log: Logger;
  #socket: Dealer | null = null;
  /** Answers (CONCLUDE, ERR, ENV_READY) not yet handed to ZeroMQ, oldest first. */
  readonly #outbox: Outbound[] = [];
  /** Resolves once the newest answer in the outbox has been sent (or dropped at close). */
  #lastAnswer: Promise<void> = Promise.resolve();
  /** True once IDENTIFY went out on the connection in use; false again when it may have changed. */
  #identified = false;
  #heartbeatDue = false;
  #pumping = false;
  #retryTimer: NodeJS.Timeout | null = null;
  #heartbeatTimer: NodeJS.Timeout | null = null;
  readonly #queue: QueuedJob[] = [];
  #current: RunningJob | null = null;
  #running: Promise<void> | null = null;
  #reloadTail: Promise<void> = Promise.resolve();
  #loops: Promise<unknown>[] = [];
  #started = false;
  #stopping = false;
  #stopped: Promise<void> | null = null;
  readonly #routingId: string;
  /** Armed while we wait to connect, or for a first message after IDENTIFY. */
  #silenceTimer: NodeJS.Timeout | null = null;
  #heardFromSentinel = false;

  constructor(options: WorkerOptions) {
    this.#o = options;
    this.#log = options.logger;
    this.#routingId = options.routingId ?? routingIdFor(options.workerId);
  }

  /** The routing id the Sentinel's ROUTER sees for this worker. */
  get #maxMessageBytes(): number {
    return this.#o.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  }

  get routingId(): string {
    return this.#routingId;
  }

  get workerId(): string {
    return this.#o.workerId;
  }

  /** The job being run, if any. */
  get currentJobId(): bigint | null {
    return this.#current?.jobId ?? null;
  }

  /** Resolves when the job running now (if any) has concluded; jobs started later are not waited for. */
  jobSettled(): Promise<void> {
    return this.#running ?? Promise.resolve();
  }

  /** Fire hooks.start, connect, and start heartbeats; resolves once connecting (the Sentinel may not be up yet). */
  async start(): Promise<void> {
    if (this.#started) throw new Error("Worker.start() called twice");
    this.#started = true;
    await this.#o.pipeline().start();

    const socket = new Dealer({
      routingId: this.#routingId,
      linger: FLUSH_MS,
      reconnectInterval: 100,
      reconnectMaxInterval: 2_000,
      // See the module comment: queue only to a live connection, and never wait in send().
      immediate: true,
      sendTimeout: 0,
      maxMessageSize: HARD_MESSAGE_FACTOR * this.#maxMessageBytes + 1024,
    });
    this.#socket = socket;
    // The observer must exist before connect() or the first "connect" event is missed.
    const events = socket.events;
    try {
      socket.connect(this.#o.connect);
    } catch (err) {
      socket.close();
      throw Errors.WORKER_BAD_ENDPOINT([this.#o.connect, err instanceof Error ? err.message : String(err)], { cause: err });
    }
    this.#loops.push(this.#watchConnection(events), this.#receiveLoop(socket));
    this.#log.info({ connect: this.#o.connect, worker_id: this.#o.workerId, routing_id: this.#routingId }, "worker connecting");
    this.#armSilenceWarning("connect");

    this.#heartbeatTimer = setInterval(() => this.#heartbeat(), this.#o.heartbeatIntervalMs);
  }

  // -------------------------------------------------------------------------
  // Connection and inbound messages
  // -------------------------------------------------------------------------

  async #watchConnection(events: Dealer["events"]): Promise<void> {
    try {
      for await (const event of events) {
        if (event.type === "connect") {
          this.#log.info({ address: event.address }, "connected to sentinel; identifying");
          this.#heardFromSentinel = false;
          this.#armSilenceWarning("identify");
          this.#kick();
        } else if (event.type === "handshake") {
          this.#kick();
        } else if (event.type === "disconnect") {
          this.#identified = false;
          this.#log.warn({ address: event.address }, "sentinel disconnected; reconnecting");
        }
      }
    } catch (err) {
      if (!this.#stopping) this.#log.error({ err }, "socket event monitor failed");
    }
  }

  async #receiveLoop(socket: Dealer): Promise<void> {
    try {
      for await (const frames of socket) this.#onFrames(frames);
    } catch (err) {
      if (!socket.closed) this.#log.error({ err }, "receive loop failed");
    }
  }

  #onFrames(frames: Frames): void {
    this.#heardFromSentinel = true;
    this.#disarmSilenceWarning();
    let header: Header;
    try {
      if (frames.length === 0) throw Errors.PROTOCOL_FRAME_COUNT([0]);
      header = decodeHeader(frames[0]!);
    } catch (err) {
      this.#malformed(err, frames);
      return;
    }
    let message: Message;
    try {
      const payloadBytes = frames[1]?.byteLength ?? 0;
      // Checked before parsing: a 100 MB payload must not block the event loop for a minute.
      if (payloadBytes > this.#maxMessageBytes)
        throw Errors.PROTOCOL_TOO_LARGE([opcodeName(header.opcode), payloadBytes, this.#maxMessageBytes], { context: { jobId: header.jobId } });
      message = decodeMessage(frames);
    } catch (err) {
      this.#malformed(err, frames, header);
      if (header.opcode === Opcode.DISPATCH) this.#rejectDispatch(header.jobId, err);
      if (header.opcode === Opcode.PREPARE_ENV) this.#rejectPrepare(err);
      return;
    }
    this.#o.metrics?.messagesIn.inc({ opcode: opcodeName(message.opcode) });
    this.#log.debug({ opcode: opcodeName(message.opcode), job_id: message.jobId }, "message in");
    this.#handle(message);
  }

  #handle(message: Message): void {
    switch (message.opcode) {
      case Opcode.DISPATCH:
        this.#accept({ jobId: message.jobId, command: message.payload });
        return;
      case Opcode.ABORT:
        this.#abort(message.jobId);
        return;
      case Opcode.RELOAD:
        this.#reload();
        return;
      case Opcode.PREPARE_ENV:
        void this.#prepare(message.payload);
        return;
      case Opcode.ERR:
        this.#log.warn({ job_id: message.jobId, message: message.payload.message, traceback: message.payload.traceback }, "sentinel reported an error");
        return;
      default:
        this.#malformed(Errors.PROTOCOL_UNEXPECTED_OPCODE([opcodeName(message.opcode)]), null, { opcode: message.opcode, jobId: message.jobId });
    }
  }

  #malformed(err: unknown, frames: Frames | null, header?: Pick<Header, "opcode" | "jobId">): void {
    const code = err instanceof CasparianError ? err.code : "UNKNOWN";
    this.#o.metrics?.malformedMessages.inc({ code });
    this.#log.warn(
      {
        code,
        frames: frames?.length,
        opcode: header ? opcodeName(header.opcode) : undefined,
        job_id: header?.jobId,
        error: err instanceof Error ? err.message : String(err),
      },
      "malformed message dropped",
    );
  }

  /** A PREPARE_ENV we cannot read is answered too, as a failed one is: ERR(0, "PREPARE_ENV failed: ..."). */
  #rejectPrepare(err: unknown): void {
    void this.#send(Opcode.ERR, () => ({ jobId: 0n, payload: { message: `PREPARE_ENV failed: ${describe(err)}`, traceback: null } }));
  }

  /** A DISPATCH we cannot read still gets its one answer: ERR with its job id. */
  #rejectDispatch(jobId: bigint, err: unknown): void {
    const detail =
      err instanceof CasparianError
        ? `${Errors.PROTOCOL_BAD_PAYLOAD.is(err) && Array.isArray(err.context.issues) ? err.context.issues.join("; ") : err.message} (${err.code})`
        : String(err);
    void this.#send(Opcode.ERR, () => ({ jobId, payload: { message: `Invalid DISPATCH payload: ${detail}`, traceback: null } }));
  }

  /**
   * Neither upstream Sentinel answers IDENTIFY, and a Sentinel that dropped it looks
   * exactly like one with an empty queue. So after a while of silence we say so, once
   * per connection, with what usually causes it. Not an error: an idle queue is normal.
   */
  #armSilenceWarning(phase: "connect" | "identify"): void {
    this.#disarmSilenceWarning();
    const ms = this.#o.silenceWarningMs ?? SILENCE_WARNING_MS;
    if (ms <= 0 || this.#stopping) return;
    this.#silenceTimer = setTimeout(() => {
      this.#silenceTimer = null;
      if (this.#stopping || this.#heardFromSentinel) return;
      const seconds = Math.round(ms / 100) / 10;
      if (phase === "connect") {
        this.#log.warn(
          { code: "CSP_WORKER_SENTINEL_UNREACHABLE", connect: this.#o.connect, seconds, likely_causes: UNREACHABLE_CAUSES },
          "no Sentinel reachable at %s after %ss; still retrying",
          this.#o.connect,
          seconds,
        );
      } else {
        this.#log.warn(
          {
            code: "CSP_WORKER_SENTINEL_SILENT",
            connect: this.#o.connect,
            seconds,
            routing_id: this.#routingId,
            capabilities: this.#capabilities(),
            likely_causes: SILENT_CAUSES,
          },
          "the Sentinel has sent nothing in %ss since IDENTIFY: fine if no job is queued; if jobs are queued, see likely_causes",
          seconds,
        );
      }
    }, ms);
    this.#silenceTimer.unref();
  }

  #disarmSilenceWarning(): void {
    if (this.#silenceTimer) clearTimeout(this.#silenceTimer);
    this.#silenceTimer = null;
  }

  // -------------------------------------------------------------------------
  // Outbound messages: one serialized send path
  // -------------------------------------------------------------------------

  /** Queue an answer; it leaves after IDENTIFY on the current connection, in order. `encoded`: its frames, when already made. */
  #send<O extends Opcode>(opcode: O, build: () => { jobId: bigint; payload: PayloadByOpcode[O] }, encoded?: { jobId: bigint; frames: Frames }): Promise<void> {
    const sent = new Promise<void>((resolve) => {
      this.#outbox.push({ opcode, build: build as Outbound["build"], frames: encoded?.frames ?? null, jobId: encoded?.jobId ?? 0n, done: resolve });
    });
    this.#lastAnswer = sent;
    this.#kick();
    return sent;
  }

  /** Start the send loop unless it runs or waits for a retry. */
  #kick(): void {
    if (this.#pumping) return;
    if (this.#retryTimer) {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
    }
    this.#pumping = true;
    void this.#sendLoop().finally(() => {
      this.#pumping = false;
      if (this.#retryTimer === null && !this.#socket?.closed && (this.#outbox.length > 0 || this.#heartbeatDue || !this.#identified)) this.#kick();
    });
  }

  /**
   * Sends IDENTIFY when this connection has not had one, then the answers, then a due
   * heartbeat (its payload built at send time, so it says how things are now). Returns
   * when there is nothing to send, or when ZeroMQ has no connection to send on (EAGAIN):
   * then it retries after RETRY_MS, or at once on the next connect/handshake event.
   */
  async #sendLoop(): Promise<void> {
    for (;;) {
      const socket = this.#socket;
      if (!socket || socket.closed) {
        this.#dropOutbox();
        return;
      }
      const kind = !this.#identified ? "identify" : this.#outbox.length > 0 ? "answer" : this.#heartbeatDue ? "heartbeat" : null;
      if (kind === null) return;
      const item = kind === "identify" ? this.#identifyMessage() : kind === "heartbeat" ? this.#heartbeatMessage() : this.#outbox[0]!;
      if (item.frames === null) {
        try {
          const message = item.build();
          item.jobId = message.jobId;
          item.frames = encodeMessage(item.opcode, message.jobId, message.payload as never);
        } catch (err) {
          this.#log.error({ err, opcode: opcodeName(item.opcode), job_id: item.jobId }, "could not encode an outbound message (bug)");
          this.#settle(kind, item);
          continue;
        }
      }
      try {
        await socket.send(item.frames);
        this.#o.metrics?.messagesOut.inc({ opcode: opcodeName(item.opcode) });
      } catch (err) {
        if (socket.closed) continue;
        if (errnoCode(err) === "EAGAIN") {
          // No live connection: when one is up it may be a new Sentinel, which must hear IDENTIFY first.
          this.#identified = false;
          this.#retryTimer = setTimeout(() => {
            this.#retryTimer = null;
            this.#kick();
          }, RETRY_MS);
          this.#retryTimer.unref();
          return;
        }
        this.#log.warn({ err, opcode: opcodeName(item.opcode), job_id: item.jobId }, "send failed");
      }
      this.#settle(kind, item);
    }
  }

  #settle(kind: "identify" | "answer" | "heartbeat", item: Outbound): void {
    if (kind === "identify") this.#identified = true;
    else if (kind === "heartbeat") this.#heartbeatDue = false;
    else {
      this.#outbox.shift();
      item.done();
    }
  }

  #dropOutbox(): void {
    for (const item of this.#outbox.splice(0)) item.done();
    this.#heartbeatDue = false;
  }

  #identifyMessage(): Outbound {
    return {
      opcode: Opcode.IDENTIFY,
      build: () => ({ jobId: 0n, payload: { capabilities: this.#capabilities(), worker_id: this.#o.workerId } }),
      frames: null,
      jobId: 0n,
      done: () => undefined,
    };
  }

  #heartbeatMessage(): Outbound {
    return {
      opcode: Opcode.HEARTBEAT,
      build: () => {
        const current = this.#current !== null && !this.#current.concluded ? this.#current.jobId : null;
        // Like the Python implementation: the header carries the job too (0 when idle).
        return { jobId: current ?? 0n, payload: { status: current === null ? "IDLE" : "BUSY", current_job_id: current } };
      },
      frames: null,
      jobId: 0n,
      done: () => undefined,
    };
  }

  #capabilities(): string[] {
    return this.#o.capabilities && this.#o.capabilities.length > 0 ? [...this.#o.capabilities] : ["*"];
  }

  #heartbeat(): void {
    // While the Sentinel is away one due heartbeat says all there is to say; it is built when it leaves.
    this.#heartbeatDue = true;
    this.#kick();
  }

  /** CONCLUDE, falling back to a FAILED receipt when the pipeline's receipt cannot be encoded (encoded once, here). */
  #conclude(jobId: bigint, receipt: JobReceipt): Promise<void> {
    let safe = receipt;
    let frames: Frames | undefined;
    try {
      frames = encodeMessage(Opcode.CONCLUDE, jobId, receipt);
    } catch (err) {
      this.#log.error({ err, job_id: jobId }, "receipt could not be encoded; concluding FAILED instead");
      safe = failedReceipt(`receipt could not be encoded: ${errorMessage(err)}`);
    }
    return this.#send(Opcode.CONCLUDE, () => ({ jobId, payload: safe }), frames === undefined ? undefined : { jobId, frames });
  }

  // -------------------------------------------------------------------------
  // Jobs
  // -------------------------------------------------------------------------

  #accept(job: QueuedJob): void {
    if (this.#stopping) {
      this.#log.warn({ job_id: job.jobId }, "DISPATCH while shutting down; concluding FAILED");
      void this.#conclude(job.jobId, failedReceipt("worker shutting down"));
      return;
    }
    if (this.#current?.jobId === job.jobId || this.#queue.some((queued) => queued.jobId === job.jobId)) {
      // Answering with CONCLUDE would end the first copy's job at the Sentinel; it still runs and answers itself.
      this.#log.warn({ job_id: job.jobId }, "duplicate DISPATCH for a job this worker already has; refused");
      void this.#send(Opcode.ERR, () => ({
        jobId: job.jobId,
        payload: {
          message: `duplicate DISPATCH: job ${job.jobId} is already ${this.#current?.jobId === job.jobId ? "running" : "queued"} on this worker`,
          traceback: null,
        },
      }));
      return;
    }
    const maxQueued = this.#o.maxQueuedJobs ?? DEFAULT_MAX_QUEUED_JOBS;
    if (this.#current && this.#queue.length >= maxQueued) {
      this.#log.warn({ job_id: job.jobId, queued: this.#queue.length }, "DISPATCH while the queue is full; concluding FAILED");
      void this.#conclude(
        job.jobId,
        failedReceipt(`worker busy: ${this.#queue.length} jobs already queued behind job ${this.#current.jobId} (limits.maxQueuedJobs)`),
      );
      return;
    }
    this.#queue.push(job);
    if (this.#current) this.#log.info({ job_id: job.jobId, queued: this.#queue.length }, "DISPATCH while busy; queued");
    this.#nextJob();
  }

  #nextJob(): void {
    if (this.#current || this.#stopping) return;
    const next = this.#queue.shift();
    if (!next) return;
    const job: RunningJob = { ...next, controller: new AbortController(), concluded: false };
    this.#current = job;
    this.#running = this.#run(job).finally(() => {
      this.#current = null;
      this.#running = null;
      this.#nextJob();
    });
  }

  async #run(job: RunningJob): Promise<void> {
    const { jobId, command, controller } = job;
    const logger = this.#log.child({ job_id: jobId, plugin: command.plugin_name });
    const started = performance.now();
    let receipt: JobReceipt;
    try {
      // The protocol edge: the pipeline and its plugins see the job view, never the wire shapes.
      receipt = receiptToWire(await this.#o.pipeline().runJob({ jobId, command: jobCommandFromWire(command), signal: controller.signal, logger }));
    } catch (err) {
      logger.error({ err }, "job failed outside the pipeline (bug)");
      receipt = failedReceipt(describe(err));
    }
    if (controller.signal.aborted && receipt.status === "SUCCESS") {
      logger.warn("job succeeded after it was aborted; reporting its result");
    }
    const seconds = (performance.now() - started) / 1000;
    this.#o.metrics?.jobsTotal.inc({ status: receipt.status });
    this.#o.metrics?.jobDuration.observe(seconds);
    logger.info(
      {
        file: command.file_path,
        status: receipt.status,
        seconds: Math.round(seconds * 1000) / 1000,
        error: receipt.error_message ?? undefined,
        metrics: receipt.metrics,
        artifacts: receipt.artifacts,
      },
      "job concluded",
    );
    job.concluded = true;
    await this.#conclude(jobId, receipt);
  }

  #abort(jobId: bigint): void {
    if (this.#current?.jobId === jobId) {
      this.#log.info({ job_id: jobId }, "ABORT: aborting the running job");
      this.#current.controller.abort(Errors.JOB_ABORTED(["sentinel"], { context: { jobId } }));
      return;
    }
    const index = this.#queue.findIndex((job) => job.jobId === jobId);
    if (index >= 0) {
      this.#queue.splice(index, 1);
      this.#log.info({ job_id: jobId }, "ABORT: dropped the queued job");
      void this.#conclude(jobId, failedReceipt(Errors.JOB_ABORTED(["sentinel"]).describe()));
      return;
    }
    this.#log.info({ job_id: jobId }, "ABORT for a job this worker is not running; ignored");
  }

  // -------------------------------------------------------------------------
  // Environments and reload
  // -------------------------------------------------------------------------

  /** Runs beside the message loop: building a venv can take minutes and must not block ABORT or heartbeats. */
  async #prepare(command: PrepareEnvCommand): Promise<void> {
    const logger = this.#log.child({ env_hash: command.env_hash });
    logger.info("PREPARE_ENV");
    try {
      const ready = await this.#o.envs.prepare(command);
      logger.info({ cached: ready.cached, interpreter: ready.interpreter_path }, "environment ready");
      await this.#send(Opcode.ENV_READY, () => ({ jobId: 0n, payload: ready }));
      await this.#o.pipeline().envReady(envReadyFromWire(ready));
    } catch (err) {
      logger.error({ err }, "PREPARE_ENV failed");
      await this.#send(Opcode.ERR, () => ({
        jobId: 0n,
        payload: { message: `PREPARE_ENV failed: ${describe(err)}`, traceback: err instanceof Error && err.stack ? err.stack : null },
      }));
    }
  }

  #reload(): void {
    const reload = this.#o.reload;
    if (!reload) {
      this.#log.info("RELOAD: nothing to reload (no config loader)");
      return;
    }
    // One reload at a time, in order.
    this.#reloadTail = this.#reloadTail.then(async () => {
      this.#log.info("RELOAD: re-reading the config");
      try {
        await reload();
        this.#log.info("RELOAD: config reloaded; the next job uses it");
      } catch (err) {
        this.#log.error({ err, code: err instanceof CasparianError ? err.code : undefined }, "RELOAD failed; keeping the previous config");
      }
    });
  }

  // -------------------------------------------------------------------------
  // Shutdown
  // -------------------------------------------------------------------------

  /** Stop taking work, let the running job finish within graceMs (else abort it), answer, close. Idempotent. */
  stop(reason = "stop requested"): Promise<void> {
    this.#stopped ??= this.#shutdown(reason);
    return this.#stopped;
  }

  async #shutdown(reason: string): Promise<void> {
    this.#stopping = true;
    this.#log.info({ reason, running: this.#current?.jobId, queued: this.#queue.length }, "worker stopping");
    for (const job of this.#queue.splice(0)) void this.#conclude(job.jobId, failedReceipt("worker shutting down"));

    const running = this.#running;
    if (running && !(await settlesWithin(running, this.#o.graceMs))) {
      this.#log.warn({ job_id: this.#current?.jobId, grace_ms: this.#o.graceMs }, "grace period over; aborting the running job");
      this.#current?.controller.abort(Errors.JOB_ABORTED(["shutdown"]));
      if (!(await settlesWithin(running, ABORT_SETTLE_MS))) this.#log.error("the aborted job did not finish; closing anyway");
    }
    if (this.#heartbeatTimer) clearInterval(this.#heartbeatTimer);
    this.#heartbeatDue = false;
    this.#disarmSilenceWarning();
    await settlesWithin(this.#lastAnswer, FLUSH_MS);
    await settlesWithin(this.#reloadTail, FLUSH_MS);

    // Resolves after the last shutdown tap: nothing a sink still flushes is cut off by the close.
    await this.#o.pipeline().shutdown();
    this.#socket?.close();
    await Promise.allSettled(this.#loops);
    try {
      await this.#o.onStopped?.();
    } catch (err) {
      this.#log.warn({ err }, "onStopped failed");
    }
    this.#log.info("worker stopped");
  }
}

const UNREACHABLE_CAUSES = [
  "no Sentinel is running or bound at this endpoint yet (check --connect / `connect` and the Sentinel's bind address)",
  "a firewall or a different host/port: the Sentinel binds a ROUTER socket, the worker connects to it",
];

const SILENT_CAUSES = [
  "the Sentinel dropped IDENTIFY: upstream's Python Sentinel needs a UTF-8 routing id (this worker sends an ASCII one) and valid JSON",
  'capability mismatch: upstream\'s Python Sentinel matches the plugin name literally and never matches "*"; list the plugin names with --capabilities',
  "the peer is not a protocol v4 Sentinel (wrong port, or another version that drops our frames)",
  "no job is queued for a plugin this worker can run (then nothing is wrong)",
];

function errnoCode(err: unknown): string | undefined {
  return typeof err === "object" && err !== null && "code" in err && typeof err.code === "string" ? err.code : undefined;
}

function failedReceipt(message: string): JobReceipt {
  return { status: "FAILED", metrics: {}, artifacts: [], error_message: message };
}

function describe(err: unknown): string {
  return err instanceof CasparianError ? err.describe() : errorMessage(err);
}

/** True when `promise` settles within `ms`; never rejects. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([
      promise.then(
        () => true,
        () => true,
      ),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}
