/**
 * What the Parquet sink and its writers agree on, free of parquet-wasm: the main thread
 * loads the wasm module only when it writes itself (encoderThreads 0) or rewrites a file
 * whose schema widened.
 */
export const LINEAGE_JOB_ID = "_job_id";
export const LINEAGE_FILE_VERSION_ID = "_file_version_id";

export const COMPRESSION_NAMES = ["snappy", "zstd", "gzip", "brotli", "lz4", "lz4_raw", "uncompressed", "none"] as const;
export type CompressionName = (typeof COMPRESSION_NAMES)[number];

export function isCompressionName(name: string): name is CompressionName {
  return (COMPRESSION_NAMES as readonly string[]).includes(name);
}

/** What a writer needs besides the data: plain and structured-cloneable, so it crosses to a thread. */
export interface WriterSettings {
  compression: CompressionName;
  rowGroupSize: number;
  /** File key-value metadata. */
  metadata: Array<[string, string]>;
  /** Columns written without dictionary encoding (high-cardinality data gains nothing from it). */
  plainColumns: string[];
}

/** Which engine wrote a file: the sink's tests check that it is the pinned fast path. */
export interface EngineInfo {
  library: "parquet-wasm";
  version: string;
  api: "transformParquetStream";
}
