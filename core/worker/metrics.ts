/**
 * Prometheus metrics for one worker process (prom-client), on a private Registry
 * so that embedding the worker never pollutes a host application's global one.
 * Other modules add their own metrics to `metrics.registry`.
 */
import { createServer, type Server } from "node:http";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { Stage, type TapOnlyHooks, type WorkerPlugin } from "../../hooks/index.js";

export class WorkerMetrics {
  readonly registry: Registry;
  /** Jobs finished, by receipt status (SUCCESS | FAILED). */
  readonly jobsTotal: Counter<"status">;
  /** Wall time from DISPATCH taken off the queue to CONCLUDE sent. */
  readonly jobDuration: Histogram;
  readonly messagesIn: Counter<"opcode">;
  readonly messagesOut: Counter<"opcode">;
  /** Dropped inbound messages, by error code. */
  readonly malformedMessages: Counter<"code">;
  /** Rows published by plugins, by topic (from receipts). */
  readonly rowsTotal: Counter<"topic">;
  /** Arrow IPC bytes received from guests. */
  readonly ipcBytesTotal: Counter;
  /** Where a job's time goes: dispatch, guest_start, plugin, write, commit. */
  readonly jobStageSeconds: Histogram<"stage">;
  /** PREPARE_ENV answered, by whether the environment already existed. */
  readonly envsPrepared: Counter<"cached">;

  constructor(options: { registry?: Registry; processMetrics?: boolean } = {}) {
    this.registry = options.registry ?? new Registry();
    const registers = [this.registry];
    if (options.processMetrics) collectDefaultMetrics({ register: this.registry, prefix: "casparian_" });
    this.jobsTotal = new Counter({ name: "casparian_jobs_total", help: "Jobs concluded, by status", labelNames: ["status"], registers });
    this.jobDuration = new Histogram({
      name: "casparian_job_duration_seconds",
      help: "Job duration from start to CONCLUDE",
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600],
      registers,
    });
    this.messagesIn = new Counter({ name: "casparian_messages_in_total", help: "Protocol messages received, by opcode", labelNames: ["opcode"], registers });
    this.messagesOut = new Counter({ name: "casparian_messages_out_total", help: "Protocol messages sent, by opcode", labelNames: ["opcode"], registers });
    this.malformedMessages = new Counter({
      name: "casparian_malformed_messages_total",
      help: "Inbound messages dropped as malformed, by error code",
      labelNames: ["code"],
      registers,
    });
    this.rowsTotal = new Counter({ name: "casparian_rows_total", help: "Rows published by plugins, by topic", labelNames: ["topic"], registers });
    this.ipcBytesTotal = new Counter({ name: "casparian_ipc_bytes_total", help: "Arrow IPC bytes received from guests", registers });
    this.jobStageSeconds = new Histogram({
      name: "casparian_job_stage_seconds",
      help: "Time per job stage: dispatch (hooks and sink open), guest_start, plugin, write (sinks taking batches), commit",
      labelNames: ["stage"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 600],
      registers,
    });
    this.envsPrepared = new Counter({ name: "casparian_envs_prepared_total", help: "PREPARE_ENV answered, by cache hit", labelNames: ["cached"], registers });
  }

  /**
   * Gauges of the warm guest parents (core/bridge/warm-pool.ts), read from `stats` at each
   * scrape: how many are alive and their total resident memory (a job's child shares its
   * parent's pages, so this is what keeping the imports warm costs).
   */
  observeWarmGuests(stats: () => { parents: number; rssBytes: number }): void {
    const registers = [this.registry];
    new Gauge({
      name: "casparian_warm_guests",
      help: "Warm guest parents alive (one per environment and plugin source)",
      registers,
      collect() {
        this.set(stats().parents);
      },
    });
    new Gauge({
      name: "casparian_warm_guests_resident_bytes",
      help: "Resident memory of all warm guest parents, read from /proc at scrape time",
      registers,
      collect() {
        this.set(stats().rssBytes);
      },
    });
  }
}

const STAGE_METRICS = { dispatch: "dispatch_ms", guest_start: "guest_start_ms", plugin: "plugin_ms", write: "write_ms", commit: "commit_ms" } as const;
const TOPIC_ROWS = "rows.";

/** Feeds job and environment metrics from the hooks, as an observer (webpack-style plugin). */
export class MetricsPlugin implements WorkerPlugin {
  readonly name = "Metrics";
  readonly #metrics: WorkerMetrics;

  constructor(metrics: WorkerMetrics) {
    this.#metrics = metrics;
  }

  apply(hooks: TapOnlyHooks): void {
    const tap = { name: this.name, stage: Stage.OBSERVE };
    hooks.afterConclude.tapPromise(tap, async (receipt) => {
      const m = receipt.metrics;
      for (const [key, value] of Object.entries(m)) {
        if (key.startsWith(TOPIC_ROWS)) this.#metrics.rowsTotal.inc({ topic: key.slice(TOPIC_ROWS.length) }, Number(value));
      }
      if (m.ipc_bytes !== undefined) this.#metrics.ipcBytesTotal.inc(Number(m.ipc_bytes));
      for (const [stage, key] of Object.entries(STAGE_METRICS)) {
        const ms = m[key];
        if (ms !== undefined) this.#metrics.jobStageSeconds.observe({ stage }, Number(ms) / 1000);
      }
    });
    hooks.envReady.tapPromise(tap, async (env) => {
      this.#metrics.envsPrepared.inc({ cached: String(env.cached) });
    });
  }
}

/**
 * Serve `registry` as text exposition on GET /metrics (any other path: 404). Resolves once
 * listening. Loopback only unless another host is configured: the metrics name plugins and topics.
 */
export function serveMetrics(port: number, registry: Registry, host = "127.0.0.1"): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== "GET" || (req.url ?? "/").split("?")[0] !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found; metrics are at /metrics\n");
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { "content-type": registry.contentType }).end(text),
      (err: unknown) => res.writeHead(500, { "content-type": "text/plain" }).end(`${String(err)}\n`),
    );
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve(server);
    });
  });
}
