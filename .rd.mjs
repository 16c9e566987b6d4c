import net from "node:net";
import { spawn } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { performance } from "node:perf_hooks";
const PY = process.argv[2]; const mode = process.argv[3];
const code = Buffer.from(readFileSync("/tmp/gen.py")).toString("base64");
const p = "/tmp/rd.sock"; rmSync(p, { force: true });
const server = net.createServer({ pauseOnConnect: mode === "onread" });
await new Promise(r => server.listen(p, r));
const t0 = performance.now();
const child = spawn(PY, ["/work/main/core/bridge/guest_shim.py"], { env: { PATH: process.env.PATH, BRIDGE_SOCKET: p, BRIDGE_PLUGIN_CODE: code, BRIDGE_FILE_PATH: "/tmp/rows.txt", BRIDGE_JOB_ID: "1", BRIDGE_FILE_VERSION_ID: "1" }, stdio: "ignore" });
const sock = await new Promise(r => server.once("connection", r));
let n = 0;
if (mode === "onread") {
  const buf = Buffer.allocUnsafe(1 << 20);
  const s2 = new net.Socket({ handle: sock._handle, onread: { buffer: buf, callback: (k, b) => { n += k; } } });
  s2.resume();
  await new Promise(r => s2.once("end", r));
} else {
  for await (const c of sock) n += c.length;
}
await new Promise(r => child.once("exit", r));
console.log(mode, n, (performance.now() - t0) | 0);
server.close();
