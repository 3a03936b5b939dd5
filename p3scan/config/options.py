"""The one table of p3scan's options, and loading the effective configuration.

Every option is declared once in :data:`OPTIONS`.  The table produces the configobj
configspec (checks and defaults, validated by configobj's Validator with the checks of
:mod:`p3scan.config.checks`) and the argparse command line.  Values come from the defaults, then the
configuration file (p3scan 2.3.2 syntax, :mod:`p3scan.config.conffile`), then the command line; the
last one wins.  Every problem is reported as one line naming the file, line, key and what is
allowed, and nothing starts while any is left.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, NoReturn

from configobj import ConfigObj

from p3scan import PROGNAME, __version__
from p3scan.config import checks, conffile
from p3scan.config.settings import Settings

DEFAULT_CONFIGFILE = "/etc/p3scan/p3scan.conf"
FLAG_VALUES = ("yes", "no", "on", "off", "true", "false", "1", "0")


@dataclass(frozen=True)
class Option:
    """One option: its key (config file and ``--key``), short letter, check and default."""

    key: str
    short: str | None
    check: str
    default: Any
    help: str
    metavar: str = ""
    new: bool = False
    cli_only: bool = False
    path: bool = False
    unset: str = ""  # what an unset option (default None) means, for --check-config
    section: str = ""  # where it belongs: network, process, scanning, ... (from the table)
    restart: bool = False  # a reload cannot change it; the old value stays until a restart

    @property
    def is_flag(self) -> bool:
        return self.check == "flag"

    @property
    def spec(self) -> str:
        """The configobj check string, default included."""
        name, _, args = self.check.partition("(")
        args = args.rstrip(")")
        default = _spec_literal(self.default)
        return f"{name}({args + ', ' if args else ''}default={default})"


def _spec_literal(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, list):
        value = ",".join(str(item) for item in value)
    text = str(value)
    if '"' in text:
        raise ValueError(f"default {text!r} cannot be quoted in a configspec")
    return f'"{text}"'


_O = Option
_TABLE: tuple[Option | str, ...] = (  # a string starts a section
    "network",  # --- where to listen and where to connect -------------------------
    _O("ip", "i", "ipaddr", "0.0.0.0", "address to listen on; :: listens on IPv6 and IPv4",
      "ADDR", restart=True),
    _O("port", "p", "port", 8110, "port to listen on (iptables redirects mail traffic here)",
      "PORT", restart=True),
    _O("targetip", "I", "ipaddr", "0.0.0.0",
      "fixed upstream server; 0.0.0.0 means transparent mode (original destination)", "ADDR"),
    _O("targetport", "P", "port", 8110, "upstream port when targetip is set", "PORT"),
    _O("useurl", "U", "flag", False,
      "take the upstream server from the POP3 user name: USER name#host:port"),
    _O("useurlports", None, "ports", [110, 995],
       "destination ports a client may name in useurl mode", "PORT[,PORT...]", new=True),
    _O("emailport", "E", "port", 25, "destination port that marks a session as SMTP", "PORT"),
    _O("sslport", "L", "port", 995,
      "destination port that marks a session as POP3S (TLS towards the server)", "PORT"),
    _O("sslverify", None, "choice(yes, no)", "yes",
      "verify the POP3S server's certificate and name", "yes|no", new=True),
    _O("sslcafile", None, "path", None,
      "CA certificates for sslverify (default: the system store)", "FILE", new=True, path=True),
    _O("maxchilds", "m", "count(1, 9999)", 10, "number of worker processes (concurrent sessions)",
      "N"),
    "process",  # --- process ------------------------------------------------------
    _O("user", "u", "word", "mail", "user to run as when started as root (name or uid)", "USER",
       restart=True),
    _O("pidfile", "l", "path", "/var/run/p3scan/p3scan.pid", "PID file", "FILE", path=True,
       restart=True),
    _O("debug", "d", "flag", False, "stay in the foreground, log to stderr, log debug lines",
       restart=True),
    _O("quiet", "q", "flag", False, "log only warnings and errors (no per-session notices)"),
    _O("foreground", None, "flag", False, "do not detach; log to stderr as well as syslog",
      new=True, restart=True),
    _O("facility", None, "facility", "daemon", "syslog facility", "NAME", new=True),
    _O("syslogsocket", None, "path", "/dev/log", "syslog socket", "PATH", new=True, path=True),
    _O("idletimeout", None, "count(1, 86400)", 300,
      "close a session after this many seconds without traffic", "SECS", new=True),
    _O("connecttimeout", None, "count(1, 3600)", 30,
      "give up connecting to the real server after this many seconds", "SECS", new=True),
    _O("gracetimeout", None, "count(0, 86400)", 30,
      "on stop or reload, how long running sessions may take to finish", "SECS", new=True),
    _O("maxsessions", None, "count(0, 10000000)", 1000,
      "a worker retires after about this many sessions (0: never)", "N", new=True),
    _O("backlog", None, "count(1, 65535)", 128,
      "listen backlog: connections waiting while every worker is busy", "N", new=True,
      restart=True),
    "scanning",  # --- scanning ----------------------------------------------------
    _O("scannertype", "T", "scannertype", "basic", "scanner front-end", "TYPE"),
    _O("scanner", "s", "text", None,
      "scanner command, clamd host:port or socket path, or daemon socket directory", "SPEC"),
    _O("viruscode", "c", "codes", [1], "scanner exit codes that mean a virus was found",
      "N[,N...]"),
    _O("goodcode", "G", "codes", None, "scanner exit codes that mean clean besides 0",
      "N[,N...]"),
    _O("virusregexp", "g", "regexp", None,
      "regular expression (PCRE, ungreedy) that extracts the virus name; /N picks group N",
      "REGEXP"),
    _O("demime", "x", "flag", False, "split MIME parts into files before scanning"),
    _O("scanerror", None, "choice(tempfail, pass, reject)", "tempfail",
       "when the scanner fails: tempfail (retry later), pass (deliver, marked unscanned) "
       "or reject", "POLICY", new=True),
    _O("unchecked", None, "choice(tempfail, pass, reject)", None,
       "when a message cannot be checked completely (MIME beyond the splitter's limits): "
       "tempfail, pass (deliver, marked unchecked) or reject (default: tempfail for POP3, "
       "reject for SMTP)", "POLICY", new=True, unset="POP3: tempfail, SMTP: reject"),
    _O("scantimeout", None, "count(1, 86400)", 120,
       "a scan (scanner and filters) that takes longer counts as a scanner failure", "SECS",
       new=True),
    _O("timeout", "O", "count(1, 9999)", 30, "keep-alive interval in seconds", "SECS"),
    _O("broken", "B", "flag", False, "keep-alive sends whole header lines, not characters"),
    _O("enabletop", "J", "flag", True,
       "scan and relay TOP replies (default: on, unlike 2.3.2; enabletop = no refuses TOP)"),
    _O("bytesfree", "b", "count(0)", 10000,
      "minimum free space in KB in the spool file system (0: no check)", "KB"),
    _O("virusdir", "r", "path", "/var/spool/p3scan", "spool and quarantine directory", "DIR",
      path=True),
    _O("notifydir", "n", "path", "/var/spool/p3scan/notify",
      "directory where notifications are built", "DIR", path=True),
    _O("justdelete", "j", "flag", False, "do not keep a quarantine copy of infected mail"),
    "notification",  # --- notification --------------------------------------------
    _O("template", "t", "path", "/etc/p3scan/p3scan.mail", "virus notification template", "FILE",
      path=True),
    _O("subject", "S", "text", "[Virus] found in a mail to you:",
      "Subject prefix of the notification", "TEXT"),
    _O("notify", "N", "text", "Per instruction, the message has been deleted.",
      "text shown as %P3SCANID% with justdelete", "TEXT"),
    _O("altvnmsg", "A", "flag", False,
      "use a per-message copy of the template that a bash scanner may edit"),
    _O("extra", "e", "text", None, "addresses that also get a notification", "ADDRS"),
    _O("extrafile", None, "path", "/etc/p3scan/p3scan.extra",
       "template of the extra notification, if the file exists", "FILE", new=True, path=True),
    _O("xmail", "X", "command", "/bin/mail", "mailer for extra and emergency notifications",
      "CMD"),
    _O("emergcon", "K", "text", "root@localhost postmaster@localhost",
      "addresses for emergency notifications", "ADDRS"),
    "smtp",  # --- SMTP ------------------------------------------------------------
    _O("smtprset", "R", "text", "Virus detected! P3scan rejected message!",
      "text of the 554 reply to an infected outgoing message", "TEXT"),
    _O("checksize", "C", "count(0)", 0,
      "SMTP messages announced larger than this many KB pass unscanned (0: scan all)", "KB"),
    _O("footerfile", None, "path", "/etc/p3scan/p3scan.mail.footer",
       "text appended to clean outgoing SMTP mail, if the file exists", "FILE", new=True,
       path=True),
    _O("footer", "F", "command", None, "command whose output names the scanner version", "CMD"),
    "filters",  # --- filters ------------------------------------------------------
    _O("checkspam", "k", "flag", False, "run the spam filter on clean POP3 mail"),
    _O("spamcheck", "z", "command", "/usr/bin/spamc", "spam filter command", "CMD"),
    _O("ispspam", "M", "text", None, "a Subject containing this text skips the spam filter",
      "TEXT"),
    _O("renattach", "a", "command", None, "attachment renaming filter command", "CMD"),
    _O("overwrite", "o", "command", None, "HTML filter command", "CMD"),
    "command line",  # --- command line only ---------------------------------------
    _O("configfile", "f", "path", DEFAULT_CONFIGFILE, "configuration file", "FILE",
      cli_only=True),
)
del _O
def _sectioned(table: tuple[Option | str, ...]) -> tuple[Option, ...]:
    """The options, each with the section it stands in."""
    options, section = [], ""
    for entry in table:
        if isinstance(entry, str):
            section = entry
        else:
            options.append(replace(entry, section=section))
    return tuple(options)


OPTIONS: tuple[Option, ...] = _sectioned(_TABLE)
BY_KEY: dict[str, Option] = {opt.key: opt for opt in OPTIONS}
RESTART_ONLY: tuple[str, ...] = tuple(opt.key for opt in OPTIONS if opt.restart)
FILE_KEYS: tuple[str, ...] = tuple(opt.key for opt in OPTIONS if not opt.cli_only)
NOT_IN_FILE = ("help", "version", "configfile", "check-config")


class ConfigError(Exception):
    """The configuration has problems; ``lines`` says each in one line."""

    def __init__(self, lines: Sequence[str]):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


@dataclass(frozen=True)
class Config(Settings):
    """The effective configuration: the typed values of :class:`Settings`, and where each
    one came from.  Frozen: a reload builds a new one."""

    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    argv: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def get(self, name: str) -> Any:
        return getattr(self, name)

    def as_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(Settings)}

    def replace(self, **changes: Any) -> Config:
        """A copy with some values changed (used by tests and by a reload)."""
        return replace(self, **changes)

    def render(self) -> str:
        """The effective configuration in p3scan.conf syntax, each line with its source."""
        lines = [f"# effective configuration of {PROGNAME} {__version__}",
                 "# (values without a 'from' line are defaults)"]
        lines.append(f"# read from {self.configfile}")
        for opt in OPTIONS:
            value = getattr(self, opt.key)
            if opt.cli_only:
                continue
            if opt.key in self.sources:
                lines.append(f"# from {self.sources[opt.key]}")
            if value is None:
                lines.append(f"# {opt.key} is not set" + (f" ({opt.unset})" if opt.unset
                                                          else ""))
            else:
                lines.append(f"{opt.key} = {format_value(opt, value)}")
        return "\n".join(lines) + "\n"


def format_value(opt: Option, value: Any) -> str:
    """A value as it would be written in a configuration file."""
    if opt.is_flag:
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def configspec() -> ConfigObj:
    """The configobj configspec generated from :data:`OPTIONS`."""
    lines = [f"{opt.key} = {opt.spec}" for opt in OPTIONS]
    return ConfigObj(lines, _inspec=True, list_values=False, interpolation=False)


def defaults() -> dict[str, Any]:
    """Every option's default, produced by configobj from the configspec."""
    validator = checks.make_validator()
    spec = configspec()
    result = ConfigObj({}, configspec=spec, interpolation=False, list_values=False)
    result.validate(validator)
    return {opt.key: _copy(result[opt.key]) for opt in OPTIONS}


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


# --- command line -------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as ConfigError instead of exiting with status 2."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError([f"command line: {message}"])


class _Version(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None):
        sys.stdout.write(version_banner())
        parser.exit(0)


def version_banner() -> str:
    return (
        f"\n{PROGNAME} {__version__}\n"
        "A Python re-implementation of p3scan 2.3.2 (Jack S. Lai),\n"
        "itself derived from pop3vscan by Folke Ashberg.\n\n"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line, generated from :data:`OPTIONS`."""
    parser = _Parser(
        prog="p3scan",
        description="Transparent POP3/POP3S/SMTP proxy that scans mail for viruses.",
        epilog="Options marked [new] are not in p3scan 2.3.2. See p3scan(8), p3scan.conf(5).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("-v", "--version", action=_Version, nargs=0,
                        help="print the version and exit")
    parser.add_argument("--check-config", action="store_true", dest="check_config",
                        help="[new] validate the configuration, print it and exit")
    for opt in OPTIONS:
        names = ([f"-{opt.short}"] if opt.short else []) + [f"--{opt.key}"]
        text = (("[new] " if opt.new else "") + opt.help + _default_text(opt)).replace("%", "%%")
        if opt.is_flag:  # a bare flag turns it on; "no" turns off one that defaults to on
            parser.add_argument(*names, dest=opt.key, nargs="?", const="yes",
                                choices=FLAG_VALUES, metavar="yes|no", help=text)
        else:
            parser.add_argument(*names, dest=opt.key, metavar=opt.metavar or "VALUE",
                                help=text)
    return parser


def _default_text(opt: Option) -> str:
    if opt.is_flag or opt.default is None:
        return ""
    return f" (default: {format_value(opt, opt.default)})"


# --- loading ------------------------------------------------------------------------------


@dataclass
class _Raw:
    """A value as written, and where: 'FILE:LINE' or 'command line'."""

    opt: Option
    text: Any
    where: str
    shown: str


def load(argv: Sequence[str], *, cwd: str | None = None) -> Config:
    """Parse the command line and the configuration file into the effective configuration."""
    cwd = cwd or os.getcwd()
    cli = vars(build_parser().parse_args(list(argv)))
    errors: list[str] = []
    explicit = "configfile" in cli
    configfile = _absolute(cli.pop("configfile", DEFAULT_CONFIGFILE), cwd)
    check_only = bool(cli.pop("check_config", False))
    file_raw = _read_file(configfile, explicit, errors)
    cli_raw = [
        _Raw(BY_KEY[key], text, "command line",
             f"--{key}" if BY_KEY[key].is_flag and text == "yes" else f"--{key} {text}")
        for key, text in cli.items()
    ]
    values = defaults()
    sources: dict[str, str] = {}
    for raw in file_raw + cli_raw:
        value = _validate(raw, errors)
        if value is not _BAD:
            base = os.path.dirname(configfile) if raw.where != "command line" else cwd
            values[raw.opt.key] = _absolute(value, base) if raw.opt.path else value
            sources[raw.opt.key] = raw.where
    values["configfile"] = configfile
    values["check_config"] = check_only
    errors.extend(_cross_checks(values, sources))
    if errors:
        raise ConfigError(errors)
    return Config(**values, sources=sources, argv=tuple(argv))


_BAD = object()


def _validate(raw: _Raw, errors: list[str]) -> Any:
    validator = checks.make_validator()
    try:
        return _copy(validator.check(raw.opt.spec, raw.text))
    except checks.Invalid as err:
        errors.append(f"{raw.where}: {raw.shown}: expected {err}")
    except Exception as err:  # configobj's own errors (VdtTypeError, ...)
        errors.append(f"{raw.where}: {raw.shown}: {err}")
    return _BAD


def _read_file(path: str, explicit: bool, errors: list[str]) -> list[_Raw]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
    except FileNotFoundError:
        if explicit:
            errors.append(f"{path}: cannot read the configuration file: it does not exist")
        return []
    except OSError as err:
        errors.append(f"{path}: cannot read the configuration file: {err.strerror}")
        return []
    entries, lex_errors = conffile.lex(text)
    errors.extend(f"{path}:{err.lineno}: {err.message}" for err in lex_errors)
    result = []
    for entry in entries:
        raw = _file_entry(path, entry, errors)
        if raw is not None:
            result.append(raw)
    return result


def _file_entry(path: str, entry: conffile.Entry, errors: list[str]) -> _Raw | None:
    where = f"{path}:{entry.lineno}"
    if entry.key in NOT_IN_FILE:
        errors.append(f"{where}: '{entry.key}' is not allowed in the configuration file")
        return None
    opt = _resolve_key(entry.key, where, errors)
    if opt is None:
        return None
    shown = entry.key if entry.value is None else f"{entry.key} = {entry.value}"
    if entry.value is None:
        if not opt.is_flag:
            hint = _expected(opt)
            errors.append(f"{where}: {entry.key}: needs a value" + (f" ({hint})" if hint else ""))
            return None
        return _Raw(opt, "yes", where, shown)
    return _Raw(opt, entry.value, where, shown)


def _resolve_key(key: str, where: str, errors: list[str]) -> Option | None:
    """Exact key, or an unambiguous prefix of one (as getopt_long accepted)."""
    if key in BY_KEY and not BY_KEY[key].cli_only:
        return BY_KEY[key]
    matches = [name for name in FILE_KEYS if name.startswith(key)]
    if len(matches) == 1:
        return BY_KEY[matches[0]]
    if matches:
        errors.append(f"{where}: '{key}' is ambiguous: it could be {', '.join(matches)}")
    else:
        errors.append(f"{where}: unknown option '{key}' (see p3scan.conf(5) for the options)")
    return None


def _expected(opt: Option) -> str:
    validator = checks.make_validator()
    try:
        validator.check(opt.spec, "\0invalid\0")
    except checks.Invalid as err:
        return f"expected {err}"
    except Exception:  # pragma: no cover - configobj's own errors
        pass
    return ""


def _absolute(value: Any, base: str) -> Any:
    if isinstance(value, str) and value and not os.path.isabs(value):
        return os.path.normpath(os.path.join(base, value))
    return value


def _cross_checks(values: dict[str, Any], sources: dict[str, str]) -> Iterable[str]:
    """Rules that involve more than one option."""
    kind, scanner = values["scannertype"], values["scanner"]
    if kind in ("basic", "bash") and not scanner:
        where = sources.get("scannertype", "default")
        yield (f"{where}: scannertype {kind} needs 'scanner', the command to run (p3scan "
               "2.3.2 relayed mail unscanned instead)")
    if kind in ("basic", "bash") and scanner:
        problem = checks.command_problem(scanner)
        if problem:
            yield f"{sources.get('scanner', 'default')}: scanner = {scanner}: {problem}"
    if kind == "clamd" and scanner and not checks.clamd_address_ok(scanner):
        yield (f"{sources.get('scanner', 'default')}: scanner = {scanner}: expected clamd's "
               "host:port ([v6addr]:port) or the path of its socket")


# --- the typed settings -------------------------------------------------------------------

PYTHON_TYPES = {"flag": "bool", "count": "int", "port": "int", "codes": "list[int]",
                "ports": "list[int]"}  # every other check gives a str


def python_type(opt: Option) -> str:
    """The type of an option's value, as :mod:`p3scan.config.settings` declares it."""
    kind = PYTHON_TYPES.get(opt.check.partition("(")[0], "str")
    return f"{kind} | None" if opt.default is None else kind


def settings_source() -> str:
    """The text of p3scan/config/settings.py, generated from :data:`OPTIONS`."""
    lines = ['"""The typed settings, generated from the option table (options.py) by',
             "``python -m p3scan.config.options``: do not edit; a unit test checks it is",
             'current.',
             '"""', "", "from __future__ import annotations", "",
             "from dataclasses import dataclass", "", "",
             "@dataclass(frozen=True)", "class Settings:",
             '    """Every option of p3scan, typed."""', ""]
    for opt in OPTIONS:
        lines.append(f"    {opt.key}: {python_type(opt)}  # {opt.section}")
    lines.append("    check_config: bool  # command line")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(settings_source())
