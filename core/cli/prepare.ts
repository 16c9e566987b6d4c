/**
 * `casparian-worker prepare`: provision environments before any job arrives. Neither of
 * upstream's Sentinels sends PREPARE_ENV, so under them a DISPATCH for an env this worker
 * never built fails with CSP_ENV_NOT_PROVISIONED. This builds exactly what PREPARE_ENV
 * builds (the same EnvManager, env_hash = sha256 of the lockfile text), under
 * $CASPARIAN_HOME/venvs/<env_hash>, and lists and prunes what is there.
 */
import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { loadConfig } from "../config/loader.js";
import { listEnvs, matchEnvs, removeEnvs, type EnvEntry } from "../env/inventory.js";
import { EnvManager, findUv } from "../env/manager.js";
import { runUv } from "../env/uv.js";
import { Errors } from "../kernel/errors.js";
import { createLogger } from "../kernel/logger.js";
import { casparianHome } from "../worker/worker-id.js";

export function prepareHelp(program: string): string {
  return `Usage: ${program} prepare <uv.lock | script.py.lock | project dir> [--python VERSION]
       ${program} prepare --list
       ${program} prepare --prune HASH [--prune HASH ...]
       ${program} prepare --prune-unused DAYS

Builds the environment a DISPATCH with env_hash = sha256(lockfile) needs, exactly as
PREPARE_ENV would, under $CASPARIAN_HOME/venvs/<env_hash>, and prints the hash. Give the
lockfile the plugin was published with: its hash is what the Sentinel sends. A project
directory without uv.lock is locked first (\`uv lock\`, which writes uv.lock there).

Options:
  --python VERSION   Python for the env (as PREPARE_ENV's python_version), e.g. 3.11
  --list             list provisioned environments (hash, size, last used)
  --prune HASH       remove this environment (full hash or a unique prefix of 8+ digits)
  --prune-unused D   remove environments not used for D days
  --home DIR         environments live in DIR/venvs (default $CASPARIAN_HOME, ~/.casparian_flow)
  --config FILE      read home and environments.uv from this config file (default: searched)
  -h, --help         show this help

Stop workers sharing the home before pruning an environment they may be running.
`;
}

export async function prepareCommand(argv: string[], program: string): Promise<number> {
  let values: Record<string, string | string[] | boolean | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: {
        python: { type: "string" },
        list: { type: "boolean" },
        prune: { type: "string", multiple: true },
        "prune-unused": { type: "string" },
        home: { type: "string" },
        config: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (err) {
    throw Errors.CLI_USAGE([err instanceof Error ? err.message : String(err)]);
  }
  if (values.help === true) {
    process.stdout.write(prepareHelp(program));
    return 0;
  }
  const cwd = process.cwd();
  const loaded = await loadConfig({ explicitPath: values.config as string | undefined, cwd, command: "worker" });
  const home =
    values.home !== undefined
      ? resolve(cwd, values.home as string)
      : loaded.config.home !== undefined
        ? resolve(loaded.dir, loaded.config.home)
        : casparianHome();
  const uvPath = loaded.config.environments?.uv;
  const actions = [positionals.length > 0, values.list === true, values.prune !== undefined, values["prune-unused"] !== undefined].filter(Boolean).length;
  if (actions !== 1 || positionals.length > 1) {
    throw Errors.CLI_USAGE([`give one lockfile or project directory, or one of --list, --prune, --prune-unused (see ${program} prepare --help)`]);
  }

  if (values.list === true) {
    printList(await listEnvs(home), home);
    return 0;
  }
  if (values.prune !== undefined) {
    const entries = await listEnvs(home);
    const doomed = (values.prune as string[]).flatMap((h) => matchEnvs(entries, h, home));
    await removeEnvs(
      home,
      doomed.map((e) => e.envHash),
    );
    for (const e of doomed) process.stdout.write(`removed ${e.envHash} (${megabytes(e.sizeBytes)})\n`);
    return 0;
  }
  if (values["prune-unused"] !== undefined) {
    const days = Number(values["prune-unused"]);
    if (!Number.isFinite(days) || days < 0) throw Errors.CLI_USAGE([`--prune-unused expects a number of days >= 0, got "${String(values["prune-unused"])}"`]);
    const cutoff = Date.now() - days * 86_400_000;
    const doomed = (await listEnvs(home)).filter((e) => Date.parse(e.lastUsed) < cutoff);
    await removeEnvs(
      home,
      doomed.map((e) => e.envHash),
    );
    for (const e of doomed) process.stdout.write(`removed ${e.envHash} (${megabytes(e.sizeBytes)}, last used ${e.lastUsed})\n`);
    if (doomed.length === 0) process.stdout.write(`nothing unused for ${days} days under ${join(home, "venvs")}\n`);
    return 0;
  }

  const lockfile = await lockfileFor(resolve(cwd, positionals[0]!), uvPath);
  const content = await readFile(lockfile, "utf8");
  const envHash = createHash("sha256").update(content, "utf8").digest("hex");
  const logger = createLogger({ level: "warn", fd: 2 });
  const manager = new EnvManager({ home, logger, uvPath, maxEnvBytes: loaded.config.environments?.maxEnvBytes, maxEnvs: loaded.config.environments?.maxEnvs });
  const began = Date.now();
  const ready = await manager.prepare({ env_hash: envHash, lockfile_content: content, python_version: (values.python as string | undefined) ?? null });
  const how = ready.cached ? "already provisioned" : `built in ${((Date.now() - began) / 1000).toFixed(1)} s`;
  process.stdout.write(`env_hash ${ready.env_hash}\n${how}: ${ready.interpreter_path}\n`);
  if (content.includes("\r\n")) {
    const lf = createHash("sha256").update(content.replace(/\r\n/g, "\n"), "utf8").digest("hex");
    process.stdout.write(`note: ${lockfile} has CRLF line endings; a publisher that reads it as text with LF endings sends env_hash ${lf}\n`);
  }
  return 0;
}

/** The lockfile a path stands for: the file itself, or a project directory's uv.lock (locked first if missing). */
async function lockfileFor(path: string, uvPath: string | undefined): Promise<string> {
  const info = await stat(path).catch(() => null);
  if (info === null) throw Errors.CLI_USAGE([`${path} does not exist`]);
  if (info.isFile()) return path;
  const lock = join(path, "uv.lock");
  if (
    await stat(lock).then(
      (s) => s.isFile(),
      () => false,
    )
  )
    return lock;
  if (
    !(await stat(join(path, "pyproject.toml")).then(
      (s) => s.isFile(),
      () => false,
    ))
  ) {
    throw Errors.CLI_USAGE([`${path} has neither uv.lock nor pyproject.toml`]);
  }
  await runUv(await findUv(uvPath), ["lock", "--quiet"], { cwd: path });
  return lock;
}

function printList(entries: EnvEntry[], home: string): void {
  if (entries.length === 0) {
    process.stdout.write(`no environments under ${join(home, "venvs")}\n`);
    return;
  }
  for (const e of entries) process.stdout.write(`${e.envHash}  ${megabytes(e.sizeBytes).padStart(9)}  last used ${e.lastUsed}\n`);
  const total = entries.reduce((sum, e) => sum + e.sizeBytes, 0);
  process.stdout.write(`${entries.length} environment(s), ${megabytes(total)} under ${join(home, "venvs")}\n`);
}

function megabytes(bytes: number): string {
  return `${(bytes / 1_000_000).toFixed(1)} MB`;
}
