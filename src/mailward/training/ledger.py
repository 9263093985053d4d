"""The label ledger: every label analysts gave, append-only, with the message bytes it labels.

One SQLite file (0600) in the state directory, shared by any number of CLI
processes through the database layer (:mod:`mailward.db`): a writer waits at
most ``BUSY_TIMEOUT`` for another. Each entry says who (analyst), where
from (a set, the quarantine, a user report), when, and which message (the
sha256 of its exact bytes) got which class (ham or spam). Entries are never
changed or removed (triggers refuse it); a later entry for the same digest
supersedes the earlier one as that message's *current* label. A label equal to
the message's current one is not appended at all.

The bytes are kept here, compressed, because the quarantine purges its copy and
a rebuild must be able to read every labelled message again. Models remember the
last entry they reflect (``seq``), so ``mailward train update`` learns exactly
what came after it.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..config import Settings
from ..db import Database, Migration, SqliteFile, Transaction
from ..errors import MailwardError
from ..evidence import TRAINING_CLASSES

CLASSES = TRAINING_CLASSES
BUSY_TIMEOUT = 60.0  # seconds a ledger operation waits for another process's write (a training run)

# Migration 1: the schema before versions were recorded.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS labels (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        digest TEXT NOT NULL,
        label TEXT NOT NULL CHECK (label IN ('ham', 'spam')),
        source TEXT NOT NULL,
        analyst TEXT NOT NULL,
        at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS labels_digest ON labels (digest, seq)",
    "CREATE TABLE IF NOT EXISTS messages (digest TEXT PRIMARY KEY, data BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TRIGGER IF NOT EXISTS labels_append_only_update BEFORE UPDATE ON labels
        BEGIN SELECT RAISE(ABORT, 'the label ledger is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS labels_append_only_delete BEFORE DELETE ON labels
        BEGIN SELECT RAISE(ABORT, 'the label ledger is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS messages_keep BEFORE DELETE ON messages
        BEGIN SELECT RAISE(ABORT, 'labelled messages are kept'); END""",
)
MIGRATIONS = (Migration(1, SCHEMA),)


class LedgerError(MailwardError):
    """The ledger file cannot be opened or written."""


class LabelOutcome(str, Enum):
    NEW = "new"  # first label for this message
    CHANGED = "changed"  # the message had the other label until now
    REPEATED = "repeated"  # same as its current label: not appended


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    digest: str
    label: str
    source: str
    analyst: str
    at: float


@dataclass(frozen=True)
class Change:
    """What entries after a model's ``seq`` mean for that model, per message."""

    digest: str
    before: str | None  # the label the model learned, None if it never saw the message
    after: str  # the current label


def ledger_path(settings: Settings) -> Path:
    return settings.state_path(settings.learning.ledger, "ledger.sqlite")


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Ledger:
    """The SQLite ledger; use as a context manager. ``record`` calls batch into one transaction each.

    ``database`` is its :class:`~mailward.db.Database`: one connection, used by
    one caller at a time.
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self._clock = clock
        self._batch: Transaction | None = None  # the open batch, which every call joins
        try:
            backend = SqliteFile(self.path, busy_timeout=BUSY_TIMEOUT, synchronous="NORMAL")
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot open the label ledger ({exc})") from None
        self.database = Database(backend, label=f"label ledger {self.path}", error=LedgerError, timeout=BUSY_TIMEOUT)
        try:
            self.database.migrate("ledger", MIGRATIONS)
        except LedgerError as exc:
            raise LedgerError(f"{self.path}: cannot open the label ledger ({exc.__cause__ or exc})") from None

    def close(self) -> None:
        self.database.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def batch(self) -> Iterator[Ledger]:
        """Group many records into one transaction (thousands per second instead of dozens)."""
        if self._batch is not None:
            yield self
            return
        with self.database.transaction(write=True) as tx:
            self._batch = tx
            try:
                yield self
            finally:
                self._batch = None

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[Transaction]:
        """The open batch, or a transaction of its own."""
        if self._batch is not None:
            yield self._batch
        else:
            with self.database.transaction(write=write) as tx:
                yield tx

    # -- writing ---------------------------------------------------------------------------------

    def record(self, data: bytes, label: str, source: str, analyst: str) -> tuple[str, LabelOutcome]:
        """Append ``label`` for the message ``data`` unless it already is its current label."""
        if label not in CLASSES:
            raise LedgerError(f"label must be one of {', '.join(CLASSES)}, not {label!r}")
        digest = digest_of(data)
        with self._tx(write=True) as tx:
            current = _current_label(tx, digest, None)
            if current == label:
                return digest, LabelOutcome.REPEATED
            if current is None:
                tx.execute(
                    "INSERT OR IGNORE INTO messages (digest, data) VALUES (?, ?)", (digest, zlib.compress(data, 6))
                )
            tx.execute(
                "INSERT INTO labels (digest, label, source, analyst, at) VALUES (?, ?, ?, ?, ?)",
                (digest, label, source, analyst, self._clock()),
            )
        return digest, LabelOutcome.NEW if current is None else LabelOutcome.CHANGED

    def set_mark(self, name: str, value: int) -> None:
        with self._tx(write=True) as tx:
            tx.execute(
                "INSERT INTO marks (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    # -- reading ---------------------------------------------------------------------------------

    def mark(self, name: str) -> int:
        with self._tx() as tx:
            row = tx.execute("SELECT value FROM marks WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def last_seq(self) -> int:
        with self._tx() as tx:
            return int(tx.execute("SELECT COALESCE(MAX(seq), 0) FROM labels").fetchone()[0])

    def current_label(self, digest: str, upto: int | None = None) -> str | None:
        with self._tx() as tx:
            return _current_label(tx, digest, upto)

    def entries(self, after: int = 0, upto: int | None = None) -> list[LedgerEntry]:
        with self._tx() as tx:
            rows = tx.execute(
                "SELECT seq, digest, label, source, analyst, at FROM labels WHERE seq > ? AND seq <= ? ORDER BY seq",
                (after, _upto(upto)),
            ).fetchall()
        return [LedgerEntry(*row) for row in rows]

    def changes(self, after: int, upto: int) -> Iterator[Change]:
        """Per message labelled in ``(after, upto]``: its label as of ``after`` and as of ``upto``.

        Messages whose label went back to what it was are left out: nothing changed for the model.
        Read at once (one row per message changed), so the caller may read messages meanwhile.
        """
        with self._tx() as tx:
            rows = tx.execute(
                """
                SELECT l.digest,
                       (SELECT label FROM labels p WHERE p.digest = l.digest AND p.seq <= ?
                        ORDER BY p.seq DESC LIMIT 1),
                       l.label
                FROM labels l JOIN (SELECT digest, MAX(seq) AS last FROM labels WHERE seq > ? AND seq <= ?
                                    GROUP BY digest) m ON l.seq = m.last
                ORDER BY l.seq""",
                (after, after, upto),
            ).fetchall()
        for digest, before, now in rows:
            if before != now:
                yield Change(digest, before, now)

    def current_labels(self, upto: int | None = None) -> Iterator[tuple[str, str]]:
        """``(digest, label)`` of every labelled message as of ``upto``, streamed in order of first label.

        On a connection of its own, so writes and reads on the ledger's go on meanwhile.
        """
        with closing(self.database.connect()) as db:
            yield from db.execute(
                """
                SELECT l.digest, (SELECT label FROM labels c WHERE c.digest = l.digest AND c.seq <= ?
                                  ORDER BY c.seq DESC LIMIT 1)
                FROM labels l WHERE l.seq <= ? AND l.seq = (SELECT MIN(seq) FROM labels f WHERE f.digest = l.digest)
                ORDER BY l.seq""",
                (_upto(upto), _upto(upto)),
            )

    def message(self, digest: str) -> bytes:
        with self._tx() as tx:
            row = tx.execute("SELECT data FROM messages WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            raise LedgerError(f"{self.path}: no message {digest}")
        return zlib.decompress(row[0])

    def counts(self, upto: int | None = None) -> dict[str, int]:
        """Messages per current label."""
        out = dict.fromkeys(CLASSES, 0)
        for _, label in self.current_labels(upto):
            out[label] += 1
        return out


def _current_label(tx: Transaction, digest: str, upto: int | None) -> str | None:
    row = tx.execute(
        "SELECT label FROM labels WHERE digest = ? AND seq <= ? ORDER BY seq DESC LIMIT 1", (digest, _upto(upto))
    ).fetchone()
    return str(row[0]) if row else None


def _upto(upto: int | None) -> int:
    return upto if upto is not None else 2**62
