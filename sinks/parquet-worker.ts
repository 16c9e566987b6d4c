/**
 * Entry point of a Parquet encoder thread: one row group's IPC stream in, one Parquet
 * piece out. Each thread has its own parquet-wasm instance, so pieces encode in
 * parallel. The input buffer goes back with the answer (transferred, not copied), so
 * the main thread can reuse it and this thread keeps no garbage between tasks. The
 * encoded piece goes back in a buffer the pool lent for it (`output`), so the main thread
 * recycles those too instead of receiving a fresh buffer per piece (see parquet-pool.ts).
 */
import { parentPort } from "node:worker_threads";
import { encodeRowGroupInto } from "./parquet-encode.js";
import type { EncodeTask } from "./parquet-rowgroup.js";

export interface EncodeRequest {
  id: number;
  task: EncodeTask;
  /** A buffer to carry the encoded piece back, when the pool has a spare one. */
  output?: ArrayBuffer;
}

export type EncodeResponse = { id: number; bytes: Uint8Array; input: Uint8Array } | { id: number; error: string; input: Uint8Array };

if (parentPort === null) throw new Error("parquet-worker.js must run in a worker thread");
const port = parentPort;

port.on("message", (request: EncodeRequest) => {
  const input = request.task.ipc;
  let response: EncodeResponse;
  try {
    const bytes = encodeRowGroupInto(request.task, request.output);
    response = { id: request.id, bytes, input };
    port.postMessage(response, [bytes.buffer as ArrayBuffer, ...returnable(input)]);
    return;
  } catch (err) {
    response = { id: request.id, error: err instanceof Error ? err.stack ?? err.message : String(err), input };
  }
  port.postMessage(response, returnable(input));
});

/** Shared memory cannot be transferred (nor needs to be). */
function returnable(input: Uint8Array): ArrayBuffer[] {
  return input.buffer instanceof ArrayBuffer ? [input.buffer] : [];
}
