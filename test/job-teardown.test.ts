/**
 * The teardown of finished jobs (core/bridge/job-teardown.ts), on real directories: what is
 * handed over is removed in the background, a removal that fails is logged with its code and
 * what was left (never lost), at most MAX_TEARDOWNS_IN_FLIGHT run at once, the settled point
 * waits for all of them, and a later guest's start waits for the private ones (a job directory).
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, rmdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { jobBegins } from "../core/bridge/job-dir.js";
import { jobTeardownsInFlight, jobTeardownsSettled, MAX_TEARDOWNS_IN_FLIGHT, privateLeftoversGone, tearDownInBackground } from "../core/bridge/job-teardown.js";
import { Errors } from "../core/kernel/errors.js";
import { silentLogger } from "../core/kernel/logger.js";
import { capturingLogger } from "./helpers/arrow.js";

let root: string;
let made = 0;

before(async () => {
  root = await mkdtemp(join(tmpdir(), "casparian-teardown-test-"));
});

after(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

/** A directory with a file in it, as a job leaves one. */
async function leftDirectory(): Promise<string> {
  const dir = join(root, `job-${made++}`);
  await mkdir(dir);
  await writeFile(join(dir, "plugin-source.py"), "print('hi')\n");
  return dir;
}

test("what is handed over is gone once settled; a removal that fails is logged with its code and what was left", async () => {
  const { logger, records } = capturingLogger();
  const removed = await leftDirectory();
  const stuck = await leftDirectory();
  await tearDownInBackground(
    [
      { what: `directory ${removed}`, remove: () => rm(removed, { recursive: true, force: true }), private: true },
      // rmdir of a directory that is not empty fails (ENOTEMPTY), as a real removal can.
      { what: `cgroup ${stuck}`, remove: () => rmdir(stuck) },
    ],
    logger,
  );
  await jobTeardownsSettled();
  assert.equal(jobTeardownsInFlight(), 0);
  assert.equal(existsSync(removed), false, "the directory was removed");
  assert.equal(existsSync(stuck), true, "the failed removal left its directory");
  const failures = records.filter((r) => r.code === Errors.JOB_TEARDOWN_FAILED.code);
  assert.equal(failures.length, 1, JSON.stringify(records));
  const failure = failures[0]!;
  assert.equal(failure.level, 40, "a warning");
  assert.match(String(failure.msg), new RegExp(`cgroup ${stuck}.*ENOTEMPTY`));
  assert.ok(typeof failure.hint === "string" && failure.hint.length > 0, "with a hint");
});

test(`at most ${MAX_TEARDOWNS_IN_FLIGHT} teardowns run at once: one more begins when one ends, and settling waits for every one`, async () => {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const dirs: string[] = [];
  for (let i = 0; i < MAX_TEARDOWNS_IN_FLIGHT + 3; i++) dirs.push(await leftDirectory());
  const begun: boolean[] = dirs.map(() => false);
  const handing = dirs.map((dir, i) =>
    tearDownInBackground(
      [
        {
          what: `directory ${dir}`,
          remove: async () => {
            await gate;
            await rm(dir, { recursive: true, force: true });
          },
        },
      ],
      silentLogger(),
    ).then(() => (begun[i] = true)),
  );
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(jobTeardownsInFlight(), MAX_TEARDOWNS_IN_FLIGHT);
  assert.deepEqual(
    begun.map((b, i) => (b ? i : -1)).filter((i) => i >= 0),
    dirs.slice(0, MAX_TEARDOWNS_IN_FLIGHT).map((_, i) => i),
    "the ones beyond the bound wait for room",
  );
  let settled = false;
  const settling = jobTeardownsSettled().then(() => (settled = true));
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(settled, false, "not settled while removals wait");
  open();
  await Promise.all(handing);
  await settling;
  assert.equal(jobTeardownsInFlight(), 0);
  assert.deepEqual(
    dirs.filter((dir) => existsSync(dir)),
    [],
    "every directory is gone once settled",
  );
});

test("a job's guest starts only once the directories of jobs that ended before are gone; a cgroup's removal does not hold it", async () => {
  const directory = await leftDirectory();
  const cgroupLike = await leftDirectory();
  let openDir!: () => void;
  let openCgroup!: () => void;
  const dirGate = new Promise<void>((resolve) => (openDir = resolve));
  const cgroupGate = new Promise<void>((resolve) => (openCgroup = resolve));
  await tearDownInBackground(
    [
      {
        what: `directory ${directory}`,
        remove: async () => {
          await dirGate;
          await rm(directory, { recursive: true, force: true });
        },
        private: true,
      },
      {
        what: `cgroup ${cgroupLike}`,
        remove: async () => {
          await cgroupGate;
          await rm(cgroupLike, { recursive: true, force: true });
        },
      },
    ],
    silentLogger(),
  );
  const ticket = jobBegins();
  try {
    let started = false;
    const starting = ticket.starting().then(() => (started = true));
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(started, false, "the guest waits while an earlier job's directory is there");
    openDir();
    await starting;
    assert.equal(existsSync(directory), false, "that directory is gone when the guest starts");
    assert.equal(existsSync(cgroupLike), true, "the cgroup's removal still runs meanwhile");
    await privateLeftoversGone();
  } finally {
    ticket.end();
    openCgroup();
    await jobTeardownsSettled();
  }
  assert.equal(existsSync(cgroupLike), false);
});
