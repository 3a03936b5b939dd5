"""What a POP3 client must receive through p3scan, computed independently of p3scan's code.

A clean message comes back as the server sent it, with one header line inserted right
before the first empty line (with that empty line's line ending); a message without an
empty line gets no header.  ``wire`` is RFC 1939 dot-stuffing with the final ``.`` line.
"""

from __future__ import annotations


def content(message: bytes) -> bytes:
    """What a POP3 server's reply carries: the message, ending a line (RFC 1939)."""
    return message + b"\r\n" if message and not message.endswith(b"\n") else message


def insert_header(message: bytes, header: bytes) -> bytes:
    offset = 0
    while offset <= len(message):
        end = message.find(b"\n", offset)
        line = message[offset:] if end < 0 else message[offset:end + 1]
        if line in (b"\n", b"\r\n"):
            return message[:offset] + header + line + message[offset:]
        if end < 0:
            break
        offset = end + 1
    return message


def wire(message: bytes) -> bytes:
    """The dot-stuffed form of a message's content plus the terminating line."""
    body = content(message)
    stuffed = body.replace(b"\n.", b"\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def delivered(message: bytes, header: bytes, status: bytes = b"+OK %d octets\r\n") -> bytes:
    """The complete reply to RETR through p3scan for a clean ``message``."""
    result = insert_header(content(message), header)
    return (status % len(result) if b"%d" in status else status) + wire(result)
