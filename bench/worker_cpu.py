"""CPU time the p3scan workers spend per 20 KB RETR (eicar scanner, real Dovecot).

clamd's own scan time varies too much between runs to compare two versions of the proxy by
their message rate; the CPU time of the workers (utime + stime from /proc) does not.

    sudo .venv/bin/python bench/worker_cpu.py
"""

from __future__ import annotations

import os

from common import Workspace, message_of_size, run_clients, start_dovecot, start_p3scan

MESSAGES, CLIENTS, ROUNDS = 300, 2, 3


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def main() -> None:
    ws = Workspace()
    dovecot = start_dovecot(ws)
    proxy = start_p3scan(ws, dovecot.port, "p3scan", scannertype="eicar", maxchilds=CLIENTS)
    try:
        users = [dovecot.mailbox([message_of_size(20 * 1024, n) for n in range(MESSAGES)])
                 for _ in range(CLIENTS)]
        run_clients("127.0.0.1", proxy.port, users[:1], MESSAGES)  # warm up
        results = []
        for _ in range(ROUNDS):
            pids = proxy.worker_pids()
            before = cpu_seconds(pids)
            run = run_clients("127.0.0.1", proxy.port, users, MESSAGES)
            results.append((cpu_seconds(pids) - before) / (MESSAGES * CLIENTS) * 1000)
        print(f"worker CPU ms per 20 KB RETR ({ROUNDS} rounds): "
              f"{', '.join(f'{value:.3f}' for value in results)}; {run.rate:.0f} msg/s")
    finally:
        proxy.stop()
        dovecot.stop()
        ws.close()


if __name__ == "__main__":
    main()
