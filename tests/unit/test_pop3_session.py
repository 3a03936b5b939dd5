"""POP3 session behaviour against a scripted server, byte for byte."""

from __future__ import annotations

import base64

import pytest

from p3scan.proxy.pop3 import Pop3Session, expects_block, sasl_plain_user
from tests.support.harness import Harness


@pytest.fixture
def pop():
    harness = Harness(Pop3Session)
    assert harness.start(b"+OK ready <1.2@host>\r\n") == b"+OK ready <1.2@host>\r\n"
    yield harness
    harness.finish()


CAPA = b"+OK list\r\nTOP\r\nUSER\r\nPIPELINING\r\nSTLS\r\nSASL PLAIN\r\n.\r\n"


def test_capa_hides_stls_and_top_and_keeps_bytes():
    pop = Harness(Pop3Session, enabletop=False)
    pop.start(b"+OK\r\n")
    pop.client_says(b"CAPA\r\n")
    assert pop.server_hears() == b"CAPA\r\n"
    pop.server_says(CAPA)
    assert pop.client_hears_lines(5) == b"+OK list\r\nUSER\r\nPIPELINING\r\nSASL PLAIN\r\n.\r\n"
    pop.finish()


def test_capa_keeps_top_by_default():  # enabletop is on by default since 3.0
    harness = Harness(Pop3Session)
    harness.start(b"+OK\r\n")
    harness.client_says(b"CAPA\r\n")
    assert harness.server_hears() == b"CAPA\r\n"
    harness.server_says(CAPA)
    assert harness.client_hears_lines(6) == (b"+OK list\r\nTOP\r\nUSER\r\nPIPELINING\r\n"
                                             b"SASL PLAIN\r\n.\r\n")
    harness.finish()


def test_top_without_enabletop_is_refused_at_once():
    pop = Harness(Pop3Session, enabletop=False)
    pop.start(b"+OK\r\n")
    pop.client_says(b"TOP 1 0\r\nNOOP\r\n")
    assert pop.client_hears().startswith(b"-ERR ")
    assert pop.server_hears() == b"NOOP\r\n"  # TOP never reached the server
    pop.finish()


def test_stls_is_answered_locally(pop):
    pop.client_says(b"STLS\r\nNOOP\r\n")
    assert pop.client_hears().startswith(b"-ERR ")
    assert pop.server_hears() == b"NOOP\r\n"  # STLS never reached the server


def test_auth_continuations_are_relayed_and_the_user_recorded(pop):
    token = base64.b64encode(b"\0bob\0secret") + b"\r\n"
    pop.client_says(b"AUTH PLAIN\r\n")
    assert pop.server_hears() == b"AUTH PLAIN\r\n"
    pop.server_says(b"+ \r\n")
    assert pop.client_hears() == b"+ \r\n"
    pop.client_says(token)
    assert pop.server_hears() == token
    pop.server_says(b"+OK Logged in.\r\n")
    assert pop.client_hears() == b"+OK Logged in.\r\n"
    assert pop.info.user == "bob"


def test_pipelined_commands_are_answered_in_order(pop):
    pop.client_says(b"LIST\r\nSTAT\r\nUIDL 1\r\n")
    assert pop.server_hears() == b"LIST\r\n"
    pop.server_says(b"+OK 1 messages\r\n1 120\r\n.\r\n")
    assert pop.server_hears() == b"STAT\r\n"  # only after LIST's block was relayed
    pop.server_says(b"+OK 1 120\r\n")
    assert pop.server_hears() == b"UIDL 1\r\n"
    pop.server_says(b"+OK 1 abc\r\n")
    assert pop.client_hears_lines(5) == (b"+OK 1 messages\r\n1 120\r\n.\r\n+OK 1 120\r\n"
                                         b"+OK 1 abc\r\n")


def test_a_multiline_reply_to_an_unknown_command_is_a_violation(pop):
    """Only the status line of an unknown command is relayed: what follows is data no
    command asked for (issue 11: it used to be relayed later, unscanned)."""
    pop.client_says(b"XTND XMIT\r\n")
    assert pop.server_hears() == b"XTND XMIT\r\n"
    pop.server_says(b"+OK here\r\nsome\r\n.\r\n")
    assert pop.client_hears() == b"+OK here\r\n"
    assert pop.client_hears().startswith(b"-ERR [SYS/TEMP] p3scan: the server sent data")


def test_long_lines_and_bare_lf_pass_unchanged(pop):
    pop.client_says(b"RETR 1\r\n")
    assert pop.server_hears() == b"RETR 1\r\n"
    rest = b"\n" + b"z" * 20000 + b"\r\n..dot\r\n.\r\n"
    pop.server_says(b"+OK 20 octets\r\nSubject: x\n" + rest)
    header = pop.scanning.clean_header("POP3") + b"\n"  # the header block ends with a bare LF
    expected = (b"+OK %d octets\r\n" % (20 + len(header))  # the server's count + the header
                + b"Subject: x\n" + header + rest)
    assert pop.client_hears(len(expected)) == expected


def test_error_replies_end_a_would_be_block(pop):
    pop.client_says(b"LIST 9\r\nNOOP\r\n")
    assert pop.server_hears() == b"LIST 9\r\n"
    pop.server_says(b"-ERR no such message\r\n")
    assert pop.server_hears() == b"NOOP\r\n"
    assert pop.client_hears() == b"-ERR no such message\r\n"


def test_quit_ends_the_session(pop):
    pop.client_says(b"QUIT\r\n")
    assert pop.server_hears() == b"QUIT\r\n"
    pop.server_says(b"+OK bye\r\n")
    assert pop.client_hears() == b"+OK bye\r\n"
    pop.thread.join(5)
    assert pop.info.outcome == "ok"


def test_apop_records_the_user(pop):
    pop.client_says(b"APOP alice 0123456789abcdef\r\n")
    assert pop.server_hears().startswith(b"APOP alice")
    pop.server_says(b"+OK\r\n")
    assert pop.client_hears() == b"+OK\r\n"
    assert pop.info.user == "alice"


def test_an_overlong_command_gets_an_error():
    harness = Harness(Pop3Session)
    harness.start(b"+OK\r\n")
    harness.client_says(b"NOOP " + b"x" * 20000 + b"\r\n")
    assert harness.client_hears().startswith(b"-ERR [SYS/PERM]")
    harness.thread.join(5)
    assert harness.info.outcome.startswith("error: client line longer")
    harness.finish()


def test_block_rules():
    assert expects_block("LIST", "") and not expects_block("LIST", "1")
    assert expects_block("RETR", "1") and expects_block("CAPA", "")
    assert expects_block("AUTH", "") and not expects_block("AUTH", "PLAIN")
    assert not expects_block("STAT", "")


def test_sasl_plain_user():
    assert sasl_plain_user(base64.b64encode(b"\0bob\0pw").decode()) == "bob"
    assert sasl_plain_user("!!!") is None
