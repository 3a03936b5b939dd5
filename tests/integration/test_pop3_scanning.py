"""POP3 scanning end to end: real Dovecot and a real clamd, driven by real clients."""

from __future__ import annotations

import hashlib
import io
import json
import os
import poplib
import re
import socket
import stat
import subprocess
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from p3scan.scan.scanning import CLEAN_HEADER
from tests.support import pop3_transcript as pt
from tests.support.clamd import CLAM_MAIL, CLAM_NAME, EICAR_NAME
from tests.support.dovecot import PASSWORD
from tests.support.messages import EICAR, message, standard_mailbox
from tests.support.procs import require_program

pytestmark = pytest.mark.integration

HEADER = CLEAN_HEADER["POP3"].encode()


def eicar_base64() -> bytes:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "eve@example.test", "bob@example.test", "b64"
    mail.set_content("see attachment\n")
    mail.add_attachment(EICAR, maintype="application", subtype="octet-stream",
                        filename="eicar.com")
    return mail.as_bytes(policy=mail.policy.clone(linesep="\r\n"))


def eicar_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("docs/eicar.com", EICAR)
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "eve@example.test", "bob@example.test", "zip"
    mail.set_content("zipped\n")
    mail.add_attachment(buffer.getvalue(), maintype="application", subtype="zip",
                        filename="invoice.zip")
    return mail.as_bytes(policy=mail.policy.clone(linesep="\r\n"))


VIRUSES = {
    "raw": (lambda: message("eicar raw", EICAR + b"\r\n", sender="eve@example.test"),
            EICAR_NAME),
    "base64": (eicar_base64, EICAR_NAME),
    "zip": (eicar_zip, EICAR_NAME),
    "clam.mail": (lambda: CLAM_MAIL.read_bytes().replace(b"\n", b"\r\n"), CLAM_NAME),
}


@pytest.fixture
def proxy(dovecot, clamd, p3scan):
    """p3scan in front of Dovecot, scanning with clamd over TCP."""
    return p3scan(targetip="127.0.0.1", targetport=dovecot.port, scannertype="clamd",
                  scanner=clamd.tcp, enabletop=True).start()


def retr_all(port: int, user: str, count: int) -> list[bytes]:
    commands = pt.login_commands(user, PASSWORD) + [
        (f"RETR {n}".encode(), True) for n in range(1, count + 1)] + [(b"QUIT", False)]
    return pt.transcript("127.0.0.1", port, commands)[4:-1]


def quarantined(daemon) -> list[tuple[Path, dict]]:
    spool = Path(daemon.options["virusdir"])
    return [(path, json.loads(path.with_name(path.name + ".json").read_text()))
            for path in sorted(spool.glob("p3scan.*")) if not path.name.endswith(".json")]


def assert_notification(reply: bytes, name: str) -> bytes:
    status, _, body = reply.partition(b"\r\n")
    assert re.fullmatch(rb"\+OK \d+ octets", status), status
    assert int(status.split()[1]) == len(body) - 3  # the count matches what follows
    assert body.endswith(b"\r\n.\r\n")
    assert f"Subject: [Virus] found in a mail to you: {name}".encode() in body
    assert name.encode() in body and b"was stopped by the mail gateway" in body
    assert EICAR not in body and b"TVqQ" not in body
    return body


@pytest.mark.parametrize("kind", VIRUSES)
def test_infected_message_is_quarantined_and_replaced(dovecot, proxy, kind):
    infected, name = VIRUSES[kind][0](), VIRUSES[kind][1]
    clean = standard_mailbox()
    user = dovecot.mailbox([clean[0], infected, clean[2]])
    direct = retr_all(dovecot.port, user, 3)
    replies = retr_all(proxy.port, user, 3)
    assert replies[0] == pt.with_header(direct[0], HEADER)
    assert replies[2] == pt.with_header(direct[2], HEADER)
    body = assert_notification(replies[1], name)
    (path, meta), = quarantined(proxy)
    assert f"/{path.name}".encode() in body  # %P3SCANID% names the quarantine file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.with_name(path.name + ".json").stat().st_mode) == 0o600
    served = direct[1].partition(b"\r\n")[2][:-3].replace(b"\r\n..", b"\r\n.")
    assert path.read_bytes() == served  # the message as Dovecot served it, unstuffed
    assert meta["virus"] == [name] and meta["user"] == user and meta["protocol"] == "POP3"
    assert meta["size"] == len(served) and meta["client"].startswith("127.0.0.1:")
    assert meta["message_number"] == "2"
    log = proxy.wait_log("Session done")
    assert re.search(rf"POP3 message 2: {len(served)} bytes, infected \({re.escape(name)}\), "
                     r"scanned in \d+\.\d{3}s", log)
    assert re.search(r"POP3 message 1: \d+ bytes, clean, scanned in", log)
    assert f"user: {user} virus: {name} file: /{path.name}" in log


def test_clean_edge_cases_are_byte_identical_through_dovecot(dovecot, proxy):
    user = dovecot.mailbox(standard_mailbox() + [
        message("no final newline", b"last line without newline"),
        b"Subject: header only, no empty line\r\nX: y\r\n",
        b"\r\nbody only, starts with an empty line\r\n",
        message("nul and 8-bit", b"a\0b\r\n\xff\xfe\x80\r\n" + b"z" * 70000 + b"\r\n"),
    ])
    commands = pt.login_commands(user, PASSWORD) + [
        (f"RETR {n}".encode(), True) for n in range(1, 8)] + [(b"QUIT", False)]
    direct = pt.transcript("127.0.0.1", dovecot.port, commands)
    proxied = pt.transcript("127.0.0.1", proxy.port, commands)
    assert proxied == pt.through_proxy(direct, commands, HEADER)
    assert proxied[8] == direct[8]  # no empty line: nothing inserted


def test_fetchmail_gets_clean_mail_and_notifications(dovecot, proxy, scratch):
    require_program("/usr/bin/fetchmail", "fetchmail")
    clean = standard_mailbox()
    user = dovecot.mailbox([clean[0], VIRUSES["base64"][0](), clean[2]])
    outdir = scratch / "fetched"
    outdir.mkdir()
    rc = scratch / "fetchmailrc"
    rc.write_text(f"""set no syslog
poll 127.0.0.1 service {proxy.port} protocol POP3 auth password timeout 60
  user "{user}" there with password "{PASSWORD}" is "root" here
  sslproto ''
  fetchall keep
  mda "/bin/sh -c 'cat > {outdir}/$$.eml'"
""")
    os.chmod(rc, 0o600)
    result = subprocess.run(["fetchmail", "-f", str(rc), "--pidfile", str(scratch / "fm.pid"),
                             "-N"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HOME": str(scratch)})
    assert result.returncode == 0, result.stdout + result.stderr
    fetched = [path.read_bytes() for path in outdir.iterdir()]
    assert len(fetched) == 3
    notices = [mail for mail in fetched if b"[Virus] found" in mail]
    assert len(notices) == 1 and EICAR_NAME.encode() in notices[0]
    for original in (clean[0], clean[2]):
        # fetchmail adds a Received line first and stores LF line ends
        head, _, body = original.replace(b"\r\n", b"\n").partition(b"\n\n")
        assert any(mail.endswith(head + b"\n" + HEADER + b"\n\n" + body) for mail in fetched)


def test_curl_gets_the_notification(dovecot, proxy):
    require_program("/usr/bin/curl", "curl")
    user = dovecot.mailbox([VIRUSES["zip"][0]()])
    result = subprocess.run(["curl", "-sS", "--max-time", "60",
                             f"pop3://{user}:{PASSWORD}@127.0.0.1:{proxy.port}/1"],
                            capture_output=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert f"Subject: [Virus] found in a mail to you: {EICAR_NAME}".encode() in result.stdout


def test_top_with_enabletop_is_scanned(dovecot, proxy):
    user = dovecot.mailbox([message("top", EICAR + b"\r\n")])
    replies = pt.transcript("127.0.0.1", proxy.port, pt.login_commands(user, PASSWORD) + [
        (b"TOP 1 5", True)])
    assert b"[Virus] found" in replies[-1]


def test_pipelined_retr_and_noop_still_gets_the_scanned_result(dovecot, proxy):
    user = dovecot.mailbox([message("pipelined", EICAR + b"\r\n"), standard_mailbox()[0]])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
        reader.readline()
        reader.readline()
        sock.sendall(b"RETR 1\r\nNOOP\r\nRETR 2\r\n")  # one packet
        first = _read_block(reader)
        assert b"[Virus] found" in first and EICAR not in first
        assert reader.readline() == b"+OK\r\n"  # the NOOP's own reply, in order
        assert HEADER in _read_block(reader)


def _read_block(reader) -> bytes:
    data = reader.readline()
    assert data.startswith(b"+OK"), data
    while not data.endswith(b"\r\n.\r\n"):
        data += reader.readline()
    return data


def test_capa_hides_stls_and_top_without_enabletop(dovecot, clamd, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, scannertype="clamd",
                    scanner=str(clamd.socket), enabletop="no").start()
    user = dovecot.mailbox([message("x", EICAR + b"\r\n")])
    replies = pt.transcript("127.0.0.1", daemon.port, pt.login_commands(user, PASSWORD) + [
        (b"TOP 1 0", True), (b"RETR 1", True)])
    assert b"PIPELINING" in replies[1] and b"UIDL" in replies[1]
    assert b"STLS" not in replies[1] and b"\r\nTOP\r\n" not in replies[1]
    assert replies[4].startswith(b"-ERR ")
    assert b"[Virus] found" in replies[5]  # over clamd's Unix socket


def test_justdelete_keeps_no_copy(dovecot, clamd, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, scannertype="clamd",
                    scanner=clamd.tcp, justdelete=True).start()
    user = dovecot.mailbox([message("x", EICAR + b"\r\n")])
    reply, = retr_all(daemon.port, user, 1)
    assert b"Per instruction, the message has been deleted." in reply
    assert quarantined(daemon) == []


def _stream_retr(port: int, user: str, drop: bytes = b"") -> tuple[int, str, bytes]:
    """RETR 1 read in chunks: (bytes received, sha256 without ``drop``, status line)."""
    digest = hashlib.sha256()
    total = 0
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(f"USER {user}\r\nPASS {PASSWORD}\r\nRETR 1\r\n".encode())
        reader.readline()
        reader.readline()
        status = reader.readline()
        first = reader.read(65536)
        total += len(first)
        digest.update(first.replace(drop, b"", 1) if drop else first)
        tail = first[-5:]
        while not tail.endswith(b"\r\n.\r\n"):
            chunk = reader.read1(1 << 20)
            assert chunk, "connection closed before the end of the message"
            total += len(chunk)
            digest.update(chunk)
            tail = (tail + chunk)[-5:]
        sock.sendall(b"QUIT\r\n")
    return total, digest.hexdigest(), status


def test_a_100_mb_message_streams_with_bounded_memory(dovecot, proxy):
    line = b"0123456789 the quick brown fox jumps over the lazy dog 0123456789abcdef\r\n"
    big = message("big", line * (100 * 1024 * 1024 // len(line)))
    user = dovecot.mailbox([big])
    del big
    direct_size, direct_digest, direct_status = _stream_retr(dovecot.port, user)
    size, digest, status = _stream_retr(proxy.port, user, drop=HEADER + b"\r\n")
    assert size == direct_size + len(HEADER) + 2
    assert digest == direct_digest
    assert status == pt.with_header(direct_status + b"\r\n\r\n", HEADER).partition(b"\r\n")[0] \
        + b"\r\n"
    peak = max(_peak_kb(pid) for pid in proxy.worker_pids())
    assert peak < 40 * 1024, f"a worker reached {peak} KB resident"


def _peak_kb(pid: int) -> int:
    for text in Path(f"/proc/{pid}/status").read_text().splitlines():
        if text.startswith("VmHWM:"):
            return int(text.split()[1])
    return 0


def test_basic_scanner_with_real_clamdscan_and_virusregexp(dovecot, clamd, p3scan, scratch):
    require_program("/usr/bin/clamdscan", "clamdscan")
    conf = scratch / "clamd-client.conf"
    conf.write_text(f"LocalSocket {clamd.socket}\n")
    conf.chmod(0o644)
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, scannertype="basic",
                    scanner=f"/usr/bin/clamdscan --no-summary --stream --config-file={conf}",
                    viruscode="1", virusregexp=".*: (.*) FOUND").start()
    user = dovecot.mailbox([eicar_base64(), standard_mailbox()[0]])
    infected, clean = retr_all(daemon.port, user, 2)
    assert_notification(infected, EICAR_NAME)
    assert HEADER in clean and clean.startswith(b"+OK ")


def test_dele_and_quit_pass_through(dovecot, proxy):
    user = dovecot.mailbox(standard_mailbox())
    commands = pt.login_commands(user, PASSWORD) + [(b"DELE 1", False), (b"QUIT", False)]
    replies = pt.transcript("127.0.0.1", proxy.port, commands)
    assert replies[4] == b"+OK Marked to be deleted.\r\n"
    assert replies[5] == b"+OK Logging out, messages deleted.\r\n"
    stat_reply = pt.transcript("127.0.0.1", dovecot.port, pt.login_commands(user, PASSWORD)
                               + [(b"STAT", False)])[-1]
    assert stat_reply.startswith(b"+OK 2 ")


def test_poplib_client_gets_the_notification(dovecot, proxy):
    user = dovecot.mailbox([standard_mailbox()[0], VIRUSES["raw"][0]()])
    pop = poplib.POP3("127.0.0.1", proxy.port, timeout=30)
    pop.user(user)
    pop.pass_(PASSWORD)
    count, _ = pop.stat()
    assert count == 2
    _, clean, _ = pop.retr(1)
    assert HEADER in clean
    _, notice, _ = pop.retr(2)
    assert f"Subject: [Virus] found in a mail to you: {EICAR_NAME}".encode() in notice
    assert pop.quit().startswith(b"+OK")
