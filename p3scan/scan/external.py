"""Programs and daemon sockets, bounded: what scanners, spam checkers and filters share.

A program is always run from an argument list, never through a shell, with a deadline and
with its output bounded: it is read through a pipe while the program runs, and the
program's process group is killed when the deadline passes or the output exceeds its cap.
A daemon's reply is read the same way: bounded in size and within the deadline.  Failures
are :class:`ExternalError`, whose text says what went wrong for a log line or a reply.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import time
from typing import Any

MAX_OUTPUT = 1024 * 1024  # far above any scanner's report on one message; more is a runaway
READ_SIZE = 64 * 1024  # one pipe or socket read
EXIT_POLL = 0.1  # how often a program is checked for having exited while its output is open


class ExternalError(Exception):
    """A program or daemon gave no usable answer; the message says why."""


def connect(family: int, address: Any, timeout: float, label: str) -> socket.socket:
    """A stream connection to a daemon; failure is an ExternalError naming ``label``.
    TCP connections get TCP_NODELAY: small requests must not wait for delayed ACKs."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.connect(address)
    except OSError as err:
        sock.close()
        raise ExternalError(f"cannot connect to {label}: {err.strerror or err}") from None
    return sock


class DaemonReply:
    """A scanner daemon's reply, read before ``deadline`` and at most ``limit`` bytes in
    all: a daemon that talks without end, or drips its answer, fails instead of hanging."""

    def __init__(self, sock: socket.socket, label: str, deadline: float, limit: int):
        self.sock = sock
        self.label = label
        self.deadline = deadline
        self.limit = limit
        self.buffer = bytearray()
        self.received = 0
        self.taken = 0

    def until(self, marker: bytes) -> bytes:
        """The bytes up to and including ``marker``, or all that came before end of file."""
        while True:
            idx = self.buffer.find(marker)
            if idx >= 0 and self.taken + idx + len(marker) <= self.limit:
                return self._take(idx + len(marker))
            if idx >= 0 or self.received > self.limit:
                raise ExternalError(f"{self.label} sent a reply longer than {self.limit} bytes")
            if not self._fill(self.limit + 1 - self.received):
                return self._take(len(self.buffer))

    def exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes; end of file before them is a failure."""
        if self.taken + size > self.limit:
            raise ExternalError(f"{self.label} announced a reply longer than {self.limit} bytes")
        while len(self.buffer) < size:
            if not self._fill(size - len(self.buffer)):
                raise ExternalError(f"{self.label} closed the connection in the middle of a "
                                   "reply")
        return self._take(size)

    def _fill(self, want: int) -> bool:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ExternalError(f"{self.label} did not answer before the scan deadline")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(min(READ_SIZE, want))
        except TimeoutError:
            raise ExternalError(f"{self.label} did not answer before the scan deadline") from None
        self.received += len(chunk)
        self.buffer += chunk
        return bool(chunk)

    def _take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        self.taken += size
        return data


def run_program(argv: list[str], deadline: float, env: dict[str, str] | None = None,
                *, merge_stderr: bool = True) -> tuple[int, bytes]:
    """Run ``argv`` with stdout and stderr merged (or stderr dropped); return (status,
    output).

    The status is the exit code, or minus the signal number that killed the program.
    Output beyond :data:`MAX_OUTPUT` or the scan deadline kill the program's process
    group and are an :class:`ExternalError`: a scanner failure, never a clean result.
    """
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if merge_stderr
                                else subprocess.DEVNULL, close_fds=True,
                                start_new_session=True, env={**os.environ, **(env or {})})
    except OSError as err:
        raise ExternalError(f"cannot run {argv[0]}: {err.strerror}") from None
    try:
        output = _collect(proc, argv[0], deadline)
        proc.wait(timeout=_time_left(deadline, argv[0]))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise ExternalError(_late(argv[0])) from None
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    return proc.returncode, output


def _collect(proc: subprocess.Popen, program: str, deadline: float) -> bytes:
    """The program's output, read while it runs: until end of file, or until it has exited
    and its pipe stays quiet (a background child may hold the pipe open)."""
    output = bytearray()
    assert proc.stdout is not None  # Popen was given stdout=PIPE
    fd = proc.stdout.fileno()
    while True:
        wait = min(_time_left(deadline, program), EXIT_POLL)
        readable, _, _ = select.select([fd], [], [], wait)
        if not readable:
            if proc.poll() is not None:
                return bytes(output)
            continue
        chunk = os.read(fd, min(READ_SIZE, MAX_OUTPUT - len(output) + 1))
        if not chunk:
            return bytes(output)
        output += chunk
        if len(output) > MAX_OUTPUT:
            raise ExternalError(f"{program} wrote more than {MAX_OUTPUT} bytes of output; "
                               "it was stopped")


def _time_left(deadline: float, program: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ExternalError(_late(program))
    return left


def _late(program: str) -> str:
    return f"{program} did not finish before the scan deadline (scantimeout)"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
