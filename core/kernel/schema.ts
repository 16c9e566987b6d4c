/**
 * How the worker reads a valibot schema's verdict: every issue becomes a problem a person
 * can act on, the path of the bad value (`sinks[0].mode`), what was expected, what was
 * given, and a hint where there is one. Wire payloads, the config file and sink options
 * all report through here, so their errors read alike.
 *
 * A schema may give its own wording with `expected("a positive number of seconds")`;
 * anything without one is worded from the issue (`expected an integer, got number 1.5`).
 */
import * as v from "valibot";

export interface SchemaProblem {
  /** Where the bad value is, from the document's root: `bridge.idleTimeout`, `sinks[0].mode`. */
  readonly path: string;
  /** "expected …, got …", "required field is missing" or "unknown key". */
  readonly message: string;
  readonly hint?: string;
}

export type Checked<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly problems: readonly SchemaProblem[] };

type Issue = v.BaseIssue<unknown>;

// A message function can only return text; the hint it has for the same issue waits here.
const hints = new WeakMap<Issue, string>();

/** The value as an error message shows it: `"x"`, `number 1.5`, `an array`, `null`. */
export function describeValue(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "function") return "a function";
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (typeof value === "object") return "an object";
  if (typeof value === "bigint") return value.toString();
  return `${typeof value} ${String(value)}`;
}

/** A schema's or action's message: `expected <what>, got <the value>`, with a hint to the fix when given. */
export function expected(what: string, hint?: string): (issue: Issue) => string {
  return (issue) => {
    if (hint !== undefined) hints.set(issue, hint);
    return structuralMessage(issue) ?? `expected ${what}, got ${describeValue(issue.input)}`;
  };
}

/** v.object that also refuses arrays (valibot takes any non-null object), with `what` in its messages. */
export function object<const E extends v.ObjectEntries>(entries: E, what = "an object") {
  return v.pipe(v.custom<v.InferInput<v.ObjectSchema<E, undefined>>>(isNonArrayObject, expected(what)), v.object(entries, expected(what)));
}

/** As `object`, and a key not in `entries` is an error, with a did-you-mean among them. */
export function strictObject<const E extends v.ObjectEntries>(entries: E, what = "an object") {
  const known = Object.keys(entries);
  const strict = v.strictObject(entries, (issue) => {
    if (isUnknownKey(issue)) hints.set(issue, unknownKeyHint(lastKey(issue), known));
    return expected(what)(issue);
  });
  return v.pipe(v.custom<v.InferInput<v.ObjectSchema<E, undefined>>>(isNonArrayObject, expected(what)), strict);
}

/** An object that is neither null nor an array (class instances included). */
export function isNonArrayObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A whole number above 0 (row counts, sizes in bytes). */
export function positiveInteger(what = "a positive integer") {
  const message = expected(what);
  return v.pipe(v.number(message), v.safeInteger(message), v.minValue(1, message));
}

/** A whole number, 0 or more. */
export function nonNegativeInteger(what = "an integer >= 0") {
  const message = expected(what);
  return v.pipe(v.number(message), v.safeInteger(message), v.minValue(0, message));
}

/** Check `value`; the output (defaults filled, transforms applied) or every problem found. */
export function check<S extends v.GenericSchema>(schema: S, value: unknown, rootName: string): Checked<v.InferOutput<S>> {
  const result = v.safeParse(schema, value, { message: fallbackMessage });
  if (result.success) return { ok: true, value: result.output };
  return { ok: false, problems: result.issues.map((issue) => toProblem(issue, rootName)) };
}

/** `path: message`, one problem; the message alone when the problem is the whole value (path ""). */
export function problemText(problem: SchemaProblem): string {
  return problem.path === "" ? problem.message : `${problem.path}: ${problem.message}`;
}

/** The hint for a key nobody declared: the closest known key, or the list of them. */
export function unknownKeyHint(key: string, known: readonly string[]): string {
  const best = known
    .map((candidate) => ({ candidate, distance: editDistance(key.toLowerCase(), candidate.toLowerCase()) }))
    .sort((a, b) => a.distance - b.distance)[0];
  if (best && best.distance <= Math.max(2, Math.floor(key.length / 3))) return `did you mean "${best.candidate}" instead of "${key}"?`;
  return `"${key}" is not a known key; known keys: ${known.join(", ") || "none"}`;
}

/**
 * A schema that checks `schema`'s shape and claims the type T: for values with functions
 * (a sink plugin, a tap), whose signatures no runtime check can see.
 */
export function claiming<T>(schema: v.GenericSchema): v.GenericSchema<T> {
  return schema as v.GenericSchema<T>;
}

function toProblem(issue: Issue, rootName: string): SchemaProblem {
  const hint = hints.get(issue);
  return { path: pathOf(issue, rootName), message: issue.message, ...(hint === undefined ? {} : { hint }) };
}

function pathOf(issue: Issue, rootName: string): string {
  let path = "";
  for (const item of issue.path ?? []) {
    const key = item.key;
    if (typeof key === "number") path += `[${key}]`;
    else path += path === "" ? String(key) : `.${String(key)}`;
  }
  return path === "" ? rootName : path;
}

const OBJECT_TYPES = new Set(["object", "strict_object", "loose_object"]);

function isUnknownKey(issue: Issue): boolean {
  return issue.type === "strict_object" && issue.expected === "never";
}

/** Object issues that are about a key rather than a value. */
function structuralMessage(issue: Issue): string | undefined {
  if (isUnknownKey(issue)) return "unknown key";
  // valibot reports a missing key as the object's issue, expecting the key's name.
  if (OBJECT_TYPES.has(issue.type) && issue.input === undefined && issue.path !== undefined && issue.expected?.startsWith('"')) {
    return "required field is missing";
  }
  return undefined;
}

function lastKey(issue: Issue): string {
  return String(issue.path?.at(-1)?.key ?? "");
}

/** Wording for issues whose schema gave none. */
function fallbackMessage(issue: Issue): string {
  return structuralMessage(issue) ?? `expected ${expectation(issue)}, got ${describeValue(issue.input)}`;
}

function expectation(issue: Issue): string {
  switch (issue.type) {
    case "string":
      return "a string";
    case "number":
      return "a number";
    case "boolean":
      return "true or false";
    case "bigint":
    case "integer":
    case "safe_integer":
      return "an integer";
    case "object":
    case "strict_object":
    case "loose_object":
    case "record":
      return "an object";
    case "array":
    case "tuple":
      return "an array";
    case "function":
      return "a function";
    case "picklist":
    case "enum":
    case "literal":
    case "union":
    case "variant":
      return oneOf(issue.expected);
    case "min_value":
    case "max_value":
    case "gt_value":
    case "lt_value":
      return `a value ${issue.expected ?? ""}`.trim();
    case "min_length":
    case "max_length":
    case "length":
      return `a length ${issue.expected ?? ""}`.trim();
    case "non_empty":
      return "a non-empty value";
    case "finite":
      return "a finite number";
    case "url":
      return "a URL";
    default:
      return issue.expected ?? `a valid value (${issue.type.replace(/_/g, " ")})`;
  }
}

/** valibot writes choices as `("a" | "b")`; people read `one of "a", "b"`. */
function oneOf(choices: string | null): string {
  if (choices === null) return "one of the allowed values";
  const options = choices.replace(/^\((.*)\)$/, "$1").split(" | ");
  return options.length === 1 ? options[0]! : `one of ${options.join(", ")}`;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}
