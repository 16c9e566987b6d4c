/**
 * The embedded Sentinel's transport: a ZeroMQ ROUTER bound to an `ipc://` socket
 * in a private directory (mode 0700, so no other user can talk to our workers),
 * speaking protocol v4 exactly as a remote Sentinel would. It knows nothing about
 * scheduling: every decoded message goes to one handler, with the peer's identity.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Router } from "zeromq";
import { errorMessage } from "../kernel/errors.js";
import type { Logger } from "../kernel/logger.js";
import type { Message, Opcode, PayloadByOpcode } from "../protocol/messages.js";
import { decodeMessage, encodeMessage, opcodeName } from "../protocol/codec.js";

/** A ROUTER identity, as bytes and as a map key. */
export interface Peer {
  readonly identity: Buffer;
  readonly key: string;
}

export type MessageHandler = (peer: Peer, message: Message) => void;

export class EmbeddedSentinel {
  readonly endpoint: string;
  readonly #router: Router;
  readonly #dir: string;
  readonly #logger: Logger;
  #handler: MessageHandler = () => {};
  #sending: Promise<void> = Promise.resolve();
  #loop: Promise<void> | null = null;
  #closed = false;

  private constructor(router: Router, dir: string, logger: Logger) {
    this.#router = router;
    this.#dir = dir;
    this.endpoint = `ipc://${join(dir, "sentinel.sock")}`;
    this.#logger = logger;
  }

  /** Binds in a fresh private directory under the system temp dir. */
  static async start(logger: Logger): Promise<EmbeddedSentinel> {
    // mkdtemp creates the directory with mode 0700.
    const dir = await mkdtemp(join(tmpdir(), "casparian-run-"));
    const router = new Router({ linger: 0 });
    const sentinel = new EmbeddedSentinel(router, dir, logger);
    try {
      await router.bind(sentinel.endpoint);
    } catch (err) {
      router.close();
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
    return sentinel;
  }

  /** Starts delivering messages; malformed ones are logged and dropped, as a Sentinel must. */
  listen(handler: MessageHandler): void {
    this.#handler = handler;
    this.#loop ??= this.#receive();
  }

  async #receive(): Promise<void> {
    try {
      for await (const frames of this.#router) {
        const [identity, ...rest] = frames;
        if (identity === undefined) continue;
        let message: Message;
        try {
          message = decodeMessage(rest);
        } catch (err) {
          this.#logger.warn({ err: errorMessage(err) }, "dropped a malformed message from a worker");
          continue;
        }
        this.#handler({ identity, key: identity.toString("hex") }, message);
      }
    } catch (err) {
      if (!this.#closed) this.#logger.error({ err }, "sentinel socket failed");
    }
  }

  /** Sends in call order; a ROUTER never blocks, and a message to a vanished peer is dropped. */
  send<O extends Opcode>(peer: Peer, opcode: O, jobId: bigint, payload: PayloadByOpcode[O]): Promise<void> {
    const frames = [peer.identity, ...encodeMessage(opcode, jobId, payload)];
    const sent = this.#sending.then(() => (this.#closed ? undefined : this.#router.send(frames)));
    this.#sending = sent.catch((err: unknown) => {
      this.#logger.warn({ err: errorMessage(err), opcode: opcodeName(opcode), job_id: jobId }, "could not send to a worker");
    });
    return this.#sending;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#sending;
    this.#router.close();
    await this.#loop;
    await rm(this.#dir, { recursive: true, force: true });
  }
}
