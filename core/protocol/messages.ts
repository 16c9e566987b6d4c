/**
 * The vocabulary of protocol v4 (../shared/PROTOCOL.md §1): opcodes and payload
 * shapes, with the wire's own snake_case field names so that nothing is renamed
 * between the Python Sentinel and us. The codec lives in codec.ts.
 *
 * Each payload is a valibot schema, and its TypeScript type is derived from it: what the
 * codec checks is what the code sees. Like the Sentinel's pydantic models, the schemas
 * ignore unknown fields and fill missing optional ones with their defaults; fields come
 * out in declaration order, which is also the order the Python side writes.
 *
 * Every integer that can exceed 2^53 (job ids, file_version_id) is a bigint.
 */
import * as v from "valibot";
import { expected, object } from "../kernel/schema.js";

export const PROTOCOL_VERSION = 4;
export const HEADER_SIZE = 16;

export const Opcode = {
  UNKNOWN: 0,
  IDENTIFY: 1,
  DISPATCH: 2,
  ABORT: 3,
  HEARTBEAT: 4,
  CONCLUDE: 5,
  ERR: 6,
  RELOAD: 7,
  PREPARE_ENV: 8,
  ENV_READY: 9,
  DEPLOY: 10,
} as const;
export type Opcode = (typeof Opcode)[keyof typeof Opcode];
export type OpcodeName = keyof typeof Opcode;

export interface Header {
  version: number;
  opcode: Opcode;
  jobId: bigint;
  payloadLength: number;
}

/**
 * Vocabulary of SinkConfig that this worker understands beyond protocol v4 (our own
 * Sentinel, `casparian run`, sends it; other Sentinels never do):
 *  - topic ANY_TOPIC: the sink of every topic that has no sink of its own, opened when
 *    the topic's first batch arrives (topics registered at run time included);
 *  - TOPIC_PLACEHOLDER in its URI: the topic's name;
 *  - INPUT_PLACEHOLDER: the input's output name, filled in by `casparian run` before dispatch.
 */
export const ANY_TOPIC = "*";
export const TOPIC_PLACEHOLDER = "{topic}";
export const INPUT_PLACEHOLDER = "{input}";

// ---------------------------------------------------------------------------
// Field schemas, worded as the errors a Sentinel's author reads
// ---------------------------------------------------------------------------

const str = v.string(expected("a string"));
const bool = v.boolean(expected("a boolean"));
const nullableStr = v.optional(v.nullable(str), null);

function choice<const T extends readonly [string, ...string[]]>(values: T) {
  return v.picklist(values, expected(`one of ${values.map((x) => JSON.stringify(x)).join(", ")}`));
}

function list<S extends v.GenericSchema>(item: S) {
  return v.array(item, expected("an array"));
}

function payload<const E extends v.ObjectEntries>(entries: E) {
  return object(entries, "a JSON object");
}

function isInteger(value: unknown): value is number | bigint {
  return typeof value === "bigint" || (typeof value === "number" && Number.isInteger(value));
}

/** An integer kept as number (when safe) or bigint: receipt metrics. */
const int = v.custom<number | bigint>(isInteger, expected("an integer"));

/** An integer that is always a bigint in memory: job ids, file_version_id. */
const bigintId = v.pipe(
  int,
  v.transform((id: number | bigint) => BigInt(id)),
);

// ---------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------

export const SINK_MODES = ["append", "replace", "error"] as const;
export type SinkMode = (typeof SINK_MODES)[number];

export const SinkConfigSchema = payload({
  topic: str,
  uri: str,
  mode: v.optional(choice(SINK_MODES), "append"),
  schema_def: nullableStr,
});
export type SinkConfig = v.InferOutput<typeof SinkConfigSchema>;

export const IdentifySchema = payload({
  capabilities: list(str),
  worker_id: nullableStr,
});
export type IdentifyPayload = v.InferOutput<typeof IdentifySchema>;

export const DispatchSchema = payload({
  plugin_name: str,
  file_path: str,
  sinks: list(SinkConfigSchema),
  file_version_id: bigintId,
  env_hash: str,
  source_code: str,
  artifact_hash: nullableStr,
  /**
   * Extension (absent from protocol v4, never written when absent): the plugin's config
   * as a JSON object, given to its configure(ctx, config) / Plugin(config).
   */
  plugin_config: v.optional(str),
});
export type DispatchCommand = v.InferOutput<typeof DispatchSchema>;

export const RECEIPT_STATUSES = ["SUCCESS", "FAILED"] as const;
export type ReceiptStatus = (typeof RECEIPT_STATUSES)[number];

export const ArtifactSchema = payload({ topic: str, uri: str });
export type Artifact = v.InferOutput<typeof ArtifactSchema>;

export const ReceiptSchema = payload({
  status: choice(RECEIPT_STATUSES),
  /** Integers only: the Python side validates them as int. */
  metrics: v.optional(v.record(v.string(), int, expected("an object")), () => ({})),
  artifacts: v.optional(list(ArtifactSchema), () => []),
  error_message: nullableStr,
});
export type JobReceipt = v.InferOutput<typeof ReceiptSchema>;

export const HeartbeatSchema = payload({
  status: choice(["IDLE", "BUSY"]),
  current_job_id: v.optional(v.nullable(bigintId), null),
});
export type HeartbeatPayload = v.InferOutput<typeof HeartbeatSchema>;

export const ErrorSchema = payload({
  message: str,
  traceback: nullableStr,
});
export type ErrorPayload = v.InferOutput<typeof ErrorSchema>;

export const PrepareEnvSchema = payload({
  env_hash: str,
  lockfile_content: str,
  python_version: nullableStr,
});
export type PrepareEnvCommand = v.InferOutput<typeof PrepareEnvSchema>;

export const EnvReadySchema = payload({
  env_hash: str,
  interpreter_path: str,
  cached: v.optional(bool, false),
});
export type EnvReadyPayload = v.InferOutput<typeof EnvReadySchema>;

/** DEPLOY: any JSON object, kept as it came. */
export const DeploySchema = v.looseObject({}, expected("a JSON object"));

/** How each opcode's payload is checked; null means "no payload" (an empty frame is expected, any content ignored). */
export const PAYLOAD_SCHEMAS = {
  [Opcode.UNKNOWN]: null,
  [Opcode.IDENTIFY]: IdentifySchema,
  [Opcode.DISPATCH]: DispatchSchema,
  [Opcode.ABORT]: null,
  [Opcode.HEARTBEAT]: HeartbeatSchema,
  [Opcode.CONCLUDE]: ReceiptSchema,
  [Opcode.ERR]: ErrorSchema,
  [Opcode.RELOAD]: null,
  [Opcode.PREPARE_ENV]: PrepareEnvSchema,
  [Opcode.ENV_READY]: EnvReadySchema,
  [Opcode.DEPLOY]: DeploySchema,
} as const satisfies { [O in Opcode]: v.GenericSchema | null };

/** Payload type carried by each opcode; `null` means an empty payload frame. */
export type PayloadByOpcode = {
  [O in Opcode]: (typeof PAYLOAD_SCHEMAS)[O] extends v.GenericSchema ? v.InferOutput<(typeof PAYLOAD_SCHEMAS)[O]> : null;
};

/** A decoded message: header plus its typed payload. */
export type Message = { [O in Opcode]: { opcode: O; jobId: bigint; payload: PayloadByOpcode[O] } }[Opcode];
