/**
 * Codec for protocol v4 (../shared/PROTOCOL.md §1): a 16-byte big-endian header
 * (`!BBHQI`: version, opcode, reserved, job_id, payload_len) and a UTF-8 JSON payload.
 *
 * Decoding checks each payload against its schema (messages.ts) and says which field
 * was wrong and what was expected. Encoding runs the same checks, so we never put a
 * message on the wire that the Python side would reject (e.g. a non-integer receipt
 * metric), and writes fields in the order the Python implementation does.
 */
import { parse as losslessParse, stringify as losslessStringify } from "lossless-json";
import type * as v from "valibot";
import { Errors } from "../kernel/errors.js";
import { check, problemText } from "../kernel/schema.js";
import type { Header, Message, OpcodeName, PayloadByOpcode } from "./messages.js";
import { HEADER_SIZE, Opcode, PAYLOAD_SCHEMAS, PROTOCOL_VERSION } from "./messages.js";

export { HEADER_SIZE, Opcode, PROTOCOL_VERSION };
export type { Header, Message, PayloadByOpcode };

const U64_MAX = (1n << 64n) - 1n;
const U32_MAX = 0xffff_ffff;
const OPCODE_NAMES: readonly OpcodeName[] = Object.keys(Opcode) as OpcodeName[];
const MAX_OPCODE = Math.max(...Object.values(Opcode));

/** "DISPATCH" for 2; "opcode 42" for anything outside the table. */
export function opcodeName(opcode: number): string {
  return OPCODE_NAMES.find((name) => Opcode[name] === opcode) ?? `opcode ${opcode}`;
}

export function isOpcode(value: number): value is Opcode {
  return Number.isInteger(value) && value >= 0 && value <= MAX_OPCODE;
}

// ---------------------------------------------------------------------------
// JSON without losing integers
// ---------------------------------------------------------------------------

/** Integers stay numbers while safe and become bigint beyond 2^53; nothing is rounded. */
function parseNumber(text: string): number | bigint {
  if (/^-?\d+$/.test(text)) {
    const n = Number(text);
    return Number.isSafeInteger(n) ? n : BigInt(text);
  }
  return Number.parseFloat(text);
}

/** Parse JSON; integers outside the safe range come back as bigint. Duplicate keys: last wins (as in Python). */
export function parseJson(text: string): unknown {
  // JSON.parse is ~100x faster than lossless-json (a multi-MB lockfile or plugin source took
  // seconds with the event loop blocked) and agrees with it on everything but integers beyond
  // 2^53, which it rounds: only a document holding such a number is parsed again.
  const fast = JSON.parse(text) as unknown;
  if (!hasUnsafeNumber(fast)) return fast;
  return parseWithBigInts(text);
}

/** A string token or a number token of a JSON text; outside strings nothing else holds a digit. */
const TOKENS = /"[^"\\]*(?:\\.[^"\\]*)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;
const INTEGER = /^-?\d+$/;
/** What an unsafe integer literal becomes for JSON.parse: a string no JSON text can hold unescaped. */
const BIG_MARK = "\u0000casparian-u64:";

/**
 * The same value lossless-json gives (parseNumber below), for a valid JSON text, in a
 * fraction of its time: a DISPATCH carries the plugin's source, which lossless-json reads
 * character by character in JS (0.3-0.6 ms per job), and a large file_version_id. Each
 * integer literal beyond 2^53 (found by a regex that skips string tokens whole) is turned
 * into a marked string, JSON.parse reads the rest, and its reviver turns the marks into
 * bigint. A text that could already hold the mark (an escaped NUL) goes to lossless-json.
 */
function parseWithBigInts(text: string): unknown {
  if (text.includes("\\u0000")) return losslessParse(text, null, { parseNumber, onDuplicateKey: ({ newValue }) => newValue });
  const marked = text.replace(TOKENS, (token) =>
    token.charCodeAt(0) === 34 || !INTEGER.test(token) || Number.isSafeInteger(Number(token)) ? token : `"\\u0000casparian-u64:${token}"`,
  );
  return JSON.parse(marked, (_key, value: unknown) => (typeof value === "string" && value.startsWith(BIG_MARK) ? BigInt(value.slice(BIG_MARK.length)) : value));
}

function hasUnsafeNumber(value: unknown): boolean {
  if (typeof value === "number") return Math.abs(value) > Number.MAX_SAFE_INTEGER;
  if (typeof value !== "object" || value === null) return false;
  if (Array.isArray(value)) return value.some(hasUnsafeNumber);
  for (const key in value) if (hasUnsafeNumber((value as Record<string, unknown>)[key])) return true;
  return false;
}

/** Compact JSON (no spaces, like the vectors); bigint is written as a plain integer literal. */
export function stringifyJson(value: unknown): string {
  const text = losslessStringify(value);
  if (text === undefined) throw new TypeError(`cannot serialise ${typeof value} as JSON`);
  return text;
}

// ---------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------

export function encodeHeader(opcode: Opcode, jobId: bigint, payloadLength: number): Buffer {
  if (!isOpcode(opcode)) throw Errors.PROTOCOL_UNKNOWN_OPCODE([opcode]);
  if (typeof jobId !== "bigint" || jobId < 0n || jobId > U64_MAX) {
    throw Errors.PROTOCOL_BAD_PAYLOAD(["header", `job_id must be a bigint in 0..2^64-1, got ${String(jobId)}`]);
  }
  if (!Number.isInteger(payloadLength) || payloadLength < 0 || payloadLength > U32_MAX) {
    throw Errors.PROTOCOL_BAD_PAYLOAD(["header", `payload_len must be an integer in 0..2^32-1, got ${payloadLength}`]);
  }
  const header = Buffer.alloc(HEADER_SIZE);
  header.writeUInt8(PROTOCOL_VERSION, 0);
  header.writeUInt8(opcode, 1);
  header.writeUInt16BE(0, 2);
  header.writeBigUInt64BE(jobId, 4);
  header.writeUInt32BE(payloadLength, 12);
  return header;
}

export function decodeHeader(frame: Uint8Array): Header {
  // Python's struct.unpack("!BBHQI") rejects any other size, longer included.
  if (frame.byteLength !== HEADER_SIZE) throw Errors.PROTOCOL_SHORT_HEADER([frame.byteLength]);
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const version = view.getUint8(0);
  if (version !== PROTOCOL_VERSION) throw Errors.PROTOCOL_BAD_VERSION([version]);
  const opcode = view.getUint8(1);
  if (!isOpcode(opcode)) throw Errors.PROTOCOL_UNKNOWN_OPCODE([opcode]);
  return { version, opcode, jobId: view.getBigUint64(4, false), payloadLength: view.getUint32(12, false) };
}

// ---------------------------------------------------------------------------
// Payloads: checked against their schemas (messages.ts)
// ---------------------------------------------------------------------------

/**
 * Check a payload value for an opcode; returns it normalised (defaults filled,
 * unknown fields dropped, ids as bigint). Throws PROTOCOL_BAD_PAYLOAD listing every problem.
 */
export function validatePayload<O extends Opcode>(opcode: O, value: unknown, jobId?: bigint): PayloadByOpcode[O] {
  const schema: v.GenericSchema | null = PAYLOAD_SCHEMAS[opcode];
  if (schema === null) return null as PayloadByOpcode[O];
  const checked = check(schema, value, "payload");
  if (!checked.ok) {
    const issues = checked.problems.map(problemText);
    throw Errors.PROTOCOL_BAD_PAYLOAD([opcodeName(opcode), issues.join("; ")], { context: { jobId, issues } });
  }
  return checked.value as PayloadByOpcode[O];
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

const EMPTY = Buffer.alloc(0);
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** [header, payloadFrame]; the payload frame is empty when the opcode carries no payload. */
export function encodeMessage<O extends Opcode>(opcode: O, jobId: bigint, payload: PayloadByOpcode[O]): Buffer[] {
  if (!isOpcode(opcode)) throw Errors.PROTOCOL_UNKNOWN_OPCODE([opcode]);
  if (PAYLOAD_SCHEMAS[opcode] === null || payload === null) {
    return [encodeHeader(opcode, jobId, 0), EMPTY];
  }
  const normalised = validatePayload(opcode, payload, jobId);
  const body = Buffer.from(stringifyJson(normalised), "utf8");
  return [encodeHeader(opcode, jobId, body.byteLength), body];
}

/**
 * Decode a message as a DEALER sees it: [header, payload], or [header] alone when
 * payload_len is 0 (the Python Sentinel broadcasts RELOAD that way).
 */
export function decodeMessage(frames: readonly Uint8Array[]): Message {
  if (frames.length !== 1 && frames.length !== 2) throw Errors.PROTOCOL_FRAME_COUNT([frames.length]);
  const header = decodeHeader(frames[0]!);
  const { opcode, jobId, payloadLength } = header;
  const context = { context: { jobId, opcode: opcodeName(opcode) } };
  if (frames.length === 1 && payloadLength !== 0) throw Errors.PROTOCOL_FRAME_COUNT([1], context);
  const body = frames[1] ?? EMPTY;
  if (body.byteLength !== payloadLength) throw Errors.PROTOCOL_LENGTH_MISMATCH([payloadLength, body.byteLength], context);

  if (PAYLOAD_SCHEMAS[opcode] === null) return { opcode, jobId, payload: null } as Message;
  if (body.byteLength === 0) {
    throw Errors.PROTOCOL_BAD_PAYLOAD([opcodeName(opcode), "expected a JSON object, got an empty payload frame"], context);
  }
  let value: unknown;
  try {
    value = parseJson(utf8.decode(body));
  } catch (err) {
    throw Errors.PROTOCOL_BAD_JSON([opcodeName(opcode), err instanceof Error ? err.message : String(err)], { ...context, cause: err });
  }
  return { opcode, jobId, payload: validatePayload(opcode, value, jobId) } as Message;
}
