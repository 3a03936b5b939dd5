"""Translate the original's PCRE ``virusregexp`` into a Python ``re`` pattern.

p3scan 2.3.2 compiled the regexp with only ``PCRE_UNGREEDY``: ``.*`` is lazy and ``.*?`` is
greedy.  A configuration written for it must keep finding the same virus names, so every
quantifier's greediness is inverted here.  POSIX bracket classes (``[[:space:]]``), PCRE
named groups ``(?<name>...)``, ``\\Q...\\E`` quoting and ``\\h`` are translated as well.

Differences from PCRE that remain (Python ``re``): no recursion ``(?R)``, no ``\\G``, no
callouts, no ``\\x{...}`` escapes, no conditionals on named groups.  Such patterns are
rejected when the configuration is read, never silently changed.
"""

from __future__ import annotations

import re

POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r"\s",
    "blank": r" \t",
    "xdigit": "0-9A-Fa-f",
    "word": r"\w",
    "cntrl": r"\x00-\x1f\x7f",
    "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e",
    "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
}

_QUANT_BRACE = re.compile(r"\{[0-9]+(,[0-9]*)?\}")
_UNSUPPORTED_ESCAPES = {"G": r"\G", "K": r"\K", "X": r"\X", "C": r"\C"}


class PatternError(ValueError):
    """The pattern is not valid, or uses a PCRE feature Python cannot express."""


def split_group_suffix(text: str) -> tuple[str, int]:
    """Split the original's ``/N`` suffix (a capture group 0-9) off a regexp."""
    if len(text) >= 2 and text[-2] == "/" and text[-1].isdigit():
        return text[:-2], int(text[-1])
    return text, 1


def compile_scanner_regexp(text: str) -> tuple[re.Pattern[str], int]:
    """Compile a ``virusregexp`` value; return the pattern and the group to extract."""
    pattern, group = split_group_suffix(text)
    translated = translate_ungreedy(pattern)
    try:
        compiled = re.compile(translated)
    except re.error as err:
        raise PatternError(str(err)) from None
    if group > compiled.groups:
        raise PatternError(f"group {group} requested but the pattern has {compiled.groups}")
    return compiled, group


def translate_ungreedy(pattern: str) -> str:
    """Rewrite a PCRE_UNGREEDY pattern as an equivalent Python pattern."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            piece, i = _escape(pattern, i)
            out.append(piece)
        elif char == "[":
            piece, i = _bracket(pattern, i)
            out.append(piece)
        elif char == "(":
            piece, i = _group_open(pattern, i)
            out.append(piece)
        elif char in "*+?":
            piece, i = _quantifier(pattern, i, char)
            out.append(piece)
        elif char == "{" and _QUANT_BRACE.match(pattern, i):
            end = _QUANT_BRACE.match(pattern, i).end()  # type: ignore[union-attr]
            piece, i = _quantifier(pattern, end - 1, pattern[i:end])
            out.append(piece)
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _quantifier(pattern: str, last: int, text: str) -> tuple[str, int]:
    """Invert greediness: plain becomes lazy, lazy becomes greedy, possessive stays."""
    after = last + 1
    if after < len(pattern) and pattern[after] == "?":
        return text, after + 1
    if after < len(pattern) and pattern[after] == "+":
        return text + "+", after + 1
    return text + "?", after


def _escape(pattern: str, i: int) -> tuple[str, int]:
    if i + 1 >= len(pattern):
        raise PatternError("pattern ends with a backslash")
    code = pattern[i + 1]
    if code == "Q":
        end = pattern.find("\\E", i + 2)
        literal = pattern[i + 2:] if end < 0 else pattern[i + 2:end]
        return re.escape(literal), len(pattern) if end < 0 else end + 2
    if code == "E":
        return "", i + 2
    if code == "h":
        return r"[ \t]", i + 2
    if code == "H":
        return r"[^ \t]", i + 2
    if code == "z":
        return r"\Z", i + 2
    if code == "e":
        return r"\x1b", i + 2
    if code in _UNSUPPORTED_ESCAPES or (code == "x" and pattern[i + 2:i + 3] == "{"):
        raise PatternError(f"PCRE escape \\{code} is not supported")
    return pattern[i:i + 2], i + 2


def _bracket(pattern: str, i: int) -> tuple[str, int]:
    """Copy a character class, translating POSIX ``[:name:]`` items inside it."""
    out = ["["]
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        out.append("^")
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        out.append(r"\]")
        j += 1
    while j < len(pattern):
        char = pattern[j]
        if char == "]":
            out.append("]")
            return "".join(out), j + 1
        if char == "\\":
            out.append(pattern[j:j + 2])
            j += 2
        elif pattern.startswith("[:", j):
            end = pattern.find(":]", j + 2)
            name = pattern[j + 2:end] if end > 0 else ""
            if name not in POSIX_CLASSES:
                raise PatternError(f"unknown POSIX class [:{name}:]")
            out.append(POSIX_CLASSES[name])
            j = end + 2
        elif char == "[":
            out.append(r"\[")
            j += 1
        else:
            out.append(char)
            j += 1
    raise PatternError("unterminated character class")


def _group_open(pattern: str, i: int) -> tuple[str, int]:
    """Copy a group opening; ``(?<name>`` becomes Python's ``(?P<name>``."""
    if not pattern.startswith("(?", i):
        return "(", i + 1
    if pattern.startswith("(?<", i) and not pattern.startswith(("(?<=", "(?<!"), i):
        return "(?P<", i + 3
    if pattern.startswith("(?R", i) or pattern.startswith("(?C", i):
        raise PatternError("PCRE recursion and callouts are not supported")
    match = re.compile(r"\(\?(P<|P=|P>|[:=!#]|<=|<!|[a-zA-Z-]*[:)])").match(pattern, i)
    if not match:
        raise PatternError("unsupported group syntax")
    return match.group(0), match.end()
