/**
 * All or nothing across a job's sinks when the worker is killed (SIGKILL) between two
 * commits: real worker processes (node bin/casparian-worker.js) behind a test Sentinel,
 * a real Python guest in a real uv env, the bundled Parquet sink and the example SQLite
 * sink (loaded from its config) in one job, or the example PostgreSQL sink on a real server. The kill comes from the test-only fault point
 * CASPARIAN_TEST_KILL_AT (core/pipeline/sink-commit.ts). The next worker to start on the
 * same output root rolls the commit back (or forward, once the journal said "committed"),
 * and the Sentinel's retry of the job (same job id, as upstream's requeue does) writes
 * every output once.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test, type TestContext } from "node:test";
import { tableFromIPC } from "apache-arrow";
import Database from "better-sqlite3";
import { packageRoot } from "../core/kernel/paths.js";
import { Opcode, type DispatchCommand } from "../core/protocol/messages.js";
import { readRowGroups } from "../sinks/parquet-engine.js";
import { startPostgres, type PostgresServer } from "./helpers/postgres.js";
import { TestSentinel } from "./helpers/sentinel.js";
import { spawnWorker, type SpawnedWorker } from "./helpers/spawn-worker.js";

const ENV_LOCK = join(packageRoot(), "test", "fixtures", "worker-env", "uv.lock");
const SQLITE_CONFIG = join(packageRoot(), "examples", "sqlite-sink.config.ts");

/** A plugin publishing `rows` rows to topic "a" and the same to topic "b". */
function plugin(rows: number): string {
  return [
    "class Handler:",
    "    def configure(self, ctx, config):",
    "        self.ctx = ctx",
    '        self.a = ctx.register_topic("a")',
    '        self.b = ctx.register_topic("b")',
    "",
    "    def execute(self, file_path):",
    `        rows = {"id": list(range(${rows}))}`,
    "        self.ctx.publish(self.a, rows)",
    "        self.ctx.publish(self.b, rows)",
    "        return []",
    "",
  ].join("\n");
}

function command(envHash: string, rows: number, second = "sqlite://w.db/t"): DispatchCommand {
  return {
    plugin_name: "two_sinks",
    file_path: ENV_LOCK,
    sinks: [
      { topic: "a", uri: "parquet://a.parquet", mode: "replace", schema_def: null },
      { topic: "b", uri: second, mode: "replace", schema_def: null },
    ],
    file_version_id: 5n,
    env_hash: envHash,
    source_code: plugin(rows),
    artifact_hash: null,
  };
}

interface Rig {
  sentinel: TestSentinel;
  home: string;
  output: string;
  envHash: string;
  /** A worker on the shared home and output root, connected (its IDENTIFY taken). */
  start(env?: NodeJS.ProcessEnv): Promise<{ worker: SpawnedWorker; peer: Buffer }>;
}

async function rig(t: TestContext, config = SQLITE_CONFIG): Promise<Rig> {
  const base = await mkdtemp(join(tmpdir(), "casparian-commit-crash-"));
  const sentinel = await TestSentinel.bind();
  const workers: SpawnedWorker[] = [];
  t.after(async () => {
    for (const worker of workers) await worker.dispose();
    await sentinel.close();
    await rm(base, { recursive: true, force: true });
  });
  const home = join(base, "home");
  const output = join(base, "output");
  const lockfile = await readFile(ENV_LOCK, "utf8");
  const envHash = createHash("sha256").update(lockfile).digest("hex");
  const start = async (env: NodeJS.ProcessEnv = {}) => {
    const worker = await spawnWorker({
      home,
      env,
      args: ["--connect", sentinel.endpoint, "--heartbeat-interval", "0.2", "--output", output, "--config", config],
    });
    workers.push(worker);
    const identify = await sentinel.expect(Opcode.IDENTIFY, { timeoutMs: 20_000 });
    await sentinel.send(identify.identity, Opcode.PREPARE_ENV, 0n, { env_hash: envHash, lockfile_content: lockfile, python_version: null });
    await sentinel.expect(Opcode.ENV_READY, { timeoutMs: 120_000 });
    return { worker, peer: identify.identity };
  };
  return { sentinel, home, output, envHash, start };
}

/** What a reader sees: the Parquet file's rows and job ids, the table's rows and ledger. */
async function visible(output: string): Promise<{ parquet: string; sqlite: string }> {
  let rows = 0;
  const jobs = new Set<string>();
  for await (const ipc of readRowGroups(join(output, "a.parquet"))) {
    const table = tableFromIPC(ipc);
    rows += table.numRows;
    for (const id of table.getChild("_job_id")!) jobs.add(String(id));
  }
  const db = new Database(join(output, "w.db"), { readonly: true });
  try {
    const count = (db.prepare('SELECT count(*) AS n FROM "t"').get() as { n: number }).n;
    const ledger = db.prepare("SELECT job_id || ':' || rows AS e FROM _casparian_inputs WHERE target = 't'").all() as Array<{ e: string }>;
    return { parquet: `${rows} rows of job ${[...jobs].join(",")}`, sqlite: `${count} rows, ledger ${ledger.map((r) => r.e).join(",")}` };
  } finally {
    db.close();
  }
}

const state = (rows: number, jobId: bigint) => ({ parquet: `${rows} rows of job ${jobId}`, sqlite: `${rows} rows, ledger ${jobId}:${rows}` });

/** Hidden files of the output root (staging, backups, journals) and the database's undo tables. */
async function leftovers(output: string): Promise<string[]> {
  const names = (await readdir(output, { recursive: true })).filter((n) => n.split("/").pop()!.startsWith("."));
  const db = new Database(join(output, "w.db"), { readonly: true });
  try {
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE name LIKE '\\_casparian\\_undo%' ESCAPE '\\'").all() as Array<{ name: string }>;
    return [...names, ...tables.map((r) => r.name)];
  } finally {
    db.close();
  }
}

async function conclude(r: Rig, peer: Buffer, jobId: bigint, rows: number, second?: string): Promise<void> {
  await r.sentinel.send(peer, Opcode.DISPATCH, jobId, command(r.envHash, rows, second));
  const answer = await r.sentinel.expect(Opcode.CONCLUDE, { jobId, timeoutMs: 60_000 });
  assert.equal(answer.message.payload.status, "SUCCESS", answer.message.payload.error_message ?? "");
}

/**
 * Job 1 (3 rows) succeeds; job 2 (5 rows) is killed at `killAt`; a fresh worker recovers;
 * the Sentinel retries job 2. Returns what was visible right after the kill and after recovery.
 */
async function crashScenario(t: TestContext, killAt: string) {
  const r = await rig(t);
  const first = await r.start();
  await conclude(r, first.peer, 1n, 3);
  assert.deepEqual(await visible(r.output), state(3, 1n));
  await first.worker.dispose();

  const doomed = await r.start({ CASPARIAN_TEST_KILL_AT: killAt });
  await r.sentinel.send(doomed.peer, Opcode.DISPATCH, 2n, command(r.envHash, 5));
  assert.deepEqual(await doomed.worker.exit(60_000), { code: null, signal: "SIGKILL" });
  assert.equal(
    r.sentinel.received.filter((m) => m.message?.opcode === Opcode.CONCLUDE && m.message.jobId === 2n).length,
    0,
    "the killed worker never answered job 2",
  );
  const afterKill = await visible(r.output);
  const journals = (await readdir(r.output)).filter((n) => n.startsWith(".casparian-commit-"));
  assert.equal(journals.length, 1, "the killed job's commit is journaled");

  const recovering = await r.start();
  const afterRecovery = await visible(r.output);
  assert.deepEqual(await leftovers(r.output), [], "recovery leaves no journal, backup, staging or undo table");
  const resolved = recovering.worker.logs.find((l) => /commit interrupted by a crash/.test(String(l.msg)));
  assert.ok(resolved, recovering.worker.tail());

  // The Sentinel's retry (same job id): each output holds job 2's rows once.
  await conclude(r, recovering.peer, 2n, 5);
  assert.deepEqual(await visible(r.output), state(5, 2n));
  assert.deepEqual(await leftovers(r.output), []);
  return { afterKill, afterRecovery, resolved };
}

describe("kill -9 between a job's sink commits", { timeout: 300_000 }, () => {
  test("killed after the Parquet commit, before the SQLite one: recovery rolls the Parquet file back to job 1's", async (t) => {
    const { afterKill, afterRecovery, resolved } = await crashScenario(t, "commit-sink:1");
    assert.deepEqual(afterKill, { parquet: "5 rows of job 2", sqlite: "3 rows, ledger 1:3" }, "the kill came between the two commits");
    assert.deepEqual(afterRecovery, state(3, 1n));
    assert.match(String(resolved.msg), /rolled back/);
  });

  test("killed after both commits, before the journal said committed: recovery rolls both back", async (t) => {
    const { afterKill, afterRecovery, resolved } = await crashScenario(t, "commit-sink:2");
    assert.deepEqual(afterKill, state(5, 2n));
    assert.deepEqual(afterRecovery, state(3, 1n));
    assert.match(String(resolved.msg), /rolled back/);
  });

  test("killed once the journal said committed: recovery rolls forward, and the retry duplicates nothing", async (t) => {
    const { afterKill, afterRecovery, resolved } = await crashScenario(t, "commit-committed");
    assert.deepEqual(afterKill, state(5, 2n));
    assert.deepEqual(afterRecovery, state(5, 2n));
    assert.match(String(resolved.msg), /finished/);
  });
});

describe("kill -9 between a job's sink commits, PostgreSQL beside Parquet", { timeout: 300_000 }, () => {
  let server: PostgresServer;
  before(async () => {
    server = await startPostgres();
  });
  after(() => server?.stop());

  test("killed after both commits: the next worker rolls both back, connecting as the sink options say; the retry writes once", async (t) => {
    const dir = await mkdtemp(join(tmpdir(), "casparian-commit-crash-pg-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const config = join(dir, "casparian.config.mjs");
    const options = { connectionString: `postgres://postgres@127.0.0.1:${server.port}/postgres` };
    await writeFile(config, `export default ${JSON.stringify({ sinks: [{ use: join(packageRoot(), "examples", "postgres-sink.ts"), options }] })};\n`);
    const table = `postgres://postgres@127.0.0.1:${server.port}/postgres/public.t`;
    const r = await rig(t, config);
    const seen = async () => {
      let rows = 0;
      for await (const ipc of readRowGroups(join(r.output, "a.parquet"))) rows += tableFromIPC(ipc).numRows;
      const count = Number((await server.query<{ n: string }>('SELECT count(*) AS n FROM public."t"'))[0]!.n);
      const ledger = await server.query<{ e: string }>("SELECT job_id || ':' || rows AS e FROM public._casparian_inputs WHERE target = 't'");
      const undo = await server.query("SELECT relname FROM pg_class WHERE relname LIKE '\\_casparian\\_undo%'");
      return `parquet ${rows}, table ${count}, ledger ${ledger.map((l) => l.e).join(",")}, undo tables ${undo.length}`;
    };

    const first = await r.start();
    await conclude(r, first.peer, 1n, 3, table);
    await first.worker.dispose();
    const doomed = await r.start({ CASPARIAN_TEST_KILL_AT: "commit-sink:2" });
    await r.sentinel.send(doomed.peer, Opcode.DISPATCH, 2n, command(r.envHash, 5, table));
    assert.deepEqual(await doomed.worker.exit(60_000), { code: null, signal: "SIGKILL" });
    assert.equal(await seen(), "parquet 5, table 5, ledger 2:5, undo tables 3", "both sinks had committed job 2 when it was killed");

    const recovering = await r.start();
    assert.equal(await seen(), "parquet 3, table 3, ledger 1:3, undo tables 0");
    assert.deepEqual(
      (await readdir(r.output)).filter((n) => n.startsWith(".")),
      [],
    );
    await conclude(r, recovering.peer, 2n, 5, table);
    assert.equal(await seen(), "parquet 5, table 5, ledger 2:5, undo tables 0");
  });
});
