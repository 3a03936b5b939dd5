"""Keep infected mail in ``virusdir``: durable before the client hears anything about it.

The quarantined file is the message as the sender meant it (not dot-stuffed), named
``p3scan.XXXXXXXX`` (mode 0600), with a JSON sidecar ``p3scan.XXXXXXXX.json`` that holds
when, from and to whom, the virus names, the Message-ID and the size.  Both are fsync'd and
so is the directory.  The original moved the spool with /bin/mv through a shell, kept no
metadata and chmod'ed every ``p3scan.*`` in the directory (spec §11.6).
"""

from __future__ import annotations

import json
import os
import secrets
import string
import time
from typing import Any

from p3scan import PROGNAME, __version__
from p3scan.mail.context import MessageContext
from p3scan.mail.spool import Spool

ALPHABET = string.ascii_letters + string.digits


def _new_name() -> str:
    return "p3scan." + "".join(secrets.choice(ALPHABET) for _ in range(8))


def record(ctx: MessageContext, names: tuple[str, ...], status: str,
           scanner: str) -> dict[str, Any]:
    """The sidecar of a quarantined message, from its context and verdict."""
    values = ctx.values
    meta: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "protocol": ctx.protocol,
        "client": f"{ctx.client[0]}:{ctx.client[1]}",
        "server": f"{ctx.server[0]}:{ctx.server[1]}", "user": ctx.user,
        "virus": list(names), "status": status, "message_id": values.get("MESSAGEID"),
        "from": values.get("MAILFROM"), "to": values.get("MAILTO"),
        "subject": values.get("SUBJECT"), "scanner": scanner,
        "p3scan": f"{PROGNAME} {__version__}"}
    if ctx.envelope is not None:
        meta["envelope"] = ctx.envelope.as_dict()
    meta["message_number"] = ctx.number
    return meta


def store(spool: Spool, virusdir: str, meta: dict[str, Any]) -> str:
    """Move the spooled message into quarantine with its sidecar; return the file path."""
    spool.sync()
    while True:
        path = os.path.join(virusdir, _new_name())
        try:
            os.link(spool.path, path)
            break
        except FileExistsError:
            continue
    os.chmod(path, 0o600)
    _write_json(path + ".json", {**meta, "file": os.path.basename(path), "size": spool.size})
    _fsync_directory(virusdir)
    return path


def _write_json(path: str, data: dict[str, Any]) -> None:
    temporary = path + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, path)


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
