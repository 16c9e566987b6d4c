/**
 * Bridge overhead: one pyarrow generator plugin (int64, float64 and two string columns,
 * 64 Ki-row batches) run three ways, in one run:
 *
 *   plugin alone     python runs the plugin and writes each chunk's IPC stream to /dev/null
 *   worker → null    runGuest (real venv, socket, shim, frame decoding) into a consumer that drops batches
 *   worker → parquet runGuest into the bundled Parquet sink (through the real Pipeline, as a job does)
 *
 * and prints `overhead = worker / plugin alone` (target ≤ 1.3) and the worker's peak RSS
 * at two row counts (target ≤ 200 MB, independent of the row count). Each worker run is
 * a fresh child process, so its peak RSS is its own.
 *
 *   npm run bench      or: npx tsc -p . && node dist/bench/bridge.js [rows] [rows2]
 */
import { execFile, fork } from "node:child_process";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { pino } from "pino";
import { runGuest } from "../core/bridge/host.js";
import { EnvManager } from "../core/env/manager.js";
import type { Logger } from "../core/kernel/logger.js";
import type { DispatchCommand } from "../core/protocol/messages.js";
import { packageRoot } from "../core/kernel/paths.js";
import { Pipeline } from "../core/pipeline/pipeline.js";

const execFileAsync = promisify(execFile);
const REPS = 3;

const GENERATOR_PLUGIN = `
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CATEGORIES = pa.array(["north", "south", "east", "west", "central", "online", "retail", "wholesale", "partner", "export", "import", "other"])
BATCH = 65536


class Handler:
    def execute(self, file_path):
        with open(file_path) as f:
            total = int(f.read())
        for start in range(0, total, BATCH):
            n = min(BATCH, total - start)
            ids = np.arange(start, start + n, dtype=np.int64)
            values = (ids * 2654435761 % 1000003) / 7.3
            categories = pc.take(CATEGORIES, pa.array(ids % 12))
            keys = pc.binary_join_element_wise("customer-", pc.cast(pa.array(ids * 2654435761 % 4294967291), pa.string()), "")
            yield pa.table({"id": ids, "value": values, "category": categories, "key": keys})
`;

/** The same plugin without the worker: each chunk serialised as the shim does, framed, written to /dev/null. */
const ALONE_HARNESS = `
import struct, sys
import pyarrow as pa
source, path = sys.argv[1], sys.argv[2]
namespace = {"__name__": "__plugin__"}
exec(compile(open(source).read(), "plugin", "exec"), namespace)
rows = 0
with open("/dev/null", "wb") as out:
    for table in namespace["Handler"]().execute(path):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        buf = sink.getvalue()
        out.write(struct.pack(">I", buf.size))
        out.write(buf)
        rows += table.num_rows
out_rows = rows
print(out_rows)
`;

type Mode = "null" | "parquet";

interface ChildRequest {
  mode: Mode;
  interpreterPath: string;
  inputPath: string;
  outputRoot: string;
  reps: number;
}

interface ChildReport {
  seconds: number[];
  rows: number;
  batches: number;
  ipcBytes: number;
  peakRssBytes: number;
  parquetBytes: number | null;
  sink: string;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

function mb(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(0)} MB`;
}

/** Adds the bundled Parquet sink through its public loader; false when it is not there. */
async function withParquet(pipeline: Pipeline, outputRoot: string, logger: Logger): Promise<boolean> {
  try {
    const { loadSinkPlugins } = (await import("../core/pipeline/sink-loader.js")) as typeof import("../core/pipeline/sink-loader.js");
    const { SinkManager } = (await import("../core/pipeline/sink-manager.js")) as typeof import("../core/pipeline/sink-manager.js");
    pipeline.use(new SinkManager({ plugins: await loadSinkPlugins([], outputRoot, {}), logger, outputRoot }));
    return true;
  } catch (err) {
    console.error(`(bundled Parquet sink unavailable: ${(err as Error).message}; using a null consumer)`);
    return false;
  }
}

/** Runs inside a forked child: `reps` worker runs of the generator, reporting times and peak RSS. */
async function childMain(request: ChildRequest): Promise<ChildReport> {
  const logger = pino({ level: "warn" }) as unknown as Logger;
  let peak = process.memoryUsage.rss();
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 20);
  // The real pipeline and bridge; in null mode no sink taps onBatch, so batches are dropped as they arrive.
  let last = { rows: 0, batches: 0, ipcBytes: 0 };
  const pipeline = new Pipeline({
    logger,
    outputRoot: request.outputRoot,
    workerId: "bench",
    bridge: { connectTimeout: 30, idleTimeout: 120, jobTimeout: 600 },
    envs: { acquire: async (envHash) => ({ envHash, interpreterPath: request.interpreterPath, release() {} }) },
    runGuest: async (options) => (last = await runGuest(options)),
  });
  const parquet = request.mode === "parquet" && (await withParquet(pipeline, request.outputRoot, logger));
  await pipeline.start();
  const seconds: number[] = [];
  try {
    for (let rep = 0; rep < request.reps; rep++) {
      const command: DispatchCommand = {
        plugin_name: "bench_generator",
        file_path: request.inputPath,
        sinks: [{ topic: "output", uri: "parquet://bench/generated.parquet", mode: "replace", schema_def: null }],
        file_version_id: 1n,
        env_hash: "0".repeat(64),
        source_code: GENERATOR_PLUGIN,
        artifact_hash: null,
      };
      const t0 = performance.now();
      const receipt = await pipeline.runJob({ jobId: BigInt(rep + 1), command, logger, signal: new AbortController().signal });
      if (receipt.status !== "SUCCESS") throw new Error(`bench job failed: ${receipt.error_message}`);
      seconds.push((performance.now() - t0) / 1000);
    }
  } finally {
    await pipeline.shutdown();
    clearInterval(sampler);
  }
  const maxRss = process.resourceUsage().maxRSS * 1024;
  let parquetBytes: number | null = null;
  if (parquet) parquetBytes = (await stat(join(request.outputRoot, "bench", "generated.parquet"))).size;
  return {
    seconds,
    rows: last.rows,
    batches: last.batches,
    ipcBytes: last.ipcBytes,
    peakRssBytes: Math.max(peak, maxRss),
    parquetBytes,
    sink: request.mode === "parquet" ? (parquet ? "bundled Parquet sink" : "null consumer (Parquet sink unavailable)") : "null consumer",
  };
}

function runChild(request: ChildRequest): Promise<ChildReport> {
  return new Promise((resolve, reject) => {
    const child = fork(fileURLToPath(import.meta.url), ["--child"], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    child.once("message", (message) => resolve(message as ChildReport));
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? undefined : reject(new Error(`bench child exited with ${code}`))));
    child.send(request);
  });
}

async function timeAlone(python: string, pluginFile: string, harnessFile: string, inputPath: string, reps: number): Promise<number[]> {
  const times: number[] = [];
  for (let rep = 0; rep < reps; rep++) {
    const t0 = performance.now();
    await execFileAsync(python, [harnessFile, pluginFile, inputPath], { maxBuffer: 1 << 20 });
    times.push((performance.now() - t0) / 1000);
  }
  return times;
}

export async function runBridgeBench(rowCounts: readonly number[] = [3_000_000, 6_000_000]): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "casparian-bench-bridge-"));
  try {
    const manager = new EnvManager({ home: join(dir, "home"), logger: pino({ level: "warn" }) as unknown as Logger });
    const lock = await readFile(join(packageRoot(), "test", "fixtures", "pyenv", "uv.lock"), "utf8");
    const { createHash } = await import("node:crypto");
    const ready = await manager.prepare({ env_hash: createHash("sha256").update(lock).digest("hex"), lockfile_content: lock, python_version: null });
    const hitStarted = performance.now();
    const hit = await manager.prepare({ env_hash: ready.env_hash, lockfile_content: lock, python_version: null });
    console.log(`env: built in this run: ${!ready.cached}; PREPARE_ENV cache hit answered in ${(performance.now() - hitStarted).toFixed(1)} ms (cached=${hit.cached})`);
    const pluginFile = join(dir, "generator.py");
    const harnessFile = join(dir, "alone.py");
    await writeFile(pluginFile, GENERATOR_PLUGIN);
    await writeFile(harnessFile, ALONE_HARNESS);

    console.log("bridge bench: pyarrow generator (int64, float64, 2 × utf8; 65,536-row chunks)");
    for (const [i, rows] of rowCounts.entries()) {
      const inputPath = join(dir, `rows-${rows}.txt`);
      await writeFile(inputPath, String(rows));
      const reps = i === 0 ? REPS : 1;
      // warm-up: page cache, pyc files, uv-linked wheels
      await timeAlone(ready.interpreter_path, pluginFile, harnessFile, inputPath, 1);
      const alone = median(await timeAlone(ready.interpreter_path, pluginFile, harnessFile, inputPath, reps));
      const base = { interpreterPath: ready.interpreter_path, inputPath, outputRoot: join(dir, "out"), reps };
      const viaNull = await runChild({ ...base, mode: "null" });
      const viaParquet = await runChild({ ...base, mode: "parquet" });
      const tNull = median(viaNull.seconds);
      const tParquet = median(viaParquet.seconds);
      console.log(`\nrows = ${rows.toLocaleString("en-US")} (${viaNull.batches} chunks, ${mb(viaNull.ipcBytes)} of IPC; median of ${reps})`);
      console.log(`  plugin alone (IPC → /dev/null)   ${alone.toFixed(2)} s`);
      console.log(`  worker → null consumer          ${tNull.toFixed(2)} s   overhead = worker / plugin alone = ${(tNull / alone).toFixed(2)}   peak RSS ${mb(viaNull.peakRssBytes)}`);
      console.log(
        `  worker → ${viaParquet.sink.padEnd(22)} ${tParquet.toFixed(2)} s   overhead = worker / plugin alone = ${(tParquet / alone).toFixed(2)}   peak RSS ${mb(viaParquet.peakRssBytes)}` +
          (viaParquet.parquetBytes === null ? "" : `   (${mb(viaParquet.parquetBytes)} Parquet)`),
      );
      if (viaParquet.rows !== rows || viaNull.rows !== rows) throw new Error(`row count mismatch: expected ${rows}, got ${viaNull.rows}/${viaParquet.rows}`);
    }
    console.log("\ntargets: overhead ≤ 1.3; worker peak RSS ≤ 200 MB and flat across row counts");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv.includes("--child")) {
  process.once("message", (request: ChildRequest) => {
    childMain(request).then(
      (report) => process.send!(report, () => process.exit(0)),
      (err: unknown) => {
        console.error(err);
        process.exit(1);
      },
    );
  });
} else if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const counts = process.argv.slice(2).map(Number).filter((n) => n > 0);
  runBridgeBench(counts.length > 0 ? counts : undefined).catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
