/**
 * `casparian run`, end to end through the real CLI (node bin/casparian.js run):
 * an embedded Sentinel, real worker processes over ZeroMQ, real uv environments,
 * real Python plugins, Parquet read back with pyarrow. Plus the pieces that decide
 * what runs (inputs, plugin inspection, sink plan) on real files.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { copyFile, mkdir, mkdtemp, readdir, rm, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { packageRoot } from "../core/kernel/paths.js";
import { contentSha256, expandInputs, outputName } from "../core/run/inputs.js";
import { defaultWorkers } from "../core/run/command.js";
import { parseSinkFlag, planSinks } from "../core/run/outputs.js";
import { inspectPlugin } from "../core/run/plugin.js";
import { isAlive, listFiles as listAllFiles, readParquet, RunningCli, runCli, testPython } from "./helpers/run-cli.js";

const root = packageRoot();
const fixtures = join(root, "test", "fixtures");
const helloPlugin = join(root, "examples", "hello", "plugin.py");
const helloData = join(root, "examples", "hello", "data");
const slowPlugin = join(fixtures, "run-slow", "plugin.py");
/** Rows per example file of examples/hello/data. */
const HELLO_ROWS: Record<string, number> = { "sales-2024-01": 5, "sales-2024-02": 4, "sales-2024-03": 4, "sales-2024-04": 3 };

let base: string;
let home: string;

before(async () => {
  base = await mkdtemp(join(tmpdir(), "casparian-run-test-"));
  home = join(base, "home");
  await testPython();
});

after(async () => {
  await rm(base, { recursive: true, force: true });
});

/** Every file below `dir` except the run state (<output>/.casparian/): staging included. */
async function listFiles(dir: string): Promise<string[]> {
  return (await listAllFiles(dir)).filter((f) => !f.startsWith(".casparian/"));
}

/** The output name of an input outside the input root: its absolute path below @abs/. */
const outside = (path: string) => `@abs${path}`;

async function scenario(name: string): Promise<string> {
  const dir = join(base, name);
  await mkdir(dir, { recursive: true });
  return dir;
}

/** Inputs for the slow plugin: `count` files of `rows` rows, each sleeping `sleep` seconds. */
async function slowInputs(dir: string, count: number, rows: number, sleep: number): Promise<string> {
  const data = join(dir, "data");
  await mkdir(data, { recursive: true });
  for (let f = 0; f < count; f++) {
    const lines = [`# sleep ${sleep}`, "id,value", ...Array.from({ length: rows }, (_, i) => `${i},f${f}-r${i}`)];
    await writeFile(join(data, `in-${String(f).padStart(2, "0")}.csv`), `${lines.join("\n")}\n`);
  }
  return data;
}

async function markers(dir: string): Promise<string[]> {
  return readdir(join(dir, "markers")).catch(() => []);
}

/** Pids of the guest processes the slow plugin ran in (from its marker names). */
async function guestPids(dir: string): Promise<number[]> {
  return (await markers(dir)).map((name) => Number(name.split(".").at(-2)));
}

describe("inputs, plugin inspection and sink plan", () => {
  test("files, directories and globs expand to sorted files with stable version ids; names keep the path below the root and the extension", async () => {
    const dir = await scenario("inputs");
    await mkdir(join(dir, "a"), { recursive: true });
    await mkdir(join(dir, "b", "deep"), { recursive: true });
    for (const rel of ["a/x.csv", "b/x.csv", "b/deep/y.csv", "b/.hidden.csv", "z.txt"]) await writeFile(join(dir, rel), "id\n1\n");

    const inputs = await expandInputs(["b", "a/*.csv", "z.txt", "a/x.csv"], dir);
    assert.deepEqual(
      inputs.map((i) => i.path.slice(dir.length + 1)),
      ["a/x.csv", "b/deep/y.csv", "b/x.csv", "z.txt"],
    );
    assert.deepEqual(
      inputs.map((i) => outputName(i.path, dir)),
      ["a/x.csv", "b/deep/y.csv", "b/x.csv", "z.txt"],
    );
    assert.equal(outputName(join(dir, "b", "x.csv"), join(dir, "a")), `@abs${join(dir, "b", "x.csv")}`, "outside the root: the absolute path below @abs/");
    for (const input of inputs) {
      assert.equal(typeof input.fileVersionId, "bigint");
      assert.ok(input.fileVersionId > 0n && input.fileVersionId < 1n << 63n);
    }

    const again = await expandInputs(["a/x.csv"], dir);
    assert.equal(again[0]!.fileVersionId, inputs[0]!.fileVersionId, "same file, same id");
    assert.equal(outputName(again[0]!.path, dir), "a/x.csv", "the name does not depend on the other inputs of a run");
    await utimes(join(dir, "a/x.csv"), new Date(), new Date(Date.now() + 60_000));
    const touched = await expandInputs(["a/x.csv"], dir);
    assert.notEqual(touched[0]!.fileVersionId, inputs[0]!.fileVersionId, "a rewritten file is a new version");

    await assert.rejects(expandInputs(["nope/*.csv"], dir), { code: "CSP_CLI_USAGE", message: /"nope\/\*\.csv" matches no file/ });
  });

  test("default worker count: one per 10 inputs to run, at least one, at most one per core", () => {
    assert.deepEqual(
      [0, 1, 10, 11, 20, 100].map((n) => defaultWorkers(n, 2)),
      [1, 1, 1, 2, 2, 2],
    );
    assert.deepEqual(
      [10, 35, 100, 1000].map((n) => defaultWorkers(n, 8)),
      [1, 4, 8, 8],
    );
  });

  test("an input's content hash is of its whole content, also when it grew or shrank since it was listed", async () => {
    const dir = await mkdtemp(join(base, "hash-"));
    const file = join(dir, "x.csv");
    const sha = (text: string | Buffer) => createHash("sha256").update(text).digest("hex");
    await writeFile(file, "a,b\n1,2\n");
    assert.equal(await contentSha256(file, 8), sha("a,b\n1,2\n"));
    const grown = Buffer.alloc(3 * 1024 * 1024, 7);
    await writeFile(file, grown);
    assert.equal(await contentSha256(file, 8), sha(grown), "listed at 8 bytes, 3 MiB now");
    assert.equal(await contentSha256(file), sha(grown));
    await writeFile(file, "a");
    assert.equal(await contentSha256(file, 8), sha("a"));
  });

  test("the plugin is inspected without running it: MANIFEST, PEP 723 metadata, Python's own syntax error", async () => {
    const pandas = await inspectPlugin(join(root, "examples", "pandas-pep723", "plugin.py"));
    assert.equal(pandas.name, "sensor-readings");
    assert.deepEqual(pandas.manifest?.topics, ["by_sensor"]);
    assert.deepEqual(pandas.scriptMetadata?.dependencies, ["pandas>=2.2", "pyarrow>=17"]);
    assert.equal(pandas.scriptMetadata?.requiresPython, ">=3.11");

    const hello = await inspectPlugin(helloPlugin);
    assert.equal(hello.name, "hello");
    assert.equal(hello.scriptMetadata, null);

    await assert.rejects(inspectPlugin(join(fixtures, "run-broken-plugins", "syntax_error.py")), (err: Error & { code?: string }) => {
      assert.equal(err.code, "CSP_RUN_PLUGIN_INVALID");
      assert.match(err.message, /line 5/);
      assert.match(err.message, /SyntaxError: expected ':'/);
      return true;
    });
    await assert.rejects(inspectPlugin(join(fixtures, "run-broken-plugins", "no_handler.py")), {
      code: "CSP_RUN_PLUGIN_INVALID",
      message: /no class Handler or Plugin at module level \(classes found: Parser\)/,
    });
  });

  test("sinks: --sink, else MANIFEST, else config; every other topic lands in <output>/<topic>/ (the catch-all)", () => {
    const name = "2024/jan.csv";
    const catchAll = { topic: "*", uri: "parquet://{topic}/2024/jan.csv.parquet", mode: "replace", schema_def: null };
    const manifest = { sinks: { output: { uri: "parquet://m/{input}.parquet", mode: "append" } }, topics: ["rejects"] };
    assert.deepEqual(planSinks({ cliSinks: [parseSinkFlag("output=parquet://a/{input}.parquet?compression=zstd")], manifest }).forInput(name), [
      { topic: "output", uri: "parquet://a/2024/jan.csv.parquet?compression=zstd", mode: "replace", schema_def: null },
      catchAll,
    ]);
    assert.deepEqual(planSinks({ cliSinks: [], manifest, configSinks: { output: "parquet://c.parquet" } }).forInput(name), [
      { topic: "output", uri: "parquet://m/2024/jan.csv.parquet", mode: "append", schema_def: null },
      catchAll,
    ]);
    const config = planSinks({ cliSinks: [], manifest: null, configSinks: { output: { uri: "sqlite://w.db/t", mode: "error" } } });
    assert.equal(config.source, "config");
    assert.equal(config.promotable, false);
    assert.deepEqual(config.forInput(name)[0], { topic: "output", uri: "sqlite://w.db/t", mode: "error", schema_def: null });
    assert.deepEqual(planSinks({ cliSinks: [], manifest: { topics: ["rejects"] } }).forInput("a%b?.csv"), [
      { ...catchAll, uri: "parquet://{topic}/a%25b%3F.csv.parquet" },
    ]);
    assert.throws(() => parseSinkFlag("parquet://x.parquet"), { code: "CSP_CLI_USAGE" });
    assert.throws(() => planSinks({ cliSinks: [], manifest: { sinks: { output: { uri: "parquet://x.parquet", mode: "upsert" } } } }), {
      code: "CSP_CLI_USAGE",
      message: /mode expects one of replace, append, error/,
    });
  });
});

describe("casparian run (end to end)", () => {
  test("usage errors exit 2 and say what is wrong", async () => {
    const dir = await scenario("usage");
    const noInputs = await runCli([helloPlugin], { cwd: dir, home });
    assert.equal(noInputs.code, 2);
    assert.match(noInputs.stderr, /CSP_CLI_USAGE: no inputs given/);

    const missing = await runCli([helloPlugin, "does-not-exist.csv"], { cwd: dir, home });
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /input "does-not-exist.csv" matches no file/);

    const badFlag = await runCli([helloPlugin, helloData, "--workers", "zero"], { cwd: dir, home });
    assert.equal(badFlag.code, 2);
    assert.match(badFlag.stderr, /--workers expects a whole number/);
  });

  test("a dependency-free plugin over many messy files: every file becomes one Parquet file, rows intact", async () => {
    const dir = await scenario("many");
    // 40 inputs: the example's four files, ten times, under two directories with the same file names.
    for (let i = 0; i < 5; i++) {
      for (const sub of ["east", "west"]) {
        const target = join(dir, "data", sub, `batch-${i}`);
        await mkdir(target, { recursive: true });
        for (const name of Object.keys(HELLO_ROWS)) await copyFile(join(helloData, `${name}.csv`), join(target, `${name}.csv`));
      }
    }
    const result = await runCli([helloPlugin, "data", "--workers", "2", "--output", "out"], { cwd: dir, home });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /40 of 40 inputs succeeded, 0 failed/);
    assert.match(result.stdout, /output\s+40\s+160\s+.*\.\/out\/output\//);

    const files = await listFiles(join(dir, "out"));
    assert.equal(files.length, 40, `exactly one file per input, nothing else (no staging): ${files.join(", ")}`);
    assert.ok(
      files.every((f) => /^output\/data\/(east|west)\/batch-\d\/sales-2024-0\d\.csv\.parquet$/.test(f)),
      files.join(", "),
    );

    const tables = await readParquet(files.map((f) => join(dir, "out", f)));
    for (const table of tables) {
      const name = table.path.slice(table.path.lastIndexOf("/") + 1, -".csv.parquet".length);
      assert.equal(table.rows.length, HELLO_ROWS[name], table.path);
      assert.ok(table.rows.every((r) => r.source_file === `${name}.csv`));
    }
    const feb = tables.find((t) => t.path.endsWith("east/batch-0/sales-2024-02.csv.parquet"))!;
    assert.equal(feb.schema.quantity, "int64");
    assert.equal(feb.schema.unit_price, "double");
    assert.deepEqual(
      feb.rows.map((r) => [r.date, r.store, r.product, r.quantity, r.unit_price]),
      [
        ["2024-02-03", "Köln", "Espresso beans 1kg", 2, 18.9],
        ["2024-02-03", "Köln", "Tamper", 1, 1249],
        ["2024-02-05", "Leipzig", "Descaler", 6, 7.95],
        ["2024-02-07", "Leipzig", "Milk frother", null, 34],
      ],
    );
  });

  test("a plugin with pandas declared in a PEP 723 header runs in its own locked environment, two topics", async () => {
    const dir = await scenario("pandas");
    const example = join(root, "examples", "pandas-pep723");
    const result = await runCli([join(example, "plugin.py"), join(example, "data"), "--workers", "2"], { cwd: dir, home });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /2 of 2 inputs succeeded/);

    const files = await listFiles(join(dir, "output"));
    const day = (n: number) => outside(join(example, "data", `readings-day${n}.csv.parquet`));
    assert.deepEqual(files, [`by_sensor/${day(1)}`, `by_sensor/${day(2)}`, `output/${day(1)}`, `output/${day(2)}`]);
    const [bySensor1, , readings1] = await readParquet(files.map((f) => join(dir, "output", f)));
    assert.equal(readings1!.rows.length, 5);
    assert.match(readings1!.schema.timestamp!, /^timestamp\[(ns|us), tz=UTC\]$/);
    assert.equal(readings1!.rows.find((r) => r.celsius === null)?.sensor, "greenhouse-2", "the unparseable reading is a null");
    assert.deepEqual(
      bySensor1!.rows.map((r) => [r.sensor, r.readings, r.max_celsius]),
      [
        ["greenhouse-1", 2, 21],
        ["greenhouse-2", 3, 23.5],
      ],
    );
  });

  test("one bad input among good ones: exit 1, the bad one named with its error, the good ones complete", async () => {
    const dir = await scenario("bad-input");
    const result = await runCli([helloPlugin, join(fixtures, "run-bad-input"), "--workers", "2"], { cwd: dir, home });
    assert.equal(result.code, 1, result.stderr);
    assert.match(result.stdout, /3 of 4 inputs succeeded, 1 failed/);
    assert.match(result.stdout, /failed \(1\):\n\s+\S*no-date-column\.csv: .*ValueError: no-date-column\.csv: no date column in header/);

    const files = await listFiles(join(dir, "output"));
    assert.deepEqual(
      files,
      [1, 2, 3].map((n) => `output/${outside(join(fixtures, "run-bad-input", `good-${n}.csv.parquet`))}`),
    );
    const tables = await readParquet(files.map((f) => join(dir, "output", f)));
    assert.deepEqual(
      tables.map((t) => t.rows.length),
      [5, 4, 4],
    );
  });

  test("--sink sends a topic where the user says: Parquet with the sink's own naming, or a database via a config-registered sink", async () => {
    const dir = await scenario("sinks");
    const parquet = await runCli([helloPlugin, helloData, "--sink", "output=parquet://all/sales.parquet", "--mode", "append", "--workers", "2"], {
      cwd: dir,
      home,
    });
    assert.equal(parquet.code, 0, parquet.stderr);
    const files = await listFiles(join(dir, "output"));
    assert.equal(files.length, 4, files.join(", "));
    assert.ok(
      files.every((f) => /^all\/sales_\d+\.parquet$/.test(f)),
      `append mode: one file per job: ${files.join(", ")}`,
    );
    const tables = await readParquet(files.map((f) => join(dir, "output", f)));
    assert.equal(
      tables.reduce((n, t) => n + t.rows.length, 0),
      16,
    );

    const sqlite = await runCli(
      [helloPlugin, helloData, "--sink", "output=sqlite://sales.db/sales", "--config", join(root, "examples", "sqlite-sink.config.ts"), "--output", "db"],
      { cwd: dir, home },
    );
    assert.equal(sqlite.code, 0, sqlite.stderr);
    assert.match(sqlite.stdout, /output\s+-\s+16\s+-\s+sqlite:\/\/\/.*\/db\/sales\.db\/sales/);
    const { default: Database } = await import("better-sqlite3");
    const db = new Database(join(dir, "db", "sales.db"), { readonly: true });
    try {
      assert.deepEqual(db.prepare("SELECT count(*) AS n, count(DISTINCT source_file) AS files FROM sales").get(), { n: 16, files: 4 });
    } finally {
      db.close();
    }
    assert.deepEqual(
      (await readdir(join(dir, "db"))).filter((n) => n.startsWith(".casparian-staging-")),
      [],
    );
  });

  test("a broken plugin fails once, up front, with Python's error, before any input is processed", async () => {
    const dir = await scenario("broken");
    const started = Date.now();
    const syntax = await runCli([join(fixtures, "run-broken-plugins", "syntax_error.py"), helloData], { cwd: dir, home });
    assert.equal(syntax.code, 1);
    assert.equal(syntax.stderr.match(/SyntaxError/g)?.length, 1, syntax.stderr);
    assert.match(syntax.stderr, /CSP_RUN_PLUGIN_INVALID/);
    assert.match(syntax.stderr, /def execute\(self, file_path\)/, "Python's own pointer to the line");

    const noHandler = await runCli([join(fixtures, "run-broken-plugins", "no_handler.py"), helloData], { cwd: dir, home });
    assert.equal(noHandler.code, 1);
    assert.match(noHandler.stderr, /no class Handler or Plugin/);
    assert.ok(Date.now() - started < 20_000, "no worker was started for either");
    assert.deepEqual(await listFiles(join(dir, "output")), []);

    // Compiles, but fails identically on every input: stopped after the first few, error shown once.
    const data = await slowInputs(dir, 12, 1, 0);
    const everywhere = await runCli([join(fixtures, "run-broken-plugins", "import_fails.py"), data, "--workers", "1"], { cwd: dir, home });
    assert.equal(everywhere.code, 1);
    assert.match(everywhere.stderr, /CSP_RUN_PLUGIN_FAILS_EVERYWHERE/);
    assert.equal(everywhere.stderr.match(/No module named 'casparian_no_such_module'/g)?.length, 1, everywhere.stderr);
    assert.match(everywhere.stdout, /0 of 12 inputs succeeded, 3 failed, 9 not run/);
  });

  test("without uv: a dependency-free plugin gets a `python3 -m venv` environment; one with dependencies stops with the install hint", async () => {
    const dir = await scenario("no-uv");
    // A PATH with python3 and nothing else, and a HOME where no uv was ever installed.
    const bin = join(dir, "bin");
    await mkdir(bin, { recursive: true });
    const { execFileSync } = await import("node:child_process");
    const python = execFileSync("python3", ["-c", "import sys; print(sys.executable)"], { encoding: "utf8" }).trim();
    await symlink(python, join(bin, "python3"));
    const env = { PATH: `${bin}:/usr/bin:/bin`, HOME: join(dir, "user-home"), UV: "" };
    const noUvHome = join(dir, "casparian-home");

    const bare = await runCli([helloPlugin, join(helloData, "sales-2024-01.csv"), "--workers", "1"], { cwd: dir, home: noUvHome, env });
    assert.equal(bare.code, 0, bare.stderr);
    assert.match(bare.stderr, /uv not found; making the plugin's bare environment with `python3 -m venv`/);
    const [table] = await readParquet([join(dir, "output", "output", outside(join(helloData, "sales-2024-01.csv.parquet")))]);
    assert.equal(table!.rows.length, 5);

    const pandas = await runCli([join(root, "examples", "pandas-pep723", "plugin.py"), join(helloData, "sales-2024-01.csv")], {
      cwd: dir,
      home: noUvHome,
      env,
    });
    assert.equal(pandas.code, 1);
    assert.match(pandas.stderr, /CSP_ENV_UV_MISSING: uv was not found/);
    assert.match(pandas.stderr, /python3 -m pip install uv/);
  });

  test("a worker killed with SIGKILL mid-run: its job runs elsewhere, every input exactly once, no duplicate rows", async () => {
    const dir = await scenario("sigkill");
    const data = await slowInputs(dir, 10, 50, 0.8);
    const cli = new RunningCli([slowPlugin, data, "--workers", "2"], { cwd: dir, home });
    try {
      await cli.waitFor(async () => (await markers(dir)).length >= 3, "three jobs to start");
      const pids = await cli.workerPids();
      assert.equal(pids.length, 2, "two worker processes");
      process.kill(pids[0]!, "SIGKILL");
      const result = await cli.exited;
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stderr, /killed by SIGKILL; .*in-\d\d\.csv goes to another worker/);
      assert.match(result.stdout, /10 of 10 inputs succeeded/);

      const files = await listFiles(join(dir, "output"));
      assert.equal(files.length, 10, files.join(", "));
      const tables = await readParquet(files.map((f) => join(dir, "output", f)));
      const seen = new Set<string>();
      for (const table of tables) {
        assert.equal(table.rows.length, 50, table.path);
        for (const row of table.rows) {
          const key = `${String(row.file)}#${String(row.id)}`;
          assert.ok(!seen.has(key), `duplicate row ${key}`);
          seen.add(key);
        }
      }
      assert.equal(seen.size, 500);
      await cli.waitFor(() => pids.every((pid) => !isAlive(pid)), "workers to be gone", 10_000);
    } finally {
      cli.kill();
    }
  });

  test("Ctrl-C: exit 130, running jobs aborted, workers stopped, nothing partial under --output", async () => {
    const dir = await scenario("sigint");
    const data = await slowInputs(dir, 8, 20, 30);
    const cli = new RunningCli([slowPlugin, data, "--workers", "2"], { cwd: dir, home });
    try {
      await cli.waitFor(async () => (await markers(dir)).length >= 2, "two jobs to be running");
      const pids = await cli.workerPids();
      const interruptedAt = Date.now();
      cli.child.kill("SIGINT");
      const result = await cli.exited;
      assert.equal(result.code, 130, result.stderr);
      assert.ok(Date.now() - interruptedAt < 15_000, "stopped promptly, without waiting for the 30 s jobs");
      assert.match(result.stdout, /interrupted: 0 of 8 inputs succeeded/);
      assert.deepEqual(await listFiles(join(dir, "output")), [], "no file, no staging left");
      for (const pid of pids) assert.ok(!isAlive(pid), `worker ${pid} stopped`);
      for (const pid of await guestPids(dir)) assert.ok(!isAlive(pid), `guest ${pid} stopped`);
    } finally {
      cli.kill();
    }
  });

  test("the run itself killed with SIGKILL: its workers and guests stop on their own, the next run clears the staging", async () => {
    const dir = await scenario("cli-sigkill");
    const data = await slowInputs(dir, 6, 5, 30);
    const cli = new RunningCli([slowPlugin, data, "--workers", "2"], { cwd: dir, home });
    try {
      await cli.waitFor(async () => (await markers(dir)).length >= 2, "two jobs to be running");
      const pids = await cli.workerPids();
      assert.equal(pids.length, 2);
      cli.kill("SIGKILL");
      await cli.exited;
      const gone = Date.now() + 15_000;
      while (pids.some(isAlive) && Date.now() < gone) await new Promise((r) => setTimeout(r, 100));
      for (const pid of pids) assert.ok(!isAlive(pid), `orphaned worker ${pid} stopped`);
      for (const pid of await guestPids(dir)) assert.ok(!isAlive(pid), `guest ${pid} stopped`);
      assert.ok(
        (await readdir(join(dir, "output"))).some((n) => n.startsWith(".casparian-staging-")),
        "a killed run cannot clean up",
      );

      await writeFile(join(data, "in-00.csv"), "# sleep 0\nid,value\n1,a\n");
      const next = await runCli([slowPlugin, join(data, "in-00.csv")], { cwd: dir, home });
      assert.equal(next.code, 0, next.stderr);
      assert.deepEqual(await listFiles(join(dir, "output")), ["output/data/in-00.csv.parquet"]);
    } finally {
      cli.kill();
    }
  });
});
