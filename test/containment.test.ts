/**
 * Output stays inside the output root while the tree under it changes: symlinked parents,
 * a topic directory swapped for a symlink between write and commit, a symlink planted at
 * the staging name, and the run's promotion into --output. Real files, the real Parquet
 * sink through the real pipeline (scripted guest), the real run state.
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rename, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { after, describe, test } from "node:test";
import { pino } from "pino";
import { Errors } from "../core/kernel/errors.js";
import { makeDirectoryInsideRoot, makeDirectoryInsideRootSync } from "../core/kernel/inside-root.js";
import { loadSinkPlugins } from "../core/pipeline/sink-loader.js";
import { RunState } from "../core/run/state.js";
import { stagingPathFor } from "../sinks/files.js";
import { batchOf, sampleTable } from "./helpers/arrow.js";
import { makeJob, runJob, scriptedPipeline, sinkSpec } from "./helpers/pipeline.js";

const logger = pino({ level: "silent" });
const dirs: string[] = [];
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

async function tempDir(tag: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `casparian-contain-${tag}-`));
  dirs.push(dir);
  return dir;
}

/** Every entry under dir, relative, sorted (directories included): what was created there. */
async function tree(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).sort();
}

async function parquetWorkspace() {
  const root = await tempDir("root");
  const outside = await tempDir("outside");
  const pipeline = scriptedPipeline({ outputRoot: root, sinks: await loadSinkPlugins([], root, { encoderThreads: 1 }), logger });
  await pipeline.start();
  return { root, outside, pipeline };
}

function assertEscape(error: Error | null, uri: string): void {
  assert.ok(Errors.SINK_PATH_ESCAPE.is(error), `${uri}: expected ${Errors.SINK_PATH_ESCAPE.code}, got ${String(error)}`);
}

describe("directories are made inside the root, level by level", () => {
  test("a symlinked parent leading outside is refused before any directory is made there (async and sync)", async () => {
    const root = await tempDir("root");
    const outside = await tempDir("outside");
    await symlink(outside, join(root, "link"));
    await assert.rejects(makeDirectoryInsideRoot(root, join(root, "link", "a", "b"), { uri: "t" }), (err: unknown) => Errors.SINK_PATH_ESCAPE.is(err));
    assert.throws(
      () => makeDirectoryInsideRootSync(root, join(root, "link", "c"), { uri: "t" }),
      (err: unknown) => Errors.SINK_PATH_ESCAPE.is(err),
    );
    await assert.rejects(makeDirectoryInsideRoot(root, join(root, "..", "sibling"), { uri: "t" }), (err: unknown) => Errors.SINK_PATH_ESCAPE.is(err));
    assert.deepEqual(await tree(outside), [], "nothing was made outside");
  });

  test("a symlink that stays inside the root is followed; missing levels are made", async () => {
    const root = await tempDir("root");
    await mkdir(join(root, "real"));
    await symlink(join(root, "real"), join(root, "alias"));
    const made = await makeDirectoryInsideRoot(root, join(root, "alias", "x", "y"), { uri: "t" });
    assert.ok(made.endsWith(join("real", "x", "y")), made);
    assert.deepEqual(await tree(join(root, "real")), ["x", join("x", "y")]);
  });
});

describe("the Parquet sink", () => {
  test("URIs that leave the root, lexically or through a symlinked parent, are refused before any directory is made outside", async () => {
    const { root, outside, pipeline } = await parquetWorkspace();
    await symlink(outside, join(root, "link"));
    const parent = await tempDir("parent");
    await symlink(parent, join(root, "up"));
    for (const uri of ["parquet://../../x.parquet", "parquet://link/a/b/deep.parquet", "parquet://link/topic", "parquet://up/../../y/z.parquet"]) {
      const outcome = await runJob(pipeline, makeJob({ sinks: [sinkSpec("t", uri)] }), [batchOf("t", sampleTable(2))]);
      assert.equal(outcome.status, "FAILED", uri);
      assertEscape(outcome.error, uri);
    }
    await pipeline.shutdown();
    assert.deepEqual(await tree(outside), [], "no directory or file outside the root");
    assert.deepEqual(await tree(parent), []);
  });

  for (const how of ["moved out and replaced by a symlink to it", "replaced by a symlink to an empty directory outside"] as const) {
    test(`the topic directory ${how} between write and commit: refused (${Errors.SINK_PATH_ESCAPE.code}), nothing published outside`, async () => {
      const { root, outside, pipeline } = await parquetWorkspace();
      const uri = "parquet://sales/2024.parquet";
      const job = makeJob({ sinks: [sinkSpec("sales", uri, "replace")], jobId: 7n });
      const outcome = await runJob(pipeline, job, async (publish) => {
        await publish(batchOf("sales", sampleTable(50)));
        // The staging file exists now; the plugin swaps the directory before the commit.
        if (how === "moved out and replaced by a symlink to it") await rename(join(root, "sales"), join(outside, "sales"));
        else {
          await rm(join(root, "sales"), { recursive: true });
          await mkdir(join(outside, "sales"));
        }
        await symlink(join(outside, "sales"), join(root, "sales"));
        await publish(batchOf("sales", sampleTable(50, 50)));
      });
      await pipeline.shutdown();
      assert.equal(outcome.status, "FAILED");
      assertEscape(outcome.error, uri);
      assert.deepEqual(outcome.artifacts, []);
      const names = await readdir(join(outside, "sales"));
      assert.ok(!names.includes("2024.parquet"), `published outside: ${names.join(", ")}`);
      // What the plugin moved out is the only thing there: the sink neither wrote a final file nor deleted across the symlink.
      assert.deepEqual(names, how === "moved out and replaced by a symlink to it" ? [basename(stagingPathFor(join(root, "sales", "2024.parquet"), 7n))] : []);
    });
  }

  test("a directory an earlier job verified, then swapped for a symlink out of the root, is refused at the next job's start, before its plugin runs (sinks/directories.ts)", async () => {
    const { root, outside, pipeline } = await parquetWorkspace();
    const uri = "parquet://sales/deep/part.parquet";
    const first = await runJob(pipeline, makeJob({ sinks: [sinkSpec("sales", uri)], jobId: 1n }), [batchOf("sales", sampleTable(5))]);
    assert.equal(first.status, "SUCCESS", String(first.error));
    // Each level in turn: the directory itself, then its parent.
    for (const [n, level] of [join("sales", "deep"), "sales"].entries()) {
      await rename(join(root, level), join(outside, `moved-${n}`));
      await mkdir(join(outside, `target-${n}`));
      await symlink(join(outside, `target-${n}`), join(root, level));
      let ran = false;
      const outcome = await runJob(pipeline, makeJob({ sinks: [sinkSpec("sales", uri)], jobId: BigInt(2 + n) }), async (publish) => {
        ran = true;
        await publish(batchOf("sales", sampleTable(5)));
      });
      assert.equal(outcome.status, "FAILED", level);
      assertEscape(outcome.error, uri);
      assert.equal(ran, false, `${level}: the plugin ran although its sink's directory leads outside the root`);
      assert.deepEqual(await tree(join(outside, `target-${n}`)), [], `${level}: something was made outside the root`);
      await rm(join(root, level));
      await rename(join(outside, `moved-${n}`), join(root, level));
    }
    // Put back as it was, and then removed: the next job makes it again.
    const again = await runJob(pipeline, makeJob({ sinks: [sinkSpec("sales", uri)], jobId: 4n }), [batchOf("sales", sampleTable(5))]);
    assert.equal(again.status, "SUCCESS", String(again.error));
    await rm(join(root, "sales"), { recursive: true });
    const remade = await runJob(pipeline, makeJob({ sinks: [sinkSpec("sales", uri)], jobId: 5n }), [batchOf("sales", sampleTable(5))]);
    assert.equal(remade.status, "SUCCESS", String(remade.error));
    assert.deepEqual(await readdir(join(root, "sales", "deep")), ["part_5.parquet"]);
    // A level swapped for a symlink that stays inside the root is followed, as the walk follows it.
    await rename(join(root, "sales"), join(root, "sales-real"));
    await symlink(join(root, "sales-real"), join(root, "sales"));
    const inside = await runJob(pipeline, makeJob({ sinks: [sinkSpec("sales", uri)], jobId: 6n }), [batchOf("sales", sampleTable(5))]);
    assert.equal(inside.status, "SUCCESS", String(inside.error));
    assert.deepEqual((await readdir(join(root, "sales-real", "deep"))).sort(), ["part_5.parquet", "part_6.parquet"]);
    await pipeline.shutdown();
  });

  test("a symlink planted at the staging name is replaced, never written through", async () => {
    const { root, outside, pipeline } = await parquetWorkspace();
    const victim = join(outside, "victim.txt");
    await writeFile(victim, "keep me");
    await mkdir(join(root, "out"));
    const job = makeJob({ sinks: [sinkSpec("t", "parquet://out/t.parquet", "replace")], jobId: 9n });
    await symlink(victim, stagingPathFor(join(root, "out", "t.parquet"), 9n));
    const outcome = await runJob(pipeline, job, [batchOf("t", sampleTable(10))]);
    await pipeline.shutdown();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.equal(await readFile(victim, "utf8"), "keep me");
    assert.deepEqual(await readdir(join(root, "out")), ["t.parquet"]);
  });
});

describe("the run's promotion into --output", () => {
  function promotion(from: string, to: string) {
    return {
      input: "/data/in.csv",
      moves: [{ from, to }],
      removals: [],
      record: { size: 1, mtimeNs: "1", contentSha256: "0".repeat(64), fileVersionId: "1", recipe: "r", jobId: "1" },
      outputs: [],
    };
  }

  test("a target directory that is a symlink out of the root is refused before the intent is recorded; nothing moves outside", async () => {
    const root = await tempDir("output");
    const outside = await tempDir("outside");
    const staging = await tempDir("staging");
    await symlink(outside, join(root, "sales"));
    await writeFile(join(staging, "f.parquet"), "data");
    const state = RunState.open(root);
    try {
      assert.throws(
        () => state.promote(promotion(join(staging, "f.parquet"), join("sales", "deep", "f.parquet"))),
        (err: unknown) => Errors.SINK_PATH_ESCAPE.is(err),
      );
      assert.throws(
        () => state.promote(promotion(join(staging, "f.parquet"), join("sales", "f.parquet"))),
        (err: unknown) => Errors.SINK_PATH_ESCAPE.is(err),
      );
    } finally {
      state.close();
    }
    assert.deepEqual(await tree(outside), []);
    assert.deepEqual(await readdir(staging), ["f.parquet"], "the staged file stays where it was");
    // Nothing half done is left for the next run to redo.
    const reopened = RunState.open(root);
    assert.equal(reopened.recovered, 0);
    reopened.close();
  });
});
