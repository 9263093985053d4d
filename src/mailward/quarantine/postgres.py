"""The shared quarantine: PostgreSQL (psycopg 3) for several milter hosts and review hosts.

Where the message bytes live: **in the database**, as ``bytea`` chunks in a table
of their own (``quarantine_chunks``), not in a shared directory. Why:

* One transaction covers bytes, metadata and the audit entry, so a put either
  happened completely or not at all, on every host, with no orphan sweep and
  no window where a row points at a file another host cannot see yet.
* Milter hosts need nothing shared but the DSN. A shared directory would need
  NFS or similar, whose fsync/rename/link semantics and locking are exactly
  where "loses nothing" gets hard, plus a second thing to back up, secure
  (uid mapping across hosts) and keep consistent with the database.
* Access control, backups (``pg_dump``/base backups + WAL archiving),
  replication and retention are the database's, in one place.

The cost is database size and write volume: quarantined mail is a small
fraction of traffic and bounded by ``limits.max_message_size`` (50 MiB
default, far below bytea's 1 GiB); TOAST compresses text-heavy mail, and the
bytes table is never touched by listing or filtering. Purge deletes the bytes
with the row; autovacuum returns the space for reuse.

Sessions, transactions and the schema's version are the database layer's
(:mod:`mailward.db`, which imports psycopg); its migrations take advisory locks
so that several hosts starting at once do not race on ``CREATE TABLE IF NOT
EXISTS``. Every session forces ``synchronous_commit = on`` (a server default of
``off`` would lose accepted-and-quarantined mail on a crash) and a
``statement_timeout`` of ``quarantine.write_timeout``; each transaction sets
its own from the operation's deadline. A server that stops answering at all
is left to the put's own thread (see :mod:`.store`).

Deployment (Debian 12, one database for all hosts)::

    apt-get install postgresql            # on the database host
    sudo -u postgres createuser --pwprompt mailward
    sudo -u postgres createdb --owner mailward mailward
    # pg_hba.conf: hostssl mailward mailward <milter-and-review-hosts> scram-sha-256

and on every milter and review host, in the TOML file::

    [quarantine]
    backend = "postgresql"
    dsn = "host=db.example.org dbname=mailward user=mailward sslmode=verify-full"
    # password in ~/.pgpass (0600) of the service user, or PGPASSFILE

The first start creates the tables. Copy ``release.key`` (state directory)
from one host to all others, mode 0600, owned by the service user: a release
done on one host is recognised by the milter on every other. Each process
opens at most 8 connections; size ``max_connections`` for hosts × processes.
Run ``mailward quarantine purge`` from one host's timer (running it on
several is harmless). Back up with ``pg_dump`` or base backups + WAL archiving.
The spam model registry lives in the same database (``mailward.models.database``).
"""

from __future__ import annotations

import time

from ..config import QuarantineSettings
from ..db import Database, Migration, PostgresDsn, Transaction
from ..errors import StoreError
from .files import measure
from .records import check_id
from .store import OPERATION_TIMEOUT, RETRY_SCHEMA, SCHEMA, Clock, Put, QuarantineStore

_SCHEMA_LOCK = 0x4D57_5100  # "MWQ\0": the advisory lock key earlier versions created the schema under

# Bytes in chunks of source.CHUNK, so a put streams a spooled message and never holds it whole
# (the milter process holds every SMTP connection). ``quarantine_bytes`` (one row per message)
# is what earlier versions wrote; it is still read.
_BYTES_TABLE = """CREATE TABLE IF NOT EXISTS quarantine_bytes (
    id TEXT PRIMARY KEY REFERENCES quarantine (id) ON DELETE CASCADE,
    data BYTEA NOT NULL)"""
_CHUNKS_TABLE = """CREATE TABLE IF NOT EXISTS quarantine_chunks (
    id TEXT NOT NULL REFERENCES quarantine (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (id, seq))"""


MIGRATIONS = (Migration(1, (*SCHEMA, _BYTES_TABLE, _CHUNKS_TABLE)), Migration(2, RETRY_SCHEMA))


_ID_LOCK = 0x4D57_5149  # "MWQI": advisory locks on quarantine IDs (classid of the two-key form)


class PostgresStore(QuarantineStore):
    def __init__(
        self,
        dsn: str,
        clock: Clock = time.time,
        pool_size: int = 8,
        write_timeout: float = QuarantineSettings.write_timeout,
        retry_window: float = QuarantineSettings.retry_window,
    ):
        self.dsn = dsn
        database = Database(
            PostgresDsn(dsn, write_timeout),
            label="quarantine database",
            error=StoreError,
            timeout=OPERATION_TIMEOUT,
            pool_size=pool_size,
        )
        super().__init__(database, clock, pool_size, write_timeout, retry_window)
        database.migrate("quarantine", MIGRATIONS, lock=_SCHEMA_LOCK)

    def _store(self, put: Put) -> str:
        quarantine_id, raw = put.quarantine_id, put.raw
        try:
            written = measure(raw.chunks())  # first pass: size, digest and header for the record
            with self._tx(write=True, deadline=put.deadline) as conn:
                self._claim_id(conn, quarantine_id)
                stored = self._insert_record(conn, put, written)
                if stored != quarantine_id:  # a retry: the earlier delivery's record holds the bytes
                    return stored
                for seq, chunk in enumerate(raw.chunks()):
                    conn.execute(
                        "INSERT INTO quarantine_chunks (id, seq, data) VALUES (?, ?, ?)",
                        (quarantine_id, seq, chunk),
                    )
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot quarantine message {quarantine_id}: {exc}") from exc
        return quarantine_id

    def _claim_id(self, conn: Transaction, quarantine_id: str) -> None:
        """A transaction-scoped advisory lock on the ID: a withdrawal of a put whose COMMIT answer was
        lost waits here until that put's transaction has ended, committed or not, then sees its row."""
        conn.execute("SELECT pg_advisory_xact_lock(CAST(? AS integer), hashtext(?))", (_ID_LOCK, quarantine_id))

    def read(self, quarantine_id: str) -> bytes:
        check_id(quarantine_id)
        with self._tx() as conn:
            chunks = conn.execute(
                "SELECT data FROM quarantine_chunks WHERE id = ? ORDER BY seq", (quarantine_id,), binary=True
            ).fetchall()
            if not chunks:
                chunks = conn.execute(
                    "SELECT data FROM quarantine_bytes WHERE id = ?", (quarantine_id,), binary=True
                ).fetchall()
        if not chunks:
            raise StoreError(f"no quarantined message {quarantine_id}")
        return b"".join(bytes(row[0]) for row in chunks)

    def _drop_bytes(self, conn: Transaction, quarantine_id: str) -> None:
        conn.execute("DELETE FROM quarantine_chunks WHERE id = ?", (quarantine_id,))
        conn.execute("DELETE FROM quarantine_bytes WHERE id = ?", (quarantine_id,))
