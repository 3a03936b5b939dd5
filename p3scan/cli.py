"""The ``p3scan`` command: read the configuration, then check it or start the daemon."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from p3scan.config import options as config
from p3scan.daemon.master import Master


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (1 for any configuration or start-up error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = config.load(args)
    except config.ConfigError as err:
        for line in err.lines:
            sys.stderr.write(f"p3scan: {line}\n")
        sys.stderr.write("p3scan: the configuration is not valid, nothing was started "
                         "(see p3scan.conf(5))\n")
        return 1
    if cfg.check_config:
        sys.stdout.write(cfg.render())
        return 0
    return Master(cfg).start()
