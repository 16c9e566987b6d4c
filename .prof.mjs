import { runGuest } from "./dist/core/bridge/host.js";
import { pino } from "pino";
import { readFileSync, writeFileSync, readdirSync } from "node:fs";
import { performance } from "node:perf_hooks";
const src = readFileSync("bench/bridge.ts","utf8").split("const GENERATOR_PLUGIN = `")[1].split("`;")[0];
const py = "/tmp/benchhome/venvs/" + readdirSync("/tmp/benchhome/venvs").find(n => /^[0-9a-f]{64}$/.test(n)) + "/bin/python";
writeFileSync("/tmp/rows.txt", process.argv[2] ?? "3000000");
const logger = pino({level:"warn"});
for (let rep=0; rep<3; rep++) {
let first=0, t0=performance.now(), busy=0;
const res = await runGuest({ interpreterPath: py, job: { jobId: 1n, workerId:"w", command: {plugin_name:"g", file_path:"/tmp/rows.txt", sinks:[], file_version_id:1n, env_hash:"", source_code: src, artifact_hash:null}, logger, outputRoot:"/tmp", signal: new AbortController().signal },
  timeouts: {connectMs:30000, idleMs:60000, jobMs:600000}, onBatch: async (b) => { if (!first) first = performance.now()-t0; } });
console.log("total", (performance.now()-t0)|0, "first batch", first|0, "guest_ms", res.guestMetrics.guest_ms);
}
