/**
 * What a sink plugin object must look like, checked when it is registered (in the config
 * file and by the sink loader): the runtime side of SinkPlugin (api.ts), whose function
 * signatures only the type can state.
 */
import * as v from "valibot";
import { claiming, expected, isNonArrayObject } from "../core/kernel/schema.js";
import type { SinkOptionsSchema, SinkPlugin } from "./api.js";

const SCHEME_PATTERN = /^[a-z][a-z0-9+.-]*$/;
const OPTIONS_SCHEMA_TYPES = ["object", "strict_object", "loose_object"];

/** A valibot object schema, as SinkPlugin.options must be. */
export function isOptionsSchema(value: unknown): value is SinkOptionsSchema {
  return isNonArrayObject(value) && value.kind === "schema" && OPTIONS_SCHEMA_TYPES.includes(String(value.type)) && isNonArrayObject(value.entries);
}

const nonEmptyName = expected("a non-empty string");
const schemeText = expected('a lower-case URI scheme (give "jsonl", not "jsonl://")');
const schemesText = expected("a non-empty array of URI schemes");
const optionalFunction = v.optional(v.function(expected("a function when given")));

/** uriOptions that the options schema does not declare. */
function undeclaredUriOptions(plugin: { options?: unknown; uriOptions?: unknown }): unknown[] {
  const declared = isOptionsSchema(plugin.options) ? Object.keys(plugin.options.entries) : [];
  return Array.isArray(plugin.uriOptions) ? plugin.uriOptions.filter((key) => !declared.includes(key)) : [];
}

export const sinkPluginShape = claiming<SinkPlugin>(
  v.pipe(
    v.custom<Record<string, unknown>>(isNonArrayObject, expected("a sink plugin object")),
    v.looseObject({
      name: v.pipe(
        v.string(nonEmptyName),
        v.check((name) => name.trim() !== "", nonEmptyName),
      ),
      schemes: v.pipe(v.array(v.pipe(v.string(schemeText), v.regex(SCHEME_PATTERN, schemeText)), schemesText), v.nonEmpty(schemesText)),
      create: v.function(expected("a function")),
      checkTarget: optionalFunction,
      recover: optionalFunction,
      close: optionalFunction,
      inputScopedModes: v.optional(v.boolean(expected("true or false when given"))),
      usesRetain: v.optional(v.boolean(expected("true or false when given"))),
      options: v.optional(v.custom<SinkOptionsSchema>(isOptionsSchema, expected("a valibot object schema, e.g. v.object({ ... })"))),
      uriOptions: v.optional(v.array(v.string(expected("an option name")), expected("an array of option names"))),
    }),
    v.forward(
      v.check(
        (plugin) => undeclaredUriOptions(plugin).length === 0,
        (issue) =>
          `expected names the options schema declares, got ${undeclaredUriOptions(issue.input as object)
            .map((key) => JSON.stringify(key))
            .join(", ")}`,
      ),
      ["uriOptions"],
    ),
  ),
);
