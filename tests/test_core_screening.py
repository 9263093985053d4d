"""The screener's promise about the reply: a stalled incident response never holds it back."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from mailward.config import ReputationSettings, Settings
from mailward.envelope import Direction, Envelope
from mailward.evidence import Category, Evidence, Finding, Severity
from mailward.quarantine import open_store
from mailward.runtime import InProcessScanner
from mailward.screening import WATCH_BUDGET, Screener
from mailward.source import MessageSource
from mailward.verdict import Action, Outcome
from support.mail import gtube_message
from support.milter import settings_for


class StalledWatch:
    """Incident response whose database stopped answering (a SIGSTOPped PostgreSQL)."""

    def __init__(self):
        self.entered, self.release, self.seen = threading.Event(), threading.Event(), []

    def triage(self, outcome):
        return lambda: self.observe(outcome)  # all of it waits on the database

    def observe(self, outcome):
        self.entered.set()
        self.release.wait(30)
        self.seen.append(outcome)


def timed_gtube(screener: Screener) -> tuple[Outcome, float]:
    """Screen one inbound GTUBE message (quarantined by default); its outcome and the seconds to the reply."""
    _, raw = gtube_message()
    envelope = Envelope(
        mail_from="a@example.org",
        recipients=("u@example.test",),
        client_address="192.0.2.9",
        direction=Direction.INBOUND,
    )
    started = time.monotonic()
    outcome = screener.screen(MessageSource.of(raw), envelope)
    return outcome, time.monotonic() - started


def test_a_stalled_incident_response_does_not_hold_the_reply(tmp_path):
    settings = replace(Settings(), state_dir=str(tmp_path), reputation=ReputationSettings(enabled=False))
    scanner = InProcessScanner.from_settings(settings)
    store, watch = open_store(settings), StalledWatch()
    try:
        screener = Screener(settings, scanner, store, watch=watch)
        outcome, waited = timed_gtube(screener)
        assert watch.entered.is_set()
        assert outcome.verdict.action is Action.QUARANTINE and store.get(outcome.quarantine_id) is not None
        assert WATCH_BUDGET <= waited < WATCH_BUDGET + 5
        watch.release.set()  # the database answers again: the outcome is still counted
        deadline = time.monotonic() + 10
        while not watch.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watch.seen == [outcome]
    finally:
        watch.release.set()
        store.close()
        scanner.close()


class SlowScanner:
    """A scan that uses most of the message's time (a loaded machine, a large message)."""

    def __init__(self, inner: InProcessScanner, seconds: float):
        self.inner, self.seconds = inner, seconds

    def scan(self, source, envelope):
        time.sleep(self.seconds)
        return self.inner.scan(source, envelope)


def test_the_incident_watch_gets_only_what_is_left_of_the_reply_budget(tmp_path):
    """message_deadline + write_timeout is what the MTA's milter timeout is set above: the watch never adds to it.

    Otherwise a slow scan, then a stored copy, then a full watch wait would answer after Postfix gave up:
    the sender is told to retry and the retry is stored a second time.
    """
    settings = replace(Settings(), state_dir=str(tmp_path), reputation=ReputationSettings(enabled=False))
    settings = replace(
        settings,
        milter=replace(settings.milter, message_deadline=1.0),
        quarantine=replace(settings.quarantine, write_timeout=0.5),
    )
    inner = InProcessScanner.from_settings(settings)
    store, watch = open_store(settings), StalledWatch()
    try:
        screener = Screener(settings, SlowScanner(inner, 1.3), store, watch=watch)
        outcome, waited = timed_gtube(screener)
        assert outcome.verdict.action is Action.QUARANTINE and store.get(outcome.quarantine_id) is not None
        assert watch.entered.wait(5)
        assert waited < 1.3 + 0.6 < 1.3 + WATCH_BUDGET  # the whole budget is 1.5 s; a full watch wait: 2.3 s
    finally:
        watch.release.set()
        store.close()
        inner.close()


class NoScan:
    """A scanner the test expects never to be asked: the decision comes before (or instead of) the content."""

    def scan(self, source, envelope):
        raise AssertionError("scanned")


BLOCKED = Evidence(findings=(Finding(Category.BLOCKED, "analyst:sender", Severity.CRITICAL, "incidents", "x@y"),))


@pytest.mark.parametrize(
    "toml,refused",
    [("", Action.REJECT), ('blocked_action = "tempfail"', Action.TEMPFAIL), ('blocked_action = "quarantine"', None)],
)
def test_a_block_is_refused_before_data_only_when_its_action_refuses(tmp_path, toml, refused):
    """A block whose action waits for the content (quarantine, tag) gives no outcome: the message is screened."""
    screener = Screener(settings_for(tmp_path, f"[policy.inbound]\n{toml}\n"), NoScan(), None)
    envelope = Envelope(mail_from="x@y", direction=Direction.INBOUND)
    outcome = screener.refuse_before_data(envelope, BLOCKED, "MW-1")
    if refused is None:
        assert outcome is None
    else:
        assert outcome.verdict.action is refused and outcome.verdict.incident_id == "MW-1"
        assert outcome.evidence == BLOCKED and outcome.envelope == envelope


@pytest.mark.parametrize("direction", list(Direction))
def test_a_message_that_could_not_be_screened_gets_its_directions_on_error(tmp_path, direction):
    """Never accept by default; ``on_error = "accept"`` for one direction changes only that direction."""
    screener = Screener(settings_for(tmp_path, '[policy.outbound]\non_error = "accept"\n'), NoScan(), None)
    outcome = screener.failure(Envelope(direction=direction), "error in header", 42)
    expected = Action.ACCEPT if direction is Direction.OUTBOUND else Action.TEMPFAIL
    assert (outcome.verdict.action, outcome.verdict.reasons) == (expected, ("error",))
    assert (outcome.error, outcome.size, outcome.evidence) == ("error in header", 42, Evidence())
    assert outcome.verdict.incident_id.startswith("MW-")
