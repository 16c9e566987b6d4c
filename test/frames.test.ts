/**
 * FrameDecoder: the data-plane framing of PROTOCOL.md §3, fed the way a socket feeds it.
 * One stream holding every frame kind is cut at every byte offset (and into single bytes);
 * however it is cut, the same frames come out, in order.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  DATA_HEADROOM,
  END_OF_STREAM,
  ERROR_FRAME,
  FrameDecoder,
  LOG_FRAME,
  MAX_MESSAGE_BYTES,
  METRICS_FRAME,
  OUTPUT_END_FRAME,
  OUTPUT_START_FRAME,
  type Frame,
} from "../core/bridge/frames.js";
import { Errors } from "../core/kernel/errors.js";

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

const data1 = Buffer.from([1, 2, 3, 4, 5, 6, 7]);
const data2 = Buffer.alloc(300, 0xab);

/** Every frame kind once, then end of stream: one Buffer per frame. */
const wireFrames = [
  Buffer.concat([u32(data1.length), data1]),
  Buffer.concat([u32(LOG_FRAME), Buffer.from([2]), u32(5), Buffer.from("hello")]),
  Buffer.concat([u32(OUTPUT_START_FRAME), u32(7)]),
  Buffer.concat([u32(data2.length), data2]),
  Buffer.concat([u32(OUTPUT_END_FRAME), u32(7)]),
  Buffer.concat([u32(METRICS_FRAME), u32(8), Buffer.from('{"a": 1}')]),
  Buffer.concat([u32(LOG_FRAME), Buffer.from([0]), u32(0)]),
  Buffer.concat([u32(ERROR_FRAME), u32(4), Buffer.from("boom")]),
  u32(END_OF_STREAM),
];
const stream = Buffer.concat(wireFrames);
/** Offsets where one whole frame ends and the next begins. */
const boundaries = new Set(wireFrames.map((_, i) => wireFrames.slice(0, i + 1).reduce((sum, b) => sum + b.length, 0)));

/** Frames as comparable plain values (data frames by their bytes). */
function plain(frames: Frame[]): unknown[] {
  return frames.map((f) => (f.kind === "data" ? { kind: "data", bytes: [...f.bytes] } : f));
}

const expected = plain([
  { kind: "data", bytes: data1 },
  { kind: "log", level: 2, message: "hello" },
  { kind: "output-start", index: 7 },
  { kind: "data", bytes: data2 },
  { kind: "output-end", index: 7 },
  { kind: "metrics", json: '{"a": 1}' },
  { kind: "log", level: 0, message: "" },
  { kind: "error", message: "boom" },
  { kind: "end" },
]);

function decodeInPieces(pieces: Buffer[]): { frames: Frame[]; decoder: FrameDecoder } {
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  for (const piece of pieces) frames.push(...decoder.push(piece));
  return { frames, decoder };
}

describe("FrameDecoder", () => {
  test("one push decodes every frame kind", () => {
    const { frames, decoder } = decodeInPieces([stream]);
    assert.deepEqual(plain(frames), expected);
    assert.equal(decoder.ended, true);
    assert.equal(decoder.midFrame, false);
  });

  test("cut in two at every byte offset, the same frames come out", () => {
    for (let at = 0; at <= stream.length; at++) {
      const { frames, decoder } = decodeInPieces([stream.subarray(0, at), stream.subarray(at)]);
      assert.deepEqual(plain(frames), expected, `split at byte ${at}`);
      assert.equal(decoder.ended, true, `split at byte ${at}`);
    }
  });

  test("cut in three at every pair of offsets, the same frames come out", () => {
    // Every pair would be ~200k decodes; a stride keeps it quick and still crosses every header.
    for (let a = 0; a <= stream.length; a += 3) {
      for (let b = a; b <= stream.length; b += 5) {
        const { frames } = decodeInPieces([stream.subarray(0, a), stream.subarray(a, b), stream.subarray(b)]);
        assert.deepEqual(plain(frames), expected, `split at ${a} and ${b}`);
      }
    }
  });

  test("fed one byte at a time, the same frames come out", () => {
    const pieces = [...stream].map((byte) => Buffer.from([byte]));
    assert.deepEqual(plain(decodeInPieces(pieces).frames), expected);
  });

  test("midFrame says when the guest stopped inside a frame", () => {
    for (let at = 1; at < stream.length; at++) {
      const decoder = new FrameDecoder();
      decoder.push(stream.subarray(0, at));
      assert.equal(decoder.ended, false, `cut at byte ${at}`);
      // Between two whole frames nothing is pending; anywhere else something is.
      assert.equal(decoder.midFrame, !boundaries.has(at), `cut at byte ${at}`);
    }
  });

  test("data frames own their buffer, with headroom in front for the schema rewrite", () => {
    const { frames } = decodeInPieces([stream.subarray(0, 6), stream.subarray(6)]);
    const first = frames[0];
    assert.ok(first?.kind === "data");
    assert.equal(first.bytes.byteOffset, DATA_HEADROOM);
    assert.equal(first.bytes.buffer.byteLength, DATA_HEADROOM + data1.length);
  });

  test("bytes after end of stream are refused, in the same push or a later one", () => {
    assert.throws(
      () => new FrameDecoder().push(Buffer.concat([u32(END_OF_STREAM), Buffer.from([0])])),
      (err: unknown) => Errors.GUEST_PROTOCOL.is(err),
    );
    const decoder = new FrameDecoder();
    decoder.push(u32(END_OF_STREAM));
    assert.deepEqual(decoder.push(Buffer.alloc(0)), []);
    assert.throws(
      () => decoder.push(Buffer.from([1])),
      (err: unknown) => Errors.GUEST_PROTOCOL.is(err),
    );
  });

  test("a data frame over the limit is refused from its header, before its body arrives", () => {
    const decoder = new FrameDecoder(1024);
    assert.throws(
      () => decoder.push(u32(1025)),
      (err: unknown) => Errors.GUEST_PROTOCOL.is(err) && /1025 bytes exceeds the limit of 1024/.test(String(err)),
    );
    const atLimit = new FrameDecoder(1024).push(Buffer.concat([u32(1024), Buffer.alloc(1024)]));
    assert.equal(atLimit.length, 1);
    assert.equal(atLimit[0]?.kind, "data");
  });

  test("error, log and metrics messages over 1 MiB are refused from their length", () => {
    for (const head of [[u32(ERROR_FRAME)], [u32(METRICS_FRAME)], [u32(LOG_FRAME), Buffer.from([1])]]) {
      const decoder = new FrameDecoder();
      assert.throws(
        () => decoder.push(Buffer.concat([...head, u32(MAX_MESSAGE_BYTES + 1)])),
        (err: unknown) => Errors.GUEST_PROTOCOL.is(err),
      );
    }
  });
});
