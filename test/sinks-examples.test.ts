/**
 * The example sinks (examples/jsonl-sink.ts, examples/sqlite-sink.ts), registered by
 * their config files, loaded by the real config loader through jiti, run end to end.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { promisify } from "node:util";
import { Int32, Int64, Table, Utf8, vectorFromArray, type Vector } from "apache-arrow";
import Database from "better-sqlite3";
import { parse } from "lossless-json";
import { pino } from "pino";
import { loadConfig } from "../core/config/loader.js";
import { CasparianError } from "../core/kernel/errors.js";
import { packageRoot } from "../core/kernel/paths.js";
import type { SinkSpec } from "../core/kernel/job.js";
import type { JobOutcome } from "../core/kernel/job.js";
import type { Pipeline } from "../core/pipeline/pipeline.js";
import { loadSinkPlugins } from "../core/pipeline/sink-loader.js";
import { batchOf, nullColumn, sampleTable } from "./helpers/arrow.js";
import { idsWith, nullFirstChunks } from "./helpers/null-first.js";
import { makeJob, runJob, scriptedPipeline, sinkSpec } from "./helpers/pipeline.js";

const execFileAsync = promisify(execFile);
const logger = pino({ level: "silent" });
const roots: string[] = [];
after(() => Promise.all(roots.map((r) => rm(r, { recursive: true, force: true }))));

/** The input a job reads: its path and version (the modes of the SQL sinks act per input). */
interface Input {
  filePath?: string;
  fileVersionId?: bigint;
}

async function withExample(
  configFile: string,
): Promise<{ root: string; pipeline: Pipeline; run(sinks: SinkSpec[], rows?: number, jobId?: bigint, input?: Input): Promise<JobOutcome> }> {
  const { config, dir } = await loadConfig({ explicitPath: join("examples", configFile), cwd: packageRoot(), command: "worker" });
  const plugins = await loadSinkPlugins(config.sinks, dir, { encoderThreads: 0 });
  const root = await mkdtemp(join(tmpdir(), "casparian-example-"));
  roots.push(root);
  const pipeline = scriptedPipeline({ outputRoot: root, sinks: plugins, logger, workerId: "w" });
  await pipeline.start();
  const run = (sinks: SinkSpec[], rows = 25, jobId = 77n, input: Input = {}) => {
    const job = makeJob({ sinks, jobId, ...input });
    const half = Math.floor(rows / 2);
    return runJob(pipeline, job, [batchOf(sinks[0]!.topic, sampleTable(half, 0), 0), batchOf(sinks[0]!.topic, sampleTable(rows - half, half), 1)]);
  };
  return { root, pipeline, run };
}

const code = (err: Error | null) => (err instanceof CasparianError ? err.code : String(err));

describe("example sink config files", () => {
  test("their output is the current directory's ./output, as without a config, not a directory beside the config file", async (t) => {
    const cwd = await mkdtemp(join(tmpdir(), "casparian-example-cwd-"));
    t.after(() => rm(cwd, { recursive: true, force: true }));
    const plugin = join(packageRoot(), "examples", "hello", "plugin.py");
    for (const file of ["jsonl-sink.config.ts", "sqlite-sink.config.ts", "postgres-sink.config.ts"]) {
      const config = join(packageRoot(), "examples", file);
      const { stdout } = await execFileAsync(process.execPath, [join(packageRoot(), "bin", "casparian.js"), "validate", plugin, "--config", config], { cwd });
      assert.match(stdout, /^ok: /, file);
      assert.equal(/^ {2}output {2}(.*)$/m.exec(stdout)?.[1], join(cwd, "output"), `${file}:\n${stdout}`);
    }
    assert.deepEqual(await readdir(cwd), [], "validate creates nothing");
  });
});

describe("example JSON Lines sink", () => {
  test("writes one JSON object per row with exact int64s, unicode, nulls and lineage", async () => {
    const { root, run } = await withExample("jsonl-sink.config.ts");
    const outcome = await run([sinkSpec("events", "jsonl://events/day.jsonl", "append")]);
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    const file = join(root, "events", "day_77.jsonl");
    assert.deepEqual(outcome.artifacts, [{ topic: "events", uri: `jsonl://${file}` }]);
    const lines = (await readFile(file, "utf8")).trimEnd().split("\n");
    assert.equal(lines.length, 25);
    const rows = lines.map((line) => parse(line, undefined, (n: string) => (Number.isInteger(Number(n)) ? BigInt(n) : Number(n))) as Record<string, unknown>);
    assert.equal(rows[0]!.id, 9_007_199_254_740_993n);
    assert.equal(rows[1]!.label, "東京 #1");
    assert.equal(rows[3]!.amount, null);
    // Microseconds survive (apache-arrow's get would round them to milliseconds).
    assert.equal(rows[0]!.ts, "2024-01-01T00:00:00.000000Z");
    assert.equal(rows[1]!.ts, "2024-01-01T00:00:01.000001Z");
    assert.equal(rows[24]!._job_id, 77n);
    assert.deepEqual(await readdir(join(root, "events")), ["day_77.jsonl"]);
  });

  test("replace, error and a failed job follow the modes; staging never shows", async () => {
    const { root, pipeline, run } = await withExample("jsonl-sink.config.ts");
    assert.equal((await run([sinkSpec("t", "jsonl://t.jsonl", "replace")], 10)).status, "SUCCESS");
    assert.equal((await run([sinkSpec("t", "jsonl://t.jsonl", "replace")], 4)).status, "SUCCESS");
    assert.equal((await readFile(join(root, "t.jsonl"), "utf8")).trimEnd().split("\n").length, 4);

    const refused = await run([sinkSpec("t", "jsonl://t.jsonl", "error")], 3);
    assert.equal(code(refused.error), "CSP_SINK_TARGET_EXISTS");

    const job = makeJob({ sinks: [sinkSpec("t", "jsonl://t.jsonl", "replace")] });
    const failed = await runJob(pipeline, job, [batchOf("t", sampleTable(50))], { guestFails: new Error("guest died") });
    assert.equal(failed.status, "FAILED");
    assert.equal((await readFile(join(root, "t.jsonl"), "utf8")).trimEnd().split("\n").length, 4);
    assert.deepEqual(await readdir(root), ["t.jsonl"]);

    const escaped = await run([sinkSpec("t", "jsonl://../out.jsonl")]);
    assert.equal(code(escaped.error), "CSP_SINK_PATH_ESCAPE");
  });
});

describe("example SQLite sink", () => {
  const readTable = (file: string, table: string) => {
    const db = new Database(file, { readonly: true });
    db.defaultSafeIntegers(true);
    try {
      return db.prepare(`SELECT * FROM "${table}" ORDER BY rowid`).all() as Array<Record<string, unknown>>;
    } finally {
      db.close();
    }
  };

  test("relative and absolute database paths; rows, int64s, unicode and nulls arrive", async () => {
    const { root, run } = await withExample("sqlite-sink.config.ts");
    const outcome = await run([sinkSpec("sales", "sqlite://dbs/warehouse.db/sales", "append")]);
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    const file = join(root, "dbs", "warehouse.db");
    assert.deepEqual(outcome.artifacts, [{ topic: "sales", uri: `sqlite://${file}/sales` }]);
    const rows = readTable(file, "sales");
    assert.equal(rows.length, 25);
    assert.equal(rows[0]!.id, 9_007_199_254_740_993n);
    assert.equal(rows[2]!.label, "naïve café #2");
    assert.equal(rows[3]!.amount, null);
    assert.equal(rows[0]!.flag, 1n);
    // Microseconds survive (apache-arrow's get would round them to milliseconds).
    assert.equal(rows[0]!.ts, "2024-01-01T00:00:00.000000Z");
    assert.equal(rows[1]!.ts, "2024-01-01T00:00:01.000001Z");

    const elsewhere = await mkdtemp(join(tmpdir(), "casparian-sqlite-abs-"));
    roots.push(elsewhere);
    const absolute = await run([sinkSpec("sales", `sqlite://${elsewhere}/abs.db/sales`, "append")], 3);
    assert.equal(absolute.status, "SUCCESS", String(absolute.error));
    assert.equal(readTable(join(elsewhere, "abs.db"), "sales").length, 3);
  });

  test("modes act on the job's input: replace swaps its rows, append keeps its versions once each, error refuses it; other inputs untouched", async () => {
    const { root, pipeline, run } = await withExample("sqlite-sink.config.ts");
    const file = join(root, "w.db");
    const count = () => readTable(file, "t").length;
    const a1 = { filePath: "/data/a.csv", fileVersionId: 11n };
    const a2 = { filePath: "/data/a.csv", fileVersionId: 12n };
    const b1 = { filePath: "/data/b.csv", fileVersionId: 21n };
    const t = (mode: SinkSpec["mode"]) => [sinkSpec("t", "sqlite://w.db/t", mode)];
    assert.equal((await run(t("append"), 5, 1n, a1)).status, "SUCCESS");
    assert.equal((await run(t("append"), 6, 2n, b1)).status, "SUCCESS");
    assert.equal(count(), 11);
    assert.equal((await run(t("append"), 5, 3n, a1)).status, "SUCCESS");
    assert.equal(count(), 11, "the same version again (a retry, a rerun): no second copy");
    assert.equal((await run(t("append"), 3, 4n, a2)).status, "SUCCESS");
    assert.equal(count(), 14, "append keeps a.csv's earlier version");
    assert.deepEqual(
      readTable(file, "t")
        .map((r) => r._file_version_id)
        .filter((v, i, all) => all.indexOf(v) === i),
      [21n, 11n, 12n],
    );

    assert.equal((await run(t("replace"), 2, 5n, { filePath: "/data/a.csv", fileVersionId: 13n })).status, "SUCCESS");
    assert.equal(count(), 8, "replace: a.csv's rows of every version swapped for the new ones, b.csv's untouched");

    const refused = await run(t("error"), 3, 6n, a1);
    assert.equal(code(refused.error), "CSP_SINK_TARGET_EXISTS");
    assert.equal((await run(t("error"), 3, 7n, { filePath: "/data/c.csv", fileVersionId: 31n })).status, "SUCCESS");
    assert.equal(count(), 11);

    const job = makeJob({ sinks: t("replace"), ...b1 });
    const failed = await runJob(pipeline, job, [batchOf("t", sampleTable(40))], { guestFails: new Error("guest died") });
    assert.equal(failed.status, "FAILED");
    assert.equal(count(), 11, "a failed job leaves the table as it was");
    const db = new Database(file, { readonly: true });
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all();
    const ledger = db.prepare("SELECT file_path, file_version_id AS v, rows FROM _casparian_inputs ORDER BY file_path").all();
    db.close();
    assert.deepEqual(tables, [{ name: "_casparian_inputs" }, { name: "_casparian_schemas" }, { name: "t" }]);
    assert.deepEqual(ledger, [
      { file_path: "/data/a.csv", v: 13, rows: 2 },
      { file_path: "/data/b.csv", v: 21, rows: 6 },
      { file_path: "/data/c.csv", v: 31, rows: 3 },
    ]);
  });

  test("topics sharing one table (a catch-all sink): each keeps its rows; a rerun or a replace swaps exactly one (input version, topic)'s rows", async () => {
    const { root, pipeline } = await withExample("sqlite-sink.config.ts");
    const file = join(root, "w.db");
    const a1 = { filePath: "/data/a.csv", fileVersionId: 11n };
    const b1 = { filePath: "/data/b.csv", fileVersionId: 21n };
    // Every topic the guest publishes goes to table t: rows of topics "sales" and "rejects" of one input meet there.
    const job = (mode: SinkSpec["mode"], jobId: bigint, input: Input, sales: number, rejects: number) =>
      runJob(pipeline, makeJob({ sinks: [sinkSpec("*", "sqlite://w.db/t", mode)], jobId, ...input }), [
        batchOf("sales", sampleTable(sales, 0), 0),
        batchOf("rejects", sampleTable(rejects, 100), 1),
      ]);
    const contents = () => {
      const db = new Database(file, { readonly: true });
      try {
        const groups = db.prepare("SELECT _file_version_id || '/' || _topic AS k, count(*) AS n FROM t GROUP BY 1").all() as Array<{ k: string; n: number }>;
        return Object.fromEntries(groups.map((g) => [g.k, g.n]));
      } finally {
        db.close();
      }
    };
    for (const mode of ["append", "replace"] as const) {
      await rm(file, { force: true });
      const first = await job(mode, 1n, a1, 3, 2);
      assert.equal(first.status, "SUCCESS", String(first.error));
      assert.deepEqual(contents(), { "11/sales": 3, "11/rejects": 2 }, `${mode}: the second topic's commit keeps the first topic's rows`);
      assert.equal((await job(mode, 2n, b1, 4, 1)).status, "SUCCESS");
      assert.equal((await job(mode, 3n, a1, 3, 2)).status, "SUCCESS", "a rerun of a.csv");
      assert.deepEqual(contents(), { "11/sales": 3, "11/rejects": 2, "21/sales": 4, "21/rejects": 1 }, `${mode}: a rerun replaces exactly its own rows`);
    }
    // A new version of a.csv: replace swaps both of its topics' rows, b.csv's stay.
    assert.equal((await job("replace", 4n, { filePath: "/data/a.csv", fileVersionId: 12n }, 1, 1)).status, "SUCCESS");
    assert.deepEqual(contents(), { "12/sales": 1, "12/rejects": 1, "21/sales": 4, "21/rejects": 1 });
    const db = new Database(file, { readonly: true });
    const ledger = db.prepare("SELECT file_path || '@' || file_version_id || '/' || topic || '=' || rows AS e FROM _casparian_inputs ORDER BY e").all();
    db.close();
    assert.deepEqual(
      ledger.map((r) => (r as { e: string }).e),
      ["/data/a.csv@12/rejects=1", "/data/a.csv@12/sales=1", "/data/b.csv@21/rejects=1", "/data/b.csv@21/sales=4"],
    );
    // Mode error acts per (input, topic) too: both topics of a new input commit, a second run of it is refused.
    const c1 = { filePath: "/data/c.csv", fileVersionId: 31n };
    const fresh = await job("error", 5n, c1, 2, 2);
    assert.equal(fresh.status, "SUCCESS", String(fresh.error));
    assert.equal(code((await job("error", 6n, c1, 2, 2)).error), "CSP_SINK_TARGET_EXISTS");
    assert.equal(readTable(file, "t").length, 11);
  });

  test("replace: a topic the input no longer publishes to (its rejects, once the input is fixed) loses that input's rows; other inputs' stay", async () => {
    const { root, pipeline } = await withExample("sqlite-sink.config.ts");
    const file = join(root, "w.db");
    const sinks = [sinkSpec("clean", "sqlite://w.db/clean", "replace"), sinkSpec("rejects", "sqlite://w.db/rejects", "replace")];
    const job = (jobId: bigint, input: Input, rejects: number) =>
      runJob(pipeline, makeJob({ sinks, jobId, ...input }), [
        batchOf("clean", sampleTable(3, 0), 0),
        ...(rejects > 0 ? [batchOf("rejects", sampleTable(rejects, 100), 1)] : []),
      ]);
    assert.equal((await job(1n, { filePath: "/data/a.csv", fileVersionId: 11n }, 2)).status, "SUCCESS");
    assert.equal((await job(2n, { filePath: "/data/b.csv", fileVersionId: 21n }, 1)).status, "SUCCESS");
    const fixed = await job(3n, { filePath: "/data/a.csv", fileVersionId: 12n }, 0);
    assert.equal(fixed.status, "SUCCESS", String(fixed.error));
    assert.deepEqual(fixed.artifacts, [{ topic: "clean", uri: `sqlite://${file}/clean` }], "nothing is published to rejects");
    assert.deepEqual(
      readTable(file, "rejects").map((r) => r._file_version_id),
      [21n],
      "a.csv's rejects are gone, b.csv's stay",
    );
    assert.equal(readTable(file, "clean").length, 6);
    const db = new Database(file, { readonly: true });
    const ledger = db.prepare("SELECT target || ':' || file_path || '@' || file_version_id AS e FROM _casparian_inputs ORDER BY e").all();
    db.close();
    assert.deepEqual(
      ledger.map((r) => (r as { e: string }).e),
      ["clean:/data/a.csv@12", "clean:/data/b.csv@21", "rejects:/data/b.csv@21"],
    );
  });

  test("a table and ledger written before rows carried their topic: the next commit of an input version replaces its old rows once, no duplicates", async () => {
    const { root, run } = await withExample("sqlite-sink.config.ts");
    const file = join(root, "w.db");
    const first = await run([sinkSpec("t", "sqlite://w.db/t", "append")], 5, 1n, { filePath: "/data/a.csv", fileVersionId: 11n });
    assert.equal(first.status, "SUCCESS", String(first.error));
    // The earlier shape: no _topic on rows, a ledger keyed by (target, file_path, file_version_id) without topic.
    const old = new Database(file);
    old.exec(`ALTER TABLE t DROP COLUMN _topic;
      CREATE TABLE legacy (target TEXT NOT NULL, file_path TEXT NOT NULL, file_version_id INTEGER NOT NULL, job_id TEXT NOT NULL, rows INTEGER NOT NULL, PRIMARY KEY (target, file_path, file_version_id));
      INSERT INTO legacy SELECT target, file_path, file_version_id, job_id, rows FROM _casparian_inputs;
      DROP TABLE _casparian_inputs; ALTER TABLE legacy RENAME TO _casparian_inputs;`);
    old.close();
    const rerun = await run([sinkSpec("t", "sqlite://w.db/t", "append")], 4, 2n, { filePath: "/data/a.csv", fileVersionId: 11n });
    assert.equal(rerun.status, "SUCCESS", String(rerun.error));
    assert.deepEqual(
      readTable(file, "t").map((r) => r._topic),
      ["t", "t", "t", "t"],
    );
    const other = await run([sinkSpec("u", "sqlite://w.db/t", "append")], 2, 3n, { filePath: "/data/a.csv", fileVersionId: 11n });
    assert.equal(other.status, "SUCCESS", String(other.error));
    const db = new Database(file, { readonly: true });
    const ledger = db.prepare("SELECT topic || '=' || rows AS e FROM _casparian_inputs ORDER BY e").all();
    db.close();
    assert.deepEqual(
      ledger.map((r) => (r as { e: string }).e),
      ["t=4", "u=2"],
    );
    assert.equal(readTable(file, "t").length, 6);
  });

  const declaredTypes = (file: string, table: string) => {
    const db = new Database(file, { readonly: true });
    try {
      return Object.fromEntries(
        (db.prepare("SELECT name, type FROM pragma_table_info(?)").all(table) as Array<{ name: string; type: string }>).map((c) => [c.name, c.type]),
      );
    } finally {
      db.close();
    }
  };

  test("a column all null in the first chunk takes the type of a later chunk: int64, µs timestamps and decimals arrive exactly", async () => {
    const { root, pipeline } = await withExample("sqlite-sink.config.ts");
    const chunks = nullFirstChunks("t");
    const outcome = await runJob(pipeline, makeJob({ sinks: [sinkSpec("t", "sqlite://w.db/t")], jobId: 3n }), chunks);
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    const file = join(root, "w.db");
    assert.deepEqual(declaredTypes(file, "t"), { id: "INTEGER", q: "INTEGER", ts: "TEXT", price: "TEXT", _file_version_id: "INTEGER", _topic: "TEXT" });
    const rows = readTable(file, "t");
    assert.deepEqual(
      rows.map((r) => [r.id, r.q, r.ts, r.price]),
      [
        [1n, null, null, null],
        [2n, null, null, null],
        [3n, 9_007_199_254_740_993n, "2024-01-01T00:00:00.000001Z", "12.30"],
        [4n, -5n, null, "-0.05"],
        [5n, null, null, null],
      ],
    );
  });

  test("across jobs: a table whose column was all null takes the type another input brings; a conflict fails naming table, column and types", async () => {
    const { root, pipeline } = await withExample("sqlite-sink.config.ts");
    const file = join(root, "w.db");
    const job = (jobId: bigint, filePath: string, fileVersionId: bigint, q: Vector) =>
      runJob(pipeline, makeJob({ sinks: [sinkSpec("t", "sqlite://w.db/t", "replace")], jobId, filePath, fileVersionId }), [batchOf("t", idsWith(q))]);
    assert.equal((await job(1n, "/data/a.csv", 11n, nullColumn(2))).status, "SUCCESS");
    assert.equal(declaredTypes(file, "t").q, "", "a placeholder: no declared type");
    // Someone indexes the table: the rebuild that types the column keeps the index.
    const admin = new Database(file);
    admin.exec("CREATE INDEX t_q ON t (q)");
    admin.close();

    const b = await job(2n, "/data/b.csv", 21n, vectorFromArray([9_007_199_254_740_993n, 7n], new Int64()));
    assert.equal(b.status, "SUCCESS", String(b.error));
    assert.equal(declaredTypes(file, "t").q, "INTEGER");
    assert.equal((await job(3n, "/data/b.csv", 21n, vectorFromArray([9_007_199_254_740_993n, 7n], new Int64()))).status, "SUCCESS", "a rerun");
    assert.equal((await job(4n, "/data/c.csv", 31n, vectorFromArray([1, -2], new Int32()))).status, "SUCCESS", "int32 widens to the table's int64");
    assert.equal((await job(5n, "/data/d.csv", 41n, nullColumn(1))).status, "SUCCESS", "a null column is a placeholder again");
    const expected = [
      ["/data/a.csv", null],
      ["/data/a.csv", null],
      ["/data/b.csv", 9_007_199_254_740_993n],
      ["/data/b.csv", 7n],
      ["/data/c.csv", 1n],
      ["/data/c.csv", -2n],
      ["/data/d.csv", null],
    ];
    const byVersion: Record<string, string> = { "11": "/data/a.csv", "21": "/data/b.csv", "31": "/data/c.csv", "41": "/data/d.csv" };
    const contents = () => readTable(file, "t").map((r) => [byVersion[String(r._file_version_id)], r.q]);
    assert.deepEqual(contents(), expected);

    const conflict = await job(6n, "/data/e.csv", 51n, vectorFromArray(["n/a"], new Utf8()));
    assert.equal(code(conflict.error), "CSP_SCHEMA_CONFLICT");
    assert.match(conflict.error!.message, /column 'q' is int64 .* and string .*table t in /);
    assert.match((conflict.error as CasparianError).hint ?? "", /declare it in the plugin/);
    assert.deepEqual(contents(), expected, "the table is as it was");
    const db = new Database(file, { readonly: true });
    const objects = db.prepare("SELECT type, name FROM sqlite_master WHERE tbl_name = 't' ORDER BY name").all();
    db.close();
    assert.deepEqual(objects, [
      { type: "table", name: "t" },
      { type: "index", name: "t_q" },
    ]);

    // A column that appears in a later input is added; the earlier rows have NULL there.
    const later = await runJob(
      pipeline,
      makeJob({ sinks: [sinkSpec("t", "sqlite://w.db/t", "replace")], jobId: 7n, filePath: "/data/f.csv", fileVersionId: 61n }),
      [batchOf("t", new Table({ id: vectorFromArray([0n], new Int64()), q: vectorFromArray([8n], new Int64()), note: vectorFromArray(["new"], new Utf8()) }))],
    );
    assert.equal(later.status, "SUCCESS", String(later.error));
    assert.equal(declaredTypes(file, "t").note, "TEXT");
    assert.deepEqual(
      readTable(file, "t").map((r) => r.note),
      [null, null, null, null, null, null, null, "new"],
    );
  });

  test("a bad location fails with SINK_BAD_URI", async () => {
    const { run } = await withExample("sqlite-sink.config.ts");
    for (const uri of ["sqlite://just-a-table", "sqlite://db.sqlite/bad-name;drop", "sqlite://../up.db/t"]) {
      const outcome = await run([sinkSpec("t", uri)]);
      assert.match(code(outcome.error), /CSP_SINK_BAD_URI|CSP_SINK_PATH_ESCAPE/, uri);
    }
  });
});
