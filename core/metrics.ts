/**
 * Prometheus metrics for one worker process (prom-client), on a private Registry
 * so that embedding the worker never pollutes a host application's global one.
 * Other modules add their own metrics to `metrics.registry`.
 */
import { createServer, type Server } from "node:http";
import { Counter, Histogram, Registry, collectDefaultMetrics } from "prom-client";

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
  }
}

/** Serve `registry` as text exposition on GET /metrics (any other path: 404). Resolves once listening. */
export function serveMetrics(port: number, registry: Registry, host = "0.0.0.0"): Promise<Server> {
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
