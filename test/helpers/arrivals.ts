/**
 * Waiting for something to arrive (a message, a log line) with a timeout, without
 * polling: whoever appends calls notify(), and every pending probe looks again.
 */
export class Arrivals {
  readonly #probes = new Set<() => void>();

  /** Something new arrived: let every waiting probe look again. */
  notify(): void {
    for (const probe of [...this.#probes]) probe();
  }

  /**
   * Resolves with the first non-undefined result of `probe` (tried now and after each
   * notify()); rejects with `onTimeout()` after `timeoutMs`.
   */
  until<T>(probe: () => T | undefined, timeoutMs: number, onTimeout: () => Error): Promise<T> {
    return new Promise((resolve, reject) => {
      const look = (): void => {
        const found = probe();
        if (found === undefined) return;
        this.#probes.delete(look);
        clearTimeout(timer);
        resolve(found);
      };
      const timer = setTimeout(() => {
        this.#probes.delete(look);
        reject(onTimeout());
      }, timeoutMs);
      this.#probes.add(look);
      look();
    });
  }
}
