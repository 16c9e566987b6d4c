/**
 * A test Sentinel: a real ZeroMQ ROUTER socket on tcp://127.0.0.1 (free port),
 * speaking protocol v4 through core/protocol.ts, and also able to send raw frames
 * taken from the vectors file produced by the Python implementation, so tests are
 * pinned to the Python bytes and not only to our own encoder.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Router } from "zeromq";
import { packageRoot } from "../../core/kernel/paths.js";
import { Opcode, type Message, type PayloadByOpcode } from "../../core/protocol/messages.js";
import { decodeMessage, encodeMessage } from "../../core/protocol/codec.js";
import { Arrivals } from "./arrivals.js";

export interface Vector {
  name: string;
  note: string;
  header_hex: string;
  /** null: the message is the header alone (no payload frame at all). */
  payload_utf8: string | null;
}

export function loadVectors(): Vector[] {
  return JSON.parse(readFileSync(join(packageRoot(), "test", "fixtures", "protocol", "vectors.json"), "utf8")) as Vector[];
}

/** A vector as the frames a DEALER would receive. */
export function vectorFrames(vector: Vector): Buffer[] {
  const frames = [Buffer.from(vector.header_hex, "hex")];
  if (vector.payload_utf8 !== null) frames.push(Buffer.from(vector.payload_utf8, "utf8"));
  return frames;
}

export function vectorNamed(name: string): Vector {
  const vector = loadVectors().find((v) => v.name === name);
  if (!vector) throw new Error(`no vector named ${name}`);
  return vector;
}

/**
 * A header built by hand (`!BBHQI`), independent of core/protocol.ts, so tests can
 * send what a peer might: wrong versions, unknown opcodes, lying payload lengths.
 */
export function rawHeader(opcode: number, jobId: bigint, payloadLength: number, version = 4): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt8(version, 0);
  b.writeUInt8(opcode, 1);
  b.writeBigUInt64BE(jobId, 4);
  b.writeUInt32BE(payloadLength, 12);
  return b;
}

/** [header, payload] for a JSON text, with a correct payload_len. */
export function rawJsonFrames(opcode: number, jobId: bigint, json: string): Buffer[] {
  const body = Buffer.from(json, "utf8");
  return [rawHeader(opcode, jobId, body.length), body];
}

export interface Received {
  identity: Buffer;
  frames: Buffer[];
  /** Decoded message, or undefined when it did not decode (then `error` says why). */
  message?: Message;
  error?: unknown;
  at: number;
}

export class TestSentinel {
  readonly endpoint: string;
  /** Every message received, in order, across re-binds. */
  readonly received: Received[] = [];
  #router: Router;
  #taken = new Set<Received>();
  readonly #arrivals = new Arrivals();
  #loop: Promise<void>;

  private constructor(router: Router, endpoint: string) {
    this.#router = router;
    this.endpoint = endpoint;
    this.#loop = this.#receive(router);
  }

  /** mandatory: a send to a peer whose queue is full waits instead of being dropped silently (ROUTER's default). */
  static #newRouter(): Router {
    return new Router({ linger: 0, mandatory: true, sendHighWaterMark: 100_000 });
  }

  /** Bind on a free port (or on `endpoint`, e.g. to come back on the same address). */
  static async bind(endpoint = "tcp://127.0.0.1:*"): Promise<TestSentinel> {
    const router = TestSentinel.#newRouter();
    await router.bind(endpoint);
    return new TestSentinel(router, router.lastEndpoint ?? endpoint);
  }

  async #receive(router: Router): Promise<void> {
    try {
      for await (const [identity, ...frames] of router) {
        const entry: Received = { identity: identity!, frames, at: Date.now() };
        try {
          entry.message = decodeMessage(frames);
        } catch (err) {
          entry.error = err;
        }
        this.received.push(entry);
        this.#arrivals.notify();
      }
    } catch {
      // closed
    }
  }

  /** The next not-yet-taken message matching `predicate`; rejects after `timeoutMs`. */
  waitFor(predicate: (r: Received) => boolean, timeoutMs = 5000, what = "message"): Promise<Received> {
    const take = (): Received | undefined => {
      const found = this.received.find((r) => !this.#taken.has(r) && predicate(r));
      if (found) this.#taken.add(found);
      return found;
    };
    return this.#arrivals.until(take, timeoutMs, () => {
      const seen = this.received.map((r) => (r.message ? opcodeKey(r.message.opcode) : "malformed")).join(",");
      return new Error(`timed out after ${timeoutMs} ms waiting for ${what}; received so far: [${seen}]`);
    });
  }

  /** The next message with this opcode (and job id, when given). */
  async expect<O extends Opcode>(
    opcode: O,
    options: { jobId?: bigint; timeoutMs?: number } = {},
  ): Promise<Received & { message: Extract<Message, { opcode: O }> }> {
    const found = await this.waitFor(
      (r) => r.message?.opcode === opcode && (options.jobId === undefined || r.message.jobId === options.jobId),
      options.timeoutMs,
      `${opcodeKey(opcode)}${options.jobId === undefined ? "" : ` for job ${options.jobId}`}`,
    );
    return found as Received & { message: Extract<Message, { opcode: O }> };
  }

  /** Messages of one opcode received so far (taken or not). */
  count(opcode: Opcode): number {
    return this.received.filter((r) => r.message?.opcode === opcode).length;
  }

  async send<O extends Opcode>(identity: Buffer, opcode: O, jobId: bigint, payload: PayloadByOpcode[O]): Promise<void> {
    await this.#router.send([identity, ...encodeMessage(opcode, jobId, payload)]);
  }

  /** Frames exactly as given (malformed ones included). */
  async sendRaw(identity: Buffer, frames: Array<Buffer | Uint8Array | string>): Promise<void> {
    await this.#router.send([identity, ...frames]);
  }

  async sendVector(identity: Buffer, vector: Vector): Promise<void> {
    await this.sendRaw(identity, vectorFrames(vector));
  }

  /** Close the ROUTER (the worker sees a disconnect) and bind a new one on the same address. */
  async restart(): Promise<void> {
    await this.goAway();
    await this.comeBack();
  }

  /** Close the ROUTER, as a crashed Sentinel would: every peer identity it knew is gone. */
  async goAway(): Promise<void> {
    this.#router.close();
    await this.#loop;
  }

  /** Bind a new ROUTER on the same address (after goAway); returns the index in `received` of the first message it gets. */
  async comeBack(): Promise<number> {
    const first = this.received.length;
    // The port is free again once close() has gone through; retry briefly in case it has not yet.
    for (let attempt = 0; ; attempt++) {
      const router = TestSentinel.#newRouter();
      try {
        await router.bind(this.endpoint);
        this.#router = router;
        this.#loop = this.#receive(router);
        return first;
      } catch (err) {
        router.close();
        if (attempt >= 50) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  async close(): Promise<void> {
    this.#router.close();
    await this.#loop;
  }
}

function opcodeKey(opcode: number): string {
  return (Object.keys(Opcode) as Array<keyof typeof Opcode>).find((k) => Opcode[k] === opcode) ?? `opcode ${opcode}`;
}
