/**
 * Warm guests (core/bridge/warm-pool.ts + guest/casparian_guest/fork_server.py) with real
 * Python: a parent per (env, plugin source) forks one child per job, and no job sees
 * anything of the one before it. Also: the CLI and the worker use them by default.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { runGuest } from "../core/bridge/host.js";
import type { GuestResult, GuestRunOptions } from "../core/bridge/types.js";
import { WarmPool } from "../core/bridge/warm-pool.js";
import { EnvManager } from "../core/env/manager.js";
import type { JobCommand } from "../core/kernel/job.js";
import { silentLogger } from "../core/kernel/logger.js";
import { isProcessAlive } from "../core/kernel/process.js";
import { Pipeline } from "../core/pipeline/pipeline.js";
import { Opcode, type DispatchCommand } from "../core/protocol/messages.js";
import { rejectsWith } from "./helpers/assert.js";
import { bareEnvironment, fixturePath, prepareCommand, testJob } from "./helpers/pyenv.js";
import { runCli } from "./helpers/run-cli.js";
import { TestSentinel } from "./helpers/sentinel.js";
import { spawnWorker } from "./helpers/spawn-worker.js";

const TIMEOUTS = { connectMs: 30_000, idleMs: 60_000, jobMs: 120_000 };

let home: string;
let python: string;
let probe: string;
let work: string;

before(async () => {
  home = await mkdtemp(join(tmpdir(), "casparian-warm-test-"));
  python = await bareEnvironment(new EnvManager({ home: join(home, "casparian"), logger: silentLogger() }));
  probe = await readFile(fixturePath("warm", "probe.py"), "utf8");
  work = join(home, "work");
  await mkdir(work);
});

after(async () => {
  if (home) await rm(home, { recursive: true, force: true });
});

type Seen = { pid: number; ppid: number; mutated: boolean; modules_intact: boolean; threads: number; fds: number; json_preloaded: boolean };

let inputs = 0;
async function input(action: string): Promise<string> {
  const path = join(work, `${inputs++}-${action}.txt`);
  await writeFile(path, action);
  return path;
}

/** One job through the bridge; resolves with the guest's result and what the probe saw. */
async function runProbe(
  action: string,
  options: Partial<GuestRunOptions> & { source?: string; onSeen?: (seen: Seen, abort: () => void) => void } = {},
): Promise<{ result: GuestResult; seen: Seen }> {
  const { job, controller } = testJob(options.source ?? probe, { filePath: await input(action), pluginName: "probe" });
  const seen: Seen[] = [];
  const result = await runGuest({
    interpreterPath: python,
    job,
    timeouts: TIMEOUTS,
    onBatch: async (batch) => {
      const row = batch.table.get(0)!.toJSON() as Record<string, unknown>;
      seen.push(Object.fromEntries(Object.entries(row).map(([k, v]) => [k, typeof v === "bigint" ? Number(v) : v])) as Seen);
      options.onSeen?.(seen[0]!, () => controller.abort("the test"));
    },
    ...options,
  });
  return { result, seen: seen[0]! };
}

describe("warm guests", () => {
  test("consecutive jobs of one parent: no global, exit, thread or open file of one reaches the next", async () => {
    // Descriptors are compared between jobs: learning ones (hot_pages.py) have one more, their report pipe.
    const pool = new WarmPool({ logger: silentLogger(), prefaultMb: 0 });
    try {
      const first = await runProbe("look", { warm: pool });
      assert.equal(first.result.warm, false, "the first job starts the parent");
      assert.ok((first.result.parentRssKb ?? 0) > 0);
      assert.notEqual(first.seen.ppid, process.pid, "forked from the warm parent, not spawned by the worker");
      assert.equal(first.seen.json_preloaded, true);

      const mutate = await runProbe("mutate", { warm: pool });
      assert.equal(mutate.result.warm, true);
      assert.equal(mutate.seen.ppid, first.seen.ppid, "the same parent");

      const exited = await rejectsWith(runProbe("exit", { warm: pool }), "CSP_GUEST_FAILED");
      assert.match(exited.message, /exit code 3/);

      const thread = await runProbe("thread", { warm: pool });
      assert.equal(isProcessAlive(thread.seen.pid), false, "a leftover thread ends with its job's process");
      const leak = await runProbe("leak", { warm: pool });

      const last = await runProbe("look", { warm: pool });
      assert.equal(last.result.warm, true);
      assert.equal(last.seen.ppid, first.seen.ppid, "the parent survived every job above");
      assert.equal(last.seen.mutated, false);
      assert.equal(last.seen.modules_intact, true);
      assert.equal(last.seen.threads, first.seen.threads);
      assert.equal(last.seen.fds, first.seen.fds, "no file or socket of an earlier job is open");
      const pids = new Set([first, mutate, thread, leak, last].map((r) => r.seen.pid));
      assert.equal(pids.size, 5, "every job is a process of its own");
    } finally {
      await pool.close();
    }
  });

  test("ABORT and a job timeout kill the warm child (and only it) within 5 s; the parent serves the next job", async () => {
    const pool = new WarmPool({ logger: silentLogger() });
    try {
      const warmup = await runProbe("look", { warm: pool });
      for (const ending of ["abort", "timeout"] as const) {
        let child = 0;
        let endedAt = 0;
        const running = runProbe("hang", {
          warm: pool,
          timeouts: ending === "timeout" ? { ...TIMEOUTS, jobMs: 3000 } : TIMEOUTS,
          onSeen: (seen, abort) => {
            child = seen.pid;
            endedAt = performance.now();
            if (ending === "abort") abort();
          },
        });
        const err = await rejectsWith(running, ending === "abort" ? "CSP_JOB_ABORTED" : "CSP_GUEST_TIMEOUT");
        if (ending === "timeout") assert.match(err.message, /job timeout/);
        const limit = ending === "abort" ? 5000 : 3000 + 5000;
        assert.ok(performance.now() - endedAt < limit, `${ending}: ended ${Math.round(performance.now() - endedAt)} ms after the first batch`);
        assert.ok(child > 0 && child !== warmup.seen.pid);
        assert.equal(isProcessAlive(child), false, `${ending}: the job's process is gone`);
        assert.equal(isProcessAlive(warmup.seen.ppid), true, "the warm parent is not the job");
      }
      const next = await runProbe("look", { warm: pool });
      assert.equal(next.result.warm, true);
      assert.equal(next.seen.ppid, warmup.seen.ppid);
    } finally {
      await pool.close();
    }
  });

  test("a changed plugin source gets a new parent; a dead parent is replaced", async () => {
    const pool = new WarmPool({ logger: silentLogger() });
    try {
      const a = await runProbe("look", { warm: pool });
      const changed = await runProbe("look", { warm: pool, source: `${probe}\n# changed\n` });
      assert.equal(changed.result.warm, false);
      assert.notEqual(changed.seen.ppid, a.seen.ppid);
      const again = await runProbe("look", { warm: pool });
      assert.equal(again.seen.ppid, a.seen.ppid, "the first source still has its own parent");

      process.kill(a.seen.ppid, "SIGKILL");
      await new Promise((resolve) => setTimeout(resolve, 200));
      const replaced = await runProbe("look", { warm: pool });
      assert.equal(replaced.result.warm, false);
      assert.notEqual(replaced.seen.ppid, a.seen.ppid);
      assert.equal((await runProbe("look", { warm: pool })).result.warm, true);
    } finally {
      await pool.close();
    }
  });

  test("a warm parent pays the standard library's first-use costs the plugin's source foresees, without running it", async () => {
    const pool = new WarmPool({ logger: silentLogger() });
    // Module level runs in the child: what is loaded there came from the parent (or from this job).
    const source = [
      "import re, sys",
      "from datetime import datetime",
      'LOADED = {name: [name in sys.modules] for name in ("_strptime", "encodings.utf_8_sig")}',
      'LOADED["plugin_ran_in_parent"] = [hasattr(sys, "PLUGIN_MARK")]',
      "sys.PLUGIN_MARK = True",
      "def parse(path):",
      '    with open(path, encoding="utf-8-sig") as handle:',
      '        text = re.sub(r"[^a-z]+", "", handle.read())',
      '    LOADED["date"] = [datetime.strptime("2024-01-02", "%Y-%m-%d").day]',
      "    return LOADED",
      "",
    ].join("\n");
    try {
      const rows: Record<string, unknown>[] = [];
      for (let i = 0; i < 2; i++) {
        const { job } = testJob(source, { filePath: await input("look"), pluginName: "first_use" });
        const result = await runGuest({
          interpreterPath: python,
          job,
          timeouts: TIMEOUTS,
          warm: pool,
          onBatch: async (batch) => void rows.push(batch.table.get(0)!.toJSON()),
        });
        assert.equal(result.warm, i === 1);
      }
      for (const row of rows) {
        assert.deepEqual(row, { _strptime: true, "encodings.utf_8_sig": true, plugin_ran_in_parent: false, date: 2n });
      }
    } finally {
      await pool.close();
    }
  });

  test("the parent's own warm-up publish leaves no topic behind: a plugin's topic of any name types its columns as a fresh guest does", async () => {
    const pool = new WarmPool({ logger: silentLogger() });
    // The parent once published {"warm": [1]} to a topic "warm-up" and kept its types: this
    // plugin's text column "warm" of that topic then failed as "does not fit int64", warm only.
    const source = ["def parse(path):", '    return [("warm-up", {"warm": ["text"]}), ("casparian.warm-up", {"warm": ["more"]})]', ""].join("\n");
    try {
      for (const warm of [undefined, pool, pool]) {
        const { job } = testJob(source, { filePath: await input("look"), pluginName: "topics" });
        const rows: string[] = [];
        await runGuest({
          interpreterPath: python,
          job,
          timeouts: TIMEOUTS,
          warm,
          onBatch: async (batch) => void rows.push(`${batch.topic}: ${JSON.stringify(batch.table.get(0)!.toJSON())}`),
        });
        assert.deepEqual(rows, ['warm-up: {"warm":"text"}', 'casparian.warm-up: {"warm":"more"}'], warm ? "warm" : "fresh");
      }
    } finally {
      await pool.close();
    }
  });

  test("a plugin's error carries its traceback with the plugin's own source lines, warm and fresh", async () => {
    const pool = new WarmPool({ logger: silentLogger() });
    const source = ["def helper():", '    raise ValueError("no " + "luck")', "", "def parse(path):", "    return helper()", ""].join("\n");
    try {
      for (const warm of [undefined, pool, pool]) {
        const { job } = testJob(source, { filePath: await input("look"), pluginName: "raises" });
        const err = await rejectsWith(runGuest({ interpreterPath: python, job, timeouts: TIMEOUTS, warm, onBatch: async () => undefined }), "CSP_GUEST_FAILED");
        assert.match(err.message, /ValueError: no luck/);
        // The message keeps the traceback's first lines: the shim's frames, then the plugin's, with its source.
        assert.match(err.message, /File "<plugin raises>", line 5, in parse\n\s+return helper\(\)/, warm ? "warm" : "fresh");
      }
    } finally {
      await pool.close();
    }
  });

  test("an environment rebuilt at the same path gets a new parent: one started in the old build is never reused", async () => {
    const manager = new EnvManager({ home: join(home, "rebuilt"), logger: silentLogger() });
    const prepare = await prepareCommand('version = 1\nrequires-python = ">=3.11"\n');
    await manager.prepare(prepare);
    const pool = new WarmPool({ logger: silentLogger() });
    const pipeline = new Pipeline({ logger: silentLogger(), outputRoot: work, workerId: "w", envs: manager, warm: pool });
    const seen: number[] = [];
    pipeline.use({
      name: "test",
      apply: (hooks) =>
        hooks.onBatch.tapPromise("test", async (batch) => {
          seen.push(Number(batch.table.get(0)!.toJSON().ppid));
        }),
    });
    const job = async (jobId: bigint) => {
      const command: JobCommand = {
        pluginName: "probe",
        filePath: await input("look"),
        sinks: [],
        fileVersionId: 1n,
        envHash: prepare.env_hash,
        sourceCode: probe,
        artifactHash: null,
      };
      const receipt = await pipeline.runJob({ jobId, command, logger: silentLogger(), signal: new AbortController().signal });
      assert.equal(receipt.status, "SUCCESS", receipt.errorMessage ?? "");
      return { warm: receipt.metrics.guest_warm, ppid: seen.at(-1)! };
    };
    try {
      const first = await job(1n);
      const second = await job(2n);
      assert.equal(second.warm, 1);
      assert.equal(second.ppid, first.ppid);
      // Evicted and built again at the same path (as for another python_version): the same interpreter path, another env.
      await rm(manager.venvPath(prepare.env_hash), { recursive: true, force: true });
      assert.equal((await manager.prepare(prepare)).cached, false);
      const rebuilt = await job(3n);
      assert.equal(rebuilt.warm, 0, "the rebuilt env's first job starts a parent");
      assert.notEqual(rebuilt.ppid, first.ppid, "not forked from the parent of the old build");
      const next = await job(4n);
      assert.equal(next.warm, 1);
      assert.equal(next.ppid, rebuilt.ppid);
    } finally {
      await pool.close();
    }
  });

  test('opt-out: MANIFEST["fork"] = False and bridge.warm.enabled = false run a fresh process per job', async () => {
    const pool = new WarmPool({ logger: silentLogger() });
    try {
      const optedOut = `MANIFEST = {"name": "probe", "fork": False}\n${probe}`;
      for (let i = 0; i < 2; i++) {
        const { result, seen } = await runProbe("look", { warm: pool, source: optedOut });
        assert.equal(result.warm, false);
        assert.equal(seen.ppid, process.pid, "spawned by the worker itself");
      }

      const envs = { acquire: async (envHash: string) => ({ envHash, interpreterPath: python, release: () => undefined }) };
      const pipeline = new Pipeline({ logger: silentLogger(), outputRoot: work, workerId: "w", envs, bridge: { warm: { enabled: false } }, warm: pool });
      const seen: number[] = [];
      pipeline.use({
        name: "test",
        apply: (hooks) =>
          hooks.onBatch.tapPromise("test", async (batch) => {
            seen.push(Number(batch.table.get(0)!.toJSON().ppid));
          }),
      });
      const command: JobCommand = {
        pluginName: "probe",
        filePath: await input("look"),
        sinks: [],
        fileVersionId: 1n,
        envHash: "0".repeat(64),
        sourceCode: probe,
        artifactHash: null,
      };
      const receipt = await pipeline.runJob({ jobId: 1n, command, logger: silentLogger(), signal: new AbortController().signal });
      assert.equal(receipt.status, "SUCCESS", receipt.errorMessage ?? "");
      assert.equal(receipt.metrics.guest_warm, 0);
      assert.deepEqual(seen, [process.pid]);
    } finally {
      await pool.close();
    }
  });

  test("a plugin whose imports start a Python thread is not forked", async () => {
    const pool = new WarmPool({ logger: silentLogger() });
    const saved = process.env.PYTHONPATH;
    process.env.PYTHONPATH = fixturePath("warm");
    try {
      const source = await readFile(fixturePath("warm", "uses_thread_module.py"), "utf8");
      for (let i = 0; i < 2; i++) {
        const { result, seen } = await runProbe("look", { warm: pool, source, allowEnv: ["PYTHONPATH"] });
        assert.equal(result.warm, false);
        assert.equal(seen.ppid, process.pid);
      }
    } finally {
      if (saved === undefined) delete process.env.PYTHONPATH;
      else process.env.PYTHONPATH = saved;
      await pool.close();
    }
  });

  test("limits: an idle parent stops, the least recently used goes beyond maxParents, a parent above maxParentBytes is not kept", async () => {
    const idle = new WarmPool({ logger: silentLogger(), idleMs: 300 });
    try {
      const { seen } = await runProbe("look", { warm: idle });
      const deadline = Date.now() + 10_000;
      while (isProcessAlive(seen.ppid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(isProcessAlive(seen.ppid), false, "stopped after its idle time");
      assert.equal((await runProbe("look", { warm: idle })).result.warm, false, "and restarted by the next job");
    } finally {
      await idle.close();
    }

    const one = new WarmPool({ logger: silentLogger(), maxParents: 1 });
    try {
      const a = await runProbe("look", { warm: one });
      const b = await runProbe("look", { warm: one, source: `${probe}\n# b\n` });
      assert.notEqual(b.seen.ppid, a.seen.ppid);
      const deadline = Date.now() + 10_000;
      while (isProcessAlive(a.seen.ppid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(isProcessAlive(a.seen.ppid), false, "the older parent made room");
      assert.equal(one.stats().parents, 1);
    } finally {
      await one.close();
    }

    const small = new WarmPool({ logger: silentLogger(), maxParentBytes: 1024 });
    try {
      for (let i = 0; i < 2; i++) {
        const { result, seen } = await runProbe("look", { warm: small });
        assert.equal(result.warm, false);
        assert.equal(seen.ppid, process.pid, "too large to keep: a fresh process");
      }
    } finally {
      await small.close();
    }
  });

  test("a 1 MB plugin source runs, warm and fresh", async () => {
    const pool = new WarmPool({ logger: silentLogger() });
    try {
      const blob = "x".repeat(1024 * 1024);
      const source = `${probe}\nBLOB = "${blob}"\n_parse = parse\ndef parse(path):\n    seen = _parse(path)\n    seen["blob"] = [len(BLOB)]\n    return seen\n`;
      assert.ok(Buffer.byteLength(source) > 1024 * 1024);
      for (const warm of [undefined, pool, pool]) {
        const { seen } = await runProbe("look", { warm, source });
        assert.equal((seen as Seen & { blob: number }).blob, 1024 * 1024);
      }
    } finally {
      await pool.close();
    }
  });

  test("the worker under a remote Sentinel forks warm guests by default", async (t) => {
    const sentinel = await TestSentinel.bind();
    const worker = await spawnWorker({ args: ["--connect", sentinel.endpoint, "--worker-id", "warm-1"] });
    t.after(async () => {
      await worker.dispose();
      await sentinel.close();
    });
    const { identity } = await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 20_000 });
    const lockfile = 'version = 1\nrequires-python = ">=3.11"\n';
    const envHash = createHash("sha256").update(lockfile).digest("hex");
    await sentinel.send(identity, Opcode.PREPARE_ENV, 0n, { env_hash: envHash, lockfile_content: lockfile, python_version: null });
    await sentinel.expect(Opcode.ENV_READY, { timeoutMs: 120_000 });
    const warm: number[] = [];
    for (const jobId of [1n, 2n, 3n]) {
      const command: DispatchCommand = {
        plugin_name: "probe",
        file_path: await input("look"),
        sinks: [],
        file_version_id: jobId,
        env_hash: envHash,
        source_code: probe,
        artifact_hash: null,
      };
      await sentinel.send(identity, Opcode.DISPATCH, jobId, command);
      const { message } = await sentinel.expect(Opcode.CONCLUDE, { jobId, timeoutMs: 60_000 });
      assert.equal(message.payload.status, "SUCCESS", message.payload.error_message ?? "");
      warm.push(Number(message.payload.metrics.guest_warm));
      assert.ok(Number(message.payload.metrics.guest_start_ms) >= 0);
    }
    assert.deepEqual(warm, [0, 1, 1]);
  });

  test("`casparian run` forks warm guests by default", async () => {
    const dir = await mkdtemp(join(work, "run-"));
    const data = join(dir, "data");
    await mkdir(data);
    for (let i = 0; i < 4; i++) await writeFile(join(data, `${i}.csv`), "n\n1\n");
    const plugin = join(dir, "plugin.py");
    await writeFile(plugin, "class Handler:\n    def execute(self, path):\n        return {'n': [1]}\n");
    const report = join(dir, "report.json");
    const exit = await runCli([plugin, data, "--workers", "1", "--output", join(dir, "out"), "--report", report], { cwd: dir, home: join(dir, "home") });
    assert.equal(exit.code, 0, exit.stderr);
    const parsed = JSON.parse(await readFile(report, "utf8")) as {
      inputs: { metrics: Record<string, number>; worker: string | null; dispatched_at_ms: number | null; round_trip_ms: number | null }[];
    };
    // The first job is warm too when the parent the worker started ahead (warm-start.ts) was ready before it.
    const warm = parsed.inputs.map((i) => i.metrics.guest_warm).sort();
    assert.ok(warm.join() === "0,1,1,1" || warm.join() === "1,1,1,1", warm.join());
    // The report says when each job went to which worker: one worker, one job at a time.
    assert.equal(new Set(parsed.inputs.map((i) => i.worker)).size, 1);
    assert.match(parsed.inputs[0]!.worker ?? "", /^run-/);
    const jobs = [...parsed.inputs].sort((a, b) => a.dispatched_at_ms! - b.dispatched_at_ms!);
    assert.ok(jobs[0]!.dispatched_at_ms! > 0);
    for (let i = 1; i < jobs.length; i++) assert.ok(jobs[i]!.dispatched_at_ms! >= jobs[i - 1]!.dispatched_at_ms! + jobs[i - 1]!.round_trip_ms!);
  });
});
