"""Published data to Arrow IPC streams, with the types of the topic it goes to.

Which encoder:
  * dicts of lists and lists of dicts: always the shim's own encoder (pure_ipc), with or
    without pyarrow, so that a plugin's types do not depend on what its environment has;
  * pandas DataFrames: pyarrow's from_pandas when the environment has pyarrow, else the
    shim's encoder (numpy columns as they are, other columns value by value);
  * pyarrow Tables/RecordBatches, polars DataFrames, anything with __arrow_c_stream__:
    pyarrow (polars without pyarrow goes through its to_dict()).

Per topic (TopicTyping): declared column types (MANIFEST["topics"][topic]["columns"] or
ctx.register_topic(topic, schema=...)), the types earlier chunks had (so that an all-null
column in a later chunk keeps the topic's type), and the bad-value policy.
"""

import logging

from .channel import SPLIT_BYTES, TOPIC_KEY
from .pure_ipc import TopicTyping, TypeNameError, _Encoder, _module_of, columns_of, encode_chunks, lay_out_schema, parse_type

log = logging.getLogger("casparian.guest")

_pyarrow = None
_pyarrow_checked = False

_TOPICS = {}


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


# The topic warm_up() publishes to, forgotten afterwards.
_WARM_UP_TOPIC = "casparian.warm-up"


def warm_up(data):
    """Publish `data` through the real path and keep nothing of it: a warm guest pays the
    encoders' first-use costs (pyarrow's IPC writer, its lazy import of pandas) once, and its
    children find no topic of the warm-up's (a plugin's topic of that name starts with no types)."""
    try:
        for _ in arrow_streams(data, _WARM_UP_TOPIC):
            pass
    finally:
        _TOPICS.pop(_WARM_UP_TOPIC, None)


def topic_typing(topic):
    typing = _TOPICS.get(topic)
    if typing is None:
        typing = _TOPICS[topic] = TopicTyping(topic)
    return typing


def declare_topic(topic, schema=None, on_bad_value=None):
    """Declared column types of a topic: {name: "pyarrow type name"}, a list of (name, type),
    a schema_def-like {"columns": [{"name", "type"}]} or {"columns": {name: type}}, or a
    pyarrow Schema; on_bad_value "fail" (the default) or "null"."""
    topic_typing(topic).declare(_columns_of_schema(topic, schema), on_bad_value)


def lay_out_declared(manifest):
    """For each topic whose columns MANIFEST["topics"] declares: its chunks' schema message, made
    ahead (in a warm guest's parent, from the plugin's literal MANIFEST) for a chunk of exactly the
    declared columns in their order, which its children's jobs then find made. Best effort."""
    topics = manifest.get("topics") if isinstance(manifest, dict) else None
    if not isinstance(topics, dict):
        return []
    done = []
    for topic, spec in topics.items():
        if not isinstance(spec, dict):
            continue
        try:
            typing = TopicTyping(str(topic))
            typing.declare(_columns_of_schema(str(topic), spec.get("columns", spec.get("schema"))))
            if typing.declared:
                lay_out_schema(list(typing.declared.items()), {TOPIC_KEY: str(topic)})
                done.append(str(topic))
        except Exception:  # noqa: BLE001 - the job declares the same and reports what is wrong
            pass
    return done


def declare_from_manifest(manifest):
    """MANIFEST["topics"] = {topic: {"columns": {...}, "on_bad_value": "null"}} (or a list of names)."""
    topics = manifest.get("topics") if isinstance(manifest, dict) else None
    if not isinstance(topics, dict):
        return
    for topic, spec in topics.items():
        if not isinstance(spec, dict):
            continue
        columns = spec.get("columns", spec.get("schema"))
        if columns is not None or spec.get("on_bad_value") is not None:
            declare_topic(str(topic), columns, spec.get("on_bad_value"))


def _columns_of_schema(topic, schema):
    if schema is None:
        return None
    if _module_of(schema) == "pyarrow" and hasattr(schema, "names") and hasattr(schema, "types"):
        return {name: str(t) for name, t in zip(schema.names, schema.types)}
    if isinstance(schema, dict) and "columns" in schema:
        schema = schema["columns"]
    if isinstance(schema, dict):
        return {str(k): _type_text(topic, k, v) for k, v in schema.items()}
    if isinstance(schema, (list, tuple)):
        out = {}
        for item in schema:
            if isinstance(item, dict) and "name" in item and "type" in item:
                out[str(item["name"])] = _type_text(topic, item["name"], item["type"])
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                out[str(item[0])] = _type_text(topic, item[0], item[1])
            else:
                raise TypeNameError("topic %r: a schema list holds (name, type) pairs or {'name', 'type'} dicts, got %r" % (topic, item))
        return out
    raise TypeNameError("topic %r: schema must be a dict {column: type name}, a list of (name, type) or a pyarrow Schema, got %s" % (topic, type(schema).__name__))


def _type_text(topic, column, value):
    if isinstance(value, str):
        return value
    if _module_of(value) == "pyarrow":
        return str(value)
    raise TypeNameError("topic %r, column %r: the type must be a pyarrow type name such as \"int64\" or \"decimal128(12, 2)\", got %r" % (topic, column, value))


def typing_metrics():
    """Receipt metrics: values that became null under on_bad_value="null", in total and per topic."""
    out = {}
    total = 0
    for topic, typing in _TOPICS.items():
        if typing.coercer.nulled:
            out["nulled_values.%s" % topic] = typing.coercer.nulled
            total += typing.coercer.nulled
    out["nulled_values"] = total
    return out


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


def _native(data):
    return isinstance(data, (dict, list))


def arrow_streams(data, topic):
    """Yield (ipc_bytes, num_rows) for one published object, split when very large."""
    typing = topic_typing(topic)
    pa = None if _native(data) else pyarrow_or_none()
    if pa is None:
        yield from encode_chunks(columns_of(data, typing.declared), typing, {TOPIC_KEY: topic}, SPLIT_BYTES)
        return
    table = _typed(pa, _without_view_types(pa, _to_arrow_table(pa, data)), typing)
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
        typing.rows += piece.num_rows
        yield sink.getvalue(), piece.num_rows


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


def _pa_type(pa, t):
    """A pyarrow DataType for one of pure_ipc's column types."""
    kind = t[0]
    if kind == "null":
        return pa.null()
    if kind == "bool":
        return pa.bool_()
    if kind == "int":
        return getattr(pa, "%sint%d" % ("" if t[2] else "u", t[1]))()
    if kind == "float":
        return {16: pa.float16, 32: pa.float32, 64: pa.float64}[t[1]]()
    if kind == "string":
        return pa.string()
    if kind == "binary":
        return pa.binary()
    if kind == "date32":
        return pa.date32()
    if kind == "timestamp":
        return pa.timestamp(t[1], tz=t[2])
    if kind == "time64":
        return pa.time64(t[1])
    if kind == "time32":
        return pa.time32(t[1])
    if kind == "decimal":
        return pa.decimal128(t[1], t[2])
    if kind == "list":
        return pa.list_(_pa_type(pa, t[1]))
    if kind == "struct":
        return pa.struct([(n, _pa_type(pa, c)) for n, c in t[1]])
    raise TypeNameError("no pyarrow type for %r" % (t,))


def _typed(pa, table, typing):
    """The table with the topic's declared types (casting safely; a value that does not fit is
    reported, or nulled under on_bad_value="null"), declared columns it lacks added as nulls,
    and all-null columns given the type earlier chunks of the topic had."""
    known = typing.pa_known if hasattr(typing, "pa_known") else {}
    typing.pa_known = known
    names = table.schema.names
    for name in list(typing.declared):
        if name not in names:
            table = table.append_column(pa.field(name, _pa_type(pa, typing.declared[name])), pa.nulls(table.num_rows, _pa_type(pa, typing.declared[name])))
    for i, field in enumerate(table.schema):
        declared = typing.declared.get(field.name)
        target = _pa_type(pa, declared) if declared is not None else (known.get(field.name) if pa.types.is_null(field.type) else None)
        if target is not None and field.type != target:
            table = table.set_column(i, pa.field(field.name, target), _cast_column(pa, table.column(i), field.name, declared or _from_pa(pa, target), target, typing))
        elif not pa.types.is_null(field.type):
            known[field.name] = field.type
    return table


def _cast_column(pa, column, name, t, target, typing):
    if pa.types.is_null(column.type):
        return pa.nulls(len(column), target)
    if typing.coercer.on_bad_value == "fail":
        try:
            return column.cast(target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass  # find and name the value that does not fit
    encoder = _Encoder(typing.coercer, typing.rows)
    values = column.to_pylist()
    fitted = encoder._fit_values(name, values, t, set(map(type, values)))
    return pa.array(fitted, type=target)


def _from_pa(pa, t):
    return parse_type(str(t))
