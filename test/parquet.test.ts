/**
 * The bundled Parquet sink, run by the real Pipeline (scripted guest, see helpers/pipeline.ts)
 * with real Arrow batches, real files, and read back by real pyarrow and DuckDB.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, constants as fsConstants, openSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { pino } from "pino";
import { Int32, Int64, Null, Table, Utf8, tableFromIPC, vectorFromArray } from "apache-arrow";
import { Errors } from "../core/kernel/errors.js";
import { packageRoot } from "../core/kernel/paths.js";
import type { ParquetConfig } from "../core/config/config.js";
import type { Pipeline } from "../core/pipeline/pipeline.js";
import { Stage } from "../hooks/index.js";
import { isStagingName, removeStaleStaging, stagingPathFor } from "../sinks/files.js";
import { loadSinkPlugins } from "../core/pipeline/sink-loader.js";
import { ENGINE } from "../sinks/parquet-engine.js";
import { loadNativeEngine, NATIVE_ADDON_PATH, NATIVE_ENGINE, NativeParquetFile } from "../sinks/parquet-native.js";
import { ParquetWriterPool } from "../sinks/parquet-writers.js";
import { batchOf, canonicalColumns, capturingLogger, sampleTable } from "./helpers/arrow.js";
import { makeJob, runJob, scriptedPipeline, sinkSpec } from "./helpers/pipeline.js";
import { buildPythonEnv, columnValues, readParquet, runPython, type PythonEnv } from "./helpers/readback.js";

const logger = pino({ level: "silent" });
let py: PythonEnv;
const roots: string[] = [];

before(async () => {
  py = await buildPythonEnv();
});
after(async () => {
  await py?.cleanup();
  await Promise.all(roots.map((r) => rm(r, { recursive: true, force: true })));
});

async function workspace(parquet: ParquetConfig = { encoderThreads: 1 }): Promise<{ root: string; pipeline: Pipeline; close(): Promise<void> }> {
  const root = await mkdtemp(join(tmpdir(), "casparian-parquet-"));
  roots.push(root);
  const pipeline = scriptedPipeline({ outputRoot: root, sinks: await loadSinkPlugins([], root, parquet), logger });
  await pipeline.start();
  return { root, pipeline, close: () => pipeline.shutdown() };
}

/** Every file under root, relative, sorted: proves what a reader could see. */
async function listFiles(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath ?? (e as unknown as { path: string }).path, e.name).slice(root.length + 1))
    .sort();
}

describe("Parquet sink", () => {
  test("pyarrow and DuckDB read back exactly what was written: values, types, nulls, timestamps, unicode", async () => {
    const ws = await workspace();
    const job = makeJob({ sinks: [sinkSpec("sales", "parquet://out/sales.parquet?row_group_size=700")] });
    const tables = [sampleTable(1000, 0), sampleTable(1, 1000), sampleTable(1499, 1001)];
    const outcome = await runJob(
      ws.pipeline,
      job,
      tables.map((t, i) => batchOf("sales", t, i)),
    );
    await ws.close();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    const file = join(ws.root, "out", `sales_${job.jobId}.parquet`);
    assert.deepEqual(outcome.artifacts, [{ topic: "sales", uri: `parquet://${file}` }]);
    assert.deepEqual(await listFiles(ws.root), [`out/sales_${job.jobId}.parquet`]);

    const expected = canonicalColumns(sampleTable(2500, 0));
    const rows = 2500;
    const lineage = { _job_id: Array(rows).fill(job.jobId.toString()), _file_version_id: Array(rows).fill(job.command.fileVersionId.toString()) };

    const viaPyarrow = await readParquet(py, "pyarrow", file);
    assert.equal(viaPyarrow.num_rows, rows);
    assert.deepEqual(viaPyarrow.row_group_rows, [700, 700, 700, 400]);
    assert.equal(viaPyarrow.compression, "SNAPPY");
    assert.deepEqual(
      viaPyarrow.columns.map((c) => [c.name, c.type]),
      [
        ["id", "int64"],
        ["amount", "double"],
        ["label", "string"],
        ["flag", "bool"],
        ["ts", "timestamp[us, tz=UTC]"],
        ["_job_id", "uint64"],
        ["_file_version_id", "int64"],
      ],
    );
    assert.deepEqual(columnValues(viaPyarrow), { ...expected, ...lineage });
    assert.deepEqual(viaPyarrow.metadata, {
      "casparian.job_id": job.jobId.toString(),
      "casparian.plugin_name": "sales_parser",
      "casparian.env_hash": job.command.envHash,
      "casparian.worker_id": "worker-test",
      "casparian.file_version_id": job.command.fileVersionId.toString(),
      "casparian.topic": "sales",
    });

    const viaDuckdb = await readParquet(py, "duckdb", file);
    assert.deepEqual(
      viaDuckdb.columns.map((c) => [c.name, c.type]),
      [
        ["id", "BIGINT"],
        ["amount", "DOUBLE"],
        ["label", "VARCHAR"],
        ["flag", "BOOLEAN"],
        ["ts", "TIMESTAMP WITH TIME ZONE"],
        ["_job_id", "UBIGINT"],
        ["_file_version_id", "BIGINT"],
      ],
    );
    assert.deepEqual(columnValues(viaDuckdb), { ...expected, ...lineage });
  });

  test("what a pandas plugin publishes survives: categoricals with changing dictionaries, ns/tz timestamps, dates, decimals, lists, structs, binary, uint64", async () => {
    const ws = await workspace({ encoderThreads: 1, rowGroupSize: 1500 });
    const script = join(packageRoot(), "test", "fixtures", "sinks-readback", "pandas_types.py");
    const inputs = await mkdtemp(join(tmpdir(), "casparian-pandas-"));
    roots.push(inputs);
    await runPython(py, `import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")`, [script, "make", inputs]);
    const batches = await Promise.all(
      [0, 1].map(async (k) => {
        const ipc = new Uint8Array(await readFile(join(inputs, `b${k}.arrows`)));
        const table = tableFromIPC(ipc);
        return { topic: "t", index: k, ipc, table, numRows: table.numRows, retain: () => () => undefined };
      }),
    );
    const job = makeJob({ sinks: [sinkSpec("t", "parquet://pandas.parquet", "replace")] });
    const outcome = await runJob(ws.pipeline, job, batches);
    await ws.close();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    const report = JSON.parse(
      await runPython(py, `import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")`, [
        script,
        "compare",
        inputs,
        join(ws.root, "pandas.parquet"),
      ]),
    ) as Record<string, unknown>;
    assert.equal(report._rows, 2000);
    delete report._rows;
    assert.equal(Object.keys(report).length, 12);
    for (const [column, [sourceType, writtenType, equal]] of Object.entries(report as Record<string, [string, string, boolean]>)) {
      assert.equal(equal, true, `${column}: values differ after the round trip`);
      assert.equal(writtenType, sourceType, `${column}: read back as ${writtenType}, pyarrow's own writer gives ${sourceType}`);
    }
  });

  test("encoding on the main thread and on two encoder threads writes the same data", async () => {
    const results = [];
    for (const encoderThreads of [0, 2]) {
      const ws = await workspace({ encoderThreads, rowGroupSize: 300 });
      const job = makeJob({ sinks: [sinkSpec("t", "parquet://t.parquet", "replace")] });
      const outcome = await runJob(
        ws.pipeline,
        job,
        [0, 1, 2, 3].map((i) => batchOf("t", sampleTable(450, i * 450), i)),
      );
      await ws.close();
      assert.equal(outcome.status, "SUCCESS", String(outcome.error));
      results.push(await readParquet(py, "pyarrow", join(ws.root, "t.parquet")));
    }
    assert.deepEqual(results[0]!.row_group_rows, [300, 300, 300, 300, 300, 300]);
    assert.deepEqual(results[0], results[1]);
    assert.deepEqual(columnValues(results[0]!).label, canonicalColumns(sampleTable(1800)).label);
  });

  test("row-group statistics stay right when one thread's buffers carry many row groups in turn", async () => {
    // Pieces come back in recycled buffers, and the footer keeps every row group's
    // statistics until the file is finished: they must not be views of a reused buffer.
    const ws = await workspace({ encoderThreads: 1, rowGroupSize: 100 });
    const job = makeJob({ sinks: [sinkSpec("t", "parquet://stats.parquet", "replace")] });
    const outcome = await runJob(
      ws.pipeline,
      job,
      [0, 1, 2].map((i) => batchOf("t", sampleTable(400, i * 400), i)),
    );
    await ws.close();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    const code = `import sys, json, pyarrow.parquet as pq
md = pq.ParquetFile(sys.argv[1]).metadata
out = []
for g in range(md.num_row_groups):
    col = md.row_group(g).column(0)
    out.append([md.row_group(g).num_rows, str(col.statistics.min), str(col.statistics.max)])
print(json.dumps(out))`;
    const groups = JSON.parse(await runPython(py, code, [join(ws.root, "stats.parquet")])) as Array<[number, string, string]>;
    assert.equal(groups.length, 12);
    const first = 9_007_199_254_740_993n;
    groups.forEach(([rows, min, max], g) => {
      assert.equal(rows, 100);
      assert.equal(min, String(first + BigInt(g * 100)), `row group ${g} min`);
      assert.equal(max, String(first + BigInt(g * 100 + 99)), `row group ${g} max`);
    });
  });

  test("compression and row group size come from the URI query, over the config", async () => {
    const ws = await workspace({ encoderThreads: 1, compression: "gzip", rowGroupSize: 50 });
    const job = makeJob({
      sinks: [sinkSpec("a", "parquet://a.parquet?compression=zstd&row_group_size=100", "replace"), sinkSpec("b", "parquet://b.parquet", "replace")],
    });
    const outcome = await runJob(ws.pipeline, job, [batchOf("a", sampleTable(250)), batchOf("b", sampleTable(120))]);
    await ws.close();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    const a = await readParquet(py, "pyarrow", join(ws.root, "a.parquet"));
    const b = await readParquet(py, "pyarrow", join(ws.root, "b.parquet"));
    assert.equal(a.compression, "ZSTD");
    assert.deepEqual(a.row_group_rows, [100, 100, 50]);
    assert.equal(b.compression, "GZIP");
    assert.deepEqual(b.row_group_rows, [50, 50, 20]);
  });

  test("bad URI options fail the job before anything is written", async () => {
    const ws = await workspace();
    for (const [uri, pattern] of [
      ["parquet://x.parquet?compression=lzma", /compression: expected one of "snappy", .*, got "lzma"/],
      ["parquet://x.parquet?row_group_size=0", /row_group_size: expected a positive integer, got number 0/],
      ["parquet://x.parquet?row_group_size=1e9x", /row_group_size: expected a positive integer, got "1e9x"/],
      ["parquet://x.parquet?rowgroups=5", /unknown parameter "rowgroups"/],
    ] as const) {
      const job = makeJob({ sinks: [sinkSpec("t", uri)] });
      const outcome = await runJob(ws.pipeline, job, [batchOf("t", sampleTable(3))]);
      assert.equal(outcome.status, "FAILED");
      assert.ok(Errors.SINK_BAD_URI.is(outcome.error), String(outcome.error));
      assert.match(outcome.error!.message, pattern);
    }
    await ws.close();
    assert.deepEqual(await listFiles(ws.root), []);
  });

  describe("modes", () => {
    test("append writes one file per job, <stem>_<job id>.parquet", async () => {
      const ws = await workspace();
      for (const jobId of [1n, 2n]) {
        const job = makeJob({ jobId, sinks: [sinkSpec("t", "parquet://daily/sales.parquet", "append")] });
        const outcome = await runJob(ws.pipeline, job, [batchOf("t", sampleTable(10 * Number(jobId)))]);
        assert.equal(outcome.status, "SUCCESS", String(outcome.error));
      }
      await ws.close();
      assert.deepEqual(await listFiles(ws.root), ["daily/sales_1.parquet", "daily/sales_2.parquet"]);
      assert.equal((await readParquet(py, "pyarrow", join(ws.root, "daily/sales_2.parquet"))).num_rows, 20);
    });

    test("replace swaps the target for the new file", async () => {
      const ws = await workspace();
      for (const rows of [30, 7]) {
        const job = makeJob({ sinks: [sinkSpec("t", "parquet://current.parquet", "replace")] });
        const outcome = await runJob(ws.pipeline, job, [batchOf("t", sampleTable(rows))]);
        assert.equal(outcome.status, "SUCCESS", String(outcome.error));
        assert.equal((await readParquet(py, "pyarrow", join(ws.root, "current.parquet"))).num_rows, rows);
      }
      await ws.close();
      assert.deepEqual(await listFiles(ws.root), ["current.parquet"]);
    });

    test("replace leaves the old target intact when the job fails", async () => {
      const ws = await workspace();
      await writeFile(join(ws.root, "keep.parquet"), "previous output");
      const job = makeJob({ sinks: [sinkSpec("t", "parquet://keep.parquet", "replace")] });
      const outcome = await runJob(ws.pipeline, job, [batchOf("t", sampleTable(5))], { guestFails: new Error("guest crashed") });
      await ws.close();
      assert.equal(outcome.status, "FAILED");
      assert.equal(await readFile(join(ws.root, "keep.parquet"), "utf8"), "previous output");
      assert.deepEqual(await listFiles(ws.root), ["keep.parquet"]);
    });

    test("error fails the job at open when the target exists", async () => {
      const ws = await workspace();
      await writeFile(join(ws.root, "once.parquet"), "already here");
      const job = makeJob({ sinks: [sinkSpec("t", "parquet://once.parquet", "error")] });
      const outcome = await runJob(ws.pipeline, job, [batchOf("t", sampleTable(5))]);
      await ws.close();
      assert.equal(outcome.status, "FAILED");
      assert.ok(Errors.SINK_TARGET_EXISTS.is(outcome.error), String(outcome.error));
      assert.equal((outcome.error as { context: { jobId?: bigint } }).context.jobId, job.jobId);
      assert.equal(await readFile(join(ws.root, "once.parquet"), "utf8"), "already here");
    });

    test("error fails the commit when the target appeared during the job, and writes when it is free", async () => {
      const ws = await workspace();
      const racing = makeJob({ jobId: 1n, sinks: [sinkSpec("t", "parquet://race.parquet", "error")] });
      // Someone else creates the target after the sink prepared (and checked it), before it commits.
      ws.pipeline.hooks.prepareCommit.tapPromise({ name: "Racer", stage: Stage.OBSERVE }, async (job) => {
        if (job.jobId === racing.jobId) await writeFile(join(ws.root, "race.parquet"), "someone else");
      });
      const outcome = await runJob(ws.pipeline, racing, [batchOf("t", sampleTable(5))]);
      assert.equal(outcome.status, "FAILED");
      assert.ok(Errors.SINK_TARGET_EXISTS.is(outcome.error), String(outcome.error));
      assert.equal(await readFile(join(ws.root, "race.parquet"), "utf8"), "someone else");
      assert.deepEqual(outcome.artifacts, []);

      const free = makeJob({ sinks: [sinkSpec("t", "parquet://free.parquet", "error")] });
      const ok = await runJob(ws.pipeline, free, [batchOf("t", sampleTable(5))]);
      await ws.close();
      assert.equal(ok.status, "SUCCESS", String(ok.error));
      assert.deepEqual(await listFiles(ws.root), ["free.parquet", "race.parquet"]);
    });
  });

  test("paths outside the output root are refused", async () => {
    const ws = await workspace();
    const outside = await mkdtemp(join(tmpdir(), "casparian-outside-"));
    roots.push(outside);
    await symlink(outside, join(ws.root, "link"));
    for (const uri of [
      "parquet://../escape.parquet",
      "parquet://a/../../escape.parquet",
      `parquet://${outside}/abs.parquet`,
      "parquet://link/through-symlink.parquet",
      "parquet://%2E%2E/encoded.parquet",
    ]) {
      const job = makeJob({ sinks: [sinkSpec("t", uri)] });
      const outcome = await runJob(ws.pipeline, job, [batchOf("t", sampleTable(2))]);
      assert.equal(outcome.status, "FAILED", uri);
      assert.ok(Errors.SINK_PATH_ESCAPE.is(outcome.error), `${uri}: ${String(outcome.error)}`);
      assert.equal((outcome.error as { context: { sinkUri?: string } }).context.sinkUri, uri);
    }
    await ws.close();
    assert.deepEqual(await readdir(outside), []);
    assert.deepEqual(await readdir(dirname(ws.root)).then((names) => names.filter((n) => n.includes("escape") || n.includes("encoded"))), []);
  });

  test("a topic with zero rows gives an empty typed file; a topic with no batch publishes nothing", async () => {
    const ws = await workspace();
    const job = makeJob({ sinks: [sinkSpec("empty", "parquet://empty.parquet", "replace"), sinkSpec("silent", "parquet://silent.parquet", "replace")] });
    const outcome = await runJob(ws.pipeline, job, [batchOf("empty", sampleTable(0))]);
    await ws.close();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.deepEqual(
      outcome.artifacts.map((a) => a.topic),
      ["empty"],
    );
    assert.equal(outcome.metrics.sinks_without_batches, 1);
    assert.deepEqual(await listFiles(ws.root), ["empty.parquet"]);
    const empty = await readParquet(py, "pyarrow", join(ws.root, "empty.parquet"));
    assert.equal(empty.num_rows, 0);
    assert.deepEqual(
      empty.columns.map((c) => c.type),
      ["int64", "double", "string", "bool", "timestamp[us, tz=UTC]", "uint64", "int64"],
    );
  });

  test("no reader sees a partial file: before commit only a hidden staging file exists; abort removes it", async () => {
    const ws = await workspace();
    const job = makeJob({ sinks: [sinkSpec("t", "parquet://deep/dir/out.parquet", "replace")] });
    let staged: string[] = [];
    // A gate that looks at the prepared job and vetoes its commit: the sink must abort.
    ws.pipeline.hooks.onConclude.tapPromise("Gate", async (outcome) => {
      staged = await listFiles(ws.root);
      outcome.status = "FAILED";
      outcome.error = new Error("vetoed after prepare");
    });
    const outcome = await runJob(ws.pipeline, job, [batchOf("t", sampleTable(100))]);
    assert.equal(outcome.status, "FAILED");
    assert.equal(staged.length, 1);
    assert.ok(isStagingName(basename(staged[0]!)) && basename(staged[0]!).startsWith(".out.parquet.stg-"), staged[0]);
    await ws.close();
    assert.deepEqual(await listFiles(ws.root), []);
  });

  test("a writer thread whose file fails fails only that file; later files go to a fresh thread", async () => {
    const root = await mkdtemp(join(tmpdir(), "casparian-writers-"));
    roots.push(root);
    const pool = new ParquetWriterPool(1);
    const settings = { compression: "snappy" as const, rowGroupSize: 100, metadata: [], plainColumns: [] };
    const ipcOf = (rows: number) => batchOf("t", sampleTable(rows)).ipc.slice();
    // The pool writes files its caller created (the sink creates its staging file after its containment check).
    for (const name of ["broken", "beside", "later"]) await writeFile(join(root, `${name}.parquet`), "");
    try {
      const broken = pool.open(join(root, "broken.parquet"), settings, 2);
      const beside = pool.open(join(root, "beside.parquet"), settings, 2);
      await broken.write(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
      await beside.write(ipcOf(10));
      await assert.rejects(broken.finish(), /Parquet writer failed/);
      const first = await beside.finish();
      const later = pool.open(join(root, "later.parquet"), settings, 2);
      await later.write(ipcOf(5));
      const second = await later.finish();
      assert.notEqual(first.threadId, 0);
      assert.notEqual(second.threadId, first.threadId, "the failed thread was replaced");
      assert.equal((await readParquet(py, "pyarrow", join(root, "beside.parquet"))).num_rows, 10);
      assert.equal((await readParquet(py, "pyarrow", join(root, "later.parquet"))).num_rows, 5);
    } finally {
      await pool.close();
    }
  });

  test("the wasm fallback (engine: wasm, or no addon): pinned parquet-wasm, its streaming writer on a thread, plain and delta encodings where they pay, page indexes", async () => {
    const manifest = JSON.parse(await readFile(join(packageRoot(), "package.json"), "utf8")) as { dependencies: Record<string, string> };
    assert.equal(manifest.dependencies["parquet-wasm"], ENGINE.version, "parquet-wasm is pinned to exactly the installed version");
    assert.deepEqual(ENGINE, { library: "parquet-wasm", version: "0.8.0", api: "transformParquetStream" });

    const ws = await workspace({ engine: "wasm", encoderThreads: 1 });
    const { logger: captured, records } = capturingLogger();
    const job = makeJob({ logger: captured, sinks: [sinkSpec("t", "parquet://fast.parquet", "replace")] });
    const outcome = await runJob(ws.pipeline, job, [batchOf("t", sampleTable(3000))]);
    await ws.close();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    const written = records.find((r) => r.msg === "Parquet file written");
    assert.ok(written, "the sink reports which engine wrote the file");
    assert.deepEqual(written.engine, ENGINE);
    assert.notEqual(written.threadId, 0, "written on a writer thread, not the main thread");

    const code = `import sys, json, pyarrow.parquet as pq
md = pq.ParquetFile(sys.argv[1]).metadata
g = md.row_group(0)
cols = {g.column(i).path_in_schema: g.column(i) for i in range(g.num_columns)}
print(json.dumps({"created_by": md.created_by, "id": sorted(cols["id"].encodings), "job": sorted(cols["_job_id"].encodings),
  "indexes": all(c.has_column_index and c.has_offset_index for c in cols.values()), "stats": all(c.statistics is not None and c.statistics.has_min_max for c in cols.values() if c.path_in_schema != "flag")}))`;
    const facts = JSON.parse(await runPython(py, code, [join(ws.root, "fast.parquet")])) as {
      created_by: string;
      id: string[];
      job: string[];
      indexes: boolean;
      stats: boolean;
    };
    assert.match(facts.created_by, /^casparian-flow via parquet-wasm 0\.8\.0/);
    assert.ok(!facts.id.includes("RLE_DICTIONARY"), `unique ids are written plain, not dictionary-encoded: ${facts.id.join(",")}`);
    assert.ok(facts.job.includes("DELTA_BINARY_PACKED"), `lineage is delta-encoded: ${facts.job.join(",")}`);
    assert.equal(facts.indexes, true, "every column chunk has a column index and an offset index");
    assert.equal(facts.stats, true, "every column chunk has min/max statistics");
  });

  test("the native engine is the one in use, and what it writes round-trips through pyarrow: int64 beyond 2^53, timestamps, decimals, nulls, dictionaries; statistics, page indexes, casparian.* metadata", async () => {
    const native = loadNativeEngine();
    assert.ok(
      "addon" in native,
      `the native engine must be built in the test environment (npm ci builds it): ${"error" in native ? native.error.message : ""}`,
    );
    const cargo = await readFile(join(packageRoot(), "sinks", "parquet-native", "Cargo.toml"), "utf8");
    assert.match(
      cargo,
      new RegExp(`^parquet = \\{ version = "=${NATIVE_ENGINE.version.replaceAll(".", "\\.")}"`, "m"),
      "the parquet crate is pinned to exactly the version the engine reports",
    );

    // The batches pyarrow itself makes (as a guest would), and pyarrow's own reading of the file we write.
    const inputs = await mkdtemp(join(tmpdir(), "casparian-native-"));
    roots.push(inputs);
    const make = `import sys, decimal, datetime, pyarrow as pa
def table(start, n):
    ids = [2**53 + 1 + start + i for i in range(n)]
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "big": pa.array([None if i % 5 == 0 else 2**63 - 1 - i for i in range(n)], pa.int64()),
        "ts": pa.array([None if i % 7 == 3 else datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(microseconds=1_000_001 * (start + i)) for i in range(n)], pa.timestamp("us", tz="UTC")),
        "ns": pa.array([1_700_000_000_123_456_789 + start + i for i in range(n)], pa.timestamp("ns")),
        "price": pa.array([None if i % 4 == 1 else decimal.Decimal(start + i).scaleb(-2) + decimal.Decimal("12345678901234.5") for i in range(n)], pa.decimal128(20, 4)),
        "cat": pa.array([["north", "south", None, "east"][(start + i) % 4] for i in range(n)]).dictionary_encode(),
        "label": pa.array([None if i % 11 == 5 else f"row {start + i} ü" for i in range(n)], pa.string()),
    })
for k, (start, n) in enumerate([(0, 5000), (5000, 3000)]):
    with pa.ipc.new_stream(f"{sys.argv[1]}/b{k}.arrows", table(start, n).schema) as w:
        w.write_table(table(start, n))
`;
    await runPython(py, make, [inputs]);
    const batches = await Promise.all(
      [0, 1].map(async (k) => {
        const ipc = new Uint8Array(await readFile(join(inputs, `b${k}.arrows`)));
        const table = tableFromIPC(ipc);
        return { topic: "t", index: k, ipc, table, numRows: table.numRows, retain: () => () => undefined };
      }),
    );
    const ws = await workspace({ rowGroupSize: 3000 });
    const { logger: captured, records } = capturingLogger();
    const job = makeJob({ logger: captured, sinks: [sinkSpec("t", "parquet://native.parquet", "replace")] });
    const outcome = await runJob(ws.pipeline, job, batches);
    await ws.close();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    const written = records.find((r) => r.msg === "Parquet file written");
    assert.ok(written, "the sink reports which engine wrote the file");
    assert.deepEqual(written.engine, NATIVE_ENGINE, "the native engine wrote the file");
    assert.ok(typeof written.threads === "number" && written.threads >= 1);

    const check = `import sys, json, glob, pyarrow as pa, pyarrow.parquet as pq
source = pa.concat_tables([pa.ipc.open_stream(open(f, "rb").read()).read_all() for f in sorted(glob.glob(sys.argv[1] + "/b*.arrows"))])
f = pq.ParquetFile(sys.argv[2])
md = f.metadata
read = f.read()
data = read.drop_columns(["_job_id", "_file_version_id"])
chunks = [md.row_group(g).column(c) for g in range(md.num_row_groups) for c in range(md.num_columns)]
print(json.dumps({
  "equal": data.equals(source.cast(data.schema)) and data.schema == source.schema,
  "types": {n: str(t) for n, t in zip(read.schema.names, read.schema.types)},
  "row_groups": [md.row_group(g).num_rows for g in range(md.num_row_groups)],
  "created_by": md.created_by,
  "kv": {k.decode(): v.decode() for k, v in md.metadata.items() if k.decode().startswith("casparian.")},
  "indexes": all(c.has_column_index and c.has_offset_index for c in chunks),
  "stats": all(c.statistics is not None and c.statistics.has_min_max for c in chunks if c.path_in_schema != "cat" or True),
  "id_min": str(md.row_group(0).column(0).statistics.min),
  "lineage": sorted(set(read.column("_job_id").to_pylist())) + sorted(set(read.column("_file_version_id").to_pylist())),
  "id_encodings": sorted(md.row_group(0).column(0).encodings),
  "job_encodings": sorted(md.row_group(0).column(7).encodings),
}))`;
    const facts = JSON.parse(await runPython(py, check, [inputs, join(ws.root, "native.parquet")])) as {
      equal: boolean;
      types: Record<string, string>;
      row_groups: number[];
      created_by: string;
      kv: Record<string, string>;
      indexes: boolean;
      stats: boolean;
      id_min: string;
      lineage: number[];
      id_encodings: string[];
      job_encodings: string[];
    };
    assert.deepEqual(facts.types, {
      id: "int64",
      big: "int64",
      ts: "timestamp[us, tz=UTC]",
      ns: "timestamp[ns]",
      price: "decimal128(20, 4)",
      cat: "dictionary<values=string, indices=int32, ordered=0>",
      label: "string",
      _job_id: "uint64",
      _file_version_id: "int64",
    });
    assert.equal(facts.equal, true, "every value and type reads back as pyarrow wrote it");
    assert.deepEqual(facts.row_groups, [3000, 3000, 2000]);
    assert.match(facts.created_by, /^casparian-flow via parquet-rs 60\.1\.0 \(native\)/);
    assert.deepEqual(facts.kv, {
      "casparian.job_id": job.jobId.toString(),
      "casparian.plugin_name": job.command.pluginName,
      "casparian.env_hash": job.command.envHash,
      "casparian.worker_id": "worker-test",
      "casparian.file_version_id": job.command.fileVersionId.toString(),
      "casparian.topic": "t",
    });
    assert.equal(facts.indexes, true, "every column chunk has a column index and an offset index");
    assert.equal(facts.stats, true, "every column chunk has min/max statistics");
    assert.equal(facts.id_min, "9007199254740993");
    assert.deepEqual(facts.lineage, [Number(job.jobId), Number(job.command.fileVersionId)]);
    assert.ok(!facts.id_encodings.includes("RLE_DICTIONARY"), `unique ids are written plain, as the sink decided: ${facts.id_encodings.join(",")}`);
    assert.ok(facts.job_encodings.includes("DELTA_BINARY_PACKED"), `lineage is delta-encoded: ${facts.job_encodings.join(",")}`);
  });

  test("native writer threads serve file after file, and more files open at once than threads kept idle all complete (a descriptor or a path)", async () => {
    const native = loadNativeEngine();
    assert.ok("addon" in native, "the native engine is built");
    const root = await mkdtemp(join(tmpdir(), "casparian-native-threads-"));
    roots.push(root);
    const settings = { compression: "snappy" as const, rowGroupSize: 100, metadata: [], plainColumns: [] };
    const open = async (name: string, byDescriptor: boolean, rows: number) => {
      const path = join(root, `${name}.parquet`);
      await writeFile(path, "");
      const batch = batchOf("t", sampleTable(rows));
      const fd = byDescriptor ? openSync(path, fsConstants.O_WRONLY) : null;
      try {
        const file = new NativeParquetFile(
          native.addon,
          fd ?? path,
          batch.table.schema,
          settings,
          { jobId: 1n, fileVersionId: 2n },
          2,
          fd === null ? undefined : batch.ipc,
        );
        return { path, rows, batch, file };
      } finally {
        if (fd !== null) closeSync(fd);
      }
    };
    // Ten at once (more than the four threads kept idle), written in turns, then ten one after another.
    const together = await Promise.all(Array.from({ length: 10 }, (_, i) => open(`together-${i}`, i % 2 === 0, 10 + i)));
    for (const { file, batch } of together) await file.write(batch.ipc);
    for (const { file, batch } of together.reverse()) await file.write(batch.ipc);
    const reports = await Promise.all(together.map(({ file }) => file.finish()));
    assert.deepEqual(
      reports.map((r) => r.rows),
      together.map(({ rows }) => rows * 2),
    );
    for (let i = 0; i < 10; i++) {
      const { file, batch, path, rows } = await open(`sequential-${i}`, i % 2 === 1, 5 + i);
      await file.write(batch.ipc);
      assert.equal((await file.finish()).rows, rows);
      assert.equal((await readParquet(py, "pyarrow", path)).num_rows, rows);
    }
    for (const { path, rows } of together) assert.equal((await readParquet(py, "pyarrow", path)).num_rows, rows * 2);
  });

  test("the native engine turns a malformed IPC stream into an error, never a crash, and the job fails with the catalogue's error", async () => {
    const native = loadNativeEngine();
    assert.ok("addon" in native, "the native engine is built");
    const root = await mkdtemp(join(tmpdir(), "casparian-native-bad-"));
    roots.push(root);
    const good = batchOf("t", sampleTable(50));
    const settings = { compression: "snappy" as const, rowGroupSize: 100, metadata: [], plainColumns: [] };
    const lineage = { jobId: 1n, fileVersionId: 2n };
    // Garbage, a stream cut short, and a stream whose strings are not UTF-8.
    const corrupt = good.ipc.slice();
    const at = Buffer.from(corrupt.buffer, corrupt.byteOffset, corrupt.byteLength).indexOf("plain #15");
    assert.ok(at > 0);
    corrupt.fill(0xff, at, at + 5);
    for (const [name, bytes] of [
      ["garbage", new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])],
      ["truncated", good.ipc.slice(0, Math.floor(good.ipc.length / 2))],
      ["corrupt", corrupt],
    ] as const) {
      const path = join(root, `${name}.parquet`);
      await writeFile(path, "");
      const file = new NativeParquetFile(native.addon, path, good.table.schema, settings, lineage, 2);
      await file.write(bytes).catch(() => {});
      await assert.rejects(file.finish(), (err: Error) => /malformed Arrow IPC|column|panicked|Invalid/i.test(err.message), name);
    }
    // The process is alive and the engine still writes.
    const path = join(root, "after.parquet");
    await writeFile(path, "");
    const file = new NativeParquetFile(native.addon, path, good.table.schema, settings, lineage, 2);
    await file.write(good.ipc);
    const report = await file.finish();
    assert.equal(report.rows, 50);
    assert.equal((await readParquet(py, "pyarrow", path)).num_rows, 50);

    // Through the sink: a batch whose bytes are not what its table says fails the job with CSP_SINK_WRITE_FAILED and a hint.
    const ws = await workspace();
    const job = makeJob({ sinks: [sinkSpec("t", "parquet://bad.parquet", "replace")] });
    const outcome = await runJob(ws.pipeline, job, [
      { ...good, ipc: new Uint8Array([255, 255, 255, 255, 16, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]) },
    ]);
    await ws.close();
    assert.equal(outcome.status, "FAILED");
    assert.ok(Errors.SINK_WRITE_FAILED.is(outcome.error), String(outcome.error));
    assert.match((outcome.error as { hint?: string }).hint ?? "", /not a valid Arrow IPC stream/);
    assert.deepEqual(await listFiles(ws.root), []);
  });

  test("without the addon the engine says why, and the fallback's warning names a code and a fix", async () => {
    assert.ok(NATIVE_ADDON_PATH.endsWith(join("sinks", "parquet-native", "casparian_parquet.node")));
    const unavailable = Errors.PARQUET_NATIVE_UNAVAILABLE(["not built"]);
    assert.equal(unavailable.code, "CSP_PARQUET_NATIVE_UNAVAILABLE");
    assert.match(unavailable.hint ?? "", /Rust toolchain.*npm run build:native/);
  });

  test("chunks larger than one writer stream are cut into slices at odd offsets (nulls, bools, timestamps): every value lands, in full row groups", async () => {
    const ws = await workspace({ encoderThreads: 1, rowGroupSize: 10_000 });
    const job = makeJob({ sinks: [sinkSpec("t", "parquet://sliced.parquet", "replace")] });
    // 1,001 rows, then 80,000: the streams to the writer (65,536 rows each) cut the second chunk at its row 64,535.
    const outcome = await runJob(ws.pipeline, job, [batchOf("t", sampleTable(1001, 0), 0), batchOf("t", sampleTable(80_000, 1001), 1)]);
    await ws.close();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    const read = await readParquet(py, "pyarrow", join(ws.root, "sliced.parquet"));
    assert.deepEqual(read.row_group_rows, [10_000, 10_000, 10_000, 10_000, 10_000, 10_000, 10_000, 10_000, 1_001]);
    const rows = 81_001;
    const lineage = { _job_id: Array(rows).fill(job.jobId.toString()), _file_version_id: Array(rows).fill(job.command.fileVersionId.toString()) };
    assert.deepEqual(columnValues(read), { ...canonicalColumns(sampleTable(rows, 0)), ...lineage });
  });

  test("ten thousand one-row chunks: every row lands, in full row groups", async () => {
    const ws = await workspace({ encoderThreads: 1, rowGroupSize: 4_000 });
    const job = makeJob({ sinks: [sinkSpec("t", "parquet://tiny.parquet", "replace")] });
    const one = sampleTable(1);
    const outcome = await runJob(
      ws.pipeline,
      job,
      Array.from({ length: 10_000 }, (_, i) => batchOf("t", one, i)),
    );
    await ws.close();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    const read = await readParquet(py, "pyarrow", join(ws.root, "tiny.parquet"));
    assert.equal(read.num_rows, 10_000);
    assert.deepEqual(read.row_group_rows, [4_000, 4_000, 2_000]);
  });

  test("a schema that widens inside one file (null placeholder, then int32 to int64) rewrites what was written: one file, the wide types, every value", async () => {
    const ws = await workspace({ encoderThreads: 1, rowGroupSize: 2 });
    const job = makeJob({ sinks: [sinkSpec("t", "parquet://wide.parquet", "replace")] });
    const placeholder = new Table({
      n: vectorFromArray([1, 2, 3], new Int32()),
      qty: vectorFromArray([null, null, null], new Null()),
      s: vectorFromArray(["a", "b", "c"], new Utf8()),
    });
    const typed = new Table({
      n: vectorFromArray([4, 5], new Int32()),
      qty: vectorFromArray([7n, null], new Int64()),
      s: vectorFromArray(["d", null], new Utf8()),
    });
    const wider = new Table({ n: vectorFromArray([6n], new Int64()), qty: vectorFromArray([8n], new Int64()), s: vectorFromArray(["e"], new Utf8()) });
    const outcome = await runJob(ws.pipeline, job, [batchOf("t", placeholder, 0), batchOf("t", typed, 1), batchOf("t", wider, 2)]);
    await ws.close();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.deepEqual(await listFiles(ws.root), ["wide.parquet"]);
    const read = await readParquet(py, "pyarrow", join(ws.root, "wide.parquet"));
    assert.deepEqual(
      read.columns.map((c) => [c.name, c.type]),
      [
        ["n", "int64"],
        ["qty", "int64"],
        ["s", "string"],
        ["_job_id", "uint64"],
        ["_file_version_id", "int64"],
      ],
    );
    const values = columnValues(read);
    assert.deepEqual(values.n, ["1", "2", "3", "4", "5", "6"]);
    assert.deepEqual(values.qty, [null, null, null, "7", null, "8"]);
    assert.deepEqual(values.s, ["a", "b", "c", "d", null, "e"]);
    assert.equal(new Set(values._job_id).size, 1);
  });

  test("recovery running again mid-job (a RELOAD) leaves the job's staging alone", async () => {
    const ws = await workspace();
    const job = makeJob({ sinks: [sinkSpec("t", "parquet://reload.parquet", "replace")] });
    const outcome = await runJob(ws.pipeline, job, async (publish) => {
      await publish(batchOf("t", sampleTable(20)));
      await ws.pipeline.start();
    });
    await ws.close();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.equal((await readParquet(py, "pyarrow", join(ws.root, "reload.parquet"))).num_rows, 20);
  });

  test("recover removes staging left by a dead process and keeps a live one's and other hosts'", async () => {
    const root = await mkdtemp(join(tmpdir(), "casparian-recover-"));
    roots.push(root);
    await mkdir(join(root, "nested"), { recursive: true });
    const dead = spawnSync(process.execPath, ["-e", ""]).pid!;
    const ours = stagingPathFor(join(root, "nested", "sales_7.parquet"), 7n);
    const withPid = (path: string, pid: number) => path.replace(/-\d+$/, `-${pid}`);
    const crashed = withPid(ours, dead);
    const live = withPid(stagingPathFor(join(root, "live.parquet"), 8n), process.ppid);
    const otherHost = withPid(stagingPathFor(join(root, "remote.parquet"), 9n), dead).replace(/-[0-9a-f]{8}-(\d+)$/, "-00000000-$1");
    const finalFile = join(root, "nested", "kept.parquet");
    // Our own pid: an earlier process with the same pid (a restarted container) vs. our running job.
    const samePidEarlierProcess = stagingPathFor(join(root, "restarted.parquet"), 10n);
    const ownRunningJob = stagingPathFor(join(root, "running.parquet"), 11n);
    for (const path of [crashed, live, otherHost, finalFile, samePidEarlierProcess, ownRunningJob]) await writeFile(path, "x");
    const longAgo = new Date("2020-01-01T00:00:00Z");
    await utimes(samePidEarlierProcess, longAgo, longAgo);

    await scriptedPipeline({ outputRoot: root, sinks: await loadSinkPlugins([], root, { encoderThreads: 0 }), logger }).start();

    const left = await listFiles(root);
    assert.ok(!left.includes(crashed.slice(root.length + 1)), "staging of the dead process is removed");
    assert.ok(left.includes(live.slice(root.length + 1)), "staging of a live process is kept");
    assert.ok(left.includes(otherHost.slice(root.length + 1)), "staging from another host is kept");
    assert.ok(left.includes("nested/kept.parquet"));
    assert.ok(!left.includes(samePidEarlierProcess.slice(root.length + 1)), "staging of an earlier process with our pid is removed");
    assert.ok(left.includes(ownRunningJob.slice(root.length + 1)), "staging of this process's running job is kept");
    assert.deepEqual(await removeStaleStaging(join(root, "missing"), logger), []);
    await stat(finalFile);
  });
});
