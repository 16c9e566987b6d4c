/**
 * `<home>/venvs/.metadata.json`: one entry per environment (env_hash, created_at,
 * last_used, size_bytes), in both layouts of the earlier workers at once: the Python
 * worker's `{"venvs": {<hash>: {...}}}` and the Rust worker's `{"entries": [{...}]}` (its
 * serde reader ignores the other key), so a home shared with either keeps its
 * bookkeeping readable by both; a file either of them wrote is read here too. Whether an
 * env may be used is not decided here but by its seal (seal.ts).
 *
 * Written atomically (temp file + rename), so a crash leaves the old file or the new
 * one, never half of one. The directory listing is the truth about which envs exist;
 * this file only adds timestamps and sizes to it.
 */
import { randomBytes } from "node:crypto";
import { lstat, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";

export interface EnvMetadata {
  env_hash: string;
  created_at: string;
  last_used: string;
  size_bytes: number;
}

export interface MetadataFile {
  venvs: Record<string, EnvMetadata>;
}

export const METADATA_FILE = ".metadata.json";

export async function readMetadata(venvsDir: string): Promise<MetadataFile> {
  try {
    const parsed = JSON.parse(await readFile(join(venvsDir, METADATA_FILE), "utf8")) as unknown;
    if (typeof parsed === "object" && parsed !== null) {
      const { venvs, entries } = parsed as { venvs?: unknown; entries?: unknown };
      if (typeof venvs === "object" && venvs !== null && !Array.isArray(venvs)) return { venvs: venvs as MetadataFile["venvs"] };
      if (Array.isArray(entries)) {
        const fromRust: MetadataFile = { venvs: {} };
        for (const entry of entries as EnvMetadata[]) if (typeof entry?.env_hash === "string") fromRust.venvs[entry.env_hash] = entry;
        return fromRust;
      }
    }
  } catch {
    // Missing or corrupt: start over; sizes are recomputed from disk on demand.
  }
  return { venvs: {} };
}

export async function writeMetadata(venvsDir: string, data: MetadataFile): Promise<void> {
  const target = join(venvsDir, METADATA_FILE);
  const temp = `${target}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  try {
    const both = { venvs: data.venvs, entries: Object.values(data.venvs) };
    await writeFile(temp, `${JSON.stringify(both, null, 2)}\n`, { mode: 0o644 });
    await rename(temp, target);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
}

/** Bytes used by a directory tree; hard links (uv links from its cache) are counted once. */
export async function directorySize(root: string): Promise<number> {
  const seen = new Set<string>();
  let total = 0;
  const stack = [root];
  while (stack.length > 0) {
    const dir = stack.pop()!;
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      continue;
    }
    for (const entry of entries) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) {
        stack.push(path);
        continue;
      }
      try {
        const st = await lstat(path);
        const key = `${st.dev}:${st.ino}`;
        if (st.nlink > 1) {
          if (seen.has(key)) continue;
          seen.add(key);
        }
        total += st.size;
      } catch {
        // Vanished while we walked: not ours to count.
      }
    }
  }
  return total;
}
