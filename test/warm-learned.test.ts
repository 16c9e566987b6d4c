/**
 * Learned imports (guest/casparian_guest/learned_imports.py) with real Python: a warm guest
 * imports, before its next fork, the modules a job imported that it had not, so the next
 * job finds them loaded; a hostile report (a module outside the venv and the stdlib, names
 * that are no module, one that acts when imported, a thousand that do not exist, a flood of
 * bytes) is
 * ignored with a log line, and nothing of it is imported.
 */
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { runGuest } from "../core/bridge/host.js";
import { WarmPool } from "../core/bridge/warm-pool.js";
import { capturingLogger } from "./helpers/arrow.js";
import { warmFixture } from "./helpers/guests.js";
import { fixturePath, testJob } from "./helpers/pyenv.js";

const TIMEOUTS = { connectMs: 30_000, idleMs: 60_000, jobMs: 120_000 };

const fixture = warmFixture("warm-learned");

type Seen = Record<string, boolean | number>;

let inputs = 0;
async function job(pool: WarmPool, action: string): Promise<{ warm: boolean; seen: Seen }> {
  const filePath = join(fixture.work, `${inputs++}-${action}.txt`);
  await writeFile(filePath, action);
  const { job } = testJob(fixture.source, { filePath, pluginName: "learns" });
  let seen: Seen | undefined;
  const result = await runGuest({
    interpreterPath: fixture.python,
    job,
    timeouts: TIMEOUTS,
    warm: pool,
    allowEnv: ["PYTHONPATH", "LEARNED_MARKER"],
    onBatch: async (batch) => {
      const row = batch.table.get(0)!.toJSON() as Record<string, unknown>;
      seen = Object.fromEntries(Object.entries(row).map(([k, v]) => [k, typeof v === "bigint" ? Number(v) : (v as boolean | number)]));
    },
  });
  return { warm: result.warm === true, seen: seen! };
}

describe("learned imports", () => {
  test("a module one job imports inside its function is loaded in the warm guest for the next job; a hostile report is ignored with a log line", async (t) => {
    const marker = join(fixture.home, "marker.txt");
    const saved = { PYTHONPATH: process.env.PYTHONPATH, LEARNED_MARKER: process.env.LEARNED_MARKER };
    process.env.PYTHONPATH = fixturePath("warm-learned");
    process.env.LEARNED_MARKER = marker;
    const { logger, records } = capturingLogger();
    const pool = new WarmPool({ logger });
    t.after(async () => {
      await pool.close();
      for (const [name, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    });

    const first = await job(pool, "look");
    assert.equal(first.seen.colorsys, false, "colorsys is not loaded before any job imported it");
    const importing = await job(pool, "import");
    assert.equal(importing.seen.colorsys, false);
    const next = await job(pool, "look");
    assert.equal(next.warm, true);
    assert.equal(next.seen.ppid, first.seen.ppid, "the same warm guest");
    assert.equal(next.seen.colorsys, true, "the job after the importing one finds colorsys loaded before its plugin runs");

    await job(pool, "hostile");
    await job(pool, "many");
    const flood = await job(pool, "flood");
    assert.ok(Number(flood.seen.flooded) > 32 * 1024, `the flood wrote ${flood.seen.flooded} bytes`);
    const last = await job(pool, "look");
    assert.equal(last.seen.ppid, first.seen.ppid, "the same warm guest");
    for (const name of ["outside_marker", "not a module!", "antigravity", "fake_module_7", "flood_1"]) {
      assert.equal(last.seen[name], false, `${name} was imported by the warm guest`);
    }
    const markerPids = (await readFile(marker, "utf8")).trim().split("\n");
    assert.equal(markerPids.length, 1, `outside_marker ran in ${markerPids.length} processes: ${markerPids.join(", ")}`);
    assert.notEqual(Number(markerPids[0]), first.seen.ppid, "only the job imported it, never the warm guest");

    const lines = records.map((r) => String(r.msg));
    const ignored = lines.filter((l) => l.includes("ignored"));
    assert.ok(
      lines.some((l) => /imported 1 module\(s\) a job imported.*colorsys/.test(l)),
      lines.join("\n"),
    );
    assert.ok(
      ignored.some((l) => l.includes("'outside_marker': outside the standard library and site-packages")),
      ignored.join("\n"),
    );
    assert.ok(
      ignored.some((l) => l.includes("'not a module!': not a module name")),
      ignored.join("\n"),
    );
    assert.ok(
      ignored.some((l) => l.includes("'antigravity': acts when imported")),
      ignored.join("\n"),
    );
    assert.ok(
      ignored.some((l) => l.includes("'fake_module_") && l.includes("not found")),
      ignored.join("\n"),
    );
    assert.ok(
      ignored.some((l) => /reported more than 32768 bytes of new modules; ignored/.test(l)),
      ignored.join("\n"),
    );
  });
});
