"""``eicar``: a built-in scanner that recognises the EICAR test file.

For trying p3scan out and for tests without an anti-virus product: it finds the EICAR
string in the raw message or in any decoded MIME part (base64, quoted-printable, nested
messages).  It knows no real virus.
"""

from __future__ import annotations

import email.parser
import email.policy
import shutil
import tempfile

from p3scan import mimesplit
from p3scan.scanners.base import ScanContext, Scanner, ScanResult

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
    """Whether the message has MIME parts or an encoded body that the raw check misses."""
    with open(path, "rb") as handle:
        head = handle.read(HEAD)
    end = min((i for i in (head.find(b"\n\n"), head.find(b"\n\r\n")) if i >= 0),
              default=len(head))
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        head[:end])
    encoding = str(headers.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    return headers.get_content_maintype() in ("multipart", "message") or encoding not in (
        "7bit", "8bit", "binary")


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
            for part in mimesplit.split(target, parts):
                ctx.remaining()
                if contains_eicar(str(part)):
                    return ScanResult.virus([NAME])
        except mimesplit.SplitError as err:
            return ScanResult.failed(str(err))
        finally:
            shutil.rmtree(parts, ignore_errors=True)
        return ScanResult.clean()
