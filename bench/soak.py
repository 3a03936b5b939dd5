"""Soak: POP3 and SMTP mixed through one p3scan daemon, 5 x maxchilds clients at once.

One real p3scan daemon in transparent mode (the way it is deployed) sits between client
processes and a real Dovecot (POP3) and a real Exim or the aiosmtpd sink (SMTP).  Everything
runs inside a private network namespace of its own, on loopback only: the script re-executes
itself under ``unshare --net``, where an iptables ``OUTPUT`` rule redirects the clients'
connections to Dovecot's and the MTA's ports to p3scan (p3scan's own connections, made as
``nobody``, are not redirected).  The namespace and its rules vanish when the script ends.

Half of the clients are POP3 clients: each session logs in, RETRs the five messages of its
mailbox (clean, with dot lines and long lines, a base64 attachment, EICAR raw and in a
base64 attachment) and QUITs.  The other half are SMTP clients (smtplib): each session sends
one to three messages of the same kinds, each with a unique token.  Every client loops until
the deadline (and at most MAX_SESSIONS sessions), then stops by itself.

What must hold (exit status 1 and a list of failures otherwise):

* 0 client errors: every clean RETR is byte-identical to Dovecot's own reply with only the
  X-P3Scan header added (and the octet count corrected); every infected RETR is replaced by
  the notification; every clean SMTP message is accepted and arrives at the MTA identical
  apart from the added header (the sink: byte for byte; Exim: as it stores it, LF line ends
  after its trace headers); every infected one is refused with 554 and never arrives;
* one quarantine file per infected message; no spool file left in any worker's directory;
  one "Session done" log line per session, no traceback;
* the daemon's process count (master and every descendant) and open fd count (sum over
  /proc/PID/fd) once the load has ended and the workers are idle equal those before the
  load.

    sudo .venv/bin/python bench/soak.py [--duration 60] [--maxchilds 4] [--clients N]
                                        [--smtp exim|sink] [--scanner eicar|clamd]
                                        [--json FILE]
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import random
import re
import smtplib
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, FastPop3, Workspace, peak_rss_kb

from p3scan.scan.scanning import CLEAN_HEADER
from tests.support import oracle
from tests.support import pop3_transcript as pt
from tests.support.clamd import EICAR_NAME, Clamd
from tests.support.dovecot import PASSWORD, Dovecot
from tests.support.exim import Exim
from tests.support.messages import EICAR, smtp_body, tricky_body
from tests.support.p3scan_proc import P3scan
from tests.support.procs import children_of, free_port, require_program, wait_until
from tests.support.smtp_sink import Sink

INSIDE = "P3SCAN_SOAK_OUTER_NETNS"  # set by the outer process: its own network namespace
MAX_SESSIONS = 100_000  # per client: the loops end at the deadline, and at this count anyway
CLIENT_TIMEOUT = 60.0  # seconds a client waits for any one reply
SETTLE_TIMEOUT = 30.0  # seconds the daemon has to go back to its idle fd and process counts
MAX_ERRORS_KEPT = 8
POP3_HEADER = CLEAN_HEADER["POP3"].encode()
SMTP_HEADER = CLEAN_HEADER["SMTP"].encode()
POP3_MAILBOX = ["plain", "tricky", "eicar", "attachment", "eicar-base64"]
SMTP_KINDS = ["plain", "attachment", "eicar", "tricky", "eicar-base64"]
INFECTED = frozenset({"eicar", "eicar-base64"})
EICAR_B64 = base64.b64encode(EICAR)[:16]
SUBJECT_TOKEN = re.compile(rb"^Subject: soak (\S+) ", re.MULTILINE)


# --- messages ---------------------------------------------------------------------------------


def build(kind: str, token: str, *, pop3: bool = False) -> bytes:
    """The message of ``kind`` for ``token``: deterministic, so the checker can rebuild it."""
    head = (f"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: soak {token} {kind}"
            f"\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{token}@soak.test>\r\n")
    if kind == "plain":
        return head.encode() + b"\r\nHello Bob,\r\nsoak message " + token.encode() + b".\r\n"
    if kind == "tricky":  # dot lines, 8-bit; POP3 also has lines far beyond 998 bytes
        return head.encode() + b"\r\n" + (tricky_body() if pop3 else smtp_body())
    if kind == "eicar":
        return head.encode() + b"\r\n" + EICAR + b"\r\n"
    if kind == "attachment":
        size = 3000 + random.Random(token).randrange(20_000)
        return _with_attachment(head, token, random.Random(token).randbytes(size), "data.bin")
    if kind == "eicar-base64":
        return _with_attachment(head, token, EICAR, "eicar.com")
    raise ValueError(kind)


def _with_attachment(head: str, token: str, payload: bytes, name: str) -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    boundary = f"soak-{token}-boundary"
    return (head + f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="{boundary}"'
            f"\r\n\r\nThis is a MIME message.\r\n--{boundary}\r\nContent-Type: text/plain\r\n"
            f"\r\nSee the attachment.\r\n.a line with a leading dot\r\n--{boundary}\r\n"
            f'Content-Type: application/octet-stream; name="{name}"\r\n'
            f"Content-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="{name}"\r\n\r\n').encode() \
        + encoded + f"--{boundary}--\r\n".encode()


def notification_problem(reply: bytes, virus: str) -> str | None:
    """Why ``reply`` is not a proper replacement of an infected RETR, or None."""
    status, _, body = reply.partition(b"\r\n")
    if not re.fullmatch(rb"\+OK \d+ octets", status):
        return f"status {status[:80]!r}"
    if not body.endswith(b"\r\n.\r\n"):
        return "no final '.' line"
    if b"Subject: [Virus] found in a mail to you: " + virus.encode() not in body:
        return "no [Virus] subject naming " + virus
    if EICAR in body or EICAR_B64 in body:
        return "the virus is in the notification"
    return None


# --- clients (one process each) ---------------------------------------------------------------


class Tally:
    """What one client did; sent back to the parent as a dict."""

    def __init__(self, kind: str, number: int):
        self.data = {"kind": kind, "number": number, "sessions": 0, "clean": 0, "infected": 0,
                     "errors": 0, "error_texts": [], "latencies": [], "accepted": [],
                     "refused": []}

    def error(self, text: str) -> None:
        self.data["errors"] += 1
        if len(self.data["error_texts"]) < MAX_ERRORS_KEPT:
            self.data["error_texts"].append(f"{self.data['kind']} client "
                                            f"{self.data['number']}: {text}")


class Pop3Client(FastPop3):
    def __init__(self, host: str, port: int):
        super().__init__(host, port)
        self.sock.settimeout(CLIENT_TIMEOUT)

    def ok(self, text: str) -> None:
        reply = self.command(text)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"{text.split()[0]} got {reply[:120]!r}")

    def retr_reply(self, number: int) -> bytes:
        """The complete reply to RETR (status line, data, final '.' line), byte for byte."""
        status = self.command(f"RETR {number}") + b"\r\n"
        if not status.startswith(b"+OK"):
            return status
        data = bytearray(self.buf)
        while not (b"\r\n" + data[-5:]).endswith(b"\r\n.\r\n"):
            chunk = self.sock.recv(262144)
            if not chunk:
                raise ConnectionError(f"closed in the middle of RETR {number}")
            data += chunk
        end = data.find(b"\r\n.\r\n") + 5 if not data.startswith(b".\r\n") else 3
        self.buf = bytes(data[end:])
        return status + bytes(data[:end])


def pop3_client(args: tuple) -> None:
    number, port, user, expected, virus, deadline, queue = args
    tally = Tally("POP3", number)
    for session in range(MAX_SESSIONS):
        if time.monotonic() >= deadline:
            break
        tally.data["sessions"] += 1
        try:
            pop = Pop3Client("127.0.0.1", port)
            pop.ok(f"USER {user}")
            pop.ok(f"PASS {PASSWORD}")
            for index, (kind, want) in enumerate(expected, start=1):
                started = time.perf_counter()
                reply = pop.retr_reply(index)
                tally.data["latencies"].append(time.perf_counter() - started)
                if kind in INFECTED:
                    problem = notification_problem(reply, virus)
                    if problem:
                        tally.error(f"session {session} RETR {index} ({kind}): {problem}")
                    else:
                        tally.data["infected"] += 1
                elif reply != want:
                    tally.error(f"session {session} RETR {index} ({kind}): differs from the "
                                f"server's reply plus the header ({len(reply)} bytes, "
                                f"{len(want)} expected): {reply[:120]!r}")
                else:
                    tally.data["clean"] += 1
            pop.ok("QUIT")
            pop.sock.close()
        except Exception as err:  # any failure of a session is an error of the soak
            tally.error(f"session {session}: {type(err).__name__}: {err}")
    queue.put(tally.data)


def smtp_client(args: tuple) -> None:
    number, port, deadline, queue = args
    tally = Tally("SMTP", number)
    sequence = 0
    for session in range(MAX_SESSIONS):
        if time.monotonic() >= deadline:
            break
        tally.data["sessions"] += 1
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT) as smtp:
                smtp.ehlo("soak.test")
                for _ in range(1 + session % 3):
                    kind = SMTP_KINDS[(number + sequence) % len(SMTP_KINDS)]
                    token = f"c{number}s{sequence}"
                    sequence += 1
                    _send_one(smtp, tally, kind, token)
        except Exception as err:  # any failure of a session is an error of the soak
            tally.error(f"session {session}: {type(err).__name__}: {err}")
    queue.put(tally.data)


def _send_one(smtp: smtplib.SMTP, tally: Tally, kind: str, token: str) -> None:
    started = time.perf_counter()
    try:
        refused = smtp.sendmail("alice@example.test", ["bob@example.test"], build(kind, token))
    except smtplib.SMTPDataError as err:
        tally.data["latencies"].append(time.perf_counter() - started)
        if kind in INFECTED and err.smtp_code == 554:
            tally.data["infected"] += 1
            tally.data["refused"].append(token)
        else:
            tally.error(f"{token} ({kind}): {err.smtp_code} {err.smtp_error[:120]!r}")
        return
    tally.data["latencies"].append(time.perf_counter() - started)
    if kind in INFECTED:
        tally.error(f"{token} ({kind}): the infected message was accepted")
    elif refused:
        tally.error(f"{token} ({kind}): recipients refused: {refused}")
    else:
        tally.data["clean"] += 1
        tally.data["accepted"].append((token, kind))


# --- the daemon's resources -------------------------------------------------------------------


def daemon_state(master: int) -> dict:
    """Process count (master and all descendants), the sum of their open fds, and the fds'
    targets per process (for the report when the counts differ)."""
    pids, todo = [master], [master]
    while todo:
        kids = children_of(todo.pop())
        pids += kids
        todo += kids
    fds: dict[int, list[str]] = {}
    for pid in pids:
        targets = []
        try:
            for entry in os.listdir(f"/proc/{pid}/fd"):
                try:
                    targets.append(os.readlink(f"/proc/{pid}/fd/{entry}"))
                except OSError:
                    pass
        except OSError:
            continue
        fds[pid] = sorted(targets)
    return {"processes": len(fds), "fds": sum(len(t) for t in fds.values()), "detail": fds}


def settle(master: int, target: dict | None, timeout: float) -> dict:
    """Poll until two readings in a row agree (and equal ``target``'s counts, if given);
    the last reading after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = daemon_state(master)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = daemon_state(master)
        same = (now["processes"], now["fds"]) == (last["processes"], last["fds"])
        wanted = target is None or (now["processes"], now["fds"]) == (
            target["processes"], target["fds"])
        last = now
        if same and wanted:
            break
    return last


# --- the run ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (60)")
    parser.add_argument("--maxchilds", type=int, default=4, help="p3scan workers (4)")
    parser.add_argument("--clients", type=int, default=None,
                        help="concurrent clients, half POP3, half SMTP (5 x maxchilds)")
    parser.add_argument("--smtp", choices=["exim", "sink"], default="exim",
                        help="the SMTP server behind p3scan (exim)")
    parser.add_argument("--scanner", choices=["eicar", "clamd"], default="eicar")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    if not 1 <= args.duration <= 3600 or not 1 <= args.maxchilds <= 64:
        parser.error("--duration must be 1..3600 s and --maxchilds 1..64")
    args.clients = args.clients or 5 * args.maxchilds
    if not 2 <= args.clients <= 400:
        parser.error("--clients must be 2..400")
    if os.environ.get(INSIDE):
        return inside(args)
    return outside(args)


def outside(args: argparse.Namespace) -> int:
    """Re-run this script in a private network namespace (needs root)."""
    if os.geteuid() != 0:
        print("bench/soak.py needs root: it runs Dovecot, Exim and p3scan (which drops to "
              "nobody) and sets iptables rules in a private network namespace",
              file=sys.stderr)
        return 2
    for path, package in (("/usr/bin/unshare", "util-linux"), ("/usr/sbin/iptables", "iptables"),
                          ("/usr/sbin/ip", "iproute2")):
        require_program(path, package)
    env = {**os.environ, INSIDE: os.readlink("/proc/self/ns/net"),
           "PYTHONPATH": str(REPO)}
    command = ["unshare", "--net", "--", sys.executable, str(Path(__file__).resolve()),
               *sys.argv[1:]]
    try:
        return subprocess.run(command, env=env, timeout=args.duration + 900).returncode
    except subprocess.TimeoutExpired:
        print("bench/soak.py: the run did not end in time", file=sys.stderr)
        return 1


def inside(args: argparse.Namespace) -> int:
    if os.readlink("/proc/self/ns/net") == os.environ[INSIDE]:
        print("refusing to set iptables rules outside a private network namespace",
              file=sys.stderr)
        return 2
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    pop3_clients = (args.clients + 1) // 2
    smtp_clients = args.clients - pop3_clients
    ws = Workspace()
    started: list = []
    failures: list[str] = []
    try:
        figures = run(args, ws, started, pop3_clients, smtp_clients, failures)
    except BaseException:
        print(f"bench/soak.py: aborted; logs kept in {ws.path}", file=sys.stderr)
        raise
    finally:
        for server in reversed(started):
            server.stop()
    figures["failures"] = failures
    report(args, figures)
    if failures:
        print(f"\nFAILED ({len(failures)}); logs kept in {ws.path}:", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    if not os.environ.get("P3SCAN_KEEP_TMP"):
        ws.close()
    return 0


def run(args: argparse.Namespace, ws: Workspace, started: list, pop3_clients: int,
        smtp_clients: int, failures: list[str]) -> dict:
    dovecot = Dovecot(ws.path / "dovecot", users=max(1, pop3_clients)).start()
    started.append(dovecot)
    mta = Exim(ws.path / "exim") if args.smtp == "exim" else Sink(ws.path / "sink")
    mta.start()
    started.append(mta)
    options = {"scannertype": "eicar"}
    virus = "Eicar-Test-Signature"
    if args.scanner == "clamd":
        clamd = Clamd(ws.path / "clamd", cache=False).start()
        started.append(clamd)
        options = {"scannertype": "clamd", "scanner": clamd.tcp}
        virus = EICAR_NAME

    # the mailboxes, and what Dovecot itself answers (before any redirection exists)
    mailboxes = []
    for number in range(pop3_clients):
        messages = [build(kind, f"p{number}m{index}", pop3=True)
                    for index, kind in enumerate(POP3_MAILBOX)]
        user = dovecot.mailbox(messages)
        commands = [(f"USER {user}".encode(), False), (f"PASS {PASSWORD}".encode(), False)] \
            + [(f"RETR {n}".encode(), True) for n in range(1, len(messages) + 1)] \
            + [(b"QUIT", False)]
        direct = pt.transcript("127.0.0.1", dovecot.port, commands)[3:-1]
        expected = [(kind, reply if kind in INFECTED else pt.with_header(reply, POP3_HEADER))
                    for kind, reply in zip(POP3_MAILBOX, direct, strict=True)]
        mailboxes.append((user, expected))

    daemon = P3scan(ws.path / "p3scan", port=free_port(), emailport=mta.port,
                    maxchilds=args.maxchilds, **options)
    daemon.start()
    started.append(daemon)
    for port in (dovecot.port, mta.port):
        subprocess.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-o", "lo", "-p", "tcp",
                        "-d", "127.0.0.1", "--dport", str(port), "-m", "owner", "!",
                        "--uid-owner", "nobody", "-j", "REDIRECT", "--to-ports",
                        str(daemon.port)], check=True)
    master = daemon.master_pid
    before = settle(master, None, SETTLE_TIMEOUT)

    # the load
    queue: multiprocessing.Queue = multiprocessing.Queue()
    deadline = time.monotonic() + args.duration
    jobs = [(pop3_client, (n, dovecot.port, user, expected, virus, deadline, queue))
            for n, (user, expected) in enumerate(mailboxes)]
    jobs += [(smtp_client, (n, mta.port, deadline, queue)) for n in range(smtp_clients)]
    procs = [multiprocessing.Process(target=target, args=(job,)) for target, job in jobs]
    load_started = time.monotonic()
    for proc in procs:
        proc.start()
    workers_seen: set[int] = set()
    peak_rss = 0
    tallies = []
    end_by = deadline + CLIENT_TIMEOUT * 3
    while len(tallies) < len(procs) and time.monotonic() < end_by:
        workers = children_of(master)
        workers_seen.update(workers)
        peak_rss = max(peak_rss, peak_rss_kb(workers))
        try:
            tallies.append(queue.get(timeout=0.5))
        except Exception:  # queue.Empty: nothing reported yet
            continue
    load_seconds = time.monotonic() - load_started
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if len(tallies) < len(procs):
        failures.append(f"{len(procs) - len(tallies)} client(s) never finished")

    after = settle(master, before, SETTLE_TIMEOUT)
    figures = summarise(args, tallies, load_seconds, before, after, workers_seen, peak_rss)
    check(figures, tallies, failures)
    check_smtp(mta, tallies, failures)
    check_daemon(daemon, master, before, after, figures, failures)
    return figures


def summarise(args, tallies, load_seconds, before, after, workers_seen, peak_rss) -> dict:
    def total(kind: str, key: str) -> int:
        return sum(t[key] for t in tallies if t["kind"] == kind)

    latencies = [value for t in tallies for value in t["latencies"]]
    ordered = sorted(latencies) or [0.0]
    messages = sum(total(kind, key) for kind in ("POP3", "SMTP") for key in ("clean",
                                                                            "infected"))
    return {
        "command": "bench/soak.py " + " ".join(sys.argv[1:]),
        "duration_s": round(load_seconds, 1), "maxchilds": args.maxchilds,
        "clients": args.clients, "smtp_server": args.smtp, "scanner": args.scanner,
        "pop3": {key: total("POP3", key) for key in ("sessions", "clean", "infected")},
        "smtp": {key: total("SMTP", key) for key in ("sessions", "clean", "infected")},
        "messages": messages, "messages_per_s": round(messages / load_seconds, 1),
        "latency_p50_ms": round(statistics.median(ordered) * 1000, 2),
        "latency_p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
                                * 1000, 2),
        "errors": sum(t["errors"] for t in tallies),
        "error_examples": [text for t in tallies for text in t["error_texts"]][:MAX_ERRORS_KEPT],
        "processes_before": before["processes"], "processes_after": after["processes"],
        "fds_before": before["fds"], "fds_after": after["fds"],
        "workers_seen": len(workers_seen), "worker_peak_rss_kb": peak_rss,
    }


def check(figures: dict, tallies: list[dict], failures: list[str]) -> None:
    if figures["errors"]:
        failures.append(f"{figures['errors']} client error(s), for example:\n      "
                        + "\n      ".join(figures["error_examples"]))
    for kind in ("pop3", "smtp"):
        for key in ("sessions", "clean", "infected"):
            if not figures[kind][key]:
                failures.append(f"no {kind.upper()} {key} at all: the load did not run")


def check_smtp(mta, tallies: list[dict], failures: list[str]) -> None:
    """Every accepted clean message arrived once, as sent plus the header; nothing else did."""
    accepted = {token: kind for t in tallies for token, kind in t["accepted"]}
    refused = {token for t in tallies for token in t["refused"]}
    if isinstance(mta, Exim):
        new = mta.base / "mail" / "Maildir" / "new"
        try:
            wait_until(lambda: new.is_dir() and len(os.listdir(new)) >= len(accepted), 180,
                       f"{len(accepted)} messages in Exim's Maildir", interval=0.5)
        except AssertionError as err:
            failures.append(str(err))
        stored = mta.delivered()
    else:
        stored = [data for _envelope, data in mta.messages()]
    seen: set[str] = set()
    for data in stored:
        match = SUBJECT_TOKEN.search(data)
        token = match.group(1).decode() if match else "?"
        if token in seen:
            failures.append(f"SMTP message {token} arrived twice")
        seen.add(token)
        if token in refused:
            failures.append(f"SMTP message {token} was refused with 554 but arrived")
            continue
        if token not in accepted:
            failures.append(f"an SMTP message nobody accepted arrived: {data[:200]!r}")
            continue
        want = oracle.insert_header(build(accepted[token], token), SMTP_HEADER)
        same = (data.endswith(want.replace(b"\r\n", b"\n")) if isinstance(mta, Exim)
                else data == want)
        if not same:
            failures.append(f"SMTP message {token} ({accepted[token]}) arrived changed: "
                            f"{len(data)} bytes")
    missing = sorted(set(accepted) - seen)
    if missing:
        failures.append(f"{len(missing)} accepted SMTP message(s) never arrived: "
                        f"{missing[:10]}")


def check_daemon(daemon: P3scan, master: int, before: dict, after: dict, figures: dict,
                 failures: list[str]) -> None:
    if daemon.proc is None or daemon.proc.poll() is not None or daemon.master_pid != master:
        failures.append("the p3scan master did not survive the load")
    if (before["processes"], before["fds"]) != (after["processes"], after["fds"]):
        failures.append(f"daemon processes {before['processes']} -> {after['processes']}, "
                        f"open fds {before['fds']} -> {after['fds']}; before: "
                        f"{_fd_summary(before)}; after: {_fd_summary(after)}")
    spool = Path(daemon.options["virusdir"])
    quarantined = [path for path in spool.glob("p3scan.*") if not path.name.endswith(".json")]
    infected = figures["pop3"]["infected"] + figures["smtp"]["infected"]
    figures["quarantined"] = len(quarantined)
    if len(quarantined) != infected:
        failures.append(f"{len(quarantined)} quarantine files for {infected} infected messages")
    leftovers = [str(path) for path in (spool / "children").rglob("*") if path.is_file()]
    if leftovers:
        failures.append(f"spool files left in the workers' directories: {leftovers[:5]}")
    sessions = figures["pop3"]["sessions"] + figures["smtp"]["sessions"]
    try:
        log = daemon.wait_log(r"Session done", timeout=15, count=sessions)
    except AssertionError:
        log = daemon.log()
        failures.append(f"{log.count('Session done')} 'Session done' log lines for "
                        f"{sessions} sessions")
    figures["outcomes_not_ok"] = len(re.findall(r"Session done.* outcome=(?!ok\b)", log))
    if "Traceback" in log:
        failures.append("a traceback in p3scan's log: "
                        + log[log.index("Traceback"):][:1500])


def _fd_summary(state: dict) -> str:
    return "; ".join(f"{pid}: {len(targets)} fds {targets}"
                     for pid, targets in sorted(state["detail"].items()))


def report(args: argparse.Namespace, figures: dict) -> None:
    p, s = figures["pop3"], figures["smtp"]
    print(f"soak: {figures['duration_s']} s, {args.clients} clients "
          f"({(args.clients + 1) // 2} POP3, {args.clients // 2} SMTP), maxchilds "
          f"{args.maxchilds}, SMTP server {args.smtp}, scanner {args.scanner}")
    print(f"  POP3: {p['sessions']} sessions, {p['clean']} clean + {p['infected']} infected "
          f"RETRs; SMTP: {s['sessions']} sessions, {s['clean']} clean + {s['infected']} "
          f"infected messages")
    print(f"  {figures['messages']} messages, {figures['messages_per_s']} msg/s, latency p50 "
          f"{figures['latency_p50_ms']} ms, p99 {figures['latency_p99_ms']} ms")
    print(f"  errors {figures['errors']}; quarantined {figures.get('quarantined')}; "
          f"sessions not ok {figures.get('outcomes_not_ok')}")
    print(f"  daemon processes {figures['processes_before']} -> {figures['processes_after']}, "
          f"open fds {figures['fds_before']} -> {figures['fds_after']}; workers seen "
          f"{figures['workers_seen']}, worker peak RSS {figures['worker_peak_rss_kb'] / 1024:.1f}"
          f" MB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
