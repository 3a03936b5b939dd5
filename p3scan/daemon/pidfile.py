"""The PID file, kept with ``lockfile`` (through python-daemon).

lockfile has no notion of a stale lock, so before daemonising we look at the recorded PID
ourselves: a live p3scan refuses the start, anything else (a dead PID, a PID reused by some
other program, garbage) is a stale file that is removed.

lockfile writes the file only after the change of user and the detach, and its error
("failed to create ...") drops the reason.  So the start first creates and removes a probe
file next to it, as ``user``, and says why that failed while the terminal still sees it.
"""

from __future__ import annotations

import errno
import os

from daemon.pidfile import TimeoutPIDLockFile

from p3scan.daemon import privileges
from p3scan.log import LOG


class AlreadyRunning(Exception):
    """Another p3scan holds the PID file."""


class Unwritable(Exception):
    """The PID file cannot be written or replaced; the message names it and says why."""


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
    try:
        os.unlink(path)
    except OSError as err:
        raise Unwritable(f"cannot remove the stale PID file {path}: {err.strerror}") \
            from None
    LOG.warning("Removing stale PID file %s (PID %s is not running)", path, pid)
    return lock


def check_writable(path: str, account: privileges.Account | None) -> None:
    """Raise Unwritable unless a file can be created next to ``path`` (as ``account``, in a
    child process, when given: we are root and the file is written after the drop)."""
    code = _probe_as(account, path) if account else _probe(path)
    if code:
        raise Unwritable(f"cannot write the PID file {path}: {os.strerror(code)}")


def describe(err: Exception, path: str) -> str:
    """lockfile's error with the reason it dropped (the OSError it was raised from)."""
    cause = err.__cause__ or err.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return f"cannot write the PID file {path}: {cause.strerror}"
    return str(err)


def _probe(path: str) -> int:
    """0 if a file can be created and removed next to ``path``, else the errno."""
    probe = f"{path}.probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as err:
        return err.errno or errno.EIO
    return 0


def _probe_as(account: privileges.Account, path: str) -> int:
    pid = os.fork()
    if pid == 0:
        code = errno.EPERM
        try:
            privileges.drop(account)
            code = _probe(path)
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
