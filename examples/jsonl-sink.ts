/**
 * Example sink: JSON Lines files, `jsonl://relative/path.jsonl`, written only against
 * casparian-flow's public API.
 *
 * Register it in casparian.config.ts (see jsonl-sink.config.ts):
 *
 *   export default defineConfig({ sinks: [{ use: "./examples/jsonl-sink.ts", options: { lineage: true } }] });
 *
 * Its one option, `lineage`, is declared as a schema: checked when the sink is registered,
 * typed in `create`, and settable per target in the URI (`jsonl://events.jsonl?lineage=false`).
 *
 * Like the bundled Parquet sink: the path is relative to the output root, rows go to
 * a hidden staging file beside the target, which is fsynced and renamed on commit;
 * modes append (`<stem>_<job id>.jsonl`), replace and error are honoured; a topic that
 * never produced a batch publishes nothing. In a job with other sinks, it commits all or
 * nothing with them: prepare returns a `publishHandle`, commit keeps the replaced file as a
 * backup when asked (`undo`), and `resolve` hands both to `resolvePublished`. Values are exact (read with `exactReader`):
 * integers keep every digit (int64/uint64 are written as JSON numbers, not rounded through
 * a double); timestamps are ISO 8601 strings with every digit of their unit (microseconds
 * for the shim's and pandas' timestamps); dates and times are ISO 8601 too; decimals are
 * exact strings ("12.30"); binary is base64.
 */
import { open, type FileHandle } from "node:fs/promises";
import { dirname } from "node:path";
import { stringify } from "lossless-json";
import type { Table } from "apache-arrow";
import {
  assertTargetFree,
  backupPathFor,
  defineSink,
  exactReader,
  finalPathFor,
  isPublishHandle,
  makeDirectoryInsideRoot,
  publishHandle,
  publishStaged,
  removeIfPresent,
  removeStaleStaging,
  resolveInsideRoot,
  resolvePublished,
  stagingPathFor,
  type Batch,
  type CommitOptions,
  type ExactValue,
  v,
} from "casparian-flow";

const jsonlOptions = v.object({
  /** Add `_job_id` and `_file_version_id` to every line (as the Parquet sink does). Default false. */
  lineage: v.optional(v.boolean(), false),
});
export type JsonlSinkOptions = v.InferInput<typeof jsonlOptions>;

export default function jsonlSink() {
  return defineSink({
    name: "jsonl",
    schemes: ["jsonl"],
    options: jsonlOptions,
    uriOptions: ["lineage"],
    create(target, { job, logger, options }) {
      const path = resolveInsideRoot(job.outputRoot, target.parsed.location, target.uri);
      const finalPath = finalPathFor(path, target.mode, job.jobId);
      const stagingPath = stagingPathFor(finalPath, job.jobId);
      const lineage: Record<string, bigint> = options.lineage ? { _job_id: job.jobId, _file_version_id: job.command.fileVersionId } : {};
      let handle: FileHandle | null = null;

      return {
        async open() {
          // Level by level, so a symlink under the root that leads out of it is refused before anything is made there.
          await makeDirectoryInsideRoot(job.outputRoot, dirname(finalPath), { uri: target.uri, jobId: job.jobId });
          await assertTargetFree(finalPath, target.mode, target.uri, job.jobId);
        },
        async write(batch: Batch) {
          handle ??= await open(stagingPath, "wx");
          await handle.write(toLines(batch.table, lineage));
        },
        async prepare() {
          if (handle === null) return undefined;
          await handle.sync();
          await handle.close();
          return publishHandle(stagingPath, finalPath, job.jobId);
        },
        async commit(options?: CommitOptions) {
          if (handle === null) {
            logger.warn("no batch for this topic: nothing published");
            return [];
          }
          const backup = options?.undo === true ? backupPathFor(finalPath, job.jobId) : undefined;
          await publishStaged(stagingPath, finalPath, target.mode, target.uri, job.jobId, { backup, outputRoot: job.outputRoot });
          return [{ topic: target.topic, uri: `jsonl://${finalPath}` }];
        },
        async abort() {
          await handle?.close().catch(() => {});
          await removeIfPresent(stagingPath);
        },
      };
    },
    async recover({ outputRoot, logger }) {
      await removeStaleStaging(outputRoot, logger);
    },
    async resolve(handle, decision) {
      if (!isPublishHandle(handle)) throw new Error(`not a JSON Lines sink handle: ${JSON.stringify(handle)}`);
      await resolvePublished(handle, decision);
    },
  });
}

/** One JSON object per row, every line ending in "\n". */
function toLines(table: Table, extra: Record<string, bigint>): string {
  const readers = table.schema.fields.map((_, i) => exactReader(table.getChildAt(i)!));
  const names = table.schema.fields.map((f) => f.name);
  let out = "";
  for (let row = 0; row < table.numRows; row++) {
    const record: Record<string, unknown> = {};
    for (let c = 0; c < readers.length; c++) record[names[c]!] = toJson(readers[c]!(row));
    out += `${stringify({ ...record, ...extra })}\n`;
  }
  return out;
}

/** Exact values are JSON already, except bytes (base64 here), also inside lists and structs. */
function toJson(value: ExactValue): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value).toString("base64");
  if (Array.isArray(value)) return value.map(toJson);
  if (value !== null && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v)]));
  return value;
}
