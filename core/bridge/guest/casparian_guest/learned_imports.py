"""Modules a warm guest's jobs import that the guest had not: learned from each job, so the
warm guest imports them before its next fork and later jobs find them loaded.

Imports the plugin makes inside its functions (``import json`` in ``parse``), and submodules a
library imports on first use, are paid again by every job: a job is a fresh copy of its warm
parent. So a job's child, once its plugin has run, reports the names it added to
``sys.modules`` on a pipe of its own, and the parent imports them before it forks again.

The child is untrusted by then (the plugin ran in it), so its report is hostile input. The
parent reads at most MAX_REPORT_BYTES of it and at most MAX_NAMES names, and imports a name
only when it is a dotted module name, not loaded yet, with its package already loaded, and
its spec (found without importing anything) is built in, frozen, or files under the
interpreter's standard library or the environment's site-packages. Modules whose import does
more than define things (``__main__`` modules, ``antigravity``, ``this``, idlelib, turtledemo)
never are. The plugin itself is never a module on the path, so none of its code runs in the
parent. A probe child, forked from the parent, imports the names first: a name whose import
fails, crashes, or starts a thread (which a fork would copy half-alive) is never imported by
the parent. At most MAX_LEARNED names per parent. What is ignored is said in one log line on
stderr (the worker's log), never imported.
"""

import importlib
import importlib.util
import json
import os
import re
import select
import signal
import sys
import sysconfig
import threading
import time

MAX_REPORT_BYTES = 32 * 1024
MAX_NAMES = 256
MAX_LEARNED = 1024
MAX_NAME_LENGTH = 200
# How long the probe child may take to import a report's names.
PROBE_SECONDS = 30
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
# Modules whose import acts (opens a browser, prints, starts a GUI or a program), by top level.
ACTS_ON_IMPORT = frozenset(("antigravity", "this", "__hello__", "__phello__", "idlelib", "turtledemo"))


def snapshot():
    """In the child, before any plugin code: where its modules (its parent's) end. sys.modules is a
    dict, which keeps the order names went in, so the names a job adds are the ones after its last:
    report() walks only those. Walking them all (a set of every name) would touch every module
    name's page, each a copy-on-write fault in a forked child: about 0.4 ms per job."""
    modules = sys.modules
    return modules, len(modules), next(reversed(modules), None)


def added_since(start):
    """The names added to sys.modules since snapshot() (sorted), or None when that cannot be told
    (the job removed modules the child started with, or replaced sys.modules)."""
    modules, count, last = start
    if sys.modules is not modules:
        return None
    added = []
    for name in reversed(modules):
        if name is last:
            break
        added.append(name)
    else:
        if last is not None:
            return None  # the job removed the last module its child started with
    # Every name after `last` is new; if one of the starting names was removed, the counts
    # disagree (a starting name removed and added again sits after `last`: not new, yet counted).
    if count + len(added) != len(modules):
        return None
    return sorted(name for name in added if isinstance(name, str))


def report(fd, start):
    """In the child, after the plugin ran: the names it added to sys.modules, one a line, on
    `fd` (the parent's end reads them once the child exited). Best effort: never blocks; a job
    that removed modules (or replaced sys.modules) reports nothing."""
    data = b""
    try:
        names, size = [], 0
        for name in added_since(start) or ():
            size += len(name) + 1
            if len(names) >= MAX_NAMES or size > MAX_REPORT_BYTES:
                break
            names.append(name)
        data = "\n".join(names).encode("utf-8", "replace")  # well below a pipe's 64 KiB
    except Exception:  # noqa: BLE001 - the job is done; a lost report only costs a later job an import
        pass
    send_report(fd, data)


def send_report(fd, data):
    """In a child: write `data` (when there is any) on its report pipe `fd` without blocking, then
    close it. Best effort: a parent that reads nothing only learns less."""
    try:
        if data:
            os.set_blocking(fd, False)
            os.write(fd, data)
    except OSError:
        pass
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def read_bounded(fd, limit):
    """In the parent, once a child exited: what it wrote on the pipe `fd`, or None when it wrote
    more than `limit` bytes (a report no honest child writes). Never blocks; closes `fd`."""
    data = b""
    try:
        os.set_blocking(fd, False)
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except (BlockingIOError, InterruptedError):
        pass  # a descendant of the child holds the pipe open: what is there is the report
    except OSError:
        return b""
    finally:
        os.close(fd)
    return None if len(data) > limit else data


def read_report(fd):
    """The names a child reported (read_bounded with this module's bound)."""
    return read_bounded(fd, MAX_REPORT_BYTES)


def allowed_roots():
    """Real paths of the standard library and the environment's site-packages."""
    paths = sysconfig.get_paths()
    return tuple(sorted({os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib") if paths.get(key)}))


def _inside(path, roots):
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + os.sep) for root in roots)


def refusal(name, roots):
    """Why `name` must not be imported by the parent; None when it may be."""
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not NAME.match(name):
        return "not a module name"
    parts = name.split(".")
    if parts[0] in ACTS_ON_IMPORT or "__main__" in parts:
        return "acts when imported"
    parent = name.rpartition(".")[0]
    if parent and parent not in sys.modules:
        return "its package is not loaded"
    try:
        spec = importlib.util.find_spec(name)  # the package is loaded: this imports nothing
    except (ImportError, ValueError, AttributeError, TypeError):
        return "not found"
    if spec is None:
        return "not found"
    if spec.origin in ("built-in", "frozen"):
        return None
    places = ([spec.origin] if spec.has_location and spec.origin else []) + list(spec.submodule_search_locations or [])
    if not places:
        return "has no file"
    if not all(_inside(place, roots) for place in places):
        return "outside the standard library and site-packages"
    return None


class _StdoutToStderr:
    """fd 1 is the warm guest's control channel: whatever an import prints, even from C, goes to stderr."""

    def __enter__(self):
        sys.stdout.flush()
        self.saved_fd = os.dup(1)
        os.dup2(2, 1)
        self.saved = sys.stdout
        sys.stdout = sys.stderr
        return self

    def __exit__(self, *exc):
        sys.stdout = self.saved
        os.dup2(self.saved_fd, 1)
        os.close(self.saved_fd)
        return False


def _import_all(names):
    """(names imported, [(name, why not)])."""
    imported, failed = [], []
    with _StdoutToStderr():
        for name in names:
            try:
                importlib.import_module(name)
                imported.append(name)
            except BaseException as exc:  # noqa: BLE001 - a module may even call sys.exit at import
                failed.append((name, "import failed: %s" % type(exc).__name__))
    return imported, failed


def _max_fd():
    try:
        return max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")


def _threads():
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def probe(names):
    """Import `names` in a child forked from this process: (the names that imported without
    starting a thread, [(name, why not)] for those that must not be imported). Names after a
    thread-starting one are in neither list (tried again later). The parent stays untouched."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            # Nothing of the parent's stays open here (a job's pipe held open would delay its
            # job's start): only stderr, and the answer's pipe.
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(2, 1)
            answer = os.dup2(write_end, max(devnull, write_end, read_end) + 1)
            os.closerange(3, answer)
            os.closerange(answer + 1, _max_fd())
            write_end = answer
            kept, dropped = [], []
            threads = _threads()
            for name in names:
                done, failed = _import_all([name])
                if failed:
                    dropped.extend(failed)
                elif _threads() > threads or threading.active_count() > 1:
                    dropped.append((name, "its import starts a thread"))
                    break  # every later name would be measured with that thread running
                else:
                    kept.extend(done)
            os.write(write_end, json.dumps({"kept": kept, "dropped": dropped}).encode("utf-8"))
        finally:
            os._exit(0)
    os.close(write_end)
    data, deadline = b"", time.monotonic() + PROBE_SECONDS
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                return [], [(name, "importing took longer than %d s" % PROBE_SECONDS) for name in names]
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    try:
        answer = json.loads(data)
        return [n for n in answer["kept"] if n in names], [(n, why) for n, why in answer["dropped"] if n in names]
    except (ValueError, KeyError, TypeError):
        return [], [(name, "the probe died importing it") for name in names]


class Learner:
    """The parent's side: turns reports into imports, within the bounds above."""

    def __init__(self, log=None):
        self.roots = allowed_roots()
        self.learned = []
        self.refused = set()  # names never tried again
        self.log = log or (lambda message: print("casparian warm guest: %s" % message, file=sys.stderr, flush=True))

    def may_learn(self, data):
        """Whether learn(data) may import something: a name not loaded, not refused before, and
        not refused by the checks that cost nothing (learn makes them all)."""
        if not data:
            return False
        for line in data.decode("utf-8", "replace").split("\n")[:MAX_NAMES]:
            if line and line not in sys.modules and line not in self.refused and len(line) <= MAX_NAME_LENGTH and NAME.match(line):
                parts = line.split(".")
                if parts[0] not in ACTS_ON_IMPORT and "__main__" not in parts:
                    return True
        return False

    def learn(self, data):
        """Import what a child's report names that may be imported; returns the names imported."""
        if data is None:
            self.log("a job reported more than %d bytes of new modules; ignored, nothing imported" % MAX_REPORT_BYTES)
            return []
        lines = [line for line in data.decode("utf-8", "replace").split("\n") if line]
        ignored = []
        if len(lines) > MAX_NAMES:
            ignored.append("%d names beyond the first %d" % (len(lines) - MAX_NAMES, MAX_NAMES))
            lines = lines[:MAX_NAMES]
        pending = {name for name in lines if name not in sys.modules and name not in self.refused}
        imported = []
        # Level by level: a module is looked at only once its package is loaded here, so that
        # finding it imports nothing and its package's path is the one that was checked.
        while pending:
            ready = sorted(n for n in pending if not isinstance(n, str) or "." not in n or n.rpartition(".")[0] in sys.modules)
            if not ready:
                break
            pending.difference_update(ready)
            wanted = []
            for name in ready:
                if name in sys.modules:
                    continue
                why = refusal(name, self.roots)
                if why is None and len(self.learned) + len(imported) + len(wanted) >= MAX_LEARNED:
                    why = "%d modules learned already" % MAX_LEARNED
                if why is not None:
                    self.refused.add(name)
                    ignored.append("%r: %s" % (name[:MAX_NAME_LENGTH], why))
                else:
                    wanted.append(name)
            if not wanted:
                continue
            kept, dropped = probe(wanted)
            for name, why in dropped:
                self.refused.add(name)
                ignored.append("%r: %s" % (name, why))
            done, failed = _import_all(kept)
            for name, why in failed:
                self.refused.add(name)
                ignored.append("%r: %s" % (name, why))
            imported.extend(done)
        for name in sorted(pending):
            self.refused.add(name)
            ignored.append("%r: its package is not loaded" % name[:MAX_NAME_LENGTH])
        self.learned.extend(imported)
        if imported:
            self.log("imported %d module(s) a job imported, for the next jobs: %s" % (len(imported), ", ".join(imported[:20])))
        if ignored:
            self.log("ignored %d of the modules a job reported (never imported): %s" % (len(ignored), "; ".join(ignored[:8])))
        return imported
