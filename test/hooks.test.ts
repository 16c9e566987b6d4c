/**
 * Hook order and semantics, as the Pipeline fires them (core/pipeline/pipeline.ts):
 * the real runJob with the SinkManager and other taps on it; only the guest is scripted.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { pino } from "pino";
import { Errors } from "../core/kernel/errors.js";
import type { JobOutcome } from "../core/kernel/job.js";
import { Pipeline } from "../core/pipeline/pipeline.js";
import { Stage, type TapOnlyHooks } from "../hooks/index.js";
import { batchOf, capturingLogger, recordingSinkPlugin, sampleTable, type SinkEvent } from "./helpers/arrow.js";
import { makeJob, runJob, scriptedPipeline, sinkSpec } from "./helpers/pipeline.js";

const logger = pino({ level: "silent" });
const roots: string[] = [];
after(() => Promise.all(roots.map((r) => rm(r, { recursive: true, force: true }))));

async function tempRoot(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), "casparian-hooks-"));
  roots.push(root);
  return root;
}

const recording = (events: SinkEvent[], failOn?: Parameters<typeof recordingSinkPlugin>[0]["failOn"]) => [
  { plugin: recordingSinkPlugin({ events, failOn }), options: {} },
];

test("a job fires beforeDispatch → jobStart → onBatch* → prepareCommit → onConclude → afterConclude, and sinks follow open → write → prepare → commit", async () => {
  const events: SinkEvent[] = [];
  const pipeline = scriptedPipeline({ outputRoot: await tempRoot(), sinks: recording(events) });
  const observe = { name: "Observer", stage: Stage.OBSERVE };
  pipeline.hooks.beforeDispatch.tapPromise(observe, async (request) => {
    events.push("hook beforeDispatch");
    return request;
  });
  for (const name of ["jobStart", "prepareCommit"] as const) pipeline.hooks[name].tapPromise(observe, async () => void events.push(`hook ${name}`));
  pipeline.hooks.onBatch.tapPromise(observe, async (batch) => void events.push(`hook onBatch ${batch.topic}#${batch.index}`));
  pipeline.hooks.onConclude.tapPromise(observe, async (outcome) => void events.push(`hook onConclude ${outcome.status} artifacts=${outcome.artifacts.length}`));
  pipeline.hooks.afterConclude.tapPromise(observe, async (receipt) => void events.push(`hook afterConclude ${receipt.status}`));

  const job = makeJob({ sinks: [sinkSpec("a", "mem://a"), sinkSpec("b", "mem://b")] });
  const outcome = await runJob(pipeline, job, [batchOf("a", sampleTable(2), 0), batchOf("b", sampleTable(3), 0), batchOf("a", sampleTable(4), 1)]);

  assert.equal(outcome.status, "SUCCESS", String(outcome.error));
  assert.deepEqual(events, [
    "hook beforeDispatch",
    "create a",
    "open a",
    "create b",
    "open b",
    "hook jobStart",
    "write a#0",
    "hook onBatch a#0",
    "write b#0",
    "hook onBatch b#0",
    "write a#1",
    "hook onBatch a#1",
    "prepare a",
    "prepare b",
    "hook prepareCommit",
    // The observer taps at Stage.OBSERVE, after the sinks' Stage.COMMIT: it sees their artifacts.
    "commit a",
    "commit b",
    "hook onConclude SUCCESS artifacts=2",
    "hook afterConclude SUCCESS",
  ]);
  assert.deepEqual(outcome.artifacts, [
    { topic: "a", uri: "mem://a?rows=6" },
    { topic: "b", uri: "mem://b?rows=3" },
  ]);
  assert.equal(outcome.metrics["sink_rows.a"], 6);
  assert.equal(outcome.metrics["sink_rows.b"], 3);
  // Stage timings come from the interceptor, not from stopwatches in the runner.
  for (const key of ["dispatch_ms", "write_ms", "commit_ms", "duration_ms", "guest_ms"]) assert.equal(typeof outcome.metrics[key], "number", key);
});

test("onBatch is awaited: the guest's next batch waits for a slow sink (backpressure reaches the guest)", async () => {
  const pipeline = scriptedPipeline({ outputRoot: await tempRoot() });
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  let written = 0;
  pipeline.hooks.onBatch.tapPromise("SlowSink", async () => {
    await gate;
    written++;
  });
  let firstDelivered = false;
  const job = runJob(pipeline, makeJob({ sinks: [] }), async (publish) => {
    await publish(batchOf("t", sampleTable(1)));
    firstDelivered = true;
    await publish(batchOf("t", sampleTable(1), 1));
  });
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(firstDelivered, false);
  assert.equal(written, 0);
  release();
  assert.equal((await job).status, "SUCCESS");
  assert.equal(written, 2);
});

test("beforeDispatch runs first: taps rewrite the command in order (the sinks open what it says), a throw rejects the job", async () => {
  const events: SinkEvent[] = [];
  const pipeline = scriptedPipeline({ outputRoot: await tempRoot(), sinks: recording(events) });
  pipeline.hooks.beforeDispatch.tapPromise("AddAudit", async (request) => ({
    ...request,
    command: { ...request.command, sinks: [...request.command.sinks, sinkSpec("audit", "mem://audit")] },
  }));
  pipeline.hooks.beforeDispatch.tapPromise("Guard", async (request) => {
    if (request.command.pluginName === "forbidden") throw Errors.HOOK_REJECTED(["Guard", "plugin is not allowed here"]);
    return request;
  });
  const job = makeJob({ sinks: [sinkSpec("a", "mem://a")] });
  const outcome = await runJob(pipeline, job, []);
  assert.equal(outcome.status, "SUCCESS", String(outcome.error));
  assert.deepEqual(
    events.filter((e) => e.startsWith("open")),
    ["open a", "open audit"],
  );

  const rejected = await runJob(pipeline, { ...job, command: { ...job.command, pluginName: "forbidden" } }, []);
  assert.equal(rejected.status, "FAILED");
  assert.ok(Errors.HOOK_REJECTED.is(rejected.error) && /Guard/.test(rejected.error.message), String(rejected.error));
  assert.equal(rejected.error.context.tap, "Guard");
});

test("the environment is looked up after beforeDispatch: a rewritten envHash is used, and a guard rejects before ENV_NOT_PROVISIONED", async () => {
  const provisioned = "f".repeat(64);
  const asked: string[] = [];
  const envs = {
    acquire: async (envHash: string) => {
      asked.push(envHash);
      return envHash === provisioned ? { envHash, interpreterPath: "/venv/bin/python", release() {} } : null;
    },
  };
  let interpreter: string | null = null;
  const pipeline = new Pipeline({
    logger,
    outputRoot: await tempRoot(),
    workerId: "w",
    envs,
    runGuest: async ({ interpreterPath }) => {
      interpreter = interpreterPath;
      return { rows: 0, batches: 0, ipcBytes: 0, startupMs: 0, durationMs: 0, rowsByTopic: new Map(), guestMetrics: {} };
    },
  });
  pipeline.hooks.beforeDispatch.tapPromise({ name: "Pin", stage: Stage.GUARD }, async (request) => {
    if (request.command.pluginName === "denied") throw Errors.HOOK_REJECTED(["Pin", "not on this worker"]);
    return { ...request, command: { ...request.command, envHash: provisioned } };
  });
  const run = (plugin: string) =>
    pipeline.runJob({ jobId: 1n, command: { ...makeJob({ sinks: [] }).command, pluginName: plugin }, signal: new AbortController().signal, logger });

  const ok = await run("allowed");
  assert.equal(ok.status, "SUCCESS", ok.errorMessage ?? "");
  assert.equal(interpreter, "/venv/bin/python");
  assert.deepEqual(asked, [provisioned]);

  const denied = await run("denied");
  assert.equal(denied.status, "FAILED");
  assert.match(denied.errorMessage ?? "", /^CSP_HOOK_REJECTED/);
  assert.deepEqual(asked, [provisioned], "a rejected job never asks for its environment");
});

test("the guest failing skips prepareCommit; onConclude still runs with FAILED and sinks abort", async () => {
  const events: SinkEvent[] = [];
  const pipeline = scriptedPipeline({ outputRoot: await tempRoot(), sinks: recording(events) });
  let concluded: JobOutcome | null = null;
  pipeline.hooks.onConclude.tapPromise({ name: "Observer", stage: Stage.OBSERVE }, async (outcome) => void (concluded = outcome));
  const outcome = await runJob(pipeline, makeJob({ sinks: [sinkSpec("a", "mem://a")] }), [batchOf("a", sampleTable(1))], {
    guestFails: new Error("guest exited with 1"),
  });
  assert.equal(outcome.status, "FAILED");
  assert.equal(concluded, outcome);
  assert.deepEqual(events, ["create a", "open a", "write a#0", "abort a: guest exited with 1"]);
});

test("a quality gate on onConclude at the default stage vetoes the commit: the sinks abort, nothing is published", async () => {
  const events: SinkEvent[] = [];
  const pipeline = scriptedPipeline({ outputRoot: await tempRoot(), sinks: recording(events) });
  pipeline.hooks.onConclude.tapPromise("QualityGate", async (outcome) => {
    outcome.status = "FAILED";
    outcome.error = new Error("too few rows");
  });
  pipeline.hooks.onConclude.tapPromise("ThrowingGate", async () => {
    throw new Error("gate crashed");
  });
  const outcome = await runJob(pipeline, makeJob({ sinks: [sinkSpec("a", "mem://a")] }), [batchOf("a", sampleTable(1))]);
  assert.equal(outcome.status, "FAILED");
  assert.equal(outcome.error?.message, "too few rows");
  assert.deepEqual(outcome.artifacts, []);
  assert.deepEqual(events.slice(-2), ["prepare a", "abort a: too few rows"]);
});

test("an onConclude tap that throws fails the job and the sinks still abort (no staging left behind)", async () => {
  const events: SinkEvent[] = [];
  const { logger: captured, records } = capturingLogger();
  const pipeline = scriptedPipeline({ outputRoot: await tempRoot(), sinks: recording(events), logger: captured });
  pipeline.hooks.onConclude.tapPromise({ name: "Audit", stage: Stage.GUARD }, async () => {
    throw new Error("audit log unreachable");
  });
  const outcome = await runJob(pipeline, makeJob({ sinks: [sinkSpec("a", "mem://a")] }), [batchOf("a", sampleTable(1))]);
  assert.equal(outcome.status, "FAILED");
  assert.equal(outcome.error?.message, "audit log unreachable");
  assert.deepEqual(events.slice(-1), ["abort a: audit log unreachable"]);
  assert.ok(
    records.some((r) => r.hook === "onConclude" && r.tap === "Audit"),
    "the failing tap is named in the log",
  );
});

test("abort never overlaps a pending write: after an ABORT the sinks abort only once the write in flight has finished", async () => {
  const events: string[] = [];
  const pipeline = scriptedPipeline({ outputRoot: await tempRoot() });
  let finishWrite!: () => void;
  pipeline.hooks.onBatch.tapPromise("SlowSink", async () => {
    events.push("write started");
    await new Promise<void>((resolve) => (finishWrite = resolve));
    events.push("write finished");
  });
  pipeline.hooks.onConclude.tapPromise({ name: "SlowSink", stage: Stage.COMMIT }, async (outcome) => void events.push(`conclude ${outcome.status}`));
  const controller = new AbortController();
  // The guest side gives up as soon as the job is aborted, like the bridge does, while the write is still pending.
  const job = runJob(
    pipeline,
    makeJob({ sinks: [] }),
    (publish) =>
      new Promise<void>((resolve, reject) => {
        controller.signal.addEventListener("abort", () => reject(controller.signal.reason));
        publish(batchOf("t", sampleTable(1))).then(resolve, reject);
      }),
    { signal: controller.signal },
  );
  await new Promise((resolve) => setTimeout(resolve, 10));
  controller.abort(Errors.JOB_ABORTED(["sentinel"]));
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.deepEqual(events, ["write started"], "nothing concludes while the write is pending");
  finishWrite();
  const outcome = await job;
  assert.ok(Errors.JOB_ABORTED.is(outcome.error), String(outcome.error));
  assert.deepEqual(events, ["write started", "write finished", "conclude FAILED"]);
});

test("afterConclude, envReady and shutdown are parallel and settle: every tap runs to its end, each failure is logged by name", async () => {
  const { logger: captured, records } = capturingLogger();
  const pipeline = scriptedPipeline({ outputRoot: await tempRoot(), logger: captured });
  const ran: string[] = [];
  for (const hook of ["afterConclude", "shutdown"] as const) {
    pipeline.hooks[hook].tapPromise("Broken", async () => {
      ran.push(`${hook} broken`);
      throw new Error(`${hook} backend down`);
    });
    pipeline.hooks[hook].tapPromise("AlsoBroken", async () => {
      throw new Error(`${hook} second failure`);
    });
    pipeline.hooks[hook].tapPromise("Slow", async () => {
      await new Promise((resolve) => setTimeout(resolve, 30));
      ran.push(`${hook} slow`);
    });
  }
  const outcome = await runJob(pipeline, makeJob({ sinks: [] }), []);
  assert.equal(outcome.status, "SUCCESS", "an observer's failure never fails the job");
  assert.deepEqual(ran, ["afterConclude broken", "afterConclude slow"], "runJob resolves after the slowest afterConclude tap");
  await pipeline.shutdown();
  assert.deepEqual(ran.slice(2), ["shutdown broken", "shutdown slow"], "shutdown resolves after the slowest tap (the socket closes after it)");
  const failures = records.filter((r) => r.msg !== undefined && /failed \(logged only/.test(String(r.msg))).map((r) => `${r.hook} ${r.tap}`);
  assert.deepEqual(failures.sort(), ["afterConclude AlsoBroken", "afterConclude Broken", "shutdown AlsoBroken", "shutdown Broken"]);
});

test("a callback tap (tapAsync) is refused when it is registered, naming the plugin and the hook", async () => {
  const pipeline = scriptedPipeline({ outputRoot: await tempRoot() });
  const hook = pipeline.hooks.onBatch as unknown as { tapAsync(name: string, fn: (...args: unknown[]) => void): void };
  assert.throws(
    () => hook.tapAsync("OldStyle", () => undefined),
    (err: unknown) => Errors.HOOK_CALLBACK_TAP.is(err) && /OldStyle.*onBatch/.test(err.message),
  );
});

test("plugins get tap-only hooks: the TapOnlyHooks type has no call/promise", async () => {
  const pipeline = scriptedPipeline({ outputRoot: await tempRoot() });
  const seen: string[] = [];
  pipeline.use({
    name: "Typed",
    apply(hooks: TapOnlyHooks) {
      // @ts-expect-error a plugin may not fire a hook
      void hooks.onBatch.promise;
      hooks.shutdown.tapPromise("Typed", async () => void seen.push("shutdown"));
    },
  });
  // @ts-expect-error nor may anyone holding the pipeline
  void pipeline.hooks.shutdown.promise;
  await pipeline.shutdown();
  assert.deepEqual(seen, ["shutdown"]);
});

test("a successful job logs nothing at info from the pipeline (the worker's 'job concluded' is its one line); 'job started' is debug", async () => {
  const { logger: captured, records } = capturingLogger();
  const events: SinkEvent[] = [];
  const pipeline = scriptedPipeline({ outputRoot: await tempRoot(), sinks: recording(events), logger: captured });
  const outcome = await runJob(pipeline, makeJob({ sinks: [sinkSpec("a", "mem://a")], logger: captured }), [batchOf("a", sampleTable(2))]);
  assert.equal(outcome.status, "SUCCESS");
  assert.deepEqual(
    records.filter((r) => (r.level as number) >= 30).map((r) => r.msg),
    [],
  );
  assert.equal(records.find((r) => r.msg === "job started")?.level, 20);
});
