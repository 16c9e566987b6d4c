/**
 * `casparian-flow/internals`: the worker's machinery, for embedding it (a custom
 * launcher, a Sentinel in tests, a tool that reads the wire). Not covered by semver:
 * anything here may change in any release. Config files, sinks and worker plugins
 * need only the public entry (index.ts).
 */

// Protocol v4: the wire types and the codec.
export { Opcode } from "./core/protocol/messages.js";
export type { DispatchCommand, Header, JobReceipt, Message, PayloadByOpcode, SinkConfig } from "./core/protocol/messages.js";
export { decodeHeader, decodeMessage, encodeHeader, encodeMessage, parseJson, stringifyJson } from "./core/protocol/codec.js";

// The worker, its pipeline (the one place that fires the hooks) and its config.
export { Worker } from "./core/worker/worker.js";
export type { WorkerOptions } from "./core/worker/worker.js";
export { Pipeline } from "./core/pipeline/pipeline.js";
export type { GuestRunner, JobRequest, PipelineOptions } from "./core/pipeline/pipeline.js";
export { createHooks } from "./hooks/index.js";
export { loadConfig } from "./core/config/loader.js";
export type { LoadedConfig } from "./core/config/loader.js";
export { createLogger, silentLogger } from "./core/kernel/logger.js";
export type { LoggerOptions } from "./core/kernel/logger.js";

// Environments and the bridge: provision uv venvs from lockfiles, run a plugin as a guest process.
export { EnvManager, findUv } from "./core/env/manager.js";
export type { EnvManagerOptions } from "./core/env/manager.js";
export type { EnvironmentProvider, EnvLease } from "./core/env/types.js";
export { DEFAULT_TOPIC, runGuest, shimPath, TOPIC_METADATA_KEY } from "./core/bridge/host.js";
export type { GuestResult, GuestRunOptions, GuestTimeouts } from "./core/bridge/types.js";

// Sinks: the bundled Parquet sink and URI parsing (schema unification is public: sinks widen with it).
export { parquetSink } from "./sinks/parquet.js";
export { parseSinkUri } from "./sinks/uri.js";
