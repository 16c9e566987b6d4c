/**
 * A worker's identity: given (flag or config), or generated once and kept in
 * $CASPARIAN_HOME/worker_id so that a restarted worker is the same worker to the Sentinel.
 */
import { randomBytes } from "node:crypto";
import { link, mkdir, readFile, rename, unlink, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join, resolve } from "node:path";

export const WORKER_ID_FILE = "worker_id";

/** $CASPARIAN_HOME, else ~/.casparian_flow. */
export function casparianHome(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.CASPARIAN_HOME?.trim();
  return fromEnv ? resolve(fromEnv) : join(homedir(), ".casparian_flow");
}

export function generateWorkerId(): string {
  return `w-${randomBytes(6).toString("hex")}`;
}

/** The explicit id when there is one; otherwise the persisted one, created on first use. */
export async function resolveWorkerId(options: { explicit?: string | null; home: string }): Promise<string> {
  if (options.explicit) return options.explicit;
  const file = join(options.home, WORKER_ID_FILE);
  const existing = await readFile(file, "utf8").then(
    (text) => text.trim(),
    (err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return "";
      throw err;
    },
  );
  if (existing) return existing;
  const id = generateWorkerId();
  await mkdir(options.home, { recursive: true });
  // Write, then hard-link into place: nobody reads a half-written id, and of two workers
  // starting at once on a fresh home the second finds the first one's id (EEXIST) and
  // uses it, so both are the same worker to the Sentinel.
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${id}\n`, "utf8");
  try {
    await link(tmp, file);
    return id;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return (await readFile(file, "utf8")).trim() || id;
    if (code !== "EPERM" && code !== "ENOTSUP" && code !== "EOPNOTSUPP") throw err;
    // No hard links on this filesystem: last writer wins.
    await rename(tmp, file);
    return id;
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}
