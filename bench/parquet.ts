/**
 * Parquet write throughput: the same Arrow batches through our Parquet sink (driven
 * through the hooks, as a job would) with its native engine (the default) and with the
 * parquet-wasm fallback, and through pyarrow's ParquetWriter, in one run.
 *
 *   npm run bench            (or: npx tsc -p . && node dist/bench/parquet.js [rows] [rounds])
 *
 * Data: ≥ 3 M rows in 64 Ki-row batches: int64, float64, a low-cardinality string
 * (12 values) and a high-cardinality string (unique per row). All writers use Snappy
 * and 65 536-row row groups. pyarrow reads the same batches from an IPC file first;
 * only its writing is timed. Ours includes the lineage columns and the fsync + rename.
 * Each writer warms up once, then the three take turns for `rounds` rounds (interleaved,
 * so that a load change on a shared machine hits all of them alike); medians count, and
 * each round's ratio is printed too.
 */
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { RecordBatchStreamWriter, Table, Utf8, makeVector, tableFromIPC, tableToIPC, vectorFromArray } from "apache-arrow";
import { pino } from "pino";
import type { ParquetConfig } from "../core/config/config.js";
import type { Batch } from "../core/kernel/job.js";
import { packageRoot } from "../core/kernel/paths.js";
import { Pipeline } from "../core/pipeline/pipeline.js";
import { loadSinkPlugins } from "../core/pipeline/sink-loader.js";
import { SinkManager } from "../core/pipeline/sink-manager.js";
import { loadNativeEngine } from "../sinks/parquet-native.js";
import { defaultEncoderThreads } from "../sinks/parquet-settings.js";

const run = promisify(execFile);
const BATCH_ROWS = 65_536;
const ROW_GROUP_SIZE = 65_536;
const ROUNDS = 5;
const CATEGORIES = ["north", "south", "east", "west", "central", "online", "retail", "wholesale", "partner", "export", "import", "other"];

const PYARROW_WRITER = `
import json, sys, time
import pyarrow as pa, pyarrow.parquet as pq
source, target, row_group_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
with pa.ipc.open_stream(pa.memory_map(source)) as reader:
    table = reader.read_all()  # not timed: pyarrow starts from batches in memory, as the sink does
batches = table.to_batches()
def write():
    t0 = time.perf_counter()
    with pq.ParquetWriter(target, table.schema, compression="snappy") as writer:
        for batch in batches:
            writer.write_batch(batch, row_group_size=row_group_size)
    return time.perf_counter() - t0
for line in sys.stdin:  # one write per line the bench sends: the rounds interleave with ours
    print(json.dumps({"seconds": write(), "rows": table.num_rows, "version": pa.__version__}), flush=True)
`;

export interface ParquetBenchResult {
  rows: number;
  nativeRowsPerSecond: number | null;
  wasmRowsPerSecond: number;
  pyarrowRowsPerSecond: number;
  /** native / pyarrow throughput (null when the native engine is not built). */
  ratio: number | null;
}

interface Side {
  name: string;
  times: number[];
  bytes: number;
}

export async function runParquetBench(totalRows = 3_000_000, rounds = ROUNDS): Promise<ParquetBenchResult> {
  const dir = await mkdtemp(join(tmpdir(), "casparian-bench-"));
  try {
    process.stdout.write(`generating ${totalRows.toLocaleString()} rows in ${BATCH_ROWS}-row batches...\n`);
    const batches = makeBatches(totalRows);
    const ipcFile = join(dir, "input.arrows");
    await writeFile(ipcFile, concatenatedStream(batches));
    const python = await pythonEnv(dir);

    const native = loadNativeEngine();
    if ("error" in native) process.stdout.write(`native engine unavailable, its column is left out: ${native.error.message}\n`);
    const wasmThreads = defaultEncoderThreads();
    const writers: Array<{ side: Side; write: () => Promise<number>; close: () => Promise<void> }> = [];
    if ("addon" in native) writers.push(await oursWriter(`casparian sink, native engine`, batches, join(dir, "native"), { engine: "native" }));
    writers.push(
      await oursWriter(`casparian sink, parquet-wasm (${wasmThreads} thread${wasmThreads === 1 ? "" : "s"})`, batches, join(dir, "wasm"), { engine: "wasm" }),
    );
    const pyarrow = await pyarrowWriter(python, ipcFile, join(dir, "pyarrow.parquet"));
    writers.push(pyarrow);
    try {
      for (const writer of writers) await writer.write(); // warm-up
      const load = [loadavg()[0]!];
      for (let round = 0; round < rounds; round++) {
        for (const writer of writers) writer.side.times.push(await writer.write());
        load.push(loadavg()[0]!);
      }
      const rate = (side: Side) => totalRows / median(side.times);
      const line = (side: Side) =>
        `${side.name.padEnd(44)} ${(median(side.times) * 1000).toFixed(0).padStart(7)} ms  ${(rate(side) / 1e6).toFixed(2).padStart(6)} M rows/s  ${(side.bytes / 1e6).toFixed(1).padStart(7)} MB   rounds: ${side.times.map((t) => (t * 1000).toFixed(0)).join(" ")}`;
      const theirs = pyarrow.side;
      const ratioOf = (side: Side) => rate(side) / rate(theirs);
      const perRound = (side: Side) => side.times.map((t, i) => (theirs.times[i]! / t).toFixed(2)).join(" ");
      const nativeSide = "addon" in native ? writers[0]!.side : null;
      const wasmSide = writers["addon" in native ? 1 : 0]!.side;
      process.stdout.write(
        [
          "",
          `Parquet write, ${totalRows.toLocaleString()} rows (int64, float64, low- and high-cardinality strings), snappy, ${ROW_GROUP_SIZE}-row row groups, ${availableParallelism()} cores, ${rounds} interleaved rounds, load average ${Math.min(...load).toFixed(1)}–${Math.max(...load).toFixed(1)}`,
          ...writers.map((w) => line(w.side)),
          ...(nativeSide === null
            ? ["native engine: not built (see above)"]
            : [`throughput ratio native / pyarrow = ${ratioOf(nativeSide).toFixed(2)} (median times; per round ${perRound(nativeSide)})   (target ≥ 1.2)`]),
          `throughput ratio wasm / pyarrow   = ${ratioOf(wasmSide).toFixed(2)} (per round ${perRound(wasmSide)})`,
          "",
        ].join("\n"),
      );
      return {
        rows: totalRows,
        nativeRowsPerSecond: nativeSide === null ? null : rate(nativeSide),
        wasmRowsPerSecond: rate(wasmSide),
        pyarrowRowsPerSecond: rate(theirs),
        ratio: nativeSide === null ? null : ratioOf(nativeSide),
      };
    } finally {
      for (const writer of writers) await writer.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function makeBatches(totalRows: number): Batch[] {
  const batches: Batch[] = [];
  for (let start = 0; start < totalRows; start += BATCH_ROWS) {
    const n = Math.min(BATCH_ROWS, totalRows - start);
    const ids = new BigInt64Array(n);
    const values = new Float64Array(n);
    const categories: string[] = new Array(n);
    const keys: string[] = new Array(n);
    for (let i = 0; i < n; i++) {
      const row = start + i;
      ids[i] = BigInt(row);
      values[i] = ((row * 2_654_435_761) % 1_000_003) / 7.3;
      categories[i] = CATEGORIES[(row * 7) % CATEGORIES.length]!;
      keys[i] = `customer-${((row * 2_654_435_761) % 4_294_967_291).toString(36)}-${row}`;
    }
    const table = new Table({
      id: makeVector(ids),
      value: makeVector(values),
      category: vectorFromArray(categories, new Utf8()),
      key: vectorFromArray(keys, new Utf8()),
    });
    const ipc = tableToIPC(table, "stream");
    batches.push({ topic: "bench", index: batches.length, ipc, table: tableFromIPC(ipc), numRows: n, retain: () => () => undefined });
  }
  return batches;
}

function concatenatedStream(batches: Batch[]): Uint8Array {
  const writer = new RecordBatchStreamWriter();
  for (const batch of batches) for (const recordBatch of batch.table.batches) writer.write(recordBatch);
  writer.finish();
  return writer.toUint8Array(true);
}

async function oursWriter(
  name: string,
  batches: Batch[],
  root: string,
  parquet: ParquetConfig,
): Promise<{ side: Side; write: () => Promise<number>; close: () => Promise<void> }> {
  const logger = pino({ level: "warn" });
  // As a worker process does at start: sinks resolve their targets inside the root's real path.
  await mkdir(root, { recursive: true });
  // The real pipeline, sink manager and Parquet sink; the "guest" hands over batches made in advance, so only the sink side is timed.
  const pipeline = new Pipeline({
    logger,
    outputRoot: root,
    workerId: "bench",
    envs: { acquire: async (envHash) => ({ envHash, interpreterPath: "(in-process batches)", release() {} }) },
    runGuest: async ({ onBatch }) => {
      for (const batch of batches) await onBatch(batch);
      return { rows: 0, batches: batches.length, ipcBytes: 0, startupMs: 0, durationMs: 0, rowsByTopic: new Map(), guestMetrics: {} };
    },
  });
  pipeline.use(new SinkManager({ plugins: await loadSinkPlugins([], root, parquet), logger, outputRoot: root }));
  await pipeline.start();
  const file = join(root, "bench.parquet");
  const side: Side = { name, times: [], bytes: 0 };
  let jobId = 0n;
  const write = async () => {
    const command = {
      pluginName: "bench",
      filePath: "/dev/null",
      sinks: [{ topic: "bench", uri: `parquet://bench.parquet?row_group_size=${ROW_GROUP_SIZE}`, mode: "replace" as const, schemaDef: null }],
      fileVersionId: 1n,
      envHash: "0".repeat(64),
      sourceCode: "",
      artifactHash: null,
    };
    const t0 = performance.now();
    const receipt = await pipeline.runJob({ jobId: ++jobId, command, logger, signal: new AbortController().signal });
    const seconds = (performance.now() - t0) / 1000;
    if (receipt.status !== "SUCCESS") throw new Error(`bench job failed: ${receipt.errorMessage}`);
    side.bytes = (await stat(file)).size;
    return seconds;
  };
  return { side, write, close: () => pipeline.shutdown() };
}

/** pyarrow in one long-lived process that writes once per request, so its rounds interleave with ours. */
async function pyarrowWriter(
  python: string,
  ipcFile: string,
  target: string,
): Promise<{ side: Side; write: () => Promise<number>; close: () => Promise<void> }> {
  const child = execFile(python, ["-c", PYARROW_WRITER, ipcFile, target, String(ROW_GROUP_SIZE)], { maxBuffer: 1 << 20 });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const lines: string[] = [];
  let waiting: (() => void) | null = null;
  let pending = "";
  child.stdout!.on("data", (chunk: Buffer) => {
    pending += chunk.toString();
    for (let at = pending.indexOf("\n"); at >= 0; at = pending.indexOf("\n")) {
      lines.push(pending.slice(0, at));
      pending = pending.slice(at + 1);
    }
    waiting?.();
  });
  const side: Side = { name: "pyarrow ParquetWriter", times: [], bytes: 0 };
  const write = async () => {
    child.stdin!.write("write\n");
    while (lines.length === 0) {
      const ended = await Promise.race([new Promise<boolean>((resolve) => (waiting = () => resolve(false))), exited.then(() => true)]);
      if (ended && lines.length === 0) throw new Error("the pyarrow writer exited");
    }
    const result = JSON.parse(lines.shift()!) as { seconds: number; rows: number; version: string };
    side.name = `pyarrow ${result.version} ParquetWriter`;
    side.bytes = (await stat(target)).size;
    return result.seconds;
  };
  return {
    side,
    write,
    close: async () => {
      child.stdin!.end();
      await exited;
    },
  };
}

/** pyarrow from the test suite's locked environment (test/fixtures/pyenv). */
async function pythonEnv(dir: string): Promise<string> {
  const venv = join(dir, "venv");
  await run(process.env.UV ?? "uv", ["sync", "--frozen", "--no-install-project", "--quiet"], {
    cwd: join(packageRoot(), "test", "fixtures", "pyenv"),
    env: { ...process.env, UV_PROJECT_ENVIRONMENT: venv },
  });
  return join(venv, "bin", "python");
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  // node dist/bench/parquet.js [rows] [rounds]
  const rows = Number(process.argv[2] ?? 3_000_000);
  const rounds = Number(process.argv[3] ?? ROUNDS);
  runParquetBench(rows, rounds).catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
