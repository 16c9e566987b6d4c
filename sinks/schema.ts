/**
 * Schema unification for one topic: the batches of a job, and the files of a run, are one
 * table, so their schemas are merged into one instead of the first batch fixing it.
 *
 * Rules (README "Types you can trust"):
 *  - a `null`-typed column is a placeholder, not a type: it takes the other side's type;
 *  - legal widenings: a wider integer of the same signedness, a signed integer wide enough
 *    for an unsigned one (int64 is not: uint64 has no signed superset), integer → float64,
 *    float32 → float64, string → large_string, binary → large_binary, decimal128(p, s) →
 *    decimal128 wide enough for both sides' integer digits and scale (at most 38 digits),
 *    a dictionary column → its value type, list<a> → list<widen(a, b)>, struct → the union
 *    of both sides' fields (widened by name);
 *  - columns are matched by name: the unified schema keeps the first schema's order and
 *    appends columns that appear later; a column missing on one side becomes nullable,
 *    as does any column nullable on either side;
 *  - anything else (int64 vs string, timestamp[us] vs timestamp[ms], naive vs UTC) is a
 *    conflict: `CSP_SCHEMA_CONFLICT` names the topic, the column, both types and the fix.
 *
 * `castTable` / `castRecordBatch` turn data of a compatible schema into the unified one,
 * so that every sink of a topic sees every batch with the same columns and types.
 */
import {
  type Data,
  type DataType,
  Field,
  Float64,
  Int,
  LargeBinary,
  LargeUtf8,
  List,
  RecordBatch,
  Schema,
  Struct,
  Table,
  Type,
  makeBuilder,
  makeData,
  makeVector,
  vectorFromArray,
  type Decimal,
  type Dictionary,
  type Float,
  type TypeMap,
} from "apache-arrow";
import { Errors } from "../core/kernel/errors.js";
import { arrowTypeName } from "./contract.js";

const MAX_DECIMAL128_PRECISION = 38;

/** Identical types (parameters included; a dictionary is not its value type). */
export function sameType(a: DataType, b: DataType): boolean {
  return (
    a.typeId === b.typeId &&
    arrowTypeName(a) === arrowTypeName(b) &&
    (a.typeId !== Type.Dictionary || arrowTypeName((a as Dictionary).indices) === arrowTypeName((b as Dictionary).indices))
  );
}

/** The narrowest type that holds every value of `a` and of `b`, or null when they conflict. */
export function widenType(a: DataType, b: DataType): DataType | null {
  if (sameType(a, b)) return a;
  if (a.typeId === Type.Null) return b;
  if (b.typeId === Type.Null) return a;
  if (a.typeId === Type.Dictionary) return widenType((a as Dictionary).dictionary, b.typeId === Type.Dictionary ? (b as Dictionary).dictionary : b);
  if (b.typeId === Type.Dictionary) return widenType(a, (b as Dictionary).dictionary);
  if (a.typeId === Type.Int && b.typeId === Type.Int) return widenInt(a as Int, b as Int);
  if ((a.typeId === Type.Int || a.typeId === Type.Float) && (b.typeId === Type.Int || b.typeId === Type.Float)) {
    // float16/float32 + float32 stays float32 only when no integer is involved; anything with an integer is float64.
    if (a.typeId === Type.Float && b.typeId === Type.Float) return (a as Float).precision >= (b as Float).precision ? a : b;
    return new Float64();
  }
  if ((a.typeId === Type.Utf8 || a.typeId === Type.LargeUtf8) && (b.typeId === Type.Utf8 || b.typeId === Type.LargeUtf8)) return new LargeUtf8();
  if ((a.typeId === Type.Binary || a.typeId === Type.LargeBinary) && (b.typeId === Type.Binary || b.typeId === Type.LargeBinary)) return new LargeBinary();
  if (a.typeId === Type.Decimal && b.typeId === Type.Decimal) return widenDecimal(a as Decimal, b as Decimal);
  if (a.typeId === Type.List && b.typeId === Type.List) {
    const child = widenType(a.children[0]!.type, b.children[0]!.type);
    if (child === null) return null;
    const field = a.children[0]!;
    return new List(new Field(field.name, child, field.nullable || b.children[0]!.nullable));
  }
  if (a.typeId === Type.Struct && b.typeId === Type.Struct) {
    const fields = unifyFields(a.children, b.children, () => null);
    return fields === null ? null : new Struct(fields);
  }
  return null;
}

function widenInt(a: Int, b: Int): DataType | null {
  if (a.isSigned === b.isSigned) return a.bitWidth >= b.bitWidth ? a : b;
  const [signed, unsigned] = a.isSigned ? [a, b] : [b, a];
  if (signed.bitWidth > unsigned.bitWidth) return signed;
  return unsigned.bitWidth < 64 ? new Int(true, (unsigned.bitWidth * 2) as 16 | 32 | 64) : null;
}

function widenDecimal(a: Decimal, b: Decimal): DataType | null {
  if (a.bitWidth !== b.bitWidth) return null;
  const scale = Math.max(a.scale, b.scale);
  const precision = Math.max(a.precision - a.scale, b.precision - b.scale) + scale;
  if (precision > MAX_DECIMAL128_PRECISION && a.bitWidth === 128) return null;
  return new (a.constructor as new (scale: number, precision: number, bitWidth: number) => Decimal)(scale, precision, a.bitWidth);
}

/** Fields of both sides by name (first side's order, then the new ones); null on a conflict, after telling `onConflict`. */
function unifyFields(a: readonly Field[], b: readonly Field[], onConflict: (name: string, left: DataType, right: DataType) => null): Field[] | null {
  const byName = new Map(b.map((f) => [f.name, f] as const));
  const out: Field[] = [];
  for (const field of a) {
    const other = byName.get(field.name);
    if (other === undefined) {
      out.push(field.nullable ? field : new Field(field.name, field.type, true, field.metadata));
      continue;
    }
    const type = widenType(field.type, other.type);
    if (type === null) return onConflict(field.name, field.type, other.type);
    // A null column holds nulls whatever its field claims.
    const nullable = field.nullable || other.nullable || field.type.typeId === Type.Null || other.type.typeId === Type.Null;
    out.push(new Field(field.name, type, nullable, field.metadata));
  }
  const names = new Set(a.map((f) => f.name));
  for (const field of b) if (!names.has(field.name)) out.push(field.nullable ? field : new Field(field.name, field.type, true, field.metadata));
  return out;
}

/**
 * One schema for `a` and `b`, or CSP_SCHEMA_CONFLICT. `where` says what was being merged
 * (e.g. "batch 3 of job 17" or "file b.parquet"), for the message.
 */
export function unifySchemas(topic: string, a: Schema, b: Schema, where: string): Schema {
  const fields = unifyFields(a.fields, b.fields, (name, left, right) => {
    throw schemaConflict(topic, name, left, right, where);
  });
  return new Schema(fields!, a.metadata);
}

export function schemaConflict(topic: string, column: string, left: DataType, right: DataType, where: string) {
  const leftName = arrowTypeName(left);
  const rightName = arrowTypeName(right);
  return Errors.SCHEMA_CONFLICT([topic, column, leftName, rightName, where], {
    context: { topic, column },
    hint: `make every chunk agree on the column's type: declare it in the plugin (MANIFEST["topics"]["${topic}"] = {"columns": {"${column}": "${leftName}"}}, or ctx.register_topic("${topic}", schema=...)), or cast it before publishing`,
  });
}

/** True when `schema` needs no cast to become `target` (same names, order and types). */
export function conformsTo(schema: Schema, target: Schema): boolean {
  if (schema.fields.length !== target.fields.length) return false;
  return schema.fields.every(
    (f, i) => f.name === target.fields[i]!.name && sameType(f.type, target.fields[i]!.type) && (f.nullable === target.fields[i]!.nullable || !f.nullable),
  );
}

/**
 * A topic's schema as its batches arrive: `accept` merges one more schema in and says
 * whether the topic's schema changed (widened) because of it.
 */
export class TopicSchema {
  readonly topic: string;
  #schema: Schema | null;

  constructor(topic: string, initial: Schema | null = null) {
    this.topic = topic;
    this.#schema = initial;
  }

  get schema(): Schema | null {
    return this.#schema;
  }

  accept(schema: Schema, where: string): { schema: Schema; changed: boolean } {
    const current = this.#schema;
    if (current === null) {
      this.#schema = schema;
      return { schema, changed: true };
    }
    if (conformsTo(schema, current)) return { schema: current, changed: false };
    const unified = unifySchemas(this.topic, current, schema, where);
    const changed = !conformsTo(current, unified) || !conformsTo(unified, current);
    if (changed) this.#schema = unified;
    return { schema: this.#schema!, changed };
  }
}

/** `table` with the columns and types of `schema`, which must be a unification of its own. */
export function castTable(table: Table, schema: Schema): Table {
  if (conformsTo(table.schema, schema) && table.schema.fields.every((f, i) => f.nullable === schema.fields[i]!.nullable)) return table;
  return new Table(
    schema,
    table.batches.map((batch) => castRecordBatch(batch, schema)),
  );
}

export function castRecordBatch(batch: RecordBatch, schema: Schema): RecordBatch {
  const byName = new Map(batch.schema.fields.map((f, i) => [f.name, i] as const));
  const children = schema.fields.map((field) => {
    const index = byName.get(field.name);
    if (index === undefined) return nullData(field.type, batch.numRows);
    return castData(batch.data.children[index]!, field.type);
  });
  const data = makeData({ type: new Struct(schema.fields), length: batch.numRows, nullCount: 0, children });
  return new RecordBatch(schema, data);
}

/** `data` as `to`, a type widenType allows for it. */
export function castData(data: Data, to: DataType): Data {
  const from = data.type;
  if (sameType(from, to)) return data;
  if (from.typeId === Type.Null) return nullData(to, data.length);
  const base = { type: to, offset: data.offset, length: data.length, nullCount: data.nullCount, nullBitmap: data.nullBitmap } as const;
  if ((from.typeId === Type.Int || from.typeId === Type.Float) && (to.typeId === Type.Int || to.typeId === Type.Float)) {
    const values = data.values as ArrayLike<number | bigint>;
    const ArrayType = (to as Int | Float).ArrayType as unknown as { new (n: number): ArrayLike<number | bigint> & { [i: number]: number | bigint } };
    const out = new ArrayType(data.length);
    const toBig = to.typeId === Type.Int && (to as Int).bitWidth === 64;
    for (let i = 0; i < data.length; i++) {
      const v = values[i]!;
      out[i] = toBig ? BigInt(v) : Number(v);
    }
    return makeData({ ...base, data: out } as never);
  }
  if ((from.typeId === Type.Utf8 && to.typeId === Type.LargeUtf8) || (from.typeId === Type.Binary && to.typeId === Type.LargeBinary)) {
    const offsets = data.valueOffsets as Int32Array;
    const large = new BigInt64Array(data.length + 1);
    for (let i = 0; i <= data.length; i++) large[i] = BigInt(offsets[i]!);
    return makeData({ ...base, valueOffsets: large, data: data.values } as never);
  }
  if (from.typeId === Type.Decimal && to.typeId === Type.Decimal) return rescaleDecimal(data as Data<Decimal>, to as Decimal);
  if (from.typeId === Type.List && to.typeId === Type.List) {
    const child = castData(data.children[0]!, to.children[0]!.type);
    return makeData({ ...base, valueOffsets: data.valueOffsets, child } as never);
  }
  if (from.typeId === Type.Struct && to.typeId === Type.Struct) {
    const byName = new Map(from.children.map((f: Field, i: number) => [f.name, i] as const));
    const children = to.children.map((field: Field) => {
      const index = byName.get(field.name);
      return index === undefined ? nullData(field.type, data.length) : castData(data.children[index]!, field.type);
    });
    return makeData({ ...base, children } as never);
  }
  if (from.typeId === Type.Dictionary) {
    const decoded = makeVector(data).toArray() as unknown[];
    return castData(vectorFromArray(decoded, (from as Dictionary).dictionary).data[0]!, to);
  }
  throw new Error(`cannot cast ${arrowTypeName(from)} to ${arrowTypeName(to)}`);
}

function rescaleDecimal(data: Data<Decimal>, to: Decimal): Data {
  const from = data.type;
  const words = from.bitWidth / 32;
  const factor = 10n ** BigInt(to.scale - from.scale);
  const input = data.values as Uint32Array;
  const out = new Uint32Array(data.length * (to.bitWidth / 32));
  const outWords = to.bitWidth / 32;
  for (let i = 0; i < data.length; i++) {
    let v = 0n;
    for (let w = words - 1; w >= 0; w--) v = (v << 32n) | BigInt(input[i * words + w]!);
    v = BigInt.asIntN(from.bitWidth, v) * factor;
    for (let w = 0; w < outWords; w++) {
      out[i * outWords + w] = Number(BigInt.asUintN(32, v));
      v >>= 32n;
    }
  }
  return makeData({ type: to, offset: data.offset, length: data.length, nullCount: data.nullCount, nullBitmap: data.nullBitmap, data: out } as never);
}

/** `length` nulls of `type`. */
export function nullData<T extends DataType>(type: T, length: number): Data<T> {
  const builder = makeBuilder({ type, nullValues: [null, undefined] });
  for (let i = 0; i < length; i++) builder.append(null as TypeMap[keyof TypeMap]["TValue"]);
  return builder.finish().flush() as Data<T>;
}
