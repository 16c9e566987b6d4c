import { createServer } from "node:net";
import { chmod, mkdtemp } from "node:fs/promises";
const dir = await mkdtemp("/tmp/casparian-bridge-");
const p = dir + "/bridge.sock";
const server = createServer();
await new Promise((resolve, reject) => { server.once("error", reject); server.listen(p, () => { console.log("cb"); resolve(); }); });
await chmod(p, 0o600);
console.log("ok");
server.close();
