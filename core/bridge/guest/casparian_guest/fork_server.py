"""Warm guest: one Python per (environment, plugin source) that forks one child per job.

Started by the worker (core/bridge/warm-pool.ts) as ``<venv>/bin/python <guest> --serve
<source file>`` with the same allowlisted environment a job gets, minus the job's own
BRIDGE_* variables. It imports what the plugin imports (its module-level imports, read
with ``ast`` so no plugin code runs here, or ``MANIFEST["preload"]`` when declared), then
serves fork requests. Each job is still a process of its own: whatever the plugin does
(mutating globals, ``os._exit``, leaking a thread, crashing) ends with its child.

Control channel: JSON lines, requests on stdin, events on stdout; stderr is this
process's own log. Stdin closing (the worker is gone) ends the parent and its children.

    <- {"event": "ready", "fork": true, "pid": ..., "rss_kb": ..., "imported": [...], "warmed": [...], ...}
    <- {"event": "spare", "pid": ...}
    -> {"op": "prepare", "pid": ..., "env": {"CASPARIAN_JOB_CGROUP": ..., "CASPARIAN_GUEST_LIMITS": ...}}
    -> {"op": "open", "pid": ..., "dir": ..., "env": {...}}   ("env": a "prepare" sent with it, when held until now)
    -> {"op": "close", "pid": ...}   (another job started first: the directory is gone)
    -> {"op": "ran", "id": 1, "pid": ..., "spare": "later"}   (the worker handed the spare its job itself; no "started"
                                                              follows unless that spare was gone, then with "exited")
    -> {"op": "spare"}   (fork the next job's spare now)
    -> {"op": "run", "id": 1, "pid": <the spare's pid, or null>, "dir": ..., "env": {...}}
    <- {"event": "started", "id": 1, "pid": ...}
    <- {"event": "spare", "pid": ...}
    <- {"event": "exited", "id": 1, "pid": ..., "code": 0, "signal": null}

The next job's child is forked ahead (the spare): it leads a session and process group of
its own before its pid is announced (the worker kills a job by that group, or by the job's
cgroup), holds nothing of any job, and waits on a pipe for its job. The worker moves the
spare into the next job's cgroup while the current job runs (a move costs an RCU grace
period, 5-20 ms); on "run" the spare gets its job over the pipe, and the parent forks the
next spare. While it waits, the worker has it confine itself for its job ("prepare": once it
is in the job's cgroup; confine.py) and, while no job runs, connect its stdout and stderr to the
next job's directory ("open"; "close" when another job started first and the directory went);
on "run" it then only takes the job's own variables. "discard"
retires a spare the worker will not use (the parent forks another), and a "run" naming a
spare that is not the current one gets a child forked for it. A spare that dies unused is
reported ("spare-exited"); the next job then gets a
child forked on demand, which the worker moves into its cgroup on "started" (the child
waits for that before plugin code runs, confine.py). The child connects its stdout and
stderr to ``stdout.sock`` / ``stderr.sock`` in the job's directory, takes the job's
directory as cwd and the job's variables, and then runs exactly what a fresh guest runs
(runner.main).

Before the first fork the parent also pays the shim's and the standard library's
first-use costs (confine.prepare, first_use.py) and compiles the plugin source to a code
object, which each child executes: no plugin code runs in the parent.
"""

import ast
import gc
import importlib
import json
import os
import select
import selectors
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import warnings

from . import arrow_out, confine, first_use, hot_pages, learned_imports, runner
from .sdk import install_sdk

# Exit statuses of a child that could not become a job (the host reports them as such).
CHILD_SETUP_FAILED = 70
# Names the shim provides itself (sdk.install_sdk), and imports that mean nothing at run time.
NOT_PRELOADED = ("__future__", "casparian_flow", "casparian_sdk")


def read_manifest(tree):
    """The module-level MANIFEST dict when it is a plain literal; {} otherwise (never evaluated)."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "MANIFEST" for t in targets):
            try:
                value = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return {}
            return value if isinstance(value, dict) else {}
    return {}


def module_level_imports(tree):
    """Modules the plugin imports when it is loaded: top-level statements, and those inside
    top-level if/try/with blocks (optional dependencies). Imports inside functions are not
    preloaded: they may be rare paths, and MANIFEST["preload"] can name them."""
    names = []

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and node.module:
                    names.append(node.module)
                    # `from package import submodule` imports the submodule too.
                    names.extend("%s.%s" % (node.module, alias.name) for alias in node.names if alias.name != "*")
            elif isinstance(node, (ast.If, ast.With)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
            elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return names


def plan(source):
    """(modules to import, the parsed source or None, None) or (None, None, why this plugin must not be forked)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return [], None, None  # the job's own run reports the error, with the plugin's line
    manifest = read_manifest(tree)
    if manifest.get("fork") is False:
        return None, None, 'the plugin\'s MANIFEST sets "fork": False'
    declared = manifest.get("preload")
    if isinstance(declared, (list, tuple)) and all(isinstance(n, str) for n in declared):
        modules = list(declared)
    else:
        modules = module_level_imports(tree)
    seen = set()
    kept = []
    for name in modules:
        if name in seen or name.split(".")[0] in NOT_PRELOADED:
            continue
        seen.add(name)
        kept.append(name)
    return kept, tree, None


def preload(modules):
    """Import each module; a failure here is only logged (the job hits it again and reports it)."""
    imported, failed = [], []
    saved = sys.stdout
    sys.stdout = sys.stderr  # stdout is the control channel
    try:
        for name in modules:
            parent, _, leaf = name.rpartition(".")
            if parent and parent in sys.modules and hasattr(sys.modules[parent], leaf) and name not in sys.modules:
                continue  # `from package import name` where name is not a submodule
            try:
                importlib.import_module(name)
                imported.append(name)
            except BaseException as exc:  # noqa: BLE001 - a module may even call sys.exit at import
                if parent and isinstance(exc, ModuleNotFoundError) and exc.name == name:
                    continue  # an attribute, not a submodule
                failed.append("%s (%s: %s)" % (name, type(exc).__name__, str(exc)[:200]))
    finally:
        sys.stdout = saved
    return imported, failed


def warm_shim():
    """The shim's own first-use costs, paid once here instead of in every job: publishing a
    tiny table through the real path loads pyarrow's IPC writer, and pyarrow's lazy import of
    pandas (about 1 s, on the first table built from Python data, even without pandas code)."""
    try:
        arrow_out.warm_up({"warm": [1]})
        pandas = sys.modules.get("pandas")
        if pandas is not None and arrow_out.pyarrow_or_none() is not None:
            # The DataFrame → Arrow conversion (pyarrow.pandas_compat) has first-call costs of its own.
            frame = pandas.DataFrame({"i": [1], "f": [0.5], "s": ["x"], "t": pandas.to_datetime(["2024-01-01T00:00:00Z"], utc=True)})
            arrow_out.warm_up(frame)
    except Exception as exc:  # noqa: BLE001 - a job would hit the same problem and report it
        print("casparian warm guest: warming the shim failed: %s" % exc, file=sys.stderr)


def resident_kb():
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak


def os_threads():
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def emit(event):
    """One event line on the control channel (written whole, never buffered)."""
    data = (json.dumps(event) + "\n").encode("utf-8")
    while data:
        data = data[os.write(1, data):]


class Server:
    def __init__(self, source, plugin_name, home, prefault_kb=0):
        self.source = source
        self.home = home
        self.plugin_name = plugin_name
        self.code = None
        self.selector = selectors.DefaultSelector()
        self.children = {}  # pid -> (request id or None for the spare, pidfd or None)
        self.spare = None  # (pid, write end of its job pipe): the next job's child, forked ahead
        self.discarded = set()  # spares replaced by a newer one, until they are reaped
        self.pidfds = hasattr(os, "pidfd_open")
        self.learner = learned_imports.Learner()
        self.reports = {}  # pid -> read end of the pipe its child reports its new imports on
        self.hot = hot_pages.HotPages(prefault_kb)
        self.job_pipes = {}  # pid -> job pipe of a child the worker handed its job directly, until it exits
        self.unused_exits = {}  # pid -> (code, signal) of the latest spares that exited without a job

    def prepare(self):
        started = time.monotonic()
        modules, tree, refusal = plan(self.source)
        if refusal is not None:
            emit({"event": "ready", "fork": False, "reason": refusal, "pid": os.getpid()})
            return False
        install_sdk()
        confine.prepare()
        imported, failed = preload(modules)
        warm_shim()
        warmed = first_use.warm(tree, imported) if tree is not None else []
        try:
            self.code = runner.compile_plugin(self.source, self.plugin_name)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            self.code = None  # each job compiles again and reports the error
        python_threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        if python_threads:
            emit({"event": "ready", "fork": False, "pid": os.getpid(),
                  "reason": "importing the plugin's modules started Python threads (%s); forking would copy them half-alive" % ", ".join(python_threads[:5])})
            return False
        # The plugin's literal MANIFEST, announced once here: its jobs do not note it each (runner.run_plugin).
        manifest = read_manifest(tree) if tree is not None else {}
        announced = {key: str(manifest[key])[:200] for key in ("name", "version") if manifest.get(key) is not None}
        gc.collect()
        gc.freeze()  # children then share these pages instead of touching them on every collection
        emit({
            "event": "ready", "fork": True, "pid": os.getpid(), "rss_kb": resident_kb(), "threads": os_threads(),
            "imported": imported, "failed": failed, "warmed": warmed, "ms": int((time.monotonic() - started) * 1000),
            "manifest": announced,
        })
        return True

    def serve(self):
        self.selector.register(0, selectors.EVENT_READ, None)
        try:
            self.make_spare()
        except OSError as exc:  # the first job forks its own
            print("casparian warm guest: could not fork a spare child: %s" % exc, file=sys.stderr)
            emit({"event": "spare-failed", "pid": None})
        pending = b""
        while True:
            timeout = None if self.pidfds or not self.children else 0.05
            for key, _ in self.selector.select(timeout):
                if key.data is None:
                    chunk = os.read(0, 65536)
                    if not chunk:
                        return self.stop()
                    pending += chunk
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        if line.strip():
                            self.handle(json.loads(line))
                else:
                    self.reap(key.data)
            if not self.pidfds:
                self.poll_children()

    def handle(self, request):
        op = request.get("op")
        if op == "run":
            self.run(request)
        elif op in ("prepare", "open", "close"):
            self.forward(request)
        elif op == "ran":
            self.ran(request)
        elif op == "spare":
            self.fork_spare()
        elif op == "discard":
            if self.spare is not None and self.spare[0] == request.get("pid"):
                self.renew_spare()
        elif op == "stop":
            self.stop()
        else:
            print("casparian warm guest: unknown request %r" % (op,), file=sys.stderr)

    def run(self, request):
        """Hand the job to the spare child (forked ahead, waiting for it), then fork the next spare
        while this job runs. The host has moved the spare it heard of into the job's cgroup
        already ("pid" in the request); any other child it moves in on "started"."""
        # The spare the worker named, or one forked now, not announced (the worker would move it
        # into another scope). Another spare the parent has stays the next job's.
        if self.spare is not None and self.spare[0] == request.get("pid"):
            spare, self.spare = self.spare, None
        else:
            kept, self.spare = self.spare, None
            spare = self.make_spare(announce=False)
            self.spare = kept
        pid, job_w = spare
        data = (json.dumps(request) + "\n").encode("utf-8")
        try:
            while data:
                data = data[os.write(job_w, data):]
        except OSError:
            pass  # the spare died meanwhile: its exit is reported for this job
        finally:
            os.close(job_w)
        _, pidfd = self.children.get(pid, (None, None))
        self.children[pid] = (request.get("id"), pidfd)
        # "spare": whether a spare for the next job follows (none when the parent still has one).
        emit({"event": "started", "id": request.get("id"), "pid": pid, "spare": self.spare is None})
        if request.get("spare") != "later":
            self.fork_spare()

    def fork_spare(self):
        """The next job's spare, unless there is one. "later" in a job's request: the worker asks
        ("spare") once the job's child is running its plugin, so the fork (a copy of this process's
        page tables) does not compete with the child's start."""
        if self.spare is not None:
            return
        try:
            self.make_spare()
        except OSError as exc:  # no process to spare now (EAGAIN): the next job forks its own
            print("casparian warm guest: could not fork a spare child: %s" % exc, file=sys.stderr)
            emit({"event": "spare-failed", "pid": None})

    def ran(self, request):
        """The worker handed the spare its job itself (over the stdout socket of the job's
        directory, opened ahead): the spare is the job's child from now on."""
        pid, request_id = request.get("pid"), request.get("id")
        if self.spare is not None and self.spare[0] == pid:
            self.job_pipes[pid] = self.spare[1]  # closed when it exits: EOF before it read its job would end it
            self.spare = None
            _, pidfd = self.children.get(pid, (None, None))
            self.children[pid] = (request_id, pidfd)
            # No "started": the worker knows the pid, and that a spare follows (one event less per job).
            if request.get("spare") != "later":
                self.fork_spare()
            return
        # It died before this came (or is not ours): its exit is the job's.
        code, signame = self.unused_exits.pop(pid, (None, "the spare child was gone"))
        emit({"event": "started", "id": request_id, "pid": pid, "spare": self.spare is None})
        emit({"event": "exited", "id": request_id, "pid": pid, "code": code, "signal": signame})
        self.fork_spare()

    def forward(self, request):
        """A preparation step for the spare the worker names (if it is still the spare)."""
        if self.spare is None or self.spare[0] != request.get("pid"):
            return
        data = (json.dumps(request) + "\n").encode("utf-8")
        try:
            while data:
                data = data[os.write(self.spare[1], data):]
        except OSError:
            pass  # the spare died: its exit is reported

    def make_spare(self, announce=True):
        """Fork the next job's child now: it leads a session of its own and waits on a pipe for its
        job, so a job costs no fork. It holds nothing of any job: it is forked before its job exists."""
        sys.stderr.flush()
        led_r, led_w = os.pipe()
        job_r, job_w = os.pipe()
        report_r, report_w = os.pipe()
        hot = self.hot.open_report()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(led_r)
                os.close(job_w)
                os.close(report_r)
                self.hot.in_child(hot)
                self.become_job(job_r, led_w, report_w)
            except BaseException:  # noqa: BLE001 - the child must never return into the server loop
                try:
                    traceback.print_exc()
                finally:
                    os._exit(CHILD_SETUP_FAILED)
            os._exit(CHILD_SETUP_FAILED)
        os.close(led_w)
        os.close(job_r)
        os.close(report_w)
        self.reports[pid] = report_r
        self.hot.in_parent(pid, hot)
        # The child's session (= process group) must exist before the host hears the pid: the
        # host kills the job by it. One byte once the child called setsid(), or EOF if it died.
        try:
            os.read(led_r, 1)
        finally:
            os.close(led_r)
        pidfd = None
        if self.pidfds:
            try:
                pidfd = os.pidfd_open(pid)
                self.selector.register(pidfd, selectors.EVENT_READ, pid)
            except OSError:
                self.pidfds = False
        self.children[pid] = (None, pidfd)
        self.spare = (pid, job_w)
        if announce:
            emit({"event": "spare", "pid": pid})
        return self.spare

    def reap(self, pid):
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = None
        self.finished(pid, status)

    def poll_children(self):
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, None
            if done:
                self.finished(pid, status)

    def finished(self, pid, status):
        request_id, pidfd = self.children.pop(pid, (None, None))
        if pidfd is not None:
            self.selector.unregister(pidfd)
            os.close(pidfd)
        job_w = self.job_pipes.pop(pid, None)
        if job_w is not None:
            os.close(job_w)
        code, signame = None, None
        if status is not None:
            if os.WIFSIGNALED(status):
                signame = signal.Signals(os.WTERMSIG(status)).name
            else:
                code = os.WEXITSTATUS(status)
        unused = self.spare is not None and self.spare[0] == pid
        if unused or pid in self.discarded:
            # A spare that ended without a job: retired ("discard"), or killed from outside,
            # when the next job forks its own. Its status is kept a while: the worker may have
            # handed it a job itself meanwhile ("ran").
            if unused:
                os.close(self.spare[1])
                self.spare = None
            self.discarded.discard(pid)
            report = self.reports.pop(pid, None)
            if report is not None:
                os.close(report)
            self.hot.forget(pid)
            self.unused_exits[pid] = (code, signame)
            while len(self.unused_exits) > 16:
                self.unused_exits.pop(next(iter(self.unused_exits)))
            emit({"event": "spare-exited", "pid": pid})
            return
        report = self.reports.pop(pid, None)
        names = learned_imports.read_report(report) if report is not None else b""
        # New modules need a spare forked after their import: the worker retires this one
        # ("discard") unless it has handed it a job already. Said before the job's exit, which
        # ends the job: the worker may hand the next job to the spare itself right after it.
        stale = self.spare is not None and self.learner.may_learn(names)
        if stale:
            emit({"event": "stale-spare", "pid": self.spare[0]})
        emit({"event": "exited", "id": request_id, "pid": pid, "code": code, "signal": signame})
        if self.learner.learn(names):
            gc.freeze()  # the learned modules' objects are shared with the children too
        # New hot pages go to the spare waiting now (it stays moved, confined and connected).
        grew = self.hot.collect(pid)
        if not stale and grew and self.spare is not None and not self.hot.send(self.spare):
            emit({"event": "stale-spare", "pid": self.spare[0]})

    def renew_spare(self):
        """The spare was forked before the parent learned new imports: the next job gets one that has them.
        The old spare reads end-of-file on its job pipe and exits (it holds nothing)."""
        if self.spare is None:
            return
        pid, job_w = self.spare
        self.spare = None
        os.close(job_w)
        self.discarded.add(pid)
        try:
            self.make_spare()
        except OSError as exc:
            print("casparian warm guest: could not fork a spare child: %s" % exc, file=sys.stderr)
            emit({"event": "spare-failed", "pid": None})

    def stop(self):
        """The worker is gone or asked us to go: no job may outlive it, nor the spare."""
        for pid in self.children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        # The worker removes our directory too, unless it is exiting itself.
        shutil.rmtree(self.home, ignore_errors=True)
        os._exit(0)

    def disconnect_output(self, own_stderr):
        """Undo connect_output in a spare whose directory went: stdout to /dev/null, stderr the server's again."""
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 1)
        os.close(devnull)
        os.dup2(own_stderr, 2)
        os.close(own_stderr)
        os.chdir(self.home)

    def become_job(self, job_r, led, report_w):
        """In the child: leave the server behind, wait for the job, then run it exactly as a fresh guest does."""
        # A session of its own, as a fresh guest has: the plugin's children are told apart
        # from the other jobs of this parent, which share its session otherwise.
        os.setsid()
        os.write(led, b"1")
        os.close(led)
        self.selector.close()
        for _, pidfd in self.children.values():
            if pidfd is not None:
                os.close(pidfd)
        self.children = {}
        for fd in self.reports.values():
            os.close(fd)
        self.reports = {}
        # Whatever else the server had open (a pipe an import left behind, ...) is not the job's.
        keep = sorted({0, 1, 2, job_r, report_w} | self.hot.child_fds())
        for low, high in zip(keep, keep[1:] + [os.sysconf("SC_OPEN_MAX")]):
            if high > low + 1:
                os.closerange(low + 1, high)
        # Nothing of the control channel stays open here: stdin and stdout are the server's.
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        # Requests arrive one a line from the parent: what can be done before the job ("prepare",
        # "open", "close"), then "run". Once connected to a directory opened ahead, the worker may
        # send the "run" itself, on the stdout socket (fd 1), sparing the parent's hop.
        opened = None
        own_stderr = None  # the server's stderr, while the output is connected to a directory opened ahead
        inbox = {job_r: b""}
        request = None
        while request is None:
            message = None
            for fd in (job_r, 1):
                if b"\n" in inbox.get(fd, b""):
                    line, inbox[fd] = inbox[fd].split(b"\n", 1)
                    message = json.loads(line)
                    break
            if message is None:
                if not inbox:
                    os._exit(0)  # neither the server nor the worker will send a job
                # While no request is there and the CPU is idle; goes on after each, or after a pause.
                pause = self.hot.prefault(list(inbox))
                for fd in select.select(list(inbox), [], [], pause)[0]:
                    chunk = os.read(fd, 65536)
                    if chunk:
                        inbox[fd] += chunk
                    elif fd == 1:
                        del inbox[1]  # the worker gave the directory up: "close" follows
                    elif 1 not in inbox or not select.select([1], [], [], 0)[0]:
                        os._exit(0)  # the server went away (or stopped, or retired us) before this spare got a job
                    else:
                        del inbox[job_r]  # what the worker sent comes first
                continue
            op = message.get("op")
            if op == "prepare":
                confine.confine_ahead(message.get("env", {}))
            elif op == "hot":
                self.hot.adopt(message)
            elif op == "open" and opened is None:
                if "env" in message:  # the "prepare" the worker held for this message
                    confine.confine_ahead(message["env"])
                own_stderr = os.dup(2)
                try:
                    connect_output(message["dir"])
                    opened = message["dir"]
                    inbox[1] = b""
                except OSError:  # the directory went meanwhile ("close" follows); its job connects on "run"
                    self.disconnect_output(own_stderr)
                    own_stderr = None
            elif op == "close" and opened is not None:
                inbox.pop(1, None)
                self.disconnect_output(own_stderr)
                own_stderr = None
                opened = None
            elif op == "run":
                request = message
        os.close(job_r)
        if own_stderr is not None:
            os.close(own_stderr)
        job_dir = request["dir"]
        if opened is None:
            connect_output(job_dir)
        elif opened != job_dir:
            raise RuntimeError("this child was connected to %s ahead, its job is in %s; not running it" % (opened, job_dir))
        os.environ.update({str(k): str(v) for k, v in request.get("env", {}).items()})
        reseed()
        known = learned_imports.snapshot()
        code = runner.main(source=self.source, code=self.code)
        learned_imports.report(report_w, known)
        self.hot.report()
        runner.exit_now(code)


def connect_output(job_dir):
    """stdout and stderr become the job's (its directory's sockets), and the directory its cwd."""
    for fd, name in ((1, "stdout.sock"), (2, "stderr.sock")):
        stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stream.connect(os.path.join(job_dir, name))
        os.dup2(stream.fileno(), fd)
        stream.close()
    os.chdir(job_dir)


def reseed():
    """`random` reseeds itself in a fork child; numpy's global generator does not: every job
    would draw the same numbers, unlike fresh processes."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        try:
            numpy_random.seed()
        except Exception:  # noqa: BLE001 - reseeding is best effort
            pass


def serve(argv):
    """Entry point: ``--serve <source file> <plugin name> [<KiB of hot pages a spare pre-faults>]``."""
    warnings.filterwarnings("ignore", message=r".*multi-threaded.*fork.*", category=DeprecationWarning)
    source_path, plugin_name = argv[0], argv[1] if len(argv) > 1 else "plugin"
    with open(source_path, "rb") as handle:
        source = handle.read().decode("utf-8")
    prefault_kb = int(argv[2]) if len(argv) > 2 and argv[2].isdigit() else 0
    server = Server(source, plugin_name, os.path.dirname(os.path.abspath(source_path)), prefault_kb)
    if not server.prepare():
        return 0
    server.serve()
    return 0
