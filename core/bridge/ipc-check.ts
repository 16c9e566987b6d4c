/**
 * Structural check of one Arrow IPC stream before apache-arrow decodes it.
 *
 * apache-arrow trusts its input: a vector length or buffer size flipped by a couple of
 * bytes makes it loop over millions of phantom nodes on the main thread (and grow the
 * heap until the process dies). A plugin owns its bridge socket and can send any bytes,
 * so every frame passes through here first. What is checked, in apache-arrow's own
 * reading of the format (so the check and the decoder never disagree):
 *  - framing: each message's metadata and body lie inside the frame, nothing follows
 *    the end-of-stream marker, the first message is a Schema, there are no more
 *    messages than MAX_MESSAGES;
 *  - flatbuffers: every table, vtable, vector and string the decoder will read lies
 *    inside the metadata (the flatbuffers package has no verifier for JavaScript);
 *  - schema: known types with valid parameters, nesting at most MAX_DEPTH deep, at most
 *    MAX_FIELDS fields in all;
 *  - record and dictionary batches: exactly the field nodes and buffers the schema
 *    implies, each buffer inside the body and big enough for its node's length, offsets
 *    monotonic and inside their data, null counts and row counts within bounds.
 * The result says how many rows the stream claims, so the caller can compare.
 */
import { ByteBuffer } from "flatbuffers";

export const MAX_DEPTH = 64;
export const MAX_FIELDS = 10_000;
export const MAX_MESSAGES = 100_000;
/** apache-arrow indexes rows with JavaScript numbers and typed arrays: 2^31 - 1 is the ceiling. */
export const MAX_ROWS = 0x7fffffff;

/** Why a frame was refused; the caller turns it into the catalogue error. */
export class IpcCheckError extends Error {
  override readonly name = "IpcCheckError";
}

export interface IpcStreamSummary {
  /** Rows over all record batches. */
  rows: number;
  recordBatches: number;
  /** Bytes of the leading schema message (prefix + metadata), as topic.ts splices it. */
  schemaMessageLength: number;
}

function fail(message: string): never {
  throw new IpcCheckError(message);
}

// Enum values of Message.fbs / Schema.fbs (Arrow columnar format, stable since 1.0).
enum Header {
  Schema = 1,
  DictionaryBatch = 2,
  RecordBatch = 3,
}
enum TypeId {
  NONE = 0,
  Null = 1,
  Int = 2,
  FloatingPoint = 3,
  Binary = 4,
  Utf8 = 5,
  Bool = 6,
  Decimal = 7,
  Date = 8,
  Time = 9,
  Timestamp = 10,
  Interval = 11,
  List = 12,
  Struct = 13,
  Union = 14,
  FixedSizeBinary = 15,
  FixedSizeList = 16,
  Map = 17,
  Duration = 18,
  LargeBinary = 19,
  LargeUtf8 = 20,
  LargeList = 21,
}
const TYPE_NAMES = [
  "NONE",
  "Null",
  "Int",
  "FloatingPoint",
  "Binary",
  "Utf8",
  "Bool",
  "Decimal",
  "Date",
  "Time",
  "Timestamp",
  "Interval",
  "List",
  "Struct",
  "Union",
  "FixedSizeBinary",
  "FixedSizeList",
  "Map",
  "Duration",
  "LargeBinary",
  "LargeUtf8",
  "LargeList",
  "RunEndEncoded",
  "BinaryView",
  "Utf8View",
  "ListView",
  "LargeListView",
];
const METADATA_V4 = 3;
const METADATA_V5 = 4;

// ---------------------------------------------------------------------------
// A bounds-checked view of one flatbuffer
// ---------------------------------------------------------------------------

interface Table {
  pos: number;
  vtable: number;
  vtableSize: number;
  tableSize: number;
}

class Flatbuffer {
  readonly bb: ByteBuffer;
  readonly size: number;

  constructor(bytes: Uint8Array) {
    this.bb = new ByteBuffer(bytes);
    this.size = bytes.byteLength;
  }

  #within(pos: number, length: number, what: string): void {
    if (!Number.isSafeInteger(pos) || pos < 0 || length < 0 || pos + length > this.size) fail(`${what} lies outside the message metadata`);
  }

  /** The table at `pos`, its vtable checked. */
  table(pos: number, what: string): Table {
    this.#within(pos, 4, what);
    const vtable = pos - this.bb.readInt32(pos);
    this.#within(vtable, 4, `${what} vtable`);
    const vtableSize = this.bb.readUint16(vtable);
    const tableSize = this.bb.readUint16(vtable + 2);
    if (vtableSize < 4 || vtableSize % 2 !== 0) fail(`${what} has a malformed vtable`);
    this.#within(vtable, vtableSize, `${what} vtable`);
    if (tableSize < 4) fail(`${what} has a malformed vtable`);
    this.#within(pos, tableSize, what);
    return { pos, vtable, vtableSize, tableSize };
  }

  /** The absolute position of field `index` (of `size` bytes), or null when absent. */
  field(t: Table, index: number, size: number, what: string): number | null {
    const slot = 4 + 2 * index;
    if (slot + 2 > t.vtableSize) return null;
    const offset = this.bb.readUint16(t.vtable + slot);
    if (offset === 0) return null;
    if (offset + size > t.tableSize) fail(`${what} lies outside its table`);
    return t.pos + offset;
  }

  u8(t: Table, index: number, fallback: number, what: string): number {
    const at = this.field(t, index, 1, what);
    return at === null ? fallback : this.bb.readUint8(at);
  }

  i16(t: Table, index: number, fallback: number, what: string): number {
    const at = this.field(t, index, 2, what);
    return at === null ? fallback : this.bb.readInt16(at);
  }

  i32(t: Table, index: number, fallback: number, what: string): number {
    const at = this.field(t, index, 4, what);
    return at === null ? fallback : this.bb.readInt32(at);
  }

  i64(t: Table, index: number, fallback: bigint, what: string): bigint {
    const at = this.field(t, index, 8, what);
    return at === null ? fallback : this.bb.readInt64(at);
  }

  /** Follow the uoffset stored at `at`. */
  #target(at: number, what: string): number {
    const target = at + this.bb.readUint32(at);
    this.#within(target, 4, what);
    return target;
  }

  subTable(t: Table, index: number, what: string): Table | null {
    const at = this.field(t, index, 4, what);
    return at === null ? null : this.table(this.#target(at, what), what);
  }

  /** Start and length of a vector field whose elements are `elementSize` bytes, or null. */
  vector(t: Table, index: number, elementSize: number, what: string): { start: number; length: number } | null {
    const at = this.field(t, index, 4, what);
    if (at === null) return null;
    const vector = this.#target(at, what);
    const length = this.bb.readUint32(vector);
    this.#within(vector + 4, length * elementSize, what);
    return { start: vector + 4, length };
  }

  /** Tables of a vector-of-tables field. */
  tables(t: Table, index: number, what: string): Table[] {
    const vector = this.vector(t, index, 4, what);
    if (!vector) return [];
    const out: Table[] = [];
    for (let i = 0; i < vector.length; i++) out.push(this.table(this.#target(vector.start + 4 * i, what), `${what}[${i}]`));
    return out;
  }

  /** Check a string field's bytes are inside the buffer (its contents are not needed). */
  string(t: Table, index: number, what: string): void {
    const at = this.field(t, index, 4, what);
    if (at === null) return;
    const string = this.#target(at, what);
    this.#within(string + 4, this.bb.readUint32(string) + 1, what);
  }

  customMetadata(t: Table, index: number, what: string): void {
    for (const entry of this.tables(t, index, `${what} metadata`)) {
      this.string(entry, 0, `${what} metadata key`);
      this.string(entry, 1, `${what} metadata value`);
    }
  }
}

// ---------------------------------------------------------------------------
// Schema: what each column's nodes and buffers must look like
// ---------------------------------------------------------------------------

type Layout =
  | { kind: "null" }
  | { kind: "fixed"; bits: number } // bool (1 bit) and every fixed-width type
  | { kind: "binary"; offsetBytes: 4 | 8 }
  | { kind: "list"; offsetBytes: 4 | 8; child: Column }
  | { kind: "fixed-list"; size: number; child: Column }
  | { kind: "struct"; children: Column[] };

interface Column {
  name: string;
  layout: Layout;
}

interface SchemaPlan {
  columns: Column[];
  /** Value layout of each dictionary id. */
  dictionaries: Map<bigint, Column>;
}

class SchemaReader {
  #fields = 0;
  readonly dictionaries = new Map<bigint, Column>();

  constructor(private readonly fb: Flatbuffer) {}

  field(t: Table, path: string, depth: number): Column {
    if (depth > MAX_DEPTH) fail(`field ${path} is nested more than ${MAX_DEPTH} levels deep`);
    if (++this.#fields > MAX_FIELDS) fail(`the schema has more than ${MAX_FIELDS} fields`);
    const fb = this.fb;
    fb.string(t, 0, `field ${path} name`);
    fb.u8(t, 1, 0, `field ${path} nullable`);
    fb.customMetadata(t, 6, `field ${path}`);
    const children = fb.tables(t, 5, `field ${path} children`).map((child, i) => this.field(child, `${path}.${i}`, depth + 1));
    const value: Column = { name: path, layout: this.#layout(t, path, children) };

    const encoding = fb.subTable(t, 4, `field ${path} dictionary`);
    if (!encoding) return value;
    const id = fb.i64(encoding, 0, 0n, `field ${path} dictionary id`);
    const indexType = fb.subTable(encoding, 1, `field ${path} dictionary index type`);
    const bits = indexType ? this.#intBits(indexType, path) : 32;
    fb.u8(encoding, 2, 0, `field ${path} dictionary ordering`);
    if (!this.dictionaries.has(id)) this.dictionaries.set(id, value);
    return { name: path, layout: { kind: "fixed", bits } };
  }

  #intBits(t: Table, path: string): number {
    const bits = this.fb.i32(t, 0, 0, `field ${path} bit width`);
    this.fb.u8(t, 1, 0, `field ${path} signedness`);
    if (![8, 16, 32, 64].includes(bits)) fail(`field ${path}: integer bit width ${bits}`);
    return bits;
  }

  #layout(t: Table, path: string, children: Column[]): Layout {
    const fb = this.fb;
    const typeId = fb.u8(t, 2, TypeId.NONE, `field ${path} type`);
    const params = () => fb.subTable(t, 3, `field ${path} type parameters`) ?? fail(`field ${path}: ${TYPE_NAMES[typeId]} without its parameters`);
    const one = (): Column => {
      if (children.length !== 1) fail(`field ${path}: ${TYPE_NAMES[typeId]} needs exactly one child, has ${children.length}`);
      return children[0]!;
    };
    switch (typeId) {
      case TypeId.NONE:
      case TypeId.Null:
        return { kind: "null" };
      case TypeId.Bool:
        return { kind: "fixed", bits: 1 };
      case TypeId.Int:
        return { kind: "fixed", bits: this.#intBits(params(), path) };
      case TypeId.FloatingPoint: {
        const precision = fb.i16(params(), 0, 0, `field ${path} precision`);
        if (precision < 0 || precision > 2) fail(`field ${path}: floating point precision ${precision}`);
        return { kind: "fixed", bits: 16 << precision };
      }
      case TypeId.Decimal: {
        const p = params();
        fb.i32(p, 0, 0, `field ${path} precision`);
        fb.i32(p, 1, 0, `field ${path} scale`);
        const bits = fb.i32(p, 2, 128, `field ${path} bit width`);
        if (![32, 64, 128, 256].includes(bits)) fail(`field ${path}: decimal bit width ${bits}`);
        return { kind: "fixed", bits };
      }
      case TypeId.Date: {
        const unit = fb.i16(params(), 0, 1, `field ${path} unit`);
        if (unit !== 0 && unit !== 1) fail(`field ${path}: date unit ${unit}`);
        return { kind: "fixed", bits: unit === 0 ? 32 : 64 };
      }
      case TypeId.Time: {
        const p = params();
        const unit = fb.i16(p, 0, 1, `field ${path} unit`);
        const bits = fb.i32(p, 1, 32, `field ${path} bit width`);
        if (unit < 0 || unit > 3 || bits !== (unit < 2 ? 32 : 64)) fail(`field ${path}: time unit ${unit} with bit width ${bits}`);
        return { kind: "fixed", bits };
      }
      case TypeId.Timestamp: {
        const p = params();
        const unit = fb.i16(p, 0, 0, `field ${path} unit`);
        fb.string(p, 1, `field ${path} timezone`);
        if (unit < 0 || unit > 3) fail(`field ${path}: timestamp unit ${unit}`);
        return { kind: "fixed", bits: 64 };
      }
      case TypeId.Duration: {
        const unit = fb.i16(params(), 0, 1, `field ${path} unit`);
        if (unit < 0 || unit > 3) fail(`field ${path}: duration unit ${unit}`);
        return { kind: "fixed", bits: 64 };
      }
      case TypeId.Interval: {
        const unit = fb.i16(params(), 0, 0, `field ${path} unit`);
        if (unit < 0 || unit > 2) fail(`field ${path}: interval unit ${unit}`);
        return { kind: "fixed", bits: [32, 64, 128][unit]! };
      }
      case TypeId.FixedSizeBinary: {
        const width = fb.i32(params(), 0, 0, `field ${path} byte width`);
        if (width < 1 || width > MAX_ROWS / 8) fail(`field ${path}: fixed size binary width ${width}`);
        return { kind: "fixed", bits: width * 8 };
      }
      case TypeId.Binary:
      case TypeId.Utf8:
        return { kind: "binary", offsetBytes: 4 };
      case TypeId.LargeBinary:
      case TypeId.LargeUtf8:
        return { kind: "binary", offsetBytes: 8 };
      case TypeId.List:
        return { kind: "list", offsetBytes: 4, child: one() };
      case TypeId.LargeList:
        return { kind: "list", offsetBytes: 8, child: one() };
      case TypeId.Map: {
        const entries = one();
        if (entries.layout.kind !== "struct" || entries.layout.children.length !== 2) fail(`field ${path}: a map's child must be a struct of key and value`);
        fb.u8(params(), 0, 0, `field ${path} keys sorted`);
        return { kind: "list", offsetBytes: 4, child: entries };
      }
      case TypeId.FixedSizeList: {
        const size = fb.i32(params(), 0, 0, `field ${path} list size`);
        if (size < 0 || size > MAX_ROWS) fail(`field ${path}: fixed size list of ${size}`);
        return { kind: "fixed-list", size, child: one() };
      }
      case TypeId.Struct:
        return { kind: "struct", children };
      default:
        fail(`field ${path}: ${TYPE_NAMES[typeId] ?? `type ${typeId}`} columns are not supported by the worker`);
    }
  }
}

function readSchema(fb: Flatbuffer, t: Table): SchemaPlan {
  const endianness = fb.i16(t, 0, 0, "schema endianness");
  if (endianness !== 0) fail("big-endian streams are not supported");
  const reader = new SchemaReader(fb);
  const columns = fb.tables(t, 1, "schema fields").map((field, i) => reader.field(field, String(i), 1));
  fb.customMetadata(t, 2, "schema");
  fb.vector(t, 3, 8, "schema features");
  return { columns, dictionaries: reader.dictionaries };
}

// ---------------------------------------------------------------------------
// Record batches against the plan
// ---------------------------------------------------------------------------

class BatchChecker {
  #node = 0;
  #buffer = 0;
  readonly #nodes: { start: number; length: number };
  readonly #buffers: { start: number; length: number };

  constructor(
    private readonly fb: Flatbuffer,
    batch: Table,
    private readonly body: DataView,
    private readonly what: string,
  ) {
    this.#nodes = fb.vector(batch, 1, 16, `${what} field nodes`) ?? { start: 0, length: 0 };
    this.#buffers = fb.vector(batch, 2, 16, `${what} buffers`) ?? { start: 0, length: 0 };
    if (fb.subTable(batch, 3, `${what} compression`)) fail(`${what} is compressed; send uncompressed IPC`);
  }

  /** Walk every column; the batch must hold exactly the nodes and buffers they need. */
  check(columns: Column[], rows: number): void {
    for (const column of columns) {
      const length = this.#column(column);
      if (length !== rows) fail(`${this.what}: column ${column.name} has ${length} rows, the batch ${rows}`);
    }
    if (this.#node !== this.#nodes.length) fail(`${this.what} has ${this.#nodes.length} field nodes, its schema needs ${this.#node}`);
    if (this.#buffer !== this.#buffers.length) fail(`${this.what} has ${this.#buffers.length} buffers, its schema needs ${this.#buffer}`);
  }

  #nextNode(column: Column): { length: number; nullCount: number } {
    if (this.#node >= this.#nodes.length) fail(`${this.what} has too few field nodes for its schema (column ${column.name})`);
    const at = this.#nodes.start + 16 * this.#node++;
    const length = this.fb.bb.readInt64(at);
    const nullCount = this.fb.bb.readInt64(at + 8);
    if (length < 0n || length > BigInt(MAX_ROWS)) fail(`${this.what}: column ${column.name} claims ${length} rows`);
    if (nullCount < 0n || nullCount > length) fail(`${this.what}: column ${column.name} claims ${nullCount} nulls in ${length} rows`);
    return { length: Number(length), nullCount: Number(nullCount) };
  }

  /** The next buffer, checked to lie inside the body. */
  #nextBuffer(column: Column): { offset: number; length: number } {
    if (this.#buffer >= this.#buffers.length) fail(`${this.what} has too few buffers for its schema (column ${column.name})`);
    const at = this.#buffers.start + 16 * this.#buffer++;
    const offset = this.fb.bb.readInt64(at);
    const length = this.fb.bb.readInt64(at + 8);
    const body = BigInt(this.body.byteLength);
    if (offset < 0n || length < 0n || offset + length > body)
      fail(`${this.what}: a buffer of column ${column.name} (${length} bytes at ${offset}) lies outside the ${body}-byte body`);
    return { offset: Number(offset), length: Number(length) };
  }

  #needBytes(column: Column, buffer: { length: number }, bytes: number, what: string): void {
    if (buffer.length < bytes) fail(`${this.what}: column ${column.name} has a ${buffer.length}-byte ${what} buffer, its rows need ${bytes}`);
  }

  #validity(column: Column, node: { length: number; nullCount: number }): void {
    const buffer = this.#nextBuffer(column);
    if (node.nullCount > 0) this.#needBytes(column, buffer, Math.ceil(node.length / 8), "validity");
  }

  /** Offsets: enough of them, starting at or above 0, never decreasing; returns the last one. */
  #offsets(column: Column, length: number, offsetBytes: 4 | 8): number {
    const buffer = this.#nextBuffer(column);
    if (length === 0) return 0;
    this.#needBytes(column, buffer, (length + 1) * offsetBytes, "offsets");
    const start = this.body.byteOffset + buffer.offset;
    // Aligned (the usual case: writers pad buffers to 8 bytes): a typed array is several times faster than DataView.
    const values =
      offsetBytes === 4
        ? start % 4 === 0
          ? new Int32Array(this.body.buffer, start, length + 1)
          : new Int32Array(new Uint8Array(this.body.buffer, start, 4 * (length + 1)).slice().buffer)
        : start % 8 === 0
          ? new BigInt64Array(this.body.buffer, start, length + 1)
          : new BigInt64Array(new Uint8Array(this.body.buffer, start, 8 * (length + 1)).slice().buffer);
    let previous = Number(values[0]!);
    if (previous < 0) fail(`${this.what}: column ${column.name} has a negative offset`);
    if (values instanceof Int32Array) {
      for (let i = 1; i <= length; i++) {
        const next = values[i]!;
        if (next < previous) fail(`${this.what}: column ${column.name} has decreasing offsets at row ${i - 1}`);
        previous = next;
      }
    } else {
      let prev = values[0]!;
      for (let i = 1; i <= length; i++) {
        const next = values[i]!;
        if (next < prev) fail(`${this.what}: column ${column.name} has decreasing offsets at row ${i - 1}`);
        prev = next;
      }
      previous = Number(prev);
    }
    if (!Number.isSafeInteger(previous)) fail(`${this.what}: column ${column.name} has an offset beyond 2^53`);
    return previous;
  }

  /** Checks one column (and its children); returns its length. */
  #column(column: Column): number {
    const node = this.#nextNode(column);
    const layout = column.layout;
    switch (layout.kind) {
      case "null":
        break;
      case "fixed": {
        this.#validity(column, node);
        this.#needBytes(column, this.#nextBuffer(column), Math.ceil((node.length * layout.bits) / 8), "data");
        break;
      }
      case "binary": {
        this.#validity(column, node);
        const end = this.#offsets(column, node.length, layout.offsetBytes);
        this.#needBytes(column, this.#nextBuffer(column), end, "data");
        break;
      }
      case "list": {
        this.#validity(column, node);
        const end = this.#offsets(column, node.length, layout.offsetBytes);
        const child = this.#column(layout.child);
        if (child < end) fail(`${this.what}: column ${column.name} points at ${end} child values, its child has ${child}`);
        break;
      }
      case "fixed-list": {
        this.#validity(column, node);
        const child = this.#column(layout.child);
        if (child < node.length * layout.size)
          fail(`${this.what}: column ${column.name} needs ${node.length * layout.size} child values, its child has ${child}`);
        break;
      }
      case "struct": {
        this.#validity(column, node);
        for (const member of layout.children) {
          const child = this.#column(member);
          if (child < node.length) fail(`${this.what}: member ${member.name} has ${child} rows, its struct ${node.length}`);
        }
        break;
      }
    }
    return node.length;
  }
}

function batchLength(fb: Flatbuffer, batch: Table, what: string): number {
  const length = fb.i64(batch, 0, 0n, `${what} length`);
  if (length < 0n || length > BigInt(MAX_ROWS)) fail(`${what} claims ${length} rows`);
  return Number(length);
}

// ---------------------------------------------------------------------------
// The stream
// ---------------------------------------------------------------------------

/**
 * Check `ipc` (one complete IPC stream) and return what it claims. Throws IpcCheckError
 * naming the first problem. Linear in the frame size; reads offsets but no values.
 */
export function checkIpcStream(ipc: Uint8Array): IpcStreamSummary {
  const view = new DataView(ipc.buffer, ipc.byteOffset, ipc.byteLength);
  let position = 0;
  let messages = 0;
  let schema: SchemaPlan | null = null;
  let schemaMessageLength = 0;
  let rows = 0;
  let recordBatches = 0;

  while (position < ipc.byteLength) {
    if (position + 4 > ipc.byteLength) fail(`${ipc.byteLength - position} stray bytes at the end of the stream`);
    let prefix = 4;
    let metadataLength = view.getInt32(position, true);
    if (metadataLength === -1) {
      // Current format: continuation marker, then the length.
      if (position + 8 > ipc.byteLength) fail("stream ends inside a message prefix");
      prefix = 8;
      metadataLength = view.getInt32(position + 4, true);
    }
    if (metadataLength === 0) {
      const end = position + prefix;
      if (end !== ipc.byteLength) fail(`${ipc.byteLength - end} bytes after the end-of-stream marker`);
      break;
    }
    if (metadataLength < 0 || position + prefix + metadataLength > ipc.byteLength) {
      fail(`message ${messages} claims ${metadataLength} metadata bytes; ${ipc.byteLength - position - prefix} remain`);
    }
    if (++messages > MAX_MESSAGES) fail(`more than ${MAX_MESSAGES} messages in one frame; publish fewer, larger chunks`);
    const metaStart = position + prefix;
    const what = `message ${messages - 1}`;
    if (metadataLength < 8) fail(`${what} has ${metadataLength} metadata bytes, too few for a flatbuffer`);
    const fb = new Flatbuffer(ipc.subarray(metaStart, metaStart + metadataLength));
    const root = fb.bb.readUint32(0);
    const message = fb.table(root, what);
    const version = fb.i16(message, 0, 0, `${what} version`);
    if (version !== METADATA_V4 && version !== METADATA_V5) fail(`${what}: metadata version V${version + 1} (only V4 and V5 are read)`);
    const headerType = fb.u8(message, 1, 0, `${what} header type`);
    const header = fb.subTable(message, 2, `${what} header`);
    const bodyLength = fb.i64(message, 3, 0n, `${what} body length`);
    fb.customMetadata(message, 4, what);
    const bodyStart = metaStart + metadataLength;
    if (bodyLength < 0n || bodyLength > BigInt(ipc.byteLength - bodyStart))
      fail(`${what} claims a ${bodyLength}-byte body; ${ipc.byteLength - bodyStart} bytes remain`);
    const body = new DataView(ipc.buffer, ipc.byteOffset + bodyStart, Number(bodyLength));
    if (!header) fail(`${what} has no header`);

    if (schema === null) {
      if (headerType !== Header.Schema) fail(`${what} is not a schema (header type ${headerType}); a stream starts with its schema`);
      if (bodyLength !== 0n) fail(`${what}: a schema message has no body`);
      schema = readSchema(fb, header);
      schemaMessageLength = prefix + metadataLength;
    } else if (headerType === Header.RecordBatch) {
      const length = batchLength(fb, header, what);
      new BatchChecker(fb, header, body, what).check(schema.columns, length);
      rows += length;
      recordBatches += 1;
      if (rows > MAX_ROWS) fail(`the frame claims more than ${MAX_ROWS} rows`);
    } else if (headerType === Header.DictionaryBatch) {
      const id = fb.i64(header, 0, 0n, `${what} dictionary id`);
      const values = schema.dictionaries.get(id) ?? fail(`${what}: dictionary id ${id} is not in the schema`);
      const data = fb.subTable(header, 1, `${what} data`) ?? fail(`${what}: dictionary batch without data`);
      fb.u8(header, 2, 0, `${what} delta flag`);
      new BatchChecker(fb, data, body, what).check([values], batchLength(fb, data, what));
    } else {
      fail(`${what}: header type ${headerType} in a stream (${headerType === Header.Schema ? "a second schema" : "not a batch"})`);
    }
    position = bodyStart + Number(bodyLength);
  }
  if (schema === null) fail("the frame holds no schema message");
  return { rows, recordBatches, schemaMessageLength };
}
