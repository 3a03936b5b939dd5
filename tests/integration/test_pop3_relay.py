"""POP3 relayed through p3scan returns exactly what Dovecot returns directly."""

from __future__ import annotations

import pytest

from p3scan.scan.scanning import CLEAN_HEADER
from tests.support import pop3_transcript as pt
from tests.support.dovecot import PASSWORD
from tests.support.messages import standard_mailbox

pytestmark = pytest.mark.integration


HEADER = CLEAN_HEADER["POP3"].encode()


def test_dovecot_offers_stls_so_filtering_is_exercised(dovecot):
    user = dovecot.mailbox(standard_mailbox())
    capa = pt.transcript("127.0.0.1", dovecot.port, pt.login_commands(user, PASSWORD))[1]
    assert b"\r\nSTLS\r\n" in capa


@pytest.mark.parametrize("kind", ["user", "auth"])
def test_targetip_mode_is_byte_exact(dovecot, p3scan, kind):
    user = dovecot.mailbox(standard_mailbox())
    commands = pt.scenario(user, PASSWORD, kind)
    direct = pt.transcript("127.0.0.1", dovecot.port, commands)
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, enabletop=True).start()
    proxied = pt.transcript("127.0.0.1", daemon.port, commands)
    assert proxied == pt.through_proxy(direct, commands, HEADER)
    assert b"STLS" not in proxied[1] and b"\r\nTOP\r\n" in proxied[1]
    assert proxied[9].startswith(b"+OK ") and HEADER in proxied[9]  # RETR 1


def test_useurl_mode_is_byte_exact_after_the_greeting(dovecot, p3scan):
    user = dovecot.mailbox(standard_mailbox())
    commands = [(f"USER {user}".encode(), False), (f"PASS {PASSWORD}".encode(), False),
                (b"CAPA", True)] + pt.mailbox_commands()
    direct = pt.transcript("127.0.0.1", dovecot.port, commands)
    daemon = p3scan(useurl=True, useurlports=dovecot.port).start()
    target = f"USER {user}#127.0.0.1:{dovecot.port}".encode()
    proxied = pt.transcript("127.0.0.1", daemon.port,
                            [(b"STAT", False), (b"CAPA", True), (target, False),
                             (f"PASS {PASSWORD}".encode(), False), (b"CAPA", True)]
                            + pt.mailbox_commands())
    assert proxied[0] == b"+OK\r\n"
    assert proxied[1] == b"-ERR Not Identified\r\n"
    assert proxied[2] == (b"+OK Capability list follows\r\nUSER\r\nTOP\r\nUIDL\r\n"
                          b"RESP-CODES\r\nPIPELINING\r\n.\r\n")  # ours, before USER
    assert proxied[3:] == pt.through_proxy(direct[1:], commands, HEADER, greeting=False)
