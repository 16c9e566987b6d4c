/**
 * The protocol edge: the wire's snake_case payloads (messages.ts) to and from the job
 * view that hooks, sinks and the bridge see (core/kernel/job.ts). Nothing above the
 * worker's socket handles a wire shape, and nothing below it a plugin-facing one.
 */
import type { EnvReady, JobCommand, Receipt, SinkSpec } from "../kernel/job.js";
import type { DispatchCommand, EnvReadyPayload, JobReceipt, SinkConfig } from "./messages.js";

export function sinkSpecFromWire(config: SinkConfig): SinkSpec {
  return Object.freeze({ topic: config.topic, uri: config.uri, mode: config.mode, schemaDef: config.schema_def });
}

export function sinkSpecToWire(spec: SinkSpec): SinkConfig {
  return { topic: spec.topic, uri: spec.uri, mode: spec.mode, schema_def: spec.schemaDef };
}

export function jobCommandFromWire(command: DispatchCommand): JobCommand {
  return Object.freeze({
    pluginName: command.plugin_name,
    filePath: command.file_path,
    sinks: Object.freeze(command.sinks.map(sinkSpecFromWire)),
    fileVersionId: command.file_version_id,
    envHash: command.env_hash,
    sourceCode: command.source_code,
    artifactHash: command.artifact_hash,
    ...(command.plugin_config === undefined ? {} : { pluginConfig: command.plugin_config }),
  });
}

export function jobCommandToWire(command: JobCommand): DispatchCommand {
  return {
    plugin_name: command.pluginName,
    file_path: command.filePath,
    sinks: command.sinks.map(sinkSpecToWire),
    file_version_id: command.fileVersionId,
    env_hash: command.envHash,
    source_code: command.sourceCode,
    artifact_hash: command.artifactHash,
    ...(command.pluginConfig === undefined ? {} : { plugin_config: command.pluginConfig }),
  };
}

export function receiptToWire(receipt: Receipt): JobReceipt {
  return {
    status: receipt.status,
    metrics: { ...receipt.metrics },
    artifacts: receipt.artifacts.map((a) => ({ topic: a.topic, uri: a.uri })),
    error_message: receipt.errorMessage,
  };
}

export function envReadyFromWire(payload: EnvReadyPayload): EnvReady {
  return Object.freeze({ envHash: payload.env_hash, interpreterPath: payload.interpreter_path, cached: payload.cached });
}
