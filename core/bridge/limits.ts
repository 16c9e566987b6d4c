/**
 * Resource limits of a guest (bridge.limits): set by the guest on itself, soft and hard,
 * before plugin code runs (casparian_guest/confine.py), so the plugin cannot raise them.
 * A job that runs into one fails with CSP_GUEST_LIMIT naming the limit and its config key;
 * the worker is not affected.
 */
import { type CasparianError, type ErrorContext, Errors } from "../kernel/errors.js";

/** Each limit in its config unit; false: not limited. */
export interface GuestLimits {
  /** Virtual memory of the guest process (RLIMIT_AS), MiB. */
  addressSpaceMb?: number | false;
  /** CPU time of the guest process (RLIMIT_CPU), seconds: SIGXCPU ends it. */
  cpuSeconds?: number | false;
  /** Open file descriptors (RLIMIT_NOFILE). */
  openFiles?: number | false;
  /** Largest file the guest may write (RLIMIT_FSIZE), MiB. */
  fileSizeMb?: number | false;
}

export type GuestLimitKey = keyof GuestLimits;

/**
 * Generous on purpose: they stop a runaway plugin, not a big job. Address space is virtual
 * memory, several times what a process touches (pandas + pyarrow + polars + duckdb reserve
 * about 2.7 GB on 2 cores before reading a byte, more with more cores).
 */
export const DEFAULT_GUEST_LIMITS: Readonly<Required<GuestLimits>> = {
  addressSpaceMb: 32 * 1024,
  cpuSeconds: 4 * 3600,
  openFiles: 4096,
  fileSizeMb: 64 * 1024,
};

/** The guest reads its limits from this variable (JSON, config units). */
export const GUEST_LIMITS_ENV = "CASPARIAN_GUEST_LIMITS";

const DESCRIPTIONS: Record<GuestLimitKey, { what: string; unit: string }> = {
  addressSpaceMb: { what: "address space", unit: " MiB" },
  cpuSeconds: { what: "CPU time", unit: " s" },
  openFiles: { what: "open files", unit: "" },
  fileSizeMb: { what: "file size", unit: " MiB" },
};

export function effectiveLimits(limits: GuestLimits | undefined): Required<GuestLimits> {
  return { ...DEFAULT_GUEST_LIMITS, ...limits };
}

/** The guest's variable: only the limits that are set. */
export function limitsEnv(limits: Required<GuestLimits>): Record<string, string> {
  const set = Object.fromEntries(Object.entries(limits).filter(([, value]) => typeof value === "number" && value > 0));
  return { [GUEST_LIMITS_ENV]: JSON.stringify(set) };
}

export function isLimitKey(key: unknown): key is GuestLimitKey {
  return typeof key === "string" && Object.hasOwn(DESCRIPTIONS, key);
}

/** CSP_GUEST_LIMIT for `key`, with what the guest said (its error line, or how it died). */
export function limitExceeded(key: GuestLimitKey, limits: Required<GuestLimits>, detail: string, context: ErrorContext): CasparianError {
  const { what, unit } = DESCRIPTIONS[key];
  return Errors.GUEST_LIMIT([what, `${limits[key]}${unit}`, key, detail], {
    context: { ...context, limit: key },
    hint: `raise bridge.limits.${key} in the config (false: no limit) if the plugin legitimately needs more`,
  });
}
