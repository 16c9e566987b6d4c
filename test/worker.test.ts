/**
 * The real worker process (node bin/casparian-worker.js) against a test Sentinel on
 * a real ROUTER socket. Messages go both through our encoder and as raw bytes from
 * the Python-produced vectors.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { jobCgroupRoot } from "../core/bridge/job-scope.js";
import { Errors } from "../core/kernel/errors.js";
import { Opcode, type DispatchCommand } from "../core/protocol/messages.js";
import { packageRoot } from "../core/kernel/paths.js";
import { opcodeName } from "../core/protocol/codec.js";
import { rawHeader, rawJsonFrames, TestSentinel, vectorNamed, type Received } from "./helpers/sentinel.js";
import { spawnWorker, type SpawnedWorker, type SpawnOptions } from "./helpers/spawn-worker.js";

const U64_MAX = 2n ** 64n - 1n;

/** A Sentinel and a worker connected to it, both cleaned up when the test ends. */
async function setup(t: TestContext, args: string[] = [], options: Partial<SpawnOptions> = {}) {
  const sentinel = await TestSentinel.bind();
  const worker = await spawnWorker({ ...options, args: ["--connect", sentinel.endpoint, "--heartbeat-interval", "0.2", ...args] });
  t.after(async () => {
    await worker.dispose();
    await sentinel.close();
  });
  const identify = await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 15_000 });
  return { sentinel, worker, identify, peer: identify.identity };
}

async function metricsText(worker: SpawnedWorker): Promise<string> {
  const line = await worker.waitForLog((l) => l.msg === "serving Prometheus metrics on /metrics");
  const response = await fetch(`http://127.0.0.1:${String(line.port)}/metrics`);
  assert.equal(response.status, 200);
  return response.text();
}

function metricValue(text: string, name: string, labels = ""): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name}${labels} `) || (labels === "" && l.startsWith(`${name} `)));
  return line ? Number(line.split(" ")[1]) : 0;
}

function sumMetric(text: string, name: string): number {
  return text
    .split("\n")
    .filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))
    .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
}

describe("worker over a real ROUTER socket", () => {
  test('IDENTIFY: capabilities ["*"] and a worker id kept in $CASPARIAN_HOME across restarts', async (t) => {
    const { identify, worker, sentinel } = await setup(t);
    const { payload, jobId } = identify.message;
    assert.equal(jobId, 0n);
    assert.deepEqual(payload.capabilities, ["*"]);
    assert.match(payload.worker_id ?? "", /^w-[0-9a-f]{12}$/);
    assert.equal((await readFile(join(worker.home, "worker_id"), "utf8")).trim(), payload.worker_id);
    // The IDENTIFY bytes are exactly what the Python Sentinel expects: header job 0, compact JSON.
    assert.equal(identify.frames[0]!.toString("hex").slice(0, 24), "040100000000000000000000");
    assert.equal(identify.frames[1]!.toString(), `{"capabilities":["*"],"worker_id":"${payload.worker_id}"}`);

    // Same home, new process: same identity.
    const again = await spawnWorker({ home: worker.home, args: ["--connect", sentinel.endpoint] });
    t.after(() => again.dispose());
    const second = await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 15_000 });
    assert.equal(second.message.payload.worker_id, payload.worker_id);
    assert.notDeepEqual(second.identity, identify.identity);
  });

  test("--worker-id wins over the persisted id", async (t) => {
    const { identify } = await setup(t, ["--worker-id", "edge-7"]);
    assert.equal(identify.message.payload.worker_id, "edge-7");
  });

  test("HEARTBEAT every --heartbeat-interval: IDLE, current_job_id null", async (t) => {
    const { sentinel } = await setup(t);
    const first = await sentinel.expect(Opcode.HEARTBEAT);
    const before = sentinel.count(Opcode.HEARTBEAT);
    await new Promise((r) => setTimeout(r, 1500));
    const during = sentinel.count(Opcode.HEARTBEAT) - before;
    // 0.2 s interval over 1.5 s is ~7; allow a loaded CI machine plenty of slack either way.
    assert.ok(during >= 3 && during <= 12, `expected about 7 heartbeats in 1.5 s, got ${during}`);
    assert.deepEqual(first.message.payload, { status: "IDLE", current_job_id: null });
    assert.equal(first.message.jobId, 0n);
  });

  test("1,000 malformed messages are dropped, counted and logged; then a valid exchange works", async (t) => {
    const { sentinel, worker, peer } = await setup(t, ["--metrics-port", "0"]);
    const malformed: Array<[string, Buffer[]]> = [
      [Errors.PROTOCOL_SHORT_HEADER.code, [Buffer.alloc(5)]],
      [Errors.PROTOCOL_SHORT_HEADER.code, [Buffer.alloc(0)]],
      [Errors.PROTOCOL_SHORT_HEADER.code, [Buffer.alloc(17, 4), Buffer.alloc(0)]],
      [Errors.PROTOCOL_BAD_VERSION.code, [rawHeader(Opcode.RELOAD, 0n, 0, 3)]],
      [Errors.PROTOCOL_BAD_VERSION.code, [Buffer.from("garbage frame!!!"), Buffer.from("x")]],
      [Errors.PROTOCOL_UNKNOWN_OPCODE.code, [rawHeader(99, 0n, 0), Buffer.alloc(0)]],
      [Errors.PROTOCOL_LENGTH_MISMATCH.code, [rawHeader(Opcode.ERR, 0n, 10), Buffer.from("{}")]],
      [Errors.PROTOCOL_FRAME_COUNT.code, [rawHeader(Opcode.ERR, 0n, 5)]],
      [Errors.PROTOCOL_FRAME_COUNT.code, [rawHeader(Opcode.ABORT, 1n, 0), Buffer.alloc(0), Buffer.alloc(0)]],
      [Errors.PROTOCOL_BAD_JSON.code, rawJsonFrames(Opcode.ERR, 0n, "{nope")],
      [Errors.PROTOCOL_BAD_PAYLOAD.code, rawJsonFrames(Opcode.PREPARE_ENV, 0n, '{"env_hash":1}')],
      [
        Errors.PROTOCOL_UNEXPECTED_OPCODE.code,
        [Buffer.from(vectorNamed("heartbeat_busy").header_hex, "hex"), Buffer.from(vectorNamed("heartbeat_busy").payload_utf8!)],
      ],
      [
        Errors.PROTOCOL_UNEXPECTED_OPCODE.code,
        [Buffer.from(vectorNamed("conclude_success").header_hex, "hex"), Buffer.from(vectorNamed("conclude_success").payload_utf8!)],
      ],
      [Errors.PROTOCOL_UNEXPECTED_OPCODE.code, [rawHeader(Opcode.UNKNOWN, 0n, 0), Buffer.alloc(0)]],
    ];
    const expectedByCode = new Map<string, number>();
    for (let i = 0; i < 1000; i++) {
      const [code, frames] = malformed[i % malformed.length]!;
      expectedByCode.set(code, (expectedByCode.get(code) ?? 0) + 1);
      await sentinel.sendRaw(peer, frames);
    }

    // A valid exchange, with the Python-produced DISPATCH bytes: job 42, env aaaa… never provisioned here.
    await sentinel.sendVector(peer, vectorNamed("dispatch"));
    const conclude = await sentinel.expect(Opcode.CONCLUDE, { jobId: 42n, timeoutMs: 15_000 });
    assert.equal(conclude.message.payload.status, "FAILED");
    assert.match(conclude.message.payload.error_message ?? "", /Environment aaaaaaaaaaaa not provisioned\. Send PREPARE_ENV first\./);

    // Nothing was answered for the malformed messages but the unreadable PREPARE_ENVs (ERR(0, "PREPARE_ENV failed: ...")).
    assert.equal(sentinel.count(Opcode.ERR), expectedByCode.get(Errors.PROTOCOL_BAD_PAYLOAD.code));
    assert.ok(sentinel.received.filter((r) => r.message?.opcode === Opcode.ERR).every((r) => r.message!.jobId === 0n));
    assert.equal(sentinel.count(Opcode.CONCLUDE), 1);
    const dropped = await worker.waitForLogs((l) => l.msg === "malformed message dropped", 1000);
    assert.equal(dropped.length, 1000);
    assert.ok(dropped.every((l) => l.level === 40 && typeof l.code === "string"));
    const metrics = await metricsText(worker);
    assert.equal(sumMetric(metrics, "casparian_malformed_messages_total"), 1000);
    for (const [code, count] of expectedByCode) {
      assert.equal(metricValue(metrics, "casparian_malformed_messages_total", `{code="${code}"}`), count, code);
    }
    assert.equal(metricValue(metrics, "casparian_jobs_total", '{status="FAILED"}'), 1);
    assert.equal(metricValue(metrics, "casparian_messages_in_total", '{opcode="DISPATCH"}'), 1);
    assert.equal(metricValue(metrics, "casparian_messages_out_total", '{opcode="IDENTIFY"}'), 1);
    assert.equal(metricValue(metrics, "casparian_messages_out_total", '{opcode="CONCLUDE"}'), 1);
  });

  test("an unreadable DISPATCH gets exactly one answer: ERR with its job id, saying what is wrong", async (t) => {
    const { sentinel, peer } = await setup(t);
    const good = JSON.parse(vectorNamed("dispatch").payload_utf8!) as Record<string, unknown>;
    await sentinel.sendRaw(peer, rawJsonFrames(Opcode.DISPATCH, 7n, "{not json"));
    await sentinel.sendRaw(peer, rawJsonFrames(Opcode.DISPATCH, 8n, JSON.stringify({ ...good, file_version_id: "seven" })));
    await sentinel.sendRaw(peer, [rawHeader(Opcode.DISPATCH, 9n, 500), Buffer.from("{}")]);
    await sentinel.sendRaw(peer, [rawHeader(Opcode.DISPATCH, U64_MAX, 0), Buffer.alloc(0)]);

    const bad7 = await sentinel.expect(Opcode.ERR, { jobId: 7n });
    assert.match(bad7.message.payload.message, /^Invalid DISPATCH payload: .*CSP_PROTOCOL_BAD_JSON/);
    const bad8 = await sentinel.expect(Opcode.ERR, { jobId: 8n });
    assert.match(bad8.message.payload.message, /^Invalid DISPATCH payload: file_version_id: expected an integer, got "seven"/);
    const bad9 = await sentinel.expect(Opcode.ERR, { jobId: 9n });
    assert.match(bad9.message.payload.message, /payload_len says 500 bytes but the payload frame has 2/);
    const badMax = await sentinel.expect(Opcode.ERR, { jobId: U64_MAX });
    assert.match(badMax.message.payload.message, /empty payload frame/);

    // Still alive and exactly one answer each.
    await sentinel.sendVector(peer, vectorNamed("dispatch"));
    await sentinel.expect(Opcode.CONCLUDE, { jobId: 42n });
    assert.equal(sentinel.count(Opcode.ERR), 4);
    assert.equal(sentinel.count(Opcode.CONCLUDE), 1);
  });

  test("a u64 job id (2^64-1) and file_version_id 2^53+1 round-trip from the Python bytes", async (t) => {
    const { sentinel, peer, worker } = await setup(t);
    await sentinel.sendVector(peer, vectorNamed("dispatch_big_ids"));
    const conclude = await sentinel.expect(Opcode.CONCLUDE, { jobId: U64_MAX });
    assert.equal(conclude.frames[0]!.subarray(4, 12).toString("hex"), "ffffffffffffffff");
    assert.equal(conclude.message.payload.status, "FAILED");
    assert.match(conclude.message.payload.error_message ?? "", /Environment bbbbbbbbbbbb not provisioned/);
    const log = await worker.waitForLog((l) => l.msg === "job concluded");
    assert.equal(log.job_id, "18446744073709551615");
    assert.equal(log.plugin, "p");
  });

  test("a one-frame RELOAD (as the Python Sentinel broadcasts it) is accepted, not dropped", async (t) => {
    const { sentinel, peer, worker } = await setup(t);
    await sentinel.sendVector(peer, vectorNamed("reload"));
    await worker.waitForLog((l) => typeof l.msg === "string" && l.msg.startsWith("RELOAD"));
    assert.equal(worker.logs.filter((l) => l.msg === "malformed message dropped").length, 0);
  });

  test("the Sentinel goes away and comes back on the same address: the worker IDENTIFYs again", async (t) => {
    const { sentinel, worker, identify } = await setup(t);
    await sentinel.restart();
    const again = await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 15_000 });
    assert.equal(again.message.payload.worker_id, identify.message.payload.worker_id);
    await worker.waitForLog((l) => l.msg === "sentinel disconnected; reconnecting");
    // And it works with the new Sentinel.
    await sentinel.sendVector(again.identity, vectorNamed("dispatch"));
    await sentinel.expect(Opcode.CONCLUDE, { jobId: 42n });
  });

  test('PREPARE_ENV failure answers ERR(0, "PREPARE_ENV failed: ...")', async (t) => {
    const { sentinel, peer } = await setup(t);
    await sentinel.send(peer, Opcode.PREPARE_ENV, 0n, { env_hash: "d".repeat(64), lockfile_content: "version = 1\n", python_version: null });
    const err = await sentinel.expect(Opcode.ERR, { jobId: 0n });
    assert.match(err.message.payload.message, /^PREPARE_ENV failed: CSP_ENV_HASH_MISMATCH/);
  });

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(`${signal}: clean stop, exit code 0`, async (t) => {
      const { worker } = await setup(t);
      worker.child.kill(signal);
      const exit = await worker.exit();
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.ok(
        worker.logs.some((l) => l.msg === "worker stopped"),
        worker.tail(),
      );
    });
  }
});

// ---------------------------------------------------------------------------
// Jobs that really run: a stdlib-only uv environment (builds offline in a second)
// ---------------------------------------------------------------------------

const ENV_LOCK = join(packageRoot(), "test", "fixtures", "worker-env", "uv.lock");

async function provision(sentinel: TestSentinel, peer: Buffer): Promise<string> {
  const lockfile = await readFile(ENV_LOCK, "utf8");
  const envHash = createHash("sha256").update(lockfile).digest("hex");
  await sentinel.send(peer, Opcode.PREPARE_ENV, 0n, { env_hash: envHash, lockfile_content: lockfile, python_version: null });
  const ready = await sentinel.expect(Opcode.ENV_READY, { timeoutMs: 120_000 });
  assert.equal(ready.message.payload.env_hash, envHash);
  return envHash;
}

function command(envHash: string, source: string): DispatchCommand {
  return { plugin_name: "test_plugin", file_path: ENV_LOCK, sinks: [], file_version_id: 1n, env_hash: envHash, source_code: source, artifact_hash: null };
}

const QUICK = "class Handler:\n    def execute(self, path):\n        return []\n";
const NAPPING = "import time\n\nclass Handler:\n    def execute(self, path):\n        time.sleep(1.5)\n        return []\n";
const SLEEPY = "import time\n\nclass Handler:\n    def execute(self, path):\n        time.sleep(60)\n        return []\n";

/** The Python processes among `pid`'s children, with their resident memory (Linux /proc). */
async function pythonChildren(pid: number): Promise<Array<{ pid: number; rssKb: number }>> {
  const found: Array<{ pid: number; rssKb: number }> = [];
  for (const task of await readdir(`/proc/${pid}/task`)) {
    const children = (await readFile(`/proc/${pid}/task/${task}/children`, "utf8")).trim().split(/\s+/).filter(Boolean);
    for (const child of children.map(Number)) {
      const status = await readFile(`/proc/${child}/status`, "utf8").catch(() => "");
      const name = /^Name:\s+(\S+)/m.exec(status)?.[1] ?? "";
      const rss = /^VmRSS:\s+(\d+) kB/m.exec(status);
      if (name.startsWith("python") && rss) found.push({ pid: child, rssKb: Number(rss[1]) });
    }
  }
  return found;
}

function busyHeartbeat(jobId: bigint) {
  return (r: Received) => r.message?.opcode === Opcode.HEARTBEAT && r.message.payload.status === "BUSY" && r.message.payload.current_job_id === jobId;
}

describe("worker running jobs", () => {
  test("PREPARE_ENV → ENV_READY (built, then cached); a job concludes SUCCESS", async (t) => {
    const { sentinel, peer } = await setup(t);
    const envHash = await provision(sentinel, peer);
    await sentinel.send(peer, Opcode.PREPARE_ENV, 0n, { env_hash: envHash, lockfile_content: await readFile(ENV_LOCK, "utf8"), python_version: null });
    const cached = await sentinel.expect(Opcode.ENV_READY);
    assert.equal(cached.message.payload.cached, true);
    await sentinel.send(peer, Opcode.DISPATCH, 5n, command(envHash, QUICK));
    const conclude = await sentinel.expect(Opcode.CONCLUDE, { jobId: 5n, timeoutMs: 60_000 });
    assert.equal(conclude.message.payload.status, "SUCCESS", conclude.message.payload.error_message ?? "");
  });

  test("/metrics counts the warm guest parents and their resident memory, read from /proc at scrape time", async (t) => {
    const { sentinel, peer, worker } = await setup(t, ["--metrics-port", "0"]);
    const before = await metricsText(worker);
    assert.equal(metricValue(before, "casparian_warm_guests"), 0);
    assert.equal(metricValue(before, "casparian_warm_guests_resident_bytes"), 0);
    assert.match(before, /# TYPE casparian_warm_guests gauge/);
    const envHash = await provision(sentinel, peer);
    await sentinel.send(peer, Opcode.DISPATCH, 7n, command(envHash, QUICK));
    const conclude = await sentinel.expect(Opcode.CONCLUDE, { jobId: 7n, timeoutMs: 60_000 });
    assert.equal(conclude.message.payload.status, "SUCCESS", conclude.message.payload.error_message ?? "");
    assert.equal(conclude.message.payload.metrics?.guest_warm, 0, "the first job starts the warm parent");

    // The warm parent is the worker's only Python child once the job's own child has exited.
    const parents = await pythonChildren(worker.child.pid!);
    assert.equal(parents.length, 1, `expected one warm parent, found ${JSON.stringify(parents)}`);
    const after = await metricsText(worker);
    assert.equal(metricValue(after, "casparian_warm_guests"), 1);
    const reported = metricValue(after, "casparian_warm_guests_resident_bytes");
    const actual = parents[0]!.rssKb * 1024;
    assert.ok(reported > 5 * 1024 * 1024, `a Python interpreter holds more than 5 MiB, reported ${reported}`);
    assert.ok(Math.abs(reported - actual) < actual * 0.25, `reported ${reported} bytes, /proc says ${actual}`);
  });

  test("BUSY heartbeats, ABORT of the running job, and a DISPATCH queued behind it (FIFO, one answer each)", async (t) => {
    const { sentinel, peer } = await setup(t);
    const envHash = await provision(sentinel, peer);
    await sentinel.send(peer, Opcode.DISPATCH, 10n, command(envHash, SLEEPY));
    await sentinel.send(peer, Opcode.DISPATCH, 11n, command(envHash, QUICK));
    await sentinel.send(peer, Opcode.DISPATCH, 12n, command(envHash, QUICK));
    const busy = await sentinel.waitFor(busyHeartbeat(10n), 30_000, "BUSY heartbeat for job 10");
    assert.equal(busy.message!.jobId, 10n);

    await sentinel.send(peer, Opcode.ABORT, 12n, null); // queued: dropped, answered at once
    const dropped = await sentinel.expect(Opcode.CONCLUDE, { jobId: 12n });
    assert.equal(dropped.message.payload.status, "FAILED");
    assert.match(dropped.message.payload.error_message ?? "", /aborted by sentinel/);

    await sentinel.send(peer, Opcode.ABORT, 10n, null); // running: aborted
    const aborted = await sentinel.expect(Opcode.CONCLUDE, { jobId: 10n, timeoutMs: 30_000 });
    assert.equal(aborted.message.payload.status, "FAILED");
    assert.match(aborted.message.payload.error_message ?? "", /aborted by sentinel/);

    const next = await sentinel.expect(Opcode.CONCLUDE, { jobId: 11n, timeoutMs: 60_000 });
    assert.equal(next.message.payload.status, "SUCCESS", next.message.payload.error_message ?? "");
    assert.ok(next.at >= aborted.at, "the queued job ran after the running one");
    assert.equal(sentinel.count(Opcode.CONCLUDE), 3);
  });

  test("Sentinel restart while a job runs: after the rebind IDENTIFY comes first, then the CONCLUDE finished meanwhile, then fresh heartbeats", async (t) => {
    const { sentinel, peer } = await setup(t);
    const envHash = await provision(sentinel, peer);
    await sentinel.send(peer, Opcode.DISPATCH, 30n, command(envHash, NAPPING));
    await sentinel.waitFor(busyHeartbeat(30n), 30_000, "BUSY heartbeat for job 30");
    await sentinel.goAway();
    // The job ends while nobody listens (it naps 1.5 s); heartbeats fall due meanwhile (every 0.2 s).
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    const first = await sentinel.comeBack();
    await sentinel.expect(Opcode.CONCLUDE, { jobId: 30n, timeoutMs: 15_000 });
    await sentinel.waitFor((r) => r.message?.opcode === Opcode.HEARTBEAT && sentinel.received.indexOf(r) > first, 5_000, "a heartbeat after the rebind");
    const after = sentinel.received.slice(first);
    const order = after.map((r) => (r.message ? opcodeName(r.message.opcode) : "malformed"));
    assert.equal(order[0], "IDENTIFY", `first message after the rebind: ${order.join(",")}`);
    assert.equal(order.filter((o) => o === "IDENTIFY").length, 1, order.join(","));
    assert.equal(order.filter((o) => o === "CONCLUDE").length, 1, order.join(","));
    assert.ok(order.indexOf("CONCLUDE") < order.indexOf("HEARTBEAT"), `answers before heartbeats: ${order.join(",")}`);
    const conclude = after.find((r) => r.message?.opcode === Opcode.CONCLUDE)!;
    assert.equal(conclude.message!.jobId, 30n);
    assert.equal((conclude.message as Extract<typeof conclude.message, { opcode: typeof Opcode.CONCLUDE }>).payload.status, "SUCCESS");
    // Heartbeats say how things are now (the job is over), not how they were when the Sentinel left.
    for (const r of after) {
      if (r.message?.opcode === Opcode.HEARTBEAT) assert.deepEqual(r.message.payload, { status: "IDLE", current_job_id: null }, order.join(","));
    }
    // And the new Sentinel can use the worker.
    await sentinel.send(after[0]!.identity, Opcode.DISPATCH, 31n, command(envHash, QUICK));
    assert.equal((await sentinel.expect(Opcode.CONCLUDE, { jobId: 31n, timeoutMs: 60_000 })).message.payload.status, "SUCCESS");
  });

  test("SIGTERM right after a job's answer: the worker waits for the job's teardown and leaves neither its directory nor its cgroup", async (t) => {
    // The worker's job directories go below a temp directory of this test's own, so it can see all of them.
    const jobsTmp = await mkdtemp(join(tmpdir(), "casparian-stop-test-"));
    t.after(() => rm(jobsTmp, { recursive: true, force: true }));
    const { sentinel, peer, worker } = await setup(t, [], { env: { TMPDIR: jobsTmp } });
    const envHash = await provision(sentinel, peer);
    // The first job starts the warm parent, the second runs in its spare: both ways of ending a job.
    for (const jobId of [40n, 41n]) {
      await sentinel.send(peer, Opcode.DISPATCH, jobId, command(envHash, QUICK));
      const conclude = await sentinel.expect(Opcode.CONCLUDE, { jobId, timeoutMs: 60_000 });
      assert.equal(conclude.message.payload.status, "SUCCESS", conclude.message.payload.error_message ?? "");
    }
    worker.child.kill("SIGTERM");
    assert.deepEqual(await worker.exit(), { code: 0, signal: null });
    const pid = worker.child.pid!;
    const dirs = (await readdir(jobsTmp)).filter((name) => name.startsWith(`casparian-bridge-${pid}-`));
    assert.deepEqual(dirs, [], "no job (or warm parent) directory is left");
    const root = await jobCgroupRoot();
    if ("dir" in root) {
      const cgroups = (await readdir(root.dir)).filter((name) => name.startsWith(`casparian-${pid}-`));
      assert.deepEqual(cgroups, [], "no job cgroup is left");
    }
  });

  test("SIGTERM while a job runs: the job gets --grace, is then aborted, its answer is sent, exit 0", async (t) => {
    const { sentinel, peer, worker } = await setup(t, ["--grace", "0.5"]);
    const envHash = await provision(sentinel, peer);
    await sentinel.send(peer, Opcode.DISPATCH, 20n, command(envHash, SLEEPY));
    await sentinel.waitFor(busyHeartbeat(20n), 30_000, "BUSY heartbeat for job 20");
    worker.child.kill("SIGTERM");
    const conclude = await sentinel.expect(Opcode.CONCLUDE, { jobId: 20n, timeoutMs: 30_000 });
    assert.equal(conclude.message.payload.status, "FAILED");
    assert.match(conclude.message.payload.error_message ?? "", /aborted by shutdown/);
    assert.deepEqual(await worker.exit(), { code: 0, signal: null });
  });

  test("RELOAD re-reads the config; an invalid config is reported and the old one kept", async (t) => {
    const sentinel = await TestSentinel.bind();
    const worker = await spawnWorker({ args: ["--connect", sentinel.endpoint] });
    t.after(async () => {
      await worker.dispose();
      await sentinel.close();
    });
    // The worker's cwd is its temp dir: put a config there and reload it.
    await writeFile(join(worker.dir, "package.json"), '{"name":"reload-fixture"}');
    const { identity: peer } = await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 15_000 });
    await writeFile(join(worker.dir, ".casparianrc.json"), '{"bridge":{"idleTimeout":30}}');
    await sentinel.sendVector(peer, vectorNamed("reload"));
    const ok = await worker.waitForLog((l) => l.msg === "pipeline rebuilt from the reloaded config");
    assert.equal(ok.config, join(worker.dir, ".casparianrc.json"));

    await writeFile(join(worker.dir, ".casparianrc.json"), '{"bridge":{"idleTimeout":-5}}');
    await sentinel.sendVector(peer, vectorNamed("reload"));
    const failed = await worker.waitForLog((l) => l.msg === "RELOAD failed; keeping the previous config");
    assert.equal(failed.code, Errors.CONFIG_INVALID.code);
    // Still serving.
    await sentinel.sendVector(peer, vectorNamed("dispatch"));
    await sentinel.expect(Opcode.CONCLUDE, { jobId: 42n });
  });
});
