/**
 * A job's private directory: made by mkdtemp (mode 0700, the slot user's when there is one),
 * holding the Unix sockets its guest connects to (0600, listening), each taking one
 * connection and refusing any other. It holds the plugin source too on the fresh-process
 * path, and is the guest's cwd, HOME and TMPDIR under a slot user; it goes with the job.
 *
 * A warm pool opens the next job's directory ahead (warm-pool.ts), while no job runs, so its
 * spare child connects its stdout and stderr before the job exists; such a directory is
 * quiet (`unref`) until a job claims it, so a waiting directory never keeps the worker alive.
 */
import { chmodSync, chownSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { privateLeftoversGone } from "./job-teardown.js";

/** Directory names: `<prefix><worker pid>-<6 characters>`, so a sweep finds those of dead workers (host.ts). */
export const JOB_DIR_PREFIX = "casparian-bridge-";

export type JobSocketName = "bridge.sock" | "stdout.sock" | "stderr.sock";

export interface JobDirOptions {
  /** The uid and gid the guest runs as (undefined: the worker's own). */
  user?: { uid: number; gid: number } | undefined;
  sockets: readonly JobSocketName[];
  /** Waiting directories (opened ahead) must not keep the event loop alive. */
  quiet?: boolean;
  onServerError?: (err: Error) => void;
}

export class JobDir {
  readonly path: string;
  readonly #servers = new Map<JobSocketName, { server: Server; connection: Promise<Socket> }>();
  readonly #accepted: Socket[] = [];
  readonly #acceptedBy = new Map<JobSocketName, Socket>();
  #quiet: boolean;
  /** Settles once every server has closed (their connections ended); set by stopListening(). */
  #stopped: Promise<void> | undefined;
  #closed: Promise<void> | undefined;

  private constructor(path: string, quiet: boolean) {
    this.path = path;
    this.#quiet = quiet;
  }

  /**
   * Make the directory and listen on its sockets; nothing is left behind when this fails.
   * The directory's and the sockets' system calls (mkdtemp, chmod, chown, bind) run on the
   * main thread: each is a quick metadata update under the temporary directory, where a round
   * trip through libuv's thread pool wakes two threads, and on 2 cores the wake-up often takes
   * the CPU from this thread for a fraction of a millisecond (a job directory, opened and removed
   * once per job, made 8 such round trips).
   */
  static async open(options: JobDirOptions): Promise<JobDir> {
    const dir = new JobDir(mkdtempSync(join(tmpdir(), `${JOB_DIR_PREFIX}${process.pid}-`)), options.quiet === true);
    try {
      chmodSync(dir.path, 0o700);
      if (options.user) chownSync(dir.path, options.user.uid, options.user.gid);
      for (const name of options.sockets) await dir.#listen(name, options);
      return dir;
    } catch (err) {
      await dir.close();
      throw err;
    }
  }

  socketPath(name: JobSocketName): string {
    return join(this.path, name);
  }

  /** The first connection to `name` (one of the sockets it was opened with). */
  connection(name: JobSocketName): Promise<Socket> {
    const entry = this.#servers.get(name);
    if (!entry) throw new Error(`${name} is not a socket of this job directory`);
    return entry.connection;
  }

  /** The socket connected to `name` already, if one is. */
  accepted(name: JobSocketName): Socket | undefined {
    return this.#acceptedBy.get(name);
  }

  /** The job that claims it keeps the worker alive while it waits on these sockets. */
  claim(): void {
    this.#quiet = false;
    for (const { server } of this.#servers.values()) server.ref();
    for (const socket of this.#accepted) socket.ref();
  }

  /**
   * Stop listening, at once: from its return nothing can connect to the sockets any more (their
   * files stay until close() removes the directory, which a job's teardown does after its answer).
   */
  stopListening(): void {
    if (this.#stopped) return;
    const closing = [...this.#servers.values()].map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve())));
    this.#stopped = Promise.all(closing).then(() => undefined);
  }

  /** Stop listening, drop what connected, remove the directory and everything in it. */
  close(): Promise<void> {
    this.stopListening();
    this.#closed ??= (async () => {
      await this.#stopped;
      for (const socket of this.#accepted) socket.destroy();
      rmSync(this.path, { recursive: true, force: true });
    })();
    return this.#closed;
  }

  async #listen(name: JobSocketName, options: JobDirOptions): Promise<void> {
    const path = join(this.path, name);
    const server = createServer();
    let accepted = false;
    const connection = new Promise<Socket>((resolve) => {
      server.on("connection", (socket) => {
        if (accepted || this.#stopped) {
          socket.destroy(); // one guest, one connection: anything else is not ours
          return;
        }
        accepted = true;
        this.#accepted.push(socket);
        this.#acceptedBy.set(name, socket);
        if (this.#quiet) socket.unref();
        resolve(socket);
      });
    });
    this.#servers.set(name, { server, connection });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => {
        server.off("error", reject);
        resolve();
      });
    });
    if (this.#quiet) server.unref();
    server.on("error", (err) => options.onServerError?.(err));
    chmodSync(path, 0o600);
    if (options.user) chownSync(path, options.user.uid, options.user.gid);
  }
}

/**
 * A directory opened ahead exists only while no job's processes do: a running plugin of the
 * same uid could otherwise connect to the next job's sockets before that job's guest does.
 * So one is opened only once every job of this worker process has ended (its processes are
 * killed by then, job-scope.ts), and a job about to start its guest discards every one it
 * does not claim itself. Process-wide: jobs of every pool, warm or fresh, count.
 */
export interface AheadEntry {
  /** Called when another job is about to start a guest: the entry must never be claimed now. Resolves once its directory is gone. */
  discard(): Promise<void>;
}

export interface JobTicket {
  /**
   * Right before the job's guest starts (or is handed its job): discard what it does not claim.
   * Resolves once those directories are removed, and those of jobs that ended before: the guest
   * must not find one still listening, nor what an earlier job left in its own.
   */
  starting(claimed?: AheadEntry): Promise<void>;
  /** The job has ended and its processes are gone. */
  end(): void;
}

let liveJobs = 0;
const waitingAhead = new Set<AheadEntry>();
const idleWatchers = new Set<() => void>();

export function jobBegins(): JobTicket {
  liveJobs++;
  let ended = false;
  return {
    async starting(claimed) {
      if (claimed) waitingAhead.delete(claimed);
      const discarded = [...waitingAhead];
      waitingAhead.clear();
      // Earlier jobs' directories go after their answers (job-teardown.ts): gone before this guest runs.
      await Promise.all([...discarded.map((entry) => entry.discard().catch(() => undefined)), privateLeftoversGone()]);
    },
    end() {
      if (ended) return;
      ended = true;
      liveJobs--;
      if (liveJobs === 0) for (const watch of [...idleWatchers]) watch();
    },
  };
}

/** True while no job of this process may have a process alive. */
export function noJobRunning(): boolean {
  return liveJobs === 0;
}

/** `watch` runs each time the last running job ends; returns the unsubscribe. */
export function whenNoJobRunning(watch: () => void): () => void {
  idleWatchers.add(watch);
  return () => idleWatchers.delete(watch);
}

/** `entry` is open ahead from now on (call it only while noJobRunning()), until claimed or discarded. */
export function openedAhead(entry: AheadEntry): void {
  waitingAhead.add(entry);
}

/** `entry` went away by itself (its spare died, its pool stopped): nothing to discard any more. */
export function forgetAhead(entry: AheadEntry): void {
  waitingAhead.delete(entry);
}
