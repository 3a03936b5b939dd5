"""What POP3 and SMTP sessions share: strict one-at-a-time command handling and relaying.

A session reads one client command, hands it to the verb's method, and only reads the next
command when that method has relayed the whole reply.  A pipelining client is therefore just
queued in the client buffer, and replies can never be attributed to the wrong command (the
original's scan bypass, spec §6.1).  While waiting for a command, bytes the server sends on
its own (for example the rest of a multi-line reply to a command we do not know) are relayed
unchanged.
"""

from __future__ import annotations

import base64
import binascii
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p3scan.destination import Route
from p3scan.lines import MAX_LINE, LineTooLong, PeerClosed, Stream
from p3scan.log import LOG

Handler = Callable[[bytes, str, str], None]


class IdleTimeout(Exception):
    """Neither side sent anything for ``idletimeout`` seconds."""


class AbortSession(Exception):
    """The client has seen part of a reply that can no longer be completed correctly."""


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
                f"protocol={self.route.protocol} client={_addr(self.client)} "
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

    def __init__(self, client: Stream, server: Stream, cfg: Any, info: SessionInfo,
                 scanning: Any):
        self.client = client
        self.server = server
        self.cfg = cfg
        self.info = info
        self.scanning = scanning
        self.done = False
        self.verbs: dict[str, Handler] = {}

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Relay the whole session; record how it ended in ``info.outcome``."""
        try:
            self.greet()
            while not self.done:
                line = self.next_command()
                if line is None:
                    self.info.outcome = "client closed"
                    break
                verb, arg = split_command(line)
                self.verbs.get(verb, self.relay_command)(line, verb, arg)
        except LineTooLong as err:
            self.info.outcome = f"error: {err}"
            if err.side == self.client.name:
                self._try_write(self.line_error)
        except PeerClosed as err:
            self.info.outcome = f"{err.side} closed"
        except (IdleTimeout, TimeoutError):
            LOG.warning("Connection timeout")
            self.info.outcome = "timeout"
        except AbortSession as err:
            LOG.error("ERR: %s", err)
            self.info.outcome = f"error: {err}"
        except OSError as err:
            self.info.outcome = f"error: {err.strerror or err}"

    def greet(self) -> None:
        raise NotImplementedError

    def relay_command(self, line: bytes, verb: str, arg: str) -> None:
        raise NotImplementedError

    # --- waiting for the client -------------------------------------------------------------

    def next_command(self) -> bytes | None:
        """The next complete client line, or None once the client has gone."""
        while not self.client.has_line():
            if self.client.eof:
                return None
            if self.client.buffered > MAX_LINE:
                raise LineTooLong(self.client.name, f"line longer than {MAX_LINE} bytes")
            self._wait_and_relay()
        return self.client.readline()

    def _wait_and_relay(self) -> None:
        """Wait for either side; relay what the server sends unasked; fill the client buffer."""
        if self.server.buffered:
            self.client.write(self.server.take())
        readable = self._select([self.client, self.server])
        if self.server in readable:
            if not self.server.fill():
                raise PeerClosed(self.server.name, "closed the connection")
            self.client.write(self.server.take())
        if self.client in readable:
            self.client.fill()

    def _select(self, streams: list[Stream]) -> list[Stream]:
        readable, _, _ = select.select(streams, [], [], self.cfg.idletimeout)
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
        line = self.server.readline()
        if not line.endswith(b"\n"):
            raise PeerClosed(self.server.name, "closed the connection")
        return line

    def _try_write(self, data: bytes) -> None:
        try:
            self.client.write(data)
        except OSError:
            pass
