"""Drive a POP3 or SMTP session object between a scripted client and a scripted server.

Both peers are socketpair ends read by threads of their own, so the session never blocks on
a write; the session runs in a thread that records any exception escaping ``run()`` (which
must catch everything it can meet).  The fake servers parse commands leniently, as real
servers do (verb and arguments split at any ASCII white space, any case); they put the
EICAR string into every message they serve, so EICAR reaching a client inside a RETR reply
means that reply was never scanned (the built-in ``eicar`` scanner replaces every one).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable

import hypothesis
from hypothesis.errors import InvalidArgument

from p3scan.net.destination import Route
from p3scan.net.stream import Stream
from p3scan.proxy.session import Session, SessionInfo
from p3scan.scan.scanning import Scanning
from tests.support.harness import test_config
from tests.support.messages import EICAR
from tests.support.procs import REPO

QUIET = 0.1  # seconds of silence that end a read (a late reply only ends a check early)
END_WITHIN = 5.0  # seconds the session has to end once both peers have gone
TEMPLATE = REPO / "templates" / "p3scan-en.mail"


def note(text: str) -> None:
    """hypothesis.note, also usable in the plain tests of known cases."""
    try:
        hypothesis.note(text)
    except InvalidArgument:
        pass


def event(text: str) -> None:
    try:
        hypothesis.event(text)
    except InvalidArgument:
        pass


def words(line: bytes) -> tuple[bytes, list[bytes]]:
    """A lenient server's (and client's) reading of a command line: verb and arguments are
    separated by any run of spaces and tabs; the verb is upper-cased."""
    parts = [part for part in re.split(rb"[ \t]+", line.rstrip(b"\r\n")) if part]
    return (parts[0].upper(), parts[1:]) if parts else (b"", [])


class Peer:
    """The test's end of a socketpair; a thread keeps reading what the session sends."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.data = bytearray()
        self.pos = 0
        self.eof = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                with self.cond:
                    self.data += chunk
                    self.cond.notify_all()
        except OSError:
            pass
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def send(self, data: bytes) -> bool:
        """Send; False once the session has gone away."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def line(self, timeout: float = QUIET) -> bytes | None:
        """The next complete line, or None (end of stream, or nothing for ``timeout``)."""
        with self.cond:
            deadline = time.monotonic() + timeout
            while True:
                end = self.data.find(b"\n", self.pos)
                if end >= 0:
                    line = bytes(self.data[self.pos:end + 1])
                    self.pos = end + 1
                    return line
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    return None
                self.cond.wait(left)

    def exactly(self, size: int, timeout: float = QUIET) -> bytes | None:
        with self.cond:
            deadline = time.monotonic() + timeout
            while len(self.data) - self.pos < size:
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    return None
                self.cond.wait(left)
            data = bytes(self.data[self.pos:self.pos + size])
            self.pos += size
            return data

    def quiet(self, timeout: float = QUIET) -> None:
        """Wait until nothing new has arrived for a moment (or the stream ended)."""
        with self.cond:
            deadline = time.monotonic() + timeout
            seen = len(self.data)
            while not self.eof and time.monotonic() < deadline:
                self.cond.wait(0.01)
                if len(self.data) == seen:
                    return
                seen = len(self.data)

    def everything(self) -> bytes:
        with self.cond:
            return bytes(self.data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(2)


class Wire:
    """One session object in a thread, between :attr:`client` and :attr:`server` peers."""

    def __init__(self, session_class: type[Session], protocol: str, **cfg: object):
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None  # fsyncs cost nothing there
        self.dir = tempfile.mkdtemp(prefix="p3scan-fuzz-", dir=base)
        spool = os.path.join(self.dir, "spool")
        work = os.path.join(self.dir, "work")
        os.mkdir(spool)
        os.mkdir(work)
        self.cfg = test_config(virusdir=spool, notifydir=os.path.join(spool, "notify"),
                               template=str(TEMPLATE), idletimeout=5, **cfg)
        client_ours, client_theirs = socket.socketpair()
        server_ours, server_theirs = socket.socketpair()
        port = 25 if protocol == "SMTP" else 110
        self.info = SessionInfo(("192.0.2.2", 40000), Route(protocol, "198.51.100.2", port,
                                                            "target"))
        self.session = session_class(Stream(client_ours, "client", 5),
                                     Stream(server_ours, "server", 5), self.cfg, self.info,
                                     Scanning(self.cfg, work))
        self._ours = (client_ours, server_ours)
        self.raised: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.client = Peer(client_theirs)
        self.server_sock = server_theirs

    def _run(self) -> None:
        try:
            self.session.run()
        except BaseException:  # what run() let escape: the property forbids any
            self.raised = traceback.format_exc()
        finally:  # as connection.serve() does: both connections end with the session
            for sock in self._ours:
                sock.close()

    def start(self, server: Callable[[Wire], None]) -> None:
        """Start the session and the fake server (a function run in its own thread)."""
        self.server_thread = threading.Thread(target=self._serve, args=(server,), daemon=True)
        self.server_thread.start()
        self.thread.start()

    def _serve(self, server: Callable[[Wire], None]) -> None:
        try:
            server(self)
        except OSError:
            pass
        finally:
            try:
                self.server_sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def finish(self) -> None:
        """Both peers leave; the session must end promptly and must not have raised."""
        self.client.close()
        try:
            self.server_sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.server_sock.close()
        self.thread.join(END_WITHIN)
        hung = self.thread.is_alive()
        self.server_thread.join(END_WITHIN)
        for sock in self._ours:
            sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not hung, (f"the session did not end within {END_WITHIN}s after both peers "
                          f"had gone (outcome so far: {self.info.outcome})")
        assert self.raised is None, f"the session raised:\n{self.raised}"


class ServerReader:
    """The fake server's view of its socket: lines and raw bytes, with a quiet timeout."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.settimeout(10)  # the test closes the socket when it is done
        self.buf = b""

    def line(self) -> bytes | None:
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, OSError):
                return None
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def exactly(self, size: int) -> bytes | None:
        while len(self.buf) < size:
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, OSError):
                return None
            if not chunk:
                return None
            self.buf += chunk
        data, self.buf = self.buf[:size], self.buf[size:]
        return data


# --- what the servers serve -------------------------------------------------------------------


def infected_message(number: int) -> bytes:
    """A message with EICAR in a header field (so even TOP n 0 shows it) and in the body."""
    return (b"From: eve@example.test\r\nTo: bob@example.test\r\nSubject: message %d\r\n"
            b"X-Payload: " % number + EICAR + b"\r\n\r\n.dot line\r\n" + EICAR + b"\r\nend\r\n")


def pop3_wire(message: bytes) -> bytes:
    """A message dot-stuffed with its terminating line (messages here end with CRLF)."""
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    return (b"." + stuffed if stuffed.startswith(b".") else stuffed) + b".\r\n"


def pop3_reply(line: bytes) -> bytes | None:
    """What a well-behaved (lenient) POP3 server answers to ``line``; None closes."""
    verb, args = words(line)
    numeric = bool(args) and args[0].isdigit()
    if verb == b"QUIT":
        return b"+OK bye\r\n"
    if verb in (b"RETR", b"TOP") and numeric:
        if int(args[0]) not in (1, 2):
            return b"-ERR no such message\r\n"
        message = infected_message(int(args[0]))
        return b"+OK %d octets\r\n" % len(message) + pop3_wire(message)
    if verb in (b"LIST", b"UIDL"):
        if args:
            return b"+OK 1 300\r\n" if numeric else b"-ERR syntax\r\n"
        return b"+OK 2 messages\r\n1 300\r\n2 300\r\n.\r\n"
    if verb == b"CAPA":
        return b"+OK\r\nUSER\r\nTOP\r\nUIDL\r\nSTLS\r\nSASL PLAIN\r\n.\r\n"
    if verb == b"STAT":
        return b"+OK 2 600\r\n"
    if verb == b"AUTH":
        return b"+ \r\n" if args else b"+OK\r\nPLAIN\r\n.\r\n"
    if verb in (b"USER", b"PASS", b"APOP", b"NOOP", b"RSET", b"DELE"):
        return b"+OK\r\n"
    return b"-ERR unknown command\r\n"


def pop3_view(client: Peer, command: bytes) -> tuple[bytes | None, bytes | None]:
    """The reply to ``command`` as a client reads it (poplib's rules: a status starting with
    ``+`` is success; RETR, TOP, CAPA, and LIST or UIDL without argument bring a block).
    Returns (status, block); block is None when there is none or it never ended."""
    status = client.line()
    if status is None:
        return None, None
    verb, args = words(command)
    multi = verb in (b"RETR", b"TOP", b"CAPA") or (verb in (b"LIST", b"UIDL") and not args)
    if not (multi and status.startswith(b"+")):
        return status, None
    block = bytearray()
    while (item := client.line()) is not None:
        block += item
        if item.rstrip(b"\r\n") == b".":
            return status, bytes(block)
    return status, None  # ended before its final '.': no client shows it as a message


def smtp_reply(peer: Peer) -> bytes | None:
    """One complete SMTP reply (``250-...`` lines up to ``250 ...``), or None."""
    reply = bytearray()
    while (line := peer.line()) is not None:
        reply += line
        if line[3:4] != b"-":
            return bytes(reply)
    return None
