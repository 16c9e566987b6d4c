/**
 * The shared test Python (pandas, pyarrow, polars, duckdb), built once per machine from the
 * committed lockfile test/fixtures/pyenv/uv.lock with `uv sync --frozen`, cached in the temp
 * directory under the lock's hash. Used to read outputs back; plugins get their environments
 * from the worker's own EnvManager instead.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { rename, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { packageRoot } from "../../core/kernel/paths.js";

const execFileAsync = promisify(execFile);

let pyenvPython: Promise<string> | null = null;

/**
 * The interpreter of the shared test environment (pandas, pyarrow, duckdb), built
 * from test/fixtures/pyenv/uv.lock into a machine-wide cache keyed by the lock's hash.
 */
export function testPython(): Promise<string> {
  pyenvPython ??= (async () => {
    const project = join(packageRoot(), "test", "fixtures", "pyenv");
    const hash = createHash("sha256")
      .update(readFileSync(join(project, "uv.lock")))
      .digest("hex")
      .slice(0, 16);
    const venv = join(tmpdir(), `casparian-test-pyenv-${hash}`);
    const python = join(venv, "bin", "python");
    if (existsSync(python)) return python;
    const building = `${venv}.build-${process.pid}`;
    await rm(building, { recursive: true, force: true });
    await execFileAsync(process.env.UV ?? "uv", ["sync", "--frozen", "--no-dev", "--no-install-project", "--quiet", "--project", project], {
      env: { ...process.env, UV_PROJECT_ENVIRONMENT: building },
      maxBuffer: 16 * 1024 * 1024,
    });
    // Another test process may have renamed its build into place first: then use that one.
    await rename(building, venv).catch(async () => rm(building, { recursive: true, force: true }));
    if (!existsSync(python)) throw new Error(`test environment at ${venv} has no python`);
    await execFileAsync(python, ["-c", "import pyarrow"]);
    return python;
  })();
  return pyenvPython;
}
