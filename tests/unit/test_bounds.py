"""Bounds (issue 11, item 3): scanner output and daemon replies, bytesfree while spooling,
and BDAT chunks of any size.  Each bound is tested at its limit and one past it.

The disk-full (ENOSPC) cases need a small tmpfs and live in tests/integration/test_bounds.py.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p3scan.mail import spool
from p3scan.mail.spool import SPACE_CHECK_EVERY, Intake, Spool, SpoolError, SpoolFull
from p3scan.proxy.smtp import MAX_BDAT_DIGITS, SmtpSession
from p3scan.scan import scanners
from p3scan.scan.pipeline import ERROR, Job, VirusStep
from p3scan.scan.scanners import ScanContext, Scanner, ScannerError
from p3scan.scan.scanners.base import MAX_OUTPUT, run_program
from p3scan.scan.scanners.clamd import MAX_REPLY as CLAMD_MAX_REPLY
from p3scan.scan.scanners.kaspersky import KAV5_MAX_REPLY, MAX_TEXT
from p3scan.scan.scanners.trophie import MAX_REPLY as TROPHIE_MAX_REPLY
from tests.support import oracle
from tests.support.harness import Harness
from tests.support.harness import test_config as config_with
from tests.support.messages import message
from tests.support.procs import wait_until

# --- helpers --------------------------------------------------------------------------------


def make(scannertype: str, **cfg: object) -> Scanner:
    return scanners.create(config_with(scannertype=scannertype, **cfg))


def context(workdir: Path, seconds: float = 10.0) -> ScanContext:
    return ScanContext(time.monotonic() + seconds, str(workdir))


def program(directory: Path, body: str) -> list[str]:
    path = directory / "scanner.sh"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return [str(path)]


def target(directory: Path) -> str:
    path = directory / "mail.eml"
    path.write_bytes(message())
    return str(path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Daemon:
    """A Unix-socket daemon that sends ``greeting`` (KAV 5 greets), reads the request and
    then sends ``talk`` (byte strings, each followed by ``pause`` seconds) until it ends or
    the peer leaves."""

    def __init__(self, path: str, talk: Iterator[bytes], pause: float = 0.0):
        self.path, self.talk, self.pause = path, talk, pause
        self.greeting = b"201 ready\r\n" if path.endswith("aveserver") else b""
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(self.greeting)
            conn.recv(65536)
            try:
                for piece in self.talk:
                    conn.sendall(piece)
                    if self.pause:
                        time.sleep(self.pause)
            except OSError:
                pass

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.thread.join(10)
        os.unlink(self.path)


def forever(piece: bytes) -> Iterator[bytes]:
    while True:
        yield piece


@pytest.fixture
def sockdir(tmp_path_factory) -> Path:
    """Short paths: a Unix socket path must stay under 108 bytes."""
    return Path(tmp_path_factory.mktemp("s", numbered=True))


# --- (a) the scanner program's output ---------------------------------------------------------


def test_output_at_the_cap_is_kept_whole(tmp_path):
    argv = program(tmp_path, f"head -c {MAX_OUTPUT} /dev/zero | tr '\\0' x")
    status, output = run_program(argv, context(tmp_path))
    assert status == 0 and output == b"x" * MAX_OUTPUT


def test_output_one_past_the_cap_is_a_scanner_failure(tmp_path):
    argv = program(tmp_path, f"head -c {MAX_OUTPUT + 1} /dev/zero; exit 0")
    with pytest.raises(ScannerError, match=f"more than {MAX_OUTPUT} bytes of output"):
        run_program(argv, context(tmp_path))


def test_endless_output_kills_the_group_fills_nothing_and_is_never_clean(tmp_path):
    """A scanner that would print gigabytes (and a child of it too) is stopped at the cap;
    the exit code that would have meant clean never counts."""
    pids = tmp_path / "pids"
    workdir = tmp_path / "work"
    workdir.mkdir()
    argv = program(tmp_path, f"yes child & echo $! > {pids}; echo $$ >> {pids}; "
                             "exec cat /dev/zero")
    scanner = make("basic", scanner=argv[0], goodcode=[0, 1])
    started = time.monotonic()
    result = scanner_verdict(scanner, workdir)
    assert result.status == ERROR and "bytes of output" in result.reason
    assert time.monotonic() - started < 5
    for pid in map(int, pids.read_text().split()):
        wait_until(lambda pid=pid: not alive(pid) or _zombie(pid), 2,
                   f"process {pid} of the scanner to die")
    assert os.listdir(workdir) == []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True


def scanner_verdict(scanner: Scanner, workdir: Path, seconds: float = 10.0):
    held = Spool(str(workdir))
    held.write(message())
    held.close()
    try:
        return VirusStep(scanner, False).run(Job(held, str(workdir), time.monotonic() + seconds))
    finally:
        held.remove()


def test_deadline_still_kills_a_silent_program(tmp_path):
    argv = program(tmp_path, "sleep 30")
    started = time.monotonic()
    with pytest.raises(ScannerError, match="scan deadline"):
        run_program(argv, context(tmp_path, seconds=0.5))
    assert time.monotonic() - started < 3


def test_deadline_kills_a_program_that_talks_slowly(tmp_path):
    argv = program(tmp_path, "while :; do echo line; sleep 0.05; done")
    with pytest.raises(ScannerError, match="scan deadline"):
        run_program(argv, context(tmp_path, seconds=0.5))


def test_a_background_child_holding_the_output_does_not_delay_the_result(tmp_path):
    pid_file = tmp_path / "pid"
    argv = program(tmp_path, f"sleep 30 & echo $! > {pid_file}; echo done; exit 3")
    started = time.monotonic()
    status, output = run_program(argv, context(tmp_path))
    assert (status, output) == (3, b"done\n")
    assert time.monotonic() - started < 2
    os.kill(int(pid_file.read_text()), 9)


# --- (a) scanner daemons' replies ---------------------------------------------------------------


def clamd_with(path: str) -> Scanner:
    return make("clamd", scanner=path)


def test_clamd_reply_at_the_limit_is_read(sockdir, tmp_path):
    name = b"N" * (CLAMD_MAX_REPLY - len(b"stream:  FOUND\0"))
    reply = b"stream: " + name + b" FOUND\0"
    assert len(reply) == CLAMD_MAX_REPLY
    with Daemon(str(sockdir / "c"), iter([reply])):
        result = clamd_with(str(sockdir / "c")).scan(target(tmp_path), context(tmp_path))
    assert result.names == (name.decode(),)


def test_clamd_reply_one_past_the_limit_is_a_failure(sockdir, tmp_path):
    reply = b"stream: " + b"N" * (CLAMD_MAX_REPLY - len(b"stream:  FOUND\0") + 1) + b" FOUND\0"
    with Daemon(str(sockdir / "c"), iter([reply])), \
            pytest.raises(ScannerError, match=f"longer than {CLAMD_MAX_REPLY} bytes"):
        clamd_with(str(sockdir / "c")).scan(target(tmp_path), context(tmp_path))


@pytest.mark.parametrize("kind", ["clamd", "trophie", "avpd_new"])
def test_a_daemon_that_talks_forever_is_a_failure(sockdir, tmp_path, kind):
    path = {"clamd": "c", "trophie": "t", "avpd_new": "aveserver"}[kind]
    piece = b"220-still working\r\n" * 1000 if kind == "avpd_new" else b"x" * 4096
    with Daemon(str(sockdir / path), forever(piece)):
        spec = str(sockdir) if kind == "avpd_new" else str(sockdir / path)
        started = time.monotonic()
        with pytest.raises(ScannerError, match="longer than"):
            make(kind, scanner=spec).scan(target(tmp_path), context(tmp_path))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("kind", ["clamd", "trophie", "avpd", "avpd_new"])
def test_a_daemon_that_drips_runs_into_the_deadline(sockdir, tmp_path, kind):
    """One byte every 0.2 s: each read would be in time, the whole reply never is."""
    path = {"clamd": "c", "trophie": "t", "avpd": "AvpCtl", "avpd_new": "aveserver"}[kind]
    first = b"4\x01" + struct.pack("<I", 1000) if kind == "avpd" else b""
    talk = itertools.chain([first], forever(b"2" if kind == "avpd_new" else b"x"))
    with Daemon(str(sockdir / path), talk, pause=0.2):
        spec = str(sockdir) if kind.startswith("avpd") else str(sockdir / path)
        started = time.monotonic()
        with pytest.raises(ScannerError, match="before the scan deadline"):
            make(kind, scanner=spec).scan(target(tmp_path), context(tmp_path, seconds=1.0))
    assert time.monotonic() - started < 3


def test_trophie_reply_at_the_limit_and_past_it(sockdir, tmp_path):
    at_limit = b"1 " + b"V" * (TROPHIE_MAX_REPLY - 3) + b"\n"
    with Daemon(str(sockdir / "t"), iter([at_limit])):
        result = make("trophie", scanner=str(sockdir / "t")).scan(target(tmp_path),
                                                                   context(tmp_path))
    assert result.names == ("V" * (TROPHIE_MAX_REPLY - 3),)
    past = b"1 " + b"V" * (TROPHIE_MAX_REPLY - 2) + b"\n"
    with Daemon(str(sockdir / "t"), iter([past])), \
            pytest.raises(ScannerError, match="longer than"):
        make("trophie", scanner=str(sockdir / "t")).scan(target(tmp_path), context(tmp_path))


def test_kav5_reply_at_the_limit_and_past_it(sockdir, tmp_path):
    line = b"220-working " + b"." * 1000 + b"\r\n"
    final = b"220 clean\r\n"
    count = (KAV5_MAX_REPLY - len(final)) // len(line)
    pad = KAV5_MAX_REPLY - len(final) - count * len(line)
    lines = [line] * count + [b"220-" + b"." * (pad - 6) + b"\r\n", final]
    assert sum(map(len, lines)) == KAV5_MAX_REPLY
    with Daemon(str(sockdir / "aveserver"), iter([b"".join(lines)])):
        scanner = make("avpd_new", scanner=str(sockdir))
        assert scanner.scan(target(tmp_path), context(tmp_path)).error is None
    lines[-2] = lines[-2][:4] + b"." + lines[-2][4:]
    with Daemon(str(sockdir / "aveserver"), iter([b"".join(lines)])), \
            pytest.raises(ScannerError, match="longer than"):
        scanner.scan(target(tmp_path), context(tmp_path))


def test_kav5_line_over_max_text_is_a_failure(sockdir, tmp_path):
    with Daemon(str(sockdir / "aveserver"), iter([b"220-" + b"." * MAX_TEXT + b"\r\n"])), \
            pytest.raises(ScannerError, match="overlong"):
        make("avpd_new", scanner=str(sockdir)).scan(target(tmp_path), context(tmp_path))


def test_avp4_text_is_cut_at_max_text(sockdir, tmp_path):
    """An announced length of 4 GB reads MAX_TEXT bytes, no more."""
    head = b"4\x01" + struct.pack("<I", 0xFFFFFFFF)
    with Daemon(str(sockdir / "AvpCtl"), iter([head, *[b"W" * 65536] * 4])):
        result = make("avpd", scanner=str(sockdir)).scan(target(tmp_path), context(tmp_path))
    assert result.infected and result.names == ("W" * MAX_TEXT,)


# --- (b) bytesfree and the spool --------------------------------------------------------------


def test_a_message_that_starts_below_bytesfree_is_a_problem_before_any_byte(tmp_path):
    held = Spool(str(tmp_path), min_free_kb=10**15)
    intake = Intake(held)
    assert intake.problem and intake.problem.startswith("spool full: less than")
    wire = oracle.wire(message(body=b"x" * 100_000))
    for start in range(0, len(wire), 4096):
        intake.feed(wire[start:start + 4096] + (b"+OK next\r\n" if start + 4096 >= len(wire)
                                                 else b""))
    assert intake.done and intake.finish() == b"+OK next\r\n"  # the protocol stays in step
    held.close()
    assert os.path.getsize(held.path) == 0
    with pytest.raises(SpoolError, match="incomplete"):
        held.with_header(b"X: y")
    held.remove()
    assert os.listdir(tmp_path) == []


def test_an_empty_message_below_bytesfree_is_a_problem_too(tmp_path):
    intake = Intake(Spool(str(tmp_path), min_free_kb=10**15))
    intake.feed(b".\r\n")
    assert intake.done and intake.problem
    intake.spool.remove()


@pytest.mark.parametrize(("free_kb", "problem"), [(5000, False), (4999, True)])
def test_bytesfree_before_the_message_at_the_limit_and_one_past(tmp_path, monkeypatch,
                                                               free_kb, problem):
    monkeypatch.setattr(spool, "free_kbytes", lambda path: free_kb)
    intake = Intake(Spool(str(tmp_path), min_free_kb=5000))
    assert bool(intake.problem) is problem
    intake.spool.remove()


class FakeDisk:
    """``capacity`` bytes minus what the spool has taken; notes where it was asked."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.spool: Spool | None = None
        self.asked_at: list[int] = []

    def __call__(self, path: str) -> int:
        size = self.spool.size if self.spool else 0
        self.asked_at.append(size)
        return (self.capacity - size) // 1024


@pytest.mark.parametrize("piece", [1000, 64 * 1024, 256 * 1024, 3 * 2**20])
def test_bytesfree_is_checked_at_least_every_megabyte(tmp_path, monkeypatch, piece):
    disk = FakeDisk(100 * 2**20)
    monkeypatch.setattr(spool, "free_kbytes", disk)
    held = Spool(str(tmp_path), min_free_kb=1)
    disk.spool = held
    for _ in range(12 * 2**20 // piece):
        held.write(b"y" * piece)
    held.remove()
    assert SPACE_CHECK_EVERY <= 2**20
    assert disk.asked_at[0] == 0  # before the first byte
    gaps = [after - before for before, after in itertools.pairwise(disk.asked_at)]
    assert gaps and max(gaps) <= max(SPACE_CHECK_EVERY, piece)
    assert held.size - disk.asked_at[-1] <= max(SPACE_CHECK_EVERY, piece)


def test_spooling_stops_within_a_check_interval_of_bytesfree(tmp_path, monkeypatch):
    """The disk has bytesfree + 3 MB: spooling stops at most 1 MB past that point."""
    bytesfree_kb = 1024
    limit = 3 * 2**20  # what may be written before bytesfree is reached
    disk = FakeDisk(bytesfree_kb * 1024 + limit)
    monkeypatch.setattr(spool, "free_kbytes", disk)
    held = Spool(str(tmp_path), min_free_kb=bytesfree_kb)
    disk.spool = held
    intake = Intake(held)
    wire = oracle.wire(message(body=b"z" * 8 * 2**20))
    for start in range(0, len(wire), 65536):
        intake.feed(wire[start:start + 65536])
    assert intake.done and intake.problem and "spool full" in intake.problem
    assert limit < held.size <= limit + SPACE_CHECK_EVERY
    held.remove()


def test_a_spool_that_failed_accepts_nothing_more_and_never_reads_out(tmp_path):
    held = Spool(str(tmp_path), min_free_kb=10**15)
    with pytest.raises(SpoolFull):
        held.write(b"x")
    with pytest.raises(SpoolError):
        held.write(b"more")
    for read in (lambda: held.chunks(), lambda: held.wire_parts(b"X: y"),
                 lambda: held.with_header(b"X: y")):
        with pytest.raises(SpoolError, match="incomplete"):
            read()
    held.close()
    held.sync()  # a quarantine copy keeps what there is
    held.remove()


def test_a_failing_write_becomes_a_problem_not_an_exception(tmp_path, monkeypatch):
    """ENOSPC from write(2) (simulated here; tests/integration/test_bounds.py fills a
    real tmpfs) turns into the spool-full problem; reading goes on to the final dot."""
    real_write = os.write

    def full(fd: int, data) -> int:
        if fd == held.file.fileno():
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    held = Spool(str(tmp_path))
    monkeypatch.setattr(spool.os, "write", full)
    intake = Intake(held)
    wire = oracle.wire(message(body=b"q" * 600_000))
    intake.feed(wire + b"NEXT")
    assert intake.done and intake.finish() == b"NEXT"
    assert intake.problem == f"spool full: No space left on device in {tmp_path}"
    held.close()
    held.remove()


def test_a_failure_in_the_last_buffered_bytes_is_noticed_at_finish(tmp_path, monkeypatch):
    real_write = os.write

    def broken(fd: int, data) -> int:
        if fd == held.file.fileno():
            raise OSError(5, "Input/output error")
        return real_write(fd, data)

    held = Spool(str(tmp_path))
    intake = Intake(held)
    intake.feed(oracle.wire(message(body=b"short")))
    monkeypatch.setattr(spool.os, "write", broken)
    intake.finish()
    assert intake.problem == f"cannot write the spool file in {tmp_path}: Input/output error"
    held.close()
    held.remove()


# --- (d) BDAT -----------------------------------------------------------------------------------


@pytest.fixture
def smtp() -> Iterator[Harness]:
    harness = Harness(SmtpSession, "SMTP")
    assert harness.start(b"220 fake smtp\r\n") == b"220 fake smtp\r\n"
    yield harness
    harness.finish()


def send_in_pieces(harness: Harness, data: bytes, sizes: list[int]) -> None:
    start = 0
    for size in sizes:
        harness.client_says(data[start:start + size])
        start += size
    harness.client_says(data[start:])


commandish = st.lists(st.sampled_from([b"QUIT\r\n", b"RSET\r\n", b"DATA\r\n", b".\r\n",
                                       b"MAIL FROM:<x@y>\r\n", b"\r\n", b"\0\xff", b"x" * 999]),
                      max_size=40).map(b"".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunk=commandish, padding=st.integers(0, 300_000),
       sizes=st.lists(st.integers(1, 70_000), max_size=6), last=st.booleans())
def test_a_bdat_chunk_is_data_whatever_it_holds(chunk, padding, sizes, last):
    """Whatever the chunk holds and however it arrives, none of it reaches the server; the
    command after it is the next thing the server hears."""
    chunk = chunk + b"p" * padding
    harness = Harness(SmtpSession, "SMTP")
    try:
        harness.start(b"220 fake smtp\r\n")
        command = b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"")
        writer = threading.Thread(target=send_in_pieces,
                                  args=(harness, command + chunk + b"NOOP\r\n", sizes))
        writer.start()
        assert harness.client_hears().startswith(b"502 5.5.1 ")
        assert harness.server_hears() == b"NOOP\r\n"
        writer.join(10)
    finally:
        harness.finish()


def stream_chunk(harness: Harness, size: int) -> None:
    """``BDAT size``, then ``size`` bytes of QUIT lines, then NOOP."""
    harness.client_says(b"BDAT %d LAST\r\n" % size)
    piece = (b"QUIT\r\n" * (2**20 // 6 + 1))[:2**20]
    for _ in range(size // len(piece)):
        harness.client_says(piece)
    harness.client_says(piece[:size % len(piece)] + b"NOOP\r\n")


def test_a_bdat_chunk_past_the_old_64_mb_limit_is_consumed(smtp):
    writer = threading.Thread(target=stream_chunk, args=(smtp, 64 * 2**20 + 1))
    writer.start()
    assert smtp.client_hears().startswith(b"502 ")
    assert smtp.server_hears() == b"NOOP\r\n"
    writer.join(30)


@pytest.mark.parametrize("arg", [b"", b" x", b" -1", b" 1e3", b" \xb2", b" +5", b" 0x10",
                                 b" " + b"9" * (MAX_BDAT_DIGITS + 1)])
def test_bdat_without_a_valid_size_closes_with_421(smtp, arg):
    smtp.client_says(b"BDAT" + arg + b" LAST\r\nQUIT\r\n")
    assert smtp.client_hears().startswith(b"421 4.4.2 p3scan: BDAT without a valid chunk size")
    smtp.thread.join(5)  # the session ended: nothing after the BDAT was read as commands
    assert not smtp.thread.is_alive()
    assert smtp.info.outcome == "error: BDAT without a valid chunk size"
    assert quiet(smtp.server)


def test_bdat_with_the_longest_size_is_consumed_until_the_client_leaves(smtp):
    smtp.client_says(b"BDAT " + b"9" * MAX_BDAT_DIGITS + b"\r\nQUIT\r\nRSET\r\n")
    smtp.client.shutdown(socket.SHUT_WR)
    smtp.thread.join(5)
    assert not smtp.thread.is_alive()
    assert smtp.info.outcome == "client closed"
    assert quiet(smtp.client) and quiet(smtp.server)  # no reply: the chunk never ended


def quiet(sock: socket.socket) -> bool:
    """Nothing arrived on ``sock`` within a moment."""
    readable, _, _ = select.select([sock], [], [], 0.2)
    return not readable


def test_bdat_zero_is_a_chunk_too(smtp):
    smtp.client_says(b"BDAT 0 LAST\r\nNOOP\r\n")
    assert smtp.client_hears().startswith(b"502 ")
    assert smtp.server_hears() == b"NOOP\r\n"


def test_scanner_programs_leave_no_output_file(tmp_path):
    """The output goes through a pipe: nothing is written in the work directory."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    argv = program(tmp_path, "echo found; exit 0")
    before = set(os.listdir("/proc/self/fd"))
    assert run_program(argv, ScanContext(time.monotonic() + 5, str(workdir))) == (0,
                                                                                 b"found\n")
    assert os.listdir(workdir) == []
    assert set(os.listdir("/proc/self/fd")) <= before  # the pipe is closed


def test_the_footer_command_is_bounded_like_a_scanner(tmp_path):
    """Its first lines name the scanner; one that prints without end fills nothing."""
    from p3scan.scan.pipeline import footer_lines
    from tests.support.harness import test_config

    talker = tmp_path / "talker"
    talker.write_text("#!/bin/sh\necho 'ClamAV 1.0'\necho 'to stderr' >&2\necho\n"
                      "echo 'daily 27000'\n")
    talker.chmod(0o755)
    assert footer_lines(test_config(footer=str(talker))) == [b"ClamAV 1.0", b"daily 27000"]
    endless = tmp_path / "endless"
    endless.write_text("#!/bin/sh\nexec yes\n")
    endless.chmod(0o755)
    started = time.monotonic()
    assert footer_lines(test_config(footer=str(endless))) == []
    assert time.monotonic() - started < 5
