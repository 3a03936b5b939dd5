"""The mail protocols p3scan proxies, as data: their names, ports, and how TLS runs on a leg.

A transparent gateway only learns the protocol from the port the client connected to, so
each :class:`Protocol` says which ports mark it, with or without implicit TLS; the session
class that speaks it names it in turn (``Session.protocol``).  Adding a protocol (IMAP) is
one more entry in :data:`PROTOCOLS`, not another ``if`` on a port.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from p3scan.config.settings import Settings


class TlsMode(enum.Enum):
    """How one leg of a session (client or server side) is protected."""

    NONE = "none"  # plaintext throughout
    IMPLICIT = "implicit"  # TLS from the first byte (POP3S on 995, SMTPS on 465)
    UPGRADED = "upgraded"  # plaintext, then STLS / STARTTLS


@dataclass(frozen=True)
class Protocol:
    """One protocol: its name, its well-known ports, and the options that replace them."""

    name: str
    ports: tuple[int, ...]  # plaintext ports (used unless ``port_option`` is set)
    tls_ports: tuple[int, ...] = ()  # implicit-TLS ports (unless ``tls_port_option``)
    port_option: str | None = None  # the option that names its plaintext port
    tls_port_option: str | None = None  # the option that names its implicit-TLS port
    failure: str = "-ERR [SYS/TEMP] p3scan: {}\r\n"  # a temporary error before the session

    def spots(self, port: int, cfg: Settings) -> TlsMode | None:
        """How the server leg runs if ``port`` marks this protocol; None if it does not.
        The TLS port is checked first, as 2.3.2 checked ``sslport`` before the default."""
        if port in self._ports(cfg, self.tls_port_option, self.tls_ports):
            return TlsMode.IMPLICIT
        if port in self._ports(cfg, self.port_option, self.ports):
            return TlsMode.NONE
        return None

    def failure_reply(self, text: str) -> bytes:
        return self.failure.format(text).encode("utf-8", "replace")

    @staticmethod
    def _ports(cfg: Settings, option: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
        return (getattr(cfg, option),) if option else default


POP3 = Protocol("POP3", ports=(110,), tls_ports=(995,), tls_port_option="sslport")
SMTP = Protocol("SMTP", ports=(25,), port_option="emailport",
                failure="421 4.4.1 p3scan: {}\r\n")
PROTOCOLS = (SMTP, POP3)  # in the order they are tried: ``emailport`` wins, as in 2.3.2
FALLBACK = POP3  # a port no protocol claims is POP3, as in 2.3.2
BY_NAME = {protocol.name: protocol for protocol in PROTOCOLS}


def spot(port: int, cfg: Settings) -> tuple[Protocol, TlsMode]:
    """The protocol that a connection to ``port`` speaks, and how its server leg runs."""
    for protocol in PROTOCOLS:
        mode = protocol.spots(port, cfg)
        if mode is not None:
            return protocol, mode
    return FALLBACK, TlsMode.NONE
