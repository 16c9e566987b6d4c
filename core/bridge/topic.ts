/**
 * Topic routing on the data plane.
 *
 * Each data frame is a complete Arrow IPC stream; our guest shim names its topic in the
 * stream's schema metadata under the key `casparian.topic`. A frame without that key (a
 * guest that knows only PROTOCOL.md §3) belongs to the topic "output".
 *
 * Sinks never see the key: the host replaces the stream's leading schema message with
 * one encoded without it (the record batch messages stay byte for byte where they are)
 * and decodes the table from the rewritten bytes. The replacement is written into the
 * free bytes the frame decoder leaves in front of each frame, so it costs no copy of the
 * data. Exception: streams with dictionary-encoded columns keep the key in `Batch.ipc`
 * (re-encoding their schema could renumber dictionary ids); `Batch.table` never has it.
 */
import { RecordBatchStreamWriter, Schema, Table, tableFromIPC } from "apache-arrow";
import { Errors } from "../kernel/errors.js";
import type { Batch } from "../kernel/job.js";

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

/**
 * Decodes data frames into Batches (without the per-topic index, which the host assigns).
 * One per guest run: it remembers the last schema per topic, since a plugin usually
 * publishes one schema many times.
 */
export class FrameTopics {
  readonly #stripped = new Map<string, { original: Uint8Array; replacement: Uint8Array }>();

  /** Throws Errors.GUEST_PROTOCOL when the bytes are not an Arrow IPC stream. */
  decode(bytes: Uint8Array): Omit<Batch, "index"> {
    let table: Table;
    try {
      table = tableFromIPC(bytes);
    } catch (err) {
      throw Errors.GUEST_PROTOCOL([`data frame of ${bytes.byteLength} bytes is not an Arrow IPC stream: ${(err as Error).message}`], { cause: err });
    }
    const metadata = table.schema.metadata;
    const named = metadata.get(TOPIC_METADATA_KEY);
    if (named === undefined) return { topic: DEFAULT_TOPIC, ipc: bytes, table, numRows: table.numRows };
    const topic = named || DEFAULT_TOPIC;

    const oldLength = schemaMessageLength(bytes);
    if (table.schema.dictionaries.size > 0 || oldLength === null) {
      metadata.delete(TOPIC_METADATA_KEY);
      return { topic, ipc: bytes, table, numRows: table.numRows };
    }
    const original = bytes.subarray(0, oldLength);
    let cached = this.#stripped.get(topic);
    if (!cached || !sameBytes(cached.original, original)) {
      const kept = new Map([...metadata].filter(([key]) => key !== TOPIC_METADATA_KEY));
      const replacement = encodeSchemaMessage(new Schema(table.schema.fields, kept, table.schema.dictionaries, table.schema.metadataVersion));
      cached = { original: original.slice(), replacement };
      this.#stripped.set(topic, cached);
    }
    const ipc = spliceSchema(bytes, oldLength, cached.replacement);
    const stripped = tableFromIPC(ipc);
    return { topic, ipc, table: stripped, numRows: stripped.numRows };
  }
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
