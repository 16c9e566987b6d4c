/**
 * Registers the example SQLite sink. Use it with `--config examples/sqlite-sink.config.ts`,
 * then send sinks like { topic: "sales", uri: "sqlite://warehouse.db/sales", mode: "replace" }.
 */
import { resolve } from "node:path";
import { defineConfig } from "casparian-flow";

export default defineConfig({
  // A config's relative paths are relative to its directory: without this the output would be examples/output.
  // This is the current directory's ./output, as without a config (--output still wins).
  output: resolve("output"),
  sinks: ["./sqlite-sink.ts"],
});
