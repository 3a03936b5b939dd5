"""``basic`` and ``bash``: run a scanner program on the spool file (or demime directory).

``scanner`` is split like a shell would split it and the target is appended; stdout and
stderr are read together.  Exit codes in ``viruscode`` mean infected (checked first), 0 or a
code in ``goodcode`` mean clean; anything else, a signal, a missing program or the deadline
is a scanner failure (the original relayed mail unscanned or stopped the daemon, spec §9.6).
Virus names come from ``virusregexp`` (PCRE ungreedy, ``/N`` picks the group).
"""

from __future__ import annotations

import os
import shlex
import shutil

from p3scan.config import pcre
from p3scan.config.settings import Settings
from p3scan.scan.scanners.base import ScanContext, Scanner, ScanResult, run_program

MAX_NAMES = 1000
BASH_ARGUMENTS = ("MAILFROM", "MAILTO", "USERNAME", "SUBJECT", "MAILDATE", "SERVERIP",
                  "SERVERPORT", "CLIENTIP", "CLIENTPORT", "PROTOCOL", "PROGNAME", "VERSION",
                  "VDINFO")


class Basic(Scanner):
    name = "basic"
    description = "Basic file invocation scanner"
    dirscan = True

    def __init__(self, cfg: Settings):
        super().__init__(cfg)
        self.argv = shlex.split(cfg.scanner or "")
        self.viruscode = set(cfg.viruscode or [])
        self.goodcode = set(cfg.goodcode or [])
        self.regexp = pcre.compile_scanner_regexp(cfg.virusregexp) if cfg.virusregexp else None

    def check(self) -> str | None:
        program = self.argv[0] if self.argv else ""
        if not shutil.which(program) and not os.access(program, os.X_OK):
            return f"scanner program {program!r} is not found or not executable"
        return None

    def arguments(self, target: str, ctx: ScanContext) -> list[str]:
        return [*self.argv, target]

    def scan(self, target: str, ctx: ScanContext) -> ScanResult:
        status, output = run_program(self.arguments(target, ctx), ctx)
        if status < 0:
            return ScanResult.failed(f"{self.argv[0]} was killed by signal {-status}")
        if status in self.viruscode:
            return ScanResult.virus(self.names(output))
        if status == 0 or status in self.goodcode:
            return ScanResult.clean()
        return ScanResult.failed(f"{self.argv[0]} returned {status}, which is neither 0, "
                                 "a viruscode nor a goodcode")

    def names(self, output: bytes) -> list[str]:
        """Virus names found by ``virusregexp`` in the scanner's output lines."""
        if self.regexp is None:
            return []
        pattern, group = self.regexp
        names: list[str] = []
        for line in output.decode("latin-1").splitlines():
            match = pattern.search(line)
            if match and match.group(group):
                names.append(match.group(group).strip())
        kept: list[str] = []
        for name in names:
            if len(" & ".join([*kept, name])) > MAX_NAMES:
                break
            kept.append(name)
        return kept or [name[:MAX_NAMES] for name in names[:1]]


class Bash(Basic):
    """Like basic, plus the message's details as arguments 2 to 14 (spec §10.3).

    The values go to the program as separate arguments, unchanged: no shell ever sees
    them, so the original's replacing of ``'`` by a space is not needed.
    """

    name = "bash"
    description = "Bash file invocation scanner"

    def arguments(self, target: str, ctx: ScanContext) -> list[str]:
        values = [_argument(ctx.values.get(key)) for key in BASH_ARGUMENTS]
        return [*self.argv, target, *values]


def _argument(value: str | None) -> str:
    """An unset value is "(null)" as in the original; NUL cannot go into an argument."""
    return "(null)" if value is None else value.replace("\0", "")
