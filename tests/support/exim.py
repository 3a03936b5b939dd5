"""A private Exim (Debian's exim4-daemon-light) on loopback that delivers into a Maildir.

Recipe: ../shared/recipes/real-components.md §4b.  Exim started with ``-C`` runs as
Debian-exim, so its directories and the transport belong to that user.  Recipients whose
local part is ``nobody`` are refused at RCPT with ``550 5.1.1 no such user``.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from tests.support.procs import free_port, port_open, require_program, stop_process, wait_until


class Exim:
    def __init__(self, base: Path, cert: Path | None = None, key: Path | None = None):
        require_program("/usr/sbin/exim4", "exim4-daemon-light")
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        user = pwd.getpwnam("Debian-exim")
        self.uid, self.gid = user.pw_uid, grp.getgrnam("Debian-exim").gr_gid
        for sub in ("spool", "log", "mail"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        tls = ""
        if cert and key:
            shutil.copy(cert, base / "cert.pem")
            shutil.copy(key, base / "key.pem")
            tls = (f"tls_advertise_hosts = *\ntls_certificate = {base}/cert.pem\n"
                   f"tls_privatekey = {base}/key.pem\n")
        (base / "exim.conf").write_text(self._config(tls))
        os.chmod(base, 0o755)
        for path in [base / "spool", base / "log", base / "mail", *base.glob("*.pem")]:
            os.chown(path, self.uid, self.gid)

    def _config(self, tls: str) -> str:
        return f"""# private exim for p3scan's tests
primary_hostname = sink.test
spool_directory = {self.base}/spool
log_file_path = {self.base}/log/%slog
pid_file_path = {self.base}/exim.pid
daemon_smtp_ports = {self.port}
local_interfaces = 127.0.0.1
exim_user = Debian-exim
exim_group = Debian-exim
never_users = root
host_lookup =
rfc1413_hosts =
{tls}acl_smtp_rcpt = acl_check_rcpt
message_size_limit = 50M
keep_environment =

begin acl
acl_check_rcpt:
  deny    local_parts = nobody
          message = 5.1.1 no such user
  accept

begin routers
catchall:
  driver = accept
  transport = sink_maildir

begin transports
sink_maildir:
  driver = appendfile
  directory = {self.base}/mail/Maildir
  maildir_format
  create_directory
  user = Debian-exim
  group = Debian-exim
  envelope_to_add
  return_path_add

begin retry
*  *  F,1m,1m
"""

    def start(self) -> Exim:
        log = open(self.base / "exim.stdout", "ab")
        self.proc = subprocess.Popen(["/usr/sbin/exim4", "-C", str(self.base / "exim.conf"),
                                      "-bdf", "-q1m"], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        wait_until(lambda: self._alive() and port_open("127.0.0.1", self.port), 20,
                   f"exim on port {self.port}")
        return self

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError("exim exited: "
                                 + (self.base / "exim.stdout").read_text(errors="replace"))
        return True

    def delivered(self) -> list[bytes]:
        """The messages in the Maildir, oldest first (Exim stores LF line ends)."""
        new = self.base / "mail" / "Maildir" / "new"
        return [path.read_bytes() for path in sorted(new.glob("*"), key=os.path.getmtime)] \
            if new.exists() else []

    def wait_delivered(self, count: int) -> list[bytes]:
        wait_until(lambda: len(self.delivered()) >= count, 20, f"{count} message(s) in exim's "
                   f"Maildir; mainlog: {self.mainlog()[-2000:]}")
        return self.delivered()

    def mainlog(self) -> str:
        try:
            return (self.base / "log" / "mainlog").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
