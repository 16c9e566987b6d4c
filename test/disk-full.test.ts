/**
 * A full disk is bad input too: the job fails with an error that says so, nothing
 * partial is left under the output root (no final file, no staging), and the worker
 * goes on to answer the next job. The output root is a real 2 MiB tmpfs.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { Opcode, type DispatchCommand } from "../core/protocol/messages.js";
import { packageRoot } from "../core/kernel/paths.js";
import { TestSentinel } from "./helpers/sentinel.js";
import { spawnWorker, type SpawnedWorker } from "./helpers/spawn-worker.js";

const execFileAsync = promisify(execFile);

const LOCK = join(packageRoot(), "test", "fixtures", "worker-env", "uv.lock");

/** About 6 MB of incompressible text: more than the 2 MiB disk holds. */
const BIG_PLUGIN = `
import hashlib

class Handler:
    def execute(self, path):
        for start in range(0, 100_000, 20_000):
            yield {"key": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + 20_000)]}
`;

const SMALL_PLUGIN = `
class Handler:
    def execute(self, path):
        return [{"n": [1, 2, 3]}]
`;

describe("a full disk under the output root", () => {
  let sentinel: TestSentinel;
  let worker: SpawnedWorker;
  let identity: Buffer;
  let envHash: string;
  let disk: string;

  before(async () => {
    sentinel = await TestSentinel.bind();
    // Spawn first to get a private temp dir, then mount the small disk inside it as --output.
    worker = await spawnWorker({ args: ["--connect", "tcp://127.0.0.1:1"], outputFlag: false });
    await worker.dispose();
    disk = join(worker.dir, "disk");
    await mkdir(disk, { recursive: true });
    await execFileAsync("mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", disk]).catch((err: unknown) => {
      throw new Error(`this test needs to mount a tmpfs (run as root): ${String(err)}`);
    });
    worker = await spawnWorker({ args: ["--connect", sentinel.endpoint, "--output", disk, "--config", join(packageRoot(), "casparian.config.ts")] });
    identity = (await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 20_000 })).identity;
    const lockfile = await readFile(LOCK, "utf8");
    envHash = createHash("sha256").update(lockfile).digest("hex");
    await sentinel.send(identity, Opcode.PREPARE_ENV, 0n, { env_hash: envHash, lockfile_content: lockfile, python_version: null });
    await sentinel.expect(Opcode.ENV_READY, { timeoutMs: 120_000 });
  });

  after(async () => {
    await worker.dispose().catch(() => undefined);
    await execFileAsync("umount", [disk]).catch(() => undefined);
    await sentinel.close();
  });

  function dispatch(source: string, uri: string): DispatchCommand {
    return {
      plugin_name: "disk_full_test",
      file_path: join(worker.dir, "input.txt"),
      sinks: [{ topic: "output", uri, mode: "replace", schema_def: null }],
      file_version_id: 1n,
      env_hash: envHash,
      source_code: source,
      artifact_hash: null,
    };
  }

  test("the job fails naming the cause, leaves nothing behind, and the worker takes the next job", async () => {
    await writeFile(join(worker.dir, "input.txt"), "x\n");
    await sentinel.send(identity, Opcode.DISPATCH, 1n, dispatch(BIG_PLUGIN, "parquet://big/table.parquet"));
    const failed = (await sentinel.expect(Opcode.CONCLUDE, { jobId: 1n, timeoutMs: 60_000 })).message.payload;
    assert.equal(failed.status, "FAILED");
    assert.match(failed.error_message ?? "", /ENOSPC|no space left/i);
    assert.match(failed.error_message ?? "", /hint: the disk under the output root is full/);
    assert.deepEqual(failed.artifacts, []);
    const left = (await readdir(disk, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
    assert.deepEqual(left, [], "no final file and no staging on the full disk");

    await sentinel.send(identity, Opcode.DISPATCH, 2n, dispatch(SMALL_PLUGIN, "parquet://small/table.parquet"));
    const ok = (await sentinel.expect(Opcode.CONCLUDE, { jobId: 2n, timeoutMs: 60_000 })).message.payload;
    assert.equal(ok.status, "SUCCESS", ok.error_message ?? "");
    assert.deepEqual(ok.artifacts, [{ topic: "output", uri: `parquet://${join(disk, "small", "table.parquet")}` }]);
  });
});
