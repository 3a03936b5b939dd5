"""The typed settings, generated from the option table (options.py) by
``python -m p3scan.config.options``: do not edit; a unit test checks it is
current.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Every option of p3scan, typed."""

    ip: str  # network
    port: int  # network
    targetip: str  # network
    targetport: int  # network
    useurl: bool  # network
    useurlports: list[int]  # network
    emailport: int  # network
    sslport: int  # network
    sslverify: str  # network
    sslcafile: str | None  # network
    maxchilds: int  # network
    user: str  # process
    pidfile: str  # process
    debug: bool  # process
    quiet: bool  # process
    foreground: bool  # process
    facility: str  # process
    syslogsocket: str  # process
    idletimeout: int  # process
    connecttimeout: int  # process
    gracetimeout: int  # process
    maxsessions: int  # process
    backlog: int  # process
    scannertype: str  # scanning
    scanner: str | None  # scanning
    viruscode: list[int]  # scanning
    goodcode: list[int] | None  # scanning
    virusregexp: str | None  # scanning
    demime: bool  # scanning
    scanerror: str  # scanning
    unchecked: str | None  # scanning
    scantimeout: int  # scanning
    timeout: int  # scanning
    broken: bool  # scanning
    enabletop: bool  # scanning
    bytesfree: int  # scanning
    virusdir: str  # scanning
    notifydir: str  # scanning
    justdelete: bool  # scanning
    template: str  # notification
    subject: str  # notification
    notify: str  # notification
    altvnmsg: bool  # notification
    extra: str | None  # notification
    extrafile: str  # notification
    xmail: str  # notification
    emergcon: str  # notification
    smtprset: str  # smtp
    checksize: int  # smtp
    footerfile: str  # smtp
    footer: str | None  # smtp
    checkspam: bool  # filters
    spamcheck: str  # filters
    ispspam: str | None  # filters
    renattach: str | None  # filters
    overwrite: str | None  # filters
    configfile: str  # command line
    check_config: bool  # command line
