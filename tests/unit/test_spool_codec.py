"""The spool's header detection and the dot-(un)stuffing codec, for any chunking."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p3scan.mail.codec import DotDecoder, DotEncoder
from p3scan.mail.spool import Spool, SpoolFull, header_text
from tests.support import oracle

messages = st.lists(st.sampled_from([b"A: b", b"", b".", b"..x", b"\r", b"x" * 300, b"\0\xff"])
                    .flatmap(lambda line: st.sampled_from([line + b"\r\n", line + b"\n"])),
                    max_size=15).map(b"".join)
cuts = st.lists(st.integers(min_value=1, max_value=40), max_size=30)


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, start = [], 0
    for size in sizes:
        pieces.append(data[start:start + size])
        start += size
    return [piece for piece in pieces + [data[start:]] if piece]


@settings(max_examples=300, deadline=None)
@given(message=messages, sizes=cuts)
def test_decoder_inverts_the_wire_form_for_any_chunking(message, sizes):
    wire = oracle.wire(message) + b"+OK next"
    decoder = DotDecoder()
    out = b""
    for piece in chunked(wire, sizes):
        assert not decoder.done
        out += decoder.feed(piece)
        if decoder.done:
            break
    assert decoder.done and out == oracle.content(message)
    assert b"+OK next".startswith(decoder.leftover)  # what followed the block is kept


@settings(max_examples=300, deadline=None)
@given(message=messages, sizes=cuts)
def test_encoder_produces_the_wire_form_for_any_chunking(message, sizes):
    encoder = DotEncoder()
    out = b"".join(encoder.feed(piece) for piece in chunked(oracle.content(message), sizes))
    assert out + encoder.end() == oracle.wire(message)


@settings(max_examples=300, deadline=None)
@given(message=messages, sizes=cuts)
def test_spool_finds_the_end_of_the_header_for_any_chunking(message, sizes):
    spool = Spool(tempfile.gettempdir())
    for piece in chunked(message, sizes):
        spool.write(piece)
    spool.close()
    marked = oracle.insert_header(message, b"MARK")
    if marked == message:
        assert spool.header_end is None
    else:
        assert spool.header_end is not None
        inserted = message[:spool.header_end] + b"MARK" + spool.header_eol \
            + message[spool.header_end:]
        assert inserted == marked
        assert bytes(spool.header) == message[:spool.header_end]
    assert open(spool.path, "rb").read() == message
    spool.remove()


def test_spool_file_is_private_and_removed(tmp_path):
    spool = Spool(str(tmp_path))
    spool.write(b"Subject: x\r\n\r\nbody\r\n")
    spool.close()
    assert stat.S_IMODE(os.stat(spool.path).st_mode) == 0o600
    assert list(spool.chunks(0, 7)) == [b"Subject"]
    spool.remove()
    assert os.listdir(tmp_path) == []


def test_spool_refuses_to_fill_the_disk(tmp_path):
    spool = Spool(str(tmp_path), min_free_kb=10**15)
    with pytest.raises(SpoolFull):
        spool.write(b"x")
    spool.remove()


def test_header_values_are_decoded_unfolded_and_bounded(tmp_path):
    spool = Spool(str(tmp_path))
    spool.write(b"Subject: =?utf-8?q?caf=C3=A9?=\r\n folded\r\nFrom: " + b"A" * 6000
                + b"\r\nTo: a\x07b@x\r\n\r\nbody\r\n")
    spool.close()
    headers = spool.headers()
    assert header_text(headers, "Subject") == "caf\u00e9 folded"
    assert len(header_text(headers, "From")) == 256
    assert header_text(headers, "To") == "ab@x"
    assert header_text(headers, "Cc") is None
    spool.remove()
