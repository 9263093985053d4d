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
and wait up to ``busy_timeout`` for it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from ..envelope import Envelope
from ..errors import StoreError
from ..evidence import Evidence
from ..verdict import Verdict
from .files import MessageFiles, adopt, ensure_private_dir
from .records import check_id
from .store import Clock, QuarantineStore

log = logging.getLogger(__name__)

DB_NAME = "quarantine.sqlite3"
BUSY_TIMEOUT_MS = 30_000
ORPHAN_AGE = 3600.0     # a file this old without a row is a crash leftover, not a put in flight


class SqliteStore(QuarantineStore):
    backend = "sqlite"
    single_writer = True
    _errors = (sqlite3.Error,)

    def __init__(self, directory: Path, clock: Clock = time.time, pool_size: int = 8):
        self.directory = ensure_private_dir(Path(directory))
        self.db_path = self.directory / DB_NAME
        try:
            fd = os.open(self.db_path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
            if self.db_path.stat().st_mode & 0o077:
                os.chmod(self.db_path, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create {self.db_path}: {exc.strerror}") from exc
        adopt(self.db_path)      # SQLite itself gives -wal and -shm the database file's owner
        self.files = MessageFiles(self.directory / "messages")
        super().__init__(clock, pool_size)
        with self._tx(write=True) as conn:
            self._create_schema(conn, serial="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL")

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open quarantine database {self.db_path}: {exc}") from exc
        return conn

    def _begin(self, conn) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def put(self, raw: bytes | Path, envelope: Envelope, verdict: Verdict, evidence: Evidence) -> str:
        quarantine_id = check_id(verdict.incident_id)
        written = self.files.write(quarantine_id, raw)
        try:
            with self._tx(write=True) as conn:
                self._insert_record(conn, quarantine_id, written, envelope, verdict, evidence, self._writer)
        except BaseException as exc:
            self._after_drop(quarantine_id)
            if isinstance(exc, Exception) and not isinstance(exc, StoreError):
                raise StoreError(f"cannot record quarantined message {quarantine_id}: {exc}") from exc
            raise
        return quarantine_id

    def read(self, quarantine_id: str) -> bytes:
        check_id(quarantine_id)
        if not self.exists(quarantine_id):
            raise StoreError(f"no quarantined message {quarantine_id}")
        return self.files.read(quarantine_id)

    def _drop_bytes(self, conn, quarantine_id: str) -> None:
        """Files go after the commit (see :meth:`_after_drop`)."""

    def _after_drop(self, quarantine_id: str) -> None:
        try:
            self.files.remove(quarantine_id)
        except OSError as exc:
            log.warning("cannot remove %s (the purge sweep retries): %s", self.files.path(quarantine_id), exc)

    def sweep(self) -> int:
        return self.files.sweep(self.exists, ORPHAN_AGE, self._clock())
