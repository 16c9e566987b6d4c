/**
 * Finding and running uv. uv is the only tool that touches Python packages: the
 * worker never pip-installs anything itself.
 */
import { access, constants } from "node:fs/promises";
import { homedir } from "node:os";
import { delimiter, join } from "node:path";
import { Errors } from "../kernel/errors.js";
import { describeFailure, runCommand } from "../kernel/process.js";

/** True when `path` exists and this process may execute it. */
export async function isExecutable(path: string): Promise<boolean> {
  try {
    await access(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Places uv's installers and `pip install --user uv` put the binary. */
function usualPlaces(): string[] {
  const home = homedir();
  const places = [join(home, ".local", "bin", "uv"), join(home, ".cargo", "bin", "uv"), "/usr/local/bin/uv", "/opt/homebrew/bin/uv"];
  if (process.env.XDG_BIN_HOME) places.unshift(join(process.env.XDG_BIN_HOME, "uv"));
  if (process.env.PYTHONUSERBASE) places.push(join(process.env.PYTHONUSERBASE, "bin", "uv"));
  // macOS user base for `pip install --user` (Library/Python/<ver>/bin) is covered by the python lookup below.
  return places;
}

/** `python3 -m site --user-base`/bin: where `python3 -m pip install --user uv` puts it. */
async function pythonUserBin(): Promise<string | null> {
  const { ok, stdout } = await runCommand("python3", ["-m", "site", "--user-base"], { timeoutMs: 5000 });
  return ok && stdout.trim() ? join(stdout.trim(), "bin", "uv") : null;
}

/**
 * The uv binary: `explicit` (config), then $UV, PATH, and the usual install places.
 * Throws Errors.ENV_UV_MISSING (with the install hint) when none is executable.
 */
export async function findUv(explicit?: string): Promise<string> {
  const candidates: string[] = [];
  if (explicit) candidates.push(explicit);
  if (process.env.UV) candidates.push(process.env.UV);
  for (const dir of (process.env.PATH ?? "").split(delimiter)) if (dir) candidates.push(join(dir, "uv"));
  candidates.push(...usualPlaces());
  for (const candidate of candidates) if (await isExecutable(candidate)) return candidate;
  const userBin = await pythonUserBin();
  if (userBin && (await isExecutable(userBin))) return userBin;
  throw Errors.ENV_UV_MISSING([], { context: { searched: explicit ? [explicit, ...candidates.slice(1)] : candidates } });
}

export interface UvRunOptions {
  cwd: string;
  /** Extra variables on top of the worker's environment (uv's own UV_* settings pass through). */
  env?: Record<string, string | undefined>;
  /** Names of the worker's variables uv may see besides UV_BASE_ENV and every UV_* one. */
  passEnv?: readonly string[];
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** The last lines of uv's stderr: enough to see the resolver's or installer's complaint. */
function tail(text: string, lines = 15, maxChars = 4000): string {
  const kept = text.trim().split("\n").slice(-lines).join("\n");
  return kept.length > maxChars ? kept.slice(-maxChars) : kept;
}

/**
 * The worker's variables uv always sees (with every UV_* one): what it needs to find tools, its
 * cache, a temp dir, and the site's CA certificates (paths to public certificates, never secrets;
 * without them uv cannot download anything behind a TLS-inspecting proxy). Proxy URLs can carry
 * credentials, so they pass only when environments.env names them.
 */
export const UV_BASE_ENV = ["PATH", "HOME", "TMPDIR", "LANG", "SSL_CERT_FILE", "SSL_CERT_DIR"] as const;

/**
 * uv's environment: UV_BASE_ENV, UV_*, and `passEnv`, nothing else. uv runs build backends
 * (a lockfile's local-directory dependency runs its setup.py), so the worker's secrets must
 * not be in reach; proxies or certificates a site needs are named in environments.env.
 */
export function uvEnvironment(passEnv: readonly string[] = [], source: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const env: Record<string, string> = {};
  const names = new Set<string>([...UV_BASE_ENV, ...passEnv, ...Object.keys(source).filter((name) => name.startsWith("UV_"))]);
  for (const name of names) {
    const value = source[name];
    if (value !== undefined) env[name] = value;
  }
  return env;
}

/** Runs `uv <args>`; on failure throws an Error whose message is the command and uv's stderr tail. */
export async function runUv(uvPath: string, args: readonly string[], options: UvRunOptions): Promise<string> {
  const env: Record<string, string> = { ...uvEnvironment(options.passEnv) };
  for (const [name, value] of Object.entries(options.env ?? {})) {
    if (value === undefined) delete env[name];
    else env[name] = value;
  }
  const timeoutMs = options.timeoutMs ?? 15 * 60_000;
  const result = await runCommand(uvPath, args, { cwd: options.cwd, env, timeoutMs, signal: options.signal });
  if (!result.ok) {
    throw new Error(`\`uv ${args.join(" ")}\` failed (${describeFailure(result, timeoutMs)}): ${tail(result.stderr) || tail(result.stdout)}`);
  }
  return result.stdout;
}
