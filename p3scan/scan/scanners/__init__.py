"""Scanner front-ends, one per ``scannertype``, behind one interface (:mod:`.base`)."""

from __future__ import annotations

from p3scan.config.settings import Settings
from p3scan.scan.scanners.base import (
    ScanContext,
    Scanner,
    ScannerError,
    ScanResult,
    combine,
)
from p3scan.scan.scanners.basic import Bash, Basic
from p3scan.scan.scanners.clamd import Clamd
from p3scan.scan.scanners.eicar import Eicar
from p3scan.scan.scanners.kaspersky import Avpd, AvpdNew
from p3scan.scan.scanners.trophie import Trophie

TYPES: dict[str, type[Scanner]] = {
    cls.name: cls for cls in (Basic, Avpd, AvpdNew, Trophie, Clamd, Bash, Eicar)
}

__all__ = ["TYPES", "ScanContext", "ScanResult", "Scanner", "ScannerError", "combine",
           "create"]


def create(cfg: Settings) -> Scanner:
    """The scanner that ``scannertype`` names."""
    return TYPES[cfg.scannertype](cfg)
