"""Shared parts of the benchmarks: a fast POP3 client, timing, servers, proxies, RSS.

Run as root from the repository (``make bench``); servers run privately on loopback, as in
the integration tests.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.dovecot import PASSWORD, Dovecot  # noqa: E402
from tests.support.p3scan_proc import P3scan  # noqa: E402
from tests.support.procs import free_port, port_open, stop_process, wait_until  # noqa: E402

C_P3SCAN = Path("/opt/p3scan-c/src/p3scan")


def message_of_size(size: int, number: int) -> bytes:
    head = (f"From: bench@example.test\r\nTo: user@example.test\r\n"
            f"Subject: bench message {number}\r\nMessage-ID: <{number}.{size}@bench>\r\n\r\n")
    line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij.\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return head.encode() + body[: size - len(head)]


class FastPop3:
    """A raw POP3 client that reads whole replies in large chunks (cheap per byte)."""

    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._recv()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _recv(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def command(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def retr(self, number: int) -> int:
        """RETR one message; return its size on the wire."""
        status = self.command(f"RETR {number}")
        if not status.startswith(b"+OK"):
            raise RuntimeError(status)
        chunks = [self.buf]
        size = len(self.buf)
        tail = self.buf[-5:]
        while not (b"\r\n" + tail).endswith(b"\r\n.\r\n"):
            data = self.sock.recv(262144)
            if not data:
                raise ConnectionError("closed")
            chunks.append(data)
            size += len(data)
            tail = (tail + data)[-5:]
        self.buf = b""
        return size

    def close(self) -> None:
        self.command("QUIT")
        self.sock.close()


def _client(args: tuple[str, int, str, int, multiprocessing.Queue]) -> None:
    host, port, user, count, queue = args
    latencies = []
    pop = FastPop3(host, port)
    pop.command(f"USER {user}")
    pop.command(f"PASS {PASSWORD}")
    for number in range(1, count + 1):
        started = time.perf_counter()
        pop.retr(number)
        latencies.append(time.perf_counter() - started)
    pop.close()
    queue.put(latencies)


@dataclass
class Run:
    messages: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_processes(target, arguments: list[tuple]) -> Run:
    """Start one process per argument tuple (each puts its latencies on the queue that is
    appended to its arguments); all run at once; return the combined run."""
    queue: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=target, args=((*args, queue),))
             for args in arguments]
    started = time.perf_counter()
    for proc in procs:
        proc.start()
    latencies = [value for _ in procs for value in queue.get(timeout=600)]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join()
    return Run(len(latencies), elapsed, latencies)


def run_clients(host: str, port: int, users: list[str], count: int) -> Run:
    """Each user's client RETRs its ``count`` messages, all clients at once."""
    return run_processes(_client, [(host, port, user, count) for user in users])


def measure(rounds: int, port: int, users: list[str], count: int) -> Run:
    """Best of ``rounds`` POP3 runs against ``port``."""
    return best_of(rounds, lambda: run_clients("127.0.0.1", port, users, count))


def best_of(times: int, action) -> Run:
    runs = [action() for _ in range(times)]
    return max(runs, key=lambda run: run.rate)


def peak_rss_kb(pids: list[int]) -> int:
    """Largest VmHWM (peak resident set) among ``pids``, in KB."""
    peak = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak


class Workspace:
    """A world-traversable scratch directory (p3scan runs as nobody, Dovecot as mail)."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="p3scan-bench-", dir="/tmp"))
        os.chmod(self.path, 0o755)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def start_dovecot(ws: Workspace) -> Dovecot:
    return Dovecot(ws.path / "dovecot", users=20).start()


def start_p3scan(ws: Workspace, target_port: int, name: str, **options) -> P3scan:
    daemon = P3scan(ws.path / name, targetip="127.0.0.1", targetport=target_port,
                    **{"maxchilds": 4, **options})
    return daemon.start()


class CP3scan:
    """The original C p3scan 2.3.2, if built in /opt/p3scan-c (see bench/RESULTS.md)."""

    def __init__(self, ws: Workspace, target_port: int):
        self.dir = ws.path / "c-p3scan"
        for sub in ("spool/children", "notify", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        template = self.dir / "p3scan.mail"
        template.write_text("Subject: virus %VIRUSNAME%\n\nvirus found\n.\n")
        conf = self.dir / "p3scan.conf"
        conf.write_text("\n".join([
            "ip = 127.0.0.1", f"port = {self.port}", "targetip = 127.0.0.1",
            f"targetport = {target_port}", "maxchilds = 10", "user = root",
            f"pidfile = {self.dir}/run/p3scan.pid", f"virusdir = {self.dir}/spool",
            f"notifydir = {self.dir}/notify", f"template = {template}",
            "scannertype = basic", "scanner = /bin/true", "bytesfree = 0", ""]))
        log = open(self.dir / "log", "wb")
        self.proc = subprocess.Popen([str(C_P3SCAN), "-f", str(conf), "-d"], stdout=log,
                                     stderr=log)
        wait_until(lambda: port_open("127.0.0.1", self.port), 10, "C p3scan")

    def stop(self) -> None:
        stop_process(self.proc)


def fmt_rate(run: Run) -> str:
    return f"{run.rate:,.1f}"


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000
