"""useurl mode cannot be turned against the gateway: host syntax, allowed ports, p3scan
itself, resolution with a deadline and without a second lookup, and the pre-USER dialogue."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p3scan.config import options as config
from p3scan.log import LOG
from p3scan.net import destination
from p3scan.net.destination import NoDestination, Route, parse_useurl, useurl_route
from p3scan.net.stream import MAX_LINE, Stream
from p3scan.proxy.pop3 import useurl_handshake

LISTEN_PORT = 8110


def make_cfg(**changes: Any) -> config.Config:
    base = config.load(["-f", "/dev/null", "-T", "eicar"])
    return base.replace(**{"port": LISTEN_PORT, "connecttimeout": 5, **changes})


@pytest.fixture
def cfg() -> config.Config:
    return make_cfg()


@contextlib.contextmanager
def fake_dns(answer: Callable[[str], Any]) -> Iterator[list[str]]:
    """Replace the resolver: ``answer(host)`` gives addresses (or raises); yields the queries."""
    queries: list[str] = []

    def getaddrinfo(host: str, port: int, family: int = 0, type: int = 0, *args: Any):
        queries.append(host)
        result = answer(host)
        if not isinstance(result, list) or not all(isinstance(a, str) for a in result):
            return result
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in result]

    original = destination.getaddrinfo
    destination.getaddrinfo = getaddrinfo
    try:
        yield queries
    finally:
        destination.getaddrinfo = original


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Messages logged by p3scan during the test (LOG may not propagate to caplog)."""
    handler = ListHandler()
    LOG.addHandler(handler)
    level = LOG.level
    LOG.setLevel(logging.DEBUG)
    yield handler.lines
    LOG.removeHandler(handler)
    LOG.setLevel(level)


# --- host syntax -----------------------------------------------------------------------------

LABEL63 = "a" * 63
NAME253 = ".".join([LABEL63] * 3 + ["b" * 61])


@pytest.mark.parametrize(("argument", "why"), [
    (f"bob#{'a' * 64}.example:110", "label of the host name is longer than 63"),
    (f"bob#{NAME253}x:110", "longer than 253"),
    ("bob#b\u00fccher.example:110", "must be ASCII"),
    ("bob#\u0440\u043e\u043f.example:110", "must be ASCII"),
    ("bob#[2001:db8::1:110", "'\\[' without '\\]'"),
    ("bob#[2001:db8::1", "'\\[' without '\\]'"),
    ("bob#[pop.example]:110", "only an IPv6 address"),
    ("bob#[2001:db8::1]x", "expected USER"),
    ("bob#pop..example:110", "empty label"),
    ("bob#.pop.example:110", "empty label"),
    ("bob#pop.example..:110", "empty label"),
    ("bob#pop/example:110", "may only contain"),
    ("bob#-pop.example:110", "may only contain"),
    ("bob#pop-.example:110", "may only contain"),
    ("bob#pop\x00.example:110", "may only contain"),
    ("bob#pop.example:11\u0661", "must be a number"),
    ("bob#2001:db8::zz", "not a valid IPv6"),
    ("bob#[fe80::1%eth0]:110", "zone indexes"),
    ("bob#fe80::1%eth0", "zone indexes"),
    ("bo\rb#pop.example:110", "control characters"),
])
def test_bad_host_names_are_refused_with_a_reason(argument, why):
    with pytest.raises(NoDestination, match=why):
        parse_useurl(argument)


def test_host_name_limits_are_inclusive():
    assert parse_useurl(f"bob#{LABEL63}.example:110")[1] == f"{LABEL63}.example"
    assert len(NAME253) == 253
    assert parse_useurl(f"bob#{NAME253}:110")[1] == NAME253
    assert parse_useurl(f"bob#{NAME253}.:110")[1] == f"{NAME253}."  # the root dot is free


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_parse_useurl_raises_nothing_but_no_destination(argument):
    check_parse(argument)


PIECES = st.sampled_from(["bob", "#", ":", "[", "]", ".", "..", "-", "_", "%", "::1", "1",
                          "110", "0", "a" * 63, "a" * 64, "x" * 200, "\u00fc", "\x00", " ",
                          "\r", "127.0.0.1", "::ffff:127.0.0.1", "xn--bcher-kva", "fe80::1"])


@settings(max_examples=400, deadline=None)
@given(st.lists(PIECES | st.text(max_size=3), max_size=12).map("".join))
def test_parse_useurl_on_near_valid_arguments(argument):
    check_parse(argument)


def check_parse(argument: str) -> None:
    """parse_useurl raises NoDestination or returns a sane (user, host, port)."""
    try:
        user, host, port = parse_useurl(argument)
    except NoDestination:
        return
    assert user and 1 <= port <= 65535
    assert_host_is_sane(host)


def assert_host_is_sane(host: str) -> None:
    if ":" in host:
        assert isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
        return
    assert host.isascii() and len(host.removesuffix(".")) <= 253
    for label in host.removesuffix(".").split("."):
        assert 1 <= len(label) <= 63 and label[0] != "-" and label[-1] != "-"
        assert all(char.isalnum() or char in "-_" for char in label)


# --- allowed ports ---------------------------------------------------------------------------

def test_only_useurlports_may_be_named(cfg):
    assert cfg.useurlports == [110, 995]
    for port in (110, 995):
        assert useurl_route(f"bob#192.0.2.7:{port}", cfg).port == port
    assert useurl_route("bob#192.0.2.7", cfg).port == 110  # the default port is allowed
    for port in (25, 143, 22, 8110, 65535):
        with pytest.raises(NoDestination, match=rf"port {port} is not allowed in useurl mode "
                                                r"\(useurlports: 110, 995\)"):
            useurl_route(f"bob#192.0.2.7:{port}", cfg)


def test_useurlports_is_configurable(tmp_path):
    conf = tmp_path / "p3scan.conf"
    conf.write_text("scannertype = eicar\nuseurlports = pop3, 1110 pop3s\n")
    assert config.load(["-f", str(conf)]).useurlports == [110, 1110, 995]
    conf.write_text("scannertype = eicar\nuseurlports = 110, 0\n")
    with pytest.raises(config.ConfigError, match="useurlports = 110, 0: expected one or more "
                                                 "ports"):
        config.load(["-f", str(conf)])


# --- p3scan itself ---------------------------------------------------------------------------

def own_addresses() -> list[str]:
    """Every address of this machine's interfaces (IPv4 by ioctl, IPv6 from /proc)."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(sock.fileno(), 0x8915,  # SIOCGIFADDR
                                  struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            found.append(socket.inet_ntoa(raw[20:24]))
    inet6 = Path("/proc/net/if_inet6")
    if inet6.exists():
        for line in inet6.read_text().splitlines():
            hexa, scope = line.split()[0], int(line.split()[3], 16)
            if scope != 0x20:  # link-local needs a zone index, refused anyway
                found.append(str(ipaddress.IPv6Address(bytes.fromhex(hexa))))
    return found


@pytest.mark.parametrize("target", ["127.0.0.1", "127.8.9.10", "0.0.0.0", "[::]", "[::1]",
                                    "[::ffff:127.0.0.1]", "127.1", "localhost"])
def test_p3scan_itself_is_refused(target):
    cfg = make_cfg(useurlports=[110, 995, LISTEN_PORT])
    with pytest.raises(NoDestination, match="is p3scan itself, that would loop"):
        useurl_route(f"bob#{target}:{LISTEN_PORT}", cfg)


def test_every_own_address_is_p3scan_itself():
    cfg = make_cfg(useurlports=[LISTEN_PORT])
    addresses = own_addresses()
    assert "127.0.0.1" in addresses
    for address in addresses:
        target = f"[{address}]" if ":" in address else address
        with pytest.raises(NoDestination, match="p3scan itself"):
            useurl_route(f"bob#{target}:{LISTEN_PORT}", cfg)
        assert destination.is_local_address(address)
    assert not destination.is_local_address("192.0.2.254")  # TEST-NET-1, never assigned here


@pytest.mark.parametrize("answer", [["127.0.0.1"], ["::1"], ["192.0.2.7", "127.0.0.2"],
                                    ["::ffff:127.0.0.1"], ["0.0.0.0"]])
def test_a_name_that_resolves_to_p3scan_is_refused(answer):
    cfg = make_cfg(useurlports=[LISTEN_PORT, 110])
    with fake_dns(lambda host: answer), pytest.raises(NoDestination, match=r"^evil\.example:8110 "
                                                      r"\(.*\) is p3scan itself"):
        useurl_route(f"bob#evil.example:{LISTEN_PORT}", cfg)
    with fake_dns(lambda host: answer):  # other local services stay reachable
        assert useurl_route("bob#evil.example:110", cfg).addresses


def test_a_remote_server_on_the_same_port_is_allowed():
    cfg = make_cfg(useurlports=[LISTEN_PORT])
    route = useurl_route(f"bob#192.0.2.254:{LISTEN_PORT}", cfg)
    assert (route.host, route.port, route.addresses) == ("192.0.2.254", 8110, ("192.0.2.254",))


# --- resolution ------------------------------------------------------------------------------

def test_resolution_has_a_deadline():
    cfg = make_cfg(connecttimeout=1)

    def slow(host: str) -> list[str]:
        time.sleep(4)
        return ["192.0.2.7"]

    started = time.monotonic()
    with fake_dns(slow), pytest.raises(NoDestination,
                                       match=r"cannot resolve slow\.example: no answer "
                                             r"within 1 s"):
        useurl_route("bob#slow.example:110", cfg)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("error", [socket.gaierror(-2, "Name or service not known"),
                                   UnicodeError("label too long"), OSError(101, "unreachable"),
                                   ValueError("x")])
def test_resolver_errors_are_no_destination(cfg, error):
    def fail(host: str) -> list[str]:
        raise error

    with fake_dns(fail), pytest.raises(NoDestination, match=r"^cannot resolve pop\.example: "):
        useurl_route("bob#pop.example", cfg)


@pytest.mark.parametrize("answer", [[], [(socket.AF_UNIX, 1, 0, "", "/x")], [("junk",)], None])
def test_odd_resolver_answers_are_no_destination(cfg, answer):
    with fake_dns(lambda host: answer), pytest.raises(NoDestination, match="cannot resolve"):
        useurl_route("bob#pop.example", cfg)


def test_the_session_connects_to_the_first_answer_only_one_lookup():
    """A second lookup (DNS rebinding) would have answered 127.0.0.1 after the checks."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answers = iter([["127.0.0.1"], ["192.0.2.254"]])
    cfg = make_cfg(useurlports=[port])
    with fake_dns(lambda host: next(answers)) as queries:
        route = useurl_route(f"bob#rebind.example:{port}", cfg)
        with destination.connect(route, 5) as sock:
            peer, _ = listener.accept()
            assert sock.getpeername() == ("127.0.0.1", port)
            peer.close()
    listener.close()
    assert queries == ["rebind.example"]
    assert (route.host, route.addresses, route.address) == (
        "rebind.example", ("127.0.0.1",), f"rebind.example:{port}")


@settings(max_examples=300, deadline=None)
@given(argument=st.text(max_size=120) | st.from_regex(r"[a-z#]{1,5}#[a-z0-9.:\[\]-]{0,30}",
                                                      fullmatch=True),
       answer=st.lists(st.ip_addresses().map(str), max_size=3)
       | st.sampled_from([socket.gaierror(-2, "no"), UnicodeError("x"), OSError(), None]))
def test_useurl_route_raises_nothing_but_no_destination(argument, answer):
    cfg = make_cfg(useurlports=[110, 995, LISTEN_PORT])

    def resolver(host: str) -> Any:
        if isinstance(answer, Exception):
            raise answer
        return answer

    try:
        with fake_dns(resolver):
            route = useurl_route(argument, cfg)
    except NoDestination:
        return
    assert route.addresses and route.port in cfg.useurlports
    if route.port == LISTEN_PORT:
        assert not any(destination.is_local_address(a) for a in route.addresses)


# --- the dialogue before USER ----------------------------------------------------------------

def handshake(data: bytes, cfg: config.Config) -> tuple[Route | None, bytes]:
    """Run useurl_handshake on ``data`` from the client; (its result, everything it said)."""
    ours, theirs = socket.socketpair()
    theirs.sendall(data)
    theirs.shutdown(socket.SHUT_WR)
    try:
        route = useurl_handshake(Stream(ours, "client", 5), cfg)
        ours.close()
        replies = b""
        while chunk := theirs.recv(65536):
            replies += chunk
    finally:
        ours.close()
        theirs.close()
    return route, replies


def test_capa_before_user_gets_the_proxy_list(cfg):
    route, replies = handshake(b"CAPA\r\nUSER bob#192.0.2.7\r\n", cfg)
    assert replies == (b"+OK\r\n+OK Capability list follows\r\nUSER\r\nTOP\r\nUIDL\r\n"
                       b"RESP-CODES\r\nPIPELINING\r\n.\r\n")
    assert route is not None and (route.user, route.host, route.port) == ("bob", "192.0.2.7",
                                                                          110)


def test_capa_without_enabletop_does_not_list_top():
    _route, replies = handshake(b"capa\r\nQUIT\r\n", make_cfg(enabletop=False))
    assert replies == (b"+OK\r\n+OK Capability list follows\r\nUSER\r\nUIDL\r\n"
                       b"RESP-CODES\r\nPIPELINING\r\n.\r\n+OK bye\r\n")


def test_refused_user_gets_err_and_a_log_line_then_another_try(logged):
    cfg = make_cfg(useurlports=[110, 995, LISTEN_PORT])
    route, replies = handshake(b"STAT\r\nUSER bob#127.0.0.1:8110\r\nUSER bob#x..y\r\n"
                               b"USER bob#192.0.2.7:25\r\nUSER bob#192.0.2.7:995\r\n", cfg)
    assert replies.split(b"\r\n")[:5] == [
        b"+OK", b"-ERR Not Identified",
        b"-ERR p3scan: 127.0.0.1:8110 is p3scan itself, that would loop",
        b"-ERR p3scan: the host name has an empty label ('..' or a leading '.')",
        b"-ERR p3scan: port 25 is not allowed in useurl mode (useurlports: 110, 995, 8110)"]
    assert route is not None and route.label == "POP3S"
    assert "Unable to use destination in USER 'bob#127.0.0.1:8110': 127.0.0.1:8110 is " \
           "p3scan itself, that would loop" in logged


def test_a_line_over_the_limit_before_user_ends_with_err(cfg):
    route, replies = handshake(b"USER " + b"a" * MAX_LINE + b"\r\n", cfg)
    assert route is None
    assert replies == b"+OK\r\n-ERR [SYS/PERM] p3scan: command line too long\r\n"


def test_client_leaving_before_user_ends_quietly(cfg):
    assert handshake(b"USER bob#pop", cfg) == (None, b"+OK\r\n")


LINES = st.lists(st.binary(max_size=80).map(lambda b: b.replace(b"\n", b""))
                 | st.sampled_from([b"CAPA", b"USER bob#192.0.2.7", b"USER a#[::1]:995",
                                    b"QUIT", b"USER", b"USER #", b"user x#h\xfc.example"]),
                 max_size=14)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=LINES)
def test_no_client_input_makes_the_handshake_raise(lines):
    cfg = make_cfg()
    with fake_dns(lambda host: ["192.0.2.7"] if len(host) % 2 else ["127.0.0.1"]):
        route, replies = handshake(b"".join(line + b"\r\n" for line in lines), cfg)
    assert replies.startswith(b"+OK\r\n")
    statuses = [line for line in replies.split(b"\r\n")[1:] if line.startswith((b"+", b"-"))]
    assert all(line.startswith((b"+OK", b"-ERR")) for line in statuses)
    assert route is None or route.user
