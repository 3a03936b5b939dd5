"""How long the fuzz targets run: briefly by default, for long with ``P3SCAN_FUZZ=long``.

``make test`` and ``make unit`` run each target with :data:`SHORT` examples (the whole set in
well under 30 s); ``make fuzz`` sets ``P3SCAN_FUZZ=long`` (:data:`LONG` examples each) and
``P3SCAN_FUZZ_EXAMPLES=N`` overrides both.  The settings are applied per test with
``@FUZZ``, so nothing changes for the other hypothesis tests of the suite.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SHORT = 50
LONG = 2000

_examples = int(os.environ.get("P3SCAN_FUZZ_EXAMPLES") or 0) or (
    LONG if os.environ.get("P3SCAN_FUZZ") == "long" else SHORT)

settings.register_profile(
    "p3scan-fuzz", max_examples=_examples, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])

FUZZ = settings.get_profile("p3scan-fuzz")


def scaled(share: float) -> settings:
    """The fuzz settings with ``share`` of the examples (for the slower targets)."""
    return settings(FUZZ, max_examples=max(10, int(_examples * share)))
