/**
 * The bundled Parquet sink: `parquet://relative/path.parquet[?compression=zstd&row_group_size=N]`.
 *
 *  - The path is relative to the output root; absolute paths and `..` escapes are refused.
 *  - A path not ending in `.parquet` is a directory: the file is `<dir>/data.parquet`
 *    (append: `<dir>/data_<job id>.parquet`), as upstream wrote `parquet://./output/<topic>`.
 *  - append → `<stem>_<job id>.parquet` (one file per job); replace → atomically replaces
 *    the target; error → fails if the target exists (checked at open, and atomically at commit).
 *  - Written under a staging name beside the target, fsynced, renamed on commit.
 *  - Row groups are encoded as batches arrive, in encoder threads, and stitched into one
 *    file (parquet-assembler.ts): memory is bounded by the row groups in flight. The
 *    pending row group holds views of the guest's frames (the bridge gives each frame an
 *    ArrayBuffer of its own); on dispatch it is serialised once into a reusable buffer
 *    that is moved to an encoder thread and back (parquet-rowgroup.ts).
 *  - Lineage columns `_job_id` (uint64) and `_file_version_id` (int64) are appended to every
 *    row; key-value metadata carries the job id, plugin name, env hash and worker id.
 *  - A topic that never produced a batch publishes nothing (there is no schema to write).
 */
import { availableParallelism } from "node:os";
import { mkdir, realpath } from "node:fs/promises";
import { dirname, relative, isAbsolute } from "node:path";
import { Errors } from "../core/kernel/errors.js";
import { defineSink, type Artifact, type Batch, type Sink, type SinkContext, type SinkPlugin, type SinkTarget } from "./api.js";
import { assertTargetFree, fileLocationFor, finalPathFor, publishStaged, removeIfPresent, removeStaleStaging, stagingPathFor } from "./files.js";
import type { RecordBatch } from "apache-arrow";
import { highCardinalityColumns } from "./dictionary.js";
import { ParquetAssembler } from "./parquet-assembler.js";
import { EncoderPool, type EncodeResult } from "./parquet-pool.js";
import { COMPRESSION_NAMES, LINEAGE_FILE_VERSION_ID, LINEAGE_JOB_ID, RowGroupSerializer, isCompressionName, type CompressionName, type WriterSettings } from "./parquet-rowgroup.js";
import { positiveIntParam, rejectUnknownParams, resolveInsideRoot } from "./uri.js";

/**
 * 64 Ki rows (a multiple of pyarrow's batch sizes). Each encoder thread's wasm memory
 * grows to hold its largest row group (input, decoded columns and output at once) and
 * never shrinks, so this bounds the worker's memory: ~17 MB per thread here against
 * ~30 MB at 122,880 rows, for the same encode throughput.
 */
export const DEFAULT_ROW_GROUP_SIZE = 65_536;

/**
 * One core fewer than the machine has (at least 1, at most 8): the plugin's own process
 * keeps a core busy producing the data, and each thread costs ~35-50 MB (an isolate plus
 * its wasm memory). On 2 cores a second thread added ~50 MB of peak RSS for ~10% more
 * speed end to end (bench/bridge.ts); set `encoderThreads` when throughput matters more.
 */
export function defaultEncoderThreads(): number {
  return Math.max(1, Math.min(8, availableParallelism() - 1));
}
/** The file inside a directory location (append mode adds `_<job id>`). */
const DIRECTORY_FILE = "data.parquet";
const URI_PARAMS = ["compression", "row_group_size"] as const;
const INT64_MAX = (1n << 63n) - 1n;
const INT64_MIN = -(1n << 63n);

export interface ParquetConfig {
  /** "snappy" (default), "zstd", "gzip", "lz4", "brotli" or "uncompressed". */
  compression?: string;
  /** Rows per row group; default 65536 (a multiple of the Arrow batch sizes pyarrow emits; bounds each encoder thread's memory). */
  rowGroupSize?: number;
  /** Worker threads that encode row groups; default: available cores minus one (min 1, max 8). 0 encodes on the main thread. */
  encoderThreads?: number;
}

interface ResolvedParquetConfig {
  compression: CompressionName;
  rowGroupSize: number;
  encoderThreads: number;
}

export function parquetSink(options: ParquetConfig = {}): SinkPlugin {
  const config = resolveConfig(options);
  // Shared by every job of this plugin instance; started on first use, closed at shutdown.
  let pool: EncoderPool | null = null;
  const getPool = () => (pool ??= new EncoderPool(config.encoderThreads));

  return defineSink({
    name: "parquet",
    schemes: ["parquet"],
    create(target: SinkTarget, context: SinkContext): Sink {
      // Threads instantiate parquet-wasm while the guest is still starting up.
      getPool().prestart();
      return new ParquetTopicSink(target, context, config, getPool);
    },
    async recover({ outputRoot, logger }) {
      await removeStaleStaging(outputRoot, logger);
    },
    async close() {
      const closing = pool;
      pool = null;
      await closing?.close();
    },
  });
}

function resolveConfig(options: ParquetConfig): ResolvedParquetConfig {
  const compression = (options.compression ?? "snappy").toLowerCase();
  if (!isCompressionName(compression)) {
    throw Errors.CONFIG_INVALID(["parquet.compression", `unknown codec ${JSON.stringify(options.compression)} (known: ${COMPRESSION_NAMES.join(", ")})`]);
  }
  const rowGroupSize = options.rowGroupSize ?? DEFAULT_ROW_GROUP_SIZE;
  if (!Number.isSafeInteger(rowGroupSize) || rowGroupSize <= 0) {
    throw Errors.CONFIG_INVALID(["parquet.rowGroupSize", `expected a positive integer, got ${String(options.rowGroupSize)}`]);
  }
  const encoderThreads = options.encoderThreads ?? defaultEncoderThreads();
  if (!Number.isSafeInteger(encoderThreads) || encoderThreads < 0) {
    throw Errors.CONFIG_INVALID(["parquet.encoderThreads", `expected an integer >= 0, got ${String(options.encoderThreads)}`]);
  }
  return { compression, rowGroupSize, encoderThreads };
}

class ParquetTopicSink implements Sink {
  readonly #target: SinkTarget;
  readonly #context: SinkContext;
  readonly #getPool: () => EncoderPool;
  readonly #targetPath: string;
  readonly #finalPath: string;
  readonly #stagingPath: string;
  readonly #compression: CompressionName;
  readonly #rowGroupSize: number;
  readonly #maxInFlight: number;

  #settings: WriterSettings | null = null;
  #serializer: RowGroupSerializer | null = null;
  #assembler: ParquetAssembler | null = null;
  /** Rows waiting to fill the current row group: views of the guest's frames. */
  #pending: RecordBatch[] = [];
  #pendingRows = 0;
  /** Row groups being encoded, in file order. */
  #inFlight: Array<Promise<EncodeResult>> = [];
  #pieces = 0;
  #prepared = false;

  constructor(target: SinkTarget, context: SinkContext, config: ResolvedParquetConfig, getPool: () => EncoderPool) {
    this.#target = target;
    this.#context = context;
    this.#getPool = getPool;
    const { parsed, uri, mode } = target;
    const job = context.job;
    rejectUnknownParams(parsed, URI_PARAMS, uri);
    const compression = (parsed.params.get("compression") ?? config.compression).toLowerCase();
    if (!isCompressionName(compression)) {
      throw Errors.SINK_BAD_URI([uri, `unknown compression ${JSON.stringify(compression)} (known: ${COMPRESSION_NAMES.join(", ")})`], { context: { jobId: job.jobId, sinkUri: uri } });
    }
    this.#compression = compression;
    this.#rowGroupSize = positiveIntParam(parsed, "row_group_size", uri) ?? config.rowGroupSize;
    this.#maxInFlight = Math.max(1, config.encoderThreads) + 1;
    this.#targetPath = resolveInsideRoot(job.outputRoot, fileLocationFor(parsed.location, ".parquet", DIRECTORY_FILE), uri);
    this.#finalPath = finalPathFor(this.#targetPath, mode, job.jobId);
    this.#stagingPath = stagingPathFor(this.#finalPath, job.jobId);
    const fileVersionId = job.command.file_version_id;
    if (fileVersionId > INT64_MAX || fileVersionId < INT64_MIN) {
      throw Errors.SINK_WRITE_FAILED([uri, `file_version_id ${fileVersionId} does not fit the int64 lineage column _file_version_id`], { context: { jobId: job.jobId, sinkUri: uri } });
    }
  }

  async open(): Promise<void> {
    const { job } = this.#context;
    const dir = dirname(this.#finalPath);
    await mkdir(dir, { recursive: true });
    // The lexical check in resolveInsideRoot cannot see symlinks; the real path can.
    const [realRoot, realDir] = await Promise.all([realpath(job.outputRoot), realpath(dir)]);
    const rel = relative(realRoot, realDir);
    if (rel.startsWith("..") || isAbsolute(rel)) {
      throw Errors.SINK_PATH_ESCAPE([this.#target.uri, realRoot], { context: { jobId: job.jobId, sinkUri: this.#target.uri }, hint: `a symlink under the output root leads to ${realDir}` });
    }
    await assertTargetFree(this.#finalPath, this.#target.mode, this.#target.uri, job.jobId);
  }

  async write(batch: Batch): Promise<void> {
    if (this.#settings === null) await this.#begin(batch);
    // Views only: the batch's buffers stay valid after we return (each frame has its own
    // ArrayBuffer), and they are read once more, when the row group is serialised.
    let offset = 0;
    for (const recordBatch of batch.table.batches) {
      const rows = recordBatch.numRows;
      let at = 0;
      while (at < rows) {
        const take = Math.min(rows - at, this.#rowGroupSize - this.#pendingRows);
        this.#pending.push(at === 0 && take === rows ? recordBatch : recordBatch.slice(at, at + take));
        this.#pendingRows += take;
        at += take;
        if (this.#pendingRows === this.#rowGroupSize) await this.#dispatch();
      }
      offset += rows;
    }
    if (offset !== batch.numRows) throw new Error(`batch ${batch.index}: numRows ${batch.numRows} but its record batches hold ${offset} rows`);
  }

  async prepare(): Promise<void> {
    if (this.#settings === null) return;
    if (this.#pendingRows > 0) await this.#dispatch();
    // No rows at all: encode the schema alone, so the output is an empty but typed file.
    if (this.#pieces === 0) this.#dispatchBatches([]);
    while (this.#inFlight.length > 0) await this.#drainOne();
    await this.#assembler!.finish();
    this.#prepared = true;
  }

  async commit(): Promise<Artifact[]> {
    const { job, logger } = this.#context;
    if (this.#settings === null) {
      logger.warn({ file: this.#finalPath }, "topic produced no batch: no Parquet file published");
      return [];
    }
    if (!this.#prepared) throw new Error("commit before prepare");
    await publishStaged(this.#stagingPath, this.#finalPath, this.#target.mode, this.#target.uri, job.jobId);
    logger.debug({ file: this.#finalPath }, "Parquet file published");
    return [{ topic: this.#target.topic, uri: `parquet://${this.#finalPath}` }];
  }

  async abort(): Promise<void> {
    const inFlight = this.#inFlight.splice(0);
    this.#pending = [];
    await Promise.allSettled(inFlight);
    await this.#assembler?.close();
    await removeIfPresent(this.#stagingPath);
  }

  async #begin(batch: Batch): Promise<void> {
    const { job } = this.#context;
    const fields = batch.table.schema.fields;
    for (const reserved of [LINEAGE_JOB_ID, LINEAGE_FILE_VERSION_ID]) {
      if (fields.some((f) => f.name === reserved)) {
        throw Errors.SINK_SCHEMA_MISMATCH([this.#target.topic, `column "${reserved}" is reserved for lineage`], { context: { jobId: job.jobId, sinkUri: this.#target.uri } });
      }
    }
    this.#settings = {
      compression: this.#compression,
      rowGroupSize: this.#rowGroupSize,
      metadata: [
        ["casparian.job_id", job.jobId.toString()],
        ["casparian.plugin_name", job.command.plugin_name],
        ["casparian.env_hash", job.command.env_hash],
        ["casparian.worker_id", job.workerId],
        ["casparian.file_version_id", job.command.file_version_id.toString()],
        ["casparian.topic", this.#target.topic],
      ],
      plainColumns: highCardinalityColumns(batch.table),
    };
    const nullable = fields.map((f) => f.nullable);
    // Buffers: one per row group in flight, plus the one being filled.
    this.#serializer = new RowGroupSerializer(batch.table.schema, nullable, job.jobId, job.command.file_version_id, this.#rowGroupSize, this.#maxInFlight + 1);
    this.#assembler = await ParquetAssembler.create(this.#stagingPath);
  }

  async #dispatch(): Promise<void> {
    const parts = this.#pending;
    this.#pending = [];
    this.#pendingRows = 0;
    this.#dispatchBatches(parts);
    // Backpressure: a slow encoder slows the guest instead of growing memory.
    while (this.#inFlight.length >= this.#maxInFlight) await this.#drainOne();
  }

  #dispatchBatches(batches: RecordBatch[]): void {
    const ipc = this.#serializer!.serialize(batches);
    const encoding = this.#getPool().encode({ ipc, settings: this.#settings! }, { transfer: true });
    encoding.catch(() => {}); // awaited in order by #drainOne; this only silences the early rejection
    this.#inFlight.push(encoding);
    this.#pieces++;
  }

  async #drainOne(): Promise<void> {
    const { bytes, input } = await this.#inFlight.shift()!;
    this.#serializer!.recycle(input.buffer);
    await this.#assembler!.append(bytes);
    this.#getPool().release(bytes);
  }
}
