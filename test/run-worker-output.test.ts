/**
 * What `casparian run` does with its workers' output (worker-process.ts): whole lines go to
 * the run's log, in blocks, never a line cut in two; the last lines are kept to explain a
 * worker that dies. Real worker processes, started as the run starts them.
 */
import assert from "node:assert/strict";
import { createWriteStream } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { LineBlocks, RecentLines, WorkerProcess } from "../core/run/worker-process.js";

describe("a worker's output, read by the run", () => {
  test("blocks hold whole lines: a line split between reads comes out whole, with the next read", () => {
    const lines = new LineBlocks();
    assert.equal(lines.push('{"a":1}\n{"b"'), '{"a":1}\n');
    assert.equal(lines.push(":2"), null);
    assert.equal(lines.push('}\n{"c":3}\n'), '{"b":2}\n{"c":3}\n');
    assert.equal(lines.push("no newline at the end"), null);
    assert.equal(lines.end(), "no newline at the end\n");
    assert.equal(lines.end(), null);
  });

  test("a line longer than a MiB without a newline is passed on rather than held", () => {
    const lines = new LineBlocks();
    const piece = "x".repeat(600 * 1024);
    assert.equal(lines.push(piece), null);
    const out = lines.push(piece);
    assert.equal(out?.length, 2 * piece.length + 1);
    assert.equal(lines.end(), null);
  });

  test("the last lines are kept across blocks, oldest first", () => {
    const recent = new RecentLines(3);
    recent.push("1\n2\n");
    recent.push("3\n");
    recent.push("4\n5\n");
    assert.deepEqual(recent.last(3), ["3", "4", "5"]);
    recent.push("6\n7\n8\n9\n");
    assert.deepEqual(recent.last(3), ["7", "8", "9"]);
    assert.deepEqual(recent.last(2), ["8", "9"]);
  });

  test("a worker that cannot start: its error is in the log as whole lines, and explains its exit", async () => {
    const dir = await mkdtemp(join(tmpdir(), "casparian-worker-output-"));
    try {
      const config = join(dir, "broken.json");
      await writeFile(config, '{"heartbeatIntervall": 2}\n');
      const logPath = join(dir, "run.log");
      const log = createWriteStream(logPath);
      const worker = new WorkerProcess({
        workerId: "w-output",
        endpoint: `ipc://${join(dir, "nobody.sock")}`,
        outputRoot: join(dir, "output"),
        configFile: config,
        logLevel: "info",
        heartbeatSeconds: 5,
        log,
      });
      const exit = await worker.exited;
      await new Promise<void>((done) => log.end(done));
      assert.equal(exit.code, 2, worker.tail().join("\n"));
      assert.ok(
        worker.tail().some((line) => /CSP_CONFIG_INVALID: .*heartbeatIntervall: unknown key/.test(line)),
        worker.tail().join("\n"),
      );
      const written = await readFile(logPath, "utf8");
      assert.ok(written.endsWith("\n"), "the log ends with a whole line");
      assert.deepEqual(written.split("\n").slice(0, -1), worker.tail(), "the log holds the lines the tail keeps, whole");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
