/**
 * The schemas that are the single source of wire payloads, the config file and sink
 * options: each protocol vector passes its payload schema, bad payloads are refused with
 * the field named; a sink's declared options are typed in create(), set from the config
 * and from a URI's query; and the config file and a parquet:// URI agree on every value
 * (the test that fails when they drift apart again).
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { expectTypeOf } from "expect-type";
import * as v from "valibot";
import { validateConfig } from "../core/config/loader.js";
import { CasparianError, Errors } from "../core/kernel/errors.js";
import { packageRoot } from "../core/kernel/paths.js";
import { parseJson, validatePayload } from "../core/protocol/codec.js";
import { type DispatchCommand, type JobReceipt, Opcode, PAYLOAD_SCHEMAS } from "../core/protocol/messages.js";
import { loadSinkPlugins } from "../core/pipeline/sink-loader.js";
import { checkSinkPlan } from "../core/worker/sink-preflight.js";
import { defineSink, type SinkContext } from "../sinks/api.js";
import { checkSinkOptions, queryName, targetOptions } from "../sinks/options.js";
import { parquetOptions } from "../sinks/parquet-settings.js";
import { parseSinkUri } from "../sinks/uri.js";
import { batchOf, sampleTable } from "./helpers/arrow.js";
import { makeJob, runJob, scriptedPipeline, sinkSpec } from "./helpers/pipeline.js";
import { loadVectors } from "./helpers/sentinel.js";

const roots: string[] = [];
after(() => Promise.all(roots.map((root) => rm(root, { recursive: true, force: true }))));
async function tempRoot(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), "casparian-schemas-"));
  roots.push(root);
  return root;
}

describe("wire payload schemas", () => {
  test("every vector's payload passes its opcode's schema; every header-only vector has no schema", () => {
    const vectors = loadVectors();
    assert.ok(vectors.length >= 10);
    for (const vector of vectors) {
      const opcode = Buffer.from(vector.header_hex, "hex")[1]! as Opcode;
      const schema = PAYLOAD_SCHEMAS[opcode];
      if (vector.payload_utf8 === null || vector.payload_utf8 === "") {
        assert.equal(schema, null, vector.name);
        continue;
      }
      assert.ok(schema !== null, vector.name);
      const result = v.safeParse(schema, parseJson(vector.payload_utf8));
      assert.ok(result.success, `${vector.name}: ${JSON.stringify(result.issues?.map((issue) => issue.message))}`);
    }
  });

  test("ids are bigint however the JSON spelled them; metrics keep numbers and bigints as they are", () => {
    const dispatch = validatePayload(Opcode.DISPATCH, { plugin_name: "p", file_path: "/x", sinks: [], file_version_id: 7, env_hash: "h", source_code: "" });
    assert.equal(dispatch.file_version_id, 7n);
    assert.equal(validatePayload(Opcode.HEARTBEAT, { status: "BUSY", current_job_id: 2n ** 64n - 1n }).current_job_id, 2n ** 64n - 1n);
    assert.deepEqual(validatePayload(Opcode.CONCLUDE, { status: "SUCCESS", metrics: { a: 1, b: 2n ** 60n } }).metrics, { a: 1, b: 2n ** 60n });
    expectTypeOf<DispatchCommand["file_version_id"]>().toEqualTypeOf<bigint>();
    expectTypeOf<DispatchCommand["plugin_config"]>().toEqualTypeOf<string | undefined>();
    expectTypeOf<JobReceipt["metrics"]>().toEqualTypeOf<Record<string, number | bigint>>();
  });

  test("bad payloads: every problem, each with its field path and what was given", () => {
    const cases: Array<[Opcode, unknown, RegExp[]]> = [
      [Opcode.IDENTIFY, { capabilities: "*" }, [/capabilities: expected an array, got "\*"/]],
      [
        Opcode.IDENTIFY,
        { capabilities: ["*", 3], worker_id: 5 },
        [/capabilities\[1\]: expected a string, got number 3/, /worker_id: expected a string, got number 5/],
      ],
      [
        Opcode.DISPATCH,
        { file_path: "/x", file_version_id: 1, env_hash: "h", source_code: "", sinks: [{ topic: "t", uri: "u", mode: "upsert" }, 4] },
        [
          /plugin_name: required field is missing/,
          /sinks\[0\]\.mode: expected one of "append", "replace", "error", got "upsert"/,
          /sinks\[1\]: expected a JSON object, got number 4/,
        ],
      ],
      [Opcode.DISPATCH, [], [/^invalid DISPATCH payload: payload: expected a JSON object, got an array$/]],
      [
        Opcode.HEARTBEAT,
        { status: "ASLEEP", current_job_id: 1.5 },
        [/status: expected one of "IDLE", "BUSY", got "ASLEEP"/, /current_job_id: expected an integer, got number 1.5/],
      ],
      [
        Opcode.CONCLUDE,
        { status: "SUCCESS", metrics: { rows: "3" }, artifacts: [{ topic: "t" }] },
        [/metrics\.rows: expected an integer, got "3"/, /artifacts\[0\]\.uri: required field is missing/],
      ],
      [Opcode.PREPARE_ENV, { env_hash: "h", lockfile_content: null }, [/lockfile_content: expected a string, got null/]],
      [Opcode.ENV_READY, { env_hash: "h", interpreter_path: "/p", cached: "yes" }, [/cached: expected a boolean, got "yes"/]],
      [Opcode.DEPLOY, "x", [/payload: expected a JSON object, got "x"/]],
    ];
    for (const [opcode, payload, patterns] of cases) {
      assert.throws(
        () => validatePayload(opcode, payload, 9n),
        (err: unknown) => {
          assert.ok(Errors.PROTOCOL_BAD_PAYLOAD.is(err), String(err));
          for (const pattern of patterns) assert.match(err.message, pattern);
          assert.equal(err.context.jobId, 9n);
          assert.equal((err.context.issues as string[]).length, patterns.length, err.message);
          return true;
        },
      );
    }
  });
});

describe("sink options", () => {
  const recorded: unknown[] = [];
  const counter = defineSink({
    name: "counter",
    schemes: ["count"],
    options: v.object({
      label: v.optional(v.string(), "rows"),
      every: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1)), 1),
      loud: v.optional(v.boolean(), false),
    }),
    uriOptions: ["every", "loud"],
    create(target, context) {
      // The schema's output type, not a bag of unknowns.
      expectTypeOf(context.options).toEqualTypeOf<Readonly<{ label: string; every: number; loud: boolean }>>();
      expectTypeOf(context).toExtend<SinkContext<{ label: string; every: number; loud: boolean }>>();
      recorded.push({ uri: target.uri, ...context.options });
      return { write() {}, prepare() {}, commit: () => [], abort() {} };
    },
  });

  test("create() gets the schema's output: config options, defaults, and a URI's query converted to numbers and booleans", async () => {
    recorded.length = 0;
    const root = await tempRoot();
    const sinks = [{ plugin: counter, options: { label: "orders" } }];
    const pipeline = scriptedPipeline({ outputRoot: root, sinks });
    const job = makeJob({ sinks: [sinkSpec("a", "count://a"), sinkSpec("b", "count://b?every=5&loud=true")] });
    const outcome = await runJob(pipeline, job, [batchOf("a", sampleTable(2)), batchOf("b", sampleTable(2))]);
    await pipeline.shutdown();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.deepEqual(recorded, [
      { uri: "count://a", label: "orders", every: 1, loud: false },
      { uri: "count://b?every=5&loud=true", label: "orders", every: 5, loud: true },
    ]);
  });

  test("a URI's query: values its schema refuses, options it may not set, unknown and repeated parameters are CSP_SINK_BAD_URI", () => {
    const cases: Array<[string, RegExp]> = [
      ["count://x?every=0", /every: expected a value >=1, got number 0/],
      ["count://x?every=many", /every: expected a number, got "many"/],
      ["count://x?loud=yes", /loud: expected true or false, got "yes"/],
      ["count://x?label=x", /unknown parameter "label" \(known: every, loud\)/],
      ["count://x?every=1&every=2", /parameter "every" is given more than once/],
    ];
    for (const [uri, pattern] of cases) {
      assert.throws(
        () => targetOptions(counter, {}, { uri, parsed: parseSinkUri(uri) }, 3n),
        (err: unknown) => {
          assert.ok(Errors.SINK_BAD_URI.is(err), String(err));
          assert.match(err.message, pattern);
          assert.equal(err.context.jobId, 3n);
          return true;
        },
      );
    }
  });

  test("config options are checked once, at registration: bad value, unknown key with a did-you-mean", () => {
    const label = '"counter" (sinks[0] ./counter.ts)';
    assert.throws(
      () => checkSinkOptions(counter, { every: "2" }, label),
      (err: unknown) =>
        Errors.SINK_BAD_OPTIONS.is(err) &&
        /^invalid options for sink plugin "counter" \(sinks\[0\] \.\/counter\.ts\): every: expected a number, got "2"$/.test(err.message),
    );
    assert.throws(
      () => checkSinkOptions(counter, { lable: "x" }, label),
      (err: unknown) => Errors.SINK_BAD_OPTIONS.is(err) && /lable: unknown key/.test(err.message) && /did you mean "label"/.test(err.hint ?? ""),
    );
    assert.deepEqual(checkSinkOptions(counter, {}, label), { label: "rows", every: 1, loud: false });
    assert.equal(queryName("rowGroupSize"), "row_group_size");
  });
});

describe("the config file and a parquet:// URI agree (one schema)", () => {
  // Every value either path has ever treated differently, and neighbours of each.
  const compressions = ["snappy", "zstd", "gzip", "lz4", "lz4_raw", "brotli", "uncompressed", "none", "NONE", "Zstd", "lzma", "zip", ""];
  const rowGroupSizes: Array<[number | string, string]> = [
    [1, "1"],
    [100, "100"],
    [0, "0"],
    [-5, "-5"],
    [1.5, "1.5"],
    [2 ** 53, String(2 ** 53)],
    ["many", "many"],
  ];

  async function throughConfig(parquet: Record<string, unknown>): Promise<unknown> {
    try {
      validateConfig({ parquet }, "/cfg/casparian.config.ts");
      const [bundled] = await loadSinkPlugins([], await tempRoot(), parquet);
      return checkSinkOptions(bundled!.plugin, bundled!.options, '"parquet"');
    } catch (err) {
      assert.ok(err instanceof CasparianError && (Errors.CONFIG_INVALID.is(err) || Errors.SINK_BAD_OPTIONS.is(err)), String(err));
      return "refused";
    }
  }

  async function throughUri(query: string): Promise<unknown> {
    const root = await tempRoot();
    const uri = `parquet://out/x.parquet?${query}`;
    try {
      // What `casparian validate` and `casparian run` check before any worker starts...
      await checkSinkPlan([{ topic: "t", uri, mode: "append", schema_def: null, label: uri }], { config: {}, configDir: root, outputRoot: root });
      // ...and what the sink then gets for that target.
      const [bundled] = await loadSinkPlugins([], root);
      return targetOptions(bundled!.plugin, bundled!.options, { uri, parsed: parseSinkUri(uri) });
    } catch (err) {
      assert.ok(Errors.SINK_BAD_URI.is(err), String(err));
      return "refused";
    }
  }

  test("compression: accepted by both with the same meaning, or refused by both", async () => {
    for (const compression of compressions) {
      const viaConfig = await throughConfig({ compression, encoderThreads: 0 });
      const viaUri = await throughUri(`compression=${encodeURIComponent(compression)}`);
      const pick = (options: unknown) => (options === "refused" ? options : (options as { compression: string }).compression);
      assert.equal(pick(viaConfig), pick(viaUri), `compression ${JSON.stringify(compression)}`);
    }
    // The drift the issue named: "none" means the same in both places now.
    assert.equal(((await throughConfig({ compression: "none" })) as { compression: string }).compression, "none");
  });

  test("rowGroupSize / row_group_size: accepted by both with the same value, or refused by both", async () => {
    for (const [inConfig, inUri] of rowGroupSizes) {
      const viaConfig = await throughConfig({ rowGroupSize: inConfig });
      const viaUri = await throughUri(`row_group_size=${encodeURIComponent(inUri)}`);
      const pick = (options: unknown) => (options === "refused" ? options : (options as { rowGroupSize: number }).rowGroupSize);
      assert.equal(pick(viaConfig), pick(viaUri), `rowGroupSize ${inConfig}`);
    }
  });

  test("the config checks parquet with the sink's own options schema", async () => {
    const config = await import("../core/config/config.js");
    assert.equal(config.configSchema.pipe[1].entries.parquet.wrapped, parquetOptions);
  });
});

describe("the README's sink example", () => {
  test("is examples/counter-sink.ts (which the examples tsconfig compiles), and its options come from config and URI", async () => {
    const readme = await readFile(join(packageRoot(), "README.md"), "utf8");
    const block = /```ts\n(\/\/ my-sink\.ts\n[\s\S]*?)```\n/.exec(readme)?.[1];
    const file = await readFile(join(packageRoot(), "examples", "counter-sink.ts"), "utf8");
    assert.equal(block, file.replace(/^\/\/ my-sink\.ts.*\n/, "// my-sink.ts\n"));

    const sinks = await loadSinkPlugins([{ use: "./examples/counter-sink.ts", options: { verbose: true } }], packageRoot(), { encoderThreads: 0 });
    await assert.rejects(
      loadSinkPlugins([{ use: "./examples/counter-sink.ts", options: { verbose: "yes" } }], packageRoot()),
      (err: unknown) => Errors.SINK_BAD_OPTIONS.is(err) && /"counter" .*verbose: expected true or false, got "yes"/.test(err.message),
    );
    const root = await tempRoot();
    const pipeline = scriptedPipeline({ outputRoot: root, sinks });
    const job = makeJob({ sinks: [sinkSpec("a", "count://a"), sinkSpec("b", "count://b?verbose=false")] });
    const outcome = await runJob(pipeline, job, [batchOf("a", sampleTable(2)), batchOf("b", sampleTable(3))]);
    await pipeline.shutdown();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.deepEqual(
      outcome.artifacts.map((a) => a.uri),
      ["count://a#rows=2", "count://b?verbose=false#rows=3"],
    );
  });
});
