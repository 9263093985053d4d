"""The screener's promise about the reply: a stalled incident response never holds it back."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from mailward.config import ReputationSettings, Settings
from mailward.envelope import Direction, Envelope
from mailward.quarantine import open_store
from mailward.runtime import InProcessScanner
from mailward.screening import WATCH_BUDGET, Screener
from mailward.source import MessageSource
from mailward.verdict import Action
from support.mail import gtube_message


class StalledWatch:
    """Incident response whose database stopped answering (a SIGSTOPped PostgreSQL)."""

    def __init__(self):
        self.entered, self.release, self.seen = threading.Event(), threading.Event(), []

    def observe(self, outcome):
        self.entered.set()
        self.release.wait(30)
        self.seen.append(outcome)


def test_a_stalled_incident_response_does_not_hold_the_reply(tmp_path):
    settings = replace(Settings(), state_dir=str(tmp_path), reputation=ReputationSettings(enabled=False))
    scanner = InProcessScanner.from_settings(settings)
    store, watch = open_store(settings), StalledWatch()
    try:
        screener = Screener(settings, scanner, store, watch=watch)
        _, raw = gtube_message()
        envelope = Envelope(mail_from="a@example.org", recipients=("u@example.test",), client_address="192.0.2.9",
                            direction=Direction.INBOUND)
        started = time.monotonic()
        outcome = screener.screen(MessageSource.of(raw), envelope)
        waited = time.monotonic() - started
        assert watch.entered.is_set()
        assert outcome.verdict.action is Action.QUARANTINE and store.get(outcome.quarantine_id) is not None
        assert WATCH_BUDGET <= waited < WATCH_BUDGET + 5
        watch.release.set()                      # the database answers again: the outcome is still counted
        deadline = time.monotonic() + 10
        while not watch.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watch.seen == [outcome]
    finally:
        watch.release.set()
        store.close()
        scanner.close()
