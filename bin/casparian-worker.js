#!/usr/bin/env node
// `casparian-worker ...` is `casparian worker ...`; all logic is in core/cli/cli.ts.
import("../dist/core/cli/cli.js").then(
  (cli) =>
    cli.main(["worker", ...process.argv.slice(2)], "casparian-worker").then((code) => {
      process.exitCode = code;
      setTimeout(() => process.exit(code), 5000).unref();
    }),
  (err) => {
    console.error(`casparian-worker: cannot load dist/core/cli/cli.js (run \`npm run build\`): ${err.message}`);
    process.exitCode = 1;
  },
);
