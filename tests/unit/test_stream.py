"""The stream layer: bounded lines, byte-exact block copying across any chunking, and the
upgrade to TLS that refuses plaintext sent ahead of the handshake."""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from p3scan.net.stream import (
    LineTooLong,
    PeerClosed,
    Stream,
    TlsInjection,
    copy_block,
    find_terminator,
    wait_readable,
)


def pair(timeout: float = 5) -> tuple[Stream, socket.socket]:
    ours, theirs = socket.socketpair()
    return Stream(ours, "server", timeout), theirs


def feed(sock: socket.socket, chunks: list[bytes], close: bool = True) -> threading.Thread:
    def run() -> None:
        for chunk in chunks:
            sock.sendall(chunk)
        if close:
            sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_readline_keeps_line_ends_nul_bytes_and_lone_cr():
    stream, peer = pair()
    feed(peer, [b"a\0b\rc\r\n", b"bare lf\n", b"partial"]).join()
    assert stream.readline() == b"a\0b\rc\r\n"
    assert stream.readline() == b"bare lf\n"
    assert stream.readline() == b"partial"
    assert stream.readline() == b""


def test_readline_is_capped():
    stream, peer = pair()
    feed(peer, [b"x" * 100 + b"\r\n"]).join()
    with pytest.raises(LineTooLong) as caught:
        stream.readline(limit=50)
    assert caught.value.side == "server"


def test_terminator_found_across_a_chunk_boundary():
    assert find_terminator(b"a\r\n", b".\r\nrest") == 3
    assert find_terminator(b"\r", b"\n.\r\n") == 4
    assert find_terminator(b"", b"..\r\n") == -1
    assert find_terminator(b"\n", b".\n") == 2


def test_copy_block_stops_at_the_terminator_and_keeps_what_follows():
    stream, peer = pair()
    feed(peer, [b"one\r\n..two\r\n.\r\n+OK next\r\n"]).join()
    out: list[bytes] = []
    assert copy_block(stream, out.append) == len(b"one\r\n..two\r\n.\r\n")
    assert b"".join(out) == b"one\r\n..two\r\n.\r\n"
    assert stream.readline() == b"+OK next\r\n"


def test_copy_block_raises_when_the_peer_closes_early():
    stream, peer = pair()
    feed(peer, [b"one\r\ntwo\r\n"]).join()
    out: list[bytes] = []
    with pytest.raises(PeerClosed):
        copy_block(stream, out.append)
    assert b"".join(out) == b"one\r\ntwo\r\n"  # what came was relayed, no terminator added


lines = st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=30)


@settings(max_examples=200, deadline=None)
@given(body=lines, cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=20))
def test_copy_block_is_byte_exact_for_any_content_and_chunking(body, cuts):
    wire = b"".join(b"." + line + b"\r\n" if line.startswith(b".") else line + b"\r\n"
                    for line in body) + b".\r\n"
    chunks, start = [], 0
    for cut in cuts:
        chunks.append(wire[start:start + cut])
        start += cut
    chunks.append(wire[start:])
    stream, peer = pair()
    thread = feed(peer, [c for c in chunks if c] + [b"AFTER"])
    out: list[bytes] = []
    copy_block(stream, out.append)
    thread.join()
    assert b"".join(out) == wire
    assert stream.take() + stream.readline() == b"AFTER"


# --- STLS / STARTTLS: the upgrade in place --------------------------------------------------


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a throwaway certificate for localhost, and a client trusting it."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@pytest.fixture
def upgrading_client(contexts) -> Iterator[tuple[Stream, socket.socket, ssl.SSLContext]]:
    """Our client-side stream, the client's socket, and the client's TLS context."""
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    yield Stream(ours, "client", 5), theirs, contexts[1]
    ours.close()
    theirs.close()


def client_handshake(sock: socket.socket, context: ssl.SSLContext,
                     then: bytes) -> tuple[threading.Thread, list[ssl.SSLSocket]]:
    """The client's side of the handshake, in a thread; then it sends ``then`` over TLS."""
    done: list[ssl.SSLSocket] = []

    def run() -> None:
        tls = context.wrap_socket(sock, server_hostname="localhost")
        tls.sendall(then)
        done.append(tls)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def test_start_tls_refuses_plaintext_pipelined_behind_stls(upgrading_client, contexts):
    stream, client, _ = upgrading_client
    client.sendall(b"STLS\r\nUSER injected\r\n")  # one packet: CVE-2011-0411
    assert stream.readline() == b"STLS\r\n"
    with pytest.raises(TlsInjection, match="plaintext") as caught:
        stream.start_tls(contexts[0], server_side=True)
    assert caught.value.side == "client"
    assert not stream.tls and stream.peek() == b"USER injected\r\n"  # nothing consumed


def test_start_tls_upgrades_in_place_and_reads_through_tls(upgrading_client, contexts):
    stream, client, client_context = upgrading_client
    client.sendall(b"STLS\r\n")
    assert stream.readline() == b"STLS\r\n"
    thread, done = client_handshake(client, client_context, b"USER bob\r\n")
    stream.start_tls(contexts[0], server_side=True)
    assert stream.tls
    assert stream.readline() == b"USER bob\r\n"
    thread.join(5)
    stream.write(b"+OK\r\n")
    assert done[0].recv(10) == b"+OK\r\n"


def test_bytes_decrypted_ahead_count_as_pending_and_readable(upgrading_client, contexts):
    stream, client, client_context = upgrading_client
    thread, _done = client_handshake(client, client_context, b"x" * 1000)
    stream.start_tls(contexts[0], server_side=True)
    thread.join(5)
    assert stream.sock.recv(10) == b"x" * 10  # the rest of the record stays in the TLS layer
    assert stream.tls_pending() == stream.pending() == 990
    assert select.select([stream], [], [], 0)[0] == []  # what select() alone would miss
    assert wait_readable([stream], 0) == [stream]
    assert stream.fill() == 990
