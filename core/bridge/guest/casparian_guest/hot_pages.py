"""Learned hot pages: the warm guest's pages its jobs write, copied ahead by each spare child.

A job's child starts sharing every page with its warm parent; each page it writes to is copied
first (a copy-on-write fault, about 5 us on a virtual machine), and a pandas job writes to a
few thousand of the parent's pages (reference counts, allocator pools, caches): about 12 ms of
a 45 ms job. They are mostly the same pages job after job. So the first jobs of a parent
(learning, LEARN_JOBS of them) report, once their output is delivered, the pages of their
writable private mappings that are present and exclusive (pagemap bits 63 and 56: copied or
new), as coalesced address ranges on a pipe of their own; the parent keeps those inside its
own writable private mappings, up to bridge.warm.prefaultMb, and sends them to the spare
waiting then (a "hot" request on its job pipe: it stays moved, confined and connected); each
spare, while it waits for its job, writes them in ahead (madvise MADV_POPULATE_WRITE), so the
job finds them copied already. That moves the copying off the job's path, not off the CPU, so a
spare takes only a free CPU: one that waited on its run queue (another process wanted that CPU)
pauses, and what it has not copied when its job comes, the job's child copies itself.

Nothing of one job reaches another: a spare copies its parent's pages, which hold nothing of
any job; a report only names addresses. The report comes from a process that ran plugin code,
so it is hostile input: at most MAX_REPORT_BYTES, in one fixed binary form, and only the parts
of its ranges inside the parent's own writable private mappings at that moment are kept;
anything else is refused with a log line. A spare's own memory grows by at most prefaultMb,
and each job's receipt says what its child pre-faulted (guest.prefault_kb) and how many page
faults it still took (guest.minor_faults).
"""

import array
import base64
import json
import mmap
import os
import select
import sys
import time

from .learned_imports import read_bounded, send_report

PAGE = mmap.PAGESIZE
MADV_POPULATE_WRITE = 23  # Linux 5.14
PR_SET_DUMPABLE = 4
LEARN_JOBS = 2
# A report: MAGIC, then (start, end) address pairs as little-endian u64.
MAGIC = b"CSPHOT1\n"
MAX_RANGES = 8192
MAX_REPORT_BYTES = len(MAGIC) + 16 * MAX_RANGES
# The report's pipe holds a whole report, so the child never waits for the parent to read it.
PIPE_BYTES = 1 << 18
# A spare's job pipe when the learned set is sent to it: room for the set (base64) and its requests.
JOB_PIPE_BYTES = 1 << 19
# Pagemap entries read at once (8 bytes each): 256 KiB of pagemap, 128 MiB of addresses.
SCAN_PAGES = 1 << 15
# A spare checks after every this many bytes (about 0.3 ms of work) whether its job has come (it
# then stops pre-faulting) and whether its CPU is busy; a larger range is written in parts.
CHECK_BYTES = 256 * 1024
# The pre-fault uses idle CPU only: a spare that waited on a run queue for more than BUSY_SHARE
# of the time it ran (over at least BUSY_WINDOW_NS of running) takes CPU another process wanted,
# and pauses, PAUSE_S at first, twice as long each time after, up to MAX_PAUSE_S.
BUSY_SHARE = 0.2
BUSY_WINDOW_NS = 1_000_000
PAUSE_S = 0.004
MAX_PAUSE_S = 0.064
# Byte 7 of a pagemap entry holds bits 56-63: 0x80 present, 0x01 mapped exclusively.
_HOT = bytes(1 if b & 0x81 == 0x81 else 0 for b in range(256))
F_SETPIPE_SZ = 1031

# In a job's child: what its spare pre-faulted, the CPU that took, how often it paused for a busy
# CPU, and its usage when its job came.
_prefault_kb = 0
_prefault_cpu_ms = 0
_prefault_pauses = 0
_at_job = None


def writable_private(maps_text):
    """Sorted (start, end) of the writable private mappings in a /proc/<pid>/maps text."""
    out = []
    for line in maps_text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 2 or len(fields[1]) < 4 or fields[1][1] != "w" or fields[1][3] != "p":
            continue
        if len(fields) > 5 and fields[5].strip() in ("[vvar]", "[vdso]", "[vsyscall]", "[vvar_vclock]"):
            continue
        start, _, end = fields[0].partition("-")
        out.append((int(start, 16), int(end, 16)))
    out.sort()
    return out


def _own_mappings():
    with open("/proc/self/maps") as handle:
        return writable_private(handle.read())


def exclusive_ranges(pagemap_fd, mappings, max_ranges=MAX_RANGES):
    """Coalesced (start, end) ranges of the pages in `mappings` that are present and exclusive.
    The work per page is done by bytes.translate and bytes.find (memchr), not a Python loop."""
    ranges = []
    for start, end in mappings:
        address = start
        while address < end and len(ranges) < max_ranges:
            count = min(SCAN_PAGES, (end - address) // PAGE)
            entries = os.pread(pagemap_fd, count * 8, address // PAGE * 8)
            hot = entries[7::8].translate(_HOT)
            first = hot.find(1)
            while first >= 0:
                last = hot.find(0, first)
                if last < 0:
                    last = len(hot)
                run_start, run_end = address + first * PAGE, address + last * PAGE
                first = hot.find(1, last)
                if ranges and ranges[-1][1] == run_start:
                    ranges[-1] = (ranges[-1][0], run_end)
                elif len(ranges) < max_ranges:
                    ranges.append((run_start, run_end))
                else:
                    break
            address += count * PAGE
    return ranges


def encode(ranges):
    values = array.array("Q", [value for pair in ranges for value in pair])
    if sys.byteorder != "little":
        values.byteswap()
    return MAGIC + values.tobytes()


def decode(data):
    """[(start, end)] of a well-formed report; None for anything else."""
    if not data.startswith(MAGIC) or (len(data) - len(MAGIC)) % 16:
        return None
    values = array.array("Q")
    values.frombytes(data[len(MAGIC):])
    if sys.byteorder != "little":
        values.byteswap()
    return list(zip(values[0::2], values[1::2]))


def clip(reported, mappings, limit_pages):
    """(the parts of the reported ranges inside `mappings`, coalesced, at most `limit_pages`
    pages and MAX_RANGES ranges; how many reported pages were refused: outside, misaligned or
    left over)."""
    aligned = [(start, end) for start, end in reported if start < end and start % PAGE == 0 and end % PAGE == 0]
    refused = sum(max(1, (end - start) // PAGE) for start, end in reported if not (start < end and start % PAGE == 0 and end % PAGE == 0))
    kept, pages, index = [], 0, 0
    for start, end in sorted(aligned):
        inside = 0
        while index < len(mappings) and mappings[index][1] <= start:
            index += 1
        probe = index
        while probe < len(mappings) and mappings[probe][0] < end:
            low, high = max(start, mappings[probe][0]), min(end, mappings[probe][1])
            take = min(high - low, (limit_pages - pages) * PAGE)
            if take > 0 and kept and kept[-1][1] >= low:
                grown = max(kept[-1][1], low + take) - kept[-1][1]
                kept[-1] = (kept[-1][0], kept[-1][1] + grown)
                pages += grown // PAGE
                inside += take
            elif take > 0 and len(kept) < MAX_RANGES:
                kept.append((low, low + take))
                pages += take // PAGE
                inside += take
            probe += 1
        refused += (end - start - inside) // PAGE
    return kept, refused


def merge(old, new):
    out = []
    for start, end in sorted(old + new):
        if out and out[-1][1] >= start:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _schedstat():
    """(ns this thread ran, ns it waited on a run queue), or None where the kernel does not say.
    The run time is the clock's (schedstat's own lags while the thread runs: it is brought up to
    date at ticks); the wait is complete whenever the thread reads it (it is running)."""
    try:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        try:
            waited = os.read(fd, 128).split()[1]
        finally:
            os.close(fd)
        return time.thread_time_ns(), int(waited)
    except (OSError, ValueError, IndexError):
        return None


def _usage():
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt, usage.ru_utime + usage.ru_stime


def job_metrics():
    """Receipt metrics of a job's process (guest.*): KiB its spare pre-faulted and the CPU
    milliseconds that took, and its minor page faults and CPU milliseconds since its job came
    (a fresh guest: since its start)."""
    try:
        faults, cpu = _usage()
    except (ImportError, OSError):
        return {}
    start_faults, start_cpu = _at_job or (0, 0.0)
    return {"prefault_kb": _prefault_kb, "prefault_cpu_ms": _prefault_cpu_ms, "prefault_pauses": _prefault_pauses, "minor_faults": faults - start_faults, "cpu_ms": int((cpu - start_cpu) * 1000)}


class HotPages:
    """The warm parent's learned set, and the hooks its fork server calls around each child."""

    def __init__(self, limit_kb, log=None):
        self.log = log or (lambda message: print("casparian warm guest: %s" % message, file=sys.stderr, flush=True))
        self.limit_pages = max(0, int(limit_kb)) * 1024 // PAGE
        self.ranges = []
        self.pages = 0
        self.learned_from = 0
        self.reports = {}  # pid -> read end of its child's report pipe
        self.report_fd = None  # in a learning child: the write end
        self._next = 0  # in a spare: the next range to pre-fault
        self._offset = 0  # in a spare: how far into that range it is
        self._pause = 0.0  # in a spare: how long it waits before it pre-faults again (0: it does not wait)
        self.libc = None
        if self.limit_pages > 0 and sys.platform.startswith("linux"):
            self.libc = self._populate_or_none()

    def _populate_or_none(self):
        """libc with madvise, when MADV_POPULATE_WRITE works here (tried on a page of our own)."""
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            libc.madvise.restype = ctypes.c_int
            libc.prctl.restype = ctypes.c_int
            page = mmap.mmap(-1, PAGE)
            try:
                view = ctypes.c_char.from_buffer(page)
                ok = libc.madvise(ctypes.addressof(view), PAGE, MADV_POPULATE_WRITE) == 0
                error = ctypes.get_errno()
                del view
            finally:
                page.close()
        except (OSError, AttributeError, ValueError) as exc:
            self.log("hot pages are not pre-faulted: %s" % exc)
            return None
        if not ok:
            self.log("hot pages are not pre-faulted: madvise(MADV_POPULATE_WRITE) failed (%s; Linux 5.14 or later has it)" % os.strerror(error))
            return None
        return libc

    @property
    def learning(self):
        return self.libc is not None and self.learned_from < LEARN_JOBS and self.pages < self.limit_pages

    # --- around a fork (fork_server.make_spare) ---

    def open_report(self):
        """Before a fork: the report pipe for a child that learns, else None."""
        if not self.learning:
            return None
        read_end, write_end = os.pipe()
        try:
            import fcntl

            fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_BYTES)
        except (OSError, ImportError):
            pass  # a report that does not fit is cut short, and refused
        return read_end, write_end

    def in_child(self, pipe):
        if pipe is not None:
            os.close(pipe[0])
            self.report_fd = pipe[1]
        self.reports = {}  # the server's other ends: closed with its descriptors

    def child_fds(self):
        return set() if self.report_fd is None else {self.report_fd}

    def in_parent(self, pid, pipe):
        if pipe is not None:
            os.close(pipe[1])
            self.reports[pid] = pipe[0]

    def send(self, spare):
        """Give the spare waiting now (pid, write end of its job pipe) the learned set, as a request
        line it reads before its job ("hot"); False when it cannot take it whole without blocking."""
        if spare is None:
            return True
        line = (json.dumps({"op": "hot", "ranges": base64.b64encode(encode(self.ranges)).decode("ascii")}) + "\n").encode("ascii")
        fd = spare[1]
        try:
            import fcntl

            if fcntl.fcntl(fd, F_SETPIPE_SZ, JOB_PIPE_BYTES) < len(line) + 64 * 1024:
                return False
            os.set_blocking(fd, False)
            try:
                written = os.write(fd, line)
            finally:
                os.set_blocking(fd, True)
        except (OSError, ImportError):
            return False
        if written < len(line):
            # Cannot happen with the room made above; never leave a line cut short in a job pipe.
            os.write(fd, line[written:])
        return True

    # --- in the spare child ---

    def adopt(self, message):
        """The parent's learned set, sent to this spare after its fork ("hot" request)."""
        ranges = decode(base64.b64decode(message.get("ranges", "")))
        if ranges is not None:
            self.ranges = ranges
            self._next = 0
            self._offset = 0


    def prefault(self, job_fds):
        """Write in the learned pages while no request is on any of `job_fds` and the CPU is idle:
        returns as soon as a request is there, or the CPU is busy, or all are in; called again,
        it goes on where it stopped. Returns how long to wait for a request before calling again
        (None: no need to)."""
        global _prefault_kb, _prefault_cpu_ms, _prefault_pauses, _at_job
        started = _usage()
        pause = None
        if self.libc is not None and self._next < len(self.ranges):
            window = _schedstat()
            # Not checked against the mappings again here (reading them costs about 6 ms per
            # spare): a range the parent unmapped since fails (ENOMEM) and is skipped, and
            # whatever the parent mapped there since is its own memory, never a job's.
            madvise = self.libc.madvise
            done = 0
            while self._next < len(self.ranges):
                if done >= CHECK_BYTES:
                    done = 0
                    if select.select(job_fds, [], [], 0)[0]:
                        break
                    now = _schedstat() if window is not None else None
                    if now is not None and now[0] - window[0] >= BUSY_WINDOW_NS:
                        if now[1] - window[1] > BUSY_SHARE * (now[0] - window[0]):
                            # Another process wanted this CPU. If it stays busy, the job's child copies
                            # what is left itself (its own faults cost about what they cost here).
                            self._pause = min(MAX_PAUSE_S, self._pause * 2) if self._pause else PAUSE_S
                            _prefault_pauses += 1
                            pause = self._pause
                            break
                        window = now
                start, end = self.ranges[self._next]
                low = start + self._offset
                high = min(end, low + CHECK_BYTES)
                if high == end:
                    self._next += 1
                    self._offset = 0
                else:
                    self._offset = high - start
                if madvise(low, high - low, MADV_POPULATE_WRITE) == 0:
                    _prefault_kb += (high - low) // 1024
                done += high - low
        _at_job = _usage()  # the last call is just before the job's own request
        _prefault_cpu_ms += int((_at_job[1] - started[1]) * 1000)
        return pause

    def report(self):
        """In a learning child, once its output is delivered: its hot pages, to the parent. Best effort."""
        fd, self.report_fd = self.report_fd, None
        if fd is None:
            return
        data = b""
        try:
            pagemap = self._open_pagemap()
            try:
                ranges = exclusive_ranges(pagemap, _own_mappings())
            finally:
                os.close(pagemap)
            data = encode(ranges)
        except Exception:  # noqa: BLE001 - a lost report only costs later jobs their faults
            pass
        send_report(fd, data)

    def _open_pagemap(self):
        try:
            return os.open("/proc/self/pagemap", os.O_RDONLY)
        except PermissionError:
            # Not dumpable (confine.py): /proc/self/pagemap belongs to root then. The plugin is
            # done and this process holds nothing of another job; dumpable again for the open only.
            self.libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
            try:
                return os.open("/proc/self/pagemap", os.O_RDONLY)
            finally:
                self.libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)

    # --- in the parent, once a child exited (fork_server.finished) ---

    def forget(self, pid):
        """A spare that never got a job: nothing to learn."""
        fd = self.reports.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def collect(self, pid):
        """Learn from a finished job's report; True when the learned set grew (then sent to the spare)."""
        fd = self.reports.pop(pid, None)
        if fd is None:
            return False
        data = read_bounded(fd, MAX_REPORT_BYTES)
        self.learned_from += 1
        if data is None:
            self.log("a job reported more than %d bytes of hot pages; refused, nothing learned" % MAX_REPORT_BYTES)
            return False
        if not data:
            return False
        reported = decode(data)
        if reported is None:
            self.log("a job's hot-page report is not in the expected form (%d bytes); refused, nothing learned" % len(data))
            return False
        try:
            mine = _own_mappings()
        except OSError as exc:
            self.log("could not read this process's mappings (%s); hot pages refused" % exc)
            return False
        kept, refused = clip(reported, mine, self.limit_pages - self.pages)
        before = self.pages
        self.ranges = merge(self.ranges, kept)[:MAX_RANGES]
        self.pages = sum((end - start) // PAGE for start, end in self.ranges)
        if refused:
            self.log("refused %d page(s) of a job's hot-page report (outside this process's writable private mappings, misaligned, or beyond bridge.warm.prefaultMb)" % refused)
        if self.pages > before:
            self.log("learned %d KiB of hot pages from a job (%d KiB in %d ranges in all); spares pre-fault them" % ((self.pages - before) * PAGE // 1024, self.pages * PAGE // 1024, len(self.ranges)))
            return True
        return False
