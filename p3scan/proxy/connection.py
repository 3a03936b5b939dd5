"""Serve one accepted client connection: find the route, connect upstream, run the session.

Whatever goes wrong before the session starts, the client gets a protocol error
(``-ERR ...`` for POP3, ``421 ...`` for SMTP) rather than a silent close.
"""

from __future__ import annotations

import os
import socket

from p3scan.config.settings import Settings
from p3scan.log import LOG
from p3scan.net import tls
from p3scan.net.destination import (
    NoDestination,
    Route,
    UpstreamError,
    connect,
    format_address,
    route_for,
    unmap,
)
from p3scan.net.protocols import BY_NAME, POP3, TlsMode
from p3scan.net.stream import Stream, StreamError
from p3scan.proxy import pop3, smtp
from p3scan.proxy.session import Session, SessionInfo
from p3scan.scan.scanning import Scanning

SESSIONS: dict[str, type[Session]] = {
    cls.protocol: cls for cls in (pop3.Pop3Session, smtp.SmtpSession)}  # by their own names


def error_reply(protocol: str, text: str) -> bytes:
    """A temporary-failure reply in the client's protocol."""
    return BY_NAME[protocol].failure_reply(text)


def free_kbytes(path: str) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize // 1024


def serve(conn: socket.socket, cfg: Settings, scanning: Scanning) -> SessionInfo | None:
    """Handle one client connection from accept to close; return what was logged."""
    peer = conn.getpeername()
    client = Stream(conn, "client", cfg.idletimeout)
    upstream: Stream | None = None
    try:
        route = _route(conn, client, cfg)
        if route is None:
            return None
        LOG.info("%s Connection from %s", route.label, format_address(unmap(peer[0]), peer[1]))
        LOG.info("Real-server address is %s%s", route.address, _resolved(route))
        if not _enough_space(client, route, cfg):
            return None
        upstream = _connect(client, route, cfg)
        if upstream is None:
            return None
        info = SessionInfo((unmap(peer[0]), peer[1]), route)
        SESSIONS[route.protocol](client, upstream, cfg, info, scanning).run()
        LOG.info("%s", info.summary())
        return info
    except OSError as err:
        LOG.warning("Session aborted: %s", err.strerror or err)
        return None
    except StreamError as err:  # the client went away before its session began
        LOG.warning("Session aborted: %s", err)
        return None
    finally:
        client.close()
        if upstream is not None:
            upstream.close()


def _resolved(route: Route) -> str:
    """`` (addresses)`` when useurl named the server by a host name."""
    if not route.addresses or route.addresses == (route.host,):
        return ""
    return f" ({', '.join(route.addresses)})"


def _route(conn: socket.socket, client: Stream, cfg: Settings) -> Route | None:
    """Where the connection goes: named by the client (POP3's useurl, which asks for it in
    its own dialogue), else by netfilter or ``targetip``."""
    try:
        if cfg.useurl:
            return pop3.client_route(client, cfg)
        return route_for(conn, cfg)
    except NoDestination as err:  # no protocol is known yet: answer as POP3, as 2.3.2 did
        LOG.critical("ERR: %s", err)
        client.write(POP3.failure_reply(str(err)))
        return None


def _enough_space(client: Stream, route: Route, cfg: Settings) -> bool:
    if not cfg.bytesfree:
        return True
    available = free_kbytes(cfg.virusdir)
    if available >= cfg.bytesfree:
        return True
    LOG.critical("ERR: Not enough space! Available space: %d", available)
    client.write(error_reply(route.protocol, "not enough free space to scan mail"))
    return False


def _connect(client: Stream, route: Route, cfg: Settings) -> Stream | None:
    try:
        sock = connect(route, cfg.connecttimeout)
        if route.server_tls is TlsMode.IMPLICIT:
            sock = tls.wrap_upstream(sock, route, cfg)
    except UpstreamError as err:
        LOG.critical("ERR: Cannot connect to real-server: %s (%s)", route.address, err.reason)
        client.write(error_reply(route.protocol, str(err)))
        return None
    return Stream(sock, "server", cfg.idletimeout)
