/**
 * Test helpers for real uv environments and real guest runs.
 *
 * `testEnvironment()` builds the shared lockfile at test/fixtures/pyenv (pandas, pyarrow,
 * polars, duckdb) into a temporary CASPARIAN_HOME through the real EnvManager; uv's cache
 * makes the second build in a suite cheap. Call it once per test file and `dispose()` at the end.
 */
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EnvManager } from "../../core/env/manager.js";
import type { JobCommand, JobContext } from "../../core/kernel/job.js";
import { silentLogger, type Logger } from "../../core/kernel/logger.js";
import type { PrepareEnvCommand } from "../../core/protocol/messages.js";
import { packageRoot } from "../../core/kernel/paths.js";

export function sha256(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

export function fixturePath(...parts: string[]): string {
  return join(packageRoot(), "test", "fixtures", ...parts);
}

export async function prepareCommand(lockfile: string, pythonVersion: string | null = null): Promise<PrepareEnvCommand> {
  return { env_hash: sha256(lockfile), lockfile_content: lockfile, python_version: pythonVersion };
}

export interface TestEnvironment {
  home: string;
  manager: EnvManager;
  envHash: string;
  interpreterPath: string;
  dispose(): Promise<void>;
}

/** The shared pandas/pyarrow/polars/duckdb environment, built in a fresh temporary home. */
export async function testEnvironment(options: { logger?: Logger } = {}): Promise<TestEnvironment> {
  const home = await mkdtemp(join(tmpdir(), "casparian-test-home-"));
  const manager = new EnvManager({ home, logger: options.logger ?? silentLogger() });
  const lock = await readFile(fixturePath("pyenv", "uv.lock"), "utf8");
  try {
    const ready = await manager.prepare(await prepareCommand(lock));
    return {
      home,
      manager,
      envHash: ready.env_hash,
      interpreterPath: ready.interpreter_path,
      dispose: () => rm(home, { recursive: true, force: true }),
    };
  } catch (err) {
    await rm(home, { recursive: true, force: true });
    throw err;
  }
}

/** A bare venv (lockfile without packages) in the given manager. */
export async function bareEnvironment(manager: EnvManager): Promise<string> {
  const lock = 'version = 1\nrequires-python = ">=3.11"\n';
  const ready = await manager.prepare(await prepareCommand(lock));
  return ready.interpreter_path;
}

export interface TestJob {
  job: JobContext;
  controller: AbortController;
}

let nextJobId = 9_007_199_254_740_993n; // > 2^53: ids are bigint end to end

/** A JobContext for a plugin source (inline text or a file under test/fixtures/plugins). */
export function testJob(sourceCode: string, options: { filePath?: string; logger?: Logger; pluginName?: string; outputRoot?: string } = {}): TestJob {
  const controller = new AbortController();
  const jobId = nextJobId++;
  const command: JobCommand = {
    pluginName: options.pluginName ?? "test_plugin",
    filePath: options.filePath ?? "/dev/null",
    sinks: [],
    fileVersionId: 18_446_744_073_709_551_615n,
    envHash: "0".repeat(64),
    sourceCode,
    artifactHash: null,
  };
  const job: JobContext = {
    jobId,
    workerId: "test-worker",
    command,
    logger: (options.logger ?? silentLogger()).child({ job_id: jobId }),
    outputRoot: options.outputRoot ?? tmpdir(),
    signal: controller.signal,
  };
  return { job, controller };
}

export async function pluginSource(name: string): Promise<string> {
  return readFile(fixturePath("plugins", name), "utf8");
}
