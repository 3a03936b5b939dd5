"""The scanning services of one worker: spool files, the pipeline, quarantine, notices.

A session (POP3 or SMTP) spools a message, starts the pipeline and, on a virus, quarantines
the message and builds the notification.  Everything here is per worker process: the work
directory ``virusdir/children/<pid>`` and the scanner are set up once, when it boots.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from p3scan import PROGNAME, __version__, notify, quarantine, scanners
from p3scan.log import LOG
from p3scan.pipeline import (
    ERROR,
    UNCHECKED,
    Job,
    Pipeline,
    Running,
    Verdict,
    footer_lines,
    scanner_info,
)
from p3scan.session import SessionInfo
from p3scan.spool import Spool, header_text

CLEAN_HEADER = {
    "POP3": f"X-P3Scan: Version {__version__} by <laitcg@cox.net>/<folke@ashberg.de>",
    "SMTP": f"X-P3Scan: v{__version__} by Jack S. Lai. No outbound virus detected.",
}


class QuarantineError(Exception):
    """The message could not be quarantined, so it must not be replaced or refused."""


class Scanning:
    """Spool, scan, quarantine and notify, for the sessions of one worker."""

    def __init__(self, cfg: Any, workdir: str):
        self.cfg = cfg
        self.workdir = workdir
        self.scanner = scanners.create(cfg)
        self.pipeline = Pipeline(cfg, self.scanner)
        self.vdinfo_lines = footer_lines(cfg)
        self.vdinfo = scanner_info(cfg, self.scanner, self.vdinfo_lines)

    # --- before the scan ------------------------------------------------------------------

    def spool(self) -> Spool:
        return Spool(self.workdir, min_free_kb=self.cfg.bytesfree)

    def values(self, info: SessionInfo, spool: Spool) -> dict[str, str | None]:
        """Template keyword values known once the message is spooled."""
        headers = spool.headers()
        route = info.route
        values = notify.session_values(info.client, (route.host, route.port),
                                       route.protocol, info.user, self.vdinfo)
        values.update({
            "MAILDATE": notify.maildate(), "MAILFROM": header_text(headers, "From"),
            "MAILTO": header_text(headers, "To"), "SUBJECT": header_text(headers, "Subject"),
            "MESSAGEID": header_text(headers, "Message-ID"),
        })
        return values

    def job(self, spool: Spool, values: dict[str, str | None]) -> Job:
        env = {}
        if self.cfg.altvnmsg:
            env["P3SCAN_VNMSG"] = self._copy_template()
        return Job(spool, self.workdir, time.monotonic() + self.cfg.scantimeout, values, env)

    def start(self, spool: Spool, values: dict[str, str | None]) -> Running:
        """Scan in a thread (POP3 keeps its client alive meanwhile)."""
        return self.pipeline.start(self.job(spool, values))

    def scan(self, spool: Spool, values: dict[str, str | None]) -> Verdict:
        """Scan and wait (SMTP: the client waits for the reply to its final dot).  As
        for a threaded scan, a bug in a step is a scan failure, never a lost message."""
        try:
            return self.pipeline.run(self.job(spool, values))
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

    def unscanned_header(self, verdict: Verdict) -> bytes:
        """The header of a message delivered by the ``pass`` policy."""
        what = ("unchecked, the message could not be checked completely"
                if verdict.status == UNCHECKED else "not scanned, the virus scanner failed")
        return f"X-P3Scan: {what}: {notify.clean_value(verdict.reason)}"\
            .encode("utf-8", "replace")

    def quarantine(self, spool: Spool, values: dict[str, str | None], verdict: Verdict,
                   extra: dict[str, Any]) -> str | None:
        """Quarantine (unless justdelete) and fill VIRUSNAME, MAILFILE and P3SCANID."""
        values["VIRUSNAME"] = verdict.text
        path = None
        if not self.cfg.justdelete:
            meta = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "protocol":
                    values["PROTOCOL"], "client": f"{values['CLIENTIP']}:{values['CLIENTPORT']}",
                    "server": f"{values['SERVERIP']}:{values['SERVERPORT']}",
                    "user": values.get("USERNAME"), "virus": list(verdict.names),
                    "status": verdict.status, "message_id": values.get("MESSAGEID"),
                    "from": values.get("MAILFROM"), "to": values.get("MAILTO"),
                    "subject": values.get("SUBJECT"), "scanner": self.scanner.name,
                    "p3scan": f"{PROGNAME} {__version__}", **extra}
            try:
                path = quarantine.store(spool, self.cfg.virusdir, meta)
            except OSError as err:
                LOG.critical("ERR: cannot quarantine a message in %s: %s", self.cfg.virusdir,
                             err.strerror or err)
                raise QuarantineError(f"the quarantine is not writable "
                                      f"({err.strerror or err})") from None
        values["MAILFILE"] = path or spool.path
        values["P3SCANID"] = "/" + os.path.basename(path) if path else self.cfg.notify
        return path

    def notification(self, spool: Spool, values: dict[str, str | None]) -> bytes:
        headers = spool.headers()
        path = os.path.join(self.workdir, "vnmsg") if self.cfg.altvnmsg else self.cfg.template
        return notify.notification(
            notify.read_template(path), values, self.cfg,
            {"From": header_text(headers, "From", 998), "To": header_text(headers, "To", 998)},
            add_subject=not self.cfg.altvnmsg)

    def log_verdict(self, protocol: str, number: str, size: int, verdict: Verdict,
                    envelope: str = "") -> None:
        """The one log line per message."""
        detail = f" ({verdict.text})" if verdict.status != "clean" else ""
        LOG.info("%s message %s: %d bytes, %s%s, scanned in %.3fs%s", protocol, number, size,
                 verdict.status, detail, verdict.seconds, envelope)

    def log_virus(self, values: dict[str, str | None]) -> None:
        """The original's warning line for an infected message (spec §12.3)."""
        fields = [values.get(key) or "(null)" for key in (
            "PROTOCOL", "CLIENTIP", "CLIENTPORT", "SERVERIP", "SERVERPORT", "MAILFROM",
            "MAILTO", "USERNAME", "VIRUSNAME", "P3SCANID")]
        LOG.warning("%s from %s:%s to %s:%s from %s to %s user: %s virus: %s file: %s",
                    *fields)

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
