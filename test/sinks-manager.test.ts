/**
 * SinkManager: routing, the two-phase commit, schema rules and the reporting
 * defaults, with the real Parquet sink next to a recording sink.
 */
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { Field, Int32, Int64, Null, Table, Utf8, vectorFromArray, Schema, makeData, RecordBatch, Struct } from "apache-arrow";
import { pino } from "pino";
import { type CasparianError, Errors } from "../core/kernel/errors.js";
import type { Pipeline } from "../core/pipeline/pipeline.js";
import { loadSinkPlugins } from "../core/pipeline/sink-loader.js";
import { SinkManager, type LoadedSink } from "../core/pipeline/sink-manager.js";
import { defineSink, type SinkPlugin } from "../sinks/api.js";
import { arrowTypeName } from "../sinks/contract.js";
import { SAMPLE_CONTRACT, batchOf, capturingLogger, recordingSinkPlugin, sampleTable, type SinkEvent } from "./helpers/arrow.js";
import { makeJob, runJob, scriptedPipeline, sinkSpec } from "./helpers/pipeline.js";

const logger = pino({ level: "silent" });
const roots: string[] = [];
after(() => Promise.all(roots.map((r) => rm(r, { recursive: true, force: true }))));

async function setup(extra: LoadedSink[] = []): Promise<{ root: string; pipeline: Pipeline }> {
  const root = await mkdtemp(join(tmpdir(), "casparian-manager-"));
  roots.push(root);
  const sinks = [...(await loadSinkPlugins([], root, { encoderThreads: 0 })), ...extra];
  return { root, pipeline: scriptedPipeline({ outputRoot: root, sinks, logger }) };
}

/** A mem:// sink that records each batch's schema ("name:type", "!" when not nullable), and the values of the last column when it has nulls. */
function schemaRecorder(seen: string[]): SinkPlugin {
  return defineSink({
    name: "schema-recorder",
    schemes: ["mem"],
    create: () => ({
      write(batch) {
        const fields = batch.table.schema.fields.map((f) => `${f.name}:${arrowTypeName(f.type)}${f.nullable ? "" : "!"}`).join(" ");
        const last = batch.table.getChildAt(batch.table.numCols - 1)!;
        seen.push(
          last.nullCount > 0 && batch.table.numCols > 1
            ? `${fields} [${[...batch.table.getChildAt(0)!].map(String).join(",")},${String(last.get(0))}]`
            : fields,
        );
      },
      prepare() {},
      commit: () => [],
      abort() {},
    }),
  });
}

const files = async (root: string) => (await readdir(root, { recursive: true })).sort();

describe("SinkManager", () => {
  test("two topics go to two different sinks, each getting only its own batches", async () => {
    const events: SinkEvent[] = [];
    const { root, pipeline } = await setup([{ plugin: recordingSinkPlugin({ events }), options: {} }]);
    const job = makeJob({ sinks: [sinkSpec("sales", "parquet://sales.parquet", "replace"), sinkSpec("errors", "mem://errors")] });
    const outcome = await runJob(pipeline, job, [
      batchOf("sales", sampleTable(5), 0),
      batchOf("errors", sampleTable(2), 0),
      batchOf("sales", sampleTable(6), 1),
    ]);
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.deepEqual(outcome.artifacts, [
      { topic: "sales", uri: `parquet://${join(root, "sales.parquet")}` },
      { topic: "errors", uri: "mem://errors?rows=2" },
    ]);
    assert.deepEqual(
      events.filter((e) => e.startsWith("write")),
      ["write errors#0"],
    );
    assert.equal(outcome.metrics["sink_rows.sales"], 11);
    assert.equal(outcome.metrics["sink_rows.errors"], 2);
    assert.deepEqual(await files(root), ["sales.parquet"]);
  });

  test("an unknown scheme fails the job naming the known schemes, before any sink opens", async () => {
    const events: SinkEvent[] = [];
    const { pipeline } = await setup([{ plugin: recordingSinkPlugin({ events }), options: {} }]);
    const job = makeJob({ sinks: [sinkSpec("a", "mem://a"), sinkSpec("b", "s3://bucket/key.parquet")] });
    const outcome = await runJob(pipeline, job, [batchOf("a", sampleTable(1))]);
    assert.equal(outcome.status, "FAILED");
    assert.ok(Errors.SINK_UNKNOWN_SCHEME.is(outcome.error), String(outcome.error));
    assert.match(outcome.error!.message, /s3:\/\/bucket\/key\.parquet.*known schemes: parquet:\/\/, mem:\/\//);
    assert.equal((outcome.error as CasparianError).context.jobId, job.jobId);
    assert.deepEqual(events, []);
  });

  test("a topic with no sink is dropped, warned about once, and counted", async () => {
    const { pipeline } = await setup();
    const { logger: jobLogger, records } = capturingLogger();
    const job = makeJob({ logger: jobLogger, sinks: [sinkSpec("sales", "parquet://sales.parquet")] });
    const outcome = await runJob(pipeline, job, [batchOf("debug", sampleTable(3), 0), batchOf("sales", sampleTable(2)), batchOf("debug", sampleTable(4), 1)]);
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.equal(outcome.metrics.unrouted_batches, 2);
    assert.equal(outcome.metrics.unrouted_rows, 7);
    assert.equal(outcome.metrics.sinks_without_batches, 0);
    const warnings = records.filter((r) => r.level === 40 && String(r.msg).includes("has no sink"));
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]!.topic, "debug");
  });

  test("a job whose plugin publishes to no configured topic succeeds with no artifacts and says so", async () => {
    const { root, pipeline } = await setup();
    const { logger: jobLogger, records } = capturingLogger();
    const job = makeJob({ logger: jobLogger, sinks: [sinkSpec("sales", "parquet://sales.parquet")] });
    const outcome = await runJob(pipeline, job, [batchOf("other", sampleTable(3))]);
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.deepEqual(outcome.artifacts, []);
    assert.equal(outcome.metrics.unrouted_batches, 1);
    assert.equal(outcome.metrics.sinks_without_batches, 1);
    assert.ok(records.some((r) => r.level === 40 && String(r.msg).includes("produced no batch")));
    assert.deepEqual(await files(root), []);
  });

  test("a prepare failure in one sink: none commits, all abort, no file appears", async () => {
    const events: SinkEvent[] = [];
    const { root, pipeline } = await setup([{ plugin: recordingSinkPlugin({ events, failOn: { topic: "b", step: "prepare" } }), options: {} }]);
    const job = makeJob({ sinks: [sinkSpec("a", "parquet://a.parquet"), sinkSpec("b", "mem://b"), sinkSpec("c", "mem://c")] });
    const outcome = await runJob(pipeline, job, [batchOf("a", sampleTable(3)), batchOf("b", sampleTable(3)), batchOf("c", sampleTable(3))]);
    assert.equal(outcome.status, "FAILED");
    assert.ok(Errors.SINK_WRITE_FAILED.is(outcome.error), String(outcome.error));
    const context = (outcome.error as CasparianError).context;
    assert.deepEqual([context.jobId, context.sinkUri, context.plugin], [job.jobId, "mem://b", "recording"]);
    assert.match(outcome.error!.message, /"recording" \(mem:\/\/b\) in prepare failed: prepare failed on purpose/);
    assert.ok(!events.some((e) => e.startsWith("commit")), events.join("\n"));
    assert.deepEqual(
      events.filter((e) => e.startsWith("abort")).map((e) => e.split(":")[0]),
      ["abort b", "abort c"],
    );
    assert.deepEqual(outcome.artifacts, []);
    assert.deepEqual(await files(root), [], "the Parquet sink aborted too: no final file, no staging");
  });

  test("a commit failure turns the job FAILED and aborts the sinks that had not committed", async () => {
    const events: SinkEvent[] = [];
    const { root, pipeline } = await setup([{ plugin: recordingSinkPlugin({ events, failOn: { topic: "a", step: "commit" } }), options: {} }]);
    const job = makeJob({ sinks: [sinkSpec("a", "mem://a"), sinkSpec("b", "parquet://b.parquet")] });
    const outcome = await runJob(pipeline, job, [batchOf("a", sampleTable(1)), batchOf("b", sampleTable(1))]);
    assert.equal(outcome.status, "FAILED");
    assert.match(String(outcome.error), /commit failed on purpose/);
    assert.deepEqual(
      events.slice(-2).map((e) => e.split(":")[0]),
      ["commit a", "abort a"],
    );
    assert.deepEqual(await files(root), []);
  });

  test("a failing open fails the job before the guest runs, and the sinks opened so far abort", async () => {
    const events: SinkEvent[] = [];
    const { pipeline } = await setup([{ plugin: recordingSinkPlugin({ events, failOn: { topic: "b", step: "open" } }), options: {} }]);
    const job = makeJob({ sinks: [sinkSpec("a", "mem://a"), sinkSpec("b", "mem://b"), sinkSpec("c", "mem://c")] });
    const outcome = await runJob(pipeline, job, [batchOf("a", sampleTable(1))]);
    assert.equal(outcome.status, "FAILED");
    assert.ok(!events.some((e) => e.startsWith("write") || e.includes(" c")), events.join("\n"));
    assert.deepEqual(
      events.filter((e) => e.startsWith("abort")).map((e) => e.split(":")[0]),
      ["abort a", "abort b"],
    );
  });

  describe("schema rules", () => {
    test("a batch that breaks schema_def fails the job listing every difference", async () => {
      const { root, pipeline } = await setup();
      const contract = JSON.stringify({
        columns: [
          { name: "id", type: "int32" },
          { name: "amount", type: "double", nullable: false },
          { name: "label", type: "utf8" },
          { name: "flag", type: "bool" },
          { name: "region", type: "string" },
        ],
      });
      const job = makeJob({ sinks: [sinkSpec("sales", "parquet://sales.parquet", "append", contract)] });
      const outcome = await runJob(pipeline, job, [batchOf("sales", sampleTable(10))]);
      assert.equal(outcome.status, "FAILED");
      assert.ok(Errors.SINK_SCHEMA_MISMATCH.is(outcome.error), String(outcome.error));
      const message = outcome.error!.message;
      for (const difference of [
        'column "id": expected type int32, got int64',
        'column "amount": declared not nullable but has 1 null(s)',
        'missing column "region" (string)',
        'unexpected column "ts" (timestamp[us,tz=UTC])',
      ]) {
        assert.ok(message.includes(difference), `${difference}\nnot in: ${message}`);
      }
      assert.ok(!message.includes('"label"') && !message.includes('"flag"'), message);
      assert.equal((outcome.error as CasparianError).context.sinkUri, "parquet://sales.parquet");
      assert.deepEqual(await files(root), []);
    });

    test("batches that honour schema_def pass (aliases, nullability checked on the data)", async () => {
      const { pipeline } = await setup();
      const job = makeJob({ sinks: [sinkSpec("sales", "parquet://sales.parquet", "append", SAMPLE_CONTRACT)] });
      const outcome = await runJob(pipeline, job, [batchOf("sales", sampleTable(10))]);
      assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    });

    test("an invalid schema_def fails the job with its own code", async () => {
      const { pipeline } = await setup();
      for (const bad of [
        "{not json",
        '{"cols": []}',
        '{"columns": [{"name": "x"}]}',
        '{"columns": [{"name": "x", "type": "int64"}, {"name": "x", "type": "int64"}]}',
      ]) {
        const job = makeJob({ sinks: [sinkSpec("t", "parquet://t.parquet", "append", bad)] });
        const outcome = await runJob(pipeline, job, []);
        assert.ok(Errors.SINK_BAD_SCHEMA_DEF.is(outcome.error), `${bad}: ${String(outcome.error)}`);
        assert.ok((outcome.error as CasparianError).hint);
      }
    });

    test("the batches of a topic are unified: narrower, reordered and missing columns take the topic's schema", async () => {
      const seen: string[] = [];
      const { pipeline } = await setup([{ plugin: schemaRecorder(seen), options: {} }]);
      const first = new Table({ id: vectorFromArray([1n, 2n], new Int64()), name: vectorFromArray(["a", "b"], new Utf8()) });
      const narrower = new Table({ id: vectorFromArray([3, 4], new Int32()), name: vectorFromArray(["c", "d"], new Utf8()) });
      const reordered = new Table({ name: vectorFromArray(["e"], new Utf8()), id: vectorFromArray([5n], new Int64()) });
      const missing = new Table({ id: vectorFromArray([6n], new Int64()) });
      const job = makeJob({ sinks: [sinkSpec("t", "parquet://t.parquet"), sinkSpec("t", "mem://t")] });
      const outcome = await runJob(pipeline, job, [batchOf("t", first, 0), batchOf("t", narrower, 1), batchOf("t", reordered, 2), batchOf("t", missing, 3)]);
      assert.equal(outcome.status, "SUCCESS", String(outcome.error));
      assert.deepEqual(seen, ["id:int64 name:string", "id:int64 name:string", "id:int64 name:string", "id:int64 name:string [6,null]"]);
    });

    test("a null column is a placeholder: it takes the first real type, and later all-null batches keep it", async () => {
      const seen: string[] = [];
      const { pipeline } = await setup([{ plugin: schemaRecorder(seen), options: {} }]);
      const placeholder = new Table({ id: vectorFromArray([1n], new Int64()), qty: vectorFromArray([null], new Null()) });
      const typed = new Table({ id: vectorFromArray([2n], new Int64()), qty: vectorFromArray([7n], new Int64()) });
      const job = makeJob({ sinks: [sinkSpec("t", "mem://t")] });
      const outcome = await runJob(pipeline, job, [batchOf("t", placeholder, 0), batchOf("t", typed, 1), batchOf("t", placeholder, 2)]);
      assert.equal(outcome.status, "SUCCESS", String(outcome.error));
      assert.deepEqual(seen, ["id:int64 qty:null! [1,null]", "id:int64 qty:int64", "id:int64 qty:int64 [1,null]"]);
    });

    test("a real conflict between batches fails with CSP_SCHEMA_CONFLICT naming the column, both types and the fix", async () => {
      const { root, pipeline } = await setup();
      const first = new Table({ qty: vectorFromArray([1n], new Int64()) });
      const text = new Table({ qty: vectorFromArray(["n/a"], new Utf8()) });
      const job = makeJob({ sinks: [sinkSpec("t", "parquet://t.parquet")] });
      const outcome = await runJob(pipeline, job, [batchOf("t", first, 0), batchOf("t", text, 1)]);
      assert.ok(Errors.SCHEMA_CONFLICT.is(outcome.error), String(outcome.error));
      assert.match(outcome.error!.message, /column 'qty' is int64 in one part of the data and string in another \(batch 1 of job \d+\)/);
      assert.match((outcome.error as CasparianError).hint ?? "", /MANIFEST\["topics"\]\["t"\]/);
      assert.equal((outcome.error as CasparianError).context.jobId, job.jobId);
      assert.deepEqual(await files(root), []);
    });

    test("non-nullable widens to nullable", async () => {
      const seen: string[] = [];
      const { pipeline } = await setup([{ plugin: schemaRecorder(seen), options: {} }]);
      const strict = new Schema([new Field("id", new Int64(), false)]);
      const loose = new Schema([new Field("id", new Int64(), true)]);
      const make = (schema: Schema, values: Array<bigint | null>) => {
        const vector = vectorFromArray(values, new Int64());
        return new Table(schema, [
          new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: values.length, nullCount: 0, children: [vector.data[0]!] })),
        ]);
      };
      const job = makeJob({ sinks: [sinkSpec("t", "mem://t")] });
      const outcome = await runJob(pipeline, job, [
        batchOf("t", make(strict, [1n]), 0),
        batchOf("t", make(loose, [null]), 1),
        batchOf("t", make(strict, [3n]), 2),
      ]);
      assert.equal(outcome.status, "SUCCESS", String(outcome.error));
      assert.deepEqual(seen, ["id:int64!", "id:int64", "id:int64"]);
    });

    test("lineage column names are reserved", async () => {
      const { pipeline } = await setup();
      const job = makeJob({ sinks: [sinkSpec("t", "parquet://t.parquet")] });
      const outcome = await runJob(pipeline, job, [batchOf("t", new Table({ _job_id: vectorFromArray([1n], new Int64()) }))]);
      assert.ok(Errors.SINK_SCHEMA_MISMATCH.is(outcome.error), String(outcome.error));
      assert.match(outcome.error!.message, /"_job_id" is reserved for lineage/);
    });
  });

  test("sinks of a concurrentPrepare plugin prepare at the same time, the others alone and in order; a failure waits for every prepare", async () => {
    const events: string[] = [];
    let running = 0;
    const plugin = (name: string, scheme: string, concurrentPrepare: boolean): SinkPlugin =>
      defineSink({
        name,
        schemes: [scheme],
        concurrentPrepare,
        create: (target) => ({
          write() {},
          async prepare() {
            events.push(`start ${target.topic} (running ${running})`);
            running++;
            // Yield a few turns: a prepare started meanwhile shows up in the counts above.
            for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
            running--;
            if (target.uri.includes("fail")) throw new Error(`prepare of ${target.topic} failed on purpose`);
            events.push(`prepared ${target.topic}`);
          },
          commit: () => [{ topic: target.topic, uri: target.uri }],
          abort() {
            events.push(`abort ${target.topic} (running ${running})`);
          },
        }),
      });
    const { pipeline } = await setup([
      { plugin: plugin("overlapping", "ov", true), options: {} },
      { plugin: plugin("alone", "se", false), options: {} },
    ]);
    const sinks = [sinkSpec("s1", "se://s1"), sinkSpec("o1", "ov://o1"), sinkSpec("s2", "se://s2"), sinkSpec("o2", "ov://o2")];
    const tables = ["s1", "o1", "s2", "o2"].map((topic) => batchOf(topic, sampleTable(1)));
    const ok = await runJob(pipeline, makeJob({ sinks }), tables);
    assert.equal(ok.status, "SUCCESS", String(ok.error));
    assert.deepEqual(events, [
      "start o1 (running 0)",
      "start o2 (running 1)",
      "prepared o1",
      "prepared o2",
      "start s1 (running 0)",
      "prepared s1",
      "start s2 (running 0)",
      "prepared s2",
    ]);

    events.length = 0;
    const failing = [sinkSpec("o1", "ov://o1?fail"), sinkSpec("s1", "se://s1"), sinkSpec("o2", "ov://o2")];
    const failed = await runJob(
      pipeline,
      makeJob({ sinks: failing }),
      ["o1", "s1", "o2"].map((topic) => batchOf(topic, sampleTable(1))),
    );
    assert.equal(failed.status, "FAILED");
    assert.match(String(failed.error), /prepare of o1 failed on purpose/);
    // o2's prepare finished before any abort; s1, after the failed o1 in order, never prepared.
    assert.deepEqual(events, [
      "start o1 (running 0)",
      "start o2 (running 1)",
      "prepared o2",
      "abort o1 (running 0)",
      "abort s1 (running 0)",
      "abort o2 (running 0)",
    ]);
  });

  test("two plugins claiming one scheme are refused, naming both", async () => {
    const events: SinkEvent[] = [];
    assert.throws(
      () =>
        new SinkManager({
          plugins: [
            { plugin: recordingSinkPlugin({ events, name: "first" }), options: {} },
            { plugin: recordingSinkPlugin({ events, name: "second" }), options: {} },
          ],
          logger,
          outputRoot: "/tmp",
        }),
      (err: unknown) => Errors.SINK_INVALID.is(err) && /second/.test((err as Error).message) && /first/.test((err as Error).message),
    );
  });
});
