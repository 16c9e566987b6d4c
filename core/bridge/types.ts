/**
 * Contract between the job runner and the bridge host (host.ts), which runs one
 * guest process per job and streams its Arrow output back, batch by batch.
 */
import type { Batch, JobContext } from "../kernel/job.js";
import type { GuestLimits } from "./limits.js";
import type { SandboxOptions } from "./sandbox.js";
import type { SlotUser } from "./slot-user.js";
import type { WarmPool } from "./warm-pool.js";

export interface GuestTimeouts {
  /** The guest must connect to the socket within this many ms. */
  connectMs: number;
  /** Fail when no frame arrives for this many ms (while the consumer is not busy). */
  idleMs: number;
  /** Fail when the whole job takes longer. */
  jobMs: number;
}

export interface GuestRunOptions {
  /** `<venv>/bin/python` of the job's environment. */
  interpreterPath: string;
  /**
   * What the environment is, beyond its path (its seal: digest and build time): an env rebuilt
   * at the same path (another python_version, evicted and built again) is another env, and a
   * warm guest started in the old one is never used for it.
   */
  envIdentity?: string;
  job: JobContext;
  timeouts: GuestTimeouts;
  /** Extra variable names copied from the worker's environment into the guest's. */
  allowEnv?: readonly string[];
  /** Largest accepted data frame; default 256 MiB. */
  maxFrameBytes?: number;
  /** Called once per published chunk, in order, awaited before the next frame is read. */
  onBatch(batch: Batch): Promise<void>;
  /**
   * Reuse a data frame's buffer for a later frame once `onBatch` has settled for its batch
   * and every `Batch.retain()` was released (frame-pool.ts). Only for consumers that keep
   * no batch past onBatch without retain(): the pipeline sets it when every onBatch tap says
   * so. Default false: each frame gets a buffer of its own, left to the garbage collector.
   */
  recycleFrames?: boolean;
  /**
   * Warm guests (warm-pool.ts): fork the job from a parent that has the plugin's imports
   * loaded. Without it, or when the pool declines (MANIFEST["fork"] = False, ...), the job
   * runs in a fresh interpreter.
   */
  warm?: WarmPool;
  /** Resource limits of the guest (limits.ts); defaults for the keys left out. */
  limits?: GuestLimits;
  /** false: track the job's processes by session even where a cgroup is possible (job-scope.ts). Default true. */
  cgroup?: boolean;
  /**
   * The slot's own unprivileged user (slot-user.ts): the guest runs as it, in a job
   * directory only it (and the root worker) can open.
   */
  slotUser?: SlotUser;
  /** Run the guest inside a sandbox tool (sandbox.ts); warm guests are not used then. */
  sandbox?: SandboxOptions;
}

export interface GuestResult {
  rows: number;
  batches: number;
  ipcBytes: number;
  /**
   * From starting the guest to its connecting: interpreter start plus imports of the shim
   * for a fresh guest; the fork (plus, for the first job of a warm parent, its start and
   * preloading) for a warm one.
   */
  startupMs: number;
  /** True when the job was forked from a warm parent that was ready before the job asked. */
  warm?: boolean;
  /** Resident memory of the warm parent the job was forked from (its children share these pages); 0 for a fresh guest. */
  parentRssKb?: number;
  /** From spawning the guest to its exit. */
  durationMs: number;
  rowsByTopic: Map<string, number>;
  /** Buffers allocated for data frames: fewer than `batches` when frames were recycled (recycleFrames). */
  frameBuffers?: number;
  /** The guest's own stdout metrics line, integer values only. */
  guestMetrics: Record<string, number>;
}
