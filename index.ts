/**
 * Public API of casparian-flow: what config files, user sinks and worker plugins import.
 */
export { defineConfig } from "./core/config.js";
export type { CasparianConfig, ConfigEnv, UserConfigExport, SinkReference, BridgeConfig, EnvironmentsConfig, ParquetConfig, RunConfig } from "./core/config.js";
export { defineSink } from "./sinks/api.js";
export type { Sink, SinkPlugin, SinkTarget, SinkContext, RecoverContext, ParsedSinkUri, SchemaContract } from "./sinks/api.js";
export { createHooks, Stage } from "./hooks/index.js";
export type { WorkerHooks, TapOnlyHooks, WorkerPlugin, WorkerInfo, DispatchRequest } from "./hooks/index.js";
export type { Batch, JobContext, JobInfo, JobOutcome } from "./core/job.js";
export type { Artifact, DispatchCommand, JobReceipt, SinkConfig, SinkMode } from "./core/messages.js";
export { CasparianError, Errors } from "./core/errors.js";
export type { Logger } from "./core/logger.js";
