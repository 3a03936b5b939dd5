"""What every scanner front-end shares: results, the scan context, running programs.

Programs are always run from an argument list, never through a shell, with a deadline and
with their output bounded; their process group is killed when the deadline passes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

MAX_OUTPUT = 1024 * 1024
NO_NAME = "<no virusinfo could be examined>"


class ScannerError(Exception):
    """The scanner could not give a verdict; the message says why."""


@dataclass(frozen=True)
class ScanResult:
    """One scanner's verdict: infected (with names), clean, or an error."""

    infected: bool = False
    names: tuple[str, ...] = ()
    error: str | None = None

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


def combine(results: list[ScanResult]) -> ScanResult:
    """Several parts' results: any virus wins, then any error, else clean."""
    infected = [name for result in results if result.infected for name in result.names]
    if infected:
        return ScanResult.virus(infected)
    errors = [result.error for result in results if result.error]
    if errors:
        return ScanResult.failed("; ".join(errors))
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


def run_program(argv: list[str], ctx: ScanContext) -> tuple[int, bytes]:
    """Run ``argv`` with stdout and stderr merged; return (status, output).

    The status is the exit code, or minus the signal number that killed the program.
    """
    with tempfile.TemporaryFile(dir=ctx.workdir) as out:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, close_fds=True,
                                    start_new_session=True, env={**os.environ, **ctx.env})
        except OSError as err:
            raise ScannerError(f"cannot run {argv[0]}: {err.strerror}") from None
        try:
            proc.wait(timeout=ctx.remaining())
        except (subprocess.TimeoutExpired, ScannerError):
            _kill_group(proc)
            raise ScannerError(f"{argv[0]} did not finish before the scan deadline") from None
        out.seek(0)
        return proc.returncode, out.read(MAX_OUTPUT)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
