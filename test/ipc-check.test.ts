/**
 * The IPC structure check (core/bridge/ipc-check.ts) against crafted and mutated frames.
 *
 * Base frames are real pyarrow streams written by the shared test environment; the
 * fixtures in test/fixtures/frames are mutations of a 3-row pyarrow stream that make
 * apache-arrow loop for minutes (or decode 2^32 phantom rows) when given unchecked.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { tableFromIPC, tableToIPC, tableFromArrays } from "apache-arrow";
import { checkIpcStream, IpcCheckError, MAX_DEPTH } from "../core/bridge/ipc-check.js";
import { fixturePath, testEnvironment, type TestEnvironment } from "./helpers/pyenv.js";
import { seededRandom } from "./helpers/random.js";

const execFileAsync = promisify(execFile);

let env: TestEnvironment;
let dir: string;
const bases = new Map<string, Uint8Array>();

/** Streams covering every layout the check knows: nulls, dictionaries, nesting, several batches, no batch. */
const WRITE_BASES = String.raw`
import datetime, decimal, sys, pyarrow as pa
out = sys.argv[1]
def write(name, table, chunk=None):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        for b in table.to_batches(max_chunksize=chunk) if chunk else [None]:
            w.write_batch(b) if b is not None else w.write_table(table)
    open(out + "/" + name + ".arrow", "wb").write(sink.getvalue().to_pybytes())
write("three-rows", pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]}))
write("nested", pa.table({"l": pa.array([[1, 2], [3], []]), "s": pa.array([{"x": 1}, {"x": 2}, None])}))
write("types", pa.table({
    "n": pa.nulls(3), "b": pa.array([True, None, False]), "d": pa.array(["a", "b", "a"]).dictionary_encode(),
    "ts": pa.array([datetime.datetime(2020, 1, 1), None, datetime.datetime(2021, 1, 1)], pa.timestamp("us", tz="UTC")),
    "dec": pa.array([decimal.Decimal("1.5"), None, decimal.Decimal("2.25")], pa.decimal128(10, 2)),
    "lu": pa.array(["x", None, "zz"], pa.large_string()), "fsl": pa.array([[1, 2], [3, 4], None], pa.list_(pa.int16(), 2)),
    "m": pa.array([{"k": 1}, None, {}], pa.map_(pa.string(), pa.int64())), "f": pa.array([1.5, None, 2.5], pa.float32()),
    "date": pa.array([datetime.date(2020, 1, 1), None, datetime.date(2020, 1, 2)]), "bin": pa.array([b"\0", None, b"abc"]),
    "fsb": pa.array([b"ab", None, b"cd"], pa.binary(2)), "t": pa.array([datetime.time(1, 2, 3), None, datetime.time(4, 5, 6)]),
    "dur": pa.array([datetime.timedelta(1), None, datetime.timedelta(2)]), "ll": pa.array([[1], [], None], pa.large_list(pa.int8())),
}, metadata={"casparian.topic": "typed"}))
write("batches", pa.table({"a": list(range(10)), "s": [str(i) for i in range(10)]}), chunk=3)
write("empty", pa.table({"a": pa.array([], pa.int64())}))
`;

before(async () => {
  env = await testEnvironment();
  dir = await mkdtemp(join(tmpdir(), "casparian-ipc-check-"));
  await execFileAsync(env.interpreterPath, ["-c", WRITE_BASES, dir]);
  for (const name of await readdir(dir)) bases.set(name.replace(/\.arrow$/, ""), new Uint8Array(await readFile(join(dir, name))));
});

after(async () => {
  await env?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function refused(bytes: Uint8Array, pattern: RegExp): void {
  assert.throws(
    () => checkIpcStream(bytes),
    (err) => err instanceof IpcCheckError && pattern.test(err.message),
  );
}

describe("valid streams pass with their row counts", () => {
  test("every pyarrow base frame, and apache-arrow's own output", () => {
    const expected: Record<string, number> = { "three-rows": 3, nested: 3, types: 3, batches: 10, empty: 0 };
    for (const [name, bytes] of bases) {
      const summary = checkIpcStream(bytes);
      assert.equal(summary.rows, expected[name], name);
      assert.equal(summary.rows, tableFromIPC(bytes).numRows, name);
    }
    assert.equal(checkIpcStream(bases.get("batches")!).recordBatches, 4);
    const own = tableToIPC(tableFromArrays({ a: Int32Array.from([1, 2]), s: ["p", "q"] }), "stream");
    assert.equal(checkIpcStream(own).rows, 2);
  });
});

describe("crafted frames are refused before decoding", () => {
  test("the frames that hang or explode apache-arrow (mutations of a valid 3-row stream)", async () => {
    refused(await readFile(fixturePath("frames", "nodes-vector-length.arrow")), /buffers lies outside the message metadata/);
    refused(await readFile(fixturePath("frames", "children-vector-length.arrow")), /children lies outside the message metadata/);
    refused(await readFile(fixturePath("frames", "batch-length-2-32.arrow")), /claims 4294967299 rows/);
  });

  test("garbage, a stream without a schema, and trailing bytes after end-of-stream", () => {
    refused(Buffer.from("this is not an Arrow IPC stream"), /metadata bytes|stray bytes/);
    refused(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), /no schema message/);
    const valid = bases.get("three-rows")!;
    refused(Buffer.concat([valid, Buffer.from("more")]), /4 bytes after the end-of-stream marker/);
  });

  test("a batch that claims rows its columns do not have (would decode to nothing)", () => {
    const bytes = Buffer.from(bases.get("three-rows")!);
    const summary = checkIpcStream(bytes);
    // The record batch's length field: little-endian 3 after the schema message; claim 3,000 instead.
    const at = bytes.indexOf(Buffer.from([3, 0, 0, 0, 0, 0, 0, 0]), summary.schemaMessageLength);
    bytes.writeUInt32LE(3000, at);
    refused(bytes, /column 0 has 3 rows, the batch 3000/);
  });

  test(`nesting deeper than ${MAX_DEPTH} levels`, async () => {
    const out = join(dir, "deep.arrow");
    await execFileAsync(env.interpreterPath, [
      "-c",
      `import sys, pyarrow as pa
t = pa.int8()
for _ in range(${MAX_DEPTH + 1}): t = pa.list_(t)
s = pa.schema([("deep", t)])
sink = pa.BufferOutputStream()
pa.ipc.new_stream(sink, s).close()
open(sys.argv[1], "wb").write(sink.getvalue().to_pybytes())`,
      out,
    ]);
    refused(await readFile(out), /nested more than 64 levels deep/);
  });
});

describe("mutation fuzzing", () => {
  test("3,000 seeded mutations of valid frames: each is refused, or decodes to exactly the rows it claims", () => {
    const next = seededRandom(0x5eed_0011);
    const names = [...bases.keys()];
    let refusedCount = 0;
    let passed = 0;
    for (let i = 0; i < 3000; i++) {
      const base = bases.get(names[i % names.length]!)!;
      let bytes = Buffer.from(base);
      if (next() < 0.3) bytes = Buffer.from(bytes.subarray(0, Math.floor(next() * bytes.length)));
      const flips = 1 + Math.floor(next() * 3);
      for (let j = 0; j < flips && bytes.length > 0; j++) bytes[Math.floor(next() * bytes.length)] = Math.floor(next() * 256);
      let claimed: number;
      try {
        claimed = checkIpcStream(bytes).rows;
      } catch (err) {
        assert.ok(err instanceof IpcCheckError, `mutation ${i}: unexpected ${String(err)}`);
        refusedCount++;
        continue;
      }
      passed++;
      let table;
      try {
        table = tableFromIPC(bytes);
      } catch {
        continue; // the host turns a decoder error into CSP_BRIDGE_BAD_FRAME too
      }
      assert.equal(table.numRows, claimed, `mutation ${i}`);
      // Reading every value must finish too (sinks do exactly this).
      for (const column of table.schema.fields.keys()) for (const value of table.getChildAt(column) ?? []) void value;
    }
    assert.ok(refusedCount > 2000, `most mutations are refused (${refusedCount})`);
    assert.ok(passed > 0, "some mutations (in values, not structure) still pass");
  });
});
