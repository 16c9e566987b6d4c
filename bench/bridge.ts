/**
 * The whole job: one pyarrow generator plugin (int64, float64 and two string columns,
 * 64 Ki-row chunks) run several ways, in one run:
 *
 *   plugin alone → IPC      python runs the plugin and writes each chunk's IPC stream to /dev/null
 *   plugin alone → Parquet  python runs the plugin and writes the same Parquet with pyarrow's
 *                           ParquetWriter (snappy, 65,536-row groups): the baseline
 *   worker → null           the real Pipeline and bridge into a consumer that drops batches
 *   worker → parquet        the real Pipeline into the bundled Parquet sink, as a job does
 *   casparian-worker        our worker as its own process (bin/casparian-worker.js, with the V8
 *                           flags `casparian run` gives its workers), driven over
 *                           protocol v4 by an embedded Sentinel: its RSS before the first job and
 *                           its peak (VmHWM), the figures the memory targets are about
 *   upstream Rust worker    the same plugin through upstream's Rust worker, driven over
 *                           protocol v4 by an embedded Sentinel (DISPATCH → CONCLUDE timed,
 *                           in the same uv env as ours), when CASPARIAN_UPSTREAM_WORKER names a
 *                           checkout where it was built; otherwise the bench says why not
 *
 * and prints `worker → parquet / plugin alone → Parquet` (target ≤ 1.3), the Rust worker
 * beside it, and the worker's peak RSS at two row counts (target ≤ 150 MB, flat) and for
 * 100,000 one-row chunks (target ≤ 200 MB). Each worker run is a fresh child process, so
 * its peak RSS is its own.
 *
 *   npm run bench      or: npx tsc -p . && node dist/bench/bridge.js [rows] [rows2] [--no-tiny | --tiny-only] [--rss-only]
 */
import { execFile, fork, spawn } from "node:child_process";
import { access, constants as fsConstants, copyFile, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { pino } from "pino";
import { runGuest } from "../core/bridge/host.js";
import { EnvManager } from "../core/env/manager.js";
import type { Logger } from "../core/kernel/logger.js";
import type { JobCommand } from "../core/kernel/job.js";
import { packageRoot } from "../core/kernel/paths.js";
import { Pipeline } from "../core/pipeline/pipeline.js";
import { Opcode, type Message } from "../core/protocol/messages.js";
import { EmbeddedSentinel, type Peer } from "../core/run/sentinel.js";
import { WORKER_NODE_FLAGS } from "../core/run/worker-process.js";

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

/** 100,000 chunks of one row each: what a plugin that yields per record sends. */
const TINY_CHUNKS_PLUGIN = `
import pyarrow as pa


class Handler:
    def execute(self, file_path):
        for i in range(100000):
            yield pa.table({"id": pa.array([i], pa.int64()), "value": pa.array([i / 7.3]), "category": pa.array(["north"]), "key": pa.array([f"customer-{i}"])})
`;

/** The same plugin writing the same Parquet itself, with pyarrow: the baseline for the whole job. */
const ALONE_PARQUET_HARNESS = `
import sys
import pyarrow.parquet as pq
source, path, target = sys.argv[1], sys.argv[2], sys.argv[3]
namespace = {"__name__": "__plugin__"}
exec(compile(open(source).read(), "plugin", "exec"), namespace)
writer = None
for table in namespace["Handler"]().execute(path):
    if writer is None:
        writer = pq.ParquetWriter(target, table.schema, compression="snappy")
    writer.write_table(table, row_group_size=65536)
writer.close()
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
  source: string;
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
  /** process.memoryUsage() at the sample with the highest RSS: where the memory went. */
  peakBreakdown: NodeJS.MemoryUsage;
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

/** Where the peak RSS went: V8's heap, memory outside it (ArrayBuffers, wasm), and the rest (code, native libraries, allocator). */
function breakdown(m: NodeJS.MemoryUsage): string {
  return `[at peak: heap used ${mb(m.heapUsed)} of ${mb(m.heapTotal)}, external ${mb(m.external)} (array buffers ${mb(m.arrayBuffers)}), other ${mb(m.rss - m.heapTotal - m.external)}]`;
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
  // As a worker process does at start: sinks resolve their targets inside the root's real path.
  await mkdir(request.outputRoot, { recursive: true });
  let peak = process.memoryUsage();
  const sampler = setInterval(() => {
    const now = process.memoryUsage();
    if (now.rss > peak.rss) peak = now;
  }, 20);
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
      const command: JobCommand = {
        pluginName: "bench_generator",
        filePath: request.inputPath,
        sinks: [{ topic: "output", uri: "parquet://bench/generated.parquet", mode: "replace", schemaDef: null }],
        fileVersionId: 1n,
        envHash: "0".repeat(64),
        sourceCode: request.source,
        artifactHash: null,
      };
      const t0 = performance.now();
      const receipt = await pipeline.runJob({ jobId: BigInt(rep + 1), command, logger, signal: new AbortController().signal });
      if (receipt.status !== "SUCCESS") throw new Error(`bench job failed: ${receipt.errorMessage}`);
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
    peakRssBytes: Math.max(peak.rss, maxRss),
    peakBreakdown: peak,
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

async function timeAlone(python: string, pluginFile: string, harnessFile: string, inputPath: string, reps: number, extra: string[] = []): Promise<number[]> {
  const times: number[] = [];
  for (let rep = 0; rep < reps; rep++) {
    const t0 = performance.now();
    await execFileAsync(python, [harnessFile, pluginFile, inputPath, ...extra], { maxBuffer: 1 << 20 });
    times.push((performance.now() - t0) / 1000);
  }
  return times;
}

/** Our casparian-worker process (a fresh one) running the job `reps` times: median time, its RSS before the first job, its peak RSS. */
async function viaWorkerProcess(scratch: string, home: string, envHash: string, source: string, inputPath: string, reps: number) {
  await mkdir(scratch, { recursive: true });
  const worker = await ProtocolWorker.ours(await mkdtemp(join(scratch, "worker-")), home, envHash);
  if ("unavailable" in worker) return worker;
  try {
    const run = await worker.time(source, inputPath, reps);
    return "unavailable" in run ? run : { ...run, idleRssBytes: worker.idleRssBytes };
  } finally {
    await worker.close();
  }
}

function processLine(label: string, run: Awaited<ReturnType<typeof viaWorkerProcess>>): string {
  if ("unavailable" in run) return `  ${label} not measured: ${run.unavailable}`;
  return `  ${label} ${run.seconds.toFixed(2)} s   RSS before the first job ${mb(run.idleRssBytes)}, peak RSS ${mb(run.peakRssBytes)} (the process's VmHWM)`;
}

export async function runBridgeBench(rowCounts: readonly number[] = [3_000_000, 10_000_000], tinyChunks = true, rssOnly = false): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "casparian-bench-bridge-"));
  try {
    const manager = new EnvManager({ home: join(dir, "home"), logger: pino({ level: "warn" }) as unknown as Logger });
    const lock = await readFile(join(packageRoot(), "test", "fixtures", "pyenv", "uv.lock"), "utf8");
    const { createHash } = await import("node:crypto");
    const ready = await manager.prepare({ env_hash: createHash("sha256").update(lock).digest("hex"), lockfile_content: lock, python_version: null });
    const hitStarted = performance.now();
    const hit = await manager.prepare({ env_hash: ready.env_hash, lockfile_content: lock, python_version: null });
    console.log(
      `env: built in this run: ${!ready.cached}; PREPARE_ENV cache hit answered in ${(performance.now() - hitStarted).toFixed(1)} ms (cached=${hit.cached})`,
    );
    const pluginFile = join(dir, "generator.py");
    const harnessFile = join(dir, "alone.py");
    const parquetHarnessFile = join(dir, "alone-parquet.py");
    await writeFile(pluginFile, GENERATOR_PLUGIN);
    await writeFile(harnessFile, ALONE_HARNESS);
    await writeFile(parquetHarnessFile, ALONE_PARQUET_HARNESS);
    const upstream = await ProtocolWorker.upstream(process.env.CASPARIAN_UPSTREAM_WORKER, join(dir, "upstream"), ready.interpreter_path, ready.env_hash);
    if ("unavailable" in upstream) console.log(`upstream Rust worker: not compared: ${upstream.unavailable}`);
    const targets: string[] = [];

    console.log("bridge bench: pyarrow generator (int64, float64, 2 × utf8; 65,536-row chunks)");
    for (const [i, rows] of rowCounts.entries()) {
      const inputPath = join(dir, `rows-${rows}.txt`);
      await writeFile(inputPath, String(rows));
      const reps = i === 0 ? REPS : 1;
      const ours = await viaWorkerProcess(join(dir, "ours"), join(dir, "home"), ready.env_hash, GENERATOR_PLUGIN, inputPath, reps);
      const oursLine = processLine("casparian-worker process → Parquet", ours);
      if (!("unavailable" in ours))
        targets.push(`${rows.toLocaleString("en-US")} rows, casparian-worker process: peak RSS ${mb(ours.peakRssBytes)} (≤ 150 MB)`);
      if (rssOnly) {
        console.log(`\nrows = ${rows.toLocaleString("en-US")} (median of ${reps})\n${oursLine}`);
        continue;
      }
      // warm-up: page cache, pyc files, uv-linked wheels
      await timeAlone(ready.interpreter_path, pluginFile, harnessFile, inputPath, 1);
      const alone = median(await timeAlone(ready.interpreter_path, pluginFile, harnessFile, inputPath, reps));
      const aloneParquet = median(await timeAlone(ready.interpreter_path, pluginFile, parquetHarnessFile, inputPath, reps, [join(dir, "alone.parquet")]));
      const base = { source: GENERATOR_PLUGIN, interpreterPath: ready.interpreter_path, inputPath, outputRoot: join(dir, "out"), reps };
      const viaNull = await runChild({ ...base, mode: "null" });
      const viaParquet = await runChild({ ...base, mode: "parquet" });
      const tNull = median(viaNull.seconds);
      const tParquet = median(viaParquet.seconds);
      console.log(`\nrows = ${rows.toLocaleString("en-US")} (${viaNull.batches} chunks, ${mb(viaNull.ipcBytes)} of IPC; median of ${reps})`);
      console.log(`  plugin alone (IPC → /dev/null)   ${alone.toFixed(2)} s`);
      console.log(`  plugin alone → pyarrow Parquet  ${aloneParquet.toFixed(2)} s   (the baseline)`);
      console.log(
        `  worker → null consumer          ${tNull.toFixed(2)} s   overhead = worker / plugin alone = ${(tNull / alone).toFixed(2)}   peak RSS ${mb(viaNull.peakRssBytes)} ${breakdown(viaNull.peakBreakdown)}`,
      );
      console.log(
        `  worker → ${viaParquet.sink.padEnd(22)} ${tParquet.toFixed(2)} s   overhead = worker / plugin alone = ${(tParquet / alone).toFixed(2)}   peak RSS ${mb(viaParquet.peakRssBytes)}` +
          (viaParquet.parquetBytes === null ? "" : `   (${mb(viaParquet.parquetBytes)} Parquet)`) +
          `\n                                  ${breakdown(viaParquet.peakBreakdown)}`,
      );
      console.log(oursLine);
      const ratio = tParquet / aloneParquet;
      console.log(`  worker → Parquet / plugin alone → Parquet = ${ratio.toFixed(2)}   (target ≤ 1.3)`);
      targets.push(
        `${rows.toLocaleString("en-US")} rows: worker/plugin-alone Parquet ${ratio.toFixed(2)} (≤ 1.3), peak RSS ${mb(viaParquet.peakRssBytes)} (≤ 150 MB)`,
      );
      if (!("unavailable" in upstream)) {
        const rust = await upstream.time(GENERATOR_PLUGIN, inputPath, reps);
        if ("unavailable" in rust) console.log(`  upstream Rust worker            not measured: ${rust.unavailable}`);
        else {
          console.log(
            `  upstream Rust worker → Parquet  ${rust.seconds.toFixed(2)} s   ours / Rust = ${(tParquet / rust.seconds).toFixed(2)}   its peak RSS ${mb(rust.peakRssBytes)}`,
          );
          targets.push(`${rows.toLocaleString("en-US")} rows: ours / upstream Rust worker ${(tParquet / rust.seconds).toFixed(2)} (< 1 is faster)`);
        }
      }
      if (viaParquet.rows !== rows || viaNull.rows !== rows) throw new Error(`row count mismatch: expected ${rows}, got ${viaNull.rows}/${viaParquet.rows}`);
    }

    if (tinyChunks) {
      const ours = await viaWorkerProcess(join(dir, "ours"), join(dir, "home"), ready.env_hash, TINY_CHUNKS_PLUGIN, pluginFile, 1);
      if (!("unavailable" in ours)) targets.push(`100,000 one-row chunks, casparian-worker process: peak RSS ${mb(ours.peakRssBytes)} (≤ 200 MB)`);
      console.log(`\n100,000 one-row chunks\n${processLine("casparian-worker process → Parquet", ours)}`);
    }
    if (tinyChunks && !rssOnly) {
      const tiny = await runChild({
        source: TINY_CHUNKS_PLUGIN,
        interpreterPath: ready.interpreter_path,
        inputPath: pluginFile,
        outputRoot: join(dir, "out"),
        reps: 1,
        mode: "parquet",
      });
      console.log(
        `100,000 one-row chunks in the bench's process → ${tiny.sink}: ${median(tiny.seconds).toFixed(2)} s, ${tiny.rows.toLocaleString("en-US")} rows, peak RSS ${mb(tiny.peakRssBytes)}   (target ≤ 200 MB)\n  ${breakdown(tiny.peakBreakdown)}`,
      );
      targets.push(`100,000 one-row chunks: peak RSS ${mb(tiny.peakRssBytes)} (≤ 200 MB)`);
    }
    if (!("unavailable" in upstream)) await upstream.close();
    console.log(`\nsummary:\n  ${targets.join("\n  ")}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * A worker process driven over protocol v4 by an embedded Sentinel: upstream's Rust worker,
 * or our own `casparian-worker` exactly as it runs in production (its own process, its own
 * module graph), whose peak RSS is then the kernel's VmHWM of that process.
 */
class ProtocolWorker {
  readonly #sentinel: EmbeddedSentinel;
  readonly #child: ReturnType<typeof spawn>;
  readonly #peer: Peer;
  readonly #inbox: Message[] = [];
  #wake: (() => void) | null = null;
  readonly #envHash: string;
  #nextJob = 1n;
  /** VmRSS once it had identified, before its first job. */
  readonly idleRssBytes: number;

  private constructor(sentinel: EmbeddedSentinel, child: ReturnType<typeof spawn>, peer: Peer, envHash: string, idleRssBytes: number) {
    this.#sentinel = sentinel;
    this.#child = child;
    this.#peer = peer;
    this.#envHash = envHash;
    this.idleRssBytes = idleRssBytes;
  }

  /**
   * Upstream's Rust worker (the commit with crates/casparian_worker and its main.rs), built
   * outside this tree; `root` is that checkout, with target/release/casparian-worker. It finds
   * its guest shim relative to its working directory, so it runs in a scratch directory holding
   * a copy of that shim, with its venvs under a scratch HOME, connected to a private ipc socket.
   */
  static async upstream(
    root: string | undefined,
    scratch: string,
    interpreterPath: string,
    envHash: string,
  ): Promise<ProtocolWorker | { unavailable: string }> {
    if (!root)
      return {
        unavailable:
          "CASPARIAN_UPSTREAM_WORKER is not set (point it at a checkout of upstream's commit with crates/casparian_worker, built with cargo build --release -p casparian_worker); the comparison is with the plugin-alone figure",
      };
    const binary = join(root, "target", "release", "casparian-worker");
    const shim = join(root, "src", "casparian_flow", "engine", "bridge_shim.py");
    try {
      await access(binary, fsConstants.X_OK);
      await access(shim, fsConstants.R_OK);
    } catch {
      return { unavailable: `${binary} or ${shim} is missing: build upstream's worker there first` };
    }
    const cwd = join(scratch, "cwd");
    await mkdir(join(cwd, "src", "casparian_flow", "engine"), { recursive: true });
    await copyFile(shim, join(cwd, "src", "casparian_flow", "engine", "bridge_shim.py"));
    // Its PREPARE_ENV syncs the lockfile against a pyproject of its own making, which only
    // fits lockfiles made for it; it runs any env present under its venv directory, so it
    // gets ours, the same interpreter and packages our worker uses.
    const venvs = join(scratch, "home", ".casparian_flow", "venvs");
    await mkdir(venvs, { recursive: true });
    await symlink(dirname(dirname(interpreterPath)), join(venvs, envHash));
    return ProtocolWorker.#launch(
      (endpoint) => ({
        file: binary,
        args: ["--connect", endpoint, "--output", join(scratch, "out")],
        cwd,
        env: { ...process.env, HOME: join(scratch, "home"), RUST_LOG: "warn" },
      }),
      envHash,
    );
  }

  /** Our own worker process, `casparian-worker`, with the env already built in `home` (its CASPARIAN_HOME), in a scratch directory without a config file. */
  static async ours(scratch: string, home: string, envHash: string): Promise<ProtocolWorker | { unavailable: string }> {
    const cwd = join(scratch, "cwd");
    await mkdir(cwd, { recursive: true });
    return ProtocolWorker.#launch(
      (endpoint) => ({
        file: process.execPath,
        args: [
          ...WORKER_NODE_FLAGS,
          join(packageRoot(), "bin", "casparian-worker.js"),
          "--connect",
          endpoint,
          "--output",
          join(scratch, "out"),
          "--log-level",
          "warn",
        ],
        cwd,
        env: { ...process.env, CASPARIAN_HOME: home },
      }),
      envHash,
    );
  }

  static async #launch(
    command: (endpoint: string) => { file: string; args: string[]; cwd: string; env: NodeJS.ProcessEnv },
    envHash: string,
  ): Promise<ProtocolWorker | { unavailable: string }> {
    const logger = pino({ level: "warn" }) as unknown as Logger;
    const sentinel = await EmbeddedSentinel.start(logger);
    const inbox: Array<{ peer: Peer; message: Message }> = [];
    let wake: (() => void) | null = null;
    sentinel.listen((peer, message) => {
      inbox.push({ peer, message });
      wake?.();
    });
    const { file, args, cwd, env } = command(sentinel.endpoint);
    const child = spawn(file, args, { cwd, env, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr!.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
    const deadline = Date.now() + 300_000;
    const next = async (opcode: Opcode): Promise<{ peer: Peer; message: Message } | null> => {
      for (;;) {
        const index = inbox.findIndex((m) => m.message.opcode === opcode);
        if (index >= 0) return inbox.splice(index, 1)[0]!;
        if (Date.now() > deadline || child.exitCode !== null) return null;
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 200);
        });
      }
    };
    const identified = await next(Opcode.IDENTIFY);
    if (identified === null) {
      child.kill("SIGKILL");
      await sentinel.close();
      return { unavailable: `it did not IDENTIFY (${stderr.trim().split("\n").pop() ?? "no output"})` };
    }
    // Settled after start-up: what the process holds before any job.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const idle = await procStatus(child.pid!, "VmRSS");
    const worker = new ProtocolWorker(sentinel, child, identified.peer, envHash, idle);
    sentinel.listen((_peer, message) => {
      worker.#inbox.push(message);
      worker.#wake?.();
    });
    return worker;
  }

  /** Median seconds from DISPATCH to CONCLUDE over `reps` jobs, and the process's peak RSS. */
  async time(source: string, inputPath: string, reps: number): Promise<{ seconds: number; peakRssBytes: number } | { unavailable: string }> {
    const times: number[] = [];
    for (let rep = 0; rep < reps; rep++) {
      const jobId = this.#nextJob++;
      const t0 = performance.now();
      await this.#sentinel.send(this.#peer, Opcode.DISPATCH, jobId, {
        plugin_name: "bench_generator",
        file_path: inputPath,
        sinks: [{ topic: "output", uri: "parquet://generated.parquet", mode: "replace", schema_def: null }],
        file_version_id: 1n,
        env_hash: this.#envHash,
        source_code: source,
        artifact_hash: null,
      });
      const receipt = await this.#conclude(jobId);
      if (receipt === null) return { unavailable: "no CONCLUDE within 10 minutes" };
      if (receipt.opcode === Opcode.CONCLUDE && receipt.payload.status !== "SUCCESS")
        return { unavailable: `its job failed: ${receipt.payload.error_message ?? "?"}` };
      times.push((performance.now() - t0) / 1000);
    }
    return { seconds: median(times), peakRssBytes: await procStatus(this.#child.pid!, "VmHWM") };
  }

  async #conclude(jobId: bigint): Promise<Message | null> {
    const deadline = Date.now() + 600_000;
    for (;;) {
      const index = this.#inbox.findIndex((m) => m.opcode === Opcode.CONCLUDE && m.jobId === jobId);
      if (index >= 0) return this.#inbox.splice(index, 1)[0]!;
      if (Date.now() > deadline || this.#child.exitCode !== null) return null;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        setTimeout(resolve, 200);
      });
    }
  }

  async close(): Promise<void> {
    this.#child.kill("SIGTERM");
    await this.#sentinel.close();
  }
}

/** A memory figure of a live process from /proc/<pid>/status, in bytes (0 when unreadable). */
async function procStatus(pid: number, key: "VmRSS" | "VmHWM"): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
  const match = new RegExp(`${key}:\\s+(\\d+) kB`).exec(status);
  return match ? Number(match[1]) * 1024 : 0;
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
  // node dist/bench/bridge.js [rows ...] [--no-tiny | --tiny-only] [--rss-only: only the casparian-worker process runs]
  const args = process.argv.slice(2);
  const counts = args.map(Number).filter((n) => n > 0);
  runBridgeBench(args.includes("--tiny-only") ? [] : counts.length > 0 ? counts : undefined, !args.includes("--no-tiny"), args.includes("--rss-only")).catch(
    (err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}
