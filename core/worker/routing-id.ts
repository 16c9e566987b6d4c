/**
 * The DEALER's ZeroMQ routing id. Without one, ZeroMQ makes up five binary bytes
 * (`00 6b 8b 45 67`), and upstream's Python Sentinel decodes the routing id as UTF-8
 * while reading IDENTIFY: it drops the IDENTIFY and never dispatches to the worker.
 *
 * So: printable ASCII, never starting with a zero byte, at most 255 bytes (ZeroMQ's
 * limit), and unique per process. Unique because a ROUTER refuses a second peer with
 * a routing id it already has, and two workers may share a worker id (one home).
 */
import { randomBytes } from "node:crypto";

const MAX_BYTES = 255;
const SAFE = /[^A-Za-z0-9._:-]/g;

export function routingIdFor(workerId: string, pid = process.pid): string {
  const suffix = `.${pid}.${randomBytes(4).toString("hex")}`;
  const base = workerId.replace(SAFE, "_").slice(0, MAX_BYTES - suffix.length - 1) || "worker";
  return `${base}${suffix}`;
}
