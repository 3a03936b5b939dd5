"""Split a message into its MIME parts, one decoded file per part, streaming.

Used by ``demime`` and by the built-in eicar scanner.  The original let ripmime write parts
under their attachment names, so a harmless second attachment named like an infected first
one overwrote it before the scan (spec §9.5, S16).  Here every part gets its own file
``NNN-name``; names are cut down to safe characters, so nothing is written outside the
directory.  The message is read line by line (long lines in pieces) and base64 and
quoted-printable are decoded as they stream, so memory stays bounded whatever the size.

A splitter that silently produces fewer parts than a mail client would show is a scan
bypass.  So where the splitter meets something it cannot interpret within its limits, it
either takes the more tolerant reading (what a mail client would display: Python's
``email`` parser is the reference) or records a *problem*; a message with problems is
*unchecked* (:class:`SplitError`), and the ``unchecked`` policy decides what becomes of it.
The tolerant readings:

* a header line that is not a header field ends the header, as in the ``email`` parser;
* a header over :data:`MAX_HEADER` is read on, keeping only its ``Content-*`` fields;
* base64 that restarts after padding is decoded on (``QQ==`` + more data);
* any ``message/*`` part is split as a message (as the email parser does), and one that is
  base64 or quoted-printable is decoded and split too;
* a message with bare-CR line ends is also split a second time with CR read as a line end.

The problems (each makes the message unchecked): more than :data:`MAX_PARTS` parts, more
than :data:`MAX_DEPTH` levels of nesting, ``Content-*`` fields over :data:`MAX_MIME_FIELDS`,
a ``multipart/*`` without a boundary or whose boundary never appears, conflicting
``Content-Type`` or ``Content-Transfer-Encoding`` fields or an RFC 2047 encoded-word in one
(the ``email`` parser's default policy decodes it, compat32 does not), and base64 or
uuencode that does not decode.  An unknown transfer encoding is taken as it is, as mail
readers do.  Lines have no length limit: longer than :data:`PIECE` they are read in pieces,
and a boundary is only recognised at the start of a line.
"""

from __future__ import annotations

import binascii
import email.parser
import email.policy
import os
import re
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import BinaryIO

PIECE = 64 * 1024  # a line is read in pieces of this size: memory stays bounded
MAX_HEADER = 64 * 1024  # an entity header kept whole up to here; past it, Content-* only
MAX_MIME_FIELDS = 64 * 1024  # Content-* fields of one entity past MAX_HEADER, at most
MAX_PARTS = 5000  # part files per message (each costs an inode and a scan)
MAX_DEPTH = 20  # nesting of multiparts and messages (recursion, and no mail needs more)
MAX_PROBLEMS = 10  # problems recorded (one is enough to make the message unchecked)
FRAMING = ("preamble", "epilogue")  # blank lines around a multipart's parts make no file
UUENCODE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})  # as the email parser
FLAT_MESSAGES = frozenset({"delivery-status"})  # message/* the email parser does not nest
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")
_PADDED = re.compile(rb"=+")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_FIELD = re.compile(rb"^(From |[\041-\071\073-\176]*:|[\t ])")  # the email parser's rule
_BARE_CR = re.compile(rb"\r(?!\n)")

Stop = tuple[bytes, bool] | None  # the boundary that ended a body, and whether it closes


class SplitError(Exception):
    """The message could not be split completely within the limits: it is *unchecked*.

    ``files`` are the parts that were written all the same: a virus found in them still
    counts, but finding none proves nothing."""

    def __init__(self, problems: list[str], files: list[Path] | None = None):
        super().__init__("; ".join(problems))
        self.problems = problems
        self.files = files or []


class _TooMany(Exception):
    """MAX_PARTS reached: no more files may be written."""


def safe_name(name: str | None, default: str) -> str:
    """A file name that stays inside the directory: base name, safe characters only."""
    base = re.split(r"[/\\]", name or "")[-1]
    cleaned = _UNSAFE.sub("_", base).lstrip(".")[:80]
    return cleaned or default


@dataclass
class _Output:
    """What the splitters of one message share: the directory, the files, the problems."""

    outdir: Path
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS and text not in self.problems:
            self.problems.append(text)

    def open(self, name: str) -> BinaryIO:
        if len(self.files) >= MAX_PARTS:
            raise _TooMany()
        path = self.outdir / f"{len(self.files):03d}-{name}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.files.append(path)
        return os.fdopen(fd, "wb")


def split(message: str | os.PathLike, outdir: str | os.PathLike) -> list[Path]:
    """Write every MIME part of ``message`` into ``outdir``; return the files in order.

    Raises :class:`SplitError` (with the files written) if the message is unchecked."""
    out = _Output(Path(outdir))
    bare_cr = _split_file(message, out, 0, crlf_only=True)
    if bare_cr:
        _split_file(message, out, 0, crlf_only=False)
    if out.problems:
        raise SplitError(out.problems, out.files)
    return out.files


def _split_file(path: str | os.PathLike, out: _Output, depth: int, *, crlf_only: bool) -> bool:
    """Split one file into ``out``; return whether it has bare CRs (worth a second pass)."""
    with open(path, "rb") as source:
        splitter = _Splitter(source, out, crlf_only)
        try:
            splitter.entity((), depth)
        except _TooMany:
            out.problem(f"more than {MAX_PARTS} MIME parts")
    return splitter.bare_cr


class _Splitter:
    def __init__(self, source: BinaryIO, out: _Output, crlf_only: bool = True):
        self.source = source
        self.out = out
        self.crlf_only = crlf_only
        self.line_start = True
        self.pushed: tuple[bytes, bool] | None = None
        self.pending = b""  # bare-CR mode: the rest of a piece after a CR line end
        self.bare_cr = False
        self.last_file: Path | None = None  # the file the last body went to

    # --- reading ----------------------------------------------------------------------------

    def _piece(self) -> tuple[bytes, bool]:
        """The next line, or piece of a long line, and whether it starts a line."""
        if self.pushed is not None:
            pushed, self.pushed = self.pushed, None
            return pushed
        starts = self.line_start
        piece = self._raw_piece()
        self.line_start = piece.endswith((b"\n", b"\r")) if not self.crlf_only else \
            piece.endswith(b"\n")
        return piece, starts

    def _raw_piece(self) -> bytes:
        piece = self.pending or self.source.readline(PIECE)
        self.pending = b""
        if self.crlf_only:
            if not self.bare_cr and b"\r" in piece:
                # a CR that ends a piece (cut at PIECE) may be bare too: a second pass
                # costs only time, a missed one would hide a part
                self.bare_cr = _BARE_CR.search(piece) is not None
            return piece
        match = _BARE_CR.search(piece)
        if match and match.end() < len(piece):
            self.pending = piece[match.end():]
            return piece[:match.end()]
        return piece

    def _push_back(self, piece: bytes, starts: bool) -> None:
        self.pushed = (piece, starts)

    @staticmethod
    def _boundary(piece: bytes, boundaries: tuple[bytes, ...]) -> Stop:
        if not piece.startswith(b"--"):
            return None
        for boundary in reversed(boundaries):
            if piece.startswith(boundary):
                rest = piece[len(boundary):].rstrip(b"\r\n").rstrip(b" \t")  # as the
                # email parser: only spaces and tabs may follow a boundary
                if rest in (b"", b"--"):
                    return boundary, rest == b"--"
        return None

    # --- structure --------------------------------------------------------------------------

    def entity(self, boundaries: tuple[bytes, ...], depth: int) -> Stop:
        """One entity (header and body) up to an enclosing boundary; return that boundary."""
        header, stop = self._header(boundaries)
        if stop is not None:
            return stop
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)
        self._check_fields(headers)
        ctype = headers.get_content_type()
        boundary = headers.get_boundary()  # RFC 2231 forms included
        message = _is_message(headers)
        nested = ctype.startswith("multipart/") or message
        if nested and depth >= MAX_DEPTH:
            self.out.problem(f"MIME parts nested deeper than {MAX_DEPTH} levels")
            return self._body(boundaries, _Decoder(), "part")
        if ctype.startswith("multipart/"):
            if boundary:
                return self._multipart(b"--" + boundary.encode("latin-1", "replace"),
                                       boundaries, depth, ctype)
            self.out.problem(f"{ctype} without a boundary parameter")
        encoding = _encoding(headers)
        if message and encoding in ("7bit", "8bit", "binary"):
            return self.entity(boundaries, depth + 1)
        name = headers.get_filename() or headers.get_param("name")
        default = "textfile" if ctype.startswith("text/") else "part"
        decoder = _decoder(encoding)
        stop = self._body(boundaries, decoder, safe_name(name if isinstance(name, str) else None,
                                                         default))
        if decoder.error:
            self.out.problem(f"{decoder.error} in a {encoding} part")
        if message and self.last_file is not None:
            _split_file(self.last_file, self.out, depth + 1, crlf_only=True)
        return stop

    def _check_fields(self, headers: Message) -> None:
        """Fields that readers may take differently make the message unchecked."""
        for name in ("Content-Type", "Content-Transfer-Encoding"):
            values = {" ".join(str(value).lower().split()) for value in headers.get_all(name, [])}
            if len(values) > 1:
                self.out.problem(f"conflicting {name} fields")
            if any("=?" in value for value in values):  # readers decode RFC 2047 here, or not
                self.out.problem(f"an encoded-word in {name}")

    def _header(self, boundaries: tuple[bytes, ...]) -> tuple[bytes, Stop]:
        """The entity's header block; past MAX_HEADER only its Content-* fields are kept."""
        header = bytearray()
        mime = 0  # bytes of Content-* fields kept past MAX_HEADER
        content_field = False
        while True:
            piece, starts = self._piece()
            if not piece:
                return bytes(header), None
            if starts:
                stop = self._boundary(piece, boundaries)
                if stop is not None:
                    return bytes(header), stop
                if piece in (b"\r\n", b"\n", b"\r"):
                    return bytes(header), None
                if not _FIELD.match(piece):  # not a header field: the body starts here
                    self._push_back(piece, starts)
                    return bytes(header), None
                if piece[:1] not in (b" ", b"\t"):
                    content_field = piece[:8].lower() == b"content-"
            if len(header) < MAX_HEADER:
                header += piece
                continue
            if content_field:
                mime += len(piece)
                if mime <= MAX_MIME_FIELDS:
                    header += piece
                    continue
                self.out.problem(f"Content-* header fields longer than {MAX_MIME_FIELDS} "
                                 f"bytes past the first {MAX_HEADER}")
            if not header.endswith((b"\n", b"\r")):  # end the line whose rest is dropped
                header += b"\r\n"

    def _multipart(self, boundary: bytes, boundaries: tuple[bytes, ...], depth: int,
                   ctype: str) -> Stop:
        inner = boundaries + (boundary,)
        stop = self._body(inner, _Decoder(), "preamble")
        if (stop is None or stop[0] != boundary) and self.last_file is not None:
            # data but no part: hidden from the splitter (an empty body, as in a TOP n 0
            # reply, hides nothing)
            self.out.problem(f"the boundary of a {ctype} never appears")
        while stop is not None and stop[0] == boundary and not stop[1]:
            stop = self.entity(inner, depth + 1)
        if stop is not None and stop[0] == boundary:  # closed: the epilogue follows
            stop = self._body(boundaries, _Decoder(), "epilogue")
        return stop

    def _body(self, boundaries: tuple[bytes, ...], decoder: _Decoder, name: str) -> Stop:
        out: BinaryIO | None = None
        stop: Stop = None
        self.last_file = None
        try:
            while True:
                piece, starts = self._piece()
                if not piece:
                    break
                if starts:
                    stop = self._boundary(piece, boundaries)
                    if stop is not None:
                        break
                data = decoder.feed(piece)
                if data and (out or not (name in FRAMING and data.isspace())):
                    out = out or self._open(name)
                    out.write(data)
            tail = decoder.flush()
            if tail:
                out = out or self._open(name)
                out.write(tail)
        finally:
            if out is not None:
                out.close()
        return stop

    def _open(self, name: str) -> BinaryIO:
        handle = self.out.open(name)
        self.last_file = self.out.files[-1]
        return handle


def _is_message(headers: Message) -> bool:
    """A message inside: ``message/*`` as the email parser reads it (by the main type, so
    ``message/x-anything`` and a type followed by a comment count too)."""
    subtype = (headers.get_content_subtype().split() or [""])[0]
    return headers.get_content_maintype() == "message" and subtype not in FLAT_MESSAGES


def _encoding(headers: Message) -> str:
    return str(headers.get("Content-Transfer-Encoding", "7bit")).strip().lower() or "7bit"


class _Decoder:
    """Content-Transfer-Encoding decoder fed with pieces of lines; ``error`` says what
    could not be decoded (the data is then incomplete)."""

    error: str | None = None

    def feed(self, piece: bytes) -> bytes:
        return piece

    def flush(self) -> bytes:
        return b""


class _Base64(_Decoder):
    """Ignores characters outside the alphabet (RFC 2045); after padding it goes on with
    the next quantum, so data behind a ``=`` is decoded too (a superset of what readers
    decode).  A quantum that cannot be completed is an error."""

    def __init__(self) -> None:
        self.rest = b""

    def feed(self, piece: bytes) -> bytes:
        data = self.rest + _NOT_BASE64.sub(b"", piece)
        out = bytearray()
        while (match := _PADDED.search(data)) is not None:
            out += self._decode(data[:match.start()], padded=True)
            data = data[match.end():]
        usable = len(data) // 4 * 4
        self.rest = data[usable:]
        out += self._decode(data[:usable], padded=False)
        return bytes(out)

    def flush(self) -> bytes:
        rest, self.rest = self.rest, b""
        return self._decode(rest, padded=True) if rest else b""

    def _decode(self, data: bytes, padded: bool) -> bytes:
        if padded:
            if len(data) % 4 == 1:
                self.error = "base64 with a stray character"
                data = data[:-1]
            data += b"=" * (-len(data) % 4)
        try:
            return binascii.a2b_base64(data)
        except binascii.Error as err:  # pragma: no cover - the input is made valid above
            self.error = f"base64 that does not decode ({err})"
            return b""


class _QuotedPrintable(_Decoder):
    def __init__(self) -> None:
        self.carry = b""

    def feed(self, piece: bytes) -> bytes:
        data = self.carry + piece
        cut = data.rfind(b"=", max(0, len(data) - 2))
        if cut >= 0 and not data.endswith(b"\n"):  # an escape may continue in the next piece
            self.carry, data = data[cut:], data[:cut]
        else:
            self.carry = b""
        return binascii.a2b_qp(data)

    def flush(self) -> bytes:
        carry, self.carry = self.carry, b""
        return binascii.a2b_qp(carry)


class _Uuencode(_Decoder):
    """uuencode between ``begin`` and ``end`` lines (what is around them stays as it is)."""

    def __init__(self) -> None:
        self.state = "before"

    def feed(self, piece: bytes) -> bytes:
        line = piece.rstrip(b"\r\n")
        if self.state == "before" and line.startswith(b"begin"):
            self.state = "inside"
            return b""
        if self.state != "inside":
            return piece
        if line.strip() == b"end":
            self.state = "after"
            return b""
        try:
            return binascii.a2b_uu(line)
        except binascii.Error:
            try:  # as the email parser: some encoders pad lines wrongly
                return binascii.a2b_uu(line[:(((line[0] - 32) & 63) * 4 + 5) // 3])
            except (binascii.Error, IndexError) as err:
                self.error = f"uuencode that does not decode ({err})"
                return piece


def _decoder(encoding: str) -> _Decoder:
    """Unknown encodings are taken as they are, as mail readers do."""
    if encoding == "base64":
        return _Base64()
    if encoding == "quoted-printable":
        return _QuotedPrintable()
    if encoding in UUENCODE:
        return _Uuencode()
    return _Decoder()
