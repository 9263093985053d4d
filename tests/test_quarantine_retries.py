"""A retried message is stored once: the sender's retry of a stored message is answered with its record.

Every store test runs on SQLite and PostgreSQL (``store`` fixture); the
retry key is the worker's (:func:`mailward.evidence.retry_key`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import replace

import pytest

from mailward.actor import Actor
from mailward.config import ReputationSettings, Settings
from mailward.db import Database, SqliteFile
from mailward.envelope import Direction, Envelope
from mailward.errors import ConfigError, StoreError
from mailward.evidence import Evidence, MessageFacts, retry_key
from mailward.quarantine import ListFilter, open_store
from mailward.quarantine.sqlite import DB_NAME, MIGRATIONS, SqliteStore
from mailward.quarantine.store import COMMIT_GRACE
from mailward.source import MessageSource
from mailward.verdict import Action
from support.mail import gtube_message
from support.mail import plain_mail as message
from support.milter import settings_for
from support.quarantine import envelope, spam_case

ANALYST = Actor("analyst1", "review-host", "ssh 192.0.2.50")


def received(queue_id: str, when: str) -> bytes:
    """The Received field Postfix prepends and hands the milter: new queue ID and time on every attempt."""
    return (
        b"Received: from mx.example.org (mx.example.org [192.0.2.7])\r\n"
        b"\tby mail.example.net (Postfix) with ESMTP id " + queue_id.encode() + b"\r\n"
        b"\tfor <bob@example.net>; " + when.encode() + b"\r\n"
    )


def attempt(raw: bytes, queue_id: str, when: str = "Sun, 6 Dec 2026 23:00:00 +0000") -> tuple[bytes, Envelope]:
    """One delivery attempt of ``raw``: our MTA's Received on top, its queue ID in the envelope."""
    delivered = received(queue_id, when) + raw
    return delivered, replace(envelope(), queue_id=queue_id)


def key_of(raw: bytes, env: Envelope) -> str:
    return retry_key(raw, raw.index(b"\r\n\r\n"), env.queue_id, env.mail_from, env.recipients)


def put(store, raw: bytes, env: Envelope) -> tuple[str, str]:
    """Put one attempt as the screener does (a new incident ID each); (returned ID, the attempt's incident)."""
    verdict, evidence = spam_case()
    facts = MessageFacts(subject="Cheap pills", header_from="alice@example.org", retry_key=key_of(raw, env))
    return store.put(MessageSource.of(raw), env, verdict, replace(evidence, message=facts)), verdict.incident_id


# -- the key ---------------------------------------------------------------------------------------


def test_the_key_leaves_out_only_our_own_received_field():
    raw = received("1ABCDE", "Fri, 4 Dec 2026 09:00:00 +0000").replace(b"mail.example.net", b"relay.example.org")
    raw += message("Cheap pills")
    first, env1 = attempt(raw, "4QX1")
    retry, env2 = attempt(raw, "7ZZ9", "Sun, 6 Dec 2026 23:30:00 +0000")
    assert key_of(first, env1) == key_of(retry, env2)  # our Received differs, the sender's does not count twice
    other_relay, env3 = attempt(raw.replace(b"1ABCDE", b"2BCDEF"), "7ZZ9")
    assert key_of(other_relay, env3) != key_of(retry, env2)  # the sender's own Received is the sender's bytes
    assert key_of(*attempt(message("Cheap pills!"), "4QX1")) != key_of(*attempt(message("Cheap pills"), "4QX1"))
    assert key_of(first, replace(env1, recipients=("carol@example.net",))) != key_of(first, env1)
    assert key_of(first, replace(env1, mail_from="mallory@example.org")) != key_of(first, env1)
    # Recipients in another order are the same delivery; no queue ID: nothing is left out.
    two = replace(env1, recipients=("bob@example.net", "carol@example.net"))
    assert key_of(first, two) == key_of(first, replace(two, recipients=tuple(reversed(two.recipients))))
    assert key_of(first, replace(env1, queue_id="")) != key_of(retry, replace(env2, queue_id=""))


def added(raw: bytes, queue_id: str, when: str, message_id: bool = True) -> bytes:
    """``raw`` as Postfix's cleanup hands it on when it lacks Date (and Message-ID): the fields at the end."""
    head, body = raw.split(b"\r\n\r\n", 1)
    if message_id:
        head += b"\r\nMessage-Id: <20261206230000." + queue_id.encode() + b"@mail.example.net>"
    return head + b"\r\nDate: " + when.encode() + b"\r\n\r\n" + body


def test_the_key_leaves_out_the_message_id_and_date_our_mta_added():
    raw = message("Cheap pills")
    first, env1 = attempt(added(raw, "4QX1", "Sun,  6 Dec 2026 23:00:00 +0000 (UTC)"), "4QX1")
    retry, env2 = attempt(added(raw, "7ZZ9", "Sun,  6 Dec 2026 23:00:01 +0000 (UTC)"), "7ZZ9")
    assert key_of(first, env1) == key_of(retry, env2)
    no_id = [
        attempt(added(raw, q, f"Sun, 6 Dec 2026 23:00:0{n} +0100", message_id=False), q) for n, q in enumerate("AB")
    ]
    assert key_of(*no_id[0]) == key_of(*no_id[1])
    with_to = [attempt(added(raw, q, f"Mon,  7 Dec 2026 0{n}:00:00 +0000 (UTC)") + b"", q) for n, q in enumerate("CD")]
    with_to = [(r.replace(b"\r\n\r\n", b"\r\nTo: undisclosed-recipients:;\r\n\r\n", 1), e) for r, e in with_to]
    assert key_of(*with_to[0]) == key_of(*with_to[1])  # fields the MTA adds after them are passed over
    # The sender's own fields count: a Date in another format, a Message-ID not naming our queue ID,
    # a Date followed by a field the MTA does not add, and everything without a queue ID.
    assert key_of(*attempt(added(raw, "4QX1", "6 Dec 2026 23:00:00 +0000"), "4QX1")) != key_of(
        *attempt(added(raw, "4QX1", "6 Dec 2026 23:00:01 +0000"), "4QX1")
    )
    assert key_of(*attempt(added(raw, "4QX1", "Sun,  6 Dec 2026 23:00:00 +0000 (UTC)"), "4QX1")) != key_of(
        *attempt(added(raw, "4QX1", "Sun,  6 Dec 2026 23:00:00 +0000 (UTC)"), "7ZZ8")
    )  # the Message-ID names 4QX1, which is not this attempt's queue ID
    dated = [attempt(added(raw, "4QX1", f"Sun,  6 Dec 2026 23:00:0{n} +0000 (UTC)"), "4QX1") for n in (0, 1)]
    dated = [(r.replace(b"\r\n\r\n", b"\r\nX-Mailer: m\r\n\r\n", 1), e) for r, e in dated]
    assert key_of(*dated[0]) != key_of(*dated[1])
    assert key_of(first, replace(env1, queue_id="")) != key_of(retry, replace(env2, queue_id=""))


# -- the store (SQLite and PostgreSQL) --------------------------------------------------------------


def test_a_retry_is_answered_with_the_stored_record(store, clock):
    raw = message("Cheap pills")
    first, incident = put(store, *attempt(raw, "4QX1"))
    clock.now += 3600
    again, retry_incident = put(store, *attempt(raw, "7ZZ9"))
    assert first == incident and again == first and retry_incident != first
    assert [r.id for r in store.list(ListFilter(limit=10))] == [first]
    assert store.read(first).endswith(raw)
    events = store.history(first)
    assert [e.action for e in events] == ["quarantine", "retry"]
    assert events[1].detail == f"retry of {first}: incident {retry_incident}, queue 7ZZ9"
    assert store.history(retry_incident) == []
    if store.backend == "sqlite":
        assert [p.name for p in (store.directory / "messages").iterdir()] == [f"{first}.eml"]


def test_another_message_or_a_put_without_a_key_is_a_record_of_its_own(store):
    first, _ = put(store, *attempt(message("Cheap pills"), "4QX1"))
    other, _ = put(store, *attempt(message("Cheaper pills"), "7ZZ9"))
    verdict, evidence = spam_case()
    unkeyed = store.put(MessageSource.of(message("Cheap pills")), envelope(), verdict, evidence)
    assert len({first, other, unkeyed}) == 3
    assert len(store.list(ListFilter(limit=10))) == 3


def test_a_withdrawn_or_deleted_record_does_not_absorb_the_retry(store):
    raw = message("Cheap pills")
    withdrawn, _ = put(store, *attempt(raw, "4QX1"))
    store.delete(withdrawn, store._writer, "withdraw", "stored after the deadline")
    retry, _ = put(store, *attempt(raw, "7ZZ9"))
    assert retry != withdrawn and store.get(retry) is not None  # the retry is stored: nothing is lost
    store.delete(retry, ANALYST)
    third, _ = put(store, *attempt(raw, "8AA1"))
    assert third not in (withdrawn, retry) and [r.id for r in store.list(ListFilter(limit=10))] == [third]


def test_a_retry_after_the_window_is_a_new_record(store, clock):
    store.retry_window = 86400.0
    raw = message("Cheap pills")
    first, _ = put(store, *attempt(raw, "4QX1"))
    clock.now += 86401
    later, _ = put(store, *attempt(raw, "7ZZ9"))
    assert later != first and len(store.list(ListFilter(limit=10))) == 2
    store.retry_window = 0.0  # no deduplication at all
    assert put(store, *attempt(raw, "8AA1"))[0] not in (first, later)


def test_concurrent_puts_of_one_message_end_in_one_record(store_factory):
    """Threads of one store (SQLite: one group commit or several), and on PostgreSQL two stores (two hosts)."""
    stores = [store_factory()] + ([store_factory()] if store_factory.backend == "postgresql" else [])
    raw = message("Cheap pills")
    count = 8
    ready = threading.Barrier(count)
    ids: list[str] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        ready.wait()
        stored, _ = put(stores[n % len(stores)], *attempt(raw, f"4QX{n}"))
        with lock:
            ids.append(stored)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = stores[0].list(ListFilter(limit=100))
    assert len(records) == 1 and ids == [records[0].id] * count
    assert [e.action for e in stores[0].history(records[0].id)] == ["quarantine"] + ["retry"] * (count - 1)


# -- migration ---------------------------------------------------------------------------------------


def test_a_database_of_the_previous_schema_opens_and_migrates(tmp_path, clock):
    directory = tmp_path / "quarantine"
    directory.mkdir(mode=0o700)
    old = Database(SqliteFile(directory / DB_NAME, busy_timeout=5.0), label="old", error=StoreError, timeout=5.0)
    old.migrate("quarantine", MIGRATIONS[:1])  # what the previous release made
    old.close()
    with SqliteStore(directory, clock=clock) as store:
        assert store.database.schema_version("quarantine") == 2
        raw = message("Cheap pills")
        first, _ = put(store, *attempt(raw, "4QX1"))
        assert put(store, *attempt(raw, "7ZZ9"))[0] == first
    db = sqlite3.connect(directory / DB_NAME)
    try:
        indexes = {row[1]: row[2] for row in db.execute("PRAGMA index_list(quarantine)")}
    finally:
        db.close()
    assert indexes["quarantine_retry"] == 1  # unique


def test_a_postgresql_database_of_the_previous_schema_opens_and_migrates(fresh_pg_dsn, clock):
    from mailward.db import PostgresDsn
    from mailward.quarantine.postgres import MIGRATIONS as PG_MIGRATIONS
    from mailward.quarantine.postgres import PostgresStore

    old = Database(PostgresDsn(fresh_pg_dsn, 5.0), label="old", error=StoreError, timeout=5.0)
    old.migrate("quarantine", PG_MIGRATIONS[:1])
    old.close()
    store = PostgresStore(fresh_pg_dsn, clock=clock)
    try:
        assert store.database.schema_version("quarantine") == 2
        raw = message("Cheap pills")
        first, _ = put(store, *attempt(raw, "4QX1"))
        assert put(store, *attempt(raw, "7ZZ9"))[0] == first
    finally:
        store.close()


# -- configuration -----------------------------------------------------------------------------------


def test_retry_window_is_validated_where_it_is_loaded(tmp_path):
    assert settings_for(tmp_path, "[quarantine]\nretry_window = 3600\n").quarantine.retry_window == 3600
    with pytest.raises(ConfigError, match="quarantine.retry_window"):
        settings_for(tmp_path, "[quarantine]\nretry_window = -1\n")
    settings = settings_for(tmp_path, "[quarantine]\nretry_window = 3600\n")
    with open_store(settings) as store:
        assert store.retry_window == 3600


# -- withdrawal that does not give up ----------------------------------------------------------------


class _Seen(logging.Handler):
    """An event set when the store logs a line containing ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text, self.event = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def test_a_failed_withdrawal_is_retried_until_it_succeeds(tmp_path):
    from support.stalls import Locker, stalled_reply_store

    failed = _Seen("could not be withdrawn yet")
    logger = logging.getLogger("mailward.quarantine.store")
    logger.addHandler(failed)
    reply = threading.Event()
    budget = 1.0  # the stalled put's write timeout
    store = stalled_reply_store(tmp_path / "quarantine", reply, budget)
    locker = None
    try:
        reply.clear()
        verdict, evidence = spam_case()
        with pytest.raises(StoreError):
            store.put(MessageSource.of(message("late")), envelope(), verdict, evidence)
        locker = Locker(tmp_path / "quarantine" / DB_NAME)  # the database is still locked when it withdraws
        reply.set()
        assert failed.event.wait(budget + COMMIT_GRACE + 30)
        assert store.get(verdict.incident_id) is not None  # not withdrawn yet...
        locker.release()
        assert store.settle(30)  # ...until the background retry gets the lock
        assert store.list(ListFilter(limit=100)) == []
        assert [e.action for e in store.history(verdict.incident_id)] == ["quarantine", "withdraw"]
    finally:
        if locker is not None:
            locker.release()
        logger.removeHandler(failed)
        store.close()


def test_a_record_that_answered_a_retry_is_not_withdrawn(store):
    """The withdrawal and the retry race: whichever comes first, one copy is kept and the sender told so."""
    raw = message("Cheap pills")
    first, _ = put(store, *attempt(raw, "4QX1"))
    assert put(store, *attempt(raw, "7ZZ9"))[0] == first  # the retry is answered: that sender was told it is stored
    assert store._withdraw_once(first)  # the late withdrawal of the first attempt then keeps it
    assert [r.id for r in store.list(ListFilter(limit=10))] == [first]


# -- the screener: the first reply is lost ------------------------------------------------------------


def test_a_retry_after_a_lost_reply_is_stored_once_and_told_the_same_incident(tmp_path):
    """The milter died between COMMIT and reply (Postfix tempfailed): the retry gets the stored record's ID."""
    from mailward.runtime import InProcessScanner
    from mailward.screening import Screener

    settings = replace(Settings(), state_dir=str(tmp_path), reputation=ReputationSettings(enabled=False))
    scanner = InProcessScanner.from_settings(settings)
    store = open_store(settings)
    try:
        screener = Screener(settings, scanner, store)
        _, raw = gtube_message()
        base = Envelope(
            mail_from="a@example.org", recipients=("u@example.test",), client_address="192.0.2.9"
        ).with_direction(Direction.INBOUND)
        lost = screener.screen(
            MessageSource.of(received("4QX1", "Sun, 6 Dec 2026 23:00:00 +0000") + raw), replace(base, queue_id="4QX1")
        )
        assert lost.verdict.action is Action.QUARANTINE and lost.quarantine_id == lost.verdict.incident_id
        retry = screener.screen(
            MessageSource.of(received("7ZZ9", "Sun, 6 Dec 2026 23:05:00 +0000") + raw), replace(base, queue_id="7ZZ9")
        )
        assert retry.verdict.action is Action.QUARANTINE
        assert retry.quarantine_id == lost.quarantine_id == retry.verdict.incident_id  # what the sender is told
        assert [r.id for r in store.list(ListFilter(limit=10))] == [lost.quarantine_id]
        assert [e.action for e in store.history(lost.quarantine_id)] == ["quarantine", "retry"]
    finally:
        store.close()
        scanner.close()


# -- through Postfix ---------------------------------------------------------------------------------


def test_the_same_message_through_postfix_twice_is_stored_once(postfix, milter, tmp_path):
    """Two deliveries of the same bytes by the same client through real Postfix: one record, one retry event."""
    from support.mail import eicar_message

    milter('[policy.inbound]\nmalware_action = "quarantine"\n')
    mid, raw = eicar_message()
    assert postfix.send(raw)[0] == 250
    assert postfix.send(raw)[0] == 250  # the sender's retry (its first reply lost): accepted again...
    assert postfix.milter_actions(mid, 2) == ["discard", "discard"]
    with SqliteStore(tmp_path / "state" / "quarantine") as store:
        records = store.list(ListFilter(limit=10))
        assert len(records) == 1, [
            (r.envelope, r.evidence, store.history(r.id), store.read(r.id)[:300]) for r in records
        ]  # ...and kept once
        assert [e.action for e in store.history(records[0].id)] == ["quarantine", "retry"]
        stored = store.read(records[0].id)
    # What the milter sees here is the header as the client sent it: Postfix (milter_protocol 6) adds its own
    # Received field after the milter. Where an MTA hands it over, the key leaves it out (first test above).
    assert mid.encode() in stored and b"(Postfix)" not in stored.split(b"\r\n\r\n", 1)[0]


def test_a_message_postfix_dated_is_stored_once_when_retried_a_second_later(postfix, milter, tmp_path):
    """Postfix adds Date (and Message-Id) to a local client's message lacking them: new on every attempt."""
    milter('[policy.inbound]\nmalware_action = "quarantine"\n')
    _, raw = eicar_message_without_date_or_id()
    for _ in range(2):
        time.sleep(1.05 - time.time() % 1)  # the two attempts get Dates a second apart
        assert postfix.send(raw)[0] == 250
    with SqliteStore(tmp_path / "state" / "quarantine") as store:
        records = store.list(ListFilter(limit=10))
        assert len(records) == 1, [store.read(r.id)[:400] for r in records]
        assert [e.action for e in store.history(records[0].id)] == ["quarantine", "retry"]
        head = store.read(records[0].id).split(b"\r\n\r\n", 1)[0]
    assert b"\r\nDate: " in head and b"\r\nMessage-I" in head  # what Postfix added reached the milter


def eicar_message_without_date_or_id() -> tuple[str, bytes]:
    from support.mail import eicar_message

    mid, raw = eicar_message()
    head, body = raw.split(b"\r\n\r\n", 1)
    head = b"\r\n".join(line for line in head.split(b"\r\n") if not line.lower().startswith(b"message-id:"))
    assert b"\r\nDate:" not in head
    return mid, head + b"\r\n\r\n" + body


def test_a_retry_of_a_message_no_worker_finished_is_stored_once_too(tmp_path):
    """A scan past its deadline is quarantined unchecked, without the worker's facts: the screener keys it."""
    from mailward.evidence import Category, Finding, Severity
    from mailward.screening import Screener
    from support.milter import ScanWith

    settings = settings_for(tmp_path)
    unchecked = Evidence(findings=(Finding(Category.UNCHECKED, "scan-deadline", Severity.HIGH, "pool", "", "20 s"),))
    store = open_store(settings)
    try:
        screener = Screener(settings, ScanWith(lambda source, env: unchecked), store)
        raw = message("Slow to scan")
        base = Envelope(mail_from="a@example.org", recipients=("u@example.test",), client_address="192.0.2.9")
        first = screener.screen(MessageSource.of(raw), replace(base, queue_id="4QX1"))
        retry = screener.screen(MessageSource.of(raw), replace(base, queue_id="7ZZ9"))
        assert first.verdict.action is Action.QUARANTINE and first.quarantine_id
        assert retry.quarantine_id == first.quarantine_id == retry.verdict.incident_id
        assert [r.id for r in store.list(ListFilter(limit=10))] == [first.quarantine_id]
        assert store.get(first.quarantine_id).subject == "Slow to scan"
    finally:
        store.close()
