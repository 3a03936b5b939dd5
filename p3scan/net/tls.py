"""TLS towards the real server (POP3S on ``sslport``).

The original accepted any certificate (spec §8, §14 S6).  Here the server's certificate is
verified against the system CA store, or ``sslcafile``, and must name the host we connect to
(in transparent mode that is the original destination's IP address); ``sslverify = no``
turns verification off explicitly.
"""

from __future__ import annotations

import socket
import ssl

from p3scan.config.settings import Settings
from p3scan.net.destination import Route, UpstreamError


def client_context(cfg: Settings) -> ssl.SSLContext:
    """The context used to talk to upstream servers."""
    if cfg.sslverify == "no":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cfg.sslcafile)


def wrap_upstream(sock: socket.socket, route: Route, cfg: Settings) -> ssl.SSLSocket:
    """Run the TLS handshake with the real server; close the socket if it fails."""
    try:
        return client_context(cfg).wrap_socket(sock, server_hostname=route.host)
    except (ssl.SSLError, ssl.CertificateError, OSError) as err:
        sock.close()
        reason = getattr(err, "verify_message", None) or getattr(err, "reason", None) or err
        raise UpstreamError(f"TLS handshake with {route.address} failed: {reason}",
                            f"TLS handshake failed: {reason}") from None
