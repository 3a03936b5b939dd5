"""The clients people use read a mailbox through p3scan, in useurl and in transparent mode.

A client namespace, a router namespace running p3scan and a server namespace running Dovecot
on port 110 (tests/support/netns.py).  mutt needs a terminal: it runs under script(1), with
its keys pushed by ``-e 'push ...'``, and copies every message into an mbox that the test
reads.  fetchmail delivers each message to a file through its ``mda``.

Both clients keep their defaults except for one setting each: mutt 2.2 and fetchmail 6.4
insist on TLS by default (``ssl_force_tls``, ``sslproto``), and p3scan offers the client no
TLS (it hides STLS, see p3scan(8)), so that requirement is turned off.
"""

from __future__ import annotations

import json
import mailbox
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p3scan.scan.scanners.eicar import NAME as EICAR_NAME
from p3scan.scan.scanning import CLEAN_HEADER
from tests.support import netns
from tests.support.dovecot import PASSWORD, Dovecot
from tests.support.messages import EICAR, message
from tests.support.p3scan_proc import P3scan
from tests.support.procs import require_program

pytestmark = pytest.mark.integration

TRANSPARENT_PORT, USEURL_PORT, SELF_PORT = 8110, 8111, 8112
SERVER = netns.SERVER_V4
NOTICE_SUBJECT = f"[Virus] found in a mail to you: {EICAR_NAME}"
HEADER_NAME = CLEAN_HEADER["POP3"].partition(":")[0]


@dataclass
class Gateway:
    """The three namespaces, Dovecot in the server one and two p3scans in the router."""

    topology: netns.Topology
    dovecot: Dovecot
    transparent: P3scan
    useurl: P3scan

    def endpoint(self, mode: str, user: str) -> tuple[str, int, str]:
        """(host, port, user name) a client in the client namespace uses in ``mode``."""
        if mode == "useurl":
            return netns.ROUTER_CLIENT_V4, USEURL_PORT, f"{user}#{SERVER}:110"
        return SERVER, 110, user


@pytest.fixture(scope="module")
def gateway(world_tmp: Path) -> Iterator[Gateway]:
    base = world_tmp / "clients"
    base.mkdir()
    os.chmod(base, 0o755)
    topology = netns.Topology.create(f"p3c{os.getpid() % 10000}")
    started: list = []
    try:
        dovecot = Dovecot(base / "dovecot", listen="*, ::", port=110, pop3s_port=995)
        started.append(dovecot.start(prefix=topology.server.prefix, probe=False))
        transparent = P3scan(base / "transparent", ip="::", port=TRANSPARENT_PORT)
        started.append(transparent.start(prefix=topology.router.prefix))
        topology.redirect(110, TRANSPARENT_PORT)
        useurl = P3scan(base / "useurl", ip="::", port=USEURL_PORT, useurl=True)
        started.append(useurl.start(prefix=topology.router.prefix))
        yield Gateway(topology, dovecot, transparent, useurl)
    finally:
        for process in reversed(started):
            process.stop()
        topology.close()


def mailbox_with_a_virus(gateway: Gateway) -> str:
    return gateway.dovecot.mailbox([
        message("first", b"Hi,\r\nshort message.\r\n"),
        message("infected", EICAR + b"\r\n", sender="eve@example.test"),
        message("third", b"line\r\n" * 200),
    ])


def assert_client_saw(messages: list[bytes]) -> None:
    """Two clean messages with p3scan's header, and the notification instead of the virus."""
    assert len(messages) == 3, messages
    by_subject = {mail.split(b"Subject: ", 1)[1].split(b"\n", 1)[0].strip().decode(): mail
                  for mail in messages}
    assert set(by_subject) == {"first", NOTICE_SUBJECT, "third"}
    first = by_subject["first"].replace(b"\r\n", b"\n")
    assert b"\nHi,\nshort message.\n" in first
    assert f"\n{HEADER_NAME}: ".encode() in first
    assert b"\n\n" + b"line\n" * 200 in by_subject["third"].replace(b"\r\n", b"\n")
    notice = by_subject[NOTICE_SUBJECT]
    assert b"was stopped by the mail gateway" in notice and b"Subject:  infected" in notice
    for mail in messages:
        assert EICAR not in mail


# --- mutt ------------------------------------------------------------------------------------

def run_mutt(gateway: Gateway, mode: str, user: str, workdir: Path) -> tuple[list[bytes], str]:
    """mutt, in the client namespace, opens the POP3 mailbox and copies every message into
    an mbox, all by pushed keys; (the messages it saved, what it showed on its screen)."""
    require_program("/usr/bin/mutt", "mutt")
    require_program("/usr/bin/script", "bsdutils")
    host, port, login = gateway.endpoint(mode, user)
    saved = workdir / "saved.mbox"
    rc = workdir / "muttrc"
    rc.write_text(f'''set pop_user="{login}"
set pop_pass="{PASSWORD}"
set folder="{workdir}"
set ssl_force_tls=no
set confirmcreate=no
''')
    keys = f"<tag-pattern>~A<enter><tag-prefix><copy-message>{saved}<enter><quit>"
    mutt = ["mutt", "-n", "-F", str(rc), "-f", f"pop://{host}:{port}/", "-e", f'push "{keys}"']
    result = subprocess.run(gateway.topology.client.prefix
                            + ["script", "-qec", shlex.join(mutt), "/dev/null"],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                            env={"PATH": os.environ["PATH"], "HOME": str(workdir),
                                 "TERM": "xterm", "LANG": "C.UTF-8"})
    screen = result.stdout.decode(errors="replace")
    assert result.returncode == 0, f"mutt failed ({result.returncode}): {screen[-2000:]}"
    assert saved.exists(), f"mutt saved nothing; its screen:\n{screen[-2000:]}"
    return [bytes(mail) for mail in mailbox.mbox(str(saved))], screen


@pytest.mark.parametrize("mode", ["useurl", "transparent"])
def test_mutt_reads_the_mailbox(gateway, mode, scratch):
    user = mailbox_with_a_virus(gateway)
    messages, screen = run_mutt(gateway, mode, user, scratch)
    assert "Msgs:3" in screen  # its index, built with TOP (enabletop is on by default)
    assert_client_saw(messages)
    daemon = getattr(gateway, mode)
    log = daemon.wait_log(rf"Session done.*user={user}\b")
    assert re.search(rf"Session done \(Clean Exit\)\. Mails: 6 .*user={user}\b", log)  # TOP+RETR
    assert f"user: {user} virus: {EICAR_NAME}" in log


# --- fetchmail -------------------------------------------------------------------------------

def run_fetchmail(gateway: Gateway, mode: str, user: str, workdir: Path) -> list[bytes]:
    require_program("/usr/bin/fetchmail", "fetchmail")
    host, port, login = gateway.endpoint(mode, user)
    outdir = workdir / "fetched"
    outdir.mkdir()
    rc = workdir / "fetchmailrc"
    rc.write_text(f"""poll {host} service {port} protocol POP3
  user "{login}" there with password "{PASSWORD}" is "root" here
  sslproto ''
  mda "/bin/sh -c 'cat > {outdir}/$$.eml'"
""")
    os.chmod(rc, 0o600)
    result = subprocess.run(gateway.topology.client.prefix
                            + ["fetchmail", "-f", str(rc), "--pidfile", str(workdir / "fm.pid"),
                               "-N", "-v"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HOME": str(workdir)})
    assert result.returncode == 0, result.stdout + result.stderr
    return [path.read_bytes() for path in sorted(outdir.iterdir())]


@pytest.mark.parametrize("mode", ["useurl", "transparent"])
def test_fetchmail_reads_the_mailbox(gateway, mode, scratch):
    user = mailbox_with_a_virus(gateway)
    assert_client_saw(run_fetchmail(gateway, mode, user, scratch))
    getattr(gateway, mode).wait_log(rf"Session done.*user={user}\b")


# --- useurl cannot be turned against the gateway ---------------------------------------------

PROBE = """
import json, socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
reader = sock.makefile("rb")
replies = [reader.readline().decode("latin-1")]
for line in sys.argv[3:]:
    sock.sendall(line.encode() + b"\\r\\n")
    replies.append(reader.readline().decode("latin-1"))
print(json.dumps(replies))
"""


def probe(gateway: Gateway, port: int, *lines: str) -> list[str]:
    result = subprocess.run(gateway.topology.client.prefix
                            + [sys.executable, "-c", PROBE, netns.ROUTER_CLIENT_V4, str(port),
                               *lines], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_useurl_refuses_p3scan_itself_on_every_local_address(gateway, scratch):
    daemon = P3scan(scratch / "p3scan", ip="::", port=SELF_PORT, useurl=True,
                    useurlports=f"110, 995, {SELF_PORT}")
    daemon.start(prefix=gateway.topology.router.prefix)
    try:
        targets = [netns.ROUTER_CLIENT_V4, netns.ROUTER_SERVER_V4,
                   f"[{netns.ROUTER_CLIENT_V6}]", f"[{netns.ROUTER_SERVER_V6}]", "127.0.0.1",
                   "127.0.0.53", "0.0.0.0", "[::]", "[::1]"]
        replies = probe(gateway, SELF_PORT, *[f"USER bob#{t}:{SELF_PORT}" for t in targets])
        replies += probe(gateway, SELF_PORT, f"USER bob#localhost:{SELF_PORT}",
                         f"USER bob#{SERVER}:25", f"USER bob#{'a' * 64}.example",
                         "USER bob#[2001:db8::1", "USER bob#b\u00fccher.example")
        log = daemon.wait_log("Unable to use destination", count=14)
        assert daemon.log().count("Connection from") == 0  # never connected to itself
    finally:
        daemon.stop()
    assert replies[0] == "+OK\r\n" and replies[10] == "+OK\r\n"
    refused = replies[1:10] + replies[11:12]
    assert all(r.startswith("-ERR p3scan: ") and "is p3scan itself, that would loop" in r
               for r in refused), refused
    assert replies[12] == (f"-ERR p3scan: port 25 is not allowed in useurl mode (useurlports: "
                           f"110, 995, {SELF_PORT})\r\n")
    assert replies[13].startswith("-ERR p3scan: a label of the host name is longer than 63")
    assert replies[14].startswith("-ERR p3scan: '[' without ']'")
    assert replies[15].startswith("-ERR p3scan: the host name must be ASCII")
    assert "Traceback" not in log
    assert f"Unable to use destination in USER 'bob#localhost:{SELF_PORT}': localhost:" \
           f"{SELF_PORT} (127.0.0.1) is p3scan itself" in log


def test_useurl_default_ports_then_a_good_user(gateway):
    user = gateway.dovecot.mailbox([message("x")])
    replies = probe(gateway, USEURL_PORT, f"USER {user}#{SERVER}:143", f"USER {user}#{SERVER}",
                    f"PASS {PASSWORD}", "STAT", "QUIT")
    assert replies[1] == ("-ERR p3scan: port 143 is not allowed in useurl mode (useurlports: "
                          "110, 995)\r\n")
    assert replies[2].startswith("+OK") and replies[3].startswith("+OK Logged in")
    assert replies[4].startswith("+OK 1 ")
    log = gateway.useurl.wait_log(rf"Session done.*user={user}\b")
    assert f"Real-server address is {SERVER}:110" in log
