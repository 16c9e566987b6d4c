/**
 * The bundled Parquet sink: `parquet://relative/path.parquet[?compression=zstd&row_group_size=N]`.
 *
 *  - The path is relative to the output root; absolute paths and `..` escapes are refused.
 *  - A path not ending in `.parquet` is a directory: the file is `<dir>/data.parquet`
 *    (append: `<dir>/data_<job id>.parquet`), as upstream wrote `parquet://./output/<topic>`.
 *  - append → `<stem>_<job id>.parquet` (one file per job); replace → atomically replaces
 *    the target; error → fails if the target exists (checked at open, and atomically at commit).
 *  - Written under a staging name beside the target, fsynced, renamed on commit. In a job
 *    with other sinks, the file a commit replaces is kept as a backup until every sink
 *    has committed, so that `resolve` can put it back (sinks/files.ts resolvePublished).
 *  - Written as batches arrive by the native engine (parquet-native.ts: arrow-rs built at
 *    install, each batch's IPC bytes handed over as the host holds them, lineage added and
 *    columns encoded on every core, off the JS thread), beside the main thread that reads
 *    the guest: memory is bounded by the row group being filled plus the batches in flight.
 *  - Without the addon (or with engine "wasm"): parquet-wasm's public streaming writer
 *    (parquet-engine.ts) in a writer thread (parquet-writers.ts). Tiny chunks are coalesced
 *    before they cross to the thread (at most COALESCE_ROWS rows, COALESCE_BYTES of
 *    retained frames or COALESCE_BATCHES record batches), so a million one-row chunks cost
 *    no more memory than a few big ones.
 *  - Lineage columns `_job_id` (uint64) and `_file_version_id` (int64) are appended to every
 *    row; key-value metadata carries the job id, plugin name, env hash and worker id.
 *  - A topic that never produced a batch publishes nothing (there is no schema to write).
 */
import { rename } from "node:fs/promises";
import { dirname } from "node:path";
import { closeSync, constants as fsConstants, openSync, unlinkSync } from "node:fs";
import { assertInsideRoot, assertInsideRootSync, type EscapeContext, isInsideRoot } from "../core/kernel/inside-root.js";
import { Errors, systemErrorHint } from "../core/kernel/errors.js";
import { defineSink, type Artifact, type Batch, type CommitOptions, type Sink, type SinkContext, type SinkPlugin, type SinkTarget } from "./api.js";
import {
  assertTargetFree,
  fileLocationFor,
  finalPathFor,
  isPublishHandle,
  publishHandle,
  publishStaged,
  removeIfPresent,
  removeStaleStaging,
  resolvePublished,
  stagingPathFor,
  type PublishHandle,
} from "./files.js";
import { DataType, tableFromIPC, tableToIPC, type RecordBatch, type Schema } from "apache-arrow";
import { highCardinalityColumns } from "./dictionary.js";
import {
  LINEAGE_FILE_VERSION_ID,
  LINEAGE_JOB_ID,
  parquetOptions,
  type CompressionName,
  type ParquetConfig,
  type ParquetOptions,
  type WriterSettings,
} from "./parquet-settings.js";
import { LineageSerializer } from "./parquet-lineage.js";
import { loadNativeEngine, NativeParquetFile, type NativeFileReport } from "./parquet-native.js";
import { ParquetWriterPool, type ParquetFileStream, type WriteReport } from "./parquet-writers.js";
import { castTable, conformsTo } from "./schema.js";
import { VerifiedDirectories } from "./directories.js";
import { resolveInsideRoot } from "./uri.js";

/** The file inside a directory location (append mode adds `_<job id>`). */
const DIRECTORY_FILE = "data.parquet";
const INT64_MAX = (1n << 63n) - 1n;
const INT64_MIN = -(1n << 63n);

export type { ParquetConfig, ParquetOptions };

type NativeAddon = Extract<ReturnType<typeof loadNativeEngine>, { addon: unknown }>["addon"];

export function parquetSink(): SinkPlugin<ParquetOptions> {
  // Shared by every job of this plugin instance; started on first use, closed at shutdown.
  let pool: ParquetWriterPool | null = null;
  const getPool = (threads: number) => (pool ??= new ParquetWriterPool(threads));
  let warned = false;
  // The output directories of this plugin instance's jobs, verified once (directories.ts).
  const directories = new VerifiedDirectories();

  return defineSink({
    name: "parquet",
    schemes: ["parquet"],
    // Coalesced batches are retained until serialized (ParquetTopicSink#flush); the native
    // engine copies each batch before write resolves.
    usesRetain: true,
    concurrentPrepare: true,
    options: parquetOptions,
    uriOptions: ["compression", "rowGroupSize"],
    create(target, context) {
      if (context.options.engine === "native") {
        const native = loadNativeEngine();
        if ("addon" in native) return new ParquetTopicSink(target, context, { native: native.addon }, directories);
        if (!warned) {
          warned = true;
          const unavailable = Errors.PARQUET_NATIVE_UNAVAILABLE([native.error.message]);
          context.logger.warn({ code: unavailable.code, hint: unavailable.hint }, unavailable.message);
        }
      }
      const writers = getPool(context.options.encoderThreads);
      // Threads instantiate parquet-wasm while the guest is still starting up.
      writers.prestart();
      return new ParquetTopicSink(target, context, { wasm: () => writers }, directories);
    },
    checkTarget(target, { outputRoot }) {
      targetPath(target, outputRoot);
    },
    async recover({ outputRoot, logger }) {
      await removeStaleStaging(outputRoot, logger);
    },
    async resolve(handle, decision) {
      if (!isPublishHandle(handle)) throw new Error(`not a Parquet sink handle: ${JSON.stringify(handle)}`);
      await resolvePublished(handle, decision);
    },
    async close() {
      const closing = pool;
      pool = null;
      await closing?.close();
    },
  });
}

/** Rows gathered before they cross to the writer: enough that tiny chunks cost little per row. */
const COALESCE_ROWS = 65_536;
/** Bytes of guest frames held while gathering: caps memory when chunks are tiny but many. */
const COALESCE_BYTES = 8 * 1024 * 1024;
/**
 * Record batches held while gathering. Each one-row chunk costs a few KB of JS objects
 * (its decoded batch, schema and views); held for longer than a young-generation
 * collection they are promoted and pile up as old garbage until a full one: with 5,000
 * held at once, 100,000 one-row chunks peaked at 450 MB of RSS; with 256, at about 200.
 */
const COALESCE_BATCHES = 256;
/**
 * Rows per IPC stream sent to the writer: a larger chunk is cut into zero-copy slices of
 * at most this many rows. The writer's wasm memory holds the streams in flight and never
 * shrinks (47 MB with 64 Ki-row streams on the bridge bench, 14 MB with 16 Ki-row ones),
 * but smaller streams cost speed: the sink-alone bench took 2.57 s with 32 Ki-row streams
 * against 1.84 s with 64 Ki-row ones.
 */
const STREAM_ROWS = 65_536;
/** IPC streams queued for the writer per file: one being encoded, one ready. */
const MAX_IN_FLIGHT = 2;

/** Which engine writes a topic's file: the native addon, or parquet-wasm's writer threads. */
type Engine = { native: NativeAddon } | { wasm: () => ParquetWriterPool };

/** The file a target's URI names inside the output root; throws CSP_SINK_BAD_URI / CSP_SINK_PATH_ESCAPE. */
function targetPath(target: SinkTarget, outputRoot: string): string {
  return resolveInsideRoot(outputRoot, fileLocationFor(target.parsed.location, ".parquet", DIRECTORY_FILE), target.uri);
}

/**
 * Creates the (empty) staging file here, on the main thread, right after checking that its
 * directory is inside the root, and returns its descriptor: the native engine writes
 * through a duplicate of it; the wasm writer thread opens the file later, without O_CREAT
 * and without following a symlink, so a directory swapped in between makes that open fail
 * instead of creating a file wherever the swap points. A file already at the name (a
 * leftover of a dead process with our pid, or a planted symlink) is unlinked, never
 * written through.
 */
function createStagingFile(outputRoot: string, stagingPath: string, where: EscapeContext): number {
  assertInsideRootSync(outputRoot, dirname(stagingPath), where);
  const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW;
  try {
    return openSync(stagingPath, flags, 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    unlinkSync(stagingPath);
    return openSync(stagingPath, flags, 0o644);
  }
}

class ParquetTopicSink implements Sink {
  readonly #target: SinkTarget;
  readonly #context: SinkContext<ParquetOptions>;
  readonly #engine: Engine;
  readonly #directories: VerifiedDirectories;
  readonly #targetPath: string;
  readonly #finalPath: string;
  readonly #stagingPath: string;
  readonly #compression: CompressionName;
  readonly #rowGroupSize: number;

  #schema: Schema | null = null;
  #settings: WriterSettings | null = null;
  #serializer: LineageSerializer | null = null;
  #stream: ParquetFileStream | null = null;
  #native: NativeParquetFile | null = null;
  /** Record batches not yet handed to the writer: views of the guest's frames. */
  #pending: RecordBatch[] = [];
  /** The releases of the batches whose frames #pending views (Batch.retain()). */
  #holds: Array<() => void> = [];
  #pendingRows = 0;
  #pendingBytes = 0;
  #rows = 0;
  #report: WriteReport | NativeFileReport | null = null;
  #handle: PublishHandle | null = null;

  constructor(target: SinkTarget, context: SinkContext<ParquetOptions>, engine: Engine, directories: VerifiedDirectories) {
    this.#target = target;
    this.#context = context;
    this.#engine = engine;
    this.#directories = directories;
    const { uri, mode } = target;
    const job = context.job;
    this.#compression = context.options.compression;
    this.#rowGroupSize = context.options.rowGroupSize;
    this.#targetPath = targetPath(target, job.outputRoot);
    this.#finalPath = finalPathFor(this.#targetPath, mode, job.jobId);
    this.#stagingPath = stagingPathFor(this.#finalPath, job.jobId);
    const fileVersionId = job.command.fileVersionId;
    if (fileVersionId > INT64_MAX || fileVersionId < INT64_MIN) {
      throw Errors.SINK_WRITE_FAILED([uri, `file_version_id ${fileVersionId} does not fit the int64 lineage column _file_version_id`], {
        context: { jobId: job.jobId, sinkUri: uri },
      });
    }
  }

  /** Which engine wrote the file, once it is prepared (null before). */
  get report(): WriteReport | NativeFileReport | null {
    return this.#report;
  }

  async open(): Promise<void> {
    const { job } = this.#context;
    // The lexical check in resolveInsideRoot cannot see symlinks; this walks the real paths, level by level
    // (or finds them as a walk left them: directories.ts).
    await this.#directories.make(job.outputRoot, dirname(this.#finalPath), { uri: this.#target.uri, jobId: job.jobId });
    await assertTargetFree(this.#finalPath, this.#target.mode, this.#target.uri, job.jobId);
  }

  async write(batch: Batch): Promise<void> {
    const table = batch.table;
    if (this.#schema === null) this.#begin(table.schema, batch);
    else if (!sameColumns(table.schema, this.#schema)) await this.#widen(table.schema);
    // Views only: the frame stays ours, past this call, until #flush has serialized them.
    // The native engine copies the bytes before its write returns: it holds nothing.
    if (this.#native === null) this.#holds.push(batch.retain());
    for (const recordBatch of table.batches) {
      if (recordBatch.numRows === 0) continue;
      const column = nullsInRequired(this.#schema!, recordBatch);
      if (column !== null) {
        throw Errors.SINK_SCHEMA_MISMATCH([this.#target.topic, `column "${column}" has nulls, but the topic's first batch declared it non-nullable`], {
          context: { jobId: this.#context.job.jobId, sinkUri: this.#target.uri },
          hint: "declare the column nullable in the plugin's first batch",
        });
      }
      if (this.#native === null) {
        this.#pending.push(recordBatch);
        this.#pendingRows += recordBatch.numRows;
      }
    }
    if (this.#native !== null) {
      // The frame's bytes as the host holds them: the native side decodes them and adds lineage.
      if (batch.numRows > 0) await this.#failed(this.#native.write(batch.ipc));
      this.#rows += batch.numRows;
      return;
    }
    this.#pendingBytes += batch.ipc.buffer.byteLength;
    if (this.#pendingRows >= Math.min(COALESCE_ROWS, this.#rowGroupSize) || this.#pendingBytes >= COALESCE_BYTES || this.#pending.length >= COALESCE_BATCHES) {
      await this.#flush();
    }
  }

  async prepare(): Promise<PublishHandle | undefined> {
    if (this.#native !== null) {
      this.#report = await this.#failed(this.#native.finish());
    } else {
      if (this.#stream === null) return undefined;
      // No rows at all still sends one (empty) stream: the file gets its schema.
      if (this.#pendingRows > 0 || this.#rows === 0) await this.#flush();
      this.#report = await this.#failed(this.#stream.finish());
    }
    this.#context.logger.debug({ file: this.#stagingPath, ...this.#report }, "Parquet file written");
    // The staging file gone from its directory since it was opened (the native engine keeps
    // writing through its descriptor): that directory may now lead elsewhere, and if so, say that.
    this.#handle = await publishHandle(this.#stagingPath, this.#finalPath, this.#context.job.jobId).catch(async (err: unknown) => {
      await this.#refuseEscape(err);
      throw err;
    });
    return this.#handle;
  }

  async commit(options?: CommitOptions): Promise<Artifact[]> {
    const { job, logger } = this.#context;
    if (this.#stream === null && this.#native === null) {
      logger.warn({ file: this.#finalPath }, "topic produced no batch: no Parquet file published");
      return [];
    }
    if (this.#report === null) throw new Error("commit before prepare");
    const backup = options?.undo === true ? this.#handle?.backup : undefined;
    await publishStaged(this.#stagingPath, this.#finalPath, this.#target.mode, this.#target.uri, job.jobId, { backup, outputRoot: job.outputRoot });
    logger.debug({ file: this.#finalPath }, "Parquet file published");
    return [{ topic: this.#target.topic, uri: `parquet://${this.#finalPath}` }];
  }

  async abort(reason: Error): Promise<void> {
    this.#pending = [];
    this.#release(this.#holds.splice(0));
    await this.#stream?.abort(reason.message);
    await this.#native?.abort();
    // A directory swapped for a symlink to elsewhere: its files are not ours to delete.
    if (await isInsideRoot(this.#context.job.outputRoot, dirname(this.#stagingPath))) await removeIfPresent(this.#stagingPath);
    else this.#context.logger.warn({ file: this.#stagingPath }, "staging directory now leads outside the output root; staging file left alone");
  }

  #begin(schema: Schema, batch: Batch): void {
    const { job } = this.#context;
    for (const reserved of [LINEAGE_JOB_ID, LINEAGE_FILE_VERSION_ID]) {
      if (schema.fields.some((f) => f.name === reserved)) {
        throw Errors.SINK_SCHEMA_MISMATCH([this.#target.topic, `column "${reserved}" is reserved for lineage`], {
          context: { jobId: job.jobId, sinkUri: this.#target.uri },
        });
      }
    }
    const settings: WriterSettings = {
      compression: this.#compression,
      rowGroupSize: this.#rowGroupSize,
      metadata: [
        ["casparian.job_id", job.jobId.toString()],
        ["casparian.plugin_name", job.command.pluginName],
        ["casparian.env_hash", job.command.envHash],
        ["casparian.worker_id", job.workerId],
        ["casparian.file_version_id", job.command.fileVersionId.toString()],
        ["casparian.topic", this.#target.topic],
      ],
      plainColumns: highCardinalityColumns(batch.table),
    };
    this.#settings = settings;
    this.#open(schema, batch.ipc);
  }

  /** Starts the staging file in `schema`; `schemaIpc`, when given, is an IPC stream that starts with exactly that schema. */
  #open(schema: Schema, schemaIpc?: Uint8Array): void {
    const { job } = this.#context;
    const fd = createStagingFile(job.outputRoot, this.#stagingPath, { uri: this.#target.uri, jobId: job.jobId });
    this.#schema = schema;
    if ("native" in this.#engine) {
      const lineage = { jobId: job.jobId, fileVersionId: job.command.fileVersionId };
      try {
        this.#native = new NativeParquetFile(this.#engine.native, fd, schema, this.#settings!, lineage, MAX_IN_FLIGHT, schemaIpc);
      } catch (err) {
        throw this.#writeFailed(err);
      } finally {
        closeSync(fd);
      }
      return;
    }
    closeSync(fd);
    this.#serializer = new LineageSerializer(
      schema,
      schema.fields.map((f) => f.nullable),
      job.jobId,
      job.command.fileVersionId,
    );
    this.#stream = this.#engine.wasm().open(this.#stagingPath, this.#settings!, MAX_IN_FLIGHT);
  }

  /**
   * The topic's schema widened (sinks/schema.ts: a null placeholder got its type, a
   * narrower type or a non-nullable column widened): what is written so far is finished,
   * then copied row group by row group into a new file of the wider schema, and the job
   * goes on there. Rare (it happens once per widening, usually within the first
   * batches), and its memory is one row group.
   */
  async #widen(schema: Schema): Promise<void> {
    if (this.#native !== null) {
      await this.#failed(this.#native.finish());
      this.#native = null;
    } else {
      if (this.#pendingRows > 0) await this.#flush();
      await this.#failed(this.#stream!.finish());
    }
    const previous = stagingPathFor(`${this.#finalPath}.narrower`, this.#context.job.jobId);
    await rename(this.#stagingPath, previous);
    try {
      this.#open(schema);
      // #open set it again (the compiler still sees the null assigned above).
      const native = this.#native as NativeParquetFile | null;
      const columns = schema.fields.map((f) => f.name);
      const { readRowGroups } = await import("./parquet-engine.js");
      for await (const ipc of readRowGroups(previous)) {
        const written = tableFromIPC(ipc);
        const data = castTable(written.select(written.schema.fields.map((f) => f.name).filter((name) => columns.includes(name))), schema);
        if (native !== null) {
          if (data.numRows > 0) await this.#failed(native.write(tableToIPC(data, "stream")));
          continue;
        }
        this.#pending = [...data.batches];
        this.#pendingRows = data.numRows;
        this.#rows -= data.numRows; // counted once already
        await this.#flush();
      }
    } finally {
      await removeIfPresent(previous);
    }
  }

  async #flush(): Promise<void> {
    const batches = this.#pending;
    const holds = this.#holds.splice(0);
    this.#pending = [];
    this.#rows += this.#pendingRows;
    this.#pendingRows = 0;
    this.#pendingBytes = 0;
    const stream = this.#stream!;
    try {
      for (const piece of streamPieces(batches, STREAM_ROWS)) {
        // A copy into the writer's buffer: the frames are not needed after the last piece.
        const ipc = this.#serializer!.serialize(piece, (size) => stream.takeBuffer(size));
        // Backpressure: a slow writer slows the guest instead of growing memory.
        await this.#failed(stream.write(ipc));
      }
    } finally {
      this.#release(holds);
    }
  }

  #release(holds: Array<() => void>): void {
    for (const release of holds) release();
  }

  /** The writer's failure, as the sink's error: what broke, for which file. */
  async #failed<T>(work: Promise<T>): Promise<T> {
    try {
      return await work;
    } catch (err) {
      // The writer could not open its staging file because its directory now leads elsewhere: say that.
      await this.#refuseEscape(err);
      throw this.#writeFailed(err);
    }
  }

  /** Throws CSP_SINK_PATH_ESCAPE when `err` is a missing file or a symlink because the staging directory now leads outside the root. */
  async #refuseEscape(err: unknown): Promise<void> {
    const { job } = this.#context;
    const message = err instanceof Error ? err.message : String(err);
    if (!/ENOENT|ELOOP/.test(message)) return;
    await assertInsideRoot(job.outputRoot, dirname(this.#stagingPath), { uri: this.#target.uri, jobId: job.jobId }).catch((refused: unknown) => {
      if (Errors.SINK_PATH_ESCAPE.is(refused)) throw refused;
    });
  }

  #writeFailed(err: unknown): Error {
    const { job } = this.#context;
    const message = err instanceof Error ? err.message : String(err);
    const cause = /ENOSPC/.test(message) ? "no space left on the device" : message;
    return Errors.SINK_WRITE_FAILED([this.#target.uri, cause], {
      context: { jobId: job.jobId, sinkUri: this.#target.uri, file: this.#stagingPath },
      cause: err,
      hint:
        systemErrorHint(err) ??
        (/malformed Arrow IPC/.test(message) ? "the batch is not a valid Arrow IPC stream: a bug in the guest's encoder or in the host's framing" : undefined),
    });
  }
}

/**
 * The batches cut into runs of at most `rows` rows (zero-copy slices), one IPC stream
 * each; with no rows at all, one empty run (the writer still learns the schema).
 */
function* streamPieces(batches: RecordBatch[], rows: number): Generator<RecordBatch[]> {
  let piece: RecordBatch[] = [];
  let filled = 0;
  for (const batch of batches) {
    for (let offset = 0; offset < batch.numRows; ) {
      const take = Math.min(rows - filled, batch.numRows - offset);
      piece.push(offset === 0 && take === batch.numRows ? batch : batch.slice(offset, offset + take));
      offset += take;
      filled += take;
      if (filled === rows) {
        yield piece;
        piece = [];
        filled = 0;
      }
    }
  }
  if (piece.length > 0 || batches.every((b) => b.numRows === 0)) yield piece;
}

/** True when batches of `schema` can go into a file of `file`'s schema as they are. */
function sameColumns(schema: Schema, file: Schema): boolean {
  return schema === file || conformsTo(schema, file);
}

/** Nullability is fixed by the first batch: a column declared non-nullable there must stay free of nulls. */
function nullsInRequired(schema: Schema, batch: RecordBatch): string | null {
  for (const [i, field] of schema.fields.entries()) {
    // A null-typed column (a placeholder) is all nulls by definition, declared or not.
    if (!field.nullable && !DataType.isNull(field.type) && (batch.getChildAt(i)?.nullCount ?? 0) > 0) return field.name;
  }
  return null;
}
