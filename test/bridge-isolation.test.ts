/**
 * Guest isolation between job slots, against the real bridge host with real Python guests:
 * each slot's guest runs as its own unprivileged uid (numeric, no account needed), in a job
 * directory (socket, plugin source, scratch) that is 0700 and owned by that uid.
 *
 * The attack from the field: a plugin on one worker connected to another worker's bridge
 * sockets, read their plugin source and listed their staging. Here two jobs run at once in
 * two slots; the attacker is told exactly where the victim's socket, source and directory
 * are, and must get nothing. The same attack without slot users reaches everything (so the
 * test can tell). Needs root (it creates guests as other uids), as CI runs.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmod, mkdtemp, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test, type TestContext } from "node:test";
import { runGuest } from "../core/bridge/host.js";
import { claimSlotUser, type SlotClaim, type SlotUser, unreachableFor } from "../core/bridge/slot-user.js";
import type { GuestRunOptions } from "../core/bridge/types.js";
import { WarmPool } from "../core/bridge/warm-pool.js";
import { Errors } from "../core/kernel/errors.js";
import type { Batch } from "../core/kernel/job.js";
import { silentLogger } from "../core/kernel/logger.js";
import { createHash } from "node:crypto";
import { Opcode, type DispatchCommand } from "../core/protocol/messages.js";
import { rejectsWith } from "./helpers/assert.js";
import { TestSentinel } from "./helpers/sentinel.js";
import { spawnWorker } from "./helpers/spawn-worker.js";
import { bareGuests, type BareGuests } from "./helpers/guests.js";
import { testJob } from "./helpers/pyenv.js";

const TIMEOUTS = { connectMs: 20_000, idleMs: 60_000, jobMs: 120_000 };
const logger = silentLogger();

let guests: BareGuests;
let root: string;
let interpreterPath: string;
let slotA: SlotClaim;
let slotB: SlotClaim;

/**
 * A Python other uids can run: the test's venv links to it, and the usual per-user installs
 * (pyenv, uv's managed Pythons under root's home) are not reachable by a slot user.
 */
async function sharedPython(probe: SlotUser): Promise<string> {
  const tried: string[] = [];
  for (const candidate of ["/usr/bin/python3", "/usr/local/bin/python3", "/opt/python/bin/python3"]) {
    const problem = await unreachableFor(probe, [{ path: candidate, need: "rx" }]);
    const exists = await stat(candidate).then(
      () => true,
      () => false,
    );
    if (exists && problem === null) return candidate;
    tried.push(`${candidate}: ${exists ? problem : "missing"}`);
  }
  assert.fail(`no Python 3 that another uid can run (these tests need one):\n${tried.join("\n")}`);
}

before(async () => {
  assert.equal(process.geteuid?.(), 0, "these tests start guests as other uids: they must run as root (CI does)");
  slotA = (await claimSlotUser({ users: { from: 61000, count: 184 }, logger }))!;
  slotB = (await claimSlotUser({ users: { from: 61000, count: 184 }, logger }))!;
  assert.notEqual(slotA.uid, slotB.uid);
  // uv picks its interpreter from UV_PYTHON (a variable uv is allowed to see) when PREPARE_ENV names no version.
  process.env.UV_PYTHON = await sharedPython(slotA);
  // The slot users must reach the venv inside.
  guests = await bareGuests("isolation", { logger, readableByOthers: true });
  ({ home: root, python: interpreterPath } = guests);
});

after(async () => {
  await slotA?.release();
  await slotB?.release();
  await guests?.close();
});

async function run(source: string, overrides: Partial<GuestRunOptions> = {}, filePath = "/dev/null") {
  const { job } = testJob(source, { filePath, logger });
  const batches: Batch[] = [];
  const result = await runGuest({ interpreterPath, job, timeouts: TIMEOUTS, onBatch: async (b) => void batches.push(b), ...overrides });
  const rows = batches.flatMap((b) => b.table.toArray().map((row) => row.toJSON() as Record<string, unknown>));
  // Python ints arrive as int64: numbers here, to compare with uids.
  return { result, rows: rows.map((row) => Object.fromEntries(Object.entries(row).map(([k, v]) => [k, typeof v === "bigint" ? Number(v) : v]))) };
}

/** Waits for `path` (written by the other job), up to 60 s. */
const WAIT_FOR = `
import json, os, time
def wait_for(path):
    for _ in range(600):
        if os.path.exists(path):
            return
        time.sleep(0.1)
    raise RuntimeError("nobody wrote " + path)
`;

function victimSource(meet: string): string {
  return `# VICTIM-SECRET-SOURCE
${WAIT_FOR}
class Handler:
    def execute(self, path):
        where = {"socket": os.environ["BRIDGE_SOCKET"], "source": os.environ["BRIDGE_PLUGIN_FILE"], "staging": os.getcwd(), "pid": os.getpid()}
        with open(os.path.join(os.getcwd(), "victim-scratch.txt"), "w") as scratch:
            scratch.write("victim data")
        with open(${JSON.stringify(join(meet, "victim.tmp"))}, "w") as out:
            json.dump(where, out)
        os.rename(${JSON.stringify(join(meet, "victim.tmp"))}, ${JSON.stringify(join(meet, "victim.json"))})
        wait_for(${JSON.stringify(join(meet, "attacker.done"))})
        return [{"victim": "VICTIM-SECRET-SOURCE"}]
`;
}

/** Tries each door into the victim's job; each cell says "refused: ..." or what it got. */
function attackerSource(meet: string): string {
  return `${WAIT_FOR}
import socket
def attempt(action):
    try:
        return "got: " + str(action())[:200]
    except OSError as exc:
        return "refused: " + (exc.strerror or type(exc).__name__)

def connect(path):
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.close()
    return "connected"

def read(path):
    with open(path, "rb") as handle:
        return handle.read().decode("utf-8", "replace")

class Handler:
    def execute(self, path):
        wait_for(${JSON.stringify(join(meet, "victim.json"))})
        with open(${JSON.stringify(join(meet, "victim.json"))}) as handle:
            where = json.load(handle)
        try:
            return [{
                "socket": attempt(lambda: connect(where["socket"])),
                "source": attempt(lambda: read(where["source"])),
                "staging_list": attempt(lambda: sorted(os.listdir(where["staging"]))),
                "staging_read": attempt(lambda: read(os.path.join(where["staging"], "victim-scratch.txt"))),
                "staging_write": attempt(lambda: open(os.path.join(where["staging"], "planted.py"), "w").close()),
                "environ": attempt(lambda: read("/proc/%d/environ" % where["pid"])),
                "uid": os.getuid(),
            }]
        finally:
            open(${JSON.stringify(join(meet, "attacker.done"))}, "w").close()
`;
}

async function attack(users: { attacker?: SlotUser; victim?: SlotUser }) {
  const meet = await mkdtemp(join(root, "meet-"));
  await chmod(meet, 0o777); // both slot users leave notes here
  const victim = run(victimSource(meet), { slotUser: users.victim });
  const attacker = run(attackerSource(meet), { slotUser: users.attacker });
  const [v, a] = await Promise.all([victim, attacker]);
  return { victim: v, attacker: a.rows[0]! };
}

describe("two job slots on one host", () => {
  test("a plugin in one slot reaches nothing of another slot's job: socket, plugin source, staging, environment", async () => {
    const { victim, attacker } = await attack({ attacker: { ...slotA, required: true }, victim: { ...slotB, required: true } });
    assert.equal(attacker.uid, slotA.uid);
    for (const door of ["socket", "source", "staging_list", "staging_read", "staging_write", "environ"]) {
      assert.match(String(attacker[door]), /^refused: /, `${door}: ${String(attacker[door])}`);
    }
    assert.deepEqual(victim.rows, [{ victim: "VICTIM-SECRET-SOURCE" }], "the victim's job is undisturbed");
  });

  test("the same attack without slot users (both guests as the worker's uid) reaches the socket, the source and the staging", async () => {
    const { attacker } = await attack({});
    assert.equal(attacker.socket, "got: connected");
    assert.match(String(attacker.source), /VICTIM-SECRET-SOURCE/);
    assert.match(String(attacker.staging_list), /plugin-source\.py/);
    assert.equal(attacker.staging_read, "got: victim data");
  });
});

describe("a guest as its slot user", () => {
  test("runs as the slot's uid and gid, in a 0700 job directory it owns, with HOME and TMPDIR there, and writes its scratch", async () => {
    const input = join(root, "input.txt");
    await writeFile(input, "three\nlines\nhere\n");
    await chmod(input, 0o644);
    const source = `
import os, tempfile
class Handler:
    def execute(self, path):
        here = os.stat(".")
        with tempfile.NamedTemporaryFile(dir=None, delete=False) as scratch:
            scratch.write(b"x")
        with open(path) as handle:
            lines = handle.read().splitlines()
        return [{"uid": os.getuid(), "gid": os.getgid(), "groups": len(os.getgroups()), "dir_uid": here.st_uid, "dir_mode": here.st_mode & 0o777,
                 "home_is_cwd": os.environ["HOME"] == os.getcwd(), "tmp_in_cwd": os.path.dirname(scratch.name) == os.getcwd(), "lines": len(lines)}]
`;
    const { rows } = await run(source, { slotUser: { ...slotA, required: true } }, input);
    assert.deepEqual(rows, [{ uid: slotA.uid, gid: slotA.gid, groups: 0, dir_uid: slotA.uid, dir_mode: 0o700, home_is_cwd: true, tmp_in_cwd: true, lines: 3 }]);
  });

  test("warm guests: the parent runs as the slot user, so every job forked from it does", async () => {
    const warm = new WarmPool({ logger });
    try {
      const source = "import os\nclass Handler:\n    def execute(self, path):\n        return [{'uid': os.getuid(), 'mode': os.stat('.').st_mode & 0o777}]\n";
      const first = await run(source, { slotUser: { ...slotB, required: true }, warm });
      const second = await run(source, { slotUser: { ...slotB, required: true }, warm });
      assert.deepEqual([first.rows, second.rows], [[{ uid: slotB.uid, mode: 0o700 }], [{ uid: slotB.uid, mode: 0o700 }]]);
      assert.equal(second.result.warm, true, "the second job was forked from the warm parent");
    } finally {
      await warm.close();
    }
  });

  test("warm guests: a job cannot ptrace or read its warm parent, nor the spare forked for the next job (same uid, so only not being dumpable stops it)", async () => {
    const warm = new WarmPool({ logger });
    try {
      // Attaching to the parent would let one job's plugin write code into every later job forked from it.
      const source = `import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_SEIZE = 0x4206

def attach(pid):
    if libc.ptrace(PTRACE_SEIZE, pid, None, None) == 0:
        return "attached"
    return "refused " + os.strerror(ctypes.get_errno())

def environ(pid):
    try:
        with open("/proc/%d/environ" % pid, "rb") as handle:
            return "read %d bytes" % len(handle.read())
    except OSError as exc:
        return "refused " + exc.strerror

def siblings():
    parent = os.getppid()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open("/proc/%s/stat" % name) as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == parent:
                        found.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return found

class Handler:
    def execute(self, path):
        rows = [{"who": "parent", "attach": attach(os.getppid()), "environ": environ(os.getppid())}]
        rows += [{"who": "sibling", "attach": attach(pid), "environ": environ(pid)} for pid in siblings()]
        return rows
`;
      await run(source, { slotUser: { ...slotB, required: true }, warm });
      const { result, rows } = await run(source, { slotUser: { ...slotB, required: true }, warm });
      assert.equal(result.warm, true, "the job was forked from the warm parent");
      assert.ok(rows.length >= 1, "the parent was tried");
      for (const row of rows) {
        assert.match(String(row.attach), /^refused /, `ptrace of the ${row.who}: ${row.attach}`);
        assert.match(String(row.environ), /^refused /, `environ of the ${row.who}: ${row.environ}`);
      }
    } finally {
      await warm.close();
    }
  });

  test("an input the slot user cannot read: CSP_SLOT_USER_UNREACHABLE when isolation was asked for; root's default runs the job as the worker", async () => {
    const hidden = await mkdtemp(join(root, "private-"));
    const input = join(hidden, "input.txt");
    await writeFile(input, "x\n");
    const source = "import os\nclass Handler:\n    def execute(self, path):\n        return [{'uid': os.getuid()}]\n";
    const err = await rejectsWith(run(source, { slotUser: { ...slotA, required: true } }, input), Errors.SLOT_USER_UNREACHABLE.code);
    assert.match(err.message, new RegExp(`${hidden} \\(mode 700, owner 0:0\\) is not searchable for uid ${slotA.uid}`));
    const fallback = await run(source, { slotUser: { ...slotA, required: false } }, input);
    assert.deepEqual(fallback.rows, [{ uid: 0 }]);
  });
});

describe("claiming slot users", () => {
  test("a uid held by one worker is not handed to another; a freed uid is taken again with every process left under it killed", async () => {
    const uid = slotA.uid + 1000; // outside the range the other tests hold
    const first = (await claimSlotUser({ user: uid, logger }))!;
    try {
      await rejectsWith(claimSlotUser({ user: uid, logger }), Errors.SLOT_USERS_EXHAUSTED.code);
      // A daemon a plugin left behind, still running as the uid when its worker dies.
      const daemon = spawn("/bin/sleep", ["300"], { uid, gid: uid, detached: true, stdio: "ignore" });
      const gone = new Promise<string | null>((resolve) => daemon.once("exit", (_code, signal) => resolve(signal)));
      await first.release();
      const again = (await claimSlotUser({ user: uid, logger }))!;
      assert.equal(again.uid, uid);
      assert.equal(await gone, "SIGKILL");
      await again.release();
    } finally {
      await first.release().catch(() => undefined);
    }
  });

  test("a worker that is not root cannot be given a slot user; root's default pool skips uids with an account", async () => {
    const text = await readFile("/etc/passwd", "utf8");
    const taken = text
      .split("\n")
      .map((line) => Number(line.split(":")[2]))
      .filter((uid) => uid >= 61000 && uid < 61184);
    assert.ok(!taken.includes(slotA.uid) && !taken.includes(slotB.uid));
    const child = spawn(process.execPath, ["--input-type=module", "-e", claimAsNobody()], { uid: 65534, gid: 65534, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (chunk) => (out += chunk));
    child.stderr.on("data", (chunk) => (out += chunk));
    await new Promise((resolve) => child.once("exit", resolve));
    assert.match(out, /CSP_SLOT_USER_NEEDS_ROOT/);
  });
});

function claimAsNobody(): string {
  const module = new URL("../core/bridge/slot-user.js", import.meta.url).href;
  const kernel = new URL("../core/kernel/logger.js", import.meta.url).href;
  return `import { claimSlotUser } from ${JSON.stringify(module)}; import { silentLogger } from ${JSON.stringify(kernel)};
claimSlotUser({ user: 61999, logger: silentLogger() }).then(() => console.log("claimed"), (err) => console.log(err.code));`;
}

describe("two real workers on one host", () => {
  const BARE_LOCK = 'version = 1\nrequires-python = ">=3.11"\n';

  /** A worker process (root, bridge.users from the default range) with its own Sentinel, its env prepared. */
  async function startWorker(t: TestContext, name: string) {
    const sentinel = await TestSentinel.bind();
    const configDir = await mkdtemp(join(root, `config-${name}-`));
    await writeFile(join(configDir, ".casparianrc.json"), JSON.stringify({ bridge: { users: { from: 61000, count: 184 } } }));
    const worker = await spawnWorker({
      args: ["--connect", sentinel.endpoint, "--heartbeat-interval", "0.2", "--config", join(configDir, ".casparianrc.json")],
      env: { UV_PYTHON: process.env.UV_PYTHON },
    });
    t.after(async () => {
      await worker.dispose();
      await sentinel.close();
    });
    await chmod(worker.dir, 0o755); // its home (venvs) must be reachable by its slot user
    const peer = (await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 15_000 })).identity;
    const claimed = await worker.waitForLog((line) => line.msg === "guests run as this slot's own user", 15_000);
    const envHash = createHash("sha256").update(BARE_LOCK).digest("hex");
    await sentinel.send(peer, Opcode.PREPARE_ENV, 0n, { env_hash: envHash, lockfile_content: BARE_LOCK, python_version: null });
    await sentinel.expect(Opcode.ENV_READY, { timeoutMs: 120_000 });
    const dispatch = (jobId: bigint, source: string) => {
      const command: DispatchCommand = {
        plugin_name: name,
        file_path: "/dev/null",
        sinks: [],
        file_version_id: 1n,
        env_hash: envHash,
        source_code: source,
        artifact_hash: null,
      };
      return sentinel.send(peer, Opcode.DISPATCH, jobId, command);
    };
    return { sentinel, worker, uid: Number(claimed.uid), dispatch };
  }

  test("each worker claims its own slot user; a plugin on one gets nothing of the other's socket, source, staging or environment", {
    timeout: 300_000,
  }, async (t) => {
    const a = await startWorker(t, "attacker");
    const b = await startWorker(t, "victim");
    assert.notEqual(a.uid, b.uid);
    const meet = await mkdtemp(join(root, "meet-workers-"));
    await chmod(meet, 0o777);
    // The attacker's findings go to a file (the job has no sink); its job must still succeed.
    const attacker = `${attackerSource(meet)}
Attack = Handler
class Handler(Attack):
    def execute(self, path):
        rows = super().execute(path)
        with open(${JSON.stringify(join(meet, "findings.json"))}, "w") as out:
            json.dump(rows[0], out)
        return rows
`;
    await b.dispatch(1n, victimSource(meet));
    await a.dispatch(2n, attacker);
    const [concludeB, concludeA] = await Promise.all([
      b.sentinel.expect(Opcode.CONCLUDE, { jobId: 1n, timeoutMs: 120_000 }),
      a.sentinel.expect(Opcode.CONCLUDE, { jobId: 2n, timeoutMs: 120_000 }),
    ]);
    assert.equal((concludeA.message!.payload as { status: string }).status, "SUCCESS", JSON.stringify(concludeA.message!.payload));
    assert.equal((concludeB.message!.payload as { status: string }).status, "SUCCESS", JSON.stringify(concludeB.message!.payload));
    const findings = JSON.parse(await readFile(join(meet, "findings.json"), "utf8")) as Record<string, unknown>;
    assert.equal(findings.uid, a.uid);
    for (const door of ["socket", "source", "staging_list", "staging_read", "staging_write", "environ"]) {
      assert.match(String(findings[door]), /^refused: /, `${door}: ${String(findings[door])}`);
    }
  });
});
