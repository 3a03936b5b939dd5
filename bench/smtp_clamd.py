"""SMTP with virus scanning: straight to a private Exim against p3scan scanning with clamd.

Each client process opens one SMTP connection and sends its messages (20 KB each) one after
another; messages/s is the best of three runs, latency is per message (send to final reply).

    sudo .venv/bin/python bench/smtp_clamd.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import smtplib
import time

from common import Run, Workspace, best_of, message_of_size, run_processes, start_p3scan

from tests.support.clamd import Clamd
from tests.support.exim import Exim


def _client(args: tuple[int, int, int, multiprocessing.Queue]) -> None:
    port, count, seed, queue = args
    latencies = []
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
        smtp.ehlo("bench.test")
        for number in range(count):
            data = message_of_size(20 * 1024, seed * 100_000 + number)
            started = time.perf_counter()
            smtp.sendmail("bench@example.test", ["user@example.test"], data)
            latencies.append(time.perf_counter() - started)
    queue.put(latencies)


def run(port: int, clients: int, count: int) -> Run:
    seed = int(time.time() * 1000) % 100_000  # fresh messages: clamd's cache is off anyway
    return run_processes(_client, [(port, count, seed + n) for n in range(clients)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, count = (1, 50) if args.quick else (3, 200)
    ws = Workspace()
    exim = Exim(ws.path / "exim").start()
    clamd = Clamd(ws.path / "clamd", cache=False).start()
    proxy = start_p3scan(ws, exim.port, "p3scan", emailport=exim.port, scannertype="clamd",
                         scanner=clamd.tcp)
    rows = []
    try:
        for clients in (1, 4):
            direct = best_of(rounds, lambda clients=clients: run(exim.port, clients, count))
            ours = best_of(rounds, lambda clients=clients: run(proxy.port, clients, count))
            rows.append((clients, direct, ours))
    finally:
        proxy.stop()
        clamd.stop()
        exim.stop()
        ws.close()
    print("| messages | clients | direct to Exim msg/s | p3scan+clamd msg/s | ratio | "
          "direct p50 ms | p3scan p50 ms | p3scan p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for clients, direct, ours in rows:
        print(f"| 20 KB x {count} | {clients} | {direct.rate:,.1f} | {ours.rate:,.1f} | "
              f"{ours.rate / direct.rate:.2f} | {direct.percentile(0.5) * 1000:.2f} | "
              f"{ours.percentile(0.5) * 1000:.2f} | {ours.percentile(0.99) * 1000:.2f} |")


if __name__ == "__main__":
    main()
