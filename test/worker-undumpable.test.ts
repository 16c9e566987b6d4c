/**
 * The worker makes itself not dumpable (core/kernel/dumpable.ts): another process of its uid,
 * such as a plugin outside its guest's confinement, reads nothing of the worker's
 * /proc/<pid>/environ and cannot ptrace it, while the same reader can do both to a dumpable
 * process of that uid. Run as root, the worker and the reader run as an unprivileged uid:
 * a reader keeping root's CAP_SYS_PTRACE passes the kernel's check whatever dumpable says
 * (which is why a root guest drops its capabilities), so root would prove nothing here.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { chown, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { packageRoot } from "../core/kernel/paths.js";

const NOBODY = 65534;
const uid = process.getuid?.() === 0 ? NOBODY : process.getuid!();
const gid = process.getuid?.() === 0 ? NOBODY : process.getgid!();
const secret = `hunter2-${process.pid}-${Date.now()}`;

let dir: string;
const children: ChildProcess[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "casparian-undumpable-"));
  for (const sub of ["home", "output"]) await mkdir(join(dir, sub));
  for (const path of [dir, join(dir, "home"), join(dir, "output")]) await chown(path, uid, gid);
});

after(async () => {
  for (const child of children) child.kill("SIGKILL");
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Starts `args` under node as the test uid, with the secret in its environment. */
function start(args: string[]): ChildProcess {
  const child = spawn(process.execPath, args, {
    uid,
    gid,
    cwd: dir,
    env: { PATH: process.env.PATH, HOME: dir, CASPARIAN_HOME: join(dir, "home"), CASPARIAN_TEST_SECRET: secret },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  return child;
}

function untilLine(child: ChildProcess, pattern: RegExp, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const seen: string[] = [];
    const timer = setTimeout(() => reject(new Error(`no line matching ${pattern} within ${ms} ms; saw:\n${seen.join("\n")}`)), ms);
    for (const stream of [child.stdout!, child.stderr!]) {
      createInterface({ input: stream }).on("line", (line) => {
        seen.push(line);
        if (pattern.test(line)) {
          clearTimeout(timer);
          resolve();
        }
      });
    }
    child.once("exit", (code) => reject(new Error(`exited (${code}) first; saw:\n${seen.join("\n")}`)));
  });
}

// Reads each pid's environment and tries PTRACE_SEIZE (attach without stopping) on it, as the same uid.
const READER = `
const { readFileSync } = require("node:fs");
const koffi = require(${JSON.stringify(join(packageRoot(), "node_modules", "koffi"))});
const ptrace = koffi.load("libc.so.6").func("long ptrace(int request, int pid, void *addr, void *data)");
const out = {};
for (const pid of process.argv.slice(1).map(Number)) {
  let environ;
  try { environ = readFileSync("/proc/" + pid + "/environ", "latin1"); } catch (err) { environ = "refused: " + err.code; }
  const seized = ptrace(0x4206, pid, null, null);
  const errno = koffi.errno();
  if (seized === 0) ptrace(17, pid, null, null); // PTRACE_DETACH
  out[pid] = { environ, seized, errno };
}
process.stdout.write(JSON.stringify(out));
`;

test("a process of the worker's uid can read neither the worker's environment nor ptrace it; a dumpable one it can", async () => {
  const worker = start([
    join(packageRoot(), "bin", "casparian-worker.js"),
    "--connect",
    "tcp://127.0.0.1:9",
    "--output",
    join(dir, "output"),
    "--worker-id",
    "undumpable",
  ]);
  await untilLine(worker, /starting worker/, 30_000);
  const control = start(["-e", "setInterval(() => {}, 1000); console.log('ready')"]);
  await untilLine(control, /^ready$/, 30_000);

  const reader = spawnSync(process.execPath, ["-e", READER, String(worker.pid), String(control.pid)], { uid, gid, env: {}, encoding: "utf8", timeout: 30_000 });
  assert.equal(reader.status, 0, reader.stderr);
  const seen = JSON.parse(reader.stdout) as Record<string, { environ: string; seized: number; errno: number }>;
  const ofControl = seen[String(control.pid)]!;
  const ofWorker = seen[String(worker.pid)]!;

  // The reader can do both to a dumpable process of its uid: what stops it below is the worker's own doing.
  assert.ok(ofControl.environ.includes(secret), `reader could not read a dumpable process: ${ofControl.environ.slice(0, 80)}`);
  assert.equal(ofControl.seized, 0, `reader could not ptrace a dumpable process (errno ${ofControl.errno})`);

  assert.ok(!ofWorker.environ.includes(secret), "the reader got the worker's secret");
  assert.equal(ofWorker.environ, "refused: EACCES");
  assert.equal(ofWorker.seized, -1, "attaching to the worker with ptrace must fail");
  assert.equal(ofWorker.errno, 1, "EPERM");
});
