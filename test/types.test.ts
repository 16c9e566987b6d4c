/**
 * Types you can trust: what a plugin publishes arrives with the types it had, on both
 * paths (the shim's own encoder in a bare venv, and environments with pyarrow, pandas
 * only, polars), read back exactly through sinks/values.ts. Real uv environments, real
 * guests over the real bridge.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { runGuest, shimPath } from "../core/bridge/host.js";
import type { GuestResult } from "../core/bridge/types.js";
import type { Batch } from "../core/kernel/job.js";
import { arrowTypeName } from "../sinks/contract.js";
import { exactReader, epochTicks, type ExactValue } from "../sinks/values.js";
import { bareEnvironment, fixturePath, pluginSource, prepareCommand, testEnvironment, testJob, type TestEnvironment } from "./helpers/pyenv.js";

const TIMEOUTS = { connectMs: 20_000, idleMs: 60_000, jobMs: 120_000 };

let env: TestEnvironment;
let bare: string;
let pandasOnly: string;

before(async () => {
  env = await testEnvironment();
  bare = await bareEnvironment(env.manager);
  const lock = await readFile(fixturePath("pyenv-pandas-only", "uv.lock"), "utf8");
  pandasOnly = (await env.manager.prepare(await prepareCommand(lock))).interpreter_path;
});
after(async () => {
  await env?.dispose();
});

async function run(source: string, interpreterPath: string): Promise<{ result: GuestResult; batches: Batch[] }> {
  const { job } = testJob(source);
  const batches: Batch[] = [];
  const result = await runGuest({ interpreterPath, job, timeouts: TIMEOUTS, onBatch: async (b) => void batches.push(b) });
  return { result, batches };
}

async function failure(source: string, interpreterPath: string): Promise<string> {
  try {
    await run(source, interpreterPath);
  } catch (err) {
    return (err as Error).message;
  }
  assert.fail("the job was expected to fail");
}

function typesOf(batch: Batch): Record<string, string> {
  return Object.fromEntries(batch.table.schema.fields.map((f) => [f.name, arrowTypeName(f.type)]));
}

function columnsOf(batch: Batch): Record<string, ExactValue[]> {
  const out: Record<string, ExactValue[]> = {};
  batch.table.schema.fields.forEach((field, i) => {
    const read = exactReader(batch.table.getChildAt(i)!);
    out[field.name] = Array.from({ length: batch.numRows }, (_, row) => read(row));
  });
  return out;
}

const bytes = (...values: number[]) => new Uint8Array(values);

const GOLDEN_TYPES = {
  i: "int64",
  u: "uint64",
  f: "float64",
  b: "bool",
  s: "string",
  y: "binary",
  d: "date32",
  ts: "timestamp[us]",
  tz: "timestamp[us,tz=UTC]",
  t: "time64[us]",
  dec: "decimal128(32,2)",
  l: "list<int64>",
  st: "struct<city:string,zip:int64>",
  n: "null",
};

const GOLDEN_VALUES: Record<string, ExactValue[]> = {
  i: [1n, -(2n ** 63n), 2n ** 63n - 1n, null],
  u: [0n, 2n ** 64n - 1n, 7n, null],
  f: [0.5, 1, -1e300, null],
  b: [true, false, true, null],
  s: ["plain", "ünïcödé ✓", "", null],
  y: [bytes(0, 255), bytes(), bytes(97, 98, 99), null],
  d: ["2024-02-29", "1960-01-01", "1970-01-01", null],
  ts: ["2024-02-29T12:30:45.123456", "1969-12-31T23:59:59.999999", "2000-01-01T00:00:00.000000", null],
  tz: ["2024-01-01T00:00:00.000001Z", "2024-06-01T00:00:00.000000Z", "1900-01-01T00:00:00.000000Z", null],
  t: ["12:30:45.123456", "00:00:00.000000", "23:59:59.999999", null],
  dec: ["12.34", "-0.50", "123456789012345678901234567890.12", null],
  l: [[1n, 2n, null], [], null, null],
  st: [{ city: "Oslo", zip: 150n }, { city: "Bergen", zip: null }, { city: null, zip: null }, null],
  n: [null, null, null, null],
};

describe("dicts of lists and lists of dicts: one set of types, with or without pyarrow", () => {
  for (const [label, interpreter] of [
    ["bare venv (the shim's own encoder)", () => bare],
    ["environment with pyarrow, pandas and polars", () => env.interpreterPath],
  ] as const) {
    test(`every Python type arrives typed and exact: ${label}`, async () => {
      const { batches } = await run(await pluginSource("types_golden.py"), interpreter());
      assert.deepEqual(batches.map((b) => b.topic).sort(), ["columns", "rows"]);
      for (const batch of batches) {
        assert.deepEqual(typesOf(batch), GOLDEN_TYPES, batch.topic);
        assert.deepEqual(columnsOf(batch), GOLDEN_VALUES, batch.topic);
      }
      // The raw microseconds, for sinks that want numbers rather than text.
      const ts = batches[0]!.table.getChild("ts")!;
      assert.equal(epochTicks(ts, 0), BigInt(Date.UTC(2024, 1, 29, 12, 30, 45, 123)) * 1000n + 456n);
      assert.equal(epochTicks(ts, 3), null);
    });
  }
});

const FRAMES_PLUGIN = `
import datetime
from decimal import Decimal
import pandas as pd

class Handler:
    def execute(self, path):
        frame = pd.DataFrame({
            "i": pd.Series([1, -(2**63), 2**63 - 1], dtype="int64"),
            "i32": pd.Series([1, 2, -3], dtype="int32"),
            "f": [0.5, float("nan"), -1e300],
            "b": [True, False, True],
            "s": ["plain", None, "ünïcödé ✓"],
            "ts": pd.to_datetime(["2024-02-29 12:30:45.123456", None, "1969-12-31 23:59:59.999999"], format="ISO8601").astype("datetime64[us]"),
            "tz": pd.to_datetime(["2024-01-01 02:00:00.000001", None, "2024-06-01 00:00:00"], format="ISO8601").astype("datetime64[us]").tz_localize("UTC"),
            "d": [datetime.date(2024, 2, 29), None, datetime.date(1960, 1, 1)],
            "dec": [Decimal("12.34"), None, Decimal("-0.5")],
            "ni": pd.array([1, None, 3], dtype="Int64"),
        })
        return [frame]
`;

const FRAME_VALUES: Record<string, ExactValue[]> = {
  i: [1n, -(2n ** 63n), 2n ** 63n - 1n],
  i32: [1, 2, -3],
  f: [0.5, null, -1e300],
  b: [true, false, true],
  s: ["plain", null, "ünïcödé ✓"],
  ts: ["2024-02-29T12:30:45.123456", null, "1969-12-31T23:59:59.999999"],
  tz: ["2024-01-01T02:00:00.000001Z", null, "2024-06-01T00:00:00.000000Z"],
  d: ["2024-02-29", null, "1960-01-01"],
  dec: ["12.34", null, "-0.50"],
  ni: [1n, null, 3n],
};

describe("pandas, pyarrow and polars frames", () => {
  test("a pandas DataFrame publishes from an environment with pandas but no pyarrow (the shim encodes it)", async () => {
    const probe = spawnSync(pandasOnly, ["-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('pyarrow') is not None)"]);
    assert.equal(probe.status, 0, "the pandas-only environment must not have pyarrow");
    const { batches } = await run(FRAMES_PLUGIN, pandasOnly);
    assert.equal(batches.length, 1);
    assert.deepEqual(typesOf(batches[0]!), {
      i: "int64",
      i32: "int32",
      f: "float64",
      b: "bool",
      s: "string",
      ts: "timestamp[us]",
      tz: "timestamp[us,tz=UTC]",
      d: "date32",
      dec: "decimal128(4,2)",
      ni: "int64",
    });
    assert.deepEqual(columnsOf(batches[0]!), FRAME_VALUES);
  });

  test("the same DataFrame through pyarrow has the same values", async () => {
    const { batches } = await run(FRAMES_PLUGIN, env.interpreterPath);
    assert.deepEqual(columnsOf(batches[0]!), FRAME_VALUES);
  });

  test("pyarrow Tables and polars DataFrames keep their types", async () => {
    const source = `
import datetime
from decimal import Decimal
import pyarrow as pa
import polars as pl

class Handler:
    def execute(self, path):
        yield ("arrow", pa.table({
            "i": pa.array([1, None], pa.int64()),
            "u": pa.array([2**64 - 1, 0], pa.uint64()),
            "ts": pa.array([datetime.datetime(2024, 1, 1, 0, 0, 0, 7), None], pa.timestamp("us")),
            "dec": pa.array([Decimal("1.25"), None], pa.decimal128(12, 2)),
            "t": pa.array([datetime.time(1, 2, 3, 4), None], pa.time64("us")),
        }))
        yield ("polars", pl.DataFrame({"i": [1, None], "s": ["a", None], "ts": [datetime.datetime(2024, 1, 1, 0, 0, 0, 7), None]}))
`;
    const { batches } = await run(source, env.interpreterPath);
    const arrow = batches.find((b) => b.topic === "arrow")!;
    assert.deepEqual(typesOf(arrow), { i: "int64", u: "uint64", ts: "timestamp[us]", dec: "decimal128(12,2)", t: "time64[us]" });
    assert.deepEqual(columnsOf(arrow), {
      i: [1n, null],
      u: [2n ** 64n - 1n, 0n],
      ts: ["2024-01-01T00:00:00.000007", null],
      dec: ["1.25", null],
      t: ["01:02:03.000004", null],
    });
    const polars = batches.find((b) => b.topic === "polars")!;
    assert.deepEqual(columnsOf(polars), { i: [1n, null], s: ["a", null], ts: ["2024-01-01T00:00:00.000007", null] });
  });
});

describe("a value that does not fit never converts the column", () => {
  const source = (manifest: string) => `
${manifest}
class Handler:
    def execute(self, path):
        yield {"qty": [1, 2, 3]}
        yield {"qty": [4, "n/a", 6]}
`;
  for (const [label, interpreter] of [
    ["bare venv", () => bare],
    ["with pyarrow", () => env.interpreterPath],
  ] as const) {
    test(`the job fails naming topic, column, row and value (${label})`, async () => {
      const message = await failure(source(""), interpreter());
      assert.match(message, /BadValue: topic "output", column "qty", row 4: 'n\/a' \(str\) does not fit the column's type int64/);
      assert.match(message, /MANIFEST\["topics"\]\["output"\] = \{"columns": \{"qty": "<type>"\}\}/);
    });
  }

  test('with on_bad_value="null" the value becomes null and is counted in the metrics', async () => {
    const { result, batches } = await run(source(`MANIFEST = {"topics": {"output": {"on_bad_value": "null"}}}`), bare);
    assert.deepEqual(
      batches.map((b) => columnsOf(b).qty),
      [
        [1n, 2n, 3n],
        [4n, null, 6n],
      ],
    );
    assert.equal(result.guestMetrics.nulled_values, 1);
    assert.equal(result.guestMetrics["nulled_values.output"], 1);
  });
});

describe("chunks of one topic keep the topic's types", () => {
  test("an all-None chunk after typed ones keeps the type; one before them is a null placeholder", async () => {
    const source = `
class Handler:
    def execute(self, path):
        yield {"qty": [None, None], "price": [None, 1.5]}
        yield {"qty": [1, None], "price": [2, None]}
        yield {"qty": [None, None], "price": [None, None]}
`;
    for (const interpreter of [bare, env.interpreterPath]) {
      const { batches } = await run(source, interpreter);
      assert.deepEqual(batches.map(typesOf), [
        { qty: "null", price: "float64" },
        { qty: "int64", price: "float64" },
        { qty: "int64", price: "float64" },
      ]);
    }
  });
});

describe("declared schemas", () => {
  const source = `
from decimal import Decimal
import datetime

MANIFEST = {"topics": {"sales": {"columns": {"amount": "decimal128(12, 2)", "day": "date32", "qty": "int32", "note": "string"}}}}

class Handler:
    def configure(self, ctx, config):
        self.ctx = ctx
        self.other = ctx.register_topic("other", schema={"x": "float64", "when": "timestamp[ms, tz=UTC]"})

    def execute(self, path):
        self.ctx.publish(self.other, [{"x": 1, "when": None}, {"x": 2.5, "when": datetime.datetime(2024, 1, 1, 0, 0, 1, tzinfo=datetime.timezone.utc)}])
        yield ("sales", {"amount": [Decimal("1.5"), 3, None], "day": [datetime.date(2024, 1, 2), None, None], "qty": [None, None, None]})
`;
  for (const [label, interpreter] of [
    ["bare venv", () => bare],
    ["with pyarrow", () => env.interpreterPath],
  ] as const) {
    test(`MANIFEST["topics"] and register_topic(schema=...) fix the types (${label})`, async () => {
      const { batches } = await run(source, interpreter());
      const sales = batches.find((b) => b.topic === "sales")!;
      assert.deepEqual(typesOf(sales), { amount: "decimal128(12,2)", day: "date32", qty: "int32", note: "string" });
      assert.deepEqual(columnsOf(sales), {
        amount: ["1.50", "3.00", null],
        day: ["2024-01-02", null, null],
        qty: [null, null, null],
        note: [null, null, null],
      });
      const other = batches.find((b) => b.topic === "other")!;
      assert.deepEqual(typesOf(other), { x: "float64", when: "timestamp[ms,tz=UTC]" });
      assert.deepEqual(columnsOf(other), { x: [1, 2.5], when: [null, "2024-01-01T00:00:01.000Z"] });
    });
  }

  test("a value that does not fit the declared type fails naming it; a declared pandas column is cast", async () => {
    const bad = `
from decimal import Decimal
MANIFEST = {"topics": {"output": {"columns": {"amount": "decimal128(5, 2)"}}}}
def parse(path):
    return {"amount": [Decimal("1.25"), Decimal("1.255")]}
`;
    assert.match(
      await failure(bad, bare),
      /column "amount", row 1: Decimal\('1.255'\) \(Decimal\) does not fit the column's type decimal128\(5, 2\) \(more than 2 decimal places\)/,
    );
    const frame = `
import pandas as pd
MANIFEST = {"topics": {"output": {"columns": {"qty": "int32", "price": "decimal128(10, 2)"}}}}
def parse(path):
    return pd.DataFrame({"qty": [1, 2], "price": [1.5, 2.25]})
`;
    for (const interpreter of [env.interpreterPath, pandasOnly]) {
      const { batches } = await run(frame, interpreter);
      assert.deepEqual(typesOf(batches[0]!), { qty: "int32", price: "decimal128(10,2)" });
      assert.deepEqual(columnsOf(batches[0]!), { qty: [1, 2], price: ["1.50", "2.25"] });
    }
  });

  test("an unknown type name fails the job naming topic and column", async () => {
    const message = await failure(`MANIFEST = {"topics": {"t": {"columns": {"x": "integer"}}}}\ndef parse(path):\n    return None\n`, bare);
    assert.match(message, /topic 't', column 'x': unknown or unsupported type 'integer'/);
  });
});

describe("the shim's encoder on its own", () => {
  test("a list of dicts: rows with the first row's keys take the fast path, rows with other keys the general one, same columns", () => {
    const script = `
import sys
sys.path.insert(0, sys.argv[1])
from casparian_guest.pure_ipc import _uniform_rows, columns_of
cases = [
    ([{"a": 1, "b": "x"}, {"a": 2, "b": None}], [("a", [1, 2]), ("b", ["x", None])], True),
    ([{"a": 1, "b": "x"}, {"b": "y", "a": 2}], [("a", [1, 2]), ("b", ["x", "y"])], True),
    ([{"a": 1, "b": "x"}, {"a": 2}], [("a", [1, 2]), ("b", ["x", None])], False),
    ([{"a": 1}, {"a": 2, "c": True}], [("a", [1, 2]), ("c", [None, True])], False),
    ([{"a": 1, "b": 2}, {"a": 3, "c": 4}], [("a", [1, 3]), ("b", [2, None]), ("c", [None, 4])], False),
    ([{1: "one"}, {1: "uno"}], [("1", ["one", "uno"])], True),
    ([{}, {}], [], True),
    ([], [], True),
]
for rows, expected, fast in cases:
    assert columns_of(rows) == expected, (rows, columns_of(rows))
    assert (_uniform_rows(rows) is not None) == fast, rows
print(len(cases))
`;
    const out = spawnSync(bare, ["-c", script, shimPath()], { encoding: "utf8" });
    assert.equal(out.status, 0, out.stderr);
    assert.equal(out.stdout.trim(), "8");
  });

  test("a schema message made ahead or by an earlier chunk is byte for byte the one a chunk makes itself, and only ever reused for the same columns, types and metadata", () => {
    const script = `
import datetime, decimal, sys
sys.path.insert(0, sys.argv[1])
from casparian_guest import pure_ipc
from casparian_guest.pure_ipc import TopicTyping, columns_of, encode_chunks, lay_out_schema
chunks = [
    {"a": [1, None], "b": ["x", "y"]},
    {"a": ["1", None], "b": ["x", "y"]},
    {"b": ["x", "y"], "a": [1, None]},
    {"a": [1, 2], "c": ["x", "y"]},
    {"a": [1.5, None], "b": [b"x", None]},
    {"a": [None, None], "b": [True, False]},
    {"t": [datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc), None], "d": [datetime.date(2024, 1, 1), None]},
    {"m": [decimal.Decimal("1.25"), decimal.Decimal("-3.5")], "l": [[1, 2], None], "s": [{"k": 1}, {"k": None, "j": "x"}]},
]
def encode(data, topic):
    return [p for p, _ in encode_chunks(columns_of(data), TopicTyping(topic), {"casparian.topic": topic}, 64 << 20)]
fresh = {}
for i, data in enumerate(chunks):
    for topic in ("t1", "t2"):
        pure_ipc._SCHEMAS.clear()
        fresh[i, topic] = encode(data, topic)
seen = set()
for (i, topic), streams in fresh.items():
    assert encode(chunks[i], topic) == streams, (i, topic)  # everything cached by now
    seen.add(streams[0])
assert len(seen) == len(fresh), "no two of these chunks share a stream"
# Made ahead for declared columns (a warm guest): the same bytes as a job's chunk of those columns.
pure_ipc._SCHEMAS.clear()
typing = TopicTyping("decl")
typing.declare({"q": "int64", "when": "date32", "name": "string"})
lay_out_schema(list(typing.declared.items()), {"casparian.topic": "decl"})
assert len(pure_ipc._SCHEMAS) == 1
data = {"q": [1, None], "when": [datetime.date(2024, 1, 2), None], "name": ["a", None]}
ahead = [p for p, _ in encode_chunks(columns_of(data), typing, {"casparian.topic": "decl"}, 64 << 20)]
assert len(pure_ipc._SCHEMAS) == 1, "the chunk found its schema made"
pure_ipc._SCHEMAS.clear()
typing = TopicTyping("decl")
typing.declare({"q": "int64", "when": "date32", "name": "string"})
assert ahead == [p for p, _ in encode_chunks(columns_of(data), typing, {"casparian.topic": "decl"}, 64 << 20)]
print(len(fresh))
`;
    const out = spawnSync(bare, ["-c", script, shimPath()], { encoding: "utf8" });
    assert.equal(out.status, 0, out.stderr);
    assert.equal(out.stdout.trim(), "16");
  });

  test("a large dict of lists is split into frames below the limit, rows in order", () => {
    const script = `
import sys
sys.path.insert(0, sys.argv[1])
from casparian_guest.pure_ipc import TopicTyping, columns_of, encode_chunks
n = 200_000
pieces = list(encode_chunks(columns_of({"i": list(range(n)), "s": ["x" * 20] * n}), TopicTyping("t"), {}, 1_000_000))
assert len(pieces) > 3, len(pieces)
assert all(len(p) < 1_100_000 for p, _ in pieces), [len(p) for p, _ in pieces]
assert sum(r for _, r in pieces) == n
print(len(pieces))
`;
    const out = spawnSync(bare, ["-c", script, shimPath()], { encoding: "utf8" });
    assert.equal(out.status, 0, out.stderr);
    assert.ok(Number(out.stdout.trim()) > 3);
  });
});
