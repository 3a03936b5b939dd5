"""Read configuration files in p3scan 2.3.2 syntax.

The original turned every line into a ``--key=value`` argument for getopt_long, so its files
have bare flag lines (``justdelete``), values kept verbatim up to the end of the line (commas,
quotes, ``#`` and ``/2`` suffixes included), whole-line comments starting with ``#``, ``;``,
``//`` or ``=``, and unambiguous key prefixes.  configobj cannot read that (it rejects bare
keys and cuts values at ``#`` and commas), so this module lexes the lines and hands configobj
a plain dictionary to validate.

Differences from the original, all deliberate: the stock file's C-style licence block
(``/* ... */``, lines starting with ``*``) is a comment; there is no limit of 48 lines; a
line longer than 64 KiB is an error instead of silently ending the file; a flag may be
written ``key = yes`` or ``key = no``.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE = 64 * 1024
COMMENT_PREFIXES = ("#", ";", "//", "=")


@dataclass(frozen=True)
class Entry:
    """One ``key [= value]`` line of a configuration file."""

    key: str
    value: str | None
    lineno: int


@dataclass(frozen=True)
class LexError:
    """A line that is not a ``key [= value]`` line."""

    lineno: int
    message: str


def lex(text: str) -> tuple[list[Entry], list[LexError]]:
    """Split a configuration text into entries, in file order."""
    entries: list[Entry] = []
    errors: list[LexError] = []
    in_block = False
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if raw.endswith("\r"):
            raw = raw[:-1]
        if len(raw) > MAX_LINE:
            errors.append(LexError(lineno, f"line longer than {MAX_LINE} bytes"))
            continue
        line = raw.strip()
        if in_block:
            in_block = "*/" not in line
            continue
        if line.startswith("/*"):
            in_block = "*/" not in line[2:]
            continue
        if len(raw) <= 2 or not line or line.startswith(COMMENT_PREFIXES) or line[0] == "*":
            continue
        entries.append(_entry(line, lineno))
    return entries, errors


def _entry(line: str, lineno: int) -> Entry:
    """Key up to the first space, ``=`` or tab; separators skipped; the rest verbatim."""
    end = 0
    while end < len(line) and line[end] not in " =\t":
        end += 1
    key = line[:end]
    rest = line[end:].lstrip(" =\t")
    return Entry(key, rest if rest else None, lineno)
