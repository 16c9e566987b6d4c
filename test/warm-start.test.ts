/**
 * A warm guest started before the first DISPATCH (core/worker/warm-start.ts): `casparian run`
 * tells its workers the plugin and env (--warm-start-*), and the worker starts the plugin's
 * warm parent as soon as the env is there, on its own start or after the PREPARE_ENV that
 * built it. Real worker processes, a real ZeroMQ Sentinel, real Python.
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parseWorkerFlags } from "../core/cli/cli.js";
import { EnvManager } from "../core/env/manager.js";
import { silentLogger } from "../core/kernel/logger.js";
import { Opcode, type DispatchCommand } from "../core/protocol/messages.js";
import { bareEnvironment, fixturePath, prepareCommand, sha256 } from "./helpers/pyenv.js";
import { runCli } from "./helpers/run-cli.js";
import { TestSentinel } from "./helpers/sentinel.js";
import { spawnWorker, type SpawnedWorker } from "./helpers/spawn-worker.js";

const BARE_LOCK = 'version = 1\nrequires-python = ">=3.11"\n';
const STARTED_AHEAD = "warm guest started ahead of the first job";
const READY_AHEAD = "warm guest started ahead is ready";

let root: string;
/** A CASPARIAN_HOME whose bare env is built already. */
let builtHome: string;
let probe: string;
let probeFile: string;
let inputs = 0;

before(async () => {
  root = await mkdtemp(join(tmpdir(), "casparian-warm-start-test-"));
  builtHome = join(root, "home");
  await bareEnvironment(new EnvManager({ home: builtHome, logger: silentLogger() }));
  probe = await readFile(fixturePath("warm", "probe.py"), "utf8");
  probeFile = join(root, "probe.py");
  await writeFile(probeFile, probe);
});

after(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

async function input(): Promise<string> {
  const path = join(root, `${inputs++}.txt`);
  await writeFile(path, "look");
  return path;
}

/** IDENTIFY, PREPARE_ENV of the bare env, then `count` jobs of the probe one after the other: their guest_warm. */
async function runJobs(sentinel: TestSentinel, worker: SpawnedWorker, count: number, beforeDispatch?: () => Promise<unknown>): Promise<number[]> {
  const { identity } = await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 20_000 });
  await sentinel.send(identity, Opcode.PREPARE_ENV, 0n, await prepareCommand(BARE_LOCK));
  await sentinel.expect(Opcode.ENV_READY, { timeoutMs: 120_000 });
  await beforeDispatch?.();
  const warm: number[] = [];
  for (let jobId = 1n; jobId <= BigInt(count); jobId++) {
    const command: DispatchCommand = {
      plugin_name: "probe",
      file_path: await input(),
      sinks: [],
      file_version_id: jobId,
      env_hash: sha256(BARE_LOCK),
      source_code: probe,
      artifact_hash: null,
    };
    await sentinel.send(identity, Opcode.DISPATCH, jobId, command);
    const { message } = await sentinel.expect(Opcode.CONCLUDE, { jobId, timeoutMs: 60_000 });
    assert.equal(message.payload.status, "SUCCESS", `${message.payload.error_message ?? ""}\n${worker.tail()}`);
    warm.push(Number(message.payload.metrics.guest_warm));
  }
  return warm;
}

async function worker(t: { after(fn: () => Promise<void>): void }, hint: string[], home?: string): Promise<{ sentinel: TestSentinel; worker: SpawnedWorker }> {
  const sentinel = await TestSentinel.bind();
  const spawned = await spawnWorker({ args: ["--connect", sentinel.endpoint, "--worker-id", `ahead-${inputs}`, ...hint], home });
  t.after(async () => {
    await spawned.dispose();
    await sentinel.close();
  });
  return { sentinel, worker: spawned };
}

const hintFor = (pluginFile: string, envHash = sha256(BARE_LOCK), name = "probe") => [
  "--warm-start-env",
  envHash,
  "--warm-start-plugin",
  pluginFile,
  "--warm-start-name",
  name,
];

describe("warm guests started ahead of the first DISPATCH", () => {
  test("env already built: the parent starts with the worker, and the first job is forked warm like the others", async (t) => {
    const { sentinel, worker: w } = await worker(t, hintFor(probeFile), builtHome);
    const warm = await runJobs(sentinel, w, 3, () => w.waitForLog((l) => l.msg === READY_AHEAD, 60_000));
    assert.deepEqual(warm, [1, 1, 1]);
    assert.equal(w.logs.filter((l) => l.msg === STARTED_AHEAD).length, 1);
  });

  test("env built by the PREPARE_ENV: the parent starts once it is ready", async (t) => {
    const { sentinel, worker: w } = await worker(t, hintFor(probeFile));
    const warm = await runJobs(sentinel, w, 2, () => w.waitForLog((l) => l.msg === READY_AHEAD, 60_000));
    assert.deepEqual(warm, [1, 1]);
  });

  test("a hint that does not fit the jobs changes nothing: another source, an env that is not there", async (t) => {
    const other = join(root, "other.py");
    await writeFile(other, `${probe}\n# another source, another parent\n`);
    const { sentinel, worker: w } = await worker(t, hintFor(other), builtHome);
    await w.waitForLog((l) => l.msg === READY_AHEAD, 60_000);
    // The jobs' source differs from the hint's: they get a parent of their own, as without a hint.
    assert.deepEqual(await runJobs(sentinel, w, 2), [0, 1]);

    const missing = await worker(t, hintFor(probeFile, sha256("a lock no worker has")), builtHome);
    assert.deepEqual(await runJobs(missing.sentinel, missing.worker, 2), [0, 1]);
    assert.equal(missing.worker.logs.filter((l) => l.msg === STARTED_AHEAD).length, 0);
  });

  test("the three flags go together", () => {
    assert.throws(() => parseWorkerFlags(["--warm-start-env", sha256(BARE_LOCK)]), /go together/);
    assert.equal(parseWorkerFlags([]).warmStart, undefined);
    assert.deepEqual(parseWorkerFlags(hintFor(probeFile)).warmStart, { envHash: sha256(BARE_LOCK), pluginFile: probeFile, pluginName: "probe" });
  });

  test("`casparian run` starts each worker's warm guest before its first job", async () => {
    const dir = await mkdtemp(join(root, "run-"));
    const data = join(dir, "data");
    await mkdir(data);
    for (let i = 0; i < 3; i++) await writeFile(join(data, `${i}.csv`), "n\n1\n");
    const plugin = join(dir, "plugin.py");
    await writeFile(plugin, "class Handler:\n    def execute(self, path):\n        return {'n': [1]}\n");
    const home = join(dir, "home");
    const exit = await runCli([plugin, data, "--workers", "2", "--output", join(dir, "out")], { cwd: dir, home });
    assert.equal(exit.code, 0, exit.stderr);
    const logs = await readdir(join(home, "logs"));
    assert.equal(logs.length, 1);
    const lines = (await readFile(join(home, "logs", logs[0]!), "utf8")).split("\n").filter((l) => l.startsWith("{"));
    const ahead = lines.map((l) => JSON.parse(l) as { msg?: string; plugin?: string }).filter((l) => l.msg === STARTED_AHEAD);
    assert.deepEqual(
      ahead.map((l) => l.plugin),
      ["plugin", "plugin"],
    );
  });
});
