"""The plugin alone: the guest's own plugin runner and Arrow encoder over each file, without the
worker (no Sentinel, no socket, no cgroup, no confinement, no sink, no commit; the encoded
streams are counted and dropped). bench/small-files.ts sets it beside `casparian run`: what the
same plugin costs per file when nothing but Python runs, fresh and forked.

  python plugin_alone.py GUEST_DIR PLUGIN fresh FILE
      one file in this interpreter; the caller times the whole process (start, imports, job)
  python plugin_alone.py GUEST_DIR PLUGIN forked PARALLEL FILE...
      loads the plugin and runs it once on the first file in this process, then forks one child
      per file, at most PARALLEL at a time, as a warm guest does (gc.freeze() first, the next
      child forked ahead while a job runs, os._exit() at the end). The job in the parent pays
      every lazy import and first-use cost, which a warm guest may not do (no plugin code runs in
      its parent): this is a floor, the least a process per job costs. Prints one JSON line:
      {"seconds": first file handed over to the last job done, "files": n, "cpu_ms": the CPU of
      the forked children and of this process from the first fork on}.

A child that fails exits 1 and the run fails: a floor measured over failing jobs means nothing.
"""

import gc
import json
import os
import select
import sys
import time
import traceback


def load(guest_dir, plugin_path):
    sys.path.insert(0, guest_dir)
    from casparian_guest.runner import load_plugin
    from casparian_guest.sdk import install_sdk

    install_sdk()
    with open(plugin_path, encoding="utf-8") as handle:
        return load_plugin(handle.read(), "plugin")


class DroppedChannel:
    """Where the encoded Arrow streams go: counted, then dropped."""

    def __init__(self):
        self.bytes = 0

    def send_data(self, payload):
        self.bytes += len(payload)


def run_one(namespace, path):
    from casparian_guest.runner import run_plugin
    from casparian_guest.sdk import BridgeContext

    channel = DroppedChannel()
    ctx = BridgeContext(channel, 1, 1, path)
    run_plugin(namespace, ctx, path, 1, 1, announce=False)
    if channel.bytes == 0:
        raise RuntimeError("the plugin published nothing for %s" % path)


def spare(namespace):
    """A child forked ahead, as a warm guest forks the next job's child while the current job
    runs: it waits on a pipe for its file, runs it, reports on a second pipe, then exits (its
    exit overlaps the next job, as a warm child's does). Returns (pid, to_child, from_child)."""
    job_r, job_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(job_w)
        os.close(done_r)
        ok = False
        try:
            with os.fdopen(job_r, "rb") as job:
                path = job.read().decode("utf-8")
            if path:
                run_one(namespace, path)
                ok = True
        except BaseException:  # noqa: BLE001 - said here, then the job counts as failed
            traceback.print_exc()
        finally:
            os.write(done_w, b"0" if ok else b"1")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0 if ok else 1)
    os.close(job_r)
    os.close(done_w)
    return pid, job_w, done_r


def forked(namespace, parallel, paths):
    run_one(namespace, paths[0])
    gc.collect()
    gc.freeze()
    started = time.monotonic()
    cpu_before = os.times()
    pids = []
    running = []  # the pipes of the jobs not done yet
    failed = 0
    ahead = spare(namespace)
    for path in paths:
        while len(running) == parallel:
            ready, _, _ = select.select(running, [], [])
            for fd in ready:
                failed += os.read(fd, 1) != b"0"
                os.close(fd)
                running.remove(fd)
        pid, to_child, from_child = ahead
        os.write(to_child, path.encode("utf-8"))
        os.close(to_child)
        pids.append(pid)
        running.append(from_child)
        ahead = spare(namespace)
    for fd in running:
        failed += os.read(fd, 1) != b"0"
        os.close(fd)
    seconds = time.monotonic() - started
    pid, to_child, from_child = ahead
    os.close(to_child)  # the last spare gets no file and exits
    os.close(from_child)
    os.waitpid(pid, 0)
    for pid in pids:
        failed += os.waitpid(pid, 0)[1] != 0
    if failed:
        raise SystemExit("%d of %d forked jobs failed" % (failed, len(paths)))
    cpu_after = os.times()  # the children's times count once they are reaped
    cpu = sum(cpu_after[i] - cpu_before[i] for i in range(4))  # user, system, children's user and system
    print(json.dumps({"seconds": seconds, "files": len(paths), "cpu_ms": cpu * 1000}))


def main(argv):
    guest_dir, plugin_path, mode = argv[1], argv[2], argv[3]
    namespace = load(guest_dir, plugin_path)
    if mode == "fresh":
        run_one(namespace, argv[4])
        sys.stdout.flush()
        os._exit(0)  # as the guest does: no interpreter teardown
    elif mode == "forked":
        forked(namespace, int(argv[4]), argv[5:])
    else:
        raise SystemExit("mode is fresh or forked, not %r" % mode)


if __name__ == "__main__":
    main(sys.argv)
