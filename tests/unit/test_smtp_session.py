"""SMTP session behaviour against a scripted server."""

from __future__ import annotations

import pytest

from p3scan.proxy.smtp import SmtpSession, filter_ehlo
from tests.support.harness import Harness


@pytest.fixture
def smtp():
    harness = Harness(SmtpSession, "SMTP")
    assert harness.start(b"220 mx ESMTP\r\n") == b"220 mx ESMTP\r\n"
    yield harness
    harness.finish()


def test_ehlo_loses_starttls_chunking_binarymime_and_stays_well_formed(smtp):
    smtp.client_says(b"EHLO me\r\n")
    assert smtp.server_hears() == b"EHLO me\r\n"
    smtp.server_says(b"250-mx\r\n250-PIPELINING\r\n250-SIZE 100\r\n250-CHUNKING\r\n"
                     b"250-8BITMIME\r\n250-SMTPUTF8\r\n250-BINARYMIME\r\n250 STARTTLS\r\n")
    assert smtp.client_hears_lines(5) == (b"250-mx\r\n250-PIPELINING\r\n250-SIZE 100\r\n"
                                          b"250-8BITMIME\r\n250 SMTPUTF8\r\n")


def test_filter_ehlo_single_line():
    assert filter_ehlo([b"250 mx\r\n"]) == [b"250 mx\r\n"]
    assert filter_ehlo([b"250-mx\r\n", b"250 STARTTLS\r\n"]) == [b"250 mx\r\n"]


def test_starttls_gets_454_and_nothing_is_forwarded(smtp):
    smtp.client_says(b"STARTTLS\r\nNOOP\r\n")
    assert smtp.client_hears().startswith(b"454 ")
    assert smtp.server_hears() == b"NOOP\r\n"


def test_bdat_is_refused_and_its_chunk_skipped(smtp):
    smtp.client_says(b"BDAT 5 LAST\r\nhelloNOOP\r\n")
    assert smtp.client_hears().startswith(b"502 ")
    assert smtp.server_hears() == b"NOOP\r\n"


def test_auth_challenges_are_relayed(smtp):
    smtp.client_says(b"AUTH LOGIN\r\n")
    assert smtp.server_hears() == b"AUTH LOGIN\r\n"
    smtp.server_says(b"334 VXNlcm5hbWU6\r\n")
    assert smtp.client_hears() == b"334 VXNlcm5hbWU6\r\n"
    smtp.client_says(b"Ym9i\r\n")
    assert smtp.server_hears() == b"Ym9i\r\n"
    smtp.server_says(b"235 ok\r\n")
    assert smtp.client_hears() == b"235 ok\r\n"


def test_multiline_replies_are_relayed_whole(smtp):
    smtp.client_says(b"HELP\r\n")
    assert smtp.server_hears() == b"HELP\r\n"
    smtp.server_says(b"214-a\r\n214-b\r\n214 c\r\n")
    assert smtp.client_hears_lines(3) == b"214-a\r\n214-b\r\n214 c\r\n"
