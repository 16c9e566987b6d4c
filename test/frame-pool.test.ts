/**
 * Frame buffers that are reused (core/bridge/frame-pool.ts): a buffer goes back exactly
 * once, after its last holder let go, and going back detaches every view of it.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { tableFromArrays, tableFromIPC, tableToIPC } from "apache-arrow";
import { DATA_HEADROOM } from "../core/bridge/frames.js";
import { bufferSizeFor, FrameLease, FramePool, POOL_MAX_BUFFERS } from "../core/bridge/frame-pool.js";
import { FrameTopics } from "../core/bridge/topic.js";
import { Errors } from "../core/kernel/errors.js";

describe("FramePool", () => {
  test("a frame gets DATA_HEADROOM free bytes in front, 8-byte aligned, in a buffer of its size class", () => {
    const pool = new FramePool();
    for (const length of [1, 100, 1500, 70_000, 3_000_001]) {
      const bytes = pool.take(length);
      assert.equal(bytes.byteLength, length);
      assert.equal(bytes.byteOffset, DATA_HEADROOM);
      assert.equal(bytes.byteOffset % 8, 0);
      assert.equal(bytes.buffer.byteLength, bufferSizeFor(DATA_HEADROOM + length));
      assert.ok(bytes.buffer.byteLength >= DATA_HEADROOM + length);
    }
  });

  test("size classes waste at most an eighth above 64 KiB", () => {
    for (const bytes of [65_537, 100_000, 1_000_000, 3_145_729, 200_000_000]) {
      const size = bufferSizeFor(bytes);
      assert.ok(size >= bytes && size <= bytes * 1.125, `${bytes} → ${size}`);
    }
  });

  test("a buffer given back is detached for everyone who kept a view, and the next frame of its class reuses its memory", () => {
    const pool = new FramePool();
    const first = pool.take(3_000_000);
    first.fill(7);
    const kept = new Uint8Array(first.buffer, DATA_HEADROOM + 10, 100);
    pool.give(first.buffer as ArrayBuffer);
    assert.equal(first.byteLength, 0, "the frame's own view is detached");
    assert.equal(kept.byteLength, 0, "a view someone kept is detached: it cannot show the next frame's bytes");
    const second = pool.take(3_000_100);
    assert.deepEqual(pool.stats, { allocated: 1, reused: 1, free: 0 });
    assert.equal(second.byteLength, 3_000_100);
    // A frame of another size class does not take it.
    pool.give(second.buffer as ArrayBuffer);
    pool.take(1000);
    assert.deepEqual(pool.stats, { allocated: 2, reused: 1, free: 1 });
  });

  test(`at most ${POOL_MAX_BUFFERS} free buffers are kept; giving back a detached buffer does nothing`, () => {
    const pool = new FramePool();
    const taken = Array.from({ length: POOL_MAX_BUFFERS + 10 }, () => pool.take(100));
    for (const bytes of taken) pool.give(bytes.buffer as ArrayBuffer);
    assert.equal(pool.stats.free, POOL_MAX_BUFFERS);
    pool.give(taken[0]!.buffer as ArrayBuffer);
    assert.equal(pool.stats.free, POOL_MAX_BUFFERS);
  });
});

describe("FrameLease", () => {
  test("the buffer goes back exactly once, after the host and every retain() let go, in any order", () => {
    const freed: ArrayBuffer[] = [];
    const buffer = new ArrayBuffer(16);
    const lease = new FrameLease(buffer, (b) => freed.push(b));
    const releaseA = lease.retain();
    const releaseB = lease.retain();
    lease.release(); // the host: onBatch settled
    assert.equal(freed.length, 0, "retained: not freed when onBatch settles");
    releaseA();
    releaseA(); // a second call does nothing
    assert.equal(freed.length, 0, "a double release must not free what B still holds");
    releaseB();
    assert.deepEqual(freed, [buffer]);
    assert.ok(lease.released);
    releaseB();
    lease.release();
    assert.equal(freed.length, 1, "freed once");
    assert.throws(
      () => lease.retain(),
      (err: unknown) => Errors.BATCH_RELEASED.is(err),
    );
  });

  test("a Batch with a lease: retain() holds its frame, and once released its ipc is empty and its table refused", () => {
    const pool = new FramePool();
    const ipc = tableToIPC(tableFromArrays({ n: Int32Array.from([1, 2, 3]) }), "stream");
    const bytes = pool.take(ipc.byteLength);
    bytes.set(ipc);
    const lease = new FrameLease(bytes.buffer as ArrayBuffer, (b) => pool.give(b));
    const batch = new FrameTopics().decode(bytes).toBatch(0, lease);
    const release = batch.retain();
    lease.release();
    assert.deepEqual([...batch.table.getChild("n")!], [1, 2, 3], "still held: intact");
    release();
    assert.equal(batch.ipc.byteLength, 0);
    assert.throws(
      () => batch.table,
      (err: unknown) => Errors.BATCH_RELEASED.is(err) && /batch 0 of topic "output"/.test((err as Error).message),
    );
    assert.throws(
      () => batch.retain(),
      (err: unknown) => Errors.BATCH_RELEASED.is(err),
    );
  });
});

describe("FrameTopics kept for the process (the host's, job after job)", () => {
  /** A frame as the guest sends it: an IPC stream naming its topic, in a pool buffer with headroom. */
  function frameOf(topic: string, columns: Record<string, Int32Array | Float64Array>): Uint8Array {
    const table = tableFromArrays(columns);
    table.schema.metadata.set("casparian.topic", topic);
    const ipc = tableToIPC(table, "stream");
    const bytes = new FramePool().take(ipc.byteLength);
    bytes.set(ipc);
    return bytes;
  }

  test("each frame's batch has its own frame's columns, whatever schema the topic had before; the topic key never reaches a sink", () => {
    const topics = new FrameTopics();
    const shapes: Array<Record<string, Int32Array | Float64Array>> = [
      { n: Int32Array.from([1, 2]) },
      { n: Float64Array.from([1.5]) },
      { n: Int32Array.from([3]), m: Int32Array.from([4]) },
      { n: Int32Array.from([5, 6, 7]) },
    ];
    // Three jobs in a row, then more topics than it remembers, then the first topics again.
    const names = [
      ...["a", "b", "a"].flatMap((t) => shapes.map((s) => [t, s] as const)),
      ...Array.from({ length: 80 }, (_, i) => [`t${i}`, shapes[i % 4]!] as const),
    ];
    for (const [topic, columns] of [...names, ...names.slice(0, 8)]) {
      const batch = topics.decode(frameOf(topic, columns)).toBatch(0);
      assert.equal(batch.topic, topic);
      const sent = tableFromIPC(batch.ipc);
      for (const table of [batch.table, sent]) {
        assert.equal(table.schema.metadata.has("casparian.topic"), false, `${topic}: the topic key reached a sink`);
        assert.deepEqual(
          table.schema.fields.map((f) => `${f.name}:${f.type}`),
          Object.entries(columns).map(([name, values]) => `${name}:${values instanceof Float64Array ? "Float64" : "Int32"}`),
        );
        assert.deepEqual([...table.getChild("n")!], [...columns.n!]);
      }
    }
  });
});
