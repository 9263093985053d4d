"""Screening in worker processes: a worker scans, decides, stores, counts and logs the whole message;
the milter's screener only hands it over and decides what no worker finished. Real processes, real
SQLite stores."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mailward.config import Settings
from mailward.envelope import Envelope
from mailward.evidence import Category, Evidence
from mailward.incidents import open_store as open_incident_store
from mailward.incidents.records import Counter, Totals
from mailward.pipeline import Inspector
from mailward.quarantine.records import ListFilter
from mailward.quarantine.store import QuarantineStore
from mailward.runtime import Runtime, build_runtime
from mailward.source import MessageSource
from mailward.verdict import Action, Verdict
from mailward.workers import ScanPool
from support.mail import gtube_message, message
from support.milter import settings_for
from support.stalls import Locker

CLIENT = "198.51.100.7"


def envelope(queue_id: str = "4QX1") -> Envelope:
    return Envelope(
        mail_from="alice@example.org",
        recipients=("bob@example.net",),
        client_address=CLIENT,
        queue_id=queue_id,
        connection_id="c0ffee01",
    )


SPAM = gtube_message()[1]


def spam() -> MessageSource:
    return MessageSource.of(SPAM)


class Milter:
    """The milter's side: a pool and the runtime the daemon builds over it."""

    def __init__(self, tmp_path: Path, toml: str = "", start_method: str = "forkserver"):
        self.settings = settings_for(tmp_path, toml)
        self.pool = ScanPool(self.settings, 1, start_method)
        self.runtime: Runtime = build_runtime(self.settings, workers=self.pool)

    @property
    def store(self) -> QuarantineStore:
        assert self.runtime.quarantine is not None
        return self.runtime.quarantine

    def close(self) -> None:
        self.pool.close()
        self.runtime.close()


def test_a_worker_stores_the_message_before_it_answers_and_writes_the_summary_line(tmp_path):
    log_file = tmp_path / "milter.log"
    milter = Milter(tmp_path, f'[logging]\nfile = "{log_file}"\n')
    try:
        outcome = milter.runtime.screener.screen(spam(), envelope())
        assert outcome.verdict.action is Action.QUARANTINE and outcome.envelope == envelope()
        record = milter.store.get(outcome.quarantine_id)  # committed before the worker answered
        assert record is not None and milter.store.read(outcome.quarantine_id) == SPAM
        # What the milter's metrics count came back with the slim outcome.
        assert dict(outcome.evidence.timings).get("quarantine") is not None
        assert Category.SPAM in {f.category for f in outcome.evidence.findings}
    finally:
        milter.close()
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    summaries = [line for line in lines if "verdict" in line.get("mailward", {})]
    assert len(summaries) == 1, summaries  # one line, the worker's
    (summary,) = summaries
    assert summary["process"]["pid"] != os.getpid()
    assert summary["email"]["local_id"] == "4QX1" and summary["labels"]["connection_id"] == "c0ffee01"
    assert summary["mailward"]["incident_id"] == outcome.verdict.incident_id
    assert summary["mailward"]["quarantine_id"] == outcome.quarantine_id


def test_a_store_failure_in_the_worker_tempfails_and_keeps_nothing(tmp_path):
    milter = Milter(tmp_path, "[quarantine]\nwrite_timeout = 0.5\n")
    locker = Locker(Path(milter.settings.state_dir) / "quarantine" / "quarantine.sqlite3")
    try:
        outcome = milter.runtime.screener.screen(spam(), envelope())
        assert outcome.verdict.action is Action.TEMPFAIL and outcome.quarantine_failed
        locker.release()
        assert milter.store.settle(10)
        assert milter.store.list(ListFilter(limit=10)) == []
    finally:
        locker.release()
        milter.close()


@pytest.fixture
def stalls_after_commit(tmp_path, monkeypatch):
    """A worker (forked, so it runs this test's patch) whose put commits, then never returns."""
    parent, stored = os.getpid(), tmp_path / "worker-stored"
    original = QuarantineStore.put

    def put_then_stall(self: QuarantineStore, *args: object) -> str:
        quarantine_id = original(self, *args)  # type: ignore[arg-type]
        if os.getpid() != parent:
            stored.write_text(quarantine_id)
            time.sleep(120)
        return quarantine_id

    monkeypatch.setattr(QuarantineStore, "put", put_then_stall)
    return stored


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_a_worker_stalled_after_its_commit_is_killed_and_its_record_withdrawn(tmp_path, stalls_after_commit, on_error):
    """The milter waits the scan's deadline plus the write timeout, kills the worker, answers on_error,
    and withdraws what the worker committed: the sender's answer is the only truth, nothing kept twice."""
    toml = "[milter]\nmessage_deadline = 3\n[quarantine]\nwrite_timeout = 0.5\n"
    toml += f'[policy.inbound]\non_error = "{on_error}"\n'
    milter = Milter(tmp_path, toml, start_method="fork")
    try:
        started = time.monotonic()
        outcome = milter.runtime.screener.screen(spam(), envelope())
        assert 3.5 <= time.monotonic() - started < 8
        assert outcome.verdict.action is Action(on_error) and outcome.verdict.reasons == ("error",)
        committed = stalls_after_commit.read_text()
        assert outcome.verdict.incident_id != committed and outcome.quarantine_id == ""
        assert milter.store.settle(10)
        assert milter.store.list(ListFilter(limit=10)) == []
        assert [e.action for e in milter.store.history(committed)] == ["quarantine", "withdraw"]
    finally:
        milter.close()


def test_a_scan_past_its_deadline_is_quarantined_unchecked_by_the_milter_once(tmp_path, monkeypatch):
    """No worker finished: the milter decides (unchecked: quarantine) and stores under its own ID."""
    parent, original = os.getpid(), Inspector.inspect

    def slow(self: Inspector, *args: object) -> object:
        if os.getpid() != parent:
            time.sleep(120)
        return original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Inspector, "inspect", slow)
    milter = Milter(tmp_path, "[milter]\nmessage_deadline = 2\n", start_method="fork")
    try:
        outcome = milter.runtime.screener.screen(MessageSource.of(message()[1]), envelope())
        assert outcome.verdict.action is Action.QUARANTINE and outcome.verdict.reasons == ("unchecked",)
        assert milter.store.settle(10)
        assert [r.id for r in milter.store.list(ListFilter(limit=10))] == [outcome.quarantine_id]
    finally:
        milter.close()


def inbound_messages(settings: Settings) -> int:
    store = open_incident_store(settings)
    try:
        return store.record(Counter.INBOUND_HOST, CLIENT, Totals(), since=0.0).messages
    finally:
        store.close()


def test_a_workers_counters_reach_the_store_when_it_is_replaced_or_stops(tmp_path):
    """Counted in the worker's memory (flush interval far off here); a reload's retired worker and a
    graceful stop flush them."""
    milter = Milter(tmp_path, "[incidents]\nflush_interval = 60\n")
    try:
        for n in range(3):
            milter.runtime.screener.screen(MessageSource.of(message()[1]), envelope(f"4QX{n}"))
        milter.pool.reload(milter.settings)  # the old worker flushes before it is killed
        assert inbound_messages(milter.settings) == 3
        milter.runtime.screener.screen(MessageSource.of(message()[1]), envelope("4QX9"))
    finally:
        milter.close()
    assert inbound_messages(milter.settings) == 4


def test_an_answer_the_milter_cannot_take_is_on_error_and_what_the_worker_stored_is_withdrawn(tmp_path):
    """Whatever goes wrong between a worker's commit and the milter's reply, the two do not disagree."""
    settings = settings_for(tmp_path)
    stored: list[str] = []

    class CommitsThenGarbles:
        def screen(self, source, envelope, known, incident, started):
            verdict = Verdict(Action.QUARANTINE, ("spam",), incident)
            stored.append(runtime.quarantine.put(source, envelope, verdict, Evidence()))
            raise ValueError("an answer that does not unpickle")

    runtime = build_runtime(settings, workers=CommitsThenGarbles())
    try:
        outcome = runtime.screener.screen(spam(), envelope())
        assert outcome.verdict.action is Action.TEMPFAIL and outcome.verdict.incident_id != stored[0]
        assert runtime.quarantine.settle(10)
        assert runtime.quarantine.list(ListFilter(limit=10)) == []
    finally:
        runtime.close()
