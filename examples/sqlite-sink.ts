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
 * worker leaves nothing behind), and are promoted in one transaction on commit:
 *   append  → create the table if needed, insert the rows;
 *   replace → drop the table, create it anew, insert the rows (readers see old or new);
 *   error   → fail if the table exists (checked at open and again inside the commit).
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

interface Column {
  name: string;
  sqlType: string;
  convert(value: unknown): unknown;
}

export default function sqliteSink(): SinkPlugin {
  return defineSink({
    name: "sqlite",
    schemes: ["sqlite"],
    create(target, { job, logger }) {
      const { database, table } = parseLocation(target.parsed.location, target.uri, job.outputRoot, job.jobId);
      const context = { jobId: job.jobId, sinkUri: target.uri };
      let db: Database.Database | null = null;
      let columns: Column[] | null = null;
      let insert: Database.Statement | null = null;

      const tableExists = (d: Database.Database) => d.prepare("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?").get(table) !== undefined;
      const close = () => {
        db?.close();
        db = null;
      };

      return {
        async open() {
          await mkdir(dirname(database), { recursive: true });
          db = new Database(database);
          db.pragma("busy_timeout = 10000");
          if (target.mode === "error" && tableExists(db)) throw Errors.SINK_TARGET_EXISTS([`${database} table ${table}`], { context });
        },
        write(batch: Batch) {
          const d = db!;
          if (columns === null) {
            columns = columnsOf(batch.table);
            d.exec(`CREATE TEMP TABLE staging (${columns.map((c) => `${quote(c.name)} ${c.sqlType}`).join(", ")})`);
            insert = d.prepare(`INSERT INTO temp.staging VALUES (${columns.map(() => "?").join(", ")})`);
          }
          const cols = columns;
          const readers = cols.map((_, i) => exactReader(batch.table.getChildAt(i)!));
          d.transaction(() => {
            const values = new Array<unknown>(cols.length);
            for (let row = 0; row < batch.numRows; row++) {
              for (let c = 0; c < cols.length; c++) {
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
            if (target.mode === "error" && tableExists(d)) throw Errors.SINK_TARGET_EXISTS([`${database} table ${table}`], { context });
            if (target.mode === "replace") d.exec(`DROP TABLE IF EXISTS main.${quote(table)}`);
            d.exec(`CREATE TABLE IF NOT EXISTS main.${quote(table)} (${definition})`);
            d.exec(`INSERT INTO main.${quote(table)} (${names}) SELECT ${names} FROM temp.staging`);
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

function parseLocation(location: string, uri: string, outputRoot: string, jobId: bigint): { database: string; table: string } {
  const slash = location.lastIndexOf("/");
  const table = location.slice(slash + 1);
  const file = location.slice(0, Math.max(slash, 0));
  if (slash <= 0 || file === "" || !IDENTIFIER.test(table)) {
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
  if (name.startsWith("Struct") || name.startsWith("List")) return { sqlType: "TEXT", convert: (v) => JSON.stringify(v, (_key, x: unknown) => (typeof x === "bigint" ? x.toString() : x)) };
  // Strings, dictionaries, timestamps, dates, times and decimals are exact text already.
  return { sqlType: "TEXT", convert: (v) => String(v) };
}

function quote(identifier: string): string {
  return `"${identifier.replace(/"/g, '""')}"`;
}
