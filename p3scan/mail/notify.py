"""Virus notifications: template keywords and the message that replaces an infected one.

Keywords (``%NAME%``, case-sensitive) are replaced in one pass; a keyword that has no value
in this session stays as it is, as in the original (spec §11.4).  Values are cut to a sane
length and never contain line breaks, so a hostile header cannot inject lines or overflow
anything (the original leaked stack memory here, S4).  The program writes the final ``.``
itself: a template's own ``.`` line and anything after it are ignored (M12).
"""

from __future__ import annotations

import email.utils
import functools
import re
import socket
import time
from collections.abc import Mapping

from p3scan import PROGNAME, __version__
from p3scan.config.settings import Settings
from p3scan.log import LOG

MAX_TEMPLATE = 1024 * 1024
MAX_VALUE = 256
KEYWORD = re.compile(rb"%([A-Z0-9]+)%")
FALLBACK_TEMPLATE = b"""MIME-Version: 1.0
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: 8bit

A message to %USERNAME% was stopped by %PROGNAME% on %HOSTNAME% because it
contains %VIRUSNAME%. It was sent by %MAILFROM% with the subject "%SUBJECT%".
Reference: %P3SCANID%
(The notification template could not be read; this is the built-in text.)
"""


@functools.lru_cache(maxsize=1)
def domainname() -> str:
    """The NIS domain name, "(none)" when unset (as the original showed it); read once."""
    try:
        with open("/proc/sys/kernel/domainname") as handle:
            return handle.read().strip() or "(none)"
    except OSError:
        return "(none)"


@functools.lru_cache(maxsize=1)
def hostname() -> str:
    return socket.gethostname()


def clean_value(value: str) -> str:
    text = " ".join(value.split())
    text = "".join(char for char in text if char.isprintable())
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


def maildate(now: float | None = None) -> str:
    """The current local time in RFC 5322 form (with a correct sign, unlike the original)."""
    return email.utils.formatdate(now if now is not None else time.time(), localtime=True)


def session_values(client: tuple[str, int], server: tuple[str, int], protocol: str,
                   user: str | None, vdinfo: str | None) -> dict[str, str | None]:
    return {
        "HOSTNAME": hostname(), "DOMAINNAME": domainname(), "PROGNAME": PROGNAME,
        "VERSION": __version__, "CLIENTIP": client[0], "CLIENTPORT": str(client[1]),
        "SERVERIP": server[0], "SERVERPORT": str(server[1]), "PROTOCOL": protocol,
        "USERNAME": user, "VDINFO": vdinfo,
    }


def render(template: bytes, values: Mapping[str, str | None]) -> bytes:
    """The template with its keywords replaced, CRLF line ends, up to a lone ``.`` line."""
    lines: list[bytes] = []
    for raw in template.replace(b"\r\n", b"\n").split(b"\n"):
        if raw == b".":
            break
        line = KEYWORD.sub(lambda match: _value(match, values), raw)
        lines.append(line)
    while lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


def _value(match: re.Match[bytes], values: Mapping[str, str | None]) -> bytes:
    value = values.get(match.group(1).decode())
    if value is None:
        return match.group(0)
    return clean_value(value).encode("utf-8", "replace")


def read_template(path: str) -> bytes:
    """The template file, or the built-in text (logged) if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_TEMPLATE)
    except OSError as err:
        LOG.error("ERR: cannot read the notification template %s (%s); using the built-in "
                  "text", path, err.strerror)
        return FALLBACK_TEMPLATE


def notification(template: bytes, values: Mapping[str, str | None], cfg: Settings,
                 original: Mapping[str, str | None], *, add_subject: bool) -> bytes:
    """The complete notification message that takes the infected message's place.

    Date, From and To come from the infected message when it had them; a Subject line
    ``<subject> <virus names>`` is added unless the template brings its own (or
    ``altvnmsg`` is set, as in the original).
    """
    host = values.get("HOSTNAME") or "localhost"
    head = [
        f"From: {clean_value(original.get('From') or f'MAILER-DAEMON@{host}')}",
        f"To: {clean_value(original.get('To') or values.get('USERNAME') or 'undisclosed')}",
        f"Date: {values.get('MAILDATE') or maildate()}",
        f"Message-ID: <{int(time.time() * 1000)}.p3scan@{host}>",
    ]
    if add_subject and not template.startswith(b"Subject:"):
        head.append(f"Subject: {clean_value(cfg.subject + ' ' + (values.get('VIRUSNAME') or ''))}")
    head.append(f"X-P3Scan: {PROGNAME} {__version__} virus notification")
    return "".join(line + "\r\n" for line in head).encode("utf-8", "replace") + render(
        template, values)
