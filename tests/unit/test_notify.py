"""Notification templates and quarantine."""

from __future__ import annotations

import json
import os
import stat

from p3scan.mail import notify, quarantine
from p3scan.mail.context import MessageContext
from p3scan.mail.spool import Spool
from p3scan.scan.pipeline import INFECTED, Verdict
from p3scan.scan.scanning import Scanning
from tests.support.harness import test_config
from tests.support.procs import REPO

TEMPLATE = (REPO / "templates" / "p3scan-en.mail").read_bytes()
KEYWORDS = ["HOSTNAME", "DOMAINNAME", "PROGNAME", "VERSION", "CLIENTIP", "CLIENTPORT",
            "SERVERIP", "SERVERPORT", "PROTOCOL", "VDINFO", "USERNAME", "MAILDATE",
            "MAILFROM", "SUBJECT", "MAILTO", "VIRUSNAME", "MAILFILE", "P3SCANID"]


def test_every_keyword_of_the_spec_is_replaced():
    template = b"".join(f"{name}=%{name}%\n".encode() for name in KEYWORDS)
    values = {name: f"v-{name.lower()}" for name in KEYWORDS}
    rendered = notify.render(template, values).decode()
    assert rendered == "".join(f"{name}=v-{name.lower()}\r\n" for name in KEYWORDS)


def test_unknown_and_unset_keywords_stay_literal():
    out = notify.render(b"%FILESTATUS% %USERNAME% %VIRUSNAME%\n", {"USERNAME": None,
                                                                  "VIRUSNAME": "X"})
    assert out == b"%FILESTATUS% %USERNAME% X\r\n"


def test_values_cannot_inject_lines_or_grow_without_bound():
    out = notify.render(b"From: %MAILFROM%\n", {"MAILFROM": "a\r\nBcc: x@y" + "A" * 6000})
    assert out.count(b"\r\n") == 1 and len(out) < 300


def test_the_template_dot_line_ends_it_and_lines_get_crlf():
    assert notify.render(b"one\n.\nafter the dot\n", {}) == b"one\r\n"
    assert notify.render(b"a\r\nb\n\n\n", {}) == b"a\r\nb\r\n"


def test_notification_headers_and_subject():
    cfg = test_config()
    values = {"VIRUSNAME": "Eicar-Test-Signature", "HOSTNAME": "gw", "USERNAME": "bob",
              "MAILDATE": "Tue, 24 Nov 2026 10:00:00 +0000"}
    out = notify.notification(TEMPLATE, values, cfg, {"From": "a@x.org", "To": "b@y.org"},
                              add_subject=True)
    head = out.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[:3] == [b"From: a@x.org", b"To: b@y.org",
                        b"Date: Tue, 24 Nov 2026 10:00:00 +0000"]
    assert b"Subject: [Virus] found in a mail to you: Eicar-Test-Signature" in head
    assert b"MIME-Version: 1.0" in head  # the template's own header lines follow
    assert b"Hello bob," in out
    no_subject = notify.notification(TEMPLATE, values, cfg, {}, add_subject=False)
    assert b"\r\nSubject:" not in no_subject.split(b"\r\n\r\n")[0]


def test_a_template_with_its_own_subject_gets_no_second_one():
    out = notify.notification(b"Subject: custom %VIRUSNAME%\n\nbody\n", {"VIRUSNAME": "V"},
                              test_config(), {}, add_subject=True)
    assert out.count(b"Subject:") == 1 and out.split(b"\r\n\r\n")[0].endswith(
        b"\r\nSubject: custom V")


def test_a_missing_template_falls_back_to_the_built_in_text(tmp_path):
    assert notify.read_template(str(tmp_path / "absent")) == notify.FALLBACK_TEMPLATE


def test_maildate_has_a_correct_sign():
    os.environ["TZ"] = "America/St_Johns"  # -03:30
    import time

    time.tzset()
    try:
        assert notify.maildate(0).endswith("-0330")
    finally:
        del os.environ["TZ"]
        time.tzset()


def test_quarantine_is_private_durable_and_described(tmp_path):
    spool = Spool(str(tmp_path))
    spool.write(b"Subject: v\r\n\r\nEICAR\r\n")
    path = quarantine.store(spool, str(tmp_path), {"virus": ["V"]})
    assert open(path, "rb").read() == b"Subject: v\r\n\r\nEICAR\r\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    meta = json.loads(open(path + ".json").read())
    assert meta == {"virus": ["V"], "file": os.path.basename(path), "size": 21}
    assert stat.S_IMODE(os.stat(path + ".json").st_mode) == 0o600
    spool.remove()
    assert os.path.exists(path)  # the quarantine copy outlives the spool file


def test_justdelete_and_p3scanid(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    spool = Spool(str(workdir))
    spool.write(b"Subject: v\r\n\r\nbody\r\n")
    spool.close()
    ctx = MessageContext("POP3", ("1", 2), ("3", 4), None, "1", spool)
    keep = Scanning(test_config(virusdir=str(tmp_path)), str(workdir))
    path = keep.quarantine(ctx, Verdict(INFECTED, ("V",)))
    values = ctx.notice_values("V", path, keep.cfg.notify)
    assert values["P3SCANID"] == "/" + os.path.basename(path) and values["VIRUSNAME"] == "V"
    drop = Scanning(test_config(virusdir=str(tmp_path), justdelete=True), str(workdir))
    path = drop.quarantine(ctx, Verdict(INFECTED, ("V",)))
    assert path is None
    values = ctx.notice_values("V", path, drop.cfg.notify)
    assert values["P3SCANID"] == "Per instruction, the message has been deleted."
    spool.remove()
