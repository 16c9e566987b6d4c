/**
 * Drop-in under upstream's Sentinels: the real worker process against Sentinels that
 * send exactly what upstream's Python and Rust Sentinels send and do what they do with
 * the answers (helpers/upstream-sentinel.ts reproduces both from their source). No
 * PREPARE_ENV ever arrives: environments come from `casparian-worker prepare`.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test, type TestContext } from "node:test";
import { Router } from "zeromq";
import { packageRoot } from "../core/kernel/paths.js";
import { dedupeSinkSpecs } from "../core/pipeline/sink-dedupe.js";
import { routingIdFor } from "../core/worker/routing-id.js";
import { inspectPlugin } from "../core/run/plugin.js";
import { fileLocationFor } from "../sinks/files.js";
import { runPython, type PythonEnv } from "./helpers/readback.js";
import { spawnWorker, type SpawnedWorker } from "./helpers/spawn-worker.js";
import { UpstreamSentinel, type Dialect, type QueuedJob, type UpstreamSentinelOptions } from "./helpers/upstream-sentinel.js";

const root = packageRoot();
const fixtures = join(root, "test", "fixtures", "upstream-plugins");
const csv = join(fixtures, "readings.csv");

function cli(args: string[], env: NodeJS.ProcessEnv = {}): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [join(root, "bin", "casparian-worker.js"), ...args], {
    encoding: "utf8",
    timeout: 600_000,
    env: { ...process.env, ...env },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** One CASPARIAN_HOME for the file, provisioned the way an operator does it under these Sentinels. */
let home: string;
let pandasEnvHash: string;
let python: PythonEnv;

before(async () => {
  home = await mkdtemp(join(tmpdir(), "casparian-compat-home-"));
  const lock = join(root, "test", "fixtures", "pyenv", "uv.lock");
  const prepared = cli(["prepare", lock, "--home", home]);
  assert.equal(prepared.code, 0, prepared.stderr);
  pandasEnvHash = createHash("sha256")
    .update(await readFile(lock, "utf8"), "utf8")
    .digest("hex");
  assert.match(prepared.stdout, new RegExp(`^env_hash ${pandasEnvHash}\\nbuilt in [0-9.]+ s: .*/venvs/${pandasEnvHash}/bin/python\\n$`));
  python = { python: join(home, "venvs", pandasEnvHash, "bin", "python"), cleanup: async () => undefined };
});

after(async () => {
  await rm(home, { recursive: true, force: true });
});

async function source(name: string): Promise<string> {
  return readFile(join(fixtures, `${name}.py`), "utf8");
}

function job(id: number, plugin: string, code: string, envHash: string | null, extra: Partial<QueuedJob> = {}): QueuedJob {
  return { id, plugin_name: plugin, file_path: csv, file_version_id: 100 + id, env_hash: envHash, source_code: code, ...extra };
}

/** An upstream Sentinel and our worker (real process, shared home) connected to it. */
async function setup(t: TestContext, dialect: Dialect, args: string[], options: UpstreamSentinelOptions & { cwd?: string } = {}) {
  const sentinel = await UpstreamSentinel.bind(dialect, options);
  const worker = await spawnWorker({ args: ["--connect", sentinel.endpoint, "--heartbeat-interval", "0.2", ...args], home, cwd: options.cwd });
  t.after(async () => {
    await worker.dispose();
    await sentinel.close();
  });
  await sentinel.waitForLog(dialect === "python" ? /^Worker Joined/ : /^Worker registered/);
  return { sentinel, worker };
}

async function pyarrowRead(file: string): Promise<{ num_rows: number; types: Record<string, string>; values: Record<string, unknown[]> }> {
  const out = await runPython(
    python,
    `import json, sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
print(json.dumps({"num_rows": t.num_rows, "types": {f.name: str(f.type) for f in t.schema}, "values": t.to_pydict()}, default=str))`,
    [file],
  );
  return JSON.parse(out) as { num_rows: number; types: Record<string, string>; values: Record<string, unknown[]> };
}

function dispatchJson(frames: Buffer[]): Record<string, unknown> {
  return JSON.parse(frames[1]!.toString("utf8")) as Record<string, unknown>;
}

describe("under upstream's Python Sentinel", () => {
  test("registers (ASCII routing id); a published PluginMetadata plugin runs with no PREPARE_ENV, duplicate sinks from RELOADs, an extensionless URI as a directory", async (t) => {
    const { sentinel, worker } = await setup(t, "python", ["--capabilities", "metadata_consume"], {
      topics: [{ plugin: "metadata_consume", topic: "readings", uri: "parquet://./output/readings", mode: "append" }],
    });
    sentinel.addSourceRoot(worker.output);
    const [identity] = sentinel.workerIdentities;
    assert.match(identity!.toString("latin1"), /^w-[0-9a-f]{12}\.\d+\.[0-9a-f]{8}$/, "printable ASCII, from the worker id, unique per process");

    // Two RELOADs: the Python Sentinel appends its sink table each time (three copies), and
    // broadcasts RELOAD as a single frame, which the worker takes.
    await sentinel.reload();
    await sentinel.reload();
    await worker.waitForLogs((l) => typeof l.msg === "string" && l.msg.startsWith("RELOAD"), 2);

    sentinel.enqueue(job(7, "metadata_consume", await source("metadata_consume"), pandasEnvHash, { artifact_hash: "ab".repeat(32) }));
    const row = await sentinel.waitForJob(7);
    assert.equal(row.status, "COMPLETED", row.error_message ?? "");
    assert.equal(row.result_summary, "Success");

    const sent = dispatchJson(sentinel.sent.at(-1)!);
    assert.deepEqual(Object.keys(sent), ["plugin_name", "file_path", "sinks", "file_version_id", "env_hash", "source_code", "artifact_hash"]);
    const readingsSink = { topic: "readings", uri: "parquet://./output/readings", mode: "append", schema_def: null };
    assert.deepEqual(sent.sinks, [
      readingsSink,
      readingsSink,
      readingsSink,
      { topic: "output", uri: "parquet://metadata_consume_output.parquet", mode: "append", schema_def: null },
    ]);

    // One file, in the directory upstream used; nothing else (no staging, no second writer).
    const dir = join(worker.output, "output", "readings");
    assert.deepEqual(await readdir(dir), ["data_7.parquet"]);
    const back = await pyarrowRead(join(dir, "data_7.parquet"));
    assert.equal(back.num_rows, 3);
    assert.equal(back.types.reading_id, "int64");
    assert.match(back.types.taken_at!, /^timestamp/);
    assert.equal(back.types._job_id, "uint64");
    assert.deepEqual(back.values._job_id, [7, 7, 7]);
    assert.deepEqual(back.values._file_version_id, [107, 107, 107]);

    // Artifacts: one per sink that published a file (the default "output" sink got no data).
    const receipt = row.receipt as { artifacts: Array<{ topic: string; uri: string }>; metrics: Record<string, number> };
    assert.deepEqual(receipt.artifacts, [{ topic: "readings", uri: `parquet://${join(dir, "data_7.parquet")}` }]);
    assert.equal(receipt.metrics.sinks_without_batches, 1);
    // What the Sentinel stores from it: the file as a location under its source root.
    assert.deepEqual(sentinel.locations, ["output/readings/data_7.parquet"]);
  });

  test("two workers started at once on one fresh home share one worker id and register as two workers: the routing id is per process", async (t) => {
    const shared = await mkdtemp(join(tmpdir(), "casparian-compat-shared-"));
    const sentinel = await UpstreamSentinel.bind("python");
    const workers = await Promise.all([0, 1].map(() => spawnWorker({ args: ["--connect", sentinel.endpoint], home: shared })));
    t.after(async () => {
      await Promise.all(workers.map((w) => w.dispose()));
      await sentinel.close();
      await rm(shared, { recursive: true, force: true });
    });
    await sentinel.waitForLog(/^Worker Joined/);
    await new Promise<void>((resolve, reject) => {
      const deadline = setTimeout(() => reject(new Error(`expected 2 registered workers; log:\n${sentinel.log.join("\n")}`)), 15_000);
      const poll = setInterval(() => {
        if (sentinel.workerIdentities.length === 2) {
          clearInterval(poll);
          clearTimeout(deadline);
          resolve();
        }
      }, 50);
    });
    const [a, b] = sentinel.workerIdentities.map((id) => id.toString("latin1"));
    assert.notEqual(a, b);
    assert.equal(a!.split(".")[0], b!.split(".")[0], "same worker id, different processes");
  });

  test("a job before the env is provisioned fails with the provisioning hint; `*` alone never matches here (upstream defect) and the worker says why it hears nothing", async (t) => {
    const { sentinel, worker } = await setup(t, "python", ["--capabilities", "unprovisioned", "--silence-warning", "0.5"]);
    const silent = await worker.waitForLog((l) => l.code === "CSP_WORKER_SENTINEL_SILENT");
    assert.ok((silent.likely_causes as string[]).some((c) => c.includes("--capabilities")));
    const missing = "cd".repeat(32);
    sentinel.enqueue(job(1, "unprovisioned", "def parse(path):\n    return {'a': [1]}\n", missing));
    const row = await sentinel.waitForJob(1);
    assert.equal(row.status, "FAILED");
    assert.match(
      row.error_message!,
      /^CSP_ENV_NOT_PROVISIONED: Environment cdcdcdcdcdcd not provisioned\. Send PREPARE_ENV first\. \(hint: .*casparian-worker prepare/,
    );

    const star = await setup(t, "python", []);
    star.sentinel.enqueue(job(2, "anything", "def parse(path):\n    return {'a': [1]}\n", pandasEnvHash));
    const refused = await star.sentinel.waitForJob(2);
    assert.equal(refused.status, "FAILED");
    assert.equal(refused.error_message, "No capable worker available");
  });

  test("a conflicting repeat of a sink fails the job with a coded error and writes nothing", async (t) => {
    const { sentinel, worker } = await setup(t, "python", ["--capabilities", "metadata_consume"], {
      topics: [
        { plugin: "metadata_consume", topic: "readings", uri: "parquet://./output/readings", mode: "append" },
        { plugin: "metadata_consume", topic: "readings", uri: "parquet://output/readings", mode: "replace" },
      ],
    });
    sentinel.enqueue(job(3, "metadata_consume", await source("metadata_consume"), pandasEnvHash));
    const conflict = await sentinel.waitForJob(3);
    assert.equal(conflict.status, "FAILED");
    assert.match(
      conflict.error_message!,
      /^CSP_SINK_DUPLICATE_CONFLICT: the DISPATCH lists sink "parquet:\/\/output\/readings" more than once with different settings: mode "append" vs "replace"/,
    );
    assert.deepEqual(await readdir(worker.output).catch(() => []), []);
  });
});

describe("under upstream's Rust Sentinel", () => {
  test('env_hash "system" (DISPATCH without schema_def and artifact_hash) runs with the system python3; heartbeats keep the worker from being evicted', async (t) => {
    const { sentinel, worker } = await setup(t, "rust", [], { staleAfterMs: 1_500 });
    // Longer than the stale window: only the worker's own heartbeats keep it registered.
    await new Promise((r) => setTimeout(r, 2_500));
    assert.ok(!sentinel.log.some((l) => l.startsWith("Removing stale worker")), sentinel.log.join("\n"));
    sentinel.enqueue(job(11, "system_pure", await source("system_pure"), null));
    const row = await sentinel.waitForJob(11);
    assert.equal(row.status, "COMPLETED", row.error_message ?? "");
    const sent = dispatchJson(sentinel.sent.at(-1)!);
    assert.equal(sent.env_hash, "system");
    assert.ok(!("artifact_hash" in sent));
    assert.deepEqual(sent.sinks, [{ topic: "output", uri: "parquet://system_pure_output.parquet", mode: "append" }]);
    const file = join(worker.output, "system_pure_output_11.parquet");
    assert.deepEqual((row.receipt as { artifacts: unknown }).artifacts, [{ topic: "output", uri: `parquet://${file}` }]);
    const back = await pyarrowRead(file);
    assert.deepEqual(back.values.sensor, ["alpha", "beta", "alpha"]);
    const used = await worker.waitForLog((l) => l.msg === 'env_hash "system" runs with this interpreter');
    assert.equal(used.python, "python3");
  });

  test("an env that ships its own casparian_flow package keeps it (the built-in SDK steps aside)", async (t) => {
    const dir = await mkdtemp(join(tmpdir(), "casparian-compat-sdk-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await mkdir(join(dir, "site", "casparian_flow"), { recursive: true });
    await writeFile(join(dir, "site", "casparian_flow", "__init__.py"), "");
    await writeFile(
      join(dir, "site", "casparian_flow", "sdk.py"),
      'ORIGIN = "the env\'s own package"\n\nclass PluginMetadata:\n    def __init__(self, **kw):\n        self.__dict__.update(kw)\n\nclass BasePlugin:\n    def configure(self, ctx, config):\n        self._ctx = ctx\n',
    );
    await writeFile(join(dir, ".casparianrc.json"), JSON.stringify({ bridge: { env: ["PYTHONPATH"] } }));
    const sentinel = await UpstreamSentinel.bind("rust");
    const worker = await spawnWorker({ args: ["--connect", sentinel.endpoint], home, cwd: dir, env: { PYTHONPATH: join(dir, "site") } });
    t.after(async () => {
      await worker.dispose();
      await sentinel.close();
    });
    await sentinel.waitForLog(/^Worker registered/);
    const plugin = [
      "import casparian_flow.sdk as sdk",
      "from casparian_flow.sdk import BasePlugin, PluginMetadata",
      'MANIFEST = PluginMetadata(pattern="*.csv", topic="output")',
      "class Handler(BasePlugin):",
      "    def execute(self, file_path):",
      '        return {"origin": [sdk.ORIGIN]}',
      "",
    ].join("\n");
    sentinel.enqueue(job(13, "own_sdk", plugin, null));
    const row = await sentinel.waitForJob(13);
    assert.equal(row.status, "COMPLETED", row.error_message ?? "");
    assert.deepEqual((await pyarrowRead(join(worker.output, "own_sdk_output_13.parquet"))).values.origin, ["the env's own package"]);
  });

  test('environments.systemPython: false refuses env_hash "system" with a coded error', async (t) => {
    const cwd = await mkdtemp(join(tmpdir(), "casparian-compat-cfg-"));
    t.after(() => rm(cwd, { recursive: true, force: true }));
    await writeFile(join(cwd, ".casparianrc.json"), JSON.stringify({ environments: { systemPython: false } }));
    const { sentinel } = await setup(t, "rust", [], { cwd });
    sentinel.enqueue(job(12, "system_pure", await source("system_pure"), null));
    const row = await sentinel.waitForJob(12);
    assert.equal(row.status, "FAILED");
    assert.match(row.error_message!, /^CSP_ENV_SYSTEM_DISABLED: /);
  });
});

describe("upstream plugin shapes (own equivalents of upstream's fixtures)", () => {
  test("PluginMetadata with an unknown keyword + execute(); Plugin(config).consume(Path, ctx) + MANIFEST dict; execute() yielding pyarrow Tables", async (t) => {
    const plugins = ["metadata_execute", "plugin_class", "metadata_yield"];
    const { sentinel, worker } = await setup(t, "python", ["--capabilities", plugins.join(",")], {
      topics: [{ plugin: "metadata_execute", topic: "sensors", uri: "parquet://sensors.parquet", mode: "append" }],
    });
    let id = 20;
    for (const name of plugins) sentinel.enqueue(job(++id, name, await source(name), pandasEnvHash));
    const rows = await Promise.all([21, 22, 23].map((n) => sentinel.waitForJob(n)));
    for (const row of rows) assert.equal(row.status, "COMPLETED", `${row.job.plugin_name}: ${row.error_message}`);
    assert.deepEqual((await pyarrowRead(join(worker.output, "sensors_21.parquet"))).values.sensor, ["alpha", "beta"]);
    assert.deepEqual((await pyarrowRead(join(worker.output, "plugin_class_output_22.parquet"))).values._source, [
      "readings.csv",
      "readings.csv",
      "readings.csv",
    ]);
    assert.deepEqual((await pyarrowRead(join(worker.output, "metadata_yield_output_23.parquet"))).values.value_doubled, [3, null, 4.5]);
    assert.ok(
      worker.logs.some((l) => typeof l.msg === "string" && l.msg.includes("PluginMetadata: unknown field(s) topics")),
      "the unknown keyword is reported (guest stderr, logged), not fatal",
    );
  });
});

describe("lineage and provisioning", () => {
  test("_job_id stays uint64; a directory mixing upstream's int64 files and ours reads as one dataset (pyarrow, pandas)", async () => {
    const dir = await mkdtemp(join(tmpdir(), "casparian-compat-mixed-"));
    try {
      const out = await runPython(
        python,
        `import json, sys, pyarrow as pa, pyarrow.parquet as pq, pandas as pd
d = sys.argv[1]
pq.write_table(pa.table({"v": [1], "_job_id": pa.array([1], pa.int64())}), d + "/data_1.parquet")
pq.write_table(pa.table({"v": [2], "_job_id": pa.array([2], pa.uint64())}), d + "/data_2.parquet")
t = pq.read_table(d)
print(json.dumps({"rows": t.num_rows, "ids": sorted(t.column("_job_id").to_pylist()), "pandas": sorted(pd.read_parquet(d)["_job_id"].tolist())}))`,
        [dir],
      );
      assert.deepEqual(JSON.parse(out), { rows: 2, ids: [1, 2], pandas: [1, 2] });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("prepare: an already provisioned env is reported as such; --list shows it; --prune removes it by prefix", async () => {
    const own = await mkdtemp(join(tmpdir(), "casparian-compat-prune-"));
    try {
      const lock = join(root, "test", "fixtures", "worker-env", "uv.lock");
      const hash = createHash("sha256")
        .update(await readFile(lock, "utf8"), "utf8")
        .digest("hex");
      assert.equal(cli(["prepare", lock, "--home", own]).code, 0);
      const again = cli(["prepare", join(root, "test", "fixtures", "worker-env"), "--home", own]);
      assert.match(again.stdout, new RegExp(`^env_hash ${hash}\\nalready provisioned: `));
      assert.match(cli(["prepare", "--list", "--home", own]).stdout, new RegExp(`^${hash} .*\\n1 environment\\(s\\)`));
      const ambiguous = cli(["prepare", "--prune", "abc", "--home", own]);
      assert.equal(ambiguous.code, 2);
      const pruned = cli(["prepare", "--prune", hash.slice(0, 10), "--home", own]);
      assert.equal(pruned.code, 0, pruned.stderr);
      assert.match(pruned.stdout, new RegExp(`^removed ${hash} `));
      assert.match(cli(["prepare", "--list", "--home", own]).stdout, /^no environments under /);
    } finally {
      await rm(own, { recursive: true, force: true });
    }
  });
});

describe("pieces", () => {
  test("routing ids: ASCII, never a leading zero byte, at most 255 bytes, different per process for one worker id", () => {
    const a = routingIdFor("w-0123456789ab", 10);
    const b = routingIdFor("w-0123456789ab", 11);
    assert.notEqual(a, b);
    assert.match(a, /^w-0123456789ab\.10\.[0-9a-f]{8}$/);
    const odd = routingIdFor("wörker\u0000/x".repeat(40));
    assert.match(odd, /^[\x21-\x7e]+$/);
    assert.ok(Buffer.byteLength(odd) <= 255);
  });

  test("parquet locations: .parquet names a file, anything else a directory holding data.parquet", () => {
    assert.equal(fileLocationFor("./output/sales", ".parquet", "data.parquet"), "./output/sales/data.parquet");
    assert.equal(fileLocationFor("out/sales/", ".parquet", "data.parquet"), "out/sales/data.parquet");
    assert.equal(fileLocationFor("sales.parquet", ".parquet", "data.parquet"), "sales.parquet");
    assert.equal(fileLocationFor("Sales.PARQUET", ".parquet", "data.parquet"), "Sales.PARQUET");
    assert.equal(fileLocationFor("sales.v2", ".parquet", "data.parquet"), "sales.v2/data.parquet");
    assert.equal(fileLocationFor(".", ".parquet", "data.parquet"), "data.parquet");
  });

  test("duplicate sinks: identical repeats collapse (also ./ and parameter order), conflicts name the difference", () => {
    const s = (uri: string, extra: object = {}) => ({ topic: "t", uri, mode: "append" as const, schemaDef: null, ...extra });
    assert.deepEqual(
      dedupeSinkSpecs([s("parquet://./a?compression=zstd&row_group_size=5"), s("parquet://a?row_group_size=5&compression=zstd"), s("parquet://b")]),
      {
        sinks: [s("parquet://./a?compression=zstd&row_group_size=5"), s("parquet://b")],
        repeats: 1,
      },
    );
    assert.throws(() => dedupeSinkSpecs([s("parquet://a"), s("parquet://a", { topic: "u" })]), /CSP_SINK_DUPLICATE_CONFLICT|topic "t" vs "u"/);
    assert.throws(() => dedupeSinkSpecs([s("parquet://a"), s("parquet://a", { schemaDef: "{}" })]), /different schema_def/);
  });

  test("casparian run reads MANIFEST = PluginMetadata(...) by its literal keywords, as upstream's Sentinel did", async () => {
    const consume = await inspectPlugin(join(fixtures, "metadata_consume.py"));
    assert.deepEqual(consume.manifest, { topics: ["readings"] });
    assert.deepEqual(consume.warnings, []);
    const extra = await inspectPlugin(join(fixtures, "metadata_execute.py"));
    assert.deepEqual(extra.manifest, { topics: ["sensors"] });
    assert.deepEqual((await inspectPlugin(join(fixtures, "system_pure.py"))).manifest, { topics: [] });
  });

  test("an unreachable Sentinel is reported with its likely causes", async (t) => {
    const probe = new Router();
    await probe.bind("tcp://127.0.0.1:*");
    const endpoint = probe.lastEndpoint!;
    probe.close();
    const worker: SpawnedWorker = await spawnWorker({ args: ["--connect", endpoint, "--silence-warning", "0.3"] });
    t.after(() => worker.dispose());
    const line = await worker.waitForLog((l) => l.code === "CSP_WORKER_SENTINEL_UNREACHABLE");
    assert.equal(line.connect, endpoint);
    assert.ok(Array.isArray(line.likely_causes));
  });
});
