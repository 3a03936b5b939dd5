"""``eicar``: a built-in scanner that recognises the EICAR test file.

For trying p3scan out and for tests without an anti-virus product: it finds the EICAR
string in the raw message or in any decoded MIME part (base64, quoted-printable, nested
messages).  It knows no real virus.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
import shutil
import tempfile

from p3scan.mail import mimesplit
from p3scan.scan.scanners.base import ScanContext, Scanner, ScanResult

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
NAME = "Eicar-Test-Signature"
CHUNK = 256 * 1024
HEAD = 64 * 1024


def contains_eicar(path: str) -> bool:
    """Whether the file holds the EICAR string (read in chunks, so any size is fine)."""
    overlap = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            if EICAR in overlap + chunk:
                return True
            overlap = chunk[-(len(EICAR) - 1):]
    return False


def needs_decoding(path: str) -> bool:
    """Whether the message may have MIME parts or an encoded body that the raw check
    misses.  Only a plain message whose whole header fits in :data:`HEAD` (and has no bare
    CR, which some readers take for a line end) is taken as it is."""
    with open(path, "rb") as handle:
        head = handle.read(HEAD)
    end = min((i for i in (head.find(b"\n\n"), head.find(b"\n\r\n")) if i >= 0),
              default=-1)
    if end < 0 or re.search(rb"\r(?!\n)", head[:end + 1]):
        return True
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        head[:end])
    values = {name: [str(value) for value in headers.get_all(name, [])]
              for name in ("Content-Type", "Content-Transfer-Encoding")}
    repeated = any(len(found) > 1 or any("=?" in value for value in found)
                   for found in values.values())  # or an encoded-word: the splitter decides
    encoding = str(headers.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    return (repeated or headers.get_content_maintype() in ("multipart", "message")
            or encoding not in ("7bit", "8bit", "binary"))


class Eicar(Scanner):
    name = "eicar"
    description = "Built-in EICAR test-file detector"

    def scan(self, target: str, ctx: ScanContext) -> ScanResult:
        if contains_eicar(target):
            return ScanResult.virus([NAME])
        if not needs_decoding(target):
            return ScanResult.clean()
        parts = tempfile.mkdtemp(prefix="eicar.", dir=ctx.workdir)
        try:
            try:
                files, problem = mimesplit.split(target, parts), None
            except mimesplit.SplitError as err:
                files, problem = err.files, str(err)
            for part in files:
                ctx.remaining()
                if contains_eicar(str(part)):
                    return ScanResult.virus([NAME])
        finally:
            shutil.rmtree(parts, ignore_errors=True)
        return ScanResult.not_checked(problem) if problem else ScanResult.clean()
