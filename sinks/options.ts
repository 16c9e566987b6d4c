/**
 * A sink's options, checked against the schema it declares (SinkPlugin.options): once when
 * the sink is registered, with its config entry's options, and for each target whose URI
 * sets some (SinkPlugin.uriOptions), with the URI's values over the config's. One schema
 * decides for both, so a value the config file refuses is refused in a URI too, and the
 * other way round.
 */
import { Errors } from "../core/kernel/errors.js";
import { type Checked, check, isNonArrayObject, problemText, type SchemaProblem, unknownKeyHint } from "../core/kernel/schema.js";
import type { ParsedSinkUri, SinkOptions, SinkOptionsSchema, SinkPlugin } from "./api.js";

/**
 * The options a sink gets when its URI sets none: its config entry's, checked.
 * Throws CSP_SINK_BAD_OPTIONS naming the sink (`label`), each bad option, its value and a hint.
 */
export function checkSinkOptions(plugin: SinkPlugin, given: unknown, label: string): SinkOptions {
  const checked = optionsOf(plugin, given);
  if (checked.ok) return checked.value;
  throw badOptions(plugin, checked.problems, label);
}

/**
 * The options of one target: the config entry's (`given`), with the values of the URI's
 * query over them for the plugin's `uriOptions`. A query parameter the sink does not take,
 * or a value its schema refuses, is CSP_SINK_BAD_URI.
 */
export function targetOptions(plugin: SinkPlugin, given: SinkOptions, target: { uri: string; parsed: ParsedSinkUri }, jobId?: bigint): SinkOptions {
  const fromUri = plugin.uriOptions === undefined ? {} : queryOptions(plugin, plugin.uriOptions, target, jobId);
  const checked = optionsOf(plugin, { ...given, ...fromUri });
  if (checked.ok) return checked.value;
  const inUri = checked.problems.filter((problem) => topKey(problem) in fromUri);
  if (inUri.length === 0) throw badOptions(plugin, checked.problems, `"${plugin.name}"`);
  const text = inUri.map((problem) => problemText({ ...problem, path: queryName(topKey(problem)) + problem.path.slice(topKey(problem).length) }));
  throw Errors.SINK_BAD_URI([target.uri, text.join("; ")], { context: { jobId, sinkUri: target.uri, plugin: plugin.name }, hint: hintOf(plugin, inUri) });
}

/** `rowGroupSize` is written `row_group_size` in a URI's query. */
export function queryName(option: string): string {
  return option.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);
}

function optionsOf(plugin: SinkPlugin, given: unknown): Checked<SinkOptions> {
  if (!isNonArrayObject(given)) return { ok: false, problems: [{ path: "options", message: "expected an object" }] };
  const schema = plugin.options;
  if (schema === undefined) {
    const keys = Object.keys(given);
    if (keys.length === 0) return { ok: true, value: {} };
    return {
      ok: false,
      problems: keys.map((key) => ({ path: key, message: "unknown key", hint: `the ${plugin.name} sink takes no options (it declares no options schema)` })),
    };
  }
  const unknown = schema.type === "loose_object" ? [] : unknownKeys(schema, given);
  const checked = check(schema, given, "options");
  if (checked.ok && unknown.length === 0) return checked;
  // strict_object reports its unknown keys itself: once is enough.
  const problems = checked.ok ? [] : checked.problems.filter((problem) => problem.message !== "unknown key");
  return { ok: false, problems: [...unknown, ...problems] };
}

function unknownKeys(schema: SinkOptionsSchema, given: Record<string, unknown>): SchemaProblem[] {
  const known = Object.keys(schema.entries);
  return Object.keys(given)
    .filter((key) => !known.includes(key))
    .map((key) => ({ path: key, message: "unknown key", hint: unknownKeyHint(key, known) }));
}

function queryOptions(
  plugin: SinkPlugin,
  uriOptions: readonly string[],
  target: { uri: string; parsed: ParsedSinkUri },
  jobId?: bigint,
): Record<string, unknown> {
  const byName = new Map(uriOptions.map((key) => [queryName(key), key]));
  const entries = plugin.options?.entries ?? {};
  const bad = (why: string) => Errors.SINK_BAD_URI([target.uri, why], { context: { jobId, sinkUri: target.uri, plugin: plugin.name } });
  const options: Record<string, unknown> = {};
  for (const [name, text] of target.parsed.params) {
    const key = byName.get(name);
    if (key === undefined) throw bad(`unknown parameter "${name}" (known: ${[...byName.keys()].join(", ") || "none"})`);
    if (key in options) throw bad(`parameter "${name}" is given more than once`);
    options[key] = fromText(entries[key], text);
  }
  return options;
}

const NUMBER = /^-?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;
const INTEGER = /^-?\d+$/;

/** Query text as the option's schema takes it: a number, an integer or a boolean when it reads as one, else the text (which the schema then refuses, naming it). */
function fromText(schema: unknown, text: string): unknown {
  switch (innermostType(schema)) {
    case "number":
      return NUMBER.test(text) ? Number(text) : text;
    case "bigint":
      return INTEGER.test(text) ? BigInt(text) : text;
    case "boolean":
      return text === "true" ? true : text === "false" ? false : text;
    default:
      return text;
  }
}

/** The type under optional / nullable / nullish wrappers; a pipe has its first schema's type. */
function innermostType(schema: unknown): unknown {
  let current = schema;
  while (isNonArrayObject(current) && isNonArrayObject(current.wrapped)) current = current.wrapped;
  return isNonArrayObject(current) ? current.type : undefined;
}

function topKey(problem: SchemaProblem): string {
  return /^[^.[]*/.exec(problem.path)![0];
}

function badOptions(plugin: SinkPlugin, problems: readonly SchemaProblem[], label: string) {
  return Errors.SINK_BAD_OPTIONS([label, problems.map(problemText).join("; ")], {
    context: { plugin: plugin.name, options: problems.map((problem) => problem.path) },
    hint: hintOf(plugin, problems),
  });
}

function hintOf(plugin: SinkPlugin, problems: readonly SchemaProblem[]): string {
  const hints = [...new Set(problems.flatMap((problem) => (problem.hint === undefined ? [] : [problem.hint])))];
  if (hints.length > 0) return hints.join("; ");
  const declared = Object.keys(plugin.options?.entries ?? {});
  return declared.length === 0 ? `the ${plugin.name} sink takes no options` : `the ${plugin.name} sink takes: ${declared.join(", ")} (see its options schema)`;
}
