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
import { openJobScope, type JobScope } from "./job-scope.js";

export interface WarmPoolOptions {
  logger: Logger;
  /** Warm parents kept at once (each holds one env's imports in memory). Default 4. */
  maxParents?: number;
  /** A parent without jobs for this long is stopped. Default 300 000 ms. */
  idleMs?: number;
  /** A parent whose resident memory exceeds this is not kept (its plugin runs cold). Default 2 GiB. */
  maxParentBytes?: number;
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
}

export type WarmLaunch = { kind: "forked"; child: WarmChild } | { kind: "cold"; reason: string };

const DEFAULTS = { maxParents: 4, idleMs: 300_000, maxParentBytes: 2 * 1024 ** 3 } as const;
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
  #spare: { pid: number; scope: Promise<JobScope | null> } | undefined;
  /** True while the parent is forking a spare that it has not announced yet. */
  #spareComing = false;
  readonly #spareWaiters = new Set<() => void>();
  readonly #useCgroup: boolean | undefined;

  constructor(
    key: string,
    spec: WarmKey,
    log: Logger,
    private readonly onGone: (parent: WarmParent) => void,
  ) {
    this.key = key;
    this.#log = log;
    this.#useCgroup = spec.cgroup;
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
    const child = spawn(spec.interpreterPath, [spec.guestPath, "--serve", sourcePath, spec.pluginName], {
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
      let event: { event?: string; id?: number; pid?: number; code?: number | null; signal?: string | null } & Partial<ReadyEvent>;
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
        // A parent that forks announces its first spare next.
        this.#spareComing = event.fork === true;
        this.#hold(-1);
        settle?.resolve(event as ReadyEvent);
      } else if (event.event === "spare" && event.pid !== undefined) {
        // A newer spare replaces one the parent discarded (it learned imports since it forked that one).
        void this.#dropSpare();
        this.#spare = { pid: event.pid, scope: this.#reserve(event.pid) };
        this.#spareArrived();
      } else if (event.event === "spare-exited" || event.event === "spare-failed") {
        if (this.#spare && this.#spare.pid === event.pid) void this.#dropSpare();
        this.#spareArrived();
      } else if (event.event === "started" && event.id !== undefined) {
        // The parent forks the next job's spare right after handing this one over.
        this.#spareComing = true;
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
   * current job runs: the move costs an RCU grace period (job-scope.ts), which no job then waits for.
   */
  async #reserve(pid: number): Promise<JobScope | null> {
    let scope: JobScope | undefined;
    try {
      scope = await openJobScope(this.#scopeOptions());
      await scope.adopt(pid);
      return scope;
    } catch (err) {
      this.#log.debug({ err, pid }, "could not move the spare child into its job's scope ahead; its job does it");
      await scope?.close().catch(() => undefined);
      return null;
    }
  }

  #scopeOptions(): { useCgroup: boolean | undefined; onFallback: (reason: string) => void } {
    return {
      useCgroup: this.#useCgroup,
      onFallback: (reason) => this.#log.info({ reason }, "no cgroup for jobs: a job's processes are its guest's session, process group and marked environment"),
    };
  }

  /** The spare goes unused (its parent is gone, or it died): its reserved scope is closed, which kills it. */
  #dropSpare(): Promise<void> {
    const spare = this.#spare;
    this.#spare = undefined;
    if (!spare) return Promise.resolve();
    return spare.scope.then((scope) => scope?.close()).catch(() => undefined);
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

  /**
   * Start one job: hand it to the spare child (already in the job's scope, which it brings), or
   * have the parent fork one. Resolves once its pid (= its process group) is known.
   */
  async fork(jobDir: string, jobEnv: Record<string, string>): Promise<{ pid: number; exit: Promise<ExitInfo>; scope: JobScope; adopted: Promise<void> }> {
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
    let moved: number | undefined;
    try {
      await this.#spareAnnounced(SPARE_WAIT_MS);
      const spare = this.#spare;
      this.#spare = undefined;
      scope = spare ? await spare.scope : null;
      if (scope) moved = spare!.pid;
      scope ??= await openJobScope(this.#scopeOptions());
      if (!this.#alive || !this.#child?.stdin) throw new Error("warm guest is gone");
    } catch (err) {
      exitResolve({ code: null, signal: "not started" });
      await scope?.close().catch(() => undefined);
      throw err;
    }
    const jobScope = scope;
    let reserved: Promise<JobScope | null> | undefined;
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
          if (!started) void jobScope.close().catch(() => undefined);
          reject(err);
        },
        exit: exitResolve,
      });
      // "pid": the spare that is in the job's scope already; the parent uses another child only if that one died.
      this.#child!.stdin!.write(`${JSON.stringify({ op: "run", id, pid: moved ?? null, dir: jobDir, env: { ...jobEnv, ...jobScope.env } })}\n`);
    });
    // A move into another scope may be under way (a spare reserved for a later job): it lands
    // first, then this one, and that scope goes empty.
    const adopted = reserved
      ? reserved.then(async (other) => {
          await jobScope.adopt(pid);
          await other?.close();
        })
      : jobScope.adopt(pid);
    adopted.catch(() => undefined);
    return { pid, exit, scope: jobScope, adopted };
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

  constructor(options: WarmPoolOptions) {
    this.#log = options.logger.child({ component: "warm-guests" });
    this.#options = {
      maxParents: options.maxParents ?? DEFAULTS.maxParents,
      idleMs: options.idleMs ?? DEFAULTS.idleMs,
      maxParentBytes: options.maxParentBytes ?? DEFAULTS.maxParentBytes,
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
  async launch(spec: WarmKey, jobDir: string, jobEnv: Record<string, string>, cancelled: () => boolean = () => false): Promise<WarmLaunch> {
    if (this.#closed) return { kind: "cold", reason: "the warm pool is closed" };
    const key = WarmPool.keyOf(spec);
    const refused = this.#cold.get(key);
    if (refused) return { kind: "cold", reason: refused };

    const parent = this.#parentFor(key, spec);
    if (parent === undefined) return { kind: "cold", reason: `all ${this.#options.maxParents} warm guests are busy (bridge.warm.maxParents)` };
    const warm = parent.isReady;
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
    if (!warm) {
      this.#log.info(
        { warm_guest: ready.pid, rss_kb: ready.rss_kb, threads: ready.threads, imported: ready.imported, failed: ready.failed, ms: ready.ms },
        "warm guest ready",
      );
    }
    if (parent.rssKb * 1024 > this.#options.maxParentBytes) {
      this.#refuse(key, `the warm guest holds ${Math.round(parent.rssKb / 1024)} MiB, above bridge.warm.maxParentMemory`);
      parent.stop("too large");
      return { kind: "cold", reason: this.#cold.get(key)! };
    }
    if (cancelled()) return { kind: "cold", reason: "the job ended before its warm guest was ready" };
    try {
      const { pid, exit, scope, adopted } = await parent.fork(jobDir, { ...jobEnv, BRIDGE_PLUGIN_FILE: parent.sourcePath });
      const owner = parent;
      void exit.then(() => {
        if (owner.alive) owner.armIdle(this.#options.idleMs);
      });
      return { kind: "forked", child: { pid, exit, warm, parentRssKb: parent.rssKb, scope, adopted } };
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
    const parent = new WarmParent(key, spec, this.#log, (gone) => {
      if (this.#parents.get(gone.key) === gone) this.#parents.delete(gone.key);
    });
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

  /** Stop every parent and wait for them to go. */
  async close(): Promise<void> {
    this.#closed = true;
    const parents = [...this.#parents.values()];
    this.#parents.clear();
    for (const parent of parents) parent.stop("pool closed");
    await Promise.all(parents.map((p) => p.exited));
  }
}
