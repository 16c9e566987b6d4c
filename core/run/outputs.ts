/**
 * Where a run's data goes, and how it gets there.
 *
 * Sinks per job come from, in order: --sink TOPIC=URI, the plugin's
 * MANIFEST["sinks"], the config's run.sinks, else the default layout:
 *
 *   <output>/<topic>/<input name>.parquet     one file per topic per input
 *
 * so each topic directory is one table (`SELECT * FROM 'output/output/*.parquet'`)
 * and running again over the same inputs replaces their files instead of adding
 * duplicates. Topics: "output" plus any listed in MANIFEST["topics"].
 *
 * Workers never write into --output directly: each has a private root under
 * <output>/.casparian-staging-<pid>/, and a file is moved (renamed, same file
 * system) into --output only once its job concluded SUCCESS. A worker that dies,
 * a retried job or Ctrl-C therefore never leaves a partial or duplicate file.
 * That needs one file per job, so it applies when every sink is Parquet; with
 * other sinks (a database) the workers write into --output itself and the sinks'
 * own staging and two-phase commit keep partial data invisible.
 */
import { mkdir, readdir, realpath, rename, rm, stat } from "node:fs/promises";
import { dirname, isAbsolute, join, relative, sep } from "node:path";
import { Errors } from "../kernel/errors.js";
import type { Artifact, SinkConfig, SinkMode } from "../protocol/messages.js";
import type { InputFile } from "./inputs.js";
import type { PluginManifest } from "./plugin.js";
import { isProcessAlive } from "../kernel/process.js";

export const DEFAULT_TOPIC = "output";
const STAGING_PREFIX = ".casparian-staging-";

export type SinkSource = "--sink" | "MANIFEST" | "config" | "default";

export interface SinkPlan {
  source: SinkSource;
  /** True when every sink writes one Parquet file per job, so workers can use private roots. */
  promotable: boolean;
  /** The sinks of the job for one input. */
  forInput(input: InputFile): SinkConfig[];
}

/** Parses `--sink TOPIC=URI`; throws CSP_CLI_USAGE on a malformed one. */
export function parseSinkFlag(flag: string): SinkConfig {
  const eq = flag.indexOf("=");
  const topic = eq > 0 ? flag.slice(0, eq) : "";
  const uri = eq > 0 ? flag.slice(eq + 1) : "";
  if (topic === "" || !/^[a-z][a-z0-9+.-]*:\/\/./i.test(uri)) {
    throw Errors.CLI_USAGE([`--sink expects TOPIC=URI (e.g. output=parquet://sales.parquet), got ${JSON.stringify(flag)}`]);
  }
  return { topic, uri, mode: "append", schema_def: null };
}

export function planSinks(options: { cliSinks: SinkConfig[]; manifest: PluginManifest | null; configSinks?: Record<string, string> }): SinkPlan {
  const { cliSinks, manifest, configSinks } = options;
  if (cliSinks.length > 0) return fixed("--sink", cliSinks);
  if (manifest?.sinks !== undefined && Object.keys(manifest.sinks).length > 0) {
    return fixed("MANIFEST", Object.entries(manifest.sinks).map(([topic, sink]) => manifestSink(topic, sink)));
  }
  if (configSinks !== undefined && Object.keys(configSinks).length > 0) {
    return fixed("config", Object.entries(configSinks).map(([topic, uri]) => ({ topic, uri, mode: "append" as const, schema_def: null })));
  }
  const topics = [DEFAULT_TOPIC, ...(manifest?.topics ?? []).filter((t) => t !== DEFAULT_TOPIC)];
  return {
    source: "default",
    promotable: true,
    forInput: (input) =>
      topics.map((topic) => ({
        topic,
        uri: `parquet://${escapeLocation(`${topic}/${input.outputStem}.parquet`)}`,
        // The worker's root is private and fresh, so "replace" just means: no _<job_id> suffix.
        mode: "replace" as const,
        schema_def: null,
      })),
  };
}

function fixed(source: SinkSource, sinks: SinkConfig[]): SinkPlan {
  return { source, promotable: sinks.every((s) => s.uri.startsWith("parquet://")), forInput: () => sinks };
}

const MODES: readonly SinkMode[] = ["append", "replace", "error"];

function manifestSink(topic: string, sink: unknown): SinkConfig {
  const entry = typeof sink === "string" ? { uri: sink } : (sink as { uri?: unknown; mode?: unknown; schema_def?: unknown });
  if (typeof entry?.uri !== "string") throw Errors.CLI_USAGE([`MANIFEST["sinks"]["${topic}"] has no "uri" string`]);
  const mode = MODES.includes(entry.mode as SinkMode) ? (entry.mode as SinkMode) : "append";
  const schema = typeof entry.schema_def === "string" ? entry.schema_def : entry.schema_def != null ? JSON.stringify(entry.schema_def) : null;
  return { topic, uri: entry.uri, mode, schema_def: schema };
}

/** Sink URIs are percent-decoded between "://" and "?": keep those characters literal. */
function escapeLocation(path: string): string {
  return path.replace(/%/g, "%25").replace(/\?/g, "%3F").replace(/#/g, "%23");
}

// ---------------------------------------------------------------------------
// Staging and promotion
// ---------------------------------------------------------------------------

export function stagingRootFor(outputRoot: string): string {
  return join(outputRoot, `${STAGING_PREFIX}${process.pid}`);
}

/** Removes staging left by runs that were killed (their pid is gone). */
export async function removeStaleStaging(outputRoot: string): Promise<void> {
  const entries = await readdir(outputRoot).catch(() => [] as string[]);
  for (const name of entries) {
    if (!name.startsWith(STAGING_PREFIX)) continue;
    const pid = Number(name.slice(STAGING_PREFIX.length));
    if (Number.isInteger(pid) && pid !== process.pid && isProcessAlive(pid)) continue;
    await rm(join(outputRoot, name), { recursive: true, force: true });
  }
}

export interface PublishedArtifact extends Artifact {
  /** Local file, when the artifact is one. */
  path: string | null;
  bytes: number | null;
}

/**
 * Moves a successful job's files from the worker's private root into --output,
 * keeping their path relative to the root. Artifacts outside the root (a database,
 * an absolute path) are already where their sink put them and are reported as is.
 */
export async function promoteArtifacts(artifacts: readonly Artifact[], workerRoot: string, outputRoot: string, sinks: readonly SinkConfig[]): Promise<PublishedArtifact[]> {
  const published: PublishedArtifact[] = [];
  // Sinks may report real paths (a symlinked /tmp on macOS): compare against both spellings.
  const roots = [workerRoot, await realpath(workerRoot).catch(() => workerRoot)];
  for (const artifact of artifacts) {
    const local = localPath(artifact.uri);
    const rel = local === null ? null : insideRoot(local, roots);
    if (local === null || rel === null) {
      const bytes = local === null ? null : await stat(local).then((s) => s.size, () => null);
      published.push({ ...artifact, path: local, bytes });
      continue;
    }
    const target = join(outputRoot, rel);
    const mode = sinks.find((s) => s.topic === artifact.topic)?.mode;
    if (mode === "error" && (await stat(target).then(() => true, () => false))) {
      throw Errors.SINK_TARGET_EXISTS([target], { context: { sinkUri: artifact.uri } });
    }
    await mkdir(dirname(target), { recursive: true });
    await rename(local, target);
    const scheme = artifact.uri.slice(0, artifact.uri.indexOf("://"));
    published.push({ topic: artifact.topic, uri: `${scheme}://${target.split(sep).join("/")}`, path: target, bytes: (await stat(target)).size });
  }
  return published;
}

function insideRoot(path: string, roots: readonly string[]): string | null {
  for (const root of roots) {
    const rel = relative(root, path);
    if (rel !== "" && !rel.startsWith("..") && !isAbsolute(rel)) return rel;
  }
  return null;
}

/** Artifacts of sinks that wrote straight into --output: reported as they are. */
export async function publishedInPlace(artifacts: readonly Artifact[]): Promise<PublishedArtifact[]> {
  return Promise.all(
    artifacts.map(async (artifact) => {
      const local = localPath(artifact.uri);
      const bytes = local === null ? null : await stat(local).then((s) => (s.isFile() ? s.size : null), () => null);
      return { ...artifact, path: bytes === null ? null : local, bytes };
    }),
  );
}

/** `parquet:///abs/path`, `file:///abs/path` (any scheme with an absolute path) → the path; else null. */
function localPath(uri: string): string | null {
  const match = /^[a-z][a-z0-9+.-]*:\/\/(\/.*)$/i.exec(uri);
  if (match === null) return null;
  const raw = match[1]!;
  try {
    return raw.includes("%") ? decodeURIComponent(raw) : raw;
  } catch {
    return raw;
  }
}
