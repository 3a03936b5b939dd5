"""Logging through a syslog socket: ident p3scan, facility, priorities, quiet, summaries."""

from __future__ import annotations

import os
import poplib
import re
import socket
import threading
import time

import pytest

from tests.support.dovecot import PASSWORD
from tests.support.messages import standard_mailbox

pytestmark = pytest.mark.integration

LINE = re.compile(rb"^<(\d+)>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d p3scan\[(\d+)\]: (.*)$", re.S)


class SyslogSocket:
    """A datagram socket standing in for /dev/log, read continuously like a syslogd."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)  # the workers log as nobody
        self.sock.settimeout(0.2)
        self.packets: list[bytes] = []
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                self.packets.append(self.sock.recv(8192))
            except TimeoutError:
                continue

    def collect(self) -> list[tuple[int, int, str]]:
        time.sleep(0.3)
        records = []
        for packet in list(self.packets):
            match = LINE.match(packet)
            assert match, packet
            records.append((int(match[1]), int(match[2]), match[3].decode()))
        return records

    def find(self, text: str) -> list[tuple[int, int, str]]:
        return [record for record in self.collect() if text in record[2]]


def test_syslog_lines_with_facility_daemon_and_real_priorities(dovecot, p3scan, scratch):
    syslog = SyslogSocket(scratch / "log.sock")
    user = dovecot.mailbox(standard_mailbox())
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port,
                    syslogsocket=syslog.path).start()
    pop = poplib.POP3("127.0.0.1", daemon.port, timeout=20)
    pop.user(user)
    pop.pass_(PASSWORD)
    pop.retr(1)
    pop.quit()
    daemon.wait_log("Session done")
    daemon.stop()
    (pri, pid, text), = syslog.find("Listen now on")
    assert pri == 3 * 8 + 5 and pid == daemon.proc.pid  # daemon.notice
    (pri, pid, text), = syslog.find("Session done")
    assert pri == 29 and pid != daemon.proc.pid  # logged by the worker
    assert re.fullmatch(
        rf"Session done \(Clean Exit\)\. Mails: 1 Bytes: \d+ protocol=POP3 "
        rf"client=127\.0\.0\.1:\d+ server=127\.0\.0\.1:{dovecot.port} user={user} "
        r"duration=\d+\.\d{3}s outcome=ok", text), text


def test_facility_is_configurable_and_quiet_drops_notices(dovecot, p3scan, scratch):
    syslog = SyslogSocket(scratch / "log.sock")
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, syslogsocket=syslog.path,
                    facility="local3", quiet=True).start()
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    sock.makefile("rb").readline()
    os.kill(daemon.worker_pids()[0], 9)  # a worker dying is logged at crit even with quiet
    daemon.wait_log("died with signal 9")
    sock.close()
    daemon.stop()
    records = syslog.collect()
    assert [text for _, _, text in records if "started." in text] == ["P3Scan 3.0.0 started."]
    assert not [text for _, _, text in records if "Listen now on" in text]
    (pri, _, _), = [r for r in records if "died with signal 9" in r[2]]
    assert pri == 19 * 8 + 2  # local3.crit
    assert all(pri // 8 == 19 for pri, _, _ in records)


def test_a_missing_syslog_socket_is_reported_not_fatal(dovecot, p3scan, scratch):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port,
                    syslogsocket=scratch / "absent").start()
    assert "is not available; log lines are dropped until it appears" in daemon.log()
    assert poplib.POP3("127.0.0.1", daemon.port, timeout=20).quit().startswith(b"+OK")


def test_a_stuck_syslog_never_stalls_a_session(dovecot, p3scan, scratch):
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # bound, never read
    stuck.bind(str(scratch / "stuck.sock"))
    os.chmod(scratch / "stuck.sock", 0o666)
    user = dovecot.mailbox(standard_mailbox())
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port,
                    syslogsocket=scratch / "stuck.sock").start()
    for _ in range(8):  # ~4 lines a session: far more than the socket queue holds
        pop = poplib.POP3("127.0.0.1", daemon.port, timeout=10)
        pop.user(user)
        pop.pass_(PASSWORD)
        pop.stat()
        assert pop.quit().startswith(b"+OK")
