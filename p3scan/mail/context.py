"""What is known about one intercepted message, whichever protocol carried it.

A :class:`MessageContext` is built once the message is spooled.  The quarantine record and
the notification's template values are *views* of it, computed when asked for, so that no
step has to run before another for a value to be right (the original filled one big table
as it went, and a value read too early was empty).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from email.message import Message

from p3scan.mail import notify
from p3scan.mail.spool import Spool, header_text

HEADER_VALUES = {"MAILFROM": "From", "MAILTO": "To", "SUBJECT": "Subject",
                 "MESSAGEID": "Message-ID"}


@dataclass
class Envelope:
    """An SMTP transaction: HELO name, sender, accepted recipients, announced size."""

    helo: str | None = None
    mail_from: str | None = None
    rcpt_to: list[str] = field(default_factory=list)
    size: int | None = None

    def reset(self) -> None:
        self.mail_from, self.rcpt_to, self.size = None, [], None

    def as_dict(self) -> dict[str, object]:
        return {"helo": self.helo, "mail_from": self.mail_from, "rcpt_to": list(self.rcpt_to)}


@dataclass(frozen=True)
class MessageContext:
    """One message: where it came from and went to, who asked, and the spool holding it."""

    protocol: str  # as logs and templates name it: POP3, POP3S or SMTP
    client: tuple[str, int]
    server: tuple[str, int]
    user: str | None
    number: str  # POP3: the message number; SMTP: the transaction's number in the session
    spool: Spool
    vdinfo: str | None = None
    envelope: Envelope | None = None  # SMTP only, a copy taken when DATA ended

    @functools.cached_property
    def headers(self) -> Message:
        return self.spool.headers()

    @functools.cached_property
    def values(self) -> dict[str, str | None]:
        """The template keywords known before the scan (a copy is safe to change)."""
        values = notify.session_values(self.client, self.server, self.protocol, self.user,
                                       self.vdinfo)
        values["MAILDATE"] = notify.maildate()
        for key, name in HEADER_VALUES.items():
            values[key] = header_text(self.headers, name)
        if self.envelope is not None:
            values.update({"ENVFROM": self.envelope.mail_from,
                           "ENVTO": ", ".join(self.envelope.rcpt_to),
                           "HELO": self.envelope.helo})
        return values

    def notice_values(self, virus: str, quarantined: str | None,
                      notify_text: str) -> dict[str, str | None]:
        """The values of a notification: those above, the virus names, and where the
        message was kept (or ``notify_text`` when it was not kept)."""
        return {**self.values, "VIRUSNAME": virus,
                "MAILFILE": quarantined or self.spool.path,
                "P3SCANID": "/" + os.path.basename(quarantined) if quarantined
                else notify_text}

    def original_addresses(self) -> dict[str, str | None]:
        """From and To of the message, for the notification's own header."""
        return {"From": header_text(self.headers, "From", 998),
                "To": header_text(self.headers, "To", 998)}

    def log_fields(self, virus: str, reference: str) -> list[str]:
        """The fields of the original's warning line for a virus (spec §12.3)."""
        values = self.values
        return [values.get(key) or "(null)" for key in (
            "PROTOCOL", "CLIENTIP", "CLIENTPORT", "SERVERIP", "SERVERPORT", "MAILFROM",
            "MAILTO", "USERNAME")] + [virus or "(null)", reference or "(null)"]
