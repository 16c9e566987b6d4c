"""Confines the guest process before any plugin code runs (Linux; elsewhere a no-op).

Applied in order, in the job's own process (fresh guest or warm fork child), before the plugin loads:
  * when the worker gave the job a cgroup (CASPARIAN_JOB_CGROUP), wait until the worker has moved
    this process into it, so nothing the plugin starts can escape the kill at the job's end;
  * the resource limits the worker passes in CASPARIAN_GUEST_LIMITS (bridge.limits: address space,
    CPU seconds, open files, file size), soft and hard, so the plugin cannot raise them again;
  * when running as root in a job cgroup: a cgroup namespace of its own, rooted at the job's cgroup.
    Cgroup files belong to root, so root even without capabilities may write its pid into another
    cgroup; on a hierarchy mounted with nsdelegate (systemd's default) the namespace refuses that.
    Without nsdelegate it does not: a root guest could leave its job's cgroup (a guest running as
    a uid of its own cannot);
  * PR_SET_NO_NEW_PRIVS, so nothing the plugin executes gains privileges (setuid binaries, file
    capabilities);
  * when running as root: every capability dropped (bounding set, then effective/permitted/
    inheritable), so a root plugin cannot read the worker's /proc/<pid>/environ, ptrace it, or
    override file permissions;
  * PR_SET_DUMPABLE 0, so other plugins (same uid) cannot read this guest's environment or
    memory either.
A step the kernel refuses is reported on stderr and the job goes on; a guest left outside its
cgroup refuses to run the plugin.

A warm guest's spare child takes these steps ahead, while it waits for its job (confine_ahead,
told the cgroup and limits its job will have); its job's confine() then checks that they are
the job's own, and refuses to run the plugin when they are not.
"""

import errno
import json
import os
import sys
import time

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWCGROUP = 0x02000000
_CAP_VERSION_3 = 0x20080522
CGROUP_ENV = "CASPARIAN_JOB_CGROUP"
LIMITS_ENV = "CASPARIAN_GUEST_LIMITS"
CGROUP_WAIT_SECONDS = 10
# Past the CPU limit the kernel sends SIGXCPU (which ends the guest); a plugin that catches it
# gets SIGKILL this many seconds later.
CPU_HARD_GRACE_SECONDS = 2
# bridge.limits key -> (resource name, bytes per unit)
LIMITS = {
    "addressSpaceMb": ("RLIMIT_AS", 1024 * 1024),
    "cpuSeconds": ("RLIMIT_CPU", 1),
    "openFiles": ("RLIMIT_NOFILE", 1),
    "fileSizeMb": ("RLIMIT_FSIZE", 1024 * 1024),
}
# The limits this process runs under (key -> configured value), for exceeded_limit().
applied = {}
# libc, loaded by prepare() in a warm guest so that each job's child does not pay for ctypes.
_libc = None
# (cgroup, limits) this process confined itself for, once it has.
_confined = None
# True in a spare child that confined itself before its job came (confine_ahead): tests and debugging tell the paths apart.
confined_ahead = False


def prepare():
    """In a warm guest's parent: load what confine() needs (ctypes, resource, libc) ahead, so its
    children inherit them instead of importing them again (a few ms each job), and make the
    parent not dumpable before its first fork.

    Every job forked from the parent runs as the parent's uid. A dumpable parent could be
    ptraced or have its /proc/<pid>/mem and environ read by any of them (same uid, no
    capability needed), and a plugin attached to it would write code into every later job.
    The flag is inherited by the fork, so the spare waiting for the next job is covered too."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import resource  # noqa: F401

    try:
        _libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        _libc = None  # confine() says why when it runs
        _warn("no libc: the warm parent stays dumpable")
        return
    if _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        _warn("PR_SET_DUMPABLE failed in the warm parent (errno %d)" % ctypes.get_errno())


def _warn(message):
    print("casparian guest: %s" % message, file=sys.stderr)


def wait_for_cgroup(name):
    """Block until /proc/self/cgroup names the job's cgroup: the worker moves us in right after
    starting us. Compares the last path component only, so a cgroup namespace does not matter."""
    deadline = time.monotonic() + CGROUP_WAIT_SECONDS
    while True:
        try:
            with open("/proc/self/cgroup") as handle:
                paths = [line[3:].strip() for line in handle if line.startswith("0::")]
        except OSError:
            paths = []
        if paths and paths[0].rstrip("/").rsplit("/", 1)[-1] == name:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not move this guest into its cgroup %s within %d s; not running the plugin outside it" % (name, CGROUP_WAIT_SECONDS))
        time.sleep(0.001)


def apply_limits(text):
    """setrlimit each configured limit (soft = hard), never above the hard limit we inherited."""
    import resource

    try:
        wanted = json.loads(text)
    except ValueError:
        _warn("unreadable %s: %r" % (LIMITS_ENV, text[:200]))
        return
    for key, value in wanted.items():
        if key not in LIMITS or not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            continue
        name, unit = LIMITS[key]
        resource_id = getattr(resource, name)
        soft = value * unit
        hard = soft + CPU_HARD_GRACE_SECONDS if key == "cpuSeconds" else soft
        _, inherited = resource.getrlimit(resource_id)
        if inherited != resource.RLIM_INFINITY:
            hard = min(hard, inherited)
            soft = min(soft, hard)
        try:
            resource.setrlimit(resource_id, (soft, hard))
            applied[key] = value
        except (OSError, ValueError) as exc:
            _warn("could not set %s to %d: %s" % (name, soft, exc))


def exceeded_limit(exc):
    """The bridge.limits key a failure comes from (the exception or one it was raised from), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) and "addressSpaceMb" in applied:
            return "addressSpaceMb"
        if isinstance(exc, OSError):
            if exc.errno == errno.EFBIG and "fileSizeMb" in applied:
                return "fileSizeMb"
            if exc.errno == errno.EMFILE and "openFiles" in applied:
                return "openFiles"
        exc = exc.__cause__ or exc.__context__
    return None


def _drop_capabilities(libc):
    import ctypes

    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    if libc.capset(ctypes.byref(Header(_CAP_VERSION_3, 0)), (Data * 2)()) != 0:
        _warn("could not drop capabilities (errno %d)" % ctypes.get_errno())


def confine():
    """Confine this process for its job (CASPARIAN_JOB_CGROUP, CASPARIAN_GUEST_LIMITS), unless
    it did so ahead for exactly these."""
    if not sys.platform.startswith("linux"):
        return
    wanted = (os.environ.get(CGROUP_ENV) or "", os.environ.get(LIMITS_ENV) or "")
    if _confined is not None:
        if _confined != wanted:
            raise RuntimeError("this guest was confined for cgroup %r and limits %r, its job asks for %r and %r; not running the plugin" % (_confined + wanted))
        return
    _confine(*wanted)


def confine_ahead(env):
    """In a warm guest's spare child, before its job: the steps confine() takes, for the cgroup and
    limits (`env`, the same variables) its job will have. The worker has moved it into that cgroup."""
    global confined_ahead
    if sys.platform.startswith("linux"):
        _confine(env.get(CGROUP_ENV) or "", env.get(LIMITS_ENV) or "")
        confined_ahead = True


def _confine(cgroup, limits):
    global _confined
    if cgroup:
        wait_for_cgroup(cgroup)
    _confined = (cgroup, limits)
    if limits:
        apply_limits(limits)
    import ctypes

    libc = _libc
    if libc is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
        except OSError as exc:
            _warn("no libc for prctl: %s" % exc)
            return
    if cgroup and os.geteuid() == 0 and libc.unshare(CLONE_NEWCGROUP) != 0:
        _warn("could not enter a cgroup namespace of the job's own (errno %d)" % ctypes.get_errno())
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _warn("PR_SET_NO_NEW_PRIVS failed (errno %d)" % ctypes.get_errno())
    if os.geteuid() == 0:
        _drop_capabilities(libc)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        _warn("PR_SET_DUMPABLE failed (errno %d)" % ctypes.get_errno())
