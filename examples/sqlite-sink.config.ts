/**
 * Registers the example SQLite sink. Use it with `--config examples/sqlite-sink.config.ts`,
 * then send sinks like { topic: "sales", uri: "sqlite://warehouse.db/sales", mode: "replace" }.
 */
import { defineConfig } from "casparian-flow";

export default defineConfig({
  sinks: ["./sqlite-sink.ts"],
});
