"""A dependency-free Arrow IPC writer, for environments without pyarrow.

Types (README "Types"): int -> int64, float -> float64 (ints among floats become floats),
bool -> bool, str -> string, bytes -> binary, None -> null, date -> date32,
datetime -> timestamp[us] (naive) or timestamp[us, tz=UTC] (aware, stored as the UTC
instant), time -> time64[us], Decimal -> decimal128(precision, scale) wide enough for
every value seen, list/tuple -> list<item type>, dict -> struct<union of keys> (a key
missing from a row is null there). A column's type is the type of its first non-null
value (or the topic's earlier chunks, or the declared schema); a value that does not
fit that type raises BadValue naming column, row and value, unless the topic turns
bad values into nulls (on_bad_value="null"), in which case they are counted.

Speed: per-value Python work is avoided where the standard library can do it in C:
type checks on the set of value types, array.array for fixed-width data, str.join +
one encode for text, int(bits, 2) for validity bitmaps.
"""

import datetime
import decimal
import functools
import itertools
import operator
import struct
from array import array

NoneType = type(None)

# ---------------------------------------------------------------------------
# Column types: small tuples, spelled like pyarrow in messages
# ---------------------------------------------------------------------------

NULL = ("null",)
BOOL = ("bool",)
INT64 = ("int", 64, True)
UINT64 = ("int", 64, False)
FLOAT64 = ("float", 64)
STRING = ("string",)
BINARY = ("binary",)
DATE32 = ("date32",)
TIME64_US = ("time64", "us")
TIMESTAMP_US = ("timestamp", "us", None)
TIMESTAMP_US_UTC = ("timestamp", "us", "UTC")
MAX_DECIMAL_PRECISION = 38

_UNITS = {"s": 0, "ms": 1, "us": 2, "ns": 3}
_PER_SECOND = {"s": 1, "ms": 1000, "us": 1000_000, "ns": 1000_000_000}


def type_name(t):
    """pyarrow's spelling of a column type."""
    kind = t[0]
    if kind == "int":
        return "%sint%d" % ("" if t[2] else "u", t[1])
    if kind == "float":
        return {16: "halffloat", 32: "float", 64: "double"}[t[1]]
    if kind == "timestamp":
        return "timestamp[%s%s]" % (t[1], ", tz=%s" % t[2] if t[2] else "")
    if kind == "time64" or kind == "time32":
        return "%s[%s]" % (kind, t[1])
    if kind == "decimal":
        return "decimal128(%d, %d)" % (t[1], t[2])
    if kind == "list":
        return "list<item: %s>" % type_name(t[1])
    if kind == "struct":
        return "struct<%s>" % ", ".join("%s: %s" % (n, type_name(c)) for n, c in t[1])
    return kind


class TypeNameError(ValueError):
    pass


def parse_type(text):
    """A column type from pyarrow's type names ("int64", "decimal128(12, 2)", "list<string>", ...)."""
    simple = _SIMPLE.get(text)
    if simple is not None:
        return simple  # the usual declaration ("int64", "string"): no parser needed
    parser = _TypeParser(text)
    t = parser.parse()
    if parser.rest().strip():
        raise TypeNameError("unexpected %r after %s in type %r" % (parser.rest(), type_name(t), text))
    return t


_SIMPLE = {
    "null": NULL,
    "bool": BOOL,
    "boolean": BOOL,
    "int8": ("int", 8, True),
    "int16": ("int", 16, True),
    "int32": ("int", 32, True),
    "int64": INT64,
    "uint8": ("int", 8, False),
    "uint16": ("int", 16, False),
    "uint32": ("int", 32, False),
    "uint64": UINT64,
    "float": ("float", 32),
    "float32": ("float", 32),
    "double": FLOAT64,
    "float64": FLOAT64,
    "string": STRING,
    "str": STRING,
    "utf8": STRING,
    "binary": BINARY,
    "bytes": BINARY,
    "large_string": ("large_string",),
    "large_utf8": ("large_string",),
    "large_binary": ("large_binary",),
    "date32": DATE32,
    "date32[day]": DATE32,
}


class _TypeParser:
    def __init__(self, text):
        self.text = text
        self.at = 0

    def rest(self):
        return self.text[self.at :]

    def _skip(self):
        while self.at < len(self.text) and self.text[self.at].isspace():
            self.at += 1

    def _word(self):
        self._skip()
        start = self.at
        while self.at < len(self.text) and (self.text[self.at].isalnum() or self.text[self.at] in "_"):
            self.at += 1
        return self.text[start : self.at]

    def _expect(self, char):
        self._skip()
        if not self.text.startswith(char, self.at):
            raise TypeNameError("expected %r at position %d of type %r" % (char, self.at, self.text))
        self.at += 1

    def _peek(self, char):
        self._skip()
        return self.text.startswith(char, self.at)

    def _until(self, chars):
        start = self.at
        while self.at < len(self.text) and self.text[self.at] not in chars:
            self.at += 1
        return self.text[start : self.at].strip()

    def parse(self):
        word = self._word().lower()
        if not word:
            raise TypeNameError("no type name in %r" % self.text)
        if word in ("timestamp", "time64", "time32"):
            unit, tz = "us", None
            if self._peek("["):
                self._expect("[")
                unit = self._until(",]").lower()
                if self._peek(","):
                    self._expect(",")
                    self._skip()
                    if not self.rest().lower().startswith("tz="):
                        raise TypeNameError("expected tz=... in %r" % self.text)
                    self.at += 3
                    tz = self._until("]")
                self._expect("]")
            if unit not in _UNITS:
                raise TypeNameError("unknown time unit %r in %r" % (unit, self.text))
            if word == "timestamp":
                return ("timestamp", unit, tz or None)
            if tz:
                raise TypeNameError("%s takes no time zone" % word)
            if word == "time32" and unit not in ("s", "ms") or word == "time64" and unit not in ("us", "ns"):
                raise TypeNameError("%s[%s] is not an Arrow type" % (word, unit))
            return (word, unit)
        if word in ("decimal", "decimal128"):
            self._expect("(")
            precision = int(self._until(","))
            self._expect(",")
            scale = int(self._until(")"))
            self._expect(")")
            if not 1 <= precision <= MAX_DECIMAL_PRECISION or not 0 <= scale <= precision:
                raise TypeNameError("decimal128(%d, %d) needs 1 <= precision <= 38 and 0 <= scale <= precision" % (precision, scale))
            return ("decimal", precision, scale)
        if word in ("list", "large_list"):
            self._expect("<")
            save = self.at
            name = self._word()
            if not self._peek(":") or name.lower() not in ("item", "element"):
                self.at = save
            else:
                self._expect(":")
            child = self.parse()
            self._expect(">")
            return ("list", child)
        if word == "struct":
            self._expect("<")
            fields = []
            while not self._peek(">"):
                self._skip()
                name = self._until(":")
                self._expect(":")
                fields.append((name, self.parse()))
                if self._peek(","):
                    self._expect(",")
            self._expect(">")
            return ("struct", tuple(fields))
        if word == "date32" and self._peek("["):
            self._expect("[")
            self._until("]")
            self._expect("]")
        if word in _SIMPLE:
            return _SIMPLE[word]
        raise TypeNameError("unknown or unsupported type %r (without pyarrow: %s, timestamp[unit, tz=UTC], time64[us], decimal128(p, s), list<t>, struct<name: t, ...>)" % (self.text, ", ".join(sorted(_SIMPLE))))


def widen(a, b):
    """The narrowest type both a and b fit, or None when they conflict."""
    if a == b:
        return a
    if a == NULL:
        return b
    if b == NULL:
        return a
    ka, kb = a[0], b[0]
    if ka == "int" and kb == "int":
        if a[2] == b[2]:
            return ("int", max(a[1], b[1]), a[2])
        signed, unsigned = (a, b) if a[2] else (b, a)
        return ("int", 64, True) if unsigned[1] < signed[1] or unsigned[1] < 64 else None
    if {ka, kb} == {"int", "float"}:
        return FLOAT64
    if ka == "float" and kb == "float":
        return ("float", max(a[1], b[1]))
    if ka == "decimal" and kb == "decimal":
        scale = max(a[2], b[2])
        precision = max(a[1] - a[2], b[1] - b[2]) + scale
        return ("decimal", precision, scale) if precision <= MAX_DECIMAL_PRECISION else None
    if ka == "list" and kb == "list":
        child = widen(a[1], b[1])
        return None if child is None else ("list", child)
    if ka == "struct" and kb == "struct":
        fields = dict(a[1])
        for name, child in b[1]:
            if name in fields:
                merged = widen(fields[name], child)
                if merged is None:
                    return None
                fields[name] = merged
            else:
                fields[name] = child
        return ("struct", tuple(fields.items()))
    return None


# ---------------------------------------------------------------------------
# Bad values
# ---------------------------------------------------------------------------


class BadValue(ValueError):
    """A value that does not fit its column's type."""

    def __init__(self, column, row, value, expected, why="", topic=None):
        self.column = column
        self.row = row
        self.value = value
        self.expected = expected
        text = repr(value)
        if len(text) > 200:
            text = text[:200] + "..."
        where = "list element %d (counting the elements of every row)" % row if column.endswith("[]") else "row %d" % row
        declare = 'MANIFEST["topics"][%s] = {"columns": {%s: "<type>"}}' % (_quote(topic or "<topic>"), _quote(column.split(".")[0].rstrip("[]")))
        super().__init__(
            "%scolumn %s, %s: %s (%s) does not fit the column's type %s%s. Fix the value in the plugin, declare the "
            "column's type (%s), or let such values become null with on_bad_value=\"null\" in that declaration"
            % ("topic %s, " % _quote(topic) if topic else "", _quote(column), where, text, type(value).__name__, type_name(expected), " (%s)" % why if why else "", declare)
        )


def _quote(text):
    return '"%s"' % str(text).replace('"', '\\"')


class Coercer:
    """Per topic: what to do with a value that does not fit, and how many became null."""

    def __init__(self, on_bad_value="fail", topic=None):
        if on_bad_value not in ("fail", "null"):
            raise ValueError('on_bad_value must be "fail" or "null", got %r' % (on_bad_value,))
        self.on_bad_value = on_bad_value
        self.topic = topic
        self.nulled = 0

    def bad(self, column, row, value, expected, why=""):
        if self.on_bad_value == "fail":
            raise BadValue(column, row, value, expected, why, self.topic)
        self.nulled += 1
        return None


# ---------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------

# Decimal arithmetic wide enough for decimal128's 38 digits at any scale.
_WIDE = decimal.Context(prec=80)
_EPOCH = datetime.datetime(1970, 1, 1)
_EPOCH_UTC = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
_MICROSECOND = datetime.timedelta(microseconds=1)


def _is_int_type(t):
    return (issubclass(t, int) and not issubclass(t, bool)) or (t.__module__ == "numpy" and hasattr(t, "__index__") and not t.__name__.startswith("bool"))


def _type_of_value(value):
    """The column type one value suggests (None for a value no Arrow type here can hold)."""
    t = type(value)
    if t is NoneType:
        return NULL
    if issubclass(t, bool) or (t.__module__ == "numpy" and t.__name__ == "bool_"):
        return BOOL
    if _is_int_type(t):
        return INT64 if -(1 << 63) <= value < (1 << 63) else UINT64 if 0 <= value < (1 << 64) else None
    if issubclass(t, float):
        return FLOAT64
    if issubclass(t, str):
        return STRING
    if issubclass(t, (bytes, bytearray, memoryview)):
        return BINARY
    if issubclass(t, datetime.datetime):
        return TIMESTAMP_US_UTC if value.utcoffset() is not None else TIMESTAMP_US
    if issubclass(t, datetime.date):
        return DATE32
    if issubclass(t, datetime.time):
        return TIME64_US
    if issubclass(t, decimal.Decimal):
        if not value.is_finite():
            return None
        sign, digits, exponent = value.as_tuple()
        scale = max(0, -exponent)
        integer_digits = max(1, len(digits) + exponent)
        precision = integer_digits + scale
        return ("decimal", precision, scale) if precision <= MAX_DECIMAL_PRECISION else None
    if issubclass(t, (list, tuple)):
        return ("list", infer(list(value)))
    if issubclass(t, dict):
        return ("struct", tuple((str(k), _type_of_value(v) or NULL) for k, v in value.items()))
    if hasattr(value, "__float__") and t.__module__ == "numpy":
        return FLOAT64
    return None


def value_types(values):
    """The set of the values' Python types (NoneType included when a value is None), in C speed."""
    return set(map(type, values))


def infer(values, types=None):
    """The type of a column: its first non-null value's, widened by the values that widen it
    (ints among floats, decimals of more digits, lists, dict keys); values that conflict with
    it are left for the encoder to report."""
    types = set(value_types(values) if types is None else types)
    types.discard(NoneType)
    if not types:
        return NULL
    if len(types) == 1:
        t = next(iter(types))
        if t is bool:
            return BOOL
        if t is float:
            return FLOAT64
        if t is str:
            return STRING
        if t is bytes:
            return BINARY
        if t is datetime.date:
            return DATE32
        if t is datetime.time:
            return TIME64_US
        if t is int:
            lo, hi = _min_max(values)
            if -(1 << 63) <= lo and hi < (1 << 63):
                return INT64
            if 0 <= lo and hi < (1 << 64):
                return UINT64
            return INT64  # the encoder reports the value that does not fit
    # The general case: the first non-null value's type, widened by the others that widen it.
    result = None
    for value in values:
        if value is None:
            continue
        suggested = _type_of_value(value)
        if suggested is None:
            continue  # no Arrow type holds it: the encoder reports it
        if result is None:
            result = suggested
            continue
        merged = widen(result, suggested)
        if merged is not None and merged[0] == result[0] or merged == FLOAT64 and result[0] == "int":
            result = merged
    return NULL_OF_UNKNOWN if result is None else result


# A column whose first value has no Arrow type: the encoder reports that value.
NULL_OF_UNKNOWN = ("unknown",)


_IS_NOT_NONE = functools.partial(operator.is_not, None)


def _min_max(values):
    """(min, max) of the non-null values, in C speed."""
    if None in values:
        present = list(filter(_IS_NOT_NONE, values))
        return min(present), max(present)
    return min(values), max(values)


# ---------------------------------------------------------------------------
# Encoding columns: (field table, field nodes, buffers)
# ---------------------------------------------------------------------------

_BIT_CHARS = bytes.maketrans(b"\x00\x01", b"01")


def _pack_bits(flags):
    """Bytes of 0/1 (one per slot) -> an LSB-first Arrow bitmap, in C speed."""
    n = len(flags)
    if n == 0:
        return b""
    return int(flags.translate(_BIT_CHARS)[::-1], 2).to_bytes((n + 7) // 8, "little")


class _Encoder:
    """Encodes one chunk's columns; collects field nodes and buffers in Arrow's pre-order."""

    def __init__(self, coercer, row_base, prefix=""):
        self.coercer = coercer
        self.row_base = row_base
        # Errors name a nested column by its path: "address.city", "tags[]".
        self.prefix = prefix
        self.nodes = []
        self.buffers = []

    def column(self, name, values, t, types=None):
        """Append nodes/buffers for `values` as type t; return the Field flatbuffer."""
        if isinstance(values, Prebuilt):
            self.nodes.append((values.length, values.null_count))
            self.buffers += values.buffers
            return _field(name, values.type, [])
        if t == NULL_OF_UNKNOWN:
            for i, v in enumerate(values):
                if v is not None:
                    self._bad(name, i, v, STRING, "no Arrow type holds a %s" % type(v).__name__)
            t = NULL
        if types is None:
            types = value_types(values)
        values, types = self._fit(name, values, t, types)
        n = len(values)
        if NoneType in types:
            flags = bytes(map(operator.is_not, values, itertools.repeat(None)))
            nulls = n - flags.count(1)
            validity = _pack_bits(flags)
        else:
            nulls = 0
            validity = b""
        kind = t[0]
        self.nodes.append((n, nulls))
        children = []
        if kind == "null":
            self.nodes[-1] = (n, n)
        elif kind == "bool":
            self.buffers += [validity, _pack_bits(bytes(map(operator.truth, values)))]
        elif kind == "int":
            code = {8: "b", 16: "h", 32: "i", 64: "q"}[t[1]]
            if not t[2]:
                code = code.upper()
            filled = values if not nulls else [0 if v is None else v for v in values]
            self.buffers += [validity, array(code, filled).tobytes()]
        elif kind == "float":
            filled = values if not nulls else [0.0 if v is None else v for v in values]
            self.buffers += [validity, array("d" if t[1] == 64 else "f", filled).tobytes()]
        elif kind in ("string", "binary", "large_string", "large_binary"):
            text = kind in ("string", "large_string")
            filled = values if not nulls else [("" if text else b"") if v is None else v for v in values]
            if text:
                joined = "".join(filled)
                data = joined.encode("utf-8", "surrogatepass")
                if len(data) == len(joined):
                    lengths = map(len, filled)
                else:
                    encoded = [s.encode("utf-8", "surrogatepass") for s in filled]
                    lengths = map(len, encoded)
            else:
                encoded = [bytes(b) for b in filled] if any(type(b) is not bytes for b in filled) else filled
                data = b"".join(encoded)
                lengths = map(len, encoded)
            large = kind.startswith("large_")
            if len(data) > 0x7FFFFFFF and not large:
                raise OverflowError("column %r holds more than 2 GiB in one chunk; publish smaller chunks" % name)
            offsets = array("q" if large else "i", itertools.accumulate(lengths, initial=0))
            self.buffers += [validity, offsets.tobytes(), data]
        elif kind == "date32":
            days = [0 if v is None else v.toordinal() - _EPOCH_ORDINAL for v in values]
            self.buffers += [validity, array("i", days).tobytes()]
        elif kind == "timestamp":
            epoch = _EPOCH_UTC if t[2] else _EPOCH
            micros = [0 if v is None else (v - epoch) // _MICROSECOND for v in values]
            self.buffers += [validity, array("q", self._in_unit(name, values, micros, t)).tobytes()]
        elif kind in ("time64", "time32"):
            micros = [0 if v is None else (v.hour * 3600 + v.minute * 60 + v.second) * 1000_000 + v.microsecond for v in values]
            self.buffers += [validity, array("q" if kind == "time64" else "i", self._in_unit(name, values, micros, t)).tobytes()]
        elif kind == "decimal":
            scale = t[2]
            to_bytes = int.to_bytes
            parts = [b"\0" * 16 if v is None else to_bytes(int(v.scaleb(scale, _WIDE)), 16, "little", signed=True) for v in values]
            self.buffers += [validity, b"".join(parts)]
        elif kind == "list":
            present = [() if v is None else v for v in values] if nulls else values
            offsets = array("i", itertools.accumulate(map(len, present), initial=0))
            self.buffers += [validity, offsets.tobytes()]
            flat = list(itertools.chain.from_iterable(present))
            children.append(self._child("item", flat, t[1], _Encoder(self.coercer, 0, self.prefix + name + "[]")))
        elif kind == "struct":
            self.buffers.append(validity)
            for field_name, child_type in t[1]:
                getter = operator.methodcaller("get", field_name)
                child_values = [None if v is None else v.get(field_name) for v in values] if nulls else list(map(getter, values))
                children.append(self._child(field_name, child_values, child_type, _Encoder(self.coercer, self.row_base, self.prefix + name + ".")))
        else:
            raise AssertionError(t)
        return _field(name, t, children)

    def _in_unit(self, name, values, micros, t):
        """Microsecond ticks in the column's unit (_fit made sure none is finer than it)."""
        per = _PER_SECOND[t[1]]
        if per == 1000_000:
            return micros
        if per > 1000_000:
            return [m * (per // 1000_000) for m in micros]
        step = 1000_000 // per
        return [m // step for m in micros]

    def _child(self, name, values, t, inner):
        """A child column's field; its nodes and buffers go to this encoder's lists (pre-order)."""
        inner.nodes = self.nodes
        inner.buffers = self.buffers
        return inner.column(name, values, t)

    # --- making values fit ------------------------------------------------------

    def _fit(self, name, values, t, all_types):
        """(values, their types) with every value of type t (None where a bad value became null)."""
        fitted = self._fit_values(name, values, t, all_types)
        return (values, all_types) if fitted is values else (fitted, value_types(fitted))

    def _fit_values(self, name, values, t, all_types):
        kind = t[0]
        types = set(all_types)
        types.discard(NoneType)
        if not types:
            return values
        if kind == "null":
            return [self._bad(name, i, v, t) for i, v in enumerate(values)]  # every non-null value is bad
        exact = _EXACT.get(kind)
        coarse = kind in ("timestamp", "time32", "time64") and t[1] in ("s", "ms")
        if exact is not None and types <= exact and not coarse:
            if kind == "int":
                return self._check_int_range(name, values, t)
            if kind == "timestamp":
                return self._check_tz(name, values, t)
            return values
        return self._fit_each(name, values, t)

    def _bad(self, name, i, v, t, why=""):
        if v is None:
            return None
        label = self.prefix if self.prefix.endswith("[]") else self.prefix + name
        return self.coercer.bad(label, self.row_base + i, v, t, why)

    def _check_int_range(self, name, values, t):
        bits, signed = t[1], t[2]
        lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
        vmin, vmax = _min_max(values)
        if lo <= vmin and vmax < hi:
            return values
        return [v if v is None or lo <= v < hi else self._bad(name, i, v, t, "out of range") for i, v in enumerate(values)]

    def _check_tz(self, name, values, t):
        aware = t[2] is not None
        out = None
        for i, v in enumerate(values):
            if v is not None and (v.utcoffset() is not None) != aware:
                if out is None:
                    out = list(values)
                out[i] = self._bad(name, i, v, t, "an aware datetime in a naive column" if not aware else "a naive datetime in a column of aware ones")
        return values if out is None else out

    def _fit_each(self, name, values, t):
        fit = _FITTERS[t[0]]
        out = []
        append = out.append
        for i, v in enumerate(values):
            if v is None:
                append(None)
                continue
            try:
                append(fit(v, t))
            except _DoesNotFit as exc:
                append(self._bad(name, i, v, t, str(exc)))
        return out


_EXACT = {
    "bool": {bool},
    "int": {int},
    "float": {float, int},
    "string": {str},
    "binary": {bytes, bytearray, memoryview},
    "large_string": {str},
    "large_binary": {bytes, bytearray, memoryview},
    "date32": {datetime.date},
    "timestamp": {datetime.datetime},
    "time64": {datetime.time},
    "time32": {datetime.time},
}


class _DoesNotFit(Exception):
    pass


def _fit_bool(v, t):
    if isinstance(v, bool) or (type(v).__module__ == "numpy" and type(v).__name__ == "bool_"):
        return bool(v)
    raise _DoesNotFit("")


def _fit_int(v, t):
    if isinstance(v, bool) or not _is_int_type(type(v)):
        raise _DoesNotFit("")
    v = int(v)
    bits, signed = t[1], t[2]
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    if not lo <= v < hi:
        raise _DoesNotFit("out of range")
    return v


def _fit_float(v, t):
    if isinstance(v, bool):
        raise _DoesNotFit("")
    if isinstance(v, float) or _is_int_type(type(v)) or (type(v).__module__ == "numpy" and hasattr(v, "__float__")):
        return float(v)
    raise _DoesNotFit("")


def _fit_string(v, t):
    if isinstance(v, str):
        return str(v)
    raise _DoesNotFit("")


def _fit_binary(v, t):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise _DoesNotFit("")


def _fit_date(v, t):
    if isinstance(v, datetime.date) and not isinstance(v, datetime.datetime):
        return v
    raise _DoesNotFit("a datetime is not a date" if isinstance(v, datetime.datetime) else "")


def _fit_timestamp(v, t):
    if not isinstance(v, datetime.datetime):
        raise _DoesNotFit("")
    if (v.utcoffset() is not None) != (t[2] is not None):
        raise _DoesNotFit("an aware datetime in a naive column" if t[2] is None else "a naive datetime in a column of aware ones")
    _check_granularity(v.microsecond, t[1])
    return v


def _fit_time(v, t):
    if isinstance(v, datetime.time):
        _check_granularity(v.microsecond, t[1])
        return v
    raise _DoesNotFit("")


def _check_granularity(microsecond, unit):
    step = 1000_000 // _PER_SECOND[unit] if _PER_SECOND[unit] < 1000_000 else 1
    if microsecond % step:
        raise _DoesNotFit("finer than the column's unit (%s)" % unit)


def _fit_decimal(v, t):
    precision, scale = t[1], t[2]
    if isinstance(v, bool):
        raise _DoesNotFit("")
    if _is_int_type(type(v)):
        v = decimal.Decimal(int(v))
    elif isinstance(v, float):
        v = decimal.Decimal(repr(v))
    elif not isinstance(v, decimal.Decimal):
        raise _DoesNotFit("")
    if not v.is_finite():
        raise _DoesNotFit("not a finite number")
    sign, digits, exponent = v.as_tuple()
    if -exponent > scale and v != v.quantize(decimal.Decimal(1).scaleb(-scale), context=_WIDE):
        raise _DoesNotFit("more than %d decimal places" % scale)
    scaled = int(v.scaleb(scale, context=_WIDE))
    if abs(scaled) >= 10**precision:
        raise _DoesNotFit("more than %d digits" % precision)
    return decimal.Decimal(scaled).scaleb(-scale, _WIDE)


def _fit_list(v, t):
    if isinstance(v, (list, tuple)):
        return v
    raise _DoesNotFit("")


def _fit_struct(v, t):
    if isinstance(v, dict):
        return v
    raise _DoesNotFit("")


_FITTERS = {
    "bool": _fit_bool,
    "int": _fit_int,
    "float": _fit_float,
    "string": _fit_string,
    "binary": _fit_binary,
    "large_string": _fit_string,
    "large_binary": _fit_binary,
    "date32": _fit_date,
    "timestamp": _fit_timestamp,
    "time64": _fit_time,
    "time32": _fit_time,
    "decimal": _fit_decimal,
    "list": _fit_list,
    "struct": _fit_struct,
}

# ---------------------------------------------------------------------------
# Flatbuffers (Arrow's Schema.fbs / Message.fbs), laid out front to back
# ---------------------------------------------------------------------------


class _FbTable:
    __slots__ = ("fields",)

    def __init__(self, *fields):
        self.fields = fields


class _FbString:
    __slots__ = ("data",)

    def __init__(self, text):
        self.data = text.encode("utf-8") if isinstance(text, str) else bytes(text)


class _FbVector:
    __slots__ = ("items",)

    def __init__(self, items):
        self.items = list(items)


class _FbStructs:
    """A vector of 16-byte structs (FieldNode, Buffer), stored raw."""

    __slots__ = ("raw", "count")

    def __init__(self, pairs):
        self.count = len(pairs)
        self.raw = array("q", itertools.chain.from_iterable(pairs)).tobytes()


_SCALAR = {"u8": ("<B", 1), "bool": ("<?", 1), "i16": ("<h", 2), "i32": ("<i", 4), "i64": ("<q", 8), "off": ("<I", 4)}


def _table_layout(kinds):
    """How a table with these field kinds (None: absent) is laid out, the same for every table of
    that shape: its vtable, one struct for its inline part (the soffset to the vtable, then the
    fields widest first, each aligned to its size: the table starts 8-aligned), and the slots of
    its offset fields in the order their targets are queued."""
    slots = len(kinds)
    order = sorted((i for i, kind in enumerate(kinds) if kind is not None), key=lambda i: -_SCALAR[kinds[i]][1])
    fmt = "<i"
    size = 4
    field_offsets = [0] * slots
    for slot in order:
        code, width = _SCALAR[kinds[slot]]
        pad = (-size) % width
        fmt += "x" * pad + code[1:]
        size += pad
        field_offsets[slot] = size
        size += width
    vtable = struct.pack("<HH%dH" % slots, 4 + 2 * slots, size, *field_offsets)
    refs = [(field_offsets[slot], slot) for slot in order if kinds[slot] == "off"]
    return vtable, struct.Struct(fmt), order, refs


_LAYOUTS = {}
_ZEROS = [bytes(n) for n in range(8)]
_U32 = struct.Struct("<I")


def flatbuffer(root):
    """The flatbuffer of `root`, laid out front to back: each table's vtable right before it, the
    objects a table points to after it, in the order they are reached."""
    buf = bytearray(4)
    queue = [(0, root)]
    head = 0
    zeros = _ZEROS
    u32 = _U32
    layouts = _LAYOUTS
    while head < len(queue):
        at, node = queue[head]
        head += 1
        kind = type(node)
        if kind is _FbTable:
            fields = node.fields
            kinds = tuple(None if f is None else f[0] for f in fields)
            layout = layouts.get(kinds)
            if layout is None:
                layout = layouts[kinds] = _table_layout(kinds)
            vtable_bytes, inline, order, refs = layout
            buf += zeros[len(buf) & 1]
            vtable = len(buf)
            buf += vtable_bytes
            buf += zeros[-len(buf) % 8]
            pos = len(buf)
            buf += inline.pack(pos - vtable, *[0 if fields[slot][0] == "off" else fields[slot][1] for slot in order])
            for offset, slot in refs:
                queue.append((pos + offset, fields[slot][1]))
        elif kind is _FbString:
            buf += zeros[-len(buf) % 4]
            pos = len(buf)
            buf += u32.pack(len(node.data))
            buf += node.data
            buf += b"\0"
        elif kind is _FbVector:
            buf += zeros[-len(buf) % 4]
            pos = len(buf)
            buf += u32.pack(len(node.items))
            for item in node.items:
                queue.append((len(buf), item))
                buf += b"\0\0\0\0"
        else:  # _FbStructs
            buf += zeros[-(len(buf) + 4) % 8]
            pos = len(buf)
            buf += u32.pack(node.count)
            buf += node.raw
        u32.pack_into(buf, at, pos - at)
    return bytes(buf)


# Arrow Type union ids (Schema.fbs)
_TYPE_IDS = {"large_binary": 19, "large_string": 20, "null": 1, "int": 2, "float": 3, "binary": 4, "string": 5, "bool": 6, "decimal": 7, "date32": 8, "time32": 9, "time64": 9, "timestamp": 10, "list": 12, "struct": 13}


def _type_table(t):
    kind = t[0]
    if kind == "int":
        return _FbTable(("i32", t[1]), ("bool", t[2]))
    if kind == "float":
        return _FbTable(("i16", {16: 0, 32: 1, 64: 2}[t[1]]))
    if kind == "decimal":
        return _FbTable(("i32", t[1]), ("i32", t[2]), ("i32", 128))
    if kind == "date32":
        return _FbTable(("i16", 0))
    if kind in ("time32", "time64"):
        return _FbTable(("i16", _UNITS[t[1]]), ("i32", 32 if kind == "time32" else 64))
    if kind == "timestamp":
        return _FbTable(("i16", _UNITS[t[1]]), ("off", _FbString(t[2]))) if t[2] else _FbTable(("i16", _UNITS[t[1]]))
    return _FbTable()


def _field(name, t, children):
    # name, nullable, type_type, type, dictionary, children (Arrow C++ requires the vector)
    return _FbTable(("off", _FbString(name)), ("bool", True), ("u8", _TYPE_IDS[t[0]]), ("off", _type_table(t)), None, ("off", _FbVector(children)))


def _field_of_type(name, t):
    if t[0] == "list":
        children = [_field_of_type("item", t[1])]
    elif t[0] == "struct":
        children = [_field_of_type(n, c) for n, c in t[1]]
    else:
        children = []
    return _field(name, t, children)


def _message(header_type, header, body_length):
    return flatbuffer(_FbTable(("i16", 4), ("u8", header_type), ("off", header), ("i64", body_length)))


def _encapsulate(metadata):
    pad = (-len(metadata)) % 8
    return struct.pack("<Ii", 0xFFFFFFFF, len(metadata) + pad) + metadata + bytes(pad)


_EOS = struct.pack("<Ii", 0xFFFFFFFF, 0)
# Encapsulated schema messages by (columns' names and types, metadata): every chunk of a topic
# after its first has the same, and a warm guest's children inherit those made ahead.
_SCHEMAS = {}
MAX_SCHEMAS = 256


def encode_stream(columns, types, schema_metadata, coercer, row_base=0):
    """A complete Arrow IPC stream (schema, one record batch, end marker) of [(name, values)],
    each column encoded as the type given in `types`, a list parallel to columns of
    (type, the values' Python types or None); returns (stream, body bytes)."""
    encoder = _Encoder(coercer, row_base)
    fields = [encoder.column(name, values, t, vtypes) for (name, values), (t, vtypes) in zip(columns, types)]
    # The schema message is a function of the columns' names and types and the metadata alone.
    key = (tuple((name, NULL if t == NULL_OF_UNKNOWN else t) for (name, _), (t, _) in zip(columns, types)), tuple(schema_metadata.items()))
    schema_head = _SCHEMAS.get(key)
    if schema_head is None:
        kv = _FbVector(_FbTable(("off", _FbString(k)), ("off", _FbString(v))) for k, v in schema_metadata.items())
        schema_head = _encapsulate(_message(1, _FbTable(("i16", 0), ("off", _FbVector(fields)), ("off", kv)), 0))
        if len(_SCHEMAS) < MAX_SCHEMAS:
            _SCHEMAS[key] = schema_head

    parts = []
    buffers = []
    offset = 0
    for data in encoder.buffers:
        size = len(data)
        buffers.append((offset, size))
        parts.append(data)
        pad = (-size) % 8
        if pad:
            parts.append(b"\0" * pad)
        offset += size + pad
    rows = len(columns[0][1]) if columns else 0
    batch = _FbTable(("i64", rows), ("off", _FbStructs(encoder.nodes)), ("off", _FbStructs(buffers)))
    head = schema_head + _encapsulate(_message(3, batch, offset))
    return b"".join([head] + parts + [_EOS]), offset


def lay_out_schema(columns, schema_metadata):
    """Make the schema message of chunks with these columns ([(name, type)]) and metadata ahead:
    a warm guest does, for the topics its plugin declares (arrow_out.lay_out_declared)."""
    encode_stream([(name, []) for name, _ in columns], [(t, set()) for _, t in columns], schema_metadata, Coercer("fail"))


def learn_layouts():
    """Lay out one schema with a field of every type and one record batch: the table layouts they
    leave in _LAYOUTS are those of every later message. A warm guest does it once (first_use.py),
    and its children inherit them instead of working each out again; a fresh guest finds each
    on its first use."""
    types = [NULL, BOOL, INT64, FLOAT64, STRING, BINARY, DATE32, TIME64_US, ("time32", "ms"), TIMESTAMP_US, TIMESTAMP_US_UTC, ("decimal", 12, 2)]
    types += [("large_string",), ("large_binary",), ("list", INT64), ("struct", (("a", INT64),))]
    kv = _FbVector([_FbTable(("off", _FbString("k")), ("off", _FbString("v")))])
    schema = _FbTable(("i16", 0), ("off", _FbVector(_field_of_type("c", t) for t in types)), ("off", kv))
    _message(1, schema, 0)
    _message(3, _FbTable(("i64", 1), ("off", _FbStructs([(1, 0)])), ("off", _FbStructs([(0, 0)]))), 8)


# ---------------------------------------------------------------------------
# Columns already in Arrow layout (pandas/numpy without pyarrow)
# ---------------------------------------------------------------------------


class Prebuilt:
    """A column whose buffers are already Arrow's (validity or b"", data): numpy does the work."""

    __slots__ = ("type", "length", "null_count", "buffers")

    def __init__(self, t, length, null_count, buffers):
        self.type = t
        self.length = length
        self.null_count = null_count
        self.buffers = buffers

    def __len__(self):
        return self.length

    def slice(self, start, stop):
        raise NotImplementedError


# ---------------------------------------------------------------------------
# Topics: what the shim knows about a topic's columns across the chunks of a job
# ---------------------------------------------------------------------------


class TopicTyping:
    """Declared types, types seen in earlier chunks, the bad-value policy and counters of one topic."""

    def __init__(self, topic):
        self.topic = topic
        self.declared = {}
        self.known = {}
        self.coercer = Coercer("fail", topic)
        self.rows = 0

    def declare(self, columns=None, on_bad_value=None):
        """columns: {name: pyarrow type name}; on_bad_value: "fail" (default) or "null"."""
        if columns:
            for name, text in columns.items():
                try:
                    self.declared[str(name)] = parse_type(text) if isinstance(text, str) else text
                except TypeNameError as exc:
                    raise TypeNameError("topic %r, column %r: %s" % (self.topic, name, exc)) from None
        if on_bad_value is not None:
            nulled = self.coercer.nulled
            self.coercer = Coercer(on_bad_value, self.topic)
            self.coercer.nulled = nulled

    def column_types(self, columns):
        """[(type, value types)] for this chunk's columns: declared, else inferred and merged with
        what earlier chunks of the topic had."""
        out = []
        for name, values in columns:
            if isinstance(values, Prebuilt):
                out.append((values.type, None))
                self._remember(name, values.type)
                continue
            vtypes = value_types(values)
            declared = self.declared.get(name)
            if declared is not None:
                out.append((declared, vtypes))
                continue
            inferred = infer(values, vtypes)
            known = self.known.get(name)
            if known is None or known == NULL:
                t = inferred
            elif inferred in (NULL, NULL_OF_UNKNOWN):
                t = known
            else:
                merged = widen(known, inferred)
                t = known if merged is None else merged
            self._remember(name, t)
            out.append((t, vtypes))
        return out

    def _remember(self, name, t):
        if t not in (NULL, NULL_OF_UNKNOWN):
            self.known[name] = t

    def with_declared(self, columns):
        """The chunk's columns plus declared ones it lacks (all null)."""
        if not self.declared:
            return columns
        present = {name for name, _ in columns}
        n = len(columns[0][1]) if columns else 0
        missing = [(name, [None] * n) for name in self.declared if name not in present]
        return columns + missing if missing else columns


def encode_chunks(columns, typing, schema_metadata, split_bytes):
    """Yield (Arrow IPC stream bytes, rows) for one published chunk, in pieces of about split_bytes."""
    columns = typing.with_declared(columns)
    rows = len(columns[0][1]) if columns else 0
    types = typing.column_types(columns)
    nulled_before = typing.coercer.nulled
    stream, body = encode_stream(columns, types, schema_metadata, typing.coercer, typing.rows)
    if body <= split_bytes or rows <= 1 or any(isinstance(v, Prebuilt) for _, v in columns):
        typing.rows += rows
        yield stream, rows
        return
    del stream
    typing.coercer.nulled = nulled_before
    step = max(1, rows * split_bytes // body)
    for start in range(0, rows, step):
        piece = [(name, values[start : start + step]) for name, values in columns]
        piece_types = [(t, None) for t, _ in types]
        stream, _ = encode_stream(piece, piece_types, schema_metadata, typing.coercer, typing.rows)
        typing.rows += len(piece[0][1])
        yield stream, len(piece[0][1])


# ---------------------------------------------------------------------------
# Published data -> [(name, values)]
# ---------------------------------------------------------------------------


def _module_of(obj):
    return type(obj).__module__.split(".")[0]


def columns_of(data, declared=()):
    """[(name, values or Prebuilt)] from a dict of lists, a list of dicts, a polars or a pandas frame.
    Columns named in `declared` are always plain values (they are coerced value by value)."""
    mod = _module_of(data)
    if mod == "polars" and hasattr(data, "to_dict"):
        data = data.to_dict(as_series=False)
    elif mod == "pandas" and hasattr(data, "columns"):
        return pandas_columns(data, declared)
    if isinstance(data, dict):
        columns = [(str(k), v if type(v) is list else list(v)) for k, v in data.items()]
        lengths = {len(v) for _, v in columns}
        if len(lengths) > 1:
            raise ValueError("dict of lists has columns of different lengths: %s" % {k: len(v) for k, v in columns})
        return columns
    if isinstance(data, list):
        if not all(issubclass(t, dict) for t in set(map(type, data))):
            bad = next(row for row in data if not isinstance(row, dict))
            raise TypeError("a list published as data must hold dicts (rows); got %s" % type(bad).__name__)
        columns = _uniform_rows(data)
        if columns is not None:
            return columns
        # Rows with differing keys: every key seen, in order of first appearance; a row without one is null there.
        names = list(dict.fromkeys(itertools.chain.from_iterable(data)))
        columns = []
        for name in names:
            try:
                values = list(map(operator.itemgetter(name), data))
            except KeyError:
                values = [row.get(name) for row in data]
            columns.append((str(name), values))
        return columns
    raise TypeError(
        "cannot publish %s.%s without pyarrow in the environment: publish a dict of lists, a list of dicts or a "
        "pandas DataFrame, or add pyarrow to the plugin's dependencies" % (type(data).__module__, type(data).__name__)
    )


def _uniform_rows(rows):
    """The columns of rows that all have the first row's keys (the usual shape), or None when
    some row has others. Walking every key of every row to find the names costs as much as
    the whole encoding; instead, one C-speed pass checks that every row has as many keys as
    the first, and the per-column itemgetter passes (a KeyError otherwise) that each has all
    of the first's: together, every row has exactly the first row's keys."""
    if not rows:
        return []
    if len(set(map(len, rows))) != 1:
        return None
    columns = []
    for name in rows[0]:
        try:
            columns.append((str(name), list(map(operator.itemgetter(name), rows))))
        except KeyError:
            return None
    return columns


def column_length(columns):
    return len(columns[0][1]) if columns else 0


def pandas_columns(frame, declared=()):
    """A pandas DataFrame's columns without pyarrow: numeric, bool and datetime64 columns go
    straight from numpy (NaN and NaT are null, as pyarrow's from_pandas makes them), the rest
    value by value. A named index becomes a column, as with pyarrow; a RangeIndex does not."""
    import numpy as np
    import pandas as pd

    columns = []
    if any(name is not None for name in frame.index.names) and not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    for name in frame.columns:
        series = frame[name]
        columns.append((str(name), _object_column(series, pd) if str(name) in declared else _pandas_column(series, np, pd)))
    return columns


def _pandas_column(series, np, pd):
    dtype = series.dtype
    n = len(series)
    if isinstance(dtype, np.dtype) and dtype.kind in "iu":
        data = series.to_numpy()
        return Prebuilt(("int", dtype.itemsize * 8, dtype.kind == "i"), n, 0, [b"", data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()])
    if isinstance(dtype, np.dtype) and dtype.kind == "f" and dtype.itemsize in (4, 8):
        data = series.to_numpy()
        missing = np.isnan(data)
        nulls = int(missing.sum())
        validity = np.packbits(~missing, bitorder="little").tobytes() if nulls else b""
        return Prebuilt(("float", dtype.itemsize * 8), n, nulls, [validity, data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()])
    if isinstance(dtype, np.dtype) and dtype.kind == "b":
        return Prebuilt(BOOL, n, 0, [b"", np.packbits(series.to_numpy(), bitorder="little").tobytes()])
    if dtype.kind == "M":
        tz = getattr(dtype, "tz", None)
        unit = np.datetime_data(getattr(dtype, "base", dtype) if tz is None else np.dtype("datetime64[%s]" % dtype.unit))[0]
        if unit not in _UNITS:
            return _object_column(series, pd)
        ticks = series.to_numpy(dtype="datetime64[%s]" % unit) if tz is None else series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[%s]" % unit)
        ticks = ticks.view("<i8")
        missing = np.isnat(series.to_numpy(dtype="datetime64[%s]" % unit)) if tz is None else series.isna().to_numpy()
        nulls = int(missing.sum())
        validity = np.packbits(~missing, bitorder="little").tobytes() if nulls else b""
        return Prebuilt(("timestamp", unit, "UTC" if tz is not None else None), n, nulls, [validity, np.where(missing, 0, ticks).astype("<i8").tobytes()])
    return _object_column(series, pd)


def _object_column(series, pd):
    """Values of an object, string, categorical or nullable column; missing values are None."""
    values = series.astype(object)
    return values.where(series.notna(), None).tolist()
