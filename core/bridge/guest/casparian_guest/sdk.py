"""What plugins see: the job context, the file event, and the SDK module installed for them."""

import logging
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from .arrow_out import arrow_streams, declare_topic

log = logging.getLogger("casparian.guest")
# ctx.logger: made once, when the shim is imported (a warm guest's children inherit it).
plugin_log = logging.getLogger("casparian.plugin")



@dataclass
class FileEvent:
    """The event consume() receives. Same fields and defaults as upstream's
    casparian_flow.sdk.FileEvent (path, file_id=0, event_type="file_found", metadata={}),
    plus the job id; file_version_id is another name for file_id."""

    path: str
    file_id: int = 0
    event_type: str = "file_found"
    metadata: Dict[str, Any] = field(default_factory=dict)
    job_id: Optional[int] = None

    @property
    def file_version_id(self):
        return self.file_id


class PluginMetadata:
    """``MANIFEST = PluginMetadata(...)`` as upstream's SDK declares it (plugins published
    through upstream's DEPLOY path). Upstream's Sentinel reads it from the source text; here
    it is plain data. Unlike upstream's dataclass, an unknown keyword (one of upstream's own
    fixtures passes ``topics=``) is kept in ``extra`` with a warning instead of a TypeError."""

    __slots__ = ("pattern", "topic", "priority", "subscriptions", "sinks", "version", "description", "extra")

    def __init__(self, pattern=None, topic=None, priority=50, subscriptions=None, sinks=None, version="1.0.0", description=None, **extra):
        self.pattern = pattern
        self.topic = topic
        self.priority = priority
        self.subscriptions = list(subscriptions) if subscriptions is not None else []
        self.sinks = dict(sinks) if sinks is not None else {}
        self.version = version
        self.description = description
        self.extra = extra
        if extra:
            log.warning("PluginMetadata: unknown field(s) %s kept in .extra (upstream's SDK raises TypeError for them)", ", ".join(sorted(extra)))

    def as_dict(self):
        out = {name: getattr(self, name) for name in self.__slots__ if name != "extra"}
        out.update(self.extra)
        return out

    def __eq__(self, other):
        return isinstance(other, PluginMetadata) and self.as_dict() == other.as_dict()

    def __repr__(self):
        return "PluginMetadata(%s)" % ", ".join("%s=%r" % kv for kv in self.as_dict().items())


class BridgeContext:
    """The ctx of section 4: register_topic(name) -> handle, publish(handle, data)."""

    def __init__(self, channel, job_id, file_version_id, file_path):
        self._channel = channel
        self.job_id = job_id
        self.file_version_id = file_version_id
        self.file_id = file_version_id
        self.file_path = file_path
        self.logger = plugin_log
        self._topics = {}
        self._next_handle = 1
        self.rows = 0
        self.chunks = 0
        self.rows_by_topic = {}

    def register_topic(self, topic, default_uri=None, schema=None, on_bad_value=None, **_options):
        """schema: the topic's column types in pyarrow's names ({"amount": "decimal128(12, 2)"}, or a
        pyarrow Schema); on_bad_value="null" turns values that do not fit into counted nulls."""
        if not isinstance(topic, str) or not topic:
            raise ValueError("register_topic needs a non-empty topic name, got %r" % (topic,))
        if schema is not None or on_bad_value is not None:
            declare_topic(topic, schema, on_bad_value)
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

    def consume(self, event):
        """Upstream's entry point; the worker falls back to execute() when it is not overridden."""
        raise NotImplementedError("Plugin must implement consume(self, event)")

    def execute(self, file_path):
        """Upstream's legacy entry point: wraps the path in a FileEvent for consume()."""
        return self.consume(FileEvent(path=file_path))

    def publish(self, topic, data):
        if getattr(self, "_ctx", None) is None:
            raise RuntimeError("plugin infrastructure not loaded: run this plugin through the Casparian worker")
        if topic not in self._handles:
            self._handles[topic] = self._ctx.register_topic(topic)
        self._ctx.publish(self._handles[topic], data)

    @property
    def config(self):
        return getattr(self, "_config", {})

    @config.setter
    def config(self, value):
        # Plugins written for the upstream SDK assign self.config = config in __init__.
        self._config = value


def install_sdk():
    """Make `from casparian_flow.sdk import BasePlugin, PluginMetadata, FileEvent` work when the
    env has no real SDK. An env that ships upstream's casparian_flow package keeps it."""
    if "casparian_sdk" in sys.modules and "casparian_flow" in sys.modules:
        return  # installed already (or the env's own), e.g. by a warm guest's parent
    import importlib.util

    sdk = types.ModuleType("casparian_sdk")
    sdk.BasePlugin = BasePlugin
    sdk.FileEvent = FileEvent
    sdk.PluginMetadata = PluginMetadata
    if "casparian_sdk" not in sys.modules and importlib.util.find_spec("casparian_sdk") is None:
        sys.modules["casparian_sdk"] = sdk
    if "casparian_flow" not in sys.modules and importlib.util.find_spec("casparian_flow") is None:
        package = types.ModuleType("casparian_flow")
        package.__path__ = []
        package.BasePlugin = BasePlugin
        package.PluginMetadata = PluginMetadata
        package.FileEvent = FileEvent
        package.sdk = sdk
        sys.modules["casparian_flow"] = package
        sys.modules["casparian_flow.sdk"] = sdk
