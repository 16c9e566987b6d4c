/**
 * A job's processes, all of them: the guest and whatever it starts, killed together when the job ends.
 *
 * With a cgroup v2 hierarchy the worker may write to (it is root, or its own cgroup is
 * delegated to it), each job gets a cgroup of its own, `casparian-<worker pid>-<n>` beside
 * nothing but other jobs' under the worker's own cgroup. The host moves the guest in right
 * after starting it, and the guest runs no plugin code before it sees itself there
 * (casparian_guest/confine.py). Nothing started inside can leave: setsid, a double fork, a new
 * process group all stay in, and `cgroup.kill` ends every one of them at once.
 *
 * Without one (no cgroup2 mount, a hierarchy the worker may not write, `bridge.cgroup: false`)
 * the job is its guest's session and process group (the guest leads both), plus every process
 * whose environment still carries the job's marker variable. That misses a process that leaves
 * the session (setsid) and also drops or hides the marker: one that clears its environment, or,
 * when the worker is not root, one forked (not exec'd) from the non-dumpable guest, whose
 * environment the worker may not read. Such a process outlives its job; a cgroup is the fix.
 */
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdir, readdir, readFile, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "../kernel/logger.js";
import { isProcessAlive } from "../kernel/process.js";

/** Set in the guest when it has a cgroup: the guest waits until it is in the cgroup of this name. */
export const JOB_CGROUP_ENV = "CASPARIAN_JOB_CGROUP";
/** Set in the guest when it has none: the job's processes are found by this marker too. */
export const JOB_MARKER_ENV = "CASPARIAN_JOB_MARKER";
const CGROUP_PREFIX = "casparian-";
/** How long the end of a job waits for its killed processes to be gone. */
const KILL_WAIT_MS = 2000;
const POLL_MS = 10;
/** Without a cgroup, processes can fork while we kill: scan again until a scan finds nothing. */
const MAX_KILL_ROUNDS = 20;
/** An emptied cgroup can stay busy a moment (EBUSY) while the kernel finishes its members' exits. */
const RMDIR_ATTEMPTS = 50;

export interface JobScope {
  /** "cgroup": a cgroup of the job's own; "session": the guest's session, process group and marker. */
  readonly kind: "cgroup" | "session";
  /** Variables the guest must get. */
  readonly env: Readonly<Record<string, string>>;
  /**
   * Track `pid`, the guest (leader of its own session and process group). A cgroup scope moves
   * it in (the guest runs no plugin code before it sees itself there). Rejects when the kernel
   * refuses; the guest then never starts the plugin. Adopting a pid twice moves it once.
   *
   * The move is asynchronous (a thread of libuv's pool writes cgroup.procs): the kernel makes a
   * writer of cgroup.procs wait for an RCU grace period, 5-20 ms on a busy machine, which would
   * otherwise stall the worker's event loop. Warm guests move their next child in ahead.
   */
  adopt(pid: number): Promise<void>;
  /** SIGTERM every process of the job: a chance to clean up before killAll. */
  terminate(): void;
  /** SIGKILL every process of the job; resolves once none is left (or after a bounded wait). */
  killAll(): Promise<void>;
  /** killAll, then remove the cgroup. */
  close(): Promise<void>;
  /**
   * Remove the scope itself (the cgroup's directory) once killAll has resolved; a job's teardown
   * does it after the job's answer (job-teardown.ts). Rejects when the kernel refuses or the
   * cgroup stays busy.
   */
  remove(): Promise<void>;
  /** What remove() removes, for logs ("cgroup <path>"); undefined when nothing (a session). */
  readonly removes: string | undefined;
}

/**
 * Where job cgroups go: `dir`, on the cgroup2 hierarchy mounted at `mountPoint`, with or without
 * `favordynmods` (see openJobScope). Or why there are none.
 */
export type CgroupRoot = { dir: string; mountPoint: string; favorDynmods: boolean } | { unavailable: string };
let cgroupRoot: Promise<CgroupRoot> | undefined;
let nextCgroup = 1;

/** Where this process puts job cgroups, or why it has none (looked up once per process). */
export function jobCgroupRoot(): Promise<CgroupRoot> {
  cgroupRoot ??= findCgroupRoot();
  return cgroupRoot;
}

/**
 * The job scope of one run: a cgroup when `useCgroup` and the system allow it, else the
 * session. `onFallback` hears, once per process, why there is no cgroup; `log` hears, once per
 * process, that the hierarchy is mounted without `favordynmods` (what that costs, and the fix).
 */
export async function openJobScope(options: { useCgroup?: boolean | undefined; onFallback?: (reason: string) => void; log?: Logger } = {}): Promise<JobScope> {
  if (options.useCgroup === false) return new SessionScope();
  const root = await jobCgroupRoot();
  if ("unavailable" in root) {
    if (!fallbackReported) options.onFallback?.(root.unavailable);
    fallbackReported = true;
    return new SessionScope();
  }
  if (!root.favorDynmods && options.log && !slowMovesReported) {
    slowMovesReported = true;
    options.log.info({ mount: root.mountPoint, hint: FAVOR_DYNMODS_HINT }, WITHOUT_FAVOR_DYNMODS);
  }
  const dir = join(root.dir, `${CGROUP_PREFIX}${process.pid}-${nextCgroup++}`);
  try {
    await mkdir(dir);
    return new CgroupScope(dir);
  } catch (err) {
    const reason = `cannot create ${dir} (${(err as NodeJS.ErrnoException).code ?? String(err)})`;
    cgroupRoot = Promise.resolve({ unavailable: reason });
    options.onFallback?.(reason);
    fallbackReported = true;
    return new SessionScope();
  }
}
let fallbackReported = false;
let slowMovesReported = false;

const WITHOUT_FAVOR_DYNMODS =
  "the cgroup2 hierarchy is mounted without favordynmods: each move of a job's process into its cgroup waits for an RCU " +
  "grace period (5-20 ms on a busy machine) holding the kernel's cgroup lock, and making or removing another job's cgroup " +
  "waits behind it; warm guests move each job's child in ahead and remove cgroups after the answer, so a job rarely waits, " +
  "but a fresh guest's move is on its job's path";
const FAVOR_DYNMODS_HINT =
  "remount the hierarchy with it (mount -o remount,favordynmods <mount point>, Linux 6.0 or later), or make it the default: " +
  "a kernel built with CONFIG_CGROUP_FAVOR_DYNMODS=y, or booted with cgroup_favordynmods=true (Linux 6.7 or later)";

/** Where this process may create job cgroups: its own cgroup v2 directory, if writable. */
async function findCgroupRoot(): Promise<CgroupRoot> {
  if (process.platform !== "linux") return { unavailable: "cgroups are Linux only" };
  let own: string | undefined;
  let mount: { root: string; point: string; options: string[] } | undefined;
  try {
    own = (await readFile("/proc/self/cgroup", "utf8"))
      .split("\n")
      .find((line) => line.startsWith("0::"))
      ?.slice(3);
    for (const line of (await readFile("/proc/self/mountinfo", "utf8")).split("\n")) {
      const [left, right] = line.split(" - ");
      if (!right?.startsWith("cgroup2 ") || !left) continue;
      const fields = left.split(" ");
      // After the separator: the filesystem type, the source, the superblock's options (favordynmods is one).
      const options = (right.split(" ")[2] ?? "").split(",");
      mount = { root: unescapeMountPath(fields[3] ?? "/"), point: unescapeMountPath(fields[4] ?? ""), options };
      break;
    }
  } catch (err) {
    return { unavailable: `cannot read /proc (${(err as Error).message})` };
  }
  if (!mount) return { unavailable: "no cgroup v2 hierarchy is mounted" };
  if (own === undefined || own.endsWith(" (deleted)")) return { unavailable: "this process is in no cgroup v2 group" };
  if (mount.root !== "/" && own !== mount.root && !own.startsWith(`${mount.root}/`))
    return { unavailable: `the cgroup2 mount at ${mount.point} does not show this process's cgroup ${own}` };
  const dir = join(mount.point, mount.root === "/" ? own : own.slice(mount.root.length));
  if (!existsSync(join(dir, "cgroup.procs"))) return { unavailable: `${dir} is not a cgroup directory` };
  // A probe, named like a job's cgroup, so a worker killed right here leaves nothing behind.
  const probe = join(dir, `${CGROUP_PREFIX}${process.pid}-0`);
  try {
    await mkdir(probe);
    await rmdir(probe);
  } catch (err) {
    return { unavailable: `cannot create cgroups under ${dir} (${(err as NodeJS.ErrnoException).code ?? String(err)})` };
  }
  await sweepStaleCgroups(dir);
  return { dir, mountPoint: mount.point, favorDynmods: mount.options.includes("favordynmods") };
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function unescapeMountPath(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/** Job cgroups of workers that died (SIGKILL skips every cleanup): their processes go, then the cgroups. */
async function sweepStaleCgroups(dir: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    const match = /^casparian-(\d+)-\d+$/.exec(name);
    if (!match || Number(match[1]) === process.pid || isProcessAlive(Number(match[1]))) continue;
    await new CgroupScope(join(dir, name)).close().catch(() => undefined);
  }
}

/** Writes to cgroup.procs under way, of every scope: see CgroupScope.remove. */
const movesInFlight = new Set<Promise<void>>();

class CgroupScope implements JobScope {
  readonly kind = "cgroup";
  readonly env: Record<string, string>;
  readonly removes: string;
  readonly #dir: string;
  readonly #eventsPath: string;
  readonly #adopted = new Map<number, Promise<void>>();
  #closed = false;
  /** Set once killAll found the cgroup empty: nothing of the job is left to start anything. */
  #empty = false;

  constructor(dir: string) {
    this.#dir = dir;
    this.#eventsPath = join(dir, "cgroup.events");
    this.removes = `cgroup ${dir}`;
    this.env = { [JOB_CGROUP_ENV]: dir.slice(dir.lastIndexOf("/") + 1) };
  }

  adopt(pid: number): Promise<void> {
    let moved = this.#adopted.get(pid);
    if (!moved) {
      this.#empty = false;
      const move = writeFile(join(this.#dir, "cgroup.procs"), String(pid));
      movesInFlight.add(move);
      moved = move.finally(() => movesInFlight.delete(move));
      this.#adopted.set(pid, moved);
    }
    return moved;
  }

  terminate(): void {
    void this.#members().then((pids) => {
      for (const pid of pids) signal(pid, "SIGTERM");
    });
  }

  async killAll(): Promise<void> {
    if (this.#closed || this.#empty) return;
    // A move still in flight lands first: an empty look before it would not mean "nothing left".
    await Promise.allSettled(this.#adopted.values());
    // After a clean exit there is nothing left: one read instead of a kill and a read.
    if (!this.#populated()) {
      this.#empty = true;
      return;
    }
    const deadline = Date.now() + KILL_WAIT_MS;
    // cgroup.kill (Linux 5.14) kills every member atomically, forks in flight included.
    const killed = await writeFile(join(this.#dir, "cgroup.kill"), "1").then(
      () => true,
      () => false,
    );
    while (Date.now() < deadline) {
      if (!this.#populated()) {
        this.#empty = true;
        return;
      }
      if (!killed) {
        // Older kernels: freeze the group so nothing forks, kill each member, thaw to let them die.
        await writeFile(join(this.#dir, "cgroup.freeze"), "1").catch(() => undefined);
        for (const pid of await this.#members()) signal(pid, "SIGKILL");
        await writeFile(join(this.#dir, "cgroup.freeze"), "0").catch(() => undefined);
      }
      await delay(POLL_MS);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.killAll();
    await this.#rmdir();
  }

  async remove(): Promise<void> {
    if (this.#closed) return;
    // After the moves under way (another job's spare, moved in ahead): an rmdir issued meanwhile
    // waits in one of libuv's four threads for the lock the move holds through its RCU grace
    // period, and the next job's file operations (its sink's commit) queue behind it.
    while (movesInFlight.size > 0) await Promise.allSettled([...movesInFlight]);
    if (!(await this.#rmdir())) throw new Error(`${this.#dir} is still busy after ${RMDIR_ATTEMPTS} attempts (a process of the job may be left)`);
  }

  /** False when the cgroup stayed busy: a member that would not die (killAll waits a bounded time). */
  async #rmdir(): Promise<boolean> {
    this.#closed = true;
    for (let attempt = 0; attempt < RMDIR_ATTEMPTS; attempt++) {
      try {
        await rmdir(this.#dir);
        return true;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === "ENOENT") return true;
        if (code !== "EBUSY") throw err;
        await delay(POLL_MS);
      }
    }
    return false;
  }

  /**
   * Read synchronously: the kernel answers from a flag, taking none of the cgroup locks a move
   * or an rmdir may hold, in microseconds; an async read is four thread-pool round trips on
   * the path to the job's answer (it is looked at when the guest exits).
   */
  #populated(): boolean {
    try {
      return /^populated 1$/m.test(readFileSync(this.#eventsPath, "utf8"));
    } catch {
      return false; // the cgroup is gone
    }
  }

  async #members(): Promise<number[]> {
    const text = await readFile(join(this.#dir, "cgroup.procs"), "utf8").catch(() => "");
    return text.split("\n").filter(Boolean).map(Number);
  }
}

class SessionScope implements JobScope {
  readonly kind = "session";
  readonly env: Record<string, string>;
  readonly removes = undefined;
  readonly #marker: string;
  #leader: number | undefined;
  /** Set when a kill found nothing left: nothing of the job can start anything any more. */
  #clean = false;
  /** The guest's start time: a process of the job cannot be older. */
  #since = 0;

  constructor() {
    this.#marker = randomBytes(16).toString("hex");
    this.env = { [JOB_MARKER_ENV]: this.#marker };
  }

  adopt(pid: number): Promise<void> {
    this.#leader = pid;
    this.#since = startTime(pid) ?? 0;
    return Promise.resolve();
  }

  terminate(): void {
    if (this.#leader !== undefined) signal(-this.#leader, "SIGTERM");
  }

  async killAll(): Promise<void> {
    const leader = this.#leader;
    if (leader === undefined || this.#clean) return;
    signal(-leader, "SIGKILL");
    const deadline = Date.now() + KILL_WAIT_MS;
    let survivors: number[];
    for (let round = 0; round < MAX_KILL_ROUNDS && Date.now() < deadline; round++) {
      survivors = await this.#find(leader);
      if (survivors.length === 0) {
        this.#clean = true;
        return;
      }
      for (const pid of survivors) signal(pid, "SIGKILL");
      await delay(POLL_MS);
    }
  }

  close(): Promise<void> {
    return this.killAll();
  }

  remove(): Promise<void> {
    return Promise.resolve(); // a session is nothing to remove
  }

  /**
   * Live processes of the job: in the guest's session or process group (a pid stays taken
   * while any process uses it as its session or group id, so these cannot be strangers), or
   * started after the guest and carrying the marker in an environment we may read. Read
   * synchronously (a few µs a file; an async read costs a thread-pool round trip each),
   * yielding to the event loop every few hundred processes.
   */
  async #find(leader: number): Promise<number[]> {
    const needle = Buffer.from(`\0${JOB_MARKER_ENV}=${this.#marker}\0`);
    const found: number[] = [];
    let entries: string[];
    try {
      entries = readdirSync("/proc");
    } catch {
      return found;
    }
    for (let i = 0; i < entries.length; i++) {
      if (i % 256 === 255) await new Promise((resolve) => setImmediate(resolve));
      const entry = entries[i]!;
      if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
      const fields = statFields(entry);
      if (!fields || fields[0] === "Z") continue;
      if (Number(fields[2]) === leader || Number(fields[3]) === leader) {
        found.push(Number(entry));
        continue;
      }
      if (Number(fields[19]) < this.#since) continue;
      let environ: Buffer;
      try {
        environ = readFileSync(`/proc/${entry}/environ`);
      } catch {
        continue; // gone, or not ours to read
      }
      if (Buffer.concat([Buffer.from([0]), environ]).includes(needle)) found.push(Number(entry));
    }
    return found;
  }
}

/** /proc/<pid>/stat after "pid (comm) ": state ppid pgrp session ... (index 19: start time). comm may hold spaces and parentheses. */
function statFields(pid: string | number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return fields.length > 19 ? fields : undefined;
  } catch {
    return undefined;
  }
}

function startTime(pid: number): number | undefined {
  const fields = statFields(pid);
  return fields ? Number(fields[19]) : undefined;
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // ESRCH: already gone.
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
