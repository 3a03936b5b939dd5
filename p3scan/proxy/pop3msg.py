"""One intercepted RETR (or TOP) reply: spool it, scan it, answer the client.

A clean message goes back dot-stuffed exactly as the server sent it, with the X-P3Scan
header inserted where the header ends; the status line is the server's, with the octet
count corrected.  An infected one is quarantined (fsync'd) before the client gets the
notification in its place.  When the scan fails, ``scanerror`` decides (and ``unchecked``
when the message could not be checked completely): ``tempfail`` answers ``-ERR
[SYS/TEMP]`` (RFC 3206) and leaves the message on the server, ``pass`` delivers it marked
unscanned, ``reject`` treats it like a virus.  Once keep-alive bytes have
gone out no error reply is possible, so the connection is closed without the final ``.``:
a client never takes a truncated message for a complete one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from p3scan import heartbeat
from p3scan.log import LOG
from p3scan.mail.codec import send_stuffed
from p3scan.mail.context import MessageContext
from p3scan.mail.spool import Intake, Spool
from p3scan.net.stream import PeerClosed, receive_block, wait_readable
from p3scan.proxy.keepalive import KeepAlive
from p3scan.proxy.session import AbortSession, IdleTimeout, Session
from p3scan.scan.outcome import Deliver, Outcome, Policy, Replace, Tempfail, decide
from p3scan.scan.pipeline import ERROR, Verdict
from p3scan.scan.scanning import QuarantineError

OCTETS = re.compile(rb"^(\+OK\s+)(\d+)(\s.*)?(\r?\n)$", re.IGNORECASE | re.DOTALL)


def status_with_size(status: bytes, size: int | None = None, added: int = 0) -> bytes:
    """The server's ``+OK <n> octets`` with ``n`` set to ``size``, or increased by ``added``
    (the bytes p3scan inserted, so the server's own way of counting is kept)."""
    match = OCTETS.match(status)
    if not match:
        return status
    count = size if size is not None else int(match.group(2)) + added
    return match.group(1) + str(count).encode() + (match.group(3) or b"") + match.group(4)


class Retrieval:
    """The reply to one RETR/TOP whose status line was ``+OK``."""

    def __init__(self, session: Session, status: bytes, number: str):
        self.session = session
        self.cfg = session.cfg
        self.client = session.client
        self.server = session.server
        self.scanning = session.scanning
        self.status = status
        self.number = number
        self.keepalive = KeepAlive(self.client, self.server, self.cfg.timeout, self.cfg.broken)
        self.last_data = 0.0  # when the server last sent part of the message

    def run(self) -> None:
        spool = self.scanning.spool()
        try:
            verdict = self._download(spool)
            spool.close()
            ctx = self.session.message_context(spool, self.number)
            if verdict is None:
                verdict = self._scan(ctx)
            self.keepalive.absorb_noop_replies()
            self.scanning.log_verdict("POP3", ctx, verdict)
            self._answer(ctx, decide(verdict, Policy.from_config(self.cfg, "POP3")))
        except PeerClosed as err:
            if err.side == self.server.name and not (self.keepalive.started or
                                                     self.session.answered):
                self.client.write(f"-ERR [SYS/TEMP] p3scan: the server {err.detail} during "
                                  f"the download\r\n".encode())
            self.session.answered = True
            raise
        except BaseException:
            if self.keepalive.started:  # an error reply would land inside the message
                self.session.answered = True
            raise
        finally:
            spool.remove()

    # --- download ---------------------------------------------------------------------------

    def _download(self, spool: Spool) -> Verdict | None:
        """Stream the reply into the spool; a verdict only if the spool filled up."""
        intake = Intake(spool)
        self.last_data = time.monotonic()
        receive_block(self.server, intake, beat=self._beat, wait=self._await_server,
                      after_feed=lambda: self.keepalive.tick_if_due(scanning=False))
        return Verdict.spool_failed(intake.problem) if intake.problem else None

    def _await_server(self) -> bool:
        """Wait for the server until the next keep-alive tick: True once it has sent
        something, else tick (and give up after ``idletimeout`` of silence)."""
        wait = min(self.keepalive.due_in(), self.cfg.idletimeout)
        if wait_readable([self.server], wait):
            self.last_data = time.monotonic()
            return True
        if time.monotonic() - self.last_data >= self.cfg.idletimeout:
            raise IdleTimeout()
        self.keepalive.tick_if_due(scanning=False)
        return False

    def _beat(self) -> None:
        heartbeat.beat(self.session.info, self.number)

    # --- scan -------------------------------------------------------------------------------

    def _scan(self, ctx: MessageContext) -> Verdict:
        running = self.scanning.start(ctx)
        while True:
            heartbeat.beat(self.session.info, self.number)
            wait = min(self.keepalive.due_in(), max(0.05, running.time_left()))
            verdict = running.wait(wait)
            if verdict is not None:
                return verdict
            self.keepalive.tick_if_due(scanning=True)

    # --- answer -----------------------------------------------------------------------------

    def _answer(self, ctx: MessageContext, outcome: Outcome) -> None:
        """Say the outcome in POP3: the message, a notification, or -ERR."""
        verdict = outcome.verdict
        if isinstance(outcome, Deliver):
            if verdict.status != "clean":
                LOG.warning("Delivering POP3 message %s %s (%s = pass): %s", self.number,
                            verdict.undone.replace("not ", "un"), verdict.option,
                            verdict.reason)
            self._deliver(ctx.spool, outcome.headers[0])
        elif isinstance(outcome, Replace):
            self._replace(ctx, verdict)
        elif isinstance(outcome, Tempfail):
            self._tempfail(verdict)
        else:  # pragma: no cover - decide() gives POP3 no Refuse
            raise AssertionError(outcome)

    def _tempfail(self, verdict: Verdict) -> None:
        LOG.error("ERR: POP3 message %s not delivered, %s: %s (the message stays "
                  "on the server)", self.number, verdict.cause, verdict.reason)
        if self.keepalive.started:
            raise AbortSession(f"the message {verdict.failure} after keep-alive began; "
                               "closing without '.'")
        self.session.answered = True
        self.client.write(f"-ERR [SYS/TEMP] p3scan: message {self.number} {verdict.failure} "
                          f"({verdict.reason}); try again later\r\n"
                          .encode("utf-8", "replace"))

    def _deliver(self, spool: Spool, header: bytes) -> None:
        """The spooled message with ``header`` inserted at the end of its header block.
        The server counted the message as it came in (``original_size``): its count
        changes by what p3scan inserted or rewrote."""
        direct = spool.wire_parts(header)
        if direct is None:
            size, chunks = spool.with_header(header)
            added = size - spool.original_size
            self._send(status_with_size(self.status, added=added), size, chunks)
            return
        size, parts = direct  # no dot lines: the file is its own wire form
        status = status_with_size(self.status, added=size - spool.original_size)
        if self.keepalive.started:
            self.keepalive.end_line()
            status = b""
        end = b".\r\n" if spool.ends_line else b"\r\n.\r\n"
        self.session.answered = True
        self.client.send_parts(spool.path, [status, *parts, end])
        self.session.info.bytes += size

    def _replace(self, ctx: MessageContext, verdict: Verdict) -> None:
        """Quarantine (durable first), then the notification in the message's place."""
        try:
            kept = self.scanning.quarantine(ctx, verdict)
        except QuarantineError as err:  # no copy kept: the message stays on the server
            self._tempfail(Verdict(ERROR, reason=f"{verdict.text}; {err}"))
            return
        self.scanning.log_virus(ctx, verdict, kept)
        notice = self.scanning.notification(ctx, verdict, kept)
        self._send(status_with_size(self.status, len(notice)), len(notice), iter([notice]))

    def _send(self, status: bytes, size: int, chunks: Iterator[bytes]) -> None:
        """The status line (or, after keep-alive, the end of its line), then the data."""
        self.session.answered = True
        if self.keepalive.started:
            self.keepalive.end_line()
            status = b""
        send_stuffed(self.client.write, chunks, status)
        self.session.info.bytes += size

