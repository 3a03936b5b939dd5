"""decide(): every verdict under every policy, for both protocols, without sockets."""

from __future__ import annotations

import itertools

import pytest

from p3scan.scan.outcome import (
    CLEAN_HEADER,
    Deliver,
    Policy,
    Refuse,
    Replace,
    Tempfail,
    decide,
)
from p3scan.scan.pipeline import CLEAN, ERROR, INFECTED, UNCHECKED, Verdict

VERDICTS = {
    CLEAN: Verdict(CLEAN),
    INFECTED: Verdict(INFECTED, ("Eicar-Test-Signature",)),
    ERROR: Verdict(ERROR, reason="clamd: cannot connect"),
    UNCHECKED: Verdict(UNCHECKED, reason="multipart/mixed without a boundary parameter"),
    "spool full": Verdict.spool_failed("spool full: No space left on device"),
}
POLICIES = ("tempfail", "pass", "reject")
UNCHECKED_POLICIES = (None, *POLICIES)


def expected(kind: str, protocol: str, scanerror: str, unchecked: str | None) -> str:
    """The outcome's class and what it carries, as the issue and the man page say."""
    if kind == CLEAN:
        return "deliver clean"
    if kind == INFECTED:
        return "refuse 554 smtprset" if protocol == "SMTP" else "replace virus"
    if kind == "spool full":
        return "tempfail"
    if kind == UNCHECKED:
        policy = unchecked or ("reject" if protocol == "SMTP" else "tempfail")
    else:
        policy = scanerror
    if policy == "pass":
        return "deliver marked"
    if policy == "reject":
        return "refuse 554 5.7.0" if protocol == "SMTP" else "replace failure"
    return "tempfail"


def described(outcome) -> str:
    verdict = outcome.verdict
    if isinstance(outcome, Deliver):
        assert len(outcome.headers) == 1
        return "deliver clean" if verdict.status == CLEAN else "deliver marked"
    if isinstance(outcome, Replace):
        return "replace virus" if verdict.status == INFECTED else "replace failure"
    if isinstance(outcome, Refuse):
        return "refuse 554 5.7.0" if outcome.reply.startswith("554 5.7.0") else \
            "refuse 554 smtprset"
    assert isinstance(outcome, Tempfail)
    return "tempfail"


@pytest.mark.parametrize(("kind", "protocol", "scanerror", "unchecked"), list(
    itertools.product(VERDICTS, ("POP3", "SMTP"), POLICIES, UNCHECKED_POLICIES)))
def test_every_combination(kind, protocol, scanerror, unchecked):
    policy = Policy(protocol, scanerror, unchecked, "Virus detected!")
    outcome = decide(VERDICTS[kind], policy)
    assert described(outcome) == expected(kind, protocol, scanerror, unchecked)


@pytest.mark.parametrize("protocol", ["POP3", "SMTP"])
def test_what_the_outcomes_carry(protocol):
    policy = Policy(protocol, "pass", "reject", "Virus detected!")
    clean = decide(VERDICTS[CLEAN], policy)
    assert clean.headers == (CLEAN_HEADER[protocol].encode(),)
    marked = decide(VERDICTS[ERROR], policy)
    assert marked.headers == (b"X-P3Scan: not scanned, the virus scanner failed: "
                              b"clamd: cannot connect",)
    rejected = decide(VERDICTS[UNCHECKED], policy)
    assert rejected.verdict.names == ("not checked: multipart/mixed without a boundary "
                                      "parameter",)
    if protocol == "SMTP":
        assert rejected.reply == "554 5.7.0 p3scan: the message could not be checked"
        assert decide(VERDICTS[INFECTED], policy).reply == "554 Virus detected!"
    else:
        assert decide(VERDICTS[INFECTED], policy).verdict is VERDICTS[INFECTED]
