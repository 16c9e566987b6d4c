/**
 * Entry point of a Parquet writer thread. Each thread has its own parquet-wasm instance
 * and writes any number of files at once (one per sink stream), so encoding runs beside
 * the main thread, which keeps reading the guest's frames. The IPC buffers come in
 * transferred and go back with the "taken" answer, so the main thread reuses them.
 */
import { parentPort, threadId } from "node:worker_threads";
import { ENGINE, ParquetFileWriter } from "./parquet-engine.js";
import type { ThreadRequest, ThreadResponse } from "./parquet-writers.js";

if (parentPort === null) throw new Error("parquet-thread.js must run in a worker thread");
const port = parentPort;
const writers = new Map<number, { writer: ParquetFileWriter; buffers: Map<number, ArrayBuffer> }>();

function send(response: ThreadResponse, transfer: ArrayBuffer[] = []): void {
  port.postMessage(response, transfer);
}

port.on("message", (request: ThreadRequest) => {
  switch (request.kind) {
    case "open": {
      const { stream } = request;
      const buffers = new Map<number, ArrayBuffer>();
      const writer = new ParquetFileWriter(request.path, request.settings, (token) => {
        const buffer = buffers.get(token);
        buffers.delete(token);
        send({ kind: "taken", stream, token, buffer }, buffer === undefined ? [] : [buffer]);
      });
      writers.set(stream, { writer, buffers });
      writer.done.then(
        (bytes) => send({ kind: "done", stream, bytes, engine: ENGINE, threadId }),
        (err: unknown) => send({ kind: "failed", stream, error: err instanceof Error ? (err.stack ?? err.message) : String(err) }),
      );
      void writer.done.finally(() => writers.delete(stream)).catch(() => {});
      return;
    }
    case "write": {
      const entry = writers.get(request.stream);
      if (entry === undefined) return;
      const buffer = request.ipc.buffer;
      if (buffer instanceof ArrayBuffer) entry.buffers.set(request.token, buffer);
      try {
        entry.writer.push(request.ipc, request.token);
      } catch (err) {
        entry.writer.fail(err instanceof Error ? err : new Error(String(err)));
      }
      return;
    }
    case "end":
      writers.get(request.stream)?.writer.end();
      return;
    case "abort":
      writers.get(request.stream)?.writer.fail(new Error(request.reason));
      return;
  }
});
