/**
 * The Batch lifetime contract end to end: a real guest, the real bridge host and the real
 * pipeline. When every consumer says it uses Batch.retain(), frame buffers are reused;
 * a batch a sink retained keeps its bytes while later frames arrive, and is detached once
 * released; a consumer that does not say so keeps every frame its own, as before.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Errors } from "../core/kernel/errors.js";
import type { Batch, JobCommand, Receipt } from "../core/kernel/job.js";
import { silentLogger } from "../core/kernel/logger.js";
import { Pipeline } from "../core/pipeline/pipeline.js";
import { SinkManager } from "../core/pipeline/sink-manager.js";
import { defineSink, type SinkPlugin } from "../sinks/api.js";
import { testEnvironment, type TestEnvironment } from "./helpers/pyenv.js";

const CHUNKS = 400;
/** Chunk i has three rows whose `chunk` column is i: every batch says which frame it must be. */
const PLUGIN = `
class Handler:
    def execute(self, file_path):
        for i in range(${CHUNKS}):
            yield {"chunk": [i, i, i], "label": [f"row-{i}-{j}" for j in range(3)]}
`;

let env: TestEnvironment;
let root: string;

before(async () => {
  env = await testEnvironment();
  root = await mkdtemp(join(tmpdir(), "casparian-batch-release-"));
});

after(async () => {
  await env?.dispose();
  if (root) await rm(root, { recursive: true, force: true });
});

interface Kept {
  batch: Batch;
  /** The batch's bytes when it was written, and its chunk number. */
  snapshot: Uint8Array;
  release: () => void;
}

/** Which batches did not hold their own frame's rows when a sink read them. */
function wrongRows(batch: Batch): string | null {
  const column = batch.table.getChild("chunk");
  const values = column === null ? [] : [...column].map(Number);
  return values.length === 3 && values.every((value) => value === batch.index) ? null : `batch ${batch.index} read ${JSON.stringify(values)}`;
}

/** Reads every batch inside write; keeps every `every`-th one (retained when `retains`) until the test looks at it. */
function testSink(scheme: string, opts: { usesRetain: boolean; keepEvery?: number; retains?: boolean; kept?: Kept[]; wrong: string[] }): SinkPlugin {
  return defineSink({
    name: `test-${scheme}`,
    schemes: [scheme],
    usesRetain: opts.usesRetain,
    create: () => ({
      write(batch: Batch) {
        const wrong = wrongRows(batch);
        if (wrong !== null) opts.wrong.push(wrong);
        if (opts.keepEvery !== undefined && batch.index % opts.keepEvery === 0) {
          opts.kept!.push({ batch, snapshot: Uint8Array.from(batch.ipc), release: opts.retains === true ? batch.retain() : () => undefined });
        }
      },
      prepare() {},
      commit: () => [],
      abort() {},
    }),
  });
}

async function runWith(plugins: SinkPlugin[], tap?: (pipeline: Pipeline) => void): Promise<Receipt> {
  const outputRoot = await mkdtemp(join(root, "out-"));
  const logger = silentLogger();
  const envs = { acquire: async (envHash: string) => ({ envHash, interpreterPath: env.interpreterPath, release: () => undefined }) };
  const pipeline = new Pipeline({ logger, outputRoot, workerId: "w", envs });
  pipeline.use(new SinkManager({ plugins: plugins.map((plugin) => ({ plugin, options: {} })), logger, outputRoot }));
  tap?.(pipeline);
  await pipeline.start();
  const command: JobCommand = {
    pluginName: "chunks",
    filePath: "/dev/null",
    sinks: plugins.map((plugin, i) => ({ topic: "output", uri: `${plugin.schemes[0]}://${i}`, mode: "append", schemaDef: null })),
    fileVersionId: 1n,
    envHash: "0".repeat(64),
    sourceCode: PLUGIN,
    artifactHash: null,
  };
  try {
    const receipt = await pipeline.runJob({ jobId: 1n, command, logger, signal: new AbortController().signal });
    assert.equal(receipt.status, "SUCCESS", receipt.errorMessage ?? "");
    assert.equal(receipt.metrics.batches, CHUNKS);
    return receipt;
  } finally {
    await pipeline.shutdown();
  }
}

function assertIntact(kept: Kept[]): void {
  for (const { batch, snapshot } of kept) {
    assert.deepEqual(batch.ipc, snapshot, `batch ${batch.index} changed while it was kept`);
    assert.equal(wrongRows(batch), null);
  }
}

describe("frame buffers and Batch.retain()", () => {
  test("every consumer uses retain(): frames are reused, a retained batch stays intact while later frames arrive, and is detached once released", async () => {
    const kept: Kept[] = [];
    const wrong: string[] = [];
    const receipt = await runWith([
      testSink("keep", { usesRetain: true, keepEvery: 50, retains: true, kept, wrong }),
      testSink("read", { usesRetain: true, wrong }),
    ]);
    assert.deepEqual(wrong, [], "every sink read its own batch's rows");
    const buffers = Number(receipt.metrics.frame_buffers);
    assert.equal(kept.length, CHUNKS / 50);
    // The retained frames, plus the one in flight (and one more at most, while a buffer goes back).
    assert.ok(buffers <= kept.length + 2, `${buffers} frame buffers for ${CHUNKS} batches: frames were not reused`);
    // Everything after each kept batch went through the pool: none of it landed in a retained frame.
    assertIntact(kept);
    for (const { batch, release } of kept) {
      release();
      assert.equal(batch.ipc.byteLength, 0, `batch ${batch.index}: released, its bytes are gone`);
      assert.throws(
        () => batch.table,
        (err: unknown) => Errors.BATCH_RELEASED.is(err),
      );
    }
  });

  test("a sink plugin without usesRetain keeps every batch it got: no frame is reused under it", async () => {
    const kept: Kept[] = [];
    const wrong: string[] = [];
    const receipt = await runWith([testSink("keep", { usesRetain: false, keepEvery: 1, kept, wrong }), testSink("read", { usesRetain: true, wrong })]);
    assert.deepEqual(wrong, []);
    assert.equal(receipt.metrics.frame_buffers, CHUNKS, "a buffer per frame");
    assert.equal(kept.length, CHUNKS);
    assertIntact(kept);
  });

  test("an onBatch tap without usesRetain turns reuse off for the job", async () => {
    const kept: Kept[] = [];
    const wrong: string[] = [];
    const receipt = await runWith([testSink("read", { usesRetain: true, wrong })], (pipeline) =>
      pipeline.hooks.onBatch.tapPromise(
        "Collector",
        async (batch) => void kept.push({ batch, snapshot: Uint8Array.from(batch.ipc), release: () => undefined }),
      ),
    );
    assert.deepEqual(wrong, []);
    assert.equal(receipt.metrics.frame_buffers, CHUNKS);
    assertIntact(kept);
  });
});
