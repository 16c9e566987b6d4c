/**
 * Entry point of a Parquet encoder thread: one row group in, one Parquet piece out.
 * Each thread has its own parquet-wasm instance, so pieces encode in parallel.
 */
import { parentPort } from "node:worker_threads";
import { encodeRowGroup, type EncodeTask } from "./parquet-encode.js";

export interface EncodeRequest {
  id: number;
  task: EncodeTask;
}

export type EncodeResponse = { id: number; bytes: Uint8Array } | { id: number; error: string };

if (parentPort === null) throw new Error("parquet-worker.js must run in a worker thread");
const port = parentPort;

port.on("message", (request: EncodeRequest) => {
  let response: EncodeResponse;
  try {
    const bytes = encodeRowGroup(request.task);
    response = { id: request.id, bytes };
    port.postMessage(response, [bytes.buffer as ArrayBuffer]);
    return;
  } catch (err) {
    response = { id: request.id, error: err instanceof Error ? err.stack ?? err.message : String(err) };
  }
  port.postMessage(response);
});
