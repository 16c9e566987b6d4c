/**
 * Reads a uv.lock just far enough to rebuild the project file uv needs beside it.
 *
 * `uv sync --frozen` installs exactly what the lock says, but only for a project
 * whose name matches the lock's root package, so the manager writes a pyproject.toml
 * synthesized from that root (name, version, requires-dist, requires-python). With
 * `--frozen` uv takes the dependency set from the lock, never from our pyproject, so
 * the synthesized dependency list only has to be plausible, not exhaustive.
 *
 * Three shapes of lock exist:
 *  - project: a `[[package]]` whose source is the project directory itself (`.`);
 *  - script:  made by `uv lock --script`, no root package but a `[manifest] requirements`;
 *  - empty:   no packages at all (e.g. `version = 1\nrequires-python = ">=3.11"`): a bare venv.
 */
import { parse, stringify, type TomlPrimitive } from "smol-toml";

export interface LockRequirement {
  name: string;
  specifier?: string;
  marker?: string;
  extras?: string[];
}

export type LockPlan =
  | { kind: "project"; name: string; version: string; requiresPython: string | null; requirements: LockRequirement[]; hasPackages: true }
  | { kind: "script"; requiresPython: string | null; requirements: LockRequirement[] }
  | { kind: "empty"; requiresPython: string | null };

type TomlTable = Record<string, TomlPrimitive>;

function isTable(value: unknown): value is TomlTable {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

function str(value: unknown): string | undefined {
  return typeof value === "string" ? value : undefined;
}

/** The directory-like sources uv records for the project being locked. */
function isRootSource(source: unknown): boolean {
  if (!isTable(source)) return false;
  return ["virtual", "editable", "directory"].some((kind) => source[kind] === ".");
}

function requirementsOf(list: unknown): LockRequirement[] {
  if (!Array.isArray(list)) return [];
  const out: LockRequirement[] = [];
  for (const item of list) {
    if (!isTable(item)) continue;
    const name = str(item.name);
    if (!name) continue;
    const extras = Array.isArray(item.extra) ? item.extra.filter((e): e is string => typeof e === "string") : undefined;
    out.push({ name, specifier: str(item.specifier), marker: str(item.marker), extras: extras?.length ? extras : undefined });
  }
  return out;
}

/** Throws a plain Error with a human message; the manager wraps it in ENV_BUILD_FAILED. */
export function planFromLock(lockfileContent: string): LockPlan {
  let doc: TomlTable;
  try {
    doc = parse(lockfileContent) as TomlTable;
  } catch (err) {
    throw new Error(`lockfile is not valid TOML: ${(err as Error).message.split("\n")[0]}`);
  }
  const requiresPython = str(doc["requires-python"]) ?? null;
  const packages = Array.isArray(doc.package) ? doc.package.filter(isTable) : [];
  const manifest = isTable(doc.manifest) ? doc.manifest : undefined;

  const root = packages.find((p) => isRootSource(p.source));
  if (root) {
    const metadata = isTable(root.metadata) ? root.metadata : {};
    return {
      kind: "project",
      name: str(root.name) ?? "casparian-env",
      version: str(root.version) ?? "0.0.0",
      requiresPython,
      requirements: requirementsOf(metadata["requires-dist"]),
      hasPackages: true,
    };
  }
  if (manifest && Array.isArray(manifest.requirements)) {
    return { kind: "script", requiresPython, requirements: requirementsOf(manifest.requirements) };
  }
  if (packages.length === 0) return { kind: "empty", requiresPython };
  throw new Error(
    "lockfile has packages but no root package (source = '.') and no [manifest] requirements; lock a project with `uv lock` or a script with `uv lock --script`",
  );
}

/** PEP 508 text for one requirement, e.g. `pandas[excel]>=2.2 ; python_version >= '3.11'`. */
export function pep508(req: LockRequirement): string {
  const extras = req.extras ? `[${req.extras.join(",")}]` : "";
  const marker = req.marker ? ` ; ${req.marker}` : "";
  return `${req.name}${extras}${req.specifier ?? ""}${marker}`;
}

/** pyproject.toml for a project lock: a virtual project, so uv never tries to build its (absent) source. */
export function synthesizePyproject(plan: Extract<LockPlan, { kind: "project" }>): string {
  const project: TomlTable = { name: plan.name, version: plan.version, dependencies: plan.requirements.map(pep508) };
  if (plan.requiresPython) project["requires-python"] = plan.requiresPython;
  return `${stringify({ project, tool: { uv: { package: false } } })}\n`;
}

/** A PEP 723 script whose inline metadata matches a `uv lock --script` lock. */
export function synthesizeScript(plan: Extract<LockPlan, { kind: "script" }>): string {
  const meta: TomlTable = { dependencies: plan.requirements.map(pep508) };
  if (plan.requiresPython) meta["requires-python"] = plan.requiresPython;
  const body = stringify(meta)
    .split("\n")
    .map((line) => (line ? `# ${line}` : "#"))
    .join("\n");
  return `# /// script\n${body.replace(/\n#$/, "")}\n# ///\n`;
}
