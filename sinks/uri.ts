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
