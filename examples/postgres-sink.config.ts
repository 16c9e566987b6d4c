/**
 * Registers the example PostgreSQL sink. Use it with `--config examples/postgres-sink.config.ts`,
 * then send sinks like { topic: "sales", uri: "postgres://etl@db.internal:5432/warehouse/public.sales", mode: "append" }.
 * Connection settings missing from a sink URI come from these options, then from the
 * PG* environment variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE).
 */
import { resolve } from "node:path";
import { defineConfig } from "casparian-flow";

export default defineConfig({
  // A config's relative paths are relative to its directory: without this the output would be examples/output.
  // This is the current directory's ./output, as without a config (--output still wins).
  output: resolve("output"),
  sinks: [{ use: "./postgres-sink.ts", options: { lineage: true } }],
});
