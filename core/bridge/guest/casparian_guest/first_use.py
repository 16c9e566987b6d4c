"""First-use costs of the standard library, paid once in a warm guest instead of in every job.

A job's child is a fresh copy of its warm parent: whatever the parent has imported, compiled or
cached, the child has for free, and whatever it has not, every child pays again. Importing the
plugin's modules is not all of it: the standard library defers work to first use. A plugin that
parses one date imports ``_strptime`` (which builds its locale tables and compiles its regular
expressions), opening a file as ``utf-8-sig`` imports that codec, each regular expression is
compiled on first use, and ``csv.Sniffer`` compiles its patterns on its first sniff: about 15 ms
of a 20 ms stdlib job on 2 cores. pandas and pyarrow do the same on a far larger scale: a child's
first ``read_csv``, ``to_datetime`` or ``groupby`` fills caches, builds dispatch tables and
allocates objects in pages it then owns (each a copy-on-write fault, about 5 us here), so the
parent runs them once on synthetic data (a few rows made up here, never the job's).

Everything here reads the plugin's source (``ast``) and calls the standard library (or, for
the Arrow schemas of the topics its MANIFEST declares, the shim) with the plugin's literals;
no plugin code runs. Each step is best effort: one that fails costs nothing
but its own warm-up, and the job then pays that first use itself, as it would have.
"""

import ast
import codecs
import io
import re
import sys
import time

# Standard modules whose first use imports more (lazily): what to import when the plugin imports them.
LAZY_IMPORTS = {
    "datetime": ("_strptime",),
    "time": ("_strptime",),
}
# Bounds: re keeps 512 compiled patterns, _strptime 100 formats (it drops them all beyond that).
MAX_REGEXES = 256
MAX_FORMATS = 50
# re functions taking the pattern first, and where their flags argument sits (positional index).
# The pandas warm-up stops starting steps after this long (each is a call on a few made-up rows).
PANDAS_SECONDS = 5.0
# Made-up rows in the shapes plugins meet: ISO timestamps with an offset, numbers with a bad
# value, text, a repeated key, a comment line.
PANDAS_CSV = """# made up for the warm-up
timestamp, key, value, count, label
2024-01-01T00:00:00Z, a, 1.5, 1, x
2024-01-01T01:00:00+01:00, b, oops, 2, y
2024-01-02T00:00:00Z, a, 3.25, 3,
"""
RE_FLAGS_AT = {"compile": 1, "match": 2, "search": 2, "fullmatch": 2, "findall": 2, "finditer": 2, "split": 3, "sub": 4, "subn": 4}


def warm(tree, imported):
    """Pay the first-use costs the plugin's source lets us foresee; returns what was warmed."""
    warmed = []
    nodes = list(ast.walk(tree))
    for step in (_lazy_imports, _codecs, _regexes, _strptime, _sniffer, _declared_schemas, _flatbuffer_layouts, _pandas):
        try:
            warmed.extend(step(nodes, imported))
        except Exception:  # noqa: BLE001 - a warm-up that fails only costs the job its first use
            pass
    return warmed


def _lazy_imports(nodes, imported):
    roots = {name.split(".")[0] for name in imported}
    done = []
    for root in sorted(roots):
        for name in LAZY_IMPORTS.get(root, ()):
            __import__(name)
            done.append(name)
    return done


def _codecs(nodes, imported):
    """Codecs the plugin names as literals (``encoding="utf-8-sig"``, ``.decode("latin-1")``):
    the lookup imports the codec's module from the ``encodings`` package."""
    names = set()
    for node in nodes:
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if keyword.arg == "encoding" and _text(keyword.value) is not None:
                names.add(_text(keyword.value))
        if isinstance(node.func, ast.Attribute) and node.func.attr in ("encode", "decode") and node.args and _text(node.args[0]) is not None:
            names.add(_text(node.args[0]))
    done = []
    for name in sorted(names):
        try:
            codecs.lookup(name)
            done.append("codec " + name)
        except LookupError:
            pass
    return done


def _regexes(nodes, imported):
    """Regular expressions the plugin passes as literals to ``re`` (``re.sub(r"[^a-z]+", ...)``):
    compiled here, they sit in re's cache, where the child's first call finds them."""
    if "re" not in {name.split(".")[0] for name in imported}:
        return []
    aliases = {"re"}
    for node in nodes:
        if isinstance(node, ast.Import):
            aliases.update(alias.asname for alias in node.names if alias.name == "re" and alias.asname)
    done = 0
    for node in nodes:
        if done >= MAX_REGEXES:
            break
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RE_FLAGS_AT):
            continue
        if not (isinstance(node.func.value, ast.Name) and node.func.value.id in aliases and node.args):
            continue
        pattern = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
        if not isinstance(pattern, (str, bytes)):
            continue
        flags = _flags(node, RE_FLAGS_AT[node.func.attr], aliases)
        if flags is None:
            continue
        try:
            re.compile(pattern, flags)
            done += 1
        except (re.error, TypeError, ValueError, OverflowError, RecursionError):
            pass  # the plugin hits the same error itself and reports it
    return ["%d regular expressions" % done] if done else []


def _flags(call, position, aliases):
    """The call's flags when they are literal (absent, a number, ``re.I | re.M``); None otherwise."""
    node = next((k.value for k in call.keywords if k.arg == "flags"), None)
    if node is None and len(call.args) > position:
        node = call.args[position]
    if node is None:
        return 0
    return _flag_value(node, aliases)


def _flag_value(node, aliases):
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
        flag = getattr(re, node.attr, None)
        return int(flag) if isinstance(flag, re.RegexFlag) else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _flag_value(node.left, aliases), _flag_value(node.right, aliases)
        return None if left is None or right is None else left | right
    return None


def _strptime(nodes, imported):
    """``_strptime`` compiles one regular expression per format on its first use: the formats
    among the plugin's literals (strings with a ``%`` directive), when it parses dates at all."""
    if "_strptime" not in __import__("sys").modules:
        return []
    import time

    done = 0
    for node in nodes:
        if done >= MAX_FORMATS:
            break
        text = _text(node)
        if text is None or "%" not in text or len(text) > 200:
            continue
        try:
            time.strptime("", text)
        except ValueError:
            pass  # the expected outcome: the format is compiled and cached, the empty text does not match
        except Exception:  # noqa: BLE001 - not a format after all
            continue
        done += 1
    return ["%d date formats" % done] if done else []


def _sniffer(nodes, imported):
    """``csv.Sniffer`` compiles its patterns on the first sniff."""
    if "csv" not in {name.split(".")[0] for name in imported}:
        return []
    import csv

    csv.Sniffer().sniff("a;b;c\n1;2;3\n")
    return ["csv.Sniffer"]


def _declared_schemas(nodes, imported):
    """The shim's own: the Arrow schema message of each topic whose columns the plugin's literal
    MANIFEST declares (arrow_out.lay_out_declared), which its chunks then find made."""
    module = nodes[0] if nodes and isinstance(nodes[0], ast.Module) else None
    manifest = None
    for node in module.body if module is not None else ():
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "MANIFEST" for t in node.targets):
            try:
                manifest = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                manifest = None  # not a literal: the job declares it when it runs
    from .arrow_out import lay_out_declared

    return ["schema of topic %s" % topic for topic in lay_out_declared(manifest)] if isinstance(manifest, dict) else []


def _flatbuffer_layouts(nodes, imported):
    """The shim's own: the layout of every kind of table its Arrow messages hold (pure_ipc)."""
    from .pure_ipc import learn_layouts

    learn_layouts()
    return ["Arrow message layouts"]


def _pandas(nodes, imported):
    """What a pandas plugin's first job pays on top of the imports (about 10 ms of CPU and a
    thousand page faults for a 5-row CSV): the parser, datetime and numeric conversion with
    their format guessing, groupby and its aggregations, and each frame's way to Arrow
    through the shim's own path. A step that fails is logged and the others still run."""
    if "pandas" not in {name.split(".")[0] for name in imported} or "pandas" not in sys.modules:
        return []
    import pandas

    from . import arrow_out

    deadline = time.monotonic() + PANDAS_SECONDS
    frames = {}

    def read():
        frame = pandas.read_csv(io.StringIO(PANDAS_CSV), comment="#", skipinitialspace=True)
        frame.columns = [str(c).strip().lower() for c in frame.columns]
        frames["rows"] = frame

    def convert():
        frame = frames["rows"]
        frame["timestamp"] = pandas.to_datetime(frame["timestamp"], utc=True)
        frame["value"] = pandas.to_numeric(frame["value"], errors="coerce")
        frame["label"] = frame["label"].fillna("").astype(str).str.strip().str.lower()
        frame["source"] = "warm-up"

    def group():
        frame = frames["rows"]
        frames["groups"] = frame.groupby("key", as_index=False).agg(
            n=("value", "size"), mean=("value", "mean"), max=("value", "max"), min=("value", "min"), total=("count", "sum"), seen=("value", "count")
        )
        frame.sort_values("timestamp").merge(frames["groups"], on="key", how="left")

    def to_arrow():
        if arrow_out.pyarrow_or_none() is None:
            return
        for frame in frames.values():
            arrow_out.warm_up(frame)  # leaves no topic behind

    done = []
    for step in (read, convert, group, to_arrow):
        if time.monotonic() > deadline:
            print("casparian warm guest: the pandas warm-up took over %g s; stopped before %s" % (PANDAS_SECONDS, step.__name__), file=sys.stderr)
            break
        try:
            step()
            done.append(step.__name__)
        except Exception as exc:  # noqa: BLE001 - the job pays this first use itself, as it would have
            print("casparian warm guest: the pandas warm-up step %s failed: %s: %s" % (step.__name__, type(exc).__name__, str(exc)[:200]), file=sys.stderr)
            break  # later steps work on its result
    return ["pandas " + "/".join(done)] if done else []


def _text(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
