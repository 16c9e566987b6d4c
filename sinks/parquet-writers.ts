/**
 * Parquet writer threads shared by every Parquet sink of one plugin instance. Each open
 * file is a stream on one thread (the least busy); a thread writes several files at once
 * when a job has several topics or jobs overlap. More cores, more threads
 * (encoderThreads), more files encoded in parallel; one file is one parquet-rs writer.
 *
 * With 0 threads, files are written on the calling thread by the same engine.
 * Threads only keep the process alive while they have a file open.
 */
import { Worker } from "node:worker_threads";
import type { ParquetFileWriter } from "./parquet-engine.js";
import type { EngineInfo, WriterSettings } from "./parquet-settings.js";

export type ThreadRequest =
  | { kind: "open"; stream: number; path: string; settings: WriterSettings }
  | { kind: "write"; stream: number; token: number; ipc: Uint8Array }
  | { kind: "end"; stream: number }
  | { kind: "abort"; stream: number; reason: string };

export type ThreadResponse =
  | { kind: "taken"; stream: number; token: number; buffer: ArrayBuffer | undefined }
  | { kind: "done"; stream: number; bytes: number; engine: EngineInfo; threadId: number }
  | { kind: "failed"; stream: number; error: string };

/** What a finished file reports: its size, the engine that wrote it, and where (0: the main thread). */
export interface WriteReport {
  bytes: number;
  engine: EngineInfo;
  threadId: number;
}

/**
 * One file being written. `write` resolves once the file has room for another IPC
 * stream (at most `maxInFlight` are queued for the writer): backpressure that reaches
 * the guest. Buffers the writer is done with come back through `takeBuffer`.
 */
export interface ParquetFileStream {
  write(ipc: Uint8Array): Promise<void>;
  /** A buffer of at least `size` bytes that a finished write gave back, if there is one. */
  takeBuffer(size: number): ArrayBuffer | undefined;
  /** Writes the footer, fsyncs and closes the file. */
  finish(): Promise<WriteReport>;
  /** Stops writing; settles once the writer has let go of the file. Idempotent. */
  abort(reason: string): Promise<void>;
}

const THREAD_URL = new URL("./parquet-thread.js", import.meta.url);
const SPARE_BUFFERS = 2;

/** Backpressure, buffer reuse and the end of one stream, whichever side does the writing. */
abstract class StreamBase implements ParquetFileStream {
  readonly #maxInFlight: number;
  readonly #spare: ArrayBuffer[] = [];
  readonly #settled: Promise<WriteReport>;
  #resolve!: (report: WriteReport) => void;
  #reject!: (err: Error) => void;
  #inFlight = 0;
  #nextToken = 1;
  #room: (() => void) | null = null;
  #failure: Error | null = null;
  #finished = false;

  constructor(maxInFlight: number) {
    this.#maxInFlight = maxInFlight;
    this.#settled = new Promise<WriteReport>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.#settled.catch(() => {});
  }

  protected abstract send(token: number, ipc: Uint8Array): void;
  protected abstract sendEnd(): void;
  protected abstract sendAbort(reason: string): void;

  async write(ipc: Uint8Array): Promise<void> {
    if (this.#failure) throw this.#failure;
    this.#inFlight++;
    this.send(this.#nextToken++, ipc);
    while (this.#inFlight >= this.#maxInFlight && this.#failure === null) await new Promise<void>((resolve) => (this.#room = resolve));
    if (this.#failure) throw this.#failure;
  }

  takeBuffer(size: number): ArrayBuffer | undefined {
    const index = this.#spare.findIndex((b) => b.byteLength >= size);
    return index < 0 ? undefined : this.#spare.splice(index, 1)[0];
  }

  finish(): Promise<WriteReport> {
    if (!this.#finished && this.#failure === null) {
      this.#finished = true;
      this.sendEnd();
    }
    return this.#settled;
  }

  async abort(reason: string): Promise<void> {
    if (!this.#finished) {
      this.#finished = true;
      this.sendAbort(reason);
    }
    await this.#settled.catch(() => {});
  }

  protected taken(buffer: ArrayBuffer | undefined): void {
    this.#inFlight--;
    if (buffer !== undefined && buffer.byteLength > 0 && this.#spare.length < SPARE_BUFFERS) this.#spare.push(buffer);
    this.#wakeWriter();
  }

  protected settle(result: { report: WriteReport } | { error: Error }): void {
    if ("error" in result) {
      this.#failure ??= result.error;
      this.#reject(result.error);
    } else {
      this.#resolve(result.report);
    }
    this.#wakeWriter();
  }

  #wakeWriter(): void {
    const room = this.#room;
    this.#room = null;
    room?.();
  }
}

/** A file written on this thread (encoderThreads 0); parquet-wasm is loaded here on first use. */
class InlineStream extends StreamBase {
  readonly #writer: Promise<ParquetFileWriter>;

  constructor(path: string, settings: WriterSettings, maxInFlight: number) {
    super(maxInFlight);
    this.#writer = import("./parquet-engine.js").then(({ ENGINE, ParquetFileWriter }) => {
      const writer = new ParquetFileWriter(path, settings, () => this.taken(undefined));
      writer.done.then(
        (bytes) => this.settle({ report: { bytes, engine: ENGINE, threadId: 0 } }),
        (err: unknown) => this.settle({ error: err instanceof Error ? err : new Error(String(err)) }),
      );
      return writer;
    });
    this.#writer.catch((err: unknown) => this.settle({ error: err instanceof Error ? err : new Error(String(err)) }));
  }

  protected send(token: number, ipc: Uint8Array): void {
    void this.#writer.then(
      (writer) => {
        try {
          writer.push(ipc, token);
        } catch (err) {
          writer.fail(err instanceof Error ? err : new Error(String(err)));
        }
      },
      () => {},
    );
  }
  protected sendEnd(): void {
    void this.#writer.then(
      (writer) => writer.end(),
      () => {},
    );
  }
  protected sendAbort(reason: string): void {
    void this.#writer.then(
      (writer) => writer.fail(new Error(reason)),
      () => {},
    );
  }
}

interface Slot {
  worker: Worker;
  streams: Map<number, ThreadStream>;
  /** Terminated or crashed: takes no more files, and its exit is expected. */
  retired: boolean;
  /** Out of rotation: terminated once its last file ends. */
  retiring: boolean;
}

/** A file written by a writer thread. */
class ThreadStream extends StreamBase {
  readonly #slot: Slot;
  readonly #id: number;

  constructor(slot: Slot, id: number, path: string, settings: WriterSettings, maxInFlight: number) {
    super(maxInFlight);
    this.#slot = slot;
    this.#id = id;
    slot.streams.set(id, this);
    if (slot.streams.size === 1) slot.worker.ref();
    this.#post({ kind: "open", stream: id, path, settings });
  }

  protected send(token: number, ipc: Uint8Array): void {
    // Moved, not copied: the caller hands over the whole buffer (see ParquetWriterPool.open).
    this.#post({ kind: "write", stream: this.#id, token, ipc }, ipc.buffer instanceof ArrayBuffer ? [ipc.buffer] : []);
  }
  protected sendEnd(): void {
    this.#post({ kind: "end", stream: this.#id });
  }
  protected sendAbort(reason: string): void {
    this.#post({ kind: "abort", stream: this.#id, reason });
  }

  onResponse(response: ThreadResponse): void {
    switch (response.kind) {
      case "taken":
        this.taken(response.buffer);
        return;
      case "done":
        this.#detach();
        this.settle({ report: { bytes: response.bytes, engine: response.engine, threadId: response.threadId } });
        return;
      case "failed":
        this.#detach();
        this.settle({ error: new Error(`Parquet writer failed: ${response.error}`) });
        return;
    }
  }

  /** The thread is gone: the file can never be finished. */
  lost(err: Error): void {
    this.#detach();
    this.settle({ error: err });
  }

  #detach(): void {
    const slot = this.#slot;
    if (!slot.streams.delete(this.#id) || slot.streams.size > 0) return;
    slot.worker.unref();
    if (slot.retiring && !slot.retired) {
      slot.retired = true;
      void slot.worker.terminate();
    }
  }

  #post(request: ThreadRequest, transfer: ArrayBuffer[] = []): void {
    if (this.#slot.retired) return;
    this.#slot.worker.postMessage(request, transfer);
  }
}

export class ParquetWriterPool {
  readonly threads: number;
  readonly #slots: Slot[] = [];
  #nextStream = 1;
  #closed = false;

  constructor(threads: number) {
    this.threads = threads;
  }

  /** Starts every thread now (they instantiate parquet-wasm), so the first job does not wait for it. */
  prestart(): void {
    if (this.#closed) return;
    while (this.#slots.length < this.threads) this.#spawn();
  }

  /**
   * Opens `path` for writing. The caller must hand over whole buffers to `write` (they
   * are transferred to the thread) and not touch them afterwards.
   */
  open(path: string, settings: WriterSettings, maxInFlight: number): ParquetFileStream {
    if (this.#closed) throw new Error("Parquet writer pool is closed");
    if (this.threads === 0) return new InlineStream(path, settings, maxInFlight);
    this.prestart();
    const slot = this.#slots.reduce((best, s) => (s.streams.size < best.streams.size ? s : best));
    return new ThreadStream(slot, this.#nextStream++, path, settings, maxInFlight);
  }

  async close(): Promise<void> {
    this.#closed = true;
    const slots = this.#slots.splice(0);
    const error = new Error("Parquet writer pool closed");
    for (const slot of slots) {
      slot.retired = true;
      for (const stream of [...slot.streams.values()]) stream.lost(error);
    }
    await Promise.all(slots.map((slot) => slot.worker.terminate()));
  }

  #spawn(): Slot {
    // The thread allocates little in JS per batch (the data lives in wasm memory and in
    // the buffers lent to it), so a small young generation is enough.
    const worker = new Worker(THREAD_URL, { resourceLimits: { maxYoungGenerationSizeMb: 4 } });
    const slot: Slot = { worker, streams: new Map(), retired: false, retiring: false };
    worker.on("message", (response: ThreadResponse) => {
      slot.streams.get(response.stream)?.onResponse(response);
      // A failed writer may have left its wasm instance unusable (a Rust panic): retire
      // the thread once its other files are done; new files go to a fresh one.
      if (response.kind === "failed") this.#retire(slot, false);
    });
    const fail = (err: Error) => {
      if (slot.retired && slot.streams.size === 0) return;
      this.#retire(slot, true);
      for (const stream of [...slot.streams.values()]) stream.lost(err);
    };
    worker.on("error", (err) => fail(err instanceof Error ? err : new Error(String(err))));
    worker.on("exit", (code) => fail(new Error(`Parquet writer thread exited with code ${code}`)));
    worker.unref();
    this.#slots.push(slot);
    return slot;
  }

  /** Takes the slot out of rotation; terminates it now or once its remaining files end. */
  #retire(slot: Slot, now: boolean): void {
    const index = this.#slots.indexOf(slot);
    if (index >= 0) this.#slots.splice(index, 1);
    slot.retiring = true;
    if ((now || slot.streams.size === 0) && !slot.retired) {
      slot.retired = true;
      void slot.worker.terminate();
    }
  }
}
