"""A worker: one client connection at a time, accepted on the master's listening sockets.

It tells the master through a pipe when it is ready, busy and idle (one byte each), stops
accepting on SIGTERM but finishes the session in hand, exits when the master has gone, and
retires after about ``maxsessions`` sessions so that any slow leak stays bounded.

Nothing of a session outlives it: before the next connection is accepted, a scan that an
aborted session left running is waited for (it ends at its scan deadline) and the work
directory ``virusdir/children/<pid>`` is emptied.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import socket
import threading
import time
from typing import Any

from p3scan import connection, spooldirs
from p3scan.log import LOG
from p3scan.pipeline import SCAN_THREAD
from p3scan.scanning import Scanning

BOOT_ERROR = 3
READY, BUSY, IDLE = b"R", b"B", b"I"
FAILED = b"F"  # then the reason, UTF-8; the worker exits with BOOT_ERROR
ACCEPT_POLL = 1.0
SCAN_GRACE = 5.0  # a scan thread stops at its deadline; this long more to clean up after it


class Worker:
    """The accept loop of one worker process."""

    def __init__(self, cfg: Any, listeners: list[socket.socket], status_fd: int,
                 master_pid: int):
        self.cfg = cfg
        self.listeners = listeners
        self.status_fd = status_fd
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
            self._status(FAILED + str(err).encode("utf-8", "replace")[:400])
            return BOOT_ERROR
        self._status(READY)
        try:
            self._serve_until_done()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return 0

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
            if os.getppid() != self.master_pid:
                LOG.warning("Master process is gone; worker %d exits", os.getpid())
                return
            conn = self._accept()
            if conn is None:
                continue
            self._status(BUSY)
            try:
                connection.serve(conn, self.cfg, self.scanning)
            except Exception:
                LOG.exception("Unexpected error in a session")
            finally:
                conn.close()
                self._clear_workdir()
                self._status(IDLE)
                served += 1
        if limit and served >= limit:
            LOG.debug("Worker %d retires after %d sessions", os.getpid(), served)

    def _clear_workdir(self) -> None:
        """Leave nothing of the last session (spool files, demime directories) for the next."""
        self._wait_for_threads()
        try:
            if os.path.isdir(self.workdir):
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
            thread.join(max(0.0, limit - time.monotonic()))
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

    def _status(self, code: bytes) -> None:
        try:
            os.write(self.status_fd, code)
        except OSError:
            pass

    def _stop(self, signum: int, frame: object) -> None:
        """SIGTERM: accept nothing more (the master closed its copy too), finish the session."""
        self.alive = False
        for listener in self.listeners:
            listener.close()
