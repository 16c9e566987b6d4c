/**
 * What reading a DISPATCH costs the worker: checking its payload against the wire schema
 * (validatePayload), and the whole decode (header, UTF-8, JSON, check), per message, for a
 * DISPATCH of about 4.6 KB (three sinks, a 4 KB plugin source) and for one whose
 * file_version_id is beyond 2^53 (parsed again losslessly). Medians of several rounds.
 *
 *   npm run build && node dist/bench/protocol.js [messages per round]
 */
import { decodeMessage, encodeMessage, parseJson, validatePayload } from "../core/protocol/codec.js";
import { Opcode } from "../core/protocol/messages.js";

const PER_ROUND = Number(process.argv[2] ?? 50_000);
const ROUNDS = 7;

function dispatch(fileVersionId: bigint) {
  return {
    plugin_name: "sales_parser",
    file_path: "/data/incoming/2024/sales-2024-01-31.csv",
    sinks: ["orders", "lines", "errors"].map((topic) => ({
      topic,
      uri: `parquet://sales/${topic}/{input}.parquet?compression=zstd`,
      mode: "replace" as const,
      schema_def: '{"columns":[{"name":"id","type":"int64","nullable":false},{"name":"amount","type":"decimal128(12, 2)"}]}',
    })),
    file_version_id: fileVersionId,
    env_hash: "9f2c4b1e7a3d5f60".repeat(4),
    source_code: `import pandas as pd\n\ndef parse(path):\n${"    df = pd.read_csv(path)  # a line of plugin code\n".repeat(68)}    return df\n`,
    artifact_hash: null,
  };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** Median microseconds per call of `fn` over ROUNDS rounds of PER_ROUND calls (after one warm-up round). */
function timePerCall(fn: () => unknown): number {
  const rounds: number[] = [];
  for (let round = 0; round <= ROUNDS; round++) {
    const started = process.hrtime.bigint();
    for (let i = 0; i < PER_ROUND; i++) fn();
    const micros = Number(process.hrtime.bigint() - started) / 1000 / PER_ROUND;
    if (round > 0) rounds.push(micros);
  }
  return median(rounds);
}

const cases = [
  { name: "DISPATCH", payload: dispatch(42n) },
  { name: "DISPATCH, file_version_id > 2^53", payload: dispatch(2n ** 60n + 1n) },
];
for (const { name, payload } of cases) {
  const frames = encodeMessage(Opcode.DISPATCH, 7n, payload);
  const bytes = frames[1]!.byteLength;
  // The check alone gets what JSON parsing gives decodeMessage.
  const parsed = parseJson(frames[1]!.toString("utf8"));
  const check = timePerCall(() => validatePayload(Opcode.DISPATCH, parsed, 7n));
  const decode = timePerCall(() => decodeMessage(frames));
  console.log(
    `${name} (${bytes} bytes): check ${check.toFixed(2)} µs, whole decode ${decode.toFixed(2)} µs per message; the check is ${((100 * check) / decode).toFixed(0)}% of the decode`,
  );
}
