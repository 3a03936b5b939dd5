"""The directories p3scan needs: the spool (``virusdir``), its ``children`` work area,
``notifydir`` and the PID file's directory.

Started as root, p3scan creates the missing ones, owned by ``user`` with mode 0700.
Otherwise it only checks that they exist and are writable.  The original did neither and
failed later, per connection (spec §1.1, §14.5).  Whether the PID file can be written is
then tried for real by :func:`p3scan.daemon.pidfile.check_writable`, which can say why not.
"""

from __future__ import annotations

import errno
import os
import stat

from p3scan.config.settings import Settings
from p3scan.daemon.privileges import Account


class DirectoryProblem(Exception):
    """Directories are missing or unusable; ``lines`` says each problem."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def needed(cfg: Settings) -> list[tuple[str, str]]:
    """(directory, option it comes from), parents before children."""
    return [
        (cfg.virusdir, "virusdir"),
        (os.path.join(cfg.virusdir, "children"), "virusdir"),
        (cfg.notifydir, "notifydir"),
        (os.path.dirname(cfg.pidfile) or "/", "pidfile"),
    ]


def prepare(cfg: Settings, account: Account, *, as_root: bool) -> list[str]:
    """Create (as root) or check the directories; return notices of what was created."""
    created: list[str] = []
    problems: list[str] = []
    failed: list[str] = []
    for path, option in needed(cfg):
        if option == "pidfile" and not (as_root and not os.path.lexists(path)):
            continue  # pidfile.check_writable tells what is wrong, with the errno
        if any(path.startswith(bad + os.sep) for bad in failed):
            continue  # its parent could not be created: said once
        if os.path.isdir(path):
            usable = writable_by(path, account) if as_root else os.access(path, os.W_OK | os.X_OK)
            if not usable:
                problems.append(f"{path} (from {option}) is not writable by {account.name}")
            continue
        if os.path.exists(path):
            problems.append(f"{path} (from {option}) exists but is not a directory")
        elif not as_root:
            problems.append(f"{path} (from {option}) does not exist; create it, "
                            f"writable by {account.name}, or start p3scan as root")
        else:
            try:
                _create(path, account)
            except OSError as err:  # a parent is a file, a read-only file system, ...
                problems.append(f"cannot create {path} (from {option}): {err.strerror}")
                failed.append(path)
                continue
            created.append(f"Created directory {path} (owner {account.name}, mode 0700)")
    if problems:
        raise DirectoryProblem(problems)
    return created


def writable_by(path: str, account: Account) -> bool:
    """Whether ``account`` may create files in ``path`` (judged from owner and mode)."""
    st = os.stat(path)
    if st.st_uid == account.uid:
        need = stat.S_IWUSR | stat.S_IXUSR
    elif st.st_gid == account.gid or st.st_gid in os.getgrouplist(account.name, account.gid):
        need = stat.S_IWGRP | stat.S_IXGRP
    else:
        need = stat.S_IWOTH | stat.S_IXOTH
    return st.st_mode & need == need


def _create(path: str, account: Account) -> None:
    """Create ``path`` (0700) and any missing parents (0755), all owned by ``account``."""
    parent = os.path.dirname(path)
    if parent and os.path.lexists(parent) and not os.path.isdir(parent):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), parent)
    if parent and not os.path.isdir(parent):
        _create(parent, account)
        os.chmod(parent, 0o755)
    os.mkdir(path, 0o700)
    os.chown(path, account.uid, account.gid)
    os.chmod(path, 0o700)


def worker_dir(cfg: Settings, pid: int) -> str:
    return os.path.join(cfg.virusdir, "children", str(pid))
