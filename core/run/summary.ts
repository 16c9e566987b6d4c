/**
 * The end-of-run report: how many inputs succeeded, failed, were unchanged (skipped)
 * or declined; per topic what the output holds now (files, rows, bytes, where: from
 * the run state, so a topic directory read as one table has exactly these rows); then
 * each failed input with the first line of its error. Plain text for stdout.
 */
import { isAbsolute, join, relative, sep } from "node:path";
import type { JobRecord } from "./scheduler.js";
import type { TopicTotals } from "./state.js";
import { formatBytes, formatCount, formatDuration } from "./progress.js";

export interface TopicSummary {
  topic: string;
  files: number;
  rows: number;
  /** Null when no output of the topic is a local file (a database table). */
  bytes: number | null;
  /** The topic's directories under the output, else its sink URIs. */
  location: string;
}

export interface RunSummary {
  /** Inputs given (after expansion). */
  total: number;
  succeeded: number;
  unchanged: number;
  failed: JobRecord[];
  /** Declined by a beforeDispatch tap of the worker. */
  skipped: JobRecord[];
  notRun: JobRecord[];
  topics: TopicSummary[];
  /** Rows the plugin published that no sink kept, per topic. */
  unrouted: Map<string, number>;
  /** Per topic, values that did not fit their column and became null (on_bad_value="null"). */
  nulled: Map<string, number>;
}

/** The guest's count of values turned into nulls, per topic (receipt metric). */
const NULLED_PREFIX = "guest.nulled_values.";

export function summarize(jobs: readonly JobRecord[], options: { unchanged: number; totals: readonly TopicTotals[]; outputRoot: string }): RunSummary {
  const unrouted = new Map<string, number>();
  const nulled = new Map<string, number>();
  for (const job of jobs) {
    if (job.state !== "succeeded") continue;
    const metrics = job.receipt?.metrics ?? {};
    for (const [name, value] of Object.entries(metrics)) {
      if (name.startsWith(NULLED_PREFIX) && Number(value) > 0) {
        const topic = name.slice(NULLED_PREFIX.length);
        nulled.set(topic, (nulled.get(topic) ?? 0) + Number(value));
      }
      if (!name.startsWith("rows.")) continue;
      const topic = name.slice("rows.".length);
      const lost = Number(value) - Number(metrics[`sink_rows.${topic}`] ?? 0);
      if (lost > 0) unrouted.set(topic, (unrouted.get(topic) ?? 0) + lost);
    }
  }
  return {
    total: jobs.length + options.unchanged,
    succeeded: jobs.filter((j) => j.state === "succeeded").length,
    unchanged: options.unchanged,
    failed: jobs.filter((j) => j.state === "failed"),
    skipped: jobs.filter((j) => j.state === "skipped"),
    notRun: jobs.filter((j) => j.state === "not-run"),
    unrouted,
    nulled,
    topics: options.totals.map((t) => ({
      topic: t.topic,
      files: t.files,
      rows: t.rows,
      bytes: t.bytes,
      location: [...t.dirs.map((d) => `${join(options.outputRoot, d)}${sep}`), ...t.uris].join(", "),
    })),
  };
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
  const line =
    (message ?? "unknown error")
      .split("\n")
      .map((l) => l.trim())
      .find((l) => l !== "") ?? "unknown error";
  return line.replace(/^CSP_GUEST_FAILED: Guest process error: /, "");
}

export function renderSummary(summary: RunSummary, options: { seconds: number; interrupted: boolean; cwd: string; sharedError?: boolean }): string {
  const lines: string[] = [];
  const { total, succeeded, failed, notRun, skipped, unchanged } = summary;
  const rate = options.seconds > 0 && succeeded > 0 ? ` (${(succeeded / options.seconds).toFixed(1)} files/s)` : "";
  const head = options.interrupted ? "interrupted: " : "";
  const ran = total - unchanged;
  const parts =
    ran === 0 && !options.interrupted
      ? ["nothing to do"]
      : [`${head}${succeeded} of ${total} input${total === 1 ? "" : "s"} succeeded`, `${failed.length} failed`];
  if (unchanged > 0) parts.push(`${unchanged} unchanged, skipped`);
  if (skipped.length > 0) parts.push(`${skipped.length} declined, skipped`);
  if (notRun.length > 0) parts.push(`${notRun.length} not run`);
  lines.push(ran === 0 ? `${parts.join(": ")}` : `${parts.join(", ")} in ${formatDuration(options.seconds)}${rate}`);

  if (summary.topics.length > 0) {
    lines.push("", "in the output now:");
    const rows = [
      ["topic", "files", "rows", "bytes", "output"],
      ...summary.topics.map((t) => [
        t.topic,
        t.files === 0 ? "-" : String(t.files),
        formatCount(t.rows),
        t.bytes === null ? "-" : formatBytes(t.bytes),
        displayLocation(t.location, options.cwd),
      ]),
    ];
    const widths = rows[0]!.map((_, col) => Math.max(...rows.map((r) => r[col]!.length)));
    for (const row of rows) lines.push(`  ${row.map((cell, col) => (col === row.length - 1 ? cell : cell.padEnd(widths[col]!))).join("  ")}`.trimEnd());
  }

  for (const [topic, rows] of summary.unrouted) {
    lines.push("", `warning: ${formatCount(rows)} rows published to topic "${topic}" were not written by any sink (see the worker logs)`);
  }

  if (skipped.length > 0) {
    lines.push("", `declined by a worker plugin (${skipped.length}):`);
    for (const job of skipped) lines.push(`  ${display(job.input.path, options.cwd)}: ${firstLine(job.error).replace(/^CSP_HOOK_REJECTED: /, "")}`);
  }
  for (const [topic, count] of summary.nulled) {
    lines.push(
      "",
      `note: ${formatCount(count)} value${count === 1 ? "" : "s"} of topic "${topic}" did not fit their column and became null (on_bad_value="null")`,
    );
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

function displayLocation(location: string, cwd: string): string {
  return location
    .split(", ")
    .map((part) => (part.startsWith("/") ? display(part.replace(/\/$/, ""), cwd) + (part.endsWith("/") ? "/" : "") : part))
    .join(", ");
}
