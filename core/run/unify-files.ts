/**
 * One table per topic directory, across files: after a run, the Parquet files of each
 * topic directory are given one schema (sinks/schema.ts), so that DuckDB, pyarrow.dataset
 * and polars read the directory as one table.
 *
 * Why a pass after the run: each job writes its own file, and a file whose column was all
 * null (Arrow type null) or narrower (int32) cannot know that another input's file has
 * int64 there. Files written before the later file revealed the type, or by workers running
 * at the same time, are rewritten with the unified schema: row group by row group (memory
 * bounded by one row group), to a hidden staging file beside the original, fsynced and
 * renamed over it, so a reader sees the old file or the new one, never a partial one. Their
 * key-value metadata (lineage, topic) is kept. A real conflict between files (int64 in one,
 * string in another) fails with CSP_SCHEMA_CONFLICT naming both files; nothing is rewritten.
 */
import { openAsBlob } from "node:fs";
import { open, readdir, readFile, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join, relative, sep } from "node:path";
import { RecordBatchReader, tableFromIPC, tableToIPC, type Schema } from "apache-arrow";
import * as wasm from "parquet-wasm";
import { CasparianError } from "../kernel/errors.js";
import { castTable, conformsTo, unifySchemas } from "../../sinks/schema.js";

export interface UnifiedDirectory {
  readonly dir: string;
  readonly files: number;
  /** Files rewritten to the unified schema. */
  readonly rewritten: string[];
}

/** The visible Parquet files under `dir` (hidden files and directories, e.g. staging, are skipped). */
async function parquetFiles(dir: string): Promise<string[]> {
  const names = await readdir(dir, { recursive: true }).catch(() => [] as string[]);
  return names
    .filter((name) => name.endsWith(".parquet") && !name.split(sep).some((part) => part.startsWith(".")))
    .sort()
    .map((name) => join(dir, name));
}

/**
 * Schemas of Parquet files read ahead: `casparian run` primes it with each file it
 * publishes, while the next jobs run, so the pass after the run finds them read. An entry
 * is used only while the file's size, mtime and inode are those it was read with (a file
 * rewritten since is read again). Files are read one at a time, in the background.
 */
export class SchemaCache {
  readonly #entries = new Map<string, { identity: string; schema: Promise<Schema> }>();
  #queue: Promise<unknown> = Promise.resolve();

  /** Reads the schemas of `paths` in the background; a file that cannot be read is read again later. */
  prime(paths: readonly string[]): void {
    for (const path of paths) {
      this.#queue = this.#queue.then(() => this.get(path)).catch(() => this.#entries.delete(path));
    }
  }

  async get(path: string): Promise<Schema> {
    const { identity, size } = await identityOf(path);
    const cached = this.#entries.get(path);
    if (cached !== undefined && cached.identity === identity) return cached.schema;
    const schema = schemaOf(path, size);
    this.#entries.set(path, { identity, schema });
    return schema;
  }
}

async function identityOf(path: string): Promise<{ identity: string; size: bigint }> {
  const info = await stat(path, { bigint: true });
  return { identity: `${info.ino}:${info.size}:${info.mtimeNs}`, size: info.size };
}

/**
 * Files up to this size are read whole and their footer parsed in one call (readSchema), the
 * Arrow schema read without building a table: about a fifth of the CPU of the Blob reader,
 * which fetches the footer in several asynchronous steps. A run of many small files reads
 * one schema per file while its workers run, on the same cores.
 */
const READ_WHOLE_BYTES = 1024 * 1024;

async function schemaOf(path: string, size: bigint): Promise<Schema> {
  if (size <= READ_WHOLE_BYTES) {
    const bytes = await readFile(path);
    // (A file that grew meanwhile is read through the Blob below; its identity then changes too.)
    if (bytes.length <= READ_WHOLE_BYTES) return RecordBatchReader.from(wasm.readSchema(bytes).intoIPCStream()).open().schema;
  }
  const file = await wasm.ParquetFile.fromFile(await openAsBlob(path));
  try {
    return tableFromIPC(file.schema().intoIPCStream()).schema;
  } finally {
    file.free();
  }
}

/** Gives every Parquet file of the topic directory `dir` the topic's unified schema. */
export async function unifyTopicDirectory(dir: string, topic: string, cache: SchemaCache = new SchemaCache()): Promise<UnifiedDirectory> {
  const files = await parquetFiles(dir);
  if (files.length < 2) return { dir, files: files.length, rewritten: [] };
  const schemas = await Promise.all(files.map((file) => cache.get(file)));
  let unified = schemas[0]!;
  for (let i = 1; i < files.length; i++) {
    const earlier = unified;
    try {
      unified = unifySchemas(topic, earlier, schemas[i]!, "");
    } catch {
      // Only a conflict names the files: built for every file, that list is quadratic in their number.
      const where = `file ${relative(dir, files[i]!)} against ${files
        .slice(0, i)
        .map((f) => relative(dir, f))
        .join(", ")}`;
      try {
        unifySchemas(topic, earlier, schemas[i]!, where);
      } catch (err) {
        if (err instanceof CasparianError) err.context.file = files[i];
        throw err;
      }
    }
  }
  const rewritten: string[] = [];
  for (let i = 0; i < files.length; i++) {
    const schema = schemas[i]!;
    if (conformsTo(schema, unified) && schema.fields.every((f, k) => f.nullable === unified.fields[k]!.nullable)) continue;
    await rewriteFile(files[i]!, unified);
    rewritten.push(files[i]!);
  }
  return { dir, files: files.length, rewritten };
}

/** Rewrites one file with `schema` (which unifies its own): staging beside it, then rename. */
async function rewriteFile(path: string, schema: Schema): Promise<void> {
  const staging = join(dirname(path), `.${basename(path)}.widen-${process.pid}`);
  const file = await wasm.ParquetFile.fromFile(await openAsBlob(path));
  const handle = await open(staging, "wx");
  try {
    const metadata = file.metadata();
    const keyValues = new Map([...(metadata.fileMetadata().keyValueMetadata() as Map<string, string>)].filter(([key]) => key !== "ARROW:schema"));
    const groups = metadata.numRowGroups();
    const target = withMetadata(schema, keyValues);
    let group = 0;
    const batches = new ReadableStream<wasm.RecordBatch>({
      async pull(controller) {
        if (group >= groups) {
          controller.close();
          return;
        }
        const piece = await file.read({ rowGroups: [group++] });
        const cast = castTable(tableFromIPC(piece.intoIPCStream()), target);
        for (const batch of wasm.Table.fromIPCStream(tableToIPC(cast, "stream")).recordBatches()) controller.enqueue(batch);
      },
    });
    const properties = new wasm.WriterPropertiesBuilder().setCompression(wasm.Compression.SNAPPY).setKeyValueMetadata(keyValues).build();
    const bytes = await wasm.transformParquetStream(batches, properties);
    for await (const chunk of bytes as unknown as AsyncIterable<Uint8Array>) await handle.write(chunk);
    await handle.sync();
    await handle.close();
    await rename(staging, path);
    const dirHandle = await open(dirname(path), "r");
    await dirHandle.sync().finally(() => dirHandle.close());
  } catch (err) {
    await handle.close().catch(() => undefined);
    await rm(staging, { force: true });
    throw err;
  } finally {
    file.free();
  }
}

function withMetadata(schema: Schema, metadata: Map<string, string>): Schema {
  const kept = new Map(schema.metadata);
  for (const [key, value] of metadata) kept.set(key, value);
  return new (schema.constructor as new (fields: Schema["fields"], metadata: Map<string, string>) => Schema)(schema.fields, kept);
}

/**
 * The topic directories a run wrote Parquet files into, unified one by one: `<output>/<topic>`
 * when all of a topic's files are under it (the default layout, inputs in subdirectories
 * included), else each file's own directory.
 */
export async function unifyRunOutputs(
  artifacts: ReadonlyArray<{ topic: string; uri: string; path: string | null }>,
  outputRoot: string,
  cache: SchemaCache = new SchemaCache(),
): Promise<UnifiedDirectory[]> {
  const byTopic = new Map<string, string[]>();
  for (const artifact of artifacts) {
    if (artifact.path === null || !artifact.uri.startsWith("parquet://")) continue;
    byTopic.set(artifact.topic, [...(byTopic.get(artifact.topic) ?? []), artifact.path]);
  }
  const dirs = new Map<string, string>();
  for (const [topic, paths] of byTopic) {
    const topicDir = join(outputRoot, topic);
    const underTopicDir = paths.every((p) => !relative(topicDir, p).startsWith(".."));
    for (const path of paths) dirs.set(underTopicDir ? topicDir : dirname(path), topic);
  }
  const results: UnifiedDirectory[] = [];
  for (const [dir, topic] of dirs) results.push(await unifyTopicDirectory(dir, topic, cache));
  return results;
}
