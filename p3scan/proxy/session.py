"""What POP3 and SMTP sessions share: strict one-at-a-time command handling and relaying.

A session reads one client command, hands it to the verb's method, and only reads the next
command when that method has relayed the whole reply.  A pipelining client is therefore just
queued in the client buffer, and replies can never be attributed to the wrong command (the
original's scan bypass, spec §6.1).  Bytes the server sends that no command asked for (after
the end of a reply, or while the client is idle) are a protocol violation: relayed later
they would reach the client unscanned as if they answered its next command.  So before each
command goes to the server, and while the client is idle, the server must be silent;
otherwise the session ends with an error reply and a log line naming the server.

Every failure answers: a server that closes, resets, times out or sends a line over the
limit while a command waits for its reply gives the client a temporary error naming the
cause (unless part of the reply has gone out already: then only closing is safe).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from p3scan import heartbeat
from p3scan.config.settings import Settings
from p3scan.log import LOG
from p3scan.mail.context import Envelope, MessageContext
from p3scan.net.destination import Route
from p3scan.net.stream import (
    MAX_LINE,
    LineTooLong,
    PeerClosed,
    Stream,
    StreamError,
    wait_readable,
)

if TYPE_CHECKING:
    from p3scan.mail.spool import Spool
    from p3scan.scan.scanning import Scanning

Handler = Callable[[bytes, str, str], None]


class IdleTimeout(Exception):
    """Neither side sent anything for ``idletimeout`` seconds."""


class AbortSession(Exception):
    """The client has seen part of a reply that can no longer be completed correctly."""


class ProtocolViolation(Exception):
    """The server sent something no command asked for; the session must end."""


@dataclass
class SessionInfo:
    """What the logs (and the notification templates) know about one session."""

    client: tuple[str, int]
    route: Route
    started: float = field(default_factory=time.monotonic)
    user: str | None = None
    messages: int = 0
    bytes: int = 0
    outcome: str = "ok"

    def summary(self) -> str:
        """The one log line per session."""
        clean = "Clean Exit" if not self.outcome.startswith("error") else "Critical abort"
        duration = time.monotonic() - self.started
        return (f"Session done ({clean}). Mails: {self.messages} Bytes: {self.bytes} "
                f"protocol={self.route.label} client={_addr(self.client)} "
                f"server={self.route.address} user={self.user or '-'} "
                f"duration={duration:.3f}s outcome={self.outcome}")


def _addr(peer: tuple[str, int]) -> str:
    host = peer[0]
    return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"


def sasl_plain_user(response: str) -> str | None:
    """The authentication identity of a SASL PLAIN response (the password is ignored)."""
    try:
        parts = base64.b64decode(response.strip(), validate=True).split(b"\0")
    except (binascii.Error, ValueError):
        return None
    return parts[1].decode("utf-8", "replace") if len(parts) == 3 and parts[1] else None


def split_command(line: bytes) -> tuple[str, str]:
    """``b'RETR 1\\r\\n'`` becomes ``('RETR', '1')``; the verb is upper-cased."""
    text = line.decode("latin-1").rstrip("\r\n")
    verb, _, arg = text.strip().partition(" ")
    return verb.upper(), arg.strip()


class Session:
    """Base of the protocol sessions; subclasses fill :attr:`verbs` and :meth:`greet`."""

    protocol = ""
    line_error = b""  # reply to a client line that is too long

    def failure_reply(self, text: str) -> bytes:
        """A temporary error in the client's protocol (``-ERR [SYS/TEMP]`` or ``4xx``)."""
        raise NotImplementedError

    def __init__(self, client: Stream, server: Stream, cfg: Settings, info: SessionInfo,
                 scanning: Scanning):
        self.client = client
        self.server = server
        self.cfg = cfg
        self.info = info
        self.scanning = scanning
        self.done = False
        self.verbs: dict[str, Handler] = {}
        self.awaiting_server = False  # a command (or the greeting) waits for its reply
        self.answered = False  # part of that reply reached the client: only closing is safe

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Relay the whole session; record how it ended in ``info.outcome``."""
        try:
            self.awaiting_server = True
            self.greet()
            while not self.done:
                line = self.next_command()
                if line is None:
                    self.info.outcome = "client closed"
                    break
                verb, arg = split_command(line)
                self.verbs.get(verb, self.relay_command)(line, verb, arg)
        except ProtocolViolation as err:
            LOG.error("ERR: server %s: %s; closing the session", self.info.route.address, err)
            self.info.outcome = f"error: server protocol violation: {err}"
            self._try_write(self.failure_reply("the server sent data that no command asked "
                                               "for; closing"))
        except LineTooLong as err:
            self.info.outcome = f"error: {err}"
            if err.side == self.client.name:
                self._try_write(self.line_error)
            else:
                self._server_failed(f"the server sent a {err.detail}")
        except PeerClosed as err:
            self.info.outcome = f"{err.side} closed"
            if err.side == self.server.name:
                self._server_failed(f"the server {err.detail}")
        except (IdleTimeout, TimeoutError):
            LOG.warning("Connection timeout")
            self.info.outcome = "timeout"
            self._server_failed("the server did not answer within idletimeout")
        except AbortSession as err:
            LOG.error("ERR: %s", err)
            self.info.outcome = f"error: {err}"
        except OSError as err:
            self.info.outcome = f"error: {err.strerror or err}"
            self._server_failed(f"internal error ({err.strerror or err})")
        except Exception as err:  # a bug must still answer, and the worker goes on
            LOG.exception("Unexpected error in a %s session", self.protocol)
            self.info.outcome = f"error: internal error: {err}"
            self._server_failed("internal error")

    def _server_failed(self, cause: str) -> None:
        """Answer the command that waits for the server, unless part of its reply is out."""
        if self.awaiting_server and not self.answered:
            LOG.error("ERR: %s (server %s)", cause, self.info.route.address)
            self._try_write(self.failure_reply(cause))

    def greet(self) -> None:
        raise NotImplementedError

    def message_context(self, spool: Spool, number: str,
                        envelope: Envelope | None = None) -> MessageContext:
        """What the scan services need to know of a message of this session."""
        route = self.info.route
        return MessageContext(route.label, self.info.client, (route.host, route.port),
                              self.info.user, number, spool, self.scanning.vdinfo, envelope)

    def relay_command(self, line: bytes, verb: str, arg: str) -> None:
        raise NotImplementedError

    # --- waiting for the client -------------------------------------------------------------

    def next_command(self) -> bytes | None:
        """The next complete client line, or None once the client has gone."""
        self.awaiting_server = self.answered = False
        while not self.client.has_line():
            if self.client.eof:
                return None
            if self.client.buffered > MAX_LINE:
                raise LineTooLong(self.client.name, f"line longer than {MAX_LINE} bytes")
            self._wait_for_client()
        return self.client.readline()

    def _wait_for_client(self) -> None:
        """Wait for the client; the server must stay silent meanwhile."""
        self.check_server_silent()
        readable = self._select([self.client, self.server])
        if self.server in readable:
            self.check_server_silent()
        if self.client in readable:
            self.client.fill()

    def check_server_silent(self) -> None:
        """Raise :class:`ProtocolViolation` if the server has sent anything unasked."""
        if not self.server.buffered:
            if not wait_readable([self.server], 0):
                return
            if not self.server.fill():
                raise PeerClosed(self.server.name, "closed the connection")
        raise ProtocolViolation(f"{self.server.buffered} bytes that no command asked for: "
                                f"{self.server.peek()[:60]!r}")

    def forward(self, line: bytes) -> None:
        """Send one client line (a command, a SASL response) to the silent server."""
        self.awaiting_server = True  # from here on, whatever fails owes the client a reply
        self.check_server_silent()
        self.server.write(line)

    def _select(self, streams: list[Stream]) -> list[Stream]:
        heartbeat.beat(self.info)
        readable = wait_readable(streams, self.cfg.idletimeout)
        if not readable:
            raise IdleTimeout()
        return readable

    def client_line(self) -> bytes:
        """One more client line inside a command (a SASL response); it must arrive."""
        line = self.next_command()
        if line is None:
            raise PeerClosed(self.client.name, "closed the connection")
        return line

    def server_line(self) -> bytes:
        """One reply line from the server; it must arrive."""
        heartbeat.beat(self.info)
        line = self.server.readline()
        if not line.endswith(b"\n"):
            raise PeerClosed(self.server.name, "closed the connection")
        return line

    def _try_write(self, data: bytes) -> None:
        try:
            self.client.write(data)
        except (OSError, StreamError):  # the client has gone: nobody left to tell
            pass
