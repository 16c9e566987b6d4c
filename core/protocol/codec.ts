/**
 * Codec for protocol v4 (../shared/PROTOCOL.md §1): a 16-byte big-endian header
 * (`!BBHQI`: version, opcode, reserved, job_id, payload_len) and a UTF-8 JSON payload.
 *
 * Decoding validates everything a peer could get wrong and says which field was
 * wrong and what was expected; like the Sentinel's pydantic models it ignores
 * unknown fields and fills missing optional ones with their defaults. Encoding
 * runs the same checks, so we never put a message on the wire that the Python
 * side would reject (e.g. a non-integer receipt metric), and writes fields in the
 * order the Python implementation does.
 */
import { parse as losslessParse, stringify as losslessStringify } from "lossless-json";
import { Errors } from "../kernel/errors.js";
import { HEADER_SIZE, Opcode, PROTOCOL_VERSION } from "./messages.js";
import type {
  Artifact,
  DispatchCommand,
  EnvReadyPayload,
  ErrorPayload,
  Header,
  HeartbeatPayload,
  IdentifyPayload,
  JobReceipt,
  Message,
  OpcodeName,
  PayloadByOpcode,
  PrepareEnvCommand,
  SinkConfig,
} from "./messages.js";

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
  // 2^53, which it rounds: only a document holding such a number is parsed again, losslessly.
  const fast = JSON.parse(text) as unknown;
  if (!hasUnsafeNumber(fast)) return fast;
  return losslessParse(text, null, { parseNumber, onDuplicateKey: ({ newValue }) => newValue });
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
// Payload shapes: small validators that collect every problem with its path
// ---------------------------------------------------------------------------

type Issues = string[];
/** Returns the checked (possibly normalised) value; records problems in `issues`. */
type Check<T> = (value: unknown, path: string, issues: Issues) => T;

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (typeof value === "object") return "an object";
  if (typeof value === "bigint") return value.toString();
  return `${typeof value} ${String(value)}`;
}

function fail(issues: Issues, path: string, expected: string, value: unknown): void {
  issues.push(`${path}: expected ${expected}, got ${describe(value)}`);
}

const str: Check<string> = (v, path, issues) => {
  if (typeof v !== "string") fail(issues, path, "a string", v);
  return v as string;
};

const bool: Check<boolean> = (v, path, issues) => {
  if (typeof v !== "boolean") fail(issues, path, "a boolean", v);
  return v as boolean;
};

function isInteger(v: unknown): v is number | bigint {
  return typeof v === "bigint" || (typeof v === "number" && Number.isInteger(v));
}

/** An integer kept as number (when safe) or bigint; receipt metrics. */
const int: Check<number | bigint> = (v, path, issues) => {
  if (!isInteger(v)) fail(issues, path, "an integer", v);
  return v as number | bigint;
};

/** An integer that is always a bigint in memory (job ids, file_version_id). */
const bigintId: Check<bigint> = (v, path, issues) => {
  if (!isInteger(v)) {
    fail(issues, path, "an integer", v);
    return 0n;
  }
  return BigInt(v);
};

function nullable<T>(check: Check<T>): Check<T | null> {
  return (v, path, issues) => (v === null ? null : check(v, path, issues));
}

function oneOf<const T extends string>(...values: T[]): Check<T> {
  return (v, path, issues) => {
    if (typeof v !== "string" || !(values as string[]).includes(v)) fail(issues, path, `one of ${values.map((x) => JSON.stringify(x)).join(", ")}`, v);
    return v as T;
  };
}

function list<T>(item: Check<T>): Check<T[]> {
  return (v, path, issues) => {
    if (!Array.isArray(v)) {
      fail(issues, path, "an array", v);
      return [];
    }
    return v.map((x, i) => item(x, `${path}[${i}]`, issues));
  };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function record<T>(value: Check<T>): Check<Record<string, T>> {
  return (v, path, issues) => {
    if (!isPlainObject(v)) {
      fail(issues, path, "an object", v);
      return {};
    }
    const out: Record<string, T> = {};
    for (const [key, item] of Object.entries(v)) out[key] = value(item, `${path}.${key}`, issues);
    return out;
  };
}

/** A field: its check, and for optional fields the default used when it is missing. */
interface Field<T> {
  check: Check<T>;
  default?: () => T;
  /** Missing stays missing (not written, not filled): for extensions other peers never send. */
  omittable?: boolean;
}
type Shape<T> = { [K in keyof T]-?: Field<T[K]> };

function required<T>(check: Check<T>): Field<T> {
  return { check };
}
function optional<T>(check: Check<T>, fallback: () => T): Field<T> {
  return { check, default: fallback };
}
function omittable<T>(check: Check<T>): Field<T | undefined> {
  return { check, omittable: true };
}

/** Fields in declaration order, which is also the order written on the wire. */
function object<T>(shape: Shape<T>): Check<T> {
  return (v, path, issues) => {
    if (!isPlainObject(v)) {
      fail(issues, path || "payload", "a JSON object", v);
      return {} as T;
    }
    const out = {} as Record<string, unknown>;
    for (const [key, field] of Object.entries(shape) as Array<[string, Field<unknown>]>) {
      const fieldPath = path ? `${path}.${key}` : key;
      if (!(key in v) || v[key] === undefined) {
        if (field.omittable === true) continue;
        if (field.default) out[key] = field.default();
        else issues.push(`${fieldPath}: required field is missing`);
        continue;
      }
      out[key] = field.check(v[key], fieldPath, issues);
    }
    return out as T;
  };
}

const sinkConfig = object<SinkConfig>({
  topic: required(str),
  uri: required(str),
  mode: optional(oneOf("append", "replace", "error"), () => "append"),
  schema_def: optional(nullable(str), () => null),
});

const artifact = object<Artifact>({ topic: required(str), uri: required(str) });

const anyObject: Check<Record<string, unknown>> = (v, path, issues) => {
  if (!isPlainObject(v)) fail(issues, path || "payload", "a JSON object", v);
  return v as Record<string, unknown>;
};

/** How each opcode's payload is checked; null means "no payload" (an empty frame is expected, any content ignored). */
const PAYLOADS: { [O in Opcode]: Check<PayloadByOpcode[O]> | null } = {
  [Opcode.UNKNOWN]: null,
  [Opcode.IDENTIFY]: object<IdentifyPayload>({
    capabilities: required(list(str)),
    worker_id: optional(nullable(str), () => null),
  }),
  [Opcode.DISPATCH]: object<DispatchCommand>({
    plugin_name: required(str),
    file_path: required(str),
    sinks: required(list(sinkConfig)),
    file_version_id: required(bigintId),
    env_hash: required(str),
    source_code: required(str),
    artifact_hash: optional(nullable(str), () => null),
    plugin_config: omittable(str),
  }),
  [Opcode.ABORT]: null,
  [Opcode.HEARTBEAT]: object<HeartbeatPayload>({
    status: required(oneOf("IDLE", "BUSY")),
    current_job_id: optional(nullable(bigintId), () => null),
  }),
  [Opcode.CONCLUDE]: object<JobReceipt>({
    status: required(oneOf("SUCCESS", "FAILED")),
    metrics: optional(record(int), () => ({})),
    artifacts: optional(list(artifact), () => []),
    error_message: optional(nullable(str), () => null),
  }),
  [Opcode.ERR]: object<ErrorPayload>({
    message: required(str),
    traceback: optional(nullable(str), () => null),
  }),
  [Opcode.RELOAD]: null,
  [Opcode.PREPARE_ENV]: object<PrepareEnvCommand>({
    env_hash: required(str),
    lockfile_content: required(str),
    python_version: optional(nullable(str), () => null),
  }),
  [Opcode.ENV_READY]: object<EnvReadyPayload>({
    env_hash: required(str),
    interpreter_path: required(str),
    cached: optional(bool, () => false),
  }),
  [Opcode.DEPLOY]: anyObject,
};

/**
 * Check a payload value for an opcode; returns it normalised (defaults filled,
 * unknown fields dropped, ids as bigint). Throws PROTOCOL_BAD_PAYLOAD listing every problem.
 */
export function validatePayload<O extends Opcode>(opcode: O, value: unknown, jobId?: bigint): PayloadByOpcode[O] {
  const check = PAYLOADS[opcode] as Check<PayloadByOpcode[O]> | null;
  if (check === null) return null as PayloadByOpcode[O];
  const issues: Issues = [];
  const result = check(value, "", issues);
  if (issues.length > 0) {
    throw Errors.PROTOCOL_BAD_PAYLOAD([opcodeName(opcode), issues.join("; ")], { context: { jobId, issues } });
  }
  return result;
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

const EMPTY = Buffer.alloc(0);
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** [header, payloadFrame]; the payload frame is empty when the opcode carries no payload. */
export function encodeMessage<O extends Opcode>(opcode: O, jobId: bigint, payload: PayloadByOpcode[O]): Buffer[] {
  if (!isOpcode(opcode)) throw Errors.PROTOCOL_UNKNOWN_OPCODE([opcode]);
  if (PAYLOADS[opcode] === null || payload === null) {
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

  const check = PAYLOADS[opcode];
  if (check === null) return { opcode, jobId, payload: null } as Message;
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
