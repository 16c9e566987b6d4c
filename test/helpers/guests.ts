/**
 * Real guests for bridge tests, set up once per test file: a temporary home with a bare
 * venv (a lockfile without packages, built by the real EnvManager) and a warm pool, and
 * the two ways a job's guest runs (a fresh process, or forked from a warm parent).
 */
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import type { GuestRunOptions } from "../../core/bridge/types.js";
import { WarmPool } from "../../core/bridge/warm-pool.js";
import { EnvManager } from "../../core/env/manager.js";
import { silentLogger, type Logger } from "../../core/kernel/logger.js";
import { bareEnvironment, fixturePath } from "./pyenv.js";

export interface BareGuests {
  /** The file's temporary directory (inputs go here); the environments are under it. */
  readonly home: string;
  /** The bare venv's interpreter. */
  readonly python: string;
  /** A warm pool for the file's warm jobs; closed by `close`. */
  readonly pool: WarmPool;
  /** Closes the pool and removes the home. */
  close(): Promise<void>;
}

/**
 * `readableByOthers`: the home is 0755, for guests that run as slot users and must reach
 * the venv inside (the Python it links to must be reachable too: set UV_PYTHON first).
 */
export async function bareGuests(prefix: string, options: { logger?: Logger; readableByOthers?: boolean } = {}): Promise<BareGuests> {
  const logger = options.logger ?? silentLogger();
  const home = await mkdtemp(join(tmpdir(), `casparian-${prefix}-`));
  try {
    if (options.readableByOthers) await chmod(home, 0o755);
    const python = await bareEnvironment(new EnvManager({ home: join(home, "casparian"), logger }));
    const pool = new WarmPool({ logger });
    return {
      home,
      python,
      pool,
      async close() {
        await pool.close();
        await rm(home, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await rm(home, { recursive: true, force: true });
    throw err;
  }
}

/** Fresh and warm: run each case both ways (`pool` is read when a case runs, after the file's `before`). */
export function guestModes(pool: () => WarmPool): Array<{ name: string; options: () => Partial<GuestRunOptions> }> {
  return [
    { name: "fresh guest", options: () => ({}) },
    { name: "warm guest", options: () => ({ warm: pool() }) },
  ];
}

/** A new input file in `dir` (a unique name unless given). */
export async function inputFile(dir: string, content = "x\n", name = `input-${Math.random().toString(36).slice(2)}.txt`): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, content);
  return path;
}

export interface WarmFixture {
  /** The file's temporary directory; the environments are under it. */
  readonly home: string;
  /** The bare venv's interpreter. */
  readonly python: string;
  /** test/fixtures/<name>/plugin.py's source. */
  readonly source: string;
  /** Where the file's inputs go (under `home`). */
  readonly work: string;
}

/**
 * A test file's bare venv, the source of test/fixtures/<name>/plugin.py and an inputs
 * directory, made in the file's `before` and removed in its `after` (it registers both): read
 * the fields from a test, not while the file loads.
 */
export function warmFixture(name: string): WarmFixture {
  let made: WarmFixture | undefined;
  let home: string | undefined;
  before(async () => {
    home = await mkdtemp(join(tmpdir(), `casparian-${name}-`));
    const python = await bareEnvironment(new EnvManager({ home: join(home, "casparian"), logger: silentLogger() }));
    const source = await readFile(fixturePath(name, "plugin.py"), "utf8");
    const work = join(home, "work");
    await mkdir(work);
    made = { home, python, source, work };
  });
  after(async () => {
    if (home) await rm(home, { recursive: true, force: true });
  });
  const field = (key: keyof WarmFixture): string => {
    if (!made) throw new Error(`warmFixture(${name}) is read before its before() hook ran`);
    return made[key];
  };
  return {
    get home() {
      return field("home");
    },
    get python() {
      return field("python");
    },
    get source() {
      return field("source");
    },
    get work() {
      return field("work");
    },
  };
}
