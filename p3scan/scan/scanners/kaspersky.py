"""``avpd`` and ``avpd_new``: Kaspersky's AVP daemon 4 (``AvpCtl``) and KAV 5 (``aveserver``).

The products are long gone; these speak the wire protocols of spec §10.5-10.6.  Fixes:
KAV 4 lengths are 4-byte little-endian (the original read 8 bytes on 64-bit builds), and
only code 0 is clean: the original delivered mail on "scan incomplete", "warning" and
"corrupted" replies (S15).
"""

from __future__ import annotations

import os
import socket
import struct
import time

from p3scan.config.settings import Settings
from p3scan.scan.scanners.base import (
    DaemonReply,
    ScanContext,
    Scanner,
    ScannerError,
    ScanResult,
    connect,
)

DEFAULT_DIR = "/var/run"
INFECTED_CODES = {3, 4, 5, 6}  # suspicious, known virus, disinfected, deleted
CODE_TEXT = {1: "scan was not complete", 2: "warning", 7: "AvpScanner is corrupted",
             8: "corrupted objects were found", 15: "the daemon wants to disinfect"}
MAX_TEXT = 64 * 1024  # a report line or text names a file and its viruses; more is kept out
AVP4_MAX_REPLY = MAX_TEXT + 10  # code, flags, info, length and the (cut) text
KAV5_MAX_REPLY = 1024 * 1024  # a status line per scanned object; no mail has that many


def _connect(path: str, ctx: ScanContext) -> socket.socket:
    return connect(socket.AF_UNIX, path, ctx.remaining(), path)


def virus_name(text: str, path: str) -> str:
    """``<path> infected: EICAR-Test-File`` becomes ``EICAR-Test-File``."""
    if text.startswith(path):
        text = text[len(path):]
    text = text.strip()
    word, colon, rest = text.partition(":")
    if colon and word.isalnum():
        text = rest
    return text.strip()


def scan_avp4(socket_path: str, target: str, ctx: ScanContext) -> ScanResult:
    """One request to AvpCtl: ``<0>MMM DD HH:MM:SS:<path>\\0``."""
    stamp = time.ctime()[4:19].encode()
    with _connect(socket_path, ctx) as sock:
        sock.sendall(b"<0>" + stamp + b":" + os.fsencode(target) + b"\0")
        reply = DaemonReply(sock, f"AvpCtl at {socket_path}", ctx.deadline, AVP4_MAX_REPLY)
        head = reply.exact(2)
        code, flags = head[0] - ord("0"), head[1]
        if flags & 0x02:
            reply.exact(4)
        text = ""
        if flags & 0x01:
            length = struct.unpack("<I", reply.exact(4))[0]
            text = reply.exact(min(length, MAX_TEXT)).decode("latin-1").rstrip("\0")
    if code in INFECTED_CODES:
        return ScanResult.virus([virus_name(text, target)] if text.strip() else [])
    if code == 0:
        return ScanResult.clean()
    return ScanResult.failed(f"AvpCtl answered code {code}: {CODE_TEXT.get(code, 'unknown')}")


def scan_kav5(socket_path: str, target: str, ctx: ScanContext) -> ScanResult:
    """One request to aveserver: ``SCAN xmQPRSTUWabcdefghi <path>\\r\\n\\0``."""
    with _connect(socket_path, ctx) as sock:
        sock.settimeout(min(1.0, ctx.remaining()))
        try:
            sock.recv(4096)  # the greeting, if any, is discarded
        except TimeoutError:
            pass
        sock.settimeout(ctx.remaining())
        sock.sendall(b"SCAN xmQPRSTUWabcdefghi " + os.fsencode(target) + b"\r\n\0")
        reply = DaemonReply(sock, f"aveserver at {socket_path}", ctx.deadline, KAV5_MAX_REPLY)
        while True:
            line = reply.until(b"\r\n")
            if not line.endswith(b"\r\n"):
                raise ScannerError("aveserver closed the connection without a result")
            if len(line) > MAX_TEXT:
                raise ScannerError("aveserver sent an overlong reply line")
            text = line[:-2].decode("latin-1")
            if len(text) > 2 and text[2] == "2":
                return ScanResult.virus([text[4:].strip()])
            if text[3:4] == " ":
                if text.startswith("2"):
                    return ScanResult.clean()
                return ScanResult.failed(f"aveserver replied {text!r}")


class Avpd(Scanner):
    name = "avpd"
    description = "Kaspersky AVPDaemon"

    def __init__(self, cfg: Settings):
        super().__init__(cfg)
        self.socket = os.path.join(cfg.scanner or DEFAULT_DIR, "AvpCtl")

    def check(self) -> str | None:
        return None if os.path.exists(self.socket) else f"{self.socket} does not exist"

    def scan(self, target: str, ctx: ScanContext) -> ScanResult:
        return scan_avp4(self.socket, target, ctx)


class AvpdNew(Scanner):
    """KAV 4 if ``<dir>/AvpCtl`` exists, else KAV 5 through ``<dir>/aveserver``."""

    name = "avpd_new"
    description = "Kaspersky Anti-Virus 5.x Daemon"

    def __init__(self, cfg: Settings):
        super().__init__(cfg)
        self.directory = cfg.scanner or DEFAULT_DIR

    def check(self) -> str | None:
        if any(os.path.exists(os.path.join(self.directory, name))
               for name in ("AvpCtl", "aveserver")):
            return None
        return f"no KAV daemon socket (AvpCtl or aveserver) in {self.directory}"

    def scan(self, target: str, ctx: ScanContext) -> ScanResult:
        avpctl = os.path.join(self.directory, "AvpCtl")
        if os.path.exists(avpctl):
            return scan_avp4(avpctl, target, ctx)
        return scan_kav5(os.path.join(self.directory, "aveserver"), target, ctx)
