"""Supervision between master and workers: a heartbeat in shared memory, and status frames.

Heartbeat: before each fork the master maps one small anonymous shared page for the new
worker (gunicorn touches a temporary file instead; shared memory needs no file, no
descriptor and no system call per beat).  The worker writes ``time.monotonic()`` into it
(CLOCK_MONOTONIC is the same clock in every process); the master reads it and kills a
worker that has been silent for longer than its heartbeat timeout.

Status: the worker reports its state (ready, busy, idle, failed) and, while busy, what it
is doing, as frames on its status pipe: a 4-byte big-endian length, then that many bytes
of UTF-8 JSON.  A frame never exceeds ``PIPE_BUF``, so one non-blocking ``write`` sends it
whole or not at all: a worker never blocks on a master that is slow to read (it would
stop beating), and the master never sees half a frame from a writer that gave up.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import select
import struct
import time
from dataclasses import dataclass
from typing import Any

HEADER = struct.Struct("!I")
MAX_FRAME = select.PIPE_BUF  # one atomic pipe write
MAX_BODY = MAX_FRAME - HEADER.size
STATES = ("ready", "busy", "idle", "failed")
TEXT_LIMIT = 400  # characters of one text field (a boot failure's reason is the longest)
_SLOT = struct.Struct("d")


class FrameError(Exception):
    """The status stream cannot be read (a frame too large, or not a status)."""


@dataclass(frozen=True)
class WorkerStatus:
    """What a worker last said about itself; ``since`` (wall clock) is when the state
    began, the session fields are empty unless busy."""

    state: str
    since: float
    client: str = ""
    protocol: str = ""
    server: str = ""
    user: str = ""
    messages: int = 0  # messages of the session so far
    message: str = ""  # the number of the message being transferred or scanned
    bytes: int = 0
    reason: str = ""  # failed: why the worker could not boot

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """For a log line: ``busy since 12:00:01 (POP3 client=... server=... user=x message=3)``."""
        text = f"{self.state} since {time.strftime('%H:%M:%S', time.localtime(self.since))}"
        if self.state != "busy":
            return text
        parts = [self.protocol, f"client={self.client}", f"server={self.server or '-'}",
                 f"user={self.user or '-'}", f"message={self.message or '-'}"]
        return f"{text} ({' '.join(part for part in parts if part)})"


_FIELDS = {item.name: str(item.type) for item in dataclasses.fields(WorkerStatus)}
_TEXT = tuple(name for name, kind in _FIELDS.items() if kind == "str")
# escaped, a character takes at most 12 bytes (a surrogate pair); the rest stays under 256
_SAFE_LIMIT = (MAX_BODY - 256) // (12 * len(_TEXT))


def encode(status: WorkerStatus) -> bytes:
    """One frame; text fields are cut short so that it always fits :data:`MAX_FRAME`."""
    values = status.as_dict()
    for limit in (TEXT_LIMIT, _SAFE_LIMIT):
        for name in _TEXT:
            values[name] = values[name][:limit]
        body = json.dumps(values, separators=(",", ":")).encode()
        if len(body) <= MAX_BODY:
            return HEADER.pack(len(body)) + body
    raise FrameError(f"a status of {len(body)} bytes does not fit a frame")  # pragma: no cover


def decode(body: bytes) -> WorkerStatus:
    """The status in one frame's body; unknown keys are ignored, wrong types refused."""
    try:
        data = json.loads(body)
    except ValueError as err:
        raise FrameError(f"not JSON: {err}") from None
    if not isinstance(data, dict):
        raise FrameError("not a JSON object")
    values = {key: value for key, value in data.items() if key in _FIELDS}
    for key, value in values.items():
        if not _typed(_FIELDS[key], value):
            raise FrameError(f"{key} has the wrong type: {value!r}")
    if values.get("state") not in STATES or "since" not in values:
        raise FrameError(f"no valid state: {data.get('state')!r}")
    return WorkerStatus(**values)


def _typed(kind: str, value: object) -> bool:
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


class FrameDecoder:
    """Frames out of a byte stream read in pieces of any size."""

    def __init__(self, limit: int = MAX_BODY):
        self.limit = limit
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[WorkerStatus]:
        """The statuses completed by ``data``; a partial frame waits for the rest."""
        self.buffer += data
        statuses = []
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            if size > self.limit:
                raise FrameError(f"a frame of {size} bytes (at most {self.limit})")
            end = HEADER.size + size
            if len(self.buffer) < end:
                break
            body = bytes(self.buffer[HEADER.size:end])
            del self.buffer[:end]
            statuses.append(decode(body))
        return statuses


def send(fd: int, status: WorkerStatus) -> bool:
    """Write one frame to the (non-blocking) status pipe; False if it could not go now:
    the next status supersedes it anyway."""
    try:
        os.write(fd, encode(status))
    except OSError:  # full (BlockingIOError) or the master has gone
        return False
    return True


class Heartbeat:
    """One worker's heartbeat: a monotonic timestamp in memory shared across the fork."""

    def __init__(self) -> None:
        self.memory = mmap.mmap(-1, _SLOT.size)  # anonymous and MAP_SHARED
        self.beat()

    def beat(self) -> None:
        # One 8-byte copy: struct.pack_into would zero the slot before it writes, and the
        # master, reading at that moment, would see a heartbeat from boot time.
        self.memory[:_SLOT.size] = _SLOT.pack(time.monotonic())

    def last(self) -> float:
        """When the worker last beat (``time.monotonic()``): a value read twice alike, so
        that a read in the middle of a write is never taken for silence."""
        value = _SLOT.unpack_from(self.memory, 0)[0]
        for _attempt in range(3):
            again = _SLOT.unpack_from(self.memory, 0)[0]
            if again == value:
                break
            value = again
        return value

    def silent_for(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.last()

    def close(self) -> None:
        self.memory.close()
