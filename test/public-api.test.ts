/**
 * The public API, held at both levels. At compile time (expect-type and
 * `@ts-expect-error`, checked by the tsc run of `npm test`): config and sink
 * typing, hook tap signatures, bigint job ids, and that the worker's machinery is
 * not reachable from the main entry. A `@ts-expect-error` whose line compiles
 * fails the build, so each one is an assertion too. At run time: the exact names
 * each entry exports, through the package's own "exports" map, as a user's
 * `import "casparian-flow"` resolves them.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { expectTypeOf } from "expect-type";
import * as api from "casparian-flow";
import {
  type Batch,
  type CasparianConfig,
  type DispatchRequest,
  defineConfig,
  defineSink,
  type ErrorCode,
  Errors,
  type JobCommand,
  type JobContext,
  type JobOutcome,
  type Receipt,
  type CommitOptions,
  type RecoverContext,
  type Sink,
  type SinkHandle,
  type SinkContext,
  type SinkPlugin,
  type SinkTarget,
  Stage,
  type TapOnlyHooks,
  type WorkerPlugin,
} from "casparian-flow";
import * as internals from "casparian-flow/internals";

// --- defineConfig --------------------------------------------------------------------

expectTypeOf(defineConfig({ output: "./out", bridge: { idleTimeout: 60 }, run: { workers: 2 } })).toEqualTypeOf<CasparianConfig>();
expectTypeOf(defineConfig(({ command }) => ({ logLevel: command === "run" ? "warn" : "info" }))).toBeFunction();
expectTypeOf(defineConfig(async () => ({ output: "./out" }))).toBeFunction();
// @ts-expect-error a misspelt key beside a right one is an error, not a silently ignored setting
defineConfig({ output: "./out", workerld: "w1" });
// @ts-expect-error and so is one in a nested section
defineConfig({ bridge: { idleTimeout: 60, jobTimeot: 600 } });
// @ts-expect-error logLevel is pino's level names only
defineConfig({ logLevel: "loud" });
// @ts-expect-error run.workers is a number
defineConfig({ run: { workers: "2" } });

// --- defineSink ----------------------------------------------------------------------

const jsonl = defineSink({
  name: "jsonl",
  schemes: ["jsonl"],
  create(target, context) {
    expectTypeOf(target).toEqualTypeOf<SinkTarget>();
    expectTypeOf(target.mode).toEqualTypeOf<"append" | "replace" | "error">();
    expectTypeOf(context).toEqualTypeOf<SinkContext>();
    expectTypeOf(context.job.jobId).toEqualTypeOf<bigint>();
    expectTypeOf(context.options).toExtend<Readonly<Record<string, unknown>>>();
    return {
      write(batch) {
        expectTypeOf(batch).toEqualTypeOf<Batch>();
      },
      prepare() {},
      commit: () => [{ topic: target.topic, uri: target.uri }],
      abort(reason) {
        expectTypeOf(reason).toEqualTypeOf<Error>();
      },
    };
  },
});
expectTypeOf(jsonl).toExtend<SinkPlugin>();
expectTypeOf(jsonl.name).toEqualTypeOf<string>();
expectTypeOf<Sink["commit"]>().returns.toEqualTypeOf<Promise<import("casparian-flow").Artifact[]> | import("casparian-flow").Artifact[]>();
// Sinks written before handles (async prepare returning nothing) still are sinks; prepare may return a JSON handle.
expectTypeOf<{ write(): void; prepare(): Promise<void>; commit(): []; abort(): void }>().toExtend<Sink>();
expectTypeOf<{ write(): void; prepare(): Promise<{ file: string }>; commit(options?: CommitOptions): []; abort(): void }>().toExtend<Sink>();
expectTypeOf<SinkPlugin["resolve"]>().toEqualTypeOf<
  ((handle: SinkHandle, decision: "rollback" | "finish", context: RecoverContext) => Promise<void> | void) | undefined
>();
// @ts-expect-error a sink without commit cannot keep the two-phase promise
defineSink({ name: "half", schemes: ["half"], create: () => ({ write() {}, prepare() {}, abort() {} }) });
// @ts-expect-error a plugin names the schemes it handles
defineSink({ name: "nameless", create: () => ({ write() {}, prepare() {}, commit: () => [], abort() {} }) });

// --- hooks ---------------------------------------------------------------------------

const plugin: WorkerPlugin = {
  name: "TypeCheck",
  apply(hooks) {
    expectTypeOf(hooks).toEqualTypeOf<TapOnlyHooks>();
    hooks.beforeDispatch.tapPromise({ name: "TypeCheck", stage: Stage.GUARD }, async (request) => {
      expectTypeOf(request).toEqualTypeOf<DispatchRequest>();
      return request;
    });
    hooks.onBatch.tapPromise("TypeCheck", async (batch, job) => {
      expectTypeOf(batch).toEqualTypeOf<Batch>();
      expectTypeOf(job).toEqualTypeOf<JobContext>();
    });
    hooks.onConclude.tap({ name: "TypeCheck", stage: Stage.COMMIT - 1 }, (outcome, job) => {
      expectTypeOf(outcome).toEqualTypeOf<JobOutcome>();
      expectTypeOf(job.command).toEqualTypeOf<JobCommand>();
      outcome.status = "FAILED";
      // @ts-expect-error a job ends SUCCESS or FAILED, nothing else
      outcome.status = "MAYBE";
    });
    hooks.afterConclude.tapPromise("TypeCheck", async (receipt) => {
      expectTypeOf(receipt).toEqualTypeOf<Receipt>();
    });
    // @ts-expect-error beforeDispatch is a waterfall: a tap returns the (possibly rewritten) request
    hooks.beforeDispatch.tapPromise("TypeCheck", async () => undefined);
    // @ts-expect-error onBatch taps get (batch, job), not the receipt
    hooks.onBatch.tapPromise("TypeCheck", async (batch: Receipt) => void batch);
    // @ts-expect-error plugins tap hooks, they never fire them
    void hooks.onBatch.promise;
    // @ts-expect-error nor call them synchronously
    void hooks.start.call;
  },
};
expectTypeOf(plugin.apply).parameter(0).toEqualTypeOf<TapOnlyHooks>();
expectTypeOf(Stage).toEqualTypeOf<{ readonly GUARD: -100; readonly SINK: 0; readonly COMMIT: 50; readonly OBSERVE: 100 }>();

// --- the job view: camelCase, u64 ids as bigint --------------------------------------

expectTypeOf<JobContext["jobId"]>().toEqualTypeOf<bigint>();
expectTypeOf<DispatchRequest["jobId"]>().toEqualTypeOf<bigint>();
expectTypeOf<JobCommand["fileVersionId"]>().toEqualTypeOf<bigint>();
expectTypeOf<JobCommand>().toHaveProperty("filePath").toEqualTypeOf<string>();
expectTypeOf<JobCommand>().toHaveProperty("envHash").toEqualTypeOf<string>();
expectTypeOf<JobCommand>().not.toHaveProperty("file_path");
expectTypeOf<JobCommand>().not.toHaveProperty("env_hash");

// --- errors --------------------------------------------------------------------------

expectTypeOf<"CSP_SINK_BAD_URI">().toExtend<ErrorCode>();
expectTypeOf<"CSP_NO_SUCH_ERROR">().not.toExtend<ErrorCode>();
expectTypeOf(Errors.SINK_BAD_URI(["x://", "no such scheme"]).describe()).toEqualTypeOf<string>();

// --- the main entry does not expose the machinery; internals does --------------------

expectTypeOf(api).not.toHaveProperty("Worker");
expectTypeOf(api).not.toHaveProperty("Pipeline");
expectTypeOf(api).not.toHaveProperty("encodeMessage");
expectTypeOf(api).not.toHaveProperty("runGuest");
expectTypeOf(api).not.toHaveProperty("createHooks");
// @ts-expect-error the wire's snake_case command is not public API
export type NotPublic = import("casparian-flow").DispatchCommand;
expectTypeOf(internals).toHaveProperty("Worker");
expectTypeOf<internals.DispatchCommand>().toHaveProperty("env_hash");

// --- at run time ---------------------------------------------------------------------

const PUBLIC_VALUES = [
  "CasparianError",
  "Errors",
  "Stage",
  "TopicSchema",
  "assertInsideRoot",
  "assertTargetFree",
  "backupPathFor",
  "castTable",
  "dataReader",
  "decimalText",
  "defineConfig",
  "defineSink",
  "epochTicks",
  "exactReader",
  "finalPathFor",
  "fsyncDirectory",
  "isProcessAlive",
  "isPublishHandle",
  "makeDirectoryInsideRoot",
  "publishHandle",
  "publishStaged",
  "removeIfPresent",
  "removeStaleStaging",
  "resolveInsideRoot",
  "resolvePublished",
  "stagingPathFor",
  "unifySchemas",
  "v",
  "widenType",
];

test("the main entry exports exactly the public names", async () => {
  const loaded = await import("casparian-flow");
  assert.deepEqual(Object.keys(loaded).sort(), PUBLIC_VALUES);
});

test("casparian-flow/internals resolves through the exports map and holds the worker's machinery", async () => {
  const loaded = await import("casparian-flow/internals");
  for (const name of [
    "Worker",
    "Pipeline",
    "createHooks",
    "loadConfig",
    "EnvManager",
    "runGuest",
    "encodeMessage",
    "decodeMessage",
    "parquetSink",
    "parseSinkUri",
  ]) {
    assert.equal(typeof (loaded as Record<string, unknown>)[name], "function", name);
  }
  for (const name of Object.keys(loaded)) assert.ok(!PUBLIC_VALUES.includes(name), `${name} is public: it belongs in the main entry only`);
});

test("every catalogue code is CSP_ + its entry's name, as the ErrorCode type says", () => {
  for (const [name, factory] of Object.entries(Errors)) assert.equal(factory.code, `CSP_${name}`);
});

test("defineConfig and defineSink return what they are given", () => {
  const config = { output: "./out" };
  assert.equal(defineConfig(config), config);
  assert.equal(defineSink(jsonl), jsonl);
});
