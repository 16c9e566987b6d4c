/**
 * The example PostgreSQL sink (examples/postgres-sink.ts), registered by its config
 * file, loaded by the real config loader through jiti, run end to end against a real
 * PostgreSQL server started for this file (test/helpers/postgres.ts).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  Binary,
  DateDay,
  Dictionary,
  Field,
  Float32,
  Int16,
  Int32,
  Int64,
  Int8,
  List,
  Null,
  Table,
  TimestampNanosecond,
  Uint32,
  Uint64,
  Utf8,
  makeData,
  makeVector,
  vectorFromArray,
  type Vector,
} from "apache-arrow";
import { pino } from "pino";
import type { SinkReference } from "../core/config/config.js";
import { loadConfig } from "../core/config/loader.js";
import { CasparianError } from "../core/kernel/errors.js";
import type { JobOutcome } from "../core/kernel/job.js";
import type { SinkSpec } from "../core/kernel/job.js";
import { packageRoot } from "../core/kernel/paths.js";
import type { Pipeline } from "../core/pipeline/pipeline.js";
import { Stage } from "../hooks/index.js";
import { loadSinkPlugins } from "../core/pipeline/sink-loader.js";
import { batchOf, canonicalColumns, nullColumn, sampleTable } from "./helpers/arrow.js";
import { idsWith, nullFirstChunks } from "./helpers/null-first.js";
import { makeJob, runJob, scriptedPipeline, sinkSpec } from "./helpers/pipeline.js";
import { startPostgres, type PostgresServer } from "./helpers/postgres.js";

const logger = pino({ level: "silent" });
const DATABASE = "casparian";
const MAX_JOB_ID = 18_446_744_073_709_551_615n;
const HOST_TAG = createHash("sha256").update(hostname()).digest("hex").slice(0, 8);
const EXAMPLE = join(packageRoot(), "examples", "postgres-sink.ts");

let server: PostgresServer;
const roots: string[] = [];
before(async () => {
  server = await startPostgres();
  await server.query(`CREATE DATABASE ${DATABASE}`);
});
after(async () => {
  await server?.stop();
  await Promise.all(roots.map((r) => rm(r, { recursive: true, force: true })));
});

/** Rows of the `casparian` database (the server's admin connection is on `postgres`). */
async function query<R extends Record<string, unknown>>(sql: string, params: unknown[] = []): Promise<R[]> {
  const { default: pg } = await import("pg");
  const client = new pg.Client({ host: server.socketDir, port: server.port, user: "postgres", database: DATABASE });
  await client.connect();
  try {
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

const stagingTables = async () =>
  (await query<{ name: string }>("SELECT relname AS name FROM pg_class WHERE relname LIKE '\\_casparian\\_stg\\_%' ORDER BY 1")).map((r) => r.name);
const columnTypes = async (table: string) =>
  Object.fromEntries(
    (
      await query<{ column_name: string; data_type: string }>(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
        [table],
      )
    ).map((r) => [r.column_name, r.data_type]),
  );
const count = async (table: string) => Number((await query<{ n: string }>(`SELECT count(*) AS n FROM public."${table}"`))[0]!.n);
const code = (err: Error | null) => (err instanceof CasparianError ? err.code : String(err));

/** The input a job reads: the modes act per input (file_path), versions by file_version_id. */
interface Input {
  filePath?: string;
  fileVersionId?: bigint;
}

async function withSinks(
  sinks: SinkReference[] | null,
): Promise<{ pipeline: Pipeline; root: string; run(configs: SinkSpec[], rows?: number, jobId?: bigint, input?: Input): Promise<JobOutcome> }> {
  let plugins;
  if (sinks === null) {
    const { config, dir } = await loadConfig({ explicitPath: join("examples", "postgres-sink.config.ts"), cwd: packageRoot(), command: "worker" });
    plugins = await loadSinkPlugins(config.sinks, dir, { encoderThreads: 0 });
  } else {
    plugins = await loadSinkPlugins(sinks, packageRoot(), { encoderThreads: 0 });
  }
  const root = await mkdtemp(join(tmpdir(), "casparian-pg-sink-"));
  roots.push(root);
  const pipeline = scriptedPipeline({ outputRoot: root, sinks: plugins, logger, workerId: "w" });
  await pipeline.start();
  const run = (configs: SinkSpec[], rows = 25, jobId = 77n, input: Input = {}) => {
    const job = makeJob({ sinks: configs, jobId, ...input });
    const half = Math.floor(rows / 2);
    return runJob(pipeline, job, [batchOf(configs[0]!.topic, sampleTable(half, 0), 0), batchOf(configs[0]!.topic, sampleTable(rows - half, half), 1)]);
  };
  return { pipeline, root, run };
}

const tcp = (table: string) => `postgres://postgres@127.0.0.1:${server.port}/${DATABASE}/${table}`;
const socket = (table: string) => `postgresql:///${DATABASE}/${table}?host=${server.socketDir}&port=${server.port}&user=postgres`;

describe("example PostgreSQL sink", () => {
  test("rows, int64s beyond 2^53, unicode, nulls, microsecond timestamps and uint64 lineage arrive exactly", async () => {
    const { run } = await withSinks(null);
    const outcome = await run([sinkSpec("sales", tcp("public.sales"), "append")], 25, MAX_JOB_ID);
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.deepEqual(outcome.artifacts, [{ topic: "sales", uri: `postgres://postgres@127.0.0.1:${server.port}/${DATABASE}/public.sales` }]);

    assert.deepEqual(await columnTypes("sales"), {
      id: "bigint",
      amount: "double precision",
      label: "text",
      flag: "boolean",
      ts: "timestamp with time zone",
      _job_id: "numeric",
      _file_version_id: "bigint",
      _topic: "text",
    });
    const rows = await query<Record<string, unknown>>(
      "SELECT id::text AS id, amount, label, flag, ((extract(epoch FROM ts) * 1000000)::bigint)::text AS ts, _job_id::text AS job, _file_version_id::text AS fv FROM public.sales ORDER BY id",
    );
    const expected = canonicalColumns(sampleTable(25));
    assert.deepEqual(Object.fromEntries(["id", "amount", "label", "flag", "ts"].map((c) => [c, rows.map((r) => r[c])])), expected);
    assert.equal(rows[0]!.id, "9007199254740993");
    assert.ok(rows.some((r) => r.label === "emoji 🚀 #3") && rows.some((r) => r.label === "line\nbreak #7") && rows.some((r) => r.label === 'quote"d #8'));
    assert.ok(rows.every((r) => r.job === MAX_JOB_ID.toString() && r.fv === "9007199254740993"));
    assert.deepEqual(await stagingTables(), []);
  });

  test("maps the other Arrow types over a Unix socket URI", async () => {
    const { pipeline } = await withSinks(null);
    const nanos = BigInt64Array.from([1_704_067_200_123_456_789n, -1_500n, 0n]);
    const table = new Table({
      i8: vectorFromArray([-128, 127, null], new Int8()),
      i16: vectorFromArray([-32768, 32767, null], new Int16()),
      i32: vectorFromArray([-2147483648, 2147483647, null], new Int32()),
      u32: vectorFromArray([4294967295, 0, null], new Uint32()),
      u64: vectorFromArray([18_446_744_073_709_551_615n, 0n, null], new Uint64()),
      f32: vectorFromArray([1.5, Number.NaN, null], new Float32()),
      day: vectorFromArray([new Date(Date.UTC(2024, 1, 29)), new Date(Date.UTC(1969, 11, 31)), null], new DateDay()),
      ts: makeVector(makeData({ type: new TimestampNanosecond(), length: 3, nullCount: 0, data: nanos })),
      nothing: vectorFromArray([null, null, null], new Null()),
      bytes: vectorFromArray([Uint8Array.of(0, 255, 7), new Uint8Array(0), null], new Binary()),
      city: vectorFromArray(["Zürich", "東京", "Zürich"], new Dictionary(new Utf8(), new Int32())),
      list: vectorFromArray([[9_007_199_254_740_993n, 1n], [], null], new List(new Field("item", new Int64(), true))),
    });
    const uri = socket("types_t");
    const outcome = await runJob(pipeline, makeJob({ sinks: [sinkSpec("t", uri, "error")], jobId: 5n }), [batchOf("t", table)]);
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.deepEqual(outcome.artifacts, [
      { topic: "t", uri: `postgresql://postgres@/${DATABASE}/public.types_t?host=${server.socketDir}&port=${server.port}` },
    ]);
    assert.deepEqual(await columnTypes("types_t"), {
      i8: "smallint",
      i16: "smallint",
      i32: "integer",
      u32: "bigint",
      u64: "numeric",
      f32: "real",
      day: "date",
      ts: "timestamp without time zone",
      nothing: "text",
      bytes: "bytea",
      city: "text",
      list: "jsonb",
      _job_id: "numeric",
      _file_version_id: "bigint",
      _topic: "text",
    });
    const rows = await query<Record<string, unknown>>(
      "SELECT i8, i16, i32, u32::text AS u32, u64::text AS u64, f32::text AS f32, day::text AS day, ts::text AS ts, nothing, encode(bytes, 'hex') AS bytes, city, list::text AS list FROM public.types_t ORDER BY i8 NULLS LAST",
    );
    assert.deepEqual(rows, [
      {
        i8: -128,
        i16: -32768,
        i32: -2147483648,
        u32: "4294967295",
        u64: "18446744073709551615",
        f32: "1.5",
        day: "2024-02-29",
        ts: "2024-01-01 00:00:00.123456",
        nothing: null,
        bytes: "00ff07",
        city: "Zürich",
        list: "[9007199254740993, 1]",
      },
      {
        i8: 127,
        i16: 32767,
        i32: 2147483647,
        u32: "0",
        u64: "0",
        f32: "NaN",
        day: "1969-12-31",
        ts: "1969-12-31 23:59:59.999998",
        nothing: null,
        bytes: "",
        city: "東京",
        list: "[]",
      },
      {
        i8: null,
        i16: null,
        i32: null,
        u32: null,
        u64: null,
        f32: null,
        day: null,
        ts: "1970-01-01 00:00:00",
        nothing: null,
        bytes: null,
        city: "Zürich",
        list: null,
      },
    ]);
  });

  test("modes act on the job's input: replace swaps its rows, append keeps its versions once each, error refuses it; failures leave the target as it was", async () => {
    const { pipeline, run } = await withSinks(null);
    const uri = tcp("modes");
    const t = (mode: SinkSpec["mode"]) => [sinkSpec("t", uri, mode)];
    const a1 = { filePath: "/data/a.csv", fileVersionId: 11n };
    const b1 = { filePath: "/data/b.csv", fileVersionId: 21n };
    assert.equal((await run(t("append"), 5, 1n, a1)).status, "SUCCESS");
    // The first commit renames the staging table into place: an ordinary (logged) table.
    assert.deepEqual(await query("SELECT relpersistence FROM pg_class WHERE relname = 'modes'"), [{ relpersistence: "p" }]);
    assert.equal((await run(t("append"), 6, 2n, b1)).status, "SUCCESS");
    assert.equal(await count("modes"), 11);
    assert.equal((await run(t("append"), 5, 3n, a1)).status, "SUCCESS");
    assert.equal(await count("modes"), 11, "the same version again (a retry, a rerun): no second copy");
    assert.equal((await run(t("append"), 3, 4n, { filePath: "/data/a.csv", fileVersionId: 12n })).status, "SUCCESS");
    assert.equal(await count("modes"), 14, "append keeps a.csv's earlier version");

    const replaced = await run(t("replace"), 2, 5n, { filePath: "/data/a.csv", fileVersionId: 13n });
    assert.equal(replaced.status, "SUCCESS", String(replaced.error));
    assert.equal(await count("modes"), 8, "replace: a.csv's rows of every version swapped, b.csv's untouched");
    assert.deepEqual(
      await query("SELECT file_path, file_version_id::text AS v, rows::int AS rows FROM public._casparian_inputs WHERE target = 'modes' ORDER BY file_path"),
      [
        { file_path: "/data/a.csv", v: "13", rows: 2 },
        { file_path: "/data/b.csv", v: "21", rows: 6 },
      ],
    );

    const refused = await run(t("error"), 3, 6n, b1);
    assert.equal(code(refused.error), "CSP_SINK_TARGET_EXISTS");
    assert.equal(await count("modes"), 8);
    assert.equal((await run(t("error"), 3, 7n, { filePath: "/data/c.csv", fileVersionId: 31n })).status, "SUCCESS");
    assert.equal(await count("modes"), 11);

    const failed = await runJob(pipeline, makeJob({ sinks: t("replace"), jobId: 8n, ...b1 }), [batchOf("t", sampleTable(40))], {
      guestFails: new Error("guest died"),
    });
    assert.equal(failed.status, "FAILED");
    assert.equal(await count("modes"), 11);

    // An append whose types conflict with the table's fails at commit, atomically.
    const wrongTypes = new Table({ id: vectorFromArray(["not a number"], new Utf8()) });
    const mismatch = await runJob(pipeline, makeJob({ sinks: t("append"), jobId: 9n, ...b1 }), [batchOf("t", wrongTypes)]);
    assert.equal(code(mismatch.error), "CSP_SCHEMA_CONFLICT");
    assert.match(mismatch.error!.message, /column 'id' is int64 .* and string .*table public\.modes/);
    assert.equal(await count("modes"), 11);
    assert.deepEqual(await stagingTables(), []);
  });

  test("topics sharing one table (a catch-all sink): each keeps its rows; a rerun or a replace swaps exactly one (input version, topic)'s rows", async () => {
    const { pipeline } = await withSinks(null);
    const a1 = { filePath: "/data/a.csv", fileVersionId: 11n };
    const b1 = { filePath: "/data/b.csv", fileVersionId: 21n };
    // Every topic the guest publishes goes to one table: rows of topics "sales" and "rejects" of one input meet there.
    const job = (table: string, mode: SinkSpec["mode"], jobId: bigint, input: Input, sales: number, rejects: number) =>
      runJob(pipeline, makeJob({ sinks: [sinkSpec("*", tcp(table), mode)], jobId, ...input }), [
        batchOf("sales", sampleTable(sales, 0), 0),
        batchOf("rejects", sampleTable(rejects, 100), 1),
      ]);
    const contents = async (table: string) =>
      Object.fromEntries(
        (
          await query<{ k: string; n: number }>(
            `SELECT _file_version_id || '/' || _topic AS k, count(*)::int AS n FROM public."${table}" GROUP BY 1 ORDER BY 1`,
          )
        ).map((r) => [r.k, r.n]),
      );
    for (const mode of ["append", "replace"] as const) {
      const table = `shared_${mode}`;
      const first = await job(table, mode, 1n, a1, 3, 2);
      assert.equal(first.status, "SUCCESS", String(first.error));
      assert.deepEqual(await contents(table), { "11/rejects": 2, "11/sales": 3 }, `${mode}: the second topic's commit keeps the first topic's rows`);
      assert.equal((await job(table, mode, 2n, b1, 4, 1)).status, "SUCCESS");
      assert.equal((await job(table, mode, 3n, a1, 3, 2)).status, "SUCCESS", "a rerun of a.csv");
      assert.deepEqual(
        await contents(table),
        { "11/rejects": 2, "11/sales": 3, "21/rejects": 1, "21/sales": 4 },
        `${mode}: a rerun replaces exactly its own rows`,
      );
    }
    assert.equal((await job("shared_replace", "replace", 4n, { filePath: "/data/a.csv", fileVersionId: 12n }, 1, 1)).status, "SUCCESS");
    assert.deepEqual(await contents("shared_replace"), { "12/rejects": 1, "12/sales": 1, "21/rejects": 1, "21/sales": 4 });
    assert.deepEqual(
      (
        await query<{ e: string }>(
          "SELECT file_path || '@' || file_version_id || '/' || topic || '=' || rows AS e FROM public._casparian_inputs WHERE target = 'shared_replace' ORDER BY 1",
        )
      ).map((r) => r.e),
      ["/data/a.csv@12/rejects=1", "/data/a.csv@12/sales=1", "/data/b.csv@21/rejects=1", "/data/b.csv@21/sales=4"],
    );
    const c1 = { filePath: "/data/c.csv", fileVersionId: 31n };
    const fresh = await job("shared_replace", "error", 5n, c1, 2, 2);
    assert.equal(fresh.status, "SUCCESS", String(fresh.error));
    assert.equal(code((await job("shared_replace", "error", 6n, c1, 2, 2)).error), "CSP_SINK_TARGET_EXISTS");
    assert.equal(await count("shared_replace"), 11);
    assert.deepEqual(await stagingTables(), []);
  });

  test("replace: a topic the input no longer publishes to (its rejects, once the input is fixed) loses that input's rows; other inputs' stay", async () => {
    const { pipeline } = await withSinks(null);
    const sinks = [sinkSpec("clean", tcp("fixed_clean"), "replace"), sinkSpec("rejects", tcp("fixed_rejects"), "replace")];
    const job = (jobId: bigint, input: Input, rejects: number) =>
      runJob(pipeline, makeJob({ sinks, jobId, ...input }), [
        batchOf("clean", sampleTable(3, 0), 0),
        ...(rejects > 0 ? [batchOf("rejects", sampleTable(rejects, 100), 1)] : []),
      ]);
    assert.equal((await job(1n, { filePath: "/data/a.csv", fileVersionId: 11n }, 2)).status, "SUCCESS");
    assert.equal((await job(2n, { filePath: "/data/b.csv", fileVersionId: 21n }, 1)).status, "SUCCESS");
    const fixed = await job(3n, { filePath: "/data/a.csv", fileVersionId: 12n }, 0);
    assert.equal(fixed.status, "SUCCESS", String(fixed.error));
    assert.deepEqual(
      fixed.artifacts.map((a) => a.topic),
      ["clean"],
      "nothing is published to rejects",
    );
    assert.deepEqual(await query("SELECT _file_version_id::text AS v FROM public.fixed_rejects"), [{ v: "21" }], "a.csv's rejects are gone, b.csv's stay");
    assert.equal(await count("fixed_clean"), 6);
    assert.deepEqual(
      (
        await query<{ e: string }>(
          "SELECT target || ':' || file_path || '@' || file_version_id AS e FROM public._casparian_inputs WHERE target LIKE 'fixed%' ORDER BY 1",
        )
      ).map((r) => r.e),
      ["fixed_clean:/data/a.csv@12", "fixed_clean:/data/b.csv@21", "fixed_rejects:/data/b.csv@21"],
    );
  });

  test("jobs committing at once to different tables of a fresh schema all succeed: the ledger and schema tables are made once", async () => {
    const { pipeline } = await withSinks(null);
    for (let round = 0; round < 3; round++) {
      await query(`CREATE SCHEMA fresh${round}`);
      const outcomes = await Promise.all(
        Array.from({ length: 6 }, (_, i) =>
          runJob(pipeline, makeJob({ sinks: [sinkSpec("t", tcp(`fresh${round}.t${i}`), "replace")], jobId: BigInt(100 + i), filePath: `/data/${i}.csv` }), [
            batchOf("t", sampleTable(2), 0),
          ]),
        ),
      );
      for (const outcome of outcomes) assert.equal(outcome.status, "SUCCESS", String(outcome.error));
      assert.deepEqual(await query(`SELECT count(*)::int AS n FROM fresh${round}._casparian_inputs`), [{ n: 6 }]);
    }
  });

  test("a table and ledger written before rows carried their topic: the next commit of an input version replaces its old rows once, no duplicates", async () => {
    const { run } = await withSinks(null);
    await query("CREATE SCHEMA legacy");
    const uri = tcp("legacy.t");
    const first = await run([sinkSpec("t", uri, "append")], 5, 1n, { filePath: "/data/a.csv", fileVersionId: 11n });
    assert.equal(first.status, "SUCCESS", String(first.error));
    // The earlier shape: no _topic on rows, a ledger keyed by (target, file_path, file_version_id) without topic.
    await query(`ALTER TABLE legacy.t DROP COLUMN _topic;
      ALTER TABLE legacy._casparian_inputs DROP CONSTRAINT _casparian_inputs_pkey;
      ALTER TABLE legacy._casparian_inputs DROP COLUMN topic;
      ALTER TABLE legacy._casparian_inputs ADD PRIMARY KEY (target, file_path, file_version_id)`);
    const rerun = await run([sinkSpec("t", uri, "append")], 4, 2n, { filePath: "/data/a.csv", fileVersionId: 11n });
    assert.equal(rerun.status, "SUCCESS", String(rerun.error));
    assert.deepEqual(await query("SELECT _topic AS topic, count(*)::int AS n FROM legacy.t GROUP BY 1"), [{ topic: "t", n: 4 }]);
    const other = await run([sinkSpec("u", uri, "append")], 2, 3n, { filePath: "/data/a.csv", fileVersionId: 11n });
    assert.equal(other.status, "SUCCESS", String(other.error));
    assert.deepEqual(
      (await query<{ e: string }>("SELECT topic || '=' || rows AS e FROM legacy._casparian_inputs ORDER BY 1")).map((r) => r.e),
      ["t=4", "u=2"],
    );
    assert.deepEqual(await query("SELECT count(*)::int AS n FROM legacy.t"), [{ n: 6 }]);
  });

  test("a column all null in the first chunk takes the type of a later chunk: int64, µs timestamps and decimals arrive exactly", async () => {
    // One row per statement: the first chunk's INSERTs are prepared before the staging table widens.
    const { pipeline } = await withSinks([{ use: EXAMPLE, options: { insertRows: 1, lineage: true } }]);
    const chunks = nullFirstChunks("t");
    const outcome = await runJob(pipeline, makeJob({ sinks: [sinkSpec("t", tcp("chunks_widen"))], jobId: 3n }), chunks);
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.deepEqual(await columnTypes("chunks_widen"), {
      id: "bigint",
      q: "bigint",
      ts: "timestamp with time zone",
      price: "numeric",
      _job_id: "numeric",
      _file_version_id: "bigint",
      _topic: "text",
    });
    const rows = await query(
      "SELECT id::text AS id, q::text AS q, ((extract(epoch FROM ts) * 1000000)::bigint)::text AS ts, price::text AS price FROM public.chunks_widen ORDER BY id",
    );
    assert.deepEqual(rows, [
      { id: "1", q: null, ts: null, price: null },
      { id: "2", q: null, ts: null, price: null },
      { id: "3", q: "9007199254740993", ts: "1704067200000001", price: "12.30" },
      { id: "4", q: "-5", ts: null, price: "-0.05" },
      { id: "5", q: null, ts: null, price: null },
    ]);
    assert.deepEqual(await stagingTables(), []);
  });

  test("across jobs: a column all null so far is retyped (only NULLs, checked) when another input brings its type; int32 widens to int64; a conflict fails naming table, column and types", async () => {
    const { pipeline } = await withSinks(null);
    const job = (table: string, jobId: bigint, filePath: string, fileVersionId: bigint, q: Vector) =>
      runJob(pipeline, makeJob({ sinks: [sinkSpec("t", tcp(table), "replace")], jobId, filePath, fileVersionId }), [batchOf("t", idsWith(q))]);
    const contents = async (table: string) =>
      (
        await query<{ f: string; q: string | null }>(
          `SELECT l.file_path AS f, t.q::text AS q FROM public."${table}" t JOIN public._casparian_inputs l ON l.target = '${table}' AND l.file_version_id = t._file_version_id ORDER BY f, t.id`,
        )
      ).map((r) => [r.f, r.q]);

    assert.equal((await job("across", 1n, "/data/a.csv", 11n, nullColumn(2))).status, "SUCCESS");
    assert.equal((await columnTypes("across")).q, "text", "a placeholder");
    const b = await job("across", 2n, "/data/b.csv", 21n, vectorFromArray([9_007_199_254_740_993n, 7n], new Int64()));
    assert.equal(b.status, "SUCCESS", String(b.error));
    assert.equal((await columnTypes("across")).q, "bigint");
    assert.equal((await job("across", 3n, "/data/b.csv", 21n, vectorFromArray([9_007_199_254_740_993n, 7n], new Int64()))).status, "SUCCESS", "a rerun");
    assert.equal((await job("across", 4n, "/data/c.csv", 31n, vectorFromArray([1, -2], new Int32()))).status, "SUCCESS", "int32 into int64");
    assert.equal((await job("across", 5n, "/data/d.csv", 41n, nullColumn(1))).status, "SUCCESS", "a null column is a placeholder again");
    const expected = [
      ["/data/a.csv", null],
      ["/data/a.csv", null],
      ["/data/b.csv", "9007199254740993"],
      ["/data/b.csv", "7"],
      ["/data/c.csv", "1"],
      ["/data/c.csv", "-2"],
      ["/data/d.csv", null],
    ];
    assert.deepEqual(await contents("across"), expected);

    const conflict = await job("across", 6n, "/data/e.csv", 51n, vectorFromArray(["n/a"], new Utf8()));
    assert.equal(code(conflict.error), "CSP_SCHEMA_CONFLICT");
    assert.match(conflict.error!.message, /column 'q' is int64 .* and string .*table public\.across/);
    assert.match((conflict.error as CasparianError).hint ?? "", /declare it in the plugin/);
    assert.deepEqual(await contents("across"), expected, "the table is as it was");
    assert.equal((await columnTypes("across")).q, "bigint");

    // A column that appears in a later input is added; the earlier rows have NULL there.
    const later = await runJob(
      pipeline,
      makeJob({ sinks: [sinkSpec("t", tcp("across"), "replace")], jobId: 13n, filePath: "/data/f.csv", fileVersionId: 61n }),
      [batchOf("t", new Table({ id: vectorFromArray([0n], new Int64()), q: vectorFromArray([8n], new Int64()), note: vectorFromArray(["new"], new Utf8()) }))],
    );
    assert.equal(later.status, "SUCCESS", String(later.error));
    assert.equal((await columnTypes("across")).note, "text");
    assert.deepEqual(
      (await query<{ note: string | null }>("SELECT note FROM public.across ORDER BY note NULLS FIRST")).map((r) => r.note),
      [null, null, null, null, null, null, null, "new"],
    );

    // int32 rows already there: integer → bigint keeps them.
    assert.equal((await job("narrow", 7n, "/data/a.csv", 11n, vectorFromArray([2147483647, null], new Int32()))).status, "SUCCESS");
    assert.equal((await columnTypes("narrow")).q, "integer");
    assert.equal((await job("narrow", 8n, "/data/b.csv", 21n, vectorFromArray([-9_223_372_036_854_775_808n], new Int64()))).status, "SUCCESS");
    assert.equal((await columnTypes("narrow")).q, "bigint");
    assert.deepEqual(await contents("narrow"), [
      ["/data/a.csv", "2147483647"],
      ["/data/a.csv", null],
      ["/data/b.csv", "-9223372036854775808"],
    ]);

    // A placeholder someone wrote into by hand is not retyped: the commit fails, nothing changes.
    assert.equal((await job("tampered", 9n, "/data/a.csv", 11n, nullColumn(1))).status, "SUCCESS");
    await query(`UPDATE public.tampered SET q = 'hand-written'`);
    const tampered = await job("tampered", 10n, "/data/b.csv", 21n, vectorFromArray([1n], new Int64()));
    assert.equal(code(tampered.error), "CSP_SINK_WRITE_FAILED");
    assert.match(tampered.error!.message, /recorded as all-null .* but holds values/);
    assert.deepEqual(await contents("tampered"), [["/data/a.csv", "hand-written"]]);

    // A table made by someone else has no recorded schema: PostgreSQL's own rules decide.
    await query('CREATE TABLE public.byhand (id bigint, q bigint, "_job_id" numeric(20), "_file_version_id" bigint NOT NULL)');
    assert.equal((await job("byhand", 11n, "/data/a.csv", 11n, vectorFromArray([5n], new Int64()))).status, "SUCCESS");
    const refused = await job("byhand", 12n, "/data/b.csv", 21n, vectorFromArray(["n/a"], new Utf8()));
    assert.equal(code(refused.error), "CSP_SINK_WRITE_FAILED");
    assert.match(refused.error!.message, /cannot commit/);
    assert.deepEqual(await contents("byhand"), [["/data/a.csv", "5"]]);
    assert.deepEqual(await stagingTables(), []);
  });

  test("mode error checks again at commit: rows of the input committed meanwhile win, nothing is written", async () => {
    const { pipeline, run } = await withSinks(null);
    assert.equal((await run([sinkSpec("t", tcp("race"), "append")], 2, 10n, { filePath: "/data/other.csv", fileVersionId: 51n })).status, "SUCCESS");
    const job = makeJob({ sinks: [sinkSpec("t", tcp("race"), "error")], jobId: 8n, filePath: "/data/race.csv", fileVersionId: 41n });
    let staged = -1;
    // Between the sink's prepare and its commit, another writer records rows of the same input.
    pipeline.hooks.prepareCommit.tapPromise({ name: "Racer", stage: Stage.OBSERVE }, async () => {
      staged = (await stagingTables()).length;
      await query(
        "INSERT INTO public._casparian_inputs (target, file_path, file_version_id, topic, job_id, rows) VALUES ('race', '/data/race.csv', 40, 't', 9, 0)",
      );
    });
    const outcome = await runJob(pipeline, job, [batchOf("t", sampleTable(4))]);
    assert.equal(staged, 1);
    assert.equal(code(outcome.error), "CSP_SINK_TARGET_EXISTS");
    assert.equal(await count("race"), 2, "only the other input's rows");
    assert.deepEqual(await stagingTables(), []);
  });

  test("a topic without batches publishes nothing", async () => {
    const { pipeline } = await withSinks(null);
    const outcome = await runJob(pipeline, makeJob({ sinks: [sinkSpec("t", tcp("never"), "append")] }), []);
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.deepEqual(outcome.artifacts, []);
    assert.deepEqual(await query("SELECT to_regclass('public.never') AS t"), [{ t: null }]);
  });

  test("writes in statements of insertRows rows; only _file_version_id and _topic unless lineage is asked; bad options are refused at load", async () => {
    const { run } = await withSinks([{ use: EXAMPLE, options: { insertRows: 7 } }]);
    const outcome = await run([sinkSpec("t", tcp("chunks"), "append")], 25);
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    const ids = (await query<{ id: string }>("SELECT id::text AS id FROM public.chunks ORDER BY id")).map((r) => r.id);
    assert.deepEqual(ids, canonicalColumns(sampleTable(25)).id);
    assert.deepEqual(Object.keys(await columnTypes("chunks")), ["id", "amount", "label", "flag", "ts", "_file_version_id", "_topic"]);

    await assert.rejects(
      withSinks([{ use: EXAMPLE, options: { insertRows: 0 } }]),
      (err: unknown) => code(err as Error) === "CSP_SINK_BAD_OPTIONS" && /insertRows: expected a value >=1, got number 0/.test((err as Error).message),
    );
  });

  test("bad URIs fail with SINK_BAD_URI, unreachable servers with SINK_WRITE_FAILED, never showing the password", async () => {
    const { run } = await withSinks(null);
    for (const uri of [
      "postgres://h/a/b/c",
      "postgres:///bad-name",
      "postgres:///s.t.u",
      "postgres:///db/t?sslmode=require",
      `postgres://127.0.0.1:${server.port}/db/t?host=/tmp`,
    ]) {
      const outcome = await run([sinkSpec("t", uri)]);
      assert.equal(code(outcome.error), "CSP_SINK_BAD_URI", uri);
    }
    const unreachable = await run([sinkSpec("t", "postgres://someone:s3cret@127.0.0.1:1/db/t")]);
    assert.equal(code(unreachable.error), "CSP_SINK_WRITE_FAILED");
    assert.match(unreachable.error!.message, /cannot connect/);
    assert.doesNotMatch(unreachable.error!.message, /s3cret/);
    assert.equal((unreachable.error as CasparianError).context.sinkUri, "postgres://someone:***@127.0.0.1:1/db/t");

    const noSchema = await run([sinkSpec("t", tcp("nowhere.t"))]);
    assert.equal(code(noSchema.error), "CSP_SINK_WRITE_FAILED");
    assert.match(noSchema.error!.message, /schema "nowhere" does not exist/);
  });

  test("recover drops staging tables of dead processes on this host, from options or PG* variables", async () => {
    const deadPid = spawnSync("true").pid!;
    const staged = (jobId: string, tag: string, pid: number) => `_casparian_stg_${jobId}_${tag}_${pid}_0`;
    const otherTag = HOST_TAG === "00000000" ? "11111111" : "00000000";
    const keep = [staged("2", HOST_TAG, 1), staged("3", otherTag, deadPid), "_casparian_stg_manual"].sort();
    const create = async (names: string[]) => {
      for (const name of names) await query(`CREATE UNLOGGED TABLE public."${name}" (x int)`);
    };
    await create([...keep, staged("1", HOST_TAG, deadPid), staged("4", HOST_TAG, process.pid)]);

    // Options: the connection string names the database to clean.
    await withSinks([{ use: EXAMPLE, options: { connectionString: `postgres://postgres@127.0.0.1:${server.port}/${DATABASE}` } }]);
    assert.deepEqual(await stagingTables(), keep);

    // No options: node-postgres reads PGHOST (a socket directory), PGPORT, PGUSER and PGDATABASE.
    await create([staged("5", HOST_TAG, deadPid)]);
    const saved = { ...process.env };
    Object.assign(process.env, { PGHOST: server.socketDir, PGPORT: String(server.port), PGUSER: "postgres", PGDATABASE: DATABASE });
    try {
      await withSinks(null);
    } finally {
      for (const key of ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE"]) {
        if (saved[key] === undefined) delete process.env[key];
        else process.env[key] = saved[key];
      }
    }
    assert.deepEqual(await stagingTables(), keep);

    // A sink opening in a database also drops the stale staging it finds there.
    await create([staged("6", HOST_TAG, deadPid)]);
    const { run } = await withSinks(null);
    assert.equal((await run([sinkSpec("t", tcp("sweep"))], 3, 9n)).status, "SUCCESS");
    assert.deepEqual(await stagingTables(), keep);
  });
});
