"""The socket channel to the host: framing of data, error and end-of-stream (PROTOCOL.md section 3)."""

import os
import socket
import struct
import sys
import _thread

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
# A chunk up to this size goes out with its length prefix in one write.
ONE_WRITE_BYTES = 256 * 1024



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
        # A bare thread: threading.Thread.start() waits until the new thread runs, a few ms on a
        # busy machine, which every job would pay before its plugin starts.
        _thread.start_new_thread(self._exit_when_host_is_gone, ())

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
        if n <= ONE_WRITE_BYTES:
            self._sock.sendall(struct.pack(">I", n) + payload)  # one syscall: copying a small chunk costs less
        else:
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
