/**
 * A fresh guest loads the shim's modules from the bytecode the worker compiled into its home
 * (shim-bytecode.ts) instead of compiling them at start, and the guest cannot write there: the
 * files are checked-hash pycs (verified against the source on every load, whatever the mtimes),
 * owned by the worker, writable by nobody else. The plugin looks at where the shim's runner
 * module was loaded from, while it runs as the guest.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmod, open, readdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { packageRoot } from "../core/kernel/paths.js";
import { listFiles, readParquet } from "./helpers/run-cli.js";
import { tempRoot } from "./helpers/temp-root.js";

const PLUGIN = `import os
import sys

MANIFEST = {"name": "shim_bytecode", "fork": False}


class Handler:
    def execute(self, path):
        cached = sys.modules["casparian_guest.runner"].__spec__.cached or ""
        cache = os.path.join(os.environ["HOME_OF_TEST"], "shim-bytecode") if "HOME_OF_TEST" in os.environ else ""
        return {
            "cached": [cached],
            "exists": [os.path.isfile(cached)],
            "uid": [os.getuid()],
            "cache_writable": [os.access(os.path.dirname(cached), os.W_OK) if cached else True],
        }
`;

async function walk(dir: string): Promise<string[]> {
  const found: string[] = [dir];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...(await walk(path)));
    else found.push(path);
  }
  return found;
}

test("a fresh guest loads the shim from the worker's checked-hash bytecode, which it cannot write", async (t) => {
  const root = await tempRoot(t, "shim-bytecode");
  // Reachable by a slot user (when the worker runs as root), so the guest runs as one.
  await chmod(root, 0o755);
  const home = join(root, "home");
  await writeFile(join(root, "plugin.py"), PLUGIN);
  await writeFile(join(root, "input.txt"), "x\n");

  const cli = spawn(process.execPath, [join(packageRoot(), "bin", "casparian.js"), "run", "plugin.py", "input.txt", "--workers", "1"], {
    cwd: root,
    env: { ...process.env, CASPARIAN_HOME: home },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  cli.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
  cli.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
  const code = await new Promise<number | null>((resolve) => cli.once("close", resolve));
  assert.equal(code, 0, output);

  const files = (await listFiles(join(root, "output", "output"))).map((f) => join(root, "output", "output", f));
  const [file] = await readParquet(files);
  const row = file?.rows[0] as { cached: string; exists: boolean; uid: number | bigint; cache_writable: boolean } | undefined;
  assert.ok(row, "the plugin reported");
  const cache = join(home, "shim-bytecode");
  assert.ok(row.cached.startsWith(cache + "/"), `the runner's bytecode is the worker's: ${row.cached}`);
  assert.ok(row.exists, `the runner's bytecode was there when the guest ran: ${row.cached}`);
  if (Number(row.uid) !== process.getuid?.()) assert.equal(row.cache_writable, false, "the slot user cannot write the bytecode");

  // Checked-hash pycs (PEP 552 flags 0b11): validated against the source's hash, never by mtime.
  const handle = await open(row.cached, "r");
  const header = Buffer.alloc(8);
  await handle.read(header, 0, 8, 0);
  await handle.close();
  assert.equal(header.readUInt32LE(4), 3, "a checked-hash pyc");
  for (const path of await walk(cache)) {
    const info = await stat(path);
    assert.equal(info.uid, process.getuid?.(), `${path} belongs to the worker`);
    assert.equal(info.mode & 0o022, 0, `${path} is writable by the worker only`);
  }
});
