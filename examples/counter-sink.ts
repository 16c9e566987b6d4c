// my-sink.ts (the README's example sink)
import { defineSink, v } from "casparian-flow";

export default () =>
  defineSink({
    name: "counter",
    schemes: ["count"],
    // What it takes: checked when the sink is registered, typed in create().
    options: v.object({ verbose: v.optional(v.boolean(), false) }),
    // count://x?verbose=true sets it for one target.
    uriOptions: ["verbose"],
    create(target, { logger, options }) {
      let rows = 0;
      return {
        // batch.table: an apache-arrow Table; batch.ipc: the raw IPC bytes
        write(batch) {
          rows += batch.numRows;
        },
        // Flush to staging: commit must not fail for lack of data or space.
        prepare() {},
        commit() {
          if (options.verbose) logger.info({ rows }, "counted");
          return [{ topic: target.topic, uri: `${target.uri}#rows=${rows}` }];
        },
        // Discard staging; idempotent.
        abort() {},
      };
    },
  });
