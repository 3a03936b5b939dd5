"""The PID file: why it cannot be written, said before p3scan detaches."""

from __future__ import annotations

import lockfile
import pytest
from daemon.pidfile import TimeoutPIDLockFile

from p3scan.daemon import pidfile


def test_a_missing_directory_is_named_with_the_reason(tmp_path):
    path = tmp_path / "missing" / "p3scan.pid"
    with pytest.raises(pidfile.Unwritable) as caught:
        pidfile.check_writable(str(path), None)
    assert str(caught.value) == f"cannot write the PID file {path}: No such file or directory"


def test_the_probe_leaves_nothing_behind(tmp_path):
    pidfile.check_writable(str(tmp_path / "p3scan.pid"), None)
    assert list(tmp_path.iterdir()) == []


def test_a_directory_in_place_of_the_pid_file_is_reported_not_raised(tmp_path):
    (tmp_path / "p3scan.pid").mkdir()
    with pytest.raises(pidfile.Unwritable) as caught:
        pidfile.claim(str(tmp_path / "p3scan.pid"))
    assert str(caught.value) == (f"cannot remove the stale PID file {tmp_path}/p3scan.pid: "
                                 "Is a directory")


def test_lockfiles_error_gets_its_reason_back(tmp_path):
    path = str(tmp_path / "missing" / "p3scan.pid")
    with pytest.raises(lockfile.Error) as caught:
        TimeoutPIDLockFile(path, acquire_timeout=0).acquire()
    assert str(caught.value) == f"failed to create {path}"  # what lockfile says by itself
    assert pidfile.describe(caught.value, path) == (
        f"cannot write the PID file {path}: No such file or directory")
