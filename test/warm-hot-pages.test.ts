/**
 * Learned hot pages (guest/casparian_guest/hot_pages.py) with real Python: the first jobs of a
 * warm guest report the pages they made their own, and the spare children forked after that
 * pre-fault them while they wait for their job (receipts: guest.prefault_kb); with
 * bridge.warm.prefaultMb 0 none does. A hostile report (ranges outside the parent's memory,
 * misaligned or reversed ones, garbage, a flood) is refused with a log line, nothing of it is
 * learned, and the warm guest goes on serving jobs.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { runGuest } from "../core/bridge/host.js";
import { WarmPool } from "../core/bridge/warm-pool.js";
import { silentLogger } from "../core/kernel/logger.js";
import { capturingLogger } from "./helpers/arrow.js";
import { warmFixture } from "./helpers/guests.js";
import { testJob } from "./helpers/pyenv.js";

const TIMEOUTS = { connectMs: 30_000, idleMs: 60_000, jobMs: 120_000 };

const fixture = warmFixture("warm-hot-pages");

interface Ran {
  warm: boolean;
  /** How many CPUs the job's child may run on. */
  cpus: number;
  ppid: number;
  wrote: number;
  metrics: Record<string, number>;
}

let inputs = 0;
async function job(pool: WarmPool, action: string): Promise<Ran> {
  const filePath = join(fixture.work, `${inputs++}-${action}.txt`);
  await writeFile(filePath, action);
  const { job } = testJob(fixture.source, { filePath, pluginName: "hot_pages" });
  let row: Record<string, unknown> = {};
  const result = await runGuest({
    interpreterPath: fixture.python,
    job,
    timeouts: TIMEOUTS,
    warm: pool,
    onBatch: async (batch) => {
      row = batch.table.get(0)!.toJSON() as Record<string, unknown>;
    },
  });
  return { warm: result.warm === true, cpus: Number(row.cpus), ppid: Number(row.ppid), wrote: Number(row.wrote), metrics: result.guestMetrics };
}

/** Resolves once the pool's log has a line matching `pattern` (the warm guest's stderr reaches it). */
async function logged(records: Array<Record<string, unknown>>, pattern: RegExp): Promise<string> {
  for (;;) {
    const line = records.map((r) => String(r.msg)).find((m) => pattern.test(m));
    if (line !== undefined) return line;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe("learned hot pages", () => {
  test("the job after the first one pre-faults the pages the first one made its own; with prefaultMb 0 none does", async (t) => {
    const { logger, records } = capturingLogger();
    const pool = new WarmPool({ logger });
    const off = new WarmPool({ logger: silentLogger(), prefaultMb: 0 });
    t.after(async () => {
      await pool.close();
      await off.close();
    });

    const first = await job(pool, "look");
    assert.equal(first.metrics.prefault_kb, 0, "nothing is learned before the first job");
    await logged(records, /learned \d+ KiB of hot pages from a job/);
    const second = await job(pool, "look");
    assert.equal(second.ppid, first.ppid, "the same warm guest");
    assert.equal(second.warm, true);
    assert.ok(second.metrics.prefault_kb! > 0, `the second job's child pre-faulted ${second.metrics.prefault_kb} KiB`);
    assert.ok(second.metrics.prefault_kb! <= 64 * 1024, "at most bridge.warm.prefaultMb (default 64)");
    assert.equal(typeof second.metrics.minor_faults, "number");

    const offFirst = await job(off, "look");
    const offSecond = await job(off, "look");
    assert.equal(offSecond.ppid, offFirst.ppid, "the same warm guest");
    assert.equal(offFirst.metrics.prefault_kb, 0);
    assert.equal(offSecond.metrics.prefault_kb, 0, "prefaultMb 0: no spare pre-faults");
    assert.equal(typeof offSecond.metrics.minor_faults, "number");
  });

  test("a spare whose CPU other processes want pauses its pre-fault (receipt: guest.prefault_pauses); its job still runs", async (t) => {
    const { logger, records } = capturingLogger();
    const pool = new WarmPool({ logger });
    const hogs: Array<ReturnType<typeof spawn>> = [];
    t.after(async () => {
      for (const hog of hogs) hog.kill("SIGKILL");
      await pool.close();
    });

    const first = await job(pool, "touch");
    assert.equal(first.metrics.prefault_pauses, 0, "nothing to pre-fault before the first job");
    await logged(records, /learned \d+ KiB of hot pages from a job/);
    // The warm parent, and so every spare it forks from now on, shares one CPU with two processes
    // that never sleep: a spare pre-faulting there waits on the run queue longer than it runs,
    // once it is preempted (the scheduler may let one run a while first: several jobs are tried).
    const pin = `import os; cpu = min(os.sched_getaffinity(${first.ppid})); os.sched_setaffinity(${first.ppid}, {cpu}); print(cpu)`;
    const cpu = spawnSync(fixture.python, ["-c", pin], { encoding: "utf8" });
    assert.equal(cpu.status, 0, cpu.stderr);
    const spin = `import os, time\nos.sched_setaffinity(0, {${Number(cpu.stdout)}})\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass`;
    for (let i = 0; i < 2; i++) hogs.push(spawn(fixture.python, ["-c", spin], { stdio: "ignore" }));
    await job(pool, "touch"); // its spare was forked before the pinning; the next job's is not
    const pauses: number[] = [];
    for (let i = 0; i < 5 && !pauses.some((n) => n >= 1); i++) {
      const busy = await job(pool, "touch");
      assert.equal(busy.ppid, first.ppid, "the same warm guest");
      assert.equal(busy.warm, true);
      assert.equal(busy.cpus, 1, "the spare was forked after its parent was pinned to one CPU");
      pauses.push(busy.metrics.prefault_pauses!);
    }
    assert.ok(
      pauses.some((n) => n >= 1),
      `the spares paused their pre-fault ${pauses.join(", ")} time(s) on a busy CPU`,
    );
  });

  test("a hot-page report with ranges outside the parent's memory, or garbage, is refused with a log line and nothing is learned", async (t) => {
    const { logger, records } = capturingLogger();
    const pool = new WarmPool({ logger });
    t.after(() => pool.close());

    const outside = await job(pool, "outside");
    assert.ok(outside.wrote > 0);
    await logged(records, /refused \d+ page\(s\) of a job's hot-page report/);
    const garbage = await job(pool, "garbage");
    assert.ok(garbage.wrote > 0);
    await logged(records, /hot-page report is not in the expected form/);
    // Both reports are in (the warm guest logs in order): neither taught it a page.
    const learned = records.map((r) => String(r.msg)).filter((m) => /learned \d+ KiB of hot pages/.test(m));
    assert.deepEqual(learned, [], "no hot pages learned from the hostile jobs");
    const next = await job(pool, "look");
    assert.equal(next.ppid, outside.ppid, "the same warm guest serves the next job");
    assert.equal(next.warm, true);
    assert.equal(next.metrics.prefault_kb, 0, "nothing of the hostile reports was learned");
  });

  test("a flood of hot-page report bytes is refused with a log line; the warm guest goes on", async (t) => {
    const { logger, records } = capturingLogger();
    const pool = new WarmPool({ logger });
    t.after(() => pool.close());

    const flood = await job(pool, "flood");
    assert.ok(flood.wrote > 131_080, `the flood wrote ${flood.wrote} bytes, more than any report may hold`);
    await logged(records, /reported more than 131080 bytes of hot pages; refused/);
    const next = await job(pool, "look");
    assert.equal(next.ppid, flood.ppid, "the same warm guest serves the next job");
    assert.equal(next.metrics.prefault_kb, 0, "nothing of the flood was learned");
  });
});
