/**
 * Sink plugins found through config: a user project in a temporary directory with a
 * TypeScript sink (by path, with options) and a sink package (by name), loaded with
 * the real config loader, then run end to end; and the validation at registration.
 */
import assert from "node:assert/strict";
import { cp, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, describe, test } from "node:test";
import { pino } from "pino";
import { loadConfig } from "../core/config/loader.js";
import { Errors } from "../core/kernel/errors.js";
import { packageRoot } from "../core/kernel/paths.js";
import { defineSink } from "../sinks/api.js";
import { loadSinkPlugins } from "../core/pipeline/sink-loader.js";
import { batchOf, sampleTable } from "./helpers/arrow.js";
import { makeJob, runJob, scriptedPipeline, sinkSpec } from "./helpers/pipeline.js";

const logger = pino({ level: "silent" });
const roots: string[] = [];
after(() => Promise.all(roots.map((r) => rm(r, { recursive: true, force: true }))));

/** A temporary user project: the fixture files, casparian-flow installed (linked), and a sink package. */
async function userProject(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "casparian-project-"));
  roots.push(dir);
  await cp(join(packageRoot(), "test", "fixtures", "sinks-custom"), dir, { recursive: true });
  await mkdir(join(dir, "node_modules", "casparian-sink-upper"), { recursive: true });
  await symlink(packageRoot(), join(dir, "node_modules", "casparian-flow"), "dir");
  await writeFile(
    join(dir, "node_modules", "casparian-sink-upper", "package.json"),
    JSON.stringify({ name: "casparian-sink-upper", type: "module", exports: "./index.js" }),
  );
  await writeFile(
    join(dir, "node_modules", "casparian-sink-upper", "index.js"),
    `// A published sink package: a plain SinkPlugin object as default export.
import { appendFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
export default {
  name: "upper",
  schemes: ["upper"],
  create(target, { job }) {
    const path = join(job.outputRoot, target.parsed.location);
    const words = [];
    return {
      write(batch) { for (const row of batch.table) words.push(String(row.label).toUpperCase()); },
      prepare() {},
      async commit() { await mkdir(dirname(path), { recursive: true }); await appendFile(path, words.join("\\n")); return [{ topic: target.topic, uri: "upper://" + path }]; },
      abort() {},
    };
  },
};
`,
  );
  return dir;
}

describe("sink plugins from config", () => {
  test("a TypeScript sink by path (with options) and a sink package by name, loaded from a config file, run end to end", async () => {
    const dir = await userProject();
    const { config, dir: configDir, filepath } = await loadConfig({ cwd: dir, command: "worker" });
    assert.equal(filepath, join(dir, "casparian.config.ts"));
    const plugins = await loadSinkPlugins(config.sinks, configDir, config.parquet);
    assert.deepEqual(
      plugins.map((p) => p.plugin.name),
      ["parquet", "csv", "upper"],
    );
    assert.deepEqual(plugins[1]!.options, { delimiter: ";" });

    const outputRoot = resolve(configDir, config.output!);
    await mkdir(outputRoot, { recursive: true });
    const pipeline = scriptedPipeline({ outputRoot, sinks: plugins, logger });
    const job = makeJob({
      sinks: [sinkSpec("rows", "csv://tables/rows.csv"), sinkSpec("words", "upper://words.txt"), sinkSpec("rows", "parquet://rows.parquet", "replace")],
    });
    const small = new (await import("apache-arrow")).Table({ label: sampleTable(3).getChild("label")! });
    const outcome = await runJob(pipeline, job, [batchOf("rows", sampleTable(2)), batchOf("words", small)]);
    await pipeline.shutdown();
    assert.equal(outcome.status, "SUCCESS", String(outcome.error));
    assert.deepEqual(
      outcome.artifacts.map((a) => a.uri),
      [`csv://${join(outputRoot, "tables/rows.csv")}`, `upper://${join(outputRoot, "words.txt")}`, `parquet://${join(outputRoot, "rows.parquet")}`],
    );
    const csv = await readFile(join(outputRoot, "tables", "rows.csv"), "utf8");
    assert.equal(csv.split("\n")[0], "ID;AMOUNT;LABEL;FLAG;TS");
    assert.equal(csv.split("\n").length, 4);
    assert.equal(await readFile(join(outputRoot, "words.txt"), "utf8"), "ZÜRICH #0\n東京 #1\nNAÏVE CAFÉ #2");
  });

  describe("validation at registration names what is wrong", () => {
    async function loadOne(source: string, entry: string | { use: string; options?: Record<string, unknown> } = "./sink.mjs") {
      const dir = await mkdtemp(join(tmpdir(), "casparian-badsink-"));
      roots.push(dir);
      await writeFile(join(dir, "sink.mjs"), source);
      await mkdir(join(dir, "node_modules"));
      await symlink(packageRoot(), join(dir, "node_modules", "casparian-flow"), "dir");
      return loadSinkPlugins([entry], dir);
    }
    const cases: Array<[string, string, RegExp]> = [
      ["a number", "export default 42;", /expected a sink plugin object, got number 42/],
      ["no name", "export default { schemes: ['x'], create() {} };", /name: required field is missing/],
      ["no schemes", "export default { name: 'x', schemes: [], create() {} };", /"x": schemes: expected a non-empty array of URI schemes, got an array/],
      [
        "a scheme with ://",
        "export default { name: 'x', schemes: ['jsonl://'], create() {} };",
        /schemes\[0\]: expected a lower-case URI scheme \(give "jsonl", not "jsonl:\/\/"\), got "jsonl:\/\/"/,
      ],
      ["no create", "export default { name: 'x', schemes: ['x'] };", /create: required field is missing/],
      [
        "recover not a function",
        "export default { name: 'x', schemes: ['x'], create() {}, recover: 1 };",
        /recover: expected a function when given, got number 1/,
      ],
      ["a throwing factory", "export default () => { throw new Error('missing API key'); };", /its factory threw: missing API key/],
      [
        "a scheme taken by the bundled sink",
        "export default { name: 'my-parquet', schemes: ['parquet'], create() {} };",
        /"my-parquet".*scheme "parquet" is already handled by sink plugin "parquet"/,
      ],
    ];
    for (const [what, source, expected] of cases) {
      test(what, async () => {
        await assert.rejects(loadOne(source), (err: unknown) => {
          assert.ok(Errors.SINK_INVALID.is(err), String(err));
          assert.match((err as Error).message, expected);
          assert.match((err as Error).message, /sinks\[0\]|my-parquet/);
          return true;
        });
      });
    }

    test("a module that cannot be found", async () => {
      await assert.rejects(
        loadOne("", "./nowhere.ts"),
        (err: unknown) => Errors.SINK_INVALID.is(err) && /cannot load module .*nowhere\.ts/.test((err as Error).message),
      );
      await assert.rejects(
        loadOne("", "casparian-sink-that-does-not-exist"),
        (err: unknown) => Errors.SINK_INVALID.is(err) && /"casparian-sink-that-does-not-exist"/.test((err as Error).message),
      );
    });

    test("two user plugins with one scheme", async () => {
      const a = defineSink({ name: "one", schemes: ["dup"], create: () => ({ write() {}, prepare() {}, commit: () => [], abort() {} }) });
      const b = { ...a, name: "two" };
      await assert.rejects(
        loadSinkPlugins([a, b], tmpdir()),
        (err: unknown) => Errors.SINK_INVALID.is(err) && /"two".*"dup".*"one"/.test((err as Error).message),
      );
    });

    test("a factory is called with no arguments; its options come through the schema it declares", async () => {
      const source = `import { v } from "casparian-flow";
export default (...args) => ({ name: "opt-" + args.length, schemes: ["opt"], options: v.object({ flavour: v.picklist(["mint", "lime"]) }), create() {} });`;
      const plugins = await loadOne(source, { use: "./sink.mjs", options: { flavour: "mint" } });
      assert.equal(plugins[1]!.plugin.name, "opt-0");
      assert.deepEqual(plugins[1]!.options, { flavour: "mint" });
    });

    test("bad options fail at load with CSP_SINK_BAD_OPTIONS naming the sink, the option, the value and a hint", async () => {
      const source = `import { v } from "casparian-flow";
export default { name: "flavoured", schemes: ["opt"], options: v.object({ flavour: v.picklist(["mint", "lime"]), scoops: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1))) }), create() {} };`;
      const cases: Array<[Record<string, unknown>, RegExp, RegExp]> = [
        [{ flavour: "tar" }, /flavour: expected one of "mint", "lime", got "tar"/, /the flavoured sink takes: flavour, scoops/],
        [{ flavour: "mint", scoops: 0 }, /scoops: expected a value >=1, got number 0/, /takes: flavour, scoops/],
        [{ flavour: "mint", scops: 2 }, /scops: unknown key/, /did you mean "scoops" instead of "scops"\?/],
        [{}, /flavour: required field is missing/, /takes: flavour, scoops/],
      ];
      for (const [options, message, hint] of cases) {
        await assert.rejects(loadOne(source, { use: "./sink.mjs", options }), (err: unknown) => {
          assert.ok(Errors.SINK_BAD_OPTIONS.is(err), String(err));
          assert.match(err.message, /^invalid options for sink plugin "flavoured" \(sinks\[0\] \.\/sink\.mjs\): /);
          assert.match(err.message, message);
          assert.match(err.hint ?? "", hint);
          return true;
        });
      }
    });

    test("options for a sink that declares none are refused, not ignored", async () => {
      await assert.rejects(
        loadOne("export default { name: 'plain', schemes: ['plain'], create() {} };", { use: "./sink.mjs", options: { verbose: true } }),
        (err: unknown) => {
          assert.ok(Errors.SINK_BAD_OPTIONS.is(err), String(err));
          assert.match(err.message, /"plain".*verbose: unknown key/);
          assert.match(err.hint ?? "", /takes no options \(it declares no options schema\)/);
          return true;
        },
      );
    });

    test("uriOptions must be options the schema declares", async () => {
      const source = `import { v } from "casparian-flow";
export default { name: "u", schemes: ["u"], options: v.object({ a: v.optional(v.string()) }), uriOptions: ["a", "b"], create() {} };`;
      await assert.rejects(
        loadOne(source),
        (err: unknown) => Errors.SINK_INVALID.is(err) && /uriOptions: expected names the options schema declares, got "b"/.test(err.message),
      );
    });
  });
});
