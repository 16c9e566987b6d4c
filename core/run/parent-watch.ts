/**
 * Preloaded into each worker that `casparian run` starts (`node --import`): when
 * the run that started it is gone (killed with SIGKILL, so it could not stop its
 * workers), the worker stops too instead of reconnecting forever as a remote
 * worker rightly does. It stops the normal way, by SIGTERM (its running job is
 * aborted, --grace 0), and hard-exits if that does not finish.
 *
 * The run starts its workers with an IPC channel (worker-process.ts, stdio "ipc") and
 * never closes it, so the channel ends exactly when the run's process does, however it
 * died: the kernel closes the run's end and 'disconnect' fires at once, with no polling.
 * There is no fallback for a worker without a channel: only `casparian run` preloads
 * this file and it always opens one; a worker started any other way is not the run's
 * and keeps a remote worker's behaviour.
 */
if (process.channel !== undefined) {
  process.once("disconnect", () => {
    process.kill(process.pid, "SIGTERM");
    setTimeout(() => process.exit(1), 10_000).unref();
  });
  // The channel only reports the run's death: it must not keep a stopping worker alive.
  process.channel.unref();
}

export {};
