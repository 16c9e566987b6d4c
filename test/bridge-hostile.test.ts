/**
 * Hostile guests against the real bridge host: plugins that bypass the SDK and write raw
 * bytes on the socket they own. Each run must fail with a clear error (naming the job),
 * never hang or grow the worker, and the next run must work.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Errors } from "../core/kernel/errors.js";
import { MAX_GUEST_METRICS, runGuest, STDERR_LOG_LINES } from "../core/bridge/host.js";
import type { GuestRunOptions } from "../core/bridge/types.js";
import type { Batch } from "../core/kernel/job.js";
import { fixturePath, pluginSource, testEnvironment, testJob, type TestEnvironment } from "./helpers/pyenv.js";
import { rejectsWith } from "./helpers/assert.js";

const TIMEOUTS = { connectMs: 20_000, idleMs: 60_000, jobMs: 120_000 };

let env: TestEnvironment;
let dir: string;

before(async () => {
  env = await testEnvironment();
  dir = await mkdtemp(join(tmpdir(), "casparian-bridge-hostile-"));
});

after(async () => {
  await env?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function run(plugin: string, filePath: string, overrides: Partial<GuestRunOptions> = {}) {
  const { job } = testJob(await pluginSource(plugin), { filePath, pluginName: plugin });
  const batches: Batch[] = [];
  const result = runGuest({ interpreterPath: env.interpreterPath, job, timeouts: TIMEOUTS, onBatch: async (b) => void batches.push(b), ...overrides });
  return { job, batches, result };
}

describe("raw frames from a plugin", () => {
  test("a frame that makes apache-arrow loop fails its job with CSP_BRIDGE_BAD_FRAME naming the job; the next job runs", async () => {
    for (const name of ["nodes-vector-length.arrow", "children-vector-length.arrow", "batch-length-2-32.arrow"]) {
      const { job, result } = await run("raw_frames.py", fixturePath("frames", name));
      const err = await rejectsWith(result, Errors.BRIDGE_BAD_FRAME.code);
      assert.match(err.message, new RegExp(`^job ${job.jobId}: data frame 0 \\(\\d+ bytes\\) is not a valid Arrow IPC stream`), name);
      assert.equal(err.context.jobId, job.jobId);
    }
    const good = await run("handler_pandas.py", "/dev/null");
    assert.equal((await good.result).rows, 6);
  });

  test("garbage is not accepted as an empty table", async () => {
    const path = join(dir, "garbage.bin");
    await writeFile(path, "definitely not Arrow IPC, but long enough to look like a frame");
    await rejectsWith((await run("raw_frames.py", path)).result, Errors.BRIDGE_BAD_FRAME.code);
  });

  test("data after the end-of-stream frame is refused, not silently dropped", async () => {
    const frame = await readFile(fixturePath("frames", "nodes-vector-length.arrow"));
    const path = join(dir, "raw-after-end.bin");
    // end of stream, then a (complete, well-formed) data frame nobody would ever read
    await writeFile(path, Buffer.concat([Buffer.from([0, 0, 0, 0]), Buffer.from([0, 0, 0, 8]), frame.subarray(0, 8)]));
    const err = await rejectsWith((await run("raw_frames.py", path)).result, Errors.GUEST_PROTOCOL.code);
    assert.match(err.message, /bytes after end of stream/);
  });
});

describe("bounded per job", () => {
  test(`guest metrics: at most ${MAX_GUEST_METRICS} keys kept, the rest counted`, async () => {
    const json = Buffer.from(JSON.stringify(Object.fromEntries(Array.from({ length: 20_000 }, (_, i) => [`k${i}`, i]))));
    const header = Buffer.alloc(8);
    header.writeUInt32BE(0xfffffffb, 0);
    header.writeUInt32BE(json.length, 4);
    const path = join(dir, "raw-metrics.bin");
    await writeFile(path, Buffer.concat([header, json]));
    const { guestMetrics } = await (await run("raw_frames.py", path)).result;
    assert.ok(Object.keys(guestMetrics).length <= MAX_GUEST_METRICS + 1, `${Object.keys(guestMetrics).length} keys`);
    assert.ok(guestMetrics.metrics_dropped! >= 20_000 - MAX_GUEST_METRICS, String(guestMetrics.metrics_dropped));
  });

  test(`guest stderr: ${STDERR_LOG_LINES} lines logged per job, the rest counted`, async () => {
    const { job } = testJob(
      "import sys\nclass Handler:\n    def execute(self, path):\n        for i in range(15000): print('line', i, file=sys.stderr)\n        return []\n",
    );
    const result = await runGuest({ interpreterPath: env.interpreterPath, job, timeouts: TIMEOUTS, onBatch: async () => undefined });
    const dropped = result.guestMetrics.stderr_lines_dropped!;
    assert.ok(dropped >= 5000 && dropped < 5100, `dropped ${dropped}`);
  });
});

describe("the worker's secrets", () => {
  test("a plugin can neither read the worker's /proc/<pid>/environ nor ptrace it", async () => {
    process.env.CASPARIAN_HOSTILE_SECRET = `hunter2-${process.pid}`;
    try {
      const source = [
        "import ctypes, os",
        "class Handler:",
        "    def execute(self, path):",
        "        pid = os.getppid()",
        "        while pid > 1 and 'node' not in open('/proc/%d/comm' % pid).read():",
        "            pid = int(open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()[1])",
        "        try:",
        "            environ = open('/proc/%d/environ' % pid, 'rb').read().decode('utf-8', 'replace')",
        "        except OSError as exc:",
        "            environ = 'refused: %s' % exc.strerror",
        "        libc = ctypes.CDLL(None, use_errno=True)",
        "        attached = libc.ptrace(0x4206, pid, 0, 0)  # PTRACE_SEIZE: attaches without stopping the worker",
        "        if attached == 0: libc.ptrace(17, pid, 0, 0)  # PTRACE_DETACH",
        "        return [{'worker': pid, 'environ': environ[:100000], 'ptrace': attached, 'errno': ctypes.get_errno()}]",
      ].join("\n");
      const { job } = testJob(source);
      const batches: Batch[] = [];
      await runGuest({ interpreterPath: env.interpreterPath, job, timeouts: TIMEOUTS, onBatch: async (b) => void batches.push(b) });
      const row = batches[0]!.table.get(0)!.toJSON() as { worker: bigint; environ: string; ptrace: bigint; errno: bigint };
      assert.equal(Number(row.worker), process.pid, "the plugin found the worker");
      assert.ok(!row.environ.includes("hunter2"), `the plugin read the secret: ${row.environ.slice(0, 80)}`);
      assert.match(row.environ, /^refused: /);
      assert.equal(Number(row.ptrace), -1, "attaching with ptrace must fail");
    } finally {
      delete process.env.CASPARIAN_HOSTILE_SECRET;
    }
  });
});
