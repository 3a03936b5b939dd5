"""SMTP sessions (RFC 5321): relay commands one at a time with the server's exact replies.

EHLO replies lose the keywords the proxy cannot honour: STARTTLS (a TLS handshake cannot be
relayed as text), CHUNKING and BINARYMIME (BDAT data would bypass DATA handling), and BURL
(the server would fetch a message p3scan never sees).  The reply stays well-formed: its
last line keeps the ``250 `` form.  PIPELINING stays, since a pipelining client is simply
queued.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p3scan.config.settings import Settings
from p3scan.log import LOG
from p3scan.net.stream import LineTooLong, PeerClosed, Stream, copy_block
from p3scan.proxy.session import ProtocolViolation, Session, SessionInfo, sasl_plain_user
from p3scan.proxy.smtpmsg import Envelope, Submission, parse_address

EHLO_HIDDEN = frozenset({"STARTTLS", "CHUNKING", "BINARYMIME", "BURL"})
MAX_REPLY_LINES = 512
MAX_BDAT_DIGITS = 20  # 10**20 bytes is beyond any chunk: a longer size is no size at all

if TYPE_CHECKING:
    from p3scan.scan.scanning import Scanning


def reply_code(reply: list[bytes]) -> int:
    """The three-digit code of a reply (0 if it has none)."""
    head = reply[0][:3] if reply else b""
    return int(head) if head.isdigit() else 0


def is_last_line(line: bytes) -> bool:
    return line[3:4] != b"-"


def ehlo_keyword(line: bytes) -> str:
    return line[4:].decode("latin-1").strip().partition(" ")[0].upper()


def filter_ehlo(reply: list[bytes], hidden: frozenset[str] = EHLO_HIDDEN) -> list[bytes]:
    """Remove hidden keywords from a 250 EHLO reply and keep it well-formed."""
    kept = [reply[0]] + [line for line in reply[1:] if ehlo_keyword(line) not in hidden]
    for removed in sorted({ehlo_keyword(line) for line in reply[1:]} & hidden):
        LOG.debug("Ignoring SMTP servers %s capability...", removed)
    return [_continued(line, last=index == len(kept) - 1) for index, line in enumerate(kept)]


def _continued(line: bytes, *, last: bool) -> bytes:
    if len(line) < 4 or not line[:3].isdigit():
        return line
    return line[:3] + (b" " if last else b"-") + line[4:]


class SmtpSession(Session):
    """One SMTP session between a client and its real server."""

    protocol = "SMTP"
    line_error = b"500 5.5.2 p3scan: command line too long\r\n"

    def failure_reply(self, text: str) -> bytes:
        return f"421 4.4.2 p3scan: {text}\r\n".encode("utf-8", "replace")

    def __init__(self, client: Stream, server: Stream, cfg: Settings, info: SessionInfo,
                 scanning: Scanning):
        super().__init__(client, server, cfg, info, scanning)
        self.envelope = Envelope()
        self.verbs = {
            "EHLO": self.do_ehlo,
            "HELO": self.do_helo,
            "MAIL": self.do_mail,
            "RCPT": self.do_rcpt,
            "RSET": self.do_rset,
            "STARTTLS": self.do_starttls,
            "BDAT": self.do_bdat,
            "DATA": self.do_data,
            "AUTH": self.do_auth,
            "QUIT": self.do_quit,
        }

    def read_lines(self) -> list[bytes]:
        """All lines of one server reply (``250-...`` up to the ``250 ...`` line)."""
        lines = [self.server_line()]
        while not is_last_line(lines[-1]):
            if len(lines) >= MAX_REPLY_LINES:
                raise LineTooLong(self.server.name, f"reply longer than {MAX_REPLY_LINES} lines")
            lines.append(self.server_line())
        return lines

    def greet(self) -> None:
        self.client.write(b"".join(self.read_reply()))

    def relay_command(self, line: bytes, verb: str, arg: str) -> None:
        """Forward one command and relay its reply."""
        self.relay(line)

    def relay(self, line: bytes) -> list[bytes]:
        """Forward one command; relay its reply, which is returned too."""
        self.forward(line)
        reply = self.read_reply()
        self.client.write(b"".join(reply))
        return reply

    def read_reply(self, intermediate: int = 0) -> list[bytes]:
        """A reply whose 3xx code may only be ``intermediate`` (354 after DATA, 334 in
        AUTH): any other 3xx would make the client send data the proxy takes for commands,
        and a 2xx to DATA would tell the client a message was taken that was never sent."""
        reply = self.read_lines()
        code = reply_code(reply)
        if 300 <= code < 400 and code != intermediate:
            raise ProtocolViolation(f"a {code} reply where none can be: "
                                    f"{reply[0][:60]!r}")
        if intermediate == 354 and code < 300:  # "accepted" before any data was sent
            raise ProtocolViolation(f"a {code} reply to DATA: {reply[0][:60]!r}")
        return reply

    def do_ehlo(self, line: bytes, verb: str, arg: str) -> None:
        self.forward(line)
        reply = self.read_reply()
        if reply_code(reply) == 250:
            reply = filter_ehlo(reply)
            self.envelope.helo = arg or None
            self.envelope.reset()
        self.client.write(b"".join(reply))

    def do_helo(self, line: bytes, verb: str, arg: str) -> None:
        if reply_code(self.relay(line)) == 250:
            self.envelope.helo = arg or None
            self.envelope.reset()

    def do_mail(self, line: bytes, verb: str, arg: str) -> None:
        if reply_code(self.relay(line)) == 250:
            self.envelope.record_mail(arg)

    def do_rcpt(self, line: bytes, verb: str, arg: str) -> None:
        if reply_code(self.relay(line)) in (250, 251):
            self.envelope.rcpt_to.append(parse_address(arg, "TO:"))

    def do_rset(self, line: bytes, verb: str, arg: str) -> None:
        self.relay_command(line, verb, arg)
        self.envelope.reset()

    def do_starttls(self, line: bytes, verb: str, arg: str) -> None:
        self.client.write(b"454 4.7.0 p3scan: TLS is not available through this proxy\r\n")

    def do_bdat(self, line: bytes, verb: str, arg: str) -> None:
        """CHUNKING is never offered; the chunk a client sends anyway is data whatever its
        size, never commands: it is read and discarded as it streams (each read waits at
        most ``idletimeout``), then refused.  Without a chunk size the framing is lost, so
        the session ends with 421."""
        size = arg.partition(" ")[0]
        if not (size.isascii() and size.isdigit() and len(size) <= MAX_BDAT_DIGITS):
            LOG.warning("BDAT without a valid chunk size (%r); closing the session", arg[:40])
            self.client.write(b"421 4.4.2 p3scan: BDAT without a valid chunk size, the "
                              b"message framing is lost; closing the connection\r\n")
            self.info.outcome = "error: BDAT without a valid chunk size"
            self.done = True
            return
        remaining = int(size)
        while remaining > 0:
            if not self.client.buffered and not self.client.fill():
                raise PeerClosed(self.client.name, "closed the connection during a BDAT chunk")
            remaining -= len(self.client.take(remaining))
        self.client.write(b"502 5.5.1 p3scan: BDAT is not supported (CHUNKING was not offered)\r\n")

    def do_data(self, line: bytes, verb: str, arg: str) -> None:
        """Scan the message before the server sees it (spec §7.3, with its hangs fixed)."""
        self.info.messages += 1
        if not self.envelope.rcpt_to:
            self._data_without_recipients(line)
        elif self._too_large():
            self._relay_unscanned(line)
        else:
            Submission(self).run()

    def _too_large(self) -> bool:
        """checksize: the announced SIZE (in KB, rounded down) exceeds it."""
        size = self.envelope.size
        if not self.cfg.checksize or size is None or size // 1024 <= self.cfg.checksize:
            return False
        LOG.critical("SMTP Message too large for scanning: %d", size // 1024)
        return True

    def _data_without_recipients(self, line: bytes) -> None:
        """No recipient was accepted: the server decides (it will refuse DATA)."""
        self.forward(line)
        reply = self.read_reply(intermediate=354)
        if reply_code(reply) == 354:  # a server that accepts DATA without recipients
            self.client.write(b"451 4.3.0 p3scan: the server accepted DATA without any "
                              b"recipient; giving up\r\n")
            self.answered = True
            raise PeerClosed(self.server.name, "accepted DATA without recipients")
        self.client.write(b"".join(reply))

    def _relay_unscanned(self, line: bytes) -> None:
        """checksize: DATA, the message and the reply pass as they are (as the original)."""
        self.forward(line)
        reply = self.read_reply(intermediate=354)
        self.client.write(b"".join(reply))
        if reply_code(reply) == 354:
            self.info.bytes += copy_block(self.client, self.server.write)
            self.client.write(b"".join(self.read_reply()))
        self.envelope.reset()

    def do_auth(self, line: bytes, verb: str, arg: str) -> None:
        """Relay ``334`` challenges and the client's answers until the final reply."""
        mechanism, _, response = arg.partition(" ")
        self.forward(line)
        while True:
            reply = self.read_reply(intermediate=334)
            if reply_code(reply) != 334:
                break
            self.client.write(b"".join(reply))
            answer = self.client_line()
            response = response or answer.decode("latin-1")
            self.forward(answer)
        if reply_code(reply) == 235 and mechanism.upper() == "PLAIN":  # before the client hears
            self.info.user = sasl_plain_user(response) or self.info.user
        self.client.write(b"".join(reply))

    def do_quit(self, line: bytes, verb: str, arg: str) -> None:
        self.relay_command(line, verb, arg)
        self.done = True
