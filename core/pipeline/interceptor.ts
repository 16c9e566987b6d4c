/**
 * The pipeline's one interceptor (tapable `intercept`, as webpack's Compilation uses it):
 * every tap of every hook is wrapped once, at registration, to
 *
 *  - apply its hook's failure policy (hooks/index.ts FAILURE_POLICY): `stop` rethrows,
 *    `record` marks the job's outcome FAILED and lets the next tap run, `settle` logs and
 *    lets every other tap finish, so a parallel hook resolves only after its last tap;
 *  - name the culprit: every failure is logged with its hook and tap name, and a
 *    CasparianError gets them in its context;
 *  - time it: milliseconds per hook per job, which become the receipt's stage metrics
 *    (no stopwatch anywhere else).
 *
 * Callback taps (tapAsync) are refused at registration (Fastify's FST_ERR_HOOK_INVALID_ASYNC_HANDLER):
 * their errors could not be told from their results, and STYLE allows promise taps only.
 */
import { performance } from "node:perf_hooks";
import { FAILURE_POLICY, type HookName, type WorkerHooks } from "../../hooks/index.js";
import { CasparianError, Errors, errorMessage } from "../kernel/errors.js";
import type { JobOutcome } from "../kernel/job.js";
import type { Logger } from "../kernel/logger.js";

/** Where the receipt's stage metrics come from: tap time per hook, plus the job's wall time. */
const STAGES = {
  dispatch_ms: ["beforeDispatch", "jobStart"],
  write_ms: ["onBatch"],
  commit_ms: ["prepareCommit", "onConclude"],
} as const satisfies Record<string, readonly HookName[]>;

export type StageMetrics = { [K in keyof typeof STAGES | "duration_ms"]: number };

interface Timing {
  readonly startedAt: number;
  readonly ms: Partial<Record<HookName, number>>;
}

/** Which tap of which hook threw an error: for the job-failed log line. */
const culprits = new WeakMap<object, { hook: HookName; tap: string }>();

/** The hook and tap that threw `err`, when a tap did. */
export function failingTap(err: unknown): { hook: HookName; tap: string } | undefined {
  return typeof err === "object" && err !== null ? culprits.get(err) : undefined;
}

export class HookInterceptor {
  readonly #logger: Logger;
  readonly #timings = new Map<bigint, Timing>();

  constructor(logger: Logger) {
    this.#logger = logger;
  }

  /** Wrap every tap of `hooks`, those already there and those still to come. */
  install(hooks: WorkerHooks): void {
    for (const name of Object.keys(hooks) as HookName[]) {
      const hook = hooks[name] as unknown as { intercept(interceptor: { name: string; register(tap: Tap): Tap; call?: (...args: unknown[]) => void }): void };
      hook.intercept({
        name: "Pipeline",
        register: (tap) => this.#wrap(name, tap),
        // The job's clock starts when its first hook is called.
        call: name === "beforeDispatch" ? (request) => this.#begin(jobIdOf(request)) : undefined,
      });
    }
  }

  /** The stage metrics of a job, and forget it. Call once the job's onConclude is done. */
  finish(jobId: bigint): StageMetrics {
    const timing = this.#timings.get(jobId);
    this.#timings.delete(jobId);
    const ms = timing?.ms ?? {};
    const sum = (hooks: readonly HookName[]) => Math.round(hooks.reduce((total, hook) => total + (ms[hook] ?? 0), 0));
    return {
      dispatch_ms: sum(STAGES.dispatch_ms),
      write_ms: sum(STAGES.write_ms),
      commit_ms: sum(STAGES.commit_ms),
      duration_ms: timing ? Math.round(performance.now() - timing.startedAt) : 0,
    };
  }

  #begin(jobId: bigint | undefined): void {
    if (jobId !== undefined) this.#timings.set(jobId, { startedAt: performance.now(), ms: {} });
  }

  #record(hook: HookName, args: unknown[], started: number): void {
    const jobId = jobIdOf(args.at(-1));
    if (jobId === undefined) return;
    const timing = this.#timings.get(jobId);
    if (timing) timing.ms[hook] = (timing.ms[hook] ?? 0) + (performance.now() - started);
  }

  #wrap(hook: HookName, tap: Tap): Tap {
    if (tap.type === "async") {
      throw Errors.HOOK_CALLBACK_TAP([tap.name, hook]);
    }
    const fn = tap.fn as (...args: unknown[]) => unknown;
    const failed = (err: unknown, args: unknown[]): void => this.#failed(hook, tap.name, err, args);
    const record = (args: unknown[], started: number): void => this.#record(hook, args, started);
    if (tap.type === "sync") {
      return {
        ...tap,
        fn: (...args: unknown[]) => {
          const started = performance.now();
          try {
            return fn(...args);
          } catch (err) {
            failed(err, args);
            return undefined;
          } finally {
            record(args, started);
          }
        },
      };
    }
    return {
      ...tap,
      fn: async (...args: unknown[]) => {
        const started = performance.now();
        try {
          return await fn(...args);
        } catch (err) {
          failed(err, args);
          return undefined;
        } finally {
          record(args, started);
        }
      },
    };
  }

  /** Apply the hook's policy to a tap's error: rethrow (stop), or record/log it and go on. */
  #failed(hook: HookName, tap: string, err: unknown, args: unknown[]): void {
    if (typeof err === "object" && err !== null && !culprits.has(err)) culprits.set(err, { hook, tap });
    if (err instanceof CasparianError) {
      err.context.hook ??= hook;
      err.context.tap ??= tap;
    }
    const jobId = jobIdOf(args.at(-1));
    switch (FAILURE_POLICY[hook]) {
      case "stop":
        throw err;
      case "record": {
        const outcome = args[0] as JobOutcome;
        this.#logger.warn({ err, hook, tap, job_id: jobId }, "%s tap %s failed; the job fails, the other taps still run: %s", hook, tap, errorMessage(err));
        outcome.status = "FAILED";
        outcome.error ??= err instanceof Error ? err : new Error(String(err));
        return;
      }
      case "settle":
        this.#logger.warn({ err, hook, tap, job_id: jobId }, "%s tap %s failed (logged only; the other taps still run): %s", hook, tap, errorMessage(err));
        return;
    }
  }
}

interface Tap {
  name: string;
  type: "sync" | "async" | "promise";
  fn: (...args: never[]) => unknown;
  stage?: number;
  before?: string | string[];
}

/** The job id carried by a hook argument (a JobContext or a DispatchRequest), if any. */
function jobIdOf(value: unknown): bigint | undefined {
  if (typeof value !== "object" || value === null || !("jobId" in value)) return undefined;
  const jobId = (value as { jobId: unknown }).jobId;
  return typeof jobId === "bigint" ? jobId : undefined;
}
