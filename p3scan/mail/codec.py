"""The dot-stuffing codec of POP3 and SMTP (RFC 1939 §3, RFC 5321 §4.5.2), free of sockets.

A block of lines ends with a line holding a single ``.``; a line of the message that starts
with ``.`` travels with one more.  These functions work on bytes in any chunking, so the
same code serves a socket, a spool file or a test.  A spool's intake takes any
:class:`Decoder`: :class:`DotDecoder` for these blocks, :class:`CountedDecoder` for blocks
of a known length (BDAT, IMAP literals).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol


class Decoder(Protocol):
    """What a spool intake needs of a block's framing: the dot-terminated block of POP3 and
    SMTP DATA here; a length-counted one (BDAT, IMAP literals) fits the same intake."""

    done: bool  # the block has ended
    leftover: bytes  # what followed the block in the last data fed (not part of it)

    def feed(self, data: bytes) -> bytes:
        """The message bytes in ``data`` (nothing once ``done``)."""
        ...

    @property
    def dot_lines(self) -> bool:
        """Whether a line of the message may start with a dot: if not, the spool file is
        already its own dot-stuffed wire form (the sendfile fast path)."""
        ...


class DotLines:
    """Notes whether any line of a message, fed in any chunking, starts with a dot."""

    def __init__(self) -> None:
        self.at_line_start = True
        self.found = False

    def feed(self, data: bytes) -> None:
        if data and not self.found:
            self.found = (self.at_line_start and data[:1] == b".") or b"\n." in data
            self.at_line_start = data.endswith(b"\n")


class CountedDecoder:
    """A block of a known length, passed through unchanged (BDAT chunks, IMAP literals)."""

    def __init__(self, length: int) -> None:
        self.remaining = length
        self.done = length == 0
        self.leftover = b""
        self.lines = DotLines()

    @property
    def dot_lines(self) -> bool:
        return self.lines.found

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        out = data[:self.remaining]
        self.remaining -= len(out)
        self.lines.feed(out)
        if not self.remaining:
            self.done, self.leftover = True, data[len(out):]
        return out


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

    @property
    def dot_lines(self) -> bool:
        return self.unstuffed

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
