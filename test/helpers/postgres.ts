/**
 * A real, throwaway PostgreSQL server for tests: initdb into a temporary directory,
 * start it on a Unix socket in that directory and on 127.0.0.1 at a free port, trust
 * authentication for the `postgres` superuser, durability switched off for speed.
 * `stop()` (or process exit) stops it and deletes the directory.
 *
 * PostgreSQL refuses to run as root: when the tests run as root, initdb and pg_ctl run
 * as the `postgres` OS user (runuser), and the directory is handed over to it.
 * Binaries are searched in $PG_BIN, /usr/lib/postgresql/<newest>/bin, then $PATH; when
 * there are none the helper fails with a message saying what to install.
 */
import { execFile, spawnSync } from "node:child_process";
import { existsSync, readdirSync, rmSync } from "node:fs";
import { chown, mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { promisify } from "node:util";
import pg from "pg";

const run = promisify(execFile);

export interface PostgresServer {
  /** Directory holding the server's Unix socket (`.s.PGSQL.<port>`). */
  readonly socketDir: string;
  readonly host: "127.0.0.1";
  readonly port: number;
  readonly user: "postgres";
  readonly database: "postgres";
  /** TCP connection string for the `postgres` database. */
  readonly connectionString: string;
  /** Runs one statement on a shared admin connection and returns its rows. */
  query<R extends Record<string, unknown> = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<R[]>;
  stop(): Promise<void>;
}

export interface PostgresBinaries {
  initdb: string;
  pgCtl: string;
}

/** Finds initdb and pg_ctl, or throws saying how to install them. */
export function findPostgresBinaries(): PostgresBinaries {
  const candidates: string[] = [];
  if (process.env.PG_BIN) candidates.push(process.env.PG_BIN);
  const versioned = "/usr/lib/postgresql";
  if (existsSync(versioned)) {
    const versions = readdirSync(versioned)
      .filter((v) => /^\d+(\.\d+)?$/.test(v))
      .sort((a, b) => Number(b) - Number(a));
    candidates.push(...versions.map((v) => join(versioned, v, "bin")));
  }
  candidates.push(...(process.env.PATH ?? "").split(delimiter).filter((d) => d !== ""));
  for (const dir of candidates) {
    const initdb = join(dir, "initdb");
    const pgCtl = join(dir, "pg_ctl");
    if (existsSync(initdb) && existsSync(pgCtl)) return { initdb, pgCtl };
  }
  throw new Error(
    "PostgreSQL server binaries (initdb, pg_ctl) not found in $PG_BIN, /usr/lib/postgresql/*/bin or $PATH. " +
      "The PostgreSQL sink tests start a real server: install it (Debian/Ubuntu: apt-get install -y postgresql; macOS: brew install postgresql) " +
      "or point PG_BIN at its bin directory.",
  );
}

export async function startPostgres(): Promise<PostgresServer> {
  const binaries = findPostgresBinaries();
  const asRoot = process.getuid?.() === 0;
  const owner = asRoot ? await postgresUser() : null;
  // As root, the server's commands run as the postgres user.
  const exec = (file: string, args: string[]) => (owner ? run("runuser", ["-u", "postgres", "--", file, ...args]) : run(file, args));

  const dir = await mkdtemp(join(tmpdir(), "casparian-pg-"));
  const dataDir = join(dir, "data");
  const logFile = join(dir, "server.log");
  let running = false;
  const cleanupOnExit = () => {
    if (running)
      spawnSync(
        owner ? "runuser" : binaries.pgCtl,
        [...(owner ? ["-u", "postgres", "--", binaries.pgCtl] : []), "-D", dataDir, "-m", "immediate", "-w", "stop"],
        { stdio: "ignore" },
      );
    rmSync(dir, { recursive: true, force: true });
  };
  process.once("exit", cleanupOnExit);

  try {
    if (owner) await chown(dir, owner.uid, owner.gid);
    await exec(binaries.initdb, ["-D", dataDir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]).catch((err: unknown) => {
      throw new Error(`initdb failed: ${outputOf(err)}`);
    });
    let port = 0;
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      const settings = [
        "-k",
        dir,
        "-p",
        String(port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
      ];
      try {
        await exec(binaries.pgCtl, ["-D", dataDir, "-l", logFile, "-w", "-t", "60", "-o", settings.join(" "), "start"]);
        running = true;
        break;
      } catch (err) {
        const log = await readFile(logFile, "utf8").catch(() => "");
        // Another process may have taken the port between our probe and the server's bind.
        if (attempt < 3 && /already in use/i.test(log)) continue;
        throw new Error(`pg_ctl start failed: ${outputOf(err)}\n${log}`);
      }
    }

    let admin: pg.Client | null = null;
    const connectionString = `postgres://postgres@127.0.0.1:${port}/postgres`;
    return {
      socketDir: dir,
      host: "127.0.0.1",
      port,
      user: "postgres",
      database: "postgres",
      connectionString,
      async query<R extends Record<string, unknown>>(sql: string, params: unknown[] = []) {
        if (admin === null) {
          admin = new pg.Client({ connectionString });
          await admin.connect();
        }
        return (await admin.query<R>(sql, params)).rows;
      },
      async stop() {
        await admin?.end().catch(() => {});
        admin = null;
        if (running) {
          running = false;
          await exec(binaries.pgCtl, ["-D", dataDir, "-m", "immediate", "-w", "stop"]).catch(() => {});
        }
        await rm(dir, { recursive: true, force: true });
        process.removeListener("exit", cleanupOnExit);
      },
    };
  } catch (err) {
    cleanupOnExit();
    process.removeListener("exit", cleanupOnExit);
    throw err;
  }
}

async function postgresUser(): Promise<{ uid: number; gid: number }> {
  try {
    const [uid, gid] = await Promise.all([run("id", ["-u", "postgres"]), run("id", ["-g", "postgres"])]);
    return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
  } catch {
    throw new Error(
      "running as root, but there is no 'postgres' OS user to run the server as (PostgreSQL refuses root); install the postgresql package, which creates it",
    );
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function outputOf(err: unknown): string {
  const e = err as { message?: string; stdout?: string; stderr?: string };
  return [e.message, e.stdout, e.stderr].filter(Boolean).join("\n");
}
