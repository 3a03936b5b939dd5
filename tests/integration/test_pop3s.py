"""POP3S: p3scan talks TLS to the server (implicit TLS on sslport) and verifies it."""

from __future__ import annotations

import pytest

from p3scan.scan.scanning import CLEAN_HEADER
from tests.support import pop3_transcript as pt
from tests.support.dovecot import PASSWORD
from tests.support.messages import EICAR, message

pytestmark = pytest.mark.integration


def pop3s_proxy(p3scan, dovecot, **options):
    return p3scan(targetip="127.0.0.1", targetport=dovecot.pop3s_port,
                  sslport=dovecot.pop3s_port, **options).start()


def test_pop3s_is_scanned_over_a_verified_tls_connection(dovecot, p3scan, tls_ca):
    daemon = pop3s_proxy(p3scan, dovecot, sslcafile=tls_ca["ca"])
    user = dovecot.mailbox([message("over tls"), message("virus", EICAR + b"\r\n")])
    replies = pt.transcript("127.0.0.1", daemon.port, pt.login_commands(user, PASSWORD) + [
        (b"RETR 1", True), (b"RETR 2", True), (b"QUIT", False)])
    assert replies[0].startswith(b"+OK Dovecot")
    assert CLEAN_HEADER["POP3"].encode() in replies[4]
    assert b"[Virus] found" in replies[5]
    assert "POP3S Connection from 127.0.0.1" in daemon.wait_log("Session done")


def test_an_unverifiable_server_is_refused(dovecot, p3scan):
    daemon = pop3s_proxy(p3scan, dovecot)  # the system CA store does not know the test CA
    greeting = pt.transcript("127.0.0.1", daemon.port, [])[0]
    assert greeting.startswith(b"-ERR [SYS/TEMP] p3scan: TLS handshake with 127.0.0.1:")
    assert greeting.endswith(b"failed: unable to get local issuer certificate\r\n")


def test_sslverify_no_accepts_any_certificate(dovecot, p3scan):
    daemon = pop3s_proxy(p3scan, dovecot, sslverify="no")
    assert pt.transcript("127.0.0.1", daemon.port, [])[0].startswith(b"+OK Dovecot")
