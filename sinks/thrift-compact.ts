/**
 * A generic Thrift compact-protocol codec, just enough to read a Parquet footer
 * (FileMetaData), edit a few fields by id, and write it back byte-for-byte
 * otherwise. Generic on purpose: fields we do not know survive untouched.
 */

export const CType = {
  STOP: 0,
  TRUE: 1,
  FALSE: 2,
  BYTE: 3,
  I16: 4,
  I32: 5,
  I64: 6,
  DOUBLE: 7,
  BINARY: 8,
  LIST: 9,
  SET: 10,
  MAP: 11,
  STRUCT: 12,
} as const;

export type TValue = boolean | number | bigint | Uint8Array | TList | TMap | TStruct;

export interface TList {
  kind: "list";
  /** LIST or SET on the wire. */
  wireType: number;
  elemType: number;
  items: TValue[];
}

export interface TMap {
  kind: "map";
  keyType: number;
  valueType: number;
  entries: Array<[TValue, TValue]>;
}

export interface TField {
  type: number;
  value: TValue;
}

/** A struct: field id → typed value. */
export class TStruct {
  readonly kind = "struct";
  readonly fields = new Map<number, TField>();

  get(id: number): TValue | undefined {
    return this.fields.get(id)?.value;
  }
  /** Replaces a field's value, keeping its wire type. */
  set(id: number, value: TValue, type?: number): void {
    const existing = this.fields.get(id);
    const wire = type ?? existing?.type;
    if (wire === undefined) throw new Error(`thrift: no type for new field ${id}`);
    this.fields.set(id, { type: wire, value });
  }
  delete(id: number): void {
    this.fields.delete(id);
  }
}

export class CompactReader {
  #pos: number;
  readonly #buf: Uint8Array;
  readonly #view: DataView;

  constructor(buf: Uint8Array, offset = 0) {
    this.#buf = buf;
    this.#pos = offset;
    this.#view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  get position(): number {
    return this.#pos;
  }

  readStruct(): TStruct {
    const struct = new TStruct();
    let lastId = 0;
    for (;;) {
      const header = this.#byte();
      if (header === CType.STOP) return struct;
      const type = header & 0x0f;
      const delta = header >> 4;
      const id = delta !== 0 ? lastId + delta : zigzagToNumber(this.#varint());
      lastId = id;
      const value = type === CType.TRUE ? true : type === CType.FALSE ? false : this.#value(type);
      struct.fields.set(id, { type, value });
    }
  }

  #value(type: number): TValue {
    switch (type) {
      case CType.BYTE: {
        const b = this.#byte();
        return b > 127 ? b - 256 : b;
      }
      case CType.I16:
      case CType.I32:
        return zigzagToNumber(this.#varint());
      case CType.I64:
        return zigzagToBigint(this.#varint());
      case CType.DOUBLE: {
        const v = this.#view.getFloat64(this.#pos, true);
        this.#pos += 8;
        return v;
      }
      case CType.BINARY: {
        const length = Number(this.#varint());
        // A copy, not a view: decoded structs outlive their source (the Parquet assembler
        // keeps every row group's footer until the file is finished; views of statistics
        // would pin each encoded piece's whole buffer, and the buffers are reused).
        const bytes = this.#buf.slice(this.#pos, this.#pos + length);
        if (bytes.length !== length) throw new Error("thrift: binary runs past the end");
        this.#pos += length;
        return bytes;
      }
      case CType.LIST:
      case CType.SET: {
        const header = this.#byte();
        let size = header >> 4;
        const elemType = header & 0x0f;
        if (size === 15) size = Number(this.#varint());
        const items: TValue[] = [];
        for (let i = 0; i < size; i++) {
          items.push(elemType === CType.TRUE || elemType === CType.FALSE ? this.#byte() === CType.TRUE : this.#value(elemType));
        }
        return { kind: "list", wireType: type, elemType, items };
      }
      case CType.MAP: {
        const size = Number(this.#varint());
        if (size === 0) return { kind: "map", keyType: 0, valueType: 0, entries: [] };
        const kv = this.#byte();
        const keyType = kv >> 4;
        const valueType = kv & 0x0f;
        const entries: Array<[TValue, TValue]> = [];
        for (let i = 0; i < size; i++) entries.push([this.#element(keyType), this.#element(valueType)]);
        return { kind: "map", keyType, valueType, entries };
      }
      case CType.STRUCT:
        return this.readStruct();
      default:
        throw new Error(`thrift: unknown compact type ${type} at byte ${this.#pos}`);
    }
  }

  #element(type: number): TValue {
    return type === CType.TRUE || type === CType.FALSE ? this.#byte() === CType.TRUE : this.#value(type);
  }

  #byte(): number {
    if (this.#pos >= this.#buf.length) throw new Error("thrift: unexpected end of data");
    return this.#buf[this.#pos++]!;
  }

  #varint(): bigint {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      const b = this.#byte();
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return result;
      shift += 7n;
      if (shift > 70n) throw new Error("thrift: varint too long");
    }
  }
}

export class CompactWriter {
  #chunks: number[] = [];
  #parts: Uint8Array[] = [];

  writeStruct(struct: TStruct): void {
    let lastId = 0;
    const ids = [...struct.fields.keys()].sort((a, b) => a - b);
    for (const id of ids) {
      const { type, value } = struct.fields.get(id)!;
      const wireType = type === CType.TRUE || type === CType.FALSE ? (value ? CType.TRUE : CType.FALSE) : type;
      const delta = id - lastId;
      if (delta > 0 && delta <= 15) {
        this.#byte((delta << 4) | wireType);
      } else {
        this.#byte(wireType);
        this.#varint(numberToZigzag(id));
      }
      lastId = id;
      if (wireType !== CType.TRUE && wireType !== CType.FALSE) this.#value(type, value);
    }
    this.#byte(CType.STOP);
  }

  #value(type: number, value: TValue): void {
    switch (type) {
      case CType.BYTE:
        this.#byte((value as number) & 0xff);
        return;
      case CType.I16:
      case CType.I32:
        this.#varint(numberToZigzag(value as number));
        return;
      case CType.I64:
        this.#varint(bigintToZigzag(value as bigint));
        return;
      case CType.DOUBLE: {
        const b = new Uint8Array(8);
        new DataView(b.buffer).setFloat64(0, value as number, true);
        this.#bytes(b);
        return;
      }
      case CType.BINARY: {
        const bytes = value as Uint8Array;
        this.#varint(BigInt(bytes.length));
        this.#bytes(bytes);
        return;
      }
      case CType.LIST:
      case CType.SET: {
        const list = value as TList;
        if (list.items.length < 15) {
          this.#byte((list.items.length << 4) | list.elemType);
        } else {
          this.#byte(0xf0 | list.elemType);
          this.#varint(BigInt(list.items.length));
        }
        for (const item of list.items) this.#element(list.elemType, item);
        return;
      }
      case CType.MAP: {
        const map = value as TMap;
        this.#varint(BigInt(map.entries.length));
        if (map.entries.length === 0) return;
        this.#byte((map.keyType << 4) | map.valueType);
        for (const [k, v] of map.entries) {
          this.#element(map.keyType, k);
          this.#element(map.valueType, v);
        }
        return;
      }
      case CType.STRUCT:
        this.writeStruct(value as TStruct);
        return;
      default:
        throw new Error(`thrift: cannot write compact type ${type}`);
    }
  }

  #element(type: number, value: TValue): void {
    if (type === CType.TRUE || type === CType.FALSE) this.#byte(value ? CType.TRUE : CType.FALSE);
    else this.#value(type, value);
  }

  #byte(b: number): void {
    this.#chunks.push(b);
  }

  #bytes(bytes: Uint8Array): void {
    this.#flushChunks();
    this.#parts.push(bytes);
  }

  #flushChunks(): void {
    if (this.#chunks.length > 0) {
      this.#parts.push(Uint8Array.from(this.#chunks));
      this.#chunks = [];
    }
  }

  #varint(v: bigint): void {
    let n = v;
    while (n >= 0x80n) {
      this.#byte(Number(n & 0x7fn) | 0x80);
      n >>= 7n;
    }
    this.#byte(Number(n));
  }

  finish(): Uint8Array {
    this.#flushChunks();
    const total = this.#parts.reduce((sum, p) => sum + p.length, 0);
    const out = new Uint8Array(total);
    let offset = 0;
    for (const part of this.#parts) {
      out.set(part, offset);
      offset += part.length;
    }
    return out;
  }
}

function zigzagToNumber(v: bigint): number {
  return Number((v >> 1n) ^ -(v & 1n));
}
function zigzagToBigint(v: bigint): bigint {
  return BigInt.asIntN(64, (v >> 1n) ^ -(v & 1n));
}
function numberToZigzag(n: number): bigint {
  return bigintToZigzag(BigInt(n));
}
function bigintToZigzag(n: bigint): bigint {
  return BigInt.asUintN(64, (n << 1n) ^ (n >> 63n));
}
