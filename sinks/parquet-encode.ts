/**
 * Encodes one row group: an Arrow IPC stream in (built by parquet-rowgroup.ts), a
 * complete small Parquet file out (parquet-wasm). Runs in an encoder thread
 * (parquet-worker.ts) or, with encoderThreads 0, on the main thread. The pieces are
 * stitched into the job's file by ParquetAssembler.
 */
import * as wasm from "parquet-wasm";
import { LINEAGE_FILE_VERSION_ID, LINEAGE_JOB_ID, type CompressionName, type EncodeTask, type WriterSettings } from "./parquet-rowgroup.js";

const COMPRESSIONS: Record<CompressionName, wasm.Compression> = {
  snappy: wasm.Compression.SNAPPY,
  zstd: wasm.Compression.ZSTD,
  gzip: wasm.Compression.GZIP,
  brotli: wasm.Compression.BROTLI,
  lz4: wasm.Compression.LZ4_RAW,
  lz4_raw: wasm.Compression.LZ4_RAW,
  uncompressed: wasm.Compression.UNCOMPRESSED,
  none: wasm.Compression.UNCOMPRESSED,
};

export function encodeRowGroup(task: EncodeTask): Uint8Array {
  // Both are consumed (freed in wasm memory) by writeParquet.
  const table = wasm.Table.fromIPCStream(task.ipc);
  return wasm.writeParquet(table, writerProperties(task.settings));
}

function writerProperties(settings: WriterSettings): wasm.WriterProperties {
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
