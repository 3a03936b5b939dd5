"""Logging to syslog (ident ``p3scan``, facility ``daemon`` by default) and to stderr.

The original sent every line at priority NOTICE; here each level has its real priority, with
Python's INFO mapped to syslog ``notice`` so that the lines the original logged at NOTICE
still arrive there.  ``quiet`` drops those notices (except lines marked ``force``), ``debug``
adds debug lines and logs to stderr in the foreground as ``HH:MM:SS p3scan[pid]: text``.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from typing import TextIO

from p3scan.config.settings import Settings

LOG = logging.getLogger("p3scan")
IDENT = "p3scan"

FACILITY_CODES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
PRIORITIES = {
    logging.DEBUG: 7, logging.INFO: 5, logging.WARNING: 4, logging.ERROR: 3,
    logging.CRITICAL: 2,
}
FORCE = {"force": True}
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class SyslogHandler(logging.Handler):
    """Send records to a local syslog socket; tolerate it being absent or restarted."""

    def __init__(self, address: str, facility: str):
        super().__init__()
        self.address = address
        self.facility = FACILITY_CODES[facility]
        self.sock: socket.socket | None = None
        self.dropped = 0

    def _connect(self) -> socket.socket:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(socket.AF_UNIX, kind)
            try:
                sock.connect(self.address)
                sock.setblocking(False)  # a stuck syslogd must never stall a mail session
                return sock
            except OSError:
                sock.close()
        raise OSError(f"cannot connect to syslog socket {self.address}")

    def available(self) -> bool:
        try:
            self.sock = self.sock or self._connect()
            return True
        except OSError:
            return False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(self._packet(record))
        except Exception:  # logging must never break the proxy
            self.handleError(record)

    def _packet(self, record: logging.LogRecord) -> bytes:
        pri = self.facility * 8 + PRIORITIES.get(record.levelno, 5)
        now = time.localtime(record.created)
        stamp = f"{MONTHS[now.tm_mon - 1]} {now.tm_mday:2d} {time.strftime('%H:%M:%S', now)}"
        text = record.getMessage().replace("\n", " ")[:4000]
        return f"<{pri}>{stamp} {IDENT}[{record.process}]: {text}".encode("utf-8", "replace")

    def _send(self, packet: bytes) -> None:
        """Send without blocking; a line syslog cannot take now is dropped and counted."""
        for _attempt in range(2):
            try:
                self.sock = self.sock or self._connect()
                if self.dropped:
                    self._transmit(self._dropped_notice())
                    self.dropped = 0
                self._transmit(packet)
                return
            except BlockingIOError:
                self.dropped += 1
                return
            except OSError:
                self.close_socket()
        self.dropped += 1

    def _transmit(self, packet: bytes) -> None:
        assert self.sock is not None
        if self.sock.type == socket.SOCK_STREAM:
            self.sock.sendall(packet + b"\0")
        else:
            self.sock.send(packet)

    def _dropped_notice(self) -> bytes:
        record = logging.LogRecord("p3scan", logging.WARNING, __file__, 0,
                                   "%d log lines were dropped: syslog did not accept them",
                                   (self.dropped,), None)
        return self._packet(record)

    def close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging API
        self.close_socket()

    def close(self) -> None:
        self.close_socket()
        super().close()


class _QuietFilter(logging.Filter):
    """With ``quiet``, drop notices (INFO) unless they are marked ``force``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.INFO or bool(getattr(record, "force", False))


def close_handlers() -> None:
    """Close every handler (before daemonising closes their file descriptors under them)."""
    for handler in list(LOG.handlers):
        LOG.removeHandler(handler)
        handler.close()


def setup(cfg: Settings, *, stderr: bool, stream: TextIO | None = None) -> list[str]:
    """(Re)configure the ``p3scan`` logger; return warnings worth telling the operator."""
    warnings: list[str] = []
    close_handlers()
    LOG.setLevel(logging.DEBUG if cfg.debug else logging.INFO)
    LOG.propagate = False
    handlers: list[logging.Handler] = []
    if not cfg.debug:
        syslog = SyslogHandler(cfg.syslogsocket, cfg.facility)
        if not syslog.available():
            warnings.append(f"syslog socket {cfg.syslogsocket} is not available; "
                            "log lines are dropped until it appears")
        handlers.append(syslog)
    if stderr or cfg.debug:
        console = logging.StreamHandler(stream or sys.stderr)
        console.setFormatter(logging.Formatter(
            f"%(asctime)s {IDENT}[%(process)d]: %(message)s", datefmt="%H:%M:%S"))
        handlers.append(console)
    for handler in handlers:
        if cfg.quiet and not cfg.debug:
            handler.addFilter(_QuietFilter())
        LOG.addHandler(handler)
    return warnings
