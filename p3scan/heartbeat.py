"""The heartbeat hook that sessions call: ``heartbeat.beat(info, message)``.

A worker installs its beat (a timestamp in memory shared with the master, and a status
report when what it does changed); everywhere else, unit tests included, a beat does
nothing.  This module imports nothing of p3scan, so that the session code, low in the
layers, can call up to the daemon without depending on it.

Sessions beat before each wait that can last (for a peer, for a scan), so a worker that
stops beating is stuck, and the master kills it (:mod:`p3scan.daemon.status`).
"""

from __future__ import annotations

from collections.abc import Callable

Beat = Callable[[object | None, str], None]


def _nothing(session: object | None = None, message: str = "") -> None:
    """Not in a worker: nobody listens."""


_beat: Beat = _nothing


def beat(session: object | None = None, message: str = "") -> None:
    """Say the worker is alive; ``session`` (a SessionInfo) and ``message`` (the number of
    the message in hand) tell the master what it is doing."""
    _beat(session, message)


def install(function: Beat) -> None:
    """Make :func:`beat` call ``function`` (the worker does this once, after its fork)."""
    global _beat
    _beat = function


def uninstall() -> None:
    global _beat
    _beat = _nothing
