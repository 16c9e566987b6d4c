/**
 * One local worker process: `node bin/casparian-worker.js`, started by `casparian
 * run`, with its own private output root. Keeps the last lines of its output, so
 * that a worker that dies can be explained, and tells when it exits.
 */
import { spawn, type ChildProcess } from "node:child_process";
import type { WriteStream } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { packageRoot } from "../kernel/paths.js";
import { PROGRESS_MESSAGE } from "../worker/progress-log.js";

export interface WorkerProcessOptions {
  workerId: string;
  endpoint: string;
  /** The worker's private output root; the run promotes finished files from here. */
  outputRoot: string;
  configFile?: string;
  logLevel: string;
  heartbeatSeconds: number;
  /** Every line the worker prints goes here too (the run's log file). */
  log?: WriteStream;
  /** Also echo the worker's lines to our stderr (--log-level debug). */
  echo?: boolean;
  /** Rows and bytes a running job has streamed so far (the worker's `job progress` lines, every second). */
  onProgress?(jobId: bigint, rows: number, bytes: number): void;
  /** The plugin every job of the run runs: the worker starts its warm guest before the first DISPATCH. */
  warmStart?: { envHash: string; pluginFile: string; pluginName: string };
  /** bridge.warm.prefaultMb for a config that sets none (--warm-prefault-default). */
  warmPrefaultDefaultMb?: number;
}

export interface WorkerExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const TAIL_LINES = 30;
/** How a worker's `job progress` log line is recognised without parsing every line. */
const PROGRESS_MARKER = `"msg":"${PROGRESS_MESSAGE}"`;
/** A line longer than this is passed on in pieces rather than held whole (a worker printing without newlines). */
const MAX_PENDING_LINE = 1024 * 1024;

/**
 * V8 flags of a worker process. A young generation of 2 MiB semi-spaces instead of 16: the
 * worker allocates a little per frame, and with 16 MiB V8 kept 32 MiB of new space resident
 * and collected dead socket reads and one-row batches late. On the bridge bench, 100,000
 * one-row chunks peaked at 182 MB instead of 210, 3 M rows at 228 instead of 238, with no
 * measurable slowdown on 64 Ki-row chunks and about 4% more CPU on one-row chunks.
 */
export const WORKER_NODE_FLAGS = ["--max-semi-space-size=2"] as const;

export class WorkerProcess {
  readonly id: string;
  readonly outputRoot: string;
  readonly exited: Promise<WorkerExit>;
  readonly #child: ChildProcess;
  readonly #lines = new RecentLines(TAIL_LINES);
  #exit: WorkerExit | null = null;

  constructor(options: WorkerProcessOptions) {
    this.id = options.workerId;
    this.outputRoot = options.outputRoot;
    const args = [
      ...WORKER_NODE_FLAGS,
      // Stop with the run even when it is killed too hard to stop us itself.
      "--import",
      new URL("./parent-watch.js", import.meta.url).href,
      join(packageRoot(), "bin", "casparian-worker.js"),
      "--connect",
      options.endpoint,
      "--output",
      options.outputRoot,
      "--worker-id",
      options.workerId,
      "--heartbeat-interval",
      String(options.heartbeatSeconds),
      // Ctrl-C in a terminal reaches the workers too: they abort at once, as the run does.
      "--grace",
      "0",
      "--log-level",
      options.logLevel,
      "--progress-interval",
      "1",
    ];
    if (options.configFile !== undefined) args.push("--config", options.configFile);
    const ahead = options.warmStart;
    if (ahead !== undefined) args.push("--warm-start-env", ahead.envHash, "--warm-start-plugin", ahead.pluginFile, "--warm-start-name", ahead.pluginName);
    if (options.warmPrefaultDefaultMb !== undefined) args.push("--warm-prefault-default", String(options.warmPrefaultDefaultMb));
    // The IPC channel carries no messages: it ends when this process does, which is how
    // the worker learns that the run is gone (parent-watch.ts).
    this.#child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe", "ipc"] });
    this.#child.channel?.unref();
    for (const stream of [this.#child.stdout!, this.#child.stderr!]) {
      if (options.echo === true) {
        // --log-level debug: every line echoed with the worker's name, as it comes.
        createInterface({ input: stream, crlfDelay: Infinity }).on("line", (line) => {
          this.#lines.push(`${line}\n`);
          options.log?.write(`${line}\n`);
          if (options.onProgress !== undefined && line.includes(PROGRESS_MARKER)) readProgress(line, options.onProgress);
          process.stderr.write(`[${this.id}] ${line}\n`);
        });
        continue;
      }
      // Otherwise whole lines in blocks: one write per read instead of one per line (a worker logs
      // about ten lines per job), and a line is only looked at when it carries a progress record.
      const lines = new LineBlocks();
      // Decoded as a stream: a character split between two reads stays whole.
      stream.setEncoding("utf8");
      stream.on("data", (chunk: string) => {
        const block = lines.push(chunk);
        if (block !== null) this.#take(block, options);
      });
      stream.on("end", () => {
        const rest = lines.end();
        if (rest !== null) this.#take(rest, options);
      });
    }
    this.exited = new Promise((resolve) => {
      // "close" waits for the output pipes too, so the tail is complete when it fires.
      this.#child.once("close", (code, signal) => resolve((this.#exit = { code, signal })));
      this.#child.once("error", (err) => {
        this.#lines.push(`failed to start: ${err.message}\n`);
        resolve((this.#exit = { code: null, signal: null }));
      });
    });
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  get alive(): boolean {
    return this.#exit === null;
  }

  /** Complete lines of output, each ending in a newline: to the log, to the tail, progress read. */
  #take(block: string, options: WorkerProcessOptions): void {
    this.#lines.push(block);
    options.log?.write(block);
    if (options.onProgress === undefined) return;
    for (let at = block.indexOf(PROGRESS_MARKER); at >= 0; at = block.indexOf(PROGRESS_MARKER, at + 1)) {
      const start = block.lastIndexOf("\n", at) + 1;
      const end = block.indexOf("\n", at);
      readProgress(block.slice(start, end < 0 ? undefined : end), options.onProgress);
    }
  }

  /** The worker's last output lines (at most TAIL_LINES), oldest first. */
  tail(): string[] {
    return this.#lines.last(TAIL_LINES);
  }

  /** The last error a JSON log line of the worker carries (or a plain line mentioning one); null when none. */
  lastError(): string | null {
    const tail = this.tail();
    for (let i = tail.length - 1; i >= 0; i--) {
      const line = tail[i]!;
      try {
        const record = JSON.parse(line) as { level?: number; msg?: string; err?: { message?: string } };
        if ((record.level ?? 0) >= 50) return record.err?.message ?? record.msg ?? line;
      } catch {
        if (/error/i.test(line)) return line;
      }
    }
    return null;
  }

  kill(signal: NodeJS.Signals): void {
    if (this.#exit === null) this.#child.kill(signal);
  }

  /** TERM, then KILL after `graceMs`; resolves once the process is gone. */
  async stop(graceMs: number): Promise<WorkerExit> {
    if (this.#exit !== null) return this.#exit;
    this.kill("SIGTERM");
    const timer = setTimeout(() => this.kill("SIGKILL"), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

function readProgress(line: string, onProgress: NonNullable<WorkerProcessOptions["onProgress"]>): void {
  try {
    const record = JSON.parse(line) as { job_id?: unknown; rows?: unknown; ipc_bytes?: unknown };
    if (typeof record.job_id === "string" && typeof record.rows === "number" && typeof record.ipc_bytes === "number")
      onProgress(BigInt(record.job_id), record.rows, record.ipc_bytes);
  } catch {
    // Not a log record of ours: only counts for the log file.
  }
}

export function describeExit(exit: WorkerExit): string {
  if (exit.signal !== null) return `killed by ${exit.signal}`;
  if (exit.code !== null) return `exited with code ${exit.code}`;
  return "could not be started";
}

/** Splits a stream's chunks into blocks of whole lines; what follows the last newline waits for the next chunk. */
export class LineBlocks {
  #pending = "";

  /** The complete lines so far (each ending in a newline), or null when none is complete yet. */
  push(chunk: string): string | null {
    const text = this.#pending + chunk;
    const last = text.lastIndexOf("\n");
    if (last < 0) {
      if (text.length <= MAX_PENDING_LINE) {
        this.#pending = text;
        return null;
      }
      this.#pending = "";
      return `${text}\n`;
    }
    this.#pending = text.slice(last + 1);
    return last === text.length - 1 ? text : text.slice(0, last + 1);
  }

  /** The stream ended: its last line, when it had no newline. */
  end(): string | null {
    const rest = this.#pending;
    this.#pending = "";
    return rest === "" ? null : `${rest}\n`;
  }
}

/** The last lines of blocks of whole lines, kept as the blocks (split only when asked for). */
export class RecentLines {
  readonly #keep: number;
  readonly #blocks: Array<{ text: string; lines: number }> = [];
  #lines = 0;

  constructor(keep: number) {
    this.#keep = keep;
  }

  /** `block`: whole lines, each ending in a newline. */
  push(block: string): void {
    let lines = 0;
    for (let at = block.indexOf("\n"); at >= 0; at = block.indexOf("\n", at + 1)) lines++;
    this.#blocks.push({ text: block, lines });
    this.#lines += lines;
    while (this.#blocks.length > 1 && this.#lines - this.#blocks[0]!.lines >= this.#keep) this.#lines -= this.#blocks.shift()!.lines;
  }

  /** The last `count` lines, oldest first, without their newlines. */
  last(count: number): string[] {
    const lines = this.#blocks
      .map((b) => b.text)
      .join("")
      .split("\n");
    lines.pop(); // after the last newline
    return lines.slice(-count);
  }
}
