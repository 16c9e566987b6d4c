/**
 * The output directory can hold the run: it is a directory or can be made one. A file
 * there, or a parent that cannot be written, is a usage error, not a failed run.
 */
import { mkdir, stat } from "node:fs/promises";
import { dirname } from "node:path";
import { Errors } from "../kernel/errors.js";

export async function checkOutputRoot(outputRoot: string, create: boolean): Promise<void> {
  const info = await stat(outputRoot).catch((err: NodeJS.ErrnoException) => (err.code === "ENOENT" || err.code === "ENOTDIR" ? null : Promise.reject(err)));
  if (info !== null && !info.isDirectory()) {
    throw Errors.CLI_USAGE([`--output ${outputRoot} is a file, not a directory`], { hint: "name a directory (it is created when missing)" });
  }
  if (info !== null) return;
  let parent = dirname(outputRoot);
  while ((await stat(parent).catch(() => null)) === null && dirname(parent) !== parent) parent = dirname(parent);
  if (!(await stat(parent)).isDirectory()) {
    throw Errors.CLI_USAGE([`--output ${outputRoot} cannot be created: ${parent} is a file`], { hint: "name a directory (it is created when missing)" });
  }
  if (!create) return;
  try {
    await mkdir(outputRoot, { recursive: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "error";
    throw Errors.CLI_USAGE([`--output ${outputRoot} cannot be created (${code})`], { hint: "choose a directory you can write to" });
  }
}
