/**
 * The vocabulary of protocol v4 (../shared/PROTOCOL.md §1): opcodes and payload
 * shapes, with the wire's own snake_case field names so that nothing is renamed
 * between the Python Sentinel and us. The codec lives in protocol.ts.
 *
 * Every integer that can exceed 2^53 (job ids, file_version_id) is a bigint.
 */

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

export type SinkMode = "append" | "replace" | "error";

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

export interface SinkConfig {
  topic: string;
  uri: string;
  mode: SinkMode;
  schema_def: string | null;
}

export interface IdentifyPayload {
  capabilities: string[];
  worker_id: string | null;
}

export interface DispatchCommand {
  plugin_name: string;
  file_path: string;
  sinks: SinkConfig[];
  file_version_id: bigint;
  env_hash: string;
  source_code: string;
  artifact_hash: string | null;
  /**
   * Extension (absent from protocol v4, never written when absent): the plugin's config
   * as a JSON object, given to its configure(ctx, config) / Plugin(config).
   */
  plugin_config?: string;
}

export type ReceiptStatus = "SUCCESS" | "FAILED";

export interface Artifact {
  topic: string;
  uri: string;
}

export interface JobReceipt {
  status: ReceiptStatus;
  /** Integers only: the Python side validates them as int. */
  metrics: Record<string, bigint | number>;
  artifacts: Artifact[];
  error_message: string | null;
}

export interface HeartbeatPayload {
  status: "IDLE" | "BUSY";
  current_job_id: bigint | null;
}

export interface ErrorPayload {
  message: string;
  traceback: string | null;
}

export interface PrepareEnvCommand {
  env_hash: string;
  lockfile_content: string;
  python_version: string | null;
}

export interface EnvReadyPayload {
  env_hash: string;
  interpreter_path: string;
  cached: boolean;
}

/** Payload type carried by each opcode; `null` means an empty payload frame. */
export interface PayloadByOpcode {
  [Opcode.UNKNOWN]: null;
  [Opcode.IDENTIFY]: IdentifyPayload;
  [Opcode.DISPATCH]: DispatchCommand;
  [Opcode.ABORT]: null;
  [Opcode.HEARTBEAT]: HeartbeatPayload;
  [Opcode.CONCLUDE]: JobReceipt;
  [Opcode.ERR]: ErrorPayload;
  [Opcode.RELOAD]: null;
  [Opcode.PREPARE_ENV]: PrepareEnvCommand;
  [Opcode.ENV_READY]: EnvReadyPayload;
  [Opcode.DEPLOY]: Record<string, unknown>;
}

/** A decoded message: header plus its typed payload. */
export type Message = { [O in Opcode]: { opcode: O; jobId: bigint; payload: PayloadByOpcode[O] } }[Opcode];
