/**
 * A topic directory is one table: `casparian run` over inputs whose files disagree in the
 * way a placeholder or a narrower type does (a column all empty in one file, int64 in
 * another) leaves files that DuckDB, pyarrow.dataset and polars read as one table; a real
 * conflict between files fails the run naming both types. The real CLI, real workers.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, test } from "node:test";
import { packageRoot as packageRootDir } from "../core/kernel/paths.js";
import { listFiles, runCli, testPython } from "./helpers/run-cli.js";

const execFileAsync = promisify(execFile);

let base: string;
let home: string;
let python: string;

before(async () => {
  base = await mkdtemp(join(tmpdir(), "casparian-cross-file-"));
  home = join(base, "home");
  python = await testPython();
});
after(async () => {
  if (base) await rm(base, { recursive: true, force: true });
});

// Dependency-free: a CSV with a qty column; empty qty is None. 'mode' in the first line decides str or int.
const PLUGIN = `
import csv

def qty(text):
    if text == "":
        return None
    return text if text.startswith("'") else int(text)

class Handler:
    def execute(self, path):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return {"name": [r["name"] for r in rows], "qty": [qty(r["qty"]) for r in rows]}
`;

async function scenario(name: string, inputs: Record<string, string>): Promise<string> {
  const dir = join(base, name);
  await mkdir(join(dir, "data"), { recursive: true });
  await writeFile(join(dir, "plugin.py"), PLUGIN);
  for (const [file, text] of Object.entries(inputs)) await writeFile(join(dir, "data", file), text);
  return dir;
}

const READERS = `
import json, sys
import duckdb, polars, pyarrow.dataset as ds
directory = sys.argv[1]
out = {}
table = ds.dataset(directory, format="parquet").to_table()
out["pyarrow"] = {"qty": str(table.schema.field("qty").type), "rows": sorted(zip(table.column("name").to_pylist(), table.column("qty").to_pylist()))}
rows = duckdb.sql(f"SELECT name, qty, typeof(qty) FROM read_parquet('{directory}/**/*.parquet') ORDER BY name").fetchall()
out["duckdb"] = {"qty": rows[0][2], "rows": [[r[0], r[1]] for r in rows]}
frame = polars.read_parquet(f"{directory}/**/*.parquet").sort("name")
out["polars"] = {"qty": str(frame.schema["qty"]), "rows": [[n, q] for n, q in zip(frame["name"].to_list(), frame["qty"].to_list())]}
print(json.dumps(out))
`;

describe("one table per topic directory", () => {
  test("a column all empty in one input and int64 in another: every reader sees one int64 table", async () => {
    const dir = await scenario("widen", {
      "a-empty.csv": "name,qty\na1,\na2,\n",
      "b-ints.csv": "name,qty\nb1,5\nb2,\n",
      "c-ints.csv": "name,qty\nc3,7\n",
    });
    const result = await runCli(["plugin.py", "data", "--workers", "2", "--output", "out", "--report", "report.json"], { cwd: dir, home });
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.match(result.stderr, /out\/output: 1 file\(s\) rewritten so that the directory has one schema/);
    assert.deepEqual(
      (await listFiles(join(dir, "out", "output"))).sort(),
      ["data/a-empty.csv.parquet", "data/b-ints.csv.parquet", "data/c-ints.csv.parquet"],
      "no staging left",
    );

    // The report counts what the output holds: the rewritten file's new size, not the size it was promoted with.
    const report = JSON.parse(await readFile(join(dir, "report.json"), "utf8")) as {
      topics: Array<{ topic: string; bytes: number }>;
      inputs: Array<{ outputs: Array<{ file: string; bytes: number }> }>;
    };
    let onDisk = 0;
    for (const output of report.inputs.flatMap((input) => input.outputs)) {
      const size = (await stat(output.file)).size;
      assert.equal(output.bytes, size, output.file);
      onDisk += size;
    }
    assert.equal(report.topics.find((t) => t.topic === "output")?.bytes, onDisk);

    const { stdout } = await execFileAsync(python, ["-c", READERS, join(dir, "out", "output")]);
    const read = JSON.parse(stdout) as Record<string, { qty: string; rows: unknown[] }>;
    const rows = [
      ["a1", null],
      ["a2", null],
      ["b1", 5],
      ["b2", null],
      ["c3", 7],
    ];
    assert.deepEqual(read.pyarrow, { qty: "int64", rows });
    assert.deepEqual(read.duckdb, { qty: "BIGINT", rows });
    assert.deepEqual(read.polars, { qty: "Int64", rows });
  });

  test("a real conflict between files (int64 here, string there) fails the run naming the column and both types", async () => {
    const dir = await scenario("conflict", {
      "a-ints.csv": "name,qty\na1,1\n",
      "b-text.csv": "name,qty\nb1,'x\n",
    });
    const result = await runCli(["plugin.py", "data", "--workers", "1", "--output", "out"], { cwd: dir, home });
    assert.equal(result.code, 1, result.stdout + result.stderr);
    assert.match(
      result.stderr,
      /CSP_SCHEMA_CONFLICT: topic 'output': column 'qty' is int64 in one part of the data and string in another \(file data\/b-text\.csv\.parquet against data\/a-ints\.csv\.parquet\)/,
    );
  });
});

describe("the hello example", () => {
  test("a file whose first 5,500 quantities are 'n/a' still has an int64 quantity column, like the others", async () => {
    const dir = join(base, "hello-leading-empties");
    await mkdir(join(dir, "data"), { recursive: true });
    const lines = ["date,store,product,qty,price"];
    for (let i = 0; i < 6000; i++) lines.push(`2024-03-0${1 + (i % 9)},Köln,Beans,${i < 5500 ? "n/a" : String(i % 7)},${(i % 50) + 0.5}`);
    await writeFile(join(dir, "data", "empties-first.csv"), `${lines.join("\n")}\n`);
    await writeFile(join(dir, "data", "normal.csv"), "date,store,product,qty,price\n2024-03-01,Bonn,Tamper,2,19.5\n");
    const plugin = join(packageRootDir(), "examples", "hello", "plugin.py");
    const result = await runCli([plugin, "data", "--workers", "2", "--output", "out"], { cwd: dir, home });
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const script = `
import json, sys, duckdb
rows = duckdb.sql(f"SELECT typeof(quantity), count(*), count(quantity), typeof(date) FROM read_parquet('{sys.argv[1]}/**/*.parquet') GROUP BY ALL").fetchall()
print(json.dumps(rows))
`;
    const { stdout } = await execFileAsync(python, ["-c", script, join(dir, "out", "output")]);
    assert.deepEqual(JSON.parse(stdout), [["BIGINT", 6001, 501, "DATE"]]);
  });
});

describe('bad values under on_bad_value="null"', () => {
  test("are counted in the run summary", async () => {
    const dir = join(base, "nulled");
    await mkdir(join(dir, "data"), { recursive: true });
    await writeFile(join(dir, "data", "a.csv"), "x\n");
    await writeFile(
      join(dir, "plugin.py"),
      `MANIFEST = {"topics": {"output": {"on_bad_value": "null"}}}\nclass Handler:\n    def execute(self, path):\n        return {"qty": [1, "n/a", 3, "?"]}\n`,
    );
    const result = await runCli(["plugin.py", "data", "--workers", "1", "--output", "out"], { cwd: dir, home });
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.match(result.stdout, /note: 2 values of topic "output" did not fit their column and became null \(on_bad_value="null"\)/);
  });
});
