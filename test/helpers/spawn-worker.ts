/**
 * Spawns the real `node bin/casparian-worker.js` with a private temp
 * CASPARIAN_HOME and output root, and collects its JSON log lines (stdout).
 * Always call `dispose()` (t.after) so no process or temp dir outlives the test.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { packageRoot } from "../../core/kernel/paths.js";
import { Arrivals } from "./arrivals.js";

/** Workers still running; killed when the test process exits, even after a test timed out before its t.after ran. */
const live = new Map<ChildProcess, string>();
process.once("exit", () => {
  for (const [child, dir] of live) {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});

export type LogLine = Record<string, unknown> & { msg?: string; level?: number };

export interface SpawnOptions {
  /** Flags after the bin; --output <temp>/output is added unless given or `outputFlag` is false. */
  args: string[];
  outputFlag?: boolean;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Use this CASPARIAN_HOME instead of a fresh temp one (e.g. to restart "the same" worker). */
  home?: string;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class SpawnedWorker {
  readonly child: ChildProcess;
  readonly dir: string;
  readonly home: string;
  readonly output: string;
  readonly logs: LogLine[] = [];
  /** Non-JSON stdout lines and all of stderr. */
  readonly text: string[] = [];
  readonly exited: Promise<Exit>;
  readonly #arrivals = new Arrivals();

  constructor(dir: string, home: string, options: SpawnOptions) {
    this.dir = dir;
    this.home = home;
    this.output = join(dir, "output");
    const args = [join(packageRoot(), "bin", "casparian-worker.js"), ...options.args];
    if (!options.args.includes("--output") && options.outputFlag !== false) args.push("--output", this.output);
    this.child = spawn(process.execPath, args, {
      cwd: options.cwd ?? dir,
      env: { ...process.env, CASPARIAN_HOME: home, ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    createInterface({ input: this.child.stdout!, crlfDelay: Infinity }).on("line", (line) => {
      try {
        this.logs.push(JSON.parse(line) as LogLine);
      } catch {
        this.text.push(line);
      }
      this.#arrivals.notify();
    });
    createInterface({ input: this.child.stderr!, crlfDelay: Infinity }).on("line", (line) => {
      this.text.push(line);
      this.#arrivals.notify();
    });
    live.set(this.child, dir);
    this.exited = new Promise((resolve) =>
      this.child.once("exit", (code, signal) => {
        live.delete(this.child);
        resolve({ code, signal });
      }),
    );
  }

  get stderr(): string {
    return this.text.join("\n");
  }

  /** The first log line matching `predicate` (already seen or still to come). */
  waitForLog(predicate: (line: LogLine) => boolean, timeoutMs = 10_000): Promise<LogLine> {
    return this.#arrivals.until(
      () => this.logs.find(predicate),
      timeoutMs,
      () => new Error(`no matching log line within ${timeoutMs} ms; last lines:\n${this.tail()}`),
    );
  }

  /** Resolves with the matching lines once there are `count` of them. */
  waitForLogs(predicate: (line: LogLine) => boolean, count: number, timeoutMs = 10_000): Promise<LogLine[]> {
    const matched: LogLine[] = [];
    let scanned = 0;
    const enough = (): LogLine[] | undefined => {
      for (; scanned < this.logs.length; scanned++) if (predicate(this.logs[scanned]!)) matched.push(this.logs[scanned]!);
      return matched.length >= count ? matched : undefined;
    };
    return this.#arrivals.until(
      enough,
      timeoutMs,
      () => new Error(`expected ${count} matching log lines within ${timeoutMs} ms, saw ${matched.length}; last lines:\n${this.tail()}`),
    );
  }

  tail(n = 20): string {
    return [...this.logs.map((l) => JSON.stringify(l)), ...this.text].slice(-n).join("\n");
  }

  /** Exit of the process, or reject after `timeoutMs` (the process is then killed). */
  async exit(timeoutMs = 15_000): Promise<Exit> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.child.kill("SIGKILL");
        reject(new Error(`worker did not exit within ${timeoutMs} ms; last lines:\n${this.tail()}`));
      }, timeoutMs);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Kill (if still running) and remove the temp dir. */
  async dispose(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGKILL");
      await this.exited;
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}

export async function spawnWorker(options: SpawnOptions): Promise<SpawnedWorker> {
  const dir = await mkdtemp(join(tmpdir(), "casparian-worker-test-"));
  return new SpawnedWorker(dir, options.home ?? join(dir, "home"), options);
}
