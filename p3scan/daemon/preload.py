"""Import, before the change of user, everything that would otherwise be imported lazily.

After the drop the interpreter's own files may be unreadable to ``user`` (a Python under
/root, say), and a lazy import then finds nothing.  A codec is the usual case: the email
package looks it up only when a header, a file name or a body names its charset, and after
the drop ``koi8-r`` becomes "unknown encoding" (a header stays raw text, an RFC 2231 file
name fails the scan).  ``python -X importtime`` over the whole scan path (POP3 and POP3S
RETR/TOP, SMTP DATA, demime, useurl, reload) found only codecs; the modules below are
loaded too, because rarer paths (a traceback, a reload) reach them lazily.

The cost, measured once at start-up in the master (the workers share it copy-on-write):
137 more modules (119 codecs), about 3.3 MB of memory and 20 ms (95 ms without .pyc files).
tests/integration/test_unprivileged.py runs the scan path with the interpreter unreadable.
"""

from __future__ import annotations

import codecs
import email
import email.charset
import encodings
import encodings.aliases
import importlib
import pkgutil
import sys

# Imported lazily by the standard library on paths a worker or the master can take.
MODULES = (
    "ast",  # traceback's caret lines, when the source file is readable
    "unicodedata",  # traceback's column widths; the idna codec
    "_strptime",  # time.strptime, ssl.cert_time_to_seconds
    "configobj.validate",  # configobj, during a reload's validation
)
WINDOWS_ONLY = {"mbcs", "oem"}


def preload() -> int:
    """Import every codec, the email package and MODULES; return how many modules were new."""
    before = len(sys.modules)
    for name in codec_modules():
        importlib.import_module(name)
    for name in email_modules():
        importlib.import_module(name)
    for name in MODULES:
        importlib.import_module(name)
    for charset in email_charsets():
        try:
            codecs.lookup(charset)
        except LookupError:  # names the email package knows without a codec (unknown-8bit)
            pass
    return len(sys.modules) - before


def codec_modules() -> list[str]:
    """Every module of the ``encodings`` package (all of encodings.aliases points there)."""
    return [f"encodings.{info.name}" for info in pkgutil.iter_modules(encodings.__path__)
            if info.name not in WINDOWS_ONLY]


def email_modules() -> list[str]:
    return [info.name for info in pkgutil.walk_packages(email.__path__, "email.")]


def email_charsets() -> set[str]:
    """Charset names the email package may ask the codec registry for."""
    names = set(encodings.aliases.aliases) | set(email.charset.CHARSETS)
    names |= set(email.charset.ALIASES) | set(email.charset.ALIASES.values())
    return names | {codec for codec in email.charset.CODEC_MAP.values() if codec}
