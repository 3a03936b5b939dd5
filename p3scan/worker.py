"""A worker: one client connection at a time, accepted on the master's listening sockets.

It tells the master through a pipe when it is ready, busy and idle (one byte each), stops
accepting on SIGTERM but finishes the session in hand, exits when the master has gone, and
retires after about ``maxsessions`` sessions so that any slow leak stays bounded.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import socket
from typing import Any

from p3scan import connection, spooldirs
from p3scan.log import LOG
from p3scan.scanning import Scanning

BOOT_ERROR = 3
READY, BUSY, IDLE = b"R", b"B", b"I"
ACCEPT_POLL = 1.0


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
                self.scanning.clear()
                self._status(IDLE)
                served += 1
        if limit and served >= limit:
            LOG.debug("Worker %d retires after %d sessions", os.getpid(), served)

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
