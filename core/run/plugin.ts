/**
 * Looks at a plugin before any job runs, without executing it: the host's python3
 * compiles the source and reads its syntax tree. A syntax error or a plugin with
 * nothing to call is reported once, up front, instead of once per input file.
 *
 * It also reads what the plugin declares about itself: the module-level MANIFEST
 * (through ast.literal_eval, so no plugin code runs in the host; upstream's
 * `PluginMetadata(...)` call by its literal keywords: name, version, sinks, topic(s)) and PEP 723
 * inline script metadata (`# /// script` … `# ///`).
 */
import { readFile } from "node:fs/promises";
import { basename, extname } from "node:path";
import { Errors } from "../kernel/errors.js";
import { describeFailure, runCommand } from "../kernel/process.js";

export interface ManifestSink {
  uri: string;
  mode?: string;
  schema_def?: string | null;
}

export interface PluginManifest {
  name?: string;
  version?: string;
  sinks?: Record<string, ManifestSink | string>;
  /** Topics the plugin publishes besides "output"; each gets a default Parquet sink. */
  topics?: string[];
}

export interface ScriptMetadata {
  dependencies: string[];
  requiresPython: string | null;
  /** The raw TOML of the block: what the lock cache is keyed on. */
  raw: string;
}

export interface PluginInfo {
  path: string;
  /** MANIFEST["name"], else the file name without extension. */
  name: string;
  source: string;
  manifest: PluginManifest | null;
  scriptMetadata: ScriptMetadata | null;
  /** Why MANIFEST was ignored (not a literal, wrong shape), to log once. */
  warnings: string[];
}

/** Runs in the host's python3. Prints one JSON object; never executes the plugin. */
const INSPECT_PY = String.raw`
import ast, json, re, sys, traceback
path = sys.argv[1]
out = {"error": None, "classes": [], "functions": [], "manifest": None, "manifest_error": None, "script": None, "script_error": None}
source = open(path, "rb").read()
try:
    tree = compile(source, path, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    compile(tree, path, "exec", dont_inherit=True)
except SyntaxError as e:
    out["error"] = "".join(traceback.format_exception_only(type(e), e)).rstrip()
    print(json.dumps(out)); sys.exit(0)
for node in tree.body:
    if isinstance(node, ast.ClassDef):
        out["classes"].append(node.name)
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        out["functions"].append(node.name)
    targets = []
    if isinstance(node, ast.Assign):
        targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        targets = [node.target.id]
    if "MANIFEST" in targets:
        value = node.value
        callee = getattr(value, "func", None)
        try:
            if isinstance(value, ast.Call) and getattr(callee, "id", getattr(callee, "attr", None)) == "PluginMetadata" and not value.args:
                # Upstream's SDK form, read the way upstream's Sentinel read it: literal keywords only.
                meta = {k.arg: ast.literal_eval(k.value) for k in value.keywords if k.arg is not None}
                topics = list(meta.get("topics") or []) + ([meta["topic"]] if isinstance(meta.get("topic"), str) else [])
                out["manifest"] = {k: v for k, v in (("name", meta.get("name")), ("version", meta.get("version")), ("sinks", meta.get("sinks"))) if v is not None}
                if topics:
                    out["manifest"]["topics"] = [t for t in topics if t != "output"]
            else:
                out["manifest"] = ast.literal_eval(value)
        except Exception as e:
            out["manifest"] = None
            out["manifest_error"] = "MANIFEST is not a literal (%s); it is ignored" % type(e).__name__
text = source.decode("utf-8", "replace")
blocks = [m for m in re.finditer(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$", text) if m.group("type") == "script"]
if len(blocks) > 1:
    out["script_error"] = "more than one '# /// script' block"
elif blocks:
    raw = "".join(line[2:] if line.startswith("# ") else line[1:] for line in blocks[0].group("content").splitlines(keepends=True))
    try:
        import tomllib
        meta = tomllib.loads(raw)
        out["script"] = {"dependencies": meta.get("dependencies", []), "requires_python": meta.get("requires-python"), "raw": raw}
    except Exception as e:
        out["script_error"] = "invalid TOML in the '# /// script' block: %s" % e
print(json.dumps(out, default=str))
`;

interface InspectOutput {
  error: string | null;
  classes: string[];
  functions: string[];
  manifest: unknown;
  manifest_error: string | null;
  script: { dependencies: unknown; requires_python: unknown; raw: string } | null;
  script_error: string | null;
}

/** The plugin shapes the guest shim can run (PROTOCOL.md §4). */
const ENTRY_CLASSES = ["Handler", "Plugin"] as const;

/**
 * Compiles and inspects the plugin. Throws CSP_RUN_PLUGIN_INVALID with Python's
 * own error text for a syntax error, a missing entry class or broken metadata.
 */
/** Inspections started ahead (inspectAhead), by plugin path, until inspectPlugin takes them. */
const ahead = new Map<string, Promise<PluginInfo>>();

/**
 * Starts inspecting the plugin now, for inspectPlugin(path) to take later: the CLI calls it
 * before the run's modules load, so the host Python starts meanwhile.
 */
export function inspectAhead(pluginPath: string): void {
  if (ahead.has(pluginPath)) return;
  const inspection = inspect(pluginPath);
  inspection.catch(() => undefined); // its error is reported by the inspectPlugin call that takes it
  ahead.set(pluginPath, inspection);
}

export async function inspectPlugin(pluginPath: string, python = process.env.PYTHON ?? "python3"): Promise<PluginInfo> {
  const early = python === (process.env.PYTHON ?? "python3") ? ahead.get(pluginPath) : undefined;
  if (early !== undefined) {
    ahead.delete(pluginPath);
    return early;
  }
  return inspect(pluginPath, python);
}

async function inspect(pluginPath: string, python = process.env.PYTHON ?? "python3"): Promise<PluginInfo> {
  const source = await readFile(pluginPath, "utf8").catch((err: NodeJS.ErrnoException) => {
    throw Errors.CLI_USAGE([`plugin ${pluginPath} cannot be read: ${err.code ?? err.message}`]);
  });
  const inspected = await runCommand(python, ["-c", INSPECT_PY, pluginPath]);
  if (!inspected.ok) {
    if (inspected.error?.code === "ENOENT") throw Errors.RUN_PYTHON_MISSING([python]);
    throw Errors.RUN_PLUGIN_INVALID([pluginPath, inspected.stderr.trim() || describeFailure(inspected)], { context: { plugin: pluginPath } });
  }
  const out = JSON.parse(inspected.stdout) as InspectOutput;
  const context = { plugin: pluginPath };
  if (out.error !== null) throw Errors.RUN_PLUGIN_INVALID([pluginPath, out.error], { context });
  if (!ENTRY_CLASSES.some((name) => out.classes.includes(name))) {
    const found = out.classes.length > 0 ? `classes found: ${out.classes.join(", ")}` : "it defines no class";
    throw Errors.RUN_PLUGIN_INVALID([pluginPath, `no class Handler or Plugin at module level (${found})`], {
      context,
      hint: 'define `class Handler` with consume(event) or execute(path), or `class Plugin` with consume(file_path, context); see README "Writing a plugin"',
    });
  }
  if (out.script_error !== null) throw Errors.RUN_PLUGIN_INVALID([pluginPath, out.script_error], { context });

  const warnings: string[] = [];
  if (out.manifest_error !== null) warnings.push(out.manifest_error);
  const manifest = checkManifest(out.manifest, warnings);
  return {
    path: pluginPath,
    name: typeof manifest?.name === "string" && manifest.name !== "" ? manifest.name : basename(pluginPath, extname(pluginPath)),
    source,
    manifest,
    scriptMetadata: out.script === null ? null : checkScript(pluginPath, out.script),
    warnings,
  };
}

function checkManifest(value: unknown, warnings: string[]): PluginManifest | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== "object" || Array.isArray(value)) {
    warnings.push("MANIFEST is not a dict; it is ignored");
    return null;
  }
  const manifest = value as Record<string, unknown>;
  const result: PluginManifest = {};
  if (typeof manifest.name === "string") result.name = manifest.name;
  if (typeof manifest.version === "string") result.version = manifest.version;
  if (manifest.sinks !== undefined) {
    if (typeof manifest.sinks === "object" && manifest.sinks !== null && !Array.isArray(manifest.sinks)) {
      result.sinks = manifest.sinks as Record<string, ManifestSink | string>;
    } else {
      warnings.push('MANIFEST["sinks"] is not a dict of {topic: {"uri": ..., "mode": ...}}; it is ignored');
    }
  }
  if (Array.isArray(manifest.topics) && manifest.topics.every((t) => typeof t === "string")) result.topics = manifest.topics as string[];
  // {topic: {"columns": {...}}}: the topics with their declared types (the guest applies the types).
  else if (typeof manifest.topics === "object" && manifest.topics !== null && !Array.isArray(manifest.topics)) result.topics = Object.keys(manifest.topics);
  return result;
}

function checkScript(pluginPath: string, script: NonNullable<InspectOutput["script"]>): ScriptMetadata {
  const deps = script.dependencies;
  if (!Array.isArray(deps) || !deps.every((d) => typeof d === "string")) {
    throw Errors.RUN_PLUGIN_INVALID([pluginPath, "'dependencies' in the '# /// script' block must be a list of strings"], { context: { plugin: pluginPath } });
  }
  const requiresPython = typeof script.requires_python === "string" ? script.requires_python : null;
  return { dependencies: deps as string[], requiresPython, raw: script.raw };
}
