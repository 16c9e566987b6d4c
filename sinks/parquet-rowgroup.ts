/**
 * Turns one row group's worth of Arrow record batches into the single IPC stream an
 * encoder thread hands to parquet-wasm, lineage columns included. Runs on the main
 * thread, so the encoder threads need neither apache-arrow nor shared copies of the
 * guest's frames: the slices here are views over the frames, and the only copy is the
 * one into a pooled buffer that is transferred to the thread and transferred back.
 *
 * Deliberately free of parquet-wasm: the main thread never instantiates the wasm
 * module unless it encodes itself (encoderThreads 0).
 */
import { AsyncByteQueue, Field, Int64, RecordBatch, RecordBatchStreamWriter, Schema, Struct, Uint64, makeData, type Data } from "apache-arrow";

export const LINEAGE_JOB_ID = "_job_id";
export const LINEAGE_FILE_VERSION_ID = "_file_version_id";

export const COMPRESSION_NAMES = ["snappy", "zstd", "gzip", "brotli", "lz4", "lz4_raw", "uncompressed", "none"] as const;
export type CompressionName = (typeof COMPRESSION_NAMES)[number];

export function isCompressionName(name: string): name is CompressionName {
  return (COMPRESSION_NAMES as readonly string[]).includes(name);
}

/** What an encoder thread needs besides the data: everything is plain and structured-cloneable. */
export interface WriterSettings {
  compression: CompressionName;
  rowGroupSize: number;
  /** File key-value metadata. */
  metadata: Array<[string, string]>;
  /** Columns written without dictionary encoding (high-cardinality data gains nothing from it). */
  plainColumns: string[];
}

/** One row group as a complete Arrow IPC stream (schema, batches, end-of-stream marker). */
export interface EncodeTask {
  ipc: Uint8Array;
  settings: WriterSettings;
}

/**
 * Builds row-group IPC streams for one topic of one job. Keeps a few reusable buffers
 * (one per row group in flight), so a long job allocates no new buffer per row group.
 */
export class RowGroupSerializer {
  readonly #schema: Schema;
  readonly #jobIds: BigUint64Array;
  readonly #versionIds: BigInt64Array;
  readonly #free: ArrayBuffer[] = [];
  readonly #maxFree: number;

  /**
   * @param input     the topic's schema (from its first batch)
   * @param nullable  nullability of each data column, fixed by the first batch
   * @param maxRows   the most rows one call will see (the row-group size)
   * @param maxFree   how many idle buffers to keep for reuse
   */
  constructor(input: Schema, nullable: boolean[], jobId: bigint, fileVersionId: bigint, maxRows: number, maxFree: number) {
    const fields = input.fields.map((f, i) => new Field(f.name, f.type, nullable[i] ?? f.nullable, f.metadata));
    fields.push(new Field(LINEAGE_JOB_ID, new Uint64(), false), new Field(LINEAGE_FILE_VERSION_ID, new Int64(), false));
    this.#schema = new Schema(fields, input.metadata);
    // One value repeated: filled once, then every batch takes a view of the length it needs.
    this.#jobIds = new BigUint64Array(maxRows).fill(jobId);
    this.#versionIds = new BigInt64Array(maxRows).fill(fileVersionId);
    this.#maxFree = maxFree;
  }

  /** Serialises the batches (all sharing the topic's schema) into one IPC stream in a pooled buffer. */
  serialize(batches: readonly RecordBatch[]): Uint8Array {
    const chunks = new ChunkCollector();
    const writer = new RecordBatchStreamWriter();
    writer.reset(chunks, this.#schema);
    for (const batch of batches) {
      if (batch.numRows > 0) writer.write(this.#withLineage(batch));
    }
    writer.finish();
    const out = this.#take(chunks.byteLength);
    let at = 0;
    for (const chunk of chunks.chunks) {
      out.set(chunk, at);
      at += chunk.byteLength;
    }
    return out;
  }

  /** Hands a buffer from `serialize` back once its encoding is done. */
  recycle(buffer: ArrayBufferLike): void {
    // A transferred-away (detached) buffer has length 0.
    if (buffer instanceof ArrayBuffer && buffer.byteLength > 0 && this.#free.length < this.#maxFree) this.#free.push(buffer);
  }

  #take(size: number): Uint8Array {
    const index = this.#free.findIndex((b) => b.byteLength >= size);
    // Some headroom, so a slightly larger row group (longer strings) does not reallocate.
    const buffer = index >= 0 ? this.#free.splice(index, 1)[0]! : new ArrayBuffer(Math.ceil((size * 1.25) / 8) * 8);
    return new Uint8Array(buffer, 0, size);
  }

  #withLineage(batch: RecordBatch): RecordBatch {
    const n = batch.numRows;
    const jobIds = makeData({ type: new Uint64(), length: n, nullCount: 0, data: this.#jobIds.subarray(0, n) });
    const versionIds = makeData({ type: new Int64(), length: n, nullCount: 0, data: this.#versionIds.subarray(0, n) });
    const children: Data[] = [...batch.data.children, jobIds, versionIds];
    return new RecordBatch(this.#schema, makeData({ type: new Struct(this.#schema.fields), length: n, nullCount: 0, children }));
  }
}

/** Receives the writer's output as views (the writer does not copy column buffers), without joining them. */
class ChunkCollector extends AsyncByteQueue {
  readonly chunks: Uint8Array[] = [];
  byteLength = 0;

  override write(value: Uint8Array): void {
    if (value.byteLength === 0) return;
    this.chunks.push(value);
    this.byteLength += value.byteLength;
  }
}
