"""A message on disk while it is scanned: streamed in, memory bounded, mode 0600.

The spool file holds the message exactly as the sender meant it (un-dot-stuffed, line ends
untouched).  While it is written, the spool notes where the header ends (the first empty
line), so that X-headers can be inserted there without ever changing the message's
structure, and keeps the header block (up to :data:`HEADER_CAP`) for the logs and templates.

Free space (``bytesfree``) is checked before a message starts and at least every
:data:`SPACE_CHECK_EVERY` bytes; a check that fails, or a write that fails (ENOSPC), makes
the spool *incomplete*: it accepts no more data and refuses to hand out what it holds, so a
truncated message can never pass for a whole one.

A later step may replace the message (spam headers, attachment renaming, HTML defanging):
:meth:`Spool.rewrite` streams the new content into a new file in the same directory through
the same :meth:`Spool.write` that took the original in, so the facts (header end, kept
header, size, line end, dot lines) are computed by the one code path that computes them for
every message; the Spool object then takes over that file and its facts, and the old file
goes.  The object stays the same (a :class:`~p3scan.mail.context.MessageContext` holds it), and a
rewrite that fails leaves the previous content untouched.  ``original_size`` keeps what the
sender's (or server's) message measured, which POP3's octet count is relative to.
"""

from __future__ import annotations

import email.errors
import email.header
import email.parser
import email.policy
import errno
import os
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator
from email.message import Message

from p3scan.log import LOG
from p3scan.mail.codec import Decoder, DotDecoder, DotLines

HEADER_CAP = 256 * 1024
READ_CHUNK = 256 * 1024  # reads, and the write buffer: large writes, bounded memory
SPACE_CHECK_EVERY = 1024 * 1024  # bytesfree is re-checked this often: a cheap statvfs per MB
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class SpoolError(OSError):
    """The message could not be spooled whole; the spool holds only part of it."""


class SpoolFull(SpoolError):
    """Writing would leave less free space than ``bytesfree`` allows, or the disk is full."""


def free_kbytes(path: str) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize // 1024


class Spool:
    """One message being received into ``directory``."""

    def __init__(self, directory: str, *, min_free_kb: int = 0):
        fd, self.path = tempfile.mkstemp(prefix="p3scan.", suffix=".eml", dir=directory)
        self.file = os.fdopen(fd, "wb", buffering=0)  # buffered here: a failed write is seen
        self.pending = bytearray()
        self.problem: str | None = None  # why the spool is incomplete
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
        self._original_size: int | None = None  # set by the first rewrite

    @property
    def original_size(self) -> int:
        """The size of the message as it came in, before any rewrite: POP3 corrects the
        server's octet count by what p3scan changed relative to this."""
        return self.size if self._original_size is None else self._original_size

    # --- writing ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append ``data``; a :class:`SpoolError` makes the spool incomplete for good."""
        if self.problem is not None:
            raise SpoolError(self.problem)
        if not data:
            return
        if self.size + len(data) > self._next_space_check:
            self.check_space()
        if self.header_end is None:
            self._scan_header(data)
        self.pending += data
        self.size += len(data)
        self.ends_line = data.endswith(b"\n")
        if len(self.pending) >= READ_CHUNK:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered to the file."""
        if self.problem is not None:
            raise SpoolError(self.problem)
        try:
            done, fd = 0, self.file.fileno()
            while done < len(self.pending):
                done += os.write(fd, self.pending[done:] if done else self.pending)
        except OSError as err:
            self._fail(_write_error(err, self.directory))
        self.pending.clear()

    def check_space(self) -> None:
        """Raise :class:`SpoolFull` (and become incomplete) below ``bytesfree``."""
        self._next_space_check = self.size + SPACE_CHECK_EVERY
        if self.min_free_kb and free_kbytes(self.directory) < self.min_free_kb:
            self._fail(SpoolFull(f"spool full: less than {self.min_free_kb} KB free in "
                                 f"{self.directory} (bytesfree)"))

    def _fail(self, err: SpoolError) -> None:
        self.problem = str(err)
        self.pending.clear()
        raise err

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

    def close(self) -> None:
        """Close the file; data that cannot be written raises (after closing)."""
        if not self.file.closed:
            try:
                if self.problem is None:
                    self.flush()
            finally:
                self.file.close()

    def sync(self) -> None:
        """Flush the message to disk (before a quarantine copy counts as kept); an
        incomplete spool is kept as far as it got (its sidecar tells why)."""
        if not self.file.closed:
            if self.problem is None:
                self.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        else:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # --- rewriting --------------------------------------------------------------------------

    def rewrite(self, transform: Callable[[Iterator[bytes]], Iterable[bytes]]) -> None:
        """Replace the message by ``transform(its chunks)``, written to a new file in the same
        directory; all facts are recomputed except ``original_size``.  On any error (a full
        disk, the transform failing) the new file goes and the message stays as it was."""
        self._must_be_complete()
        self.close()
        new = Spool(self.directory, min_free_kb=self.min_free_kb)
        source = self._chunks(0, self.size)
        try:
            new.dotless = not _write_all(new, transform(source))
        except BaseException:
            new.remove()
            raise
        finally:
            source.close()
        self._adopt(new)

    def _adopt(self, new: Spool) -> None:
        """Take over ``new``'s file and facts; the previous file is removed."""
        old_path, self._original_size = self.path, self.original_size
        self.path, self.file, self.size = new.path, new.file, new.size
        self.header_end, self.header_eol, self.header = (new.header_end, new.header_eol,
                                                         new.header)
        self.dotless, self.ends_line, self._headers = new.dotless, new.ends_line, None
        try:
            os.unlink(old_path)
        except FileNotFoundError:
            pass

    def remove(self) -> None:
        self.pending.clear()  # never raises: it runs in finally clauses
        if not self.file.closed:
            self.file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    # --- reading ----------------------------------------------------------------------------

    def _must_be_complete(self) -> None:
        if self.problem is not None:
            raise SpoolError(f"the spooled message is incomplete ({self.problem})")

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes from ``start`` to ``end`` in large pieces."""
        self._must_be_complete()
        return self._chunks(start, self.size if end is None else end)

    def _chunks(self, start: int, end: int) -> Generator[bytes, None, None]:
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
        self._must_be_complete()
        if self.header_end is None:
            return self.size, self.chunks()
        extra = header + self.header_eol
        parts = (self.chunks(0, self.header_end), [extra], self.chunks(self.header_end))
        return self.size + len(extra), (chunk for part in parts for chunk in part)

    def wire_parts(self, header: bytes) -> tuple[int, list[bytes | tuple[int, int]]] | None:
        """For a message without dot lines the wire form is the file itself: the parts to
        send (file ranges and the inserted header) and the size, else None."""
        self._must_be_complete()
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
    """Decode a block (a RETR reply, SMTP DATA: dot-terminated by default; any
    :class:`~p3scan.mail.codec.Decoder`) into a spool as it streams in.

    Free space is checked before the first byte.  Running out of space (below ``bytesfree``,
    or a write failing with ENOSPC) does not stop the reading, which must go on to the end
    of the block (the final ``.``) to keep the protocol in step; the problem is remembered
    (``problem``) and turns into a scan failure, and the incomplete spool is never
    delivered."""

    def __init__(self, spool: Spool, decoder: Decoder | None = None):
        self.spool = spool
        self.decoder: Decoder = decoder if decoder is not None else DotDecoder()
        self.problem: str | None = spool.problem
        self._attempt(spool.check_space)

    @property
    def done(self) -> bool:
        return self.decoder.done

    def feed(self, data: bytes) -> None:
        decoded = self.decoder.feed(data)
        self._attempt(lambda: self.spool.write(decoded))

    def finish(self) -> bytes:
        """What followed the block (to give back to the stream); notes whether the message
        has dot lines (without them its file is its own wire form).  Everything buffered is
        written now, so that a full disk is noticed here and not when the spool is read."""
        self._attempt(self.spool.flush)
        self.spool.dotless = not self.decoder.dot_lines
        return self.decoder.leftover

    def _attempt(self, action: Callable[[], None]) -> None:
        if self.problem is not None:
            return
        try:
            action()
        except SpoolError as err:
            if isinstance(err, SpoolFull):
                LOG.critical("ERR: Not enough space! %s", err)
            else:
                LOG.error("ERR: %s", err)
            self.problem = str(err)


def _write_all(spool: Spool, chunks: Iterable[bytes]) -> bool:
    """Write ``chunks`` to ``spool`` and close it; whether a line starts with a dot."""
    lines = DotLines()
    spool.check_space()
    for chunk in chunks:
        lines.feed(chunk)
        spool.write(chunk)
    spool.close()
    return lines.found


def _write_error(err: OSError, directory: str) -> SpoolError:
    """A failed write as a SpoolError; a full disk (or quota) is a SpoolFull."""
    if err.errno in FULL_ERRNOS:
        return SpoolFull(f"spool full: {err.strerror} in {directory}")
    return SpoolError(f"cannot write the spool file in {directory}: {err.strerror or err}")


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
