#!/usr/bin/env node
/**
 * Builds the native Parquet engine (this crate) into casparian_parquet.node beside it.
 * Run by `npm install` / `npm ci` (the prepare script) and by `npm run build:native`.
 *
 * Without cargo the package still installs: the sink then writes with parquet-wasm and
 * logs CSP_PARQUET_NATIVE_UNAVAILABLE once. With cargo, a failed build fails the install
 * (set CASPARIAN_SKIP_NATIVE=1 to install without the engine knowingly).
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, renameSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const crate = dirname(fileURLToPath(import.meta.url));
const output = join(crate, "casparian_parquet.node");
const hint = "install a Rust toolchain (https://rustup.rs), then run `npm run build:native`";

if (process.env.CASPARIAN_SKIP_NATIVE === "1") {
  console.warn(`casparian-flow: CASPARIAN_SKIP_NATIVE=1, native Parquet engine not built; the Parquet sink will use parquet-wasm (${hint})`);
  process.exit(0);
}

/** cargo on the PATH, else where rustup puts it (npm's environment may lack ~/.cargo/bin). */
function findCargo() {
  const candidates = [process.env.CARGO, "cargo", join(process.env.CARGO_HOME ?? join(homedir(), ".cargo"), "bin", "cargo")].filter(Boolean);
  for (const candidate of candidates) {
    const probe = spawnSync(candidate, ["--version"], { encoding: "utf8" });
    if (probe.status === 0) return { cargo: candidate, version: probe.stdout.trim() };
  }
  return null;
}

const found = findCargo();
if (found === null) {
  console.warn(
    `casparian-flow: CSP_PARQUET_NATIVE_UNAVAILABLE: cargo not found, native Parquet engine not built; the Parquet sink will use parquet-wasm, which is slower (hint: ${hint})`,
  );
  process.exit(0);
}

const started = Date.now();
console.log(`casparian-flow: building the native Parquet engine with ${found.version}...`);
const build = spawnSync(found.cargo, ["build", "--release", "--locked", "--manifest-path", join(crate, "Cargo.toml")], { stdio: "inherit" });
if (build.status !== 0) {
  console.error(
    `casparian-flow: the native Parquet engine failed to build (cargo exited with ${build.status ?? build.signal}); set CASPARIAN_SKIP_NATIVE=1 to install without it`,
  );
  process.exit(1);
}

const library = { darwin: "libcasparian_parquet.dylib", win32: "casparian_parquet.dll" }[process.platform] ?? "libcasparian_parquet.so";
const built = join(process.env.CARGO_TARGET_DIR ?? join(crate, "target"), "release", library);
if (!existsSync(built)) {
  console.error(`casparian-flow: cargo succeeded but ${built} is missing`);
  process.exit(1);
}
// Copied under a temporary name first: a process loading the addon never sees half a file.
copyFileSync(built, `${output}.tmp`);
renameSync(`${output}.tmp`, output);
console.log(`casparian-flow: native Parquet engine built in ${((Date.now() - started) / 1000).toFixed(1)} s: ${output}`);
