/**
 * The guest shim's own Arrow IPC encoder (core/bridge/guest/casparian_guest/pure_ipc.py),
 * rows per second for 4 simple columns (int, float, str, bool), as a dict of lists and as
 * a list of dicts, dense and with 10% None; side by side with pyarrow building and writing
 * the same table from the same Python lists, in the test environment (target: the shim
 * ≥ 500 k rows/s on the dict of lists; the previous encoder did about 78 k).
 *
 *   npm run build && node dist/bench/pure-ipc.js [rows]
 */
import { createHash } from "node:crypto";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { pino } from "pino";
import { shimPath } from "../core/bridge/host.js";
import { EnvManager } from "../core/env/manager.js";
import type { Logger } from "../core/kernel/logger.js";
import { packageRoot } from "../core/kernel/paths.js";

const execFileAsync = promisify(execFile);
const ROWS = Number(process.argv[2] ?? 200_000);

const SCRIPT = `
import json, sys, time
sys.path.insert(0, sys.argv[1])
from casparian_guest.pure_ipc import TopicTyping, columns_of, encode_chunks
n = int(sys.argv[2])
try:
    import pyarrow as pa, pyarrow.ipc
except ImportError:
    pa = None

def columns(nulls):
    data = {"id": list(range(n)), "price": [i * 0.5 for i in range(n)], "name": ["item-%d" % (i % 1000) for i in range(n)], "ok": [i % 3 == 0 for i in range(n)]}
    if nulls:
        for values in data.values():
            values[::10] = [None] * len(values[::10])
    return data

def shim(data):
    return sum(len(b) for b, _ in encode_chunks(columns_of(data), TopicTyping("t"), {"casparian.topic": "t"}, 64 << 20))

def pyarrow_ipc(data):
    table = pa.table(data) if isinstance(data, dict) else pa.Table.from_pylist(data)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().size

def median_rate(fn, data, repeats=5):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - started)
    times.sort()
    return n / times[len(times) // 2]

out = {}
for nulls in (False, True):
    d = columns(nulls)
    rows = [dict(zip(d, values)) for values in zip(*d.values())]
    for shape, data in (("dict of lists", d), ("list of dicts", rows)):
        key = "%s, %s" % (shape, "10% None" if nulls else "dense")
        out[key] = {"shim": median_rate(shim, data)}
        if pa is not None:
            out[key]["pyarrow"] = median_rate(pyarrow_ipc, data)
print(json.dumps(out))
`;

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "casparian-bench-pure-"));
  try {
    const manager = new EnvManager({ home: join(dir, "home"), logger: pino({ level: "warn" }) as unknown as Logger });
    const lock = await readFile(join(packageRoot(), "test", "fixtures", "pyenv", "uv.lock"), "utf8");
    const ready = await manager.prepare({ env_hash: createHash("sha256").update(lock).digest("hex"), lockfile_content: lock, python_version: null });
    const { stdout } = await execFileAsync(ready.interpreter_path, ["-c", SCRIPT, shimPath(), String(ROWS)], { maxBuffer: 1 << 20 });
    const results = JSON.parse(stdout) as Record<string, { shim: number; pyarrow?: number }>;
    console.log(`pure-ipc: ${ROWS.toLocaleString("en")} rows, 4 columns (int, float, str, bool), median of 5`);
    for (const [label, { shim, pyarrow }] of Object.entries(results)) {
      const ratio =
        pyarrow === undefined ? "pyarrow unavailable" : `pyarrow ${(pyarrow / 1000).toFixed(0)} k rows/s, shim/pyarrow ${(shim / pyarrow).toFixed(2)}`;
      console.log(`  ${label.padEnd(26)} shim ${(shim / 1000).toFixed(0).padStart(5)} k rows/s   ${ratio}`);
    }
    const headline = results["dict of lists, dense"]!.shim;
    console.log(`  target ≥ 500 k rows/s (dict of lists, dense): ${headline >= 500_000 ? "met" : "NOT met"} (${(headline / 1000).toFixed(0)} k)`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
