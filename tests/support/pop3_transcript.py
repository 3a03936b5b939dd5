"""Record the exact bytes a POP3 server sends back for a fixed list of commands.

Used in-process and, inside network namespaces, as a script:
``python -m tests.support.pop3_transcript HOST PORT USER PASSWORD [auth]`` prints the
replies as JSON (base64), so that a session through p3scan can be compared byte for byte
with the same session straight to Dovecot.
"""

from __future__ import annotations

import base64
import json
import socket
import sys

Command = tuple[bytes, bool]  # the line without CRLF, and whether +OK brings a block


def login_commands(user: str, password: str) -> list[Command]:
    return [(b"CAPA", True), (f"USER {user}".encode(), False),
            (f"PASS {password}".encode(), False)]


def auth_plain_commands(user: str, password: str) -> list[Command]:
    token = base64.b64encode(f"\0{user}\0{password}".encode())
    return [(b"CAPA", True), (b"AUTH PLAIN", False), (token, False)]


def mailbox_commands() -> list[Command]:
    return [
        (b"STAT", False), (b"LIST", True), (b"LIST 1", False), (b"UIDL", True),
        (b"UIDL 2", False), (b"RETR 1", True), (b"RETR 2", True), (b"TOP 2 0", True),
        (b"TOP 1 3", True), (b"NOOP", False), (b"RETR 99", True), (b"RSET", False),
        (b"QUIT", False),
    ]


def scenario(user: str, password: str, kind: str = "user") -> list[Command]:
    first = auth_plain_commands if kind == "auth" else login_commands
    return first(user, password) + mailbox_commands()


def _readline(reader) -> bytes:
    line = reader.readline()
    if not line:
        raise ConnectionError("connection closed")
    return line


def transcript(host: str, port: int, commands: list[Command], timeout: float = 30.0,
               greeting: bool = True) -> list[bytes]:
    """The greeting and the complete reply to each command, byte for byte."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        replies = [_readline(reader)] if greeting else []
        for line, block in commands:
            sock.sendall(line + b"\r\n")
            reply = _readline(reader)
            if block and reply.startswith(b"+OK"):
                while True:
                    item = _readline(reader)
                    reply += item
                    if item == b".\r\n":
                        break
            replies.append(reply)
        return replies


def main(argv: list[str]) -> int:
    host, port, user, password = argv[:4]
    kind = argv[4] if len(argv) > 4 else "user"
    replies = transcript(host, int(port), scenario(user, password, kind))
    json.dump([base64.b64encode(reply).decode() for reply in replies], sys.stdout)
    return 0


def decode(output: str) -> list[bytes]:
    return [base64.b64decode(item) for item in json.loads(output)]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def with_header(reply: bytes, header: bytes) -> bytes:
    """What p3scan should send for a RETR/TOP ``reply``: ``header`` inserted where the
    message header ends (the first empty line), and a ``+OK N octets`` count corrected."""
    status, _, body = reply.partition(b"\r\n")
    end = 0 if body.startswith(b"\r\n") else body.find(b"\r\n\r\n") + 2
    if end == 1:  # no empty line: nothing is inserted
        return reply
    body = body[:end] + header + b"\r\n" + body[end:]
    words = status.split(b" ")
    if len(words) >= 3 and words[1].isdigit() and words[2].lower() == b"octets":
        words[1] = str(int(words[1]) + len(header) + 2).encode()
    return b" ".join(words) + b"\r\n" + body


def through_proxy(direct: list[bytes], commands: list[Command], header: bytes,
                  greeting: bool = True) -> list[bytes]:
    """The transcript p3scan should produce, given the one straight from the server."""
    names = ([b"(greeting)"] if greeting else []) + [line for line, _ in commands]
    expected = []
    for name, reply in zip(names, direct, strict=True):
        if name.split(b" ")[0].upper() == b"CAPA":
            reply = reply.replace(b"STLS\r\n", b"")
        elif name.split(b" ")[0].upper() in (b"RETR", b"TOP") and reply.startswith(b"+OK"):
            reply = with_header(reply, header)
        expected.append(reply)
    return expected
