"""A worker: one client connection at a time, accepted on the master's listening sockets.

It tells the master through a pipe when it is ready, busy (and with whom) and idle, in
status frames (:mod:`p3scan.daemon.status`), beats its heartbeat in the accept loop and, through
:mod:`p3scan.heartbeat`, at each step of a session, stops accepting on SIGTERM but finishes
the session in hand, exits when the master has gone, and retires after about
``maxsessions`` sessions so that any slow leak stays bounded.

Nothing of a session outlives it: before the next connection is accepted, a scan that an
aborted session left running is waited for (it ends at its scan deadline) and the work
directory ``virusdir/children/<pid>`` is emptied.
"""

from __future__ import annotations

import dataclasses
import os
import random
import select
import shutil
import signal
import socket
import threading
import time
from typing import Any

from p3scan import heartbeat
from p3scan.config.settings import Settings
from p3scan.daemon import spooldirs, status
from p3scan.daemon.status import Heartbeat, WorkerStatus
from p3scan.log import LOG
from p3scan.net.destination import format_address, unmap
from p3scan.proxy import connection
from p3scan.proxy.session import SessionInfo
from p3scan.scan.pipeline import SCAN_THREAD
from p3scan.scan.scanning import Scanning

BOOT_ERROR = 3  # exit status after a "failed" status: the master stops its respawn loop
ACCEPT_POLL = 1.0
SCAN_GRACE = 5.0  # a scan thread stops at its deadline; this long more to clean up after it
JOIN_SLICE = 1.0  # waiting for a scan thread, beat this often
HEARTBEAT_MARGIN = 10.0  # CPU-bound steps between beats: boot, a MIME split, a quarantine


def heartbeat_timeout(cfg: Settings) -> float:
    """How long a worker may be silent before the master kills it as stuck.

    Every wait a session makes is bounded by an option: a peer (``idletimeout``), the
    upstream connect (``connecttimeout``), a scan in the worker's own thread (SMTP:
    ``scantimeout``), a keep-alive interval (``timeout``).  Beats come before the waits of
    the command loop, of a download and of a scan; a few steps wait twice in a row before
    the next beat (a reply line that arrives in pieces, the connect after the useurl
    handshake), hence twice the longest, plus a margin for work that does not wait.
    """
    longest = max(cfg.idletimeout, cfg.connecttimeout, cfg.scantimeout, cfg.timeout)
    return 2 * longest + HEARTBEAT_MARGIN


class Reporter:
    """The worker's end of the status pipe: the latest status, sent when it changes."""

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self.current = WorkerStatus("ready", time.time())

    def state(self, state: str, **fields: Any) -> None:
        self.current = WorkerStatus(state, time.time(), **fields)
        status.send(self.fd, self.current)

    def session(self, info: SessionInfo, message: str) -> None:
        """Busy with ``info``: report what changed (user, message, bytes), once."""
        now = self.current
        if (info.route.address, info.user or "", info.messages, message, info.bytes) == \
                (now.server, now.user, now.messages, now.message, now.bytes):
            return
        self.current = dataclasses.replace(
            now, protocol=info.route.label, server=info.route.address,
            user=info.user or "", messages=info.messages, message=message, bytes=info.bytes)
        status.send(self.fd, self.current)


class Worker:
    """The accept loop of one worker process."""

    def __init__(self, cfg: Settings, listeners: list[socket.socket], status_fd: int,
                 master_pid: int, heart: Heartbeat):
        self.cfg = cfg
        self.listeners = listeners
        self.reporter = Reporter(status_fd)
        self.heart = heart
        self.master_pid = master_pid
        self.alive = True
        self.workdir = spooldirs.worker_dir(cfg, os.getpid())
        self.scanning: Scanning | None = None

    def run(self) -> int:
        """Serve until told to stop; return the process exit status."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.umask(0o077)
        try:
            self.boot()
        except Exception as err:
            LOG.critical("Worker %d failed to boot: %s", os.getpid(), err)
            self.reporter.state("failed", reason=str(err))
            return BOOT_ERROR
        heartbeat.install(self.beat)
        self.reporter.state("ready")
        try:
            self._serve_until_done()
        finally:
            heartbeat.uninstall()
            shutil.rmtree(self.workdir, ignore_errors=True)
        return 0

    def beat(self, session: object | None = None, message: str = "") -> None:
        """The heartbeat hook of the sessions (see :mod:`p3scan.heartbeat`)."""
        self.heart.beat()
        if isinstance(session, SessionInfo):
            self.reporter.session(session, message)

    def boot(self) -> None:
        """Prepare what every session needs; failing here stops the master's respawn loop."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        os.mkdir(self.workdir, 0o700)
        self.scanning = Scanning(self.cfg, self.workdir)

    def _serve_until_done(self) -> None:
        limit = self.cfg.maxsessions
        if limit:
            limit += random.randint(0, max(1, limit // 10))
        served = 0
        while self.alive and (not limit or served < limit):
            self.heart.beat()
            if os.getppid() != self.master_pid:
                LOG.warning("Master process is gone; worker %d exits", os.getpid())
                return
            conn = self._accept()
            if conn is None:
                continue
            self.reporter.state("busy", client=_peer(conn))
            assert self.scanning is not None  # boot() made it
            try:
                connection.serve(conn, self.cfg, self.scanning)
            except Exception:
                LOG.exception("Unexpected error in a session")
            finally:
                conn.close()
                self._clear_workdir()
                self.reporter.state("idle")
                served += 1
        if limit and served >= limit:
            LOG.debug("Worker %d retires after %d sessions", os.getpid(), served)

    def _clear_workdir(self) -> None:
        """Leave nothing of the last session (spool files, demime directories) for the next."""
        self._wait_for_threads()
        try:
            if os.path.isdir(self.workdir):
                assert self.scanning is not None
                self.scanning.clear()
            else:  # removed under us: the next session needs it
                os.mkdir(self.workdir, 0o700)
        except OSError as err:
            LOG.error("ERR: cannot empty the work directory %s: %s", self.workdir, err)

    def _wait_for_threads(self) -> None:
        """A session that ended early (a peer went away) may have left its scan running in
        a thread, which would still write into the work directory: wait until it ended."""
        limit = time.monotonic() + self.cfg.scantimeout + SCAN_GRACE
        for thread in threading.enumerate():
            if thread.name != SCAN_THREAD or not thread.is_alive():
                continue  # a resolver thread, for one, touches no files
            while thread.is_alive() and time.monotonic() < limit:
                self.heart.beat()  # waiting is not being stuck
                thread.join(min(JOIN_SLICE, max(0.0, limit - time.monotonic())))
            if thread.is_alive():
                LOG.error("ERR: thread %s of the last session is still running", thread.name)

    def _accept(self) -> socket.socket | None:
        try:
            readable, _, _ = select.select(self.listeners, [], [], ACCEPT_POLL)
        except (OSError, ValueError):  # the listeners were closed by _stop
            return None
        for listener in readable:
            try:
                conn, _addr = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            conn.setblocking(True)
            return conn
        return None

    def _stop(self, signum: int, frame: object) -> None:
        """SIGTERM: accept nothing more (the master closed its copy too), finish the session."""
        self.alive = False
        for listener in self.listeners:
            listener.close()


def _peer(conn: socket.socket) -> str:
    try:
        host, port = conn.getpeername()[:2]
    except OSError:  # already gone
        return ""
    return format_address(unmap(host), port)
