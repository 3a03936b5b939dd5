"""The footer that clean outgoing SMTP mail may get (``footerfile``, spec §7.5).

When ``footerfile`` exists, this block is appended to the message:

    **********
    <the lines of footerfile>
    P3Scan <version> running on <host>.<domain>
    <the output lines of the ``footer`` command, if it is set>
    **********

The original decided with a case-sensitive ``Content-Type: `` prefix test on any line, so
a multipart message with a lowercase header got the footer after its closing boundary, and
unset values showed as ``(null)``.  Here the top-level Content-Type is parsed properly: the
footer goes only to plain text (text/plain, 7bit or 8bit) that is not PGP-signed inline;
multipart (including multipart/signed), encoded and non-text messages are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator

from p3scan import PROGNAME, __version__
from p3scan.config.settings import Settings
from p3scan.mail import notify
from p3scan.mail.spool import Spool

STARS = b"**********"
PGP_SIGNED = b"-----BEGIN PGP SIGNED MESSAGE-----"
MAX_FOOTER = 64 * 1024


def applies(spool: Spool) -> bool:
    """Whether a footer may be appended without changing what the message means."""
    headers = spool.headers()
    encoding = str(headers.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if headers.get_content_type() != "text/plain" or encoding not in ("7bit", "8bit"):
        return False
    return not _contains(spool, PGP_SIGNED)


def _contains(spool: Spool, needle: bytes) -> bool:
    overlap = b""
    for chunk in spool.chunks():
        if needle in overlap + chunk:
            return True
        overlap = chunk[-(len(needle) - 1):]
    return False


def block(cfg: Settings, spool: Spool, values: dict[str, str | None],
          vdinfo_lines: list[bytes]) -> bytes:
    """The footer block for this message, or b"" when there is none or it does not apply."""
    try:
        with open(cfg.footerfile, "rb") as handle:
            text = handle.read(MAX_FOOTER)
    except OSError:
        return b""
    if not applies(spool):
        return b""
    host = f"{values.get('HOSTNAME') or notify.hostname()}.{notify.domainname()}"
    lines = [STARS, *text.replace(b"\r\n", b"\n").splitlines(),
             f"{PROGNAME} {__version__} running on {host}".encode(),
             *(vdinfo_lines if cfg.footer else []), STARS]
    eol = spool.header_eol
    return b"".join(line + eol for line in lines)


def appended(chunks: Iterator[bytes], spool: Spool, tail: bytes) -> Iterator[bytes]:
    """The message's chunks, then (after a line end if it lacks one) the footer block."""
    last = b""
    for chunk in chunks:
        last = chunk or last
        yield chunk
    if last and not last.endswith(b"\n"):
        yield spool.header_eol
    yield tail
