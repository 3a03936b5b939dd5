"""Bounds (issue 11, item 3) against the real daemon: a full spool disk (a small tmpfs), the
work directory between sessions (aborted, dropped and killed ones), and BDAT through Exim."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from p3scan.mail.spool import Intake, Spool, SpoolError
from tests.support.fakes import FakeServer
from tests.support.messages import message
from tests.support.oracle import wire
from tests.support.procs import wait_until
from tests.support.tmpfs import tmpfs_fixture  # noqa: F401 (the tmpfs fixture)

pytestmark = pytest.mark.integration

CLEAN = message("clean", b"hello\r\n")
BIG = message("big", b"+OK this line must never be read as a reply\r\n" * 90_000)  # 4 MB


# --- helpers --------------------------------------------------------------------------------


class Client:
    """A line-by-line protocol client."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.reader = self.sock.makefile("rb")
        self.greeting = self.reader.readline()

    def ask(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reader.readline()

    def block(self) -> bytes:
        """The rest of a multi-line reply, up to its final dot."""
        lines = []
        while (line := self.reader.readline()) not in (b".\r\n", b""):
            lines.append(line)
        return b"".join(lines)

    def rest(self) -> bytes:
        """Everything up to the end of the connection."""
        data = b""
        while chunk := self.reader.read1(65536):
            data += chunk
        return data

    def close(self) -> None:
        self.reader.close()  # the socket's file descriptor stays open while it exists
        self.sock.close()


def login(port: int) -> Client:
    client = Client(port)
    assert client.greeting.startswith(b"+OK")
    assert client.ask(b"USER u").startswith(b"+OK")
    assert client.ask(b"PASS p").startswith(b"+OK")
    return client


def pop3_server(actions: dict[bytes, object]) -> FakeServer:
    """A fake POP3 server; ``actions`` maps a command to a reply, a list of actions, or a
    callable (run when the command arrives) returning them."""

    def respond(line: bytes):
        action = actions.get(line.strip(), b"+OK\r\n")
        return action() if callable(action) else action

    return FakeServer(b"+OK fake pop3 ready\r\n", respond)


def retr(message_bytes: bytes) -> bytes:
    return b"+OK %d octets\r\n" % len(message_bytes) + wire(message_bytes)


def tree(path: Path) -> list[str]:
    return sorted(str(item.relative_to(path)) for item in path.rglob("*"))


def spool_files(children: Path) -> list[str]:
    return [name for name in tree(children) if "p3scan." in name]


# --- (b) the spool disk -----------------------------------------------------------------------


def test_enospc_while_spooling_is_a_problem_and_the_stream_stays_in_step(tmpfs):
    disk = tmpfs("disk", "1m")
    held = Spool(str(disk))
    intake = Intake(held)
    data = wire(BIG) + b"+OK next\r\n"
    for start in range(0, len(data), 65536):
        intake.feed(data[start:start + 65536])
    assert intake.done and intake.finish() == b"+OK next\r\n"
    assert intake.problem == f"spool full: No space left on device in {disk}"
    held.close()
    with pytest.raises(SpoolError, match="incomplete"):
        held.with_header(b"X-P3Scan: clean")
    held.remove()
    assert os.listdir(disk) == []


@pytest.mark.parametrize("policy", ["tempfail", "pass", "reject"])
def test_pop3_disk_full_mid_message_is_a_tempfail_and_the_session_goes_on(tmpfs, p3scan,
                                                                          policy):
    """Whatever scanerror says: a message not all on disk can only be tried again."""
    server = pop3_server({b"RETR 1": retr(BIG)})
    spool = tmpfs("spool", "2m")
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, virusdir=spool,
                    maxchilds=1, scanerror=policy).start()
    client = login(daemon.port)
    reply = client.ask(b"RETR 1")
    assert reply.startswith(b"-ERR [SYS/TEMP] p3scan: message 1 ")
    assert b"spool full: No space left on device" in reply
    assert client.ask(b"STAT") == b"+OK\r\n"  # the rest of the message was drained
    assert client.ask(b"QUIT") == b"+OK\r\n"
    client.close()
    assert spool_files(spool / "children") == []
    assert "ERR: Not enough space! spool full" in daemon.log()
    server.close()


def test_pop3_below_bytesfree_before_the_message_is_a_tempfail_at_once(tmpfs, p3scan):
    server = pop3_server({b"RETR 1": retr(BIG)})
    spool = tmpfs("spool", "8m")
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, virusdir=spool,
                    bytesfree=4000, maxchilds=1).start()
    client = login(daemon.port)  # enough space when the session starts
    (spool / "filler").write_bytes(b"f" * 5 * 2**20)
    reply = client.ask(b"RETR 1")
    assert reply.startswith(b"-ERR [SYS/TEMP] p3scan: message 1 ")
    assert b"spool full: less than 4000 KB free" in reply
    assert client.ask(b"STAT") == b"+OK\r\n"
    client.close()
    assert spool_files(spool / "children") == []
    server.close()


@pytest.mark.parametrize("policy", ["tempfail", "pass", "reject"])
def test_smtp_disk_full_mid_message_is_451_and_nothing_is_relayed(tmpfs, p3scan, sink,
                                                                  policy):
    spool = tmpfs("spool", "2m")
    daemon = p3scan(targetip="127.0.0.1", targetport=sink.port, emailport=sink.port,
                    virusdir=spool, maxchilds=1, scanerror=policy).start()
    client = Client(daemon.port)
    assert client.greeting.startswith(b"220")
    client.sock.sendall(b"EHLO client.test\r\n")
    while not client.reader.readline().startswith(b"250 "):
        pass
    assert client.ask(b"MAIL FROM:<alice@example.test>").startswith(b"250")
    assert client.ask(b"RCPT TO:<bob@example.test>").startswith(b"250")
    assert client.ask(b"DATA").startswith(b"354")
    client.sock.sendall(wire(BIG))
    reply = client.reader.readline()
    assert reply.startswith(b"451 ") and b"spool full: No space left on device" in reply
    assert client.ask(b"RSET").startswith(b"250")
    assert client.ask(b"QUIT").startswith(b"221")
    client.close()
    assert sink.messages() == []
    assert spool_files(spool / "children") == []


# --- (c) nothing of a session remains for the next one ----------------------------------------


def test_a_message_the_server_dropped_leaves_nothing_for_the_next_session(p3scan, scratch):
    seen: list[list[str]] = []
    children = scratch / "p3scan" / "spool" / "children"
    partial = [b"+OK 900000 octets\r\nSubject: x\r\n\r\n" + b"x" * 600_000 + b"\r\n", 1.5, None]
    server = pop3_server({b"RETR 1": partial,
                          b"RETR 2": lambda: seen.append(tree(children)) or retr(CLEAN)})
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, maxchilds=1).start()
    [worker] = daemon.worker_pids()
    first = login(daemon.port)
    first.sock.sendall(b"RETR 1\r\n")
    wait_until(lambda: spool_files(children), 5, "the spool file of message 1")
    assert first.rest().startswith(b"-ERR [SYS/TEMP] ")
    second = login(daemon.port)
    assert second.ask(b"RETR 2").startswith(b"+OK")
    second.block()
    second.close()
    assert seen == [[str(worker)]]  # the worker's directory, empty
    server.close()


def test_a_client_that_left_during_the_scan_leaves_nothing_for_the_next(p3scan, scratch):
    """The scan of the dropped session (demime, a slow scanner) is finished and its files
    are gone before the next connection is served."""
    seen: list[tuple[list[str], bool]] = []
    children = scratch / "p3scan" / "spool" / "children"
    (scratch / "marks").mkdir(mode=0o777)
    os.chmod(scratch / "marks", 0o777)  # the scanner runs as nobody
    finished = scratch / "marks" / "scan-finished"
    scanner = scratch / "slow-scanner"
    scanner.write_text(f"#!/bin/sh\nsleep 4\ntouch {finished}\nexit 0\n")
    scanner.chmod(0o755)
    server = pop3_server({b"RETR 1": retr(CLEAN), b"RETR 2": lambda: seen.append(
        (tree(children), finished.exists())) or retr(CLEAN)})
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, maxchilds=1, demime=True,
                    scannertype="basic", scanner=scanner, timeout=1, scantimeout=30).start()
    [worker] = daemon.worker_pids()
    first = login(daemon.port)
    first.sock.sendall(b"RETR 1\r\n")
    wait_until(lambda: any(name.endswith(".dir") for name in tree(children)), 5,
               "the demime directory of message 1")
    first.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    first.close()  # a reset: the next keep-alive write fails
    second = login(daemon.port)
    assert second.ask(b"RETR 2").startswith(b"+OK")
    second.block()
    second.close()
    assert seen == [([str(worker)], True)]
    server.close()


def test_a_killed_worker_leaves_nothing_behind(p3scan, scratch):
    seen: list[list[str]] = []
    children = scratch / "p3scan" / "spool" / "children"
    stalled = [b"+OK 900000 octets\r\nSubject: x\r\n\r\n" + b"x" * 600_000 + b"\r\n", 30.0]
    server = pop3_server({b"RETR 1": stalled,
                          b"RETR 2": lambda: seen.append(tree(children)) or retr(CLEAN)})
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, maxchilds=1).start()
    [worker] = daemon.worker_pids()
    first = login(daemon.port)
    first.sock.sendall(b"RETR 1\r\n")
    wait_until(lambda: spool_files(children), 5, "the spool file of message 1")
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: daemon.worker_pids() not in ([], [worker]), 10, "a new worker")
    [replacement] = daemon.worker_pids()
    second = login(daemon.port)
    assert second.ask(b"RETR 2").startswith(b"+OK")
    second.block()
    second.close()
    first.close()
    assert seen == [[str(replacement)]]
    server.close()


# --- (d) BDAT through Exim ----------------------------------------------------------------------


def smtp_client(port: int) -> Client:
    client = Client(port)
    assert client.greeting.startswith(b"220")
    client.sock.sendall(b"EHLO client.test\r\n")
    ehlo = b""
    while not (line := client.reader.readline()).startswith(b"250 "):
        ehlo += line
    assert b"CHUNKING" not in ehlo + line
    return client


def test_a_huge_bdat_chunk_is_consumed_and_exim_stays_in_step(exim, p3scan):
    """70 MB of QUIT/RSET/DATA lines in a BDAT chunk: none of it reaches Exim, which then
    takes the message sent with DATA, and only that one."""
    daemon = p3scan(targetip="127.0.0.1", targetport=exim.port, emailport=exim.port).start()
    client = smtp_client(daemon.port)
    assert client.ask(b"MAIL FROM:<alice@example.test>").startswith(b"250")
    assert client.ask(b"RCPT TO:<bob@example.test>").startswith(b"250")
    size = 70 * 2**20
    piece = (b"QUIT\r\nRSET\r\nDATA\r\n.\r\n" * (2**20 // 21 + 1))[:2**20]
    client.sock.sendall(b"BDAT %d LAST\r\n" % size)
    for _ in range(size // len(piece)):
        client.sock.sendall(piece)
    assert client.reader.readline().startswith(b"502 5.5.1 ")
    assert client.ask(b"RSET").startswith(b"250")
    assert client.ask(b"MAIL FROM:<alice@example.test>").startswith(b"250")
    assert client.ask(b"RCPT TO:<bob@example.test>").startswith(b"250")
    assert client.ask(b"DATA").startswith(b"354")
    assert client.ask(wire(CLEAN)[:-2]).startswith(b"250")
    assert client.ask(b"QUIT").startswith(b"221")
    client.close()
    [stored] = exim.wait_delivered(1)
    assert b"Subject: clean" in stored and b"QUIT" not in stored


def test_bdat_without_a_size_closes_with_421_and_the_next_session_is_served(exim, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=exim.port, emailport=exim.port).start()
    client = smtp_client(daemon.port)
    client.sock.sendall(b"BDAT LAST\r\nMAIL FROM:<alice@example.test>\r\n")
    assert client.rest().startswith(b"421 4.4.2 p3scan: BDAT without a valid chunk size")
    client.close()
    again = smtp_client(daemon.port)
    assert again.ask(b"QUIT").startswith(b"221")
    again.close()
    assert "BDAT without a valid chunk size" in daemon.wait_log("Session done", count=2)


def test_a_bdat_chunk_that_stops_arriving_ends_at_idletimeout(exim, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=exim.port, emailport=exim.port,
                    idletimeout=2).start()
    client = smtp_client(daemon.port)
    client.sock.sendall(b"BDAT 1000 LAST\r\n" + b"x" * 10)
    rest = client.rest()  # closed, without a reply the client could misread as 502/250
    assert rest == b"" or rest.startswith(b"421 ")
    client.close()
    assert "Connection timeout" in daemon.log()
