"""A stalled SQLite quarantine database, for the tests of write deadlines and withdrawals:
another process holding the write lock, and a COMMIT whose answer is held back."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from mailward.db import SqliteFile
from mailward.quarantine.sqlite import SqliteStore

_LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
print("released", flush=True)
"""


class Locker:
    """Another process holding the SQLite write lock until told to let go."""

    def __init__(self, db: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            assert self.proc.stdout.readline().strip() == "released"
            self.proc.wait(timeout=10)


class ReplyHeldBack:
    """A real SQLite connection whose COMMIT completes but whose answer is held back (a stalled reply)."""

    def __init__(self, conn, gate: threading.Event):
        self._conn, self._gate = conn, gate

    def commit(self) -> None:
        self._conn.commit()
        self._gate.wait(30)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def stalled_reply_store(directory: Path, reply: threading.Event, write_timeout: float) -> SqliteStore:
    """A SQLite store whose commits wait for ``reply`` before they return; the schema is made first."""

    class StalledReplyFile(SqliteFile):
        def connect(self, seconds=None):
            return ReplyHeldBack(super().connect(seconds), reply)

    class StalledReplyStore(SqliteStore):
        database_file = StalledReplyFile

    reply.set()  # creating the schema is not held back
    return StalledReplyStore(directory, write_timeout=write_timeout)
