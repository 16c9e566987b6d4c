/**
 * Slot users: the unprivileged uid and gid a worker's guests run as, one per job slot.
 *
 * A worker runs one job at a time, so a worker process is one job slot. When it runs as
 * root (or is given `bridge.user` / `bridge.users`), it claims one uid for its lifetime,
 * and every guest it starts runs as that uid, in a job directory (socket, plugin source,
 * scratch) owned by that uid with mode 0700: a plugin in another slot, running as another
 * uid, can neither connect to the socket nor read or list the directory. The worker keeps
 * access because it is root.
 *
 * Claiming: each candidate uid is claimed by binding the abstract Unix socket
 * `casparian-slot-user-<uid>` (Linux). The kernel lets one process hold it and frees it
 * when that process dies, however it dies, so two workers on a host never share a uid
 * and a crashed worker's uid is free again. Before use, every process still running as
 * the claimed uid (a daemon left by a crashed worker's plugin) is killed, so nothing that
 * ran before can watch this slot's jobs. Uids of the default range that have an account
 * (getent passwd) are skipped: they belong to someone.
 *
 * Numeric uids need no /etc/passwd entry; the gid is the uid's own number unless a named
 * account gives its primary group. Supplementary groups are dropped at spawn (libuv).
 */
import { stat } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { dirname, sep } from "node:path";
import { realpath } from "node:fs/promises";
import { Errors } from "../kernel/errors.js";
import { runCommand } from "../kernel/process.js";
import type { Logger } from "../kernel/logger.js";

/** The identity a slot's guests run as. */
export interface SlotUser {
  uid: number;
  gid: number;
  /**
   * True when isolation was asked for (bridge.user/users): a job that cannot run as this
   * user fails. False for root's default: such a job runs as the worker, with a warning.
   */
  required: boolean;
}

export type UserSpec = number | string;

export interface SlotUserOptions {
  /** One user for this worker's slot (a uid or an account name); false: guests run as the worker. */
  user?: UserSpec | false;
  /** A pool: the worker claims the first uid no other worker on the host holds. */
  users?: { from: number; count: number } | readonly UserSpec[];
  logger: Logger;
}

export interface SlotClaim extends SlotUser {
  release(): Promise<void>;
}

/** Root's default pool when nothing is configured: below systemd's dynamic users (61184-65519). */
export const DEFAULT_SLOT_UIDS = { from: 61000, count: 184 } as const;

/**
 * The slot user this worker's guests run as, or null when they run as the worker (not
 * root and nothing configured, or `user: false`). Throws when isolation was asked for and
 * cannot be had.
 */
export async function claimSlotUser(options: SlotUserOptions): Promise<SlotClaim | null> {
  const { user, users, logger } = options;
  if (user === false) return null;
  const configured = user !== undefined || users !== undefined;
  const isRoot = process.geteuid?.() === 0;
  if (!isRoot) {
    if (configured) throw Errors.SLOT_USER_NEEDS_ROOT([process.geteuid?.() ?? "unknown"]);
    return null;
  }
  if (process.platform !== "linux") {
    if (configured) throw Errors.SLOT_USER_UNSUPPORTED([process.platform]);
    return null;
  }
  const explicit = user !== undefined ? [user] : Array.isArray(users) ? (users as readonly UserSpec[]) : undefined;
  const range = explicit ? undefined : ((users as { from: number; count: number } | undefined) ?? DEFAULT_SLOT_UIDS);
  const candidates: Array<() => Promise<{ uid: number; gid: number } | null>> = explicit
    ? explicit.map((spec) => () => resolveUser(spec))
    : Array.from({ length: range!.count }, (_, i) => () => unassigned(range!.from + i));

  for (const candidate of candidates) {
    const ids = await candidate();
    if (!ids) continue;
    const lock = await tryLock(ids.uid);
    if (!lock) continue;
    await killEverythingOf(ids);
    logger.info({ uid: ids.uid, gid: ids.gid }, "guests run as this slot's own user");
    return { ...ids, required: configured, release: () => new Promise<void>((resolve) => lock.close(() => resolve())) };
  }
  const asked = explicit ? explicit.join(", ") : `${range!.from}-${range!.from + range!.count - 1}`;
  throw Errors.SLOT_USERS_EXHAUSTED([asked]);
}

/** A configured user: a uid (gid = the same number) or an account name (its uid and primary gid). */
async function resolveUser(spec: UserSpec): Promise<{ uid: number; gid: number }> {
  let ids: { uid: number; gid: number };
  if (typeof spec === "number") ids = { uid: spec, gid: spec };
  else if (/^\d+$/.test(spec)) ids = { uid: Number(spec), gid: Number(spec) };
  else {
    const entry = await getent(spec);
    if (!entry) throw Errors.SLOT_USER_UNKNOWN([spec]);
    ids = entry;
  }
  if (!Number.isSafeInteger(ids.uid) || ids.uid <= 0 || ids.uid >= 2 ** 32 - 1 || ids.gid <= 0) throw Errors.SLOT_USER_UNKNOWN([String(spec)]);
  return ids;
}

/** A uid of the default range, unless an account has it. */
async function unassigned(uid: number): Promise<{ uid: number; gid: number } | null> {
  return (await getent(String(uid))) ? null : { uid, gid: uid };
}

async function getent(key: string): Promise<{ uid: number; gid: number } | null> {
  const result = await runCommand("getent", ["passwd", key], { env: { PATH: process.env.PATH ?? "/usr/bin:/bin" }, timeoutMs: 10_000 });
  if (!result.ok) return null;
  const fields = result.stdout.split(":");
  return { uid: Number(fields[2]), gid: Number(fields[3]) };
}

/** Hold the host-wide claim on `uid` (null when another process holds it). */
function tryLock(uid: number): Promise<Server | null> {
  return new Promise((resolve) => {
    const server = createServer((socket) => socket.destroy());
    server.once("error", () => resolve(null));
    server.listen(`\0casparian-slot-user-${uid}`, () => {
      server.unref(); // the claim must not keep the worker alive
      resolve(server);
    });
  });
}

/** SIGKILL every process running as `ids.uid`: kill(-1) from that uid reaches all of them (and not itself). */
async function killEverythingOf(ids: { uid: number; gid: number }): Promise<void> {
  await runCommand("/bin/sh", ["-c", "kill -KILL -1 2>/dev/null; exit 0"], { uid: ids.uid, gid: ids.gid, env: {}, cwd: "/", timeoutMs: 10_000 });
}

/** What access a path needs for the slot user. */
export type Access = "x" | "r" | "rx" | "rwx";

/**
 * Why `user` cannot use each of `paths` as needed, or null when it can: every directory on
 * the way must be searchable, the path itself readable (and executable / writable as
 * asked), following symlinks. Mode bits only (owner, group = the user's gid, others).
 */
export async function unreachableFor(user: { uid: number; gid: number }, paths: ReadonlyArray<{ path: string; need: Access }>): Promise<string | null> {
  for (const { path, need } of paths) {
    let real: string;
    try {
      real = await realpath(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") continue; // the guest reports a missing file itself
      return `${path}: ${(err as Error).message}`;
    }
    for (const walked of new Set([path, real])) {
      for (const dir of ancestors(walked)) {
        const key = `${user.uid}:${user.gid}:${dir}`;
        if ((searchable.get(key) ?? 0) > Date.now()) continue;
        const problem = await lacks(user, dir, "x");
        if (problem) return `${problem} (on the way to ${path})`;
        if (searchable.size >= MAX_SEARCHABLE) searchable.clear();
        searchable.set(key, Date.now() + SEARCHABLE_TTL_MS);
      }
    }
    const problem = await lacks(user, real, need);
    if (problem) return real === path ? problem : `${problem} (${path} links there)`;
  }
  return null;
}

/**
 * Directories seen searchable by a uid, until when: every job's input lies below the same few
 * directories, and a stat each per job is a thread-pool round trip each. A directory made
 * unsearchable since is then found by the guest itself (its open fails), a few seconds at most.
 */
const searchable = new Map<string, number>();
const SEARCHABLE_TTL_MS = 5_000;
const MAX_SEARCHABLE = 4096;

function ancestors(path: string): string[] {
  const dirs: string[] = [];
  for (let dir = dirname(path); ; dir = dirname(dir)) {
    dirs.unshift(dir);
    if (dir === dirname(dir) || dir === sep) break;
  }
  return dirs;
}

async function lacks(user: { uid: number; gid: number }, path: string, need: Access): Promise<string | null> {
  let info;
  try {
    info = await stat(path);
  } catch (err) {
    return `${path}: ${(err as Error).message}`;
  }
  const shift = info.uid === user.uid ? 6 : info.gid === user.gid ? 3 : 0;
  const bits = (info.mode >> shift) & 0o7;
  const wanted = (need.includes("r") ? 4 : 0) | (need.includes("w") ? 2 : 0) | (need.includes("x") ? 1 : 0);
  if ((bits & wanted) === wanted) return null;
  const mode = (info.mode & 0o777).toString(8).padStart(3, "0");
  return `${path} (mode ${mode}, owner ${info.uid}:${info.gid}) is not ${describeNeed(need)} for uid ${user.uid}`;
}

function describeNeed(need: Access): string {
  return need === "x" ? "searchable" : need === "r" ? "readable" : need === "rx" ? "readable and executable" : "writable";
}
