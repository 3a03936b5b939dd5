"""make install / uninstall into a DESTDIR, the init scripts, and the man pages."""

from __future__ import annotations

import os
import poplib
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from p3scan.config import options as config
from tests.support.fakes import simple_pop3
from tests.support.p3scan_proc import config_text
from tests.support.procs import REPO, free_port, require_program, require_root, wait_until

pytestmark = pytest.mark.integration

EXPECTED = {
    "usr/sbin/p3scan": "file 755",
    "usr/lib/p3scan": "dir",
    "usr/share/man/man8/p3scan.8": "file 644",
    "usr/share/man/man5/p3scan.conf.5": "file 644",
    "etc/p3scan/p3scan.conf": "file 644",
    "etc/p3scan/p3scan-en.mail": "file 644",
    "etc/p3scan/p3scan.mail": "link p3scan-en.mail",
    "etc/init.d/p3scan": "file 755",
    "etc/rc.d/rc.p3scan": "file 755",
    "var/run/p3scan": "dir 700",
    "var/spool/p3scan": "dir 700",
    "var/spool/p3scan/children": "dir 700",
    "var/spool/p3scan/notify": "dir 700",
}


def make(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["make", "-C", str(REPO), *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def layout(root: Path) -> dict[str, str]:
    """Every installed file and link, plus the directories that EXPECTED names."""
    found: dict[str, str] = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("usr/lib/p3scan/"):
            continue
        mode = f"{stat.S_IMODE(path.lstat().st_mode):o}"
        if path.is_symlink():
            found[rel] = f"link {os.readlink(path)}"
        elif path.is_file():
            found[rel] = f"file {mode}"
        elif rel in EXPECTED:
            found[rel] = "dir" if rel == "usr/lib/p3scan" else f"dir {mode}"
    return found


@pytest.fixture(scope="module")
def installed(world_tmp) -> Path:
    """One installed tree, in a directory that the user mail can traverse."""
    require_root("make install (ownership of the spool)")
    root = world_tmp / "installed-root"
    make("install", f"DESTDIR={root}", "LANG=de_DE.UTF-8")  # no German template: English
    return root


def test_make_install_lays_out_exactly_the_expected_files(installed):
    assert layout(installed) == EXPECTED
    mail = pwd.getpwnam("mail")
    for rel in ("var/run/p3scan", "var/spool/p3scan/children", "var/spool/p3scan/notify"):
        assert (installed / rel).stat().st_uid == mail.pw_uid
    assert (installed / "usr/lib/p3scan/p3scan/cli.py").exists()
    assert (installed / "etc/p3scan/p3scan.conf").read_bytes() == (
        REPO / "conf/p3scan.conf").read_bytes()
    version = subprocess.run([str(installed / "usr/sbin/p3scan"), "--version"],
                             capture_output=True, text=True, timeout=30)
    assert "P3Scan 3.0.0" in version.stdout


def test_a_second_install_keeps_an_edited_config(installed):
    conf = installed / "etc/p3scan/p3scan.conf"
    conf.write_text(conf.read_text() + "\n# edited by the admin\nmaxchilds = 3\n")
    edited = conf.read_text()
    result = make("install", f"DESTDIR={installed}")
    assert "keeping the existing" in result.stdout
    assert conf.read_text() == edited
    assert layout(installed) == EXPECTED


def test_installed_sample_config_is_valid():
    result = subprocess.run([sys.executable, "-m", "p3scan", "-f", str(REPO / "conf/p3scan.conf"),
                             "--check-config"], cwd=REPO, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert "scannertype = clamd" in result.stdout


def init(script: Path, action: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(script), action], capture_output=True, text=True,
                          env=env, timeout=90)


def test_init_script_starts_reports_reloads_and_stops(installed, scratch):
    upstream = simple_pop3(greeting=b"+OK first upstream\r\n")
    other = simple_pop3(greeting=b"+OK second upstream\r\n")
    port = free_port()
    conf = installed / "etc/p3scan/test.conf"
    options = {
        "ip": "127.0.0.1", "port": port, "targetip": "127.0.0.1", "targetport": upstream.port,
        "scannertype": "eicar", "maxchilds": 2, "bytesfree": 0,
        "pidfile": installed / "var/run/p3scan/p3scan.pid",
        "virusdir": installed / "var/spool/p3scan",
        "notifydir": installed / "var/spool/p3scan/notify",
        "template": installed / "etc/p3scan/p3scan.mail",
        "syslogsocket": scratch / "no-syslog",
    }
    conf.write_text(config_text(options))
    env = {**os.environ, "P3SCAN": str(installed / "usr/sbin/p3scan"),
           "P3SCAN_CONFIG": str(conf)}
    script = installed / "etc/init.d/p3scan"
    pidfile = Path(options["pidfile"])
    try:
        started = init(script, "start", env)
        assert started.returncode == 0 and "Starting p3scan: ok" in started.stdout, started
        status = init(script, "status", env)
        assert status.returncode == 0
        assert status.stdout.strip() == f"p3scan is running (pid {pidfile.read_text().strip()})"
        assert pwd.getpwuid(Path(f"/proc/{pidfile.read_text().strip()}").stat().st_uid
                            ).pw_name == "mail"
        assert poplib.POP3("127.0.0.1", port, timeout=10).getwelcome() == b"+OK first upstream"
        conf.write_text(config_text({**options, "targetport": other.port}))
        assert init(script, "reload", env).returncode == 0
        _wait_greeting(port, b"+OK second upstream")
        rc = subprocess.run(["sh", str(installed / "etc/rc.d/rc.p3scan"), "status"],
                            env={**env, "P3SCAN_INIT": str(script)}, capture_output=True,
                            text=True, timeout=30)
        assert rc.returncode == 0 and "is running" in rc.stdout
        stopped = init(script, "stop", env)
        assert stopped.returncode == 0 and "Stopping p3scan: ok" in stopped.stdout
        assert not pidfile.exists()
        status = init(script, "status", env)
        assert status.returncode == 3 and status.stdout.strip() == "p3scan is not running"
    finally:
        init(script, "stop", env)
        upstream.close()
        other.close()


def test_init_script_stop_and_status_work_when_the_config_became_invalid(installed, scratch):
    upstream = simple_pop3(greeting=b"+OK upstream\r\n")
    conf = installed / "etc/p3scan/broken.conf"
    pidfile = installed / "var/run/p3scan/p3scan.pid"
    valid = config_text({
        "ip": "127.0.0.1", "port": free_port(), "targetip": "127.0.0.1",
        "targetport": upstream.port, "scannertype": "eicar", "maxchilds": 1, "bytesfree": 0,
        "pidfile": pidfile, "virusdir": installed / "var/spool/p3scan",
        "notifydir": installed / "var/spool/p3scan/notify",
        "template": installed / "etc/p3scan/p3scan.mail", "syslogsocket": scratch / "no-syslog",
    })
    conf.write_text(valid)
    # the fallback PID file, overridden so that the test never looks into the real /var
    env = {**os.environ, "P3SCAN": str(installed / "usr/sbin/p3scan"),
           "P3SCAN_CONFIG": str(conf), "P3SCAN_PIDFILE": str(pidfile)}
    script = installed / "etc/init.d/p3scan"
    notice = (f"p3scan: the configuration {conf} is not valid (p3scan --check-config says "
              f"why); using the default PID file {pidfile}")
    try:
        assert init(script, "start", env).returncode == 0
        pid = pidfile.read_text().strip()
        conf.write_text(valid + "maxchilds = lots\n")
        status = init(script, "status", env)
        assert (status.returncode, status.stdout, status.stderr) == (
            0, f"p3scan is running (pid {pid})\n", notice + "\n")
        for action in ("start", "restart", "reload"):
            refused = init(script, action, env)
            assert refused.returncode == 6, refused
            assert refused.stdout == "p3scan: the configuration is not valid:\n"
            assert "maxchilds = lots: expected a whole number" in refused.stderr
        assert pidfile.read_text().strip() == pid  # restart did not stop it
        stopped = init(script, "stop", env)
        assert (stopped.returncode, stopped.stdout, stopped.stderr) == (
            0, "Stopping p3scan: ok\n", notice + "\n")
        assert not pidfile.exists()
        rc = subprocess.run(["sh", str(installed / "etc/rc.d/rc.p3scan"), "status"],
                            env={**env, "P3SCAN_INIT": str(script)}, capture_output=True,
                            text=True, timeout=30)
        assert (rc.returncode, rc.stdout, rc.stderr) == (3, "p3scan is not running\n",
                                                         notice + "\n")
    finally:
        conf.write_text(valid)
        init(script, "stop", env)
        upstream.close()


def test_init_script_fallback_is_p3scans_default_pidfile():
    default = next(opt.default for opt in config.OPTIONS if opt.key == "pidfile")
    text = (REPO / "init.d/p3scan").read_text()
    assert f"P3SCAN_PIDFILE=${{P3SCAN_PIDFILE:-{default}}}" in text


def _wait_greeting(port: int, expected: bytes) -> None:
    def current() -> bool:
        try:
            return poplib.POP3("127.0.0.1", port, timeout=5).getwelcome() == expected
        except OSError:
            return False

    wait_until(current, 15, f"greeting {expected!r} after reload")


def local_config(base: Path) -> Path:
    """conf/p3scan-local.conf, moved to ``base``/conf: its ../.run is ``base``/.run."""
    text = (REPO / "conf/p3scan-local.conf").read_text()
    text = text.replace("port = 8110", f"port = {free_port()}").replace(
        "template = ../templates/", f"template = {REPO}/templates/")
    conf = base / "conf" / "p3scan-local.conf"
    conf.parent.mkdir()
    conf.write_text(text + f"syslogsocket = {base}/no-syslog\n")
    return conf


PID_PROBLEMS = {
    "not writable by nobody": ("mkdir -m 755 .run", "Permission denied"),
    "read-only": ("mkdir .run && chown nobody .run && mount --bind -o ro .run .run",
                  "Read-only file system"),
    "a file in the way": ("touch .run", "Not a directory"),
}


@pytest.mark.parametrize("problem", PID_PROBLEMS)
def test_make_run_says_why_it_cannot_write_its_pid_file(scratch, problem):
    require_root("make run changing to nobody; a read-only bind mount")
    conf = local_config(scratch)
    setup, reason = PID_PROBLEMS[problem]
    make_run = f"make -C {REPO} -o .venv/.installed run RUNCONF={conf}"  # no venv rebuild
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             f"cd {scratch} && {setup} && exec {make_run}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "PID file" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].endswith(f"]: ERR: cannot write the PID file {scratch}/.run/"
                              f"p3scan.pid: {reason}"), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("page", ["man/p3scan.8", "man/p3scan.conf.5"])
def test_man_pages_render_without_warnings(page):
    require_program("/usr/bin/man", "man-db")
    result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(REPO / page)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8",
                                 "MANPAGER": "cat", "PAGER": "cat"})
    assert result.returncode == 0
    assert result.stderr == ""
    assert "NAME" in result.stdout and "p3scan" in result.stdout


def test_make_uninstall_reverses_install(tmp_path):
    require_root("make install")
    root = tmp_path / "root"
    make("install", f"DESTDIR={root}")
    make("uninstall", f"DESTDIR={root}")
    left = [p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()]
    assert left == []
    assert not (root / "var/spool/p3scan").exists()
    assert not (root / "usr/lib/p3scan").exists()
