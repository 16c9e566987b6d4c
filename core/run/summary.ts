/**
 * The end-of-run report: per topic the files, rows, bytes and where they are;
 * then each failed input with the first line of its error. Plain text for stdout.
 */
import { dirname, isAbsolute, relative, sep } from "node:path";
import type { JobRecord } from "./scheduler.js";
import { formatBytes, formatCount, formatDuration } from "./progress.js";

export interface TopicSummary {
  topic: string;
  files: number;
  rows: number;
  /** Null when no artifact of the topic is a local file (a database table). */
  bytes: number | null;
  /** A directory when every file of the topic is in one, else the sink URIs. */
  location: string;
}

export interface RunSummary {
  total: number;
  succeeded: number;
  failed: JobRecord[];
  notRun: JobRecord[];
  topics: TopicSummary[];
  /** Topics the plugin published rows to that no sink was configured for. */
  unrouted: Map<string, number>;
}

export function summarize(jobs: readonly JobRecord[], cwd: string): RunSummary {
  const topics = new Map<string, { files: number; rows: number; bytes: number | null; dirs: Set<string>; uris: Set<string> }>();
  const unrouted = new Map<string, number>();
  for (const job of jobs) {
    if (job.state !== "succeeded") continue;
    const metrics = job.receipt?.metrics ?? {};
    const sinkTopics = new Set(job.sinks.map((s) => s.topic));
    for (const artifact of job.artifacts) {
      const entry = topics.get(artifact.topic) ?? { files: 0, rows: 0, bytes: null, dirs: new Set<string>(), uris: new Set<string>() };
      entry.files++;
      if (artifact.bytes !== null) entry.bytes = (entry.bytes ?? 0) + artifact.bytes;
      if (artifact.path !== null) entry.dirs.add(topDirectory(artifact.path, job));
      else entry.uris.add(artifact.uri);
      topics.set(artifact.topic, entry);
    }
    for (const [name, value] of Object.entries(metrics)) {
      if (!name.startsWith("rows.")) continue;
      const topic = name.slice("rows.".length);
      const rows = Number(value);
      const entry = topics.get(topic);
      if (entry !== undefined) entry.rows += rows;
      else if (!sinkTopics.has(topic) && rows > 0) unrouted.set(topic, (unrouted.get(topic) ?? 0) + rows);
    }
  }
  return {
    total: jobs.length,
    succeeded: jobs.filter((j) => j.state === "succeeded").length,
    failed: jobs.filter((j) => j.state === "failed"),
    notRun: jobs.filter((j) => j.state === "not-run"),
    unrouted,
    topics: [...topics.entries()].map(([topic, e]) => ({
      topic,
      files: e.files,
      rows: e.rows,
      bytes: e.bytes,
      location: [...[...e.dirs].map((d) => display(d, cwd) + "/"), ...e.uris].join(", "),
    })),
  };
}

/**
 * The directory the topic's files share: for the default layout
 * <output>/<topic>/<input stem>.parquet that is <output>/<topic>, even when the
 * stem has subdirectories of its own.
 */
function topDirectory(path: string, job: JobRecord): string {
  const suffix = `/${job.input.outputStem}.parquet`;
  return path.endsWith(suffix) ? path.slice(0, path.length - suffix.length) : dirname(path);
}

function display(path: string, cwd: string): string {
  const rel = relative(cwd, path);
  if (rel === "") return ".";
  return rel.startsWith("..") || isAbsolute(rel) ? path : `.${sep}${rel}`;
}

/**
 * First non-empty line of an error message. A plugin's own exception is shown as
 * Python printed it (the "guest failed" wrapper adds nothing for a person).
 */
export function firstLine(message: string | null): string {
  const line = (message ?? "unknown error").split("\n").map((l) => l.trim()).find((l) => l !== "") ?? "unknown error";
  return line.replace(/^CSP_GUEST_FAILED: Guest process error: /, "");
}

export function renderSummary(summary: RunSummary, options: { seconds: number; interrupted: boolean; cwd: string; sharedError?: boolean }): string {
  const lines: string[] = [];
  const { total, succeeded, failed, notRun } = summary;
  const rate = options.seconds > 0 ? ` (${(succeeded / options.seconds).toFixed(1)} files/s)` : "";
  const head = options.interrupted ? "interrupted: " : "";
  lines.push(`${head}${succeeded} of ${total} input${total === 1 ? "" : "s"} succeeded, ${failed.length} failed${notRun.length > 0 ? `, ${notRun.length} not run` : ""} in ${formatDuration(options.seconds)}${rate}`);

  if (summary.topics.length > 0) {
    lines.push("");
    const rows = [["topic", "files", "rows", "bytes", "output"], ...summary.topics.map((t) => [t.topic, String(t.files), formatCount(t.rows), t.bytes === null ? "-" : formatBytes(t.bytes), t.location])];
    const widths = rows[0]!.map((_, col) => Math.max(...rows.map((r) => r[col]!.length)));
    for (const row of rows) lines.push(`  ${row.map((cell, col) => (col === row.length - 1 ? cell : cell.padEnd(widths[col]!))).join("  ")}`.trimEnd());
  }

  for (const [topic, rows] of summary.unrouted) {
    lines.push("", `warning: ${formatCount(rows)} rows were published to topic "${topic}", which has no sink; they were not written (add --sink ${topic}=URI or list it in MANIFEST["topics"])`);
  }

  if (failed.length > 0) {
    lines.push("", `failed (${failed.length}):`);
    for (const job of failed) {
      // When the plugin itself is at fault the error is printed once, after the summary.
      const reason = options.sharedError === true ? "the plugin's error, shown below" : firstLine(job.error);
      lines.push(`  ${display(job.input.path, options.cwd)}: ${reason}`);
    }
  }
  return `${lines.join("\n")}\n`;
}
