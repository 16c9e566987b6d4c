/**
 * Warm guests: one Python process per (environment, plugin source) that has already
 * imported what the plugin imports, and forks one child per job (guest/casparian_guest/
 * fork_server.py). A job then costs a fork instead of an interpreter start plus imports.
 *
 * Each job is still a process of its own, in a process group of its own, killed by the
 * bridge host exactly like a fresh guest; the warm parent only forks and reaps. It is
 * started with the job's allowlisted environment (never the worker's), in a private 0700
 * directory that holds nothing but the plugin source (0600).
 *
 * Lifecycle: started lazily by the first job of its key; stopped after `idleMs` without
 * jobs, when more than `maxParents` exist (least recently used first), or when its
 * resident memory exceeds `maxParentBytes`; a parent that dies is replaced by the next
 * job. A plugin that must not be forked (`MANIFEST["fork"] = False`, threads started by
 * its imports) is remembered and runs in fresh processes from then on.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { chmod, chown, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { Logger } from "../kernel/logger.js";
import { type AheadEntry, forgetAhead, JobDir, type JobTicket, noJobRunning, openedAhead, whenNoJobRunning } from "./job-dir.js";
import { JOB_CGROUP_ENV, openJobScope, type JobScope } from "./job-scope.js";
import { jobTeardownsSettled } from "./job-teardown.js";
import { GUEST_LIMITS_ENV } from "./limits.js";
import { ensureShimBytecode } from "./shim-bytecode.js";

export interface WarmPoolOptions {
  logger: Logger;
  /** Warm parents kept at once (each holds one env's imports in memory). Default 4. */
  maxParents?: number;
  /** A parent without jobs for this long is stopped. Default 300 000 ms. */
  idleMs?: number;
  /** A parent whose resident memory exceeds this is not kept (its plugin runs cold). Default 2 GiB. */
  maxParentBytes?: number;
  /** MiB of learned hot pages each spare child pre-faults (guest/casparian_guest/hot_pages.py); 0: none. Default 64. */
  prefaultMb?: number;
}

/** What a warm parent needs to start: the same facts a fresh guest is spawned with. */
export interface WarmKey {
  interpreterPath: string;
  /** The environment's identity beyond its path (its seal): an env rebuilt at the same path gets new parents. */
  envIdentity?: string | undefined;
  guestPath: string;
  source: string;
  pluginName: string;
  /** The allowlisted environment of the guest, without the job's BRIDGE_* variables. */
  env: Record<string, string>;
  /** The slot user the parent (and so every job forked from it) runs as; undefined: the worker's uid. */
  user?: { uid: number; gid: number } | undefined;
  /** bridge.cgroup (job-scope.ts): how the job scopes of this parent's children are made. */
  cgroup?: boolean | undefined;
}

export interface ExitInfo {
  code: number | null;
  signal: string | null;
}

/** A job's child, forked by a warm parent. */
export interface WarmChild {
  pid: number;
  exit: Promise<ExitInfo>;
  /** True when the parent was ready before this job asked (the job paid no interpreter start). */
  warm: boolean;
  parentRssKb: number;
  /** The job's scope (job-scope.ts), which the child is in, or is being moved into (`adopted`). */
  scope: JobScope;
  /** Settles once the child is in `scope`; rejects when the kernel refused the move. */
  adopted: Promise<void>;
  /** The job's directory (its sockets listening): opened ahead for the spare, or for this job. */
  dir: JobDir;
  /** What was done before the job came: the child confined itself, connected to `dir`. */
  ahead: { confined: boolean; connected: boolean };
}

/** A spare child and what is ready for its job: its cgroup's name, the directory it is connected to, the limits it confined itself to. */
export interface AheadState {
  pid: number;
  cgroup: string | undefined;
  dir: string | undefined;
  confinedFor: string | undefined;
}

/** What a job brings to its fork besides its key. */
export interface WarmJob {
  /** CASPARIAN_GUEST_LIMITS of the job: a spare confined ahead for other limits is not used. */
  limits: string;
  /** The job's BRIDGE_* variables, given its directory. */
  env: (dir: JobDir) => Record<string, string>;
  ticket: JobTicket;
  onServerError?: (err: Error) => void;
}

/**
 * The next job's child, forked ahead by the parent and waiting for its job there; meanwhile
 * it is moved into the next job's scope, confines itself for it, and (while no job runs, see
 * job-dir.ts) connects its stdout and stderr to the next job's directory.
 */
interface Spare {
  pid: number;
  /** The scope it is being moved into (null: that failed; its job then moves it). */
  scope: Promise<JobScope | null>;
  /** The limits (CASPARIAN_GUEST_LIMITS) it was told to confine itself to, once told. */
  confinedFor?: string;
  /** Its job directory, being opened or open (null: opening failed or was given up). */
  dir?: Promise<JobDir | null>;
  /** Told to connect to `dir`: from then on it serves that directory or none. */
  connected: boolean;
  /** Another job started a guest while `dir` was open: neither may be claimed now. */
  discarded: boolean;
  /**
   * What it is to confine itself to ("prepare"), not told yet: held while a job runs, to go
   * with the "open" that job's end brings (one message to the parent, and one to the spare).
   */
  prepare?: { limits: string; env: Record<string, string> };
  /** For ahead(): the cgroup it was moved into, the directory it was connected to. */
  cgroup?: string;
  dirPath?: string;
  entry: AheadEntry;
}

const JOB_SOCKETS = ["bridge.sock", "stdout.sock", "stderr.sock"] as const;

export type WarmLaunch = { kind: "forked"; child: WarmChild } | { kind: "cold"; reason: string };

const DEFAULTS = { maxParents: 4, idleMs: 300_000, maxParentBytes: 2 * 1024 ** 3, prefaultMb: 64 } as const;
/** How long a parent may take to import the plugin's modules. */
const READY_TIMEOUT_MS = 120_000;
const STDERR_TAIL_LINES = 20;
/** How long a job waits for the spare child its parent is forking before it asks for a fork of its own. */
const SPARE_WAIT_MS = 5_000;

interface ReadyEvent {
  event: "ready";
  fork: boolean;
  reason?: string;
  pid: number;
  rss_kb?: number;
  threads?: number;
  imported?: string[];
  failed?: string[];
  ms?: number;
  /** The plugin's literal MANIFEST name and version, noted once here instead of by each job. */
  manifest?: { name?: string; version?: string };
}

class WarmParent {
  readonly key: string;
  readonly ready: Promise<ReadyEvent>;
  readonly exited: Promise<void>;
  lastUsed = Date.now();
  running = 0;
  rssKb = 0;
  /** Set once the parent said it is ready (jobs forked after that are warm). */
  isReady = false;
  sourcePath = "";
  #child: ChildProcess | undefined;
  #dir: string | undefined;
  #alive = true;
  #nextId = 1;
  readonly #waiting = new Map<
    number,
    { started: (pid: number, reserved?: Promise<JobScope | null>) => void; failed: (err: Error) => void; exit: (info: ExitInfo) => void }
  >();
  readonly #stderrTail: string[] = [];
  readonly #log: Logger;
  #idleTimer: NodeJS.Timeout | undefined;
  #holds = 0;
  /**
   * The next job's child, forked ahead by the parent and waiting for its job there, and the
   * scope it is being moved into meanwhile (null: that failed; the job then makes its own).
   */
  #spare: Spare | undefined;
  /** True while the parent is forking a spare that it has not announced yet. */
  #spareComing = false;
  readonly #spareWaiters = new Set<() => void>();
  readonly #useCgroup: boolean | undefined;
  readonly #user: { uid: number; gid: number } | undefined;
  /** The limits of the latest job: what the next spare confines itself to ahead. */
  #limits: string | undefined;
  readonly #unwatchIdle: () => void;
  /** Settles once the scopes and directories of spares given up so far are gone: a new spare's are made after that. */
  #released: Promise<unknown> = Promise.resolve();
  /** Whether this parent's next job is the one to open a directory for (the pool says: the latest job's parent). */
  mayOpenAhead: () => boolean = () => true;

  constructor(
    key: string,
    spec: WarmKey,
    log: Logger,
    private readonly onGone: (parent: WarmParent) => void,
    private readonly prefaultMb = 0,
  ) {
    this.key = key;
    this.#log = log;
    this.#useCgroup = spec.cgroup;
    this.#user = spec.user;
    this.#unwatchIdle = whenNoJobRunning(() => this.#openAhead());
    let resolveExited!: () => void;
    this.exited = new Promise((resolve) => (resolveExited = resolve));
    this.ready = this.#start(spec, resolveExited);
    this.ready.catch(() => undefined);
  }

  /** Ref the parent while something waits on it (start, a job), unref it when idle. */
  #hold(delta: number): void {
    this.#holds += delta;
    const child = this.#child;
    if (!child) return;
    const stdout = child.stdout as unknown as { ref(): void; unref(): void } | null;
    if (this.#holds > 0) {
      child.ref();
      stdout?.ref();
    } else {
      child.unref();
      stdout?.unref();
    }
  }

  get alive(): boolean {
    return this.#alive;
  }

  /**
   * Resident memory now, in KiB: VmRSS from /proc (children share the parent's pages, so
   * this is what the warm imports cost); the figure from its ready event where /proc is missing.
   */
  residentKb(): number {
    const pid = this.#child?.pid;
    if (pid === undefined || !this.isReady) return this.rssKb;
    try {
      const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
      if (match) return Number(match[1]);
    } catch {
      // exited meanwhile, or no procfs
    }
    return this.rssKb;
  }

  async #start(spec: WarmKey, onExit: () => void): Promise<ReadyEvent> {
    try {
      return await this.#spawn(spec, onExit);
    } catch (err) {
      if (this.#alive && !this.#child) {
        this.#alive = false;
        this.onGone(this);
        if (this.#dir) await rm(this.#dir, { recursive: true, force: true }).catch(() => undefined);
        onExit();
      }
      throw err;
    }
  }

  async #spawn(spec: WarmKey, onExit: () => void): Promise<ReadyEvent> {
    // Named like the bridge's socket directories: the same sweep removes it if the worker is killed.
    const dir = await mkdtemp(join(tmpdir(), `casparian-bridge-${process.pid}-`));
    this.#dir = dir;
    await chmod(dir, 0o700);
    const sourcePath = join(dir, "plugin-source.py");
    this.sourcePath = sourcePath;
    await writeFile(sourcePath, spec.source, { mode: 0o600 });
    const user = spec.user;
    if (user) {
      await chown(dir, user.uid, user.gid);
      await chown(sourcePath, user.uid, user.gid);
    }
    await ensureShimBytecode(spec.interpreterPath);
    const child = spawn(spec.interpreterPath, [spec.guestPath, "--serve", sourcePath, spec.pluginName, String(Math.floor(this.prefaultMb * 1024))], {
      // A slot user's home and temp are its own directory (each job then gets its job directory).
      env: user ? { ...spec.env, HOME: dir, TMPDIR: dir } : spec.env,
      ...(user ? { uid: user.uid, gid: user.gid } : {}),
      cwd: dir,
      detached: true,
      stdio: ["pipe", "pipe", "pipe"],
    });
    this.#child = child;
    // An idle parent does not keep the worker's event loop alive (#hold): when the worker
    // exits, the parent's stdin closes and it ends its children and itself.
    for (const stream of [child.stdin, child.stderr]) (stream as unknown as { unref?: () => void } | null)?.unref?.();
    this.#hold(+1);
    child.stdin!.on("error", () => undefined);

    let settle: { resolve: (ready: ReadyEvent) => void; reject: (err: Error) => void } | undefined;
    const ready = new Promise<ReadyEvent>((resolve, reject) => (settle = { resolve, reject }));
    const timer = setTimeout(() => {
      settle?.reject(new Error(`warm guest did not get ready within ${READY_TIMEOUT_MS} ms`));
      this.stop("not ready in time");
    }, READY_TIMEOUT_MS);
    timer.unref();

    createInterface({ input: child.stdout!, crlfDelay: Infinity }).on("line", (line) => {
      let event: { event?: string; id?: number; pid?: number; code?: number | null; signal?: string | null; spare?: boolean } & Partial<ReadyEvent>;
      try {
        event = JSON.parse(line) as typeof event;
      } catch {
        this.#log.warn({ line: line.slice(0, 200) }, "warm guest wrote a line that is not an event");
        return;
      }
      if (event.event === "ready") {
        clearTimeout(timer);
        this.rssKb = event.rss_kb ?? 0;
        this.isReady = true;
        if (event.fork === true) {
          this.#log.info(
            {
              warm_guest: event.pid,
              rss_kb: event.rss_kb,
              threads: event.threads,
              imported: event.imported,
              failed: event.failed,
              ms: event.ms,
              plugin_manifest: event.manifest,
            },
            "warm guest ready",
          );
        }
        // A parent that forks announces its first spare next.
        this.#spareComing = event.fork === true;
        this.#hold(-1);
        settle?.resolve(event as ReadyEvent);
      } else if (event.event === "spare" && event.pid !== undefined) {
        // A newer spare replaces one the parent discarded (it learned imports since it forked that one).
        void this.#dropSpare();
        const spare: Spare = {
          pid: event.pid,
          scope: Promise.resolve(null),
          connected: false,
          discarded: false,
          entry: { discard: () => this.#discardAhead(spare) },
        };
        this.#spare = spare;
        spare.scope = this.#reserve(spare);
        this.#spareArrived();
        this.#openAhead();
      } else if (event.event === "stale-spare") {
        // Forked before the parent learned imports a job made: retired, unless a job has it already.
        const spare = this.#spare;
        if (spare && spare.pid === event.pid) {
          this.#spare = undefined;
          this.#spareComing = true;
          this.#retire(spare);
        }
      } else if (event.event === "spare-exited" || event.event === "spare-failed") {
        if (this.#spare && this.#spare.pid === event.pid) void this.#dropSpare();
        this.#spareArrived();
      } else if (event.event === "started" && event.id !== undefined) {
        // The parent forks the next job's spare right after handing this one over (unless it still has one).
        this.#spareComing = event.spare !== false;
        // A spare this job did not take from us (the parent replaced the one it did): its reservation is the job's to undo.
        const taken = this.#spare?.pid === event.pid ? this.#spare : undefined;
        if (taken) this.#spare = undefined;
        this.#waiting.get(event.id)?.started(event.pid!, taken?.scope);
      } else if (event.event === "exited" && event.id !== undefined) {
        const waiter = this.#waiting.get(event.id);
        this.#waiting.delete(event.id);
        waiter?.exit({ code: event.code ?? null, signal: event.signal ?? null });
      }
    });
    createInterface({ input: child.stderr!, crlfDelay: Infinity }).on("line", (line) => {
      this.#stderrTail.push(line);
      if (this.#stderrTail.length > STDERR_TAIL_LINES) this.#stderrTail.shift();
      this.#log.info({ warm_guest: child.pid }, line);
    });
    const gone = (why: string) => {
      if (!this.#alive) return;
      this.#alive = false;
      this.#unwatchIdle();
      clearTimeout(timer);
      if (this.#idleTimer) clearTimeout(this.#idleTimer);
      const tail = this.#stderrTail
        .filter((l) => l.trim())
        .slice(-5)
        .join("\n");
      const err = new Error(`warm guest ${why}${tail ? `\nlast warm guest stderr:\n${tail}` : ""}`);
      settle?.reject(err);
      for (const waiter of this.#waiting.values()) {
        waiter.failed(err);
        // A child already forked outlives its parent: its exit status is lost with the parent.
        waiter.exit({ code: null, signal: "warm parent exited" });
      }
      this.#waiting.clear();
      const spareDropped = this.#dropSpare();
      this.#spareArrived();
      this.onGone(this);
      void Promise.all([rm(dir, { recursive: true, force: true }), spareDropped]).finally(onExit);
    };
    child.once("exit", (code, signal) => gone(`exited (${signal ? `signal ${signal}` : `exit code ${code}`})`));
    child.once("error", (err) => gone(`could not start: ${err.message}`));
    return ready;
  }

  /**
   * Move the spare the parent just forked into a scope of its own, the next job's, while the
   * current job runs: the move costs an RCU grace period (job-scope.ts), which no job then waits
   * for. Once it is in, the spare confines itself for that job (limits, capabilities, ...).
   */
  async #reserve(spare: Spare): Promise<JobScope | null> {
    let scope: JobScope | undefined;
    try {
      await this.#released;
      scope = await openJobScope(this.#scopeOptions());
      await scope.adopt(spare.pid);
    } catch (err) {
      this.#log.debug({ err, pid: spare.pid }, "could not move the spare child into its job's scope ahead; its job does it");
      await scope?.close().catch(() => undefined);
      return null;
    }
    const cgroup = scope.env[JOB_CGROUP_ENV];
    spare.cgroup = cgroup;
    if (this.#spare === spare && this.#limits !== undefined) {
      spare.prepare = { limits: this.#limits, env: { [GUEST_LIMITS_ENV]: this.#limits, ...(cgroup ? { [JOB_CGROUP_ENV]: cgroup } : {}) } };
      // While a job runs, the directory opened ahead follows once it ends (#openAhead): both go in one message then.
      if (spare.dir !== undefined || noJobRunning() || !this.mayOpenAhead()) this.#prepareNow(spare);
    }
    return scope;
  }

  /** The steps the spare takes ahead for its job, told now (alone) unless told already. */
  #prepareNow(spare: Spare): void {
    const prepare = this.#takePrepare(spare);
    if (prepare) this.#tell({ op: "prepare", pid: spare.pid, env: prepare });
  }

  /** The spare's "prepare", not told yet, taken to be told now: from then on it counts as confined for those limits. */
  #takePrepare(spare: Spare): Record<string, string> | undefined {
    const prepare = spare.prepare;
    spare.prepare = undefined;
    if (!prepare || this.#spare !== spare || spare.discarded || !this.#alive) return undefined;
    spare.confinedFor = prepare.limits;
    return prepare.env;
  }

  /**
   * Open the next job's directory and have the spare connect its stdout and stderr to it, when
   * no job runs (job-dir.ts: no plugin is alive to reach it before its own job's guest does).
   */
  #openAhead(): void {
    const spare = this.#spare;
    if (!spare || spare.dir || !this.#alive || !noJobRunning()) return;
    if (!this.mayOpenAhead()) {
      this.#prepareNow(spare);
      return;
    }
    openedAhead(spare.entry);
    const opening: Promise<JobDir | null> = JobDir.open({
      user: this.#user,
      sockets: JOB_SOCKETS,
      quiet: true,
      onServerError: (err) => this.#log.warn({ err }, "bridge server error"),
    }).then(
      (dir) => {
        if (spare.dir !== opening || spare.discarded || this.#spare !== spare || !this.#alive) {
          void dir.close().catch(() => undefined);
          this.#prepareNow(spare);
          return null;
        }
        spare.connected = true;
        spare.dirPath = dir.path;
        // "env": the "prepare" held for this message (fork_server.py confines the spare first, then connects it).
        const prepare = this.#takePrepare(spare);
        this.#tell({ op: "open", pid: spare.pid, dir: dir.path, ...(prepare ? { env: prepare } : {}) });
        return dir;
      },
      (err: unknown) => {
        this.#log.debug({ err }, "could not open the next job's directory ahead; its job opens one");
        forgetAhead(spare.entry);
        this.#prepareNow(spare);
        return null;
      },
    );
    spare.dir = opening;
  }

  /**
   * Another job is about to start a guest while this spare's directory is open (job-dir.ts): the
   * directory goes, and a spare connected to it disconnects (it can be opened again once no job
   * runs). A spare a job is taking meanwhile is marked, and that job does not use the directory.
   */
  #discardAhead(spare: Spare): Promise<void> {
    const dir = spare.dir;
    spare.dir = undefined;
    if (this.#spare !== spare) spare.discarded = true;
    else if (spare.connected) {
      spare.connected = false;
      spare.dirPath = undefined;
      this.#tell({ op: "close", pid: spare.pid });
    }
    return (dir ?? Promise.resolve(null)).then((open) => open?.close()).catch(() => undefined);
  }

  /** A spare no job will take: the parent forks another; its scope (which kills it) and directory go. */
  #retire(spare: Spare): void {
    forgetAhead(spare.entry);
    spare.discarded = true;
    this.#tell({ op: "discard", pid: spare.pid });
    const dir = spare.dir;
    spare.dir = undefined;
    this.#release(Promise.all([spare.scope.then((scope) => scope?.close()), dir?.then((open) => open?.close())]));
  }

  #release(closing: Promise<unknown>): Promise<void> {
    const done = closing.then(
      () => undefined,
      () => undefined,
    );
    this.#released = Promise.all([this.#released, done]);
    return done;
  }

  /** A spare this job does not take: the parent forks another, its scope and directory go. */
  async #giveUp(spare: Spare, scope: JobScope | null, dir: JobDir | null): Promise<void> {
    forgetAhead(spare.entry);
    spare.discarded = true;
    this.#tell({ op: "discard", pid: spare.pid });
    await Promise.all([scope?.close(), dir?.close()]);
  }

  /** One request line to the parent (it may be gone: its exit is handled elsewhere). */
  #tell(request: Record<string, unknown>): void {
    if (this.#alive) this.#child?.stdin?.write(`${JSON.stringify(request)}\n`);
  }

  #scopeOptions(): Parameters<typeof openJobScope>[0] {
    return {
      useCgroup: this.#useCgroup,
      log: this.#log,
      onFallback: (reason) => this.#log.info({ reason }, "no cgroup for jobs: a job's processes are its guest's session, process group and marked environment"),
    };
  }

  /** The spare goes unused (its parent is gone, or it died): its reserved scope is closed, which kills it. */
  #dropSpare(): Promise<void> {
    const spare = this.#spare;
    this.#spare = undefined;
    if (!spare) return Promise.resolve();
    forgetAhead(spare.entry);
    spare.discarded = true;
    const dir = spare.dir;
    spare.dir = undefined;
    return this.#release(Promise.all([spare.scope.then((scope) => scope?.close()), dir?.then((open) => open?.close())]));
  }

  #spareArrived(): void {
    this.#spareComing = false;
    for (const wake of this.#spareWaiters) wake();
    this.#spareWaiters.clear();
  }

  /** Resolves once the spare the parent is forking is announced (or will not be), at most after `ms`. */
  #spareAnnounced(ms: number): Promise<void> {
    if (!this.#spareComing || this.#spare) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#spareWaiters.delete(wake);
        resolve();
      }, ms);
      const wake = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#spareWaiters.add(wake);
    });
  }

  /** The spare child and what is ready for its job (see WarmPool.ahead). */
  aheadOf(): AheadState | undefined {
    const spare = this.#spare;
    if (!spare) return undefined;
    return { pid: spare.pid, cgroup: spare.cgroup, dir: spare.connected ? spare.dirPath : undefined, confinedFor: spare.confinedFor };
  }

  /** The limits the next spare confines itself to ahead: those of the latest job. */
  expect(limits: string): void {
    this.#limits = limits;
  }

  /**
   * Start one job: hand it to the spare child (already in the job's scope, which it brings, and
   * connected to the job's directory when that was opened ahead), or have the parent fork one.
   * A spare confined ahead for other limits is not used. Resolves once the pid (= its process
   * group) is known.
   */
  async fork(job: WarmJob): Promise<Omit<WarmChild, "warm" | "parentRssKb">> {
    if (!this.#alive || !this.#child?.stdin) throw new Error("warm guest is gone");
    const id = this.#nextId++;
    this.running += 1;
    this.lastUsed = Date.now();
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    let exitResolve!: (info: ExitInfo) => void;
    this.#hold(+1);
    const exit = new Promise<ExitInfo>((resolve) => (exitResolve = resolve)).finally(() => {
      this.running -= 1;
      this.lastUsed = Date.now();
      this.#hold(-1);
    });
    let scope: JobScope | null = null;
    let dir: JobDir | null = null;
    let handed: Spare | undefined;
    let moved: number | undefined;
    /** The directory opened ahead for the spare, when this job has it. */
    let aheadDir: JobDir | null = null;
    try {
      await this.#spareAnnounced(SPARE_WAIT_MS);
      const spare = this.#spare;
      this.#spare = undefined;
      scope = spare ? await spare.scope : null;
      const opened = spare?.dir ? await spare.dir : null;
      if (spare && spare.confinedFor !== undefined && spare.confinedFor !== job.limits) {
        // Confined ahead for other limits: it goes, and the job gets a child forked now.
        this.#log.debug({ pid: spare.pid, confined_for: spare.confinedFor, limits: job.limits }, "the spare child was confined for other limits");
        await this.#giveUp(spare, scope, opened);
        scope = null;
      } else if (spare) {
        handed = spare;
        if (scope) moved = spare.pid;
        dir = opened;
        aheadDir = opened;
      }
      scope ??= await openJobScope(this.#scopeOptions());
      // The directory opened ahead is this job's only if no other job's guest started meanwhile
      // (job-dir.ts); a spare connected to one given up goes with it.
      if (handed?.discarded) {
        await dir?.close();
        dir = null;
        aheadDir = null;
        if (handed.connected) {
          await this.#giveUp(handed, moved === undefined ? null : scope, null);
          if (moved !== undefined) scope = await openJobScope(this.#scopeOptions());
          handed = undefined;
          moved = undefined;
        }
      }
      dir ??= await JobDir.open({ user: this.#user, sockets: JOB_SOCKETS, onServerError: job.onServerError });
      if (!this.#alive || !this.#child?.stdin) throw new Error("warm guest is gone");
    } catch (err) {
      exitResolve({ code: null, signal: "not started" });
      if (handed) forgetAhead(handed.entry);
      await Promise.all([scope?.close().catch(() => undefined), dir?.close().catch(() => undefined)]);
      throw err;
    }
    const jobScope = scope;
    const jobDir = dir;
    jobDir.claim();
    // Nothing opened ahead for another job survives this job's guest (job-dir.ts).
    await job.ticket.starting(handed?.entry);
    let reserved: Promise<JobScope | null> | undefined;
    // The next spare is forked once this child runs its plugin (or is gone): not while it starts.
    const run = { op: "run", id, pid: handed?.pid ?? null, dir: jobDir.path, env: { ...job.env(jobDir), ...jobScope.env }, spare: "later" };
    void Promise.race([jobDir.connection("bridge.sock"), exit]).then(
      () => this.#tell({ op: "spare" }),
      () => undefined,
    );
    // A spare connected to this directory ahead takes its job from the worker itself, on its
    // stdout socket (the parent only hears of it): one process hop less before the plugin starts.
    const direct = handed?.connected && jobDir === aheadDir ? jobDir.accepted("stdout.sock") : undefined;
    const pid = await new Promise<number>((resolve, reject) => {
      let started = false;
      this.#waiting.set(id, {
        started: (pid, reservation) => {
          started = true;
          reserved = reservation;
          resolve(pid);
        },
        failed: (err) => {
          // A child that started belongs to its job, which closes the scope; one that never did has nobody else.
          if (!started) void Promise.all([jobScope.close(), jobDir.close()]).catch(() => undefined);
          reject(err);
        },
        exit: exitResolve,
      });
      if (direct && handed) {
        started = true;
        direct.write(`${JSON.stringify(run)}\n`);
        // The parent forks the next spare on "spare" (below), and answers "ran" only when this one was gone ("started", "exited").
        this.#spareComing = true;
        this.#tell({ op: "ran", id, pid: handed.pid, spare: "later" });
        resolve(handed.pid);
        return;
      }
      // "pid": the spare this job takes; the parent forks another child if that one is not its spare any more.
      this.#tell(run);
    });
    // A move into another scope may be under way (a spare reserved for a later job): it lands
    // first, then this one, and that scope goes empty.
    const adopted =
      moved === pid
        ? jobScope.adopt(pid)
        : reserved
          ? reserved.then(async (other) => {
              await jobScope.adopt(pid);
              await other?.close();
            })
          : jobScope.adopt(pid);
    adopted.catch(() => undefined);
    const ahead = {
      confined: handed?.confinedFor !== undefined && pid === handed.pid,
      connected: handed?.connected === true && pid === handed.pid && jobDir === aheadDir,
    };
    return { pid, exit, scope: jobScope, adopted, dir: jobDir, ahead };
  }

  armIdle(idleMs: number): void {
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => {
      if (this.running === 0) this.stop("idle");
      else this.armIdle(idleMs);
    }, idleMs);
    this.#idleTimer.unref();
  }

  /** Stop the parent; its running children (if any) are killed by it, as when the worker dies. */
  stop(why: string): void {
    if (!this.#alive || !this.#child) return;
    this.#log.debug({ warm_guest: this.#child.pid, why }, "stopping warm guest");
    this.#hold(+1); // whoever waits for `exited` must see it
    this.#child.stdin?.end();
    const pid = this.#child.pid;
    const kill = setTimeout(() => {
      if (pid !== undefined && this.#alive) {
        try {
          process.kill(-pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
    }, 2000);
    kill.unref();
  }
}

export class WarmPool {
  readonly #options: Required<Omit<WarmPoolOptions, "logger">>;
  readonly #log: Logger;
  readonly #parents = new Map<string, WarmParent>();
  /** Keys that must run cold, with the reason (logged once). */
  readonly #cold = new Map<string, string>();
  /** Consecutive failed starts per key: a parent that keeps dying falls back to cold. */
  readonly #failures = new Map<string, number>();
  #closed = false;
  /** The key of the latest job given to a parent. */
  #latestKey: string | undefined;

  constructor(options: WarmPoolOptions) {
    this.#log = options.logger.child({ component: "warm-guests" });
    this.#options = {
      maxParents: options.maxParents ?? DEFAULTS.maxParents,
      idleMs: options.idleMs ?? DEFAULTS.idleMs,
      maxParentBytes: options.maxParentBytes ?? DEFAULTS.maxParentBytes,
      prefaultMb: options.prefaultMb ?? DEFAULTS.prefaultMb,
    };
  }

  static keyOf(spec: WarmKey): string {
    const hash = createHash("sha256");
    const facts = [spec.interpreterPath, spec.envIdentity ?? "", spec.guestPath, spec.pluginName, spec.cgroup === false ? "session" : "cgroup"];
    for (const fact of facts) hash.update(fact).update("\0");
    hash.update(spec.user ? `${spec.user.uid}:${spec.user.gid}` : "worker").update("\0");
    for (const name of Object.keys(spec.env).sort()) hash.update(name).update("=").update(spec.env[name]!).update("\0");
    return hash.update(spec.source, "utf8").digest("hex");
  }

  /** What is held ready now for jobs that have not come yet, one entry per spare child (for tests and debugging). */
  ahead(): AheadState[] {
    return [...this.#parents.values()].flatMap((parent) => parent.aheadOf() ?? []);
  }

  /** Parents alive now (started or starting) and their total resident memory, read now. */
  stats(): { parents: number; rssBytes: number } {
    let rssKb = 0;
    for (const parent of this.#parents.values()) rssKb += parent.residentKb();
    return { parents: this.#parents.size, rssBytes: rssKb * 1024 };
  }

  /**
   * Fork one job: `jobDir` is its private directory (it holds bridge.sock, stdout.sock and
   * stderr.sock, listening), `jobEnv` its BRIDGE_* variables. `cancelled` is asked before
   * forking, so a job that ended while its parent was starting gets no child.
   */
  async launch(spec: WarmKey, job: WarmJob, cancelled: () => boolean = () => false): Promise<WarmLaunch> {
    if (this.#closed) return { kind: "cold", reason: "the warm pool is closed" };
    const key = WarmPool.keyOf(spec);
    const refused = this.#cold.get(key);
    if (refused) return { kind: "cold", reason: refused };

    const parent = this.#parentFor(key, spec);
    if (parent === undefined) return { kind: "cold", reason: `all ${this.#options.maxParents} warm guests are busy (bridge.warm.maxParents)` };
    this.#latestKey = key;
    const warm = parent.isReady;
    parent.expect(job.limits);
    let ready: ReadyEvent;
    try {
      ready = await parent.ready;
    } catch (err) {
      const failures = (this.#failures.get(key) ?? 0) + 1;
      this.#failures.set(key, failures);
      const reason = `warm guest failed to start: ${(err as Error).message}`;
      if (failures >= 2) this.#refuse(key, `${reason} (twice)`);
      return { kind: "cold", reason };
    }
    this.#failures.delete(key);
    if (!ready.fork) {
      this.#refuse(key, ready.reason ?? "the warm guest refused to fork");
      parent.stop("refused");
      return { kind: "cold", reason: this.#cold.get(key)! };
    }
    if (parent.rssKb * 1024 > this.#options.maxParentBytes) {
      this.#refuse(key, `the warm guest holds ${Math.round(parent.rssKb / 1024)} MiB, above bridge.warm.maxParentMemory`);
      parent.stop("too large");
      return { kind: "cold", reason: this.#cold.get(key)! };
    }
    if (cancelled()) return { kind: "cold", reason: "the job ended before its warm guest was ready" };
    try {
      const owner = parent;
      const forked = await parent.fork({ ...job, env: (dir) => ({ ...job.env(dir), BRIDGE_PLUGIN_FILE: owner.sourcePath }) });
      void forked.exit.then(() => {
        if (owner.alive) owner.armIdle(this.#options.idleMs);
      });
      return { kind: "forked", child: { ...forked, warm, parentRssKb: parent.rssKb } };
    } catch (err) {
      return { kind: "cold", reason: (err as Error).message };
    }
  }

  /**
   * Start the parent of `spec` before its first job (`casparian run` knows the plugin when its
   * workers start): its imports then overlap the worker's start. Nothing when it exists, may
   * not start or must run cold; a parent no job comes for is stopped once idle, like any other.
   * Resolves once it is ready: true when it will fork jobs.
   */
  async prestart(spec: WarmKey): Promise<boolean> {
    if (this.#closed) return false;
    const key = WarmPool.keyOf(spec);
    if (this.#cold.has(key) || this.#parents.get(key)?.alive) return false;
    const parent = this.#parentFor(key, spec);
    if (parent === undefined) return false;
    const ready = await parent.ready.catch(() => null);
    if (ready === null) return false;
    if (parent.running === 0) parent.armIdle(this.#options.idleMs);
    return ready.fork;
  }

  /** The live parent of `key`, started now if needed; undefined when maxParents are all busy. */
  #parentFor(key: string, spec: WarmKey): WarmParent | undefined {
    const alive = this.#parents.get(key);
    if (alive?.alive) return alive;
    this.#makeRoom();
    if (this.#parents.size >= this.#options.maxParents) return undefined;
    const parent = new WarmParent(
      key,
      spec,
      this.#log,
      (gone) => {
        if (this.#parents.get(gone.key) === gone) this.#parents.delete(gone.key);
      },
      this.#options.prefaultMb,
    );
    // Only the latest job's parent opens a directory ahead: a worker's next job is most likely its
    // plugin's again, and every other directory would be given up by that job.
    parent.mayOpenAhead = () => this.#latestKey === undefined || this.#latestKey === parent.key;
    this.#parents.set(key, parent);
    return parent;
  }

  #refuse(key: string, reason: string): void {
    if (!this.#cold.has(key)) this.#log.info({ reason }, "plugin runs in a fresh process per job");
    this.#cold.set(key, reason);
  }

  /** Below maxParents before a new parent starts: stop the least recently used idle ones. */
  #makeRoom(): void {
    const idle = [...this.#parents.values()].filter((p) => p.running === 0).sort((a, b) => a.lastUsed - b.lastUsed);
    while (this.#parents.size >= this.#options.maxParents && idle.length > 0) {
      const victim = idle.shift()!;
      this.#parents.delete(victim.key);
      victim.stop("least recently used");
    }
  }

  /** Stop every parent and wait for them to go, and for the teardowns of jobs that ended (job-teardown.ts). */
  async close(): Promise<void> {
    this.#closed = true;
    const parents = [...this.#parents.values()];
    this.#parents.clear();
    for (const parent of parents) parent.stop("pool closed");
    await Promise.all(parents.map((p) => p.exited));
    await jobTeardownsSettled();
  }
}
