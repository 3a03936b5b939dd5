"""An aiosmtpd sink that keeps every message exactly as received (dot-unstuffed DATA).

In-process: ``Sink(directory).start()``.  In another namespace, as a script:
``python -m tests.support.smtp_sink HOST PORT DIRECTORY``.  Each message is written as
``N.eml`` (the exact DATA bytes) and ``N.json`` (envelope).  A RCPT to a local part
``nobody`` is refused with 550, like the Exim recipe.
"""

from __future__ import annotations

import itertools
import json
import socket
import sys
import time
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class _Handler:
    def __init__(self, directory: Path):
        self.directory = directory
        self.counter = itertools.count(1)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address.split("@")[0] == "nobody":
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        number = next(self.counter)
        (self.directory / f"{number}.eml").write_bytes(envelope.original_content)
        (self.directory / f"{number}.json").write_text(json.dumps(
            {"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
             "helo": session.host_name}))
        return "250 2.0.0 Message accepted for delivery"


class _Authenticator:
    """Accepts the given user names and passwords (AUTH PLAIN / LOGIN)."""

    def __init__(self, users: dict[str, str]):
        self.users = users

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (auth_data.login.decode(), auth_data.password.decode()) in self.users.items()
        return AuthResult(success=ok)


class Sink:
    """The sink server; ``messages()`` lists what arrived, in order."""

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int | None = None,
                 users: dict[str, str] | None = None, handler: object | None = None):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or _free_port(host)
        auth = {}
        if users:
            auth = {"authenticator": _Authenticator(users), "auth_require_tls": False}
        self.controller = Controller(handler or _Handler(directory), hostname=host,
                                     port=self.port, data_size_limit=200_000_000,
                                     server_hostname="sink.test", enable_SMTPUTF8=True,
                                     ready_timeout=15, **auth)

    def start(self) -> Sink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def messages(self) -> list[tuple[dict, bytes]]:
        return read_messages(self.directory)


def read_messages(directory: Path) -> list[tuple[dict, bytes]]:
    result = []
    for path in sorted(directory.glob("*.eml"), key=lambda p: int(p.stem)):
        envelope = json.loads(path.with_suffix(".json").read_text())
        result.append((envelope, path.read_bytes()))
    return result


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    sink = Sink(Path(sys.argv[3]), sys.argv[1], int(sys.argv[2])).start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sink.stop()
