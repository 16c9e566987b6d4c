/**
 * Runs the real CLI, `node bin/casparian.js run ...`, as a user would, and reads
 * its Parquet output back with pyarrow from the shared test environment
 * (test/fixtures/pyenv, built once per machine with `uv sync --frozen`).
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { packageRoot } from "../../core/kernel/paths.js";
import { testPython } from "./python.js";
import { isProcessAlive as isAlive } from "../../core/kernel/process.js";

const execFileAsync = promisify(execFile);

export interface CliExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export class RunningCli {
  readonly child: ChildProcess;
  stdout = "";
  stderr = "";
  readonly exited: Promise<CliExit>;
  #waiters = new Set<() => void>();

  constructor(args: readonly string[], options: { cwd: string; home: string; env?: NodeJS.ProcessEnv }) {
    this.child = spawn(process.execPath, [join(packageRoot(), "bin", "casparian.js"), "run", ...args], {
      cwd: options.cwd,
      env: { ...process.env, CASPARIAN_HOME: options.home, ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child.stdout!.on("data", (chunk: Buffer) => {
      this.stdout += chunk.toString("utf8");
      this.#wake();
    });
    this.child.stderr!.on("data", (chunk: Buffer) => {
      this.stderr += chunk.toString("utf8");
      this.#wake();
    });
    this.exited = new Promise((resolve) => {
      this.child.once("close", (code, signal) => resolve({ code, signal, stdout: this.stdout, stderr: this.stderr }));
    });
  }

  #wake(): void {
    for (const wake of this.#waiters) wake();
  }

  /** Resolves once `predicate` holds, re-checked on output and every 50 ms. */
  async waitFor(predicate: () => boolean | Promise<boolean>, what: string, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await predicate())) {
      if (this.child.exitCode !== null) throw new Error(`CLI exited (${this.child.exitCode}) before ${what}\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`);
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          this.#waiters.delete(wake);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(wake, 50);
        this.#waiters.add(wake);
      });
    }
  }

  /** Pids of the worker processes this CLI started (its direct node children). */
  async workerPids(): Promise<number[]> {
    const { stdout } = await execFileAsync("ps", ["-o", "pid=,args=", "--ppid", String(this.child.pid)]).catch(() => ({ stdout: "" }));
    return stdout
      .split("\n")
      .filter((line) => line.includes("casparian-worker.js"))
      .map((line) => Number(line.trim().split(/\s+/)[0]));
  }

  kill(signal: NodeJS.Signals = "SIGKILL"): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }
}

/** Runs to completion (with a safety timeout that kills the CLI and fails the test). */
export async function runCli(args: readonly string[], options: { cwd: string; home: string; env?: NodeJS.ProcessEnv; timeoutMs?: number }): Promise<CliExit> {
  const cli = new RunningCli(args, options);
  const timer = setTimeout(() => cli.kill("SIGKILL"), options.timeoutMs ?? 240_000);
  try {
    return await cli.exited;
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------
// Reading results back
// ---------------------------------------------------------------------------

export { isAlive, testPython };

export interface ParquetFile {
  path: string;
  rows: Record<string, unknown>[];
  /** Column name -> Arrow type, as pyarrow prints it. */
  schema: Record<string, string>;
}

/** Reads Parquet files with pyarrow; values come back as JSON (dates as strings). */
export async function readParquet(paths: readonly string[]): Promise<ParquetFile[]> {
  if (paths.length === 0) return [];
  const python = await testPython();
  const script = `
import json, sys, pyarrow.parquet as pq
out = []
for p in sys.argv[1:]:
    t = pq.read_table(p)
    out.append({"path": p, "rows": t.to_pylist(), "schema": {f.name: str(f.type) for f in t.schema}})
print(json.dumps(out, default=str))
`;
  const { stdout } = await execFileAsync(python, ["-c", script, ...paths], { maxBuffer: 256 * 1024 * 1024 });
  return JSON.parse(stdout) as ParquetFile[];
}

/** Every file below `dir`, relative, sorted (hidden ones included: staging must be gone). */
export async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath ?? (e as unknown as { path: string }).path, e.name).slice(dir.length + 1))
    .sort();
}

export async function freshDir(base: string, name: string): Promise<string> {
  const dir = join(base, name);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  return dir;
}
