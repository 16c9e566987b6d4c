/**
 * All or nothing across a job's sinks, in one process: the real Parquet and SQLite sinks
 * (the SQLite one loaded from its example config), real files, a real database. A commit
 * that really fails part-way undoes the commits made before it; the retry writes once.
 * The crash cases (kill -9 between two commits) are in commit-crash.test.ts.
 */
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { tableFromIPC } from "apache-arrow";
import Database from "better-sqlite3";
import { pino } from "pino";
import { loadConfig } from "../core/config/loader.js";
import { Errors } from "../core/kernel/errors.js";
import { packageRoot } from "../core/kernel/paths.js";
import type { SinkSpec } from "../core/kernel/job.js";
import type { Pipeline } from "../core/pipeline/pipeline.js";
import { loadSinkPlugins } from "../core/pipeline/sink-loader.js";
import { readRowGroups } from "../sinks/parquet-engine.js";
import { batchOf, recordingSinkPlugin, sampleTable, type SinkEvent } from "./helpers/arrow.js";
import { makeJob, runJob, scriptedPipeline, sinkSpec } from "./helpers/pipeline.js";
import { startPostgres, type PostgresServer } from "./helpers/postgres.js";

const logger = pino({ level: "silent" });
const roots: string[] = [];
after(() => Promise.all(roots.map((r) => rm(r, { recursive: true, force: true }))));

async function setup(): Promise<{ root: string; pipeline: Pipeline }> {
  const { config, dir } = await loadConfig({ explicitPath: join("examples", "sqlite-sink.config.ts"), cwd: packageRoot(), command: "worker" });
  const root = await mkdtemp(join(tmpdir(), "casparian-commit-"));
  roots.push(root);
  const plugins = await loadSinkPlugins(
    [...(config.sinks ?? []), { use: join(packageRoot(), "examples", "postgres-sink.ts") }, { use: join(packageRoot(), "examples", "jsonl-sink.ts") }],
    dir,
    { encoderThreads: 0 },
  );
  const events: SinkEvent[] = [];
  plugins.push({ plugin: recordingSinkPlugin({ events, failOn: { topic: "mem-fails", step: "commit" } }), options: {} });
  const pipeline = scriptedPipeline({ outputRoot: root, sinks: plugins, logger, workerId: "w" });
  await pipeline.start();
  return { root, pipeline };
}

/** Rows and the job ids in them, of one Parquet file (read back with parquet-wasm). */
async function parquetJobs(file: string): Promise<{ rows: number; jobs: string[] }> {
  let rows = 0;
  const jobs = new Set<string>();
  for await (const ipc of readRowGroups(file)) {
    const table = tableFromIPC(ipc);
    rows += table.numRows;
    for (const id of table.getChild("_job_id")!) jobs.add(String(id));
  }
  return { rows, jobs: [...jobs] };
}

/** Rows of a SQLite table by _file_version_id, and its ledger (job ids per input version). */
function sqliteState(file: string, table: string): { rows: number; ledger: string[] } | null {
  const db = new Database(file, { readonly: true });
  try {
    if (db.prepare("SELECT 1 FROM sqlite_master WHERE name = ?").get(table) === undefined) return null;
    const rows = (db.prepare(`SELECT count(*) AS n FROM "${table}"`).get() as { n: number }).n;
    const ledger = (
      db
        .prepare("SELECT file_path || '@' || file_version_id || ':' || job_id || '=' || rows AS e FROM _casparian_inputs WHERE target = ? ORDER BY e")
        .all(table) as Array<{ e: string }>
    ).map((r) => r.e);
    return { rows, ledger };
  } finally {
    db.close();
  }
}

function tablesOf(file: string): string[] {
  const db = new Database(file, { readonly: true });
  try {
    return (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as Array<{ name: string }>).map((r) => r.name);
  } finally {
    db.close();
  }
}

function run(pipeline: Pipeline, sinks: SinkSpec[], jobId: bigint, rows: number, opts: { beforeEnd?: () => Promise<void> } = {}) {
  const job = makeJob({ sinks, jobId, filePath: "/data/in.csv", fileVersionId: 5n });
  return runJob(pipeline, job, async (publish) => {
    for (const spec of sinks) await publish(batchOf(spec.topic, sampleTable(rows), 0));
    await opts.beforeEnd?.();
  });
}

const hidden = async (root: string) => (await readdir(root)).filter((name) => name.startsWith("."));

describe("all or nothing across a job's sinks", () => {
  test("the second sink's commit fails: the first sink's commit is undone (the file it replaced is back); the retry writes each output once", async () => {
    const { root, pipeline } = await setup();
    const db = join(root, "w.db");
    const sinks = (table: string) => [sinkSpec("a", "parquet://a.parquet", "replace"), sinkSpec("b", `sqlite://w.db/${table}`, "append")];
    const first = await run(pipeline, sinks("t"), 1n, 3);
    assert.equal(first.status, "SUCCESS", String(first.error));
    assert.deepEqual(await parquetJobs(join(root, "a.parquet")), { rows: 3, jobs: ["1"] });

    // A real commit failure: a table that exists without the lineage column.
    const setupDb = new Database(db);
    setupDb.exec('CREATE TABLE "bad" (id INTEGER)');
    setupDb.close();
    const failed = await run(pipeline, sinks("bad"), 2n, 7);
    assert.equal(failed.status, "FAILED");
    assert.match(String(failed.error), /has no _file_version_id column/);
    assert.equal(failed.metrics.sinks_rolled_back, 1);
    assert.deepEqual(await parquetJobs(join(root, "a.parquet")), { rows: 3, jobs: ["1"] }, "the Parquet file job 2 had published is rolled back to job 1's");
    assert.equal(sqliteState(db, "bad")!.rows, 0);
    assert.deepEqual(await hidden(root), [], "no staging, backup or journal is left");

    // The Sentinel retries (a new job id) once the table is fixed: each output once.
    const fix = new Database(db);
    fix.exec('DROP TABLE "bad"');
    fix.close();
    const retry = await run(pipeline, sinks("bad"), 3n, 7);
    assert.equal(retry.status, "SUCCESS", String(retry.error));
    assert.deepEqual(await parquetJobs(join(root, "a.parquet")), { rows: 7, jobs: ["3"] });
    assert.deepEqual(sqliteState(db, "bad"), { rows: 7, ledger: ["/data/in.csv@5:3=7"] });
    assert.deepEqual(await hidden(root), []);
    assert.deepEqual(tablesOf(db), ["_casparian_inputs", "_casparian_schemas", "bad", "t"], "no undo table is left");
  });

  test("the Parquet commit fails after the SQLite one: the input's earlier rows and ledger come back", async () => {
    const { root, pipeline } = await setup();
    const db = join(root, "w.db");
    const first = await run(pipeline, [sinkSpec("b", "sqlite://w.db/t", "replace")], 1n, 4);
    assert.equal(first.status, "SUCCESS", String(first.error));
    assert.deepEqual(sqliteState(db, "t"), { rows: 4, ledger: ["/data/in.csv@5:1=4"] });

    // Mode error: the target appears while the job runs, so the Parquet sink's link at commit fails.
    const sinks = [sinkSpec("b", "sqlite://w.db/t", "replace"), sinkSpec("a", "parquet://a.parquet", "error")];
    const failed = await run(pipeline, sinks, 2n, 9, { beforeEnd: () => writeFile(join(root, "a.parquet"), "someone else's") });
    assert.equal(failed.status, "FAILED");
    assert.ok(Errors.SINK_TARGET_EXISTS.is(failed.error), String(failed.error));
    assert.deepEqual(sqliteState(db, "t"), { rows: 4, ledger: ["/data/in.csv@5:1=4"] }, "job 2's rows are rolled back, job 1's are back");
    assert.deepEqual(tablesOf(db), ["_casparian_inputs", "_casparian_schemas", "t"]);
    assert.deepEqual(await hidden(root), []);
  });

  test("a table the rolled-back commit created is dropped again", async () => {
    const { root, pipeline } = await setup();
    const sinks = [sinkSpec("b", "sqlite://w.db/fresh", "append"), sinkSpec("a", "parquet://a.parquet", "error")];
    const failed = await run(pipeline, sinks, 4n, 2, { beforeEnd: () => writeFile(join(root, "a.parquet"), "taken") });
    assert.equal(failed.status, "FAILED");
    assert.deepEqual(tablesOf(join(root, "w.db")), ["_casparian_inputs", "_casparian_schemas"]);
    const db = new Database(join(root, "w.db"), { readonly: true });
    assert.deepEqual(db.prepare("SELECT target FROM _casparian_schemas").all(), [], "nor is its schema recorded");
    db.close();
  });

  test("a sink that cannot undo commits last: when it fails, the sinks before it are undone", async () => {
    const { root, pipeline } = await setup();
    // Configured first, it still commits after the Parquet and SQLite sinks.
    const sinks = [sinkSpec("mem-fails", "mem://x"), sinkSpec("a", "parquet://a.parquet", "append"), sinkSpec("b", "sqlite://w.db/t", "append")];
    const failed = await run(pipeline, sinks, 6n, 3);
    assert.equal(failed.status, "FAILED");
    assert.match(String(failed.error), /commit failed on purpose/);
    assert.equal(failed.metrics.sinks_rolled_back, 2);
    assert.deepEqual(await readdir(root), ["w.db"]);
    assert.deepEqual(tablesOf(join(root, "w.db")), ["_casparian_inputs", "_casparian_schemas"]);
  });

  test("topics sharing one SQLite table (a catch-all sink) are rolled back each to its own earlier rows", async () => {
    const { root, pipeline } = await setup();
    const db = join(root, "w.db");
    const job = (jobId: bigint, sinks: SinkSpec[], rows: number) =>
      runJob(pipeline, makeJob({ sinks, jobId, filePath: "/data/in.csv", fileVersionId: 5n }), async (publish) => {
        await publish(batchOf("sales", sampleTable(rows), 0));
        await publish(batchOf("rejects", sampleTable(rows + 1), 1));
        if (sinks.length > 1) await publish(batchOf("mem-fails", sampleTable(1), 2));
      });
    const topics = () => {
      const d = new Database(db, { readonly: true });
      try {
        return d
          .prepare("SELECT _topic || '=' || count(*) AS e FROM t GROUP BY _topic ORDER BY 1")
          .all()
          .map((r) => (r as { e: string }).e);
      } finally {
        d.close();
      }
    };
    const first = await job(1n, [sinkSpec("*", "sqlite://w.db/t", "replace")], 2);
    assert.equal(first.status, "SUCCESS", String(first.error));
    assert.deepEqual(topics(), ["rejects=3", "sales=2"]);
    const failed = await job(2n, [sinkSpec("*", "sqlite://w.db/t", "replace"), sinkSpec("mem-fails", "mem://x")], 6);
    assert.equal(failed.status, "FAILED");
    assert.equal(failed.metrics.sinks_rolled_back, 2);
    assert.deepEqual(topics(), ["rejects=3", "sales=2"], "each topic's rows of job 1 are back, once");
    assert.deepEqual(sqliteState(db, "t")!.ledger, ["/data/in.csv@5:1=2", "/data/in.csv@5:1=3"]);
    assert.deepEqual(tablesOf(db), ["_casparian_inputs", "_casparian_schemas", "t"], "no undo table is left");
  });

  test("mode replace with no batch for the topic removes the input's earlier rows there, and a rollback puts them back", async () => {
    const { root, pipeline } = await setup();
    const db = join(root, "w.db");
    assert.equal((await run(pipeline, [sinkSpec("rejects", "sqlite://w.db/rejects", "replace")], 1n, 3)).status, "SUCCESS");
    const rerun = (jobId: bigint, sinks: SinkSpec[]) =>
      runJob(pipeline, makeJob({ sinks, jobId, filePath: "/data/in.csv", fileVersionId: 6n }), async (publish) => {
        for (const spec of sinks.filter((s) => s.topic !== "rejects")) await publish(batchOf(spec.topic, sampleTable(1), 0));
      });
    const failed = await rerun(2n, [sinkSpec("rejects", "sqlite://w.db/rejects", "replace"), sinkSpec("mem-fails", "mem://x")]);
    assert.equal(failed.status, "FAILED");
    assert.equal(failed.metrics.sinks_rolled_back, 1);
    assert.deepEqual(sqliteState(db, "rejects"), { rows: 3, ledger: ["/data/in.csv@5:1=3"] }, "the removal is undone");
    const fixed = await rerun(3n, [sinkSpec("rejects", "sqlite://w.db/rejects", "replace")]);
    assert.equal(fixed.status, "SUCCESS", String(fixed.error));
    assert.deepEqual(sqliteState(db, "rejects"), { rows: 0, ledger: [] });
    assert.deepEqual(tablesOf(db), ["_casparian_inputs", "_casparian_schemas", "rejects"], "no undo table is left");
  });

  test("the example JSON Lines sink is rolled back too: the file it replaced is back", async () => {
    const { root, pipeline } = await setup();
    assert.equal((await run(pipeline, [sinkSpec("a", "jsonl://t.jsonl", "replace")], 1n, 2)).status, "SUCCESS");
    const before = await readFile(join(root, "t.jsonl"), "utf8");
    const failed = await run(
      pipeline,
      [sinkSpec("a", "jsonl://t.jsonl", "replace"), sinkSpec("b", "sqlite://w.db/t", "append"), sinkSpec("mem-fails", "mem://x")],
      2n,
      6,
    );
    assert.equal(failed.status, "FAILED");
    assert.equal(failed.metrics.sinks_rolled_back, 2);
    assert.equal(await readFile(join(root, "t.jsonl"), "utf8"), before);
    assert.deepEqual(await hidden(root), []);
  });

  test("a job with one sink writes no journal and keeps no backup", async () => {
    const { root, pipeline } = await setup();
    for (const jobId of [1n, 2n]) assert.equal((await run(pipeline, [sinkSpec("a", "parquet://a.parquet", "replace")], jobId, 2)).status, "SUCCESS");
    assert.deepEqual(await readdir(root), ["a.parquet"]);
  });
});

describe("all or nothing with the PostgreSQL sink", () => {
  let server: PostgresServer;
  before(async () => {
    server = await startPostgres();
  });
  after(() => server?.stop());
  const pg = (table: string) => `postgres://postgres@127.0.0.1:${server.port}/postgres/public.${table}`;
  const state = async (table: string) => {
    const found = await server.query<{ oid: string | null }>("SELECT to_regclass($1) AS oid", [`public.${table}`]);
    if (found[0]!.oid === null) return null;
    const rows = Number((await server.query<{ n: string }>(`SELECT count(*) AS n FROM public."${table}"`))[0]!.n);
    const ledger = await server.query<{ e: string }>(
      "SELECT file_version_id || ':' || job_id || '=' || rows AS e FROM public._casparian_inputs WHERE target = $1 ORDER BY 1",
      [table],
    );
    return { rows, ledger: ledger.map((r) => r.e) };
  };
  const undoTables = async () =>
    (await server.query<{ name: string }>("SELECT relname AS name FROM pg_class WHERE relname LIKE '\\_casparian\\_undo%'")).map((r) => r.name);

  test("the Parquet commit fails after the PostgreSQL one: the input's earlier rows and ledger come back; a table the commit created is dropped", async () => {
    const { root, pipeline } = await setup();
    assert.equal((await run(pipeline, [sinkSpec("b", pg("t"), "replace")], 1n, 4)).status, "SUCCESS");
    assert.deepEqual(await state("t"), { rows: 4, ledger: ["5:1=4"] });

    const failed = await run(pipeline, [sinkSpec("b", pg("t"), "replace"), sinkSpec("a", "parquet://a.parquet", "error")], 2n, 9, {
      beforeEnd: () => writeFile(join(root, "a.parquet"), "taken"),
    });
    assert.ok(Errors.SINK_TARGET_EXISTS.is(failed.error), String(failed.error));
    assert.equal(failed.metrics.sinks_rolled_back, 1);
    assert.deepEqual(await state("t"), { rows: 4, ledger: ["5:1=4"] }, "job 2's rows are rolled back, job 1's are back");

    const fresh = await run(pipeline, [sinkSpec("b", pg("fresh"), "append"), sinkSpec("a", "parquet://a.parquet", "error")], 3n, 2);
    assert.equal(fresh.status, "FAILED");
    assert.equal(await state("fresh"), null, "the table the rolled-back commit created is gone");
    assert.deepEqual(await undoTables(), []);
    assert.deepEqual(await hidden(root), []);
  });

  test("mode replace with no batch for the topic removes the input's earlier rows, and a rollback puts them back", async () => {
    const { pipeline } = await setup();
    assert.equal((await run(pipeline, [sinkSpec("rejects", pg("gone"), "replace")], 1n, 3)).status, "SUCCESS");
    const rerun = (jobId: bigint, sinks: SinkSpec[]) =>
      runJob(pipeline, makeJob({ sinks, jobId, filePath: "/data/in.csv", fileVersionId: 6n }), async (publish) => {
        for (const spec of sinks.filter((s) => s.topic !== "rejects")) await publish(batchOf(spec.topic, sampleTable(1), 0));
      });
    const failed = await rerun(2n, [sinkSpec("rejects", pg("gone"), "replace"), sinkSpec("mem-fails", "mem://x")]);
    assert.equal(failed.status, "FAILED");
    assert.equal(failed.metrics.sinks_rolled_back, 1);
    assert.deepEqual(await state("gone"), { rows: 3, ledger: ["5:1=3"] }, "the removal is undone");
    const fixed = await rerun(3n, [sinkSpec("rejects", pg("gone"), "replace")]);
    assert.equal(fixed.status, "SUCCESS", String(fixed.error));
    assert.deepEqual(await state("gone"), { rows: 0, ledger: [] });
    assert.deepEqual(await undoTables(), []);
  });

  test("the PostgreSQL commit fails after the Parquet one: the Parquet file is rolled back; the retry writes both once, and leaves no undo table", async () => {
    const { root, pipeline } = await setup();
    await server.query('CREATE TABLE public."nolineage" (id bigint)');
    const sinks = (table: string) => [sinkSpec("a", "parquet://a.parquet", "append"), sinkSpec("b", pg(table), "append")];
    const failed = await run(pipeline, sinks("nolineage"), 7n, 3);
    assert.equal(failed.status, "FAILED");
    assert.match(String(failed.error), /has no _file_version_id column/);
    assert.deepEqual(await readdir(root), [], "the Parquet file job 7 had published is gone");

    const retry = await run(pipeline, sinks("withlineage"), 8n, 3);
    assert.equal(retry.status, "SUCCESS", String(retry.error));
    assert.deepEqual(await parquetJobs(join(root, "a_8.parquet")), { rows: 3, jobs: ["8"] });
    assert.deepEqual(await state("withlineage"), { rows: 3, ledger: ["5:8=3"] });
    const again = await run(pipeline, sinks("withlineage"), 8n, 3);
    assert.equal(again.status, "SUCCESS", String(again.error));
    assert.deepEqual(await state("withlineage"), { rows: 3, ledger: ["5:8=3"] }, "a retry with the same job id replaces, never duplicates");
    assert.deepEqual(await readdir(root), ["a_8.parquet"]);
    assert.deepEqual(await undoTables(), []);
  });
});
