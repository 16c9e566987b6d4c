/**
 * bridge.sandbox (bubblewrap) against the real bridge host with real Python guests: no
 * network, nothing writable but the job directory and a private /tmp, and a normal plugin
 * still produces its rows. Needs bwrap installed (.ci/run installs it): without it these
 * tests fail, they do not skip.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { runGuest } from "../core/bridge/host.js";
import type { SandboxOptions } from "../core/bridge/sandbox.js";
import { claimSlotUser, type SlotClaim } from "../core/bridge/slot-user.js";
import type { GuestRunOptions } from "../core/bridge/types.js";
import { Errors } from "../core/kernel/errors.js";
import type { Batch } from "../core/kernel/job.js";
import { silentLogger } from "../core/kernel/logger.js";
import { rejectsWith } from "./helpers/assert.js";
import { bareGuests, type BareGuests } from "./helpers/guests.js";
import { testJob } from "./helpers/pyenv.js";

const TIMEOUTS = { connectMs: 20_000, idleMs: 60_000, jobMs: 120_000 };
const SANDBOX: SandboxOptions = { tool: "bwrap", network: false, readOnlyRoot: true };
const logger = silentLogger();

let guests: BareGuests;
let root: string;
let interpreterPath: string;
let listener: Server;
let port: number;
let slot: SlotClaim;

before(async () => {
  // The venv, and the Python it links to, must be reachable by a slot user too (last test).
  process.env.UV_PYTHON = "/usr/bin/python3";
  guests = await bareGuests("sandbox", { logger, readableByOthers: true });
  ({ home: root, python: interpreterPath } = guests);
  listener = createServer((socket) => socket.end("hello from the host\n"));
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
  port = (listener.address() as { port: number }).port;
  slot = (await claimSlotUser({ users: { from: 61000, count: 184 }, logger }))!;
});

after(async () => {
  await slot?.release();
  await new Promise((resolve) => listener?.close(resolve));
  await guests?.close();
});

async function run(source: string, overrides: Partial<GuestRunOptions> = {}, filePath = "/dev/null") {
  const { job } = testJob(source, { filePath, logger });
  const batches: Batch[] = [];
  const result = await runGuest({ interpreterPath, job, timeouts: TIMEOUTS, onBatch: async (b) => void batches.push(b), sandbox: SANDBOX, ...overrides });
  return { result, rows: batches.flatMap((b) => b.table.toArray().map((row) => row.toJSON() as Record<string, unknown>)) };
}

const ATTEMPT = `
import os, socket
def attempt(action):
    try:
        return "got: " + str(action())[:200]
    except OSError as exc:
        return "refused: " + (exc.strerror or type(exc).__name__)
`;

function tcpProbe(): string {
  return `${ATTEMPT}
def fetch():
    with socket.create_connection(("127.0.0.1", ${port}), timeout=5) as conn:
        return conn.recv(100).decode().strip()
class Handler:
    def execute(self, path):
        return [{"tcp": attempt(fetch)}]
`;
}

describe("bridge.sandbox: bwrap", () => {
  test("bwrap is installed (.ci/run installs bubblewrap; without it the sandbox tests cannot run)", async () => {
    await stat("/usr/bin/bwrap");
  });

  test("network: false — a plugin cannot open a TCP connection to a listener on 127.0.0.1 (with network: true it can)", async () => {
    const off = await run(tcpProbe());
    assert.match(String(off.rows[0]!.tcp), /^refused: /, String(off.rows[0]!.tcp));
    const on = await run(tcpProbe(), { sandbox: { ...SANDBOX, network: true } });
    assert.equal(on.rows[0]!.tcp, "got: hello from the host");
  });

  test("readOnlyRoot — writes outside the job directory fail, the venv is read-only, /tmp is private and empty; the job directory is writable", async () => {
    const outside = await mkdtemp(join(root, "outside-"));
    await chmod(outside, 0o777);
    const hostTmpProbe = join("/tmp", `casparian-sandbox-probe-${randomBytes(6).toString("hex")}`);
    // A world-writable directory the sandbox shows (read-only); removed below should the sandbox fail.
    const varTmpProbe = join("/var/tmp", `casparian-sandbox-probe-${randomBytes(6).toString("hex")}`);
    const source = `${ATTEMPT}
def write(path):
    with open(path, "w") as handle:
        handle.write("x")
    return "written"
class Handler:
    def execute(self, path):
        return [{
            "outside": attempt(lambda: write(${JSON.stringify(join(outside, "planted.txt"))})),
            "var_tmp": attempt(lambda: write(${JSON.stringify(varTmpProbe)})),
            "venv": attempt(lambda: write(${JSON.stringify(join(dirname(dirname(interpreterPath)), "planted.py"))})),
            "etc": attempt(lambda: write("/etc/casparian-planted")),
            "tmp": attempt(lambda: write(${JSON.stringify(hostTmpProbe)})),
            "staging": attempt(lambda: write(os.path.join(os.getcwd(), "scratch.txt"))),
        }]
`;
    const { rows } = await run(source).finally(() => rm(varTmpProbe, { force: true }));
    const row = rows[0]!;
    // Other directories under the temp directory (other jobs' among them) are not even there.
    assert.equal(row.outside, "refused: No such file or directory");
    for (const key of ["var_tmp", "venv", "etc"]) assert.match(String(row[key]), /^refused: Read-only file system/, `${key}: ${String(row[key])}`);
    assert.equal(row.tmp, "got: written");
    assert.equal(row.staging, "got: written");
    await assert.rejects(stat(hostTmpProbe), { code: "ENOENT" }, "the plugin's /tmp is its own");
    await assert.rejects(stat(join(outside, "planted.txt")), { code: "ENOENT" });
  });

  test("a normal plugin still reads its input and produces its rows", async () => {
    const input = join(root, "input.csv");
    await writeFile(input, "a,1\nb,2\nc,3\n");
    const source = `
class Handler:
    def execute(self, path):
        with open(path) as handle:
            return [{"key": k, "value": int(v)} for k, v in (line.split(",") for line in handle.read().splitlines())]
`;
    const { rows, result } = await run(source, {}, input);
    assert.equal(result.rows, 3);
    assert.deepEqual(
      rows.map((r) => [r.key, Number(r.value)]),
      [
        ["a", 1],
        ["b", 2],
        ["c", 3],
      ],
    );
  });

  test("with a slot user: the sandboxed guest runs as that uid, still without network", async () => {
    const source = `${tcpProbe()}
Probe = Handler
class Handler(Probe):
    def execute(self, path):
        return [dict(super().execute(path)[0], uid=os.getuid())]
`;
    const { rows } = await run(source, { slotUser: { ...slot, required: true } });
    assert.equal(Number(rows[0]!.uid), slot.uid);
    assert.match(String(rows[0]!.tcp), /^refused: /);
  });

  test("a configured sandbox that cannot run fails the job with CSP_SANDBOX_UNAVAILABLE (never runs the plugin unconfined)", async () => {
    const err = await rejectsWith(
      run("class Handler:\n    def execute(self, path):\n        return [{'ran': 1}]\n", { sandbox: { ...SANDBOX, path: join(root, "no-bwrap") } }),
      Errors.SANDBOX_UNAVAILABLE.code,
    );
    assert.match(err.message, /no-bwrap is not an executable/);
  });
});
