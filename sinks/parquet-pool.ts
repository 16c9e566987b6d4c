/**
 * A small pool of Parquet encoder threads shared by every Parquet sink of one plugin
 * instance. Tasks queue in order; each thread takes one at a time. Threads only keep
 * the process alive while they have work.
 *
 * With 0 threads, tasks encode on the calling thread (no worker at all).
 */
import { Worker } from "node:worker_threads";
import type { EncodeTask } from "./parquet-rowgroup.js";
import type { EncodeRequest, EncodeResponse } from "./parquet-worker.js";

export interface EncodeResult {
  /** The encoded piece: a complete Parquet file holding the row group. */
  bytes: Uint8Array;
  /** The task's IPC buffer, handed back for reuse (the same bytes, possibly a new view). */
  input: Uint8Array;
}

export interface EncodeOptions {
  /**
   * Move the task's IPC buffer to the encoder thread instead of copying it; it comes
   * back as `input`. The caller must own the whole ArrayBuffer and not touch it meanwhile.
   */
  transfer?: boolean;
}

/** Spare output buffers kept per thread, beyond the ones in flight. */
const SPARE_OUTPUTS_PER_THREAD = 2;

interface Pending {
  id: number;
  task: EncodeTask;
  transfer: boolean;
  resolve(result: EncodeResult): void;
  reject(err: Error): void;
}

interface Slot {
  worker: Worker;
  current: Pending | null;
  /** Terminated or crashed: takes no more work, and its exit is expected. */
  retired: boolean;
}

const WORKER_URL = new URL("./parquet-worker.js", import.meta.url);

export class EncoderPool {
  readonly threads: number;
  readonly #slots: Slot[] = [];
  readonly #queue: Pending[] = [];
  #nextId = 1;
  #closed = false;
  #inline: Promise<typeof import("./parquet-encode.js")> | null = null;
  /**
   * Buffers for encoded pieces, lent to a thread with each task and handed back by the
   * caller (release) once the piece is written, so a job does not receive a fresh buffer
   * per piece. Why: a buffer that arrives from another thread was not allocated by this
   * thread's V8 heap, so it adds no pressure to collect it; dead pieces could pile up
   * until some unrelated full GC.
   */
  readonly #outputs: ArrayBuffer[] = [];

  constructor(threads: number) {
    this.threads = threads;
  }

  /** Starts every thread now (they instantiate parquet-wasm), so the first job does not wait for it. */
  prestart(): void {
    if (this.#closed) return;
    while (this.#slots.length < this.threads) this.#spawn();
  }

  encode(task: EncodeTask, options: EncodeOptions = {}): Promise<EncodeResult> {
    if (this.#closed) return Promise.reject(new Error("Parquet encoder pool is closed"));
    if (this.threads === 0) {
      this.#inline ??= import("./parquet-encode.js");
      return this.#inline.then((m) => ({ bytes: m.encodeRowGroup(task), input: task.ipc }));
    }
    return new Promise<EncodeResult>((resolve, reject) => {
      this.#queue.push({ id: this.#nextId++, task, transfer: options.transfer === true, resolve, reject });
      this.#pump();
    });
  }

  /** Hands back the bytes of a finished piece, so its buffer carries a later piece. */
  release(bytes: Uint8Array): void {
    const buffer = bytes.buffer;
    if (this.threads === 0 || !(buffer instanceof ArrayBuffer) || buffer.byteLength === 0) return;
    if (this.#outputs.length < this.threads * SPARE_OUTPUTS_PER_THREAD) this.#outputs.push(buffer);
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#outputs.length = 0;
    const error = new Error("Parquet encoder pool closed");
    for (const pending of this.#queue.splice(0)) pending.reject(error);
    const slots = this.#slots.splice(0);
    for (const slot of slots) {
      slot.retired = true;
      slot.current?.reject(error);
    }
    await Promise.all(slots.map((slot) => slot.worker.terminate()));
  }

  #pump(): void {
    while (this.#queue.length > 0) {
      let slot = this.#slots.find((s) => s.current === null);
      if (slot === undefined && this.#slots.length < this.threads) slot = this.#spawn();
      if (slot === undefined) return;
      const pending = this.#queue.shift()!;
      slot.current = pending;
      slot.worker.ref();
      const output = this.#outputs.pop();
      const request: EncodeRequest = { id: pending.id, task: pending.task, output };
      const buffer = pending.task.ipc.buffer;
      const transfer: ArrayBuffer[] = output === undefined ? [] : [output];
      if (pending.transfer && buffer instanceof ArrayBuffer) transfer.push(buffer);
      slot.worker.postMessage(request, transfer);
    }
  }

  #retire(slot: Slot): void {
    slot.retired = true;
    const index = this.#slots.indexOf(slot);
    if (index >= 0) this.#slots.splice(index, 1);
    void slot.worker.terminate();
  }

  #spawn(): Slot {
    // The thread allocates next to nothing in JS per task (the data lives in wasm memory
    // and in the buffers lent to it), so a small young generation is enough: it saves
    // ~6 MB per thread over V8's default.
    const worker = new Worker(WORKER_URL, { resourceLimits: { maxYoungGenerationSizeMb: 2 } });
    const slot: Slot = { worker, current: null, retired: false };
    worker.on("message", (response: EncodeResponse) => {
      const pending = slot.current;
      if (pending === null || pending.id !== response.id) return;
      slot.current = null;
      worker.unref();
      if ("error" in response) {
        // A Rust panic may leave that wasm instance unusable: retire the thread, start afresh.
        this.#retire(slot);
        pending.reject(new Error(`Parquet encoding failed: ${response.error}`));
      } else {
        pending.resolve({ bytes: response.bytes, input: response.input });
      }
      this.#pump();
    });
    const fail = (err: Error) => {
      if (slot.retired) return;
      this.#retire(slot);
      slot.current?.reject(err);
      slot.current = null;
      if (!this.#closed) this.#pump();
    };
    worker.on("error", (err) => fail(err instanceof Error ? err : new Error(String(err))));
    worker.on("exit", (code) => fail(new Error(`Parquet encoder thread exited with code ${code}`)));
    worker.unref();
    this.#slots.push(slot);
    return slot;
  }
}
