/**
 * Schema unification per topic (sinks/schema.ts): null placeholders, legal widenings,
 * conflicts, and casting real apache-arrow batches to the unified schema.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  Bool,
  Decimal,
  Dictionary,
  Field,
  Float32,
  Float64,
  Int32,
  Int64,
  Int8,
  LargeUtf8,
  List,
  Null,
  RecordBatch,
  Schema,
  Struct,
  Table,
  TimeUnit,
  Timestamp,
  Uint32,
  Uint64,
  Utf8,
  makeData,
  tableFromIPC,
  tableToIPC,
  vectorFromArray,
  type DataType,
} from "apache-arrow";
import { Errors } from "../core/kernel/errors.js";
import { arrowTypeName } from "../sinks/contract.js";
import { TopicSchema, castTable, conformsTo, unifySchemas, widenType } from "../sinks/schema.js";

const name = (t: DataType | null) => (t === null ? null : arrowTypeName(t));

function table(columns: Record<string, { type: DataType; values: unknown[]; nullable?: boolean }>): Table {
  const fields = Object.entries(columns).map(([n, c]) => new Field(n, c.type, c.nullable ?? true));
  const length = Object.values(columns)[0]!.values.length;
  const children = Object.values(columns).map((c) => vectorFromArray(c.values, c.type).data[0]!);
  const schema = new Schema(fields);
  return new Table(schema, [new RecordBatch(schema, makeData({ type: new Struct(fields), length, nullCount: 0, children }))]);
}

describe("widenType", () => {
  test("null is a placeholder for any type, on either side", () => {
    for (const t of [new Int64(), new Utf8(), new Timestamp(TimeUnit.MICROSECOND, "UTC"), new List(new Field("item", new Float64()))]) {
      assert.equal(name(widenType(new Null(), t)), arrowTypeName(t));
      assert.equal(name(widenType(t, new Null())), arrowTypeName(t));
    }
  });

  test("integers, floats, strings and decimals widen", () => {
    assert.equal(name(widenType(new Int32(), new Int64())), "int64");
    assert.equal(name(widenType(new Int8(), new Int32())), "int32");
    assert.equal(name(widenType(new Int32(), new Uint32())), "int64");
    assert.equal(name(widenType(new Int64(), new Uint32())), "int64");
    assert.equal(name(widenType(new Int64(), new Float64())), "float64");
    assert.equal(name(widenType(new Float32(), new Float64())), "float64");
    assert.equal(name(widenType(new Utf8(), new LargeUtf8())), "large_string");
    assert.equal(name(widenType(new Decimal(2, 10, 128), new Decimal(4, 6, 128))), "decimal128(12,4)");
    assert.equal(name(widenType(new Dictionary(new Utf8(), new Int32()), new Utf8())), "string");
  });

  test("lists widen their items and structs take the union of their fields", () => {
    assert.equal(name(widenType(new List(new Field("item", new Null())), new List(new Field("item", new Int64())))), "list<int64>");
    const a = new Struct([new Field("x", new Int32())]);
    const b = new Struct([new Field("x", new Int64()), new Field("y", new Utf8())]);
    assert.equal(name(widenType(a, b)), "struct<x:int64,y:string>");
  });

  test("real conflicts have no common type", () => {
    assert.equal(widenType(new Int64(), new Utf8()), null);
    assert.equal(widenType(new Int64(), new Uint64()), null);
    assert.equal(widenType(new Bool(), new Int64()), null);
    assert.equal(widenType(new Timestamp(TimeUnit.MICROSECOND, null), new Timestamp(TimeUnit.MICROSECOND, "UTC")), null);
    assert.equal(widenType(new Timestamp(TimeUnit.MILLISECOND, null), new Timestamp(TimeUnit.MICROSECOND, null)), null);
    assert.equal(widenType(new Decimal(0, 38, 128), new Decimal(2, 10, 128)), null);
  });
});

describe("unifySchemas / TopicSchema", () => {
  test("matches columns by name, keeps the first order, appends new columns, makes missing ones nullable", () => {
    const a = new Schema([new Field("id", new Int64(), false), new Field("qty", new Null())]);
    const b = new Schema([new Field("qty", new Int64(), false), new Field("id", new Int64(), false), new Field("note", new Utf8(), false)]);
    const unified = unifySchemas("sales", a, b, "batch 1");
    assert.deepEqual(
      unified.fields.map((f) => [f.name, arrowTypeName(f.type), f.nullable]),
      [
        ["id", "int64", false],
        ["qty", "int64", true],
        ["note", "string", true],
      ],
    );
  });

  test("a conflict is CSP_SCHEMA_CONFLICT naming topic, column, both types and the fix", () => {
    const a = new Schema([new Field("qty", new Int64())]);
    const b = new Schema([new Field("qty", new Utf8())]);
    assert.throws(
      () => unifySchemas("sales", a, b, "batch 3 of job 7"),
      (err: unknown) => {
        assert.ok(Errors.SCHEMA_CONFLICT.is(err));
        assert.match(err.message, /topic 'sales': column 'qty' is int64 in one part of the data and string in another \(batch 3 of job 7\)/);
        assert.match(err.hint ?? "", /MANIFEST\["topics"\]\["sales"\] = \{"columns": \{"qty": "int64"\}\}/);
        assert.equal(err.context.column, "qty");
        return true;
      },
    );
  });

  test("TopicSchema reports a change only when the schema widens", () => {
    const topic = new TopicSchema("t");
    const first = new Schema([new Field("a", new Null()), new Field("b", new Int32())]);
    assert.equal(topic.accept(first, "batch 0").changed, true);
    assert.equal(topic.accept(first, "batch 1").changed, false);
    const widened = topic.accept(new Schema([new Field("a", new Utf8()), new Field("b", new Int64())]), "batch 2");
    assert.equal(widened.changed, true);
    assert.deepEqual(
      widened.schema.fields.map((f) => arrowTypeName(f.type)),
      ["string", "int64"],
    );
    // A later all-null, narrower batch conforms after a cast and changes nothing.
    assert.equal(topic.accept(new Schema([new Field("a", new Null()), new Field("b", new Int32())]), "batch 3").changed, false);
  });
});

describe("castTable", () => {
  test("fills placeholders and missing columns with nulls and widens values exactly", () => {
    const t = table({
      id: { type: new Int32(), values: [1, -2, null] },
      qty: { type: new Null(), values: [null, null, null] },
      price: {
        type: new Decimal(1, 5, 128),
        values: [new Uint32Array([125, 0, 0, 0]), null, new Uint32Array([4294967295, 4294967295, 4294967295, 4294967295])],
      },
      tags: { type: new List(new Field("item", new Null())), values: [[], [null], null] },
    });
    const target = new Schema([
      new Field("id", new Int64()),
      new Field("qty", new Float64()),
      new Field("price", new Decimal(3, 8, 128)),
      new Field("tags", new List(new Field("item", new Utf8()))),
      new Field("note", new Utf8()),
    ]);
    const cast = castTable(t, target);
    assert.ok(conformsTo(cast.schema, target));
    // Through IPC and back, as a sink would see it.
    const back = tableFromIPC(tableToIPC(cast, "stream"));
    assert.deepEqual(back.getChild("id")!.toArray(), new BigInt64Array([1n, -2n, 0n]));
    assert.deepEqual(
      [...back.getChild("id")!].map((v) => (v === null ? null : BigInt(v as bigint))),
      [1n, -2n, null],
    );
    assert.deepEqual([...back.getChild("qty")!], [null, null, null]);
    assert.deepEqual([...back.getChild("note")!], [null, null, null]);
    assert.deepEqual(
      [...back.getChild("tags")!].map((v) => (v === null ? null : [...(v as Iterable<unknown>)])),
      [[], [null], null],
    );
    // 12.5 at scale 1 → 12.500 at scale 3; -0.1 → -0.100.
    const price = back.getChild("price")!;
    const words = (i: number) => {
      const w = price.get(i) as Uint32Array;
      let v = 0n;
      for (let k = 3; k >= 0; k--) v = (v << 32n) | BigInt(w[k]!);
      return BigInt.asIntN(128, v);
    };
    assert.equal(words(0), 12500n);
    assert.equal(price.get(1), null);
    assert.equal(words(2), -100n);
  });

  test("a table that already conforms is returned as it is", () => {
    const t = table({ a: { type: new Int64(), values: [1n, 2n] } });
    assert.equal(castTable(t, t.schema), t);
  });
});
