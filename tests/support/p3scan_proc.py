"""Run the real p3scan daemon as a subprocess with a private configuration."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.procs import REPO, children_of, free_port, stop_process, wait_until

TEMPLATE = REPO / "templates" / "p3scan-en.mail"


def config_text(options: dict[str, Any]) -> str:
    """Options as p3scan.conf lines: True is a bare flag, False and None are left out."""
    lines = ["# written by the test suite"]
    for key, value in options.items():
        if value is True:
            lines.append(key)
        elif value is not None and value is not False:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


class P3scan:
    """One p3scan daemon, started in the foreground with stderr captured to a file."""

    def __init__(self, workdir: Path, **options: Any):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o755)
        self.port = options.pop("port", None) or free_port()
        self.options: dict[str, Any] = {
            "ip": "127.0.0.1",
            "port": self.port,
            "scannertype": "eicar",
            "user": "nobody",
            "maxchilds": 3,
            "bytesfree": 0,
            "virusdir": workdir / "spool",
            "notifydir": workdir / "spool" / "notify",
            "pidfile": workdir / "run" / "p3scan.pid",
            "template": TEMPLATE,
            "syslogsocket": workdir / "no-syslog",
            "gracetimeout": 10,
        }
        self.options.update(options)
        self.conffile = workdir / "p3scan.conf"
        self.logfile = workdir / "p3scan.log"
        self.proc: subprocess.Popen | None = None
        self.write_config()

    @property
    def ip(self) -> str:
        return str(self.options["ip"])

    @property
    def pidfile(self) -> Path:
        return Path(self.options["pidfile"])

    def write_config(self, **changes: Any) -> None:
        self.options.update(changes)
        self.conffile.write_text(config_text(self.options))
        os.chmod(self.conffile, 0o644)

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "p3scan", "-f", str(self.conffile), "--foreground",
                *extra]

    def start(self, *extra: str, prefix: list[str] | None = None, wait: bool = True) -> P3scan:
        """Start the daemon; with ``wait``, return once it listens and its workers are up."""
        log = open(self.logfile, "ab")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen((prefix or []) + self.command(*extra), cwd=REPO,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        workers = int(self.options["maxchilds"])

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"p3scan exited with {self.proc.returncode}:\n{self.log()}")
            return self.pidfile.exists() and len(self.worker_pids()) >= workers

        wait_until(ready, timeout, f"p3scan to listen on port {self.port}")

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until ``pattern`` (a regexp) matched ``count`` times; return the log."""
        wait_until(lambda: len(re.findall(pattern, self.log())) >= count, timeout,
                   f"log line /{pattern}/ in p3scan's log:\n{self.log()[-3000:]}")
        return self.log()

    @property
    def master_pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def worker_pids(self) -> list[int]:
        try:
            return children_of(self.master_pid)
        except (OSError, ValueError):
            return []

    def signal(self, signum: int) -> None:
        os.kill(self.master_pid, signum)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        code = stop_process(self.proc, timeout)
        time.sleep(0.05)
        return code
