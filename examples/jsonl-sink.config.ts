/**
 * Registers the example JSON Lines sink. Use it with `--config examples/jsonl-sink.config.ts`,
 * then send sinks like { topic: "events", uri: "jsonl://events/day.jsonl", mode: "append" }.
 */
import { defineConfig } from "casparian-flow";

export default defineConfig({
  sinks: [{ use: "./jsonl-sink.ts", options: { lineage: true } }],
});
