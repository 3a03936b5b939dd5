"""Keep a POP3 client waiting while its message downloads and is scanned (spec §6.4).

The original trickled bytes of the message itself and resumed at an offset, which
corrupted mail in several ways (M1, P6).  Here nothing is sent before the status line;
on the first tick the status line goes out early (without an octet count), then each tick
sends one character of a synthetic header line (``broken``: one whole line).  When the
result is ready that line is ended, and the final message follows from its first byte.
While the scan runs, each tick also sends ``NOOP`` to the server, and exactly one reply per
NOOP is read back afterwards (P8).
"""

from __future__ import annotations

import time

from p3scan.log import LOG
from p3scan.net.stream import PeerClosed, Stream

STATUS = b"+OK p3scan: the message follows once it is scanned\r\n"
TEXT = b"X-P3Scan-Keepalive: waiting for the virus scan "
LINE = b"X-P3Scan: Due to an extremely large attachment you see this message line.\r\n"
FOLD_AT = 76


class KeepAlive:
    """The keep-alive state of one message."""

    def __init__(self, client: Stream, server: Stream, interval: float, broken: bool):
        self.client = client
        self.server = server
        self.interval = interval
        self.broken = broken
        self.started = False
        self.column = 0
        self.sent = 0
        self.noops = 0
        self.next = time.monotonic() + interval

    def due_in(self) -> float:
        return max(0.0, self.next - time.monotonic())

    def tick_if_due(self, scanning: bool) -> None:
        if time.monotonic() >= self.next:
            self.tick(scanning)

    def tick(self, scanning: bool) -> None:
        data = b"" if self.started else STATUS
        self.started = True
        data += LINE if self.broken else self._character()
        self.client.write(data)
        if scanning:
            self.server.write(b"NOOP\r\n")
            self.noops += 1
        LOG.debug("Keep-alive: sent %r to the client%s", data[-1:],
                  ", NOOP to the server" if scanning else "")
        self.next = time.monotonic() + self.interval

    def _character(self) -> bytes:
        if self.column >= FOLD_AT:
            self.column = 1
            return b"\r\n ."  # fold: the header line continues
        char = TEXT[self.sent:self.sent + 1] or b"."
        self.sent += 1
        self.column += 1
        return char

    def end_line(self) -> None:
        """Before the final message: end the synthetic header line."""
        if self.started and not self.broken:
            self.client.write(b"\r\n")

    def absorb_noop_replies(self) -> None:
        """Read exactly one reply per NOOP sent, so none reaches the client."""
        while self.noops:
            reply = self.server.readline()
            if not reply.endswith(b"\n"):
                raise PeerClosed(self.server.name, "closed the connection during the scan")
            if not reply.startswith(b"+OK"):
                LOG.warning("Unexpected reply to a keep-alive NOOP: %r", reply[:80])
            self.noops -= 1
