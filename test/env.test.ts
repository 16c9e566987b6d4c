/**
 * EnvManager with real uv and real lockfiles (test/fixtures/pyenv, test/fixtures/envs).
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { access, mkdir, mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { pino } from "pino";
import { Errors } from "../core/kernel/errors.js";
import { EnvManager, findUv } from "../core/env/manager.js";
import { planFromLock, synthesizePyproject } from "../core/env/lockfile.js";
import { silentLogger, type Logger } from "../core/kernel/logger.js";
import { fixturePath, prepareCommand, sha256, testEnvironment, type TestEnvironment } from "./helpers/pyenv.js";
import { rejectsWith } from "./helpers/assert.js";

const execFileAsync = promisify(execFile);

let shared: TestEnvironment;
const homes: string[] = [];

before(async () => {
  shared = await testEnvironment();
});

after(async () => {
  await shared?.dispose();
  for (const home of homes) await rm(home, { recursive: true, force: true });
});

async function freshHome(): Promise<string> {
  const home = await mkdtemp(join(tmpdir(), "casparian-env-test-"));
  homes.push(home);
  return home;
}

/** A distinct bare lockfile per tag: TOML comments change the hash, not the meaning. */
function bareLock(tag: string): string {
  return `# ${tag}\nversion = 1\nrequires-python = ">=3.11"\n`;
}

/** A logger whose messages we can count. */
function recordingLogger(): { logger: Logger; messages: string[] } {
  const messages: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      for (const line of String(chunk).split("\n")) if (line) messages.push(JSON.parse(line).msg);
      done();
    },
  });
  return { logger: pino({ level: "debug" }, stream) as unknown as Logger, messages };
}

async function python(interpreter: string, code: string): Promise<string> {
  const { stdout } = await execFileAsync(interpreter, ["-c", code]);
  return stdout.trim();
}

describe("building", () => {
  test("a project lock (pandas, pyarrow, polars, duckdb) installs exactly the locked versions", async () => {
    assert.match(shared.interpreterPath, new RegExp(`/venvs/${shared.envHash}/bin/python$`));
    const versions = JSON.parse(
      await python(
        shared.interpreterPath,
        "import json, pyarrow, pandas, polars, duckdb; print(json.dumps([pyarrow.__version__, pandas.__version__, polars.__version__, duckdb.__version__]))",
      ),
    );
    const lock = await readFile(fixturePath("pyenv", "uv.lock"), "utf8");
    for (const [name, version] of [
      ["pyarrow", versions[0]],
      ["pandas", versions[1]],
      ["polars", versions[2]],
      ["duckdb", versions[3]],
    ]) {
      assert.ok(lock.includes(`name = "${name}"\nversion = "${version}"`), `${name} ${version} is the locked version`);
    }
  });

  test("a second prepare is a cache hit; metadata records the env", async () => {
    const lock = await readFile(fixturePath("pyenv", "uv.lock"), "utf8");
    const ready = await shared.manager.prepare(await prepareCommand(lock));
    assert.deepEqual(ready, { env_hash: shared.envHash, interpreter_path: shared.interpreterPath, cached: true });
    const meta = JSON.parse(await readFile(join(shared.home, "venvs", ".metadata.json"), "utf8"));
    const entry = meta.venvs[shared.envHash];
    assert.equal(entry.env_hash, shared.envHash);
    assert.ok(entry.size_bytes > 10_000_000, `size ${entry.size_bytes}`);
    assert.ok(Date.parse(entry.created_at) <= Date.parse(entry.last_used));
    const leftovers = (await readdir(join(shared.home, "venvs"))).filter((n) => n.startsWith("."));
    assert.deepEqual(leftovers, [".metadata.json"], "no temp files or build directories remain");
  });

  test("a lock whose root is a package (source = editable '.') installs its dependencies without its source", async () => {
    const home = await freshHome();
    const manager = new EnvManager({ home, logger: silentLogger() });
    const lock = await readFile(fixturePath("envs", "packaged-project", "uv.lock"), "utf8");
    const ready = await manager.prepare(await prepareCommand(lock));
    assert.equal(await python(ready.interpreter_path, "import six; print(six.__version__)"), "1.17.0");
  });

  test("a lock made with `uv lock --script` builds from its manifest", async () => {
    const home = await freshHome();
    const manager = new EnvManager({ home, logger: silentLogger() });
    const lock = await readFile(fixturePath("envs", "script-lock", "plugin.py.lock"), "utf8");
    assert.equal(planFromLock(lock).kind, "script");
    const ready = await manager.prepare(await prepareCommand(lock));
    assert.equal(await python(ready.interpreter_path, "import six; print(six.__version__)"), "1.17.0");
  });

  test("a lock with no packages gives a bare venv", async () => {
    const home = await freshHome();
    const manager = new EnvManager({ home, logger: silentLogger() });
    const ready = await manager.prepare(await prepareCommand('version = 1\nrequires-python = ">=3.11"\n'));
    assert.equal(ready.cached, false);
    assert.equal(await python(ready.interpreter_path, "import sys; print(sys.prefix != sys.base_prefix)"), "True");
    assert.equal(await python(ready.interpreter_path, "import importlib.util; print(importlib.util.find_spec('pyarrow'))"), "None");
  });

  test("python_version is passed to uv", async () => {
    const home = await freshHome();
    const manager = new EnvManager({ home, logger: silentLogger() });
    const ready = await manager.prepare(await prepareCommand(bareLock("py311"), "3.11"));
    assert.equal(await python(ready.interpreter_path, "import sys; print('%d.%d' % sys.version_info[:2])"), "3.11");
  });

  test("the synthesized pyproject matches the lock's root package", async () => {
    const lock = await readFile(fixturePath("pyenv", "uv.lock"), "utf8");
    const plan = planFromLock(lock);
    assert.equal(plan.kind, "project");
    const text = synthesizePyproject(plan as Extract<typeof plan, { kind: "project" }>);
    assert.match(text, /name = "casparian-test-env"/);
    assert.match(text, /version = "0\.1\.0"/);
    assert.match(text, /"pyarrow>=17"/);
    assert.match(text, /requires-python = ">=3\.11"/);
    assert.match(text, /package = false/);
  });
});

describe("refusals and failures", () => {
  test("env_hash that is not sha256(lockfile_content) is refused", async () => {
    const lock = bareLock("mismatch");
    const err = await rejectsWith(
      shared.manager.prepare({ env_hash: sha256(`${lock} `), lockfile_content: lock, python_version: null }),
      Errors.ENV_HASH_MISMATCH.code,
    );
    assert.match(err.message, new RegExp(sha256(lock)));
  });

  test("a uv failure carries uv's stderr", async () => {
    const home = await freshHome();
    const manager = new EnvManager({ home, logger: silentLogger() });
    const err = await rejectsWith(manager.prepare(await prepareCommand(bareLock("py27"), "2.7")), Errors.ENV_BUILD_FAILED.code);
    assert.match(err.message, /uv venv/);
    assert.match(err.message, /2\.7/);
    assert.deepEqual(
      (await readdir(join(home, "venvs"))).filter((n) => !n.startsWith(".metadata")),
      [],
      "nothing half-built is left",
    );
  });

  test("uv's own UV_* settings from the worker's environment reach uv", async () => {
    const home = await freshHome();
    const manager = new EnvManager({ home, logger: silentLogger() });
    process.env.UV_PYTHON = "2.7";
    try {
      const err = await rejectsWith(manager.prepare(await prepareCommand(bareLock("uv-python-env"))), Errors.ENV_BUILD_FAILED.code);
      assert.match(err.message, /2\.7/);
    } finally {
      delete process.env.UV_PYTHON;
    }
  });

  test("a lockfile that is not TOML fails with ENV_BUILD_FAILED", async () => {
    const err = await rejectsWith(shared.manager.prepare(await prepareCommand("this is [not toml")), Errors.ENV_BUILD_FAILED.code);
    assert.match(err.message, /not valid TOML/);
  });

  test("findUv: a missing uv says how to install it", async () => {
    const saved = { PATH: process.env.PATH, UV: process.env.UV, HOME: process.env.HOME };
    const emptyHome = await freshHome();
    process.env.PATH = emptyHome;
    process.env.HOME = emptyHome;
    delete process.env.UV;
    try {
      const err = await rejectsWith(findUv(join(emptyHome, "no-uv")), Errors.ENV_UV_MISSING.code);
      assert.match(err.describe(), /pip install uv/);
    } finally {
      process.env.PATH = saved.PATH;
      process.env.HOME = saved.HOME;
      if (saved.UV !== undefined) process.env.UV = saved.UV;
    }
  });

  test("findUv honours an explicit path and $UV", async () => {
    const onPath = await findUv();
    assert.equal(await findUv(onPath), onPath);
    const saved = process.env.UV;
    process.env.UV = onPath;
    try {
      assert.equal(await findUv(), onPath);
    } finally {
      if (saved === undefined) delete process.env.UV;
      else process.env.UV = saved;
    }
  });
});

describe("concurrency and lifecycle", () => {
  test("concurrent prepares of one hash build once and all resolve", async () => {
    const home = await freshHome();
    const { logger, messages } = recordingLogger();
    const manager = new EnvManager({ home, logger });
    const command = await prepareCommand(bareLock("concurrent"));
    const results = await Promise.all([manager.prepare(command), manager.prepare(command), manager.prepare(command)]);
    assert.equal(new Set(results.map((r) => r.interpreter_path)).size, 1);
    assert.equal(messages.filter((m) => m === "env built").length, 1);
    // a second manager on the same home (another worker process) racing the first one
    const other = new EnvManager({ home, logger: silentLogger() });
    const command2 = await prepareCommand(bareLock("concurrent-2"));
    const [a, b] = await Promise.all([manager.prepare(command2), other.prepare(command2)]);
    assert.equal(a.interpreter_path, b.interpreter_path);
    await access(a.interpreter_path);
  });

  test("acquire works across a restart (new manager, same home); unknown or malformed hashes give null", async () => {
    const restarted = new EnvManager({ home: shared.home, logger: silentLogger() });
    const lease = await restarted.acquire(shared.envHash);
    assert.ok(lease);
    assert.equal(lease.interpreterPath, shared.interpreterPath);
    assert.equal(restarted.leaseCount(shared.envHash), 1);
    lease.release();
    lease.release();
    assert.equal(restarted.leaseCount(shared.envHash), 0);
    assert.equal(await restarted.acquire("f".repeat(64)), null);
    assert.equal(await restarted.acquire("../../etc"), null);
  });

  test("a stale build directory of a dead process is removed", async () => {
    const home = await freshHome();
    const stale = join(home, "venvs", ".build-0123456789abcdef-999999999-deadbeef");
    await mkdir(join(stale, "venv", "bin"), { recursive: true });
    const manager = new EnvManager({ home, logger: silentLogger() });
    await manager.prepare(await prepareCommand(bareLock("sweep")));
    await assert.rejects(stat(stale), { code: "ENOENT" });
  });

  test("LRU eviction to maxEnvs never evicts a leased env", async () => {
    const home = await freshHome();
    const manager = new EnvManager({ home, logger: silentLogger(), maxEnvs: 2 });
    const a = await manager.prepare(await prepareCommand(bareLock("a")));
    const leaseA = await manager.acquire(a.env_hash);
    assert.ok(leaseA);
    const b = await manager.prepare(await prepareCommand(bareLock("b")));
    const c = await manager.prepare(await prepareCommand(bareLock("c")));
    const present = async () => new Set((await readdir(join(home, "venvs"))).filter((n) => /^[0-9a-f]{64}$/.test(n)));
    // a is the oldest but leased: b (oldest unleased) goes
    assert.deepEqual(await present(), new Set([a.env_hash, c.env_hash]));
    leaseA.release();
    const d = await manager.prepare(await prepareCommand(bareLock("d")));
    assert.deepEqual(await present(), new Set([c.env_hash, d.env_hash]));
    const meta = JSON.parse(await readFile(join(home, "venvs", ".metadata.json"), "utf8"));
    assert.deepEqual(new Set(Object.keys(meta.venvs)), new Set([c.env_hash, d.env_hash]));
    assert.equal(await manager.acquire(b.env_hash), null, "an evicted env is no longer provisioned");
  });

  test("LRU eviction to maxEnvBytes keeps the env just built and leased ones", async () => {
    const home = await freshHome();
    const manager = new EnvManager({ home, logger: silentLogger(), maxEnvBytes: 1 });
    const a = await manager.prepare(await prepareCommand(bareLock("bytes-a")));
    const leaseA = await manager.acquire(a.env_hash);
    const b = await manager.prepare(await prepareCommand(bareLock("bytes-b")));
    const c = await manager.prepare(await prepareCommand(bareLock("bytes-c")));
    const present = new Set((await readdir(join(home, "venvs"))).filter((n) => /^[0-9a-f]{64}$/.test(n)));
    assert.deepEqual(present, new Set([a.env_hash, c.env_hash]));
    assert.ok(!present.has(b.env_hash));
    leaseA?.release();
  });
});
