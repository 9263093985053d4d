"""Counters in memory, flushed to the store: shared between hosts, bounded, never in the way of a message."""

from __future__ import annotations

import sqlite3
import time

import Milter
import pytest

from mailward.incidents import IncidentStoreError, Totals
from mailward.incidents.counting import WindowCounts
from mailward.incidents.records import Counter
from mailward.incidents.store import BUCKET, PostgresIncidentStore, SqliteIncidentStore
from support.incidents import wait_for
from support.mail import message
from support.milter import MilterClient

HOUR = {Counter.ACCOUNT: 3600.0}


def test_two_hosts_on_one_database_see_each_others_counts_after_a_flush(incident_store):
    clock = incident_store.clock
    mx1, mx2 = WindowCounts(incident_store(), HOUR, clock), WindowCounts(incident_store(), HOUR, clock)
    since = clock.now - 3600
    for _ in range(3):
        mx1.add(Counter.ACCOUNT, "alice", Totals(messages=1, recipients=2), since)
    assert mx2.add(Counter.ACCOUNT, "alice", Totals(messages=1), since).messages == 1  # not flushed yet
    mx1.flush()
    assert mx2.flush()[(Counter.ACCOUNT, "alice")] == Totals(messages=4, recipients=6)
    # From now on mx2 counts on top of both hosts' sums, in memory; mx1 learns of mx2's at its next flush.
    assert mx2.add(Counter.ACCOUNT, "alice", Totals(messages=1), since).messages == 5
    assert mx1.add(Counter.ACCOUNT, "alice", Totals(), since).messages == 3
    mx1.flush()
    assert mx1.add(Counter.ACCOUNT, "alice", Totals(), since).messages == 4
    assert mx1.settle(Counter.ACCOUNT, "alice").messages == 4  # mx2's fifth is still in mx2's memory


def test_the_window_slides_in_buckets(incident_store):
    clock, store = incident_store.clock, incident_store()
    counts = WindowCounts(store, {Counter.ACCOUNT: 100.0}, clock)
    counts.add(Counter.ACCOUNT, "bob", Totals(spam=2), None)
    counts.flush()
    clock.now += 100 + BUCKET
    assert counts.add(Counter.ACCOUNT, "bob", Totals(spam=1), clock.now - 100).spam == 3  # memory: as last read
    assert counts.settle(Counter.ACCOUNT, "bob").spam == 1  # the store: the first bucket left the window


def test_a_failed_flush_keeps_the_counts_for_the_next(tmp_path):
    store = SqliteIncidentStore(tmp_path / "incidents.sqlite3", timeout=0.2)
    counts = WindowCounts(store, HOUR)
    counts.add(Counter.ACCOUNT, "bob", Totals(spam=1), None)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(IncidentStoreError):
            counts.flush()
        assert counts.add(Counter.ACCOUNT, "bob", Totals(spam=1), time.time() - 3600).spam == 2  # kept in memory
    finally:
        blocker.rollback()
        blocker.close()
    try:
        assert counts.settle(Counter.ACCOUNT, "bob").spam == 2  # retried: nothing was lost
    finally:
        store.close()


def test_memory_is_bounded_oldest_subject_first(incident_store):
    counts = WindowCounts(incident_store(), HOUR, incident_store.clock, max_subjects=2)
    for name in ("a", "b", "a", "c"):
        counts.add(Counter.ACCOUNT, name, Totals(messages=1), None)
    assert counts.held() == 2 and counts.forgotten == 1  # "b" was the least recently counted
    assert set(counts.flush()) == {(Counter.ACCOUNT, "a"), (Counter.ACCOUNT, "c")}
    # A kind with no limit on is written, never summed: nothing of it is kept past its flush.
    counts.add(Counter.INBOUND_HOST, "192.0.2.1", Totals(messages=1), None)
    assert counts.held() == 2 and counts.forgotten == 1  # room was made from flushed subjects: nothing lost
    assert counts.flush() == {} and counts.held() == 1


OLD_COUNTERS = (
    "CREATE TABLE incident_counters (kind TEXT NOT NULL, subject TEXT NOT NULL, at {real} NOT NULL, "
    "messages INTEGER NOT NULL, recipients INTEGER NOT NULL, spam INTEGER NOT NULL, "
    "malware INTEGER NOT NULL, auth_failures INTEGER NOT NULL)"
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_older_database_keeps_its_counts_in_buckets(request, tmp_path, backend):
    """A database written by the version before buckets (one row per message) opens, its counts kept."""
    now = time.time()
    rows = [("account", "carol", at, 1, 2, 1, 0, 0) for at in (now - 7200, now - 30, now - 29, now - 1)]
    if backend == "sqlite":
        path = tmp_path / "incidents.sqlite3"
        conn = sqlite3.connect(path)
        with conn:
            conn.execute(OLD_COUNTERS.format(real="REAL"))
            conn.executemany("INSERT INTO incident_counters VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.close()
        store = SqliteIncidentStore(path)

        def old_table() -> bool:
            with sqlite3.connect(path) as check:
                return bool(check.execute("SELECT 1 FROM sqlite_master WHERE name = 'incident_counters'").fetchall())
    else:
        import psycopg

        dsn = request.getfixturevalue("fresh_pg_dsn")
        with psycopg.connect(dsn) as pg:
            pg.execute(OLD_COUNTERS.format(real="DOUBLE PRECISION"))
            pg.cursor().executemany("INSERT INTO incident_counters VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)
        store = PostgresIncidentStore(dsn)

        def old_table() -> bool:
            with psycopg.connect(dsn) as check:
                return check.execute("SELECT to_regclass('incident_counters') IS NOT NULL").fetchone()[0]

    try:
        assert store.record(Counter.ACCOUNT, "carol", Totals(), since=now - 3600) == Totals(3, 6, 3, 0, 0)
        assert store.prune(now - 3600) == 1  # the event of two hours ago, in its own bucket
        assert not old_table()  # moved, then dropped
    finally:
        store.close()


def test_a_stalled_database_does_not_delay_a_message_and_stop_flushes(tmp_path, monkeypatch, milter_runtime):
    rt = milter_runtime(tmp_path, "[incidents]\nflush_interval = 0.05\n[incidents.account]\nmessages = 1000\n")
    incidents = rt.kept_incidents()
    client = MilterClient(rt, monkeypatch)
    _, ctx = client.connect(auth="dora")
    assert client.send(ctx, message()[1]) == Milter.ACCEPT
    assert wait_for(lambda: incidents.store.record(Counter.ACCOUNT, "dora", Totals(), 0).messages == 1)
    # Another process takes the database and keeps it: every flush now waits on it.
    blocker = sqlite3.connect(incidents.store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        assert wait_for(lambda: incidents.counts.flushing)
        for _ in range(5):
            started = time.monotonic()
            assert client.send(ctx, message()[1]) == Milter.ACCEPT
            assert time.monotonic() - started < 0.5  # a scan and no database: far below the store's timeout
        assert incidents.counts.flushing  # still stuck in the store
    finally:
        blocker.rollback()
        blocker.close()
    assert wait_for(lambda: incidents.store.record(Counter.ACCOUNT, "dora", Totals(), 0).messages == 6)


def test_a_clean_stop_flushes_what_was_counted(tmp_path, monkeypatch, milter_runtime):
    rt = milter_runtime(tmp_path, "[incidents]\nflush_interval = 60\n")  # no timed flush within the test
    client = MilterClient(rt, monkeypatch)
    _, ctx = client.connect(auth="erik")
    for _ in range(3):
        assert client.send(ctx, message()[1]) == Milter.ACCEPT
    path = rt.kept_incidents().store.path
    assert rt.kept_incidents().counts.held() == 1
    rt.close()
    store = SqliteIncidentStore(path)
    try:
        assert store.record(Counter.ACCOUNT, "erik", Totals(), 0) == Totals(messages=3, recipients=3)
    finally:
        store.close()
