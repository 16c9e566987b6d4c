/**
 * `casparian run` and the spares' pre-fault (README "Warm guests"): with a worker on every
 * core there is no free core for a spare to copy its job's pages on, so the run tells its
 * workers (--warm-prefault-default 0) not to pre-fault unless bridge.warm.prefaultMb says.
 * Real workers, real Python, the example plugin; the receipts (--report) say what each
 * job's child had pre-faulted (guest.prefault_kb).
 */
import assert from "node:assert/strict";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parseWorkerFlags } from "../core/cli/cli.js";
import { packageRoot } from "../core/kernel/paths.js";
import { runCli } from "./helpers/run-cli.js";

const PLUGIN = join(packageRoot(), "examples", "hello", "plugin.py");
const SAMPLES = join(packageRoot(), "examples", "hello", "data");

let root: string;
/** One home for every run: the example's environment is built once. */
let home: string;
let runs = 0;

before(async () => {
  root = await mkdtemp(join(tmpdir(), "casparian-run-prefault-test-"));
  home = join(root, "home");
});

after(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

interface Receipt {
  state: string;
  metrics: Record<string, number>;
}

/** `casparian run` of the example over `files` copies of its samples: each warm job's guest.prefault_kb. */
async function prefaulted(workers: number, files: number, config: object): Promise<number[]> {
  const dir = join(root, `run-${runs++}`);
  const data = join(dir, "data");
  await mkdir(data, { recursive: true });
  const samples = (await readdir(SAMPLES)).sort();
  for (let i = 0; i < files; i++) await copyFile(join(SAMPLES, samples[i % samples.length]!), join(data, `${String(i).padStart(3, "0")}.csv`));
  await writeFile(join(dir, "casparian.config.json"), JSON.stringify(config));
  const report = join(dir, "report.json");
  const args = [PLUGIN, data, "--workers", String(workers), "--config", join(dir, "casparian.config.json"), "--output", join(dir, "out"), "--report", report];
  const exit = await runCli(args, { cwd: dir, home });
  assert.equal(exit.code, 0, exit.stderr);
  const inputs = (JSON.parse(await readFile(report, "utf8")) as { inputs: Receipt[] }).inputs;
  assert.equal(inputs.filter((i) => i.state === "succeeded").length, files, exit.stdout);
  const warm = inputs.filter((i) => i.metrics.guest_warm === 1);
  assert.ok(warm.length >= files - workers, `${warm.length} of ${files} jobs ran warm`);
  return warm.map((i) => {
    assert.equal(typeof i.metrics["guest.prefault_kb"], "number", "a warm job's receipt says what its child pre-faulted");
    return i.metrics["guest.prefault_kb"]!;
  });
}

describe("casparian run: the spares' pre-fault and the cores", { timeout: 300_000 }, () => {
  const cores = availableParallelism();

  test("with a worker on every core, no spare pre-faults", async () => {
    const kb = await prefaulted(cores, 4 * cores, {});
    assert.deepEqual(
      kb.filter((k) => k > 0),
      [],
      `no job's child pre-faulted anything (guest.prefault_kb: ${kb.join(", ")})`,
    );
  });

  test("with a worker on every core, bridge.warm.prefaultMb still turns the pre-fault on", async () => {
    const kb = await prefaulted(cores, 4 * cores, { bridge: { warm: { prefaultMb: 64 } } });
    assert.ok(
      kb.some((k) => k > 0),
      `some job's child pre-faulted what the first jobs learned (guest.prefault_kb: ${kb.join(", ")})`,
    );
  });

  test("with a core to spare, the default (64 MiB) stands", async () => {
    const workers = Math.max(1, cores - 1);
    const kb = await prefaulted(workers, 6, {});
    if (workers < cores)
      assert.ok(
        kb.some((k) => k > 0),
        `some job's child pre-faulted (guest.prefault_kb: ${kb.join(", ")})`,
      );
    else
      assert.deepEqual(
        kb.filter((k) => k > 0),
        [],
        "a single core: the one worker takes it",
      );
  });

  test("--warm-prefault-default takes a whole number of MiB", () => {
    assert.equal(parseWorkerFlags(["--warm-prefault-default", "0"]).warmPrefaultDefaultMb, 0);
    assert.equal(parseWorkerFlags(["--warm-prefault-default", "16"]).warmPrefaultDefaultMb, 16);
    assert.equal(parseWorkerFlags([]).warmPrefaultDefaultMb, undefined);
    for (const bad of ["-1", "1.5", "lots"])
      assert.throws(() => parseWorkerFlags([`--warm-prefault-default=${bad}`]), /--warm-prefault-default expects a whole number of MiB/);
  });
});
