"""The quarantine: messages the policy held back, for analysts to review, release, label or delete.

:func:`open_store` picks the backend from the settings: SQLite with one file
per message on one host (the default), or PostgreSQL shared by several milter
hosts (see :mod:`mailward.quarantine.postgres` for where the bytes live there).
"""

from __future__ import annotations

import time

from ..config import Settings
from .records import AuditEvent, LabelRecord, ListFilter, QuarantineRecord, ReleaseClaim, Removal, Status
from .store import Clock, QuarantineStore

__all__ = [
    "AuditEvent",
    "LabelRecord",
    "ListFilter",
    "QuarantineRecord",
    "QuarantineStore",
    "ReleaseClaim",
    "Removal",
    "Status",
    "open_store",
]


def open_store(settings: Settings, clock: Clock = time.time) -> QuarantineStore:
    """The configured store, schema created if needed; StoreError if it cannot be opened.

    A reload opens a new store beside the running one (safe: no store closes a
    descriptor of a live database file); the daemon closes the old one once
    no message uses it.
    """
    config = settings.quarantine
    if config.backend == "postgresql":
        from .postgres import PostgresStore

        store: QuarantineStore = PostgresStore(
            config.dsn, clock=clock, write_timeout=config.write_timeout, retry_window=config.retry_window
        )
    else:
        from .sqlite import SqliteStore

        store = SqliteStore(
            settings.quarantine_dir,
            clock=clock,
            write_timeout=config.write_timeout,
            retry_window=config.retry_window,
        )
    return store
