"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.clamd import Clamd
from tests.support.dovecot import Dovecot
from tests.support.exim import Exim
from tests.support.p3scan_proc import P3scan
from tests.support.procs import require_root
from tests.support.smtp_sink import Sink


@pytest.fixture(scope="session")
def world_tmp() -> Iterator[Path]:
    """A scratch directory every user can traverse (p3scan drops to nobody, Dovecot to mail).

    pytest's own tmp_path lives under a 0700 directory, which those users cannot enter.
    Set P3SCAN_KEEP_TMP=1 to keep it (logs of every daemon) after the run.
    """
    path = Path(tempfile.mkdtemp(prefix="p3scan-tests-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    if not os.environ.get("P3SCAN_KEEP_TMP"):
        shutil.rmtree(path, ignore_errors=True)


_counter = itertools.count()


@pytest.fixture
def scratch(world_tmp: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh world-traversable directory for one test."""
    name = f"{next(_counter):03d}-{request.node.name[:40]}".replace("/", "_")
    path = world_tmp / name
    path.mkdir()
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="session")
def tls_ca(world_tmp: Path) -> dict[str, Path]:
    """A private CA and a certificate for localhost/127.0.0.1/::1, as PEM files."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    base = world_tmp / "tls"
    base.mkdir()
    paths = {"ca": base / "ca.pem", "cert": base / "cert.pem", "key": base / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    for path in paths.values():
        os.chmod(path, 0o644)
    return paths


@pytest.fixture(scope="session")
def dovecot(world_tmp: Path, tls_ca: dict[str, Path]) -> Iterator[Dovecot]:
    """One private Dovecot on loopback for the whole run (POP3 and POP3S)."""
    require_root("Dovecot")
    server = Dovecot(world_tmp / "dovecot", cert=tls_ca["cert"], key=tls_ca["key"]).start()
    yield server
    server.stop()


@pytest.fixture
def p3scan(scratch: Path) -> Iterator[Callable[..., P3scan]]:
    """Factory: ``p3scan(**options)`` writes a config and returns an unstarted daemon."""
    started: list[P3scan] = []

    def make(name: str = "p3scan", **options: Any) -> P3scan:
        daemon = P3scan(scratch / name, **options)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture(scope="session")
def clamd(world_tmp: Path) -> Iterator[Clamd]:
    """One private clamd for the whole run (TCP on loopback and a Unix socket)."""
    require_root("clamd")
    server = Clamd(world_tmp / "clamd").start()
    yield server
    server.stop()


@pytest.fixture
def sink(scratch: Path) -> Iterator[Sink]:
    """An aiosmtpd sink that keeps every message exactly as received."""
    server = Sink(scratch / "sink").start()
    yield server
    server.stop()


@pytest.fixture
def exim(scratch: Path, tls_ca: dict[str, Path]) -> Iterator[Exim]:
    """A private Exim delivering into a Maildir (with STARTTLS, which p3scan must hide)."""
    require_root("exim")
    server = Exim(scratch / "exim", cert=tls_ca["cert"], key=tls_ca["key"]).start()
    yield server
    server.stop()
