"""What plugins see: the job context, the file event, and the SDK module installed for them."""

import logging
import sys
import types

from .arrow_out import arrow_streams

log = logging.getLogger("casparian.guest")



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
