/**
 * Optional sandboxing of the guest through bubblewrap (`bwrap`, from the OS packages),
 * when `bridge.sandbox` is configured. The guest command is wrapped so that the plugin:
 *   - has no network (its own empty network namespace), unless `network: true`;
 *   - sees the host filesystem read-only (venv and guest code included), unless
 *     `readOnlyRoot: false`, with two writable places only: its job directory (the
 *     staging directory holding its socket) and a private, empty /tmp;
 *   - sees a fresh /dev and /proc of its own pid namespace (no other process on the host),
 *     and no other job's directory (the worker's temp directory is an empty tmpfs to it).
 * The process group stays the worker's to kill (no new session), and the sandbox dies with
 * the guest's parent. A configured sandbox that cannot run fails the job: it never falls
 * back to running the plugin unconfined.
 */
import { access, constants } from "node:fs/promises";
import { delimiter, dirname, join } from "node:path";
import { Errors } from "../kernel/errors.js";

export interface SandboxOptions {
  tool: "bwrap";
  /** Allow network access (the host's network namespace). Default false. */
  network?: boolean;
  /** Mount the host filesystem read-only. Default true. */
  readOnlyRoot?: boolean;
  /** Path to the bwrap binary; default: found on PATH. */
  path?: string;
}

export interface GuestCommand {
  file: string;
  args: string[];
}

/**
 * `command` run inside the sandbox, with `jobDir` its only writable directory besides a
 * private /tmp; `readOnly` (venv, interpreter prefix, guest code, input file) stays visible.
 */
export async function sandboxed(options: SandboxOptions, command: GuestCommand, paths: { jobDir: string; readOnly: readonly string[] }): Promise<GuestCommand> {
  if (options.tool !== "bwrap") throw Errors.SANDBOX_UNAVAILABLE([String(options.tool), 'the only supported tool is "bwrap"']);
  const bwrap = await findBwrap(options.path);
  const args = ["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts"];
  if (options.network !== true) args.push("--unshare-net");
  args.push(options.readOnlyRoot === false ? "--bind" : "--ro-bind", "/", "/");
  args.push("--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp");
  // Other jobs' directories (and sockets: connect() ignores a read-only mount) live beside this one: hide them all.
  const jobsDir = dirname(paths.jobDir);
  if (jobsDir !== "/tmp") args.push("--tmpfs", jobsDir);
  // What the guest needs comes back on top, read-only (even without readOnlyRoot), wherever it lives.
  for (const path of paths.readOnly) args.push("--ro-bind-try", path, path);
  args.push("--bind", paths.jobDir, paths.jobDir, "--chdir", paths.jobDir, "--", command.file, ...command.args);
  return { file: "/bin/sh", args: ["-c", CGROUP_GATE, "casparian-sandbox", bwrap, ...args] };
}

/**
 * bwrap forks the sandboxed process at once, and a fork made before the worker moves bwrap
 * into the job's cgroup (job-scope.ts) would stay outside it. So the shell that becomes bwrap
 * first waits, as the guest itself does, until it is in the cgroup named by
 * CASPARIAN_JOB_CGROUP (when there is one), then execs bwrap. `read` is a builtin: the wait
 * forks nothing until the first 2000 looks have failed (then it sleeps 10 ms a look, 10 s in all).
 */
const CGROUP_GATE = [
  'if [ -n "$CASPARIAN_JOB_CGROUP" ]; then',
  "  n=0",
  '  until [ -n "$inside" ]; do',
  '    while read -r line; do case "$line" in 0::*/"$CASPARIAN_JOB_CGROUP") inside=1 ;; esac; done < /proc/self/cgroup',
  "    n=$((n + 1))",
  '    if [ "$n" -gt 2000 ]; then sleep 0.01; fi',
  '    if [ "$n" -gt 3000 ]; then echo "casparian: the worker did not move the sandbox into cgroup $CASPARIAN_JOB_CGROUP" >&2; exit 70; fi',
  "  done",
  "fi",
  'exec "$@"',
].join("\n");

const found = new Map<string, Promise<string>>();

function findBwrap(configured: string | undefined): Promise<string> {
  const key = configured ?? "";
  let path = found.get(key);
  if (!path) {
    path = locate(configured);
    found.set(key, path);
    path.catch(() => found.delete(key));
  }
  return path;
}

async function locate(configured: string | undefined): Promise<string> {
  const candidates = configured
    ? [configured]
    : (process.env.PATH ?? "/usr/bin:/bin")
        .split(delimiter)
        .filter(Boolean)
        .map((dir) => join(dir, "bwrap"));
  for (const candidate of candidates) {
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // next
    }
  }
  throw Errors.SANDBOX_UNAVAILABLE(["bwrap", configured ? `${configured} is not an executable` : "bwrap is not on PATH"]);
}
