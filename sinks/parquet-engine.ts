/**
 * The Parquet engine: parquet-wasm's documented streaming writer, `transformParquetStream`,
 * fed Arrow IPC streams and writing one file as row groups fill. Runs in a writer thread
 * (parquet-thread.ts) or, with encoderThreads 0, on the main thread.
 *
 * Only public exports of parquet-wasm are used (Table.fromIPCStream, recordBatches,
 * WriterPropertiesBuilder, transformParquetStream), so an upgrade either keeps working
 * or fails loudly at build time; nothing falls back silently. parquet-rs behind it
 * writes statistics, page indexes (column and offset index) and the key-value metadata.
 * Memory: the writer holds the row group being filled; the input queue holds at most the
 * IPC streams the sink lets be in flight.
 */
import { constants as fsConstants, openAsBlob, readFileSync } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as wasm from "parquet-wasm";
import { LINEAGE_FILE_VERSION_ID, LINEAGE_JOB_ID, type CompressionName, type EngineInfo, type WriterSettings } from "./parquet-settings.js";

export { LINEAGE_FILE_VERSION_ID, LINEAGE_JOB_ID };
export type { EngineInfo, WriterSettings };

export const ENGINE: EngineInfo = { library: "parquet-wasm", version: installedVersion(), api: "transformParquetStream" };

function installedVersion(): string {
  // parquet-wasm's exports map does not expose package.json; its entry point sits one level below it.
  const entry = fileURLToPath(import.meta.resolve("parquet-wasm"));
  for (let dir = dirname(entry); dir !== dirname(dir); dir = dirname(dir)) {
    try {
      const manifest = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: string; version?: string };
      if (manifest.name === "parquet-wasm" && typeof manifest.version === "string") return manifest.version;
    } catch {
      // not this directory
    }
  }
  throw new Error(`cannot find parquet-wasm's package.json above ${entry}`);
}

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

function writerProperties(settings: WriterSettings): wasm.WriterProperties {
  let builder = new wasm.WriterPropertiesBuilder()
    .setCompression(COMPRESSIONS[settings.compression])
    .setMaxRowGroupSize(settings.rowGroupSize)
    .setKeyValueMetadata(new Map(settings.metadata))
    .setCreatedBy(`casparian-flow via ${ENGINE.library} ${ENGINE.version}`);
  for (const column of settings.plainColumns) builder = builder.setColumnDictionaryEnabled(column, false);
  // Lineage columns hold one value: delta encoding stores it in a few bytes without
  // hashing every row into a dictionary first.
  for (const column of [LINEAGE_JOB_ID, LINEAGE_FILE_VERSION_ID]) {
    builder = builder.setColumnDictionaryEnabled(column, false).setColumnEncoding(column, wasm.Encoding.DELTA_BINARY_PACKED);
  }
  return builder.build();
}

interface Queued {
  batch: wasm.RecordBatch;
  /** Set on the last batch of one pushed IPC stream: reported once the writer has taken it. */
  token: number | null;
}

/**
 * One Parquet file being written. `push` hands it complete IPC streams (one or more
 * record batches each); `onTaken(token)` fires when the writer has consumed all of a
 * stream's batches, which is the caller's signal to send more. `end` finishes the file
 * (footer, fsync); `fail` stops it. `done` settles with the file's size once it is closed.
 */
export class ParquetFileWriter {
  readonly done: Promise<number>;
  readonly #queue: Queued[] = [];
  readonly #onTaken: (token: number) => void;
  #wake: (() => void) | null = null;
  #ended = false;
  #failure: Error | null = null;

  constructor(path: string, settings: WriterSettings, onTaken: (token: number) => void) {
    this.#onTaken = onTaken;
    this.done = this.#run(path, writerProperties(settings));
    this.done.catch(() => {}); // the owner awaits it; this only silences an early rejection
  }

  /** Copies `ipc` into wasm memory (the caller may reuse the buffer once this returns). */
  push(ipc: Uint8Array, token: number): void {
    if (this.#ended || this.#failure) throw new Error("Parquet writer is closed");
    const table = wasm.Table.fromIPCStream(ipc);
    const batches = table.recordBatches();
    table.free();
    if (batches.length === 0) {
      this.#onTaken(token);
      return;
    }
    for (const [i, batch] of batches.entries()) this.#queue.push({ batch, token: i === batches.length - 1 ? token : null });
    this.#notify();
  }

  end(): void {
    this.#ended = true;
    this.#notify();
  }

  fail(error: Error): void {
    this.#failure ??= error;
    for (const { batch } of this.#queue.splice(0)) batch.free();
    this.#notify();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  async #next(): Promise<wasm.RecordBatch | null> {
    for (;;) {
      if (this.#failure) throw this.#failure;
      const item = this.#queue.shift();
      if (item !== undefined) {
        if (item.token !== null) this.#onTaken(item.token);
        return item.batch;
      }
      if (this.#ended) return null;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  async #run(path: string, properties: wasm.WriterProperties): Promise<number> {
    const input = new ReadableStream<wasm.RecordBatch>(
      {
        pull: async (controller) => {
          const batch = await this.#next();
          if (batch === null) controller.close();
          else controller.enqueue(batch);
        },
      },
      { highWaterMark: 0 },
    );
    const handle = await openStaged(path);
    let bytes = 0;
    try {
      const output = (await wasm.transformParquetStream(input, properties)) as ReadableStream<Uint8Array>;
      const reader = output.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (this.#failure) throw this.#failure;
        await handle.write(value);
        bytes += value.byteLength;
      }
      if (this.#failure) throw this.#failure;
      await handle.sync();
    } catch (err) {
      // Whatever parquet-wasm rejected with (a string, a JsValue) becomes an Error.
      throw this.#failure ?? (err instanceof Error ? err : new Error(String(err)));
    } finally {
      await handle.close();
    }
    return bytes;
  }
}

/**
 * Opens the staging file the sink created (sinks/parquet.ts createStagingFile) for writing:
 * never creating one (a directory swapped for a symlink since then makes this fail with
 * ENOENT instead of creating a file where the symlink points) and never following a
 * symlink put in its place (ELOOP).
 */
async function openStaged(path: string): Promise<FileHandle> {
  return await open(path, fsConstants.O_WRONLY | fsConstants.O_TRUNC | fsConstants.O_NOFOLLOW);
}

/**
 * The row groups of a Parquet file, one Arrow IPC stream each, read through parquet-wasm's
 * public ParquetFile API from a lazily read Blob: one row group in memory at a time.
 */
export async function* readRowGroups(path: string): AsyncGenerator<Uint8Array> {
  const file = await wasm.ParquetFile.fromFile(await openAsBlob(path));
  try {
    const count = file.metadata().numRowGroups();
    for (let group = 0; group < count; group++) {
      const table = await file.read({ rowGroups: [group] });
      yield table.intoIPCStream();
    }
  } finally {
    file.free();
  }
}
