/**
 * Registers the example JSON Lines sink. Use it with `--config examples/jsonl-sink.config.ts`,
 * then send sinks like { topic: "events", uri: "jsonl://events/day.jsonl", mode: "append" }.
 */
import { resolve } from "node:path";
import { defineConfig } from "casparian-flow";

export default defineConfig({
  // A config's relative paths are relative to its directory: without this the output would be examples/output.
  // This is the current directory's ./output, as without a config (--output still wins).
  output: resolve("output"),
  sinks: [{ use: "./jsonl-sink.ts", options: { lineage: true } }],
});
