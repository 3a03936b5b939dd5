"""The documentation covers every option the code has."""

from __future__ import annotations

import re

import pytest

from p3scan.config import options as config
from tests.support.procs import REPO

DOCS = {name: (REPO / name).read_text() for name in
        ("conf/p3scan.conf", "man/p3scan.8", "man/p3scan.conf.5")}
FILE_OPTIONS = [opt for opt in config.OPTIONS if not opt.cli_only]


@pytest.mark.parametrize("name", DOCS)
def test_every_option_is_documented(name):
    text = DOCS[name].replace("\\-", "-")
    missing = [opt.key for opt in FILE_OPTIONS if not re.search(rf"\b{opt.key}\b", text)]
    assert missing == []


def test_the_man_page_lists_every_command_line_flag():
    text = DOCS["man/p3scan.8"].replace("\\-", "-")
    for opt in config.OPTIONS:
        assert f"--{opt.key}" in text, opt.key
        if opt.short:
            assert re.search(rf"-{opt.short}\b", text), opt.short
    assert "--check-config" in text


def test_new_options_are_marked_new_in_the_sample_config():
    text = DOCS["conf/p3scan.conf"]
    for opt in FILE_OPTIONS:
        paragraph = re.search(rf"^# {opt.key} -- (.*?)\n#? ?{opt.key}\b", text, re.M | re.S)
        assert paragraph, opt.key
        default_line = [line for line in paragraph.group(1).splitlines() if "Default:" in line]
        assert ("[new]" in default_line[-1]) == opt.new, opt.key


def test_the_sample_config_is_valid_and_uses_clamd(tmp_path):
    cfg = config.load(["-f", str(REPO / "conf/p3scan.conf")])
    assert cfg.scannertype == "clamd" and cfg.scanner == "/var/run/clamav/clamd.ctl"
    local = config.load(["-f", str(REPO / "conf/p3scan-local.conf")])
    assert (local.ip, local.port, local.useurl) == ("127.0.0.1", 8110, True)
    assert local.virusdir == str(REPO / ".run" / "spool")
