/**
 * Hook order and semantics: createHooks() fired in the JobRunner's order, with the
 * SinkManager and other taps on them.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { pino } from "pino";
import { Errors } from "../core/kernel/errors.js";
import type { JobOutcome } from "../core/kernel/job.js";
import { createHooks, Stage, type DispatchRequest } from "../hooks/index.js";
import { SinkManager } from "../core/pipeline/sink-manager.js";
import { batchOf, driveJob, makeJob, recordingSinkPlugin, sampleTable, sinkConfig, type SinkEvent } from "./helpers/arrow.js";

const logger = pino({ level: "silent" });
const roots: string[] = [];
after(() => Promise.all(roots.map((r) => rm(r, { recursive: true, force: true }))));

async function tempRoot(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), "casparian-hooks-"));
  roots.push(root);
  return root;
}

test("a job fires jobStart → onBatch* → prepareCommit → onConclude, and sinks follow open → write → prepare → commit", async () => {
  const root = await tempRoot();
  const events: SinkEvent[] = [];
  const hooks = createHooks();
  new SinkManager({ plugins: [{ plugin: recordingSinkPlugin({ events }), options: {} }], logger, outputRoot: root }).apply(hooks);
  for (const name of ["jobStart", "prepareCommit"] as const) {
    hooks[name].tapPromise({ name: "Observer", stage: Stage.OBSERVE }, async () => void events.push(`hook ${name}`));
  }
  hooks.onBatch.tapPromise({ name: "Observer", stage: Stage.OBSERVE }, async (batch) => void events.push(`hook onBatch ${batch.topic}#${batch.index}`));
  hooks.onConclude.tapPromise({ name: "Observer", stage: Stage.OBSERVE }, async (outcome) => void events.push(`hook onConclude ${outcome.status} artifacts=${outcome.artifacts.length}`));

  const job = makeJob({ outputRoot: root, sinks: [sinkConfig("a", "mem://a"), sinkConfig("b", "mem://b")] });
  const outcome = await driveJob(hooks, job, [batchOf("a", sampleTable(2), 0), batchOf("b", sampleTable(3), 0), batchOf("a", sampleTable(4), 1)]);

  assert.equal(outcome.status, "SUCCESS", String(outcome.error));
  assert.deepEqual(events, [
    "create a", "open a", "create b", "open b", "hook jobStart",
    "write a#0", "hook onBatch a#0",
    "write b#0", "hook onBatch b#0",
    "write a#1", "hook onBatch a#1",
    "prepare a", "prepare b", "hook prepareCommit",
    // The observer taps at Stage.OBSERVE, after the sinks: it sees their artifacts.
    "commit a", "commit b", "hook onConclude SUCCESS artifacts=2",
  ]);
  assert.deepEqual(outcome.artifacts, [{ topic: "a", uri: "mem://a?rows=6" }, { topic: "b", uri: "mem://b?rows=3" }]);
  assert.equal(outcome.metrics["sink_rows.a"], 6);
  assert.equal(outcome.metrics["sink_rows.b"], 3);
});

test("onBatch is awaited: the next batch waits for a slow sink (backpressure reaches the guest)", async () => {
  const hooks = createHooks();
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  let written = 0;
  hooks.onBatch.tapPromise("SlowSink", async () => {
    await gate;
    written++;
  });
  const job = makeJob({ outputRoot: await tempRoot(), sinks: [] });
  let settled = false;
  const delivery = hooks.onBatch.promise(batchOf("t", sampleTable(1)), job).then(() => (settled = true));
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(settled, false);
  assert.equal(written, 0);
  release();
  await delivery;
  assert.equal(written, 1);
});

test("beforeDispatch is a waterfall: taps rewrite the command in order, a throw rejects the job", async () => {
  const hooks = createHooks();
  hooks.beforeDispatch.tapPromise("AddAudit", async (request) => ({
    ...request,
    command: { ...request.command, sinks: [...request.command.sinks, sinkConfig("audit", "mem://audit")] },
  }));
  hooks.beforeDispatch.tapPromise("Guard", async (request) => {
    if (request.command.plugin_name === "forbidden") throw Errors.HOOK_REJECTED(["Guard", "plugin is not allowed here"]);
    return request;
  });
  const job = makeJob({ outputRoot: await tempRoot(), sinks: [sinkConfig("a", "mem://a")] });
  const request: DispatchRequest = { jobId: job.jobId, workerId: job.workerId, command: job.command };
  const rewritten = await hooks.beforeDispatch.promise(request);
  assert.deepEqual(rewritten.command.sinks.map((s) => s.topic), ["a", "audit"]);

  const rejected = hooks.beforeDispatch.promise({ ...request, command: { ...job.command, plugin_name: "forbidden" } });
  await assert.rejects(rejected, (err: unknown) => Errors.HOOK_REJECTED.is(err) && /Guard/.test((err as Error).message));
});

test("the guest failing skips prepareCommit; onConclude still runs with FAILED and sinks abort", async () => {
  const events: SinkEvent[] = [];
  const hooks = createHooks();
  new SinkManager({ plugins: [{ plugin: recordingSinkPlugin({ events }), options: {} }], logger, outputRoot: await tempRoot() }).apply(hooks);
  let concluded: JobOutcome | null = null;
  hooks.onConclude.tapPromise({ name: "Observer", stage: Stage.OBSERVE }, async (outcome) => void (concluded = outcome));
  const job = makeJob({ outputRoot: "/unused", sinks: [sinkConfig("a", "mem://a")] });
  const outcome = await driveJob(hooks, job, [batchOf("a", sampleTable(1))], { guestFails: new Error("guest exited with 1") });
  assert.equal(outcome.status, "FAILED");
  assert.equal(concluded, outcome);
  assert.deepEqual(events, ["create a", "open a", "write a#0", "abort a: guest exited with 1"]);
});

test("afterConclude and shutdown are parallel: every tap runs even when one fails", async () => {
  const hooks = createHooks();
  const ran: string[] = [];
  hooks.afterConclude.tapPromise("Broken", async () => {
    ran.push("broken");
    throw new Error("metrics backend down");
  });
  hooks.afterConclude.tapPromise("Audit", async () => {
    await new Promise((resolve) => setTimeout(resolve, 5));
    ran.push("audit");
  });
  const job = makeJob({ outputRoot: await tempRoot(), sinks: [] });
  await assert.rejects(hooks.afterConclude.promise({ status: "SUCCESS", metrics: {}, artifacts: [], error_message: null }, job), /metrics backend down/);
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.deepEqual(ran.sort(), ["audit", "broken"]);
});

test("plugins get tap-only hooks: the TapOnlyHooks type has no call/promise", () => {
  const hooks = createHooks();
  const seen: string[] = [];
  const plugin = {
    name: "Typed",
    apply(tapOnly: import("../hooks/index.js").TapOnlyHooks) {
      // @ts-expect-error a plugin may not fire a hook
      void tapOnly.onBatch.promise;
      tapOnly.shutdown.tapPromise("Typed", async () => void seen.push("shutdown"));
    },
  };
  plugin.apply(hooks);
  return hooks.shutdown.promise({ workerId: "w", outputRoot: "/", logger }).then(() => assert.deepEqual(seen, ["shutdown"]));
});
