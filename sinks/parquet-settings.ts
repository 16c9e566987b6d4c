/**
 * What the Parquet sink and its engines agree on, free of parquet-wasm and of the native
 * addon: the main thread loads the wasm module only when it writes itself (wasm engine,
 * encoderThreads 0) or rewrites a file whose schema widened. And the sink's options schema, the one that decides for the
 * config file's `parquet:` and for a `parquet://` URI's query alike.
 */
import { availableParallelism } from "node:os";
import * as v from "valibot";
import { expected, nonNegativeInteger, positiveInteger } from "../core/kernel/schema.js";

export const LINEAGE_JOB_ID = "_job_id";
export const LINEAGE_FILE_VERSION_ID = "_file_version_id";

export const COMPRESSION_NAMES = ["snappy", "zstd", "gzip", "brotli", "lz4", "lz4_raw", "uncompressed", "none"] as const;
export type CompressionName = (typeof COMPRESSION_NAMES)[number];

export const ENGINE_NAMES = ["native", "wasm"] as const;
export type EngineName = (typeof ENGINE_NAMES)[number];

/**
 * 64 Ki rows (a multiple of pyarrow's batch sizes). The writer holds the row group being
 * filled in wasm memory, which grows to the largest one and never shrinks: this bounds
 * the worker's memory.
 */
export const DEFAULT_ROW_GROUP_SIZE = 65_536;

/**
 * One core fewer than the machine has (at least 1, at most 8): the plugin's own process
 * keeps a core busy producing the data. One file is written by one thread; more threads
 * write more files at once (several topics, overlapping jobs), each costing an isolate
 * plus its wasm memory.
 */
export function defaultEncoderThreads(): number {
  return Math.max(1, Math.min(8, availableParallelism() - 1));
}

const compressionText = expected(`one of ${COMPRESSION_NAMES.map((name) => JSON.stringify(name)).join(", ")}`);

/** The Parquet sink's options: `parquet:` in the config file; compression and row_group_size also in a URI's query. */
export const parquetOptions = v.object({
  /** "snappy" (default), "zstd", "gzip", "lz4", "lz4_raw", "brotli", or "uncompressed" (also "none"); any case. */
  compression: v.optional(v.pipe(v.string(compressionText), v.toLowerCase(), v.picklist(COMPRESSION_NAMES, compressionText)), "snappy"),
  /** Rows per row group; default 65536 (a multiple of the Arrow batch sizes pyarrow emits; bounds the writer's memory). */
  rowGroupSize: v.optional(positiveInteger(), DEFAULT_ROW_GROUP_SIZE),
  /**
   * "native" (default): the addon built at install (sinks/parquet-native.ts), every core encoding each file;
   * falls back to "wasm" with a warning when it was not built. "wasm": parquet-wasm in writer threads.
   */
  engine: v.optional(v.picklist(ENGINE_NAMES, expected(`one of ${ENGINE_NAMES.map((name) => JSON.stringify(name)).join(", ")}`)), "native"),
  /** parquet-wasm writer threads (each writes whole files, several at once); default: available cores minus one (min 1, max 8). 0 writes on the main thread. */
  encoderThreads: v.optional(nonNegativeInteger(), defaultEncoderThreads),
});
/** What the config file's `parquet:` may say. */
export type ParquetConfig = v.InferInput<typeof parquetOptions>;
/** What the sink works with: every option filled in. */
export type ParquetOptions = v.InferOutput<typeof parquetOptions>;

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
export type EngineInfo =
  | { library: "parquet-rs"; version: string; api: "ArrowColumnWriter" }
  | { library: "parquet-wasm"; version: string; api: "transformParquetStream" };
