/**
 * Hostile PREPARE_ENVs against the real environment manager: uv (which runs build
 * backends from the lockfile) sees none of the worker's secrets, and python_version is
 * a version, never a path to run.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { chmod, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { EnvManager } from "../core/env/manager.js";
import { resolvePluginEnvironment } from "../core/run/plugin-env.js";
import { inspectPlugin } from "../core/run/plugin.js";
import { Errors } from "../core/kernel/errors.js";
import { silentLogger } from "../core/kernel/logger.js";
import { rejectsWith } from "./helpers/assert.js";

const LOCK = 'version = 1\nrequires-python = ">=3.11"\n';
const HASH = createHash("sha256").update(LOCK).digest("hex");

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "casparian-env-hostile-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

describe("uv's environment", () => {
  test("uv sees PATH, HOME, UV_* and what environments.env lists, never the worker's other variables", async (t) => {
    const dir = await tempDir(t);
    // Stands in for uv: records the environment it was given, then fails the build.
    const uv = join(dir, "uv");
    await writeFile(uv, '#!/bin/sh\nenv > "$UV_TEST_DUMP"\nexit 3\n');
    await chmod(uv, 0o755);
    const dump = join(dir, "env.txt");
    const saved = { ...process.env };
    t.after(() => {
      for (const name of ["UV_TEST_DUMP", "CASPARIAN_TEST_SECRET", "CASPARIAN_TEST_PROXY"]) {
        if (saved[name] === undefined) delete process.env[name];
        else process.env[name] = saved[name];
      }
    });
    process.env.UV_TEST_DUMP = dump;
    process.env.CASPARIAN_TEST_SECRET = "hunter2";
    process.env.CASPARIAN_TEST_PROXY = "http://127.0.0.1:3128";

    const manager = new EnvManager({ home: join(dir, "home"), logger: silentLogger(), uvPath: uv, uvEnv: ["CASPARIAN_TEST_PROXY"] });
    await rejectsWith(manager.prepare({ env_hash: HASH, lockfile_content: LOCK, python_version: null }), Errors.ENV_BUILD_FAILED.code);
    const seen = new Map(
      (await readFile(dump, "utf8"))
        .trim()
        .split("\n")
        .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)] as const),
    );
    assert.equal(seen.get("PATH"), process.env.PATH);
    assert.equal(seen.get("UV_TEST_DUMP"), dump);
    assert.equal(seen.get("CASPARIAN_TEST_PROXY"), "http://127.0.0.1:3128");
    assert.equal(seen.has("CASPARIAN_TEST_SECRET"), false, "a worker secret reached uv");
    assert.ok([...seen.values()].every((value) => !value.includes("hunter2")));
  });
});

describe("casparian run's own uv lock", () => {
  test("locking a PEP 723 plugin's dependencies gives uv the same scrubbed environment as the env builds", async (t) => {
    const dir = await tempDir(t);
    const dump = join(dir, "env.txt");
    // Stands in for uv: records the environment it was given, then fails the lock.
    const uv = join(dir, "uv");
    await writeFile(uv, `#!/bin/sh\nenv > ${JSON.stringify(dump)}\necho 'no index here' >&2\nexit 3\n`);
    await chmod(uv, 0o755);
    const plugin = join(dir, "plugin.py");
    await writeFile(plugin, '# /// script\n# dependencies = ["six"]\n# ///\nclass Handler:\n    def execute(self, path):\n        return {"a": [1]}\n');
    const saved = { ...process.env };
    t.after(() => {
      for (const name of ["CASPARIAN_TEST_SECRET", "CASPARIAN_TEST_PROXY", "UV_INDEX_URL"]) {
        if (saved[name] === undefined) delete process.env[name];
        else process.env[name] = saved[name];
      }
    });
    process.env.CASPARIAN_TEST_SECRET = "hunter2";
    process.env.CASPARIAN_TEST_PROXY = "http://127.0.0.1:3128";
    process.env.UV_INDEX_URL = "http://127.0.0.1:9/simple";

    const err = await rejectsWith(
      resolvePluginEnvironment(await inspectPlugin(plugin), {
        home: join(dir, "home"),
        logger: silentLogger(),
        uv,
        uvEnv: ["CASPARIAN_TEST_PROXY"],
      }),
      Errors.RUN_LOCK_FAILED.code,
    );
    assert.match(err.message, /no index here/);
    const seen = new Map(
      (await readFile(dump, "utf8"))
        .trim()
        .split("\n")
        .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)] as const),
    );
    assert.equal(seen.get("PATH"), process.env.PATH);
    assert.equal(seen.get("UV_INDEX_URL"), "http://127.0.0.1:9/simple", "uv's own settings pass");
    assert.equal(seen.get("CASPARIAN_TEST_PROXY"), "http://127.0.0.1:3128", "environments.env passes");
    assert.equal(seen.has("CASPARIAN_TEST_SECRET"), false, "a user secret reached uv");
    assert.ok([...seen.values()].every((value) => !value.includes("hunter2")));
  });
});

describe("python_version", () => {
  for (const value of ["/bin/sh", "../../usr/bin/python3", "~/evil/python", "3.12; rm -rf /", "python3"]) {
    test(`${JSON.stringify(value)} is refused before uv runs`, async (t) => {
      const dir = await tempDir(t);
      const manager = new EnvManager({ home: join(dir, "home"), logger: silentLogger() });
      const err = await rejectsWith(manager.prepare({ env_hash: HASH, lockfile_content: LOCK, python_version: value }), Errors.ENV_BAD_PYTHON_VERSION.code);
      assert.match(err.message, /is not a Python version/);
      assert.deepEqual(await readdir(dir), [], "nothing was built");
    });
  }

  test("version requests uv understands are accepted", async (t) => {
    const dir = await tempDir(t);
    const manager = new EnvManager({ home: join(dir, "home"), logger: silentLogger() });
    const ready = await manager.prepare({ env_hash: HASH, lockfile_content: LOCK, python_version: "3" });
    assert.equal(ready.env_hash, HASH);
  });
});
