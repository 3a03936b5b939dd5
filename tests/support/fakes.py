"""Small fake servers for unit tests and for a second, recognisable upstream."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable

from tests.support.oracle import content, wire

Action = bytes | float | None  # bytes to send, seconds to pause, None to hang up
Responder = Callable[[bytes], Action | list[Action]]


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class FakeServer:
    """A line-based TCP server: sends ``greeting``, then ``respond(line)`` per client line.

    ``respond`` returns the bytes to send, None to close the connection, or a list of
    such actions and pauses (a float: seconds) to script a slow or broken server.  QUIT
    closes after its reply.  Every line received is recorded in ``received``.
    """

    def __init__(self, greeting: bytes, respond: Responder, host: str = "127.0.0.1"):
        self.received: list[bytes] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(greeting)
                for line in self.rfile:
                    outer.received.append(line)
                    reply = respond(line)
                    for action in reply if isinstance(reply, list) else [reply]:
                        if action is None:
                            return
                        if isinstance(action, float):
                            time.sleep(action)
                        else:
                            self.wfile.write(action)
                    if line.strip().upper() == b"QUIT":
                        return

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        _Server.address_family = family
        self.server = _Server((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def simple_pop3(greeting: bytes = b"+OK fake pop3 ready\r\n",
                messages: dict[int, bytes] | None = None,
                special: dict[bytes, Action | list[Action]] | None = None) -> FakeServer:
    """A fake POP3 server that accepts any login and serves ``messages`` (dot-stuffed).

    ``special`` scripts the reply to particular command lines (without CRLF)."""
    messages = {} if messages is None else messages
    special = special or {}

    def respond(line: bytes) -> Action | list[Action]:
        if line.strip() in special:
            return special[line.strip()]
        verb, _, arg = line.strip().partition(b" ")
        verb = verb.upper()
        if verb == b"QUIT":
            return b"+OK bye\r\n"
        if verb in (b"RETR", b"TOP") and arg.split(b" ")[0].isdigit():
            number = int(arg.split(b" ")[0])
            if number not in messages:
                return b"-ERR no such message\r\n"
            body = messages[number]
            return b"+OK %d octets\r\n" % len(content(body)) + wire(body)
        if verb == b"CAPA":
            return b"+OK\r\nUSER\r\nTOP\r\nPIPELINING\r\nSTLS\r\nUIDL\r\n.\r\n"
        return b"+OK\r\n"

    return FakeServer(greeting, respond)
