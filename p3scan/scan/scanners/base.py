"""What every scanner front-end shares: results, the scan context, the scanner interface.

Programs and daemon sockets are reached through :mod:`p3scan.scan.external` (bounded output,
deadlines, no shell), which spam checkers and filters use as well.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from p3scan.config.settings import Settings
from p3scan.scan import external
from p3scan.scan.external import MAX_OUTPUT, DaemonReply, ExternalError, connect

__all__ = ["MAX_OUTPUT", "NO_NAME", "DaemonReply", "ScanContext", "ScanResult", "Scanner",
           "ScannerError", "combine", "connect", "run_program"]

NO_NAME = "<no virusinfo could be examined>"
ScannerError = ExternalError  # a scanner that gives no verdict is an external failure


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

    def __init__(self, cfg: Settings):
        self.cfg = cfg

    def check(self) -> str | None:
        """A start-up check; returns a warning for the log, or None when all is well."""
        return None

    def version(self) -> str | None:
        """What the scanner says about its version and signatures, if it can tell."""
        return None

    def scan(self, target: str, ctx: ScanContext) -> ScanResult:
        raise NotImplementedError


def run_program(argv: list[str], ctx: ScanContext) -> tuple[int, bytes]:
    """:func:`p3scan.scan.external.run_program` within the scan's deadline and environment."""
    return external.run_program(argv, ctx.deadline, ctx.env)
