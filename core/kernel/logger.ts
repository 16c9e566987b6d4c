/**
 * One root logger for the process: JSON lines when stdout is not a TTY (for log
 * shippers), pino-pretty when a person is watching and it is installed (it is an
 * optional dependency: `npm ci --omit=optional` leaves it out, and logs stay JSON). Everything else gets a child
 * (`logger.child({ job_id })`), the way Fastify gives each request its own.
 */
import { createRequire } from "node:module";
import { pino, destination, type Logger, type LevelWithSilent } from "pino";

export type { Logger };

export interface LoggerOptions {
  level?: LevelWithSilent;
  /** Force pretty output on or off; defaults to "stdout is a TTY". */
  pretty?: boolean;
  /** Write to this file descriptor instead of stdout (2 keeps stdout free for data). */
  fd?: number;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const fd = options.fd ?? 1;
  const pretty = options.pretty ?? Boolean(fd === 1 ? process.stdout.isTTY : process.stderr.isTTY);
  const level = options.level ?? "info";
  // bigint job ids must survive into JSON logs; pino cannot serialise bigint itself.
  const serializers = { job_id: (v: unknown) => (typeof v === "bigint" ? v.toString() : v) };
  if (pretty && prettyInstalled()) {
    return pino({
      level,
      serializers,
      transport: { target: "pino-pretty", options: { destination: fd, colorize: true, translateTime: "HH:MM:ss.l", ignore: "pid,hostname" } },
    });
  }
  return pino({ level, serializers, base: { pid: process.pid } }, destination({ fd, sync: false }));
}

function prettyInstalled(): boolean {
  try {
    createRequire(import.meta.url).resolve("pino-pretty");
    return true;
  } catch {
    return false;
  }
}

/** A logger that drops everything; for library use and tests that do not care. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
