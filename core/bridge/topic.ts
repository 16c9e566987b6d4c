/**
 * Topic routing on the data plane.
 *
 * Each data frame is a complete Arrow IPC stream; our guest shim names its topic in the
 * stream's schema metadata under the key `casparian.topic`. A frame without that key (a
 * guest that knows only PROTOCOL.md §3) belongs to the topic "output".
 *
 * Sinks never see the key: the host replaces the stream's leading schema message with
 * one encoded without it (the record batch messages stay byte for byte where they are).
 * The replacement is written into the free bytes the frame decoder leaves in front of
 * each frame, so it costs no copy of the data. Exception: streams with dictionary-encoded
 * columns keep the key in `Batch.ipc` (re-encoding their schema could renumber
 * dictionary ids); `Batch.table` never has it.
 *
 * Each frame is decoded once (apache-arrow's RecordBatchReader: views over the bytes, no
 * copy); `Batch.table` is assembled from those record batches only when a sink asks.
 */
import { RecordBatch, RecordBatchReader, RecordBatchStreamWriter, Schema, Table } from "apache-arrow";
import { Errors } from "../kernel/errors.js";
import type { Batch } from "../kernel/job.js";
import type { FrameLease } from "./frame-pool.js";

export const TOPIC_METADATA_KEY = "casparian.topic";
export const DEFAULT_TOPIC = "output";

/** Byte length of the first (schema) message of an IPC stream, or null when malformed. */
function schemaMessageLength(ipc: Uint8Array): number | null {
  if (ipc.byteLength < 8) return null;
  const view = new DataView(ipc.buffer, ipc.byteOffset, ipc.byteLength);
  const first = view.getUint32(0, true);
  // Current format: continuation marker 0xFFFFFFFF then the length; pre-1.0 format: the length alone.
  const [prefix, metadataLength] = first === 0xffffffff ? [8, view.getInt32(4, true)] : [4, view.getInt32(0, true)];
  const total = prefix + metadataLength;
  return metadataLength > 0 && total <= ipc.byteLength ? total : null;
}

/** The schema message for `schema`, encoded by apache-arrow (schema + EOS, minus the EOS). */
function encodeSchemaMessage(schema: Schema): Uint8Array {
  const stream = RecordBatchStreamWriter.writeAll(new Table(schema)).toUint8Array(true);
  const length = schemaMessageLength(stream);
  if (length === null) throw new Error("apache-arrow produced an unexpected schema stream");
  return stream.slice(0, length);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** A decoded frame: its topic, and the Batch it becomes once the host numbers it. */
export interface DecodedFrame {
  readonly topic: string;
  readonly numRows: number;
  /** The Batch; with a lease (frame-pool.ts), its retain() holds the frame's buffer and its table is refused once that went back. */
  toBatch(index: number, lease?: FrameLease): Batch;
}

/** Topics whose last schema a FrameTopics remembers (a plugin naming a topic per file must not grow memory). */
const REMEMBERED_TOPICS = 64;

/**
 * Decodes data frames (without the per-topic index, which the host assigns).
 * It remembers the last schema per topic, since a plugin usually publishes one schema
 * many times, in a job and job after job (the host keeps one for the process): a frame
 * whose schema message is byte for byte the remembered one reuses its stripped schema
 * and replacement instead of encoding them again (about 0.4 ms per job and topic).
 */
export class FrameTopics {
  readonly #stripped = new Map<string, { original: Uint8Array; replacement: Uint8Array; schema: Schema }>();

  /** Throws Errors.GUEST_PROTOCOL when the bytes are not an Arrow IPC stream. */
  decode(bytes: Uint8Array): DecodedFrame {
    let schema: Schema;
    let batches: RecordBatch[];
    try {
      const reader = RecordBatchReader.from(bytes).open();
      // Read before iterating: the reader lets go of its schema once it reaches the end.
      if (reader.schema === undefined) throw new Error("no schema message");
      schema = reader.schema;
      batches = [...reader];
    } catch (err) {
      throw Errors.GUEST_PROTOCOL([`data frame of ${bytes.byteLength} bytes is not an Arrow IPC stream: ${(err as Error).message}`], { cause: err });
    }
    const named = schema.metadata.get(TOPIC_METADATA_KEY);
    if (named === undefined) return frame(DEFAULT_TOPIC, bytes, schema, batches);
    const topic = named || DEFAULT_TOPIC;

    const oldLength = schemaMessageLength(bytes);
    const original = oldLength === null ? null : bytes.subarray(0, oldLength);
    let cached = this.#stripped.get(topic);
    if (!cached || original === null || !sameBytes(cached.original, original)) {
      const kept = new Map([...schema.metadata].filter(([key]) => key !== TOPIC_METADATA_KEY));
      const stripped = new Schema(schema.fields, kept, schema.dictionaries, schema.metadataVersion);
      cached = { original: original?.slice() ?? new Uint8Array(0), replacement: encodeSchemaMessage(stripped), schema: stripped };
      if (original !== null) {
        this.#stripped.delete(topic);
        if (this.#stripped.size >= REMEMBERED_TOPICS) this.#stripped.delete(this.#stripped.keys().next().value!);
        this.#stripped.set(topic, cached);
      }
    }
    if (schema.dictionaries.size > 0 || oldLength === null) return frame(topic, bytes, cached.schema, batches);
    return frame(topic, spliceSchema(bytes, oldLength, cached.replacement), cached.schema, batches);
  }
}

/** The frame's Batch: `table` is built from the decoded record batches on first use. */
function frame(topic: string, ipc: Uint8Array, schema: Schema, batches: RecordBatch[]): DecodedFrame {
  const numRows = batches.reduce((rows, batch) => rows + batch.numRows, 0);
  return {
    topic,
    numRows,
    toBatch(index: number, lease?: FrameLease): Batch {
      let table: Table | undefined;
      return {
        topic,
        index,
        ipc,
        numRows,
        retain: lease?.retain ?? keptAnyway,
        get table(): Table {
          if (lease?.released) throw Errors.BATCH_RELEASED([`batch ${index} of topic "${topic}": its table was read`]);
          table ??= new Table(
            schema,
            batches.map((batch) => (batch.schema === schema ? batch : new RecordBatch(schema, batch.data))),
          );
          return table;
        },
      };
    },
  };
}

/** retain() of a batch whose frame is not pooled: the collector keeps it as long as it is referenced. */
function keptAnyway(): () => void {
  return () => undefined;
}

/**
 * `bytes` with its first `oldLength` bytes replaced by `schema`. In place when the free
 * bytes in front of `bytes` (frames.ts DATA_HEADROOM) make room; a copy otherwise.
 */
function spliceSchema(bytes: Uint8Array, oldLength: number, schema: Uint8Array): Uint8Array {
  const start = bytes.byteOffset + oldLength - schema.byteLength;
  if (start >= 0 && start % 8 === 0) {
    const ipc = new Uint8Array(bytes.buffer, start, bytes.byteLength - oldLength + schema.byteLength);
    ipc.set(schema, 0);
    return ipc;
  }
  const ipc = new Uint8Array(schema.byteLength + bytes.byteLength - oldLength);
  ipc.set(schema, 0);
  ipc.set(bytes.subarray(oldLength), schema.byteLength);
  return ipc;
}
