/**
 * The facts a guest starts from, and so which warm parent (warm-pool.ts) a job forks from:
 * built here once, for a job (host.ts) and for a parent started before its first job
 * (core/worker/warm-start.ts), so that the two always agree on the parent's key.
 *
 * Kept free of the job modules (Arrow, frames): a worker loads it before them, to start a
 * warm parent while they load.
 */
import { dirname, join } from "node:path";
import { SHIM_PYCACHE_ENV, shimBytecodeDir, shimPath } from "./shim-bytecode.js";
import type { Access } from "./slot-user.js";
import type { WarmKey } from "./warm-pool.js";

/** Variables every guest gets from the worker's environment (when set). */
export const BASE_ALLOWED_ENV = ["PATH", "LANG", "TZ", "TMPDIR", "HOME"] as const;

export { shimPath };

/** The environment every guest (and every warm parent) starts with: the allowlist, nothing of the worker's own. */
export function guestEnv(allowEnv: readonly string[] | undefined): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of [...BASE_ALLOWED_ENV, ...(allowEnv ?? [])]) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  const bytecode = shimBytecodeDir();
  if (bytecode !== undefined) env[SHIM_PYCACHE_ENV] = bytecode;
  return { ...env, PYTHONUNBUFFERED: "1", PYTHONDONTWRITEBYTECODE: "1", PYTHONUTF8: "1" };
}

/**
 * What a slot user must reach for any job of an env to run as it (its input aside): the
 * interpreter, the venv, the guest code, and the directory the job directories are made in.
 */
export function envPathsForSlotUser(interpreterPath: string, jobDirParent: string): Array<{ path: string; need: Access }> {
  return [
    { path: interpreterPath, need: "rx" },
    { path: join(dirname(dirname(interpreterPath)), "pyvenv.cfg"), need: "r" },
    { path: shimPath(), need: "rx" },
    { path: jobDirParent, need: "x" },
  ];
}

export interface WarmFacts {
  interpreterPath: string;
  envIdentity: string | undefined;
  cgroup: boolean | undefined;
  source: string;
  pluginName: string;
  allowEnv: readonly string[] | undefined;
  user: { uid: number; gid: number } | undefined;
}

export function warmKey(facts: WarmFacts): WarmKey {
  return {
    interpreterPath: facts.interpreterPath,
    envIdentity: facts.envIdentity,
    cgroup: facts.cgroup,
    guestPath: shimPath(),
    source: facts.source,
    pluginName: facts.pluginName,
    env: guestEnv(facts.allowEnv),
    user: facts.user,
  };
}
