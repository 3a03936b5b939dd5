"""What happens when things go wrong: scanner down or slow, peers that vanish, keep-alive."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from p3scan.scan.scanning import CLEAN_HEADER
from tests.support import oracle
from tests.support import pop3_transcript as pt
from tests.support.clamd import Clamd
from tests.support.dovecot import PASSWORD
from tests.support.fakes import simple_pop3
from tests.support.messages import EICAR, message
from tests.support.procs import wait_until

pytestmark = pytest.mark.integration

HEADER = CLEAN_HEADER["POP3"].encode()
CLEAN = message("clean", b"hello\r\n.dot line\r\n")


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def session(port: int, *commands: bytes) -> tuple[list[bytes], bytes]:
    """Greeting and login through the proxy, then ``commands``; return the replies so far
    and everything else that arrived until the connection closed or went quiet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    reader = sock.makefile("rb")
    replies = [reader.readline()]
    for line in (b"USER u", b"PASS p"):
        sock.sendall(line + b"\r\n")
        replies.append(reader.readline())
    for line in commands:
        sock.sendall(line + b"\r\n")
    rest = b""
    sock.settimeout(20)
    try:
        while chunk := reader.read1(65536):
            rest += chunk
    except TimeoutError:
        pass
    sock.close()
    return replies, rest


@pytest.fixture
def own_clamd(scratch):
    server = Clamd(scratch / "clamd").start()
    yield server
    server.stop()


def test_clamd_down_is_a_tempfail_and_the_message_waits_for_it(dovecot, own_clamd, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, scannertype="clamd",
                    scanner=own_clamd.tcp).start()
    user = dovecot.mailbox([message("infected", EICAR + b"\r\n")])
    own_clamd.stop()
    commands = pt.login_commands(user, PASSWORD) + [(b"RETR 1", True), (b"STAT", False)]
    replies = pt.transcript("127.0.0.1", daemon.port, commands)
    assert replies[4].startswith(b"-ERR [SYS/TEMP] p3scan: message 1 could not be scanned")
    assert replies[5].startswith(b"+OK 1 ")  # still on the server, nothing deleted
    assert "not delivered, the scan failed" in daemon.log()
    own_clamd.start()
    replies = pt.transcript("127.0.0.1", daemon.port, commands)
    assert replies[4].startswith(b"+OK ") and b"[Virus] found" in replies[4]


def test_a_scanner_that_hangs_is_a_tempfail(p3scan, scratch):
    server = simple_pop3(messages={1: CLEAN})
    slow = script(scratch / "slow-scanner", "sleep 60")
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, scannertype="basic",
                    scanner=slow, scantimeout=1).start()
    started = time.monotonic()
    _, rest = session(daemon.port, b"RETR 1", b"QUIT")
    assert rest.startswith(b"-ERR [SYS/TEMP] p3scan: message 1 could not be scanned (")
    assert rest.endswith(b"+OK bye\r\n")
    assert time.monotonic() - started < 15
    assert subprocess.run(["pgrep", "-f", slow], capture_output=True).returncode == 1
    server.close()


@pytest.mark.parametrize("policy", ["pass", "reject"])
def test_scanner_failure_policies(p3scan, scratch, policy):
    server = simple_pop3(messages={1: CLEAN})
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, scannertype="basic",
                    scanner=scratch / "missing-scanner", scanerror=policy).start()
    _, rest = session(daemon.port, b"RETR 1", b"QUIT")
    if policy == "pass":
        assert b"X-P3Scan: not scanned, the virus scanner failed: cannot run " in rest
        assert b"\r\nhello\r\n..dot line\r\n.\r\n" in rest
        assert "Delivering POP3 message 1 unscanned (scanerror = pass)" in daemon.log()
    else:
        assert b"[Virus] found in a mail to you: not scanned: cannot run" in rest
        assert b"hello" not in rest
    server.close()


def test_server_gone_during_retr_gives_an_error_not_a_message(p3scan):
    partial = [b"+OK 500 octets\r\nSubject: x\r\n\r\nfirst lines\r\n", 0.2, None]
    server = simple_pop3(special={b"RETR 1": partial})
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port).start()
    _, rest = session(daemon.port, b"RETR 1")
    assert rest == b"-ERR [SYS/TEMP] p3scan: the server closed the connection during the " \
                   b"download\r\n"
    server.close()


def test_server_gone_after_keepalive_began_closes_without_the_final_dot(p3scan):
    partial = [b"+OK 500 octets\r\nSubject: x\r\n\r\nfirst\r\n", 2.5, b"second\r\n", None]
    server = simple_pop3(special={b"RETR 1": partial})
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, timeout=1).start()
    _, rest = session(daemon.port, b"RETR 1")
    assert rest.startswith(b"+OK p3scan: the message follows once it is scanned\r\nX")
    assert not rest.endswith(b".\r\n") and b"first" not in rest
    server.close()


def test_client_gone_during_retr_leaves_no_spool_file(p3scan):
    slow = [b"+OK 90000 octets\r\nSubject: slow\r\n\r\n", 1.0, b"x" * 90000 + b"\r\n.\r\n"]
    server = simple_pop3(messages={2: CLEAN}, special={b"RETR 1": slow})
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, maxchilds=1).start()
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
    sock.sendall(b"USER u\r\nPASS p\r\nRETR 1\r\n")
    time.sleep(0.5)
    sock.close()
    children = Path(daemon.options["virusdir"]) / "children"
    wait_until(lambda: "outcome=" in daemon.log(), 10, "the session to end")
    assert [path for path in children.rglob("*") if path.is_file()] == []
    _, rest = session(daemon.port, b"RETR 2", b"QUIT")  # the same worker serves on
    assert HEADER in rest and rest.endswith(b".\r\n+OK bye\r\n")
    server.close()


@pytest.mark.parametrize("broken", [False, True], ids=["characters", "broken-lines"])
def test_keepalive_keeps_the_message_intact(p3scan, scratch, broken):
    server = simple_pop3(messages={1: CLEAN})
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, scannertype="basic",
                    scanner=script(scratch / "slow", "sleep 3.5"), timeout=1,
                    broken=broken).start()
    _, rest = session(daemon.port, b"RETR 1", b"NOOP", b"QUIT")
    status, _, data = rest.partition(b"\r\n")
    assert status == b"+OK p3scan: the message follows once it is scanned"
    keepalive, _, message_part = data.partition(b"\r\nFrom: ")
    if broken:
        assert keepalive.startswith(b"X-P3Scan: Due to an extremely large attachment")
    else:
        assert b"X-P3Scan-Keepalive: waiting for the virus scan".startswith(keepalive)
        assert len(keepalive) >= 2
    expected = oracle.wire(oracle.insert_header(oracle.content(CLEAN), HEADER))
    assert b"From: " + message_part == expected + b"+OK\r\n+OK bye\r\n"  # one NOOP reply
    noops = [line for line in server.received if line.strip() == b"NOOP"]
    assert len(noops) >= 2  # keep-alive NOOPs to the server, plus the client's own
    server.close()


def test_nothing_is_sent_before_the_status_line(p3scan):
    slow = [b"+OK 40 octets\r\n", 2.5, b"Subject: slow\r\n\r\nbody\r\n.\r\n"]
    server = simple_pop3(special={b"RETR 1": slow})
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, timeout=1).start()
    _, rest = session(daemon.port, b"RETR 1", b"QUIT")
    assert rest.startswith(b"+OK p3scan: the message follows")
    assert rest.endswith(b"\r\nSubject: slow\r\n" + HEADER + b"\r\n\r\nbody\r\n.\r\n"
                         b"+OK bye\r\n")
    server.close()


def test_no_shell_ever_sees_mail_data(p3scan, scratch):
    out = scratch / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # the scanner runs as the user nobody
    marker = out / "pwned"
    payload = f"$(touch {marker}) `touch {marker}`; touch {marker}"
    recorder = script(scratch / "record", f'for a in "$@"; do printf "%s\\n" "$a"; done '
                                          f'>> {out}/args; exit 0')
    attachment = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=\"" + payload.encode() + b"\"\r\n\r\n"
        b"data\r\n--b--\r\n")
    mail = message(payload, attachment, sender=f"x{payload}@example.test",
                   extra_headers=b"MIME-Version: 1.0\r\n")
    server = simple_pop3(messages={1: mail})
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, scannertype="bash",
                    scanner=recorder, demime=True).start()
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
    sock.sendall(f"USER {payload}\r\nPASS p\r\nRETR 1\r\nQUIT\r\n".encode())
    while sock.recv(65536):
        pass
    sock.close()
    assert not marker.exists()
    args = (out / "args").read_text().splitlines()
    assert payload in args  # the subject, as one argument
    assert args[1].startswith("x$(touch ")  # MAILFROM, cut to 256 characters
    assert payload in args  # the user name


def test_altvnmsg_lets_the_scanner_write_the_notification(p3scan, scratch):
    """altvnmsg: the template is copied per message; a bash scanner may rewrite the copy
    (its path is in P3SCAN_VNMSG) and that copy becomes the notification, without an
    automatic Subject line."""
    scanner = script(scratch / "edit-notice", (
        'printf "Subject: custom notice for %s\\n\\nThe mail from %s was held.\\n" '
        '"$4" "$2" > "$P3SCAN_VNMSG"; exit 1'))
    server = simple_pop3(messages={1: message("any")})
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, scannertype="bash",
                    scanner=scanner, viruscode="1", altvnmsg=True).start()
    _, rest = session(daemon.port, b"RETR 1", b"QUIT")
    head, _, body = rest.partition(b"\r\n\r\n")
    assert head.count(b"Subject:") == 1 and b"\r\nSubject: custom notice for u" in head
    assert body.startswith(b"The mail from alice@example.test was held.\r\n.\r\n")
    server.close()


def test_a_missing_scanner_is_reported_at_start_up(p3scan, scratch):
    daemon = p3scan(targetip="127.0.0.1", targetport=9, scannertype="clamd",
                    scanner=str(scratch / "no-clamd.sock")).start()
    assert "Scanner check: clamd does not answer: cannot connect to clamd" in daemon.log()


def test_scan_failure_after_keepalive_began_closes_without_the_final_dot(p3scan, scratch):
    server = simple_pop3(messages={1: CLEAN})
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, scannertype="basic",
                    scanner=script(scratch / "slow-fail", "sleep 2.5; exit 5"),
                    timeout=1).start()
    _, rest = session(daemon.port, b"RETR 1")
    assert rest.startswith(b"+OK p3scan: the message follows once it is scanned\r\nX")
    assert not rest.endswith(b".\r\n") and b"hello" not in rest
    assert "closing without '.'" in daemon.wait_log("Session done")
    server.close()


def test_idle_sessions_are_closed_after_idletimeout(p3scan):
    server = simple_pop3()
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port, idletimeout=1).start()
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
    started = time.monotonic()
    assert sock.makefile("rb").read() == b"+OK fake pop3 ready\r\n"  # then the close
    assert 0.9 < time.monotonic() - started < 5
    assert "Connection timeout" in daemon.wait_log("outcome=timeout")
    sock.close()
    server.close()


def test_subject_apostrophes_are_not_touched(p3scan):
    mail = message("Don't panic, it's fine", b"Subject: it's in the body too\r\n")
    server = simple_pop3(messages={1: mail})
    daemon = p3scan(targetip="127.0.0.1", targetport=server.port).start()
    _, rest = session(daemon.port, b"RETR 1", b"QUIT")
    assert b"Subject: Don't panic, it's fine\r\n" in rest
    assert b"\r\nSubject: it's in the body too\r\n" in rest
    server.close()
