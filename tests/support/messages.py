"""Test messages (CRLF line ends, as a POP3 server serves them)."""

from __future__ import annotations

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def message(subject: str = "hello", body: bytes = b"Hello Bob,\r\nsee you.\r\n",
            sender: str = "alice@example.test", to: str = "bob@example.test",
            extra_headers: bytes = b"") -> bytes:
    head = (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{abs(hash((subject, body))) % 10**9}@example.test>\r\n").encode()
    return head + extra_headers + b"\r\n" + body


def tricky_body() -> bytes:
    """Dot lines, long lines and 8-bit bytes: what a byte-exact relay must survive."""
    return (b".starts with a dot\r\n..two dots\r\n.\r\n..\r\n"
            + b"x" * 1500 + b"\r\n" + b"y" * 9000 + b"\r\n"
            + "8-bit: h\u00e9llo w\u00f6rld \u20ac\r\n".encode()
            + b"\xff\xfe raw bytes\r\nlast line\r\n")


def standard_mailbox() -> list[bytes]:
    return [
        message("first", b"Hi,\r\nshort message.\r\n"),
        message("tricky", tricky_body()),
        message("third", b"line\r\n" * 200),
    ]


def smtp_body() -> bytes:
    """Dot lines, a 998-byte line and 8-bit text: within SMTP's line limit."""
    return (b".starts with a dot\r\n..two dots\r\n.\r\n" + b"w" * 998 + b"\r\n"
            + "8-bit: h\u00e9llo \u20ac\r\n".encode() + b"last line\r\n")
