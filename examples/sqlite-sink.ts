/**
 * Example sink: SQLite tables, written only against casparian-flow's public API.
 *
 *   sqlite:///abs/path/db.sqlite/table   an absolute database path
 *   sqlite://rel.db/table                relative to the output root (may not leave it)
 *
 * Register it in casparian.config.ts (see sqlite-sink.config.ts):
 *
 *   export default defineConfig({ sinks: ["./examples/sqlite-sink.ts"] });
 *
 * Rows go to a staging table (a TEMP table of this job's connection, so a crashed
 * worker leaves nothing behind), and are promoted in one transaction on commit. Modes
 * act on the rows the sink's topic wrote for the job's input (its file_path), never on
 * other inputs' rows nor on other topics' (several topics of a job may share a table,
 * e.g. through a catch-all sink), so one table can collect every input of a run
 * (`inputScopedModes`):
 *   replace → delete the input's earlier rows (every version), insert the new ones;
 *   append  → keep the rows of the input's earlier versions, replace those of this
 *             version (a retried or rerun job never adds a second copy);
 *   error   → fail if the table already holds rows of this input and topic.
 * Which rows belong to which input and topic is kept in a ledger table,
 * `_casparian_inputs` (target, file_path, file_version_id, topic, job_id, rows), written
 * in the same transaction; every row carries `_file_version_id` (int64) and `_topic`
 * (text), by which the rows are deleted. Rows and ledger entries written before rows
 * carried their topic get topic '' (a ledger without the column is rebuilt with it)
 * and are replaced by whichever topic next writes their input version.
 * In a job with other sinks (commit with `undo: true`), the commit's transaction first
 * copies the rows and ledger entries it is about to replace into `_casparian_undo_<job
 * id>_<n>` tables; `resolve` puts them back (rollback) or drops them (finish), so the job's
 * sinks publish all or nothing (README "Writing a sink"). A rollback keeps a widening the
 * commit made to the table's types (the restored rows fit the wider columns).
 * A topic that never produced a batch publishes nothing; in mode replace its commit still
 * deletes the input's earlier rows of that topic (the input has none there now: a fixed
 * input's rejects go), undoable like any commit. Column types follow the Arrow
 * types: integers → INTEGER (int64 exact), floats → REAL, strings → TEXT, bools → 0/1,
 * timestamps → ISO 8601 TEXT with every digit of their unit, dates → 'YYYY-MM-DD',
 * decimals → exact TEXT ('12.30'), binary → BLOB, lists and structs → JSON TEXT. Values
 * are read with `exactReader` (apache-arrow's `get` would round timestamps to ms).
 *
 * Types follow the topic's schema unification (README "Types you can trust"), as the
 * Parquet sink does: a column that is all null so far (Arrow type null) is a placeholder,
 * declared without a type (no affinity), and takes the first real type that arrives,
 * whether in a later batch of the job or in a later job writing the same table (the
 * table is then rebuilt with the column typed, as SQLite's ALTER TABLE documentation
 * describes, indexes and triggers recreated, in the commit's transaction, after checking
 * that the column holds only NULLs). Other legal widenings (int32 → int64, int → float64,
 * a column that appears later) are applied; a real conflict (int64 vs string) fails the
 * commit with CSP_SCHEMA_CONFLICT naming the table, the column and both types, and the
 * table stays as it was. The table's Arrow schema, which SQLite's declared types cannot
 * tell (TEXT holds strings, timestamps and decimals alike), is recorded in
 * `_casparian_schemas` (target, arrow_schema: an Arrow IPC stream with no rows), in the
 * same transaction. A table that has no recorded schema (made by someone else) is
 * written as it is, SQLite's own type rules only.
 */
import { randomBytes } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { dirname, isAbsolute } from "node:path";
import { Field, Schema, Table, Type, tableFromIPC, tableToIPC, type DataType, type Dictionary } from "apache-arrow";
import Database from "better-sqlite3";
import {
  Errors,
  TopicSchema,
  defineSink,
  exactReader,
  makeDirectoryInsideRoot,
  resolveInsideRoot,
  unifySchemas,
  type Batch,
  type CommitOptions,
  type ExactValue,
  type SinkPlugin,
} from "casparian-flow";

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
const LEDGER = "_casparian_inputs";
const SCHEMAS = "_casparian_schemas";
const LINEAGE = "_file_version_id";
/** Which topic wrote a row: topics of one job (a catch-all sink) may share a table. */
const TOPIC = "_topic";
/** The topic of rows and ledger entries written before rows carried one: they belong to any topic. */
const UNKNOWN_TOPIC = "";
/** Undo tables of a commit made with `undo: true`: `<prefix><job id>_<random>` (+ `_rows`, `_ledger`). */
const UNDO_PREFIX = "_casparian_undo_";

/** A handle as journaled: those of commits made before rows carried their topic have none. */
interface JournaledHandle {
  readonly database: string;
  readonly table: string;
  readonly filePath: string;
  readonly fileVersionId: string;
  readonly topic?: string;
  readonly undo: string;
}

/** What `resolve` needs to undo or finish one commit (journaled: strings only). */
interface UndoHandle extends JournaledHandle {
  readonly topic: string;
  readonly [key: string]: string;
}

interface TableColumn {
  name: string;
  type: string;
  notnull: number;
  dflt_value: string | null;
}

export default function sqliteSink(): SinkPlugin {
  return defineSink({
    name: "sqlite",
    schemes: ["sqlite"],
    inputScopedModes: true,
    resolve(handle, decision) {
      if (!isUndoHandle(handle)) throw new Error(`not a SQLite sink handle: ${JSON.stringify(handle)}`);
      resolveUndo(handle, decision);
    },
    checkTarget(target, { outputRoot }) {
      parseLocation(target.parsed.location, target.uri, outputRoot, undefined);
    },
    create(target, { job, logger }) {
      const { database, table, inRoot } = parseLocation(target.parsed.location, target.uri, job.outputRoot, job.jobId);
      const context = { jobId: job.jobId, sinkUri: target.uri };
      const filePath = job.command.filePath;
      const fileVersionId = BigInt(job.command.fileVersionId);
      const topic = target.topic;
      const inputHasRows = (d: Database.Database) => {
        if (!tableExists(d, LEDGER)) return false;
        if (!hasColumn(d, LEDGER, "topic"))
          return d.prepare(`SELECT 1 FROM main.${LEDGER} WHERE target = ? AND file_path = ?`).get(table, filePath) !== undefined;
        const query = `SELECT 1 FROM main.${LEDGER} WHERE target = ? AND file_path = ? AND topic IN (?, ?)`;
        return d.prepare(query).get(table, filePath, topic, UNKNOWN_TOPIC) !== undefined;
      };
      const refuse = () =>
        Errors.SINK_TARGET_EXISTS([`${database} table ${table} (rows of ${filePath}, topic ${topic})`], {
          context,
          hint: "use mode replace or append, or delete that input's rows",
        });
      let db: Database.Database | null = null;
      // The job's schema so far (its batches unified); the staging table has its columns.
      const jobSchema = new TopicSchema(target.topic);
      let staged: string[] | null = null;
      let insert: Database.Statement | null = null;
      let handle: UndoHandle | null = null;

      const close = () => {
        db?.close();
        db = null;
      };

      /**
       * Deletes this topic's rows (and rows of no known topic) of the input, of this version
       * (append) or of every version (replace), and their ledger entries, keeping them in
       * the undo tables first when `undo` is given.
       */
      const removeEarlier = (d: Database.Database, undo: string | null, created: boolean) => {
        const replaced =
          target.mode === "append"
            ? [fileVersionId]
            : (
                d
                  .prepare(`SELECT file_version_id AS v FROM main.${LEDGER} WHERE target = ? AND file_path = ? AND topic IN (?, ?)`)
                  .safeIntegers(true)
                  .all(table, filePath, topic, UNKNOWN_TOPIC) as Array<{ v: bigint }>
              ).map((r) => r.v);
        if (!replaced.includes(fileVersionId)) replaced.push(fileVersionId);
        if (undo !== null) keepUndo(d, undo, table, filePath, topic, replaced, created);
        const remove = d.prepare(`DELETE FROM main.${quote(table)} WHERE ${LINEAGE} = ? AND ${TOPIC} IN (?, ?)`);
        const forget = d.prepare(`DELETE FROM main.${LEDGER} WHERE target = ? AND file_path = ? AND file_version_id = ? AND topic IN (?, ?)`);
        for (const version of replaced) {
          remove.run(version, topic, UNKNOWN_TOPIC);
          forget.run(table, filePath, version, topic, UNKNOWN_TOPIC);
        }
      };
      /** Mode replace with no batch: the input publishes nothing to this topic now, so its earlier rows there go. */
      const replacesWithNothing = (d: Database.Database) => target.mode === "replace" && tableExists(d, table) && inputHasRows(d);

      /** The staging table follows the job's schema: its columns are untyped, so every value is kept as converted. */
      const stageColumns = (d: Database.Database, schema: Schema) => {
        const names = schema.fields.map((f) => f.name);
        for (const reserved of [LINEAGE, TOPIC]) {
          if (names.includes(reserved)) throw Errors.SINK_SCHEMA_MISMATCH([target.topic, `column "${reserved}" is reserved for lineage`], { context });
        }
        if (staged === null) d.exec(`CREATE TEMP TABLE staging (${[...names.map(quote), `${LINEAGE} INTEGER NOT NULL`].join(", ")})`);
        else for (const name of names.filter((n) => !staged!.includes(n))) d.exec(`ALTER TABLE temp.staging ADD COLUMN ${quote(name)}`);
        staged = names;
        insert = d.prepare(`INSERT INTO temp.staging (${[...names, LINEAGE].map(quote).join(", ")}) VALUES (${[...names, LINEAGE].map(() => "?").join(", ")})`);
      };

      return {
        async open() {
          // A relative database stays inside the output root, symlinks under it included; an absolute one is where the URI says.
          if (!inRoot) await mkdir(dirname(database), { recursive: true });
          else await makeDirectoryInsideRoot(job.outputRoot, dirname(database), { uri: target.uri, jobId: job.jobId });
          db = new Database(database);
          db.pragma("busy_timeout = 10000");
          if (target.mode === "error" && inputHasRows(db)) throw refuse();
        },
        write(batch: Batch) {
          const d = db!;
          const { schema, changed } = jobSchema.accept(logicalSchema(batch.table.schema), `batch ${batch.index} of job ${job.jobId}`);
          if (changed) stageColumns(d, schema);
          // Each batch's own types say how its values convert; the table's types come at commit.
          const byName = new Map(batch.table.schema.fields.map((f, i) => [f.name, i] as const));
          const readers = staged!.map((name) => {
            const index = byName.get(name);
            if (index === undefined) return () => null;
            const read = exactReader(batch.table.getChildAt(index)!);
            const convert = converter(batch.table.schema.fields[index]!.type);
            return (row: number) => {
              const value = read(row);
              return value === null ? null : convert(value);
            };
          });
          const width = readers.length;
          d.transaction(() => {
            const values = new Array<unknown>(width + 1);
            values[width] = fileVersionId;
            for (let row = 0; row < batch.numRows; row++) {
              for (let c = 0; c < width; c++) values[c] = readers[c]!(row);
              insert!.run(values);
            }
          })();
        },
        prepare(): UndoHandle | undefined {
          // Rows are already in the staging table; nothing is buffered in memory.
          if (jobSchema.schema === null && !replacesWithNothing(db!)) return undefined;
          handle = {
            database,
            table,
            filePath,
            fileVersionId: fileVersionId.toString(),
            topic,
            undo: `${UNDO_PREFIX}${job.jobId}_${randomBytes(4).toString("hex")}`,
          };
          return handle;
        },
        commit(options?: CommitOptions) {
          const d = db!;
          const schema = jobSchema.schema;
          const undo = options?.undo === true && handle !== null ? handle.undo : null;
          if (schema === null) {
            logger.warn("no batch for this topic: nothing published");
            d.transaction(() => {
              if (!replacesWithNothing(d)) return;
              ensureLedger(d);
              if (!hasColumn(d, table, TOPIC)) d.exec(`ALTER TABLE main.${quote(table)} ADD COLUMN ${TOPIC} TEXT NOT NULL DEFAULT ''`);
              removeEarlier(d, undo, false);
              logger.info({ table }, "mode replace: the input's earlier rows of this topic are removed");
            }).immediate();
            close();
            return [];
          }
          const names = schema.fields.map((f) => quote(f.name)).join(", ");
          d.transaction(() => {
            if (target.mode === "error" && inputHasRows(d)) throw refuse();
            const created = !tableExists(d, table);
            d.exec(`CREATE TABLE IF NOT EXISTS main.${SCHEMAS} (target TEXT PRIMARY KEY, arrow_schema BLOB NOT NULL)`);
            if (!tableExists(d, table)) {
              d.exec(
                `CREATE TABLE main.${quote(table)} (${[...schema.fields.map((f) => columnDefinition(f.name, f.type)), `${LINEAGE} INTEGER NOT NULL`, `${TOPIC} TEXT NOT NULL`].join(", ")})`,
              );
              recordSchema(d, table, schema);
            } else {
              const existing = d.prepare("SELECT name FROM pragma_table_info(?)").all(table) as Array<{ name: string }>;
              if (!existing.some((c) => c.name === LINEAGE)) {
                throw Errors.SINK_WRITE_FAILED(
                  [target.uri, `table ${table} in ${database} has no ${LINEAGE} column, so this input's rows cannot be told from others'`],
                  { context, hint: "write to a new table, or add the column to that one" },
                );
              }
              // Rows written before rows carried their topic belong to any topic (UNKNOWN_TOPIC).
              if (!existing.some((c) => c.name === TOPIC)) d.exec(`ALTER TABLE main.${quote(table)} ADD COLUMN ${TOPIC} TEXT NOT NULL DEFAULT ''`);
              const recorded = recordedSchema(d, table);
              if (recorded !== null) {
                const unified = unifySchemas(target.topic, recorded, schema, `table ${table} in ${database}, as earlier jobs wrote it`);
                widenTable(d, table, recorded, unified, (why) =>
                  Errors.SINK_WRITE_FAILED([target.uri, why], { context, hint: "write to a new table, or clear that column" }),
                );
                recordSchema(d, table, unified);
              }
            }
            ensureLedger(d);
            removeEarlier(d, undo, created);
            const inserted = d
              .prepare(`INSERT INTO main.${quote(table)} (${names}, ${LINEAGE}, ${TOPIC}) SELECT ${names}, ${LINEAGE}, ? FROM temp.staging`)
              .run(topic).changes;
            d.prepare(`INSERT INTO main.${LEDGER} (target, file_path, file_version_id, topic, job_id, rows) VALUES (?, ?, ?, ?, ?, ?)`).run(
              table,
              filePath,
              fileVersionId,
              topic,
              job.jobId.toString(),
              inserted,
            );
            d.exec("DROP TABLE temp.staging");
          }).immediate();
          close();
          return [{ topic: target.topic, uri: `sqlite://${database}/${table}` }];
        },
        abort() {
          // The staging table is TEMP: closing the connection discards it.
          close();
        },
      };
    },
  });
}

function tableExists(d: Database.Database, name: string): boolean {
  return d.prepare("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?").get(name) !== undefined;
}

/**
 * Inside the commit's transaction, before the input's earlier rows go (after any widening
 * of the table): those rows, their ledger entries and whether the table is new, in three
 * tables named after `undo`. Their existence says the commit happened; `resolveUndo`
 * reads them back.
 */
function keepUndo(d: Database.Database, undo: string, table: string, filePath: string, topic: string, replaced: readonly bigint[], created: boolean): void {
  const versions = `[${replaced.join(",")}]`;
  d.exec(`CREATE TABLE main.${quote(`${undo}_rows`)} AS SELECT * FROM main.${quote(table)} WHERE 0`);
  d.prepare(
    `INSERT INTO main.${quote(`${undo}_rows`)} SELECT * FROM main.${quote(table)} WHERE ${LINEAGE} IN (SELECT value FROM json_each(?)) AND ${TOPIC} IN (?, ?)`,
  ).run(versions, topic, UNKNOWN_TOPIC);
  d.exec(`CREATE TABLE main.${quote(`${undo}_ledger`)} AS SELECT * FROM main.${LEDGER} WHERE 0`);
  d.prepare(
    `INSERT INTO main.${quote(`${undo}_ledger`)} SELECT * FROM main.${LEDGER} WHERE target = ? AND file_path = ? AND file_version_id IN (SELECT value FROM json_each(?)) AND topic IN (?, ?)`,
  ).run(table, filePath, versions, topic, UNKNOWN_TOPIC);
  d.exec(`CREATE TABLE main.${quote(undo)} (created INTEGER NOT NULL)`);
  d.prepare(`INSERT INTO main.${quote(undo)} VALUES (?)`).run(created ? 1 : 0);
}

/**
 * The sink's `resolve`: rollback puts back what `keepUndo` kept (when the commit happened:
 * the undo tables exist) and removes this version's rows, dropping the table (and its
 * recorded schema) when the commit created it and nothing else is in it; finish only
 * drops the undo tables.
 */
function resolveUndo(handle: JournaledHandle, decision: "rollback" | "finish"): void {
  let d: Database.Database;
  try {
    d = new Database(handle.database, { fileMustExist: true });
  } catch (err) {
    // No database: the commit never created it, there is nothing to undo.
    if ((err as { code?: string }).code === "SQLITE_CANTOPEN") return;
    throw err;
  }
  try {
    d.pragma("busy_timeout = 10000");
    d.transaction(() => {
      if (!tableExists(d, handle.undo)) return;
      const { table, undo } = handle;
      if (decision === "rollback") {
        const fileVersionId = BigInt(handle.fileVersionId);
        // A handle without a topic was journaled by a commit that wrote no topics (nor a ledger with them).
        if (handle.topic === undefined) {
          d.prepare(`DELETE FROM main.${quote(table)} WHERE ${LINEAGE} = ?`).run(fileVersionId);
          d.prepare(`DELETE FROM main.${LEDGER} WHERE target = ? AND file_path = ? AND file_version_id = ?`).run(table, handle.filePath, fileVersionId);
        } else {
          d.prepare(`DELETE FROM main.${quote(table)} WHERE ${LINEAGE} = ? AND ${TOPIC} = ?`).run(fileVersionId, handle.topic);
          const forget = `DELETE FROM main.${LEDGER} WHERE target = ? AND file_path = ? AND file_version_id = ? AND topic = ?`;
          d.prepare(forget).run(table, handle.filePath, fileVersionId, handle.topic);
        }
        d.exec(`INSERT INTO main.${quote(table)} SELECT * FROM main.${quote(`${undo}_rows`)}`);
        d.exec(`INSERT INTO main.${LEDGER} SELECT * FROM main.${quote(`${undo}_ledger`)}`);
        const created = (d.prepare(`SELECT created FROM main.${quote(undo)}`).get() as { created: number }).created === 1;
        if (created && d.prepare(`SELECT 1 FROM main.${quote(table)} LIMIT 1`).get() === undefined) {
          d.exec(`DROP TABLE main.${quote(table)}`);
          if (tableExists(d, SCHEMAS)) d.prepare(`DELETE FROM main.${SCHEMAS} WHERE target = ?`).run(table);
        }
      }
      for (const name of [undo, `${undo}_rows`, `${undo}_ledger`]) d.exec(`DROP TABLE IF EXISTS main.${quote(name)}`);
    }).immediate();
  } finally {
    d.close();
  }
}

function isUndoHandle(value: unknown): value is JournaledHandle {
  if (typeof value !== "object" || value === null) return false;
  const fields = value as Record<string, unknown>;
  return (
    ["database", "table", "filePath", "fileVersionId", "undo"].every((key) => typeof fields[key] === "string") &&
    (fields.topic === undefined || typeof fields.topic === "string") &&
    String(fields.undo).startsWith(UNDO_PREFIX)
  );
}

function hasColumn(d: Database.Database, table: string, column: string): boolean {
  return d.prepare("SELECT 1 FROM pragma_table_info(?) WHERE name = ?").get(table, column) !== undefined;
}

/**
 * The ledger, one entry per (table, input, version, topic). A ledger made before entries
 * had a topic is rebuilt with one (its entries' topic unknown: UNKNOWN_TOPIC), since its
 * primary key would let only one topic of an input version in.
 */
function ensureLedger(d: Database.Database): void {
  const columns =
    "target TEXT NOT NULL, file_path TEXT NOT NULL, file_version_id INTEGER NOT NULL, topic TEXT NOT NULL, job_id TEXT NOT NULL, rows INTEGER NOT NULL";
  const key = "PRIMARY KEY (target, file_path, file_version_id, topic)";
  if (!tableExists(d, LEDGER)) {
    d.exec(`CREATE TABLE main.${LEDGER} (${columns}, ${key})`);
    return;
  }
  if (hasColumn(d, LEDGER, "topic")) return;
  const rebuilt = `${LEDGER}_with_topics`;
  d.exec(`CREATE TABLE main.${rebuilt} (${columns}, ${key})`);
  d.prepare(
    `INSERT INTO main.${rebuilt} (target, file_path, file_version_id, topic, job_id, rows) SELECT target, file_path, file_version_id, ?, job_id, rows FROM main.${LEDGER}`,
  ).run(UNKNOWN_TOPIC);
  d.exec(`DROP TABLE main.${LEDGER}`);
  d.exec(`ALTER TABLE main.${rebuilt} RENAME TO ${LEDGER}`);
}

function parseLocation(location: string, uri: string, outputRoot: string, jobId: bigint | undefined): { database: string; table: string; inRoot: boolean } {
  const slash = location.lastIndexOf("/");
  const table = location.slice(slash + 1);
  const file = location.slice(0, Math.max(slash, 0));
  if (slash <= 0 || file === "" || !IDENTIFIER.test(table) || table === LEDGER || table === SCHEMAS) {
    throw Errors.SINK_BAD_URI([uri, "expected sqlite://<database path>/<table>, the table a plain identifier"], { context: { jobId, sinkUri: uri } });
  }
  // Absolute database paths are part of the URI vocabulary (PROTOCOL.md §5); relative ones stay inside the output root.
  return isAbsolute(file) ? { database: file, table, inRoot: false } : { database: resolveInsideRoot(outputRoot, file, uri), table, inRoot: true };
}

// ---------------------------------------------------------------------------
// The table's Arrow schema, and widening the table to a unified one
// ---------------------------------------------------------------------------

/** The schema as SQL sees it: dictionary columns hold their decoded values. */
function logicalSchema(schema: Schema): Schema {
  if (!schema.fields.some((f) => f.type.typeId === Type.Dictionary)) return schema;
  const fields = schema.fields.map((f) =>
    f.type.typeId === Type.Dictionary ? new Field(f.name, (f.type as Dictionary).dictionary, f.nullable, f.metadata) : f,
  );
  return new Schema(fields, schema.metadata);
}

function recordedSchema(d: Database.Database, table: string): Schema | null {
  const row = d.prepare(`SELECT arrow_schema FROM main.${SCHEMAS} WHERE target = ?`).get(table) as { arrow_schema: Buffer } | undefined;
  return row === undefined ? null : tableFromIPC(row.arrow_schema).schema;
}

function recordSchema(d: Database.Database, table: string, schema: Schema): void {
  const bytes = Buffer.from(tableToIPC(new Table(schema), "stream"));
  d.prepare(`INSERT INTO main.${SCHEMAS} (target, arrow_schema) VALUES (?, ?) ON CONFLICT (target) DO UPDATE SET arrow_schema = excluded.arrow_schema`).run(
    table,
    bytes,
  );
}

/**
 * Gives `table` (whose columns are `recorded`) the columns of `unified`: new columns are
 * added; columns whose declared type changes (a placeholder that got its type, integers
 * that became float64) are retyped by rebuilding the table.
 */
function widenTable(d: Database.Database, table: string, recorded: Schema, unified: Schema, refuse: (why: string) => Error): void {
  const columns = d.prepare('SELECT name, type, "notnull", dflt_value FROM pragma_table_info(?) ORDER BY cid').all(table) as TableColumn[];
  const before = new Map(recorded.fields.map((f) => [f.name, f.type] as const));
  const retyped = new Map<string, string>();
  for (const field of unified.fields) {
    const column = columns.find((c) => c.name === field.name);
    if (column === undefined) {
      d.exec(`ALTER TABLE main.${quote(table)} ADD COLUMN ${columnDefinition(field.name, field.type)}`);
      continue;
    }
    const wanted = sqlType(field.type);
    const had = before.get(field.name);
    if (had === undefined || column.type.toUpperCase() === wanted) continue;
    if (had.typeId === Type.Null && d.prepare(`SELECT 1 FROM main.${quote(table)} WHERE ${quote(field.name)} IS NOT NULL LIMIT 1`).get() !== undefined) {
      throw refuse(`column "${field.name}" of table ${table} is recorded as all-null (Arrow type null) but holds values, so it cannot take type ${wanted}`);
    }
    retyped.set(field.name, wanted);
  }
  if (retyped.size === 0) return;
  // SQLite cannot change a column's type in place: a new table, the rows copied, renamed into place.
  const rebuilt = `_casparian_rebuild_${table}`;
  const definitions = columns.map(
    (c) => `${quote(c.name)} ${retyped.get(c.name) ?? c.type}${c.notnull ? " NOT NULL" : ""}${c.dflt_value !== null ? ` DEFAULT ${c.dflt_value}` : ""}`,
  );
  const dependents = d
    .prepare("SELECT sql FROM main.sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') AND sql IS NOT NULL")
    .all(table) as Array<{ sql: string }>;
  const names = columns.map((c) => quote(c.name)).join(", ");
  d.exec(`CREATE TABLE main.${quote(rebuilt)} (${definitions.join(", ")})`);
  d.exec(`INSERT INTO main.${quote(rebuilt)} (${names}) SELECT ${names} FROM main.${quote(table)}`);
  d.exec(`DROP TABLE main.${quote(table)}`);
  d.exec(`ALTER TABLE main.${quote(rebuilt)} RENAME TO ${quote(table)}`);
  for (const { sql } of dependents) d.exec(sql);
}

// ---------------------------------------------------------------------------
// Arrow → SQLite
// ---------------------------------------------------------------------------

function columnDefinition(name: string, type: DataType): string {
  const declared = sqlType(type);
  return declared === "" ? quote(name) : `${quote(name)} ${declared}`;
}

/** The declared type of a column; "" (no type, no affinity) for a null placeholder. */
function sqlType(type: DataType): string {
  switch (type.typeId) {
    case Type.Null:
      return "";
    case Type.Bool:
    case Type.Int:
      return "INTEGER";
    case Type.Float:
      return "REAL";
    case Type.Binary:
    case Type.LargeBinary:
    case Type.FixedSizeBinary:
      return "BLOB";
    case Type.Dictionary:
      return sqlType((type as Dictionary).dictionary);
    default:
      // Strings, timestamps, dates, times and decimals are exact text; lists and structs JSON text.
      return "TEXT";
  }
}

/** Conversions of exact values (sinks/values.ts) to what SQLite stores. */
function converter(type: DataType): (value: ExactValue) => unknown {
  switch (type.typeId) {
    case Type.Bool:
      return (v) => (v ? 1 : 0);
    case Type.Int:
      return (v) => (typeof v === "bigint" ? v : BigInt(v as number));
    case Type.Float:
      return (v) => v;
    case Type.Binary:
    case Type.LargeBinary:
    case Type.FixedSizeBinary:
      return (v) => Buffer.from(v as Uint8Array);
    case Type.Dictionary:
      return converter((type as Dictionary).dictionary);
    case Type.List:
    case Type.LargeList:
    case Type.FixedSizeList:
    case Type.Struct:
    case Type.Map:
      return (v) => JSON.stringify(v, (_key, x: unknown) => (typeof x === "bigint" ? x.toString() : x));
    default:
      return (v) => String(v);
  }
}

function quote(identifier: string): string {
  return `"${identifier.replace(/"/g, '""')}"`;
}
