/**
 * Exact values out of a Batch, for sinks.
 *
 * apache-arrow's `Vector.get` is lossy for some types: a timestamp comes back as a JS
 * number of milliseconds (microseconds and nanoseconds are gone), a decimal as its raw
 * 32-bit words. These readers go to the column's buffers instead:
 *
 *   int8..int32, uint8..uint32, float  → number
 *   int64, uint64                      → bigint (every digit)
 *   timestamp[unit, tz?]               → ISO 8601 text with every digit of the unit
 *                                        ("2024-02-29T12:30:45.123456", "…Z" when the column has a time zone:
 *                                        Arrow stores UTC instants); `epochTicks` gives the raw bigint
 *   date32 / date64                    → "YYYY-MM-DD"
 *   time32 / time64                    → "HH:MM:SS[.fraction]"
 *   decimal128(p, s)                   → exact decimal text ("-12.30")
 *   bool, string, binary               → boolean, string, Uint8Array
 *   list<t>                            → array of exact values; struct → object; dictionary → its value
 *
 * `exactReader(vector)` returns a function of the row index for one column of a Table
 * (every record batch of it); null for a null slot.
 */
import { Type, makeVector, type Data, type DataType, type Decimal, type Field, type Vector } from "apache-arrow";

export type ExactValue = null | boolean | number | bigint | string | Uint8Array | ExactValue[] | { [key: string]: ExactValue };

const TICKS_PER_SECOND = [1n, 1_000n, 1_000_000n, 1_000_000_000n] as const;
const FRACTION_DIGITS = [0, 3, 6, 9] as const;
const MS_PER_DAY = 86_400_000n;

/** A reader of one column's exact values by row index, across all its record batches. */
export function exactReader(vector: Vector): (row: number) => ExactValue {
  const chunks = vector.data;
  const readers = chunks.map((data) => dataReader(data));
  if (chunks.length === 1) return readers[0]!;
  const starts: number[] = [];
  let total = 0;
  for (const data of chunks) {
    starts.push(total);
    total += data.length;
  }
  return (row) => {
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid]! <= row) lo = mid;
      else hi = mid - 1;
    }
    return readers[lo]!(row - starts[lo]!);
  };
}

/** A reader for one Data (one record batch's column), by index within it. */
export function dataReader(data: Data): (index: number) => ExactValue {
  const value = valueReader(data);
  if (data.nullCount === 0) return value;
  return (index) => (data.getValid(index) ? value(index) : null);
}

function valueReader(data: Data): (index: number) => ExactValue {
  const type: DataType = data.type;
  const values = data.values as ArrayLike<number | bigint>;
  switch (type.typeId) {
    case Type.Null:
      return () => null;
    case Type.Int:
      return (i) => values[i]!;
    case Type.Float:
      // float16 is stored as raw halves; apache-arrow's own get decodes them.
      if ((type as unknown as { precision: number }).precision === 0) break;
      return (i) => values[i]!;
    case Type.Timestamp: {
      const { unit, timezone } = type as unknown as { unit: number; timezone: string | null };
      return (i) => isoTimestamp(values[i] as bigint, unit, timezone !== null && timezone !== "");
    }
    case Type.Date: {
      const day = (type as unknown as { unit: number }).unit === 0;
      return (i) => isoDate(day ? BigInt(values[i] as number) * MS_PER_DAY : (values[i] as bigint));
    }
    case Type.Time: {
      const { unit } = type as unknown as { unit: number };
      return (i) => isoTime(BigInt(values[i]!), unit);
    }
    case Type.Decimal: {
      const { scale, bitWidth } = type as Decimal;
      const words = bitWidth / 32;
      const raw = data.values as Uint32Array;
      return (i) => decimalText(decimalInteger(raw, i, words), scale);
    }
    case Type.List:
    case Type.LargeList: {
      const child = dataReader(data.children[0]!);
      const offsets = data.valueOffsets as ArrayLike<number | bigint>;
      return (i) => {
        const out: ExactValue[] = [];
        for (let k = Number(offsets[i]!); k < Number(offsets[i + 1]!); k++) out.push(child(k));
        return out;
      };
    }
    case Type.Struct: {
      const names = type.children.map((f: Field) => f.name);
      const children = data.children.map((c) => dataReader(c));
      return (i) => {
        const out: { [key: string]: ExactValue } = {};
        for (const [k, name] of names.entries()) out[name] = children[k]!(i);
        return out;
      };
    }
    case Type.Dictionary: {
      const dictionary = data.dictionary!;
      const readers = dictionary.data.map((d) => dataReader(d));
      const read = readers.length === 1 ? readers[0]! : exactReader(dictionary);
      return (i) => read(Number(values[i]!));
    }
  }
  // bool, strings, binary and the rest: apache-arrow's own value is exact.
  const vector = makeVector(data);
  return (i) => vector.get(i) as ExactValue;
}

/** The raw value of a timestamp cell: ticks since the epoch in the column's unit. */
export function epochTicks(vector: Vector, row: number): bigint | null {
  let offset = row;
  for (const data of vector.data) {
    if (offset < data.length) return data.getValid(offset) ? BigInt((data.values as BigInt64Array)[offset]!) : null;
    offset -= data.length;
  }
  throw new RangeError(`row ${row} is outside the column (${vector.length} rows)`);
}

function isoTimestamp(ticks: bigint, unit: number, utc: boolean): string {
  const perSecond = TICKS_PER_SECOND[unit as 0 | 1 | 2 | 3];
  let seconds = ticks / perSecond;
  let fraction = ticks % perSecond;
  if (fraction < 0n) {
    fraction += perSecond;
    seconds -= 1n;
  }
  const whole = new Date(Number(seconds) * 1000).toISOString().slice(0, 19);
  const digits = FRACTION_DIGITS[unit as 0 | 1 | 2 | 3];
  return `${whole}${digits > 0 ? `.${fraction.toString().padStart(digits, "0")}` : ""}${utc ? "Z" : ""}`;
}

function isoDate(ms: bigint): string {
  return new Date(Number(ms)).toISOString().slice(0, 10);
}

function isoTime(ticks: bigint, unit: number): string {
  const perSecond = TICKS_PER_SECOND[unit as 0 | 1 | 2 | 3];
  const seconds = Number(ticks / perSecond);
  const fraction = ticks % perSecond;
  const hh = String(Math.floor(seconds / 3600)).padStart(2, "0");
  const mm = String(Math.floor(seconds / 60) % 60).padStart(2, "0");
  const ss = String(seconds % 60).padStart(2, "0");
  const digits = FRACTION_DIGITS[unit as 0 | 1 | 2 | 3];
  return `${hh}:${mm}:${ss}${digits > 0 ? `.${fraction.toString().padStart(digits, "0")}` : ""}`;
}

function decimalInteger(words: Uint32Array, index: number, count: number): bigint {
  let v = 0n;
  for (let w = count - 1; w >= 0; w--) v = (v << 32n) | BigInt(words[index * count + w]!);
  return BigInt.asIntN(count * 32, v);
}

/** An unscaled decimal integer as exact text at `scale` ("-1230", 2 → "-12.30"). */
export function decimalText(unscaled: bigint, scale: number): string {
  const negative = unscaled < 0n;
  const digits = (negative ? -unscaled : unscaled).toString();
  if (scale <= 0) return `${negative ? "-" : ""}${digits}${"0".repeat(-scale)}`;
  const padded = digits.padStart(scale + 1, "0");
  return `${negative ? "-" : ""}${padded.slice(0, -scale)}.${padded.slice(-scale)}`;
}
