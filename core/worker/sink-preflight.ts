/**
 * What a worker would do with a set of sink configs, checked without a job: the sink
 * modules of the config load (a broken one fails with its own error), every URI
 * parses, its scheme has a sink (else the known schemes are listed), the sink's options
 * schema accepts the URI's options, the sink accepts its location (`SinkPlugin.checkTarget`), and its mode fits its URI. `casparian run`
 * calls this before any worker starts; `casparian validate` calls little else.
 */
import type { CasparianConfig } from "../config/config.js";
import { Errors } from "../kernel/errors.js";
import { ANY_TOPIC, INPUT_PLACEHOLDER, TOPIC_PLACEHOLDER, type SinkConfig } from "../protocol/messages.js";
import { loadSinkPlugins, type LoadedSink } from "../pipeline/sink-loader.js";
import type { SinkTarget } from "../../sinks/api.js";
import { parseSchemaDef } from "../../sinks/contract.js";
import { targetOptions } from "../../sinks/options.js";
import { parseSinkUri } from "../../sinks/uri.js";

export interface SinkToCheck extends SinkConfig {
  /** How to name the sink to a person: `output=sqlite://x.db/t (from --sink)`. */
  readonly label: string;
}

/** Names that stand for any input and any topic when a URI is checked. */
const SAMPLE_INPUT = "data/input.csv";
const SAMPLE_TOPIC = "output";

export async function checkSinkPlan(sinks: readonly SinkToCheck[], options: { config: CasparianConfig; configDir: string; outputRoot: string }): Promise<void> {
  const loaded = await loadSinkPlugins(options.config.sinks, options.configDir, options.config.parquet);
  try {
    for (const sink of sinks) await checkOne(sink, loaded, options.outputRoot);
  } finally {
    await Promise.allSettled(loaded.map(({ plugin }) => plugin.close?.()));
  }
}

async function checkOne(sink: SinkToCheck, loaded: readonly LoadedSink[], outputRoot: string): Promise<void> {
  const topic = sink.topic === ANY_TOPIC ? SAMPLE_TOPIC : sink.topic;
  const uri = sink.uri.split(INPUT_PLACEHOLDER).join(SAMPLE_INPUT).split(TOPIC_PLACEHOLDER).join(topic);
  const context = { sinkUri: sink.uri, topic: sink.topic };
  const parsed = parseSinkUri(uri);
  const entry = loaded.find(({ plugin }) => plugin.schemes.some((s) => s.toLowerCase() === parsed.scheme));
  if (entry === undefined) {
    const known = loaded.flatMap(({ plugin }) => plugin.schemes.map((s) => `${s}://`)).join(", ");
    throw Errors.SINK_UNKNOWN_SCHEME([sink.label, known], { context });
  }
  if (sink.mode !== "append" && !sink.uri.includes(INPUT_PLACEHOLDER) && entry.plugin.inputScopedModes !== true) {
    const consequence = sink.mode === "replace" ? "each input would replace the rows of the others" : "every input but the first would fail";
    throw Errors.RUN_SINK_MODE([sink.label, sink.mode, `the ${entry.plugin.name} sink writes ${sink.uri} as one target for every input, so ${consequence}`], {
      context,
      hint: `put ${INPUT_PLACEHOLDER} in the URI for one target per input (e.g. ${withInput(sink.uri)}), or use mode append`,
    });
  }
  const contract = parseSchemaDef(topic, sink.schema_def, { jobId: 0n, sinkUri: sink.uri });
  const config = { topic, uri, mode: sink.mode, schemaDef: sink.schema_def };
  const target: SinkTarget = Object.freeze({ topic, uri, parsed, mode: sink.mode, contract, config });
  const options = targetOptions(entry.plugin, entry.options, { uri, parsed });
  await entry.plugin.checkTarget?.(target, { outputRoot, options });
}

/** `parquet://all/sales.parquet?x=1` → `parquet://all/sales/{input}.parquet?x=1`. */
function withInput(uri: string): string {
  const match = /^([A-Za-z][A-Za-z0-9+.-]*:\/\/)([^?]*?)(\.[A-Za-z0-9]+)?(\?.*)?$/.exec(uri);
  if (match === null) return `parquet://sales/${INPUT_PLACEHOLDER}.parquet`;
  const [, scheme, path, ext, query] = match;
  return `${scheme}${path}/${INPUT_PLACEHOLDER}${ext ?? ""}${query ?? ""}`;
}
