"""A private clamd (Debian's clamav-daemon) with a signature database built by the test.

Nothing can be downloaded, so the database holds an EICAR body signature (any offset, so
it is found inside decoded MIME parts and archives) and the MD5 of the clamav-testfiles
``clam.exe`` (so ``clam.mail``, zips etc. are detected).  Recipe:
../shared/recipes/real-components.md §1.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from tests.support.messages import EICAR
from tests.support.procs import free_port, require_program, stop_process, wait_until

CLAM_EXE = Path("/usr/share/clamav-testfiles/clam.exe")
CLAM_MAIL = Path("/usr/share/clamav-testfiles/clam.mail")
EICAR_NAME = "P3scanTest.Eicar.UNOFFICIAL"
CLAM_NAME = "P3scanTest.ClamExe.UNOFFICIAL"


class Clamd:
    """clamd on a TCP port on loopback and a Unix socket, started in the foreground."""

    def __init__(self, base: Path, *, cache: bool = True):
        require_program("/usr/sbin/clamd", "clamav-daemon")
        require_program("/usr/bin/sigtool", "clamav")
        require_program(str(CLAM_EXE), "clamav-testfiles")
        self.base = base
        self.port = free_port()
        self.socket = base / "clamd.sock"
        self.proc: subprocess.Popen | None = None
        self.cache = cache
        for sub in ("db", "tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        self._database()
        (base / "clamd.conf").write_text(self._config())

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _database(self) -> None:
        db = self.base / "db"
        (db / "p3scan.ndb").write_text(f"{EICAR_NAME[:-11]}:0:*:{EICAR.hex()}\n")
        md5 = subprocess.run(["sigtool", "--md5", str(CLAM_EXE)], capture_output=True,
                             text=True, check=True, timeout=60).stdout.split(":")
        (db / "p3scan.hdb").write_text(f"{md5[0]}:{md5[1]}:{CLAM_NAME[:-11]}\n")

    def _config(self) -> str:
        return f"""Foreground yes
LogFile {self.base}/clamd.log
PidFile {self.base}/clamd.pid
DatabaseDirectory {self.base}/db
TemporaryDirectory {self.base}/tmp
LocalSocket {self.socket}
LocalSocketMode 666
FixStaleSocket yes
TCPSocket {self.port}
TCPAddr 127.0.0.1
MaxThreads 4
StreamMaxLength 300M
MaxScanSize 300M
MaxFileSize 300M
ScanMail yes
ScanArchive yes
SelfCheck 3600
DisableCache {"no" if self.cache else "yes"}
"""

    def start(self) -> Clamd:
        log = open(self.base / "clamd.stdout", "ab")
        self.proc = subprocess.Popen(["/usr/sbin/clamd", "-c", str(self.base / "clamd.conf")],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        wait_until(self.ready, 60, "clamd to answer PING")
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            text = (self.base / "clamd.stdout").read_text(errors="replace")
            raise AssertionError(f"clamd exited with {self.proc.returncode}: {text[-2000:]}")
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(str(self.socket))
                sock.sendall(b"zPING\0")
                return sock.recv(16) == b"PONG\0"
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 20)
            self.proc = None
