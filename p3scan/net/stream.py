"""One side of a session: buffered, bounded line I/O over a socket that can turn into TLS.

The original read lines into 4 KiB buffers, truncated them at NUL bytes and split long lines
with inserted CRLFs.  Here a line is whatever ends with LF, bytes are never rewritten, a
command or reply line is capped (:data:`MAX_LINE`), and message bodies are copied in large
chunks without any line limit, so memory stays bounded whatever the message.

A stream upgrades to TLS in place (:meth:`Stream.start_tls`, for STLS and STARTTLS) and
refuses to while plaintext is buffered.  A TLS socket may hold decrypted bytes that
``select()`` cannot see, so code that waits on streams uses :func:`wait_readable`.
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import BinaryIO, Protocol

from p3scan import heartbeat

MAX_LINE = 16 * 1024
CHUNK = 256 * 1024
SENDFILE_PIECE = 4 * 1024 * 1024  # a heartbeat between pieces of a large message


class StreamError(Exception):
    """A problem with one side of a session; ``side`` names it ("client" or "server")."""

    def __init__(self, side: str, message: str):
        super().__init__(f"{side} {message}")
        self.side = side
        self.detail = message


class LineTooLong(StreamError):
    """A command or reply line exceeded its cap."""


class PeerClosed(StreamError):
    """The peer closed the connection where more data was required."""


class TlsInjection(StreamError):
    """Plaintext was buffered when TLS was to start: bytes sent before the handshake (in
    the same packet as STLS or STARTTLS) must never count as protected (CVE-2011-0411)."""


class Stream:
    """One side of a session: a connected socket with a receive buffer."""

    def __init__(self, sock: socket.socket, name: str, timeout: float):
        self.sock = sock
        self.name = name
        self.buf = bytearray()
        self.pos = 0
        self.eof = False
        sock.settimeout(timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (tests use socketpairs)
            pass

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def tls(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed."""
        return len(self.buf) - self.pos

    def tls_pending(self) -> int:
        """Bytes the TLS layer has decrypted but not handed over: ``select()`` cannot see
        them, as they have left the kernel already."""
        return self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0

    def pending(self) -> int:
        """Bytes readable without waiting for the network: buffered here or in TLS."""
        return self.buffered + self.tls_pending()

    def start_tls(self, context: ssl.SSLContext, *, server_side: bool,
                  server_hostname: str | None = None) -> None:
        """Run the TLS handshake on this connection and speak TLS from now on.

        Refused (:class:`TlsInjection`) if any plaintext is buffered: the peer sent it
        after the command that started TLS, so it must not be read as if it came through
        the handshake.  The handshake has the stream's timeout; a failure raises
        :class:`ssl.SSLError` (an :class:`OSError`) or :class:`TimeoutError`.
        """
        if self.tls:
            raise StreamError(self.name, "already speaks TLS")
        if self.buffered:
            raise TlsInjection(self.name, f"sent {self.buffered} bytes of plaintext before "
                                          f"the TLS handshake")
        self.sock = context.wrap_socket(self.sock, server_side=server_side,
                                        server_hostname=server_hostname,
                                        do_handshake_on_connect=False)
        self.sock.do_handshake()

    def has_line(self) -> bool:
        return self.buf.find(b"\n", self.pos) >= 0

    def fill(self) -> int:
        """Receive once (blocking up to the timeout); return 0 at end of stream."""
        if self.eof:
            return 0
        if self.pos and self.pos >= len(self.buf) // 2:
            del self.buf[:self.pos]
            self.pos = 0
        heartbeat.beat()  # each read waits at most the timeout: alive, not stuck
        try:
            data = self.sock.recv(CHUNK)
        except ConnectionResetError:
            self.eof = True
            raise PeerClosed(self.name, "reset the connection") from None
        if not data:
            self.eof = True
            return 0
        self.buf += data
        return len(data)

    def readline(self, limit: int = MAX_LINE) -> bytes:
        """The next line with its terminator; ``b''`` at end of stream.

        A partial line at end of stream is returned as it is, so callers relaying bytes lose
        nothing; callers parsing commands treat a line without LF as the end.
        """
        scanned = self.pos
        while True:
            idx = self.buf.find(b"\n", scanned)
            if idx >= 0:
                if idx + 1 - self.pos > limit:
                    raise LineTooLong(self.name, f"line longer than {limit} bytes")
                return self._take(idx + 1)
            if len(self.buf) - self.pos > limit:
                raise LineTooLong(self.name, f"line longer than {limit} bytes")
            scanned = len(self.buf)
            if not self.fill():
                return self._take(len(self.buf))

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of the buffer (what followed a block we decoded)."""
        if data:
            self.buf[self.pos:self.pos] = data

    def peek(self) -> bytes:
        """The buffered bytes, left in the buffer."""
        return bytes(self.buf[self.pos:])

    def take(self, size: int | None = None) -> bytes:
        """Consume up to ``size`` buffered bytes (all of them by default)."""
        end = len(self.buf) if size is None else min(len(self.buf), self.pos + size)
        return self._take(end)

    def _take(self, end: int) -> bytes:
        data = bytes(self.buf[self.pos:end])
        self.pos = end
        if self.pos == len(self.buf):
            self.buf.clear()
            self.pos = 0
        return data

    def write(self, data: bytes) -> None:
        if data:
            heartbeat.beat()
            try:
                self.sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                raise PeerClosed(self.name, "closed the connection") from None

    def send_parts(self, path: str, parts: list[bytes | tuple[int, int]]) -> None:
        """Send byte strings and (offset, length) ranges of a file, the ranges by
        sendfile(2) without copying them through Python; TCP_CORK makes one stream of it."""
        cork = _set_cork(self.sock, 1)
        try:
            with open(path, "rb") as handle:
                for part in parts:
                    if isinstance(part, bytes):
                        self.write(part)
                    else:
                        self._sendfile(handle, *part)
        finally:
            if cork:
                _set_cork(self.sock, 0)

    def _sendfile(self, handle: BinaryIO, offset: int, length: int) -> None:
        """A file range in pieces, each a heartbeat: a slow client is alive, not stuck."""
        end = offset + length
        while offset < end:
            heartbeat.beat()
            piece = min(SENDFILE_PIECE, end - offset)
            self.sock.sendfile(handle, offset, piece)
            offset += piece

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def wait_readable(streams: Sequence[Stream], timeout: float | None) -> list[Stream]:
    """The streams that :meth:`Stream.fill` can read without blocking, waiting up to
    ``timeout``: bytes already decrypted by TLS count first, as ``select()`` misses them."""
    ready = [stream for stream in streams if stream.tls_pending()]
    if ready:
        return ready
    readable, _, _ = select.select(list(streams), [], [], timeout)
    return readable


def _set_cork(sock: socket.socket, value: int) -> bool:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, value)
        return True
    except (OSError, AttributeError):  # not TCP (socketpairs in tests), or not Linux
        return False


TERMINATORS = (b"\n.\r\n", b"\n.\n")


def find_terminator(context: bytes, chunk: bytes) -> int:
    """Offset in ``chunk`` just after the ``.`` line that ends a block, or -1.

    ``context`` holds the last bytes before ``chunk`` (``b"\\n"`` at a line start), so a
    terminator that straddles two reads is still found.
    """
    data = context + chunk
    best = -1
    for pattern in TERMINATORS:
        idx = data.find(pattern)
        if idx >= 0:
            end = idx + len(pattern)
            best = end if best < 0 else min(best, end)
    return best - len(context) if best >= 0 else -1


def copy_block(src: Stream, write: Callable[[bytes], None], *, at_line_start: bool = True) -> int:
    """Copy a dot-terminated block from ``src`` byte for byte; return the bytes copied.

    Raises :class:`PeerClosed` if the stream ends before the terminating ``.`` line.
    """
    context = b"\n" if at_line_start else b""
    total = 0
    while True:
        if not src.buffered and not src.fill():
            raise PeerClosed(src.name, "closed the connection in the middle of a block")
        chunk = src.peek()
        end = find_terminator(context, chunk)
        if end >= 0:
            write(src.take(end))  # what follows the block stays buffered
            return total + end
        write(src.take())
        total += len(chunk)
        context = (context + chunk)[-3:]


class BlockSink(Protocol):
    """What takes a block as it arrives (:class:`p3scan.mail.spool.Intake`)."""

    @property
    def done(self) -> bool: ...

    def feed(self, data: bytes) -> None: ...

    def finish(self) -> bytes:
        """What followed the block, to give back to the stream."""
        ...


def _no_wait() -> bool:
    return True


def _nothing() -> None:
    pass


def receive_block(src: Stream, sink: BlockSink, *, beat: Callable[[], None],
                  wait: Callable[[], bool] = _no_wait, after_feed: Callable[[], None] = _nothing,
                  closed: str = "closed the connection") -> None:
    """Feed ``sink`` from ``src`` until it says the block is done; what follows the block
    stays buffered.  The one intake loop of POP3 (a RETR reply) and SMTP (DATA): ``wait``
    (False: nothing yet, ask again) and ``after_feed`` are where a protocol keeps its client
    waiting; by default a read simply blocks up to the socket's timeout.  Raises
    :class:`PeerClosed` (``closed`` says how) if the stream ends first."""
    while not sink.done:
        beat()
        if not src.buffered:
            if not wait():
                continue
            if not src.fill():
                raise PeerClosed(src.name, closed)
        sink.feed(src.take())
        after_feed()
    src.unread(sink.finish())
