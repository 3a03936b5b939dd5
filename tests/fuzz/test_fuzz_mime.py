"""Fuzz the MIME path: hostile structures with the EICAR string hidden in one encoded part.

Generated messages: nested multiparts and message/rfc822 parts, boundaries declared in
every legal and several illegal ways (quoted, RFC 2231 continuations, upper case, never
declared, missing, a different one used), header fields up to 70 KB and folded, CRLF, LF
or bare-CR line ends, and one leaf carrying EICAR in base64 (wrapped, one line, with junk
characters, unpadded), quoted-printable (escaped, soft line breaks, lower-case hex) or
uuencode (which Python's parser decodes too).

The reference is what a mail client would show: Python's ``email`` parser, in compat32 and
in default mode, walking the message and decoding each part.  The property: whenever that
reveals EICAR, the built-in ``eicar`` scanner (``mimesplit.split`` underneath) does not
report the message clean (infected, a failure or "unchecked" are all acceptable), and the
scan never raises.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p3scan.scan.scanners.base import ScanContext, ScanResult
from p3scan.scan.scanners.eicar import Eicar
from tests.fuzz.profile import scaled
from tests.fuzz.wire import event, note
from tests.support.harness import test_config
from tests.support.messages import EICAR

FILLER_SIZES = [0, 0, 0, 300, 70_000]
LEAF_TYPES = ["text/plain", "text/html", "application/octet-stream", "image/png",
              "application/pdf", "application/x-msdownload"]
OTHER_ENCODINGS = ["7bit", "8bit", "base64", "quoted-printable"]
SPELLINGS = {"base64": ["base64", "BASE64", "Base64"],
             "quoted-printable": ["quoted-printable", "Quoted-Printable", "QUOTED-PRINTABLE"],
             "x-uuencode": ["x-uuencode", "uuencode", "x-uue", "uue"]}
MESSAGE_TYPES = ["message/rfc822", "message/rfc822", "MESSAGE/RFC822", "message/global",
                 "message/x-anything"]  # the email parser nests every message/* but two
BOUNDARY_MODES = ["quoted", "quoted", "token", "rfc2231", "upper", "spaces", "folded",
                  "missing", "undeclared", "twice"]
DELIMITERS = ["plain", "plain", "trailing blanks"]


@dataclass
class Leaf:
    ctype: str
    encoding: str
    payload: bytes
    name: str | None
    headers: dict = field(default_factory=dict)
    carrier: bool = False
    style: str = "plain"


@dataclass
class Multi:
    subtype: str
    boundary: str
    parts: list
    mode: str
    delimiter: str
    closed: bool
    preamble: bytes
    epilogue: bytes
    headers: dict = field(default_factory=dict)


@dataclass
class Inner:
    entity: object
    encoding: str
    headers: dict = field(default_factory=dict)
    ctype: str = "message/rfc822"


# --- generation -------------------------------------------------------------------------------


@st.composite
def header_extras(draw: st.DrawFn) -> dict:
    return {"filler": draw(st.sampled_from(FILLER_SIZES)),
            "filler_first": draw(st.booleans()),
            "folded_filler": draw(st.booleans()),
            "name_case": draw(st.sampled_from(["Content-Type", "content-type", "CONTENT-TYPE"])),
            "after_colon": draw(st.sampled_from([" ", " ", "", "\t", "  "])),
            "comment": draw(st.booleans()),
            "second_type": draw(st.sampled_from([None, None, None, "text/plain"])),
            "cte_twice": draw(st.sampled_from([None, None, None, "7bit before", "7bit after"]))}


BOUNDARY_TEXT = st.one_of(
    st.text("abcXYZ0189'()+_,-./:=?", min_size=1, max_size=30).filter(
        lambda text: not text.endswith(" ")),
    st.sampled_from(["b", "=_Part_0_1", "----=_NextPart_000", "simple boundary", "b1", "b12"]),
)


@st.composite
def entities(draw: st.DrawFn, depth: int = 0):
    kinds = ["leaf", "leaf", "multi", "multi", "rfc822"] if depth < 4 else ["leaf"]
    kind = draw(st.sampled_from(kinds))
    extras = draw(header_extras())
    if kind == "leaf":
        return Leaf(draw(st.sampled_from(LEAF_TYPES)), draw(st.sampled_from(OTHER_ENCODINGS)),
                    draw(st.binary(max_size=60)), draw(st.sampled_from([None, "a.bin", "x.txt"])),
                    extras)
    if kind == "multi":
        return Multi(draw(st.sampled_from(["mixed", "alternative", "related", "signed", "x"])),
                     draw(BOUNDARY_TEXT),
                     draw(st.lists(entities(depth + 1), min_size=1, max_size=3)),
                     draw(st.sampled_from(BOUNDARY_MODES)), draw(st.sampled_from(DELIMITERS)),
                     draw(st.booleans()) or draw(st.booleans()),
                     draw(st.sampled_from([b"", b"This is MIME.", b"--not a boundary"])),
                     draw(st.sampled_from([b"", b"epilogue text"])), extras)
    return Inner(draw(entities(depth + 1)), draw(st.sampled_from(["7bit", "base64",
                                                                  "quoted-printable"])),
                 extras, draw(st.sampled_from(MESSAGE_TYPES)))


def leaves(node) -> list[Leaf]:
    if isinstance(node, Leaf):
        return [node]
    if isinstance(node, Multi):
        return [leaf for part in node.parts for leaf in leaves(part)]
    return leaves(node.entity)


@dataclass
class Spec:
    """A generated message: its tree (a compact repr for failure reports) and line end."""

    root: object
    eol: bytes

    def render(self) -> bytes:
        eol = self.eol
        return (b"From: eve@example.test" + eol + b"To: bob@example.test" + eol
                + b"Subject: fuzz" + eol + b"MIME-Version: 1.0" + eol + render(self.root, eol))


@st.composite
def infected_messages(draw: st.DrawFn) -> Spec:
    root = draw(entities())
    carrier = draw(st.sampled_from(leaves(root)))
    carrier.carrier = True
    carrier.encoding = draw(st.sampled_from(["base64", "base64", "quoted-printable",
                                             "quoted-printable", "x-uuencode"]))
    carrier.payload = draw(st.binary(max_size=6)) + EICAR + draw(st.binary(max_size=6))
    carrier.style = draw(st.sampled_from(
        ["plain", "one line", "junk characters", "unpadded", "short lines"]
        if carrier.encoding == "base64" else
        ["plain", "all escaped", "soft breaks", "lower-case hex", "soft breaks and escapes"]
        if carrier.encoding == "quoted-printable" else ["plain"]))
    carrier.headers["spelling"] = draw(st.sampled_from(SPELLINGS[carrier.encoding]))
    carrier.headers["junk"] = draw(st.lists(st.integers(0, 200), max_size=6))
    carrier.headers["width"] = draw(st.integers(2, 80))
    return Spec(root, draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\n", b"\r"])))


# --- rendering --------------------------------------------------------------------------------


def encode(leaf: Leaf, eol: bytes) -> bytes:
    data, style, width = leaf.payload, leaf.style, leaf.headers.get("width", 76)
    if leaf.encoding == "base64":
        text = base64.b64encode(data)
        if style == "unpadded":
            text = text.rstrip(b"=")
        if style == "junk characters":
            for position in leaf.headers.get("junk", []):
                cut = position % (len(text) + 1)
                text = text[:cut] + b" !*\t"[position % 4:position % 4 + 1] + text[cut:]
        size = len(text) if style == "one line" else (width if style == "short lines" else 76)
        return eol.join(text[i:i + size] for i in range(0, len(text), size)) + eol
    if leaf.encoding == "x-uuencode":
        lines = [b"begin 644 eicar.com"] + [binascii.b2a_uu(data[i:i + 45]).rstrip(b"\n")
                                             for i in range(0, len(data), 45)]
        return eol.join([*lines, b"`", b"end"]) + eol
    if leaf.encoding == "quoted-printable":
        if style == "plain":
            return binascii.b2a_qp(data).replace(b"\n", eol) + eol
        escaped = b"".join(b"=%02X" % byte if style in ("all escaped", "lower-case hex",
                                                         "soft breaks and escapes")
                           or not 33 <= byte <= 126 or byte == 61 else bytes([byte])
                           for byte in data)
        if style == "lower-case hex":
            escaped = escaped.lower()
        if "soft breaks" in style:
            pieces, line = [], b""
            for unit in _qp_units(escaped):
                if len(line) + len(unit) > width:
                    pieces.append(line + b"=")
                    line = b""
                line += unit
            escaped = eol.join([*pieces, line])
        return escaped + eol
    return data.replace(b"\r", b"").replace(b"\n", eol) + eol


def _qp_units(text: bytes) -> list[bytes]:
    units, index = [], 0
    while index < len(text):
        size = 3 if text[index:index + 1] == b"=" else 1
        units.append(text[index:index + size])
        index += size
    return units


def header_block(node, ctype: str, eol: bytes, more: list[bytes]) -> bytes:
    extras = node.headers
    name = extras.get("name_case", "Content-Type").encode()
    if extras.get("comment"):
        kind, sep, params = ctype.partition(";")
        ctype = kind + " (a comment)" + sep + params
    lines = [name + b":" + extras.get("after_colon", " ").encode() + ctype.encode()] + more
    if extras.get("second_type"):
        lines.append(b"Content-Type: " + extras["second_type"].encode())
    twice = extras.get("cte_twice")
    if twice and more:
        lines.insert(1 if twice == "7bit after" else 0, b"Content-Transfer-Encoding: 7bit")
    size = extras.get("filler", 0)
    if size:
        if extras.get("folded_filler"):
            filler = b"X-Filler: start" + b"".join(eol + b" " + b"f" * 70
                                                  for _ in range(size // 72))
        else:
            filler = b"X-Filler: " + b"f" * size
        lines = [filler, *lines] if extras.get("filler_first") else [*lines, filler]
    return eol.join(lines) + eol + eol


def boundary_parameter(node: Multi, eol: bytes) -> str:
    b = node.boundary
    return {
        "quoted": f'; boundary="{b}"',
        "token": f"; boundary={b}" if all(c.isalnum() or c in "'+_-." for c in b)
        else f'; boundary="{b}"',
        "rfc2231": f'; boundary*0="{b[:len(b) // 2]}"; boundary*1="{b[len(b) // 2:]}"',
        "upper": f'; BOUNDARY="{b}"',
        "spaces": f'; boundary = "{b}"',
        "folded": f';{eol.decode()}\tboundary="{b}"',
        "missing": "",
        "undeclared": f'; boundary="other-{b}"',
        "twice": f'; boundary="{b}"; boundary="second-{b}"',
    }[node.mode]


def render(node, eol: bytes) -> bytes:
    if isinstance(node, Leaf):
        ctype = node.ctype + (f'; name="{node.name}"' if node.name else "")
        spelling = node.headers.get("spelling", node.encoding)
        more = [b"Content-Transfer-Encoding: " + spelling.encode()]
        if node.name:
            more.append(b'Content-Disposition: attachment; filename="'
                        + node.name.encode() + b'"')
        return header_block(node, ctype, eol, more) + encode(node, eol)
    if isinstance(node, Inner):
        inner = render(node.entity, eol)
        if node.encoding == "base64":
            body = base64.encodebytes(inner).replace(b"\n", eol)
        elif node.encoding == "quoted-printable":
            body = binascii.b2a_qp(inner).replace(b"\n", eol) + eol
        else:
            body = inner
        more = [b"Content-Transfer-Encoding: " + node.encoding.encode()]
        return header_block(node, node.ctype, eol, more) + body
    delimiter = b"--" + node.boundary.encode()
    after = b" \t" if node.delimiter == "trailing blanks" else b""
    body = node.preamble + eol if node.preamble else b""
    for part in node.parts:
        body += delimiter + after + eol + render(part, eol)
    if node.closed:
        body += delimiter + b"--" + after + eol
    body += node.epilogue + eol if node.epilogue else b""
    ctype = f"multipart/{node.subtype}" + boundary_parameter(node, eol)
    return header_block(node, ctype, eol, []) + body


# --- the reference and the property -----------------------------------------------------------


def client_reveals(data: bytes) -> str | None:
    """Which email-parser mode decodes a part holding EICAR, if any."""
    for name, policy in (("compat32", email.policy.compat32), ("default", email.policy.default)):
        try:
            message = email.message_from_bytes(data, policy=policy)
            parts = list(message.walk())
        except Exception:  # a parser failure reveals nothing
            continue
        for part in parts:
            if part.is_multipart():
                continue
            try:
                payload = part.get_payload(decode=True)
            except Exception:
                continue
            if isinstance(payload, bytes) and EICAR in payload:
                return f"{name}: {part.get_content_type()} part"
    return None


def eicar_scan(data: bytes) -> ScanResult:
    directory = Path(tempfile.mkdtemp(prefix="p3scan-fuzz-mime-"))
    try:
        (directory / "mail").write_bytes(data)
        (directory / "work").mkdir()
        context = ScanContext(time.monotonic() + 60, str(directory / "work"))
        return Eicar(test_config()).scan(str(directory / "mail"), context)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def check(data: bytes) -> None:
    revealed = client_reveals(data)
    result = eicar_scan(data)
    event("a mail client reveals EICAR" if revealed else "a mail client shows no EICAR")
    note(f"{len(data)} bytes; a mail client reveals EICAR: {revealed}; scanner: {result}")
    if revealed:
        assert result != ScanResult.clean(), (
            f"a mail client shows EICAR ({revealed}) but the eicar scanner says clean")


def _carrier(encoding: str = "base64", **headers: object) -> Leaf:
    return Leaf("text/plain", encoding, EICAR, None, dict(headers), carrier=True)


# What this target found (issue 11), kept as fixed cases.
KNOWN = {
    "Content-Type after 64 KB of header": Spec(_carrier(filler=70_000, filler_first=True),
                                               b"\r\n"),
    "uuencode": Spec(_carrier("x-uuencode"), b"\r\n"),
    "quoted-printable message/rfc822": Spec(Inner(_carrier(), "quoted-printable"), b"\n"),
    "message/rfc822 (a comment)": Spec(Inner(_carrier(), "7bit", {"comment": True}), b"\r\n"),
    "message/x-anything": Spec(Inner(_carrier(), "7bit", {}, "message/x-anything"), b"\r\n"),
}


@pytest.mark.parametrize("case", KNOWN)
def test_known_hiding_places(case):
    check(KNOWN[case].render())


@scaled(2.0)
@given(spec=infected_messages())
def test_eicar_that_a_mail_client_would_show_is_never_clean(spec):
    check(spec.render())


@scaled(0.5)
@given(spec=infected_messages(), cut=st.integers(0, 10**6), junk=st.binary(max_size=40))
def test_damaged_messages_are_never_clean_when_a_client_shows_eicar(spec, cut, junk):
    """The same messages, cut short or with junk spliced in at a random place."""
    data = spec.render()
    position = cut % (len(data) + 1)
    check(data[:position] + junk + data[position + len(junk) // 2:])
