"""Scanner front-ends against scripted programs and fake daemons (spec §9.5, §10, S55-62, S66).

Our implementation fails closed where p3scan 2.3.2 delivered mail unscanned: unknown
replies are errors, clamd speaks zINSTREAM, KAV 4 lengths are 4-byte little-endian, only
avpd code 0 and trophie ``0`` are clean, the bash scanner never involves a shell, and demime
gives every MIME part its own file.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest

from p3scan.config.options import ConfigError, load
from p3scan.mail import mimesplit
from p3scan.mail.spool import Spool
from p3scan.scan import scanners
from p3scan.scan.pipeline import ERROR, INFECTED, UNCHECKED, Job, Verdict, VirusStep
from p3scan.scan.scanners import ScanContext, Scanner, ScannerError, ScanResult, combine
from p3scan.scan.scanners.base import NO_NAME
from p3scan.scan.scanners.clamd import parse_address
from p3scan.scan.scanners.eicar import CHUNK, NAME
from tests.support.fake_daemons import (
    FakeAveserver,
    FakeAvpCtl,
    FakeClamd,
    FakeTrophie,
    avp_reply,
)
from tests.support.harness import test_config as config_with
from tests.support.messages import EICAR, message

KAV5_REQUEST = b"SCAN xmQPRSTUWabcdefghi "
CTIME = rb"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d"


# --- helpers --------------------------------------------------------------------------------


def make(scannertype: str, **cfg: Any) -> Scanner:
    return scanners.create(config_with(scannertype=scannertype, **cfg))


def context(workdir: Path, seconds: float = 10.0, **values: str | None) -> ScanContext:
    return ScanContext(time.monotonic() + seconds, str(workdir), dict(values))


def script(directory: Path, body: str, name: str = "scanner.sh") -> str:
    """A scanner *program* for basic/bash (p3scan itself never runs a shell)."""
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def verdict(scanner: Scanner, mail: bytes, workdir: Path, *, demime: bool = False,
            seconds: float = 10.0) -> Verdict | None:
    """What the virus step makes of ``mail`` (None: clean); errors raised become verdicts."""
    spool = Spool(str(workdir))
    spool.write(mail)
    spool.close()
    try:
        return VirusStep(scanner, demime).run(Job(spool, str(workdir),
                                                  time.monotonic() + seconds))
    finally:
        spool.remove()


def mail_file(directory: Path, data: bytes = b"", name: str = "mail.eml") -> str:
    path = directory / name
    path.write_bytes(data or message())
    return str(path)


def attachments(*parts: tuple[str, bytes]) -> bytes:
    mail = EmailMessage()
    mail["Subject"] = "parts"
    mail.set_content("see the attachments\n")
    for filename, data in parts:
        mail.add_attachment(data, maintype="application", subtype="octet-stream",
                            filename=filename)
    return mail.as_bytes(policy=SMTP)


def process_gone(pid: int, within: float = 3.0) -> bool:
    """Whether ``pid`` is gone (or a zombie waiting for a reaper that does not care)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def silent_listener(family: int, address: Any) -> socket.socket:
    """A socket that accepts connections (in the kernel backlog) but never answers."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen(4)
    return sock


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for Unix sockets (sun_path holds 108 bytes; tmp_path can be long)."""
    path = tempfile.mkdtemp(prefix="p3s-", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


# --- combine --------------------------------------------------------------------------------


def test_combine_any_virus_wins_over_errors_and_clean():
    result = combine([ScanResult.clean(), ScanResult.failed("broken"),
                      ScanResult.virus(["A"]), ScanResult.virus(["B", "C"])])
    assert result == ScanResult(infected=True, names=("A", "B", "C"))


def test_combine_errors_win_over_clean_and_are_joined():
    result = combine([ScanResult.clean(), ScanResult.failed("one"), ScanResult.failed("two")])
    assert not result.infected
    assert result.error == "one; two"


@pytest.mark.parametrize("results", [[], [ScanResult.clean()], [ScanResult.clean()] * 3])
def test_combine_clean(results):
    assert combine(results) == ScanResult.clean()


def test_virus_without_names_gets_the_placeholder():
    assert ScanResult.virus([]).names == (NO_NAME,)
    assert combine([ScanResult.virus([])]).names == (NO_NAME,)


# --- basic ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "expected"), [
    (1, ScanResult.virus([NO_NAME])),
    (5, ScanResult.virus([NO_NAME])),  # in both lists: viruscode is checked first
    (10, ScanResult.clean()),
    (0, ScanResult.clean()),
])
def test_basic_viruscode_before_goodcode(tmp_path, code, expected):
    """Scenario 61: viruscode 1,5 and goodcode 5,10; the regexp matches nothing."""
    program = script(tmp_path, f'echo "$1: looked at it"\nexit {code}\n')
    scanner = make("basic", scanner=program, viruscode=[1, 5], goodcode=[5, 10],
                   virusregexp=".*: (.*) FOUND")
    assert scanner.scan(mail_file(tmp_path), context(tmp_path)) == expected


def test_basic_other_exit_code_is_an_error(tmp_path):
    program = script(tmp_path, "exit 3\n")
    scanner = make("basic", scanner=program, viruscode=[1, 5], goodcode=[5, 10])
    result = scanner.scan(mail_file(tmp_path), context(tmp_path))
    assert result.error and "returned 3" in result.error
    assert verdict(scanner, message(), tmp_path).status == ERROR


def test_basic_program_not_found_is_an_error(tmp_path):
    scanner = make("basic", scanner=str(tmp_path / "no-such-scanner") + " --flag")
    assert "not found" in scanner.check()
    with pytest.raises(ScannerError, match="cannot run"):
        scanner.scan(mail_file(tmp_path), context(tmp_path))
    assert verdict(scanner, message(), tmp_path).status == ERROR


def test_basic_check_accepts_a_program_on_the_path():
    assert make("basic", scanner="true --whatever").check() is None


def test_basic_killed_by_a_signal_is_an_error(tmp_path):
    program = script(tmp_path, 'echo "$1: Bad FOUND"\nkill -9 $$\n')
    scanner = make("basic", scanner=program, viruscode=[1], virusregexp=".*: (.*) FOUND")
    result = scanner.scan(mail_file(tmp_path), context(tmp_path))
    assert not result.infected
    assert "signal 9" in result.error


def test_basic_options_in_scanner_and_target_last(tmp_path):
    record = tmp_path / "argv"
    program = script(tmp_path, f"printf '%s\\n' \"$@\" > {record}\n")
    target = mail_file(tmp_path)
    make("basic", scanner=f"{program} --no-summary 'two words'").scan(target, context(tmp_path))
    assert record.read_text().splitlines() == ["--no-summary", "two words", target]


def test_basic_ungreedy_regexp(tmp_path):
    """Scenario 59: ``.*: (.*) FOUND`` is lazy under PCRE_UNGREEDY, so the name is ``a: b``."""
    program = script(tmp_path, 'echo "/x/f: a: b FOUND"\nexit 1\n')
    scanner = make("basic", scanner=program, virusregexp=".*: (.*) FOUND")
    assert scanner.scan(mail_file(tmp_path), context(tmp_path)).names == ("a: b",)


def test_basic_regexp_group_suffix(tmp_path):
    """Scenario 60: ``/2`` selects the second group."""
    program = script(tmp_path, 'echo "/x/f: Bad FOUND"\nexit 1\n')
    scanner = make("basic", scanner=program, virusregexp="(.*): (.*) FOUND/2")
    assert scanner.scan(mail_file(tmp_path), context(tmp_path)).names == ("Bad",)


def test_basic_stderr_is_read_with_stdout_and_every_line_counts(tmp_path):
    program = script(tmp_path, 'echo "$1/a: Trojan.A FOUND" >&2\necho "progress 50%"\n'
                               'echo "$1/b: Worm.B FOUND"\nexit 1\n')
    scanner = make("basic", scanner=program, virusregexp=".*: (.*) FOUND")
    result = scanner.scan(mail_file(tmp_path), context(tmp_path))
    assert result.names == ("Trojan.A", "Worm.B")
    verdict_ = verdict(scanner, message(), tmp_path)
    assert verdict_.status == INFECTED
    assert verdict_.text == "Trojan.A & Worm.B"


def test_basic_deadline_kills_the_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    program = script(tmp_path, f"sleep 30 &\necho $! > {pidfile}\nsleep 5\nexit 0\n")
    scanner = make("basic", scanner=program)
    started = time.monotonic()
    with pytest.raises(ScannerError, match="deadline"):
        scanner.scan(mail_file(tmp_path), context(tmp_path, seconds=1.0))
    assert time.monotonic() - started < 3.5  # the scanner would take 5 s or forever
    assert process_gone(int(pidfile.read_text()))


def test_basic_deadline_through_the_virus_step_is_an_error_verdict(tmp_path):
    scanner = make("basic", scanner=script(tmp_path, "sleep 5\n"))
    started = time.monotonic()
    result = verdict(scanner, message(), tmp_path, seconds=1.0)
    assert result.status == ERROR
    assert "deadline" in result.reason
    assert time.monotonic() - started < 3.5  # the scanner would take 5 s or forever


# --- bash -----------------------------------------------------------------------------------


def test_bash_passes_14_arguments_verbatim_without_a_shell(tmp_path):
    record = tmp_path / "argv"
    program = script(tmp_path, f"printf '%s\\0' \"$@\" > {record}\nexit 0\n")
    evidence = [tmp_path / name for name in "XYZ"]
    subject = (f"it's $(touch {evidence[0]}) `touch {evidence[1]}`; touch {evidence[2]}"
               " # rm -rf /")
    values = {"MAILFROM": "Eve <eve@example.test>", "MAILTO": None,
              "SUBJECT": subject, "MAILDATE": "Tue, 24 Nov 2026 10:00:00 +0000",
              "SERVERIP": "198.51.100.2", "SERVERPORT": "110", "CLIENTIP": "192.0.2.2",
              "CLIENTPORT": "40000", "PROTOCOL": "POP3", "PROGNAME": "P3Scan",
              "VERSION": "3.0", "VDINFO": "a\0b \"quoted\"\ttab"}
    target = mail_file(tmp_path)
    scanner = make("bash", scanner=program)
    assert scanner.scan(target, context(tmp_path, **values)) == ScanResult.clean()
    argv = record.read_bytes().split(b"\0")[:-1]
    assert [arg.decode() for arg in argv] == [
        target, "Eve <eve@example.test>", "(null)", "(null)", subject,
        "Tue, 24 Nov 2026 10:00:00 +0000", "198.51.100.2", "110", "192.0.2.2", "40000",
        "POP3", "P3Scan", "3.0", "ab \"quoted\"\ttab"]
    assert not any(path.exists() for path in evidence)


def test_bash_uses_exit_codes_and_regexp_like_basic(tmp_path):
    program = script(tmp_path, 'echo "$1: Eicar-Test-Signature FOUND"\nexit 1\n')
    scanner = make("bash", scanner=program, virusregexp=".*: (.*) FOUND")
    result = scanner.scan(mail_file(tmp_path), context(tmp_path))
    assert result == ScanResult.virus(["Eicar-Test-Signature"])
    assert scanner.dirscan


# --- clamd ----------------------------------------------------------------------------------


ClamdFactory = Callable[..., tuple[FakeClamd, Scanner]]


@pytest.fixture(params=["tcp", "unix"])
def clamd(request: pytest.FixtureRequest, sockdir: Path) -> Iterator[ClamdFactory]:
    """``clamd(reply, ...)`` starts a fake clamd and returns it with a scanner using it."""
    started: list[FakeClamd] = []

    def start(*args: Any, **kwargs: Any) -> tuple[FakeClamd, Scanner]:
        if request.param == "tcp":
            fake = FakeClamd(("127.0.0.1", 0), *args, **kwargs)
            spec = f"127.0.0.1:{fake.address[1]}"
        else:
            fake = FakeClamd(str(sockdir / f"clamd{len(started)}.ctl"), *args, **kwargs)
            spec = fake.address if started else "unix:" + fake.address
        started.append(fake)
        return fake, make("clamd", scanner=spec)

    yield start
    for fake in started:
        fake.close()


def test_clamd_ok_is_clean_and_gets_the_exact_bytes(clamd, tmp_path):
    fake, scanner = clamd(b"stream: OK\0")
    data = (b"line\r\nbare lf\n.\r\n\0nul" + bytes(range(256))) * 1000  # > 1 chunk
    assert scanner.scan(mail_file(tmp_path, data), context(tmp_path)) == ScanResult.clean()
    assert fake.requests == [b"zINSTREAM\0"]
    assert fake.streams == [data]
    assert len(fake.chunks[0]) > 1
    assert max(fake.chunks[0]) <= 64 * 1024


def test_clamd_found_is_a_virus(clamd, tmp_path):
    _, scanner = clamd(b"stream: Eicar-Test-Signature FOUND\0")
    assert scanner.scan(mail_file(tmp_path), context(tmp_path)) == ScanResult.virus(
        ["Eicar-Test-Signature"])


def test_clamd_short_names_are_viruses_too(clamd, tmp_path):
    """The original took names of three characters or less for clean (S55)."""
    _, scanner = clamd(b"stream: Abc FOUND\0")
    assert scanner.scan(mail_file(tmp_path), context(tmp_path)).names == ("Abc",)


def test_clamd_empty_file(clamd, tmp_path):
    fake, scanner = clamd(b"stream: OK\0")
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert scanner.scan(str(path), context(tmp_path)) == ScanResult.clean()
    assert fake.streams == [b""]


@pytest.mark.parametrize(("reply", "at_once"), [
    (b"UNKNOWN COMMAND\n", True),
    (b"UNKNOWN COMMAND\n", False),
    (b"INSTREAM size limit exceeded. ERROR\0", True),
    (b"stream: Can't allocate memory ERROR\0", False),
    (b"stream: OK FOUND ERROR\0", False),
    (b"PONG\0", False),
    (b"", False),  # closes after reading the stream, without a reply
    (None, False),  # closes right after the command, without reading the stream
])
def test_clamd_anything_else_is_an_error(clamd, tmp_path, reply, at_once):
    _, scanner = clamd(reply, at_once=at_once)
    mail = message(body=b"x" * 300_000)
    result = scanner.scan(mail_file(tmp_path, mail), context(tmp_path))
    assert result.error and not result.infected
    assert verdict(scanner, mail, tmp_path).status == ERROR


def test_clamd_connection_refused_is_an_error(tmp_path, sockdir):
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    for spec in (f"127.0.0.1:{port}", str(sockdir / "missing.ctl")):
        scanner = make("clamd", scanner=spec)
        with pytest.raises(ScannerError, match="cannot connect"):
            scanner.scan(mail_file(tmp_path), context(tmp_path))
        assert verdict(scanner, message(), tmp_path).status == ERROR
        assert "does not answer" in scanner.check()
        assert scanner.version() is None


def test_clamd_silent_daemon_runs_into_the_deadline(tmp_path):
    with silent_listener(socket.AF_INET, ("127.0.0.1", 0)) as listener:
        scanner = make("clamd", scanner=f"127.0.0.1:{listener.getsockname()[1]}")
        started = time.monotonic()
        result = verdict(scanner, message(), tmp_path, seconds=1.0)
    assert result.status == ERROR
    assert time.monotonic() - started < 3.5  # the scanner would take 5 s or forever


def test_clamd_check_and_version(clamd):
    fake, scanner = clamd()
    assert scanner.check() is None
    assert scanner.version() == "ClamAV 1.0.5/27400/Fake"
    assert fake.requests == [b"zPING\0", b"zVERSION\0"]


def test_clamd_check_warns_when_ping_fails(clamd):
    _, scanner = clamd(ping=b"UNKNOWN COMMAND\n")
    assert scanner.check() == "clamd answered PING with 'UNKNOWN COMMAND'"


@pytest.mark.parametrize(("spec", "expected"), [
    ("127.0.0.1:3310", (socket.AF_INET, ("127.0.0.1", 3310))),
    ("clamav.example.test:3310", (socket.AF_INET, ("clamav.example.test", 3310))),
    ("[::1]:3310", (socket.AF_INET6, ("::1", 3310))),
    ("/run/clamav/clamd.ctl", (socket.AF_UNIX, "/run/clamav/clamd.ctl")),
    ("unix:/run/clamav/clamd.ctl", (socket.AF_UNIX, "/run/clamav/clamd.ctl")),
])
def test_clamd_parse_address(spec, expected):
    assert parse_address(spec) == expected


@pytest.mark.parametrize("spec", ["localhost", "127.0.0.1", "127.0.0.1:", "host:port",
                                  "127.0.0.1:33 10", "[::1]", "unix:relative.ctl", ""])
def test_clamd_parse_address_rejects(spec):
    with pytest.raises(ScannerError):
        parse_address(spec)


def test_clamd_port_out_of_range_is_rejected(tmp_path):
    with pytest.raises(ScannerError):
        parse_address("127.0.0.1:70000")


def test_clamd_port_out_of_range_is_a_config_error(tmp_path):
    conf = tmp_path / "p3scan.conf"
    conf.write_text("scannertype = clamd\nscanner = 127.0.0.1:70000\n")
    with pytest.raises(ConfigError) as caught:
        load(["-f", str(conf)])
    assert caught.value.lines == [f"{conf}:2: scanner = 127.0.0.1:70000: expected clamd's "
                                  "host:port ([v6addr]:port) or the path of its socket"]


# --- avpd (KAV 4) ---------------------------------------------------------------------------


def test_avpd_request_and_infected_reply(sockdir, tmp_path):
    """Scenario 57: code 4, flag 1, 4-byte LE length, ``<path> infected: <name>``."""
    with FakeAvpCtl(str(sockdir), lambda path: avp_reply(
            4, path + b" infected: EICAR-Test-File")) as fake:
        target = mail_file(tmp_path)
        result = make("avpd", scanner=str(sockdir)).scan(target, context(tmp_path))
    assert result == ScanResult.virus(["EICAR-Test-File"])
    assert re.fullmatch(rb"<0>" + CTIME + b":" + re.escape(target.encode()) + b"\0",
                        fake.requests[0])


def test_avpd_info_and_text_flags(sockdir, tmp_path):
    reply = avp_reply(4, b"infected: Worm.X", info=0x01020304)
    assert reply[:2] == b"4\x03" and reply[2:6] == b"\x04\x03\x02\x01"
    with FakeAvpCtl(str(sockdir), reply):
        result = make("avpd", scanner=str(sockdir)).scan(mail_file(tmp_path),
                                                           context(tmp_path))
    assert result.names == ("Worm.X",)


@pytest.mark.parametrize("code", [3, 4, 5, 6])
def test_avpd_infected_codes(sockdir, tmp_path, code):
    with FakeAvpCtl(str(sockdir), avp_reply(code, b"Virus.Name")):
        scanner = make("avpd", scanner=str(sockdir))
        assert scanner.scan(mail_file(tmp_path), context(tmp_path)).names == ("Virus.Name",)


def test_avpd_infected_without_text(sockdir, tmp_path):
    with FakeAvpCtl(str(sockdir), avp_reply(3)):
        result = make("avpd", scanner=str(sockdir)).scan(mail_file(tmp_path),
                                                           context(tmp_path))
    assert result == ScanResult.virus([NO_NAME])


@pytest.mark.parametrize("reply", [avp_reply(0), avp_reply(0, b"clean", info=7)])
def test_avpd_code_0_is_clean(sockdir, tmp_path, reply):
    with FakeAvpCtl(str(sockdir), reply):
        result = make("avpd", scanner=str(sockdir)).scan(mail_file(tmp_path),
                                                           context(tmp_path))
    assert result == ScanResult.clean()


@pytest.mark.parametrize("code", [1, 2, 7, 8, "?", 9, "\0"])
def test_avpd_other_codes_are_errors(sockdir, tmp_path, code):
    with FakeAvpCtl(str(sockdir), avp_reply(code, b"something")):
        result = make("avpd", scanner=str(sockdir)).scan(mail_file(tmp_path),
                                                           context(tmp_path))
    assert result.error and not result.infected


@pytest.mark.parametrize("reply", [b"", b"4", b"4\x01\x10\x00", b"4\x01\x10\x00\x00\x00abc",
                                   b"4\x02\x00"])
def test_avpd_truncated_reply_is_an_error(sockdir, tmp_path, reply):
    with FakeAvpCtl(str(sockdir), reply):
        scanner = make("avpd", scanner=str(sockdir))
        with pytest.raises(ScannerError, match="closed the connection"):
            scanner.scan(mail_file(tmp_path), context(tmp_path))
        assert verdict(scanner, message(), tmp_path).status == ERROR


def test_avpd_missing_socket(sockdir, tmp_path):
    scanner = make("avpd", scanner=str(sockdir))
    assert scanner.check() == f"{sockdir}/AvpCtl does not exist"
    assert verdict(scanner, message(), tmp_path).status == ERROR
    with FakeAvpCtl(str(sockdir), avp_reply(0)):
        assert scanner.check() is None


def test_avpd_silent_daemon_runs_into_the_deadline(sockdir, tmp_path):
    with silent_listener(socket.AF_UNIX, str(sockdir / "AvpCtl")):
        started = time.monotonic()
        result = verdict(make("avpd", scanner=str(sockdir)), message(), tmp_path, seconds=1.0)
    assert result.status == ERROR
    assert time.monotonic() - started < 3.5  # the scanner would take 5 s or forever


# --- avpd_new (KAV 4 or KAV 5) --------------------------------------------------------------


def test_avpd_new_prefers_avpctl(sockdir, tmp_path):
    with FakeAvpCtl(str(sockdir), avp_reply(4, b"infected: Kav4.Virus")) as kav4, \
            FakeAveserver(str(sockdir), b"220 clean\r\n") as kav5:
        scanner = make("avpd_new", scanner=str(sockdir))
        assert scanner.check() is None
        result = scanner.scan(mail_file(tmp_path), context(tmp_path))
    assert result.names == ("Kav4.Virus",)
    assert len(kav4.requests) == 1 and kav5.requests == []


def test_avpd_new_kav5_request_and_virus(sockdir, tmp_path):
    """Scenario 58: greeting discarded, ``SCAN xmQPRSTUWabcdefghi <path>\\r\\n\\0``."""
    with FakeAveserver(str(sockdir), b"322 EICAR-Test-File\r\n220 done\r\n") as fake:
        scanner = make("avpd_new", scanner=str(sockdir))
        assert scanner.check() is None
        target = mail_file(tmp_path)
        assert scanner.scan(target, context(tmp_path)) == ScanResult.virus(["EICAR-Test-File"])
    assert fake.requests == [KAV5_REQUEST + target.encode() + b"\r\n\0"]


@pytest.mark.parametrize(("reply", "expected"), [
    (b"220 clean\r\n", ScanResult.clean()),
    (b"220-working\r\n220 clean\r\n", ScanResult.clean()),
    (b"220-working\r\n322 Virus.In.Part\r\n", ScanResult.virus(["Virus.In.Part"])),
])
def test_avpd_new_kav5_replies(sockdir, tmp_path, reply, expected):
    with FakeAveserver(str(sockdir), reply):
        scanner = make("avpd_new", scanner=str(sockdir))
        assert scanner.scan(mail_file(tmp_path), context(tmp_path)) == expected


@pytest.mark.parametrize("reply", [b"501 bad command\r\n", b"550 cannot open file\r\n",
                                   b"401 busy\r\n", b"", b"220 clean\n", b"220-only\r\n"])
def test_avpd_new_kav5_failures(sockdir, tmp_path, reply):
    with FakeAveserver(str(sockdir), reply):
        result = verdict(make("avpd_new", scanner=str(sockdir)), message(), tmp_path)
    assert result.status == ERROR


def test_avpd_new_check_warns_without_sockets(sockdir, tmp_path):
    scanner = make("avpd_new", scanner=str(sockdir))
    assert "no KAV daemon socket" in scanner.check()
    assert verdict(scanner, message(), tmp_path).status == ERROR


# --- trophie --------------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "expected"), [
    (b"1 Some.Virus\n", ScanResult.virus(["Some.Virus"])),
    (b"1 Some.Virus", ScanResult.virus(["Some.Virus"])),
    (b"0\n", ScanResult.clean()),
    (b"0\nlater lines are ignored\n", ScanResult.clean()),
])
def test_trophie_replies(sockdir, tmp_path, reply, expected):
    """Scenario 56; the request is the path and LF."""
    with FakeTrophie(str(sockdir / "trophie"), reply) as fake:
        target = mail_file(tmp_path)
        assert make("trophie", scanner=fake.address).scan(target, context(tmp_path)) == expected
    assert fake.requests == [target.encode() + b"\n"]


@pytest.mark.parametrize("reply", [b"-1\n", b"-1 no such file\n", b"\n", b"", b"2 what\n",
                                   b"OK\n", b"00\n", b"0 but not quite\n"])
def test_trophie_anything_else_is_an_error(sockdir, tmp_path, reply):
    with FakeTrophie(str(sockdir / "trophie"), reply) as fake:
        scanner = make("trophie", scanner=fake.address)
        result = scanner.scan(mail_file(tmp_path), context(tmp_path))
    assert result.error and not result.infected


def test_trophie_missing_or_silent_socket(sockdir, tmp_path):
    path = str(sockdir / "trophie")
    scanner = make("trophie", scanner=path)
    assert scanner.check() == f"{path} does not exist"
    with pytest.raises(ScannerError):
        scanner.scan(mail_file(tmp_path), context(tmp_path))
    with silent_listener(socket.AF_UNIX, path):
        assert scanner.check() is None
        started = time.monotonic()
        assert verdict(scanner, message(), tmp_path, seconds=1.0).status == ERROR
        assert time.monotonic() - started < 3.5  # the scanner would take 5 s or forever


# --- eicar ----------------------------------------------------------------------------------


def eicar_verdict(tmp_path: Path, mail: bytes) -> ScanResult:
    return make("eicar").scan(mail_file(tmp_path, mail), context(tmp_path))


def nested(inner: EmailMessage) -> bytes:
    outer = EmailMessage()
    outer["Subject"] = "fwd"
    outer.set_content("forwarded\n")
    outer.add_attachment(inner)
    return outer.as_bytes(policy=SMTP)


def test_eicar_raw(tmp_path):
    assert eicar_verdict(tmp_path, message(body=EICAR + b"\r\n")) == ScanResult.virus([NAME])


def test_eicar_across_a_read_chunk_boundary(tmp_path):
    data = b"x" * (CHUNK - 20) + EICAR + b"y" * 100
    assert eicar_verdict(tmp_path, data).infected


def test_eicar_in_a_base64_attachment(tmp_path):
    mail = attachments(("eicar.com", EICAR))
    assert EICAR not in mail
    assert eicar_verdict(tmp_path, mail) == ScanResult.virus([NAME])


def test_eicar_in_a_quoted_printable_part(tmp_path):
    encoded = "".join(f"={byte:02X}" for byte in EICAR)
    lines = "=\r\n".join(encoded[i:i + 72] for i in range(0, len(encoded), 72))
    mail = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            b"--b1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: Quoted-Printable\r\n\r\n"
            + lines.encode() + b"\r\n--b1--\r\n")
    assert EICAR not in mail
    assert eicar_verdict(tmp_path, mail).infected


def test_eicar_in_a_nested_message(tmp_path):
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("text")
    inner.add_attachment(EICAR, maintype="application", subtype="x-msdownload",
                         filename="../../eicar.com")
    deeper = EmailMessage()
    deeper["Subject"] = "deeper"
    deeper.set_content("more")
    deeper.add_attachment(inner)
    mail = nested(deeper)
    assert EICAR not in mail
    assert eicar_verdict(tmp_path, mail).infected


def test_eicar_clean_mail(tmp_path):
    mail = attachments(("a.bin", os.urandom(5000)), ("b.txt", b"EICAR-STANDARD but no more"))
    assert eicar_verdict(tmp_path, mail) == ScanResult.clean()
    assert eicar_verdict(tmp_path, message()) == ScanResult.clean()
    assert os.listdir(tmp_path) == ["mail.eml"]  # its part directory is gone


def test_eicar_rfc2231_boundary(tmp_path):
    payload = base64.encodebytes(EICAR)
    mail = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary*=us-ascii''b1"
            b"\r\n\r\n--b1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + payload + b"--b1--\r\n")
    assert eicar_verdict(tmp_path, mail).infected


# --- the virus step with demime -------------------------------------------------------------


GREP_SCANNER = ("ls \"$1\" >> {record}\n"
                "if grep -rqF 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE' \"$1\"; then\n"
                "  echo \"$1: Eicar-Test-Signature FOUND\"; exit 1\nfi\nexit 0\n")


def test_demime_dirscan_scanner_gets_the_directory_once(tmp_path):
    record = tmp_path / "seen"
    calls = tmp_path / "calls"
    program = script(tmp_path, f'echo "$1" >> {calls}\n' + GREP_SCANNER.format(record=record))
    scanner = make("basic", scanner=program, virusregexp=".*: (.*) FOUND")
    mail = attachments(("a.bin", b"one"), ("b.bin", b"two"))
    assert verdict(scanner, mail, tmp_path, demime=True) is None
    [directory] = calls.read_text().splitlines()
    assert directory.endswith(".eml.dir")
    # the parts, and the message itself (for a scanner that knows MIME better)
    assert record.read_text().split() == ["000-textfile", "001-a.bin", "002-b.bin", "message"]
    assert not os.path.exists(directory)
    assert sorted(os.listdir(tmp_path)) == ["calls", "scanner.sh", "seen"]


def test_demime_other_scanners_get_every_part(sockdir, tmp_path):
    contents: list[bytes] = []

    def reply(path: bytes) -> bytes:
        contents.append(Path(os.fsdecode(path)).read_bytes())
        return b"0\n"

    mail = attachments(("a.bin", b"one"), ("../../b.bin", b"two"))
    with FakeTrophie(str(sockdir / "trophie"), reply) as fake:
        assert verdict(make("trophie", scanner=fake.address), mail, tmp_path,
                       demime=True) is None
    *paths, message = [os.fsdecode(request.rstrip(b"\n")) for request in fake.requests]
    assert [os.path.basename(path) for path in paths] == ["000-textfile", "001-a.bin",
                                                          "002-b.bin"]
    assert len({os.path.dirname(path) for path in paths}) == 1
    assert paths[0].startswith(str(tmp_path)) and ".eml.dir/" in paths[0]
    assert contents[:3] == [b"see the attachments\r\n\r\n", b"one", b"two"]
    assert message + ".dir" == os.path.dirname(paths[0])  # and the message as it is
    assert contents[3] == mail
    assert not os.path.exists(os.path.dirname(paths[0]))


def test_demime_without_parts_scans_the_message_itself(sockdir, tmp_path):
    with FakeTrophie(str(sockdir / "trophie"), b"0\n") as fake:
        assert verdict(make("trophie", scanner=fake.address), b"Subject: empty\r\n\r\n",
                       tmp_path, demime=True) is None
    [request] = fake.requests
    assert request.endswith(b".eml\n")


def test_demime_part_results_are_combined(sockdir, tmp_path):
    def reply(path: bytes) -> bytes:
        data = Path(os.fsdecode(path)).read_bytes()
        return b"1 Bad.Part\n" if data == b"bad" else b"-1\n" if data == b"odd" else b"0\n"

    with FakeTrophie(str(sockdir / "trophie"), reply):
        scanner = make("trophie", scanner=str(sockdir / "trophie"))
        infected = verdict(scanner, attachments(("x", b"odd"), ("y", b"bad")), tmp_path,
                           demime=True)
        failed = verdict(scanner, attachments(("x", b"odd"), ("y", b"ok")), tmp_path,
                         demime=True)
    assert (infected.status, infected.names) == (INFECTED, ("Bad.Part",))
    assert failed.status == ERROR


@pytest.mark.parametrize("kind", ["eicar", "trophie", "basic"])
def test_demime_duplicate_names_are_both_scanned(sockdir, tmp_path, kind):
    """Scenario 66: the harmless second ``a.bin`` must not hide the infected first one."""
    mail = attachments(("a.bin", EICAR), ("a.bin", b"harmless"))
    fake = None
    if kind == "eicar":
        scanner = make("eicar")
    elif kind == "trophie":
        fake = FakeTrophie(str(sockdir / "trophie"), lambda path: b"1 Eicar\n" if EICAR in Path(
            os.fsdecode(path)).read_bytes() else b"0\n")
        scanner = make("trophie", scanner=fake.address)
    else:
        program = script(tmp_path, GREP_SCANNER.format(record=tmp_path / "seen"))
        scanner = make("basic", scanner=program, virusregexp=".*: (.*) FOUND")
    try:
        result = verdict(scanner, mail, tmp_path, demime=True)
    finally:
        if fake:
            fake.close()
    assert result.status == INFECTED
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".dir")]


def test_demime_split_beyond_the_limits_is_an_unchecked_verdict(tmp_path, monkeypatch):
    monkeypatch.setattr(mimesplit, "MAX_PARTS", 2)
    mail = attachments(("a", b"1"), ("b", b"2"))
    result = verdict(make("eicar"), mail, tmp_path, demime=True)
    assert result.status == UNCHECKED
    assert "more than 2 MIME parts" in result.reason
    assert os.listdir(tmp_path) == []


def test_demime_directory_is_removed_after_a_scanner_error(tmp_path):
    calls = tmp_path / "calls"
    program = script(tmp_path, f'echo "$1" >> {calls}\nexit 7\n')
    result = verdict(make("basic", scanner=program), attachments(("a", b"1")), tmp_path,
                     demime=True)
    assert result.status == ERROR
    assert not os.path.exists(calls.read_text().strip())


@pytest.mark.parametrize("kind", ["trophie", "kav5"])
def test_virus_reply_without_a_name_gets_the_placeholder(sockdir, tmp_path, kind):
    if kind == "trophie":
        fake: Any = FakeTrophie(str(sockdir / "trophie"), b"1\n")
        scanner = make("trophie", scanner=fake.address)
    else:
        fake = FakeAveserver(str(sockdir), b"322 \r\n")
        scanner = make("avpd_new", scanner=str(sockdir))
    with fake:
        assert scanner.scan(mail_file(tmp_path), context(tmp_path)).names == (NO_NAME,)


def test_demime_virus_in_one_part_wins_over_a_failure_in_a_later_part(sockdir, tmp_path):
    def reply(path: bytes) -> bytes:
        data = Path(os.fsdecode(path)).read_bytes()
        if data == b"bad":
            return avp_reply(4, b"infected: Bad.Part")
        return b"" if data == b"odd" else avp_reply(0)  # b"": the daemon hangs up

    with FakeAvpCtl(str(sockdir), reply):
        result = verdict(make("avpd", scanner=str(sockdir)),
                         attachments(("x", b"bad"), ("y", b"odd")), tmp_path, demime=True)
    assert (result.status, result.names) == (INFECTED, ("Bad.Part",))


def test_basic_virus_names_are_bounded(tmp_path):
    long_name = "N" * 600
    program = script(tmp_path, f'for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "f$i: {long_name}'
                               ' FOUND"; done\nexit 1\n')
    scanner = make("basic", scanner=program, virusregexp=".*: (.*) FOUND")
    names = scanner.scan(mail_file(tmp_path), context(tmp_path)).names
    assert len(" & ".join(names)) <= 1000 + len(long_name)
