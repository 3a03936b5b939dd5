"""Small tmpfs mounts for tests that need a full disk (spool ENOSPC)."""

from __future__ import annotations

import pwd
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.procs import require_root


@pytest.fixture(name="tmpfs")
def tmpfs_fixture(scratch: Path) -> Iterator[Callable[[str, str], Path]]:
    """``tmpfs(name, size)``: a small tmpfs owned by nobody (p3scan's user); lazily
    unmounted at the end, after the daemon that used it has stopped or not.

    Import it into a test module as ``from tests.support.tmpfs import tmpfs_fixture``
    (``# noqa: F401``): the fixture's name is ``tmpfs``."""
    require_root("mounting a tmpfs")
    nobody = pwd.getpwnam("nobody")
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        path = scratch / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755,uid="
                        f"{nobody.pw_uid},gid={nobody.pw_gid}", "p3scan-test", str(path)],
                       check=True)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)
