"""The database layer on both backends: transactions, placeholders, bounded waits, schema versions."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time

import pytest

from mailward.db import CUT_GRACE, Database, DatabaseError, Migration, PostgresDsn, SqliteFile, Timeout
from real_parts import require

STEP_1 = Migration(
    1,
    (
        "CREATE TABLE IF NOT EXISTS notes (seq {serial}, at {real} NOT NULL, text TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS notes_at ON notes (at)",
    ),
)
STEP_2 = Migration(2, ("ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT ''",))


@pytest.fixture(params=["sqlite", "postgresql"])
def make_db(request, tmp_path):
    """A factory of Databases on one fresh database of the parametrised backend."""
    dsn = request.getfixturevalue("fresh_pg_dsn") if request.param == "postgresql" else ""
    made: list[Database] = []

    def make(timeout: float = 5.0, pool_size: int = 1) -> Database:
        backend = PostgresDsn(dsn, timeout) if dsn else SqliteFile(tmp_path / "notes.sqlite3", busy_timeout=timeout)
        made.append(Database(backend, label="notes", timeout=timeout, pool_size=pool_size))
        return made[-1]

    yield make
    for db in made:
        db.close()


def test_a_fresh_database_gets_every_step_and_placeholders_work(make_db):
    db = make_db()
    assert db.schema_version("notes") == 0
    assert db.migrate("notes", (STEP_1, STEP_2)) == 2
    with db.transaction(write=True) as tx:
        tx.execute("INSERT INTO notes (at, text, author) VALUES (?, ?, ?)", (1.5, "it's ? here", "ann"))
    with db.transaction() as tx:
        assert tx.execute("SELECT text, author FROM notes WHERE at = ?", (1.5,)).fetchall() == [("it's ? here", "ann")]
    assert db.schema_version("notes") == 2
    assert db.migrate("notes", (STEP_1, STEP_2)) == 2  # opened again: nothing to do


def test_an_existing_database_of_the_current_shape_opens_unchanged(make_db):
    db = make_db()
    with db.transaction(write=True) as tx:  # made by a version that recorded no schema version
        for statement in STEP_1.statements:
            tx.execute(statement.format(serial=db.backend.serial, real=db.backend.real))
        tx.execute("INSERT INTO notes (at, text) VALUES (?, ?)", (1.0, "kept"))
    assert db.migrate("notes", (STEP_1,)) == 1
    assert db.migrate("notes", (STEP_1, STEP_2)) == 2  # and a later step applies on top
    with db.transaction() as tx:
        assert tx.execute("SELECT text, author FROM notes").fetchall() == [("kept", "")]


def test_a_database_newer_than_the_code_is_refused(make_db):
    db = make_db()
    db.migrate("notes", (STEP_1, STEP_2))
    with pytest.raises(DatabaseError, match="version 2, newer than this Mailward knows"):
        db.migrate("notes", (STEP_1,))
    assert db.migrate("other", (Migration(1, ("CREATE TABLE IF NOT EXISTS other (x TEXT)",)),)) == 1  # per store


def test_an_error_rolls_back_and_becomes_the_store_error(make_db):
    db = make_db()
    db.migrate("notes", (STEP_1,))
    with (
        pytest.raises(DatabaseError, match=r"notes \((sqlite|postgresql)\)") as refused,
        db.transaction(write=True) as tx,
    ):
        tx.execute("INSERT INTO notes (at, text) VALUES (?, ?)", (1.0, "lost"))
        tx.execute("INSERT INTO notes (at, text) VALUES (?, ?)", (None, "refused"))
    assert db.conflict(refused.value) and not db.missing_table(refused.value)
    with pytest.raises(DatabaseError) as missing, db.transaction() as tx:
        tx.execute("SELECT * FROM no_such_notes")
    assert db.missing_table(missing.value) and not db.conflict(missing.value)
    with db.transaction() as tx:
        assert tx.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == 0
        tx.execute("SELECT 1")  # the connection is usable again


def test_a_thread_waits_for_a_busy_connection_no_longer_than_its_timeout(make_db):
    db = make_db(timeout=0.3, pool_size=1)
    db.migrate("notes", (STEP_1,))
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.transaction():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        with pytest.raises(DatabaseError, match="held its connections for 0.3 s"), db.transaction():
            pass
        assert time.monotonic() - started < 2.0
    finally:
        release.set()
        holder.join(10)
    with db.transaction() as tx:  # the connection came back to the pool
        tx.execute("SELECT 1")


def test_a_pool_reuses_idle_connections_and_never_exceeds_its_size(make_db):
    db = make_db(timeout=0.2, pool_size=2)
    with db.transaction() as a:
        first = a.connection
        with db.transaction() as b:
            assert b.connection is not first
            with pytest.raises(DatabaseError), db.transaction():
                pass
    with db.transaction() as again:
        assert again.connection in (first, b.connection)


def test_sqlite_writers_of_one_process_queue_within_their_deadline(tmp_path):
    from mailward.db import Timeout

    db = Database(SqliteFile(tmp_path / "w.sqlite3", busy_timeout=5.0), label="w", timeout=5.0, pool_size=4)
    db.migrate("notes", (STEP_1,))
    with db.transaction(write=True):
        started = time.monotonic()
        late = db.transaction(write=True, deadline=Timeout(0.2))
        with pytest.raises(DatabaseError, match="other writers held it for 0.2 s"), late:
            pass
        assert time.monotonic() - started < 2.0
    db.close()


def test_another_process_holding_the_sqlite_lock_is_waited_for_until_the_deadline(tmp_path):
    from mailward.db import Timeout

    db = Database(SqliteFile(tmp_path / "w.sqlite3", busy_timeout=5.0), label="w", timeout=5.0)
    db.migrate("notes", (STEP_1,))
    other = sqlite3.connect(tmp_path / "w.sqlite3", isolation_level=None)  # another process's writer
    other.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseError, match="locked"), db.transaction(write=True, deadline=Timeout(0.3)):
            pass
        assert time.monotonic() - started < 2.0
    finally:
        other.execute("ROLLBACK")
        other.close()
    db.close()


def test_postgresql_sessions_commit_durably_with_the_statement_timeout(fresh_pg_dsn):
    db = Database(PostgresDsn(fresh_pg_dsn, 4.0), label="notes", timeout=4.0)
    conn = db.connect()  # the test cluster runs with synchronous_commit = off
    try:
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "4s"
    finally:
        conn.close()
    with db.transaction() as tx:
        tx.relax()  # this transaction alone
        assert tx.execute("SHOW synchronous_commit").fetchone()[0] == "off"
    with db.transaction() as tx:
        assert tx.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    db.close()


def _end_sessions(dsn: str, pids: set[int]) -> None:
    """End ``pids`` server-side, as a restart or failover does, and wait until they are gone."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as killer:
        for pid in pids:
            killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        while killer.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(pids),)).fetchone()[0]:
            time.sleep(0.02)


def test_sessions_the_server_ended_are_not_used(fresh_pg_dsn):
    """After a restart every idle pooled session is dead: the next calls get fresh ones instead of failing."""
    db = Database(PostgresDsn(fresh_pg_dsn, 4.0), label="notes", timeout=4.0, pool_size=3)
    with db.transaction() as a, db.transaction() as b, db.transaction() as c:
        pids = {tx.execute("SELECT pg_backend_pid()").fetchone()[0] for tx in (a, b, c)}
    _end_sessions(fresh_pg_dsn, pids)
    for deadline in (None, Timeout(4.0), None, Timeout(4.0)):
        with db.transaction(deadline=deadline) as tx:
            assert tx.execute("SELECT pg_backend_pid()").fetchone()[0] not in pids
    db.close()


def test_a_session_found_dead_by_the_first_statement_is_replaced_once(fresh_pg_dsn, monkeypatch):
    """The idle check can miss a session ended a moment ago; nothing ran on it yet, so the call is not lost."""
    monkeypatch.setattr(PostgresDsn, "alive", lambda self, conn: True, raising=False)
    db = Database(PostgresDsn(fresh_pg_dsn, 4.0), label="notes", timeout=4.0)
    with db.transaction() as tx:
        pid = tx.execute("SELECT pg_backend_pid()").fetchone()[0]
    _end_sessions(fresh_pg_dsn, {pid})
    with db.transaction(deadline=Timeout(4.0)) as tx:
        assert tx.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
    db.close()


@pytest.mark.parametrize("deadline", [1.0, None])
def test_a_server_that_stops_answering_ends_the_transaction_at_its_deadline(fresh_pg_dsn, deadline):
    """A stopped server or a blackholed network never answers: the call raises soon after its deadline
    (or the statement timeout) instead of waiting for the server to come back."""
    from support.pgproxy import PgProxy

    proxy = PgProxy(fresh_pg_dsn)
    db = Database(PostgresDsn(proxy.dsn, 1.0), label="notes", timeout=1.0)
    with db.transaction() as tx:  # an idle pooled session, and a new one below
        tx.execute("SELECT 1")
    outcomes: list[str] = []

    def call() -> None:
        try:
            with db.transaction(deadline=None if deadline is None else Timeout(deadline)) as tx:
                tx.execute("SELECT 1")
            outcomes.append("answered")
        except DatabaseError as exc:
            outcomes.append(str(exc))

    proxy.stall()
    try:
        started = time.monotonic()
        callers = [threading.Thread(target=call), threading.Thread(target=call)]  # one gets a new session
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(1.0 + CUT_GRACE + 1.5)
        waited = time.monotonic() - started
    finally:
        proxy.resume()
    for caller in callers:
        caller.join(10)
    assert waited < 1.0 + CUT_GRACE + 1.5 and len(outcomes) == 2
    assert all("answered" not in o for o in outcomes), outcomes
    with db.transaction() as tx:  # the cut sessions were dropped
        assert tx.execute("SELECT 1").fetchone()[0] == 1
    db.close()
    proxy.close()


def test_a_commit_whose_answer_is_lost_is_reported_as_unconfirmed(fresh_pg_dsn):
    """The COMMIT reached the server but its answer did not come back: the store must treat it as maybe kept."""
    from support.pgproxy import COMMIT, PgProxy

    proxy = PgProxy(fresh_pg_dsn)
    db = Database(PostgresDsn(proxy.dsn, 4.0), label="notes", timeout=4.0)
    db.migrate("notes", [STEP_1])
    proxy.lose_reply_to(COMMIT)
    with pytest.raises(DatabaseError) as caught, db.transaction(deadline=Timeout(4.0)) as tx:
        tx.execute("INSERT INTO notes (at, text) VALUES (?, ?)", (1.0, "kept"))
    assert db.unconfirmed(caught.value)
    with pytest.raises(DatabaseError) as refused, db.transaction() as tx:
        tx.execute("INSERT INTO nowhere VALUES (1)")
    assert not db.unconfirmed(refused.value)  # an error the server answered is not
    with db.transaction() as tx:
        assert tx.execute("SELECT text FROM notes").fetchall() == [("kept",)]
    db.close()
    proxy.close()


def test_text_is_stored_alike_on_both_backends_without_nul(make_db):
    """PostgreSQL refuses NUL in text; both backends store U+FFFD instead (a decoded header may hold one)."""
    db = make_db()
    db.migrate("notes", [STEP_1])
    with db.transaction(write=True) as tx:
        tx.execute("INSERT INTO notes (at, text) VALUES (?, ?)", (1.0, "invoice\x00 \udce9"))
    with db.transaction() as tx:
        assert tx.execute("SELECT text FROM notes").fetchall() == [("invoice\ufffd \ufffd",)]


def test_each_stores_sqlite_file_from_before_schema_versions_opens_with_its_rows(tmp_path):
    """A site's databases made by the version before this layer open unchanged, at schema version 1."""
    from contextlib import closing

    from mailward.incidents import SubjectKind
    from mailward.incidents.store import SCHEMA as INCIDENTS
    from mailward.incidents.store import SqliteIncidentStore
    from mailward.quarantine.sqlite import DB_NAME, SqliteStore
    from mailward.quarantine.store import SCHEMA as QUARANTINE
    from mailward.training.ledger import SCHEMA as LEDGER
    from mailward.training.ledger import Ledger
    from mailward.web.accounts import SCHEMA as WEB
    from mailward.web.accounts import AccountStore

    def made_before(path, statements, row: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            for statement in statements:
                conn.execute(statement.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL"))
            conn.execute(row)
            conn.commit()

    made_before(
        tmp_path / "incidents.sqlite3",
        INCIDENTS,
        "INSERT INTO incident_blocks (kind, value, origin, reason, incident_id, created_at, created_by) "
        "VALUES ('account', 'alice', 'analyst', 'old', 'MW-1', 1.0, 'ann')",
    )
    made_before(
        tmp_path / "quarantine" / DB_NAME,
        QUARANTINE,
        "INSERT INTO quarantine_audit (quarantine_id, at, action, actor, host, origin, detail) "
        "VALUES ('MW-2', 1.0, 'delete', 'ann', 'ws', '', 'old')",
    )
    made_before(
        tmp_path / "ledger.sqlite",
        LEDGER,
        "INSERT INTO labels (digest, label, source, analyst, at) VALUES ('d1', 'spam', 'set', 'ann', 1.0)",
    )
    made_before(
        tmp_path / "web.sqlite3",
        WEB,
        "INSERT INTO web_audit (at, account, action, client, detail) VALUES (1.0, 'ann', 'login', '', '')",
    )
    with closing(SqliteIncidentStore(tmp_path / "incidents.sqlite3")) as incidents:
        assert [b.value for b in incidents.blocks(SubjectKind.ACCOUNT, include_inactive=True)] == ["alice"]
        assert incidents.database.schema_version("incidents") == 3  # 2: counters in buckets, 3: blocks by subject
    with SqliteStore(tmp_path / "quarantine") as quarantine:
        assert [e.detail for e in quarantine.history("MW-2")] == ["old"]
        assert quarantine.database.schema_version("quarantine") == 2  # step 1, then the retry key (step 2)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.current_label("d1") == "spam" and ledger.last_seq() == 1
        assert ledger.database.schema_version("ledger") == 1
    with closing(AccountStore(tmp_path / "web.sqlite3")) as web:
        assert [e.action for e in web.events("ann")] == ["login"]
        assert web.database.schema_version("web") == 1


def test_processes_opening_a_fresh_sqlite_file_together_all_connect(tmp_path):
    """Each scanning worker opens the stores as it starts. On a new file the workers race to switch it to WAL,
    and SQLite refuses that change at once ("database is locked"), without its busy handler, to a connection
    that would otherwise deadlock with another. Before the retry, about 1 in 100 such opens failed."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # fast to start, so the opens meet; the children use no threads
    answers = []
    for attempt in range(100):
        start, results = ctx.Barrier(6), ctx.SimpleQueue()
        path = tmp_path / f"fresh-{attempt}.sqlite3"
        racers = [ctx.Process(target=_open_together, args=(path, start, results)) for _ in range(6)]
        for racer in racers:
            racer.start()
        answers += [results.get() for _ in racers]
        for racer in racers:
            racer.join(10)
    assert [a for a in answers if a != "wal"] == []


def _open_together(path, start, results) -> None:
    start.wait()
    try:
        conn = SqliteFile(path, busy_timeout=5.0).connect()
        results.put(str(conn.execute("PRAGMA journal_mode").fetchone()[0]))
        conn.close()
    except Exception as exc:
        results.put(repr(exc))


def test_a_full_disk_before_the_shm_file_exists_is_named(tmp_path):
    """SQLite says only "disk I/O error" when it cannot make the -shm file; the cause is told instead."""
    require(os.geteuid() == 0 and shutil.which("mount") is not None, "a small tmpfs to fill needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        db = Database(SqliteFile(small / "w.sqlite3", busy_timeout=2.0), label="w", timeout=2.0)
        conn = db.connect()
        conn.execute("CREATE TABLE t (x)")
        conn.close()  # the last session closed: -wal and -shm are gone
        with open(small / "filler", "wb", buffering=0) as filler, pytest.raises(OSError):
            while True:
                filler.write(b"\0" * 4096)
        with pytest.raises(
            DatabaseError, match=r"^w \(sqlite\): cannot connect: disk full \(no space left on device\)$"
        ):
            db.connect()
        (small / "filler").unlink()
        db.connect().close()
    finally:
        subprocess.run(["umount", str(small)], check=True)
