"""A verdict is final only once it is stored: a slow store answers in time, and a refused put keeps nothing.

Real stalls: SQLite locked by another process (``BEGIN EXCLUSIVE`` held in a
subprocess) and a PostgreSQL cluster stopped with SIGSTOP.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from mailward.config import load_settings
from mailward.errors import ConfigError, StoreError
from mailward.quarantine import ListFilter
from mailward.quarantine.sqlite import DB_NAME, SqliteStore
from mailward.quarantine.store import COMMIT_GRACE, Deadline
from mailward.source import MessageSource
from real_parts import require
from support.mail import plain_mail as message
from support.quarantine import envelope, spam_case
from support.stalls import Locker, stalled_reply_store

BUDGET = 1.0
SLACK = 0.5  # thread start-up and a loaded 2-core machine


def _put(store, subject: str) -> str:
    verdict, evidence = spam_case()
    return store.put(MessageSource.of(message(subject)), envelope(), verdict, evidence)


def _timed_puts(store, count: int) -> list[tuple[float, BaseException | str]]:
    """``count`` puts at once from milter-like threads: (seconds, ID or exception) each."""
    results: list = []
    lock = threading.Lock()

    def one(n: int) -> None:
        started = time.monotonic()
        try:
            outcome: BaseException | str = _put(store, f"stalled {n}")
        except BaseException as exc:
            outcome = exc
        with lock:
            results.append((time.monotonic() - started, outcome))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_sqlite_locked_longer_than_the_budget_refuses_and_keeps_nothing(tmp_path):
    store = SqliteStore(tmp_path / "quarantine", write_timeout=BUDGET)
    try:
        locker = Locker(tmp_path / "quarantine" / DB_NAME)
        try:
            results = _timed_puts(store, 4)
        finally:
            locker.release()
        for seconds, outcome in results:
            assert isinstance(outcome, StoreError), outcome
            assert seconds <= BUDGET + COMMIT_GRACE + SLACK
        assert store.settle(30)
        assert store.list(ListFilter(limit=100)) == []  # nothing stored, even after the lock went
        assert list((tmp_path / "quarantine" / "messages").glob("*")) == []
        retry = _put(store, "retry")  # the sender's retry is stored once
        assert [r.id for r in store.list(ListFilter(limit=100))] == [retry]
    finally:
        store.close()


def test_sqlite_lock_released_within_the_budget_stores(tmp_path):
    store = SqliteStore(tmp_path / "quarantine", write_timeout=10.0)
    try:
        locker = Locker(tmp_path / "quarantine" / DB_NAME)
        outcome: list = []
        putter = threading.Thread(target=lambda: outcome.append(_put(store, "waits for the lock")))
        putter.start()
        locker.release()
        putter.join(timeout=30)
        assert [r.id for r in store.list(ListFilter(limit=100))] == outcome
    finally:
        store.close()


def test_puts_gathered_behind_a_locked_database_share_one_commit(tmp_path):
    """Group commit: puts that queue while one commit waits are committed together, not one by one.

    Measured by what the commits append to the WAL: a commit writes every
    page it touched, so six commits of one row each append about six times
    what one does, and the two commits expected here (the put that waited
    on the lock, then everything gathered behind it) about two and a half.
    """
    store = SqliteStore(tmp_path / "quarantine", write_timeout=30.0)
    wal = tmp_path / "quarantine" / (DB_NAME + "-wal")
    messages = tmp_path / "quarantine" / "messages"
    try:
        _put(store, "first")
        before = wal.stat().st_size
        _put(store, "one alone")
        one_commit = wal.stat().st_size - before
        locker = Locker(tmp_path / "quarantine" / DB_NAME)
        try:
            putters = [threading.Thread(target=_put, args=(store, f"gathered {n}")) for n in range(6)]
            for putter in putters:
                putter.start()
            deadline = time.monotonic() + 30
            while len(list(messages.glob("*.eml"))) < 8:  # every file written: all six wait to commit
                assert time.monotonic() < deadline
                time.sleep(0.01)
            before = wal.stat().st_size
        finally:
            locker.release()
        for putter in putters:
            putter.join(timeout=30)
        assert len(store.list(ListFilter(limit=100))) == 8
        assert wal.stat().st_size - before <= 4 * one_commit
    finally:
        store.close()


def test_a_write_that_finishes_after_its_caller_gave_up_is_handed_back():
    deadline = Deadline(10.0)
    assert deadline.abandon()
    assert not deadline.finish()  # the writer must withdraw what it committed
    with pytest.raises(StoreError):
        deadline.check("commit")  # and must not commit at all if it has not yet
    finished = Deadline(10.0)
    assert finished.finish()
    assert not finished.abandon()  # the caller takes the stored result


def test_a_commit_confirmed_after_the_caller_gave_up_is_withdrawn(tmp_path):
    reply = threading.Event()
    store = stalled_reply_store(tmp_path / "quarantine", reply, BUDGET)
    try:
        reply.clear()
        verdict, evidence = spam_case()
        started = time.monotonic()
        with pytest.raises(StoreError):
            store.put(MessageSource.of(message("late")), envelope(), verdict, evidence)
        assert time.monotonic() - started <= BUDGET + COMMIT_GRACE + SLACK
        reply.set()
        assert store.settle(30)
        assert store.list(ListFilter(limit=100)) == []  # tempfailed, so not kept
        assert list((tmp_path / "quarantine" / "messages").glob("*")) == []
        assert [e.action for e in store.history(verdict.incident_id)] == ["quarantine", "withdraw"]
    finally:
        store.close()


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_cluster():
    """A cluster of its own: this test stops it."""
    from pg_server import PostgresServer, binaries

    require(binaries() is not None, "PostgreSQL binaries not installed (apt package postgresql)")
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        _signal_cluster(server, signal.SIGCONT)
        server.stop()


def _cluster_pids(server) -> list[int]:
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(entry.name))
    return pids


def _signal_cluster(server, sig: int) -> None:
    for pid in _cluster_pids(server):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def test_postgresql_stopped_refuses_in_time_and_keeps_nothing(pg_cluster):
    from mailward.quarantine.postgres import PostgresStore
    from pg_server import create_database

    store = PostgresStore(create_database(pg_cluster.dsn), write_timeout=BUDGET)
    try:
        before = _put(store, "before the stop")
        _signal_cluster(pg_cluster, signal.SIGSTOP)
        try:
            results = _timed_puts(store, 3)
        finally:
            _signal_cluster(pg_cluster, signal.SIGCONT)
        for seconds, outcome in results:
            assert isinstance(outcome, StoreError), outcome
            assert seconds <= BUDGET + COMMIT_GRACE + SLACK
        assert store.settle(60)  # the stalled writers saw the server again
        assert [r.id for r in store.list(ListFilter(limit=100))] == [before]
        retry = _put(store, "retry")
        assert {r.id for r in store.list(ListFilter(limit=100))} == {before, retry}
    finally:
        store.close()


def test_postgresql_stopped_ends_a_read_on_a_pooled_session_at_its_deadline(pg_cluster):
    """The server's statement timeout cannot fire while it is stopped: the client cuts the session."""
    from mailward.db import CUT_GRACE
    from mailward.quarantine.postgres import PostgresStore
    from pg_server import create_database

    store = PostgresStore(create_database(pg_cluster.dsn), write_timeout=BUDGET)
    outcome: list[object] = []

    def scrape() -> None:
        try:
            outcome.append(store.stats(wait=BUDGET))
        except StoreError as exc:
            outcome.append(exc)

    try:
        _put(store, "held")
        store.stats()  # an idle pooled session, as on a busy host
        _signal_cluster(pg_cluster, signal.SIGSTOP)
        try:
            scraper = threading.Thread(target=scrape, daemon=True)
            scraper.start()
            scraper.join(BUDGET + CUT_GRACE + SLACK + 1.0)
        finally:
            _signal_cluster(pg_cluster, signal.SIGCONT)
        assert outcome and isinstance(outcome[0], StoreError), outcome
        scraper.join(30)
        assert store.stats() == (1, len(message("held")))
    finally:
        store.close()


@pytest.mark.parametrize("retry_window", [0.0, 5 * 86400.0])
def test_a_put_whose_commit_answer_is_lost_keeps_nothing(fresh_pg_dsn, retry_window):
    """The COMMIT reached the server, its answer did not: the sender is tempfailed, so the record is withdrawn."""
    import psycopg

    from mailward.quarantine.postgres import PostgresStore
    from support.pgproxy import COMMIT, PgProxy

    proxy = PgProxy(fresh_pg_dsn)
    store = PostgresStore(proxy.dsn, write_timeout=2.0, retry_window=retry_window)
    try:
        proxy.lose_reply_to(COMMIT)
        with pytest.raises(StoreError):
            _put(store, "answer lost")
        assert store.settle(10)
        with psycopg.connect(fresh_pg_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM quarantine_chunks").fetchone()[0] == 0
            actions = [a for (a,) in conn.execute("SELECT action FROM quarantine_audit ORDER BY seq")]
        assert actions == ["quarantine", "withdraw"]
    finally:
        store.close()
        proxy.close()


def test_a_put_whose_backend_stalls_mid_commit_keeps_nothing(fresh_pg_dsn, monkeypatch):
    """The put's own server process stops with its COMMIT unread (a slow disk, a synchronous standby):
    the put is cut and tempfailed, and the withdrawal found no row yet and stopped there; when the
    backend went on, its COMMIT landed and the record stayed. The withdrawal now waits for it."""
    import contextlib
    import os
    import signal

    import psycopg

    from mailward.quarantine.postgres import PostgresStore

    stopped: list[int] = []
    commit = psycopg.Connection.commit

    def stalling_commit(self):
        if not stopped and self.execute("SELECT count(*) FROM quarantine_chunks").fetchone()[0]:
            stopped.append(self.info.backend_pid)
            os.kill(stopped[0], signal.SIGSTOP)  # the COMMIT waits in the server's socket
        return commit(self)

    store = PostgresStore(fresh_pg_dsn, write_timeout=2.0, retry_window=0.0)
    monkeypatch.setattr(psycopg.Connection, "commit", stalling_commit)  # once the schema is made
    try:
        with pytest.raises(StoreError):
            _put(store, "stalled commit")
        assert stopped
        settled_while_stalled = store.settle(3)  # it ended there, before the COMMIT could land
        os.kill(stopped[0], signal.SIGCONT)
        assert store.settle(30)
        with psycopg.connect(fresh_pg_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
            actions = [a for (a,) in conn.execute("SELECT action FROM quarantine_audit ORDER BY seq")]
        assert actions == ["quarantine", "withdraw"] and not settled_while_stalled
    finally:
        if stopped:
            with contextlib.suppress(ProcessLookupError):  # gone once its COMMIT was done
                os.kill(stopped[0], signal.SIGCONT)
        store.close()


def test_postgresql_sessions_commit_durably_with_a_statement_timeout(pg_cluster):
    from mailward.quarantine.postgres import PostgresStore
    from pg_server import create_database

    store = PostgresStore(create_database(pg_cluster.dsn), write_timeout=7.5)
    try:
        conn = store.database.connect()  # the test cluster runs with synchronous_commit = off
        try:
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "7500ms"
        finally:
            conn.close()
    finally:
        store.close()


# -- configuration -----------------------------------------------------------------------------


def test_write_timeout_is_validated_against_the_milter_timeout():
    assert load_settings(None).quarantine.write_timeout > 0
    with pytest.raises(ConfigError, match="quarantine.write_timeout"):
        load_settings(None, {"quarantine": {"write_timeout": 0}})
    with pytest.raises(ConfigError, match="quarantine.write_timeout"):
        load_settings(
            None, {"milter": {"timeout": 60, "message_deadline": 50.0}, "quarantine": {"write_timeout": 10.0}}
        )
    settings = load_settings(
        None, {"milter": {"timeout": 60, "message_deadline": 40.0}, "quarantine": {"write_timeout": 15.0}}
    )
    assert settings.quarantine.write_timeout == 15.0


# -- end to end --------------------------------------------------------------------------------


@pytest.mark.postfix
def test_postfix_sender_is_tempfailed_and_the_retry_is_stored_once(postfix, milter, tmp_path):
    from support.mail import eicar_message

    milter('[policy.inbound]\nmalware_action = "quarantine"\n[quarantine]\nwrite_timeout = 2.0\n')
    qdir = tmp_path / "state" / "quarantine"
    mid, raw = eicar_message()
    locker = Locker(qdir / DB_NAME)
    try:
        started = time.monotonic()
        code, text = postfix.send(raw)
        elapsed = time.monotonic() - started
    finally:
        locker.release()
    assert code == 451 and "incident MW-" in text
    assert elapsed < 20.0 + 2.0 + COMMIT_GRACE  # message_deadline + write_timeout: before Postfix's 30 s
    with SqliteStore(qdir) as store:
        assert store.list(ListFilter(limit=100)) == []  # tempfailed, so not kept (the lock is gone now)
        assert postfix.send(raw)[0] == 250  # the sender's retry...
        stored = store.list(ListFilter(limit=100))
        assert len(stored) == 1 and mid.encode() in store.read(stored[0].id)  # ...is kept once
    assert postfix.milter_actions(mid, 2) == ["reject", "discard"]  # a 4xx, then the retry held in quarantine
    assert postfix.delivered(mid, timeout=0) is None


def test_postgresql_incident_sessions_commit_durably_with_a_statement_timeout(pg_cluster):
    from mailward.incidents.store import PostgresIncidentStore
    from pg_server import create_database

    store = PostgresIncidentStore(create_database(pg_cluster.dsn), timeout=4.0)
    try:
        conn = store.database.connect()
        try:
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "4s"
        finally:
            conn.close()
    finally:
        store.close()
