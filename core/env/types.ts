/**
 * Contract between the worker and the environment manager (manager.ts).
 * Environments are content-addressed: env_hash = sha256(lockfile_content) in hex.
 */
import type { EnvReadyPayload, PrepareEnvCommand } from "../protocol/messages.js";

/** A provisioned environment, pinned against eviction until released. */
export interface EnvLease {
  readonly envHash: string;
  readonly interpreterPath: string;
  /**
   * Which build of the env this is (its seal's build time and digest): an env rebuilt at the
   * same path (another python_version, evicted and built again) has another identity.
   */
  readonly identity?: string;
  /** Unpin; the env becomes evictable again once no job holds it. Idempotent. */
  release(): void;
}

export interface EnvironmentProvider {
  /** Build (or find) the environment. Concurrent calls for one hash build once. */
  prepare(command: PrepareEnvCommand): Promise<EnvReadyPayload>;
  /** Pin a ready environment for a job; null when it was never provisioned here. */
  acquire(envHash: string): Promise<EnvLease | null>;
}
