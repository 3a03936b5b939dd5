"""The master's pause between attempts to boot a worker after start-up."""

from __future__ import annotations

from p3scan.daemon.master import BACKOFF_MAX, backoff_delay


def test_the_pause_doubles_from_one_second_up_to_a_minute():
    assert [backoff_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(10_000) == BACKOFF_MAX == 60
