/**
 * Resource limits of the guest (bridge.limits, core/bridge/limits.ts), with real guests,
 * fresh and warm: a plugin that goes over one fails its job with CSP_GUEST_LIMIT naming the
 * limit and its config key, cannot raise it again, and the next job runs.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { runGuest } from "../core/bridge/host.js";
import type { GuestLimits } from "../core/bridge/limits.js";
import type { GuestRunOptions } from "../core/bridge/types.js";
import type { WarmPool } from "../core/bridge/warm-pool.js";
import { Errors } from "../core/kernel/errors.js";
import type { Batch, JobCommand } from "../core/kernel/job.js";
import { silentLogger } from "../core/kernel/logger.js";
import { Pipeline } from "../core/pipeline/pipeline.js";
import { rejectsWith } from "./helpers/assert.js";
import { bareGuests, guestModes, inputFile, type BareGuests } from "./helpers/guests.js";
import { testJob } from "./helpers/pyenv.js";

const TIMEOUTS = { connectMs: 30_000, idleMs: 60_000, jobMs: 60_000 };

let guests: BareGuests;
let home: string;
let python: string;
let pool: WarmPool;

before(async () => {
  guests = await bareGuests("guest-limits");
  ({ home, python, pool } = guests);
});

after(() => guests?.close());

async function run(source: string, limits: GuestLimits, options: Partial<GuestRunOptions> = {}) {
  const { job } = testJob(source, { filePath: await inputFile(home) });
  const batches: Batch[] = [];
  const result = await runGuest({ interpreterPath: python, job, timeouts: TIMEOUTS, limits, onBatch: async (b) => void batches.push(b), ...options });
  return { result, rows: batches.flatMap((b) => b.table.toArray().map((row) => row.toJSON() as Record<string, unknown>)) };
}

const ALLOCATES_2_GIB = `
class Handler:
    def execute(self, path):
        hog = bytearray(2 * 1024 ** 3)
        return [{"n": len(hog)}]
`;

const BURNS_CPU = `
class Handler:
    def execute(self, path):
        n = 0
        while True:
            n += 1
`;

const OPENS_FILES = `
class Handler:
    def execute(self, path):
        kept = [open(path) for _ in range(500)]
        return [{"n": len(kept)}]
`;

const WRITES_4_MIB = `
class Handler:
    def execute(self, path):
        with open("big.bin", "wb") as out:
            for _ in range(4):
                out.write(b"x" * 1024 * 1024)
        return [{"n": 1}]
`;

// What a plugin finds when it tries to lift its limits again (every one must refuse).
const RAISES_LIMITS = `
import resource
class Handler:
    def execute(self, path):
        tried = {}
        for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_FSIZE"):
            which = getattr(resource, name)
            soft, hard = resource.getrlimit(which)
            try:
                resource.setrlimit(which, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                tried[name] = "raised"
            except (ValueError, OSError) as exc:
                tried[name] = "refused: %s" % exc
        return [{"limit": k, "outcome": v} for k, v in sorted(tried.items())]
`;

const SMALL: GuestLimits = { addressSpaceMb: 1024, cpuSeconds: 1, openFiles: 64, fileSizeMb: 1 };
const FINE = `
class Handler:
    def execute(self, path):
        return [{"ok": 1}]
`;

const MODES = guestModes(() => pool);

for (const mode of MODES) {
  describe(`${mode.name}: bridge.limits`, () => {
    const cases: Array<{ what: string; source: string; key: keyof GuestLimits; message: RegExp }> = [
      {
        what: "allocates beyond its address space",
        source: ALLOCATES_2_GIB,
        key: "addressSpaceMb",
        message: /address space limit \(1024 MiB, bridge\.limits\.addressSpaceMb\): MemoryError/,
      },
      {
        what: "burns CPU past 1 s",
        source: BURNS_CPU,
        key: "cpuSeconds",
        message: /CPU time limit \(1 s, bridge\.limits\.cpuSeconds\): the guest was stopped by SIGXCPU/,
      },
      {
        what: "opens too many files",
        source: OPENS_FILES,
        key: "openFiles",
        message: /open files limit \(64, bridge\.limits\.openFiles\): OSError: \[Errno 24\] Too many open files/,
      },
      {
        what: "writes a too large file",
        source: WRITES_4_MIB,
        key: "fileSizeMb",
        message: /file size limit \(1 MiB, bridge\.limits\.fileSizeMb\): OSError: \[Errno 27\] File too large/,
      },
    ];
    for (const { what, source, key, message } of cases) {
      test(`a plugin that ${what} fails with CSP_GUEST_LIMIT naming bridge.limits.${key}; the next job runs`, async () => {
        const err = await rejectsWith(run(source, SMALL, mode.options()), Errors.GUEST_LIMIT.code);
        assert.match(err.message, message);
        assert.equal(err.context.limit, key);
        assert.match(err.hint ?? "", new RegExp(`raise bridge\\.limits\\.${key}`));
        const next = await run(FINE, SMALL, mode.options());
        assert.equal(next.result.rows, 1);
      });
    }

    test("a plugin cannot raise its limits again", async () => {
      const { rows } = await run(RAISES_LIMITS, SMALL, mode.options());
      assert.equal(rows.length, 4);
      for (const row of rows) assert.match(String(row.outcome), /^refused: /, `${row.limit}: ${row.outcome}`);
    });
  });
}

describe("from the config", () => {
  test("bridge.limits reaches the guest through the pipeline: the receipt fails with CSP_GUEST_LIMIT", async () => {
    const envs = { acquire: async (envHash: string) => ({ envHash, interpreterPath: python, release: () => undefined }) };
    const pipeline = new Pipeline({ logger: silentLogger(), outputRoot: home, workerId: "w", envs, bridge: { limits: { fileSizeMb: 1 } }, warm: pool });
    const input = await inputFile(home, "x\n", "from-config.txt");
    const command: JobCommand = {
      pluginName: "big",
      filePath: input,
      sinks: [],
      fileVersionId: 1n,
      envHash: "0".repeat(64),
      sourceCode: WRITES_4_MIB,
      artifactHash: null,
    };
    const receipt = await pipeline.runJob({ jobId: 7n, command, logger: silentLogger(), signal: new AbortController().signal });
    assert.equal(receipt.status, "FAILED");
    assert.match(receipt.errorMessage ?? "", /CSP_GUEST_LIMIT.*file size limit \(1 MiB, bridge\.limits\.fileSizeMb\)/);
  });
});

describe("limits off", () => {
  test("false lifts a limit: the same file-writing plugin succeeds", async () => {
    const { result } = await run(WRITES_4_MIB, { ...SMALL, fileSizeMb: false });
    assert.equal(result.rows, 1);
  });
});
