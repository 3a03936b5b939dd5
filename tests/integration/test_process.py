"""The pre-forking process model: privileges, capacity, respawning, signals, PID file."""

from __future__ import annotations

import os
import poplib
import pwd
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from p3scan.daemon.master import LOOP_TICK
from p3scan.daemon.worker import heartbeat_timeout
from tests.support.dovecot import PASSWORD
from tests.support.fakes import simple_pop3
from tests.support.messages import message, standard_mailbox
from tests.support.procs import proc_ids, require_root, wait_until

pytestmark = pytest.mark.integration


def pop3_greeting(port: int, timeout: float = 20) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        return sock.makefile("rb").readline()


def test_workers_run_as_the_configured_user_with_its_groups(dovecot, p3scan):
    require_root("changing to user nobody")
    nobody = pwd.getpwnam("nobody")
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, user="nobody",
                    maxchilds=3).start()
    pids = [daemon.master_pid, *daemon.worker_pids()]
    assert len(pids) == 4
    for pid in pids:
        ids = proc_ids(pid)
        assert ids["Uid"] == [nobody.pw_uid] * 4, pid
        assert ids["Gid"] == [nobody.pw_gid] * 4, pid
        assert ids["Groups"] == sorted(os.getgrouplist("nobody", nobody.pw_gid)), pid
    spool = daemon.workdir / "spool" / "children"
    assert spool.stat().st_uid == nobody.pw_uid
    assert oct(spool.stat().st_mode & 0o777) == "0o700"
    assert "Running as user: nobody" in daemon.log()


def test_more_clients_than_workers_are_all_served(dovecot, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, maxchilds=2).start()
    results: list[bytes] = []
    errors: list[Exception] = []

    def client() -> None:
        try:
            pop = poplib.POP3("127.0.0.1", daemon.port, timeout=30)
            pop.capa()
            time.sleep(0.4)  # hold the worker so that the others must wait in the backlog
            results.append(pop.quit())
        except Exception as err:  # collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=client) for _ in range(2 + 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(results) == 7 and all(reply.startswith(b"+OK") for reply in results)
    assert "MAX_CHILDS (2) reached! All workers are busy" in daemon.log()


def test_a_killed_worker_is_replaced(dovecot, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, maxchilds=2).start()
    before = daemon.worker_pids()
    os.kill(before[0], signal.SIGKILL)
    wait_until(lambda: len(daemon.worker_pids()) == 2 and before[0] not in daemon.worker_pids(),
               10, "a replacement worker")
    # the master's log lines reach the file a moment later than the new worker appears
    assert f"worker {before[0]} died with signal 9" in daemon.wait_log(
        rf"worker {before[0]} died with signal 9")
    assert pop3_greeting(daemon.port).startswith(b"+OK Dovecot")


def test_sigterm_lets_the_session_finish_then_removes_the_pidfile(dovecot, p3scan):
    user = dovecot.mailbox(standard_mailbox())
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, maxchilds=2).start()
    pop = poplib.POP3("127.0.0.1", daemon.port, timeout=30)
    pop.user(user)
    pop.pass_(PASSWORD)
    daemon.signal(signal.SIGTERM)
    daemon.wait_log("signalled, doing cleanup")
    wait_until(lambda: _refused(daemon.port), 5, "the listening socket to be closed")
    response, lines, _ = pop.retr(3)
    assert response.startswith(b"+OK") and b"Subject: third" in lines
    assert pop.quit().startswith(b"+OK")
    assert daemon.proc.wait(20) == 0
    assert not daemon.pidfile.exists()
    assert "P3Scan terminates now" in daemon.log()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def test_sigterm_deadline_ends_a_session_that_does_not_finish(dovecot, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, maxchilds=1,
                    gracetimeout=1).start()
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=20)
    assert sock.makefile("rb").readline().startswith(b"+OK")
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    assert time.monotonic() - started < 10
    assert "did not finish within 1s" in daemon.log()
    sock.close()


def test_sighup_applies_a_changed_setting(dovecot, p3scan):
    other = simple_pop3(greeting=b"+OK the other server\r\n")
    try:
        daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, maxchilds=2).start()
        assert pop3_greeting(daemon.port).startswith(b"+OK Dovecot")
        daemon.write_config(targetport=other.port)
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("Configuration reloaded")
        wait_until(lambda: pop3_greeting(daemon.port) == b"+OK the other server\r\n", 10,
                   "the new targetport to be used")
    finally:
        other.close()


def test_sighup_with_an_invalid_config_keeps_the_old_one(dovecot, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, maxchilds=2).start()
    workers = daemon.worker_pids()
    daemon.conffile.write_text(daemon.conffile.read_text() + "maxchilds = lots\n")
    daemon.signal(signal.SIGHUP)
    log = daemon.wait_log("keeping the old one")
    assert "maxchilds = lots: expected a whole number from 1 to 9999" in log
    assert daemon.worker_pids() == workers
    assert pop3_greeting(daemon.port).startswith(b"+OK Dovecot")


def test_a_stale_pidfile_is_replaced(dovecot, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port)
    dead = subprocess.Popen(["true"])
    dead.wait()
    daemon.pidfile.parent.mkdir(parents=True)
    nobody = pwd.getpwnam("nobody")
    os.chown(daemon.pidfile.parent, nobody.pw_uid, nobody.pw_gid)
    daemon.pidfile.write_text(f"{dead.pid}\n")
    daemon.start()
    stale = f"Removing stale PID file {daemon.pidfile} (PID {dead.pid} is not running)"
    assert stale in daemon.log()
    assert daemon.master_pid == daemon.proc.pid


def test_a_second_instance_refuses_to_start(dovecot, p3scan):
    first = p3scan(targetip="127.0.0.1", targetport=dovecot.port).start()
    second = p3scan("second", targetip="127.0.0.1", targetport=dovecot.port,
                    pidfile=first.pidfile)
    second.start(wait=False)
    assert second.proc.wait(20) == 1
    assert f"p3scan is already running with PID {first.master_pid}" in second.log()
    assert first.pidfile.read_text().strip() == str(first.proc.pid)


def test_a_worker_that_cannot_boot_at_start_up_stops_the_daemon(dovecot, p3scan, scratch):
    require_root("a spool directory that user nobody cannot reach")
    locked = scratch / "locked"
    locked.mkdir(mode=0o700)
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, virusdir=locked / "spool",
                    notifydir=locked / "spool" / "notify")
    daemon.start(wait=False)
    assert daemon.proc.wait(30) == 1
    log = daemon.log()
    assert "failed to boot" in log and "Permission denied" in log
    assert "stopping p3scan" in log
    assert log.count("failed to boot:") <= 3  # no crash loop


def test_a_worker_that_cannot_boot_later_backs_off_and_recovers(dovecot, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, maxchilds=2).start()
    children = daemon.workdir / "spool" / "children"
    os.chmod(children, 0o500)  # user nobody can no longer create a worker's directory
    victim, survivor = daemon.worker_pids()
    os.kill(victim, signal.SIGKILL)
    log = daemon.wait_log(r"1 of 2 workers are missing: a new worker failed to boot "
                          r"\(\[Errno 13\] Permission denied: '[^']*children/\d+'\)")
    assert "next attempt in 1s" in log
    daemon.wait_log(r"failed to boot:", count=2)  # tried again, after a pause
    assert daemon.proc.poll() is None and "stopping p3scan" not in daemon.log()
    assert daemon.worker_pids() == [survivor]
    user = dovecot.mailbox(standard_mailbox())
    pop = poplib.POP3("127.0.0.1", daemon.port, timeout=20)
    pop.user(user)
    pop.pass_(PASSWORD)
    assert b"Subject: first" in pop.retr(1)[1]
    pop.quit()
    os.chmod(children, 0o700)
    daemon.wait_log("Workers boot again after [23] failed attempts", timeout=15)
    wait_until(lambda: len(daemon.worker_pids()) == 2, 10, "the missing worker")
    failures = daemon.log().count("failed to boot:")
    assert 2 <= failures <= 3, daemon.log()  # 1 s, then 2 s apart: no crash loop
    assert daemon.log().count("workers are missing") == 1  # the summary is rate-limited


def test_workers_exit_when_the_master_dies(dovecot, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, maxchilds=2).start()
    workers = daemon.worker_pids()
    os.kill(daemon.master_pid, signal.SIGKILL)
    daemon.proc.wait(10)

    def gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") and _not_zombie(pid) for pid in workers)

    wait_until(gone, 10, "the workers to exit after the master died")


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_retire_after_maxsessions(dovecot, p3scan):
    daemon = p3scan(targetip="127.0.0.1", targetport=dovecot.port, maxchilds=1,
                    maxsessions=2, debug=True).start()
    first = daemon.worker_pids()
    for _ in range(4):
        pop = poplib.POP3("127.0.0.1", daemon.port, timeout=20)
        pop.quit()
    daemon.wait_log(r"Worker \d+ retires after \d sessions")
    wait_until(lambda: daemon.worker_pids() and daemon.worker_pids() != first, 10,
               "a fresh worker after retirement")


STUCK_SCANNER = """#!/bin/sh
# The first scan stops the worker that runs it: SIGSTOP leaves it as stuck as a process can
# be (a dead NFS spool, a deadlock in C), so none of its own deadlines can fire.  The
# scanner itself ignores SIGTERM and sleeps far past scantimeout.  Later scans are clean.
trap '' TERM
[ -e {marker} ] && exit 0
echo $$ > {marker}
kill -STOP $PPID
sleep 300
"""


def test_a_worker_that_stops_beating_is_killed_and_replaced(p3scan, scratch):
    state = scratch / "state"
    state.mkdir(mode=0o777)
    os.chmod(state, 0o777)  # the worker (user nobody) runs the scanner
    marker = state / "scanner.pid"
    scanner = scratch / "stuck-scanner"
    scanner.write_text(STUCK_SCANNER.format(marker=marker))
    scanner.chmod(0o755)
    options = {"idletimeout": 2, "connecttimeout": 2, "timeout": 1, "scantimeout": 2}
    limit = heartbeat_timeout(SimpleNamespace(**options))
    server = simple_pop3(messages={1: message("after the hang")})
    try:
        daemon = p3scan(targetip="127.0.0.1", targetport=server.port, maxchilds=1,
                        scannertype="basic", scanner=scanner, **options).start()
        [stuck] = daemon.worker_pids()
        sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=limit + 20)
        sock.sendall(b"USER u\r\nPASS p\r\nRETR 1\r\n")
        wait_until(marker.exists, 20, "the scanner to stop its worker")
        stopped = time.monotonic()
        log = daemon.wait_log(rf"worker {stuck} is stuck: no heartbeat", timeout=limit + 10)
        waited = time.monotonic() - stopped
        assert limit - 2 <= waited <= limit + LOOP_TICK + 2, (waited, limit)
        assert re.search(rf"worker {stuck} is stuck: .*busy since .*\(POP3 client=127\.0\.0\.1:"
                         rf"\d+ server=127\.0\.0\.1:{server.port} user=u message=1\)", log)
        assert f"worker {stuck} died with signal" not in log  # said once, as a stuck worker
        assert not _reply(sock).endswith(b"\r\n.\r\n")  # never a truncated message as whole
        wait_until(lambda: len(daemon.worker_pids()) == 1 and stuck not in daemon.worker_pids(),
                   10, "a replacement worker")
        wait_until(lambda: not (daemon.workdir / "spool" / "children" / str(stuck)).exists(),
                   10, "the stuck worker's spool directory to be removed")
        pop = poplib.POP3("127.0.0.1", daemon.port, timeout=20)
        pop.user("u")
        pop.pass_("p")
        response, lines, _ = pop.retr(1)
        assert response.startswith(b"+OK") and b"Subject: after the hang" in lines
        assert any(line.startswith(b"X-P3Scan: ") for line in lines)
        pop.quit()
    finally:
        server.close()
        _kill_group_in(marker)


def _reply(sock: socket.socket) -> bytes:
    """Everything the client got until the connection closed."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


def _kill_group_in(pidfile: Path) -> None:
    try:
        os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    except (OSError, ValueError):
        pass
