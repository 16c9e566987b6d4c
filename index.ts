/**
 * Public API of casparian-flow: what config files, user sinks and worker plugins import.
 * Everything here follows semver; the worker's own machinery (the wire codec, the
 * pipeline, environments, the bridge) is in `casparian-flow/internals` (internals.ts),
 * for embedding, and may change in any release.
 */

// The config file.
export { defineConfig } from "./core/config/config.js";
export type {
  BridgeConfig,
  CasparianConfig,
  ConfigEnv,
  ConfigTaps,
  EnvironmentsConfig,
  LimitsConfig,
  ParquetConfig,
  RunConfig,
  SinkReference,
  UserConfigExport,
  WarmGuestsConfig,
} from "./core/config/config.js";

// Writing a sink: the lifecycle, and the helpers that keep its output inside the root and never partial.
export { defineSink } from "./sinks/api.js";
export type {
  CheckContext,
  CommitOptions,
  ParsedSinkUri,
  RecoverContext,
  ResolveDecision,
  SchemaContract,
  Sink,
  SinkContext,
  SinkHandle,
  SinkOptions,
  SinkOptionsSchema,
  SinkPlugin,
  SinkTarget,
} from "./sinks/api.js";
export { resolveInsideRoot } from "./sinks/uri.js";
export { assertInsideRoot, makeDirectoryInsideRoot } from "./core/kernel/inside-root.js";
// valibot, for a sink's options schema: the same copy the worker checks them with.
export * as v from "valibot";
export {
  assertTargetFree,
  backupPathFor,
  finalPathFor,
  fsyncDirectory,
  isPublishHandle,
  publishHandle,
  publishStaged,
  removeIfPresent,
  removeStaleStaging,
  resolvePublished,
  stagingPathFor,
} from "./sinks/files.js";
export type { PublishHandle } from "./sinks/files.js";
export { isProcessAlive } from "./core/kernel/process.js";
// Reading a Batch's values exactly (int64 as bigint, timestamps as text, decimals unrounded).
export { dataReader, decimalText, epochTicks, exactReader, type ExactValue } from "./sinks/values.js";
// A topic's schema across batches and jobs: a null column is a placeholder, legal widenings, CSP_SCHEMA_CONFLICT.
export { castTable, TopicSchema, unifySchemas, widenType } from "./sinks/schema.js";

// Worker plugins: the hooks' types and the stages that order their taps.
export { Stage } from "./hooks/index.js";
export type { DispatchRequest, HookName, TapOnlyHooks, WorkerHooks, WorkerInfo, WorkerPlugin } from "./hooks/index.js";

// The job as hooks and sinks see it (camelCase, independent of the wire format).
export type { Artifact, Batch, EnvReady, JobCommand, JobContext, JobInfo, JobOutcome, JobStatus, Receipt, SinkMode, SinkSpec } from "./core/kernel/job.js";

// Errors: stable codes, a message and a hint.
export { CasparianError, Errors } from "./core/kernel/errors.js";
export type { ErrorCode, ErrorContext, ErrorFactory } from "./core/kernel/errors.js";
export type { Logger } from "./core/kernel/logger.js";
