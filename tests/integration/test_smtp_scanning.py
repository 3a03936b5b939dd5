"""SMTP scanning of outgoing mail through p3scan to a real MTA (Exim) and to aiosmtpd."""

from __future__ import annotations

import json
import os
import smtplib
import socket
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest

from p3scan.scan.scanning import CLEAN_HEADER
from tests.support import oracle
from tests.support.clamd import Clamd
from tests.support.fakes import FakeServer
from tests.support.messages import EICAR, message, smtp_body
from tests.support.procs import require_program

pytestmark = pytest.mark.integration

HEADER = CLEAN_HEADER["SMTP"].encode()
REJECT = b"554 Virus detected! P3scan rejected message!"


def with_attachment(payload: bytes, name: str = "report.pdf") -> bytes:
    mail = EmailMessage()
    mail["From"], mail["To"] = "alice@example.test", "bob@example.test"
    mail["Subject"], mail["Message-ID"] = f"attached {name}", f"<{name}@example.test>"
    mail["Date"] = "Tue, 24 Nov 2026 10:00:00 +0000"
    mail.set_content("Please find it attached.\n.leading dot line\n")
    mail.add_attachment(payload, maintype="application", subtype="octet-stream",
                        filename=name)
    return mail.as_bytes(policy=mail.policy.clone(linesep="\r\n"))


def proxy_for(p3scan, port: int, clamd: Clamd, **options):
    return p3scan(targetip="127.0.0.1", targetport=port, emailport=port,
                  scannertype="clamd", scanner=clamd.tcp, **options).start()


def swaks(port: int, data: Path, *extra: str, to: str = "bob@example.test"):
    require_program("/usr/bin/swaks", "swaks")
    return subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(port), "--helo",
                           "client.test", "--from", "alice@example.test", "--to", to,
                           "--data", f"@{data}", *extra], capture_output=True, text=True,
                          timeout=60)


def quarantined(daemon) -> list[tuple[Path, dict]]:
    spool = Path(daemon.options["virusdir"])
    return [(path, json.loads(path.with_name(path.name + ".json").read_text()))
            for path in sorted(spool.glob("p3scan.*")) if not path.name.endswith(".json")]


# --- through Exim ---------------------------------------------------------------------------


def test_ehlo_hides_what_p3scan_cannot_honour(exim, clamd, p3scan):
    daemon = proxy_for(p3scan, exim.port, clamd)
    with smtplib.SMTP("127.0.0.1", exim.port, timeout=30) as direct:
        direct.ehlo("client.test")
        assert direct.has_extn("starttls") and direct.has_extn("chunking")
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        for kept in ("size", "8bitmime", "pipelining", "smtputf8"):
            assert smtp.has_extn(kept), kept
        assert not smtp.has_extn("starttls") and not smtp.has_extn("chunking")
        assert smtp.docmd("STARTTLS")[0] == 454


def test_clean_message_with_attachment_arrives_intact_through_exim(exim, clamd, p3scan,
                                                                   scratch):
    daemon = proxy_for(p3scan, exim.port, clamd)
    original = with_attachment(os.urandom(3000))
    data = scratch / "clean.eml"
    data.write_bytes(original)
    result = swaks(daemon.port, data)
    assert result.returncode == 0, result.stdout
    stored, = exim.wait_delivered(1)
    # swaks ends --data with one more CRLF; Exim stores LF line ends after its trace headers
    sent = original + b"\r\n"
    assert stored.endswith(oracle.insert_header(sent, HEADER).replace(b"\r\n", b"\n"))


def test_infected_message_gets_554_and_never_reaches_exim(exim, clamd, p3scan, scratch):
    daemon = proxy_for(p3scan, exim.port, clamd)
    data = scratch / "virus.eml"
    data.write_bytes(with_attachment(EICAR, "eicar.com"))
    result = swaks(daemon.port, data)
    assert result.returncode != 0
    assert REJECT.decode() in result.stdout
    assert " -> QUIT" in result.stdout and "<-  221" in result.stdout  # the session went on
    (path, meta), = quarantined(daemon)
    assert path.read_bytes() == data.read_bytes() + b"\r\n"  # as swaks sent it
    assert meta["envelope"] == {"helo": "client.test", "mail_from": "alice@example.test",
                                "rcpt_to": ["bob@example.test"]}
    assert meta["protocol"] == "SMTP" and meta["virus"] == ["P3scanTest.Eicar.UNOFFICIAL"]
    assert exim.delivered() == [] and "<= alice@example.test" not in exim.mainlog()


def test_pipelining_client_through_exim(exim, clamd, p3scan, scratch):
    daemon = proxy_for(p3scan, exim.port, clamd)
    data = scratch / "clean.eml"
    data.write_bytes(message("pipelined", smtp_body()))
    result = swaks(daemon.port, data, "--pipeline")
    assert result.returncode == 0, result.stdout
    assert "PIPELINING" in result.stdout
    exim.wait_delivered(1)


def test_refused_recipient_gets_the_mta_reply(exim, clamd, p3scan, scratch):
    daemon = proxy_for(p3scan, exim.port, clamd)
    data = scratch / "clean.eml"
    data.write_bytes(message("to nobody"))
    result = swaks(daemon.port, data, to="nobody@example.test")
    assert "<** 550 5.1.1 no such user" in result.stdout
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("alice@example.test")
        assert smtp.rcpt("nobody@example.test") == (550, b"5.1.1 no such user")
        assert smtp.docmd("DATA")[0] == 503  # no recipient: Exim's own refusal
        assert smtp.rset()[0] == 250


def test_msmtp_sends_through_the_proxy(exim, clamd, p3scan, scratch):
    require_program("/usr/bin/msmtp", "msmtp")
    daemon = proxy_for(p3scan, exim.port, clamd)
    original = message("via msmtp", smtp_body())
    result = subprocess.run(["msmtp", "--host=127.0.0.1", f"--port={daemon.port}",
                             "--tls=off", "--auth=off", "--from=alice@example.test",
                             "--domain=client.test", "bob@example.test"],
                            input=original, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    stored, = exim.wait_delivered(1)
    assert stored.endswith(oracle.insert_header(original, HEADER).replace(b"\r\n", b"\n"))


# --- through aiosmtpd, byte for byte -------------------------------------------------------


def test_two_messages_in_one_session_only_the_clean_one_arrives(sink, clamd, p3scan):
    daemon = proxy_for(p3scan, sink.port, clamd)
    clean = message("second, clean", smtp_body())
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            smtp.sendmail("alice@example.test", ["bob@example.test"],
                          message("first, infected", EICAR + b"\r\n"))
        assert caught.value.smtp_code == 554
        assert smtp.rset()[0] == 250
        assert smtp.sendmail("alice@example.test", ["carol@example.test"], clean) == {}
    (envelope, data), = sink.messages()
    assert envelope["to"] == ["carol@example.test"]
    assert data == oracle.insert_header(clean, HEADER)


def test_dot_stuffing_8bitmime_and_smtputf8_survive(sink, clamd, p3scan):
    daemon = proxy_for(p3scan, sink.port, clamd)
    body = ".\r\n..\r\n.x\r\n...\r\n" + "gr\u00fc\u00dfe \u20ac \U0001f600\r\n"
    original = message("utf-8 \u00e9", body.encode(), sender="j\u00f6rg@example.test")
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        refused = smtp.sendmail("j\u00f6rg@example.test", ["b\u00f6b@example.test"], original,
                                mail_options=["BODY=8BITMIME", "SMTPUTF8"])
        assert refused == {}
    (envelope, data), = sink.messages()
    assert envelope["from"] == "j\u00f6rg@example.test"
    assert data == oracle.insert_header(original, HEADER)


def test_auth_plain_passes_through(scratch, clamd, p3scan):
    from tests.support.smtp_sink import Sink

    sink = Sink(scratch / "auth-sink", users={"alice": "s3cret"}).start()
    try:
        daemon = proxy_for(p3scan, sink.port, clamd)
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            assert smtp.has_extn("auth")
            assert smtp.login("alice", "s3cret")[0] == 235  # AUTH PLAIN, as smtplib prefers
            smtp.sendmail("alice@example.test", ["bob@example.test"], message("authed"))
        assert len(sink.messages()) == 1
        assert "user=alice" in daemon.wait_log("Session done")
    finally:
        sink.stop()


def test_clamd_down_gives_451_and_nothing_is_sent(sink, p3scan, scratch):
    own = Clamd(scratch / "clamd").start()
    daemon = proxy_for(p3scan, sink.port, own)
    own.stop()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            smtp.sendmail("alice@example.test", ["bob@example.test"], message("while down"))
        assert caught.value.smtp_code == 451
        assert caught.value.smtp_error.startswith(b"4.3.0 p3scan: the message could not be")
        assert smtp.noop()[0] == 250  # the session goes on
    assert sink.messages() == []


def test_the_mta_refusing_the_message_is_relayed_exactly(scratch, clamd, p3scan):
    from tests.support.smtp_sink import Sink

    class Refuser:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            return "552 5.3.4 Message too big for this test"

    sink = Sink(scratch / "refusing", handler=Refuser()).start()
    try:
        daemon = proxy_for(p3scan, sink.port, clamd)
        with (smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp,
              pytest.raises(smtplib.SMTPDataError) as caught):
            smtp.sendmail("alice@example.test", ["bob@example.test"], message("refused"))
        assert (caught.value.smtp_code, caught.value.smtp_error) == (
            552, b"5.3.4 Message too big for this test")
    finally:
        sink.stop()


def test_mta_gone_during_data_gives_a_4xx_never_250(clamd, p3scan):
    def respond(line: bytes):
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            return b"250-fake\r\n250 8BITMIME\r\n"
        if verb == b"DATA":
            return b"354 go ahead\r\n"
        if verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            return b"250 ok\r\n"
        return None  # the first line of the message: hang up

    server = FakeServer(b"220 fake ESMTP\r\n", respond)
    try:
        daemon = proxy_for(p3scan, server.port, clamd)
        with (smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp,
              pytest.raises(smtplib.SMTPDataError) as caught):
            smtp.sendmail("alice@example.test", ["bob@example.test"], message("lost"))
        assert caught.value.smtp_code == 451
    finally:
        server.close()


def raw_smtp(port: int, *lines: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"".join(line + b"\r\n" for line in lines))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_checksize_relays_big_announced_messages_unscanned(sink, clamd, p3scan):
    daemon = proxy_for(p3scan, sink.port, clamd, checksize=4)
    infected = message("announced big", EICAR + b"\r\n")
    for size in (6000, 5000):  # 5 KB > 4: unscanned; 4 KB: scanned
        replies = raw_smtp(daemon.port, b"EHLO c", f"MAIL FROM:<a@x> SIZE={size}".encode(),
                           b"RCPT TO:<b@y>", b"DATA", infected + b".", b"QUIT")
        if size == 6000:
            assert b"354 End data with" in replies and b"250 2.0.0 Message accepted" in replies
        else:
            assert REJECT in replies
    (_, data), = sink.messages()
    assert data == infected  # relayed as it was, without an X-P3Scan line
    assert "SMTP Message too large for scanning: 5" in daemon.log()


FOOTER_CASES = {  # footer command set?, footer file: (X-P3Scan lines, footer block)
    "neither": (False, None),
    "file only": (False, b""),
    "command only": (True, None),
    "both, empty file": (True, b""),
    "both, with text": (True, b"Scanned by the gateway.\n"),
}


@pytest.mark.parametrize("case", FOOTER_CASES)
def test_footer_cases(sink, clamd, p3scan, scratch, case):
    command, text = FOOTER_CASES[case]
    footerfile = scratch / "p3scan.mail.footer"
    if text is not None:
        footerfile.write_bytes(text)
        footerfile.chmod(0o644)
    daemon = proxy_for(p3scan, sink.port, clamd, footerfile=footerfile,
                       footer="/bin/echo ScannerVersion 1.0" if command else None)
    original = message("footer", b"plain text body\r\n")
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
        smtp.sendmail("alice@example.test", ["bob@example.test"], original)
    (_, data), = sink.messages()
    headers = HEADER + (b"\r\nX-P3Scan: ScannerVersion 1.0" if command else b"")
    expected = oracle.insert_header(original, headers)
    if text is None:
        assert data == expected
        return
    lines = [b"**********", *text.splitlines(),
             b"P3Scan 3.0.0 running on " + socket.gethostname().encode() + b".",
             *([b"ScannerVersion 1.0"] if command else []), b"**********"]
    assert data.startswith(expected)
    footer = data[len(expected):].split(b"\r\n")
    assert footer[-1] == b"" and len(footer) == len(lines) + 1
    for got, want in zip(footer, lines, strict=False):
        assert got.startswith(want)


@pytest.mark.parametrize(("kind", "gets_footer"), [
    ("text/plain; charset=us-ascii", True),
    ("text/plain;\r\n charset=utf-8", True),
    ("multipart/mixed; boundary=b", False),
    ("MULTIPART/signed; boundary=b; protocol=\"application/pgp-signature\"", False),
    ("text/html", False),
])
def test_footer_only_for_plain_unsigned_text(sink, clamd, p3scan, scratch, kind, gets_footer):
    footerfile = scratch / "p3scan.mail.footer"
    footerfile.write_bytes(b"footer text\n")
    footerfile.chmod(0o644)
    daemon = proxy_for(p3scan, sink.port, clamd, footerfile=footerfile)
    multipart = b"--b\r\nContent-Type: text/plain\r\n\r\npart\r\n--b--\r\n"
    body = multipart if "multipart" in kind.lower() else b"text\r\n"
    original = message("ct", body, extra_headers=f"Content-Type: {kind}\r\n".encode())
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
        smtp.sendmail("alice@example.test", ["bob@example.test"], original)
    (_, data), = sink.messages()
    assert (b"footer text" in data) == gets_footer


def test_no_footer_for_inline_pgp_signed_text(sink, clamd, p3scan, scratch):
    footerfile = scratch / "p3scan.mail.footer"
    footerfile.write_bytes(b"footer text\n")
    footerfile.chmod(0o644)
    daemon = proxy_for(p3scan, sink.port, clamd, footerfile=footerfile)
    signed = (b"-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA256\r\n\r\nhello\r\n"
              b"-----BEGIN PGP SIGNATURE-----\r\nxyz\r\n-----END PGP SIGNATURE-----\r\n")
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
        smtp.sendmail("alice@example.test", ["bob@example.test"], message("signed", signed))
    (_, data), = sink.messages()
    assert b"footer text" not in data and data.endswith(signed)


def test_without_size_a_large_message_is_scanned_anyway(sink, clamd, p3scan):
    daemon = proxy_for(p3scan, sink.port, clamd, checksize=4)
    infected = message("large, no SIZE", b"x" * 20000 + b"\r\n" + EICAR + b"\r\n")
    replies = raw_smtp(daemon.port, b"EHLO c", b"MAIL FROM:<a@x>", b"RCPT TO:<b@y>", b"DATA",
                       infected + b".", b"QUIT")
    assert REJECT in replies and sink.messages() == []
