/**
 * Small-files throughput: 500 small CSVs through `casparian run --workers 2` with
 * the dependency-free example plugin (examples/hello), printing jobs/s and where
 * the time of one job goes. The baseline for making many small jobs cheap.
 *
 *   npm run bench            (all benchmarks)
 *   node dist/bench/small-files.js [--files N] [--workers N]
 *
 * The latency split comes from the receipts (the run's --report file):
 *   dispatch     Sentinel → worker → hooks up to the guest start: (round trip − duration_ms) + dispatch_ms
 *   guest start  interpreter start, shim import, socket connect: guest_start_ms (measured by the worker)
 *   plugin       the guest's own run time, plugin and Arrow encoding: guest.guest_ms
 *   sink commit  prepare + commit of the sinks and the receipt: commit_ms
 * plus the promotion of the files into --output by `casparian run` (after CONCLUDE, not per job above).
 */
import { execFile } from "node:child_process";
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs, promisify } from "node:util";
import { packageRoot } from "../core/kernel/paths.js";

const execFileAsync = promisify(execFile);

interface ReportInput {
  state: string;
  round_trip_ms: number | null;
  metrics: Record<string, number>;
}

interface Report {
  seconds: number;
  inputs: ReportInput[];
}

async function runCli(args: string[], cwd: string, home: string): Promise<{ ms: number; stdout: string }> {
  const started = performance.now();
  const { stdout } = await execFileAsync(process.execPath, [join(packageRoot(), "bin", "casparian.js"), "run", ...args], {
    cwd,
    env: { ...process.env, CASPARIAN_HOME: home },
    maxBuffer: 64 * 1024 * 1024,
  });
  return { ms: performance.now() - started, stdout };
}

function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function stageRow(name: string, values: number[]): string {
  const mean = values.reduce((a, b) => a + b, 0) / Math.max(1, values.length);
  return `  ${name.padEnd(12)} ${mean.toFixed(1).padStart(8)} ${percentile(values, 50).toFixed(0).padStart(6)} ${percentile(values, 95).toFixed(0).padStart(6)}`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { files: { type: "string", default: "500" }, workers: { type: "string", default: "2" } } });
  const files = Number(values.files);
  const workers = Number(values.workers);
  const dir = await mkdtemp(join(tmpdir(), "casparian-bench-small-"));
  const home = join(dir, "home");
  const plugin = join(packageRoot(), "examples", "hello", "plugin.py");
  const samples = join(packageRoot(), "examples", "hello", "data");
  try {
    const names = (await readdir(samples)).filter((n) => n.endsWith(".csv")).sort();
    const data = join(dir, "data");
    await mkdir(data, { recursive: true });
    for (let i = 0; i < files; i++) {
      const name = names[i % names.length]!;
      await copyFile(join(samples, name), join(data, `${String(i).padStart(4, "0")}-${name}`));
    }

    // Warm-up: builds the (bare) environment once, so the timed run measures jobs, not setup.
    await runCli([plugin, join(data, `0000-${names[0]}`), "--workers", "1", "--output", join(dir, "warmup")], dir, home);

    const reportPath = join(dir, "report.json");
    const run = await runCli([plugin, data, "--workers", String(workers), "--output", join(dir, "out"), "--report", reportPath], dir, home);
    const report = JSON.parse(await readFile(reportPath, "utf8")) as Report;
    const ok = report.inputs.filter((i) => i.state === "succeeded");
    if (ok.length !== files) throw new Error(`only ${ok.length} of ${files} inputs succeeded:\n${run.stdout}`);

    const stages: Record<string, number[]> = { dispatch: [], "guest start": [], plugin: [], "sink commit": [], "job total": [], "round trip": [] };
    const missing = new Set<string>();
    for (const input of ok) {
      const m = input.metrics;
      for (const key of ["duration_ms", "dispatch_ms", "guest_start_ms", "commit_ms", "guest.guest_ms"]) if (m[key] === undefined) missing.add(key);
      const duration = m.duration_ms ?? Number.NaN;
      stages.dispatch!.push((input.round_trip_ms ?? Number.NaN) - duration + (m.dispatch_ms ?? 0));
      stages["guest start"]!.push(m.guest_start_ms ?? Number.NaN);
      stages.plugin!.push(m["guest.guest_ms"] ?? Number.NaN);
      stages["sink commit"]!.push(m.commit_ms ?? Number.NaN);
      stages["job total"]!.push(duration);
      stages["round trip"]!.push(input.round_trip_ms ?? Number.NaN);
    }

    const wallSeconds = run.ms / 1000;
    console.log(`small files: ${files} CSVs (${names.length} sample shapes), ${workers} workers, dependency-free plugin`);
    console.log(`  wall clock (whole command)  ${wallSeconds.toFixed(2)} s   ${(files / wallSeconds).toFixed(1)} jobs/s`);
    console.log(`  scheduling (first to last)  ${report.seconds.toFixed(2)} s   ${(files / report.seconds).toFixed(1)} jobs/s`);
    console.log(`  per-job latency (ms)          mean    p50    p95`);
    for (const [name, list] of Object.entries(stages)) console.log(stageRow(name, list));
    if (missing.size > 0) console.log(`  receipts lack ${[...missing].join(", ")}: the stages that need them show NaN`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
