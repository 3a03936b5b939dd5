"""Fault injection (issue 11, item 9): every fault of the table below is run through the real
daemon, and each run is checked against the same invariants:

- no message lost: the message is still on the server, byte for byte, unless the client got
  it complete (POP3: real Dovecot; a client deletes a message only after a complete RETR);
- nothing truncated shown as complete: a reply that ends with the final ``.`` is the whole
  scanned message; an SMTP server never stores a truncated message;
- nothing delivered unscanned: EICAR never reaches the POP3 client nor the SMTP server;
- SMTP never answers 250 unless the server (real Exim) accepted the message;
- an error reply names its cause (``-ERR [SYS/TEMP] p3scan: ...``, ``4xx 4.x.x p3scan: ...``)
  wherever a reply is still possible;
- the next connection is served (a clean message, byte-identical apart from X-P3Scan), the
  worker's spool is empty again, no scanner process is left, all workers are up.

Server drops are injected by :class:`FaultRelay`, a TCP relay between p3scan and the real
server that closes, resets or stalls one direction right before a given byte string.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from p3scan.scan.scanning import CLEAN_HEADER
from tests.support import oracle
from tests.support import pop3_transcript as pt
from tests.support.clamd import Clamd
from tests.support.dovecot import PASSWORD, Dovecot
from tests.support.exim import Exim
from tests.support.messages import EICAR, message
from tests.support.p3scan_proc import P3scan
from tests.support.procs import wait_until
from tests.support.tmpfs import tmpfs_fixture  # noqa: F401 (the tmpfs fixture)

pytestmark = pytest.mark.integration

POP3_HEADER = CLEAN_HEADER["POP3"].encode()
SMTP_HEADER = CLEAN_HEADER["SMTP"].encode()
MARK = b"CUT-HERE"  # relay faults strike right before this line of the message
POP3_ERROR = re.compile(rb"-ERR \[SYS/TEMP\] p3scan: \S[^\r\n]*\r\n\Z")
SMTP_ERROR = re.compile(rb"4[25]1 4\.\d\.\d p3scan: \S[^\r\n]*\r\n\Z")
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST
TIMEOUT = 20.0  # a client's patience; every fault ends long before


# --- the faults -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """What :class:`FaultRelay` does to the first stream that carries ``at``."""

    stream: str  # "down": server -> p3scan, "up": p3scan -> server
    at: bytes
    how: str  # "close" (FIN), "reset" (RST) or "stall" (until released)


@dataclass(frozen=True)
class Fault:
    """One row of the table; ``answer`` is what the error reply must name (None: no reply
    is possible, the client only sees a close without a final '.')."""

    id: str
    answer: bytes | None
    infected: bool = False  # the message carries EICAR (where scanning is what fails)
    size: str = "small"  # "small", "marked" (~100 KB with MARK in the middle), "big" (4 MB)
    scanner: str | None = None  # "clamd-down", or a mode of the scripted scanner
    cut: Cut | None = None
    action: str | None = None  # "client-reset" or "kill-worker", once the worker is busy
    spool: str | None = None  # "full" (a 2 MB tmpfs) or "quarantine-readonly"
    options: dict[str, Any] = field(default_factory=dict)


SCANNER_FAULTS = [
    Fault("scanner-down", b"could not be scanned (", infected=True, scanner="clamd-down"),
    Fault("scanner-stalled", b"did not finish before the scan deadline (scantimeout)",
          infected=True, scanner="stall"),
    Fault("scanner-killed-by-signal", b"was killed by signal 11", infected=True,
          scanner="segv"),
    Fault("scanner-unknown-exit-code", b"returned 7, which is neither", infected=True,
          scanner="exit7"),
]
SPOOL_FAULTS = [
    Fault("disk-full-mid-message", b"spool full: No space left on device", infected=True,
          size="big", spool="full"),
    Fault("quarantine-not-writable", b"the quarantine is not writable", infected=True,
          spool="quarantine-readonly"),
]

POP3_FAULTS = [
    *SCANNER_FAULTS,
    Fault("scanner-stalled-after-keepalive-began", None, infected=True, scanner="stall",
          options={"timeout": 1, "scantimeout": 3}),
    Fault("server-close-mid-retr", b"the server closed the connection during the download",
          size="marked", cut=Cut("down", MARK, "close")),
    Fault("server-reset-mid-retr", b"the server reset the connection during the download",
          size="marked", cut=Cut("down", MARK, "reset")),
    Fault("server-stalled-mid-retr", b"the server did not answer within idletimeout",
          size="marked", cut=Cut("down", MARK, "stall"), options={"idletimeout": 2}),
    Fault("client-reset-mid-retr", None, size="marked", cut=Cut("down", MARK, "stall"),
          action="client-reset"),
    Fault("worker-sigkill-mid-retr", None, size="marked", cut=Cut("down", MARK, "stall"),
          action="kill-worker"),
    *SPOOL_FAULTS,
]

SMTP_FAULTS = [
    *SCANNER_FAULTS,
    Fault("server-close-after-data-command", b"the server closed the connection",
          cut=Cut("up", b"DATA\r\n", "close")),
    Fault("server-close-mid-message", b"the server went away during DATA", size="marked",
          cut=Cut("up", MARK, "close")),
    Fault("server-reset-mid-message", b"the server went away during DATA", size="marked",
          cut=Cut("up", MARK, "reset")),
    Fault("server-close-before-its-final-reply", b"the server went away during DATA",
          cut=Cut("down", b"250 OK id=", "close")),
    Fault("server-stalled-mid-message", b"the server did not answer within idletimeout",
          size="marked", cut=Cut("up", MARK, "stall"), options={"idletimeout": 2}),
    Fault("client-reset-mid-data", None, size="marked", action="client-reset"),
    Fault("worker-sigkill-mid-data", None, size="marked", action="kill-worker"),
    *SPOOL_FAULTS,
]


def fault_message(fault: Fault, protocol: str) -> bytes:
    """The message the fault strikes; EICAR comes last, after what a full disk can hold."""
    subject = f"{protocol} fault {fault.id}"
    body = b"plain text\r\n.a dot line\r\n"
    if fault.size == "marked":
        body += b"".join(b"line %05d of the message\r\n" % n for n in range(2000))
        body += MARK + b"\r\n" + b"after the cut\r\n" * 2000
    elif fault.size == "big":
        body += b"a line of the big message, 4 MB in all\r\n" * 100_000
    if fault.infected:
        body += EICAR + b"\r\n"
    return message(subject, body)


def next_message(protocol: str, fault: Fault) -> bytes:
    return message(f"{protocol} after {fault.id}", b"the next connection\r\n..dots\r\n")


# --- the fault relay --------------------------------------------------------------------------


class FaultRelay:
    """Relays TCP connections to ``port``; the first time ``cut.at`` passes in ``cut.stream``,
    that stream is cut right before it: both sides closed (as if the server vanished: p3scan
    gets a FIN, or an RST), or the stream held until :meth:`release`."""

    def __init__(self, port: int, cut: Cut | None):
        self.target = port
        self.cut = cut
        self.struck = threading.Event()
        self.released = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(near,), daemon=True).start()

    def _serve(self, near: socket.socket) -> None:
        """One connection, both directions in one thread (so an RST goes out at once)."""
        far = socket.create_connection(("127.0.0.1", self.target))
        route = {near: (far, "up"), far: (near, "down")}
        tails = {"up": b"", "down": b""}
        held: tuple[socket.socket, bytes] | None = None
        try:
            while True:
                if held and self.released.is_set():
                    held[0].sendall(held[1])
                    held = None
                watch = [src for src in route if not held or route[src][0] is not held[0]]
                readable, _, _ = select.select(watch, [], [], 0.05)
                for src in readable:
                    dst, name = route[src]
                    data = src.recv(65536)
                    if not data:
                        return
                    cut = self.cut if self.cut and self.cut.stream == name \
                        and not self.struck.is_set() else None
                    if cut is None:
                        dst.sendall(data)
                        continue
                    window = tails[name] + data
                    found = window.find(cut.at)
                    if found < 0:
                        tails[name] = window[-len(cut.at):]
                        dst.sendall(data)
                        continue
                    keep = max(0, found - len(tails[name]))
                    dst.sendall(data[:keep])
                    self.struck.set()
                    if cut.how == "stall":
                        held = (dst, data[keep:])
                        continue
                    if cut.how == "reset":
                        near.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                    else:
                        near.shutdown(socket.SHUT_RDWR)
                    return
        except OSError:
            pass
        finally:
            near.close()
            far.close()

    def wait_struck(self) -> None:
        assert self.struck.wait(TIMEOUT), f"the relay never saw {self.cut}"

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        """Stop accepting: shut down first, so that no thread stays blocked in accept() on
        a closed descriptor (its number is reused, and such a thread can then take the
        connections of the next relay's listener)."""
        self.release()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.acceptor.join(TIMEOUT)
        self.listener.close()


# --- the rig: daemon, relay, scanner and spool set up for one fault ---------------------------


SCANNER = """#!/bin/sh
case "$(cat {mode})" in
  stall) exec {sleep} 30 ;;
  segv) kill -SEGV $$ ;;
  exit7) exit 7 ;;
esac
grep -q EICAR-STANDARD-ANTIVIRUS-TEST-FILE "$1" && exit 1
exit 0
"""


class Rig:
    """Everything one fault needs; :meth:`heal` undoes the fault for the next connection."""

    def __init__(self, fault: Fault, server_port: int, protocol: str, scratch: Path,
                 make_p3scan: Callable[..., P3scan], tmpfs: Callable[[str, str], Path],
                 cleanup: contextlib.ExitStack):
        self.fault = fault
        self.scratch = scratch
        self.script: Path | None = None
        self.clamd: Clamd | None = None
        self.relay = FaultRelay(server_port, fault.cut)
        cleanup.callback(self.relay.close)
        options: dict[str, Any] = {"targetip": "127.0.0.1", "targetport": self.relay.port,
                                   "maxchilds": 2, "idletimeout": 5, "scantimeout": 2}
        if protocol == "SMTP":
            options["emailport"] = self.relay.port
        if fault.scanner == "clamd-down":
            self.clamd = Clamd(scratch / "clamd").start()
            cleanup.callback(self.clamd.stop)
            options.update(scannertype="clamd", scanner=self.clamd.tcp)
        elif fault.scanner:
            self.mode = scratch / "scanner-mode"
            self.mode.write_text(fault.scanner)
            self.script = scratch / "scanner"
            sleep = scratch / "scanner-sleep"  # recognisable among other sleeps
            sleep.symlink_to("/bin/sleep")
            self.script.write_text(SCANNER.format(mode=self.mode, sleep=sleep))
            self.script.chmod(0o755)
            options.update(scannertype="basic", scanner=self.script, viruscode=1)
        if fault.spool == "full":
            options["virusdir"] = tmpfs("spool", "2m")
        options.update(fault.options)
        self.daemon = make_p3scan(**options).start()
        self.virusdir = Path(self.daemon.options["virusdir"])
        if fault.scanner == "clamd-down":
            self.clamd.stop()
        if fault.spool == "quarantine-readonly":
            os.chmod(self.virusdir, 0o500)  # children/ exists; quarantine files cannot

    def spool_files(self) -> list[Path]:
        return list((self.virusdir / "children").rglob("p3scan.*"))

    def busy_worker(self) -> int:
        """The worker (a child of the master) whose spool holds the message by now."""
        busy: list[Path] = []

        def spooling() -> bool:
            busy[:] = [path for path in self.spool_files() if path.is_file()]
            return len(busy) == 1

        wait_until(spooling, TIMEOUT, "one worker spooling the message")
        worker = int(busy[0].relative_to(self.virusdir / "children").parts[0])
        assert worker in self.daemon.worker_pids()
        return worker

    def strike(self, sock: socket.socket, reader: Any) -> bool:
        """Do the fault's action while the message is on its way; True if the client left."""
        if self.fault.cut and self.fault.cut.how == "stall":
            self.relay.wait_struck()
        worker = self.busy_worker()
        if self.fault.action == "kill-worker":
            os.kill(worker, signal.SIGKILL)
            wait_until(lambda: worker not in self.daemon.worker_pids(), TIMEOUT,
                       "the killed worker to be gone")
        elif self.fault.action == "client-reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            reader.close()  # the reader holds the descriptor too
            sock.close()  # an RST, at once
        self.relay.release()
        return self.fault.action == "client-reset"

    def heal(self) -> None:
        if self.clamd is not None:
            self.clamd.start()
        if self.script is not None:
            self.mode.write_text("ok")
        if self.fault.spool == "quarantine-readonly":
            os.chmod(self.virusdir, 0o700)


@pytest.fixture
def rig(scratch: Path, p3scan: Callable[..., P3scan],
        tmpfs: Callable[[str, str], Path]) -> Iterator[Callable[[Fault, int, str], Rig]]:
    with contextlib.ExitStack() as cleanup:
        yield lambda fault, port, protocol: Rig(fault, port, protocol, scratch, p3scan, tmpfs,
                                                cleanup)


# --- the invariants, the same for every fault -------------------------------------------------


def assert_error_names_a_cause(reply: bytes, fault: Fault, pattern: re.Pattern[bytes]) -> None:
    """Where a reply is possible it is a temporary error naming the fault's cause; where
    none is, any error that did arrive still names one."""
    error = reply.startswith(b"-ERR") or reply[:1] == b"4"
    if fault.answer is not None:
        assert pattern.match(reply), f"expected an error reply naming a cause, got {reply!r}"
        assert fault.answer in reply, f"the error does not say {fault.answer!r}: {reply!r}"
    elif error:
        assert pattern.match(reply), f"an error reply without a cause: {reply!r}"


def scanner_processes(rig: Rig) -> list[str]:
    """Command lines of processes still running the scanner script or its ``sleep``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if {str(rig.scratch / "scanner"), str(rig.scratch / "scanner-sleep")} & set(argv[:2]):
            found.append(" ".join(argv))
    return found


def assert_worker_pool_recovers(rig: Rig) -> None:
    """No spool file and no scanner process outlive the faulted session; the master is
    alive with all its workers."""
    wait_until(lambda: rig.spool_files() == [], 10,
               f"the spool to be emptied: {rig.spool_files()}")
    if rig.script is not None:
        wait_until(lambda: scanner_processes(rig) == [], 10,
                   f"no scanner process to be left: {scanner_processes(rig)}")
    assert rig.daemon.proc is not None and rig.daemon.proc.poll() is None, rig.daemon.log()
    wait_until(lambda: len(rig.daemon.worker_pids()) == rig.daemon.options["maxchilds"], 10,
               "all workers to be up")


# --- POP3 -------------------------------------------------------------------------------------


def pop3_reply(reader: Any) -> tuple[bytes, bool]:
    """One reply, up to its final '.' line if it is a +OK one; whether that line came (a
    reset ends the reply as a close does, for a client)."""
    lines: list[bytes] = []
    with contextlib.suppress(OSError):
        lines.append(reader.readline())
        while lines[0].startswith(b"+OK") and lines[-1] not in (b".\r\n", b""):
            lines.append(reader.readline())
    return b"".join(lines), len(lines) > 1 and lines[-1] == b".\r\n"


def pop3_login(port: int, user: str) -> tuple[socket.socket, Any]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"+OK")
    for line in (f"USER {user}", f"PASS {PASSWORD}"):
        sock.sendall(line.encode() + b"\r\n")
        assert reader.readline().startswith(b"+OK"), line
    return sock, reader


def pop3_commands(port: int, user: str, *commands: bytes) -> list[bytes]:
    """The replies to ``commands`` (RETR, UIDL: with their data), then QUIT."""
    sock, reader = pop3_login(port, user)
    replies = []
    for command in commands:
        sock.sendall(command + b"\r\n")
        if command.startswith((b"RETR", b"UIDL")):
            replies.append(pop3_reply(reader)[0])
        else:
            replies.append(reader.readline())
    sock.sendall(b"QUIT\r\n")
    assert reader.readline().startswith(b"+OK")
    reader.close()
    sock.close()
    return replies


def mailbox_state(dovecot: Dovecot, user: str) -> list[bytes]:
    """STAT, UIDL, RETR 1 and RETR 2 straight from Dovecot."""
    return pop3_commands(dovecot.port, user, b"STAT", b"UIDL", b"RETR 1", b"RETR 2")


@dataclass
class Pop3Outcome:
    reply: bytes  # everything the client received after it sent RETR 1
    complete: bool  # +OK and the final '.' line: a client takes this for the message
    deleted: bool  # so the client deleted the message, as fetchmail would


def pop3_fault_session(port: int, user: str, rig: Rig) -> Pop3Outcome:
    """RETR 1 as a client does it: DELE only after a complete reply."""
    sock, reader = pop3_login(port, user)
    sock.sendall(b"RETR 1\r\n")
    if rig.fault.action and rig.strike(sock, reader):
        return Pop3Outcome(b"", False, False)
    reply, complete = pop3_reply(reader)
    deleted = False
    with contextlib.suppress(OSError):
        if complete:
            sock.sendall(b"DELE 1\r\n")
            deleted = reader.readline().startswith(b"+OK")
        sock.sendall(b"QUIT\r\n")
        reader.readline()
    reader.close()
    sock.close()
    return Pop3Outcome(reply, complete, deleted)


def assert_pop3_invariants(fault: Fault, outcome: Pop3Outcome, before: list[bytes],
                           after: list[bytes], rig: Rig) -> None:
    reply = outcome.reply
    # nothing delivered unscanned
    assert EICAR not in reply, "the infected message reached the client"
    # nothing truncated shown as complete
    if outcome.complete:
        if fault.infected:
            assert b"[Virus] found" in reply, f"an infected message delivered: {reply[:300]!r}"
        else:
            assert reply == pt.with_header(before[2], POP3_HEADER), \
                f"a reply ending with '.' that is not the whole message: {reply[-300:]!r}"
    # an error reply names a cause
    assert_error_names_a_cause(reply, fault, POP3_ERROR)
    # no message lost: what the client did not get complete is still on the server
    if outcome.deleted:
        assert after[0].startswith(b"+OK 1 ") and after[2] == before[3]
        if fault.infected:
            assert any(path.read_bytes() == oracle.content(fault_message(fault, "POP3"))
                       for path in rig.virusdir.glob("p3scan.*") if path.suffix != ".json")
    else:
        assert after == before, "the mailbox on the server changed"


def assert_pop3_next_connection_served(port: int, user: str, before: list[bytes]) -> None:
    """A new connection gets the other message byte-identical, with the X-P3Scan header."""
    stat, retr = pop3_commands(port, user, b"STAT", b"RETR 2")
    assert stat == before[0]
    assert retr == pt.with_header(before[3], POP3_HEADER)


@pytest.mark.parametrize("fault", POP3_FAULTS, ids=[fault.id for fault in POP3_FAULTS])
def test_pop3_fault(fault: Fault, dovecot: Dovecot, rig: Callable[..., Rig]) -> None:
    user = dovecot.mailbox([fault_message(fault, "POP3"), next_message("POP3", fault)])
    before = mailbox_state(dovecot, user)
    setup = rig(fault, dovecot.port, "POP3")
    outcome = pop3_fault_session(setup.daemon.port, user, setup)
    if fault.cut:
        setup.relay.wait_struck()
    assert_pop3_invariants(fault, outcome, before, mailbox_state(dovecot, user), setup)
    setup.heal()
    assert_pop3_next_connection_served(setup.daemon.port, user, before)
    assert_worker_pool_recovers(setup)


# --- SMTP -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exim_server(world_tmp: Path) -> Iterator[Exim]:
    """One Exim for every SMTP fault: each fault's messages have their own subjects."""
    server = Exim(world_tmp / "faults-exim").start()
    yield server
    server.stop()


def read_reply(reader: Any) -> bytes:
    """One SMTP reply (all its lines), or what arrived before the connection closed."""
    reply = b""
    with contextlib.suppress(OSError):
        while (line := reader.readline()) and not re.match(rb"\d{3} ", line):
            reply += line
        reply += line
    return reply


def smtp_send(port: int, mail: bytes, rig: Rig | None = None) -> bytes:
    """One transaction through p3scan; the reply to the message ("" if there was none)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    reader = sock.makefile("rb")
    greeting = reader.readline()
    assert greeting.startswith(b"220"), f"greeting {greeting!r} on port {port} from {sock}"
    for command, code in ((b"EHLO client.test", b"250"), (b"MAIL FROM:<alice@example.test>",
                          b"250"), (b"RCPT TO:<bob@example.test>", b"250"), (b"DATA", b"354")):
        sock.sendall(command + b"\r\n")
        assert read_reply(reader).startswith(code), command
    data = oracle.wire(mail)
    half = data.find(MARK) if MARK in data else len(data)
    try:
        sock.sendall(data[:half])
        if rig is not None and rig.fault.action and rig.strike(sock, reader):
            return b""
        sock.sendall(data[half:])
    except OSError:
        pass  # the proxy is gone; whatever it said is read below
    reply = read_reply(reader)
    with contextlib.suppress(OSError):
        sock.sendall(b"QUIT\r\n")
        read_reply(reader)
    reader.close()
    sock.close()
    return reply


def stored(exim: Exim, mail: bytes) -> list[bytes]:
    """What Exim delivered of ``mail`` (found by its subject)."""
    subject = re.search(rb"\r\nSubject: [^\r\n]*", mail).group().strip()
    return [item for item in exim.delivered() if subject in item.split(b"\n\n", 1)[0]]


def as_stored(mail: bytes) -> bytes:
    """How a clean message ends in Exim's Maildir: the X-P3Scan header added, LF line ends."""
    return oracle.insert_header(mail, SMTP_HEADER).replace(b"\r\n", b"\n")


def assert_smtp_invariants(fault: Fault, reply: bytes, mail: bytes, exim: Exim) -> None:
    # SMTP never answers 250 before the server accepted
    if reply.startswith(b"250"):
        wait_until(lambda: stored(exim, mail) != [], 10, "exim to store the message it took")
    # nothing truncated stored as complete, nothing infected relayed
    for item in stored(exim, mail):
        assert item.endswith(as_stored(mail)), f"exim stored a truncated message: {item!r}"
    if fault.infected:
        assert stored(exim, mail) == [], "the infected message reached the server"
    assert_error_names_a_cause(reply, fault, SMTP_ERROR)
    if fault.answer is None:
        assert not reply.startswith((b"2", b"5")), f"a final answer without a server: {reply!r}"


@pytest.mark.parametrize("fault", SMTP_FAULTS, ids=[fault.id for fault in SMTP_FAULTS])
def test_smtp_fault(fault: Fault, exim_server: Exim, rig: Callable[..., Rig]) -> None:
    setup = rig(fault, exim_server.port, "SMTP")
    mail = fault_message(fault, "SMTP")
    reply = smtp_send(setup.daemon.port, mail, setup)
    if fault.cut:
        setup.relay.wait_struck()
    setup.heal()
    following = next_message("SMTP", fault)
    assert smtp_send(setup.daemon.port, following).startswith(b"250 ")
    wait_until(lambda: stored(exim_server, following) != [], 10, "the next message in exim")
    [item] = stored(exim_server, following)
    assert item.endswith(as_stored(following))
    assert_smtp_invariants(fault, reply, mail, exim_server)
    assert_worker_pool_recovers(setup)
