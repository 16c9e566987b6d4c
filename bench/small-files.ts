/**
 * Small-files throughput: many small CSVs through `casparian run`, warm guests (the
 * default: each job forked from a Python that has the plugin's imports loaded) against
 * cold ones (`bridge.warm.enabled: false`: a fresh interpreter per job), side by side in
 * one run, for the dependency-free example plugin (examples/hello) and a pandas plugin
 * (examples/pandas-pep723), with 1 and 2 workers. Prints jobs/s, the ratios, the warm
 * parents' memory, and where the time of one job goes.
 *
 *   npm run bench            (all benchmarks)
 *   node dist/bench/small-files.js [--files N] [--cold-files N] [--cold-pandas-files N] [--ratio-files N] [--ratio-rounds N]
 *                                  [--only stdlib-warm]   (just the stdlib plugin, warm, 1 and 2 workers)
 *                                  [--only ratio]         (just the ratio and the run's timeline)
 *                                  [--only pandas]        (just the pandas plugin, warm vs cold, 1 and 2 workers)
 *                                  [--only alone]         (just the plugin alone, both plugins, fresh vs forked)
 *
 * Cold pandas jobs take seconds each, so the cold pandas runs use fewer files
 * (--cold-pandas-files); jobs/s is a rate, comparable across file counts.
 *
 * The latency split comes from the receipts (the run's --report file):
 *   dispatch     Sentinel → worker → hooks up to the guest start: (round trip − duration_ms) + dispatch_ms
 *   guest start  cold: interpreter start, imports, socket connect; warm: the fork and connect (guest_start_ms)
 *   plugin       the guest's own run time, plugin and Arrow encoding: guest.guest_ms
 *   sink commit  prepare + commit of the sinks and the receipt: commit_ms
 *   gap          from a job's answer at the Sentinel to the next DISPATCH to that worker
 *                (report fields dispatched_at_ms, round_trip_ms and worker)
 * plus the promotion of the files into --output by `casparian run` (after CONCLUDE, not per job above).
 *
 * Beside them, the plugin alone (bench/plugin_alone.py): the guest's own runner and encoder over
 * the same files with nothing but Python, a fresh interpreter per file against a child forked per
 * file from one that loaded the plugin, 1 and 2 at a time. Its forked/fresh ratio is what a process
 * per job allows at best on this machine, with no Sentinel, socket, cgroup, sink or commit.
 *
 * Last, the ratio that must hold on any machine: `casparian run` over --ratio-files tiny
 * files with the pandas plugin ÷ `python -c "import pandas, pyarrow"` in the same venv (with
 * the bytecode the env build compiled, which the bench counts), taken in turns, and the
 * timeline of one more such run (its --log-level debug "run timeline" lines).
 */
import { execFile } from "node:child_process";
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs, promisify } from "node:util";
import { shimPath } from "../core/bridge/shim-bytecode.js";
import { packageRoot } from "../core/kernel/paths.js";

const execFileAsync = promisify(execFile);

interface ReportInput {
  state: string;
  round_trip_ms: number | null;
  dispatched_at_ms: number | null;
  worker: string | null;
  metrics: Record<string, number>;
}

interface Report {
  seconds: number;
  inputs: ReportInput[];
}

interface PluginCase {
  name: string;
  plugin: string;
  samples: string;
}

interface Outcome {
  label: string;
  files: number;
  workers: number;
  wallSeconds: number;
  /** CPU per job of the command and its descendants: (this run's − a run of 1 file's) ÷ (files − 1). */
  cpuMsPerJob: number;
  jobsPerSecond: number;
  stages: Record<string, number[]>;
  warmJobs: number;
  parentRssKb: number;
  /** Per job: the warm child's pre-faulted KiB and the spare CPU that took (guest.prefault_kb, guest.prefault_cpu_ms), its minor page faults from its job's arrival (guest.minor_faults). */
  prefaultKb: number[];
  prefaultCpuMs: number[];
  /** Per job: how often its spare paused the pre-fault for a busy CPU (guest.prefault_pauses). */
  prefaultPauses: number[];
  minorFaults: number[];
  missing: Set<string>;
}

/**
 * Runs a command under a Python that waits for it and then reads its own children's rusage:
 * the CPU of the command and of every descendant that was waited for (the run waits for its
 * workers, they for their warm guests, those for their children), whatever else the machine runs.
 */
const WITH_CPU = [
  "import json, resource, subprocess, sys",
  "code = subprocess.call(sys.argv[2:])",
  "usage = resource.getrusage(resource.RUSAGE_CHILDREN)",
  "open(sys.argv[1], 'w').write(json.dumps({'cpu_ms': (usage.ru_utime + usage.ru_stime) * 1000}))",
  "sys.exit(code)",
].join("\n");
let cpuFiles = 0;

async function runCli(args: string[], cwd: string, home: string): Promise<{ ms: number; stdout: string; cpuMs: number }> {
  const cpuFile = join(cwd, `cpu-${cpuFiles++}.json`);
  const started = performance.now();
  const { stdout } = await execFileAsync("python3", ["-c", WITH_CPU, cpuFile, process.execPath, join(packageRoot(), "bin", "casparian.js"), "run", ...args], {
    cwd,
    env: { ...process.env, CASPARIAN_HOME: home },
    maxBuffer: 64 * 1024 * 1024,
  });
  const ms = performance.now() - started;
  const { cpu_ms } = JSON.parse(await readFile(cpuFile, "utf8")) as { cpu_ms: number };
  await rm(cpuFile, { force: true });
  return { ms, stdout, cpuMs: cpu_ms };
}

function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function inputsDir(root: string, name: string, samples: string, count: number): Promise<string> {
  const names = (await readdir(samples)).filter((n) => n.endsWith(".csv")).sort();
  const dir = join(root, name);
  await mkdir(dir, { recursive: true });
  for (let i = 0; i < count; i++) {
    const sample = names[i % names.length]!;
    await copyFile(join(samples, sample), join(dir, `${String(i).padStart(4, "0")}-${sample}`));
  }
  return dir;
}

async function scenario(root: string, home: string, pluginCase: PluginCase, warm: boolean, workers: number, files: number): Promise<Outcome> {
  const label = `${pluginCase.name} ${warm ? "warm" : "cold"}`;
  const tag = `${pluginCase.name}-${warm ? "warm" : "cold"}-${workers}`;
  const data = await inputsDir(root, `data-${tag}`, pluginCase.samples, files);
  const config = join(root, warm ? "warm.config.json" : "cold.config.json");
  const reportPath = join(root, `report-${tag}.json`);
  // A run of one file first: its CPU is the command's fixed part (starts, imports), not counted per job.
  const one = await inputsDir(root, `data-${tag}-one`, pluginCase.samples, 1);
  const fixed = await runCli([pluginCase.plugin, one, "--workers", String(workers), "--config", config, "--output", join(root, `out-${tag}-one`)], root, home);
  await rm(one, { recursive: true, force: true });
  await rm(join(root, `out-${tag}-one`), { recursive: true, force: true });
  const run = await runCli(
    [pluginCase.plugin, data, "--workers", String(workers), "--config", config, "--output", join(root, `out-${tag}`), "--report", reportPath],
    root,
    home,
  );
  const report = JSON.parse(await readFile(reportPath, "utf8")) as Report;
  const ok = report.inputs.filter((i) => i.state === "succeeded");
  if (ok.length !== files) throw new Error(`${label}: only ${ok.length} of ${files} inputs succeeded:\n${run.stdout}`);

  const stages: Record<string, number[]> = { dispatch: [], "guest start": [], plugin: [], "sink commit": [], "job total": [], gap: [] };
  const missing = new Set<string>();
  let warmJobs = 0;
  let parentRssKb = 0;
  const prefaultKb: number[] = [];
  const prefaultCpuMs: number[] = [];
  const prefaultPauses: number[] = [];
  const minorFaults: number[] = [];
  for (const input of ok) {
    const m = input.metrics;
    for (const key of ["duration_ms", "dispatch_ms", "guest_start_ms", "commit_ms", "guest.guest_ms", "guest_warm"]) if (m[key] === undefined) missing.add(key);
    const duration = m.duration_ms ?? Number.NaN;
    stages.dispatch!.push((input.round_trip_ms ?? Number.NaN) - duration + (m.dispatch_ms ?? 0));
    stages["guest start"]!.push(m.guest_start_ms ?? Number.NaN);
    stages.plugin!.push(m["guest.guest_ms"] ?? Number.NaN);
    stages["sink commit"]!.push(m.commit_ms ?? Number.NaN);
    stages["job total"]!.push(duration);
    warmJobs += m.guest_warm === 1 ? 1 : 0;
    parentRssKb = Math.max(parentRssKb, m.guest_parent_rss_kb ?? 0);
    if (m["guest.prefault_kb"] !== undefined) prefaultKb.push(m["guest.prefault_kb"]);
    if (m["guest.minor_faults"] !== undefined) minorFaults.push(m["guest.minor_faults"]);
    if (m["guest.prefault_cpu_ms"] !== undefined) prefaultCpuMs.push(m["guest.prefault_cpu_ms"]);
    if (m["guest.prefault_pauses"] !== undefined) prefaultPauses.push(m["guest.prefault_pauses"]);
  }
  stages.gap = gapsBetweenJobs(ok);
  await rm(data, { recursive: true, force: true });
  await rm(join(root, `out-${tag}`), { recursive: true, force: true });
  return {
    label,
    files,
    workers,
    wallSeconds: run.ms / 1000,
    cpuMsPerJob: (run.cpuMs - fixed.cpuMs) / Math.max(1, files - 1),
    jobsPerSecond: files / report.seconds,
    stages,
    warmJobs,
    parentRssKb,
    prefaultKb,
    prefaultCpuMs,
    prefaultPauses,
    minorFaults,
    missing,
  };
}

/**
 * Per worker, the time from one job's answer reaching the Sentinel to the next DISPATCH
 * to the same worker: what the run's scheduling costs between jobs.
 */
function gapsBetweenJobs(inputs: ReportInput[]): number[] {
  const byWorker = new Map<string, ReportInput[]>();
  for (const input of inputs) {
    if (input.worker === null || input.dispatched_at_ms === null || input.round_trip_ms === null) continue;
    byWorker.set(input.worker, [...(byWorker.get(input.worker) ?? []), input]);
  }
  const gaps: number[] = [];
  for (const jobs of byWorker.values()) {
    jobs.sort((a, b) => a.dispatched_at_ms! - b.dispatched_at_ms!);
    for (let i = 1; i < jobs.length; i++) gaps.push(jobs[i]!.dispatched_at_ms! - jobs[i - 1]!.dispatched_at_ms! - jobs[i - 1]!.round_trip_ms!);
  }
  return gaps;
}

function row(o: Outcome): string {
  const cells = ["dispatch", "guest start", "plugin", "sink commit", "job total", "gap"].map((s) => median(o.stages[s]!).toFixed(0).padStart(7));
  return `  ${o.label.padEnd(12)} ${String(o.workers).padStart(7)} ${String(o.files).padStart(6)} ${o.jobsPerSecond.toFixed(1).padStart(8)} ${o.wallSeconds.toFixed(1).padStart(7)} ${o.cpuMsPerJob.toFixed(0).padStart(7)} ${`${o.warmJobs}/${o.files}`.padStart(9)}  ${cells.join(" ")}`;
}

/**
 * The pandas plugin's warm/cold ratio against its target, and what the warm children
 * pre-faulted (learned hot pages, bridge.warm.prefaultMb) and still faulted themselves.
 */
function pandasWarmCold(warm: Outcome, cold: Outcome): string {
  const ratio = warm.jobsPerSecond / cold.jobsPerSecond;
  const prefaulted = warm.prefaultKb.filter((kb) => kb > 0).length;
  const faults = warm.minorFaults.length > 0 ? `${median(warm.minorFaults).toFixed(0)} minor faults per job` : "minor faults not reported (an older build?)";
  return (
    `pandas warm ${warm.jobsPerSecond.toFixed(1)} / cold ${cold.jobsPerSecond.toFixed(2)} jobs/s = ${ratio.toFixed(1)}x (target >= 20); ` +
    `warm plugin ${median(warm.stages.plugin!).toFixed(0)} ms, ${faults}, ` +
    `pre-faulted ${prefaulted}/${warm.files} jobs (median ${median(warm.prefaultKb).toFixed(0)} KiB, ${median(warm.prefaultCpuMs).toFixed(0)} ms of the spare's CPU while it waited, ${median(warm.prefaultPauses).toFixed(0)} pauses for a busy CPU)`
  );
}

/** The venv of this bench's own home that has pandas (the pandas plugin's), or the one without (the stdlib plugin's). */
async function venvPython(home: string, withPandas: boolean): Promise<string> {
  const venvs = join(home, "venvs");
  for (const name of await readdir(venvs)) {
    if (!/^[0-9a-f]{64}$/.test(name)) continue;
    const python = join(venvs, name, "bin", "python");
    const probe = await execFileAsync(python, ["-c", "import pandas"]).then(
      () => true,
      () => false,
    );
    if (probe === withPandas) return python;
  }
  throw new Error(`no venv ${withPandas ? "with" : "without"} pandas under ${venvs}`);
}

const pandasPython = (home: string): Promise<string> => venvPython(home, true);

interface AloneOutcome {
  name: string;
  parallel: number;
  freshJobsPerSecond: number;
  forkedJobsPerSecond: number;
  /** CPU per forked job: its child's, and the parent's while it forked and reaped (os.times() in plugin_alone.py). */
  forkedCpuMsPerJob: number;
}

/**
 * The plugin alone over the same kind of files (bench/plugin_alone.py), in the plugin's own
 * venv: a fresh interpreter per file, `parallel` at a time, then one parent forking a child per
 * file, `parallel` at a time. The bytecode of the shim's modules (which the guest gets from the
 * worker's cache) goes to a prefix of the bench's, written by one untimed fresh run first.
 */
async function pluginAlone(
  root: string,
  home: string,
  pluginCase: PluginCase,
  parallel: number,
  freshFiles: number,
  forkedFiles: number,
): Promise<AloneOutcome> {
  const python = await venvPython(home, pluginCase.name === "pandas");
  const fresh = await inputsDir(root, `alone-fresh-${pluginCase.name}-${parallel}`, pluginCase.samples, freshFiles);
  const freshPaths = (await readdir(fresh)).sort().map((n) => join(fresh, n));
  await runAlone(root, python, pluginCase, ["fresh", freshPaths[0]!]);
  const started = performance.now();
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < freshPaths.length) {
      const path = freshPaths[next++]!;
      await runAlone(root, python, pluginCase, ["fresh", path]);
    }
  };
  await Promise.all(Array.from({ length: parallel }, lane));
  const freshSeconds = (performance.now() - started) / 1000;
  const forked = await inputsDir(root, `alone-forked-${pluginCase.name}-${parallel}`, pluginCase.samples, forkedFiles);
  const forkedPaths = (await readdir(forked)).sort().map((n) => join(forked, n));
  const stdout = await runAlone(root, python, pluginCase, ["forked", String(parallel), ...forkedPaths]);
  const result = JSON.parse(stdout.trim().split("\n").at(-1)!) as { seconds: number; files: number; cpu_ms: number };
  await rm(fresh, { recursive: true, force: true });
  await rm(forked, { recursive: true, force: true });
  return {
    name: pluginCase.name,
    parallel,
    freshJobsPerSecond: freshFiles / freshSeconds,
    forkedJobsPerSecond: result.files / result.seconds,
    forkedCpuMsPerJob: result.cpu_ms / result.files,
  };
}

/** One `plugin_alone.py <mode args>` process of the plugin in `python`'s venv; its stdout. */
async function runAlone(root: string, python: string, pluginCase: PluginCase, modeArgs: string[]): Promise<string> {
  const env = { PATH: process.env.PATH ?? "", PYTHONPYCACHEPREFIX: join(root, "alone-pycache") };
  const script = join(packageRoot(), "bench", "plugin_alone.py");
  const { stdout } = await execFileAsync(python, [script, shimPath(), pluginCase.plugin, ...modeArgs], { env });
  return stdout;
}

/** One whole `plugin_alone.py forked 2` process over the files (its start and imports included), in ms. */
async function timeAloneForked(root: string, python: string, pluginCase: PluginCase, paths: string[]): Promise<number> {
  const started = performance.now();
  await runAlone(root, python, pluginCase, ["forked", "2", ...paths]);
  return performance.now() - started;
}

/** The plugin alone beside casparian run: jobs/s fresh and forked, the ratio a process per job allows at best, and ours. */
function aloneRows(alone: AloneOutcome[], outcomes: Outcome[]): string[] {
  const lines = [
    `  the plugin alone (bench/plugin_alone.py: the guest's runner and encoder, nothing but Python, output dropped);`,
    `  cpu ms = CPU per forked job, its child's and its parent's share`,
    `  ${"plugin".padEnd(8)} ${"at once".padStart(7)} ${"fresh jobs/s".padStart(13)} ${"forked jobs/s".padStart(14)} ${"cpu ms".padStart(7)} ${"forked/fresh".padStart(13)} ${"casparian warm/cold".padStart(20)}`,
  ];
  for (const a of alone) {
    const warm = outcomes.find((o) => o.label === `${a.name} warm` && o.workers === a.parallel);
    const cold = outcomes.find((o) => o.label === `${a.name} cold` && o.workers === a.parallel);
    const ours = warm !== undefined && cold !== undefined ? `${(warm.jobsPerSecond / cold.jobsPerSecond).toFixed(1)}x` : "-";
    // Our warm jobs cannot beat the forked floor, so warm/cold is at most forked alone ÷ our cold.
    const bound = cold !== undefined ? `, at most ${(a.forkedJobsPerSecond / cold.jobsPerSecond).toFixed(1)}x if the worker cost nothing` : "";
    const cpu = warm !== undefined ? `, ${warm.cpuMsPerJob.toFixed(0)} ms of CPU per warm job` : "";
    const warmShare = warm !== undefined ? ` (warm at ${((warm.jobsPerSecond / a.forkedJobsPerSecond) * 100).toFixed(0)}% of forked alone${cpu}${bound})` : "";
    lines.push(
      `  ${a.name.padEnd(8)} ${String(a.parallel).padStart(7)} ${a.freshJobsPerSecond.toFixed(2).padStart(13)} ${a.forkedJobsPerSecond.toFixed(1).padStart(14)} ${a.forkedCpuMsPerJob.toFixed(1).padStart(7)} ${`${(a.forkedJobsPerSecond / a.freshJobsPerSecond).toFixed(1)}x`.padStart(13)} ${ours.padStart(20)}${warmShare}`,
    );
  }
  return lines;
}

/** One `python -c "import pandas, pyarrow"`, with the guest's settings: the env's bytecode, none written. */
async function timeImports(python: string): Promise<number> {
  const started = performance.now();
  await execFileAsync(python, ["-c", "import pandas, pyarrow"], { env: { PATH: process.env.PATH ?? "", PYTHONDONTWRITEBYTECODE: "1" } });
  return performance.now() - started;
}

/** How many of pandas' and pyarrow's .py files have their compiled bytecode in the venv (the env build compiles it). */
async function bytecodeCoverage(python: string): Promise<string> {
  const script = [
    "import importlib.util, os, sys",
    "out = []",
    "for name in ('pandas', 'pyarrow'):",
    "    root = os.path.dirname(importlib.util.find_spec(name).origin)",
    "    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith('.py')]",
    "    done = sum(os.path.exists(importlib.util.cache_from_source(f)) for f in files)",
    "    out.append('%s %d/%d .py files' % (name, done, len(files)))",
    "print(', '.join(out))",
  ].join("\n");
  const { stdout } = await execFileAsync(python, ["-c", script], { env: { PATH: process.env.PATH ?? "", PYTHONDONTWRITEBYTECODE: "1" } });
  return stdout.trim();
}

/** The phases of one run, from its debug log's "run timeline" lines. */
async function runTimeline(plugin: string, inputs: string, output: string, config: string, cwd: string, home: string): Promise<string> {
  const child = await execFileAsync(
    process.execPath,
    [join(packageRoot(), "bin", "casparian.js"), "run", plugin, inputs, "--config", config, "--output", output, "--log-level", "debug"],
    { cwd, env: { ...process.env, CASPARIAN_HOME: home }, maxBuffer: 256 * 1024 * 1024 },
  );
  await rm(output, { recursive: true, force: true });
  const phases: string[] = [];
  // The workers' own moments, on the run's clock (pino's epoch ms minus the run's ms since its start).
  let origin: number | undefined;
  const workerEvents = new Map<string, string[]>();
  const WORKER_MOMENTS: Record<string, string> = {
    "starting worker": "started",
    "warm guest started ahead of the first job": "warm guest started ahead",
    "warm guest started ahead is ready": "ready",
    "job concluded": "first job concluded",
  };
  for (const line of child.stderr.split("\n")) {
    const echoed = /^\[(run-[^\]]+)\] (\{.*\})$/.exec(line);
    if (echoed !== null) {
      const record = JSON.parse(echoed[2]!) as { msg?: string; time?: number };
      const moment = WORKER_MOMENTS[record.msg ?? ""];
      const events = workerEvents.get(echoed[1]!) ?? [];
      workerEvents.set(echoed[1]!, events);
      if (moment !== undefined && record.time !== undefined && !events.some((e) => e.startsWith(`${moment} `)))
        events.push(`${moment} ${origin === undefined ? "?" : record.time - origin}`);
      continue;
    }
    if (!line.startsWith("{") || !line.includes('"run timeline"')) continue;
    const record = JSON.parse(line) as { phase?: string; ms?: number; time?: number };
    if (record.time !== undefined && record.ms !== undefined) origin ??= record.time - record.ms;
    if (record.phase !== undefined && record.ms !== undefined) phases.push(`${record.phase} ${record.ms}`);
  }
  if (phases.length === 0) return "none logged (an older build?)";
  const workers = [...workerEvents].map(([id, events]) => `${id.slice(id.lastIndexOf("-") + 1)}: ${events.join(", ")}`);
  return `${phases.join(", ")}${workers.length > 0 ? `; workers ${workers.join("; ")}` : ""}`;
}

/**
 * The machine-independent ratio: a whole run over tiny files against the imports alone,
 * in turns (run, imports, run, imports, ...) so that both see the same load.
 */
async function ratio(root: string, home: string, pandas: PluginCase, ratioFiles: number, ratioRounds: number): Promise<void> {
  const tiny = await inputsDir(root, "data-ratio", pandas.samples, ratioFiles);
  const python = await pandasPython(home);
  const coverage = await bytecodeCoverage(python);
  const tinyPaths = (await readdir(tiny)).sort().map((n) => join(tiny, n));
  const runs: number[] = [];
  const imports: number[] = [];
  const alone: number[] = [];
  for (let round = 0; round < ratioRounds; round++) {
    const out = join(root, `out-ratio-${round}`);
    runs.push((await runCli([pandas.plugin, tiny, "--config", join(root, "warm.config.json"), "--output", out], root, home)).ms);
    await rm(out, { recursive: true, force: true });
    imports.push(await timeImports(python));
    alone.push(await timeAloneForked(root, python, pandas, tinyPaths));
  }
  const ratios = runs.map((ms, i) => ms / imports[i]!);
  const aloneRatios = alone.map((ms, i) => ms / imports[i]!);
  console.log(
    `  ratio: casparian run over ${ratioFiles} tiny files with the pandas plugin ${(median(runs) / 1000).toFixed(2)} s ÷ python -c "import pandas, pyarrow" ${(median(imports) / 1000).toFixed(2)} s = ${median(ratios).toFixed(1)} (median of ${ratioRounds} turns, ${Math.min(...ratios).toFixed(1)}–${Math.max(...ratios).toFixed(1)}; target <= 5)`,
  );
  console.log(
    `  the same ratio for the plugin alone, forked 2 at a time from one parent (bench/plugin_alone.py, the whole process, imports included): ${(median(alone) / 1000).toFixed(2)} s ÷ ${(median(imports) / 1000).toFixed(2)} s = ${median(aloneRatios).toFixed(1)} (${Math.min(...aloneRatios).toFixed(1)}–${Math.max(...aloneRatios).toFixed(1)}): the least a process per job allows here`,
  );
  console.log(`  compiled bytecode in that venv: ${coverage}`);
  // Where one such run's time goes: its own timeline (--log-level debug), ms since its start.
  const phases = await runTimeline(pandas.plugin, tiny, join(root, "out-timeline"), join(root, "warm.config.json"), root, home);
  console.log(`  one run's timeline (ms since its start, --log-level debug): ${phases}`);
  console.log(
    `  load average: ${loadavg()
      .map((l) => l.toFixed(1))
      .join(" ")}`,
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      files: { type: "string", default: "300" },
      "cold-files": { type: "string", default: "100" },
      "cold-pandas-files": { type: "string", default: "16" },
      "ratio-files": { type: "string", default: "100" },
      "ratio-rounds": { type: "string", default: "3" },
      only: { type: "string" },
    },
  });
  if (values.only !== undefined && !["stdlib-warm", "ratio", "pandas", "alone"].includes(values.only))
    throw new Error(`--only takes stdlib-warm, ratio, pandas or alone, not ${values.only}`);
  const onlyStdlibWarm = values.only === "stdlib-warm";
  const onlyRatio = values.only === "ratio";
  const onlyPandas = values.only === "pandas";
  const onlyAlone = values.only === "alone";
  const files = Number(values.files);
  const coldFiles = Number(values["cold-files"]);
  const coldPandasFiles = Number(values["cold-pandas-files"]);
  const ratioFiles = Number(values["ratio-files"]);
  const ratioRounds = Number(values["ratio-rounds"]);
  const root = await mkdtemp(join(tmpdir(), "casparian-bench-small-"));
  const home = join(root, "home");
  const stdlib: PluginCase = {
    name: "stdlib",
    plugin: join(packageRoot(), "examples", "hello", "plugin.py"),
    samples: join(packageRoot(), "examples", "hello", "data"),
  };
  const pandas: PluginCase = {
    name: "pandas",
    plugin: join(packageRoot(), "examples", "pandas-pep723", "plugin.py"),
    samples: join(packageRoot(), "examples", "pandas-pep723", "data"),
  };
  try {
    await writeFile(join(root, "warm.config.json"), JSON.stringify({}));
    await writeFile(join(root, "cold.config.json"), JSON.stringify({ bridge: { warm: { enabled: false } } }));

    // Warm-up: builds both environments (and locks the pandas plugin's inline dependencies) once.
    for (const c of onlyStdlibWarm ? [stdlib] : onlyRatio || onlyPandas ? [pandas] : [stdlib, pandas]) {
      const one = await inputsDir(root, `warmup-${c.name}`, c.samples, 1);
      await runCli([c.plugin, one, "--workers", "1", "--config", join(root, "cold.config.json"), "--output", join(root, `warmup-out-${c.name}`)], root, home);
    }

    if (onlyRatio) {
      await ratio(root, home, pandas, ratioFiles, ratioRounds);
      return;
    }
    // The plugin alone: fresh runs as many files as the cold runs below, forked as many as the warm ones.
    const alone = async (cases: PluginCase[]): Promise<AloneOutcome[]> => {
      const results: AloneOutcome[] = [];
      for (const c of cases)
        for (const parallel of [1, 2]) results.push(await pluginAlone(root, home, c, parallel, c === pandas ? coldPandasFiles : coldFiles, files));
      return results;
    };
    if (onlyAlone) {
      for (const line of aloneRows(await alone([stdlib, pandas]), [])) console.log(line);
      return;
    }
    const outcomes: Outcome[] = [];
    for (const workers of [1, 2]) {
      if (onlyStdlibWarm) {
        outcomes.push(await scenario(root, home, stdlib, true, workers, files));
        continue;
      }
      if (onlyPandas) {
        outcomes.push(await scenario(root, home, pandas, false, workers, coldPandasFiles));
        outcomes.push(await scenario(root, home, pandas, true, workers, files));
        continue;
      }
      outcomes.push(await scenario(root, home, stdlib, false, workers, coldFiles));
      outcomes.push(await scenario(root, home, stdlib, true, workers, files));
      outcomes.push(await scenario(root, home, pandas, false, workers, coldPandasFiles));
      outcomes.push(await scenario(root, home, pandas, true, workers, files));
    }

    console.log(`small files: casparian run, warm guests (default) vs cold (bridge.warm.enabled: false)`);
    console.log(`  jobs/s from first to last job; wall = the whole command; cpu ms = CPU per job of the command and all its`);
    console.log(`  processes, beyond what a run of 1 file takes (rusage); the other columns are per-job medians in ms`);
    console.log(`  gap = from a job's answer at the Sentinel to the next DISPATCH to the same worker`);
    console.log(
      `  ${"plugin".padEnd(12)} ${"workers".padStart(7)} ${"files".padStart(6)} ${"jobs/s".padStart(8)} ${"wall s".padStart(7)} ${"cpu ms".padStart(7)} ${"warm".padStart(9)}  ${["dispatch", "start", "plugin", "commit", "total", "gap"].map((s) => s.padStart(7)).join(" ")}`,
    );
    for (const o of outcomes) console.log(row(o));

    const find = (label: string, workers: number) => outcomes.find((o) => o.label === label && o.workers === workers)!;
    for (const line of aloneRows(await alone(onlyStdlibWarm ? [stdlib] : onlyPandas ? [pandas] : [stdlib, pandas]), outcomes)) console.log(line);
    if (onlyPandas) {
      for (const workers of [1, 2])
        console.log(`  ${workers} worker${workers > 1 ? "s" : ""}: ${pandasWarmCold(find("pandas warm", workers), find("pandas cold", workers))}`);
      console.log(
        `  load average: ${loadavg()
          .map((l) => l.toFixed(1))
          .join(" ")}`,
      );
      return;
    }
    if (onlyStdlibWarm) {
      for (const workers of [1, 2])
        console.log(
          `  ${workers} worker${workers > 1 ? "s" : ""}: stdlib warm ${(find("stdlib warm", workers).jobsPerSecond / workers).toFixed(1)} jobs/s per worker (target >= 100)`,
        );
      console.log(
        `  load average: ${loadavg()
          .map((l) => l.toFixed(1))
          .join(" ")}`,
      );
      return;
    }
    for (const workers of [1, 2]) {
      const stdlibRatio = find("stdlib warm", workers).jobsPerSecond / find("stdlib cold", workers).jobsPerSecond;
      const perWorker = find("stdlib warm", workers).jobsPerSecond / workers;
      console.log(`  ${workers} worker${workers > 1 ? "s" : ""}: ${pandasWarmCold(find("pandas warm", workers), find("pandas cold", workers))}`);
      console.log(
        `  ${workers} worker${workers > 1 ? "s" : ""}: stdlib warm/cold ${stdlibRatio.toFixed(1)}x, stdlib warm ${perWorker.toFixed(1)} jobs/s per worker (target >= 100)`,
      );
    }
    const rss = Math.max(...outcomes.map((o) => o.parentRssKb));
    const stdlibRss = Math.max(find("stdlib warm", 1).parentRssKb, find("stdlib warm", 2).parentRssKb);
    console.log(
      `  warm parent resident memory: pandas plugin ${(rss / 1024).toFixed(0)} MiB, stdlib plugin ${(stdlibRss / 1024).toFixed(0)} MiB (one per worker; children share its pages)`,
    );
    const missing = new Set(outcomes.flatMap((o) => [...o.missing]));
    if (missing.size > 0) console.log(`  receipts lack ${[...missing].join(", ")}: the stages that need them show NaN`);

    await ratio(root, home, pandas, ratioFiles, ratioRounds);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
