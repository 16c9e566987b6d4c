/**
 * Frame memory that is reused instead of left to the garbage collector.
 *
 * With a pool, the frame decoder reads each data frame into a buffer taken from it, and
 * the buffer comes back once nothing uses the batch any more: every onBatch tap has
 * resolved and every `Batch.retain()` was released (FrameLease). The next frame of a
 * similar size is read into it. Dead frames then do not pile up as external memory until
 * V8 collects them (it does so when external memory has grown by 64 MB since its last
 * full collection): a job's frame memory is the frames in flight plus this pool.
 *
 * Giving a buffer back detaches it: its memory moves to a new ArrayBuffer that only the
 * pool holds. A view that someone kept without retain() therefore reads as empty, never
 * as the bytes of a later frame.
 */
import { Errors } from "../kernel/errors.js";
import { DATA_HEADROOM } from "./frames.js";

/**
 * Free buffers kept for reuse. The pool never holds more than the job once had in flight
 * (a buffer comes back only after it was taken), so these caps matter only after a sink
 * let go of many retained batches at once.
 */
export const POOL_MAX_BUFFERS = 256;
export const POOL_MAX_BYTES = 32 * 1024 * 1024;
/** Buffers up to this size are rounded up to a power of two, larger ones to an eighth of one. */
const SMALL_BUFFER = 64 * 1024;

/** Size class of a buffer for `bytes`: frames of similar sizes share buffers, at most 1/8 wasted above 64 KiB. */
export function bufferSizeFor(bytes: number): number {
  if (bytes <= SMALL_BUFFER) return Math.max(1024, 2 ** Math.ceil(Math.log2(bytes)));
  const step = 2 ** Math.floor(Math.log2(bytes)) / 8;
  return Math.ceil(bytes / step) * step;
}

export class FramePool {
  /** Free buffers by size class. */
  readonly #free = new Map<number, ArrayBuffer[]>();
  #freeBuffers = 0;
  #freeBytes = 0;
  #allocated = 0;
  #reused = 0;

  /** Buffers allocated, frames read into a buffer that came back, and free buffers now (for tests and benchmarks). */
  get stats(): { allocated: number; reused: number; free: number } {
    return { allocated: this.#allocated, reused: this.#reused, free: this.#freeBuffers };
  }

  /**
   * `length` bytes for one data frame, with DATA_HEADROOM free bytes in front in the same
   * ArrayBuffer (8-byte aligned, as frames.ts promises; not zero-filled).
   */
  take(length: number): Uint8Array {
    const size = bufferSizeFor(DATA_HEADROOM + length);
    let buffer = this.#free.get(size)?.pop();
    if (buffer !== undefined) {
      this.#freeBuffers--;
      this.#freeBytes -= size;
      this.#reused++;
    } else {
      // An ArrayBuffer of its own (not Node's shared pool: it must be transferable), not zero-filled.
      buffer = Buffer.allocUnsafeSlow(size).buffer as ArrayBuffer;
      this.#allocated++;
    }
    return new Uint8Array(buffer, DATA_HEADROOM, length);
  }

  /** Take back a frame's buffer: every view of it is detached; its memory is kept for a later frame if there is room. */
  give(buffer: ArrayBuffer): void {
    if (buffer.byteLength === 0) return; // detached already
    const moved = structuredClone(buffer, { transfer: [buffer] });
    const size = moved.byteLength;
    if (this.#freeBuffers >= POOL_MAX_BUFFERS || this.#freeBytes + size > POOL_MAX_BYTES) return;
    const bucket = this.#free.get(size);
    if (bucket === undefined) this.#free.set(size, [moved]);
    else bucket.push(moved);
    this.#freeBuffers++;
    this.#freeBytes += size;
  }
}

/**
 * Who still uses one frame's buffer: the host until the batch's onBatch has settled, plus
 * one holder per `Batch.retain()` not yet released. The last one out hands the buffer to `free`.
 */
export class FrameLease {
  readonly #buffer: ArrayBuffer;
  readonly #free: (buffer: ArrayBuffer) => void;
  #holders = 1;

  constructor(buffer: ArrayBuffer, free: (buffer: ArrayBuffer) => void) {
    this.#buffer = buffer;
    this.#free = free;
  }

  /** True once the buffer went back: the batch's bytes are gone. */
  get released(): boolean {
    return this.#holders === 0;
  }

  /** Batch.retain(): one more holder; the function it returns lets go (once; calling it again does nothing). */
  readonly retain = (): (() => void) => {
    if (this.#holders === 0) throw Errors.BATCH_RELEASED(["retain() was called"]);
    this.#holders++;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.release();
    };
  };

  /** The host's own hold, let go once onBatch has settled. */
  release(): void {
    if (this.#holders === 0) return;
    this.#holders--;
    if (this.#holders === 0) this.#free(this.#buffer);
  }
}
