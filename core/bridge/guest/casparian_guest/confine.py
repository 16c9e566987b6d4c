"""Confines the guest process before any plugin code runs (Linux; elsewhere a no-op).

Applied in order, in the job's own process (fresh guest or warm fork child), before the plugin loads:
  * PR_SET_NO_NEW_PRIVS, so nothing the plugin executes gains privileges (setuid binaries, file
    capabilities);
  * when running as root: every capability dropped (bounding set, then effective/permitted/
    inheritable), so a root plugin cannot read the worker's /proc/<pid>/environ, ptrace it, or
    override file permissions;
  * PR_SET_DUMPABLE 0, so other plugins (same uid) cannot read this guest's environment or
    memory either.
A step the kernel refuses is reported on stderr and the job goes on.
"""

import os
import sys

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
_CAP_VERSION_3 = 0x20080522

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
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as exc:
        _warn("no libc for prctl: %s" % exc)
        return
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _warn("PR_SET_NO_NEW_PRIVS failed (errno %d)" % ctypes.get_errno())
    if os.geteuid() == 0:
        _drop_capabilities(libc)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        _warn("PR_SET_DUMPABLE failed (errno %d)" % ctypes.get_errno())
