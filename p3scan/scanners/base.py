"""What every scanner front-end shares: results, the scan context, running programs.

Programs are always run from an argument list, never through a shell, with a deadline and
with their output bounded: it is read through a pipe while the program runs, and the
program's process group is killed when the deadline passes or the output exceeds its cap.
Daemon replies are read the same way: bounded in size and within the scan deadline.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

MAX_OUTPUT = 1024 * 1024  # far above any scanner's report on one message; more is a runaway
READ_SIZE = 64 * 1024  # one pipe or socket read
EXIT_POLL = 0.1  # how often a program is checked for having exited while its output is open
NO_NAME = "<no virusinfo could be examined>"


class ScannerError(Exception):
    """The scanner could not give a verdict; the message says why."""


@dataclass(frozen=True)
class ScanResult:
    """One scanner's verdict: infected (with names), clean, an error, or unchecked (the
    scanner ran but could not see all of the message, e.g. MIME beyond the splitter's
    limits: finding nothing proves nothing)."""

    infected: bool = False
    names: tuple[str, ...] = ()
    error: str | None = None
    unchecked: str | None = None

    @classmethod
    def clean(cls) -> ScanResult:
        return cls()

    @classmethod
    def virus(cls, names: list[str] | tuple[str, ...]) -> ScanResult:
        kept = tuple(name.strip() for name in names if name.strip())
        return cls(infected=True, names=kept or (NO_NAME,))

    @classmethod
    def failed(cls, reason: str) -> ScanResult:
        return cls(error=reason)

    @classmethod
    def not_checked(cls, reason: str) -> ScanResult:
        return cls(unchecked=reason)


def combine(results: list[ScanResult]) -> ScanResult:
    """Several parts' results: any virus wins, then any error, then unchecked, else clean."""
    infected = [name for result in results if result.infected for name in result.names]
    if infected:
        return ScanResult.virus(infected)
    errors = [result.error for result in results if result.error]
    if errors:
        return ScanResult.failed("; ".join(errors))
    unchecked = [result.unchecked for result in results if result.unchecked]
    if unchecked:
        return ScanResult.not_checked("; ".join(unchecked))
    return ScanResult.clean()


@dataclass
class ScanContext:
    """What a scan may use besides the file: its deadline, a work directory, and the
    template keyword values of the message (the bash scanner passes them on)."""

    deadline: float
    workdir: str
    values: dict[str, str | None] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ScannerError("the scan deadline (scantimeout) passed")
        return left


class Scanner:
    """Base of the front-ends; ``dirscan`` scanners take a directory of MIME parts at once."""

    name = ""
    description = ""
    dirscan = False

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def check(self) -> str | None:
        """A start-up check; returns a warning for the log, or None when all is well."""
        return None

    def version(self) -> str | None:
        """What the scanner says about its version and signatures, if it can tell."""
        return None

    def scan(self, target: str, ctx: ScanContext) -> ScanResult:
        raise NotImplementedError


def connect(family: int, address: Any, timeout: float, label: str) -> socket.socket:
    """A stream connection to a scanner daemon; failure is a ScannerError naming ``label``.
    TCP connections get TCP_NODELAY: small requests must not wait for delayed ACKs."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.connect(address)
    except OSError as err:
        sock.close()
        raise ScannerError(f"cannot connect to {label}: {err.strerror or err}") from None
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
                raise ScannerError(f"{self.label} sent a reply longer than {self.limit} bytes")
            if not self._fill(self.limit + 1 - self.received):
                return self._take(len(self.buffer))

    def exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes; end of file before them is a failure."""
        if self.taken + size > self.limit:
            raise ScannerError(f"{self.label} announced a reply longer than {self.limit} bytes")
        while len(self.buffer) < size:
            if not self._fill(size - len(self.buffer)):
                raise ScannerError(f"{self.label} closed the connection in the middle of a "
                                   "reply")
        return self._take(size)

    def _fill(self, want: int) -> bool:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ScannerError(f"{self.label} did not answer before the scan deadline")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(min(READ_SIZE, want))
        except TimeoutError:
            raise ScannerError(f"{self.label} did not answer before the scan deadline") from None
        self.received += len(chunk)
        self.buffer += chunk
        return bool(chunk)

    def _take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        self.taken += size
        return data


def run_program(argv: list[str], ctx: ScanContext) -> tuple[int, bytes]:
    """Run ``argv`` with stdout and stderr merged; return (status, output).

    The status is the exit code, or minus the signal number that killed the program.
    Output beyond :data:`MAX_OUTPUT` or the scan deadline kill the program's process
    group and are a :class:`ScannerError`: a scanner failure, never a clean result.
    """
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, close_fds=True,
                                start_new_session=True, env={**os.environ, **ctx.env})
    except OSError as err:
        raise ScannerError(f"cannot run {argv[0]}: {err.strerror}") from None
    try:
        output = _collect(proc, argv[0], ctx)
        proc.wait(timeout=_time_left(ctx, argv[0]))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise ScannerError(_late(argv[0])) from None
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        proc.stdout.close()
    return proc.returncode, output


def _collect(proc: subprocess.Popen, program: str, ctx: ScanContext) -> bytes:
    """The program's output, read while it runs: until end of file, or until it has exited
    and its pipe stays quiet (a background child may hold the pipe open)."""
    output = bytearray()
    fd = proc.stdout.fileno()
    while True:
        wait = min(_time_left(ctx, program), EXIT_POLL)
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
            raise ScannerError(f"{program} wrote more than {MAX_OUTPUT} bytes of output; "
                               "it was stopped")


def _time_left(ctx: ScanContext, program: str) -> float:
    try:
        return ctx.remaining()
    except ScannerError:
        raise ScannerError(_late(program)) from None


def _late(program: str) -> str:
    return f"{program} did not finish before the scan deadline (scantimeout)"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
