"""Fake anti-virus daemons for the scanner unit tests, written from the protocol spec.

Each fake listens on a Unix socket (clamd also on TCP), serves one connection at a time in
a thread, records what it received and answers with a scripted reply.  A reply may be a
callable that gets the request (for a file-path protocol: the path) and returns the bytes.

* :class:`FakeClamd` - zINSTREAM / zPING / zVERSION (spec §10.4, ClamAV's clamd protocol);
* :class:`FakeAvpCtl` - Kaspersky AVP daemon 4 (§10.5), replies built by :func:`avp_reply`;
* :class:`FakeAveserver` - Kaspersky 5 ``aveserver`` (§10.6);
* :class:`FakeTrophie` - Trophie (§10.7).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

Reply = bytes | Callable[[bytes], bytes]


def recv_until(conn: socket.socket, end: bytes, limit: int = 65536) -> bytes:
    """Bytes up to and including ``end`` (read one at a time, so nothing more is taken)."""
    data = b""
    while not data.endswith(end) and len(data) < limit:
        byte = conn.recv(1)
        if not byte:
            break
        data += byte
    return data


def recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError(f"peer closed after {len(data)} of {size} bytes")
        data += chunk
    return data


class FakeDaemon:
    """Accepts connections on ``address`` (a Unix path or a TCP ``(host, port)``)."""

    def __init__(self, address: str | tuple[str, int]):
        self.requests: list[bytes] = []
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(address)
        self.listener.listen(8)
        self.listener.settimeout(0.01)
        self.address: Any = self.listener.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.handle(conn)
                except (OSError, EOFError):
                    pass

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    @staticmethod
    def answer(reply: Reply, request: bytes) -> bytes:
        return reply(request) if callable(reply) else reply

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept() at once on Linux
        self._thread.join(5)
        self.listener.close()
        if isinstance(self.address, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)

    def __enter__(self) -> FakeDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeClamd(FakeDaemon):
    """clamd: ``reply`` answers zINSTREAM after the whole stream was read; with
    ``at_once`` it is sent right after the command (like clamd's ``UNKNOWN COMMAND``), and
    ``None`` closes the connection without reading the stream or answering.

    ``streams`` holds the reassembled stream of every zINSTREAM, ``chunks`` the chunk sizes.
    """

    def __init__(self, address: str | tuple[str, int] = ("127.0.0.1", 0),
                 reply: bytes | None = b"stream: OK\0", *, at_once: bool = False,
                 ping: bytes = b"PONG\0", version: bytes = b"ClamAV 1.0.5/27400/Fake\0"):
        self.reply, self.at_once, self.ping, self.version = reply, at_once, ping, version
        self.streams: list[bytes] = []
        self.chunks: list[list[int]] = []
        super().__init__(address)

    def handle(self, conn: socket.socket) -> None:
        command = recv_until(conn, b"\0", limit=64)
        self.requests.append(command)
        if command == b"zPING\0":
            conn.sendall(self.ping)
        elif command == b"zVERSION\0":
            conn.sendall(self.version)
        elif command != b"zINSTREAM\0":
            conn.sendall(b"UNKNOWN COMMAND\n")
        elif self.reply is not None and self.at_once:
            conn.sendall(self.reply)
        elif self.reply is not None:
            data, sizes = b"", []
            while size := struct.unpack("!L", recv_exact(conn, 4))[0]:
                sizes.append(size)
                data += recv_exact(conn, size)
            self.streams.append(data)
            self.chunks.append(sizes)
            conn.sendall(self.reply)


def avp_reply(code: int | str, text: bytes | None = None, info: int | None = None) -> bytes:
    """An AvpCtl answer: ``'0'+code``, flags, [4-byte LE info], [4-byte LE length, text]."""
    first = code.encode() if isinstance(code, str) else bytes([ord("0") + code])
    flags = (0x02 if info is not None else 0) | (0x01 if text is not None else 0)
    reply = first + bytes([flags])
    if info is not None:
        reply += struct.pack("<I", info)
    if text is not None:
        reply += struct.pack("<I", len(text)) + text
    return reply


class FakeAvpCtl(FakeDaemon):
    """KAV 4 ``<directory>/AvpCtl``: reads a request up to its NUL, sends ``reply``
    (the request without its ``<0>date:`` prefix is passed to a callable reply)."""

    def __init__(self, directory: str, reply: Reply):
        self.reply = reply
        super().__init__(os.path.join(directory, "AvpCtl"))

    def handle(self, conn: socket.socket) -> None:
        request = recv_until(conn, b"\0")
        self.requests.append(request)
        conn.sendall(self.answer(self.reply, request[19:].rstrip(b"\0")))


class FakeAveserver(FakeDaemon):
    """KAV 5 ``<directory>/aveserver``: greets, reads ``SCAN ... <path>\\r\\n\\0``, answers."""

    def __init__(self, directory: str, reply: Reply, greeting: bytes = b"201 ready\r\n"):
        self.reply, self.greeting = reply, greeting
        super().__init__(os.path.join(directory, "aveserver"))

    def handle(self, conn: socket.socket) -> None:
        conn.sendall(self.greeting)
        request = recv_until(conn, b"\0")
        self.requests.append(request)
        path = request.removesuffix(b"\r\n\0").partition(b" ")[2].partition(b" ")[2]
        conn.sendall(self.answer(self.reply, path))


class FakeTrophie(FakeDaemon):
    """Trophie: reads a path and LF, answers ``reply`` (e.g. ``1 Some.Virus\\n``)."""

    def __init__(self, path: str, reply: Reply):
        self.reply = reply
        super().__init__(path)

    def handle(self, conn: socket.socket) -> None:
        request = recv_until(conn, b"\n")
        self.requests.append(request)
        conn.sendall(self.answer(self.reply, request.rstrip(b"\n")))
