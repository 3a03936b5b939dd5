"""Issue 11 end to end: hidden MIME, unsolicited server data, and failures that answer.

Real Dovecot, Exim and clamd where a real server can produce the case; small fake servers
where only a misbehaving one can.
"""

from __future__ import annotations

import base64
import os
import smtplib
import socket
from pathlib import Path

import pytest

from tests.support import pop3_transcript as pt
from tests.support.dovecot import PASSWORD
from tests.support.fakes import FakeServer, simple_pop3
from tests.support.messages import EICAR, message

pytestmark = pytest.mark.integration

B64 = base64.encodebytes(EICAR).replace(b"\n", b"\r\n")


def hidden_behind_a_long_header() -> bytes:
    """The Content-Type comes after 80 KB of header: 2.3.2's cut hid the attachment."""
    filler = b"".join(b"X-Filler-%04d: %s\r\n" % (i, b"f" * 60) for i in range(1100))
    return (b"From: eve@example.test\r\nTo: bob@example.test\r\nSubject: long header\r\n"
            + filler + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/"
            b"octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + B64 + b"--b--\r\n")


def multipart_without_boundary(payload: bytes = B64) -> bytes:
    return (b"From: eve@example.test\r\nTo: bob@example.test\r\nSubject: broken\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n--x\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64"
            b"\r\n\r\n" + payload + b"--x--\r\n")


def retr(port: int, user: str, count: int) -> list[bytes]:
    commands = pt.login_commands(user, PASSWORD) + [
        (f"RETR {n}".encode(), True) for n in range(1, count + 1)] + [(b"STAT", False)]
    return pt.transcript("127.0.0.1", port, commands)[4:]


# --- item 1: MIME that hides an attachment, through real Dovecot -----------------------------


def test_pop3_hidden_mime_is_found_or_unchecked(dovecot, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, scannertype="eicar").start()
    user = dovecot.mailbox([hidden_behind_a_long_header(), multipart_without_boundary(),
                            message("clean")])
    first, second, third, stat = retr(daemon.port, user, 3)
    assert first.startswith(b"+OK ") and b"[Virus] found" in first and EICAR not in first
    assert second.startswith(b"-ERR [SYS/TEMP] p3scan: message 2 could not be checked")
    assert b"without a boundary" in second
    assert third.startswith(b"+OK ") and b"Subject: clean" in third
    assert stat.startswith(b"+OK 3 ")  # the unchecked message waits on the server
    assert "not delivered, the message could not be checked completely" in daemon.log()


@pytest.mark.parametrize(("policy", "expected"), [
    ("reject", b"[Virus] found in a mail to you: not checked: "),
    ("pass", b"X-P3Scan: unchecked, the message could not be checked completely: "),
])
def test_pop3_unchecked_policy(dovecot, p3scan, policy, expected):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, scannertype="eicar",
                    unchecked=policy).start()
    harmless = base64.encodebytes(b"harmless").replace(b"\n", b"\r\n")
    user = dovecot.mailbox([multipart_without_boundary(harmless)])
    [reply, _stat] = retr(daemon.port, user, 1)
    assert reply.startswith(b"+OK ") and expected in reply


def test_pop3_demime_with_real_clamd_scans_the_hidden_part(dovecot, clamd, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, scannertype="clamd",
                    scanner=clamd.tcp, demime=True).start()
    user = dovecot.mailbox([hidden_behind_a_long_header()])
    [reply, _stat] = retr(daemon.port, user, 1)
    assert reply.startswith(b"+OK ") and b"[Virus] found" in reply


# --- item 1 for SMTP, through real Exim ------------------------------------------------------


def test_smtp_unchecked_is_refused_and_never_reaches_exim(exim, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=exim.port, emailport=exim.port,
                    scannertype="eicar").start()
    harmless = base64.encodebytes(b"harmless").replace(b"\n", b"\r\n")
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("alice@example.test", ["bob@example.test"],
                          multipart_without_boundary(harmless))
        assert refused.value.smtp_code == 554
        assert b"5.7.0 p3scan: the message could not be checked" in refused.value.smtp_error
        with pytest.raises(smtplib.SMTPDataError) as infected:
            smtp.sendmail("alice@example.test", ["bob@example.test"],
                          hidden_behind_a_long_header())
        assert infected.value.smtp_code == 554
        smtp.sendmail("alice@example.test", ["bob@example.test"], message("clean"))
    [delivered] = exim.wait_delivered(1)
    assert b"Subject: clean" in delivered
    assert exim.delivered() == [delivered]


# --- item 2: unsolicited server data ---------------------------------------------------------


def raw_session(port: int, *lines: bytes, wait: float = 10) -> bytes:
    """Send ``lines`` (all at once) and return everything until the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(b"".join(line + b"\r\n" for line in lines))
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return data


def test_pop3_data_after_a_reply_never_reaches_the_client(p3scan):
    virus = message("smuggled", EICAR + b"\r\n")
    server = simple_pop3(special={b"NOOP": b"+OK\r\n+OK 99 octets\r\n" + virus + b".\r\n"})
    try:
        daemon = p3scan(targetip="127.0.0.1", targetport=server.port).start()
        data = raw_session(daemon.port, b"USER u", b"PASS p", b"NOOP", b"RETR 1")
        assert EICAR not in data and b"smuggled" not in data
        assert data.endswith(b"-ERR [SYS/TEMP] p3scan: the server sent data that no command "
                             b"asked for; closing\r\n")
        assert b"RETR 1\r\n" not in server.received
        assert f"server 127.0.0.1:{server.port}: " in daemon.log()
    finally:
        server.close()


def test_smtp_354_to_rcpt_ends_the_session(p3scan):
    replies = {b"EHLO": b"250-mx\r\n250 PIPELINING\r\n", b"MAIL": b"250 ok\r\n",
               b"RCPT": b"354 send it\r\n", b"QUIT": b"221 bye\r\n"}
    server = FakeServer(b"220 fake ESMTP\r\n",
                        lambda line: replies.get(line[:4].upper(), b"250 ok\r\n"))
    try:
        daemon = p3scan(targetip="127.0.0.1", targetport=server.port, emailport=server.port,
                        ).start()
        data = raw_session(daemon.port, b"EHLO me", b"MAIL FROM:<a@example.test>",
                           b"RCPT TO:<b@example.test>", b"Subject: x", b"", EICAR, b".")
        assert data.endswith(b"421 4.4.2 p3scan: the server sent data that no command asked "
                             b"for; closing\r\n")
        assert not any(EICAR in line or line.startswith(b"Subject") for line in server.received)
    finally:
        server.close()


# --- item 5: every failure answers -----------------------------------------------------------


@pytest.mark.parametrize(("behaviour", "expected"), [
    ({"greeting": b""}, b"-ERR [SYS/TEMP] p3scan: the server did not answer within "
                        b"idletimeout"),
    ({"special": {b"STAT": b"+OK " + b"9" * 20000 + b"\r\n"}},
     b"-ERR [SYS/TEMP] p3scan: the server sent a line longer than"),
    ({"special": {b"STAT": None}}, b"-ERR [SYS/TEMP] p3scan: the server closed the connection"),
    ({"special": {b"STAT": b"+OK 1"}}, b"-ERR [SYS/TEMP] p3scan: the server did not answer "
                                       b"within idletimeout"),
    ({"special": {b"RETR 1": [b"+OK 100 octets\r\nSubject: x\r\n\r\npart", None]}},
     b"-ERR [SYS/TEMP] p3scan: the server closed the connection during the download"),
])
def test_pop3_server_failures_answer(p3scan, behaviour, expected):
    greeting = behaviour.get("greeting", b"+OK ready\r\n")
    server = simple_pop3(greeting=greeting, special=behaviour.get("special"))
    command = b"RETR 1" if b"RETR 1" in behaviour.get("special", {}) else b"STAT"
    try:
        daemon = p3scan(targetip="127.0.0.1", targetport=server.port, idletimeout=2).start()
        lines = [b"USER u", b"PASS p", command] if greeting else [b"USER u"]
        data = raw_session(daemon.port, *lines)
        assert data.rstrip(b"\r\n").splitlines()[-1].startswith(expected.rstrip(b"\r\n"))
        assert b"." not in data.splitlines()  # nothing passed off as a complete reply
    finally:
        server.close()


def test_smtp_server_closing_after_data_answers(p3scan):
    replies = {b"EHLO": b"250 mx\r\n", b"MAIL": b"250 ok\r\n", b"RCPT": b"250 ok\r\n",
               b"DATA": None}
    server = FakeServer(b"220 fake ESMTP\r\n",
                        lambda line: replies.get(line[:4].upper(), b"250 ok\r\n"))
    try:
        daemon = p3scan(targetip="127.0.0.1", targetport=server.port, emailport=server.port,
                        ).start()
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            with pytest.raises((smtplib.SMTPServerDisconnected, smtplib.SMTPDataError,
                                smtplib.SMTPResponseException)) as failed:
                smtp.sendmail("a@example.test", ["b@example.test"], message("clean"))
        assert getattr(failed.value, "smtp_code", 421) in (421, 451)
        assert getattr(failed.value, "smtp_code", 0) != 250
    finally:
        server.close()


def test_quarantine_not_writable_is_a_tempfail(dovecot, p3scan, scratch):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, scannertype="eicar")
    daemon.start()
    user = dovecot.mailbox([message("infected", EICAR + b"\r\n")])
    virusdir = Path(daemon.options["virusdir"])
    blocker = virusdir / "p3scan.blocked"
    os.chmod(virusdir, 0o500)  # the children dir exists; new quarantine files cannot
    try:
        [reply, stat] = retr(daemon.port, user, 1)
    finally:
        os.chmod(virusdir, 0o700)
    assert not blocker.exists()
    assert reply.startswith(b"-ERR [SYS/TEMP] p3scan: message 1 could not be scanned")
    assert b"the quarantine is not writable" in reply
    assert stat.startswith(b"+OK 1 ")  # still on the server
    [reply, _stat] = retr(daemon.port, user, 1)
    assert reply.startswith(b"+OK ") and b"[Virus] found" in reply
