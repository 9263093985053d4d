"""The quarantine store contract and the SQL both backends share.

A backend supplies its database (:mod:`mailward.db`: sessions, a small pool,
transactions, placeholders, the schema's version) and where message bytes
live; everything else — the record layout, filters, the release claim, labels
and the audit trail — is one piece of SQL here, so SQLite and PostgreSQL cannot
drift apart. Every method is safe to call from many threads: each operation is
one transaction. Database errors surface as :class:`~mailward.errors.StoreError`.

Double release is impossible by construction: a release first *claims* the
record with one conditional ``UPDATE ... WHERE status = 'held'``; exactly one
claimant sees a changed row, in every process on every host.

A put is final only once it is stored, and only if its caller still waits:
:meth:`QuarantineStore.put` answers within ``write_timeout`` (plus a short
commit grace) whatever the database does, because the sender's reply depends
on it. Every wait inside has that budget (this process's writer queue, the
connection pool, SQLite's busy wait, PostgreSQL's statement timeout); the
write runs in a thread of its own so that even a database that never answers
(a stopped server) cannot hold the caller. A put that the caller gave up on
never commits after its deadline, and if its COMMIT was already on the wire
and succeeds later, the record is withdrawn again: a tempfailed message is
never kept, so the sender's retry is not a duplicate. So is a put whose
COMMIT got no answer (the connection was lost or cut at the deadline): it may
have been kept, so it is withdrawn on a fresh connection before the error is
raised. A withdrawal that fails
(the database is still locked) is tried again in the background, with backoff,
until it succeeds or the store closes.

A retry is stored once: a put carries the message's retry key (the worker's
:func:`~mailward.evidence.retry_key`: envelope and bytes as the sender sent
them), and a record with that key stored within ``retry_window`` answers the
retry with its own ID instead of a second copy, in the same transaction
(``INSERT ... ON CONFLICT (retry_key) DO NOTHING`` on a unique index, so two
puts at once, on any host, end in one record). This covers what the store
cannot prevent: a milter killed between COMMIT and reply, a withdrawal still
pending. A record absorbing a retry is never withdrawn: that sender was told it
is stored. Deleted and withdrawn records are gone, and absorb nothing.
"""

from __future__ import annotations

import builtins
import json
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from ..actor import Actor
from ..config import QuarantineSettings
from ..db import Database, Transaction
from ..envelope import Envelope
from ..errors import StoreError
from ..evidence import Evidence, Label
from ..message import decode_header_value, split_message
from ..source import MessageSource
from ..verdict import Action, Verdict
from .files import Written
from .records import (
    AuditEvent,
    LabelRecord,
    ListFilter,
    QuarantineRecord,
    ReleaseClaim,
    Removal,
    Status,
    check_id,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]

OPERATION_TIMEOUT = 30.0  # seconds any other operation (CLI, reads) waits for a busy database
STATS_WAIT = 5.0  # seconds a metrics scrape waits for the database before it reports nothing
COMMIT_GRACE = 0.5  # a COMMIT sent just before the deadline may take this long to be confirmed
KILLED = "possibly stored by a scanning worker killed before it answered"
UNCONFIRMED = "stored though its COMMIT was never confirmed (connection lost)"
WITHDRAW_RETRY = (1.0, 60.0)  # seconds before a failed withdrawal is tried again: first, and at most (doubling)


class Deadline:
    """The time one store operation may take, and whether its caller still waits for the answer.

    ``abandon`` (the caller gave up) and ``finish`` (the write committed) are
    decided under one lock, so exactly one side owns the outcome: either the
    caller reports the message stored, or the writer withdraws it.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._state = "running"

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def check(self, doing: str) -> None:
        """StoreError once the deadline passed or the caller gave up: nothing may be committed then."""
        if self._state == "abandoned" or time.monotonic() >= self._end:
            raise StoreError(f"quarantine store: could not {doing} within {self.seconds:g} s")

    def abandon(self) -> bool:
        """The caller stops waiting; False if the write finished first (then its result stands)."""
        with self._lock:
            if self._state == "finished":
                return False
            self._state = "abandoned"
            return True

    def finish(self) -> bool:
        """The write committed; False if the caller had already given up (then it must be withdrawn)."""
        with self._lock:
            if self._state == "abandoned":
                return False
            self._state = "finished"
            return True


@dataclass(frozen=True)
class Put:
    """One message on its way into the store: what is kept, and how long the store may try."""

    quarantine_id: str
    raw: MessageSource
    envelope: Envelope
    verdict: Verdict
    evidence: Evidence
    deadline: Deadline


_COLUMNS = (
    "id, received_at, envelope, action, reasons, evidence, size, sha256, subject, header_from, "
    "status, released_at, label"
)

# Schema shared by both backends ({serial} and {real} filled in per backend): migration 1,
# the schema before versions were recorded.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS quarantine (
        id TEXT PRIMARY KEY,
        received_at {real} NOT NULL,
        direction TEXT NOT NULL,
        mail_from TEXT NOT NULL,
        recipients TEXT NOT NULL,
        client_address TEXT NOT NULL,
        queue_id TEXT NOT NULL,
        envelope TEXT NOT NULL,
        action TEXT NOT NULL,
        reasons TEXT NOT NULL,
        evidence TEXT NOT NULL,
        spam_score {real},
        size BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        subject TEXT NOT NULL,
        header_from TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'held',
        claimed_at {real},
        released_at {real},
        label TEXT)""",
    "CREATE INDEX IF NOT EXISTS quarantine_received ON quarantine (received_at)",
    """CREATE TABLE IF NOT EXISTS quarantine_audit (
        seq {serial},
        quarantine_id TEXT NOT NULL,
        at {real} NOT NULL,
        action TEXT NOT NULL,
        actor TEXT NOT NULL,
        host TEXT NOT NULL,
        origin TEXT NOT NULL,
        detail TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS quarantine_audit_id ON quarantine_audit (quarantine_id)",
    """CREATE TABLE IF NOT EXISTS quarantine_labels (
        seq {serial},
        quarantine_id TEXT NOT NULL,
        label TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        at {real} NOT NULL,
        actor TEXT NOT NULL)""",
)

# Migration 2: a put's retry key (NULL: none, or its window passed) and how many retries a record
# answered. The unique index is what makes two puts of one message at once end in one record.
RETRY_SCHEMA = (
    "ALTER TABLE quarantine ADD COLUMN retry_key TEXT",
    "ALTER TABLE quarantine ADD COLUMN retries INTEGER NOT NULL DEFAULT 0",
    "CREATE UNIQUE INDEX quarantine_retry ON quarantine (retry_key)",
)


def header_summary(head: bytes) -> tuple[str, str]:
    """Subject and From of a message from its first bytes (RFC 2047 decoded) for listing."""
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(split_message(head)[0] + b"\n\n")
        return (decode_header_value(str(headers.get("Subject", ""))), decode_header_value(str(headers.get("From", ""))))
    except Exception:  # a header block the parser chokes on still gets quarantined, unlabelled
        return "", ""


def like_pattern(text: str) -> str:
    """A lower-case ``LIKE`` pattern matching ``text`` anywhere (``\\`` escapes wildcards).

    SQL lowers ASCII only (SQLite's ``LOWER``, PostgreSQL's under the C locale), so a non-ASCII
    character is any run here (its lower case may be longer, or ASCII: "İ", the Kelvin sign), and
    :func:`_found_in` decides on the rows that match. (An ASCII letter still misses the few
    non-ASCII ones whose lower case it is: "i" does not find "İ".)
    """
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "%" + "".join(c.lower() if c.isascii() else "%" for c in escaped) + "%"


def _found_in(fields: dict[str, tuple[str, ...]], texts: builtins.list[tuple[str, str]]) -> bool:
    """Whether every (field, lower-case text) is in ``fields``, compared in full Unicode case."""
    return all(any(text in value.lower() for value in fields[name]) for name, text in texts)


_SCAN_PAGE = 1000  # rows a search SQL cannot decide reads at a time (keyset paging: none twice, none skipped)


class _Writers:
    """Long-lived daemon threads that run puts, so the caller can stop waiting at its deadline.

    Daemon threads (not an executor, which is joined at exit): one blocked on a
    stopped server must not keep the process alive. Started on first use, at
    most ``size``; a put queued behind blocked ones finds its caller gone and
    does nothing. Reused rather than started per put: starting a thread waits
    for it to run, which costs milliseconds under load.
    """

    def __init__(self, size: int):
        self._size = size
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._started = 0
        self._stopped = False
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._stopped:  # a late put on a closed store (a reload's old runtime): a thread of its own
                threading.Thread(target=job, name="quarantine-writer", daemon=True).start()
                return
            if self._started < self._size:
                self._started += 1
                threading.Thread(target=self._run, name="quarantine-writer", daemon=True).start()
        self._jobs.put(job)

    def stop(self) -> None:
        """Let the threads end once the jobs queued so far are done."""
        with self._lock:
            self._stopped = True
            for _ in range(self._started):
                self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()


class QuarantineStore(ABC):
    """Quarantined messages, their metadata, labels and audit trail."""

    def __init__(
        self,
        database: Database,
        clock: Clock = time.time,
        pool_size: int = 8,
        write_timeout: float = QuarantineSettings.write_timeout,
        retry_window: float = QuarantineSettings.retry_window,
    ):
        self.database = database
        self._clock = clock
        self.write_timeout = write_timeout
        self.retry_window = retry_window  # 0: every put is a new record
        self._closing = threading.Event()  # background withdrawals stop when the store closes
        self._writer = Actor.service()
        self._writers = _Writers(pool_size)
        self._in_flight = 0
        self._settled = threading.Condition()

    @property
    def backend(self) -> str:
        return self.database.backend.name

    # -- backend hooks ---------------------------------------------------------------------------

    @abstractmethod
    def _store(self, put: Put) -> str:
        """Keep bytes and record in one transaction under ``put.deadline``; StoreError leaves nothing behind.

        Returns the ID that holds the message: ``quarantine_id``, or the record
        a retry was answered with (then this put's bytes are not kept).
        """

    @abstractmethod
    def read(self, quarantine_id: str) -> bytes:
        """The exact bytes as received; StoreError if there is no such message."""

    def _claim_id(self, conn: Transaction, quarantine_id: str) -> None:  # noqa: B027  (an optional hook)
        """Hold ``quarantine_id`` until ``conn``'s transaction ends: a put takes it first, and a withdrawal
        so waits for a put whose COMMIT may still land (SQLite: one writer at a time already)."""

    @abstractmethod
    def _drop_bytes(self, conn: Transaction, quarantine_id: str) -> None:
        """Remove the bytes inside the delete transaction (database) ..."""

    def _after_drop(self, quarantine_id: str) -> None:  # noqa: B027  (an optional hook)
        """... or after it committed (files: a crash in between leaves an orphan the sweep removes)."""

    def sweep(self) -> int:
        """Remove leftovers of crashed writers; returns how many."""
        return 0

    # -- plumbing --------------------------------------------------------------------------------

    def _tx(self, write: bool = False, deadline: Deadline | None = None) -> AbstractContextManager[Transaction]:
        """One transaction; every wait in it (writer queue, pool, lock, statement) ends at ``deadline``."""
        return self.database.transaction(write=write, deadline=deadline or Deadline(OPERATION_TIMEOUT))

    def close(self) -> None:
        """Release the connections. Safe while other threads still use the store: they get fresh ones."""
        self._closing.set()
        self._writers.stop()
        self.database.close()

    def settle(self, timeout: float) -> bool:
        """Wait until no put is in flight (an abandoned one may still be undoing itself); True if none is."""
        with self._settled:
            return self._settled.wait_for(lambda: self._in_flight == 0, timeout)

    # -- writing ---------------------------------------------------------------------------------

    def put(self, raw: MessageSource, envelope: Envelope, verdict: Verdict, evidence: Evidence) -> str:
        """Keep the exact bytes and the record; return the quarantine ID.

        Answers within ``write_timeout`` (+ ``COMMIT_GRACE``). StoreError means
        nothing is or will be kept: the caller may tempfail and the retry is
        not a duplicate. A retry of a message stored within ``retry_window``
        returns that record's ID and keeps nothing new (audit event ``retry``).
        """
        quarantine_id = check_id(verdict.incident_id)
        deadline = Deadline(self.write_timeout)
        request = Put(quarantine_id, raw, envelope, verdict, evidence, deadline)
        result: Future[str] = Future()
        with self._settled:
            self._in_flight += 1
        try:
            self._writers.submit(lambda: self._put_attempt(result, request))
        except RuntimeError as exc:  # no thread could be started
            self._put_done()
            raise StoreError(f"cannot quarantine message {quarantine_id}: {exc}") from exc
        try:
            return result.result(timeout=deadline.remaining() + COMMIT_GRACE)
        except FutureTimeout:
            if deadline.abandon():
                raise StoreError(
                    f"quarantine database ({self.backend}) did not store {quarantine_id} "
                    f"within {self.write_timeout:g} s"
                ) from None
            return result.result()  # it committed at this very moment: the result stands

    def _put_attempt(self, result: Future[str], put: Put) -> None:
        try:
            try:
                put.deadline.check("start")
                stored = self._store(put)
            except BaseException as exc:
                if isinstance(exc, StoreError) and self.database.unconfirmed(exc):
                    self._withdraw(put.quarantine_id, UNCONFIRMED)  # the caller tempfails: keep nothing
                result.set_exception(exc)
                return
            if put.deadline.finish():
                result.set_result(stored)
            elif stored == put.quarantine_id:
                self._withdraw(put.quarantine_id)
            else:  # an earlier delivery's record answered it: that one stays, this one kept nothing
                log.warning("retry of quarantined message %s answered after its deadline; nothing to withdraw", stored)
        finally:
            self._put_done()

    def _put_done(self) -> None:
        with self._settled:
            self._in_flight -= 1
            self._settled.notify_all()

    def withdraw(self, quarantine_id: str) -> None:
        """Withdraw what a scanning worker killed mid-message may have stored under ``quarantine_id``.

        The milter gave up on that worker and answers the sender itself, so a
        record the worker committed first must not stay as a second copy or
        contradict the reply. In the background (the reply does not wait), after
        the worker is dead: nothing commits for it any more (a PostgreSQL COMMIT
        already on the wire may; then the record answers the sender's retry). A
        record that answered a retry, or none at all, is left as it is.
        """
        with self._settled:
            self._in_flight += 1

        def run() -> None:
            try:
                self._withdraw(quarantine_id, KILLED)
            finally:
                self._put_done()

        try:
            threading.Thread(target=run, name="quarantine-withdraw", daemon=True).start()
        except RuntimeError:
            self._put_done()
            log.error("quarantine record %s of a killed worker could not be withdrawn: no thread", quarantine_id)

    def _late(self) -> str:
        return f"stored after the {self.write_timeout:g} s write deadline"

    def _withdraw(self, quarantine_id: str, why: str = "") -> None:
        """Undo a put whose COMMIT succeeded only after the caller gave up (and tempfailed the sender).

        If the database refuses now (still locked), keep trying in the background until it
        succeeds or the store closes; meanwhile the sender's retry is answered with this record.
        """
        why = why or self._late()
        if self._withdraw_once(quarantine_id, why):
            return
        with self._settled:
            self._in_flight += 1
        try:
            threading.Thread(
                target=self._keep_withdrawing, args=(quarantine_id, why), name="quarantine-withdraw", daemon=True
            ).start()
        except RuntimeError:
            self._put_done()
            log.error("quarantined message %s could not be withdrawn: no thread to retry it", quarantine_id)

    def _keep_withdrawing(self, quarantine_id: str, why: str) -> None:
        delay, longest = WITHDRAW_RETRY
        try:
            while not self._closing.wait(delay):
                if self._withdraw_once(quarantine_id, why):
                    return
                delay = min(delay * 2, longest)
            log.error(
                "quarantined message %s was %s and the store closed before it could be "
                "withdrawn; a retry of it within quarantine.retry_window is answered with it",
                quarantine_id,
                why,
            )
        finally:
            self._put_done()

    def _withdraw_once(self, quarantine_id: str, why: str = "") -> bool:
        """One try; True once nothing is left to do (withdrawn, kept because a retry was answered with it, or
        never stored)."""
        why = why or self._late()
        detail = f"{why}; the sender was told to retry" if why != KILLED else f"{why}; the milter answered instead"
        try:
            with self._tx(write=True, deadline=Deadline(self.write_timeout)) as conn:  # not a writer slot for long
                self._claim_id(conn, quarantine_id)  # a put still committing (its answer lost) ends first
                gone = conn.execute(
                    "DELETE FROM quarantine WHERE id = ? AND retries = 0 AND status IN ('held', 'rejected')",
                    (quarantine_id,),
                ).rowcount
                if gone:
                    self._drop_bytes(conn, quarantine_id)
                    self._audit(conn, quarantine_id, "withdraw", self._writer, detail)
                    kept = False
                else:
                    kept = (
                        conn.execute("SELECT 1 FROM quarantine WHERE id = ?", (quarantine_id,)).fetchone() is not None
                    )
        except StoreError as exc:
            log.error(
                "quarantined message %s was %s and could not be withdrawn yet (tried again in the background): %s",
                quarantine_id,
                why,
                exc,
            )
            return False
        if gone:
            self._after_drop(quarantine_id)
            log.warning("quarantined message %s was %s and has been withdrawn", quarantine_id, why)
        elif kept:
            log.warning("quarantined message %s was %s and is kept: a retry was answered with it", quarantine_id, why)
        return True

    def __enter__(self) -> QuarantineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing a record ------------------------------------------------------------------------

    def _insert_record(self, conn: Transaction, put: Put, written: Written) -> str:
        """Insert the record, or answer a retry with the record of its earlier delivery; returns that ID.

        The unique index on ``retry_key`` decides between concurrent puts of one
        message (PostgreSQL waits for the other transaction, then sees its row);
        a key older than ``retry_window`` is released first. The ``retries``
        update locks the answering record against a withdrawal in flight.
        """
        quarantine_id, envelope, verdict = put.quarantine_id, put.envelope, put.verdict
        now = self._clock()
        facts = put.evidence.message  # taken by the worker that parsed the message
        subject, header_from = (
            (facts.subject, facts.header_from)
            if facts.subject or facts.header_from or facts.message_id
            else header_summary(written.head)
        )  # put without a scan (CLI, tests): read the first bytes
        key = facts.retry_key if self.retry_window > 0 else ""
        for _ in range(3):  # the answering record may be withdrawn or deleted between two statements
            if key:
                conn.execute(
                    "UPDATE quarantine SET retry_key = NULL WHERE retry_key = ? AND received_at < ?",
                    (key, now - self.retry_window),
                )
            if self._insert_row(conn, put, written, now, subject, header_from, key):
                detail = f"{verdict.action.value}: {', '.join(verdict.reasons)}; queue {envelope.queue_id or '-'}"
                self._audit(conn, quarantine_id, "quarantine", self._writer, detail, now)
                return quarantine_id
            row = conn.execute("SELECT id FROM quarantine WHERE retry_key = ?", (key,)).fetchone()
            if (
                row is not None
                and conn.execute(
                    "UPDATE quarantine SET retries = retries + 1 WHERE id = ? AND retry_key = ?", (row[0], key)
                ).rowcount
            ):
                detail = f"retry of {row[0]}: incident {quarantine_id}, queue {envelope.queue_id or '-'}"
                self._audit(conn, row[0], "retry", self._writer, detail, now)
                return str(row[0])
        raise StoreError(f"cannot quarantine message {quarantine_id}: its earlier delivery's record keeps changing")

    def _insert_row(
        self, conn: Transaction, put: Put, written: Written, now: float, subject: str, header_from: str, key: str
    ) -> bool:
        """False if a record with ``key`` exists (committed, or committed meanwhile by another session)."""
        envelope, verdict = put.envelope, put.verdict
        return bool(
            conn.execute(
                """INSERT INTO quarantine (id, received_at, direction, mail_from, recipients, client_address,
                              queue_id, envelope, action, reasons, evidence, spam_score, size, sha256, subject,
                              header_from, status, retry_key)
                            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                            ON CONFLICT (retry_key) DO NOTHING""",
                (
                    put.quarantine_id,
                    now,
                    envelope.direction.value,
                    envelope.mail_from,
                    json.dumps(list(envelope.recipients), ensure_ascii=False),
                    envelope.client_address,
                    envelope.queue_id,
                    json.dumps(envelope.as_dict(), ensure_ascii=False),
                    verdict.action.value,
                    json.dumps(list(verdict.reasons)),
                    json.dumps(put.evidence.as_dict(), ensure_ascii=False),
                    put.evidence.spam_score,
                    written.size,
                    written.sha256,
                    subject,
                    header_from,
                    (Status.REJECTED if verdict.action is Action.REJECT else Status.HELD).value,
                    key or None,
                ),
            ).rowcount
        )

    def _audit(
        self,
        conn: Transaction,
        quarantine_id: str,
        action: str,
        actor: Actor,
        detail: str = "",
        at: float | None = None,
    ) -> None:
        conn.execute(
            """INSERT INTO quarantine_audit (quarantine_id, at, action, actor, host, origin, detail)
                            VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (quarantine_id, self._clock() if at is None else at, action, actor.name, actor.host, actor.origin, detail),
        )

    # -- reading ---------------------------------------------------------------------------------

    def stats(self, wait: float = STATS_WAIT) -> tuple[int, int]:
        """(held messages, held bytes) in one read; every wait ends after ``wait`` seconds, so a
        metrics scrape never queues behind the writers for long (StoreError instead)."""
        with self._tx(deadline=Deadline(wait)) as conn:
            count, size = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM quarantine WHERE status = ?", (Status.HELD.value,)
            ).fetchone()
        return int(count), int(size)

    def get(self, quarantine_id: str) -> QuarantineRecord | None:
        check_id(quarantine_id)
        with self._tx() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM quarantine WHERE id = ?", (quarantine_id,)).fetchone()
        return None if row is None else _record(row)

    def exists(self, quarantine_id: str) -> bool:
        with self._tx() as conn:
            return conn.execute("SELECT 1 FROM quarantine WHERE id = ?", (quarantine_id,)).fetchone() is not None

    def list(self, filters: ListFilter = ListFilter()) -> list[QuarantineRecord]:
        """Records matching every given filter, newest first."""
        where: list[str] = ["1 = 1"]
        params: list[object] = []
        if filters.direction is not None:
            where.append("direction = ?")
            params.append(filters.direction.value)
        if filters.action:
            where.append("action = ?")
            params.append(filters.action.lower())
        if filters.status is not None:
            where.append("status = ?")
            params.append(filters.status.value)
        unicode_texts: builtins.list[tuple[str, str]] = []  # what SQL cannot compare without case
        for name, column, text in (
            ("sender", "mail_from", filters.sender),
            ("recipient", "recipients", filters.recipient),
            ("subject", "subject", filters.subject),
        ):
            if text:
                where.append(f"LOWER({column}) LIKE ? ESCAPE '\\'")
                params.append(like_pattern(text))
                if not text.isascii():
                    unicode_texts.append((name, text.lower()))
        if filters.reason:
            where.append("LOWER(reasons) LIKE ? ESCAPE '\\'")
            params.append(like_pattern(json.dumps(filters.reason.lower())))
        if filters.since is not None:
            where.append("received_at >= ?")
            params.append(filters.since)
        if filters.until is not None:
            where.append("received_at < ?")
            params.append(filters.until)
        with self._tx() as conn:
            if not unicode_texts:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM quarantine WHERE {' AND '.join(where)} "
                    "ORDER BY received_at DESC, id DESC LIMIT ?",
                    (*params, filters.limit),
                ).fetchall()
                return [_record(r) for r in rows]
            ids = self._matching_ids(conn, " AND ".join(where), params, unicode_texts, filters.limit)
            rows = [
                row
                for start in range(0, len(ids), 500)
                for row in conn.execute(
                    f"SELECT {_COLUMNS} FROM quarantine WHERE id IN ({', '.join('?' * len(ids[start : start + 500]))})",
                    tuple(ids[start : start + 500]),
                ).fetchall()
            ]
        order = {quarantine_id: n for n, quarantine_id in enumerate(ids)}
        return sorted((_record(r) for r in rows), key=lambda record: order[record.id])

    @staticmethod
    def _matching_ids(
        conn: Transaction, where: str, params: builtins.list[object], texts: builtins.list[tuple[str, str]], limit: int
    ) -> builtins.list[str]:
        """Newest first, the IDs of rows SQL selected whose text matches ``texts`` in full Unicode case;
        read a page at a time after the last row seen, so the scan holds one page and reads none twice."""
        found: builtins.list[str] = []
        after: tuple[object, ...] = ()
        while len(found) < limit:
            rows = conn.execute(
                f"SELECT id, received_at, mail_from, recipients, subject FROM quarantine WHERE {where}"
                + (" AND (received_at < ? OR (received_at = ? AND id < ?))" if after else "")
                + " ORDER BY received_at DESC, id DESC LIMIT ?",
                (*params, *after, _SCAN_PAGE),
            ).fetchall()
            for quarantine_id, _at, mail_from, recipients, subject in rows:
                fields = {
                    "sender": (mail_from or "",),
                    "recipient": tuple(json.loads(recipients or "[]")),
                    "subject": (subject or "",),
                }
                if _found_in(fields, texts):
                    found.append(quarantine_id)
            if len(rows) < _SCAN_PAGE:
                break
            after = (rows[-1][1], rows[-1][1], rows[-1][0])
        return found[:limit]

    def history(self, quarantine_id: str) -> builtins.list[AuditEvent]:
        """Every recorded action on ``quarantine_id``, oldest first; survives delete and purge."""
        check_id(quarantine_id)
        with self._tx() as conn:
            rows = conn.execute(
                """SELECT quarantine_id, at, action, actor, host, origin, detail
                                       FROM quarantine_audit WHERE quarantine_id = ? ORDER BY seq""",
                (quarantine_id,),
            ).fetchall()
        return [AuditEvent(r[0], r[1], r[2], Actor(r[3], r[4], r[5]), r[6]) for r in rows]

    def record_event(self, quarantine_id: str, action: str, actor: Actor, detail: str = "") -> None:
        """Add an audit entry for an action that changes nothing in the store (show, export, notify)."""
        check_id(quarantine_id)
        with self._tx(write=True) as conn:
            self._audit(conn, quarantine_id, action, actor, detail)

    # -- release ---------------------------------------------------------------------------------

    def claim_release(
        self, quarantine_id: str, actor: Actor, force: bool = False, reclaim_after: float | None = None
    ) -> ReleaseClaim:
        """Become the only releaser of ``quarantine_id``, or say why not.

        ``reclaim_after`` (seconds) lets an analyst take over a claim whose
        releaser died: only claims older than that are taken, so a live
        releaser within its SMTP timeout is never overtaken.
        """
        check_id(quarantine_id)
        record = self.get(quarantine_id)
        if record is None:
            return ReleaseClaim.NOT_FOUND
        if record.is_malware and not force:
            return ReleaseClaim.NEEDS_FORCE
        now = self._clock()
        with self._tx(write=True) as conn:
            claimed = conn.execute(
                """UPDATE quarantine SET status = 'releasing', claimed_at = ?
                                          WHERE id = ? AND status IN ('held', 'rejected')""",
                (now, quarantine_id),
            ).rowcount
            if not claimed and reclaim_after is not None:
                claimed = conn.execute(
                    """UPDATE quarantine SET claimed_at = ?
                                              WHERE id = ? AND status = 'releasing' AND claimed_at < ?""",
                    (now, quarantine_id, now - reclaim_after),
                ).rowcount
            if claimed:
                self._audit(conn, quarantine_id, "release-claim", actor, "forced" if force else "", now)
                return ReleaseClaim.CLAIMED
            row = conn.execute("SELECT status FROM quarantine WHERE id = ?", (quarantine_id,)).fetchone()
        if row is None:
            return ReleaseClaim.NOT_FOUND
        return ReleaseClaim.ALREADY_RELEASED if row[0] == Status.RELEASED.value else ReleaseClaim.IN_PROGRESS

    def finish_release(self, quarantine_id: str, actor: Actor, delivered: bool, detail: str = "") -> None:
        """Mark a claimed release delivered, or hand the record back to ``held`` after a failure."""
        now = self._clock()
        with self._tx(write=True) as conn:
            if delivered:
                conn.execute(
                    """UPDATE quarantine SET status = 'released', released_at = ?
                                    WHERE id = ? AND status = 'releasing'""",
                    (now, quarantine_id),
                )
                self._audit(conn, quarantine_id, "release", actor, detail, now)
            else:
                conn.execute(
                    """UPDATE quarantine SET status = 'held', claimed_at = NULL
                                    WHERE id = ? AND status = 'releasing'""",
                    (quarantine_id,),
                )
                self._audit(conn, quarantine_id, "release-failed", actor, detail, now)

    def use_release_mark(self, quarantine_id: str, stamp: int) -> bool:
        """Note that the milter let the released copy marked at ``stamp`` through; True only the first time.

        Only a record being or already released has a usable mark. The no-op
        ``UPDATE`` locks the row, so concurrent milters (any host) see each
        other's use in the audit trail: a replayed mark is refused.
        """
        check_id(quarantine_id)
        detail = f"mark {stamp}"
        with self._tx(write=True) as conn:
            if not conn.execute(
                """UPDATE quarantine SET status = status
                                       WHERE id = ? AND status IN ('releasing', 'released')""",
                (quarantine_id,),
            ).rowcount:
                return False
            if conn.execute(
                """SELECT 1 FROM quarantine_audit
                                   WHERE quarantine_id = ? AND action = 'release-mark-used' AND detail = ?""",
                (quarantine_id, detail),
            ).fetchone():
                return False
            self._audit(conn, quarantine_id, "release-mark-used", self._writer, detail)
            return True

    # -- delete, purge ---------------------------------------------------------------------------

    def delete(self, quarantine_id: str, actor: Actor, action: str = "delete", detail: str = "") -> Removal:
        """Remove the record and its bytes (never while a release delivers it); the audit trail stays."""
        check_id(quarantine_id)
        with self._tx(write=True) as conn:
            # The status is checked by the DELETE itself: a release claimed by another host after a
            # separate check would otherwise deliver a record deleted under it.
            if not conn.execute(
                "DELETE FROM quarantine WHERE id = ? AND status <> 'releasing'", (quarantine_id,)
            ).rowcount:
                row = conn.execute("SELECT 1 FROM quarantine WHERE id = ?", (quarantine_id,)).fetchone()
                return Removal.NOT_FOUND if row is None else Removal.IN_PROGRESS
            self._drop_bytes(conn, quarantine_id)
            self._audit(conn, quarantine_id, action, actor, detail)
        self._after_drop(quarantine_id)
        return Removal.DELETED

    def purge(self, older_than_days: float, actor: Actor) -> builtins.list[str]:
        """Delete every record received more than ``older_than_days`` ago; returns their IDs."""
        cutoff = self._clock() - older_than_days * 86400.0
        with self._tx() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM quarantine WHERE received_at < ? ORDER BY id", (cutoff,)
                ).fetchall()
            ]
        detail = f"retention {older_than_days:g} days"
        purged = [i for i in ids if self.delete(i, actor, "purge", detail) is Removal.DELETED]
        self.sweep()
        return purged

    # -- labels ----------------------------------------------------------------------------------

    def record_label(self, quarantine_id: str, label: Label, actor: Actor) -> bool:
        """Append an analyst label to the label ledger table; False if there is no such message."""
        check_id(quarantine_id)
        now = self._clock()
        with self._tx(write=True) as conn:
            row = conn.execute("SELECT sha256 FROM quarantine WHERE id = ?", (quarantine_id,)).fetchone()
            if row is None:
                return False
            conn.execute("UPDATE quarantine SET label = ? WHERE id = ?", (label.value, quarantine_id))
            conn.execute(
                """INSERT INTO quarantine_labels (quarantine_id, label, sha256, at, actor)
                                VALUES (?, ?, ?, ?, ?)""",
                (quarantine_id, label.value, row[0], now, actor.name),
            )
            self._audit(conn, quarantine_id, "label", actor, label.value, now)
        return True

    def labels_since(self, seq: int = 0, limit: int = 10000) -> builtins.list[LabelRecord]:
        """Labels recorded after ``seq``, in order: the training ledger resumes from the last one it took."""
        with self._tx() as conn:
            rows = conn.execute(
                """SELECT seq, quarantine_id, label, sha256, at, actor FROM quarantine_labels
                                       WHERE seq > ? ORDER BY seq LIMIT ?""",
                (seq, limit),
            ).fetchall()
        return [LabelRecord(r[0], r[1], Label(r[2]), r[3], r[4], r[5]) for r in rows]


def _record(row: Sequence[Any]) -> QuarantineRecord:
    (
        qid,
        received_at,
        envelope,
        action,
        reasons,
        evidence,
        size,
        sha256,
        subject,
        header_from,
        status,
        released_at,
        label,
    ) = row
    return QuarantineRecord(
        id=qid,
        received_at=received_at,
        envelope=Envelope.from_dict(json.loads(envelope)),
        action=action,
        reasons=tuple(json.loads(reasons)),
        evidence=Evidence.from_dict(json.loads(evidence)),
        size=size,
        sha256=sha256,
        subject=subject,
        header_from=header_from,
        status=Status(status),
        released_at=released_at,
        label=Label(label) if label else None,
    )
