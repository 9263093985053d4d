"""Counters and the block list in SQL: SQLite on one host, PostgreSQL shared by several.

Both backends run the same statements; connections, transactions,
placeholders and the schema's version are the database layer's
(:mod:`mailward.db`). One connection per store, used by one thread at a time:
every operation is one short transaction, and a milter's threads queue for
well under a millisecond each (bench/incident_counters.py). Nobody waits for
that connection, SQLite's busy lock or a PostgreSQL statement longer than the
store's ``timeout``. A broken connection is dropped and reopened on the next
call, so a database restart costs the calls made while it was down.

At most one *active* block per subject is enforced by a partial unique index,
so two hosts suspending the same account at once create one block, and the
one whose insert lost sees the winner's row.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..addresses import canonical_address
from ..db import Database, Migration, PostgresDsn, SqliteFile, Transaction, storable
from ..errors import MailwardError
from ..policy import Listed
from .records import BLOCKED_AS, COUNTERS_OF, AuditEntry, Block, Counter, Origin, SenderEntry, SubjectKind, Totals

log = logging.getLogger(__name__)

Clock = Callable[[], float]

DB_NAME = "incidents.sqlite3"
TIMEOUT = 30.0  # seconds an operation may wait for this process's other threads or the database

SCHEMA = (  # migration 1: the schema before versions were recorded
    """CREATE TABLE IF NOT EXISTS incident_counters (
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        at {real} NOT NULL,
        messages INTEGER NOT NULL,
        recipients INTEGER NOT NULL,
        spam INTEGER NOT NULL,
        malware INTEGER NOT NULL,
        auth_failures INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS incident_counters_subject ON incident_counters (kind, subject, at)",
    "CREATE INDEX IF NOT EXISTS incident_counters_at ON incident_counters (at)",
    """CREATE TABLE IF NOT EXISTS incident_blocks (
        id {serial},
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        origin TEXT NOT NULL,
        reason TEXT NOT NULL,
        incident_id TEXT NOT NULL,
        created_at {real} NOT NULL,
        created_by TEXT NOT NULL,
        expires_at {real},
        lifted_at {real},
        lifted_by TEXT NOT NULL DEFAULT '')""",
    """CREATE UNIQUE INDEX IF NOT EXISTS incident_blocks_one_active
        ON incident_blocks (kind, value) WHERE lifted_at IS NULL""",
    """CREATE TABLE IF NOT EXISTS incident_audit (
        seq {serial},
        at {real} NOT NULL,
        action TEXT NOT NULL,
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        incident_id TEXT NOT NULL,
        actor TEXT NOT NULL,
        host TEXT NOT NULL,
        origin TEXT NOT NULL,
        detail TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS incident_audit_subject ON incident_audit (kind, value)",
    # Sender allow and block lists: scope '' is everyone, else a recipient domain or address.
    """CREATE TABLE IF NOT EXISTS sender_lists (
        id {serial},
        list TEXT NOT NULL,
        scope TEXT NOT NULL,
        sender TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_at {real} NOT NULL,
        created_by TEXT NOT NULL,
        removed_at {real},
        removed_by TEXT NOT NULL DEFAULT '')""",
    """CREATE UNIQUE INDEX IF NOT EXISTS sender_lists_one_active
        ON sender_lists (scope, sender) WHERE removed_at IS NULL""",
)

BUCKET = 10.0  # seconds of counts one row holds; a window counts the buckets that start within it


def _bucket_sql(at: str) -> str:
    """The start of ``at``'s bucket in SQL both backends run (a positive ``at``; PostgreSQL's CAST rounds)."""
    whole = f"CAST({at} / {BUCKET:g} AS BIGINT)"
    return f"(({whole}) - CASE WHEN {whole} > {at} / {BUCKET:g} THEN 1 ELSE 0 END) * {BUCKET:g}"


# Migration 2: one row per kind, subject and BUCKET seconds, to which hosts add their counts (upsert), so a
# window's sum reads at most window / BUCKET rows whatever the traffic (incidents/counting.py). The rows of
# incident_counters (one per message) move into buckets.
COUNTS = (
    """CREATE TABLE incident_counts (
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        bucket {real} NOT NULL,
        messages INTEGER NOT NULL,
        recipients INTEGER NOT NULL,
        spam INTEGER NOT NULL,
        malware INTEGER NOT NULL,
        auth_failures INTEGER NOT NULL,
        PRIMARY KEY (kind, subject, bucket))""",
    "CREATE INDEX incident_counts_bucket ON incident_counts (bucket)",
    "INSERT INTO incident_counts (kind, subject, bucket, messages, recipients, spam, malware, auth_failures) "
    f"SELECT kind, subject, {_bucket_sql('at')}, SUM(messages), SUM(recipients), SUM(spam), SUM(malware), "
    f"SUM(auth_failures) FROM incident_counters GROUP BY kind, subject, {_bucket_sql('at')}",
    "DROP TABLE incident_counters",
)

# Migration 3: a window's sums start after the subject's last block (IncidentStore.add_counts), looked up per flush.
BLOCKS_BY_SUBJECT = ("CREATE INDEX incident_blocks_subject ON incident_blocks (kind, value, created_at)",)


def _canonical_subjects(tx: Transaction) -> None:
    """Sender and domain blocks in the one spelling lookups and lifts use (before it, a value was kept
    as typed, ``"ceo"@example.org.``); a second active block of one subject so made is lifted."""
    rows = tx.execute(
        "SELECT id, kind, value, lifted_at FROM incident_blocks WHERE kind IN (?, ?) ORDER BY id",
        (SubjectKind.SENDER.value, SubjectKind.DOMAIN.value),
    ).fetchall()
    for block_id, kind, value, lifted_at in rows:
        spelled = canonical_address(value.lstrip("@") if kind == SubjectKind.DOMAIN.value else value)
        if not spelled or spelled == value:
            continue
        taken = (
            lifted_at is None
            and tx.execute(
                "SELECT 1 FROM incident_blocks WHERE kind = ? AND value = ? AND lifted_at IS NULL", (kind, spelled)
            ).fetchone()
        )
        if taken:
            tx.execute(
                "UPDATE incident_blocks SET lifted_at = created_at, lifted_by = ? WHERE id = ?",
                ("upgrade: same subject", block_id),
            )
        tx.execute("UPDATE incident_blocks SET value = ? WHERE id = ?", (spelled, block_id))


MIGRATIONS = (
    Migration(1, SCHEMA),
    Migration(2, COUNTS),
    Migration(3, BLOCKS_BY_SUBJECT, _canonical_subjects),
)
_SCHEMA_LOCK = 0x4D57_4900  # "MWI\0": the key earlier versions serialised schema creation with

_BLOCK_COLUMNS = (
    "id, kind, value, origin, reason, incident_id, created_at, created_by, expires_at, lifted_at, lifted_by"
)
_ACTIVE = "lifted_at IS NULL AND (expires_at IS NULL OR expires_at > ?)"
_ENTRY_COLUMNS = "id, list, scope, sender, reason, created_at, created_by, removed_at, removed_by"

_SUMS = (
    "COALESCE(SUM(messages), 0), COALESCE(SUM(recipients), 0), COALESCE(SUM(spam), 0), "
    "COALESCE(SUM(malware), 0), COALESCE(SUM(auth_failures), 0)"
)
_ADD = (
    "INSERT INTO incident_counts (kind, subject, bucket, messages, recipients, spam, malware, auth_failures) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, subject, bucket) DO UPDATE SET "
    "messages = incident_counts.messages + excluded.messages, "
    "recipients = incident_counts.recipients + excluded.recipients, "
    "spam = incident_counts.spam + excluded.spam, malware = incident_counts.malware + excluded.malware, "
    "auth_failures = incident_counts.auth_failures + excluded.auth_failures"
)
_SUMS_AT_ONCE = 500  # subjects whose sums one SELECT reads (SQLite allows 32766 parameters)

CountKey = tuple[Counter, str]
Count = tuple[Counter, str, float, Totals]  # kind, subject, bucket start, what to add


def bucket_of(at: float) -> float:
    """The start of the counting bucket ``at`` falls in."""
    return math.floor(at / BUCKET) * BUCKET


class IncidentStoreError(MailwardError):
    """The counters or block list could not be read or written."""


class IncidentStore:
    """Sliding-window counters per subject, blocks with expiry, and the audit trail of blocks."""

    def __init__(self, database: Database, clock: Clock = time.time):
        self.database = database
        self._clock = clock
        self.timeout = database.timeout
        database.migrate("incidents", MIGRATIONS, lock=_SCHEMA_LOCK)

    @property
    def backend(self) -> str:
        return self.database.backend.name

    def _tx(self) -> AbstractContextManager[Transaction]:
        """One transaction that takes the write lock up front (every operation is short)."""
        return self.database.transaction(write=True)

    @staticmethod
    def _exec(tx: Transaction, statement: str, params: Sequence[object] = ()) -> Any:
        return tx.execute(statement, params)

    def close(self) -> None:
        """Drop the connection; safe while others still use the store (they get fresh ones)."""
        self.database.close()

    # -- counters --------------------------------------------------------------------------------

    def record(self, kind: Counter, subject: str, added: Totals, since: float | None) -> Totals:
        """Add one event for ``subject`` and return its sums since ``since`` (None: do not sum)."""
        sums = self.add_counts(
            [(kind, subject, bucket_of(self._clock()), added)], {} if since is None else {kind: since}
        )
        return sums.get((kind, subject), added)

    def add_counts(
        self, batch: Sequence[Count], since: Mapping[Counter, float], read: Iterable[CountKey] = ()
    ) -> dict[CountKey, Totals]:
        """Add a host's counts in one transaction; return every host's sums since ``since[kind]``.

        Sums are returned for the subjects in ``batch`` and ``read`` whose kind is in ``since``;
        a bucket counts when it starts after ``since`` (so an event counts for the window less up to
        one BUCKET, never longer) and after the start of the subject's last block: the events that
        caused a suspension never count again once it expires, on any host. Commits relaxed:
        counters, not mail.
        """
        wanted = dict.fromkeys((kind, subject) for kind, subject, _, _ in batch)
        wanted.update(dict.fromkeys(read))
        by_kind: dict[Counter, list[str]] = {}
        for kind, subject in wanted:
            if kind in since:
                by_kind.setdefault(kind, []).append(subject)
        sums: dict[CountKey, Totals] = {}
        with self._tx() as conn:
            conn.relax()
            if batch:
                conn.executemany(
                    _ADD,
                    [
                        (k.value, s, b, t.messages, t.recipients, t.spam, t.malware, t.auth_failures)
                        for k, s, b, t in batch
                    ],
                )
            for kind, subjects in by_kind.items():
                for start in range(0, len(subjects), _SUMS_AT_ONCE):  # one round trip per chunk, not per subject
                    chunk = subjects[start : start + _SUMS_AT_ONCE]
                    among = ", ".join("?" * len(chunk))
                    blocked = ", ".join("?" * len(BLOCKED_AS[kind]))
                    rows = self._exec(
                        conn,
                        f"SELECT c.subject, {_SUMS} FROM incident_counts c LEFT JOIN "
                        "(SELECT value, MAX(created_at) AS started FROM incident_blocks "
                        f"WHERE kind IN ({blocked}) AND value IN ({among}) GROUP BY value) b ON b.value = c.subject "
                        f"WHERE c.kind = ? AND c.bucket > ? AND c.subject IN ({among}) "
                        "AND (b.started IS NULL OR c.bucket > b.started) GROUP BY c.subject",
                        (*(k.value for k in BLOCKED_AS[kind]), *chunk, kind.value, since[kind], *chunk),
                    ).fetchall()
                    found = {row[0]: Totals(*(int(v) for v in row[1:])) for row in rows}
                    for subject in chunk:  # rows name a subject as stored (storable): NUL written as U+FFFD
                        sums[(kind, subject)] = found.get(str(storable(subject)), Totals())
        return sums

    def prune(self, before: float) -> int:
        """Forget counts wholly older than ``before``; returns how many bucket rows."""
        with self._tx() as conn:
            removed: int = self._exec(
                conn, "DELETE FROM incident_counts WHERE bucket <= ?", (before - BUCKET,)
            ).rowcount
            return removed

    # -- blocks ----------------------------------------------------------------------------------

    def add_block(
        self,
        kind: SubjectKind,
        value: str,
        origin: Origin,
        reason: str,
        incident_id: str,
        actor: str,
        host: str,
        actor_origin: str = "",
        expires_at: float | None = None,
    ) -> tuple[Block, bool]:
        """Block ``value`` unless it already is; returns the active block and whether this call made it."""
        now = self._clock()
        with self._tx() as conn:
            # An expired block still holds the "one active" index slot until marked: mark it first.
            self._exec(
                conn,
                "UPDATE incident_blocks SET lifted_at = expires_at, lifted_by = '(expired)' "
                "WHERE kind = ? AND value = ? AND lifted_at IS NULL AND expires_at IS NOT NULL "
                "AND expires_at <= ?",
                (kind.value, value, now),
            )
            created = (
                self._exec(
                    conn,
                    "INSERT INTO incident_blocks (kind, value, origin, reason, incident_id, "
                    "created_at, created_by, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (kind.value, value, origin.value, reason, incident_id, now, actor, expires_at),
                ).rowcount
                == 1
            )
            block = self._block_row(
                self._exec(
                    conn,
                    f"SELECT {_BLOCK_COLUMNS} FROM incident_blocks WHERE kind = ? AND value = ? AND lifted_at IS NULL",
                    (kind.value, value),
                ).fetchone()
            )
            if created:
                until = "until lifted" if expires_at is None else f"until {_iso(expires_at)}"
                self._audit(conn, now, "add", block, actor, host, actor_origin, f"{origin.value}: {reason} ({until})")
        return block, created

    def lift(
        self, kind: SubjectKind, value: str, actor: str, host: str, actor_origin: str = "", detail: str = ""
    ) -> Block | None:
        """End the active block of ``value`` and start its counters afresh; None when there was none."""
        now = self._clock()
        with self._tx() as conn:
            row = self._exec(
                conn,
                f"SELECT {_BLOCK_COLUMNS} FROM incident_blocks WHERE kind = ? AND value = ? AND {_ACTIVE}",
                (kind.value, value, now),
            ).fetchone()
            if row is None:
                return None
            block = self._block_row(row)
            self._exec(
                conn, "UPDATE incident_blocks SET lifted_at = ?, lifted_by = ? WHERE id = ?", (now, actor, block.id)
            )
            for counter in COUNTERS_OF.get(kind, ()):
                self._exec(conn, "DELETE FROM incident_counts WHERE kind = ? AND subject = ?", (counter.value, value))
            self._audit(conn, now, "remove", block, actor, host, actor_origin, detail)
        return replace(block, lifted_at=now, lifted_by=actor)

    def active_blocks(self) -> list[Block]:
        with self._tx() as conn:
            rows = self._exec(
                conn, f"SELECT {_BLOCK_COLUMNS} FROM incident_blocks WHERE {_ACTIVE} ORDER BY id", (self._clock(),)
            ).fetchall()
        return [self._block_row(r) for r in rows]

    def blocks(self, kind: SubjectKind | None = None, include_inactive: bool = False, limit: int = 1000) -> list[Block]:
        """Blocks newest first; only active ones unless ``include_inactive``."""
        where: list[str] = []
        params: list[object] = []
        if not include_inactive:
            where.append(_ACTIVE)
            params.append(self._clock())
        if kind is not None:
            where.append("kind = ?")
            params.append(kind.value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._tx() as conn:
            rows = self._exec(
                conn,
                f"SELECT {_BLOCK_COLUMNS} FROM incident_blocks {clause} ORDER BY id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [self._block_row(r) for r in rows]

    def audit(self, kind: SubjectKind | None = None, value: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        where, params = [], []
        if kind is not None:
            where.append("kind = ?")
            params.append(kind.value)
        if value is not None:
            where.append("value = ?")
            params.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._tx() as conn:
            rows = self._exec(
                conn,
                "SELECT seq, at, action, kind, value, incident_id, actor, host, origin, detail "
                f"FROM incident_audit {clause} ORDER BY seq DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [AuditEntry(r[0], r[1], r[2], SubjectKind(r[3]), *r[4:]) for r in rows]

    # -- sender lists ----------------------------------------------------------------------------

    def add_sender_entry(
        self, listed: Listed, scope: str, sender: str, reason: str, actor: str, host: str, actor_origin: str = ""
    ) -> tuple[SenderEntry, bool]:
        """List ``sender`` for ``scope`` unless it already is (allowed or blocked); the entry and whether it is new."""
        now = self._clock()
        with self._tx() as conn:
            created = (
                self._exec(
                    conn,
                    "INSERT INTO sender_lists (list, scope, sender, reason, created_at, created_by) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (listed.value, scope, sender, reason, now, actor),
                ).rowcount
                == 1
            )
            entry = self._entry_row(self._active_entry_row(conn, scope, sender))
            if created:
                self._audit_entry(conn, now, f"{listed.value}-list-add", entry, actor, host, actor_origin, reason)
        return entry, created

    def remove_sender_entry(
        self, scope: str, sender: str, actor: str, host: str, actor_origin: str = "", detail: str = ""
    ) -> SenderEntry | None:
        """End the active entry of ``sender`` for ``scope``; None when there was none."""
        now = self._clock()
        with self._tx() as conn:
            row = self._active_entry_row(conn, scope, sender)
            if row is None:
                return None
            entry = self._entry_row(row)
            self._exec(
                conn, "UPDATE sender_lists SET removed_at = ?, removed_by = ? WHERE id = ?", (now, actor, entry.id)
            )
            self._audit_entry(conn, now, f"{entry.listed.value}-list-remove", entry, actor, host, actor_origin, detail)
        return replace(entry, removed_at=now, removed_by=actor)

    def _active_entry_row(self, conn: Transaction, scope: str, sender: str) -> Any:
        """The row of the entry of ``sender`` for ``scope`` that is in force, if any."""
        return self._exec(
            conn,
            f"SELECT {_ENTRY_COLUMNS} FROM sender_lists WHERE scope = ? AND sender = ? AND removed_at IS NULL",
            (scope, sender),
        ).fetchone()

    def sender_entries(self, scope: str | None = None) -> list[SenderEntry]:
        """Active entries, oldest first; only those of ``scope`` when given ("" = the global list)."""
        clause, params = ("AND scope = ?", (scope,)) if scope is not None else ("", ())
        with self._tx() as conn:
            rows = self._exec(
                conn, f"SELECT {_ENTRY_COLUMNS} FROM sender_lists WHERE removed_at IS NULL {clause} ORDER BY id", params
            ).fetchall()
        return [self._entry_row(r) for r in rows]

    def _audit_entry(
        self,
        conn: Transaction,
        now: float,
        action: str,
        entry: SenderEntry,
        actor: str,
        host: str,
        origin: str,
        detail: str,
    ) -> None:
        where = f"for {entry.scope}" if entry.scope else "for everyone"
        self._exec(
            conn,
            "INSERT INTO incident_audit (at, action, kind, value, incident_id, actor, host, origin, "
            "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                now,
                action,
                entry.kind.value,
                entry.sender,
                "",
                actor,
                host,
                origin,
                f"{where}: {detail}" if detail else where,
            ),
        )

    @staticmethod
    def _entry_row(row: Any) -> SenderEntry:
        return SenderEntry(
            id=int(row[0]),
            listed=Listed(row[1]),
            scope=row[2],
            sender=row[3],
            reason=row[4],
            created_at=row[5],
            created_by=row[6],
            removed_at=row[7],
            removed_by=row[8],
        )

    def _audit(
        self, conn: Transaction, now: float, action: str, block: Block, actor: str, host: str, origin: str, detail: str
    ) -> None:
        self._exec(
            conn,
            "INSERT INTO incident_audit (at, action, kind, value, incident_id, actor, host, origin, "
            "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, action, block.kind.value, block.value, block.incident_id, actor, host, origin, detail),
        )

    @staticmethod
    def _block_row(row: Sequence[Any]) -> Block:
        return Block(
            id=int(row[0]),
            kind=SubjectKind(row[1]),
            value=row[2],
            origin=Origin(row[3]),
            reason=row[4],
            incident_id=row[5],
            created_at=row[6],
            created_by=row[7],
            expires_at=row[8],
            lifted_at=row[9],
            lifted_by=row[10],
        )


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class SqliteIncidentStore(IncidentStore):
    """One host: ``<state_dir>/incidents.sqlite3`` (WAL; several processes may share it)."""

    def __init__(self, path: Path, clock: Clock = time.time, timeout: float = TIMEOUT):
        self.path = Path(path)
        try:
            # Counters are cheap to lose on a power cut; a committed block survives any process crash.
            backend = SqliteFile(self.path, busy_timeout=timeout, synchronous="NORMAL")
        except OSError as exc:
            raise IncidentStoreError(f"cannot create {self.path}: {exc.strerror or exc}") from exc
        super().__init__(Database(backend, label="incident store", error=IncidentStoreError, timeout=timeout), clock)


class PostgresIncidentStore(IncidentStore):
    """Several milter hosts: the quarantine's PostgreSQL database, tables ``incident_*``.

    Sessions commit durably unless a transaction relaxes them (counters); statements end after ``timeout``.
    """

    def __init__(self, dsn: str, clock: Clock = time.time, timeout: float = TIMEOUT):
        self.dsn = dsn
        backend = PostgresDsn(dsn, timeout)
        super().__init__(Database(backend, label="incident store", error=IncidentStoreError, timeout=timeout), clock)
