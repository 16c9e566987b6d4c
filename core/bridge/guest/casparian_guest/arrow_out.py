"""Published data to Arrow IPC streams through pyarrow, when the environment has it."""

import logging

from .channel import SPLIT_BYTES, TOPIC_KEY
from .pure_ipc import _module_of, column_length, columns_of, pure_ipc_stream

log = logging.getLogger("casparian.guest")


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
