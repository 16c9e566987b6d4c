/**
 * The bins as a user runs them: `node bin/casparian-worker.js ...` and `node bin/casparian.js worker ...`.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { ExitCode } from "../core/cli/cli.js";
import { Opcode } from "../core/protocol/messages.js";
import { packageRoot } from "../core/kernel/paths.js";
import { TestSentinel } from "./helpers/sentinel.js";
import { spawnWorker } from "./helpers/spawn-worker.js";

const root = packageRoot();
const fixture = (name: string) => join(root, "test", "fixtures", name);

function run(bin: "casparian" | "casparian-worker", args: string[], cwd = root) {
  const result = spawnSync(process.execPath, [join(root, "bin", `${bin}.js`), ...args], {
    cwd,
    encoding: "utf8",
    timeout: 20_000,
    env: { ...process.env, CASPARIAN_HOME: join(root, "test", "fixtures", "config-explicit", ".never-created") },
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe("casparian-worker command line", () => {
  test("--help lists every flag and the exit codes; `casparian worker --help` is the same command", () => {
    const worker = run("casparian-worker", ["--help"]);
    assert.equal(worker.code, ExitCode.OK);
    for (const flag of [
      "--connect",
      "--output",
      "--worker-id",
      "--config",
      "--heartbeat-interval",
      "--grace",
      "--log-level",
      "--metrics-port",
      "--help",
      "--version",
    ]) {
      assert.ok(worker.stdout.includes(flag), `help mentions ${flag}`);
    }
    assert.match(worker.stdout, /Exit codes:\n\s+0 .*\n\s+1 .*\n\s+2\s+usage or configuration error/);
    const sub = run("casparian", ["worker", "--help"]);
    assert.equal(sub.code, ExitCode.OK);
    assert.equal(sub.stdout.replace("casparian worker", "casparian-worker"), worker.stdout);
    const top = run("casparian", ["--help"]);
    assert.equal(top.code, 0);
    assert.match(top.stdout, /worker .*\n\s+run /);
  });

  test("--version prints the package version", () => {
    const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string };
    assert.equal(run("casparian-worker", ["--version"]).stdout.trim(), version);
    assert.equal(run("casparian", ["--version"]).stdout.trim(), version);
  });

  test("usage errors exit 2 with the code, the culprit and a hint", () => {
    const cases: Array<[string[], RegExp]> = [
      [["--bogus"], /CSP_CLI_USAGE: Unknown option '--bogus'.*hint: run with --help/],
      [["--heartbeat-interval", "soon"], /--heartbeat-interval expects a positive number of seconds, got "soon"/],
      [["--heartbeat-interval", "0"], /--heartbeat-interval expects a positive number of seconds, got "0"/],
      [["--grace=-1"], /--grace expects a number of seconds >= 0, got "-1"/],
      [["--metrics-port", "99999"], /--metrics-port expects a port number 0\.\.65535/],
      [["--connect", "localhost:5555"], /--connect expects a ZeroMQ endpoint/],
      [["--log-level", "loud"], /--log-level expects one of fatal, error/],
      [["stray"], /CSP_CLI_USAGE/],
    ];
    for (const [args, pattern] of cases) {
      const result = run("casparian-worker", args);
      assert.equal(result.code, ExitCode.USAGE, `${args.join(" ")}: ${result.stderr}`);
      assert.match(result.stderr, pattern);
      assert.doesNotMatch(result.stderr, /\n\s+at /, "a user error prints no stack");
    }
    const unknown = run("casparian", ["frobnicate"]);
    assert.equal(unknown.code, ExitCode.USAGE);
    assert.match(unknown.stderr, /unknown command "frobnicate"/);
    assert.equal(run("casparian", []).code, ExitCode.USAGE);
  });

  test("an invalid config fails at start: exit 2 naming the file, the key and the expected value", () => {
    const file = join(fixture("config-invalid"), "casparian.config.mjs");
    for (const [args, cwd] of [
      [["--config", file], root],
      [[], fixture("config-invalid")],
    ] as const) {
      const result = run("casparian-worker", [...args, "--connect", "tcp://127.0.0.1:1"], cwd);
      assert.equal(result.code, ExitCode.USAGE, result.stderr);
      assert.ok(result.stderr.includes(`CSP_CONFIG_INVALID: invalid config in ${file}`), result.stderr);
      assert.match(result.stderr, /bridge\.idleTimeout: expected a positive number of seconds, got number -1/);
      assert.match(result.stderr, /heartbeatIntervall: unknown key/);
      assert.match(result.stderr, /did you mean "heartbeatInterval"/);
    }
    const broken = run("casparian-worker", ["--config", join(fixture("config-broken"), "casparian.config.ts")]);
    assert.equal(broken.code, ExitCode.USAGE);
    assert.match(broken.stderr, /CSP_CONFIG_LOAD_FAILED: could not load config file .*config-broken\/casparian\.config\.ts/);
    const missing = run("casparian-worker", ["--config", "does-not-exist.json"]);
    assert.equal(missing.code, ExitCode.USAGE);
    assert.match(missing.stderr, /does-not-exist\.json: file not found/);
  });
});

describe("flags > config file > defaults", () => {
  test("a TypeScript config importing a TypeScript sink drives the real worker", async (t) => {
    const sentinel = await TestSentinel.bind();
    const worker = await spawnWorker({ cwd: fixture("config-ts-imports"), args: ["--connect", sentinel.endpoint] });
    t.after(async () => {
      await worker.dispose();
      await sentinel.close();
    });
    const identify = await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 15_000 });
    assert.equal(identify.message.payload.worker_id, "from-ts-memory");
    const started = await worker.waitForLog((l) => l.msg === "starting worker");
    assert.equal(started.config, join(fixture("config-ts-imports"), "casparian.config.ts"));
  });

  test("flags override the config; the config overrides defaults; config paths are relative to the file", async (t) => {
    const sentinel = await TestSentinel.bind();
    const first = await spawnWorker({ args: ["--connect", "tcp://127.0.0.1:1"] });
    t.after(async () => {
      await first.dispose();
      await sentinel.close();
    });
    // A config in the worker's cwd: connect, id, heartbeat and output come from it...
    await writeFile(join(first.dir, "package.json"), '{"name":"precedence"}');
    const config = { connect: sentinel.endpoint, workerId: "from-config", heartbeatInterval: 0.1, output: "./out-from-config" };
    await writeFile(join(first.dir, ".casparianrc.json"), JSON.stringify(config));
    first.child.kill("SIGKILL");
    await first.exited;

    const fromConfig = await spawnWorker({ cwd: first.dir, args: [], outputFlag: false });
    t.after(() => fromConfig.dispose());
    const id1 = await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 15_000 });
    assert.equal(id1.message.payload.worker_id, "from-config");
    const start1 = await fromConfig.waitForLog((l) => l.msg === "starting worker");
    assert.equal(start1.output, join(first.dir, "out-from-config"), "config.output, relative to the config file");
    await sentinel.expect(Opcode.HEARTBEAT, { timeoutMs: 5_000 });
    fromConfig.child.kill("SIGTERM");
    assert.equal((await fromConfig.exit()).code, 0);

    // ...unless a flag says otherwise.
    const fromFlags = await spawnWorker({
      cwd: first.dir,
      args: ["--worker-id", "from-flag", "--heartbeat-interval", "30", "--output", "flag-out"],
    });
    t.after(() => fromFlags.dispose());
    const id2 = await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 15_000 });
    assert.equal(id2.message.payload.worker_id, "from-flag");
    const start2 = await fromFlags.waitForLog((l) => l.msg === "starting worker");
    assert.equal(start2.output, join(first.dir, "flag-out"), "--output, relative to the cwd");
    // heartbeatInterval 30 s from the flag: no heartbeat comes within a second, where 0.1 s would give ~10.
    const before = sentinel.count(Opcode.HEARTBEAT);
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(sentinel.count(Opcode.HEARTBEAT), before);
  });
});
