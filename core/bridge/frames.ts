/**
 * The data-plane framing of PROTOCOL.md §3, decoded incrementally from socket chunks.
 *
 *   [u32 BE length][length bytes]   length 1..0xFFFFFFFA: one complete Arrow IPC stream
 *   [u32 0]                         end of stream
 *   [u32 0xFFFFFFFF][u32 n][n bytes UTF-8]   error message (then end of stream, exit ≠ 0)
 *
 * The reserved lengths 0xFFFFFFFB..0xFFFFFFFE are sideband frames. We accept the ones the
 * later upstream guest sent, so such a guest runs unchanged:
 *   0xFFFFFFFE log:          [u8 level][u32 n][n bytes UTF-8]
 *   0xFFFFFFFD output start: [u32 index]       (no topic information; ignored)
 *   0xFFFFFFFC output end:   [u32 index]       (ignored)
 *   0xFFFFFFFB metrics:      [u32 n][n bytes JSON object]
 * Our own shim sends none of them: topics travel inside the IPC stream (see topic.ts).
 *
 * Memory: a data frame is copied once, into a buffer of its own, as its bytes arrive;
 * nothing else accumulates, because the host stops reading while a batch is consumed. The
 * buffer comes from `allocate` when given (the host's FramePool, frame-pool.ts, which reuses
 * the buffers of batches nobody uses any more), else it is a new one of exactly its size.
 */
import { Errors } from "../kernel/errors.js";

export const END_OF_STREAM = 0;
export const ERROR_FRAME = 0xffffffff;
export const LOG_FRAME = 0xfffffffe;
export const OUTPUT_START_FRAME = 0xfffffffd;
export const OUTPUT_END_FRAME = 0xfffffffc;
export const METRICS_FRAME = 0xfffffffb;
/** Largest length that still means "data": everything above is reserved. */
export const MAX_DATA_LENGTH = 0xfffffffa;

export const DEFAULT_MAX_FRAME_BYTES = 256 * 1024 * 1024;
/** Free bytes before every data frame's bytes in its ArrayBuffer (a multiple of 8). */
export const DATA_HEADROOM = 512;
export const MAX_MESSAGE_BYTES = 1024 * 1024;

export type Frame =
  | { kind: "data"; bytes: Uint8Array }
  | { kind: "end" }
  | { kind: "error"; message: string }
  | { kind: "log"; level: number; message: string }
  | { kind: "output-start" | "output-end"; index: number }
  | { kind: "metrics"; json: string };

type Step =
  | { at: "length" }
  | { at: "error-length" }
  | { at: "log-level" }
  | { at: "log-length"; level: number }
  | { at: "index"; kind: "output-start" | "output-end" }
  | { at: "metrics-length" }
  | { at: "body"; kind: "data" | "error" | "metrics" | "log"; level?: number; buffer: Uint8Array; filled: number };

const decoder = new TextDecoder("utf-8");

/** `length` bytes for a data frame, with DATA_HEADROOM free bytes in front of them in the same ArrayBuffer, 8-byte aligned. */
export type FrameAllocator = (length: number) => Uint8Array;

/** A new ArrayBuffer per frame (consumers may keep views into it), not zero-filled. */
const ownBuffer: FrameAllocator = (length) => Buffer.allocUnsafeSlow(DATA_HEADROOM + length).subarray(DATA_HEADROOM);

export class FrameDecoder {
  readonly #maxFrameBytes: number;
  readonly #allocate: FrameAllocator;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #step: Step = { at: "length" };
  #ended = false;

  constructor(maxFrameBytes = DEFAULT_MAX_FRAME_BYTES, allocate: FrameAllocator = ownBuffer) {
    this.#maxFrameBytes = maxFrameBytes;
    this.#allocate = allocate;
  }

  /** True once the end-of-stream frame was decoded. */
  get ended(): boolean {
    return this.#ended;
  }

  /** True when bytes of an incomplete frame are pending (the guest stopped mid-frame). */
  get midFrame(): boolean {
    return this.#buffered > 0 || this.#step.at !== "length";
  }

  /** Feed bytes; returns every frame they complete, in order. Throws GUEST_PROTOCOL on garbage. */
  push(chunk: Buffer): Frame[] {
    return [...this.frames(chunk)];
  }

  /**
   * Feed bytes; yields the frames they complete one at a time, each data frame's buffer
   * allocated only when the one before it has been taken: a consumer that finishes with a
   * frame before asking for the next lets a pool (frame-pool.ts) reuse its buffer even when
   * one chunk holds many small frames. Consume it to the end before feeding more bytes.
   * Throws GUEST_PROTOCOL on garbage, after the frames before it.
   */
  *frames(chunk: Buffer): Generator<Frame, void, undefined> {
    const frames: Frame[] = [];
    if (this.#ended) {
      if (chunk.length > 0) throw Errors.GUEST_PROTOCOL([`${chunk.length} bytes after end of stream`]);
      return;
    }
    if (this.#step.at === "body") {
      chunk = this.#fillBody(chunk, frames);
      yield* frames.splice(0);
    }
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
    }
    while (!this.#ended) {
      if (this.#step.at === "body") {
        const rest = this.#drainIntoBody(frames);
        yield* frames.splice(0);
        if (!rest) break;
        continue;
      }
      const more = this.#advance(frames);
      yield* frames.splice(0);
      if (!more) break;
    }
    if (this.#ended && this.#buffered > 0) throw Errors.GUEST_PROTOCOL([`${this.#buffered} bytes after end of stream`]);
  }

  /** One header-level step; false when more bytes are needed. */
  #advance(frames: Frame[]): boolean {
    const step = this.#step;
    switch (step.at) {
      case "length": {
        const length = this.#readU32();
        if (length === null) return false;
        if (length === END_OF_STREAM) {
          this.#ended = true;
          frames.push({ kind: "end" });
        } else if (length === ERROR_FRAME) this.#step = { at: "error-length" };
        else if (length === LOG_FRAME) this.#step = { at: "log-level" };
        else if (length === OUTPUT_START_FRAME) this.#step = { at: "index", kind: "output-start" };
        else if (length === OUTPUT_END_FRAME) this.#step = { at: "index", kind: "output-end" };
        else if (length === METRICS_FRAME) this.#step = { at: "metrics-length" };
        else {
          if (length > this.#maxFrameBytes) {
            throw Errors.GUEST_PROTOCOL([
              `data frame of ${length} bytes exceeds the limit of ${this.#maxFrameBytes} bytes (bridge.maxFrameBytes); publish smaller chunks`,
            ]);
          }
          this.#beginBody("data", length);
        }
        return true;
      }
      case "error-length":
      case "metrics-length":
      case "log-length": {
        const length = this.#readU32();
        if (length === null) return false;
        const kind = step.at === "error-length" ? "error" : step.at === "metrics-length" ? "metrics" : "log";
        if (length > MAX_MESSAGE_BYTES) throw Errors.GUEST_PROTOCOL([`${kind} message of ${length} bytes exceeds the limit of ${MAX_MESSAGE_BYTES} bytes`]);
        this.#beginBody(kind, length, step.at === "log-length" ? step.level : undefined);
        if (length === 0) this.#finishBody(frames);
        return true;
      }
      case "log-level": {
        const level = this.#read(1);
        if (level === null) return false;
        this.#step = { at: "log-length", level: level[0]! };
        return true;
      }
      case "index": {
        const index = this.#readU32();
        if (index === null) return false;
        frames.push({ kind: step.kind, index });
        this.#step = { at: "length" };
        return true;
      }
      case "body":
        return false;
    }
  }

  #beginBody(kind: "data" | "error" | "metrics" | "log", length: number, level?: number): void {
    let buffer: Uint8Array;
    if (kind === "data") {
      // 8-byte aligned so Arrow views it without copying, with DATA_HEADROOM free bytes in
      // front where topic.ts can rewrite the schema message in place. Allocated only once the
      // length passed the limit check above: a hostile length never reaches the allocator.
      buffer = this.#allocate(length);
    } else {
      buffer = new Uint8Array(length);
    }
    this.#step = { at: "body", kind, level, buffer, filled: 0 };
  }

  /** Copy buffered bytes into the pending body; true when the body completed. */
  #drainIntoBody(frames: Frame[]): boolean {
    while (this.#step.at === "body" && this.#chunks.length > 0) {
      const chunk = this.#chunks.shift()!;
      this.#buffered -= chunk.length;
      const rest = this.#fillBody(chunk, frames);
      if (rest.length > 0) {
        this.#chunks.unshift(rest);
        this.#buffered += rest.length;
      }
    }
    return this.#step.at !== "body";
  }

  /** Copy as much of `chunk` as the body needs; returns the unused remainder. */
  #fillBody(chunk: Buffer, frames: Frame[]): Buffer {
    const step = this.#step;
    if (step.at !== "body") return chunk;
    const take = Math.min(step.buffer.length - step.filled, chunk.length);
    step.buffer.set(chunk.subarray(0, take), step.filled);
    step.filled += take;
    if (step.filled === step.buffer.length) this.#finishBody(frames);
    return chunk.subarray(take);
  }

  #finishBody(frames: Frame[]): void {
    const step = this.#step;
    if (step.at !== "body") return;
    this.#step = { at: "length" };
    switch (step.kind) {
      case "data":
        frames.push({ kind: "data", bytes: step.buffer });
        break;
      case "error":
        frames.push({ kind: "error", message: decoder.decode(step.buffer) });
        break;
      case "metrics":
        frames.push({ kind: "metrics", json: decoder.decode(step.buffer) });
        break;
      case "log":
        frames.push({ kind: "log", level: step.level ?? 0, message: decoder.decode(step.buffer) });
        break;
    }
  }

  #readU32(): number | null {
    const bytes = this.#read(4);
    return bytes === null ? null : bytes.readUInt32BE(0);
  }

  #read(n: number): Buffer | null {
    if (this.#buffered < n) return null;
    const first = this.#chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const head = this.#chunks[0]!;
        const take = Math.min(n - filled, head.length);
        head.copy(out, filled, 0, take);
        filled += take;
        if (take === head.length) this.#chunks.shift();
        else this.#chunks[0] = head.subarray(take);
      }
    }
    this.#buffered -= n;
    return out;
  }
}
