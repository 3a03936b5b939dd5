"""The PID file, kept with ``lockfile`` (through python-daemon).

lockfile has no notion of a stale lock, so before daemonising we look at the recorded PID
ourselves: a live p3scan refuses the start, anything else (a dead PID, a PID reused by some
other program, garbage) is a stale file that is removed.
"""

from __future__ import annotations

import os

from daemon.pidfile import TimeoutPIDLockFile

from p3scan.log import LOG


class AlreadyRunning(Exception):
    """Another p3scan holds the PID file."""


def is_p3scan(pid: int) -> bool:
    """Whether ``pid`` is a running process that looks like p3scan."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"p3scan" in handle.read()
    except OSError:
        return True  # alive, and we cannot tell: be careful


def claim(path: str) -> TimeoutPIDLockFile:
    """A lock for ``path``, after removing a stale PID file; raise if p3scan runs."""
    lock = TimeoutPIDLockFile(path, acquire_timeout=0)
    if not os.path.exists(path):
        return lock
    pid = lock.read_pid()
    if pid is not None and pid != os.getpid() and is_p3scan(pid):
        raise AlreadyRunning(f"p3scan is already running with PID {pid} (PID file {path})")
    LOG.warning("Removing stale PID file %s (PID %s is not running)", path, pid)
    os.unlink(path)
    return lock
