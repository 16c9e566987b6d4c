/**
 * The guest shim's own Arrow IPC encoder (core/bridge/guest/casparian_guest/pure_ipc.py),
 * rows per second for 4 simple columns (int, float, str, bool), as a dict of lists and as
 * a list of dicts, dense and with 10% None; side by side with pyarrow building and writing
 * the same table from the same Python lists, in the test environment (target: the shim
 * ≥ 500 k rows/s on the dict of lists; the previous encoder did about 78 k). Then one small
 * chunk, what a job of the dependency-free example publishes: microseconds warm in one process,
 * and first in a forked child with its page faults (what a warm guest's job pays).
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

# Small chunks: what one job of the dependency-free example costs the shim (5 rows, 8 declared
# columns), warm in this process, and first in a forked child (a warm guest's job), where most of
# the cost is copy-on-write page faults on the parent's objects.
import datetime, os, resource
from casparian_guest import arrow_out
arrow_out.declare_from_manifest({"topics": {"small": {"columns": {"date": "date32", "store": "string", "product": "string", "quantity": "int64", "unit_price": "float64", "total": "float64", "source_file": "string", "source_line": "int64"}}}})
small = {"date": [datetime.date(2024, 1, d) for d in range(1, 6)], "store": ["north", "south", None, "east", "west"], "product": ["apple", "pear", "fig", "kiwi", "plum"],
         "quantity": [1, 2, None, 4, 5], "unit_price": [0.5, 1.25, 2.0, None, 3.5], "total": [0.5, 2.5, None, None, 17.5], "source_file": ["sales.csv"] * 5, "source_line": [2, 3, 4, 5, 6]}

def encode_small():
    return sum(len(b) for b, _ in arrow_out.arrow_streams(small, "small"))

def median_us(fn, repeats=2000):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1e6

def first_in_child():
    """(us, minor faults) of the first small chunk in a forked child, medians of 30 forks."""
    results = []
    for _ in range(30):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            started = time.perf_counter()
            encode_small()
            us = (time.perf_counter() - started) * 1e6
            os.write(w, ("%f %d" % (us, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)).encode())
            os._exit(0)
        os.close(w)
        text = os.read(r, 100)
        os.close(r)
        os.waitpid(pid, 0)
        us, faults = text.split()
        results.append((float(us), int(faults)))
    return sorted(u for u, _ in results)[15], sorted(f for _, f in results)[15]

encode_small()
out["small"] = {"shim_us": median_us(encode_small)}
if pa is not None:
    table = pa.table(small)
    def pyarrow_small():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    out["small"]["pyarrow_us"] = median_us(pyarrow_small)
out["small"]["child_us"], out["small"]["child_faults"] = first_in_child()
print(json.dumps(out))
`;

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "casparian-bench-pure-"));
  try {
    const manager = new EnvManager({ home: join(dir, "home"), logger: pino({ level: "warn" }) as unknown as Logger });
    const lock = await readFile(join(packageRoot(), "test", "fixtures", "pyenv", "uv.lock"), "utf8");
    const ready = await manager.prepare({ env_hash: createHash("sha256").update(lock).digest("hex"), lockfile_content: lock, python_version: null });
    const { stdout } = await execFileAsync(ready.interpreter_path, ["-c", SCRIPT, shimPath(), String(ROWS)], { maxBuffer: 1 << 20 });
    const { small, ...results } = JSON.parse(stdout) as Record<string, { shim: number; pyarrow?: number }> & {
      small: { shim_us: number; pyarrow_us?: number; child_us: number; child_faults: number };
    };
    console.log(`pure-ipc: ${ROWS.toLocaleString("en")} rows, 4 columns (int, float, str, bool), median of 5`);
    for (const [label, { shim, pyarrow }] of Object.entries(results)) {
      const ratio =
        pyarrow === undefined ? "pyarrow unavailable" : `pyarrow ${(pyarrow / 1000).toFixed(0)} k rows/s, shim/pyarrow ${(shim / pyarrow).toFixed(2)}`;
      console.log(`  ${label.padEnd(26)} shim ${(shim / 1000).toFixed(0).padStart(5)} k rows/s   ${ratio}`);
    }
    const headline = results["dict of lists, dense"]!.shim;
    console.log(`  target ≥ 500 k rows/s (dict of lists, dense): ${headline >= 500_000 ? "met" : "NOT met"} (${(headline / 1000).toFixed(0)} k)`);
    const versus =
      small.pyarrow_us === undefined
        ? "pyarrow unavailable"
        : `pyarrow's writer alone ${small.pyarrow_us.toFixed(0)} us (table built already), shim/pyarrow ${(small.shim_us / small.pyarrow_us).toFixed(2)}`;
    console.log("pure-ipc: one small chunk (5 rows, 8 declared columns: the dependency-free example's), medians");
    console.log(`  warm in one process   shim ${small.shim_us.toFixed(0).padStart(5)} us per chunk   ${versus}`);
    console.log(
      `  first in a fork child shim ${small.child_us.toFixed(0).padStart(5)} us, ${small.child_faults} page faults (copy-on-write of the parent's pages: a warm guest's job), ${(small.child_us / small.shim_us).toFixed(1)}x warm`,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
