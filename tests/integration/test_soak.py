"""A short soak (bench/soak.py, 6 s): POP3 and SMTP mixed through one transparent p3scan
daemon at 5 x maxchilds clients, against real Dovecot and a real Exim or the aiosmtpd sink.

The script itself checks every message (clean ones byte-identical apart from the header,
infected ones replaced or refused with 554), the quarantine, the log, and the daemon's fd and
process counts before and after; it exits 1 with the list of failures otherwise.  This test
runs it and checks the figures it reports, so a regression in any of them fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.procs import REPO, require_root

pytestmark = pytest.mark.integration

DURATION = 6
MAXCHILDS = 2


@pytest.mark.parametrize("smtp", ["exim", "sink"])
def test_short_soak_loses_nothing_and_leaks_nothing(smtp, scratch):
    require_root("the soak (Dovecot, Exim, iptables in a private network namespace)")
    figures_file = scratch / "soak.json"
    result = subprocess.run([sys.executable, "bench/soak.py", "--duration", str(DURATION),
                             "--maxchilds", str(MAXCHILDS), "--smtp", smtp, "--json",
                             str(figures_file)], cwd=REPO, capture_output=True, text=True,
                            timeout=DURATION + 240)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(figures_file.read_text())
    assert figures["failures"] == [] and figures["errors"] == 0, figures
    assert figures["clients"] == 5 * MAXCHILDS and figures["duration_s"] >= DURATION
    for protocol in ("pop3", "smtp"):
        assert figures[protocol]["sessions"] > 0, figures
        assert figures[protocol]["clean"] > 0 and figures[protocol]["infected"] > 0, figures
    assert figures["quarantined"] == figures["pop3"]["infected"] + figures["smtp"]["infected"]
    assert figures["processes_before"] == figures["processes_after"] == 1 + MAXCHILDS
    assert figures["fds_before"] == figures["fds_after"]
    assert figures["outcomes_not_ok"] == 0
