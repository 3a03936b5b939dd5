"""Value checks for configuration options, registered with configobj's Validator.

Each check takes the raw text of a value (from the config file or the command line) and
returns the typed value, or raises :class:`Invalid` with a sentence saying what is allowed.
The option table in :mod:`p3scan.config.options` names these checks in its configobj spec.
"""

from __future__ import annotations

import re
import shlex
import socket
from collections.abc import Callable
from typing import Any

from configobj.validate import ValidateError, Validator

from p3scan.config import pcre

FLAG_WORDS = {
    "yes": True, "on": True, "true": True, "1": True,
    "no": False, "off": False, "false": False, "0": False,
}

SCANNER_TYPES = ("basic", "avpd", "avpd_new", "trophie", "clamd", "bash", "eicar")

FACILITIES = (
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog",
    "user", "uucp", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
    "local7",
)


class Invalid(ValidateError):
    """A value that does not pass its check; the message says what is allowed."""


def _text(value: Any) -> str:
    if isinstance(value, list):  # configobj list parsing is off, but be safe
        value = ", ".join(value)
    return str(value)


def check_flag(value: Any) -> bool:
    """A switch: a bare key in the file, or yes/no/on/off/true/false/1/0 (new)."""
    if isinstance(value, bool):
        return value
    word = _text(value).strip().lower()
    if word in FLAG_WORDS:
        return FLAG_WORDS[word]
    raise Invalid("a switch takes no value (or yes/no)")


def check_count(value: Any, low: str = "0", high: str = "") -> int:
    """A whole number within [low, high]."""
    text = _text(value).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise Invalid(_range_text(low, high))
    number = int(text)
    if number < int(low) or (high and number > int(high)):
        raise Invalid(_range_text(low, high))
    return number


def _range_text(low: str, high: str) -> str:
    if high:
        return f"a whole number from {low} to {high}"
    return f"a whole number of at least {low}"


def check_port(value: Any) -> int:
    """A TCP port: a number from 1 to 65535 or a service name from /etc/services."""
    text = _text(value).strip()
    if re.fullmatch(r"[0-9]+", text):
        number = int(text)
        if 1 <= number <= 65535:
            return number
    elif re.fullmatch(r"[A-Za-z][A-Za-z0-9_.+-]*", text):
        try:
            return socket.getservbyname(text, "tcp")
        except OSError:
            pass
    raise Invalid("a port number from 1 to 65535 or a service name from /etc/services")


def check_ipv4(value: Any) -> str:
    """An IPv4 address, read like inet_aton (so 10.1 is 10.0.0.1), returned dotted."""
    text = _text(value).strip()
    try:
        return socket.inet_ntoa(socket.inet_aton(text))
    except OSError:
        raise Invalid("an IPv4 address such as 127.0.0.1") from None


def check_ipaddr(value: Any) -> str:
    """An IPv4 or IPv6 address (``::`` listens on both families)."""
    text = _text(value).strip()
    if ":" in text:
        try:
            return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
        except OSError:
            raise Invalid("an IPv4 or IPv6 address such as 0.0.0.0 or ::") from None
    try:
        return check_ipv4(text)
    except Invalid:
        raise Invalid("an IPv4 or IPv6 address such as 0.0.0.0 or ::") from None


def check_codes(value: Any) -> list[int]:
    """Exit codes 1 to 256, separated by spaces, tabs or commas."""
    items = [item for item in re.split(r"[\s,]+", _text(value).strip()) if item]
    allowed = "one or more exit codes from 1 to 256, separated by commas or spaces"
    if not items or not all(re.fullmatch(r"[0-9]+", item) for item in items):
        raise Invalid(allowed)
    codes = [int(item) for item in items]
    if not all(1 <= code <= 256 for code in codes):
        raise Invalid(allowed)
    return codes


def check_ports(value: Any) -> list[int]:
    """TCP ports (numbers or service names), separated by spaces, tabs or commas."""
    items = [item for item in re.split(r"[\s,]+", _text(value).strip()) if item]
    if not items:
        raise Invalid("one or more ports (1 to 65535 or service names), separated by commas")
    try:
        return [check_port(item) for item in items]
    except Invalid:
        raise Invalid("one or more ports (1 to 65535 or service names), separated by "
                      "commas") from None


def check_text(value: Any) -> str:
    """Any text, kept verbatim (quotes and commas included, as the original did)."""
    return _text(value)


def check_path(value: Any) -> str:
    """A non-empty file or directory name."""
    text = _text(value).strip()
    if not text or "\0" in text:
        raise Invalid("a file or directory name")
    return text


def check_command(value: Any) -> str:
    """A program with arguments, split like a shell would (but never run by one)."""
    text = _text(value).strip()
    problem = command_problem(text)
    if problem:
        raise Invalid(problem.removeprefix("expected "))
    return text


def check_word(value: Any) -> str:
    """A single word without white space, such as a user name."""
    text = _text(value).strip()
    if not text or re.search(r"\s", text):
        raise Invalid("a single word without spaces")
    return text


def check_scannertype(value: Any) -> str:
    """One of the scanner front-ends, case-insensitive."""
    text = _text(value).strip().lower()
    if text not in SCANNER_TYPES:
        raise Invalid("one of " + ", ".join(SCANNER_TYPES))
    return text


def check_facility(value: Any) -> str:
    """A syslog facility name."""
    text = _text(value).strip().lower()
    if text not in FACILITIES:
        raise Invalid("a syslog facility: " + ", ".join(FACILITIES))
    return text


def check_choice(value: Any, *choices: str) -> str:
    """One word out of a fixed list."""
    text = _text(value).strip().lower()
    if text not in choices:
        raise Invalid("one of " + ", ".join(choices))
    return text


def check_regexp(value: Any) -> str:
    """A PCRE-style regular expression with an optional /N group suffix."""
    text = _text(value)
    try:
        pcre.compile_scanner_regexp(text)
    except pcre.PatternError as err:
        raise Invalid(f"a regular expression that compiles ({err})") from None
    return text


def command_problem(text: str) -> str | None:
    """Why a command line cannot be split into arguments, if it cannot."""
    try:
        return None if shlex.split(text) else "expected a command"
    except ValueError as err:
        return f"expected a command line with balanced quotes ({err})"


def daemon_address(text: str) -> tuple[int, str | tuple[str, int]]:
    """A scanner daemon's address: ``/path`` or ``unix:/path`` (a Unix socket), ``host:port``
    or ``[v6]:port`` with a port 1-65535, as (address family, socket address).  The one
    reader of this grammar: the configuration check and the scanners both use it."""
    path = text[5:] if text.startswith("unix:") else text
    if path.startswith("/"):
        return socket.AF_UNIX, path
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise Invalid("host:port ([v6addr]:port) or the path of a socket")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, (host.strip("[]"), int(port))


def clamd_address_ok(text: str) -> bool:
    try:
        daemon_address(text)
    except Invalid:
        return False
    return True


CHECKS: dict[str, Callable[..., Any]] = {
    "flag": check_flag,
    "count": check_count,
    "port": check_port,
    "ipv4": check_ipv4,
    "ipaddr": check_ipaddr,
    "codes": check_codes,
    "ports": check_ports,
    "text": check_text,
    "path": check_path,
    "command": check_command,
    "word": check_word,
    "scannertype": check_scannertype,
    "facility": check_facility,
    "choice": check_choice,
    "regexp": check_regexp,
}


def make_validator() -> Validator:
    """A configobj Validator that knows p3scan's checks."""
    return Validator(dict(CHECKS))
