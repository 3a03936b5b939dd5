"""Where a client connection should go: transparent, fixed-target or useurl mode.

Transparent mode asks netfilter for the connection's original destination
(``SO_ORIGINAL_DST``, or ``IP6T_SO_ORIGINAL_DST`` for IPv6 peers; a v4-mapped peer on a
dual-stack socket needs the IPv4 call).  A connection that was not redirected either has no
conntrack entry (ENOENT) or reports our own listening address; both are refused, which is
also the loop guard.  The protocol follows from the destination port
(:func:`p3scan.net.protocols.spot`).

useurl mode takes the server from the client's ``USER name#host:port``, so it is a connect
request from an untrusted client: the host must be well-formed, the port in
``useurlports``, the name is resolved once within ``connecttimeout`` and the session
connects to those very addresses, and p3scan's own port on a local address is refused.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from p3scan.config.settings import Settings
from p3scan.net.protocols import POP3, TlsMode, spot

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
DEFAULT_POP3_PORT = 110
USEURL_SYNTAX = "expected USER name#host:port"
MAX_HOST_NAME = 253
MAX_LABEL = 63
HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")

getaddrinfo = socket.getaddrinfo  # the resolver; tests replace it


@dataclass(frozen=True)
class Route:
    """The upstream server of one session, the protocol spoken, and how each leg runs."""

    protocol: str  # "POP3" or "SMTP" (a name in p3scan.net.protocols)
    host: str
    port: int
    mode: str  # "transparent", "target" or "useurl"
    user: str | None = None  # useurl: the user name to log in with
    addresses: tuple[str, ...] = ()  # useurl: what ``host`` resolved to; connect to these
    client_tls: TlsMode = TlsMode.NONE  # between the client and p3scan
    server_tls: TlsMode = TlsMode.NONE  # between p3scan and the server

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def label(self) -> str:
        """The name logs, templates and the quarantine have always shown: ``POP3S`` when
        the server leg is implicit TLS (``sslport``), else the protocol's name."""
        return self.protocol + "S" if self.server_tls is TlsMode.IMPLICIT else self.protocol


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


def port_route(host: str, port: int, mode: str, cfg: Settings) -> Route:
    """A route whose protocol and server-side TLS follow from the server's port."""
    protocol, server_tls = spot(port, cfg)
    return Route(protocol.name, host, port, mode, server_tls=server_tls)


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


def transparent_route(conn: socket.socket, cfg: Settings) -> Route:
    """Route to the original destination; refuse connections that were not redirected."""
    original = original_destination(conn)
    local = conn.getsockname()
    if original is None:
        raise NoDestination("connection was not redirected (no original destination)")
    if (unmap(original[0]), original[1]) == (unmap(local[0]), local[1]):
        raise NoDestination("original destination is p3scan itself, that would loop")
    return port_route(unmap(original[0]), original[1], "transparent", cfg)


def target_route(cfg: Settings) -> Route:
    """The fixed ``targetip:targetport`` route."""
    return port_route(cfg.targetip, cfg.targetport, "target", cfg)


def is_transparent(cfg: Settings) -> bool:
    return not cfg.useurl and cfg.targetip in ("0.0.0.0", "::")


def route_for(conn: socket.socket, cfg: Settings) -> Route:
    """The route of a connection whose client does not name its server (not useurl)."""
    return transparent_route(conn, cfg) if is_transparent(cfg) else target_route(cfg)


def parse_useurl(argument: str) -> tuple[str, str, int]:
    """Split a useurl USER argument ``name#host[:port]`` into (name, host, port).

    The last ``#`` separates the name, so a name may contain ``#``.  An IPv6 host is
    written in brackets.  Without a port, 110 is used (the original required one).  The
    host must be an IP address or a well-formed ASCII host name (:func:`check_host`).
    """
    user, sep, target = argument.strip().rpartition("#")
    if not sep or not user or not target:
        raise NoDestination(USEURL_SYNTAX)
    if any(ord(char) < 32 or ord(char) == 127 for char in user):
        raise NoDestination("the user name contains control characters")
    host, port_text = _split_target(target)
    return user, check_host(host), _port(port_text)


def _split_target(target: str) -> tuple[str, str]:
    """``host:port``, ``[v6]:port``, ``host`` or a bare IPv6 address: (host, port text)."""
    if target.startswith("["):
        host, closed, rest = target[1:].partition("]")
        if not closed:
            raise NoDestination("'[' without ']' around the IPv6 address")
        if rest and not rest.startswith(":"):
            raise NoDestination(USEURL_SYNTAX)
        if ":" not in host:
            raise NoDestination("only an IPv6 address may be written in [brackets]")
        return host, rest[1:]
    if target.count(":") == 1:
        host, _, port_text = target.partition(":")
        return host, port_text
    return target, ""


def check_host(host: str) -> str:
    """The host of a useurl USER line: an IP address, or a host name that DNS could hold.

    Everything is refused here that the resolver would choke on (a label over 63
    characters, a name over 253, non-ASCII, empty labels), so that it never sees it.
    """
    if not host:
        raise NoDestination(USEURL_SYNTAX)
    if ":" in host:
        if "%" in host:
            raise NoDestination("IPv6 zone indexes (%) are not supported")
        if not _ip_literal(host):
            raise NoDestination("not a valid IPv6 address")
        return str(ipaddress.IPv6Address(host))
    if not host.isascii():
        raise NoDestination("the host name must be ASCII (write an international name in "
                            "its xn-- form)")
    name = host.removesuffix(".")
    if len(name) > MAX_HOST_NAME:
        raise NoDestination(f"the host name is longer than {MAX_HOST_NAME} characters")
    for label in name.split("."):
        _check_label(label)
    return host


def _check_label(label: str) -> None:
    if not label:
        raise NoDestination("the host name has an empty label ('..' or a leading '.')")
    if len(label) > MAX_LABEL:
        raise NoDestination(f"a label of the host name is longer than {MAX_LABEL} characters")
    if not HOST_LABEL.fullmatch(label):
        raise NoDestination("a host name may only contain letters, digits, '-' (not at the "
                            "start or end of a label), '_' and '.'")


def _ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return "%" not in text


def _port(text: str) -> int:
    if not text:
        return DEFAULT_POP3_PORT
    if text.isascii() and text.isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    raise NoDestination("the port after ':' must be a number from 1 to 65535")


def resolve(host: str, port: int, timeout: float) -> tuple[str, ...]:
    """The addresses of ``host``, looked up once, with an answer within ``timeout`` seconds.

    getaddrinfo cannot be interrupted, so it runs in a daemon thread that is abandoned at
    the deadline.  The caller connects to exactly these addresses: a second lookup could
    answer differently (DNS rebinding) after the checks were made on the first.
    """
    if _ip_literal(host):
        return (unmap(host),)
    answer: list[Any] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            answer.append(getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except Exception as err:  # reported by the waiting thread
            answer.append(err)
        finally:
            done.set()

    threading.Thread(target=lookup, name="p3scan-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise NoDestination(f"cannot resolve {host}: no answer within {timeout:g} s")
    return _addresses(host, answer[0])


def _addresses(host: str, answer: Any) -> tuple[str, ...]:
    if isinstance(answer, Exception):
        reason = getattr(answer, "strerror", None) or str(answer) or type(answer).__name__
        raise NoDestination(f"cannot resolve {host}: {reason}")
    found: list[str] = []
    try:
        for family, _type, _proto, _name, sockaddr in answer:
            if family in (socket.AF_INET, socket.AF_INET6) and _ip_literal(str(sockaddr[0])):
                address = unmap(str(sockaddr[0]))
                if address not in found:
                    found.append(address)
    except (TypeError, ValueError, IndexError):
        raise NoDestination(f"cannot resolve {host}: unexpected resolver answer") from None
    if not found:
        raise NoDestination(f"cannot resolve {host}: no IPv4 or IPv6 address")
    return tuple(found)


def is_local_address(address: str) -> bool:
    """Whether ``address`` belongs to this machine: loopback, 0.0.0.0/::, or any address of
    any interface.  The kernel's routing answers that without listing the interfaces: only
    towards one of its own addresses does it pick that same address as the source."""
    ip = ipaddress.ip_address(unmap(address))
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((str(ip), 9))  # UDP: sends nothing, only routes
            source = str(probe.getsockname()[0]).partition("%")[0]
    except OSError:  # no route, a broadcast address, or no such family here at all
        return False
    return ipaddress.ip_address(unmap(source)) == ip


def check_not_self(host: str, addresses: tuple[str, ...], port: int, cfg: Settings) -> None:
    """Refuse a destination that is p3scan's own listener (its port on a local address)."""
    if port != cfg.port:
        return
    for address in addresses:
        if is_local_address(address):
            shown = format_address(host, port) + ("" if address == host else f" ({address})")
            raise NoDestination(f"{shown} is p3scan itself, that would loop")


def useurl_route(argument: str, cfg: Settings) -> Route:
    """Route for a useurl USER argument: POP3, with implicit TLS to the server if the
    port is ``sslport``.

    Only ports in ``useurlports`` are allowed, never p3scan itself, and the host is
    resolved here, once, within ``connecttimeout``.
    """
    user, host, port = parse_useurl(argument)
    if port not in cfg.useurlports:
        allowed = ", ".join(str(item) for item in cfg.useurlports)
        raise NoDestination(f"port {port} is not allowed in useurl mode (useurlports: "
                            f"{allowed})")
    addresses = resolve(host, port, cfg.connecttimeout)
    check_not_self(host, addresses, port, cfg)
    server_tls = POP3.spots(port, cfg) or TlsMode.NONE  # None: a port that is not POP3's
    return Route(POP3.name, host, port, "useurl", user, addresses, server_tls=server_tls)


def connect(route: Route, timeout: float) -> socket.socket:
    """Open the TCP connection to the real server: to ``route.addresses`` if it was resolved
    already (one after the other, all within ``timeout``), else to ``route.host``."""
    deadline = time.monotonic() + timeout
    reason = "no address"
    for address in route.addresses or (route.host,):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reason = "timed out"
            break
        try:
            return socket.create_connection((address, route.port), timeout=remaining)
        except TimeoutError:
            reason = "timed out"
        except OSError as err:
            reason = err.strerror or str(err)
    if reason == "timed out":
        raise UpstreamError(f"timed out connecting to {route.address}", reason)
    raise UpstreamError(f"cannot connect to {route.address}: {reason}", reason)
