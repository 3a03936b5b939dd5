"""The account p3scan runs as after binding its port (``user``)."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


class UnknownUser(Exception):
    """The configured ``user`` does not exist."""


def resolve(user: str) -> Account:
    """Look up a user by name or numeric uid (the original accepted only names)."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise UnknownUser(f"unknown user '{user}' (option user)") from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def current() -> Account:
    """The account we already run as (no change of user when not started as root)."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return Account(name, uid, os.getgid())


class PrivilegeError(Exception):
    """Changing to ``user`` failed or did not take full effect."""


def drop(account: Account) -> None:
    """Become ``account``: supplementary groups, then gid, then uid, and verify it.

    python-daemon's own ``initgroups`` path never calls setgid (the process would keep
    gid 0, the original's bug S12), so this is done here before the daemon context opens.
    """
    try:
        os.initgroups(account.name, account.gid)
        os.setgid(account.gid)
        os.setuid(account.uid)
    except OSError as err:
        raise PrivilegeError(f"cannot change to user {account.name}: {err.strerror}") from None
    if (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) != (
        account.uid, account.uid, account.gid, account.gid
    ):
        raise PrivilegeError(f"changing to user {account.name} did not take effect")
