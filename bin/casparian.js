#!/usr/bin/env node
// Thin launcher: all logic is in core/cli/cli.ts (compiled to dist/ by `npm run build` / `npm ci`).
import("../dist/core/cli/cli.js").then(
  (cli) =>
    cli.main(process.argv.slice(2), "casparian").then((code) => {
      process.exitCode = code;
      // Whatever still holds the event loop open (a stuck socket) must not keep us alive.
      setTimeout(() => process.exit(code), 5000).unref();
    }),
  (err) => {
    console.error(`casparian: cannot load dist/core/cli/cli.js (run \`npm run build\`): ${err.message}`);
    process.exitCode = 1;
  },
);
