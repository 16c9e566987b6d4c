/**
 * The bridge host with real guests: real uv venvs, real Python, real Unix sockets.
 * Plugins live in test/fixtures/plugins; stand-in interpreters in test/fixtures/envs.
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { Table } from "apache-arrow";
import { Errors } from "../core/kernel/errors.js";
import { runGuest, shimPath, sweepStaleSocketDirs } from "../core/bridge/host.js";
import { jobTeardownsSettled } from "../core/bridge/job-teardown.js";
import type { GuestRunOptions, GuestResult } from "../core/bridge/types.js";
import type { Batch } from "../core/kernel/job.js";
import { bareEnvironment, fixturePath, pluginSource, testEnvironment, testJob, type TestEnvironment } from "./helpers/pyenv.js";
import { isProcessAlive } from "../core/kernel/process.js";
import { rejectsWith } from "./helpers/assert.js";

const TIMEOUTS = { connectMs: 20_000, idleMs: 60_000, jobMs: 120_000 };

let env: TestEnvironment;
let bareInterpreter: string;
let workDir: string;

before(async () => {
  env = await testEnvironment();
  bareInterpreter = await bareEnvironment(env.manager);
  workDir = await mkdtemp(join(tmpdir(), "casparian-bridge-test-"));
});

after(async () => {
  await env?.dispose();
  if (workDir) await rm(workDir, { recursive: true, force: true });
});

interface Collected {
  result: GuestResult;
  batches: Batch[];
}

/** Run a fixture plugin, collecting every batch. */
async function run(plugin: string, overrides: Partial<GuestRunOptions> & { filePath?: string } = {}): Promise<Collected> {
  const { job } = testJob(await pluginSource(plugin), { filePath: overrides.filePath, pluginName: plugin });
  const batches: Batch[] = [];
  const result = await runGuest({
    interpreterPath: env.interpreterPath,
    job,
    timeouts: TIMEOUTS,
    onBatch: async (batch) => {
      batches.push(batch);
    },
    ...overrides,
  });
  return { result, batches };
}

function rowsOf(table: Table): Record<string, unknown>[] {
  return table.toArray().map((row) => ({ ...row.toJSON() }));
}

describe("plugin shapes", () => {
  test("Handler(BasePlugin) whose consume raises NotImplementedError falls back to execute(); pandas chunks", async () => {
    const { result, batches } = await run("handler_pandas.py");
    assert.equal(batches.length, 2);
    assert.deepEqual(
      batches.map((b) => [b.topic, b.index, b.numRows]),
      [
        ["output", 0, 3],
        ["output", 1, 3],
      ],
    );
    assert.deepEqual(rowsOf(batches[1]!.table), [
      { n: 3n, label: "row3" },
      { n: 4n, label: "row4" },
      { n: 5n, label: "row5" },
    ]);
    assert.equal(result.rows, 6);
    assert.equal(result.batches, 2);
    assert.equal(result.rowsByTopic.get("output"), 6);
    assert.ok(result.ipcBytes > 0);
    assert.equal(result.guestMetrics.rows, 6);
    assert.equal(result.guestMetrics.chunks, 2);
  });

  test("Handler with configure(ctx)/consume(event): explicit topic plus returned RecordBatches", async () => {
    const input = join(workDir, "lines.txt");
    await writeFile(input, "alpha\nbeta\ngamma\n");
    const { result, batches } = await run("handler_consume.py", { filePath: input });
    const meta = batches.filter((b) => b.topic === "meta");
    const output = batches.filter((b) => b.topic === "output");
    assert.equal(meta.length, 1);
    // file_version_id is 2^64-1: it reaches the plugin intact (as a Python int).
    assert.deepEqual(rowsOf(meta[0]!.table), [{ file_id: "18446744073709551615", path: input }]);
    assert.deepEqual(
      rowsOf(output[0]!.table).map((r) => r.text),
      ["alpha", "beta", "gamma"],
    );
    assert.equal(result.rowsByTopic.get("meta"), 1);
    assert.equal(result.rowsByTopic.get("output"), 3);
    // the plugin's print() did not corrupt the stdout metrics line
    assert.equal(result.guestMetrics.rows, 4);
  });

  test("class Plugin(config).consume(Path, context): polars data published, status dict not published", async () => {
    const input = join(workDir, "report_2024.csv");
    await writeFile(input, "x\n");
    const { result, batches } = await run("plugin_class.py", { filePath: input });
    assert.equal(batches.length, 1);
    assert.equal(batches[0]!.topic, "parsed");
    assert.deepEqual(rowsOf(batches[0]!.table), [
      { name: "report_2024.csv", value: 1.5 },
      { name: "report_2024.csv", value: 2.5 },
      { name: "report_2024.csv", value: null },
      { name: "report_2024.csv", value: 4.5 },
    ]);
    assert.deepEqual([...result.rowsByTopic.keys()], ["parsed"]);
  });

  test("a status dict with status 'error' fails the job with its error text", async () => {
    const input = join(workDir, "broken.csv");
    await writeFile(input, "x\n");
    const err = await rejectsWith(run("plugin_status_error.py", { filePath: input }), Errors.GUEST_FAILED.code);
    assert.match(err.message, /PluginReportedError: bad header in broken\.csv/);
  });

  test("module-level parse(path)", async () => {
    const { batches } = await run("parse_function.py");
    assert.deepEqual(rowsOf(batches[0]!.table), [{ x: 1n }, { x: 2n }, { x: 3n }]);
  });

  test("the routing key never reaches sinks: neither the table schema nor the IPC bytes carry it", async () => {
    const { batches } = await run("handler_pandas.py");
    const { tableFromIPC } = await import("apache-arrow");
    for (const batch of batches) {
      assert.equal(batch.table.schema.metadata.has("casparian.topic"), false);
      assert.equal(tableFromIPC(batch.ipc).schema.metadata.has("casparian.topic"), false);
      assert.ok(tableFromIPC(batch.ipc).schema.metadata.has("pandas"), "other schema metadata is kept");
    }
  });
});

describe("routing", () => {
  test("two topics reach two consumers, each with its own batch sequence", async () => {
    const consumers = new Map<string, Batch[]>([
      ["orders", []],
      ["customers", []],
    ]);
    const { job } = testJob(await pluginSource("two_topics.py"));
    const result = await runGuest({
      interpreterPath: env.interpreterPath,
      job,
      timeouts: TIMEOUTS,
      onBatch: async (batch) => {
        const consumer = consumers.get(batch.topic);
        assert.ok(consumer, `unexpected topic ${batch.topic}`);
        consumer.push(batch);
      },
    });
    const orders = consumers.get("orders")!;
    const customers = consumers.get("customers")!;
    assert.deepEqual(
      orders.map((b) => b.index),
      [0, 1, 2],
    );
    assert.deepEqual(
      customers.map((b) => b.index),
      [0, 1, 2],
    );
    assert.deepEqual(
      orders[2]!.table.schema.fields.map((f) => f.name),
      ["order_id", "amount"],
    );
    assert.deepEqual(rowsOf(customers[1]!.table), [{ customer: "c1" }]);
    assert.equal(result.rowsByTopic.get("orders"), 6);
    assert.equal(result.rowsByTopic.get("customers"), 3);
  });

  test("a legacy §3 guest (no topic information) is routed to 'output'", async () => {
    const { result, batches } = await run("handler_pandas.py", {
      interpreterPath: fixturePath("envs", "legacy-guest", "python"),
      allowEnv: ["LEGACY_GUEST_PYTHON"],
      ...withEnv({ LEGACY_GUEST_PYTHON: env.interpreterPath }),
    });
    assert.deepEqual(
      batches.map((b) => [b.topic, b.index, b.numRows]),
      [
        ["output", 0, 3],
        ["output", 1, 1],
      ],
    );
    assert.equal(result.rows, 4);
    assert.equal(result.guestMetrics.rows_published, 4);
  });

  test("upstream sideband frames (log, output start/end, metrics) are understood", async () => {
    const { result, batches } = await run("handler_pandas.py", {
      interpreterPath: fixturePath("envs", "legacy-guest", "python"),
      allowEnv: ["LEGACY_GUEST_PYTHON", "LEGACY_GUEST_MODE"],
      ...withEnv({ LEGACY_GUEST_PYTHON: env.interpreterPath, LEGACY_GUEST_MODE: "sideband" }),
    });
    assert.equal(batches.length, 1);
    assert.equal(batches[0]!.topic, "output");
    assert.equal(result.guestMetrics.parsed_lines, 2);
    assert.equal("ratio" in result.guestMetrics, false, "non-integer metrics are dropped");
  });
});

/**
 * Set worker environment variables for the duration of one run (the guest sees them only
 * through allowEnv). Returned as an empty object so it can be spread into options.
 */
function withEnv(vars: Record<string, string>): Record<string, never> {
  for (const [k, v] of Object.entries(vars)) process.env[k] = v;
  return {};
}

describe("failures", () => {
  test("a plugin exception arrives as the error frame: type, message, traceback", async () => {
    const seen: Batch[] = [];
    const err = await rejectsWith(
      run("raises.py", {
        onBatch: async (b) => {
          seen.push(b);
        },
      }),
      Errors.GUEST_FAILED.code,
    );
    assert.equal(seen.length, 1, "the chunk before the exception was delivered");
    assert.match(err.message, /^Guest process error: ValueError: boom on row 3/);
    assert.match(err.message, /Traceback/);
    assert.match(err.message, /helper/);
    assert.equal(err.context.plugin, "raises.py");
  });

  test("guest os._exit(3) after one chunk: missing end-of-stream fails the job", async () => {
    const seen: Batch[] = [];
    const err = await rejectsWith(
      run("exit3.py", {
        onBatch: async (b) => {
          seen.push(b);
        },
      }),
      Errors.GUEST_FAILED.code,
    );
    assert.equal(seen.length, 1);
    assert.match(err.message, /without end-of-stream \(exit code 3\)/);
  });

  test("abort kills the whole process group (guest ignores SIGTERM) within 5 s", async () => {
    const { job, controller } = testJob(await pluginSource("hang.py"));
    let pids: number[] = [];
    let abortedAt = 0;
    const running = runGuest({
      interpreterPath: env.interpreterPath,
      job,
      timeouts: TIMEOUTS,
      onBatch: async (batch) => {
        const row = batch.table.get(0)!.toJSON();
        pids = [Number(row.pid), Number(row.child_pid)];
        abortedAt = Date.now();
        controller.abort(Errors.JOB_ABORTED(["sentinel"]));
      },
    });
    const err = await rejectsWith(running, Errors.JOB_ABORTED.code);
    assert.equal(err.message, "aborted by sentinel");
    assert.equal(pids.length, 2);
    const deadline = abortedAt + 5000;
    while (pids.some(isProcessAlive) && Date.now() < deadline) await sleep(50);
    assert.deepEqual(pids.filter(isProcessAlive), [], "guest and its child are gone");
  });

  test("an abort that arrives while the run is still setting up ends the job at once", async () => {
    const { job, controller } = testJob(await pluginSource("hang.py"));
    const started = Date.now();
    // runGuest has passed its first check and is awaiting its socket directory when this lands.
    const running = runGuest({ interpreterPath: env.interpreterPath, job, timeouts: TIMEOUTS, onBatch: async () => undefined });
    controller.abort(Errors.JOB_ABORTED(["sentinel"]));
    const err = await rejectsWith(running, Errors.JOB_ABORTED.code);
    assert.equal(err.message, "aborted by sentinel");
    assert.ok(Date.now() - started < 5000, `aborted after ${Date.now() - started} ms, not when the job timed out`);
  });

  test("the job timeout ends a hanging guest and names itself", async () => {
    const err = await rejectsWith(run("hang.py", { timeouts: { ...TIMEOUTS, jobMs: 2500 } }), Errors.GUEST_TIMEOUT.code);
    assert.match(err.message, /^job timeout after 2500 ms/);
  });

  test("the idle timeout fires when no frame arrives", async () => {
    const err = await rejectsWith(run("hang.py", { timeouts: { ...TIMEOUTS, idleMs: 1500 } }), Errors.GUEST_TIMEOUT.code);
    assert.match(err.message, /^idle timeout after 1500 ms/);
  });

  test("the connect timeout fires when the guest never connects", async () => {
    const err = await rejectsWith(
      run("handler_pandas.py", { interpreterPath: fixturePath("envs", "never-connects", "python"), timeouts: { ...TIMEOUTS, connectMs: 800 } }),
      Errors.GUEST_TIMEOUT.code,
    );
    assert.match(err.message, /^connect timeout after 800 ms/);
  });

  test("a guest that exits before connecting fails with its stderr", async () => {
    const err = await rejectsWith(run("handler_pandas.py", { interpreterPath: "/bin/false" }), Errors.GUEST_FAILED.code);
    assert.match(err.message, /exited \(exit code 1\) before connecting/);
  });

  test("an interpreter that does not exist fails cleanly", async () => {
    const err = await rejectsWith(run("handler_pandas.py", { interpreterPath: join(workDir, "no-such-python") }), Errors.GUEST_FAILED.code);
    assert.match(err.message, /before connecting/);
  });

  test("a frame that is not Arrow IPC fails with CSP_BRIDGE_BAD_FRAME", async () => {
    await rejectsWith(
      run("handler_pandas.py", {
        interpreterPath: fixturePath("envs", "legacy-guest", "python"),
        allowEnv: ["LEGACY_GUEST_PYTHON", "LEGACY_GUEST_MODE"],
        ...withEnv({ LEGACY_GUEST_PYTHON: env.interpreterPath, LEGACY_GUEST_MODE: "garbage" }),
      }),
      Errors.BRIDGE_BAD_FRAME.code,
    );
  });

  test("upstream's JSON error payload is understood", async () => {
    const err = await rejectsWith(
      run("handler_pandas.py", {
        interpreterPath: fixturePath("envs", "legacy-guest", "python"),
        allowEnv: ["LEGACY_GUEST_PYTHON", "LEGACY_GUEST_MODE"],
        ...withEnv({ LEGACY_GUEST_PYTHON: env.interpreterPath, LEGACY_GUEST_MODE: "upstream-error" }),
      }),
      Errors.GUEST_FAILED.code,
    );
    assert.equal(err.message, "Guest process error: KeyError: 'timestamp'");
  });

  test("a frame above maxFrameBytes is refused", async () => {
    const err = await rejectsWith(run("big_chunk.py", { maxFrameBytes: 10_000 }), Errors.GUEST_PROTOCOL.code);
    assert.match(err.message, /exceeds the limit of 10000 bytes/);
  });

  test("a failing consumer fails the run with its own error and stops the guest", async () => {
    const boom = new Error("sink exploded");
    await assert.rejects(
      run("many_chunks.py", {
        onBatch: async () => {
          throw boom;
        },
      }),
      (err) => err === boom,
    );
  });
});

describe("volume and isolation", () => {
  test("1,000 small chunks arrive in order", async () => {
    const indexes: number[] = [];
    let sum = 0;
    const { result } = await run("many_chunks.py", {
      onBatch: async (b) => {
        indexes.push(b.index);
        for (const v of b.table.getChild("i")!) sum += Number(v);
      },
    });
    assert.equal(result.batches, 1000);
    assert.equal(result.rows, 2000);
    assert.deepEqual(
      indexes,
      Array.from({ length: 1000 }, (_, i) => i),
    );
    assert.equal(sum, 2 * ((999 * 1000) / 2));
  });

  test("a dependency-free plugin runs in a bare venv; the shim writes Arrow IPC itself", async () => {
    const { result, batches } = await run("pure_python.py", { interpreterPath: bareInterpreter });
    const columns = batches.find((b) => b.topic === "columns")!;
    const rows = batches.find((b) => b.topic === "output")!;
    assert.ok(columns && rows);
    const t = columns.table;
    const types = Object.fromEntries(t.schema.fields.map((f) => [f.name, String(f.type)]));
    assert.deepEqual(types, {
      id: "Int64",
      score: "Float64",
      ok: "Bool",
      name: "Utf8",
      naive: "Timestamp<MICROSECOND>",
      aware: "Timestamp<MICROSECOND, UTC>",
      day: "Date32<DAY>",
      nothing: "Null",
    });
    assert.deepEqual([...t.getChild("id")!], [1n, 2n, null, -(2n ** 63n)]);
    assert.deepEqual([...t.getChild("score")!], [0.5, null, 3, -1e300]);
    assert.deepEqual([...t.getChild("ok")!], [true, false, null, true]);
    assert.deepEqual([...t.getChild("name")!], ["plain", "ünïcödé ✓", null, "日本語 🎉"]);
    const ms = (v: unknown) => (v === null ? null : Number(v));
    const us = (v: unknown) => (v === null ? null : Math.round(Number(v) * 1000));
    assert.deepEqual([...t.getChild("naive")!].map(us), [
      Date.UTC(2024, 1, 29, 12, 30, 45, 123) * 1000 + 456,
      null,
      Date.UTC(1969, 11, 31, 23, 59, 59) * 1000,
      Date.UTC(2000, 0, 1) * 1000,
    ]);
    assert.deepEqual([...t.getChild("aware")!].map(ms), [Date.UTC(2024, 0, 1, 0, 0), null, null, Date.UTC(2024, 5, 1)]);
    assert.deepEqual([...t.getChild("day")!].map(ms), [Date.UTC(2024, 2, 1), null, 0, Date.UTC(1960, 0, 1)]);
    assert.deepEqual([...t.getChild("nothing")!], [null, null, null, null]);
    // microsecond precision survives in the raw values
    assert.equal(t.getChild("naive")!.data[0]!.values[0], BigInt(Date.UTC(2024, 1, 29, 12, 30, 45, 123)) * 1000n + 456n);

    assert.deepEqual(rowsOf(rows.table), [
      { k: "a", v: 1n, extra: null },
      { k: "b", v: null, extra: null },
      { k: null, v: 3n, extra: "only here" },
    ]);
    assert.equal(result.rows, 7);
  });

  test("no worker secret reaches the guest; allowEnv adds exactly what it names", async () => {
    process.env.CASPARIAN_TEST_SECRET = "hunter2";
    process.env.CASPARIAN_TEST_ALLOWED = "visible";
    try {
      const { batches } = await run("env_dump.py", { interpreterPath: bareInterpreter, allowEnv: ["CASPARIAN_TEST_ALLOWED"] });
      const rows = rowsOf(batches[0]!.table);
      const names = rows.map((r) => r.name as string);
      assert.ok(!names.includes("CASPARIAN_TEST_SECRET"));
      assert.ok(rows.every((r) => r.secret === null));
      assert.ok(rows.every((r) => r.allowed === "visible"));
      const expected = new Set([
        "PATH",
        "LANG",
        "TZ",
        "TMPDIR",
        "HOME",
        "CASPARIAN_TEST_ALLOWED",
        "BRIDGE_SOCKET",
        "BRIDGE_PLUGIN_FILE",
        "BRIDGE_FILE_PATH",
        "BRIDGE_JOB_ID",
        "BRIDGE_FILE_VERSION_ID",
        "BRIDGE_PLUGIN_NAME",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUTF8",
        // The job's own: its cgroup (or, without one, its marker) and its resource limits.
        "CASPARIAN_JOB_CGROUP",
        "CASPARIAN_JOB_MARKER",
        "CASPARIAN_GUEST_LIMITS",
      ]);
      // Python itself may add a few (e.g. LC_CTYPE coercion); nothing else of the worker's.
      const unexpected = names.filter((n) => !expected.has(n) && !n.startsWith("LC_"));
      assert.deepEqual(unexpected, []);
    } finally {
      delete process.env.CASPARIAN_TEST_SECRET;
      delete process.env.CASPARIAN_TEST_ALLOWED;
    }
  });

  test("the socket directory is removed after every run", async () => {
    // Only this process's own directories (the name carries the pid): other workers on the
    // machine may be running jobs in the same temp dir at the same time.
    const ours = async () => (await readdir(tmpdir())).filter((n) => n.startsWith(`casparian-bridge-${process.pid}-`) && !workDir.endsWith(n));
    const before = new Set(await ours());
    await run("handler_pandas.py");
    await rejectsWith(run("exit3.py"), Errors.GUEST_FAILED.code);
    // Removed after the job's answer (job-teardown.ts), failed or not.
    await jobTeardownsSettled();
    const left = (await ours()).filter((n) => !before.has(n));
    assert.deepEqual(left, []);
  });

  test("socket directories left by a dead worker process are swept", async () => {
    const dead = join(tmpdir(), "casparian-bridge-999999999-Ab12Cd");
    const mine = join(tmpdir(), `casparian-bridge-${process.pid}-Zz99Yy`);
    await mkdir(dead, { recursive: true });
    await mkdir(mine, { recursive: true });
    try {
      await sweepStaleSocketDirs();
      await assert.rejects(stat(dead), { code: "ENOENT" });
      await stat(mine);
    } finally {
      await rm(dead, { recursive: true, force: true });
      await rm(mine, { recursive: true, force: true });
    }
  });

  test("shimPath points at the shipped shim", async () => {
    assert.match(shimPath(), /core\/bridge\/guest$/);
    const { access } = await import("node:fs/promises");
    await access(shimPath());
  });
});
