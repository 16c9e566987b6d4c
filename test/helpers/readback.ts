/**
 * Reads Parquet files back with real pyarrow and DuckDB, from a venv built from the
 * committed lockfile (test/fixtures/pyenv) with `uv sync --frozen`, once per test file.
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { packageRoot } from "../../core/paths.js";

const run = promisify(execFile);

export interface PythonEnv {
  /** The venv's python. */
  readonly python: string;
  cleanup(): Promise<void>;
}

/** Builds the shared test venv into a temporary directory. */
export async function buildPythonEnv(): Promise<PythonEnv> {
  const dir = await mkdtemp(join(tmpdir(), "casparian-pyenv-"));
  const venv = join(dir, "venv");
  try {
    await run(process.env.UV ?? "uv", ["sync", "--frozen", "--no-install-project", "--quiet"], {
      cwd: join(packageRoot(), "test", "fixtures", "pyenv"),
      env: { ...process.env, UV_PROJECT_ENVIRONMENT: venv },
      maxBuffer: 16 * 1024 * 1024,
    });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return { python: join(venv, "bin", "python"), cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export interface ReadBackColumn {
  name: string;
  /** pyarrow's str(type) or DuckDB's type name. */
  type: string;
  nullable?: boolean;
  values: unknown[];
}

export interface ReadBack {
  num_rows: number;
  row_groups?: number;
  row_group_rows?: number[];
  /** Codec of the first column chunk, e.g. "SNAPPY" (pyarrow only). */
  compression?: string | null;
  /** File key-value metadata (pyarrow only), without ARROW:schema. */
  metadata?: Record<string, string>;
  columns: ReadBackColumn[];
}

export async function readParquet(env: PythonEnv, engine: "pyarrow" | "duckdb", file: string): Promise<ReadBack> {
  const script = join(packageRoot(), "test", "fixtures", "sinks-readback", "readback.py");
  const { stdout } = await run(env.python, [script, engine, file], { maxBuffer: 256 * 1024 * 1024 });
  return JSON.parse(stdout) as ReadBack;
}

/** Runs a Python snippet in the env (argv after the script is `args`). */
export async function runPython(env: PythonEnv, code: string, args: string[] = []): Promise<string> {
  const { stdout } = await run(env.python, ["-c", code, ...args], { maxBuffer: 256 * 1024 * 1024 });
  return stdout;
}

export function columnValues(readBack: ReadBack): Record<string, unknown[]> {
  return Object.fromEntries(readBack.columns.map((c) => [c.name, c.values]));
}
