"""``trophie``: the Trophie daemon for Trend Micro's engine (spec §10.7).

Request: the file path and LF.  Reply: ``1 <name>`` is a virus, ``0`` is clean; ``-1`` and
anything unexpected are failures (the original delivered on unexpected replies).
"""

from __future__ import annotations

import os
import socket

from p3scan.config.settings import Settings
from p3scan.scan.scanners.base import (
    DaemonReply,
    ScanContext,
    Scanner,
    ScannerError,
    ScanResult,
    connect,
)

DEFAULT_SOCKET = "/var/run/trophie"
MAX_REPLY = 512  # one line: a code and perhaps a virus name


class Trophie(Scanner):
    name = "trophie"
    description = "Trophie antivirus daemon (for Trend Antivirus)"

    def __init__(self, cfg: Settings):
        super().__init__(cfg)
        self.socket = cfg.scanner or DEFAULT_SOCKET

    def check(self) -> str | None:
        return None if os.path.exists(self.socket) else f"{self.socket} does not exist"

    def scan(self, target: str, ctx: ScanContext) -> ScanResult:
        label = f"trophie at {self.socket}"
        sock = connect(socket.AF_UNIX, self.socket, ctx.remaining(), label)
        try:
            sock.sendall(os.fsencode(target) + b"\n")
            reply = DaemonReply(sock, label, ctx.deadline, MAX_REPLY).until(b"\n")
        except OSError as err:
            raise ScannerError(f"trophie at {self.socket}: {err.strerror or err}") from None
        finally:
            sock.close()
        text = reply.split(b"\n", 1)[0].decode("latin-1").strip()
        if text.startswith("1"):
            return ScanResult.virus([text[2:].strip()])
        if text == "0":
            return ScanResult.clean()
        if text.startswith("-1"):
            return ScanResult.failed(f"trophie could not scan {target}")
        return ScanResult.failed(f"trophie replied {text!r}")
