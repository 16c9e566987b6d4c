/**
 * Builds one Parquet file out of independently encoded pieces.
 *
 * Each row group is encoded on its own (in a worker thread) as a complete small
 * Parquet file. Column chunks in Parquet are self-contained (each carries its own
 * dictionary page), so the pieces' column-chunk bytes can be laid end to end in one
 * file, and one footer written that lists all their row groups with their offsets
 * shifted to where the bytes landed. That keeps a single valid file while encoding
 * in parallel, and keeps memory bounded by the row groups in flight.
 *
 * Page indexes (ColumnIndex/OffsetIndex) hold absolute offsets inside their own
 * structures; they are dropped rather than rewritten, so readers fall back to
 * row-group statistics, which are kept.
 */
import { open, type FileHandle } from "node:fs/promises";
import { CompactReader, CompactWriter, CType, type TList, type TStruct } from "./thrift-compact.js";

const MAGIC = new Uint8Array([0x50, 0x41, 0x52, 0x31]); // "PAR1"

// Field ids from parquet.thrift.
const FileMetaData = { NUM_ROWS: 3, ROW_GROUPS: 4 } as const;
const RowGroup = { COLUMNS: 1, FILE_OFFSET: 5, TOTAL_COMPRESSED_SIZE: 6, ORDINAL: 7 } as const;
const ColumnChunk = { FILE_OFFSET: 2, META_DATA: 3, OFFSET_INDEX_OFFSET: 4, OFFSET_INDEX_LENGTH: 5, COLUMN_INDEX_OFFSET: 6, COLUMN_INDEX_LENGTH: 7 } as const;
const ColumnMetaData = { TOTAL_COMPRESSED_SIZE: 7, DATA_PAGE_OFFSET: 9, INDEX_PAGE_OFFSET: 10, DICTIONARY_PAGE_OFFSET: 11, BLOOM_FILTER_OFFSET: 14, BLOOM_FILTER_LENGTH: 15 } as const;

/** The footer of a complete Parquet file held in memory, and where its column data ends. */
export interface ParquetPiece {
  footer: TStruct;
  /** Column data occupies bytes [4, bodyEnd) of the piece. */
  bodyEnd: number;
}

export function readPiece(bytes: Uint8Array): ParquetPiece {
  const n = bytes.length;
  if (n < 12 || !hasMagic(bytes, 0) || !hasMagic(bytes, n - 4)) throw new Error("encoder returned bytes that are not a Parquet file");
  const footerLength = new DataView(bytes.buffer, bytes.byteOffset + n - 8, 4).getUint32(0, true);
  const footerStart = n - 8 - footerLength;
  const footer = new CompactReader(bytes.subarray(footerStart, n - 8)).readStruct();
  let bodyEnd = 4;
  for (const rowGroup of rowGroupsOf(footer)) {
    for (const chunk of columnsOf(rowGroup)) {
      const meta = chunk.get(ColumnChunk.META_DATA) as TStruct;
      const end = Number(chunkStart(meta)) + Number(meta.get(ColumnMetaData.TOTAL_COMPRESSED_SIZE) as bigint);
      if (end > bodyEnd) bodyEnd = end;
    }
  }
  if (bodyEnd > footerStart) throw new Error("Parquet piece: column data overlaps the footer");
  return { footer, bodyEnd };
}

export class ParquetAssembler {
  readonly #handle: FileHandle;
  #position = 4;
  #template: TStruct | null = null;
  readonly #rowGroups: TStruct[] = [];
  #rows = 0n;
  #closed = false;

  private constructor(handle: FileHandle) {
    this.#handle = handle;
  }

  /** Creates `path` (it must not exist) and writes the leading magic. */
  static async create(path: string): Promise<ParquetAssembler> {
    const handle = await open(path, "wx");
    try {
      await handle.write(MAGIC, 0, 4, 0);
    } catch (err) {
      await handle.close();
      throw err;
    }
    return new ParquetAssembler(handle);
  }

  get rows(): bigint {
    return this.#rows;
  }

  /** Appends the row groups of one encoded piece (a complete Parquet file with the same schema). */
  async append(bytes: Uint8Array): Promise<void> {
    const piece = readPiece(bytes);
    const shift = BigInt(this.#position - 4);
    const bodyLength = piece.bodyEnd - 4;
    if (bodyLength > 0) await writeAll(this.#handle, bytes.subarray(4, piece.bodyEnd), this.#position);
    for (const rowGroup of rowGroupsOf(piece.footer)) {
      for (const chunk of columnsOf(rowGroup)) relocateChunk(chunk, shift, piece.bodyEnd);
      const fileOffset = rowGroup.get(RowGroup.FILE_OFFSET);
      if (typeof fileOffset === "bigint") rowGroup.set(RowGroup.FILE_OFFSET, fileOffset + shift);
      if (rowGroup.fields.has(RowGroup.ORDINAL)) rowGroup.set(RowGroup.ORDINAL, this.#rowGroups.length);
      this.#rowGroups.push(rowGroup);
    }
    this.#rows += piece.footer.get(FileMetaData.NUM_ROWS) as bigint;
    this.#position += bodyLength;
    // Schema, key-value metadata and created_by are the same in every piece: keep the first.
    this.#template ??= piece.footer;
  }

  /** Writes the footer, fsyncs and closes. Returns the file size. */
  async finish(): Promise<number> {
    if (this.#template === null) throw new Error("Parquet assembler: no piece was appended (the schema is unknown)");
    const footer = this.#template;
    const rowGroups = footer.get(FileMetaData.ROW_GROUPS) as TList;
    footer.set(FileMetaData.NUM_ROWS, this.#rows);
    footer.set(FileMetaData.ROW_GROUPS, { ...rowGroups, elemType: CType.STRUCT, items: this.#rowGroups });
    const writer = new CompactWriter();
    writer.writeStruct(footer);
    const encoded = writer.finish();
    const tail = new Uint8Array(encoded.length + 8);
    tail.set(encoded, 0);
    new DataView(tail.buffer).setUint32(encoded.length, encoded.length, true);
    tail.set(MAGIC, encoded.length + 4);
    await writeAll(this.#handle, tail, this.#position);
    const size = this.#position + tail.length;
    await this.#handle.sync();
    await this.close();
    return size;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#handle.close();
  }
}

function relocateChunk(chunk: TStruct, shift: bigint, bodyEnd: number): void {
  const meta = chunk.get(ColumnChunk.META_DATA) as TStruct;
  for (const id of [ColumnMetaData.DATA_PAGE_OFFSET, ColumnMetaData.INDEX_PAGE_OFFSET, ColumnMetaData.DICTIONARY_PAGE_OFFSET]) {
    const value = meta.get(id);
    if (typeof value === "bigint") meta.set(id, value + shift);
  }
  // Bloom filters and page indexes live outside the copied column data: drop them.
  meta.delete(ColumnMetaData.BLOOM_FILTER_OFFSET);
  meta.delete(ColumnMetaData.BLOOM_FILTER_LENGTH);
  for (const id of [ColumnChunk.OFFSET_INDEX_OFFSET, ColumnChunk.OFFSET_INDEX_LENGTH, ColumnChunk.COLUMN_INDEX_OFFSET, ColumnChunk.COLUMN_INDEX_LENGTH]) chunk.delete(id);
  const fileOffset = chunk.get(ColumnChunk.FILE_OFFSET);
  if (typeof fileOffset === "bigint") {
    // Deprecated field; writers disagree on what it points at. Keep it inside the data.
    const inside = fileOffset >= 4n && fileOffset < BigInt(bodyEnd);
    chunk.set(ColumnChunk.FILE_OFFSET, inside ? fileOffset + shift : chunkStart(meta));
  }
}

function chunkStart(meta: TStruct): bigint {
  const dictionary = meta.get(ColumnMetaData.DICTIONARY_PAGE_OFFSET);
  const data = meta.get(ColumnMetaData.DATA_PAGE_OFFSET) as bigint;
  return typeof dictionary === "bigint" && dictionary > 0n && dictionary < data ? dictionary : data;
}

function rowGroupsOf(footer: TStruct): TStruct[] {
  const list = footer.get(FileMetaData.ROW_GROUPS) as TList | undefined;
  return (list?.items ?? []) as TStruct[];
}

function columnsOf(rowGroup: TStruct): TStruct[] {
  return (rowGroup.get(RowGroup.COLUMNS) as TList).items as TStruct[];
}

function hasMagic(bytes: Uint8Array, at: number): boolean {
  return bytes[at] === 0x50 && bytes[at + 1] === 0x41 && bytes[at + 2] === 0x52 && bytes[at + 3] === 0x31;
}

async function writeAll(handle: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let written = 0;
  while (written < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, written, bytes.length - written, position + written);
    written += bytesWritten;
  }
}
