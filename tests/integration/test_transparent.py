"""Transparent mode: a client in its own namespace talks to port 110 of a "remote" server;
the router's iptables REDIRECT hands the connection to p3scan, which finds the original
destination (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST) and relays byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from p3scan.scan.scanning import CLEAN_HEADER
from tests.support import netns
from tests.support import pop3_transcript as pt
from tests.support.dovecot import PASSWORD, Dovecot
from tests.support.messages import standard_mailbox
from tests.support.procs import REPO

pytestmark = pytest.mark.integration


@pytest.fixture
def topology():
    topo = netns.Topology.create(f"p3t{os.getpid() % 10000}")
    yield topo
    topo.close()


@pytest.fixture
def remote_dovecot(topology, scratch):
    server = Dovecot(scratch / "dovecot", listen="*, ::", port=110, pop3s_port=995)
    server.start(prefix=topology.server.prefix, probe=False)
    yield server
    server.stop()


def _in_ns(ns: netns.Namespace, host: str, user: str) -> str:
    """Run the transcript client inside ``ns``; its JSON output."""
    result = subprocess.run(ns.prefix + [sys.executable, "-m", "tests.support.pop3_transcript",
                                         host, "110", user, PASSWORD],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("server_ip", [netns.SERVER_V4, netns.SERVER_V6], ids=["ipv4", "ipv6"])
def test_redirected_session_is_byte_exact(topology, remote_dovecot, p3scan, server_ip):
    user = remote_dovecot.mailbox(standard_mailbox())
    daemon = p3scan(ip="::", port=8110, enabletop=True)
    daemon.start(prefix=topology.router.prefix)
    topology.redirect(110, 8110)
    direct = pt.decode(_in_ns(topology.router, server_ip, user))
    proxied = pt.decode(_in_ns(topology.client, server_ip, user))
    expected = pt.through_proxy(direct, pt.scenario(user, PASSWORD),
                                CLEAN_HEADER["POP3"].encode())
    assert proxied == expected
    log = daemon.wait_log(r"Session done")
    shown = f"[{server_ip}]:110" if ":" in server_ip else f"{server_ip}:110"
    assert f"Real-server address is {shown}" in log
    assert f"server={shown}" in log


def test_connection_that_was_not_redirected_gets_an_error(topology, remote_dovecot, p3scan):
    daemon = p3scan(ip="::", port=8110)
    daemon.start(prefix=topology.router.prefix)
    topology.redirect(110, 8110)
    probe = ("import socket; s=socket.create_connection(('192.0.2.1', 8110), timeout=10);"
             "print(s.recv(200).decode())")
    result = subprocess.run(topology.client.prefix + [sys.executable, "-c", probe],
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.startswith("-ERR "), result.stdout + result.stderr
    assert "not redirected" in result.stdout or "loop" in result.stdout
