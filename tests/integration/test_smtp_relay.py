"""SMTP relayed through p3scan to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys

import pytest

from p3scan.scan.scanning import CLEAN_HEADER
from tests.support import netns, oracle
from tests.support.messages import EICAR, message, smtp_body
from tests.support.procs import REPO, require_program, stop_process
from tests.support.smtp_sink import read_messages

pytestmark = pytest.mark.integration


HEADER = CLEAN_HEADER["SMTP"].encode()


def test_fixed_target_smtp_relay_delivers_unchanged_but_for_the_header(sink, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=sink.port, emailport=sink.port).start()
    original = message("smtp relay", smtp_body())
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
        code, banner = smtp.ehlo("client.test")
        assert code == 250 and b"STARTTLS" not in banner
        refused = smtp.sendmail("alice@example.test", ["bob@example.test"], original)
        assert refused == {}
    (envelope, data), = sink.messages()
    assert data == oracle.insert_header(original, HEADER)
    assert envelope == {"from": "alice@example.test", "to": ["bob@example.test"],
                        "helo": "client.test"}
    assert "protocol=SMTP" in daemon.wait_log("Session done")


@pytest.fixture
def topology():
    topo = netns.Topology.create(f"p3s{os.getpid() % 10000}")
    yield topo
    topo.close()


def test_transparent_smtp_relay_with_swaks(topology, p3scan, scratch):
    require_program("/usr/bin/swaks", "swaks")
    sinks = []
    try:
        for address in (netns.SERVER_V4, netns.SERVER_V6):
            sink = subprocess.Popen(topology.server.prefix + [
                sys.executable, "-m", "tests.support.smtp_sink", address, "25",
                str(scratch / address)], cwd=REPO, stdout=subprocess.PIPE, text=True)
            sinks.append(sink)
            assert sink.stdout.readline().strip() == "ready"
        daemon = p3scan(ip="::", port=8110)
        daemon.start(prefix=topology.router.prefix)
        topology.redirect(25, 8110)
        data_file = scratch / "message.eml"
        data_file.write_bytes(message("via swaks", smtp_body()))
        for server in (netns.SERVER_V4, netns.SERVER_V6):
            for ns in (topology.router, topology.client):  # direct first, then redirected
                swaks(ns, server, data_file)
            direct, proxied = read_messages(scratch / server)
            assert proxied[0] == direct[0]  # the same envelope
            assert proxied[1] == oracle.insert_header(direct[1], HEADER)
            assert proxied[1].startswith(b"From: alice@example.test\r\n")
            assert b"\r\n.starts with a dot\r\n" in proxied[1]
        virus = scratch / "virus.eml"
        virus.write_bytes(message("eicar", EICAR + b"\r\n"))
        result = subprocess.run(topology.client.prefix + [
            "swaks", "--server", netns.SERVER_V4, "--port", "25", "--from", "a@example.test",
            "--to", "b@example.test", "--data", f"@{virus}"], capture_output=True, text=True,
            timeout=60)
        assert "<** 554 Virus detected! P3scan rejected message!" in result.stdout
        assert len(read_messages(scratch / netns.SERVER_V4)) == 2  # nothing more arrived
        log = daemon.log()
        assert f"Real-server address is {netns.SERVER_V4}:25" in log
        assert f"Real-server address is [{netns.SERVER_V6}]:25" in log
    finally:
        for sink in sinks:
            stop_process(sink)


def swaks(ns: netns.Namespace, server: str, data_file) -> None:
    result = subprocess.run(ns.prefix + [
        "swaks", "--server", server, "--port", "25", "--helo", "client.test",
        "--from", "alice@example.test", "--to", "bob@example.test", "--data", f"@{data_file}"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~" not in result.stdout  # never TLS: the proxy hides STARTTLS
