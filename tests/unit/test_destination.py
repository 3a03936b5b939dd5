"""Destination discovery: useurl parsing, protocol by port, original destination."""

from __future__ import annotations

import socket

import pytest

from p3scan.config import options as config
from p3scan.net import destination, protocols
from p3scan.net.destination import NoDestination, parse_useurl
from p3scan.net.protocols import TlsMode


@pytest.fixture
def cfg():
    return config.load(["-f", "/dev/null", "-T", "eicar"])


@pytest.mark.parametrize(("argument", "expected"), [
    ("bob#pop.example.org:110", ("bob", "pop.example.org", 110)),
    ("bob#pop.example.org", ("bob", "pop.example.org", 110)),
    ("bob@isp.example#10.0.0.1:1110", ("bob@isp.example", "10.0.0.1", 1110)),
    ("we#ird#host:995", ("we#ird", "host", 995)),
    ("bob#[2001:db8::1]:110", ("bob", "2001:db8::1", 110)),
    ("bob#2001:db8::1", ("bob", "2001:db8::1", 110)),
    ("bob#[2001:DB8:0::1]:", ("bob", "2001:db8::1", 110)),
    ("bob#pop.example.org.:995", ("bob", "pop.example.org.", 995)),
    ("bob#_srv-1.x-y.example:110", ("bob", "_srv-1.x-y.example", 110)),
])
def test_useurl_arguments(argument, expected):
    assert parse_useurl(argument) == expected


@pytest.mark.parametrize("argument", ["bob", "#host:110", "bob#", "bob#host:0",
                                      "bob#host:x", "bob#host:70000", "bob#ho st:110"])
def test_bad_useurl_arguments(argument):
    with pytest.raises(NoDestination):
        parse_useurl(argument)


def label(port, cfg):
    """What logs call a connection to ``port``: its protocol, POP3S for implicit TLS."""
    return destination.port_route("192.0.2.7", port, "target", cfg).label


def test_protocol_by_destination_port(cfg):
    assert label(25, cfg) == "SMTP"
    assert label(995, cfg) == "POP3S"
    assert label(110, cfg) == "POP3"
    assert label(143, cfg) == "POP3"
    assert destination.useurl_route("a#192.0.2.7:995", cfg).label == "POP3S"
    smtp_too = cfg.replace(useurlports=[25])
    assert destination.useurl_route("a#192.0.2.7:25", smtp_too).label == "POP3"  # POP3 only


def test_pop3s_is_pop3_with_implicit_tls_towards_the_server(cfg):
    route = destination.port_route("192.0.2.7", cfg.sslport, "target", cfg)
    assert (route.protocol, route.client_tls, route.server_tls) == ("POP3", TlsMode.NONE,
                                                                    TlsMode.IMPLICIT)
    assert protocols.spot(cfg.emailport, cfg) == (protocols.SMTP, TlsMode.NONE)
    assert protocols.spot(143, cfg) == (protocols.POP3, TlsMode.NONE)  # as 2.3.2: else POP3
    both = cfg.replace(emailport=2525, sslport=2525)
    assert protocols.spot(2525, both) == (protocols.SMTP, TlsMode.NONE)  # emailport first
    assert protocols.spot(25, both) == (protocols.POP3, TlsMode.NONE)


def test_fixed_target_route(cfg):
    route = destination.target_route(cfg.replace(targetip="10.0.0.9", targetport=25))
    assert (route.protocol, route.host, route.port, route.mode) == ("SMTP", "10.0.0.9", 25,
                                                                    "target")


def test_unmap_v4_mapped_addresses():
    assert destination.unmap("::ffff:127.0.0.1") == "127.0.0.1"
    assert destination.unmap("2001:db8::1") == "2001:db8::1"
    assert destination.unmap("10.0.0.1") == "10.0.0.1"


def test_a_connection_without_conntrack_is_not_redirected(cfg):
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    try:
        original = destination.original_destination(conn)
        if original is None:  # no nat table in this namespace: ENOENT
            with pytest.raises(NoDestination, match="not redirected"):
                destination.transparent_route(conn, cfg)
        else:  # nat loaded but this connection was not redirected: our own address
            assert original == conn.getsockname()
            with pytest.raises(NoDestination, match="loop"):
                destination.transparent_route(conn, cfg)
    finally:
        for sock in (conn, client, listener):
            sock.close()


def test_connect_failure_is_an_upstream_error():
    port = socket.create_server(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    route = destination.Route("POP3", "127.0.0.1", number, "target")
    with pytest.raises(destination.UpstreamError, match=r"cannot connect to 127\.0\.0\.1"):
        destination.connect(route, 2)
    resolved = destination.Route("POP3", "pop.example", number, "useurl", "a",
                                 ("127.0.0.1", "::1"))
    with pytest.raises(destination.UpstreamError, match=r"cannot connect to pop\.example:"):
        destination.connect(resolved, 2)  # every address tried, the name in the message


def test_without_root_directories_are_checked_not_created(tmp_path):
    from p3scan.daemon import privileges, spooldirs

    cfg = config.load(["-f", "/dev/null", "-T", "eicar", "-r", str(tmp_path / "spool"),
                       "-n", str(tmp_path / "spool" / "notify"),
                       "-l", str(tmp_path / "run" / "p.pid")])
    with pytest.raises(spooldirs.DirectoryProblem) as caught:
        spooldirs.prepare(cfg, privileges.current(), as_root=False)
    assert caught.value.lines[0] == (f"{tmp_path}/spool (from virusdir) does not exist; create "
                                     f"it, writable by {privileges.current().name}, or start "
                                     "p3scan as root")
    assert not (tmp_path / "spool").exists()
    for sub in ("spool/children", "spool/notify", "run"):
        (tmp_path / sub).mkdir(parents=True)
    assert spooldirs.prepare(cfg, privileges.current(), as_root=False) == []
