import { runGuest } from "./dist/core/bridge/host.js";
import { EnvManager } from "./dist/core/env/manager.js";
import { pino } from "pino";
import { readFileSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
const src = readFileSync("bench/bridge.ts","utf8").split("const GENERATOR_PLUGIN = `")[1].split("`;")[0];
const lock = readFileSync("test/fixtures/pyenv/uv.lock","utf8");
const m = new EnvManager({ home: "/tmp/benchhome", logger: pino({level:"warn"}) });
const r = await m.prepare({ env_hash: createHash("sha256").update(lock).digest("hex"), lockfile_content: lock, python_version: null });
writeFileSync("/tmp/rows.txt", process.argv[2] ?? "3000000");
const logger = pino({level:"warn"});
let i=0; let peak=0;
const t0=Date.now();
const res = await runGuest({ interpreterPath: r.interpreter_path, job: { jobId: 1n, workerId:"w", command: {plugin_name:"g", file_path:"/tmp/rows.txt", sinks:[], file_version_id:1n, env_hash:"", source_code: src, artifact_hash:null}, logger, outputRoot:"/tmp", signal: new AbortController().signal },
  timeouts: {connectMs:30000, idleMs:60000, jobMs:600000}, onBatch: async (b) => { if (globalThis.gc) gc(); const m = process.memoryUsage(); peak=Math.max(peak,m.rss); if (i++ % 10 === 0) console.log(i, (m.rss/1e6)|0, (m.heapUsed/1e6)|0, (m.external/1e6)|0, (m.arrayBuffers/1e6)|0); } });
console.log(res.rows, Date.now()-t0, "peak", (peak/1e6)|0, "maxRSS", process.resourceUsage().maxRSS/1000|0);
