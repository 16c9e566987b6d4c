/**
 * Every fenced ```python block of the README is a plugin, and it runs: each is extracted
 * and run through the real bridge in the test environment (pandas, pyarrow, polars) over
 * a small CSV, and must end cleanly having published data.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { runGuest } from "../core/bridge/host.js";
import type { Batch } from "../core/kernel/job.js";
import { packageRoot } from "../core/kernel/paths.js";
import { testEnvironment, testJob, type TestEnvironment } from "./helpers/pyenv.js";

const TIMEOUTS = { connectMs: 20_000, idleMs: 60_000, jobMs: 120_000 };

/** The ```python blocks of a Markdown text, with the line each starts on. */
function pythonBlocks(markdown: string): Array<{ line: number; code: string }> {
  const blocks: Array<{ line: number; code: string }> = [];
  const lines = markdown.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i]!.trim() !== "```python") continue;
    const start = i + 1;
    let end = start;
    while (end < lines.length && lines[end]!.trim() !== "```") end++;
    blocks.push({ line: start + 1, code: `${lines.slice(start, end).join("\n")}\n` });
    i = end;
  }
  return blocks;
}

let env: TestEnvironment;
let dir: string;
const readme = await readFile(join(packageRoot(), "README.md"), "utf8");
const blocks = pythonBlocks(readme);

before(async () => {
  env = await testEnvironment();
  dir = await mkdtemp(join(tmpdir(), "casparian-readme-"));
});
after(async () => {
  await env?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("README plugin examples", () => {
  test("the README has plugin examples, and each defines a plugin shape", () => {
    assert.ok(blocks.length >= 3, `found ${blocks.length} python blocks`);
    for (const { line, code } of blocks) assert.match(code, /^(class (Handler|Plugin)\b|def parse\()/m, `README.md:${line} is not a plugin`);
  });

  for (const { line, code } of blocks) {
    test(`README.md:${line} runs and publishes data`, async () => {
      const input = join(dir, `input-${line}.csv`);
      await writeFile(input, "name,qty\nbeans,2\ntamper,\nmilk,5\n");
      const { job } = testJob(code, { filePath: input, pluginName: `readme-${line}` });
      const batches: Batch[] = [];
      const result = await runGuest({ interpreterPath: env.interpreterPath, job, timeouts: TIMEOUTS, onBatch: async (b) => void batches.push(b) });
      assert.ok(result.rows > 0 && batches.length > 0, `README.md:${line} published nothing`);
    });
  }
});
