/**
 * The repository's own configuration: a working example that the tests load.
 *
 * The bundled Parquet sink is always registered; this file adds the two example
 * sinks (JSON Lines and SQLite) and one inline tap, so any job may use
 * `parquet://`, `jsonl://` and `sqlite://` URIs.
 */
import { defineConfig } from "casparian-flow";

export default defineConfig({
  output: "./output",
  parquet: { compression: "snappy" },
  sinks: [{ use: "./examples/jsonl-sink.ts", options: { lineage: true } }, "./examples/sqlite-sink.ts"],
  hooks: {
    // Inline taps get the same arguments as plugin taps; this one only logs.
    afterConclude: (receipt, job) => {
      job.logger.debug({ status: receipt.status, artifacts: receipt.artifacts.length }, "receipt sent");
    },
  },
});
