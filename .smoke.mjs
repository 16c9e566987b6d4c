import { testEnvironment, testJob, pluginSource } from "/work/main/dist/test/helpers/pyenv.js";
import { runGuest } from "/work/main/dist/core/bridge/host.js";
import { createLogger } from "/work/main/dist/core/logger.js";
const t0 = Date.now();
const env = await testEnvironment();
console.log("env", env.interpreterPath, Date.now() - t0, "ms");
const { job } = testJob(await pluginSource(process.argv[2] ?? "handler_pandas.py"), { logger: createLogger({ level: "debug", pretty: false, fd: 2 }) });
try {
  const res = await runGuest({ interpreterPath: env.interpreterPath, job, timeouts: { connectMs: 10000, idleMs: 10000, jobMs: 30000 },
    onBatch: async (b) => console.log(b.topic, b.index, b.numRows, JSON.stringify(b.table.toArray().map(r => r.toJSON()), (k,v)=>typeof v==="bigint"?v.toString():v), [...b.table.schema.metadata.keys()]) });
  console.log(res);
} catch (e) { console.log("ERR", e.code, e.message); }
await env.dispose();
