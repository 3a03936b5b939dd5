"""The whole scan path as user nobody, with p3scan and Python itself unreadable to nobody.

After the change of user a lazy import finds nothing on disk: a codec that a header asks for
turns into a LookupError (and the header into raw text), a module into an ImportError in the
middle of a session.  So the master imports everything before the drop (``master.PRELOAD``).
This test proves it wherever Python lives: in a private mount namespace the interpreter's
installation is bind-mounted into a root-owned 0700 directory, p3scan and its dependencies
are copied next to it, and the daemon runs from there through the launcher that
``make install`` writes (``python -I``), so nothing outside that directory is on sys.path.
"""

from __future__ import annotations

import base64
import codecs
import importlib.metadata
import json
import os
import pwd
import quopri
import shutil
import signal
import smtplib
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p3scan.daemon import preload
from p3scan.scan.scanning import CLEAN_HEADER
from tests.support import pop3_transcript as pt
from tests.support.dovecot import PASSWORD
from tests.support.messages import EICAR
from tests.support.oracle import insert_header, wire
from tests.support.p3scan_proc import P3scan
from tests.support.procs import REPO, require_root, wait_until

pytestmark = pytest.mark.integration

DEPENDENCIES = ("python-daemon", "lockfile", "configobj")

# One word per charset; each must arrive decoded in the quarantine's sidecar.
WORDS = {
    "ISO-2022-JP": "\u30a6\u30a4\u30eb\u30b9",  # ウイルス
    "KOI8-R": "\u0432\u0438\u0440\u0443\u0441",  # вирус
    "Big5": "\u75c5\u6bd2",  # 病毒
    "windows-1252": "Caf\u00e9 \u2013 na\u00efve",  # Café, en dash, naïve
    "EUC-KR": "\ubc14\uc774\ub7ec\uc2a4",  # 바이러스
    "GB2312": "\u75c5\u6bd2\u90ae\u4ef6",  # 病毒邮件
    "Shift_JIS": "\u611f\u67d3",  # 感染
    "ISO-8859-7": "\u03b9\u03cc\u03c2",  # ιός
    "cp1251": "\u0432\u0438\u0440\u0443\u0441",  # вирус
    "ISO-8859-15": "\u20ac 100",  # € 100
    "UTF-7": "\u00fcber",  # über
}


@dataclass
class LockedInstall:
    """p3scan installed in ``root`` (0700, owned by root) with the interpreter beside it."""

    root: Path
    launcher: Path
    prefix: list[str]  # runs the launcher in a mount namespace where root/python exists


def locked_install(root: Path) -> LockedInstall:
    """Copy p3scan and its dependencies into ``root``; the interpreter is mounted later."""
    root.mkdir(mode=0o700)
    os.chmod(root, 0o700)
    lib = root / "lib"
    shutil.copytree(REPO / "p3scan", lib / "p3scan",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in DEPENDENCIES:
        dist = importlib.metadata.distribution(name)
        for file in dist.files or []:
            if "__pycache__" in file.parts or file.parts[0] == ".." or ".dist-info" in str(file):
                continue
            target = lib / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dist.locate_file(file), target)
    python_dir = root / "python"
    python_dir.mkdir()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    python = python_dir / "bin" / version
    assert (Path(sys.base_prefix) / "bin" / version).exists(), sys.base_prefix
    launcher = root / "sbin" / "p3scan"
    launcher.parent.mkdir()
    launcher.write_text((REPO / "init.d/p3scan.in").read_text()
                        .replace("@PYTHON@", str(python))
                        .replace("@LIBDIR_FROM_SBIN@", "../lib"))
    os.chmod(launcher, 0o755)
    mount = 'mount -o bind,ro "$1" "$2" && shift 2 && exec "$@"'
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh",
              sys.base_prefix, str(python_dir)]
    return LockedInstall(root, launcher, prefix)


class LockedP3scan(P3scan):
    """A daemon started from a :class:`LockedInstall`."""

    def __init__(self, workdir: Path, install: LockedInstall, **options: Any):
        self.install = install
        super().__init__(workdir, **options)

    def command(self, *extra: str) -> list[str]:
        return [str(self.install.launcher), "-f", str(self.conffile), "--foreground", *extra]

    def start(self, *extra: str, prefix: list[str] | None = None,
              wait: bool = True) -> LockedP3scan:
        super().start(*extra, prefix=(prefix or []) + self.install.prefix, wait=wait)
        return self


@pytest.fixture(scope="module")
def install(world_tmp: Path) -> LockedInstall:
    require_root("a root-owned 0700 directory, a mount namespace and user nobody")
    return locked_install(world_tmp / "locked")


@pytest.fixture
def locked_p3scan(scratch: Path, install: LockedInstall) -> Iterator[Callable[..., LockedP3scan]]:
    started: list[LockedP3scan] = []

    def make(**options: Any) -> LockedP3scan:
        daemon = LockedP3scan(scratch / "p3scan", install, **options)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


# --- messages -------------------------------------------------------------------------------

def encoded_word(text: str, charset: str) -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


def base64_lines(data: bytes) -> str:
    return base64.encodebytes(data).decode().replace("\n", "\r\n")


def build(tag: str, attachment: bytes, filename: str) -> bytes:
    """Written out by hand (the email package would re-encode the headers as UTF-8): From,
    To and Subject in charsets that each need their own codec, quoted-printable KOI8-R text,
    base64 ISO-2022-JP HTML, an attachment with an RFC 2231 windows-1252 file name."""
    subject = "\r\n ".join(encoded_word(text, charset) for charset, text in WORDS.items())
    name = urllib.parse.quote(filename, safe=".", encoding="windows-1252")
    text = quopri.encodestring("Привет, это проверка = 1.\n".encode("koi8-r"))
    head = (
        f"From: {encoded_word('Иван Петров', 'KOI8-R')} <ivan@example.test>\r\n"
        f"To: {encoded_word('王小明', 'Big5')} <wang@example.test>\r\n"
        f"Subject: {tag} {subject}\r\n"
        f"Message-ID: <{tag}@example.test>\r\n"
        "Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="=_outer"\r\n\r\n'
        '--=_outer\r\nContent-Type: multipart/alternative; boundary="=_alt"\r\n\r\n'
        "--=_alt\r\nContent-Type: text/plain; charset=koi8-r\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    html = ("--=_alt\r\nContent-Type: text/html; charset=iso-2022-jp\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
            + base64_lines("<p>テストです</p>\n".encode("iso-2022-jp")) + "--=_alt--\r\n\r\n")
    attached = (f"--=_outer\r\nContent-Type: application/octet-stream; "
                f"name*=windows-1252''{name}\r\n"
                f"Content-Disposition: attachment; filename*=windows-1252''{name}\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n"
                + base64_lines(attachment) + "--=_outer--\r\n")
    return (head.encode() + text.replace(b"\n", b"\r\n") + html.encode()
            + attached.encode())


def clean_message(tag: str) -> bytes:
    return build(tag, b"%PDF-1.4 harmless\n" * 50, "r\u00e9sum\u00e9.pdf")


def infected_message(tag: str) -> bytes:
    return build(tag, EICAR, "caf\u00e9.com")


# --- checks ---------------------------------------------------------------------------------

def quarantined(daemon: P3scan) -> dict[str, dict]:
    """Sidecars of the quarantined messages, by the tag that starts their subject."""
    spool = Path(daemon.options["virusdir"])
    metas = [json.loads(path.read_text()) for path in spool.glob("p3scan.*.json")]
    return {meta["subject"].split(" ")[0]: meta for meta in metas}


def assert_decoded(meta: dict) -> None:
    """The daemon decoded every header charset (raw text would still hold ``=?``)."""
    for charset, text in WORDS.items():
        assert text in meta["subject"], (charset, meta["subject"])
    assert "=?" not in meta["subject"] + meta["from"] + meta["to"], meta
    assert meta["from"] == "Иван Петров <ivan@example.test>"
    assert meta["to"] == "王小明 <wang@example.test>"


def assert_healthy(daemon: P3scan) -> None:
    log = daemon.log()
    for bad in ("Traceback", "Unexpected error", "failed to boot", "crashed",
                "unknown encoding", "ImportError", "ModuleNotFoundError", "not delivered"):
        assert bad not in log, f"{bad!r} in p3scan's log:\n{log}"
    assert daemon.proc is not None and daemon.proc.poll() is None


# --- the test -------------------------------------------------------------------------------

def test_the_full_scan_path_runs_as_nobody_without_reading_python(
        dovecot, sink, tls_ca, locked_p3scan, install):
    daemon = locked_p3scan(targetip="127.0.0.1", targetport=dovecot.pop3s_port,
                           sslport=dovecot.pop3s_port, sslcafile=tls_ca["ca"], demime=True,
                           enabletop=True, user="nobody", maxchilds=2).start()
    assert "Running as user: nobody" in daemon.log()
    assert_cannot_read(install.root / "lib" / "p3scan" / "worker.py")

    clean, infected = clean_message("pop3-clean"), infected_message("pop3-virus")
    user = dovecot.mailbox([clean, infected])
    replies = pt.transcript("127.0.0.1", daemon.port, pt.login_commands(user, PASSWORD) + [
        (b"RETR 1", True), (b"RETR 2", True), (b"TOP 1 5", True), (b"QUIT", False)])
    header = CLEAN_HEADER["POP3"].encode()
    assert replies[4].partition(b"\r\n")[2] == wire(insert_header(clean, header))
    assert b"[Virus] found" in replies[5] and EICAR not in replies[5]
    assert replies[6].startswith(b"+OK")
    daemon.wait_log("Session done")
    assert_decoded(quarantined(daemon)["pop3-virus"])

    old = set(daemon.worker_pids())
    daemon.write_config(targetport=sink.port, emailport=sink.port, sslport=None)
    daemon.signal(signal.SIGHUP)
    daemon.wait_log("Configuration reloaded")
    wait_until(lambda: len(daemon.worker_pids()) == 2 and not old & set(daemon.worker_pids()),
               15, "the new workers")

    smtp_clean, smtp_infected = clean_message("smtp-clean"), infected_message("smtp-virus")
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        client.sendmail("alice@example.test", ["bob@example.test"], smtp_clean)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@example.test", ["bob@example.test"], smtp_infected)
    assert refused.value.smtp_code == 554
    (_envelope, delivered), = sink.messages()
    assert CLEAN_HEADER["SMTP"].encode() in delivered
    assert delivered.replace(CLEAN_HEADER["SMTP"].encode() + b"\r\n", b"") == smtp_clean
    assert_decoded(quarantined(daemon)["smtp-virus"])
    assert_healthy(daemon)


def assert_cannot_read(path: Path) -> None:
    """The premise: user nobody cannot read the installation."""
    nobody = pwd.getpwnam("nobody")
    probe = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                            "--clear-groups",
                            "cat", str(path)], capture_output=True, text=True, timeout=10)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr, probe


CODEC_PROBE = """
import codecs, json, sys
sys.path.insert(0, sys.argv[1])
from p3scan.daemon import preload
from p3scan.daemon import privileges
names = sorted(preload.email_charsets())
def failing():
    result = []
    for name in names:
        try:
            codecs.lookup(name)
        except LookupError:
            result.append(name)
    return result
if sys.argv[2] == "preload":
    preload.preload()
privileges.drop(privileges.resolve("nobody"))
json.dump({"count": len(names), "failing": failing()}, sys.stdout)
"""


def codecs_failing_as_nobody(install: LockedInstall, mode: str) -> dict:
    python = install.root / "python" / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    result = subprocess.run([*install.prefix, str(python), "-I", "-c", CODEC_PROBE,
                             str(install.root / "lib"), mode], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_charset_the_email_package_knows_decodes_after_the_drop(install):
    unknown = []  # names that are no codec for root either (unknown-8bit, latin-3, ...)
    for name in sorted(preload.email_charsets()):
        try:
            codecs.lookup(name)
        except LookupError:
            unknown.append(name)
    unloaded = codecs_failing_as_nobody(install, "none")
    assert len(unloaded["failing"]) > len(unknown) + 100  # the premise: lazy imports fail
    preloaded = codecs_failing_as_nobody(install, "preload")
    assert preloaded == {"count": len(preload.email_charsets()), "failing": unknown}
