/**
 * What a warm pool does before a job comes (core/bridge/warm-pool.ts, job-dir.ts,
 * guest/casparian_guest/fork_server.py, confine.py), with real Python: the spare child is moved
 * into the next job's cgroup and confines itself for it, and, once no job runs, the next job's
 * directory is opened and the spare connects its output there. Each job still gets a scope and
 * a directory of its own, which no other job can reach, under its own limits; whatever waits
 * for a job that never comes goes when the pool stops.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { runGuest } from "../core/bridge/host.js";
import { jobCgroupRoot } from "../core/bridge/job-scope.js";
import { jobTeardownsSettled } from "../core/bridge/job-teardown.js";
import type { GuestLimits } from "../core/bridge/limits.js";
import type { GuestRunOptions } from "../core/bridge/types.js";
import { type AheadState, WarmPool } from "../core/bridge/warm-pool.js";
import { EnvManager } from "../core/env/manager.js";
import { silentLogger } from "../core/kernel/logger.js";
import { isProcessAlive } from "../core/kernel/process.js";
import { capturingLogger } from "./helpers/arrow.js";
import { bareEnvironment, testJob } from "./helpers/pyenv.js";

const TIMEOUTS = { connectMs: 30_000, idleMs: 60_000, jobMs: 120_000 };

// What the job sees of itself, and the job directories (with a listening bridge socket) it can
// find beside its own while it runs for as many seconds as its input says.
const REPORTER = `
import json, os, resource, time

def parse(path):
    with open(path) as handle:
        wait = float(handle.read() or 0)
    here = os.getcwd()
    parent = os.path.dirname(here)
    deadline = time.monotonic() + wait
    while True:
        others = sorted(n for n in os.listdir(parent) if os.path.join(parent, n) != here and os.path.exists(os.path.join(parent, n, "bridge.sock")))
        if others or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    with open("/proc/self/status") as handle:
        status = dict(line.split(":", 1) for line in handle if ":" in line)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "pid": [os.getpid()], "cwd": [here], "cgroup": [os.environ.get("CASPARIAN_JOB_CGROUP", "")],
        "nofile_soft": [soft], "nofile_hard": [hard],
        "no_new_privs": [int(status["NoNewPrivs"].strip())], "cap_eff": [status["CapEff"].strip()],
        "others": [json.dumps(others)],
    }
`;
// Another plugin (another parent) with the same report.
const OTHER_REPORTER = `${REPORTER}\n# another plugin\n`;

interface Report {
  pid: number;
  cwd: string;
  cgroup: string;
  nofile_soft: number;
  nofile_hard: number;
  no_new_privs: number;
  cap_eff: string;
  others: string[];
}

let root: string;
let python: string;
let inputs = 0;
let savedTmpdir: string | undefined;

before(async () => {
  root = await mkdtemp(join(tmpdir(), "casparian-ahead-test-"));
  const home = join(root, "home");
  python = await bareEnvironment(new EnvManager({ home: join(home, "casparian"), logger: silentLogger() }));
  await mkdir(join(root, "work"));
  // Job directories go below a temp directory of this test's own, so it can see all of them.
  savedTmpdir = process.env.TMPDIR;
  process.env.TMPDIR = join(root, "jobs");
  await mkdir(process.env.TMPDIR);
});

after(async () => {
  if (savedTmpdir === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmpdir;
  if (root) await rm(root, { recursive: true, force: true });
});

async function report(
  pool: WarmPool | undefined,
  options: { waitSeconds?: number; limits?: GuestLimits; source?: string } & Partial<GuestRunOptions> = {},
): Promise<Report> {
  const filePath = join(root, "work", `${inputs++}.txt`);
  await writeFile(filePath, String(options.waitSeconds ?? 0));
  const { job } = testJob(options.source ?? REPORTER, { filePath, pluginName: "reporter" });
  const rows: Report[] = [];
  await runGuest({
    interpreterPath: python,
    job,
    timeouts: TIMEOUTS,
    ...(pool ? { warm: pool } : {}),
    ...(options.limits ? { limits: options.limits } : {}),
    onBatch: async (batch) => {
      const row = batch.table.get(0)!.toJSON() as Record<string, unknown>;
      const plain = Object.fromEntries(Object.entries(row).map(([k, v]) => [k, typeof v === "bigint" ? Number(v) : v]));
      rows.push({ ...plain, others: JSON.parse(plain.others as string) } as Report);
    },
  });
  assert.equal(rows.length, 1);
  return rows[0]!;
}

/** The pool's one spare once `ready` says it is prepared (polled; the pool does this in the background). */
async function aheadWhen(pool: WarmPool, ready: (state: AheadState) => boolean): Promise<AheadState> {
  for (let i = 0; i < 1000; i++) {
    const state = pool.ahead().find(ready);
    if (state) return state;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`the pool did not prepare its spare: ${JSON.stringify(pool.ahead())}`);
}

/** True once `pid` is gone (polled: a killed child stays a zombie until its parent reaps it). */
async function gone(pid: number): Promise<boolean> {
  for (let i = 0; i < 500 && isProcessAlive(pid); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  return !isProcessAlive(pid);
}

async function cgroupPath(name: string): Promise<string | undefined> {
  const where = await jobCgroupRoot();
  return "dir" in where && name ? join(where.dir, name) : undefined;
}

describe("warm guests: the next job prepared ahead", () => {
  test("consecutive jobs get directories and cgroups of their own; the next job's directory does not exist while a job runs", async () => {
    const pool = new WarmPool({ logger: silentLogger() });
    try {
      // The first job runs for a second: long enough for its spare to be moved and confined.
      const first = await report(pool, { waitSeconds: 1 });
      assert.deepEqual(first.others, [], "no other job's directory is there while a job runs");
      // A job's cgroup and directory go after its answer (job-teardown.ts).
      await jobTeardownsSettled();
      assert.equal(existsSync(first.cwd), false, "a job's directory goes with its job");
      const ready = await aheadWhen(pool, (state) => state.dir !== undefined);
      const second = await report(pool, { waitSeconds: 0.3 });
      assert.equal(second.pid, ready.pid, "the spare ran the job");
      assert.equal(second.cwd, ready.dir, "in the directory opened for it");
      assert.notEqual(second.cwd, first.cwd);
      assert.deepEqual(second.others, []);
      if (first.cgroup) {
        assert.notEqual(second.cgroup, first.cgroup, "each job has a cgroup of its own");
        assert.equal(second.cgroup, ready.cgroup);
        await jobTeardownsSettled();
        const gone = await cgroupPath(first.cgroup);
        assert.equal(gone !== undefined && existsSync(gone), false, "a job's cgroup goes with its job");
      }
      const third = await report(pool);
      assert.notEqual(third.pid, second.pid);
      assert.notEqual(third.cwd, second.cwd);
    } finally {
      await pool.close();
    }
  });

  test("a child confined ahead runs under its job's limits; a job with other limits is not served by it", async () => {
    const pool = new WarmPool({ logger: silentLogger() });
    const root = process.geteuid?.() === 0;
    try {
      await report(pool, { limits: { openFiles: 300 } });
      const confined = await aheadWhen(pool, (state) => state.confinedFor?.includes('"openFiles":300') === true && state.dir !== undefined);
      const same = await report(pool, { limits: { openFiles: 300 } });
      assert.equal(same.pid, confined.pid, "the job ran in the child confined ahead");
      assert.deepEqual([same.nofile_soft, same.nofile_hard], [300, 300]);
      assert.equal(same.no_new_privs, 1);
      if (root) assert.equal(same.cap_eff, "0000000000000000", "a root guest has no capabilities");

      const stale = await aheadWhen(pool, (state) => state.confinedFor?.includes('"openFiles":300') === true && state.dir !== undefined);
      const changed = await report(pool, { limits: { openFiles: 200 } });
      assert.notEqual(changed.pid, stale.pid, "a child confined for the old limits does not run the job");
      assert.deepEqual([changed.nofile_soft, changed.nofile_hard], [200, 200]);
      assert.equal(changed.no_new_privs, 1);
      if (root) assert.equal(changed.cap_eff, "0000000000000000");
      assert.equal(await gone(stale.pid), true, "the stale spare is gone");
      assert.equal(existsSync(stale.dir!), false, "and so is its directory");

      await aheadWhen(pool, (state) => state.confinedFor?.includes('"openFiles":200') === true);
      const next = await report(pool, { limits: { openFiles: 200 } });
      assert.deepEqual([next.nofile_soft, next.nofile_hard], [200, 200]);
    } finally {
      await pool.close();
    }
  });

  test("a job of another plugin (or a fresh guest) gives up the directory opened for this plugin's next job before its guest starts", async () => {
    const pool = new WarmPool({ logger: silentLogger() });
    try {
      await report(pool);
      const ready = await aheadWhen(pool, (state) => state.dir !== undefined);
      const other = await report(pool, { source: OTHER_REPORTER, waitSeconds: 0.3 });
      assert.deepEqual(other.others, [], "the other plugin's job finds no directory but its own");
      assert.equal(existsSync(ready.dir!), false);
      const ready2 = await aheadWhen(pool, (state) => state.dir !== undefined && state.dir !== ready.dir);
      const fresh = await report(undefined, { waitSeconds: 0.3 });
      assert.deepEqual(fresh.others, [], "nor does a fresh guest");
      assert.equal(existsSync(ready2.dir!), false);
      const again = await report(pool);
      assert.notEqual(again.cwd, ready.dir);
      assert.notEqual(again.cwd, ready2.dir);
      await jobTeardownsSettled();
      assert.equal(existsSync(again.cwd), false);
    } finally {
      await pool.close();
    }
  });

  test("a spare reserved while a job runs gets its limits with its directory (one message) and runs its job confined ahead; the manifest is noted once, by the parent", async () => {
    const source = `
import os, time
from casparian_guest import confine

MANIFEST = {"name": "ahead-probe", "version": "2.5"}

def parse(path):
    with open(path) as handle:
        time.sleep(float(handle.read() or 0))
    return {"pid": [os.getpid()], "confined_ahead": [confine.confined_ahead]}
`;
    const poolLog = capturingLogger();
    const jobLog = capturingLogger();
    const run = async (pool: WarmPool | undefined, waitSeconds: number) => {
      const filePath = join(root, "work", `${inputs++}.txt`);
      await writeFile(filePath, String(waitSeconds));
      const { job } = testJob(source, { filePath, pluginName: "ahead_probe", logger: jobLog.logger });
      const rows: Array<{ pid: number; confined_ahead: boolean }> = [];
      await runGuest({
        interpreterPath: python,
        job,
        timeouts: TIMEOUTS,
        limits: { openFiles: 250 },
        ...(pool ? { warm: pool } : {}),
        onBatch: async (batch) => {
          const row = batch.table.get(0)!.toJSON() as { pid: bigint; confined_ahead: boolean };
          rows.push({ pid: Number(row.pid), confined_ahead: row.confined_ahead });
        },
      });
      assert.equal(rows.length, 1);
      return rows[0]!;
    };
    const pool = new WarmPool({ logger: poolLog.logger });
    try {
      // The first job runs long enough for its spare to be moved into its scope meanwhile: its
      // limits wait for the directory opened once the job ends, and go in the same message.
      const first = await run(pool, 0.5);
      const ahead = await aheadWhen(pool, (state) => state.confinedFor?.includes('"openFiles":250') === true && state.dir !== undefined);
      assert.notEqual(ahead.pid, first.pid);
      const second = await run(pool, 0);
      assert.equal(second.pid, ahead.pid, "the job ran in the spare prepared ahead");
      assert.equal(second.confined_ahead, true, "the spare confined itself before its job came");
    } finally {
      await pool.close();
    }
    const ready = poolLog.records.filter((r) => r.msg === "warm guest ready");
    assert.equal(ready.length, 1);
    assert.deepEqual(ready[0]!.plugin_manifest, { name: "ahead-probe", version: "2.5" });
    const noted = (records: Array<Record<string, unknown>>) => records.filter((r) => String(r.msg).includes("plugin manifest: name=ahead-probe"));
    assert.deepEqual(noted(jobLog.records), [], "no warm job notes the manifest");
    await run(undefined, 0);
    assert.equal(noted(jobLog.records).length, 1, "a fresh guest notes it");
  });

  test("what waits for a job that never comes is gone once the pool stops: spare, directory, cgroup", async () => {
    const pool = new WarmPool({ logger: silentLogger() });
    let ready: AheadState;
    try {
      await report(pool);
      ready = await aheadWhen(pool, (state) => state.dir !== undefined && (state.cgroup !== undefined || state.confinedFor !== undefined));
    } finally {
      await pool.close();
    }
    assert.equal(existsSync(ready.dir!), false);
    const cgroup = ready.cgroup && (await cgroupPath(ready.cgroup));
    if (cgroup) assert.equal(existsSync(cgroup), false);
    assert.equal(await gone(ready.pid), true);
    assert.deepEqual(
      (await readdir(process.env.TMPDIR!)).filter((name) => name.startsWith("casparian-bridge-")),
      [],
      "no job or parent directory is left",
    );
  });
});
