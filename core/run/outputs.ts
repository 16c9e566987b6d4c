/**
 * Where a run's data goes.
 *
 * Sinks come from, in order: --sink TOPIC=URI (with --mode), the plugin's
 * MANIFEST["sinks"], the config's run.sinks; every topic none of them names lands in
 * the default layout,
 *
 *   <output>/<topic>/<input name>.parquet     one file per topic per input
 *
 * (a catch-all sink, topic "*", that the worker opens for each topic the plugin
 * publishes, including topics registered at run time), so each topic directory is one
 * table and nothing published is dropped.
 *
 * Placeholders in a sink URI: `{input}` is the input's output name (its path below the
 * input root, extension kept: `2024/jan.csv`), `{topic}` the topic's name.
 *
 * Modes (default replace), per input, never per run:
 *   replace  the sink ends up with exactly this input's latest rows;
 *   append   it keeps the rows of the input's earlier versions too (each version once);
 *   error    the input fails if it already has output there.
 * With `{input}` in the URI every input has its own target, so any sink can do that. On
 * one fixed URI, replace and error need a sink that acts on one input's rows inside a
 * shared target (a SinkPlugin with `inputScopedModes: true`, like the example SQL
 * sinks); elsewhere they are refused up front, because each input would overwrite the
 * others'.
 *
 * Workers never write files into --output directly: each has a private root under
 * <output>/.casparian-staging-<pid>/, and a file is moved into --output only once its
 * job concluded SUCCESS (promote.ts). That needs one file per job, so it applies when
 * every sink is Parquet; with other sinks (a database) the workers write into --output
 * itself and the sinks' own staging and two-phase commit keep partial data invisible.
 */
import { readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { Errors } from "../kernel/errors.js";
import { isProcessAlive } from "../kernel/process.js";
import { ANY_TOPIC, INPUT_PLACEHOLDER, TOPIC_PLACEHOLDER, type SinkConfig, type SinkMode } from "../protocol/messages.js";
import type { PluginManifest } from "./plugin.js";

export const DEFAULT_TOPIC = "output";
export { ANY_TOPIC, INPUT_PLACEHOLDER, TOPIC_PLACEHOLDER };
export const DEFAULT_SINK_URI = `parquet://${TOPIC_PLACEHOLDER}/${INPUT_PLACEHOLDER}.parquet`;
const STAGING_PREFIX = ".casparian-staging-";
export const MODES: readonly SinkMode[] = ["replace", "append", "error"];

export type SinkSource = "--sink" | "MANIFEST" | "config" | "default";

/** One configured sink, placeholders still in its URI. */
export interface PlannedSink extends SinkConfig {
  readonly source: SinkSource;
}

export interface SinkPlan {
  /** Where the named sinks came from ("default" when only the catch-all is there). */
  source: SinkSource;
  /** Every sink, the catch-all last. */
  sinks: PlannedSink[];
  /** True when every sink writes one Parquet file per job, so workers can use private roots. */
  promotable: boolean;
  /** The sinks of the job for one input: placeholders filled in. */
  forInput(name: string): SinkConfig[];
}

/** `run.sinks` in the config: topic → URI, or → { uri, mode }. */
export type ConfigSinks = Record<string, string | { uri: string; mode?: string; schema_def?: unknown }>;

/** Parses `--sink TOPIC=URI`; throws CSP_CLI_USAGE on a malformed one. */
export function parseSinkFlag(flag: string, mode: SinkMode = "replace"): PlannedSink {
  const eq = flag.indexOf("=");
  const topic = eq > 0 ? flag.slice(0, eq) : "";
  const uri = eq > 0 ? flag.slice(eq + 1) : "";
  if (topic === "" || !/^[a-z][a-z0-9+.-]*:\/\/./i.test(uri)) {
    throw Errors.CLI_USAGE([`--sink expects TOPIC=URI (e.g. output=parquet://sales/{input}.parquet), got ${JSON.stringify(flag)}`]);
  }
  return { topic, uri, mode, schema_def: null, source: "--sink" };
}

export function parseMode(value: string, where: string): SinkMode {
  if (!MODES.includes(value as SinkMode)) throw Errors.CLI_USAGE([`${where} expects one of ${MODES.join(", ")}, got ${JSON.stringify(value)}`]);
  return value as SinkMode;
}

export function planSinks(options: { cliSinks: PlannedSink[]; manifest: PluginManifest | null; configSinks?: ConfigSinks }): SinkPlan {
  const { cliSinks, manifest, configSinks } = options;
  let named: PlannedSink[] = [];
  let source: SinkSource = "default";
  if (cliSinks.length > 0) {
    named = cliSinks;
    source = "--sink";
  } else if (manifest?.sinks !== undefined && Object.keys(manifest.sinks).length > 0) {
    named = Object.entries(manifest.sinks).map(([topic, sink]) => entrySink(topic, sink, "MANIFEST", `MANIFEST["sinks"]["${topic}"]`));
    source = "MANIFEST";
  } else if (configSinks !== undefined && Object.keys(configSinks).length > 0) {
    named = Object.entries(configSinks).map(([topic, sink]) => entrySink(topic, sink, "config", `run.sinks.${topic}`));
    source = "config";
  }
  const sinks = named.some((s) => s.topic === ANY_TOPIC)
    ? named
    : [...named, { topic: ANY_TOPIC, uri: DEFAULT_SINK_URI, mode: "replace" as const, schema_def: null, source: "default" as const }];
  return {
    source,
    sinks,
    promotable: sinks.every((s) => s.uri.toLowerCase().startsWith("parquet://")),
    forInput: (name) => sinks.map(({ topic, uri, mode, schema_def }) => ({ topic, uri: fillInput(uri, name), mode, schema_def })),
  };
}

/** The URI with `{input}` replaced by the input's name (and `{topic}` for a named topic). */
export function fillInput(uri: string, name: string): string {
  return uri.split(INPUT_PLACEHOLDER).join(escapeLocation(name));
}

export function hasInputPlaceholder(uri: string): boolean {
  return uri.includes(INPUT_PLACEHOLDER);
}

function entrySink(topic: string, sink: unknown, source: SinkSource, label: string): PlannedSink {
  const entry = typeof sink === "string" ? { uri: sink } : (sink as { uri?: unknown; mode?: unknown; schema_def?: unknown } | null);
  if (typeof entry?.uri !== "string") throw Errors.CLI_USAGE([`${label} has no "uri" string`]);
  const mode = entry.mode === undefined ? "replace" : parseMode(String(entry.mode), `${label}.mode`);
  const schema = typeof entry.schema_def === "string" ? entry.schema_def : entry.schema_def != null ? JSON.stringify(entry.schema_def) : null;
  return { topic, uri: entry.uri, mode, schema_def: schema, source };
}

export function describeSink(sink: PlannedSink): string {
  return sink.topic === ANY_TOPIC ? `the default sink ${sink.uri}` : `${sink.topic}=${sink.uri} (from ${sink.source})`;
}

/** Sink URIs are percent-decoded between "://" and "?": keep those characters literal. */
export function escapeLocation(path: string): string {
  return path.replace(/%/g, "%25").replace(/\?/g, "%3F").replace(/#/g, "%23");
}

// ---------------------------------------------------------------------------
// Staging
// ---------------------------------------------------------------------------

export function stagingRootFor(outputRoot: string): string {
  return join(outputRoot, `${STAGING_PREFIX}${process.pid}`);
}

/** Removes staging left by runs that were killed (their pid is gone). Run after the state's recovery. */
export async function removeStaleStaging(outputRoot: string): Promise<void> {
  const entries = await readdir(outputRoot).catch(() => [] as string[]);
  for (const name of entries) {
    if (!name.startsWith(STAGING_PREFIX)) continue;
    const pid = Number(name.slice(STAGING_PREFIX.length));
    if (Number.isInteger(pid) && pid !== process.pid && isProcessAlive(pid)) continue;
    await rm(join(outputRoot, name), { recursive: true, force: true });
  }
}
