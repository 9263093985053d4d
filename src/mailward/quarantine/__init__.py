"""The quarantine: messages the policy held back, for analysts to review, release, label or delete.

:func:`open_store` picks the backend from the settings: SQLite with one file
per message on one host (the default), or PostgreSQL shared by several milter
hosts (see :mod:`mailward.quarantine.postgres` for where the bytes live there).
"""

from __future__ import annotations

import time

from ..config import Settings
from .records import Actor, AuditEvent, Label, LabelRecord, ListFilter, QuarantineRecord, ReleaseClaim, Removal, Status
from .store import Clock, QuarantineStore

__all__ = ["Actor", "AuditEvent", "Label", "LabelRecord", "ListFilter", "QuarantineRecord", "QuarantineStore",
           "ReleaseClaim", "Removal", "Status", "open_store"]


def open_store(settings: Settings, clock: Clock = time.time, reuse: QuarantineStore | None = None
               ) -> QuarantineStore:
    """The configured store, schema created if needed; StoreError if it cannot be opened.

    ``reuse``: a store this process already has open (the running one, on a
    reload). If it serves the configured database it is returned, with the new
    ``write_timeout``, instead of a second store object; otherwise the caller
    closes it once nothing uses it any more (``close`` is safe even then).
    """
    config = settings.quarantine
    if config.backend == "postgresql":
        from .postgres import PostgresStore as backend

        where: object = config.dsn
    else:
        from .sqlite import SqliteStore as backend

        where = settings.quarantine_dir
    if reuse is not None and reuse.location == backend.location_of(where):
        reuse.write_timeout = config.write_timeout
        return reuse
    return backend(where, clock=clock, write_timeout=config.write_timeout)
