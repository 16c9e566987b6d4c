/**
 * Encodes one row group: slices of Arrow IPC streams in, a complete small Parquet
 * file out (parquet-wasm). Runs in an encoder thread (parquet-worker.ts) or, with
 * encoderThreads 0, on the main thread. The pieces are stitched into the job's
 * file by ParquetAssembler.
 */
import { Field, Int64, RecordBatch, Schema, Struct, Table, Uint64, makeData, tableFromIPC, tableToIPC } from "apache-arrow";
import * as wasm from "parquet-wasm";

export const LINEAGE_JOB_ID = "_job_id";
export const LINEAGE_FILE_VERSION_ID = "_file_version_id";

export const COMPRESSIONS = {
  snappy: wasm.Compression.SNAPPY,
  zstd: wasm.Compression.ZSTD,
  gzip: wasm.Compression.GZIP,
  brotli: wasm.Compression.BROTLI,
  lz4: wasm.Compression.LZ4_RAW,
  lz4_raw: wasm.Compression.LZ4_RAW,
  uncompressed: wasm.Compression.UNCOMPRESSED,
  none: wasm.Compression.UNCOMPRESSED,
} as const;
export type CompressionName = keyof typeof COMPRESSIONS;

/** Rows [offset, offset + length) of one batch's IPC stream. */
export interface EncodePart {
  ipc: Uint8Array;
  offset: number;
  length: number;
}

export interface EncodeSettings {
  compression: CompressionName;
  rowGroupSize: number;
  /** File key-value metadata. */
  metadata: Array<[string, string]>;
  jobId: bigint;
  fileVersionId: bigint;
  /** Nullability of each data column, fixed by the topic's first batch. */
  nullable: boolean[];
  /** Columns written without dictionary encoding (high-cardinality strings gain nothing from it). */
  plainColumns: string[];
}

export interface EncodeTask {
  parts: EncodePart[];
  settings: EncodeSettings;
}

export function encodeRowGroup(task: EncodeTask): Uint8Array {
  const { settings } = task;
  let schema: Schema | null = null;
  const batches: RecordBatch[] = [];
  for (const part of task.parts) {
    let table = tableFromIPC(part.ipc);
    if (part.offset !== 0 || part.length !== table.numRows) table = table.slice(part.offset, part.offset + part.length);
    schema ??= outputSchema(table.schema, settings.nullable);
    for (const batch of table.batches) {
      if (batch.numRows > 0) batches.push(withLineage(batch, schema, settings));
    }
  }
  if (schema === null) throw new Error("encodeRowGroup: no parts");
  const ipc = tableToIPC(new Table(schema, batches), "stream");
  const wasmTable = wasm.Table.fromIPCStream(ipc);
  return wasm.writeParquet(wasmTable, writerProperties(settings));
}

function outputSchema(input: Schema, nullable: boolean[]): Schema {
  const fields = input.fields.map((f, i) => new Field(f.name, f.type, nullable[i] ?? f.nullable, f.metadata));
  fields.push(new Field(LINEAGE_JOB_ID, new Uint64(), false), new Field(LINEAGE_FILE_VERSION_ID, new Int64(), false));
  return new Schema(fields, input.metadata);
}

function withLineage(batch: RecordBatch, schema: Schema, settings: EncodeSettings): RecordBatch {
  const n = batch.numRows;
  const jobIds = makeData({ type: new Uint64(), length: n, nullCount: 0, data: new BigUint64Array(n).fill(settings.jobId) });
  const versionIds = makeData({ type: new Int64(), length: n, nullCount: 0, data: new BigInt64Array(n).fill(settings.fileVersionId) });
  const children = [...batch.data.children, jobIds, versionIds];
  return new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: n, nullCount: 0, children }));
}

function writerProperties(settings: EncodeSettings): wasm.WriterProperties {
  let builder = new wasm.WriterPropertiesBuilder()
    .setCompression(COMPRESSIONS[settings.compression])
    .setMaxRowGroupSize(settings.rowGroupSize)
    .setKeyValueMetadata(new Map(settings.metadata));
  for (const column of settings.plainColumns) builder = builder.setColumnDictionaryEnabled(column, false);
  // Lineage columns hold one value: delta encoding stores it in a few bytes without
  // hashing every row into a dictionary first.
  for (const column of [LINEAGE_JOB_ID, LINEAGE_FILE_VERSION_ID]) {
    builder = builder.setColumnDictionaryEnabled(column, false).setColumnEncoding(column, wasm.Encoding.DELTA_BINARY_PACKED);
  }
  return builder.build();
}
