/**
 * A Sentinel that behaves like upstream's own two, reproduced from their source
 * (github sl224/casparianflow, the commit that has both `src/casparian_flow/engine/sentinel.py`
 * and `crates/casparian_sentinel`): what they send, byte for byte, and what they do with
 * what they receive, including their defects. CI cannot fetch upstream, so the compat
 * suite runs against this; the quirks reproduced are listed per dialect.
 *
 * "python" (sentinel.py, pyzmq ROUTER, pydantic models):
 *  - IDENTIFY: decodes the routing id as UTF-8 even when worker_id is given; a binary
 *    routing id makes it drop the IDENTIFY ("Bad IDENTIFY payload").
 *  - dispatch: `plugin_name in capabilities`, so "*" never matches; no match fails the job
 *    "No capable worker available". A manifest without env_hash fails "missing lockfile".
 *  - sinks: its cached sink table is appended again on each reload (never cleared), plus
 *    `parquet://<plugin>_output.parquet` for topic "output" when none is configured.
 *  - DISPATCH JSON: pydantic's model_dump_json: compact, fields in declaration order,
 *    `schema_def` and `artifact_hash` always present (null when unset).
 *  - RELOAD: broadcast as a single frame (the header alone).
 *  - CONCLUDE: validated as JobReceipt; an invalid one is logged and the worker stays BUSY.
 *    SUCCESS stores result_summary "Success" and registers parquet/file artifacts under a
 *    source root as file locations.
 * "rust" (crates/casparian_sentinel, zeromq ROUTER, serde):
 *  - needs [identity, header, payload] with payload_len equal to the payload's length.
 *  - capabilities match "*" or the plugin name. A manifest without env_hash is sent
 *    env_hash "system"; `schema_def` and `artifact_hash` are omitted when unset.
 *  - evicts a worker not heard from (HEARTBEAT, CONCLUDE, ERR) within the stale window
 *    (60 s upstream; shorter here so a test can see it).
 *  - CONCLUDE: status must be SUCCESS|FAILED|REJECTED|ABORTED, job ids must fit i32;
 *    artifacts are counted, never stored.
 * Neither sends PREPARE_ENV, HEARTBEAT or ABORT, and neither answers IDENTIFY.
 */
import { createHash } from "node:crypto";
import { Router } from "zeromq";
import { Arrivals } from "./arrivals.js";

export type Dialect = "python" | "rust";

export interface TopicRow {
  topic: string;
  uri: string;
  mode?: string | null;
  schema_json?: string | null;
}

export interface QueuedJob {
  id: number;
  plugin_name: string;
  file_path: string;
  file_version_id: number;
  /** The manifest's env_hash; null for a plugin published without a lockfile. */
  env_hash: string | null;
  source_code: string;
  artifact_hash?: string | null;
}

export type JobState = "QUEUED" | "RUNNING" | "COMPLETED" | "FAILED";

export interface JobRow {
  job: QueuedJob;
  status: JobState;
  result_summary: string | null;
  error_message: string | null;
  /** The worker's receipt as received (when one was accepted). */
  receipt?: Record<string, unknown>;
}

interface ConnectedWorker {
  identity: Buffer;
  workerId: string;
  capabilities: string[];
  status: "IDLE" | "BUSY";
  lastSeen: number;
}

const OP = { IDENTIFY: 1, DISPATCH: 2, HEARTBEAT: 4, CONCLUDE: 5, ERR: 6, RELOAD: 7, ENV_READY: 9 } as const;
const UTF8 = new TextDecoder("utf-8", { fatal: true });

export class UpstreamSentinel {
  readonly dialect: Dialect;
  readonly endpoint: string;
  /** What the real one would log, in order. */
  readonly log: string[] = [];
  /** Frames sent to workers (without the identity), in order. */
  readonly sent: Buffer[][] = [];
  /** File locations registered from artifacts (python dialect): paths relative to their source root. */
  readonly locations: string[] = [];
  readonly jobs = new Map<number, JobRow>();
  readonly #router: Router;
  readonly #workers = new Map<string, ConnectedWorker>();
  readonly #queue: number[] = [];
  readonly #topicRows: PluginTopicRow[] = [];
  #topicMap = new Map<string, TopicRow[]>();
  readonly #sourceRoots: string[] = [];
  readonly #staleAfterMs: number;
  readonly #arrivals = new Arrivals();
  readonly #loop: Promise<void>;
  readonly #ticker: NodeJS.Timeout;
  #dispatching = Promise.resolve();

  private constructor(router: Router, dialect: Dialect, options: UpstreamSentinelOptions) {
    this.#router = router;
    this.dialect = dialect;
    this.endpoint = router.lastEndpoint!;
    this.#topicRows.push(...(options.topics ?? []));
    this.#sourceRoots.push(...(options.sourceRoots ?? []));
    this.#staleAfterMs = options.staleAfterMs ?? 60_000;
    this.#loadTopicConfigs();
    this.#loop = this.#receive();
    // Both poll their queue on a ~100 ms loop.
    this.#ticker = setInterval(() => {
      this.#dispatching = this.#dispatching.then(() => this.#tick()).catch((err: unknown) => this.#say(`Sentinel Error: ${String(err)}`));
    }, 50);
  }

  static async bind(dialect: Dialect, options: UpstreamSentinelOptions = {}): Promise<UpstreamSentinel> {
    const router = new Router({ linger: 0 });
    await router.bind("tcp://127.0.0.1:*");
    return new UpstreamSentinel(router, dialect, options);
  }

  /** Queue a job (what publish/Scout/JobQueue leave in cf_processing_queue). */
  enqueue(job: QueuedJob): void {
    this.jobs.set(job.id, { job, status: "QUEUED", result_summary: null, error_message: null });
    this.#queue.push(job.id);
  }

  /** Register a cf_source_root path. */
  addSourceRoot(path: string): void {
    this.#sourceRoots.push(path);
  }

  /** Routing ids of the registered workers. */
  get workerIdentities(): Buffer[] {
    return [...this.#workers.values()].map((w) => w.identity);
  }

  /**
   * An admin RELOAD. python: re-reads the sink table, appending it to the cached one again
   * (so every sink is listed once more), and broadcasts a one-frame RELOAD. rust: no such path.
   */
  async reload(): Promise<void> {
    if (this.dialect !== "python") throw new Error("upstream's Rust Sentinel has no RELOAD path");
    this.#loadTopicConfigs();
    const frame = header(OP.RELOAD, 0n, 0);
    for (const worker of this.#workers.values()) {
      await this.#router.send([worker.identity, frame]);
      this.sent.push([frame]);
    }
    this.#say("Broadcasted RELOAD to all workers.");
  }

  waitForJob(id: number, done: (row: JobRow) => boolean = (r) => r.status === "COMPLETED" || r.status === "FAILED", timeoutMs = 60_000): Promise<JobRow> {
    return this.#arrivals.until(
      () => {
        const row = this.jobs.get(id);
        return row && done(row) ? row : undefined;
      },
      timeoutMs,
      () => new Error(`job ${id} is ${this.jobs.get(id)?.status ?? "unknown"} after ${timeoutMs} ms; sentinel log:\n${this.log.slice(-15).join("\n")}`),
    );
  }

  waitForLog(pattern: RegExp, timeoutMs = 15_000): Promise<string> {
    return this.#arrivals.until(
      () => this.log.find((line) => pattern.test(line)),
      timeoutMs,
      () => new Error(`no sentinel log line matching ${pattern} within ${timeoutMs} ms; log:\n${this.log.slice(-15).join("\n")}`),
    );
  }

  async close(): Promise<void> {
    clearInterval(this.#ticker);
    await this.#dispatching;
    this.#router.close();
    await this.#loop;
  }

  // ---------------------------------------------------------------------------

  #say(line: string): void {
    this.log.push(line);
    this.#arrivals.notify();
  }

  #loadTopicConfigs(): void {
    if (this.dialect === "rust") this.#topicMap = new Map();
    for (const row of this.#topicRows) {
      const list = this.#topicMap.get(row.plugin) ?? [];
      list.push(row);
      this.#topicMap.set(row.plugin, list);
    }
  }

  async #receive(): Promise<void> {
    try {
      for await (const [identity, ...frames] of this.#router) this.#onMessage(identity!, frames);
    } catch {
      // closed
    }
  }

  #onMessage(identity: Buffer, frames: Buffer[]): void {
    if (frames.length < 2) {
      this.#say(
        this.dialect === "python"
          ? `Failed to unpack message: Expected at least 2 frames, got ${frames.length}`
          : `Expected 3 frames [identity, header, payload], got ${frames.length + 1}`,
      );
      return;
    }
    const [head, body] = frames as [Buffer, Buffer];
    if (head.length < 16 || head[0] !== 4) {
      this.#say("Failed to unpack message: bad header");
      return;
    }
    const opcode = head[1]!;
    const jobId = head.readBigUInt64BE(4);
    const length = head.readUInt32BE(12);
    if (this.dialect === "rust" && body.length !== length) {
      this.#say(`Recv error: payload length mismatch: header says ${length}, got ${body.length}`);
      return;
    }
    let payload: Record<string, unknown> = {};
    if (length > 0 || this.dialect === "rust") {
      try {
        payload = JSON.parse(UTF8.decode(body)) as Record<string, unknown>;
      } catch (err) {
        this.#say(`Failed to decode JSON payload: ${String(err)}`);
        return;
      }
    }
    const key = identity.toString("hex");
    switch (opcode) {
      case OP.IDENTIFY:
        this.#register(identity, key, payload);
        return;
      case OP.CONCLUDE:
        this.#conclude(key, jobId, payload);
        return;
      case OP.ERR:
        this.#error(key, jobId, payload);
        return;
      case OP.HEARTBEAT:
      case OP.ENV_READY: {
        const worker = this.#workers.get(key);
        if (worker) worker.lastSeen = Date.now();
        if (opcode === OP.ENV_READY && this.dialect === "python") this.#say("Unhandled OpCode: 9");
        return;
      }
      default:
        this.#say(`Unhandled OpCode: ${opcode}`);
    }
  }

  #register(identity: Buffer, key: string, payload: Record<string, unknown>): void {
    if (this.dialect === "python") {
      // payload.get("worker_id", identity.decode()): the default is evaluated first.
      let decoded: string;
      try {
        decoded = UTF8.decode(identity);
      } catch {
        this.#say(`Bad IDENTIFY payload: 'utf-8' codec can't decode the routing id ${identity.toString("hex")}`);
        return;
      }
      const workerId = "worker_id" in payload ? String(payload.worker_id) : decoded;
      const caps = Array.isArray(payload.capabilities) ? payload.capabilities.map(String) : [];
      this.#workers.set(key, { identity, workerId, capabilities: caps, status: "IDLE", lastSeen: Date.now() });
      this.#say(`Worker Joined [${workerId}]: ${new Set(caps).size} capabilities`);
      return;
    }
    if (!Array.isArray(payload.capabilities) || payload.capabilities.some((c) => typeof c !== "string")) {
      this.#say("Error handling message: invalid IDENTIFY payload");
      return;
    }
    const workerId = typeof payload.worker_id === "string" ? payload.worker_id : `worker-${createHash("sha256").update(identity).digest("hex").slice(0, 8)}`;
    this.#workers.set(key, { identity, workerId, capabilities: payload.capabilities as string[], status: "IDLE", lastSeen: Date.now() });
    this.#say(`Worker registered: ${workerId}`);
  }

  #worker(key: string): ConnectedWorker | undefined {
    const worker = this.#workers.get(key);
    if (worker) {
      worker.status = "IDLE";
      worker.lastSeen = Date.now();
    }
    return worker;
  }

  #conclude(key: string, jobId: bigint, payload: Record<string, unknown>): void {
    const problem = this.dialect === "python" ? pydanticReceiptProblem(payload) : serdeReceiptProblem(payload);
    if (problem !== null) {
      // Upstream returns before marking the worker IDLE: it stays BUSY.
      this.#say(`Failed to parse CONCLUDE receipt: ${problem}`);
      return;
    }
    this.#worker(key);
    if (this.dialect === "rust" && jobId > 2_147_483_647n) {
      this.#say(`Error handling message: Job ID ${jobId} exceeds maximum supported value (2147483647)`);
      return;
    }
    const row = this.jobs.get(Number(jobId));
    if (!row) return;
    row.receipt = payload;
    const status = payload.status as string;
    if (status === "SUCCESS") {
      row.status = "COMPLETED";
      row.result_summary = "Success";
      if (this.dialect === "python") this.#persistArtifacts(payload.artifacts as Array<Record<string, string>>);
      else this.#say(`Job ${jobId} completed: ${(payload.artifacts as unknown[]).length} artifacts`);
    } else if (status === "FAILED" || (this.dialect === "rust" && status === "ABORTED")) {
      row.status = "FAILED";
      row.error_message = typeof payload.error_message === "string" ? payload.error_message : "Unknown error";
    } else if (this.dialect === "rust" && status === "REJECTED") {
      row.status = "QUEUED";
      this.#queue.push(row.job.id);
    } else {
      this.#say(`Job ${jobId} concluded with unknown status: ${status}`);
    }
    this.#arrivals.notify();
  }

  #persistArtifacts(artifacts: Array<Record<string, string>>): void {
    for (const artifact of artifacts) {
      const uri = artifact.uri!;
      const match = /^([a-z][a-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)/i.exec(uri);
      if (!match || !["parquet", "file"].includes(match[1]!.toLowerCase())) continue;
      const path = decodeURIComponent(match[3]!);
      const root = this.#sourceRoots.find((r) => path.startsWith(r));
      if (root === undefined) {
        this.#say(`Artifact ${uri} is outside known SourceRoots - not persisted to FileLocation.`);
        continue;
      }
      this.locations.push(path.slice(root.length).replace(/^\//, ""));
    }
  }

  #error(key: string, jobId: bigint, payload: Record<string, unknown>): void {
    if (this.dialect === "rust" && typeof payload.message !== "string") {
      this.#say("Error handling message: invalid ERR payload");
      return;
    }
    this.#worker(key);
    const row = this.jobs.get(Number(jobId));
    if (row) {
      row.status = "FAILED";
      row.error_message = String(payload.message ?? "Unknown error");
      this.#arrivals.notify();
    }
  }

  async #tick(): Promise<void> {
    if (this.dialect === "rust") {
      const cutoff = Date.now() - this.#staleAfterMs;
      for (const [key, worker] of this.#workers) {
        if (worker.lastSeen < cutoff) {
          this.#workers.delete(key);
          this.#say(`Removing stale worker [${worker.workerId}]`);
        }
      }
    }
    const idle = [...this.#workers.values()].filter((w) => w.status === "IDLE");
    if (idle.length === 0 || this.#queue.length === 0) return;
    const row = this.jobs.get(this.#queue[0]!)!;
    const plugin = row.job.plugin_name;
    const candidate = idle.find((w) => (this.dialect === "python" ? w.capabilities.includes(plugin) : w.capabilities.some((c) => c === "*" || c === plugin)));
    if (this.dialect === "rust" && candidate === undefined) return; // left queued
    this.#queue.shift();
    row.status = "RUNNING";
    if (candidate === undefined) {
      this.#say(`No worker capable of ${plugin}. Requeuing.`);
      this.#fail(row, "No capable worker available");
      return;
    }
    if (this.dialect === "python" && (!row.job.env_hash || !row.job.source_code)) {
      this.#fail(row, `Plugin ${plugin} not compatible with Bridge Mode (missing lockfile)`);
      return;
    }
    const frames = this.dispatchFrames(row.job);
    candidate.status = "BUSY";
    await this.#router.send([candidate.identity, ...frames]);
    this.sent.push(frames);
    this.#say(`Dispatched Job ${row.job.id}`);
  }

  #fail(row: JobRow, message: string): void {
    row.status = "FAILED";
    row.error_message = message;
    this.#arrivals.notify();
  }

  /** The DISPATCH this Sentinel sends for `job`, as [header, payload]. */
  dispatchFrames(job: QueuedJob): Buffer[] {
    const rows = [...(this.#topicMap.get(job.plugin_name) ?? [])];
    const sinks = rows.map((r) => ({ topic: r.topic, uri: r.uri, mode: r.mode || "append", schema_def: r.schema_json ?? null }));
    if (!sinks.some((s) => s.topic === "output"))
      sinks.push({ topic: "output", uri: `parquet://${job.plugin_name}_output.parquet`, mode: "append", schema_def: null });
    let body: Record<string, unknown>;
    if (this.dialect === "python") {
      body = {
        plugin_name: job.plugin_name,
        file_path: job.file_path,
        sinks,
        file_version_id: job.file_version_id,
        env_hash: job.env_hash,
        source_code: job.source_code,
        artifact_hash: job.artifact_hash ?? null,
      };
    } else {
      body = {
        plugin_name: job.plugin_name,
        file_path: job.file_path,
        sinks: sinks.map(({ schema_def, ...rest }) => (schema_def === null ? rest : { ...rest, schema_def })),
        file_version_id: job.file_version_id,
        env_hash: job.env_hash ?? "system",
        source_code: job.source_code,
        ...(job.artifact_hash ? { artifact_hash: job.artifact_hash } : {}),
      };
    }
    const payload = Buffer.from(JSON.stringify(body), "utf8");
    return [header(OP.DISPATCH, BigInt(job.id), payload.length), payload];
  }
}

export interface UpstreamSentinelOptions {
  /** cf_topic_config rows; `topic` rows belong to the plugin named in `plugin` (default: every plugin). */
  topics?: Array<TopicRow & { plugin: string }>;
  /** cf_source_root paths (python dialect: artifacts under them become file locations). */
  sourceRoots?: string[];
  /** rust dialect: evict a worker not heard from for this long (upstream: 60 s). */
  staleAfterMs?: number;
}

type PluginTopicRow = TopicRow & { plugin: string };

function header(opcode: number, jobId: bigint, length: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt8(4, 0);
  b.writeUInt8(opcode, 1);
  b.writeBigUInt64BE(jobId, 4);
  b.writeUInt32BE(length, 12);
  return b;
}

/** pydantic JobReceipt: status str, metrics dict[str, int], artifacts list[dict[str, str]], error_message str | None. */
function pydanticReceiptProblem(p: Record<string, unknown>): string | null {
  if (typeof p.status !== "string") return "status: Input should be a valid string";
  if (!isObject(p.metrics) || Object.values(p.metrics).some((v) => typeof v !== "number" || !Number.isInteger(v)))
    return "metrics: Input should be a valid integer";
  if (!Array.isArray(p.artifacts) || p.artifacts.some((a) => !isObject(a) || Object.values(a).some((v) => typeof v !== "string")))
    return "artifacts: Input should be a valid dictionary of strings";
  if (p.error_message !== undefined && p.error_message !== null && typeof p.error_message !== "string") return "error_message: Input should be a valid string";
  return null;
}

/** serde JobReceipt: as above, with status one of four names and metrics fitting i64. */
function serdeReceiptProblem(p: Record<string, unknown>): string | null {
  if (!["SUCCESS", "FAILED", "REJECTED", "ABORTED"].includes(p.status as string)) return `unknown variant ${JSON.stringify(p.status)}`;
  return pydanticReceiptProblem(p);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
