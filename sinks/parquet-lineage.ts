/**
 * Turns a sink's pending Arrow record batches into the IPC stream a Parquet writer takes,
 * lineage columns appended. apache-arrow serializes views of the guest's frames (no copy
 * of the data but the one into the outgoing buffer), so the writer thread needs neither
 * apache-arrow nor shared memory. Buffers come back from the writer and are reused.
 */
import { AsyncByteQueue, Field, Int64, RecordBatch, RecordBatchStreamWriter, Schema, Struct, Uint64, makeData, type Data } from "apache-arrow";
import { LINEAGE_FILE_VERSION_ID, LINEAGE_JOB_ID } from "./parquet-settings.js";

/** Builds the IPC streams of one topic of one job, in the file's schema plus lineage. */
export class LineageSerializer {
  readonly #schema: Schema;
  readonly #jobId: bigint;
  readonly #fileVersionId: bigint;
  #jobIds: BigUint64Array;
  #versionIds: BigInt64Array;

  /**
   * @param input     the topic's schema (from its first batch)
   * @param nullable  nullability of each data column, fixed by the first batch
   */
  constructor(input: Schema, nullable: boolean[], jobId: bigint, fileVersionId: bigint) {
    const fields = input.fields.map((f, i) => new Field(f.name, f.type, nullable[i] ?? f.nullable, f.metadata));
    fields.push(new Field(LINEAGE_JOB_ID, new Uint64(), false), new Field(LINEAGE_FILE_VERSION_ID, new Int64(), false));
    this.#schema = new Schema(fields, input.metadata);
    this.#jobId = jobId;
    this.#fileVersionId = fileVersionId;
    this.#jobIds = new BigUint64Array(0);
    this.#versionIds = new BigInt64Array(0);
  }

  /**
   * Serialises the batches (all in the topic's schema) into one IPC stream, in a buffer
   * from `reuse` when it has one big enough. With no rows at all, the stream carries one
   * empty batch, so the writer still learns the schema (an empty but typed file).
   */
  serialize(batches: readonly RecordBatch[], reuse: (size: number) => ArrayBuffer | undefined): Uint8Array {
    const chunks = new ChunkCollector();
    const writer = new RecordBatchStreamWriter();
    writer.reset(chunks, this.#schema);
    let rows = 0;
    for (const batch of batches) {
      if (batch.numRows === 0) continue;
      writer.write(this.#withLineage(batch));
      rows += batch.numRows;
    }
    if (rows === 0) writer.write(this.#withLineage(this.#empty()));
    writer.finish();
    const buffer = reuse(chunks.byteLength) ?? new ArrayBuffer(Math.ceil((chunks.byteLength * 1.25) / 8) * 8);
    const out = new Uint8Array(buffer, 0, chunks.byteLength);
    let at = 0;
    for (const chunk of chunks.chunks) {
      out.set(chunk, at);
      at += chunk.byteLength;
    }
    return out;
  }

  /** A zero-row batch of the data columns (apache-arrow fills in empty buffers for each type). */
  #empty(): RecordBatch {
    const fields = this.#schema.fields.slice(0, -2);
    const children = fields.map((f) => makeData({ type: f.type, length: 0, nullCount: 0 } as Parameters<typeof makeData>[0]));
    return new RecordBatch(new Schema(fields), makeData({ type: new Struct(fields), length: 0, nullCount: 0, children }));
  }

  #withLineage(batch: RecordBatch): RecordBatch {
    const n = batch.numRows;
    if (this.#jobIds.length < n) {
      // One value repeated: filled once, then every batch takes a view of the length it needs.
      this.#jobIds = new BigUint64Array(n).fill(this.#jobId);
      this.#versionIds = new BigInt64Array(n).fill(this.#fileVersionId);
    }
    const jobIds = makeData({ type: new Uint64(), length: n, nullCount: 0, data: this.#jobIds.subarray(0, n) });
    const versionIds = makeData({ type: new Int64(), length: n, nullCount: 0, data: this.#versionIds.subarray(0, n) });
    const children: Data[] = [...batch.data.children.slice(0, this.#schema.fields.length - 2), jobIds, versionIds];
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
