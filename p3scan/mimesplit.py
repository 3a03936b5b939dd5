"""Split a message into its MIME parts, one decoded file per part, streaming.

Used by ``demime`` and by the built-in eicar scanner.  The original let ripmime write parts
under their attachment names, so a harmless second attachment named like an infected first
one overwrote it before the scan (spec §9.5, S16).  Here every part gets its own file
``NNN-name``; names are cut down to safe characters, so nothing is written outside the
directory.  The message is read line by line (long lines in pieces) and base64 and
quoted-printable are decoded as they stream, so memory stays bounded whatever the size.
"""

from __future__ import annotations

import binascii
import email.parser
import email.policy
import os
import re
from pathlib import Path
from typing import BinaryIO

PIECE = 64 * 1024
MAX_HEADER = 64 * 1024
MAX_PARTS = 5000
MAX_DEPTH = 20
FRAMING = ("preamble", "epilogue")  # blank lines around a multipart's parts make no file
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

Stop = tuple[bytes, bool] | None  # the boundary that ended a body, and whether it closes


class SplitError(Exception):
    """The message cannot be split within the limits (too many or too deeply nested parts);
    scanning less than the whole message would be unsafe, so this is a scan failure."""


def safe_name(name: str | None, default: str) -> str:
    """A file name that stays inside the directory: base name, safe characters only."""
    base = re.split(r"[/\\]", name or "")[-1]
    cleaned = _UNSAFE.sub("_", base).lstrip(".")[:80]
    return cleaned or default


def split(message: str | os.PathLike, outdir: str | os.PathLike) -> list[Path]:
    """Write every MIME part of ``message`` into ``outdir``; return the files in order."""
    with open(message, "rb") as source:
        splitter = _Splitter(source, Path(outdir))
        splitter.entity((), 0)
    return splitter.files


class _Splitter:
    def __init__(self, source: BinaryIO, outdir: Path):
        self.source = source
        self.outdir = outdir
        self.files: list[Path] = []
        self.line_start = True

    # --- reading ----------------------------------------------------------------------------

    def _piece(self) -> tuple[bytes, bool]:
        """The next line, or piece of a long line, and whether it starts a line."""
        starts = self.line_start
        piece = self.source.readline(PIECE)
        self.line_start = piece.endswith(b"\n")
        return piece, starts

    @staticmethod
    def _boundary(piece: bytes, boundaries: tuple[bytes, ...]) -> Stop:
        if not piece.startswith(b"--"):
            return None
        for boundary in reversed(boundaries):
            if piece.startswith(boundary):
                rest = piece[len(boundary):].strip()
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
        ctype = headers.get_content_type()
        boundary = headers.get_boundary()  # RFC 2231 forms included
        nested = (ctype.startswith("multipart/") and boundary) or ctype == "message/rfc822"
        if nested and depth >= MAX_DEPTH:
            raise SplitError(f"MIME parts nested deeper than {MAX_DEPTH} levels")
        if ctype.startswith("multipart/") and boundary:
            return self._multipart(b"--" + boundary.encode("latin-1", "replace"), boundaries,
                                   depth)
        encoding = str(headers.get("Content-Transfer-Encoding", "7bit")).strip().lower()
        if ctype == "message/rfc822" and encoding in ("7bit", "8bit", "binary"):
            return self.entity(boundaries, depth + 1)
        name = headers.get_filename() or headers.get_param("name")
        default = "textfile" if ctype.startswith("text/") else "part"
        return self._body(boundaries, _decoder(encoding),
                          safe_name(name if isinstance(name, str) else None, default))

    def _header(self, boundaries: tuple[bytes, ...]) -> tuple[bytes, Stop]:
        header = bytearray()
        while True:
            piece, starts = self._piece()
            if not piece:
                return bytes(header), None
            if starts:
                stop = self._boundary(piece, boundaries)
                if stop is not None:
                    return bytes(header), stop
                if piece in (b"\r\n", b"\n"):
                    return bytes(header), None
            if len(header) < MAX_HEADER:
                header += piece

    def _multipart(self, boundary: bytes, boundaries: tuple[bytes, ...], depth: int) -> Stop:
        inner = boundaries + (boundary,)
        stop = self._body(inner, _decoder("7bit"), "preamble")
        while stop is not None and stop[0] == boundary and not stop[1]:
            stop = self.entity(inner, depth + 1)
        if stop is not None and stop[0] == boundary:  # closed: the epilogue follows
            stop = self._body(boundaries, _decoder("7bit"), "epilogue")
        return stop

    def _body(self, boundaries: tuple[bytes, ...], decoder: _Decoder, name: str) -> Stop:
        out: BinaryIO | None = None
        stop: Stop = None
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
        if len(self.files) >= MAX_PARTS:
            raise SplitError(f"more than {MAX_PARTS} MIME parts")
        path = self.outdir / f"{len(self.files):03d}-{name}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.files.append(path)
        return os.fdopen(fd, "wb")


class _Decoder:
    """Content-Transfer-Encoding decoder fed with pieces of lines."""

    def feed(self, piece: bytes) -> bytes:
        return piece

    def flush(self) -> bytes:
        return b""


class _Base64(_Decoder):
    def __init__(self) -> None:
        self.rest = b""

    def feed(self, piece: bytes) -> bytes:
        data = self.rest + _NOT_BASE64.sub(b"", piece)
        usable = len(data) // 4 * 4
        self.rest = data[usable:]
        try:
            return binascii.a2b_base64(data[:usable])
        except binascii.Error:
            return b""

    def flush(self) -> bytes:
        rest, self.rest = self.rest, b""
        try:
            return binascii.a2b_base64(rest + b"=" * (-len(rest) % 4)) if rest else b""
        except binascii.Error:
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


def _decoder(encoding: str) -> _Decoder:
    if encoding == "base64":
        return _Base64()
    if encoding == "quoted-printable":
        return _QuotedPrintable()
    return _Decoder()
