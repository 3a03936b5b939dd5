"""A private Dovecot POP3 server (Debian's dovecot-pop3d) with its own config and maildirs.

Recipe: ../shared/recipes/real-components.md §3.  Dovecot never serves mail as root, so the
userdb maps every user to the system user ``mail``.
"""

from __future__ import annotations

import itertools
import os
import pwd
import subprocess
import time
from pathlib import Path

from tests.support.procs import free_port, port_open, require_program, stop_process, wait_until

PASSWORD = "secret"


class Dovecot:
    """One Dovecot instance: POP3 on ``port``, implicit-TLS POP3S on ``pop3s_port``."""

    def __init__(self, base: Path, *, listen: str = "127.0.0.1", port: int | None = None,
                 pop3s_port: int | None = None, cert: Path | None = None,
                 key: Path | None = None, users: int = 60):
        require_program("/usr/sbin/dovecot", "dovecot-pop3d")
        self.base = base
        self.listen = listen
        self.port = port or free_port()
        self.pop3s_port = pop3s_port or free_port()
        self.cert, self.key = cert, key
        self.users = [f"user{n:02d}" for n in range(1, users + 1)]
        self._next_user = itertools.count()
        self.proc: subprocess.Popen | None = None
        mail = pwd.getpwnam("mail")
        self.uid, self.gid = mail.pw_uid, mail.pw_gid
        for sub in ("run", "state", "home"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        (base / "passwd").write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}::::::\n"
                                             for u in self.users))
        (base / "dovecot.conf").write_text(self._config())
        os.chown(base / "home", self.uid, self.gid)

    def _config(self) -> str:
        ssl = "no"
        listener = ""
        if self.cert and self.key:
            ssl = f"yes\nssl_cert = <{self.cert}\nssl_key = <{self.key}"
            listener = (f"  inet_listener pop3s {{\n    port = {self.pop3s_port}\n"
                        "    ssl = yes\n  }\n")
        return f"""# private dovecot for p3scan's tests
protocols = pop3
listen = {self.listen}
base_dir = {self.base}/run
state_dir = {self.base}/state
instance_name = p3scan-test-{self.port}
log_path = {self.base}/dovecot.log
info_log_path = {self.base}/dovecot.log
ssl = {ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.base}/passwd
}}
userdb {{
  driver = static
  args = uid={self.uid} gid={self.gid} home={self.base}/home/%u
}}
first_valid_uid = {self.uid}
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
service pop3-login {{
  inet_listener pop3 {{
    port = {self.port}
  }}
{listener}}}
"""

    def start(self, prefix: list[str] | None = None, probe: bool = True) -> Dovecot:
        log = open(self.base / "dovecot.stdout", "ab")
        self.proc = subprocess.Popen(
            (prefix or []) + ["/usr/sbin/dovecot", "-F", "-c", str(self.base / "dovecot.conf")],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        if probe:
            host = "127.0.0.1" if self.listen in ("127.0.0.1", "*", "*, ::") else self.listen
            wait_until(lambda: self._alive() and port_open(host, self.port), 15,
                       f"dovecot on port {self.port}")
        else:
            time.sleep(0.5)
            self._alive()
        return self

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            text = (self.base / "dovecot.stdout").read_text(errors="replace")
            raise AssertionError(f"dovecot exited with {self.proc.returncode}: {text}")
        return True

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def mailbox(self, messages: list[bytes]) -> str:
        """A fresh user whose maildir holds ``messages`` (in order); returns the user name."""
        user = self.users[next(self._next_user)]
        maildir = self.base / "home" / user / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        for number, message in enumerate(messages, start=1):
            (maildir / "new" / f"{1700000000 + number}.M{number}P1.test").write_bytes(message)
        for path in [maildir.parent, *maildir.parent.rglob("*")]:
            os.chown(path, self.uid, self.gid)
        return user
