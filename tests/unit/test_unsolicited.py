"""Data from the server that no command asked for ends the session (issue 11, item 2).

Relayed later, such bytes would reach the client as the reply to its next command, and a
hostile server could pass an unscanned message off as the answer to a RETR.  Whether the
bytes are already buffered behind a reply, arrive while the client is idle, or wait behind a
pipelined command, nothing of them reaches the client: it gets ``-ERR [SYS/TEMP]`` or ``421
4.4.2``, the server gets no further command, and the log names the server.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest

from p3scan.proxy.pop3 import Pop3Session
from p3scan.proxy.smtp import SmtpSession
from tests.support.harness import Harness
from tests.support.messages import EICAR, message

VIRUS = message("smuggled", EICAR + b"\r\n")
POP3_END = b"-ERR [SYS/TEMP] p3scan: the server sent data that no command asked for"
SMTP_END = b"421 4.4.2 p3scan: the server sent data that no command asked for"


def session_ends(harness: Harness, first: bytes) -> None:
    """The client hears ``first`` and then the end of the session, nothing else."""
    assert harness.client_hears().startswith(first)
    harness.thread.join(5)
    assert not harness.thread.is_alive()
    assert "protocol violation" in harness.info.outcome
    harness.session.client.close()  # as connection.serve does once the session returns
    harness.session.server.close()
    assert rest_of(harness) == b""


def rest_of(harness: Harness) -> bytes:
    """What else the client receives (a reset, for the command it sent, is nothing)."""
    try:
        return harness.client_reader.read()
    except ConnectionResetError:
        return b""


@pytest.fixture
def pop():
    harness = Harness(Pop3Session)
    assert harness.start(b"+OK ready\r\n") == b"+OK ready\r\n"
    yield harness
    harness.finish()


@pytest.fixture
def smtp():
    harness = Harness(SmtpSession, "SMTP")
    assert harness.start(b"220 mx ESMTP\r\n") == b"220 mx ESMTP\r\n"
    yield harness
    harness.finish()


def test_pop3_data_after_a_single_line_reply(pop, caplog):
    pop.client_says(b"NOOP\r\n")
    assert pop.server_hears() == b"NOOP\r\n"
    with caplog.at_level(logging.ERROR, logger="p3scan"):
        pop.server_says(b"+OK\r\n+OK 70 octets\r\n" + VIRUS + b".\r\n")
        assert pop.client_hears() == b"+OK\r\n"
        pop.client_says(b"RETR 1\r\n")
        session_ends(pop, POP3_END)
    assert "server 198.51.100.2:110" in caplog.text
    assert pop.server_hears() == b""  # RETR never reached the server


def test_pop3_data_after_the_final_dot_of_a_retr(pop):
    pop.client_says(b"RETR 1\r\n")
    assert pop.server_hears() == b"RETR 1\r\n"
    clean = message("clean")
    pop.server_says(b"+OK\r\n" + clean + b".\r\n+OK\r\n" + VIRUS + b".\r\n")
    status = pop.client_hears()
    assert status == b"+OK\r\n"
    delivered = pop.client_hears(len(clean) + len(pop.scanning.clean_header("POP3")) + 5)
    assert delivered.endswith(b".\r\n") and b"smuggled" not in delivered
    pop.client_says(b"RETR 2\r\n")
    session_ends(pop, POP3_END)


def test_pop3_data_while_the_client_is_idle(pop):
    pop.server_says(b"+OK\r\n" + VIRUS + b".\r\n")
    session_ends(pop, POP3_END)


def test_pop3_data_behind_a_pipelined_command(pop):
    """The next command is already buffered, so no wait happens: the check before the
    command goes to the server still finds the bytes."""
    pop.client_says(b"NOOP\r\nRETR 1\r\n")
    assert pop.server_hears() == b"NOOP\r\n"
    pop.server_says(b"+OK\r\n+OK\r\n" + VIRUS + b".\r\n")
    time.sleep(0.2)
    assert pop.client_hears() == b"+OK\r\n"
    session_ends(pop, POP3_END)


def test_pop3_server_that_closes_while_the_client_is_idle_ends_quietly(pop):
    pop.server.shutdown(socket.SHUT_RDWR)
    pop.thread.join(5)
    assert pop.info.outcome == "server closed"
    pop.session.client.close()
    assert rest_of(pop) == b""  # no command waited: nothing to answer


def test_smtp_second_reply(smtp):
    smtp.client_says(b"NOOP\r\n")
    assert smtp.server_hears() == b"NOOP\r\n"
    smtp.server_says(b"250 ok\r\n250 ok again\r\n")
    assert smtp.client_hears() == b"250 ok\r\n"
    session_ends(smtp, SMTP_END)


def test_smtp_reply_before_the_command(smtp):
    smtp.server_says(b"250 nobody asked\r\n")
    time.sleep(0.2)
    smtp.client_says(b"MAIL FROM:<a@example.test>\r\n")
    session_ends(smtp, SMTP_END)


@pytest.mark.parametrize("verb", [b"MAIL FROM:<a@example.test>", b"RCPT TO:<b@example.test>",
                                  b"RSET", b"NOOP"])
def test_smtp_354_to_anything_but_data(smtp, verb):
    """A 354 to RCPT would make a pipelining client send its message as 'commands' that
    the proxy relays to a server in data mode: unscanned."""
    smtp.client_says(verb + b"\r\n")
    assert smtp.server_hears() == verb + b"\r\n"
    smtp.server_says(b"354 go ahead\r\n")
    session_ends(smtp, SMTP_END)


def test_smtp_334_outside_auth(smtp):
    smtp.client_says(b"HELO me\r\n")
    assert smtp.server_hears() == b"HELO me\r\n"
    smtp.server_says(b"334 VXNlcm5hbWU6\r\n")
    session_ends(smtp, SMTP_END)


def test_smtp_354_that_arrives_early_in_a_transaction(smtp):
    for command, reply in ((b"MAIL FROM:<a@example.test>", b"250 ok\r\n"),
                           (b"RCPT TO:<b@example.test>", b"250 ok\r\n354 early\r\n")):
        smtp.client_says(command + b"\r\n")
        assert smtp.server_hears() == command + b"\r\n"
        smtp.server_says(reply)
        assert smtp.client_hears() == b"250 ok\r\n"
    smtp.client_says(b"DATA\r\n")
    session_ends(smtp, SMTP_END)


# --- every failure answers (item 5): a bug in the SMTP scan path ------------------------------


def test_smtp_scan_bug_is_451_logged_once_and_the_session_goes_on(smtp, caplog):
    def broken(job):
        raise RuntimeError("a bug in a step")

    smtp.scanning.pipeline.run = broken
    for command, reply in ((b"MAIL FROM:<a@example.test>", b"250 ok\r\n"),
                           (b"RCPT TO:<b@example.test>", b"250 ok\r\n")):
        smtp.client_says(command + b"\r\n")
        assert smtp.server_hears() == command + b"\r\n"
        smtp.server_says(reply)
        assert smtp.client_hears() == b"250 ok\r\n"
    with caplog.at_level(logging.ERROR, logger="p3scan"):
        smtp.client_says(b"DATA\r\n")
        assert smtp.client_hears().startswith(b"354 ")
        smtp.client_says(message("clean") + b".\r\n")
        assert smtp.server_hears() == b"RSET\r\n"  # the server never saw DATA
        smtp.server_says(b"250 reset\r\n")
        reply = smtp.client_hears()
    assert reply.startswith(b"451 4.3.0 p3scan: the message could not be scanned (internal "
                            b"error: a bug in a step)")
    assert caplog.text.count("Traceback") == 1 and "a bug in a step" in caplog.text
    smtp.client_says(b"NOOP\r\n")  # the session goes on
    assert smtp.server_hears() == b"NOOP\r\n"
    smtp.server_says(b"250 ok\r\n")
    assert smtp.client_hears() == b"250 ok\r\n"


def transaction(smtp: Harness) -> None:
    for command, reply in ((b"MAIL FROM:<a@example.test>", b"250 ok\r\n"),
                           (b"RCPT TO:<b@example.test>", b"250 ok\r\n")):
        smtp.client_says(command + b"\r\n")
        assert smtp.server_hears() == command + b"\r\n"
        smtp.server_says(reply)
        assert smtp.client_hears() == b"250 ok\r\n"


def test_smtp_250_sent_with_the_354_never_reaches_the_client(smtp):
    transaction(smtp)
    smtp.client_says(b"DATA\r\n")
    assert smtp.client_hears().startswith(b"354 ")
    smtp.client_says(message("clean") + b".\r\n")
    assert smtp.server_hears() == b"DATA\r\n"
    smtp.server_says(b"354 go ahead\r\n250 ok queued\r\n")
    session_ends(smtp, SMTP_END)


def test_smtp_bare_cr_before_a_dot_line_is_refused(smtp):
    """SMTP smuggling: a server that ends data at \\r.\\r\\n would take the rest for a
    second message that p3scan scanned only as part of the first."""
    transaction(smtp)
    smtp.client_says(b"DATA\r\n")
    assert smtp.client_hears().startswith(b"354 ")
    smtp.client_says(b"Subject: one\r\n\r\nhello\r.\r\nMAIL FROM:<x@example.test>\r\n"
                     b".\r\n")
    assert smtp.server_hears() == b"RSET\r\n"  # DATA never reached the server
    smtp.server_says(b"250 reset\r\n")
    assert smtp.client_hears().startswith(b"554 5.5.2 p3scan: bare CR before a dot line")


def test_a_pipelined_command_after_the_server_closed_is_answered(pop):
    pop.client_says(b"NOOP\r\nSTAT\r\n")  # STAT waits in p3scan's buffer
    assert pop.server_hears() == b"NOOP\r\n"
    pop.server_says(b"+OK\r\n")
    pop.server.shutdown(socket.SHUT_RDWR)
    assert pop.client_hears() == b"+OK\r\n"
    assert pop.client_hears().startswith(b"-ERR [SYS/TEMP] p3scan: the server closed")


def test_an_os_error_after_the_final_dot_is_answered(smtp):
    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error")

    smtp.scanning.log_verdict = broken
    transaction(smtp)
    smtp.client_says(b"DATA\r\n")
    assert smtp.client_hears().startswith(b"354 ")
    smtp.client_says(message("clean") + b".\r\n")
    assert smtp.client_hears().startswith(b"421 4.4.2 p3scan: internal error (Input/output")
