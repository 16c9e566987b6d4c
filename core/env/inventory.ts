/**
 * What is provisioned under `<home>/venvs`, and removing it: the list and prune halves of
 * `casparian-worker prepare`. The directory listing is the truth (a directory named by a
 * bare hash is a complete env, manager.ts); `.metadata.json` adds timestamps and sizes.
 */
import { randomBytes } from "node:crypto";
import { readdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { Errors } from "../kernel/errors.js";
import { directorySize, readMetadata, writeMetadata } from "./metadata.js";

const HASH_RE = /^[0-9a-f]{64}$/;
/** A prefix shorter than this could match more than the operator meant. */
const MIN_PREFIX = 8;

export interface EnvEntry {
  envHash: string;
  path: string;
  createdAt: string;
  lastUsed: string;
  sizeBytes: number;
}

export async function listEnvs(home: string): Promise<EnvEntry[]> {
  const venvsDir = join(home, "venvs");
  let names: string[];
  try {
    names = await readdir(venvsDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const meta = await readMetadata(venvsDir);
  const entries: EnvEntry[] = [];
  for (const name of names.filter((n) => HASH_RE.test(n)).sort()) {
    const path = join(venvsDir, name);
    const known = meta.venvs[name];
    const when = known ? undefined : (await stat(path)).mtime.toISOString();
    entries.push({
      envHash: name,
      path,
      createdAt: known?.created_at ?? when!,
      lastUsed: known?.last_used ?? when!,
      sizeBytes: known?.size_bytes ?? (await directorySize(path)),
    });
  }
  return entries;
}

/** The envs a full hash or a unique prefix (>= 8 hex digits) names; throws when it names none. */
export function matchEnvs(entries: readonly EnvEntry[], hashOrPrefix: string, home: string): EnvEntry[] {
  const wanted = hashOrPrefix.toLowerCase();
  if (!/^[0-9a-f]+$/.test(wanted) || wanted.length < MIN_PREFIX) {
    throw Errors.CLI_USAGE([`"${hashOrPrefix}" is not an env hash or a prefix of at least ${MIN_PREFIX} hex digits`]);
  }
  const found = entries.filter((e) => e.envHash.startsWith(wanted));
  if (found.length === 0) throw Errors.ENV_NOT_FOUND([hashOrPrefix, join(home, "venvs")]);
  if (found.length > 1) throw Errors.CLI_USAGE([`"${hashOrPrefix}" matches ${found.length} environments; give more digits`]);
  return found;
}

/**
 * Removes envs: renamed first (a half-deleted env must never look ready to a worker
 * sharing the home), then deleted, then dropped from the metadata.
 */
export async function removeEnvs(home: string, hashes: readonly string[]): Promise<void> {
  const venvsDir = join(home, "venvs");
  for (const hash of hashes) {
    const trash = join(venvsDir, `.evict-${hash.slice(0, 16)}-${process.pid}-${randomBytes(4).toString("hex")}`);
    await rename(join(venvsDir, hash), trash);
    await rm(trash, { recursive: true, force: true });
  }
  const meta = await readMetadata(venvsDir);
  for (const hash of hashes) delete meta.venvs[hash];
  await writeMetadata(venvsDir, meta);
}
