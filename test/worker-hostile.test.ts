/**
 * A hostile Sentinel and hostile plugins against the real worker process: floods of
 * malformed messages, oversized payloads, duplicate job ids, a full queue, crafted frames.
 * Every DISPATCH must get exactly one answer and the worker must serve on.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Opcode, type DispatchCommand } from "../core/protocol/messages.js";
import { decodeHeader, encodeMessage } from "../core/protocol/codec.js";
import { packageRoot } from "../core/kernel/paths.js";
import { rawHeader, rawJsonFrames, TestSentinel } from "./helpers/sentinel.js";
import { spawnWorker } from "./helpers/spawn-worker.js";
import { fixturePath, pluginSource } from "./helpers/pyenv.js";
import { seededRandom } from "./helpers/random.js";

const ENV_LOCK = join(packageRoot(), "test", "fixtures", "worker-env", "uv.lock");
const SLEEPY = "import time\n\nclass Handler:\n    def execute(self, path):\n        time.sleep(60)\n        return []\n";
const QUICK = "class Handler:\n    def execute(self, path):\n        return []\n";

async function setup(t: TestContext, config?: Record<string, unknown>) {
  const sentinel = await TestSentinel.bind();
  const args = ["--connect", sentinel.endpoint, "--heartbeat-interval", "0.2"];
  if (config) {
    const dir = await mkdtemp(join(tmpdir(), "casparian-hostile-config-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await writeFile(join(dir, ".casparianrc.json"), JSON.stringify(config));
    args.push("--config", join(dir, ".casparianrc.json"));
  }
  const worker = await spawnWorker({ args });
  t.after(async () => {
    await worker.dispose();
    await sentinel.close();
  });
  const identify = await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 15_000 });
  return { sentinel, worker, peer: identify.identity };
}

async function provision(sentinel: TestSentinel, peer: Buffer): Promise<string> {
  const lockfile = await readFile(ENV_LOCK, "utf8");
  const envHash = createHash("sha256").update(lockfile).digest("hex");
  await sentinel.send(peer, Opcode.PREPARE_ENV, 0n, { env_hash: envHash, lockfile_content: lockfile, python_version: null });
  await sentinel.expect(Opcode.ENV_READY, { timeoutMs: 120_000 });
  return envHash;
}

function command(envHash: string, source: string, filePath = ENV_LOCK): DispatchCommand {
  return { plugin_name: "hostile", file_path: filePath, sinks: [], file_version_id: 1n, env_hash: envHash, source_code: source, artifact_hash: null };
}

/** Answers (CONCLUDE or ERR) received per job id. */
function answersByJob(sentinel: TestSentinel): Map<bigint, number> {
  const counts = new Map<bigint, number>();
  for (const r of sentinel.received) {
    if (r.message?.opcode === Opcode.CONCLUDE || (r.message?.opcode === Opcode.ERR && r.message.jobId !== 0n)) {
      counts.set(r.message.jobId, (counts.get(r.message.jobId) ?? 0) + 1);
    }
  }
  return counts;
}

describe("a hostile Sentinel", () => {
  test("10,000 malformed control messages with valid DISPATCHes interleaved: every DISPATCH answered exactly once", { timeout: 300_000 }, async (t) => {
    const { sentinel, peer } = await setup(t);
    const next = seededRandom(0xc0ffee);
    const good = encodeMessage(Opcode.DISPATCH, 0n, command("ab".repeat(32), QUICK));
    const goodPayload = Buffer.from(good[1]!);
    /** DISPATCH headers sent per job id (a damaged header can land on another message's id). */
    const needAnswer = new Map<bigint, number>();
    let jobId = 1_000_000n;
    for (let i = 0; i < 10_000; i++) {
      jobId++;
      let frames: Buffer[];
      const kind = next();
      if (kind < 0.35) {
        // A DISPATCH whose payload is damaged: flipped bytes, cut short, or padded.
        const payload = Buffer.from(goodPayload);
        for (let j = 0; j < 1 + Math.floor(next() * 4); j++) payload[Math.floor(next() * payload.length)] = Math.floor(next() * 256);
        const cut = next() < 0.3 ? payload.subarray(0, Math.floor(next() * payload.length)) : payload;
        frames = [rawHeader(Opcode.DISPATCH, jobId, cut.length), cut];
      } else if (kind < 0.6) {
        // A damaged header in front of a valid payload (any opcode, version, length).
        const header = rawHeader(Opcode.DISPATCH, jobId, goodPayload.length);
        header[Math.floor(next() * 4) === 0 ? 0 : Math.floor(next() * 16)] = Math.floor(next() * 256);
        frames = [header.subarray(0, next() < 0.1 ? Math.floor(next() * 16) : 16), goodPayload];
      } else if (kind < 0.8) {
        // Wrong frame counts and lying lengths.
        const count = Math.floor(next() * 4);
        frames = [rawHeader(Math.floor(next() * 12), jobId, Math.floor(next() * 64)), ...Array.from({ length: count }, () => Buffer.from("{}"))];
      } else if (kind < 0.95) {
        frames = [Buffer.from(Array.from({ length: Math.floor(next() * 40) }, () => Math.floor(next() * 256)))];
      } else {
        frames = encodeMessage(Opcode.DISPATCH, jobId, command("ab".repeat(32), QUICK)).map((f) => Buffer.from(f));
      }
      // The worker must answer any message whose header reads as a DISPATCH (decodable or not).
      try {
        const header = decodeHeader(frames[0]!);
        if (header.opcode === Opcode.DISPATCH) needAnswer.set(header.jobId, (needAnswer.get(header.jobId) ?? 0) + 1);
        // An ABORT, RELOAD or PREPARE_ENV that still parses is legitimate; keep the run about DISPATCH.
        if (header.opcode === Opcode.PREPARE_ENV || header.opcode === Opcode.RELOAD) continue;
      } catch {
        // undecodable header: nothing to answer
      }
      await sentinel.sendRaw(peer, frames);
      if (i % 500 === 0) await sleep(10); // let the worker breathe; it must still answer all
    }
    assert.ok(needAnswer.size > 3000, `${needAnswer.size} DISPATCHes to answer`);
    const deadline = Date.now() + 240_000;
    for (;;) {
      const answers = answersByJob(sentinel);
      const missing = [...needAnswer].filter(([id, count]) => (answers.get(id) ?? 0) < count);
      if (missing.length === 0) break;
      if (Date.now() > deadline)
        assert.fail(
          `${missing.length} DISPATCHes never answered, e.g. ${missing
            .slice(0, 5)
            .map(([id]) => id)
            .join(", ")}`,
        );
      await sleep(200);
    }
    await sleep(500);
    const answers = answersByJob(sentinel);
    for (const [id, count] of needAnswer) assert.equal(answers.get(id), count, `job ${id}: ${count} DISPATCHes, ${answers.get(id)} answers`);
    for (const id of answers.keys()) assert.ok(needAnswer.has(id), `answer for job ${id}, which was never dispatched`);
    // Still alive: it heartbeats.
    const before = sentinel.count(Opcode.HEARTBEAT);
    await sleep(1000);
    assert.ok(sentinel.count(Opcode.HEARTBEAT) > before);
  });

  test("an oversized PREPARE_ENV gets a clear ERR without being parsed; an unreadable one gets an ERR too", async (t) => {
    const { sentinel, peer } = await setup(t, { limits: { maxMessageBytes: 1024 * 1024 } });
    const lockfile = "# padding\n".repeat(200_000); // 2 MB
    await sentinel.send(peer, Opcode.PREPARE_ENV, 0n, {
      env_hash: createHash("sha256").update(lockfile).digest("hex"),
      lockfile_content: lockfile,
      python_version: null,
    });
    const big = await sentinel.expect(Opcode.ERR, { jobId: 0n, timeoutMs: 15_000 });
    assert.match(
      big.message.payload.message,
      /^PREPARE_ENV failed: CSP_PROTOCOL_TOO_LARGE: PREPARE_ENV payload of \d+ bytes exceeds the limit of 1048576 bytes/,
    );
    await sentinel.sendRaw(peer, rawJsonFrames(Opcode.PREPARE_ENV, 0n, "{not json"));
    const bad = await sentinel.expect(Opcode.ERR, { jobId: 0n, timeoutMs: 15_000 });
    assert.match(bad.message.payload.message, /^PREPARE_ENV failed: CSP_PROTOCOL_BAD_JSON/);
    // A DISPATCH over the limit is answered with its job id.
    await sentinel.send(peer, Opcode.DISPATCH, 77n, command("ab".repeat(32), `# ${"x".repeat(2_000_000)}\n`));
    const tooBig = await sentinel.expect(Opcode.ERR, { jobId: 77n, timeoutMs: 15_000 });
    assert.match(tooBig.message.payload.message, /CSP_PROTOCOL_TOO_LARGE/);
  });

  test('a full queue answers CONCLUDE FAILED "worker busy"; a duplicate job id is refused and does not outlive its ABORT', async (t) => {
    const { sentinel, peer } = await setup(t, { limits: { maxQueuedJobs: 1 } });
    const envHash = await provision(sentinel, peer);
    await sentinel.send(peer, Opcode.DISPATCH, 30n, command(envHash, SLEEPY));
    await sentinel.waitFor((r) => r.message?.opcode === Opcode.HEARTBEAT && r.message.payload.current_job_id === 30n, 30_000, "BUSY 30");
    await sentinel.send(peer, Opcode.DISPATCH, 30n, command(envHash, QUICK)); // duplicate of the running job
    const duplicate = await sentinel.expect(Opcode.ERR, { jobId: 30n });
    assert.match(duplicate.message.payload.message, /duplicate DISPATCH: job 30 is already running/);
    await sentinel.send(peer, Opcode.DISPATCH, 31n, command(envHash, QUICK)); // queued (1 allowed)
    await sentinel.send(peer, Opcode.DISPATCH, 31n, command(envHash, QUICK)); // duplicate of the queued one
    await sentinel.send(peer, Opcode.DISPATCH, 32n, command(envHash, QUICK)); // over the limit
    const busy = await sentinel.expect(Opcode.CONCLUDE, { jobId: 32n });
    assert.equal(busy.message.payload.status, "FAILED");
    assert.match(busy.message.payload.error_message ?? "", /worker busy: 1 jobs already queued behind job 30/);
    assert.match((await sentinel.expect(Opcode.ERR, { jobId: 31n })).message.payload.message, /already queued/);

    await sentinel.send(peer, Opcode.ABORT, 30n, null);
    const aborted = await sentinel.expect(Opcode.CONCLUDE, { jobId: 30n, timeoutMs: 30_000 });
    assert.equal(aborted.message.payload.status, "FAILED");
    const queued = await sentinel.expect(Opcode.CONCLUDE, { jobId: 31n, timeoutMs: 60_000 });
    assert.equal(queued.message.payload.status, "SUCCESS", queued.message.payload.error_message ?? "");
    await sleep(1000);
    assert.deepEqual(
      [...answersByJob(sentinel)].sort(),
      [
        [30n, 2],
        [31n, 2],
        [32n, 1],
      ].sort(),
      "one CONCLUDE and one ERR each for 30 and 31, one CONCLUDE for 32",
    );
  });
});

describe("hostile plugins against the real worker", () => {
  test("a crafted frame fails its job with CSP_BRIDGE_BAD_FRAME naming it; heartbeats go on and the next job succeeds", { timeout: 180_000 }, async (t) => {
    const { sentinel, peer } = await setup(t);
    const envHash = await provision(sentinel, peer);
    const raw = await pluginSource("raw_frames.py");
    await sentinel.send(peer, Opcode.DISPATCH, 40n, command(envHash, raw, fixturePath("frames", "nodes-vector-length.arrow")));
    const bad = await sentinel.expect(Opcode.CONCLUDE, { jobId: 40n, timeoutMs: 60_000 });
    assert.equal(bad.message.payload.status, "FAILED");
    assert.match(bad.message.payload.error_message ?? "", /CSP_BRIDGE_BAD_FRAME: job 40: data frame 0/);
    const beats = sentinel.count(Opcode.HEARTBEAT);
    await sentinel.send(peer, Opcode.DISPATCH, 41n, command(envHash, QUICK));
    const good = await sentinel.expect(Opcode.CONCLUDE, { jobId: 41n, timeoutMs: 60_000 });
    assert.equal(good.message.payload.status, "SUCCESS", good.message.payload.error_message ?? "");
    await sleep(500);
    assert.ok(sentinel.count(Opcode.HEARTBEAT) > beats);
  });
});
