"""Loads the plugin, runs whichever shape it has, and reports the outcome to the host."""

import builtins
import json
import linecache
import logging
import os
import pathlib
import sys
import time
import traceback

from . import hot_pages
from .arrow_out import declare_from_manifest, is_publishable, typing_metrics
from .confine import confine, exceeded_limit
from .channel import DEFAULT_TOPIC, Channel
from .sdk import BridgeContext, FileEvent, install_sdk

log = logging.getLogger("casparian.guest")


def log_to_stderr():
    """The shim's and the plugin's log records go to stderr (the worker's log), INFO and up.
    Done once, when the shim is imported: a warm guest's children inherit it instead of setting
    it up again for every job. A plugin's own basicConfig() then changes nothing, as before."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


log_to_stderr()
# The stderr the shim started with: its own lines go there even when a plugin replaces sys.stderr.
_stderr = sys.stderr


def note(message):
    """One INFO line of the shim's own about the job ("INFO casparian.guest: ..."), written straight
    to stderr in the log's format. Through logging, the first record of a warm guest's child touches
    ~130 of its parent's pages (copy-on-write faults: ~0.6 ms of a 4 ms job), and these lines need
    none of it. The plugin's logging configuration governs the plugin's records, not these."""
    try:
        _stderr.write("INFO %s: %s\n" % (log.name, message))
        _stderr.flush()
    except (OSError, ValueError):
        pass  # stderr closed by the plugin: the line is only informative


class PluginReportedError(Exception):
    """A plugin returned {"status": "error", ...}."""


def plugin_filename(name):
    return "<plugin %s>" % name


def plugin_lines(source, filename):
    """Tracebacks show the plugin's own lines: its source in linecache under its file name.
    Split once per source: a warm guest's children find the entry their parent made."""
    global _lines_of
    entry = linecache.cache.get(filename)
    if _lines_of is None or _lines_of[0] is not source or entry is not _lines_of[1]:
        entry = (len(source), None, source.splitlines(True), filename)
        linecache.cache[filename] = entry
        _lines_of = (source, entry)


# (source, its linecache entry) plugin_lines() made last.
_lines_of = None


def compile_plugin(source, name):
    """The plugin's code object (a warm guest compiles it once for all its jobs), its lines in linecache."""
    filename = plugin_filename(name)
    plugin_lines(source, filename)
    return compile(source, filename, "exec")


def load_plugin(source, name, code=None):
    """Run the plugin module; `code` is its source compiled already (by a warm guest)."""
    filename = plugin_filename(name)
    plugin_lines(source, filename)
    namespace = {"__name__": "__casparian_plugin__", "__file__": filename, "__builtins__": builtins}
    exec(code if code is not None else compile(source, filename, "exec"), namespace)
    return namespace


def read_source(path):
    with open(path, "rb") as handle:
        return handle.read().decode("utf-8")


def check_status(result):
    """A status dict ({"status": ...}) is a report, not data. An error status fails the job."""
    if isinstance(result, dict) and "status" in result and not is_publishable(result):
        status = str(result.get("status", "")).lower()
        if status in ("error", "failed", "failure"):
            raise PluginReportedError(str(result.get("error") or result.get("message") or result))
        note("plugin reported %s" % json.dumps(result, default=str)[:2000])
        return True
    return False


def publish_result(result, ctx):
    """Publish what consume()/execute()/parse() returned: one chunk, or each item of an iterable."""
    if result is None or check_status(result):
        return
    if is_publishable(result):
        ctx.publish_to(DEFAULT_TOPIC, result)
        return
    if isinstance(result, (str, bytes, dict)):
        raise TypeError("plugin returned %s, which is neither data nor an iterable of data" % type(result).__name__)
    try:
        items = iter(result)
    except TypeError:
        raise TypeError("plugin returned %s, which is neither data nor an iterable of data" % type(result).__name__) from None
    for item in items:
        if item is None:
            continue
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            ctx.publish_to(item[0], item[1])
        else:
            ctx.publish_to(DEFAULT_TOPIC, item)


def run_plugin(namespace, ctx, file_path, file_version_id, job_id, announce=True):
    """`announce`: note the plugin's manifest (a warm guest's parent announced it once, for all its jobs)."""
    manifest = namespace.get("MANIFEST")
    if isinstance(manifest, dict):
        if announce:
            note("plugin manifest: name=%s version=%s" % (manifest.get("name"), manifest.get("version")))
        declare_from_manifest(manifest)
    # The run's --plugin-config (a JSON object); {} when none was given.
    config_text = os.environ.get("BRIDGE_PLUGIN_CONFIG")
    config = json.loads(config_text) if config_text else {}

    if isinstance(namespace.get("Handler"), type):
        handler = namespace["Handler"]()
        if callable(getattr(handler, "configure", None)):
            handler.configure(ctx, config)
        event = FileEvent(file_path, file_version_id, job_id=job_id)
        consume = getattr(handler, "consume", None)
        result = None
        ran = False
        if callable(consume):
            try:
                result = consume(event)
                ran = True
            except NotImplementedError:
                ran = False
        if not ran:
            execute = getattr(handler, "execute", None)
            if not callable(execute):
                raise TypeError("Handler has neither a working consume(event) nor execute(file_path)")
            result = execute(file_path)
        publish_result(result, ctx)
        return

    if isinstance(namespace.get("Plugin"), type):
        plugin = namespace["Plugin"](config)
        if callable(getattr(plugin, "configure", None)):
            plugin.configure(ctx, config)
        result = plugin.consume(pathlib.Path(file_path), ctx)
        publish_result(result, ctx)
        return

    if callable(namespace.get("parse")):
        publish_result(namespace["parse"](file_path), ctx)
        return

    raise TypeError("plugin defines no class Handler, no class Plugin and no parse() function")


def describe_exception(exc):
    head = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return head + "\n\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def main(source=None, code=None):
    """Run one job. A fresh guest reads the plugin source from BRIDGE_PLUGIN_FILE; a warm
    guest's child (fork_server.py) passes the source it already holds, and its compiled code."""
    started = time.monotonic()
    confine()  # before any plugin code: no privileges, no capabilities, not dumpable

    env = os.environ
    required = ("BRIDGE_SOCKET", "BRIDGE_FILE_PATH") + (("BRIDGE_PLUGIN_FILE",) if source is None else ())
    missing = [k for k in required if not env.get(k)]
    if missing:
        log.error("missing environment variables: %s", ", ".join(missing))
        return 2
    job_id = int(env.get("BRIDGE_JOB_ID", "0"))
    file_version_id = int(env.get("BRIDGE_FILE_VERSION_ID", "0"))
    file_path = env["BRIDGE_FILE_PATH"]
    plugin_name = env.get("BRIDGE_PLUGIN_NAME", "plugin")

    # The metrics line goes out on a copy of stdout: a plugin that closes fd 1 (or reopens it
    # as one of its own files) neither fails the job nor gets the line in its file.
    try:
        metrics_fd = os.dup(1)
    except OSError:
        metrics_fd = None
    channel = Channel(env["BRIDGE_SOCKET"])
    ctx = BridgeContext(channel, job_id, file_version_id, file_path)
    real_stdout = sys.stdout
    exit_code = 0
    source_file = source is None
    try:
        if source_file:
            source = read_source(env["BRIDGE_PLUGIN_FILE"])
        install_sdk()
        sys.stdout = sys.stderr  # plugin prints must not corrupt the metrics line
        try:
            namespace = load_plugin(source, plugin_name, code)
            run_plugin(namespace, ctx, file_path, file_version_id, job_id, announce=source_file)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise RuntimeError("plugin called sys.exit(%r)" % (exc.code,)) from None
        finally:
            sys.stdout = real_stdout
        channel.send_end()
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the host as an error frame
        exit_code = 1
        text = describe_exception(exc)
        log.error("plugin failed: %s", text)
        limit = exceeded_limit(exc)
        try:
            # A resource limit is named, so the host can say which bridge.limits key to raise.
            channel.send_error(text if limit is None else json.dumps({"error": text, "limit": limit}))
            channel.send_end()
        except OSError as send_exc:
            log.error("could not report the failure to the host: %s", send_exc)
    finally:
        channel.close()
        metrics = {
            "rows": ctx.rows,
            "chunks": ctx.chunks,
            "ipc_bytes": channel.bytes,
            "topics": len(ctx.rows_by_topic),
            "guest_ms": int((time.monotonic() - started) * 1000),
        }
        metrics.update(typing_metrics())
        metrics.update(hot_pages.job_metrics())
        write_metrics(metrics_fd, metrics)
    return exit_code


def write_metrics(fd, metrics):
    if fd is None:
        return
    data = (json.dumps(metrics) + "\n").encode("utf-8")
    try:
        while data:
            data = data[os.write(fd, data):]
        os.close(fd)
    except OSError:
        pass  # nobody reads our stdout any more: the metrics are optional


def exit_now(code):
    """Exit without interpreter teardown: unloading numpy/pyarrow/pandas costs ~100 ms per job
    and buys nothing once the host has the whole stream. atexit handlers still run."""
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream must not change the exit code
                pass
        os._exit(code)
