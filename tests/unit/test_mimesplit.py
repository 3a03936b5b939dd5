"""mimesplit: every MIME part its own decoded file, names that stay inside the directory.

Compared with the stdlib ``email`` parser (``get_payload(decode=True)``) on messages the
stdlib generates.  One difference is by design of the streaming splitter and is allowed
here: a body that ends at a boundary keeps the line end before that boundary (RFC 2046
attaches that CRLF to the delimiter, and the stdlib drops it).  So, precisely:

* a base64 part is byte-identical (the decoder ignores line ends);
* a part of any other encoding (7bit, 8bit, quoted-printable) that is followed by a
  boundary line is the stdlib payload plus one line end, the message's own (CRLF or LF);
  for quoted-printable that line end is a hard line break, decoded as itself;
* the body of a message that is not multipart (top level, or inside message/rfc822 at the
  end of the message) is followed by no boundary and is identical;
* a part whose decoded bytes are empty gets no file;
* the same rule makes an empty epilogue of a nested multipart (the line end before the
  enclosing boundary) a file ``NNN-epilogue`` holding only that line end - see
  :func:`test_empty_epilogue_of_a_nested_multipart_makes_no_file`.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import hashlib
import os
import re
import tempfile
import tracemalloc
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p3scan.mail import mimesplit
from p3scan.mail.mimesplit import MAX_DEPTH, MAX_PARTS, SplitError, safe_name

FILE_NAME = re.compile(r"^\d{3}-[A-Za-z0-9._-]+$")
SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,79}$")
ENCODINGS = ("base64", "quoted-printable", "8bit")
POLICIES = {"CRLF": email.policy.SMTP, "LF": email.policy.default}


def split_bytes(data: bytes, directory: Path) -> list[Path]:
    (directory / "mail").write_bytes(data)
    out = directory / "parts"
    out.mkdir()
    files = mimesplit.split(directory / "mail", out)
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in files)
    return files


# --- generated messages ---------------------------------------------------------------------


FILENAMES = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30),
    st.text("abc.-_/\\", max_size=12),
    st.sampled_from(["a.bin", "a.bin", "../a.bin", "../../etc/passwd", "/etc/passwd",
                     "..\\..\\x.exe", "C:\\Windows\\evil.exe", "..", ".", "", ".hidden",
                     "r\u00e9sum\u00e9.pdf", "\u30d5\u30a1\u30a4\u30eb.txt", "a/b/../c",
                     "-rf", "x" * 120]))
TEXT = st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                        max_size=80), max_size=5).map("\n".join)


@st.composite
def leaves(draw: st.DrawFn) -> EmailMessage:
    part = EmailMessage()
    cte = draw(st.sampled_from(ENCODINGS))
    if draw(st.booleans()):
        part.set_content(draw(TEXT), subtype=draw(st.sampled_from(["plain", "html"])), cte=cte)
        if draw(st.booleans()):
            part.add_header("Content-Disposition", "attachment", filename=draw(FILENAMES))
    else:
        part.set_content(draw(st.binary(max_size=400)), maintype="application",
                         subtype="octet-stream", cte=cte, filename=draw(FILENAMES))
    return part


def entities(depth: int) -> st.SearchStrategy[EmailMessage]:
    return leaves() if depth == 0 else st.one_of(leaves(), containers(depth))


@st.composite
def containers(draw: st.DrawFn, depth: int) -> EmailMessage:
    kind = draw(st.sampled_from(["mixed", "alternative", "rfc822"]))
    outer = EmailMessage()
    if kind == "rfc822":
        inner = draw(entities(depth - 1))
        inner["Subject"] = "forwarded"
        outer.set_content(inner)
    else:
        outer["Content-Type"] = f"multipart/{kind}"
        for part in draw(st.lists(entities(depth - 1), min_size=1, max_size=3)):
            outer.attach(part)
    return outer


def expected_parts(message: email.message.Message, linesep: bytes) -> list[tuple[bytes, str]]:
    """(bytes mimesplit should write, stdlib file name) for every leaf, in order."""
    found: list[tuple[bytes, str]] = []

    def walk(part: email.message.Message, before_boundary: bool) -> None:
        if part.get_content_type() == "message/rfc822":
            walk(part.get_payload(0), before_boundary)
        elif part.is_multipart():
            for child in part.get_payload():
                walk(child, True)
        else:
            data = part.get_payload(decode=True)
            if before_boundary and part.get("Content-Transfer-Encoding", "").lower() != "base64":
                data += linesep
            if data:
                found.append((data, part.get_filename() or ""))

    walk(message, False)
    return found


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entities(3), st.sampled_from(sorted(POLICIES)))
def test_split_matches_the_stdlib_and_names_stay_inside(message, line_ends):
    message["Subject"] = "generated"
    policy = POLICIES[line_ends]
    data = message.as_bytes(policy=policy)
    with tempfile.TemporaryDirectory(prefix="mimesplit-") as scratch:
        check_split(data, Path(scratch), policy.linesep.encode())


def check_split(data: bytes, directory: Path, linesep: bytes) -> None:
    files = split_bytes(data, directory)
    outdir = (directory / "parts").resolve()
    for index, path in enumerate(files):
        assert FILE_NAME.match(path.name), path.name
        assert path.name.startswith(f"{index:03d}-")
        assert not path.name[4:].startswith(".")
        assert path.resolve().parent == outdir
        assert not path.is_symlink()
    written = files
    expected = expected_parts(email.message_from_bytes(data, policy=email.policy.default),
                              linesep)
    assert [path.read_bytes() for path in written] == [body for body, _ in expected]
    for path, (_, filename) in zip(written, expected, strict=True):
        base = re.split(r"[/\\]", filename)[-1]
        if SAFE.match(base):
            assert path.name[4:] == base  # harmless names are kept


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("a.bin", "a.bin"),
    ("../../etc/passwd", "passwd"),
    ("/etc/passwd", "passwd"),
    ("..\\..\\Windows\\evil.exe", "evil.exe"),
    ("dir/", "part"),
    ("..", "part"),
    ("...", "part"),
    (".hidden", "hidden"),
    ("r\u00e9sum\u00e9 final.pdf", "r_sum_final.pdf"),
    ("a\0b\nc", "a_b_c"),
    ("", "part"),
    (None, "part"),
    ("x" * 200, "x" * 80),
])
def test_safe_name(name, expected):
    assert safe_name(name, "part") == expected


def test_duplicate_names_get_their_own_files(tmp_path):
    mail = EmailMessage()
    mail.set_content("body")
    for data in (b"first", b"second", b"third"):
        mail.add_attachment(data, maintype="application", subtype="octet-stream",
                            filename="../a.bin")
    files = split_bytes(mail.as_bytes(), tmp_path)
    assert [path.name for path in files] == ["000-textfile", "001-a.bin", "002-a.bin",
                                             "003-a.bin"]
    assert [path.read_bytes() for path in files[1:]] == [b"first", b"second", b"third"]
    assert all(path.stat().st_mode & 0o077 == 0 for path in files)


# --- line ends and long lines ---------------------------------------------------------------


def test_line_end_before_a_boundary_stays_with_the_body(tmp_path):
    mail = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            b"--b\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n"
            b"--b\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nhard=41\r\n"
            b"--b\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nsoft=\r\n"
            b"--b--\r\n")
    stdlib = [part.get_payload(decode=True) for part in email.message_from_bytes(mail).walk()
              if not part.is_multipart()]
    assert stdlib == [b"hello", b"hello", b"hardA", b"soft"]
    assert [path.read_bytes() for path in split_bytes(mail, tmp_path)] == [
        b"hello\r\n", b"hello", b"hardA\r\n", b"soft"]  # a soft break eats the line end


def test_body_of_a_plain_message_is_exact(tmp_path):
    body = b"no newline at the end"
    [path] = split_bytes(b"Subject: x\n\n" + body, tmp_path)
    assert (path.name, path.read_bytes()) == ("000-textfile", body)


@pytest.mark.parametrize("prefix", [b"", b"x", b"xx"])
def test_quoted_printable_escape_cut_by_a_long_line(tmp_path, prefix):
    """Lines are read in 64 KiB pieces; an escape may straddle two pieces."""
    body = prefix + b"=41" * 30000 + b"=\r\ntail=3D\r\n"
    [path] = split_bytes(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + body,
                         tmp_path)
    assert path.read_bytes() == binascii.a2b_qp(body) == prefix + b"A" * 30000 + b"tail=\r\n"


@pytest.mark.parametrize("padding", [b"", b" ", b"\t\t", b"   "])
def test_base64_on_one_long_line(tmp_path, padding):
    data = os.urandom(150_000)
    body = padding + base64.b64encode(data) + b"\r\n"
    [path] = split_bytes(b"Content-Transfer-Encoding: base64\r\n\r\n" + body, tmp_path)
    assert path.read_bytes() == data


def test_8bit_long_line_in_a_multipart(tmp_path):
    line = bytes(range(32, 256)) * 1000
    mail = (b"Content-Type: multipart/mixed; boundary=b\n\n--b\n"
            b"Content-Transfer-Encoding: 8bit\n\n" + line + b"\n--b--\n")
    [path] = split_bytes(mail, tmp_path)
    assert path.read_bytes() == line + b"\n"


# --- limits ---------------------------------------------------------------------------------


def test_large_attachment_is_split_with_bounded_memory(tmp_path):
    size, block = 20 * 1024 * 1024, os.urandom(57 * 1024)
    digest = hashlib.sha256()
    with open(tmp_path / "mail", "wb") as mail:
        mail.write(b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
                   b"Content-Type: application/octet-stream\r\n"
                   b"Content-Transfer-Encoding: base64\r\n\r\n")
        for start in range(0, size, len(block)):
            chunk = block[: size - start]
            digest.update(chunk)
            mail.write(base64.encodebytes(chunk).replace(b"\n", b"\r\n"))
        mail.write(b"--B--\r\n")
    (tmp_path / "parts").mkdir()
    tracemalloc.start()
    try:
        [path] = mimesplit.split(tmp_path / "mail", tmp_path / "parts")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024
    assert path.stat().st_size == size
    with open(path, "rb") as part:
        assert hashlib.file_digest(part, "sha256").digest() == digest.digest()


def many_parts(count: int) -> bytes:
    return (b"Content-Type: multipart/mixed; boundary=b\n\n"
            + b"--b\nContent-Type: application/octet-stream\n\nx\n" * count + b"--b--\n")


def test_max_parts_is_allowed(tmp_path):
    assert len(split_bytes(many_parts(MAX_PARTS), tmp_path)) == MAX_PARTS


def test_more_than_max_parts_is_an_error(tmp_path):
    with pytest.raises(SplitError, match=f"more than {MAX_PARTS} MIME parts"):
        split_bytes(many_parts(MAX_PARTS + 1), tmp_path)


def nested_multiparts(levels: int, leaf: bytes) -> bytes:
    body = leaf
    for level in range(levels):
        boundary = b"b%d" % level
        body = (b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n--"
                + boundary + b"\r\n" + body + b"\r\n--" + boundary + b"--\r\n")
    return body


BASE64_LEAF = (b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64"
               b"\r\n\r\n" + base64.encodebytes(b"payload " * 20).replace(b"\n", b"\r\n"))


def test_nesting_up_to_max_depth_is_decoded(tmp_path):
    files = split_bytes(nested_multiparts(MAX_DEPTH, BASE64_LEAF), tmp_path)
    assert files[0].read_bytes() == b"payload " * 20


def test_nesting_beyond_max_depth_is_decoded_or_an_error(tmp_path):
    try:
        files = split_bytes(nested_multiparts(MAX_DEPTH + 1, BASE64_LEAF), tmp_path)
    except SplitError:
        return
    assert files[0].read_bytes() == b"payload " * 20


# --- differences from the stdlib parser -----------------------------------------------------


def test_rfc2231_boundary_parameter(tmp_path):
    mail = (b"Content-Type: multipart/mixed; boundary*=us-ascii''b1\r\n\r\n--b1\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b1--\r\n")
    assert email.message_from_bytes(mail).get_payload(0).get_payload(decode=True) == b"hello"
    assert [path.read_bytes() for path in split_bytes(mail, tmp_path)] == [b"hello"]


def test_empty_epilogue_of_a_nested_multipart_makes_no_file(tmp_path):
    inner = EmailMessage()
    inner.set_content("text")
    inner.add_alternative("<p>html</p>", subtype="html")
    outer = EmailMessage()
    outer["Content-Type"] = "multipart/mixed"
    outer.attach(inner)
    names = [path.name for path in split_bytes(outer.as_bytes(), tmp_path)]
    assert names == ["000-textfile", "001-textfile"]

