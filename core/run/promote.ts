/**
 * Publishing one input's outputs: from a successful job's receipt to files under
 * --output and a record in the run state, in one crash-safe step (state.ts).
 *
 * The input's earlier outputs are replaced, in every topic: the new files take their
 * names (stable per input), and earlier files the new ones do not overwrite are
 * removed (a topic the input no longer publishes to, a sink no longer configured),
 * except, for sinks in mode append, the files of the input's other versions.
 */
import { realpath, stat } from "node:fs/promises";
import { isAbsolute, join, relative, sep } from "node:path";
import { Errors } from "../kernel/errors.js";
import type { JobReceipt, SinkConfig } from "../protocol/messages.js";
import type { NamedInput } from "./inputs.js";
import { ANY_TOPIC, escapeLocation, TOPIC_PLACEHOLDER } from "./outputs.js";
import type { Move, OutputRecord, RunState } from "./state.js";

export interface PublishedArtifact {
  topic: string;
  /** Where it is now: the final file for a file sink, else the sink's URI. */
  uri: string;
  /** Local file, when the artifact is one. */
  path: string | null;
  bytes: number | null;
  rows: number;
}

export interface PromoteRequest {
  input: NamedInput;
  contentSha256: string;
  recipe: string;
  jobId: bigint;
  receipt: JobReceipt;
  sinks: readonly SinkConfig[];
  /** The worker's private root, or null when workers write into --output itself. */
  workerRoot: string | null;
}

/** The sink config that handled `topic` for this job: its own, else the catch-all. */
export function sinkFor(sinks: readonly SinkConfig[], topic: string): SinkConfig | undefined {
  return sinks.find((s) => s.topic === topic) ?? sinks.find((s) => s.topic === ANY_TOPIC);
}

/** Tells sinks apart in the state: the URI with every placeholder filled in. */
export function sinkKey(sink: SinkConfig, topic: string): string {
  return sink.uri.split(TOPIC_PLACEHOLDER).join(escapeLocation(topic));
}

export async function promote(state: RunState, request: PromoteRequest): Promise<PublishedArtifact[]> {
  const { input, receipt, sinks, workerRoot } = request;
  const outputRoot = state.outputRoot;
  const fileVersionId = input.fileVersionId.toString();
  // Sinks may report real paths (a symlinked /tmp on macOS): compare against both spellings.
  const workerRoots = workerRoot === null ? [] : [workerRoot, await realRoot(state, workerRoot)];
  const outputRoots = [outputRoot, await realRoot(state, outputRoot)];
  const previous = state.outputsOf(input.path);

  const moves: Move[] = [];
  const fresh: OutputRecord[] = [];
  const published: PublishedArtifact[] = [];
  for (const artifact of receipt.artifacts) {
    const sink = sinkFor(sinks, artifact.topic);
    const key = sink === undefined ? artifact.uri : sinkKey(sink, artifact.topic);
    const mode = sink?.mode ?? "append";
    const rows = Number(receipt.metrics[`sink_rows.${artifact.topic}`] ?? receipt.metrics[`rows.${artifact.topic}`] ?? 0);
    const local = localPath(artifact.uri);
    const staged = local === null ? null : insideRoot(local, workerRoots);
    if (local !== null && staged !== null) {
      const target = join(outputRoot, staged);
      const bytes = (await stat(local)).size;
      if (
        mode === "error" &&
        (await stat(target).then(
          () => true,
          () => false,
        ))
      ) {
        throw Errors.SINK_TARGET_EXISTS([target], { context: { sinkUri: artifact.uri } });
      }
      moves.push({ from: local, to: staged });
      const uri = `${artifact.uri.slice(0, artifact.uri.indexOf("://"))}://${target.split(sep).join("/")}`;
      fresh.push({ topic: artifact.topic, sink: key, mode, uri, file: staged.split(sep).join("/"), fileVersionId, rows, bytes });
      published.push({ topic: artifact.topic, uri, path: target, bytes, rows });
      continue;
    }
    // Written in place (a database, or a file sink writing into --output itself).
    const inPlace = local === null ? null : insideRoot(local, outputRoots);
    const bytes =
      local === null
        ? null
        : await stat(local).then(
            (s) => (s.isFile() ? s.size : null),
            () => null,
          );
    const file = inPlace !== null && bytes !== null ? inPlace.split(sep).join("/") : null;
    fresh.push({ topic: artifact.topic, sink: key, mode, uri: artifact.uri, file, fileVersionId, rows, bytes });
    published.push({ topic: artifact.topic, uri: artifact.uri, path: file === null ? null : local, bytes, rows });
  }

  const appendSinks = new Set(
    previous.flatMap((o) => {
      const sink = sinkFor(sinks, o.topic);
      return sink !== undefined && sink.mode === "append" ? [sinkKey(sink, o.topic)] : [];
    }),
  );
  const kept = previous.filter((o) => o.mode === "append" && appendSinks.has(o.sink) && o.fileVersionId !== fileVersionId);
  const targets = new Set(fresh.flatMap((o) => (o.file === null ? [] : [o.file])));
  const removals = previous.filter((o) => !kept.includes(o) && o.file !== null && !targets.has(o.file)).map((o) => o.file!);

  await state.promote({
    input: input.path,
    moves,
    removals,
    record: {
      size: input.size,
      mtimeNs: input.mtimeNs.toString(),
      contentSha256: request.contentSha256,
      fileVersionId,
      recipe: request.recipe,
      jobId: request.jobId.toString(),
    },
    outputs: [...kept, ...fresh],
  });
  return published;
}

/**
 * The real path of a run's root (its output root, a worker's private root), resolved once per
 * run: every job's promotion asked again (two realpath walks per job). Only used to recognise
 * the paths sinks report; where files go is checked again at the move (state.ts).
 */
const realRoots = new WeakMap<RunState, Map<string, Promise<string>>>();

function realRoot(state: RunState, root: string): Promise<string> {
  let roots = realRoots.get(state);
  if (roots === undefined) realRoots.set(state, (roots = new Map()));
  let real = roots.get(root);
  if (real === undefined) roots.set(root, (real = realpath(root).catch(() => root)));
  return real;
}

function insideRoot(path: string, roots: readonly string[]): string | null {
  for (const root of roots) {
    const rel = relative(root, path);
    if (rel !== "" && !rel.startsWith("..") && !isAbsolute(rel)) return rel;
  }
  return null;
}

/** `parquet:///abs/path`, `file:///abs/path` (any scheme with an absolute path) → the path; else null. */
export function localPath(uri: string): string | null {
  const match = /^[a-z][a-z0-9+.-]*:\/\/(\/.*)$/i.exec(uri);
  if (match === null) return null;
  const raw = match[1]!;
  try {
    return raw.includes("%") ? decodeURIComponent(raw) : raw;
  } catch {
    return raw;
  }
}
