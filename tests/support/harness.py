"""Drive a protocol session object directly: both peers are socketpair ends in the test."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from typing import Any

from p3scan.config import options as config
from p3scan.net.destination import Route
from p3scan.net.stream import Stream
from p3scan.proxy.session import Session, SessionInfo
from p3scan.scan.scanning import Scanning


def test_config(**changes: Any) -> config.Config:
    base = config.load(["-f", "/dev/null", "-T", "eicar"])
    return base.replace(**{"idletimeout": 5, **changes})


class Harness:
    """Runs ``session_class`` in a thread between a fake client and a fake server."""

    def __init__(self, session_class: type[Session], protocol: str = "POP3", **cfg: Any):
        client_ours, self.client = socket.socketpair()
        server_ours, self.server = socket.socketpair()
        for sock in (self.client, self.server):
            sock.settimeout(5)
        self.cfg = test_config(**cfg)
        self.info = SessionInfo(("192.0.2.2", 40000),
                                Route(protocol, "198.51.100.2", 110, "target"))
        self.workdir = tempfile.mkdtemp(prefix="p3scan-harness-")
        self.scanning = Scanning(self.cfg, self.workdir)
        self.session = session_class(Stream(client_ours, "client", 5),
                                     Stream(server_ours, "server", 5), self.cfg, self.info,
                                     self.scanning)
        self.thread = threading.Thread(target=self.session.run, daemon=True)
        self.client_reader = self.client.makefile("rb")
        self.server_reader = self.server.makefile("rb")

    def start(self, greeting: bytes) -> bytes:
        self.server.sendall(greeting)
        self.thread.start()
        return self.client_reader.readline()

    def client_says(self, data: bytes) -> None:
        self.client.sendall(data)

    def server_hears(self) -> bytes:
        return self.server_reader.readline()

    def server_says(self, data: bytes) -> None:
        self.server.sendall(data)

    def client_hears(self, size: int | None = None) -> bytes:
        if size is not None:
            return self.client_reader.read(size)
        return self.client_reader.readline()

    def client_hears_lines(self, count: int) -> bytes:
        return b"".join(self.client_reader.readline() for _ in range(count))

    def finish(self) -> None:
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.client_reader.close()
        self.server_reader.close()
        self.thread.join(5)
        shutil.rmtree(self.workdir, ignore_errors=True)
        assert not self.thread.is_alive(), "the session did not end when both peers left"
test_config.__test__ = False  # a helper, not a test
