/**
 * An env directory is used only with its seal and a matching digest (core/env/seal.ts),
 * and python_version is part of the cache check. Real uv, real interpreters, real files.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { appendFile, cp, mkdir, mkdtemp, readdir, readFile, readlink, rename, rm, stat, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { runCommand } from "../core/kernel/process.js";
import { EnvManager } from "../core/env/manager.js";
import { METADATA_FILE, readMetadata } from "../core/env/metadata.js";
import { checkSeal, SEAL_FILE, servesPythonRequest } from "../core/env/seal.js";
import { SealCache } from "../core/env/seal-cache.js";
import { Errors } from "../core/kernel/errors.js";
import { silentLogger } from "../core/kernel/logger.js";
import { rejectsWith } from "./helpers/assert.js";

function lockFor(tag: string): { lock: string; hash: string } {
  const lock = `# ${tag}\nversion = 1\nrequires-python = ">=3.11"\n`;
  return { lock, hash: createHash("sha256").update(lock).digest("hex") };
}

async function tempHome(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "casparian-env-trust-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function pythonVersion(interpreter: string): Promise<string> {
  return (await runCommand(interpreter, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])).stdout.trim();
}

/** A directory laid out like a venv (what upstream's worker, or an attacker, leaves at venvs/<hash>). */
async function plantEnv(dir: string): Promise<void> {
  await mkdir(join(dir, "bin"), { recursive: true });
  await mkdir(join(dir, "lib", "python3.11", "site-packages"), { recursive: true });
  const python3 = (await runCommand("python3", ["-c", "import sys; print(sys.executable)"])).stdout.trim();
  await symlink(python3, join(dir, "bin", "python"));
  await writeFile(join(dir, "pyvenv.cfg"), `home = ${python3}\n`);
  await writeFile(join(dir, "lib", "python3.11", "site-packages", "planted.py"), "print('planted')\n");
}

describe("env directories are trusted only with their seal", () => {
  test("a directory planted at venvs/<hash> is never used: acquire gives null, PREPARE_ENV rebuilds and replaces it", async (t) => {
    const home = await tempHome(t);
    const { lock, hash } = lockFor("planted");
    const dir = join(home, "venvs", hash);
    await plantEnv(dir);
    const manager = new EnvManager({ home, logger: silentLogger() });
    assert.equal(await manager.acquire(hash), null, "an unsealed directory was trusted");
    const ready = await manager.prepare({ env_hash: hash, lockfile_content: lock, python_version: null });
    assert.equal(ready.cached, false, "the planted directory was a cache hit");
    assert.ok((await readdir(dir)).includes(SEAL_FILE));
    const sitePackages = await readdir(join(dir, "lib"));
    for (const version of sitePackages) assert.ok(!(await readdir(join(dir, "lib", version, "site-packages"))).includes("planted.py"));
    const lease = await manager.acquire(hash);
    assert.ok(lease);
    lease.release();
    assert.deepEqual((await readdir(join(home, "venvs"))).filter((n) => n.startsWith(".")).sort(), [METADATA_FILE], "no build or eviction leftovers");
  });

  test("a seal copied from another env, or a directory changed after its build, is not trusted", async (t) => {
    const home = await tempHome(t);
    const a = lockFor("a");
    const b = lockFor("b");
    const manager = new EnvManager({ home, logger: silentLogger() });
    const ready = await manager.prepare({ env_hash: a.hash, lockfile_content: a.lock, python_version: null });
    const envA = join(home, "venvs", a.hash);
    assert.equal((await checkSeal(envA, a.hash)).trusted, true);

    // B: a planted directory carrying A's seal.
    const envB = join(home, "venvs", b.hash);
    await plantEnv(envB);
    await cp(join(envA, SEAL_FILE), join(envB, SEAL_FILE));
    assert.deepEqual(await checkSeal(envB, b.hash), { trusted: false, reason: `${SEAL_FILE} names another env (${a.hash.slice(0, 12)})` });
    assert.equal(await manager.acquire(b.hash), null);

    // A, changed after its build: a .pth file that would run code in every guest.
    const version = (await readdir(join(envA, "lib")))[0]!;
    await writeFile(join(envA, "lib", version, "site-packages", "evil.pth"), "import os\n");
    const tampered = await checkSeal(envA, a.hash);
    assert.equal(tampered.trusted, false);
    assert.match((tampered as { reason: string }).reason, /digest mismatch/);
    assert.equal(await manager.acquire(a.hash), null, "a tampered env was handed to a job");
    const again = await manager.prepare({ env_hash: a.hash, lockfile_content: a.lock, python_version: null });
    assert.equal(again.cached, false);
    assert.equal(again.interpreter_path, ready.interpreter_path);
    assert.ok(!(await readdir(join(envA, "lib", version, "site-packages"))).includes("evil.pth"));

    // pyvenv.cfg edited (e.g. to point home at another interpreter).
    await appendFile(join(envA, "pyvenv.cfg"), "include-system-site-packages = true\n");
    assert.equal(await manager.acquire(a.hash), null);
  });

  test(".metadata.json carries both upstream layouts; one written by upstream's Rust worker is read", async (t) => {
    const home = await tempHome(t);
    const { lock, hash } = lockFor("meta");
    const manager = new EnvManager({ home, logger: silentLogger() });
    await manager.prepare({ env_hash: hash, lockfile_content: lock, python_version: null });
    const written = JSON.parse(await readFile(join(home, "venvs", METADATA_FILE), "utf8")) as {
      venvs: Record<string, { env_hash: string }>;
      entries: Array<{ env_hash: string; created_at: string; last_used: string; size_bytes: number }>;
    };
    assert.equal(written.venvs[hash]?.env_hash, hash, "the Python worker's layout");
    assert.equal(written.entries.length, 1, "the Rust worker's layout");
    assert.deepEqual(Object.keys(written.entries[0]!).sort(), ["created_at", "env_hash", "last_used", "size_bytes"]);
    // What the Rust worker writes back (serde drops the key it does not know).
    await writeFile(join(home, "venvs", METADATA_FILE), JSON.stringify({ entries: written.entries }));
    assert.equal((await readMetadata(join(home, "venvs"))).venvs[hash]?.size_bytes, written.entries[0]!.size_bytes);
  });
});

/**
 * Another CPython minor version than the default python3, if one can be found here: uv's
 * own discovery, else a pyenv-installed version added to PATH for this process.
 */
async function otherPython(defaultMinor: string): Promise<{ version: string; pathDir: string | null } | null> {
  for (const candidate of ["3.13", "3.12", "3.11", "3.10"]) {
    if (candidate === defaultMinor) continue;
    const found = await runCommand("uv", ["python", "find", "--no-python-downloads", candidate]);
    if (found.ok && found.stdout.trim() !== "") return { version: candidate, pathDir: null };
  }
  const pyenv = await runCommand("pyenv", ["versions", "--bare"]);
  if (!pyenv.ok) return null;
  for (const installed of pyenv.stdout.split("\n").map((l) => l.trim())) {
    const minor = /^(3\.\d+)\.\d+$/.exec(installed)?.[1];
    if (minor === undefined || minor === defaultMinor || Number(minor.split(".")[1]) < 11) continue;
    const prefix = await runCommand("pyenv", ["prefix", installed]);
    if (prefix.ok) return { version: minor, pathDir: join(prefix.stdout.trim(), "bin") };
  }
  return null;
}

describe("python_version on a cache hit", () => {
  test("which built interpreter serves which request", () => {
    const cp311 = { implementation: "cpython", version: "3.11.7", freeThreaded: false, executable: "/x" };
    for (const ok of [null, "3", "3.11", "3.11.7", "cpython-3.11", "cpython@3.11"]) assert.equal(servesPythonRequest(cp311, ok), true, String(ok));
    for (const no of ["3.12", "3.11.6", "pypy@3.11", "3.11t", "4"]) assert.equal(servesPythonRequest(cp311, no), false, no);
    assert.equal(servesPythonRequest({ ...cp311, version: "3.13.0", freeThreaded: true }, "3.13t"), true);
  });

  test("an env built for one Python version is not served for another: it is rebuilt (or, with no such Python here, the request fails clearly)", async (t) => {
    const home = await tempHome(t);
    const { lock, hash } = lockFor("versions");
    const manager = new EnvManager({ home, logger: silentLogger() });
    const first = await manager.prepare({ env_hash: hash, lockfile_content: lock, python_version: null });
    const builtWith = await pythonVersion(first.interpreter_path);
    assert.equal((await manager.prepare({ env_hash: hash, lockfile_content: lock, python_version: builtWith })).cached, true, "same version: a cache hit");

    const other = await otherPython(builtWith);
    if (other === null) {
      // Only one interpreter here (and no downloads): the mismatch is a rebuild attempt, which fails saying so.
      const err = await rejectsWith(manager.prepare({ env_hash: hash, lockfile_content: lock, python_version: "3.99" }), Errors.ENV_BUILD_FAILED.code);
      assert.match(err.message, /3\.99/);
    } else {
      const savedPath = process.env.PATH;
      if (other.pathDir !== null) process.env.PATH = `${other.pathDir}${delimiter}${savedPath ?? ""}`;
      t.after(() => {
        process.env.PATH = savedPath;
      });
      t.diagnostic(`rebuilding for Python ${other.version}${other.pathDir === null ? "" : " (a pyenv version, added to PATH)"}`);
      const rebuilt = await manager.prepare({ env_hash: hash, lockfile_content: lock, python_version: other.version });
      assert.equal(rebuilt.cached, false, `an env built with ${builtWith} answered a request for ${other.version}`);
      assert.equal(await pythonVersion(rebuilt.interpreter_path), other.version);
      const lease = await manager.acquire(hash);
      assert.ok(lease, "the rebuilt env is trusted");
      lease.release();
      assert.equal((await manager.prepare({ env_hash: hash, lockfile_content: lock, python_version: other.version })).cached, true);
      // And back: the first version is a rebuild again, not the other version's env.
      const back = await manager.prepare({ env_hash: hash, lockfile_content: lock, python_version: builtWith });
      assert.equal(back.cached, false);
      assert.equal(await pythonVersion(back.interpreter_path), builtWith);
    }
    // Whatever happened, the env under the hash is a trusted one.
    assert.equal((await checkSeal(join(home, "venvs", hash), hash)).trusted, true);
  });
});

describe("a job's seal check is remembered only while nothing it read has changed (seal-cache.ts)", () => {
  test("a remembered env, then tampered with (a planted .pth, pyvenv.cfg edited in place at the same size and mtime, bin/python re-pointed), is refused", async (t) => {
    const home = await tempHome(t);
    const { lock, hash } = lockFor("cached");
    const manager = new EnvManager({ home, logger: silentLogger() });
    await manager.prepare({ env_hash: hash, lockfile_content: lock, python_version: null });
    const env = join(home, "venvs", hash);

    // Fresh from its build, the env's timestamps are too recent to vouch for anything.
    const strict = new SealCache();
    assert.equal((await strict.check(env, hash)).trusted, true);
    assert.equal(strict.remembers(env), false, "a check of files changed within RACY_MS was remembered");

    // racyMs 0: remembered at once, so that what follows runs against a remembered check.
    const cache = new SealCache({ racyMs: 0 });
    const remember = async () => {
      const check = await cache.check(env, hash);
      assert.equal(check.trusted, true);
      assert.equal(cache.remembers(env), true);
      assert.equal((await cache.check(env, hash)).trusted, true, "the remembered check no longer answers");
    };
    await remember();
    assert.equal((await cache.check(env, lockFor("other").hash)).trusted, false, "a remembered seal answered for another env hash");

    const version = (await readdir(join(env, "lib")))[0]!;
    const pth = join(env, "lib", version, "site-packages", "evil.pth");
    await writeFile(pth, "import os\n");
    const planted = await cache.check(env, hash);
    assert.equal(planted.trusted, false, "a .pth planted after the check was remembered was not seen");
    assert.match((planted as { reason: string }).reason, /digest mismatch/);
    assert.equal(cache.remembers(env), false);
    await rm(pth);
    await remember();

    // Same size, mtime put back (a whole second, so that utimes restores it exactly): only the ctime says it changed.
    const cfg = join(env, "pyvenv.cfg");
    const second = Math.floor(Date.now() / 1000) - 60;
    await utimes(cfg, second, second);
    await remember();
    const before = await stat(cfg, { bigint: true });
    const text = await readFile(cfg, "utf8");
    const edited = text.replace(/home = /, "home ~ ");
    assert.notEqual(edited, text);
    await writeFile(cfg, edited);
    await utimes(cfg, second, second);
    const after = await stat(cfg, { bigint: true });
    assert.deepEqual([after.size, after.mtimeNs, after.ino], [before.size, before.mtimeNs, before.ino]);
    assert.equal((await cache.check(env, hash)).trusted, false, "pyvenv.cfg edited in place (same size, same mtime) was not seen");
    await writeFile(cfg, text);
    await remember();

    const python = join(env, "bin", "python");
    const target = await readlink(python);
    await rm(python);
    await symlink("/bin/sh", python);
    assert.equal((await cache.check(env, hash)).trusted, false, "a re-pointed bin/python was not seen");
    await rm(python);
    await symlink(target, python);
    await remember();

    // The whole directory replaced by another one at the same path.
    await rename(env, `${env}.moved`);
    assert.deepEqual(await cache.check(env, hash), { trusted: false, reason: "no such directory" });
  });
});
