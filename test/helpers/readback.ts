/**
 * Reads Parquet files back with real pyarrow and DuckDB, from a venv built from the
 * committed lockfile (test/fixtures/pyenv) with `uv sync --frozen`, cached per machine.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { packageRoot } from "../../core/kernel/paths.js";
import { testPython } from "./python.js";

const run = promisify(execFile);

export interface PythonEnv {
  /** The venv's python. */
  readonly python: string;
  cleanup(): Promise<void>;
}

/** The shared test venv (see python.ts); nothing to clean up, it is cached per machine. */
export async function buildPythonEnv(): Promise<PythonEnv> {
  return { python: await testPython(), cleanup: async () => undefined };
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
