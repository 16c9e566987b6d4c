/**
 * Which inputs a run processes, and which it skips: an input is unchanged, and
 * skipped, when its last run succeeded with the same recipe (plugin source, lockfile
 * hash, sinks, plugin config) and its identity is the same: size and mtime, or, when
 * only the mtime moved, the same content hash. `--all` processes every input.
 */
import { createHash } from "node:crypto";
import { contentSha256, outputName, type InputFile, type NamedInput } from "./inputs.js";
import type { RunState } from "./state.js";

export interface PlannedInput {
  input: NamedInput;
  /** SHA-256 of its content, taken before its job starts. */
  contentSha256: string;
  recipe: string;
}

export interface InputPlan {
  toRun: PlannedInput[];
  unchanged: NamedInput[];
}

/** What makes an input's outputs: the same recipe on the same content gives the same outputs. */
export function recipeOf(parts: { pluginSource: string; envHash: string; sinks: unknown; pluginConfig: unknown }): string {
  const plugin = createHash("sha256").update(parts.pluginSource).digest("hex");
  return createHash("sha256")
    .update(JSON.stringify({ plugin, env: parts.envHash, sinks: parts.sinks, config: parts.pluginConfig ?? null }))
    .digest("hex");
}

const HASH_CONCURRENCY = 4;

export async function planInputs(
  inputs: readonly InputFile[],
  state: RunState,
  options: { inputRoot: string; all: boolean; recipeFor(input: NamedInput): string },
): Promise<InputPlan> {
  const names = state.namesFor(inputs.map((input) => ({ path: input.path, derived: outputName(input.path, options.inputRoot) })));
  const named = inputs.map((input, i) => ({ ...input, name: names[i]! }));
  const decisions = await mapLimit(named, HASH_CONCURRENCY, async (input): Promise<PlannedInput | null> => {
    const recipe = options.recipeFor(input);
    const record = state.lookup(input.path);
    const mtimeNs = input.mtimeNs.toString();
    const reusable = !options.all && record !== undefined && record.lastOutcome === "succeeded" && record.recipe === recipe && record.size === input.size;
    if (reusable && record.mtimeNs === mtimeNs) return null;
    const sha = await contentSha256(input.path, input.size);
    if (reusable && record.contentSha256 === sha) {
      state.touch(input.path, input.size, mtimeNs);
      return null;
    }
    return { input, contentSha256: sha, recipe };
  });
  const toRun: PlannedInput[] = [];
  const unchanged: NamedInput[] = [];
  for (const [i, decision] of decisions.entries()) {
    if (decision === null) unchanged.push(named[i]!);
    else toRun.push(decision);
  }
  return { toRun, unchanged };
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!);
    }
  });
  await Promise.all(lanes);
  return results;
}
