"""``clamd``: the ClamAV daemon over TCP (``host:port``) or a Unix socket (a path).

The original spoke the retired STREAM command and took clamd's ``UNKNOWN COMMAND`` for
"clean" (spec §10.4).  This uses zINSTREAM (4-byte big-endian chunk lengths, a zero-length
end) and accepts only ``stream: OK`` as clean; any other reply is a scanner failure.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from typing import Any

from p3scan.config import checks
from p3scan.config.settings import Settings
from p3scan.scan.scanners.base import (
    DaemonReply,
    ScanContext,
    Scanner,
    ScannerError,
    ScanResult,
    connect,
)

DEFAULT = "127.0.0.1:3310"
CHUNK = 64 * 1024
MAX_REPLY = 8192  # clamd answers one line: a status and perhaps a virus name
FOUND = re.compile(r"^stream: (.+) FOUND$")


def parse_address(spec: str) -> tuple[int, Any]:
    """``/path/clamd.ctl`` (or ``unix:/path``) or ``host:port`` / ``[v6]:port``."""
    try:
        return checks.daemon_address(spec)
    except checks.Invalid:
        raise ScannerError(f"clamd address {spec!r} is neither host:port nor a socket "
                           "path") from None


class Clamd(Scanner):
    name = "clamd"
    description = "ClamAV daemon (INSTREAM)"

    def __init__(self, cfg: Settings):
        super().__init__(cfg)
        self.spec = cfg.scanner or DEFAULT
        self.family, self.address = parse_address(self.spec)

    def _connect(self, timeout: float) -> socket.socket:
        return connect(self.family, self.address, timeout, f"clamd at {self.spec}")

    def _command(self, command: bytes, timeout: float = 5.0) -> str:
        with self._connect(timeout) as sock:
            sock.sendall(command)
            return _reply(sock, self.spec, time.monotonic() + timeout)

    def check(self) -> str | None:
        try:
            reply = self._command(b"zPING\0")
        except (ScannerError, OSError) as err:
            return f"clamd does not answer: {err}; mail is refused for now (scanerror)"
        return None if reply == "PONG" else f"clamd answered PING with {reply!r}"

    def version(self) -> str | None:
        try:
            return self._command(b"zVERSION\0") or None
        except (ScannerError, OSError):
            return None

    def scan(self, target: str, ctx: ScanContext) -> ScanResult:
        try:
            with self._connect(ctx.remaining()) as sock, open(target, "rb") as source:
                try:
                    _instream(source, sock, ctx)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # clamd stopped reading (size limit); its reply says why
                reply = _reply(sock, self.spec, ctx.deadline)
        except TimeoutError:
            return ScanResult.failed(f"clamd at {self.spec} timed out")
        except OSError as err:
            return ScanResult.failed(f"clamd at {self.spec}: {err.strerror or err}")
        return interpret(reply)


def _instream(source, sock: socket.socket, ctx: ScanContext) -> None:
    """Send ``zINSTREAM`` and the file as chunks; the command rides on the first chunk and
    the end marker on the last, so that no small write waits for an ACK."""
    pending = b"zINSTREAM\0"
    chunk = source.read(CHUNK)
    while chunk:
        following = source.read(CHUNK)
        piece = pending + struct.pack("!L", len(chunk)) + chunk
        pending = b""
        sock.settimeout(ctx.remaining())
        sock.sendall(piece if following else piece + struct.pack("!L", 0))
        chunk = following
    if pending:  # an empty file
        sock.sendall(pending + struct.pack("!L", 0))


def interpret(reply: str) -> ScanResult:
    if reply == "stream: OK":
        return ScanResult.clean()
    match = FOUND.match(reply)
    if match:
        return ScanResult.virus([match.group(1)])
    return ScanResult.failed(f"clamd replied {reply!r}")


def _reply(sock: socket.socket, spec: str, deadline: float) -> str:
    """One NUL-terminated reply (or what came before clamd closed), bounded."""
    data = DaemonReply(sock, f"clamd at {spec}", deadline, MAX_REPLY).until(b"\0")
    return data.rstrip(b"\0\n").decode("utf-8", "replace")
