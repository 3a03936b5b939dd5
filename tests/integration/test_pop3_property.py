"""Property: whatever the message, a clean delivery through p3scan equals the original plus
the X-P3Scan header line (inserted before the first empty line, if there is one)."""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p3scan.scan.scanning import CLEAN_HEADER
from tests.support import oracle
from tests.support.fakes import simple_pop3
from tests.support.p3scan_proc import P3scan

pytestmark = pytest.mark.integration

HEADER = CLEAN_HEADER["POP3"].encode()

# Lines drawn from bytes that stress a relay: dots, CR, NUL, 8-bit, and long runs.
line_bytes = st.one_of(
    st.binary(max_size=120).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b".", b"..", b".x", b"", b"\r", b"\0", b"\xff\xfe", b"a\rb"]),
    st.integers(min_value=900, max_value=20000).map(lambda n: b"q" * n),
)
ending = st.sampled_from([b"\r\n", b"\r\n", b"\n"])


@st.composite
def messages(draw) -> bytes:
    header = draw(st.lists(st.tuples(line_bytes, ending), max_size=6))
    body = draw(st.lists(st.tuples(line_bytes, ending), max_size=12))
    separator = draw(st.sampled_from([b"\r\n", b"\n", b""]))
    text = b"".join(a + b for a, b in header) + separator + b"".join(a + b for a, b in body)
    if draw(st.booleans()) and text.endswith(b"\n"):
        text = text.rstrip(b"\r\n") + b"tail without newline"
    return text


@pytest.fixture(scope="module")
def relay(world_tmp):
    mailbox: dict[int, bytes] = {}
    server = simple_pop3(messages=mailbox)
    daemon = P3scan(world_tmp / "property-p3scan", targetip="127.0.0.1",
                    targetport=server.port, maxchilds=2).start()
    yield daemon, mailbox
    daemon.stop()
    server.close()


def retr(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"USER u\r\nPASS p\r\nRETR 1\r\nQUIT\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = b"+OK fake pop3 ready\r\n+OK\r\n+OK\r\n"
    assert data.startswith(head) and data.endswith(b"+OK bye\r\n")
    return data[len(head):-len(b"+OK bye\r\n")]


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=messages())
def test_any_clean_message_arrives_unchanged_but_for_the_header(relay, message):
    daemon, mailbox = relay
    mailbox[1] = message
    assert retr(daemon.port) == oracle.delivered(message, HEADER)
