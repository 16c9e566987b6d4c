/**
 * A worker that `casparian run` started stops when the run is gone, told by the end of
 * the run's IPC channel (core/run/parent-watch.ts), not by polling the parent's pid.
 * Real processes: the real worker bin, started by the run's own WorkerProcess or
 * preloaded as it does, connecting to a Sentinel socket nobody serves (so it would
 * reconnect forever), each test in its own temp root.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { test } from "node:test";
import { packageRoot } from "../core/kernel/paths.js";
import { isProcessAlive } from "../core/kernel/process.js";
import { tempRoot } from "./helpers/temp-root.js";

const WORKER_BIN = join(packageRoot(), "bin", "casparian-worker.js");
const PARENT_WATCH = new URL("../core/run/parent-watch.js", import.meta.url).href;
const WORKER_PROCESS = new URL("../core/run/worker-process.js", import.meta.url).href;
/** Bounded waits only; how fast the worker goes is the benchmark's business, not a test's. */
const GONE_WITHIN_MS = 20_000;

/** Alive and not a zombie: an orphan that exited stays in the table until init reaps it. */
async function running(pid: number): Promise<boolean> {
  if (!isProcessAlive(pid)) return false;
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  return stat !== "" && stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
}

async function waitGone(pid: number): Promise<boolean> {
  const deadline = Date.now() + GONE_WITHIN_MS;
  while (Date.now() < deadline) {
    if (!(await running(pid))) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return false;
}

function workerArgs(dir: string): string[] {
  return ["--connect", `ipc://${join(dir, "nobody.sock")}`, "--output", join(dir, "output"), "--worker-id", "w-watch", "--grace", "0"];
}

test("the channel ending while the parent lives stops the worker: it is the channel, not the parent's pid, that tells", async (t) => {
  const dir = await tempRoot(t, "parent-watch");
  const child = spawn(process.execPath, ["--import", PARENT_WATCH, WORKER_BIN, ...workerArgs(dir)], {
    env: { ...process.env, CASPARIAN_HOME: join(dir, "home") },
    stdio: ["ignore", "pipe", "pipe", "ipc"],
  });
  t.after(() => void child.kill("SIGKILL"));
  const output: string[] = [];
  createInterface({ input: child.stderr! }).on("line", (line) => output.push(line));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  // Wait until the worker runs (its first log line), so the preload has been loaded.
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once("line", () => resolve());
    child.once("exit", () => reject(new Error(`worker exited before logging: ${output.join("\n")}`)));
  });
  assert.ok(child.connected, "the worker has the IPC channel");

  child.disconnect();
  const timeout = new Promise<"still running">((resolve) => setTimeout(() => resolve("still running"), GONE_WITHIN_MS).unref());
  const exit = await Promise.race([exited, timeout]);
  assert.notEqual(exit, "still running", "the worker stopped once its channel ended");
  assert.ok(
    exit !== "still running" && (exit.code === 0 || exit.signal === "SIGTERM"),
    `a clean SIGTERM stop, not a crash: ${JSON.stringify(exit)} ${output.join("\n")}`,
  );
});

test("the run's process killed with SIGKILL: the worker it started stops on its own", async (t) => {
  const dir = await tempRoot(t, "parent-watch");
  // A stand-in for `casparian run`: starts one worker exactly as the run does (WorkerProcess), then idles.
  const launcher = join(dir, "launcher.mjs");
  await writeFile(
    launcher,
    [
      `import { WorkerProcess } from ${JSON.stringify(WORKER_PROCESS)};`,
      `const worker = new WorkerProcess({ workerId: "w-watch", endpoint: ${JSON.stringify(`ipc://${join(dir, "nobody.sock")}`)}, outputRoot: ${JSON.stringify(join(dir, "output"))}, logLevel: "info", heartbeatSeconds: 5 });`,
      "console.log(JSON.stringify({ pid: worker.pid }));",
      "setInterval(() => {}, 60_000);",
    ].join("\n"),
  );
  const run = spawn(process.execPath, [launcher], { env: { ...process.env, CASPARIAN_HOME: join(dir, "home") }, stdio: ["ignore", "pipe", "inherit"] });
  t.after(() => void run.kill("SIGKILL"));
  const first = await new Promise<string>((resolve) => createInterface({ input: run.stdout! }).once("line", resolve));
  const workerPid = (JSON.parse(first) as { pid: number }).pid;
  t.after(() => {
    if (isProcessAlive(workerPid)) process.kill(workerPid, "SIGKILL");
  });
  assert.ok(await running(workerPid), "the worker is up");

  run.kill("SIGKILL");
  await new Promise((resolve) => run.once("exit", resolve));
  assert.ok(await waitGone(workerPid), `worker ${workerPid} stopped within ${GONE_WITHIN_MS} ms of its run's death`);
});
