/**
 * The run state: what `casparian run` knows about the inputs it has processed into one
 * output directory, in `<output>/.casparian/state.db` (SQLite through better-sqlite3,
 * WAL journal, synchronous=NORMAL: a commit survives the process being killed; a power
 * loss may undo the last ones, which only makes the next run process those inputs again).
 *
 * Per input, keyed by its absolute path: its output name (assigned once, then stable),
 * the identity it had when it was last processed successfully (size, mtime, SHA-256 of
 * its content, file_version_id), the recipe that processed it (plugin source, lockfile
 * hash, sinks, plugin config), the job, the last outcome, and every output it has in
 * the output: per topic a file below the output root or a sink URI, with rows and bytes.
 *
 * Promotion is crash-safe through a redo log:
 *   1. one transaction records the intent: the moves (staged file → final file), the
 *      removals (the input's earlier files the new outputs do not overwrite) and the
 *      record to write;
 *   2. the files are moved and removed (each step idempotent);
 *   3. one transaction writes the record and the outputs and deletes the intent.
 * A run killed anywhere between 1 and 3 leaves the intent; the next run over this output
 * finishes it before anything else (the staged files of the dead run are still in its
 * staging directory, which is removed only afterwards), so files and state agree again.
 *
 * One run at a time per output: a lock row holds the pid of the run using it.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import { dirname, join } from "node:path";
import Database from "better-sqlite3";
import { Errors } from "../kernel/errors.js";
import { assertInsideRootSync, makeDirectoryInsideRootSync } from "../kernel/inside-root.js";
import { isProcessAlive } from "../kernel/process.js";

export const STATE_DIR = ".casparian";
const SCHEMA_VERSION = "1";

/** What is known about one input. Identity fields are null until it first succeeded. */
export interface InputRecord {
  path: string;
  name: string;
  size: number | null;
  mtimeNs: string | null;
  contentSha256: string | null;
  fileVersionId: bigint | null;
  recipe: string | null;
  jobId: bigint | null;
  lastOutcome: "succeeded" | "failed" | null;
  lastError: string | null;
}

/** One output of one input. */
export interface OutputRecord {
  topic: string;
  /** The sink as configured (placeholders filled in), to tell sinks apart. */
  sink: string;
  mode: string;
  /** Where the output is: the artifact URI the sink reported. */
  uri: string;
  /** The file, relative to the output root, when the run manages it; else null (a database). */
  file: string | null;
  /** Decimal. */
  fileVersionId: string;
  rows: number;
  bytes: number | null;
}

export interface Move {
  /** Absolute path of the staged file (in a worker's private root). */
  from: string;
  /** Relative to the output root. */
  to: string;
}

export interface Promotion {
  input: string;
  moves: Move[];
  /** Files relative to the output root. */
  removals: string[];
  record: {
    size: number;
    mtimeNs: string;
    contentSha256: string;
    /** Decimal, as are all ids in the state. */
    fileVersionId: string;
    recipe: string;
    jobId: string;
  };
  /** Every output the input has once promoted (kept earlier ones included). */
  outputs: OutputRecord[];
}

export interface TopicTotals {
  topic: string;
  /** Inputs with output in the topic. */
  inputs: number;
  files: number;
  rows: number;
  bytes: number | null;
  /** Top-level directories (relative to the output root) holding the topic's files. */
  dirs: string[];
  /** Where the topic's other outputs are (database tables). */
  uris: string[];
}

/** A fault point for the crash tests: the run kills itself with SIGKILL there. */
const KILL_AT = process.env.CASPARIAN_TEST_KILL_AT;

export class RunState {
  readonly outputRoot: string;
  readonly path: string;
  readonly #db: Database.Database;
  /** Prepared once per SQL text: preparing costs more than running these one-row statements. */
  readonly #statements = new Map<string, Database.Statement>();
  #promotions = 0;

  private constructor(outputRoot: string, db: Database.Database, path: string) {
    this.outputRoot = outputRoot;
    this.#db = db;
    this.path = path;
  }

  #sql(text: string): Database.Statement {
    let statement = this.#statements.get(text);
    if (statement === undefined) this.#statements.set(text, (statement = this.#db.prepare(text)));
    return statement;
  }

  /** Opens (creating) the state of `outputRoot`, takes the lock, finishes interrupted promotions. */
  static open(outputRoot: string): RunState {
    const dir = join(outputRoot, STATE_DIR);
    mkdirSync(dir, { recursive: true });
    const path = join(dir, "state.db");
    const db = new Database(path);
    try {
      db.pragma("journal_mode = WAL");
      db.pragma("synchronous = NORMAL");
      db.pragma("busy_timeout = 5000");
      db.pragma("foreign_keys = ON");
      migrate(db, path);
    } catch (err) {
      db.close();
      throw err;
    }
    const state = new RunState(outputRoot, db, path);
    try {
      state.#lock();
      state.#recover();
    } catch (err) {
      db.close();
      throw err;
    }
    return state;
  }

  #lock(): void {
    this.#db
      .transaction(() => {
        const held = this.#sql("SELECT pid FROM lock WHERE id = 1").get() as { pid: number } | undefined;
        if (held !== undefined && held.pid !== process.pid && isProcessAlive(held.pid)) {
          throw Errors.CLI_USAGE([`another casparian run (pid ${held.pid}) is writing to ${this.outputRoot}`], {
            hint: "wait for it to finish, or use another --output",
          });
        }
        this.#sql("INSERT INTO lock (id, pid) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET pid = excluded.pid").run(process.pid);
      })
      .immediate();
  }

  /** Redo every promotion a killed run left half done. */
  #recover(): void {
    const pending = this.#sql("SELECT input, plan FROM promotions").all() as Array<{ input: string; plan: string }>;
    for (const row of pending) {
      const promotion = decodePromotion(row.plan);
      for (const dir of this.#apply(promotion)) fsyncDirectorySync(dir);
      this.#finish(promotion);
      this.recovered++;
    }
  }

  /** Promotions a killed run had left half done, finished when this state was opened. */
  recovered = 0;

  lookup(path: string): InputRecord | undefined {
    const row = this.#sql("SELECT * FROM inputs WHERE path = ?").get(path) as InputRow | undefined;
    return row === undefined ? undefined : toRecord(row);
  }

  /**
   * The input's output name: the one it was given the first time it was seen, else
   * `derived`, reserved for it now. Throws when `derived` already belongs to another input.
   */
  /** nameFor for many inputs in one transaction (one commit instead of one per input). */
  namesFor(inputs: ReadonlyArray<{ path: string; derived: string }>): string[] {
    return this.#db.transaction(() => inputs.map(({ path, derived }) => this.nameFor(path, derived)))();
  }

  nameFor(path: string, derived: string): string {
    const existing = this.#sql("SELECT name FROM inputs WHERE path = ?").get(path) as { name: string } | undefined;
    if (existing !== undefined) return existing.name;
    const owner = this.#sql("SELECT path FROM inputs WHERE name = ?").get(derived) as { path: string } | undefined;
    if (owner !== undefined) {
      throw Errors.CLI_USAGE([`input ${path} would be written under the name ${JSON.stringify(derived)}, which belongs to ${owner.path} in this output`], {
        hint: "use another --output for one of them",
      });
    }
    this.#sql("INSERT INTO inputs (path, name) VALUES (?, ?)").run(path, derived);
    return derived;
  }

  outputsOf(path: string): OutputRecord[] {
    const rows = this.#sql("SELECT * FROM outputs WHERE input = ? ORDER BY rowid").all(path) as OutputRow[];
    return rows.map(toOutput);
  }

  /** Records the content hash of an unchanged input whose mtime moved (touched, not edited). */
  touch(path: string, size: number, mtimeNs: string): void {
    this.#sql("UPDATE inputs SET size = ?, mtime_ns = ? WHERE path = ?").run(size, mtimeNs, path);
  }

  /**
   * Steps 1 to 3 of a promotion (see the module comment). Throws at once when a target leads
   * out of the root (nothing recorded, nothing moved); resolves once the record is written.
   * The moves are made durable (their directories fsynced) off the main thread, so the run
   * goes on dispatching meanwhile; promotions still run one at a time, in call order.
   */
  promote(promotion: Promotion): Promise<void> {
    // Refused before the intent is recorded: a target directory leading out of the output root
    // fails this input with SINK_PATH_ESCAPE, and nothing is created outside the root.
    for (const move of promotion.moves) makeDirectoryInsideRootSync(this.outputRoot, dirname(join(this.outputRoot, move.to)), { uri: move.to });
    const done = this.#lastPromotion.then(() => this.#promoteNow(promotion));
    this.#lastPromotion = done.catch(() => undefined);
    return done;
  }

  #lastPromotion: Promise<void> = Promise.resolve();

  async #promoteNow(promotion: Promotion): Promise<void> {
    this.#sql("INSERT INTO promotions (input, plan) VALUES (?, ?) ON CONFLICT (input) DO UPDATE SET plan = excluded.plan").run(
      promotion.input,
      encodePromotion(promotion),
    );
    this.#promotions++;
    if (KILL_AT === `promote-logged:${this.#promotions}`) process.kill(process.pid, "SIGKILL");
    const dirs = this.#apply(promotion);
    await Promise.all([...dirs].map(fsyncDirectory));
    if (KILL_AT === `promote-moved:${this.#promotions}`) process.kill(process.pid, "SIGKILL");
    this.#finish(promotion);
  }

  recordFailure(path: string, jobId: bigint | null, error: string): void {
    this.#sql("UPDATE inputs SET last_outcome = 'failed', last_error = ?, last_job_id = ?, last_at = ? WHERE path = ?").run(
      error,
      jobId?.toString() ?? null,
      new Date().toISOString(),
      path,
    );
  }

  /** A file the run rewrote after promoting it (one schema per topic directory): its size changed. */
  recordRewrittenFile(file: string, bytes: number): void {
    this.#sql("UPDATE outputs SET bytes = ? WHERE file = ?").run(bytes, file);
  }

  /** Per topic, what the output holds: every input's current outputs. */
  totals(): TopicTotals[] {
    const rows = this.#sql("SELECT input, topic, file, uri, rows, bytes FROM outputs ORDER BY topic").all() as Array<{
      input: string;
      topic: string;
      file: string | null;
      uri: string;
      rows: number;
      bytes: number | null;
    }>;
    const byTopic = new Map<string, TopicTotals & { inputSet: Set<string> }>();
    for (const row of rows) {
      let entry = byTopic.get(row.topic);
      if (entry === undefined)
        byTopic.set(row.topic, (entry = { topic: row.topic, inputs: 0, files: 0, rows: 0, bytes: null, dirs: [], uris: [], inputSet: new Set() }));
      entry.inputSet.add(row.input);
      entry.rows += row.rows;
      if (row.bytes !== null) entry.bytes = (entry.bytes ?? 0) + row.bytes;
      if (row.file !== null) {
        entry.files++;
        const slash = row.file.indexOf("/");
        const dir = slash < 0 ? "" : row.file.slice(0, slash);
        if (!entry.dirs.includes(dir)) entry.dirs.push(dir);
      } else if (!entry.uris.includes(row.uri)) {
        entry.uris.push(row.uri);
      }
    }
    return [...byTopic.values()].map(({ inputSet, ...t }) => ({ ...t, inputs: inputSet.size }));
  }

  /** Inputs with outputs here that were made by another recipe than `recipe` (an earlier plugin). */
  countOtherRecipes(recipes: ReadonlySet<string>): number {
    const rows = this.#sql("SELECT recipe FROM inputs WHERE recipe IS NOT NULL").all() as Array<{ recipe: string }>;
    return rows.filter((r) => !recipes.has(r.recipe)).length;
  }

  close(): void {
    try {
      this.#sql("DELETE FROM lock WHERE id = 1 AND pid = ?").run(process.pid);
    } finally {
      this.#db.close();
    }
  }

  /** Step 2: the moves and removals; returns the directories to fsync (those that still exist). */
  #apply(promotion: Promotion): Set<string> {
    const dirs = new Set<string>();
    for (const move of promotion.moves) {
      const target = join(this.outputRoot, move.to);
      makeDirectoryInsideRootSync(this.outputRoot, dirname(target), { uri: move.to });
      // Again right before the rename: the directory may have been swapped for a symlink since.
      assertInsideRootSync(this.outputRoot, dirname(target), { uri: move.to });
      try {
        renameSync(move.from, target);
      } catch (err) {
        // Redo after a crash: already moved when the source is gone and the target there.
        if ((err as NodeJS.ErrnoException).code !== "ENOENT" || !exists(target)) throw err;
      }
      dirs.add(dirname(target));
    }
    for (const file of promotion.removals) {
      const path = join(this.outputRoot, file);
      // An earlier output whose directory now leads out of the root is not ours to delete there.
      if (exists(dirname(path)) && !staysInside(this.outputRoot, dirname(path))) continue;
      rmSync(path, { force: true });
      dirs.add(dirname(path));
    }
    for (const dir of dirs) if (!exists(dir)) dirs.delete(dir);
    return dirs;
  }

  #finish(promotion: Promotion): void {
    const { input, record, outputs } = promotion;
    this.#db.transaction(() => {
      const at = new Date().toISOString();
      this.#sql(
        `UPDATE inputs SET size = ?, mtime_ns = ?, content_sha256 = ?, file_version_id = ?, recipe = ?, job_id = ?,
             last_outcome = 'succeeded', last_error = NULL, last_job_id = ?, last_at = ? WHERE path = ?`,
      ).run(record.size, record.mtimeNs, record.contentSha256, record.fileVersionId, record.recipe, record.jobId, record.jobId, at, input);
      this.#sql("DELETE FROM outputs WHERE input = ?").run(input);
      const insert = this.#sql("INSERT INTO outputs (input, topic, sink, mode, uri, file, file_version_id, rows, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
      for (const o of outputs) insert.run(input, o.topic, o.sink, o.mode, o.uri, o.file, o.fileVersionId, o.rows, o.bytes);
      this.#sql("DELETE FROM promotions WHERE input = ?").run(input);
    })();
  }
}

interface InputRow {
  path: string;
  name: string;
  size: number | null;
  mtime_ns: string | null;
  content_sha256: string | null;
  file_version_id: string | null;
  recipe: string | null;
  job_id: string | null;
  last_outcome: "succeeded" | "failed" | null;
  last_error: string | null;
}

interface OutputRow {
  topic: string;
  sink: string;
  mode: string;
  uri: string;
  file: string | null;
  file_version_id: string;
  rows: number;
  bytes: number | null;
}

function toRecord(row: InputRow): InputRecord {
  return {
    path: row.path,
    name: row.name,
    size: row.size,
    mtimeNs: row.mtime_ns,
    contentSha256: row.content_sha256,
    fileVersionId: row.file_version_id === null ? null : BigInt(row.file_version_id),
    recipe: row.recipe,
    jobId: row.job_id === null ? null : BigInt(row.job_id),
    lastOutcome: row.last_outcome,
    lastError: row.last_error,
  };
}

function toOutput(row: OutputRow): OutputRecord {
  return {
    topic: row.topic,
    sink: row.sink,
    mode: row.mode,
    uri: row.uri,
    file: row.file,
    fileVersionId: row.file_version_id,
    rows: row.rows,
    bytes: row.bytes,
  };
}

function migrate(db: Database.Database, path: string): void {
  db.exec(`
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS inputs (
      path TEXT PRIMARY KEY,
      name TEXT NOT NULL UNIQUE,
      size INTEGER,
      mtime_ns TEXT,
      content_sha256 TEXT,
      file_version_id TEXT,
      recipe TEXT,
      job_id TEXT,
      last_outcome TEXT,
      last_error TEXT,
      last_job_id TEXT,
      last_at TEXT
    );
    CREATE TABLE IF NOT EXISTS outputs (
      input TEXT NOT NULL REFERENCES inputs (path) ON DELETE CASCADE,
      topic TEXT NOT NULL,
      sink TEXT NOT NULL,
      mode TEXT NOT NULL,
      uri TEXT NOT NULL,
      file TEXT,
      file_version_id TEXT NOT NULL,
      rows INTEGER NOT NULL,
      bytes INTEGER
    );
    CREATE INDEX IF NOT EXISTS outputs_by_input ON outputs (input);
    CREATE TABLE IF NOT EXISTS promotions (input TEXT PRIMARY KEY, plan TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS lock (id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL);
  `);
  const version = (db.prepare("SELECT value FROM meta WHERE key = 'schema'").get() as { value: string } | undefined)?.value;
  if (version === undefined) db.prepare("INSERT INTO meta (key, value) VALUES ('schema', ?)").run(SCHEMA_VERSION);
  else if (version !== SCHEMA_VERSION) {
    throw Errors.CLI_USAGE([`the run state ${path} has schema version ${version}; this casparian-flow reads version ${SCHEMA_VERSION}`], {
      hint: "use another --output, or remove its .casparian directory to start over",
    });
  }
}

function encodePromotion(p: Promotion): string {
  return JSON.stringify(p);
}

function decodePromotion(text: string): Promotion {
  return JSON.parse(text) as Promotion;
}

/** Makes renames and unlinks in `dir` durable. */
function fsyncDirectorySync(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

async function fsyncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

function staysInside(root: string, dir: string): boolean {
  try {
    assertInsideRootSync(root, dir, { uri: dir });
    return true;
  } catch {
    return false;
  }
}
