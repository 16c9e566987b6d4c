/**
 * Real Arrow batches for sink tests, shaped like the bridge delivers them: `ipc` is
 * a complete IPC stream and `table` is apache-arrow's view of those same bytes.
 */
import {
  Bool,
  Decimal,
  Null,
  Float64,
  Int64,
  Table,
  TimestampMicrosecond,
  Utf8,
  makeData,
  makeVector,
  tableFromIPC,
  tableToIPC,
  vectorFromArray,
  type Vector,
} from "apache-arrow";
import { pino, type Logger } from "pino";
import type { Batch } from "../../core/kernel/job.js";
import { defineSink, type SinkPlugin } from "../../sinks/api.js";

/** A Batch as the bridge would hand it to onBatch. */
export function batchOf(topic: string, table: Table, index = 0): Batch {
  const ipc = tableToIPC(table, "stream");
  const decoded = tableFromIPC(ipc);
  return { topic, index, ipc, table: decoded, numRows: decoded.numRows, retain: () => () => undefined };
}

const WORDS = ["Zürich", "東京", "naïve café", "emoji 🚀", "", "plain", "Ελληνικά", "line\nbreak", 'quote"d', "tab\tbed"];

/**
 * `rows` rows starting at `start`: int64 ids beyond 2^53, float64 with nulls, unicode
 * strings with nulls, bools with nulls, and UTC microsecond timestamps with nulls.
 */
export function sampleTable(rows: number, start = 0): Table {
  const ids: bigint[] = [];
  const amounts: Array<number | null> = [];
  const labels: Array<string | null> = [];
  const flags: Array<boolean | null> = [];
  const micros = new BigInt64Array(rows);
  const valid = new Uint8Array(Math.ceil(rows / 8));
  for (let r = 0; r < rows; r++) {
    const i = start + r;
    ids.push(9_007_199_254_740_993n + BigInt(i)); // 2^53 + 1 + i: not representable as a double
    amounts.push(i % 7 === 3 ? null : i * 1.25 - 100.5);
    labels.push(i % 11 === 5 ? null : `${WORDS[i % WORDS.length]} #${i}`);
    flags.push(i % 5 === 4 ? null : i % 2 === 0);
    if (i % 9 !== 2) {
      // 2024-01-01T00:00:00Z plus i seconds and i microseconds: sub-millisecond precision matters.
      micros[r] = 1_704_067_200_000_000n + BigInt(i) * 1_000_001n;
      valid[r >> 3]! |= 1 << (r & 7);
    }
  }
  const tsType = new TimestampMicrosecond("UTC");
  const nullCount = rows - countBits(valid, rows);
  const ts = makeVector(makeData({ type: tsType, length: rows, nullCount, nullBitmap: nullCount > 0 ? valid : null, data: micros }));
  return new Table({
    id: vectorFromArray(ids, new Int64()),
    amount: vectorFromArray(amounts, new Float64()),
    label: vectorFromArray(labels, new Utf8()),
    flag: vectorFromArray(flags, new Bool()),
    ts: ts as Vector<TimestampMicrosecond>,
  });
}

/** The sample table's schema_def contract. */
export const SAMPLE_CONTRACT = JSON.stringify({
  columns: [
    { name: "id", type: "int64", nullable: false },
    { name: "amount", type: "double" },
    { name: "label", type: "string" },
    { name: "flag", type: "bool" },
    { name: "ts", type: "timestamp[us, tz=UTC]" },
  ],
});

/**
 * Column values in the canonical form readback.ts gets from Python: integers and
 * timestamps (epoch µs) as decimal strings, floats as numbers, nulls as null.
 */
export function canonicalColumns(table: Table): Record<string, unknown[]> {
  const out: Record<string, unknown[]> = {};
  table.schema.fields.forEach((field, index) => {
    const vector = table.getChildAt(index)!;
    const values: unknown[] = [];
    const isTimestamp = field.type.typeId === 10;
    let row = 0;
    for (const data of vector.data) {
      for (let i = 0; i < data.length; i++, row++) {
        if (!data.getValid(i)) {
          values.push(null);
          continue;
        }
        if (isTimestamp) {
          values.push((data.values as BigInt64Array)[data.offset + i]!.toString());
          continue;
        }
        const value: unknown = vector.get(row);
        values.push(typeof value === "bigint" ? value.toString() : value);
      }
    }
    out[field.name] = values;
  });
  return out;
}

/** A column of `rows` nulls of Arrow type null (what a plugin's all-None column becomes). */
export function nullColumn(rows: number): Vector {
  return vectorFromArray(new Array<null>(rows).fill(null), new Null());
}

/** Microsecond timestamps (UTC unless `timezone` is null), built from their raw ticks. */
export function timestampColumn(micros: Array<bigint | null>, timezone: string | null = "UTC"): Vector {
  const { valid, nullCount } = validity(micros);
  const data = BigInt64Array.from(micros, (v) => v ?? 0n);
  return makeVector(makeData({ type: new TimestampMicrosecond(timezone), length: micros.length, nullCount, nullBitmap: nullCount > 0 ? valid : null, data }));
}

/** decimal128(precision, scale) from unscaled integers (1230n at scale 2 is 12.30). */
export function decimalColumn(unscaled: Array<bigint | null>, precision: number, scale: number): Vector {
  const { valid, nullCount } = validity(unscaled);
  const words = new Uint32Array(unscaled.length * 4);
  unscaled.forEach((v, i) => {
    let x = BigInt.asUintN(128, v ?? 0n);
    for (let w = 0; w < 4; w++, x >>= 32n) words[i * 4 + w] = Number(x & 0xffff_ffffn);
  });
  return makeVector(
    makeData({ type: new Decimal(scale, precision, 128), length: unscaled.length, nullCount, nullBitmap: nullCount > 0 ? valid : null, data: words }),
  );
}

function validity(values: unknown[]): { valid: Uint8Array; nullCount: number } {
  const valid = new Uint8Array(Math.ceil(values.length / 8));
  values.forEach((v, i) => {
    if (v !== null) valid[i >> 3]! |= 1 << (i & 7);
  });
  return { valid, nullCount: values.filter((v) => v === null).length };
}

function countBits(bytes: Uint8Array, length: number): number {
  let n = 0;
  for (let i = 0; i < length; i++) if ((bytes[i >> 3]! >> (i & 7)) & 1) n++;
  return n;
}

/** A logger whose records land in `records` (parsed JSON lines), for asserting warnings. */
export function capturingLogger(): { logger: Logger; records: Array<Record<string, unknown>> } {
  const records: Array<Record<string, unknown>> = [];
  const logger = pino({ level: "debug" }, { write: (line: string) => void records.push(JSON.parse(line) as Record<string, unknown>) });
  return { logger, records };
}

/** What a recording sink saw, in order: "create t", "open t", "write t#0", "prepare t", "commit t", "abort t: why". */
export type SinkEvent = string;

/**
 * A real sink plugin for lifecycle tests: it keeps rows in memory per target and logs
 * each call. `failOn` makes one step of one topic throw, to test the two-phase commit.
 */
export function recordingSinkPlugin(opts: {
  name?: string;
  scheme?: string;
  events: SinkEvent[];
  failOn?: { topic: string; step: "open" | "write" | "prepare" | "commit" };
}): SinkPlugin {
  const scheme = opts.scheme ?? "mem";
  return defineSink({
    name: opts.name ?? "recording",
    schemes: [scheme],
    create(target) {
      const topic = target.topic;
      const log = (event: string) => opts.events.push(`${event} ${topic}`);
      const maybeFail = (step: string) => {
        if (opts.failOn?.topic === topic && opts.failOn.step === step) throw new Error(`${step} failed on purpose`);
      };
      log("create");
      let rows = 0;
      return {
        open() {
          log("open");
          maybeFail("open");
        },
        async write(batch) {
          await new Promise((resolve) => setImmediate(resolve));
          opts.events.push(`write ${topic}#${batch.index}`);
          maybeFail("write");
          rows += batch.numRows;
        },
        prepare() {
          log("prepare");
          maybeFail("prepare");
        },
        commit() {
          log("commit");
          maybeFail("commit");
          return [{ topic, uri: `${scheme}://${target.parsed.location}?rows=${rows}` }];
        },
        abort(reason) {
          opts.events.push(`abort ${topic}: ${reason.message}`);
        },
      };
    },
  });
}
