"""When the real server cannot be reached, the client gets a protocol error, not a close."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.support.netns import Namespace
from tests.support.procs import free_port

pytestmark = pytest.mark.integration


def greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        return sock.makefile("rb").readline()


def test_refused_connection_pop3_and_smtp(p3scan):
    closed = free_port()
    pop3 = p3scan("pop3", targetip="127.0.0.1", targetport=closed).start()
    assert greeting(pop3.port) == (f"-ERR [SYS/TEMP] p3scan: cannot connect to 127.0.0.1:"
                                   f"{closed}: Connection refused\r\n").encode()
    smtp = p3scan("smtp", targetip="127.0.0.1", targetport=closed, emailport=closed).start()
    assert greeting(smtp.port).startswith(b"421 4.4.1 p3scan: cannot connect to 127.0.0.1:")
    assert "ERR: Cannot connect to real-server: 127.0.0.1:" in pop3.log()


def test_connect_timeout_gives_an_error_in_time(p3scan):
    ns = Namespace(f"p3u{os.getpid() % 10000}")
    try:
        ns.run("iptables", "-A", "OUTPUT", "-d", "127.0.0.9", "-j", "DROP")  # SYNs vanish
        daemon = p3scan(targetip="127.0.0.9", targetport=110, connecttimeout=1)
        daemon.start(prefix=ns.prefix)
        probe = (f"import socket,time; s=socket.create_connection(('127.0.0.1',{daemon.port}),"
                 "timeout=20); t=time.time(); print(s.makefile('rb').readline().decode().strip(),"
                 " round(time.time()-t))")
        result = subprocess.run(ns.prefix + [sys.executable, "-c", probe], capture_output=True,
                                text=True, timeout=60)
        text, seconds = result.stdout.rsplit(" ", 1)
        assert text == "-ERR [SYS/TEMP] p3scan: timed out connecting to 127.0.0.9:110"
        assert int(seconds) <= 3
    finally:
        ns.close()
