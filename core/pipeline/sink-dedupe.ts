/**
 * One DISPATCH may list the same sink more than once: upstream's long-running Python
 * Sentinel appends its whole sink table again on every DEPLOY and RELOAD. Opening both
 * copies makes two writers race for one staging file. So identical SinkSpecs are one
 * sink; the same target listed with different settings (topic, mode, schema_def) cannot
 * be honoured and fails the job before anything is opened.
 *
 * "Same target" compares URIs after normalising what cannot change the target: the
 * scheme's case, `./` and `//` in the location, and the order of query parameters.
 */
import { posix } from "node:path";
import { Errors } from "../kernel/errors.js";
import type { SinkSpec } from "../kernel/job.js";
import { parseSinkUri } from "../../sinks/uri.js";

export interface DedupedSinks {
  sinks: SinkSpec[];
  /** How many entries were dropped as exact repeats. */
  repeats: number;
}

export function dedupeSinkSpecs(configs: readonly SinkSpec[]): DedupedSinks {
  const byTarget = new Map<string, SinkSpec>();
  const sinks: SinkSpec[] = [];
  let repeats = 0;
  for (const config of configs) {
    const key = targetKey(config.uri);
    const seen = byTarget.get(key);
    if (seen === undefined) {
      byTarget.set(key, config);
      sinks.push(config);
      continue;
    }
    const differences = settingDifferences(seen, config);
    if (differences.length > 0) {
      throw Errors.SINK_DUPLICATE_CONFLICT([JSON.stringify(config.uri), differences.join("; ")], { context: { sinkUri: config.uri, topic: config.topic } });
    }
    repeats++;
  }
  return { sinks, repeats };
}

function targetKey(uri: string): string {
  let parsed;
  try {
    parsed = parseSinkUri(uri);
  } catch {
    // An unparseable URI fails later with its own error; here it only has to equal itself.
    return `raw:${uri}`;
  }
  const location = parsed.location === "" ? "" : posix.normalize(parsed.location).replace(/\/+$/, "");
  const params = [...parsed.params.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `${parsed.scheme}://${location}?${new URLSearchParams(params).toString()}`;
}

function settingDifferences(a: SinkSpec, b: SinkSpec): string[] {
  const out: string[] = [];
  if (a.topic !== b.topic) out.push(`topic ${JSON.stringify(a.topic)} vs ${JSON.stringify(b.topic)}`);
  if ((a.mode ?? "append") !== (b.mode ?? "append")) out.push(`mode ${JSON.stringify(a.mode)} vs ${JSON.stringify(b.mode)}`);
  if ((a.schemaDef ?? null) !== (b.schemaDef ?? null)) out.push("different schema_def");
  return out;
}
