"""Where a client connection should go: transparent, fixed-target or useurl mode.

Transparent mode asks netfilter for the connection's original destination
(``SO_ORIGINAL_DST``, or ``IP6T_SO_ORIGINAL_DST`` for IPv6 peers; a v4-mapped peer on a
dual-stack socket needs the IPv4 call).  A connection that was not redirected either has no
conntrack entry (ENOENT) or reports our own listening address; both are refused, which is
also the loop guard.  The protocol follows from the destination port.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
DEFAULT_POP3_PORT = 110


@dataclass(frozen=True)
class Route:
    """The upstream server of one session and the protocol spoken with it."""

    protocol: str  # "POP3", "POP3S" or "SMTP"
    host: str
    port: int
    mode: str  # "transparent", "target" or "useurl"
    user: str | None = None  # useurl: the user name to log in with

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)


class NoDestination(Exception):
    """The connection has no usable upstream; the message says why."""


class UpstreamError(Exception):
    """Connecting to the real server failed or timed out; ``reason`` says why, briefly."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unmap(host: str) -> str:
    """``::ffff:1.2.3.4`` becomes ``1.2.3.4``; other addresses are unchanged."""
    try:
        mapped = ipaddress.IPv6Address(host.split("%")[0]).ipv4_mapped
    except ValueError:
        return host
    return str(mapped) if mapped else host


def protocol_for(port: int, cfg: Any) -> str:
    """SMTP on ``emailport``, POP3S on ``sslport``, POP3 on anything else."""
    if port == cfg.emailport:
        return "SMTP"
    if port == cfg.sslport:
        return "POP3S"
    return "POP3"


def original_destination(conn: socket.socket) -> tuple[str, int] | None:
    """The pre-REDIRECT destination of ``conn``, or None if netfilter has none."""
    peer = unmap(conn.getpeername()[0])
    try:
        if ":" in peer:
            raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
        raw = conn.getsockopt(socket.IPPROTO_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack_from("!H", raw, 2)[0]
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOPROTOOPT):
            return None
        raise


def transparent_route(conn: socket.socket, cfg: Any) -> Route:
    """Route to the original destination; refuse connections that were not redirected."""
    original = original_destination(conn)
    local = conn.getsockname()
    if original is None:
        raise NoDestination("connection was not redirected (no original destination)")
    if (unmap(original[0]), original[1]) == (unmap(local[0]), local[1]):
        raise NoDestination("original destination is p3scan itself, that would loop")
    host, port = unmap(original[0]), original[1]
    return Route(protocol_for(port, cfg), host, port, "transparent")


def target_route(cfg: Any) -> Route:
    """The fixed ``targetip:targetport`` route."""
    return Route(protocol_for(cfg.targetport, cfg), cfg.targetip, cfg.targetport, "target")


def is_transparent(cfg: Any) -> bool:
    return not cfg.useurl and cfg.targetip in ("0.0.0.0", "::")


def parse_useurl(argument: str) -> tuple[str, str, int]:
    """Split a useurl USER argument ``name#host[:port]`` into (name, host, port).

    The last ``#`` separates the name, so a name may contain ``#``.  An IPv6 host is
    written in brackets.  Without a port, 110 is used (the original required one).
    """
    user, sep, target = argument.strip().rpartition("#")
    if not sep or not user or not target:
        raise NoDestination("expected USER name#host:port")
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif target.count(":") == 1:
        host, _, port_text = target.partition(":")
    else:
        host, port_text = target, ""
    port = _port(port_text)
    if not host or any(char.isspace() for char in host):
        raise NoDestination("expected USER name#host:port")
    return user, host, port


def _port(text: str) -> int:
    if not text:
        return DEFAULT_POP3_PORT
    if text.isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    raise NoDestination("the port after ':' must be a number from 1 to 65535")


def useurl_route(argument: str, cfg: Any) -> Route:
    """Route for a useurl USER argument; POP3S if the port is ``sslport``, else POP3."""
    user, host, port = parse_useurl(argument)
    protocol = "POP3S" if port == cfg.sslport else "POP3"
    return Route(protocol, host, port, "useurl", user)


def connect(route: Route, timeout: float) -> socket.socket:
    """Open the TCP connection to the real server."""
    try:
        sock = socket.create_connection((route.host, route.port), timeout=timeout)
    except TimeoutError:
        raise UpstreamError(f"timed out connecting to {route.address}", "timed out") from None
    except OSError as err:
        reason = err.strerror or str(err)
        raise UpstreamError(f"cannot connect to {route.address}: {reason}", reason) from None
    return sock
