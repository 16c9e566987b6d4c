/**
 * The Parquet sink's native engine: a Node addon (sinks/parquet-native/, Rust over
 * arrow-rs's public APIs) built from source when the package is installed, as
 * better-sqlite3 is. One file is one native writer with a thread of its own that decodes
 * each batch's IPC stream as the host holds it, appends the lineage columns and encodes
 * the columns on every core (parquet's ArrowColumnWriter, one per leaf column). No
 * writer thread isolate and no WASM memory in this process.
 *
 * When the addon was not built (no Rust toolchain at install), `loadNativeEngine` says
 * why and the sink falls back to parquet-wasm (sinks/parquet-engine.ts).
 */
import { closeSync, constants as fsConstants, existsSync, openSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { DataType, Field, RecordBatchStreamWriter, Schema, Table } from "apache-arrow";
import { packageRoot } from "../core/kernel/paths.js";
import type { EngineInfo, WriterSettings } from "./parquet-settings.js";

/** Where `npm install` (the prepare script, scripts/build-native.mjs) puts the built addon. */
export const NATIVE_ADDON_PATH = join(packageRoot(), "sinks", "parquet-native", "casparian_parquet.node");

/** The parquet crate the addon is built on (its Cargo.toml pins it exactly). */
export const NATIVE_ENGINE: EngineInfo = { library: "parquet-rs", version: "60.1.0", api: "ArrowColumnWriter" };

/** What the addon reports for a finished file. */
interface NativeReport {
  bytes: number;
  rows: number;
  rowGroups: number;
  threads: number;
}

interface NativeWriter {
  write(ipc: Uint8Array): Promise<void>;
  finish(): Promise<NativeReport>;
  abort(): Promise<void>;
}

interface NativeAddon {
  ParquetFileWriter: new (
    fd: number,
    schemaIpc: Uint8Array,
    options: {
      compression: string;
      rowGroupSize: number;
      metadata: Array<{ key: string; value: string }>;
      plainColumns: string[];
      createdBy: string;
      jobId: string;
      fileVersionId: string;
      threads: number;
    },
  ) => NativeWriter;
  engineVersion(): string;
}

let loaded: { addon: NativeAddon } | { error: Error } | undefined;

/** The addon, or why it cannot be used (not built, or built for another Node ABI). Loaded once. */
export function loadNativeEngine(): { addon: NativeAddon } | { error: Error } {
  if (loaded !== undefined) return loaded;
  if (!existsSync(NATIVE_ADDON_PATH)) {
    loaded = { error: new Error(`the native Parquet engine was not built (${NATIVE_ADDON_PATH} is missing)`) };
    return loaded;
  }
  try {
    const addon = createRequire(import.meta.url)(NATIVE_ADDON_PATH) as NativeAddon;
    const version = addon.engineVersion();
    if (version !== `parquet-rs ${NATIVE_ENGINE.version}`)
      throw new Error(`the built addon is ${version}, this code expects parquet-rs ${NATIVE_ENGINE.version}: rebuild it`);
    loaded = { addon };
  } catch (err) {
    loaded = { error: err instanceof Error ? err : new Error(String(err)) };
  }
  return loaded;
}

/**
 * The schema alone as an IPC stream, the way the native writer learns a file's columns.
 * A null-typed column (a placeholder) holds nulls whatever its field claims, so it is
 * nullable in the file (sinks/schema.ts widens it the same way). `given`, a stream that
 * starts with this schema (the first batch's own frame), serves as it is when no field
 * needs that change: the native side reads only its schema message, and encoding one
 * here costs a quarter of a millisecond per file.
 */
function schemaStream(schema: Schema, given?: Uint8Array): Uint8Array {
  const placeholder = schema.fields.some((f) => DataType.isNull(f.type) && !f.nullable);
  if (given !== undefined && !placeholder) return given;
  const fields = schema.fields.map((f) => (DataType.isNull(f.type) && !f.nullable ? new Field(f.name, f.type, true, f.metadata) : f));
  return RecordBatchStreamWriter.writeAll(new Table(new Schema(fields, schema.metadata))).toUint8Array(true);
}

/** What a finished native file reports. */
export interface NativeFileReport {
  bytes: number;
  rows: number;
  rowGroups: number;
  /** Threads that encoded its columns. */
  threads: number;
  engine: EngineInfo;
}

/**
 * One Parquet file written by the native engine. `write` takes a batch's IPC stream as
 * the host holds it (copied before it returns) and resolves once the file has room for
 * more: at most `maxInFlight` streams are queued or being encoded.
 */
export class NativeParquetFile {
  readonly #writer: NativeWriter;
  readonly #maxInFlight: number;
  readonly #inFlight: Promise<void>[] = [];
  #closed = false;

  /**
   * Starts the native writer of the staging file the sink created, on a duplicate of its
   * descriptor `file` (the caller keeps and closes its own), or opens it by path (never
   * creating one, never through a symlink: ENOENT / ELOOP) and closes that descriptor
   * itself. `schemaIpc`: an IPC stream that starts with `schema`, when the caller has one.
   */
  constructor(
    addon: NativeAddon,
    file: string | number,
    schema: Schema,
    settings: WriterSettings,
    lineage: { jobId: bigint; fileVersionId: bigint },
    maxInFlight: number,
    schemaIpc?: Uint8Array,
  ) {
    this.#maxInFlight = maxInFlight;
    const fd = typeof file === "number" ? file : openSync(file, fsConstants.O_WRONLY | fsConstants.O_TRUNC | fsConstants.O_NOFOLLOW);
    try {
      this.#writer = construct(
        () =>
          new addon.ParquetFileWriter(fd, schemaStream(schema, schemaIpc), {
            compression: settings.compression,
            rowGroupSize: settings.rowGroupSize,
            metadata: settings.metadata.map(([key, value]) => ({ key, value })),
            plainColumns: settings.plainColumns,
            createdBy: `casparian-flow via ${NATIVE_ENGINE.library} ${NATIVE_ENGINE.version} (native)`,
            jobId: lineage.jobId.toString(),
            fileVersionId: lineage.fileVersionId.toString(),
            threads: 0,
          }),
      );
    } finally {
      if (typeof file !== "number") closeSync(fd);
    }
  }

  async write(ipc: Uint8Array): Promise<void> {
    if (this.#closed) throw new Error("Parquet file is closed");
    const written = this.#writer.write(ipc).catch(rethrow);
    written.catch(() => {}); // awaited below or by finish; this only keeps an early failure from going unhandled
    this.#inFlight.push(written);
    while (this.#inFlight.length >= this.#maxInFlight) await this.#inFlight.shift();
  }

  /** Writes the footer, fsyncs and closes the file. */
  async finish(): Promise<NativeFileReport> {
    this.#closed = true;
    try {
      for (const written of this.#inFlight.splice(0)) await written;
    } catch (err) {
      await this.#writer.abort();
      throw err;
    }
    const report = await this.#writer.finish().catch(rethrow);
    return { ...report, engine: NATIVE_ENGINE };
  }

  /** Stops writing; settles once the native side has closed the file. Idempotent. */
  async abort(): Promise<void> {
    this.#closed = true;
    await Promise.allSettled(this.#inFlight.splice(0));
    await this.#writer.abort();
  }
}

/**
 * The addon's error as a plain Error with its message: napi sets `code` to its own status
 * ("GenericFailure"), which would hide the errno name the message starts with (ENOSPC...)
 * from systemErrorHint.
 */
function rethrow(err: unknown): never {
  throw new Error(err instanceof Error ? err.message : String(err), { cause: err });
}

function construct<T>(make: () => T): T {
  try {
    return make();
  } catch (err) {
    rethrow(err);
  }
}
