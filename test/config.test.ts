import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cp, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { promisify } from "node:util";
import { loadConfig, validateConfig } from "../core/config/loader.js";
import { Errors } from "../core/kernel/errors.js";
import { packageRoot } from "../core/kernel/paths.js";
import { rejectsWith } from "./helpers/assert.js";

const fixture = (name: string) => join(packageRoot(), "test", "fixtures", name);

describe("config discovery (cosmiconfig)", () => {
  test("a TypeScript config that imports another TypeScript file (a user sink) loads", async () => {
    const loaded = await loadConfig({ cwd: fixture("config-ts-imports"), command: "worker" });
    assert.equal(loaded.filepath, join(fixture("config-ts-imports"), "casparian.config.ts"));
    assert.equal(loaded.dir, fixture("config-ts-imports"));
    assert.equal(loaded.config.workerId, "from-ts-memory");
    assert.equal(loaded.config.heartbeatInterval, 2);
    const sink = loaded.config.sinks?.[0];
    assert.ok(sink && typeof sink === "object" && "create" in sink, "the imported sink plugin object is in the config");
    assert.equal(sink.name, "memory-fixture");
    assert.deepEqual(sink.schemes, ["memory"]);
  });

  test(".casparianrc.json, .casparianrc.yaml and package.json#casparian are found", async () => {
    const json = await loadConfig({ cwd: fixture("config-rc-json"), command: "worker" });
    assert.equal(json.config.connect, "tcp://127.0.0.1:6000");
    assert.equal(json.config.environments?.maxEnvs, 3);
    const yaml = await loadConfig({ cwd: fixture("config-rc-yaml"), command: "worker" });
    assert.deepEqual(yaml.config.parquet, { compression: "zstd", rowGroupSize: 1000 });
    assert.equal(yaml.config.heartbeatInterval, 0.5);
    const pkg = await loadConfig({ cwd: fixture("config-package"), command: "worker" });
    assert.equal(pkg.filepath, join(fixture("config-package"), "package.json"));
    assert.equal(pkg.config.workerId, "from-package-json");
  });

  test("a config may export a function of the command", async () => {
    const worker = await loadConfig({ cwd: fixture("config-function"), command: "worker" });
    assert.deepEqual(worker.config, { workerId: "fn-worker", grace: 7 });
    const run = await loadConfig({ cwd: fixture("config-function"), command: "run" });
    assert.deepEqual(run.config, { workerId: "fn-run", grace: 0 });
  });

  test("--config loads exactly that file, even beside another config", async () => {
    const loaded = await loadConfig({ explicitPath: "worker.casparian.json", cwd: fixture("config-explicit"), command: "worker" });
    assert.equal(loaded.filepath, join(fixture("config-explicit"), "worker.casparian.json"));
    assert.equal(loaded.config.workerId, "explicit-json");
    const searched = await loadConfig({ cwd: fixture("config-explicit"), command: "worker" });
    assert.equal(searched.config.workerId, "searched");
  });

  test("search walks up to the project root (the first directory with package.json)", async () => {
    const dir = await mkdtemp(join(tmpdir(), "casparian-config-"));
    try {
      await cp(fixture("config-package"), dir, { recursive: true });
      const nested = join(dir, "a", "b");
      await cp(fixture("config-rc-yaml"), join(dir, "unrelated"), { recursive: true });
      await mkdir(nested, { recursive: true });
      const loaded = await loadConfig({ cwd: nested, command: "worker" });
      assert.equal(loaded.filepath, join(dir, "package.json"));
      assert.equal(loaded.dir, dir);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("no config file anywhere: empty config, relative paths against cwd", async () => {
    const dir = await mkdtemp(join(tmpdir(), "casparian-config-"));
    try {
      await writeFile(join(dir, "package.json"), '{"name":"no-config"}');
      const loaded = await loadConfig({ cwd: dir, command: "worker" });
      assert.deepEqual(loaded, { config: {}, filepath: null, dir });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("a reload sees edits to a TS config (no module cache)", async () => {
    const dir = await mkdtemp(join(tmpdir(), "casparian-config-"));
    try {
      const file = join(dir, "casparian.config.ts");
      await writeFile(join(dir, "package.json"), '{"name":"reload","type":"module"}');
      await writeFile(file, "export default { grace: 1 as number };\n");
      assert.equal((await loadConfig({ cwd: dir, command: "worker" })).config.grace, 1);
      await writeFile(file, "export default { grace: 2 as number };\n");
      assert.equal((await loadConfig({ cwd: dir, command: "worker" })).config.grace, 2);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("config errors", () => {
  test("invalid values and unknown keys: file, key path and expected value are named", async () => {
    const err = await rejectsWith(loadConfig({ cwd: fixture("config-invalid"), command: "worker" }), Errors.CONFIG_INVALID.code);
    const file = join(fixture("config-invalid"), "casparian.config.mjs");
    assert.ok(err.message.includes(file), err.message);
    assert.match(err.message, /bridge\.idleTimeout: expected a positive number of seconds, got number -1/);
    assert.match(err.message, /logLevel: expected one of "fatal", .*"silent", got "loud"/);
    assert.match(err.message, /heartbeatIntervall: unknown key/);
    assert.match(err.hint ?? "", /did you mean "heartbeatInterval"/);
    assert.deepEqual([...(err.context.keys as string[])].sort(), ["bridge.idleTimeout", "heartbeatIntervall", "logLevel"]);
  });

  test("a syntax error is CONFIG_LOAD_FAILED naming the file", async () => {
    const err = await rejectsWith(loadConfig({ cwd: fixture("config-broken"), command: "worker" }), Errors.CONFIG_LOAD_FAILED.code);
    assert.ok(err.message.includes(join(fixture("config-broken"), "casparian.config.ts")), err.message);
  });

  test("a JSON config is read without cosmiconfig's error formatter; a JSON syntax error still gets its line and column", async () => {
    const dir = await mkdtemp(join(tmpdir(), "casparian-config-"));
    try {
      await writeFile(join(dir, "good.json"), '{"workerId": "from-json"}');
      await writeFile(join(dir, "bad.json"), '{\n  "workerId": "x",\n  "grace": 1,,\n}\n');
      // In a process of its own: whether parse-json (and @babel/code-frame) was loaded is per process.
      const script = `
        const { createRequire } = await import("node:module");
        const { loadConfig } = await import(${JSON.stringify(new URL("../core/config/loader.js", import.meta.url).href)});
        const loaded = await loadConfig({ explicitPath: "good.json", cwd: ${JSON.stringify(dir)}, command: "worker" });
        const cache = createRequire(import.meta.url).cache;
        const formatter = Object.keys(cache).filter((path) => path.includes("parse-json") || path.includes("code-frame"));
        console.log(JSON.stringify({ workerId: loaded.config.workerId, formatter }));`;
      // (cwd: a directory without package.json, which cosmiconfig's own meta-config search would read with parse-json.)
      const { stdout } = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", script], { cwd: dir });
      assert.deepEqual(JSON.parse(stdout), { workerId: "from-json", formatter: [] });
      // The syntax error in a process whose colour support is forced on (CI=... does the same):
      // the code frame then comes coloured from parse-json, and the message must not carry that.
      const badScript = `
        const { loadConfig } = await import(${JSON.stringify(new URL("../core/config/loader.js", import.meta.url).href)});
        try {
          await loadConfig({ explicitPath: "bad.json", cwd: ${JSON.stringify(dir)}, command: "worker" });
          console.log(JSON.stringify({ loaded: true }));
        } catch (err) {
          console.log(JSON.stringify({ code: err.code, message: err.message }));
        }`;
      const { NO_COLOR: _noColor, NODE_DISABLE_COLORS: _disabled, ...env } = process.env;
      const bad = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", badScript], {
        cwd: dir,
        env: { ...env, FORCE_COLOR: "1" },
      });
      const err = JSON.parse(bad.stdout) as { code?: string; message?: string };
      assert.equal(err.code, Errors.CONFIG_LOAD_FAILED.code, bad.stdout);
      const message = err.message ?? "";
      assert.ok(message.includes(join(dir, "bad.json")), message);
      assert.match(message, /JSON Error/);
      assert.match(message, /> 3 \|/, "the code frame points at the line");
      assert.ok(!message.includes("\u001b"), `no terminal colour codes in the message: ${JSON.stringify(message)}`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("a missing --config file is CONFIG_LOAD_FAILED: file not found", async () => {
    const err = await rejectsWith(
      loadConfig({ explicitPath: "nope.json", cwd: fixture("config-explicit"), command: "worker" }),
      Errors.CONFIG_LOAD_FAILED.code,
    );
    assert.match(err.message, /nope\.json: file not found/);
  });

  test("a config function that throws is CONFIG_LOAD_FAILED", async () => {
    const dir = await mkdtemp(join(tmpdir(), "casparian-config-"));
    try {
      await writeFile(join(dir, "package.json"), '{"name":"x"}');
      await writeFile(join(dir, "casparian.config.mjs"), 'export default () => { throw new Error("no env"); };\n');
      const err = await rejectsWith(loadConfig({ cwd: dir, command: "worker" }), Errors.CONFIG_LOAD_FAILED.code);
      assert.match(err.message, /the exported config function threw: no env/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("every key is checked", () => {
    const cases: Array<[unknown, RegExp]> = [
      [[], /\(root\): expected an object, got an array/],
      [{ connect: "localhost:5555" }, /connect: expected a ZeroMQ endpoint/],
      [{ output: "" }, /output: expected a non-empty string/],
      [{ heartbeatInterval: 0 }, /heartbeatInterval: expected a positive number of seconds, got number 0/],
      [{ grace: -1 }, /grace: expected a number of seconds >= 0/],
      [{ metricsPort: 70000 }, /metricsPort: expected a port number 0\.\.65535/],
      [{ sinks: [42] }, /sinks\[0\]: expected a sink plugin object/],
      [{ sinks: [{ name: "s", schemes: "x", create: () => null }] }, /sinks\[0\]\.schemes: expected a non-empty array of URI schemes, got "x"/],
      [{ sinks: [{ use: "./s.ts", options: 1 }] }, /sinks\[0\]\.options: expected an object/],
      [{ plugins: [{ name: "p" }] }, /plugins\[0\]\.apply: required field is missing/],
      [{ plugins: [{ name: "p", apply: 1 }] }, /plugins\[0\]\.apply: expected a function, got number 1/],
      [{ hooks: { onBatchh: async () => {} } }, /hooks\.onBatchh: unknown key/],
      [{ hooks: { onBatch: "x" } }, /hooks\.onBatch: expected a function/],
      [{ environments: { maxEnvBytes: 1.5 } }, /environments\.maxEnvBytes: expected a positive integer/],
      [{ bridge: { env: ["A", 1] } }, /bridge\.env\[1\]: expected a string, got number 1/],
      [{ bridge: { env: "A" } }, /bridge\.env: expected an array of strings, got "A"/],
      [{ bridge: { maxFrameBytes: 0 } }, /bridge\.maxFrameBytes: expected a positive integer/],
      [{ parquet: { compression: "lzma" } }, /parquet\.compression: expected one of "snappy"/],
      [{ run: { workers: 0 } }, /run\.workers: expected a positive integer/],
      [{ run: { sinks: { output: 3 } } }, /run\.sinks\.output: expected a non-empty string/],
      [{ bridge: { idle: 3 } }, /bridge\.idle: unknown key/],
      [{ bridge: { limits: { cpuSeconds: -1 } } }, /bridge\.limits\.cpuSeconds: expected a positive integer, or false for no limit/],
      [{ bridge: { limits: { addressSpaceMB: 512 } } }, /bridge\.limits\.addressSpaceMB: unknown key/],
      [{ bridge: { cgroup: "yes" } }, /bridge\.cgroup: expected true or false/],
      [{ bridge: { warm: { prefaultMb: -1 } } }, /bridge\.warm\.prefaultMb: expected an integer >= 0, got number -1/],
      [{ bridge: { warm: { prefaultMb: 1.5 } } }, /bridge\.warm\.prefaultMb: expected an integer >= 0/],
      [{ bridge: { user: 0 } }, /bridge\.user: expected a uid above 0, an account name, or false/],
      [{ bridge: { users: { from: 61000 } } }, /bridge\.users: expected \{ from: uid, count \}/],
      [{ bridge: { users: [] } }, /bridge\.users: expected \{ from: uid, count \}/],
      [{ bridge: { sandbox: { tool: "firejail" } } }, /bridge\.sandbox\.tool: expected one of "bwrap"/],
      [{ bridge: { sandbox: { tool: "bwrap", net: false } } }, /bridge\.sandbox\.net: unknown key/],
    ];
    for (const [config, pattern] of cases) {
      assert.throws(
        () => validateConfig(config, "/cfg/casparian.config.ts"),
        (err: unknown) => {
          assert.ok(Errors.CONFIG_INVALID.is(err));
          assert.match(err.message, /^invalid config in \/cfg\/casparian\.config\.ts: /);
          assert.match(err.message, pattern);
          return true;
        },
      );
    }
  });

  test("a full valid config passes unchanged", () => {
    const config = {
      connect: "tcp://10.0.0.1:5555",
      output: "./out",
      workerId: "w1",
      home: "/var/lib/casparian",
      heartbeatInterval: 1,
      grace: 0,
      logLevel: "debug",
      metricsPort: 9464,
      sinks: ["./my-sink.ts", { use: "casparian-sink-s3", options: { bucket: "b" } }],
      plugins: [{ name: "audit", apply: () => {} }],
      hooks: { afterConclude: async () => {} },
      environments: { maxEnvBytes: 10_000_000_000, maxEnvs: 20, uv: "/usr/bin/uv" },
      bridge: {
        connectTimeout: 10,
        idleTimeout: 60,
        jobTimeout: 600,
        env: ["AWS_REGION"],
        maxFrameBytes: 1 << 20,
        limits: { addressSpaceMb: 8192, cpuSeconds: 600, openFiles: false, fileSizeMb: 1024 },
        cgroup: false,
        warm: { enabled: true, prefaultMb: 0 },
        users: { from: 61000, count: 8 },
        sandbox: { tool: "bwrap", network: false, readOnlyRoot: true },
      },
      parquet: { compression: "zstd", rowGroupSize: 65536 },
      run: { workers: 4, sinks: { output: "parquet://out.parquet" } },
    };
    assert.equal(validateConfig(config, "x"), config);
  });
});
