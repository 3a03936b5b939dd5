"""One decision for every protocol: what becomes of a message, given its verdict.

``decide`` is the whole verdict → action ladder (``scanerror`` and ``unchecked`` included);
the POP3 and SMTP message objects only say an outcome in their own wire replies.  It is
pure: no sockets, no files, so every combination is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from p3scan import __version__
from p3scan.config.settings import Settings
from p3scan.mail.notify import clean_value
from p3scan.scan.pipeline import CLEAN, INFECTED, UNCHECKED, Verdict

CLEAN_HEADER = {
    "POP3": f"X-P3Scan: Version {__version__} by <laitcg@cox.net>/<folke@ashberg.de>",
    "SMTP": f"X-P3Scan: v{__version__} by Jack S. Lai. No outbound virus detected.",
}
UNCHECKED_DEFAULT = {"POP3": "tempfail", "SMTP": "reject"}  # Amavis' CC_UNCHECKED


@dataclass(frozen=True)
class Policy:
    """The options that decide, for one protocol (``POP3`` or ``SMTP``)."""

    protocol: str
    scanerror: str = "tempfail"
    unchecked: str | None = None
    smtprset: str = "Virus detected! P3scan rejected message!"

    @classmethod
    def from_config(cls, cfg: Settings, protocol: str) -> Policy:
        return cls("SMTP" if protocol == "SMTP" else "POP3", cfg.scanerror, cfg.unchecked,
                   cfg.smtprset)

    def for_failure(self, verdict: Verdict) -> str:
        """tempfail, pass or reject for a verdict that is neither clean nor infected."""
        if verdict.retry:  # not all on disk: nothing to deliver, replace or keep
            return "tempfail"
        if verdict.status == UNCHECKED:
            return self.unchecked or UNCHECKED_DEFAULT[self.protocol]
        return self.scanerror


@dataclass(frozen=True)
class Deliver:
    """Send the message on, with these header lines inserted."""

    headers: tuple[bytes, ...]
    verdict: Verdict


@dataclass(frozen=True)
class Replace:
    """POP3: quarantine the message and send a notification in its place."""

    verdict: Verdict


@dataclass(frozen=True)
class Refuse:
    """SMTP: quarantine the message and refuse it with ``reply``."""

    reply: str
    verdict: Verdict


@dataclass(frozen=True)
class Tempfail:
    """Neither deliver nor keep: the client is to try again later."""

    verdict: Verdict


Outcome = Deliver | Replace | Refuse | Tempfail


def decide(verdict: Verdict, policy: Policy) -> Outcome:
    """The outcome of ``verdict`` under ``policy``."""
    if verdict.status == CLEAN:
        return Deliver((CLEAN_HEADER[policy.protocol].encode(),), verdict)
    if verdict.status == INFECTED:
        return _kept(verdict, policy, f"554 {policy.smtprset}")
    action = policy.for_failure(verdict)
    if action == "pass":
        return Deliver((unscanned_header(verdict),), verdict)
    if action == "reject":
        failed = Verdict(verdict.status, (f"{verdict.undone}: {verdict.reason}",),
                         verdict.reason, verdict.seconds)
        return _kept(failed, policy, f"554 5.7.0 p3scan: the message {verdict.failure}")
    return Tempfail(verdict)


def _kept(verdict: Verdict, policy: Policy, reply: str) -> Replace | Refuse:
    return Refuse(reply, verdict) if policy.protocol == "SMTP" else Replace(verdict)


def unscanned_header(verdict: Verdict) -> bytes:
    """The header of a message delivered by the ``pass`` policy."""
    what = ("unchecked, the message could not be checked completely"
            if verdict.status == UNCHECKED else "not scanned, the virus scanner failed")
    return f"X-P3Scan: {what}: {clean_value(verdict.reason)}".encode("utf-8", "replace")
