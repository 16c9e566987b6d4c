/**
 * Schema rules for a topic's batches, enforced by the SinkManager before any sink
 * sees a batch:
 *
 *  1. `schema_def` is a contract, `{"columns":[{"name","type","nullable"?}]}`: every
 *     batch has exactly those column names (order free) with those types; a column
 *     with `"nullable": false` must hold no nulls (checked on the data, because
 *     pandas-made Arrow schemas declare every field nullable).
 *  2. The batches of a topic are unified (sinks/schema.ts): a null column takes the
 *     first real type, narrower types widen, columns are matched by name; a real
 *     conflict fails with CSP_SCHEMA_CONFLICT. The contract is checked on the unified batch.
 *
 * Type names are pyarrow's (`int64`, `double`/`float64`, `string`/`utf8`, `bool`,
 * `timestamp[us, tz=UTC]`, `date32`, `decimal128(10, 2)`, `list<int64>`); a bare
 * `timestamp`, `decimal` or `list` accepts any unit/precision/item. A dictionary
 * column (a pandas categorical) matches the type of its values.
 */
import { Type, type DataType, type Field, type Table } from "apache-arrow";
import * as v from "valibot";
import { Errors } from "../core/kernel/errors.js";
import { check, expected, object, problemText } from "../core/kernel/schema.js";
import type { SchemaContract } from "./api.js";

const TIME_UNITS = ["s", "ms", "us", "ns"] as const;

/** pyarrow's spelling of an Arrow type, without spaces (so that comparisons ignore them). */
export function arrowTypeName(type: DataType): string {
  switch (type.typeId) {
    case Type.Null:
      return "null";
    case Type.Bool:
      return "bool";
    case Type.Int: {
      const t = type as unknown as { isSigned: boolean; bitWidth: number };
      return `${t.isSigned ? "int" : "uint"}${t.bitWidth}`;
    }
    case Type.Float:
      return ["float16", "float32", "float64"][(type as unknown as { precision: number }).precision]!;
    case Type.Utf8:
      return "string";
    case Type.LargeUtf8:
      return "large_string";
    case Type.Utf8View:
      return "string_view";
    case Type.Binary:
      return "binary";
    case Type.LargeBinary:
      return "large_binary";
    case Type.BinaryView:
      return "binary_view";
    case Type.FixedSizeBinary:
      return `fixed_size_binary[${(type as unknown as { byteWidth: number }).byteWidth}]`;
    case Type.Date:
      return (type as unknown as { unit: number }).unit === 0 ? "date32" : "date64";
    case Type.Time: {
      const t = type as unknown as { unit: number; bitWidth: number };
      return `time${t.bitWidth}[${TIME_UNITS[t.unit]}]`;
    }
    case Type.Timestamp: {
      const t = type as unknown as { unit: number; timezone: string | null };
      return t.timezone ? `timestamp[${TIME_UNITS[t.unit]},tz=${t.timezone}]` : `timestamp[${TIME_UNITS[t.unit]}]`;
    }
    case Type.Duration:
      return `duration[${TIME_UNITS[(type as unknown as { unit: number }).unit]}]`;
    case Type.Decimal: {
      const t = type as unknown as { precision: number; scale: number; bitWidth: number };
      return `decimal${t.bitWidth}(${t.precision},${t.scale})`;
    }
    case Type.List:
    case Type.LargeList:
    case Type.FixedSizeList: {
      const child = type.children[0]!;
      const prefix = type.typeId === Type.List ? "list" : type.typeId === Type.LargeList ? "large_list" : "fixed_size_list";
      return `${prefix}<${arrowTypeName(child.type)}>`;
    }
    case Type.Struct:
      return `struct<${type.children.map((f: Field) => `${f.name}:${arrowTypeName(f.type)}`).join(",")}>`;
    case Type.Dictionary:
      return arrowTypeName((type as unknown as { dictionary: DataType }).dictionary);
    default:
      return String(type).replace(/\s+/g, "").toLowerCase();
  }
}

const ALIASES: Record<string, string> = {
  utf8: "string",
  str: "string",
  large_utf8: "large_string",
  boolean: "bool",
  float: "float32",
  halffloat: "float16",
  double: "float64",
  "date32[day]": "date32",
  "date64[ms]": "date64",
};

/** A contract type spelled the way arrowTypeName spells it. */
export function normalizeTypeName(name: string): string {
  let n = name.toLowerCase().replace(/\s+/g, "");
  // pyarrow prints "list<item: int64>"; the item name is not part of the contract.
  n = n.replace(/<item:/g, "<").replace(/<element:/g, "<");
  n = n.replace(/^datetime64\[(s|ms|us|ns)\]$/, "timestamp[$1]");
  return ALIASES[n] ?? n;
}

function typeMatches(contractType: string, actual: string): boolean {
  const expected = normalizeTypeName(contractType);
  if (expected === actual.toLowerCase()) return true;
  // A bare family name accepts any parameters of that family.
  return (
    ["timestamp", "decimal", "list", "large_list", "duration", "time32", "time64", "struct"].includes(expected) &&
    actual.startsWith(expected) &&
    /[[(<]/.test(actual[expected.length] ?? "")
  );
}

const nonEmpty = v.pipe(v.string(expected("a non-empty string")), v.nonEmpty(expected("a non-empty string")));

/** `{"columns":[{"name","type","nullable"?}]}`, each name once. */
const contractSchema = object(
  {
    columns: v.pipe(
      v.array(object({ name: nonEmpty, type: nonEmpty, nullable: v.optional(v.boolean(expected("true or false"))) }), expected("an array")),
      v.check(
        (columns) => new Set(columns.map((c) => c.name)).size === columns.length,
        (issue) => `expected each column once, got ${duplicateNames(issue.input as Array<{ name: string }>)} more than once`,
      ),
    ),
  },
  'an object with a "columns" array',
);

function duplicateNames(columns: ReadonlyArray<{ name: string }>): string {
  const names = columns.map((c) => c.name);
  return [...new Set(names.filter((name, i) => names.indexOf(name) !== i))].map((name) => JSON.stringify(name)).join(", ");
}

/** Parses schema_def text; null/empty means no contract. Errors name the topic, and each bad field. */
export function parseSchemaDef(topic: string, schemaDef: string | null, context: { jobId: bigint; sinkUri: string }): SchemaContract | null {
  if (schemaDef === null || schemaDef.trim() === "") return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(schemaDef);
  } catch (err) {
    throw Errors.SINK_BAD_SCHEMA_DEF([topic, `not JSON (${(err as Error).message})`], { context });
  }
  const checked = check(contractSchema, parsed, "");
  if (!checked.ok) throw Errors.SINK_BAD_SCHEMA_DEF([topic, checked.problems.map(problemText).join("; ")], { context });
  return checked.value;
}

/** Every way `table` breaks `contract`, one line each; empty when it complies. */
export function contractDifferences(contract: SchemaContract, table: Table): string[] {
  const differences: string[] = [];
  const fields = new Map(table.schema.fields.map((f, i) => [f.name, i] as const));
  for (const column of contract.columns) {
    const index = fields.get(column.name);
    if (index === undefined) {
      differences.push(`missing column "${column.name}" (${column.type})`);
      continue;
    }
    const field = table.schema.fields[index]!;
    const actual = arrowTypeName(field.type);
    if (!typeMatches(column.type, actual)) differences.push(`column "${column.name}": expected type ${column.type}, got ${actual}`);
    if (column.nullable === false) {
      const nulls = table.getChildAt(index)?.nullCount ?? 0;
      if (nulls > 0) differences.push(`column "${column.name}": declared not nullable but has ${nulls} null(s)`);
    }
  }
  const declared = new Set(contract.columns.map((c) => c.name));
  for (const field of table.schema.fields) {
    if (!declared.has(field.name)) differences.push(`unexpected column "${field.name}" (${arrowTypeName(field.type)})`);
  }
  return differences;
}
