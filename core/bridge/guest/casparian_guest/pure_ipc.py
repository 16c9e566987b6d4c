"""A dependency-free Arrow IPC writer, for environments without pyarrow."""

import datetime
import logging
import struct

log = logging.getLogger("casparian.guest")



def _module_of(obj):
    return type(obj).__module__.split(".")[0]


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
