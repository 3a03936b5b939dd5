"""Configuration: every option from the file and the command line, precedence, errors,
and the p3scan 2.3.2 syntax quirks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from p3scan import cli
from p3scan.config import conffile
from p3scan.config import options as config
from tests.support.procs import REPO

FIXTURE = Path(__file__).parent / "fixtures" / "p3scan-2.3.2-style.conf"

# A valid raw value for each kind of check, and what it reads as.
SAMPLES = {
    "flag": (None, True),
    "port": ("2525", 2525),
    "ipaddr": ("10.1.2.3", "10.1.2.3"),
    "codes": ("2, 3 4", [2, 3, 4]),
    "ports": ("pop3, 1110 pop3s", [110, 1110, 995]),
    "text": ('"quoted", with # and ,', '"quoted", with # and ,'),
    "path": ("/srv/p3scan/thing", "/srv/p3scan/thing"),
    "command": ("/bin/echo 'a b' c", "/bin/echo 'a b' c"),
    "word": ("nobody", "nobody"),
    "scannertype": ("ClamD", "clamd"),
    "facility": ("local3", "local3"),
    "regexp": ("(.*) FOUND/1", "(.*) FOUND/1"),
}


def sample(opt: config.Option) -> tuple[str | None, object]:
    name = opt.check.partition("(")[0]
    if name == "count":
        low = int(opt.check.partition("(")[2].rstrip(")").split(",")[0])
        return str(low + 1), low + 1
    if name == "choice":
        words = [w.strip() for w in opt.check.partition("(")[2].rstrip(")").split(",")]
        other = next(w for w in words if w != opt.default)
        return other, other
    return SAMPLES[name]


FILE_OPTIONS = [opt for opt in config.OPTIONS if not opt.cli_only]
BASE = "scannertype = eicar\n"


def write(tmp_path: Path, text: str, name: str = "p3scan.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_file(path: Path, *extra: str) -> config.Config:
    return config.load(["-f", str(path), *extra])


@pytest.mark.parametrize("opt", FILE_OPTIONS, ids=lambda o: o.key)
def test_every_option_from_the_file(tmp_path, opt):
    raw, expected = sample(opt)
    line = opt.key if raw is None else f"{opt.key} = {raw}"
    cfg = load_file(write(tmp_path, BASE + line + "\n"))
    assert cfg.get(opt.key) == expected
    assert cfg.sources[opt.key] == f"{tmp_path / 'p3scan.conf'}:2"


@pytest.mark.parametrize("opt", FILE_OPTIONS, ids=lambda o: o.key)
def test_every_option_from_the_command_line(tmp_path, opt):
    raw, expected = sample(opt)
    empty = write(tmp_path, BASE)
    names = [f"--{opt.key}"] + ([f"-{opt.short}"] if opt.short else [])
    for name in names:
        args = [name] if raw is None else [name, raw]
        cfg = load_file(empty, *args)
        assert cfg.get(opt.key) == expected, name
        assert cfg.sources[opt.key] == "command line"


def test_defaults_come_from_the_configobj_spec():
    spec = config.configspec()
    assert spec["port"] == 'port(default="8110")'
    defaults = config.defaults()
    for opt in config.OPTIONS:
        assert defaults[opt.key] == opt.default, opt.key


def test_the_command_line_overrides_the_file(tmp_path):
    path = write(tmp_path, BASE + "port = 1111\nmaxchilds = 4\njustdelete = no\n")
    cfg = load_file(path, "-p", "2222", "--justdelete")
    assert cfg.port == 2222 and cfg.sources["port"] == "command line"
    assert cfg.maxchilds == 4 and cfg.sources["maxchilds"].endswith(":3")
    assert cfg.justdelete is True
    assert cfg.timeout == 30 and "timeout" not in cfg.sources


def test_the_last_assignment_in_the_file_wins(tmp_path):
    cfg = load_file(write(tmp_path, BASE + "port = 1\nport = 2\nviruscode = 1,2\nviruscode = 3\n"))
    assert cfg.port == 2 and cfg.viruscode == [3]


def test_reads_a_2_3_2_style_file_unchanged():
    cfg = load_file(FIXTURE)
    assert cfg.ip == "127.0.0.1" and cfg.port == 8110
    assert cfg.maxchilds == 7  # "maxch": unambiguous prefix, as getopt_long accepted
    assert cfg.emailport == 2525  # "emailp"
    assert cfg.sslport == 995  # separated by a tab
    assert cfg.user == "mail"
    assert cfg.scannertype == "basic"
    assert cfg.scanner == "/usr/bin/clamdscan --no-summary"
    assert cfg.viruscode == [1, 5, 10] and cfg.goodcode == [3]
    assert cfg.virusregexp == ".*: (.*) FOUND, see (.*)/2"
    assert cfg.demime and cfg.justdelete and cfg.broken and cfg.quiet
    assert not cfg.debug and not cfg.useurl
    assert cfg.timeout == 45 and cfg.bytesfree == 2048 and cfg.checksize == 1024
    assert cfg.subject == '"[Virus]" found, in a mail to you:'  # quotes kept, as the original
    assert cfg.smtprset == "554 text with # a hash, kept"  # no trailing comments


def test_lexer_comments_and_separators():
    entries, errors = conffile.lex(
        "/* block\n * inside\n still inside */\n# c\n; c\n// c\n= c\n*x = 1\nab\n"
        "key\tvalue with  spaces \r\nflag\nk=v\n  spaced  =  v2  \n")
    assert not errors
    assert [(e.key, e.value, e.lineno) for e in entries] == [
        ("key", "value with  spaces", 10), ("flag", None, 11), ("k", "v", 12),
        ("spaced", "v2", 13)]


def expect_error(tmp_path: Path, text: str, message: str, *args: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as caught:
        load_file(path, *args)
    lines = caught.value.lines
    assert any(line == message.format(path=path) for line in lines), lines
    return lines


PORT = "expected a port number from 1 to 65535 or a service name from /etc/services"


@pytest.mark.parametrize(("text", "message"), [
    (BASE + "port = 8110 # x\n", "{path}:2: port = 8110 # x: " + PORT),
    (BASE + "port = 0\n", "{path}:2: port = 0: " + PORT),
    (BASE + "maxchilds = 0\n",
     "{path}:2: maxchilds = 0: expected a whole number from 1 to 9999"),
    (BASE + "timeout = 10000\n",
     "{path}:2: timeout = 10000: expected a whole number from 1 to 9999"),
    (BASE + "bytesfree = -5\n",
     "{path}:2: bytesfree = -5: expected a whole number of at least 0"),
    (BASE + "viruscode = 1,x\n", "{path}:2: viruscode = 1,x: expected one or more exit codes "
     "from 1 to 256, separated by commas or spaces"),
    (BASE + "goodcode = 300\n", "{path}:2: goodcode = 300: expected one or more exit codes "
     "from 1 to 256, separated by commas or spaces"),
    (BASE + "ip = 1.2.3.400\n",
     "{path}:2: ip = 1.2.3.400: expected an IPv4 or IPv6 address such as 0.0.0.0 or ::"),
    (BASE + "scannertype = sample\n", "{path}:2: scannertype = sample: expected one of "
     "basic, avpd, avpd_new, trophie, clamd, bash, eicar"),
    (BASE + "facility = mailer\n", "{path}:2: facility = mailer: expected a syslog facility: "
     "auth, authpriv, cron, daemon, ftp, kern, lpr, mail, news, syslog, user, uucp, local0, "
     "local1, local2, local3, local4, local5, local6, local7"),
    (BASE + "sslverify = maybe\n", "{path}:2: sslverify = maybe: expected one of yes, no"),
    (BASE + "scanerror = drop\n",
     "{path}:2: scanerror = drop: expected one of tempfail, pass, reject"),
    (BASE + "debug = maybe\n",
     "{path}:2: debug = maybe: expected a switch takes no value (or yes/no)"),
    (BASE + "user = mail man\n",
     "{path}:2: user = mail man: expected a single word without spaces"),
    (BASE + "footer = /bin/echo \"x\n", "{path}:2: footer = /bin/echo \"x: expected a command "
     "line with balanced quotes (No closing quotation)"),
    (BASE + "scanner\n", "{path}:2: scanner: needs a value"),
    (BASE + "port\n", "{path}:2: port: needs a value (" + PORT + ")"),
    (BASE + "bogus = 1\n",
     "{path}:2: unknown option 'bogus' (see p3scan.conf(5) for the options)"),
    (BASE + "ma = 1\n",
     "{path}:2: 'ma' is ambiguous: it could be maxchilds, maxsessions"),
    (BASE + "configfile = /x\n",
     "{path}:2: 'configfile' is not allowed in the configuration file"),
    (BASE + "help\n", "{path}:2: 'help' is not allowed in the configuration file"),
    ("scannertype = basic\n", "{path}:1: scannertype basic needs 'scanner', the command to "
     "run (p3scan 2.3.2 relayed mail unscanned instead)"),
    (BASE + "k = " + "v" * (64 * 1024) + "\n", "{path}:2: line longer than 65536 bytes"),
])
def test_each_validation_error_names_file_line_key_and_what_is_allowed(tmp_path, text,
                                                                       message):
    expect_error(tmp_path, text, message)


def test_virusregexp_errors_say_why(tmp_path):
    lines = expect_error(tmp_path, BASE + "virusregexp = (unclosed\n", "{path}:2: "
                         "virusregexp = (unclosed: expected a regular expression that "
                         "compiles (missing ), unterminated subpattern at position 0)")
    assert len(lines) == 1


def test_all_errors_are_reported_together(tmp_path):
    path = write(tmp_path, BASE + "port = x\nmaxchilds = y\n")
    with pytest.raises(config.ConfigError) as caught:
        load_file(path, "--timeout", "0")
    assert len(caught.value.lines) == 3
    assert caught.value.lines[2] == ("command line: --timeout 0: expected a whole number "
                                     "from 1 to 9999")


def test_command_line_errors(tmp_path):
    empty = write(tmp_path, BASE)
    for args, message in [
        (["--bogus"], "command line: unrecognized arguments: --bogus"),
        (["stray"], "command line: unrecognized arguments: stray"),
        (["-p"], "command line: argument -p/--port: expected one argument"),
    ]:
        with pytest.raises(config.ConfigError) as caught:
            load_file(empty, *args)
        assert caught.value.lines == [message]


def test_dash_capital_e_sets_the_smtp_port(tmp_path):
    assert load_file(write(tmp_path, BASE), "-E", "587").emailport == 587


def test_ports_may_be_service_names(tmp_path):
    assert load_file(write(tmp_path, BASE + "port = pop3\n")).port == 110


def test_ipv4_is_read_like_inet_aton(tmp_path):
    assert load_file(write(tmp_path, BASE + "targetip = 10.1\n")).targetip == "10.0.0.1"


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    cfg = load_file(write(tmp_path, BASE + "virusdir = spool\npidfile = ../run/p.pid\n"),
                    "-n", "notify")
    assert cfg.virusdir == str(tmp_path / "spool")
    assert cfg.pidfile == str(tmp_path.parent / "run" / "p.pid")
    assert cfg.notifydir == "/notify"  # command-line values: relative to the current directory


def test_an_explicit_missing_config_file_is_an_error(tmp_path):
    missing = tmp_path / "nope.conf"
    with pytest.raises(config.ConfigError) as caught:
        config.load(["-f", str(missing), "-T", "eicar"])
    assert caught.value.lines == [f"{missing}: cannot read the configuration file: it does "
                                  "not exist"]


def test_a_missing_default_config_file_means_defaults(tmp_path):
    errors: list[str] = []
    assert config._read_file(str(tmp_path / "absent.conf"), False, errors) == []
    assert errors == []


def test_check_config_output_reads_back_to_the_same_configuration(tmp_path):
    cfg = load_file(FIXTURE)
    rendered = write(tmp_path, cfg.render(), "rendered.conf")
    again = load_file(rendered)
    assert again.as_dict() | {"configfile": None} == cfg.as_dict() | {"configfile": None}
    assert re.search(r"^# from .*:17\npidfile = /var/run/p3scan/p3scan.pid$", cfg.render(),
                     re.M)


def test_cli_check_config_prints_and_exits_0(tmp_path, capsys):
    assert cli.main(["-f", str(write(tmp_path, BASE)), "--check-config"]) == 0
    out = capsys.readouterr().out
    assert "scannertype = eicar" in out and "port = 8110" in out


def test_cli_bad_config_exits_1_and_starts_nothing(tmp_path, capsys):
    assert cli.main(["-f", str(write(tmp_path, BASE + "port = x\n"))]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"p3scan: {tmp_path}/p3scan.conf:2: port = x: expected")
    assert err[-1] == ("p3scan: the configuration is not valid, nothing was started "
                       "(see p3scan.conf(5))")


def test_help_and_version_exit_0(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["-h"])
    assert caught.value.code == 0
    assert "--check-config" in capsys.readouterr().out
    with pytest.raises(SystemExit) as caught:
        cli.main(["-v"])
    assert caught.value.code == 0
    assert "P3Scan 3.0.0" in capsys.readouterr().out


def test_help_lists_every_option_with_its_letter():
    text = config.build_parser().format_help()
    for opt in config.OPTIONS:
        assert f"--{opt.key}" in text
        if opt.short:
            assert f"-{opt.short} " in text or f"-{opt.short}," in text, opt.key


# --- typed settings (issue 7) ---------------------------------------------------------------


def test_the_settings_module_is_generated_from_the_table():
    assert (REPO / "p3scan" / "config" / "settings.py").read_text() == config.settings_source()


def test_every_value_has_its_declared_type():
    cfg = config.load(["-f", str(REPO / "conf" / "p3scan.conf")])
    kinds = {"bool": bool, "int": int, "str": str, "list[int]": list}
    for opt in config.OPTIONS:
        value = getattr(cfg, opt.key)
        declared = config.python_type(opt)
        if value is None:
            assert declared.endswith("| None"), opt.key
            continue
        assert isinstance(value, kinds[declared.removesuffix(" | None")]), opt.key


def test_the_configuration_is_frozen_and_replace_makes_a_copy():
    cfg = config.load(["-f", "/dev/null", "-T", "eicar"])
    with pytest.raises(AttributeError):
        cfg.port = 1  # type: ignore[misc]
    other = cfg.replace(port=1)
    assert (cfg.port, other.port, other.sources) == (8110, 1, cfg.sources)


def test_option_facts_live_in_the_table():
    assert {opt.key for opt in config.OPTIONS if opt.restart} == {
        "ip", "port", "backlog", "user", "pidfile", "debug", "foreground"}
    assert config.BY_KEY["scanerror"].section == "scanning"
    assert config.BY_KEY["smtprset"].section == "smtp"
    assert all(opt.section for opt in config.OPTIONS)


def test_a_switch_on_by_default_can_be_turned_off_on_the_command_line():
    base = ["-f", "/dev/null", "-T", "eicar"]
    assert config.load(base).enabletop is True  # on by default since 3.0
    assert config.load(base + ["-J", "no"]).enabletop is False
    assert config.load(base + ["--enabletop=off", "-d"]).enabletop is False
    assert config.load(base + ["-J", "-d"]).debug is True  # a bare switch takes no value
    with pytest.raises(config.ConfigError, match="invalid choice: 'maybe'"):
        config.load(base + ["-J", "maybe"])
