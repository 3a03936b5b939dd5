"""A spool that a later step rewrites: facts recomputed, the octet count kept relative to the
original, the sendfile path kept; and one intake loop for any block decoder."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from p3scan.mail.codec import CountedDecoder, DotDecoder, send_stuffed
from p3scan.mail.spool import Intake, Spool, SpoolError, SpoolFull
from p3scan.net.stream import PeerClosed, Stream, receive_block
from p3scan.proxy import pop3msg
from p3scan.proxy.pop3 import Pop3Session
from p3scan.proxy.pop3msg import Retrieval
from tests.support import oracle
from tests.support.harness import Harness
from tests.unit.test_spool_codec import chunked, cuts, messages

MARK = b"X-Mark: 1"
FIXTURE = [HealthCheck.function_scoped_fixture]  # tmp_path: each example cleans up after itself


def spooled(directory: str, message: bytes, sizes: Iterable[int] = ()) -> Spool:
    """``message`` taken in as a POP3 server would send it, in pieces of ``sizes``."""
    spool = Spool(directory)
    intake = Intake(spool)
    for piece in chunked(oracle.wire(message) + b"+OK next", list(sizes)):
        intake.feed(piece)
        if intake.done:
            break
    assert b"+OK next".startswith(intake.finish())
    spool.close()
    return spool


def on_the_wire(spool: Spool, header: bytes) -> tuple[bytes, str]:
    """What POP3 delivery sends after its status line, and which way (as ``_deliver``)."""
    direct = spool.wire_parts(header)
    if direct is None:
        out: list[bytes] = []
        send_stuffed(out.append, spool.with_header(header)[1])
        return b"".join(out), "stuffed"
    with open(spool.path, "rb") as handle:
        data = handle.read()
    body = b"".join(data[p[0]:p[0] + p[1]] if isinstance(p, tuple) else p for p in direct[1])
    return body + (b".\r\n" if spool.ends_line else b"\r\n.\r\n"), "sendfile"


def facts(spool: Spool) -> tuple[object, ...]:
    return (spool.size, spool.header_end, spool.header_eol, bytes(spool.header),
            spool.ends_line)


def replace_with(content: bytes):
    def transform(chunks: Iterator[bytes]) -> Iterator[bytes]:
        for _ in chunks:  # read the old file to its end while the new one is written
            pass
        yield from chunked(content, [7, 1, 30])
    return transform


# --- the spool --------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE)
@given(message=messages, sizes=cuts)
def test_rewrite_identity_changes_nothing_on_the_wire(tmp_path, message, sizes):
    spool = spooled(str(tmp_path), message, sizes)
    (before, _), dotless = on_the_wire(spool, MARK), spool.dotless
    old_path = spool.path
    spool.rewrite(lambda chunks: chunks)
    assert on_the_wire(spool, MARK)[0] == before
    assert before == oracle.wire(oracle.insert_header(oracle.content(message), MARK))
    assert spool.dotless == dotless and spool.original_size == spool.size
    assert spool.path != old_path and os.listdir(tmp_path) == [os.path.basename(spool.path)]
    spool.remove()


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE)
@given(message=messages, new=messages, sizes=cuts)
def test_rewrite_recomputes_every_fact_as_if_spooled_fresh(tmp_path, message, new, sizes):
    spool = spooled(str(tmp_path), message, sizes)
    original = spool.size
    spool.rewrite(replace_with(new))
    fresh = spooled(str(tmp_path), new)
    assert facts(spool) == facts(fresh) and spool.size == len(new)
    assert spool.dotless == (not new.startswith(b".") and b"\n." not in new)
    assert spool.original_size == original
    assert on_the_wire(spool, MARK)[0] == oracle.wire(oracle.insert_header(new, MARK))
    spool.remove()
    fresh.remove()


def test_rewrite_keeps_the_first_original_size_and_drops_old_headers(tmp_path):
    spool = spooled(str(tmp_path), b"Subject: one\r\n\r\nbody\r\n")
    assert spool.headers()["Subject"] == "one"
    spool.rewrite(replace_with(b"Subject: two\n\nlonger body\n"))
    spool.rewrite(replace_with(b"Subject: three\r\n\r\nb\r\n"))
    assert spool.original_size == len(b"Subject: one\r\n\r\nbody\r\n")
    assert spool.headers()["Subject"] == "three"
    assert stat.S_IMODE(os.stat(spool.path).st_mode) == 0o600
    assert os.path.dirname(spool.path) == str(tmp_path) and len(os.listdir(tmp_path)) == 1
    spool.remove()
    assert os.listdir(tmp_path) == []


def test_a_rewritten_message_without_separator_gets_no_header(tmp_path):
    spool = spooled(str(tmp_path), b"Subject: x\r\n\r\n.dot\r\n")
    assert spool.header_end == 12 and not spool.dotless
    spool.rewrite(replace_with(b"Subject: x\r\nno body at all"))
    assert spool.header_end is None and not spool.ends_line and spool.dotless
    assert bytes(spool.header) == b"Subject: x\r\nno body at all"
    assert on_the_wire(spool, MARK) == (b"Subject: x\r\nno body at all\r\n.\r\n", "sendfile")
    spool.remove()


def test_a_failed_rewrite_leaves_the_message_as_it_was(tmp_path):
    spool = spooled(str(tmp_path), b"A: b\r\n\r\nbody\r\n")
    before, path = facts(spool), spool.path

    def broken(chunks: Iterator[bytes]) -> Iterator[bytes]:
        yield b"A: c\r\n\r\n"
        raise ValueError("the step failed")
    with pytest.raises(ValueError):
        spool.rewrite(broken)
    spool.min_free_kb = 10**15
    with pytest.raises(SpoolFull):
        spool.rewrite(lambda chunks: chunks)
    assert facts(spool) == before and spool.path == path
    assert os.listdir(tmp_path) == [os.path.basename(path)]
    assert b"".join(spool.chunks()) == b"A: b\r\n\r\nbody\r\n"
    spool.remove()


def test_an_incomplete_spool_cannot_be_rewritten(tmp_path):
    spool = Spool(str(tmp_path), min_free_kb=10**15)
    with pytest.raises(SpoolFull):
        spool.write(b"x")
    with pytest.raises(SpoolError):
        spool.rewrite(lambda chunks: chunks)
    spool.remove()


# --- the intake: any decoder, one loop ----------------------------------------------------------

@pytest.mark.parametrize("data,dotless", [(b"A: b\r\n\r\n.x\r\n", False),
                                          (b"A: b\r\n\r\nx.\r\n", True)])
def test_intake_takes_a_length_counted_block(tmp_path, data, dotless):
    spool = Spool(str(tmp_path))
    intake = Intake(spool, CountedDecoder(len(data)))
    for piece in chunked(data + b"NEXT", [5, 11]):
        intake.feed(piece)
        if intake.done:
            break
    assert intake.done and intake.finish() == b"NEXT"
    spool.close()
    assert b"".join(spool.chunks()) == data and spool.dotless == dotless
    spool.remove()


def test_one_receive_loop_serves_any_decoder(tmp_path):
    ours, theirs = socket.socketpair()
    stream, beats = Stream(ours, "server", 5), []
    theirs.sendall(b"12345..\r\n+OK 2\r\n..a\r\n.\r\nQUIT\r\n")
    counted, dotted = Spool(str(tmp_path)), Spool(str(tmp_path))
    receive_block(stream, Intake(counted, CountedDecoder(5)), beat=lambda: beats.append(1))
    assert stream.readline() == b"..\r\n" and stream.readline() == b"+OK 2\r\n"
    receive_block(stream, Intake(dotted, DotDecoder()), beat=lambda: beats.append(1))
    assert stream.readline() == b"QUIT\r\n" and beats
    theirs.close()
    cut = Spool(str(tmp_path))
    with pytest.raises(PeerClosed, match="went away"):
        receive_block(stream, Intake(cut), beat=lambda: None, closed="went away")
    for spool in (counted, dotted):
        spool.close()
    assert b"".join(counted.chunks()) == b"12345" and b"".join(dotted.chunks()) == b".a\r\n"
    for spool in (counted, dotted, cut):
        spool.remove()
    stream.close()


# --- rewrite, then deliver over POP3 ------------------------------------------------------------

@pytest.fixture
def used(monkeypatch) -> list[str]:
    """Which way each delivery went: ``sendfile`` (the file as is) or ``stuffed``."""
    ways: list[str] = []
    send_parts, send_stuffed_ = Stream.send_parts, pop3msg.send_stuffed

    def spy_parts(self, path, parts):
        ways.append("sendfile")
        send_parts(self, path, parts)

    def spy_stuffed(*args, **kwargs):
        ways.append("stuffed")
        send_stuffed_(*args, **kwargs)
    monkeypatch.setattr(Stream, "send_parts", spy_parts)
    monkeypatch.setattr(pop3msg, "send_stuffed", spy_stuffed)
    return ways


def rewrite_before_answer(monkeypatch, content: bytes) -> None:
    """Every message is rewritten after its scan, as a later pipeline step would."""
    answer = Retrieval._answer

    def rewritten(self, ctx, outcome):
        ctx.spool.rewrite(replace_with(content))
        answer(self, ctx, outcome)
    monkeypatch.setattr(Retrieval, "_answer", rewritten)


@pytest.mark.parametrize("original,new,way", [
    # the original has a dot line, the rewrite none: the file is its own wire form
    (b"Subject: x\r\n\r\n.dot\r\nbody\r\n", b"X-Spam: yes\r\nSubject: x\r\n\r\ndot\r\n",
     "sendfile"),
    # the rewrite adds dot lines (a lone "." too): it must go out stuffed
    (b"Subject: x\n\nbody\n", b"Subject: x\n\n.\n..two\nbody grew\n", "stuffed"),
    # no header/body separator after the rewrite: nothing is inserted
    (b"Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\nno separator", "sendfile"),
])
def test_a_rewritten_message_is_delivered_byte_exact(monkeypatch, used, original, new, way):
    rewrite_before_answer(monkeypatch, new)
    pop = Harness(Pop3Session)
    pop.start(b"+OK ready\r\n")
    pop.client_says(b"RETR 1\r\n")
    assert pop.server_hears() == b"RETR 1\r\n"
    pop.server_says(b"+OK 900 octets\r\n" + oracle.wire(original))  # the server's own count
    header = pop.scanning.clean_header("POP3")
    delivered = oracle.insert_header(oracle.content(new), header)
    octets = 900 + len(oracle.insert_header(new, header)) - len(original)
    expected = b"+OK %d octets\r\n" % octets + oracle.wire(delivered)
    assert pop.client_hears(len(expected)) == expected
    pop.client_says(b"NOOP\r\n")
    assert pop.server_hears() == b"NOOP\r\n"
    pop.server_says(b"+OK\r\n")
    assert pop.client_hears() == b"+OK\r\n"  # nothing more was sent before it
    assert used == [way]
    pop.finish()


def test_status_with_size_is_relative_to_what_the_server_counted():
    assert pop3msg.status_with_size(b"+OK 900 octets\r\n", added=-10) == b"+OK 890 octets\r\n"
