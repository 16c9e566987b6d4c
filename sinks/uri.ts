/**
 * Sink URIs: `scheme://location?key=value`. Parsing is deliberately not WHATWG URL:
 * `parquet://sales/2024.parquet` would make "sales" a host there, and the location
 * of a sink is a path, not a host.
 */
import { isAbsolute, relative, resolve, sep } from "node:path";
import { Errors } from "../core/kernel/errors.js";
import type { ParsedSinkUri } from "./api.js";

const URI_PATTERN = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^?#]*)(?:\?([^#]*))?$/;

export function parseSinkUri(uri: string): ParsedSinkUri {
  const match = URI_PATTERN.exec(uri);
  if (match === null) {
    throw Errors.SINK_BAD_URI([JSON.stringify(uri), "expected scheme://location[?key=value&...]"], { context: { sinkUri: uri } });
  }
  let location: string;
  try {
    location = decodeURIComponent(match[2]!);
  } catch {
    throw Errors.SINK_BAD_URI([JSON.stringify(uri), "the location has a malformed percent-escape"], { context: { sinkUri: uri } });
  }
  return { scheme: match[1]!.toLowerCase(), location, params: new URLSearchParams(match[3] ?? "") };
}

/**
 * The absolute path of `relativePath` under `root`. Absolute paths and paths that
 * leave the root (`..`) are refused: a Sentinel must not be able to make a worker
 * write anywhere on its host.
 */
export function resolveInsideRoot(root: string, relativePath: string, uri: string): string {
  const absoluteRoot = resolve(root);
  if (relativePath === "" || relativePath.endsWith("/")) {
    throw Errors.SINK_BAD_URI([JSON.stringify(uri), "the location must name a file"], { context: { sinkUri: uri } });
  }
  if (isAbsolute(relativePath) || relativePath.includes("\0")) {
    throw Errors.SINK_PATH_ESCAPE([uri, absoluteRoot], { context: { sinkUri: uri }, hint: "absolute paths are refused; use a path relative to --output" });
  }
  const target = resolve(absoluteRoot, relativePath);
  const rel = relative(absoluteRoot, target);
  if (rel === "" || rel === ".." || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
    throw Errors.SINK_PATH_ESCAPE([uri, absoluteRoot], { context: { sinkUri: uri } });
  }
  return target;
}

/** Reads an optional positive integer query parameter, with the URI in the error. */
export function positiveIntParam(parsed: ParsedSinkUri, name: string, uri: string): number | undefined {
  const raw = parsed.params.get(name);
  if (raw === null) return undefined;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value) || value <= 0) {
    throw Errors.SINK_BAD_URI([uri, `${name} must be a positive integer, got ${JSON.stringify(raw)}`], { context: { sinkUri: uri } });
  }
  return value;
}

/** Refuses query parameters a sink does not know: a typo must not be silently ignored. */
export function rejectUnknownParams(parsed: ParsedSinkUri, known: readonly string[], uri: string): void {
  for (const key of parsed.params.keys()) {
    if (!known.includes(key)) {
      throw Errors.SINK_BAD_URI([uri, `unknown parameter "${key}" (known: ${known.join(", ") || "none"})`], { context: { sinkUri: uri } });
    }
  }
}
