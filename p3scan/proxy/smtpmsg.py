"""One intercepted SMTP DATA: spool the message, scan it, then relay it or refuse it.

The client gets p3scan's own 354; the server hears nothing of the message until the scan is
done.  Clean: DATA goes to the server, the message follows with the X-P3Scan header (and
the footer, spec §7.5), and the server's final reply is relayed.  Infected: ``554
<smtprset>``, the message is quarantined with its envelope, and the server's transaction is
reset, so the client can go on with the next message.  Scan failure: ``scanerror``
(``tempfail``: ``451 4.3.0``, nothing sent); a message that could not be checked
completely: ``unchecked`` (by default ``reject``: ``554 5.7.0``).  If the server goes away
in the middle, the client gets a 4xx, never a 250.
"""

from __future__ import annotations

import re
from typing import Protocol

from p3scan import PROGNAME, __version__, heartbeat
from p3scan.config.settings import Settings
from p3scan.log import LOG
from p3scan.mail import context, footer
from p3scan.mail.codec import send_stuffed
from p3scan.mail.context import MessageContext
from p3scan.mail.spool import Intake, Spool
from p3scan.net.stream import PeerClosed, Stream, receive_block
from p3scan.proxy.session import SessionInfo
from p3scan.scan.outcome import Deliver, Outcome, Policy, Refuse, Tempfail, decide
from p3scan.scan.pipeline import CLEAN, Verdict
from p3scan.scan.scanning import QuarantineError, Scanning

SIZE = re.compile(r"\bSIZE=(\d+)", re.IGNORECASE)
SMUGGLED_END = re.compile(rb"\r\.[\r\n]")


class Envelope(context.Envelope):
    """The current transaction, as the SMTP commands build it."""

    def record_mail(self, arg: str) -> None:
        self.reset()
        self.mail_from = parse_address(arg, "FROM:")
        match = SIZE.search(arg)
        self.size = int(match.group(1)) if match else None

    def snapshot(self) -> context.Envelope:
        """A copy for the message's context (the transaction is reset afterwards)."""
        return context.Envelope(self.helo, self.mail_from, list(self.rcpt_to), self.size)


class SmtpLink(Protocol):
    """What a submission needs of its SMTP session: a protocol, so that this module does
    not import p3scan.proxy.smtp (which imports this one)."""

    cfg: Settings
    client: Stream
    server: Stream
    scanning: Scanning
    info: SessionInfo
    envelope: Envelope
    answered: bool
    awaiting_server: bool

    def forward(self, line: bytes) -> None: ...

    def check_server_silent(self) -> None: ...

    def read_reply(self, intermediate: int = 0) -> list[bytes]: ...

    def message_context(self, spool: Spool, number: str,
                        envelope: context.Envelope | None = None) -> MessageContext: ...


def smuggles(spool: Spool) -> bool:
    """Whether the message holds a bare CR before a dot line (``\\r.\\r\\n``): p3scan
    relays it as data, but a server that takes a bare CR for a line end would see the end
    of the data there, and the rest as new commands and mail nobody scanned (SMTP
    smuggling, 2023)."""
    tail = b""
    for chunk in spool.chunks():
        if SMUGGLED_END.search(tail + chunk):
            return True
        tail = chunk[-2:]
    return False


def parse_address(arg: str, prefix: str) -> str:
    """``FROM:<a@b> SIZE=1`` becomes ``a@b``."""
    text = arg[len(prefix):] if arg.upper().startswith(prefix) else arg
    text = text.strip()
    if text.startswith("<"):
        return text[1:text.find(">")] if ">" in text else text[1:]
    return text.split(" ")[0]


class Submission:
    """The DATA of one transaction with at least one accepted recipient."""

    def __init__(self, session: SmtpLink):
        self.session = session
        self.cfg = session.cfg
        self.client = session.client
        self.server = session.server
        self.scanning = session.scanning
        self.envelope = session.envelope
        self.number = str(session.info.messages)

    def run(self) -> None:
        self.client.write(f"354 {PROGNAME} {__version__} accepting data.\r\n".encode())
        spool = self.scanning.spool()
        try:
            verdict = self._receive(spool)
            self.session.awaiting_server = True  # the client waits for the final reply
            spool.close()
            if verdict is None and smuggles(spool):
                self._refuse_smuggling()
                return
            ctx = self.session.message_context(spool, self.number, self.envelope.snapshot())
            if verdict is None:
                verdict = self.scanning.scan(ctx)
            self.scanning.log_verdict("SMTP", ctx, verdict,
                                      f", from <{self.envelope.mail_from}> to "
                                      f"<{'>, <'.join(self.envelope.rcpt_to)}>")
            self._answer(ctx, decide(verdict, Policy.from_config(self.cfg, "SMTP")))
        finally:
            spool.remove()

    def _refuse_smuggling(self) -> None:
        LOG.warning("SMTP message %s refused: a bare CR before a dot line (a server that "
                    "ends data there would take what follows for unscanned mail)", self.number)
        self._reset_server()
        self.client.write(b"554 5.5.2 p3scan: bare CR before a dot line; message refused\r\n")

    # --- the message from the client ------------------------------------------------------

    def _receive(self, spool: Spool) -> Verdict | None:
        """Spool the client's data up to its final ``.``; a verdict if the spool filled.
        (Reads wait at most ``idletimeout``: the socket's timeout.)"""
        intake = Intake(spool)
        receive_block(self.client, intake,
                      beat=lambda: heartbeat.beat(self.session.info, self.number),
                      closed="closed the connection during DATA")
        return Verdict.spool_failed(intake.problem) if intake.problem else None

    # --- the answer -----------------------------------------------------------------------

    def _answer(self, ctx: MessageContext, outcome: Outcome) -> None:
        """Say the outcome in SMTP: relay the message, or refuse it (554 or 451)."""
        verdict = outcome.verdict
        if isinstance(outcome, Deliver):
            headers = list(outcome.headers)
            if verdict.status == CLEAN:
                headers += self._vdinfo_headers()
            else:
                LOG.warning("Relaying SMTP message %s %s (%s = pass): %s", self.number,
                            verdict.undone.replace("not ", "un"), verdict.option,
                            verdict.reason)
            self._relay(ctx, headers)
        elif isinstance(outcome, Refuse):
            self._refuse(ctx, verdict, outcome.reply)
        elif isinstance(outcome, Tempfail):
            LOG.error("ERR: SMTP message %s refused for now, %s: %s",
                      self.number, verdict.cause, verdict.reason)
            self._reset_server()
            self.client.write(f"451 4.3.0 p3scan: the message {verdict.failure} "
                              f"({verdict.reason}); try again later\r\n"
                              .encode("utf-8", "replace"))
        else:  # pragma: no cover - decide() gives SMTP no Replace
            raise AssertionError(outcome)

    def _vdinfo_headers(self) -> list[bytes]:
        if self.cfg.footer and self.scanning.vdinfo_lines:
            return [b"X-P3Scan: " + line for line in self.scanning.vdinfo_lines]
        return []

    def _refuse(self, ctx: MessageContext, verdict: Verdict, reply: str) -> None:
        """Quarantine (durable first), then refuse; 451 if it could not be kept."""
        kept = None
        try:
            kept = self.scanning.quarantine(ctx, verdict)
        except QuarantineError as err:  # no copy kept: the client must try again
            reply = f"451 4.3.0 p3scan: {verdict.text}; {err}; try again later"
        self.scanning.log_virus(ctx, verdict, kept)
        LOG.warning("%s", reply)
        self._reset_server()
        self.client.write(reply.encode("utf-8", "replace") + b"\r\n")

    def _reset_server(self) -> None:
        """The server saw MAIL and RCPT but no DATA: RSET, so that nothing stays pending."""
        self.session.forward(b"RSET\r\n")
        self.session.read_reply()
        self.envelope.reset()

    def _relay(self, ctx: MessageContext, headers: list[bytes]) -> None:
        """DATA to the server, then (on 354) the message; relay the server's verdict."""
        spool = ctx.spool
        self.session.forward(b"DATA\r\n")
        reply = self.session.read_reply(intermediate=354)
        if not reply[0].startswith(b"354"):
            self.client.write(b"".join(reply))
            self.envelope.reset()
            return
        self.session.check_server_silent()  # a "250" sent along with the 354 is a lie
        header = spool.header_eol.join(headers)
        tail = footer.block(self.cfg, spool, ctx.values, self.scanning.vdinfo_lines)
        direct = None if tail else spool.wire_parts(header)
        try:
            if direct:  # no dot lines: the file is its own wire form
                size, parts = direct
                end = b".\r\n" if spool.ends_line else b"\r\n.\r\n"
                self.server.send_parts(spool.path, [*parts, end])
            else:
                size, chunks = spool.with_header(header)
                if tail:
                    chunks = footer.appended(chunks, spool, tail)
                    size += len(tail)
                send_stuffed(self.server.write, chunks)
            final = self.session.read_reply()
        except TimeoutError:
            self.client.write(b"451 4.4.2 p3scan: the server did not answer within "
                              b"idletimeout during DATA\r\n")
            self.session.answered = True
            raise
        except (PeerClosed, OSError) as err:
            self.client.write(b"451 4.4.2 p3scan: the server went away during DATA\r\n")
            self.session.answered = True
            raise PeerClosed(self.server.name, f"went away during DATA ({err})") from None
        self.session.info.bytes += size
        self.envelope.reset()
        self.client.write(b"".join(final))
