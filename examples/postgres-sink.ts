/**
 * Example sink: PostgreSQL tables, written only against casparian-flow's public API.
 *
 *   postgres://[user@][host][:port]/[database/][schema.]table[?host=/socket/dir&port=N&user=name]
 *   postgresql://…                                             (the same)
 *
 *   postgres://etl@db.internal:5432/warehouse/sales.orders     TCP, database "warehouse", schema "sales"
 *   postgres:///warehouse/orders?host=/var/run/postgresql      Unix socket directory, schema from search_path
 *   postgres:///orders                                         everything else from options / PG* variables
 *
 * The table is the last path segment, optionally schema-qualified; the segment before
 * it, when there is one, is the database. Names are plain identifiers
 * ([A-Za-z_][A-Za-z0-9_]*, at most 63 bytes) and are quoted, so they are case-sensitive:
 * prefer lower case. Connection settings are taken, field by field, from the sink URI,
 * then the sink options in casparian.config.ts, then `options.connectionString`
 * (URL form), then libpq's variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE,
 * ~/.pgpass), as node-postgres reads them. Keep passwords out of the sink URI: URIs
 * appear in logs and receipts (error messages and artifacts never show the password).
 *
 * Register it in casparian.config.ts (see postgres-sink.config.ts):
 *
 *   sinks: [{ use: "./examples/postgres-sink.ts", options: { connectionString: "postgres://etl@db/warehouse", lineage: true } }]
 *
 * Lifecycle. open connects (one connection per target of a job), checks the target for
 * mode "error", and drops staging tables of crashed workers in that database. The first
 * batch creates an UNLOGGED staging table `_casparian_stg_<job id>_<host tag>_<pid>_<n>`
 * in the target schema; batches arrive as multi-row parameterized INSERTs (at most
 * `insertRows` rows per statement, so memory stays bounded by the batch). prepare
 * checks that the staging table holds every row written. commit promotes in ONE
 * transaction, serialized per target by an advisory lock (the ledger and schemas tables
 * are made before, in a short transaction of their own serialized per schema: concurrent
 * CREATE TABLE IF NOT EXISTS of one name would fail). Modes act on the rows the
 * sink's topic wrote for the job's input (its file_path), never on other inputs' rows
 * nor on other topics' (several topics of a job may share a table, e.g. through a
 * catch-all sink), so one table can collect every input of a run (`inputScopedModes`):
 *   replace → the input's earlier rows (every version) are deleted, the new ones inserted;
 *   append  → rows of the input's earlier versions stay, those of this version are
 *             replaced (a retried or rerun job never adds a second copy);
 *   error   → fails with CSP_SINK_TARGET_EXISTS if the table already holds rows of this
 *             input and topic (checked at open and again inside the commit transaction).
 * When the target does not exist yet, the staging table is made LOGGED and renamed into
 * its place. Which rows belong to which input and topic is kept in a ledger table,
 * `_casparian_inputs` (target, file_path, file_version_id, topic, job_id, rows), in the
 * target's schema and written in the same transaction; every row carries
 * `_file_version_id bigint` and `_topic text`, by which the rows are deleted. Rows and
 * ledger entries written before rows carried their topic get topic '' (the ledger's
 * primary key is widened to include it) and are replaced by whichever topic next
 * writes their input version.
 * abort drops the staging table. A topic that never produced a batch publishes nothing; in
 * mode replace its commit still deletes the input's earlier rows of that topic (the input
 * has none there now: a fixed input's rejects go), undoable like any commit.
 * In a job with other sinks (commit with `undo: true`), the commit's transaction also
 * copies the rows and ledger entries it replaces into `_casparian_undo_<job id>_<n>`
 * tables (`_rows`, `_ledger`) in the target schema; `resolve` puts them back (rollback:
 * the job's rows go, a table the commit created is dropped) or drops them (finish), so a
 * job's sinks publish all or nothing (README "Writing a sink"). `resolve` connects with
 * the host, port, user and database the commit used and the password of the options or
 * PG* variables (a password in the sink URI is never journaled).
 * recover (worker start) drops, in the database of the options / PG* variables, the
 * staging tables written on this host by processes that no longer run.
 *
 * Types: int8/int16/uint8 → smallint, int32/uint16 → integer, int64/uint32 → bigint,
 * uint64 → numeric(20), float16/32 → real, float64 → double precision, bool → boolean,
 * utf8 (and dictionaries of it) → text, binary → bytea, timestamp with a time zone →
 * timestamptz, without → timestamp (microseconds kept; nanoseconds truncated), date →
 * date, decimal128(p, s) → numeric(p, s), time → time, null → text, list/struct/map →
 * jsonb. 64-bit integers and decimals travel as exact decimal text (`exactReader`), so
 * every digit arrives. Duration and interval columns are refused with a hint to cast them.
 *
 * Types follow the topic's schema unification (README "Types you can trust"), as the
 * Parquet sink does: a column that is all null so far (Arrow type null, a `text`
 * placeholder) takes the first real type that arrives, whether in a later batch of the
 * job (the staging column is retyped) or in a later job writing the same table: the
 * commit checks that the table's column holds only NULLs and retypes it with ALTER TABLE
 * … ALTER COLUMN … TYPE … USING, in the commit's transaction, so readers see the table
 * either before or after, never between. Other legal widenings are applied the same way
 * (int32 → int64: integer → bigint; int → float64; decimals to more digits; columns that
 * appear later are added); a real conflict (int64 vs string) fails the commit with
 * CSP_SCHEMA_CONFLICT naming the table, the column and both types, and nothing changes.
 * The table's Arrow schema, which PostgreSQL's types cannot tell (a placeholder is
 * `text`, like a string column), is recorded in `_casparian_schemas` (target,
 * arrow_schema bytea: an Arrow IPC stream with no rows) in the target's schema, in the
 * same transaction. A table without a recorded schema (made by someone else) is
 * written as it is, PostgreSQL's own assignment rules only.
 *
 * Lineage: `_file_version_id bigint` (int64 on the wire) and `_topic text` on every row; with `lineage:
 * true` also `_job_id numeric(20)` (job ids are uint64; bigint stops at 2^63 - 1, and
 * numeric keeps them exact and comparable as numbers).
 */
import { createHash, randomBytes } from "node:crypto";
import { hostname } from "node:os";
import pg from "pg";
import { stringify } from "lossless-json";
import { Field, Schema, Table, Type, tableFromIPC, tableToIPC, type DataType, type Dictionary, type Vector } from "apache-arrow";
import {
  Errors,
  TopicSchema,
  defineSink,
  exactReader,
  isProcessAlive,
  unifySchemas,
  type Batch,
  type CommitOptions,
  type ExactValue,
  type Logger,
  type SinkTarget,
  v,
} from "casparian-flow";

const port = v.pipe(v.union([v.number(), v.pipe(v.string(), v.regex(/^\d+$/))]), v.transform(Number), v.integer(), v.minValue(1), v.maxValue(65_535));
const positive = v.pipe(v.number(), v.safeInteger(), v.minValue(1));

/** The sink's options (`{ use: "./postgres-sink.ts", options: {...} }`), checked when it is registered. */
const postgresOptions = v.object({
  /** Defaults for every target, URL form: `postgres://user:password@host:port/database?host=/socket/dir`. */
  connectionString: v.optional(v.pipe(v.string(), v.check(URL.canParse, "expected a URL like postgres://user@host:5432/database"))),
  host: v.optional(v.string()),
  port: v.optional(port),
  user: v.optional(v.string()),
  password: v.optional(v.string()),
  database: v.optional(v.string()),
  /** Add `_job_id numeric(20)` to every row (`_file_version_id bigint` is always there). Default false. */
  lineage: v.optional(v.boolean(), false),
  /** Rows per INSERT statement (also capped by PostgreSQL's 65 535 parameters). Default 1000. */
  insertRows: v.optional(positive, 1000),
  /** Connection timeout in milliseconds. Default 10 000. */
  connectTimeoutMs: v.optional(positive, 10_000),
});
export type PostgresSinkOptions = v.InferInput<typeof postgresOptions>;

interface ConnectionFields {
  host?: string;
  port?: number;
  user?: string;
  password?: string;
  database?: string;
}

interface Column {
  name: string;
  type: DataType;
  sqlType: string;
  /** Cell values of one column of one batch, in row order; null for SQL NULL. */
  values(vector: Vector): unknown[];
}

interface TableName {
  schema: string | null;
  table: string;
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MAX_IDENTIFIER_BYTES = 63;
const URI_PARAMS = ["host", "port", "user"] as const;
const MAX_PARAMETERS = 65_535;
const STAGING_PREFIX = "_casparian_stg_";
const LEDGER = "_casparian_inputs";
/** Which topic wrote a row: topics of one job (a catch-all sink) may share a table. */
const TOPIC = "_topic";
/** The topic of rows and ledger entries written before rows carried one: they belong to any topic. */
const UNKNOWN_TOPIC = "";
const LEDGER_COLUMNS =
  "target text NOT NULL, file_path text NOT NULL, file_version_id bigint NOT NULL, topic text NOT NULL, job_id numeric(20) NOT NULL, rows bigint NOT NULL, PRIMARY KEY (target, file_path, file_version_id, topic)";
const SCHEMAS = "_casparian_schemas";
/** Undo tables of a commit made with `undo: true`: `<prefix><job id>_<random>` (+ `_rows`, `_ledger`), at most 52 bytes. */
const UNDO_PREFIX = "_casparian_undo_";
const STAGING_PATTERN = /^_casparian_stg_(\d+)_([0-9a-f]{8})_(\d+)_(\d+)$/;
// The host tag tells this host's leftovers from another host's live staging in a shared database.
const HOST_TAG = createHash("sha256").update(hostname()).digest("hex").slice(0, 8);

/**
 * Staging tables this process holds right now, shared by every copy of this module
 * (config loaders may load it more than once, e.g. on RELOAD): recovery must never
 * drop them, and a staging name must never repeat within a process.
 */
const registry = ((globalThis as Record<symbol, unknown>)[Symbol.for("casparian-flow/examples/postgres-sink")] ??= {
  live: new Set<string>(),
  next: 0,
}) as { live: Set<string>; next: number };

export default function postgresSink() {
  return defineSink({
    name: "postgres",
    schemes: ["postgres", "postgresql"],
    options: postgresOptions,
    inputScopedModes: true,
    checkTarget(target) {
      parseTarget(target, undefined);
    },
    create(target, { job, logger, options }) {
      const { fields, name } = parseTarget(target, job.jobId);
      const defaults = connectionDefaults(options);
      const { insertRows, connectTimeoutMs } = options;
      const safeUri = redact(target.uri);
      const context = { jobId: job.jobId, sinkUri: safeUri };
      const fail = (what: string, cause: unknown, hint?: string) =>
        Errors.SINK_WRITE_FAILED([safeUri, `${what}: ${describeError(cause)}`], { context, cause, hint });
      const fileVersionId = job.command.fileVersionId.toString();
      const filePath = job.command.filePath;
      const topic = target.topic;
      const jobIdText = options.lineage ? job.jobId.toString() : null;

      let client: pg.Client | null = null;
      let broken: Error | null = null;
      let schema = "";
      let staging: string | null = null;
      // The job's schema so far (its batches unified) and the staging table's data columns, which follow it.
      const jobSchema = new TopicSchema(target.topic);
      let columns: Column[] | null = null;
      // Bumped when the staging table's columns change: prepared INSERTs are named after it.
      let generation = 0;
      let rowsWritten = 0;
      let handle: UndoHandle | null = null;
      const lineageNames = [...(jobIdText !== null ? ["_job_id"] : []), "_file_version_id"];

      const targetSql = () => `${quote(schema)}.${quote(name.table)}`;
      const stagingSql = () => `${quote(schema)}.${quote(staging!)}`;
      const connected = (): pg.Client => {
        if (broken !== null) throw fail("the connection was lost", broken);
        return client!;
      };
      const disconnect = async () => {
        const c = client;
        client = null;
        await c?.end().catch(() => {});
      };
      const targetExists = async (c: pg.Client) =>
        (await c.query<{ oid: string | null }>("SELECT to_regclass($1) AS oid", [targetSql()])).rows[0]!.oid !== null;
      const ledgerSql = () => `${quote(schema)}.${quote(LEDGER)}`;
      const schemasSql = () => `${quote(schema)}.${quote(SCHEMAS)}`;
      const inputHasRows = async (c: pg.Client) => {
        const ledger = (await c.query<{ oid: string | null }>("SELECT to_regclass($1) AS oid", [ledgerSql()])).rows[0]!.oid !== null;
        if (!ledger) return false;
        const topics = (await hasColumn(c, ledgerSql(), "topic")) ? "AND topic IN ($3, $4)" : "";
        const params = topics === "" ? [name.table, filePath] : [name.table, filePath, topic, UNKNOWN_TOPIC];
        return ((await c.query(`SELECT 1 FROM ${ledgerSql()} WHERE target = $1 AND file_path = $2 ${topics}`, params)).rowCount ?? 0) > 0;
      };
      /** Mode replace with no batch: the input publishes nothing to this topic now, so its earlier rows there go. */
      const replacesWithNothing = async (c: pg.Client) => target.mode === "replace" && (await targetExists(c)) && (await inputHasRows(c));
      const replacedRows = (versions: string) =>
        `_topic IN ($3, $4) AND (_file_version_id = $5 OR _file_version_id IN (SELECT file_version_id FROM ${ledgerSql()} WHERE target = $1 AND file_path = $2 AND topic IN ($3, $4) ${versions}))`;
      /**
       * The ledger and the schemas table, made (or the ledger given its topic column) in their
       * own short transaction, serialized per schema: concurrent CREATE TABLE IF NOT EXISTS of
       * one name fail (pg_type_typname_nsp_index), e.g. the first commits of a run's jobs into
       * a fresh schema.
       */
      const makeBookkeeping = async (c: pg.Client) => {
        const schemasExist = (await c.query<{ oid: string | null }>("SELECT to_regclass($1) AS oid", [schemasSql()])).rows[0]!.oid !== null;
        if (schemasExist && (await hasColumn(c, ledgerSql(), "topic"))) return;
        await c.query("BEGIN");
        try {
          await c.query("SELECT pg_advisory_xact_lock(hashtext($1))", [ledgerSql()]);
          await ensureLedger(c, ledgerSql());
          await c.query(`CREATE TABLE IF NOT EXISTS ${schemasSql()} (target text PRIMARY KEY, arrow_schema bytea NOT NULL)`);
          await c.query("COMMIT");
        } catch (err) {
          await c.query("ROLLBACK").catch(() => {});
          throw fail("cannot create the ledger", err, "the user needs CREATE on the target schema");
        }
      };
      /** Deletes the input's rows of this topic (every version), and their ledger entries, in one transaction; kept in undo tables first when asked. */
      const removeWithNothing = async (options: CommitOptions | undefined) => {
        const c = connected();
        if (!(await replacesWithNothing(c))) return;
        await makeBookkeeping(c);
        const undo = options?.undo === true && handle !== null ? (table: string) => `${quote(schema)}.${quote(`${handle!.undo}${table}`)}` : null;
        const params = [name.table, filePath, topic, UNKNOWN_TOPIC, fileVersionId];
        await c.query("BEGIN");
        try {
          await c.query("SELECT pg_advisory_xact_lock(hashtext($1))", [targetSql()]);
          if (await replacesWithNothing(c)) {
            if (!(await hasColumn(c, targetSql(), TOPIC))) await c.query(`ALTER TABLE ${targetSql()} ADD COLUMN ${TOPIC} text NOT NULL DEFAULT ''`);
            if (undo !== null) {
              await c.query(`CREATE TABLE ${undo("")} (created boolean NOT NULL)`);
              await c.query(`INSERT INTO ${undo("")} VALUES (false)`);
              await c.query(`CREATE TABLE ${undo("_ledger")} (LIKE ${ledgerSql()})`);
              await c.query(
                `INSERT INTO ${undo("_ledger")} SELECT * FROM ${ledgerSql()} WHERE target = $1 AND file_path = $2 AND topic IN ($3, $4)`,
                params.slice(0, 4),
              );
              await c.query(`CREATE TABLE ${undo("_rows")} (LIKE ${targetSql()})`);
              await c.query(`INSERT INTO ${undo("_rows")} SELECT * FROM ${targetSql()} WHERE ${replacedRows("")}`, params);
            }
            await c.query(`DELETE FROM ${targetSql()} WHERE ${replacedRows("")}`, params);
            await c.query(`DELETE FROM ${ledgerSql()} WHERE target = $1 AND file_path = $2 AND topic IN ($3, $4)`, params.slice(0, 4));
            logger.info({ table: name.table }, "mode replace: the input's earlier rows of this topic are removed");
          }
          await c.query("COMMIT");
        } catch (err) {
          await c.query("ROLLBACK").catch(() => {});
          throw fail("cannot remove the input's earlier rows", err);
        }
      };
      const refuseExisting = () =>
        Errors.SINK_TARGET_EXISTS([`${schema}.${name.table} (rows of ${filePath}, topic ${topic})`], {
          context,
          hint: "use mode replace or append, or delete that input's rows",
        });

      return {
        async open() {
          const c = new pg.Client({ ...defaults, ...fields, connectionTimeoutMillis: connectTimeoutMs, application_name: "casparian-flow" });
          // Without a listener a server-side disconnect between queries would crash the worker.
          c.on("error", (err) => {
            broken = err;
            logger.warn({ err }, "PostgreSQL connection lost");
          });
          try {
            await c.connect();
          } catch (err) {
            throw fail("cannot connect", err, "check host, port, user and database in the sink URI, the sink options, or the PG* environment variables");
          }
          client = c;
          try {
            schema = name.schema ?? (await c.query<{ s: string | null }>("SELECT current_schema() AS s")).rows[0]!.s ?? "";
            if (schema === "") throw new Error("no schema in the URI and none on the search_path");
            const found = await c.query("SELECT 1 FROM pg_namespace WHERE nspname = $1", [schema]);
            if (found.rowCount === 0) throw new Error(`schema "${schema}" does not exist`);
            if (target.mode === "error" && (await inputHasRows(c))) throw refuseExisting();
          } catch (err) {
            if (Errors.SINK_TARGET_EXISTS.is(err)) throw err;
            throw fail("cannot open", err, "name an existing schema in the URI (schema.table) or set search_path");
          }
          await dropStaleStaging(c, logger).catch((err: unknown) => logger.warn({ err }, "could not clean up stale staging tables: %s", describeError(err)));
        },

        async write(batch: Batch) {
          const c = connected();
          const { schema: unified, changed } = jobSchema.accept(logicalSchema(batch.table.schema), `batch ${batch.index} of job ${job.jobId}`);
          if (changed) {
            const next = columnsOf(unified, jobIdText !== null, safeUri, context);
            if (staging === null) {
              staging = `${STAGING_PREFIX}${job.jobId}_${HOST_TAG}_${process.pid}_${registry.next++}`;
              // Registered before it exists: a concurrent recovery must never see it unclaimed.
              registry.live.add(staging);
              const lineage = [...(jobIdText !== null ? ['"_job_id" numeric(20) NOT NULL'] : []), '"_file_version_id" bigint NOT NULL'];
              try {
                await c.query(`CREATE UNLOGGED TABLE ${stagingSql()} (${[...next.map((col) => `${quote(col.name)} ${col.sqlType}`), ...lineage].join(", ")})`);
              } catch (err) {
                throw fail("cannot create the staging table", err, "the user needs CREATE on the target schema");
              }
            } else {
              try {
                await c.query(retypeStatement(stagingSql(), columns!, next));
              } catch (err) {
                throw fail(`cannot widen the staging table for batch ${batch.index}`, err);
              }
            }
            columns = next;
            generation++;
          }
          const cols = columns!;
          const width = cols.length + lineageNames.length;
          const rowsPerStatement = Math.max(1, Math.min(insertRows, Math.floor(MAX_PARAMETERS / width)));
          try {
            // Each batch's own types say how its values convert (the pipeline already gave it the topic's).
            const byName = new Map(batch.table.schema.fields.map((f, i) => [f.name, i] as const));
            const cells = cols.map((col) => {
              const index = byName.get(col.name);
              if (index === undefined) return new Array<unknown>(batch.numRows).fill(null);
              return mapping(batch.table.schema.fields[index]!.type)!.values(batch.table.getChildAt(index)!);
            });
            for (let first = 0; first < batch.numRows; first += rowsPerStatement) {
              const count = Math.min(rowsPerStatement, batch.numRows - first);
              const values: unknown[] = [];
              for (let row = first; row < first + count; row++) {
                for (const column of cells) values.push(column[row]);
                if (jobIdText !== null) values.push(jobIdText);
                values.push(fileVersionId);
              }
              // Full-size statements are prepared once per connection; the last, shorter one is not.
              const text = insertStatement(stagingSql(), [...cols.map((col) => col.name), ...lineageNames], count);
              await c.query(count === rowsPerStatement ? { name: `casparian_insert_${generation}_${count}`, text, values } : { text, values });
            }
          } catch (err) {
            throw fail(`cannot write batch ${batch.index}`, err);
          }
          rowsWritten += batch.numRows;
        },

        async prepare(): Promise<UndoHandle | undefined> {
          const c = connected();
          if (staging === null) {
            if (!(await replacesWithNothing(c))) return undefined;
          } else {
            // Inserts are awaited, so nothing is buffered here; make sure the staging table is whole.
            const result = await c.query<{ n: string }>(`SELECT count(*) AS n FROM ${stagingSql()}`);
            const found = Number(result.rows[0]!.n);
            if (found !== rowsWritten) throw fail("staging is incomplete", new Error(`${found} rows in ${staging} but ${rowsWritten} written`));
          }
          handle = {
            host: c.host,
            port: String(c.port),
            user: c.user ?? "",
            database: c.database ?? "",
            schema,
            table: name.table,
            filePath,
            fileVersionId,
            topic,
            undo: `${UNDO_PREFIX}${job.jobId}_${randomBytes(4).toString("hex")}`,
          };
          return handle;
        },

        async commit(options?: CommitOptions) {
          if (staging === null) {
            logger.warn("no batch for this topic: nothing published");
            if (target.mode === "replace") await removeWithNothing(options);
            await disconnect();
            return [];
          }
          const c = connected();
          const written = jobSchema.schema!;
          const names = [...columns!.map((col) => col.name), ...lineageNames].map(quote).join(", ");
          const undo = options?.undo === true && handle !== null ? (table: string) => `${quote(schema)}.${quote(`${handle!.undo}${table}`)}` : null;
          await makeBookkeeping(c);
          await c.query("BEGIN");
          try {
            // Concurrent commits to one table (e.g. two jobs creating it) take turns.
            await c.query("SELECT pg_advisory_xact_lock(hashtext($1))", [targetSql()]);
            if (target.mode === "error" && (await inputHasRows(c))) throw refuseExisting();
            let inserted: number;
            let recorded: Schema | null = written;
            const exists = await targetExists(c);
            if (undo !== null) {
              // What this commit replaces, kept in its own transaction: the ledger entries now, the rows below (after any widening).
              await c.query(`CREATE TABLE ${undo("")} (created boolean NOT NULL)`);
              await c.query(`INSERT INTO ${undo("")} VALUES ($1)`, [!exists]);
              await c.query(`CREATE TABLE ${undo("_ledger")} (LIKE ${ledgerSql()})`);
              await c.query(
                `INSERT INTO ${undo("_ledger")} SELECT * FROM ${ledgerSql()} WHERE target = $1 AND file_path = $2 AND ($3 OR file_version_id = $4) AND topic IN ($5, $6)`,
                [name.table, filePath, target.mode !== "append", fileVersionId, topic, UNKNOWN_TOPIC],
              );
            }
            if (exists) {
              const lineage = await c.query(
                "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = '_file_version_id' AND NOT attisdropped",
                [targetSql()],
              );
              if (lineage.rowCount === 0)
                throw new Error(`${schema}.${name.table} has no _file_version_id column, so this input's rows cannot be told from others'`);
              // Rows written before rows carried their topic belong to any topic (UNKNOWN_TOPIC).
              if (!(await hasColumn(c, targetSql(), TOPIC))) await c.query(`ALTER TABLE ${targetSql()} ADD COLUMN ${TOPIC} text NOT NULL DEFAULT ''`);
              let select = names;
              const before = await recordedSchema(c, schemasSql(), name.table);
              recorded = before;
              if (before !== null) {
                recorded = unifySchemas(target.topic, before, written, `table ${schema}.${name.table}, as earlier jobs wrote it`);
                await widenTarget(c, targetSql(), before, recorded);
                // Staging columns narrower than the table's (a placeholder, int32) are cast: PostgreSQL assigns text to nothing else.
                const wanted = new Map(recorded.fields.map((f) => [f.name, sqlTypeOf(f.type)] as const));
                const casts = columns!.map((col) =>
                  wanted.get(col.name) === col.sqlType ? quote(col.name) : `CAST(${quote(col.name)} AS ${wanted.get(col.name)})`,
                );
                select = [...casts, ...lineageNames.map(quote)].join(", ");
              }
              // The rows replaced are this topic's (and rows of no known topic) of this input: of this version (append) or of every version (replace).
              const versions = target.mode === "append" ? "AND file_version_id = $5" : "";
              const params = [name.table, filePath, topic, UNKNOWN_TOPIC, fileVersionId];
              const replaced = replacedRows(versions);
              if (undo !== null) {
                await c.query(`CREATE TABLE ${undo("_rows")} (LIKE ${targetSql()})`);
                await c.query(`INSERT INTO ${undo("_rows")} SELECT * FROM ${targetSql()} WHERE ${replaced}`, params);
              }
              await c.query(`DELETE FROM ${targetSql()} WHERE ${replaced}`, params);
              const forget = `DELETE FROM ${ledgerSql()} WHERE target = $1 AND file_path = $2 AND topic IN ($3, $4) ${versions}`;
              await c.query(forget, target.mode === "append" ? params : params.slice(0, 4));
              inserted = (await c.query(`INSERT INTO ${targetSql()} (${names}, ${TOPIC}) SELECT ${select}, $1 FROM ${stagingSql()}`, [topic])).rowCount ?? 0;
              await c.query(`DROP TABLE ${stagingSql()}`);
            } else {
              // A constant default fills the column without rewriting the table (PostgreSQL 11+); later rows name their topic.
              await c.query(`ALTER TABLE ${stagingSql()} ADD COLUMN ${TOPIC} text NOT NULL DEFAULT ${literal(topic)}`);
              await c.query(`ALTER TABLE ${stagingSql()} ALTER COLUMN ${TOPIC} DROP DEFAULT`);
              await c.query(`ALTER TABLE ${stagingSql()} SET LOGGED`);
              await c.query(`ALTER TABLE ${stagingSql()} RENAME TO ${quote(name.table)}`);
              inserted = rowsWritten;
            }
            if (recorded !== null) await recordSchema(c, schemasSql(), name.table, recorded);
            await c.query(
              `INSERT INTO ${ledgerSql()} (target, file_path, file_version_id, topic, job_id, rows) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (target, file_path, file_version_id, topic) DO UPDATE SET job_id = excluded.job_id, rows = excluded.rows`,
              [name.table, filePath, fileVersionId, topic, job.jobId.toString(), inserted],
            );
            await c.query("COMMIT");
          } catch (err) {
            await c.query("ROLLBACK").catch(() => {});
            if (Errors.SINK_TARGET_EXISTS.is(err) || Errors.SCHEMA_CONFLICT.is(err)) throw err;
            throw fail("cannot commit", err, "the existing table's columns must accept the batch's columns (and include _file_version_id)");
          }
          registry.live.delete(staging);
          staging = null;
          const artifact = artifactUri(target.parsed.scheme, c, schema, name.table);
          await disconnect();
          return [{ topic: target.topic, uri: artifact }];
        },

        async abort() {
          const claimed = staging;
          if (claimed !== null) {
            try {
              await connected().query(`DROP TABLE IF EXISTS ${stagingSql()}`);
            } catch (err) {
              // Left for recovery: it is no longer claimed by this process.
              logger.warn({ err, table: claimed }, "could not drop the staging table: %s", describeError(err));
            }
            registry.live.delete(claimed);
            staging = null;
          }
          await disconnect();
        },
      };
    },

    async resolve(handle, decision, { options }) {
      if (!isUndoHandle(handle)) throw new Error(`not a PostgreSQL sink handle: ${JSON.stringify(handle)}`);
      const defaults = connectionDefaults(options);
      const c = new pg.Client({
        ...defaults,
        host: handle.host,
        port: Number(handle.port),
        user: handle.user || defaults.user,
        database: handle.database || defaults.database,
        connectionTimeoutMillis: options.connectTimeoutMs,
        application_name: "casparian-flow",
      });
      c.on("error", () => {});
      await c.connect();
      try {
        await resolveUndo(c, handle, decision);
      } finally {
        await c.end().catch(() => {});
      }
    },

    async recover({ logger, options }) {
      const defaults = connectionDefaults(options);
      const configured =
        Object.keys(defaults).length > 0 || ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE"].some((v) => process.env[v] !== undefined);
      if (!configured) {
        // Databases named only in sink URIs are cleaned when a sink opens there.
        logger.info("no default database (sink options or PG* variables): stale staging is dropped when sinks open");
        return;
      }
      const c = new pg.Client({ ...defaults, connectionTimeoutMillis: options.connectTimeoutMs, application_name: "casparian-flow" });
      c.on("error", (err) => logger.warn({ err }, "PostgreSQL connection lost during recovery"));
      try {
        await c.connect();
        await dropStaleStaging(c, logger);
      } finally {
        await c.end().catch(() => {});
      }
    },
  });
}

/** A handle as journaled: those of commits made before rows carried their topic have none. */
interface JournaledHandle {
  readonly host: string;
  readonly port: string;
  readonly user: string;
  readonly database: string;
  readonly schema: string;
  readonly table: string;
  readonly filePath: string;
  readonly fileVersionId: string;
  readonly topic?: string;
  readonly undo: string;
}

/** What `resolve` needs to undo or finish one commit (journaled: strings only, never a password). */
interface UndoHandle extends JournaledHandle {
  readonly topic: string;
  readonly [key: string]: string;
}

function isUndoHandle(value: unknown): value is JournaledHandle {
  if (typeof value !== "object" || value === null) return false;
  const fields = value as Record<string, unknown>;
  const keys = ["host", "port", "user", "database", "schema", "table", "filePath", "fileVersionId", "undo"];
  return (
    keys.every((key) => typeof fields[key] === "string") &&
    (fields.topic === undefined || typeof fields.topic === "string") &&
    String(fields.undo).startsWith(UNDO_PREFIX)
  );
}

async function hasColumn(c: pg.Client, table: string, column: string): Promise<boolean> {
  const found = await c.query("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped", [table, column]);
  return (found.rowCount ?? 0) > 0;
}

/**
 * The ledger, one entry per (table, input, version, topic). A ledger made before entries
 * had a topic gets one (its entries' topic unknown: UNKNOWN_TOPIC) and the primary key
 * with it, which would otherwise let only one topic of an input version in.
 */
async function ensureLedger(c: pg.Client, ledger: string): Promise<void> {
  await c.query(`CREATE TABLE IF NOT EXISTS ${ledger} (${LEDGER_COLUMNS})`);
  if (await hasColumn(c, ledger, "topic")) return;
  await c.query(`ALTER TABLE ${ledger} ADD COLUMN topic text NOT NULL DEFAULT ${literal(UNKNOWN_TOPIC)}`);
  const key = await c.query<{ name: string }>("SELECT conname AS name FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p'", [ledger]);
  for (const { name } of key.rows) await c.query(`ALTER TABLE ${ledger} DROP CONSTRAINT ${quote(name)}`);
  await c.query(`ALTER TABLE ${ledger} ADD PRIMARY KEY (target, file_path, file_version_id, topic)`);
}

/**
 * The sink's `resolve`, in one transaction serialized with commits to the table: when the
 * commit happened (its undo tables exist), rollback deletes this version's rows and puts
 * back the rows and ledger entries the commit replaced, dropping the table (and its
 * recorded schema) when the commit created it and nothing else is in it; then, for both
 * decisions, the undo tables go.
 */
async function resolveUndo(c: pg.Client, handle: JournaledHandle, decision: "rollback" | "finish"): Promise<void> {
  const qualified = (table: string) => `${quote(handle.schema)}.${quote(table)}`;
  const target = qualified(handle.table);
  const ledger = qualified(LEDGER);
  const undo = (suffix: string) => qualified(`${handle.undo}${suffix}`);
  await c.query("BEGIN");
  try {
    await c.query("SELECT pg_advisory_xact_lock(hashtext($1))", [target]);
    const kept = (await c.query<{ oid: string | null }>("SELECT to_regclass($1) AS oid", [undo("")])).rows[0]!.oid !== null;
    if (kept && decision === "rollback") {
      const created = (await c.query<{ created: boolean }>(`SELECT created FROM ${undo("")}`)).rows[0]!.created;
      // A handle without a topic was journaled by a commit that wrote no topics (nor a ledger with them).
      if (handle.topic === undefined) {
        await c.query(`DELETE FROM ${target} WHERE _file_version_id = $1`, [handle.fileVersionId]);
        await c.query(`DELETE FROM ${ledger} WHERE target = $1 AND file_path = $2 AND file_version_id = $3`, [
          handle.table,
          handle.filePath,
          handle.fileVersionId,
        ]);
      } else {
        await c.query(`DELETE FROM ${target} WHERE _file_version_id = $1 AND ${TOPIC} = $2`, [handle.fileVersionId, handle.topic]);
        await c.query(`DELETE FROM ${ledger} WHERE target = $1 AND file_path = $2 AND file_version_id = $3 AND topic = $4`, [
          handle.table,
          handle.filePath,
          handle.fileVersionId,
          handle.topic,
        ]);
      }
      if ((await c.query<{ oid: string | null }>("SELECT to_regclass($1) AS oid", [undo("_rows")])).rows[0]!.oid !== null) {
        await c.query(`INSERT INTO ${target} SELECT * FROM ${undo("_rows")}`);
      }
      await c.query(`INSERT INTO ${ledger} SELECT * FROM ${undo("_ledger")} ON CONFLICT DO NOTHING`);
      if (created && ((await c.query(`SELECT 1 FROM ${target} LIMIT 1`)).rowCount ?? 0) === 0) {
        await c.query(`DROP TABLE ${target}`);
        const schemas = qualified(SCHEMAS);
        if ((await c.query<{ oid: string | null }>("SELECT to_regclass($1) AS oid", [schemas])).rows[0]!.oid !== null) {
          await c.query(`DELETE FROM ${schemas} WHERE target = $1`, [handle.table]);
        }
      }
    }
    for (const suffix of ["", "_rows", "_ledger"]) await c.query(`DROP TABLE IF EXISTS ${undo(suffix)}`);
    await c.query("COMMIT");
  } catch (err) {
    await c.query("ROLLBACK").catch(() => {});
    throw err;
  }
}

/**
 * Drops staging tables (any schema) of this database whose writer is gone: made on
 * this host by a process that no longer runs, or by this process but not claimed by
 * any of its running jobs (a restarted container reuses pids). Staging of live
 * processes and of other hosts stays.
 */
async function dropStaleStaging(client: pg.Client, logger: Logger): Promise<string[]> {
  const { rows } = await client.query<{ schema: string; name: string }>(
    "SELECT n.nspname AS schema, c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND c.relname LIKE $1",
    [`${STAGING_PREFIX.replace(/_/g, "\\_")}%`],
  );
  const dropped: string[] = [];
  for (const { schema, name } of rows) {
    const match = STAGING_PATTERN.exec(name);
    if (match === null || match[2] !== HOST_TAG) continue;
    const pid = Number(match[3]);
    if (pid === process.pid ? registry.live.has(name) : isProcessAlive(pid)) continue;
    try {
      await client.query(`DROP TABLE IF EXISTS ${quote(schema)}.${quote(name)}`);
      dropped.push(`${schema}.${name}`);
      logger.warn({ table: `${schema}.${name}` }, "dropped a staging table left by a crashed run");
    } catch (err) {
      logger.warn({ err, table: `${schema}.${name}` }, "could not drop a stale staging table: %s", describeError(err));
    }
  }
  return dropped;
}

// ---------------------------------------------------------------------------
// URIs and connection settings
// ---------------------------------------------------------------------------

function parseTarget(target: SinkTarget, jobId: bigint | undefined): { fields: ConnectionFields; name: TableName } {
  const shape = "expected postgres://[user@][host][:port]/[database/][schema.]table[?host=/socket/dir&port=N&user=name]";
  const bad = (why: string) => Errors.SINK_BAD_URI([redact(target.uri), `${why}; ${shape}`], { context: { jobId, sinkUri: redact(target.uri) } });
  let url: URL;
  try {
    url = new URL(target.uri);
  } catch {
    throw bad("not a URL");
  }
  if (url.hash !== "") throw bad("a fragment (#…) is not allowed");
  for (const key of url.searchParams.keys()) {
    if (!(URI_PARAMS as readonly string[]).includes(key)) throw bad(`unknown parameter "${key}" (known: ${URI_PARAMS.join(", ")})`);
  }
  const segments = url.pathname.split("/").slice(1).map(decode);
  if (segments.length < 1 || segments.length > 2 || segments.some((s) => s === ""))
    throw bad("the path must be /table, /schema.table, /database/table or /database/schema.table");
  const parts = segments[segments.length - 1]!.split(".");
  if (parts.length > 2 || !parts.every(isIdentifier)) throw bad(`"${segments[segments.length - 1]}" is not [schema.]table made of plain identifiers`);

  const fields: ConnectionFields = {};
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1") || url.searchParams.get("host");
  if (url.hostname !== "" && url.searchParams.has("host")) throw bad("give the host once, in the authority or as ?host=");
  if (host) fields.host = decode(host);
  const port = url.port || url.searchParams.get("port");
  if (port) {
    if (!/^\d+$/.test(port) || Number(port) < 1 || Number(port) > 65_535) throw bad(`port ${JSON.stringify(port)} is not a TCP port`);
    fields.port = Number(port);
  }
  const user = decode(url.username) || url.searchParams.get("user");
  if (user) fields.user = user;
  if (url.password !== "") fields.password = decode(url.password);
  if (segments.length === 2) fields.database = segments[0]!;
  return { fields, name: parts.length === 2 ? { schema: parts[0]!, table: parts[1]! } : { schema: null, table: parts[0]! } };
}

/** Options over connectionString; fields left undefined fall through to node-postgres's PG* variables. */
function connectionDefaults(options: v.InferOutput<typeof postgresOptions>): ConnectionFields {
  const fields: ConnectionFields = {};
  if (options.connectionString !== undefined) {
    const url = new URL(options.connectionString);
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1") || url.searchParams.get("host");
    if (host) fields.host = decode(host);
    const port = url.port || url.searchParams.get("port");
    if (port) fields.port = Number(port);
    if (url.username) fields.user = decode(url.username);
    if (url.password) fields.password = decode(url.password);
    if (url.pathname.length > 1) fields.database = decode(url.pathname.slice(1));
  }
  for (const key of ["host", "user", "password", "database"] as const) {
    if (options[key] !== undefined) fields[key] = String(options[key]);
  }
  if (options.port !== undefined) fields.port = options.port;
  return fields;
}

/** The artifact: where the rows are, resolved (user, host, port, database, schema), never the password. */
function artifactUri(scheme: string, client: pg.Client, schema: string, table: string): string {
  const user = client.user ? `${encodeURIComponent(client.user)}@` : "";
  const path = `/${encodeURIComponent(client.database ?? "")}/${schema}.${table}`;
  if (client.host.startsWith("/")) return `${scheme}://${user}${path}?host=${client.host.split("/").map(encodeURIComponent).join("/")}&port=${client.port}`;
  const host = client.host.includes(":") ? `[${client.host}]` : client.host;
  return `${scheme}://${user}${host}:${client.port}${path}`;
}

/** The URI with any password replaced, for messages and logs of ours. */
function redact(uri: string): string {
  return uri.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/[^/@:]*):[^/@]*@/, "$1:***@");
}

function decode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function isIdentifier(name: string): boolean {
  return IDENTIFIER.test(name) && Buffer.byteLength(name) <= MAX_IDENTIFIER_BYTES;
}

function quote(identifier: string): string {
  return `"${identifier.replace(/"/g, '""')}"`;
}

/** A string constant for DDL, which takes no parameters: an escape string, so standard_conforming_strings does not matter. */
function literal(text: string): string {
  return `E'${text.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
}

function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const sqlState = (err as { code?: unknown }).code;
  return typeof sqlState === "string" && /^[0-9A-Z]{5}$/.test(sqlState) ? `${err.message} (SQLSTATE ${sqlState})` : err.message;
}

// ---------------------------------------------------------------------------
// Arrow → PostgreSQL
// ---------------------------------------------------------------------------

function insertStatement(table: string, names: string[], rows: number): string {
  const tuples: string[] = [];
  let n = 1;
  for (let r = 0; r < rows; r++) {
    const placeholders: string[] = [];
    for (let c = 0; c < names.length; c++) placeholders.push(`$${n++}`);
    tuples.push(`(${placeholders.join(", ")})`);
  }
  return `INSERT INTO ${table} (${names.map(quote).join(", ")}) VALUES ${tuples.join(", ")}`;
}

// ---------------------------------------------------------------------------
// The table's Arrow schema, and widening a table to a unified one
// ---------------------------------------------------------------------------

/** The schema as SQL sees it: dictionary columns hold their decoded values. */
function logicalSchema(schema: Schema): Schema {
  if (!schema.fields.some((f) => f.type.typeId === Type.Dictionary)) return schema;
  const fields = schema.fields.map((f) =>
    f.type.typeId === Type.Dictionary ? new Field(f.name, (f.type as Dictionary).dictionary, f.nullable, f.metadata) : f,
  );
  return new Schema(fields, schema.metadata);
}

async function recordedSchema(c: pg.Client, schemas: string, table: string): Promise<Schema | null> {
  const { rows } = await c.query<{ arrow_schema: Buffer }>(`SELECT arrow_schema FROM ${schemas} WHERE target = $1`, [table]);
  return rows.length === 0 ? null : tableFromIPC(rows[0]!.arrow_schema).schema;
}

async function recordSchema(c: pg.Client, schemas: string, table: string, schema: Schema): Promise<void> {
  const bytes = Buffer.from(tableToIPC(new Table(schema), "stream"));
  await c.query(`INSERT INTO ${schemas} (target, arrow_schema) VALUES ($1, $2) ON CONFLICT (target) DO UPDATE SET arrow_schema = excluded.arrow_schema`, [
    table,
    bytes,
  ]);
}

/**
 * One ALTER TABLE giving `table` (whose data columns are `from`) the columns `to`: new
 * ones added, changed types retyped (a placeholder's NULLs become NULLs of the new type).
 */
function retypeStatement(table: string, from: Column[], to: Column[]): string {
  const actions: string[] = [];
  for (const col of to) {
    const before = from.find((c) => c.name === col.name);
    if (before === undefined) actions.push(`ADD COLUMN ${quote(col.name)} ${col.sqlType}`);
    else if (before.sqlType !== col.sqlType) {
      const using = before.type.typeId === Type.Null ? "NULL" : quote(col.name);
      actions.push(`ALTER COLUMN ${quote(col.name)} TYPE ${col.sqlType} USING ${using}::${col.sqlType}`);
    }
  }
  return actions.length === 0 ? "SELECT 1" : `ALTER TABLE ${table} ${actions.join(", ")}`;
}

/**
 * Gives the existing target the unified schema's columns, inside the commit's
 * transaction: a column the recorded schema has as null may hold only NULLs (checked),
 * a column it lacks is added.
 */
async function widenTarget(c: pg.Client, target: string, recorded: Schema, unified: Schema): Promise<void> {
  const existing = new Set(
    (
      await c.query<{ name: string }>("SELECT attname AS name FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped", [target])
    ).rows.map((r) => r.name),
  );
  const from = recorded.fields.filter((f) => existing.has(f.name)).map((f) => ({ name: f.name, type: f.type, sqlType: sqlTypeOf(f.type), values: () => [] }));
  // Columns of the table the recorded schema does not know (added by hand) are left as they are.
  const to = unified.fields
    .filter((f) => !existing.has(f.name) || from.some((c) => c.name === f.name))
    .map((f) => ({ name: f.name, type: f.type, sqlType: sqlTypeOf(f.type), values: () => [] }));
  for (const col of to) {
    const before = from.find((c) => c.name === col.name);
    if (before === undefined || before.type.typeId !== Type.Null || before.sqlType === col.sqlType) continue;
    const { rows } = await c.query(`SELECT 1 FROM ${target} WHERE ${quote(col.name)} IS NOT NULL LIMIT 1`);
    if (rows.length > 0)
      throw new Error(`column "${col.name}" of ${target} is recorded as all-null (Arrow type null) but holds values, so it cannot become ${col.sqlType}`);
  }
  await c.query(retypeStatement(target, from, to));
}

function sqlTypeOf(type: DataType): string {
  const mapped = mapping(type);
  if (mapped === null) throw new Error(`Arrow type ${String(type)} has no PostgreSQL type here`);
  return mapped.sqlType;
}

/** The data columns of `schema` (lineage columns are the staging table's own), checked. */
function columnsOf(schema: Schema, jobId: boolean, uri: string, context: Record<string, unknown>): Column[] {
  if (schema.fields.length === 0) throw Errors.SINK_WRITE_FAILED([uri, "the batch has no columns"], { context, hint: "publish at least one column" });
  const columns = schema.fields.map((field) => {
    if (Buffer.byteLength(field.name) > MAX_IDENTIFIER_BYTES || field.name.includes("\0") || field.name === "") {
      throw Errors.SINK_WRITE_FAILED([uri, `column name ${JSON.stringify(field.name)} is not a PostgreSQL identifier (1 to 63 bytes, no NUL)`], { context });
    }
    const mapped = mapping(field.type);
    if (mapped === null) {
      throw Errors.SINK_WRITE_FAILED([uri, `column "${field.name}" has Arrow type ${String(field.type)}, which this sink does not map`], {
        context,
        hint: "cast it before publishing (decimals to string or float64, times and durations to int64)",
      });
    }
    return { name: field.name, type: field.type, ...mapped };
  });
  const lineageColumns = [...(jobId ? ["_job_id"] : []), "_file_version_id", TOPIC];
  for (const name of lineageColumns) {
    if (columns.some((c) => c.name === name))
      throw Errors.SINK_WRITE_FAILED([uri, `column "${name}" collides with the lineage column`], {
        context,
        hint: jobId ? "rename the column or set lineage: false" : "rename the column",
      });
  }
  return columns;
}

function mapping(type: DataType): Omit<Column, "name" | "type"> | null {
  switch (type.typeId) {
    case Type.Timestamp:
      return timestampMapping(type);
    case Type.Null:
      return { sqlType: "text", values: (vector) => new Array<unknown>(vector.length).fill(null) };
    case Type.Dictionary:
      // Values arrive decoded: the column takes the dictionary's value type.
      return valueMapping((type as unknown as { dictionary: DataType }).dictionary);
    default:
      return valueMapping(type);
  }
}

/** Types whose cells convert one by one from what apache-arrow's `get` returns. */
function valueMapping(type: DataType): Omit<Column, "name" | "type"> | null {
  const byValue = (sqlType: string, convert: (value: unknown) => unknown) => ({ sqlType, values: cellsOf(convert) });
  switch (type.typeId) {
    case Type.Int: {
      const { bitWidth, isSigned } = type as unknown as { bitWidth: 8 | 16 | 32 | 64; isSigned: boolean };
      const signed = { 8: "smallint", 16: "smallint", 32: "integer", 64: "bigint" } as const;
      const unsigned = { 8: "smallint", 16: "integer", 32: "bigint", 64: "numeric(20)" } as const;
      // Decimal text: a bigint never passes through a double.
      return byValue((isSigned ? signed : unsigned)[bitWidth], (v) => String(v));
    }
    case Type.Float:
      return byValue((type as unknown as { precision: number }).precision === 2 ? "double precision" : "real", (v) => v);
    case Type.Bool:
      return byValue("boolean", (v) => Boolean(v));
    case Type.Utf8:
    case Type.LargeUtf8:
      return byValue("text", (v) => String(v));
    case Type.Binary:
    case Type.LargeBinary:
    case Type.FixedSizeBinary:
      return byValue("bytea", (v) => Buffer.from(v as Uint8Array));
    case Type.Date:
      return byValue("date", (v) => new Date(Number(v)).toISOString().slice(0, 10));
    case Type.Decimal: {
      const { precision, scale } = type as unknown as { precision: number; scale: number };
      return { sqlType: `numeric(${precision},${scale})`, values: exactCells((v) => v) };
    }
    case Type.Time:
      return { sqlType: "time", values: exactCells((v) => v) };
    case Type.List:
    case Type.LargeList:
    case Type.Struct:
      // Exact nested values (int64s, decimals and timestamps keep every digit), as JSON.
      return { sqlType: "jsonb", values: exactCells((v) => stringify(v)) };
    case Type.FixedSizeList:
    case Type.Map:
      // lossless-json keeps int64s inside nested values exact.
      return byValue("jsonb", (v) => stringify((v as { toJSON(): unknown }).toJSON()));
    default:
      return null;
  }
}

/** Reads every cell exactly (sinks/values.ts), converting the non-null ones. */
function exactCells(convert: (value: ExactValue) => unknown): (vector: Vector) => unknown[] {
  return (vector) => {
    const read = exactReader(vector);
    const out = new Array<unknown>(vector.length);
    for (let row = 0; row < vector.length; row++) {
      const value = read(row);
      out[row] = value === null ? null : convert(value);
    }
    return out;
  };
}

/** Reads every cell through `get`, converting the non-null ones. */
function cellsOf(convert: (value: unknown) => unknown): (vector: Vector) => unknown[] {
  return (vector) => {
    const out = new Array<unknown>(vector.length);
    for (let row = 0; row < vector.length; row++) {
      const value: unknown = vector.get(row);
      out[row] = value === null || value === undefined ? null : convert(value);
    }
    return out;
  };
}

/**
 * Timestamps are read from the raw int64 values, not through `get` (which rounds to
 * milliseconds), and written as ISO 8601 text with microseconds.
 */
function timestampMapping(type: DataType): Omit<Column, "name" | "type"> {
  const { unit, timezone } = type as unknown as { unit: number; timezone: string | null };
  // TimeUnit: SECOND 0, MILLISECOND 1, MICROSECOND 2, NANOSECOND 3.
  const toMicros = [(v: bigint) => v * 1_000_000n, (v: bigint) => v * 1000n, (v: bigint) => v, (v: bigint) => floorDiv(v, 1000n)][unit]!;
  const zoned = timezone !== null && timezone !== undefined && timezone !== "";
  return {
    sqlType: zoned ? "timestamptz" : "timestamp",
    values(vector) {
      const out: unknown[] = [];
      for (const data of vector.data) {
        const raw = data.values as unknown as BigInt64Array;
        for (let i = 0; i < data.length; i++) {
          if (!data.getValid(i)) {
            out.push(null);
            continue;
          }
          const micros = toMicros(raw[data.offset + i]!);
          out.push(isoMicros(micros, zoned));
        }
      }
      return out;
    },
  };
}

function isoMicros(micros: bigint, zoned: boolean): string {
  const seconds = floorDiv(micros, 1_000_000n);
  const fraction = micros - seconds * 1_000_000n;
  const iso = new Date(Number(seconds) * 1000).toISOString().replace(/\.\d{3}Z$/, "");
  return `${iso}.${fraction.toString().padStart(6, "0")}${zoned ? "Z" : ""}`;
}

function floorDiv(a: bigint, b: bigint): bigint {
  const q = a / b;
  return a % b !== 0n && a < 0n !== b < 0n ? q - 1n : q;
}
