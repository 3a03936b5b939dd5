"""POP3 throughput: direct to Dovecot, through p3scan, and through the original C p3scan.

For 20 KB x 200 and 2 MB x 20 messages, with 1 and 4 concurrent clients (each its own
mailbox), every client RETRs all its messages; the best of three runs is reported, with the
added latency per message (p50/p99 through the proxy minus direct) and the peak RSS of a
p3scan worker.  p3scan uses its built-in eicar scanner, which costs almost nothing, so this
measures the proxy itself; the C p3scan runs /bin/true as its scanner.

    sudo .venv/bin/python bench/pop3_passthrough.py [--quick]
"""

from __future__ import annotations

import argparse

from common import (
    C_P3SCAN,
    CP3scan,
    Workspace,
    measure,
    message_of_size,
    peak_rss_kb,
    start_dovecot,
    start_p3scan,
)

CASES = [("20 KB", 20 * 1024, 200), ("2 MB", 2 * 1024 * 1024, 20)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run each, fewer messages")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    ws = Workspace()
    dovecot = start_dovecot(ws)
    proxy = start_p3scan(ws, dovecot.port, "p3scan")
    original = CP3scan(ws, dovecot.port) if C_P3SCAN.exists() else None
    rows = []
    try:
        for label, size, count in CASES:
            count = max(5, count // 4) if args.quick else count
            users = [dovecot.mailbox([message_of_size(size, n) for n in range(count)])
                     for _ in range(4)]
            for clients in (1, 4):
                group = users[:clients]
                direct = measure(rounds, dovecot.port, group, count)
                ours = measure(rounds, proxy.port, group, count)
                theirs = measure(rounds, original.port, group, count) if original else None
                rows.append((label, count, clients, direct, ours, theirs))
        rss = peak_rss_kb(proxy.worker_pids())
    finally:
        proxy.stop()
        if original:
            original.stop()
        dovecot.stop()
        ws.close()
    print_table(rows, rss, original is not None)


def print_table(rows, rss: int, with_c: bool) -> None:
    print("| messages | clients | direct msg/s | p3scan msg/s | p3scan / direct | "
          "added p50 ms | added p99 ms | C p3scan msg/s |")
    print("|---|---|---|---|---|---|---|---|")
    for label, count, clients, direct, ours, theirs in rows:
        c_rate = f"{theirs.rate:,.1f}" if theirs else "n/a"
        print(f"| {label} x {count} | {clients} | {direct.rate:,.1f} | {ours.rate:,.1f} | "
              f"{ours.rate / direct.rate:.2f} | "
              f"{(ours.percentile(0.5) - direct.percentile(0.5)) * 1000:.2f} | "
              f"{(ours.percentile(0.99) - direct.percentile(0.99)) * 1000:.2f} | {c_rate} |")
    print(f"\nPeak RSS of a p3scan worker (VmHWM): {rss / 1024:.1f} MB")
    if not with_c:
        print("(C p3scan not built in /opt/p3scan-c: see bench/RESULTS.md)")


if __name__ == "__main__":
    main()
