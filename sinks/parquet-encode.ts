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

/**
 * Like encodeRowGroup, but the piece is copied from wasm memory straight into `output`
 * when it fits (else into a new buffer with some headroom), returning a view of it.
 *
 * Why: the public writeParquet copies the piece into a fresh buffer on every call. In an
 * encoder thread that is all the thread allocates, and V8 only collects such buffers
 * after ~32 MB of them: ~30 MB of garbage per thread at any time. Here the thread
 * allocates nothing per row group. Uses the wasm-bindgen exports of parquet-wasm 0.7
 * directly (what its own writeParquet does); with any other shape it falls back to the
 * public call plus one copy.
 */
export function encodeRowGroupInto(task: EncodeTask, output: ArrayBuffer | undefined): Uint8Array {
  const table = wasm.Table.fromIPCStream(task.ipc);
  const properties = writerProperties(task.settings);
  if (raw === null) return intoBuffer(wasm.writeParquet(table, properties), output);
  const tablePtr = (table as unknown as BindgenObject).__destroy_into_raw();
  const propertiesPtr = (properties as unknown as BindgenObject).__destroy_into_raw();
  const [ptr, length, errorIndex, failed] = raw.writeParquet(tablePtr, propertiesPtr);
  if (failed) {
    const error: unknown = raw.__wbindgen_export_4.get(errorIndex);
    raw.__externref_table_dealloc(errorIndex);
    throw error instanceof Error ? error : new Error(String(error));
  }
  try {
    return intoBuffer(new Uint8Array(raw.memory.buffer, ptr, length), output);
  } finally {
    raw.__wbindgen_free(ptr, length, 1);
  }
}

function intoBuffer(piece: Uint8Array, output: ArrayBuffer | undefined): Uint8Array {
  const buffer = output !== undefined && output.byteLength >= piece.byteLength ? output : new ArrayBuffer(Math.ceil((piece.byteLength * 1.25) / 8) * 8);
  const bytes = new Uint8Array(buffer, 0, piece.byteLength);
  bytes.set(piece);
  return bytes;
}

interface BindgenObject {
  __destroy_into_raw(): number;
}

/** The raw exports writeParquet needs (parquet-wasm 0.7, wasm-bindgen with externref). */
interface RawWasm {
  memory: { readonly buffer: ArrayBuffer };
  writeParquet(table: number, properties: number): [number, number, number, number];
  __wbindgen_free(ptr: number, length: number, align: number): void;
  __wbindgen_export_4: { get(index: number): unknown };
  __externref_table_dealloc(index: number): void;
}

const raw: RawWasm | null = rawWasm();

function rawWasm(): RawWasm | null {
  const exports = (wasm as unknown as { __wasm?: Partial<RawWasm> }).__wasm;
  const usable =
    exports !== undefined &&
    exports.memory?.buffer instanceof ArrayBuffer &&
    typeof exports.writeParquet === "function" &&
    exports.writeParquet.length === 2 &&
    typeof exports.__wbindgen_free === "function" &&
    typeof exports.__wbindgen_export_4?.get === "function" &&
    typeof exports.__externref_table_dealloc === "function" &&
    typeof (wasm.Table.prototype as unknown as Partial<BindgenObject>).__destroy_into_raw === "function" &&
    typeof (wasm.WriterProperties.prototype as unknown as Partial<BindgenObject>).__destroy_into_raw === "function";
  return usable ? (exports as RawWasm) : null;
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
