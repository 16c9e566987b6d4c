/**
 * A job owns its processes (core/bridge/job-scope.ts), with real guests, fresh and warm: what
 * a plugin leaves running is killed when its job ends, a child holding the plugin's stderr
 * does not hold the answer, a `setsid` daemon does not survive the job, and a plugin that
 * closes its stdout still completes.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { mkdir, readdir, rmdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";
import { runGuest } from "../core/bridge/host.js";
import { jobCgroupRoot } from "../core/bridge/job-scope.js";
import { jobTeardownsSettled } from "../core/bridge/job-teardown.js";
import type { GuestRunOptions } from "../core/bridge/types.js";
import { WarmPool } from "../core/bridge/warm-pool.js";
import type { Batch } from "../core/kernel/job.js";
import { silentLogger } from "../core/kernel/logger.js";
import { packageRoot } from "../core/kernel/paths.js";
import { bareGuests, guestModes, inputFile, type BareGuests } from "./helpers/guests.js";
import { testJob } from "./helpers/pyenv.js";

// The orphans sleep far longer than the job may take: a job they held would time out.
const TIMEOUTS = { connectMs: 30_000, idleMs: 60_000, jobMs: 60_000 };

let guests: BareGuests;
let home: string;
let python: string;
let pool: WarmPool;

before(async () => {
  guests = await bareGuests("job-processes");
  ({ home, python, pool } = guests);
});

after(() => guests?.close());

/** Running (not a zombie waiting for its parent to reap it). */
function isRunning(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

async function runRows(source: string, options: Partial<GuestRunOptions> = {}) {
  const { job } = testJob(source, { filePath: await inputFile(home) });
  const batches: Batch[] = [];
  const started = Date.now();
  const result = await runGuest({ interpreterPath: python, job, timeouts: TIMEOUTS, onBatch: async (b) => void batches.push(b), ...options });
  const rows = batches.flatMap((b) =>
    b.table.toArray().map((row) => Object.fromEntries(Object.entries(row.toJSON()).map(([k, v]) => [k, typeof v === "bigint" ? Number(v) : v]))),
  );
  return { result, rows, ms: Date.now() - started };
}

const ORPHAN_HOLDING_STDERR = `
import os, sys, time
class Handler:
    def execute(self, path):
        pid = os.fork()
        if pid == 0:
            print("child keeps stderr open", file=sys.stderr, flush=True)
            time.sleep(600)
            os._exit(0)
        return [{"child": pid}]
`;

// Double fork + setsid: the daemon leads a session of its own, reparented away from the guest,
// its stdio on /dev/null. It reports its pid and session, and the guest's session, then sleeps.
const SETSID_DAEMON = `
import os, time
class Handler:
    def execute(self, path):
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.write(w, ("%d %d" % (os.getpid(), os.getsid(0))).encode())
                os.close(w)
                time.sleep(600)
                os._exit(0)
            os._exit(0)
        os.close(w)
        daemon, daemon_sid = map(int, os.read(r, 64).split())
        return [{"daemon": daemon, "daemon_sid": daemon_sid, "guest_sid": os.getsid(0)}]
`;

// An exec'd daemon (subprocess with a new session): found without a cgroup by its marker variable.
const EXECED_DAEMON = `
import os, subprocess, sys
class Handler:
    def execute(self, path):
        daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return [{"daemon": daemon.pid, "daemon_sid": os.getsid(daemon.pid), "guest_sid": os.getsid(0)}]
`;

// A child left sleeping in the job's session, and where the job ran: its directory, its cgroup.
const LEAVES_A_SLEEPER = `
import os, subprocess
class Handler:
    def execute(self, path):
        sleeper = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return [{"sleeper": sleeper.pid, "cwd": os.getcwd(), "cgroup": os.environ.get("CASPARIAN_JOB_CGROUP", "")}]
`;

const CLOSES_STDOUT = `
import os
class Handler:
    def execute(self, path):
        os.close(1)
        # The next file opened gets fd 1: the guest's metrics line must not land in it.
        with open(path + ".mine", "w") as mine:
            assert mine.fileno() == 1
        return [{"n": 1}, {"n": 2}, {"n": 3}]
`;

const MODES = guestModes(() => pool);

for (const mode of MODES) {
  describe(`${mode.name}: the job's processes end with the job`, () => {
    test("a child that keeps the plugin's stderr open neither delays the answer nor outlives the job", async () => {
      const { rows, ms, result } = await runRows(ORPHAN_HOLDING_STDERR, mode.options());
      assert.equal(rows.length, 1);
      assert.equal(result.rows, 1);
      // Held until the child's 600 s sleep ends, the job would hit its 60 s timeout instead.
      assert.ok(ms < 30_000, `answered after ${ms} ms`);
      assert.equal(isRunning(rows[0]!.child as number), false, "the child was killed with its job");
    });

    test("a setsid daemon does not survive the job", async () => {
      const { rows } = await runRows(SETSID_DAEMON, mode.options());
      const { daemon, daemon_sid, guest_sid } = rows[0] as { daemon: number; daemon_sid: number; guest_sid: number };
      assert.notEqual(daemon_sid, guest_sid, "the daemon left the guest's session");
      assert.equal(isRunning(daemon), false, `daemon ${daemon} was killed with its job`);
    });

    test("the answer comes after the death of the job's processes; its directory and cgroup are gone once its teardown settles", async () => {
      const { rows } = await runRows(LEAVES_A_SLEEPER, mode.options());
      const { sleeper, cwd, cgroup } = rows[0] as { sleeper: number; cwd: string; cgroup: string };
      // Looked at once, the moment the answer is there, not polled: the sleeper is dead by then.
      assert.equal(isRunning(sleeper), false, `the sleeper ${sleeper} was dead when the job was answered`);
      // Its cgroup and directory go after the answer (job-teardown.ts), and are gone once that settles.
      await jobTeardownsSettled();
      assert.equal(existsSync(cwd), false, `the job's directory ${cwd} is gone`);
      const root = await jobCgroupRoot();
      if ("dir" in root) {
        assert.ok(cgroup.startsWith(`casparian-${process.pid}-`), `the job ran in a cgroup of its own: ${cgroup}`);
        assert.equal(existsSync(join(root.dir, cgroup)), false, `its cgroup ${cgroup} is gone`);
      }
    });

    test("a plugin that closes its stdout completes with its rows", async () => {
      const input = await inputFile(home, "x\n", `closes-stdout-${mode.name.replace(" ", "-")}.txt`);
      const { job } = testJob(CLOSES_STDOUT, { filePath: input });
      const batches: Batch[] = [];
      const result = await runGuest({ interpreterPath: python, job, timeouts: TIMEOUTS, onBatch: async (b) => void batches.push(b), ...mode.options() });
      assert.equal(result.rows, 3);
      assert.deepEqual(
        batches.flatMap((b) => b.table.toArray().map((r) => Number(r.n))),
        [1, 2, 3],
      );
      assert.equal(readFileSync(`${input}.mine`, "utf8"), "", "the metrics line did not go into the plugin's file");
    });
  });
}

describe("without a cgroup (bridge.cgroup: false)", () => {
  test("an exec'd setsid daemon is found by its marker and killed with the job", async () => {
    const { rows } = await runRows(EXECED_DAEMON, { cgroup: false });
    const { daemon, daemon_sid, guest_sid } = rows[0] as { daemon: number; daemon_sid: number; guest_sid: number };
    assert.notEqual(daemon_sid, guest_sid, "the daemon left the guest's session");
    assert.equal(isRunning(daemon), false, `daemon ${daemon} was killed with its job`);
  });

  test("a child that keeps the plugin's stderr open is killed by session, the answer not delayed", async () => {
    const { rows, ms } = await runRows(ORPHAN_HOLDING_STDERR, { cgroup: false, warm: pool });
    assert.ok(ms < 30_000, `answered after ${ms} ms`);
    assert.equal(isRunning(rows[0]!.child as number), false);
  });
});

describe("job cgroups", () => {
  test("each job's cgroup is removed when the job ends (or, without cgroup v2, why there is none is known)", async (t) => {
    const root = await jobCgroupRoot();
    if ("unavailable" in root) {
      // Not a skip: the session fallback above is what runs here, and this says why.
      t.diagnostic(`no job cgroups on this system: ${root.unavailable}`);
      assert.ok(root.unavailable.length > 0);
      return;
    }
    const ours = async () => (await readdir(root.dir)).filter((name) => name.startsWith(`casparian-${process.pid}-`));
    // A warm guest's spare child waits for the next job in that job's cgroup, made ahead: one more, which goes with its guest.
    const before = await ours();
    const own = new WarmPool({ logger: silentLogger() });
    try {
      let reserved: string | undefined;
      for (const options of [{ warm: own }, { warm: own }, {}]) {
        const { rows } = await runRows(SETSID_DAEMON, options);
        assert.equal(isRunning(rows[0]!.daemon as number), false);
        // Removed after the job's answer (job-teardown.ts).
        await jobTeardownsSettled();
        const left = await ours();
        const made = left.filter((name) => !before.includes(name));
        assert.ok(made.length <= 1, `at most the next job's is there: ${made.join(", ")}`);
        // The second job ran in the cgroup made for it ahead, after the first job.
        if (reserved !== undefined && options.warm) assert.equal(left.includes(reserved), false, "the job's cgroup is gone");
        reserved = made[0];
      }
    } finally {
      await own.close();
    }
    assert.deepEqual(await ours(), before, "the spare's cgroup went with its warm guest");
  });

  test("a hierarchy mounted without favordynmods is said once per process, at info, with the fix", async (t) => {
    const root = await jobCgroupRoot();
    if ("unavailable" in root) {
      t.diagnostic(`no job cgroups on this system: ${root.unavailable}`);
      assert.ok(root.unavailable.length > 0);
      return;
    }
    // The superblock options of the cgroup2 mount in use, after the " - " separator of its mountinfo line.
    const line = readFileSync("/proc/self/mountinfo", "utf8")
      .split("\n")
      .find((l) => l.split(" - ")[1]?.startsWith("cgroup2 ") && l.split(" ")[4] === root.mountPoint);
    assert.ok(line, `the mount at ${root.mountPoint} is in mountinfo`);
    const favored = line.split(" - ")[1]!.split(" ")[2]!.split(",").includes("favordynmods");
    assert.equal(root.favorDynmods, favored);
    // A fresh process: once per process means its first scope says it, and no later one.
    const scope = pathToFileURL(join(packageRoot(), "dist", "core", "bridge", "job-scope.js")).href;
    const script = [
      `import { pino } from "pino";`,
      `import { openJobScope } from ${JSON.stringify(scope)};`,
      `const log = pino({ level: "info" });`,
      `for (let i = 0; i < 3; i++) await (await openJobScope({ log })).close();`,
    ].join("\n");
    const run = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8", timeout: 30_000, cwd: packageRoot() });
    assert.equal(run.status, 0, run.stderr);
    const said = run.stdout
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { level: number; msg: string; hint?: string; mount?: string })
      .filter((l) => l.msg.includes("favordynmods"));
    if (favored) assert.deepEqual(said, [], "nothing to say when the hierarchy has it");
    else {
      assert.equal(said.length, 1, JSON.stringify(said));
      assert.equal(said[0]!.level, 30, "at info");
      assert.equal(said[0]!.mount, root.mountPoint);
      assert.match(said[0]!.hint ?? "", /mount -o remount,favordynmods/);
      assert.match(said[0]!.hint ?? "", /CONFIG_CGROUP_FAVOR_DYNMODS/);
    }
  });

  test("the job cgroups of a worker that was killed go, with their processes, when the next worker starts", async (t) => {
    const root = await jobCgroupRoot();
    if ("unavailable" in root) {
      t.diagnostic(`no job cgroups on this system: ${root.unavailable}`);
      assert.ok(root.unavailable.length > 0);
      return;
    }
    // A pid whose process is gone, as a worker's is after kill -9.
    const deadPid = Number(spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" }).stdout);
    const stale = join(root.dir, `casparian-${deadPid}-1`);
    await mkdir(stale);
    const orphan = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" });
    const orphanExit = new Promise((resolve) => orphan.once("exit", resolve));
    t.after(async () => {
      orphan.kill("SIGKILL");
      await rmdir(stale).catch(() => undefined);
    });
    writeFileSync(join(stale, "cgroup.procs"), String(orphan.pid));

    // The next worker: a fresh process (in the same cgroup) looking for where its job cgroups go.
    const scope = pathToFileURL(join(packageRoot(), "dist", "core", "bridge", "job-scope.js")).href;
    const next = spawnSync(process.execPath, ["--input-type=module", "-e", `import { jobCgroupRoot } from ${JSON.stringify(scope)}; await jobCgroupRoot();`], {
      encoding: "utf8",
      timeout: 30_000,
    });
    assert.equal(next.status, 0, next.stderr);
    assert.equal(existsSync(stale), false, "the stale job cgroup was removed");
    assert.equal(await Promise.race([orphanExit.then(() => "killed"), sleep(5000).then(() => "still running")]), "killed");
  });
});
