/**
 * Parquet write throughput: the same Arrow batches through our Parquet sink (driven
 * through the hooks, as a job would) and through pyarrow's ParquetWriter, in one run.
 *
 *   npm run bench            (or: npx tsc -p . && node dist/bench/parquet.js [rows] [encoderThreads])
 *
 * Data: ≥ 3 M rows in 64 Ki-row batches: int64, float64, a low-cardinality string
 * (12 values) and a high-cardinality string (unique per row). Both writers use Snappy
 * and 65 536-row row groups. pyarrow reads the same batches from an IPC file first;
 * only its writing is timed. Ours includes the lineage columns and the fsync + rename.
 * Each side runs once to warm up, then REPS times; the median counts.
 */
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { availableParallelism, tmpdir } from "node:os";
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
import { defaultEncoderThreads } from "../sinks/parquet-settings.js";

const run = promisify(execFile);
const BATCH_ROWS = 65_536;
const ROW_GROUP_SIZE = 65_536;
const REPS = 3;
const CATEGORIES = ["north", "south", "east", "west", "central", "online", "retail", "wholesale", "partner", "export", "import", "other"];

const PYARROW_WRITER = `
import json, statistics, sys, time
import pyarrow as pa, pyarrow.parquet as pq
source, target, reps, row_group_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with pa.ipc.open_stream(pa.memory_map(source)) as reader:
    table = reader.read_all()  # not timed: pyarrow starts from batches in memory, as the sink does
batches = table.to_batches()
def write():
    t0 = time.perf_counter()
    with pq.ParquetWriter(target, table.schema, compression="snappy") as writer:
        for batch in batches:
            writer.write_batch(batch, row_group_size=row_group_size)
    return time.perf_counter() - t0
write()  # warm-up
times = [write() for _ in range(reps)]
print(json.dumps({"seconds": statistics.median(times), "rows": table.num_rows, "version": pa.__version__}))
`;

export interface ParquetBenchResult {
  rows: number;
  oursRowsPerSecond: number;
  pyarrowRowsPerSecond: number;
  ratio: number;
}

export async function runParquetBench(totalRows = 3_000_000, parquet: ParquetConfig = {}): Promise<ParquetBenchResult> {
  const dir = await mkdtemp(join(tmpdir(), "casparian-bench-"));
  try {
    process.stdout.write(`generating ${totalRows.toLocaleString()} rows in ${BATCH_ROWS}-row batches...\n`);
    const batches = makeBatches(totalRows);
    const ipcFile = join(dir, "input.arrows");
    await writeFile(ipcFile, concatenatedStream(batches));
    const python = await pythonEnv(dir);

    const ours = await timeOurs(batches, join(dir, "ours"), parquet);
    const theirs = await timePyarrow(python, ipcFile, join(dir, "pyarrow.parquet"));
    const oursRate = totalRows / ours.seconds;
    const theirRate = totalRows / theirs.seconds;
    const ratio = oursRate / theirRate;
    const line = (name: string, seconds: number, rate: number, bytes: number) =>
      `${name.padEnd(28)} ${(seconds * 1000).toFixed(0).padStart(7)} ms  ${(rate / 1e6).toFixed(2).padStart(6)} M rows/s  ${(bytes / 1e6).toFixed(1).padStart(7)} MB`;
    process.stdout.write(
      [
        "",
        `Parquet write, ${totalRows.toLocaleString()} rows (int64, float64, low- and high-cardinality strings), snappy, ${ROW_GROUP_SIZE}-row row groups, ${availableParallelism()} cores`,
        line(`casparian parquet sink (${ours.threads} writer thread${ours.threads === 1 ? "" : "s"})`, ours.seconds, oursRate, ours.bytes),
        line(`pyarrow ${theirs.version} ParquetWriter`, theirs.seconds, theirRate, theirs.bytes),
        `throughput ratio = ours / pyarrow = ${ratio.toFixed(2)}   (target ≥ 1.2)`,
        "",
      ].join("\n"),
    );
    return { rows: totalRows, oursRowsPerSecond: oursRate, pyarrowRowsPerSecond: theirRate, ratio };
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

async function timeOurs(batches: Batch[], root: string, parquet: ParquetConfig): Promise<{ seconds: number; bytes: number; threads: number }> {
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
  const once = async (jobId: bigint) => {
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
    const receipt = await pipeline.runJob({ jobId, command, logger, signal: new AbortController().signal });
    const seconds = (performance.now() - t0) / 1000;
    if (receipt.status !== "SUCCESS") throw new Error(`bench job failed: ${receipt.errorMessage}`);
    return seconds;
  };
  try {
    await once(1n); // warm-up: encoder threads start, wasm compiles
    const times: number[] = [];
    for (let rep = 0; rep < REPS; rep++) times.push(await once(BigInt(rep + 2)));
    const threads = parquet.encoderThreads ?? defaultEncoderThreads();
    return { seconds: median(times), bytes: (await stat(file)).size, threads };
  } finally {
    await pipeline.shutdown();
  }
}

async function timePyarrow(python: string, ipcFile: string, target: string): Promise<{ seconds: number; bytes: number; version: string }> {
  const { stdout } = await run(python, ["-c", PYARROW_WRITER, ipcFile, target, String(REPS), String(ROW_GROUP_SIZE)], { maxBuffer: 1 << 20 });
  const result = JSON.parse(stdout) as { seconds: number; rows: number; version: string };
  return { seconds: result.seconds, bytes: (await stat(target)).size, version: result.version };
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
  // node dist/bench/parquet.js [rows] [encoderThreads]
  const rows = Number(process.argv[2] ?? 3_000_000);
  const threads = process.argv[3] === undefined ? undefined : Number(process.argv[3]);
  runParquetBench(rows, threads === undefined ? {} : { encoderThreads: threads }).catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
