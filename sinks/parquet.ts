/**
 * The bundled Parquet sink: `parquet://relative/path.parquet[?compression=zstd&row_group_size=N]`.
 *
 *  - The path is relative to the output root; absolute paths and `..` escapes are refused.
 *  - append → `<stem>_<job id>.parquet` (one file per job); replace → atomically replaces
 *    the target; error → fails if the target exists (checked at open, and atomically at commit).
 *  - Written under a staging name beside the target, fsynced, renamed on commit.
 *  - Row groups are encoded as batches arrive, in encoder threads, and stitched into one
 *    file (parquet-assembler.ts): memory is bounded by the row groups in flight.
 *  - Lineage columns `_job_id` (uint64) and `_file_version_id` (int64) are appended to every
 *    row; key-value metadata carries the job id, plugin name, env hash and worker id.
 *  - A topic that never produced a batch publishes nothing (there is no schema to write).
 */
import { availableParallelism } from "node:os";
import { mkdir, realpath } from "node:fs/promises";
import { dirname, relative, isAbsolute } from "node:path";
import type { ParquetConfig } from "../core/config.js";
import { Errors } from "../core/errors.js";
import { defineSink, type Artifact, type Batch, type Sink, type SinkContext, type SinkPlugin, type SinkTarget } from "./api.js";
import { assertTargetFree, finalPathFor, publishStaged, removeIfPresent, removeStaleStaging, stagingPathFor } from "./files.js";
import { highCardinalityColumns } from "./dictionary.js";
import { ParquetAssembler } from "./parquet-assembler.js";
import { COMPRESSIONS, LINEAGE_FILE_VERSION_ID, LINEAGE_JOB_ID, type CompressionName, type EncodePart, type EncodeSettings } from "./parquet-encode.js";
import { EncoderPool } from "./parquet-pool.js";
import { positiveIntParam, rejectUnknownParams, resolveInsideRoot } from "./uri.js";

export const DEFAULT_ROW_GROUP_SIZE = 122_880;
const URI_PARAMS = ["compression", "row_group_size"] as const;
const INT64_MAX = (1n << 63n) - 1n;
const INT64_MIN = -(1n << 63n);

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
  if (!(compression in COMPRESSIONS)) {
    throw Errors.CONFIG_INVALID(["parquet.compression", `unknown codec ${JSON.stringify(options.compression)} (known: ${Object.keys(COMPRESSIONS).join(", ")})`]);
  }
  const rowGroupSize = options.rowGroupSize ?? DEFAULT_ROW_GROUP_SIZE;
  if (!Number.isSafeInteger(rowGroupSize) || rowGroupSize <= 0) {
    throw Errors.CONFIG_INVALID(["parquet.rowGroupSize", `expected a positive integer, got ${String(options.rowGroupSize)}`]);
  }
  const encoderThreads = options.encoderThreads ?? Math.min(8, availableParallelism());
  if (!Number.isSafeInteger(encoderThreads) || encoderThreads < 0) {
    throw Errors.CONFIG_INVALID(["parquet.encoderThreads", `expected an integer >= 0, got ${String(options.encoderThreads)}`]);
  }
  return { compression: compression as CompressionName, rowGroupSize, encoderThreads };
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

  #settings: EncodeSettings | null = null;
  #assembler: ParquetAssembler | null = null;
  /** Rows waiting to fill the current row group. */
  #pending: EncodePart[] = [];
  #pendingRows = 0;
  /** Row groups being encoded, in file order. */
  #inFlight: Array<Promise<Uint8Array>> = [];
  #pieces = 0;
  /** A zero-row first batch, kept to write the schema of an empty output. */
  #schemaPart: EncodePart | null = null;
  #prepared = false;

  constructor(target: SinkTarget, context: SinkContext, config: ResolvedParquetConfig, getPool: () => EncoderPool) {
    this.#target = target;
    this.#context = context;
    this.#getPool = getPool;
    const { parsed, uri, mode } = target;
    const job = context.job;
    rejectUnknownParams(parsed, URI_PARAMS, uri);
    const compression = (parsed.params.get("compression") ?? config.compression).toLowerCase();
    if (!(compression in COMPRESSIONS)) {
      throw Errors.SINK_BAD_URI([uri, `unknown compression ${JSON.stringify(compression)} (known: ${Object.keys(COMPRESSIONS).join(", ")})`], { context: { jobId: job.jobId, sinkUri: uri } });
    }
    this.#compression = compression as CompressionName;
    this.#rowGroupSize = positiveIntParam(parsed, "row_group_size", uri) ?? config.rowGroupSize;
    this.#maxInFlight = Math.max(1, config.encoderThreads) + 1;
    this.#targetPath = resolveInsideRoot(job.outputRoot, parsed.location, uri);
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
    // The bridge may reuse its buffer once we return, and encoder threads read this
    // from another thread: copy once into shared memory, then pass views around.
    const shared = new Uint8Array(new SharedArrayBuffer(batch.ipc.byteLength));
    shared.set(batch.ipc);
    if (this.#settings === null) await this.#begin(batch, shared);
    let offset = 0;
    while (offset < batch.numRows) {
      const take = Math.min(batch.numRows - offset, this.#rowGroupSize - this.#pendingRows);
      this.#pending.push({ ipc: shared, offset, length: take });
      this.#pendingRows += take;
      offset += take;
      if (this.#pendingRows === this.#rowGroupSize) await this.#dispatch();
    }
  }

  async prepare(): Promise<void> {
    if (this.#settings === null) return;
    if (this.#pendingRows > 0) await this.#dispatch();
    // No rows at all: encode the schema alone, so the output is an empty but typed file.
    if (this.#pieces === 0) this.#dispatchParts([this.#schemaPart!]);
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

  async #begin(batch: Batch, shared: Uint8Array): Promise<void> {
    const { job } = this.#context;
    const fields = batch.table.schema.fields;
    for (const reserved of [LINEAGE_JOB_ID, LINEAGE_FILE_VERSION_ID]) {
      if (fields.some((f) => f.name === reserved)) {
        throw Errors.SINK_SCHEMA_MISMATCH([this.#target.topic, `column "${reserved}" is reserved for lineage`], { context: { jobId: job.jobId, sinkUri: this.#target.uri } });
      }
    }
    // Only needed when the whole topic has no rows, which implies this first batch has none.
    if (batch.numRows === 0) this.#schemaPart = { ipc: shared, offset: 0, length: 0 };
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
      jobId: job.jobId,
      fileVersionId: job.command.file_version_id,
      nullable: fields.map((f) => f.nullable),
      plainColumns: highCardinalityColumns(batch.table),
    };
    this.#assembler = await ParquetAssembler.create(this.#stagingPath);
  }

  async #dispatch(): Promise<void> {
    const parts = this.#pending;
    this.#pending = [];
    this.#pendingRows = 0;
    this.#dispatchParts(parts);
    // Backpressure: a slow encoder slows the guest instead of growing memory.
    while (this.#inFlight.length >= this.#maxInFlight) await this.#drainOne();
  }

  #dispatchParts(parts: EncodePart[]): void {
    const encoding = this.#getPool().encode({ parts, settings: this.#settings! });
    encoding.catch(() => {}); // awaited in order by #drainOne; this only silences the early rejection
    this.#inFlight.push(encoding);
    this.#pieces++;
  }

  async #drainOne(): Promise<void> {
    const bytes = await this.#inFlight.shift()!;
    await this.#assembler!.append(bytes);
  }
}
