/**
 * Outputs you can trust, end to end through the real CLI: stable names, the run state
 * in <output>/.casparian/, incremental reruns, every topic landing, write modes per
 * sink (Parquet, SQLite, PostgreSQL), problems found before any worker starts, and a
 * run killed with SIGKILL in the middle of publishing. Every topic directory is read
 * back as one table, with DuckDB and with pyarrow.dataset, and its rows counted.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { packageRoot } from "../core/kernel/paths.js";
import { listFiles, runCli, testPython } from "./helpers/run-cli.js";
import { startPostgres, type PostgresServer } from "./helpers/postgres.js";

const execFileAsync = promisify(execFile);
const root = packageRoot();
const topicsPlugin = join(root, "test", "fixtures", "run-topics", "plugin.py");
const sqliteConfig = join(root, "examples", "sqlite-sink.config.ts");

let base: string;
let home: string;

before(async () => {
  base = await mkdtemp(join(tmpdir(), "casparian-run-outputs-"));
  home = join(base, "home");
  await testPython();
});

after(async () => {
  await rm(base, { recursive: true, force: true });
});

async function scenario(name: string): Promise<string> {
  const dir = join(base, name);
  await mkdir(dir, { recursive: true });
  return dir;
}

/** Writes CSV inputs: path (relative to dir) → rows as "id,value" lines. */
async function inputs(dir: string, files: Record<string, string[]>): Promise<void> {
  for (const [rel, rows] of Object.entries(files)) {
    await mkdir(join(dir, rel, ".."), { recursive: true });
    await writeFile(join(dir, rel), `id,value\n${rows.join("\n")}\n`);
  }
}

/**
 * Reads a topic directory as one table, twice: DuckDB over `<dir>/**\/*.parquet` and
 * pyarrow.dataset over the directory; both must agree. Returns the row count and the
 * rows' (file, id, value) triples, sorted.
 */
async function table(dir: string): Promise<{ rows: number; keys: string[] }> {
  const script = `
import json, sys, duckdb, pyarrow.dataset as ds
d = sys.argv[1]
con = duckdb.connect()
n_duck = con.execute("SELECT count(*) FROM read_parquet(?)", [d + "/**/*.parquet"]).fetchone()[0]
dataset = ds.dataset(d, format="parquet")
n_arrow = dataset.count_rows()
cols = [c for c in ("file", "id", "value") if c in dataset.schema.names]
rows = dataset.to_table(columns=cols).to_pylist()
print(json.dumps({"duck": n_duck, "arrow": n_arrow, "keys": sorted("|".join(str(r[c]) for c in cols) for r in rows)}))
`;
  const { stdout } = await execFileAsync(await testPython(), ["-c", script, dir], { maxBuffer: 64 * 1024 * 1024 });
  const out = JSON.parse(stdout) as { duck: number; arrow: number; keys: string[] };
  assert.equal(out.duck, out.arrow, `DuckDB and pyarrow.dataset disagree on ${dir}`);
  return { rows: out.duck, keys: out.keys };
}

/** The "rows" column of the summary's topic table. */
function summaryRows(stdout: string, topic: string): number {
  const line = stdout.split("\n").find((l) => l.trim().startsWith(`${topic} `));
  assert.ok(line !== undefined, `no summary line for topic ${topic}:\n${stdout}`);
  return Number(line.trim().split(/\s+/)[2]!.replace(/,/g, ""));
}

function withoutState(files: string[]): string[] {
  return files.filter((f) => !f.startsWith(".casparian/"));
}

describe("casparian run: stable names and incremental reruns", () => {
  test("inputs differing only by extension or folder never share a file; a rerun over a subset replaces, never duplicates", async () => {
    const dir = await scenario("names");
    await inputs(dir, {
      "data/a.csv": ["1,x", "2,y"],
      "data/a.txt": ["3,x"],
      "data/a": ["4,x", "5,y", "6,z"],
      "data/2025/jan.csv": ["7,x"],
      "data/2024/jan.csv": ["8,x", "9,y"],
    });
    const first = await runCli([topicsPlugin, "data", "--workers", "2"], { cwd: dir, home });
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /5 of 5 inputs succeeded, 0 failed/);
    assert.deepEqual(withoutState(await listFiles(join(dir, "output"))), [
      "output/data/2024/jan.csv.parquet",
      "output/data/2025/jan.csv.parquet",
      "output/data/a.csv.parquet",
      "output/data/a.parquet",
      "output/data/a.txt.parquet",
    ]);
    assert.equal((await table(join(dir, "output", "output"))).rows, 9);
    assert.equal(summaryRows(first.stdout, "output"), 9);

    // The same input again, alone and by another spelling: same name, unchanged, skipped.
    const alone = await runCli([topicsPlugin, "data/2025/jan.csv"], { cwd: dir, home });
    assert.equal(alone.code, 0, alone.stderr);
    assert.match(alone.stdout, /nothing to do: 1 unchanged, skipped/);
    // Changed: processed alone, its file replaced under the same name; the table still counts each row once.
    await writeFile(join(dir, "data/2025/jan.csv"), "id,value\n7,x\n10,w\n");
    // Run from another directory, --output naming the same place: names depend on the input and the output only.
    const changed = await runCli([topicsPlugin, join(dir, "data", "2025", "jan.csv"), "--output", join(dir, "output")], { cwd: join(dir, "data"), home });
    assert.equal(changed.code, 0, changed.stderr);
    assert.match(changed.stdout, /1 of 1 input succeeded/);
    const again = await runCli([topicsPlugin, "data/2025/jan.csv"], { cwd: dir, home });
    assert.match(again.stdout, /nothing to do: 1 unchanged, skipped/);
    assert.match(again.stdout, /output\s+5\s+10\s/, "the summary counts the whole table: every input's rows once");
    const after = await table(join(dir, "output", "output"));
    assert.equal(after.rows, 10);
    assert.equal(new Set(after.keys).size, 10, "no row twice");
  });

  test("unchanged inputs are skipped (touching is no change), --all reprocesses, a changed plugin invalidates everything", async () => {
    const dir = await scenario("incremental");
    await inputs(dir, { "data/one.csv": ["1,a", "2,b"], "data/two.csv": ["3,c"], "data/three.csv": ["4,d"] });
    const plugin = join(dir, "plugin.py");
    await writeFile(plugin, await readFile(topicsPlugin, "utf8"));
    const first = await runCli([plugin, "data"], { cwd: dir, home });
    assert.equal(first.code, 0, first.stderr);

    await utimes(join(dir, "data/two.csv"), new Date(), new Date(Date.now() + 60_000));
    await writeFile(join(dir, "data/three.csv"), "id,value\n4,d\n5,e\n");
    const second = await runCli([plugin, "data", "--report", "report.json"], { cwd: dir, home });
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stdout, /1 of 3 inputs succeeded, 0 failed, 2 unchanged, skipped/);
    const report = JSON.parse(await readFile(join(dir, "report.json"), "utf8")) as {
      inputs: Array<{ name: string; state: string; outputs: Array<{ rows: number }> }>;
      topics: Array<{ topic: string; rows: number }>;
    };
    assert.deepEqual(report.inputs.map((i) => [i.name, i.state]).sort(), [
      ["data/one.csv", "unchanged"],
      ["data/three.csv", "succeeded"],
      ["data/two.csv", "unchanged"],
    ]);
    assert.deepEqual(
      report.topics.map((t) => [t.topic, t.rows]),
      [["output", 5]],
    );

    const all = await runCli([plugin, "data", "--all"], { cwd: dir, home });
    assert.match(all.stdout, /3 of 3 inputs succeeded, 0 failed in/);
    assert.equal((await table(join(dir, "output", "output"))).rows, 5);

    await writeFile(plugin, `${await readFile(plugin, "utf8")}\n# a changed plugin\n`);
    const changedPlugin = await runCli([plugin, "data"], { cwd: dir, home });
    assert.match(changedPlugin.stdout, /3 of 3 inputs succeeded, 0 failed in/, "a changed plugin source processes every input again");
    assert.equal((await table(join(dir, "output", "output"))).rows, 5);
  });

  test("every topic lands, also one registered at run time; an input that stops producing a topic loses its stale file", async () => {
    const dir = await scenario("topics");
    await inputs(dir, { "data/jan.csv": ["1,ok", "2,bad", "3,bad"], "data/feb.csv": ["4,ok"] });
    const first = await runCli([topicsPlugin, "data"], { cwd: dir, home });
    assert.equal(first.code, 0, first.stderr);
    assert.doesNotMatch(first.stdout, /warning/);
    assert.equal((await table(join(dir, "output", "rejects"))).rows, 2);
    assert.equal(summaryRows(first.stdout, "rejects"), 2);
    assert.equal(summaryRows(first.stdout, "output"), 2);

    // Fixed: jan.csv has no bad rows any more, so its rejects file must go.
    await writeFile(join(dir, "data/jan.csv"), "id,value\n1,ok\n2,ok\n3,ok\n");
    const fixed = await runCli([topicsPlugin, "data"], { cwd: dir, home });
    assert.equal(fixed.code, 0, fixed.stderr);
    assert.match(fixed.stdout, /1 of 2 inputs succeeded, 0 failed, 1 unchanged, skipped/);
    assert.deepEqual(withoutState(await listFiles(join(dir, "output"))), ["output/data/feb.csv.parquet", "output/data/jan.csv.parquet"]);
    assert.doesNotMatch(fixed.stdout, /rejects/);
    assert.equal((await table(join(dir, "output", "output"))).rows, 4);
  });
});

describe("casparian run: write modes", () => {
  test("Parquet: {input} names one file per input in every mode; replace or error on one fixed file is refused up front", async () => {
    const dir = await scenario("parquet-modes");
    await inputs(dir, { "data/a.csv": ["1,x", "2,y"], "data/b.csv": ["3,z"] });
    const fixed = await runCli([topicsPlugin, "data", "--sink", "output=parquet://all/sales.parquet"], { cwd: dir, home });
    assert.equal(fixed.code, 2, fixed.stderr);
    assert.match(fixed.stderr, /CSP_RUN_SINK_MODE: sink output=parquet:\/\/all\/sales\.parquet \(from --sink\) cannot be used in mode replace/);
    assert.match(fixed.stderr, /hint: put \{input\} in the URI .*parquet:\/\/all\/sales\/\{input\}\.parquet/);

    const perInput = await runCli([topicsPlugin, "data", "--sink", "output=parquet://sales/{input}.parquet"], { cwd: dir, home });
    assert.equal(perInput.code, 0, perInput.stderr);
    const again = await runCli([topicsPlugin, "data", "--all", "--sink", "output=parquet://sales/{input}.parquet"], { cwd: dir, home });
    assert.equal(again.code, 0, again.stderr);
    assert.equal((await table(join(dir, "output", "sales"))).rows, 3, "--all replaced each input's file");

    // append on one fixed URI: one file per job; a rerun of the same version replaces its file, a new version adds one.
    const append = ["--sink", "output=parquet://log/sales.parquet", "--mode", "append"];
    assert.equal((await runCli([topicsPlugin, "data", ...append], { cwd: dir, home })).code, 0);
    assert.equal((await runCli([topicsPlugin, "data", "--all", ...append], { cwd: dir, home })).code, 0);
    assert.equal((await table(join(dir, "output", "log"))).rows, 3, "the same versions again: no second copy");
    await writeFile(join(dir, "data/b.csv"), "id,value\n3,z\n4,w\n");
    const newVersion = await runCli([topicsPlugin, "data", ...append], { cwd: dir, home });
    assert.match(newVersion.stdout, /1 of 2 inputs succeeded, 0 failed, 1 unchanged, skipped/);
    assert.equal((await table(join(dir, "output", "log"))).rows, 5, "append keeps b.csv's earlier version beside the new one");

    const error = ["--sink", "output=parquet://strict/{input}.parquet", "--mode", "error"];
    assert.equal((await runCli([topicsPlugin, "data", ...error], { cwd: dir, home })).code, 0);
    const refused = await runCli([topicsPlugin, "data", "--all", ...error], { cwd: dir, home });
    assert.equal(refused.code, 1);
    assert.match(refused.stdout, /0 of 2 inputs succeeded, 2 failed/);
    assert.match(refused.stdout, /CSP_SINK_TARGET_EXISTS/);
    assert.equal((await table(join(dir, "output", "strict"))).rows, 4);
  });

  test("SQLite on one table: replace swaps each input's rows in one transaction, append keeps versions, error refuses; reruns never duplicate", async () => {
    const dir = await scenario("sqlite-modes");
    await inputs(dir, { "data/a.csv": ["1,x", "2,y"], "data/b.csv": ["3,z"] });
    const sink = (mode: string, table: string) => ["--config", sqliteConfig, "--output", "output", "--sink", `output=sqlite://w.db/${table}`, "--mode", mode];
    const count = (table: string) => {
      const db = new Database(join(dir, "output", "w.db"), { readonly: true });
      try {
        return db.prepare(`SELECT count(*) AS n, count(DISTINCT id) AS ids FROM ${table}`).get() as { n: number; ids: number };
      } finally {
        db.close();
      }
    };
    const first = await runCli([topicsPlugin, "data", ...sink("replace", "sales")], { cwd: dir, home });
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /output\s+-\s+3\s+-\s+sqlite:\/\//);
    assert.equal((await runCli([topicsPlugin, "data", "--all", ...sink("replace", "sales")], { cwd: dir, home })).code, 0);
    assert.deepEqual(count("sales"), { n: 3, ids: 3 }, "--all: each input's rows replaced, not added");
    await writeFile(join(dir, "data/b.csv"), "id,value\n4,w\n5,v\n");
    const changed = await runCli([topicsPlugin, "data", ...sink("replace", "sales")], { cwd: dir, home });
    assert.match(changed.stdout, /1 of 2 inputs succeeded, 0 failed, 1 unchanged, skipped/);
    assert.deepEqual(count("sales"), { n: 4, ids: 4 }, "b.csv's old row is gone, a.csv's rows untouched");
    assert.match(changed.stdout, /output\s+-\s+4\s/, "the summary counts what the table holds");

    assert.equal((await runCli([topicsPlugin, "data", ...sink("append", "history")], { cwd: dir, home })).code, 0);
    assert.equal((await runCli([topicsPlugin, "data", "--all", ...sink("append", "history")], { cwd: dir, home })).code, 0);
    assert.deepEqual(count("history"), { n: 4, ids: 4 }, "the same versions appended again: no second copy");
    await writeFile(join(dir, "data/b.csv"), "id,value\n6,u\n");
    assert.equal((await runCli([topicsPlugin, "data", ...sink("append", "history")], { cwd: dir, home })).code, 0);
    assert.deepEqual(count("history"), { n: 5, ids: 5 }, "append keeps b.csv's earlier version");

    assert.equal((await runCli([topicsPlugin, "data", ...sink("error", "strict")], { cwd: dir, home })).code, 0);
    const refused = await runCli([topicsPlugin, "data", "--all", ...sink("error", "strict")], { cwd: dir, home });
    assert.equal(refused.code, 1);
    assert.match(refused.stdout, /CSP_SINK_TARGET_EXISTS/);
    assert.deepEqual(count("strict"), { n: 3, ids: 3 });
  });

  test("PostgreSQL on one table: replace by input, exactly once across reruns", async (t) => {
    const server: PostgresServer = await startPostgres();
    t.after(() => server.stop());
    const dir = await scenario("postgres-modes");
    await inputs(dir, { "data/a.csv": ["1,x", "2,y"], "data/b.csv": ["3,z"] });
    const config = join(dir, "casparian.config.ts");
    await writeFile(config, `export default { sinks: [${JSON.stringify(join(root, "examples", "postgres-sink.ts"))}] };\n`);
    const uri = `postgres://${server.user}@127.0.0.1:${server.port}/${server.database}/public.sales`;
    const args = ["--config", config, "--sink", `output=${uri}`];
    assert.equal((await runCli([topicsPlugin, "data", ...args], { cwd: dir, home })).code, 0);
    assert.equal((await runCli([topicsPlugin, "data", "--all", ...args], { cwd: dir, home })).code, 0);
    await writeFile(join(dir, "data/b.csv"), "id,value\n4,w\n5,v\n");
    const changed = await runCli([topicsPlugin, "data", ...args], { cwd: dir, home });
    assert.equal(changed.code, 0, changed.stderr);
    assert.match(changed.stdout, /1 of 2 inputs succeeded, 0 failed, 1 unchanged, skipped/);
    assert.deepEqual(await server.query("SELECT count(*)::int AS n, count(DISTINCT id)::int AS ids FROM public.sales"), [{ n: 4, ids: 4 }]);
  });
});

describe("casparian run: problems found before any worker starts", () => {
  test("broken sink modules, unknown schemes, bad URIs and parameters, a bad --output: exit 2 with the real cause; validate says the same", async () => {
    const dir = await scenario("preflight");
    await inputs(dir, { "data/a.csv": ["1,x"] });
    await writeFile(join(dir, "broken-sink.ts"), "export default defineSink({ name: 'x', schemes: ['x'] \n");
    await writeFile(join(dir, "broken.config.ts"), "export default { sinks: ['./broken-sink.ts'] };\n");
    await writeFile(join(dir, "missing.config.ts"), "export default { sinks: ['./no-such-sink.ts'] };\n");
    await writeFile(join(dir, "package.config.ts"), "export default { sinks: ['casparian-no-such-sink-package'] };\n");
    await writeFile(join(dir, "shape-sink.ts"), "export default { name: 'shapeless', create() {} };\n");
    await writeFile(join(dir, "shape.config.ts"), "export default { sinks: ['./shape-sink.ts'] };\n");
    await writeFile(join(dir, "a-file"), "not a directory\n");
    const cases: Array<{ args: string[]; stderr: RegExp }> = [
      { args: ["--config", "broken.config.ts"], stderr: /CSP_SINK_INVALID: .*broken-sink\.ts.*cannot load module/ },
      { args: ["--config", "missing.config.ts"], stderr: /CSP_SINK_INVALID: .*no-such-sink\.ts/ },
      { args: ["--config", "package.config.ts"], stderr: /CSP_SINK_INVALID: .*casparian-no-such-sink-package/ },
      { args: ["--config", "shape.config.ts"], stderr: /CSP_SINK_INVALID: .*"shapeless": schemes: required field is missing/ },
      {
        args: ["--sink", "output=s3://bucket/x"],
        stderr: /CSP_SINK_UNKNOWN_SCHEME: no sink handles the scheme of output=s3:\/\/bucket\/x .*known schemes: parquet:\/\//,
      },
      {
        args: ["--sink", "output=parquet://sales/{input}.parquet?compression=zip"],
        stderr: /CSP_SINK_BAD_URI: .*compression: expected one of "snappy", .*, got "zip"/,
      },
      { args: ["--sink", "output=parquet://sales/{input}.parquet?rows=5"], stderr: /CSP_SINK_BAD_URI: .*unknown parameter "rows"/ },
      { args: ["--sink", "output=parquet://../up/{input}.parquet"], stderr: /CSP_SINK_PATH_ESCAPE/ },
      { args: ["--sink", "output=sqlite://just-a-table", "--config", sqliteConfig, "--output", "output"], stderr: /CSP_SINK_BAD_URI/ },
      { args: ["--output", "a-file"], stderr: /CSP_CLI_USAGE: --output .*a-file is a file, not a directory/ },
      { args: ["--output", "a-file/below"], stderr: /CSP_CLI_USAGE: --output .*cannot be created: .*a-file is a file/ },
      { args: ["--plugin-config", "{not json"], stderr: /CSP_CLI_USAGE: --plugin-config .*invalid JSON/ },
    ];
    for (const { args, stderr } of cases) {
      // At debug level the run logs "worker started" for every worker it spawns.
      const result = await runCli([topicsPlugin, "data", ...args, "--log-level", "debug"], { cwd: dir, home });
      assert.equal(result.code, 2, `${args.join(" ")}\n${result.stderr}`);
      assert.match(result.stderr, stderr, args.join(" "));
      assert.doesNotMatch(result.stderr, /this is a bug/);
      assert.doesNotMatch(result.stderr, /worker started/, `no worker may start: ${args.join(" ")}`);
      const validated = await execFileAsync(process.execPath, [join(root, "bin", "casparian.js"), "validate", topicsPlugin, ...args], {
        cwd: dir,
        env: { ...process.env, CASPARIAN_HOME: home },
      }).then(
        () => ({ code: 0, stderr: "" }),
        (err: { code: number; stderr: string }) => ({ code: err.code, stderr: err.stderr }),
      );
      assert.equal(validated.code, 2, `validate ${args.join(" ")}`);
      assert.match(validated.stderr, stderr);
    }
    assert.deepEqual(await listFiles(join(dir, "output")), [], "nothing was written");

    const ok = await execFileAsync(
      process.execPath,
      [join(root, "bin", "casparian.js"), "validate", topicsPlugin, "--config", sqliteConfig, "--output", "output", "--sink", "output=sqlite://w.db/sales"],
      { cwd: dir },
    );
    assert.match(ok.stdout, /^ok: plugin topics/);
    assert.match(ok.stdout, /sink {4}output → sqlite:\/\/w\.db\/sales \(replace, from --sink\)/);
    assert.match(ok.stdout, /sink {4}every other topic → parquet:\/\/\{topic\}\/\{input\}\.parquet/);
  });
});

describe("casparian run: crash safety of the run state", () => {
  test("killed with SIGKILL while publishing an input: the next run finishes that publication; files and state agree, no row twice", async () => {
    const dir = await scenario("kill-at-promote");
    await inputs(dir, { "data/1.csv": ["1,a", "2,bad"], "data/2.csv": ["3,b", "4,bad"], "data/3.csv": ["5,c"] });
    // The second promotion: its files moved into --output, the state not yet written.
    const killed = await runCli([topicsPlugin, "data", "--workers", "1"], { cwd: dir, home, env: { CASPARIAN_TEST_KILL_AT: "promote-moved:2" } });
    assert.equal(killed.signal, "SIGKILL", killed.stderr);
    // 2.csv's files are in place, but the state does not know yet (3.csv may be half written in the dead run's staging).
    const published = withoutState(await listFiles(join(dir, "output"))).filter((f) => !f.startsWith(".casparian-staging-"));
    assert.deepEqual(published, ["output/data/1.csv.parquet", "output/data/2.csv.parquet", "rejects/data/1.csv.parquet", "rejects/data/2.csv.parquet"]);

    const next = await runCli([topicsPlugin, "data", "--workers", "1"], { cwd: dir, home });
    assert.equal(next.code, 0, next.stderr);
    assert.match(next.stderr, /finished publishing 1 input\(s\) that an interrupted run had left half published/);
    assert.match(next.stdout, /1 of 3 inputs succeeded, 0 failed, 2 unchanged, skipped/, "both published inputs count as done");
    assert.deepEqual(withoutState(await listFiles(join(dir, "output"))), [
      "output/data/1.csv.parquet",
      "output/data/2.csv.parquet",
      "output/data/3.csv.parquet",
      "rejects/data/1.csv.parquet",
      "rejects/data/2.csv.parquet",
    ]);
    assert.equal((await table(join(dir, "output", "output"))).rows, 3);
    assert.equal((await table(join(dir, "output", "rejects"))).rows, 2);

    // Killed right after logging the intent, before any file moved: the same, from the other side.
    const dir2 = await scenario("kill-at-intent");
    await inputs(dir2, { "data/1.csv": ["1,a"], "data/2.csv": ["2,b"] });
    const early = await runCli([topicsPlugin, "data", "--workers", "1"], { cwd: dir2, home, env: { CASPARIAN_TEST_KILL_AT: "promote-logged:1" } });
    assert.equal(early.signal, "SIGKILL");
    const staged = withoutState(await listFiles(join(dir2, "output")));
    // Nothing under a final name yet; 1.csv's file waits in the dead run's staging (2.csv's may too, unpublished).
    assert.ok(
      staged.every((f) => f.startsWith(".casparian-staging-")),
      `nothing published: ${staged.join(", ")}`,
    );
    assert.ok(
      staged.some((f) => f.endsWith("/output/data/1.csv.parquet")),
      `1.csv's file is staged: ${staged.join(", ")}`,
    );
    const resumed = await runCli([topicsPlugin, "data", "--workers", "1"], { cwd: dir2, home });
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.match(resumed.stdout, /1 of 2 inputs succeeded, 0 failed, 1 unchanged, skipped/);
    assert.equal((await table(join(dir2, "output", "output"))).rows, 2);
  });
});

describe("casparian run: while it runs", () => {
  test("a long file shows its rows and bytes as they stream (a line at least every 10 s off a TTY)", async () => {
    const dir = await scenario("progress");
    const lines = ["id,value"];
    for (let chunk = 0; chunk < 12; chunk++) {
      for (let i = 0; i < 100; i++) lines.push(`${chunk * 100 + i},v${i}`);
      lines.push("sleep 1");
    }
    await mkdir(join(dir, "data"), { recursive: true });
    await writeFile(join(dir, "data", "long.csv"), `${lines.join("\n")}\n`);
    const result = await runCli([topicsPlugin, "data", "--workers", "1"], { cwd: dir, home });
    assert.equal(result.code, 0, result.stderr);
    const running = result.stderr.split("\n").filter((l) => /running: 1 file, [\d,]+ rows, [\d.]+ (B|KB)/.test(l));
    assert.ok(running.length >= 1, `a progress line while the file streamed:\n${result.stderr}`);
    const rows = Number(/running: 1 file, ([\d,]+) rows/.exec(running[0]!)![1]!.replace(/,/g, ""));
    assert.ok(rows >= 100 && rows < 1200, `rows so far, not the total: ${running[0]}`);
    assert.equal((await table(join(dir, "output", "output"))).rows, 1200);
  });

  test("--plugin-config reaches configure(); --keep-going runs every input; a beforeDispatch tap's refusal is a skip, not a failure", async () => {
    const dir = await scenario("flags");
    await inputs(dir, { "data/a.csv": ["1,x"], "data/b.csv": ["2,y"], "data/c.skip": ["3,z"] });
    await writeFile(join(dir, "cfg.json"), JSON.stringify({ tag: "from-file" }));
    await writeFile(
      join(dir, "casparian.config.mjs"),
      `export default { hooks: { beforeDispatch: async (request) => { if (request.command.filePath.endsWith(".skip")) throw new Error("temporary files are not parsed"); return request; } } };\n`,
    );
    const declined = await runCli([topicsPlugin, "data", "--plugin-config", "cfg.json"], { cwd: dir, home });
    assert.equal(declined.code, 0, declined.stderr);
    assert.match(declined.stdout, /2 of 3 inputs succeeded, 0 failed, 1 declined, skipped/);
    assert.match(declined.stdout, /declined by a worker plugin \(1\):\n\s+\S*c\.skip: .*temporary files are not parsed/);
    const tags = await execFileAsync(await testPython(), [
      "-c",
      "import sys, pyarrow.dataset as ds; print(sorted(set(ds.dataset(sys.argv[1]).to_table().column('tag').to_pylist())))",
      join(dir, "output", "config"),
    ]);
    assert.equal(tags.stdout.trim(), "['from-file']");
    const inline = await runCli([topicsPlugin, "data/a.csv", "--plugin-config", '{"tag": "inline"}'], { cwd: dir, home });
    assert.equal(inline.code, 0, inline.stderr);
    assert.match(inline.stdout, /1 of 1 input succeeded/, "a changed plugin config processes the input again");

    const broken = join(root, "test", "fixtures", "run-broken-plugins", "import_fails.py");
    const more = await scenario("keep-going");
    await inputs(more, Object.fromEntries(Array.from({ length: 5 }, (_, i) => [`data/${i}.csv`, ["1,x"]])));
    const stopped = await runCli([broken, "data", "--workers", "1"], { cwd: more, home });
    assert.match(stopped.stdout, /0 of 5 inputs succeeded, 3 failed, 2 not run/);
    const going = await runCli([broken, "data", "--workers", "1", "--keep-going"], { cwd: more, home });
    assert.equal(going.code, 1);
    assert.match(going.stdout, /0 of 5 inputs succeeded, 5 failed in/);
    assert.doesNotMatch(going.stderr, /CSP_RUN_PLUGIN_FAILS_EVERYWHERE/);
  });
});
