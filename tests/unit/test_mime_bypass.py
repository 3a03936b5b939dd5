"""MIME that hides an attachment never makes a message look clean (issue 11, item 1).

Each message hides the EICAR string in a way a mail reader (Python's ``email`` parser is
the reference) still reveals.  The splitter either finds it (a more tolerant reading) or
calls the message *unchecked*; never clean.  Both front-ends that split are checked: the
built-in ``eicar`` scanner, and ``demime`` in front of a scanner that only greps each file
for the plain EICAR string (it knows nothing of MIME, as the programs demime is for).
Every limit of the splitter is tested at the limit and one past it.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import time
from pathlib import Path

import pytest

from p3scan.mail import mimesplit
from p3scan.mail.mimesplit import MAX_DEPTH, MAX_HEADER, MAX_MIME_FIELDS, MAX_PARTS, PIECE
from p3scan.mail.spool import Spool
from p3scan.scan.pipeline import INFECTED, UNCHECKED, Job, VirusStep
from p3scan.scan.scanners.basic import Basic
from p3scan.scan.scanners.eicar import Eicar
from tests.support.messages import EICAR

B64 = base64.encodebytes(EICAR).replace(b"\n", b"\r\n")
GREP = "#!/bin/sh\nif grep -rqF 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE' \"$1\"; then\n" \
       "  echo \"$1: Eicar FOUND\"; exit 1\nfi\nexit 0\n"


class _Cfg:
    def __init__(self, **values):
        self.values = {"scanner": None, "virusregexp": ".*: (.*) FOUND", "viruscode": [1],
                       "goodcode": None, "demime": False, **values}

    def __getattr__(self, name):
        return self.values[name]

    def get(self, name):
        return self.values[name]


def scanners(tmp_path: Path) -> dict[str, VirusStep]:
    grep = tmp_path / "grep.sh"
    grep.write_text(GREP)
    grep.chmod(0o755)
    return {"eicar": VirusStep(Eicar(_Cfg()), demime=False),
            "demime": VirusStep(Basic(_Cfg(scanner=str(grep))), demime=True)}


def verdicts(tmp_path: Path, mail: bytes) -> dict[str, str]:
    """kind -> status ("clean" when the step returned None)."""
    result = {}
    for kind, step in scanners(tmp_path).items():
        work = tmp_path / kind
        work.mkdir(exist_ok=True)
        spool = Spool(str(work))
        spool.write(mail)
        spool.close()
        verdict = step.run(Job(spool, str(work), time.monotonic() + 30))
        result[kind] = verdict.status if verdict else "clean"
        spool.remove()
    return result


def reader_sees_eicar(mail: bytes) -> bool:
    """Whether Python's email parser, walking and decoding every part, reveals EICAR."""
    for policy in (email.policy.compat32, email.policy.default):
        for part in email.message_from_bytes(mail, policy=policy).walk():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes) and EICAR in payload:
                return True
    return False


def attachment(headers: bytes = b"", body: bytes = B64) -> bytes:
    return (b"Content-Type: application/octet-stream; name=x.com\r\n" + headers
            + b"Content-Transfer-Encoding: base64\r\n\r\n" + body)


def multipart(*parts: bytes, boundary: bytes = b"b", headers: bytes = b"",
              declared: bytes | None = None) -> bytes:
    declared = boundary if declared is None else declared
    head = (b"Subject: test\r\n" + headers + b"MIME-Version: 1.0\r\nContent-Type: "
            b"multipart/mixed; boundary=\"" + declared + b"\"\r\n\r\n")
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return head + body + b"--" + boundary + b"--\r\n"


TEXT = b"Content-Type: text/plain\r\n\r\nhello\r\n"

# --- tolerant readings: the virus is found ---------------------------------------------------

HIDDEN = {
    "top-level header over MAX_HEADER": multipart(
        TEXT, attachment(), headers=b"X-Filler: " + b"a" * 70 + b"\r\n" * 0
        + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 70) for i in range(1200))),
    "part header over MAX_HEADER": multipart(TEXT, b"Content-Type: application/octet-stream\r\n"
                                             + b"X-Pad: " + b"p" * (MAX_HEADER + 10) + b"\r\n"
                                             + b"Content-Transfer-Encoding: base64\r\n\r\n"
                                             + B64),
    "one header line longer than a piece": multipart(
        TEXT, attachment(headers=b"X-Long: " + b"L" * (3 * PIECE) + b"\r\n")),
    "a non-field line ends the header": (b"Subject: junk\r\nContent-Transfer-Encoding: base64"
                                         b"\r\njunk\r\n" + B64 + b"\r\naGFybWxlc3M=\r\n"),
    "base64 that goes on after padding": attachment(body=b"QQ==" + B64),
    "base64 message/rfc822": multipart(
        TEXT, b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(multipart(TEXT, attachment())).replace(b"\n", b"\r\n")),
    "bare CR line ends": multipart(TEXT, attachment()).replace(b"\r\n", b"\r"),
    "uuencode": (b"Subject: uu\r\nContent-Type: application/octet-stream\r\n"
                 b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 eicar.com\r\n"
                 + b"".join(binascii.b2a_uu(EICAR[i:i + 45]).replace(b"\n", b"\r\n")
                            for i in range(0, len(EICAR), 45)) + b"`\r\nend\r\n"),
    "a CR that ends a piece": (
        b"Subject: t\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\n" + b"A" * (PIECE - 1) + b"\r--b\r\n"
        + attachment() + b"\r\n--b--\r\n"),
    "a form feed after a boundary": (
        b"Subject: t\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"_:_\""
        b"\r\n\r\n--_:_\r\nContent-Type: application/octet-stream; name=x.com\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n--_:_\x0c\r\n\r\n" + B64 + b"\r\n--_:_--\r\n"),
    "base64 on one line longer than a piece": attachment(
        body=base64.b64encode(b"\0" * (3 * PIECE) + EICAR) + b"\r\n"),
}


# Readers differ: here Python's parser shows nothing, but others decode on after padding or
# decode a message/rfc822 that is base64 (RFC 2046 forbids it); the splitter reads the most.
REFERENCE_BLIND = {"base64 that goes on after padding", "base64 message/rfc822"}


@pytest.mark.parametrize("case", sorted(HIDDEN))
def test_a_hidden_virus_is_found(tmp_path, case):
    mail = HIDDEN[case]
    assert EICAR not in mail  # only decoding shows it
    assert reader_sees_eicar(mail) == (case not in REFERENCE_BLIND)
    assert verdicts(tmp_path, mail) == {"eicar": INFECTED, "demime": INFECTED}


def test_a_boundary_after_a_line_longer_than_a_piece_is_found(tmp_path):
    mail = multipart(b"Content-Type: text/plain\r\n\r\n" + b"t" * (2 * PIECE + 7), attachment())
    assert verdicts(tmp_path, mail) == {"eicar": INFECTED, "demime": INFECTED}


# --- what cannot be interpreted: unchecked, never clean --------------------------------------

UNINTERPRETABLE = {
    "multipart without a boundary": multipart(TEXT, attachment()).replace(
        b'; boundary="b"', b""),
    "a boundary that was never declared": multipart(TEXT, attachment(), declared=b"other"),
    "a nested multipart with an undeclared boundary": multipart(
        TEXT, b"Content-Type: multipart/mixed; boundary=inner\r\n\r\n--x\r\n" + attachment()
        + b"\r\n--x--"),
    "conflicting Content-Type fields": (b"Subject: two\r\nContent-Type: text/plain\r\n"
                                        + multipart(TEXT, attachment())[len(b"Subject: test"
                                                                            b"\r\n"):]),
    "conflicting transfer encodings": (b"Subject: two\r\nContent-Transfer-Encoding: 7bit\r\n"
                                       b"Content-Transfer-Encoding: base64\r\n\r\n" + B64),
    "base64 with a stray character": attachment(body=b"QQ" + B64),
    "an encoded-word in Content-Transfer-Encoding": (
        b"Subject: ew\r\nContent-Transfer-Encoding: =?x?q?base64?=\r\n\r\n" + B64),
    "an encoded-word in Content-Type": (
        b"Subject: ew\r\nContent-Type: =?x?q?message/rfc822?=\r\n\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + B64),
    "an encoded-word in a part's Content-Transfer-Encoding": multipart(
        TEXT, b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: "
              b"=?us-ascii?b?YmFzZTY0?=\r\n\r\n" + B64),
    "Content-* fields past MAX_HEADER over MAX_MIME_FIELDS": (
        b"Subject: big\r\n" + b"X-Pad: " + b"p" * MAX_HEADER + b"\r\n"
        + b"Content-Description: " + b"d" * (MAX_MIME_FIELDS + 10) + b"\r\n"
        + b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
          b"\r\n" + B64),
}


@pytest.mark.parametrize("case", sorted(UNINTERPRETABLE))
def test_a_message_that_cannot_be_interpreted_is_unchecked(tmp_path, case):
    mail = UNINTERPRETABLE[case]
    assert EICAR not in mail
    assert verdicts(tmp_path, mail) in (
        {"eicar": UNCHECKED, "demime": UNCHECKED},
        {"eicar": INFECTED, "demime": INFECTED})
    assert verdicts(tmp_path, mail.replace(B64, base64.encodebytes(b"harmless")
                                           .replace(b"\n", b"\r\n")))["eicar"] == UNCHECKED


def test_conflicting_fields_that_only_differ_in_case_are_fine(tmp_path):
    mail = (b"Subject: x\r\nContent-Type: text/plain\r\nContent-type: TEXT/PLAIN\r\n\r\nhi\r\n")
    assert verdicts(tmp_path, mail) == {"eicar": "clean", "demime": "clean"}


def test_an_unknown_transfer_encoding_is_taken_as_it_is(tmp_path):
    mail = b"Subject: x\r\nContent-Transfer-Encoding: x-unknown\r\n\r\nplain text\r\n"
    assert verdicts(tmp_path, mail) == {"eicar": "clean", "demime": "clean"}
    assert verdicts(tmp_path, mail + EICAR + b"\r\n") == {"eicar": INFECTED,
                                                          "demime": INFECTED}


# --- limits: at the limit and one past it ----------------------------------------------------


def many_parts(count: int) -> bytes:
    return multipart(*([TEXT] * (count - 1)), attachment())


@pytest.fixture
def few_parts(monkeypatch):
    """MAX_PARTS made small, so that the scanners run quickly (test_mimesplit.py tests the
    real limit itself)."""
    monkeypatch.setattr(mimesplit, "MAX_PARTS", 40)
    return 40


def test_max_parts_with_the_virus_in_the_last_part(tmp_path, few_parts):
    assert verdicts(tmp_path, many_parts(few_parts)) == {"eicar": INFECTED, "demime": INFECTED}


def test_one_part_more_than_max_parts_is_unchecked(tmp_path, few_parts):
    assert verdicts(tmp_path, many_parts(few_parts + 1)) == {"eicar": UNCHECKED,
                                                             "demime": UNCHECKED}


def nested(levels: int) -> bytes:
    body = attachment()
    for level in range(levels):
        boundary = b"n%d" % level
        body = (b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n--"
                + boundary + b"\r\n" + body + b"\r\n--" + boundary + b"--\r\n")
    return b"Subject: deep\r\n" + body


def test_nesting_at_max_depth_is_found(tmp_path):
    assert verdicts(tmp_path, nested(MAX_DEPTH)) == {"eicar": INFECTED, "demime": INFECTED}


def test_nesting_past_max_depth_is_unchecked(tmp_path):
    assert verdicts(tmp_path, nested(MAX_DEPTH + 1)) == {"eicar": UNCHECKED,
                                                         "demime": UNCHECKED}


def test_a_header_at_max_header_is_whole(tmp_path):
    """The Content-Type ends exactly at MAX_HEADER: kept by the first rule."""
    ctype = b"Content-Type: multipart/mixed; boundary=b\r\n"
    pad = b"X-Pad: " + b"p" * (MAX_HEADER - len(ctype) - len(b"X-Pad: \r\n")) + b"\r\n"
    mail = pad + ctype + b"\r\n--b\r\n" + attachment() + b"\r\n--b--\r\n"
    assert mail.index(b"\r\n\r\n") + 2 == MAX_HEADER
    assert verdicts(tmp_path, mail) == {"eicar": INFECTED, "demime": INFECTED}


def test_content_fields_at_max_mime_fields_are_kept(tmp_path):
    ctype = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
    desc = b"Content-Description: " + b"d" * (MAX_MIME_FIELDS - len(ctype) - 23) + b"\r\n"
    assert len(desc + ctype) == MAX_MIME_FIELDS
    mail = b"X-Pad: " + b"p" * MAX_HEADER + b"\r\n" + desc + ctype + b"\r\n" + B64
    assert verdicts(tmp_path, mail) == {"eicar": INFECTED, "demime": INFECTED}
    clean = mail.replace(B64, base64.encodebytes(b"harmless"))
    assert verdicts(tmp_path, clean)["eicar"] == "clean"


def test_split_error_keeps_the_files_written(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "mail").write_bytes(many_parts(MAX_PARTS + 1))
    with pytest.raises(mimesplit.SplitError) as raised:
        mimesplit.split(tmp_path / "mail", tmp_path / "parts")
    assert len(raised.value.files) == MAX_PARTS
    assert raised.value.problems == [f"more than {MAX_PARTS} MIME parts"]


def test_the_header_of_a_multipart_alone_is_clean(tmp_path):
    """A TOP n 0 reply (mutt's index) has no body: nothing is hidden, nothing unchecked."""
    header = multipart(TEXT, attachment())[:multipart(TEXT, attachment()).index(b"\r\n\r\n")
                                          + 4]
    assert verdicts(tmp_path, header) == {"eicar": "clean", "demime": "clean"}


def test_the_eicar_fast_path_takes_plain_crlf_mail_as_it_is(tmp_path):
    from p3scan.scan.scanners.eicar import needs_decoding

    plain = tmp_path / "plain"
    plain.write_bytes(b"Subject: x\r\nTo: y\r\n\r\n" + b"text\r\n" * 1000)
    assert not needs_decoding(str(plain))
    twice = tmp_path / "twice"
    twice.write_bytes(b"Subject: x\nContent-Type: text/plain\nContent-Type: text/html\n\nx\n")
    assert needs_decoding(str(twice))
