"""The line layer: bounded lines, byte-exact block copying across any chunking."""

from __future__ import annotations

import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p3scan.lines import LineTooLong, PeerClosed, Stream, copy_block, find_terminator


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
