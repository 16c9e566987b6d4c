/**
 * What a finished job leaves behind once its processes are gone: its cgroup (an rmdir) and its
 * directory (sockets already closed, so nothing can connect). Removing them does not change the
 * job's answer, and the rmdir can wait milliseconds for the kernel's cgroup lock (held while
 * another process's move into a cgroup waits for an RCU grace period, job-scope.ts), so they
 * are removed here, off the path to the answer, and tracked in this one place: a stop of the
 * worker or of the warm pool waits for `jobTeardownsSettled()`, a failure is logged with its
 * code, and at most MAX_TEARDOWNS_IN_FLIGHT run at once (a job ending beyond that waits for
 * room first). What a killed worker leaves is swept by the next one (host.ts, job-scope.ts).
 *
 * Never hand this anything of a job whose processes may still be alive: the job's answer
 * follows their death, not their teardown's. And what holds the job's data (its directory: the
 * plugin source, and a slot user's HOME and TMPDIR) is gone before any later job's guest starts
 * (`privateLeftoversGone()`, awaited by job-dir.ts's ticket): a later plugin of the same uid
 * must not read it.
 */
import { Errors } from "../kernel/errors.js";
import type { Logger } from "../kernel/logger.js";

/** Teardowns running at once; one more waits for room (they are quick: a slot frees within milliseconds). */
export const MAX_TEARDOWNS_IN_FLIGHT = 8;

/** One thing a finished job left: its cgroup, its directory. */
export interface Leftover {
  /** For logs: "cgroup <path>", "directory <path>". */
  what: string;
  remove: () => Promise<void>;
  /** It holds what the job's processes wrote or read: no later job's guest starts before it is gone. */
  private?: boolean;
}

const inFlight = new Set<Promise<void>>();
const privateInFlight = new Set<Promise<void>>();
const waitingForRoom: (() => void)[] = [];

/**
 * Remove `leftovers` of one job, whose processes are gone, in the background. Resolves once
 * the teardown has begun: at once, unless MAX_TEARDOWNS_IN_FLIGHT are running. Never rejects:
 * a failure is logged on `log` (CSP_JOB_TEARDOWN_FAILED), with what was left.
 */
export async function tearDownInBackground(leftovers: readonly Leftover[], log: Logger): Promise<void> {
  if (leftovers.length === 0) return;
  while (inFlight.size >= MAX_TEARDOWNS_IN_FLIGHT) await new Promise<void>((resolve) => waitingForRoom.push(resolve));
  const removals = leftovers.map((leftover) => {
    const removal = Promise.resolve()
      .then(leftover.remove)
      .catch((cause: unknown) => {
        const err = Errors.JOB_TEARDOWN_FAILED([leftover.what, cause instanceof Error ? cause.message : String(cause)], { cause });
        log.warn({ err, code: err.code, hint: err.hint }, err.message);
      });
    if (leftover.private) {
      privateInFlight.add(removal);
      void removal.then(() => privateInFlight.delete(removal));
    }
    return removal;
  });
  const teardown = Promise.all(removals).then(() => {
    inFlight.delete(teardown);
    waitingForRoom.shift()?.();
  });
  inFlight.add(teardown);
}

/**
 * Resolves once every private leftover (a job's directory) handed over so far is removed, or its
 * removal failed and was logged. A teardown still waiting for room may hold one: that waits too.
 */
export async function privateLeftoversGone(): Promise<void> {
  while (privateInFlight.size > 0 || waitingForRoom.length > 0) await Promise.all([...privateInFlight, ...(waitingForRoom.length > 0 ? inFlight : [])]);
}

/** Resolves once no teardown is running or waiting for room, those begun meanwhile included. */
export async function jobTeardownsSettled(): Promise<void> {
  while (inFlight.size > 0 || waitingForRoom.length > 0) await Promise.all([...inFlight]);
}

/** Teardowns running now (for metrics and tests). */
export function jobTeardownsInFlight(): number {
  return inFlight.size;
}
