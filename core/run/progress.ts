/**
 * What a person watching `casparian run` sees while it works, on stderr (stdout
 * is kept for the summary). On a TTY: one line redrawn in place,
 *
 *   [██████████░░░░░░░░░░]  250/500 files · 2 failed · 1,234,567 rows · 45,000 rows/s · ETA 0:06
 *
 * Files still running add what they have streamed so far ("running: 2 files, 120,000
 * rows, 14.2 MB"), from the workers' progress lines, so a long file is not a frozen bar.
 * Off a TTY (CI, a pipe): a plain line when files finish (at most every 2 s), at least
 * every 10 s while anything runs, and at the end.
 */
import { performance } from "node:perf_hooks";

export interface ProgressCounts {
  total: number;
  done: number;
  failed: number;
  rows: number;
}

export interface ProgressOptions {
  stream?: NodeJS.WriteStream;
  /** Force the TTY renderer on or off; defaults to stream.isTTY. */
  tty?: boolean;
  /** Plain mode: minimum milliseconds between lines. */
  plainIntervalMs?: number;
  /** Plain mode: a line at least this often while files run. */
  plainHeartbeatMs?: number;
}

const BAR_WIDTH = 24;

export class Progress {
  readonly #stream: NodeJS.WriteStream;
  readonly #tty: boolean;
  readonly #plainIntervalMs: number;
  readonly #plainHeartbeatMs: number;
  /** Rows and bytes streamed so far by the files still running, by input. */
  readonly #running = new Map<string, { rows: number; bytes: number }>();
  readonly #started = performance.now();
  readonly #counts: ProgressCounts;
  #timer: NodeJS.Timeout | null = null;
  #lastPlain = 0;
  #lastPlainDone = -1;
  #drawn = false;

  constructor(total: number, options: ProgressOptions = {}) {
    this.#stream = options.stream ?? process.stderr;
    this.#tty = options.tty ?? Boolean(this.#stream.isTTY);
    this.#plainIntervalMs = options.plainIntervalMs ?? 2_000;
    this.#plainHeartbeatMs = options.plainHeartbeatMs ?? 10_000;
    this.#counts = { total, done: 0, failed: 0, rows: 0 };
  }

  start(): void {
    this.#timer = this.#tty ? setInterval(() => this.#draw(), 100) : setInterval(() => this.#heartbeat(), 1_000);
    this.#timer.unref();
  }

  /** What a running input has streamed so far. */
  streaming(input: string, rows: number, bytes: number): void {
    this.#running.set(input, { rows, bytes });
  }

  /** One input finished (done counts successes and failures alike). */
  jobFinished(failed: boolean, rows: number, input?: string): void {
    if (input !== undefined) this.#running.delete(input);
    this.#counts.done++;
    if (failed) this.#counts.failed++;
    this.#counts.rows += rows;
    if (!this.#tty) this.#plain(false);
  }

  /** A message that must not be overwritten by the bar (a worker died, a retry). */
  note(message: string): void {
    if (this.#tty) {
      this.#clear();
      this.#stream.write(`${message}\n`);
      this.#draw();
    } else {
      this.#stream.write(`casparian: ${message}\n`);
    }
  }

  /** Final state, then the bar is left on screen (TTY) or a last line is printed. */
  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    if (this.#tty) {
      this.#draw();
      if (this.#drawn) this.#stream.write("\n");
    } else {
      this.#plain(true);
    }
  }

  get counts(): Readonly<ProgressCounts> {
    return this.#counts;
  }

  line(): string {
    const { total, done, failed, rows } = this.#counts;
    const seconds = (performance.now() - this.#started) / 1000;
    const rate = seconds > 0 ? rows / seconds : 0;
    const parts = [`${done}/${total} files`];
    if (failed > 0) parts.push(`${failed} failed`);
    parts.push(`${formatCount(rows)} rows`, `${formatCount(Math.round(rate))} rows/s`);
    if (this.#running.size > 0) {
      let streamedRows = 0;
      let streamedBytes = 0;
      for (const r of this.#running.values()) {
        streamedRows += r.rows;
        streamedBytes += r.bytes;
      }
      parts.push(`running: ${this.#running.size} file${this.#running.size === 1 ? "" : "s"}, ${formatCount(streamedRows)} rows, ${formatBytes(streamedBytes)}`);
    }
    if (done > 0 && done < total) parts.push(`ETA ${formatDuration((seconds / done) * (total - done))}`);
    else if (done === total) parts.push(`${formatDuration(seconds)}`);
    return parts.join(" · ");
  }

  #draw(): void {
    const { total, done } = this.#counts;
    const filled = total === 0 ? BAR_WIDTH : Math.round((done / total) * BAR_WIDTH);
    const bar = `[${"█".repeat(filled)}${"░".repeat(BAR_WIDTH - filled)}]`;
    const columns = this.#stream.columns || 100; // 0 when the terminal size is unknown
    const text = `${bar} ${this.line()}`.slice(0, Math.max(10, columns - 1));
    this.#stream.write(`\r\x1b[2K${text}`);
    this.#drawn = true;
  }

  #clear(): void {
    if (this.#drawn) this.#stream.write("\r\x1b[2K");
  }

  #heartbeat(): void {
    if (this.#counts.done < this.#counts.total && performance.now() - this.#lastPlain >= this.#plainHeartbeatMs) this.#plain(true, true);
  }

  #plain(final: boolean, heartbeat = false): void {
    const now = performance.now();
    if (!final && now - this.#lastPlain < this.#plainIntervalMs && this.#counts.done < this.#counts.total) return;
    if (!heartbeat && this.#counts.done === this.#lastPlainDone) return;
    this.#lastPlain = now;
    this.#lastPlainDone = this.#counts.done;
    this.#stream.write(`casparian: ${this.line()}\n`);
  }
}

/** One formatter for every count: toLocaleString builds a new one per call (about 0.1 ms each). */
let countFormat: Intl.NumberFormat | undefined;

export function formatCount(n: number): string {
  countFormat ??= new Intl.NumberFormat("en-US");
  return countFormat.format(n);
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

export function formatBytes(bytes: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}
