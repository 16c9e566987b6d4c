/**
 * Preloaded into each worker that `casparian run` starts (`node --import`): when
 * the run that started it is gone (killed with SIGKILL, so it could not stop its
 * workers), the worker stops too instead of reconnecting forever as a remote
 * worker rightly does. It stops the normal way, by SIGTERM (its running job is
 * aborted, --grace 0), and hard-exits if that does not finish.
 */
const expected = Number(process.env.CASPARIAN_RUN_PARENT_PID);

if (Number.isInteger(expected) && expected > 0) {
  const timer = setInterval(() => {
    if (process.ppid === expected) return;
    clearInterval(timer);
    process.kill(process.pid, "SIGTERM");
    setTimeout(() => process.exit(1), 10_000).unref();
  }, 500);
  timer.unref();
}

export {};
