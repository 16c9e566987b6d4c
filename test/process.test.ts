/**
 * runCommand (core/kernel/process.ts), the one way the worker runs a short command
 * (uv, Python probes), with real processes: what each ending looks like to the caller,
 * and that the environment given is the whole environment. And the callers' error
 * texts built from it: a missing system Python, a uv that fails.
 */
import assert from "node:assert/strict";
import { chmod, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { EnvManager } from "../core/env/manager.js";
import { SYSTEM_ENV_HASH, SystemPythonEnvs } from "../core/env/system.js";
import { runUv } from "../core/env/uv.js";
import { Errors } from "../core/kernel/errors.js";
import { silentLogger } from "../core/kernel/logger.js";
import { describeFailure, runCommand } from "../core/kernel/process.js";
import { rejectsWith } from "./helpers/assert.js";
import { tempRoot } from "./helpers/temp-root.js";

test("a command that succeeds: exit 0, both streams, stdin at end-of-file (cat returns at once)", async () => {
  const result = await runCommand("sh", ["-c", "echo out; echo err >&2; cat"], { timeoutMs: 20_000 });
  assert.deepEqual(result, { ok: true, code: 0, signal: null, stdout: "out\n", stderr: "err\n", timedOut: false, error: null });
});

test("a command that fails: its exit code, and what it printed", async () => {
  const result = await runCommand("sh", ["-c", "echo why >&2; exit 3"]);
  assert.equal(result.ok, false);
  assert.equal(result.code, 3);
  assert.equal(result.stderr, "why\n");
  assert.equal(result.timedOut, false);
  assert.equal(describeFailure(result), "exit code 3");
});

test("a command that is not there: not started, ENOENT, never a rejection", async () => {
  const result = await runCommand("/nonexistent/casparian-no-such-command", []);
  assert.equal(result.ok, false);
  assert.equal(result.code, null);
  assert.equal(result.error?.code, "ENOENT");
});

test("a command Node refuses to start at once (here an impossible uid) is not started, never a rejection", async () => {
  const result = await runCommand("true", [], { uid: 2 ** 40 });
  assert.equal(result.ok, false);
  assert.equal(result.code, null);
  assert.ok(result.error !== null);
});

test("a command past its timeout is killed and says so; one killed by a signal of its own says which", async () => {
  const slow = await runCommand("sh", ["-c", "sleep 30"], { timeoutMs: 200 });
  assert.equal(slow.timedOut, true);
  assert.equal(slow.signal, "SIGTERM");
  assert.equal(describeFailure(slow, 200), "timed out after 200 ms");

  const killed = await runCommand("sh", ["-c", "kill -TERM $$"], { timeoutMs: 30_000 });
  assert.equal(killed.timedOut, false, "a signal the command got elsewhere is not our timeout");
  assert.equal(describeFailure(killed), "killed by SIGTERM");
});

test("an aborted command is killed and is not mistaken for a timeout", async () => {
  const abort = new AbortController();
  const running = runCommand("sh", ["-c", "sleep 30"], { signal: abort.signal, timeoutMs: 30_000 });
  setTimeout(() => abort.abort(), 100);
  const result = await running;
  assert.equal(result.ok, false);
  assert.equal(result.timedOut, false);
  assert.equal(result.error?.code, "ABORT_ERR");
});

test("output beyond maxBuffer kills the command instead of growing memory", async () => {
  const result = await runCommand("sh", ["-c", "yes | head -c 1000000"], { maxBuffer: 10_000 });
  assert.equal(result.ok, false);
  assert.equal(result.error?.code, "ERR_CHILD_PROCESS_STDIO_MAXBUFFER");
  assert.ok(result.stdout.length <= 10_000);
});

test("the environment given is the whole environment: nothing of the worker's is inherited", async (t) => {
  process.env.CASPARIAN_TEST_SECRET = "must-not-leak";
  t.after(() => void delete process.env.CASPARIAN_TEST_SECRET);
  const given = await runCommand("sh", ["-c", 'echo "[$CASPARIAN_TEST_SECRET] [$ONLY]"'], { env: { ONLY: "given", PATH: process.env.PATH } });
  assert.equal(given.stdout, "[] [given]\n");
  const inherited = await runCommand("sh", ["-c", 'echo "[$CASPARIAN_TEST_SECRET]"']);
  assert.equal(inherited.stdout, "[must-not-leak]\n", "without env, the worker's own");
});

test('env_hash "system" with a Python that is not there: ENV_SYSTEM_PYTHON_MISSING, not found', async (t) => {
  const dir = await tempRoot(t, "process");
  const inner = new EnvManager({ home: dir, logger: silentLogger() });
  const envs = new SystemPythonEnvs(inner, { systemPython: join(dir, "no-python3"), logger: silentLogger() });
  const err = await rejectsWith(envs.acquire(SYSTEM_ENV_HASH), Errors.ENV_SYSTEM_PYTHON_MISSING.code);
  assert.match(err.message, /not found on PATH/);
});

test("a failing uv: the error names the command, how it ended and uv's last stderr lines", async (t) => {
  const dir = await tempRoot(t, "process");
  const fakeUv = join(dir, "uv");
  await writeFile(fakeUv, '#!/bin/sh\necho "resolving..." >&2\necho "error: No solution found" >&2\nexit 1\n');
  await chmod(fakeUv, 0o755);
  await assert.rejects(runUv(fakeUv, ["sync", "--frozen"], { cwd: dir }), (err: Error) => {
    assert.match(err.message, /^`uv sync --frozen` failed \(exit code 1\): resolving\.\.\.\nerror: No solution found$/);
    return true;
  });
  const slowUv = join(dir, "slow-uv");
  await writeFile(slowUv, "#!/bin/sh\nsleep 30\n");
  await chmod(slowUv, 0o755);
  await assert.rejects(runUv(slowUv, ["lock"], { cwd: dir, timeoutMs: 200 }), /`uv lock` failed \(timed out after 200 ms\)/);
});
