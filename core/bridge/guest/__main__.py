"""Casparian Flow guest shim: runs one plugin job inside its uv environment.

Started by the worker (core/bridge/host.ts) as ``<venv>/bin/python core/bridge/guest`` with
BRIDGE_SOCKET, BRIDGE_PLUGIN_FILE (a 0600 file holding the source), BRIDGE_FILE_PATH, BRIDGE_JOB_ID and
BRIDGE_FILE_VERSION_ID (PROTOCOL.md section 3). Standard library only at import time:
pyarrow, pandas and polars are used when the plugin's environment has them, never required.

Data plane (what we send over the Unix socket):
    [u32 BE n][n bytes]   one published chunk: a complete Arrow IPC stream
    [u32 0]               end of stream
    [u32 0xFFFFFFFF][u32 n][n bytes UTF-8]   error "Type: message" + traceback, then end of stream

Topic routing: every chunk names its topic in the IPC stream's schema metadata under the
key ``casparian.topic``. The host strips the key before sinks see the data; a stream
without it (from an older guest) is routed to the topic "output". No sideband frames.

Plugin shapes (section 4), all run unchanged:
  * ``class Handler``: ``configure(ctx, config)`` if present, then ``consume(event)``
    (event.path, event.file_id); on NotImplementedError or without consume,
    ``execute(file_path)``. What it returns is published to "output" (one chunk for a
    DataFrame/Table/dict of lists/list of dicts, item by item for other iterables;
    an item ``(topic, data)`` goes to that topic).
  * ``class Plugin(config)`` with ``consume(pathlib.Path, context)``: publishes itself and
    returns a status dict, which is never published; ``{"status": "error", "error": ...}``
    fails the job with that text.
  * ``ctx.register_topic(name)`` + ``ctx.publish(handle, data)``, and the SDK's
    ``BasePlugin.publish(topic, data)`` (importable as ``casparian_flow.sdk``,
    ``casparian_flow`` or ``casparian_sdk`` when the environment does not ship its own).
  * module-level ``MANIFEST`` dict (logged), or a module-level ``parse(path)`` function.

Publishable data: pandas DataFrame, pyarrow Table/RecordBatch, polars DataFrame, anything
with ``__arrow_c_stream__``, a dict of lists, a list of dicts. Without pyarrow the shim
writes Arrow IPC itself (int64, float64, bool, utf8, binary, null, date32, timestamp[us]).

stdout is reserved for one JSON metrics line printed at exit (plugin prints go to stderr);
logs go to stderr.
"""

import os
import sys


def close_inherited_fds():
    """Only stdin, stdout and stderr come from the worker on purpose. Node's spawn does not
    close the other descriptors the worker itself inherited without close-on-exec (from a
    shell, a supervisor, a test runner), so they would reach plugin code: a pipe or file of
    whoever started the worker. Closed before any plugin code, and before the shim opens its own."""
    try:
        inherited = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        return
    for fd in inherited:
        if fd > 2:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor, already closed


def load_shim_bytecode():
    """The worker compiled the shim (checked-hash pycs, verified against the source on every load)
    into CASPARIAN_SHIM_PYCACHE, a directory the guest cannot write (core/bridge/shim-bytecode.ts).
    Looked up there for the shim's own modules only: PYTHONPYCACHEPREFIX would also send the
    standard library and the venv's packages away from their own __pycache__."""
    prefix = os.environ.pop("CASPARIAN_SHIM_PYCACHE", None)
    if not prefix:
        return
    from importlib.machinery import SOURCE_SUFFIXES, FileFinder, SourceFileLoader
    from importlib.util import cache_from_source

    shim = os.path.dirname(os.path.abspath(__file__))

    def prefixed(call, *args):
        saved, sys.pycache_prefix = sys.pycache_prefix, prefix
        try:
            return call(*args)
        finally:
            sys.pycache_prefix = saved

    class ShimLoader(SourceFileLoader):
        def get_code(self, fullname):
            return prefixed(super().get_code, fullname)

    class ShimFinder(FileFinder):
        def find_spec(self, fullname, target=None):
            spec = super().find_spec(fullname, target)
            if spec is not None and isinstance(spec.loader, ShimLoader):
                spec.cached = prefixed(cache_from_source, spec.origin)
            return spec

    def shim_hook(path):
        if os.path.abspath(path or ".") != shim and not path.startswith(shim + os.sep):
            raise ImportError("not the shim")
        return ShimFinder(path, (ShimLoader, SOURCE_SUFFIXES))

    sys.path_hooks.insert(0, shim_hook)
    for entry in list(sys.path_importer_cache):
        if entry and (entry == shim or entry.startswith(shim + os.sep)):
            del sys.path_importer_cache[entry]


close_inherited_fds()
load_shim_bytecode()

from casparian_guest.runner import exit_now, main  # noqa: E402 - after the descriptors are closed

if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        from casparian_guest.fork_server import serve

        exit_now(serve(sys.argv[2:]))
    exit_now(main())
