/**
 * Public API of casparian-flow: what config files, user sinks and worker plugins import.
 */
export { defineConfig } from "./core/config/config.js";
export type {
  CasparianConfig,
  ConfigEnv,
  UserConfigExport,
  SinkReference,
  BridgeConfig,
  EnvironmentsConfig,
  ParquetConfig,
  RunConfig,
} from "./core/config/config.js";
export { defineSink } from "./sinks/api.js";
export type { Sink, SinkPlugin, SinkTarget, SinkContext, RecoverContext, CheckContext, ParsedSinkUri, SchemaContract } from "./sinks/api.js";
export { createHooks, Stage } from "./hooks/index.js";
export type { WorkerHooks, TapOnlyHooks, WorkerPlugin, WorkerInfo, DispatchRequest } from "./hooks/index.js";
export type { Artifact, Batch, EnvReady, JobCommand, JobContext, JobInfo, JobOutcome, JobStatus, Receipt, SinkMode, SinkSpec } from "./core/kernel/job.js";
export type { DispatchCommand, JobReceipt, SinkConfig } from "./core/protocol/messages.js";
export { CasparianError, Errors } from "./core/kernel/errors.js";
export type { Logger } from "./core/kernel/logger.js";
// Sinks: the bundled Parquet sink, and the URI and staging helpers user sinks build on.
export { parquetSink } from "./sinks/parquet.js";
export { parseSinkUri, resolveInsideRoot } from "./sinks/uri.js";
export { assertTargetFree, finalPathFor, fsyncDirectory, publishStaged, removeIfPresent, removeStaleStaging, stagingPathFor } from "./sinks/files.js";
export { dataReader, decimalText, epochTicks, exactReader, type ExactValue } from "./sinks/values.js";
export { TopicSchema, castTable, unifySchemas, widenType } from "./sinks/schema.js";
export { isProcessAlive } from "./core/kernel/process.js";
// Protocol v4 codec and the worker itself, for embedding (a Sentinel in tests, a custom launcher).
export { Opcode } from "./core/protocol/messages.js";
export type { Header, Message, PayloadByOpcode } from "./core/protocol/messages.js";
export { decodeHeader, decodeMessage, encodeHeader, encodeMessage, parseJson, stringifyJson } from "./core/protocol/codec.js";
export { Worker } from "./core/worker/worker.js";
export type { WorkerOptions } from "./core/worker/worker.js";
export { Pipeline } from "./core/pipeline/pipeline.js";
export type { PipelineOptions, JobRequest, GuestRunner } from "./core/pipeline/pipeline.js";
export { loadConfig } from "./core/config/loader.js";
export type { LoadedConfig } from "./core/config/loader.js";
// Environments and the bridge: provision uv venvs from lockfiles, run a plugin as a guest process.
export { EnvManager, findUv } from "./core/env/manager.js";
export type { EnvManagerOptions } from "./core/env/manager.js";
export type { EnvironmentProvider, EnvLease } from "./core/env/types.js";
export { runGuest, shimPath, TOPIC_METADATA_KEY, DEFAULT_TOPIC } from "./core/bridge/host.js";
export type { GuestRunOptions, GuestResult, GuestTimeouts } from "./core/bridge/types.js";
