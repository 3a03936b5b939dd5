"""The scan pipeline: steps in the original's order, ending in one :class:`Verdict`.

The order is that of p3scan 2.3.2 (spec §9.2): attachment renaming, virus scan, spam check,
HTML filter.  Each step is an object with a ``run(job)`` method that returns a verdict to
stop with, or None to go on; later steps (spam, HTML) only ever see clean mail.  This
module knows nothing of sockets or protocols: a session hands it a spooled message (a
:class:`Job`) and gets a verdict back.
"""

from __future__ import annotations

import os
import shlex
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from p3scan.config.settings import Settings
from p3scan.log import LOG
from p3scan.mail import mimesplit
from p3scan.mail.spool import Spool
from p3scan.scan import external
from p3scan.scan.scanners import ScanContext, Scanner, ScannerError, ScanResult, combine

CLEAN, INFECTED, ERROR, UNCHECKED = "clean", "infected", "error", "unchecked"
WAIT_GRACE = 5.0
FOOTER_TIMEOUT = 10.0  # the footer command (scanner version text) runs once per worker
SCAN_THREAD = "p3scan-scan"  # the worker waits for these before it clears its work directory
LATER_STEPS = {"renattach": "attachment renaming", "checkspam": "spam checking",
               "overwrite": "the HTML filter", "extra": "extra notification"}


@dataclass(frozen=True)
class Verdict:
    """What became of one message: clean, infected (with names), error (the scan failed)
    or unchecked (the scan could not see all of the message), the last two with a reason."""

    status: str
    names: tuple[str, ...] = ()
    reason: str = ""
    seconds: float = 0.0
    retry: bool = False  # the message is not all on disk: only trying again can help

    @classmethod
    def spool_failed(cls, reason: str) -> Verdict:
        """The spool could not take the message (disk full): a tempfail whatever the
        policy, since there is nothing complete to deliver, replace or quarantine."""
        return cls(ERROR, reason=reason, retry=True)

    @property
    def text(self) -> str:
        """The virus names, or else the reason, for logs and %VIRUSNAME%."""
        if self.names:
            return " & ".join(self.names)
        return self.reason or self.status

    @property
    def failure(self) -> str:
        """How logs and replies name a message that is neither clean nor infected."""
        return "could not be checked" if self.status == UNCHECKED else "could not be scanned"

    @property
    def cause(self) -> str:
        return ("the message could not be checked completely" if self.status == UNCHECKED
                else "the scan failed")

    @property
    def undone(self) -> str:
        return "not checked" if self.status == UNCHECKED else "not scanned"

    @property
    def option(self) -> str:
        """The option whose policy applies (see :class:`p3scan.scan.outcome.Policy`)."""
        return "unchecked" if self.status == UNCHECKED else "scanerror"


@dataclass
class Job:
    """One spooled message and what the steps may need to know about it."""

    spool: Spool
    workdir: str
    deadline: float
    values: dict[str, str | None] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


class Step(Protocol):
    name: str

    def run(self, job: Job) -> Verdict | None: ...


class VirusStep:
    """Scan the message, or with ``demime`` its MIME parts, with the configured scanner."""

    name = "virus"

    def __init__(self, scanner: Scanner, demime: bool):
        self.scanner = scanner
        self.demime = demime

    def run(self, job: Job) -> Verdict | None:
        ctx = ScanContext(job.deadline, job.workdir, job.values, job.env)
        try:
            result = self._scan(job.spool.path, ctx)
        except ScannerError as err:
            return Verdict(ERROR, reason=str(err))
        except OSError as err:
            return Verdict(ERROR, reason=f"{self.scanner.name}: {err.strerror or err}")
        if result.infected:
            return Verdict(INFECTED, names=result.names)
        if result.error:
            return Verdict(ERROR, reason=result.error)
        if result.unchecked:
            return Verdict(UNCHECKED, reason=result.unchecked)
        return None

    def _scan(self, path: str, ctx: ScanContext) -> ScanResult:
        if not self.demime:
            return self.scanner.scan(path, ctx)
        directory = path + ".dir"
        os.mkdir(directory, 0o700)
        try:
            return self._scan_split(path, directory, ctx)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _scan_split(self, path: str, directory: str, ctx: ScanContext) -> ScanResult:
        """The parts, and the message as it is: a scanner that knows MIME itself then
        sees what the splitter may have missed.  Problems of the split make the message
        unchecked unless a virus is found all the same."""
        try:
            files, problems = mimesplit.split(path, directory), []
        except mimesplit.SplitError as err:
            files, problems = err.files, err.problems
        if self.scanner.dirscan:
            os.link(path, os.path.join(directory, "message"))
            result = self.scanner.scan(directory, ctx)
        else:
            result = self._scan_parts([*files, path], ctx)
        if problems and not (result.infected or result.error):
            return ScanResult.not_checked("; ".join(problems))
        return result

    def _scan_parts(self, files: list, ctx: ScanContext) -> ScanResult:
        """Each part on its own; a failing part never hides a virus found in another."""
        results = []
        for part in files:
            try:
                result = self.scanner.scan(str(part), ctx)
            except (ScannerError, OSError) as err:
                result = ScanResult.failed(str(err))
            results.append(result)
            if result.infected:
                break
        return combine(results)


class Pipeline:
    """The steps for one kind of session, built once per worker."""

    def __init__(self, cfg: Settings, scanner: Scanner):
        self.cfg = cfg
        self.scanner = scanner
        self.steps: list[Step] = [VirusStep(scanner, cfg.demime)]

    def run(self, job: Job) -> Verdict:
        started = time.monotonic()
        for step in self.steps:
            verdict = step.run(job)
            if verdict is not None:
                return Verdict(verdict.status, verdict.names, verdict.reason,
                               time.monotonic() - started)
        return Verdict(CLEAN, seconds=time.monotonic() - started)

    def start(self, job: Job) -> Running:
        """Run in a thread, so that the session can keep the client alive meanwhile."""
        return Running(self, job)


class Running:
    """A pipeline run in progress."""

    def __init__(self, pipeline: Pipeline, job: Job):
        self.job = job
        self.started = time.monotonic()
        self.verdict: Verdict | None = None
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(pipeline,), daemon=True,
                                       name=SCAN_THREAD)
        self.thread.start()

    def _run(self, pipeline: Pipeline) -> None:
        try:
            self.verdict = pipeline.run(self.job)
        except Exception as err:  # a bug in a step must not lose the message
            LOG.exception("Scan pipeline failed")
            self.verdict = Verdict(ERROR, reason=f"internal error: {err}")
        finally:
            self.finished.set()

    def wait(self, timeout: float) -> Verdict | None:
        """The verdict, or None if it is not there within ``timeout``; after the deadline
        (plus a grace period for the scanner to notice it) an error verdict."""
        if self.finished.wait(max(0.0, timeout)):
            return self.verdict
        if time.monotonic() > self.job.deadline + WAIT_GRACE:
            return Verdict(ERROR, reason="the scan did not finish within scantimeout",
                           seconds=time.monotonic() - self.started)
        return None

    def time_left(self) -> float:
        return self.job.deadline + WAIT_GRACE - time.monotonic()


def footer_lines(cfg: Settings) -> list[bytes]:
    """The non-empty output lines of the ``footer`` command (the scanner's version text)."""
    if not cfg.footer:
        return []
    try:  # bounded in time and output, like a scanner
        _status, output = external.run_program(shlex.split(cfg.footer),
                                               time.monotonic() + FOOTER_TIMEOUT,
                                               merge_stderr=False)
    except external.ExternalError as err:
        LOG.warning("footer command %s failed: %s", cfg.footer, err)
        return []
    lines = [line.strip() for line in output[:4096].splitlines()]
    return [line for line in lines if line][:20]


def scanner_info(cfg: Settings, scanner: Scanner, lines: list[bytes]) -> str | None:
    """%VDINFO%: the ``footer`` command's output, else what the scanner says of itself."""
    if lines:
        return b" ".join(lines).decode("utf-8", "replace")[:512]
    return None if cfg.footer else scanner.version()


def unsupported_options(cfg: Settings) -> list[str]:
    """Options (of later steps, and extra) that are set but not available yet."""
    return [f"{key} is set, but {what} is not available in this version; it is ignored"
            for key, what in LATER_STEPS.items() if getattr(cfg, key)]
