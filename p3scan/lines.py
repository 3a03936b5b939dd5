"""Buffered, bounded line I/O over a socket, and byte-exact copying of dot-terminated blocks.

The original read lines into 4 KiB buffers, truncated them at NUL bytes and split long lines
with inserted CRLFs.  Here a line is whatever ends with LF, bytes are never rewritten, a
command or reply line is capped (:data:`MAX_LINE`), and message bodies are copied in large
chunks without any line limit, so memory stays bounded whatever the message.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

MAX_LINE = 16 * 1024
CHUNK = 256 * 1024
TERMINATORS = (b"\n.\r\n", b"\n.\n")


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

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed."""
        return len(self.buf) - self.pos

    def has_line(self) -> bool:
        return self.buf.find(b"\n", self.pos) >= 0

    def fill(self) -> int:
        """Receive once (blocking up to the timeout); return 0 at end of stream."""
        if self.eof:
            return 0
        if self.pos and self.pos >= len(self.buf) // 2:
            del self.buf[:self.pos]
            self.pos = 0
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
                    elif part[1]:
                        self.sock.sendfile(handle, part[0], part[1])
        finally:
            if cork:
                _set_cork(self.sock, 0)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _set_cork(sock: socket.socket, value: int) -> bool:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, value)
        return True
    except (OSError, AttributeError):  # not TCP (socketpairs in tests), or not Linux
        return False


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


class DotDecoder:
    """Un-dot-stuff a multi-line reply as it streams in, and find its end (RFC 1939 §3).

    Only lines that start with ``.`` need work, so the decoder searches for ``\\n.`` and
    copies everything in between unchanged: bytes (CR, NUL, 8-bit, very long lines) are
    never rewritten.  ``feed`` may be called with any chunking.
    """

    def __init__(self) -> None:
        self.at_line_start = True
        self.pending = b""
        self.done = False
        self.leftover = b""
        self.unstuffed = False  # whether any line started with a dot

    def feed(self, data: bytes) -> bytes:
        """Decode ``data``; after the terminator, ``done`` is set and the rest kept."""
        if not self.pending and b"\n." not in data and not (
                self.at_line_start and data[:1] == b"."):
            if data:
                self.at_line_start = data.endswith(b"\n")
            return data  # nothing to un-stuff: no copy
        data = self.pending + data if self.pending else data
        self.pending = b""
        out = bytearray()
        pos = 0
        while pos < len(data):
            if self.at_line_start:
                if data[pos] == 0x2E:  # "."
                    nxt = data[pos + 1:pos + 3]
                    if nxt[:1] == b"\n" or nxt == b"\r\n":
                        self.done = True
                        self.leftover = data[pos + 1 + (1 if nxt[:1] == b"\n" else 2):]
                        return bytes(out)
                    if nxt in (b"", b"\r"):
                        self.pending = data[pos:]  # cannot tell yet
                        return bytes(out)
                    pos += 1  # drop the stuffing dot
                    self.unstuffed = True
                self.at_line_start = False
            idx = data.find(b"\n.", pos)
            if idx < 0:
                out += data[pos:]
                self.at_line_start = data.endswith(b"\n")
                break
            out += data[pos:idx + 1]
            pos = idx + 1
            self.at_line_start = True
        return bytes(out)


class DotEncoder:
    """Dot-stuff message bytes for the wire, chunk by chunk; ``end`` gives the terminator."""

    def __init__(self) -> None:
        self.at_line_start = True

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        out = data.replace(b"\n.", b"\n..")
        if self.at_line_start and data[:1] == b".":
            out = b"." + out
        self.at_line_start = data.endswith(b"\n")
        return out

    def end(self) -> bytes:
        """The terminating ``.`` line; a CRLF first if the data did not end a line."""
        return b".\r\n" if self.at_line_start else b"\r\n.\r\n"


def send_stuffed(write: Callable[[bytes], None], chunks: Iterator[bytes],
                 prefix: bytes = b"") -> None:
    """Send a message dot-stuffed with its final ``.`` line.

    ``prefix`` (a status line) goes out with the first chunk and the ``.`` with the last,
    so a message costs one write per chunk and no small packets (the original lost ~40 ms
    a message to Nagle and delayed ACKs)."""
    encoder = DotEncoder()
    pending, first = prefix, True
    for chunk in chunks:
        data = encoder.feed(chunk)
        if first:
            pending, first = pending + data, False
            continue
        write(pending)
        pending = data
    write(pending + encoder.end())
