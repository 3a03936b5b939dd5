"""A message on disk while it is scanned: streamed in, memory bounded, mode 0600.

The spool file holds the message exactly as the sender meant it (un-dot-stuffed, line ends
untouched).  While it is written, the spool notes where the header ends (the first empty
line), so that X-headers can be inserted there without ever changing the message's
structure, and keeps the header block (up to :data:`HEADER_CAP`) for the logs and templates.
"""

from __future__ import annotations

import email.errors
import email.header
import email.parser
import email.policy
import os
import tempfile
from collections.abc import Iterator
from email.message import Message

from p3scan.lines import DotDecoder
from p3scan.log import LOG

HEADER_CAP = 256 * 1024
READ_CHUNK = 256 * 1024
SPACE_CHECK_EVERY = 8 * 1024 * 1024


class SpoolFull(Exception):
    """Writing would leave less free space than ``bytesfree`` allows."""


def free_kbytes(path: str) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize // 1024


class Spool:
    """One message being received into ``directory``."""

    def __init__(self, directory: str, *, min_free_kb: int = 0):
        fd, self.path = tempfile.mkstemp(prefix="p3scan.", suffix=".eml", dir=directory)
        self.file = os.fdopen(fd, "wb", buffering=READ_CHUNK)
        self.directory = directory
        self.min_free_kb = min_free_kb
        self.size = 0
        self.header_end: int | None = None  # offset of the empty line after the header
        self.header_eol = b"\r\n"  # the line end that empty line uses
        self.header = bytearray()
        self.dotless = False  # set by the reader: no line starts with a dot
        self.ends_line = True  # the message ends with a line end (or is empty)
        self._tail = b"\n"  # the message starts at a line start
        self._headers: Message | None = None
        self._next_space_check = 0

    # --- writing ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.header_end is None:
            self._scan_header(data)
        if self.size >= self._next_space_check:
            self._check_space()
        self.file.write(data)
        self.size += len(data)
        self.ends_line = data.endswith(b"\n")

    def _scan_header(self, data: bytes) -> None:
        combined = self._tail + data
        found = [i for i in (combined.find(b"\n\n"), combined.find(b"\n\r\n")) if i >= 0]
        if not found:
            self._keep_header(data)
            self._tail = combined[-2:]
            return
        idx = min(found)
        start = self.size - len(self._tail) + idx + 1  # the empty line itself
        self.header_end = start
        self.header_eol = b"\n" if combined[idx + 1:idx + 2] == b"\n" else b"\r\n"
        self._keep_header(data[: max(0, start - self.size)])
        del self.header[start:]  # a CR of the empty line may have come in the last read

    def _keep_header(self, data: bytes) -> None:
        room = HEADER_CAP - len(self.header)
        if room > 0:
            self.header += data[:room]

    def _check_space(self) -> None:
        self._next_space_check = self.size + SPACE_CHECK_EVERY
        if self.min_free_kb and free_kbytes(self.directory) < self.min_free_kb:
            raise SpoolFull(f"less than {self.min_free_kb} KB free in {self.directory}")

    def close(self) -> None:
        if not self.file.closed:
            self.file.flush()
            self.file.close()

    def sync(self) -> None:
        """Flush the message to disk (before a quarantine copy counts as kept)."""
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        else:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    # --- reading ----------------------------------------------------------------------------

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes from ``start`` to ``end`` in large pieces."""
        end = self.size if end is None else end
        with open(self.path, "rb") as handle:
            handle.seek(start)
            remaining = end - start
            while remaining > 0:
                piece = handle.read(min(READ_CHUNK, remaining))
                if not piece:
                    break
                remaining -= len(piece)
                yield piece

    def with_header(self, header: bytes) -> tuple[int, Iterator[bytes]]:
        """The message with ``header`` inserted where its header ends (nothing is inserted
        when it has no empty line, so its structure never changes): (size, chunks)."""
        if self.header_end is None:
            return self.size, self.chunks()
        extra = header + self.header_eol
        parts = (self.chunks(0, self.header_end), [extra], self.chunks(self.header_end))
        return self.size + len(extra), (chunk for part in parts for chunk in part)

    def wire_parts(self, header: bytes) -> tuple[int, list[bytes | tuple[int, int]]] | None:
        """For a message without dot lines the wire form is the file itself: the parts to
        send (file ranges and the inserted header) and the size, else None."""
        if not self.dotless:
            return None
        if self.header_end is None:
            return self.size, [(0, self.size)]
        extra = header + self.header_eol
        return self.size + len(extra), [(0, self.header_end), extra,
                                        (self.header_end, self.size - self.header_end)]

    def headers(self) -> Message:
        """The parsed header block (only what was kept), parsed once the message is in."""
        if self._headers is None or not self.file.closed:
            self._headers = email.parser.BytesHeaderParser(
                policy=email.policy.compat32).parsebytes(bytes(self.header))
        return self._headers


class Intake:
    """Decode a dot-terminated block (a RETR reply, SMTP DATA) into a spool as it streams in.

    Running out of space does not stop the reading, which must go on to the final ``.`` to
    keep the protocol in step; the problem is remembered and turns into a scan failure."""

    def __init__(self, spool: Spool):
        self.spool = spool
        self.decoder = DotDecoder()
        self.problem: str | None = None

    @property
    def done(self) -> bool:
        return self.decoder.done

    def feed(self, data: bytes) -> None:
        decoded = self.decoder.feed(data)
        if self.problem is None:
            try:
                self.spool.write(decoded)
            except SpoolFull as err:
                LOG.critical("ERR: Not enough space! %s", err)
                self.problem = str(err)

    def finish(self) -> bytes:
        """What followed the block (to give back to the stream); notes whether the message
        has dot lines (without them its file is its own wire form)."""
        self.spool.dotless = not self.decoder.unstuffed
        return self.decoder.leftover


def header_text(headers: Message, name: str, limit: int = 256) -> str | None:
    """A header's value, RFC 2047-decoded, unfolded, without control characters, bounded."""
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        parts = email.header.decode_header(str(raw))
        text = str(email.header.make_header(parts))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        text = str(raw)
    text = " ".join(text.split())
    text = "".join(char for char in text if char.isprintable())
    return text if len(text) <= limit else text[: limit - 3] + "..."
