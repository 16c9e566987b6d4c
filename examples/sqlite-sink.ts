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
 * act on the rows of the job's input (its file_path), never on other inputs' rows, so
 * one table can collect every input of a run (`inputScopedModes`):
 *   replace → delete the input's earlier rows (every version), insert the new ones;
 *   append  → keep the rows of the input's earlier versions, replace those of this
 *             version (a retried or rerun job never adds a second copy);
 *   error   → fail if the table already holds rows of this input.
 * Which rows belong to which input is kept in a ledger table, `_casparian_inputs`
 * (table, file_path, file_version_id, job_id, rows), written in the same transaction;
 * every row carries `_file_version_id` (int64), by which the rows are deleted.
 * A topic that never produced a batch publishes nothing. Column types follow the Arrow
 * types: integers → INTEGER (int64 exact), floats → REAL, strings → TEXT, bools → 0/1,
 * timestamps → ISO 8601 TEXT with every digit of their unit, dates → 'YYYY-MM-DD',
 * decimals → exact TEXT ('12.30'), binary → BLOB, lists and structs → JSON TEXT. Values
 * are read with `exactReader` (apache-arrow's `get` would round timestamps to ms).
 */
import { mkdir } from "node:fs/promises";
import { dirname, isAbsolute } from "node:path";
import Database from "better-sqlite3";
import type { DataType, Table } from "apache-arrow";
import { Errors, defineSink, exactReader, resolveInsideRoot, type Batch, type SinkPlugin } from "casparian-flow";

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
const LEDGER = "_casparian_inputs";
const LINEAGE = "_file_version_id";

interface Column {
  name: string;
  sqlType: string;
  convert(value: unknown): unknown;
}

export default function sqliteSink(): SinkPlugin {
  return defineSink({
    name: "sqlite",
    schemes: ["sqlite"],
    inputScopedModes: true,
    checkTarget(target, { outputRoot }) {
      parseLocation(target.parsed.location, target.uri, outputRoot, undefined);
    },
    create(target, { job, logger }) {
      const { database, table } = parseLocation(target.parsed.location, target.uri, job.outputRoot, job.jobId);
      const context = { jobId: job.jobId, sinkUri: target.uri };
      const filePath = job.command.filePath;
      const fileVersionId = BigInt(job.command.fileVersionId);
      const inputHasRows = (d: Database.Database) =>
        ledgerExists(d) && d.prepare(`SELECT 1 FROM main.${LEDGER} WHERE target = ? AND file_path = ?`).get(table, filePath) !== undefined;
      const refuse = () =>
        Errors.SINK_TARGET_EXISTS([`${database} table ${table} (rows of ${filePath})`], {
          context,
          hint: "use mode replace or append, or delete that input's rows",
        });
      let db: Database.Database | null = null;
      let columns: Column[] | null = null;
      let insert: Database.Statement | null = null;

      const close = () => {
        db?.close();
        db = null;
      };

      return {
        async open() {
          await mkdir(dirname(database), { recursive: true });
          db = new Database(database);
          db.pragma("busy_timeout = 10000");
          if (target.mode === "error" && inputHasRows(db)) throw refuse();
        },
        write(batch: Batch) {
          const d = db!;
          if (columns === null) {
            columns = columnsOf(batch.table);
            if (columns.some((c) => c.name === LINEAGE))
              throw Errors.SINK_SCHEMA_MISMATCH([target.topic, `column "${LINEAGE}" is reserved for lineage`], { context });
            columns.push({ name: LINEAGE, sqlType: "INTEGER NOT NULL", convert: (v) => v });
            d.exec(`CREATE TEMP TABLE staging (${columns.map((c) => `${quote(c.name)} ${c.sqlType}`).join(", ")})`);
            insert = d.prepare(`INSERT INTO temp.staging VALUES (${columns.map(() => "?").join(", ")})`);
          }
          const cols = columns;
          const data = cols.length - 1;
          const readers = cols.slice(0, data).map((_, i) => exactReader(batch.table.getChildAt(i)!));
          d.transaction(() => {
            const values = new Array<unknown>(cols.length);
            values[data] = fileVersionId;
            for (let row = 0; row < batch.numRows; row++) {
              for (let c = 0; c < data; c++) {
                const value = readers[c]!(row);
                values[c] = value === null ? null : cols[c]!.convert(value);
              }
              insert!.run(values);
            }
          })();
        },
        prepare() {
          // Rows are already in the staging table; nothing is buffered in memory.
        },
        commit() {
          const d = db!;
          if (columns === null) {
            logger.warn("no batch for this topic: nothing published");
            close();
            return [];
          }
          const definition = columns.map((c) => `${quote(c.name)} ${c.sqlType}`).join(", ");
          const names = columns.map((c) => quote(c.name)).join(", ");
          d.transaction(() => {
            if (target.mode === "error" && inputHasRows(d)) throw refuse();
            d.exec(`CREATE TABLE IF NOT EXISTS main.${quote(table)} (${definition})`);
            const existing = d.prepare(`SELECT name FROM pragma_table_info(?)`).all(table) as Array<{ name: string }>;
            if (!existing.some((c) => c.name === LINEAGE)) {
              throw Errors.SINK_WRITE_FAILED(
                [target.uri, `table ${table} in ${database} has no ${LINEAGE} column, so this input's rows cannot be told from others'`],
                { context, hint: "write to a new table, or add the column to that one" },
              );
            }
            d.exec(
              `CREATE TABLE IF NOT EXISTS main.${LEDGER} (target TEXT NOT NULL, file_path TEXT NOT NULL, file_version_id INTEGER NOT NULL, job_id TEXT NOT NULL, rows INTEGER NOT NULL, PRIMARY KEY (target, file_path, file_version_id))`,
            );
            const replaced =
              target.mode === "append"
                ? [fileVersionId]
                : (
                    d
                      .prepare(`SELECT file_version_id AS v FROM main.${LEDGER} WHERE target = ? AND file_path = ?`)
                      .safeIntegers(true)
                      .all(table, filePath) as Array<{ v: bigint }>
                  ).map((r) => r.v);
            if (!replaced.includes(fileVersionId)) replaced.push(fileVersionId);
            const remove = d.prepare(`DELETE FROM main.${quote(table)} WHERE ${LINEAGE} = ?`);
            const forget = d.prepare(`DELETE FROM main.${LEDGER} WHERE target = ? AND file_path = ? AND file_version_id = ?`);
            for (const version of replaced) {
              remove.run(version);
              forget.run(table, filePath, version);
            }
            const inserted = d.prepare(`INSERT INTO main.${quote(table)} (${names}) SELECT ${names} FROM temp.staging`).run().changes;
            d.prepare(`INSERT INTO main.${LEDGER} (target, file_path, file_version_id, job_id, rows) VALUES (?, ?, ?, ?, ?)`).run(
              table,
              filePath,
              fileVersionId,
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

function ledgerExists(d: Database.Database): boolean {
  return d.prepare("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?").get(LEDGER) !== undefined;
}

function parseLocation(location: string, uri: string, outputRoot: string, jobId: bigint | undefined): { database: string; table: string } {
  const slash = location.lastIndexOf("/");
  const table = location.slice(slash + 1);
  const file = location.slice(0, Math.max(slash, 0));
  if (slash <= 0 || file === "" || !IDENTIFIER.test(table) || table === LEDGER) {
    throw Errors.SINK_BAD_URI([uri, "expected sqlite://<database path>/<table>, the table a plain identifier"], { context: { jobId, sinkUri: uri } });
  }
  // Absolute database paths are part of the URI vocabulary (PROTOCOL.md §5); relative ones stay inside the output root.
  return { database: isAbsolute(file) ? file : resolveInsideRoot(outputRoot, file, uri), table };
}

function columnsOf(table: Table): Column[] {
  return table.schema.fields.map((field) => ({ name: field.name, ...mapping(field.type) }));
}

/** SQLite column types, and conversions of exact values (sinks/values.ts) to what SQLite stores. */
function mapping(type: DataType): Omit<Column, "name"> {
  const name = String(type);
  if (name === "Bool") return { sqlType: "INTEGER", convert: (v) => (v ? 1 : 0) };
  if (/^U?Int/.test(name)) return { sqlType: "INTEGER", convert: (v) => (typeof v === "bigint" ? v : BigInt(v as number)) };
  if (name.startsWith("Float")) return { sqlType: "REAL", convert: (v) => v };
  if (name.includes("Binary")) return { sqlType: "BLOB", convert: (v) => Buffer.from(v as Uint8Array) };
  if (name.startsWith("Struct") || name.startsWith("List"))
    return { sqlType: "TEXT", convert: (v) => JSON.stringify(v, (_key, x: unknown) => (typeof x === "bigint" ? x.toString() : x)) };
  // Strings, dictionaries, timestamps, dates, times and decimals are exact text already.
  return { sqlType: "TEXT", convert: (v) => String(v) };
}

function quote(identifier: string): string {
  return `"${identifier.replace(/"/g, '""')}"`;
}
