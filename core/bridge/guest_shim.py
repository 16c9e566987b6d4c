"""Casparian Flow guest shim: runs one plugin job inside its uv environment.

Started by the worker (core/bridge/host.ts) as ``<venv>/bin/python guest_shim.py`` with
BRIDGE_SOCKET, BRIDGE_PLUGIN_CODE (base64 source), BRIDGE_FILE_PATH, BRIDGE_JOB_ID and
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

import base64
import builtins
import datetime
import json
import linecache
import logging
import os
import pathlib
import socket
import struct
import sys
import threading
import time
import traceback
import types

TOPIC_KEY = "casparian.topic"
DEFAULT_TOPIC = "output"
END_OF_STREAM = 0
ERROR_FRAME = 0xFFFFFFFF
# Exit status of a guest whose worker went away mid-job (EX_TEMPFAIL).
HOST_GONE_EXIT_CODE = 75
MAX_ERROR_BYTES = 1024 * 1024
# Larger published tables are split into several frames of about this size.
SPLIT_BYTES = 64 * 1024 * 1024
SEND_BUFFER_BYTES = 4 * 1024 * 1024

log = logging.getLogger("casparian.guest")


class PluginReportedError(Exception):
    """A plugin returned {"status": "error", ...}."""


# ---------------------------------------------------------------------------
# Socket channel
# ---------------------------------------------------------------------------


class Channel:
    def __init__(self, path):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A larger send buffer lets the plugin build its next chunk while the host decodes
            # this one (the kernel caps it at net.core.wmem_max).
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        except OSError:
            pass
        self._sock.connect(path)
        self.frames = 0
        self.bytes = 0
        # Set before the last frame goes out: from then on the host may close first.
        self.finished = False
        threading.Thread(target=self._exit_when_host_is_gone, name="host-watch", daemon=True).start()

    def _exit_when_host_is_gone(self):
        """The host never writes to us, so a readable socket means it closed: the worker died
        (kill -9, OOM) or gave up on the job. An orphaned guest must not keep running (a plugin
        can sleep or loop for hours), so leave at once, skipping cleanup that could block."""
        try:
            while self._sock.recv(4096):
                pass
        except OSError:
            pass
        if not self.finished:
            try:
                sys.stderr.write("casparian guest: the worker closed the bridge socket; exiting\n")
                sys.stderr.flush()
            finally:
                os._exit(HOST_GONE_EXIT_CODE)

    def send_data(self, payload):
        n = memoryview(payload).nbytes
        if n == 0 or n >= 0xFFFFFFFB:
            raise ValueError("an IPC chunk of %d bytes cannot be framed" % n)
        self._sock.sendall(struct.pack(">I", n))
        self._sock.sendall(payload)
        self.frames += 1
        self.bytes += n

    def send_error(self, text):
        self.finished = True
        data = text.encode("utf-8", "replace")[:MAX_ERROR_BYTES]
        self._sock.sendall(struct.pack(">II", ERROR_FRAME, len(data)) + data)

    def send_end(self):
        self.finished = True
        self._sock.sendall(struct.pack(">I", END_OF_STREAM))

    def close(self):
        try:
            self._sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------
# Converting published data to Arrow IPC
# ---------------------------------------------------------------------------

_pyarrow = None
_pyarrow_checked = False


def pyarrow_or_none():
    global _pyarrow, _pyarrow_checked
    if not _pyarrow_checked:
        _pyarrow_checked = True
        try:
            import pyarrow  # noqa: F401
            import pyarrow.ipc  # noqa: F401

            _pyarrow = pyarrow
        except ImportError:
            _pyarrow = None
    return _pyarrow


def _module_of(obj):
    return type(obj).__module__.split(".")[0]


def is_publishable(data):
    """True for one chunk of data (as opposed to an iterable of chunks)."""
    mod = _module_of(data)
    if mod in ("pandas", "polars") and hasattr(data, "columns"):
        return True
    if mod == "pyarrow" and type(data).__name__ in ("Table", "RecordBatch"):
        return True
    if isinstance(data, dict):
        return len(data) > 0 and all(isinstance(v, (list, tuple)) for v in data.values())
    if isinstance(data, list):
        return len(data) > 0 and all(isinstance(item, dict) for item in data)
    return hasattr(data, "__arrow_c_stream__")


def _to_arrow_table(pa, data):
    mod = _module_of(data)
    name = type(data).__name__
    if mod == "pyarrow" and name == "Table":
        return data
    if mod == "pyarrow" and name == "RecordBatch":
        return pa.Table.from_batches([data])
    if mod == "polars" and hasattr(data, "to_arrow"):
        return data.to_arrow()
    if mod == "pandas" and hasattr(data, "columns"):
        return pa.Table.from_pandas(data)
    if isinstance(data, dict):
        return pa.table({str(k): list(v) if isinstance(v, tuple) else v for k, v in data.items()})
    if isinstance(data, list):
        return pa.Table.from_pylist(data)
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data)
    raise TypeError(
        "cannot publish %s.%s: expected a pandas or polars DataFrame, a pyarrow Table or RecordBatch, "
        "a dict of lists or a list of dicts" % (type(data).__module__, name)
    )


def _without_view_types(pa, table):
    """apache-arrow (JS) readers may not know the *_view layouts polars emits: use large types."""
    fields = []
    changed = False
    for field in table.schema:
        t = field.type
        if str(t) == "string_view":
            fields.append(field.with_type(pa.large_string()))
            changed = True
        elif str(t) == "binary_view":
            fields.append(field.with_type(pa.large_binary()))
            changed = True
        else:
            fields.append(field)
    if not changed:
        return table
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def arrow_streams(data, topic):
    """Yield (ipc_bytes, num_rows) for one published object, split when very large."""
    pa = pyarrow_or_none()
    if pa is None:
        columns = columns_of(data)
        yield pure_ipc_stream(columns, {TOPIC_KEY: topic}), column_length(columns)
        return
    table = _without_view_types(pa, _to_arrow_table(pa, data))
    metadata = dict(table.schema.metadata or {})
    metadata[TOPIC_KEY.encode()] = topic.encode("utf-8")
    table = table.replace_schema_metadata(metadata)
    pieces = [table]
    if table.num_rows > 1 and table.nbytes > SPLIT_BYTES:
        step = max(1, table.num_rows * SPLIT_BYTES // table.nbytes)
        pieces = [table.slice(start, step) for start in range(0, table.num_rows, step)]
    for piece in pieces:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, piece.schema) as writer:
            writer.write_table(piece)
        yield sink.getvalue(), piece.num_rows


# ---------------------------------------------------------------------------
# Pure-Python Arrow IPC writer (no pyarrow in the environment)
# ---------------------------------------------------------------------------


def columns_of(data):
    """[(name, values)] from a dict of lists, a list of dicts, or a polars frame."""
    if _module_of(data) == "polars" and hasattr(data, "to_dict"):
        data = data.to_dict(as_series=False)
    if isinstance(data, dict):
        columns = [(str(k), list(v)) for k, v in data.items()]
        lengths = {len(v) for _, v in columns}
        if len(lengths) > 1:
            raise ValueError("dict of lists has columns of different lengths: %s" % {k: len(v) for k, v in columns})
        return columns
    if isinstance(data, list):
        names = []
        seen = set()
        for row in data:
            if not isinstance(row, dict):
                raise TypeError("a list published as data must hold dicts (rows); got %s" % type(row).__name__)
            for key in row:
                if key not in seen:
                    seen.add(key)
                    names.append(key)
        return [(str(name), [row.get(name) for row in data]) for name in names]
    raise TypeError(
        "cannot publish %s.%s without pyarrow in the environment: publish a dict of lists or a list of dicts, "
        "or add pyarrow to the plugin's lockfile" % (type(data).__module__, type(data).__name__)
    )


def column_length(columns):
    return len(columns[0][1]) if columns else 0


class _FbTable:
    """A flatbuffer table: fields by slot, each None or (kind, value)."""

    __slots__ = ("fields",)

    def __init__(self, *fields):
        self.fields = fields


class _FbString:
    __slots__ = ("data",)

    def __init__(self, text):
        self.data = text.encode("utf-8") if isinstance(text, str) else bytes(text)


class _FbVector:
    """A vector of tables/strings (offsets)."""

    __slots__ = ("items",)

    def __init__(self, items):
        self.items = list(items)


class _FbStructs:
    """A vector of 16-byte structs (FieldNode, Buffer), stored raw."""

    __slots__ = ("raw", "count")

    def __init__(self, pairs):
        self.count = len(pairs)
        self.raw = b"".join(struct.pack("<qq", a, b) for a, b in pairs)


_SCALAR = {"u8": ("<B", 1), "bool": ("<?", 1), "i16": ("<h", 2), "i32": ("<i", 4), "i64": ("<q", 8), "off": ("<I", 4)}


def _pad(buf, align, extra=0):
    while (len(buf) + extra) % align:
        buf.append(0)


def flatbuffer(root):
    """Lay out a flatbuffer front to back: every object after the one that points at it."""
    buf = bytearray(4)
    queue = [(0, root)]
    head = 0
    while head < len(queue):
        at, node = queue[head]
        head += 1
        if isinstance(node, _FbString):
            _pad(buf, 4)
            pos = len(buf)
            buf += struct.pack("<I", len(node.data)) + node.data + b"\0"
        elif isinstance(node, _FbVector):
            _pad(buf, 4)
            pos = len(buf)
            buf += struct.pack("<I", len(node.items))
            for item in node.items:
                queue.append((len(buf), item))
                buf += b"\0\0\0\0"
        elif isinstance(node, _FbStructs):
            _pad(buf, 8, extra=4)  # elements (after the u32 count) 8-aligned
            pos = len(buf)
            buf += struct.pack("<I", node.count) + node.raw
        else:
            slots = len(node.fields)
            _pad(buf, 2)
            vtable = len(buf)
            buf += bytes(4 + 2 * slots)
            _pad(buf, 8)
            pos = len(buf)
            buf += struct.pack("<i", pos - vtable)
            order = sorted(
                (i for i, f in enumerate(node.fields) if f is not None),
                key=lambda i: -_SCALAR[node.fields[i][0]][1],
            )
            offsets = {}
            for slot in order:
                kind, value = node.fields[slot]
                fmt, size = _SCALAR[kind]
                _pad(buf, size)
                offsets[slot] = len(buf) - pos
                if kind == "off":
                    queue.append((len(buf), value))
                    buf += b"\0\0\0\0"
                else:
                    buf += struct.pack(fmt, value)
            struct.pack_into("<HH", buf, vtable, 4 + 2 * slots, len(buf) - pos)
            for slot, offset in offsets.items():
                struct.pack_into("<H", buf, vtable + 4 + 2 * slot, offset)
        struct.pack_into("<I", buf, at, pos - at)
    return bytes(buf)


_EPOCH = datetime.datetime(1970, 1, 1)
_EPOCH_UTC = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_EPOCH_DATE = datetime.date(1970, 1, 1)
_MICROSECOND = datetime.timedelta(microseconds=1)

# Arrow Type union ids (Schema.fbs)
_T_NULL, _T_INT, _T_FLOAT, _T_BINARY, _T_UTF8, _T_BOOL, _T_DATE, _T_TIMESTAMP = 1, 2, 3, 4, 5, 6, 8, 10


def _kind(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(value, datetime.datetime):
        return "dt_tz" if value.tzinfo is not None and value.utcoffset() is not None else "dt"
    if isinstance(value, datetime.date):
        return "date"
    return "other"


def _bitmap(flags):
    out = bytearray((len(flags) + 7) // 8)
    for i, flag in enumerate(flags):
        if flag:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def _encode_column(name, values):
    """(field table, field node (length, nulls), [buffers]) for one column."""
    kinds = {_kind(v) for v in values if v is not None}
    n = len(values)
    valid = [v is not None for v in values]
    nulls = n - sum(valid)
    validity = _bitmap(valid) if nulls else b""

    if not kinds:
        return _field(name, _T_NULL, _FbTable()), (n, n), []
    if kinds == {"int", "float"}:
        kinds = {"float"}
    if len(kinds) > 1 or kinds == {"other"}:
        log.warning("column %r mixes %s values; publishing it as text", name, sorted(kinds))
        values = [None if v is None else str(v) for v in values]
        kinds = {"str"}
    kind = kinds.pop()

    if kind == "bool":
        return _field(name, _T_BOOL, _FbTable()), (n, nulls), [validity, _bitmap([bool(v) for v in values])]
    if kind == "int":
        try:
            data = struct.pack("<%dq" % n, *[0 if v is None else v for v in values])
        except struct.error:
            raise OverflowError("column %r has an integer outside the int64 range" % name) from None
        return _field(name, _T_INT, _FbTable(("i32", 64), ("bool", True))), (n, nulls), [validity, data]
    if kind == "float":
        data = struct.pack("<%dd" % n, *[0.0 if v is None else float(v) for v in values])
        return _field(name, _T_FLOAT, _FbTable(("i16", 2))), (n, nulls), [validity, data]
    if kind in ("str", "bytes"):
        encoded = [b"" if v is None else (v.encode("utf-8") if kind == "str" else bytes(v)) for v in values]
        offsets = [0]
        for item in encoded:
            offsets.append(offsets[-1] + len(item))
        if offsets[-1] > 0x7FFFFFFF:
            raise OverflowError("column %r holds more than 2 GiB of text in one chunk; publish smaller chunks" % name)
        type_id = _T_UTF8 if kind == "str" else _T_BINARY
        return _field(name, type_id, _FbTable()), (n, nulls), [validity, struct.pack("<%di" % (n + 1), *offsets), b"".join(encoded)]
    if kind == "date":
        days = [0 if v is None else (v - _EPOCH_DATE).days for v in values]
        return _field(name, _T_DATE, _FbTable(("i16", 0))), (n, nulls), [validity, struct.pack("<%di" % n, *days)]
    # timestamps, microseconds; aware values are stored as UTC instants
    epoch = _EPOCH_UTC if kind == "dt_tz" else _EPOCH
    micros = [0 if v is None else (v - epoch) // _MICROSECOND for v in values]
    unit_tz = _FbTable(("i16", 2), ("off", _FbString("UTC"))) if kind == "dt_tz" else _FbTable(("i16", 2))
    return _field(name, _T_TIMESTAMP, unit_tz), (n, nulls), [validity, struct.pack("<%dq" % n, *micros)]


def _field(name, type_id, type_table):
    # name, nullable, type_type, type, dictionary, children (Arrow C++ requires the vector)
    return _FbTable(("off", _FbString(name)), ("bool", True), ("u8", type_id), ("off", type_table), None, ("off", _FbVector([])))


def _message(header_type, header, body_length):
    # version V5 = 4
    return flatbuffer(_FbTable(("i16", 4), ("u8", header_type), ("off", header), ("i64", body_length)))


def _encapsulate(metadata, body=b""):
    pad = (-len(metadata)) % 8
    return struct.pack("<Ii", 0xFFFFFFFF, len(metadata) + pad) + metadata + bytes(pad) + body


def pure_ipc_stream(columns, schema_metadata):
    """A complete Arrow IPC stream (schema, one record batch, end marker) for [(name, values)]."""
    encoded = [_encode_column(name, values) for name, values in columns]
    kv = _FbVector(_FbTable(("off", _FbString(k)), ("off", _FbString(v))) for k, v in schema_metadata.items())
    schema = _FbTable(("i16", 0), ("off", _FbVector(f for f, _, _ in encoded)), ("off", kv))
    out = [_encapsulate(_message(1, schema, 0))]

    body = bytearray()
    buffers = []
    for _, _, column_buffers in encoded:
        for data in column_buffers:
            buffers.append((len(body), len(data)))
            body += data
            _pad(body, 8)
    nodes = [node for _, node, _ in encoded]
    batch = _FbTable(("i64", column_length(columns)), ("off", _FbStructs(nodes)), ("off", _FbStructs(buffers)))
    out.append(_encapsulate(_message(3, batch, len(body)), bytes(body)))
    out.append(struct.pack("<Ii", 0xFFFFFFFF, 0))
    return b"".join(out)


# ---------------------------------------------------------------------------
# What plugins see: context, event, SDK
# ---------------------------------------------------------------------------


class FileEvent:
    def __init__(self, path, file_id, job_id):
        self.path = path
        self.file_id = file_id
        self.file_version_id = file_id
        self.job_id = job_id

    def __repr__(self):
        return "FileEvent(path=%r, file_id=%r)" % (self.path, self.file_id)


class BridgeContext:
    """The ctx of section 4: register_topic(name) -> handle, publish(handle, data)."""

    def __init__(self, channel, job_id, file_version_id, file_path):
        self._channel = channel
        self.job_id = job_id
        self.file_version_id = file_version_id
        self.file_id = file_version_id
        self.file_path = file_path
        self.logger = logging.getLogger("casparian.plugin")
        self._topics = {}
        self._next_handle = 1
        self.rows = 0
        self.chunks = 0
        self.rows_by_topic = {}

    def register_topic(self, topic, default_uri=None, **_options):
        if not isinstance(topic, str) or not topic:
            raise ValueError("register_topic needs a non-empty topic name, got %r" % (topic,))
        for handle, name in self._topics.items():
            if name == topic:
                return handle
        handle = self._next_handle
        self._next_handle += 1
        self._topics[handle] = topic
        return handle

    def publish(self, handle, data):
        if isinstance(handle, str):
            topic = handle
        elif handle in self._topics:
            topic = self._topics[handle]
        else:
            raise ValueError("publish() got handle %r, which register_topic() never returned" % (handle,))
        self.publish_to(topic, data)

    def publish_to(self, topic, data):
        if data is None:
            return
        for payload, rows in arrow_streams(data, topic):
            self._channel.send_data(payload)
            self.rows += rows
            self.chunks += 1
            self.rows_by_topic[topic] = self.rows_by_topic.get(topic, 0) + rows


class BasePlugin:
    """The SDK base class: configure() injects the context; publish(topic, data) does the rest."""

    def __init__(self, *args, **kwargs):
        pass

    def configure(self, ctx, config):
        self._ctx = ctx
        self._config = config
        self._handles = {}

    def publish(self, topic, data):
        if getattr(self, "_ctx", None) is None:
            raise RuntimeError("plugin infrastructure not loaded: run this plugin through the Casparian worker")
        if topic not in self._handles:
            self._handles[topic] = self._ctx.register_topic(topic)
        self._ctx.publish(self._handles[topic], data)

    @property
    def config(self):
        return getattr(self, "_config", {})


def install_sdk():
    """Make `from casparian_flow.sdk import BasePlugin` work when the env has no real SDK."""
    import importlib.util

    sdk = types.ModuleType("casparian_sdk")
    sdk.BasePlugin = BasePlugin
    sdk.FileEvent = FileEvent
    if "casparian_sdk" not in sys.modules and importlib.util.find_spec("casparian_sdk") is None:
        sys.modules["casparian_sdk"] = sdk
    if "casparian_flow" not in sys.modules and importlib.util.find_spec("casparian_flow") is None:
        package = types.ModuleType("casparian_flow")
        package.__path__ = []
        package.BasePlugin = BasePlugin
        package.sdk = sdk
        sys.modules["casparian_flow"] = package
        sys.modules["casparian_flow.sdk"] = sdk


# ---------------------------------------------------------------------------
# Running the plugin
# ---------------------------------------------------------------------------


def load_plugin(source, name):
    filename = "<plugin %s>" % name
    # Tracebacks show the plugin's own lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": "__casparian_plugin__", "__file__": filename, "__builtins__": builtins}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def check_status(result):
    """A status dict ({"status": ...}) is a report, not data. An error status fails the job."""
    if isinstance(result, dict) and "status" in result and not is_publishable(result):
        status = str(result.get("status", "")).lower()
        if status in ("error", "failed", "failure"):
            raise PluginReportedError(str(result.get("error") or result.get("message") or result))
        log.info("plugin reported %s", json.dumps(result, default=str)[:2000])
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


def run_plugin(namespace, ctx, file_path, file_version_id, job_id):
    manifest = namespace.get("MANIFEST")
    if isinstance(manifest, dict):
        log.info("plugin manifest: name=%s version=%s", manifest.get("name"), manifest.get("version"))
    config = {}

    if isinstance(namespace.get("Handler"), type):
        handler = namespace["Handler"]()
        if callable(getattr(handler, "configure", None)):
            handler.configure(ctx, config)
        event = FileEvent(file_path, file_version_id, job_id)
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


def main():
    started = time.monotonic()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    env = os.environ
    missing = [k for k in ("BRIDGE_SOCKET", "BRIDGE_PLUGIN_CODE", "BRIDGE_FILE_PATH") if not env.get(k)]
    if missing:
        log.error("missing environment variables: %s", ", ".join(missing))
        return 2
    job_id = int(env.get("BRIDGE_JOB_ID", "0"))
    file_version_id = int(env.get("BRIDGE_FILE_VERSION_ID", "0"))
    file_path = env["BRIDGE_FILE_PATH"]
    plugin_name = env.get("BRIDGE_PLUGIN_NAME", "plugin")

    channel = Channel(env["BRIDGE_SOCKET"])
    ctx = BridgeContext(channel, job_id, file_version_id, file_path)
    real_stdout = sys.stdout
    exit_code = 0
    try:
        source = base64.b64decode(env["BRIDGE_PLUGIN_CODE"]).decode("utf-8")
        install_sdk()
        sys.stdout = sys.stderr  # plugin prints must not corrupt the metrics line
        try:
            namespace = load_plugin(source, plugin_name)
            run_plugin(namespace, ctx, file_path, file_version_id, job_id)
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
        try:
            channel.send_error(text)
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
        real_stdout.write(json.dumps(metrics) + "\n")
        real_stdout.flush()
    return exit_code


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


if __name__ == "__main__":
    exit_now(main())
