"""The scanning services of one worker: spool files, the pipeline, quarantine, notices.

A session (POP3 or SMTP) spools a message, starts the pipeline and, on a virus, quarantines
the message and builds the notification.  Everything here is per worker process: the work
directory ``virusdir/children/<pid>`` and the scanner are set up once, when it boots.
"""

from __future__ import annotations

import os
import shutil
import time

from p3scan.config.settings import Settings
from p3scan.log import LOG
from p3scan.mail import notify, quarantine
from p3scan.mail.context import MessageContext
from p3scan.mail.spool import Spool
from p3scan.scan import scanners
from p3scan.scan.outcome import CLEAN_HEADER
from p3scan.scan.pipeline import ERROR, Job, Pipeline, Running, Verdict, footer_lines, scanner_info

__all__ = ["CLEAN_HEADER", "QuarantineError", "Scanning"]


class QuarantineError(Exception):
    """The message could not be quarantined, so it must not be replaced or refused."""


class Scanning:
    """Spool, scan, quarantine and notify, for the sessions of one worker."""

    def __init__(self, cfg: Settings, workdir: str):
        self.cfg = cfg
        self.workdir = workdir
        self.scanner = scanners.create(cfg)
        self.pipeline = Pipeline(cfg, self.scanner)
        self.vdinfo_lines = footer_lines(cfg)
        self.vdinfo = scanner_info(cfg, self.scanner, self.vdinfo_lines)

    # --- before the scan ------------------------------------------------------------------

    def spool(self) -> Spool:
        return Spool(self.workdir, min_free_kb=self.cfg.bytesfree)

    def job(self, ctx: MessageContext) -> Job:
        env = {}
        if self.cfg.altvnmsg:
            env["P3SCAN_VNMSG"] = self._copy_template()
        return Job(ctx.spool, self.workdir, time.monotonic() + self.cfg.scantimeout,
                   ctx.values, env)

    def start(self, ctx: MessageContext) -> Running:
        """Scan in a thread (POP3 keeps its client alive meanwhile)."""
        return self.pipeline.start(self.job(ctx))

    def scan(self, ctx: MessageContext) -> Verdict:
        """Scan and wait (SMTP: the client waits for the reply to its final dot).  As
        for a threaded scan, a bug in a step is a scan failure, never a lost message."""
        try:
            return self.pipeline.run(self.job(ctx))
        except Exception as err:
            LOG.exception("Scan pipeline failed")
            return Verdict(ERROR, reason=f"internal error: {err}")

    def _copy_template(self) -> str:
        """altvnmsg: a private copy of the template that a bash scanner may edit."""
        copy = os.path.join(self.workdir, "vnmsg")
        try:
            shutil.copyfile(self.cfg.template, copy)
        except OSError as err:
            LOG.error("ERR: cannot copy the template for altvnmsg: %s", err)
        return copy

    # --- after the scan -------------------------------------------------------------------

    def clean_header(self, protocol: str) -> bytes:
        return CLEAN_HEADER["SMTP" if protocol == "SMTP" else "POP3"].encode()

    def quarantine(self, ctx: MessageContext, verdict: Verdict) -> str | None:
        """Keep the message (unless justdelete); return where.  Raises QuarantineError."""
        if self.cfg.justdelete:
            return None
        meta = quarantine.record(ctx, verdict.names, verdict.status, self.scanner.name)
        try:
            return quarantine.store(ctx.spool, self.cfg.virusdir, meta)
        except OSError as err:
            LOG.critical("ERR: cannot quarantine a message in %s: %s", self.cfg.virusdir,
                         err.strerror or err)
            raise QuarantineError(f"the quarantine is not writable "
                                  f"({err.strerror or err})") from None

    def notification(self, ctx: MessageContext, verdict: Verdict, kept: str | None) -> bytes:
        """The message that takes an infected one's place."""
        values = ctx.notice_values(verdict.text, kept, self.cfg.notify)
        path = os.path.join(self.workdir, "vnmsg") if self.cfg.altvnmsg else self.cfg.template
        return notify.notification(notify.read_template(path), values, self.cfg,
                                   ctx.original_addresses(), add_subject=not self.cfg.altvnmsg)

    def log_virus(self, ctx: MessageContext, verdict: Verdict, kept: str | None) -> None:
        """The original's warning line for an infected message (spec §12.3)."""
        reference = "/" + os.path.basename(kept) if kept else self.cfg.notify
        LOG.warning("%s from %s:%s to %s:%s from %s to %s user: %s virus: %s file: %s",
                    *ctx.log_fields(verdict.text, reference))

    def log_verdict(self, protocol: str, ctx: MessageContext, verdict: Verdict,
                    envelope: str = "") -> None:
        """The one log line per message."""
        detail = f" ({verdict.text})" if verdict.status != "clean" else ""
        LOG.info("%s message %s: %d bytes, %s%s, scanned in %.3fs%s", protocol, ctx.number,
                 ctx.spool.size, verdict.status, detail, verdict.seconds, envelope)

    def clear(self) -> None:
        """Remove whatever a session left in the work directory."""
        for entry in os.listdir(self.workdir):
            path = os.path.join(self.workdir, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
