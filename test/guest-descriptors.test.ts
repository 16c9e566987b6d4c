/**
 * A plugin gets stdin, stdout and stderr from the worker and nothing else it did not open
 * itself. Node's spawn leaves open every descriptor the worker inherited without
 * close-on-exec (from a shell, a supervisor, a test runner), so the guest closes them
 * before any plugin code runs. The real CLI is started with a file of its launcher's open
 * at descriptor 40, which its workers inherit; the plugin, warm and fresh, must not find it.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { open, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { packageRoot } from "../core/kernel/paths.js";
import { listFiles, readParquet } from "./helpers/run-cli.js";
import { tempRoot } from "./helpers/temp-root.js";

function plugin(secret: string, fork: boolean): string {
  return `import os

MANIFEST = {"name": "descriptors", "fork": ${fork ? "True" : "False"}}
SECRET = ${JSON.stringify(secret)}


class Handler:
    def execute(self, path):
        return parse(path)


def parse(path):
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink("/proc/self/fd/" + fd))
        except OSError:
            pass
    if SECRET in targets:
        raise RuntimeError("a descriptor the worker inherited reached the plugin: " + SECRET)
    return {"descriptors": [len(targets)]}
`;
}

for (const fork of [true, false]) {
  test(`a descriptor the worker inherited never reaches the plugin (${fork ? "warm" : "fresh"} guest)`, async (t) => {
    const root = await tempRoot(t, "guest-descriptors");
    const secret = join(root, "launcher-secret.txt");
    await writeFile(secret, "the launcher's, not the plugin's\n");
    await writeFile(join(root, "plugin.py"), plugin(secret, fork));
    await writeFile(join(root, "input.txt"), "x\n");
    const handle = await open(secret, "r");
    t.after(() => handle.close());

    const cli = spawn(process.execPath, [join(packageRoot(), "bin", "casparian.js"), "run", "plugin.py", "input.txt", "--workers", "1"], {
      cwd: root,
      env: { ...process.env, CASPARIAN_HOME: join(root, "home") },
      // Descriptor 40 of the CLI, without close-on-exec: what a launcher leaks to the worker
      // (Node itself closes a few low ones at start, not the rest).
      stdio: ["ignore", "pipe", "pipe", ...Array<"ignore">(37).fill("ignore"), handle.fd],
    });
    let output = "";
    cli.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
    cli.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
    const code = await new Promise<number | null>((resolve) => cli.once("close", resolve));

    assert.doesNotMatch(output, /reached the plugin/);
    assert.equal(code, 0, output);
    const files = (await listFiles(join(root, "output", "output"))).map((f) => join(root, "output", "output", f));
    const [file] = await readParquet(files);
    assert.ok(Number(file?.rows[0]?.descriptors) >= 3, `the plugin looked at its descriptors: ${JSON.stringify(file?.rows)}`);
  });
}
