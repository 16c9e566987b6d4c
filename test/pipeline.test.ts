/**
 * The whole worker, end to end: a Sentinel on a real ROUTER socket drives the real
 * worker process (bin/casparian-worker.js with the repository's casparian.config.ts)
 * through PREPARE_ENV and DISPATCH; a real uv environment runs a real pandas plugin;
 * its two topics land in two different sinks (bundled Parquet, example JSON Lines).
 * Then the crash case: kill -9 in the middle of a job.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { Opcode, type DispatchCommand, type SinkConfig } from "../core/protocol/messages.js";
import { packageRoot } from "../core/kernel/paths.js";
import { TestSentinel, type Received } from "./helpers/sentinel.js";
import { spawnWorker, type SpawnedWorker } from "./helpers/spawn-worker.js";
import { isProcessAlive } from "../core/kernel/process.js";

const execFileAsync = promisify(execFile);

const ROOT = packageRoot();
const CONFIG = join(ROOT, "casparian.config.ts");

const TWO_TOPIC_PLUGIN = `
import pandas as pd

class Handler:
    def configure(self, ctx, config):
        self.ctx = ctx
        self.rejects = ctx.register_topic("rejects")

    def execute(self, path):
        lines = open(path, encoding="utf-8").read().splitlines()[1:]
        rows = [line.split(",") for line in lines]
        good = [r for r in rows if r[1].strip().isdigit()]
        bad = [",".join(r) for r in rows if not r[1].strip().isdigit()]
        self.ctx.publish(self.rejects, pd.DataFrame({"line": bad}))
        return [pd.DataFrame({"name": [r[0] for r in good], "qty": [int(r[1]) for r in good]})]
`;

/** Publishes one chunk, then hangs: the worker is killed while the sink holds staging. */
function slowPlugin(pidFile: string): string {
  return `
import os, time
import pyarrow as pa

class Handler:
    def execute(self, path):
        open(${JSON.stringify(pidFile)}, "w").write(str(os.getpid()))
        yield pa.table({"n": list(range(1000))})
        time.sleep(120)
        yield pa.table({"n": [1]})
`;
}

function dispatch(sourceCode: string, filePath: string, envHash: string, sinks: SinkConfig[]): DispatchCommand {
  return {
    plugin_name: "pipeline_test",
    file_path: filePath,
    sinks,
    file_version_id: 9007199254740993n,
    env_hash: envHash,
    source_code: sourceCode,
    artifact_hash: null,
  };
}

async function findFiles(dir: string, pattern: RegExp): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true }).catch(() => [] as string[]);
  return entries.filter((name) => pattern.test(name)).map((name) => join(dir, name));
}

async function until<T>(probe: () => Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("worker pipeline (sentinel → worker → uv env → guest → sinks)", () => {
  let sentinel: TestSentinel;
  let worker: SpawnedWorker;
  let identity: Buffer;
  let envHash: string;
  let interpreter: string;
  const spawned: SpawnedWorker[] = [];

  before(async () => {
    sentinel = await TestSentinel.bind();
    worker = await spawnWorker({ args: ["--connect", sentinel.endpoint, "--config", CONFIG, "--worker-id", "pipeline-1", "--metrics-port", "0"] });
    spawned.push(worker);
    identity = (await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 20_000 })).identity;

    const lockfile = await readFile(join(ROOT, "test", "fixtures", "pyenv", "uv.lock"), "utf8");
    envHash = createHash("sha256").update(lockfile).digest("hex");
    await sentinel.send(identity, Opcode.PREPARE_ENV, 0n, { env_hash: envHash, lockfile_content: lockfile, python_version: null });
    const ready = await sentinel.expect(Opcode.ENV_READY, { timeoutMs: 300_000 });
    assert.equal(ready.message.payload.env_hash, envHash);
    interpreter = ready.message.payload.interpreter_path;
  });

  after(async () => {
    for (const w of spawned) await w.dispose();
    await sentinel.close();
  });

  test("two topics go to two sinks; the receipt lists both artifacts and per-topic rows", async () => {
    const input = join(worker.dir, "items.csv");
    await writeFile(input, "name,qty\napple,3\npear,x\nkiwi,5\n");
    const jobId = 18446744073709551615n; // 2^64-1: the id must survive the whole trip
    const sinks: SinkConfig[] = [
      { topic: "output", uri: "parquet://tables/items.parquet", mode: "append", schema_def: null },
      { topic: "rejects", uri: "jsonl://rejects/items.jsonl", mode: "replace", schema_def: null },
    ];
    await sentinel.send(identity, Opcode.DISPATCH, jobId, dispatch(TWO_TOPIC_PLUGIN, input, envHash, sinks));
    const { message } = await sentinel.expect(Opcode.CONCLUDE, { jobId, timeoutMs: 120_000 });
    const receipt = message.payload;
    assert.equal(receipt.status, "SUCCESS", receipt.error_message ?? "");
    assert.equal(receipt.metrics["rows.output"], 2);
    assert.equal(receipt.metrics["rows.rejects"], 1);

    const parquetPath = join(worker.output, "tables", `items_${jobId}.parquet`);
    const jsonlPath = join(worker.output, "rejects", "items.jsonl");
    assert.deepEqual(
      [...receipt.artifacts].sort((a, b) => a.topic.localeCompare(b.topic)),
      [
        { topic: "output", uri: `parquet://${parquetPath}` },
        { topic: "rejects", uri: `jsonl://${jsonlPath}` },
      ],
    );

    // Read the Parquet file back with pyarrow from the job's own environment.
    const read = await execFileAsync(interpreter, [
      "-c",
      "import json,sys,pyarrow.parquet as pq; t=pq.read_table(sys.argv[1]); print(json.dumps({k:[str(x) for x in v] for k,v in t.to_pydict().items()}))",
      parquetPath,
    ]);
    const columns = JSON.parse(read.stdout) as Record<string, string[]>;
    assert.deepEqual(columns.name, ["apple", "kiwi"]);
    assert.deepEqual(columns.qty, ["3", "5"]);
    assert.deepEqual(columns._job_id, [jobId.toString(), jobId.toString()]);
    assert.deepEqual(columns._file_version_id, ["9007199254740993", "9007199254740993"]);

    const rejects = (await readFile(jsonlPath, "utf8"))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { line: string });
    assert.deepEqual(
      rejects.map((r) => r.line),
      ["pear,x"],
    );

    // The same job as Prometheus sees it.
    const served = await worker.waitForLog((l) => l.msg === "serving Prometheus metrics on /metrics");
    const metrics = await (await fetch(`http://127.0.0.1:${String(served.port)}/metrics`)).text();
    assert.match(metrics, /^casparian_rows_total\{topic="output"\} 2$/m);
    assert.match(metrics, /^casparian_rows_total\{topic="rejects"\} 1$/m);
    assert.match(metrics, /^casparian_envs_prepared_total\{cached="false"\} 1$/m);
    assert.match(metrics, /^casparian_job_stage_seconds_count\{stage="guest_start"\} 1$/m);
  });

  test("a topic with an unknown sink scheme fails the job and names the known schemes", async () => {
    const input = join(worker.dir, "items.csv");
    const sinks: SinkConfig[] = [{ topic: "output", uri: "s3://bucket/key", mode: "append", schema_def: null }];
    await sentinel.send(identity, Opcode.DISPATCH, 7n, dispatch(TWO_TOPIC_PLUGIN, input, envHash, sinks));
    const { message } = await sentinel.expect(Opcode.CONCLUDE, { jobId: 7n, timeoutMs: 60_000 });
    assert.equal(message.payload.status, "FAILED");
    assert.match(message.payload.error_message ?? "", /CSP_SINK_UNKNOWN_SCHEME/);
    assert.match(message.payload.error_message ?? "", /parquet/);
    assert.match(message.payload.error_message ?? "", /jsonl/);
  });

  test("kill -9 mid-job leaves no final file; the next start removes the staging", async () => {
    const output = join(worker.dir, "crash-output");
    await mkdir(output, { recursive: true });
    const victim = await spawnWorker({
      args: ["--connect", sentinel.endpoint, "--config", CONFIG, "--worker-id", "crash-1", "--output", output],
      home: worker.home,
    });
    spawned.push(victim);
    const hello: Received = await sentinel.waitFor(
      (r) => r.message?.opcode === Opcode.IDENTIFY && r.message.payload.worker_id === "crash-1",
      20_000,
      "IDENTIFY from crash-1",
    );
    await sentinel.send(hello.identity, Opcode.PREPARE_ENV, 0n, {
      env_hash: envHash,
      lockfile_content: await readFile(join(ROOT, "test", "fixtures", "pyenv", "uv.lock"), "utf8"),
      python_version: null,
    });
    assert.equal((await sentinel.expect(Opcode.ENV_READY, { timeoutMs: 60_000 })).message.payload.cached, true);

    const input = join(worker.dir, "anything.csv");
    await writeFile(input, "n\n1\n");
    const sinks: SinkConfig[] = [{ topic: "output", uri: "parquet://slow/table.parquet", mode: "replace", schema_def: null }];
    const pidFile = join(worker.dir, "guest.pid");
    await sentinel.send(hello.identity, Opcode.DISPATCH, 99n, dispatch(slowPlugin(pidFile), input, envHash, sinks));

    const slowDir = join(output, "slow");
    const staging = await until(async () => (await findFiles(slowDir, /\.stg-/))[0], 60_000, "a staging file");
    victim.child.kill("SIGKILL");
    await victim.exited;

    assert.equal(existsSync(join(slowDir, "table.parquet")), false, "no final file after a crash");
    assert.equal(existsSync(staging), true, "the crashed job's staging is still there");
    // The guest notices its worker is gone (the bridge socket closes) instead of sleeping on as an orphan.
    const guestPid = Number(await readFile(pidFile, "utf8"));
    await until(async () => (isProcessAlive(guestPid) ? undefined : true), 5_000, `orphaned guest ${guestPid} to exit`);

    const successor = await spawnWorker({
      args: ["--connect", sentinel.endpoint, "--config", CONFIG, "--worker-id", "crash-2", "--output", output],
      home: worker.home,
    });
    spawned.push(successor);
    await sentinel.waitFor((r) => r.message?.opcode === Opcode.IDENTIFY && r.message.payload.worker_id === "crash-2", 20_000, "IDENTIFY from crash-2");
    assert.deepEqual(await findFiles(slowDir, /\.stg-/), [], "staging of the crashed run removed at start");
    assert.equal(existsSync(join(slowDir, "table.parquet")), false);
  });
});
