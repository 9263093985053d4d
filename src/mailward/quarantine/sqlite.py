"""The single-host quarantine: SQLite metadata (WAL) and one private file per message.

Layout under the quarantine directory (0700)::

    quarantine.sqlite3 (+ -wal, -shm)   metadata, labels, audit trail (0600)
    messages/<id>.eml                   the exact bytes as received (0600)

The bytes are on disk before the row is committed; if the commit fails the
file is removed, so a record never points at nothing and a put that raised
leaves nothing. ``synchronous=FULL`` makes every committed put survive a
power cut, not only a crash. Several processes (the milter, CLI users) may
use the same directory at once: WAL lets readers proceed while one writer
commits, and write transactions take the lock up front (``BEGIN IMMEDIATE``)
and wait for it until the operation's deadline (SQLite's ``busy_timeout``).
The database file is never opened outside SQLite (see :mod:`mailward.dbfile`):
that would drop this process's locks and let another process's last
connection unlink the WAL under this one. Sessions, the writers' queue and the
schema's version are the database layer's (:mod:`mailward.db`).

Puts commit in groups: each writes and fsyncs its own file, then the puts
waiting at that moment share one directory fsync and one transaction (one
WAL fsync). While a group commits, the next one gathers; no put waits behind
more than the group before it, and each still returns only once its row is
committed (durability before the reply is unchanged).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import QuarantineSettings
from ..db import Database, Migration, SqliteFile, Transaction
from ..dbfile import fsync_directory
from ..errors import StoreError
from .files import MessageFiles, Written, ensure_private_dir
from .records import check_id
from .store import OPERATION_TIMEOUT, RETRY_SCHEMA, SCHEMA, Clock, Put, QuarantineStore

log = logging.getLogger(__name__)

DB_NAME = "quarantine.sqlite3"
MIGRATIONS = (Migration(1, SCHEMA), Migration(2, RETRY_SCHEMA))
ORPHAN_AGE = 3600.0  # a file this old without a row is a crash leftover, not a put in flight


@dataclass(eq=False)
class _Pending:
    """One put waiting for its group's commit."""

    request: Put
    written: Written
    done: bool = False
    stored_as: str = ""  # the record that holds it: its own, or the one a retry was answered with
    error: BaseException | None = field(default=None)


class SqliteStore(QuarantineStore):
    # The database layer's backend: a test may substitute a subclass (one whose commits answer late).
    database_file: type[SqliteFile] = SqliteFile

    def __init__(
        self,
        directory: Path,
        clock: Clock = time.time,
        pool_size: int = 8,
        write_timeout: float = QuarantineSettings.write_timeout,
        retry_window: float = QuarantineSettings.retry_window,
    ):
        self.directory = ensure_private_dir(Path(directory))
        self.db_path = self.directory / DB_NAME
        try:
            backend = self.database_file(self.db_path, busy_timeout=OPERATION_TIMEOUT, synchronous="FULL")
        except OSError as exc:
            raise StoreError(f"cannot create {self.db_path}: {exc.strerror or exc}") from exc
        self.files = MessageFiles(self.directory / "messages")
        self._group = threading.Condition()
        self._gathering: list[_Pending] = []  # puts whose files are written, waiting for a commit
        self._committing = False
        database = Database(
            backend, label="quarantine database", error=StoreError, timeout=OPERATION_TIMEOUT, pool_size=pool_size
        )
        super().__init__(database, clock, pool_size, write_timeout, retry_window)
        database.migrate("quarantine", MIGRATIONS)

    def _store(self, request: Put) -> str:
        quarantine_id = request.quarantine_id
        written = self.files.write(quarantine_id, request.raw, sync_directory=False)
        put = _Pending(request, written)
        try:
            self._commit_in_group(put)
        except BaseException as exc:
            self._after_drop(quarantine_id)
            if isinstance(exc, Exception) and not isinstance(exc, StoreError):
                raise StoreError(f"cannot record quarantined message {quarantine_id}: {exc}") from exc
            raise
        if put.stored_as != quarantine_id:  # a retry: the earlier delivery's file holds the bytes
            self._after_drop(quarantine_id)
        return put.stored_as

    def _commit_in_group(self, put: _Pending) -> None:
        """Return once ``put`` is committed, alone or with the others gathered meanwhile; raise if not.

        The first put to find no commit running leads: it takes every put
        gathered so far and commits them; the others wait for it, and the
        first of those left over leads the next group.
        """
        with self._group:
            self._gathering.append(put)
            while self._committing and not put.done:
                self._group.wait()
            if not put.done:
                group, self._gathering, self._committing = self._gathering, [], True
        if not put.done:
            try:
                self._commit_group(group)
            finally:
                with self._group:
                    self._committing = False
                    self._group.notify_all()
        if put.error is not None:  # one error object for the whole group: each put raises its own
            quarantine_id = put.request.quarantine_id
            raise StoreError(f"cannot record quarantined message {quarantine_id}: {put.error}") from put.error

    def _commit_group(self, group: list[_Pending]) -> None:
        """One directory fsync and one transaction for ``group``; each put's ``error`` says if it failed.

        A put whose caller gave up or whose deadline passed is left out (it
        fails alone); the transaction waits no longer than the latest deadline
        among the others, and a failure fails every put in it. A put whose
        deadline passes during the commit is withdrawn like a lone late one
        (see :meth:`QuarantineStore.put`).
        """
        live = []
        for put in group:
            try:
                put.request.deadline.check("commit")
                live.append(put)
            except StoreError as exc:
                put.error = exc
        try:
            if live:
                fsync_directory(self.files.directory)
                latest = max(live, key=lambda put: put.request.deadline.remaining())
                with self._tx(write=True, deadline=latest.request.deadline) as conn:
                    for put in live:  # a retry of one earlier in the group is answered with that one's record
                        put.stored_as = self._insert_record(conn, put.request, put.written)
        except BaseException as exc:
            for put in live:
                put.error = exc
        finally:
            with self._group:
                for put in group:
                    put.done = True

    def read(self, quarantine_id: str) -> bytes:
        check_id(quarantine_id)
        if not self.exists(quarantine_id):
            raise StoreError(f"no quarantined message {quarantine_id}")
        return self.files.read(quarantine_id)

    def _drop_bytes(self, conn: Transaction, quarantine_id: str) -> None:
        """Files go after the commit (see :meth:`_after_drop`)."""

    def _after_drop(self, quarantine_id: str) -> None:
        try:
            self.files.remove(quarantine_id)
        except OSError as exc:
            log.warning("cannot remove %s (the purge sweep retries): %s", self.files.path(quarantine_id), exc)

    def sweep(self) -> int:
        return self.files.sweep(self.exists, ORPHAN_AGE, self._clock())
