import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CasparianError, Errors } from "../core/kernel/errors.js";
import { Opcode, type Message } from "../core/protocol/messages.js";
import { decodeHeader, decodeMessage, encodeHeader, encodeMessage, parseJson, stringifyJson } from "../core/protocol/codec.js";
import { parse as losslessParse } from "lossless-json";
import { seededRandom } from "./helpers/random.js";
import { loadVectors, rawHeader, rawJsonFrames, vectorFrames, vectorNamed } from "./helpers/sentinel.js";

const U64_MAX = 18446744073709551615n;
const HASH = (c: string) => c.repeat(64);

/** What each vector must decode to, written out by hand from PROTOCOL.md. */
const EXPECTED: Record<string, Message> = {
  identify: { opcode: Opcode.IDENTIFY, jobId: 0n, payload: { capabilities: ["*"], worker_id: "w-1766550000000000000" } },
  identify_no_id: { opcode: Opcode.IDENTIFY, jobId: 0n, payload: { capabilities: ["*"], worker_id: null } },
  dispatch: {
    opcode: Opcode.DISPATCH,
    jobId: 42n,
    payload: {
      plugin_name: "sales_analyzer",
      file_path: "/data/in/sales_2024.csv",
      sinks: [
        { topic: "output", uri: "parquet://sales_output.parquet", mode: "append", schema_def: null },
        { topic: "errors", uri: "sqlite:///tmp/flow.db/errors", mode: "replace", schema_def: '{"columns":[{"name":"id","type":"int64"}]}' },
      ],
      file_version_id: 7n,
      env_hash: HASH("a"),
      source_code: "class Handler:\n    def execute(self, path):\n        return []\n",
      artifact_hash: null,
    },
  },
  dispatch_big_ids: {
    opcode: Opcode.DISPATCH,
    jobId: U64_MAX,
    payload: {
      plugin_name: "p",
      file_path: "/x.csv",
      sinks: [],
      file_version_id: 9007199254740993n,
      env_hash: HASH("b"),
      source_code: "x=1",
      artifact_hash: HASH("c"),
    },
  },
  abort: { opcode: Opcode.ABORT, jobId: 42n, payload: null },
  heartbeat_busy: { opcode: Opcode.HEARTBEAT, jobId: 42n, payload: { status: "BUSY", current_job_id: 42n } },
  heartbeat_idle: { opcode: Opcode.HEARTBEAT, jobId: 0n, payload: { status: "IDLE", current_job_id: null } },
  conclude_success: {
    opcode: Opcode.CONCLUDE,
    jobId: 42n,
    payload: {
      status: "SUCCESS",
      metrics: { rows: 1500, size_bytes: 42000 },
      artifacts: [{ topic: "output", uri: "parquet:///out/sales_output_42.parquet" }],
      error_message: null,
    },
  },
  conclude_failed: {
    opcode: Opcode.CONCLUDE,
    jobId: 43n,
    payload: { status: "FAILED", metrics: {}, artifacts: [], error_message: "Guest process error: boom" },
  },
  err: { opcode: Opcode.ERR, jobId: 43n, payload: { message: "Invalid DISPATCH payload", traceback: "Traceback ..." } },
  prepare_env: {
    opcode: Opcode.PREPARE_ENV,
    jobId: 0n,
    payload: { env_hash: HASH("d"), lockfile_content: 'version = 1\nrequires-python = ">=3.11"\n', python_version: "3.11" },
  },
  env_ready: {
    opcode: Opcode.ENV_READY,
    jobId: 0n,
    payload: { env_hash: HASH("d"), interpreter_path: `/home/casparian/.casparian_flow/venvs/${HASH("d")}/bin/python`, cached: true },
  },
  reload: { opcode: Opcode.RELOAD, jobId: 0n, payload: null },
};

function throwsCode(fn: () => unknown, code: string, messagePart?: RegExp): CasparianError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof CasparianError, `expected a CasparianError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code);
  if (messagePart) assert.match(caught.message, messagePart);
  return caught;
}

describe("protocol vectors (Python-produced bytes)", () => {
  const vectors = loadVectors();

  test("every vector has an expected value and every expected value a vector", () => {
    assert.deepEqual(vectors.map((v) => v.name).sort(), Object.keys(EXPECTED).sort());
  });

  for (const vector of vectors) {
    test(`${vector.name}: decodes to the expected values`, () => {
      const decoded = decodeMessage(vectorFrames(vector));
      assert.deepEqual(decoded, EXPECTED[vector.name]);
      const head = decodeHeader(Buffer.from(vector.header_hex, "hex"));
      assert.equal(head.version, 4);
      assert.equal(head.payloadLength, vector.payload_utf8 === null ? 0 : Buffer.byteLength(vector.payload_utf8));
    });

    test(`${vector.name}: encoding the expected values gives the same header and JSON`, () => {
      const expected = EXPECTED[vector.name]!;
      const [head, body] = encodeMessage(expected.opcode, expected.jobId, expected.payload);
      assert.equal(head!.toString("hex"), vector.header_hex);
      if (vector.payload_utf8 === null || vector.payload_utf8 === "") {
        assert.equal(body!.length, 0);
      } else {
        assert.deepEqual(parseJson(body!.toString("utf8")), parseJson(vector.payload_utf8));
        // Field order and compact separators match Python's output too: byte-identical.
        assert.equal(body!.toString("utf8"), vector.payload_utf8);
      }
    });
  }

  test("u64 job id and file_version_id beyond 2^53 survive exactly", () => {
    const decoded = decodeMessage(vectorFrames(vectorNamed("dispatch_big_ids")));
    assert.equal(decoded.jobId, 2n ** 64n - 1n);
    assert.equal(decoded.opcode, Opcode.DISPATCH);
    if (decoded.opcode !== Opcode.DISPATCH) return;
    assert.equal(decoded.payload.file_version_id, 2n ** 53n + 1n);
    assert.equal(typeof decoded.payload.file_version_id, "bigint");
    const [, body] = encodeMessage(Opcode.DISPATCH, decoded.jobId, decoded.payload);
    assert.match(body!.toString(), /"file_version_id":9007199254740993,/);
  });
});

describe("header", () => {
  test("encodeHeader writes !BBHQI big-endian", () => {
    assert.equal(encodeHeader(Opcode.HEARTBEAT, 0x0102030405060708n, 0x0a0b0c0d).toString("hex"), "0404000001020304050607080a0b0c0d");
  });

  test("short and long headers are rejected", () => {
    throwsCode(() => decodeHeader(Buffer.alloc(15)), Errors.PROTOCOL_SHORT_HEADER.code, /15 bytes/);
    throwsCode(() => decodeHeader(Buffer.alloc(0)), Errors.PROTOCOL_SHORT_HEADER.code);
    throwsCode(() => decodeHeader(Buffer.alloc(17, 4)), Errors.PROTOCOL_SHORT_HEADER.code, /17 bytes/);
  });

  test("wrong version is rejected with the version seen", () => {
    const err = throwsCode(() => decodeHeader(rawHeader(Opcode.IDENTIFY, 0n, 0, 3)), Errors.PROTOCOL_BAD_VERSION.code, /version 3/);
    assert.ok(err.hint);
  });

  test("unknown opcode is rejected", () => {
    throwsCode(() => decodeHeader(rawHeader(11, 0n, 0)), Errors.PROTOCOL_UNKNOWN_OPCODE.code, /11/);
    throwsCode(() => decodeHeader(rawHeader(255, 0n, 0)), Errors.PROTOCOL_UNKNOWN_OPCODE.code, /255/);
  });

  test("job ids outside u64 cannot be encoded", () => {
    throwsCode(() => encodeHeader(Opcode.ABORT, -1n, 0), Errors.PROTOCOL_BAD_PAYLOAD.code, /job_id/);
    throwsCode(() => encodeHeader(Opcode.ABORT, 2n ** 64n, 0), Errors.PROTOCOL_BAD_PAYLOAD.code, /job_id/);
  });
});

describe("decodeMessage framing", () => {
  test("a header-only RELOAD is valid; a header-only DISPATCH with payload_len > 0 is not", () => {
    assert.deepEqual(decodeMessage([rawHeader(Opcode.RELOAD, 0n, 0)]), { opcode: Opcode.RELOAD, jobId: 0n, payload: null });
    throwsCode(() => decodeMessage([rawHeader(Opcode.DISPATCH, 5n, 10)]), Errors.PROTOCOL_FRAME_COUNT.code, /1 frames/);
  });

  test("zero or three frames are rejected", () => {
    throwsCode(() => decodeMessage([]), Errors.PROTOCOL_FRAME_COUNT.code, /0 frames/);
    throwsCode(() => decodeMessage([rawHeader(Opcode.ABORT, 1n, 0), Buffer.alloc(0), Buffer.alloc(0)]), Errors.PROTOCOL_FRAME_COUNT.code, /3 frames/);
  });

  test("payload_len must match the payload frame", () => {
    const [, body] = rawJsonFrames(Opcode.ERR, 1n, '{"message":"x"}');
    const err = throwsCode(() => decodeMessage([rawHeader(Opcode.ERR, 1n, body!.length + 1), body!]), Errors.PROTOCOL_LENGTH_MISMATCH.code);
    assert.match(err.message, new RegExp(`says ${body!.length + 1} bytes but the payload frame has ${body!.length}`));
  });

  test("bad JSON, bad UTF-8, empty payloads and non-objects are rejected", () => {
    throwsCode(() => decodeMessage(rawJsonFrames(Opcode.DISPATCH, 1n, "{not json")), Errors.PROTOCOL_BAD_JSON.code, /DISPATCH payload is not valid JSON/);
    const badUtf8 = Buffer.from([0x7b, 0xff, 0x7d]);
    throwsCode(() => decodeMessage([rawHeader(Opcode.ERR, 0n, 3), badUtf8]), Errors.PROTOCOL_BAD_JSON.code);
    throwsCode(() => decodeMessage([rawHeader(Opcode.DISPATCH, 1n, 0), Buffer.alloc(0)]), Errors.PROTOCOL_BAD_PAYLOAD.code, /empty payload/);
    throwsCode(() => decodeMessage(rawJsonFrames(Opcode.ERR, 1n, "[1,2]")), Errors.PROTOCOL_BAD_PAYLOAD.code, /expected a JSON object, got an array/);
  });
});

describe("payload validation", () => {
  const dispatch = JSON.parse(vectorNamed("dispatch").payload_utf8!) as Record<string, unknown>;

  test("field errors name the field and what was expected, all at once", () => {
    const bad = {
      ...dispatch,
      file_version_id: "7",
      sinks: [{ topic: "output", uri: "parquet://x.parquet", mode: "upsert" }],
    };
    delete (bad as Record<string, unknown>).env_hash;
    const err = throwsCode(() => decodeMessage(rawJsonFrames(Opcode.DISPATCH, 9n, JSON.stringify(bad))), Errors.PROTOCOL_BAD_PAYLOAD.code);
    assert.match(err.message, /invalid DISPATCH payload/);
    assert.match(err.message, /file_version_id: expected an integer, got "7"/);
    assert.match(err.message, /sinks\[0\]\.mode: expected one of "append", "replace", "error", got "upsert"/);
    assert.match(err.message, /env_hash: required field is missing/);
    assert.equal(err.context.jobId, 9n);
  });

  test("fractional integers are rejected", () => {
    throwsCode(
      () => decodeMessage(rawJsonFrames(Opcode.DISPATCH, 9n, JSON.stringify({ ...dispatch, file_version_id: 1.5 }))),
      Errors.PROTOCOL_BAD_PAYLOAD.code,
      /file_version_id: expected an integer, got number 1.5/,
    );
  });

  test("missing optional fields get defaults; unknown fields are ignored (like pydantic)", () => {
    const sparse = {
      plugin_name: "p",
      file_path: "/f",
      sinks: [{ topic: "output", uri: "parquet://o.parquet", future_option: true }],
      file_version_id: 1,
      env_hash: HASH("e"),
      source_code: "",
      added_in_v5: { anything: 1 },
    };
    const decoded = decodeMessage(rawJsonFrames(Opcode.DISPATCH, 3n, JSON.stringify(sparse)));
    assert.deepEqual(decoded.payload, {
      plugin_name: "p",
      file_path: "/f",
      sinks: [{ topic: "output", uri: "parquet://o.parquet", mode: "append", schema_def: null }],
      file_version_id: 1n,
      env_hash: HASH("e"),
      source_code: "",
      artifact_hash: null,
    });
    const receipt = decodeMessage(rawJsonFrames(Opcode.CONCLUDE, 3n, '{"status":"FAILED"}'));
    assert.deepEqual(receipt.payload, { status: "FAILED", metrics: {}, artifacts: [], error_message: null });
  });

  test("receipt metrics must be integers when encoding; bigint metrics are written exactly", () => {
    const err = throwsCode(
      () => encodeMessage(Opcode.CONCLUDE, 1n, { status: "SUCCESS", metrics: { rows: 1.5 }, artifacts: [], error_message: null }),
      Errors.PROTOCOL_BAD_PAYLOAD.code,
    );
    assert.match(err.message, /metrics\.rows: expected an integer, got number 1.5/);
    const [, body] = encodeMessage(Opcode.CONCLUDE, 1n, { status: "SUCCESS", metrics: { bytes: 2n ** 63n }, artifacts: [], error_message: null });
    assert.equal(body!.toString(), '{"status":"SUCCESS","metrics":{"bytes":9223372036854775808},"artifacts":[],"error_message":null}');
  });

  test("heartbeat current_job_id decodes to bigint", () => {
    const decoded = decodeMessage(rawJsonFrames(Opcode.HEARTBEAT, U64_MAX, `{"status":"BUSY","current_job_id":${U64_MAX}}`));
    assert.deepEqual(decoded.payload, { status: "BUSY", current_job_id: U64_MAX });
  });
});

describe("lossless JSON", () => {
  test("parseJson keeps safe integers as numbers and makes the rest bigint", () => {
    assert.deepEqual(parseJson('{"a":1,"b":9007199254740991,"c":9007199254740993,"d":-18446744073709551615,"e":1.25}'), {
      a: 1,
      b: 9007199254740991,
      c: 9007199254740993n,
      d: -18446744073709551615n,
      e: 1.25,
    });
  });

  test("a document with integers beyond 2^53 reads as lossless-json reads it, whatever its strings hold (random documents, seeded)", () => {
    const random = seededRandom(14);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
    const digits = (n: number) => Array.from({ length: n }, (_, i) => (i === 0 ? 1 + Math.floor(random() * 9) : Math.floor(random() * 10))).join("");
    // Strings that look like numbers, hold quotes, backslashes, escapes, the mark's own text, a NUL escape.
    const strings = [
      '"12345678901234567890"',
      '"a\\"b"',
      '"\\\\"',
      '"x\\n-9007199254740993 y"',
      '"caf\\u00e9"',
      '"casparian-u64:5"',
      '"nul\\u0000x"',
      '"}{][,:"',
      '""',
    ];
    const scalar = (): string =>
      pick([
        () => digits(17 + Math.floor(random() * 4)),
        () => `-${digits(17)}`,
        () => String(Math.floor(random() * 1e6)),
        () => "9007199254740991",
        () => "9007199254740992",
        () => `${digits(18)}.5`,
        () => `${digits(2)}e${Math.floor(random() * 30)}`,
        () => "-0",
        () => pick(["true", "false", "null"]),
        () => pick(strings),
      ])();
    const value = (depth: number): string => {
      if (depth > 3 || random() < 0.4) return scalar();
      if (random() < 0.5) return `[${Array.from({ length: Math.floor(random() * 4) }, () => value(depth + 1)).join(", ")}]`;
      // Keys repeat now and then: the last one wins in both.
      return `{ ${Array.from({ length: Math.floor(random() * 4) }, () => `${pick(['"a"', '"b"', '"12345678901234567890"', '"k\\"q"'])} : ${value(depth + 1)}`).join(",")} }`;
    };
    const lossless = (text: string) =>
      losslessParse(text, null, {
        parseNumber: (t: string) => (/^-?\d+$/.test(t) ? (Number.isSafeInteger(Number(t)) ? Number(t) : BigInt(t)) : Number.parseFloat(t)),
        onDuplicateKey: ({ newValue }: { newValue: unknown }) => newValue,
      });
    for (let i = 0; i < 2_000; i++) {
      const text = `{"id": ${digits(19)}, "doc": ${value(0)}}`;
      assert.deepEqual(parseJson(text), lossless(text), text);
    }
  });

  test("stringifyJson writes bigint as an integer literal, compactly", () => {
    assert.equal(stringifyJson({ id: 2n ** 64n - 1n, list: [1, "x", null] }), '{"id":18446744073709551615,"list":[1,"x",null]}');
  });
});
