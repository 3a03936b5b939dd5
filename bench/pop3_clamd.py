"""POP3 with virus scanning: direct to Dovecot against p3scan scanning with a real clamd.

For 20 KB x 200 and 2 MB x 20 messages at 1 and 4 clients: messages/s (best of three),
the latency p3scan adds per message (p50/p99 through the proxy minus direct), and clamd's
own scan time for such a message (INSTREAM straight to clamd, p50) and the scan time p3scan
itself logged; "proxy's own" is the added latency minus the latter.  clamd's result
cache is off, so repeated runs scan for real.  Finally the peak RSS of a worker while a
100 MB message goes through.

    sudo .venv/bin/python bench/pop3_clamd.py [--quick]
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import struct
import time

from common import (
    FastPop3,
    Workspace,
    measure,
    message_of_size,
    peak_rss_kb,
    start_dovecot,
    start_p3scan,
)

from tests.support.clamd import Clamd
from tests.support.dovecot import PASSWORD

CASES = [("20 KB", 20 * 1024, 200), ("2 MB", 2 * 1024 * 1024, 20)]


def clamd_scan_ms(clamd: Clamd, size: int, times: int = 30) -> float:
    """Median time of one INSTREAM scan straight to clamd of a message of ``size``, in ms."""
    samples = []
    for number in range(times):
        data = message_of_size(size, 10_000 + number)
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", clamd.port)) as sock:
            sock.sendall(b"zINSTREAM\0")
            for start in range(0, len(data), 65536):
                chunk = data[start:start + 65536]
                sock.sendall(struct.pack("!L", len(chunk)) + chunk)
            sock.sendall(struct.pack("!L", 0))
            while not sock.recv(4096).endswith(b"\0"):
                pass
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    ws = Workspace()
    dovecot = start_dovecot(ws)
    clamd = Clamd(ws.path / "clamd", cache=False).start()  # every run scans for real
    proxy = start_p3scan(ws, dovecot.port, "p3scan", scannertype="clamd", scanner=clamd.tcp)
    rows = []
    try:
        for label, size, count in CASES:
            count = max(5, count // 4) if args.quick else count
            users = [dovecot.mailbox([message_of_size(size, n) for n in range(count)])
                     for _ in range(4)]
            scan_ms = clamd_scan_ms(clamd, size)
            for clients in (1, 4):
                group = users[:clients]
                direct = measure(rounds, dovecot.port, group, count)
                mark = len(proxy.log())
                ours = measure(rounds, proxy.port, group, count)
                rows.append((label, count, clients, direct, ours, scan_ms,
                             logged_scan_ms(proxy.log()[mark:])))
        rss = big_message_rss(dovecot, proxy)
    finally:
        proxy.stop()
        clamd.stop()
        dovecot.stop()
        ws.close()
    print("| messages | clients | direct msg/s | p3scan+clamd msg/s | ratio | added p50 ms | "
          "added p99 ms | clamd alone p50 ms | scan in p3scan p50 ms | proxy's own p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, count, clients, direct, ours, scan_ms, logged_ms in rows:
        added50 = (ours.percentile(0.5) - direct.percentile(0.5)) * 1000
        added99 = (ours.percentile(0.99) - direct.percentile(0.99)) * 1000
        print(f"| {label} x {count} | {clients} | {direct.rate:,.1f} | {ours.rate:,.1f} | "
              f"{ours.rate / direct.rate:.2f} | {added50:.2f} | {added99:.2f} | "
              f"{scan_ms:.2f} | {logged_ms:.2f} | {added50 - logged_ms:.2f} |")
    print(f"\nPeak RSS of a p3scan worker while a 100 MB message went through: "
          f"{rss / 1024:.1f} MB")


def logged_scan_ms(log: str) -> float:
    """Median of the scan times p3scan logged ("scanned in 0.004s") for these messages."""
    times = [float(value) for value in re.findall(r"scanned in (\d+\.\d+)s", log)]
    return statistics.median(times) * 1000 if times else float("nan")


def big_message_rss(dovecot, proxy) -> int:
    user = dovecot.mailbox([message_of_size(100 * 1024 * 1024, 0)])
    pop = FastPop3("127.0.0.1", proxy.port)
    pop.command(f"USER {user}")
    pop.command(f"PASS {PASSWORD}")
    pop.retr(1)
    pop.close()
    return peak_rss_kb(proxy.worker_pids())


if __name__ == "__main__":
    main()
